#!/usr/bin/env bash
# Two concurrent `-N1` jobs: disjoint nodes, different VMs with different IPs, both complete.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

a=$(submit -N1 -o /dev/null --wrap "sleep 15") || fail "sbatch a failed"
b=$(submit -N1 -o /dev/null --wrap "sleep 15") || fail "sbatch b failed"
wait_running "$a" 90
wait_running "$b" 90
job_in_state "$a" RUNNING || fail "job $a no longer RUNNING when $b started: $(job_summary "$a")"
na=$(job_nodes "$a") nb=$(job_nodes "$b")
[ -n "$na" ] && [ "$na" != "$nb" ] || fail "jobs $a and $b share nodes: '$na' / '$nb'"
va=$(vms_of "$a") && vb=$(vms_of "$b") || fail "cannot list VMs"
log "job $a: $va"
log "job $b: $vb"
[ "$(wc -l <<<"$va")" -eq 1 ] && [ -n "$va" ] || fail "job $a has not exactly 1 VM: '$va'"
[ "$(wc -l <<<"$vb")" -eq 1 ] && [ -n "$vb" ] || fail "job $b has not exactly 1 VM: '$vb'"
read -r ida sa _ _ nodea _ _ _ ipa <<<"$va"
read -r idb sb _ _ nodeb _ _ _ ipb <<<"$vb"
[ "$sa" = 3 ] && [ "$sb" = 3 ] || fail "VMs $ida/$idb are STATE $sa/$sb, not both ACTIVE (3)"
[ "$ida" != "$idb" ] || fail "both jobs map to VM $ida"
[ "$ipa" != - ] && [ "$ipb" != - ] && [ "$ipa" != "$ipb" ] || fail "VM IPs not distinct: '$ipa' / '$ipb'"
[ "$nodea" = "$na" ] && [ "$nodeb" = "$nb" ] || fail "VMs' SLURM_NODE $nodea/$nodeb != job nodes $na/$nb"
sa=$(wait_ended "$a" 90) || exit 1
sb=$(wait_ended "$b" 90) || exit 1
[ "$sa" = COMPLETED ] && [ "$sb" = COMPLETED ] || fail "jobs ended $sa / $sb: $(job_summary "$a") | $(job_summary "$b")"
