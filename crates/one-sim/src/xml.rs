//! The XML documents oned returns (VM, VM_POOL, HOST, HOST_POOL, VMTEMPLATE), with oned's
//! element names, order and nesting and its deviations from the XSDs: no namespace, CDATA
//! around every TEMPLATE/USER_TEMPLATE value, TM_MAD_SYSTEM only once deployed.

use std::fmt::Write;

use super::model::{Cloud, History, Host, Owner, Vm, VmTemplate};
use one_proto::states::HostState;
use one_proto::template::{Attribute, Template};

/// Escapes text for an element body.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

fn el(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "<{name}>{value}</{name}>");
}

fn el_text(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>{}</{name}>", esc(value));
}

fn el_cdata(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}><![CDATA[{value}]]></{name}>");
}

/// Template attributes as oned's `Template::to_xml` writes them (values in CDATA).
fn template_body(out: &mut String, t: &Template) {
    for attr in &t.attrs {
        match attr {
            Attribute::Single { name, value } => el_cdata(out, name, value),
            Attribute::Vector { name, pairs } => {
                if pairs.is_empty() {
                    let _ = write!(out, "<{name}/>");
                    continue;
                }
                let _ = write!(out, "<{name}>");
                for (k, v) in pairs {
                    el_cdata(out, k, v);
                }
                let _ = write!(out, "</{name}>");
            }
        }
    }
}

fn permissions(out: &mut String) {
    out.push_str(
        "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>\
         <GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A>\
         <OTHER_U>0</OTHER_U><OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>",
    );
}

fn owner(out: &mut String, o: &Owner) {
    el(out, "UID", o.uid);
    el(out, "GID", o.gid);
    el_text(out, "UNAME", &o.uname);
    el_text(out, "GNAME", &o.gname);
}

fn history_full(out: &mut String, vm_id: u32, h: &History) {
    out.push_str("<HISTORY>");
    el(out, "OID", vm_id);
    el(out, "SEQ", h.seq);
    el_text(out, "HOSTNAME", &h.hostname);
    el(out, "HID", h.hid);
    el(out, "CID", 0);
    el(out, "STIME", h.stime);
    el(out, "ETIME", h.etime);
    el_cdata(out, "VM_MAD", &h.vm_mad);
    el_cdata(out, "TM_MAD", &h.vm_mad);
    el(out, "DS_ID", 0);
    el(out, "PLAN_ID", -1);
    el(out, "ACTION_ID", 0);
    el(out, "PSTIME", h.pstime);
    el(out, "PETIME", h.petime);
    el(out, "RSTIME", h.rstime);
    el(out, "RETIME", h.retime);
    el(out, "ESTIME", h.estime);
    el(out, "EETIME", h.eetime);
    el(out, "ACTION", h.action);
    el(out, "UID", h.uid);
    el(out, "GID", h.gid);
    el(out, "REQUEST_ID", h.request_id);
    out.push_str("</HISTORY>");
}

/// A VM as one.vm.info (all history records) or one.vmpool.infoextended (the last one)
/// returns it.
pub fn vm_full(out: &mut String, vm: &Vm, all_history: bool) {
    out.push_str("<VM>");
    el(out, "ID", vm.id);
    owner(out, &vm.owner);
    el_text(out, "NAME", &vm.name);
    permissions(out);
    el(out, "LAST_POLL", 0);
    el(out, "STATE", vm.state.number());
    el(out, "LCM_STATE", vm.lcm.0);
    el(out, "PREV_STATE", vm.prev_state.number());
    el(out, "PREV_LCM_STATE", vm.prev_lcm.0);
    el(out, "RESCHED", u8::from(vm.resched));
    el(out, "STIME", vm.stime);
    el(out, "ETIME", vm.etime);
    el_text(out, "DEPLOY_ID", &vm.deploy_id);
    out.push_str("<MONITORING></MONITORING><SCHED_ACTIONS></SCHED_ACTIONS><TEMPLATE>");
    template_body(out, &vm.template);
    out.push_str("</TEMPLATE><USER_TEMPLATE>");
    template_body(out, &vm.user_template);
    out.push_str("</USER_TEMPLATE>");
    if vm.history.is_empty() {
        out.push_str("<HISTORY_RECORDS/>");
    } else {
        out.push_str("<HISTORY_RECORDS>");
        let skip = if all_history { 0 } else { vm.history.len() - 1 };
        for h in vm.history.iter().skip(skip) {
            history_full(out, vm.id, h);
        }
        out.push_str("</HISTORY_RECORDS>");
    }
    out.push_str("<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS></BACKUP_IDS></BACKUPS></VM>");
}

