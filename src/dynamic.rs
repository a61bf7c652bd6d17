//! Dynamic fractional resources: suspend and resume a job with its VMs, live-migrate its
//! VMs, change a running job's CPU share. Each change is recorded in the mapping table
//! (state and detail) and logged.
//!
//! Suspension follows SLURM: `scontrol suspend JOB` stops the job's tasks through the
//! nodes' slurmds, then [`sync_suspensions`] (run every second by `slurm-one reconcile
//! --watch`) suspends the job's VMs in OpenNebula; on `scontrol resume JOB` slurmctld's
//! resume request waits in the frozen slurmd's accept queue while the watcher resumes the
//! VMs within a second, well inside SLURM's MessageTimeout, and the job carries on. A VM
//! suspended longer than SlurmdTimeout misses slurmctld's pings and its node is set DOWN:
//! keep suspensions shorter than SlurmdTimeout (default 300 s) or raise it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::mapping::{Row, RowState};
use crate::one::client::{HostInfo, VmAction, VmInfo};
use crate::one::states::{LcmState, VmState};
use crate::provision::{ProvisionError, Provisioner};

/// How long a VM may take to settle after a suspend, resume, migrate or resize.
const SETTLE: Duration = Duration::from_secs(60);

/// What a change did to one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmChange {
    /// Node.
    pub node: String,
    /// VM.
    pub vm_id: u32,
    /// What it is now, e.g. `SUSPENDED`, `host ns-host-2`, `CPU 0.5`.
    pub now: String,
}

