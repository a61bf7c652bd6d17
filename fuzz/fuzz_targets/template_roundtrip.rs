//! OpenNebula template grammar: parsing, rendering (`to_text`, `quote_value`) and the VM
//! template slurm-one builds for a job (`render::render` with hostile job and user names).
//!
//! Invariants:
//! - `Template::parse` never panics; a parsed template that renders re-parses to itself.
//! - Any template built from arbitrary names/keys/values either renders to text that parses
//!   back to exactly that template, or is refused with `UnrepresentableValue` naming one of
//!   its strings for a reason that string really has.
//! - `quote_value(v)` parses back to `v` as a single value and inside a vector.
//! - `render` accepts any job and user name, and the template it writes parses, keeps the
//!   sizes and tags, and carries the user text cleaned (no control characters, trimmed).
#![no_main]

mod common;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use slurm_one::config::TemplateSource;
use slurm_one::one::template::{
    is_valid_attribute_name, quote_value, Attribute, Template, Unrepresentable,
};
use slurm_one::render::{render, valid_node_name, vm_name, Creation, NodeSize, VmRequest};

fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

fn parse_render_parse(text: &str) {
    let Ok(t) = Template::parse(text) else { return };
    for a in &t.attrs {
        let values: Vec<&str> = match a {
            Attribute::Single { value, .. } => vec![value],
            Attribute::Vector { pairs, .. } => pairs.iter().map(|(_, v)| v.as_str()).collect(),
        };
        for v in values {
            assert_eq!(
                v,
                v.trim_matches(is_c_space),
                "parse left a value untrimmed"
            );
        }
    }
    if let Ok(rendered) = t.to_text() {
        assert_eq!(
            Template::parse(&rendered).as_ref(),
            Ok(&t),
            "parsed template does not survive to_text:\n{rendered}"
        );
    }
}

fn build(u: &mut Unstructured<'_>) -> Result<Template> {
    let n = u.int_in_range(0..=5)?;
    let mut attrs = Vec::new();
    for _ in 0..n {
        let name = common::name(u)?;
        if u.arbitrary::<bool>()? {
            attrs.push(Attribute::Single {
                name,
                value: common::any_string(u)?,
            });
        } else {
            let k = u.int_in_range(0..=4)?;
            let mut pairs = Vec::new();
            for _ in 0..k {
                pairs.push((common::name(u)?, common::any_string(u)?));
            }
            attrs.push(Attribute::Vector { name, pairs });
        }
    }
    Ok(Template { attrs })
}

fn check_refusal_reason(s: &str, reason: Unrepresentable, t: &Template) {
    let ok = match reason {
        Unrepresentable::ContainsNul => s.contains('\0'),
        Unrepresentable::ContainsCdataEnd => s.contains("]]>"),
        Unrepresentable::InvalidXmlChar => s.chars().any(|c| !is_xml_char(c)),
        Unrepresentable::SurroundingWhitespace => s.trim_matches(is_c_space) != s,
        Unrepresentable::TrailingBackslash => s.ends_with('\\'),
        Unrepresentable::InvalidName => !is_valid_attribute_name(s),
        Unrepresentable::NotUpperCase => s.bytes().any(|b| b.is_ascii_lowercase()),
        Unrepresentable::LeadingDigit => s.starts_with(|c: char| c.is_ascii_digit()),
        Unrepresentable::DuplicateKey => t.attrs.iter().any(|a| match a {
            Attribute::Vector { pairs, .. } => pairs.iter().filter(|(k, _)| k == s).count() > 1,
            _ => false,
        }),
    };
    assert!(ok, "{s:?} refused for {reason:?}, which it does not have");
}

fn structured_roundtrip(t: &Template) {
    match t.to_text() {
        Ok(text) => assert_eq!(
            Template::parse(&text).as_ref(),
            Ok(t),
            "rendered template does not parse back:\n{text}"
        ),
        Err(e) => {
            let mentioned = t.attrs.iter().any(|a| match a {
                Attribute::Single { name, value } => *name == e.value || *value == e.value,
                Attribute::Vector { name, pairs } => {
                    *name == e.value || pairs.iter().any(|(k, v)| *k == e.value || *v == e.value)
                }
            });
            assert!(
                mentioned,
                "refusal names {:?}, which is not in the template",
                e.value
            );
            check_refusal_reason(&e.value, e.reason, t);
            let _ = e.to_string();
        }
    }
    for a in &t.attrs {
        let values: Vec<&str> = match a {
            Attribute::Single { value, .. } => vec![value],
            Attribute::Vector { pairs, .. } => pairs.iter().map(|(_, v)| v.as_str()).collect(),
        };
        for v in values {
            let Ok(q) = quote_value(v) else { continue };
            let single = Template::parse(&format!("A = {q}"));
            let want = Template {
                attrs: vec![Attribute::Single {
                    name: "A".into(),
                    value: v.to_string(),
                }],
            };
            assert_eq!(single, Ok(want), "quote_value({v:?}) = {q}");
            let vector = Template::parse(&format!("A = [ K = {q}, L = x ]"));
            let want = Template {
                attrs: vec![Attribute::Vector {
                    name: "A".into(),
                    pairs: vec![("K".into(), v.to_string()), ("L".into(), "x".into())],
                }],
            };
            assert_eq!(vector, Ok(want), "quote_value({v:?}) = {q} in a vector");
        }
    }
}

