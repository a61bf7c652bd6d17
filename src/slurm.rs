//! Everything slurm-one asks of SLURM's command-line tools. The only module that runs
//! them: argument vectors (never a shell), a timeout on every call, argv logged.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::provision::SlurmView;

/// Default bound on one SLURM command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a SLURM command failed.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// It could not be started (not installed, not on PATH).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// It did not finish in time and was killed.
    #[error("{argv} did not finish within {timeout:?}")]
    Timeout {
        /// The command line.
        argv: String,
        /// The bound.
        timeout: Duration,
    },
    /// It exited non-zero.
    #[error("{argv} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        argv: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Runs `argv` with a timeout; returns stdout.
pub fn run(argv: &[&str], timeout: Duration) -> Result<String, SlurmError> {
    let line = argv.join(" ");
    log::debug!("running {line}");
    let (program, args) = argv.split_first().unwrap_or((&"", &[]));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SlurmError::Spawn {
            program: program.to_string(),
            source,
        })?;
    // Drain both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SlurmError::Timeout {
                    argv: line,
                    timeout,
                });
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(SlurmError::Failed {
            argv: line,
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(stdout)
}

/// Job states after which SLURM no longer needs the job's nodes.
const FINISHED_STATES: &[&str] = &[
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
];

/// Parses `squeue --noheader --format="%A %T"` output into the live job ids.
pub fn parse_live_jobs(text: &str) -> BTreeSet<u32> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let id = it.next()?.parse().ok()?;
            let state = it.next().unwrap_or("");
            (!FINISHED_STATES.contains(&state)).then_some(id)
        })
        .collect()
}

/// SLURM's view through `squeue`.
pub struct Squeue;

impl SlurmView for Squeue {
    fn live_jobs(&self) -> Result<Option<BTreeSet<u32>>, String> {
        let out = run(
            &[
                "squeue",
                "--noheader",
                "--all",
                "--states=all",
                "--format=%A %T",
            ],
            COMMAND_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        Ok(Some(parse_live_jobs(&out)))
    }
}

/// No SLURM to ask: reconcile trusts the table for which jobs are live.
pub struct NoSlurm;

impl SlurmView for NoSlurm {
    fn live_jobs(&self) -> Result<Option<BTreeSet<u32>>, String> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_jobs_are_not_live() {
        let jobs = parse_live_jobs(
            "12 RUNNING\n13 COMPLETED\n14 PENDING\n15 COMPLETING\n16 CANCELLED\nbad line\n",
        );
        assert_eq!(jobs, BTreeSet::from([12, 14, 15]));
    }

    #[test]
    fn run_returns_stdout_and_names_failures() {
        assert_eq!(run(&["echo", "hi"], COMMAND_TIMEOUT).unwrap(), "hi\n");
        let err = run(&["false"], COMMAND_TIMEOUT).unwrap_err();
        assert!(matches!(err, SlurmError::Failed { .. }), "{err}");
        let err = run(&["no-such-program-xyz"], COMMAND_TIMEOUT).unwrap_err();
        assert!(err.to_string().contains("no-such-program-xyz"));
    }

    #[test]
    fn run_kills_a_command_that_overruns() {
        let err = run(&["sleep", "5"], Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, SlurmError::Timeout { .. }), "{err}");
    }
}
