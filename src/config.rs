//! The administrator's configuration file (`etc/slurm-one.toml`, installed as
//! `/etc/slurm-one/slurm-one.toml`) and the OpenNebula credentials file.
//!
//! Owns: the TOML schema, every default, every check, the typed [`Config`] that the shells load
//! once and pass down, the error messages (each names the file and the dotted key to fix), and
//! [`read_credentials`] with its [`Secret`]. Does not own: the users' `--one-*` options
//! (`options.rs`), template syntax and escaping (`one::template`), logging setup (`logging.rs`).
//!
//! Loading the configuration never reads the credentials: the SPANK plugin loads it inside
//! `sbatch` as the submitting user, who must not be able to read them. Only the code that talks
//! to OpenNebula calls [`read_credentials`] on [`OpenNebulaSettings::auth_file`].
//!
//! Parsing goes in two steps so that every error can name its dotted key: the text is parsed
//! into a `toml::Table` (syntax errors, with line and column), then each section is deserialized
//! into a `deny_unknown_fields` struct; when that fails, the section's keys are retried one by
//! one to find the key at fault.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::{Table, Value};

/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_PATH_ENV: &str = "SLURM_ONE_CONFIG";
/// Where the configuration lives unless `--config` or `$SLURM_ONE_CONFIG` say otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/slurm-one/slurm-one.toml";
/// Environment variable giving the default `opennebula.endpoint` (OpenNebula's own name).
pub const ENDPOINT_ENV: &str = "ONE_XMLRPC";
/// Environment variable giving the default `opennebula.auth_file` (OpenNebula's own name).
pub const AUTH_FILE_ENV: &str = "ONE_AUTH";

/// Every default, in one place. The example file `etc/slurm-one.toml` repeats them (a test keeps
/// the two in step).
mod defaults {
    use super::{LogLevel, SyslogFacility};
    use std::time::Duration;

    pub const ENDPOINT: &str = "http://localhost:2633/RPC2";
    pub const AUTH_FILE: &str = "/etc/slurm-one/one_auth";
    pub const API_TIMEOUT: Duration = Duration::from_secs(30);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const CLUSTER_NAME: &str = "slurm";
    pub const DATABASE: &str = "/var/lib/slurm-one/mapping.db";
    // The prototype gave 256 MB to jobs that asked for less than 50 MB (or nothing).
    pub const DEFAULT_MEMORY_MB: u32 = 256;
    pub const MIN_MEMORY_MB: u32 = 50;
    pub const CPU_SHARE_DEFAULT: f64 = 1.0;
    pub const CPU_SHARE_MIN: f64 = 0.05;
    pub const CPU_SHARE_MAX: f64 = 1.0;
    pub const BOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(2 * 60);
    pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
    pub const CONCURRENCY: u32 = 4;
    pub const WAIT_READY: bool = true;
    pub const MAX_PROLOG_ATTEMPTS: u32 = 3;
    pub const ORPHAN_GRACE: Duration = Duration::from_secs(90);
    /// Starts the node's slurmd detached, so it outlives contextualization.
    pub const START_SCRIPT: &str = "#!/bin/sh\n\
        # Run by OpenNebula contextualization inside the VM: start this node's slurmd.\n\
        setsid slurmd -N {node} </dev/null >/dev/null 2>&1 &\n";
    pub const SYSLOG_FACILITY: SyslogFacility = SyslogFacility::Daemon;
    pub const LOG_LEVEL: LogLevel = LogLevel::Info;
}

/// The validated configuration. Holds no secret (the credentials stay in their own file), so
/// its `Debug` output is safe to log.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was loaded from, for messages that tell the admin where to fix things.
    pub origin: PathBuf,
    /// `[opennebula]`: how to reach OpenNebula.
    pub opennebula: OpenNebulaSettings,
    /// `[cluster]`: this SLURM cluster's identity and local state.
    pub cluster: ClusterSettings,
    /// `[templates]`: the VM templates jobs may run in.
    pub templates: TemplateSettings,
    /// `[sizing]`: how big each VM is.
    pub sizing: SizingPolicy,
    /// `[provisioning]`: waits, retries and parallelism while creating VMs.
    pub provisioning: ProvisioningSettings,
    /// `[logging]`: where and how much to log.
    pub logging: LoggingSettings,
}

/// `[opennebula]`.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenNebulaSettings {
    /// XML-RPC endpoint (`http://` or `https://`, without credentials). Default: `$ONE_XMLRPC`,
    /// else `http://localhost:2633/RPC2`.
    pub endpoint: String,
    /// Absolute path of the `user:password` file, read by [`read_credentials`]. Default:
    /// `$ONE_AUTH`, else `/etc/slurm-one/one_auth`.
    pub auth_file: PathBuf,
    /// Longest wait for one XML-RPC call.
    pub api_timeout: Duration,
    /// Longest wait for the TCP connection to the endpoint.
    pub connect_timeout: Duration,
}

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// Cluster name, `[A-Za-z0-9_-]{1,64}`; it goes into the VMs' tags so that several clusters
    /// can share one OpenNebula.
    pub name: String,
    /// Absolute path of the SQLite job/VM mapping.
    pub database: PathBuf,
    /// slurm.conf the hooks' `scontrol` calls use when slurmctld's is not at SLURM's
    /// default path (slurmctld gives its hooks no SLURM_CONF).
    pub slurm_conf: Option<PathBuf>,
}

/// Where a template's VMs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// Instantiate this registered OpenNebula template (`template_id = 5`).
    Id(u32),
    /// Allocate a VM from this template text (`body = '''...'''`); slurm-one adds the sizing.
    Body(String),
}

/// A template from `[templates.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedTemplate {
    /// The `NAME` of `[templates.NAME]`, as users give it to `--one-template=NAME`.
    pub name: String,
    /// Its registered ID or inline body.
    pub source: TemplateSource,
}

/// `[templates]`: at least one `[templates.NAME]` table, the default, the users' choices.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateSettings {
    /// Name of the template used when the job names none. Defined in `by_name`.
    pub default: String,
    /// Names users may also pick with `--one-template=NAME`; each is defined in `by_name`.
    pub user_selectable: Vec<String>,
    /// Every defined template, by name.
    pub by_name: BTreeMap<String, NamedTemplate>,
}

/// `[sizing]`: how big a job's VM is on each node.
///
/// VCPU is always the number of CPUs SLURM allocated to the job on that node; there is no knob.
/// A job that asked for less than `min_memory_mb` (or for no memory at all) gets
/// `default_memory_mb`. The CPU share is the fraction of a physical CPU reserved per VCPU
/// (OpenNebula's `CPU` attribute); a job that chose none gets `cpu_share_default`, a job's
/// choice must lie in `[cpu_share_min, cpu_share_max]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SizingPolicy {
    /// Memory (MB) for jobs that asked for none or for less than `min_memory_mb`. At least 1.
    pub default_memory_mb: u32,
    /// Requests below this (MB) are treated as "no request". At most `default_memory_mb`.
    pub min_memory_mb: u32,
    /// CPU share when the job chose none; within `[cpu_share_min, cpu_share_max]`.
    pub cpu_share_default: f64,
    /// Smallest CPU share a job may choose; `0 < cpu_share_min`.
    pub cpu_share_min: f64,
    /// Largest CPU share a job may choose; `cpu_share_min <= cpu_share_max <= 1`.
    pub cpu_share_max: f64,
}

