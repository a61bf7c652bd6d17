//! `one-sim`: an OpenNebula front end that speaks oned's XML-RPC protocol, whose VMs are
//! nothing (`dummy`), Linux namespaces running real software (`ns`) or qemu guests
//! booting the worker image (`qemu`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use one_sim::cli::{AccelKind, Cli, Command, DriverKind};
use one_sim::config;
use one_sim::driver::{BareDummyDriver, DummyDriver, NamespaceDriver, QemuVmDriver};
use one_sim::engine::{self, Sim};
use one_sim::model::{Cloud, Network, Timing};
use one_sim::ns::{self, NsDriver};
use one_sim::qemu::{self, QemuDriver};
use one_sim::server::{Server, Service};

fn main() -> ExitCode {
    let cli: Cli = match cli_common::parse_args("one-sim") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(Command::VmInit { vm_dir }) = &cli.command {
        return ExitCode::from(u8::try_from(ns::vm_init_main(vm_dir)).unwrap_or(1));
    }
    config::init_stderr_logger(if cli.debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("one-sim: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), config::SimError> {
    use config::SimError;
    let (state_dir, cleanup_only) = match &cli.command {
        Some(Command::Cleanup { state_dir }) => (Some(state_dir.clone()), true),
        _ => (cli.state_dir.clone(), false),
    };
    let state_file = match &state_dir {
        // `cleanup` must not create what it was asked to clean.
        Some(dir) if cleanup_only => Some(dir.join("one-sim.json")),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| SimError::StateDir(dir.clone(), e))?;
            Some(dir.join("one-sim.json"))
        }
        None => None,
    };
    let saved = match &state_file {
        Some(f) => engine::load_state(f).map_err(|e| SimError::StateFile(f.clone(), e))?,
        None => None,
    };
    let sessions = if cleanup_only {
        Vec::new()
    } else {
        let path = cli.auth_file.clone().ok_or(SimError::NoAuthFile)?;
        config::read_auth_file(&path)?
    };

    // A saved state decides the driver and network, so that cleanup and restarts manage
    // the same VMs.
    let (driver_kind, bridge, net) = match &saved {
        Some(c) if c.vm_mad == "ns" => (DriverKind::Ns, c.network.name.clone(), c.network.net()),
        Some(c) if c.vm_mad == "qemu" => {
            (DriverKind::Qemu, c.network.name.clone(), c.network.net())
        }
        Some(_) => (DriverKind::Dummy, cli.bridge.clone(), cli.network),
        None => (cli.driver, cli.bridge.clone(), cli.network),
    };
    if cleanup_only && saved.is_none() {
        return Err(SimError::NothingToClean(state_dir.unwrap_or_default()));
    }

    let mut cloud = match saved {
        Some(c) => c,
        None => Cloud::new(
            match driver_kind {
                DriverKind::Dummy => "dummy",
                DriverKind::Ns => "ns",
                DriverKind::Qemu => "qemu",
            },
            cli.hosts.count,
            cli.hosts.cores,
            cli.hosts.mem_mb,
            Network {
                name: bridge.clone(),
                gateway: net.first_host(),
                prefix_len: net.prefix_len,
                leases: Default::default(),
            },
        ),
    };
    cloud.timing = Timing {
        boot_ms: cli.boot_delay,
        step_ms: cli.step_delay,
    };
    // oned.conf's ONEGATE_ENDPOINT. Served on the bridge for VMs that have a network; the
    // dummy driver's VMs have none, so its endpoint is only a name (nothing answers there,
    // as on an oned whose OneGate server is not running).
    let onegate = (driver_kind != DriverKind::Dummy && cli.onegate_port != 0 && !cleanup_only)
        .then(|| std::net::SocketAddr::from((net.first_host(), cli.onegate_port)));
    cloud.onegate_endpoint = match onegate {
        Some(a) => Some(format!("http://{a}")),
        None if cli.onegate_port != 0 => Some(format!("http://127.0.0.1:{}", cli.onegate_port)),
        None => None,
    };

    // Bind before starting anything so a busy port fails fast and cleanly.
    let server_addr = if cleanup_only { None } else { Some(cli.listen) };
    let mut ns_run_dir = None;
    let driver: Box<dyn one_sim::driver::Driver> = match driver_kind {
        DriverKind::Dummy if cli.dummy_guest => Box::new(DummyDriver),
        DriverKind::Dummy => Box::new(BareDummyDriver),
        DriverKind::Ns | DriverKind::Qemu => {
            let tag = config::instance_tag(state_dir.as_deref(), &bridge);
            let run_dir = match &state_dir {
                Some(d) => d.join("ns"),
                None => PathBuf::from(format!("/run/one-sim/{tag}")),
            };
            if state_dir.is_none() {
                ns_run_dir = Some(run_dir.clone());
            }
            let exe = std::env::current_exe().map_err(SimError::SelfExe)?;
            let ns = NsDriver::new(ns::NsConfig {
                bridge: bridge.clone(),
                gateway: net.first_host(),
                prefix_len: net.prefix_len,
                tag,
                run_dir,
                init_program: vec![exe.into_os_string(), "__vm-init".into()],
            })
            .map_err(|e| SimError::Driver(e.to_string()))?;
            let bridge_up = |ns: &NsDriver| {
                ns.ensure_bridge()
                    .map_err(|e| SimError::Driver(e.to_string()))
            };
            if driver_kind == DriverKind::Ns {
                bridge_up(&ns)?;
                Box::new(NamespaceDriver::new(ns))
            } else {
                if !cleanup_only && cli.qemu_image.is_none() {
                    return Err(SimError::Driver(
                        "--driver qemu needs --qemu-image DIR (the output of scripts/image)".into(),
                    ));
                }
                let run_dir = match &state_dir {
                    Some(d) => d.join("qemu"),
                    None => PathBuf::from(format!("/run/one-sim/{}-qemu", ns.config().tag)),
                };
                let qemu = QemuDriver::new(
                    qemu::QemuConfig {
                        run_dir,
                        tag: ns.config().tag.clone(),
                        image_dir: cli.qemu_image.clone().filter(|_| !cleanup_only),
                        accel: match cli.qemu_accel {
                            AccelKind::Tcg => qemu::Accel::Tcg,
                            AccelKind::Kvm => qemu::Accel::Kvm,
                        },
                    },
                    ns,
                )
                .map_err(SimError::Driver)?;
                // Only once the image and tools are checked: a refused start leaves no bridge.
                bridge_up(qemu.network())?;
                Box::new(QemuVmDriver::new(qemu))
            }
        }
    };
    let sim = Arc::new(Sim::new(cloud, driver, sessions, state_file));

    if cleanup_only {
        sim.destroy_all_vms();
        sim.save_if_dirty().map_err(SimError::Save)?;
        sim.driver.shutdown(true).map_err(SimError::Driver)?;
        println!(
            "one-sim: cleaned up {}",
            state_dir.unwrap_or_default().display()
        );
        return Ok(());
    }

    let Some(addr) = server_addr else {
        return Ok(());
    };
    let server = Server::bind(addr, Arc::clone(&sim)).map_err(|e| SimError::Listen(addr, e))?;
    let bound = server.local_addr().map_err(|e| SimError::Listen(addr, e))?;
    let onegate_server = match onegate {
        Some(a) => Some(
            Server::bind_service(a, Arc::clone(&sim), Service::OneGate)
                .map_err(|e| SimError::Listen(a, e))?,
        ),
        None => None,
    };
    cli_common::install_stop_handler();
    let engine = sim.spawn_engine();
    let onegate_thread = onegate_server.map(|s| {
        std::thread::spawn(move || {
            if let Err(e) = s.run(&cli_common::stopping) {
                log::error!("OneGate: {e}");
            }
        })
    });
    if let Some(a) = onegate {
        log::info!("OneGate on http://{a}/vm");
    }
    println!("one-sim listening on http://{bound}/RPC2");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let (vms, hosts) = {
        let cloud = sim.cloud();
        (cloud.vms.len(), cloud.hosts.len())
    };
    log::info!(
        "serving {vms} VMs and {hosts} hosts with the {} driver",
        sim.driver.vm_mad()
    );

    server
        .run(&cli_common::stopping)
        .map_err(|e| SimError::Listen(addr, e))?;

    sim.request_stop();
    let _ = engine.join();
    if let Some(t) = onegate_thread {
        let _ = t.join();
    }
    if state_dir.is_some() {
        log::info!("stopping; VMs keep running and are adopted on the next start");
        sim.touch();
        sim.save_if_dirty().map_err(SimError::Save)?;
        sim.driver.shutdown(false).map_err(SimError::Driver)?;
    } else {
        log::info!("stopping; removing every VM (no --state-dir)");
        sim.destroy_all_vms();
        sim.driver.shutdown(true).map_err(SimError::Driver)?;
        if let Some(dir) = ns_run_dir {
            // Only empty by now; a leftover file keeps it for inspection.
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}
