//! Everything slurm-one asks of SLURM's command-line tools. The only module that runs
//! them: argument vectors (never a shell), a timeout on every call, argv logged.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::provision::{LiveJob, LiveJobs, SlurmView, StuckNode};

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
    /// `scontrol --version` printed something other than `slurm[-wlm] MAJOR.MINOR.PATCH`.
    #[error("cannot tell the SLURM series from `scontrol --version`: {output:?}")]
    Version {
        /// What it printed.
        output: String,
    },
}

/// A SLURM release series (major.minor, e.g. 24.11), the unit in which SLURM changes
/// behaviour: a maintenance release (24.11.5) only fixes bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    /// The year of the release (22, 23, ...).
    pub major: u32,
    /// Its month (02, 05, 11).
    pub minor: u32,
}

impl Series {
    /// The series `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Series { major, minor }
    }

    /// From what `scontrol --version` prints: `slurm 24.11.5` (SchedMD's builds) or
    /// `slurm-wlm 22.05.8` (Debian's).
    pub fn from_version_output(text: &str) -> Result<Series, SlurmError> {
        let bad = || SlurmError::Version {
            output: one_line(text, 200),
        };
        let mut words = text.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            return Err(bad());
        };
        if !name.starts_with("slurm") {
            return Err(bad());
        }
        let mut parts = version.split('.');
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        Ok(Series { major, minor })
    }

    /// Whether slurmctld takes a cloud node's address from its slurmd's registration.
    /// Since 23.11 it does for every cloud node: RELEASE_NOTES of 23.11 ("Remove
    /// cloud_reg_addrs and make it default behavior"); src/slurmctld/node_mgr.c,
    /// validate_node_specs(), sets comm_name from the registration's peer address (24.11.5
    /// lines 3652-3667). Before, NodeAddr stays what `scontrol update nodeaddr=` set.
    pub fn registration_sets_address(self) -> bool {
        self >= Series::new(23, 11)
    }
}

/// The series of the SLURM whose clients are on PATH (`scontrol --version`).
pub fn series() -> Result<Series, SlurmError> {
    Series::from_version_output(&run(&["scontrol", "--version"], COMMAND_TIMEOUT)?)
}

/// `scontrol show config`: the settings the running slurmctld uses (fails when none
/// answers). Read by `slurm-one check` (`check::SlurmSettings::from_show_config`).
pub fn show_config() -> Result<String, SlurmError> {
    run(&["scontrol", "show", "config"], COMMAND_TIMEOUT)
}

/// Runs `argv` with a timeout; returns stdout.
pub fn run(argv: &[&str], timeout: Duration) -> Result<String, SlurmError> {
    let line = argv.join(" ");
    log::debug!("running {line}");
    let (program, args) = argv.split_first().unwrap_or((&"", &[]));
    let mut cmd = Command::new(program);
    // slurmctld runs its hooks with no PATH at all.
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        );
    }
    let mut child = cmd
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