/// `[provisioning]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvisioningSettings {
    /// Longest wait for a VM to reach RUNNING (and READY, see `wait_ready`).
    pub boot_timeout: Duration,
    /// Longest wait for the VM's slurmd to register with slurmctld.
    pub register_timeout: Duration,
    /// Pause between two state checks while waiting.
    pub poll_interval: Duration,
    /// How many VMs of one job are created in parallel; at least 1.
    pub concurrency: u32,
    /// Wait for `READY=YES`, which the VM's contextualization reports once it is up.
    pub wait_ready: bool,
    /// After this many failed provisionings of a job it is held instead of requeued; at least 1.
    pub max_prolog_attempts: u32,
    /// Shell script the VM runs at boot (CONTEXT START_SCRIPT_BASE64); `{node}` becomes the
    /// SLURM node name. It must start that node's slurmd.
    pub start_script: String,
    /// Reconcile leaves a tagged VM without a job alone for this long after its creation.
    pub orphan_grace: Duration,
}

/// `[logging]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggingSettings {
    /// Syslog facility of the hooks and the CLI.
    pub syslog_facility: SyslogFacility,
    /// Most verbose level logged.
    pub level: LogLevel,
    /// Also append log lines to this file (for hosts without a syslog socket).
    pub file: Option<PathBuf>,
}

/// The syslog facilities an admin may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFacility {
    /// `user`
    User,
    /// `daemon`
    Daemon,
    /// `local0`
    Local0,
    /// `local1`
    Local1,
    /// `local2`
    Local2,
    /// `local3`
    Local3,
    /// `local4`
    Local4,
    /// `local5`
    Local5,
    /// `local6`
    Local6,
    /// `local7`
    Local7,
}

impl SyslogFacility {
    /// The `LOG_*` facility code for `openlog(3)`.
    pub fn code(self) -> libc::c_int {
        match self {
            SyslogFacility::User => libc::LOG_USER,
            SyslogFacility::Daemon => libc::LOG_DAEMON,
            SyslogFacility::Local0 => libc::LOG_LOCAL0,
            SyslogFacility::Local1 => libc::LOG_LOCAL1,
            SyslogFacility::Local2 => libc::LOG_LOCAL2,
            SyslogFacility::Local3 => libc::LOG_LOCAL3,
            SyslogFacility::Local4 => libc::LOG_LOCAL4,
            SyslogFacility::Local5 => libc::LOG_LOCAL5,
            SyslogFacility::Local6 => libc::LOG_LOCAL6,
            SyslogFacility::Local7 => libc::LOG_LOCAL7,
        }
    }
}

/// Log levels, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `error`
    Error,
    /// `warn`
    Warn,
    /// `info`
    Info,
    /// `debug`
    Debug,
    /// `trace`
    Trace,
}

impl LogLevel {
    /// The word used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Why the configuration or the credentials cannot be used. Every message names the file, the
/// dotted key where there is one, what is wrong and what is allowed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {reason}", .file.display())]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The file is not TOML.
    #[error("{}:{line}:{column}: TOML syntax error: {message}", .file.display())]
    Syntax {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's explanation.
        message: String,
    },
    /// A key slurm-one does not know, usually a typo.
    #[error("{}: unknown key `{key}`: {expected}", .file.display())]
    UnknownKey {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key, e.g. `sizing.cpu_shares`.
        key: String,
        /// The keys allowed there.
        expected: String,
    },
    /// A value of the wrong TOML type, or a word that is not one of the allowed ones.
    #[error("{}: `{key}`: {problem}", .file.display())]
    WrongType {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key.
        key: String,
        /// What was found and what is expected.
        problem: String,
    },
    /// A duration that does not parse.
    #[error(
        "{}: `{key}` = {value:?} is not a duration ({reason}); write e.g. \"500ms\", \"10s\", \"5m\" or \"1h30m\"",
        .file.display()
    )]
    BadDuration {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key.
        key: String,
        /// The text found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A number or duration outside its range.
    #[error("{}: `{key}` = {value} is out of range; allowed: {allowed}", .file.display())]
    OutOfRange {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key.
        key: String,
        /// The value found.
        value: String,
        /// The allowed range.
        allowed: String,
    },
    /// A string or path of the right type but not of an allowed form.
    #[error("{}: `{key}` = {value:?} is invalid; expected {expected}", .file.display())]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key.
        key: String,
        /// The value found (redacted where it could hold a secret).
        value: String,
        /// The allowed form.
        expected: String,
    },
    /// No `[templates.NAME]` table at all.
    #[error(
        "{}: no VM template: define at least one `[templates.NAME]` table with `template_id` or `body`",
        .file.display()
    )]
    NoTemplates {
        /// The configuration file.
        file: PathBuf,
    },
    /// A template with both `template_id` and `body`.
    #[error("{}: `{key}` has both `template_id` and `body`; keep exactly one", .file.display())]
    TemplateBothSources {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key of the template table, e.g. `templates.big`.
        key: String,
    },
    /// A template with neither `template_id` nor `body`.
    #[error(
        "{}: `{key}` has neither `template_id` nor `body`; give exactly one",
        .file.display()
    )]
    TemplateNoSource {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key of the template table.
        key: String,
    },
    /// An inline body that sets an attribute slurm-one computes itself.
    #[error(
        "{}: `{key}` sets {attribute}; remove it: slurm-one sets CPU, VCPU and MEMORY from the job's allocation and `[sizing]`",
        .file.display()
    )]
    TemplateSetsSizing {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key of the body, e.g. `templates.small.body`.
        key: String,
        /// The attribute found (upper case).
        attribute: String,
    },
    /// `templates.default` or `templates.user_selectable` names an undefined template.
    #[error(
        "{}: `{key}` names template {name:?}, which is not defined; defined: {}",
        .file.display(),
        .defined.join(", ")
    )]
    UndefinedTemplate {
        /// The configuration file.
        file: PathBuf,
        /// `templates.default` or `templates.user_selectable`.
        key: String,
        /// The missing name.
        name: String,
        /// The names defined by `[templates.NAME]` tables.
        defined: Vec<String>,
    },
    /// Several templates and no `templates.default`.
    #[error(
        "{}: `templates.default` is required when several templates are defined ({})",
        .file.display(),
        .defined.join(", ")
    )]
    NoDefaultTemplate {
        /// The configuration file.
        file: PathBuf,
        /// The names defined.
        defined: Vec<String>,
    },
    /// A job asked for a template it may not use (or that does not exist).
    #[error(
        "template {name:?} is not available; choose one of: {} (`templates.user_selectable` in {})",
        .allowed.join(", "),
        .file.display()
    )]
    TemplateNotAllowed {
        /// The configuration file.
        file: PathBuf,
        /// The name the job gave.
        name: String,
        /// The names it may give.
        allowed: Vec<String>,
    },
    /// The credentials file could not be opened or read.
    #[error(
        "cannot read credentials file {} (`opennebula.auth_file`): {reason}",
        .file.display()
    )]
    CredentialsUnreadable {
        /// The credentials file.
        file: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The credentials file is accessible by group or others.
    #[error(
        "credentials file {} (`opennebula.auth_file`) is accessible by group or others (mode {mode:04o}); run `chmod 600 {}`",
        .file.display(),
        .file.display()
    )]
    CredentialsTooOpen {
        /// The credentials file.
        file: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The credentials file is empty or its first line is blank.
    #[error(
        "credentials file {} (`opennebula.auth_file`) is empty; its first line must be `user:password`",
        .file.display()
    )]
    CredentialsEmpty {
        /// The credentials file.
        file: PathBuf,
    },
    /// The first line is not `user:password` with both parts non-empty.
    #[error(
        "credentials file {} (`opennebula.auth_file`): the first line is not `user:password`",
        .file.display()
    )]
    CredentialsMalformed {
        /// The credentials file.
        file: PathBuf,
    },
}

