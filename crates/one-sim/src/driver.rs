//! Virtualization drivers behind the simulator: what "boot", "suspend" and "destroy" mean
//! for a VM. `dummy` does nothing (like oned's dummy VMM); `ns` runs the VM as Linux
//! namespaces ([`super::ns`]).

use std::net::Ipv4Addr;

use base64::Engine as _;

use super::model::{DriverCall, Vm};
use super::ns::{NsDriver, VmBoot};
use super::qemu::QemuDriver;

/// What a driver needs to start a VM, taken from its template.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// VM id.
    pub vm_id: u32,
    /// NIC 0's leased address.
    pub ip: Option<Ipv4Addr>,
    /// Hostname (CONTEXT/SET_HOSTNAME, else the VM name).
    pub hostname: String,
    /// CONTEXT after `$` expansion.
    pub context: Vec<(String, String)>,
    /// START_SCRIPT_BASE64 decoded, else START_SCRIPT.
    pub start_script: Option<Vec<u8>>,
    /// CONTEXT/REPORT_READY=YES.
    pub report_ready: bool,
    /// MEMORY in MiB.
    pub memory_mb: u64,
    /// VCPU (1 when unset, as oned's KVM driver does).
    pub vcpu: u32,
    /// CPU: the share of physical CPUs the VM may use.
    pub cpu: f64,
    /// The OneGate token (CONTEXT/TOKEN=YES), for the context CD's `token.txt`.
    pub onegate_token: Option<String>,
}

impl BootSpec {
    /// A spec naming only the VM (enough to destroy it).
    pub fn bare(vm_id: u32) -> BootSpec {
        BootSpec {
            vm_id,
            ip: None,
            hostname: String::new(),
            context: Vec::new(),
            start_script: None,
            report_ready: false,
            memory_mb: 0,
            vcpu: 1,
            cpu: 0.0,
            onegate_token: None,
        }
    }

    /// Reads the spec out of a VM record.
    pub fn from_vm(vm: &Vm) -> BootSpec {
        let context: Vec<(String, String)> = vm
            .template
            .vector("CONTEXT")
            .map(<[(String, String)]>::to_vec)
            .unwrap_or_default();
        let get = |k: &str| {
            context
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let start_script = get("START_SCRIPT_BASE64")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .or_else(|| get("START_SCRIPT").map(String::into_bytes));
        BootSpec {
            vm_id: vm.id,
            ip: vm.ip,
            hostname: get("SET_HOSTNAME").unwrap_or_else(|| vm.name.clone()),
            report_ready: vm.wants_ready(),
            start_script,
            context,
            memory_mb: vm.memory_mb(),
            vcpu: vm
                .template
                .get("VCPU")
                .and_then(|v| v.trim().parse().ok())
                .filter(|v| *v > 0)
                .unwrap_or(1),
            cpu: vm.cpu(),
            onegate_token: vm.onegate_token.clone(),
        }
    }
}

/// A virtualization driver.
pub trait Driver: Send + Sync {
    /// VM_MAD name shown in HISTORY and DEPLOY_ID.
    fn vm_mad(&self) -> &'static str;
    /// Whether a RUNNING VM can be resized (oned's dummy VMM cannot).
    fn hotplug_resize(&self) -> bool;
    /// Carries out one lifecycle step; the error text lands in USER_TEMPLATE/ERROR.
    fn call(&self, call: DriverCall, spec: &BootSpec) -> Result<(), String>;
    /// The guest has run its contextualization and reports READY.
    fn guest_ready(&self, vm_id: u32) -> bool;
    /// The guest still exists (monitoring); `false` means it vanished under us.
    fn guest_alive(&self, vm_id: u32) -> bool;
    /// Whether calls are slow enough to need their own thread.
    fn is_slow(&self) -> bool;
    /// Ids of every VM the driver still has (for cleanup).
    fn existing(&self) -> Vec<u32>;
    /// Called when the simulator stops; `remove_network` also takes down what the driver
    /// set up for all VMs (the bridge).
    fn shutdown(&self, remove_network: bool) -> Result<(), String>;
}

/// oned's dummy VMM plus a simulated guest: every operation succeeds at once, and the guest's
/// contextualization reports READY as soon as it runs (`--dummy-guest true`, the default;
/// slurm-one's tests and benchmarks wait for READY).
pub struct DummyDriver;

/// Exactly oned's dummy VMM (`--dummy-guest false`): every operation succeeds at once and no
/// guest ever reports READY.
pub struct BareDummyDriver;

macro_rules! dummy_driver {
    ($ty:ty, $ready:expr) => {
        impl Driver for $ty {
            fn vm_mad(&self) -> &'static str {
                "dummy"
            }
            fn hotplug_resize(&self) -> bool {
                false
            }
            fn call(&self, _: DriverCall, _: &BootSpec) -> Result<(), String> {
                Ok(())
            }
            fn guest_ready(&self, _: u32) -> bool {
                $ready
            }
            fn guest_alive(&self, _: u32) -> bool {
                true
            }
            fn is_slow(&self) -> bool {
                false
            }
            fn existing(&self) -> Vec<u32> {
                Vec::new()
            }
            fn shutdown(&self, _: bool) -> Result<(), String> {
                Ok(())
            }
        }
    };
}

