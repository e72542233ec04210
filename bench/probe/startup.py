#!/usr/bin/env python3
"""Start-up cost of a preloaded allocator: the wall time of short processes under
LD_PRELOAD of each library, in interleaved rounds (every library once per round),
median and minimum per process.

Two programs: `tiny` (bench/probe/startup_tiny.c, built here with cc: 100 malloc/free
pairs, links nothing but libc) and, with --git, `git log --oneline -5` in a 20-commit
repository made in a scratch directory.

Usage: bench/probe/startup.py [--rounds N] [--runs N] [--git] [--lib NAME=PATH ...]
Default libraries: glibc (none), jemalloc, mimalloc, tcmalloc if installed, and
target/release/librangealloc.so (build it first: cargo build --release -p rangealloc-ffi).
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SYS = "/usr/lib/x86_64-linux-gnu/"
PEERS = [("jemalloc", SYS + "libjemalloc.so.2"), ("mimalloc", SYS + "libmimalloc.so.2"),
         ("tcmalloc", SYS + "libtcmalloc_minimal.so.4")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=40, help="processes per library per round")
    ap.add_argument("--git", action="store_true")
    ap.add_argument("--lib", action="append", default=[], help="NAME=PATH (replaces the defaults)")
    a = ap.parse_args()
    libs = [tuple(x.split("=", 1)) for x in a.lib] or (
        [("glibc", "")] + [p for p in PEERS if os.path.exists(p[1])]
        + [("rangealloc", os.path.join(ROOT, "target/release/librangealloc.so"))])
    scratch = tempfile.mkdtemp(prefix="startup.")
    tiny = os.path.join(scratch, "tiny")
    subprocess.run(["cc", "-O2", "-o", tiny, os.path.join(HERE, "startup_tiny.c")], check=True)
    programs = [("tiny", [tiny])]
    if a.git:
        repo = os.path.join(scratch, "repo")
        env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=scratch)
        subprocess.run(["git", "init", "-q", repo], check=True, env=env)
        for i in range(20):
            with open(os.path.join(repo, "f.txt"), "a") as f:
                f.write(f"line {i}\n")
            subprocess.run(["git", "-C", repo, "add", "f.txt"], check=True, env=env)
            subprocess.run(["git", "-C", repo, "-c", "user.name=a", "-c", "user.email=a@b",
                            "commit", "-q", "-m", f"c{i}"], check=True, env=env)
        programs.append(("git log", ["git", "-C", repo, "log", "--oneline", "-5"]))
    for pname, cmd in programs:
        res = {n: [] for n, _ in libs}
        for _ in range(a.rounds):
            for n, lib in libs:
                env = dict(os.environ, LD_PRELOAD=lib)
                t = time.perf_counter()
                for _ in range(a.runs):
                    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
                res[n].append((time.perf_counter() - t) / a.runs * 1e6)
        for n, v in res.items():
            print(f"{pname:8} {n:12} median {statistics.median(v):7.0f} us  min {min(v):7.0f} us")


if __name__ == "__main__":
    main()
