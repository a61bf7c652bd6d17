"""Shared fixtures and helpers of the one-sim conformance suite.

Every module gets its own one-sim process (module-scoped ``sim`` fixture), started on
``127.0.0.1:0`` with a temporary auth file and state directory, and killed at the end of the
module.  Tests that need a special host layout or boot delay start extra servers with the
``sim_factory`` fixture; those are stopped at the end of the module as well.

Paths:
  ONE_SIM     the one-sim binary (default: <repo>/target/release/one-sim)
  SHARED_DIR  the shared folder with opennebula/{API.md,samples,xsd} (default: <repo>/../shared)
"""

from __future__ import annotations

import http.client
import os
import queue
import re
import signal
import subprocess
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHARED_DIR = Path(os.environ.get("SHARED_DIR") or (REPO.parent / "shared")).resolve()
ONE_DIR = SHARED_DIR / "opennebula"
SAMPLES_DIR = ONE_DIR / "samples"
XSD_DIR = ONE_DIR / "xsd"
ONE_SIM = Path(os.environ.get("ONE_SIM") or (REPO / "target" / "release" / "one-sim"))

ADMIN_USER, ADMIN_PASSWORD = "oneadmin", "opennebula"
SESSION = f"{ADMIN_USER}:{ADMIN_PASSWORD}"
ALICE_SESSION = "alice:wonderland"
AUTH_LINES = [SESSION, ALICE_SESSION]

VERSION = "7.5.80"
BOOT_DELAY_S = 0.2  # what the default fixtures pass as --boot-delay
PER_TEST_TIMEOUT_S = int(os.environ.get("CONFORMANCE_TEST_TIMEOUT", "90"))

# VM STATE numbers (API.md §6)
INIT, PENDING, HOLD, ACTIVE, STOPPED, SUSPENDED, DONE = 0, 1, 2, 3, 4, 5, 6
POWEROFF, UNDEPLOYED = 8, 9
# LCM_STATE numbers used here
LCM_INIT, PROLOG, BOOT, RUNNING, SHUTDOWN = 0, 1, 2, 3, 12
BOOT_FAILURE = 36

STATE_NAMES = {
    0: "INIT", 1: "PENDING", 2: "HOLD", 3: "ACTIVE", 4: "STOPPED", 5: "SUSPENDED",
    6: "DONE", 8: "POWEROFF", 9: "UNDEPLOYED", 10: "CLONING", 11: "CLONING_FAILURE",
}
LCM_NAMES = {
    0: "LCM_INIT", 1: "PROLOG", 2: "BOOT", 3: "RUNNING", 4: "MIGRATE", 5: "SAVE_STOP",
    6: "SAVE_SUSPEND", 7: "SAVE_MIGRATE", 8: "PROLOG_MIGRATE", 9: "PROLOG_RESUME",
    10: "EPILOG_STOP", 11: "EPILOG", 12: "SHUTDOWN", 15: "CLEANUP_RESUBMIT", 16: "UNKNOWN",
    17: "HOTPLUG", 18: "SHUTDOWN_POWEROFF", 19: "BOOT_UNKNOWN", 20: "BOOT_POWEROFF",
    21: "BOOT_SUSPENDED", 22: "BOOT_STOPPED", 23: "CLEANUP_DELETE", 29: "SHUTDOWN_UNDEPLOY",
    30: "EPILOG_UNDEPLOY", 31: "PROLOG_UNDEPLOY", 32: "BOOT_UNDEPLOY", 35: "BOOT_MIGRATE",
    36: "BOOT_FAILURE", 39: "PROLOG_FAILURE", 66: "HOTPLUG_RESIZE",
}


def state_str(state: int, lcm: int) -> str:
    """oned's VirtualMachine::state_str(): the LCM name while ACTIVE, else the STATE name."""
    return LCM_NAMES.get(lcm, str(lcm)) if state == ACTIVE else STATE_NAMES.get(state, str(state))


# --------------------------------------------------------------------------------------------
# The one-sim process
# --------------------------------------------------------------------------------------------

LISTEN_RE = re.compile(r"one-sim listening on http://127\.0\.0\.1:(\d+)/RPC2")


