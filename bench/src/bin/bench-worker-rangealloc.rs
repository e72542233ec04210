//! Benchmark worker with rangealloc as the global allocator; spawned by the runner.

#[global_allocator]
static GLOBAL: rangealloc::RangeAlloc = rangealloc::RangeAlloc;

fn main() -> std::process::ExitCode {
    rangealloc_bench::worker_main(&rangealloc_bench::allocators::Rangealloc)
}
