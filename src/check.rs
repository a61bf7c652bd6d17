//! `slurm-one check`: whether this host is set up the way README's "Installing" says.
//!
//! Owns: reading SLURM's settings (the live `scontrol show config`, else slurm.conf itself),
//! the list of slurm.conf lines slurm-one needs and recommends, plugstack.conf (with its
//! `include`s) and the SPANK plugin line, the SLURM series a plugin file was built for (its
//! `plugin_version` symbol, read from the ELF file as SLURM reads it), the mapping table's
//! directory, and the one-line findings. Does not own: the config, credentials, OpenNebula
//! and table checks (`admin::check`), running scontrol (`slurm.rs`), printing (the CLI).
//! Nothing here edits slurm.conf or plugstack.conf: it only says what is missing.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::slurm::Series;

/// Where the packages install the controller hooks.
pub const HOOK_DIR: &str = "/usr/libexec/slurm-one";
/// File name of the SPANK plugin.
pub const PLUGIN_FILE: &str = "libslurm_one_spank.so";
/// slurm.conf when neither `$SLURM_CONF` nor `cluster.slurm_conf` names another.
pub const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";
/// SLURM's plugin directories of the distributions slurm-one is packaged for, tried for a
/// plugstack.conf line with a relative path when SLURM's PluginDir is not known.
const PLUGIN_DIRS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/slurm-wlm",
    "/usr/lib64/slurm",
    "/usr/lib/slurm",
];

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// As it should be.
    Ok,
    /// Works, but not as README recommends, or could not be checked.
    Warn,
    /// Missing or wrong: slurm-one does not work (`check` exits non-zero).
    Missing,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Missing => "FAIL",
        })
    }
}

/// One line of `slurm-one check`.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// How bad.
    pub level: Level,
    /// What was checked (a file, a key).
    pub what: String,
    /// What was found, and for a problem what to do.
    pub detail: String,
}

impl Finding {
    fn new(level: Level, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Finding {
            level,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<5} {}: {}",
            self.level.to_string(),
            self.what,
            self.detail
        )
    }
}

impl From<crate::admin::Check> for Finding {
    fn from(c: crate::admin::Check) -> Self {
        match c.result {
            Ok(detail) => Finding::new(Level::Ok, c.what, detail),
            Err(detail) => Finding::new(Level::Missing, c.what, detail),
        }
    }
}

/// SLURM's settings, keyed case-insensitively, as `scontrol show config` or slurm.conf
/// gives them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlurmSettings {
    /// Where they came from, for the findings ("scontrol show config" or a file).
    pub source: String,
    /// slurm.conf's path when read from the file (its directory holds the default
    /// plugstack.conf).
    pub file: Option<PathBuf>,
    values: BTreeMap<String, String>,
}

impl SlurmSettings {
    /// Parses `scontrol show config`: `Key = Value` lines (the header line, the trailing
    /// "Slurmctld(primary) at ... is UP" and the plugin sections' titles have no ` = `).
    /// Since 24.05 a setting that may be given several times prints one `Key[i] = Value`
    /// line each (PrologSlurmctld, EpilogSlurmctld, Prolog, Epilog; 24.11
    /// src/api/config_info.c): they are joined under `Key`, comma-separated, as 22.05
    /// prints a list.
    pub fn from_show_config(text: &str) -> Self {
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(" = ") {
                let key = key.trim();
                if key.is_empty() || key.contains(' ') {
                    continue;
                }
                let value = value.trim();
                let indexed = key
                    .strip_suffix(']')
                    .and_then(|k| k.split_once('['))
                    .filter(|(_, i)| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                    .map(|(base, _)| base);
                match indexed {
                    Some(base) => values
                        .entry(base.to_ascii_lowercase())
                        .and_modify(|v| {
                            v.push(',');
                            v.push_str(value);
                        })
                        .or_insert_with(|| value.to_string()),
                    None => values
                        .entry(key.to_ascii_lowercase())
                        .or_insert_with(|| value.to_string()),
                };
            }
        }
        SlurmSettings {
            source: "scontrol show config".into(),
            file: None,
            values,
        }
    }