/// Expands SLURM's compressed CPU counts, `4(x2),2` → `[4, 4, 2]`.
pub fn expand_cpus_per_node(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once("(x") {
            Some((n, rest)) => {
                let n: u32 = n.parse().ok()?;
                let times: usize = rest.strip_suffix(')')?.parse().ok()?;
                if times > 100_000 {
                    return None;
                }
                out.extend(std::iter::repeat_n(n, times));
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Expands a SLURM hostlist, `vm[1-3,5]` → `vm1 vm2 vm3 vm5`.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, String> {
    // hostlist-parser expands whatever it is given: bound it first (a garbled `vm[1-9999999999]`
    // must not exhaust a hook's memory).
    if hostlist_upper_bound(list) > MAX_HOSTLIST_NODES {
        return Err(format!(
            "{list:?} names more than {MAX_HOSTLIST_NODES} nodes (or has a range that is not numeric)"
        ));
    }
    hostlist_parser::parse(list).map_err(|e| format!("{list:?} is not a node list: {e}"))
}

/// More nodes than any SLURM cluster has.
const MAX_HOSTLIST_NODES: u64 = 100_000;

/// An upper bound of how many names a hostlist expands to (items separated by commas, each
/// the product of its `[...]` groups, each group the sum of its ranges, a reversed range
/// counted as if in order); `u64::MAX` for a range that is not two numbers.
fn hostlist_upper_bound(list: &str) -> u64 {
    let mut total: u64 = 0;
    let mut item: u64 = 1;
    let mut group = String::new();
    let mut in_group = false;
    for c in list.chars() {
        match c {
            '[' if !in_group => {
                in_group = true;
                group.clear();
            }
            ']' if in_group => {
                in_group = false;
                let mut size: u64 = 0;
                for part in group.split(',') {
                    let n = match part.split_once('-') {
                        Some((lo, hi)) => {
                            match (lo.trim().parse::<u64>(), hi.trim().parse::<u64>()) {
                                (Ok(lo), Ok(hi)) => hi.abs_diff(lo).saturating_add(1),
                                _ => u64::MAX,
                            }
                        }
                        None => 1,
                    };
                    size = size.saturating_add(n);
                }
                item = item.saturating_mul(size);
            }
            ',' if !in_group => {
                total = total.saturating_add(item);
                item = 1;
            }
            _ if in_group => group.push(c),
            _ => {}
        }
    }
    total.saturating_add(item)
}

/// `key=value` pairs of one `scontrol show ... -o` line. Values run to the next ` key=`,
/// so values with spaces (job names, reasons) survive.
pub fn parse_key_values(line: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for token in line.split(' ') {
        match token.split_once('=') {
            Some((k, v))
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') =>
            {
                out.push((k.to_string(), v.to_string()));
            }
            _ => {
                if let Some(last) = out.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(token);
                }
            }
        }
    }
    out
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parses a SLURM memory size (`512M`, `4G`, `1024`) into MiB.
pub fn parse_mem_mb(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.chars().last()? {
        'K' | 'k' => (&t[..t.len() - 1], 1.0 / 1024.0),
        'M' | 'm' => (&t[..t.len() - 1], 1.0),
        'G' | 'g' => (&t[..t.len() - 1], 1024.0),
        'T' | 't' => (&t[..t.len() - 1], 1024.0 * 1024.0),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    let mb = (v * mult).ceil();
    (mb.is_finite() && (0.0..1e15).contains(&mb)).then_some(mb as u64)
}

/// What the hooks read of a job from `scontrol show job -o`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobInfo {
    /// Memory per node the job asked for, MiB (from MinMemoryNode, or MinMemoryCPU × CPUs).
    pub mem_per_node_mb: Option<u64>,
    /// MinMemoryCPU, MiB.
    pub mem_per_cpu_mb: Option<u64>,
    /// Restarts (requeues) so far.
    pub restarts: u32,
    /// JobState.
    pub state: String,
}

/// Parses one `scontrol show job -o` line.
pub fn parse_job(line: &str) -> JobInfo {
    let kv = parse_key_values(line.trim());
    let mem = |k: &str| get(&kv, k).and_then(parse_mem_mb).filter(|m| *m > 0);
    JobInfo {
        mem_per_node_mb: mem("MinMemoryNode"),
        mem_per_cpu_mb: mem("MinMemoryCPU"),
        restarts: get(&kv, "Restarts")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        state: get(&kv, "JobState").unwrap_or("").to_string(),
    }
}

/// `scontrol show job -o ID`.
pub fn job_info(job_id: u32) -> Result<JobInfo, SlurmError> {
    let out = run(
        &["scontrol", "show", "job", "-o", &job_id.to_string()],
        COMMAND_TIMEOUT,
    )?;
    Ok(parse_job(&out))
}

/// A node as `scontrol show node -o` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// NodeName.
    pub name: String,
    /// State flags, e.g. `["IDLE", "CLOUD", "POWERED_DOWN"]`.
    pub state: Vec<String>,
    /// NodeAddr.
    pub addr: String,
    /// Reason, if any.
    pub reason: Option<String>,
    /// SlurmdStartTime as slurmctld prints it (`None` before any slurmd registered).
    pub slurmd_start: Option<String>,
}

impl NodeInfo {
    /// Has a flag (`CLOUD`, `POWERING_UP`, ...).
    pub fn has(&self, flag: &str) -> bool {
        self.state.iter().any(|s| s == flag)
    }

    /// slurmctld will power the node down, not hand it to another job: it is DRAIN with
    /// POWER_DOWN (what `state=POWER_DOWN_ASAP` leaves), or already powering or powered
    /// down. A drained node is never made available again (`make_node_idle` →
    /// `make_node_avail` only for nodes without DRAIN, src/slurmctld/node_mgr.c); the
    /// power-save pass suspends it once it is IDLE and not COMPLETING, clearing DRAIN
    /// (`_do_power_work`, src/slurmctld/power_save.c: "Clear power_down_asap"). The same
    /// in 22.05.8, 24.11.5 and 26.05.3.
    pub fn marked_for_power_down(&self) -> bool {
        (self.has("DRAIN") && self.has("POWER_DOWN"))
            || self.has("POWERING_DOWN")
            || self.has("POWERED_DOWN")
    }
}

/// Parses `scontrol show node -o` output (one node per line).
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter(|l| l.starts_with("NodeName="))
        .map(|l| {
            let kv = parse_key_values(l.trim());
            NodeInfo {
                name: get(&kv, "NodeName").unwrap_or("").to_string(),
                state: get(&kv, "State")
                    .unwrap_or("")
                    .split('+')
                    .map(str::to_string)
                    .collect(),
                addr: get(&kv, "NodeAddr").unwrap_or("").to_string(),
                reason: get(&kv, "Reason").map(str::to_string),
                slurmd_start: get(&kv, "SlurmdStartTime")
                    .filter(|t| *t != "None")
                    .map(str::to_string),
            }
        })
        .collect()
}

/// `scontrol show node -o LIST`.
pub fn nodes(list: &str) -> Result<Vec<NodeInfo>, SlurmError> {
    let out = run(&["scontrol", "show", "node", "-o", list], COMMAND_TIMEOUT)?;
    Ok(parse_nodes(&out))
}

/// `scontrol update nodename=A,B nodeaddr=a,b` (one call for all nodes).
pub fn set_node_addrs(pairs: &[(String, String)]) -> Result<(), SlurmError> {
    let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    let addrs: Vec<&str> = pairs.iter().map(|(_, a)| a.as_str()).collect();
    let name_arg = format!("nodename={}", names.join(","));
    let addr_arg = format!("nodeaddr={}", addrs.join(","));
    run(
        &["scontrol", "update", &name_arg, &addr_arg],
        COMMAND_TIMEOUT,
    )
    .map(|_| ())
}

/// `scontrol update nodename=LIST state=power_down_asap reason=...`: drains the nodes and
/// marks them POWER_DOWN. Their running job goes on; when it ends and the nodes' epilogs
/// are done, slurmctld's power-save pass powers them down (SuspendProgram) instead of
/// giving them to another job.
pub fn power_down_asap(nodes: &[String], reason: &str) -> Result<(), SlurmError> {
    set_state(nodes, "state=power_down_asap", reason)
}

/// `scontrol update nodename=LIST STATE reason=...` (nothing for no nodes).
fn set_state(nodes: &[String], state: &str, reason: &str) -> Result<(), SlurmError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let name_arg = format!("nodename={}", nodes.join(","));
    let reason_arg = format!("reason={}", one_line(reason, 200));
    run(
        &["scontrol", "update", &name_arg, state, &reason_arg],
        COMMAND_TIMEOUT,
    )
    .map(|_| ())
}

