//! `gen-docs`: writes slurm-one's man pages and shell completions at packaging time
//! (`scripts/package`). Never shipped and never a dependency of the library or the SPANK
//! plugin: clap_mangen and clap_complete stay here.
//!
//! Every page comes from what the programs and the parser already use, so nothing is
//! written twice: slurm-one(8) and the completions from the CLI definition
//! (`slurm_one::cli::Cli`), slurm-one.toml(5) from the documented example config
//! `etc/slurm-one.toml` (whose keys and defaults a test of `config.rs` keeps in step with
//! the parser), one-sim(1) from one-sim's CLI definition (`one_sim::cli::Cli`).
//!
//! Usage: `gen-docs OUTDIR [--date YYYY-MM-DD]`; writes
//! `OUTDIR/man/{slurm-one.8,slurm-one.toml.5,one-sim.1}` and
//! `OUTDIR/completions/{slurm-one.bash,_slurm-one,slurm-one.fish}`.

mod config_man;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};

/// The documented example configuration, the source of slurm-one.toml(5).
const EXAMPLE_CONFIG: &str = include_str!("../../../etc/slurm-one.toml");

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-docs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut out = None;
    let mut date = String::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--date" => date = args.next().unwrap_or_default(),
            _ if out.is_none() && !a.starts_with('-') => out = Some(PathBuf::from(a)),
            _ => {
                return Err(format!(
                    "unknown argument {a:?}; usage: gen-docs OUTDIR [--date YYYY-MM-DD]"
                ))
            }
        }
    }
    let out = out.ok_or("usage: gen-docs OUTDIR [--date YYYY-MM-DD]")?;
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    write(&man.join("slurm-one.8"), &slurm_one_man(&date)?)?;
    write(
        &man.join("slurm-one.toml.5"),
        &config_man::render(EXAMPLE_CONFIG, version, &date),
    )?;
    write(&man.join("one-sim.1"), &one_sim_man(&date)?)?;
    for (shell, name) in [
        (Shell::Bash, "slurm-one.bash"),
        (Shell::Zsh, "_slurm-one"),
        (Shell::Fish, "slurm-one.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(
            shell,
            &mut slurm_one::cli::Cli::command(),
            "slurm-one",
            &mut buf,
        );
        let mut script = String::from_utf8_lossy(&buf).into_owned();
        if shell == Shell::Bash {
            script = fix_bash_state_labels(&script, "slurm-one");
        }
        write(&completions.join(name), &script)?;
    }
    Ok(())
}

/// clap_complete 4.6's bash script spells a subcommand's state `slurm__one__subcmd__status`
/// where it sets it but `slurm__subcmd__one__subcmd__status` in the `case` that acts on it
/// (a hyphen in the bin name is escaped as a subcommand separator there), so no option of a
/// subcommand ever completes (clap-rs/clap#6421, open). The labels are spelled as the
/// assignments spell them.
fn fix_bash_state_labels(script: &str, bin: &str) -> String {
    let wrong = format!("{}__subcmd__", bin.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", bin.replace('-', "__"));
    script.replace(&wrong, &right)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// A section clap_mangen renders, without the preamble each of its renderers repeats.
fn section(render: impl Fn(&mut Vec<u8>) -> std::io::Result<()>) -> Result<String, String> {
    let mut buf = Vec::new();
    render(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8(buf).map_err(|e| e.to_string())?;
    let preamble = Roff::new().render();
    Ok(text.strip_prefix(&preamble).unwrap_or(&text).to_string())
}

/// A command's page: clap_mangen's sections of the top-level command, then each visible
/// subcommand with its own options (clap_mangen would point at one page per subcommand
/// instead), then `tail` (exit status, environment, files, see also), then the version.
/// `globals` are the ids of global options, listed once at the top.
fn command_page(
    mut cmd: clap::Command,
    section_no: &'static str,
    date: &str,
    globals: &[&str],
    tail: Roff,
) -> Result<String, String> {
    cmd.build();
    let name = cmd.get_name().to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section_no)
        .date(date)
        .manual(name);
    let mut page = String::new();
    let mut title = Vec::new();
    man.render_title(&mut title).map_err(|e| e.to_string())?;
    page.push_str(&String::from_utf8_lossy(&title));
    page.push_str(&section(|w| man.render_name_section(w))?);
    page.push_str(&section(|w| man.render_synopsis_section(w))?);
    page.push_str(&section(|w| man.render_description_section(w))?);
    page.push_str(&section(|w| man.render_options_section(w))?);
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    page.push_str(&roff.to_roff());
    for sub in cmd
        .get_subcommands_mut()
        .filter(|s| s.get_name() != "help" && !s.is_hide_set())
    {
        let mut roff = Roff::new();
        roff.control(
            "SS",
            [sub.render_usage().to_string().trim_start_matches("Usage: ")],
        );
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        for (i, para) in about.split("\n\n").enumerate() {
            if i > 0 {
                roff.control("PP", []);
            }
            roff.text([roman(para.replace('\n', " "))]);
        }
        page.push_str(&roff.to_roff());
        // The global options are listed once, above.
        let mut own = sub.clone();
        for id in globals.iter().chain(&["help"]) {
            if own.get_arguments().any(|a| a.get_id() == id) {
                own = own.mut_arg(id, |a| a.hide(true));
            }
        }
        let options = section(|w| clap_mangen::Man::new(own.clone()).render_options_section(w))?;
        // Our own .SS heading stands for clap_mangen's ".SH OPTIONS".
        page.push_str(options.strip_prefix(".SH OPTIONS\n").unwrap_or(&options));
    }
    page.push_str(&tail.to_roff());
    page.push_str(&section(|w| man.render_version_section(w))?);
    Ok(page)
}

/// slurm-one(8), from the admin CLI's definition.
fn slurm_one_man(date: &str) -> Result<String, String> {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "0 success; 1 the operation failed (OpenNebula, provisioning, a failed check); 2 usage or configuration error.",
    )]);
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", []);
    roff.text([bold(slurm_one::config::CONFIG_PATH_ENV)]);
    roff.text([roman("Configuration file when --config is not given.")]);
    roff.control("TP", []);
    roff.text([bold("SLURM_CONF")]);
    roff.text([roman(
        "slurm.conf that scontrol and check read (else cluster.slurm_conf, else SLURM's default).",
    )]);
    roff.control("SH", ["FILES"]);
    for (file, what) in [
        (
            slurm_one::config::DEFAULT_CONFIG_PATH,
            "the configuration, see slurm-one.toml(5)",
        ),
        (
            "/etc/slurm-one/one_auth",
            "OpenNebula credentials, user:password, owned by SlurmUser, mode 0600",
        ),
        (
            "/var/lib/slurm-one/mapping.db",
            "the job to VM mapping table (SQLite), owned by SlurmUser",
        ),
        (
            "/usr/libexec/slurm-one/",
            "the controller hooks slurm-one-prolog, -epilog, -resume, -suspend named in slurm.conf",
        ),
        (
            "/usr/share/doc/slurm-one/examples/",
            "the slurm.conf and plugstack.conf lines to add",
        ),
    ] {
        roff.control("TP", []);
        roff.text([bold(file)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "slurm-one.toml(5), one-sim(1), slurm.conf(5), spank(7), scontrol(1)",
    )]);
    command_page(
        slurm_one::cli::Cli::command(),
        "8",
        date,
        &["config", "debug", "trace_api"],
        roff,
    )
}

