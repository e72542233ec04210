#!/usr/bin/env bash
# Benchmark, by hand (not a test): wall time and peak RSS of the real-program
# workloads under glibc malloc, rangealloc and jemalloc, as medians of interleaved
# runs (the allocator order rotates from round to round), printed as a markdown table
# with ratios to glibc. Also checks that every run printed the same output as glibc.
#
#   tests/real/compare.sh [-n RUNS] [-s SCALE] [WORKLOAD...]
#
# WORKLOAD: python sqlite git redis perl cpython_tests (default: all but
# cpython_tests). Wall = the sum of the program-under-test runs in the workload
# (/usr/bin/time %e; redis: the server's lifetime), peak RSS = the largest of them
# (%M). Needs /usr/bin/time (apt package time) and, for the jemalloc column,
# libjemalloc2. The library: $RANGEALLOC_SO, default target/release/librangealloc.so
# (built with cargo if missing). Note: redis-server is linked with jemalloc, so its
# "glibc" column is jemalloc as linked.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=5
export RA_SCALE=1
while getopts "n:s:" opt; do
    case $opt in
        n) RUNS=$OPTARG ;;
        s) RA_SCALE=$OPTARG ;;
        *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(python sqlite git redis perl)

[ -x /usr/bin/time ] || { echo "compare.sh needs /usr/bin/time (apt package time)" >&2; exit 1; }
SO=${RANGEALLOC_SO:-$ROOT/target/release/librangealloc.so}
if [ ! -f "$SO" ]; then
    (cd "$ROOT" && cargo build --release -p rangealloc-ffi >&2)
fi
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
ALLOCATORS=(glibc rangealloc)
[ -f "$JEMALLOC" ] && ALLOCATORS+=(jemalloc) || echo "note: $JEMALLOC missing (apt package libjemalloc2): no jemalloc column" >&2

preload_for() {
    case $1 in
        glibc) echo "" ;;
        rangealloc) echo "$SO" ;;
        jemalloc) echo "$JEMALLOC" ;;
    esac
}

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A WALL RSS STATUS
for w in "${WORKLOADS[@]}"; do
    script="$HERE/$w.sh"
    [ -f "$script" ] || { echo "no workload $w" >&2; exit 2; }
    n=${#ALLOCATORS[@]}
    for run in $(seq 1 "$RUNS"); do
        for k in $(seq 0 $((n - 1))); do
            a=${ALLOCATORS[$(((run + k) % n))]}
            log="$OUT/$w.$a.$run.time"
            : >"$log"
            status=0
            RA_PRELOAD=$(preload_for "$a") RA_TIME_LOG="$log" bash "$script" >"$OUT/$w.$a.$run.out" 2>"$OUT/$w.$a.$run.err" || status=$?
            if [ "$status" -eq 77 ]; then
                STATUS[$w]="skipped: $(cat "$OUT/$w.$a.$run.err")"
                break 2
            fi
            [ "$status" -eq 0 ] || STATUS[$w.$a]="FAILED (exit $status)"
            # /usr/bin/time also logs "Command exited with non-zero status N" lines.
            awk '$1 ~ /^[0-9.]+$/ && $2 ~ /^[0-9]+$/ { s += $1; if ($2 + 0 > m) m = $2 + 0 }
                 END { printf "%.3f %d\n", s, m }' "$log" >>"$OUT/$w.$a.samples"
            echo "$w run $run/$RUNS $a: $(tail -n 1 "$OUT/$w.$a.samples")" >&2
        done
    done
    for a in "${ALLOCATORS[@]}"; do
        [ -f "$OUT/$w.$a.samples" ] || continue
        for out in "$OUT/$w.$a".*.out; do
            cmp -s "$OUT/$w.glibc.1.out" "$out" || STATUS[$w.$a]="output differs from glibc"
        done
        WALL[$w.$a]=$(cut -d' ' -f1 "$OUT/$w.$a.samples" | median)
        RSS[$w.$a]=$(cut -d' ' -f2 "$OUT/$w.$a.samples" | median)
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo
echo "Medians of $RUNS interleaved runs (scale $RA_SCALE) on $(nproc) CPUs; ratio = allocator / glibc."
echo
header="| workload |"
rule="|---|"
for a in "${ALLOCATORS[@]}"; do header+=" $a wall s |"; rule+="---:|"; done
for a in "${ALLOCATORS[@]}"; do header+=" $a peak RSS MiB |"; rule+="---:|"; done
header+=" notes |"
rule+="---|"
echo "$header"
echo "$rule"
for w in "${WORKLOADS[@]}"; do
    row="| $w |"
    notes=${STATUS[$w]:-}
    for a in "${ALLOCATORS[@]}"; do
        v=${WALL[$w.$a]:-}
        if [ -z "$v" ]; then row+=" - |"; continue; fi
        if [ "$a" = glibc ]; then row+=" $v |"; else row+=" $v ($(ratio "$v" "${WALL[$w.glibc]:-0}")×) |"; fi
        [ -n "${STATUS[$w.$a]:-}" ] && notes+=" $a: ${STATUS[$w.$a]};"
    done
    for a in "${ALLOCATORS[@]}"; do
        v=${RSS[$w.$a]:-}
        if [ -z "$v" ]; then row+=" - |"; continue; fi
        mib=$(awk -v k="$v" 'BEGIN { printf "%.1f", k / 1024 }')
        if [ "$a" = glibc ]; then row+=" $mib |"; else row+=" $mib ($(ratio "$v" "${RSS[$w.glibc]:-0}")×) |"; fi
    done
    [ "$w" = redis ] && notes+=" glibc column: redis-server's linked jemalloc;"
    row+=" ${notes:-} |"
    echo "$row"
done
