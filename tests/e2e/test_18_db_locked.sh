#!/usr/bin/env bash
# The mapping table locked by another process for 5 s (python3 sqlite3 `BEGIN EXCLUSIVE`),
# twice: (1) from before sbatch until 5 s after the job's prolog started, so the prolog's first
# write (its "creating" rows) has to wait; (2) from before the job ends until 5 s after its
# epilog started, so the teardown's writes wait. The hooks wait on the busy timeout (10 s, see
# src/mapping.rs), so expected: the job starts and completes normally, the rows are written
# only after each release, the VMs end DONE, the rows go, and the hooks' log has no error
# (no "busy/locked") from the moment of the first lock. Bounded at about 150 s.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

db=$(config_value cluster database) || fail "no cluster.database in $SLURM_ONE_CONFIG"
[ -f "$db" ] || fail "mapping database $db does not exist"
hook_running() { pgrep -f "^$E2E_HOOKS/slurm-one-$1" >/dev/null; }

# lock_db N: holds BEGIN EXCLUSIVE on $db in the background until $E2E_TMP/release.N exists
# (at most 30 s); writes "locked T" and "released T" (unix time) to $E2E_TMP/lock.N.
lock_db() {
    local n=$1
    rm -f "$E2E_TMP/release.$n" "$E2E_TMP/lock.$n"
    python3 - "$db" "$E2E_TMP/release.$n" "$E2E_TMP/lock.$n" <<'EOF' &
import os, sqlite3, sys, time
db, release, out = sys.argv[1:]
c = sqlite3.connect(db, timeout=30, isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
with open(out, "w") as f:
    f.write(f"locked {time.time():.3f}\n")
end = time.time() + 30
while not os.path.exists(release) and time.time() < end:
    time.sleep(0.05)
c.execute("COMMIT")
with open(out, "a") as f:
    f.write(f"released {time.time():.3f}\n")
EOF
    lock_pid=$!
    wait_until 10 grep -q locked "$E2E_TMP/lock.$n" || fail "could not lock $db: $(cat "$E2E_TMP/lock.$n" 2>&1)"
}
# release_db N: releases lock N; sets t_rel to the release time.
release_db() {
    touch "$E2E_TMP/release.$1"
    wait "$lock_pid" || fail "lock holder $1 failed"
    t_rel=$(awk '$1 == "released" {print $2}' "$E2E_TMP/lock.$1")
    [ -n "$t_rel" ] || fail "lock holder $1 did not record its release: $(cat "$E2E_TMP/lock.$1")"
}
# first_write PROGRAMS JOB WHAT: time of the first hooks' log line of PROGRAMS (a regex, e.g.
# "epilog|suspend") writing a row of JOB that matches WHAT.
first_write() {
    log_since "$E2E_LOG" "$mark" | grep -E "^[0-9.]+ slurm-one-($1)\[[0-9]+\]: info: mapping: job $2 .*$3" |
        head -1 | cut -d' ' -f1
}

mark=$(log_lines "$E2E_LOG")
go=$E2E_TMP/go.$$

# (1) Locked while the prolog needs to write.
lock_db 1
log "locked $db; submitting"
job=$(submit -N2 -o /dev/null --wrap "while [ ! -e $go ]; do sleep 0.5; done") || fail "sbatch failed"
wait_until 30 hook_running prolog || fail "no prolog of job $job started within 30s: $(job_summary "$job")"
t_seen=$(date +%s.%N)
sleep 5 # the injected fault: the lock stays 5 s more
release_db 1
log "released the lock 5 s after the prolog started"
wait_running "$job" 90
t_create=$(first_write prolog "$job" "creating")
[ -n "$t_create" ] || fail "no 'creating' row logged for job $job"
awk -v c="$t_create" -v r="$t_rel" 'BEGIN {exit !(c >= r)}' ||
    fail "job $job's rows were written at $t_create, before the lock was released at $t_rel"
log "the prolog (seen at $t_seen) wrote its first row at $t_create, $(awk -v c="$t_create" -v r="$t_rel" \
    'BEGIN {printf "%.2f", c - r}') s after the release"
[ "$(table_rows "$job" | wc -l)" -eq 2 ] || fail "table has not 2 rows for job $job: $(table_rows "$job")"

# (2) Locked while the job ends and its epilog needs to write.
lock_db 2
log "locked $db; ending job $job"
touch "$go"
wait_until 60 hook_running epilog || fail "no epilog of job $job started within 60s: $(job_summary "$job")"
sleep 5 # the injected fault
release_db 2
log "released the lock 5 s after the epilog started"
state=$(wait_ended "$job" 60) || exit 1
[ "$state" = COMPLETED ] || fail "job $job ended $state: $(job_summary "$job")"
wait_until 60 all_vms_done "$job" || fail "VMs of job $job not DONE 60s after the release: $(vms_of "$job")"
wait_until 30 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job")"
log "hooks on job $job since the lock: $(log_since "$E2E_LOG" "$mark" | grep -E "slurm-one-(epilog|suspend)\[" |
    grep -E "job ${job}[: ]" | sed 's/^[0-9]*\.[0-9]* //' | tr '\n' ';')"
# The first teardown write, the epilog's or SuspendProgram's (its safety net sees the rows still
# there while the epilog waits, waits for the lock as well, and may get there first).
t_down=$(first_write "epilog|suspend" "$job" "-> tearing_down")
[ -n "$t_down" ] || fail "no hook logged a row of job $job going tearing_down"
awk -v c="$t_down" -v r="$t_rel" 'BEGIN {exit !(c >= r)}' ||
    fail "job $job's teardown wrote at $t_down, before the lock was released at $t_rel"
log "the teardown wrote its first row $(awk -v c="$t_down" -v r="$t_rel" 'BEGIN {printf "%.2f", c - r}') s after the release"
log_since "$E2E_LOG" "$mark" | grep -qE "slurm-one-epilog\[[0-9]+\]: info: job $job: epilog removed" ||
    fail "the epilog of job $job did not finish: $(log_since "$E2E_LOG" "$mark" | grep -E "slurm-one-epilog" | tail -3 | tr '\n' ';')"
log "teardown: $(log_since "$E2E_LOG" "$mark" | grep -E "job $job: (epilog removed|teardown terminated)" |
    sed 's/^[0-9.]* //' | tr '\n' ';')"
errors=$(log_since "$E2E_LOG" "$mark" | grep -E "\]: error:")
[ -z "$errors" ] || fail "the hooks' log has errors while the table was locked: $(tr '\n' ';' <<<"$errors")"
warnings=$(log_since "$E2E_LOG" "$mark" | grep -E "\]: warn:")
[ -z "$warnings" ] || log "warnings (not failing): $(tr '\n' ';' <<<"$warnings")"
why=$(assert_clean 90) || fail "$why"
