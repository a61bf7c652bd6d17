#!/usr/bin/env bash
# e2e-timeout: 420
# `scontrol suspend JOB` / `scontrol resume JOB` on real guests: the job's VM is SUSPENDED
# (the guest paused: it answers no ping), then resumed; SLURM's resume request reaches the
# guest's slurmd, the job's counter goes on in the same guest (same kernel boot id) and it
# COMPLETES.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

script=$E2E_TMP/qemu-suspend.sh
cat >"$script" <<'JOB'
#!/bin/sh
b0=$(cat /proc/sys/kernel/random/boot_id)
i=0
while [ $i -lt 40 ]; do i=$((i + 1)); sleep 1; done
scontrol update job="$SLURM_JOB_ID" comment="boot_before=$b0;boot_after=$(cat /proc/sys/kernel/random/boot_id);ticks=$i"
JOB
job=$(submit -N1 -D /tmp -o /dev/null "$script") || fail "sbatch failed"
wait_running "$job" 300
read -r vm _ <<<"$(vms_of "$job")"
vm_state() { vms_of "$job" | awk '{print $2 "/" $3}'; }
vm_suspended() { [ "$(vm_state)" = 5/0 ]; }
vm_running() { [ "$(vm_state)" = 3/3 ]; }
job_suspended() { [ "$(job_state "$job")" = SUSPENDED ]; }
sleep 5
scontrol suspend "$job" || fail "scontrol suspend $job failed"
wait_until 15 job_suspended || fail "job $job is $(job_state "$job"), not SUSPENDED"
wait_until 60 vm_suspended || fail "VM $vm of job $job is $(vm_state), not SUSPENDED (5/0), 60 s after scontrol suspend"
pid=$(qemu_pid "$vm") || fail "VM $vm is SUSPENDED but its qemu is gone"
ip=$(vms_of "$job" | awk '{print $9}')
ping -c 2 -W 1 "$ip" >/dev/null 2>&1 && fail "VM $vm ($ip) is SUSPENDED but its guest answers ping"
log "VM $vm suspended: qemu $pid keeps the paused guest, which answers no ping"
sleep 5
scontrol resume "$job" || fail "scontrol resume $job failed"
wait_until 60 vm_running || fail "VM $vm is $(vm_state), not RUNNING again 60 s after scontrol resume"
[ "$(qemu_pid "$vm")" = "$pid" ] || fail "VM $vm is RUNNING again but not in its qemu $pid"
wait_until 20 ping -c 1 -W 1 "$ip" || fail "VM $vm ($ip) answers no ping 20 s after it runs again"
state=$(wait_ended "$job" 200) || exit 1
[ "$state" = COMPLETED ] || fail "job $job ended $state, not COMPLETED: $(job_summary "$job")"
report=$(job_report "$job")
log "report: $(tr '\n' ' ' <<<"$report")"
before=$(sed -n 's/^boot_before=//p' <<<"$report")
after=$(sed -n 's/^boot_after=//p' <<<"$report")
[ -n "$before" ] && [ "$before" = "$after" ] ||
    fail "the guest's boot id changed across suspend/resume ('$before' -> '$after'): a new guest, not the paused one"
grep -qx "ticks=40" <<<"$report" || fail "the job's counter did not reach 40: '$report'"
