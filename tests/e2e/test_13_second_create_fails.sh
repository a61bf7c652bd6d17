#!/usr/bin/env bash
# The second of three VM creates of a 3-node job is refused by OpenNebula
# (fault: one.vm.allocate, 2nd call, AUTHORIZATION with a quota message). Expects: the job is
# requeued; its AdminComment starts with "slurm-one:" and carries OpenNebula's message; every
# VM the attempt did make (the 1st, and the 3rd if it was made) is terminated (DONE); the
# refused node has no VM; no row is left. Bounded at about 120 s.
set -uo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
case_begin
trap 'one_py fault_clear; cancel_my_jobs' EXIT

msg="User [0] : limit of 2 reached for VMS quota in user [0]."
one_py fault_add one.vm.allocate 2 512 "$msg" || fail "sim.fault.add failed"
hook_mark=$(log_lines "$E2E_LOG")
job=$(submit -N3 -o /dev/null --wrap "sleep 30") || fail "sbatch failed"
comment=$(wait_attempt_failed "$job" 60 "its 2nd VM create was refused") || exit 1
# Keep the retry (due after cred_expire + 1 s) from making new VMs while this one is checked.
scontrol hold "$job" || fail "scontrol hold $job failed: $(job_summary "$job")"
[[ $comment == slurm-one:* ]] || fail "AdminComment does not start with 'slurm-one:': '$comment'"
[[ $comment == *"$msg"* ]] || fail "AdminComment lacks OpenNebula's message '$msg': '$comment'"
[[ $comment == *"attempt 1 of "*"; requeued"* ]] || fail "AdminComment does not say attempt 1 was requeued: '$comment'"
refused=$(grep -oE 'node vm[0-9]+' <<<"$comment" | head -1 | cut -d' ' -f2)
[ -n "$refused" ] || fail "AdminComment names no node: '$comment'"

# The VMs the attempt made: one (the 1st create) or two (the 3rd too, if it was in flight).
vms=$(vms_of "$job") || fail "cannot list VMs: $vms"
n=$(sed '/^$/d' <<<"$vms" | wc -l)
{ [ "$n" -ge 1 ] && [ "$n" -le 2 ]; } ||
    fail "job $job has $n VMs after the 2nd of 3 creates was refused (want 1 or 2): $(tr '\n' ';' <<<"$vms")"
awk -v node="$refused" '$5 == node' <<<"$vms" | grep -q . &&
    fail "the refused node $refused has a VM: $(tr '\n' ';' <<<"$vms")"
wait_until 30 all_vms_done "$job" ||
    fail "VMs of job $job not all DONE after the failed attempt: $(vms_of "$job" | tr '\n' ';')"
log "VMs of the attempt, all DONE: $(vms_of "$job" | awk '{print $1 " (" $5 ")"}' | tr '\n' ' ')"
wait_until 20 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job" | tr -s ' \n' ' ;')"
rollback=$(log_since "$E2E_LOG" "$hook_mark" | grep -E "job ${job}: rolled back" | tail -1)
log "hook: ${rollback:-no 'rolled back' line}"
scancel "$job"
