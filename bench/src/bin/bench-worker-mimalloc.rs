//! Benchmark worker with mimalloc (the `mimalloc` crate) as the global allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rangealloc_bench::worker_main(&rangealloc_bench::allocators::Mimalloc)
}
