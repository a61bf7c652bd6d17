//! Builds the OpenNebula template of one job node's VM: size (MEMORY, CPU = VCPU × share,
//! VCPU), the tags that let the job↔VM table be rebuilt from OpenNebula alone, and the
//! CONTEXT that names the VM and starts its slurmd.
//!
//! Every value goes through the template grammar's escaping ([`quote_value`] via
//! [`Template::to_text`]); user text (the job name) only ever lands in USER_TEMPLATE,
//! where oned does not expand `$`.

use base64::Engine as _;

use crate::config::TemplateSource;
use crate::one::template::{Template, UnrepresentableValue};

/// Tag attributes set on every VM (USER_TEMPLATE).
pub mod tags {
    /// The cluster name from the config.
    pub const CLUSTER: &str = "SLURM_CLUSTER";
    /// The SLURM job id.
    pub const JOB_ID: &str = "SLURM_JOB_ID";
    /// The SLURM node name this VM serves.
    pub const NODE: &str = "SLURM_NODE";
    /// Unique per create request: a retried create finds the VM by it.
    pub const REQUEST_TAG: &str = "SLURM_REQUEST_TAG";
    /// The job's name, for admins reading OpenNebula (user text).
    pub const JOB_NAME: &str = "SLURM_JOB_NAME";
    /// The job's user.
    pub const USER: &str = "SLURM_USER";
}

/// Size of one node's VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeSize {
    /// MEMORY, MiB.
    pub memory_mb: u64,
    /// VCPU: CPUs SLURM allocated on the node.
    pub vcpu: u32,
    /// Share of a physical CPU per VCPU, 0 < share ≤ 1.
    pub cpu_share: f64,
}

impl NodeSize {
    /// CPU as written into the template: VCPU × share, at most two decimals.
    pub fn cpu_text(&self) -> String {
        let cpu = (f64::from(self.vcpu) * self.cpu_share * 100.0).round() / 100.0;
        let cpu = if cpu < 0.01 { 0.01 } else { cpu };
        let text = format!("{cpu:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Everything that goes into one VM's template.
#[derive(Debug, Clone)]
pub struct VmRequest<'a> {
    /// Cluster name (validated by the config).
    pub cluster: &'a str,
    /// SLURM job id.
    pub job_id: u32,
    /// Job name (user text).
    pub job_name: &'a str,
    /// Job owner.
    pub user: &'a str,
    /// SLURM node name (validated by [`valid_node_name`]).
    pub node: &'a str,
    /// Size.
    pub size: NodeSize,
    /// Unique request tag.
    pub request_tag: &'a str,
    /// The start script with `{node}` still in it.
    pub start_script: &'a str,
}

/// How the VM gets created.
#[derive(Debug, Clone, PartialEq)]
pub enum Creation {
    /// `one.vm.allocate` with this template.
    Allocate {
        /// Template text.
        template: String,
    },
    /// `one.template.instantiate` of a registered template with an extra template.
    Instantiate {
        /// Registered template id.
        template_id: u32,
        /// VM name.
        name: String,
        /// Extra template merged over it.
        extra: String,
    },
}

/// Why a template could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// The node name is not one SLURM and the template grammar both carry safely.
    #[error("node name {0:?} is not allowed: use letters, digits, '.', '_' and '-' (at most 64)")]
    BadNodeName(String),
    /// The admin's template body does not parse.
    #[error("template body of the config does not parse: {0}")]
    BadBody(String),
    /// A value could not be written in the template grammar.
    #[error("cannot write the VM template: {0}")]
    Unrepresentable(#[from] UnrepresentableValue),
}

/// Node names we accept: what SLURM allows that is also safe in a hostname and a script.
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !node.starts_with('-')
}

/// The VM's name in OpenNebula.
pub fn vm_name(cluster: &str, job_id: u32, node: &str) -> String {
    format!("slurm-{cluster}-{job_id}-{node}")
}

/// Makes user text carriable: control characters become spaces, the length is bounded and
/// the ends trimmed; what the grammar still refuses (a trailing backslash) is dropped.
fn plain_text(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' {
                ' '
            } else {
                c
            }
        })
        .collect::<String>()
        .replace("]]>", "]] >")
        .chars()
        .take(128)
        .collect();
    // Trailing backslashes and blanks go together: removing one can expose the other.
    cleaned
        .trim_start()
        .trim_end_matches(|c: char| c == '\\' || c.is_whitespace())
        .to_string()
}