impl Provisioner<'_> {
    fn job_vms(&self, job_id: u32) -> Result<Vec<(Row, u32)>, ProvisionError> {
        let rows = self
            .db()
            .job_rows(self.cluster(), job_id)
            .map_err(|source| ProvisionError::Mapping { job_id, source })?;
        if rows.is_empty() {
            return Err(ProvisionError::BadRequest {
                job_id,
                message: "no VMs are mapped to this job".into(),
            });
        }
        Ok(rows
            .into_iter()
            .filter_map(|r| r.vm_id.map(|v| (r, v)))
            .collect())
    }

    /// Polls until every VM satisfies `done`, with one pool call per round.
    fn settle(
        &self,
        job_id: u32,
        ids: &[u32],
        done: &dyn Fn(&VmInfo) -> bool,
    ) -> Result<Vec<VmInfo>, ProvisionError> {
        let start = Instant::now();
        loop {
            let pool = self
                .client()
                .vm_pool(true)
                .map_err(|source| ProvisionError::Poll { job_id, source })?;
            let mine: Vec<VmInfo> = pool.into_iter().filter(|v| ids.contains(&v.id)).collect();
            if mine.len() == ids.len() && mine.iter().all(done) {
                return Ok(mine);
            }
            if let Some(v) = mine
                .iter()
                .find(|v| v.failed() && v.state != VmState::Poweroff)
            {
                return Err(ProvisionError::VmFailed {
                    job_id,
                    node: v.user.get("SLURM_NODE").cloned().unwrap_or_default(),
                    vm_id: v.id,
                    state: v.state_name(),
                    reason: v.user.get("ERROR").cloned(),
                });
            }
            if start.elapsed() > SETTLE {
                let states: Vec<String> = mine
                    .iter()
                    .map(|v| format!("VM {} {}", v.id, v.state_name()))
                    .collect();
                return Err(ProvisionError::Deadline {
                    job_id,
                    waited: start.elapsed(),
                    pending: states.join(", "),
                });
            }
            std::thread::sleep(self.poll_interval().min(Duration::from_millis(200)));
        }
    }

    fn record(&self, job_id: u32, node: &str, state: RowState, detail: &str) {
        if let Err(e) = self
            .db()
            .set_state(self.cluster(), job_id, node, state, Some(detail))
        {
            log::warn!("job {job_id}, node {node}: cannot record {detail}: {e}");
        }
    }

    /// Suspends the job's VMs in OpenNebula and waits until they are SUSPENDED.
    pub fn suspend_job(&self, job_id: u32) -> Result<Vec<VmChange>, ProvisionError> {
        self.act_and_settle(
            job_id,
            VmAction::Suspend,
            RowState::Suspended,
            VmState::Suspended,
        )
    }

    /// Resumes the job's VMs and waits until they are RUNNING again.
    pub fn resume_job(&self, job_id: u32) -> Result<Vec<VmChange>, ProvisionError> {
        self.act_and_settle(job_id, VmAction::Resume, RowState::Running, VmState::Active)
    }

    fn act_and_settle(
        &self,
        job_id: u32,
        action: VmAction,
        row_state: RowState,
        target: VmState,
    ) -> Result<Vec<VmChange>, ProvisionError> {
        let vms = self.job_vms(job_id)?;
        for (row, vm_id) in &vms {
            if let Err(source) = self.client().vm_action(action, *vm_id) {
                // Already there (a repeated call) is fine; anything else is reported.
                let there = self
                    .client()
                    .vm_info(*vm_id)
                    .is_ok_and(|v| v.state == target && (target != VmState::Active || v.running()));
                if !there {
                    return Err(ProvisionError::VmAction {
                        job_id,
                        node: row.node.clone(),
                        vm_id: *vm_id,
                        action: action.as_str(),
                        source,
                    });
                }
            }
        }
        let ids: Vec<u32> = vms.iter().map(|(_, v)| *v).collect();
        let settled = self.settle(job_id, &ids, &|v| {
            v.state == target && (target != VmState::Active || v.lcm == LcmState::RUNNING)
        })?;
        let word = if target == VmState::Suspended {
            "suspended"
        } else {
            "resumed"
        };
        Ok(vms
            .iter()
            .map(|(row, vm_id)| {
                let host = settled
                    .iter()
                    .find(|v| v.id == *vm_id)
                    .and_then(|v| v.host.clone());
                let detail = format!("{word} on {}", host.as_deref().unwrap_or("?"));
                self.record(job_id, &row.node, row_state, &detail);
                log::info!("job {job_id}, node {}: VM {vm_id} {word}", row.node);
                VmChange {
                    node: row.node.clone(),
                    vm_id: *vm_id,
                    now: word.to_uppercase(),
                }
            })
            .collect())
    }

    /// Live-migrates the job's VMs to host `to` (a name), or each to another host with room.
    pub fn migrate_job(
        &self,
        job_id: u32,
        to: Option<&str>,
    ) -> Result<Vec<VmChange>, ProvisionError> {
        let vms = self.job_vms(job_id)?;
        let hosts = self
            .client()
            .host_pool()
            .map_err(|source| ProvisionError::Poll { job_id, source })?;
        let pool = self
            .client()
            .vm_pool(false)
            .map_err(|source| ProvisionError::Poll { job_id, source })?;
        let mut moves = Vec::new();
        for (row, vm_id) in &vms {
            let vm =
                pool.iter()
                    .find(|v| v.id == *vm_id)
                    .ok_or_else(|| ProvisionError::BadRequest {
                        job_id,
                        message: format!("VM {vm_id} of node {} is not in OpenNebula", row.node),
                    })?;
            let target = pick_host(&hosts, vm, to).ok_or_else(|| ProvisionError::BadRequest {
                job_id,
                message: match to {
                    Some(name) => {
                        format!("host {name} does not exist, is the VM's own, or has no room")
                    }
                    None => format!("no other host has room for VM {vm_id}"),
                },
            })?;
            self.client()
                .vm_migrate(*vm_id, target.id, true)
                .map_err(|source| ProvisionError::VmAction {
                    job_id,
                    node: row.node.clone(),
                    vm_id: *vm_id,
                    action: "live-migrate",
                    source,
                })?;
            log::info!(
                "job {job_id}, node {}: live-migrating VM {vm_id} to {}",
                row.node,
                target.name
            );
            moves.push((row.node.clone(), *vm_id, target.name.clone()));
        }
        let ids: Vec<u32> = moves.iter().map(|(_, v, _)| *v).collect();
        self.settle(job_id, &ids, &|v| {
            v.running()
                && moves
                    .iter()
                    .any(|(_, id, host)| *id == v.id && v.host.as_deref() == Some(host))
        })?;
        Ok(moves
            .into_iter()
            .map(|(node, vm_id, host)| {
                self.record(
                    job_id,
                    &node,
                    RowState::Running,
                    &format!("migrated to {host}"),
                );
                VmChange {
                    node,
                    vm_id,
                    now: format!("host {host}"),
                }
            })
            .collect())
    }

    /// Sets the CPU share of the job's running VMs: CPU = VCPU × share (`one.vm.resize`).
    pub fn resize_job(&self, job_id: u32, share: f64) -> Result<Vec<VmChange>, ProvisionError> {
        let s = &self.config().sizing;
        if !(share.is_finite() && share >= s.cpu_share_min && share <= s.cpu_share_max) {
            return Err(ProvisionError::BadRequest {
                job_id,
                message: format!(
                    "CPU share {share} is outside {}..={} (sizing.cpu_share_min/max)",
                    s.cpu_share_min, s.cpu_share_max
                ),
            });
        }
        let vms = self.job_vms(job_id)?;
        let mut changes = Vec::new();
        for (row, vm_id) in &vms {
            let vm = self
                .client()
                .vm_info(*vm_id)
                .map_err(|source| ProvisionError::Poll { job_id, source })?;
            let size = crate::render::NodeSize {
                memory_mb: vm.memory_mb.unwrap_or(0),
                vcpu: vm.vcpu.unwrap_or(1),
                cpu_share: share,
            };
            let cpu = size.cpu_text();
            self.client()
                .vm_resize(*vm_id, &format!("CPU = \"{cpu}\""))
                .map_err(|source| ProvisionError::VmAction {
                    job_id,
                    node: row.node.clone(),
                    vm_id: *vm_id,
                    action: "resize",
                    source,
                })?;
            log::info!(
                "job {job_id}, node {}: VM {vm_id} CPU -> {cpu} (share {share})",
                row.node
            );
            changes.push((row.node.clone(), *vm_id, cpu));
        }
        let ids: Vec<u32> = changes.iter().map(|(_, v, _)| *v).collect();
        self.settle(job_id, &ids, &|v| {
            v.running()
                && changes.iter().any(|(_, id, cpu)| {
                    *id == v.id && v.cpu.is_some_and(|c| Some(c) == cpu.parse().ok())
                })
        })?;
        Ok(changes
            .into_iter()
            .map(|(node, vm_id, cpu)| {
                self.record(
                    job_id,
                    &node,
                    RowState::Running,
                    &format!("cpu share {share} (CPU {cpu})"),
                );
                VmChange {
                    node,
                    vm_id,
                    now: format!("CPU {cpu}"),
                }
            })
            .collect())
    }

    /// Makes OpenNebula follow SLURM's suspensions: VMs of jobs SLURM suspended are
    /// suspended, VMs of jobs SLURM resumed are resumed. `suspended` is the set of job ids
    /// SLURM has SUSPENDED. Returns what changed; one failure does not stop the others.
    pub fn sync_suspensions(&self, suspended: &BTreeSet<u32>) -> (Vec<VmChange>, Vec<String>) {
        let rows = match self.db().all_rows(self.cluster()) {
            Ok(r) => r,
            Err(e) => return (Vec::new(), vec![e.to_string()]),
        };
        let mut to_suspend = BTreeSet::new();
        let mut to_resume = BTreeSet::new();
        for r in &rows {
            match (r.state, suspended.contains(&r.job_id)) {
                (RowState::Running, true) => {
                    to_suspend.insert(r.job_id);
                }
                (RowState::Suspended, false) => {
                    to_resume.insert(r.job_id);
                }
                _ => {}
            }
        }
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        // Resume first: slurmctld's resume request is waiting on those frozen slurmds.
        for job in to_resume {
            match self.resume_job(job) {
                Ok(c) => changes.extend(c),
                Err(e) => errors.push(e.to_string()),
            }
        }
        for job in to_suspend {
            match self.suspend_job(job) {
                Ok(c) => changes.extend(c),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (changes, errors)
    }
}

/// The host a VM moves to: the named one, or the first other monitored host with room.
fn pick_host<'h>(hosts: &'h [HostInfo], vm: &VmInfo, to: Option<&str>) -> Option<&'h HostInfo> {
    let cpu100 = (vm.cpu.unwrap_or(0.0) * 100.0).round() as i64;
    let mem_kib = i64::try_from(vm.memory_mb.unwrap_or(0) * 1024).unwrap_or(i64::MAX);
    let fits = |h: &&HostInfo| {
        h.state == 2
            && h.free_cpu >= cpu100
            && h.free_mem_kib >= mem_kib
            && vm.host.as_deref() != Some(&h.name)
    };
    match to {
        Some(name) => hosts.iter().filter(|h| h.name == name).find(fits),
        None => hosts.iter().find(fits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: u32, name: &str, free_cpu: i64, free_mem_kib: i64) -> HostInfo {
        HostInfo {
            id,
            name: name.into(),
            state: 2,
            free_cpu,
            free_mem_kib,
        }
    }

    fn vm_on(host: &str) -> VmInfo {
        VmInfo {
            id: 1,
            name: "v".into(),
            state: VmState::Active,
            lcm: LcmState::RUNNING,
            stime: 0,
            host: Some(host.into()),
            ips: vec![],
            cpu: Some(1.0),
            memory_mb: Some(512),
            vcpu: Some(1),
            user: Default::default(),
        }
    }

    #[test]
    fn migration_picks_another_host_with_room() {
        let hosts = vec![
            host(0, "h1", 800, 1 << 24),
            host(1, "h2", 50, 1 << 24),
            host(2, "h3", 800, 1 << 24),
        ];
        assert_eq!(pick_host(&hosts, &vm_on("h1"), None).map(|h| h.id), Some(2));
        assert_eq!(
            pick_host(&hosts, &vm_on("h1"), Some("h3")).map(|h| h.id),
            Some(2)
        );
        assert!(
            pick_host(&hosts, &vm_on("h1"), Some("h2")).is_none(),
            "h2 has no room"
        );
        assert!(
            pick_host(&hosts, &vm_on("h1"), Some("h1")).is_none(),
            "own host"
        );
        assert!(pick_host(&hosts, &vm_on("h1"), Some("nope")).is_none());
    }
}