/// USER_TEMPLATE attributes the short form keeps (`to_xml_short`).
const SHORT_USER_ATTRS: &[&str] = &[
    "ERROR",
    "LABELS",
    "SCHED_ACTION",
    "SCHED_DS_RANK",
    "SCHED_DS_REQUIREMENTS",
    "SCHED_MESSAGE",
    "SCHED_RANK",
    "SCHED_REQUIREMENTS",
    "USER_PRIORITY",
];

/// NIC keys the short form keeps.
const SHORT_NIC_KEYS: &[&str] = &[
    "EXTERNAL_IP",
    "IP",
    "IP6",
    "IP6_GLOBAL",
    "IP6_LINK",
    "IP6_ULA",
    "MAC",
    "NETWORK",
    "NETWORK_ID",
    "NIC_ID",
    "SECURITY_GROUPS",
];

/// A VM as one.vmpool.info returns it: CPU/MEMORY/VCPU as raw text, no custom keys.
pub fn vm_short(out: &mut String, vm: &Vm) {
    out.push_str("<VM>");
    el(out, "ID", vm.id);
    owner(out, &vm.owner);
    el_text(out, "NAME", &vm.name);
    el(out, "LAST_POLL", 0);
    el(out, "STATE", vm.state.number());
    el(out, "LCM_STATE", vm.lcm.0);
    el(out, "RESCHED", u8::from(vm.resched));
    el(out, "STIME", vm.stime);
    el(out, "ETIME", vm.etime);
    el_text(out, "DEPLOY_ID", &vm.deploy_id);
    out.push_str("<TEMPLATE>");
    for key in ["CPU", "MEMORY", "VCPU"] {
        if let Some(v) = vm.template.get(key) {
            el_text(out, key, v);
        }
    }
    for attr in &vm.template.attrs {
        if let Attribute::Vector { name, pairs } = attr {
            if name == "NIC" {
                out.push_str("<NIC>");
                for (k, v) in pairs
                    .iter()
                    .filter(|(k, _)| SHORT_NIC_KEYS.contains(&k.as_str()))
                {
                    el_cdata(out, k, v);
                }
                out.push_str("</NIC>");
            }
        }
    }
    out.push_str("</TEMPLATE><MONITORING/>");
    if vm.user_template.attrs.is_empty() {
        out.push_str("<USER_TEMPLATE/>");
    } else {
        out.push_str("<USER_TEMPLATE>");
        let kept = Template {
            attrs: vm
                .user_template
                .attrs
                .iter()
                .filter(|a| SHORT_USER_ATTRS.contains(&a.name()))
                .cloned()
                .collect(),
        };
        template_body(out, &kept);
        out.push_str("</USER_TEMPLATE>");
    }
    match vm.history.last() {
        None => out.push_str("<HISTORY_RECORDS/>"),
        Some(h) => {
            out.push_str("<HISTORY_RECORDS><HISTORY>");
            el(out, "OID", vm.id);
            el(out, "SEQ", h.seq);
            el_cdata(out, "HOSTNAME", &h.hostname);
            el(out, "HID", h.hid);
            el(out, "CID", 0);
            el(out, "DS_ID", 0);
            el_cdata(out, "VM_MAD", &h.vm_mad);
            el_cdata(out, "TM_MAD", &h.vm_mad);
            el_cdata(out, "ACTION", &h.action.to_string());
            out.push_str("</HISTORY></HISTORY_RECORDS>");
        }
    }
    out.push_str("</VM>");
}

