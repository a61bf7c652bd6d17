//! The VM XML the client reads from `one.vm.info` and `one.vmpool.infoextended`:
//! roxmltree + `vm_from_node` on any document.
//!
//! Invariants: never panics; an accepted VM has the `<ID>` and `<STATE>` it was read from,
//! no more IPs than `<NIC>`s, USER_TEMPLATE entries only from leaf elements, and its state
//! helpers answer consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slurm_one::one::client::vm_from_node;

fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    node.children()
        .find(|n| n.has_tag_name(name))
        .map(|n| n.text().unwrap_or("").trim().to_string())
}

fn check(vm: roxmltree::Node<'_, '_>) {
    let info = match vm_from_node("fuzz", vm) {
        Ok(info) => info,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let id: i64 = child_text(vm, "ID")
        .and_then(|t| t.parse().ok())
        .expect("accepted without a numeric ID");
    assert_eq!(i64::from(info.id), id);
    let state: i64 = child_text(vm, "STATE")
        .and_then(|t| t.parse().ok())
        .expect("accepted without STATE");
    assert_eq!(i64::from(info.state.number()), state);
    let nics = vm
        .children()
        .find(|n| n.has_tag_name("TEMPLATE"))
        .map_or(0, |t| {
            t.children().filter(|n| n.has_tag_name("NIC")).count()
        });
    assert!(
        info.ips.len() <= nics,
        "{} IPs from {nics} NICs",
        info.ips.len()
    );
    let user_elements = vm
        .children()
        .find(|n| n.has_tag_name("USER_TEMPLATE"))
        .map_or(0, |u| u.children().filter(|n| n.is_element()).count());
    assert!(info.user.len() <= user_elements);
    let _ = info.state_name();
    if info.running() {
        assert!(!info.failed(), "a running VM counts as failed");
    }
    let _ = info.ready();
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = roxmltree::Document::parse(text) else {
        return;
    };
    let root = doc.root_element();
    check(root);
    for n in root.children().filter(|n| n.has_tag_name("VM")) {
        check(n);
    }
});
