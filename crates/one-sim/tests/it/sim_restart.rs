//! one-sim across restarts: `--state-dir`, SIGTERM, `cleanup`.

use std::time::Duration;

use one_sim::ns::{host_veth_name, netns_name};

use crate::util::st::*;
use crate::util::*;

const BOOT: Duration = Duration::from_secs(20);
const STEP: Duration = Duration::from_secs(15);

fn small(name: &str, cpu: &str) -> String {
    format!("NAME = \"{name}\"\nCPU = {cpu}\nMEMORY = 256\n")
}

#[test]
fn dummy_vms_keep_their_ids_states_and_hosts_across_a_restart_and_ids_are_not_reused() {
    let mut sim = Sim::start(Opts::dummy().with_state());
    // Two hosts of 8 cpus: a fills host 0 halfway, b (6 cpus) only fits on host 1.
    let a = sim.allocate(&small("a", "4"));
    sim.wait_state(a, ACTIVE, RUNNING, STEP);
    let b = sim.allocate(&small("b", "6"));
    sim.wait_state(b, ACTIVE, RUNNING, STEP);
    let held = sim.allocate_hold(&small("held", "1"), true);
    let pending = sim.allocate(&small("too-big", "100"));
    let done = sim.allocate(&small("done", "1"));
    sim.wait_state(done, ACTIVE, RUNNING, STEP);
    sim.action("terminate", done);
    sim.wait_state(done, DONE, LCM_INIT, STEP);
    sim.action("suspend", a);
    sim.wait_state(a, SUSPENDED, LCM_INIT, STEP);
    assert_eq!(sim.state(held), (HOLD, LCM_INIT));
    assert_eq!(sim.state(pending), (PENDING, LCM_INIT));

    let before = sim.pool();
    assert_eq!(before.len(), 5, "{before:?}");
    let hosts: Vec<i32> = [a, b]
        .iter()
        .map(|&v| before.iter().find(|r| r.0 == v).expect("in pool").3)
        .collect();
    assert_ne!(hosts[0], hosts[1], "a and b on different hosts: {before:?}");
    let old_pid = sim.pid();

    let st = sim.restart();
    assert!(st.success(), "SIGTERM exit: {st}\n{}", sim.log_tail());
    assert_ne!(sim.pid(), old_pid);
    assert_eq!(sim.pool(), before, "VMs after the restart");

    // Managed again, and ids go on after the highest (a DONE VM's) id.
    let next = sim.allocate(&small("next", "1"));
    assert_eq!(next, done + 1, "ids continue without reuse");
    sim.action("resume", a);
    sim.wait_state(a, ACTIVE, RUNNING, STEP);
    sim.action("release", held);
    sim.wait_state(held, ACTIVE, RUNNING, STEP);
}