/// `<VM_POOL>` of the given VMs, short or extended.
pub fn vm_pool(cloud: &Cloud, ids: &[u32], extended: bool) -> String {
    let mut out = String::with_capacity(64 + ids.len() * if extended { 3000 } else { 900 });
    out.push_str("<VM_POOL>");
    for vm in ids.iter().filter_map(|id| cloud.vms.get(id)) {
        if extended {
            vm_full(&mut out, vm, false);
        } else {
            vm_short(&mut out, vm);
        }
    }
    out.push_str("</VM_POOL>");
    out
}

/// One VM for one.vm.info.
pub fn vm_info(vm: &Vm) -> String {
    let mut out = String::with_capacity(3000);
    vm_full(&mut out, vm, true);
    out
}

/// A VMTEMPLATE for one.template.info.
pub fn vm_template(t: &VmTemplate) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("<VMTEMPLATE>");
    el(&mut out, "ID", t.id);
    owner(&mut out, &t.owner);
    el_text(&mut out, "NAME", &t.name);
    permissions(&mut out);
    el(&mut out, "REGTIME", t.regtime);
    out.push_str("<TEMPLATE>");
    template_body(&mut out, &t.template);
    out.push_str("</TEMPLATE></VMTEMPLATE>");
    out
}

/// The PCI devices oned's dummy monitoring probe reports for every host.
struct Pci {
    addr: (u8, u8, u8),
    class: &'static str,
    class_name: &'static str,
    device: &'static str,
    device_name: &'static str,
    ifname: String,
    numa: u8,
    sriov: &'static str,
    vendor: &'static str,
    vendor_name: &'static str,
}

fn dummy_pci_devices() -> Vec<Pci> {
    let mut v = vec![
        Pci {
            addr: (0x02, 0, 0),
            class: "0302",
            class_name: "3D controller",
            device: "0863",
            device_name: "C79 [GeForce 9400M]",
            ifname: "-".into(),
            numa: 1,
            sriov: "no",
            vendor: "10de",
            vendor_name: "NVIDIA Corporation",
        },
        Pci {
            addr: (0x00, 6, 0),
            class: "0c03",
            class_name: "USB controller",
            device: "0aa7",
            device_name: "MCP79 OHCI USB 1.1 Controller",
            ifname: "-".into(),
            numa: 1,
            sriov: "no",
            vendor: "1b21",
            vendor_name: "ASMedia Technology Inc.",
        },
        Pci {
            addr: (0x00, 6, 1),
            class: "0c03",
            class_name: "USB controller",
            device: "0aa9",
            device_name: "MCP79 EHCI USB 2.0 Controller",
            ifname: "-".into(),
            numa: 0,
            sriov: "no",
            vendor: "1022",
            vendor_name: "Advanced Micro Devices, Inc.",
        },
        Pci {
            addr: (0x04, 0, 1),
            class: "0200",
            class_name: "Ethernet controller",
            device: "165f",
            device_name: "NetXtreme BCM5720 Gigabit Ethernet PCIe",
            ifname: "eno8403".into(),
            numa: 0,
            sriov: "no",
            vendor: "14e4",
            vendor_name: "Broadcom Inc. and subsidiaries",
        },
    ];
    for f in 0..2u8 {
        v.push(Pci {
            addr: (0x81, 0, f),
            class: "0200",
            class_name: "Ethernet controller",
            device: "1015",
            device_name: "MT27710 Family [ConnectX-4 Lx]",
            ifname: format!("pf{f}"),
            numa: 0,
            sriov: "pf",
            vendor: "15b3",
            vendor_name: "Mellanox Technologies",
        });
    }
    let vfs = (2..8u8)
        .map(|f| (0u8, f))
        .chain((0..8).map(|f| (1, f)))
        .chain((0..2).map(|f| (2, f)));
    for (slot, f) in vfs {
        v.push(Pci {
            addr: (0x81, slot, f),
            class: "0200",
            class_name: "Ethernet controller",
            device: "1016",
            device_name: "MT27710 Family [ConnectX-4 Lx Virtual Function]",
            ifname: format!("vf0{slot}{f}"),
            numa: 0,
            sriov: "vf",
            vendor: "15b3",
            vendor_name: "Mellanox Technologies",
        });
    }
    v
}

