//! A synchronous OpenNebula XML-RPC client: typed calls, typed results, OpenNebula error
//! codes as typed errors, and retries only where they are safe (transport errors on reads).
//!
//! Owns: talking to oned. Does not own: deciding what to create (see `provision`).
//! The session is held as a [`Secret`] and never logged; request bodies are logged only
//! with `trace_api`, with the session redacted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::Secret;
use crate::one::states::{LcmState, VmState};
use crate::one::xmlrpc::{parse_response, write_method_call, Response, Value};

/// OpenNebula's error classes (`include/Request.h`), plus anything else a server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum OneErrorKind {
    Authentication,
    Authorization,
    NoExists,
    Action,
    XmlRpcApi,
    Internal,
    Allocate,
    Locked,
    Other(i32),
}

impl OneErrorKind {
    /// The class of an error code.
    pub fn from_code(code: i32) -> Self {
        match code {
            0x100 => OneErrorKind::Authentication,
            0x200 => OneErrorKind::Authorization,
            0x400 => OneErrorKind::NoExists,
            0x800 => OneErrorKind::Action,
            0x1000 => OneErrorKind::XmlRpcApi,
            0x2000 => OneErrorKind::Internal,
            0x4000 => OneErrorKind::Allocate,
            0x8000 => OneErrorKind::Locked,
            other => OneErrorKind::Other(other),
        }
    }
}

/// A failed OpenNebula call.
#[derive(Debug, thiserror::Error)]
pub enum OneError {
    /// The endpoint could not be reached or the connection broke.
    #[error("OpenNebula at {endpoint} unreachable ({method}): {detail}")]
    Transport {
        /// Endpoint URL.
        endpoint: String,
        /// XML-RPC method.
        method: String,
        /// What the transport said.
        detail: String,
    },
    /// The HTTP layer answered with an error status.
    #[error("OpenNebula at {endpoint} answered HTTP {status} to {method}")]
    Http {
        /// Endpoint URL.
        endpoint: String,
        /// XML-RPC method.
        method: String,
        /// HTTP status.
        status: u16,
    },
    /// OpenNebula refused the call; `message` is the server's own text.
    #[error("{message} (OpenNebula error {kind:?})")]
    Api {
        /// XML-RPC method.
        method: String,
        /// Error class.
        kind: OneErrorKind,
        /// Server message, e.g. `[one.vm.info] Error getting virtual machine [7].`
        message: String,
    },
    /// An XML-RPC fault (wrong parameters, unknown method).
    #[error("XML-RPC fault {code} from {method}: {message}")]
    Fault {
        /// XML-RPC method.
        method: String,
        /// Fault code.
        code: i32,
        /// Fault string.
        message: String,
    },
    /// The answer was not what OpenNebula sends.
    #[error("unexpected answer to {method}: {detail}")]
    BadResponse {
        /// XML-RPC method.
        method: String,
        /// What was wrong.
        detail: String,
    },
}

impl OneError {
    /// Worth trying again: the server may not have seen the request.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            OneError::Transport { .. }
                | OneError::Http {
                    status: 500..=599,
                    ..
                }
        )
    }

    /// The OpenNebula error class, if the server refused the call.
    pub fn kind(&self) -> Option<OneErrorKind> {
        match self {
            OneError::Api { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// A VM action of `one.vm.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum VmAction {
    Terminate,
    TerminateHard,
    Suspend,
    Resume,
    Poweroff,
    PoweroffHard,
    Reboot,
    Hold,
    Release,
    Stop,
}

impl VmAction {
    /// The action string oned takes.
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Terminate => "terminate",
            VmAction::TerminateHard => "terminate-hard",
            VmAction::Suspend => "suspend",
            VmAction::Resume => "resume",
            VmAction::Poweroff => "poweroff",
            VmAction::PoweroffHard => "poweroff-hard",
            VmAction::Reboot => "reboot",
            VmAction::Hold => "hold",
            VmAction::Release => "release",
            VmAction::Stop => "stop",
        }
    }
}

/// What slurm-one reads of a VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmInfo {
    /// VM id.
    pub id: u32,
    /// VM name.
    pub name: String,
    /// STATE.
    pub state: VmState,
    /// LCM_STATE.
    pub lcm: LcmState,
    /// STIME (unix seconds).
    pub stime: i64,
    /// Current host, from the last HISTORY record.
    pub host: Option<String>,
    /// NIC IPs in NIC order.
    pub ips: Vec<String>,
    /// TEMPLATE/CPU.
    pub cpu: Option<f64>,
    /// TEMPLATE/MEMORY (MiB).
    pub memory_mb: Option<u64>,
    /// TEMPLATE/VCPU.
    pub vcpu: Option<u32>,
    /// USER_TEMPLATE single values (tags, READY, ERROR...). Absent in the short pool form.
    pub user: BTreeMap<String, String>,
}

