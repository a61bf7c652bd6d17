//! The simulated cloud's records (VMs, hosts, templates, the virtual network) and
//! OpenNebula's VM lifecycle over them, as pure functions of the state and the clock.
//!
//! Nothing here does I/O: the engine applies driver results and the clock, the RPC layer
//! turns requests into calls of these functions. Errors carry oned's code and message.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use one_proto::states::{state_str, HostState, LcmState, VmState};
use one_proto::template::{Attribute, Template};

/// OpenNebula's error codes (`include/Request.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ErrorCode {
    Authentication = 0x0100,
    Authorization = 0x0200,
    NoExists = 0x0400,
    Action = 0x0800,
    XmlRpcApi = 0x1000,
    Internal = 0x2000,
    Allocate = 0x4000,
    Locked = 0x8000,
}

/// A failed call as oned reports it: code, message (without the `[method] ` prefix the
/// RPC layer adds) and the id of the object involved, or -1.
#[derive(Debug, Clone, PartialEq)]
pub struct OneError {
    /// Error class.
    pub code: ErrorCode,
    /// Message text after the method prefix.
    pub message: String,
    /// RESP_ID of the failure array.
    pub resp_id: i32,
}

impl OneError {
    /// An error with RESP_ID -1.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OneError {
            code,
            message: message.into(),
            resp_id: -1,
        }
    }

    fn no_vm(id: i64) -> Self {
        OneError {
            code: ErrorCode::NoExists,
            message: format!("Error getting virtual machine [{id}]."),
            resp_id: i32::try_from(id).unwrap_or(-1),
        }
    }

    fn no_host(id: i64) -> Self {
        OneError {
            code: ErrorCode::NoExists,
            message: format!("Error getting host [{id}]."),
            resp_id: i32::try_from(id).unwrap_or(-1),
        }
    }

    fn action(action: &str, what: impl std::fmt::Display) -> Self {
        OneError::new(
            ErrorCode::Action,
            format!("Error performing action \"{action}\": {what}"),
        )
    }
}

/// The owner of an object, or the user making a call: oned's UID, GID, UNAME, GNAME.
///
/// Users come from the auth file: `oneadmin` is uid 0 in group 0 `oneadmin`; every other
/// user is in group 1 `users`, like a user created with `oneuser create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// User name.
    pub uname: String,
    /// Group name.
    pub gname: String,
}

impl Owner {
    /// oneadmin (uid 0, group 0 `oneadmin`).
    pub fn oneadmin() -> Owner {
        Owner {
            uid: 0,
            gid: 0,
            uname: "oneadmin".into(),
            gname: "oneadmin".into(),
        }
    }

    /// A member of the `oneadmin` group (oned lets it do everything).
    pub fn is_admin(&self) -> bool {
        self.uid == 0 || self.gid == 0
    }
}

impl Default for Owner {
    /// Records saved before ownership existed belong to oneadmin.
    fn default() -> Self {
        Owner::oneadmin()
    }
}

/// The operation an authorization item asks for (`AuthRequest::Operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOp {
    /// USE: read it, instantiate it.
    Use,
    /// MANAGE: most VM actions, update, resize.
    Manage,
    /// ADMIN: deploy, migrate, recover, resched.
    Admin,
    /// CREATE a new object.
    Create,
}

impl AuthOp {
    fn name(self) -> &'static str {
        match self {
            AuthOp::Use => "USE",
            AuthOp::Manage => "MANAGE",
            AuthOp::Admin => "ADMIN",
            AuthOp::Create => "CREATE",
        }
    }
}

/// One item of an authorization request: operation, object type as oned prints it, id
/// (-1 for CREATE) and owner.
struct AuthItem<'a> {
    op: AuthOp,
    kind: &'static str,
    oid: i64,
    owner: Option<&'a Owner>,
}

impl<'a> AuthItem<'a> {
    fn new(op: AuthOp, kind: &'static str, oid: i64, owner: &'a Owner) -> Self {
        AuthItem {
            op,
            kind,
            oid,
            owner: Some(owner),
        }
    }

    fn create(kind: &'static str) -> Self {
        AuthItem {
            op: AuthOp::Create,
            kind,
            oid: -1,
            owner: None,
        }
    }

    /// oned's default rules for a user outside the oneadmin group: objects carry the
    /// default permissions (umask 177: OWNER_U and OWNER_M only), and ACL rule 0 lets the
    /// `users` group create VMs and templates. Nothing grants ADMIN.
    fn granted(&self, caller: &Owner) -> bool {
        match self.op {
            AuthOp::Create => matches!(self.kind, "VM" | "TEMPLATE"),
            AuthOp::Use | AuthOp::Manage => self.owner.is_some_and(|o| o.uid == caller.uid),
            AuthOp::Admin => false,
        }
    }
}

/// `AuthRequest` with the core authorization: oneadmin's group may do everything; for
/// others every refused item adds `Not authorized to perform OP TYPE [id]` to the message
/// (`AuthRequest::add_auth`), and the request layer wraps it as
/// `User [uid] : message.` (`Request::failure_message`).
fn authorize(caller: &Owner, items: &[AuthItem<'_>]) -> Result<(), OneError> {
    if caller.is_admin() {
        return Ok(());
    }
    let refused: Vec<String> = items
        .iter()
        .filter(|i| !i.granted(caller))
        .map(|i| {
            let mut m = format!("Not authorized to perform {} {}", i.op.name(), i.kind);
            if i.oid != -1 {
                m.push_str(&format!(" [{}]", i.oid));
            }
            m
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(OneError::new(
        ErrorCode::Authorization,
        format!("User [{}] : {}.", caller.uid, refused.join("; ")),
    ))
}

/// The operation oned.conf's default VM_*_OPERATIONS give a `one.vm.action` action; an
/// unknown action is authorized as the request's default, MANAGE.
fn vm_action_op(action: &str) -> AuthOp {
    match action {
        "resched" | "unresched" => AuthOp::Admin,
        _ => AuthOp::Manage,
    }
}

/// Whether a pool listing with `filter` shows an object of `owner` to `caller`
/// (`PoolSQL::usr_filter`; objects keep the default permissions, so GROUP_U and OTHER_U
/// are 0 and only oneadmin's group sees other users' objects).
fn listed(caller: &Owner, filter: i32, owner: &Owner) -> bool {
    let all = caller.is_admin();
    let mine = owner.uid == caller.uid;
    match filter {
        -4 => owner.gid == caller.gid && (all || mine),
        -3 => mine,
        -2 => all || mine,
        -1 => mine || (all && owner.gid == caller.gid),
        uid => i64::from(owner.uid) == i64::from(uid) && (all || mine),
    }
}

/// `History::VMAction` numbers written in HISTORY/ACTION.
#[allow(missing_docs)]
pub mod history_action {
    pub const NONE: u32 = 0;
    pub const MIGRATE: u32 = 1;
    pub const LIVE_MIGRATE: u32 = 2;
    pub const UNDEPLOY: u32 = 5;
    pub const DELETE: u32 = 13;
    pub const DELETE_RECREATE: u32 = 14;
    pub const UNDEPLOY_HARD: u32 = 6;
    pub const STOP: u32 = 9;
    pub const SUSPEND: u32 = 10;
    pub const POWEROFF: u32 = 19;
    pub const POWEROFF_HARD: u32 = 20;
    pub const TERMINATE: u32 = 27;
    pub const TERMINATE_HARD: u32 = 28;
    pub const RESIZE: u32 = 35;
}

/// One HISTORY record: a stay of the VM on one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct History {
    pub seq: u32,
    pub hostname: String,
    pub hid: u32,
    pub vm_mad: String,
    pub stime: i64,
    pub etime: i64,
    pub pstime: i64,
    pub petime: i64,
    pub rstime: i64,
    pub retime: i64,
    pub estime: i64,
    pub eetime: i64,
    pub action: u32,
    pub uid: i32,
    pub gid: i32,
    pub request_id: i64,
}

/// What a driver is doing for a VM in a transitional state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DriverOp {
    /// Nothing asked of the driver (or already finished).
    Idle,
    /// Asked, not finished; the VM cannot leave its state yet.
    Busy,
    /// The driver failed; the VM goes to the matching failure state.
    Failed(String),
}

/// What the engine must ask of the driver when a VM enters a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverCall {
    /// Create and start the VM.
    Boot,
    /// Freeze it.
    Suspend,
    /// Thaw it.
    Resume,
    /// End every process and remove it.
    Destroy,
    /// Restart the guest in place (same NIC and address); the VM stays RUNNING.
    Reboot,
    /// Live-migrate the running guest to `Vm::migrate_to` (LCM MIGRATE).
    Migrate,
    /// Apply the new CPU/MEMORY/VCPU of a running VM (LCM HOTPLUG_RESIZE).
    Resize,
}

/// A virtual machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Vm {
    pub id: u32,
    pub name: String,
    /// Owner: the user who allocated or instantiated it.
    #[serde(default)]
    pub owner: Owner,
    pub state: VmState,
    pub lcm: LcmState,
    pub prev_state: VmState,
    pub prev_lcm: LcmState,
    pub resched: bool,
    pub stime: i64,
    pub etime: i64,
    pub deploy_id: String,
    /// TEMPLATE: what was asked that oned keeps there, plus what oned adds.
    pub template: Template,
    /// USER_TEMPLATE: custom keys and what one.vm.update sets.
    pub user_template: Template,
    pub history: Vec<History>,
    /// Host holding the VM's capacity, if any.
    pub host: Option<u32>,
    /// Leased address of NIC 0, if the VM has a NIC.
    pub ip: Option<Ipv4Addr>,
    /// When (ms since the epoch) the current transitional state may end.
    pub due_ms: u64,
    pub op: DriverOp,
    /// The driver call the engine still has to start for the current state.
    #[serde(skip)]
    pub pending_call: Option<DriverCall>,
    /// Host to move to when a migration completes.
    pub migrate_to: Option<u32>,
    /// The OneGate token of a VM with CONTEXT/TOKEN=YES (oned writes it to the context
    /// CD's `token.txt`; OneGate checks X-ONEGATE-TOKEN against it).
    #[serde(default)]
    pub onegate_token: Option<String>,
}

impl Vm {
    /// oned remembers the state a transition started from while it is under way and
    /// settles PREV_* to the new state once the VM rests (RUNNING, SUSPENDED, DONE...).
    fn set_state(&mut self, state: VmState, lcm: LcmState) {
        let resting = state != VmState::Active || lcm == LcmState::RUNNING;
        if resting {
            self.prev_state = state;
            self.prev_lcm = lcm;
        } else {
            self.prev_state = self.state;
            self.prev_lcm = self.lcm;
        }
        self.state = state;
        self.lcm = lcm;
    }

    /// Parsed CPU share (0 if absent, which validation prevents).
    pub fn cpu(&self) -> f64 {
        self.template
            .get("CPU")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// MEMORY in MiB.
    pub fn memory_mb(&self) -> u64 {
        self.template
            .get("MEMORY")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// CONTEXT/REPORT_READY is YES.
    pub fn wants_ready(&self) -> bool {
        self.template
            .vector_get("CONTEXT", "REPORT_READY")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
    }

    /// The state name oned prints in errors.
    pub fn state_name(&self) -> String {
        state_str(self.state, self.lcm)
    }

    fn is(&self, state: VmState, lcm: LcmState) -> bool {
        self.state == state && self.lcm == lcm
    }

    fn running(&self) -> bool {
        self.is(VmState::Active, LcmState::RUNNING)
    }
}

/// A hypervisor host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Host {
    pub id: u32,
    pub name: String,
    pub state: HostState,
    pub prev_state: HostState,
    pub im_mad: String,
    pub vm_mad: String,
    pub cluster_id: i32,
    /// KiB.
    pub total_mem: u64,
    /// 100 per core.
    pub total_cpu: u64,
    /// KiB reserved by VMs.
    pub mem_usage: u64,
    /// CPU share ×100 reserved by VMs.
    pub cpu_usage: u64,
    pub vms: Vec<u32>,
}

/// LCM_STATE 60, a cold migration from UNKNOWN.
const PROLOG_MIGRATE_UNKNOWN: LcmState = LcmState(60);

impl Host {
    /// `HostShare::test_compute`'s message when the VM does not fit, else `None`.
    fn shortage(&self, cpu100: u64, mem_kib: u64) -> Option<String> {
        let free_cpu = i128::from(self.total_cpu) - i128::from(self.cpu_usage);
        let free_mem = i128::from(self.total_mem) - i128::from(self.mem_usage);
        if i128::from(cpu100) > free_cpu {
            Some(format!("Not enough CPU: {cpu100}/{free_cpu}"))
        } else if i128::from(mem_kib) > free_mem {
            Some(format!("Not enough memory: {mem_kib}/{free_mem}"))
        } else {
            None
        }
    }

