//! The core library against one-sim (dummy driver): provisioning sized right, teardown,
//! rollbacks, credentials and reachability errors, hostile text, reconcile.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use slurm_one::config::{Config, Secret};
use slurm_one::mapping::{MappingDb, RowState};
use slurm_one::one::client::{Client, ClientSettings, OneError, VmInfo};
use slurm_one::one::states::{LcmState, VmState};
use slurm_one::one::xmlrpc::Value;
use slurm_one::provision::{
    Drift, JobRequest, LiveJob, LiveJobs, NodeRequest, ProvisionError, ProvisionedNode,
    Provisioner, SlurmView,
};

use crate::util::{poll_until, Opts, Sim, SESSION};

/// A test's own config, table and client over a running one-sim.
struct Setup {
    cfg: Config,
    client: Client,
    db: MappingDb,
    _dir: tempfile::TempDir,
}

fn config_text(endpoint: &str, db: &Path, extra: &str) -> String {
    format!(
        r#"
[opennebula]
endpoint = "{endpoint}"
auth_file = "/nonexistent/one_auth"
api_timeout = "5s"
connect_timeout = "1s"

[cluster]
name = "it"
database = "{}"

[templates]
default = "small"

[templates.small]
body = '''
NIC = [ NETWORK_ID = "0" ]
CONTEXT = [ NETWORK = "YES" ]
'''

[provisioning]
poll_interval = "50ms"
boot_timeout = "20s"
concurrency = 1
{extra}
"#,
        db.display()
    )
}

fn setup_with(sim: &Sim, session: &str, endpoint: Option<&str>, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_path = dir.path().join("db/mapping.db");
    let endpoint = endpoint.unwrap_or(&sim.url).to_string();
    let text = config_text(&endpoint, &db_path, extra);
    let cfg = Config::from_toml_str(&text, &dir.path().join("slurm-one.toml"), &|_| None)
        .expect("test config loads");
    let (user, password) = session.split_once(':').expect("user:password");
    let client = Client::new(
        ClientSettings {
            endpoint,
            connect_timeout: Duration::from_secs(1),
            api_timeout: Duration::from_secs(5),
            trace_api: false,
        },
        Secret::new(user, password),
    );
    let db = MappingDb::open(&db_path, Duration::from_secs(10)).expect("table opens");
    Setup {
        cfg,
        client,
        db,
        _dir: dir,
    }
}

fn setup(sim: &Sim) -> Setup {
    setup_with(sim, SESSION, None, "")
}

fn job(
    job_id: u32,
    nodes: &[&str],
    cpus: u32,
    memory_mb: Option<u64>,
    share: Option<f64>,
) -> JobRequest {
    JobRequest {
        job_id,
        job_name: format!("job-{job_id}"),
        user: "alice".into(),
        nodes: nodes
            .iter()
            .map(|n| NodeRequest {
                name: n.to_string(),
                cpus,
            })
            .collect(),
        memory_mb,
        cpu_share: share,
        template: None,
    }
}

fn vm(s: &Setup, id: u32) -> VmInfo {
    s.client.vm_info(id).expect("vm.info answers")
}

/// Every VM of the test cluster is DONE or on its way there (terminate issued).
fn all_ending_or_done(s: &Setup) -> bool {
    s.client.vm_pool(false).expect("pool").iter().all(|v| {
        v.user.get("SLURM_CLUSTER").map(String::as_str) != Some("it")
            || (v.state == VmState::Active
                && matches!(
                    v.lcm,
                    LcmState::SHUTDOWN | LcmState::EPILOG | LcmState::CLEANUP_DELETE
                ))
    })
}

#[test]
fn three_node_job_gets_three_vms_sized_as_asked() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let up = engine
        .provision(&job(11, &["vm1", "vm2", "vm3"], 2, Some(1024), Some(0.25)))
        .unwrap();
    assert_eq!(up.len(), 3);
    for n in &up {
        let info = vm(&s, n.vm_id);
        assert!(
            info.running() && info.ready(),
            "{n:?}: {}",
            info.state_name()
        );
        assert_eq!(info.memory_mb, Some(1024));
        assert_eq!(info.vcpu, Some(2));
        assert_eq!(info.cpu, Some(0.5), "CPU = VCPU x share");
        assert_eq!(
            info.user.get("SLURM_JOB_ID").map(String::as_str),
            Some("11")
        );
        assert_eq!(info.user.get("SLURM_NODE"), Some(&n.node));
        assert!(
            n.ip.as_deref().is_some_and(|ip| ip.starts_with("10.77.0.")),
            "{n:?}"
        );
    }
    let rows = s.db.job_rows("it", 11).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|r| r.state == RowState::Running && r.vm_id.is_some()));
}

