//! The simulator's running core: the shared cloud state, the engine loop that moves VMs
//! through their lifecycle and calls the driver, monitoring, and persistence of the state
//! (oned's DB) in `--state-dir`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::driver::{BootSpec, Driver};
use super::faults::Faults;
use super::model::{Cloud, DriverCall, DriverOp, Owner};
use one_proto::states::{HostState, LcmState, VmState};

/// How often the engine runs a round.
const TICK: Duration = Duration::from_millis(20);
/// How often RUNNING guests are checked for being alive.
const MONITOR_EVERY_MS: u64 = 500;
/// How often a changed state is written out.
const SAVE_EVERY_MS: u64 = 200;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The simulator: state, driver, fault rules, credentials.
pub struct Sim {
    cloud: Mutex<Cloud>,
    /// The virtualization driver.
    pub driver: Box<dyn Driver>,
    /// Active fault-injection rules.
    pub faults: Faults,
    /// Session string → the user it logs in as.
    sessions: Vec<(String, Owner)>,
    state_file: Option<PathBuf>,
    dirty: AtomicBool,
    stop: AtomicBool,
}

impl Sim {
    /// A simulator over `cloud`; `state_file` makes it persistent. `sessions` are the
    /// auth file's `user:password` lines: their users get uids in that order (oneadmin is
    /// 0), kept in the state.
    pub fn new(
        cloud: Cloud,
        driver: Box<dyn Driver>,
        sessions: Vec<String>,
        state_file: Option<PathBuf>,
    ) -> Sim {
        let mut cloud = cloud;
        resume_interrupted_calls(&mut cloud);
        let user_of = |s: &str| s.split_once(':').map_or(s, |(u, _)| u).to_string();
        let names: Vec<String> = sessions.iter().map(|s| user_of(s)).collect();
        cloud.register_users(names.iter().map(String::as_str));
        let sessions = sessions
            .into_iter()
            .filter_map(|s| {
                let owner = cloud.user(&user_of(&s))?;
                Some((s, owner))
            })
            .collect();
        Sim {
            cloud: Mutex::new(cloud),
            driver,
            faults: Faults::default(),
            sessions,
            state_file,
            dirty: AtomicBool::new(true),
            stop: AtomicBool::new(false),
        }
    }

