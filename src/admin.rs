//! What the admin CLI shows and checks: the mapping as a table joined with OpenNebula's
//! view of each VM, and the `check` list (config, credentials, reachability, templates,
//! table). The CLI binary only parses arguments and prints these.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{read_credentials, Config, TemplateSource};
use crate::mapping::{MappingDb, MappingError, Row};
use crate::one::client::{Client, ClientSettings, VmInfo};

/// A client for the configured endpoint with the configured credentials.
pub fn client(cfg: &Config, trace_api: bool) -> Result<Client, crate::config::ConfigError> {
    let session = read_credentials(&cfg.opennebula.auth_file)?;
    Ok(Client::new(
        ClientSettings {
            endpoint: cfg.opennebula.endpoint.clone(),
            connect_timeout: cfg.opennebula.connect_timeout,
            api_timeout: cfg.opennebula.api_timeout,
            trace_api,
        },
        session,
    ))
}

/// Busy timeout of every connection to the table.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the configured mapping table (hooks and every command but reconcile). A corrupt
/// file fails with [`MappingError::NotADatabase`], naming it; it is left where it is.
pub fn open_db(cfg: &Config) -> Result<MappingDb, MappingError> {
    MappingDb::open(&cfg.cluster.database, BUSY_TIMEOUT)
}

/// Opens the table for one reconcile pass, checking the whole file first. A file SQLite
/// finds corrupt or not a database is moved aside to `<db>.corrupt-<unix time>` (logged at
/// error level with both paths) and an empty table started, which the pass refills from
/// the VMs' tags ([`MappingDb::open_or_set_aside`]); with `dry_run` nothing is moved and
/// the error is returned. Open it anew for every pass: a connection kept across passes
/// would go on reading and writing a table that was deleted or replaced meanwhile.
pub fn open_db_for_reconcile(cfg: &Config, dry_run: bool) -> Result<MappingDb, MappingError> {
    if dry_run {
        let db = open_db(cfg)?;
        db.check_integrity()?;
        return Ok(db);
    }
    MappingDb::open_or_set_aside(&cfg.cluster.database, BUSY_TIMEOUT).map(|(db, _)| db)
}

fn age(now: i64, then: i64) -> String {
    let s = (now - then).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// The mapping as a table, one line per node, with OpenNebula's state of each VM when
/// `vms` is given (else `?`).
pub fn status_table(rows: &[Row], vms: Option<&BTreeMap<u32, VmInfo>>, now: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<12} {:>6} {:<13} {:<14} {:<15} {:<14} {:>5}  DETAIL",
        "JOB", "NODE", "VM", "ROW", "ONE_STATE", "IP", "HOST", "AGE"
    );
    for r in rows {
        let vm = r.vm_id.and_then(|id| vms.and_then(|m| m.get(&id)));
        let one_state = match (r.vm_id, vms, vm) {
            (None, _, _) => "-".to_string(),
            (Some(_), None, _) => "?".to_string(),
            (Some(_), Some(_), None) => "GONE".to_string(),
            (Some(_), Some(_), Some(v)) => v.state_name(),
        };
        let _ = writeln!(
            out,
            "{:<8} {:<12} {:>6} {:<13} {:<14} {:<15} {:<14} {:>5}  {}",
            r.job_id,
            r.node,
            r.vm_id.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            r.state.to_string(),
            one_state,
            vm.and_then(|v| v.ips.first().cloned())
                .unwrap_or_else(|| "-".into()),
            vm.and_then(|v| v.host.clone())
                .unwrap_or_else(|| "-".into()),
            age(now, r.created),
            r.detail.clone().unwrap_or_default()
        );
    }
    out
}

/// Holds an exclusive `flock` on `path` (created 0600) for the life of the returned file,
/// so only one reconcile loop runs per table. Fails at once if another process holds it.
pub fn single_instance(path: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
    // SAFETY: the fd is valid while `file` lives; flock has no other preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!(
            "another reconcile loop holds {} (only one may run per table)",
            path.display()
        ));
    }
    Ok(file)
}

