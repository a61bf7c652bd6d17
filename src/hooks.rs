//! What slurmctld's hooks do, as library functions the thin hook programs call:
//! PrologSlurmctld provisions the job's VMs, waits until their slurmds registered and marks
//! the nodes POWER_DOWN_ASAP; SuspendProgram, which slurmctld runs as it powers a node down
//! after the job, terminates that node's VM; EpilogSlurmctld tears down only what a prolog
//! that did not get that far left; ResumeProgram only acknowledges.
//!
//! Every SLURM-facing step goes through [`crate::slurm`]; every OpenNebula one through
//! [`crate::provision`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::mapping::MappingDb;
use crate::one::client::Client;
use crate::options;
use crate::provision::SlurmView as _;
use crate::provision::{JobRequest, NodeRequest, ProvisionError, Provisioner};
use crate::slurm::{self, SlurmError};

/// Where a cloud node points while its VM is being made: TEST-NET-1 (RFC 5737), routed
/// nowhere, numeric so nothing resolves it.
pub const PARKED_NODE_ADDR: &str = "192.0.2.1";

/// Why a hook failed; the message is what lands in the node reason and job comment.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// A variable slurmctld should have set is missing or malformed.
    #[error("environment: {0}")]
    Environment(String),
    /// A `--one-*` value did not pass the admin's rules.
    #[error(transparent)]
    Option(#[from] options::OptionError),
    /// Provisioning or teardown failed.
    #[error(transparent)]
    Provision(Box<ProvisionError>),
    /// A SLURM command failed.
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    /// The nodes did not register in time.
    #[error("nodes {nodes} did not register with slurmctld within provisioning.register_timeout ({:.0} s)", waited.as_secs_f64())]
    Registration {
        /// The nodes still powering up.
        nodes: String,
        /// How long the hook waited.
        waited: Duration,
    },
}

impl From<ProvisionError> for HookError {
    fn from(e: ProvisionError) -> Self {
        HookError::Provision(Box::new(e))
    }
}

/// What every hook needs: config, OpenNebula, the table.
pub struct HookContext {
    /// The loaded config.
    pub cfg: Config,
    /// OpenNebula client.
    pub one: Client,
    /// Mapping table.
    pub db: MappingDb,
}

/// Where a hook finds its config: `$SLURM_ONE_CONFIG`, else `slurm-one.toml` beside the
/// program (slurmctld gives hooks no arguments and a bare environment), else
/// `/etc/slurm-one/slurm-one.toml`.
pub fn config_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(crate::config::CONFIG_PATH_ENV) {
        return p.into();
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("slurm-one.toml")))
        .filter(|p| p.exists())
    {
        return beside;
    }
    crate::config::DEFAULT_CONFIG_PATH.into()
}

/// Why a hook could not start.
#[derive(Debug)]
pub enum SetupError {
    /// No usable config: nothing is logged yet, the message goes to stderr only.
    Config(String),
    /// Config and logging are up, but OpenNebula's client or the table could not be set up
    /// (already logged); the config lets the prolog still report the failure to SLURM.
    Connect {
        /// The loaded config.
        cfg: Box<Config>,
        /// What failed.
        message: String,
    },
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Config(m) | SetupError::Connect { message: m, .. } => f.write_str(m),
        }
    }
}

/// Loads config, starts logging (syslog, ident `program`), opens OpenNebula and the table.
pub fn setup(program: &str) -> Result<HookContext, SetupError> {
    let path = config_path();
    let cfg = Config::load(&path).map_err(|e| SetupError::Config(e.to_string()))?;
    if let (Some(conf), None) = (&cfg.cluster.slurm_conf, std::env::var_os("SLURM_CONF")) {
        // Still single-threaded here: nothing reads the environment concurrently.
        std::env::set_var("SLURM_CONF", conf);
    }
    let stderr = std::env::var_os("SLURM_ONE_DEBUG").is_some();
    crate::logging::init(
        program,
        cfg.logging.syslog_facility,
        cfg.logging.level,
        cfg.logging.file.as_deref(),
        stderr,
    );
    let connected = crate::admin::client(&cfg, false)
        .map_err(|e| e.to_string())
        .and_then(|one| {
            let db = crate::admin::open_db(&cfg).map_err(|e| e.to_string())?;
            Ok((one, db))
        });
    match connected {
        Ok((one, db)) => Ok(HookContext { cfg, one, db }),
        Err(message) => {
            // slurmctld drops a hook's stderr: the log is where an admin will look.
            log::error!("{program}: cannot start: {message}");
            Err(SetupError::Connect {
                cfg: Box::new(cfg),
                message,
            })
        }
    }
}

