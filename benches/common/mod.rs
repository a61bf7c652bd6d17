//! What the `scripts/bench` benchmarks share: result rows in the format of
//! `target/bench/results.json`, percentiles, and settings from the environment (cargo bench
//! passes its own arguments, so the benches take theirs from `BENCH_*` variables).

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};

/// Value of `BENCH_<name>`, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(format!("BENCH_{name}"))
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// `BENCH_QUICK` is set (a smoke run: fewer repetitions, smaller sizes).
pub fn quick() -> bool {
    env_or("QUICK", "0") != "0"
}

/// A comma-separated list of numbers from `BENCH_<name>`.
pub fn env_list(name: &str, default: &str) -> Vec<usize> {
    env_or(name, default)
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Median of unsorted samples.
pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 50.0)
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What a row's target is about.
pub enum Target {
    /// `figure / baseline` at most this.
    RatioAtMost(f64),
    /// The figure itself at most this (in the row's units).
    FigureAtMost(f64),
}

/// One result row: `figure` is slurm-one's, `baseline` what it is compared with, `ratio` is
/// always `figure / baseline` (below 1: slurm-one needs less).
pub fn row(
    id: &str,
    title: &str,
    figure: f64,
    baseline: f64,
    units: &str,
    target: Option<Target>,
    params: Value,
) -> Value {
    let ratio = if baseline != 0.0 {
        figure / baseline
    } else {
        f64::NAN
    };
    let (target_text, met) = match target {
        Some(Target::RatioAtMost(x)) => (Some(format!("ratio <= {x}")), Some(ratio <= x)),
        Some(Target::FigureAtMost(x)) => {
            (Some(format!("figure <= {x} {units}")), Some(figure <= x))
        }
        None => (None, None),
    };
    json!({
        "id": id,
        "title": title,
        "figure": finite(figure),
        "baseline": finite(baseline),
        "ratio": finite(ratio),
        "units": units,
        "target": target_text,
        "met": met,
        "params": params,
    })
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Writes the rows to `BENCH_OUT` (default `target/bench/<name>.json`) and prints them.
pub fn write_rows(name: &str, rows: &[Value]) {
    let default = format!("{}/target/bench/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let path = env_or("OUT", &default);
    if let Some(dir) = std::path::Path::new(&path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = serde_json::to_string_pretty(&Value::Array(rows.to_vec()))
        .expect("rows are plain JSON values");
    std::fs::write(&path, text + "\n").unwrap_or_else(|e| panic!("writing {path}: {e}"));
    for r in rows {
        println!(
            "{:<58} {:>10} {:>10} {:>8} {}",
            r["title"].as_str().unwrap_or(""),
            r["figure"],
            r["baseline"],
            r["ratio"],
            r["units"].as_str().unwrap_or("")
        );
    }
    println!("wrote {path}");
}