const BODY: &str = "DISK = [ IMAGE = \"slurm-worker\", IMAGE_UNAME = \"oneadmin\" ]\n\
                    NIC = [ NETWORK_ID = \"0\" ]\n\
                    CONTEXT = [ NETWORK = \"YES\", SSH_PUBLIC_KEY = \"$USER[SSH_PUBLIC_KEY]\" ]\n";

fn render_hostile(u: &mut Unstructured<'_>) -> Result<()> {
    let job_name = common::any_string(u)?;
    let user = common::any_string(u)?;
    let node = if u.ratio(3, 4)? {
        format!("vm{}", u.int_in_range(0u16..=999)?)
    } else {
        common::any_string(u)?
    };
    let share = (u.int_in_range(1u32..=1000)? as f64) / 1000.0;
    let size = NodeSize {
        memory_mb: u.arbitrary()?,
        vcpu: u.arbitrary()?,
        cpu_share: share,
    };
    let job_id: u32 = u.arbitrary()?;
    let req = VmRequest {
        cluster: "c1",
        job_id,
        job_name: &job_name,
        user: &user,
        node: &node,
        size,
        request_tag: "c1-42-vm1-abcd",
        start_script: "#!/bin/sh\nsetsid slurmd -N {node} </dev/null >/dev/null 2>&1 &\n",
    };
    let base_context = vec![("NETWORK".to_string(), "YES".to_string())];
    for source in [TemplateSource::Body(BODY.into()), TemplateSource::Id(7)] {
        let out = render(&req, &source, &base_context);
        if !valid_node_name(&node) {
            assert!(out.is_err(), "node name {node:?} accepted");
            continue;
        }
        let out =
            out.unwrap_or_else(|e| panic!("render refused job {job_name:?} user {user:?}: {e}"));
        let text = match out {
            Creation::Allocate { template } => template,
            Creation::Instantiate {
                template_id,
                name,
                extra,
            } => {
                assert_eq!(template_id, 7);
                assert_eq!(name, vm_name("c1", job_id, &node));
                extra
            }
        };
        let t = Template::parse(&text)
            .unwrap_or_else(|e| panic!("rendered template does not parse: {e}\n{text}"));
        assert_eq!(t.get("MEMORY"), Some(size.memory_mb.to_string().as_str()));
        assert_eq!(t.get("VCPU"), Some(size.vcpu.to_string().as_str()));
        assert_eq!(t.get("SLURM_NODE"), Some(node.as_str()));
        assert_eq!(t.get("SLURM_JOB_ID"), Some(job_id.to_string().as_str()));
        for (key, given) in [("SLURM_JOB_NAME", &job_name), ("SLURM_USER", &user)] {
            let v = t.get(key).unwrap_or_else(|| panic!("{key} missing"));
            assert!(
                !v.chars().any(char::is_control),
                "{key} {v:?} has control chars"
            );
            // 128 chars, each "]]>" among them written "]] >".
            assert!(v.chars().count() <= 128 + 128 / 3, "{key} too long");
            assert!(
                !v.contains("]]>") && v.trim() == v,
                "{key} {v:?} from {given:?}"
            );
            let plain = given.chars().count() <= 128
                && given.trim() == given
                && given.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ');
            if plain {
                assert_eq!(v, given, "{key} changed a plain name");
            }
        }
        let ctx = t.vector("CONTEXT").expect("CONTEXT missing");
        assert!(
            ctx.iter().any(|(k, v)| k == "SET_HOSTNAME" && *v == node),
            "CONTEXT {ctx:?}"
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    parse_render_parse(&common::text(data));
    let mut u = Unstructured::new(data);
    if let Ok(t) = build(&mut u) {
        structured_roundtrip(&t);
    }
    let _ = render_hostile(&mut u);
});
