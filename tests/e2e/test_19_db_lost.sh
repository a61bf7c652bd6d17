#!/usr/bin/env bash
# The mapping table lost under a running 2-node job, twice.
# (a) Deleted (with its -wal/-shm). Expected: the next opener recreates it empty and logs a
#     warning naming it; `slurm-one status` works and shows no rows for the job; a reconcile
#     pass by hand (`slurm-one reconcile --grace 0s`) rebuilds both rows from the VMs' tags.
# (b) Overwritten with garbage in place (its -wal/-shm removed: a WAL left beside would mask
#     the garbage until a checkpoint), while the test holds reconcile's recovery lock
#     (<db>.recover-lock) so nothing repairs it during the checks. Expected: `slurm-one status`
#     and a hook (slurm-one-epilog by hand, for a job that does not exist) fail with an error
#     naming the file as corrupt / not a database; `reconcile --dry-run` fails the same way and
#     moves nothing. Once the lock is released, the running reconcile loop (which must not hold
#     on to the table deleted in (a)) moves the file to <db>.corrupt-<unix time>, logging both
#     paths at error level, starts an empty table and rebuilds both rows from the VMs' tags
#     (at once: the job is RUNNING, so no prolog or teardown can be at work on them).
# Then the job is cancelled: its epilog finds the rows and terminates the VMs; nothing leaks.
# Bounded at about 120 s.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

db=$(config_value cluster database) || fail "no cluster.database in $SLURM_ONE_CONFIG"
[ -f "$db" ] || fail "mapping database $db does not exist"
loop_pid=$(cat "$E2E_DEV/run/reconcile.pid" 2>/dev/null)
[ -n "$loop_pid" ] && kill -0 "$loop_pid" 2>/dev/null || fail "the reconcile loop is not running (pid '$loop_pid')"
unlock=$E2E_TMP/unlock.$$
trap 'touch "$unlock"; cancel_my_jobs' EXIT

# rows_are JOB VMIDS: the job's rows name exactly the VMs VMIDS ("3 7"), each rebuilt from tags.
rows_are() {
    local rows
    rows=$(table_rows "$1") || return 1
    [ "$(awk '{print $3}' <<<"$rows" | sort -n | tr '\n' ' ')" = "$2 " ] &&
        [ "$(grep -c "rebuilt from VM tags" <<<"$rows")" -eq 2 ]
}
logged() { log_since "$E2E_LOG" "$mark" | grep -qF "$1"; }

job=$(submit -N2 -o /dev/null --wrap "sleep 300") || fail "sbatch failed"
wait_running "$job" 90
vms=$(vms_of "$job")
[ "$(awk '$2 == 3' <<<"$vms" | wc -l)" -eq 2 ] || fail "job $job has not 2 ACTIVE VMs: $vms"
vm_ids=$(awk '{print $1}' <<<"$vms" | sort -n | tr '\n' ' ')
vm_ids=${vm_ids% }
[ "$(table_rows "$job" | wc -l)" -eq 2 ] || fail "table has not 2 rows for job $job: $(table_rows "$job")"

# --- (a) deleted ------------------------------------------------------------------------
mark=$(log_lines "$E2E_LOG")
rm -f "$db" "$db-wal" "$db-shm"
log "deleted $db under job $job (VMs $vm_ids)"
status=$(slurm-one status --job "$job" 2>"$E2E_TMP/status.err") ||
    fail "slurm-one status failed after the table was deleted: $(cat "$E2E_TMP/status.err")"
[ -z "$(tail -n +2 <<<"$status" | sed '/^\s*$/d')" ] || fail "rows of job $job after the table was deleted: $status"
wait_until 15 logged "mapping database $db did not exist: created it empty" ||
    fail "nobody logged that $db was recreated: $(log_since "$E2E_LOG" "$mark" | tail -5 | tr '\n' ';')"
log "recreated and said so: $(log_since "$E2E_LOG" "$mark" | grep -F "$db did not exist" | head -1 | sed 's/^[0-9.]* //')"
out=$(slurm-one reconcile --grace 0s 2>&1) || fail "slurm-one reconcile --grace 0s failed: $out"
[ "$(grep -c "MissingRow" <<<"$out")" -eq 2 ] || fail "reconcile did not report 2 missing rows: $(tr '\n' ';' <<<"$out")"
rows_are "$job" "$vm_ids" || fail "rows of job $job not rebuilt with VMs $vm_ids: $(table_rows "$job")"
log "reconcile by hand rebuilt the rows of VMs $vm_ids"

