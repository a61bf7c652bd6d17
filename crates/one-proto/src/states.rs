//! OpenNebula's VM and host state numbers (`include/VirtualMachine.h`, `include/Host.h`).
//!
//! The numbers are the wire format: `STATE` and `LCM_STATE` in every VM document. The names
//! are the ones oned prints in error messages (`state_str()`).

use std::fmt;

/// A VM's `STATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub enum VmState {
    Init = 0,
    Pending = 1,
    Hold = 2,
    Active = 3,
    Stopped = 4,
    Suspended = 5,
    Done = 6,
    Poweroff = 8,
    Undeployed = 9,
    Cloning = 10,
    CloningFailure = 11,
}

impl VmState {
    const ALL: [VmState; 11] = [
        VmState::Init,
        VmState::Pending,
        VmState::Hold,
        VmState::Active,
        VmState::Stopped,
        VmState::Suspended,
        VmState::Done,
        VmState::Poweroff,
        VmState::Undeployed,
        VmState::Cloning,
        VmState::CloningFailure,
    ];

    /// The state with that number, if OpenNebula defines one (7 is unused).
    pub fn from_number(n: i64) -> Option<VmState> {
        Self::ALL.iter().copied().find(|s| *s as i64 == n)
    }

    /// The number on the wire.
    pub fn number(self) -> i32 {
        self as i32
    }

    /// oned's name for it.
    pub fn name(self) -> &'static str {
        match self {
            VmState::Init => "INIT",
            VmState::Pending => "PENDING",
            VmState::Hold => "HOLD",
            VmState::Active => "ACTIVE",
            VmState::Stopped => "STOPPED",
            VmState::Suspended => "SUSPENDED",
            VmState::Done => "DONE",
            VmState::Poweroff => "POWEROFF",
            VmState::Undeployed => "UNDEPLOYED",
            VmState::Cloning => "CLONING",
            VmState::CloningFailure => "CLONING_FAILURE",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names of `LCM_STATE` values, indexed by number; `None` marks the unused numbers.
const LCM_NAMES: [Option<&str>; 72] = [
    Some("LCM_INIT"),
    Some("PROLOG"),
    Some("BOOT"),
    Some("RUNNING"),
    Some("MIGRATE"),
    Some("SAVE_STOP"),
    Some("SAVE_SUSPEND"),
    Some("SAVE_MIGRATE"),
    Some("PROLOG_MIGRATE"),
    Some("PROLOG_RESUME"),
    Some("EPILOG_STOP"),
    Some("EPILOG"),
    Some("SHUTDOWN"),
    None,
    None,
    Some("CLEANUP_RESUBMIT"),
    Some("UNKNOWN"),
    Some("HOTPLUG"),
    Some("SHUTDOWN_POWEROFF"),
    Some("BOOT_UNKNOWN"),
    Some("BOOT_POWEROFF"),
    Some("BOOT_SUSPENDED"),
    Some("BOOT_STOPPED"),
    Some("CLEANUP_DELETE"),
    Some("HOTPLUG_SNAPSHOT"),
    Some("HOTPLUG_NIC"),
    Some("HOTPLUG_SAVEAS"),
    Some("HOTPLUG_SAVEAS_POWEROFF"),
    Some("HOTPLUG_SAVEAS_SUSPENDED"),
    Some("SHUTDOWN_UNDEPLOY"),
    Some("EPILOG_UNDEPLOY"),
    Some("PROLOG_UNDEPLOY"),
    Some("BOOT_UNDEPLOY"),
    Some("HOTPLUG_PROLOG_POWEROFF"),
    Some("HOTPLUG_EPILOG_POWEROFF"),
    Some("BOOT_MIGRATE"),
    Some("BOOT_FAILURE"),
    Some("BOOT_MIGRATE_FAILURE"),
    Some("PROLOG_MIGRATE_FAILURE"),
    Some("PROLOG_FAILURE"),
    Some("EPILOG_FAILURE"),
    Some("EPILOG_STOP_FAILURE"),
    Some("EPILOG_UNDEPLOY_FAILURE"),
    Some("PROLOG_MIGRATE_POWEROFF"),
    Some("PROLOG_MIGRATE_POWEROFF_FAILURE"),
    Some("PROLOG_MIGRATE_SUSPEND"),
    Some("PROLOG_MIGRATE_SUSPEND_FAILURE"),
    Some("BOOT_UNDEPLOY_FAILURE"),
    Some("BOOT_STOPPED_FAILURE"),
    Some("PROLOG_RESUME_FAILURE"),
    Some("PROLOG_UNDEPLOY_FAILURE"),
    Some("DISK_SNAPSHOT_POWEROFF"),
    Some("DISK_SNAPSHOT_REVERT_POWEROFF"),
    Some("DISK_SNAPSHOT_DELETE_POWEROFF"),
    Some("DISK_SNAPSHOT_SUSPENDED"),
    None,
    Some("DISK_SNAPSHOT_DELETE_SUSPENDED"),
    Some("DISK_SNAPSHOT"),
    None,
    Some("DISK_SNAPSHOT_DELETE"),
    Some("PROLOG_MIGRATE_UNKNOWN"),
    Some("PROLOG_MIGRATE_UNKNOWN_FAILURE"),
    Some("DISK_RESIZE"),
    Some("DISK_RESIZE_POWEROFF"),
    Some("DISK_RESIZE_UNDEPLOYED"),
    Some("HOTPLUG_NIC_POWEROFF"),
    Some("HOTPLUG_RESIZE"),
    Some("HOTPLUG_SAVEAS_UNDEPLOYED"),
    Some("HOTPLUG_SAVEAS_STOPPED"),
    Some("BACKUP"),
    Some("BACKUP_POWEROFF"),
    Some("RESTORE"),
];

/// A VM's `LCM_STATE`: meaningful only while `STATE` is ACTIVE (3), 0 otherwise.
///
/// Kept as a number with named constants because OpenNebula defines 68 of them and
/// a client must survive one it does not know (pyone's enum stops at 68).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LcmState(pub u16);

#[allow(missing_docs)]
impl LcmState {
    pub const LCM_INIT: LcmState = LcmState(0);
    pub const PROLOG: LcmState = LcmState(1);
    pub const BOOT: LcmState = LcmState(2);
    pub const RUNNING: LcmState = LcmState(3);
    pub const MIGRATE: LcmState = LcmState(4);
    pub const SAVE_STOP: LcmState = LcmState(5);
    pub const SAVE_SUSPEND: LcmState = LcmState(6);
    pub const SAVE_MIGRATE: LcmState = LcmState(7);
    pub const PROLOG_MIGRATE: LcmState = LcmState(8);
    pub const PROLOG_RESUME: LcmState = LcmState(9);
    pub const EPILOG_STOP: LcmState = LcmState(10);
    pub const EPILOG: LcmState = LcmState(11);
    pub const SHUTDOWN: LcmState = LcmState(12);
    pub const CLEANUP_RESUBMIT: LcmState = LcmState(15);
    pub const UNKNOWN: LcmState = LcmState(16);
    pub const HOTPLUG: LcmState = LcmState(17);
    pub const SHUTDOWN_POWEROFF: LcmState = LcmState(18);
    pub const BOOT_UNKNOWN: LcmState = LcmState(19);
    pub const BOOT_POWEROFF: LcmState = LcmState(20);
    pub const BOOT_SUSPENDED: LcmState = LcmState(21);
    pub const BOOT_STOPPED: LcmState = LcmState(22);
    pub const CLEANUP_DELETE: LcmState = LcmState(23);
    pub const SHUTDOWN_UNDEPLOY: LcmState = LcmState(29);
    pub const EPILOG_UNDEPLOY: LcmState = LcmState(30);
    pub const PROLOG_UNDEPLOY: LcmState = LcmState(31);
    pub const BOOT_UNDEPLOY: LcmState = LcmState(32);
    pub const BOOT_MIGRATE: LcmState = LcmState(35);
    pub const BOOT_FAILURE: LcmState = LcmState(36);
    pub const BOOT_MIGRATE_FAILURE: LcmState = LcmState(37);
    pub const PROLOG_MIGRATE_FAILURE: LcmState = LcmState(38);
    pub const PROLOG_FAILURE: LcmState = LcmState(39);
    pub const EPILOG_FAILURE: LcmState = LcmState(40);
    pub const EPILOG_STOP_FAILURE: LcmState = LcmState(41);
    pub const EPILOG_UNDEPLOY_FAILURE: LcmState = LcmState(42);
    pub const PROLOG_MIGRATE_POWEROFF: LcmState = LcmState(43);
    pub const PROLOG_MIGRATE_SUSPEND: LcmState = LcmState(45);
    pub const HOTPLUG_RESIZE: LcmState = LcmState(66);

    /// oned's name for it, or `None` for a number OpenNebula leaves unused.
    pub fn name(self) -> Option<&'static str> {
        LCM_NAMES.get(usize::from(self.0)).copied().flatten()
    }

    /// The state with that name (as `sim.vm.fail` and tests spell it).
    pub fn from_name(name: &str) -> Option<LcmState> {
        LCM_NAMES
            .iter()
            .position(|n| n.is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|i| u16::try_from(i).ok())
            .map(LcmState)
    }

    /// One of the `*_FAILURE` states, from which only recover or terminate get a VM out.
    pub fn is_failure(self) -> bool {
        self.name().is_some_and(|n| n.ends_with("_FAILURE"))
    }
}

impl fmt::Display for LcmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "LCM_STATE {}", self.0),
        }
    }
}

