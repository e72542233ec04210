# Sourced by the workload scripts in this directory.
#
# Each workload prints deterministic output on stdout (compared byte for byte between
# runs with and without the preload) and exits 0; it exits 77 after a "SKIP: ..." line
# on stderr when the program it needs is not installed.
#
# Environment:
#   RA_PRELOAD   library preloaded into the program under test (empty or unset: none);
#                only that program gets it, not the shell tools around it.
#   RA_TIME_LOG  if set, each run of the program under test appends "<wall s> <peak KiB>"
#                to this file (/usr/bin/time), for compare.sh.
#   RA_SCALE     workload size multiplier (default 1).

set -euo pipefail

RA_SCALE=${RA_SCALE:-1}

skip() {
    echo "SKIP: $*" >&2
    exit 77
}

need() { # need PROGRAM APT-PACKAGE
    command -v "$1" >/dev/null 2>&1 || skip "$1 not installed (apt package $2)"
}

# run_prog PROGRAM ARGS...: runs the program under test, preloaded and timed as asked.
run_prog() {
    local timer=()
    if [ -n "${RA_TIME_LOG:-}" ]; then
        timer=(/usr/bin/time -a -o "$RA_TIME_LOG" -f '%e %M')
    fi
    if [ -n "${RA_PRELOAD:-}" ]; then
        "${timer[@]}" env LD_PRELOAD="$RA_PRELOAD" "$@"
    else
        "${timer[@]}" "$@"
    fi
}

# exec_prog PROGRAM ARGS...: like run_prog, but replaces the calling (sub)shell, so
# that `exec_prog server ... &` leaves $! the pid of the program (or of its timer).
exec_prog() {
    local timer=()
    if [ -n "${RA_TIME_LOG:-}" ]; then
        timer=(/usr/bin/time -a -o "$RA_TIME_LOG" -f '%e %M')
    fi
    if [ -n "${RA_PRELOAD:-}" ]; then
        exec "${timer[@]}" env LD_PRELOAD="$RA_PRELOAD" "$@"
    else
        exec "${timer[@]}" "$@"
    fi
}

# A scratch directory removed on exit; scripts add their own cleanup via on_exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rangealloc-real.XXXXXX")
ON_EXIT=()
on_exit() { ON_EXIT+=("$*"); }
cleanup() {
    local cmd
    for cmd in "${ON_EXIT[@]+"${ON_EXIT[@]}"}"; do eval "$cmd" || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