    fn fits(&self, cpu100: u64, mem_kib: u64) -> bool {
        self.state == HostState::Monitored
            && self.cpu_usage + cpu100 <= self.total_cpu
            && self.mem_usage + mem_kib <= self.total_mem
    }
}

/// A VM template (one.template.*).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct VmTemplate {
    pub id: u32,
    pub name: String,
    #[serde(default)]
    pub owner: Owner,
    pub regtime: i64,
    pub template: Template,
}

/// The one virtual network the simulator offers (NIC = [ NETWORK_ID = 0 ]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    /// Its name, the bridge's name.
    pub name: String,
    /// The bridge (gateway) address.
    pub gateway: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Leased addresses → VM id.
    pub leases: BTreeMap<Ipv4Addr, u32>,
}

impl Network {
    fn lease(&mut self, vm: u32) -> Option<Ipv4Addr> {
        let base = u32::from(self.gateway) & self.mask();
        let size = 1u32 << (32 - u32::from(self.prefix_len));
        (1..size.saturating_sub(1))
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| *ip != self.gateway && !self.leases.contains_key(ip))
            .inspect(|ip| {
                self.leases.insert(*ip, vm);
            })
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// Dotted netmask.
    pub fn mask_str(&self) -> String {
        Ipv4Addr::from(self.mask()).to_string()
    }

    /// The network as a value for the command line's types.
    pub fn net(&self) -> crate::config::Ipv4Net {
        crate::config::Ipv4Net {
            addr: self.address(),
            prefix_len: self.prefix_len,
        }
    }

    /// Network address.
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & self.mask())
    }
}

/// Timing knobs of the lifecycle.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Time in BOOT (and the other BOOT_* states).
    pub boot_ms: u64,
    /// Time of every other transitional state (PROLOG, SHUTDOWN, EPILOG, SAVE_*...).
    pub step_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            boot_ms: 2000,
            step_ms: 50,
        }
    }
}

/// The whole simulated cloud; what `--state-dir` persists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Cloud {
    pub next_vm: u32,
    pub next_host: u32,
    pub next_template: u32,
    pub vms: BTreeMap<u32, Vm>,
    pub hosts: BTreeMap<u32, Host>,
    pub templates: BTreeMap<u32, VmTemplate>,
    pub network: Network,
    /// VM_MAD of the driver backing VMs ("dummy" or "ns").
    pub vm_mad: String,
    /// Capacity given to hosts added with one.host.allocate: (cores, MiB).
    pub default_host: (u32, u64),
    pub next_request_id: i64,
    /// User name → uid, for every user of the auth file ever seen (oneadmin is 0).
    #[serde(default)]
    pub users: BTreeMap<String, u32>,
    /// Lifecycle timing (from the command line, not persisted).
    #[serde(skip)]
    pub timing: Timing,
    /// oned.conf's ONEGATE_ENDPOINT: added to the CONTEXT of VMs with TOKEN=YES (from the
    /// command line, not persisted).
    #[serde(skip)]
    pub onegate_endpoint: Option<String>,
}

/// Ids of VMs in a pool listing, per the filter arguments.
#[derive(Debug, Clone, Copy)]
pub struct PoolFilter {
    /// filter_flag.
    pub filter: i32,
    /// Start id or pagination offset.
    pub start: i32,
    /// End id or negative page size.
    pub end: i32,
    /// VM state filter.
    pub state: i32,
}

fn now_secs(now_ms: u64) -> i64 {
    i64::try_from(now_ms / 1000).unwrap_or(i64::MAX)
}

/// `istringstream >> long` over the whole value, as oned's `Template::get(name, long&)`:
/// leading blanks are skipped, anything after the number (even a blank) fails.
fn cxx_long(s: &str) -> Option<i64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    if t.is_empty() {
        return None;
    }
    t.parse().ok()
}

/// `istringstream >> float` over the whole value (`Template::get(name, float&)`): decimal
/// or exponent notation only; no `inf`, `nan` or hex, and out-of-range values fail.
fn cxx_float(s: &str) -> Option<f32> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) {
        return None;
    }
    t.parse::<f32>().ok().filter(|v| v.is_finite())
}

/// A float as `ostream << float` writes it (`%g` with 6 significant digits), which is how
/// oned stores CPU back into the template: `0.50` → `0.5`, `2.0` → `2`.
pub fn cxx_float_str(v: f32) -> String {
    fn trim(m: &str) -> &str {
        if m.contains('.') {
            m.trim_end_matches('0').trim_end_matches('.')
        } else {
            m
        }
    }
    let v = f64::from(v);
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim(mantissa), exp.abs());
    }
    let decimals = usize::try_from(5 - exp).unwrap_or(0);
    trim(&format!("{v:.decimals$}")).to_string()
}

/// oned's checks of MEMORY (positive long), CPU (positive float) and the optional VCPU
/// (positive long) in `VirtualMachine::insert`, which also writes them back normalised:
/// `MEMORY="0384"` is stored as `384`, `CPU="0.50"` as `0.5`, `VCPU="02"` as `2`.
fn normalise_capacity(t: &mut Template) -> Result<(), OneError> {
    let memory = t
        .get("MEMORY")
        .and_then(cxx_long)
        .filter(|m| *m > 0)
        .ok_or_else(|| {
            OneError::new(
                ErrorCode::Internal,
                "MEMORY attribute must be a positive integer value.",
            )
        })?;
    let cpu = t
        .get("CPU")
        .and_then(cxx_float)
        .filter(|c| *c > 0.0)
        .ok_or_else(|| {
            OneError::new(
                ErrorCode::Internal,
                "CPU attribute must be a positive float or integer value.",
            )
        })?;
    let vcpu = match t.get("VCPU") {
        Some(v) if !v.is_empty() => Some(cxx_long(v).filter(|n| *n > 0).ok_or_else(|| {
            OneError::new(
                ErrorCode::Internal,
                "VCPU attribute must be a positive integer value.",
            )
        })?),
        _ => None,
    };
    t.set("MEMORY", &memory.to_string());
    t.set("CPU", &cxx_float_str(cpu));
    if let Some(n) = vcpu {
        t.set("VCPU", &n.to_string());
    }
    Ok(())
}

/// Attributes oned keeps in TEMPLATE; everything else goes to USER_TEMPLATE.
const TEMPLATE_ATTRS: &[&str] = &[
    "AUTOMATIC_DS_REQUIREMENTS",
    "AUTOMATIC_NIC_REQUIREMENTS",
    "AUTOMATIC_REQUIREMENTS",
    "CONTEXT",
    "CPU",
    "CPU_MODEL",
    "CREATED_BY",
    "DISK",
    "FEATURES",
    "GRAPHICS",
    "INPUT",
    "MEMORY",
    "NIC",
    "NIC_ALIAS",
    "NIC_DEFAULT",
    "NUMA_NODE",
    "OS",
    "PCI",
    "RAW",
    "SECURITY_GROUP_RULE",
    "SNAPSHOT",
    "SPICE_OPTIONS",
    "SUBMIT_ON_HOLD",
    "TEMPLATE_ID",
    "TM_MAD_SYSTEM",
    "TOPOLOGY",
    "VCPU",
    "VCPU_MAX",
    "VMGROUP",
    "VMID",
    "VROUTER_ID",
];

/// Checks a name as oned's `PoolObjectSQL::name_is_valid` does, with its messages: empty,
/// then the first forbidden character, then more than 128 bytes.
fn check_name(name: &str) -> Result<(), String> {
    const INVALID: &[u8] = b"&|:\\\";/'#{}$<>\t\n\x0b\x0c\r";
    if name.is_empty() {
        return Err("Invalid NAME, it cannot be empty".into());
    }
    if let Some(c) = name.bytes().find(|b| INVALID.contains(b)) {
        return Err(format!(
            "Invalid NAME, char '{}' is not allowed",
            char::from(c)
        ));
    }
    if name.len() > 128 {
        return Err("Invalid NAME, max length is 128 chars".into());
    }
    Ok(())
}

