//! OpenNebula's protocol, as both sides of slurm-one speak it: the product's client
//! (`slurm_one::one::client`) and the `one-sim` front end.
//!
//! - [`xmlrpc`]: oned's XML-RPC codec (xmlrpc-c's checks, faults and serializer), both
//!   halves (feature `xmlrpc`, on by default).
//! - [`template`]: the VM template grammar (oned's lexer and parser), rendering, merging and
//!   CONTEXT's `$VAR` expansion.
//! - [`states`]: VM and host state numbers and names.
//! - [`CONTEXT_FILE`]: where one-context leaves CONTEXT inside the guest.
//!
//! Owns: what is on the wire or in the guest exactly as OpenNebula defines it. Does not own:
//! any policy of the client's or the simulator's.
#![warn(missing_docs)]

pub mod states;
pub mod template;
#[cfg(feature = "xmlrpc")]
pub mod xmlrpc;

/// Where one-context keeps the VM's CONTEXT inside the guest (`KEY='value'` lines), on real
/// OpenNebula VMs and in one-sim's `ns` VMs alike; the SPANK plugin reads the job id there.
pub const CONTEXT_FILE: &str = "/run/one-context/context.sh";
