//! SuspendProgram (argv[1] = nodes being powered down): terminates the VMs mapped to them
//! whose job no longer holds the node; the normal end of a job's VMs, since the prolog marks
//! its nodes POWER_DOWN_ASAP. slurmctld ignores the exit code; failures go to syslog.

use std::process::ExitCode;

use slurm_one::hooks;

fn main() -> ExitCode {
    let Some(nodes) = std::env::args().nth(1) else {
        eprintln!("usage: slurm-one-suspend NODELIST");
        return ExitCode::from(2);
    };
    let ctx = match hooks::setup("slurm-one-suspend") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slurm-one-suspend: {e}");
            return ExitCode::from(2);
        }
    };
    match hooks::suspend_program(&ctx.cfg, &ctx.one, &ctx.db, &nodes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("nodes {nodes}: {e}");
            ExitCode::FAILURE
        }
    }
}