@dataclass
class Sim:
    """One running one-sim process."""

    workdir: Path
    args: list[str]
    proc: subprocess.Popen | None = None
    port: int = 0
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/RPC2"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "one-sim.stderr"

    def stderr_tail(self, n: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self, timeout: float = 20.0) -> "Sim":
        if not ONE_SIM.exists():
            pytest.fail(f"one-sim binary not found at {ONE_SIM} (set ONE_SIM or build it with "
                        f"`cargo build --release --bin one-sim`)", pytrace=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        auth = self.workdir / "one_auth"
        auth.write_text("\n".join(AUTH_LINES) + "\n")
        state_dir = self.workdir / "state"
        state_dir.mkdir(exist_ok=True)
        cmd = [str(ONE_SIM), "--listen", "127.0.0.1:0", "--auth-file", str(auth),
               "--state-dir", str(state_dir), *self.args]
        err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=err, start_new_session=True)
        err.close()
        lines: queue.Queue = queue.Queue()

        def pump(stream, sink):
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.stdout_lines.append(text)
                sink.put(text)
            sink.put(None)

        threading.Thread(target=pump, args=(self.proc.stdout, lines), daemon=True).start()
        try:
            first = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            pytest.fail(f"one-sim printed nothing on stdout within {timeout}s; cmd={cmd}; "
                        f"stderr:\n{self.stderr_tail()}", pytrace=False)
        if first is None:
            rc = self.proc.wait(timeout=5)
            pytest.fail(f"one-sim exited (rc={rc}) before listening; cmd={cmd}; "
                        f"stderr:\n{self.stderr_tail()}", pytrace=False)
        m = LISTEN_RE.fullmatch(first)
        if not m:
            self.stop()
            pytest.fail(f"first stdout line of one-sim is {first!r}, expected "
                        f"'one-sim listening on http://127.0.0.1:PORT/RPC2'", pytrace=False)
        self.port = int(m.group(1))
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def sim_args(*, hosts: str | None = None, boot_delay: str = "200ms", driver: str = "dummy",
             dummy_guest: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    # Everything here is compared with oned, whose dummy driver has no guest: nothing reports
    # READY unless a test sets it (one-sim's default, --dummy-guest true, simulates a guest).
    args = ["--driver", driver, "--boot-delay", boot_delay,
            "--dummy-guest", "true" if dummy_guest else "false"]
    if hosts:
        args += ["--hosts", hosts]
    return args + list(extra)


@pytest.fixture(scope="module")
def sim_factory(tmp_path_factory):
    """Start extra one-sim servers: ``sim_factory(hosts="1x1cpu:4G", boot_delay="5s")``."""
    started: list[Sim] = []

    def start(**kw) -> Sim:
        wd = tmp_path_factory.mktemp("one-sim")
        s = Sim(workdir=wd, args=sim_args(**kw)).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def sim(request, sim_factory) -> Sim:
    """The module's one-sim; a module may set SIM_KWARGS = dict(hosts=..., boot_delay=...)."""
    kwargs = getattr(request.module, "SIM_KWARGS", {})
    return sim_factory(**kwargs)


@pytest.fixture(scope="module")
def one(sim):
    """The official pyone client, unchanged, bound to the module's one-sim."""
    import pyone

    return pyone.OneServer(sim.url, session=SESSION, timeout=30)


@pytest.fixture(autouse=True)
def _per_test_deadline():
    """A hard per-test deadline so that a hung server cannot hang the suite."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {PER_TEST_TIMEOUT_S}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(PER_TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------------------------
# Raw XML-RPC helpers
# --------------------------------------------------------------------------------------------

@dataclass
class HttpReply:
    status: int
    reason: str
    headers: dict
    body: bytes


def http_request(url: str, body: bytes | None, *, method: str = "POST", path: str | None = None,
                 headers: dict | None = None, timeout: float = 30.0) -> HttpReply:
    """One HTTP exchange on a fresh connection. Raises ConnectionError-like errors as is."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
    host, port, default_path = m.group(1), int(m.group(2)), m.group(3) or "/RPC2"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = {"Content-Type": "text/xml"}
        hdrs.update(headers or {})
        conn.request(method, path or default_path, body=body, headers=hdrs)
        r = conn.getresponse()
        return HttpReply(r.status, r.reason, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def post(url: str, body: bytes, **kw) -> HttpReply:
    return http_request(url, body, **kw)


def dumps_call(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(tuple(params), methodname=method).encode()


def call_raw(url: str, method: str, *params) -> tuple[HttpReply, object]:
    """POST an XML-RPC call built by xmlrpc.client; return (reply, parsed) where parsed is the
    response value (a list for OpenNebula methods) or an xmlrpc.client.Fault."""
    reply = post(url, dumps_call(method, *params))
    return reply, parse_response(reply.body)


def parse_response(body: bytes):
    try:
        return xmlrpc.client.loads(body)[0][0]
    except xmlrpc.client.Fault as f:
        return f


def call(url: str, method: str, *params):
    reply, parsed = call_raw(url, method, *params)
    assert reply.status == 200, f"{method}: HTTP {reply.status} {reply.body[:300]!r}"
    return parsed


def call_ok(url: str, method: str, *params):
    """Call and require an OpenNebula success array; return its value."""
    r = call(url, method, *params)
    assert not isinstance(r, xmlrpc.client.Fault), f"{method}{params[1:]}: fault {r}"
    assert isinstance(r, list) and len(r) == 3 and r[0] is True and r[2] == 0, \
        f"{method}{params[1:]}: expected [True, value, 0], got {r!r}"
    return r[1]


def assert_alive(url: str) -> None:
    """The server still answers one.system.version correctly."""
    r = call(url, "one.system.version", SESSION)
    assert r == [True, VERSION, 0], f"server no longer answers one.system.version: {r!r}"


def vm_state(url: str, vmid: int) -> tuple[int, int, str]:
    xml = call_ok(url, "one.vm.info", SESSION, vmid)
    s = int(re.search(r"<STATE>(\d+)</STATE>", xml).group(1))
    l = int(re.search(r"<LCM_STATE>(\d+)</LCM_STATE>", xml).group(1))
    return s, l, xml


# --------------------------------------------------------------------------------------------
# Waiting for VM states (deadline-based)
# --------------------------------------------------------------------------------------------

def wait_vm(one, vmid: int, state: int, lcm: int | None = None, timeout: float = 10.0,
            interval: float = 0.005, seen: list | None = None):
    """Poll one.vm.info through pyone until STATE (and LCM_STATE) match; return the VM.

    ``seen`` (if given) receives the de-duplicated list of (STATE, LCM_STATE) observed."""
    deadline = time.monotonic() + timeout
    seen = [] if seen is None else seen
    while True:
        vm = one.vm.info(vmid)
        cur = (vm.STATE, vm.LCM_STATE)
        if not seen or seen[-1] != cur:
            seen.append(cur)
        if vm.STATE == state and (lcm is None or vm.LCM_STATE == lcm):
            return vm
        if time.monotonic() > deadline:
            raise AssertionError(
                f"VM {vmid} did not reach STATE={state} LCM_STATE={lcm} within {timeout}s; "
                f"observed (STATE, LCM_STATE): {seen}")
        time.sleep(interval)


def wait_running(one, vmid: int, timeout: float = 10.0, seen: list | None = None):
    return wait_vm(one, vmid, ACTIVE, RUNNING, timeout=timeout, seen=seen)


def wait_url_vm(url: str, vmid: int, state: int, lcm: int | None = None, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        s, l, xml = vm_state(url, vmid)
        if not seen or seen[-1] != (s, l):
            seen.append((s, l))
        if s == state and (lcm is None or l == lcm):
            return xml
        if time.monotonic() > deadline:
            raise AssertionError(f"VM {vmid} did not reach {state}/{lcm} in {timeout}s; "
                                 f"seen {seen}")
        time.sleep(0.005)


def hold_for(one, vmid: int, state: int, seconds: float, lcm: int | None = None):
    """Assert that the VM stays in STATE (and LCM_STATE) during the whole window."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        vm = one.vm.info(vmid)
        assert vm.STATE == state and (lcm is None or vm.LCM_STATE == lcm), \
            f"VM {vmid} left {state}/{lcm}: now {vm.STATE}/{vm.LCM_STATE}"
        time.sleep(0.02)


def vm_template(name: str | None = None, cpu: str = "0.25", memory: int | str = 128,
                vcpu: int | None = None, extra: str = "") -> str:
    lines = []
    if name is not None:
        lines.append(f'NAME="{name}"')
    lines.append(f'CPU="{cpu}"')
    lines.append(f'MEMORY="{memory}"')
    if vcpu is not None:
        lines.append(f'VCPU="{vcpu}"')
    if extra:
        lines.append(extra.rstrip("\n"))
    return "\n".join(lines) + "\n"
