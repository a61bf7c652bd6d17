"""Validate one-sim's documents against OpenNebula's XSDs (shared/opennebula/xsd).

oned sends its documents without a namespace while the XSDs declare
targetNamespace="http://opennebula.org/XMLSchema" (API.md §8), so every element is moved into
that namespace before validation.  The same harness is first run on the real oned samples, so
that a failure here is one-sim's, not the harness's.
"""

from __future__ import annotations

import functools
import xmlrpc.client

import pytest
from lxml import etree

from conftest import (SAMPLES_DIR, SESSION, XSD_DIR, call_ok, wait_url_vm)

NS = "http://opennebula.org/XMLSchema"
SIM_KWARGS = dict(hosts="2x8cpu:16G")


@functools.lru_cache(maxsize=None)
def schema(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD_DIR / name)))


def with_ns(xml: str) -> etree._Element:
    root = etree.fromstring(xml.encode(), etree.XMLParser(strip_cdata=False))
    for el in root.iter():
        if isinstance(el.tag, str) and not el.tag.startswith("{"):
            el.tag = f"{{{NS}}}{el.tag}"
    return root


def errors(doc, xsd: str) -> list[str]:
    s = schema(xsd)
    root = doc if isinstance(doc, etree._Element) else with_ns(doc)
    if s.validate(root):
        return []
    return [f"line {e.line}: {e.message}" for e in s.error_log]


def assert_valid(xml: str, xsd: str) -> None:
    errs = errors(xml, xsd)
    assert not errs, f"{xsd} rejects the document:\n" + "\n".join(errs[:20]) + \
        f"\ndocument: {xml[:1500]}"


def insert_tm_mad_system(xml: str) -> etree._Element:
    """Add TEMPLATE/TM_MAD_SYSTEM at its sorted place (what deployment would add)."""
    root = with_ns(xml)
    tmpl = root.find(f"{{{NS}}}TEMPLATE")
    el = etree.Element(f"{{{NS}}}TM_MAD_SYSTEM")
    el.text = "dummy"
    names = [etree.QName(c).localname for c in tmpl]
    idx = next((i for i, n in enumerate(names) if n > "TM_MAD_SYSTEM"), len(names))
    tmpl.insert(idx, el)
    return root


def assert_fails_only_on_tm_mad_system(xml: str) -> None:
    errs = errors(xml, "vm.xsd")
    assert len(errs) == 1 and "TM_MAD_SYSTEM" in errs[0], \
        "a never-deployed VM fails vm.xsd on TEMPLATE/TM_MAD_SYSTEM alone (API.md §8); " \
        f"errors: {errs}"
    fixed = errors(insert_tm_mad_system(xml), "vm.xsd")
    assert not fixed, f"with TM_MAD_SYSTEM added it must validate; errors: {fixed}"


def sample_doc(name: str) -> str:
    return xmlrpc.client.loads((SAMPLES_DIR / f"{name}.response.xml").read_bytes())[0][0][1]


# --------------------------------------------------------------------------------------------
# the harness on the real oned documents
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,xsd", [
    ("09-vm-info-running", "vm.xsd"),
    ("22-vm-info-done", "vm.xsd"),
    ("32-vm-info-instantiated", "vm.xsd"),
    ("10-vmpool-info", "vm_pool.xsd"),
    ("11-vmpool-infoextended", "vm_pool_extended.xsd"),
    ("03-hostpool-info", "host_pool.xsd"),
    ("04-host-info", "host.xsd"),
    ("30-template-info", "vmtemplate.xsd"),
])
def test_harness_accepts_real_oned_documents(name, xsd):
    assert_valid(sample_doc(name), xsd)


@pytest.mark.parametrize("name", ["06-vm-info-hold", "08-vm-info-pending"])
def test_harness_real_pending_vm_fails_only_on_tm_mad_system(name):
    assert_fails_only_on_tm_mad_system(sample_doc(name))


def test_harness_rejects_documents_without_namespace():
    root = etree.fromstring(sample_doc("09-vm-info-running").encode())
    assert not schema("vm.xsd").validate(root)


