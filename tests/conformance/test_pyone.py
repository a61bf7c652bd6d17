"""The official pyone client, unchanged, against one-sim (API.md §4-§9, §11).

Expected values come from API.md, the real oned transcripts in shared/opennebula/samples and,
where API.md is silent, from oned 7.5.80's source (OpenNebula/one f847cf2, the commit API.md
was written from); each such place names the source file.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
import pyone

from conftest import (ACTIVE, ALICE_SESSION, BOOT, BOOT_FAILURE, DONE, HOLD, LCM_INIT, PENDING,
                      POWEROFF, PROLOG, RUNNING, SESSION, STOPPED, SUSPENDED, UNDEPLOYED, VERSION,
                      call, call_ok, hold_for, state_str, vm_template, wait_running, wait_vm)

SIM_KWARGS = dict(hosts="4x8cpu:32G")

GIB_KIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def new_vm(one, name=None, hold=False, **kw) -> int:
    vid = one.vm.allocate(vm_template(name, **kw), hold)
    assert isinstance(vid, int) and vid >= 0, f"vm.allocate returned {vid!r}"
    return vid


def running_vm(one, name=None, **kw) -> int:
    vid = new_vm(one, name, **kw)
    wait_running(one, vid)
    return vid


def ut(vm) -> dict:
    return dict(vm.USER_TEMPLATE or {})


def tmpl(vm) -> dict:
    return dict(vm.TEMPLATE or {})


def history(vm) -> list:
    return list(vm.HISTORY_RECORDS.HISTORY) if vm.HISTORY_RECORDS is not None else []


def hosts_by_id(one) -> dict:
    return {h.ID: h for h in one.hostpool.info().HOST}


def track(one, vid, state, lcm=None, timeout=10.0):
    seen: list = []
    vm = wait_vm(one, vid, state, lcm, timeout=timeout, seen=seen)
    return vm, seen


def wait_until(one, vid, pred, what: str, timeout=10.0):
    """Poll vm.info until pred(vm); return (vm, de-duplicated (STATE, LCM_STATE) seen)."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while True:
        vm = one.vm.info(vid)
        cur = (vm.STATE, vm.LCM_STATE)
        if not seen or seen[-1] != cur:
            seen.append(cur)
        if pred(vm):
            return vm, seen
        assert time.monotonic() < deadline, f"VM {vid}: {what} not reached in {timeout}s; " \
                                            f"seen {seen}"
        time.sleep(0.005)


def running_on(hid):
    return lambda vm: ((vm.STATE, vm.LCM_STATE) == (ACTIVE, RUNNING)
                       and history(vm) and history(vm)[-1].HID == hid)


def assert_path(seen: list, path: list) -> None:
    """``seen`` (de-duplicated (STATE, LCM_STATE) observations) must be an in-order subsequence
    of ``path`` that ends with ``path[-1]``."""
    it = iter(path)
    for s in seen:
        for p in it:
            if p == s:
                break
        else:
            raise AssertionError(f"observed states {seen} do not follow the path {path} "
                                 f"(stuck at {s})")
    assert seen and seen[-1] == path[-1], f"observed {seen}, expected to end at {path[-1]}"


def action_error(one, action: str, vid: int) -> str:
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.action(action, vid)
    return str(ei.value)


def not_available(action: str, vm) -> str:
    return (f'[one.vm.action] Error performing action "{action}": This action is not available '
            f"for state {state_str(vm.STATE, vm.LCM_STATE)}")


# --------------------------------------------------------------------------------------------
# system, sessions, unknown ids
# --------------------------------------------------------------------------------------------

def test_system_version(one):
    assert one.system.version() == VERSION


@pytest.mark.parametrize("session", ["oneadmin:wrong", "nobody:opennebula", "oneadmin",
                                     "", "oneadmin:opennebula:extra"])
def test_bad_session_raises_authentication_exception(sim, session):
    bad = pyone.OneServer(sim.url, session=session, timeout=30)
    with pytest.raises(pyone.OneAuthenticationException) as ei:
        bad.vm.info(0)
    assert str(ei.value) == "[one.vm.info] User couldn't be authenticated, aborting call."
    with pytest.raises(pyone.OneAuthenticationException) as ei:
        bad.system.version()
    assert str(ei.value) == \
        "[one.system.version] User couldn't be authenticated, aborting call."


def test_second_user_of_auth_file_can_log_in(sim):
    alice = pyone.OneServer(sim.url, session="alice:wonderland", timeout=30)
    assert alice.system.version() == VERSION


def test_unknown_ids_raise_no_exists_with_oned_messages(one):
    n = 987654
    cases = [
        (lambda: one.vm.info(n), f"[one.vm.info] Error getting virtual machine [{n}]."),
        (lambda: one.vm.action("terminate", n),
         f"[one.vm.action] Error getting virtual machine [{n}]."),
        (lambda: one.vm.update(n, 'A="1"', 1),
         f"[one.vm.update] Error getting virtual machine [{n}]."),
        (lambda: one.vm.deploy(n, 0),
         f"[one.vm.deploy] Error getting virtual machine [{n}]."),
        (lambda: one.vm.migrate(n, 0, False),
         f"[one.vm.migrate] Error getting virtual machine [{n}]."),
        (lambda: one.vm.resize(n, 'CPU="1"\nMEMORY="128"', False),
         f"[one.vm.resize] Error getting virtual machine [{n}]."),
        (lambda: one.host.info(n), f"[one.host.info] Error getting host [{n}]."),
        (lambda: one.template.info(n),
         f"[one.template.info] Error getting virtual machine template [{n}]."),
        (lambda: one.template.instantiate(n, "", False, "", False),
         f"[one.template.instantiate] Error getting virtual machine template [{n}]."),
    ]
    problems = []
    for fn, expected in cases:
        try:
            fn()
            problems.append(f"no exception, expected {expected!r}")
        except pyone.OneNoExistsException as e:
            if str(e) != expected:
                problems.append(f"message {str(e)!r}, expected {expected!r}")
        except Exception as e:  # noqa: BLE001 - report the wrong class
            problems.append(f"{type(e).__name__}: {e} (expected OneNoExistsException "
                            f"{expected!r})")
    assert not problems, "\n".join(problems)


def test_deploy_to_unknown_host_raises_no_exists(one):
    vid = new_vm(one, "deploy-nohost", hold=True)
    with pytest.raises(pyone.OneNoExistsException) as ei:
        one.vm.deploy(vid, 999)
    assert str(ei.value) == "[one.vm.deploy] Error getting host [999]."


# --------------------------------------------------------------------------------------------
# vm.allocate and vm.info
# --------------------------------------------------------------------------------------------

def test_allocate_returns_increasing_ids(one):
    a = new_vm(one, "ids-a", hold=True)
    b = new_vm(one, "ids-b", hold=True)
    assert b > a


def test_allocate_on_hold(one):
    vid = new_vm(one, "held", hold=True)
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (HOLD, LCM_INIT)
    assert vm.ID == vid and vm.NAME == "held"
    assert tmpl(vm).get("SUBMIT_ON_HOLD") == "YES", "hold=true adds SUBMIT_ON_HOLD=YES (sample 06)"
    assert vm.DEPLOY_ID in (None, "")
    assert history(vm) == []
    assert "TM_MAD_SYSTEM" not in tmpl(vm), "TM_MAD_SYSTEM is only added at deploy time"
    # a HOLD VM is never placed: a VM allocated after it gets to RUNNING, it stays HOLD
    running_vm(one, "after-held")
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (HOLD, LCM_INIT)
    assert one.vm.action("release", vid) == vid
    vm = one.vm.info(vid)
    assert vm.STATE in (PENDING, ACTIVE)
    wait_running(one, vid)


def test_submit_on_hold_in_template_holds(one):
    vid = new_vm(one, "soh", extra='SUBMIT_ON_HOLD="YES"')
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (HOLD, LCM_INIT)


