//! The `ns` driver of one-sim: each VM is a set of Linux namespaces that real software
//! (slurmd) can run in.
//!
//! A VM `<id>` of a one-sim instance with tag `<tag>` consists of:
//! - the network namespace `one<tag>-<id>` (`/run/netns/`), with `lo` and `eth0` (the VM's
//!   IP, MAC and a default route via the bridge address), linked by a veth pair to the host
//!   end [`host_veth_name`] on the bridge;
//! - the keeper: [`vm_init_main`] running in that netns plus its own UTS (hostname), mount
//!   and time (fresh uptime) namespaces. It runs the start script as one-context does,
//!   writes the `ready` marker, then stays alive as the VM's "init" (child subreaper) so the
//!   namespaces live on. Its process tree is detached from one-sim (own session, clean
//!   environment, stdio on `/dev/null`), so VMs outlive one-sim;
//! - the VM's context directory, bind-mounted inside the VM at [`CONTEXT_DIR`] (the
//!   directory where one-context keeps `context.sh`), holding `context.sh`;
//! - a cgroup `one-sim-<tag>/vm-<id>` in the v1 `freezer` hierarchy (else cgroup v2, else
//!   none) that the keeper and every [`NsDriver::command_in`] process join.
//!
//! Everything the driver needs to find a VM again lives in `run_dir/vm-<id>/` (`vm.json`,
//! `keeper.json`, `ready`, `suspended.json`, `init.log`, `start-script`,
//! `start-script.log`, `context/`) and in `/run/netns`, so a new [`NsDriver`] with the same
//! [`NsConfig`] adopts the VMs of an earlier one-sim process.
//!
//! The VMs share the host's root filesystem (munge socket, slurm.conf, plugins), so the
//! only host-visible trace of the mount namespaces is the empty mount point
//! `/run/one-context`, created once and left in place.
//!
//! Calls for one VM are not serialised here: the caller must not run, say, `suspend` and
//! `destroy` of the same VM at once. Calls for different VMs may run in parallel.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Directory inside every VM where its context directory is bind-mounted: one-context's
/// runtime directory (`/var/run/one-context`, and `/var/run` is `/run`). Software inside
/// the VM (the SPANK plugin) reads [`CONTEXT_FILE`] there.
pub const CONTEXT_DIR: &str = "/run/one-context";

/// `context.sh` inside every VM (`KEY='value'` lines, as oned writes them). The same
/// content is also at `context.sh.local` and `context.sh.network` beside it, the names
/// one-context leaves in its runtime directory on a real guest.
pub use one_proto::CONTEXT_FILE;

/// `PATH` given to the keeper, the start script and nothing else.
const SANE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bound for one `ip` invocation (2 shared cores can be slow).
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for the init's first stage to report that the keeper's namespaces are set up.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for killing every process of a VM.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for the cgroup freezer to report FROZEN / THAWED.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// one-context waits for the start script without limit; we stop waiting after an hour.
const START_SCRIPT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Linux interface names hold at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// Linux hostnames hold at most 64 bytes.
const HOSTNAME_MAX: usize = 64;

const NETNS_DIR: &str = "/run/netns";
const SPEC_FILE: &str = "vm.json";
const KEEPER_FILE: &str = "keeper.json";
const READY_FILE: &str = "ready";
const SUSPEND_FILE: &str = "suspended.json";
const INIT_LOG: &str = "init.log";
const SCRIPT_FILE: &str = "start-script";
const SCRIPT_LOG: &str = "start-script.log";
const CONTEXT_SUBDIR: &str = "context";
const BRIDGE_FILE: &str = "bridge.json";

/// Configuration of one one-sim instance's `ns` driver.
#[derive(Debug, Clone)]
pub struct NsConfig {
    /// Bridge the VMs' host-side veths join, e.g. `onebr0` (at most 15 bytes).
    pub bridge: String,
    /// Address of the bridge and default gateway of the VMs, e.g. 10.77.0.1.
    pub gateway: Ipv4Addr,
    /// Prefix length of the VM network, e.g. 24.
    pub prefix_len: u8,
    /// 1-4 chars of `[a-z0-9]`, unique per one-sim instance; part of netns, veth and cgroup
    /// names.
    pub tag: String,
    /// Per-instance directory for VM files (context, scripts, markers, pid files).
    pub run_dir: PathBuf,
    /// argv prefix that runs [`vm_init_main`]; the driver appends the VM directory.
    pub init_program: Vec<OsString>,
}

/// What [`NsDriver::boot`] needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmBoot {
    /// OpenNebula VM id.
    pub vm_id: u32,
    /// Address of `eth0` (inside the bridge's network).
    pub ip: Ipv4Addr,
    /// MAC of `eth0` (`aa:bb:cc:dd:ee:ff`); empty keeps the kernel's random one.
    pub mac: String,
    /// Hostname as given in CONTEXT; sanitised as one-context does.
    pub hostname: String,
    /// Final CONTEXT key/values (incl. VMID and ETH0_*), written to `context.sh` in order.
    pub context: Vec<(String, String)>,
    /// Decoded START_SCRIPT / START_SCRIPT_BASE64.
    pub start_script: Option<Vec<u8>>,
    /// REPORT_READY=YES: write the `ready` marker once the start script has finished.
    pub report_ready: bool,
}

/// Errors of the `ns` driver; each names the step and, where there is one, the VM.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// The driver cannot work on this host or with this configuration.
    #[error("ns driver: {step}: {detail}")]
    Setup {
        /// What was being checked or done.
        step: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// A step on the bridge failed.
    #[error("ns bridge {bridge}: {step}: {detail}")]
    Bridge {
        /// Bridge name.
        bridge: String,
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// A step on one VM failed.
    #[error("ns vm {vm_id}: {step}: {detail}")]
    Vm {
        /// VM id.
        vm_id: u32,
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// The VM has no live keeper process.
    #[error("ns vm {vm_id}: {step}: VM is not running")]
    NotRunning {
        /// VM id.
        vm_id: u32,
        /// What was being done.
        step: &'static str,
    },
}

fn vm_err(vm_id: u32, step: &'static str, detail: impl ToString) -> NsError {
    NsError::Vm {
        vm_id,
        step,
        detail: detail.to_string(),
    }
}

/// Name of the VM's network namespace: `one<tag>-<id>`.
pub fn netns_name(tag: &str, vm_id: u32) -> String {
    format!("one{tag}-{vm_id}")
}

/// Name of the host end of the VM's veth pair: `o<tag>-<id in hex>`, at most 14 bytes (a
/// decimal u32 would not fit IFNAMSIZ with a 4-char tag).
pub fn host_veth_name(tag: &str, vm_id: u32) -> String {
    format!("o{tag}-{vm_id:x}")
}

/// `context.sh` as oned writes it: `KEY='value'` lines, `'` written as `'\''`. Keys that
/// are not shell variable names are left out (a shell could not read them back).
pub fn context_sh(pairs: &[(String, String)]) -> String {
    let mut out = String::from("# Context variables generated by OpenNebula\n");
    for (key, value) in pairs {
        if !is_var_name(key) {
            continue;
        }
        out.push_str(key);
        out.push_str("='");
        out.push_str(&value.replace('\'', "'\\''"));
        out.push_str("'\n");
    }
    out
}

/// The hostname the VM gets, as one-context's `net-15-hostname` derives it: characters
/// outside `[-a-zA-Z0-9.]` become `-`, leading/trailing `-` go, and Linux guests take the
/// part before the first `.`. Falls back to `vm<id>` when nothing is left.
pub fn vm_hostname(requested: &str, vm_id: u32) -> String {
    let replaced: String = requested
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = replaced.trim_matches('-');
    let mut host = trimmed.split('.').next().unwrap_or("").to_string();
    host.truncate(HOSTNAME_MAX);
    if host.is_empty() {
        format!("vm{vm_id}")
    } else {
        host
    }
}

fn is_var_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Environment of the start script: one-context exports every context variable and
/// MOUNT_DIR / RUNTIME_DIR / CONTEXT_FILE, in a C locale.
fn start_script_env(pairs: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), SANE_PATH.into()),
        ("HOME".into(), "/root".into()),
        ("LANG".into(), "C".into()),
        ("LC_ALL".into(), "C".into()),
        ("MOUNT_DIR".into(), CONTEXT_DIR.into()),
        ("RUNTIME_DIR".into(), CONTEXT_DIR.into()),
        ("CONTEXT_FILE".into(), CONTEXT_FILE.into()),
    ];
    for (key, value) in pairs {
        if is_var_name(key) && !value.contains('\0') {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
    }
    env
}

