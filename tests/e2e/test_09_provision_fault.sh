#!/usr/bin/env bash
# one.vm.allocate refused once (Quota exceeded): the job is requeued, its AdminComment says
# why, no VM stays, sinfo -R shows the reason until the node comes back.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin
trap 'one_py fault_clear; cancel_my_jobs' EXIT

one_py fault_add one.vm.allocate 1 512 "User [0] : Quota exceeded" || fail "sim.fault.add failed"
job=$(submit -N1 -o /dev/null --wrap "sleep 30") || fail "sbatch failed"
t0=$SECONDS
requeued="" seen_reason="" reasons="" node_reasons="" comment="" failed_node=""
while [ $SECONDS -lt $((t0 + 90)) ]; do
    r=$(sinfo -h -R -o '%N|%E' | grep 'slurm-one:')
    if [ -n "$r" ] && ! grep -qxF "$r" <<<"$reasons"; then
        reasons+="$r"$'\n'
        log "sinfo -R: $r"
    fi
    [ -z "$seen_reason" ] && seen_reason=$(grep 'Quota exceeded' <<<"$r" | head -1)
    # What the nodes' Reason says whatever their state (for the report).
    n=$(sinfo -h -N -o '%N|%T|%E' | cut -d'|' -f3 | grep -E "Quota exceeded|job $job[^0-9]" | sort -u)
    while read -r l; do
        [ -n "$l" ] && ! grep -qxF "$l" <<<"$node_reasons" && node_reasons+="$l"$'\n' && log "node reason: $l"
    done <<<"$n"
    s=$(job_state "$job") restarts=$(job_field "$job" Restarts) reason=$(job_field "$job" Reason)
    if [ -z "$requeued" ] && [ "${restarts:-0}" -ge 1 ]; then
        requeued=yes
        comment=$(job_field "$job" AdminComment) # of this first attempt
        failed_node=$(grep -oE 'node vm[0-9]+' <<<"$comment" | head -1 | cut -d' ' -f2)
        log "requeued after $((SECONDS - t0))s: $(job_summary "$job")"
    fi
    if [ -n "$requeued" ]; then
        # Done once the reason was seen, the failed node is back (it can no longer show), or
        # the job left PENDING (with a short cred_expire it starts again on other nodes).
        [ -n "$seen_reason" ] && break
        case $s in RUNNING | COMPLETED | FAILED | CANCELLED | TIMEOUT) break ;; esac
        [ -n "$failed_node" ] && [ "$(sinfo -h -n "$failed_node" -o %t)" = "idle~" ] && break
    else
        case $s in RUNNING | COMPLETED | FAILED | CANCELLED)
            fail "job $job went $s instead of being requeued: $(job_summary "$job")" ;;
        esac
    fi
    sleep 0.2
done
[ -n "$requeued" ] || fail "job $job not requeued within 90s: $(job_summary "$job")"
[[ $comment == slurm-one:* ]] || fail "AdminComment does not start with 'slurm-one:': '$comment'"
[[ $comment == *"Quota exceeded"* ]] || fail "AdminComment lacks 'Quota exceeded': '$comment'"
if [ "$(job_state "$job")" = PENDING ]; then
    v=$(live_vms "$job")
    [ -z "$v" ] || fail "requeued job $job has VMs outside DONE: $v"
    [ -z "$(table_rows "$job")" ] || fail "rows of requeued job $job left: $(table_rows "$job")"
fi
one_py fault_clear || fail "sim.fault.clear failed"
scancel "$job"
# The node's own reason lasts only until it powers down (idle_on_node_suspend clears it,
# often within a second); the job's AdminComment, checked above, is where the cause stays.
[ -n "$seen_reason" ] && log "sinfo -R showed: $seen_reason" || log "the node powered down before sinfo -R showed its reason"
