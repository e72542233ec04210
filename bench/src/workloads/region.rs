//! region: large buffers grown and shrunk by `realloc` and freed by another thread, the
//! pattern rangealloc's region design targets (page tables and `mmap_lock` traffic,
//! not size-class speed).
//!
//! Each thread repeatedly allocates a `START_SIZE` buffer, doubles it by `realloc` up
//! to `size` bytes (64 MiB), stamping every page of each new tail (so every page is
//! faulted in), checks it, halves it by `realloc` back to `START_SIZE`, checks it
//! again, and sends it to the next thread, which frees it: a cross-thread free of a
//! buffer that lived in the large path.
//!
//! Ours: no classic benchmark covers this. `iterations` is the number of grow/shrink
//! cycles over all threads; `ops` counts `realloc` calls.

use std::sync::mpsc::{Receiver, Sender};

use super::{on_ring, share, Outcome, Params, Scale, Workload};
use crate::block::Block;

/// Where each buffer starts and ends: 64 KiB, past every allocator's small-object
/// classes, so the whole chain exercises the large/huge paths.
const START_SIZE: usize = 64 * 1024;
/// Largest buffer: 64 MiB, big enough that copying instead of remapping shows.
const MAX_SIZE: usize = 64 * 1024 * 1024;

pub const WORKLOAD: Workload = Workload {
    name: "region",
    origin: "ours: 64 KiB→64 MiB realloc doubling, shrink, cross-thread free",
    unit: "reallocs",
    quick: Scale {
        iterations: 8,
        size: MAX_SIZE,
        repeat: 1,
    },
    full: Scale {
        iterations: 48,
        size: MAX_SIZE,
        repeat: 1,
    },
    run,
    quick_extra_threads: &[],
};

fn run(p: &Params) -> Outcome {
    on_ring(p.threads, |tid, inbox, next| worker(p, tid, inbox, next))
}

fn worker(p: &Params, tid: usize, inbox: Receiver<Block>, next: Sender<Block>) -> Outcome {
    let max = p.scale.size.max(START_SIZE);
    let mut out = Outcome::default();
    for cycle in 0..share(p.scale.iterations, p.threads, tid) {
        out.mismatches += inbox.try_iter().map(|b| b.check()).sum::<u64>();
        let mut buffer = Block::new(START_SIZE, ((tid as u64) << 40) | cycle);
        let mut len = START_SIZE;
        while len < max {
            len = (len * 2).min(max);
            buffer.realloc(len);
            out.ops += 1;
        }
        out.mismatches += buffer.check();
        while len > START_SIZE {
            len = (len / 2).max(START_SIZE);
            buffer.realloc(len);
            out.ops += 1;
        }
        out.mismatches += buffer.check();
        next.send(buffer).expect("inbox outlives its senders");
    }
    drop(next);
    out.mismatches += inbox.iter().map(|b| b.check()).sum::<u64>();
    out
}
