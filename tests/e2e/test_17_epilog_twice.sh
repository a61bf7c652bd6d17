#!/usr/bin/env bash
# The teardown hooks run twice, concurrently, and at the wrong time, for one 2-node job:
#  1. while the job runs, two slurm-one-epilog and then two slurm-one-suspend processes are
#     started by hand at the same instant, with the bare environment slurmctld gives its hooks
#     (no PATH, no SLURM_CONF: the config is found beside the program). Expected: all exit 0;
#     the epilogs leave the nodes to slurmctld (the prolog marked them POWER_DOWN_ASAP) and
#     the SuspendPrograms refuse to end a VM whose node SLURM still shows the job on; the job
#     keeps running on its 2 VMs with its rows.
#  2. the job is cancelled and two more slurm-one-suspend runs by hand race slurmctld's own
#     epilog and SuspendProgram. Expected: the VMs end DONE, each terminated once in all
#     (the "teardown terminated N" lines add up to 2), the rows are gone, slurmctld saw no
#     hook fail, and no hook logged an error.
# Bounded at about 150 s.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

job=$(submit -N2 --no-requeue -o /dev/null --wrap "sleep 300") || fail "sbatch failed"
wait_running "$job" 90
nodes=$(job_nodes "$job")
vms=$(vms_of "$job")
[ "$(awk '$2 == 3' <<<"$vms" | wc -l)" -eq 2 ] || fail "job $job has not 2 ACTIVE VMs: $vms"
[ "$(table_rows "$job" | wc -l)" -eq 2 ] || fail "table has not 2 rows for job $job: $(table_rows "$job")"
mark=$(log_lines "$E2E_LOG")
ctld_mark=$(log_lines "$E2E_CTLD_LOG")

# hook_by_hand PROGRAM N GO [ARG]: waits for file GO, then runs PROGRAM as slurmctld would
# (exec keeps the pid, so the log lines of run N carry $!); output and status in
# $E2E_TMP/PROGRAM.N.*.
hook_by_hand() {
    local out=$E2E_TMP/$1.$2
    while [ ! -e "$3" ]; do sleep 0.01; done
    exec "${E2E_IN_SLURM[@]}" env -i SLURM_JOB_ID="$job" SLURM_JOB_NODELIST="$nodes" SLURM_JOB_USER=root \
        SLURM_JOB_UID=0 SLURM_JOB_GID=0 SLURM_JOB_NAME=wrap SLURM_JOB_PARTITION=one \
        SLURM_JOB_ACCOUNT= SLURM_JOB_EXIT_CODE=0 SLURM_JOB_EXIT_CODE2=0:0 SLURM_JOB_DERIVED_EC=0 \
        SLURM_CLUSTER_NAME=dev SLURM_SCRIPT_CONTEXT=epilog_slurmctld \
        "$E2E_HOOKS/$1" ${4:+"$4"} >"$out.out" 2>"$out.err"
}
# two_at_once PROGRAM [ARG]: two runs of PROGRAM started at the same instant; fails the case
# unless both exit 0 without printing anything. Prints their pids.
two_at_once() {
    local go=$E2E_TMP/go.$1.$RANDOM p1 p2 rc1 rc2 n out
    hook_by_hand "$1" 1 "$go" "${2:-}" &
    p1=$!
    hook_by_hand "$1" 2 "$go" "${2:-}" &
    p2=$!
    sleep 0.3 # both are polling for $go
    touch "$go"
    wait "$p1"
    rc1=$?
    wait "$p2"
    rc2=$?
    for n in 1 2; do
        out=$E2E_TMP/$1.$n
        [ ! -s "$out.out" ] && [ ! -s "$out.err" ] ||
            fail "$1 run $n by hand printed: $(cat "$out.out" "$out.err" | tr '\n' ' ')"
    done
    [ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ] || fail "$1 by hand exited $rc1 and $rc2 (want 0 and 0)"
    echo "$p1 $p2"
}

# 1. While the job runs: nothing may end its VMs.
pids=$(two_at_once slurm-one-epilog) || exit 1
log "two epilogs by hand (pids $pids) while job $job runs on $nodes"
pids=$(two_at_once slurm-one-suspend "$nodes") || exit 1
log "two SuspendPrograms by hand (pids $pids) for $nodes while job $job runs"
for p in $pids; do
    log_since "$E2E_LOG" "$mark" | grep -qE "slurm-one-suspend\[$p\]: warn: node [^ ]+ powers down, but SLURM still shows job $job on it" ||
        fail "SuspendProgram pid $p did not say it left job $job's VMs alone: $(log_since "$E2E_LOG" "$mark" | grep -F "[$p]" | tail -3 | tr '\n' ' ')"
done
job_in_state "$job" RUNNING || fail "job $job is not RUNNING after the hooks by hand: $(job_summary "$job")"
[ "$(live_vms "$job" | awk '$2 == 3' | wc -l)" -eq 2 ] || fail "job $job lost VMs to the hooks by hand: $(vms_of "$job")"
[ "$(table_rows "$job" | wc -l)" -eq 2 ] || fail "job $job lost rows to the hooks by hand: $(table_rows "$job")"
down=$(sinfo -h -N -n "$nodes" -o "%N %T" | awk '$2 !~ /^draining/')
[ -z "$down" ] || fail "job $job's nodes are not draining toward their power-down: $down"

# 2. The job ends; two more SuspendPrograms race slurmctld's own hooks.
ended_mark=$(log_lines "$E2E_LOG")
scancel "$job" 2>/dev/null
pids=$(two_at_once slurm-one-suspend "$nodes") || exit 1
log "two SuspendPrograms by hand (pids $pids) as job $job ends"
wait_ended "$job" 60 >/dev/null || exit 1
wait_until 60 all_vms_done "$job" || fail "VMs of job $job not DONE 60s after it ended: $(vms_of "$job")"
wait_until 30 no_rows "$job" || fail "rows of job $job left after it ended: $(table_rows "$job")"
teardowns=$(log_since "$E2E_LOG" "$ended_mark" | grep -E "slurm-one-(epilog|suspend)\[[0-9]+\]: info: job $job: teardown terminated [0-9]+ VMs")
log "teardowns: $(sed 's/^[0-9.]* //' <<<"$teardowns" | tr '\n' ';')"
removed=$(grep -oE "teardown terminated [0-9]+ VMs" <<<"$teardowns" | awk '{s += $3} END {print s + 0}')
[ "$removed" -eq 2 ] || fail "the hooks report $removed VM terminations for job $job's 2 VMs (want each" \
    "terminated once): $(sed 's/^[0-9.]* //' <<<"$teardowns" | tr '\n' ';')"

noisy=$(log_since "$E2E_LOG" "$mark" | grep -E "slurm-one-(epilog|suspend)\[[0-9]+\]: error:")
[ -z "$noisy" ] || fail "hooks logged errors: $(tr '\n' ';' <<<"$noisy")"
# slurmctld logs a non-zero EpilogSlurmctld exit ("JobId=N EpilogSlurmctld exit status a:b").
bad=$(log_since "$E2E_CTLD_LOG" "$ctld_mark" | grep -E "JobId=$job .*exit status" | grep -v "exit status 0:0")
[ -z "$bad" ] || fail "slurmctld saw an epilog fail: $bad"
why=$(assert_clean 90) || fail "$why"
