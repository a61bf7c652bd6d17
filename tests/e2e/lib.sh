# shellcheck shell=bash
# Helpers of the end-to-end suite (scripts/e2e). Sourced by every tests/e2e/test_*.sh and by
# the runner. Needs the local cluster of scripts/cluster to be up; runs as root.
#
# A case is a file that sources this, calls `case_begin`, submits jobs with `submit`, asserts
# with deadlines (`wait_until`), and calls `fail "why"` (exit 1) or simply ends (exit 0).
# Its jobs are cancelled when it exits. The runner calls `assert_clean` after each case.

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
eval "$("$E2E_ROOT/scripts/cluster" env)"
E2E_DEV=${SLURM_ONE_DEV:-/run/slurm-one-dev}
E2E_LOG=$E2E_DEV/log/slurm-one.log
# Where the cluster's hooks are (scripts/cluster env: the package's /usr/libexec/slurm-one,
# in the series' root if any, or the copies in $E2E_DEV/bin).
E2E_HOOKS=$SLURM_ONE_HOOK_DIR
E2E_CTLD_LOG=$E2E_DEV/log/slurmctld.log
# Scratch space shared with the VMs (their mount namespaces see the host's /tmp).
E2E_TMP=${E2E_TMP:-$(mktemp -d /tmp/slurm-one-e2e.XXXXXX)}
chmod 755 "$E2E_TMP"
E2E_JOBS=$E2E_TMP/jobs.$$
: >"$E2E_JOBS"
# Prefix that runs a command where slurmctld runs its hooks: in the SLURM series' root when
# the cluster runs a series other than the host's (scripts/cluster env), else as it is.
# shellcheck disable=SC2034 # used by the cases
E2E_IN_SLURM=()
if [ -n "${SLURM_ONE_SLURM_ROOT:-}" ]; then E2E_IN_SLURM=(chroot "$SLURM_ONE_SLURM_ROOT"); fi
# The cluster's SLURM series, e.g. 24.11 (from its own scontrol).
slurm_series() { scontrol --version | awk '{print $2}' | cut -d. -f1,2; }

# --- reporting ------------------------------------------------------------------------

E2E_CASE=${E2E_CASE:-$(basename "$0" .sh)}

log() { echo "[$(date +%T)] $E2E_CASE: $*" >&2; }

# fail WHY: the case failed; WHY goes to $E2E_REASON (read by the runner) and stderr.
fail() {
    log "FAIL: $*"
    [ -n "${E2E_REASON:-}" ] && printf '%s\n' "$*" >"$E2E_REASON"
    exit 1
}

# Cancels the jobs this process submitted (EXIT trap of every case).
cancel_my_jobs() {
    local j
    [ -s "$E2E_JOBS" ] || return 0
    for j in $(cat "$E2E_JOBS"); do scancel "$j" 2>/dev/null || true; done
}

case_begin() {
    # (No TERM trap: the runner cancels whatever a killed case left.)
    trap 'cancel_my_jobs' EXIT
    log "begin"
}

# --- waiting --------------------------------------------------------------------------

# wait_until SECS CMD...: runs CMD every 0.5 s until it succeeds (0) or SECS pass (1).
wait_until() {
    local secs=$1
    shift
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.5
    done
}

# --- SLURM ----------------------------------------------------------------------------

# submit SBATCH_ARGS...: submits, remembers the job for cancel_my_jobs, prints its id.
submit() {
    local id
    id=$(sbatch --parsable "$@") || return 1
    id=${id%%;*}
    echo "$id" >>"$E2E_JOBS"
    echo "$id"
}

# job_field JOB FIELD: one field of `scontrol show job` (empty once the record is gone).
# AdminComment/Comment/Reason keep their spaces (they end at the next ` Key=`).
job_field() {
    scontrol show job "$1" 2>/dev/null | python3 -c '
import re, sys
text, field = sys.stdin.read(), sys.argv[1]
m = re.search(r"(?:^|\s)" + re.escape(field) + r"=(.*?)(?=\s+[A-Za-z:/]+=|\n|$)", text)
print(m.group(1) if m else "")' "$2"
}

