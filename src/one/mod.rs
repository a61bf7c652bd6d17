//! OpenNebula protocol pieces shared by the slurm-one client and the `one-sim` front end.

pub mod client;
pub mod states;
pub mod template;
pub mod xmlrpc;
