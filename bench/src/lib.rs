//! The comparison benchmark: rangealloc against jemalloc, mimalloc and the system
//! allocator, on re-implementations of well-known allocator benchmarks.
//!
//! A global allocator is fixed at link time, so the crate builds one worker binary per
//! allocator (`src/bin/bench-worker-*.rs`, a few lines each) that calls [`worker_main`],
//! and one runner (`src/main.rs` → [`runner::main`]) that spawns the workers interleaved,
//! aggregates their JSON lines and writes the table, JSON, charts and markdown.
//!
//! Layout: [`workloads`] (one file per benchmark, shared by every allocator), [`block`]
//! (content-verified heap blocks), [`rng`] and [`dist`] (deterministic inputs),
//! [`allocators`] (per-allocator probes: stats and syscall counters), [`worker`] (one
//! run in one process) and its output [`record`], [`proc_status`] (RSS), [`runner`]
//! (building workers, scheduling, the strace pass) and [`report`] (outputs).

pub mod allocators;
pub mod block;
pub mod dist;
pub mod proc_status;
pub mod record;
pub mod report;
pub mod rng;
pub mod runner;
pub mod worker;
pub mod workloads;

pub use worker::worker_main;
