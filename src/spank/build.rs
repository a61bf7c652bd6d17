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