/// Sets nodes DOWN with a reason, then POWER_DOWN, so they go back to powered-down idle
/// (and a job on them is requeued at once).
pub fn down_then_power_down(nodes: &[String], reason: &str) -> Result<(), SlurmError> {
    set_state_then_power_down(nodes, "state=down", reason)
}

fn set_state_then_power_down(
    nodes: &[String],
    state: &str,
    reason: &str,
) -> Result<(), SlurmError> {
    if nodes.is_empty() {
        return Ok(());
    }
    set_state(nodes, state, reason)?;
    let name_arg = format!("nodename={}", nodes.join(","));
    run(
        &["scontrol", "update", &name_arg, "state=power_down"],
        COMMAND_TIMEOUT,
    )
    .map(|_| ())
}

/// Puts a reason where `scontrol show job` shows it (AdminComment).
pub fn set_job_admin_comment(job_id: u32, text: &str) -> Result<(), SlurmError> {
    let id = format!("jobid={job_id}");
    let comment = format!("admincomment={}", one_line(text, 500));
    run(&["scontrol", "update", &id, &comment], COMMAND_TIMEOUT).map(|_| ())
}

/// Holds a job that keeps failing, so it stops looping: `scontrol hold` (it is usually
/// requeued already), else `scontrol requeuehold`.
pub fn requeue_hold(job_id: u32) -> Result<(), SlurmError> {
    let id = job_id.to_string();
    // Usually the nodes' DOWN has requeued it already: holding the pending job is enough
    // (requeuehold would fail, and slurmctld log an error, for a pending job).
    match run(&["scontrol", "hold", &id], COMMAND_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(_) => run(&["scontrol", "requeuehold", &id], COMMAND_TIMEOUT).map(|_| ()),
    }
}

