#!/usr/bin/env python3
"""Cluster rows of scripts/bench (1 start latency, 3 sbatch overhead, 4 teardown, 5 throughput).

Two local clusters (scripts/cluster, one-sim ns driver, boot delay B) run side by side, each
with its own directory, bridge, network and ports, apart from the default dev cluster:
  cand  slurm-one as shipped (PrologSlurmctld provisions and waits for registration)
  base  SLURM_ONE_MODE=baseline: SLURM's stock power-save path (a ResumeProgram that
        provisions and exits; the job starts at slurmctld's periodic check)
Row 1 alternates single jobs between the two; every job is pinned (-w) to a powered-down
node so each one gets a fresh VM. Both clusters are always brought down, also on errors.
Writes a JSON list of result rows (same format as the Rust benches) to --out.
Not a test: no assertion on timings; it exits non-zero only if the machinery failed.
"""

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
import xmlrpc.client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOGS = os.path.join(ROOT, "target", "bench", "logs")
BOOT = 3.0  # B, seconds (SLURM_ONE_BOOT_DELAY)
CPU_SHARE = "0.25"  # every job's VM: 2 VCPU x 0.25 (see benches/baseline/resume.rs)
JOB_ARGS = ["-N1", "--mem=256M", f"--one-cpu-share={CPU_SHARE}", "-o", "/dev/null", "-J", "bench"]
SUSPEND_TIMEOUT = 20.0  # scripts/cluster's slurm.conf
SUSPEND_TIME = 300.0  # idem: the stock path keeps an idle node (and its VM) this long
JOB_SECONDS = 1.0
START_TIMEOUT = 120  # row 1: a job not started by then counts as failed


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] bench: {msg}", file=sys.stderr, flush=True)


def pct(values, p):
    """Nearest-rank percentile; NaN when empty."""
    v = sorted(x for x in values if x is not None and not math.isnan(x))
    if not v:
        return float("nan")
    rank = math.ceil(p / 100.0 * len(v))
    return v[min(max(rank, 1), len(v)) - 1]


# The SLURM series the clusters run (--slurm); "" for the host's.
SERIES = ""
# The version the clusters' scontrol reports, for every row's params.
SLURM_VERSION = None


def rnd(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(x, 3)


def row(id_, title, figure, baseline, units, target=None, params=None):
    """A result row; ratio = figure / baseline. target: ("ratio", x) or ("figure", x), i.e. <= x."""
    ratio = figure / baseline if (baseline not in (None, 0) and figure is not None
                                  and math.isfinite(baseline) and math.isfinite(figure)) else None
    text, met = None, None
    if target:
        kind, x = target
        val = ratio if kind == "ratio" else figure
        text = f"ratio <= {x}" if kind == "ratio" else f"figure <= {x} {units}"
        met = None if val is None or not math.isfinite(val) else val <= x
    return {"id": id_, "title": title, "figure": rnd(figure), "baseline": rnd(baseline),
            "ratio": rnd(ratio), "units": units, "target": text, "met": met,
            "params": {**(params or {}), "slurm": SLURM_VERSION}}


# --- munged ------------------------------------------------------------------------------

class Munge:
    """Keeps a munged running for the whole run. scripts/cluster starts one only if none runs
    and then stops it by name on `down`, which would break any other cluster sharing it; so
    the bench makes sure one runs before `up` (its clusters then never own it), restarts it
    if someone else's `down` stopped it, and stops the one it started (by pid) at the end
    unless another slurmctld still uses it."""

    def __init__(self):
        self.started = []
        self.lock = threading.Lock()

    def ensure(self):
        with self.lock:
            if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
                return
            log("munged is not running; starting it")
            subprocess.run(["mkdir", "-p", "/run/munge"], check=True)
            subprocess.run(["chown", "munge:munge", "/run/munge"], check=False)
            if not os.path.exists("/etc/munge/munge.key"):
                subprocess.run(["mungekey", "--create", "--force"], check=False)
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
            for _ in range(50):
                if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            try:
                with open("/run/munge/munged.pid") as f:
                    self.started.append(int(f.read().strip()))
            except (OSError, ValueError):
                log("warning: cannot read munged's pid; it will be left running")

    def stop_ours(self):
        for pid in self.started:
            others = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).stdout.split()
            if others:
                log(f"leaving munged (pid {pid}) running: another slurmctld uses it")
                continue
            try:
                os.kill(pid, 15)
                log(f"stopped the munged this run started (pid {pid})")
            except ProcessLookupError:
                pass


