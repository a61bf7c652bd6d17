//! Logging for the hooks and the CLI: the `log` facade to syslog (ident = program name,
//! facility from the config) and, for interactive use, to stderr. The library itself only
//! uses `log` macros; the SPANK plugin keeps SLURM's own logger and never calls this.

use std::io::Write as _;
use std::sync::Mutex;

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

use crate::config::{LogLevel, SyslogFacility};

struct HookLogger {
    syslog: Option<Mutex<Logger<LoggerBackend, Formatter3164>>>,
    file: Option<Mutex<std::fs::File>>,
    stderr: bool,
    program: String,
    level: log::LevelFilter,
}

impl log::Log for HookLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let text = r.args().to_string();
        if let Some(syslog) = &self.syslog {
            if let Ok(mut s) = syslog.lock() {
                // A full or missing syslog socket must never break a hook: drop the line.
                let _ = match r.level() {
                    log::Level::Error => s.err(&text),
                    log::Level::Warn => s.warning(&text),
                    log::Level::Info => s.info(&text),
                    log::Level::Debug | log::Level::Trace => s.debug(&text),
                };
            }
        }
        if let Some(file) = &self.file {
            if let Ok(mut f) = file.lock() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let _ = writeln!(
                    f,
                    "{now:.3} {}[{}]: {}: {text}",
                    self.program,
                    std::process::id(),
                    r.level().as_str().to_ascii_lowercase()
                );
            }
        }
        if self.stderr {
            let level = r.level().as_str().to_ascii_lowercase();
            let _ = writeln!(std::io::stderr(), "{}: {level}: {text}", self.program);
        }
    }

    fn flush(&self) {}
}

fn facility(f: SyslogFacility) -> Facility {
    match f {
        SyslogFacility::User => Facility::LOG_USER,
        SyslogFacility::Daemon => Facility::LOG_DAEMON,
        SyslogFacility::Local0 => Facility::LOG_LOCAL0,
        SyslogFacility::Local1 => Facility::LOG_LOCAL1,
        SyslogFacility::Local2 => Facility::LOG_LOCAL2,
        SyslogFacility::Local3 => Facility::LOG_LOCAL3,
        SyslogFacility::Local4 => Facility::LOG_LOCAL4,
        SyslogFacility::Local5 => Facility::LOG_LOCAL5,
        SyslogFacility::Local6 => Facility::LOG_LOCAL6,
        SyslogFacility::Local7 => Facility::LOG_LOCAL7,
    }
}

fn level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

/// Installs the logger once per process: syslog if the host has a socket, the file if
/// given (appended; a file that cannot be opened is skipped), stderr if asked for. A second
/// call is ignored.
pub fn init(
    program: &str,
    fac: SyslogFacility,
    level: LogLevel,
    file: Option<&std::path::Path>,
    stderr: bool,
) {
    let formatter = Formatter3164 {
        facility: facility(fac),
        hostname: None,
        process: program.to_string(),
        pid: std::process::id(),
    };
    let syslog = syslog::unix(formatter).ok().map(Mutex::new);
    let filter = level_filter(level);
    let file = file
        .and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        })
        .map(Mutex::new);
    let logger = HookLogger {
        syslog,
        file,
        stderr,
        program: program.to_string(),
        level: filter,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(filter);
    }
}
