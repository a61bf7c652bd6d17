//! `slurm_one`, the SPANK plugin of slurm-one (`libslurm_one_spank.so`).
//!
//! Owns two checks, both thin shells over pure functions of the `slurm_one` library:
//! - in `sbatch`/`salloc`/`srun` (allocator and local contexts), the users' `--one-template`
//!   and `--one-cpu-share` options: checked against the site configuration before the job is
//!   submitted, then handed to PrologSlurmctld through the job-control environment
//!   (`SPANK_SLURM_ONE_TEMPLATE`, `SPANK_SLURM_ONE_CPU_SHARE`);
//! - in the job prolog (job_script context, root, inside the VM), the VM's identity: a VM made
//!   for another job refuses to run this one, so SLURM drains it and requeues the job.
//!
//! Does not own: the option grammar and the identity check (`slurm_one::options`), the
//! configuration (`slurm_one::config`), provisioning (PrologSlurmctld; slurmctld never loads
//! SPANK), a tracing subscriber (it logs through SPANK's own functions).
//!
//! `plugstack.conf`:
//! `required libslurm_one_spank.so config=/etc/slurm-one/slurm-one.toml` (the packages put the
//! plugin in SLURM's PluginDir, where a relative name is looked up),
//! with the arguments `config=PATH` (default `$SLURM_ONE_CONFIG`, else
//! `/etc/slurm-one/slurm-one.toml`) and `require_vm=yes|no` (default `no`: a node without a
//! one-context file is not a slurm-one VM and runs jobs unchecked).
//!
//! This library lives inside `sbatch` and `slurmstepd`: it never panics on purpose (no
//! `unwrap`/`expect`; slurm-spank turns a stray panic into a failed callback), starts no thread,
//! and a plain `sbatch` without `--one-*` options costs it no file access.
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::error::Error;
use std::io;
use std::path::PathBuf;

use slurm_one::config::{Config, ConfigError};
use slurm_one::options::{
    self, IdentityError, OptionError, CONTEXT_FILE, CPU_SHARE_VAR, TEMPLATE_VAR,
};
use slurm_spank::{
    spank_log_debug, spank_log_error, spank_log_user, Context, Plugin, SpankHandle, SpankOption,
};

mod version {
    include!(concat!(env!("OUT_DIR"), "/slurm_version.rs"));
}

/// The C symbols SLURM looks up (`plugin_name`, `plugin_version`, `slurm_spank_*`); exported
/// from a private module, so they are not Rust API.
mod symbols {
    use super::{version, Plugin, SlurmOne};
    slurm_spank::SPANK_PLUGIN!(b"slurm_one", version::SLURM_VERSION_NUMBER, SlurmOne);
}

/// `--one-template=NAME`.
const TEMPLATE_OPT: &str = "one-template";
/// `--one-cpu-share=F`.
const CPU_SHARE_OPT: &str = "one-cpu-share";