/// one-sim(1), from one-sim's CLI definition.
fn one_sim_man(date: &str) -> Result<String, String> {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "0 stopped by SIGTERM or SIGINT, or cleanup done; 1 the simulator failed (listening, driver, saving state); 2 usage error, or a bad auth file or state file.",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman("slurm-one(8), slurm-one.toml(5)")]);
    command_page(one_sim::cli::Cli::command(), "1", date, &[], roff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bash_completion_state_has_its_case() {
        let mut buf = Vec::new();
        clap_complete::generate(
            Shell::Bash,
            &mut slurm_one::cli::Cli::command(),
            "slurm-one",
            &mut buf,
        );
        let script = fix_bash_state_labels(&String::from_utf8(buf).unwrap(), "slurm-one");
        let states: Vec<&str> = script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("cmd=\""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|s| !s.is_empty())
            .collect();
        assert!(states.contains(&"slurm__one__subcmd__status"), "{states:?}");
        for state in states {
            let label = format!("        {state})");
            assert!(
                script.lines().any(|l| l == label),
                "no case for state {state}"
            );
        }
    }

    #[test]
    fn the_admin_page_documents_every_subcommand_and_its_options() {
        let page = slurm_one_man("2026-12-04").unwrap();
        assert!(page.starts_with(".ie"), "one preamble first");
        assert_eq!(page.matches(".ie \\n(.g").count(), 1, "{page}");
        assert!(page.contains(".TH slurm-one 8 2026-12-04"), "{page}");
        for sub in [
            "status",
            "check",
            "provision",
            "teardown",
            "migrate",
            "resize",
            "reconcile",
        ] {
            assert!(
                page.contains(&format!(".SS \"slurm-one {sub}")),
                "{sub}: {page}"
            );
        }
        assert!(page.contains("\\-\\-cpu\\-share"), "{page}");
        assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
        assert!(!page.contains("slurm-one-status(8)"), "{page}");
    }

    #[test]
    fn the_simulator_page_documents_its_options_and_cleanup_but_not_the_vm_init() {
        let page = one_sim_man("2026-12-04").unwrap();
        assert_eq!(page.matches(".ie \\n(.g").count(), 1, "{page}");
        assert!(page.contains(".TH one-sim 1 2026-12-04"), "{page}");
        assert!(page.contains(".SS \"one-sim cleanup"), "{page}");
        assert!(page.contains("\\-\\-state\\-dir"), "{page}");
        assert!(page.contains("\\-\\-boot\\-delay"), "{page}");
        assert!(!page.contains("vm-init"), "{page}");
        assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
    }
}
