//! Provisioning cost (scripts/bench row 2): wall time and XML-RPC calls until N VMs of one
//! job are up, on one-sim's dummy driver, for slurm-one's `Provisioner` and for a naive
//! client like the original prototype (creates the VMs one after the other, then asks each
//! VM's state with its own `one.vm.info` once a second until all are RUNNING).
//!
//! Calls are counted on the client side: both clients talk to one-sim through a loopback
//! proxy that counts the `<methodName>`s it forwards. Every run gets a fresh one-sim; the
//! two clients alternate (noisy shared machine). Not a test: it prints figures and writes
//! `target/bench/provisioning.json` (`BENCH_OUT`).
//!
//! Settings: `BENCH_NS` (default `1,8,64,256`; `--quick` `1,8,64`), `BENCH_REPS` (3; quick
//! 1), `BENCH_BOOT_DELAY` (`3s`), `BENCH_POLL` (slurm-one's poll_interval, `200ms` as in
//! scripts/cluster).

mod common;
#[path = "../crates/one-sim/tests/it/exe.rs"]
mod exe;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_list, env_or, median, quick, row, write_rows, Target};
use serde_json::json;
use slurm_one::config::Config;
use slurm_one::mapping::MappingDb;
use slurm_one::one::client::Client;
use slurm_one::provision::{JobRequest, NodeRequest, Provisioner};
use slurm_one::render::{self, Creation, VmRequest};

/// Room for 256 VMs of 1 VCPU at share 0.25 and 256 MB, with margin.
const HOSTS: &str = "16x8cpu:64G";
/// Addresses for 256 VMs (the default /24 has 253).
const NETWORK: &str = "10.80.0.0/16";
const CPU_SHARE: f64 = 0.25;

// ---------------------------------------------------------------------------------------
// A counting proxy
// ---------------------------------------------------------------------------------------

/// Forwards loopback TCP to one-sim unchanged and counts the XML-RPC method names in what
/// clients send (framing-agnostic: keep-alive, pipelining and chunking all count right).
struct Proxy {
    addr: SocketAddr,
    calls: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
}

const OPEN: &[u8] = b"<methodName>";
const CLOSE: &[u8] = b"</methodName>";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Takes every complete `<methodName>X</methodName>` out of `pending`, keeping what may be
/// the start of the next one.
fn scan(pending: &mut Vec<u8>, found: &mut Vec<String>) {
    loop {
        let Some(a) = find(pending, OPEN) else {
            let keep = OPEN.len() - 1;
            if pending.len() > keep {
                pending.drain(..pending.len() - keep);
            }
            return;
        };
        let start = a + OPEN.len();
        let Some(b) = find(&pending[start..], CLOSE) else {
            pending.drain(..a);
            return;
        };
        found.push(
            String::from_utf8_lossy(&pending[start..start + b])
                .trim()
                .to_string(),
        );
        pending.drain(..start + b + CLOSE.len());
    }
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let calls = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&calls), Arc::clone(&stop));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let calls = Arc::clone(&c);
                std::thread::spawn(move || relay(client, upstream, &calls));
            }
        });
        Proxy { addr, calls, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/RPC2", self.addr)
    }

    fn reset(&self) {
        self.calls.lock().expect("counter").clear();
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        self.calls.lock().expect("counter").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, calls: &Mutex<BTreeMap<String, u64>>) {
    let Ok(up) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut up_r, mut client_w) = match (up.try_clone(), client.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return,
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Both);
    });
    let (mut client_r, mut up_w) = (client, up);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
    let mut found = Vec::new();
    loop {
        let n = match client_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        scan(&mut pending, &mut found);
        if !found.is_empty() {
            let mut c = calls.lock().expect("counter");
            for m in found.drain(..) {
                *c.entry(m).or_default() += 1;
            }
        }
        if up_w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = up_w.shutdown(Shutdown::Write);
    let _ = back.join();
}

// ---------------------------------------------------------------------------------------
// one-sim
// ---------------------------------------------------------------------------------------

struct OneSim {
    child: Child,
    addr: SocketAddr,
}

