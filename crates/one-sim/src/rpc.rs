//! OpenNebula's XML-RPC methods: parameter decoding with xmlrpc-c's faults, the session
//! check, and the success/failure arrays oned builds (`RequestXRPC::make_response`).

use std::sync::Arc;
use std::time::Duration;

use super::engine::{now_ms, Sim};
use super::faults::Injected;
use super::model::{OneError, Owner, PoolFilter};
use super::xml;
use one_proto::states::LcmState;
use one_proto::xmlrpc::{MethodCall, Response, Value};

/// The version oned reports (`one.system.version`).
pub const ONE_VERSION: &str = "7.5.80";

/// What the HTTP layer must do with a call.
#[derive(Debug)]
pub enum Outcome {
    /// Send this response.
    Reply(Response),
    /// Close the connection without answering (injected fault).
    Drop,
}

/// xmlrpc-c's faults for parameters (`-501`) and unknown methods (`-506`).
fn fault(code: i32, message: impl Into<String>) -> Response {
    Response::Fault {
        code,
        message: message.into(),
    }
}

fn type_fault(expected: &str) -> Response {
    fault(
        -501,
        format!("Parameter that is supposed to be {expected} is not"),
    )
}

fn not_enough() -> Response {
    fault(-501, "Not enough parameters")
}

/// Typed access to a call's parameters with xmlrpc-c's C++ `paramList` semantics.
struct Params<'a>(&'a [Value]);

impl Params<'_> {
    fn int(&self, i: usize) -> Result<i64, Response> {
        match self.0.get(i) {
            None => Err(not_enough()),
            Some(Value::Int(n)) => Ok(i64::from(*n)),
            Some(_) => Err(type_fault("integer")),
        }
    }

    fn opt_int(&self, i: usize, default: i64) -> Result<i64, Response> {
        if self.0.len() > i {
            self.int(i)
        } else {
            Ok(default)
        }
    }

    fn boolean(&self, i: usize) -> Result<bool, Response> {
        match self.0.get(i) {
            None => Err(not_enough()),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(type_fault("boolean")),
        }
    }

    fn opt_bool(&self, i: usize) -> Result<bool, Response> {
        if self.0.len() > i {
            self.boolean(i)
        } else {
            Ok(false)
        }
    }

    fn string(&self, i: usize) -> Result<&str, Response> {
        match self.0.get(i) {
            None => Err(not_enough()),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(type_fault("a string")),
        }
    }

    fn opt_string(&self, i: usize) -> Result<&str, Response> {
        if self.0.len() > i {
            self.string(i)
        } else {
            Ok("")
        }
    }
}

/// oned's success array.
fn success(value: Value) -> Response {
    Response::Success(Value::Array(vec![Value::Bool(true), value, Value::Int(0)]))
}

/// oned's failure array: message prefixed with the method, code, object id, and the
/// replication index UINT64_MAX sent as i8.
fn failure(method: &str, code: i32, message: &str, resp_id: i32) -> Response {
    Response::Success(Value::Array(vec![
        Value::Bool(false),
        Value::String(format!("[{method}] {message}")),
        Value::Int(code),
        Value::Int(resp_id),
        Value::I8(-1),
    ]))
}

fn from_result(method: &str, r: Result<Value, OneError>) -> Response {
    match r {
        Ok(v) => success(v),
        Err(e) => failure(method, e.code as i32, &e.message, e.resp_id),
    }
}

fn id_value(id: i64) -> Value {
    Value::Int(i32::try_from(id).unwrap_or(-1))
}

/// The methods this front end knows; anything else is xmlrpc-c's -506.
const METHODS: &[&str] = &[
    "one.system.version",
    "one.vm.allocate",
    "one.vm.info",
    "one.vm.action",
    "one.vm.update",
    "one.vm.deploy",
    "one.vm.migrate",
    "one.vm.resize",
    "one.vm.recover",
    "one.vmpool.info",
    "one.vmpool.infoextended",
    "one.template.allocate",
    "one.template.info",
    "one.template.instantiate",
    "one.host.allocate",
    "one.host.info",
    "one.hostpool.info",
    "sim.fault.add",
    "sim.fault.delay",
    "sim.fault.drop",
    "sim.fault.hosts_full",
    "sim.fault.clear",
    "sim.vm.fail",
];

