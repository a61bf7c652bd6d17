//! ResumeProgram: only acknowledges. PrologSlurmctld does the provisioning, because it has
//! the job's size and options and can wait for registration; slurmctld still needs a
//! ResumeProgram for CLOUD nodes to power up.

use std::process::ExitCode;

fn main() -> ExitCode {
    let nodes = std::env::args().nth(1).unwrap_or_default();
    if let Ok(mut log) = syslog::unix(syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "slurm-one-resume".into(),
        pid: std::process::id(),
    }) {
        let _ = log.info(format!(
            "resume of {nodes} acknowledged; PrologSlurmctld provisions"
        ));
    }
    ExitCode::SUCCESS
}
