//! The `qemu` driver of one-sim: each VM is a `qemu-system-x86_64` process booting the
//! worker image (`scripts/image`), the way OpenNebula's KVM driver runs a guest.
//!
//! A VM `<id>` of a one-sim instance with tag `<tag>` consists of, in `run_dir/vm-<id>/`:
//! - `disk.qcow2`, a copy-on-write overlay of the image's `worker.qcow2` (the system disk,
//!   `virtio-blk`), and `context.iso`, the context CD labelled `CONTEXT` with `context.sh`
//!   (and `token.txt` for TOKEN=YES), built as oned builds it;
//! - one qemu process (two while it live-migrates), each an *instance* in slot `a` or `b`:
//!   `qemu-<slot>.pid`, its QMP socket `qmp-<slot>.sock`, its tap `<tag>q<id><slot>` on the
//!   bridge with the VM's leased MAC; `slot` names the current one. qemu daemonizes, so VMs
//!   outlive one-sim and a new one-sim with the same run_dir adopts them;
//! - `console.log`, the guest's serial console (both instances append to it), moved to
//!   `run_dir/logs/vm-<id>.console.log` when the VM is destroyed;
//! - suspend pauses the guest (QMP `stop`/`cont`) rather than saving its memory as
//!   OpenNebula does ([`QemuDriver::suspend`] says why);
//! - a cgroup `one-sim-<tag>-qemu/vm-<id>` of the `cpu` controller holding the qemu
//!   process: CPU (the share of physical CPUs) becomes its quota (`cpu.max` on cgroup v2,
//!   `cpu.cfs_quota_us` on v1), also when the VM is resized while running.
//!
//! Live migration is QEMU's own: a second instance is started with `-incoming` on a unix
//! socket, the first one is told `migrate` there and quits once the guest runs on the
//! second. Every host is this machine, so both share the disk and the bridge.
//!
//! READY does not come from here: the guest's contextualization reports it to one-sim's
//! OneGate (`super::onegate`), as on a real OpenNebula. Calls for one VM are not serialised
//! here (the engine never runs two for the same VM at once); different VMs run in parallel.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::driver::BootSpec;
use super::model::mac_for;
use super::ns::{self, NsDriver};

/// One command line tool call (ip, qemu-img, xorriso).
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// qemu's daemonizing parent returns once devices are set up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// One QMP exchange.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// A live migration, end to end.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// A qemu told to quit (or sent SIGTERM) before it gets SIGKILL.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
const CPU_PERIOD_US: u64 = 100_000;
/// Files of the worker image directory that `scripts/image` writes.
const IMAGE_FILES: [&str; 4] = ["worker.qcow2", "vmlinuz", "initrd.img", "cmdline"];

/// How qemu executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's software emulation: works everywhere, several times slower.
    Tcg,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
}

impl Accel {
    /// TCG's translation cache is 1 GiB by default and fills up in a guest's boot, which
    /// made a 512 MiB guest's qemu hold 0.8-1.5 GiB; 256 MiB holds a booted guest's code
    /// without slowing the boot (measured: RSS about 520 MiB).
    fn accel_arg(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg,tb-size=256",
            Accel::Kvm => "kvm",
        }
    }
    fn cpu_arg(self) -> &'static str {
        match self {
            Accel::Tcg => "max",
            Accel::Kvm => "host",
        }
    }
}

/// Configuration of one one-sim instance's `qemu` driver.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Per-instance directory for VM files.
    pub run_dir: PathBuf,
    /// 1-4 chars of `[a-z0-9]`, unique per one-sim instance (tap and cgroup names).
    pub tag: String,
    /// The output directory of `scripts/image` ([`IMAGE_FILES`]); `None` for a driver
    /// that only cleans up.
    pub image_dir: Option<PathBuf>,
    /// TCG or KVM.
    pub accel: Accel,
}