#[test]
fn job_without_memory_gets_the_policy_default() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let up = engine
        .provision(&job(12, &["vm1"], 1, Some(10), None))
        .unwrap();
    let info = vm(&s, up[0].vm_id);
    assert_eq!(
        info.memory_mb,
        Some(256),
        "under min_memory_mb the default applies"
    );
    assert_eq!(info.cpu, Some(1.0));
}

#[test]
fn teardown_terminates_every_vm_and_clears_rows_and_can_run_again() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let up = engine
        .provision(&job(13, &["vm1", "vm2"], 1, None, None))
        .unwrap();
    let report = engine.teardown(13).unwrap();
    assert_eq!(report.terminated.len(), 2);
    assert_eq!(report.rows_removed, 2);
    assert!(s.db.job_rows("it", 13).unwrap().is_empty());
    assert!(poll_until(Duration::from_secs(5), || up
        .iter()
        .all(|n| vm(&s, n.vm_id).state == VmState::Done)));
    let again = engine.teardown(13).unwrap();
    assert_eq!(again.rows_removed, 0);
    assert!(again.terminated.is_empty());
}

#[test]
fn concurrent_teardowns_of_one_job_both_succeed() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    Provisioner::new(&s.cfg, &s.client, &s.db)
        .provision(&job(14, &["vm1", "vm2", "vm3"], 1, None, None))
        .unwrap();
    let (cfg, client, path) = (&s.cfg, &s.client, s.db.path().to_path_buf());
    let results: Vec<Result<(usize, usize), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                scope.spawn(move || {
                    let db = MappingDb::open(&path, Duration::from_secs(10)).unwrap();
                    Provisioner::new(cfg, client, &db)
                        .teardown(14)
                        .map(|r| (r.rows_removed, r.terminated.len() + r.already_gone.len()))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let removed: usize = results.iter().map(|r| r.as_ref().unwrap().0).sum();
    assert_eq!(removed, 3, "{results:?}");
    // Each VM was handled by one of the two: the rows are claimed, not just read.
    let handled: usize = results.iter().map(|r| r.as_ref().unwrap().1).sum();
    assert_eq!(handled, 3, "{results:?}");
    assert!(s.db.job_rows("it", 14).unwrap().is_empty());
    assert!(poll_until(Duration::from_secs(5), || all_ending_or_done(
        &s
    )));
}

#[test]
fn failure_of_the_second_create_rolls_back_the_first() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let msg = "User [0] : Quota exceeded for VMS.";
    sim.ok(
        "sim.fault.add",
        &[
            "one.vm.allocate".into(),
            Value::Int(2),
            Value::Int(0x200),
            msg.into(),
        ],
    );
    let err = Provisioner::new(&s.cfg, &s.client, &s.db)
        .provision(&job(15, &["vm1", "vm2", "vm3"], 1, None, None))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ProvisionError::Create { ref node, .. } if node == "vm2"),
        "{text}"
    );
    assert!(
        text.contains("[one.vm.allocate] User [0] : Quota exceeded for VMS."),
        "{text}"
    );
    assert!(
        err.is_permanent(),
        "a quota error must not be retried forever"
    );
    assert!(s.db.job_rows("it", 15).unwrap().is_empty());
    let first = s
        .client
        .vm_pool(true)
        .unwrap()
        .into_iter()
        .find(|v| v.user.get("SLURM_NODE").map(String::as_str) == Some("vm1"))
        .expect("the first VM was created");
    assert!(poll_until(Duration::from_secs(5), || vm(&s, first.id)
        .state
        == VmState::Done));
}

