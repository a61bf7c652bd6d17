//! one-sim throughput: one.vm.info calls per second on loopback with the dummy driver,
//! from 4 client threads with keep-alive connections. Not a test: it prints figures.
//!
//! Run: `cargo bench -p one-sim --bench one_sim_calls` (or `scripts/bench-sim`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use one_proto::xmlrpc::{parse_response, write_method_call, Response, Value};
use one_sim::driver::DummyDriver;
use one_sim::engine::Sim;
use one_sim::model::{Cloud, Network, Timing};
use one_sim::server::Server;

const SESSION: &str = "oneadmin:bench";
const CLIENTS: usize = 4;
const SECONDS: u64 = 5;

fn call(agent: &ureq::Agent, url: &str, method: &str, params: &[Value]) -> Response {
    let body = write_method_call(method, params);
    let resp = agent
        .post(url)
        .set("Content-Type", "text/xml")
        .send_bytes(&body)
        .expect("one-sim answers");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).expect("body");
    parse_response(&bytes).expect("a valid XML-RPC response")
}

fn main() {
    let mut cloud = Cloud::new(
        "dummy",
        4,
        8,
        32768,
        Network {
            name: "onebr0".into(),
            gateway: "10.77.0.1".parse().expect("address"),
            prefix_len: 24,
            leases: Default::default(),
        },
    );
    cloud.timing = Timing {
        boot_ms: 0,
        step_ms: 0,
    };
    let sim = Arc::new(Sim::new(
        cloud,
        Box::new(DummyDriver),
        vec![SESSION.into()],
        None,
    ));
    let server =
        Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::clone(&sim)).expect("bind");
    let url = format!("http://{}/RPC2", server.local_addr().expect("addr"));
    let stop = Arc::new(AtomicBool::new(false));
    let engine = sim.spawn_engine();
    let server_stop = Arc::clone(&stop);
    let server_thread = std::thread::spawn(move || {
        server
            .run(&|| server_stop.load(Ordering::SeqCst))
            .expect("serve");
    });

    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut ids = Vec::new();
    for n in 0..16 {
        let tmpl = format!(
            "NAME=\"bench-{n}\"\nMEMORY=\"512\"\nCPU=\"0.5\"\nVCPU=\"1\"\nSLURM_JOB_ID=\"{n}\"\n"
        );
        match call(
            &agent,
            &url,
            "one.vm.allocate",
            &[SESSION.into(), tmpl.into()],
        ) {
            Response::Success(Value::Array(a)) => ids.push(a[1].as_i32().expect("id")),
            other => panic!("allocate failed: {other:?}"),
        }
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs(SECONDS);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let url = url.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let id = ids[(n as usize + t) % ids.len()];
                    match call(
                        &agent,
                        &url,
                        "one.vm.info",
                        &[SESSION.into(), Value::Int(id)],
                    ) {
                        Response::Success(Value::Array(a)) if a[0] == Value::Bool(true) => n += 1,
                        other => panic!("vm.info failed: {other:?}"),
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().expect("client")).sum();
    let secs = start.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    println!("one-sim one.vm.info: {total} calls in {secs:.1} s from {CLIENTS} clients = {rate:.0} calls/s (target > 2000)");

    stop.store(true, Ordering::SeqCst);
    sim.request_stop();
    let _ = server_thread.join();
    let _ = engine.join();
}
