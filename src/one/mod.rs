//! OpenNebula for the product: its client ([`client`]), and the protocol pieces it speaks,
//! re-exported from the `one-proto` crate it shares with `one-sim` (XML-RPC codec, template
//! grammar, state numbers), so that `slurm_one::one::xmlrpc` and the like keep working.

pub mod client;
pub use one_proto::{states, template, xmlrpc};