/// Why a callback failed. Each message says what to fix; callers see the whole chain.
#[derive(Debug, thiserror::Error)]
enum SpankPluginError {
    /// The SPANK context could not be queried.
    #[error("cannot get the SPANK context")]
    Context(#[source] slurm_spank::SpankError),
    /// plugstack.conf arguments that are not UTF-8.
    #[error("cannot read the plugstack.conf arguments")]
    ArgsUnreadable(#[source] slurm_spank::SpankError),
    /// A plugstack.conf argument is not `key=value`.
    #[error("plugstack.conf argument `{0}` is not key=value (known keys: config, require_vm)")]
    ArgNotKeyValue(String),
    /// A plugstack.conf argument with a key we do not know.
    #[error("unknown plugstack.conf argument `{0}` (known keys: config, require_vm)")]
    UnknownArg(String),
    /// `require_vm=` is neither yes nor no.
    #[error("plugstack.conf argument require_vm={0}: must be yes or no")]
    BadRequireVm(String),
    /// `config=` is empty.
    #[error("plugstack.conf argument config= needs a path")]
    EmptyConfig,
    /// An option could not be registered with SLURM.
    #[error("cannot register --{option}")]
    Register {
        /// The option's name.
        option: &'static str,
        /// Why.
        #[source]
        source: slurm_spank::SpankError,
    },
    /// The configuration needed to check the options cannot be loaded.
    #[error("cannot check the --one-* options")]
    LoadConfig(#[source] ConfigError),
    /// A refused option value (the message lists what is allowed).
    #[error(transparent)]
    Option(#[from] OptionError),
    /// A checked value could not be put into the job-control environment.
    #[error("cannot pass {name}={value} to the job")]
    SetEnv {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        #[source]
        source: slurm_spank::SpankError,
    },
    /// The job prolog got no job id.
    #[error(
        "job prolog: no job id (SPANK S_JOB_ID unavailable and SLURM_JOB_ID unset or not a number)"
    )]
    NoJobId,
    /// `require_vm=yes` and this node has no one-context file.
    #[error("{path} does not exist: this node is not a slurm-one VM (plugstack.conf says require_vm=yes)")]
    NotAVm {
        /// The missing context file.
        path: &'static str,
    },
    /// The VM was made for another job, or its context cannot be read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The plugstack.conf arguments.
#[derive(Debug, Default, Clone, PartialEq)]
struct PluginArgs {
    /// `config=PATH`; `None` means `$SLURM_ONE_CONFIG`, else the default path.
    config: Option<PathBuf>,
    /// `require_vm=yes`: fail the job prolog on nodes without a one-context file.
    require_vm: bool,
}

impl PluginArgs {
    /// Parses `key=value` arguments; an unknown key is an error naming it.
    fn parse(argv: &[&str]) -> Result<PluginArgs, SpankPluginError> {
        let mut args = PluginArgs::default();
        for arg in argv {
            let Some((key, value)) = arg.split_once('=') else {
                return Err(SpankPluginError::ArgNotKeyValue(arg.to_string()));
            };
            match key {
                "config" if value.is_empty() => return Err(SpankPluginError::EmptyConfig),
                "config" => args.config = Some(PathBuf::from(value)),
                "require_vm" => {
                    args.require_vm = match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(SpankPluginError::BadRequireVm(value.to_string())),
                    }
                }
                _ => return Err(SpankPluginError::UnknownArg(key.to_string())),
            }
        }
        Ok(args)
    }

    /// Reads this callback's arguments.
    fn from_spank(spank: &SpankHandle) -> Result<PluginArgs, SpankPluginError> {
        let argv = spank
            .plugin_argv()
            .map_err(SpankPluginError::ArgsUnreadable)?;
        PluginArgs::parse(&argv)
    }

    /// The configuration file to load.
    fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(Config::default_path)
    }
}

/// Whether this process was asked for its help text: only then does `init` read the
/// configuration, to list the templates in the usage of `--one-template`.
fn help_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .any(|a| a == "--help" || a == "-h")
}

/// Usage of `--one-template`; lists the allowed names when the configuration is known.
fn template_usage(cfg: Option<&Config>) -> String {
    match cfg {
        Some(cfg) => format!(
            "run this job's VMs from template NAME, one of: {} (default {})",
            options::allowed_templates(cfg).join(", "),
            cfg.templates.default
        ),
        None => {
            "run this job's VMs from the VM template NAME (default: the site's default)".to_string()
        }
    }
}

/// Usage of `--one-cpu-share`; states the bounds when the configuration is known.
fn cpu_share_usage(cfg: Option<&Config>) -> String {
    let what = "give each VM CPU the fraction F of a physical CPU";
    match cfg {
        Some(cfg) => {
            let s = &cfg.sizing;
            format!(
                "{what}, {} <= F <= {} (default {})",
                s.cpu_share_min, s.cpu_share_max, s.cpu_share_default
            )
        }
        None => format!("{what}, 0 < F <= 1 (default: the site's default)"),
    }
}

