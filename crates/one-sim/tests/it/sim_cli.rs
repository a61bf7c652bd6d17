//! one-sim's command line: flags, errors, exit codes.

use std::net::TcpListener;

use one_proto::xmlrpc::Value;

use crate::util::{run_one_sim, Opts, Sim};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stderr is exactly one non-empty line; returns it.
fn one_line(stderr: &[u8]) -> String {
    let s = text(stderr);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{s}");
    lines[0].to_string()
}

#[test]
fn a_bad_flag_exits_2_with_a_one_line_error() {
    let out = run_one_sim(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let line = one_line(&out.stderr);
    assert!(
        line.starts_with("one-sim: ") && line.contains("--no-such-flag") && line.contains("--help"),
        "the line must name the flag and where to look: {line}"
    );
}

#[test]
fn a_missing_auth_file_exits_2_with_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-auth");
    let out = run_one_sim(&[
        "--listen",
        "127.0.0.1:0",
        "--auth-file",
        &missing.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let line = one_line(&out.stderr);
    assert!(line.contains(&missing.display().to_string()), "{line}");
    assert!(out.stdout.is_empty(), "must not start listening");

    let out = run_one_sim(&["--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    let line = one_line(&out.stderr);
    assert!(line.contains("--auth-file"), "{line}");
}

#[test]
fn an_unreadable_auth_file_exits_2_with_a_one_line_error_naming_it() {
    // Root reads any file, so "unreadable" is a directory here.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let out = run_one_sim(&["--listen", "127.0.0.1:0", "--auth-file", &path]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let line = one_line(&out.stderr);
    assert!(line.contains(&path), "{line}");
    assert!(out.stdout.is_empty());

    // A file without any user:password line is unusable too.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let empty = empty.display().to_string();
    let out = run_one_sim(&["--listen", "127.0.0.1:0", "--auth-file", &empty]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(one_line(&out.stderr).contains(&empty));
}

#[test]
fn help_documents_every_flag_and_the_cleanup_command() {
    let out = run_one_sim(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--listen",
        "--auth-file",
        "--driver",
        "--state-dir",
        "--boot-delay",
        "--step-delay",
        "--bridge",
        "--network",
        "--hosts",
        "--debug",
        "--help",
        "cleanup",
    ] {
        // `      --flag <VALUE>`, `  -h, --help` or `  cleanup  Remove...`.
        let lines: Vec<&str> = help.lines().collect();
        let idx = lines
            .iter()
            .position(|l| {
                l.starts_with("  ")
                    && l.split_whitespace()
                        .take(2)
                        .any(|w| w.trim_end_matches(',') == flag)
            })
            .unwrap_or_else(|| panic!("--help does not list {flag}:\n{help}"));
        // The description follows on the same line (short form) or the next (long form).
        let rest: Vec<&str> = lines[idx]
            .split_whitespace()
            .skip_while(|w| w.starts_with('-') || w.starts_with('<') || *w == flag)
            .collect();
        let next = lines.get(idx + 1).copied().unwrap_or_default();
        let described = !rest.is_empty() || !next.trim().is_empty();
        assert!(described, "{flag} has no description:\n{help}");
    }
    assert!(
        !help.contains("__vm-init"),
        "internal command must stay hidden"
    );

    let out = run_one_sim(&["cleanup", "--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("--state-dir"));
}

#[test]
fn cleanup_on_a_dir_without_state_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let out = run_one_sim(&["cleanup", "--state-dir", &path]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(one_line(&out.stderr).contains(&path));
    assert!(!dir.path().join("one-sim.json").exists());

    let missing = dir.path().join("never-made");
    let missing_s = missing.display().to_string();
    let out = run_one_sim(&["cleanup", "--state-dir", &missing_s]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(one_line(&out.stderr).contains(&missing_s));
}

#[test]
fn a_busy_port_gives_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth");
    std::fs::write(&auth, "oneadmin:x\n").unwrap();
    let out = run_one_sim(&[
        "--listen",
        &addr,
        "--auth-file",
        &auth.display().to_string(),
    ]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let line = one_line(&out.stderr);
    assert!(
        line.contains(&addr) && line.to_lowercase().contains("in use"),
        "{line}"
    );
    assert!(out.stdout.is_empty(), "must not claim to listen");
}

#[test]
fn port_0_picks_a_port_and_it_answers_with_the_auth_file_session() {
    let sim = Sim::start(Opts::dummy());
    let v = sim.ok("one.system.version", &[]);
    assert_eq!(v.as_str(), Some("7.5.80"));
    match sim.call_raw("one.system.version", &[Value::from("oneadmin:wrong")]) {
        one_proto::xmlrpc::Response::Success(Value::Array(items)) => {
            assert_eq!(items[0], Value::Bool(false));
            assert_eq!(items[2], Value::Int(256), "AUTHENTICATION");
        }
        other => panic!("{other:?}"),
    }
}