# --- a cluster -----------------------------------------------------------------------------

class Cluster:
    def __init__(self, name, mode, nodes, dev, bridge, network, sim_port, ctld_port, slurmd_port, munge):
        self.name, self.mode, self.nodes, self.dev = name, mode, nodes, dev
        self.munge = munge
        self.vars = {
            "SLURM_ONE_DEV": dev, "SLURM_ONE_BRIDGE": bridge, "SLURM_ONE_NETWORK": network,
            "SLURM_ONE_SIM_PORT": str(sim_port), "SLURM_ONE_CTLD_PORT": str(ctld_port),
            "SLURM_ONE_SLURMD_PORT": str(slurmd_port), "SLURM_ONE_BOOT_DELAY": f"{BOOT:g}s",
            "SLURM_ONE_MODE": mode,
            # Two clusters run at once (candidate and baseline): a packaged install has one
            # /etc/slurm-one per system, so each gets the programs copied to its own dir.
            "SLURM_ONE_INSTALL": "build",
            "SLURM_ONE_SLURM": SERIES,
            # Guests start B after creation and report that as their boot time, as real VMs
            # do; with one-sim's default (guest at once, boot time 1-2 s before creation)
            # SLURM ignores registrations that arrive after the resume request.
            "SLURM_ONE_GUEST_BOOT": f"{BOOT:g}",
        }
        self.conf = os.path.join(dev, "etc", "slurm.conf")
        self.config = os.path.join(dev, "etc", "slurm-one.toml")
        self.is_up = False
        self.poller = None

    def env(self, conf=None):
        e = dict(os.environ)
        e.update(self.vars)
        e["SLURM_CONF"] = conf or self.conf
        e["SLURM_ONE_CONFIG"] = self.config
        # A series other than the host's: scripts/cluster's wrappers run its clients in its root.
        path = [os.path.join(self.dev, "bin")]
        if SERIES and os.path.isdir(os.path.join(self.dev, "slurm-bin")):
            path.insert(0, os.path.join(self.dev, "slurm-bin"))
        e["PATH"] = ":".join(path) + ":" + e.get("PATH", "/usr/bin:/bin")
        return e

    def script(self, *args, check=True):
        os.makedirs(LOGS, exist_ok=True)
        out = os.path.join(LOGS, f"{self.name}-{args[0]}.log")
        with open(out, "w") as f:
            r = subprocess.run([os.path.join(ROOT, "scripts", "cluster"), *args], env=self.env(),
                               stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        if check and r.returncode != 0:
            with open(out) as f:
                tail = f.read().strip().splitlines()[-15:]
            raise RuntimeError(f"scripts/cluster {' '.join(args)} ({self.name}) failed:\n" + "\n".join(tail))

    def up(self):
        if os.path.isdir(self.dev):
            log(f"{self.name}: {self.dev} exists (an earlier run?); bringing it down first")
            self.down()
        self.munge.ensure()
        log(f"{self.name}: scripts/cluster up {self.nodes} (mode {self.mode}, {self.dev})")
        self.is_up = True
        self.script("up", str(self.nodes))
        self.poller = NodePoller(self)
        self.poller.start()
        if not wait(90, lambda: self.poller.latest and all(
                allocatable(f) for f in self.poller.latest.values())):
            raise RuntimeError(f"{self.name}: nodes not all idle~ 90 s after up: {self.poller.latest}")

    def down(self):
        if self.poller:
            self.poller.stop()
        dst = os.path.join(LOGS, self.name)
        if os.path.isdir(os.path.join(self.dev, "log")):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(os.path.join(self.dev, "log"), dst, dirs_exist_ok=True)
        log(f"{self.name}: scripts/cluster down")
        self.script("down", check=False)
        self.is_up = False

    def run(self, argv, conf=None, timeout=60):
        return subprocess.run(argv, env=self.env(conf), capture_output=True, text=True, timeout=timeout)

    def sbatch(self, args, conf=None):
        for attempt in range(3):
            r = self.run(["sbatch", "--parsable", *args], conf=conf)
            if r.returncode == 0:
                return int(r.stdout.strip().split(";")[0])
            log(f"{self.name}: sbatch failed ({r.stderr.strip()}); retrying")
            self.munge.ensure()
            time.sleep(1)
        raise RuntimeError(f"{self.name}: sbatch {' '.join(args)}: {r.stderr.strip()}")

    def node_flags(self):
        r = self.run(["scontrol", "show", "node", "-o"], timeout=30)
        out = {}
        for line in r.stdout.splitlines():
            m = re.search(r"NodeName=(\S+) .*?State=(\S+)", line)
            if m:
                out[m.group(1)] = set(m.group(2).split("+"))
        return out

    def one(self):
        with open(self.config, "rb") as f:
            cfg = tomllib.load(f)
        with open(cfg["opennebula"]["auth_file"]) as f:
            session = f.read().strip()
        return xmlrpc.client.ServerProxy(cfg["opennebula"]["endpoint"]), session

    def vms(self):
        """[(id, state, lcm, job)] of every VM (also DONE) tagged with this cluster."""
        one, session = self.one()
        ok, body = one.one.vmpool.infoextended(session, -2, -1, -1, -2)[:2]
        if not ok:
            raise RuntimeError(f"{self.name}: one.vmpool.infoextended: {body}")
        out = []
        for vm in ET.fromstring(body).findall("VM"):
            ut = lambda k: (vm.findtext(f"USER_TEMPLATE/{k}") or "").strip()
            if ut("SLURM_CLUSTER"):
                out.append((int(vm.findtext("ID")), int(vm.findtext("STATE")),
                            int(vm.findtext("LCM_STATE")), ut("SLURM_JOB_ID")))
        return out

    def table_rows(self):
        r = self.run([os.path.join(self.dev, "bin", "slurm-one"), "status"])
        return [l for l in r.stdout.splitlines()[1:] if l.strip()]

    def teardowns(self):
        """{job: time} of each 'teardown terminated N VMs' line with N > 0 in slurm-one.log."""
        out = {}
        try:
            with open(os.path.join(self.dev, "log", "slurm-one.log")) as f:
                for line in f:
                    m = re.match(r"(\d+\.\d+) (\S+)\[\d+\]: \w+: job (\d+): teardown terminated (\d+) VMs", line)
                    if m and int(m.group(4)) > 0:
                        out.setdefault(int(m.group(3)), float(m.group(1)))
        except FileNotFoundError:
            pass
        return out

    def allocations(self):
        """{job: time} slurmctld allocated nodes to each job (its log, millisecond stamps)."""
        out = {}
        try:
            with open(os.path.join(self.dev, "log", "slurmctld.log")) as f:
                for line in f:
                    m = re.match(r"\[(\S+?)(\.\d+)?\] (?:sched: Allocate|sched/backfill: _start_job: Started) JobId=(\d+)", line)
                    if m:
                        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)
                        out.setdefault(int(m.group(3)), t)
        except FileNotFoundError:
            pass
        return out

    def requeues(self, jobs):
        """[(job, line)] of slurmctld's requeue log lines about these jobs ("requeue job
        JobId=N due to failure of node X", "Requeuing JobId=N", ...), the why included."""
        wanted, out = set(jobs), []
        try:
            with open(os.path.join(self.dev, "log", "slurmctld.log")) as f:
                for line in f:
                    if "equeu" not in line:
                        continue
                    m = re.search(r"JobId=(\d+)", line)
                    if m and int(m.group(1)) in wanted:
                        out.append((int(m.group(1)), line.strip()))
        except FileNotFoundError:
            pass
        return out

    def slurmds(self):
        r = subprocess.run(["pgrep", "-f", f"slurmd -N vm[0-9]+ -f {self.dev}/"], capture_output=True, text=True)
        return r.stdout.split()