/// The CONTEXT we add; these keys win over the admin's.
fn our_context(req: &VmRequest<'_>) -> Vec<(String, String)> {
    let script = req.start_script.replace("{node}", req.node);
    vec![
        ("SET_HOSTNAME".into(), req.node.into()),
        ("REPORT_READY".into(), "YES".into()),
        // READY travels through OneGate, which needs the VM's token (context's token.txt).
        ("TOKEN".into(), "YES".into()),
        (tags::CLUSTER.into(), req.cluster.into()),
        (tags::JOB_ID.into(), req.job_id.to_string()),
        (tags::NODE.into(), req.node.into()),
        (
            "START_SCRIPT_BASE64".into(),
            base64::engine::general_purpose::STANDARD.encode(script.as_bytes()),
        ),
    ]
}

fn merge_context(base: &[(String, String)], ours: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = base
        .iter()
        .filter(|(k, _)| !ours.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)))
        .cloned()
        .collect();
    out.extend(ours);
    out
}

fn set_size_and_tags(t: &mut Template, req: &VmRequest<'_>) {
    t.set("MEMORY", &req.size.memory_mb.to_string());
    t.set("VCPU", &req.size.vcpu.to_string());
    t.set("CPU", &req.size.cpu_text());
    t.set(tags::CLUSTER, req.cluster);
    t.set(tags::JOB_ID, &req.job_id.to_string());
    t.set(tags::NODE, req.node);
    t.set(tags::REQUEST_TAG, req.request_tag);
    t.set(tags::JOB_NAME, &plain_text(req.job_name));
    t.set(tags::USER, &plain_text(req.user));
}