def test_allocate_without_hold_reaches_running(one):
    t0 = time.monotonic()
    vid = new_vm(one, "plain")
    vm = wait_running(one, vid)
    assert time.monotonic() - t0 >= 0.18, "RUNNING came sooner than the 200ms boot delay"
    assert vm.DEPLOY_ID, "DEPLOY_ID is set once deployed"
    h = history(vm)
    assert len(h) == 1
    hosts = hosts_by_id(one)
    assert h[0].HID in hosts and h[0].HOSTNAME == hosts[h[0].HID].NAME
    assert h[0].SEQ == 0 and h[0].OID == vid
    assert vm.STIME > 0 and vm.ETIME == 0
    assert tmpl(vm).get("TM_MAD_SYSTEM"), "TM_MAD_SYSTEM is added at deploy time"


def test_lifecycle_pending_prolog_boot_running(sim_factory):
    """PENDING → PROLOG → BOOT → RUNNING, BOOT lasting the boot delay (API.md §7)."""
    s = sim_factory(hosts="1x1cpu:4G", boot_delay="400ms")
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    blocker = new_vm(one, "blocker", cpu="1")
    wait_running(one, blocker)
    vid = new_vm(one, "waiter", cpu="1")
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (PENDING, LCM_INIT), "no room: must be PENDING 1/0"
    one.vm.action("terminate-hard", blocker)
    seen: list = []
    boot_seen_at = None
    deadline = time.monotonic() + 10
    while True:
        vm = one.vm.info(vid)
        cur = (vm.STATE, vm.LCM_STATE)
        if not seen or seen[-1] != cur:
            seen.append(cur)
            if cur == (ACTIVE, BOOT):
                boot_seen_at = time.monotonic()
        if cur == (ACTIVE, RUNNING):
            running_at = time.monotonic()
            break
        assert time.monotonic() < deadline, f"not RUNNING in 10s, seen {seen}"
        time.sleep(0.005)
    assert_path(seen, [(PENDING, 0), (ACTIVE, PROLOG), (ACTIVE, BOOT), (ACTIVE, RUNNING)])
    assert boot_seen_at is not None, f"BOOT (3/2) never observed: {seen}"
    assert running_at - boot_seen_at >= 0.3, \
        f"BOOT lasted {running_at - boot_seen_at:.3f}s, boot delay is 0.4s"


def test_vm_info_fields(one):
    text = vm_template("fields", cpu="0.25", memory=384, vcpu=2, extra="\n".join([
        'SLURM_JOB_ID="42"',
        'SLURM_NODE="node-7"',
        'NIC=[ NETWORK_ID="0" ]',
        'CONTEXT=[ SET_HOSTNAME="$NAME", NETWORK="YES", MYVMID="$VMID" ]',
    ]))
    vid = one.vm.allocate(text, True)
    vm = one.vm.info(vid)
    t = tmpl(vm)
    nic = t.get("NIC")
    assert isinstance(nic, dict), f"one NIC is one dict, got {nic!r}"
    ip = nic.get("IP")
    assert ip, "the lease is taken at allocation: IP is there while HOLD (API.md §8)"
    ipaddress.IPv4Address(ip)
    assert nic.get("MAC") and nic.get("NIC_ID") == "0" and nic.get("NETWORK_ID") == "0"
    one.vm.action("release", vid)
    vm = wait_running(one, vid)
    # core fields
    assert vm.ID == vid and vm.NAME == "fields"
    assert (vm.UID, vm.GID, vm.UNAME, vm.GNAME) == (0, 0, "oneadmin", "oneadmin")
    p = vm.PERMISSIONS
    assert (p.OWNER_U, p.OWNER_M, p.OWNER_A, p.GROUP_U, p.GROUP_M, p.GROUP_A,
            p.OTHER_U, p.OTHER_M, p.OTHER_A) == (1, 1, 0, 0, 0, 0, 0, 0, 0)
    assert (vm.STATE, vm.LCM_STATE) == (ACTIVE, RUNNING)
    assert vm.RESCHED == 0
    # TEMPLATE
    t = tmpl(vm)
    assert t.get("CPU") == "0.25"
    assert t.get("MEMORY") == "384"
    assert t.get("VCPU") == "2"
    assert t.get("VMID") == str(vid)
    assert t.get("AUTOMATIC_REQUIREMENTS"), "oned adds AUTOMATIC_REQUIREMENTS"
    assert t.get("TM_MAD_SYSTEM"), "oned adds TM_MAD_SYSTEM at deploy"
    for k in ("SLURM_JOB_ID", "SLURM_NODE", "NAME"):
        assert k not in t, f"{k} must not be in TEMPLATE"
    ctx = t.get("CONTEXT")
    assert isinstance(ctx, dict)
    assert ctx.get("SET_HOSTNAME") == "fields", "$NAME is expanded in CONTEXT"
    assert ctx.get("MYVMID") == str(vid), "$VMID is expanded in CONTEXT"
    assert ctx.get("NETWORK") == "YES"
    assert ctx.get("ETH0_IP") == ip, "NETWORK=YES adds ETH0_IP = the NIC's IP"
    assert ctx.get("ETH0_MAC") == t["NIC"]["MAC"]
    assert ctx.get("DISK_ID") == "0" and ctx.get("TARGET") == "sda", "as in sample 06"
    assert t["NIC"]["IP"] == ip, "the IP does not change at deploy"
    # USER_TEMPLATE: custom keys only
    u = ut(vm)
    assert u.get("SLURM_JOB_ID") == "42" and u.get("SLURM_NODE") == "node-7"
    for k in ("CPU", "MEMORY", "VCPU", "CONTEXT", "NIC"):
        assert k not in u, f"{k} must not be in USER_TEMPLATE"


def test_nic_ips_are_distinct(one):
    ips = []
    for i in range(3):
        vid = new_vm(one, f"nic-{i}", hold=True, extra='NIC=[ NETWORK_ID="0" ]')
        ips.append(tmpl(one.vm.info(vid))["NIC"]["IP"])
    assert len(set(ips)) == 3, f"leases must be distinct: {ips}"


def test_capacity_values_are_normalised_like_oned(one):
    # VirtualMachine::insert reads CPU as float, MEMORY as long, VCPU as int and writes them back
    vid = new_vm(one, "norm", hold=True, cpu="0.50", memory="0384", vcpu="02")
    t = tmpl(one.vm.info(vid))
    assert (t.get("CPU"), t.get("MEMORY"), t.get("VCPU")) == ("0.5", "384", "2")
    vid = new_vm(one, "norm1", hold=True, cpu="1.0")
    assert tmpl(one.vm.info(vid)).get("CPU") == "1"


def test_default_name_is_one_dash_id(one):
    vid = one.vm.allocate('CPU="0.1"\nMEMORY="16"\n', True)
    assert one.vm.info(vid).NAME == f"one-{vid}"


def test_vm_names_may_repeat(one):
    a = new_vm(one, "same-name", hold=True)
    b = new_vm(one, "same-name", hold=True)
    assert a != b and one.vm.info(b).NAME == "same-name"


def test_context_dollar_variables(one):
    vid = one.vm.allocate(vm_template("ctxvars", extra=(
        'CONTEXT=[ A="$NAME", B="$VMID", C="$HOME/x", D="\\$keep" ]')), True)
    ctx = tmpl(one.vm.info(vid))["CONTEXT"]
    assert ctx["A"] == "ctxvars"
    assert ctx["B"] == str(vid)
    assert ctx["C"] == "/x", "an unknown $VAR becomes empty"
    assert ctx["D"] == "\\$keep", "\\$ is kept with its backslash"


@pytest.mark.parametrize("value", ["$$", "a $( b", "${X}", "trailing $"])
def test_bare_dollar_in_context_fails_allocation(one, value):
    with pytest.raises(pyone.OneInternalException) as ei:
        one.vm.allocate(vm_template("baddollar", extra=f'CONTEXT=[ S="{value}" ]'), True)
    assert str(ei.value).startswith("[one.vm.allocate] ")


