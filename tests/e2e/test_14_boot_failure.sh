#!/usr/bin/env bash
# A VM of the job goes BOOT_FAILURE while the prolog waits for it to boot: a watcher polls
# one-sim every 50 ms and, the moment the job's VM exists, forces it into BOOT_FAILURE
# (sim.vm.fail). Expects: the job is requeued; its AdminComment starts with "slurm-one:" and
# names the VM (its id) and BOOT_FAILURE; the VM is ended (DONE); no row is left.
# Bounded at about 120 s.
set -uo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
case_begin
trap 'one_py fault_clear; cancel_my_jobs' EXIT

# fail_first_vm JOB SECS: waits (50 ms polls) for the first VM tagged with JOB that is not
# DONE, puts it in BOOT_FAILURE, prints "ID STATE LCM READY" as it was just before.
fail_first_vm() {
    python3 - "$SLURM_ONE_CONFIG" "$1" "$2" <<'EOF'
import sys, time, tomllib, xmlrpc.client
import xml.etree.ElementTree as ET
cfg = tomllib.load(open(sys.argv[1], "rb"))
job, secs = sys.argv[2], float(sys.argv[3])
session = open(cfg["opennebula"]["auth_file"]).read().strip()
one = xmlrpc.client.ServerProxy(cfg["opennebula"]["endpoint"])
cluster = cfg["cluster"]["name"]
end = time.monotonic() + secs
while time.monotonic() < end:
    r = one.one.vmpool.infoextended(session, -2, -1, -1, -1)
    if not r[0]:
        sys.exit(f"vmpool.infoextended: {r[1]}")
    for vm in ET.fromstring(r[1]).findall("VM"):
        if (vm.findtext("USER_TEMPLATE/SLURM_CLUSTER") or "").strip() != cluster:
            continue
        if (vm.findtext("USER_TEMPLATE/SLURM_JOB_ID") or "").strip() != job:
            continue
        vid = int(vm.findtext("ID"))
        before = (vm.findtext("STATE"), vm.findtext("LCM_STATE"),
                  (vm.findtext("USER_TEMPLATE/READY") or "-").strip())
        f = one.sim.vm.fail(session, vid, "BOOT_FAILURE")
        if not f[0]:
            sys.exit(f"sim.vm.fail {vid}: {f[1]}")
        print(vid, *before)
        sys.exit(0)
    time.sleep(0.05)
sys.exit(f"no VM of job {job} appeared within {secs:.0f}s")
EOF
}

hook_mark=$(log_lines "$E2E_LOG")
job=$(submit -N1 -o /dev/null --wrap "sleep 30") || fail "sbatch failed"
t0=$SECONDS
hit=$(fail_first_vm "$job" 30) || fail "could not inject BOOT_FAILURE: $hit; $(job_summary "$job")"
read -r vm st lcm ready <<<"$hit"
log "VM $vm of job $job forced into BOOT_FAILURE $((SECONDS - t0))s after submission (it was STATE $st LCM $lcm READY $ready)"
# LCM 3 = RUNNING: if it was also READY the prolog may have accepted it before the failure.
late=""
[ "$lcm" = 3 ] && [ "$ready" = YES ] && late=" (the VM was already RUNNING and READY when failed: the injection came late)"

comment=$(wait_attempt_failed "$job" 60 "its VM $vm went BOOT_FAILURE$late") || exit 1
# Keep the retry (due after cred_expire + 1 s) from making a new VM while this one is checked.
scontrol hold "$job" || fail "scontrol hold $job failed: $(job_summary "$job")"
[[ $comment == slurm-one:* ]] || fail "AdminComment does not start with 'slurm-one:': '$comment'"
grep -qE "VM $vm([^0-9]|$)" <<<"$comment" || fail "AdminComment does not name VM $vm: '$comment'"
[[ $comment == *BOOT_FAILURE* ]] || fail "AdminComment does not say BOOT_FAILURE: '$comment'"
[[ $comment == *"; requeued)"* ]] || fail "AdminComment does not say 'requeued': '$comment'"

vms=$(vms_of "$job") || fail "cannot list VMs: $vms"
[ "$(sed '/^$/d' <<<"$vms" | wc -l)" -eq 1 ] || fail "job $job should have had exactly VM $vm: $(tr '\n' ';' <<<"$vms")"
wait_until 30 all_vms_done "$job" || fail "VM $vm of job $job not DONE after the failed attempt: $(vms_of "$job" | tr '\n' ';')"
wait_until 20 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job" | tr -s ' \n' ' ;')"
rollback=$(log_since "$E2E_LOG" "$hook_mark" | grep -E "job ${job}: rolled back" | tail -1)
log "VM $vm DONE, no rows; hook: ${rollback:-no 'rolled back' line}"
scancel "$job"