/// The OpenNebula session string `user:password`. `Debug` and `Display` show `user:***`, so it
/// can sit in structs that get logged; only [`Secret::expose`] gives the password away.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A session for `user` with `password` (for tests and tools that have them in hand).
    pub fn new(user: &str, password: &str) -> Secret {
        Secret(format!("{user}:{password}"))
    }

    /// The whole `user:password`, for the XML-RPC session argument only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The user name (before the first `:`).
    pub fn user(&self) -> &str {
        self.0.split(':').next().unwrap_or_default()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***", self.user())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***", self.user())
    }
}

/// Reads the `user:password` first line of `path`. Refuses a file that group or others can
/// access (mode & 0o077), a missing or empty one, and one whose first line is not
/// `user:password`. No error ever includes the file's content.
pub fn read_credentials(path: &Path) -> Result<Secret, ConfigError> {
    let unreadable = |e: std::io::Error| ConfigError::CredentialsUnreadable {
        file: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = File::open(path).map_err(unreadable)?;
    // Check the opened file, not the path, so the file read is the file checked.
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(ConfigError::CredentialsUnreadable {
            file: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::CredentialsTooOpen {
            file: path.to_path_buf(),
            mode,
        });
    }
    let mut text = String::new();
    // The file holds one short line; the cap keeps a wrong path (a log, a device) harmless.
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        return Err(ConfigError::CredentialsEmpty {
            file: path.to_path_buf(),
        });
    }
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok(Secret(line.to_string()))
        }
        _ => Err(ConfigError::CredentialsMalformed {
            file: path.to_path_buf(),
        }),
    }
}

/// Parses a human duration: one or more `<whole number><unit>` parts with units `ms`, `s`, `m`,
/// `h`, e.g. `"500ms"`, `"10s"`, `"5m"`, `"1h30m"`. A bare number is refused: its unit would be
/// a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty".to_string());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a whole number at {rest:?}"));
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{number} is too large"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let seconds_per_unit = match unit.trim() {
            "ms" => None,
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "" => return Err(format!("{number} has no unit (ms, s, m or h)")),
            other => {
                return Err(format!(
                    "unknown unit {other:?}; use ms, s, m or h with whole numbers"
                ))
            }
        };
        let part = match seconds_per_unit {
            None => Some(Duration::from_millis(number)),
            Some(factor) => number.checked_mul(factor).map(Duration::from_secs),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("{s:?} is too large"))?;
        rest = next;
    }
    Ok(total)
}

impl Config {
    /// Reads, parses and validates the configuration file at `path`, taking the endpoint and
    /// credentials-file defaults from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Config::from_toml_str(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text` as if read from `origin` (named in errors), looking up
    /// `ONE_XMLRPC` and `ONE_AUTH` with `env`. Pure: touches neither files nor the environment.
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = origin;
        let table: Table = text.parse().map_err(|e| syntax_error(&e, text, file))?;
        let raw: RawFile = section(table, "", file)?;
        // An empty variable is as good as unset (`ONE_AUTH= cmd`).
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        Ok(Config {
            origin: origin.to_path_buf(),
            opennebula: build_opennebula(raw.opennebula.unwrap_or_default(), file, &env)?,
            cluster: build_cluster(raw.cluster.unwrap_or_default(), file)?,
            templates: build_templates(raw.templates.unwrap_or_default(), file)?,
            sizing: build_sizing(raw.sizing.unwrap_or_default(), file)?,
            provisioning: build_provisioning(raw.provisioning.unwrap_or_default(), file)?,
            logging: build_logging(raw.logging.unwrap_or_default(), file)?,
        })
    }

    /// The template for a job: `None` is the default; a name must be the default or one of
    /// `templates.user_selectable`, otherwise the error lists the names allowed.
    pub fn template(&self, name: Option<&str>) -> Result<&NamedTemplate, ConfigError> {
        let t = &self.templates;
        let wanted = name.unwrap_or(&t.default);
        let allowed = wanted == t.default || t.user_selectable.iter().any(|n| n == wanted);
        match t.by_name.get(wanted) {
            Some(template) if allowed => Ok(template),
            _ => {
                let mut names = vec![t.default.clone()];
                for n in &t.user_selectable {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
                Err(ConfigError::TemplateNotAllowed {
                    file: self.origin.clone(),
                    name: wanted.to_string(),
                    allowed: names,
                })
            }
        }
    }

    /// `$SLURM_ONE_CONFIG` if set and non-empty, else `/etc/slurm-one/slurm-one.toml`.
    pub fn default_path() -> PathBuf {
        path_or_default(std::env::var_os(CONFIG_PATH_ENV))
    }
}