/// oned's `hostname_is_valid` (`src/host/HostPool.cc`), checked before the name rules.
fn check_hostname(name: &str) -> Result<(), String> {
    let len = name.len();
    if !(2..=63).contains(&len) {
        return Err(
            "Invalid HOSTNAME, HOSTNAME length should be greater than 1, but smaller \
                    than 64 characters"
                .into(),
        );
    }
    let edge = |c: char| matches!(c, '-' | '.' | '_');
    if let Some(first) = name.chars().next().filter(|c| edge(*c)) {
        return Err(format!(
            "Invalid HOSTNAME, first character can't be '{first}'"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !edge(*c))
    {
        return Err(format!(
            "Invalid HOSTNAME, '{bad}' is invalid character for a HOSTNAME"
        ));
    }
    if let Some(last) = name.chars().last().filter(|c| edge(*c)) {
        return Err(format!(
            "Invalid HOSTNAME, last character can't be '{last}'"
        ));
    }
    Ok(())
}

/// Result of a state change request: the id the call returns.
pub type CallResult = Result<i64, OneError>;

impl Cloud {
    /// An empty cloud with `hosts` hosts of `cores` cores and `mem_mb` MiB each.
    pub fn new(vm_mad: &str, hosts: u32, cores: u32, mem_mb: u64, network: Network) -> Cloud {
        let mut cloud = Cloud {
            next_vm: 0,
            next_host: 0,
            next_template: 0,
            vms: BTreeMap::new(),
            hosts: BTreeMap::new(),
            templates: BTreeMap::new(),
            network,
            vm_mad: vm_mad.to_string(),
            default_host: (cores, mem_mb),
            next_request_id: 1000,
            users: BTreeMap::new(),
            timing: Timing::default(),
            onegate_endpoint: None,
        };
        for n in 1..=hosts {
            let name = format!("{vm_mad}-host-{n}");
            let id = cloud.add_host(&name, vm_mad, vm_mad, cores, mem_mb);
            if let Some(h) = cloud.hosts.get_mut(&id) {
                h.state = HostState::Monitored;
                h.prev_state = HostState::Monitored;
            }
        }
        cloud
    }

    fn add_host(&mut self, name: &str, im: &str, vmm: &str, cores: u32, mem_mb: u64) -> u32 {
        let id = self.next_host;
        self.next_host += 1;
        self.hosts.insert(
            id,
            Host {
                id,
                name: name.to_string(),
                state: HostState::Init,
                prev_state: HostState::Init,
                im_mad: im.to_string(),
                vm_mad: vmm.to_string(),
                cluster_id: 0,
                total_mem: mem_mb * 1024,
                total_cpu: u64::from(cores) * 100,
                mem_usage: 0,
                cpu_usage: 0,
                vms: Vec::new(),
            },
        );
        id
    }

    /// Gives every new user name a uid, in order, after the highest one known (oneadmin is
    /// always 0), so that ids stay the same across restarts with the same state dir.
    pub fn register_users<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            if name == "oneadmin" || self.users.contains_key(name) {
                continue;
            }
            let next = self.users.values().copied().max().unwrap_or(0) + 1;
            self.users.insert(name.to_string(), next);
        }
    }

    /// The user called `name` (registered with [`Cloud::register_users`]), if known.
    pub fn user(&self, name: &str) -> Option<Owner> {
        if name == "oneadmin" {
            return Some(Owner::oneadmin());
        }
        self.users.get(name).map(|uid| Owner {
            uid: *uid,
            gid: 1,
            uname: name.to_string(),
            gname: "users".into(),
        })
    }

    /// A new request id, with the caller, for the HISTORY record an action closes.
    fn request(&mut self, caller: &Owner) -> RequestInfo {
        self.next_request_id += 1;
        RequestInfo {
            id: self.next_request_id,
            uid: caller.uid,
            gid: caller.gid,
        }
    }

    fn vm_mut(&mut self, id: i64) -> Result<&mut Vm, OneError> {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.vms.get_mut(&i))
            .ok_or_else(|| OneError::no_vm(id))
    }

    /// The VM with that id, or oned's NO_EXISTS error.
    pub fn vm(&self, id: i64) -> Result<&Vm, OneError> {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.vms.get(&i))
            .ok_or_else(|| OneError::no_vm(id))
    }

    /// one.vm.info: the VM if `caller` may USE it.
    pub fn vm_info(&self, caller: &Owner, id: i64) -> Result<&Vm, OneError> {
        let vm = self.vm(id)?;
        authorize(caller, &[AuthItem::new(AuthOp::Use, "VM", id, &vm.owner)])?;
        Ok(vm)
    }

    /// one.host.info: the host if `caller` may USE it (hosts belong to oneadmin).
    pub fn host_info(&self, caller: &Owner, id: i64) -> Result<&Host, OneError> {
        let host = self.host(id)?;
        authorize(
            caller,
            &[AuthItem::new(AuthOp::Use, "HOST", id, &Owner::oneadmin())],
        )?;
        Ok(host)
    }

    /// one.template.info: the template if `caller` may USE it.
    pub fn template_info(&self, caller: &Owner, id: i64) -> Result<&VmTemplate, OneError> {
        let t = self.template(id)?;
        authorize(
            caller,
            &[AuthItem::new(AuthOp::Use, "TEMPLATE", id, &t.owner)],
        )?;
        Ok(t)
    }

    fn template(&self, id: i64) -> Result<&VmTemplate, OneError> {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.templates.get(&i))
            .ok_or_else(|| OneError {
                code: ErrorCode::NoExists,
                message: format!("Error getting virtual machine template [{id}]."),
                resp_id: i32::try_from(id).unwrap_or(-1),
            })
    }

    /// Ids of the hosts one.hostpool.info lists (filter ALL), in oned's descending order.
    pub fn host_ids(&self, caller: &Owner) -> Vec<u32> {
        let admin = Owner::oneadmin();
        self.hosts
            .keys()
            .rev()
            .copied()
            .filter(|_| listed(caller, -2, &admin))
            .collect()
    }

    /// The host with that id, or oned's NO_EXISTS error.
    pub fn host(&self, id: i64) -> Result<&Host, OneError> {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.hosts.get(&i))
            .ok_or_else(|| OneError::no_host(id))
    }

    /// one.vm.allocate: the VM belongs to `caller`.
    pub fn allocate_vm(
        &mut self,
        caller: &Owner,
        text: &str,
        hold: bool,
        now_ms: u64,
    ) -> CallResult {
        let tmpl =
            Template::parse(text).map_err(|e| OneError::new(ErrorCode::Internal, e.to_string()))?;
        authorize(caller, &[AuthItem::create("VM")])?;
        self.create_vm(caller, tmpl, None, hold, now_ms)
    }

    /// `VirtualMachine::insert`: the name (NAME, else `<prefix>-<id>`) is checked first,
    /// then MEMORY, CPU and VCPU.
    fn create_vm(
        &mut self,
        owner: &Owner,
        mut input: Template,
        prefix: Option<&str>,
        hold: bool,
        now_ms: u64,
    ) -> CallResult {
        let id = self.next_vm;
        let name = match input.get("NAME") {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("{}-{id}", prefix.unwrap_or("one")),
        };
        input.remove("NAME");
        check_name(&name).map_err(|m| OneError::new(ErrorCode::Internal, m))?;
        normalise_capacity(&mut input)?;

        let mut template = Template::default();
        let mut user_template = Template::default();
        for attr in input.attrs {
            let upper = attr.name().to_ascii_uppercase();
            if TEMPLATE_ATTRS.contains(&upper.as_str()) {
                template.attrs.push(attr);
            } else {
                user_template.attrs.push(attr);
            }
        }
        // SUBMIT_ON_HOLD is kept in TEMPLATE as a boolean (YES/NO) for good, also after
        // release and deploy (samples 06-22); hold=true sets it to YES.
        let submit_on_hold = template
            .get("SUBMIT_ON_HOLD")
            .map(|v| v.eq_ignore_ascii_case("yes"));
        let hold = hold || submit_on_hold == Some(true);
        if hold {
            template.set("SUBMIT_ON_HOLD", "YES");
        } else if submit_on_hold.is_some() {
            template.set("SUBMIT_ON_HOLD", "NO");
        }
        template.set("AUTOMATIC_REQUIREMENTS", "!(PIN_POLICY = PINNED)");
        template.set("VMID", &id.to_string());
        template.set_vector(
            "OS",
            vec![
                ("MACHINE".into(), "q35".into()),
                ("UUID".into(), uuid_for(id, now_ms)),
            ],
        );

        let ip = self.attach_nic(&mut template, id)?;
        if let Err(e) = self.build_context(&mut template, id, &name, owner, ip) {
            if let Some(ip) = ip {
                self.network.leases.remove(&ip);
            }
            return Err(e);
        }
        sort_template(&mut template);
        sort_template(&mut user_template);
        let onegate_token = template
            .vector_get("CONTEXT", "TOKEN")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
            .then(random_token);

        self.next_vm += 1;
        let state = if hold {
            VmState::Hold
        } else {
            VmState::Pending
        };
        self.vms.insert(
            id,
            Vm {
                id,
                name,
                owner: owner.clone(),
                state,
                lcm: LcmState::LCM_INIT,
                prev_state: state,
                prev_lcm: LcmState::LCM_INIT,
                resched: false,
                stime: now_secs(now_ms),
                etime: 0,
                deploy_id: String::new(),
                template,
                user_template,
                history: Vec::new(),
                host: None,
                ip,
                due_ms: 0,
                op: DriverOp::Idle,
                pending_call: None,
                migrate_to: None,
                onegate_token,
            },
        );
        Ok(i64::from(id))
    }

    /// Gives NIC 0 a lease on the simulator's network and fills what oned adds.
    fn attach_nic(&mut self, t: &mut Template, vm_id: u32) -> Result<Option<Ipv4Addr>, OneError> {
        let Some(pairs) = t.vector("NIC").map(<[(String, String)]>::to_vec) else {
            return Ok(None);
        };
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let wants_ours = match (get("NETWORK_ID"), get("NETWORK")) {
            (Some(id), _) => id.trim() == "0",
            (None, Some(name)) => name == self.network.name,
            (None, None) => false,
        };
        if !wants_ours {
            let what = get("NETWORK_ID")
                .or_else(|| get("NETWORK"))
                .unwrap_or_default();
            return Err(OneError::new(
                ErrorCode::Internal,
                format!("Error getting virtual network [{what}]."),
            ));
        }
        let ip = self.network.lease(vm_id).ok_or_else(|| {
            OneError::new(
                ErrorCode::Internal,
                "Not enough free addresses in an address range",
            )
        })?;
        let mac = mac_for(ip);
        let mut nic: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect();
        for (k, v) in [
            ("AR_ID", "0".to_string()),
            ("BRIDGE", self.network.name.clone()),
            ("BRIDGE_TYPE", "linux".to_string()),
            ("CLUSTER_ID", "0".to_string()),
            ("IP", ip.to_string()),
            ("MAC", mac),
            ("NAME", "NIC0".to_string()),
            ("NETWORK", self.network.name.clone()),
            ("NETWORK_ID", "0".to_string()),
            ("NIC_ID", "0".to_string()),
            ("SECURITY_GROUPS", "0".to_string()),
            ("TARGET", format!("one-{vm_id}-0")),
            ("VN_MAD", "bridge".to_string()),
        ] {
            nic.insert(k.to_string(), v);
        }
        t.set_vector("NIC", nic.into_iter().collect());
        Ok(Some(ip))
    }

    /// CONTEXT as oned finalises it: `$` variables expanded, DISK_ID/TARGET added, and the
    /// ETH0_* keys with NETWORK=YES.
    fn build_context(
        &self,
        t: &mut Template,
        vm_id: u32,
        name: &str,
        owner: &Owner,
        ip: Option<Ipv4Addr>,
    ) -> Result<(), OneError> {
        let Some(pairs) = t.vector("CONTEXT").map(<[(String, String)]>::to_vec) else {
            return Ok(());
        };
        let snapshot = t.clone();
        let resolve = |var: &one_proto::template::VarRef| -> Option<String> {
            use one_proto::template::VarRef;
            match var {
                VarRef::Simple(n) => match n.to_ascii_uppercase().as_str() {
                    "VMID" => Some(vm_id.to_string()),
                    "NAME" => Some(name.to_string()),
                    "UID" => Some(owner.uid.to_string()),
                    "GID" => Some(owner.gid.to_string()),
                    "UNAME" => Some(owner.uname.clone()),
                    "GNAME" => Some(owner.gname.clone()),
                    other => snapshot.get(other).map(str::to_string),
                },
                VarRef::Attr { var, attr, .. } => {
                    snapshot.vector_get(var, attr).map(str::to_string)
                }
            }
        };
        let expanded = one_proto::template::expand_context_vector(&pairs, &resolve)
            .map_err(|e| OneError::new(ErrorCode::Internal, e.to_string()))?;
        let mut ctx: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in expanded {
            ctx.entry(k.to_ascii_uppercase()).or_insert(v);
        }
        ctx.insert("DISK_ID".into(), "0".into());
        ctx.insert("TARGET".into(), "sda".into());
        // TOKEN=YES: oned adds its ONEGATE_ENDPOINT and VMID, and refuses the VM if
        // oned.conf has no endpoint (VirtualMachine::generate_token_context).
        if ctx
            .get("TOKEN")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
        {
            let Some(endpoint) = &self.onegate_endpoint else {
                return Err(OneError::new(
                    ErrorCode::Internal,
                    "TOKEN set, but onegate endpoint was not defined in oned.conf.",
                ));
            };
            ctx.insert("ONEGATE_ENDPOINT".into(), endpoint.clone());
            ctx.insert("VMID".into(), vm_id.to_string());
            t.set("CREATED_BY", &owner.uid.to_string());
        }
        if ctx
            .get("NETWORK")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
        {
            if let Some(ip) = ip {
                ctx.insert("ETH0_IP".into(), ip.to_string());
                ctx.insert("ETH0_MAC".into(), mac_for(ip));
                ctx.insert("ETH0_MASK".into(), self.network.mask_str());
                ctx.insert("ETH0_GATEWAY".into(), self.network.gateway.to_string());
                ctx.insert("ETH0_NETWORK".into(), self.network.address().to_string());
                ctx.insert("ETH0_DNS".into(), String::new());
            }
        }
        t.set_vector("CONTEXT", ctx.into_iter().collect());
        Ok(())
    }

    /// one.template.allocate.
    pub fn allocate_template(&mut self, caller: &Owner, text: &str, now_ms: u64) -> CallResult {
        let mut tmpl =
            Template::parse(text).map_err(|e| OneError::new(ErrorCode::Internal, e.to_string()))?;
        authorize(caller, &[AuthItem::create("TEMPLATE")])?;
        let name = tmpl.get("NAME").map(str::to_string).unwrap_or_default();
        check_name(&name).map_err(|m| OneError::new(ErrorCode::Internal, m))?;
        // Names are unique per owner (`VMTemplatePool::allocate`).
        if let Some(other) = self
            .templates
            .values()
            .find(|t| t.name == name && t.owner.uid == caller.uid)
        {
            return Err(OneError::new(
                ErrorCode::Internal,
                format!("NAME is already taken by TEMPLATE {}.", other.id),
            ));
        }
        tmpl.remove("NAME");
        sort_template(&mut tmpl);
        let id = self.next_template;
        self.next_template += 1;
        self.templates.insert(
            id,
            VmTemplate {
                id,
                name,
                owner: caller.clone(),
                regtime: now_secs(now_ms),
                template: tmpl,
            },
        );
        Ok(i64::from(id))
    }

    /// one.template.instantiate: the new VM belongs to `caller`; without a name it is
    /// called `<template name>-<vm id>`.
    pub fn instantiate(
        &mut self,
        caller: &Owner,
        tmpl_id: i64,
        name: &str,
        hold: bool,
        extra: &str,
        now_ms: u64,
    ) -> CallResult {
        let base = self.template(tmpl_id)?.clone();
        let mut tmpl = base.template.clone();
        if !extra.trim().is_empty() {
            let extra = Template::parse(extra)
                .map_err(|e| OneError::new(ErrorCode::Internal, e.to_string()))?;
            tmpl.merge(&extra);
        }
        authorize(
            caller,
            &[
                AuthItem::new(AuthOp::Use, "TEMPLATE", tmpl_id, &base.owner),
                AuthItem::create("VM"),
            ],
        )?;
        tmpl.set("TEMPLATE_ID", &base.id.to_string());
        tmpl.remove("NAME");
        if !name.is_empty() {
            tmpl.set("NAME", name);
        }
        self.create_vm(caller, tmpl, Some(&base.name), hold, now_ms)
    }

    /// one.host.allocate (`SharedAPI::allocate`, `HostPool::allocate`): cluster, then
    /// authorization, then the name rules and uniqueness.
    pub fn allocate_host(
        &mut self,
        caller: &Owner,
        name: &str,
        im: &str,
        vmm: &str,
        cluster: i32,
    ) -> CallResult {
        let cluster = if cluster == -1 { 0 } else { cluster };
        if cluster != 0 {
            return Err(OneError {
                code: ErrorCode::NoExists,
                message: format!("Error getting cluster [{cluster}]."),
                resp_id: cluster,
            });
        }
        let admin = Owner::oneadmin();
        authorize(
            caller,
            &[
                AuthItem::create("HOST"),
                AuthItem::new(AuthOp::Admin, "CLUSTER", 0, &admin),
            ],
        )?;
        let allocate_error = |m: String| {
            OneError::new(
                ErrorCode::Allocate,
                format!("Error allocating a new host. {m}"),
            )
        };
        check_hostname(name)
            .and_then(|()| check_name(name))
            .map_err(allocate_error)?;
        if im.is_empty() {
            return Err(allocate_error("IM_MAD_NAME cannot be empty.".into()));
        }
        if vmm.is_empty() {
            return Err(allocate_error("VMM_MAD_NAME cannot be empty.".into()));
        }
        if let Some(h) = self.hosts.values().find(|h| h.name == name) {
            return Err(allocate_error(format!(
                "NAME is already taken by HOST {}.",
                h.id
            )));
        }
        let (cores, mem) = self.default_host;
        let id = self.add_host(name, im, vmm, cores, mem);
        Ok(i64::from(id))
    }

    /// one.vm.update: type 0 replaces USER_TEMPLATE, 1 merges into it.
    /// oned checks, in order: the VM exists, MANAGE on it, the update type, the text.
    pub fn update_vm(&mut self, caller: &Owner, id: i64, text: &str, kind: i64) -> CallResult {
        let vm = self.vm_mut(id)?;
        authorize(
            caller,
            &[AuthItem::new(AuthOp::Manage, "VM", id, &vm.owner)],
        )?;
        if !(0..=1).contains(&kind) {
            return Err(OneError::new(ErrorCode::XmlRpcApi, "Wrong update type"));
        }
        let merge = kind == 1;
        let new = Template::parse(text).map_err(|e| OneError {
            resp_id: -1,
            ..OneError::new(ErrorCode::Action, e.to_string())
        })?;
        if merge {
            vm.user_template.merge(&new);
        } else {
            vm.user_template = new;
        }
        sort_template(&mut vm.user_template);
        Ok(id)
    }

    /// one.vm.action: the VM must exist and `caller` be authorized for the action
    /// (`VirtualMachineAPI::action`) before the action string is looked at.
    pub fn action(&mut self, caller: &Owner, action: &str, id: i64, now_ms: u64) -> CallResult {
        {
            let vm = self.vm(id)?;
            authorize(
                caller,
                &[AuthItem::new(vm_action_op(action), "VM", id, &vm.owner)],
            )?;
        }
        const KNOWN: &[&str] = &[
            "terminate",
            "terminate-hard",
            "undeploy",
            "undeploy-hard",
            "hold",
            "release",
            "stop",
            "suspend",
            "resume",
            "reboot",
            "reboot-hard",
            "poweroff",
            "poweroff-hard",
            "resched",
            "unresched",
        ];
        if !KNOWN.contains(&action) {
            return Err(OneError::new(
                ErrorCode::Action,
                format!("Action \"{action}\" is not supported"),
            ));
        }
        let request_id = self.request(caller);
        let step = self.timing_step();
        let vm = self.vm_mut(id)?;
        let not_available = || {
            OneError::action(
                action,
                format!("This action is not available for state {}", vm.state_name()),
            )
        };
        let s = vm.state;
        let l = vm.lcm;
        let hard = action.ends_with("-hard");
        match action {
            "terminate" | "terminate-hard" => {
                let code = if hard {
                    history_action::TERMINATE_HARD
                } else {
                    history_action::TERMINATE
                };
                match s {
                    VmState::Done => return Ok(id),
                    VmState::Pending
                    | VmState::Hold
                    | VmState::Init
                    | VmState::Cloning
                    | VmState::CloningFailure => {
                        vm.set_state(VmState::Done, LcmState::LCM_INIT);
                        vm.etime = now_secs(now_ms);
                        self.finish_vm(id);
                        return Ok(id);
                    }
                    VmState::Active
                        if l == LcmState::RUNNING
                            || l == LcmState::UNKNOWN
                            || (hard && l == LcmState::SHUTDOWN) =>
                    {
                        close_history(vm, now_ms, code, request_id);
                        vm.set_state(VmState::Active, LcmState::SHUTDOWN);
                        schedule(vm, now_ms + step, Some(DriverCall::Destroy));
                    }
                    VmState::Active if l.is_failure() => {
                        close_history(vm, now_ms, code, request_id);
                        vm.set_state(VmState::Active, LcmState::CLEANUP_DELETE);
                        schedule(vm, now_ms + step, Some(DriverCall::Destroy));
                    }
                    VmState::Poweroff
                    | VmState::Suspended
                    | VmState::Stopped
                    | VmState::Undeployed => {
                        close_history(vm, now_ms, code, request_id);
                        vm.set_state(VmState::Active, LcmState::EPILOG);
                        schedule(vm, now_ms + step, Some(DriverCall::Destroy));
                    }
                    _ => {
                        return Err(OneError::action(
                            action,
                            format!(
                                "Could not terminate VM {id}, wrong state {}.",
                                vm.state_name()
                            ),
                        ))
                    }
                }
            }
            "poweroff" | "poweroff-hard" => {
                let ok = vm.running()
                    || vm.is(VmState::Active, LcmState::UNKNOWN)
                    || (hard && vm.is(VmState::Active, LcmState::SHUTDOWN_POWEROFF));
                if !ok {
                    return Err(not_available());
                }
                let code = if hard {
                    history_action::POWEROFF_HARD
                } else {
                    history_action::POWEROFF
                };
                set_history_action(vm, code, request_id);
                vm.set_state(VmState::Active, LcmState::SHUTDOWN_POWEROFF);
                schedule(vm, now_ms + step, Some(DriverCall::Destroy));
            }
            "undeploy" | "undeploy-hard" => {
                let code = if hard {
                    history_action::UNDEPLOY_HARD
                } else {
                    history_action::UNDEPLOY
                };
                if vm.running()
                    || vm.is(VmState::Active, LcmState::UNKNOWN)
                    || (hard && vm.is(VmState::Active, LcmState::SHUTDOWN_UNDEPLOY))
                {
                    set_history_action(vm, code, request_id);
                    vm.set_state(VmState::Active, LcmState::SHUTDOWN_UNDEPLOY);
                    schedule(vm, now_ms + step, Some(DriverCall::Destroy));
                } else if s == VmState::Poweroff {
                    set_history_action(vm, code, request_id);
                    vm.set_state(VmState::Active, LcmState::EPILOG_UNDEPLOY);
                    schedule(vm, now_ms + step, None);
                } else {
                    return Err(not_available());
                }
            }
            "suspend" => {
                if !vm.running() {
                    return Err(not_available());
                }
                set_history_action(vm, history_action::SUSPEND, request_id);
                vm.set_state(VmState::Active, LcmState::SAVE_SUSPEND);
                schedule(vm, now_ms + step, Some(DriverCall::Suspend));
            }
            "stop" => {
                if vm.running() {
                    set_history_action(vm, history_action::STOP, request_id);
                    vm.set_state(VmState::Active, LcmState::SAVE_STOP);
                    schedule(vm, now_ms + step, Some(DriverCall::Destroy));
                } else if s == VmState::Suspended {
                    set_history_action(vm, history_action::STOP, request_id);
                    vm.set_state(VmState::Active, LcmState::EPILOG_STOP);
                    schedule(vm, now_ms + step, Some(DriverCall::Destroy));
                } else {
                    return Err(not_available());
                }
            }
            "resume" => match s {
                VmState::Suspended => {
                    open_history_again(vm, now_ms);
                    vm.set_state(VmState::Active, LcmState::BOOT_SUSPENDED);
                    schedule(vm, now_ms + step, Some(DriverCall::Resume));
                }
                VmState::Poweroff => {
                    open_history_again(vm, now_ms);
                    vm.set_state(VmState::Active, LcmState::BOOT_POWEROFF);
                    let boot = self.timing_boot();
                    let vm = self.vm_mut(id)?;
                    schedule(vm, now_ms + boot, Some(DriverCall::Boot));
                }
                VmState::Stopped | VmState::Undeployed => {
                    // Placement then goes through PROLOG_RESUME / PROLOG_UNDEPLOY, as the
                    // last HISTORY record's ACTION (stop / undeploy) tells.
                    vm.set_state(VmState::Pending, LcmState::LCM_INIT);
                }
                VmState::Active if l == LcmState::UNKNOWN => {
                    vm.set_state(VmState::Active, LcmState::BOOT_UNKNOWN);
                    schedule(vm, now_ms + step, None);
                }
                _ => return Err(not_available()),
            },
            "hold" => {
                if s != VmState::Pending {
                    return Err(not_available());
                }
                vm.set_state(VmState::Hold, LcmState::LCM_INIT);
            }
            "release" => {
                if s != VmState::Hold {
                    return Err(not_available());
                }
                vm.set_state(VmState::Pending, LcmState::LCM_INIT);
            }
            "reboot" | "reboot-hard" => {
                if !vm.running() {
                    return Err(not_available());
                }
                vm.resched = false;
                // oned keeps the VM RUNNING while the driver restarts the guest.
                vm.pending_call = Some(DriverCall::Reboot);
            }
            "resched" | "unresched" => {
                let ok = vm.running()
                    || vm.is(VmState::Active, LcmState::UNKNOWN)
                    || s == VmState::Poweroff;
                if !ok {
                    return Err(not_available());
                }
                vm.resched = action == "resched";
            }
            _ => return Err(not_available()),
        }
        Ok(id)
    }

    fn timing_step(&self) -> u64 {
        self.timing.step_ms
    }

    fn timing_boot(&self) -> u64 {
        self.timing.boot_ms
    }

    /// one.vm.deploy.
    /// oned checks the host, then the VM, then ADMIN on the VM and MANAGE on the host.
    pub fn deploy(
        &mut self,
        caller: &Owner,
        id: i64,
        host_id: i64,
        enforce: bool,
        now_ms: u64,
    ) -> CallResult {
        let host = self.host(host_id)?.clone();
        let vm = self.vm(id)?;
        let admin = Owner::oneadmin();
        authorize(
            caller,
            &[
                AuthItem::new(AuthOp::Admin, "VM", id, &vm.owner),
                AuthItem::new(AuthOp::Manage, "HOST", host_id, &admin),
            ],
        )?;
        let deployable = matches!(
            vm.state,
            VmState::Pending | VmState::Hold | VmState::Stopped | VmState::Undeployed
        );
        if !deployable {
            return Err(OneError::new(
                ErrorCode::Action,
                format!(
                    "Deploy action is not available for state {}",
                    vm.state_name()
                ),
            ));
        }
        let (cpu100, mem) = (cpu_units(vm.cpu()), vm.memory_mb() * 1024);
        if enforce {
            if let Some(why) = host.shortage(cpu100, mem) {
                return Err(OneError::new(
                    ErrorCode::Action,
                    format!(
                        "virtual machine [{id}] does not fit in host [{}]. {why}",
                        host.id
                    ),
                ));
            }
        }
        self.place(id_u32(id), host.id, now_ms);
        Ok(id)
    }

    /// one.vm.migrate (`VirtualMachineAPI::migrate`): host, VM, authorization, then the
    /// state: RUNNING, UNKNOWN, POWEROFF or SUSPENDED. `live` only matters while RUNNING.
    pub fn migrate(
        &mut self,
        caller: &Owner,
        id: i64,
        host_id: i64,
        live: bool,
        enforce: bool,
        now_ms: u64,
    ) -> CallResult {
        let host = self.host(host_id)?.clone();
        let step = self.timing_step();
        let vm = self.vm(id)?;
        let admin = Owner::oneadmin();
        authorize(
            caller,
            &[
                AuthItem::new(AuthOp::Admin, "VM", id, &vm.owner),
                AuthItem::new(AuthOp::Manage, "HOST", host_id, &admin),
            ],
        )?;
        let ok = vm.running()
            || vm.is(VmState::Active, LcmState::UNKNOWN)
            || matches!(vm.state, VmState::Poweroff | VmState::Suspended);
        if !ok {
            return Err(OneError::new(
                ErrorCode::Action,
                format!(
                    "Migrate action is not available for state {}",
                    vm.state_name()
                ),
            ));
        }
        let live = live && vm.running();
        if vm.host == Some(host.id) {
            return Err(OneError::new(
                ErrorCode::Action,
                format!(
                    "VM is already running on host [{}] and datastore [0]",
                    host.id
                ),
            ));
        }
        let (cpu100, mem) = (cpu_units(vm.cpu()), vm.memory_mb() * 1024);
        if enforce {
            if let Some(why) = host.shortage(cpu100, mem) {
                return Err(OneError::new(
                    ErrorCode::Action,
                    format!(
                        "virtual machine [{id}] does not fit in host [{}]. {why}",
                        host.id
                    ),
                ));
            }
        }
        let request_id = self.request(caller);
        let vm_id = id_u32(id);
        self.reserve(host.id, vm_id, cpu100, mem);
        let vm = self.vm_mut(id)?;
        vm.migrate_to = Some(host.id);
        let code = if live {
            history_action::LIVE_MIGRATE
        } else {
            history_action::MIGRATE
        };
        set_history_action(vm, code, request_id);
        match (live, vm.state) {
            (true, _) => {
                vm.set_state(VmState::Active, LcmState::MIGRATE);
                schedule(vm, now_ms + step, Some(DriverCall::Migrate));
            }
            (false, VmState::Poweroff) => {
                vm.set_state(VmState::Active, LcmState::PROLOG_MIGRATE_POWEROFF);
                schedule(vm, now_ms + step, None);
            }
            (false, VmState::Suspended) => {
                vm.set_state(VmState::Active, LcmState::PROLOG_MIGRATE_SUSPEND);
                schedule(vm, now_ms + step, None);
            }
            (false, _) if vm.lcm == LcmState::UNKNOWN => {
                vm.set_state(VmState::Active, PROLOG_MIGRATE_UNKNOWN);
                schedule(vm, now_ms + step, None);
            }
            _ => {
                vm.set_state(VmState::Active, LcmState::SAVE_MIGRATE);
                schedule(vm, now_ms + step, Some(DriverCall::Suspend));
            }
        }
        Ok(id)
    }

    /// one.vm.resize. `hotplug` says whether the driver can resize a running VM.
    pub fn resize(
        &mut self,
        caller: &Owner,
        id: i64,
        text: &str,
        enforce: bool,
        hotplug: bool,
        now_ms: u64,
    ) -> CallResult {
        // `VirtualMachineAPI::resize`: parse, authorize, read the new values (an absent or
        // unreadable value is 0 and keeps the old one; a negative one is an error).
        let new =
            Template::parse(text).map_err(|e| OneError::new(ErrorCode::Internal, e.to_string()))?;
        let step = self.timing_step();
        let vm = self.vm(id)?.clone();
        authorize(
            caller,
            &[AuthItem::new(AuthOp::Manage, "VM", id, &vm.owner)],
        )?;
        let enforce = enforce || !caller.is_admin();
        let ncpu = new.get("CPU").and_then(cxx_float).unwrap_or(0.0);
        let nmem = new.get("MEMORY").and_then(cxx_long).unwrap_or(0);
        let nvcpu = new
            .get("VCPU")
            .and_then(cxx_long)
            .filter(|v| i32::try_from(*v).is_ok())
            .unwrap_or(0);
        for (bad, what) in [
            (ncpu < 0.0, "CPU must be a positive float or integer value."),
            (nmem < 0, "MEMORY must be a positive integer value."),
            (nvcpu < 0, "VCPU must be a positive integer value."),
        ] {
            if bad {
                return Err(OneError::new(ErrorCode::Internal, what));
            }
        }
        let ocpu = vm.template.get("CPU").and_then(cxx_float).unwrap_or(0.0);
        let omem = vm.template.get("MEMORY").and_then(cxx_long).unwrap_or(0);
        let ovcpu = vm.template.get("VCPU").and_then(cxx_long).unwrap_or(0);
        let cpu = if ncpu == 0.0 { ocpu } else { ncpu };
        let mem = if nmem == 0 { omem } else { nmem };
        let vcpu = if nvcpu == 0 { ovcpu } else { nvcpu };

        // `DispatchManager::resize`: which states allow it.
        let cannot = || {
            OneError::new(
                ErrorCode::Action,
                format!("Cannot resize a VM in state {}", vm.state_name()),
            )
        };
        match vm.state {
            VmState::Active if !vm.running() => return Err(cannot()),
            VmState::Active => {
                if !hotplug {
                    return Err(OneError::new(
                        ErrorCode::Action,
                        format!("Hotplug resize not supported by driver {}", self.vm_mad),
                    ));
                }
                if ocpu == cpu && omem == mem && ovcpu == vcpu {
                    return Ok(id); // "Nothing to resize"
                }
            }
            VmState::Stopped | VmState::Done | VmState::Suspended => return Err(cannot()),
            _ => {}
        }
        let new_cpu = cpu_units(f64::from(cpu));
        let new_mem = u64::try_from(mem).unwrap_or(0) * 1024;
        let host_held = vm.state == VmState::Poweroff || vm.running();
        if let Some(hid) = vm.host.filter(|_| host_held) {
            let (old_cpu, old_mem) = (cpu_units(vm.cpu()), vm.memory_mb() * 1024);
            if let Some(h) = self.hosts.get_mut(&hid) {
                h.cpu_usage = h.cpu_usage.saturating_sub(old_cpu);
                h.mem_usage = h.mem_usage.saturating_sub(old_mem);
                let short = if enforce {
                    h.shortage(new_cpu, new_mem)
                } else {
                    None
                };
                if let Some(why) = short {
                    h.cpu_usage += old_cpu;
                    h.mem_usage += old_mem;
                    return Err(OneError::new(ErrorCode::Action, why));
                }
                h.cpu_usage += new_cpu;
                h.mem_usage += new_mem;
            }
        }
        let vm = self.vm_mut(id)?;
        vm.template.set("CPU", &cxx_float_str(cpu));
        vm.template.set("MEMORY", &mem.to_string());
        if vcpu > 0 {
            vm.template.set("VCPU", &vcpu.to_string());
        }
        sort_template(&mut vm.template);
        if vm.running() {
            vm.set_state(VmState::Active, LcmState::HOTPLUG_RESIZE);
            schedule(vm, now_ms + step, Some(DriverCall::Resize));
        }
        Ok(id)
    }

    /// one.vm.recover (`VirtualMachineAPI::recover`, `DispatchManager::recover|retry|
    /// delete_vm|delete_recreate|delete_vm_db`): 0 failure, 1 success, 2 retry, 3 delete,
    /// 4 delete-recreate, 5 delete-db (the VM is DONE at once and the driver is not asked to
    /// remove it, as with oned).
    pub fn recover(&mut self, caller: &Owner, id: i64, op: i64, now_ms: u64) -> CallResult {
        if !(0..=5).contains(&op) {
            return Err(OneError::new(
                ErrorCode::Action,
                "Wrong recovery operation code",
            ));
        }
        {
            let vm = self.vm(id)?;
            authorize(caller, &[AuthItem::new(AuthOp::Admin, "VM", id, &vm.owner)])?;
        }
        let step = self.timing_step();
        let request_id = self.request(caller);
        let vm = self.vm_mut(id)?;
        let active = vm.state == VmState::Active;
        let transitional = active
            && vm.lcm != LcmState::RUNNING
            && vm.lcm != LcmState::UNKNOWN
            && vm.lcm != LcmState::LCM_INIT
            && vm.lcm != LcmState::CLEANUP_DELETE
            && vm.lcm != LcmState::CLEANUP_RESUBMIT
            && !vm.lcm.is_failure();
        let wrong_state = |what: &str, vm: &Vm| {
            OneError::new(
                ErrorCode::Action,
                format!(
                    "Could not perform a {what} on VM {id}, wrong state {}.",
                    vm.state_name()
                ),
            )
        };
        match op {
            0 | 1 if !active => return Err(wrong_state("recover operation", vm)),
            2 if !active => return Err(wrong_state("retry", vm)),
            0 | 1 if vm.lcm == LcmState::UNKNOWN => {
                vm.set_state(VmState::Active, LcmState::RUNNING);
            }
            0 | 1 if vm.lcm == LcmState::CLEANUP_DELETE => {
                vm.pending_call = None;
                vm.op = DriverOp::Idle;
                vm.due_ms = now_ms;
            }
            0 | 1 if vm.lcm == LcmState::CLEANUP_RESUBMIT => {
                vm.pending_call = None;
                vm.op = DriverOp::Idle;
                vm.due_ms = now_ms;
            }
            0 if transitional => {
                vm.pending_call = None;
                vm.op = DriverOp::Failed("recovered as failure".into());
                vm.due_ms = now_ms;
            }
            1 if transitional => {
                // Pretend the driver finished: the next round moves the VM on.
                vm.pending_call = None;
                vm.op = DriverOp::Idle;
                vm.due_ms = now_ms;
            }
            1 | 2 if vm.lcm.is_failure() => {
                let (next, call) = match (vm.lcm, op) {
                    (LcmState::PROLOG_FAILURE, 1) => (LcmState::BOOT, Some(DriverCall::Boot)),
                    (LcmState::PROLOG_FAILURE, _) => (LcmState::PROLOG, None),
                    (LcmState::BOOT_FAILURE, 1) => (LcmState::RUNNING, None),
                    (LcmState::BOOT_FAILURE, _) => (LcmState::BOOT, Some(DriverCall::Boot)),
                    (LcmState::EPILOG_FAILURE, _) => (LcmState::EPILOG, Some(DriverCall::Destroy)),
                    (_, _) => (LcmState::BOOT, Some(DriverCall::Boot)),
                };
                vm.user_template.remove("ERROR");
                vm.set_state(VmState::Active, next);
                if next != LcmState::RUNNING {
                    schedule(vm, now_ms + step, call);
                }
            }
            // Nothing to recover or retry in this LCM state: oned accepts and does nothing.
            0..=2 => {}
            3 => match vm.state {
                VmState::Done => {}
                VmState::Active => {
                    close_history(vm, now_ms, history_action::DELETE, request_id);
                    if vm.host.is_none() {
                        vm.pending_call = None;
                        vm.set_state(VmState::Done, LcmState::LCM_INIT);
                        vm.etime = now_secs(now_ms);
                        self.finish_vm(id);
                    } else {
                        vm.set_state(VmState::Active, LcmState::CLEANUP_DELETE);
                        schedule(vm, now_ms + step, Some(DriverCall::Destroy));
                    }
                }
                s => {
                    // Not running anywhere: DONE at once (the epilog runs on its own).
                    close_history(vm, now_ms, history_action::DELETE, request_id);
                    let call = matches!(s, VmState::Poweroff | VmState::Suspended)
                        .then_some(DriverCall::Destroy);
                    vm.set_state(VmState::Done, LcmState::LCM_INIT);
                    vm.etime = now_secs(now_ms);
                    vm.pending_call = call;
                    vm.op = DriverOp::Idle;
                    self.finish_vm(id);
                }
            },
            4 => match vm.state {
                VmState::Done => {
                    return Err(OneError::new(
                        ErrorCode::Action,
                        "Cannot delete-recreate a VM already in DONE state",
                    ))
                }
                VmState::Init | VmState::Pending | VmState::Cloning | VmState::CloningFailure => {}
                VmState::Hold | VmState::Stopped | VmState::Undeployed => {
                    set_history_action(vm, history_action::DELETE_RECREATE, request_id);
                    vm.set_state(VmState::Pending, LcmState::LCM_INIT);
                }
                _ => {
                    close_history(vm, now_ms, history_action::DELETE_RECREATE, request_id);
                    vm.set_state(VmState::Active, LcmState::CLEANUP_RESUBMIT);
                    schedule(vm, now_ms + step, Some(DriverCall::Destroy));
                }
            },
            _ => {
                if vm.state != VmState::Done {
                    vm.set_state(VmState::Done, LcmState::LCM_INIT);
                    vm.etime = now_secs(now_ms);
                    vm.pending_call = None;
                    vm.op = DriverOp::Idle;
                    self.finish_vm(id);
                }
            }
        }
        Ok(id)
    }

    /// Sends a VM to a failure LCM state (fault injection).
    pub fn force_failure(&mut self, id: i64, lcm: LcmState, why: &str, now_ms: u64) -> CallResult {
        let vm = self.vm_mut(id)?;
        vm.set_state(VmState::Active, lcm);
        vm.pending_call = None;
        vm.op = DriverOp::Idle;
        vm.due_ms = u64::MAX;
        set_error(vm, why, now_ms);
        Ok(id)
    }

    fn reserve(&mut self, host: u32, vm: u32, cpu100: u64, mem: u64) {
        if let Some(h) = self.hosts.get_mut(&host) {
            h.cpu_usage += cpu100;
            h.mem_usage += mem;
            if !h.vms.contains(&vm) {
                h.vms.push(vm);
                h.vms.sort_unstable();
            }
        }
    }

    fn unreserve(&mut self, host: u32, vm: u32, cpu100: u64, mem: u64) {
        if let Some(h) = self.hosts.get_mut(&host) {
            h.cpu_usage = h.cpu_usage.saturating_sub(cpu100);
            h.mem_usage = h.mem_usage.saturating_sub(mem);
            h.vms.retain(|v| *v != vm);
        }
    }

    /// Releases the VM's host capacity.
    fn release_host(&mut self, id: u32) {
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let (cpu, mem) = (cpu_units(vm.cpu()), vm.memory_mb() * 1024);
        if let Some(h) = vm.host.take() {
            self.unreserve(h, id, cpu, mem);
        }
    }

    /// A VM reached DONE: give back its host and its lease.
    fn finish_vm(&mut self, id: i64) {
        let id = id_u32(id);
        self.release_host(id);
        self.network.leases.retain(|_, v| *v != id);
    }

    /// Puts a PENDING (or HOLD, STOPPED, UNDEPLOYED) VM on a host: PROLOG starts.
    fn place(&mut self, id: u32, host_id: u32, now_ms: u64) {
        let step = self.timing_step();
        let Some(host) = self.hosts.get(&host_id).cloned() else {
            return;
        };
        let Some(vm) = self.vms.get(&id) else { return };
        let (cpu, mem) = (cpu_units(vm.cpu()), vm.memory_mb() * 1024);
        // `LifeCycleManager::trigger_deploy`: the previous stay's ACTION decides the
        // PROLOG flavour, whatever PREV_STATE says by now (a resumed VM waits in PENDING).
        let previous = vm.history.last().map(|h| h.action);
        let from_stop = previous == Some(history_action::STOP);
        let from_undeploy = matches!(
            previous,
            Some(history_action::UNDEPLOY | history_action::UNDEPLOY_HARD)
        );
        self.reserve(host_id, id, cpu, mem);
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        vm.host = Some(host_id);
        vm.deploy_id = format!("{}:{}:{}", host.name, vm.name, host.vm_mad);
        vm.template.set("TM_MAD_SYSTEM", &host.vm_mad);
        sort_template(&mut vm.template);
        if let Some(last) = vm.history.last_mut() {
            if last.etime == 0 {
                last.etime = now_secs(now_ms);
            }
        }
        let t = now_secs(now_ms);
        vm.history.push(History {
            seq: u32::try_from(vm.history.len()).unwrap_or(u32::MAX),
            hostname: host.name.clone(),
            hid: host.id,
            vm_mad: host.vm_mad.clone(),
            stime: t,
            etime: 0,
            pstime: t,
            petime: 0,
            rstime: 0,
            retime: 0,
            estime: 0,
            eetime: 0,
            action: history_action::NONE,
            uid: -1,
            gid: -1,
            request_id: -1,
        });
        let lcm = if from_stop {
            LcmState::PROLOG_RESUME
        } else if from_undeploy {
            LcmState::PROLOG_UNDEPLOY
        } else {
            LcmState::PROLOG
        };
        vm.set_state(VmState::Active, lcm);
        schedule(vm, now_ms + step, None);
    }

    /// The scheduler: places PENDING VMs (lowest id first) on the first host with room.
    /// A VM that fits nowhere stays PENDING with SCHED_MESSAGE saying why.
    pub fn schedule_pending(&mut self, now_ms: u64) {
        let pending: Vec<u32> = self
            .vms
            .values()
            .filter(|v| v.state == VmState::Pending)
            .map(|v| v.id)
            .collect();
        for id in pending {
            let Some(vm) = self.vms.get(&id) else {
                continue;
            };
            let (cpu, mem) = (cpu_units(vm.cpu()), vm.memory_mb() * 1024);
            let host = self.hosts.values().find(|h| h.fits(cpu, mem)).map(|h| h.id);
            match host {
                Some(h) => {
                    if let Some(vm) = self.vms.get_mut(&id) {
                        vm.user_template.remove("SCHED_MESSAGE");
                    }
                    self.place(id, h, now_ms);
                }
                None => {
                    if let Some(vm) = self.vms.get_mut(&id) {
                        if vm.user_template.get("SCHED_MESSAGE").is_none() {
                            let msg = format!(
                                "{} : Cannot dispatch VM: No host with enough capacity to deploy the VM",
                                log_time(now_ms)
                            );
                            vm.user_template.set("SCHED_MESSAGE", &msg);
                            sort_template(&mut vm.user_template);
                        }
                    }
                }
            }
        }
    }

    /// Moves every VM whose transitional state is over (time up, driver done) to its next
    /// state. VMs entering a state that needs the driver get `pending_call` set.
    pub fn advance(&mut self, now_ms: u64) {
        let due: Vec<u32> = self
            .vms
            .values()
            .filter(|v| {
                v.state == VmState::Active
                    && v.due_ms <= now_ms
                    && v.pending_call.is_none()
                    && v.op != DriverOp::Busy
                    && (v.lcm != LcmState::RUNNING)
                    && !v.lcm.is_failure()
            })
            .map(|v| v.id)
            .collect();
        for id in due {
            self.step_vm(id, now_ms);
        }
    }

    fn step_vm(&mut self, id: u32, now_ms: u64) {
        let step = self.timing_step();
        let boot = self.timing_boot();
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        if let DriverOp::Failed(why) = vm.op.clone() {
            vm.op = DriverOp::Idle;
            let fail = match vm.lcm {
                LcmState::PROLOG | LcmState::PROLOG_RESUME | LcmState::PROLOG_UNDEPLOY => {
                    LcmState::PROLOG_FAILURE
                }
                LcmState::EPILOG | LcmState::SHUTDOWN | LcmState::CLEANUP_DELETE => {
                    LcmState::EPILOG_FAILURE
                }
                _ => LcmState::BOOT_FAILURE,
            };
            vm.set_state(VmState::Active, fail);
            vm.due_ms = u64::MAX;
            set_error(vm, &why, now_ms);
            return;
        }
        let t = now_secs(now_ms);
        match vm.lcm {
            LcmState::PROLOG | LcmState::PROLOG_RESUME | LcmState::PROLOG_UNDEPLOY => {
                let next = match vm.lcm {
                    LcmState::PROLOG_RESUME => LcmState::BOOT_STOPPED,
                    LcmState::PROLOG_UNDEPLOY => LcmState::BOOT_UNDEPLOY,
                    _ => LcmState::BOOT,
                };
                if let Some(h) = vm.history.last_mut() {
                    h.petime = t;
                    h.rstime = t;
                }
                vm.set_state(VmState::Active, next);
                schedule(vm, now_ms + boot, Some(DriverCall::Boot));
            }
            LcmState::BOOT
            | LcmState::BOOT_STOPPED
            | LcmState::BOOT_UNDEPLOY
            | LcmState::BOOT_POWEROFF
            | LcmState::BOOT_SUSPENDED
            | LcmState::BOOT_UNKNOWN
            | LcmState::BOOT_MIGRATE
            | LcmState::HOTPLUG_RESIZE => {
                vm.set_state(VmState::Active, LcmState::RUNNING);
                vm.due_ms = 0;
            }
            LcmState::MIGRATE => {
                self.finish_migration(id, now_ms);
                if let Some(vm) = self.vms.get_mut(&id) {
                    vm.set_state(VmState::Active, LcmState::RUNNING);
                }
            }
            LcmState::SAVE_MIGRATE => {
                vm.set_state(VmState::Active, LcmState::PROLOG_MIGRATE);
                schedule(vm, now_ms + step, None);
            }
            LcmState::PROLOG_MIGRATE => {
                self.finish_migration(id, now_ms);
                if let Some(vm) = self.vms.get_mut(&id) {
                    vm.set_state(VmState::Active, LcmState::BOOT_MIGRATE);
                    schedule(vm, now_ms + step, Some(DriverCall::Resume));
                }
            }
            PROLOG_MIGRATE_UNKNOWN => {
                self.finish_migration(id, now_ms);
                if let Some(vm) = self.vms.get_mut(&id) {
                    vm.set_state(VmState::Active, LcmState::BOOT);
                    schedule(vm, now_ms + boot, Some(DriverCall::Boot));
                }
            }
            LcmState::PROLOG_MIGRATE_POWEROFF => {
                self.finish_migration(id, now_ms);
                if let Some(vm) = self.vms.get_mut(&id) {
                    vm.set_state(VmState::Poweroff, LcmState::LCM_INIT);
                }
            }
            LcmState::PROLOG_MIGRATE_SUSPEND => {
                self.finish_migration(id, now_ms);
                if let Some(vm) = self.vms.get_mut(&id) {
                    vm.set_state(VmState::Suspended, LcmState::LCM_INIT);
                }
            }
            LcmState::SHUTDOWN => {
                if let Some(h) = vm.history.last_mut() {
                    h.retime = t;
                    h.estime = t;
                }
                vm.set_state(VmState::Active, LcmState::EPILOG);
                schedule(vm, now_ms + step, None);
            }
            LcmState::EPILOG | LcmState::CLEANUP_DELETE => {
                if let Some(h) = vm.history.last_mut() {
                    h.etime = t;
                    h.eetime = t;
                    if h.estime == 0 {
                        h.estime = t;
                    }
                }
                vm.set_state(VmState::Done, LcmState::LCM_INIT);
                vm.etime = t;
                vm.due_ms = 0;
                self.finish_vm(i64::from(id));
            }
            LcmState::SHUTDOWN_POWEROFF => {
                if let Some(h) = vm.history.last_mut() {
                    h.retime = t;
                }
                vm.set_state(VmState::Poweroff, LcmState::LCM_INIT);
            }
            LcmState::SAVE_SUSPEND => {
                if let Some(h) = vm.history.last_mut() {
                    h.retime = t;
                }
                vm.set_state(VmState::Suspended, LcmState::LCM_INIT);
            }
            LcmState::SAVE_STOP => {
                if let Some(h) = vm.history.last_mut() {
                    h.retime = t;
                }
                vm.set_state(VmState::Active, LcmState::EPILOG_STOP);
                schedule(vm, now_ms + step, None);
            }
            LcmState::EPILOG_STOP | LcmState::EPILOG_UNDEPLOY => {
                let next = if vm.lcm == LcmState::EPILOG_STOP {
                    VmState::Stopped
                } else {
                    VmState::Undeployed
                };
                if let Some(h) = vm.history.last_mut() {
                    h.etime = t;
                    h.estime = t;
                    h.eetime = t;
                    if h.retime == 0 {
                        h.retime = t;
                    }
                }
                vm.set_state(next, LcmState::LCM_INIT);
                self.release_host(id);
            }
            LcmState::SHUTDOWN_UNDEPLOY => {
                vm.set_state(VmState::Active, LcmState::EPILOG_UNDEPLOY);
                schedule(vm, now_ms + step, None);
            }
            LcmState::CLEANUP_RESUBMIT => {
                if let Some(h) = vm.history.last_mut() {
                    h.etime = t;
                }
                vm.set_state(VmState::Pending, LcmState::LCM_INIT);
                vm.deploy_id.clear();
                self.release_host(id);
            }
            _ => {
                vm.due_ms = u64::MAX;
            }
        }
    }

    /// Moves the VM's stay (history, deploy id, capacity) to the migration target.
    fn finish_migration(&mut self, id: u32, now_ms: u64) {
        let Some(vm) = self.vms.get(&id) else { return };
        let Some(to) = vm.migrate_to else { return };
        let from = vm.host;
        let (cpu, mem) = (cpu_units(vm.cpu()), vm.memory_mb() * 1024);
        if let Some(from) = from {
            self.unreserve(from, id, cpu, mem);
        }
        let Some(host) = self.hosts.get(&to).cloned() else {
            return;
        };
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        let t = now_secs(now_ms);
        if let Some(h) = vm.history.last_mut() {
            h.etime = t;
            h.retime = t;
        }
        vm.history.push(History {
            seq: u32::try_from(vm.history.len()).unwrap_or(u32::MAX),
            hostname: host.name.clone(),
            hid: host.id,
            vm_mad: host.vm_mad.clone(),
            stime: t,
            etime: 0,
            pstime: t,
            petime: t,
            rstime: t,
            retime: 0,
            estime: 0,
            eetime: 0,
            action: history_action::NONE,
            uid: -1,
            gid: -1,
            request_id: -1,
        });
        vm.host = Some(to);
        vm.migrate_to = None;
        vm.deploy_id = format!("{}:{}:{}", host.name, vm.name, host.vm_mad);
    }

    /// Records READY=YES in the USER_TEMPLATE, as OneGate does for REPORT_READY.
    pub fn report_ready(&mut self, id: u32) {
        if let Some(vm) = self.vms.get_mut(&id) {
            if vm.user_template.get("READY").is_none() {
                vm.user_template.set("READY", "YES");
                sort_template(&mut vm.user_template);
            }
        }
    }

    /// Ids of the VMs a pool call by `caller` lists, in oned's order (descending id), or
    /// its error (`PoolSharedAPI::dump`, `PoolSQL::oid_filter|usr_filter`).
    pub fn pool_ids(&self, caller: &Owner, f: PoolFilter) -> Result<Vec<u32>, OneError> {
        if f.filter < -4 {
            return Err(OneError::new(ErrorCode::XmlRpcApi, "Incorrect filter_flag"));
        }
        if !(-2..=11).contains(&f.state) {
            return Err(OneError::new(
                ErrorCode::XmlRpcApi,
                format!("Incorrect state filter {}", f.state),
            ));
        }
        let state_ok = |v: &Vm| match f.state {
            -2 => true,
            -1 => v.state != VmState::Done,
            s => v.state.number() == s,
        };
        // WHERE (oid range) AND (owner filter) AND (state) ORDER BY oid DESC [LIMIT o, n]:
        // the id range applies only with a start id and end >= -1; end < -1 pages through
        // the descending list with offset `start` (negative counts as 0, as in SQLite).
        let (lo, hi) = if f.end >= -1 && f.start != -1 {
            let hi = if f.end == -1 {
                i64::MAX
            } else {
                i64::from(f.end)
            };
            (i64::from(f.start), hi)
        } else {
            (i64::MIN, i64::MAX)
        };
        let ids = self
            .vms
            .values()
            .rev()
            .filter(|v| (lo..=hi).contains(&i64::from(v.id)))
            .filter(|v| listed(caller, f.filter, &v.owner) && state_ok(v))
            .map(|v| v.id);
        Ok(if f.end < -1 {
            let offset = usize::try_from(f.start.max(0)).unwrap_or(0);
            let size = usize::try_from(-i64::from(f.end)).unwrap_or(usize::MAX);
            ids.skip(offset).take(size).collect()
        } else {
            ids.collect()
        })
    }
}

