//! Everything slurm-one reads from SLURM's tools: `parse_key_values`, `parse_job`,
//! `parse_nodes`, `parse_live_jobs`, `expand_cpus_per_node`, `parse_mem_mb`,
//! `expand_hostlist`.
//!
//! Invariants: none panics; `parse_key_values` only drops the tokens before the first key
//! and loses nothing after it; the job/node/live-job parsers return what the line says;
//! memory sizes and compressed CPU counts round-trip from values generated here.
#![no_main]

mod common;

use std::collections::BTreeSet;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use slurm_one::slurm::{
    expand_cpus_per_node, expand_hostlist, parse_job, parse_key_values, parse_live_jobs,
    parse_mem_mb, parse_nodes,
};

fn is_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn key_values(line: &str) {
    let kv = parse_key_values(line);
    for (k, _) in &kv {
        assert!(is_key(k), "bad key {k:?}");
    }
    let rebuilt = kv
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(line.ends_with(&rebuilt), "{line:?} lost text: {rebuilt:?}");
    if !kv.is_empty() {
        let dropped = &line[..line.len() - rebuilt.len()];
        assert!(dropped.is_empty() || dropped.ends_with(' '), "{line:?}");
        assert!(
            !dropped
                .split(' ')
                .any(|t| t.split_once('=').is_some_and(|(k, _)| is_key(k))),
            "a key token was dropped from {line:?}"
        );
    }
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn job(line: &str) {
    let info = parse_job(line);
    let kv = parse_key_values(line.trim());
    assert_eq!(info.state, get(&kv, "JobState").unwrap_or(""));
    assert_eq!(
        info.restarts,
        get(&kv, "Restarts")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    );
    assert!(info.mem_per_node_mb.is_none_or(|m| m > 0));
    assert!(info.mem_per_cpu_mb.is_none_or(|m| m > 0));
}

fn nodes(text: &str) {
    let nodes = parse_nodes(text);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("NodeName="))
        .collect();
    assert_eq!(nodes.len(), lines.len());
    for (n, l) in nodes.iter().zip(lines) {
        let kv = parse_key_values(l.trim());
        assert_eq!(n.name, get(&kv, "NodeName").unwrap_or(""));
        assert!(!n.state.is_empty());
        assert_eq!(n.state.join("+"), get(&kv, "State").unwrap_or(""));
    }
}

fn live(text: &str) {
    let jobs = parse_live_jobs(text);
    for id in jobs.keys() {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next().and_then(|t| t.parse().ok()) == Some(*id)),
            "job {id} is not in the output"
        );
    }
}

fn memory(u: &mut Unstructured<'_>) -> Result<()> {
    let n: u32 = u.arbitrary()?;
    let m = u64::from(n);
    assert_eq!(parse_mem_mb(&n.to_string()), Some(m));
    assert_eq!(parse_mem_mb(&format!(" {n}M ")), Some(m));
    assert_eq!(parse_mem_mb(&format!("{n}m")), Some(m));
    assert_eq!(parse_mem_mb(&format!("{n}G")), Some(m * 1024));
    assert_eq!(parse_mem_mb(&format!("{n}K")), Some(m.div_ceil(1024)));
    Ok(())
}

fn cpus(u: &mut Unstructured<'_>) -> Result<()> {
    let parts = u.int_in_range(0..=6)?;
    let mut text = Vec::new();
    let mut want = Vec::new();
    for _ in 0..parts {
        let n: u32 = u.arbitrary()?;
        let most = u.int_in_range(1usize..=100_000)?;
        let times = u.int_in_range(0..=most)?;
        if times == 1 && u.arbitrary()? {
            text.push(n.to_string());
        } else {
            text.push(format!("{n}(x{times})"));
        }
        want.extend(std::iter::repeat_n(n, times));
    }
    assert_eq!(
        expand_cpus_per_node(&text.join(",")),
        Some(want),
        "{text:?}"
    );
    Ok(())
}

/// `hostlist-parser` expands any range (`vm[0-99999999999]`) in memory, so only lists with
/// bounded expansions are given to it: at most one bracket group and 3-digit numbers.
fn hostlist(s: &str) {
    let mut run = 0;
    let long_number = s.chars().any(|c| {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        run > 3
    });
    if s.len() > 128 || s.matches('[').count() > 1 || long_number {
        return;
    }
    if let Ok(hosts) = expand_hostlist(s) {
        for h in &hosts {
            assert!(!h.contains([',', '[', ']']), "{s:?} gave host {h:?}");
        }
    }
    let plain: Vec<&str> = s.split(',').collect();
    if !s.is_empty()
        && plain
            .iter()
            .all(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_lowercase()))
    {
        let hosts = expand_hostlist(s).unwrap_or_else(|e| panic!("{e}"));
        let got: BTreeSet<&str> = hosts.iter().map(String::as_str).collect();
        let want: BTreeSet<&str> = plain.into_iter().collect();
        assert_eq!(got, want, "{s:?} -> {hosts:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = common::text(data);
    for line in text.lines() {
        key_values(line);
        job(line);
    }
    nodes(&text);
    live(&text);
    if let Some(v) = expand_cpus_per_node(&text) {
        assert!(v.len() <= 100_000 * (text.matches(',').count() + 1));
    }
    if let Some(m) = parse_mem_mb(&text) {
        assert!(m < 1_000_000_000_000_000);
    }
    hostlist(text.trim());
    let mut u = Unstructured::new(data);
    let _ = memory(&mut u);
    let _ = cpus(&mut u);
});
