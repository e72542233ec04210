//! sh8bench: MicroQuill's SmartHeap benchmarks sh6bench (sizes stepping through a
//! range, frees in orders unlike allocation order) and sh8bench (the same with blocks
//! freed by other threads), as run by mimalloc-bench with 2 × cores threads.
//!
//! Each thread repeatedly allocates a batch of `size` blocks whose sizes step by
//! `SIZE_STEP` through `MIN_SIZE`..=`MAX_SIZE`, then frees the odd-indexed half in
//! reverse order (LIFO), hands a third of the rest to the next thread (sh8bench's
//! cross-thread free), and frees the remainder in allocation order (FIFO). Blocks it
//! received are freed at the start of its next batch.
//!
//! Differences: the free orders follow the SmartHeap benchmarks' spirit (LIFO, FIFO,
//! interleaved) rather than their exact code, which is not freely redistributable;
//! fixed batch counts (`iterations` over all threads) instead of a timed run; blocks are
//! stamped and checked. `ops` counts allocations.

use std::sync::mpsc::{Receiver, Sender};

use super::{on_ring, share, Outcome, Params, Scale, Workload};
use crate::block::Block;
use crate::rng::Rng;

/// Smallest block: SmartHeap's benchmarks start at one byte.
const MIN_SIZE: usize = 1;
/// Largest block: sh6bench's default maximum.
const MAX_SIZE: usize = 1000;
/// Size increment between consecutive blocks: a prime, so successive batches do not
/// line up on the same sizes.
const SIZE_STEP: usize = 37;
/// Fraction (1 in this many) of the surviving blocks handed to the next thread.
const CROSS_SHARE: usize = 3;

pub const WORKLOAD: Workload = Workload {
    name: "sh8bench",
    origin: "MicroQuill SmartHeap sh6bench/sh8bench size steps, LIFO/FIFO/cross-thread frees",
    unit: "allocations",
    quick: Scale {
        iterations: 2000,
        size: 1000,
        repeat: 1,
    },
    full: Scale {
        iterations: 12_000,
        size: 1000,
        repeat: 1,
    },
    run,
    quick_extra_threads: &[],
};

fn run(p: &Params) -> Outcome {
    on_ring(p.threads, |tid, inbox, next| worker(p, tid, inbox, next))
}

fn worker(
    p: &Params,
    tid: usize,
    inbox: Receiver<Vec<Block>>,
    next: Sender<Vec<Block>>,
) -> Outcome {
    let mut rng = Rng::for_stream(p.seed, tid as u64);
    let mut size = rng.range(MIN_SIZE, MAX_SIZE + 1);
    let mut id = (tid as u64) << 40;
    let mut out = Outcome::default();
    for _ in 0..share(p.scale.iterations, p.threads, tid) {
        for foreign in inbox.try_iter() {
            out.mismatches += check_all(&foreign);
        }
        let mut batch: Vec<Option<Block>> = Vec::with_capacity(p.scale.size);
        for _ in 0..p.scale.size {
            id += 1;
            batch.push(Some(Block::new(size, id)));
            size = MIN_SIZE + (size - MIN_SIZE + SIZE_STEP) % (MAX_SIZE - MIN_SIZE + 1);
        }
        out.ops += p.scale.size as u64;
        // LIFO over the odd indices.
        for slot in batch.iter_mut().skip(1).step_by(2).rev() {
            out.mismatches += slot.take().map_or(0, |b| b.check());
        }
        let mut survivors: Vec<Block> = batch.into_iter().flatten().collect();
        let handed: Vec<Block> = survivors.drain(..survivors.len() / CROSS_SHARE).collect();
        next.send(handed).expect("inbox outlives its senders");
        // FIFO over the rest.
        out.mismatches += check_all(&survivors);
        drop(survivors);
    }
    drop(next);
    for foreign in inbox {
        out.mismatches += check_all(&foreign);
    }
    out
}

fn check_all(blocks: &[Block]) -> u64 {
    blocks.iter().map(Block::check).sum()
}
