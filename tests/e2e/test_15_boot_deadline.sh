#!/usr/bin/env bash
# The VMs never boot: provisioning.boot_timeout is set to 8s and one-sim pretends every host
# is full (sim.fault.hosts_full), so new VMs stay PENDING. Expects: the prolog gives up at the
# deadline (not before it, and no later than a few seconds after it), the job is requeued,
# its AdminComment starts with "slurm-one:", says the VMs were not up in time and that they
# were PENDING; every VM is ended (DONE); no row is left. Bounded at about 120 s.
set -uo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
case_begin
trap 'one_py fault_clear; config_restore; cancel_my_jobs' EXIT

# hook_time LINE: the epoch seconds (with ms) a slurm-one.log line starts with.
hook_time() { awk '{print $1}' <<<"$1"; }

deadline=8
# Slack after the deadline: one poll round, the rollback of PENDING VMs, a loaded machine.
slack=10
config_set provisioning boot_timeout "\"${deadline}s\"" || fail "config_set boot_timeout failed"
one_py hosts_full true || fail "sim.fault.hosts_full failed"
hook_mark=$(log_lines "$E2E_LOG")
job=$(submit -N2 -o /dev/null --wrap "sleep 30") || fail "sbatch failed"
comment=$(wait_attempt_failed "$job" 60 "its VMs cannot be placed") || exit 1
# Keep the retry (due after cred_expire + 1 s) from making new VMs while this one is checked.
scontrol hold "$job" || fail "scontrol hold $job failed: $(job_summary "$job")"

# When the prolog asked for the VMs and when it gave up, from its own log.
hook=$(log_since "$E2E_LOG" "$hook_mark" | grep -E "job ${job}[^0-9]")
created=$(grep -E "job ${job}: creating [0-9]+ VMs" <<<"$hook" | head -1)
gave_up=$(grep -E "job ${job}: attempt 1: " <<<"$hook" | head -1)
{ [ -n "$created" ] && [ -n "$gave_up" ]; } ||
    fail "hook log lacks the 'creating' or the 'attempt 1:' line of job $job: $(tail -5 <<<"$hook" | tr '\n' ';')"
took=$(awk -v a="$(hook_time "$created")" -v b="$(hook_time "$gave_up")" 'BEGIN {printf "%.1f", b - a}')
log "prolog gave up ${took}s after asking for the VMs (boot_timeout ${deadline}s)"
awk -v t="$took" -v d="$deadline" 'BEGIN {exit !(t >= d - 1)}' ||
    fail "prolog gave up after ${took}s, before boot_timeout ${deadline}s: $gave_up"
awk -v t="$took" -v d="$deadline" -v s="$slack" 'BEGIN {exit !(t <= d + s)}' ||
    fail "prolog gave up after ${took}s, more than ${slack}s past boot_timeout ${deadline}s: $gave_up"

[[ $comment == slurm-one:* ]] || fail "AdminComment does not start with 'slurm-one:': '$comment'"
grep -qiE "not up after|boot_timeout|deadline|timed out|timeout" <<<"$comment" ||
    fail "AdminComment does not say the VMs missed the boot deadline: '$comment'"
[[ $comment == *PENDING* ]] || fail "AdminComment does not say the VMs were PENDING: '$comment'"
[[ $comment == *"; requeued)"* ]] || fail "AdminComment does not say 'requeued': '$comment'"

vms=$(vms_of "$job") || fail "cannot list VMs: $vms"
[ "$(sed '/^$/d' <<<"$vms" | wc -l)" -eq 2 ] || fail "job $job should have had 2 VMs: $(tr '\n' ';' <<<"$vms")"
wait_until 30 all_vms_done "$job" || fail "VMs of job $job not DONE after the deadline: $(vms_of "$job" | tr '\n' ';')"
wait_until 20 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job" | tr -s ' \n' ' ;')"
log "VMs $(vms_of "$job" | awk '{print $1}' | tr '\n' ' ')DONE, no rows"
scancel "$job"
one_py fault_clear || fail "sim.fault.clear failed"
