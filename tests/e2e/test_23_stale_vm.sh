#!/usr/bin/env bash
# A stale VM (made for an old job, never terminated) runs a slurmd under node vm1 and
# registers, so slurmctld sees vm1 up. A new job given vm1 must get its own fresh VM and run
# there, unharmed (the prolog waits for a registration from a slurmd newer than the stale
# one); the slurm-one SPANK prolog inside the stale VM refuses the new job; the stale VM is
# removed when vm1 powers down (SuspendProgram ends whatever is mapped to the node).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
case_begin
stale_job=990001
trap 'slurm-one teardown --job $stale_job >/dev/null 2>&1; cancel_my_jobs' EXIT

# The stale VM: what `slurm-one provision` makes for job $stale_job on vm1 (the job never
# existed in SLURM, so nothing but reconcile would ever end it).
slurm-one provision --job "$stale_job" --nodes vm1 >"$E2E_TMP/stale.log" 2>&1 ||
    fail "slurm-one provision of the stale VM failed: $(tail -1 "$E2E_TMP/stale.log")"
read -r stale_id _ _ _ _ _ _ _ stale_ip <<<"$(vms_of "$stale_job")"
# Its slurmd registers under vm1: slurmctld now counts vm1 as powered up.
vm1_up() { [ "$(sinfo -h -n vm1 -o %t)" = idle ]; }
wait_until 60 vm1_up || fail "the stale VM's slurmd did not make vm1 idle: $(sinfo -h -n vm1 -o '%t %E')"
stale_start=$(scontrol show node vm1 | grep -oE 'SlurmdStartTime=[^ ]+')
log "stale VM $stale_id ($stale_ip) registered as vm1 ($stale_start)"

out=$E2E_TMP/out.$$
# Held at first, so the stale VM is asked about the job before anything else happens to it.
job=$(submit -H -N1 -w vm1 -o "$out" --wrap 'grep SLURM_JOB_ID= /run/one-context/context.sh') ||
    fail "sbatch failed"

# The stale VM's own slurm-one SPANK prolog, run there for the new job, refuses it.
ns=$(vm_netns "$stale_id" "$stale_ip") || fail "no netns of stale VM $stale_id"
pid=$(ip netns pids "$ns" | while read -r p; do [ "$(cat /proc/"$p"/comm)" = slurmd ] && echo "$p"; done | head -1)
[ -n "$pid" ] || fail "no slurmd in stale VM $stale_id ($ns)"
err=$(nsenter -t "$pid" -m -u -n -r -w -- env -i PATH=/usr/sbin:/usr/bin:/bin SLURM_CONF="$SLURM_CONF" \
    SLURM_JOBID="$job" SLURM_JOB_ID="$job" SLURM_UID=0 SLURM_JOB_UID=0 SLURM_JOB_GID=0 \
    timeout 20 /usr/sbin/slurmstepd spank prolog </dev/null 2>&1 >/dev/null)
rc=$?
[ $rc -ne 0 ] && [[ $err == *"this VM was made for job $stale_job, not job $job"* ]] ||
    fail "the stale VM's SPANK prolog did not refuse job $job (rc=$rc): $err"
log "stale VM refuses job $job: $(grep -o 'this VM was made.*' <<<"$err" | head -1)"

scontrol release "$job" || fail "scontrol release $job failed"
state=$(wait_ended "$job" 120) || exit 1
[ "$state" = COMPLETED ] || fail "job $job ended $state: $(job_summary "$job")"
[ "$(job_field "$job" Restarts)" = 0 ] || fail "job $job was requeued: $(job_summary "$job")"
grep -qx "SLURM_JOB_ID='$job'" "$out" ||
    fail "job $job did not run on its own VM: its context said '$(cat "$out")'"
new_vm=$(vms_of "$job" | awk '{print $1}')
{ [ -n "$new_vm" ] && [ "$new_vm" != "$stale_id" ]; } || fail "job $job has no VM of its own ('$new_vm')"
log "job $job ran on its own VM $new_vm, not on stale VM $stale_id"

# Powering vm1 down after the job, SuspendProgram ends whatever is still mapped to it.
wait_until 60 all_vms_done "$stale_job" ||
    fail "stale VM $stale_id not DONE 60s after job $job ended: $(vms_of "$stale_job")"
wait_until 30 no_rows "$stale_job" || fail "rows of job $stale_job left: $(table_rows "$stale_job")"