/// What PrologSlurmctld reads from its environment (set once, typed).
#[derive(Debug, Clone, PartialEq)]
pub struct PrologEnv {
    /// SLURM_JOB_ID.
    pub job_id: u32,
    /// SLURM_JOB_NODELIST, expanded.
    pub nodes: Vec<String>,
    /// SLURM_JOB_CPUS_PER_NODE, expanded, one per node.
    pub cpus: Vec<u32>,
    /// SLURM_JOB_NAME.
    pub job_name: String,
    /// SLURM_JOB_USER.
    pub user: String,
    /// SLURM_JOB_RESTART_COUNT.
    pub restarts: u32,
    /// SPANK_SLURM_ONE_TEMPLATE (the user's `--one-template`).
    pub template: Option<String>,
    /// SPANK_SLURM_ONE_CPU_SHARE (the user's `--one-cpu-share`).
    pub cpu_share: Option<String>,
}

fn required(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<String, HookError> {
    env(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| HookError::Environment(format!("{name} is not set")))
}

fn job_id_from(env: &dyn Fn(&str) -> Option<String>) -> Result<u32, HookError> {
    let text = required(env, "SLURM_JOB_ID")?;
    text.parse()
        .map_err(|_| HookError::Environment(format!("SLURM_JOB_ID={text:?} is not a job id")))
}

fn nodes_from(env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>, HookError> {
    slurm::expand_hostlist(&required(env, "SLURM_JOB_NODELIST")?).map_err(HookError::Environment)
}

impl PrologEnv {
    /// Reads the prolog's environment through `env` (tests pass a map).
    pub fn read(env: &dyn Fn(&str) -> Option<String>) -> Result<PrologEnv, HookError> {
        let job_id = job_id_from(env)?;
        let nodes = nodes_from(env)?;
        let cpus_text = required(env, "SLURM_JOB_CPUS_PER_NODE")?;
        let cpus = slurm::expand_cpus_per_node(&cpus_text)
            .filter(|c| c.len() == nodes.len())
            .ok_or_else(|| {
                HookError::Environment(format!(
                    "SLURM_JOB_CPUS_PER_NODE={cpus_text:?} does not match {} nodes",
                    nodes.len()
                ))
            })?;
        Ok(PrologEnv {
            job_id,
            nodes,
            cpus,
            job_name: env("SLURM_JOB_NAME").unwrap_or_default(),
            user: env("SLURM_JOB_USER").unwrap_or_default(),
            restarts: env("SLURM_JOB_RESTART_COUNT")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            template: env(&format!("SPANK_{}", options::TEMPLATE_VAR)).filter(|v| !v.is_empty()),
            cpu_share: env(&format!("SPANK_{}", options::CPU_SHARE_VAR)).filter(|v| !v.is_empty()),
        })
    }
}

/// The job's nodes that are slurm-one's: those SLURM knows as CLOUD nodes.
fn cloud_nodes(nodes: &[String]) -> Result<Vec<String>, HookError> {
    let info = slurm::nodes(&nodes.join(","))?;
    Ok(nodes
        .iter()
        .filter(|n| info.iter().any(|i| &i.name == *n && i.has("CLOUD")))
        .cloned()
        .collect())
}

/// PrologSlurmctld: provision, set node addresses, wait for registration. On failure the
/// VMs are gone, the nodes are DOWN then POWER_DOWN with the reason, the job's
/// AdminComment says why, and after `max_prolog_attempts` failures the job is held.
pub fn prolog_slurmctld(
    cfg: &Config,
    one: &Client,
    db: &MappingDb,
    env: &PrologEnv,
) -> Result<(), HookError> {
    let job_id = env.job_id;
    let cloud = cloud_nodes(&env.nodes).inspect_err(|e| log::error!("job {job_id}: {e}"))?;
    if cloud.is_empty() {
        log::info!("job {job_id}: no cloud nodes, nothing to provision");
        return Ok(());
    }
    let result = provision_and_register(cfg, one, db, env, &cloud);
    if let Err(e) = &result {
        report_prolog_failure(cfg, env, &cloud, &e.to_string());
    }
    result
}

/// A prolog that could not even reach OpenNebula or the table (e.g. a corrupt table): the
/// job's cloud nodes and AdminComment say why, and attempts count toward the hold, as for
/// any other failed attempt.
pub fn prolog_cannot_start(cfg: &Config, env: &PrologEnv, message: &str) {
    match cloud_nodes(&env.nodes) {
        Ok(cloud) if cloud.is_empty() => {}
        Ok(cloud) => report_prolog_failure(cfg, env, &cloud, message),
        Err(e) => log::error!("job {}: cannot read its nodes: {e}", env.job_id),
    }
}

/// Nodes DOWN → POWER_DOWN with the reason, the job's AdminComment, and a hold after
/// `max_prolog_attempts` failed attempts.
fn report_prolog_failure(cfg: &Config, env: &PrologEnv, cloud: &[String], error: &str) {
    let job_id = env.job_id;
    let attempt = env.restarts + 1;
    let reason = format!("slurm-one: {error}");
    log::error!("job {job_id}: attempt {attempt}: {error}");
    if let Err(s) = slurm::down_then_power_down(cloud, &reason) {
        log::error!("job {job_id}: cannot set nodes down: {s}");
    }
    let max = cfg.provisioning.max_prolog_attempts;
    let comment = if attempt >= max {
        format!("{reason} (attempt {attempt} of {max}; job held, release it with scontrol release {job_id})")
    } else {
        format!("{reason} (attempt {attempt} of {max}; requeued)")
    };
    if let Err(s) = slurm::set_job_admin_comment(job_id, &comment) {
        log::warn!("job {job_id}: cannot set AdminComment: {s}");
    }
    if attempt >= max {
        log::error!("job {job_id}: {attempt} failed attempts, holding the job");
        if let Err(s) = slurm::requeue_hold(job_id) {
            log::error!("job {job_id}: cannot hold: {s}");
        }
    }
}

fn provision_and_register(
    cfg: &Config,
    one: &Client,
    db: &MappingDb,
    env: &PrologEnv,
    cloud: &[String],
) -> Result<(), HookError> {
    let job_id = env.job_id;
    let template = env
        .template
        .as_deref()
        .map(|t| options::parse_template(cfg, t))
        .transpose()?;
    let cpu_share = env
        .cpu_share
        .as_deref()
        .map(|s| options::parse_cpu_share(cfg, s))
        .transpose()?;
    let job = slurm::job_info(job_id)?;
    let nodes: Vec<NodeRequest> = env
        .nodes
        .iter()
        .zip(&env.cpus)
        .filter(|(n, _)| cloud.contains(n))
        .map(|(n, c)| NodeRequest {
            name: n.clone(),
            cpus: *c,
        })
        .collect();
    let max_cpus = u64::from(nodes.iter().map(|n| n.cpus).max().unwrap_or(1));
    let request = JobRequest {
        job_id,
        job_name: env.job_name.clone(),
        user: env.user.clone(),
        memory_mb: job
            .mem_per_node_mb
            .or(job.mem_per_cpu_mb.map(|m| m * max_cpus)),
        nodes,
        cpu_share,
        template,
    };
    let series = slurm::series()?;
    // Which slurmd each node last heard from: only a registration after this one is from
    // the new VM (a stale VM's slurmd may have registered under the name in between jobs).
    let before: Vec<(String, Option<String>)> = slurm::nodes(&cloud.join(","))?
        .into_iter()
        .map(|n| (n.name, n.slurmd_start))
        .collect();
    // Until the new VMs' addresses are set, a node must not point at an old VM's address
    // (another VM may hold it now): should this prolog die, slurmctld would launch the job
    // there. It is parked at an address that reaches nothing; not the node's name, which
    // slurmctld would try to resolve, holding its locks while the resolver times out.
    let parked: Vec<(String, String)> = cloud
        .iter()
        .map(|n| (n.clone(), PARKED_NODE_ADDR.to_string()))
        .collect();
    slurm::set_node_addrs(&parked)?;
    // The VMs are made at once, while slurmctld's power-save pass (about a second after the
    // allocation) has yet to ask for the nodes' power-up: a VM boots for far longer than
    // that, and one whose slurmd was faster is handled in `wait_registered`.
    let up = Provisioner::new(cfg, one, db).provision(&request)?;
    // 23.11 and later take the node's address from its VM's own registration (which the
    // job waits for anyway): the address the VM's slurmd connects from, not OpenNebula's.
    if !series.registration_sets_address() {
        // A VM without an IP (no NIC in the template) can only be reached by its node's name.
        let addrs: Vec<(String, String)> = up
            .iter()
            .map(|n| {
                (
                    n.node.clone(),
                    n.ip.clone().unwrap_or_else(|| n.node.clone()),
                )
            })
            .collect();
        if up.iter().any(|n| n.ip.is_none()) {
            log::warn!("job {job_id}: some VMs have no IP; their nodes get their names as address");
        }
        if !addrs.is_empty() {
            slurm::set_node_addrs(&addrs)?;
        }
    }
    let result = wait_registered(cfg, one, job_id, &up, cloud, &before)
        .and_then(|()| power_down_after_job(job_id, cloud));
    if result.is_err() {
        // The VMs are up but useless to SLURM: do not leave them running.
        let _ = Provisioner::new(cfg, one, db).teardown(job_id);
    }
    result?;
    log::info!(
        "job {job_id}: {} nodes registered, job can start",
        cloud.len()
    );
    Ok(())
}

/// Marks the job's nodes POWER_DOWN_ASAP before the job starts (it cannot start before this
/// prolog exits). Their job runs on; when it has ended and each node's own epilog is done,
/// slurmctld powers the node down (SuspendProgram ends its VM) instead of handing it to
/// the next job, which is what an EpilogSlurmctld racing SLURM's node release could not
/// ensure: SLURM frees a node once its slurmd epilog completes, on a clock of its own.
/// Set once the nodes have registered: the job starts only after this prolog exits, so no
/// earlier mark is needed, and a node is never drained while it powers up.
fn power_down_after_job(job_id: u32, nodes: &[String]) -> Result<(), HookError> {
    slurm::power_down_asap(nodes, &crate::provision::runs_in_vm_reason(job_id))?;
    Ok(())
}

/// Where the job's nodes stand: those still without the new VM's slurmd, and among them
/// those whose new slurmd registered and was ignored.
#[derive(Debug, PartialEq, Eq)]
struct Registration<'a> {
    /// Nodes not yet up with a slurmd newer than the one they had `before`.
    waiting: Vec<&'a str>,
    /// Nodes whose new slurmd registered while they stay POWERING_UP, with that slurmd's
    /// start: slurmctld ignores a registration whose boot time precedes its power-up request
    /// ("Still waiting for boot of node"; a registration it accepts clears POWERING_UP in
    /// the same step), and that slurmd will not register again.
    ignored: Vec<(&'a str, Option<&'a str>)>,
}

fn registration<'a>(
    info: &'a [slurm::NodeInfo],
    before: &[(String, Option<String>)],
) -> Registration<'a> {
    let mut state = Registration {
        waiting: Vec::new(),
        ignored: Vec::new(),
    };
    for n in info {
        let old_slurmd = before
            .iter()
            .any(|(name, start)| *name == n.name && *start == n.slurmd_start);
        if old_slurmd || n.has("POWERING_UP") || n.has("NOT_RESPONDING") || n.has("POWERED_DOWN") {
            state.waiting.push(&n.name);
            if !old_slurmd && n.has("POWERING_UP") {
                state.ignored.push((&n.name, n.slurmd_start.as_deref()));
            }
        }
    }
    state
}

