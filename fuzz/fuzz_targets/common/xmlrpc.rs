//! Value equivalence for XML-RPC round trips.
//!
//! Exact, except where the codec is lossy on purpose (as xmlrpc-c is): a double is written
//! with xmlrpc-c's short digit strings and read back with its inexact arithmetic, and a
//! `dateTime.iso8601` keeps the text received but is written in xmlrpc-c's own form.

#![allow(dead_code)]

use slurm_one::one::xmlrpc::{write_method_call, Value};

fn same_double(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    if a.is_infinite() || b.is_infinite() {
        return false;
    }
    let scale = a.abs().max(b.abs());
    // Below ~1e-290 the decimal reader underflows towards zero, as xmlrpc-c's does.
    scale < 1e-290 || (a - b).abs() <= scale * 1e-9
}

fn written(v: &Value) -> Vec<u8> {
    write_method_call("m", std::slice::from_ref(v))
}

/// True if `b` is what reading `a` back after writing it may give.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => same_double(*x, *y),
        (Value::DateTime(_), Value::DateTime(_)) => written(a) == written(b),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Struct(x), Value::Struct(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((n, p), (m, q))| n == m && same(p, q))
        }
        _ => a == b,
    }
}

pub fn same_all(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| same(p, q))
}
