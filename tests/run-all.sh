#!/usr/bin/env bash
# Runs every test of the project: unit, integration, stress, C ABI, real programs and
# the loom models. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# The C ABI tests preload target/release/librangealloc.so: build it first.
cargo build --release -p rangealloc-ffi

cargo test --release --workspace

# loom models of the region-table protocol (a separate target dir: different cfg).
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --release -p rangealloc-core --lib loom

# The two published crates package and build from their packaged sources (issue 17).
cargo package -p rangealloc-core -p rangealloc --allow-dirty

# The hardened build (encoded free lists, randomized order, zero-on-free).
cargo test --release -p rangealloc-tests --features secure --test secure_mode
