//! Where the `one-sim` program under test is.
//!
//! one-sim's own tests have cargo's path for it (`CARGO_BIN_EXE_one-sim`). slurm-one's
//! tests and benches, which drive the simulator as a process too (restarts, namespace VMs
//! whose init is `one-sim __vm-init`), include this file: cargo gives a package's tests only
//! that package's binaries, so they take the `one-sim` of their own target dir and profile.
//! After `cargo test --workspace` (or `cargo bench --workspace`) it is there and up to date;
//! when it is missing, or older than the one-sim library the test was linked with (slurm-one
//! has one-sim as a dev-dependency, so that library is always current), it is built first
//! with `cargo build -p one-sim --bin one-sim`, once per test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The one-sim binary to run.
pub fn one_sim_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| match option_env!("CARGO_BIN_EXE_one-sim") {
        Some(exe) => PathBuf::from(exe),
        None => beside_the_test(),
    })
}

/// `<target>/<profile>/one-sim` for a test at `<target>/<profile>/deps/<test>`, built if
/// missing or stale.
fn beside_the_test() -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    let deps = test.parent().expect("the test's directory");
    let profile_dir = deps.parent().expect("the profile directory");
    let exe = profile_dir.join("one-sim");
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let library = std::fs::read_dir(deps)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libone_sim-") && name.ends_with(".rlib")
        })
        .filter_map(|e| modified(&e.path()))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if modified(&exe).is_some_and(|built| built >= library) {
        return exe;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(name) => name.to_string(),
        None => panic!("no profile in {}", test.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = profile_dir.parent().expect("the target directory");
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "one-sim", "--bin", "one-sim"])
        .args(["--profile", &profile, "--target-dir"])
        .arg(target_dir)
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build one-sim: {e}"));
    assert!(
        status.success() && exe.exists(),
        "`cargo build -p one-sim --profile {profile}` failed ({status}); \
         build it, or run the tests with `cargo test --workspace`"
    );
    exe
}
