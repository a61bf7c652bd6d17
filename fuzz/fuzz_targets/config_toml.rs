//! The admin's TOML file: `Config::from_toml_str`.
//!
//! Invariants: never panics on any text or environment; parsing is deterministic and an
//! accepted config does not change when a comment is appended; the fixed valid config stays
//! valid (and unchanged) with comment lines added and with any `ONE_XMLRPC`/`ONE_AUTH` in the
//! environment, since its file sets both.
#![no_main]

mod common;
#[path = "common/config.rs"]
mod config;

use std::path::Path;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use slurm_one::config::Config;

fuzz_target!(|data: &[u8]| {
    let origin = Path::new("/etc/slurm-one/slurm-one.toml");
    let text = common::text(data);
    let mut u = Unstructured::new(data);
    let env_value = common::any_string(&mut u).unwrap_or_default();
    let env = |_: &str| Some(env_value.clone());

    for env in [
        &|_: &str| None as Option<String>,
        &env as &dyn Fn(&str) -> Option<String>,
    ] {
        match Config::from_toml_str(&text, origin, env) {
            Ok(cfg) => {
                assert_eq!(Config::from_toml_str(&text, origin, env), Ok(cfg.clone()));
                let commented = format!("{text}\n# fuzz\n");
                assert_eq!(
                    Config::from_toml_str(&commented, origin, env),
                    Ok(cfg.clone())
                );
                let _ = format!("{cfg:?}");
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    let valid = config::valid();
    let comment: String = text.chars().filter(|c| !matches!(c, '\n' | '\r')).collect();
    if !comment.chars().any(|c| c.is_control() && c != '\t') {
        let with_comment = format!("# {comment}\n{}\n# {comment}", config::VALID);
        let got = Config::from_toml_str(&with_comment, origin, &env)
            .unwrap_or_else(|e| panic!("valid config refused with a comment {comment:?}: {e}"));
        assert_eq!(&got, valid);
    }
});