def allocatable(flags):
    """idle~: powered down and free, i.e. the next job gets a fresh VM on it."""
    return ("IDLE" in flags and "POWERED_DOWN" in flags
            and not flags & {"POWERING_DOWN", "POWERING_UP", "DOWN", "DRAIN", "NOT_RESPONDING"})


def wait(secs, cond, every=0.25):
    end = time.time() + secs
    while True:
        v = cond()
        if v:
            return v
        if time.time() >= end:
            return None
        time.sleep(every)


class NodePoller(threading.Thread):
    """Records every node's state flags every 0.5 s: when did a node become allocatable."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.c = cluster
        self.latest = {}
        self.history = {}  # node -> [(t, allocatable)] at each change
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        last_munge = 0.0
        while not self.halt.is_set():
            t = time.time()
            try:
                flags = self.c.node_flags()
            except Exception:  # a slow scontrol: try again next tick
                flags = {}
            with self.lock:
                for n, f in flags.items():
                    a = allocatable(f)
                    h = self.history.setdefault(n, [])
                    if not h or h[-1][1] != a:
                        h.append((t, a))
                if flags:
                    self.latest = flags
            if t - last_munge > 5:
                self.c.munge.ensure()
                last_munge = t
            self.halt.wait(0.5)

    def stop(self):
        self.halt.set()

    def allocatable_after(self, node, t0):
        with self.lock:
            for t, a in self.history.get(node, []):
                if t > t0 and a:
                    return t
        return None

    def idle_nodes(self):
        with self.lock:
            return sorted((n for n, f in self.latest.items() if allocatable(f)),
                          key=lambda n: int(re.sub(r"\D", "", n) or 0))


# --- jobs ----------------------------------------------------------------------------------

class Markers:
    """The job script writes `date +%s.%N` to CLUSTER-start.JOB (one line per run) and
    CLUSTER-end.JOB in a directory under /tmp, which the VMs' mount namespaces share with the
    host. One script per cluster: both are named dev and count job ids from 1."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="slurm-one-bench.", dir="/tmp")
        os.chmod(self.dir, 0o755)

    def script(self, cluster):
        path = os.path.join(self.dir, f"{cluster.name}-job.sh")
        if not os.path.exists(path):
            pre = f"{self.dir}/{cluster.name}"
            with open(path, "w") as f:
                f.write(f"#!/bin/sh\ndate +%s.%N >> {pre}-start.$SLURM_JOB_ID\n"
                        f"sleep {JOB_SECONDS:g}\ndate +%s.%N > {pre}-end.$SLURM_JOB_ID\n")
            os.chmod(path, 0o755)
        return path

    def read(self, cluster, kind, job):
        """Times in the marker (several if the job ran more than once), or []."""
        try:
            with open(os.path.join(self.dir, f"{cluster.name}-{kind}.{job}")) as f:
                return [float(x) for x in f.read().split() if x]
        except (FileNotFoundError, ValueError):
            return []

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def submit_job(c, markers, pin=None):
    args = list(JOB_ARGS)
    if pin:
        args += ["-w", pin]
    script = markers.script(c)
    t = time.time()
    return c.sbatch([*args, script]), t