@pytest.mark.parametrize("text,expected", [
    ('CPU="1"\n', "[one.vm.allocate] MEMORY attribute must be a positive integer value."),
    ('MEMORY="-5"\nCPU="1"\n',
     "[one.vm.allocate] MEMORY attribute must be a positive integer value."),
    ('MEMORY="128"\n', "[one.vm.allocate] CPU attribute must be a positive float or integer value."),
    ('MEMORY="128"\nCPU="0"\n',
     "[one.vm.allocate] CPU attribute must be a positive float or integer value."),
    ('MEMORY="128"\nCPU="1"\nVCPU="-1"\n',
     "[one.vm.allocate] VCPU attribute must be a positive integer value."),
    ('NAME="a/b"\nMEMORY="128"\nCPU="1"\n', "[one.vm.allocate] Invalid NAME, char '/' is not allowed"),
])
def test_allocate_bad_capacity_or_name_is_internal_error(one, text, expected):
    with pytest.raises(pyone.OneInternalException) as ei:
        one.vm.allocate(text, False)
    assert str(ei.value) == expected


@pytest.mark.parametrize("text", [
    'MEMORY="512"\nCPU = [ "unclosed',
    'MEMORY = 128\nCPU = 1\nX = [ A = ]\n',
    'MEMORY = 128\nCPU = 1\nX = "a]]>b"\n',
    'MEMORY = 128\nCPU = 1\n# a final comment with no newline',
    'MEMORY = 128\nCPU = 1 # a comment after the last value, no newline',
])
def test_allocate_parse_error_is_internal_error(one, text):
    with pytest.raises(pyone.OneInternalException) as ei:
        one.vm.allocate(text, False)
    assert str(ei.value).startswith("[one.vm.allocate] Parse error")


def test_comment_after_a_value_is_accepted_when_a_newline_follows(one):
    # API.md §9 calls `X = 1 # c` a syntax error. The template module (crates/one-proto/src/template.rs)
    # was checked against oned's real lexer and parser (template_parser.l/template_syntax.y,
    # built as an oracle): a comment after a value is skipped when a newline follows it;
    # only a comment that ends the input without a newline fails (see the test above).
    vid = one.vm.allocate('MEMORY = 128 # a comment after a value\nCPU = 1\n', True)
    t = tmpl(one.vm.info(vid))
    assert (t.get("MEMORY"), t.get("CPU")) == ("128", "1")


def test_allocate_parse_error_message_matches_oned(one):
    # sample 26-vm-allocate-bad-template
    with pytest.raises(pyone.OneInternalException) as ei:
        one.vm.allocate('MEMORY="512"\nCPU = [ "unclosed', False)
    assert str(ei.value) == ("[one.vm.allocate] Parse error: syntax error, unexpected $end, "
                             "expecting EQUAL at line 1, columns 23:31")


# --------------------------------------------------------------------------------------------
# vmpool.info / vmpool.infoextended filters (API.md §5)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool_sim(sim_factory):
    """A server with a known set of VMs: ids 0..5 in states DONE, HOLD, RUNNING, PENDING,
    RUNNING, HOLD."""
    s = sim_factory(hosts="1x2cpu:4G")
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    v0 = new_vm(one, "p0", hold=True)
    one.vm.action("terminate", v0)
    v1 = new_vm(one, "p1", hold=True)
    v2 = new_vm(one, "p2", cpu="0.5", extra='READY="YES"\nLABELS="a"')
    v3 = new_vm(one, "p3", cpu="4")  # bigger than the host: PENDING forever
    v4 = new_vm(one, "p4", cpu="0.5")
    v5 = new_vm(one, "p5", hold=True)
    assert [v0, v1, v2, v3, v4, v5] == list(range(6)), "a fresh server numbers VMs from 0"
    wait_vm(one, v0, DONE)
    wait_running(one, v2)
    wait_running(one, v4)
    states = {0: DONE, 1: HOLD, 2: ACTIVE, 3: PENDING, 4: ACTIVE, 5: HOLD}
    for vid, st in states.items():
        assert one.vm.info(vid).STATE == st
    return s, one, states


def oned_pool(states: dict, uid_match: bool, start: int, end: int, state: int) -> list:
    """What oned returns: WHERE (oid filter) AND (uid filter) AND (state filter)
    ORDER BY oid DESC [LIMIT start, -end]  (PoolSQL::oid_filter, PoolSharedAPI::dump,
    VirtualMachinePoolAPI; API_LIST_ORDER defaults to DESC in OpenNebulaTemplate.cc)."""
    if not uid_match:
        return []
    rows = [i for i in sorted(states) if
            state == -2 or (state == -1 and states[i] != DONE) or states[i] == state]
    if end >= -1 and start != -1:
        rows = [i for i in rows if i >= start and (end == -1 or i <= end)]
    rows.sort(reverse=True)
    if end < -1:
        rows = rows[max(start, 0): max(start, 0) + (-end)]
    return rows


FILTERS = [-4, -3, -2, -1, 0, 1]
RANGES = [(-1, -1), (2, -1), (0, -1), (1, 3), (3, 3), (4, 1), (10, -1), (-1, 2), (0, 0),
          (0, -2), (2, -2), (1, -3), (4, -10), (10, -2), (0, -100)]
STATES = [-2, -1, 1, 2, 3, 6, 7, 11]


@pytest.mark.parametrize("method", ["info", "infoextended"])
def test_vmpool_every_filter_range_state_combination(pool_sim, method):
    _, one, states = pool_sim
    fn = getattr(one.vmpool, method)
    bad = []
    for f in FILTERS:
        for (start, end) in RANGES:
            for st in STATES:
                exp = oned_pool(states, f <= 0, start, end, st)
                got = [v.ID for v in fn(f, start, end, st).VM]
                if got != exp:
                    bad.append(f"vmpool.{method}({f}, {start}, {end}, {st}): got {got}, "
                               f"expected {exp}")
    assert not bad, f"{len(bad)} of {len(FILTERS) * len(RANGES) * len(STATES)} combinations " \
                    f"differ:\n" + "\n".join(bad[:40])


@pytest.mark.parametrize("method", ["info", "infoextended"])
def test_vmpool_done_inclusion(pool_sim, method):
    _, one, _ = pool_sim
    fn = getattr(one.vmpool, method)
    assert 0 in [v.ID for v in fn(-2, -1, -1, -2).VM], "state -2 includes DONE"
    assert 0 not in [v.ID for v in fn(-2, -1, -1, -1).VM], "state -1 excludes DONE"
    assert [v.ID for v in fn(-2, -1, -1, 6).VM] == [0], "state 6 is exactly DONE"


@pytest.mark.parametrize("method", ["info", "infoextended"])
def test_vmpool_order_is_descending_by_default(pool_sim, method):
    # sample 10-vmpool-info lists VM 3 before VM 2; oned's API_LIST_ORDER defaults to DESC
    _, one, _ = pool_sim
    ids = [v.ID for v in getattr(one.vmpool, method)(-2, -1, -1, -2).VM]
    assert ids == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("method", ["info", "infoextended"])
@pytest.mark.parametrize("args,message", [
    ((-5, -1, -1, -1), "Incorrect filter_flag"),
    ((-100, -1, -1, -2), "Incorrect filter_flag"),
    ((-2, -1, -1, 12), "Incorrect state filter 12"),
    ((-2, -1, -1, -3), "Incorrect state filter -3"),
    ((-2, -1, -1, 100), "Incorrect state filter 100"),
])
def test_vmpool_bad_filter_raises_api_exception(pool_sim, method, args, message):
    _, one, _ = pool_sim
    with pytest.raises(pyone.OneApiException) as ei:
        getattr(one.vmpool, method)(*args)
    assert str(ei.value) == f"[one.vmpool.{method}] {message}"