job_state() { job_field "$1" JobState; }

# job_in_state JOB STATE...: true when the job is in one of the states.
job_in_state() {
    local s j=$1
    shift
    s=$(job_state "$j")
    for want in "$@"; do [ "$s" = "$want" ] && return 0; done
    return 1
}

job_nodes() { job_field "$1" NodeList; }

E2E_ENDED="COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY BOOT_FAIL DEADLINE PREEMPTED"

# job_summary JOB: state, reason, restarts, admin comment, and the hooks' last word on it.
job_summary() {
    local last
    last=$(grep -E "job $1[^0-9]" "$E2E_LOG" 2>/dev/null | tail -1)
    echo "state=$(job_state "$1") reason=$(job_field "$1" Reason) restarts=$(job_field "$1" Restarts)" \
        "admin_comment='$(job_field "$1" AdminComment)' last hook log: ${last:-none}"
}

# wait_attempt_failed JOB SECS WHAT: waits until a prolog attempt of JOB failed (Restarts >= 1,
# or PENDING again with a slurm-one AdminComment) and prints the AdminComment. Fails the case
# if the job runs or ends instead (WHAT says what was injected), or after SECS.
wait_attempt_failed() {
    local job=$1 secs=$2 what=$3 t0=$SECONDS s restarts comment
    while [ $SECONDS -lt $((t0 + secs)) ]; do
        s=$(job_state "$job") restarts=$(job_field "$job" Restarts) comment=$(job_field "$job" AdminComment)
        if [ "${restarts:-0}" -ge 1 ] || { [ "$s" = PENDING ] && [[ $comment == slurm-one:* ]]; }; then
            log "attempt failed after $((SECONDS - t0))s: $(job_summary "$job")"
            echo "$comment"
            return 0
        fi
        case $s in RUNNING | COMPLETING | COMPLETED | FAILED | CANCELLED | NODE_FAIL | BOOT_FAIL | TIMEOUT)
            fail "job $job went $s although $what: $(job_summary "$job")" ;;
        esac
        sleep 0.3
    done
    fail "no attempt of job $job failed within ${secs}s although $what: $(job_summary "$job")"
}

# node_diag: State, BootTime, SlurmdStartTime of every node not idle~ (why one did not register:
# slurmctld ignores a registration whose BootTime is before the node's resume request).
node_diag() {
    local n
    for n in $(node_states | awk '$2 != "idle~" {print $1}'); do
        scontrol show node "$n" | tr -s ' \n' ' ' |
            grep -oE 'State=[^ ]+|BootTime=[^ ]+|SlurmdStartTime=[^ ]+' | tr '\n' ' ' | sed "s/^/$n: /"
        echo -n "; "
    done
}

# registration_diag JOB: when the hooks say a node did not register, the evidence for the known
# cause: slurmctld ignores a slurmd whose BootTime precedes the node's resume request
# (waiting_for_node_boot, 22.05 node_mgr.c), and one-sim guests report a boot 1-2 s before the
# VM exists.
registration_diag() {
    local c n started
    c=$(job_field "$1" AdminComment)
    [[ $c == *"did not register"* ]] || return 0
    started=$(grep -E "(Allocate|Started) JobId=$1 " "$E2E_CTLD_LOG" | tail -1 | cut -c2-24)
    for n in $(expand "$(grep -oE 'nodes [^ ]+ did not register' <<<"$c" | cut -d' ' -f2)"); do
        echo -n "[$n allocated $started, slurmd reported $(scontrol show node "$n" | grep -oE 'BootTime=[^ ]+')] "
    done
}

# wait_running JOB SECS: waits until JOB is RUNNING, else fails the case.
wait_running() {
    local t0=$SECONDS
    wait_until "$2" job_in_state "$1" RUNNING ||
        fail "job $1 not RUNNING after $2s: $(job_summary "$1"); nodes: $(node_diag) $(registration_diag "$1")"
    log "job $1 RUNNING after $((SECONDS - t0))s on $(job_nodes "$1")"
}