    /// Parses slurm.conf text: `Key=Value` lines, `#` comments, node, partition and other
    /// record lines skipped. `Include` lines are returned for the caller to read.
    fn parse_conf(text: &str, values: &mut BTreeMap<String, String>) -> Vec<String> {
        let mut includes = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if let Some(rest) = line
                .strip_prefix("Include ")
                .or_else(|| line.strip_prefix("include "))
            {
                includes.push(rest.trim().to_string());
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim().to_ascii_lowercase();
            if matches!(
                key.as_str(),
                "nodename" | "partitionname" | "nodeset" | "downnodes" | "frontendname"
            ) {
                continue;
            }
            // One setting per line; a value never holds a blank except inside quotes.
            let value = value.trim();
            let value = match value.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or(""),
                None => value.split_whitespace().next().unwrap_or(""),
            };
            // Since 24.05 these may be given on several lines, all of which run (24.11
            // src/common/read_config.c, S_P_ARRAY): one list, as scontrol prints them.
            let listed = matches!(
                key.as_str(),
                "prologslurmctld" | "epilogslurmctld" | "prolog" | "epilog"
            );
            match values.get_mut(&key) {
                Some(v) if listed => {
                    v.push(',');
                    v.push_str(value);
                }
                _ => {
                    values.insert(key, value.to_string());
                }
            }
        }
        includes
    }

    /// Reads slurm.conf and the files it `Include`s (relative to its directory, a `*` in
    /// the last component allowed).
    pub fn from_slurm_conf(path: &Path) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        read_with_includes(path, |_, text| Self::parse_conf(text, &mut values))?;
        Ok(SlurmSettings {
            source: path.display().to_string(),
            file: Some(path.to_path_buf()),
            values,
        })
    }

    /// A setting, `None` when unset (`(null)` in `scontrol show config`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(&key.to_ascii_lowercase())
            .map(String::as_str)
            .filter(|v| !v.is_empty() && *v != "(null)")
    }

    /// Whether the comma-separated setting `key` holds `item` (case-insensitive).
    fn has_item(&self, key: &str, item: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.split(',').any(|i| i.trim().eq_ignore_ascii_case(item)))
    }

    /// The leading number of a setting (`300 sec`, `0 nodes/min`, `600`).
    fn number(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// SlurmUser's name and, when `scontrol show config` gave it (`slurm(64030)`), uid.
    /// SLURM's default is root.
    pub fn slurm_user(&self) -> (String, Option<u32>) {
        let v = self.get("SlurmUser").unwrap_or("root");
        match v.split_once('(') {
            Some((name, rest)) => (name.to_string(), rest.trim_end_matches(')').parse().ok()),
            None => (v.to_string(), None),
        }
    }

    /// plugstack.conf: PlugStackConfig, else `plugstack.conf` beside slurm.conf.
    pub fn plugstack_path(&self, slurm_conf: &Path) -> PathBuf {
        match self.get("PlugStackConfig") {
            Some(p) => PathBuf::from(p),
            None => slurm_conf
                .parent()
                .unwrap_or(Path::new("/etc/slurm"))
                .join("plugstack.conf"),
        }
    }
}

/// The files a path names, `*` allowed in its last component (plugstack.conf's and
/// slurm.conf's includes), sorted; the path itself when it has no `*`.
fn expand_glob(path: &Path) -> Vec<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((prefix, suffix)) = name.split_once('*') else {
        return vec![path.to_path_buf()];
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.len() >= prefix.len() + suffix.len()
                    && n.starts_with(prefix)
                    && n.ends_with(suffix)
            })
        })
        .collect();
    found.sort();
    found
}

/// The controller hooks: slurm.conf key and program file name.
pub const HOOKS: [(&str, &str); 4] = [
    ("PrologSlurmctld", "slurm-one-prolog"),
    ("EpilogSlurmctld", "slurm-one-epilog"),
    ("ResumeProgram", "slurm-one-resume"),
    ("SuspendProgram", "slurm-one-suspend"),
];

/// What slurm.conf must and should say for slurm-one (README, "Installing"). `executable`
/// tells whether a hook's program file is there; `cfg` (when it loaded) gives the waits a
/// prolog may take; `series` the running SLURM's.
pub fn slurm_conf_findings(
    s: &SlurmSettings,
    cfg: Option<&Config>,
    series: Option<Series>,
    executable: &dyn Fn(&Path) -> bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let what = |key: &str| format!("slurm.conf {key}");
    for (key, program) in HOOKS {
        let want = format!("add {key}={HOOK_DIR}/{program}");
        let finding = match s.get(key) {
            None => Finding::new(Level::Missing, what(key), format!("not set; {want}")),
            Some(value) => {
                let ours = value
                    .split(',')
                    .map(str::trim)
                    .find(|p| Path::new(p).file_name().is_some_and(|n| n == program));
                match ours {
                    None => Finding::new(
                        Level::Missing,
                        what(key),
                        format!("is {value}, not slurm-one's; set {key}={HOOK_DIR}/{program}"),
                    ),
                    Some(p) if !executable(Path::new(p)) => Finding::new(
                        Level::Missing,
                        what(key),
                        format!("{p} is not an executable file"),
                    ),
                    Some(p) => Finding::new(Level::Ok, what(key), p),
                }
            }
        };
        out.push(finding);
    }
    let required = [
        (
            "PrologFlags",
            "Alloc",
            "runs the plugin's job prolog (the VM identity check) at allocation",
        ),
        (
            "SlurmctldParameters",
            "idle_on_node_suspend",
            "a powered-down node returns to idle",
        ),
        (
            "SlurmdParameters",
            "config_overrides",
            "a VM sized to its job registers without being drained for low memory or CPUs",
        ),
    ];
    for (key, item, why) in required {
        out.push(if s.has_item(key, item) {
            Finding::new(Level::Ok, what(key), format!("has {item}"))
        } else {
            Finding::new(
                Level::Missing,
                what(key),
                format!(
                    "is {}, without {item}; add {key}={item} ({why})",
                    s.get(key).unwrap_or("unset")
                ),
            )
        });
    }
    out.push(match s.number("ReturnToService") {
        Some(2) => Finding::new(Level::Ok, what("ReturnToService"), "2"),
        _ => Finding::new(
            Level::Missing,
            what("ReturnToService"),
            format!(
                "is {}; set ReturnToService=2 (a VM's slurmd registers before slurmctld marks \
                 its node powering up)",
                s.get("ReturnToService").unwrap_or("unset (0)")
            ),
        ),
    });
    out.push(match s.number("SuspendTime") {
        Some(_) => Finding::new(
            Level::Ok,
            what("SuspendTime"),
            s.get("SuspendTime").unwrap_or(""),
        ),
        None => Finding::new(
            Level::Missing,
            what("SuspendTime"),
            format!(
                "is {}: power saving is off, so SuspendProgram never ends a VM; set \
                 SuspendTime=300",
                s.get("SuspendTime").unwrap_or("unset")
            ),
        ),
    });
    // A prolog may wait boot_timeout + register_timeout; slurmctld must wait as long.
    if let Some(cfg) = cfg {
        let need = (cfg.provisioning.boot_timeout + cfg.provisioning.register_timeout).as_secs();
        for key in ["ResumeTimeout", "PrologEpilogTimeout"] {
            // 22.05 prints an unset PrologEpilogTimeout as 65534 (no limit).
            let (level, detail) = match s.number(key) {
                None if key == "PrologEpilogTimeout" => (Level::Ok, "no limit".to_string()),
                Some(n) if n >= 65534 => (Level::Ok, "no limit".to_string()),
                Some(n) if n >= need => (Level::Ok, format!("{n} s")),
                n => (
                    Level::Warn,
                    format!(
                        "{} is below boot_timeout + register_timeout ({need} s): a slow boot \
                         fails the job; set {key}={}",
                        n.map_or("the default".to_string(), |n| format!("{n} s")),
                        need.max(600)
                    ),
                ),
            };
            out.push(Finding::new(level, what(key), detail));
        }
    }
    for key in ["SuspendRate", "ResumeRate"] {
        out.push(match s.number(key) {
            Some(0) => Finding::new(Level::Ok, what(key), "0 (no cap)"),
            n => Finding::new(
                Level::Warn,
                what(key),
                format!(
                    "{} caps how many nodes per minute change power state; set {key}=0",
                    n.map_or("the default".to_string(), |n| n.to_string())
                ),
            ),
        });
    }
    out.push(
        if s.get("SchedulerParameters")
            .is_some_and(|v| v.split(',').any(|i| i.trim() == "batch_sched_delay=0"))
        {
            Finding::new(
                Level::Ok,
                what("SchedulerParameters"),
                "batch_sched_delay=0",
            )
        } else {
            Finding::new(
                Level::Warn,
                what("SchedulerParameters"),
                "without batch_sched_delay=0 a batch job may wait 3 s to be scheduled",
            )
        },
    );
    if series.is_some_and(|v| v < Series::new(23, 2)) {
        out.push(if s.has_item("PrivateData", "cloud") {
            Finding::new(Level::Ok, what("PrivateData"), "has cloud")
        } else {
            Finding::new(
                Level::Warn,
                what("PrivateData"),
                "without cloud, SLURM before 23.02 hides powered-down cloud nodes from sinfo; \
                 add PrivateData=cloud",
            )
        });
    }
    out
}

