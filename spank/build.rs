//! Reads `SLURM_VERSION_NUMBER` from the installed SLURM headers, so that the plugin declares
//! the version of the SLURM it is built for (SLURM refuses to load a SPANK plugin whose
//! `plugin_version` differs from its own). slurm-spank's own constant comes from its
//! pre-generated bindings (we build with `SKIP_SLURM_BINDINGS=1`) and names another release.

use std::env;
use std::error::Error;
use std::fs;
use std::path::PathBuf;

/// Where Debian's `libslurm-dev` puts the header; `SLURM_VERSION_H` overrides it.
const DEFAULT_HEADER: &str = "/usr/include/slurm/slurm_version.h";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-env-changed=SLURM_VERSION_H");
    println!("cargo:rerun-if-env-changed=CC");
    let header = env::var_os("SLURM_VERSION_H")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HEADER));
    println!("cargo:rerun-if-changed={}", header.display());
    let text = fs::read_to_string(&header).map_err(|e| {
        format!(
            "cannot read {} (install libslurm-dev or set SLURM_VERSION_H): {e}",
            header.display()
        )
    })?;
    let version = version_number(&text).ok_or_else(|| {
        format!(
            "no `#define SLURM_VERSION_NUMBER 0x...` in {}",
            header.display()
        )
    })?;
    link_unwinder_statically();
    let out = PathBuf::from(env::var("OUT_DIR")?).join("slurm_version.rs");
    fs::write(
        out,
        format!(
            "/// `SLURM_VERSION_NUMBER` of the SLURM headers this plugin was built against \
             ({}), read by `build.rs`.\n\
             pub const SLURM_VERSION_NUMBER: std::os::raw::c_uint = {version:#08x};\n",
            header.display()
        ),
    )?;
    Ok(())
}

/// Every sbatch, salloc and srun loads this plugin, and loading libgcc_s (which Rust's std
/// links for unwinding) cost each about 0.1 ms, a third of the plugin's whole cost. GCC's
/// static unwinder (libgcc_eh.a, what `gcc -static-libgcc` links) resolves the same symbols
/// first, so libgcc_s is not needed. Panics never leave the plugin (slurm-spank catches them
/// in every callback), so no unwinding crosses into another copy of the unwinder. Without
/// libgcc_eh.a the plugin links libgcc_s as usual.
fn link_unwinder_statically() {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let found = std::process::Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|path| PathBuf::from(path.trim()))
        // An unknown file is printed back as its bare name.
        .filter(|path| path.is_absolute() && path.is_file());
    match found.as_deref().and_then(|path| path.parent()) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static=gcc_eh");
        }
        None => println!(
            "cargo:warning=`{cc} -print-file-name=libgcc_eh.a` found nothing: the plugin links libgcc_s"
        ),
    }
}

/// The value of `#define SLURM_VERSION_NUMBER 0xMMmmuu`.
fn version_number(header: &str) -> Option<u32> {
    header.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "#define" || words.next()? != "SLURM_VERSION_NUMBER" {
            return None;
        }
        let hex = words.next()?.strip_prefix("0x")?;
        u32::from_str_radix(hex, 16).ok()
    })
}