# job_left_running JOB SECS WHY: waits up to SECS for JOB to leave RUNNING (a requeued job
# completes its steps first, so COMPLETING is waited past too) and prints the state it went
# to; fails the case with WHY and that state if it did not.
job_left_running() {
    local end=$((SECONDS + $2)) s
    while [ $SECONDS -lt $end ]; do
        s=$(job_state "$1")
        case $s in RUNNING | COMPLETING) ;; *) echo "$s"; return 0 ;; esac
        sleep 1
    done
    fail "$3: job $1 still $s after $2 s"
}

# expect_failed_or_requeued JOB STATE WHAT: a job whose node died must fail or be requeued
# (then with Restarts >= 1); anything else fails the case.
expect_failed_or_requeued() {
    case $2 in
    PENDING | REQUEUED | REQUEUE_FED | REQUEUE_HOLD)
        [ "$(job_field "$1" Restarts)" -ge 1 ] || fail "job $1 $2 but Restarts=0" ;;
    FAILED | NODE_FAIL | BOOT_FAIL) ;;
    *) fail "job $1 went $2 after $3: $(job_summary "$1")" ;;
    esac
}

# wait_ended JOB SECS: waits until JOB reached a final state (prints it), else fails.
wait_ended() {
    local t0=$SECONDS
    # shellcheck disable=SC2086
    wait_until "$2" job_in_state "$1" $E2E_ENDED ||
        fail "job $1 not finished after $2s: $(job_summary "$1")"
    log "job $1 $(job_state "$1") after $((SECONDS - t0))s"
    job_state "$1"
}

# node_states: "vm1 idle~" lines (compact state with SLURM's suffixes).
node_states() { sinfo -h -N -o "%N %t"; }

# expand HOSTLIST: one name a line.
expand() { scontrol show hostnames "$1"; }

# --- OpenNebula (one-sim) through XML-RPC ---------------------------------------------

# one_py CMD ARGS...: talks to the endpoint and session of $SLURM_ONE_CONFIG.
#   vms [JOB]                      VMs tagged SLURM_CLUSTER=dev (all states), one a line:
#                                  id state lcm job node memory vcpu cpu ip
#   fault_add METHOD NTH CODE MSG  sim.fault.add
#   fault_clear                    sim.fault.clear
#   fault_delay METHOD MILLIS      sim.fault.delay (every call of METHOD, until fault_clear)
#   hosts_full true|false          sim.fault.hosts_full (new VMs stay PENDING)
#   vm_fail ID LCM_STATE           sim.vm.fail (e.g. BOOT_FAILURE)
one_py() {
    python3 - "$SLURM_ONE_CONFIG" "$@" <<'EOF'
import sys, tomllib, xmlrpc.client
import xml.etree.ElementTree as ET
cfg = tomllib.load(open(sys.argv[1], "rb"))
session = open(cfg["opennebula"]["auth_file"]).read().strip()
one = xmlrpc.client.ServerProxy(cfg["opennebula"]["endpoint"])
cluster = cfg["cluster"]["name"]
cmd, args = sys.argv[2], sys.argv[3:]
def check(r):
    if not r[0]:
        sys.exit(f"{cmd}: OpenNebula error {r[2] if len(r) > 2 else '?'}: {r[1]}")
    return r[1]
if cmd == "vms":
    pool = ET.fromstring(check(one.one.vmpool.infoextended(session, -2, -1, -1, -2)))
    for vm in pool.findall("VM"):
        ut = lambda k: (vm.findtext(f"USER_TEMPLATE/{k}") or "-").strip()
        t = lambda k: (vm.findtext(f"TEMPLATE/{k}") or "-").strip()
        if ut("SLURM_CLUSTER") != cluster:
            continue
        if args and ut("SLURM_JOB_ID") != args[0]:
            continue
        print(vm.findtext("ID"), vm.findtext("STATE"), vm.findtext("LCM_STATE"),
              ut("SLURM_JOB_ID"), ut("SLURM_NODE"), t("MEMORY"), t("VCPU"), t("CPU"),
              t("NIC/IP"))
elif cmd == "fault_add":
    check(one.sim.fault.add(session, args[0], int(args[1]), int(args[2]), args[3]))
elif cmd == "fault_clear":
    check(one.sim.fault.clear(session))
elif cmd == "fault_delay":
    check(one.sim.fault.delay(session, args[0], int(args[1])))
elif cmd == "hosts_full":
    check(one.sim.fault.hosts_full(session, args[0] == "true"))
elif cmd == "vm_fail":
    check(one.sim.vm.fail(session, int(args[0]), args[1]))
else:
    sys.exit(f"one_py: unknown command {cmd}")
EOF
}

