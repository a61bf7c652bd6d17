#!/usr/bin/env bash
# PrologSlurmctld SIGKILLed mid-provision (its VMs created, not yet seen running). slurmctld
# counts a prolog killed by a signal as a success and starts the job once its nodes' slurmds
# registered. The reconcile loop notices (rows still "booting" under a started job):
# - 22.05: the job was launched at the address the prolog parked its nodes at: it fails the
#   nodes so SLURM requeues the job, and the killed attempt's VMs are terminated within
#   orphan_grace + one reconcile round.
# - 23.11 and later: slurmctld took the nodes' addresses from the registrations of the VMs
#   the killed prolog made, so the job runs on them: reconcile marks the rows running and the
#   nodes to power down after the job, which completes without a requeue; SuspendProgram
#   ends the VMs after it (the runner's invariant checks that nothing is left).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin
trap 'one_py fault_clear; cancel_my_jobs' EXIT

grace=$(config_value provisioning orphan_grace)
grace_s=$(python3 -c 'import sys; t = sys.argv[1]; print(int(t[:-1]) * (60 if t.endswith("m") else 1))' "$grace")
round_s=10 # scripts/cluster runs the loop with --interval 10s

# Each pool poll takes 4 s: the prolog is still waiting for its first poll (rows "booting")
# when the hooks' log says its VMs were created.
one_py fault_delay one.vmpool.infoextended 4000 || fail "sim.fault.delay failed"
mark=$(log_lines "$E2E_LOG")
series=$(slurm_series)
# Long enough for a reconcile round to see it running where it runs.
job=$(submit -N2 -o /dev/null --wrap "sleep 25") || fail "sbatch failed"
both_created() { [ "$(log_since "$E2E_LOG" "$mark" | grep -cE "job $job, node vm[0-9]+: VM [0-9]+ created")" -eq 2 ]; }
wait_until 60 both_created || fail "the prolog did not create 2 VMs within 60s: $(job_summary "$job")"
prolog=$(pgrep -f "^$E2E_HOOKS/slurm-one-prolog") || fail "VMs of job $job exist but no prolog runs"
# shellcheck disable=SC2086
kill -KILL $prolog
killed_at=$SECONDS
one_py fault_clear || fail "sim.fault.clear failed"
made=$(log_since "$E2E_LOG" "$mark" | grep -oE "job $job, node vm[0-9]+: VM [0-9]+ created" | awk '{print $6}' | tr '\n' ' ')
log "killed prolog $prolog of job $job; its VMs: $made; rows: $(table_rows "$job" | tr -s ' \n' ' ;')"

if [ "$series" != 22.05 ]; then
    adopted() { log_since "$E2E_LOG" "$mark" | grep -qE "reconcile: job $job started on the VMs its killed prolog made"; }
    wait_until $((2 * round_s + 30)) adopted ||
        fail "SLURM $series: reconcile did not take over job $job's VMs: $(log_since "$E2E_LOG" "$mark" | grep -E "job $job" | tail -3 | tr '\n' ';')"
    log "SLURM $series: $(log_since "$E2E_LOG" "$mark" | grep -oE "reconcile: job $job started on the VMs.*" | head -1)"
    [ "$(table_rows "$job" | awk '$4 == "running"' | wc -l)" -eq 2 ] ||
        fail "job $job's rows are not running: $(table_rows "$job" | tr '\n' ';')"
    marked=$(sinfo -h -N -n "$(job_nodes "$job")" -o "%N %T" | awk '$2 !~ /^draining/')
    [ -z "$marked" ] || fail "job $job's nodes are not marked to power down after it: $marked"
    ended=$(wait_ended "$job" 90)
    [ "$ended" = COMPLETED ] || fail "job $job ended $ended, not COMPLETED: $(job_summary "$job")"
    [ "$(job_field "$job" Restarts)" = 0 ] || fail "job $job was requeued: $(job_summary "$job")"
    log "job $job completed on the VMs of its killed prolog: $(job_summary "$job")"
    exit 0
fi

# No human: the killed attempt's VMs end within grace + a round (+ slack for this machine).
deadline=$((grace_s + round_s + 30))
attempt_done() {
    local v id
    v=$(vms_of "$job") || return 1
    for id in $made; do
        awk -v id="$id" '$1 == id && $2 != 6 {bad = 1} END {exit bad}' <<<"$v" || return 1
    done
}
wait_until "$deadline" attempt_done ||
    fail "VMs of the killed attempt not DONE ${deadline}s after the kill: $(vms_of "$job" | tr '\n' ';')"
log "killed attempt's VMs DONE $((SECONDS - killed_at))s after the kill"
ended_by=$(log_since "$E2E_LOG" "$mark" | grep -E "job $job: [0-9]+ rows from an interrupted attempt|orphan VM ($(tr ' ' '|' <<<"${made% }"))[^0-9]|job $job started before its VMs were ready" | head -1)
[ -n "$ended_by" ] || fail "no log line says who ended the attempt's VMs (next prolog or reconcile)"
log "ended by: $ended_by"

# SLURM requeued the job (it runs again later on fresh VMs; not waited for here).
requeued() { [ "$(job_field "$job" Restarts)" -ge 1 ]; }
wait_until 60 requeued || fail "job $job was not requeued after its prolog was killed: $(job_summary "$job")"
log "job $job requeued: $(job_summary "$job")"
[[ $(job_field "$job" AdminComment) == *"started before its VMs were ready"* ]] ||
    fail "job $job's AdminComment does not say why: '$(job_field "$job" AdminComment)'"