#[test]
fn vm_stuck_in_boot_past_the_deadline_is_rolled_back() {
    let mut opts = Opts::dummy();
    opts.boot_delay = "60s";
    let sim = Sim::start(opts);
    let s = setup_with(&sim, SESSION, None, "");
    let mut cfg = s.cfg.clone();
    cfg.provisioning.boot_timeout = Duration::from_millis(600);
    let start = std::time::Instant::now();
    let err = Provisioner::new(&cfg, &s.client, &s.db)
        .provision(&job(16, &["vm1", "vm2"], 1, None, None))
        .unwrap_err();
    assert!(matches!(err, ProvisionError::Deadline { .. }), "{err}");
    assert!(err.to_string().contains("BOOT"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "rollback took {:?}",
        start.elapsed()
    );
    assert!(s.db.job_rows("it", 16).unwrap().is_empty());
    assert!(poll_until(Duration::from_secs(5), || s
        .client
        .vm_pool(false)
        .unwrap()
        .iter()
        .all(|v| v.user.get("SLURM_JOB_ID").map(String::as_str)
            != Some("16")
            || v.lcm == LcmState::CLEANUP_DELETE)));
}

#[test]
fn vm_in_boot_failure_fails_the_job_naming_the_vm_and_reason() {
    let mut opts = Opts::dummy();
    opts.boot_delay = "3s";
    let sim = Sim::start(opts);
    let s = setup(&sim);
    let failer = std::thread::spawn({
        let url = sim.url.clone();
        move || {
            let c = Client::new(
                ClientSettings {
                    endpoint: url.clone(),
                    connect_timeout: Duration::from_secs(1),
                    api_timeout: Duration::from_secs(5),
                    trace_api: false,
                },
                Secret::new("oneadmin", "it-secret"),
            );
            let mut failed = false;
            let ok = poll_until(Duration::from_secs(5), || {
                if let Ok(vms) = c.vm_pool(false) {
                    if let Some(v) = vms.iter().find(|v| v.lcm == LcmState::BOOT) {
                        failed = sim_call(
                            &url,
                            "sim.vm.fail",
                            &[
                                SESSION.into(),
                                Value::Int(v.id as i32),
                                "BOOT_FAILURE".into(),
                            ],
                        );
                        return failed;
                    }
                }
                false
            });
            ok && failed
        }
    });
    let err = Provisioner::new(&s.cfg, &s.client, &s.db)
        .provision(&job(17, &["vm1"], 1, None, None))
        .unwrap_err();
    assert!(failer.join().unwrap(), "could not inject BOOT_FAILURE");
    let text = err.to_string();
    assert!(matches!(err, ProvisionError::VmFailed { .. }), "{text}");
    assert!(
        text.contains("BOOT_FAILURE") && text.contains("injected BOOT_FAILURE"),
        "{text}"
    );
    assert!(s.db.job_rows("it", 17).unwrap().is_empty());
    assert!(poll_until(Duration::from_secs(5), || all_ending_or_done(
        &s
    )));
}

#[test]
fn bad_session_fails_with_opennebulas_message_and_leaves_nothing() {
    let sim = Sim::start(Opts::dummy());
    let s = setup_with(&sim, "oneadmin:wrong", None, "");
    let err = Provisioner::new(&s.cfg, &s.client, &s.db)
        .provision(&job(18, &["vm1"], 1, None, None))
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("User couldn't be authenticated"), "{text}");
    assert!(err.is_permanent());
    assert!(s.db.job_rows("it", 18).unwrap().is_empty());
}

#[test]
fn unreachable_opennebula_names_the_endpoint_and_leaves_nothing() {
    let sim = Sim::start(Opts::dummy());
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let endpoint = format!("http://{closed}/RPC2");
    let s = setup_with(&sim, SESSION, Some(&endpoint), "");
    let err = Provisioner::new(&s.cfg, &s.client, &s.db)
        .provision(&job(19, &["vm1"], 1, None, None))
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&endpoint), "{text}");
    assert!(
        matches!(
            err,
            ProvisionError::Create {
                source: OneError::Transport { .. },
                ..
            }
        ),
        "{text}"
    );
    assert!(!err.is_permanent(), "an outage is worth a requeue");
    assert!(s.db.job_rows("it", 19).unwrap().is_empty());
}

