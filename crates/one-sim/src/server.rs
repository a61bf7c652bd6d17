//! The HTTP side of the front end: XML-RPC over `POST /RPC2`, like oned's Abyss server,
//! and, on a listener of its own, OneGate's `PUT /vm` ([`super::onegate`]).
//!
//! A small HTTP/1.1 server of our own rather than a crate: fault injection needs to drop
//! a connection without answering and to delay single answers, and bodies must be bounded
//! before they are read. One thread per connection (bounded), keep-alive, idle timeout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::engine::Sim;
use super::rpc::{self, Outcome};
use one_proto::xmlrpc::{parse_method_call, write_response, Response};

/// Largest request body accepted (oned's own limit, MESSAGE_SIZE, is larger; this bounds
/// the memory a hostile client can make us hold).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_HEADER: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused request's unread body is drained before the connection closes.
const LINGER: Duration = Duration::from_secs(2);
/// The Content-Type of every XML-RPC answer, as xmlrpc-c's Abyss server sends it.
const XML: &str = "text/xml; charset=utf-8";

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// oned's XML-RPC API on `/RPC2`.
    XmlRpc,
    /// OneGate, for the guests (`PUT /vm`).
    OneGate,
}

/// A bound listener serving one simulator.
pub struct Server {
    listener: TcpListener,
    sim: Arc<Sim>,
    connections: Arc<AtomicUsize>,
    service: Service,
}

impl Server {
    /// Binds `addr` (port 0 picks a free one) for the XML-RPC API.
    pub fn bind(addr: SocketAddr, sim: Arc<Sim>) -> io::Result<Server> {
        Self::bind_service(addr, sim, Service::XmlRpc)
    }

    /// Binds `addr` for `service`.
    pub fn bind_service(addr: SocketAddr, sim: Arc<Sim>, service: Service) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        Ok(Server {
            listener,
            sim,
            connections: Arc::new(AtomicUsize::new(0)),
            service,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `stop()` returns true (checked every 100 ms).
    pub fn run(&self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        let fd = self.listener.as_raw_fd();
        while !stop() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is a valid pollfd for the duration of the call; nfds is 1.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if n <= 0 {
                continue;
            }
            let (stream, _) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    continue;
                }
            };
            if self.connections.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            self.connections.fetch_add(1, Ordering::AcqRel);
            let sim = Arc::clone(&self.sim);
            let counter = Arc::clone(&self.connections);
            let service = self.service;
            let spawned = thread::Builder::new()
                .name("one-sim-conn".into())
                .spawn(move || {
                    serve_connection(stream, &sim, service);
                    counter.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                self.connections.fetch_sub(1, Ordering::AcqRel);
                log::warn!("cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }
}

/// One parsed HTTP request head.
pub(super) struct Head {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) content_length: Option<usize>,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    pub(super) chunked: bool,
    /// X-ONEGATE-TOKEN and X-ONEGATE-VMID (OneGate's credentials).
    pub(super) onegate_token: Option<String>,
    pub(super) onegate_vmid: Option<String>,
}

impl Head {
    /// The path without its query string (Abyss and Sinatra both route on that).
    pub(super) fn route(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(self.path.as_str(), |(p, _)| p)
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEADER - total + 1) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        total += n;
        if total > MAX_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "header too large",
            ));
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between requests
            }
            break;
        }
        lines.push(text);
    }
    let mut request_line = lines[0].split_whitespace();
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    let version = request_line.next().unwrap_or("HTTP/1.0").to_string();
    let mut head = Head {
        method,
        path,
        content_length: None,
        keep_alive: version == "HTTP/1.1",
        expect_continue: false,
        chunked: false,
        onegate_token: None,
        onegate_vmid: None,
    };
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().ok(),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    head.keep_alive = false;
                } else if v.contains("keep-alive") {
                    head.keep_alive = true;
                }
            }
            "expect" => head.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "x-onegate-token" => head.onegate_token = Some(value.to_string()),
            "x-onegate-vmid" => head.onegate_vmid = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(Some(head))
}

pub(super) fn write_http(
    stream: &mut TcpStream,
    status: &str,
    body: &[u8],
    content_type: &str,
    keep_alive: bool,
) -> io::Result<()> {
    write_http_with(stream, status, body, content_type, keep_alive, "")
}

/// Writes one answer; `extra` is more header lines, each ending in CRLF.
fn write_http_with(
    stream: &mut TcpStream,
    status: &str,
    body: &[u8],
    content_type: &str,
    keep_alive: bool,
    extra: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nServer: one-sim\r\nConnection: {}\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" },
        body.len()
    );
    let mut buf = Vec::with_capacity(head.len() + body.len());
    buf.extend_from_slice(head.as_bytes());
    buf.extend_from_slice(body);
    stream.write_all(&buf)?;
    stream.flush()
}

fn serve_connection(stream: TcpStream, sim: &Arc<Sim>, service: Service) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let head = match read_head(&mut reader) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(_) => {
                let _ = write_http(&mut writer, "400 Bad Request", b"", "text/plain", false);
                return;
            }
        };
        let served = match service {
            Service::XmlRpc => exchange(&head, &mut reader, &mut writer, sim),
            Service::OneGate => super::onegate::exchange(&head, &mut reader, &mut writer, sim),
        };
        match served {
            Ok(true) if head.keep_alive => continue,
            Ok(_) => {
                linger_close(&mut reader, &writer);
                return;
            }
            Err(_) => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Closes after an answer: stops writing, then reads and drops what the client still sends
/// (a body we refused) for a moment, so that closing with unread data does not reset the
/// connection before the client has read the answer.
fn linger_close(reader: &mut BufReader<TcpStream>, writer: &TcpStream) {
    let _ = writer.shutdown(Shutdown::Write);
    let _ = writer.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = std::time::Instant::now() + LINGER;
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    while std::time::Instant::now() < deadline && drained < MAX_BODY {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Serves one request; `Ok(true)` when the connection may carry another one.
fn exchange(
    head: &Head,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    sim: &Arc<Sim>,
) -> io::Result<bool> {
    if head.route() != "/RPC2" {
        write_http(writer, "404 Not Found", b"", "text/plain", false)?;
        return Ok(false);
    }
    if head.method == "OPTIONS" {
        write_http_with(
            writer,
            "200 OK",
            b"",
            "text/plain",
            false,
            "Allow: POST\r\n",
        )?;
        return Ok(false);
    }
    if head.method != "POST" {
        write_http(writer, "405 Method Not Allowed", b"", "text/plain", false)?;
        return Ok(false);
    }
    if head.chunked {
        write_http(writer, "411 Length Required", b"", "text/plain", false)?;
        return Ok(false);
    }
    let Some(len) = head.content_length else {
        write_http(writer, "411 Length Required", b"", "text/plain", false)?;
        return Ok(false);
    };
    if len > MAX_BODY {
        let resp = Response::Fault {
            code: -509,
            message: format!("XML-RPC request too large ({len} bytes, limit {MAX_BODY})"),
        };
        write_http(writer, "200 OK", &write_response(&resp), XML, false)?;
        return Ok(false);
    }
    if head.expect_continue {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let response = match parse_method_call(&body) {
        Err(e) => Response::Fault {
            code: e.code,
            message: e.message,
        },
        Ok(call) => match rpc::handle(sim, &call) {
            Outcome::Reply(r) => r,
            Outcome::Drop => return Ok(false),
        },
    };
    write_http(
        writer,
        "200 OK",
        &write_response(&response),
        XML,
        head.keep_alive,
    )?;
    Ok(true)
}
