//! one-sim with the `ns` driver: VMs as Linux namespaces running their CONTEXT.

use std::fs;
use std::process::Command;
use std::time::Duration;

use one_sim::ns::{host_veth_name, netns_name, CONTEXT_FILE};

use crate::util::st::*;
use crate::util::*;

const BOOT: Duration = Duration::from_secs(20);
const STEP: Duration = Duration::from_secs(15);

/// A VM of `sim` booted from [`ns_vm_template`], RUNNING and READY, with its listener up.
struct Booted {
    vm: i32,
    ip: String,
    netns: String,
    keeper: i32,
}

fn boot_listener_vm(sim: &Sim, name: &str, hostname: &str, mark: &str) -> Booted {
    let vm = sim.allocate(&ns_vm_template(name, hostname, mark));
    sim.wait_state(vm, ACTIVE, RUNNING, BOOT);
    sim.wait_value(vm, "USER_TEMPLATE/READY", "YES", BOOT);
    let ip = sim.vm_get(vm, "TEMPLATE/NIC/IP").expect("TEMPLATE/NIC/IP");
    let prefix = format!("10.198.{}.", sim.opts.net);
    assert!(ip.starts_with(&prefix), "IP {ip} outside {prefix}0/24");
    assert_listener_answers(sim, &ip, "after boot");
    let netns = netns_name(&sim.tag(), vm as u32);
    let keeper = keeper_of(&netns, vm)
        .unwrap_or_else(|| panic!("no vmkeeper{vm} in netns {netns}\n{}", sim.log_tail()));
    Booted {
        vm,
        ip,
        netns,
        keeper,
    }
}

/// Asserts the VM's listener (from [`ns_vm_template`]) at `ip`:8080 answers within 10 s.
fn assert_listener_answers(sim: &Sim, ip: &str, when: &str) {
    assert!(
        poll_until(Duration::from_secs(10), || http_answers(
            ip,
            8080,
            Duration::from_secs(1)
        )),
        "the VM's listener at {ip}:8080 does not answer {when}\n{}",
        sim.log_tail()
    );
}

/// Asserts nothing of VM `vm` is left: netns, veth, processes with `mark`.
fn assert_vm_gone(sim: &Sim, vm: i32, mark: &str) {
    let tag = sim.tag();
    let netns = netns_name(&tag, vm as u32);
    assert!(
        !netns_list().contains(&netns),
        "netns {netns} is still there"
    );
    let veth = host_veth_name(&tag, vm as u32);
    assert!(!link_exists(&veth), "veth {veth} is still there");
    let left = pids_with_marker(mark);
    assert!(
        left.is_empty(),
        "processes of VM {vm} still run: {:?}",
        left.iter().map(|&p| (p, cmdline(p))).collect::<Vec<_>>()
    );
}

fn hostname_in(keeper: i32) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--uts=/proc/{keeper}/ns/uts"))
        .args(["--", "hostname"])
        .output()
        .expect("run nsenter");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_ns_vm_runs_its_context_answers_on_its_ip_freezes_when_suspended_and_leaves_nothing_when_terminated(
) {
    if !ns_capable("ns lifecycle") {
        return;
    }
    let sim = Sim::start(Opts::ns(11));
    let tag = sim.tag();
    let bridge = sim.opts.bridge();
    let mark = marker(11);
    let b = boot_listener_vm(&sim, "it-ns-life", "node7", &mark);

    // Plumbing: the netns of this one-sim's tag, its veth on our bridge.
    assert_eq!(netns_of_tag(&tag), vec![b.netns.clone()]);
    assert_eq!(ports_of(&bridge), vec![host_veth_name(&tag, b.vm as u32)]);
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", b.netns))
        .args(["--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .expect("nsenter ip");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}/24", b.ip)),
        "eth0 inside lacks {}: {out:?}",
        b.ip
    );

    // The context as one-context leaves it, seen from inside the VM.
    let root = format!("/proc/{}/root", b.keeper);
    let ctx = fs::read_to_string(format!("{root}{CONTEXT_FILE}")).expect("context.sh in the VM");
    assert!(
        ctx.lines().any(|l| l == "SLURM_JOB_ID='42'"),
        "context.sh:\n{ctx}"
    );
    assert!(ctx.lines().any(|l| l == "SET_HOSTNAME='node7'"), "{ctx}");
    let started = fs::read_to_string(format!("{root}/run/one-context/started"))
        .expect("the start script's marker file");
    assert_eq!(
        started.trim(),
        "42",
        "start script saw the context variables"
    );
    assert_eq!(hostname_in(b.keeper), "node7");

    let listeners = pids_with_marker(&mark);
    assert_eq!(listeners.len(), 1, "one listener: {listeners:?}");
    let listener = listeners[0];
    assert!(
        pids_in_netns(&b.netns).contains(&listener),
        "the listener runs in the VM's netns"
    );

    // suspend: frozen, silent.
    sim.action("suspend", b.vm);
    sim.wait_state(b.vm, SUSPENDED, LCM_INIT, STEP);
    assert!(
        is_frozen(listener) && is_frozen(b.keeper),
        "suspended VM's processes are not frozen: listener {:?}, keeper {:?}",
        proc_state(listener),
        proc_state(b.keeper)
    );
    assert!(
        !http_answers(&b.ip, 8080, Duration::from_secs(1)),
        "a suspended VM's listener answered"
    );

    // resume: thawed, answering.
    sim.action("resume", b.vm);
    sim.wait_state(b.vm, ACTIVE, RUNNING, STEP);
    assert!(!is_frozen(listener), "still frozen after resume");
    assert!(
        poll_until(Duration::from_secs(5), || http_answers(
            &b.ip,
            8080,
            Duration::from_secs(1)
        )),
        "the listener does not answer after resume"
    );
    assert_eq!(pids_with_marker(&mark), vec![listener], "same process");

    // terminate: DONE and nothing left.
    sim.action("terminate", b.vm);
    sim.wait_state(b.vm, DONE, LCM_INIT, STEP);
    assert_vm_gone(&sim, b.vm, &mark);
    assert!(netns_of_tag(&tag).is_empty(), "{:?}", netns_of_tag(&tag));
    assert!(ports_of(&bridge).is_empty(), "{:?}", ports_of(&bridge));
    assert!(!alive(b.keeper), "keeper {} lives", b.keeper);
}