#[test]
fn hostile_job_name_reaches_opennebula_as_plain_text() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let mut j = job(20, &["vm1"], 1, None, None);
    j.job_name =
        "x\" ]\nMEMORY = 999999\nCONTEXT = [ START_SCRIPT = \"reboot\" ] $HOME `id`".into();
    let up = Provisioner::new(&s.cfg, &s.client, &s.db)
        .provision(&j)
        .unwrap();
    let info = vm(&s, up[0].vm_id);
    assert_eq!(info.memory_mb, Some(256));
    assert_eq!(
        info.user.get("SLURM_JOB_NAME").map(String::as_str),
        Some("x\" ] MEMORY = 999999 CONTEXT = [ START_SCRIPT = \"reboot\" ] $HOME `id`")
    );
    let xml = sim.vm_info_xml(up[0].vm_id as i32);
    assert!(
        !xml.contains("<START_SCRIPT>"),
        "user text became a CONTEXT attribute"
    );
}

/// A raw call from another thread; true when OpenNebula said success.
fn sim_call(url: &str, method: &str, params: &[Value]) -> bool {
    let body = slurm_one::one::xmlrpc::write_method_call(method, params);
    let Ok(resp) = ureq::post(url).send_bytes(&body) else {
        return false;
    };
    let mut bytes = Vec::new();
    if std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).is_err() {
        return false;
    }
    matches!(
        slurm_one::one::xmlrpc::parse_response(&bytes),
        Ok(slurm_one::one::xmlrpc::Response::Success(Value::Array(a))) if a.first() == Some(&Value::Bool(true))
    )
}

/// SLURM as reconcile sees it: live jobs and the nodes each holds, what reconcile asked of
/// it, and whether it takes nodes' addresses from their registrations (23.11+).
struct FakeSlurm(LiveJobs, RefCell<Vec<String>>, bool);

impl FakeSlurm {
    /// Jobs running on these nodes (a job with no nodes is pending).
    fn holding(jobs: &[(u32, &[&str])]) -> Self {
        FakeSlurm(
            jobs.iter()
                .map(|(id, nodes)| {
                    let job = LiveJob {
                        started: !nodes.is_empty(),
                        nodes: Some(nodes.iter().map(|n| n.to_string()).collect()),
                    };
                    (*id, job)
                })
                .collect(),
            RefCell::new(Vec::new()),
            false,
        )
    }

    /// The same, on a SLURM 23.11 or later.
    fn taking_addresses_from_registrations(mut self) -> Self {
        self.2 = true;
        self
    }

    /// The same jobs, still configuring (their prologs at work).
    fn configuring(mut self) -> Self {
        self.0.values_mut().for_each(|j| j.started = false);
        self
    }
}

impl SlurmView for FakeSlurm {
    fn live_jobs(&self) -> Result<Option<LiveJobs>, String> {
        Ok(Some(self.0.clone()))
    }

    fn fail_nodes(&self, nodes: &[String], reason: &str) -> Result<(), String> {
        self.1
            .borrow_mut()
            .push(format!("{} {reason}", nodes.join(",")));
        Ok(())
    }

    fn registration_sets_address(&self) -> Result<bool, String> {
        Ok(self.2)
    }

    fn power_down_after_job(&self, nodes: &[String], reason: &str) -> Result<(), String> {
        self.1
            .borrow_mut()
            .push(format!("power_down_asap {} {reason}", nodes.join(",")));
        Ok(())
    }
}

