//! cache-thrash: Hoard's active false-sharing test (Berger et al., "Hoard: a scalable
//! memory allocator for multithreaded applications", ASPLOS 2000), as run by
//! mimalloc-bench (`cache-thrash N 1000 1 2000000 N`).
//!
//! Every thread repeatedly allocates a small object, writes and reads each of its bytes
//! many times, and frees it. An allocator that hands objects on the same cache line to
//! different threads makes those writes ping-pong the line between cores.
//!
//! Differences: `size` is 8 bytes (mimalloc-bench uses 1) so the content check covers a
//! whole word; after the writes each byte is checked against the last value written.
//! As in Hoard, `iterations` objects per thread, and `repeat` (the repetitions) split
//! over the threads. `ops` counts byte writes.

use super::{on_threads, share, Outcome, Params, Scale, Workload};
use crate::block::Block;

pub const WORKLOAD: Workload = Workload {
    name: "cache-thrash",
    origin: "Hoard cache-thrash, active false sharing (mimalloc-bench)",
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

fn run(p: &Params) -> Outcome {
    on_threads(p.threads, |tid| {
        let repetitions = share(p.scale.repeat, p.threads, tid);
        let mut out = Outcome::default();
        for i in 0..p.scale.iterations {
            let object = Block::new(p.scale.size, ((tid as u64) << 40) | i);
            out = out + hammer(&object, repetitions);
        }
        out
    })
}

/// Writes and reads back every byte of `object` `repetitions` times (volatile, so the
/// compiler keeps every access), then checks the last pattern is intact.
pub(super) fn hammer(object: &Block, repetitions: u64) -> Outcome {
    let base = object.as_ptr();
    let len = object.len();
    for rep in 0..repetitions {
        for k in 0..len {
            // SAFETY: `k < len`, inside the live block, which only this thread touches.
            unsafe {
                base.add(k).write_volatile(pattern(k, rep));
                std::hint::black_box(base.add(k).read_volatile());
            }
        }
    }
    let last = repetitions.saturating_sub(1);
    // SAFETY: as above.
    let mismatches = (0..len)
        .filter(|&k| unsafe { base.add(k).read() } != pattern(k, last))
        .count();
    Outcome {
        ops: repetitions * len as u64,
        mismatches: if repetitions == 0 {
            0
        } else {
            mismatches as u64
        },
    }
}

/// The byte written at offset `k` on repetition `rep`: changes every repetition, so a
/// stale or shared line shows up in the final check.
fn pattern(k: usize, rep: u64) -> u8 {
    (k as u64 ^ rep) as u8
}
