#!/usr/bin/env bash
# Instructions per allocation pair through the C ABI (LD_PRELOAD), counted with
# callgrind for rangealloc, jemalloc, tcmalloc, mimalloc and glibc in one run.
# For each pair kind and allocator, pairs.cpp runs N and 2N pairs; the table shows
# (Ir at 2N - Ir at N) / N, so process start-up and the allocator's first-use work
# cancel. The loop and the call add about 5 instructions to every cell.
#
# Usage: bench/probe/pairs.sh [-n N] [-l librangealloc.so] [-k kind,kind...]
# Needs g++, valgrind and the Debian packages libjemalloc2, libtcmalloc-minimal4,
# libmimalloc2.0 (a missing allocator prints "-").
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# 2*10^5 pairs: large enough that a per-pair figure is exact to the instruction (the
# difference of two runs is an integer multiple of N only when every pair costs the
# same), small enough that the 50 callgrind runs take about a minute.
n=200000
lib="$root/target/release/librangealloc.so"
kinds="malloc,new,new-sized,calloc,realloc"
while getopts "n:l:k:" opt; do
    case $opt in
        n) n=$OPTARG ;;
        l) lib=$OPTARG ;;
        k) kinds=$OPTARG ;;
        *) echo "usage: $0 [-n N] [-l librangealloc.so] [-k kinds]" >&2; exit 2 ;;
    esac
done
[ -f "$lib" ] || { echo "no $lib: cargo build --release -p rangealloc-ffi" >&2; exit 1; }

multiarch=/usr/lib/x86_64-linux-gnu
names=(rangealloc jemalloc tcmalloc mimalloc glibc)
libs=("$lib" "$multiarch/libjemalloc.so.2" "$multiarch/libtcmalloc_minimal.so.4"
      "$multiarch/libmimalloc.so.2" "")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
g++ -O2 -std=c++17 -o "$work/pairs" "$here/pairs.cpp"

# Total instructions of one run: callgrind's "summary:" line.
count() { # preload kind iterations
    local out="$work/cg.out"
    LD_PRELOAD="$1" valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$work/pairs" "$2" "$3" >/dev/null 2>"$work/valgrind.log" \
        || { cat "$work/valgrind.log" >&2; return 1; }
    awk '/^summary:/ { print $2 }' "$out"
}

printf '| pair | %s |\n' "$(IFS='|'; echo "${names[*]}" | sed 's/|/ | /g')"
printf '|---|%s\n' "$(for _ in "${names[@]}"; do printf -- '---:|'; done)"
IFS=, read -ra kind_list <<<"$kinds"
for kind in "${kind_list[@]}"; do
    row="| $kind |"
    for i in "${!names[@]}"; do
        preload=${libs[$i]}
        if [ -n "$preload" ] && [ ! -f "$preload" ]; then
            row="$row - |"
            continue
        fi
        one=$(count "$preload" "$kind" "$n")
        two=$(count "$preload" "$kind" $((2 * n)))
        row="$row $(awk -v a="$one" -v b="$two" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }') |"
    done
    echo "$row"
done
echo
echo "instructions per pair, (Ir(2N) - Ir(N)) / N with N = $n; rangealloc = $lib"
