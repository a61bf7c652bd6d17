//! Helpers for the one-sim integration tests, and slurm-one's (which include this file):
//! start one-sim in a fresh temp dir, talk XML-RPC to it, wait for VM states, and look at
//! namespaces, links and processes.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use one_proto::xmlrpc::{parse_response, write_method_call, Response, Value};
use quick_xml::events::Event;
use quick_xml::Reader;

/// The session every test uses (the auth file's only line).
pub const SESSION: &str = "oneadmin:it-secret";
/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(50);
/// Bound on one-sim's exit after SIGTERM before it gets SIGKILL.
const STOP_BOUND: Duration = Duration::from_secs(15);

/// VM STATE numbers used in the tests.
pub mod st {
    pub const PENDING: i32 = 1;
    pub const HOLD: i32 = 2;
    pub const ACTIVE: i32 = 3;
    pub const SUSPENDED: i32 = 5;
    pub const DONE: i32 = 6;
    pub const POWEROFF: i32 = 8;
    /// LCM states.
    pub const LCM_INIT: i32 = 0;
    pub const RUNNING: i32 = 3;
    pub const BOOT_FAILURE: i32 = 36;
}

/// Polls `cond` every 50 ms until it holds or `within` passes; true if it held.
pub fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for a child with a bound; kills it (SIGKILL) if it overstays.
pub fn wait_bounded(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs one-sim with `args` (no server expected) to completion within 20 s.
pub fn run_one_sim(args: &[&str]) -> Output {
    let mut child = Command::new(crate::exe::one_sim_exe())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn one-sim");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_bounded(&mut child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("one-sim {args:?} did not exit within 20 s"));
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------
// Starting one-sim
// ---------------------------------------------------------------------------------------

/// How to start one-sim.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `dummy` or `ns`.
    pub driver: &'static str,
    /// Pass `--state-dir <tmp>/state`.
    pub state_dir: bool,
    /// For ns: bridge `itbr<n>`, network 10.198.<n>.0/24.
    pub net: u8,
    pub boot_delay: &'static str,
    pub step_delay: &'static str,
    pub hosts: &'static str,
}

impl Opts {
    /// Dummy driver, quick timings, no state dir.
    pub fn dummy() -> Opts {
        Opts {
            driver: "dummy",
            state_dir: false,
            net: 0,
            boot_delay: "100ms",
            step_delay: "10ms",
            hosts: "2x8cpu:16G",
        }
    }

    /// ns driver on bridge `itbr<n>` and 10.198.<n>.0/24, no state dir.
    pub fn ns(n: u8) -> Opts {
        Opts {
            driver: "ns",
            net: n,
            boot_delay: "0",
            ..Opts::dummy()
        }
    }

    /// With `--state-dir`.
    pub fn with_state(mut self) -> Opts {
        self.state_dir = true;
        self
    }

    pub fn bridge(&self) -> String {
        format!("itbr{}", self.net)
    }

    pub fn network(&self) -> String {
        format!("10.198.{}.0/24", self.net)
    }
}

/// Whether ns tests can run here; prints a note when not.
pub fn ns_capable(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: skipping {test}: needs root");
        return false;
    }
    for tool in ["ip", "nsenter", "unshare", "python3"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            eprintln!("note: skipping {test}: `{tool}` not found");
            return false;
        }
    }
    true
}

/// A running one-sim in its own temp dir; SIGTERM (then SIGKILL) and a sweep of whatever
/// it left behind on drop.
pub struct Sim {
    dir: tempfile::TempDir,
    pub opts: Opts,
    child: Option<Child>,
    pub url: String,
    pub addr: SocketAddr,
    agent: ureq::Agent,
    starts: u32,
    /// Instance tags seen (ns driver), one per start without a state dir.
    tags: Vec<String>,
}

impl Sim {
    /// Starts one-sim with `opts` in a fresh temp dir and waits for its listening line.
    pub fn start(opts: Opts) -> Sim {
        let dir = tempfile::Builder::new()
            .prefix("one-sim-it-")
            .tempdir()
            .expect("temp dir");
        fs::write(
            dir.path().join("auth"),
            format!("# test credentials\n{SESSION}\n"),
        )
        .expect("write auth file");
        if opts.driver == "ns" {
            // Leftovers of an interrupted earlier run would make one-sim adopt the bridge.
            remove_link(&opts.bridge());
        }
        let mut sim = Sim {
            dir,
            opts,
            child: None,
            url: String::new(),
            addr: "127.0.0.1:0".parse().unwrap(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(20))
                .build(),
            starts: 0,
            tags: Vec::new(),
        };
        sim.spawn();
        sim
    }