#[test]
fn an_ns_vm_without_a_nic_fails_to_boot_and_says_why() {
    if !ns_capable("ns without NIC") {
        return;
    }
    let sim = Sim::start(Opts::ns(12));
    let tag = sim.tag();
    let vm = sim.allocate(
        "NAME = \"it-no-nic\"\nCPU = 0.1\nMEMORY = 64\n\
         CONTEXT = [ REPORT_READY = \"YES\", SET_HOSTNAME = \"nonic\" ]\n",
    );
    sim.wait_state(vm, ACTIVE, BOOT_FAILURE, BOOT);
    let error = sim.vm_get(vm, "USER_TEMPLATE/ERROR").unwrap_or_default();
    assert!(
        error.contains("NIC") && error.contains("NETWORK_ID"),
        "USER_TEMPLATE/ERROR does not say why: {error:?}"
    );
    assert_eq!(sim.vm_get(vm, "USER_TEMPLATE/READY"), None);
    assert!(netns_of_tag(&tag).is_empty(), "a failed boot left a netns");

    // A failed VM can be terminated (oned: cleanup, then DONE).
    sim.action("terminate", vm);
    sim.wait_state(vm, DONE, LCM_INIT, STEP);
    assert!(netns_of_tag(&tag).is_empty());
    assert!(ports_of(&sim.opts.bridge()).is_empty());
}

#[test]
fn an_ns_vm_whose_keeper_is_killed_goes_to_poweroff_and_boots_again_on_resume() {
    if !ns_capable("ns keeper killed") {
        return;
    }
    let sim = Sim::start(Opts::ns(13));
    let tag = sim.tag();
    let mark = marker(13);
    let b = boot_listener_vm(&sim, "it-ns-kill", "node13", &mark);

    // SAFETY: kill(2) on the VM's keeper, found in the VM's netns.
    unsafe { libc::kill(b.keeper, libc::SIGKILL) };
    sim.wait_state(b.vm, POWEROFF, LCM_INIT, Duration::from_secs(5));
    let orphans = pids_with_marker(&mark);
    if !orphans.is_empty() {
        eprintln!(
            "note: POWEROFF VM {} still has processes running: {orphans:?}",
            b.vm
        );
    }

    // oned: resume from POWEROFF boots the VM again (3/20 -> RUNNING).
    sim.action("resume", b.vm);
    sim.wait_state(b.vm, ACTIVE, RUNNING, BOOT);
    assert_listener_answers(&sim, &b.ip, "after the reboot");
    let keeper = keeper_of(&b.netns, b.vm).expect("a new keeper");
    assert_ne!(keeper, b.keeper);
    assert_eq!(pids_with_marker(&mark).len(), 1, "only the new listener");

    sim.action("terminate", b.vm);
    sim.wait_state(b.vm, DONE, LCM_INIT, STEP);
    assert_vm_gone(&sim, b.vm, &mark);
    assert!(netns_of_tag(&tag).is_empty());
}

#[test]
fn an_ns_vm_rebooted_gets_a_new_guest_on_the_same_address_and_stays_running() {
    if !ns_capable("ns reboot") {
        return;
    }
    let sim = Sim::start(Opts::ns(16));
    let mark = marker(16);
    let b = boot_listener_vm(&sim, "it-ns-reboot", "node16", &mark);

    // oned: reboot keeps the VM RUNNING (3/3) while the guest restarts.
    sim.action("reboot", b.vm);
    assert!(
        poll_until(Duration::from_secs(10), || keeper_of(&b.netns, b.vm)
            .is_some_and(|k| k != b.keeper)),
        "the guest of VM {} was not restarted\n{}",
        b.vm,
        sim.log_tail()
    );
    assert_eq!(sim.vm_get(b.vm, "STATE").as_deref(), Some("3"));
    assert_eq!(sim.vm_get(b.vm, "LCM_STATE").as_deref(), Some("3"));
    assert_eq!(sim.vm_get(b.vm, "TEMPLATE/NIC/IP"), Some(b.ip.clone()));
    assert_listener_answers(&sim, &b.ip, "after the reboot");
    assert_eq!(pids_with_marker(&mark).len(), 1, "only the new listener");
    // Monitoring did not take the restart for a guest that went away.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sim.vm_get(b.vm, "LCM_STATE").as_deref(), Some("3"));

    sim.action("terminate", b.vm);
    sim.wait_state(b.vm, DONE, LCM_INIT, STEP);
    assert_vm_gone(&sim, b.vm, &mark);
}
