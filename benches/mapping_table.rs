//! Mapping table latency (scripts/bench row 6): `insert_creating`, `job_rows` (lookup) and
//! `delete_row` of `slurm_one::mapping`, timed inside 1 and inside 32 concurrent processes
//! on one SQLite file (WAL, synchronous FULL, each change its own BEGIN IMMEDIATE), as the
//! prologs and epilogs of concurrent jobs use it. Reported as p50/p99; the 32-process
//! figure is compared with the 1-process one; target: write p99 <= 50 ms with 32 processes. The file lives under `target/bench/tmp` (the
//! same kind of disk as `/var/lib/slurm-one`). Not a test: it prints figures and writes
//! `target/bench/mapping.json` (`BENCH_OUT`).
//!
//! Writers take their turns in arrival order (the writers' queue in `src/mapping.rs`), so
//! with 32 processes every write waits for about the 31 ahead of it, inserts and deletes
//! alike. Each round starts on a new file whose WAL grows during its first ~250 writes;
//! their slower commits make most of the p99.
//!
//! Settings: `BENCH_PROCS` (`1,32`), `BENCH_ITERS` (operations of each kind per process:
//! 400 alone, 50 each when concurrent; quick: 100 and 15), `BENCH_ROUNDS` (2; quick 1).
//! The workers are this program again, started with `BENCH_MAPPING_WORKER`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{env_list, env_or, percentile, quick, row, write_rows, Target};
use serde_json::{json, Value};
use slurm_one::mapping::MappingDb;

const CLUSTER: &str = "bench";
const OPS: [&str; 3] = ["insert", "lookup", "delete"];
/// Rows other jobs keep in the table meanwhile.
const BACKGROUND_ROWS: u32 = 256;

fn open(path: &Path) -> MappingDb {
    MappingDb::open(path, slurm_one::mapping::DEFAULT_BUSY_TIMEOUT).expect("open the table")
}

/// One worker: opens the table, says `ready`, waits for `go` on stdin, then per iteration
/// inserts a row, looks its job up and deletes it, timing each; prints the latencies (ms)
/// as one JSON object.
fn worker(spec: &str) {
    let mut parts = spec.split('|');
    let path = PathBuf::from(parts.next().expect("path"));
    let index: u32 = parts.next().and_then(|s| s.parse().ok()).expect("index");
    let iters: u32 = parts.next().and_then(|s| s.parse().ok()).expect("iters");
    let db = open(&path);
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("go");
    let mut times: BTreeMap<&str, Vec<f64>> = OPS.iter().map(|op| (*op, Vec::new())).collect();
    let mut timed = |op: &'static str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        times
            .get_mut(op)
            .expect("known op")
            .push(common::ms(t.elapsed()));
    };
    for i in 0..iters {
        let job = 1_000_000 + index * 100_000 + i;
        let node = format!("vm{}", i % 64 + 1);
        let tag = format!("bench-{index}-{i}");
        timed("insert", &mut || {
            db.insert_creating(CLUSTER, job, &node, &tag)
                .expect("insert")
        });
        timed("lookup", &mut || {
            assert_eq!(db.job_rows(CLUSTER, job).expect("lookup").len(), 1);
        });
        timed("delete", &mut || {
            assert!(db.delete_row(CLUSTER, job, &node).expect("delete"));
        });
    }
    println!("{}", json!(times));
}

