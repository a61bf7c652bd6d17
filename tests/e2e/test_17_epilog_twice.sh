#!/usr/bin/env bash
# EpilogSlurmctld twice, concurrently, for the same running 2-node job: two slurm-one-epilog
# processes started by hand at the same instant, with the bare environment slurmctld gives its
# hooks (no PATH, no SLURM_CONF: the config is found beside the program). Expected: both exit
# 0 and print nothing; the job's 2 VMs end DONE and are terminated once in all (the epilogs'
# "removed N VMs" add up to 2); its rows are gone; no epilog logs a warning or an error. The
# epilogs set the nodes DOWN, which ends the job (--no-requeue; `scancel` if it still runs);
# its real epilog, a third run finding nothing left, must then succeed quietly as well
# (exit 0 per slurmctld, no warning or error in the hooks' log). Bounded at about 150 s.
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

# epilog_by_hand N: waits for $go, then runs slurm-one-epilog as slurmctld would (exec keeps
# the pid, so the log lines of run N carry $!); output and status in $E2E_TMP/epilog.N.*.
go=$E2E_TMP/go.$$
epilog_by_hand() {
    local out=$E2E_TMP/epilog.$1
    while [ ! -e "$go" ]; do sleep 0.01; done
    exec env -i SLURM_JOB_ID="$job" SLURM_JOB_NODELIST="$nodes" SLURM_JOB_USER=root \
        SLURM_JOB_UID=0 SLURM_JOB_GID=0 SLURM_JOB_NAME=wrap SLURM_JOB_PARTITION=one \
        SLURM_JOB_ACCOUNT= SLURM_JOB_EXIT_CODE=0 SLURM_JOB_EXIT_CODE2=0:0 SLURM_JOB_DERIVED_EC=0 \
        SLURM_CLUSTER_NAME=dev SLURM_SCRIPT_CONTEXT=epilog_slurmctld \
        "$E2E_DEV/bin/slurm-one-epilog" >"$out.out" 2>"$out.err"
}
epilog_by_hand 1 &
pid1=$!
epilog_by_hand 2 &
pid2=$!
sleep 0.3 # both are polling for $go
log "starting two epilogs for job $job ($nodes) at once: pids $pid1 $pid2"
touch "$go"
wait "$pid1"
rc1=$?
wait "$pid2"
rc2=$?
for n in 1 2; do
    out=$E2E_TMP/epilog.$n
    [ ! -s "$out.out" ] && [ ! -s "$out.err" ] ||
        fail "epilog $n printed: $(cat "$out.out" "$out.err" | tr '\n' ' ')"
done
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ] || fail "epilogs by hand exited $rc1 and $rc2 (want 0 and 0)"

wait_until 60 all_vms_done "$job" || fail "VMs of job $job not DONE 60s after the epilogs: $(vms_of "$job")"
wait_until 30 no_rows "$job" || fail "rows of job $job left after the epilogs: $(table_rows "$job")"
for p in "$pid1" "$pid2"; do
    log_since "$E2E_LOG" "$mark" | grep -qE "slurm-one-epilog\[$p\]: info: job $job: epilog removed" ||
        fail "epilog pid $p did not log its end: $(log_since "$E2E_LOG" "$mark" | grep -F "[$p]" | tail -3 | tr '\n' ' ')"
done
log "by hand: $(log_since "$E2E_LOG" "$mark" | grep -E "slurm-one-epilog\[($pid1|$pid2)\]: info: job $job: epilog removed" |
    sed 's/^[0-9.]* //' | tr '\n' ' ')"

# The job ends (its nodes went DOWN); the real epilog is the third run.
scancel "$job" 2>/dev/null
wait_ended "$job" 60 >/dev/null || exit 1
third_ran() {
    log_since "$E2E_LOG" "$mark" | grep -E "slurm-one-epilog\[[0-9]+\]: info: job $job: epilog removed" |
        grep -vE "\[($pid1|$pid2)\]" | grep -q .
}
wait_until 60 third_ran || fail "no third (slurmctld's own) epilog of job $job logged its end"
log "slurmctld's epilog: $(log_since "$E2E_LOG" "$mark" | grep -E "slurm-one-epilog\[[0-9]+\]: info: job $job: epilog removed" |
    grep -vE "\[($pid1|$pid2)\]" | sed 's/^[0-9.]* //' | tr '\n' ' ')"

noisy=$(log_since "$E2E_LOG" "$mark" | grep -E "slurm-one-epilog\[[0-9]+\]: (warn|error):")
[ -z "$noisy" ] || fail "epilogs logged warnings/errors: $(tr '\n' ';' <<<"$noisy")"
# slurmctld logs a non-zero EpilogSlurmctld exit ("JobId=N EpilogSlurmctld exit status a:b").
bad=$(log_since "$E2E_CTLD_LOG" "$ctld_mark" | grep -E "JobId=$job .*exit status" | grep -v "exit status 0:0")
[ -z "$bad" ] || fail "slurmctld saw an epilog fail: $bad"
# Terminated once in all: the three runs' "removed N VMs" add up to the 2 VMs. (slurmctld's
# epilog starts the moment the first run sets the nodes DOWN, so all three may overlap.)
removed=$(log_since "$E2E_LOG" "$mark" | grep -oE "slurm-one-epilog\[[0-9]+\]: info: job $job: epilog removed [0-9]+ VMs" |
    awk '{s += $(NF - 1)} END {print s + 0}')
[ "$removed" -eq 2 ] || fail "the epilogs of job $job report $removed VM terminations for its 2 VMs (a VM" \
    "terminated by more than one concurrent teardown): $(log_since "$E2E_LOG" "$mark" |
        grep -E "job $job: (epilog|teardown)" | sed 's/^[0-9.]* //' | tr '\n' ';')"
why=$(assert_clean 90) || fail "$why"
