#!/usr/bin/env python3
"""Row 7 of scripts/bench: real guests on one-sim's qemu driver (TCG), on a local cluster of
2 slots (`scripts/cluster up --vm qemu 2`, its own directory, bridge, network and ports).

  7a  boot time: qemu process start -> job RUNNING (the guest booted, its contextualization
      ran slurmd, slurmd registered, PrologSlurmctld returned), median of N one-node jobs
  7b  memory per VM: the qemu process's RSS while its job runs (VM MEMORY 512 MiB)
  7c  live-migration downtime of a running job's VM (QEMU's own figure, query-migrate), and
      the whole `slurm-one migrate` call as the params' wall_ms

Each job is alone on the cluster, so a boot has both cores (two TCG guests booting at once
take about twice as long each). Writes the rows as JSON to --out."""

import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster as cl  # noqa: E402  (the shared cluster helpers of scripts/bench)


def proc_start_epoch(pid):
    """When process pid started, in seconds since the epoch (/proc/<pid>/stat field 22)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[19])
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def qemu_pid(c, vm_id):
    d = os.path.join(c.dev, "state", "one-sim", "qemu", f"vm-{vm_id}")
    try:
        with open(os.path.join(d, "slot")) as f:
            slot = f.read().strip()
        with open(os.path.join(d, f"qemu-{slot}.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def job_vm(c, job):
    for vm_id, _state, _lcm, vm_job in c.vms():
        if vm_job == str(job):
            return vm_id
    return None


def job_state(c, job):
    r = c.run(["squeue", "-h", "--states=all", "-j", str(job), "-o", "%T"])
    return r.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--slurm", default="")
    a = ap.parse_args()
    cl.SERIES = a.slurm
    munge = cl.Munge()
    c = cl.Cluster("qemu", "default", 2, "/run/slurm-one-bench-qemu", "onebr7", "10.76.0.0/24",
                   2933, 7117, 7118, munge)
    c.vars["SLURM_ONE_VM"] = "qemu"
    boots, rss, params = [], [], {"jobs": a.jobs, "accel": "tcg", "memory_mib": 512}
    migration = None
    try:
        c.up()
        cl.SLURM_VERSION = c.run(["scontrol", "--version"]).stdout.split()[-1]
        for i in range(a.jobs):
            last = i == a.jobs - 1
            job = c.sbatch(["-N1", "--mem=512M", "-D", "/tmp", "-o", "/dev/null", "--wrap",
                            "sleep 40" if last else "sleep 10"])
            pid, vm, started, running = None, None, None, None
            deadline = time.time() + 600
            while time.time() < deadline:
                if vm is None:
                    vm = job_vm(c, job)
                if vm is not None and pid is None:
                    pid = qemu_pid(c, vm)
                    if pid:
                        started = proc_start_epoch(pid)
                if job_state(c, job) == "RUNNING":
                    running = time.time()
                    break
                time.sleep(0.2)
            if not (running and started):
                raise RuntimeError(f"job {job} did not run in real guest within 600 s")
            boots.append(running - started)
            time.sleep(5)
            rss.append(rss_mib(pid))
            cl.log(f"job {job}: VM {vm}, qemu {pid}: RUNNING {running - started:.1f} s after "
                   f"qemu started; qemu RSS {rss[-1]:.0f} MiB")
            if last:
                sim_log = os.path.join(c.dev, "log", "one-sim.log")
                t0 = time.time()
                m = c.run(["slurm-one", "migrate", "--job", str(job)], timeout=300)
                wall = (time.time() - t0) * 1000
                if m.returncode != 0:
                    raise RuntimeError(f"slurm-one migrate failed: {m.stderr.strip()}")
                with open(sim_log) as f:
                    lines = [x for x in f if f"VM {vm}: live-migrated" in x]
                d = re.search(r"downtime (\d+) ms", lines[-1]) if lines else None
                if d:
                    migration = (int(d.group(1)), wall)
                    cl.log(f"VM {vm}: {lines[-1].strip()}; slurm-one migrate took {wall:.0f} ms")
            cl.wait(120, lambda: job_state(c, job) in ("COMPLETED", ""))
            cl.wait(120, lambda: all(cl.allocatable(f) for f in c.poller.latest.values()))
    finally:
        if c.is_up:
            c.down()
        munge.stop_ours()
    rows = []
    if boots:
        rows.append(cl.row("7a", "7. qemu VM: qemu start → slurmd registered, job RUNNING (median)",
                           statistics.median(boots), None, "s",
                           params={**params, "samples_s": [round(b, 1) for b in boots]}))
    if rss:
        rows.append(cl.row("7b", "7. qemu VM: host memory per VM (qemu RSS, 512 MiB guest)",
                           statistics.median(rss), None, "MiB",
                           params={**params, "samples_mib": [round(x) for x in rss]}))
    if migration:
        rows.append(cl.row("7c", "7. qemu VM: live-migration downtime under a running job",
                           migration[0], None, "ms",
                           params={**params, "wall_ms": round(migration[1])}))
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=2)
    return 0 if len(rows) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