def test_vmpool_short_and_extended_content(pool_sim):
    _, one, _ = pool_sim
    short = {v.ID: v for v in one.vmpool.info(-2, 2, 2, -2).VM}
    ext = {v.ID: v for v in one.vmpool.infoextended(-2, 2, 2, -2).VM}
    s, e = short[2], ext[2]
    st = tmpl(s)
    assert (st.get("CPU"), st.get("MEMORY")) == ("0.5", "128")
    assert "VCPU" not in st, "VCPU is optional and only there when given"
    assert set(st) <= {"CPU", "MEMORY", "VCPU", "DISK", "NIC", "GRAPHICS"}, \
        f"short TEMPLATE holds only CPU, MEMORY, VCPU, DISK, NIC, GRAPHICS: {sorted(st)}"
    su = ut(s)
    assert "READY" not in su, "vmpool.info leaves READY out of USER_TEMPLATE"
    assert su.get("LABELS") == "a", "LABELS is one of the keys the short form keeps"
    assert ut(e).get("READY") == "YES", "infoextended keeps custom USER_TEMPLATE keys"
    assert tmpl(e).get("VMID") == "2" and tmpl(e).get("TM_MAD_SYSTEM")
    hs = history(s)
    assert len(hs) == 1 and hs[0].HOSTNAME and hs[0].OID == 2


def test_vmpool_empty_pool(pool_sim):
    _, one, _ = pool_sim
    assert list(one.vmpool.info(-2, -1, -1, 11).VM) == []


def test_vmpool_filters_respect_ownership(sim_factory):
    """filter -3 (MINE), -2 (ALL), uid>=0 work on the owner (PoolSQL::usr_filter)."""
    s = sim_factory(hosts="1x2cpu:4G")
    admin = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    alice = pyone.OneServer(s.url, session="alice:wonderland", timeout=30)
    a_vm = new_vm(admin, "admins", hold=True)
    b_vm = new_vm(alice, "alices", hold=True)
    info = alice.vm.info(b_vm)
    assert info.UNAME == "alice" and info.UID != 0, "a VM belongs to the user who allocated it"
    assert [v.ID for v in admin.vmpool.info(-3, -1, -1, -1).VM] == [a_vm]
    assert [v.ID for v in admin.vmpool.info(-2, -1, -1, -1).VM] == [b_vm, a_vm]
    assert [v.ID for v in alice.vmpool.info(-3, -1, -1, -1).VM] == [b_vm]
    assert [v.ID for v in admin.vmpool.info(info.UID, -1, -1, -1).VM] == [b_vm]
    assert [v.ID for v in admin.vmpool.info(0, -1, -1, -1).VM] == [a_vm]


def test_owner_fields_and_authorization_of_other_users_objects(sim_factory):
    """Users come from the auth file: oneadmin is 0/0 "oneadmin", every other user gets the
    next uid in group 1 "users". Objects keep oned's default permissions (OWNER_U and
    OWNER_M only), so a user outside the oneadmin group may use and manage only its own
    objects and nothing grants it ADMIN; refusals read `User [uid] : Not authorized to
    perform OP TYPE [id].` with RESP_ID -1 (AuthRequest::add_auth, Request::failure_message)."""
    s = sim_factory(hosts="1x2cpu:4G")
    admin = pyone.OneServer(s.url, session=SESSION, timeout=30)
    alice = pyone.OneServer(s.url, session=ALICE_SESSION, timeout=30)
    a_vm = new_vm(admin, "admins", hold=True)
    b_vm = new_vm(alice, "alices", hold=True)
    a, b = admin.vm.info(a_vm), alice.vm.info(b_vm)
    assert (a.UID, a.GID, a.UNAME, a.GNAME) == (0, 0, "oneadmin", "oneadmin")
    assert (b.UID, b.GID, b.UNAME, b.GNAME) == (1, 1, "alice", "users")
    short = {v.ID: v for v in admin.vmpool.info(-2, -1, -1, -1).VM}
    assert (short[b_vm].UID, short[b_vm].UNAME) == (1, "alice")
    assert [v.ID for v in alice.vmpool.info(-2, -1, -1, -1).VM] == [b_vm]
    assert [v.ID for v in admin.vmpool.info(-4, -1, -1, -1).VM] == [a_vm], \
        "GROUP is the caller's primary group"

    def refused(fn, method, op, obj):
        with pytest.raises(pyone.OneAuthorizationException) as ei:
            fn()
        assert str(ei.value) == f"[{method}] User [1] : Not authorized to perform {op} {obj}."

    refused(lambda: alice.vm.info(a_vm), "one.vm.info", "USE", f"VM [{a_vm}]")
    refused(lambda: alice.vm.action("terminate", a_vm), "one.vm.action", "MANAGE",
            f"VM [{a_vm}]")
    refused(lambda: alice.vm.update(a_vm, 'A="1"', 1), "one.vm.update", "MANAGE", f"VM [{a_vm}]")
    refused(lambda: alice.vm.resize(a_vm, 'CPU="1"', False), "one.vm.resize", "MANAGE",
            f"VM [{a_vm}]")
    refused(lambda: alice.vm.recover(b_vm, 3), "one.vm.recover", "ADMIN", f"VM [{b_vm}]")
    refused(lambda: alice.vm.deploy(b_vm, 0), "one.vm.deploy", "ADMIN",
            f"VM [{b_vm}]; Not authorized to perform MANAGE HOST [0]")
    refused(lambda: alice.host.info(0), "one.host.info", "USE", "HOST [0]")
    r = call(s.url, "one.vm.info", ALICE_SESSION, a_vm)
    assert r == [False, f"[one.vm.info] User [1] : Not authorized to perform USE VM [{a_vm}].",
                 0x200, -1, -1]
    # own objects: USE and MANAGE
    assert alice.vm.update(b_vm, 'A="1"', 1) == b_vm
    assert alice.vm.action("release", b_vm) == b_vm
    assert admin.vm.info(b_vm).ID == b_vm, "oneadmin sees everything"
    assert list(alice.hostpool.info().HOST) == [], "hosts belong to oneadmin"
    # templates are owned too, and their names are unique per owner
    t_admin = admin.template.allocate('NAME="shared-name"\nCPU="0.1"\nMEMORY="16"')
    t_alice = alice.template.allocate('NAME="shared-name"\nCPU="0.1"\nMEMORY="16"')
    assert alice.template.info(t_alice).UNAME == "alice"
    refused(lambda: alice.template.info(t_admin), "one.template.info", "USE",
            f"TEMPLATE [{t_admin}]")
    v = alice.template.instantiate(t_alice, "", True, "", False)
    assert alice.vm.info(v).UNAME == "alice"


# --------------------------------------------------------------------------------------------
# vm.action: valid transitions
# --------------------------------------------------------------------------------------------

def test_terminate_running_goes_through_shutdown_epilog_to_done(one):
    vid = running_vm(one, "term")
    assert one.vm.action("terminate", vid) == vid
    vm, seen = track(one, vid, DONE)
    assert_path(seen, [(ACTIVE, RUNNING), (ACTIVE, 12), (ACTIVE, 11), (DONE, 0)])
    assert vm.LCM_STATE == 0 and vm.ETIME > 0
    assert history(vm)[-1].ETIME > 0


def test_terminate_hard_running(one):
    vid = running_vm(one, "termhard")
    assert one.vm.action("terminate-hard", vid) == vid
    vm, seen = track(one, vid, DONE)
    assert_path(seen, [(ACTIVE, RUNNING), (ACTIVE, 12), (ACTIVE, 11), (DONE, 0)])
    assert vm.ETIME > 0


@pytest.mark.parametrize("action", ["terminate", "terminate-hard"])
def test_terminate_pending_or_hold_goes_straight_to_done(one, action):
    held = new_vm(one, "t-held", hold=True)
    pending = new_vm(one, "t-pending", cpu="64")  # bigger than any host
    for vid in (held, pending):
        assert one.vm.action(action, vid) == vid
        vm = one.vm.info(vid)
        assert (vm.STATE, vm.LCM_STATE) == (DONE, 0), \
            f"{action} on PENDING/HOLD is synchronous (DispatchManager::terminate)"
        assert vm.ETIME > 0


