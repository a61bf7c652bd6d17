#!/usr/bin/env bash
# slurmctld restarted (state kept) while a 2-node job runs a step on its VMs: the step and
# the job complete, and its nodes still power down after it (the POWER_DOWN_ASAP mark the
# prolog set survives in slurmctld's node state), SuspendProgram ending the VMs. (A new srun
# started after the restart needs the node names resolvable: slurmctld 22.05 does not save
# a job's cloud-node alias list; README "Failure handling" says so.)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

out=$E2E_TMP/out.$$
job=$(submit -N2 -o "$out" --wrap "srun sh -c 'sleep 12; hostname'") || fail "sbatch failed"
wait_running "$job" 90
step_running() { squeue -h -s -j "$job" -o %i | grep -qx "$job.0"; }
wait_until 30 step_running || fail "step $job.0 not running within 30s: $(squeue -s -j "$job" 2>&1 | tr '\n' ';')"
nodes=$(job_nodes "$job")
vms=$(vms_of "$job" | awk '{print $1}' | tr '\n' ' ')
"$E2E_ROOT/scripts/cluster" restart slurmctld >"$E2E_TMP/restart.log" 2>&1 ||
    fail "scripts/cluster restart slurmctld failed: $(tail -1 "$E2E_TMP/restart.log")"
log "slurmctld restarted while job $job ran on $nodes (VMs $vms)"
job_in_state "$job" RUNNING || fail "job $job is not RUNNING after the restart: $(job_summary "$job")"

state=$(wait_ended "$job" 90) || exit 1
[ "$state" = COMPLETED ] || fail "job $job ended $state: $(job_summary "$job")"
got=$(sort "$out" | tr '\n' ' ')
want=$(expand "$nodes" | sort | tr '\n' ' ')
[ "$got" = "$want" ] || fail "srun after the restart printed '$got', want '$want'"
wait_until 60 all_vms_done "$job" || fail "VMs of job $job not DONE 60s after it ended: $(vms_of "$job" | tr '\n' ';')"
wait_until 30 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job")"
grep -qE "slurm-one-suspend\[[0-9]+\]: info: job $job: teardown terminated [1-9]" "$E2E_LOG" ||
    fail "SuspendProgram did not end the VMs of job $job: $(grep -E "job $job" "$E2E_LOG" | tail -5 | tr '\n' ';')"