    /// Locks the cloud state. A poisoned lock (a panicked worker) is recovered: the state
    /// is plain data and every mutation leaves it consistent.
    pub fn cloud(&self) -> MutexGuard<'_, Cloud> {
        self.cloud.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the state as changed, to be saved.
    pub fn touch(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// The user of `session` (`user:password`) if it is one of the auth file's lines.
    pub fn authenticate(&self, session: &str) -> Option<&Owner> {
        self.sessions
            .iter()
            .find(|(s, _)| s == session)
            .map(|(_, owner)| owner)
    }

    /// Asks the engine loop to finish.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether a stop was asked.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Starts the engine loop on its own thread.
    pub fn spawn_engine(self: &Arc<Self>) -> JoinHandle<()> {
        let sim = Arc::clone(self);
        thread::Builder::new()
            .name("one-sim-engine".into())
            .spawn(move || {
                let mut last_monitor = 0;
                let mut last_save = 0;
                while !sim.stopping() {
                    let now = now_ms();
                    let monitor = now.saturating_sub(last_monitor) >= MONITOR_EVERY_MS;
                    if monitor {
                        last_monitor = now;
                    }
                    sim.round(now, monitor);
                    if now.saturating_sub(last_save) >= SAVE_EVERY_MS {
                        last_save = now;
                        if let Err(e) = sim.save_if_dirty() {
                            log::error!("cannot save the simulator state: {e}");
                        }
                    }
                    thread::sleep(TICK);
                }
            })
            .unwrap_or_else(|e| {
                log::error!("cannot start the engine thread: {e}");
                thread::spawn(|| {})
            })
    }

    /// One engine round: hosts get monitored, PENDING VMs placed, transitional states
    /// advanced, driver calls started, READY reports and vanished guests picked up.
    pub fn round(self: &Arc<Self>, now: u64, monitor: bool) {
        let mut calls = Vec::new();
        let mut watch_ready = Vec::new();
        let mut watch_alive = Vec::new();
        {
            let mut cloud = self.cloud();
            let before = fingerprint(&cloud);
            for h in cloud.hosts.values_mut() {
                if h.state == HostState::Init {
                    h.prev_state = h.state;
                    h.state = HostState::Monitored;
                }
            }
            if !self.faults.hosts_full() {
                cloud.schedule_pending(now);
            }
            cloud.advance(now);
            // Calls come from state changes made here and by RPC requests alike.
            for vm in cloud.vms.values_mut() {
                if let Some(call) = vm.pending_call.take() {
                    vm.op = DriverOp::Busy;
                    calls.push((call, BootSpec::from_vm(vm)));
                }
            }
            for vm in cloud.vms.values() {
                if vm.state == VmState::Active && vm.lcm == LcmState::RUNNING {
                    if vm.wants_ready() && vm.user_template.get("READY").is_none() {
                        watch_ready.push(vm.id);
                    }
                    // A guest being rebooted is briefly gone; that is not a power-off.
                    if monitor && vm.op != DriverOp::Busy {
                        watch_alive.push(vm.id);
                    }
                }
            }
            if fingerprint(&cloud) != before || !calls.is_empty() {
                self.touch();
            }
        }
        for (call, spec) in calls {
            if self.driver.is_slow() {
                let sim = Arc::clone(self);
                let spawned = thread::Builder::new()
                    .name(format!("vm-{}-{call:?}", spec.vm_id))
                    .spawn(move || sim.run_call(call, &spec));
                if let Err(e) = spawned {
                    log::error!("cannot start a driver thread: {e}");
                }
            } else {
                self.run_call(call, &spec);
            }
        }
        let ready: Vec<u32> = watch_ready
            .into_iter()
            .filter(|id| self.driver.guest_ready(*id))
            .collect();
        let gone: Vec<u32> = watch_alive
            .into_iter()
            .filter(|id| !self.driver.guest_alive(*id))
            .collect();
        if !ready.is_empty() || !gone.is_empty() {
            let mut cloud = self.cloud();
            for id in ready {
                cloud.report_ready(id);
            }
            let mut powered_off = Vec::new();
            for id in gone {
                // A guest that vanished is a guest that powered off: oned's monitoring moves
                // it to POWEROFF, not DONE; it keeps its host until terminated.
                if let Some(vm) = cloud.vms.get_mut(&id) {
                    if vm.state == VmState::Active && vm.lcm == LcmState::RUNNING {
                        log::warn!("VM {id}: guest is gone, moving it to POWEROFF");
                        vm.prev_state = vm.state;
                        vm.prev_lcm = vm.lcm;
                        vm.state = VmState::Poweroff;
                        vm.lcm = LcmState::LCM_INIT;
                        powered_off.push(BootSpec::from_vm(vm));
                    }
                }
            }
            drop(cloud);
            self.touch();
            // A powered-off guest runs nothing: end whatever its init left behind.
            for spec in powered_off {
                if let Err(e) = self.driver.call(DriverCall::Destroy, &spec) {
                    log::warn!("VM {}: cleaning up the powered-off guest: {e}", spec.vm_id);
                }
            }
        }
    }

    fn run_call(&self, call: DriverCall, spec: &BootSpec) {
        let result = self.driver.call(call, spec);
        if let Err(e) = &result {
            log::warn!("VM {}: driver {call:?} failed: {e}", spec.vm_id);
        }
        let mut cloud = self.cloud();
        if let Some(vm) = cloud.vms.get_mut(&spec.vm_id) {
            if vm.op == DriverOp::Busy {
                vm.op = match result {
                    Ok(()) => DriverOp::Idle,
                    // A failed reboot leaves the VM RUNNING (its guest is then gone, which
                    // monitoring turns into POWEROFF), as oned does.
                    Err(_) if call == DriverCall::Reboot => DriverOp::Idle,
                    Err(e) => DriverOp::Failed(e),
                };
            }
        }
        drop(cloud);
        self.touch();
    }

    /// Writes the state file if anything changed since the last write.
    pub fn save_if_dirty(&self) -> io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let json = {
            let cloud = self.cloud();
            serde_json::to_vec(&*cloud).map_err(io::Error::other)?
        };
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, json)?;
        fs::rename(&tmp, path)
    }

    /// Destroys every VM the driver still runs and marks them DONE (used when the
    /// simulator has no state dir, and by `one-sim cleanup`).
    pub fn destroy_all_vms(&self) {
        let live: Vec<u32> = {
            let cloud = self.cloud();
            cloud
                .vms
                .values()
                .filter(|v| v.state != VmState::Done)
                .map(|v| v.id)
                .collect()
        };
        let mut ids = self.driver.existing();
        ids.extend(live.iter().copied());
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            let spec = BootSpec::bare(*id);
            if let Err(e) = self.driver.call(DriverCall::Destroy, &spec) {
                log::error!("VM {id}: cannot destroy: {e}");
            }
        }
        let now = now_ms();
        let mut cloud = self.cloud();
        for id in live {
            if let Some(vm) = cloud.vms.get_mut(&id) {
                vm.prev_state = vm.state;
                vm.prev_lcm = vm.lcm;
                vm.state = VmState::Done;
                vm.lcm = LcmState::LCM_INIT;
                vm.etime = i64::try_from(now / 1000).unwrap_or(0);
                vm.pending_call = None;
                vm.op = DriverOp::Idle;
            }
        }
        for h in cloud.hosts.values_mut() {
            h.vms.clear();
            h.cpu_usage = 0;
            h.mem_usage = 0;
        }
        for vm in cloud.vms.values_mut() {
            vm.host = None;
        }
        cloud.network.leases.clear();
        drop(cloud);
        self.touch();
    }
}