#[test]
fn ns_vms_survive_a_restart_are_managed_again_and_cleanup_removes_them() {
    if !ns_capable("ns restart") {
        return;
    }
    let mut sim = Sim::start(Opts::ns(14).with_state());
    let tag = sim.tag();
    let bridge = sim.opts.bridge();
    let (m1, m2) = (marker(141), marker(142));
    let v1 = sim.allocate(&ns_vm_template("keep-1", "keep1", &m1));
    let v2 = sim.allocate(&ns_vm_template("keep-2", "keep2", &m2));
    for v in [v1, v2] {
        sim.wait_state(v, ACTIVE, RUNNING, BOOT);
        sim.wait_value(v, "USER_TEMPLATE/READY", "YES", BOOT);
    }
    let ip1 = sim.vm_get(v1, "TEMPLATE/NIC/IP").expect("IP");
    let ip2 = sim.vm_get(v2, "TEMPLATE/NIC/IP").expect("IP");
    assert_ne!(ip1, ip2);
    let answers = |ip: &str| {
        poll_until(Duration::from_secs(10), || {
            http_answers(ip, 8080, Duration::from_secs(1))
        })
    };
    assert!(answers(&ip1) && answers(&ip2), "{}", sim.log_tail());
    let (ns1, ns2) = (netns_name(&tag, v1 as u32), netns_name(&tag, v2 as u32));
    let k1 = keeper_of(&ns1, v1).expect("keeper 1");
    let k2 = keeper_of(&ns2, v2).expect("keeper 2");

    // SIGTERM with a state dir: the VMs keep running.
    let st = sim.stop();
    assert!(st.success(), "SIGTERM exit: {st}\n{}", sim.log_tail());
    assert_eq!(keeper_of(&ns1, v1), Some(k1), "keeper 1 survives");
    assert_eq!(keeper_of(&ns2, v2), Some(k2), "keeper 2 survives");
    assert_eq!(pids_with_marker(&m1).len(), 1);
    assert!(http_answers(&ip1, 8080, Duration::from_secs(2)));
    let mut ports = ports_of(&bridge);
    ports.sort();
    let mut want = vec![
        host_veth_name(&tag, v1 as u32),
        host_veth_name(&tag, v2 as u32),
    ];
    want.sort();
    assert_eq!(ports, want, "veths stay on the bridge");

    // Adopted by the next start: same tag, still RUNNING (monitoring finds them alive).
    sim.start_again();
    assert_eq!(sim.tag(), tag);
    assert_eq!(sim.state(v1), (ACTIVE, RUNNING));
    assert!(
        !poll_until(Duration::from_millis(1500), || sim.state(v1)
            != (ACTIVE, RUNNING)
            || sim.state(v2) != (ACTIVE, RUNNING)),
        "adopted VMs left RUNNING: {:?} {:?}",
        sim.state(v1),
        sim.state(v2)
    );
    assert_eq!(
        sim.vm_get(v1, "USER_TEMPLATE/READY").as_deref(),
        Some("YES")
    );

    sim.action("terminate", v1);
    sim.wait_state(v1, DONE, LCM_INIT, STEP);
    assert!(!netns_list().contains(&ns1), "netns of v1 left");
    assert!(pids_with_marker(&m1).is_empty(), "v1's listener left");
    assert!(!link_exists(&host_veth_name(&tag, v1 as u32)));
    assert!(!alive(k1));
    assert_eq!(keeper_of(&ns2, v2), Some(k2), "v2 untouched");

    // cleanup removes what is left and marks it DONE.
    let st = sim.stop();
    assert!(st.success());
    let out = sim.cleanup();
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(netns_of_tag(&tag).is_empty(), "{:?}", netns_of_tag(&tag));
    assert!(pids_with_marker(&m2).is_empty(), "v2's listener left");
    assert!(!alive(k2), "keeper 2 left");
    assert!(!link_exists(&host_veth_name(&tag, v2 as u32)));
    assert!(!link_exists(&bridge), "the bridge one-sim made is left");

    sim.start_again();
    assert_eq!(sim.state(v1), (DONE, LCM_INIT));
    assert_eq!(sim.state(v2), (DONE, LCM_INIT));
    assert!(netns_of_tag(&tag).is_empty());
}

#[test]
fn without_a_state_dir_ns_vms_are_removed_on_sigterm() {
    if !ns_capable("ns without state dir") {
        return;
    }
    let mut sim = Sim::start(Opts::ns(15));
    let tag = sim.tag();
    let bridge = sim.opts.bridge();
    let mark = marker(15);
    let vm = sim.allocate(&ns_vm_template("gone", "gone", &mark));
    sim.wait_state(vm, ACTIVE, RUNNING, BOOT);
    sim.wait_value(vm, "USER_TEMPLATE/READY", "YES", BOOT);
    let netns = netns_name(&tag, vm as u32);
    let keeper = keeper_of(&netns, vm).expect("keeper");
    assert!(
        poll_until(Duration::from_secs(10), || !pids_with_marker(&mark)
            .is_empty()),
        "listener never started"
    );

    let st = sim.stop();
    assert!(st.success(), "SIGTERM exit: {st}\n{}", sim.log_tail());
    assert!(netns_of_tag(&tag).is_empty(), "{:?}", netns_of_tag(&tag));
    assert!(pids_with_marker(&mark).is_empty(), "listener left");
    assert!(!alive(keeper), "keeper left");
    assert!(!link_exists(&host_veth_name(&tag, vm as u32)), "veth left");
    assert!(!link_exists(&bridge), "bridge left");
    let run_dir = std::path::Path::new("/run/one-sim").join(&tag);
    if run_dir.exists() {
        eprintln!("note: {} is left after exit", run_dir.display());
    }
}