fn path_or_default(from_env: Option<std::ffi::OsString>) -> PathBuf {
    match from_env {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

// ----- the file as written: every key optional, unknown keys refused -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    opennebula: Option<Table>,
    cluster: Option<Table>,
    templates: Option<Table>,
    sizing: Option<Table>,
    provisioning: Option<Table>,
    logging: Option<Table>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenNebula {
    endpoint: Option<String>,
    auth_file: Option<PathBuf>,
    api_timeout: Option<DurationText>,
    connect_timeout: Option<DurationText>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Option<String>,
    database: Option<PathBuf>,
    slurm_conf: Option<PathBuf>,
}

/// `[templates]` less its `[templates.NAME]` sub-tables.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplatesHead {
    default: Option<String>,
    user_selectable: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    template_id: Option<u32>,
    body: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSizing {
    default_memory_mb: Option<u32>,
    min_memory_mb: Option<u32>,
    cpu_share_default: Option<f64>,
    cpu_share_min: Option<f64>,
    cpu_share_max: Option<f64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvisioning {
    boot_timeout: Option<DurationText>,
    register_timeout: Option<DurationText>,
    poll_interval: Option<DurationText>,
    concurrency: Option<u32>,
    wait_ready: Option<bool>,
    max_prolog_attempts: Option<u32>,
    start_script: Option<String>,
    orphan_grace: Option<DurationText>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    syslog_facility: Option<SyslogFacility>,
    level: Option<LogLevel>,
    file: Option<PathBuf>,
}

/// A duration as written; its own type so that a bare number gets a message saying what to write.
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DurationText, E> {
                Ok(DurationText(s.to_string()))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Line and column of a TOML syntax error.
fn syntax_error(e: &toml::de::Error, text: &str, file: &Path) -> ConfigError {
    let start = e.span().map(|s| s.start).unwrap_or(0);
    let before = text.get(..start).unwrap_or(text);
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    ConfigError::Syntax {
        file: file.to_path_buf(),
        line: before.matches('\n').count() + 1,
        column: before.get(line_start..).unwrap_or("").chars().count() + 1,
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Deserializes one table; on failure finds the key at fault by retrying each key alone (all
/// raw fields are optional, so a single good key always deserializes).
fn section<T: DeserializeOwned>(table: Table, prefix: &str, file: &Path) -> Result<T, ConfigError> {
    let whole = match table.clone().try_into::<T>() {
        Ok(value) => return Ok(value),
        Err(e) => e.message().to_string(),
    };
    for (key, value) in table {
        let mut alone = Table::new();
        alone.insert(key.clone(), value);
        if let Err(e) = alone.try_into::<T>() {
            let key = format!("{prefix}{key}");
            let message = e.message();
            return Err(if message.starts_with("unknown field") {
                ConfigError::UnknownKey {
                    file: file.to_path_buf(),
                    key,
                    expected: message
                        .split_once(", ")
                        .map(|(_, expected)| expected.to_string())
                        .unwrap_or_else(|| message.to_string()),
                }
            } else {
                ConfigError::WrongType {
                    file: file.to_path_buf(),
                    key,
                    // Users write TOML tables, not serde maps.
                    problem: message
                        .replace("expected a map", "expected a table")
                        .replace(
                            "expected u32",
                            "expected a whole number from 0 to 4294967295",
                        ),
                }
            });
        }
    }
    Err(ConfigError::WrongType {
        file: file.to_path_buf(),
        key: prefix.trim_end_matches('.').to_string(),
        problem: whole,
    })
}

fn duration(
    value: Option<DurationText>,
    default: Duration,
    key: &str,
    file: &Path,
) -> Result<Duration, ConfigError> {
    let Some(DurationText(text)) = value else {
        return Ok(default);
    };
    let parsed = parse_duration(&text).map_err(|reason| ConfigError::BadDuration {
        file: file.to_path_buf(),
        key: key.to_string(),
        value: text.clone(),
        reason,
    })?;
    if parsed.is_zero() {
        return Err(out_of_range(file, key, &format!("{text:?}"), "more than 0"));
    }
    Ok(parsed)
}

fn out_of_range(file: &Path, key: &str, value: &str, allowed: &str) -> ConfigError {
    ConfigError::OutOfRange {
        file: file.to_path_buf(),
        key: key.to_string(),
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

fn invalid(file: &Path, key: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_path_buf(),
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

fn absolute(path: PathBuf, key: &str, file: &Path) -> Result<PathBuf, ConfigError> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(invalid(
            file,
            key,
            &path.display().to_string(),
            "an absolute path",
        ))
    }
}

/// `[A-Za-z0-9_-]` plus `extra`, 1 to 64 characters.
fn is_name(s: &str, extra: &[char]) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

fn build_opennebula(
    table: Table,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OpenNebulaSettings, ConfigError> {
    let raw: RawOpenNebula = section(table, "opennebula.", file)?;
    let (endpoint, endpoint_from) = match raw.endpoint {
        Some(e) => (e, ""),
        None => match env(ENDPOINT_ENV) {
            Some(e) => (e, " (from $ONE_XMLRPC)"),
            None => (defaults::ENDPOINT.to_string(), ""),
        },
    };
    check_endpoint(&endpoint, endpoint_from, file)?;
    let (auth_file, auth_key) = match raw.auth_file {
        Some(p) => (p, "opennebula.auth_file"),
        None => match env(AUTH_FILE_ENV) {
            Some(p) => (PathBuf::from(p), "opennebula.auth_file (from $ONE_AUTH)"),
            None => (PathBuf::from(defaults::AUTH_FILE), "opennebula.auth_file"),
        },
    };
    Ok(OpenNebulaSettings {
        endpoint,
        auth_file: absolute(auth_file, auth_key, file)?,
        api_timeout: duration(
            raw.api_timeout,
            defaults::API_TIMEOUT,
            "opennebula.api_timeout",
            file,
        )?,
        connect_timeout: duration(
            raw.connect_timeout,
            defaults::CONNECT_TIMEOUT,
            "opennebula.connect_timeout",
            file,
        )?,
    })
}

fn check_endpoint(endpoint: &str, from: &str, file: &Path) -> Result<(), ConfigError> {
    let key = format!("opennebula.endpoint{from}");
    let expected = "an http:// or https:// URL with a host, e.g. http://one.example.org:2633/RPC2";
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Err(invalid(file, &key, endpoint, expected));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some((_, host)) = authority.rsplit_once('@') {
        // Never echo the user info: it may hold a password.
        return Err(invalid(
            file,
            &key,
            &format!("{scheme}://***@{host}"),
            "a URL without user or password; credentials belong in opennebula.auth_file",
        ));
    }
    if !matches!(scheme, "http" | "https") || authority.is_empty() {
        return Err(invalid(file, &key, endpoint, expected));
    }
    Ok(())
}

fn build_cluster(table: Table, file: &Path) -> Result<ClusterSettings, ConfigError> {
    let raw: RawCluster = section(table, "cluster.", file)?;
    let name = raw
        .name
        .unwrap_or_else(|| defaults::CLUSTER_NAME.to_string());
    if !is_name(&name, &[]) {
        return Err(invalid(
            file,
            "cluster.name",
            &name,
            "1 to 64 of A-Z a-z 0-9 _ - (it goes into VM tags)",
        ));
    }
    let database = raw
        .database
        .unwrap_or_else(|| PathBuf::from(defaults::DATABASE));
    let slurm_conf = match raw.slurm_conf {
        Some(p) => Some(absolute(p, "cluster.slurm_conf", file)?),
        None => None,
    };
    Ok(ClusterSettings {
        name,
        database: absolute(database, "cluster.database", file)?,
        slurm_conf,
    })
}

fn build_templates(table: Table, file: &Path) -> Result<TemplateSettings, ConfigError> {
    let mut head = Table::new();
    let mut by_name = BTreeMap::new();
    for (name, value) in table {
        let Value::Table(body) = value else {
            head.insert(name, value);
            continue;
        };
        let key = format!("templates.{name}");
        if !is_name(&name, &['.']) || name == "default" || name == "user_selectable" {
            return Err(invalid(
                file,
                &key,
                &name,
                "a template name of 1 to 64 of A-Z a-z 0-9 _ - . other than `default` and `user_selectable`",
            ));
        }
        let raw: RawTemplate = section(body, &format!("{key}."), file)?;
        let source = match (raw.template_id, raw.body) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::TemplateBothSources {
                    file: file.to_path_buf(),
                    key,
                })
            }
            (None, None) => {
                return Err(ConfigError::TemplateNoSource {
                    file: file.to_path_buf(),
                    key,
                })
            }
            (Some(id), None) => TemplateSource::Id(id),
            (None, Some(body)) => {
                let body_key = format!("{key}.body");
                if body.trim().is_empty() {
                    return Err(invalid(file, &body_key, &body, "a non-empty template body"));
                }
                if let Some(attribute) = top_level_attributes(&body)
                    .into_iter()
                    .find(|a| matches!(a.as_str(), "CPU" | "VCPU" | "MEMORY"))
                {
                    return Err(ConfigError::TemplateSetsSizing {
                        file: file.to_path_buf(),
                        key: body_key,
                        attribute,
                    });
                }
                TemplateSource::Body(body)
            }
        };
        by_name.insert(name.clone(), NamedTemplate { name, source });
    }
    let head: RawTemplatesHead = section(head, "templates.", file).map_err(|e| match e {
        ConfigError::UnknownKey {
            file,
            key,
            expected,
        } => ConfigError::UnknownKey {
            file,
            key,
            expected: format!("{expected}, or a [templates.NAME] table"),
        },
        other => other,
    })?;
    if by_name.is_empty() {
        return Err(ConfigError::NoTemplates {
            file: file.to_path_buf(),
        });
    }
    let defined: Vec<String> = by_name.keys().cloned().collect();
    let undefined = |key: &str, name: &str| ConfigError::UndefinedTemplate {
        file: file.to_path_buf(),
        key: key.to_string(),
        name: name.to_string(),
        defined: defined.clone(),
    };
    let default = match head.default {
        Some(name) if by_name.contains_key(&name) => name,
        Some(name) => return Err(undefined("templates.default", &name)),
        None => match defined.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(ConfigError::NoDefaultTemplate {
                    file: file.to_path_buf(),
                    defined: defined.clone(),
                })
            }
        },
    };
    let user_selectable = head.user_selectable.unwrap_or_default();
    if let Some(name) = user_selectable
        .iter()
        .find(|n| !by_name.contains_key(n.as_str()))
    {
        return Err(undefined("templates.user_selectable", name));
    }
    Ok(TemplateSettings {
        default,
        user_selectable,
        by_name,
    })
}

/// Upper-cased names of the top-level attributes of an OpenNebula template text. Only as much
/// of the grammar as finding `NAME =` outside vectors, strings and comments needs; the real
/// parser is `one::template`.
fn top_level_attributes(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                current.clear();
            }
            '#' => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                current.clear();
            }
            '[' => {
                depth += 1;
                current.clear();
            }
            ']' => {
                depth = depth.saturating_sub(1);
                current.clear();
            }
            '=' if depth == 0 => {
                names.push(current.trim().to_ascii_uppercase());
                current.clear();
            }
            '\n' | ',' => current.clear(),
            _ if depth == 0 => current.push(c),
            _ => {}
        }
    }
    names
}