/// Reads a saved state, if the file exists.
pub fn load_state(path: &Path) -> io::Result<Option<Cloud>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A driver call cut short by a restart is issued again (driver calls are idempotent).
fn resume_interrupted_calls(cloud: &mut Cloud) {
    for vm in cloud.vms.values_mut() {
        if vm.op != DriverOp::Busy {
            continue;
        }
        vm.op = DriverOp::Idle;
        vm.pending_call = match vm.lcm {
            LcmState::BOOT
            | LcmState::BOOT_POWEROFF
            | LcmState::BOOT_STOPPED
            | LcmState::BOOT_UNDEPLOY => Some(DriverCall::Boot),
            LcmState::BOOT_SUSPENDED | LcmState::BOOT_MIGRATE => Some(DriverCall::Resume),
            LcmState::SAVE_SUSPEND | LcmState::SAVE_MIGRATE => Some(DriverCall::Suspend),
            LcmState::MIGRATE => Some(DriverCall::Migrate),
            LcmState::HOTPLUG_RESIZE => Some(DriverCall::Resize),
            LcmState::RUNNING => Some(DriverCall::Reboot),
            _ => Some(DriverCall::Destroy),
        };
    }
}

/// Cheap change detector for a round: states, ops and user templates of every VM.
fn fingerprint(cloud: &Cloud) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for vm in cloud.vms.values() {
        vm.id.hash(&mut h);
        vm.state.hash(&mut h);
        vm.lcm.hash(&mut h);
        vm.user_template.attrs.len().hash(&mut h);
        vm.history.len().hash(&mut h);
    }
    for host in cloud.hosts.values() {
        (host.state as u8).hash(&mut h);
    }
    h.finish()
}
