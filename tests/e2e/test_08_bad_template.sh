#!/usr/bin/env bash
# `--one-template=nope` is refused by sbatch, listing the allowed templates; no job submitted.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

before=$(squeue -h -o %i | sort)
last_before=$(scontrol show config | sed -n 's/^NEXT_JOB_ID *= *//p')
sbatch --one-template=nope -o /dev/null --wrap true >"$E2E_TMP/bad.out" 2>"$E2E_TMP/bad.err"
rc=$?
err=$(cat "$E2E_TMP/bad.err")
[ $rc -ne 0 ] || fail "sbatch --one-template=nope exited 0: $(cat "$E2E_TMP/bad.out")"
grep -q "allowed: small, big" <<<"$err" || fail "stderr lacks 'allowed: small, big': $err"
[ "$(squeue -h -o %i | sort)" = "$before" ] || fail "the queue changed: $(squeue -h -o '%i %T')"
last_after=$(scontrol show config | sed -n 's/^NEXT_JOB_ID *= *//p')
[ "$last_before" = "$last_after" ] || fail "NEXT_JOB_ID moved from $last_before to $last_after: a job was submitted"
log "refused: $err"