/// The worker image's files, checked at start.
#[derive(Debug, Clone)]
struct WorkerImage {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

impl WorkerImage {
    fn open(dir: &Path) -> Result<WorkerImage, String> {
        for f in IMAGE_FILES {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(format!(
                    "worker image {}: {f} is missing (build it with scripts/image)",
                    dir.display()
                ));
            }
        }
        let cmdline = fs::read_to_string(dir.join("cmdline"))
            .map_err(|e| format!("{}: {e}", dir.join("cmdline").display()))?
            .trim()
            .to_string();
        Ok(WorkerImage {
            disk: dir.join("worker.qcow2"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            cmdline,
        })
    }
}

/// Where the per-VM cgroups go and which interface sets the CPU quota.
#[derive(Debug, Clone)]
struct CpuCgroup {
    /// `<mount>/one-sim-<tag>-qemu`.
    dir: PathBuf,
    v2: bool,
}

impl CpuCgroup {
    fn detect(tag: &str) -> Result<CpuCgroup, String> {
        let name = format!("one-sim-{tag}-qemu");
        let v2_root = Path::new("/sys/fs/cgroup");
        let has_cpu = fs::read_to_string(v2_root.join("cgroup.controllers"))
            .map(|c| c.split_whitespace().any(|w| w == "cpu"))
            .unwrap_or(false);
        if has_cpu {
            return Ok(CpuCgroup {
                dir: v2_root.join(name),
                v2: true,
            });
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            return Ok(CpuCgroup {
                dir: v1.join(name),
                v2: false,
            });
        }
        Err(
            "no cgroup `cpu` controller (neither cgroup v2 with `cpu` in \
             /sys/fs/cgroup/cgroup.controllers nor v1 /sys/fs/cgroup/cpu): the qemu driver \
             needs it to give VMs their CPU share"
                .into(),
        )
    }

    fn vm_dir(&self, vm_id: u32) -> PathBuf {
        self.dir.join(format!("vm-{vm_id}"))
    }

    /// Creates the VM's cgroup (and the instance's parent, with the `cpu` controller
    /// delegated on v2) and returns its `cgroup.procs`, opened for the qemu to join.
    fn create(&self, vm_id: u32) -> Result<File, String> {
        let err = |p: &Path, e: io::Error| format!("cgroup {}: {e}", p.display());
        if self.v2 && !self.dir.exists() {
            let parent = self.dir.parent().unwrap_or(Path::new("/sys/fs/cgroup"));
            // `+cpu` in the parent's subtree_control lets our directory use the controller.
            let _ = fs::write(parent.join("cgroup.subtree_control"), "+cpu");
        }
        fs::create_dir_all(&self.dir).map_err(|e| err(&self.dir, e))?;
        if self.v2 {
            let _ = fs::write(self.dir.join("cgroup.subtree_control"), "+cpu");
        }
        let dir = self.vm_dir(vm_id);
        fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
        let procs = dir.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| err(&procs, e))
    }

    /// Caps the VM's processes at `cpu` physical CPUs.
    fn set_share(&self, vm_id: u32, cpu: f64) -> Result<(), String> {
        let dir = self.vm_dir(vm_id);
        let quota = quota_us(cpu);
        let (file, text) = if self.v2 {
            ("cpu.max", format!("{quota} {CPU_PERIOD_US}"))
        } else {
            let period = dir.join("cpu.cfs_period_us");
            fs::write(&period, CPU_PERIOD_US.to_string())
                .map_err(|e| format!("{}: {e}", period.display()))?;
            ("cpu.cfs_quota_us", quota.to_string())
        };
        let path = dir.join(file);
        fs::write(&path, &text).map_err(|e| format!("{}: {text}: {e}", path.display()))
    }