fn valid_tag(tag: &str) -> bool {
    (1..=4).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn valid_ifname(name: &str) -> bool {
    (1..=IFNAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------
// Running programs with a bound
// ---------------------------------------------------------------------------------------

/// What a finished command printed.
pub(super) struct Output {
    pub(super) stdout: Vec<u8>,
    #[allow(dead_code)]
    stderr: Vec<u8>,
}

pub(super) fn show_argv<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs argv (no shell) with stdin from /dev/null; fails on spawn error, timeout or a
/// non-zero exit, with the command and its stderr in the message.
pub(super) fn run<S: AsRef<OsStr>>(argv: &[S], timeout: Duration) -> Result<Output, String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(prog);
    cmd.args(args).env("LC_ALL", "C");
    run_command(cmd, timeout, show_argv(argv))
}

pub(super) fn run_command(
    mut cmd: Command,
    timeout: Duration,
    shown: String,
) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("`{shown}`: cannot start: {e}"))?;
    // Readers in threads so a chatty command cannot block on a full pipe; channels so a
    // grandchild that keeps a pipe open cannot block us past the bound.
    let (tx_out, rx_out) = mpsc::channel();
    let (tx_err, rx_err) = mpsc::channel();
    if let Some(mut s) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let _ = tx_out.send(buf);
        });
    }
    if let Some(mut s) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let _ = tx_err.send(buf);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(st)) => st,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("`{shown}`: timed out after {timeout:?}"));
        }
        Err(e) => return Err(format!("`{shown}`: wait: {e}")),
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(200));
    let stdout = rx_out.recv_timeout(left).unwrap_or_default();
    let stderr = rx_err
        .recv_timeout(Duration::from_millis(200))
        .unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "`{shown}`: {status}: {}",
            String::from_utf8_lossy(&stderr).trim()
        ));
    }
    Ok(Output { stdout, stderr })
}

/// Polls `child` until it exits or `deadline` passes (`Ok(None)`).
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

pub(super) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(SANE_PATH))
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

// ---------------------------------------------------------------------------------------
// Small file and /proc helpers
// ---------------------------------------------------------------------------------------

pub(super) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    fs::rename(&tmp, path)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &data, 0o644)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let data = fs::read(path)?;
    serde_json::from_slice(&data).map_err(io::Error::other)
}

/// State letter and start time (clock ticks after boot) from `/proc/<pid>/stat`.
pub(super) fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and ')', so parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// (device, inode) of a namespace file; equal pairs mean the same namespace.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn c_path(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("NUL in path {}", p.display()))
}

// ---------------------------------------------------------------------------------------
// cgroups
// ---------------------------------------------------------------------------------------

/// One VM's cgroup directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cgroup {
    path: PathBuf,
    v2: bool,
}

impl Cgroup {
    fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn request_frozen(&self, frozen: bool) -> io::Result<()> {
        if self.v2 {
            fs::write(
                self.path.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            )
        } else {
            fs::write(
                self.path.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            )
        }
    }

    fn is_frozen(&self) -> bool {
        if self.v2 {
            fs::read_to_string(self.path.join("cgroup.events"))
                .map(|s| s.lines().any(|l| l.trim() == "frozen 1"))
                .unwrap_or(false)
        } else {
            fs::read_to_string(self.path.join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false)
        }
    }

    fn set_frozen_wait(&self, frozen: bool) -> Result<(), String> {
        self.request_frozen(frozen)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        while self.is_frozen() != frozen {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: still not {} after {FREEZE_TIMEOUT:?}",
                    self.path.display(),
                    if frozen { "frozen" } else { "thawed" }
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// Root of the hierarchy we put VM cgroups in.
#[derive(Debug, Clone)]
struct CgroupBase {
    root: PathBuf,
    v2: bool,
}

fn detect_cgroup_bases() -> Vec<CgroupBase> {
    let mut bases = Vec::new();
    let v1 = Path::new("/sys/fs/cgroup/freezer");
    if v1.join("tasks").exists() {
        bases.push(CgroupBase {
            root: v1.to_path_buf(),
            v2: false,
        });
    }
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if Path::new(root).join("cgroup.controllers").exists() {
            bases.push(CgroupBase {
                root: PathBuf::from(root),
                v2: true,
            });
            break;
        }
    }
    bases
}

// ---------------------------------------------------------------------------------------
// Files shared by the driver and the VM init
// ---------------------------------------------------------------------------------------

/// What the VM init needs; written by `boot` to `vm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmSpec {
    vm_id: u32,
    netns: String,
    host_veth: String,
    hostname: String,
    report_ready: bool,
    start_script: bool,
    start_script_timeout_secs: u64,
    env: Vec<(String, String)>,
    cgroup: Option<Cgroup>,
}

/// The keeper's identity; pid plus start time so a recycled pid is not taken for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeeperInfo {
    pid: i32,
    start_time: u64,
    time_ns: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SuspendState {
    cgroup_frozen: bool,
    /// (pid, start time) of processes we sent SIGSTOP.
    stopped: Vec<(i32, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BridgeState {
    bridge: String,
    created: bool,
}

/// Open handles on a running VM's namespaces: while held, the kernel cannot hand their
/// inode numbers to new namespaces, so comparing inodes cannot hit a stranger.
struct NsPins {
    ids: Vec<(u64, u64)>,
    _files: Vec<File>,
}

// ---------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------

/// The `ns` driver: boots, suspends, resumes and destroys namespace VMs of one one-sim
/// instance, and adopts the ones an earlier process left running.
#[derive(Debug)]
pub struct NsDriver {
    cfg: NsConfig,
    ip: PathBuf,
    nsenter: PathBuf,
    /// util-linux < 2.36 has no `nsenter --time`.
    nsenter_time: bool,
    cgroup_bases: Vec<CgroupBase>,
}

impl NsDriver {
    /// Checks the configuration, that we are root and that `ip` and `nsenter` exist, and
    /// creates `run_dir`.
    pub fn new(cfg: NsConfig) -> Result<Self, NsError> {
        let setup = |step, detail: String| NsError::Setup { step, detail };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(setup("check root", "must run as root".into()));
        }
        if !valid_tag(&cfg.tag) {
            return Err(setup(
                "check tag",
                format!("{:?} is not 1-4 chars of [a-z0-9]", cfg.tag),
            ));
        }
        if !valid_ifname(&cfg.bridge) {
            return Err(setup(
                "check bridge name",
                format!("{:?} is not a valid interface name", cfg.bridge),
            ));
        }
        if !(1..=30).contains(&cfg.prefix_len) {
            return Err(setup(
                "check prefix",
                format!("/{} is not in 1..=30", cfg.prefix_len),
            ));
        }
        if cfg.init_program.is_empty() {
            return Err(setup("check init program", "init_program is empty".into()));
        }
        let ip = find_tool("ip").ok_or_else(|| setup("find tools", "`ip` not found".into()))?;
        let nsenter = find_tool("nsenter")
            .ok_or_else(|| setup("find tools", "`nsenter` not found".into()))?;
        let nsenter_time = run(&[nsenter.as_os_str(), OsStr::new("--help")], CMD_TIMEOUT)
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--time"))
            .unwrap_or(false);
        fs::create_dir_all(&cfg.run_dir)
            .map_err(|e| setup("create run_dir", format!("{}: {e}", cfg.run_dir.display())))?;
        Ok(NsDriver {
            cfg,
            ip,
            nsenter,
            nsenter_time,
            cgroup_bases: detect_cgroup_bases(),
        })
    }

    /// The configuration this driver was made with.
    pub fn config(&self) -> &NsConfig {
        &self.cfg
    }

    fn bridge_err(&self, step: &'static str, detail: impl ToString) -> NsError {
        NsError::Bridge {
            bridge: self.cfg.bridge.clone(),
            step,
            detail: detail.to_string(),
        }
    }

    fn ip_cmd(&self, args: &[&str]) -> Result<Output, String> {
        let mut argv: Vec<&OsStr> = vec![self.ip.as_os_str()];
        argv.extend(args.iter().map(OsStr::new));
        run(&argv, CMD_TIMEOUT)
    }

    fn sys_net(name: &str) -> PathBuf {
        Path::new("/sys/class/net").join(name)
    }

    /// Creates the bridge with `gateway/prefix_len` if missing (remembering in run_dir that
    /// we made it), adds the address if it lacks it, and sets it up. Idempotent.
    ///
    /// On a bridge we create we also pin its MAC (else it follows the lowest port MAC and
    /// changes as VMs come and go, leaving stale ARP entries in the VMs), drop the
    /// forward delay and turn off br_netfilter's iptables calls so VM-to-VM frames are not
    /// filtered by host firewall rules. Host<->VM traffic needs nothing else.
    pub fn ensure_bridge(&self) -> Result<(), NsError> {
        let br = self.cfg.bridge.as_str();
        let dev = Self::sys_net(br);
        if !dev.exists() {
            // Marker first: if we crash right after creating, remove_bridge still knows.
            write_json(
                &self.cfg.run_dir.join(BRIDGE_FILE),
                &BridgeState {
                    bridge: br.to_string(),
                    created: true,
                },
            )
            .map_err(|e| self.bridge_err("remember bridge", e))?;
            if let Err(e) = self.ip_cmd(&["link", "add", "name", br, "type", "bridge"]) {
                if !dev.exists() {
                    let _ = fs::remove_file(self.cfg.run_dir.join(BRIDGE_FILE));
                    return Err(self.bridge_err("create bridge", e));
                }
            }
            if let Ok(mac) = fs::read_to_string(dev.join("address")) {
                if let Err(e) = self.ip_cmd(&["link", "set", br, "address", mac.trim()]) {
                    log::warn!("ns bridge {br}: pin MAC: {e}");
                }
            }
            for knob in [
                "forward_delay",
                "nf_call_iptables",
                "nf_call_ip6tables",
                "nf_call_arptables",
            ] {
                let path = dev.join("bridge").join(knob);
                if path.exists() {
                    if let Err(e) = fs::write(&path, "0") {
                        log::warn!("ns bridge {br}: {knob}=0: {e}");
                    }
                }
            }
        }
        if !dev.join("bridge").exists() {
            return Err(self.bridge_err("check bridge", "exists but is not a bridge"));
        }
        if !self.bridge_has_gateway()? {
            let cidr = format!("{}/{}", self.cfg.gateway, self.cfg.prefix_len);
            self.ip_cmd(&["addr", "add", &cidr, "dev", br])
                .map_err(|e| self.bridge_err("add gateway address", e))?;
        }
        self.ip_cmd(&["link", "set", br, "up"])
            .map_err(|e| self.bridge_err("set bridge up", e))?;
        Ok(())
    }

    fn bridge_has_gateway(&self) -> Result<bool, NsError> {
        let out = self
            .ip_cmd(&["-j", "-4", "addr", "show", "dev", &self.cfg.bridge])
            .map_err(|e| self.bridge_err("read bridge addresses", e))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| self.bridge_err("parse bridge addresses", e))?;
        let gw = self.cfg.gateway.to_string();
        let found = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|link| link.get("addr_info")?.as_array())
            .flatten()
            .any(|a| {
                a.get("local").and_then(|l| l.as_str()) == Some(gw.as_str())
                    && a.get("prefixlen").and_then(|p| p.as_u64())
                        == Some(u64::from(self.cfg.prefix_len))
            });
        Ok(found)
    }