/// Runs `procs` workers at once on a fresh table; returns every latency of each op.
fn round(procs: usize, iters: usize, scratch: &Path) -> BTreeMap<String, Vec<f64>> {
    let dir = tempfile::Builder::new()
        .prefix("mapping-")
        .tempdir_in(scratch)
        .expect("temp dir");
    let path = dir.path().join("mapping.db");
    {
        let db = open(&path);
        for j in 0..BACKGROUND_ROWS {
            db.insert_creating(CLUSTER, j + 1, &format!("vm{}", j + 1), &format!("bg-{j}"))
                .expect("background row");
        }
    }
    let exe = std::env::current_exe().expect("own path");
    let mut children: Vec<_> = (0..procs)
        .map(|i| {
            Command::new(&exe)
                .env(
                    "BENCH_MAPPING_WORKER",
                    format!("{}|{i}|{iters}", path.display()),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a worker")
        })
        .collect();
    let mut outputs: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("stdout")))
        .collect();
    for out in &mut outputs {
        let mut line = String::new();
        out.read_line(&mut line).expect("worker ready");
        assert_eq!(line.trim(), "ready", "worker failed to open the table");
    }
    for c in &mut children {
        let _ = c.stdin.as_mut().expect("stdin").write_all(b"go\n");
    }
    let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (c, out) in children.iter_mut().zip(outputs.iter_mut()) {
        let mut line = String::new();
        out.read_line(&mut line).expect("worker result");
        let status = c.wait().expect("worker exit");
        assert!(status.success(), "a worker failed: {status}");
        let v: BTreeMap<String, Vec<f64>> = serde_json::from_str(&line).expect("worker JSON");
        for (op, t) in v {
            all.entry(op).or_default().extend(t);
        }
    }
    all
}

fn main() {
    if let Ok(spec) = std::env::var("BENCH_MAPPING_WORKER") {
        worker(&spec);
        return;
    }
    let q = quick();
    let procs = env_list("PROCS", "1,32");
    let rounds: usize = env_or("ROUNDS", if q { "1" } else { "2" })
        .parse()
        .expect("BENCH_ROUNDS is a number");
    let iters = |p: usize| -> usize {
        let default = match (p, q) {
            (1, false) => "400",
            (1, true) => "100",
            (_, false) => "50",
            (_, true) => "15",
        };
        env_or("ITERS", default).parse().expect("BENCH_ITERS")
    };
    let scratch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/tmp");
    std::fs::create_dir_all(&scratch).expect("scratch dir");

    let mut by_procs: BTreeMap<usize, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for r in 0..rounds {
        // Alternate which size goes first.
        let mut order = procs.clone();
        if r % 2 == 1 {
            order.reverse();
        }
        for &p in &order {
            let t = Instant::now();
            let got = round(p, iters(p), &scratch);
            eprintln!(
                "mapping: round {r}, {p} processes x {} iterations in {:.1} s",
                iters(p),
                t.elapsed().as_secs_f64()
            );
            let entry = by_procs.entry(p).or_default();
            for (op, v) in got {
                entry.entry(op).or_default().extend(v);
            }
        }
    }

    let (Some(&alone), Some(&many)) = (procs.first(), procs.last()) else {
        panic!("BENCH_PROCS needs at least one number");
    };
    let mut rows: Vec<Value> = Vec::new();
    for op in OPS {
        let get = |p: usize| by_procs[&p].get(op).cloned().unwrap_or_default();
        let (a, m) = (get(alone), get(many));
        for (stat, pct) in [("p50", 50.0), ("p99", 99.0)] {
            rows.push(row(
                &format!("mapping_{op}_{stat}"),
                &format!("6. mapping {op} {stat}: {many} processes (baseline: {alone})"),
                percentile(&m, pct),
                percentile(&a, pct),
                "ms",
                // Writes must not be the tail of a burst of concurrent prologs.
                (op != "lookup" && stat == "p99").then_some(Target::FigureAtMost(50.0)),
                json!({
                    "op": op, "stat": stat, "processes": many, "baseline_processes": alone,
                    "samples": m.len(), "baseline_samples": a.len(),
                    "iterations_per_process": {"baseline": iters(alone), "figure": iters(many)},
                    "rounds": rounds, "background_rows": BACKGROUND_ROWS,
                    "busy_timeout_s": Duration::as_secs(&slurm_one::mapping::DEFAULT_BUSY_TIMEOUT),
                    "sqlite": "WAL, synchronous=FULL, BEGIN IMMEDIATE per change, writers queued in ticket order",
                }),
            ));
        }
    }
    write_rows("mapping", &rows);
}