fn pci_xml(out: &mut String) {
    const PROFILES: [&str; 22] = [
        "1B", "2B", "1Q", "2Q", "3Q", "4Q", "6Q", "8Q", "12Q", "16Q", "24Q", "48Q", "1A", "2A",
        "3A", "4A", "6A", "8A", "12A", "16A", "24A", "48A",
    ];
    out.push_str("<PCI_DEVICES>");
    for p in dummy_pci_devices() {
        let (bus, slot, func) = p.addr;
        out.push_str("<PCI>");
        el_cdata(out, "ADDRESS", &format!("0000:{bus:02x}:{slot:02x}:{func}"));
        el_cdata(out, "BUS", &format!("{bus:02x}"));
        el_cdata(out, "CLASS", p.class);
        el_cdata(out, "CLASS_NAME", p.class_name);
        el_cdata(out, "DEVICE", p.device);
        el_cdata(out, "DEVICE_NAME", p.device_name);
        el_cdata(out, "DOMAIN", "0000");
        el_cdata(out, "FUNCTION", &func.to_string());
        el_cdata(out, "IFNAME", &p.ifname);
        el_cdata(out, "NUMA_NODE", &p.numa.to_string());
        if p.class == "0302" {
            let profiles: Vec<String> = PROFILES
                .iter()
                .zip(1145..)
                .map(|(p, n)| format!("{n} (NVIDIA L40S-{p})"))
                .collect();
            el_cdata(out, "PROFILES", &profiles.join(","));
        }
        el_cdata(
            out,
            "SHORT_ADDRESS",
            &format!("{bus:02x}:{slot:02x}.{func}"),
        );
        el_cdata(out, "SLOT", &format!("{slot:02x}"));
        el_cdata(out, "SRIOV", p.sriov);
        if p.sriov == "pf" {
            el_cdata(out, "SRIOV_NUM", "8");
        }
        el_cdata(
            out,
            "TYPE",
            &format!("{}:{}:{}", p.vendor, p.device, p.class),
        );
        el_cdata(out, "VENDOR", p.vendor);
        el_cdata(out, "VENDOR_NAME", p.vendor_name);
        el_cdata(out, "VMID", "-1");
        out.push_str("</PCI>");
    }
    out.push_str("</PCI_DEVICES>");
}

/// NUMA layout as oned's dummy probe reports it (`topology(2, 8, [2048, 1048576], 4, mem)`
/// in `im_mad/remotes/dummy.d/monitord-client.rb`): 2 nodes of 8 cores with 4 threads each,
/// CPU ids `core + k*16`, two huge page sizes, and half the host's memory per node.
fn numa_xml(out: &mut String, h: &Host) {
    const NODES: u64 = 2;
    const CORES: u64 = 8;
    const THREADS: u64 = 4;
    out.push_str("<NUMA_NODES>");
    for node in 0..NODES {
        out.push_str("<NODE>");
        for core in node * CORES..(node + 1) * CORES {
            let cpus: Vec<String> = (0..THREADS)
                .map(|k| format!("{}:-1", core + k * CORES * NODES))
                .collect();
            out.push_str("<CORE>");
            el_cdata(out, "CPUS", &cpus.join(","));
            el_cdata(out, "DEDICATED", "NO");
            el_cdata(out, "FREE", &THREADS.to_string());
            el_cdata(out, "ID", &core.to_string());
            out.push_str("</CORE>");
        }
        for size in ["2048", "1048576"] {
            out.push_str("<HUGEPAGE>");
            el_cdata(out, "PAGES", "1024");
            el_cdata(out, "SIZE", size);
            el_cdata(out, "USAGE", "0");
            out.push_str("</HUGEPAGE>");
        }
        out.push_str("<MEMORY>");
        el_cdata(out, "DISTANCE", if node == 0 { "0 1" } else { "1 0" });
        el_cdata(out, "TOTAL", &(h.total_mem / NODES).to_string());
        el_cdata(out, "USAGE", "0");
        out.push_str("</MEMORY>");
        el_cdata(out, "NODE_ID", &node.to_string());
        out.push_str("</NODE>");
    }
    out.push_str("</NUMA_NODES>");
}