/// A `required`/`optional` line of plugstack.conf.
#[derive(Clone, Debug, PartialEq)]
pub struct PlugstackLine {
    /// The file it was read from.
    pub file: PathBuf,
    /// `required` (else `optional`).
    pub required: bool,
    /// The plugin path as written.
    pub plugin: String,
    /// The plugin's arguments.
    pub args: Vec<String>,
}

/// Parses plugstack.conf text: plugin lines, and `include` patterns for the caller.
fn parse_plugstack(file: &Path, text: &str) -> (Vec<PlugstackLine>, Vec<String>) {
    let mut lines = Vec::new();
    let mut includes = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("include") => includes.extend(words.map(str::to_string)),
            Some(kind @ ("required" | "optional")) => {
                if let Some(plugin) = words.next() {
                    lines.push(PlugstackLine {
                        file: file.to_path_buf(),
                        required: kind == "required",
                        plugin: plugin.to_string(),
                        args: words.map(str::to_string).collect(),
                    });
                }
            }
            _ => {}
        }
    }
    (lines, includes)
}

/// Reads plugstack.conf and what it includes (absolute patterns, or relative to its
/// directory).
pub fn read_plugstack(path: &Path) -> Result<Vec<PlugstackLine>, String> {
    let mut out = Vec::new();
    read_with_includes(path, |file, text| {
        let (lines, includes) = parse_plugstack(file, text);
        out.extend(lines);
        includes
    })?;
    Ok(out)
}