    /// Removes the VM's cgroup once it is empty: a killed qemu leaves it only when its
    /// parent (init, as qemu daemonized) has reaped it.
    fn remove(&self, vm_id: u32) -> Result<(), String> {
        let dir = self.vm_dir(vm_id);
        let deadline = Instant::now() + QUIT_TIMEOUT;
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cgroup {}: {e}", dir.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn remove_instance_dir(&self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The CFS quota for a share of `cpu` CPUs (at least 1 ms per period, the kernel's floor).
fn quota_us(cpu: f64) -> u64 {
    let q = (cpu.max(0.0) * CPU_PERIOD_US as f64).round() as u64;
    q.max(1000)
}

/// A QMP connection (QEMU Machine Protocol: JSON lines over a unix socket).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    fn connect(socket: &Path) -> Result<Qmp, String> {
        let err = |e: io::Error| format!("QMP {}: {e}", socket.display());
        let stream = UnixStream::connect(socket).map_err(err)?;
        stream.set_read_timeout(Some(QMP_TIMEOUT)).map_err(err)?;
        stream.set_write_timeout(Some(QMP_TIMEOUT)).map_err(err)?;
        let writer = stream.try_clone().map_err(err)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(format!(
                "QMP {}: unexpected greeting {greeting}",
                socket.display()
            ));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("QMP read: {e}"))?;
        if n == 0 {
            return Err("QMP: qemu closed the connection".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP: bad message {line:?}: {e}"))
    }

    /// Runs one command; its `return` value, or its error's description.
    fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| format!("QMP {command}: {e}"))?;
        loop {
            let m = self.read_message()?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(format!("QMP {command}: {desc}"));
            }
            // Anything else is an asynchronous event; skip it.
        }
    }

    fn status(&mut self) -> Result<String, String> {
        let r = self.execute("query-status", None)?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string())
    }

    /// Waits for the outgoing migration to complete; its `query-migrate` answer.
    fn wait_migration(&mut self, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.execute("query-migrate", None)?;
            match r.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(r),
                "failed" | "cancelled" => {
                    let why = r.get("error-desc").and_then(Value::as_str).unwrap_or("");
                    return Err(format!("migration failed: {why}"));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!("migration not done after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the guest runs (after an incoming migration, or a boot).
    fn wait_running(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status()?;
            match status.as_str() {
                "running" => return Ok(()),
                // Incoming data loaded but the guest was left stopped.
                "paused" | "postmigrate" => {
                    self.execute("cont", None)?;
                }
                "internal-error" | "guest-panicked" | "shutdown" => {
                    return Err(format!("guest is {status}"))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "guest not running after {timeout:?} (status {status})"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// VMs as qemu processes.
pub struct QemuDriver {
    cfg: QemuConfig,
    image: Option<WorkerImage>,
    qemu: PathBuf,
    qemu_img: PathBuf,
    xorriso: PathBuf,
    ip: PathBuf,
    cgroup: CpuCgroup,
    /// The bridge (shared with the `ns` driver's setup and teardown of it).
    network: NsDriver,
}

/// Slot of an instance: `a` or `b`.
type Slot = char;

fn other(slot: Slot) -> Slot {
    if slot == 'a' {
        'b'
    } else {
        'a'
    }
}

impl QemuDriver {
    /// Checks the image, the tools and the cgroup controller; `network` owns the bridge.
    pub fn new(cfg: QemuConfig, network: NsDriver) -> Result<QemuDriver, String> {
        let image = cfg
            .image_dir
            .as_deref()
            .map(WorkerImage::open)
            .transpose()?;
        let tool = |name: &str, pkg: &str| {
            ns::find_tool(name).ok_or_else(|| format!("`{name}` not found (install {pkg})"))
        };
        let qemu = tool("qemu-system-x86_64", "qemu-system-x86")?;
        let qemu_img = tool("qemu-img", "qemu-utils")?;
        let xorriso = tool("xorriso", "xorriso")?;
        let ip = tool("ip", "iproute2")?;
        if cfg.accel == Accel::Kvm && !Path::new("/dev/kvm").exists() {
            return Err("--qemu-accel kvm: /dev/kvm does not exist".into());
        }
        let cgroup = CpuCgroup::detect(&cfg.tag)?;
        fs::create_dir_all(&cfg.run_dir).map_err(|e| format!("{}: {e}", cfg.run_dir.display()))?;
        Ok(QemuDriver {
            cfg,
            image,
            qemu,
            qemu_img,
            xorriso,
            ip,
            cgroup,
            network,
        })
    }

    /// The bridge's owner.
    pub fn network(&self) -> &NsDriver {
        &self.network
    }

    fn vm_dir(&self, vm_id: u32) -> PathBuf {
        self.cfg.run_dir.join(format!("vm-{vm_id}"))
    }

    fn image(&self) -> Result<&WorkerImage, String> {
        self.image
            .as_ref()
            .ok_or_else(|| "no worker image (one-sim --qemu-image DIR)".to_string())
    }

    fn tap(&self, vm_id: u32, slot: Slot) -> String {
        format!("{}q{vm_id}{slot}", self.cfg.tag)
    }

    fn pid_file(&self, vm_id: u32, slot: Slot) -> PathBuf {
        self.vm_dir(vm_id).join(format!("qemu-{slot}.pid"))
    }

    fn qmp_socket(&self, vm_id: u32, slot: Slot) -> PathBuf {
        self.vm_dir(vm_id).join(format!("qmp-{slot}.sock"))
    }

    fn current_slot(&self, vm_id: u32) -> Slot {
        fs::read_to_string(self.vm_dir(vm_id).join("slot"))
            .ok()
            .and_then(|s| s.trim().chars().next())
            .filter(|c| *c == 'a' || *c == 'b')
            .unwrap_or('a')
    }

    fn set_slot(&self, vm_id: u32, slot: Slot) -> Result<(), String> {
        let path = self.vm_dir(vm_id).join("slot");
        ns::write_atomic(&path, slot.to_string().as_bytes(), 0o644)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The pid of the instance in `slot`, if that process is alive and is this VM's qemu
    /// (its command line names the VM's directory: a recycled pid is not mistaken for it).
    fn instance_pid(&self, vm_id: u32, slot: Slot) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_file(vm_id, slot))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let (state, _) = ns::proc_stat(pid)?;
        if state == 'Z' {
            return None;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let dir = self.vm_dir(vm_id);
        let needle = dir.as_os_str().as_encoded_bytes();
        cmdline
            .windows(needle.len())
            .any(|w| w == needle)
            .then_some(pid)
    }

    fn ip_cmd(&self, args: &[&str]) -> Result<(), String> {
        let mut argv = vec![self.ip.as_os_str()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        ns::run(&argv, CMD_TIMEOUT).map(|_| ())
    }

    fn create_tap(&self, tap: &str) -> Result<(), String> {
        if Path::new("/sys/class/net").join(tap).exists() {
            let _ = self.ip_cmd(&["link", "del", tap]);
        }
        self.ip_cmd(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        let bridge = &self.network.config().bridge;
        self.ip_cmd(&["link", "set", tap, "master", bridge, "up"])
    }

    fn remove_tap(&self, tap: &str) {
        if Path::new("/sys/class/net").join(tap).exists() {
            if let Err(e) = self.ip_cmd(&["link", "del", tap]) {
                log::warn!("qemu: removing tap {tap}: {e}");
            }
        }
    }

    /// The context CD, as oned builds it: `context.sh` (CONTEXT's variables) and, for
    /// TOKEN=YES, `token.txt`, on an ISO 9660 volume labelled CONTEXT.
    fn write_context_iso(&self, spec: &BootSpec) -> Result<(), String> {
        let dir = self.vm_dir(spec.vm_id);
        let staging = dir.join("context");
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
        let write = |name: &str, data: &[u8]| {
            let p = staging.join(name);
            ns::write_atomic(&p, data, 0o600).map_err(|e| format!("{}: {e}", p.display()))
        };
        write("context.sh", ns::context_sh(&spec.context).as_bytes())?;
        if let Some(token) = &spec.onegate_token {
            write("token.txt", token.as_bytes())?;
        }
        let iso = dir.join("context.iso");
        let argv = [
            self.xorriso.as_os_str(),
            "-as".as_ref(),
            "mkisofs".as_ref(),
            "-quiet".as_ref(),
            "-V".as_ref(),
            "CONTEXT".as_ref(),
            "-J".as_ref(),
            "-R".as_ref(),
            "-o".as_ref(),
            iso.as_os_str(),
            staging.as_os_str(),
        ];
        ns::run(&argv, CMD_TIMEOUT)?;
        let _ = fs::remove_dir_all(&staging);
        Ok(())
    }

    /// Starts the instance in `slot`; `incoming` is a migration URI to load the guest from.
    fn start_instance(
        &self,
        spec: &BootSpec,
        slot: Slot,
        incoming: Option<&str>,
    ) -> Result<(), String> {
        let id = spec.vm_id;
        let dir = self.vm_dir(id);
        let image = self.image()?;
        let ip = spec.ip.ok_or_else(|| {
            format!("VM {id} has no NIC: the qemu driver needs NIC = [ NETWORK_ID = \"0\" ]")
        })?;
        let tap = self.tap(id, slot);
        self.create_tap(&tap)?;
        let qmp = self.qmp_socket(id, slot);
        let pid_file = self.pid_file(id, slot);
        let _ = fs::remove_file(&qmp);
        let _ = fs::remove_file(&pid_file);
        let path = |p: &Path| p.display().to_string();
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("one-{id},process=one-{id}"),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            self.cfg.accel.accel_arg().into(),
            "-cpu".into(),
            self.cfg.accel.cpu_arg().into(),
            "-smp".into(),
            spec.vcpu.to_string(),
            "-m".into(),
            spec.memory_mb.max(64).to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-chardev".into(),
            format!(
                "file,id=console,path={},append=on",
                path(&dir.join("console.log"))
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-kernel".into(),
            path(&image.kernel),
            "-initrd".into(),
            path(&image.initrd),
            "-append".into(),
            image.cmdline.clone(),
            "-drive".into(),
            format!(
                "file={},if=none,id=root,format=qcow2",
                path(&dir.join("disk.qcow2"))
            ),
            "-device".into(),
            "virtio-blk-pci,drive=root".into(),
            "-drive".into(),
            format!(
                "file={},if=none,id=ctx,format=raw,readonly=on,media=cdrom",
                path(&dir.join("context.iso"))
            ),
            "-device".into(),
            "virtio-scsi-pci,id=scsi0".into(),
            "-device".into(),
            "scsi-cd,drive=ctx,bus=scsi0.0".into(),
            "-netdev".into(),
            format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=net0,mac={}", mac_for(ip)),
            "-device".into(),
            "virtio-rng-pci".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path(&qmp)),
            "-pidfile".into(),
            path(&pid_file),
            "-daemonize".into(),
        ];
        if let Some(uri) = incoming {
            args.push("-incoming".into());
            args.push(uri.into());
        }
        let procs = self.cgroup.create(id)?;
        let procs_fd = procs.as_raw_fd();
        let mut cmd = Command::new(&self.qemu);
        cmd.args(&args).current_dir(&dir).env("LC_ALL", "C");
        // SAFETY: between fork and exec only async-signal-safe calls: write(2) on an fd
        // opened before the fork. "0" moves the writing process, which qemu then is, into
        // the VM's cgroup, so every thread it starts is under the CPU quota.
        unsafe {
            cmd.pre_exec(move || {
                let msg = b"0\n";
                if libc::write(procs_fd, msg.as_ptr().cast(), msg.len()) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let shown = format!("{} {}", self.qemu.display(), args.join(" "));
        let started = ns::run_command(cmd, START_TIMEOUT, shown);
        drop(procs);
        if let Err(e) = started {
            self.remove_tap(&tap);
            return Err(e);
        }
        if self.instance_pid(id, slot).is_none() {
            self.remove_tap(&tap);
            return Err(format!(
                "VM {id}: qemu started but its pid file names no live qemu"
            ));
        }
        self.cgroup.set_share(id, spec.cpu)
    }

    /// Ends the instance in `slot`: QMP `quit`, else SIGTERM, then SIGKILL; removes its tap.
    /// Waits for the process itself: qemu removes its pid file early in its exit.
    fn stop_instance(&self, vm_id: u32, slot: Slot, graceful: bool) {
        if let Some(pid) = self.instance_pid(vm_id, slot) {
            let started = ns::proc_stat(pid).map(|(_, t)| t);
            // Alive: the same process (same start time), not yet a zombie.
            let alive =
                || ns::proc_stat(pid).is_some_and(|(state, t)| state != 'Z' && Some(t) == started);
            let asked = graceful
                && Qmp::connect(&self.qmp_socket(vm_id, slot))
                    .and_then(|mut q| q.execute("quit", None))
                    .is_ok();
            if !asked {
                // SAFETY: kill(2) with a pid we just checked is this VM's qemu.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + QUIT_TIMEOUT;
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive() {
                log::warn!("VM {vm_id}: qemu {pid} did not quit; killing it");
                // SAFETY: as above; `alive` checked it is still the same process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let deadline = Instant::now() + QUIT_TIMEOUT;
                while alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.remove_tap(&self.tap(vm_id, slot));
        let _ = fs::remove_file(self.pid_file(vm_id, slot));
        let _ = fs::remove_file(self.qmp_socket(vm_id, slot));
    }

    fn qmp(&self, vm_id: u32, slot: Slot) -> Result<Qmp, String> {
        Qmp::connect(&self.qmp_socket(vm_id, slot)).map_err(|e| format!("VM {vm_id}: {e}"))
    }

    /// Deploys the VM: a fresh overlay of the image, the context CD, the qemu process.
    pub fn boot(&self, spec: &BootSpec) -> Result<(), String> {
        let id = spec.vm_id;
        let slot = self.current_slot(id);
        if self.instance_pid(id, slot).is_some() {
            return Ok(()); // re-issued after a restart: already running
        }
        self.destroy(id)?;
        let dir = self.vm_dir(id);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let disk = dir.join("disk.qcow2");
        ns::run(
            &[
                self.qemu_img.as_os_str(),
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-F".as_ref(),
                "qcow2".as_ref(),
                "-b".as_ref(),
                self.image()?.disk.as_os_str(),
                disk.as_os_str(),
            ],
            CMD_TIMEOUT,
        )?;
        self.write_context_iso(spec)?;
        self.set_slot(id, 'a')?;
        self.start_instance(spec, 'a', None)?;
        self.qmp(id, 'a')?.wait_running(QMP_TIMEOUT)
    }

    /// Pauses the guest (QMP `stop`): its memory stays in the qemu process and its NIC on
    /// the bridge.
    ///
    /// Not OpenNebula's suspend, which saves the memory to a file and ends the guest: SLURM
    /// sends its resume request to the node's slurmd once, without retry (22.05
    /// src/slurmctld/job_mgr.c, `_suspend_job`: `retry = 0`), before slurm-one's follower can
    /// resume the VM; to a saved guest nothing answers, the request is lost, and the job's
    /// tasks stay stopped for good (slurmstepd refuses any later signal but SIGKILL to a step
    /// it holds suspended, src/slurmd/slurmstepd/req.c). A paused guest keeps its tap and
    /// sockets: the request waits in TCP's retransmissions until the follower resumes it, as
    /// with the `ns` driver's frozen namespaces.
    pub fn suspend(&self, vm_id: u32) -> Result<(), String> {
        let slot = self.current_slot(vm_id);
        if self.instance_pid(vm_id, slot).is_none() {
            return Err(format!("VM {vm_id}: no qemu to suspend"));
        }
        self.qmp(vm_id, slot)?.execute("stop", None).map(|_| ())
    }

    /// Runs the paused guest on (QMP `cont`).
    pub fn resume(&self, spec: &BootSpec) -> Result<(), String> {
        let id = spec.vm_id;
        let slot = self.current_slot(id);
        if self.instance_pid(id, slot).is_none() {
            return Err(format!("VM {id}: no qemu to resume"));
        }
        self.qmp(id, slot)?.wait_running(QMP_TIMEOUT)
    }

    /// QEMU's live migration to a second instance; the guest never stops for longer than
    /// the final copy (QEMU's `downtime`, logged).
    pub fn migrate(&self, spec: &BootSpec) -> Result<(), String> {
        let id = spec.vm_id;
        let from = self.current_slot(id);
        let to = other(from);
        if self.instance_pid(id, from).is_none() {
            // Re-issued after a restart that came after the switch: done if `to` runs.
            return match self.instance_pid(id, to) {
                Some(_) => self.set_slot(id, to),
                None => Err(format!("VM {id}: no qemu to migrate")),
            };
        }
        self.stop_instance(id, to, false); // a half-started target of an earlier attempt
        let t0 = Instant::now();
        let sock = self.vm_dir(id).join("migrate.sock");
        let _ = fs::remove_file(&sock);
        let uri = format!("unix:{}", sock.display());
        self.start_instance(spec, to, Some(&uri))?;
        let result = (|| {
            let mut source = self.qmp(id, from)?;
            source.execute("migrate", Some(json!({ "uri": uri })))?;
            let done = source.wait_migration(MIGRATION_TIMEOUT)?;
            self.qmp(id, to)?.wait_running(MIGRATION_TIMEOUT)?;
            Ok::<Value, String>(done)
        })();
        let _ = fs::remove_file(&sock);
        match result {
            Ok(done) => {
                self.set_slot(id, to)?;
                self.stop_instance(id, from, true);
                log::info!(
                    "VM {id}: live-migrated in {} ms (QEMU total-time {} ms, downtime {} ms)",
                    t0.elapsed().as_millis(),
                    done.get("total-time").and_then(Value::as_u64).unwrap_or(0),
                    done.get("downtime").and_then(Value::as_u64).unwrap_or(0)
                );
                Ok(())
            }
            Err(e) => {
                // The source still has the guest: drop the target, keep running there.
                self.stop_instance(id, to, false);
                if let Ok(mut q) = self.qmp(id, from) {
                    if q.status().is_ok_and(|s| s != "running") {
                        let _ = q.execute("cont", None);
                    }
                }
                Err(format!("VM {id}: live migration: {e}"))
            }
        }
    }

    /// Applies CPU (the share) to the running qemu. MEMORY and VCPU of a running guest
    /// would need hotplug slots; they take effect at the VM's next boot.
    pub fn resize(&self, spec: &BootSpec) -> Result<(), String> {
        self.cgroup.set_share(spec.vm_id, spec.cpu)
    }

    /// A guest restart in place (QMP `system_reset`): same disk and NIC, a new boot.
    pub fn reboot(&self, spec: &BootSpec) -> Result<(), String> {
        let id = spec.vm_id;
        let slot = self.current_slot(id);
        if self.instance_pid(id, slot).is_none() {
            return self.boot(spec);
        }
        self.qmp(id, slot)?
            .execute("system_reset", None)
            .map(|_| ())
    }

    /// Ends every qemu of the VM and removes its taps, cgroup and files. Idempotent.
    pub fn destroy(&self, vm_id: u32) -> Result<(), String> {
        for slot in ['a', 'b'] {
            self.stop_instance(vm_id, slot, false);
        }
        self.cgroup.remove(vm_id)?;
        let dir = self.vm_dir(vm_id);
        // The guest's console outlives it, as oned keeps /var/log/one/<id>.log.
        let console = dir.join("console.log");
        if console.is_file() {
            let logs = self.cfg.run_dir.join("logs");
            let kept = fs::create_dir_all(&logs)
                .and_then(|()| fs::rename(&console, logs.join(format!("vm-{vm_id}.console.log"))));
            if let Err(e) = kept {
                log::warn!("VM {vm_id}: keeping its console log: {e}");
            }
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }

    /// Whether a qemu of the VM runs (monitoring).
    pub fn is_running(&self, vm_id: u32) -> bool {
        ['a', 'b']
            .into_iter()
            .any(|slot| self.instance_pid(vm_id, slot).is_some())
    }

    /// Ids of every VM with a directory here (`vm-<id>`).
    pub fn list_vms(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir(&self.cfg.run_dir) else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = dir
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_prefix("vm-")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Removes the instance's cgroup directory and, if asked, the bridge.
    pub fn shutdown(&self, remove_network: bool) -> Result<(), String> {
        if remove_network {
            self.cgroup.remove_instance_dir();
            self.network.remove_bridge().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_the_share_of_one_period_with_the_kernels_floor() {
        assert_eq!(quota_us(1.0), 100_000);
        assert_eq!(quota_us(0.25), 25_000);
        assert_eq!(quota_us(2.0), 200_000);
        assert_eq!(quota_us(0.001), 1000);
        assert_eq!(quota_us(-1.0), 1000);
    }

    #[test]
    fn a_missing_image_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("worker.qcow2"), b"").unwrap();
        let e = WorkerImage::open(dir.path()).unwrap_err();
        assert!(e.contains("vmlinuz is missing"), "{e}");
        assert!(e.contains("scripts/image"), "{e}");
    }

    #[test]
    fn the_image_cmdline_is_read_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        for f in IMAGE_FILES {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        fs::write(dir.path().join("cmdline"), "root=/dev/vda console=ttyS0\n").unwrap();
        let img = WorkerImage::open(dir.path()).unwrap();
        assert_eq!(img.cmdline, "root=/dev/vda console=ttyS0");
        assert_eq!(img.disk, dir.path().join("worker.qcow2"));
    }

    #[test]
    fn slots_alternate() {
        assert_eq!(other('a'), 'b');
        assert_eq!(other('b'), 'a');
    }

    /// A QMP peer speaking the protocol on a socketpair: greeting, capabilities, an event
    /// before an answer, and an error.
    #[test]
    fn qmp_skips_events_and_reports_errors() {
        use std::io::Read as _;
        let (ours, theirs) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            w.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-status"), "{line}");
            w.write_all(b"{\"event\": \"RESUME\", \"timestamp\": {}}\n{\"return\": {\"status\": \"running\", \"running\": true}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"migrate\""), "{line}");
            w.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n")
                .unwrap();
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
        });
        let writer = ours.try_clone().unwrap();
        let mut qmp = Qmp {
            reader: BufReader::new(ours),
            writer,
        };
        let greeting = qmp.read_message().unwrap();
        assert!(greeting.get("QMP").is_some());
        qmp.execute("qmp_capabilities", None).unwrap();
        assert_eq!(qmp.status().unwrap(), "running");
        let e = qmp
            .execute("migrate", Some(json!({"uri": "unix:/x"})))
            .unwrap_err();
        assert_eq!(e, "QMP migrate: no");
        drop(qmp);
        peer.join().unwrap();
    }
}