#[test]
fn reconcile_terminates_a_planted_orphan_and_removes_a_planted_stale_row() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    // A live job whose VMs are fine: reconcile must leave it alone.
    let live = engine.provision(&job(21, &["vm1"], 1, None, None)).unwrap();
    // An orphan: a VM with our tags whose job SLURM no longer has and no row.
    let orphan = sim.allocate(
        "MEMORY=64\nCPU=0.1\nSLURM_CLUSTER=\"it\"\nSLURM_JOB_ID=\"99\"\nSLURM_NODE=\"vm9\"\n",
    ) as u32;
    // A stale row: its VM is long gone.
    s.db.insert_creating("it", 98, "vm8", "stale-tag").unwrap();
    s.db.set_vm("stale-tag", 4242, RowState::Running).unwrap();
    assert!(poll_until(Duration::from_secs(5), || vm(&s, orphan).running()));

    let slurm = FakeSlurm::holding(&[(21, &["vm1"])]);
    let dry = engine.reconcile(&slurm, Duration::ZERO, true).unwrap();
    assert_eq!(dry.drifts.len(), 2, "{dry:?}");
    assert!(vm(&s, orphan).running(), "dry run changed something");

    let report = engine.reconcile(&slurm, Duration::ZERO, false).unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.drifts.contains(&Drift::OrphanVm {
        vm_id: orphan,
        job_id: Some(99),
        node: Some("vm9".into())
    }));
    assert!(report.drifts.contains(&Drift::StaleRow {
        job_id: 98,
        node: "vm8".into(),
        vm_id: Some(4242)
    }));
    assert!(poll_until(Duration::from_secs(5), || vm(&s, orphan).state
        == VmState::Done));
    assert!(s.db.job_rows("it", 98).unwrap().is_empty());
    assert!(
        vm(&s, live[0].vm_id).running(),
        "the live job's VM was touched"
    );
    assert_eq!(s.db.job_rows("it", 21).unwrap().len(), 1);

    let quiet = engine.reconcile(&slurm, Duration::ZERO, false).unwrap();
    assert!(quiet.drifts.is_empty(), "{quiet:?}");
}

#[test]
fn reconcile_spares_young_orphans_and_rebuilds_lost_rows() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let up = engine.provision(&job(22, &["vm1"], 1, None, None)).unwrap();
    s.db.delete_job("it", 22).unwrap();
    let young = sim.allocate(
        "MEMORY=64\nCPU=0.1\nSLURM_CLUSTER=\"it\"\nSLURM_JOB_ID=\"97\"\nSLURM_NODE=\"vm7\"\n",
    ) as u32;
    // Still configuring (its prolog may be at work): the lost row waits for the grace too.
    let configuring = FakeSlurm::holding(&[(22, &["vm1"])]).configuring();
    let report = engine
        .reconcile(&configuring, Duration::from_secs(3600), false)
        .unwrap();
    assert!(report.young >= 2, "{report:?}");
    assert!(report.drifts.is_empty(), "{report:?}");
    // Running: its lost row is rebuilt at once; the young orphan is still spared.
    let running = FakeSlurm::holding(&[(22, &["vm1"])]);
    let report = engine
        .reconcile(&running, Duration::from_secs(3600), false)
        .unwrap();
    assert_eq!(
        report.drifts,
        vec![Drift::MissingRow {
            vm_id: up[0].vm_id,
            job_id: 22,
            node: "vm1".into()
        }],
        "{report:?}"
    );
    let rows = s.db.job_rows("it", 22).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].vm_id, Some(up[0].vm_id));
    assert_ne!(
        vm(&s, young).state,
        VmState::Done,
        "a young orphan was ended"
    );
    let report = engine.reconcile(&running, Duration::ZERO, false).unwrap();
    assert_eq!(report.drifts.len(), 1, "{report:?}");
    assert!(poll_until(Duration::from_secs(5), || vm(&s, young).state
        == VmState::Done));
}

#[test]
fn reconcile_ends_what_a_killed_attempt_left_once_the_job_no_longer_holds_the_node() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    // The attempt that was killed after its VMs came up: rows and VMs on vm1 and vm2.
    let left = engine
        .provision(&job(23, &["vm1", "vm2"], 1, None, None))
        .unwrap();
    // While the job still holds the nodes (a prolog at work), nothing is touched.
    let slurm = FakeSlurm::holding(&[(23, &["vm1", "vm2"])]).configuring();
    let report = engine.reconcile(&slurm, Duration::ZERO, false).unwrap();
    assert!(report.drifts.is_empty(), "{report:?}");
    // Requeued and started again on vm2 and vm3: vm1's VM is no longer the job's.
    let slurm = FakeSlurm::holding(&[(23, &["vm2", "vm3"])]);
    let report = engine.reconcile(&slurm, Duration::ZERO, false).unwrap();
    let vm1 = left.iter().find(|n| n.node == "vm1").unwrap().vm_id;
    let vm2 = left.iter().find(|n| n.node == "vm2").unwrap().vm_id;
    assert_eq!(
        report.drifts,
        vec![Drift::OrphanVm {
            vm_id: vm1,
            job_id: Some(23),
            node: Some("vm1".into())
        }]
    );
    assert!(poll_until(Duration::from_secs(5), || vm(&s, vm1).state
        == VmState::Done));
    assert!(vm(&s, vm2).running(), "the node the job holds lost its VM");
    // Requeued and waiting (it holds no node): the rest goes too.
    let slurm = FakeSlurm::holding(&[(23, &[])]);
    let report = engine.reconcile(&slurm, Duration::ZERO, false).unwrap();
    assert_eq!(report.drifts.len(), 1, "{report:?}");
    assert!(poll_until(Duration::from_secs(5), || vm(&s, vm2).state
        == VmState::Done));
    assert!(s.db.job_rows("it", 23).unwrap().is_empty());
}