    /// Deletes the bridge if [`ensure_bridge`](Self::ensure_bridge) created it (per the
    /// marker in run_dir); a bridge that existed before is left alone. Destroy the VMs
    /// first: their veths would merely lose the bridge.
    pub fn remove_bridge(&self) -> Result<(), NsError> {
        let marker = self.cfg.run_dir.join(BRIDGE_FILE);
        let state: BridgeState = match read_json(&marker) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.bridge_err("read bridge marker", e)),
        };
        if state.created && state.bridge == self.cfg.bridge && Self::sys_net(&state.bridge).exists()
        {
            if let Err(e) = self.ip_cmd(&["link", "del", &state.bridge]) {
                if Self::sys_net(&state.bridge).exists() {
                    return Err(self.bridge_err("delete bridge", e));
                }
            }
        }
        fs::remove_file(&marker).map_err(|e| self.bridge_err("remove bridge marker", e))?;
        for base in &self.cgroup_bases {
            let _ = fs::remove_dir(self.tag_cgroup_dir(base));
        }
        Ok(())
    }

    fn vm_dir(&self, vm_id: u32) -> PathBuf {
        self.cfg.run_dir.join(format!("vm-{vm_id}"))
    }

    fn netns_path(&self, vm_id: u32) -> PathBuf {
        Path::new(NETNS_DIR).join(netns_name(&self.cfg.tag, vm_id))
    }

    fn tag_cgroup_dir(&self, base: &CgroupBase) -> PathBuf {
        base.root.join(format!("one-sim-{}", self.cfg.tag))
    }

    fn cgroup_for(&self, base: &CgroupBase, vm_id: u32) -> Cgroup {
        Cgroup {
            path: self.tag_cgroup_dir(base).join(format!("vm-{vm_id}")),
            v2: base.v2,
        }
    }

    fn spec(&self, vm_id: u32) -> Option<VmSpec> {
        read_json(&self.vm_dir(vm_id).join(SPEC_FILE)).ok()
    }

    /// Cgroup dirs of the VM that exist: the recorded one and, for half-created VMs, the
    /// ones it would have had.
    fn existing_cgroups(&self, vm_id: u32) -> Vec<Cgroup> {
        let mut cgs: Vec<Cgroup> = self
            .spec(vm_id)
            .and_then(|s| s.cgroup)
            .into_iter()
            .collect();
        for base in &self.cgroup_bases {
            let cg = self.cgroup_for(base, vm_id);
            if !cgs.iter().any(|c| c.path == cg.path) {
                cgs.push(cg);
            }
        }
        cgs.retain(|c| c.path.is_dir());
        cgs
    }

    /// Makes the VM's cgroup in the first hierarchy that supports freezing.
    fn make_cgroup(&self, vm_id: u32) -> Option<Cgroup> {
        for base in &self.cgroup_bases {
            let cg = self.cgroup_for(base, vm_id);
            // Retry once: a concurrent destroy may remove the empty tag dir in between.
            let made = fs::create_dir_all(&cg.path).or_else(|_| fs::create_dir_all(&cg.path));
            if let Err(e) = made {
                log::warn!("ns vm {vm_id}: cgroup {}: {e}", cg.path.display());
                continue;
            }
            let knob = if cg.v2 {
                "cgroup.freeze"
            } else {
                "freezer.state"
            };
            if cg.path.join(knob).exists() {
                return Some(cg);
            }
            let _ = fs::remove_dir(&cg.path);
        }
        None
    }

    fn keeper(&self, vm_id: u32) -> Option<KeeperInfo> {
        let info: KeeperInfo = read_json(&self.vm_dir(vm_id).join(KEEPER_FILE)).ok()?;
        match proc_stat(info.pid) {
            Some((state, start)) if start == info.start_time && state != 'Z' && state != 'X' => {
                Some(info)
            }
            _ => None,
        }
    }

    /// Pid of the VM's keeper process, if it is alive.
    pub fn keeper_pid(&self, vm_id: u32) -> Option<u32> {
        self.keeper(vm_id).map(|k| k.pid as u32)
    }

    /// Opens the VM's netns and, if the keeper lives, its uts and mnt namespaces.
    fn pin_namespaces(&self, vm_id: u32) -> NsPins {
        let mut pins = NsPins {
            ids: Vec::new(),
            _files: Vec::new(),
        };
        let add = |pins: &mut NsPins, path: &Path| {
            if let Ok(f) = File::open(path) {
                if let Ok(m) = f.metadata() {
                    pins.ids.push((m.dev(), m.ino()));
                    pins._files.push(f);
                }
            }
        };
        add(&mut pins, &self.netns_path(vm_id));
        if let Some(k) = self.keeper(vm_id) {
            let mut keeper_pins = NsPins {
                ids: Vec::new(),
                _files: Vec::new(),
            };
            for kind in ["uts", "mnt"] {
                add(
                    &mut keeper_pins,
                    Path::new(&format!("/proc/{}/ns/{kind}", k.pid)),
                );
            }
            // Had the keeper died (and its pid been reused) before the open, these could
            // be a stranger's namespaces.
            if self.keeper(vm_id).is_some() {
                pins.ids.extend(keeper_pins.ids);
                pins._files.extend(keeper_pins._files);
            }
        }
        pins
    }

    /// Processes of the VM: in its cgroups, or sharing one of its pinned namespaces.
    fn member_pids(&self, pins: &NsPins, cgroups: &[Cgroup]) -> BTreeSet<i32> {
        let me = std::process::id() as i32;
        let mut pids: BTreeSet<i32> = cgroups.iter().flat_map(|c| c.procs()).collect();
        if !pins.ids.is_empty() {
            for pid in all_pids() {
                if pids.contains(&pid) || pid == me {
                    continue;
                }
                let hit = ["net", "uts", "mnt"].iter().any(|kind| {
                    ns_id(Path::new(&format!("/proc/{pid}/ns/{kind}")))
                        .is_some_and(|id| pins.ids.contains(&id))
                });
                if hit {
                    pids.insert(pid);
                }
            }
        }
        pids.remove(&me);
        // Zombies are gone for our purposes; their parent reaps them.
        pids.retain(|&p| matches!(proc_stat(p), Some((s, _)) if s != 'Z' && s != 'X'));
        pids
    }

    /// Every live process of the VM (keeper, start script's daemons, `command_in`
    /// processes), by cgroup and namespace membership.
    pub fn pids(&self, vm_id: u32) -> Vec<u32> {
        let pins = self.pin_namespaces(vm_id);
        self.member_pids(&pins, &self.existing_cgroups(vm_id))
            .into_iter()
            .map(|p| p as u32)
            .collect()
    }

    /// Boots VM `vm.vm_id`: netns, veth on the bridge, eth0 with address and default
    /// route, lo up, context dir, then the init launched fully detached. Returns once the
    /// keeper's namespaces are set up (well under a second); the start script runs on in
    /// the background ([`is_ready`](Self::is_ready) tells when it is done). Leftovers of an
    /// earlier VM with this id are cleaned first; a running one is an error. On failure
    /// whatever was made is removed again.
    pub fn boot(&self, vm: &VmBoot) -> Result<(), NsError> {
        let id = vm.vm_id;
        if self.is_running(id) {
            return Err(vm_err(id, "boot", "a VM with this id is running"));
        }
        if !vm.mac.is_empty() && !valid_mac(&vm.mac) {
            return Err(vm_err(
                id,
                "check MAC",
                format!("{:?} is not a MAC", vm.mac),
            ));
        }
        if self.netns_path(id).exists() || self.vm_dir(id).exists() {
            self.destroy(id)?;
        }
        let result = self.boot_steps(vm);
        if result.is_err() {
            if let Err(e) = self.destroy(id) {
                log::warn!("cleanup after failed boot: {e}");
            }
        }
        result
    }

    fn boot_steps(&self, vm: &VmBoot) -> Result<(), NsError> {
        let id = vm.vm_id;
        let dir = self.vm_dir(id);
        let netns = netns_name(&self.cfg.tag, id);
        let veth = host_veth_name(&self.cfg.tag, id);

        let ctx_dir = dir.join(CONTEXT_SUBDIR);
        fs::create_dir_all(&ctx_dir).map_err(|e| vm_err(id, "create VM dir", e))?;
        for d in [&dir, &ctx_dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .map_err(|e| vm_err(id, "create VM dir", e))?;
        }
        // World-readable like the context CD: the SPANK plugin may read it as the job user.
        let ctx = context_sh(&vm.context);
        for name in ["context.sh", "context.sh.local", "context.sh.network"] {
            write_atomic(&ctx_dir.join(name), ctx.as_bytes(), 0o644)
                .map_err(|e| vm_err(id, "write context.sh", e))?;
        }
        if let Some(script) = &vm.start_script {
            write_atomic(&dir.join(SCRIPT_FILE), script, 0o700)
                .map_err(|e| vm_err(id, "write start script", e))?;
        }
        let cgroup = self.make_cgroup(id);
        let spec = VmSpec {
            vm_id: id,
            netns: netns.clone(),
            host_veth: veth.clone(),
            hostname: vm_hostname(&vm.hostname, id),
            report_ready: vm.report_ready,
            start_script: vm.start_script.is_some(),
            start_script_timeout_secs: START_SCRIPT_TIMEOUT.as_secs(),
            env: start_script_env(&vm.context),
            cgroup,
        };
        write_json(&dir.join(SPEC_FILE), &spec).map_err(|e| vm_err(id, "write vm.json", e))?;

        let ip = |step: &'static str, args: &[&str]| {
            self.ip_cmd(args)
                .map(|_| ())
                .map_err(|e| vm_err(id, step, e))
        };
        let cidr = format!("{}/{}", vm.ip, self.cfg.prefix_len);
        let gw = self.cfg.gateway.to_string();
        ip("create netns", &["netns", "add", &netns])?;
        ip(
            "create veth",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )?;
        if !vm.mac.is_empty() {
            ip(
                "set MAC",
                &["-n", &netns, "link", "set", "eth0", "address", &vm.mac],
            )?;
        }
        ip(
            "attach veth to bridge",
            &["link", "set", &veth, "master", &self.cfg.bridge],
        )?;
        ip("set veth up", &["link", "set", &veth, "up"])?;
        ip(
            "set eth0 address",
            &["-n", &netns, "addr", "add", &cidr, "dev", "eth0"],
        )?;
        ip("set lo up", &["-n", &netns, "link", "set", "lo", "up"])?;
        ip("set eth0 up", &["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(
            "add default route",
            &["-n", &netns, "route", "add", "default", "via", &gw],
        )?;

        self.launch_init(id, &dir)
    }

    fn launch_init(&self, id: u32, dir: &Path) -> Result<(), NsError> {
        let (prog, args) = self
            .cfg
            .init_program
            .split_first()
            .ok_or_else(|| vm_err(id, "launch init", "init_program is empty"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .arg(dir)
            .env_clear()
            .env("PATH", SANE_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| {
            vm_err(
                id,
                "launch init",
                format!("{}: {e}", prog.to_string_lossy()),
            )
        })?;
        // The first stage exits as soon as the keeper reports its namespaces are ready.
        match wait_until(&mut child, Instant::now() + INIT_TIMEOUT) {
            Ok(Some(st)) if st.success() => {}
            Ok(Some(st)) => {
                return Err(vm_err(
                    id,
                    "start init",
                    format!("{st}: {}", last_log_lines(&dir.join(INIT_LOG), 3)),
                ))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(vm_err(
                    id,
                    "start init",
                    format!("no report within {INIT_TIMEOUT:?}"),
                ));
            }
            Err(e) => return Err(vm_err(id, "start init", e)),
        }
        if self.keeper(id).is_none() {
            return Err(vm_err(id, "start init", "keeper is not alive"));
        }
        Ok(())
    }

    /// True once the VM's `ready` marker exists (REPORT_READY after the start script).
    pub fn is_ready(&self, vm_id: u32) -> bool {
        self.vm_dir(vm_id).join(READY_FILE).exists()
    }

    /// True while the VM's keeper process is alive.
    pub fn is_running(&self, vm_id: u32) -> bool {
        self.keeper(vm_id).is_some()
    }

    /// True between a successful [`suspend`](Self::suspend) and the next
    /// [`resume`](Self::resume).
    pub fn is_suspended(&self, vm_id: u32) -> bool {
        self.vm_dir(vm_id).join(SUSPEND_FILE).exists()
    }

    /// Freezes every process of the VM: its cgroup through the freezer (v1
    /// `freezer.state`, or v2 `cgroup.freeze`), and SIGSTOP for VM processes outside it
    /// (or for all when no freezer works).
    pub fn suspend(&self, vm_id: u32) -> Result<(), NsError> {
        const STEP: &str = "suspend";
        if !self.is_running(vm_id) {
            return Err(NsError::NotRunning { vm_id, step: STEP });
        }
        let pins = self.pin_namespaces(vm_id);
        let mut state = SuspendState::default();
        let mut in_cgroup = BTreeSet::new();
        if let Some(cg) = self.spec(vm_id).and_then(|s| s.cgroup) {
            match cg.set_frozen_wait(true) {
                Ok(()) => {
                    state.cgroup_frozen = true;
                    in_cgroup.extend(cg.procs());
                }
                Err(e) => {
                    log::warn!("ns vm {vm_id}: freezer failed, using SIGSTOP: {e}");
                    let _ = cg.set_frozen_wait(false);
                }
            }
        }
        // Several rounds: a process may fork between listing and stopping.
        for _ in 0..5 {
            let todo: Vec<i32> = self
                .member_pids(&pins, &[])
                .into_iter()
                .filter(|p| !in_cgroup.contains(p) && !state.stopped.iter().any(|s| s.0 == *p))
                .collect();
            if todo.is_empty() {
                break;
            }
            for pid in todo {
                if let Some((_, start)) = proc_stat(pid) {
                    // SAFETY: plain kill(2) on a pid we just listed.
                    if unsafe { libc::kill(pid, libc::SIGSTOP) } == 0 {
                        state.stopped.push((pid, start));
                    }
                }
            }
        }
        write_json(&self.vm_dir(vm_id).join(SUSPEND_FILE), &state)
            .map_err(|e| vm_err(vm_id, STEP, format!("record suspend state: {e}")))
    }

    /// Thaws what [`suspend`](Self::suspend) froze. Idempotent.
    pub fn resume(&self, vm_id: u32) -> Result<(), NsError> {
        const STEP: &str = "resume";
        let dir = self.vm_dir(vm_id);
        if !dir.exists() && !self.netns_path(vm_id).exists() {
            return Err(NsError::NotRunning { vm_id, step: STEP });
        }
        let mut first_err = None;
        for cg in self.existing_cgroups(vm_id) {
            if let Err(e) = cg.set_frozen_wait(false) {
                first_err.get_or_insert(vm_err(vm_id, STEP, e));
            }
        }
        let marker = dir.join(SUSPEND_FILE);
        if let Ok(state) = read_json::<SuspendState>(&marker) {
            for (pid, start) in state.stopped {
                if proc_stat(pid).is_some_and(|(_, s)| s == start) {
                    // SAFETY: plain kill(2) on a pid whose start time we checked.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }
            }
        }
        if let Err(e) = fs::remove_file(&marker) {
            if e.kind() != io::ErrorKind::NotFound {
                first_err.get_or_insert(vm_err(vm_id, STEP, format!("remove marker: {e}")));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Ends every process of the VM (SIGKILL to all members of its cgroup and namespaces,
    /// frozen first so nothing forks away, until none is left or 10 s pass), then deletes
    /// the netns, the veth, the cgroup and the VM's files. Idempotent; copes with a
    /// half-created VM. Every step is tried; the first error is returned.
    pub fn destroy(&self, vm_id: u32) -> Result<(), NsError> {
        let mut first_err: Option<NsError> = None;
        let mut note = |e: NsError| {
            log::warn!("{e}");
            first_err.get_or_insert(e);
        };
        let cgroups = self.existing_cgroups(vm_id);
        {
            let pins = self.pin_namespaces(vm_id);
            let deadline = Instant::now() + KILL_TIMEOUT;
            loop {
                for cg in &cgroups {
                    let _ = cg.request_frozen(true);
                }
                let pids = self.member_pids(&pins, &cgroups);
                if pids.is_empty() {
                    break;
                }
                for &pid in &pids {
                    // SAFETY: plain kill(2) on a pid we just listed as the VM's.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                // v1-frozen tasks only die once thawed.
                for cg in &cgroups {
                    let _ = cg.request_frozen(false);
                }
                if Instant::now() >= deadline {
                    note(vm_err(
                        vm_id,
                        "kill processes",
                        format!("still alive after {KILL_TIMEOUT:?}: {pids:?}"),
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            for cg in &cgroups {
                let _ = cg.request_frozen(false);
            }
        }

        let netns = netns_name(&self.cfg.tag, vm_id);
        if self.netns_path(vm_id).exists() {
            if let Err(e) = self.ip_cmd(&["netns", "del", &netns]) {
                if self.netns_path(vm_id).exists() {
                    note(vm_err(vm_id, "delete netns", e));
                }
            }
        }
        let veth = host_veth_name(&self.cfg.tag, vm_id);
        if Self::sys_net(&veth).exists() {
            if let Err(e) = self.ip_cmd(&["link", "del", &veth]) {
                if Self::sys_net(&veth).exists() {
                    note(vm_err(vm_id, "delete veth", e));
                }
            }
        }
        for cg in &cgroups {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match fs::remove_dir(&cg.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // Killed tasks may take a moment to leave the cgroup.
                    Err(e) if Instant::now() >= deadline => {
                        note(vm_err(
                            vm_id,
                            "remove cgroup",
                            format!("{}: {e}", cg.path.display()),
                        ));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            if let Some(parent) = cg.path.parent() {
                // Fails while other VMs of this tag exist; that is fine.
                let _ = fs::remove_dir(parent);
            }
        }
        let dir = self.vm_dir(vm_id);
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                note(vm_err(
                    vm_id,
                    "remove VM dir",
                    format!("{}: {e}", dir.display()),
                ));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Ids of this instance's VMs of which anything is left: a netns `one<tag>-<id>`, a
    /// keeper, or a VM directory. Use [`is_running`](Self::is_running) to tell live ones
    /// from remains that only want [`destroy`](Self::destroy).
    pub fn list_vms(&self) -> Vec<u32> {
        let mut ids = BTreeSet::new();
        let prefix = format!("one{}-", self.cfg.tag);
        if let Ok(dir) = fs::read_dir(NETNS_DIR) {
            for e in dir.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = name.strip_prefix(&prefix).and_then(parse_id) {
                    ids.insert(id);
                }
            }
        }
        if let Ok(dir) = fs::read_dir(&self.cfg.run_dir) {
            for e in dir.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = name.strip_prefix("vm-").and_then(parse_id) {
                    if e.path().is_dir() {
                        ids.insert(id);
                    }
                }
            }
        }
        ids.into_iter().collect()
    }

    /// A [`Command`] that runs `argv` inside the VM: `nsenter` into its network, UTS, mount
    /// and time namespaces, joining its cgroup (unless the VM is suspended, when joining
    /// would freeze the child before it could exec). It starts in the VM's `/` with the
    /// caller's environment and stdio; detaching (setsid, clean env) is up to the caller.
    pub fn command_in(&self, vm_id: u32, argv: &[&str]) -> Result<Command, NsError> {
        const STEP: &str = "command in VM";
        if argv.is_empty() {
            return Err(vm_err(vm_id, STEP, "empty argv"));
        }
        let keeper = self
            .keeper(vm_id)
            .ok_or(NsError::NotRunning { vm_id, step: STEP })?;
        let pid = keeper.pid;
        let mut cmd = Command::new(&self.nsenter);
        let mut net = OsString::from("--net=");
        net.push(self.netns_path(vm_id));
        cmd.arg(net)
            .arg(format!("--uts=/proc/{pid}/ns/uts"))
            .arg(format!("--mount=/proc/{pid}/ns/mnt"));
        if keeper.time_ns && self.nsenter_time {
            cmd.arg(format!("--time=/proc/{pid}/ns/time"));
        }
        cmd.arg("--").args(argv);
        if !self.is_suspended(vm_id) {
            if let Some(cg) = self.spec(vm_id).and_then(|s| s.cgroup) {
                let procs =
                    c_path(&cg.path.join("cgroup.procs")).map_err(|e| vm_err(vm_id, STEP, e))?;
                // SAFETY: the closure only makes async-signal-safe calls (open, write,
                // close) on memory prepared before fork.
                unsafe {
                    cmd.pre_exec(move || {
                        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd >= 0 {
                            libc::write(fd, b"0".as_ptr().cast(), 1);
                            libc::close(fd);
                        }
                        // Not joining only weakens freezing; netns tracking still finds it.
                        Ok(())
                    });
                }
            }
        }
        Ok(cmd)
    }
}

fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn last_log_lines(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    if tail.is_empty() {
        format!("(nothing in {})", path.display())
    } else {
        tail.join(" | ")
    }
}

// ---------------------------------------------------------------------------------------
// The VM init
// ---------------------------------------------------------------------------------------

/// Appends timestamped lines to the VM's `init.log` (the init has no other output).
struct InitLog(PathBuf);

impl InitLog {
    fn line(&self, msg: &str) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.0) {
            let _ = writeln!(f, "{secs} [{}] {msg}", std::process::id());
        }
    }
}

/// Entry point of the VM init (`one-sim __vm-init <vm_dir>`); returns the process exit
/// code. Must be called before the process starts any thread (it forks, and joining a
/// time namespace needs a single-threaded process).
///
/// The process forks the keeper and exits 0 as soon as the keeper has set up the VM's
/// namespaces (1 if that failed, 2 if it could not start; details go to `init.log`). The
/// keeper (own session, child subreaper) joins the VM's cgroup and netns, unshares UTS
/// (hostname), mount (VM context dir bind-mounted at [`CONTEXT_DIR`], host mounts still
/// propagate in, ours do not leak out) and time namespaces (boot time reset to ~1 s ago),
/// runs the start script as one-context's `net-97-start-script` does (the file itself,
/// executed from [`CONTEXT_DIR`] with the context variables exported; no shebang means
/// bash runs it), waits for it, writes `ready` if REPORT_READY, then reaps orphans forever.
pub fn vm_init_main(vm_dir: &Path) -> i32 {
    let log = InitLog(vm_dir.join(INIT_LOG));
    let spec: VmSpec = match read_json(&vm_dir.join(SPEC_FILE)) {
        Ok(s) => s,
        Err(e) => {
            log.line(&format!("read {SPEC_FILE}: {e}"));
            return 2;
        }
    };
    let threads = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
    if threads > 1 {
        log.line(&format!(
            "vm {}: init runs with {threads} threads; call vm_init_main before starting any",
            spec.vm_id
        ));
        return 2;
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        log.line(&format!("pipe: {}", io::Error::last_os_error()));
        return 2;
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (reader, writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: the process is single-threaded (checked above), so the child may run
    // arbitrary code.
    match unsafe { libc::fork() } {
        -1 => {
            log.line(&format!("fork: {}", io::Error::last_os_error()));
            2
        }
        0 => {
            drop(reader);
            keeper_main(vm_dir, &spec, writer, &log)
        }
        child => {
            drop(writer);
            let mut reader = reader;
            let mut report = String::new();
            let _ = reader.read_to_string(&mut report);
            if report == "ok" {
                0
            } else {
                log.line(&format!(
                    "vm {}: keeper setup failed: {}",
                    spec.vm_id,
                    if report.is_empty() {
                        "keeper died"
                    } else {
                        &report
                    }
                ));
                let mut status = 0;
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                1
            }
        }
    }
}

fn keeper_main(vm_dir: &Path, spec: &VmSpec, mut report: File, log: &InitLog) -> ! {
    if let Err(e) = keeper_setup(vm_dir, spec, log) {
        log.line(&format!("vm {}: setup: {e}", spec.vm_id));
        let _ = report.write_all(e.as_bytes());
        // SAFETY: leaving the forked child without running the parent's code paths.
        unsafe { libc::_exit(1) }
    }
    let _ = report.write_all(b"ok");
    drop(report);
    log.line(&format!(
        "vm {}: keeper up, hostname {}",
        spec.vm_id, spec.hostname
    ));

    if spec.start_script {
        run_start_script(vm_dir, spec, log);
    }
    if spec.report_ready {
        if let Err(e) = write_atomic(&vm_dir.join(READY_FILE), b"READY=YES\n", 0o644) {
            log.line(&format!("vm {}: write ready marker: {e}", spec.vm_id));
        }
    }
    loop {
        let mut status = 0;
        // SAFETY: waiting for any child of ours (we are their subreaper).
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 && errno() != libc::EINTR {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Puts the calling (forked, single-threaded) process into the VM and records it.
fn keeper_setup(vm_dir: &Path, spec: &VmSpec, log: &InitLog) -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", io::Error::last_os_error());
    // SAFETY: each libc call below gets valid pointers that outlive the call.
    unsafe {
        if libc::setsid() < 0 {
            return Err(os("setsid"));
        }
        // Orphans of the VM (double-forked daemons) come to us, as to a VM's init.
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            log.line(&os("PR_SET_CHILD_SUBREAPER"));
        }
        let name = format!("vmkeeper{}\0", spec.vm_id);
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
    }
    if let Some(cg) = &spec.cgroup {
        if let Err(e) = fs::write(cg.path.join("cgroup.procs"), "0") {
            log.line(&format!("join cgroup {}: {e}", cg.path.display()));
        }
    }
    let netns_path = Path::new(NETNS_DIR).join(&spec.netns);
    let netns =
        File::open(&netns_path).map_err(|e| format!("open {}: {e}", netns_path.display()))?;
    // SAFETY: valid fd.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(os("setns net"));
    }
    drop(netns);
    // SAFETY: unshare has no memory arguments.
    if unsafe { libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWNS) } != 0 {
        return Err(os("unshare uts+mnt"));
    }
    // Slave, not private: the host's `ip netns del` of other VMs must reach our copy of
    // /run/netns, else this VM would pin their namespaces; our bind mount stays ours.
    let root = c_path(Path::new("/"))?;
    // SAFETY: valid C strings; NULL source/fstype/data are allowed for a propagation change.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(os("make / rslave"));
    }
    let host = spec.hostname.as_bytes();
    // SAFETY: pointer and length of a live slice.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } != 0 {
        return Err(os("sethostname"));
    }
    fs::create_dir_all(CONTEXT_DIR).map_err(|e| format!("mkdir {CONTEXT_DIR}: {e}"))?;
    let src = c_path(&vm_dir.join(CONTEXT_SUBDIR))?;
    let dst = c_path(Path::new(CONTEXT_DIR))?;
    // SAFETY: valid C strings.
    if unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(os("bind-mount context dir"));
    }
    // Before the time namespace: /proc shows start times in the reader's boot time, and
    // the driver reads them from the host's.
    let pid = std::process::id() as i32;
    let (_, start_time) = proc_stat(pid).ok_or("read own /proc stat")?;
    let time_ns = enter_fresh_time_ns(log);

    // Nothing may tie the keeper to one-sim's terminal or files.
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    write_json(
        &vm_dir.join(KEEPER_FILE),
        &KeeperInfo {
            pid,
            start_time,
            time_ns,
        },
    )
    .map_err(|e| format!("write {KEEPER_FILE}: {e}"))
}

/// New time namespace whose boot time is now (uptime starts below 1 s), like a newly booted
/// VM. Not earlier: slurmctld ignores a registration whose boot time precedes its power-up
/// request ("Still waiting for boot of node"). Kernels without time namespaces just keep the host's uptime.
fn enter_fresh_time_ns(log: &InitLog) -> bool {
    // SAFETY: unshare has no memory arguments.
    if unsafe { libc::unshare(libc::CLONE_NEWTIME) } != 0 {
        log.line(&format!(
            "no time namespace (uptime stays the host's): {}",
            io::Error::last_os_error()
        ));
        return false;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if ts.tv_sec > 1 {
        // Offsets must be written before any process is in the namespace.
        let line = format!("boottime {} 0\n", -ts.tv_sec);
        if let Err(e) = fs::write("/proc/self/timens_offsets", line) {
            log.line(&format!("timens_offsets: {e}"));
        }
    }
    // unshare(CLONE_NEWTIME) only affects children; join it ourselves so nsenter
    // --time=/proc/<keeper>/ns/time gives the VM's clock.
    match File::open("/proc/self/ns/time_for_children") {
        // SAFETY: valid fd; the process is single-threaded as setns(time) requires.
        Ok(f) if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWTIME) } == 0 => true,
        Ok(_) => {
            log.line(&format!("setns time: {}", io::Error::last_os_error()));
            false
        }
        Err(e) => {
            log.line(&format!("open time_for_children: {e}"));
            false
        }
    }
}

fn run_start_script(vm_dir: &Path, spec: &VmSpec, log: &InitLog) {
    let script = vm_dir.join(SCRIPT_FILE);
    let out = match OpenOptions::new()
        .create(true)
        .append(true)
        .open(vm_dir.join(SCRIPT_LOG))
    {
        Ok(f) => f,
        Err(e) => {
            log.line(&format!("open {SCRIPT_LOG}: {e}"));
            return;
        }
    };
    let command = |prog: &Path, arg: Option<&Path>| -> io::Result<Child> {
        let mut cmd = Command::new(prog);
        if let Some(a) = arg {
            cmd.arg(a);
        }
        // Output to a file, not a pipe: daemons the script leaves behind keep it open.
        cmd.env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(CONTEXT_DIR)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out.try_clone()?)
            .spawn()
    };
    let spawned = match command(&script, None) {
        // No shebang: bash, which one-context runs the script from, falls back to itself.
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            let shell = if Path::new("/bin/bash").exists() {
                "/bin/bash"
            } else {
                "/bin/sh"
            };
            command(Path::new(shell), Some(&script))
        }
        other => other,
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            log.line(&format!("start script: {e}"));
            return;
        }
    };
    let timeout = Duration::from_secs(spec.start_script_timeout_secs);
    match wait_until(&mut child, Instant::now() + timeout) {
        Ok(Some(st)) => log.line(&format!("start script finished: {st}")),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            log.line(&format!("start script killed after {timeout:?}"));
        }
        Err(e) => log.line(&format!("start script wait: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::net::{SocketAddr, TcpStream};

    // ---- pure parts -------------------------------------------------------------------

    #[test]
    fn names_fit_ifnamsiz() {
        for tag in ["a", "ab", "abc", "zz99"] {
            for id in [0, 7, 9, 10, 255, 99_999, 1_000_000_000, u32::MAX] {
                let veth = host_veth_name(tag, id);
                assert!(veth.len() <= IFNAME_MAX, "{veth} too long");
                assert!(valid_ifname(&veth));
                assert_eq!(netns_name(tag, id), format!("one{tag}-{id}"));
            }
        }
        assert_eq!(host_veth_name("zz99", u32::MAX), "ozz99-ffffffff");
        assert_ne!(host_veth_name("a", 10), host_veth_name("a", 16));
        // The '-' after the tag keeps tags "a" and "a1" apart in list_vms.
        assert_eq!(
            netns_name("a1", 5).strip_prefix("onea-").and_then(parse_id),
            None
        );
        assert_eq!(
            netns_name("a", 15).strip_prefix("onea-").and_then(parse_id),
            Some(15)
        );
    }

    #[test]
    fn context_sh_quotes_like_oned() {
        let ctx = vec![
            ("VMID".to_string(), "7".to_string()),
            ("MSG".to_string(), "it's a 'test' $HOME `x`".to_string()),
            ("BAD KEY".to_string(), "x".to_string()),
            ("EMPTY".to_string(), String::new()),
        ];
        let text = context_sh(&ctx);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# Context variables generated by OpenNebula");
        assert_eq!(lines[1], "VMID='7'");
        assert_eq!(lines[2], r"MSG='it'\''s a '\''test'\'' $HOME `x`'");
        assert_eq!(lines[3], "EMPTY=''");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn hostname_sanitising() {
        assert_eq!(vm_hostname("vm1", 1), "vm1");
        assert_eq!(vm_hostname("vm_1 node", 1), "vm-1-node");
        assert_eq!(vm_hostname("--vm1--", 1), "vm1");
        assert_eq!(vm_hostname("vm1.cluster.local", 1), "vm1");
        assert_eq!(vm_hostname("héllo", 1), "h-llo");
        assert_eq!(vm_hostname("", 42), "vm42");
        assert_eq!(vm_hostname("___", 42), "vm42");
        assert_eq!(vm_hostname(&"x".repeat(100), 1).len(), HOSTNAME_MAX);
    }

    #[test]
    fn start_script_env_exports_context() {
        let env = start_script_env(&[
            ("VMID".into(), "3".into()),
            ("PATH".into(), "/x".into()),
            ("A-B".into(), "no".into()),
            ("NUL".into(), "a\0b".into()),
        ]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("VMID"), Some("3"));
        assert_eq!(get("PATH"), Some("/x"));
        assert_eq!(get("MOUNT_DIR"), Some(CONTEXT_DIR));
        assert_eq!(get("A-B"), None);
        assert_eq!(get("NUL"), None);
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn validation() {
        assert!(valid_tag("a") && valid_tag("ab12") && !valid_tag("") && !valid_tag("abcde"));
        assert!(!valid_tag("A") && !valid_tag("a-b"));
        assert!(
            valid_mac("02:00:0a:c7:01:02")
                && !valid_mac("02:00:0a:c7:01")
                && !valid_mac("zz:00:0a:c7:01:02")
        );
        assert!(valid_ifname("onebr0") && !valid_ifname("a/b") && !valid_ifname(&"x".repeat(16)));
    }

    #[test]
    fn run_bounds_and_reports() {
        let t = Instant::now();
        let err = run(&["sleep", "5"], Duration::from_millis(200))
            .err()
            .unwrap_or_default();
        assert!(err.contains("timed out"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(3));
        let err = run(&["ls", "/nonexistent-ns-test"], CMD_TIMEOUT)
            .err()
            .unwrap_or_default();
        assert!(err.contains("ls /nonexistent-ns-test"), "{err}");
        let out = run(&["echo", "hi"], CMD_TIMEOUT).map(|o| o.stdout);
        assert_eq!(out.ok(), Some(b"hi\n".to_vec()));
    }

    // ---- root-only integration tests ---------------------------------------------------

    /// argv[1] that makes this test binary act as the VM init (see `test_init_hook`).
    const TEST_INIT_ARG: &str = "__ns-test-vm-init";

    /// Runs before libtest's main (which would start threads): lets the test binary serve
    /// as `init_program`, so the tests need no other binary.
    #[used]
    #[link_section = ".init_array"]
    static TEST_INIT_HOOK: extern "C" fn(
        libc::c_int,
        *const *const libc::c_char,
        *const *const libc::c_char,
    ) = test_init_hook;

    extern "C" fn test_init_hook(
        argc: libc::c_int,
        argv: *const *const libc::c_char,
        _envp: *const *const libc::c_char,
    ) {
        if argc < 3 || argv.is_null() {
            return;
        }
        // SAFETY: glibc passes main's argc/argv to init_array functions.
        let arg = |i: usize| unsafe { CStr::from_ptr(*argv.add(i)) };
        if arg(1).to_bytes() != TEST_INIT_ARG.as_bytes() {
            return;
        }
        let dir = PathBuf::from(OsStr::from_bytes(arg(2).to_bytes()));
        let code = vm_init_main(&dir);
        // SAFETY: leave without running libtest.
        unsafe { libc::_exit(code) }
    }

    /// A test network; destroys its VMs, bridge and files on drop, also on panic.
    struct Lab {
        drv: NsDriver,
        net: [u8; 3],
        run_dir: PathBuf,
    }

    impl Lab {
        /// `None` (test skipped, with a note) when not root or tools are missing.
        fn new(test_no: u32) -> Option<Lab> {
            // Tag and subnet from pid and test number: parallel tests and parallel test
            // runs do not collide, and never touch 10.77.0.0/24.
            let pid = std::process::id();
            let tag = format!("z{}{:02x}", test_no, pid % 256);
            let octet = ((pid.wrapping_mul(7) + test_no * 31) % 200 + 20) as u8;
            let net = [10, 199, octet];
            let run_dir = std::env::temp_dir().join(format!("ns-test-{tag}-{pid}"));
            let cfg = NsConfig {
                bridge: format!("znsb{tag}"),
                gateway: Ipv4Addr::new(net[0], net[1], net[2], 1),
                prefix_len: 24,
                tag,
                run_dir: run_dir.clone(),
                init_program: vec![
                    std::env::current_exe().ok()?.into_os_string(),
                    TEST_INIT_ARG.into(),
                ],
            };
            match NsDriver::new(cfg) {
                Ok(drv) => Some(Lab { drv, net, run_dir }),
                Err(e) => {
                    eprintln!("note: skipping ns integration test: {e}");
                    None
                }
            }
        }

        fn ip(&self, host: u8) -> Ipv4Addr {
            Ipv4Addr::new(self.net[0], self.net[1], self.net[2], host)
        }

        fn vm(&self, id: u32, script: Option<&str>) -> VmBoot {
            let ip = self.ip(id as u8 + 1);
            VmBoot {
                vm_id: id,
                ip,
                mac: format!("02:00:0a:c7:{:02x}:{:02x}", self.net[2], id as u8 + 1),
                hostname: format!("vm_{id}.test"),
                context: vec![
                    ("VMID".into(), id.to_string()),
                    ("ETH0_IP".into(), ip.to_string()),
                    ("ETH0_GATEWAY".into(), self.drv.cfg.gateway.to_string()),
                    ("QUOTED".into(), "it's".into()),
                ],
                start_script: script.map(|s| s.as_bytes().to_vec()),
                report_ready: true,
            }
        }

        /// Output of argv run inside the VM (bounded).
        fn in_vm(&self, id: u32, argv: &[&str]) -> String {
            let cmd = match self.drv.command_in(id, argv) {
                Ok(c) => c,
                Err(e) => panic!("command_in: {e}"),
            };
            match run_command(cmd, CMD_TIMEOUT, argv.join(" ")) {
                Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
                Err(e) => panic!("in vm {id}: {e}"),
            }
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            for id in self.drv.list_vms() {
                if let Err(e) = self.drv.destroy(id) {
                    eprintln!("cleanup: {e}");
                }
            }
            if let Err(e) = self.drv.remove_bridge() {
                eprintln!("cleanup: {e}");
            }
            let _ = fs::remove_dir_all(&self.run_dir);
        }
    }

    fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(pid: u32) -> bool {
        matches!(proc_stat(pid as i32), Some((s, _)) if s != 'Z' && s != 'X')
    }

    fn comm(pid: u32) -> String {
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Host reaches the VM: ping if installed, else a TCP SYN to a closed port, which the
    /// VM's kernel answers with RST (connection refused) only if packets get through.
    fn reachable(ip: Ipv4Addr) -> bool {
        if find_tool("ping").is_some() {
            return run(&["ping", "-c1", "-W1", &ip.to_string()], CMD_TIMEOUT).is_ok();
        }
        let addr = SocketAddr::from((ip, 9));
        matches!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
        )
    }

    fn assert_gone(lab: &Lab, id: u32, pids: &[u32], cgroups: &[Cgroup]) {
        let tag = &lab.drv.cfg.tag;
        assert!(!lab.drv.netns_path(id).exists(), "netns left");
        let netns_list = run(&["ip", "netns", "list"], CMD_TIMEOUT)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(!netns_list.contains(&netns_name(tag, id)), "{netns_list}");
        assert!(
            !NsDriver::sys_net(&host_veth_name(tag, id)).exists(),
            "veth left"
        );
        for &p in pids {
            assert!(!alive(p), "pid {p} ({}) left", comm(p));
        }
        for cg in cgroups {
            assert!(!cg.path.exists(), "cgroup {} left", cg.path.display());
        }
        assert!(!lab.drv.vm_dir(id).exists(), "VM dir left");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(!mounts.contains(&netns_name(tag, id)), "netns mount left");
        assert!(!lab.drv.list_vms().contains(&id));
    }

    #[test]
    fn vm_lifecycle() {
        let Some(lab) = Lab::new(1) else { return };
        let drv = &lab.drv;
        drv.ensure_bridge().expect("ensure_bridge");
        drv.ensure_bridge().expect("ensure_bridge again");

        let marker = lab.run_dir.join("script-ran");
        let script = format!(
            "#!/bin/sh\necho \"vmid=$VMID cwd=$(pwd) host=$(cat /proc/sys/kernel/hostname)\" > '{}'\nsleep 1000 &\n",
            marker.display()
        );
        let id = 7;
        let t = Instant::now();
        drv.boot(&lab.vm(id, Some(&script))).expect("boot");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "boot took {:?}",
            t.elapsed()
        );
        wait_for("ready", Duration::from_secs(20), || drv.is_ready(id));
        assert!(drv.is_running(id));
        assert_eq!(drv.list_vms(), vec![id]);

        let ran = fs::read_to_string(&marker).unwrap_or_default();
        assert_eq!(
            ran.trim(),
            format!("vmid={id} cwd={CONTEXT_DIR} host=vm-{id}")
        );

        assert!(reachable(lab.ip(id as u8 + 1)), "VM not reachable");

        let ctx = lab.in_vm(id, &["cat", CONTEXT_FILE]);
        assert!(ctx.contains(&format!("VMID='{id}'")), "{ctx}");
        assert!(ctx.contains(r"QUOTED='it'\''s'"), "{ctx}");
        assert_eq!(
            lab.in_vm(id, &["cat", "/proc/sys/kernel/hostname"]).trim(),
            format!("vm-{id}")
        );
        let uptime: f64 = lab
            .in_vm(id, &["cat", "/proc/uptime"])
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::MAX);
        assert!(uptime < 60.0, "uptime inside {uptime}");
        let addrs = lab.in_vm(id, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addrs.contains(&format!("{}/24", lab.ip(id as u8 + 1))),
            "{addrs}"
        );
        // Nothing of the VM's mount namespace shows on the host.
        let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(!host_mounts.contains(CONTEXT_DIR));

        let pids = drv.pids(id);
        let keeper = drv.keeper_pid(id).expect("keeper pid");
        assert!(pids.contains(&keeper));
        let sleeper = *pids
            .iter()
            .find(|&&p| comm(p) == "sleep")
            .expect("sleep daemon");
        let cgroups = drv.existing_cgroups(id);

        drv.suspend(id).expect("suspend");
        assert!(drv.is_suspended(id));
        let stopped = |p: u32| matches!(proc_stat(p as i32), Some((s, _)) if s == 'T' || s == 'D');
        wait_for("VM processes frozen", Duration::from_secs(5), || {
            pids.iter().all(|&p| stopped(p))
        });
        if let Some(cg) = cgroups.first() {
            assert!(cg.is_frozen());
        }
        drv.resume(id).expect("resume");
        assert!(!drv.is_suspended(id));
        wait_for("VM processes thawed", Duration::from_secs(5), || {
            !stopped(sleeper) && !stopped(keeper)
        });
        assert!(
            reachable(lab.ip(id as u8 + 1)),
            "VM not reachable after resume"
        );

        drv.destroy(id).expect("destroy");
        assert_gone(&lab, id, &pids, &cgroups);
        drv.destroy(id).expect("destroy again");
    }

    #[test]
    fn adopt_after_restart_and_cleanup_remains() {
        let Some(lab) = Lab::new(2) else { return };
        lab.drv.ensure_bridge().expect("ensure_bridge");
        // A daemon that double-forks away from the script (and so from any process tree).
        let script = "#!/bin/sh\n(setsid sleep 1000 &) &\n";
        for id in [1, 2] {
            lab.drv.boot(&lab.vm(id, Some(script))).expect("boot");
        }
        // Script without shebang: run by bash as one-context does.
        lab.drv
            .boot(&lab.vm(3, Some("echo no-shebang\n")))
            .expect("boot 3");
        for id in [1, 2, 3] {
            wait_for("ready", Duration::from_secs(20), || lab.drv.is_ready(id));
        }
        let log3 = fs::read_to_string(lab.drv.vm_dir(3).join(SCRIPT_LOG)).unwrap_or_default();
        assert_eq!(log3.trim(), "no-shebang");

        // A new driver with the same config (one-sim restarted) adopts the VMs.
        let drv2 = NsDriver::new(lab.drv.cfg.clone()).expect("driver 2");
        assert_eq!(drv2.list_vms(), vec![1, 2, 3]);
        assert!(drv2.is_running(1) && drv2.is_ready(2));

        let pids2 = drv2.pids(2);
        assert!(
            pids2.iter().any(|&p| comm(p) == "sleep"),
            "daemon of VM 2 not tracked"
        );
        let cgroups2 = drv2.existing_cgroups(2);
        drv2.suspend(2).expect("suspend 2");
        drv2.destroy(2).expect("destroy suspended VM 2");
        assert_gone(&lab, 2, &pids2, &cgroups2);
        // VM 1's mount namespace must not pin VM 2's netns (mounts are rslave).
        let mounts1 = lab.in_vm(1, &["cat", "/proc/self/mountinfo"]);
        assert!(
            !mounts1.contains(&netns_name(&lab.drv.cfg.tag, 2)),
            "{mounts1}"
        );
        assert!(drv2.is_running(1));

        // Remains of a half-created VM are listed and cleaned.
        let half = 5;
        let netns = netns_name(&lab.drv.cfg.tag, half);
        run(&["ip", "netns", "add", &netns], CMD_TIMEOUT).expect("netns add");
        fs::create_dir_all(drv2.vm_dir(half)).expect("mkdir");
        assert!(drv2.list_vms().contains(&half));
        assert!(!drv2.is_running(half));
        drv2.destroy(half).expect("destroy half-created");
        assert_gone(&lab, half, &[], &[]);

        let pids1 = drv2.pids(1);
        drv2.destroy(1).expect("destroy 1");
        assert_gone(&lab, 1, &pids1, &[]);
    }

    /// The other freeze mechanisms: cgroup v2 `cgroup.freeze` (if mounted) and SIGSTOP.
    #[test]
    fn suspend_without_v1_freezer() {
        let Some(mut lab) = Lab::new(4) else { return };
        lab.drv.ensure_bridge().expect("ensure_bridge");
        let all = lab.drv.cgroup_bases.clone();
        let v2: Vec<CgroupBase> = all.iter().filter(|b| b.v2).cloned().collect();
        let mut modes = vec![("sigstop", Vec::new())];
        if !v2.is_empty() {
            modes.push(("cgroup v2", v2));
        }
        let script = "#!/bin/sh\nsleep 1000 &\n";
        for (id, (mode, bases)) in (1..).zip(modes) {
            lab.drv.cgroup_bases = bases;
            lab.drv.boot(&lab.vm(id, Some(script))).expect("boot");
            wait_for("ready", Duration::from_secs(20), || lab.drv.is_ready(id));
            // A command_in process belongs to the VM too.
            let mut extra = lab
                .drv
                .command_in(id, &["sleep", "1000"])
                .expect("command_in");
            let mut extra = extra.stdin(Stdio::null()).spawn().expect("spawn in VM");
            wait_for("3 VM processes", Duration::from_secs(5), || {
                lab.drv.pids(id).len() == 3
            });
            let pids = lab.drv.pids(id);
            let cgroups = lab.drv.existing_cgroups(id);
            assert_eq!(cgroups.len(), usize::from(mode != "sigstop"), "{mode}");
            lab.drv.suspend(id).expect("suspend");
            if mode == "sigstop" {
                let stopped = |p: u32| matches!(proc_stat(p as i32), Some((s, _)) if s == 'T');
                wait_for("SIGSTOP", Duration::from_secs(5), || {
                    pids.iter().all(|&p| stopped(p))
                });
            } else {
                assert!(cgroups[0].is_frozen());
                assert!(cgroups[0].procs().len() == 3, "{mode}: not all in cgroup");
            }
            lab.drv.resume(id).expect("resume");
            wait_for("running again", Duration::from_secs(5), || {
                pids.iter()
                    .all(|&p| matches!(proc_stat(p as i32), Some((s, _)) if s == 'S'))
            });
            lab.drv.suspend(id).expect("suspend again");
            lab.drv.destroy(id).expect("destroy");
            let _ = extra.wait();
            assert_gone(&lab, id, &pids, &cgroups);
        }
        lab.drv.cgroup_bases = all;
    }

    #[test]
    fn failed_boot_leaves_nothing() {
        let Some(mut lab) = Lab::new(3) else { return };
        lab.drv.ensure_bridge().expect("ensure_bridge");
        let mut cfg = lab.drv.cfg.clone();
        cfg.init_program = vec!["/bin/false".into()];
        let good = std::mem::replace(&mut lab.drv, NsDriver::new(cfg).expect("driver"));
        let err = lab
            .drv
            .boot(&lab.vm(4, None))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("vm 4") && err.contains("start init"), "{err}");
        assert_gone(&lab, 4, &[], &[]);
        lab.drv = good;
        // No bridge: the error names the step.
        lab.drv.remove_bridge().expect("remove_bridge");
        assert!(!NsDriver::sys_net(&lab.drv.cfg.bridge).exists());
        let err = lab
            .drv
            .boot(&lab.vm(4, None))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("attach veth to bridge"), "{err}");
        assert_gone(&lab, 4, &[], &[]);
    }
}