def job_summary(c, job):
    r = c.run(["scontrol", "show", "job", "-o", str(job)])
    m = re.findall(r"(JobState|Reason|Restarts|NodeList|AdminComment)=(\S*)", r.stdout)
    return " ".join(f"{k}={v}" for k, v in m) or "record gone"


# --- rows ----------------------------------------------------------------------------------

def start_latency(cand, base, markers, n):
    """Row 1: n single jobs per cluster, alternating, each on a powered-down node. A job is
    submitted a random time (uniform over one period) after the previous job of its cluster
    started: the stock path's jobs start at slurmctld's 30 s periodic check, and submitting
    right after that start would sample the same phase of the period every time."""
    results = {cand.name: [], base.name: []}
    recent = {cand.name: [], base.name: []}
    period = {cand.name: 1.0, base.name: 30.0}  # cand: slurmctld's 1 s scheduling loops
    rng = random.Random(2026)
    not_before = {cand.name: 0.0, base.name: time.time() + rng.uniform(0, 30)}
    for i in range(n):
        order = (cand, base) if i % 2 == 0 else (base, cand)
        for c in order if base.is_up else (cand,):
            time.sleep(max(0.0, not_before[c.name] - time.time()))
            def pick():
                free = [x for x in c.poller.idle_nodes() if x not in recent[c.name][-6:]]
                return free[0] if free else None
            node = wait(120, pick)
            if not node:
                raise RuntimeError(f"{c.name}: no powered-down node free within 120 s: {c.poller.latest}")
            recent[c.name].append(node)
            job, t_submit = submit_job(c, markers, pin=node)
            starts = wait(START_TIMEOUT, lambda: markers.read(c, "start", job), every=0.05)
            if not starts:
                log(f"row 1 {c.name}: job {job} on {node} did not start within {START_TIMEOUT} s "
                    f"({job_summary(c, job)}); cancelled, counted as failed")
                c.run(["scancel", str(job)])
                results[c.name].append({"job": job, "node": node, "submit": t_submit, "start": None,
                                        "latency": None})
                continue
            lat = starts[0] - t_submit
            not_before[c.name] = starts[0] + rng.uniform(0, period[c.name])
            log(f"row 1 {c.name}: job {job} on {node}: submit->start {lat:.2f} s (overhead {lat - BOOT:.2f} s)")
            results[c.name].append({"job": job, "node": node, "submit": t_submit, "start": starts[0],
                                    "latency": lat})
    return results