def test_terminate_on_done_is_a_successful_noop(one):
    vid = new_vm(one, "t-done", hold=True)
    one.vm.action("terminate", vid)
    wait_vm(one, vid, DONE)
    etime = one.vm.info(vid).ETIME
    assert one.vm.action("terminate", vid) == vid
    assert one.vm.action("terminate-hard", vid) == vid
    vm = one.vm.info(vid)
    assert vm.STATE == DONE and vm.ETIME == etime


def test_done_vm_stays_readable_and_ids_are_not_reused(one):
    vid = new_vm(one, "t-keep", hold=True)
    one.vm.action("terminate", vid)
    wait_vm(one, vid, DONE)
    assert one.vm.info(vid).NAME == "t-keep"
    nxt = new_vm(one, "t-next", hold=True)
    assert nxt > vid


def test_suspend_and_resume(one):
    vid = running_vm(one, "susp")
    assert one.vm.action("suspend", vid) == vid
    vm, seen = track(one, vid, SUSPENDED)
    assert_path(seen, [(ACTIVE, RUNNING), (ACTIVE, 6), (SUSPENDED, 0)])
    assert history(vm)[-1].HOSTNAME, "a SUSPENDED VM keeps its host"
    assert one.vm.action("resume", vid) == vid
    vm, seen = track(one, vid, ACTIVE, RUNNING)
    assert_path(seen, [(SUSPENDED, 0), (ACTIVE, 21), (ACTIVE, RUNNING)])


@pytest.mark.parametrize("action", ["poweroff", "poweroff-hard"])
def test_poweroff_and_resume(one, action):
    vid = running_vm(one, action)
    host_before = history(one.vm.info(vid))[-1].HID
    assert one.vm.action(action, vid) == vid
    vm, seen = track(one, vid, POWEROFF)
    assert_path(seen, [(ACTIVE, RUNNING), (ACTIVE, 18), (POWEROFF, 0)])
    assert history(vm)[-1].HID == host_before, "POWEROFF keeps its host"
    assert one.vm.action("resume", vid) == vid
    vm, seen = track(one, vid, ACTIVE, RUNNING)
    assert_path(seen, [(POWEROFF, 0), (ACTIVE, 20), (ACTIVE, RUNNING)])


def test_stop_and_resume(one):
    vid = running_vm(one, "stop")
    assert one.vm.action("stop", vid) == vid
    vm, seen = track(one, vid, STOPPED)
    assert_path(seen, [(ACTIVE, RUNNING), (ACTIVE, 5), (ACTIVE, 10), (STOPPED, 0)])
    assert one.vm.action("resume", vid) == vid
    vm, seen = track(one, vid, ACTIVE, RUNNING)
    assert_path(seen, [(STOPPED, 0), (PENDING, 0), (ACTIVE, 9), (ACTIVE, 22), (ACTIVE, RUNNING)])


def test_stop_from_suspended(one):
    vid = running_vm(one, "stop-susp")
    one.vm.action("suspend", vid)
    wait_vm(one, vid, SUSPENDED)
    assert one.vm.action("stop", vid) == vid
    vm, seen = track(one, vid, STOPPED)
    assert_path(seen, [(SUSPENDED, 0), (ACTIVE, 10), (STOPPED, 0)])


@pytest.mark.parametrize("action", ["undeploy", "undeploy-hard"])
def test_undeploy_and_resume(one, action):
    vid = running_vm(one, action)
    assert one.vm.action(action, vid) == vid
    vm, seen = track(one, vid, UNDEPLOYED)
    assert_path(seen, [(ACTIVE, RUNNING), (ACTIVE, 29), (ACTIVE, 30), (UNDEPLOYED, 0)])
    assert one.vm.action("resume", vid) == vid
    vm, seen = track(one, vid, ACTIVE, RUNNING)
    assert_path(seen, [(UNDEPLOYED, 0), (PENDING, 0), (ACTIVE, 31), (ACTIVE, 32),
                       (ACTIVE, RUNNING)])


def test_undeploy_from_poweroff(one):
    vid = running_vm(one, "undeploy-po")
    one.vm.action("poweroff", vid)
    wait_vm(one, vid, POWEROFF)
    assert one.vm.action("undeploy", vid) == vid
    vm, seen = track(one, vid, UNDEPLOYED)
    assert_path(seen, [(POWEROFF, 0), (ACTIVE, 30), (UNDEPLOYED, 0)])


@pytest.mark.parametrize("action", ["reboot", "reboot-hard"])
def test_reboot_keeps_running(one, action):
    vid = running_vm(one, action)
    assert one.vm.action(action, vid) == vid
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (ACTIVE, RUNNING)


def test_hold_and_release_pending(one):
    vid = new_vm(one, "hold-pending", cpu="64")  # never fits: stays PENDING
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (PENDING, LCM_INIT)
    assert one.vm.action("hold", vid) == vid
    assert (one.vm.info(vid).STATE, one.vm.info(vid).LCM_STATE) == (HOLD, 0)
    assert one.vm.action("release", vid) == vid
    assert (one.vm.info(vid).STATE, one.vm.info(vid).LCM_STATE) == (PENDING, 0)


def test_resched_unresched_and_reboot_clears_resched(sim_factory):
    s = sim_factory(hosts="1x8cpu:16G")
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    vid = running_vm(one, "resched")
    assert one.vm.info(vid).RESCHED == 0
    assert one.vm.action("resched", vid) == vid
    assert one.vm.info(vid).RESCHED == 1
    assert one.vm.action("unresched", vid) == vid
    assert one.vm.info(vid).RESCHED == 0
    one.vm.action("resched", vid)
    assert one.vm.action("reboot", vid) == vid
    assert one.vm.info(vid).RESCHED == 0, "reboot clears RESCHED (DispatchManager::reboot)"
    one.vm.action("poweroff", vid)
    wait_vm(one, vid, POWEROFF)
    assert one.vm.action("resched", vid) == vid, "resched is accepted in POWEROFF"
    assert one.vm.info(vid).RESCHED == 1


@pytest.mark.parametrize("action", ["delete", "frobnicate", "shutdown", "TERMINATE", ""])
def test_unsupported_action(one, action):
    vid = new_vm(one, "unsupported", hold=True)
    assert action_error(one, action, vid) == \
        f'[one.vm.action] Action "{action}" is not supported'


# --------------------------------------------------------------------------------------------
# vm.action: invalid states (API.md §7, DispatchManagerActions.cc)
# --------------------------------------------------------------------------------------------

# accepted states per action among the states the matrix below builds
ACCEPTS = {
    "poweroff": {"RUNNING"}, "poweroff-hard": {"RUNNING"},
    "undeploy": {"RUNNING", "POWEROFF"}, "undeploy-hard": {"RUNNING", "POWEROFF"},
    "suspend": {"RUNNING"},
    "stop": {"RUNNING", "SUSPENDED"},
    "resume": {"STOPPED", "UNDEPLOYED", "SUSPENDED", "POWEROFF"},
    "hold": {"PENDING"}, "release": {"HOLD"},
    "reboot": {"RUNNING"}, "reboot-hard": {"RUNNING"},
    "resched": {"RUNNING", "POWEROFF"}, "unresched": {"RUNNING", "POWEROFF"},
}
MATRIX_STATES = ["HOLD", "PENDING", "RUNNING", "SUSPENDED", "POWEROFF", "STOPPED", "UNDEPLOYED",
                 "DONE"]


@pytest.fixture(scope="module")
def vms_in_every_state(one):
    vids = {}
    vids["HOLD"] = new_vm(one, "m-hold", hold=True)
    vids["PENDING"] = new_vm(one, "m-pending", cpu="64")
    for name in ("RUNNING", "SUSPENDED", "POWEROFF", "STOPPED", "UNDEPLOYED"):
        vids[name] = new_vm(one, f"m-{name.lower()}")
    vids["DONE"] = new_vm(one, "m-done", hold=True)
    one.vm.action("terminate", vids["DONE"])
    for name in ("RUNNING", "SUSPENDED", "POWEROFF", "STOPPED", "UNDEPLOYED"):
        wait_running(one, vids[name])
    for name, action, st in (("SUSPENDED", "suspend", SUSPENDED),
                             ("POWEROFF", "poweroff", POWEROFF),
                             ("STOPPED", "stop", STOPPED),
                             ("UNDEPLOYED", "undeploy", UNDEPLOYED)):
        one.vm.action(action, vids[name])
    for name, st in (("SUSPENDED", SUSPENDED), ("POWEROFF", POWEROFF), ("STOPPED", STOPPED),
                     ("UNDEPLOYED", UNDEPLOYED), ("DONE", DONE)):
        wait_vm(one, vids[name], st)
    return vids


