//! `slurm-one`: the admin CLI. Exit codes: 0 success, 1 the operation failed (OpenNebula,
//! provisioning, a failed check), 2 usage or configuration error.

use std::collections::BTreeMap;
use std::process::ExitCode;

use slurm_one::admin;
use slurm_one::cli::{Cli, Cmd};
use slurm_one::config::Config;
use slurm_one::provision::{JobRequest, NodeRequest, Provisioner};
use slurm_one::slurm::{NoSlurm, SlurmCli};

/// A failure and its exit code.
struct Failure(u8, String);

fn main() -> ExitCode {
    let cli: Cli = match slurm_one::cli::parse_args("slurm-one") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("slurm-one: {msg}");
            ExitCode::from(code)
        }
    }
}

fn fail<E: std::fmt::Display>(code: u8) -> impl Fn(E) -> Failure {
    move |e| Failure(code, e.to_string())
}

fn run(cli: Cli) -> Result<(), Failure> {
    let path = cli.config.clone().unwrap_or_else(Config::default_path);
    if let Cmd::Check = cli.command {
        // Reports a config that does not load as one finding among the others.
        let findings = slurm_one::check::run(&path);
        for f in &findings {
            println!("{f}");
        }
        // A config that does not load is still a configuration error (exit 2).
        Config::load(&path).map_err(fail(2))?;
        let missing = findings
            .iter()
            .filter(|f| f.level == slurm_one::check::Level::Missing)
            .count();
        return match missing {
            0 => Ok(()),
            n => Err(Failure(1, format!("{n} checks failed"))),
        };
    }
    let cfg = Config::load(&path).map_err(fail(2))?;
    let level = if cli.debug || cli.trace_api {
        slurm_one::config::LogLevel::Debug
    } else {
        cfg.logging.level
    };
    slurm_one::logging::init(
        "slurm-one",
        cfg.logging.syslog_facility,
        level,
        cfg.logging.file.as_deref(),
        true,
    );

    let client = admin::client(&cfg, cli.trace_api).map_err(fail(2))?;
    if let Cmd::Reconcile {
        dry_run,
        grace,
        no_slurm,
        watch,
        interval,
    } = cli.command
    {
        // Opens the table itself, once per pass, and may set a corrupt one aside.
        return reconcile(&cfg, &client, dry_run, grace, no_slurm, watch, interval);
    }
    let db = admin::open_db(&cfg).map_err(fail(1))?;
    let engine = Provisioner::new(&cfg, &client, &db);
    match cli.command {
        Cmd::Check | Cmd::Reconcile { .. } => Ok(()),
        Cmd::Status { job } => {
            let rows = match job {
                Some(j) => db.job_rows(&cfg.cluster.name, j),
                None => db.all_rows(&cfg.cluster.name),
            }
            .map_err(fail(1))?;
            let vms = match client.vm_pool(true) {
                Ok(vms) => Some(
                    vms.into_iter()
                        .map(|v| (v.id, v))
                        .collect::<BTreeMap<_, _>>(),
                ),
                Err(e) => {
                    eprintln!("slurm-one: OpenNebula state unknown: {e}");
                    None
                }
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                .unwrap_or(0);
            print!("{}", admin::status_table(&rows, vms.as_ref(), now));
            Ok(())
        }
        Cmd::Provision {
            job,
            nodes,
            cpus,
            mem,
            cpu_share,
            template,
        } => {
            let names = hostlist_parser::parse(&nodes)
                .map_err(|e| Failure(2, format!("--nodes {nodes:?} is not a node list: {e}")))?;
            let request = JobRequest {
                job_id: job,
                job_name: format!("manual-{job}"),
                user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
                nodes: names
                    .into_iter()
                    .map(|name| NodeRequest { name, cpus })
                    .collect(),
                memory_mb: mem,
                cpu_share,
                template,
            };
            let up = engine.provision(&request).map_err(fail(1))?;
            for n in up {
                println!(
                    "{} VM {} {} {}",
                    n.node,
                    n.vm_id,
                    n.ip.unwrap_or_else(|| "-".into()),
                    n.host.unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        Cmd::Teardown { job } => {
            let r = engine.teardown(job).map_err(fail(1))?;
            println!(
                "job {job}: {} VMs terminated, {} already gone, {} rows removed",
                r.terminated.len(),
                r.already_gone.len(),
                r.rows_removed
            );
            Ok(())
        }
        Cmd::Migrate { job, to } => {
            for c in engine.migrate_job(job, to.as_deref()).map_err(fail(1))? {
                println!("{} VM {} {}", c.node, c.vm_id, c.now);
            }
            Ok(())
        }
        Cmd::Resize { job, cpu_share } => {
            for c in engine.resize_job(job, cpu_share).map_err(fail(1))? {
                println!("{} VM {} {}", c.node, c.vm_id, c.now);
            }
            Ok(())
        }
    }
}

/// `slurm-one reconcile`: one pass, or with `watch` one every `interval` until SIGTERM.
/// Every pass opens the table anew ([`admin::open_db_for_reconcile`]): a table deleted or
/// replaced meanwhile is never read or written through a stale connection, and a corrupt
/// one is moved aside and refilled from the VMs' tags. Between passes the suspension
/// follower opens it every second as well.
fn reconcile(
    cfg: &Config,
    client: &slurm_one::one::client::Client,
    dry_run: bool,
    grace: Option<std::time::Duration>,
    no_slurm: bool,
    watch: bool,
    interval: std::time::Duration,
) -> Result<(), Failure> {
    let grace = grace.unwrap_or(cfg.provisioning.orphan_grace);
    let slurm: &dyn slurm_one::provision::SlurmView = if no_slurm { &NoSlurm } else { &SlurmCli };
    if !watch {
        let db = admin::open_db_for_reconcile(cfg, dry_run).map_err(fail(1))?;
        let report = Provisioner::new(cfg, client, &db)
            .reconcile(slurm, grace, dry_run)
            .map_err(fail(1))?;
        print_report(&report, dry_run);
        return if report.errors.is_empty() {
            Ok(())
        } else {
            Err(Failure(
                1,
                "some fixes failed; the next pass retries them".into(),
            ))
        };
    }
    let lock = cfg.cluster.database.with_extension("reconcile.lock");
    let _held = admin::single_instance(&lock).map_err(fail(1))?;
    slurm_one::cli::install_stop_handler();
    log::info!("reconcile loop: one pass every {interval:?}, grace {grace:?}");
    while !slurm_one::cli::stopping() {
        let pass = admin::open_db_for_reconcile(cfg, dry_run)
            .map_err(|e| e.to_string())
            .and_then(|db| {
                Provisioner::new(cfg, client, &db)
                    .reconcile(slurm, grace, dry_run)
                    .map_err(|e| e.to_string())
            });
        match pass {
            Ok(r) => log::info!(
                "reconcile pass: {} drifts, {} errors, {} young VMs",
                r.drifts.len(),
                r.errors.len(),
                r.young
            ),
            // One bad pass (OpenNebula down, SLURM busy, the table unusable) never ends
            // the loop.
            Err(e) => log::error!("reconcile pass failed: {e}"),
        }
        let until = std::time::Instant::now() + interval;
        // Said once per interval: a corrupt table waits for the next pass to be set aside.
        let mut table_ok = true;
        while std::time::Instant::now() < until && !slurm_one::cli::stopping() {
            if !no_slurm && !dry_run && table_ok {
                match admin::open_db(cfg) {
                    Ok(db) => follow_suspensions(&Provisioner::new(cfg, client, &db)),
                    Err(e) => {
                        log::error!("following suspensions: {e}");
                        table_ok = !e.is_corrupt();
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    log::info!("reconcile loop stopped");
    Ok(())
}

/// One check of SLURM's suspended jobs against the VMs' states.
fn follow_suspensions(engine: &Provisioner<'_>) {
    match slurm_one::slurm::suspended_jobs() {
        Ok(jobs) => {
            let (changes, errors) = engine.sync_suspensions(&jobs);
            for c in changes {
                log::info!("node {} VM {}: {}", c.node, c.vm_id, c.now);
            }
            for e in errors {
                log::error!("following suspensions: {e}");
            }
        }
        Err(e) => log::warn!("cannot list suspended jobs: {e}"),
    }
}

fn print_report(report: &slurm_one::provision::ReconcileReport, dry_run: bool) {
    for d in &report.drifts {
        println!("{}{d:?}", if dry_run { "would fix: " } else { "fixed: " });
    }
    for e in &report.errors {
        println!("error: {e}");
    }
    println!(
        "{} drifts, {} errors, {} young VMs left alone",
        report.drifts.len(),
        report.errors.len(),
        report.young
    );
}