def teardown_samples(c, markers, jobs, deadline):
    """Row 4 samples of the given row-1 jobs: end -> last terminate, end -> node idle~."""
    def collect():
        td = c.teardowns()
        out = []
        for j in jobs:
            end = markers.read(c, "end", j["job"])
            t_term = td.get(j["job"])
            t_free = c.poller.allocatable_after(j["node"], end[0]) if end else None
            out.append({"job": j["job"], "node": j["node"], "end": end[0] if end else None,
                        "terminate": t_term, "allocatable": t_free})
        return out
    done = wait(max(deadline - time.time(), 0), lambda: (lambda s: s if all(
        x["terminate"] and x["allocatable"] for x in s) else None)(collect()), every=2)
    return done or collect()


def sbatch_overhead(c, runs):
    """Row 3: sbatch --hold --wrap true with the plugin, without any, and with the floor (a C
    plugin registering the same two options, benches/baseline/spank_floor.c), in turn."""
    etc = os.path.join(c.dev, "etc")
    empty = os.path.join(etc, "plugstack-empty.conf")
    open(empty, "w").close()
    floor_so = os.path.join(c.dev, "bin", "spank_floor.so")
    src = os.path.join(ROOT, "benches", "baseline", "spank_floor.c")
    # Against the headers of the cluster's series (a plugin loads only into its own series).
    root_file = os.path.join(etc, "slurm-root")
    root = open(root_file).read().strip() if os.path.exists(root_file) else ""
    include = ["-I", os.path.join(root, "usr", "include")] if root else []
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", *include, "-o", floor_so, src], check=True)
    floor_stack = os.path.join(etc, "plugstack-floor.conf")
    with open(floor_stack, "w") as f:
        f.write(f"required {floor_so}\n")
    confs = {"plugin": c.conf}
    with open(c.conf) as f:
        text = f.read()
    for name, stack in (("none", empty), ("floor", floor_stack)):
        confs[name] = os.path.join(etc, f"slurm-{name}.conf")
        with open(confs[name], "w") as g:
            g.write(re.sub(r"(?m)^PlugStackConfig=.*$", f"PlugStackConfig={stack}", text))
    times = {k: [] for k in confs}
    jobs = []
    args = ["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "true"]
    order = list(confs)
    for i in range(runs):
        # Each round runs all three, in a rotating order.
        for which in order[i % 3:] + order[:i % 3]:
            env = c.env(confs[which])
            t = time.perf_counter()
            r = subprocess.run(args, env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(f"sbatch ({which}) failed: {r.stderr.strip()}")
            times[which].append(dt * 1000)
            jobs.append(r.stdout.strip().split(";")[0])
    for k in range(0, len(jobs), 50):
        c.run(["scancel", *jobs[k:k + 50]])
    return times


class CpuLoad:
    """Keeps every core busy (one spinning process per CPU) while it is entered."""

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(os.cpu_count() or 1)]
        log(f"load: {len(self.procs)} spinning processes")
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def throughput(c, markers, n):
    """Row 5: n one-node 1 s jobs at once; wall from the first submit to the last job end."""
    jobs = []
    t0 = time.time()
    for _ in range(n):
        jobs.append(submit_job(c, markers)[0])
    t_sub = time.time() - t0
    log(f"row 5: {n} jobs submitted in {t_sub:.1f} s")
    last_report = [0.0]

    stuck = set()

    def all_ended():
        left = [j for j in jobs if not markers.read(c, "end", j)]
        if time.time() - last_report[0] > 60:
            log(f"row 5: {n - len(left)}/{n} jobs ended, {len(c.requeues(jobs))} requeues so far")
            last_report[0] = time.time()
            # A job held (too many failed prologs) or gone without running never ends.
            q = c.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(map(str, left))]) if left else None
            live = {}
            for line in (q.stdout.splitlines() if q else []):
                parts = line.split(None, 2)
                if len(parts) >= 2:
                    live[int(parts[0])] = (parts[1], parts[2] if len(parts) > 2 else "")
            for j in left:
                st = live.get(j)
                if st is None or "held" in st[1].lower():
                    stuck.add(j)
        return not left or all(j in stuck for j in left)
    wait(max(1800, n * 30), all_ended, every=1)
    failed = [j for j in jobs if not markers.read(c, "end", j)]
    if failed:
        log(f"row 5: {len(failed)} jobs never ran to the end (held or gone), e.g. {failed[0]}: "
            f"{job_summary(c, failed[0])}; cancelling them")
        c.run(["scancel", *map(str, failed)])
    done = [j for j in jobs if j not in failed]
    if not done:
        raise RuntimeError("row 5: no job ran")
    t_last = max(markers.read(c, "end", j)[0] for j in done)
    wall = t_last - t0
    runs = [len(markers.read(c, "start", j)) for j in jobs]
    # Nothing may be left once the nodes had time to power down.
    def leaks():
        vms = [v for v in c.vms() if v[1] != 6]
        rows = c.table_rows()
        nodes = {n_: sorted(f) for n_, f in c.node_flags().items() if not allocatable(f)}
        procs = c.slurmds()
        return {"vms_not_done": vms, "table_rows": rows, "nodes_not_idle": nodes, "slurmd_processes": procs}
    clean = wait(SUSPEND_TIMEOUT + 100, lambda: (lambda l: l if not any(l.values()) else None)(leaks()), every=2)
    left = clean or leaks()
    t_clean = time.time() - t0
    all_vms = [v for v in c.vms() if v[3].isdigit() and int(v[3]) in set(jobs)]
    per_job = {}
    for v in all_vms:
        per_job[int(v[3])] = per_job.get(int(v[3]), 0) + 1
    extra_vms = sum(max(per_job.get(j, 0) - 1, 0) for j in jobs)
    requeues = c.requeues(jobs)
    # Why, in slurmctld's words, without the time stamp and job id: how often each.
    reasons = {}
    for _, line in requeues:
        why = re.sub(r"JobId=\d+", "JobId=N", re.sub(r"^\[[^]]*\] ", "", line))
        reasons[why] = reasons.get(why, 0) + 1
    return {"jobs": n, "completed": len(done), "failed_or_held": len(failed), "wall": wall, "submit_seconds": t_sub, "clean_after": t_clean,
            "leaks": left, "leaked": sum(len(v) for v in left.values()),
            "jobs_run_more_than_once": sum(1 for r in runs if r > 1),
            "vms_created": len(all_vms), "jobs_with_more_than_one_vm": sum(1 for j in jobs if per_job.get(j, 0) > 1),
            "extra_vms": extra_vms,
            "jobs_retried": sum(1 for j, r in zip(jobs, runs) if r > 1 or per_job.get(j, 0) > 1),
            "requeued_jobs": len({j for j, _ in requeues}), "requeue_reasons": reasons}


