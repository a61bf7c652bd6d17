//! The provisioning engine: turns "job J got nodes vm[1-3], 2 CPUs and 4 GB each" into
//! VMs that are running and recorded ([`Provisioner::provision`]), later gone
//! ([`Provisioner::teardown`]), and finds what a crash left behind ([`Provisioner::reconcile`]).
//!
//! Invariants: a row is written before its VM is asked for (state `creating`, with a unique
//! request tag that the VM also carries), so a crash at any point leaves something the next
//! run can find; a VM id is recorded as soon as OpenNebula returns it; a failed provisioning
//! terminates every VM it made and clears its rows before returning.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, TemplateSource};
use crate::mapping::{MappingDb, MappingError, Row, RowState};
use crate::one::client::{Client, OneError, OneErrorKind, VmAction, VmInfo};
use crate::one::states::{LcmState, VmState};
use crate::render::{self, tags, Creation, NodeSize, RenderError, VmRequest};

/// One allocated node of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRequest {
    /// SLURM node name.
    pub name: String,
    /// CPUs SLURM allocated on it (becomes VCPU).
    pub cpus: u32,
}

/// What a job needs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// SLURM job id.
    pub job_id: u32,
    /// Job name (user text).
    pub job_name: String,
    /// Job owner.
    pub user: String,
    /// Allocated nodes.
    pub nodes: Vec<NodeRequest>,
    /// Memory per node the job asked for, MiB (`None`: it asked none).
    pub memory_mb: Option<u64>,
    /// `--one-cpu-share`, if given.
    pub cpu_share: Option<f64>,
    /// `--one-template`, if given.
    pub template: Option<String>,
}

/// A node whose VM is up.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionedNode {
    /// SLURM node name.
    pub node: String,
    /// OpenNebula VM id.
    pub vm_id: u32,
    /// First NIC address.
    pub ip: Option<String>,
    /// Host it runs on.
    pub host: Option<String>,
}

/// Why a provisioning failed. Messages name the node, the VM and OpenNebula's words.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The request itself is wrong (sizes, options, template choice).
    #[error("job {job_id}: {message}")]
    BadRequest {
        /// Job.
        job_id: u32,
        /// What is wrong.
        message: String,
    },
    /// The VM template could not be built.
    #[error("job {job_id}, node {node}: {source}")]
    Render {
        /// Job.
        job_id: u32,
        /// Node.
        node: String,
        /// Cause.
        source: RenderError,
    },
    /// The mapping table failed.
    #[error("job {job_id}: mapping table: {source}")]
    Mapping {
        /// Job.
        job_id: u32,
        /// Cause.
        source: MappingError,
    },
    /// OpenNebula refused or did not answer a create.
    #[error("job {job_id}, node {node}: creating the VM failed: {source}")]
    Create {
        /// Job.
        job_id: u32,
        /// Node.
        node: String,
        /// Cause, with OpenNebula's message.
        source: OneError,
    },
    /// A VM went to a state it will not boot from.
    #[error("job {job_id}, node {node}: VM {vm_id} is {state}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    VmFailed {
        /// Job.
        job_id: u32,
        /// Node.
        node: String,
        /// VM.
        vm_id: u32,
        /// Its state name, e.g. BOOT_FAILURE.
        state: String,
        /// USER_TEMPLATE/ERROR, if any.
        reason: Option<String>,
    },
    /// Not every VM was up in time.
    #[error("job {job_id}: VMs not up within provisioning.boot_timeout ({:.0} s): {pending}", waited.as_secs_f64())]
    Deadline {
        /// Job.
        job_id: u32,
        /// How long it waited.
        waited: Duration,
        /// `node (VM id, state)` of those not up.
        pending: String,
    },
    /// Polling OpenNebula failed.
    #[error("job {job_id}: watching the VMs failed: {source}")]
    Poll {
        /// Job.
        job_id: u32,
        /// Cause.
        source: OneError,
    },
    /// OpenNebula refused a change of a running job's VM (suspend, resume, migrate, resize).
    #[error("job {job_id}, node {node}: {action} of VM {vm_id} failed: {source}")]
    VmAction {
        /// Job.
        job_id: u32,
        /// Node.
        node: String,
        /// VM.
        vm_id: u32,
        /// The action.
        action: &'static str,
        /// Cause.
        source: OneError,
    },
    /// A VM could not be terminated (teardown keeps its row so it is retried).
    #[error("job {job_id}, node {node}: terminating VM {vm_id} failed: {source}")]
    Terminate {
        /// Job.
        job_id: u32,
        /// Node.
        node: String,
        /// VM.
        vm_id: u32,
        /// Cause.
        source: OneError,
    },
}

