#!/usr/bin/env bash
# A VM whose guest booted before slurmctld asked for its node's power-up: slurmctld ignores
# that slurmd's registration ("Still waiting for boot of node"), and the slurmd does not
# register again. Here the guest reports a boot time before the request (below) and starts
# slurmd 3 s later (after the request). Expects: the prolog sees the ignored registration and reboots the VM through
# OpenNebula (one.vm.action reboot); the rebooted guest registers; the job completes on that
# same VM; nothing is left.
set -uo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
case_begin
trap 'config_restore; cancel_my_jobs' EXIT

# On 22.05 slurmctld asks for the power-up at its next power-save pass, about a second after
# the allocation; the guest's rounded-up uptime puts its boot 1-2 s before the VM was made,
# so before that request. On 24.11.5 and 26.05.5 the request's time is the allocation's
# second (as seen here; the boot-time guard, waiting_for_node_boot in node_mgr.c, is the same
# code), the second the prolog makes the VM in: the guest then says it booted 2 s before its
# namespace did, through slurmd -b's SLURMD_BOOT_TIME (23.11+, src/slurmd/slurmd/slurmd.c).
# Either way the rebooted guest boots after the request. (On a series in a root file
# system, the line mounts the context and chroots first.)
line='^(?:sleep [0-9.]+; )?((?:mount .* && )?)(exec (?:/usr/sbin/chroot \S+ )?/usr/sbin/slurmd -N \{node\}) -b '
if [ "$(slurm_series)" = 22.05 ]; then
    # 22.05's slurmd has no SLURMD_BOOT_TIME and reports sysinfo's uptime, which a time
    # namespace offsets: the first guest's slurmd runs in one whose boot time is 5 s earlier
    # than the VM's (offsets count from the host's clock, hence the VM's own added), so its
    # boot certainly precedes the request (rounding alone put it there only most of the
    # time); the rebooted guest's slurmd runs without.
    first=$E2E_TMP/first-boot.$$
    repl=$(cat <<'EOF'
sleep 3; x=; if mkdir FIRST 2>/dev/null; then x="unshare --fork --time --boottime $(( $(awk '$1 == "boottime" {print $2}' /proc/self/timens_offsets) + 5 ))"; fi; exec $x /usr/sbin/slurmd -N {node}
EOF
    )
    config_sub "$line" "${repl/FIRST/$first} "
else
    config_sub "$line" 'sleep 3; \1SLURMD_BOOT_TIME=$(( $(date +%s) - $(cut -d. -f1 /proc/uptime) - 2 )) \2 -b '
fi || fail "cannot change provisioning.start_script"
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