dummy_driver!(DummyDriver, true);
dummy_driver!(BareDummyDriver, false);

/// VMs as Linux namespaces running real processes.
pub struct NamespaceDriver {
    ns: NsDriver,
}

impl NamespaceDriver {
    /// Wraps a configured [`NsDriver`].
    pub fn new(ns: NsDriver) -> Self {
        NamespaceDriver { ns }
    }

    /// The underlying namespace driver (for running commands inside a VM).
    pub fn ns(&self) -> &NsDriver {
        &self.ns
    }
}

impl Driver for NamespaceDriver {
    fn vm_mad(&self) -> &'static str {
        "ns"
    }
    fn hotplug_resize(&self) -> bool {
        true
    }
    fn call(&self, call: DriverCall, spec: &BootSpec) -> Result<(), String> {
        let id = spec.vm_id;
        let boot = || -> Result<VmBoot, String> {
            let Some(ip) = spec.ip else {
                return Err(format!(
                    "VM {id} has no NIC: the ns driver needs NIC = [ NETWORK_ID = 0 ]"
                ));
            };
            Ok(VmBoot {
                vm_id: id,
                ip,
                mac: super::model::mac_for(ip),
                hostname: spec.hostname.clone(),
                context: spec.context.clone(),
                start_script: spec.start_script.clone(),
                report_ready: spec.report_ready,
            })
        };
        let result = match call {
            DriverCall::Boot => self.ns.boot(&boot()?),
            DriverCall::Suspend => self.ns.suspend(id),
            DriverCall::Resume => self.ns.resume(id),
            DriverCall::Destroy => self.ns.destroy(id),
            // A new guest in place of the old one: fresh processes, uptime and contextualization.
            DriverCall::Reboot => {
                let vm = boot()?;
                self.ns.destroy(id).and_then(|()| self.ns.boot(&vm))
            }
            // Every host is this machine and a namespace VM has no size to enforce: a live
            // migration and a resize only change the VM's record.
            DriverCall::Migrate | DriverCall::Resize => Ok(()),
        };
        result.map_err(|e| e.to_string())
    }
    fn guest_ready(&self, vm_id: u32) -> bool {
        self.ns.is_ready(vm_id)
    }
    fn guest_alive(&self, vm_id: u32) -> bool {
        self.ns.is_running(vm_id)
    }
    fn is_slow(&self) -> bool {
        true
    }
    fn existing(&self) -> Vec<u32> {
        self.ns.list_vms()
    }
    fn shutdown(&self, remove_network: bool) -> Result<(), String> {
        if remove_network {
            self.ns.remove_bridge().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// VMs as qemu processes booting the worker image ([`super::qemu`]).
pub struct QemuVmDriver {
    qemu: QemuDriver,
}

impl QemuVmDriver {
    /// Wraps a configured [`QemuDriver`].
    pub fn new(qemu: QemuDriver) -> Self {
        QemuVmDriver { qemu }
    }
}

impl Driver for QemuVmDriver {
    fn vm_mad(&self) -> &'static str {
        "qemu"
    }
    fn hotplug_resize(&self) -> bool {
        true
    }
    fn call(&self, call: DriverCall, spec: &BootSpec) -> Result<(), String> {
        match call {
            DriverCall::Boot => self.qemu.boot(spec),
            DriverCall::Suspend => self.qemu.suspend(spec.vm_id),
            DriverCall::Resume => self.qemu.resume(spec),
            DriverCall::Destroy => self.qemu.destroy(spec.vm_id),
            DriverCall::Reboot => self.qemu.reboot(spec),
            DriverCall::Migrate => self.qemu.migrate(spec),
            DriverCall::Resize => self.qemu.resize(spec),
        }
    }
    // READY travels through OneGate (super::onegate), as on a real OpenNebula.
    fn guest_ready(&self, _: u32) -> bool {
        false
    }
    fn guest_alive(&self, vm_id: u32) -> bool {
        self.qemu.is_running(vm_id)
    }
    fn is_slow(&self) -> bool {
        true
    }
    fn existing(&self) -> Vec<u32> {
        self.qemu.list_vms()
    }
    fn shutdown(&self, remove_network: bool) -> Result<(), String> {
        self.qemu.shutdown(remove_network)
    }
}
