#!/usr/bin/env bash
# e2e-timeout: 900
# Back to back, on a busy machine: 100 one-node jobs of 1 s submitted at once to the 4 node
# slots, both cores kept busy by a background load for the whole run. Each node is recycled
# about 25 times: its job ends, slurmctld powers it down (the prolog marked it
# POWER_DOWN_ASAP), SuspendProgram ends its VM, and only then may the next job get it.
# Expected: every job runs once and completes; none is requeued (no "requeue" line for it in
# slurmctld's log, each job script runs once with SLURM_RESTART_COUNT 0), failed or held;
# then the usual invariant. Before the mark, the ended job's EpilogSlurmctld set the node
# DOWN while SLURM could already have given it to the next job, which was then requeued (15
# of 200 in bench row 5 once).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

jobs_n=${E2E_B2B_JOBS:-100}
runs=$E2E_TMP/b2b.$$
mkdir -p "$runs" && chmod 777 "$runs"
ctld_mark=$(log_lines "$E2E_CTLD_LOG")

# Both cores busy for the whole run (ended by the EXIT trap, also when the case fails).
load=()
for _ in 1 2; do
    sh -c 'while :; do :; done' &
    load+=($!)
done
trap 'kill "${load[@]}" 2>/dev/null; cancel_my_jobs' EXIT
log "background load: pids ${load[*]}"

jobs=()
for _ in $(seq "$jobs_n"); do
    j=$(submit -N1 -o /dev/null --wrap "echo \"\$SLURM_JOB_ID \${SLURM_RESTART_COUNT:-0} \$SLURMD_NODENAME\" >>$runs/\$SLURM_JOB_ID; sleep 1") ||
        fail "sbatch failed after ${#jobs[@]} jobs"
    jobs+=("$j")
done
log "submitted ${#jobs[@]} jobs: ${jobs[0]}..${jobs[-1]}"
list=$(IFS=,; echo "${jobs[*]}")

# requeues: slurmctld's requeue lines for these jobs (job_mgr.c logs each requeue with why).
requeues() {
    log_since "$E2E_CTLD_LOG" "$ctld_mark" | grep -iE "requeue" | grep -E "JobId=($(IFS='|'; echo "${jobs[*]}"))\b"
}
t0=$SECONDS
last=0
while :; do
    left=$(squeue -h -j "$list" -o "%i %T %r" 2>/dev/null)
    [ -z "$left" ] && break
    held=$(grep -iE 'held|JobHeld' <<<"$left")
    [ -z "$held" ] || fail "held: $(tr '\n' ';' <<<"$held")"
    r=$(requeues)
    [ -z "$r" ] || fail "requeued: $(tr '\n' ';' <<<"$r" | cut -c1-600)"
    if [ $((SECONDS - last)) -ge 60 ]; then
        last=$SECONDS
        log "$(find "$runs" -type f | wc -l)/$jobs_n jobs ran after $((SECONDS - t0))s; $(wc -l <<<"$left") in the queue"
    fi
    [ $((SECONDS - t0)) -lt 840 ] || fail "$(wc -l <<<"$left") jobs still queued after $((SECONDS - t0))s"
    sleep 2
done
wall=$((SECONDS - t0))
r=$(requeues)
[ -z "$r" ] || fail "requeued: $(tr '\n' ';' <<<"$r" | cut -c1-600)"
missing=() again=()
for j in "${jobs[@]}"; do
    if [ ! -s "$runs/$j" ]; then
        missing+=("$j")
    elif [ "$(wc -l <"$runs/$j")" -ne 1 ] || [ "$(awk '{print $2}' "$runs/$j")" != 0 ]; then
        again+=("$j: $(tr '\n' ';' <"$runs/$j")")
    fi
done
[ ${#missing[@]} -eq 0 ] || fail "${#missing[@]} jobs never ran their script (failed or cancelled), e.g. ${missing[0]}"
[ ${#again[@]} -eq 0 ] || fail "${#again[@]} jobs ran more than once or as a restart: ${again[*]:0:3}"
# Each job's end as slurmctld logged it (_job_complete: "WEXITSTATUS n" or "WTERMSIG n"):
# exactly one per job, all exit 0.
ends=$(log_since "$E2E_CTLD_LOG" "$ctld_mark" | grep -oE "_job_complete: JobId=[0-9]+ (WEXITSTATUS|WTERMSIG) [0-9]+" |
    grep -E "JobId=($(IFS='|'; echo "${jobs[*]}")) ")
[ "$(grep -c . <<<"$ends")" -eq "$jobs_n" ] || fail "slurmctld logged $(grep -c . <<<"$ends") job ends for $jobs_n jobs"
notok=$(grep -v "WEXITSTATUS 0$" <<<"$ends")
[ -z "$notok" ] || fail "jobs ended badly: $(tr '\n' ';' <<<"$notok" | cut -c1-600)"
log "$jobs_n jobs ran once each in ${wall}s ($(awk -v n="$jobs_n" -v w="$wall" 'BEGIN {printf "%.1f", n * 60 / w}') jobs/min), none requeued, loaded"
why=$(assert_clean 90) || fail "$why"
