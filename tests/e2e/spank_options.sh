#!/usr/bin/env bash
# E2E test of the SPANK plugin (libslurm_one_spank.so) inside the real SLURM binaries of this
# machine: sbatch (allocator context: --one-* options, plugstack.conf arguments) and
# `slurmstepd spank prolog` (job_script context: the VM identity check). No slurmctld, slurmd
# or munged runs: a valid submission gets past the plugin and then fails to reach the
# controller. Runs as root (the prolog cases use a private mount namespace). Builds the plugin
# (release) if it is missing. Last line: `N passed, M failed`; exit status 1 on any failure.
# scripts/e2e runs it with the plugin of its cluster (E2E_SPANK_SO) and, for a SLURM series
# other than the host's, that series' programs: `sbatch` is then scripts/cluster's wrapper
# (PATH) and slurmstepd runs in SLURM_ONE_SLURM_ROOT.
# Also prints the time of 30 plugin loads (`sbatch --version`) with and without the plugin.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
so=${E2E_SPANK_SO:-$root/target/release/libslurm_one_spank.so}
slurm_root=${SLURM_ONE_SLURM_ROOT:-}
# In a series' root, $so is the path there (sbatch runs inside it).
if [[ ! -f $slurm_root$so ]]; then
    (cd "$root" && cargo build --quiet -p slurm-one-spank --release) || {
        echo "cannot build $so"
        echo "0 passed, 1 failed"
        exit 1
    }
fi

