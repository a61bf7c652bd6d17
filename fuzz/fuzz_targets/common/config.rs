//! A fixed, valid configuration (the shipped example with a second selectable template).

use slurm_one::config::Config;

pub const VALID: &str = r#"
[opennebula]
endpoint = "http://localhost:2633/RPC2"
auth_file = "/etc/slurm-one/one_auth"
api_timeout = "30s"
connect_timeout = "10s"

[cluster]
name = "slurm"
database = "/var/lib/slurm-one/mapping.db"

[templates]
default = "small"
user_selectable = ["big"]

[templates.small]
body = '''
DISK = [ IMAGE = "slurm-worker", IMAGE_UNAME = "oneadmin" ]
NIC = [ NETWORK_ID = "0" ]
CONTEXT = [ NETWORK = "YES", SSH_PUBLIC_KEY = "$USER[SSH_PUBLIC_KEY]" ]
'''

[templates.big]
template_id = 9

[templates.secret]
template_id = 10

[sizing]
default_memory_mb = 256
min_memory_mb = 50
cpu_share_default = 1.0
cpu_share_min = 0.05
cpu_share_max = 1.0

[provisioning]
boot_timeout = "5m"
register_timeout = "2m"
poll_interval = "2s"
concurrency = 4
wait_ready = true
max_prolog_attempts = 3
orphan_grace = "90s"

[logging]
syslog_facility = "daemon"
level = "info"
"#;

pub fn valid() -> &'static Config {
    static CFG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CFG.get_or_init(|| {
        Config::from_toml_str(
            VALID,
            std::path::Path::new("/etc/slurm-one/slurm-one.toml"),
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("the fixed config is refused: {e}"))
    })
}