impl VmInfo {
    /// USER_TEMPLATE/READY is YES (contextualization reported in).
    pub fn ready(&self) -> bool {
        self.user
            .get("READY")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
    }

    /// STATE ACTIVE and LCM RUNNING.
    pub fn running(&self) -> bool {
        self.state == VmState::Active && self.lcm == LcmState::RUNNING
    }

    /// A state the VM will not leave by itself towards RUNNING.
    pub fn failed(&self) -> bool {
        (self.state == VmState::Active && (self.lcm.is_failure() || self.lcm == LcmState::UNKNOWN))
            || matches!(
                self.state,
                VmState::Done
                    | VmState::Poweroff
                    | VmState::Stopped
                    | VmState::Undeployed
                    | VmState::CloningFailure
            )
    }

    /// State as oned names it in messages, e.g. `BOOT_FAILURE`.
    pub fn state_name(&self) -> String {
        crate::one::states::state_str(self.state, self.lcm)
    }
}

/// What slurm-one reads of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    /// Host id.
    pub id: u32,
    /// Host name.
    pub name: String,
    /// STATE (2 = MONITORED).
    pub state: i64,
    /// MAX_CPU − CPU_USAGE (100 per core).
    pub free_cpu: i64,
    /// MAX_MEM − MEM_USAGE (KiB).
    pub free_mem_kib: i64,
}

/// What slurm-one reads of a registered VM template.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateInfo {
    /// Template name.
    pub name: String,
    /// Its CONTEXT key/values.
    pub context: Vec<(String, String)>,
}

/// Settings of a client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Endpoint URL, e.g. `http://127.0.0.1:2633/RPC2`.
    pub endpoint: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-call timeout.
    pub api_timeout: Duration,
    /// Log request and response bodies (session redacted) at debug level.
    pub trace_api: bool,
}

/// A connection to one OpenNebula front end.
pub struct Client {
    settings: ClientSettings,
    session: Secret,
    agent: ureq::Agent,
}

/// How many times a read is tried on transport errors.
const READ_ATTEMPTS: u32 = 3;

impl Client {
    /// A client for `settings.endpoint` with this session.
    pub fn new(settings: ClientSettings, session: Secret) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(settings.connect_timeout)
            .timeout(settings.api_timeout)
            .build();
        Client {
            settings,
            session,
            agent,
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.settings.endpoint
    }

    /// One call; returns the success value (item 1 of oned's array).
    fn call_once(&self, method: &str, params: &[Value]) -> Result<Value, OneError> {
        let mut all = Vec::with_capacity(params.len() + 1);
        all.push(Value::String(self.session.expose().to_string()));
        all.extend_from_slice(params);
        let body = write_method_call(method, &all);
        if self.settings.trace_api {
            log::debug!(
                "{method} request: {}",
                self.redact(&String::from_utf8_lossy(&body))
            );
        }
        let transport = |detail: String| OneError::Transport {
            endpoint: self.settings.endpoint.clone(),
            method: method.to_string(),
            detail,
        };
        let resp = match self
            .agent
            .post(&self.settings.endpoint)
            .set("Content-Type", "text/xml")
            .send_bytes(&body)
        {
            Ok(r) => r,
            Err(ureq::Error::Status(status, _)) => {
                return Err(OneError::Http {
                    endpoint: self.settings.endpoint.clone(),
                    method: method.to_string(),
                    status,
                })
            }
            Err(ureq::Error::Transport(t)) => {
                // ureq puts the URL first; the error names the endpoint already.
                let text = t.to_string();
                let prefix = format!("{}: ", self.settings.endpoint);
                let detail = text.strip_prefix(&prefix).unwrap_or(&text).to_string();
                return Err(transport(detail));
            }
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes)
            .map_err(|e| transport(format!("reading the answer: {e}")))?;
        if self.settings.trace_api {
            log::debug!("{method} response: {}", String::from_utf8_lossy(&bytes));
        }
        let bad = |detail: String| OneError::BadResponse {
            method: method.to_string(),
            detail,
        };
        match parse_response(&bytes).map_err(|e| bad(e.to_string()))? {
            Response::Fault { code, message } => Err(OneError::Fault {
                method: method.to_string(),
                code,
                message,
            }),
            Response::Success(Value::Array(items)) => {
                match (items.first().and_then(Value::as_bool), items.get(1)) {
                    (Some(true), Some(v)) => Ok(v.clone()),
                    (Some(false), Some(msg)) => {
                        let code = items.get(2).and_then(Value::as_i32).unwrap_or(-1);
                        Err(OneError::Api {
                            method: method.to_string(),
                            kind: OneErrorKind::from_code(code),
                            message: msg.as_str().unwrap_or("").to_string(),
                        })
                    }
                    _ => Err(bad(format!(
                        "array of {} items without a status",
                        items.len()
                    ))),
                }
            }
            Response::Success(other) => {
                Err(bad(format!("a {} instead of an array", other.type_name())))
            }
        }
    }

