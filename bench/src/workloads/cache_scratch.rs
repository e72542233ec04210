//! cache-scratch: Hoard's passive false-sharing test (Berger et al., ASPLOS 2000), as
//! run by mimalloc-bench (`cache-scratch N 1000 1 2000000 N`).
//!
//! The main thread allocates one small object per thread (adjacent in memory with most
//! allocators) and hands one to each thread, which frees it at once. If the allocator
//! then gives that freed memory back to the thread for its own objects, threads end up
//! writing to one shared cache line. The loop afterwards is cache-thrash's.
//!
//! Differences: as for cache-thrash (8-byte objects, content check, `ops` counts byte
//! writes); the handed-over object is also checked before it is freed.

use super::cache_thrash::hammer;
use super::{on_threads, share, Outcome, Params, Scale, Workload};
use crate::block::Block;

pub const WORKLOAD: Workload = Workload {
    name: "cache-scratch",
    origin: "Hoard cache-scratch, passive false sharing (mimalloc-bench)",
    unit: "byte writes",
    quick: Scale {
        iterations: 500,
        size: 8,
        repeat: 40_000,
    },
    full: Scale {
        iterations: 1000,
        size: 8,
        repeat: 120_000,
    },
    run,
    quick_extra_threads: &[],
};

/// Tag space of the objects the main thread allocates.
const HANDED_OVER: u64 = u64::MAX << 40;

fn run(p: &Params) -> Outcome {
    let handed: Vec<_> = (0..p.threads)
        .map(|tid| std::sync::Mutex::new(Some(Block::new(p.scale.size, HANDED_OVER | tid as u64))))
        .collect();
    on_threads(p.threads, |tid| {
        let first = handed[tid]
            .lock()
            .expect("poisoned")
            .take()
            .expect("taken once");
        let mut out = Outcome {
            ops: 0,
            mismatches: first.check(),
        };
        drop(first);
        let repetitions = share(p.scale.repeat, p.threads, tid);
        for i in 0..p.scale.iterations {
            let object = Block::new(p.scale.size, ((tid as u64) << 40) | i);
            out = out + hammer(&object, repetitions);
        }
        out
    })
}
