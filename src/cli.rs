//! What the command-line programs share (one-line usage errors and a SIGTERM/SIGINT flag,
//! from the `cli-common` crate one-sim uses too); and the `slurm-one` admin CLI's definition
//! ([`Cli`]), here rather than in its binary so that the man page and shell completions are
//! generated from it (`tools/gen-docs`).

use std::path::PathBuf;

pub use cli_common::{install_stop_handler, parse_args, stopping};

/// Per-job OpenNebula VMs for SLURM: inspect and operate the job↔VM mapping.
#[derive(clap::Parser, Debug)]
#[command(name = "slurm-one", version)]
pub struct Cli {
    /// Configuration file [default: $SLURM_ONE_CONFIG, else /etc/slurm-one/slurm-one.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log debug messages to stderr too.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Log every XML-RPC request and answer (session redacted); implies --debug.
    #[arg(long, global = true)]
    pub trace_api: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands of [`Cli`].
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Show the job↔node↔VM table with OpenNebula's state of each VM.
    Status {
        /// Only this job.
        #[arg(long)]
        job: Option<u32>,
    },
    /// Check this host's setup and say what is missing, one line per finding.
    ///
    /// Config, credentials, OpenNebula reachability, templates, the table and its
    /// directory, the slurm.conf and plugstack.conf lines slurm-one needs (from `scontrol
    /// show config`, else from slurm.conf itself) and the SPANK plugin's SLURM series.
    /// Exits 1 if something is missing; changes nothing.
    Check,
    /// Create and boot a job's VMs by hand (what PrologSlurmctld does).
    Provision {
        /// SLURM job id.
        #[arg(long)]
        job: u32,
        /// Node list, e.g. vm[1-3].
        #[arg(long)]
        nodes: String,
        /// CPUs per node (VCPU).
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory per node, MiB (default: the sizing policy's).
        #[arg(long)]
        mem: Option<u64>,
        /// CPU share per VCPU, 0 < F <= 1.
        #[arg(long)]
        cpu_share: Option<f64>,
        /// Template name from the config.
        #[arg(long)]
        template: Option<String>,
    },
    /// Terminate a job's VMs and clear its rows (what EpilogSlurmctld does). Idempotent.
    Teardown {
        /// SLURM job id.
        #[arg(long)]
        job: u32,
    },
    /// Live-migrate a running job's VMs (to HOST, or each to another host with room).
    Migrate {
        /// SLURM job id.
        #[arg(long)]
        job: u32,
        /// Target host name (see one.hostpool.info).
        #[arg(long)]
        to: Option<String>,
    },
    /// Change the CPU share of a running job's VMs (CPU = VCPU × share).
    Resize {
        /// SLURM job id.
        #[arg(long)]
        job: u32,
        /// New share, within sizing.cpu_share_min/max.
        #[arg(long)]
        cpu_share: f64,
    },
    /// Find and fix orphan VMs, stale rows and lost rows. With --watch it also follows
    /// SLURM's suspensions every second (scontrol suspend/resume JOB suspend/resume the VMs).
    Reconcile {
        /// Only report.
        #[arg(long)]
        dry_run: bool,
        /// Leave VMs younger than this alone [default: provisioning.orphan_grace].
        #[arg(long, value_parser = crate::config::parse_duration)]
        grace: Option<std::time::Duration>,
        /// Do not ask SLURM (squeue, scontrol) anything; trust the table for live jobs.
        #[arg(long)]
        no_slurm: bool,
        /// Keep running: one pass every --interval until SIGTERM (the systemd service).
        #[arg(long)]
        watch: bool,
        /// Time between passes with --watch.
        #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
        interval: std::time::Duration,
    },
}
