//! Logging for the hooks and the CLI: the `log` facade to syslog (ident = program name,
//! facility from the config) and, for interactive use, to stderr. The library itself only
//! uses `log` macros; the SPANK plugin keeps SLURM's own logger and never calls this.

use std::io::Write as _;
use std::sync::Mutex;

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

use crate::config::{LogLevel, SyslogFacility};

struct HookLogger {
    syslog: Option<Mutex<Logger<LoggerBackend, Formatter3164>>>,
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

/// Installs the logger once per process. Without a syslog socket (`/dev/log`) only stderr
/// is used, if asked for. A second call is ignored.
pub fn init(program: &str, fac: SyslogFacility, level: LogLevel, stderr: bool) {
    let formatter = Formatter3164 {
        facility: facility(fac),
        hostname: None,
        process: program.to_string(),
        pid: std::process::id(),
    };
    let syslog = syslog::unix(formatter).ok().map(Mutex::new);
    let filter = level_filter(level);
    let logger = HookLogger {
        syslog,
        stderr,
        program: program.to_string(),
        level: filter,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(filter);
    }
}