# vms_of JOB: the job's VMs (all states), as one_py vms prints them.
vms_of() { one_py vms "$1"; }

# live_vms [JOB]: VMs of the cluster (or job) not DONE (STATE 6).
live_vms() { one_py vms "$@" | awk '$2 != 6'; }

# all_vms_done JOB: the job had VMs and all are DONE.
all_vms_done() {
    local v
    v=$(vms_of "$1") || return 1
    [ -n "$v" ] && [ -z "$(awk '$2 != 6' <<<"$v")" ]
}

# table_rows [JOB]: rows of `slurm-one status` (header dropped).
table_rows() {
    if [ $# -gt 0 ]; then slurm-one status --job "$1"; else slurm-one status; fi | tail -n +2 | sed '/^\s*$/d'
}

# no_rows JOB / no_live_vms JOB: predicates for wait_until (which runs its command anew each
# time; a "$(...)" in its arguments would be evaluated only once).
no_rows() {
    local r
    r=$(table_rows "$1") || return 1 # `slurm-one status` failing is not "no rows"
    [ -z "$r" ]
}
no_live_vms() { [ -z "$(live_vms "$1")" ]; }

# --- invariant -----------------------------------------------------------------------

# assert_clean [SECS]: within SECS (default 60): no VM tagged with this cluster outside DONE
# in one-sim, no row in `slurm-one status`, every node `idle~`; with qemu VMs also no qemu
# process, VM directory or port on the bridge left. Prints why not and returns 1.
assert_clean() {
    local secs=${1:-60} end vms rows bad left=""
    end=$((SECONDS + secs))
    while :; do
        vms=$(live_vms 2>&1) || vms="cannot list VMs: $vms"
        rows=$(table_rows 2>/dev/null) || rows="slurm-one status failed: $(slurm-one status 2>&1 | tail -1)"
        bad=$(node_states 2>&1 | awk '$2 != "idle~"') || true
        [ "$(vm_driver)" = qemu ] && left=$(qemu_leftovers)
        [ -z "$vms$rows$bad$left" ] && return 0
        [ $SECONDS -lt $end ] || break
        sleep 1
    done
    local why=()
    [ -n "$vms" ] && why+=("VMs not DONE: $(tr '\n' ';' <<<"$vms")")
    [ -n "$rows" ] && why+=("table rows: $(tr -s ' \n' ' ;' <<<"$rows")")
    [ -n "$bad" ] && why+=("nodes not idle~: $(tr '\n' ';' <<<"$bad")")
    [ -n "$left" ] && why+=("qemu leftovers: $left")
    echo "not clean after ${secs}s: ${why[*]}"
    return 1
}

# --- VMs seen from the host -----------------------------------------------------------

# vm_driver: ns or qemu, as `scripts/cluster up --vm` recorded it.
vm_driver() { cat "$E2E_DEV/etc/vm-driver" 2>/dev/null || echo ns; }

# qemu_vm_dir VMID: the qemu driver's directory of one-sim's VM VMID.
qemu_vm_dir() { echo "$E2E_DEV/state/one-sim/qemu/vm-$1"; }

# qemu_pid VMID: the pid of the VM's running qemu (its current instance).
qemu_pid() {
    local d slot pid
    d=$(qemu_vm_dir "$1")
    slot=$(cat "$d/slot" 2>/dev/null) || return 1
    pid=$(cat "$d/qemu-$slot.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# qemu_leftovers: qemu processes of this cluster, VM directories and bridge ports, when no VM
# is live (what the qemu driver must have removed).
qemu_leftovers() {
    local procs dirs ports
    procs=$(pgrep -f "qemu-system-x86_64 .*$E2E_DEV/state/" | tr '\n' ' ')
    dirs=$(find "$E2E_DEV/state/one-sim/qemu" -mindepth 1 -maxdepth 1 -name 'vm-*' 2>/dev/null | tr '\n' ' ')
    ports=$(ip -br link show master "${SLURM_ONE_BRIDGE:-onebr0}" 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
    echo "${procs:+processes $procs}${dirs:+dirs $dirs}${ports:+bridge ports $ports}"
}

# job_report JOB: what a job running in real guests handed back in its Comment (they share no
# file system with this host), one line per `;`-separated part.
job_report() { squeue -h --states=all -j "$1" -O Comment:4000 | tr ';' '\n' | sed 's/\s*$//; /^$/d'; }

# vm_netns VMID IP: the netns of one-sim's VM VMID (name ends in -VMID, holds IP).
vm_netns() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep -E -- "-$1\$"); do
        if ip -n "$ns" -4 addr show 2>/dev/null | grep -qw "inet $2"; then
            echo "$ns"
            return 0
        fi
    done
    return 1
}

# log_since FILE LINE: lines of FILE after line number LINE.
log_lines() { wc -l <"$1" 2>/dev/null || echo 0; }
log_since() { tail -n +"$(($2 + 1))" "$1" 2>/dev/null; }

# --- the slurm-one config the hooks read ---------------------------------------------

# config_set SECTION KEY VALUE: sets `KEY = VALUE` (VALUE is TOML, e.g. '"5s"' or 2) in
# [SECTION] of $SLURM_ONE_CONFIG; every hook run reads it anew. The first call saves the
# original, which config_restore (call it in the case's EXIT trap) puts back.
config_set() {
    [ -f "$SLURM_ONE_CONFIG.e2e-orig" ] || cp -p "$SLURM_ONE_CONFIG" "$SLURM_ONE_CONFIG.e2e-orig"
    python3 - "$SLURM_ONE_CONFIG" "$1" "$2" "$3" <<'EOF'
import re, sys
path, section, key, value = sys.argv[1:]
text = open(path).read()
m = re.search(r"(?m)^\[" + re.escape(section) + r"\]\n", text)
if not m:
    sys.exit(f"config_set: no [{section}] in {path}")
end = re.compile(r"(?m)^\[").search(text, m.end())
end = end.start() if end else len(text)
body = text[m.end():end]
line = f"{key} = {value}\n"
body, n = re.subn(r"(?m)^" + re.escape(key) + r"\s*=.*\n", lambda _: line, body)
if n == 0:
    body = line + body
open(path, "w").write(text[:m.end()] + body + text[end:])
EOF
}

# config_value SECTION KEY: a value of $SLURM_ONE_CONFIG (as TOML gives it).
config_value() {
    python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))[sys.argv[2]][sys.argv[3]])' \
        "$SLURM_ONE_CONFIG" "$1" "$2"
}

# config_sub REGEX REPLACEMENT: Python re.sub (multiline) on the whole $SLURM_ONE_CONFIG,
# saved first like config_set (for multi-line values); fails when REGEX matches nothing.
config_sub() {
    [ -f "$SLURM_ONE_CONFIG.e2e-orig" ] || cp -p "$SLURM_ONE_CONFIG" "$SLURM_ONE_CONFIG.e2e-orig"
    python3 - "$SLURM_ONE_CONFIG" "$1" "$2" <<'EOF'
import re, sys
path, pattern, repl = sys.argv[1:]
text = open(path).read()
text, n = re.subn(pattern, repl, text, flags=re.M)
if n == 0:
    sys.exit(f"config_sub: {pattern!r} matches nothing in {path}")
open(path, "w").write(text)
EOF
}

# config_restore: puts back the config config_set saved (no-op when nothing was changed).
config_restore() {
    if [ -f "$SLURM_ONE_CONFIG.e2e-orig" ]; then mv -f "$SLURM_ONE_CONFIG.e2e-orig" "$SLURM_ONE_CONFIG"; fi
}
