//! OneGate, the guests' side door into OpenNebula, as far as slurm-one's VMs use it: a guest
//! whose CONTEXT has TOKEN=YES finds `ONEGATE_ENDPOINT` in `context.sh` and its token in
//! the context CD's `token.txt`, and reports `READY=YES` with
//! `PUT <endpoint>/vm`, headers `X-ONEGATE-TOKEN` and `X-ONEGATE-VMID`, body a template.
//!
//! Behaviour of OpenNebula's onegate-server.rb (`put '/vm'`): authenticate, then
//! `vm.update(body, true)` (a merge into USER_TEMPLATE); 200 with an empty body, 401
//! "Not authorized" for bad credentials, 500 with oned's message when the update fails.
//! Other routes answer 404, as Sinatra does for a route it does not have.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use super::engine::Sim;
use super::model::Cloud;
use super::server::{write_http, Head};

/// Largest body accepted: a template of a few attributes.
const MAX_BODY: usize = 1024 * 1024;
const TEXT: &str = "text/html;charset=utf-8";

/// What OneGate answers: HTTP status line and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// e.g. `200 OK`.
    pub status: &'static str,
    /// Body text.
    pub body: String,
}

fn answer(status: &'static str, body: &str) -> Answer {
    Answer {
        status,
        body: body.to_string(),
    }
}

/// `PUT /vm`: the VM named by `vmid` merges `body` into its USER_TEMPLATE if `token` is
/// its token. The update runs as the VM's owner, as OneGate acts for the token's user.
pub fn put_vm(cloud: &mut Cloud, token: Option<&str>, vmid: Option<&str>, body: &str) -> Answer {
    let not_authorized = || answer("401 Unauthorized", "Not authorized");
    let Some(id) = vmid.and_then(|v| v.trim().parse::<u32>().ok()) else {
        return not_authorized();
    };
    let Some(vm) = cloud.vms.get(&id) else {
        return not_authorized();
    };
    // An empty stored token (no randomness at allocation) matches nothing.
    let valid = match (&vm.onegate_token, token) {
        (Some(ours), Some(theirs)) => !ours.is_empty() && ours.as_str() == theirs.trim(),
        _ => false,
    };
    if !valid {
        return not_authorized();
    }
    let owner = vm.owner.clone();
    match cloud.update_vm(&owner, i64::from(id), body, 1) {
        Ok(_) => answer("200 OK", ""),
        Err(e) => {
            log::warn!("OneGate: VM {id}: update refused: {}", e.message);
            answer("500 Internal Server Error", &e.message)
        }
    }
}

/// Serves one request on a OneGate connection; `Ok(true)` when it may carry another.
pub(super) fn exchange(
    head: &Head,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    sim: &Arc<Sim>,
) -> io::Result<bool> {
    if head.route() != "/vm" || head.method != "PUT" {
        let a = answer("404 Not Found", "<h1>Not Found</h1>");
        write_http(writer, a.status, a.body.as_bytes(), TEXT, false)?;
        return Ok(false);
    }
    let len = head.content_length.unwrap_or(0);
    if head.chunked || len > MAX_BODY {
        write_http(writer, "413 Payload Too Large", b"", TEXT, false)?;
        return Ok(false);
    }
    if head.expect_continue {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let text = String::from_utf8_lossy(&body);
    let a = {
        let mut cloud = sim.cloud();
        put_vm(
            &mut cloud,
            head.onegate_token.as_deref(),
            head.onegate_vmid.as_deref(),
            &text,
        )
    };
    if a.status.starts_with("200") {
        sim.touch();
        log::info!(
            "OneGate: VM {} updated: {}",
            head.onegate_vmid.as_deref().unwrap_or("?"),
            text.trim()
        );
    }
    write_http(writer, a.status, a.body.as_bytes(), TEXT, head.keep_alive)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Network, Owner};
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    fn cloud_with_vm(context: &str) -> (Cloud, u32) {
        let mut c = Cloud::new(
            "qemu",
            1,
            8,
            16384,
            Network {
                name: "onebr0".into(),
                gateway: Ipv4Addr::new(10, 77, 0, 1),
                prefix_len: 24,
                leases: BTreeMap::new(),
            },
        );
        c.onegate_endpoint = Some("http://10.77.0.1:5030".into());
        let tmpl = format!("MEMORY=64\nCPU=1\nCONTEXT=[{context}]\n");
        let id = c.allocate_vm(&Owner::oneadmin(), &tmpl, false, 0).unwrap();
        (c, u32::try_from(id).unwrap())
    }

    #[test]
    fn ready_with_the_vms_token_lands_in_user_template() {
        let (mut c, id) = cloud_with_vm("TOKEN=YES,REPORT_READY=YES");
        let token = c.vms[&id].onegate_token.clone().unwrap();
        let vmid = id.to_string();
        let a = put_vm(&mut c, Some(&token), Some(&vmid), "READY=YES");
        assert_eq!(a, answer("200 OK", ""));
        assert_eq!(c.vms[&id].user_template.get("READY"), Some("YES"));
        // A merge: a second attribute keeps the first.
        put_vm(&mut c, Some(&token), Some(&vmid), "PHASE=\"done\"");
        assert_eq!(c.vms[&id].user_template.get("READY"), Some("YES"));
        assert_eq!(c.vms[&id].user_template.get("PHASE"), Some("done"));
    }

    #[test]
    fn bad_credentials_are_not_authorized_and_change_nothing() {
        let (mut c, id) = cloud_with_vm("TOKEN=YES");
        let token = c.vms[&id].onegate_token.clone().unwrap();
        let (_, other) = {
            let (mut c2, _) = cloud_with_vm("TOKEN=YES");
            let t = c2.vms.values_mut().next().unwrap().onegate_token.take();
            (c2, t.unwrap())
        };
        let vmid = id.to_string();
        for (tok, vm) in [
            (Some(other.as_str()), Some(vmid.as_str())),
            (None, Some(vmid.as_str())),
            (Some(token.as_str()), None),
            (Some(token.as_str()), Some("99")),
            (Some(token.as_str()), Some("x")),
            (Some(""), Some(vmid.as_str())),
        ] {
            let a = put_vm(&mut c, tok, vm, "READY=YES");
            assert_eq!(
                a,
                answer("401 Unauthorized", "Not authorized"),
                "{tok:?} {vm:?}"
            );
        }
        assert!(c.vms[&id].user_template.get("READY").is_none());
    }

    #[test]
    fn a_vm_without_token_yes_cannot_use_onegate() {
        let (mut c, id) = cloud_with_vm("NETWORK=YES");
        let a = put_vm(&mut c, Some(""), Some(&id.to_string()), "READY=YES");
        assert_eq!(a.status, "401 Unauthorized");
    }

    #[test]
    fn an_unparsable_body_is_refused_with_oneds_message() {
        let (mut c, id) = cloud_with_vm("TOKEN=YES");
        let token = c.vms[&id].onegate_token.clone().unwrap();
        let a = put_vm(&mut c, Some(&token), Some(&id.to_string()), "READY=[");
        assert_eq!(a.status, "500 Internal Server Error");
        assert!(!a.body.is_empty());
    }
}
