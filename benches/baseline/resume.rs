//! Benchmark baseline only, not shipped: SLURM's stock power-save path, as
//! `scripts/cluster` runs it with `SLURM_ONE_MODE=baseline` (no PrologSlurmctld). This
//! ResumeProgram reads `SLURM_RESUME_FILE` (a memfd that is gone once slurmctld reaps us)
//! before detaching, then creates each job's VMs with the library (`Provisioner`; memory
//! and CPUs from `scontrol show job`), sets the nodes' addresses and exits without waiting
//! for the slurmds to register. The job then starts at slurmctld's next periodic check,
//! 0–30 s after registration (`shared/slurm/FACTS.md` §3.4). On failure the nodes go
//! DOWN → POWER_DOWN so the job is requeued at once, as stock integrations do.

use std::process::{Command, ExitCode, Stdio};

use serde_json::Value;
use slurm_one::config::Config;
use slurm_one::hooks;
use slurm_one::provision::{JobRequest, NodeRequest, Provisioner};
use slurm_one::slurm;

/// ResumeProgram sees none of the job's `--one-*` options. Every benchmark job asks for
/// `--one-cpu-share=0.25`, so the baseline's VMs have the same size as slurm-one's (and
/// the stock path's idle VMs, kept for SuspendTime, fit on one-sim's hosts).
const CPU_SHARE: f64 = 0.25;
const DETACHED: &str = "--detached";
const RESUME_JSON_ENV: &str = "SLURM_ONE_BASELINE_RESUME_JSON";
const PROGRAM: &str = "slurm-one-baseline-resume";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(DETACHED) {
        let json = std::env::var(RESUME_JSON_ENV).unwrap_or_default();
        return resume(&json);
    }
    let json = match std::env::var("SLURM_RESUME_FILE").map(std::fs::read_to_string) {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            eprintln!("{PROGRAM}: cannot read SLURM_RESUME_FILE: {e}");
            return ExitCode::FAILURE;
        }
        // Started by hand with a node list only: nothing to size VMs by.
        Err(_) => {
            eprintln!("{PROGRAM}: SLURM_RESUME_FILE is not set");
            return ExitCode::from(2);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let spawned = Command::new(exe)
        .arg(DETACHED)
        .env(RESUME_JSON_ENV, json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PROGRAM}: cannot detach: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Provisions every job of the resume file, one thread per job.
fn resume(json: &str) -> ExitCode {
    let ctx = match hooks::setup(PROGRAM) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return ExitCode::from(2);
        }
    };
    let doc: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => {
            log::error!("resume file is not JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    let jobs: Vec<(u32, String)> = doc["jobs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|j| {
                    let id = u32::try_from(j["job_id"].as_u64()?).ok()?;
                    Some((id, j["nodes"].as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    if jobs.is_empty() {
        log::info!(
            "resume of {} without jobs: nothing to provision",
            doc["all_nodes"]
        );
        return ExitCode::SUCCESS;
    }
    let ok = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(id, nodes)| s.spawn(|| provision_job(&ctx.cfg, *id, nodes)))
            .collect();
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn provision_job(cfg: &Config, job_id: u32, hostlist: &str) -> bool {
    let nodes = match slurm::expand_hostlist(hostlist) {
        Ok(n) => n,
        Err(e) => {
            log::error!("job {job_id}: {e}");
            return false;
        }
    };
    let result = request(job_id, &nodes).and_then(|job| {
        // Own connections per thread: the table's connection is not shared.
        let one = slurm_one::admin::client(cfg, false).map_err(|e| e.to_string())?;
        let db = slurm_one::admin::open_db(cfg).map_err(|e| e.to_string())?;
        let up = Provisioner::new(cfg, &one, &db)
            .provision(&job)
            .map_err(|e| e.to_string())?;
        let addrs: Vec<(String, String)> = up
            .iter()
            .filter_map(|n| n.ip.clone().map(|ip| (n.node.clone(), ip)))
            .collect();
        slurm::set_node_addrs(&addrs).map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            log::info!("job {job_id}: baseline resume provisioned {hostlist}; not waiting for registration");
            true
        }
        Err(e) => {
            log::error!("job {job_id}: baseline resume failed: {e}");
            if let Err(s) = slurm::down_then_power_down(&nodes, &format!("baseline resume: {e}")) {
                log::error!("job {job_id}: cannot set nodes down: {s}");
            }
            false
        }
    }
}

/// The job's size from `scontrol show job -o`: CPUs per node = NumCPUs / NumNodes.
fn request(job_id: u32, nodes: &[String]) -> Result<JobRequest, String> {
    let line = slurm::run(
        &["scontrol", "show", "job", "-o", &job_id.to_string()],
        slurm::COMMAND_TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    let kv = slurm::parse_key_values(line.trim());
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let num = |k: &str| get(k).and_then(|v| v.parse::<u32>().ok());
    let cpus = num("NumCPUs").unwrap_or(1);
    let per_node = (cpus / num("NumNodes").unwrap_or(1).max(1)).max(1);
    let info = slurm::parse_job(&line);
    Ok(JobRequest {
        job_id,
        job_name: get("JobName").unwrap_or("").to_string(),
        user: get("UserId")
            .and_then(|u| u.split('(').next())
            .unwrap_or("")
            .to_string(),
        memory_mb: info
            .mem_per_node_mb
            .or(info.mem_per_cpu_mb.map(|m| m * u64::from(per_node))),
        nodes: nodes
            .iter()
            .map(|n| NodeRequest {
                name: n.clone(),
                cpus: per_node,
            })
            .collect(),
        cpu_share: Some(CPU_SHARE),
        template: None,
    })
}