# --- (b) corrupt ------------------------------------------------------------------------
mark=$(log_lines "$E2E_LOG")
flock -x "$db.recover-lock" -c "while [ ! -e '$unlock' ]; do sleep 0.1; done" &
flock_pid=$!
lock_held() { ! flock -n -x "$db.recover-lock" true; }
wait_until 10 lock_held || fail "could not take $db.recover-lock"
head -c 65536 /dev/urandom >"$E2E_TMP/garbage"
cat "$E2E_TMP/garbage" >"$db"
rm -f "$db-wal" "$db-shm"
log "overwrote $db with garbage; holding $db.recover-lock"

# The CLI and the hooks fail, naming the file; nothing moves it.
corrupt_msg="mapping database $db is corrupt or not an SQLite database"
out=$(slurm-one status 2>&1) && fail "slurm-one status succeeded on a garbage table: $out"
grep -qF "$corrupt_msg" <<<"$out" || fail "slurm-one status does not say $db is corrupt: $out"
log "slurm-one status: $(tail -1 <<<"$out")"
"${E2E_IN_SLURM[@]}" env -i SLURM_JOB_ID=999999 SLURM_JOB_NODELIST=vm9 SLURM_SCRIPT_CONTEXT=epilog_slurmctld \
    "$E2E_HOOKS/slurm-one-epilog" >"$E2E_TMP/hook.out" 2>&1
rc=$?
[ $rc -eq 2 ] || fail "slurm-one-epilog on a garbage table exited $rc, want 2: $(cat "$E2E_TMP/hook.out")"
grep -qF "$corrupt_msg" "$E2E_TMP/hook.out" || fail "slurm-one-epilog does not say $db is corrupt: $(cat "$E2E_TMP/hook.out")"
log "slurm-one-epilog (exit 2): $(tail -1 "$E2E_TMP/hook.out")"
out=$(slurm-one reconcile --dry-run --grace 0s 2>&1) && fail "reconcile --dry-run succeeded on a garbage table: $out"
grep -qF "$corrupt_msg" <<<"$out" || fail "reconcile --dry-run does not say $db is corrupt: $out"
cmp -s "$db" "$E2E_TMP/garbage" || fail "$db changed while only failing readers touched it"
ls "$db".corrupt-* >/dev/null 2>&1 && fail "something moved $db aside while the recovery lock was held: $(ls "$db".corrupt-*)"

# The loop recovers once the lock is released.
touch "$unlock"
wait "$flock_pid"
moved_line() { log_since "$E2E_LOG" "$mark" | grep -E "slurm-one\[$loop_pid\]: error: $corrupt_msg .*: moved it to $db\.corrupt-[0-9]+"; }
wait_until 40 moved_line || fail "the reconcile loop did not move $db aside within 40s: $(log_since "$E2E_LOG" "$mark" |
    grep -F "slurm-one[$loop_pid]" | tail -4 | tr '\n' ';')"
moved=$(moved_line | head -1 | grep -oE "moved it to $db\.corrupt-[0-9]+" | sed 's/^moved it to //')
cmp -s "$moved" "$E2E_TMP/garbage" || fail "$moved is not the garbage that was in $db"
log "the loop moved it to $moved"
slurm-one status >/dev/null 2>&1 || fail "slurm-one status fails on the new table: $(slurm-one status 2>&1 | tail -1)"
t0=$SECONDS
wait_until 150 rows_are "$job" "$vm_ids" ||
    fail "the reconcile loop did not rebuild the rows of job $job (VMs $vm_ids) within 150s: $(table_rows "$job")"
log "the loop rebuilt the rows of VMs $vm_ids $((SECONDS - t0))s after the move"

# The job's end still tears its VMs down, through its rows.
mark=$(log_lines "$E2E_LOG")
scancel "$job" || fail "scancel $job failed"
wait_ended "$job" 60 >/dev/null || exit 1
wait_until 60 all_vms_done "$job" || fail "VMs of job $job not DONE 60s after scancel: $(vms_of "$job")"
wait_until 30 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job")"
# (SuspendProgram ends them as slurmctld powers the nodes down; the epilog would for nodes
# the prolog had not marked.)
log_since "$E2E_LOG" "$mark" | grep -qE "slurm-one-(suspend|epilog)\[[0-9]+\]: info: job $job: teardown terminated [1-9]" ||
    fail "no hook tore the VMs of job $job down through the rows: $(log_since "$E2E_LOG" "$mark" |
        grep -E "job $job" | sed 's/^[0-9.]* //' | tr '\n' ';')"
why=$(assert_clean 90) || fail "$why"
