//! Client side of the XML-RPC codec: `parse_response` on any body (what a hostile or broken
//! OpenNebula endpoint could send).
//!
//! Invariants: never panics; an accepted response, written with `write_response`, parses
//! back to the same response (doubles and dates as xmlrpc-c rounds them).
#![no_main]

#[path = "common/xmlrpc.rs"]
mod xr;

use libfuzzer_sys::fuzz_target;
use slurm_one::one::xmlrpc::{parse_response, write_response, Response};

fuzz_target!(|data: &[u8]| {
    let resp = match parse_response(data) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let body = write_response(&resp);
    let back = parse_response(&body).unwrap_or_else(|e| {
        panic!(
            "written response does not parse: {e}\n{}",
            String::from_utf8_lossy(&body)
        )
    });
    match (&resp, &back) {
        (Response::Success(a), Response::Success(b)) => {
            assert!(xr::same(a, b), "value changed:\n{a:?}\n{b:?}")
        }
        (a, b) => assert_eq!(a, b),
    }
});