@pytest.mark.parametrize("action", sorted(ACCEPTS))
def test_action_rejected_in_wrong_state(one, vms_in_every_state, action):
    problems = []
    for st in MATRIX_STATES:
        if st in ACCEPTS[action]:
            continue
        vid = vms_in_every_state[st]
        before = one.vm.info(vid)
        try:
            one.vm.action(action, vid)
            problems.append(f"{action} on {st}: accepted, expected OneActionException")
            continue
        except pyone.OneActionException as e:
            if str(e) != not_available(action, before):
                problems.append(f"{action} on {st}: {str(e)!r}, expected "
                                f"{not_available(action, before)!r}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{action} on {st}: {type(e).__name__}: {e}")
        after = one.vm.info(vid)
        if (after.STATE, after.LCM_STATE) != (before.STATE, before.LCM_STATE):
            problems.append(f"{action} on {st}: state changed to {after.STATE}/{after.LCM_STATE}")
    assert not problems, "\n".join(problems)


def test_actions_during_boot_are_refused(sim_factory):
    s = sim_factory(hosts="1x8cpu:16G", boot_delay="30s")
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    vid = new_vm(one, "booting")
    wait_vm(one, vid, ACTIVE, BOOT)
    for action in ("terminate", "terminate-hard"):
        assert action_error(one, action, vid) == (
            f'[one.vm.action] Error performing action "{action}": Could not terminate VM {vid}, '
            f"wrong state BOOT.")
    for action in ("suspend", "poweroff", "stop", "undeploy", "hold", "release", "reboot",
                   "resched", "resume"):
        assert action_error(one, action, vid) == (
            f'[one.vm.action] Error performing action "{action}": This action is not available '
            f"for state BOOT")
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (ACTIVE, BOOT)


# --------------------------------------------------------------------------------------------
# vm.update
# --------------------------------------------------------------------------------------------

def test_update_merge_and_replace(one):
    vid = new_vm(one, "upd", extra='A="1"\nB="2"\nV=[ X="1", Y="2" ]')
    wait_running(one, vid)
    assert one.vm.update(vid, 'B="3"\nC="4"\nV=[ X="9" ]', 1) == vid
    vm = one.vm.info(vid)
    u = ut(vm)
    assert u.get("A") == "1" and u.get("B") == "3" and u.get("C") == "4"
    assert u.get("V") == {"X": "9"}, "merge replaces a named vector as a whole"
    assert one.vm.update(vid, 'D="5"', 0) == vid
    assert ut(one.vm.info(vid)) == {"D": "5"}, "type 0 replaces the whole USER_TEMPLATE"
    # vm.update changes USER_TEMPLATE only
    one.vm.update(vid, 'CPU="4"\nMEMORY="9999"', 1)
    vm = one.vm.info(vid)
    assert tmpl(vm).get("CPU") == "0.25" and tmpl(vm).get("MEMORY") == "128"
    assert (vm.STATE, vm.LCM_STATE) == (ACTIVE, RUNNING)


def test_update_ready_is_visible_in_infoextended_not_info(one):
    vid = running_vm(one, "ready")
    one.vm.update(vid, 'READY="YES"', 1)
    assert ut(one.vm.info(vid)).get("READY") == "YES"
    short = [v for v in one.vmpool.info(-2, vid, vid, -2).VM]
    ext = [v for v in one.vmpool.infoextended(-2, vid, vid, -2).VM]
    assert len(short) == 1 and len(ext) == 1
    assert "READY" not in ut(short[0])
    assert ut(ext[0]).get("READY") == "YES"


@pytest.mark.parametrize("utype", [2, -1])
def test_update_wrong_type(one, utype):
    vid = new_vm(one, "upd-type", hold=True)
    with pytest.raises(pyone.OneApiException) as ei:
        one.vm.update(vid, 'A="1"', utype)
    assert str(ei.value) == "[one.vm.update] Wrong update type"


def test_update_parse_error_is_action_error(one):
    vid = new_vm(one, "upd-parse", hold=True)
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.update(vid, 'A = [ "unclosed', 1)
    assert str(ei.value).startswith("[one.vm.update] Parse error")


# --------------------------------------------------------------------------------------------
# vm.deploy, vm.migrate, vm.resize
# --------------------------------------------------------------------------------------------

def test_deploy_held_vm_to_chosen_host(one):
    hosts = sorted(hosts_by_id(one).values(), key=lambda h: h.ID)
    target = hosts[-1]
    vid = new_vm(one, "deployed", hold=True)
    assert one.vm.deploy(vid, target.ID) == vid
    vm, seen = track(one, vid, ACTIVE, RUNNING)
    assert_path(seen, [(HOLD, 0), (ACTIVE, PROLOG), (ACTIVE, BOOT), (ACTIVE, RUNNING)])
    h = history(vm)
    assert len(h) == 1 and h[-1].HID == target.ID and h[-1].HOSTNAME == target.NAME


def test_deploy_with_all_optional_params(one):
    hosts = sorted(hosts_by_id(one).values(), key=lambda h: h.ID)
    vid = new_vm(one, "deployed2", hold=True)
    assert one.vm.deploy(vid, hosts[0].ID, False, -1, "") == vid
    vm = wait_running(one, vid)
    assert history(vm)[-1].HID == hosts[0].ID


def test_deploy_running_vm_is_refused(one):
    vid = running_vm(one, "deploy-running")
    host = history(one.vm.info(vid))[-1].HID
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.deploy(vid, host)
    assert str(ei.value) == "[one.vm.deploy] Deploy action is not available for state RUNNING"


@pytest.mark.parametrize("live", [False, True])
def test_migrate_changes_host(one, live):
    vid = running_vm(one, f"migrate-{live}")
    vm = one.vm.info(vid)
    src = history(vm)[-1]
    hosts = hosts_by_id(one)
    dst = next(h for hid, h in sorted(hosts.items()) if hid != src.HID)
    assert one.vm.migrate(vid, dst.ID, live) == vid
    vm, seen = wait_until(one, vid, running_on(dst.ID), f"RUNNING on host {dst.ID}")
    path = ([(ACTIVE, RUNNING), (ACTIVE, 4), (ACTIVE, RUNNING)] if live else
            [(ACTIVE, RUNNING), (ACTIVE, 7), (ACTIVE, 8), (ACTIVE, 35), (ACTIVE, BOOT),
             (ACTIVE, RUNNING)])
    assert_path(seen, path)
    h = history(vm)
    assert len(h) == 2, f"migration adds a HISTORY record, got {len(h)}"
    assert h[0].HID == src.HID and h[0].HOSTNAME == src.HOSTNAME and h[0].ETIME > 0
    assert h[-1].HID == dst.ID and h[-1].HOSTNAME == dst.NAME and h[-1].SEQ == 1


def test_migrate_to_same_host_is_refused(one):
    vid = running_vm(one, "migrate-same")
    h = history(one.vm.info(vid))[-1]
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.migrate(vid, h.HID, False)
    assert str(ei.value) == (f"[one.vm.migrate] VM is already running on host [{h.HID}] and "
                             f"datastore [{h.DS_ID}]")


def test_migrate_in_wrong_state_is_refused(one):
    vid = new_vm(one, "migrate-hold", hold=True)
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.migrate(vid, 0, False)
    assert str(ei.value) == "[one.vm.migrate] Migrate action is not available for state HOLD"


def test_resize_running_with_dummy_driver_is_refused(one):
    vid = running_vm(one, "resize-running")
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.resize(vid, 'CPU="1"\nVCPU="2"\nMEMORY="512"', False)
    assert str(ei.value) == "[one.vm.resize] Hotplug resize not supported by driver dummy"
    t = tmpl(one.vm.info(vid))
    assert (t["CPU"], t["MEMORY"]) == ("0.25", "128")


