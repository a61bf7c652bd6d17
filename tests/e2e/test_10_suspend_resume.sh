#!/usr/bin/env bash
# `scontrol suspend JOB` / `scontrol resume JOB` also suspend and resume the job's VMs
# (through the reconcile loop's suspension follower), and the job survives: a job writing a
# counter every second is suspended 10 s, resumed, and finishes with a gap and no failure.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

out=$(mktemp /tmp/e2e-counter.XXXXXX)
chmod 666 "$out"
job=$(submit -N1 -o "$out" --wrap 'for i in $(seq 1 25); do echo "$i $(date +%s)"; sleep 1; done') \
    || fail "sbatch failed"
wait_running "$job" 90
wait_until 30 grep -q '^3 ' "$out" || fail "job $job wrote no counter: $(cat "$out")"
read -r vm _ <<<"$(vms_of "$job")"
vm_state() { vms_of "$job" | awk '{print $2 "/" $3}'; }
vm_suspended() { [ "$(vm_state)" = 5/0 ]; }
vm_running() { [ "$(vm_state)" = 3/3 ]; }
job_suspended() { [ "$(job_state "$job")" = SUSPENDED ]; }
scontrol suspend "$job" || fail "scontrol suspend $job failed"
wait_until 15 job_suspended || fail "job $job is $(job_state "$job"), not SUSPENDED"
wait_until 15 vm_suspended || fail "VM $vm of job $job is $(vm_state), not SUSPENDED (5/0), 15 s after scontrol suspend"
table_suspended() { slurm-one status --job "$job" | grep -q suspended; }
# The loop records the suspension once every VM of the job settled, just after the VM flips.
wait_until 10 table_suspended || fail "the table does not record the suspension: $(slurm-one status --job "$job")"
before=$(wc -l <"$out")
sleep 10
after=$(wc -l <"$out")
[ "$before" -eq "$after" ] || fail "the counter advanced while suspended ($before -> $after lines)"
scontrol resume "$job" || fail "scontrol resume $job failed"
wait_until 20 vm_running || fail "VM $vm is $(vm_state), not RUNNING again 20 s after scontrol resume"
wait_ended "$job" 90
st=$(job_state "$job")
[ -z "$st" ] || [ "$st" = COMPLETED ] || fail "job $job ended $st, not COMPLETED: $(job_summary "$job")"
[ "$(wc -l <"$out")" -eq 25 ] || fail "the counter did not reach 25: $(tail -3 "$out")"
gap=$(awk 'NR > 1 && $2 - prev > max { max = $2 - prev } { prev = $2 } END { print max }' "$out")
[ "$gap" -ge 10 ] || fail "no gap of >= 10 s in the counter (largest gap ${gap}s)"
log "job $job completed; counter gap ${gap}s across the suspension"
rm -f "$out"
assert_clean 90 || fail "$(assert_clean 1)"