/// Makes text one bounded line (scontrol arguments and reasons are single-line).
fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
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

/// Parses `squeue --noheader --format="%A %T %N"` output into the live jobs and the nodes
/// each holds. A pending or requeued job prints no node list: it holds none, so whatever an
/// earlier attempt of it left behind is not its any more. A node list that does not expand
/// is kept as unknown (`None`): the job is trusted with any node rather than losing its VMs.
pub fn parse_live_jobs(text: &str) -> LiveJobs {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let id = it.next()?.parse().ok()?;
            let state = it.next().unwrap_or("");
            if FINISHED_STATES.contains(&state) {
                return None;
            }
            let nodes = match it.next() {
                None => Some(BTreeSet::new()),
                Some(list) => expand_hostlist(list)
                    .ok()
                    .map(|n| n.into_iter().collect::<BTreeSet<String>>()),
            };
            let started = matches!(state, "RUNNING" | "SUSPENDED");
            Some((id, LiveJob { started, nodes }))
        })
        .collect()
}

/// Cloud nodes DOWN for a reason slurm-one may undo, not already powering down.
pub fn stuck_nodes(nodes: &[NodeInfo]) -> Vec<StuckNode> {
    nodes
        .iter()
        .filter(|n| n.has("CLOUD") && n.has("DOWN") && !n.has("POWERING_DOWN"))
        .filter(|n| {
            n.reason.as_deref().is_some_and(|r| {
                r.starts_with("slurm-one") || r.starts_with("ResumeTimeout reached")
            })
        })
        .map(|n| StuckNode {
            name: n.name.clone(),
            powered_down: n.has("POWERED_DOWN"),
        })
        .collect()
}

