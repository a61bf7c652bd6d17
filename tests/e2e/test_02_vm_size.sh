#!/usr/bin/env bash
# `sbatch -N1 -c 2 --mem=700M`: the job's VM has MEMORY 700, VCPU 2, CPU 2 (share 1.0).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

job=$(submit -N1 -c 2 --mem=700M -o /dev/null --wrap "sleep 120") || fail "sbatch failed"
wait_running "$job" 90
vms=$(vms_of "$job") || fail "cannot list VMs: $vms"
log "VMs of job $job: $vms"
[ "$(wc -l <<<"$vms")" -eq 1 ] && [ -n "$vms" ] || fail "job $job has not exactly 1 VM: '$vms'"
read -r id st lcm _ node mem vcpu cpu ip <<<"$vms"
[ "$st" = 3 ] && [ "$lcm" = 3 ] || fail "VM $id of job $job is STATE $st LCM $lcm, not RUNNING (3/3)"
[ "$node" = "$(job_nodes "$job")" ] || fail "VM $id carries SLURM_NODE=$node, job runs on $(job_nodes "$job")"
[ "$mem" = 700 ] || fail "VM $id MEMORY=$mem, expected 700"
[ "$vcpu" = 2 ] || fail "VM $id VCPU=$vcpu, expected 2"
awk -v c="$cpu" 'BEGIN { exit !(c + 0 == 2) }' || fail "VM $id CPU=$cpu, expected 2"