/// Reads `path` and the files it includes: `each` gets every file's path and text and
/// returns its include patterns (relative to the file's directory, or absolute; a `*` in
/// the last component allowed). At most 64 files, so an include loop ends.
fn read_with_includes(
    path: &Path,
    mut each: impl FnMut(&Path, &str) -> Vec<String>,
) -> Result<(), String> {
    let mut pending = vec![path.to_path_buf()];
    let mut read = 0;
    while let Some(file) = pending.pop() {
        read += 1;
        if read > 64 {
            return Err(format!("{}: more than 64 included files", path.display()));
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let dir = file.parent().unwrap_or(Path::new("/"));
        for include in each(&file, &text) {
            pending.extend(expand_glob(&dir.join(include)));
        }
    }
    Ok(())
}

/// The plugin file a plugstack.conf line names: as written when absolute, else the first
/// of `plugin_dirs` (SLURM's PluginDir, colon-separated) that holds it.
pub fn resolve_plugin(
    plugin: &str,
    plugin_dirs: &[PathBuf],
    exists: &dyn Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let path = Path::new(plugin);
    if path.is_absolute() {
        return exists(path).then(|| path.to_path_buf());
    }
    plugin_dirs.iter().map(|d| d.join(path)).find(|p| exists(p))
}

/// Findings about slurm-one's plugstack.conf line; returns the plugin file it names,
/// when found, for the series check.
pub fn plugstack_findings(
    plugstack: &Path,
    lines: &[PlugstackLine],
    config_path: &Path,
    plugin_dirs: &[PathBuf],
    exists: &dyn Fn(&Path) -> bool,
) -> (Vec<Finding>, Option<PathBuf>) {
    let what = format!("plugstack.conf {}", plugstack.display());
    let wanted = format!(
        "required {PLUGIN_FILE} config={}",
        crate::config::DEFAULT_CONFIG_PATH
    );
    let ours: Vec<&PlugstackLine> = lines
        .iter()
        .filter(|l| {
            Path::new(&l.plugin)
                .file_name()
                .is_some_and(|n| n == PLUGIN_FILE)
        })
        .collect();
    let Some(line) = ours.first() else {
        return (
            vec![Finding::new(
                Level::Missing,
                what,
                format!("no line loads {PLUGIN_FILE}; add `{wanted}`"),
            )],
            None,
        );
    };
    let mut out = Vec::new();
    let at = format!("plugstack.conf {}", line.file.display());
    let config_arg = line.args.iter().find_map(|a| a.strip_prefix("config="));
    let named = config_arg.map_or(
        PathBuf::from(crate::config::DEFAULT_CONFIG_PATH),
        PathBuf::from,
    );
    out.push(if !line.required {
        Finding::new(
            Level::Warn,
            at.clone(),
            "the plugin is optional: a failure to load it goes unnoticed and the VM identity \
             check is skipped; make it required",
        )
    } else if !same_file(&named, config_path) {
        Finding::new(
            Level::Warn,
            at.clone(),
            format!(
                "the plugin reads {}, this check {}",
                named.display(),
                config_path.display()
            ),
        )
    } else {
        Finding::new(Level::Ok, at.clone(), format!("required {}", line.plugin))
    });
    if ours.len() > 1 {
        out.push(Finding::new(
            Level::Missing,
            at.clone(),
            format!("{} lines load {PLUGIN_FILE}; keep one", ours.len()),
        ));
    }
    let file = resolve_plugin(&line.plugin, plugin_dirs, exists);
    if file.is_none() {
        out.push(Finding::new(
            Level::Missing,
            format!("SPANK plugin {}", line.plugin),
            format!(
                "not found (looked in {})",
                if Path::new(&line.plugin).is_absolute() {
                    line.plugin.clone()
                } else {
                    plugin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ));
    }
    (out, file)
}

/// The `plugin_version` a SPANK plugin declares (`SLURM_VERSION_NUMBER` of the headers it
/// was built against: 0xMMmmuu), read from its ELF file as SLURM's loader reads the symbol:
/// `.dynsym` entry → section → bytes. `None` when the file is not a 64-bit little-endian
/// ELF with that symbol.
pub fn plugin_version(elf: &[u8]) -> Option<u32> {
    let u16_at =
        |o: usize| -> Option<u16> { Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?)) };
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?)) };
    let u64_at = |o: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)).ok()
    };
    // ELF64 (class 2), little-endian (data 1).
    if elf.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(0x28)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    // (type, addr, offset, size, link, entsize) of section i.
    let section = |i: usize| -> Option<(u32, usize, usize, usize, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(h + 4)?,
            u64_at(h + 0x10)?,
            u64_at(h + 0x18)?,
            u64_at(h + 0x20)?,
            usize::try_from(u32_at(h + 0x28)?).ok()?,
            u64_at(h + 0x38)?,
        ))
    };
    const SHT_DYNSYM: u32 = 11;
    let (_, _, symoff, symsize, strndx, symentsize) =
        (0..shnum).filter_map(section).find(|s| s.0 == SHT_DYNSYM)?;
    let (_, _, stroff, strsize, _, _) = section(strndx)?;
    let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
    if symentsize < 24 {
        return None;
    }
    for sym in (symoff..symoff.checked_add(symsize)?).step_by(symentsize) {
        let name_at = usize::try_from(u32_at(sym)?).ok()?;
        let name = strtab.get(name_at..)?.split(|b| *b == 0).next()?;
        if name != b"plugin_version" {
            continue;
        }
        let shndx = usize::from(u16_at(sym + 6)?);
        let value = u64_at(sym + 8)?;
        let (_, addr, offset, _, _, _) = section(shndx)?;
        return u32_at(offset.checked_add(value.checked_sub(addr)?)?);
    }
    None
}

/// Whether the plugin `file`, declaring `version`, loads into the running `series`.
pub fn plugin_series_finding(file: &Path, version: Option<u32>, series: Option<Series>) -> Finding {
    let what = format!("SPANK plugin {}", file.display());
    let Some(v) = version else {
        return Finding::new(
            Level::Missing,
            what,
            "declares no plugin_version: not a SPANK plugin SLURM can load",
        );
    };
    let built = Series::new(v >> 16, (v >> 8) & 0xff);
    let built_text = format!(
        "built for SLURM {}.{:02}.{}",
        built.major,
        built.minor,
        v & 0xff
    );
    match series {
        None => Finding::new(
            Level::Warn,
            what,
            format!("{built_text}; the running series is unknown (scontrol --version failed)"),
        ),
        Some(s) if s == built => Finding::new(
            Level::Ok,
            what,
            format!("{built_text}, the series scontrol --version reports"),
        ),
        Some(s) => Finding::new(
            Level::Missing,
            what,
            format!(
                "{built_text}, but SLURM here is {}.{:02}: SLURM loads it only into its own \
                 series; install the package built for {}.{:02}",
                s.major, s.minor, s.major, s.minor
            ),
        ),
    }
}