def throughput_rows(c, markers, n, loaded):
    """Row 5's result rows for one run (loaded: every core kept busy meanwhile)."""
    with CpuLoad() if loaded else contextlib.nullcontext():
        tp = throughput(c, markers, n)
    nodes = c.nodes
    ideal_rate = nodes * 60.0 / (BOOT + JOB_SECONDS + SUSPEND_TIMEOUT)
    p5 = {"jobs": n, "nodes": nodes, "boot_delay_s": BOOT, "job_seconds": JOB_SECONDS, "loaded": loaded,
          "baseline": "bound: nodes x 60 / (B + job + SuspendTimeout), each node re-provisioned per job",
          **{k: (rnd(v) if isinstance(v, float) else v) for k, v in tp.items() if k != "leaks"},
          "leaks": tp["leaks"]}
    rate = tp["completed"] * 60.0 / tp["wall"]
    tag = "5. throughput" + (" (all cores loaded)" if loaded else "")
    key = "throughput_loaded" if loaded else "throughput"
    log(f"row 5{' loaded' if loaded else ''}: {n} jobs in {tp['wall']:.1f} s = {rate:.1f} jobs/min; "
        f"requeued {tp['requeued_jobs']} {tp['requeue_reasons'] or ''}; leftovers {tp['leaked']}, extra VMs {tp['extra_vms']}")
    return [
        row(f"{key}_rate", f"{tag}: {n} × 1 s jobs on {nodes} slots, jobs/min", rate, ideal_rate, "jobs/min", None, p5),
        row(f"{key}_wall", f"{tag}: wall for {n} jobs", tp["wall"], n * 60.0 / ideal_rate, "s", None, p5),
        row(f"{key}_requeues", f"{tag}: jobs requeued (reasons in params)", float(tp["requeued_jobs"]), None,
            "jobs", ("figure", 0), p5),
        row(f"{key}_leaks", f"{tag}: leftovers after the run (VMs, rows, nodes, slurmds)",
            float(tp["leaked"]), None, "items", ("figure", 0), p5),
        row(f"{key}_retries", f"{tag}: jobs failed, held, run twice or given a second VM",
            float(tp["failed_or_held"] + tp["jobs_retried"]), None, "jobs", ("figure", 0), p5),
    ]