/// One line of `slurm-one check`.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// `Ok(detail)` or `Err(what is wrong)`.
    pub result: Result<String, String>,
}

/// Checks config (already loaded), credentials, reachability, templates and the table.
pub fn check(cfg: &Config) -> Vec<Check> {
    let mut checks = vec![Check {
        what: format!("config {}", cfg.origin.display()),
        result: Ok(format!("cluster {}", cfg.cluster.name)),
    }];
    let client = match client(cfg, false) {
        Ok(c) => {
            checks.push(Check {
                what: format!("credentials {}", cfg.opennebula.auth_file.display()),
                result: Ok("readable by root only".into()),
            });
            Some(c)
        }
        Err(e) => {
            checks.push(Check {
                what: format!("credentials {}", cfg.opennebula.auth_file.display()),
                result: Err(e.to_string()),
            });
            None
        }
    };
    if let Some(client) = &client {
        let reachable = client.version();
        let ok = reachable.is_ok();
        checks.push(Check {
            what: format!("OpenNebula {}", cfg.opennebula.endpoint),
            result: reachable
                .map(|v| format!("version {v}"))
                .map_err(|e| e.to_string()),
        });
        for t in cfg.templates.by_name.values() {
            let result = match (&t.source, ok) {
                (TemplateSource::Body(body), _) => crate::one::template::Template::parse(body)
                    .map(|_| "inline body parses".to_string())
                    .map_err(|e| format!("inline body does not parse: {e}")),
                (TemplateSource::Id(id), true) => client
                    .template_info(*id)
                    .map(|info| format!("OpenNebula template {id} ({})", info.name))
                    .map_err(|e| e.to_string()),
                (TemplateSource::Id(id), false) => {
                    Err(format!("template {id} not checked: OpenNebula unreachable"))
                }
            };
            checks.push(Check {
                what: format!("template {}", t.name),
                result,
            });
        }
    }
    // Opening would create the file, owned by whoever runs the check (root): the hooks,
    // running as SlurmUser, could then not write it.
    if !cfg.cluster.database.exists() {
        checks.push(Check {
            what: format!("mapping table {}", cfg.cluster.database.display()),
            result: Ok("not created yet (the first hook creates it)".into()),
        });
        return checks;
    }
    checks.push(Check {
        what: format!("mapping table {}", cfg.cluster.database.display()),
        result: open_db(cfg)
            .and_then(|db| {
                db.check_integrity()?;
                db.all_rows(&cfg.cluster.name)
            })
            .map(|rows| format!("{} rows", rows.len()))
            .map_err(|e| e.to_string()),
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::RowState;

    fn row(job: u32, node: &str, vm: Option<u32>) -> Row {
        Row {
            cluster: "c".into(),
            job_id: job,
            node: node.into(),
            vm_id: vm,
            state: RowState::Running,
            request_tag: format!("t-{node}"),
            created: 1000,
            updated: 1000,
            detail: Some("host h1".into()),
        }
    }

    #[test]
    fn a_second_reconcile_loop_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.reconcile.lock");
        let first = single_instance(&path).unwrap();
        let err = single_instance(&path).unwrap_err();
        assert!(err.contains("another reconcile loop"), "{err}");
        drop(first);
        assert!(single_instance(&path).is_ok());
    }

    #[test]
    fn status_marks_vms_opennebula_no_longer_has() {
        let rows = vec![row(7, "vm1", Some(3)), row(7, "vm2", None)];
        let vms = BTreeMap::new();
        let table = status_table(&rows, Some(&vms), 1030);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("JOB"));
        assert!(
            lines[1].contains("GONE") && lines[1].contains("30s"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(" - "), "{}", lines[2]);
    }

    #[test]
    fn status_without_opennebula_shows_unknown_state() {
        let table = status_table(&[row(7, "vm1", Some(3))], None, 1000);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.contains(" ? ")),
            "{table}"
        );
    }
}