/// The dummy probe's fixed CPU model list and flags (`monitord-client.rb`, `system`).
const KVM_CPU_MODELS: &str = "486 pentium pentium2 pentium3 pentiumpro coreduo n270 core2duo \
    qemu32 kvm32 cpu64-rhel5 cpu64-rhel6 kvm64 Conroe Penryn Nehalem Nehalem-IBRS Westmere \
    Westmere-IBRS SandyBridge SandyBridge-IBRS IvyBridge IvyBridge-IBRS SapphireRapids \
    SapphireRapids-noTSX Opteron_G1";
const KVM_CPU_FEATURES: &str = "vme,ds,acpi,ss,ht,tm,pbe,dtes64,monitor,ds_cpl,vmx,smx,est,\
    tm2,xtpr,pdcm,osxsave,f16c,rdrand,arat,tsc_adjust,clflushopt,clwb,intel-pt,sha-ni,umip,\
    pku,ospke,waitpkg,gfni,vaes,vpclmulqdq,rdpid,movdiri,movdir64b,pks,fsrm,md-clear,\
    serialize,arch-lbr,stibp,arch-capabilities,core-capability,ssbd,avx-vnni,xsaveopt,xsavec,\
    xgetbv1,xsaves,pdpe1gb,abm,invtsc,rdctl-no,ibrs-all,skip-l1dfl-vmentry,mds-no,\
    pschange-mc-no";

/// The host's last monitoring record, as one.host.info shows it (one.hostpool.info sends
/// `<MONITORING/>`): the dummy probe's layout, with values from the host's usage.
fn monitoring_xml(out: &mut String, h: &Host, now_ms: u64) {
    let used_cpu = h.cpu_usage.min(h.total_cpu);
    let used_mem = h.mem_usage.min(h.total_mem);
    out.push_str("<MONITORING>");
    el(out, "TIMESTAMP", now_ms / 1000);
    el(out, "ID", h.id);
    out.push_str("<CAPACITY>");
    el_cdata(out, "FREE_CPU", &(h.total_cpu - used_cpu).to_string());
    el_cdata(out, "FREE_MEMORY", &(h.total_mem - used_mem).to_string());
    el_cdata(out, "USED_CPU", &used_cpu.to_string());
    el_cdata(out, "USED_MEMORY", &used_mem.to_string());
    out.push_str("</CAPACITY><SYSTEM>");
    el_cdata(out, "NETRX", "50104108822222");
    el_cdata(out, "NETTX", "1241307203246698");
    out.push_str("</SYSTEM>");
    let node_mem = h.total_mem / 2;
    let node_used = (used_mem / 2).min(node_mem);
    for node in 0..2 {
        out.push_str("<NUMA_NODE>");
        for size in ["2048", "1048576"] {
            out.push_str("<HUGEPAGE>");
            el_cdata(out, "FREE", "1024");
            el_cdata(out, "SIZE", size);
            out.push_str("</HUGEPAGE>");
        }
        out.push_str("<MEMORY>");
        el_cdata(out, "FREE", &(node_mem - node_used).to_string());
        el_cdata(out, "USED", &node_used.to_string());
        out.push_str("</MEMORY>");
        el_cdata(out, "NODE_ID", &node.to_string());
        out.push_str("</NUMA_NODE>");
    }
    out.push_str("</MONITORING>");
}

