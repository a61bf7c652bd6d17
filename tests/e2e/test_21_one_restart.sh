#!/usr/bin/env bash
# one-sim (the OpenNebula front-end) restarted, state kept, while a prolog is provisioning:
# the prolog's polls fail for a moment; it must carry on once OpenNebula is back (within
# boot_timeout), the job completes without a requeue, and nothing leaks (the runner's
# assert_clean: no VM outside DONE, no row, every node idle~).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin
trap 'one_py fault_clear; cancel_my_jobs' EXIT

# Slow polls keep the prolog mid-provision when one-sim goes away (the restart clears it).
one_py fault_delay one.vmpool.infoextended 2000 || fail "sim.fault.delay failed"
mark=$(log_lines "$E2E_LOG")
job=$(submit -N2 -o "$E2E_TMP/out.$$" --wrap "hostname") || fail "sbatch failed"
both_created() { [ "$(log_since "$E2E_LOG" "$mark" | grep -cE "job $job, node vm[0-9]+: VM [0-9]+ created")" -eq 2 ]; }
wait_until 60 both_created || fail "the prolog did not create 2 VMs within 60s: $(job_summary "$job")"
made=$(log_since "$E2E_LOG" "$mark" | grep -oE "job $job, node vm[0-9]+: VM [0-9]+ created" | awk '{print $6}' | tr '\n' ' ')
"$E2E_ROOT/scripts/cluster" restart one-sim >"$E2E_TMP/restart.log" 2>&1 ||
    fail "scripts/cluster restart one-sim failed: $(tail -1 "$E2E_TMP/restart.log")"
log "one-sim restarted while job $job's VMs $made were booting"
# The restarted one-sim adopted the VMs it had: they are still known.
for id in $made; do
    vms_of "$job" | awk -v id="$id" '$1 == id {found = 1} END {exit !found}' ||
        fail "VM $id unknown to the restarted one-sim: $(vms_of "$job" | tr '\n' ';')"
done

state=$(wait_ended "$job" 150) || exit 1
[ "$state" = COMPLETED ] || fail "job $job ended $state: $(job_summary "$job")"
[ "$(wc -l <"$E2E_TMP/out.$$")" -ge 1 ] || fail "job $job wrote nothing"
restarts=$(job_field "$job" Restarts)
# A restart shorter than provisioning.boot_timeout must not cost the job an attempt.
[ "${restarts:-0}" -eq 0 ] ||
    fail "job $job was requeued although one-sim was back within seconds: $(job_field "$job" AdminComment)"
waited=$(log_since "$E2E_LOG" "$mark" | grep -c "job $job: .*unreachable.*still waiting for the VMs")
log "the prolog carried on across the restart ($waited polls found OpenNebula away)"
