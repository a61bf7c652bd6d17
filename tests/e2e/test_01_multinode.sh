#!/usr/bin/env bash
# A plain `sbatch -N2 --mem=512M` whose script runs `srun hostname`: both VMs answer, the job
# COMPLETES.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

script=$E2E_TMP/multinode.sh
printf '#!/bin/sh\nsrun hostname\n' >"$script"
job=$(submit -N2 --mem=512M -o "$E2E_TMP/multinode-%j.out" "$script") || fail "sbatch failed"
state=$(wait_ended "$job" 150) || exit 1
nodes=$(job_nodes "$job")
out=$E2E_TMP/multinode-$job.out
[ "$state" = COMPLETED ] || fail "job $job ended $state, not COMPLETED: $(job_summary "$job"); output: $(tr '\n' ' ' <"$out" 2>/dev/null)"
[ "$(job_field "$job" ExitCode)" = 0:0 ] || fail "job $job ExitCode=$(job_field "$job" ExitCode)"
names=$(expand "$nodes") || fail "cannot expand NodeList '$nodes'"
[ "$(wc -l <<<"$names")" -eq 2 ] || fail "job $job ran on '$nodes', not 2 nodes"
for n in $names; do
    grep -qx "$n" "$out" || fail "output of job $job lacks hostname $n: $(tr '\n' ' ' <"$out")"
done
[ "$(wc -l <"$out")" -eq 2 ] || fail "output of job $job is not 2 lines: $(tr '\n' ' ' <"$out")"
log "output: $(tr '\n' ' ' <"$out")"
