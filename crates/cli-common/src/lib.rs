//! What the command-line programs of slurm-one and one-sim share: one-line usage errors
//! ([`parse_args`]) and a SIGTERM/SIGINT flag ([`install_stop_handler`], [`stopping`]).
//!
//! A crate of its own because one-sim is not built on slurm-one (nor slurm-one on one-sim),
//! and both behave alike on a bad command line and on SIGTERM.
#![warn(missing_docs)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Parses arguments; `--help`/`--version` print and exit as usual, a usage error becomes one
/// line (`PROGRAM: <clap's first line> (see PROGRAM --help)`) and exit code 2.
pub fn parse_args<T: clap::Parser>(program: &str) -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "{program}: {} (see {program} --help)",
                first.trim_start_matches("error: ")
            );
            Err(ExitCode::from(2))
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT set the flag [`stopping`] reads instead of killing the process.
pub fn install_stop_handler() {
    let handler: extern "C" fn(libc::c_int) = on_stop;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Whether SIGTERM or SIGINT arrived since [`install_stop_handler`].
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}