/// The mapping table's directory: there, and writable by SlurmUser (the hooks run as
/// SlurmUser and create the table there).
pub fn database_dir_finding(
    db: &Path,
    slurm_user: &str,
    uid: Option<u32>,
    meta: Option<&std::fs::Metadata>,
) -> Finding {
    let dir = db.parent().unwrap_or(Path::new("/"));
    let what = format!("database directory {}", dir.display());
    let Some(meta) = meta else {
        return Finding::new(
            Level::Missing,
            what,
            format!("missing; create it owned by SlurmUser {slurm_user}, mode 0755"),
        );
    };
    let mode = meta.permissions().mode();
    let writable = match uid {
        Some(0) => true,
        Some(uid) => meta.is_dir() && meta.uid() == uid && mode & 0o200 != 0,
        None => false,
    };
    if !meta.is_dir() {
        Finding::new(Level::Missing, what, "not a directory")
    } else if writable {
        Finding::new(
            Level::Ok,
            what,
            format!("writable by SlurmUser {slurm_user}"),
        )
    } else {
        Finding::new(
            Level::Missing,
            what,
            format!(
                "not writable by SlurmUser {slurm_user} (owner uid {}, mode {:o}); chown {slurm_user} {}",
                meta.uid(),
                mode & 0o7777,
                dir.display()
            ),
        )
    }
}

/// The uid of a user name (`getpwnam`), `None` when there is no such user.
fn uid_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string; getpwnam returns NULL or a pointer to
    // a static record, read at once before any other passwd call (this program has one
    // thread here).
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-NULL, so it points to a valid passwd record.
    Some(unsafe { (*pw).pw_uid })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_file(p: &Path) -> bool {
    p.is_file()
}

