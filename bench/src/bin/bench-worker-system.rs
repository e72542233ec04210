//! Benchmark worker with the system allocator (glibc malloc) as the global allocator.

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

fn main() -> std::process::ExitCode {
    rangealloc_bench::worker_main(&rangealloc_bench::allocators::System)
}
