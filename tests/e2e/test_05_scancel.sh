#!/usr/bin/env bash
# `scancel` mid-run: the job's VMs go DONE, its rows go, its nodes come back (assert_clean).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

job=$(submit -N2 -o /dev/null --wrap "sleep 300") || fail "sbatch failed"
wait_running "$job" 90
vms=$(vms_of "$job")
[ "$(awk '$2 == 3' <<<"$vms" | wc -l)" -eq 2 ] || fail "job $job has not 2 ACTIVE VMs: $vms"
[ "$(table_rows "$job" | wc -l)" -eq 2 ] || fail "table has not 2 rows for job $job: $(table_rows "$job")"
t0=$SECONDS
scancel "$job" || fail "scancel $job failed"
state=$(wait_ended "$job" 30) || exit 1
[ "$state" = CANCELLED ] || fail "job $job ended $state after scancel"
wait_until 60 all_vms_done "$job" || fail "VMs of job $job not DONE 60s after scancel: $(vms_of "$job")"
log "VMs DONE $((SECONDS - t0))s after scancel"
wait_until 30 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job")"
why=$(assert_clean 60) || fail "$why"
log "clean $((SECONDS - t0))s after scancel"
