//! slurm-one: per-job OpenNebula virtual machines for SLURM.
//!
//! Layout:
//! - [`one`]: the OpenNebula client, and the protocol pieces (XML-RPC codec, template
//!   grammar, VM state numbers) it shares with `one-sim` through the `one-proto` crate.
//! - [`config`]: the admin's TOML file, validated once into a typed `Config`.
//! - [`mapping`]: the job↔node↔VM table in SQLite.
//!
//! Only [`config`] and [`options`] are built without the default `engine` feature: that is
//! all the SPANK plugin, loaded by every `sbatch`, links.
#![warn(missing_docs)]

#[cfg(feature = "engine")]
pub mod admin;
#[cfg(feature = "engine")]
pub mod check;
#[cfg(feature = "engine")]
pub mod cli;
pub mod config;
#[cfg(feature = "engine")]
pub mod dynamic;
#[cfg(feature = "engine")]
pub mod hooks;
#[cfg(feature = "engine")]
pub mod logging;
#[cfg(feature = "engine")]
pub mod mapping;
#[cfg(feature = "engine")]
pub mod one;
pub mod options;
#[cfg(feature = "engine")]
pub mod provision;
#[cfg(feature = "engine")]
pub mod render;
#[cfg(feature = "engine")]
pub mod slurm;