/// Ids of the jobs SLURM has SUSPENDED (`scontrol suspend`).
pub fn suspended_jobs() -> Result<BTreeSet<u32>, SlurmError> {
    let out = run(
        &[
            "squeue",
            "--noheader",
            "--all",
            "--states=SUSPENDED",
            "--format=%A",
        ],
        COMMAND_TIMEOUT,
    )?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// SLURM's view through its command-line tools.
pub struct SlurmCli;

impl SlurmView for SlurmCli {
    fn live_jobs(&self) -> Result<Option<LiveJobs>, String> {
        let argv = [
            "squeue",
            "--noheader",
            "--all",
            "--states=all",
            "--format=%A %T %N",
        ];
        let out = run(&argv, COMMAND_TIMEOUT).map_err(|e| e.to_string())?;
        Ok(Some(parse_live_jobs(&out)))
    }

    fn stuck_nodes(&self) -> Result<Vec<StuckNode>, String> {
        let out =
            run(&["scontrol", "show", "node", "-o"], COMMAND_TIMEOUT).map_err(|e| e.to_string())?;
        Ok(stuck_nodes(&parse_nodes(&out)))
    }

    fn fail_nodes(&self, nodes: &[String], reason: &str) -> Result<(), String> {
        down_then_power_down(nodes, reason).map_err(|e| e.to_string())
    }

    fn comment_job(&self, job_id: u32, text: &str) -> Result<(), String> {
        set_job_admin_comment(job_id, text).map_err(|e| e.to_string())
    }

    fn registration_sets_address(&self) -> Result<bool, String> {
        series()
            .map(Series::registration_sets_address)
            .map_err(|e| e.to_string())
    }

    fn power_down_after_job(&self, nodes: &[String], reason: &str) -> Result<(), String> {
        power_down_asap(nodes, reason).map_err(|e| e.to_string())
    }

    fn return_nodes(&self, nodes: &[StuckNode]) -> Result<(), String> {
        for n in nodes {
            // A powered-down node only needs its DOWN cleared; a powered-up one (its VM is
            // gone) is forced down so it comes back as powered-down idle.
            let state = if n.powered_down {
                "state=resume"
            } else {
                "state=power_down_force"
            };
            let name = format!("nodename={}", n.name);
            log::info!("returning node {} to the pool ({state})", n.name);
            run(&["scontrol", "update", &name, state], COMMAND_TIMEOUT)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// No SLURM to ask: reconcile trusts the table for which jobs are live.
pub struct NoSlurm;

impl SlurmView for NoSlurm {
    fn live_jobs(&self) -> Result<Option<LiveJobs>, String> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_from_scontrol_version() {
        let s = |t| Series::from_version_output(t).map_err(|e| e.to_string());
        assert_eq!(s("slurm-wlm 22.05.8\n"), Ok(Series::new(22, 5)));
        assert_eq!(s("slurm 24.11.5\n"), Ok(Series::new(24, 11)));
        assert_eq!(s("slurm 26.05.0-0rc1"), Ok(Series::new(26, 5)));
        for bad in ["", "slurm", "munge 0.5.15", "slurm x.y", "slurm 24"] {
            let err = s(bad).expect_err(bad);
            assert!(err.contains("scontrol --version"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn registration_sets_the_address_from_23_11() {
        assert!(!Series::new(22, 5).registration_sets_address());
        assert!(!Series::new(23, 2).registration_sets_address());
        assert!(Series::new(23, 11).registration_sets_address());
        assert!(Series::new(24, 11).registration_sets_address());
        assert!(Series::new(26, 5).registration_sets_address());
    }

    #[test]
    fn finished_jobs_are_not_live() {
        let jobs = parse_live_jobs(
            "12 RUNNING vm[1-2]\n13 COMPLETED vm3\n14 PENDING\n15 COMPLETING vm4\n16 CANCELLED\nbad line\n",
        );
        let job = |started, n: &[&str]| LiveJob {
            started,
            nodes: Some(n.iter().map(|s| s.to_string()).collect()),
        };
        assert_eq!(
            jobs,
            LiveJobs::from([
                (12, job(true, &["vm1", "vm2"])),
                (14, job(false, &[])),
                (15, job(false, &["vm4"])),
            ])
        );
    }

    #[test]
    fn a_node_list_that_does_not_expand_is_unknown_not_empty() {
        let jobs = parse_live_jobs("7 CONFIGURING vm[3-\n");
        let unknown = LiveJob {
            started: false,
            nodes: None,
        };
        assert_eq!(jobs, LiveJobs::from([(7, unknown)]));
    }

    #[test]
    fn huge_node_lists_are_refused_before_expansion() {
        assert_eq!(hostlist_upper_bound("vm[1-3],x[1-2][1-2]"), 7);
        assert!(expand_hostlist("C[1,80002438-550,5]").is_err());
        assert!(expand_hostlist("C[1-x]").is_err());
        assert_eq!(expand_hostlist("vm[1-3]").unwrap().len(), 3);
        let err = expand_hostlist("C[1,0002438-550555553,5]").unwrap_err();
        assert!(err.contains("more than 100000 nodes"), "{err}");
        assert!(expand_hostlist("a[1-1000][1-1000]").is_err());
    }

    #[test]
    fn cpus_per_node_expand() {
        assert_eq!(expand_cpus_per_node("4(x2),2"), Some(vec![4, 4, 2]));
        assert_eq!(expand_cpus_per_node("1"), Some(vec![1]));
        assert_eq!(expand_cpus_per_node("x"), None);
    }

    #[test]
    fn memory_sizes_parse_to_mib() {
        assert_eq!(parse_mem_mb("512M"), Some(512));
        assert_eq!(parse_mem_mb("4G"), Some(4096));
        assert_eq!(parse_mem_mb("1024"), Some(1024));
        assert_eq!(parse_mem_mb("1536K"), Some(2));
        assert_eq!(parse_mem_mb("lots"), None);
    }

    #[test]
    fn job_line_gives_memory_and_restarts() {
        let line = "JobId=7 JobName=my job with spaces UserId=alice(1000) JobState=CONFIGURING Reason=None Restarts=2 MinMemoryNode=512M MinTmpDiskNode=0 Features=(null)";
        let job = parse_job(line);
        assert_eq!(job.mem_per_node_mb, Some(512));
        assert_eq!(job.restarts, 2);
        assert_eq!(job.state, "CONFIGURING");
        let per_cpu = parse_job("JobId=8 Restarts=0 MinMemoryCPU=256M");
        assert_eq!(
            (per_cpu.mem_per_node_mb, per_cpu.mem_per_cpu_mb),
            (None, Some(256))
        );
    }

    #[test]
    fn node_lines_give_state_flags_and_reason() {
        let text = "NodeName=vm1 Arch=x86_64 CoresPerSocket=1 State=IDLE+CLOUD+POWERED_DOWN ThreadsPerCore=1 NodeAddr=vm1 NodeHostName=vm1 SlurmdStartTime=None Reason=slurm-one: VM 3 BOOT_FAILURE [root@2026-11-26T07:00:00]\nNodeName=vm2 State=ALLOCATED+CLOUD+POWERING_UP NodeAddr=10.77.0.3 SlurmdStartTime=2026-11-26T10:29:30\n";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 2);
        assert!(nodes[0].has("POWERED_DOWN") && nodes[0].has("CLOUD"));
        assert_eq!(
            nodes[0].reason.as_deref(),
            Some("slurm-one: VM 3 BOOT_FAILURE [root@2026-11-26T07:00:00]")
        );
        assert!(nodes[1].has("POWERING_UP"));
        assert_eq!(nodes[1].addr, "10.77.0.3");
        assert_eq!(nodes[0].slurmd_start, None);
        assert_eq!(
            nodes[1].slurmd_start.as_deref(),
            Some("2026-11-26T10:29:30")
        );
    }

    #[test]
    fn only_nodes_slurm_one_left_down_are_stuck() {
        let text = "NodeName=vm1 State=DOWN+CLOUD+POWERED_DOWN Reason=slurm-one: VM 3 of job 4 is GONE [root@t]\n\
                    NodeName=vm2 State=DOWN+CLOUD Reason=ResumeTimeout reached [slurm@t]\n\
                    NodeName=vm3 State=DOWN+CLOUD+POWERING_DOWN Reason=slurm-one: job 5 ended\n\
                    NodeName=vm4 State=DOWN+CLOUD Reason=maintenance [admin@t]\n\
                    NodeName=vm5 State=IDLE+CLOUD+POWERED_DOWN\n";
        let stuck = stuck_nodes(&parse_nodes(text));
        assert_eq!(
            stuck,
            vec![
                StuckNode {
                    name: "vm1".into(),
                    powered_down: true
                },
                StuckNode {
                    name: "vm2".into(),
                    powered_down: false
                }
            ]
        );
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