/// The checked option values to hand to the job.
#[derive(Debug, Default, PartialEq)]
struct Checked {
    template: Option<String>,
    cpu_share: Option<String>,
}

/// Checks both options against `cfg` before either is passed on.
fn check_options(
    cfg: &Config,
    template: Option<&str>,
    cpu_share: Option<&str>,
) -> Result<Checked, OptionError> {
    Ok(Checked {
        template: template
            .map(|t| options::parse_template(cfg, t))
            .transpose()?,
        // The canonical number, not the user's text: PrologSlurmctld reads it as root.
        cpu_share: cpu_share
            .map(|s| options::parse_cpu_share(cfg, s).map(|f| f.to_string()))
            .transpose()?,
    })
}

/// The job id of the prolog: SPANK's `S_JOB_ID`, else `$SLURM_JOB_ID`.
fn prolog_job_id(spank: &SpankHandle) -> Result<u32, SpankPluginError> {
    if let Ok(id) = spank.job_id() {
        return Ok(id);
    }
    std::env::var("SLURM_JOB_ID")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or(SpankPluginError::NoJobId)
}

/// The plugin's state: the plugstack.conf arguments parsed in `init`.
#[derive(Default)]
struct SlurmOne {
    args: Option<PluginArgs>,
}

impl SlurmOne {
    /// The arguments parsed in `init`, or parsed now.
    fn args(&mut self, spank: &SpankHandle) -> Result<PluginArgs, SpankPluginError> {
        match &self.args {
            Some(args) => Ok(args.clone()),
            None => {
                let args = PluginArgs::from_spank(spank)?;
                self.args = Some(args.clone());
                Ok(args)
            }
        }
    }
}

// SAFETY: the plugin starts no thread and holds only plain data, so running its callbacks in
// the processes slurmstepd forks is sound.
unsafe impl Plugin for SlurmOne {
    /// Nothing: slurm-spank's default builds a tracing subscriber (an `EnvFilter` and a
    /// registry) in every process that loads the plugin, which made each `sbatch` about
    /// 0.3 ms slower; this plugin logs through SPANK's own functions instead.
    fn setup(&mut self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        Ok(())
    }

