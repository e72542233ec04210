//! glibc-thread: glibc's `benchtests/bench-malloc-thread.c`.
//!
//! Each thread keeps a working set of `WORKING_SET_SIZE` slots and, per iteration,
//! frees a slot picked from a precomputed random index table and refills it with a
//! block whose size comes from a precomputed table drawn from an inverse-square
//! distribution on [`MIN_SIZE`, `MAX_SIZE`] (glibc's `get_block_size`). All threads
//! share both tables, as in glibc, so they make the same request sequence. No memory
//! crosses threads: this measures the thread-local fast paths under contention for
//! cores (with more threads than cores).
//!
//! Differences: fixed iterations (`iterations` over all threads) instead of glibc's
//! timed loop; blocks are stamped and checked (glibc's benchmark never touches them).
//! `ops` counts free+malloc pairs.

use super::{on_threads, share, Outcome, Params, Scale, Workload};
use crate::block::Block;
use crate::dist::PowerLaw;
use crate::rng::Rng;

/// Live slots per thread: glibc's `WORKING_SET_SIZE`.
const WORKING_SET_SIZE: usize = 1024;
/// Smallest request: glibc's `MIN_ALLOCATION_SIZE`.
const MIN_SIZE: usize = 4;
/// Largest request: glibc's `MAX_ALLOCATION_SIZE`.
const MAX_SIZE: usize = 32 * 1024;
/// Density ∝ size^-2: glibc's inverse-square `get_block_size`.
const EXPONENT: f64 = 2.0;
/// Precomputed sizes: glibc's `NUM_BLOCK_SIZES`.
const NUM_BLOCK_SIZES: usize = 8000;
/// Precomputed slot indices: glibc's `NUM_OFFSETS`.
const NUM_OFFSETS: usize = (1 << 16) - 1;

pub const WORKLOAD: Workload = Workload {
    name: "glibc-thread",
    origin: "glibc benchtests bench-malloc-thread, inverse-square sizes",
    unit: "free+malloc",
    quick: Scale {
        iterations: 3_000_000,
        size: WORKING_SET_SIZE,
        repeat: 1,
    },
    full: Scale {
        iterations: 20_000_000,
        size: WORKING_SET_SIZE,
        repeat: 1,
    },
    run,
    quick_extra_threads: &[],
};

fn run(p: &Params) -> Outcome {
    let mut rng = Rng::for_stream(p.seed, u64::MAX);
    let sizes = PowerLaw::new(MIN_SIZE, MAX_SIZE, EXPONENT).table(&mut rng, NUM_BLOCK_SIZES);
    let working_set = p.scale.size.max(1);
    let offsets: Vec<usize> = (0..NUM_OFFSETS).map(|_| rng.index(working_set)).collect();
    on_threads(p.threads, |tid| {
        let mut slots: Vec<Option<Block>> = (0..working_set).map(|_| None).collect();
        let mut out = Outcome::default();
        let iterations = share(p.scale.iterations, p.threads, tid);
        for i in 0..iterations as usize {
            let slot = &mut slots[offsets[i % NUM_OFFSETS]];
            if let Some(old) = slot.take() {
                out.mismatches += old.check();
            }
            *slot = Some(Block::new(
                sizes[i % NUM_BLOCK_SIZES],
                ((tid as u64) << 40) | i as u64,
            ));
        }
        out.mismatches += slots.iter().flatten().map(Block::check).sum::<u64>();
        out.ops = iterations;
        out
    })
}