/// What a prolog killed mid-provision leaves: job `job_id`'s VMs on vm1 and vm2, made, their
/// rows still `booting`.
fn killed_prolog_leftovers(s: &Setup, engine: &Provisioner, job_id: u32) -> Vec<ProvisionedNode> {
    let made = engine
        .provision(&job(job_id, &["vm1", "vm2"], 1, None, None))
        .unwrap();
    for node in ["vm1", "vm2"] {
        s.db.set_state("it", job_id, node, RowState::Booting, None)
            .unwrap();
    }
    made
}

#[test]
fn reconcile_fails_the_nodes_of_a_job_started_before_its_vms_were_ready() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    // A prolog killed before its VMs were ready: rows still booting.
    killed_prolog_leftovers(&s, &engine, 24);
    // Still configuring: the prolog may be at work, nothing to say.
    let slurm = FakeSlurm::holding(&[(24, &["vm1", "vm2"])]).configuring();
    let report = engine
        .reconcile(&slurm, Duration::from_secs(3600), false)
        .unwrap();
    assert!(report.drifts.is_empty(), "{report:?}");
    // slurmctld started it anyway (a prolog killed by a signal counts as a success).
    let slurm = FakeSlurm::holding(&[(24, &["vm1", "vm2"])]);
    let report = engine
        .reconcile(&slurm, Duration::from_secs(3600), false)
        .unwrap();
    assert_eq!(
        report.drifts,
        vec![Drift::UnreadyStart {
            job_id: 24,
            nodes: vec!["vm1".into(), "vm2".into()]
        }]
    );
    let failed = slurm.1.borrow();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("vm1,vm2 slurm-one: job 24 started before its VMs were ready"),
        "{failed:?}"
    );
}

#[test]
fn reconcile_on_slurm_23_11_finishes_a_killed_prologs_work_when_every_vm_lives() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let made = killed_prolog_leftovers(&s, &engine, 26);
    // 22.05: the job was launched at the parked address; its nodes are failed.
    let slurm = FakeSlurm::holding(&[(26, &["vm1", "vm2"])]);
    let report = engine
        .reconcile(&slurm, Duration::from_secs(3600), true)
        .unwrap();
    assert!(
        matches!(
            report.drifts.as_slice(),
            [Drift::UnreadyStart { job_id: 26, .. }]
        ),
        "{report:?}"
    );
    // 23.11+: the job runs on its own VMs; rows running, nodes marked, nothing failed.
    let slurm = FakeSlurm::holding(&[(26, &["vm1", "vm2"])]).taking_addresses_from_registrations();
    let report = engine
        .reconcile(&slurm, Duration::from_secs(3600), false)
        .unwrap();
    assert_eq!(
        report.drifts,
        vec![Drift::AdoptedStart {
            job_id: 26,
            nodes: vec!["vm1".into(), "vm2".into()]
        }]
    );
    assert_eq!(
        *slurm.1.borrow(),
        vec!["power_down_asap vm1,vm2 slurm-one: job 26 runs in this node's VM; powered down when it ends".to_string()]
    );
    let rows = s.db.job_rows("it", 26).unwrap();
    assert!(
        rows.iter().all(|r| r.state == RowState::Running),
        "{rows:?}"
    );
    assert!(made.iter().all(|n| vm(&s, n.vm_id).running()));
    // Nothing left to do in the next round.
    let report = engine
        .reconcile(&slurm, Duration::from_secs(3600), false)
        .unwrap();
    assert!(report.drifts.is_empty(), "{report:?}");
}

