#!/usr/bin/env bash
# OpenNebula unreachable at prolog time: the config's endpoint is set to a closed local port
# (the hooks re-read the config on every run). Expects: the job is requeued, not run or
# failed; its AdminComment starts with "slurm-one:", names the endpoint and says "requeued";
# no VM was made and no row is left. Then the endpoint is put back and the same job must run
# to completion on a fresh VM that is DONE afterwards. The requeued job may start again
# cred_expire + 1 s (21 s) after the failure, at slurmctld's next scheduling pass that
# considers it (backfill every 30 s, the full queue every 60 s), i.e. 21-81 s later (77 s seen
# once). Typically 30-60 s; bounded at about 190 s.
set -uo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
case_begin
trap 'config_restore; cancel_my_jobs' EXIT

# A port nothing listens on: bound once by the kernel's choice, then closed.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()') ||
    fail "cannot pick a free port"
endpoint="http://127.0.0.1:$port/RPC2"
if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null; then
    fail "port $port unexpectedly accepts connections"
fi
all_vms=$(one_py vms) || fail "cannot list VMs: $all_vms"
vms_before=$(awk '{print $1}' <<<"$all_vms" | sort -n | tail -1)
hook_mark=$(log_lines "$E2E_LOG")
config_set opennebula endpoint "\"$endpoint\"" || fail "config_set endpoint failed"
grep -qF "$endpoint" "$SLURM_ONE_CONFIG" || fail "config does not hold $endpoint: $(grep endpoint "$SLURM_ONE_CONFIG")"
log "endpoint now $endpoint"

out=$E2E_TMP/unreachable.out
# shellcheck disable=SC2016 # $(hostname) expands in the VM
job=$(submit -N1 -o "$out" --wrap 'echo "ran on $(hostname)"') || fail "sbatch failed"
comment=$(wait_attempt_failed "$job" 40 "OpenNebula is unreachable") || exit 1
restarts=$(job_field "$job" Restarts)
[[ $comment == slurm-one:* ]] || fail "AdminComment does not start with 'slurm-one:': '$comment'"
[[ $comment == *"$endpoint"* ]] || fail "AdminComment does not name the endpoint $endpoint: '$comment'"
[[ $comment == *"requeued"* ]] || fail "AdminComment does not say 'requeued': '$comment'"
attempt_log=$(log_since "$E2E_LOG" "$hook_mark" | grep -E "job ${job}[^0-9]")
created=$(grep -E "VM [0-9]+ created" <<<"$attempt_log")
[ -z "$created" ] || fail "the hooks report a VM created with OpenNebula unreachable: $created"

# Fix the cause. The job waits at least cred_expire + 1 s (21 s) before its next attempt, so
# what the failed attempt left can be checked now, with the real endpoint.
config_restore
grep -qF "$endpoint" "$SLURM_ONE_CONFIG" && fail "config_restore left $endpoint in the config"
[ "$(job_state "$job")" = PENDING ] || fail "job $job left PENDING before its attempt could be checked: $(job_summary "$job")"
[ "$(job_field "$job" Restarts)" = "$restarts" ] || fail "job $job restarted again before the check: $(job_summary "$job")"
v=$(vms_of "$job") || fail "cannot list VMs: $v"
[ -z "$v" ] || fail "job $job has VMs although OpenNebula was unreachable: $(tr '\n' ';' <<<"$v")"
no_rows "$job" || fail "rows of requeued job $job left (or slurm-one status failed): $(slurm-one status --job "$job" 2>&1 | tr -s ' \n' ' ;')"
all_vms=$(one_py vms) || fail "cannot list VMs: $all_vms"
vms_now=$(awk '{print $1}' <<<"$all_vms" | sort -n | tail -1)
[ "$vms_now" = "$vms_before" ] || fail "a VM was created while OpenNebula was unreachable (last VM id $vms_before → $vms_now)"
log "attempt 1 left no VM and no row; waiting for the job to run with the endpoint fixed"

state=$(wait_ended "$job" 130) || exit 1
[ "$state" = COMPLETED ] || fail "job $job ended $state after the endpoint was fixed: $(job_summary "$job")"
grep -q "^ran on vm" "$out" 2>/dev/null || fail "job output lacks 'ran on vm...': '$(cat "$out" 2>/dev/null)'"
log "job output: $(cat "$out")"
wait_until 20 all_vms_done "$job" || fail "VMs of job $job not all DONE after it completed: $(vms_of "$job" | tr '\n' ';')"
wait_until 10 no_rows "$job" || fail "rows of job $job left after it completed: $(table_rows "$job" | tr -s ' \n' ' ;')"