/// Every check of `slurm-one check`, in order: the config file (and through it
/// credentials, OpenNebula, templates, table: `admin::check`), the table's directory,
/// SLURM's settings (the running slurmctld's, else slurm.conf's: `$SLURM_CONF`, else
/// `cluster.slurm_conf`, else /etc/slurm/slurm.conf), plugstack.conf and the plugin's series.
pub fn run(config_path: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let cfg = match Config::load(config_path) {
        Ok(cfg) => {
            out.push(Finding::new(
                Level::Ok,
                format!("config {}", config_path.display()),
                format!("parses; cluster {}", cfg.cluster.name),
            ));
            Some(cfg)
        }
        Err(e) => {
            out.push(Finding::new(
                Level::Missing,
                format!("config {}", config_path.display()),
                e.to_string(),
            ));
            None
        }
    };
    let series = crate::slurm::series().ok();
    let slurm_conf = std::env::var_os("SLURM_CONF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| cfg.as_ref().and_then(|c| c.cluster.slurm_conf.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SLURM_CONF));
    let settings = match crate::slurm::show_config() {
        Ok(text) => {
            out.push(Finding::new(
                Level::Ok,
                "slurmctld",
                "answers; settings from scontrol show config",
            ));
            Some(SlurmSettings::from_show_config(&text))
        }
        Err(e) => {
            out.push(Finding::new(
                Level::Warn,
                "slurmctld",
                format!(
                    "no running slurmctld answered ({e}); checking {} itself, which may differ \
                     from what slurmctld runs with",
                    slurm_conf.display()
                ),
            ));
            match SlurmSettings::from_slurm_conf(&slurm_conf) {
                Ok(s) => Some(s),
                Err(e) => {
                    out.push(Finding::new(
                        Level::Missing,
                        format!("slurm.conf {}", slurm_conf.display()),
                        e,
                    ));
                    None
                }
            }
        }
    };
    let (user, uid) = settings
        .as_ref()
        .map(SlurmSettings::slurm_user)
        .unwrap_or_else(|| ("slurm".to_string(), None));
    let uid = uid.or_else(|| uid_of(&user));
    if let Some(cfg) = &cfg {
        out.extend(
            crate::admin::check(cfg)
                .into_iter()
                // The config's own line is above.
                .filter(|c| !c.what.starts_with("config "))
                .map(Finding::from),
        );
        let db = &cfg.cluster.database;
        let meta = db.parent().and_then(|d| std::fs::metadata(d).ok());
        out.push(database_dir_finding(db, &user, uid, meta.as_ref()));
    }
    let Some(settings) = settings else {
        return out;
    };
    out.extend(slurm_conf_findings(
        &settings,
        cfg.as_ref(),
        series,
        &is_executable,
    ));
    let plugstack = settings.plugstack_path(&slurm_conf);
    let plugin_dirs: Vec<PathBuf> = match settings.get("PluginDir") {
        Some(dirs) => dirs.split(':').map(PathBuf::from).collect(),
        None => PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
    };
    match read_plugstack(&plugstack) {
        Err(e) => out.push(Finding::new(
            Level::Missing,
            format!("plugstack.conf {}", plugstack.display()),
            format!(
                "{e}; create it with `required {PLUGIN_FILE} config={}`",
                crate::config::DEFAULT_CONFIG_PATH
            ),
        )),
        Ok(lines) => {
            let (findings, file) =
                plugstack_findings(&plugstack, &lines, config_path, &plugin_dirs, &is_file);
            out.extend(findings);
            if let Some(file) = file {
                let version = std::fs::read(&file).ok().and_then(|b| plugin_version(&b));
                out.push(plugin_series_finding(&file, version, series));
            }
        }
    }
    out
}

/// Whether two paths name one file: equal, or equal once symlinks are resolved (a site may
/// link /etc/slurm-one/slurm-one.toml to a shared copy).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scontrol show config` of the local cluster on 22.05.8 (abridged: the keys
    /// slurm-one reads and their neighbours, in SLURM's layout).
    const SHOW_CONFIG: &str = "\
Configuration data as of 2026-12-04T10:00:00
AccountingStorageBackupHost = (null)
PlugStackConfig         = /tmp/dev/etc/plugstack.conf
PluginDir               = /usr/lib/x86_64-linux-gnu/slurm-wlm
PrivateData             = cloud
PrologEpilogTimeout     = 600
PrologSlurmctld         = /usr/libexec/slurm-one/slurm-one-prolog
PrologFlags             = Alloc
ResumeProgram           = /usr/libexec/slurm-one/slurm-one-resume
ResumeRate              = 0 nodes/min
ResumeTimeout           = 600 sec
ReturnToService         = 2
SchedulerParameters     = batch_sched_delay=0
SlurmUser               = slurm(64030)
SlurmctldParameters     = idle_on_node_suspend
SlurmdParameters        = config_overrides
SuspendProgram          = /usr/libexec/slurm-one/slurm-one-suspend
SuspendRate             = 0 nodes/min
SuspendTime             = 300 sec
EpilogSlurmctld         = /usr/libexec/slurm-one/slurm-one-epilog

MPI Plugins Configuration:
PMIxCliTmpDirBase       = (null)

Slurmctld(primary) at ctl is UP
";

    /// The same cluster before slurm-one was added: Debian's defaults.
    const SHOW_CONFIG_BARE: &str = "\
Configuration data as of 2026-12-04T10:00:00
PlugStackConfig         = /etc/slurm/plugstack.conf
PrologEpilogTimeout     = 65534
PrologSlurmctld         = (null)
PrologFlags             = (null)
ResumeProgram           = (null)
ResumeRate              = 300 nodes/min
ResumeTimeout           = 60 sec
ReturnToService         = 1
SlurmUser               = slurm(64030)
SuspendProgram          = (null)
SuspendRate             = 60 nodes/min
SuspendTime             = NONE
EpilogSlurmctld         = /usr/local/sbin/site-epilog
";

    fn config() -> Config {
        Config::from_toml_str(
            "[templates.small]\ntemplate_id = 5\n",
            Path::new("/etc/slurm-one/slurm-one.toml"),
            &|_| None,
        )
        .unwrap()
    }

    fn problems(findings: &[Finding]) -> Vec<(Level, String)> {
        findings
            .iter()
            .filter(|f| f.level != Level::Ok)
            .map(|f| (f.level, f.what.clone()))
            .collect()
    }

    #[test]
    fn show_config_values_are_read_by_key_whatever_the_case_and_null_is_unset() {
        let s = SlurmSettings::from_show_config(SHOW_CONFIG);
        assert_eq!(s.get("prologflags"), Some("Alloc"));
        assert_eq!(s.get("SuspendTime"), Some("300 sec"));
        assert_eq!(s.number("ResumeTimeout"), Some(600));
        assert_eq!(s.get("AccountingStorageBackupHost"), None);
        assert_eq!(s.get("PMIxCliTmpDirBase"), None);
        assert_eq!(s.slurm_user(), ("slurm".to_string(), Some(64030)));
    }

    #[test]
    fn indexed_show_config_keys_of_24_05_and_later_are_one_list() {
        // 24.11's scontrol prints `PrologSlurmctld[0] = ...` (one line per script).
        let text = SHOW_CONFIG
            .replace("PrologSlurmctld         =", "PrologSlurmctld[0]      =")
            .replace(
                "EpilogSlurmctld         = /usr/libexec/slurm-one/slurm-one-epilog",
                "EpilogSlurmctld[0]      = /opt/site/epilog\nEpilogSlurmctld[1]      = \
                 /usr/libexec/slurm-one/slurm-one-epilog",
            );
        assert!(text.contains("EpilogSlurmctld[1]"), "the fixture changed");
        let s = SlurmSettings::from_show_config(&text);
        assert_eq!(
            s.get("PrologSlurmctld"),
            Some("/usr/libexec/slurm-one/slurm-one-prolog")
        );
        assert_eq!(
            s.get("EpilogSlurmctld"),
            Some("/opt/site/epilog,/usr/libexec/slurm-one/slurm-one-epilog")
        );
        let f = slurm_conf_findings(&s, Some(&config()), Some(Series::new(24, 11)), &|_| true);
        assert_eq!(problems(&f), vec![], "{f:#?}");
        // Not an index: kept as the key it is.
        let s = SlurmSettings::from_show_config("Odd[x] = 1\nEmpty[] = 2\n");
        assert_eq!(s.get("Odd[x]"), Some("1"));
        assert_eq!(s.get("Empty[]"), Some("2"));
    }

    #[test]
    fn a_complete_setup_has_no_problem() {
        let s = SlurmSettings::from_show_config(SHOW_CONFIG);
        let cfg = config();
        let f = slurm_conf_findings(&s, Some(&cfg), Some(Series::new(22, 5)), &|_| true);
        assert_eq!(problems(&f), vec![], "{f:#?}");
    }

    #[test]
    fn a_bare_slurm_conf_lists_every_missing_line() {
        let s = SlurmSettings::from_show_config(SHOW_CONFIG_BARE);
        let cfg = config();
        let f = slurm_conf_findings(&s, Some(&cfg), Some(Series::new(22, 5)), &|_| true);
        let missing: Vec<String> = f
            .iter()
            .filter(|f| f.level == Level::Missing)
            .map(|f| f.what.trim_start_matches("slurm.conf ").to_string())
            .collect();
        assert_eq!(
            missing,
            [
                "PrologSlurmctld",
                "EpilogSlurmctld",
                "ResumeProgram",
                "SuspendProgram",
                "PrologFlags",
                "SlurmctldParameters",
                "SlurmdParameters",
                "ReturnToService",
                "SuspendTime"
            ]
        );
        let epilog = f
            .iter()
            .find(|f| f.what.ends_with("EpilogSlurmctld"))
            .unwrap();
        assert_eq!(
            epilog.detail,
            "is /usr/local/sbin/site-epilog, not slurm-one's; set \
             EpilogSlurmctld=/usr/libexec/slurm-one/slurm-one-epilog"
        );
        let warned: Vec<&str> = f
            .iter()
            .filter(|f| f.level == Level::Warn)
            .map(|f| f.what.as_str())
            .collect();
        assert_eq!(
            warned,
            [
                "slurm.conf ResumeTimeout",
                "slurm.conf SuspendRate",
                "slurm.conf ResumeRate",
                "slurm.conf SchedulerParameters",
                "slurm.conf PrivateData"
            ]
        );
    }

    #[test]
    fn a_hook_whose_program_is_missing_is_reported() {
        let s = SlurmSettings::from_show_config(SHOW_CONFIG);
        let f = slurm_conf_findings(&s, None, None, &|p| !p.ends_with("slurm-one-resume"));
        assert_eq!(
            problems(&f),
            vec![(Level::Missing, "slurm.conf ResumeProgram".to_string())]
        );
        assert!(
            f[2].detail.contains("is not an executable file"),
            "{}",
            f[2]
        );
    }

    #[test]
    fn private_data_matters_only_before_23_02() {
        let s = SlurmSettings::from_show_config(SHOW_CONFIG_BARE);
        for (series, asked) in [(Series::new(22, 5), true), (Series::new(24, 11), false)] {
            let f = slurm_conf_findings(&s, None, Some(series), &|_| true);
            assert_eq!(f.iter().any(|f| f.what.ends_with("PrivateData")), asked);
        }
    }

    #[test]
    fn slurm_conf_is_read_with_its_includes_comments_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("slurm.conf");
        std::fs::write(
            &conf,
            "# site\nSlurmUser=slurm\nPrologFlags=Alloc,Contain # for the VM check\n\
             NodeName=vm[1-4] CPUs=2 State=CLOUD\nPartitionName=one Nodes=vm[1-4]\n\
             Include cloud.d/*.conf\nSuspendTime=300\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("cloud.d")).unwrap();
        std::fs::write(
            dir.path().join("cloud.d/one.conf"),
            "ReturnToService=2\nSlurmctldParameters=\"idle_on_node_suspend\"\n\
             EpilogSlurmctld=/opt/site/epilog\nEpilogSlurmctld=/usr/libexec/slurm-one/slurm-one-epilog\n",
        )
        .unwrap();
        let s = SlurmSettings::from_slurm_conf(&conf).unwrap();
        // Hooks given on several lines all run (24.05+).
        assert_eq!(
            s.get("EpilogSlurmctld"),
            Some("/opt/site/epilog,/usr/libexec/slurm-one/slurm-one-epilog")
        );
        assert!(s.has_item("PrologFlags", "alloc"));
        assert_eq!(s.number("ReturnToService"), Some(2));
        assert_eq!(s.get("SlurmctldParameters"), Some("idle_on_node_suspend"));
        assert_eq!(s.get("NodeName"), None);
        assert_eq!(s.slurm_user(), ("slurm".to_string(), None));
        assert_eq!(s.plugstack_path(&conf), dir.path().join("plugstack.conf"));
        let err = SlurmSettings::from_slurm_conf(&dir.path().join("nope.conf")).unwrap_err();
        assert!(err.starts_with("cannot read "), "{err}");
    }

    #[test]
    fn plugstack_includes_are_followed_and_our_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("plugstack.conf");
        std::fs::write(&top, "include plugstack.conf.d/*.conf\n").unwrap();
        std::fs::create_dir(dir.path().join("plugstack.conf.d")).unwrap();
        std::fs::write(
            dir.path().join("plugstack.conf.d/slurm-one.conf"),
            "# slurm-one\nrequired libslurm_one_spank.so config=/etc/slurm-one/slurm-one.toml\n",
        )
        .unwrap();
        let lines = read_plugstack(&top).unwrap();
        assert_eq!(lines.len(), 1);
        let dirs = [PathBuf::from("/plugins")];
        let (f, file) = plugstack_findings(
            &top,
            &lines,
            Path::new(crate::config::DEFAULT_CONFIG_PATH),
            &dirs,
            &|p| p == Path::new("/plugins/libslurm_one_spank.so"),
        );
        assert_eq!(problems(&f), vec![], "{f:#?}");
        assert_eq!(file, Some(PathBuf::from("/plugins/libslurm_one_spank.so")));
    }

    #[test]
    fn plugstack_problems_name_the_fix() {
        let top = Path::new("/etc/slurm/plugstack.conf");
        let cfg = Path::new(crate::config::DEFAULT_CONFIG_PATH);
        let (lines, _) = parse_plugstack(top, "required /opt/other.so\n");
        let (f, file) = plugstack_findings(top, &lines, cfg, &[], &|_| true);
        assert_eq!(f[0].level, Level::Missing);
        assert_eq!(
            f[0].detail,
            "no line loads libslurm_one_spank.so; add \
             `required libslurm_one_spank.so config=/etc/slurm-one/slurm-one.toml`"
        );
        assert_eq!(file, None);

        let (lines, _) = parse_plugstack(top, "optional /x/libslurm_one_spank.so\n");
        let (f, _) = plugstack_findings(top, &lines, cfg, &[], &|_| false);
        assert_eq!(
            problems(&f),
            vec![
                (
                    Level::Warn,
                    "plugstack.conf /etc/slurm/plugstack.conf".to_string()
                ),
                (
                    Level::Missing,
                    "SPANK plugin /x/libslurm_one_spank.so".to_string()
                )
            ]
        );

        let (lines, _) = parse_plugstack(
            top,
            "required /x/libslurm_one_spank.so config=/srv/one.toml\n",
        );
        let (f, _) = plugstack_findings(top, &lines, cfg, &[], &|_| true);
        assert_eq!(f[0].level, Level::Warn);
        assert!(f[0].detail.contains("reads /srv/one.toml"), "{}", f[0]);
    }

    #[test]
    fn plugstack_config_through_a_symlink_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("cluster.toml");
        std::fs::write(&real, "").unwrap();
        let link = dir.path().join("slurm-one.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let top = Path::new("/etc/slurm/plugstack.conf");
        let text = format!("required libslurm_one_spank.so config={}\n", link.display());
        let (lines, _) = parse_plugstack(top, &text);
        let dirs = [PathBuf::from("/plugins")];
        let (f, _) = plugstack_findings(top, &lines, &real, &dirs, &|_| true);
        assert_eq!(problems(&f), vec![], "{f:#?}");

        let other = dir.path().join("other.toml");
        std::fs::write(&other, "").unwrap();
        let (f, _) = plugstack_findings(top, &lines, &other, &dirs, &|_| true);
        assert_eq!(f[0].level, Level::Warn, "{f:#?}");
    }

    /// A minimal ELF64 file: section 0 (null), .dynsym, .dynstr, .data holding
    /// `plugin_version` at address 0x2000 + 4.
    fn elf_with_plugin_version(version: u32) -> Vec<u8> {
        let strtab = b"\0other\0plugin_version\0".to_vec();
        let mut data = vec![0u8; 4];
        data.extend_from_slice(&version.to_le_bytes());
        let sym = |name: u32, shndx: u16, value: u64| {
            let mut s = Vec::new();
            s.extend_from_slice(&name.to_le_bytes());
            s.extend_from_slice(&[0x11, 0]); // info, other
            s.extend_from_slice(&shndx.to_le_bytes());
            s.extend_from_slice(&value.to_le_bytes());
            s.extend_from_slice(&4u64.to_le_bytes());
            s
        };
        let mut symtab = vec![0u8; 24];
        symtab.extend(sym(1, 3, 0x2000));
        symtab.extend(sym(7, 3, 0x2004));
        let (symoff, stroff) = (0x40usize, 0x40 + symtab.len());
        let dataoff = stroff + strtab.len();
        let shoff = dataoff + data.len();
        let mut elf = vec![0u8; 0x40];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        elf.extend(&symtab);
        elf.extend(&strtab);
        elf.extend(&data);
        let header = |kind: u32, addr: u64, off: usize, size: usize, link: u32, ent: u64| {
            let mut h = vec![0u8; 64];
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[0x10..0x18].copy_from_slice(&addr.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
            h[0x38..0x40].copy_from_slice(&ent.to_le_bytes());
            h
        };
        elf.extend(vec![0u8; 64]);
        elf.extend(header(11, 0, symoff, symtab.len(), 2, 24));
        elf.extend(header(3, 0, stroff, strtab.len(), 0, 0));
        elf.extend(header(1, 0x2000, dataoff, data.len(), 0, 0));
        elf
    }

    #[test]
    fn plugin_version_is_read_from_the_dynamic_symbol() {
        assert_eq!(
            plugin_version(&elf_with_plugin_version(0x16_05_08)),
            Some(0x16_05_08)
        );
        assert_eq!(plugin_version(b"#!/bin/sh\n"), None);
        let mut cut = elf_with_plugin_version(0x16_05_08);
        cut.truncate(0x60);
        assert_eq!(plugin_version(&cut), None);
    }

    #[test]
    fn a_plugin_for_another_series_is_reported() {
        let file = Path::new("/p/libslurm_one_spank.so");
        let ok = plugin_series_finding(file, Some(0x16_05_08), Some(Series::new(22, 5)));
        assert_eq!(ok.level, Level::Ok);
        assert_eq!(
            ok.detail,
            "built for SLURM 22.05.8, the series scontrol --version reports"
        );
        let other = plugin_series_finding(file, Some(0x18_0b_05), Some(Series::new(22, 5)));
        assert_eq!(other.level, Level::Missing);
        assert!(other
            .detail
            .starts_with("built for SLURM 24.11.5, but SLURM here is 22.05"));
        assert_eq!(
            plugin_series_finding(file, None, None).level,
            Level::Missing
        );
    }

    #[test]
    fn the_database_directory_must_be_slurm_users() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("mapping.db");
        let meta = std::fs::metadata(dir.path()).unwrap();
        let mine = meta.uid();
        let f = database_dir_finding(&db, "me", Some(mine), Some(&meta));
        assert_eq!(f.level, Level::Ok, "{f}");
        let f = database_dir_finding(&db, "other", Some(mine + 1), Some(&meta));
        assert_eq!(f.level, Level::Missing);
        assert!(f.detail.contains("chown other"), "{f}");
        let f = database_dir_finding(&db, "slurm", Some(1), None);
        assert_eq!(
            f.to_string(),
            format!(
                "FAIL  database directory {}: missing; create it owned by SlurmUser slurm, mode 0755",
                dir.path().display()
            )
        );
    }
}