def test_resize_on_hold_and_poweroff(one):
    vid = new_vm(one, "resize-hold", hold=True)
    assert one.vm.resize(vid, 'CPU="0.5"\nVCPU="2"\nMEMORY="256"', False) == vid
    t = tmpl(one.vm.info(vid))
    assert (t["CPU"], t["MEMORY"], t["VCPU"]) == ("0.5", "256", "2")
    vid = running_vm(one, "resize-po")
    one.vm.action("poweroff", vid)
    wait_vm(one, vid, POWEROFF)
    assert one.vm.resize(vid, 'CPU="0.75"\nMEMORY="192"', False) == vid
    t = tmpl(one.vm.info(vid))
    assert (t["CPU"], t["MEMORY"]) == ("0.75", "192")
    one.vm.action("resume", vid)
    t = tmpl(wait_running(one, vid))
    assert (t["CPU"], t["MEMORY"]) == ("0.75", "192")


def test_resize_suspended_is_refused(one):
    vid = running_vm(one, "resize-susp")
    one.vm.action("suspend", vid)
    wait_vm(one, vid, SUSPENDED)
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.resize(vid, 'CPU="1"', False)
    assert str(ei.value) == "[one.vm.resize] Cannot resize a VM in state SUSPENDED"


def test_resize_negative_memory_is_internal_error(one):
    vid = new_vm(one, "resize-neg", hold=True)
    with pytest.raises(pyone.OneInternalException) as ei:
        one.vm.resize(vid, 'MEMORY="-1"', False)
    assert str(ei.value) == "[one.vm.resize] MEMORY must be a positive integer value."


# --------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------

def test_template_allocate_and_info(one):
    tid = one.template.allocate('NAME="tmpl-info"\nCPU="0.25"\nMEMORY="256"\nVCPU="1"\n'
                                'CONTEXT=[ A="1" ]\nCUSTOM="x"')
    assert isinstance(tid, int) and tid >= 0
    t = one.template.info(tid)
    assert t.ID == tid and t.NAME == "tmpl-info"
    assert (t.UID, t.GID, t.UNAME, t.GNAME) == (0, 0, "oneadmin", "oneadmin")
    assert t.REGTIME > 0
    assert (t.PERMISSIONS.OWNER_U, t.PERMISSIONS.OWNER_M) == (1, 1)
    tt = dict(t.TEMPLATE)
    assert (tt.get("CPU"), tt.get("MEMORY"), tt.get("VCPU")) == ("0.25", "256", "1")
    assert tt.get("CONTEXT") == {"A": "1"} and tt.get("CUSTOM") == "x"
    assert "NAME" not in tt, "NAME becomes the template's name (sample 30)"


def test_template_name_rules(one):
    tid = one.template.allocate('NAME="tmpl-dup"\nCPU="1"\nMEMORY="64"')
    with pytest.raises(pyone.OneInternalException) as ei:
        one.template.allocate('NAME="tmpl-dup"\nCPU="1"\nMEMORY="64"')
    assert str(ei.value) == f"[one.template.allocate] NAME is already taken by TEMPLATE {tid}."
    with pytest.raises(pyone.OneInternalException) as ei:
        one.template.allocate('CPU="1"\nMEMORY="64"')
    assert str(ei.value) == "[one.template.allocate] Invalid NAME, it cannot be empty"
    with pytest.raises(pyone.OneInternalException) as ei:
        one.template.allocate('NAME="x"\nCPU = [ "unclosed')
    assert str(ei.value).startswith("[one.template.allocate] Parse error")


def test_template_instantiate_default_name_and_extra_template(one):
    tid = one.template.allocate('NAME="job"\nCPU="0.25"\nMEMORY="256"\nVCPU="1"\n'
                                'CONTEXT=[ A="1", B="2" ]\nMYVEC=[ K="v" ]\nKEEP="k"')
    vid = one.template.instantiate(tid, "", False, 'MEMORY="300"\nSLURM_X="1"\n'
                                   'CONTEXT=[ C="3" ]\nMYVEC=[]', False)
    assert isinstance(vid, int)
    vm = wait_running(one, vid)
    assert vm.NAME == f"job-{vid}", "name \"\" gives <tmplname>-<vmid>"
    t, u = tmpl(vm), ut(vm)
    assert t.get("TEMPLATE_ID") == str(tid)
    assert t.get("MEMORY") == "300", "the extra template overrides MEMORY"
    assert t.get("CPU") == "0.25"
    ctx = t.get("CONTEXT")
    assert "C" in ctx and "A" not in ctx and "B" not in ctx, \
        f"CONTEXT=[...] in the extra template replaces the whole CONTEXT: {ctx}"
    assert u.get("SLURM_X") == "1" and u.get("KEEP") == "k"
    assert "MYVEC" not in u, "X=[] in the extra template removes X"


def test_template_instantiate_named_and_on_hold(one):
    tid = one.template.allocate('NAME="job-hold"\nCPU="0.25"\nMEMORY="64"')
    vid = one.template.instantiate(tid, "given-name", True, "", False)
    vm = one.vm.info(vid)
    assert vm.NAME == "given-name"
    assert (vm.STATE, vm.LCM_STATE) == (HOLD, 0)
    # the template is unchanged by instantiate
    assert one.template.info(tid).NAME == "job-hold"


# --------------------------------------------------------------------------------------------
# vm.recover (VirtualMachineAPI::recover, DispatchManager::delete_vm / retry)
# --------------------------------------------------------------------------------------------

def test_recover_delete_ends_a_vm_stuck_in_boot(sim_factory):
    s = sim_factory(hosts="1x2cpu:4G", boot_delay="30s")
    one = pyone.OneServer(s.url, session=SESSION, timeout=30)
    vid = new_vm(one, "rec-boot")
    wait_vm(one, vid, ACTIVE, BOOT)
    assert one.vm.recover(vid, 3) == vid
    vm, seen = track(one, vid, DONE)
    assert_path(seen, [(ACTIVE, BOOT), (ACTIVE, 23), (DONE, 0)])
    assert vm.ETIME > 0
    h = one.host.info(0)
    assert (h.HOST_SHARE.CPU_USAGE, h.HOST_SHARE.MEM_USAGE) == (0, 0), "capacity given back"
    assert one.vm.recover(vid, 3) == vid, "delete of a DONE VM is accepted and does nothing"
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.recover(vid, 2)
    assert str(ei.value) == f"[one.vm.recover] Could not perform a retry on VM {vid}, " \
                            f"wrong state DONE."


def test_recover_delete_of_held_vm_is_immediate(one):
    vid = new_vm(one, "rec-held", hold=True)
    assert one.vm.recover(vid, 3) == vid
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (DONE, 0)


def test_recover_retry_boots_a_vm_in_boot_failure(sim, one):
    vid = running_vm(one, "rec-retry")
    call_ok(sim.url, "sim.vm.fail", SESSION, vid, "BOOT_FAILURE")
    vm = one.vm.info(vid)
    assert (vm.STATE, vm.LCM_STATE) == (ACTIVE, BOOT_FAILURE) and ut(vm).get("ERROR")
    assert one.vm.recover(vid, 2) == vid
    vm, seen = track(one, vid, ACTIVE, RUNNING)
    assert_path(seen, [(ACTIVE, BOOT_FAILURE), (ACTIVE, BOOT), (ACTIVE, RUNNING)])


def test_recover_on_a_held_vm_is_refused(one):
    vid = new_vm(one, "rec-wrong", hold=True)
    with pytest.raises(pyone.OneActionException) as ei:
        one.vm.recover(vid, 1)
    assert str(ei.value) == (f"[one.vm.recover] Could not perform a recover operation on VM "
                             f"{vid}, wrong state HOLD.")