impl ProvisionError {
    /// OpenNebula refused for a reason that will not go away by retrying (quota,
    /// authorization, a bad template): the job should be held, not requeued forever.
    pub fn is_permanent(&self) -> bool {
        match self {
            ProvisionError::BadRequest { .. } | ProvisionError::Render { .. } => true,
            ProvisionError::Create { source, .. } => matches!(
                source.kind(),
                Some(
                    OneErrorKind::Authentication
                        | OneErrorKind::Authorization
                        | OneErrorKind::Internal
                        | OneErrorKind::NoExists
                )
            ),
            _ => false,
        }
    }
}

/// What a teardown did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TeardownReport {
    /// `(node, VM)` terminated now.
    pub terminated: Vec<(String, u32)>,
    /// `(node, VM)` already gone or DONE.
    pub already_gone: Vec<(String, u32)>,
    /// Rows removed.
    pub rows_removed: usize,
}

/// A job SLURM still has in a live state (pending, configuring, running, suspended,
/// completing...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveJob {
    /// RUNNING or SUSPENDED: its PrologSlurmctld has ended, so its VMs should be up.
    pub started: bool,
    /// The nodes it holds now (none while pending or requeued); `None` when the list could
    /// not be read (then any node may be its).
    pub nodes: Option<BTreeSet<String>>,
}

/// Live jobs by id.
pub type LiveJobs = BTreeMap<u32, LiveJob>;

/// SLURM's view, as reconcile needs it. A trait so tests can drive it.
pub trait SlurmView {
    /// The live jobs, or `None` when SLURM cannot be asked (then the table is trusted).
    fn live_jobs(&self) -> Result<Option<LiveJobs>, String>;

    /// Cloud nodes left DOWN by slurm-one or a ResumeTimeout and not already powering
    /// down: candidates to return to the pool once no VM is mapped to them.
    fn stuck_nodes(&self) -> Result<Vec<StuckNode>, String> {
        Ok(Vec::new())
    }

    /// Sets nodes DOWN then POWER_DOWN with a reason (their job is requeued or failed).
    fn fail_nodes(&self, _nodes: &[String], _reason: &str) -> Result<(), String> {
        Ok(())
    }

    /// Returns stuck nodes to powered-down idle.
    fn return_nodes(&self, _nodes: &[StuckNode]) -> Result<(), String> {
        Ok(())
    }

    /// Says in the job's AdminComment what slurm-one did to it.
    fn comment_job(&self, _job_id: u32, _text: &str) -> Result<(), String> {
        Ok(())
    }

    /// Whether slurmctld takes a cloud node's address from its slurmd's registration
    /// (SLURM 23.11 and later, [`crate::slurm::Series::registration_sets_address`]).
    fn registration_sets_address(&self) -> Result<bool, String> {
        Ok(false)
    }

    /// Marks nodes to power down once their job has ended (POWER_DOWN_ASAP), as the prolog
    /// does once they registered.
    fn power_down_after_job(&self, _nodes: &[String], _reason: &str) -> Result<(), String> {
        Ok(())
    }
}

/// The reason the nodes of a running job carry (`sinfo -R`) until they power down after it.
pub fn runs_in_vm_reason(job_id: u32) -> String {
    format!("slurm-one: job {job_id} runs in this node's VM; powered down when it ends")
}

/// A DOWN cloud node.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckNode {
    /// Node name.
    pub name: String,
    /// Already POWERED_DOWN (`down~`), so RESUME makes it `idle~`; else it is powered down.
    pub powered_down: bool,
}

/// One difference reconcile found.
#[derive(Debug, Clone, PartialEq)]
pub enum Drift {
    /// A VM with this cluster's tags that no live job or row owns: terminated.
    OrphanVm {
        /// VM.
        vm_id: u32,
        /// Its job tag.
        job_id: Option<u32>,
        /// Its node tag.
        node: Option<String>,
    },
    /// A row whose VM is gone, DONE or was never made: removed.
    StaleRow {
        /// Job.
        job_id: u32,
        /// Node.
        node: String,
        /// VM, if one was recorded.
        vm_id: Option<u32>,
    },
    /// A live job's VM failed or vanished (POWEROFF, UNKNOWN, a failure state, gone): the
    /// VM is terminated, its node set DOWN → POWER_DOWN so SLURM requeues or fails the
    /// job, the row removed.
    LostVm {
        /// Job.
        job_id: u32,
        /// Node.
        node: String,
        /// VM.
        vm_id: u32,
        /// What the VM was, e.g. POWEROFF or GONE.
        state: String,
    },
    /// A cloud node left DOWN with no VM mapped to it: returned to powered-down idle.
    StuckNode {
        /// Node.
        node: String,
    },
    /// A job SLURM started while its rows say the VMs were never finished: its prolog was
    /// killed mid-provision (slurmctld counts a prolog killed by a signal as a success).
    /// Its nodes are set DOWN → POWER_DOWN so SLURM requeues or fails the job; the epilog
    /// then ends the VMs.
    UnreadyStart {
        /// Job.
        job_id: u32,
        /// Its nodes whose VMs were not ready.
        nodes: Vec<String>,
    },
    /// The same on SLURM 23.11 and later, where every node had a VM of the job, still
    /// alive: the job runs on them (see `reconcile`), so the killed prolog's work is
    /// finished instead: rows running, nodes marked to power down after the job.
    AdoptedStart {
        /// Job.
        job_id: u32,
        /// Its nodes, now marked.
        nodes: Vec<String>,
    },
    /// A VM of a live job that the table lost: its row is rebuilt from the tags.
    MissingRow {
        /// VM.
        vm_id: u32,
        /// Job.
        job_id: u32,
        /// Node.
        node: String,
    },
}