/// Handles one call. May sleep (injected delays); never panics.
pub fn handle(sim: &Arc<Sim>, call: &MethodCall) -> Outcome {
    let method = call.method.as_str();
    if !METHODS.contains(&method) {
        return Outcome::Reply(fault(-506, format!("Method '{method}' not defined")));
    }
    let params = Params(&call.params);
    // The session is decoded and checked before any other parameter (RequestXRPC.cc).
    let session = match params.string(0) {
        Ok(s) => s,
        Err(f) => return Outcome::Reply(f),
    };
    let Some(caller) = sim.authenticate(session).cloned() else {
        return Outcome::Reply(failure(
            method,
            0x100,
            "User couldn't be authenticated, aborting call.",
            -1,
        ));
    };
    if !method.starts_with("sim.") {
        for effect in sim.faults.check(method) {
            match effect {
                Injected::Delay(d) => std::thread::sleep(d),
                Injected::Drop => return Outcome::Drop,
                Injected::Fail { code, message } => {
                    return Outcome::Reply(failure(method, code, &message, -1))
                }
            }
        }
    }
    let response = match dispatch(sim, &caller, method, &params) {
        Ok(r) => r,
        Err(f) => f,
    };
    Outcome::Reply(response)
}

fn dispatch(
    sim: &Arc<Sim>,
    caller: &Owner,
    method: &str,
    p: &Params<'_>,
) -> Result<Response, Response> {
    let now = now_ms();
    let r = match method {
        "one.system.version" => Ok(Value::String(ONE_VERSION.into())),
        "one.vm.allocate" => {
            let text = p.string(1)?;
            let hold = p.opt_bool(2)?;
            let r = sim
                .cloud()
                .allocate_vm(caller, text, hold, now)
                .map(id_value);
            sim.touch();
            r
        }
        "one.vm.info" => {
            let id = p.int(1)?;
            p.opt_bool(2)?;
            sim.cloud()
                .vm_info(caller, id)
                .map(|vm| Value::String(xml::vm_info(vm)))
        }
        "one.vm.action" => {
            // The handler reads the id (param 2) before the action (param 1).
            let id = p.int(2)?;
            let action = p.string(1)?;
            let r = sim.cloud().action(caller, action, id, now).map(id_value);
            sim.touch();
            r
        }
        "one.vm.update" => {
            let id = p.int(1)?;
            let text = p.string(2)?;
            let kind = p.opt_int(3, 0)?;
            let r = sim.cloud().update_vm(caller, id, text, kind).map(id_value);
            sim.touch();
            r
        }
        "one.vm.deploy" => {
            let id = p.int(1)?;
            let host = p.int(2)?;
            let enforce = p.opt_bool(3)?;
            p.opt_int(4, -1)?;
            p.opt_string(5)?;
            let r = sim
                .cloud()
                .deploy(caller, id, host, enforce, now)
                .map(id_value);
            sim.touch();
            r
        }
        "one.vm.migrate" => {
            let id = p.int(1)?;
            let host = p.int(2)?;
            let live = p.boolean(3)?;
            let enforce = p.opt_bool(4)?;
            p.opt_int(5, -1)?;
            p.opt_int(6, 0)?;
            let r = sim
                .cloud()
                .migrate(caller, id, host, live, enforce, now)
                .map(id_value);
            sim.touch();
            r
        }
        "one.vm.resize" => {
            let id = p.int(1)?;
            let text = p.string(2)?;
            let enforce = p.opt_bool(3)?;
            let hotplug = sim.driver.hotplug_resize();
            let r = sim
                .cloud()
                .resize(caller, id, text, enforce, hotplug, now)
                .map(id_value);
            sim.touch();
            r
        }
        "one.vm.recover" => {
            let id = p.int(1)?;
            let op = p.int(2)?;
            let r = sim.cloud().recover(caller, id, op, now).map(id_value);
            sim.touch();
            r
        }
        "one.vmpool.info" | "one.vmpool.infoextended" => {
            let filter = PoolFilter {
                filter: int32(p.int(1)?),
                start: int32(p.int(2)?),
                end: int32(p.int(3)?),
                state: int32(p.int(4)?),
            };
            let query = p.opt_string(5)?;
            if !query.is_empty() {
                Err(OneError::new(
                    super::model::ErrorCode::Internal,
                    "JSON query search is not supported by the SQL backend",
                ))
            } else {
                let cloud = sim.cloud();
                cloud.pool_ids(caller, filter).map(|ids| {
                    Value::String(xml::vm_pool(&cloud, &ids, method.ends_with("infoextended")))
                })
            }
        }
        "one.template.allocate" => {
            let text = p.string(1)?;
            let r = sim
                .cloud()
                .allocate_template(caller, text, now)
                .map(id_value);
            sim.touch();
            r
        }
        "one.template.info" => {
            let id = p.int(1)?;
            p.opt_bool(2)?;
            p.opt_bool(3)?;
            sim.cloud()
                .template_info(caller, id)
                .map(|t| Value::String(xml::vm_template(t)))
        }
        "one.template.instantiate" => {
            let id = p.int(1)?;
            let name = p.string(2)?;
            let hold = p.opt_bool(3)?;
            let extra = p.opt_string(4)?;
            p.opt_bool(5)?;
            let r = sim
                .cloud()
                .instantiate(caller, id, name, hold, extra, now)
                .map(id_value);
            sim.touch();
            r
        }
        "one.host.allocate" => {
            let name = p.string(1)?;
            let im = p.string(2)?;
            let vmm = p.string(3)?;
            let cluster = p.int(4)?;
            let r = sim
                .cloud()
                .allocate_host(caller, name, im, vmm, int32(cluster))
                .map(id_value);
            sim.touch();
            r
        }
        "one.host.info" => {
            let id = p.int(1)?;
            p.opt_bool(2)?;
            sim.cloud()
                .host_info(caller, id)
                .map(|h| Value::String(xml::host_info(h, now)))
        }
        "one.hostpool.info" => {
            let cloud = sim.cloud();
            let ids = cloud.host_ids(caller);
            Ok(Value::String(xml::host_pool(&cloud, &ids)))
        }
        _ => return sim_method(sim, method, p, now),
    };
    Ok(from_result(method, r))
}