/// The name oned puts in error messages: the LCM name while ACTIVE, else the STATE name.
pub fn state_str(state: VmState, lcm: LcmState) -> String {
    if state == VmState::Active {
        lcm.to_string()
    } else {
        state.name().to_string()
    }
}

/// A host's `STATE` (`include/Host.h`); 1, 5, 6 and 7 are obsolete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub enum HostState {
    Init = 0,
    Monitored = 2,
    Error = 3,
    Disabled = 4,
    Offline = 8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcm_names_match_opennebula_numbers() {
        assert_eq!(LcmState(3).name(), Some("RUNNING"));
        assert_eq!(LcmState(36).name(), Some("BOOT_FAILURE"));
        assert_eq!(LcmState(66).name(), Some("HOTPLUG_RESIZE"));
        assert_eq!(LcmState(71).name(), Some("RESTORE"));
        assert_eq!(LcmState(13).name(), None);
        assert_eq!(LcmState(55).name(), None);
        assert_eq!(LcmState(72).name(), None);
    }

    #[test]
    fn lcm_state_round_trips_through_its_name() {
        for n in 0..72u16 {
            if let Some(name) = LcmState(n).name() {
                assert_eq!(LcmState::from_name(name), Some(LcmState(n)));
            }
        }
        assert_eq!(
            LcmState::from_name("boot_failure"),
            Some(LcmState::BOOT_FAILURE)
        );
    }

    #[test]
    fn vm_state_seven_is_unused() {
        assert_eq!(VmState::from_number(7), None);
        assert_eq!(VmState::from_number(8), Some(VmState::Poweroff));
    }

    #[test]
    fn error_state_name_is_lcm_name_only_while_active() {
        assert_eq!(state_str(VmState::Active, LcmState::BOOT), "BOOT");
        assert_eq!(state_str(VmState::Suspended, LcmState(0)), "SUSPENDED");
    }
}
