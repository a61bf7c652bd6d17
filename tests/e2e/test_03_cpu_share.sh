#!/usr/bin/env bash
# `--one-cpu-share=0.25 -c 2`: the VM gets VCPU 2 and CPU 0.5.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

job=$(submit -N1 -c 2 --one-cpu-share=0.25 -o /dev/null --wrap "sleep 120") || fail "sbatch failed"
wait_running "$job" 90
vms=$(vms_of "$job") || fail "cannot list VMs: $vms"
log "VMs of job $job: $vms"
[ "$(wc -l <<<"$vms")" -eq 1 ] && [ -n "$vms" ] || fail "job $job has not exactly 1 VM: '$vms'"
read -r id st lcm _ node mem vcpu cpu ip <<<"$vms"
[ "$vcpu" = 2 ] || fail "VM $id VCPU=$vcpu, expected 2"
awk -v c="$cpu" 'BEGIN { exit !(c + 0 == 0.5) }' || fail "VM $id CPU=$cpu, expected 0.5"