# --- main ----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", default="1,3,4,5,5L",
                    help="which rows: 1, 3, 4 (from row 1's jobs), 5, 5L (row 5 with all cores loaded)")
    ap.add_argument("--slurm", default="",
                    help="SLURM series of both clusters (scripts/cluster up --slurm); default the host's")
    ap.add_argument("--no-baseline", action="store_true",
                    help="row 1 without the stock power-save cluster (its figures stay empty)")
    a = ap.parse_args()
    global SERIES
    SERIES = a.slurm
    q = a.quick
    want = set(a.rows.split(","))
    unknown = want - {"1", "3", "4", "5", "5L"}
    if unknown:
        ap.error(f"unknown rows {','.join(sorted(unknown))} (use 1, 3, 4, 5, 5L)")
    if "4" in want:
        want.add("1")
    n_start = 3 if q else 10
    n_sbatch = 10 if q else 60
    n_jobs = int(os.environ.get("BENCH_ROW5_JOBS") or (60 if q else 1000))
    cand_nodes, base_nodes = 24, (4 if q else 12)

    munge = Munge()
    cand = Cluster("cand", "default", cand_nodes, "/run/slurm-one-bench", "onebr9", "10.79.0.0/24",
                   2733, 6917, 6918, munge)
    base = Cluster("base", "baseline", base_nodes, "/run/slurm-one-bench-base", "onebr8", "10.78.0.0/24",
                   2833, 7017, 7018, munge)
    markers = Markers()
    rows = []
    t_all = time.time()
    clusters = (cand, base) if "1" in want and not a.no_baseline else (cand,)
    try:
        for c in clusters:
            c.up()
        global SLURM_VERSION
        SLURM_VERSION = cand.run(["scontrol", "--version"]).stdout.split()[-1]
        log(f"SLURM {SLURM_VERSION}")
        lat = None
        if "1" in want:
            got, lat = start_latency_rows(cand, base, markers, n_start)
            rows.extend(got)
        if "3" in want:
            rows.append(sbatch_row(cand, n_sbatch))
        # Row 5 on the slurm-one cluster (while the baseline's idle nodes wait for SuspendTime).
        if "5" in want:
            rows.extend(throughput_rows(cand, markers, n_jobs, loaded=False))
        if "5L" in want:
            rows.extend(throughput_rows(cand, markers, n_jobs, loaded=True))
        if "4" in want:
            rows.extend(teardown_rows(cand, base, markers, lat, n_start, q))
    finally:
        for c in clusters:
            if c.is_up:
                try:
                    c.down()
                except Exception as e:  # keep bringing the other one down
                    log(f"{c.name}: down failed: {e}")
        munge.stop_ours()
        markers.cleanup()
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)
        log(f"cluster rows done in {time.time() - t_all:.0f} s; wrote {a.out}")


def start_latency_rows(cand, base, markers, n_start):
    """Row 1. Returns its rows and its jobs (row 4 samples their teardown)."""
    rows = []
    lat = start_latency(cand, base, markers, n_start)
    over = {k: [x["latency"] - BOOT for x in v if x["latency"] is not None] for k, v in lat.items()}
    failed1 = {k: sum(1 for x in v if x["latency"] is None) for k, v in lat.items()}
    # Where the time goes: SLURM's scheduler (submit -> allocation), then the rest.
    split = {}
    for c in (cand, base):
        alloc = c.allocations()
        ok1 = [x for x in lat[c.name] if x["latency"] is not None and x["job"] in alloc]
        split[c.name] = {
            "submit_to_allocation_median_s": rnd(pct([alloc[x["job"]] - x["submit"] for x in ok1], 50)),
            "allocation_to_start_minus_B_median_s": rnd(pct([x["start"] - alloc[x["job"]] - BOOT for x in ok1], 50)),
        }
    p1 = {"jobs_each": n_start, "boot_delay_s": BOOT, "driver": "ns",
          "job": " ".join(JOB_ARGS) + " (pinned -w to a powered-down node; 1 s script)",
          "slurm_one": "PrologSlurmctld provisions, sets NodeAddr, waits for registration",
          "baseline": "stock power-save: ResumeProgram provisions + sets NodeAddr, no prolog",
          "order": "alternating single jobs, cand/base; each submitted U(0, period) after the "
                   "previous job of its cluster started (period 30 s base, 1 s cand)",
          "guest_boot": "slurmd starts B after VM creation, slurmd -b (SLURM_ONE_GUEST_BOOT)",
          "failed_jobs": failed1,
          "breakdown": split,
          "samples_s": {"slurm_one": [rnd(x) for x in over["cand"]],
                        "baseline": [rnd(x) for x in over["base"]]}}
    rows.append(row("start_overhead_median", "1. start latency − B, median (submit→job start)",
                    pct(over["cand"], 50), pct(over["base"], 50), "s", ("figure", 1.0), p1))
    rows.append(row("start_overhead_p90", "1. start latency − B, p90",
                    pct(over["cand"], 90), pct(over["base"], 90), "s", None, p1))
    return rows, lat


