#!/usr/bin/env bash
# OpenNebula refuses every VM create (fault: one.vm.allocate, every call, AUTHORIZATION
# "Quota exceeded") and provisioning.max_prolog_attempts is 2. Expects: attempt 1 requeues
# the job ("attempt 1 of 2; requeued"); attempt 2 holds it (JobState PENDING with Reason
# JobHeldAdmin/JobHeldUser, or REQUEUE_HOLD) with an AdminComment that says "job held,
# release it with scontrol release N"; the hold lasts (no third attempt); no VM and no row
# exist. A requeued job may start again cred_expire + 1 s (21 s) after the failure, but only at
# slurmctld's next scheduling pass (backfill: every 30 s), so attempt 2 comes 21-55 s after
# attempt 1. Typically 35-75 s; bounded at about 130 s.
set -uo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
case_begin
trap 'one_py fault_clear; config_restore; cancel_my_jobs' EXIT

# is_held JOB: held as SLURM shows it after `scontrol requeuehold` or `hold`.
is_held() {
    local s r
    s=$(job_state "$1") r=$(job_field "$1" Reason)
    [ "$s" = REQUEUE_HOLD ] || { [ "$s" = PENDING ] && [[ $r == JobHeld* ]]; }
}

# attempts JOB: the prolog's "attempt N:" error lines for JOB since the case began.
attempts() { log_since "$E2E_LOG" "$hook_mark" | grep -E "job ${1}: attempt [0-9]+: "; }

msg="User [0] : Quota exceeded"
config_set provisioning max_prolog_attempts 2 || fail "config_set max_prolog_attempts failed"
one_py fault_add one.vm.allocate 0 512 "$msg" || fail "sim.fault.add failed"
hook_mark=$(log_lines "$E2E_LOG")
job=$(submit -N1 -o /dev/null --wrap "sleep 5") || fail "sbatch failed"
t0=$SECONDS

# Attempt 1: requeued, not held.
first=$(wait_attempt_failed "$job" 30 "every create is refused") || exit 1
[[ $first == slurm-one:* ]] || fail "AdminComment does not start with 'slurm-one:': '$first'"
[[ $first == *"$msg"* ]] || fail "AdminComment lacks OpenNebula's message '$msg': '$first'"
[[ $first == *"(attempt 1 of 2; requeued)" ]] || fail "attempt 1's AdminComment does not end '(attempt 1 of 2; requeued)': '$first'"

# Attempt 2 (21-55 s later, see above): held.
t1=$SECONDS
held=""
while [ $SECONDS -lt $((t1 + 75)) ]; do
    comment=$(job_field "$job" AdminComment)
    if is_held "$job"; then
        [[ $comment == *"attempt 1 of"* ]] && sleep 2 && comment=$(job_field "$job" AdminComment)
        [[ $comment == *"attempt 1 of"* ]] &&
            fail "job $job held after 1 attempt of 2: $(job_summary "$job")"
        held=yes
        break
    fi
    case $(job_state "$job") in RUNNING | COMPLETING | COMPLETED | FAILED | CANCELLED | NODE_FAIL | BOOT_FAIL | TIMEOUT)
        fail "job $job went $(job_state "$job") although every create is refused: $(job_summary "$job")" ;;
    esac
    sleep 0.5
done
[ -n "$held" ] || fail "job $job not held within 75s of its first failed attempt: $(job_summary "$job"); attempts: $(attempts "$job" | wc -l)"
log "held $((SECONDS - t0))s after submission: $(job_summary "$job")"
[[ $comment == slurm-one:* ]] || fail "AdminComment does not start with 'slurm-one:': '$comment'"
[[ $comment == *"$msg"* ]] || fail "AdminComment lacks OpenNebula's message '$msg': '$comment'"
[[ $comment == *"(attempt 2 of 2; job held, release it with scontrol release $job)" ]] ||
    fail "AdminComment does not end '(attempt 2 of 2; job held, release it with scontrol release $job)': '$comment'"

# The hold is what stops a third attempt (a requeued, unheld job shows Reason BeginTime or
# None, never JobHeld*): it must survive the prolog's exit status 1 and the epilog.
restarts=$(job_field "$job" Restarts)
t2=$SECONDS
while [ $SECONDS -lt $((t2 + 10)) ]; do
    is_held "$job" || fail "job $job left its hold by itself after $((SECONDS - t2))s: $(job_summary "$job")"
    [ "$(job_field "$job" Restarts)" = "$restarts" ] ||
        fail "job $job restarted while held (Restarts $restarts → $(job_field "$job" Restarts)): $(job_summary "$job")"
    sleep 1
done
n=$(attempts "$job" | wc -l)
[ "$n" -eq 2 ] || fail "the prolog failed $n times for job $job, want exactly 2: $(attempts "$job" | tr '\n' ';')"
log "still held $((SECONDS - t2))s later, Restarts=$restarts, 2 prolog attempts in the hook log"

vms=$(vms_of "$job") || fail "cannot list VMs: $vms"
[ -z "$vms" ] || fail "job $job has VMs although every create was refused: $(tr '\n' ';' <<<"$vms")"
wait_until 20 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job" | tr -s ' \n' ' ;')"
scancel "$job"