/// Fault-injection methods (`sim.*`); they answer with oned-shaped arrays too.
fn sim_method(
    sim: &Arc<Sim>,
    method: &str,
    p: &Params<'_>,
    now: u64,
) -> Result<Response, Response> {
    let r: Result<Value, OneError> = match method {
        "sim.fault.add" => {
            let target = p.string(1)?;
            let nth = p.int(2)?;
            let code = p.int(3)?;
            let message = p.string(4)?;
            sim.faults.add(
                target,
                u32::try_from(nth).unwrap_or(0),
                Injected::Fail {
                    code: int32(code),
                    message: message.to_string(),
                },
            );
            Ok(Value::Bool(true))
        }
        "sim.fault.delay" => {
            let target = p.string(1)?;
            let millis = p.int(2)?;
            sim.faults.add(
                target,
                0,
                Injected::Delay(Duration::from_millis(u64::try_from(millis).unwrap_or(0))),
            );
            Ok(Value::Bool(true))
        }
        "sim.fault.drop" => {
            let target = p.string(1)?;
            let nth = p.int(2)?;
            sim.faults
                .add(target, u32::try_from(nth).unwrap_or(0), Injected::Drop);
            Ok(Value::Bool(true))
        }
        "sim.fault.hosts_full" => {
            let full = p.boolean(1)?;
            sim.faults.set_hosts_full(full);
            Ok(Value::Bool(true))
        }
        "sim.fault.clear" => {
            sim.faults.clear();
            Ok(Value::Bool(true))
        }
        "sim.vm.fail" => {
            let id = p.int(1)?;
            let state = p.string(2)?;
            match LcmState::from_name(state) {
                Some(lcm) if lcm.is_failure() => {
                    let r = sim
                        .cloud()
                        .force_failure(id, lcm, &format!("injected {state}"), now)
                        .map(id_value);
                    sim.touch();
                    r
                }
                _ => Err(OneError::new(
                    super::model::ErrorCode::XmlRpcApi,
                    format!("Unknown failure state {state}: use one of the *_FAILURE LCM states"),
                )),
            }
        }
        _ => return Err(fault(-506, format!("Method '{method}' not defined"))),
    };
    Ok(from_result(method, r))
}

fn int32(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}