    /// The temp dir (auth file, logs, state dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `--state-dir` (whether or not it is passed).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn args(&self) -> Vec<String> {
        // A restart listens where the first start did, as oned comes back on its port.
        let mut a: Vec<String> = vec![
            "--listen".into(),
            self.addr.to_string(),
            "--auth-file".into(),
            self.dir.path().join("auth").display().to_string(),
            "--driver".into(),
            self.opts.driver.into(),
            "--boot-delay".into(),
            self.opts.boot_delay.into(),
            "--step-delay".into(),
            self.opts.step_delay.into(),
            "--hosts".into(),
            self.opts.hosts.into(),
            "--debug".into(),
        ];
        if self.opts.driver == "ns" {
            a.extend([
                "--bridge".into(),
                self.opts.bridge(),
                "--network".into(),
                self.opts.network(),
            ]);
        }
        if self.opts.state_dir {
            a.extend(["--state-dir".into(), self.state_dir().display().to_string()]);
        }
        a
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "one-sim already running");
        self.starts += 1;
        let out_path = self.dir.path().join(format!("stdout-{}", self.starts));
        let log_path = self.dir.path().join(format!("stderr-{}", self.starts));
        let mut cmd = Command::new(crate::exe::one_sim_exe());
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("stdout file"))
            .stderr(File::create(&log_path).expect("stderr file"));
        // SAFETY: prctl is async-signal-safe. If the test thread dies, one-sim is stopped.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn one-sim");
        self.child = Some(child);
        let prefix = "one-sim listening on http://";
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            let text = fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.starts_with(prefix)) {
                break l.to_string();
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                self.child = None;
                panic!(
                    "one-sim exited ({st}) before listening:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "one-sim printed no listening line within 20 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let addr = line[prefix.len()..]
            .strip_suffix("/RPC2")
            .unwrap_or_else(|| panic!("odd listening line {line:?}"));
        self.addr = addr.parse().expect("listening address");
        assert_ne!(
            self.addr.port(),
            0,
            "port 0 must be replaced by the real one"
        );
        self.url = format!("http://{addr}/RPC2");
        if self.opts.driver == "ns" {
            if let Some(tag) = self.find_tag() {
                if !self.tags.contains(&tag) {
                    self.tags.push(tag);
                }
            }
        }
    }

    /// The instance tag of the running one-sim (ns driver): from the state dir as one-sim
    /// derives it, else from `/run/one-sim/<tag>/bridge.json` naming our bridge.
    fn find_tag(&self) -> Option<String> {
        if self.opts.state_dir {
            return Some(one_sim::config::instance_tag(
                Some(&self.state_dir()),
                &self.opts.bridge(),
            ));
        }
        let want = format!("\"{}\"", self.opts.bridge());
        fs::read_dir("/run/one-sim")
            .ok()?
            .flatten()
            .find(|e| {
                fs::read_to_string(e.path().join("bridge.json"))
                    .map(|s| s.contains(&want))
                    .unwrap_or(false)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
    }

    /// The current instance tag (ns driver).
    pub fn tag(&self) -> String {
        self.tags
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("no instance tag found:\n{}", self.log_tail()))
    }

    /// Pid of the running one-sim.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("one-sim is running").id() as i32
    }

    /// SIGTERM, then SIGKILL after a bound; returns how it ended.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("one-sim is running");
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        match wait_bounded(&mut child, STOP_BOUND) {
            Some(st) => st,
            None => panic!(
                "one-sim did not stop within {STOP_BOUND:?} of SIGTERM (killed):\n{}",
                self.log_tail()
            ),
        }
    }

    /// Stops one-sim (SIGTERM) and starts it again on the same dir.
    pub fn restart(&mut self) -> ExitStatus {
        let st = self.stop();
        self.spawn();
        st
    }

    /// Starts one-sim again after [`stop`](Self::stop).
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Runs `one-sim cleanup --state-dir` on this sim's state dir.
    pub fn cleanup(&self) -> Output {
        run_one_sim(&[
            "cleanup",
            "--state-dir",
            &self.state_dir().display().to_string(),
        ])
    }

    /// The last lines of every start's stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for k in 1..=self.starts {
            let text =
                fs::read_to_string(self.dir.path().join(format!("stderr-{k}"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- one-sim start {k} stderr (tail) ---\n"));
            for l in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    // ---- XML-RPC ------------------------------------------------------------------------

    /// Calls `method` with exactly `params` (no session added).
    pub fn call_raw(&self, method: &str, params: &[Value]) -> Response {
        let body = write_method_call(method, params);
        let resp = self
            .agent
            .post(&self.url)
            .set("Content-Type", "text/xml")
            .send_bytes(&body)
            .unwrap_or_else(|e| panic!("POST {method}: {e}\n{}", self.log_tail()));
        let mut bytes = Vec::new();
        resp.into_reader()
            .read_to_end(&mut bytes)
            .expect("read response body");
        parse_response(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method}: bad response {e}: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// Calls `method` with the session followed by `params`.
    pub fn call(&self, method: &str, params: &[Value]) -> Response {
        let mut all = vec![Value::from(SESSION)];
        all.extend_from_slice(params);
        self.call_raw(method, &all)
    }

    /// Calls `method` and returns the value of a successful OpenNebula answer
    /// (`[true, VALUE, 0]`); panics on anything else.
    pub fn ok(&self, method: &str, params: &[Value]) -> Value {
        match self.call(method, params) {
            Response::Success(Value::Array(items))
                if items.len() == 3 && items[0] == Value::Bool(true) =>
            {
                items[1].clone()
            }
            other => panic!("{method} {params:?} failed: {other:?}\n{}", self.log_tail()),
        }
    }

    /// `one.vm.allocate(template, hold)`; the new id.
    pub fn allocate_hold(&self, template: &str, hold: bool) -> i32 {
        self.ok("one.vm.allocate", &[template.into(), hold.into()])
            .as_i32()
            .expect("allocate returns an int")
    }

    /// `one.vm.allocate(template)`; the new id.
    pub fn allocate(&self, template: &str) -> i32 {
        self.allocate_hold(template, false)
    }

    /// `one.vm.action(action, vm)`.
    pub fn action(&self, action: &str, vm: i32) {
        self.ok("one.vm.action", &[action.into(), vm.into()]);
    }

    /// The full `<VM>` document of `one.vm.info`.
    pub fn vm_info_xml(&self, vm: i32) -> String {
        self.ok("one.vm.info", &[vm.into()])
            .as_str()
            .expect("vm.info returns a string")
            .to_string()
    }

    /// First value at `path` below `<VM>` (e.g. `TEMPLATE/NIC/IP`) in one.vm.info.
    pub fn vm_get(&self, vm: i32, path: &str) -> Option<String> {
        xml_get(&self.vm_info_xml(vm), &format!("VM/{path}"))
    }

    /// (STATE, LCM_STATE) of the VM.
    pub fn state(&self, vm: i32) -> (i32, i32) {
        state_of(&self.vm_info_xml(vm))
    }

    /// Waits until the VM is in (state, lcm); panics with its last state and the log.
    pub fn wait_state(&self, vm: i32, state: i32, lcm: i32, within: Duration) {
        let mut last = (-1, -1);
        let reached = poll_until(within, || {
            last = self.state(vm);
            last == (state, lcm)
        });
        if !reached {
            let xml = self.vm_info_xml(vm);
            panic!(
                "VM {vm} not in {state}/{lcm} within {within:?}: last {}/{} (ERROR: {:?})\n{}",
                last.0,
                last.1,
                xml_get(&xml, "VM/USER_TEMPLATE/ERROR"),
                self.log_tail()
            );
        }
    }

    /// Waits until the VM's `path` reads `value`.
    pub fn wait_value(&self, vm: i32, path: &str, value: &str, within: Duration) {
        let mut last = None;
        let ok = poll_until(within, || {
            last = self.vm_get(vm, path);
            last.as_deref() == Some(value)
        });
        assert!(
            ok,
            "VM {vm}: {path} is {last:?}, not {value:?}, after {within:?}\n{}",
            self.log_tail()
        );
    }

    /// (id, STATE, LCM_STATE, last HID or -1) of every VM, DONE ones included.
    pub fn pool(&self) -> Vec<(i32, i32, i32, i32)> {
        let xml = self
            .ok(
                "one.vmpool.info",
                &[(-2).into(), (-1).into(), (-1).into(), (-2).into()],
            )
            .as_str()
            .expect("vmpool.info returns a string")
            .to_string();
        split_elements(&xml, "VM")
            .iter()
            .map(|vm| {
                let num = |p: &str| {
                    xml_get(vm, p)
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(-1)
                };
                let hid = xml_all(vm, "VM/HISTORY_RECORDS/HISTORY/HID")
                    .last()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(-1);
                (num("VM/ID"), num("VM/STATE"), num("VM/LCM_STATE"), hid)
            })
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_bounded(&mut child, STOP_BOUND).is_none() {
                eprintln!("note: one-sim needed SIGKILL");
            }
        }
        if self.opts.driver != "ns" {
            return;
        }
        if self.opts.state_dir && self.state_dir().join("one-sim.json").exists() {
            let out = self.cleanup();
            if !out.status.success() {
                eprintln!(
                    "note: one-sim cleanup failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // Last resort: whatever is still there under our tags and bridge.
        for tag in &self.tags {
            sweep_tag(tag);
            if !self.opts.state_dir {
                // Empty run dir of a one-sim without a state dir (rmdir only if empty).
                let _ = fs::remove_dir(Path::new("/run/one-sim").join(tag));
            }
        }
        remove_link(&self.opts.bridge());
    }
}

fn sweep_tag(tag: &str) {
    let prefix = format!("one{tag}-");
    for ns in netns_list().into_iter().filter(|n| n.starts_with(&prefix)) {
        eprintln!("note: sweeping leftover netns {ns}");
        for pid in pids_in_netns(&ns) {
            // SAFETY: kill(2) on a pid found in our VM's netns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    }
    for root in [
        "/sys/fs/cgroup/freezer",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let dir = Path::new(root).join(format!("one-sim-{tag}"));
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = fs::remove_dir(e.path());
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

fn remove_link(name: &str) {
    if link_exists(name) {
        let _ = Command::new("ip").args(["link", "del", name]).output();
    }
}

// ---------------------------------------------------------------------------------------
// XML
// ---------------------------------------------------------------------------------------

/// Every text value at the slash-separated element `path` from the root, in order.
pub fn xml_all(xml: &str, path: &str) -> Vec<String> {
    let want: Vec<&str> = path.split('/').collect();
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let mut cur: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                stack.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                if stack == want {
                    cur = Some(String::new());
                }
            }
            Ok(Event::Empty(e)) => {
                stack.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                if stack == want {
                    found.push(String::new());
                }
                stack.pop();
            }
            Ok(Event::Text(t)) => {
                if let Some(c) = cur.as_mut() {
                    c.push_str(&t.unescape().unwrap_or_default());
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(c) = cur.as_mut() {
                    c.push_str(&String::from_utf8_lossy(&t.into_inner()));
                }
            }
            Ok(Event::End(_)) => {
                if stack == want {
                    found.extend(cur.take());
                }
                stack.pop();
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    found
}

/// The first text value at `path`.
pub fn xml_get(xml: &str, path: &str) -> Option<String> {
    xml_all(xml, path).into_iter().next()
}

/// The raw text of each `<name>...</name>` child of the root (e.g. VMs of a VM_POOL).
pub fn split_elements(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        // Nested elements of the same name do not occur in VM_POOL's VMs.
        let Some(end) = rest[start..].find(&close) else {
            break;
        };
        let end = start + end + close.len();
        out.push(rest[start..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// (STATE, LCM_STATE) of a `<VM>` document.
pub fn state_of(xml: &str) -> (i32, i32) {
    let num = |p: &str| -> i32 {
        xml_get(xml, p)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {p} in {xml}"))
    };
    (num("VM/STATE"), num("VM/LCM_STATE"))
}

// ---------------------------------------------------------------------------------------
// Namespaces, links, processes
// ---------------------------------------------------------------------------------------

/// Names from `ip netns list`.
pub fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Network namespaces of a one-sim instance (`one<tag>-*`).
pub fn netns_of_tag(tag: &str) -> Vec<String> {
    let prefix = format!("one{tag}-");
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Whether the network interface exists on the host.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Interfaces enslaved to `bridge` (`ip -o link show master <bridge>`).
pub fn ports_of(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .expect("run ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            Some(name.split('@').next().unwrap_or(name).to_string())
        })
        .collect()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose network namespace is `/run/netns/<name>`.
pub fn pids_in_netns(name: &str) -> Vec<i32> {
    let Ok(m) = fs::metadata(Path::new("/run/netns").join(name)) else {
        return Vec::new();
    };
    let id = (m.dev(), m.ino());
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == id)
                && proc_state(*pid).is_some_and(|s| s != 'Z')
        })
        .collect()
}

/// The process's command line, arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The process's `comm`.
pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Live (non-zombie) processes whose command line contains `marker`.
pub fn pids_with_marker(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&p| p != me && cmdline(p).contains(marker))
        .filter(|&p| proc_state(p).is_some_and(|s| s != 'Z'))
        .collect()
}

/// Whether the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// The state letter of `/proc/<pid>/status` (R, S, D, T, Z...).
pub fn proc_state(pid: i32) -> Option<char> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .and_then(|s| s.trim().chars().next())
}

/// Whether the process is frozen: its v1 freezer cgroup reads FROZEN, its v2 cgroup has
/// `frozen 1`, or it is stopped (T).
pub fn is_frozen(pid: i32) -> bool {
    if proc_state(pid) == Some('T') {
        return true;
    }
    let Ok(cg) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c.trim_start_matches('/')),
            _ => continue,
        };
        if ctrl.split(',').any(|c| c == "freezer") {
            let f = Path::new("/sys/fs/cgroup/freezer")
                .join(path)
                .join("freezer.state");
            if fs::read_to_string(f).is_ok_and(|s| s.trim() == "FROZEN") {
                return true;
            }
        }
        if ctrl.is_empty() {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let f = Path::new(root).join(path).join("cgroup.events");
                if fs::read_to_string(f).is_ok_and(|s| s.lines().any(|l| l == "frozen 1")) {
                    return true;
                }
            }
        }
    }
    false
}

/// Whether an HTTP server at ip:port answers a GET with a status line within `within`.
pub fn http_answers(ip: &str, port: u16, within: Duration) -> bool {
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("address");
    let Ok(mut s) = TcpStream::connect_timeout(&addr, within) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(within));
    let _ = s.set_write_timeout(Some(within));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"HTTP/")
}

/// A start script (sh) that writes `/run/one-context/started` (with $SLURM_JOB_ID) inside
/// the VM and starts a long-lived HTTP listener on :8080 whose command line carries
/// `marker`. (Plain `http.server.HTTPServer` would first resolve the hostname by DNS, which
/// a VM without a route to a resolver waits 10 s for.)
pub fn listener_script(marker: &str) -> String {
    format!(
        "#!/bin/sh\n\
         echo \"$SLURM_JOB_ID\" > /run/one-context/started\n\
         python3 -c 'import socketserver as s, http.server as h; \
         s.ThreadingTCPServer((\"0.0.0.0\", 8080), h.SimpleHTTPRequestHandler).serve_forever()' \
         {marker} >/dev/null 2>&1 &\n"
    )
}

/// A VM template with a NIC on network 0 and a CONTEXT running [`listener_script`].
pub fn ns_vm_template(name: &str, hostname: &str, marker: &str) -> String {
    use base64::Engine as _;
    let script = base64::engine::general_purpose::STANDARD.encode(listener_script(marker));
    format!(
        "NAME = \"{name}\"\nCPU = 0.1\nMEMORY = 64\nNIC = [ NETWORK_ID = \"0\" ]\n\
         CONTEXT = [ SET_HOSTNAME = \"{hostname}\", REPORT_READY = \"YES\", \
         START_SCRIPT_BASE64 = \"{script}\", SLURM_JOB_ID = \"42\" ]\n"
    )
}

/// A marker unique to this test process and `n`.
pub fn marker(n: u32) -> String {
    format!("itmark-{}-{n}", std::process::id())
}

/// The VM's keeper: the process in its netns named `vmkeeper<id>`.
pub fn keeper_of(netns: &str, vm: i32) -> Option<i32> {
    let name = format!("vmkeeper{vm}");
    pids_in_netns(netns).into_iter().find(|&p| comm(p) == name)
}