# --------------------------------------------------------------------------------------------
# one-sim's documents
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def objects(sim):
    url = sim.url
    tid = call_ok(url, "one.template.allocate", SESSION,
                  'NAME="xsd-tmpl"\nCPU="0.25"\nMEMORY="128"\nVCPU="1"\nCONTEXT=[ A="1" ]\n'
                  'CUSTOM="x"')
    running = call_ok(url, "one.vm.allocate", SESSION,
                      'NAME="xsd-run"\nCPU="0.25"\nMEMORY="128"\nVCPU="2"\n'
                      'NIC=[ NETWORK_ID="0" ]\nCONTEXT=[ NETWORK="YES", SET_HOSTNAME="$NAME" ]\n'
                      'SLURM_JOB_ID="9"\nLABELS="l"', False)
    inst = call_ok(url, "one.template.instantiate", SESSION, tid, "", False, 'MEMORY="64"', False)
    pending = call_ok(url, "one.vm.allocate", SESSION,
                      'NAME="xsd-pending"\nCPU="64"\nMEMORY="128"\nVCPU="1"', False)
    held = call_ok(url, "one.vm.allocate", SESSION,
                   'NAME="xsd-hold"\nCPU="0.25"\nMEMORY="128"\nCONTEXT=[ A="b" ]', True)
    done = call_ok(url, "one.vm.allocate", SESSION, 'NAME="xsd-done"\nCPU="0.25"\nMEMORY="64"',
                   False)
    poweroff = call_ok(url, "one.vm.allocate", SESSION,
                       'NAME="xsd-poweroff"\nCPU="0.25"\nMEMORY="64"', False)
    for vid in (running, inst, done, poweroff):
        wait_url_vm(url, vid, 3, 3)
    call_ok(url, "one.vm.update", SESSION, running, 'READY="YES"', 1)
    call_ok(url, "one.vm.action", SESSION, "terminate-hard", done)
    call_ok(url, "one.vm.action", SESSION, "poweroff", poweroff)
    wait_url_vm(url, done, 6)
    wait_url_vm(url, poweroff, 8)
    return dict(tid=tid, running=running, inst=inst, pending=pending, held=held, done=done,
                poweroff=poweroff)


@pytest.mark.parametrize("which", ["running", "inst", "done", "poweroff"])
def test_deployed_vm_validates(sim, objects, which):
    assert_valid(call_ok(sim.url, "one.vm.info", SESSION, objects[which]), "vm.xsd")


@pytest.mark.parametrize("which", ["pending", "held"])
def test_never_deployed_vm_fails_only_on_tm_mad_system(sim, objects, which):
    assert_fails_only_on_tm_mad_system(call_ok(sim.url, "one.vm.info", SESSION, objects[which]))


@pytest.mark.parametrize("state", [-2, -1, 1, 2, 3, 6, 8])
def test_vmpool_info_validates(sim, objects, state):
    xml = call_ok(sim.url, "one.vmpool.info", SESSION, -2, -1, -1, state)
    assert xml.startswith("<VM_POOL>")
    assert_valid(xml, "vm_pool.xsd")


@pytest.mark.parametrize("state", [3, 6, 8])
def test_vmpool_infoextended_validates(sim, objects, state):
    # only deployed VMs: a never-deployed one lacks TM_MAD_SYSTEM (tested above)
    xml = call_ok(sim.url, "one.vmpool.infoextended", SESSION, -2, -1, -1, state)
    assert xml.count("<VM>") >= 1
    assert_valid(xml, "vm_pool_extended.xsd")


def test_vmpool_infoextended_with_pending_vm_fails_only_on_tm_mad_system(sim, objects):
    vid = objects["pending"]
    xml = call_ok(sim.url, "one.vmpool.infoextended", SESSION, -2, vid, vid, -2)
    errs = errors(xml, "vm_pool_extended.xsd")
    assert len(errs) == 1 and "TM_MAD_SYSTEM" in errs[0], errs


def test_empty_vmpool_validates(sim, objects):
    xml = call_ok(sim.url, "one.vmpool.info", SESSION, -2, -1, -1, 11)
    assert xml == "<VM_POOL></VM_POOL>"
    assert_valid(xml, "vm_pool.xsd")
    assert_valid(call_ok(sim.url, "one.vmpool.infoextended", SESSION, -2, -1, -1, 11),
                 "vm_pool_extended.xsd")


def test_host_validates(sim, objects):
    pool = call_ok(sim.url, "one.hostpool.info", SESSION)
    assert_valid(pool, "host_pool.xsd")
    for hid in (0, 1):
        assert_valid(call_ok(sim.url, "one.host.info", SESSION, hid), "host.xsd")


def test_allocated_host_validates(sim, objects):
    hid = call_ok(sim.url, "one.host.allocate", SESSION, "xsd-host", "dummy", "dummy", -1)
    assert_valid(call_ok(sim.url, "one.host.info", SESSION, hid), "host.xsd")
    assert_valid(call_ok(sim.url, "one.hostpool.info", SESSION), "host_pool.xsd")


def test_vmtemplate_validates(sim, objects):
    assert_valid(call_ok(sim.url, "one.template.info", SESSION, objects["tid"]), "vmtemplate.xsd")