/// What a reconcile pass found and did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReconcileReport {
    /// Differences found (and fixed unless dry-run).
    pub drifts: Vec<Drift>,
    /// Items whose fix failed, with why; the next pass retries them.
    pub errors: Vec<String>,
    /// VMs left alone because they are younger than the grace window.
    pub young: usize,
}

/// The engine, over one config, one OpenNebula and one table.
pub struct Provisioner<'a> {
    cfg: &'a Config,
    one: &'a Client,
    db: &'a MappingDb,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A request tag unique across processes and time.
fn request_tag(cluster: &str, job_id: u32, node: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{cluster}-{job_id}-{node}-{:x}{nanos:08x}",
        std::process::id()
    )
}

/// One create. A transport error is never blindly retried: the VM is looked up by its
/// request tag first, and created again only if OpenNebula has none.
fn create_one(
    one: &Client,
    job_id: u32,
    node: &str,
    tag: &str,
    creation: &Creation,
) -> Result<u32, ProvisionError> {
    let attempt = || match creation {
        Creation::Allocate { template } => one.vm_allocate(template, false),
        Creation::Instantiate {
            template_id,
            name,
            extra,
        } => one.template_instantiate(*template_id, name, extra),
    };
    let fail = |source| ProvisionError::Create {
        job_id,
        node: node.to_string(),
        source,
    };
    match attempt() {
        Ok(id) => Ok(id),
        Err(e) if e.is_transport() => {
            log::warn!(
                "job {job_id}, node {node}: create unanswered ({e}); looking the VM up by its tag"
            );
            match find_by_tag(one, tag) {
                Ok(Some(id)) => Ok(id),
                Ok(None) => attempt().map_err(fail),
                Err(_) => Err(fail(e)),
            }
        }
        Err(e) => Err(fail(e)),
    }
}

fn find_by_tag(one: &Client, tag: &str) -> Result<Option<u32>, OneError> {
    let vms = one.vm_pool(false)?;
    Ok(vms
        .iter()
        .find(|v| v.user.get(tags::REQUEST_TAG).map(String::as_str) == Some(tag))
        .map(|v| v.id))
}

/// How long teardown keeps retrying a VM stuck in a state that refuses terminate.
const TERMINATE_DEADLINE: Duration = Duration::from_secs(60);

impl<'a> Provisioner<'a> {
    /// An engine over these parts.
    pub fn new(cfg: &'a Config, one: &'a Client, db: &'a MappingDb) -> Self {
        Provisioner { cfg, one, db }
    }

    pub(crate) fn cluster(&self) -> &str {
        &self.cfg.cluster.name
    }

    pub(crate) fn db(&self) -> &MappingDb {
        self.db
    }

    pub(crate) fn client(&self) -> &Client {
        self.one
    }

    pub(crate) fn config(&self) -> &Config {
        self.cfg
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        self.cfg.provisioning.poll_interval
    }

    fn mapping(&self, job_id: u32) -> impl Fn(MappingError) -> ProvisionError {
        move |source| ProvisionError::Mapping { job_id, source }
    }

    /// The size of each node's VM, per the sizing policy.
    pub fn size(&self, job: &JobRequest, node: &NodeRequest) -> Result<NodeSize, ProvisionError> {
        let s = &self.cfg.sizing;
        let bad = |message: String| ProvisionError::BadRequest {
            job_id: job.job_id,
            message,
        };
        let share = job.cpu_share.unwrap_or(s.cpu_share_default);
        if !(share.is_finite() && share >= s.cpu_share_min && share <= s.cpu_share_max) {
            return Err(bad(format!(
                "CPU share {share} is outside {}..={} (sizing.cpu_share_min/max)",
                s.cpu_share_min, s.cpu_share_max
            )));
        }
        if node.cpus == 0 {
            return Err(bad(format!("node {} has no CPUs allocated", node.name)));
        }
        let memory_mb = match job.memory_mb {
            Some(m) if m >= u64::from(s.min_memory_mb) => m,
            _ => u64::from(s.default_memory_mb),
        };
        Ok(NodeSize {
            memory_mb,
            vcpu: node.cpus,
            cpu_share: share,
        })
    }

