//! EpilogSlurmctld: leaves the nodes the prolog marked POWER_DOWN_ASAP to slurmctld (their
//! VMs end in SuspendProgram); powers any others down and terminates their VMs, clearing
//! their rows.
//! Exit 0: done; 1: teardown incomplete (rows kept; SuspendProgram and reconcile retry);
//! 2: cannot start (config, credentials, table).

use std::process::ExitCode;

use slurm_one::hooks;

fn main() -> ExitCode {
    let ctx = match hooks::setup("slurm-one-epilog") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slurm-one-epilog: {e}");
            return ExitCode::from(2);
        }
    };
    match hooks::epilog_slurmctld(&ctx.cfg, &ctx.one, &ctx.db, &|k| std::env::var(k).ok()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