impl OneSim {
    fn start(dir: &Path, auth: &Path, boot_delay: &str) -> OneSim {
        let log = std::fs::File::create(dir.join("one-sim.log")).expect("one-sim log");
        let mut child = Command::new(exe::one_sim_exe())
            .args(["--listen", "127.0.0.1:0", "--driver", "dummy"])
            .args(["--boot-delay", boot_delay, "--hosts", HOSTS])
            .args(["--network", NETWORK])
            .arg("--auth-file")
            .arg(auth)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start one-sim");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let prefix = "one-sim listening on http://";
        let addr = loop {
            line.clear();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                panic!(
                    "one-sim exited before listening; see {}",
                    dir.join("one-sim.log").display()
                );
            }
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                break rest
                    .trim_end_matches("/RPC2")
                    .parse()
                    .expect("one-sim prints its address");
            }
        };
        // Keep draining stdout so one-sim never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut lines, &mut std::io::sink());
        });
        OneSim { child, addr }
    }
}

impl Drop for OneSim {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The two clients
// ---------------------------------------------------------------------------------------

fn config(dir: &Path, url: &str, auth: &Path, poll: &str) -> Config {
    let text = format!(
        r#"
[opennebula]
endpoint = "{url}"
auth_file = "{auth}"
api_timeout = "30s"

[cluster]
name = "bench"
database = "{db}"

[templates]
default = "small"

[templates.small]
body = '''
NIC = [ NETWORK_ID = "0" ]
CONTEXT = [ NETWORK = "YES" ]
'''

[provisioning]
boot_timeout = "300s"
poll_interval = "{poll}"
concurrency = 4
wait_ready = true
"#,
        auth = auth.display(),
        db = dir.join("mapping.db").display(),
    );
    Config::from_toml_str(&text, &dir.join("bench.toml"), &|_| None).expect("bench config")
}

fn job(n: usize) -> JobRequest {
    JobRequest {
        job_id: 1,
        job_name: "bench".into(),
        user: "root".into(),
        nodes: (1..=n)
            .map(|i| NodeRequest {
                name: format!("vm{i}"),
                cpus: 1,
            })
            .collect(),
        memory_mb: Some(256),
        cpu_share: Some(CPU_SHARE),
        template: None,
    }
}

/// slurm-one: one `Provisioner::provision` of an N-node job.
fn candidate(cfg: &Config, one: &Client, n: usize) -> Duration {
    let db = MappingDb::open(&cfg.cluster.database, Duration::from_secs(10)).expect("table");
    let t = Instant::now();
    let up = Provisioner::new(cfg, one, &db)
        .provision(&job(n))
        .expect("slurm-one provisions");
    let wall = t.elapsed();
    assert_eq!(up.len(), n);
    wall
}

/// The prototype: the same VM templates, allocated one after the other, then one
/// `one.vm.info` per VM not yet RUNNING, once a second.
fn naive(cfg: &Config, one: &Client, n: usize) -> Duration {
    let job = job(n);
    let db = MappingDb::open(&cfg.cluster.database, Duration::from_secs(10)).expect("table");
    let engine = Provisioner::new(cfg, one, &db);
    let source = &cfg.template(None).expect("template").source;
    let templates: Vec<String> = job
        .nodes
        .iter()
        .map(|node| {
            let tag = format!("naive-{}", node.name);
            let req = VmRequest {
                cluster: &cfg.cluster.name,
                job_id: job.job_id,
                job_name: &job.job_name,
                user: &job.user,
                node: &node.name,
                size: engine.size(&job, node).expect("size"),
                request_tag: &tag,
                start_script: &cfg.provisioning.start_script,
            };
            match render::render(&req, source, &[]).expect("render") {
                Creation::Allocate { template } => template,
                other => panic!("expected an allocate, got {other:?}"),
            }
        })
        .collect();
    let t = Instant::now();
    let mut pending: Vec<u32> = templates
        .iter()
        .map(|tmpl| one.vm_allocate(tmpl, false).expect("allocate"))
        .collect();
    loop {
        pending.retain(|id| !one.vm_info(*id).expect("vm info").running());
        if pending.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    t.elapsed()
}

struct Sample {
    wall_ms: f64,
    calls: u64,
    by_method: BTreeMap<String, u64>,
}

fn run(which: &str, n: usize, boot: &str, poll: &str, scratch: &Path) -> Sample {
    let dir = tempfile::Builder::new()
        .prefix(&format!("prov-{which}-{n}-"))
        .tempdir_in(scratch)
        .expect("temp dir");
    let auth: PathBuf = dir.path().join("one_auth");
    std::fs::write(&auth, "oneadmin:bench-secret\n").expect("auth file");
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let sim = OneSim::start(dir.path(), &auth, boot);
    let proxy = Proxy::start(sim.addr);
    let cfg = config(dir.path(), &proxy.url(), &auth, poll);
    let one = slurm_one::admin::client(&cfg, false).expect("client");
    proxy.reset();
    let wall = match which {
        "slurm-one" => candidate(&cfg, &one, n),
        _ => naive(&cfg, &one, n),
    };
    let by_method = proxy.counts();
    drop(one);
    drop(proxy);
    drop(sim);
    Sample {
        wall_ms: common::ms(wall),
        calls: by_method.values().sum(),
        by_method,
    }
}

fn main() {
    let q = quick();
    let ns = env_list("NS", if q { "1,8,64" } else { "1,8,64,256" });
    let reps: usize = env_or("REPS", if q { "1" } else { "3" })
        .parse()
        .expect("BENCH_REPS is a number");
    let boot = env_or("BOOT_DELAY", "3s");
    let poll = env_or("POLL", "200ms");
    let scratch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/tmp");
    std::fs::create_dir_all(&scratch).expect("scratch dir");

    let mut rows = Vec::new();
    for &n in &ns {
        let mut cand = Vec::new();
        let mut base = Vec::new();
        for rep in 0..reps {
            // Alternate who goes first.
            let order = if rep % 2 == 0 {
                ["slurm-one", "naive"]
            } else {
                ["naive", "slurm-one"]
            };
            for which in order {
                let s = run(which, n, &boot, &poll, &scratch);
                eprintln!(
                    "provisioning N={n} rep {rep} {which}: {:.0} ms, {} calls {:?}",
                    s.wall_ms, s.calls, s.by_method
                );
                if which == "slurm-one" {
                    cand.push(s);
                } else {
                    base.push(s);
                }
            }
        }
        let walls = |v: &[Sample]| v.iter().map(|s| s.wall_ms / 1000.0).collect::<Vec<_>>();
        let calls = |v: &[Sample]| v.iter().map(|s| s.calls as f64).collect::<Vec<_>>();
        let params = json!({
            "n_vms": n, "driver": "dummy", "boot_delay": boot, "reps": reps,
            "slurm_one": {"poll_interval": poll, "concurrency": 4,
                          "calls_by_method": cand.last().map(|s| &s.by_method)},
            "baseline": "naive: serial one.vm.allocate, then one.vm.info per pending VM every 1 s",
            "baseline_calls_by_method": base.last().map(|s| &s.by_method),
            "wall_samples_s": {"slurm_one": walls(&cand), "naive": walls(&base)},
            "statistic": "median over reps",
        });
        let target = |x| (n == 64).then_some(Target::RatioAtMost(x));
        // The best ratio any client could reach against this baseline: OpenNebula has no
        // batch create, so N allocates plus at least one read; nothing is RUNNING before the
        // boot delay.
        let with_floor = |floor: f64| {
            let mut p = params.clone();
            p["floor_ratio"] = json!(floor);
            p["floor"] = json!("best ratio any client can reach here: N one.vm.allocate + 1 read; wall >= boot delay");
            p
        };
        let base_calls = median(&calls(&base));
        let base_wall = median(&walls(&base));
        let boot_s = slurm_one::config::parse_duration(&boot)
            .expect("BENCH_BOOT_DELAY is a duration")
            .as_secs_f64();
        rows.push(row(
            &format!("provision_calls_n{n}"),
            &format!("2. provision N={n} (dummy): XML-RPC calls until RUNNING"),
            median(&calls(&cand)),
            base_calls,
            "calls",
            target(0.1),
            with_floor((n as f64 + 1.0) / base_calls),
        ));
        rows.push(row(
            &format!("provision_wall_n{n}"),
            &format!("2. provision N={n} (dummy): wall until RUNNING"),
            median(&walls(&cand)),
            base_wall,
            "s",
            target(0.1),
            with_floor(boot_s / base_wall),
        ));
    }
    write_rows("provisioning", &rows);
}