tmp=$(mktemp -d /tmp/spank_options.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"

cat >"$tmp/slurm-one.toml" <<'EOF'
[templates]
default = "small"
user_selectable = ["big"]
[templates.small]
body = "NIC = [ NETWORK_ID = 0 ]"
[templates.big]
body = "NIC = [ NETWORK_ID = 0 ]"
[templates.secret]
body = "NIC = [ NETWORK_ID = 1 ]"
[sizing]
cpu_share_min = 0.1
cpu_share_max = 1.0
EOF
chmod 644 "$tmp/slurm-one.toml"
mkfifo "$tmp/fifo.toml" # opening it for reading blocks: proves a plain sbatch reads no config

# cluster NAME PLUGSTACK_ARGS... : writes $tmp/NAME/{slurm.conf,plugstack.conf}; prints the
# slurm.conf path. PLUGSTACK_ARGS="" means an empty plugstack.conf (no plugin).
cluster() {
    local name=$1
    shift
    mkdir -p "$tmp/$name"
    if [[ $# -gt 0 ]]; then
        echo "required $so $*" >"$tmp/$name/plugstack.conf"
    else
        : >"$tmp/$name/plugstack.conf"
    fi
    cat >"$tmp/$name/slurm.conf" <<EOF
ClusterName=spanke2e
SlurmctldHost=localhost
# Nothing listens here: submissions that pass the plugin fail to connect.
SlurmctldPort=6899
AuthType=auth/munge
MessageTimeout=2
PlugStackConfig=$tmp/$name/plugstack.conf
NodeName=vm1 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=vm1 Default=YES MaxTime=INFINITE State=UP
EOF
    echo "$tmp/$name/slurm.conf"
}

main_conf=$(cluster main "config=$tmp/slurm-one.toml")
bogus_conf=$(cluster bogus "config=$tmp/slurm-one.toml" bogus=1)
missing_conf=$(cluster missing "config=$tmp/nope.toml")
fifo_conf=$(cluster fifo "config=$tmp/fifo.toml")
vm_conf=$(cluster vm "config=$tmp/slurm-one.toml" require_vm=yes)
none_conf=$(cluster none)

passed=0
failed=0
ok() {
    passed=$((passed + 1))
    echo "ok   $1"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL $1"
    [[ -n ${2:-} ]] && sed 's/^/     | /' <<<"$2"
}

# run CONF CMD...: runs CMD with SLURM_CONF=CONF (20 s at most); sets $rc, $out, $err.
run() {
    local conf=$1
    shift
    SLURM_CONF=$conf timeout 20 "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    out=$(<"$tmp/out")
    err=$(<"$tmp/err")
}

# expect_fail NAME NEEDLE CONF CMD...: CMD exits non-zero and its stderr contains NEEDLE.
expect_fail() {
    local name=$1 needle=$2
    shift 2
    run "$@"
    if [[ $rc -ne 0 && $rc -ne 124 && $err == *"$needle"* ]]; then
        ok "$name"
    else
        fail "$name (rc=$rc, stderr should contain: $needle)" "$err"
    fi
}

# expect_controller_error NAME CONF CMD...: CMD passes the plugin and fails only to connect.
expect_controller_error() {
    local name=$1
    shift
    run "$@"
    if [[ $rc -ne 0 && $rc -ne 124 && $err == *"Unable to contact slurm controller"* &&
        $err != *slurm-one* && $err != *spank* ]]; then
        ok "$name"
    else
        fail "$name (rc=$rc, expected only a controller connection error)" "$err"
    fi
}

# --- sbatch (allocator context) ---

run "$main_conf" sbatch --help
if [[ $rc -eq 0 && $out == *"--one-template=NAME"* && $out == *"--one-cpu-share=F"* ]]; then
    ok "sbatch --help lists --one-template and --one-cpu-share"
else
    fail "sbatch --help lists --one-template and --one-cpu-share (rc=$rc)" "$out$err"
fi
help=$(tr -s ' \n' ' ' <<<"$out")
if [[ $help == *"one of: small, big (default small)"* && $help == *"0.1 <= F <= 1"* ]]; then
    ok "sbatch --help shows the allowed templates and the cpu share bounds"
else
    fail "sbatch --help shows the allowed templates and the cpu share bounds" "$out"
fi

expect_fail "an unknown template is refused listing the allowed ones" \
    "--one-template=nope: unknown template; allowed: small, big" \
    "$main_conf" sbatch --one-template=nope --wrap true
[[ $(grep -c slurm-one <<<"$err") -eq 1 ]] && ok "the user gets one slurm-one line" ||
    fail "the user gets one slurm-one line" "$err"
expect_fail "a template that is not user_selectable is refused" "allowed: small, big" \
    "$main_conf" sbatch --one-template=secret --wrap true
expect_fail "a cpu share above the maximum is refused with the bounds" \
    "--one-cpu-share=2: must be a number with 0.1 <= F <= 1" \
    "$main_conf" sbatch --one-cpu-share=2 --wrap true
expect_fail "a cpu share that is not a number is refused" "0.1 <= F <= 1" \
    "$main_conf" sbatch --one-cpu-share=half --wrap true
expect_fail "an option given through the environment is checked too" "allowed: small, big" \
    "$main_conf" env SLURM_SPANK__SLURM_SPANK_OPTION_slurm_one_one_template=nope \
    sbatch --wrap true
expect_controller_error "valid options get past the plugin to the controller" \
    "$main_conf" sbatch --one-template=big --one-cpu-share=0.5 --wrap true
expect_controller_error "the default template alone is valid" \
    "$main_conf" sbatch --one-template=small --wrap true
expect_fail "an unknown plugstack.conf argument fails sbatch naming it" \
    "unknown plugstack.conf argument \`bogus\`" "$bogus_conf" sbatch --wrap true
expect_fail "an option with an unreadable config names the file" "$tmp/nope.toml" \
    "$missing_conf" sbatch --one-template=big --wrap true
expect_controller_error "a plain sbatch does not read the config (a FIFO would block)" \
    "$fifo_conf" sbatch --wrap true
expect_controller_error "a plain sbatch ignores an unreadable config" \
    "$missing_conf" sbatch --wrap true

# --- slurmstepd spank prolog (job_script context, as root inside the VM) ---

# prolog CONF CONTEXT: runs the spank prolog of job 42 with /run/one-context/context.sh
# holding CONTEXT ("-" = no file), in a private mount namespace with its own /run/one-context.
prolog() {
    local conf=$1 context=$2
    printf '%s' "$context" >"$tmp/context.sh"
    SLURM_CONF=$conf CONTEXT=$context SRC=$tmp/context.sh ROOT=$slurm_root timeout 20 unshare -m bash -c '
        mkdir -p "$ROOT/run/one-context" && mount -t tmpfs slurm-one-e2e "$ROOT/run/one-context" || exit 99
        [[ $CONTEXT == - ]] || cp "$SRC" "$ROOT/run/one-context/context.sh"
        export SLURM_JOBID=42 SLURM_JOB_ID=42 SLURM_UID=0 SLURM_JOB_UID=0 SLURM_JOB_GID=0
        if [[ -n $ROOT ]]; then exec chroot "$ROOT" /usr/sbin/slurmstepd spank prolog </dev/null; fi
        exec /usr/sbin/slurmstepd spank prolog </dev/null' >"$tmp/out" 2>"$tmp/err"
    rc=$?
    err=$(<"$tmp/err")
}

prolog "$main_conf" "SLURM_JOB_ID='42'"$'\n'
[[ $rc -eq 0 ]] && ok "the prolog accepts the VM made for its job" ||
    fail "the prolog accepts the VM made for its job (rc=$rc)" "$err"
prolog "$main_conf" "SLURM_JOB_ID='41'"$'\n'
[[ $rc -ne 0 && $err == *"this VM was made for job 41, not job 42"* ]] &&
    ok "the prolog refuses a VM made for another job" ||
    fail "the prolog refuses a VM made for another job (rc=$rc)" "$err"
prolog "$main_conf" "NAME='vm1'"$'\n'
[[ $rc -ne 0 && $err == *"has no SLURM_JOB_ID"* ]] &&
    ok "the prolog refuses a VM context without a job id" ||
    fail "the prolog refuses a VM context without a job id (rc=$rc)" "$err"
prolog "$main_conf" -
[[ $rc -eq 0 ]] && ok "the prolog allows a node that is not a slurm-one VM" ||
    fail "the prolog allows a node that is not a slurm-one VM (rc=$rc)" "$err"
prolog "$vm_conf" -
[[ $rc -ne 0 && $err == *"not a slurm-one VM (plugstack.conf says require_vm=yes)"* ]] &&
    ok "with require_vm=yes the prolog refuses a node without a VM context" ||
    fail "with require_vm=yes the prolog refuses a node without a VM context (rc=$rc)" "$err"

# --- cost of loading the plugin (reported, not asserted) ---

# loads CONF: milliseconds taken by 30 `sbatch --version` (each loads the plugin stack).
loads() {
    local conf=$1 i start end
    start=${EPOCHREALTIME/./}
    for i in $(seq 30); do SLURM_CONF=$conf sbatch --version >/dev/null 2>&1; done
    end=${EPOCHREALTIME/./}
    echo $(((end - start) / 1000))
}
loads "$none_conf" >/dev/null # warm the page cache
without=$(loads "$none_conf")
with=$(loads "$main_conf")
echo "timing: 30 x sbatch --version: ${without} ms without the plugin, ${with} ms with it"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
