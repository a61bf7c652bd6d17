//! one-sim's command line ([`Cli`]), here rather than in its binary so that the man page
//! one-sim(1) is generated from it (`tools/gen-docs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{HostSpec, Ipv4Net};

/// OpenNebula front-end simulator: oned's XML-RPC API on POST /RPC2.
///
/// Any OpenNebula client works against it: ONE_XMLRPC=http://127.0.0.1:2633/RPC2 and the
/// session `user:password` from the auth file. Once listening it prints one line,
/// `one-sim listening on http://ADDR/RPC2`, on stdout. SIGTERM or SIGINT stop it: with a
/// state dir its VMs keep running and are adopted on the next start (as with oned's DB);
/// without one every VM it made is removed.
///
/// Fault injection (same endpoint and session, outside OpenNebula's namespace):
/// sim.fault.add(method, nth, code, message) fails the nth next call of a method (0: every
/// call) with that OpenNebula error code; sim.fault.delay(method, millis); sim.fault.drop(method,
/// nth) closes the connection unanswered; sim.fault.hosts_full(bool) leaves VMs PENDING;
/// sim.vm.fail(vm_id, "BOOT_FAILURE"); sim.fault.clear(). Method "*" matches every method.
#[derive(Parser, Debug)]
#[command(name = "one-sim", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A subcommand, or none to serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to serve XML-RPC on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:2633")]
    pub listen: std::net::SocketAddr,

    /// File of `user:password` lines; each line is a valid session string.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,

    /// What backs a VM: `dummy` (nothing, like oned's dummy drivers), `ns` (a network,
    /// UTS, mount and time namespace per VM running its CONTEXT start script; needs root)
    /// or `qemu` (a qemu-system-x86_64 guest booting the worker image; needs root).
    #[arg(long, value_enum, default_value_t = DriverKind::Dummy)]
    pub driver: DriverKind,

    /// The worker image the `qemu` driver boots: the directory `scripts/image` prints
    /// (worker.qcow2, vmlinuz, initrd.img, cmdline).
    #[arg(long, value_name = "DIR")]
    pub qemu_image: Option<PathBuf>,

    /// How the `qemu` driver runs guests: `tcg` (software emulation, works everywhere) or
    /// `kvm` (/dev/kvm).
    #[arg(long, value_enum, default_value_t = AccelKind::Tcg)]
    pub qemu_accel: AccelKind,

    /// Port of OneGate (`PUT /vm`), served on the bridge's address for the `ns` and `qemu`
    /// drivers; VMs with CONTEXT TOKEN=YES get ONEGATE_ENDPOINT=http://GATEWAY:PORT (with
    /// `dummy`, http://127.0.0.1:PORT, not served). 0: no endpoint, and like an oned
    /// without ONEGATE_ENDPOINT, VMs with TOKEN=YES are refused.
    #[arg(long, default_value_t = 5030)]
    pub onegate_port: u16,

    /// Keep VMs, hosts, templates and ids here across restarts (oned's DB).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Time a VM spends in BOOT before RUNNING (e.g. 2s, 500ms, 0).
    #[arg(long, default_value = "2s", value_parser = crate::config::parse_duration_ms)]
    pub boot_delay: u64,

    /// Time of every other transitional state (PROLOG, SHUTDOWN, EPILOG, SAVE_*...).
    #[arg(long, default_value = "50ms", value_parser = crate::config::parse_duration_ms)]
    pub step_delay: u64,

    /// With the dummy driver, simulate a guest whose contextualization reports READY=YES as
    /// soon as the VM runs, for VMs with CONTEXT REPORT_READY=YES. `false` behaves exactly
    /// like oned's dummy driver: nothing ever reports READY.
    #[arg(long, value_name = "true|false", default_value_t = true, action = clap::ArgAction::Set)]
    pub dummy_guest: bool,

    /// Bridge the `ns` driver plugs VMs into (created if missing).
    #[arg(long, default_value = "onebr0")]
    pub bridge: String,

    /// The virtual network (NETWORK_ID 0, named after the bridge): the bridge takes the
    /// first address, VMs lease the next ones.
    #[arg(long, default_value = "10.77.0.0/24", value_parser = crate::config::parse_ipv4_net)]
    pub network: Ipv4Net,

    /// Hosts to create on a fresh start: COUNTxCORESc[pu]:MEMORY[G|M], e.g. 4x8cpu:32G.
    #[arg(long, default_value = "1x8cpu:16G", value_parser = crate::config::parse_hosts)]
    pub hosts: HostSpec,

    /// Log more (to stderr).
    #[arg(long)]
    pub debug: bool,
}

/// one-sim's subcommands; without one it serves.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Remove every VM a one-sim with this state dir made (namespaces, processes, veths),
    /// mark them DONE, and remove the bridge if one-sim created it.
    Cleanup {
        /// The state dir the simulator ran with.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Internal: the init process of an `ns` VM.
    #[command(name = "__vm-init", hide = true)]
    VmInit {
        /// The VM's directory.
        vm_dir: PathBuf,
    },
}

/// What backs a VM (`--driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[allow(missing_docs)] // a variant's doc comment would become clap help text
pub enum DriverKind {
    Dummy,
    Ns,
    Qemu,
}

/// How the `qemu` driver runs guests (`--qemu-accel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[allow(missing_docs)] // a variant's doc comment would become clap help text
pub enum AccelKind {
    Tcg,
    Kvm,
}