/// Builds the creation request for one node. `base_context` is the CONTEXT of a registered
/// template (an instantiate's CONTEXT replaces the template's whole, so it is merged here).
pub fn render(
    req: &VmRequest<'_>,
    source: &TemplateSource,
    base_context: &[(String, String)],
) -> Result<Creation, RenderError> {
    if !valid_node_name(req.node) {
        return Err(RenderError::BadNodeName(req.node.to_string()));
    }
    let name = vm_name(req.cluster, req.job_id, req.node);
    match source {
        TemplateSource::Body(body) => {
            let mut t = Template::parse(body).map_err(|e| RenderError::BadBody(e.to_string()))?;
            let admin_ctx = t
                .vector("CONTEXT")
                .map(<[(String, String)]>::to_vec)
                .unwrap_or_default();
            t.set("NAME", &name);
            set_size_and_tags(&mut t, req);
            t.set_vector("CONTEXT", merge_context(&admin_ctx, our_context(req)));
            Ok(Creation::Allocate {
                template: t.to_text()?,
            })
        }
        TemplateSource::Id(id) => {
            let mut t = Template::default();
            set_size_and_tags(&mut t, req);
            t.set_vector("CONTEXT", merge_context(base_context, our_context(req)));
            Ok(Creation::Instantiate {
                template_id: *id,
                name,
                extra: t.to_text()?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(job_name: &'a str, node: &'a str) -> VmRequest<'a> {
        VmRequest {
            cluster: "c1",
            job_id: 42,
            job_name,
            user: "alice",
            node,
            size: NodeSize {
                memory_mb: 1024,
                vcpu: 2,
                cpu_share: 0.25,
            },
            request_tag: "c1-42-vm1-abcd",
            start_script: "#!/bin/sh\nslurmd -N {node}\n",
        }
    }

    fn allocate_text(c: Creation) -> String {
        match c {
            Creation::Allocate { template } => template,
            other => panic!("expected allocate, got {other:?}"),
        }
    }

    #[test]
    fn cpu_is_vcpu_times_share() {
        assert_eq!(
            NodeSize {
                memory_mb: 1,
                vcpu: 2,
                cpu_share: 0.25
            }
            .cpu_text(),
            "0.5"
        );
        assert_eq!(
            NodeSize {
                memory_mb: 1,
                vcpu: 4,
                cpu_share: 1.0
            }
            .cpu_text(),
            "4"
        );
        assert_eq!(
            NodeSize {
                memory_mb: 1,
                vcpu: 3,
                cpu_share: 0.33
            }
            .cpu_text(),
            "0.99"
        );
        assert_eq!(
            NodeSize {
                memory_mb: 1,
                vcpu: 1,
                cpu_share: 0.001
            }
            .cpu_text(),
            "0.01"
        );
    }

    #[test]
    fn body_template_gets_size_tags_and_context() {
        let body =
            "NIC = [ NETWORK_ID = \"0\" ]\nCONTEXT = [ NETWORK = \"YES\", SET_HOSTNAME = \"x\" ]\n";
        let text = allocate_text(
            render(&req("job", "vm1"), &TemplateSource::Body(body.into()), &[]).unwrap(),
        );
        let t = Template::parse(&text).unwrap();
        assert_eq!(t.get("MEMORY"), Some("1024"));
        assert_eq!(t.get("VCPU"), Some("2"));
        assert_eq!(t.get("CPU"), Some("0.5"));
        assert_eq!(t.get("NAME"), Some("slurm-c1-42-vm1"));
        assert_eq!(t.get(tags::JOB_ID), Some("42"));
        assert_eq!(t.get(tags::REQUEST_TAG), Some("c1-42-vm1-abcd"));
        assert_eq!(t.vector_get("NIC", "NETWORK_ID"), Some("0"));
        assert_eq!(t.vector_get("CONTEXT", "NETWORK"), Some("YES"));
        assert_eq!(t.vector_get("CONTEXT", "SET_HOSTNAME"), Some("vm1"));
        let script = t.vector_get("CONTEXT", "START_SCRIPT_BASE64").unwrap();
        let script = base64::engine::general_purpose::STANDARD
            .decode(script)
            .unwrap();
        assert_eq!(
            String::from_utf8(script).unwrap(),
            "#!/bin/sh\nslurmd -N vm1\n"
        );
    }

    #[test]
    fn hostile_job_name_stays_a_plain_value() {
        for name in [
            "x\" ]\nMEMORY = 999999\nCONTEXT = [ START_SCRIPT = \"rm -rf /\" ]",
            "a]b[c,d=e#f",
            "$HOME $(reboot) ${X} $$ `id`",
            "quote \" and \\\" and \\",
            "line\nbreak\rand\ttab",
            "]]> cdata end",
            "ünïcödé ✓",
        ] {
            let text = allocate_text(
                render(&req(name, "vm1"), &TemplateSource::Body(String::new()), &[]).unwrap(),
            );
            let t = Template::parse(&text).unwrap();
            assert_eq!(
                t.get(tags::JOB_NAME),
                Some(plain_text(name).as_str()),
                "{name:?}"
            );
            assert_eq!(t.get("MEMORY"), Some("1024"), "{name:?} changed MEMORY");
            assert_eq!(
                t.vector_get("CONTEXT", "START_SCRIPT"),
                None,
                "{name:?} injected a script"
            );
            assert_eq!(t.attrs.iter().filter(|a| a.name() == "CONTEXT").count(), 1);
        }
    }

    #[test]
    fn plain_text_keeps_printable_text_and_drops_controls() {
        assert_eq!(plain_text("my job"), "my job");
        assert_eq!(plain_text("a\nb"), "a b");
        assert_eq!(plain_text("ends\\"), "ends");
        assert_eq!(
            plain_text("a b\\ \\"),
            "a b",
            "found by fuzzing: a space between backslashes"
        );
        assert_eq!(plain_text(&"]]>".repeat(100)).chars().count(), 128);
        assert_eq!(plain_text(&"x".repeat(500)).len(), 128);
    }

    #[test]
    fn refuses_node_names_that_are_not_plain() {
        for bad in ["", "vm 1", "vm\"1", "vm]", "$(x)", "-vm", &"v".repeat(65)] {
            let err =
                render(&req("j", bad), &TemplateSource::Body(String::new()), &[]).unwrap_err();
            assert!(matches!(err, RenderError::BadNodeName(_)), "{bad:?}");
        }
        assert!(valid_node_name("vm-12.cluster_a"));
    }

    #[test]
    fn instantiate_keeps_the_registered_context_and_overrides_ours() {
        let base = vec![
            ("NETWORK".to_string(), "YES".to_string()),
            ("SET_HOSTNAME".to_string(), "$NAME".to_string()),
        ];
        match render(&req("j", "vm2"), &TemplateSource::Id(7), &base).unwrap() {
            Creation::Instantiate {
                template_id,
                name,
                extra,
            } => {
                assert_eq!(template_id, 7);
                assert_eq!(name, "slurm-c1-42-vm2");
                let t = Template::parse(&extra).unwrap();
                assert_eq!(t.vector_get("CONTEXT", "NETWORK"), Some("YES"));
                assert_eq!(t.vector_get("CONTEXT", "SET_HOSTNAME"), Some("vm2"));
                assert_eq!(t.get("CPU"), Some("0.5"));
            }
            other => panic!("expected instantiate, got {other:?}"),
        }
    }

    #[test]
    fn an_unparsable_body_is_named() {
        let err = render(
            &req("j", "vm1"),
            &TemplateSource::Body("CPU = [".into()),
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::BadBody(_)));
    }
}