    /// Creates one VM per node, records each as soon as its id is known, and waits until
    /// all are RUNNING (and READY when configured) with one pool query per round. On any
    /// failure or the deadline it terminates every VM it created, clears the rows, and
    /// returns what failed.
    pub fn provision(&self, job: &JobRequest) -> Result<Vec<ProvisionedNode>, ProvisionError> {
        let job_id = job.job_id;
        if job.nodes.is_empty() {
            return Err(ProvisionError::BadRequest {
                job_id,
                message: "no nodes to provision".into(),
            });
        }
        let template =
            self.cfg
                .template(job.template.as_deref())
                .map_err(|e| ProvisionError::BadRequest {
                    job_id,
                    message: e.to_string(),
                })?;
        let base_context = match &template.source {
            TemplateSource::Id(id) => {
                self.one
                    .template_info(*id)
                    .map_err(|source| ProvisionError::Create {
                        job_id,
                        node: job
                            .nodes
                            .first()
                            .map(|n| n.name.clone())
                            .unwrap_or_default(),
                        source,
                    })?
                    .context
            }
            TemplateSource::Body(_) => Vec::new(),
        };
        // Rows of this job mean an earlier attempt died mid-way (a killed hook): its VMs
        // are useless now, remove them before making new ones.
        let leftovers = self
            .db
            .job_rows(self.cluster(), job_id)
            .map_err(self.mapping(job_id))?;
        if !leftovers.is_empty() {
            log::warn!(
                "job {job_id}: {} rows from an interrupted attempt; tearing them down first",
                leftovers.len()
            );
            self.teardown(job_id)?;
        }
        let mut plans = Vec::with_capacity(job.nodes.len());
        for node in &job.nodes {
            let size = self.size(job, node)?;
            let tag = request_tag(self.cluster(), job_id, &node.name);
            let req = VmRequest {
                cluster: self.cluster(),
                job_id,
                job_name: &job.job_name,
                user: &job.user,
                node: &node.name,
                size,
                request_tag: &tag,
                start_script: &self.cfg.provisioning.start_script,
            };
            let creation =
                render::render(&req, &template.source, &base_context).map_err(|source| {
                    ProvisionError::Render {
                        job_id,
                        node: node.name.clone(),
                        source,
                    }
                })?;
            plans.push((node.name.clone(), tag, creation));
        }
        for (node, tag, _) in &plans {
            if let Err(e) = self.db.insert_creating(self.cluster(), job_id, node, tag) {
                self.rollback(job_id);
                return Err(self.mapping(job_id)(e));
            }
        }
        log::info!("job {job_id}: creating {} VMs", plans.len());
        let created = match self.create_all(job_id, &plans) {
            Ok(c) => c,
            Err(e) => {
                self.rollback(job_id);
                return Err(e);
            }
        };
        match self.wait_up(job_id, &created) {
            Ok(nodes) => {
                for n in &nodes {
                    let detail = n.host.as_ref().map(|h| format!("host {h}"));
                    if let Err(e) = self.db.set_state(
                        self.cluster(),
                        job_id,
                        &n.node,
                        RowState::Running,
                        detail.as_deref(),
                    ) {
                        log::warn!("job {job_id}: cannot mark {} running: {e}", n.node);
                    }
                }
                log::info!("job {job_id}: {} VMs running", nodes.len());
                Ok(nodes)
            }
            Err(e) => {
                log::error!("{e}; rolling back");
                self.rollback(job_id);
                Err(e)
            }
        }
    }

