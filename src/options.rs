//! The users' `--one-*` options: their grammar and their checks against the admin's
//! config. Pure functions, shared by the SPANK plugin (at `sbatch` time) and the
//! PrologSlurmctld hook (which re-validates: the values are user input reaching root).

use crate::config::Config;

pub use one_proto::CONTEXT_FILE;

/// Name of the job-control variable carrying `--one-template` (seen as `SPANK_<name>` by
/// PrologSlurmctld).
pub const TEMPLATE_VAR: &str = "SLURM_ONE_TEMPLATE";
/// Name of the job-control variable carrying `--one-cpu-share`.
pub const CPU_SHARE_VAR: &str = "SLURM_ONE_CPU_SHARE";

/// A refused option value; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionError {
    /// `--one-template` names no template the user may pick.
    #[error("--one-template={given}: unknown template; allowed: {allowed}")]
    Template {
        /// What the user gave (sanitised for display).
        given: String,
        /// The names allowed.
        allowed: String,
    },
    /// `--one-cpu-share` is not a number in range.
    #[error("--one-cpu-share={given}: must be a number with {min} <= F <= {max}")]
    CpuShare {
        /// What the user gave (sanitised for display).
        given: String,
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
}

/// Shows user text safely in one line of a message.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// The template names a user may choose: the default and the `user_selectable` ones.
pub fn allowed_templates(cfg: &Config) -> Vec<String> {
    let mut names = vec![cfg.templates.default.clone()];
    for n in &cfg.templates.user_selectable {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Checks `--one-template=NAME`; returns the name.
pub fn parse_template(cfg: &Config, value: &str) -> Result<String, OptionError> {
    let allowed = allowed_templates(cfg);
    if allowed.iter().any(|a| a == value) {
        Ok(value.to_string())
    } else {
        Err(OptionError::Template {
            given: shown(value),
            allowed: allowed.join(", "),
        })
    }
}

/// Checks `--one-cpu-share=F` against the sizing bounds (0 < min ≤ F ≤ max ≤ 1).
pub fn parse_cpu_share(cfg: &Config, value: &str) -> Result<f64, OptionError> {
    let (min, max) = (cfg.sizing.cpu_share_min, cfg.sizing.cpu_share_max);
    let err = || OptionError::CpuShare {
        given: shown(value),
        min,
        max,
    };
    let f: f64 = value.trim().parse().map_err(|_| err())?;
    if f.is_finite() && f > 0.0 && f >= min && f <= max {
        Ok(f)
    } else {
        Err(err())
    }
}

/// Why a VM refuses to run a job: it was made for another one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    /// The context file could not be read.
    #[error("cannot read the VM's context {path}: {reason}")]
    Unreadable {
        /// Path of context.sh.
        path: String,
        /// Why.
        reason: String,
    },
    /// The context has no job id.
    #[error("the VM's context {path} has no SLURM_JOB_ID: this VM was not made by slurm-one")]
    NoJob {
        /// Path of context.sh.
        path: String,
    },
    /// The VM was made for another job.
    #[error("this VM was made for job {vm_job}, not job {job}: refusing to run it here")]
    OtherJob {
        /// Job the VM belongs to.
        vm_job: String,
        /// Job SLURM wants to run.
        job: u32,
    },
}

/// Reads one `KEY='value'` line of one-context's `context.sh` (`'` written as `'\''`).
pub fn context_value(context_sh: &str, key: &str) -> Option<String> {
    context_sh.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(key)?.strip_prefix('=')?;
        let inner = rest.strip_prefix('\'')?.strip_suffix('\'')?;
        Some(inner.replace("'\\''", "'"))
    })
}

/// Checks that the VM whose context is `context_sh` was made for `job_id`.
pub fn check_vm_identity(path: &str, context_sh: &str, job_id: u32) -> Result<(), IdentityError> {
    match context_value(context_sh, "SLURM_JOB_ID") {
        None => Err(IdentityError::NoJob {
            path: path.to_string(),
        }),
        Some(v) if v.trim() == job_id.to_string() => Ok(()),
        Some(v) => Err(IdentityError::OtherJob {
            vm_job: shown(&v),
            job: job_id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let text = r#"
[templates]
default = "small"
user_selectable = ["big"]
[templates.small]
body = "NIC = [ NETWORK_ID = 0 ]"
[templates.big]
body = "NIC = [ NETWORK_ID = 0 ]"
[templates.secret]
template_id = 9
[sizing]
cpu_share_min = 0.1
cpu_share_max = 1.0
"#;
        Config::from_toml_str(text, std::path::Path::new("/etc/t.toml"), &|_| None).unwrap()
    }

    #[test]
    fn accepts_default_and_selectable_templates_only() {
        let c = cfg();
        assert_eq!(parse_template(&c, "small").unwrap(), "small");
        assert_eq!(parse_template(&c, "big").unwrap(), "big");
        let err = parse_template(&c, "secret").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--one-template=secret: unknown template; allowed: small, big"
        );
        let err = parse_template(&c, "x\n\"]").unwrap_err();
        assert!(
            err.to_string().starts_with("--one-template=x?\"]:"),
            "{err}"
        );
    }

    #[test]
    fn rejects_cpu_share_out_of_bounds_or_not_a_number() {
        let c = cfg();
        assert_eq!(parse_cpu_share(&c, "0.25").unwrap(), 0.25);
        assert_eq!(parse_cpu_share(&c, "1").unwrap(), 1.0);
        for bad in [
            "0",
            "-0.5",
            "1.01",
            "0.05",
            "NaN",
            "inf",
            "abc",
            "",
            "0.5; rm -rf /",
        ] {
            let err = parse_cpu_share(&c, bad).unwrap_err();
            assert!(err.to_string().contains("0.1 <= F <= 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn reads_context_values_with_quotes() {
        let ctx =
            "# Context variables generated by OpenNebula\nSLURM_JOB_ID='42'\nNAME='it'\\''s'\n";
        assert_eq!(context_value(ctx, "SLURM_JOB_ID").as_deref(), Some("42"));
        assert_eq!(context_value(ctx, "NAME").as_deref(), Some("it's"));
        assert_eq!(context_value(ctx, "MISSING"), None);
    }

    #[test]
    fn vm_identity_must_match_the_job() {
        let ctx = "SLURM_JOB_ID='42'\n";
        assert!(check_vm_identity("/c", ctx, 42).is_ok());
        assert_eq!(
            check_vm_identity("/c", ctx, 43).unwrap_err(),
            IdentityError::OtherJob {
                vm_job: "42".into(),
                job: 43
            }
        );
        assert!(matches!(
            check_vm_identity("/c", "X='1'\n", 42),
            Err(IdentityError::NoJob { .. })
        ));
    }
}
