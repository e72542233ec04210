//! Benchmark worker with jemalloc (`tikv-jemallocator`) as the global allocator.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    rangealloc_bench::worker_main(&rangealloc_bench::allocators::Jemalloc)
}