    /// Creates every planned VM, at most `concurrency` at a time. Workers only talk to
    /// OpenNebula; this thread records each VM id the moment a worker reports it (the
    /// table connection is not shared between threads).
    fn create_all(
        &self,
        job_id: u32,
        plans: &[(String, String, Creation)],
    ) -> Result<BTreeMap<String, u32>, ProvisionError> {
        let next = AtomicUsize::new(0);
        let workers = usize::try_from(self.cfg.provisioning.concurrency)
            .unwrap_or(1)
            .clamp(1, plans.len().max(1));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut created = BTreeMap::new();
        let mut first_error = None;
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let tx = tx.clone();
                let next = &next;
                let one = self.one;
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((node, tag, creation)) = plans.get(i) else {
                        break;
                    };
                    let r = create_one(one, job_id, node, tag, creation);
                    if r.is_err() {
                        // Stop handing out work: the job fails anyway.
                        next.store(plans.len(), Ordering::SeqCst);
                    }
                    if tx.send((node, tag, r)).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            for (node, tag, result) in rx {
                match result {
                    Ok(id) => {
                        log::info!("job {job_id}, node {node}: VM {id} created");
                        match self.db.set_vm(tag, id, RowState::Booting) {
                            Ok(()) => {
                                created.insert(node.clone(), id);
                            }
                            Err(e) => {
                                // The VM exists but is not recorded: terminate it now.
                                let _ = self.terminate_vm(id);
                                first_error.get_or_insert(self.mapping(job_id)(e));
                            }
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        });
        match first_error {
            Some(e) => Err(e),
            None => Ok(created),
        }
    }

    /// Polls with one `one.vmpool.infoextended` per round until every VM is up.
    fn wait_up(
        &self,
        job_id: u32,
        created: &BTreeMap<String, u32>,
    ) -> Result<Vec<ProvisionedNode>, ProvisionError> {
        let p = &self.cfg.provisioning;
        let start = Instant::now();
        let lo = created.values().min().copied().unwrap_or(0);
        let hi = created.values().max().copied().unwrap_or(0);
        let range = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        loop {
            let pool = match self.one.vm_pool_range(true, range(lo), range(hi)) {
                Ok(pool) => pool,
                // The VMs exist: an OpenNebula that is away for a moment (a restart) is
                // waited for until the boot deadline, not taken as a failed job.
                Err(e)
                    if e.is_transport() && start.elapsed() + p.poll_interval < p.boot_timeout =>
                {
                    log::warn!("job {job_id}: {e}; still waiting for the VMs");
                    std::thread::sleep(p.poll_interval.max(Duration::from_secs(1)));
                    continue;
                }
                Err(source) => return Err(ProvisionError::Poll { job_id, source }),
            };
            let by_id: BTreeMap<u32, &VmInfo> = pool.iter().map(|v| (v.id, v)).collect();
            let mut up = Vec::new();
            let mut pending = Vec::new();
            for (node, id) in created {
                match by_id.get(id) {
                    Some(vm) if vm.failed() => {
                        return Err(ProvisionError::VmFailed {
                            job_id,
                            node: node.clone(),
                            vm_id: *id,
                            state: vm.state_name(),
                            reason: vm.user.get("ERROR").cloned(),
                        })
                    }
                    Some(vm) if vm.running() && (!p.wait_ready || vm.ready()) => {
                        up.push(ProvisionedNode {
                            node: node.clone(),
                            vm_id: *id,
                            ip: vm.ips.first().cloned(),
                            host: vm.host.clone(),
                        })
                    }
                    Some(vm) => {
                        let what = if vm.running() {
                            "RUNNING, not READY".to_string()
                        } else {
                            vm.state_name()
                        };
                        pending.push(format!("{node} (VM {id}, {what})"));
                    }
                    None => pending.push(format!("{node} (VM {id}, not listed)")),
                }
            }
            if pending.is_empty() {
                return Ok(up);
            }
            if start.elapsed() + p.poll_interval > p.boot_timeout {
                return Err(ProvisionError::Deadline {
                    job_id,
                    waited: start.elapsed(),
                    pending: pending.join(", "),
                });
            }
            std::thread::sleep(p.poll_interval);
        }
    }

    /// Best-effort undo of a failed provisioning: terminate what exists, clear the rows.
    fn rollback(&self, job_id: u32) {
        match self.teardown(job_id) {
            Ok(r) => log::info!(
                "job {job_id}: rolled back ({} VMs terminated, {} rows removed)",
                r.terminated.len(),
                r.rows_removed
            ),
            Err(e) => {
                log::error!("job {job_id}: rollback incomplete, reconcile will finish it: {e}")
            }
        }
    }

    /// Terminates the job's VMs and clears its rows. Idempotent, and safe to run twice or
    /// concurrently. A row whose VM could not be terminated is kept so a retry finds it.
    pub fn teardown(&self, job_id: u32) -> Result<TeardownReport, ProvisionError> {
        self.teardown_rows(job_id, None)
    }

    /// [`Provisioner::teardown`] of the job's VMs on `nodes` only: SuspendProgram ends one
    /// node's VM while the job's other nodes may still be completing.
    pub fn teardown_nodes(
        &self,
        job_id: u32,
        nodes: &[String],
    ) -> Result<TeardownReport, ProvisionError> {
        self.teardown_rows(job_id, Some(nodes))
    }

    fn teardown_rows(
        &self,
        job_id: u32,
        nodes: Option<&[String]>,
    ) -> Result<TeardownReport, ProvisionError> {
        let cluster = self.cluster();
        // Claimed, not just read: a second epilog (or SuspendProgram) running at the same
        // time gets nothing and leaves these VMs to this call.
        let rows = self
            .db
            .claim_teardown(cluster, job_id, nodes, 2 * TERMINATE_DEADLINE)
            .map_err(self.mapping(job_id))?;
        let mut report = TeardownReport::default();
        if rows.is_empty() {
            return Ok(report);
        }
        // A row still `creating` may have a VM OpenNebula made but we never recorded.
        let untracked: Vec<&Row> = rows.iter().filter(|r| r.vm_id.is_none()).collect();
        let mut by_tag = BTreeMap::new();
        if !untracked.is_empty() {
            match self.one.vm_pool(false) {
                Ok(vms) => {
                    for vm in vms {
                        if let Some(t) = vm.user.get(tags::REQUEST_TAG) {
                            by_tag.insert(t.clone(), vm.id);
                        }
                    }
                }
                // Any VM such a create made carries this cluster's tags: reconcile finds it.
                Err(e) => log::warn!(
                    "job {job_id}: cannot look up VMs of unfinished creates ({e}); reconcile will find any by their tags"
                ),
            }
        }
        let mut first_error = None;
        for row in &rows {
            let vm_id = row.vm_id.or_else(|| by_tag.get(&row.request_tag).copied());
            let Some(vm_id) = vm_id else {
                if self
                    .db
                    .delete_row(cluster, job_id, &row.node)
                    .unwrap_or(false)
                {
                    report.rows_removed += 1;
                }
                continue;
            };
            match self.terminate_vm(vm_id) {
                Ok(true) => report.terminated.push((row.node.clone(), vm_id)),
                Ok(false) => report.already_gone.push((row.node.clone(), vm_id)),
                Err(source) => {
                    log::error!(
                        "job {job_id}, node {}: cannot terminate VM {vm_id}: {source}",
                        row.node
                    );
                    first_error.get_or_insert(ProvisionError::Terminate {
                        job_id,
                        node: row.node.clone(),
                        vm_id,
                        source,
                    });
                    continue;
                }
            }
            match self.db.delete_row(cluster, job_id, &row.node) {
                Ok(true) => report.rows_removed += 1,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(self.mapping(job_id)(e));
                }
            }
        }
        log::info!(
            "job {job_id}: teardown terminated {} VMs ({} already gone), removed {} rows",
            report.terminated.len(),
            report.already_gone.len(),
            report.rows_removed
        );
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Terminates a VM whatever it is doing. `Ok(true)` if it was ended now, `Ok(false)`
    /// if it was already gone or DONE. States that refuse terminate (PROLOG, BOOT, EPILOG,
    /// a failure) are ended with `one.vm.recover` delete, as `onevm recover --delete` does.
    pub fn terminate_vm(&self, vm_id: u32) -> Result<bool, OneError> {
        let start = Instant::now();
        loop {
            let err = match self.one.vm_action(VmAction::TerminateHard, vm_id) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == Some(OneErrorKind::NoExists) => return Ok(false),
                Err(e) => e,
            };
            match self.one.vm_info(vm_id) {
                Ok(vm) if vm.state == VmState::Done => return Ok(false),
                Ok(vm)
                    if vm.state == VmState::Active
                        && matches!(vm.lcm, LcmState::EPILOG | LcmState::CLEANUP_DELETE) =>
                {
                    return Ok(true)
                }
                Ok(_) if err.kind() == Some(OneErrorKind::Action) => {
                    match self.one.vm_recover_delete(vm_id) {
                        Ok(()) => return Ok(true),
                        Err(e) => log::warn!("VM {vm_id}: recover --delete failed: {e}"),
                    }
                }
                Err(info) if info.kind() == Some(OneErrorKind::NoExists) => return Ok(false),
                _ => {}
            }
            if start.elapsed() > TERMINATE_DEADLINE {
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Compares the table, the VMs carrying this cluster's tags and SLURM's live jobs, and
    /// fixes orphan VMs (after `grace`), stale rows and rows the table lost. One failed
    /// item never aborts the pass. With `dry_run` it only reports.
    pub fn reconcile(
        &self,
        slurm: &dyn SlurmView,
        grace: Duration,
        dry_run: bool,
    ) -> Result<ReconcileReport, ProvisionError> {
        let cluster = self.cluster();
        // SLURM first, then VMs, then rows: a job seen started has no prolog writing any
        // more, and a VM in the pool already has the row written before its create.
        let live_jobs = slurm
            .live_jobs()
            .map_err(|message| ProvisionError::BadRequest {
                job_id: 0,
                message: format!("cannot ask SLURM for live jobs: {message}"),
            })?;
        let vms = self
            .one
            .vm_pool(false)
            .map_err(|source| ProvisionError::Poll { job_id: 0, source })?;
        let rows = self.db.all_rows(cluster).map_err(self.mapping(0))?;
        let now = unix_now();
        let grace_s = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let mut report = ReconcileReport::default();
        let ending = |v: &VmInfo| {
            v.state == VmState::Active
                && matches!(
                    v.lcm,
                    LcmState::SHUTDOWN | LcmState::EPILOG | LcmState::CLEANUP_DELETE
                )
        };
        let ours: Vec<&VmInfo> = vms
            .iter()
            .filter(|v| {
                v.user.get(tags::CLUSTER).map(String::as_str) == Some(cluster) && !ending(v)
            })
            .collect();
        let row_vm_ids: BTreeSet<u32> = rows.iter().filter_map(|r| r.vm_id).collect();
        let row_tags: BTreeSet<&str> = rows.iter().map(|r| r.request_tag.as_str()).collect();
        // A VM or row is owned when its job still holds its node: a requeued job that
        // starts again elsewhere (or waits) does not keep what its killed attempt made.
        let holds = |job: u32, node: &str| match &live_jobs {
            Some(jobs) => jobs
                .get(&job)
                .is_some_and(|j| j.nodes.as_ref().is_none_or(|n| n.contains(node))),
            None => rows.iter().any(|r| r.job_id == job && r.node == node),
        };

        for vm in &ours {
            let job = vm
                .user
                .get(tags::JOB_ID)
                .and_then(|j| j.parse::<u32>().ok());
            let node = vm.user.get(tags::NODE).cloned();
            let recorded = row_vm_ids.contains(&vm.id)
                || vm
                    .user
                    .get(tags::REQUEST_TAG)
                    .is_some_and(|t| row_tags.contains(t.as_str()));
            let owned = match (job, &node) {
                (Some(j), Some(n)) => holds(j, n),
                _ => false,
            };
            if owned && recorded {
                continue;
            }
            // A running job's VM without a row: the table lost it (no prolog or teardown is
            // at work on a RUNNING job), so it is rebuilt at once rather than after the grace.
            let started = job
                .and_then(|j| live_jobs.as_ref().and_then(|jobs| jobs.get(&j)))
                .is_some_and(|j| j.started);
            if !(owned && started) && now - vm.stime < grace_s {
                report.young += 1;
                continue;
            }
            if owned {
                let (Some(job_id), Some(node)) = (job, node) else {
                    continue;
                };
                report.drifts.push(Drift::MissingRow {
                    vm_id: vm.id,
                    job_id,
                    node: node.clone(),
                });
                if !dry_run {
                    let row = Row {
                        cluster: cluster.to_string(),
                        job_id,
                        node,
                        vm_id: Some(vm.id),
                        // A started job's VM serves it (whatever it is doing: migrating,
                        // ...); only under a configuring job is a VM not yet up "booting".
                        state: if vm.state == VmState::Suspended {
                            RowState::Suspended
                        } else if started || vm.running() {
                            RowState::Running
                        } else {
                            RowState::Booting
                        },
                        request_tag: vm
                            .user
                            .get(tags::REQUEST_TAG)
                            .cloned()
                            .unwrap_or_else(|| format!("rebuilt-{}", vm.id)),
                        created: vm.stime,
                        updated: now,
                        detail: Some("rebuilt from VM tags".into()),
                    };
                    if let Err(e) = self.db.upsert_from_tags(&row) {
                        report
                            .errors
                            .push(format!("VM {}: rebuilding its row: {e}", vm.id));
                    }
                }
                continue;
            }
            report.drifts.push(Drift::OrphanVm {
                vm_id: vm.id,
                job_id: job,
                node: node.clone(),
            });
            if !dry_run {
                log::warn!(
                    "reconcile: terminating orphan VM {} (job {job:?}, node {node:?})",
                    vm.id
                );
                if let Err(e) = self.terminate_vm(vm.id) {
                    report.errors.push(format!("VM {}: terminate: {e}", vm.id));
                    continue;
                }
                if let (Some(j), Some(n)) = (job, &node) {
                    let _ = self.db.delete_row(cluster, j, n);
                }
            }
        }

        let by_id: BTreeMap<u32, &VmInfo> = ours.iter().map(|v| (v.id, *v)).collect();
        for row in &rows {
            let vm = row.vm_id.and_then(|id| by_id.get(&id));
            let lost_state = match (row.vm_id, vm) {
                (Some(_), None) => Some("GONE".to_string()),
                (Some(_), Some(v)) if v.failed() && row.state != RowState::Creating => {
                    Some(v.state_name())
                }
                _ => None,
            };
            let never_made = row.vm_id.is_none()
                && now - row.created >= grace_s
                && !ours
                    .iter()
                    .any(|v| v.user.get(tags::REQUEST_TAG) == Some(&row.request_tag));
            if lost_state.is_none() && !never_made {
                continue;
            }
            let live = live_jobs.is_some() && holds(row.job_id, &row.node);
            match (row.vm_id, &lost_state) {
                (Some(vm_id), Some(state)) if live => report.drifts.push(Drift::LostVm {
                    job_id: row.job_id,
                    node: row.node.clone(),
                    vm_id,
                    state: state.clone(),
                }),
                _ => report.drifts.push(Drift::StaleRow {
                    job_id: row.job_id,
                    node: row.node.clone(),
                    vm_id: row.vm_id,
                }),
            }
            if dry_run {
                continue;
            }
            log::warn!(
                "reconcile: job {} node {}: VM {:?} is {}; removing the row",
                row.job_id,
                row.node,
                row.vm_id,
                lost_state.as_deref().unwrap_or("never created")
            );
            if let Some(vm_id) = row.vm_id.filter(|_| vm.is_some()) {
                if let Err(e) = self.terminate_vm(vm_id) {
                    report.errors.push(format!("VM {vm_id}: terminate: {e}"));
                    continue;
                }
            }
            if live && lost_state.is_some() {
                let reason = format!(
                    "slurm-one: VM {} of job {} is {}",
                    row.vm_id.unwrap_or(0),
                    row.job_id,
                    lost_state.as_deref().unwrap_or("gone")
                );
                if let Err(e) = slurm.fail_nodes(std::slice::from_ref(&row.node), &reason) {
                    report.errors.push(format!("node {}: {e}", row.node));
                }
            }
            if let Err(e) = self.db.delete_row(cluster, row.job_id, &row.node) {
                report
                    .errors
                    .push(format!("job {} node {}: {e}", row.job_id, row.node));
            }
        }

        if let Some(jobs) = &live_jobs {
            let mut unready: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            for row in &rows {
                let started = jobs.get(&row.job_id).is_some_and(|j| j.started);
                if started
                    && matches!(row.state, RowState::Creating | RowState::Booting)
                    && holds(row.job_id, &row.node)
                {
                    unready
                        .entry(row.job_id)
                        .or_default()
                        .push(row.node.clone());
                }
            }
            // SLURM 22.05 launches such a job at the address the prolog parked its nodes at
            // (nowhere): it must be requeued. From 23.11 slurmctld starts a job only once its
            // nodes' slurmds registered and takes each node's address from that registration
            // (src/slurmctld/node_mgr.c, validate_node_specs, 24.11.5), so the job runs on
            // whatever registered under its nodes' names; when that can only be the VMs made
            // for it (each node has one, alive; a stale VM's slurmd would be refused by the
            // plugin's job prolog), requeueing would only throw a healthy job's work away.
            let adopt_possible = !unready.is_empty()
                && slurm.registration_sets_address().unwrap_or_else(|e| {
                    report
                        .errors
                        .push(format!("cannot ask SLURM for its series: {e}"));
                    false
                });
            for (job_id, nodes) in unready {
                let alive = |node: &String| {
                    rows.iter()
                        .find(|r| r.job_id == job_id && &r.node == node)
                        .and_then(|r| r.vm_id)
                        .is_some_and(|id| {
                            ours.iter()
                                .any(|v| v.id == id && v.state == VmState::Active)
                        })
                };
                if adopt_possible && nodes.iter().all(alive) {
                    report.drifts.push(Drift::AdoptedStart {
                        job_id,
                        nodes: nodes.clone(),
                    });
                    if dry_run {
                        continue;
                    }
                    log::warn!(
                        "reconcile: job {job_id} started on the VMs its killed prolog made \
                         (SLURM took their addresses from their registrations); marking \
                         rows running and nodes {} to power down after it",
                        nodes.join(",")
                    );
                    for node in &nodes {
                        if let Err(e) =
                            self.db
                                .set_state(cluster, job_id, node, RowState::Running, None)
                        {
                            report.errors.push(format!("job {job_id} node {node}: {e}"));
                        }
                    }
                    if let Err(e) = slurm.power_down_after_job(&nodes, &runs_in_vm_reason(job_id)) {
                        report.errors.push(format!("job {job_id}: {e}"));
                    }
                    continue;
                }
                report.drifts.push(Drift::UnreadyStart {
                    job_id,
                    nodes: nodes.clone(),
                });
                if dry_run {
                    continue;
                }
                let reason = format!(
                    "slurm-one: job {job_id} started before its VMs were ready (its prolog was killed)"
                );
                log::warn!("reconcile: {reason}; nodes {}", nodes.join(","));
                if let Err(e) = slurm.fail_nodes(&nodes, &reason) {
                    report.errors.push(format!("job {job_id}: {e}"));
                } else if let Err(e) = slurm.comment_job(
                    job_id,
                    &format!("{reason}; nodes failed, SLURM requeues or ends it"),
                ) {
                    log::warn!("job {job_id}: cannot set AdminComment: {e}");
                }
            }
        }

        match slurm.stuck_nodes() {
            Ok(stuck) => {
                let mapped: BTreeSet<String> = self
                    .db
                    .all_rows(cluster)
                    .map(|rows| rows.into_iter().map(|r| r.node).collect())
                    .unwrap_or_default();
                let free: Vec<StuckNode> = stuck
                    .into_iter()
                    .filter(|n| !mapped.contains(&n.name))
                    .collect();
                for n in &free {
                    report.drifts.push(Drift::StuckNode {
                        node: n.name.clone(),
                    });
                }
                if !dry_run && !free.is_empty() {
                    if let Err(e) = slurm.return_nodes(&free) {
                        report.errors.push(format!("returning nodes: {e}"));
                    }
                }
            }
            Err(e) => report.errors.push(format!("cannot list SLURM nodes: {e}")),
        }
        log::info!(
            "reconcile: {} drifts ({}), {} errors, {} young VMs left alone",
            report.drifts.len(),
            if dry_run { "reported only" } else { "fixed" },
            report.errors.len(),
            report.young
        );
        Ok(report)
    }
}
