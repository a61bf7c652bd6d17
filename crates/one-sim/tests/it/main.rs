//! Integration tests of the `one-sim` binary: command line, namespace VMs, restarts.

mod exe;
mod util;

mod sim_cli;
mod sim_ns;
mod sim_restart;
