#!/usr/bin/env bash
# e2e-timeout: 420
# Two real guests (qemu driver): a plain `sbatch -N2 --mem=600M` whose srun prints, from inside
# each VM, its node, kernel boot id, CPUs and memory. The sizes match the allocation as one-sim
# records it, the two boot ids differ from each other and from the host's, and each VM's
# READY came through OneGate. The guests share no file system with this host: the batch
# script hands its lines back in the job's Comment.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

sim_mark=$(log_lines "$E2E_DEV/log/one-sim.log")
script=$E2E_TMP/qemu-multinode.sh
cat >"$script" <<'JOB'
#!/bin/sh
lines=$(srun sh -c 'echo "vm=$(hostname) boot_id=$(cat /proc/sys/kernel/random/boot_id) nproc=$(nproc) mem_mib=$(( $(sed -n "s/^MemTotal: *\([0-9]*\) kB/\1/p" /proc/meminfo) / 1024 ))"')
scontrol update job="$SLURM_JOB_ID" comment="$(echo "$lines" | tr '\n' ';')"
JOB
job=$(submit -N2 --mem=600M -D /tmp -o /dev/null "$script") || fail "sbatch failed"
state=$(wait_ended "$job" 360) || exit 1
[ "$state" = COMPLETED ] || fail "job $job ended $state, not COMPLETED: $(job_summary "$job")"
report=$(job_report "$job")
log "report: $(tr '\n' ' ' <<<"$report")"
[ "$(wc -l <<<"$report")" -eq 2 ] || fail "expected one line from each of 2 VMs, got: '$report'"
host_boot=$(cat /proc/sys/kernel/random/boot_id)
boots=()
while read -r id _ _ _ node memory vcpu _ _; do
    line=$(grep "^vm=$node " <<<"$report") || fail "no line from $node (VM $id): '$report'"
    nproc=$(sed -n 's/.* nproc=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$(sed -n 's/.* mem_mib=\([0-9]*\).*/\1/p' <<<"$line")
    boot=$(sed -n 's/.* boot_id=\([0-9a-f-]*\) .*/\1/p' <<<"$line")
    [ "$nproc" = "$vcpu" ] || fail "$node sees $nproc CPUs, VM $id has VCPU=$vcpu"
    # MemTotal is what the guest kernel keeps for itself less than the VM's MEMORY.
    [ "$mem" -le "$memory" ] && [ "$mem" -ge $((memory * 80 / 100)) ] ||
        fail "$node sees $mem MiB, VM $id has MEMORY=$memory"
    [ "$memory" -ge 600 ] || fail "VM $id has MEMORY=$memory, the job asked 600M per node"
    [ -n "$boot" ] && [ "$boot" != "$host_boot" ] || fail "$node's boot id '$boot' is the host's"
    boots+=("$boot")
    log_since "$E2E_DEV/log/one-sim.log" "$sim_mark" | grep -q "OneGate: VM $id updated: READY=YES" ||
        fail "VM $id's READY did not come through OneGate (one-sim.log)"
done < <(vms_of "$job")
[ ${#boots[@]} -eq 2 ] || fail "job $job had ${#boots[@]} VMs, not 2: $(vms_of "$job")"
[ "${boots[0]}" != "${boots[1]}" ] || fail "both VMs report boot id ${boots[0]}"