fn schedule(vm: &mut Vm, due_ms: u64, call: Option<DriverCall>) {
    vm.due_ms = due_ms;
    vm.pending_call = call;
    vm.op = DriverOp::Idle;
}

/// Who asked for an action, as HISTORY records it (ACTION, UID, GID, REQUEST_ID).
#[derive(Debug, Clone, Copy)]
struct RequestInfo {
    id: i64,
    uid: u32,
    gid: u32,
}

fn set_history_action(vm: &mut Vm, action: u32, request: RequestInfo) {
    if let Some(h) = vm.history.last_mut() {
        h.action = action;
        h.uid = i32::try_from(request.uid).unwrap_or(-1);
        h.gid = i32::try_from(request.gid).unwrap_or(-1);
        h.request_id = request.id;
    }
}

fn close_history(vm: &mut Vm, now_ms: u64, action: u32, request_id: RequestInfo) {
    set_history_action(vm, action, request_id);
    if let Some(h) = vm.history.last_mut() {
        if h.retime == 0 {
            h.retime = now_secs(now_ms);
        }
    }
}

/// Resume after suspend/poweroff: oned closes the old record and opens a new one.
fn open_history_again(vm: &mut Vm, now_ms: u64) {
    let t = now_secs(now_ms);
    let Some(last) = vm.history.last_mut() else {
        return;
    };
    last.etime = t;
    let next = History {
        seq: last.seq + 1,
        hostname: last.hostname.clone(),
        hid: last.hid,
        vm_mad: last.vm_mad.clone(),
        stime: t,
        etime: 0,
        pstime: 0,
        petime: 0,
        rstime: t,
        retime: 0,
        estime: 0,
        eetime: 0,
        action: history_action::NONE,
        uid: -1,
        gid: -1,
        request_id: -1,
    };
    vm.history.push(next);
}

