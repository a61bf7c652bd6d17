#!/usr/bin/env bash
# The VM of a running 1-node job dies (every process killed, netns removed from outside):
# SLURM must fail or requeue the job, and nothing may stay behind. Bounded at 120 s.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

job=$(submit -N1 -o /dev/null --wrap "sleep 300") || fail "sbatch failed"
wait_running "$job" 90
node=$(job_nodes "$job")
vms=$(vms_of "$job")
[ "$(wc -l <<<"$vms")" -eq 1 ] && [ -n "$vms" ] || fail "job $job has not exactly 1 VM: '$vms'"
read -r id _ _ _ _ _ _ _ ip <<<"$vms"
ns=$(vm_netns "$id" "$ip") || fail "no netns ending in -$id with $ip: $(ip netns list | tr '\n' ' ')"
pids=$(ip netns pids "$ns" | tr '\n' ' ')
[ -n "$pids" ] || fail "netns $ns of VM $id has no processes"
log "killing VM $id ($ns, $ip): pids $pids"
t0=$SECONDS
ctld_mark=$(log_lines "$E2E_CTLD_LOG")
# shellcheck disable=SC2086
kill -9 $pids 2>/dev/null
ip netns del "$ns" || fail "ip netns del $ns failed"

noticed=""
end=$((t0 + 120))
while [ $SECONDS -lt $end ]; do
    s=$(job_state "$job")
    # COMPLETING is on the way (a requeued job completes its steps first): wait past it.
    case $s in RUNNING | COMPLETING) ;; *) noticed=$s; break ;; esac
    sleep 1
done
vm_state=$(vms_of "$job" | awk '{print "STATE " $2 " LCM " $3}')
if [ -z "$noticed" ]; then
    fail "SLURM did not notice VM $id ($node) died within $((SECONDS - t0))s: job still $s," \
        "node $node is '$(sinfo -h -n "$node" -o %T)', VM $vm_state in one-sim (SLURM by itself" \
        "notices a lost slurmd only via SlurmdTimeout, default 300s: 474s measured here)"
fi
log "job $job left RUNNING $((SECONDS - t0))s after the kill: $(job_summary "$job")"
# Why, as slurmctld recorded it: the first node reason set after the kill, and the requeue.
why=$(log_since "$E2E_CTLD_LOG" "$ctld_mark" | grep -m1 "node $node reason set to" | sed 's/.*reason set to: //')
requeue=$(log_since "$E2E_CTLD_LOG" "$ctld_mark" | grep -m1 -E "JobId=$job( |$)" | sed 's/^\[[^]]*\] //')
log "node reason: ${why:-none}; slurmctld: ${requeue:-nothing about job $job}"
[ -n "$why" ] || fail "job $job went $noticed but slurmctld recorded no reason for $node"
[[ $why == *"job $job ended"* ]] && fail "the first reason for $node is the epilog's ('$why'), not why the job ended"
expect_failed_or_requeued "$job" "$noticed" "its VM died"
scancel "$job" 2>/dev/null
wait_until 60 no_live_vms "$job" || fail "VMs of job $job still not DONE: $(vms_of "$job")"
wait_until 30 no_rows "$job" || fail "rows of job $job left: $(table_rows "$job")"
