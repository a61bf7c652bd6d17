//! oned's `$VAR` expansion of CONTEXT (`expand_context_value`, `expand_context_vector`).
//!
//! Invariants:
//! - never panics;
//! - success does not depend on what the resolver returns (the grammar is checked first);
//! - every reference handed to the resolver has non-empty `[A-Z0-9_]` names;
//! - a resolved value is inserted verbatim, once per reference: expanding with a marker and
//!   deleting the markers gives the expansion with unknown names;
//! - text without `$` (up to a NUL) expands to itself;
//! - a vector without `$`, `\`, `@`, `=` in keys or NUL expands to its sorted pairs, first
//!   value of a repeated key winning; an empty vector is `EmptyContext`.
#![no_main]

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use slurm_one::one::template::{
    expand_context_value, expand_context_vector, TemplateError, VarRef,
};

const MARK: &str = "\u{10fffd}";

fn check_name(n: &str) {
    assert!(
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "bad name {n:?} handed to the resolver"
    );
}

fn check_ref(r: &VarRef) {
    match r {
        VarRef::Simple(n) => check_name(n),
        VarRef::Attr { var, attr, filter } => {
            check_name(var);
            check_name(attr);
            if let Some((k, _)) = filter {
                check_name(k);
            }
        }
    }
}

fn value(s: &str) {
    let calls = Cell::new(0usize);
    let none = expand_context_value(s, &|r| {
        check_ref(r);
        None
    });
    let marked = expand_context_value(s, &|_| {
        calls.set(calls.get() + 1);
        Some(MARK.to_string())
    });
    assert_eq!(
        none.is_ok(),
        marked.is_ok(),
        "success depends on the resolver for {s:?}"
    );
    if let (Ok(none), Ok(marked)) = (&none, &marked) {
        if !s.contains(MARK) {
            assert_eq!(marked.matches(MARK).count(), calls.get(), "{s:?}");
            assert_eq!(&marked.replace(MARK, ""), none, "{s:?}");
        }
    }
    if let Err(e) = &none {
        assert!(matches!(e, TemplateError::Context { .. }), "{e:?}");
        let _ = e.to_string();
    }
    let cut = s.split('\0').next().unwrap_or("");
    if !cut.contains('$') {
        assert_eq!(none.as_deref(), Ok(cut), "text without $ changed");
    }
}

fn vector(u: &mut Unstructured<'_>) -> Result<()> {
    let n = u.int_in_range(0..=6)?;
    let mut pairs = Vec::new();
    for _ in 0..n {
        let k = if u.ratio(3, 4)? {
            common::name(u)?
        } else {
            common::any_string(u)?
        };
        pairs.push((k, common::any_string(u)?));
    }
    let out = expand_context_vector(&pairs, &|r| {
        check_ref(r);
        if u8::try_from(r_len(r)).is_ok_and(|l| l % 2 == 0) {
            Some("v".into())
        } else {
            None
        }
    });
    if pairs.is_empty() {
        assert_eq!(out, Err(TemplateError::EmptyContext));
        return Ok(());
    }
    let plain = pairs.iter().all(|(k, v)| {
        !k.contains(['$', '\\', '@', '=', '\0']) && !v.contains(['$', '\\', '@', '\0'])
    });
    if plain {
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &pairs {
            want.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let want: Vec<(String, String)> = want.into_iter().collect();
        assert_eq!(out, Ok(want), "plain vector changed: {pairs:?}");
    }
    Ok(())
}

fn r_len(r: &VarRef) -> usize {
    match r {
        VarRef::Simple(n) => n.len(),
        VarRef::Attr { var, attr, .. } => var.len() + attr.len(),
    }
}

fuzz_target!(|data: &[u8]| {
    value(&common::text(data));
    let mut u = Unstructured::new(data);
    if let Ok(s) = common::any_string(&mut u) {
        value(&s);
    }
    let _ = vector(&mut u);
});