#[test]
fn reconcile_on_slurm_23_11_fails_the_nodes_when_a_vm_of_the_killed_prolog_is_gone() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let made = killed_prolog_leftovers(&s, &engine, 27);
    // vm2's VM never got far: terminated before the job started.
    let gone = made.iter().find(|n| n.node == "vm2").unwrap().vm_id;
    sim.action("terminate-hard", gone as i32);
    assert!(poll_until(Duration::from_secs(5), || vm(&s, gone).state
        == VmState::Done));
    let slurm = FakeSlurm::holding(&[(27, &["vm1", "vm2"])]).taking_addresses_from_registrations();
    let report = engine
        .reconcile(&slurm, Duration::from_secs(3600), false)
        .unwrap();
    assert!(
        report
            .drifts
            .iter()
            .any(|d| matches!(d, Drift::UnreadyStart { job_id: 27, .. })),
        "{report:?}"
    );
    assert!(
        !slurm
            .1
            .borrow()
            .iter()
            .any(|c| c.starts_with("power_down_asap")),
        "{:?}",
        slurm.1.borrow()
    );
}

#[test]
fn provisioning_waits_out_an_opennebula_restart_while_the_vms_boot() {
    let mut sim = Sim::start(Opts {
        boot_delay: "2s",
        ..Opts::dummy().with_state()
    });
    let s = setup(&sim);
    let watcher = setup(&sim);
    let worker = std::thread::spawn(move || {
        let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
        engine
            .provision(&job(25, &["vm1", "vm2"], 1, None, None))
            .map_err(|e| e.to_string())
    });
    let listed = |n: usize| {
        watcher.client.vm_pool(false).is_ok_and(|p| {
            p.iter()
                .filter(|v| v.user.get("SLURM_JOB_ID").map(String::as_str) == Some("25"))
                .count()
                == n
        })
    };
    assert!(poll_until(Duration::from_secs(10), || listed(2)));
    sim.stop();
    std::thread::sleep(Duration::from_millis(1500));
    sim.start_again();
    let up = worker
        .join()
        .expect("no panic")
        .expect("provisioning carried on");
    assert_eq!(up.len(), 2);
}