    fn init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let context = spank.context().map_err(SpankPluginError::Context)?;
        if !matches!(
            context,
            Context::Allocator | Context::Local | Context::Remote
        ) {
            return Ok(());
        }
        let args = self.args(spank)?;
        // Reading the configuration here would cost every sbatch a file read; only --help
        // shows the usage texts that list what it allows.
        let cfg = if context != Context::Remote && help_requested() {
            Config::load(&args.config_path()).ok()
        } else {
            None
        };
        for (option, usage, arg) in [
            (TEMPLATE_OPT, template_usage(cfg.as_ref()), "NAME"),
            (CPU_SHARE_OPT, cpu_share_usage(cfg.as_ref()), "F"),
        ] {
            spank
                .register_option(SpankOption::new(option).takes_value(arg).usage(&usage))
                .map_err(|source| SpankPluginError::Register { option, source })?;
        }
        Ok(())
    }

    fn init_post_opt(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let context = spank.context().map_err(SpankPluginError::Context)?;
        if !matches!(context, Context::Allocator | Context::Local) {
            return Ok(());
        }
        let template = spank
            .get_option_value_lossy(TEMPLATE_OPT)
            .map(|v| v.into_owned());
        let cpu_share = spank
            .get_option_value_lossy(CPU_SHARE_OPT)
            .map(|v| v.into_owned());
        if template.is_none() && cpu_share.is_none() {
            return Ok(());
        }
        // An srun inside a job inherits the job's options through SLURM_SPANK_* variables;
        // it makes a step, not a job, so there is nothing to check or pass on (and the VM
        // need not have the configuration file).
        if context == Context::Local && std::env::var_os("SLURM_JOB_ID").is_some() {
            return Ok(());
        }
        let args = self.args(spank)?;
        let cfg = Config::load(&args.config_path()).map_err(SpankPluginError::LoadConfig)?;
        let checked = check_options(&cfg, template.as_deref(), cpu_share.as_deref())
            .map_err(SpankPluginError::from)?;
        for (name, value) in [
            (TEMPLATE_VAR, checked.template),
            (CPU_SHARE_VAR, checked.cpu_share),
        ] {
            if let Some(value) = value {
                spank
                    .job_control_setenv(name, &value, true)
                    .map_err(|source| SpankPluginError::SetEnv {
                        name,
                        value,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    fn job_prolog(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        if spank.context().map_err(SpankPluginError::Context)? != Context::JobScript {
            return Ok(());
        }
        let args = self.args(spank)?;
        let context_sh = match std::fs::read_to_string(CONTEXT_FILE) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if args.require_vm {
                    return Err(SpankPluginError::NotAVm { path: CONTEXT_FILE }.into());
                }
                spank_log_debug!("slurm-one: {CONTEXT_FILE} does not exist: not a slurm-one VM, nothing to check");
                return Ok(());
            }
            Err(e) => {
                return Err(SpankPluginError::from(IdentityError::Unreadable {
                    path: CONTEXT_FILE.to_string(),
                    reason: e.to_string(),
                })
                .into())
            }
        };
        let job = prolog_job_id(spank)?;
        options::check_vm_identity(CONTEXT_FILE, &context_sh, job)
            .map_err(SpankPluginError::from)?;
        spank_log_debug!("slurm-one: {CONTEXT_FILE}: this VM was made for job {job}");
        Ok(())
    }

    /// One line with the whole chain: to the user's terminal in sbatch/salloc/srun, to
    /// SLURM's log elsewhere.
    fn report_error(&self, spank: &mut SpankHandle, error: &dyn Error) {
        let mut line = format!("slurm-one: {error}");
        let mut cause = error.source();
        while let Some(e) = cause {
            line.push_str(": ");
            line.push_str(&e.to_string());
            cause = e.source();
        }
        match spank.context() {
            Ok(Context::Allocator | Context::Local) => spank_log_user!("{line}"),
            _ => spank_log_error!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// build.rs links GCC's static unwinder in place of libgcc_s (this test binary too):
    /// a panic must still unwind to slurm-spank's catch_unwind.
    #[test]
    fn panics_unwind_with_the_static_unwinder() {
        let caught = std::panic::catch_unwind(|| panic!("unwinds"));
        assert!(caught.is_err());
        let dropped = std::rc::Rc::new(());
        let held = std::rc::Rc::clone(&dropped);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = held;
            panic!("drops what it held");
        }));
        assert!(caught.is_err());
        assert_eq!(
            std::rc::Rc::strong_count(&dropped),
            1,
            "unwinding ran the drop"
        );
    }

    #[test]
    fn plugstack_args_are_key_value_with_known_keys() {
        assert_eq!(PluginArgs::parse(&[]).unwrap(), PluginArgs::default());
        assert_eq!(
            PluginArgs::parse(&["config=/etc/x.toml", "require_vm=yes"]).unwrap(),
            PluginArgs {
                config: Some("/etc/x.toml".into()),
                require_vm: true
            }
        );
        assert!(!PluginArgs::parse(&["require_vm=no"]).unwrap().require_vm);
        let cases = [
            ("bogus=1", "unknown plugstack.conf argument `bogus`"),
            ("config", "`config` is not key=value"),
            ("config=", "config= needs a path"),
            ("require_vm=maybe", "require_vm=maybe: must be yes or no"),
        ];
        for (arg, message) in cases {
            let e = PluginArgs::parse(&[arg]).unwrap_err().to_string();
            assert!(e.contains(message), "{arg}: {e}");
        }
    }
}
