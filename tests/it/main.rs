//! Integration tests of the library against one-sim, run as a process (the harness is
//! one-sim's own, shared from crates/one-sim/tests/it; `exe` says where the binary is found).

#[path = "../../crates/one-sim/tests/it/exe.rs"]
mod exe;
#[path = "../../crates/one-sim/tests/it/util.rs"]
mod util;

mod core;
