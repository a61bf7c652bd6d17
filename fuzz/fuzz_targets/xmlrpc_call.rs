//! Server side of the XML-RPC codec: `parse_method_call` on any body.
//!
//! Invariants: never panics; a refused call is a -503 fault whose response encodes and
//! decodes to the same fault; an accepted call, written with `write_method_call`, parses
//! back to the same method and the same values (doubles and dates as xmlrpc-c rounds them),
//! and a second round trip changes nothing more.
#![no_main]

#[path = "common/xmlrpc.rs"]
mod xr;

use libfuzzer_sys::fuzz_target;
use slurm_one::one::xmlrpc::{
    parse_method_call, parse_response, write_method_call, write_response, Response,
};

fuzz_target!(|data: &[u8]| {
    match parse_method_call(data) {
        Err(e) => {
            assert_eq!(e.code, -503, "{e}");
            let resp = Response::from(e.clone());
            let back = parse_response(&write_response(&resp))
                .unwrap_or_else(|err| panic!("fault response for {e} does not parse: {err}"));
            assert_eq!(back, resp);
        }
        Ok(call) => {
            let body = write_method_call(&call.method, &call.params);
            let again = parse_method_call(&body).unwrap_or_else(|e| {
                panic!(
                    "written call does not parse: {e}\n{}",
                    String::from_utf8_lossy(&body)
                )
            });
            assert_eq!(again.method, call.method);
            assert!(
                xr::same_all(&call.params, &again.params),
                "params changed:\n{:?}\n{:?}",
                call.params,
                again.params
            );
            let body2 = write_method_call(&again.method, &again.params);
            let third = parse_method_call(&body2).expect("second round trip fails");
            assert!(
                xr::same_all(&again.params, &third.params),
                "second round trip changed values"
            );
        }
    }
});
