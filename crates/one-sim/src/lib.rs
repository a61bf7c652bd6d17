//! `one-sim`: a small OpenNebula front end (oned) of our own.
//!
//! It answers OpenNebula's XML-RPC API as oned 7.5.80 does (same methods, arrays, error
//! codes, XML documents and state numbers), runs a placement loop like OpenNebula's
//! scheduler, and backs each VM with a driver: `dummy` (no process) or `ns` (a Linux
//! namespace running real software, see [`ns`]). Fault injection lives under `sim.*`
//! methods, outside OpenNebula's namespace.
//!
//! Owns: the simulated cloud and its command line ([`cli`], the program is `src/main.rs`).
//! Does not own: anything of slurm-one's provisioning logic (this crate does not depend on
//! slurm-one, nor slurm-one on it); the protocol it speaks is the `one-proto` crate's.
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod driver;
pub mod engine;
pub mod faults;
pub mod model;
pub mod ns;
pub mod onegate;
pub mod qemu;
pub mod rpc;
pub mod server;
pub mod xml;
