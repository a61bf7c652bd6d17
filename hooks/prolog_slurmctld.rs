//! PrologSlurmctld: gives the job its VMs and returns once their slurmds registered, so the
//! job starts at once. Exit 0: go; 1: failed (slurmctld requeues the job; the hook already
//! set the nodes DOWN → POWER_DOWN, the job's AdminComment, and held it after too many
//! attempts); 2: cannot even start (config, credentials, table).

use std::process::ExitCode;

use slurm_one::hooks::{self, PrologEnv};

fn main() -> ExitCode {
    let ctx = match hooks::setup("slurm-one-prolog") {
        Ok(c) => c,
        Err(hooks::SetupError::Config(e)) => {
            eprintln!("slurm-one-prolog: {e}");
            return ExitCode::from(2);
        }
        Err(hooks::SetupError::Connect { cfg, message }) => {
            if let Ok(env) = PrologEnv::read(&|k| std::env::var(k).ok()) {
                hooks::prolog_cannot_start(&cfg, &env, &message);
            }
            eprintln!("slurm-one-prolog: {message}");
            return ExitCode::from(2);
        }
    };
    let env = match PrologEnv::read(&|k| std::env::var(k).ok()) {
        Ok(e) => e,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    // A failure is logged (and reported to SLURM) where it happens.
    match hooks::prolog_slurmctld(&ctx.cfg, &ctx.one, &ctx.db, &env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
