"""one-sim's own fault-injection methods (sim.fault.*, sim.vm.fail), outside OpenNebula's
namespace, on the same endpoint and session.  Injected failures must look exactly like oned's
failure arrays."""

from __future__ import annotations

import http.client
import re
import time

import pyone
import pytest

from conftest import (ACTIVE, DONE, SESSION, VERSION, assert_alive, call, call_ok,
                      dumps_call, parse_response, post, wait_running, wait_vm)

BOOT_FAILURE = 36


@pytest.fixture(autouse=True)
def clean_faults(sim):
    call_ok(sim.url, "sim.fault.clear", SESSION)
    yield
    assert sim.alive(), f"one-sim exited; stderr:\n{sim.stderr_tail()}"
    call_ok(sim.url, "sim.fault.clear", SESSION)
    assert_alive(sim.url)


def vm(sim, hold=True) -> int:
    return call_ok(sim.url, "one.vm.allocate", SESSION, 'NAME="f"\nCPU="0.1"\nMEMORY="16"', hold)


def types(raw: bytes) -> list[str]:
    data = re.search(rb"<data>(.*)</data>", raw, re.S).group(1)
    return [m.decode() for m in re.findall(rb"<value><(\w+)>", data)]


def test_fault_add_fails_the_nth_next_call_like_oned(sim):
    vid = vm(sim)
    call_ok(sim.url, "sim.fault.add", SESSION, "one.vm.info", 2, 1024, "boom")
    assert call(sim.url, "one.vm.info", SESSION, vid)[0] is True       # 1st: untouched
    reply = post(sim.url, dumps_call("one.vm.info", SESSION, vid))    # 2nd: fails
    r = parse_response(reply.body)
    assert isinstance(r, list) and len(r) == 5, r
    assert r[0] is False and r[1] == "[one.vm.info] boom" and r[2] == 1024 and r[4] == -1, r
    assert types(reply.body) == ["boolean", "string", "i4", "i4", "i8"]
    assert call(sim.url, "one.vm.info", SESSION, vid)[0] is True       # 3rd: untouched again


def test_fault_add_nth_1_and_other_methods_untouched(sim):
    call_ok(sim.url, "sim.fault.add", SESSION, "one.vm.allocate", 1, 8192, "no room")
    assert call(sim.url, "one.system.version", SESSION) == [True, VERSION, 0]
    r = call(sim.url, "one.vm.allocate", SESSION, 'CPU="1"\nMEMORY="16"', True)
    assert r[:3] == [False, "[one.vm.allocate] no room", 8192]
    assert call(sim.url, "one.vm.allocate", SESSION, 'CPU="1"\nMEMORY="16"', True)[0] is True


def test_injected_failure_has_no_side_effect(sim):
    before = call_ok(sim.url, "one.vmpool.info", SESSION, -2, -1, -1, -2)
    call_ok(sim.url, "sim.fault.add", SESSION, "one.vm.allocate", 1, 8192, "injected")
    r = call(sim.url, "one.vm.allocate", SESSION, 'CPU="1"\nMEMORY="16"', True)
    assert r[0] is False
    assert call_ok(sim.url, "one.vmpool.info", SESSION, -2, -1, -1, -2) == before


@pytest.mark.parametrize("code,exc", [
    (256, pyone.OneAuthenticationException), (512, pyone.OneAuthorizationException),
    (1024, pyone.OneNoExistsException), (2048, pyone.OneActionException),
    (4096, pyone.OneApiException), (8192, pyone.OneInternalException),
])
def test_injected_codes_map_to_pyone_exceptions(sim, one, code, exc):
    call_ok(sim.url, "sim.fault.add", SESSION, "one.system.version", 1, code, "injected")
    with pytest.raises(exc) as ei:
        one.system.version()
    assert str(ei.value) == "[one.system.version] injected"


def test_fault_clear_removes_pending_faults(sim):
    call_ok(sim.url, "sim.fault.add", SESSION, "one.system.version", 1, 8192, "x")
    call_ok(sim.url, "sim.fault.clear", SESSION)
    assert call(sim.url, "one.system.version", SESSION) == [True, VERSION, 0]


def test_fault_delay(sim):
    call_ok(sim.url, "sim.fault.delay", SESSION, "one.system.version", 400)
    t0 = time.monotonic()
    assert call(sim.url, "one.system.version", SESSION) == [True, VERSION, 0]
    assert time.monotonic() - t0 >= 0.38
    t0 = time.monotonic()
    assert call(sim.url, "one.vm.info", SESSION, 987654)[0] is False
    assert time.monotonic() - t0 < 0.38, "the delay is for the named method only"
    call_ok(sim.url, "sim.fault.clear", SESSION)
    t0 = time.monotonic()
    call(sim.url, "one.system.version", SESSION)
    assert time.monotonic() - t0 < 0.38, "sim.fault.clear removes delays"


def test_fault_drop_closes_the_connection(sim):
    call_ok(sim.url, "sim.fault.drop", SESSION, "one.system.version", 1)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        post(sim.url, dumps_call("one.system.version", SESSION), timeout=10)
    assert call(sim.url, "one.system.version", SESSION) == [True, VERSION, 0]


def test_vm_fail_boot_failure_then_terminate(sim, one):
    vid = vm(sim, hold=False)
    wait_running(one, vid)
    call_ok(sim.url, "sim.vm.fail", SESSION, vid, "BOOT_FAILURE")
    v = one.vm.info(vid)
    assert (v.STATE, v.LCM_STATE) == (ACTIVE, BOOT_FAILURE)
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.action("poweroff", vid)
    assert str(ei.value) == ('[one.vm.action] Error performing action "poweroff": This action is '
                             'not available for state BOOT_FAILURE')
    assert one.vm.action("terminate", vid) == vid, "terminate is accepted in any *_FAILURE"
    wait_vm(one, vid, DONE)


def test_sim_methods_need_a_valid_session(sim):
    r = call(sim.url, "sim.fault.clear", "nobody:wrong")
    assert isinstance(r, list) and r[0] is False and r[2] == 256, r


def test_sim_vm_fail_unknown_vm(sim):
    r = call(sim.url, "sim.vm.fail", SESSION, 987654, "BOOT_FAILURE")
    assert isinstance(r, list) and r[0] is False and r[2] == 1024, r
