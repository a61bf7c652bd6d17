#!/usr/bin/env bash
# `slurm-one migrate JOB` live-migrates a running job's VM to another host (HOST changes in
# one.vm.info) and `slurm-one resize JOB --cpu-share F` changes its CPU; the job finishes.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin

out=$(mktemp /tmp/e2e-migrate.XXXXXX)
chmod 666 "$out"
job=$(submit -N1 -c 2 -o "$out" --wrap 'for i in $(seq 1 15); do echo "tick $i"; sleep 1; done') \
    || fail "sbatch failed"
wait_running "$job" 90
host_of() { python3 - "$SLURM_ONE_CONFIG" "$1" <<'PY'
import sys, tomllib, xmlrpc.client, xml.etree.ElementTree as ET
cfg = tomllib.load(open(sys.argv[1], "rb"))
s = open(cfg["opennebula"]["auth_file"]).read().strip()
r = xmlrpc.client.ServerProxy(cfg["opennebula"]["endpoint"]).one.vm.info(s, int(sys.argv[2]))
vm = ET.fromstring(r[1])
print(vm.findall("HISTORY_RECORDS/HISTORY")[-1].findtext("HOSTNAME"), vm.findtext("TEMPLATE/CPU"))
PY
}
read -r vm _ <<<"$(vms_of "$job")"
read -r host1 cpu1 <<<"$(host_of "$vm")"
slurm-one migrate --job "$job" || fail "slurm-one migrate failed"
read -r host2 _ <<<"$(host_of "$vm")"
[ -n "$host2" ] && [ "$host2" != "$host1" ] || fail "VM $vm still on $host1 after migrate"
log "VM $vm live-migrated $host1 -> $host2"
[ "$(job_state "$job")" = RUNNING ] || fail "job $job is $(job_state "$job") after the migration"
slurm-one resize --job "$job" --cpu-share 0.25 || fail "slurm-one resize failed"
read -r _ cpu2 <<<"$(host_of "$vm")"
awk -v c="$cpu2" 'BEGIN { exit !(c + 0 == 0.5) }' || fail "VM $vm CPU=$cpu2 after resize to share 0.25 (was $cpu1), expected 0.5"
slurm-one status --job "$job" | grep -q "cpu share 0.25" || fail "the table does not record the resize"
wait_ended "$job" 60
st=$(job_state "$job")
[ -z "$st" ] || [ "$st" = COMPLETED ] || fail "job $job ended $st, not COMPLETED"
[ "$(grep -c '^tick' "$out")" -eq 15 ] || fail "the job's output is incomplete: $(tail -2 "$out")"
rm -f "$out"
assert_clean 90 || fail "$(assert_clean 1)"