/// A HOST; `monitoring` is the time of the MONITORING record to include (host.info).
fn host_xml(out: &mut String, h: &Host, monitoring: Option<u64>) {
    let monitored = h.state != HostState::Init;
    out.push_str("<HOST>");
    el(out, "ID", h.id);
    el_text(out, "NAME", &h.name);
    el(out, "STATE", h.state as i32);
    el(out, "PREV_STATE", h.prev_state as i32);
    el_cdata(out, "IM_MAD", &h.im_mad);
    el_cdata(out, "VM_MAD", &h.vm_mad);
    el(out, "CLUSTER_ID", h.cluster_id);
    el(out, "CLUSTER", "default");
    out.push_str("<HOST_SHARE>");
    el(out, "MEM_USAGE", h.mem_usage);
    el(out, "CPU_USAGE", h.cpu_usage);
    let (total_mem, total_cpu) = if monitored {
        (h.total_mem, h.total_cpu)
    } else {
        (0, 0)
    };
    el(out, "TOTAL_MEM", total_mem);
    el(out, "TOTAL_CPU", total_cpu);
    el(out, "MAX_MEM", total_mem);
    el(out, "MAX_CPU", total_cpu);
    el(out, "RUNNING_VMS", h.vms.len());
    el(out, "VMS_THREAD", 1);
    out.push_str("<DATASTORES>");
    el_cdata(out, "DISK_USAGE", "0");
    el_cdata(out, "FREE_DISK", "20480");
    el_cdata(out, "MAX_DISK", "20480");
    el_cdata(out, "USED_DISK", if monitored { "9720" } else { "0" });
    out.push_str("</DATASTORES>");
    if monitored {
        pci_xml(out);
        numa_xml(out, h);
    } else {
        out.push_str("<PCI_DEVICES></PCI_DEVICES><NUMA_NODES></NUMA_NODES>");
    }
    out.push_str("</HOST_SHARE>");
    if h.vms.is_empty() {
        out.push_str("<VMS></VMS>");
    } else {
        out.push_str("<VMS>");
        for id in &h.vms {
            el(out, "ID", id);
        }
        out.push_str("</VMS>");
    }
    out.push_str("<TEMPLATE>");
    if monitored {
        el_cdata(out, "ARCH", "x86_64");
        el_cdata(out, "CPUSPEED", "3200");
        el_cdata(out, "HOSTNAME", &h.name);
        el_cdata(out, "HYPERVISOR", &h.vm_mad);
        el_cdata(out, "IM_MAD", &h.im_mad);
        el_cdata(out, "KVM_CPU_FEATURES", KVM_CPU_FEATURES);
        el_cdata(out, "KVM_CPU_MODELS", KVM_CPU_MODELS);
        el_cdata(out, "MEMORY_ENCRYPTION", "SEV");
        el_cdata(out, "MODELNAME", "Dummy(R) Core @ 3.2GHz");
        el_cdata(out, "RESERVED_CPU", "");
        el_cdata(out, "RESERVED_MEM", "");
        el_cdata(out, "TOTALCPU", &h.total_cpu.to_string());
        el_cdata(out, "TOTALMEMORY", &h.total_mem.to_string());
        el_cdata(out, "VM_MAD", &h.vm_mad);
    } else {
        el_cdata(out, "IM_MAD", &h.im_mad);
        el_cdata(out, "VM_MAD", &h.vm_mad);
    }
    out.push_str("</TEMPLATE>");
    match monitoring {
        Some(now_ms) if monitored => monitoring_xml(out, h, now_ms),
        _ => out.push_str("<MONITORING/>"),
    }
    out.push_str("</HOST>");
}

/// One HOST for one.host.info, with its monitoring record as of `now_ms`.
pub fn host_info(h: &Host, now_ms: u64) -> String {
    let mut out = String::with_capacity(14_000);
    host_xml(&mut out, h, Some(now_ms));
    out
}

/// `<HOST_POOL>` of the given hosts, in that order (oned's: descending id).
pub fn host_pool(cloud: &Cloud, ids: &[u32]) -> String {
    let mut out = String::with_capacity(12_000 * ids.len() + 32);
    out.push_str("<HOST_POOL>");
    for h in ids.iter().filter_map(|id| cloud.hosts.get(id)) {
        host_xml(&mut out, h, None);
    }
    out.push_str("</HOST_POOL>");
    out
}
