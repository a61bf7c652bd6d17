#!/usr/bin/env bash
# The cluster's slurm-one as its package installed it (scripts/cluster up: dpkg -i into the
# system SLURM runs in, this host or the series' root): every file the package lists is
# there and unchanged (dpkg --verify; the config is the admin's to edit), the hooks
# slurm.conf names and the plugin slurmd loads are the package's, the CLI reports the
# package's version, man slurm-one(8) and slurm-one.toml(5) render without a groff warning,
# and bash completes the CLI's subcommands and options. Read-only: no job is submitted.
set -uo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
case_begin

[ "$(cat "$E2E_DEV/etc/install" 2>/dev/null)" = package ] ||
    fail "the cluster does not run from the packages (SLURM_ONE_INSTALL=build)"
root=${SLURM_ONE_SLURM_ROOT:-}
in_system() { if [ -n "$root" ]; then chroot "$root" "$@"; else "$@"; fi; }

version=$(in_system dpkg-query -W -f='${Version}' slurm-one) || fail "slurm-one is not installed${root:+ in $root}"
status=$(in_system dpkg-query -W -f='${Status}' slurm-one)
[ "$status" = "install ok installed" ] || fail "slurm-one's status is '$status'"
log "slurm-one $version installed${root:+ in $root}"

# Files as shipped; only the config (a conffile, marked c) may differ.
changed=$(in_system dpkg --verify slurm-one 2>&1 | grep -v ' c /etc/slurm-one/slurm-one.toml$')
[ -z "$changed" ] || fail "dpkg --verify slurm-one: $changed"

files=$(in_system dpkg-query -L slurm-one)
for f in /usr/bin/slurm-one /usr/libexec/slurm-one/slurm-one-{prolog,epilog,resume,suspend} \
    /usr/lib/x86_64-linux-gnu/slurm-wlm/libslurm_one_spank.so /etc/slurm-one/slurm-one.toml \
    /usr/share/man/man8/slurm-one.8.gz /usr/share/man/man5/slurm-one.toml.5.gz \
    /usr/share/bash-completion/completions/slurm-one /usr/share/doc/slurm-one/examples/slurm.conf \
    /usr/share/doc/slurm-one/examples/plugstack.conf; do
    grep -qxF "$f" <<<"$files" || fail "the package does not ship $f"
done
[ -d "$root/var/lib/slurm-one" ] || fail "postinst made no $root/var/lib/slurm-one"

# What SLURM runs is what the package installed.
for key in PrologSlurmctld EpilogSlurmctld ResumeProgram SuspendProgram; do
    value=$(scontrol show config | sed -n "s/^$key\(\[0\]\)\? *= *//p" | head -1)
    case "$value" in
        /usr/libexec/slurm-one/*) ;;
        *) fail "$key is '$value', not a hook of the package" ;;
    esac
done
grep -q '^required libslurm_one_spank.so config=/etc/slurm-one/slurm-one.toml$' "$E2E_DEV/etc/plugstack.conf" ||
    fail "plugstack.conf does not load the package's plugin: $(cat "$E2E_DEV/etc/plugstack.conf")"

cli_version=$(slurm-one --version) || fail "slurm-one --version failed"
[[ $cli_version == "slurm-one ${version%-*}" ]] || fail "slurm-one --version says '$cli_version', the package is $version"

# The man pages render (groff warnings are errors here), and say what they are.
for page in man8/slurm-one.8.gz man5/slurm-one.toml.5.gz; do
    out=$(MANWIDTH=100 man --warnings=w -l "$root/usr/share/man/$page" 2>"$E2E_TMP/man.err") ||
        fail "man -l $page failed: $(cat "$E2E_TMP/man.err")"
    [ ! -s "$E2E_TMP/man.err" ] || fail "man -l $page warns: $(head -3 "$E2E_TMP/man.err")"
    case $page in
        man8/*) grep -q 'reconcile' <<<"$out" || fail "slurm-one(8) does not document reconcile" ;;
        man5/*) grep -q 'boot_timeout' <<<"$out" || fail "slurm-one.toml(5) does not document boot_timeout" ;;
    esac
    log "$page renders: $(wc -l <<<"$out") lines"
done

# bash completion, as bash-completion calls it: `slurm-one rec<TAB>` and `slurm-one status --<TAB>`.
complete_words() { # word...
    bash -c '
        source "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
        fn=$(complete -p slurm-one | sed -n "s/.*-F \([^ ]*\) .*/\1/p")
        [ -n "$fn" ] || { echo "no completion function for slurm-one" >&2; exit 1; }
        "$fn" slurm-one "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf "%s\n" "${COMPREPLY[@]}"
    ' complete "$root/usr/share/bash-completion/completions/slurm-one" "$@"
}
got=$(complete_words slurm-one rec) || fail "bash completion failed: $got"
grep -qx 'reconcile' <<<"$got" || fail "bash completes 'slurm-one rec' to '$got', not reconcile"
got=$(complete_words slurm-one status --) || fail "bash completion failed: $got"
grep -qx -- '--job' <<<"$got" || fail "bash completes 'slurm-one status --' to '$(tr '\n' ' ' <<<"$got")', without --job"
log "bash completes: slurm-one rec -> reconcile; slurm-one status -- -> $(tr '\n' ' ' <<<"$got")"