fn build_sizing(table: Table, file: &Path) -> Result<SizingPolicy, ConfigError> {
    let raw: RawSizing = section(table, "sizing.", file)?;
    let default_memory_mb = raw.default_memory_mb.unwrap_or(defaults::DEFAULT_MEMORY_MB);
    let min_memory_mb = raw.min_memory_mb.unwrap_or(defaults::MIN_MEMORY_MB);
    let cpu_share_default = raw.cpu_share_default.unwrap_or(defaults::CPU_SHARE_DEFAULT);
    let cpu_share_min = raw.cpu_share_min.unwrap_or(defaults::CPU_SHARE_MIN);
    let cpu_share_max = raw.cpu_share_max.unwrap_or(defaults::CPU_SHARE_MAX);
    if default_memory_mb == 0 {
        return Err(out_of_range(
            file,
            "sizing.default_memory_mb",
            "0",
            "at least 1 (MB)",
        ));
    }
    if min_memory_mb > default_memory_mb {
        return Err(out_of_range(
            file,
            "sizing.min_memory_mb",
            &min_memory_mb.to_string(),
            &format!("at most sizing.default_memory_mb ({default_memory_mb})"),
        ));
    }
    // Written as `!(in range)` so that NaN is refused too.
    if !(cpu_share_min > 0.0 && cpu_share_min <= 1.0) {
        return Err(out_of_range(
            file,
            "sizing.cpu_share_min",
            &cpu_share_min.to_string(),
            "more than 0 and at most 1",
        ));
    }
    if !(cpu_share_max >= cpu_share_min && cpu_share_max <= 1.0) {
        return Err(out_of_range(
            file,
            "sizing.cpu_share_max",
            &cpu_share_max.to_string(),
            &format!("from sizing.cpu_share_min ({cpu_share_min}) to 1"),
        ));
    }
    if !(cpu_share_default >= cpu_share_min && cpu_share_default <= cpu_share_max) {
        return Err(out_of_range(
            file,
            "sizing.cpu_share_default",
            &cpu_share_default.to_string(),
            &format!(
                "from sizing.cpu_share_min ({cpu_share_min}) to sizing.cpu_share_max ({cpu_share_max})"
            ),
        ));
    }
    Ok(SizingPolicy {
        default_memory_mb,
        min_memory_mb,
        cpu_share_default,
        cpu_share_min,
        cpu_share_max,
    })
}