    /// A read: transport errors are retried with a short backoff within the API timeout.
    fn read(&self, method: &str, params: &[Value]) -> Result<Value, OneError> {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            match self.call_once(method, params) {
                Err(e) if e.is_transport() && attempt < READ_ATTEMPTS => {
                    let pause = Duration::from_millis(200 * u64::from(attempt));
                    if start.elapsed() + pause >= self.settings.api_timeout {
                        return Err(e);
                    }
                    log::warn!("{e}; retrying ({attempt}/{READ_ATTEMPTS})");
                    std::thread::sleep(pause);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn redact(&self, text: &str) -> String {
        text.replace(
            self.session.expose(),
            &format!("{}:***", self.session.user()),
        )
    }

    /// `one.system.version`.
    pub fn version(&self) -> Result<String, OneError> {
        let v = self.read("one.system.version", &[])?;
        expect_str("one.system.version", &v).map(str::to_string)
    }

    /// `one.vm.allocate`; never retried (see the provisioner's request tags).
    pub fn vm_allocate(&self, template: &str, hold: bool) -> Result<u32, OneError> {
        let v = self.call_once("one.vm.allocate", &[template.into(), hold.into()])?;
        expect_id("one.vm.allocate", &v)
    }

    /// `one.template.instantiate`; never retried.
    pub fn template_instantiate(
        &self,
        template_id: u32,
        name: &str,
        extra: &str,
    ) -> Result<u32, OneError> {
        let params = [
            id_param(template_id),
            name.into(),
            false.into(),
            extra.into(),
            false.into(),
        ];
        let v = self.call_once("one.template.instantiate", &params)?;
        expect_id("one.template.instantiate", &v)
    }

    /// `one.template.info`: the registered template's name and CONTEXT.
    pub fn template_info(&self, template_id: u32) -> Result<TemplateInfo, OneError> {
        let v = self.read("one.template.info", &[id_param(template_id)])?;
        let xml = expect_str("one.template.info", &v)?;
        let doc = parse_xml("one.template.info", xml)?;
        let root = doc.root_element();
        let context = child(root, "TEMPLATE")
            .and_then(|t| child(t, "CONTEXT"))
            .map(|c| {
                c.children()
                    .filter(|n| n.is_element())
                    .map(|n| {
                        (
                            n.tag_name().name().to_string(),
                            n.text().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(TemplateInfo {
            name: child_text(root, "NAME").unwrap_or_default(),
            context,
        })
    }

    /// `one.vm.info`.
    pub fn vm_info(&self, id: u32) -> Result<VmInfo, OneError> {
        let v = self.read("one.vm.info", &[id_param(id)])?;
        let xml = expect_str("one.vm.info", &v)?;
        let doc = parse_xml("one.vm.info", xml)?;
        vm_from_node("one.vm.info", doc.root_element())
    }

    /// `one.vmpool.infoextended` over every VM the session may use, all states but DONE
    /// (`include_done` adds DONE ones): one call for every VM's full record.
    pub fn vm_pool(&self, include_done: bool) -> Result<Vec<VmInfo>, OneError> {
        self.vm_pool_range(include_done, -1, -1)
    }

    /// Like [`Client::vm_pool`] but only ids `start..=end` (`-1` for open ends).
    pub fn vm_pool_range(
        &self,
        include_done: bool,
        start: i32,
        end: i32,
    ) -> Result<Vec<VmInfo>, OneError> {
        let method = "one.vmpool.infoextended";
        let state = if include_done { -2 } else { -1 };
        let v = self.read(
            method,
            &[(-2).into(), start.into(), end.into(), state.into()],
        )?;
        let xml = expect_str(method, &v)?;
        let doc = parse_xml(method, xml)?;
        doc.root_element()
            .children()
            .filter(|n| n.has_tag_name("VM"))
            .map(|n| vm_from_node(method, n))
            .collect()
    }

    /// `one.vm.action`. Not retried: an action is not idempotent in every state.
    pub fn vm_action(&self, action: VmAction, id: u32) -> Result<(), OneError> {
        self.call_once("one.vm.action", &[action.as_str().into(), id_param(id)])
            .map(|_| ())
    }

    /// `one.vm.recover` with operation 3 (delete): ends a VM in any state, also those that
    /// refuse terminate (PROLOG, BOOT, EPILOG...).
    pub fn vm_recover_delete(&self, id: u32) -> Result<(), OneError> {
        self.call_once("one.vm.recover", &[id_param(id), Value::Int(3)])
            .map(|_| ())
    }

    /// `one.vm.update`: merge (`true`) or replace the USER_TEMPLATE.
    pub fn vm_update(&self, id: u32, template: &str, merge: bool) -> Result<(), OneError> {
        let kind = Value::Int(i32::from(merge));
        self.call_once("one.vm.update", &[id_param(id), template.into(), kind])
            .map(|_| ())
    }

    /// `one.vm.migrate` to `host` (live or cold).
    pub fn vm_migrate(&self, id: u32, host: u32, live: bool) -> Result<(), OneError> {
        let params = [id_param(id), id_param(host), live.into(), false.into()];
        self.call_once("one.vm.migrate", &params).map(|_| ())
    }

    /// `one.hostpool.info`.
    pub fn host_pool(&self) -> Result<Vec<HostInfo>, OneError> {
        let method = "one.hostpool.info";
        let v = self.read(method, &[])?;
        let xml = expect_str(method, &v)?;
        let doc = parse_xml(method, xml)?;
        let num = |n: roxmltree::Node<'_, '_>, path: &[&str]| -> i64 {
            let mut node = Some(n);
            for p in path {
                node = node.and_then(|x| child(x, p));
            }
            node.and_then(|x| x.text())
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(doc
            .root_element()
            .children()
            .filter(|n| n.has_tag_name("HOST"))
            .map(|h| HostInfo {
                id: u32::try_from(num(h, &["ID"])).unwrap_or(0),
                name: child_text(h, "NAME").unwrap_or_default(),
                state: num(h, &["STATE"]),
                free_cpu: num(h, &["HOST_SHARE", "MAX_CPU"]) - num(h, &["HOST_SHARE", "CPU_USAGE"]),
                free_mem_kib: num(h, &["HOST_SHARE", "MAX_MEM"])
                    - num(h, &["HOST_SHARE", "MEM_USAGE"]),
            })
            .collect())
    }

    /// `one.vm.resize` with CPU/VCPU/MEMORY in `template`.
    pub fn vm_resize(&self, id: u32, template: &str) -> Result<(), OneError> {
        self.call_once(
            "one.vm.resize",
            &[id_param(id), template.into(), false.into()],
        )
        .map(|_| ())
    }
}

fn id_param(id: u32) -> Value {
    Value::Int(i32::try_from(id).unwrap_or(i32::MAX))
}

fn expect_str<'v>(method: &str, v: &'v Value) -> Result<&'v str, OneError> {
    v.as_str().ok_or_else(|| OneError::BadResponse {
        method: method.to_string(),
        detail: format!("a {} where a string was expected", v.type_name()),
    })
}

fn expect_id(method: &str, v: &Value) -> Result<u32, OneError> {
    v.as_i64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| OneError::BadResponse {
            method: method.to_string(),
            detail: format!("{v:?} where an object id was expected"),
        })
}

fn parse_xml<'a>(method: &str, xml: &'a str) -> Result<roxmltree::Document<'a>, OneError> {
    roxmltree::Document::parse(xml).map_err(|e| OneError::BadResponse {
        method: method.to_string(),
        detail: format!("malformed XML: {e}"),
    })
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name).map(|n| n.text().unwrap_or("").trim().to_string())
}

/// Parses a `<VM>` element of any form (full, extended or short).
pub fn vm_from_node(method: &str, vm: roxmltree::Node<'_, '_>) -> Result<VmInfo, OneError> {
    let bad = |detail: String| OneError::BadResponse {
        method: method.to_string(),
        detail,
    };
    let num = |name: &str| -> Result<i64, OneError> {
        let text = child_text(vm, name).ok_or_else(|| bad(format!("<VM> without <{name}>")))?;
        text.parse()
            .map_err(|_| bad(format!("<{name}> is {text:?}, not a number")))
    };
    let id = u32::try_from(num("ID")?).map_err(|_| bad("negative VM <ID>".into()))?;
    let state_n = num("STATE")?;
    let state = VmState::from_number(state_n)
        .ok_or_else(|| bad(format!("VM {id} has unknown STATE {state_n}")))?;
    let lcm = u16::try_from(num("LCM_STATE")?)
        .map(LcmState)
        .map_err(|_| bad(format!("VM {id} has a bad LCM_STATE")))?;
    let template = child(vm, "TEMPLATE");
    let tnum = |name: &str| template.and_then(|t| child_text(t, name));
    let ips = template
        .map(|t| {
            t.children()
                .filter(|n| n.has_tag_name("NIC"))
                .filter_map(|nic| child_text(nic, "IP"))
                .collect()
        })
        .unwrap_or_default();
    let user = child(vm, "USER_TEMPLATE")
        .map(|u| {
            u.children()
                .filter(|n| n.is_element() && !n.children().any(|c| c.is_element()))
                .map(|n| {
                    (
                        n.tag_name().name().to_string(),
                        n.text().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let host = child(vm, "HISTORY_RECORDS")
        .and_then(|h| h.children().rfind(|n| n.has_tag_name("HISTORY")))
        .and_then(|h| child_text(h, "HOSTNAME"));
    Ok(VmInfo {
        id,
        name: child_text(vm, "NAME").unwrap_or_default(),
        state,
        lcm,
        stime: num("STIME").unwrap_or(0),
        host,
        ips,
        cpu: tnum("CPU").and_then(|v| v.parse().ok()),
        memory_mb: tnum("MEMORY").and_then(|v| v.parse().ok()),
        vcpu: tnum("VCPU").and_then(|v| v.parse().ok()),
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> String {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/opennebula/samples/");
        let fallback = "/work/shared/opennebula/samples/";
        let bytes = std::fs::read(format!("{dir}{name}"))
            .or_else(|_| std::fs::read(format!("{fallback}{name}")))
            .expect("sample transcript present");
        match parse_response(&bytes).expect("valid response") {
            Response::Success(Value::Array(a)) => a[1].as_str().expect("xml").to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn reads_a_running_vm_from_a_real_oned_answer() {
        let xml = sample("13-vm-info-after-update.response.xml");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let vm = vm_from_node("one.vm.info", doc.root_element()).unwrap();
        assert_eq!(vm.id, 3);
        assert!(vm.running());
        assert!(vm.ready());
        assert_eq!(vm.cpu, Some(0.5));
        assert_eq!(vm.memory_mb, Some(512));
        assert_eq!(vm.vcpu, Some(2));
        assert_eq!(vm.host.as_deref(), Some("dummy-host-1"));
        assert_eq!(vm.user.get("SLURM_JOB_ID").map(String::as_str), Some("77"));
    }

    #[test]
    fn reads_every_vm_of_a_real_extended_pool() {
        let xml = sample("11-vmpool-infoextended.response.xml");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let vms: Vec<VmInfo> = doc
            .root_element()
            .children()
            .filter(|n| n.has_tag_name("VM"))
            .map(|n| vm_from_node("p", n).unwrap())
            .collect();
        assert_eq!(vms.iter().map(|v| v.id).collect::<Vec<_>>(), vec![3, 2]);
        assert!(vms.iter().all(VmInfo::running));
    }

    #[test]
    fn a_done_vm_counts_as_failed_for_provisioning() {
        let xml = sample("22-vm-info-done.response.xml");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let vm = vm_from_node("one.vm.info", doc.root_element()).unwrap();
        assert_eq!(vm.state, VmState::Done);
        assert!(vm.failed());
        assert_eq!(vm.state_name(), "DONE");
    }

    #[test]
    fn a_vm_without_state_is_a_bad_response_naming_the_field() {
        let doc = roxmltree::Document::parse("<VM><ID>1</ID></VM>").unwrap();
        let err = vm_from_node("one.vm.info", doc.root_element()).unwrap_err();
        assert!(err.to_string().contains("<STATE>"), "{err}");
    }

    #[test]
    fn error_codes_map_to_kinds() {
        assert_eq!(OneErrorKind::from_code(256), OneErrorKind::Authentication);
        assert_eq!(OneErrorKind::from_code(1024), OneErrorKind::NoExists);
        assert_eq!(OneErrorKind::from_code(8192), OneErrorKind::Internal);
        assert_eq!(OneErrorKind::from_code(7), OneErrorKind::Other(7));
    }
}
