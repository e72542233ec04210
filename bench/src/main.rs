//! `rangealloc-bench`: builds the per-allocator workers, runs every workload against
//! every allocator interleaved, and writes the table, JSON, charts and markdown.
//! See `bench/README.md` and [`rangealloc_bench::runner`].

fn main() -> std::process::ExitCode {
    rangealloc_bench::runner::main()
}
