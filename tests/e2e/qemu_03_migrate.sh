#!/usr/bin/env bash
# e2e-timeout: 420
# `slurm-one migrate --job JOB` under a running job on a real guest: QEMU's live migration to a
# second qemu (the VM's HOST changes in one.vm.info), while the job's counter keeps counting.
# The counter's largest gap is not longer than the migration took, the guest's boot id is
# unchanged, and the job COMPLETES.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

script=$E2E_TMP/qemu-migrate.sh
cat >"$script" <<'JOB'
#!/bin/sh
b0=$(cat /proc/sys/kernel/random/boot_id)
prev=$(date +%s%N) max=0 i=0
while [ $i -lt 200 ]; do
    sleep 0.1
    now=$(date +%s%N)
    gap=$(( (now - prev) / 1000000 ))
    [ $gap -gt $max ] && max=$gap
    prev=$now i=$((i + 1))
done
scontrol update job="$SLURM_JOB_ID" comment="boot_before=$b0;boot_after=$(cat /proc/sys/kernel/random/boot_id);ticks=$i;max_gap_ms=$max"
JOB
job=$(submit -N1 -D /tmp -o /dev/null "$script") || fail "sbatch failed"
wait_running "$job" 300
read -r vm _ <<<"$(vms_of "$job")"
host_of() { python3 - "$SLURM_ONE_CONFIG" "$1" <<'PY'
import sys, tomllib, xmlrpc.client, xml.etree.ElementTree as ET
cfg = tomllib.load(open(sys.argv[1], "rb"))
s = open(cfg["opennebula"]["auth_file"]).read().strip()
r = xmlrpc.client.ServerProxy(cfg["opennebula"]["endpoint"]).one.vm.info(s, int(sys.argv[2]))
print(ET.fromstring(r[1]).findall("HISTORY_RECORDS/HISTORY")[-1].findtext("HOSTNAME"))
PY
}
host1=$(host_of "$vm")
pid1=$(qemu_pid "$vm") || fail "no qemu runs VM $vm"
sleep 3
t0=$(date +%s%N)
slurm-one migrate --job "$job" || fail "slurm-one migrate failed"
took_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
host2=$(host_of "$vm")
[ -n "$host2" ] && [ "$host2" != "$host1" ] || fail "VM $vm still on $host1 after migrate"
pid2=$(qemu_pid "$vm") || fail "no qemu runs VM $vm after the migration"
[ "$pid2" != "$pid1" ] || fail "VM $vm is still in qemu $pid1: not migrated to a second qemu"
# (A quit qemu may stay a zombie until init reaps it: that one does not run.)
case $(awk '/^State:/ {print $2}' "/proc/$pid1/status" 2>/dev/null) in
"" | Z) ;;
*) fail "the source qemu $pid1 of VM $vm still runs" ;;
esac
log "VM $vm live-migrated $host1 -> $host2 (qemu $pid1 -> $pid2) in ${took_ms} ms: $(grep "VM $vm: live-migrated" "$E2E_DEV/log/one-sim.log" | tail -1 | sed 's/.*: live-migrated //')"
[ "$(job_state "$job")" = RUNNING ] || fail "job $job is $(job_state "$job") after the migration"
state=$(wait_ended "$job" 200) || exit 1
[ "$state" = COMPLETED ] || fail "job $job ended $state, not COMPLETED: $(job_summary "$job")"
report=$(job_report "$job")
log "report: $(tr '\n' ' ' <<<"$report")"
before=$(sed -n 's/^boot_before=//p' <<<"$report")
after=$(sed -n 's/^boot_after=//p' <<<"$report")
gap=$(sed -n 's/^max_gap_ms=//p' <<<"$report")
[ -n "$before" ] && [ "$before" = "$after" ] || fail "the guest's boot id changed across the migration ('$before' -> '$after')"
grep -qx "ticks=200" <<<"$report" || fail "the job's counter did not reach 200: '$report'"
[ -n "$gap" ] && [ "$gap" -le "$took_ms" ] || fail "the counter stopped for ${gap} ms, longer than the migration (${took_ms} ms)"
