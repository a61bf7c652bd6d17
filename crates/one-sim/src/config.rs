//! `one-sim`'s command-line values (durations, networks, host specs), its auth file, its
//! errors with their exit codes, and a stderr logger.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Why `one-sim` could not run. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// --auth-file missing.
    #[error("--auth-file is required (a file of user:password lines)")]
    NoAuthFile,
    /// The auth file could not be read.
    #[error("cannot read auth file {0}: {1}")]
    AuthFile(PathBuf, io::Error),
    /// The auth file has no usable line.
    #[error("auth file {0} has no `user:password` line")]
    EmptyAuthFile(PathBuf),
    /// The state dir could not be created.
    #[error("cannot create state dir {0}: {1}")]
    StateDir(PathBuf, io::Error),
    /// The state file could not be read or parsed.
    #[error("cannot load state file {0}: {1}")]
    StateFile(PathBuf, io::Error),
    /// `cleanup` on a dir without state.
    #[error("nothing to clean up: {0} has no one-sim.json")]
    NothingToClean(PathBuf),
    /// The state could not be written.
    #[error("cannot save the state: {0}")]
    Save(io::Error),
    /// The listen address could not be bound or served.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, io::Error),
    /// Our own executable path (needed by the ns driver).
    #[error("cannot find one-sim's own executable: {0}")]
    SelfExe(io::Error),
    /// The driver could not be set up or shut down.
    #[error("driver: {0}")]
    Driver(String),
}

impl SimError {
    /// Exit code: 2 for bad input (flags, files), 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            SimError::NoAuthFile
            | SimError::AuthFile(..)
            | SimError::EmptyAuthFile(_)
            | SimError::StateFile(..)
            | SimError::NothingToClean(_) => 2,
            _ => 1,
        }
    }
}

/// Reads `user:password` lines (blank lines and `#` comments skipped); each is a session.
pub fn read_auth_file(path: &Path) -> Result<Vec<String>, SimError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SimError::AuthFile(path.to_path_buf(), e))?;
    let sessions: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.contains(':'))
        .map(str::to_string)
        .collect();
    if sessions.is_empty() {
        return Err(SimError::EmptyAuthFile(path.to_path_buf()));
    }
    Ok(sessions)
}

/// Parses `2s`, `500ms`, `1.5s`, `1m` or a bare number of seconds into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1000.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 2s, 500ms, 0)"))?;
    if !(v.is_finite() && v >= 0.0 && v * scale < 86_400_000.0) {
        return Err(format!("`{s}` is not a duration between 0 and 24h"));
    }
    // Bounded above, so the cast cannot truncate.
    Ok((v * scale).round() as u64)
}

/// An IPv4 network, e.g. 10.77.0.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length (8..=30).
    pub prefix_len: u8,
}

impl Ipv4Net {
    /// The first host address (the bridge's).
    pub fn first_host(&self) -> Ipv4Addr {
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        Ipv4Addr::from((u32::from(self.addr) & mask) + 1)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Parses `A.B.C.D/N` with 8 ≤ N ≤ 30.
pub fn parse_ipv4_net(s: &str) -> Result<Ipv4Net, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not A.B.C.D/N"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
    let prefix_len: u8 = len
        .parse()
        .map_err(|_| format!("`{len}` is not a prefix length"))?;
    if !(8..=30).contains(&prefix_len) {
        return Err(format!("prefix length {prefix_len} is outside 8..30"));
    }
    Ok(Ipv4Net { addr, prefix_len })
}

/// Hosts to create: how many, cores and MiB each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSpec {
    /// Number of hosts.
    pub count: u32,
    /// Cores per host.
    pub cores: u32,
    /// Memory per host, MiB.
    pub mem_mb: u64,
}

/// Parses `COUNTxCORES[cpu]:MEM[G|M]`, e.g. `4x8cpu:32G`.
pub fn parse_hosts(s: &str) -> Result<HostSpec, String> {
    let bad = || format!("`{s}` is not COUNTxCORES:MEMORY (example: 4x8cpu:32G)");
    let (count, rest) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (cores, mem) = rest.split_once(':').ok_or_else(bad)?;
    let cores = cores.trim_end_matches("cpu").trim_end_matches('c');
    let count: u32 = count.parse().map_err(|_| bad())?;
    let cores: u32 = cores.parse().map_err(|_| bad())?;
    let mem_mb: u64 = if let Some(g) = mem.strip_suffix(['G', 'g']) {
        g.parse::<u64>().map_err(|_| bad())?.saturating_mul(1024)
    } else {
        mem.strip_suffix(['M', 'm'])
            .unwrap_or(mem)
            .parse()
            .map_err(|_| bad())?
    };
    if count == 0 || count > 1000 || cores == 0 || cores > 4096 || mem_mb == 0 {
        return Err(format!(
            "`{s}`: need 1..1000 hosts with at least 1 core and 1 MiB"
        ));
    }
    Ok(HostSpec {
        count,
        cores,
        mem_mb,
    })
}

/// A short tag that keeps two simulators' namespaces and veths apart: from the state dir
/// when there is one (so a restart finds its VMs), else from the bridge name and pid.
pub fn instance_tag(state_dir: Option<&Path>, bridge: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match state_dir {
        Some(d) => std::fs::canonicalize(d)
            .unwrap_or_else(|_| d.to_path_buf())
            .hash(&mut h),
        None => {
            bridge.hash(&mut h);
            std::process::id().hash(&mut h);
        }
    }
    let mut n = h.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..4)
        .map(|_| {
            let c = alphabet[(n % 36) as usize];
            n /= 36;
            char::from(c)
        })
        .collect()
}

struct StderrLogger(log::LevelFilter);

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "one-sim: {}: {}",
                r.level().as_str().to_ascii_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

/// Routes `log` records at `level` and above to stderr.
pub fn init_stderr_logger(level: log::LevelFilter) {
    if log::set_boxed_logger(Box::new(StderrLogger(level))).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration_ms("2s"), Ok(2000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("0.25s"), Ok(250));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(parse_duration_ms("-1s").is_err());
        assert!(parse_duration_ms("soon").is_err());
    }

    #[test]
    fn host_spec_reads_count_cores_and_memory() {
        assert_eq!(
            parse_hosts("4x8cpu:32G"),
            Ok(HostSpec {
                count: 4,
                cores: 8,
                mem_mb: 32768
            })
        );
        assert_eq!(
            parse_hosts("1x2:512M"),
            Ok(HostSpec {
                count: 1,
                cores: 2,
                mem_mb: 512
            })
        );
        assert!(parse_hosts("4x0cpu:1G").is_err());
        assert!(parse_hosts("four").is_err());
    }

    #[test]
    fn network_gives_bridge_the_first_address() {
        let n = parse_ipv4_net("10.77.0.0/24").unwrap();
        assert_eq!(n.first_host(), Ipv4Addr::new(10, 77, 0, 1));
        assert!(parse_ipv4_net("10.77.0.0/31").is_err());
        assert!(parse_ipv4_net("10.77.0.0").is_err());
    }

    #[test]
    fn instance_tag_is_four_chars_and_stable_for_a_dir() {
        let a = instance_tag(Some(Path::new("/tmp/x")), "b");
        assert_eq!(a.len(), 4);
        assert_eq!(a, instance_tag(Some(Path::new("/tmp/x")), "c"));
    }
}