fn set_error(vm: &mut Vm, why: &str, now_ms: u64) {
    vm.user_template
        .set("ERROR", &format!("{} : {why}", log_time(now_ms)));
    sort_template(&mut vm.user_template);
}

/// oned's `one_util::log_time()` format, e.g. `Thu Nov 26 07:04:42 2026`.
pub fn log_time(now_ms: u64) -> String {
    let secs = now_ms / 1000;
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = WD[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let mo = MO[usize::try_from(m - 1).unwrap_or(0)];
    format!(
        "{wd} {mo} {d:02} {:02}:{:02}:{:02} {y}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// CPU share in host units (100 per core), rounded as oned stores it.
pub fn cpu_units(cpu: f64) -> u64 {
    let v = (cpu * 100.0).round();
    if v.is_finite() && v > 0.0 {
        // Bounded by the check above; CPU values beyond u64 are not meaningful.
        v.min(u64::MAX as f64) as u64
    } else {
        0
    }
}

fn id_u32(id: i64) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}

/// oned keeps template attributes in byte-wise name order (a multimap), vector keys too.
pub fn sort_template(t: &mut Template) {
    t.attrs
        .sort_by(|a, b| a.name().as_bytes().cmp(b.name().as_bytes()));
    for a in &mut t.attrs {
        if let Attribute::Vector { pairs, .. } = a {
            pairs.sort_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
        }
    }
}

/// A MAC in OpenNebula's default prefix 02:00 followed by the IPv4 address.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// A VM's OneGate token: 128 bits from the kernel's CSPRNG, as hex. The guest proves its
/// identity with it, so it must not be guessable (unlike [`uuid_for`]).
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if let Err(e) = read {
        // Without randomness no token can be trusted: one nobody can present.
        log::error!("cannot read /dev/urandom for a OneGate token: {e}");
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stable UUID-shaped id for the VM's OS/UUID (no RNG needed: it only has to be unique).
fn uuid_for(id: u32, now_ms: u64) -> String {
    let mut x = u64::from(id) ^ now_ms.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let a = next();
    let b = next();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Owner {
        Owner::oneadmin()
    }

    fn cloud() -> Cloud {
        let mut c = Cloud::new(
            "dummy",
            2,
            8,
            16384,
            Network {
                name: "onebr0".into(),
                gateway: Ipv4Addr::new(10, 77, 0, 1),
                prefix_len: 24,
                leases: BTreeMap::new(),
            },
        );
        c.timing = Timing {
            boot_ms: 100,
            step_ms: 10,
        };
        c
    }

    fn run_until_stable(c: &mut Cloud, mut now: u64) -> u64 {
        for _ in 0..50 {
            c.schedule_pending(now);
            c.advance(now);
            for vm in c.vms.values_mut() {
                vm.pending_call = None;
            }
            now += 20;
        }
        now
    }

    #[test]
    fn token_yes_gets_a_secret_token_and_the_onegate_endpoint() {
        let mut c = cloud();
        c.onegate_endpoint = Some("http://10.77.0.1:5030".into());
        let tmpl = "MEMORY=64\nCPU=1\nNIC=[NETWORK_ID=0]\nCONTEXT=[NETWORK=YES,TOKEN=YES]\n";
        let a = c.allocate_vm(&admin(), tmpl, false, 0).unwrap();
        let b = c.allocate_vm(&admin(), tmpl, false, 0).unwrap();
        let (ta, tb) = (
            c.vm(a).unwrap().onegate_token.clone().unwrap(),
            c.vm(b).unwrap().onegate_token.clone().unwrap(),
        );
        assert_eq!(ta.len(), 32);
        assert!(ta.chars().all(|ch| ch.is_ascii_hexdigit()), "{ta}");
        assert_ne!(ta, tb);
        let vm = c.vm(a).unwrap();
        assert_eq!(
            vm.template.vector_get("CONTEXT", "ONEGATE_ENDPOINT"),
            Some("http://10.77.0.1:5030")
        );
        assert_eq!(
            vm.template.vector_get("CONTEXT", "VMID"),
            Some(a.to_string().as_str())
        );
        assert_eq!(vm.template.get("CREATED_BY"), Some("0"));
        // Without TOKEN=YES: neither token nor endpoint.
        let plain = c
            .allocate_vm(
                &admin(),
                "MEMORY=64\nCPU=1\nCONTEXT=[NETWORK=YES]\n",
                false,
                0,
            )
            .unwrap();
        let vm = c.vm(plain).unwrap();
        assert!(vm.onegate_token.is_none());
        assert!(vm
            .template
            .vector_get("CONTEXT", "ONEGATE_ENDPOINT")
            .is_none());
        // oned without ONEGATE_ENDPOINT refuses TOKEN=YES.
        c.onegate_endpoint = None;
        let e = c.allocate_vm(&admin(), tmpl, false, 0).unwrap_err();
        assert_eq!(
            e.message,
            "TOKEN set, but onegate endpoint was not defined in oned.conf."
        );
    }

    #[test]
    fn live_migration_and_hotplug_resize_ask_the_driver() {
        let mut c = cloud();
        let id = c
            .allocate_vm(&admin(), "MEMORY=64\nCPU=1\n", false, 0)
            .unwrap();
        let now = run_until_stable(&mut c, 0);
        let host = c.vm(id).unwrap().host.unwrap();
        let to = i64::from(1 - host);
        c.migrate(&admin(), id, to, true, false, now).unwrap();
        let vm = c.vm(id).unwrap();
        assert_eq!(vm.lcm, LcmState::MIGRATE);
        assert_eq!(vm.pending_call, Some(DriverCall::Migrate));
        let now = run_until_stable(&mut c, now);
        assert_eq!(c.vm(id).unwrap().host, Some(1 - host));
        c.resize(&admin(), id, "CPU=\"0.5\"", false, true, now)
            .unwrap();
        let vm = c.vm(id).unwrap();
        assert_eq!(vm.lcm, LcmState::HOTPLUG_RESIZE);
        assert_eq!(vm.pending_call, Some(DriverCall::Resize));
    }

    #[test]
    fn allocated_vm_is_placed_and_reaches_running() {
        let mut c = cloud();
        let id = c
            .allocate_vm(&admin(), "MEMORY=512\nCPU=0.25\nVCPU=2\n", false, 1_000)
            .unwrap();
        assert_eq!(c.vm(id).unwrap().state, VmState::Pending);
        c.schedule_pending(1_000);
        assert_eq!(c.vm(id).unwrap().lcm, LcmState::PROLOG);
        run_until_stable(&mut c, 1_000);
        let vm = c.vm(id).unwrap();
        assert_eq!((vm.state, vm.lcm), (VmState::Active, LcmState::RUNNING));
        let host = c.host(i64::from(vm.host.unwrap())).unwrap();
        assert_eq!(host.cpu_usage, 25);
        assert_eq!(host.mem_usage, 512 * 1024);
    }

    #[test]
    fn vm_too_big_for_every_host_stays_pending_with_a_reason() {
        let mut c = cloud();
        let id = c
            .allocate_vm(&admin(), "MEMORY=999999\nCPU=1\n", false, 0)
            .unwrap();
        run_until_stable(&mut c, 0);
        let vm = c.vm(id).unwrap();
        assert_eq!(vm.state, VmState::Pending);
        assert!(vm
            .user_template
            .get("SCHED_MESSAGE")
            .unwrap()
            .contains("Cannot dispatch"));
    }

    #[test]
    fn terminate_of_running_vm_ends_done_and_frees_the_host() {
        let mut c = cloud();
        let id = c
            .allocate_vm(&admin(), "MEMORY=512\nCPU=1\n", false, 0)
            .unwrap();
        let now = run_until_stable(&mut c, 0);
        c.action(&admin(), "terminate", id, now).unwrap();
        assert_eq!(c.vm(id).unwrap().lcm, LcmState::SHUTDOWN);
        run_until_stable(&mut c, now);
        assert_eq!(c.vm(id).unwrap().state, VmState::Done);
        assert!(c
            .hosts
            .values()
            .all(|h| h.cpu_usage == 0 && h.vms.is_empty()));
    }

    #[test]
    fn terminate_during_boot_is_refused_with_onedss_message() {
        let mut c = cloud();
        let id = c
            .allocate_vm(&admin(), "MEMORY=512\nCPU=1\n", false, 0)
            .unwrap();
        c.schedule_pending(0);
        c.advance(100);
        let err = c.action(&admin(), "terminate", id, 100).unwrap_err();
        assert_eq!(err.code, ErrorCode::Action);
        assert_eq!(
            err.message,
            format!("Error performing action \"terminate\": Could not terminate VM {id}, wrong state BOOT.")
        );
    }

    #[test]
    fn recover_delete_ends_a_vm_stuck_in_boot() {
        let mut c = cloud();
        let id = c
            .allocate_vm(&admin(), "MEMORY=512\nCPU=1\n", false, 0)
            .unwrap();
        c.schedule_pending(0);
        c.advance(100);
        assert_eq!(c.vm(id).unwrap().lcm, LcmState::BOOT);
        c.recover(&admin(), id, 3, 100).unwrap();
        assert_eq!(c.vm(id).unwrap().lcm, LcmState::CLEANUP_DELETE);
        run_until_stable(&mut c, 100);
        assert_eq!(c.vm(id).unwrap().state, VmState::Done);
        assert!(c.hosts.values().all(|h| h.vms.is_empty()));
        // DispatchManager::delete_vm accepts a DONE VM and does nothing.
        assert_eq!(c.recover(&admin(), id, 3, 2000), Ok(i64::from(id_u32(id))));
        let bad = c.recover(&admin(), id, 9, 2000).unwrap_err();
        assert_eq!(
            (bad.code, bad.message.as_str()),
            (ErrorCode::Action, "Wrong recovery operation code")
        );
        let err = c.recover(&admin(), id, 2, 2000).unwrap_err();
        assert_eq!(
            err.message,
            format!("Could not perform a retry on VM {id}, wrong state DONE.")
        );
        let err = c.recover(&admin(), id, 0, 2000).unwrap_err();
        assert_eq!(
            err.message,
            format!("Could not perform a recover operation on VM {id}, wrong state DONE.")
        );
    }

    #[test]
    fn recover_retry_boots_a_failed_vm_again() {
        let mut c = cloud();
        let id = c
            .allocate_vm(&admin(), "MEMORY=512\nCPU=1\n", false, 0)
            .unwrap();
        let now = run_until_stable(&mut c, 0);
        c.force_failure(id, LcmState::BOOT_FAILURE, "boom", now)
            .unwrap();
        assert!(c.vm(id).unwrap().user_template.get("ERROR").is_some());
        c.recover(&admin(), id, 2, now).unwrap();
        run_until_stable(&mut c, now);
        let vm = c.vm(id).unwrap();
        assert_eq!((vm.state, vm.lcm), (VmState::Active, LcmState::RUNNING));
        assert!(vm.user_template.get("ERROR").is_none());
    }

    #[test]
    fn missing_memory_is_an_internal_error() {
        let mut c = cloud();
        let err = c.allocate_vm(&admin(), "CPU=1", false, 0).unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(
            err.message,
            "MEMORY attribute must be a positive integer value."
        );
    }

    #[test]
    fn pool_filter_hides_done_unless_asked() {
        let mut c = cloud();
        let a = c
            .allocate_vm(&admin(), "MEMORY=1\nCPU=1\n", false, 0)
            .unwrap();
        let b = c
            .allocate_vm(&admin(), "MEMORY=1\nCPU=1\n", false, 0)
            .unwrap();
        c.action(&admin(), "terminate", a, 0).unwrap();
        let f = |state| PoolFilter {
            filter: -2,
            start: -1,
            end: -1,
            state,
        };
        assert_eq!(c.pool_ids(&admin(), f(-1)).unwrap(), vec![id_u32(b)]);
        assert_eq!(
            c.pool_ids(&admin(), f(-2)).unwrap(),
            vec![id_u32(b), id_u32(a)]
        );
        assert_eq!(c.pool_ids(&admin(), f(6)).unwrap(), vec![id_u32(a)]);
        assert!(c.pool_ids(&admin(), f(12)).is_err());
    }

    fn alice() -> Owner {
        Owner {
            uid: 1,
            gid: 1,
            uname: "alice".into(),
            gname: "users".into(),
        }
    }

    fn pool(c: &Cloud, who: &Owner, filter: i32, start: i32, end: i32) -> Vec<u32> {
        c.pool_ids(
            who,
            PoolFilter {
                filter,
                start,
                end,
                state: -2,
            },
        )
        .unwrap()
    }

    #[test]
    fn capacity_is_normalised_like_oned_at_allocate_and_resize() {
        let mut c = cloud();
        let id = c
            .allocate_vm(
                &admin(),
                "CPU=\"0.50\"\nMEMORY=\"0384\"\nVCPU=\"02\"\n",
                true,
                0,
            )
            .unwrap();
        let t = &c.vm(id).unwrap().template;
        assert_eq!(
            (t.get("CPU"), t.get("MEMORY"), t.get("VCPU")),
            (Some("0.5"), Some("384"), Some("2"))
        );
        c.resize(
            &admin(),
            id,
            "CPU=\"1.250\"\nMEMORY=\"0256\"",
            false,
            false,
            0,
        )
        .unwrap();
        let t = &c.vm(id).unwrap().template;
        assert_eq!(
            (t.get("CPU"), t.get("MEMORY"), t.get("VCPU")),
            (Some("1.25"), Some("256"), Some("2"))
        );
        // trailing junk or blanks are not numbers for istringstream
        for bad in ["MEMORY=\"12x\"\nCPU=1", "MEMORY=\"1.5\"\nCPU=1"] {
            let e = c.allocate_vm(&admin(), bad, true, 0).unwrap_err();
            assert_eq!(
                e.message,
                "MEMORY attribute must be a positive integer value."
            );
        }
        let e = c
            .allocate_vm(&admin(), "MEMORY=1\nCPU=\"inf\"", true, 0)
            .unwrap_err();
        assert_eq!(
            e.message,
            "CPU attribute must be a positive float or integer value."
        );
    }

    #[test]
    fn floats_print_like_ostream() {
        for (v, s) in [
            (0.5, "0.5"),
            (2.0, "2"),
            (1.0 / 3.0, "0.333333"),
            (0.1, "0.1"),
            (1e6, "1e+06"),
            (1_234_567.0, "1.23457e+06"),
            (123_456.0, "123456"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
        ] {
            assert_eq!(cxx_float_str(v), s, "{v}");
        }
    }

    #[test]
    fn names_are_checked_with_oneds_messages() {
        let mut c = cloud();
        let e = c
            .allocate_vm(&admin(), "NAME=\"a/b\"\nMEMORY=1\nCPU=1", false, 0)
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Internal, "Invalid NAME, char '/' is not allowed")
        );
        let long = "x".repeat(129);
        let e = c
            .allocate_vm(&admin(), &format!("NAME={long}\nMEMORY=1\nCPU=1"), false, 0)
            .unwrap_err();
        assert_eq!(e.message, "Invalid NAME, max length is 128 chars");
        // the name is checked before the capacity
        let e = c
            .allocate_vm(&admin(), "NAME=\"a;b\"", false, 0)
            .unwrap_err();
        assert_eq!(e.message, "Invalid NAME, char ';' is not allowed");
        // an empty VM name falls back to one-<id>
        let id = c
            .allocate_vm(&admin(), "NAME=\"\"\nMEMORY=1\nCPU=1", true, 0)
            .unwrap();
        assert_eq!(c.vm(id).unwrap().name, format!("one-{id}"));
        let e = c
            .allocate_template(&admin(), "CPU=1\nMEMORY=1", 0)
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Internal, "Invalid NAME, it cannot be empty")
        );
        let e = c
            .allocate_host(&admin(), "-bad", "dummy", "dummy", -1)
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::Allocate,
                "Error allocating a new host. Invalid HOSTNAME, first character can't be '-'"
            )
        );
    }

    #[test]
    fn pool_ranges_and_pages_follow_oned() {
        let mut c = cloud();
        for _ in 0..6 {
            c.allocate_vm(&admin(), "MEMORY=1\nCPU=1", true, 0).unwrap();
        }
        let a = admin();
        assert_eq!(
            pool(&c, &a, -2, -1, 2),
            vec![5, 4, 3, 2, 1, 0],
            "no start: no range"
        );
        assert_eq!(pool(&c, &a, -2, 1, 3), vec![3, 2, 1]);
        assert_eq!(pool(&c, &a, -2, 4, -1), vec![5, 4]);
        assert_eq!(pool(&c, &a, -2, 0, -2), vec![5, 4], "LIMIT 0,2 over DESC");
        assert_eq!(pool(&c, &a, -2, 2, -2), vec![3, 2]);
        assert_eq!(pool(&c, &a, -2, 4, -10), vec![1, 0]);
        assert_eq!(pool(&c, &a, -2, -1, -3), vec![5, 4, 3]);
    }

    #[test]
    fn vms_belong_to_their_caller_and_others_are_not_authorized() {
        let mut c = cloud();
        c.register_users(["oneadmin", "alice", "bob"]);
        assert_eq!(c.user("alice"), Some(alice()));
        assert_eq!(c.user("bob").map(|o| o.uid), Some(2));
        assert_eq!(c.user("oneadmin"), Some(admin()));
        let mine = c.allocate_vm(&admin(), "MEMORY=1\nCPU=1", true, 0).unwrap();
        let hers = c.allocate_vm(&alice(), "MEMORY=1\nCPU=1", true, 0).unwrap();
        assert_eq!(c.vm(hers).unwrap().owner, alice());
        let (m, h) = (id_u32(mine), id_u32(hers));

        assert_eq!(pool(&c, &admin(), -2, -1, -1), vec![h, m]);
        assert_eq!(pool(&c, &admin(), -3, -1, -1), vec![m]);
        assert_eq!(
            pool(&c, &admin(), -4, -1, -1),
            vec![m],
            "group oneadmin only"
        );
        assert_eq!(pool(&c, &admin(), -1, -1, -1), vec![m]);
        assert_eq!(pool(&c, &admin(), 1, -1, -1), vec![h]);
        for f in [-4, -3, -2, -1, 1] {
            assert_eq!(pool(&c, &alice(), f, -1, -1), vec![h], "filter {f}");
        }
        assert!(pool(&c, &alice(), 0, -1, -1).is_empty());

        let e = c.vm_info(&alice(), mine).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str(), e.resp_id),
            (
                ErrorCode::Authorization,
                format!("User [1] : Not authorized to perform USE VM [{mine}].").as_str(),
                -1
            )
        );
        let e = c.action(&alice(), "terminate", mine, 0).unwrap_err();
        assert_eq!(
            e.message,
            format!("User [1] : Not authorized to perform MANAGE VM [{mine}].")
        );
        let e = c.deploy(&alice(), hers, 0, false, 0).unwrap_err();
        assert_eq!(
            e.message,
            format!(
                "User [1] : Not authorized to perform ADMIN VM [{hers}]; \
                 Not authorized to perform MANAGE HOST [0]."
            )
        );
        assert!(c.vm_info(&alice(), hers).is_ok());
        assert!(c.vm_info(&admin(), hers).is_ok());
        assert_eq!(c.action(&alice(), "release", hers, 0), Ok(hers));
        // a missing VM is NO_EXISTS before anything else
        let e = c.action(&alice(), "frobnicate", 99, 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoExists);
    }

    #[test]
    fn resume_after_stop_or_undeploy_goes_through_its_own_prolog() {
        for (action, prolog, boot) in [
            ("stop", LcmState::PROLOG_RESUME, LcmState::BOOT_STOPPED),
            (
                "undeploy",
                LcmState::PROLOG_UNDEPLOY,
                LcmState::BOOT_UNDEPLOY,
            ),
        ] {
            let mut c = cloud();
            let id = c
                .allocate_vm(&admin(), "MEMORY=512\nCPU=1\n", false, 0)
                .unwrap();
            let now = run_until_stable(&mut c, 0);
            c.action(&admin(), action, id, now).unwrap();
            let now = run_until_stable(&mut c, now);
            c.action(&admin(), "resume", id, now).unwrap();
            let vm = c.vm(id).unwrap();
            assert_eq!(vm.state, VmState::Pending);
            assert_eq!(vm.prev_state, VmState::Pending, "PREV_STATE settles");
            c.schedule_pending(now);
            assert_eq!(c.vm(id).unwrap().lcm, prolog, "{action}");
            c.advance(now + 20);
            assert_eq!(c.vm(id).unwrap().lcm, boot, "{action}");
            run_until_stable(&mut c, now + 40);
            assert_eq!(c.vm(id).unwrap().lcm, LcmState::RUNNING);
        }
    }

    #[test]
    fn submit_on_hold_stays_in_the_template() {
        let mut c = cloud();
        let id = c.allocate_vm(&admin(), "MEMORY=1\nCPU=1", true, 0).unwrap();
        c.action(&admin(), "release", id, 0).unwrap();
        run_until_stable(&mut c, 0);
        let vm = c.vm(id).unwrap();
        assert_eq!(vm.lcm, LcmState::RUNNING);
        assert_eq!(vm.template.get("SUBMIT_ON_HOLD"), Some("YES"));
    }

    #[test]
    fn migrate_and_resize_refusals_use_oneds_messages() {
        let mut c = cloud();
        let held = c.allocate_vm(&admin(), "MEMORY=1\nCPU=1", true, 0).unwrap();
        let e = c.migrate(&admin(), held, 1, false, false, 0).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::Action,
                "Migrate action is not available for state HOLD"
            )
        );
        let e = c
            .resize(&admin(), held, "MEMORY=\"-1\"", false, false, 0)
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ErrorCode::Internal,
                "MEMORY must be a positive integer value."
            )
        );
        let id = c
            .allocate_vm(&admin(), "MEMORY=1\nCPU=1", false, 0)
            .unwrap();
        let now = run_until_stable(&mut c, 0);
        c.action(&admin(), "suspend", id, now).unwrap();
        let now = run_until_stable(&mut c, now);
        let e = c
            .resize(&admin(), id, "CPU=\"1\"", false, false, now)
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Action, "Cannot resize a VM in state SUSPENDED")
        );
    }

    #[test]
    fn log_time_matches_ctime_layout() {
        assert_eq!(log_time(0), "Thu Jan 01 00:00:00 1970");
        assert_eq!(log_time(1_795_676_531_000), "Thu Nov 26 07:02:11 2026");
    }
}