fn build_provisioning(table: Table, file: &Path) -> Result<ProvisioningSettings, ConfigError> {
    let raw: RawProvisioning = section(table, "provisioning.", file)?;
    let at_least_one = |value: Option<u32>, default: u32, key: &str| match value {
        Some(0) => Err(out_of_range(file, key, "0", "at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(ProvisioningSettings {
        boot_timeout: duration(
            raw.boot_timeout,
            defaults::BOOT_TIMEOUT,
            "provisioning.boot_timeout",
            file,
        )?,
        register_timeout: duration(
            raw.register_timeout,
            defaults::REGISTER_TIMEOUT,
            "provisioning.register_timeout",
            file,
        )?,
        poll_interval: duration(
            raw.poll_interval,
            defaults::POLL_INTERVAL,
            "provisioning.poll_interval",
            file,
        )?,
        concurrency: at_least_one(
            raw.concurrency,
            defaults::CONCURRENCY,
            "provisioning.concurrency",
        )?,
        wait_ready: raw.wait_ready.unwrap_or(defaults::WAIT_READY),
        max_prolog_attempts: at_least_one(
            raw.max_prolog_attempts,
            defaults::MAX_PROLOG_ATTEMPTS,
            "provisioning.max_prolog_attempts",
        )?,
        start_script: match raw.start_script {
            Some(s) if !s.contains("{node}") => {
                return Err(ConfigError::Invalid {
                    file: file.to_path_buf(),
                    key: "provisioning.start_script".into(),
                    value: s.lines().next().unwrap_or("").to_string(),
                    expected: "a script containing {node}, where the SLURM node name goes".into(),
                })
            }
            Some(s) => s,
            None => defaults::START_SCRIPT.to_string(),
        },
        orphan_grace: duration(
            raw.orphan_grace,
            defaults::ORPHAN_GRACE,
            "provisioning.orphan_grace",
            file,
        )?,
    })
}

fn build_logging(table: Table, file: &Path) -> Result<LoggingSettings, ConfigError> {
    let raw: RawLogging = section(table, "logging.", file)?;
    Ok(LoggingSettings {
        syslog_facility: raw.syslog_facility.unwrap_or(defaults::SYSLOG_FACILITY),
        level: raw.level.unwrap_or(defaults::LOG_LEVEL),
        file: raw.file,
    })
}

#[cfg(test)]
const EXAMPLE: &str = include_str!("../etc/slurm-one.toml");

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/slurm-one/test.toml";
    const ONE_TEMPLATE: &str = "[templates.small]\ntemplate_id = 5\n";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new(FILE), &no_env)
    }

    fn parse_err(text: &str) -> ConfigError {
        match parse(text) {
            Ok(config) => panic!("expected an error for\n{text}\ngot {config:?}"),
            Err(e) => e,
        }
    }

    /// Variant name and key of an error, for table-driven checks.
    fn variant_and_key(e: &ConfigError) -> (&'static str, Option<&str>) {
        use ConfigError::*;
        match e {
            Read { .. } => ("Read", None),
            Syntax { .. } => ("Syntax", None),
            UnknownKey { key, .. } => ("UnknownKey", Some(key)),
            WrongType { key, .. } => ("WrongType", Some(key)),
            BadDuration { key, .. } => ("BadDuration", Some(key)),
            OutOfRange { key, .. } => ("OutOfRange", Some(key)),
            Invalid { key, .. } => ("Invalid", Some(key)),
            NoTemplates { .. } => ("NoTemplates", None),
            TemplateBothSources { key, .. } => ("TemplateBothSources", Some(key)),
            TemplateNoSource { key, .. } => ("TemplateNoSource", Some(key)),
            TemplateSetsSizing { key, .. } => ("TemplateSetsSizing", Some(key)),
            UndefinedTemplate { key, .. } => ("UndefinedTemplate", Some(key)),
            NoDefaultTemplate { .. } => ("NoDefaultTemplate", Some("templates.default")),
            TemplateNotAllowed { .. } => ("TemplateNotAllowed", None),
            CredentialsUnreadable { .. } => ("CredentialsUnreadable", None),
            CredentialsTooOpen { .. } => ("CredentialsTooOpen", None),
            CredentialsEmpty { .. } => ("CredentialsEmpty", None),
            CredentialsMalformed { .. } => ("CredentialsMalformed", None),
        }
    }

    fn write_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_single_template_is_enough_and_everything_else_defaults() {
        let c = parse(ONE_TEMPLATE).unwrap();
        assert_eq!(c.origin, Path::new(FILE));
        assert_eq!(
            c.opennebula,
            OpenNebulaSettings {
                endpoint: "http://localhost:2633/RPC2".into(),
                auth_file: "/etc/slurm-one/one_auth".into(),
                api_timeout: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(10),
            }
        );
        assert_eq!(
            c.cluster,
            ClusterSettings {
                name: "slurm".into(),
                database: "/var/lib/slurm-one/mapping.db".into(),
                slurm_conf: None,
            }
        );
        assert_eq!(c.templates.default, "small");
        assert!(c.templates.user_selectable.is_empty());
        assert_eq!(
            c.sizing,
            SizingPolicy {
                default_memory_mb: 256,
                min_memory_mb: 50,
                cpu_share_default: 1.0,
                cpu_share_min: 0.05,
                cpu_share_max: 1.0,
            }
        );
        assert_eq!(
            c.provisioning,
            ProvisioningSettings {
                boot_timeout: Duration::from_secs(300),
                register_timeout: Duration::from_secs(120),
                poll_interval: Duration::from_secs(2),
                concurrency: 4,
                wait_ready: true,
                max_prolog_attempts: 3,
                start_script: defaults::START_SCRIPT.to_string(),
                orphan_grace: Duration::from_secs(90),
            }
        );
        assert_eq!(
            c.logging,
            LoggingSettings {
                syslog_facility: SyslogFacility::Daemon,
                level: LogLevel::Info,
                file: None,
            }
        );
    }

    #[test]
    fn endpoint_and_auth_file_default_from_the_environment_unless_set_in_the_file() {
        let env = |name: &str| match name {
            "ONE_XMLRPC" => Some("https://one.example.org:2633/RPC2".to_string()),
            "ONE_AUTH" => Some("/root/.one/one_auth".to_string()),
            _ => None,
        };
        let c = Config::from_toml_str(ONE_TEMPLATE, Path::new(FILE), &env).unwrap();
        assert_eq!(c.opennebula.endpoint, "https://one.example.org:2633/RPC2");
        assert_eq!(c.opennebula.auth_file, Path::new("/root/.one/one_auth"));

        let text = format!(
            "[opennebula]\nendpoint = \"http://front:2633/RPC2\"\nauth_file = \"/etc/a\"\n{ONE_TEMPLATE}"
        );
        let c = Config::from_toml_str(&text, Path::new(FILE), &env).unwrap();
        assert_eq!(c.opennebula.endpoint, "http://front:2633/RPC2");
        assert_eq!(c.opennebula.auth_file, Path::new("/etc/a"));

        let empty = |_: &str| Some(String::new());
        let c = Config::from_toml_str(ONE_TEMPLATE, Path::new(FILE), &empty).unwrap();
        assert_eq!(c.opennebula.endpoint, "http://localhost:2633/RPC2");
        assert_eq!(c.opennebula.auth_file, Path::new("/etc/slurm-one/one_auth"));
    }

    #[test]
    fn a_bad_endpoint_from_the_environment_is_refused_naming_the_variable() {
        let env = |name: &str| (name == "ONE_XMLRPC").then(|| "localhost:2633".to_string());
        let e = Config::from_toml_str(ONE_TEMPLATE, Path::new(FILE), &env).unwrap_err();
        assert_eq!(variant_and_key(&e).0, "Invalid");
        assert!(e.to_string().contains("$ONE_XMLRPC"), "{e}");
    }

    #[test]
    fn explicit_values_are_typed() {
        let c = parse(
            r#"
            [opennebula]
            api_timeout = "1m30s"
            connect_timeout = "500ms"
            [cluster]
            name = "hpc-2"
            database = "/srv/map.db"
            [templates]
            default = "small"
            user_selectable = ["big"]
            [templates.small]
            body = 'NIC = [ NETWORK_ID = "0" ]'
            [templates.big]
            template_id = 7
            [sizing]
            cpu_share_default = 0.5
            cpu_share_max = 1
            [provisioning]
            concurrency = 8
            wait_ready = false
            max_prolog_attempts = 1
            [logging]
            syslog_facility = "local3"
            level = "debug"
            "#,
        )
        .unwrap();
        assert_eq!(c.opennebula.api_timeout, Duration::from_secs(90));
        assert_eq!(c.opennebula.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.cluster.name, "hpc-2");
        assert_eq!(c.cluster.database, Path::new("/srv/map.db"));
        assert_eq!(c.templates.by_name["big"].source, TemplateSource::Id(7));
        assert_eq!(c.sizing.cpu_share_default, 0.5);
        assert_eq!(c.sizing.cpu_share_max, 1.0);
        assert_eq!(c.provisioning.concurrency, 8);
        assert!(!c.provisioning.wait_ready);
        assert_eq!(c.provisioning.max_prolog_attempts, 1);
        assert_eq!(c.logging.syslog_facility, SyslogFacility::Local3);
        assert_eq!(c.logging.syslog_facility.code(), libc::LOG_LOCAL3);
        assert_eq!(c.logging.level, LogLevel::Debug);
        assert_eq!(c.logging.level.as_str(), "debug");
    }

    #[test]
    fn every_invalid_value_is_refused_naming_the_file_and_the_key() {
        let t = ONE_TEMPLATE;
        let cases: &[(&str, String, &str)] = &[
            ("endpoint without scheme", format!("[opennebula]\nendpoint = \"one:2633\"\n{t}"), "Invalid"),
            ("endpoint of ftp", format!("[opennebula]\nendpoint = \"ftp://one/RPC2\"\n{t}"), "Invalid"),
            ("endpoint without host", format!("[opennebula]\nendpoint = \"http:///RPC2\"\n{t}"), "Invalid"),
            ("endpoint with password", format!("[opennebula]\nendpoint = \"http://u:hunter2@one/RPC2\"\n{t}"), "Invalid"),
            ("relative auth file", format!("[opennebula]\nauth_file = \"one_auth\"\n{t}"), "Invalid"),
            ("zero api timeout", format!("[opennebula]\napi_timeout = \"0s\"\n{t}"), "OutOfRange"),
            ("bad connect timeout", format!("[opennebula]\nconnect_timeout = \"10\"\n{t}"), "BadDuration"),
            ("integer timeout", format!("[opennebula]\napi_timeout = 10\n{t}"), "WrongType"),
            ("cluster name with space", format!("[cluster]\nname = \"my cluster\"\n{t}"), "Invalid"),
            ("empty cluster name", format!("[cluster]\nname = \"\"\n{t}"), "Invalid"),
            ("long cluster name", format!("[cluster]\nname = \"{}\"\n{t}", "x".repeat(65)), "Invalid"),
            ("relative database", format!("[cluster]\ndatabase = \"map.db\"\n{t}"), "Invalid"),
            ("zero default memory", format!("[sizing]\ndefault_memory_mb = 0\nmin_memory_mb = 0\n{t}"), "OutOfRange"),
            ("min memory above default", format!("[sizing]\nmin_memory_mb = 300\n{t}"), "OutOfRange"),
            ("negative memory", format!("[sizing]\ndefault_memory_mb = -1\n{t}"), "WrongType"),
            ("cpu share min zero", format!("[sizing]\ncpu_share_min = 0.0\n{t}"), "OutOfRange"),
            ("cpu share min nan", format!("[sizing]\ncpu_share_min = nan\n{t}"), "OutOfRange"),
            ("cpu share max above one", format!("[sizing]\ncpu_share_max = 1.5\n{t}"), "OutOfRange"),
            ("cpu share max below min", format!("[sizing]\ncpu_share_min = 0.5\ncpu_share_max = 0.25\ncpu_share_default = 0.25\n{t}"), "OutOfRange"),
            ("cpu share default below min", format!("[sizing]\ncpu_share_default = 0.01\n{t}"), "OutOfRange"),
            ("cpu share default above max", format!("[sizing]\ncpu_share_max = 0.5\n{t}"), "OutOfRange"),
            ("cpu share as text", format!("[sizing]\ncpu_share_max = \"all\"\n{t}"), "WrongType"),
            ("zero boot timeout", format!("[provisioning]\nboot_timeout = \"0ms\"\n{t}"), "OutOfRange"),
            ("bad register timeout", format!("[provisioning]\nregister_timeout = \"2 minutes\"\n{t}"), "BadDuration"),
            ("bad poll interval", format!("[provisioning]\npoll_interval = \"1.5s\"\n{t}"), "BadDuration"),
            ("zero concurrency", format!("[provisioning]\nconcurrency = 0\n{t}"), "OutOfRange"),
            ("zero attempts", format!("[provisioning]\nmax_prolog_attempts = 0\n{t}"), "OutOfRange"),
            ("wait_ready as text", format!("[provisioning]\nwait_ready = \"yes\"\n{t}"), "WrongType"),
            ("unknown facility", format!("[logging]\nsyslog_facility = \"local8\"\n{t}"), "WrongType"),
            ("unknown level", format!("[logging]\nlevel = \"verbose\"\n{t}"), "WrongType"),
            ("section not a table", format!("sizing = 5\n{t}"), "WrongType"),
            ("template id negative", "[templates.small]\ntemplate_id = -1\n".to_string(), "WrongType"),
            ("empty body", "[templates.small]\nbody = \"  \"\n".to_string(), "Invalid"),
            ("template name with space", "[templates.\"a b\"]\ntemplate_id = 1\n".to_string(), "Invalid"),
            ("template named default", "[templates.default]\ntemplate_id = 1\n".to_string(), "Invalid"),
            ("selectable not a list", format!("[templates]\nuser_selectable = \"small\"\n{t}"), "WrongType"),
        ];
        let expected_keys = [
            "opennebula.endpoint",
            "opennebula.endpoint",
            "opennebula.endpoint",
            "opennebula.endpoint",
            "opennebula.auth_file",
            "opennebula.api_timeout",
            "opennebula.connect_timeout",
            "opennebula.api_timeout",
            "cluster.name",
            "cluster.name",
            "cluster.name",
            "cluster.database",
            "sizing.default_memory_mb",
            "sizing.min_memory_mb",
            "sizing.default_memory_mb",
            "sizing.cpu_share_min",
            "sizing.cpu_share_min",
            "sizing.cpu_share_max",
            "sizing.cpu_share_max",
            "sizing.cpu_share_default",
            "sizing.cpu_share_default",
            "sizing.cpu_share_max",
            "provisioning.boot_timeout",
            "provisioning.register_timeout",
            "provisioning.poll_interval",
            "provisioning.concurrency",
            "provisioning.max_prolog_attempts",
            "provisioning.wait_ready",
            "logging.syslog_facility",
            "logging.level",
            "sizing",
            "templates.small.template_id",
            "templates.small.body",
            "templates.a b",
            "templates.default",
            "templates.user_selectable",
        ];
        assert_eq!(cases.len(), expected_keys.len());
        for ((what, text, variant), key) in cases.iter().zip(expected_keys) {
            let e = parse_err(text);
            assert_eq!(variant_and_key(&e), (*variant, Some(key)), "{what}: {e}");
            let message = e.to_string();
            assert!(message.contains(FILE), "{what}: {message}");
            assert!(message.contains(key), "{what}: {message}");
        }
    }

    #[test]
    fn an_endpoint_with_a_password_is_refused_without_echoing_it() {
        let e = parse_err(&format!(
            "[opennebula]\nendpoint = \"http://oneadmin:hunter2@one:2633/RPC2\"\n{ONE_TEMPLATE}"
        ));
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("http://***@one:2633"), "{shown}");
    }

    #[test]
    fn cpu_share_default_out_of_bounds_says_the_bounds() {
        assert_eq!(
            parse_err(&format!(
                "[sizing]\ncpu_share_default = 0.01\n{ONE_TEMPLATE}"
            )),
            ConfigError::OutOfRange {
                file: FILE.into(),
                key: "sizing.cpu_share_default".into(),
                value: "0.01".into(),
                allowed: "from sizing.cpu_share_min (0.05) to sizing.cpu_share_max (1)".into(),
            }
        );
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_dotted_key_and_the_file() {
        let cases = [
            ("colour = \"red\"\n", "colour"),
            ("[opennebula]\nendpont = \"x\"\n", "opennebula.endpont"),
            ("[cluster]\nnam = \"x\"\n", "cluster.nam"),
            ("[templates]\ndefualt = \"small\"\n", "templates.defualt"),
            (
                "[templates.big]\ntemplate_id = 1\nmemory = 2\n",
                "templates.big.memory",
            ),
            ("[sizing]\ncpu_shares = 0.5\n", "sizing.cpu_shares"),
            ("[provisioning]\nretries = 2\n", "provisioning.retries"),
            ("[logging]\nfacility = \"user\"\n", "logging.facility"),
        ];
        for (text, key) in cases {
            let e = parse_err(&format!("{text}{ONE_TEMPLATE}"));
            assert_eq!(variant_and_key(&e), ("UnknownKey", Some(key)), "{e}");
            let message = e.to_string();
            assert!(message.contains(FILE) && message.contains(key), "{message}");
        }
        let ConfigError::UnknownKey { expected, .. } =
            parse_err(&format!("[sizing]\ncpu_shares = 1\n{ONE_TEMPLATE}"))
        else {
            panic!("not UnknownKey");
        };
        assert!(expected.contains("`cpu_share_default`"), "{expected}");
        let message = parse_err(&format!("[templates]\nx = 1\n{ONE_TEMPLATE}")).to_string();
        assert!(message.contains("[templates.NAME]"), "{message}");
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let e = parse_err("[cluster]\nname = \"a\"\nname = \"b\"\n");
        let ConfigError::Syntax {
            file, line, column, ..
        } = &e
        else {
            panic!("not Syntax: {e}");
        };
        assert_eq!((file.as_path(), *line, *column), (Path::new(FILE), 3, 1));
        assert!(e.to_string().starts_with(&format!("{FILE}:3:1: ")), "{e}");

        let ConfigError::Syntax { line, column, .. } = parse_err("[sizing]\nx = = 1\n") else {
            panic!("not Syntax");
        };
        assert_eq!((line, column), (2, 5));
    }

    #[test]
    fn durations_parse_from_human_text() {
        let good = [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("1m30s", Duration::from_secs(90)),
            (" 1h 1m ", Duration::from_secs(3660)),
            ("10 s", Duration::from_secs(10)),
            ("1s500ms", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in good {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        let bad = [
            "",
            "10",
            "s",
            "1.5s",
            "10sec",
            "-1s",
            "1d",
            "99999999999999999999s",
            "999999999999999999h",
        ];
        for text in bad {
            assert!(parse_duration(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn a_bad_duration_names_key_value_and_examples() {
        let e = parse_err(&format!(
            "[provisioning]\nboot_timeout = \"5\"\n{ONE_TEMPLATE}"
        ));
        assert_eq!(
            e,
            ConfigError::BadDuration {
                file: FILE.into(),
                key: "provisioning.boot_timeout".into(),
                value: "5".into(),
                reason: "5 has no unit (ms, s, m or h)".into(),
            }
        );
        assert!(e.to_string().contains("\"10s\""), "{e}");
    }

    #[test]
    fn a_template_needs_exactly_one_of_id_and_body() {
        assert_eq!(
            parse_err("[templates.small]\ntemplate_id = 5\nbody = 'NIC = []'\n"),
            ConfigError::TemplateBothSources {
                file: FILE.into(),
                key: "templates.small".into()
            }
        );
        assert_eq!(
            parse_err("[templates.small]\n"),
            ConfigError::TemplateNoSource {
                file: FILE.into(),
                key: "templates.small".into()
            }
        );
    }

    #[test]
    fn a_body_that_sets_sizing_attributes_is_refused() {
        let cases = [
            ("MEMORY = 512\n", Some("MEMORY")),
            ("NIC = [ NETWORK_ID = \"0\" ]\n  cpu=\"0.5\"\n", Some("CPU")),
            ("VCPU = 2", Some("VCPU")),
            ("NIC = [ NETWORK_ID = \"0\", MEMORY = \"x\" ]\n", None),
            ("# MEMORY = 512\nCONTEXT = [ NETWORK = \"YES\" ]\n", None),
            ("DESCRIPTION = \"CPU = 1\"\n", None),
            ("MEMORY_COST = 1\n", None),
        ];
        for (body, attribute) in cases {
            let text = format!("[templates.small]\nbody = '''{body}'''\n");
            match (parse(&text), attribute) {
                (Ok(_), None) => {}
                (Err(e), Some(a)) => assert_eq!(
                    e,
                    ConfigError::TemplateSetsSizing {
                        file: FILE.into(),
                        key: "templates.small.body".into(),
                        attribute: a.into(),
                    }
                ),
                (got, _) => panic!("{body:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn at_least_one_template_is_required() {
        for text in ["", "[templates]\nuser_selectable = []\n"] {
            assert_eq!(
                parse_err(text),
                ConfigError::NoTemplates { file: FILE.into() }
            );
        }
    }

    #[test]
    fn the_default_template_must_be_defined() {
        let e = parse_err(&format!("[templates]\ndefault = \"huge\"\n{ONE_TEMPLATE}"));
        assert_eq!(
            e,
            ConfigError::UndefinedTemplate {
                file: FILE.into(),
                key: "templates.default".into(),
                name: "huge".into(),
                defined: vec!["small".into()],
            }
        );
        assert!(e.to_string().contains("templates.default"), "{e}");
    }

    #[test]
    fn every_user_selectable_template_must_be_defined() {
        let e = parse_err(&format!(
            "[templates]\nuser_selectable = [\"small\", \"gpu\"]\n{ONE_TEMPLATE}"
        ));
        assert_eq!(
            variant_and_key(&e),
            ("UndefinedTemplate", Some("templates.user_selectable"))
        );
        assert!(e.to_string().contains("\"gpu\""), "{e}");
    }

    #[test]
    fn several_templates_need_a_named_default() {
        let e = parse_err("[templates.a]\ntemplate_id = 1\n[templates.b]\ntemplate_id = 2\n");
        assert_eq!(
            e,
            ConfigError::NoDefaultTemplate {
                file: FILE.into(),
                defined: vec!["a".into(), "b".into()],
            }
        );
        assert!(e.to_string().contains("templates.default"), "{e}");
    }

    #[test]
    fn users_get_the_default_or_an_allowed_template_and_nothing_else() {
        let c = parse(
            "[templates]\ndefault = \"a\"\nuser_selectable = [\"b\"]\n\
             [templates.a]\ntemplate_id = 1\n[templates.b]\ntemplate_id = 2\n\
             [templates.secret]\ntemplate_id = 3\n",
        )
        .unwrap();
        assert_eq!(c.template(None).unwrap().name, "a");
        assert_eq!(c.template(Some("a")).unwrap().source, TemplateSource::Id(1));
        assert_eq!(c.template(Some("b")).unwrap().source, TemplateSource::Id(2));
        for name in ["secret", "nope"] {
            let e = c.template(Some(name)).unwrap_err();
            assert_eq!(
                e,
                ConfigError::TemplateNotAllowed {
                    file: FILE.into(),
                    name: name.into(),
                    allowed: vec!["a".into(), "b".into()],
                }
            );
            let message = e.to_string();
            assert!(
                message.contains("a, b") && message.contains(FILE),
                "{message}"
            );
        }
    }

    #[test]
    fn default_path_comes_from_the_environment_when_set() {
        assert_eq!(
            path_or_default(Some("/tmp/x.toml".into())),
            Path::new("/tmp/x.toml")
        );
        for unset in [None, Some("".into())] {
            assert_eq!(path_or_default(unset), Path::new(DEFAULT_CONFIG_PATH));
        }
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "slurm-one.toml", EXAMPLE, 0o644);
        assert_eq!(Config::load(&path).unwrap().origin, path);

        let missing = dir.path().join("missing.toml");
        let e = Config::load(&missing).unwrap_err();
        assert_eq!(variant_and_key(&e).0, "Read");
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn the_example_file_loads_and_states_the_defaults() {
        let c = Config::from_toml_str(EXAMPLE, Path::new("etc/slurm-one.toml"), &no_env).unwrap();
        let defaults = parse(ONE_TEMPLATE).unwrap();
        assert_eq!(c.opennebula, defaults.opennebula);
        assert_eq!(c.cluster, defaults.cluster);
        assert_eq!(c.sizing, defaults.sizing);
        assert_eq!(c.provisioning, defaults.provisioning);
        assert_eq!(c.logging, defaults.logging);
        let default = c.template(None).unwrap();
        let TemplateSource::Body(body) = &default.source else {
            panic!("the example's default template should be an inline body");
        };
        assert!(body.contains("NETWORK_ID"), "{body}");
        for name in &c.templates.user_selectable {
            assert!(c.template(Some(name)).is_ok());
        }
    }

    #[test]
    fn credentials_readable_by_group_or_others_are_refused_with_the_chmod_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let path = write_file(dir.path(), "one_auth", "oneadmin:hunter2\n", mode);
            let e = read_credentials(&path).unwrap_err();
            assert_eq!(
                e,
                ConfigError::CredentialsTooOpen {
                    file: path.clone(),
                    mode
                }
            );
            let message = e.to_string();
            assert!(
                message.contains(&format!("chmod 600 {}", path.display())),
                "{message}"
            );
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn credentials_with_mode_0600_are_read_from_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        for (content, session) in [
            ("oneadmin:hunter2\n", "oneadmin:hunter2"),
            ("oneadmin:pa:ss\r\nignored\n", "oneadmin:pa:ss"),
            ("  slurm:x  ", "slurm:x"),
        ] {
            let path = write_file(dir.path(), "one_auth", content, 0o600);
            let secret = read_credentials(&path).unwrap();
            assert_eq!(secret.expose(), session);
            assert_eq!(secret.user(), session.split(':').next().unwrap());
        }
        let path = write_file(dir.path(), "one_auth", "a:b", 0o400);
        assert!(read_credentials(&path).is_ok());
    }

    #[test]
    fn missing_empty_or_malformed_credentials_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert_eq!(
            variant_and_key(&read_credentials(&missing).unwrap_err()).0,
            "CredentialsUnreadable"
        );
        assert_eq!(
            variant_and_key(&read_credentials(dir.path()).unwrap_err()).0,
            "CredentialsUnreadable"
        );
        let cases = [
            ("", "CredentialsEmpty"),
            ("\nuser:pass\n", "CredentialsEmpty"),
            ("   \n", "CredentialsEmpty"),
            ("hunter2\n", "CredentialsMalformed"),
            (":hunter2\n", "CredentialsMalformed"),
            ("oneadmin:\n", "CredentialsMalformed"),
        ];
        for (content, variant) in cases {
            let path = write_file(dir.path(), "one_auth", content, 0o600);
            let e = read_credentials(&path).unwrap_err();
            assert_eq!(variant_and_key(&e).0, variant, "{content:?}");
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn a_secret_shows_only_its_user() {
        let secret = Secret::new("oneadmin", "hunter2");
        assert_eq!(format!("{secret:?}"), "oneadmin:***");
        assert_eq!(format!("{secret}"), "oneadmin:***");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(oneadmin:***)");
        assert_eq!(secret.expose(), "oneadmin:hunter2");
        assert_eq!(secret.user(), "oneadmin");
    }
}
