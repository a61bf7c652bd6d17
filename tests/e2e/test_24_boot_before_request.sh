#!/usr/bin/env bash
# A VM whose guest booted before slurmctld asked for its node's power-up: slurmctld ignores
# that slurmd's registration ("Still waiting for boot of node"), and the slurmd does not
# register again. Here the guest reports its namespace's uptime as boot time (no slurmd -b:
# 1-2 s before the VM was made, so before the request) and starts slurmd 3 s later (after
# the request). Expects: the prolog sees the ignored registration and reboots the VM through
# OpenNebula (one.vm.action reboot); the rebooted guest registers; the job completes on that
# same VM; nothing is left.
set -uo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
case_begin
trap 'config_restore; cancel_my_jobs' EXIT

config_sub '^(?:sleep [0-9.]+; )?exec (/usr/sbin/slurmd -N \{node\}) -b ' 'sleep 3; exec \1 ' ||
    fail "cannot change provisioning.start_script"
hook_mark=$(log_lines "$E2E_LOG")
job=$(submit -N1 -o /dev/null --wrap "sleep 3") || fail "sbatch failed"
wait_running "$job" 90
vms=$(vms_of "$job") || fail "cannot list VMs: $vms"
[ "$(sed '/^$/d' <<<"$vms" | wc -l)" -eq 1 ] || fail "job $job should have exactly 1 VM: $(tr '\n' ';' <<<"$vms")"
read -r vm _ <<<"$vms"
ended=$(wait_ended "$job" 60)
[ "$ended" = COMPLETED ] || fail "job $job ended $ended, not COMPLETED: $(job_summary "$job")"
hook=$(log_since "$E2E_LOG" "$hook_mark")
reboot=$(grep -E "job $job: slurmctld ignored node [^ ]+'s registration .*rebooting VM $vm\$" <<<"$hook" | head -1)
[ -n "$reboot" ] || fail "no reboot of VM $vm in the hook log; job $job lines: $(grep -E "job ${job}[:,]" <<<"$hook" | tr '\n' ';')"
log "hook: $reboot"
grep -qE "job $job: 1 nodes registered, job can start" <<<"$hook" ||
    fail "the prolog did not see the rebooted VM register: $(grep -E "job ${job}[:,]" <<<"$hook" | tr '\n' ';')"