#[test]
fn cli_refuses_a_malformed_config_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[sizing]\ncpu_share_max = 3.0\n[templates.small]\nbody = \"NIC = [ NETWORK_ID = 0 ]\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slurm-one"))
        .args(["--config", path.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("sizing.cpu_share_max"),
        "{err}"
    );
    std::fs::write(
        &path,
        "[templates.small]\nbody = \"NIC = [ NETWORK_ID = 0 ]\"\nsurprise = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slurm-one"))
        .args(["--config", path.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
}

#[test]
fn cli_provisions_shows_and_tears_down_a_job() {
    let sim = Sim::start(Opts::dummy());
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("one_auth");
    std::fs::write(&auth, format!("{SESSION}\n")).unwrap();
    let cfg = dir.path().join("slurm-one.toml");
    let text = config_text(&sim.url, &dir.path().join("mapping.db"), "")
        .replace("/nonexistent/one_auth", auth.to_str().unwrap());
    std::fs::write(&cfg, text).unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_slurm-one"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap()
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a world-readable credentials file must fail check"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The rest of check needs a SLURM (slurm.conf, plugstack.conf) this test does not have.
    let out = cli(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("chmod 600") && text.contains("credentials"),
        "{text}"
    );
    let out = cli(&[
        "provision",
        "--job",
        "31",
        "--nodes",
        "vm[1-2]",
        "--cpus",
        "2",
        "--mem",
        "512",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["status", "--job", "31"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        table.lines().filter(|l| l.contains("RUNNING")).count(),
        2,
        "{table}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("it-secret"),
        "the session leaked into a log"
    );
    let out = cli(&["teardown", "--job", "31"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 VMs terminated"));
    let out = cli(&["status"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "only the header is left"
    );
}

#[test]
fn a_running_jobs_vms_live_migrate_to_another_host() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let up = engine
        .provision(&job(40, &["vm1", "vm2"], 1, None, None))
        .unwrap();
    let before: Vec<Option<String>> = up.iter().map(|n| vm(&s, n.vm_id).host).collect();
    let changes = engine.migrate_job(40, Some("dummy-host-2")).unwrap();
    assert_eq!(changes.len(), 2);
    for n in &up {
        let info = vm(&s, n.vm_id);
        assert!(info.running(), "{}", info.state_name());
        assert_eq!(info.host.as_deref(), Some("dummy-host-2"));
    }
    assert!(
        before.iter().all(|h| h.as_deref() == Some("dummy-host-1")),
        "{before:?}"
    );
    let rows = s.db.job_rows("it", 40).unwrap();
    assert!(
        rows.iter()
            .all(|r| r.detail.as_deref() == Some("migrated to dummy-host-2")),
        "{rows:?}"
    );
    let err = engine.migrate_job(40, Some("dummy-host-2")).unwrap_err();
    assert!(err.to_string().contains("is the VM's own"), "{err}");
}

#[test]
fn suspensions_follow_slurm_and_are_recorded() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let up = engine.provision(&job(41, &["vm1"], 1, None, None)).unwrap();
    let (changes, errors) = engine.sync_suspensions(&BTreeSet::from([41]));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(changes.len(), 1);
    assert_eq!(vm(&s, up[0].vm_id).state, VmState::Suspended);
    assert_eq!(
        s.db.job_rows("it", 41).unwrap()[0].state,
        RowState::Suspended
    );
    let (again, _) = engine.sync_suspensions(&BTreeSet::from([41]));
    assert!(again.is_empty(), "a suspended job is not suspended twice");
    let (changes, errors) = engine.sync_suspensions(&BTreeSet::new());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(changes.len(), 1);
    assert!(vm(&s, up[0].vm_id).running());
    assert_eq!(s.db.job_rows("it", 41).unwrap()[0].state, RowState::Running);
}

#[test]
fn resizing_a_running_vm_follows_the_drivers_abilities() {
    // oned's dummy driver cannot hotplug-resize: the error is OpenNebula's own.
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    engine.provision(&job(42, &["vm1"], 2, None, None)).unwrap();
    let err = engine.resize_job(42, 0.5).unwrap_err();
    assert!(
        err.to_string()
            .contains("Hotplug resize not supported by driver dummy"),
        "{err}"
    );
    let err = engine.resize_job(42, 7.0).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn resizing_a_running_ns_vm_changes_its_cpu_and_the_hosts_usage() {
    if !crate::util::ns_capable("resizing_a_running_ns_vm_changes_its_cpu_and_the_hosts_usage") {
        return;
    }
    let sim = Sim::start(Opts::ns(31));
    let s = setup_with(
        &sim,
        SESSION,
        None,
        "start_script = \"#!/bin/sh\\n# {node}: nothing to start\\n\"\n",
    );
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let up = engine
        .provision(&job(43, &["vm1"], 2, None, Some(1.0)))
        .unwrap();
    assert_eq!(vm(&s, up[0].vm_id).cpu, Some(2.0));
    let used = |s: &Setup| {
        1600 - s
            .client
            .host_pool()
            .unwrap()
            .iter()
            .map(|h| h.free_cpu)
            .sum::<i64>()
    };
    assert_eq!(used(&s), 200);
    let changes = engine.resize_job(43, 0.25).unwrap();
    assert_eq!(changes[0].now, "CPU 0.5");
    let info = vm(&s, up[0].vm_id);
    assert!(info.running());
    assert_eq!(info.cpu, Some(0.5));
    assert_eq!(used(&s), 50, "host CPU_USAGE follows the resize");
    assert!(s.db.job_rows("it", 43).unwrap()[0]
        .detail
        .as_deref()
        .unwrap()
        .contains("cpu share 0.25"));
    engine.teardown(43).unwrap();
}

#[test]
fn a_new_attempt_removes_what_an_interrupted_one_left() {
    let sim = Sim::start(Opts::dummy());
    let s = setup(&sim);
    let engine = Provisioner::new(&s.cfg, &s.client, &s.db);
    let first = engine.provision(&job(44, &["vm1"], 1, None, None)).unwrap();
    // As if the hook had been killed after provisioning: rows and VM are still there.
    let second = engine.provision(&job(44, &["vm1"], 1, None, None)).unwrap();
    assert_ne!(first[0].vm_id, second[0].vm_id);
    assert!(poll_until(Duration::from_secs(5), || vm(
        &s,
        first[0].vm_id
    )
    .state
        == VmState::Done));
    let rows = s.db.job_rows("it", 44).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].vm_id, Some(second[0].vm_id));
}