def sbatch_row(cand, n_sbatch):
    """Row 3 on the slurm-one cluster (the plugin is the same in both)."""
    t3 = sbatch_overhead(cand, n_sbatch)
    none3 = pct(t3["none"], 50)
    r = row("sbatch_median", "3. sbatch --wrap true, median (plugin vs none)",
            pct(t3["plugin"], 50), none3, "ms", ("ratio", 1.05),
            {"runs_each": n_sbatch, "order": "plugin, none, floor in rotating order",
                     "command": "sbatch --parsable --hold -o /dev/null --wrap true (held, then scancel)",
                     "without": "same slurm.conf with PlugStackConfig = an empty file",
                     "floor_ratio": rnd(pct(t3["floor"], 50) / none3),
                     "floor": "a C SPANK plugin registering the same two options (benches/baseline/spank_floor.c)",
                     "p90_ms": {k: rnd(pct(v, 90)) for k, v in t3.items()},
                     "median_ms": {k: rnd(pct(v, 50)) for k, v in t3.items()}})
    log(f"row 3: sbatch median {pct(t3['plugin'], 50):.2f} ms with the plugin, {none3:.2f} ms without,"
        f" {pct(t3['floor'], 50):.2f} ms with the C floor plugin")
    return r


def teardown_rows(cand, base, markers, lat, n_start, q):
    """Row 4 from row 1's jobs. The stock path frees a node only after SuspendTime."""
    rows = []
    ok = {k: [j for j in v if j["start"] is not None] for k, v in lat.items()}
    td = {"cand": teardown_samples(cand, markers, ok["cand"], time.time() + 120)}
    if q:
        td["base"] = []
        log("row 4: --quick does not wait SuspendTime (300 s) for the baseline's teardown")
    else:
        last_end = max([(markers.read(base, "end", j["job"]) or [time.time()])[0] for j in ok["base"]] or [time.time()])
        log(f"row 4: waiting for the baseline's SuspendTime teardown (until ~{time.strftime('%H:%M:%S', time.localtime(last_end + SUSPEND_TIME + SUSPEND_TIMEOUT + 30))})")
        td["base"] = teardown_samples(base, markers, ok["base"], last_end + SUSPEND_TIME + SUSPEND_TIMEOUT + 90)
    d = {k: {"terminate": [x["terminate"] - x["end"] for x in v if x["terminate"] and x["end"]],
             "allocatable": [x["allocatable"] - x["end"] for x in v if x["allocatable"] and x["end"]]}
         for k, v in td.items()}
    p4 = {"jobs_each": n_start, "slurm_one": "prolog marks the nodes POWER_DOWN_ASAP; slurmctld powers each down "
          "after its epilog, SuspendProgram terminates the VM and clears the row",
          "baseline": f"stock power-save: SuspendTime={SUSPEND_TIME:g} s idle, then SuspendProgram terminates",
          "suspend_timeout_s": SUSPEND_TIMEOUT, "measured": "job script's last line -> slurm-one.log "
          "'teardown terminated' line / node state polled every 0.5 s until idle~",
          "samples": {k: len(v["terminate"]) for k, v in d.items()},
          "baseline_measured": not q}
    for key, title in (("terminate", "4. teardown: job end → last VM terminate"),
                       ("allocatable", "4. teardown: job end → node allocatable (idle~)")):
        rows.append(row(f"teardown_{key}", title, pct(d["cand"][key], 50),
                        pct(d["base"][key], 50) if d["base"][key] else None, "s", None, p4))
    return rows


if __name__ == "__main__":
    # A bench stopped with SIGTERM (kill, timeout) still brings its clusters and the munged
    # it started down: main's `finally` runs for SystemExit, not for a signal's default.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    main()
