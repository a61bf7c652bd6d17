#!/usr/bin/env bash
# A job over its time limit (--time=1, SLURM's minimum: 1 minute; SLURM checks limits every
# 30 s, so it ends 60-90 s after starting): TIMEOUT, VMs DONE, rows gone.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

job=$(submit -N1 --time=1 -o /dev/null --wrap "sleep 300") || fail "sbatch failed"
wait_running "$job" 90
t0=$SECONDS
state=$(wait_ended "$job" 120) || exit 1
log "job $job ended $state $((SECONDS - t0))s after it started RUNNING"
[ "$state" = TIMEOUT ] || fail "job $job ended $state, not TIMEOUT: $(job_summary "$job")"
wait_until 60 all_vms_done "$job" || fail "VMs of job $job not DONE 60s after TIMEOUT: $(vms_of "$job")"
wait_until 30 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job")"