@pytest.mark.parametrize("op", [-1, 6, 100])
def test_recover_bad_operation_is_an_action_error(one, op):
    # checked before the VM is looked up: also for an id that does not exist
    vid = new_vm(one, "rec-badop", hold=True)
    for target in (vid, 987654):
        with pytest.raises(pyone.OneActionException) as ei:
            one.vm.recover(target, op)
        assert str(ei.value) == "[one.vm.recover] Wrong recovery operation code"


# --------------------------------------------------------------------------------------------
# hosts, capacity and placement
# --------------------------------------------------------------------------------------------

def test_hostpool_of_four_hosts(one):
    pool = list(one.hostpool.info().HOST)
    assert len(pool) >= 4
    four = sorted(pool, key=lambda h: h.ID)[:4]
    assert len({h.NAME for h in four}) == 4
    for h in four:
        hs = h.HOST_SHARE
        assert (hs.TOTAL_CPU, hs.MAX_CPU) == (800, 800), "8 CPUs are 800"
        assert (hs.TOTAL_MEM, hs.MAX_MEM) == (32 * GIB_KIB, 32 * GIB_KIB), "32 GiB in KiB"
        assert h.IM_MAD == "dummy" and h.VM_MAD == "dummy"
        assert h.STATE == 2 and h.CLUSTER_ID == 0 and h.CLUSTER == "default"


def test_hostpool_order_is_descending(one):
    ids = [h.ID for h in one.hostpool.info().HOST]
    assert ids == sorted(ids, reverse=True), \
        f"hostpool.info uses PoolSharedAPI::dump with API_LIST_ORDER=DESC: {ids}"


def test_host_info_matches_pool(one):
    for h in one.hostpool.info().HOST:
        i = one.host.info(h.ID)
        assert (i.ID, i.NAME, i.HOST_SHARE.TOTAL_MEM, i.HOST_SHARE.TOTAL_CPU) == \
            (h.ID, h.NAME, h.HOST_SHARE.TOTAL_MEM, h.HOST_SHARE.TOTAL_CPU)


def test_default_hosts_option_gives_one_dummy_host(sim_factory):
    s = sim_factory()
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    pool = list(one.hostpool.info().HOST)
    assert len(pool) == 1
    h = pool[0]
    assert h.ID == 0 and h.NAME == "dummy-host-1", "named like oned's dummy host (sample 03)"
    assert (h.HOST_SHARE.TOTAL_CPU, h.HOST_SHARE.TOTAL_MEM) == (800, 16 * GIB_KIB)
    assert (h.HOST_SHARE.MEM_USAGE, h.HOST_SHARE.CPU_USAGE, h.HOST_SHARE.RUNNING_VMS) == (0, 0, 0)


def test_host_allocate(one):
    hid = one.host.allocate("extra-host-a", "dummy", "dummy", -1)
    assert isinstance(hid, int)
    h = one.host.info(hid)
    assert h.NAME == "extra-host-a" and h.IM_MAD == "dummy" and h.VM_MAD == "dummy"
    assert h.CLUSTER_ID == 0 and h.CLUSTER == "default", "cluster -1 means cluster 0"
    assert h.STATE in (0, 2)
    assert hid in [x.ID for x in one.hostpool.info().HOST]
    with pytest.raises(pyone.OneException) as ei:
        one.host.allocate("extra-host-a", "dummy", "dummy", -1)
    assert type(ei.value) is pyone.OneException, "ALLOCATE (0x4000) maps to plain OneException"
    assert str(ei.value) == ("[one.host.allocate] Error allocating a new host. "
                             f"NAME is already taken by HOST {hid}.")
    # a VM can be deployed on it
    vid = new_vm(one, "on-extra", hold=True, cpu="0.1", memory=16)
    one.vm.deploy(vid, hid)
    vm = wait_running(one, vid)
    assert history(vm)[-1].HOSTNAME == "extra-host-a"


def share(one, hid):
    hs = one.host.info(hid).HOST_SHARE
    return hs.MEM_USAGE, hs.CPU_USAGE, hs.RUNNING_VMS


def test_host_usage_follows_vm_lifecycle(sim_factory):
    s = sim_factory(hosts="2x8cpu:32G")
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    hosts = sorted(hosts_by_id(one))
    assert [share(one, h) for h in hosts] == [(0, 0, 0)] * 2
    vid = new_vm(one, "usage", hold=True, cpu="0.25", memory=384)
    assert [share(one, h) for h in hosts] == [(0, 0, 0)] * 2, "HOLD uses no host capacity"
    one.vm.action("release", vid)
    vm = wait_running(one, vid)
    hid = history(vm)[-1].HID
    other = next(h for h in hosts if h != hid)
    assert share(one, hid) == (384 * 1024, 25, 1), "MEMORY×1024 KiB, CPU×100, one VM"
    assert [i for i in (one.host.info(hid).VMS.ID or [])] == [vid]
    assert share(one, other) == (0, 0, 0)
    # POWEROFF keeps the host's capacity
    one.vm.action("poweroff", vid)
    wait_vm(one, vid, POWEROFF)
    assert share(one, hid)[:2] == (384 * 1024, 25)
    one.vm.action("resume", vid)
    wait_running(one, vid)
    # a migration moves the usage
    one.vm.migrate(vid, other, False)
    wait_until(one, vid, running_on(other), f"RUNNING on host {other}")
    assert share(one, other) == (384 * 1024, 25, 1)
    assert share(one, hid) == (0, 0, 0)
    # termination frees it
    one.vm.action("terminate-hard", vid)
    wait_vm(one, vid, DONE)
    assert [share(one, h) for h in hosts] == [(0, 0, 0)] * 2
    assert list(one.host.info(other).VMS.ID or []) == []


def test_undeploy_and_stop_free_the_host(sim_factory):
    s = sim_factory(hosts="1x8cpu:32G")
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    a = running_vm(one, "u1", cpu="0.5", memory=256)
    b = running_vm(one, "u2", cpu="0.25", memory=128)
    assert share(one, 0) == (384 * 1024, 75, 2)
    one.vm.action("undeploy", a)
    wait_vm(one, a, UNDEPLOYED)
    assert share(one, 0) == (128 * 1024, 25, 1)
    one.vm.action("stop", b)
    wait_vm(one, b, STOPPED)
    assert share(one, 0) == (0, 0, 0)


def test_too_big_vm_stays_pending(sim_factory):
    s = sim_factory(hosts="2x8cpu:32G")
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    big_cpu = new_vm(one, "big-cpu", cpu="9", memory=128)
    big_mem = new_vm(one, "big-mem", cpu="1", memory=40000)
    split = new_vm(one, "split", cpu="12", memory=128)  # fits in 2 hosts together, not in one
    small = new_vm(one, "small", cpu="1", memory=128)
    wait_running(one, small)  # the scheduler has been past the big ones
    for vid in (big_cpu, big_mem, split):
        vm = one.vm.info(vid)
        assert (vm.STATE, vm.LCM_STATE) == (PENDING, 0), f"VM {vid} left PENDING"
        assert history(vm) == []
    hold_for(one, big_cpu, PENDING, 1.0)
    used = sum(share(one, h)[1] for h in hosts_by_id(one))
    assert used == 100, "only the small VM uses capacity"


def test_fractional_cpu_placement(sim_factory):
    s = sim_factory(hosts="1x1cpu:4G", boot_delay="100ms")
    one = pyone.OneServer(s.url, session="oneadmin:opennebula", timeout=30)
    vids = [new_vm(one, f"frac-{c}", cpu=c, memory=64) for c in ("0.5", "0.25", "0.15", "0.1")]
    for vid in vids:
        wait_running(one, vid)
    assert share(one, 0) == (4 * 64 * 1024, 100, 4), "0.5+0.25+0.15+0.1 CPUs fill 1 CPU exactly"
    extra = new_vm(one, "frac-extra", cpu="0.05", memory=64)
    hold_for(one, extra, PENDING, 1.0)
    one.vm.action("terminate-hard", vids[3])  # frees 0.1 CPU
    wait_running(one, extra)
    assert share(one, 0) == (4 * 64 * 1024, 95, 4)
