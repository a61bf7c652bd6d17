#!/usr/bin/env bash
# e2e-timeout: 420
# The qemu process of a running 1-node job is killed (SIGKILL): one-sim's monitoring moves the
# VM to POWEROFF, and slurm-one's reconcile makes SLURM fail or requeue the job as with a
# vanished namespace VM (test_07); nothing stays behind (no qemu, tap, overlay).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

job=$(submit -N1 -D /tmp -o /dev/null --wrap "sleep 600") || fail "sbatch failed"
wait_running "$job" 300
read -r vm _ <<<"$(vms_of "$job")"
pid=$(qemu_pid "$vm") || fail "no qemu runs VM $vm"
log "killing qemu $pid of VM $vm"
t0=$SECONDS
kill -9 "$pid"
poweroff() { [ "$(vms_of "$job" | awk '{print $2}')" = 8 ]; }
wait_until 30 poweroff || fail "VM $vm is $(vms_of "$job" | awk '{print $2 "/" $3}') 30 s after its qemu died, not POWEROFF (8)"
noticed=$(job_left_running "$job" 120 "SLURM did not notice VM $vm died") || exit 1
log "job $job left RUNNING $((SECONDS - t0))s after the kill: $(job_summary "$job")"
expect_failed_or_requeued "$job" "$noticed" "its qemu died"
scancel "$job" 2>/dev/null
wait_until 60 no_live_vms "$job" || fail "VMs of job $job still not DONE: $(vms_of "$job")"
wait_until 30 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job")"