/// How often the prolog reboots a VM whose registration slurmctld ignored.
const MAX_REBOOTS_PER_NODE: u32 = 2;

/// Waits until every node of the job is up with a slurmd other than the one it had
/// `before` the VMs were made: not powering up, responding, and a new SlurmdStartTime.
/// A VM that booted before slurmctld asked for its node's power-up is rebooted through
/// OpenNebula, so that it boots, and registers, after the request.
fn wait_registered(
    cfg: &Config,
    one: &Client,
    job_id: u32,
    up: &[crate::provision::ProvisionedNode],
    nodes: &[String],
    before: &[(String, Option<String>)],
) -> Result<(), HookError> {
    let start = Instant::now();
    let list = nodes.join(",");
    let pause = cfg
        .provisioning
        .poll_interval
        .min(Duration::from_millis(500));
    // Per node: the ignored slurmd start it was last rebooted for, and how many reboots.
    let mut rebooted: BTreeMap<String, (Option<String>, u32)> = BTreeMap::new();
    loop {
        let info = slurm::nodes(&list)?;
        let state = registration(&info, before);
        if state.waiting.is_empty() {
            return Ok(());
        }
        for (node, slurmd_start) in &state.ignored {
            let (last, count) = rebooted.get(*node).cloned().unwrap_or((None, 0));
            if (count > 0 && last.as_deref() == *slurmd_start) || count >= MAX_REBOOTS_PER_NODE {
                continue;
            }
            let Some(vm) = up.iter().find(|u| u.node == *node).map(|u| u.vm_id) else {
                continue;
            };
            log::warn!(
                "job {job_id}: slurmctld ignored node {node}'s registration (VM {vm} booted before \
                 the power-up request); rebooting VM {vm}"
            );
            if let Err(e) = one.vm_action(crate::one::client::VmAction::Reboot, vm) {
                log::error!("job {job_id}: cannot reboot VM {vm} of node {node}: {e}");
            }
            rebooted.insert(
                node.to_string(),
                (slurmd_start.map(str::to_string), count + 1),
            );
        }
        if start.elapsed() >= cfg.provisioning.register_timeout {
            return Err(HookError::Registration {
                nodes: state.waiting.join(","),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(pause);
    }
}

/// EpilogSlurmctld. Nodes the prolog marked POWER_DOWN_ASAP are slurmctld's to power down
/// once their own epilogs are done; SuspendProgram then ends their VMs. Only nodes without
/// that mark (the prolog was killed before it set it, or the job ended while it ran) are
/// handled here as before: DOWN → POWER_DOWN (a node SLURM already gave to the next job is
/// left to it), their VMs terminated, their rows cleared. DOWN also ends such a node's
/// COMPLETING state, whose epilog-complete message its removed VM will never send.
pub fn epilog_slurmctld(
    cfg: &Config,
    one: &Client,
    db: &MappingDb,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), HookError> {
    let job_id = job_id_from(env)?;
    let rows = db
        .job_rows(&cfg.cluster.name, job_id)
        .map_err(|source| ProvisionError::Mapping { job_id, source })?;
    // Nothing recorded: a failed prolog already removed its VMs and set its nodes DOWN with
    // the reason, which must stay visible. Only a cloud node still up is taken down then.
    let recorded = !rows.is_empty();
    let candidates: Vec<String> = if recorded {
        rows.iter().map(|r| r.node.clone()).collect()
    } else {
        nodes_from(env)?
    };
    let info = match slurm::nodes(&candidates.join(",")) {
        Ok(info) => info,
        Err(e) if recorded => {
            // POWER_DOWN_ASAP requeues nothing whatever state a node is in, so it is the
            // safe request when the states are unknown; SuspendProgram, or reconcile after
            // orphan_grace, ends the VMs.
            log::warn!(
                "job {job_id}: cannot read the nodes' states ({e}); asking slurmctld to power \
                 them all down once idle"
            );
            slurm::power_down_asap(
                &candidates,
                &format!("slurm-one: job {job_id} ended, VMs being removed"),
            )?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let plan = epilog_plan(&info, recorded);
    for node in &plan.next_job {
        log::info!(
            "job {job_id}: node {node} already belongs to the next job (its prolog makes its \
             own VM): not set DOWN"
        );
    }
    if !plan.slurmctld_powers_down.is_empty() {
        log::info!(
            "job {job_id}: slurmctld powers down {} once their epilogs are done; SuspendProgram \
             ends their VMs",
            plan.slurmctld_powers_down.join(",")
        );
    }
    if let Err(e) = slurm::down_then_power_down(
        &plan.set_down,
        &format!("slurm-one: job {job_id} ended, VMs being removed"),
    ) {
        log::warn!("job {job_id}: cannot power nodes down: {e}");
    }
    let ours: Vec<String> = candidates
        .into_iter()
        .filter(|n| !plan.slurmctld_powers_down.contains(n))
        .collect();
    let report = Provisioner::new(cfg, one, db).teardown_nodes(job_id, &ours)?;
    reassert_down(&plan.set_down, job_id);
    log::info!(
        "job {job_id}: epilog removed {} VMs ({} already gone)",
        report.terminated.len(),
        report.already_gone.len()
    );
    Ok(())
}

/// What the epilog does with each of the ended job's nodes.
#[derive(Debug, Default, PartialEq, Eq)]
struct EpilogPlan {
    /// Marked POWER_DOWN_ASAP (or already powering down): slurmctld powers them down
    /// after their epilogs, SuspendProgram ends the VMs. Untouched.
    slurmctld_powers_down: Vec<String>,
    /// Already given to the next job: untouched (DOWN would requeue that job).
    next_job: Vec<String>,
    /// Set DOWN → POWER_DOWN here.
    set_down: Vec<String>,
}

fn epilog_plan(info: &[slurm::NodeInfo], recorded: bool) -> EpilogPlan {
    let mut plan = EpilogPlan::default();
    for n in info {
        if n.marked_for_power_down() {
            plan.slurmctld_powers_down.push(n.name.clone());
        } else if taken_by_next_job(n) {
            plan.next_job.push(n.name.clone());
        } else if recorded || (n.has("CLOUD") && !n.has("DOWN") && !n.has("DRAIN")) {
            plan.set_down.push(n.name.clone());
        }
    }
    plan
}

/// The old VM's slurmd may have answered once more (its epilog-complete message) after the
/// nodes were set DOWN, and with `ReturnToService=2` slurmctld then "returns to service" a
/// node that is powering down: a registration clears POWERING_DOWN. Now that the VMs are
/// gone, such a node is set DOWN again so it cannot be handed out before it is powered down.
fn reassert_down(nodes: &[String], job_id: u32) {
    if nodes.is_empty() {
        return;
    }
    let back: Vec<String> = match slurm::nodes(&nodes.join(",")) {
        Ok(info) => info
            .into_iter()
            .filter(returned_to_service)
            .map(|n| n.name)
            .collect(),
        Err(e) => {
            log::warn!("job {job_id}: cannot re-check nodes: {e}");
            return;
        }
    };
    if back.is_empty() {
        return;
    }
    log::info!(
        "job {job_id}: nodes {} came back while powering down; setting them DOWN again",
        back.join(",")
    );
    if let Err(e) = slurm::down_then_power_down(
        &back,
        &format!("slurm-one: job {job_id} ended, VMs removed"),
    ) {
        log::warn!("job {job_id}: {e}");
    }
}

/// SLURM frees a node for the next job as soon as its slurmd's epilog is done, which can be
/// before EpilogSlurmctld has set it DOWN: the node is then ALLOCATED without COMPLETING.
/// Setting it DOWN would requeue that job; its prolog makes its own VM instead.
fn taken_by_next_job(n: &slurm::NodeInfo) -> bool {
    (n.has("ALLOCATED") || n.has("MIXED")) && !n.has("COMPLETING")
}

/// A node of an ended job that is neither DOWN nor on its way to power-down, and not given
/// to another job: usable, at the address of a VM that is gone. (IDLE+POWERING_DOWN is not
/// such a node: with `idle_on_node_suspend` slurmctld makes every node it powers down IDLE.)
fn returned_to_service(n: &slurm::NodeInfo) -> bool {
    ![
        "DOWN",
        "ALLOCATED",
        "POWER_DOWN",
        "POWERING_DOWN",
        "POWERED_DOWN",
    ]
    .iter()
    .any(|flag| n.has(flag))
}

/// SuspendProgram (argv[1] = hostlist): slurmctld powers these nodes down; each one's VM
/// is terminated and its row cleared. This is the normal end of a job's VMs: the prolog
/// marked the nodes POWER_DOWN_ASAP, so slurmctld calls this once a node's epilog is done.
/// A row is torn down only when SLURM no longer shows its job on that node (a COMPLETING
/// job lists only the nodes still completing, `node_bitmap_cg` in job_mgr.c's job packing),
/// so a VM is never ended under a job that still holds its node.
pub fn suspend_program(
    cfg: &Config,
    one: &Client,
    db: &MappingDb,
    hostlist: &str,
) -> Result<(), HookError> {
    let nodes = slurm::expand_hostlist(hostlist).map_err(HookError::Environment)?;
    // Every row naming the node: besides the last job's, a stale one (a VM never ended).
    let mut rows = Vec::new();
    for node in nodes {
        rows.extend(
            db.node_rows(&cfg.cluster.name, &node)
                .map_err(|source| ProvisionError::Mapping { job_id: 0, source })?,
        );
    }
    if rows.is_empty() {
        return Ok(());
    }
    let live = slurm::SlurmCli.live_jobs().map_err(|e| {
        HookError::Environment(format!(
            "cannot ask SLURM which jobs hold nodes {hostlist} ({e}); their VMs are left to \
             reconcile"
        ))
    })?;
    let engine = Provisioner::new(cfg, one, db);
    let mut first_error = None;
    for row in rows {
        let vm = row
            .vm_id
            .map_or_else(|| "(none recorded)".to_string(), |v| v.to_string());
        if let Some(holder) = live.as_ref().and_then(|jobs| jobs.get(&row.job_id)) {
            if holder.nodes.as_ref().is_none_or(|n| n.contains(&row.node)) {
                log::warn!(
                    "node {} powers down, but SLURM still shows job {} on it: its VM {vm} is \
                     left alone (reconcile ends it once the job no longer holds the node)",
                    row.node,
                    row.job_id
                );
                continue;
            }
        }
        log::info!(
            "node {} powers down: ending VM {vm} of job {}",
            row.node,
            row.job_id
        );
        if let Err(e) = engine.teardown_nodes(row.job_id, std::slice::from_ref(&row.node)) {
            first_error.get_or_insert(HookError::from(e));
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn prolog_env_reads_nodes_cpus_and_options() {
        let e = env(&[
            ("SLURM_JOB_ID", "12"),
            ("SLURM_JOB_NODELIST", "vm[1-3]"),
            ("SLURM_JOB_CPUS_PER_NODE", "2(x2),1"),
            ("SLURM_JOB_NAME", "my job"),
            ("SLURM_JOB_USER", "alice"),
            ("SLURM_JOB_RESTART_COUNT", "1"),
            ("SPANK_SLURM_ONE_TEMPLATE", "big"),
            ("SPANK_SLURM_ONE_CPU_SHARE", "0.5"),
        ]);
        let p = PrologEnv::read(&e).unwrap();
        assert_eq!(p.nodes, vec!["vm1", "vm2", "vm3"]);
        assert_eq!(p.cpus, vec![2, 2, 1]);
        assert_eq!(p.restarts, 1);
        assert_eq!(p.template.as_deref(), Some("big"));
        assert_eq!(p.cpu_share.as_deref(), Some("0.5"));
    }

    #[test]
    fn prolog_env_names_what_is_missing_or_inconsistent() {
        let err = PrologEnv::read(&env(&[("SLURM_JOB_NODELIST", "vm1")])).unwrap_err();
        assert_eq!(err.to_string(), "environment: SLURM_JOB_ID is not set");
        let err = PrologEnv::read(&env(&[
            ("SLURM_JOB_ID", "1"),
            ("SLURM_JOB_NODELIST", "vm[1-2]"),
            ("SLURM_JOB_CPUS_PER_NODE", "2"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("does not match 2 nodes"), "{err}");
        let err = PrologEnv::read(&env(&[("SLURM_JOB_ID", "x1")])).unwrap_err();
        assert!(err.to_string().contains("not a job id"), "{err}");
    }

    fn node(name: &str, state: &str, slurmd_start: Option<&str>) -> slurm::NodeInfo {
        slurm::NodeInfo {
            name: name.into(),
            state: state.split('+').map(str::to_string).collect(),
            addr: "192.0.2.1".into(),
            reason: None,
            slurmd_start: slurmd_start.map(str::to_string),
        }
    }

    #[test]
    fn registration_tells_waiting_nodes_from_ignored_registrations() {
        let before = vec![
            ("vm1".to_string(), Some("T0".to_string())),
            ("vm2".to_string(), None),
            ("vm3".to_string(), Some("T0".to_string())),
            ("vm4".to_string(), None),
            ("vm5".to_string(), None),
        ];
        let info = vec![
            // Up, but still the slurmd it had before: a stale VM's.
            node("vm1", "ALLOCATED+CLOUD", Some("T0")),
            // Up with a new slurmd: registered.
            node("vm2", "ALLOCATED+CLOUD", Some("T1")),
            // A new slurmd, yet still POWERING_UP: slurmctld ignored it.
            node(
                "vm3",
                "ALLOCATED+CLOUD+POWERING_UP+NOT_RESPONDING",
                Some("T2"),
            ),
            // Nothing registered yet.
            node("vm4", "ALLOCATED+CLOUD+POWERING_UP+NOT_RESPONDING", None),
            // Registered before the power-up request: accepted, flags cleared.
            node("vm5", "ALLOCATED+CLOUD", Some("T3")),
        ];
        let state = registration(&info, &before);
        assert_eq!(state.waiting, vec!["vm1", "vm3", "vm4"]);
        assert_eq!(state.ignored, vec![("vm3", Some("T2"))]);

        let all_up = vec![
            node("vm1", "ALLOCATED+CLOUD", Some("T4")),
            node("vm2", "ALLOCATED+CLOUD", Some("T1")),
        ];
        let state = registration(&all_up, &before);
        assert!(state.waiting.is_empty() && state.ignored.is_empty());
    }

    #[test]
    fn a_node_allocated_and_not_completing_belongs_to_the_next_job() {
        assert!(taken_by_next_job(&node(
            "vm1",
            "ALLOCATED+CLOUD",
            Some("T1")
        )));
        assert!(taken_by_next_job(&node("vm1", "MIXED+CLOUD", Some("T1"))));
        for state in [
            "ALLOCATED+CLOUD+COMPLETING",
            "IDLE+CLOUD+COMPLETING",
            "IDLE+CLOUD",
            "DOWN+CLOUD",
        ] {
            assert!(!taken_by_next_job(&node("vm1", state, None)), "{state}");
        }
    }

    #[test]
    fn nodes_marked_by_the_prolog_are_left_to_slurmctld_and_never_set_down() {
        let info = vec![
            // The job's nodes as its prolog left them, its slurmd epilog still running or
            // done, or already picked up by the power-save pass.
            node(
                "vm1",
                "ALLOCATED+CLOUD+COMPLETING+DRAIN+POWER_DOWN",
                Some("T1"),
            ),
            node("vm2", "IDLE+CLOUD+DRAIN+POWER_DOWN", Some("T1")),
            node("vm3", "IDLE+CLOUD+POWERING_DOWN", Some("T1")),
            // Not marked (the prolog was killed before it marked them): set DOWN here...
            node("vm4", "IDLE+CLOUD+COMPLETING", Some("T1")),
            // ...unless SLURM already gave the node to the next job.
            node("vm5", "ALLOCATED+CLOUD", Some("T2")),
        ];
        let plan = epilog_plan(&info, true);
        assert_eq!(plan.slurmctld_powers_down, ["vm1", "vm2", "vm3"]);
        assert_eq!(plan.next_job, ["vm5"]);
        assert_eq!(plan.set_down, ["vm4"]);
        // A job with no rows (its prolog failed and set its nodes DOWN, reason kept): only
        // a cloud node that is still up is taken down.
        let info = vec![
            node("vm1", "DOWN+CLOUD+POWER_DOWN", None),
            node("vm2", "IDLE+CLOUD", Some("T1")),
            node("vm3", "IDLE+CLOUD+DRAIN", Some("T1")),
        ];
        let plan = epilog_plan(&info, false);
        assert!(plan.slurmctld_powers_down.is_empty() && plan.next_job.is_empty());
        assert_eq!(plan.set_down, ["vm2"]);
    }

    #[test]
    fn only_drain_with_power_down_or_a_power_down_under_way_is_marked() {
        for state in [
            "ALLOCATED+CLOUD+DRAIN+POWER_DOWN",
            "IDLE+CLOUD+POWERING_DOWN",
            "IDLE+CLOUD+POWERED_DOWN",
        ] {
            assert!(node("vm1", state, None).marked_for_power_down(), "{state}");
        }
        // DRAIN alone (an admin's, or "Prolog error") is no promise of a power-down, and
        // POWER_DOWN alone is not what the prolog leaves (22.05's make_node_avail ignores it).
        for state in [
            "ALLOCATED+CLOUD+DRAIN",
            "ALLOCATED+CLOUD+POWER_DOWN",
            "IDLE+CLOUD",
        ] {
            assert!(!node("vm1", state, None).marked_for_power_down(), "{state}");
        }
    }

    #[test]
    fn only_nodes_with_no_power_down_under_way_count_as_returned_to_service() {
        // What the epilog leaves, and what slurmctld's power-save pass makes of it.
        for state in [
            "DOWN+CLOUD+POWER_DOWN",
            "IDLE+CLOUD+POWERING_DOWN",
            "IDLE+CLOUD+POWERED_DOWN",
            "ALLOCATED+CLOUD",
        ] {
            assert!(!returned_to_service(&node("vm1", state, None)), "{state}");
        }
        // A registration of the old slurmd cleared POWERING_DOWN.
        assert!(returned_to_service(&node("vm1", "IDLE+CLOUD", Some("T1"))));
    }
}
