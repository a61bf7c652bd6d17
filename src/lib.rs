//! slurm-one: per-job OpenNebula virtual machines for SLURM.
//!
//! Layout:
//! - [`one`]: the OpenNebula protocol pieces shared by the client and the simulator
//!   (XML-RPC codec, template grammar, VM state numbers).
//! - [`config`]: the admin's TOML file, validated once into a typed `Config`.
//! - [`mapping`]: the job↔node↔VM table in SQLite.
//! - [`sim`]: `one-sim`, an OpenNebula front end of our own (XML-RPC server, VM lifecycle,
//!   placement, the `dummy` and `ns` drivers, fault injection).
#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod dynamic;
pub mod hooks;
pub mod logging;
pub mod mapping;
pub mod one;
pub mod options;
pub mod provision;
pub mod render;
pub mod sim;
pub mod slurm;
