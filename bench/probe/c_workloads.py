#!/usr/bin/env python3
"""The benchmark's small-object workloads through the C ABI, as a C program sees each
allocator: the `bench-worker-system` worker (Rust's `System` allocator, i.e. the C
`malloc` family) run under LD_PRELOAD of each allocator's shared library. Interleaved
rounds (every allocator once per round, order rotated), median wall time per cell and
its ratio to jemalloc's median in the same run.

With --callgrind, each cell is instead the total instructions of one run under
`valgrind --tool=callgrind` (threads serialised, workload inputs divided by --div):
a count that does not depend on how busy the machine is.

Usage: bench/probe/c_workloads.py [--reps N] [--threads 2,8] [--lib NAME=PATH ...]
                                  [--callgrind [--div N]] [--filter larson,...]
Build first: cargo build --release -p rangealloc-ffi -p rangealloc-bench --bins
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MULTIARCH = "/usr/lib/x86_64-linux-gnu"
# The quick scales of bench/src/workloads (iterations, size, repeat): the small-object
# workloads only.
WORKLOADS = {
    "larson": (1_500_000, 1000, 1),
    "xmalloc": (3_000_000, 64, 1),
    "cache-scratch": (500, 8, 40_000),
    "cache-thrash": (500, 8, 40_000),
    "sh8bench": (2000, 1000, 1),
    "glibc-thread": (3_000_000, 1024, 1),
}
SEED = 24301  # the benchmark's default seed


def run(worker, preload, workload, threads, callgrind=False, div=1):
    iterations, size, repeat = WORKLOADS[workload]
    if repeat > 1:
        repeat = max(1, repeat // div)
    else:
        iterations = max(1, iterations // div)
    env = dict(os.environ)
    if preload:
        env["LD_PRELOAD"] = preload
    else:
        env.pop("LD_PRELOAD", None)
    args = [worker, "--workload", workload, "--threads", str(threads),
            "--iterations", str(iterations), "--size", str(size),
            "--repeat", str(repeat), "--seed", str(SEED)]
    if callgrind:
        counts = "/tmp/c_workloads.callgrind.out"
        args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}"] + args
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        sys.exit(f"{workload} {threads} {preload}: exit {out.returncode}: {out.stderr}")
    if callgrind:
        with open(counts) as f:
            total = next(int(l.split()[1]) for l in f if l.startswith("summary:"))
        return total / 1e6
    record = json.loads(out.stdout.strip().splitlines()[-1])
    return record["wall_ns"] / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", default="2,8")
    ap.add_argument("--filter", default="")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--div", type=int, default=10)
    ap.add_argument("--lib", action="append", default=[],
                    help="NAME=PATH of another preload library (e.g. an older librangealloc.so)")
    o = ap.parse_args()
    worker = os.environ.get("WORKER", os.path.join(ROOT, "target/release/bench-worker-system"))
    libs = [("rangealloc", os.environ.get("RANGEALLOC_SO", os.path.join(ROOT, "target/release/librangealloc.so")))]
    libs += [tuple(spec.split("=", 1)) for spec in o.lib]
    libs += [("jemalloc", f"{MULTIARCH}/libjemalloc.so.2"),
             ("tcmalloc", f"{MULTIARCH}/libtcmalloc_minimal.so.4"),
             ("mimalloc", f"{MULTIARCH}/libmimalloc.so.2"),
             ("glibc", "")]
    libs = [(n, p) for n, p in libs if not p or os.path.exists(p)]
    names = [n for n, _ in libs]
    print(f"| workload | threads | {' | '.join(names)} |")
    print("|---|---:|" + "---:|" * len(names))
    for workload in WORKLOADS:
        if o.filter and not any(f in workload for f in o.filter.split(",")):
            continue
        for threads in [int(t) for t in o.threads.split(",")]:
            times = {n: [] for n in names}
            for rep in range(o.reps):
                k = rep % len(libs)
                for name, path in libs[k:] + libs[:k]:
                    times[name].append(run(worker, path, workload, threads,
                                           o.callgrind, o.div if o.callgrind else 1))
            med = {n: statistics.median(t) for n, t in times.items()}
            base = med["jemalloc"]
            cells = [f"{med[n]:.1f} ({med[n] / base:.2f}×)" for n in names]
            print(f"| {workload} | {threads} | {' | '.join(cells)} |", flush=True)
    if o.callgrind:
        print(f"\nmillions of instructions (callgrind), inputs divided by {o.div} "
              f"(ratio to jemalloc)")
    else:
        print(f"\nmedian wall ms of {o.reps} interleaved runs (ratio to jemalloc's median)")


if __name__ == "__main__":
    main()
