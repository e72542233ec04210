//! larson: Larson & Krishnan's server simulation ("Memory allocation for long-running
//! server applications", ISMM 1998), as run by mimalloc-bench (`larson-sized`).
//!
//! Each thread owns an array of slots holding blocks of random size in
//! [`MIN_SIZE`, `MAX_SIZE`); it repeatedly frees a random slot and refills it. After a
//! round the thread hands its array to a freshly spawned thread and exits, so blocks are
//! freed by threads other than the one that allocated them, and thread caches churn. As
//! in the original, the main thread allocates the initial blocks, so the first frees are
//! cross-thread too.
//!
//! Differences: a fixed number of replacements (`iterations`, split over the threads)
//! instead of a timed run; the new thread is spawned by a long-lived lane thread (which
//! joins it) rather than by the dying one; blocks are stamped and checked instead of
//! writing two bytes. `size` is slots per thread (the original's `chperthread`).

use super::{on_threads, share, Outcome, Params, Scale, Workload};
use crate::block::Block;
use crate::rng::Rng;

/// Smallest block: mimalloc-bench's `larson-sized` argument.
const MIN_SIZE: usize = 8;
/// Largest block (exclusive): mimalloc-bench's `larson-sized` argument.
const MAX_SIZE: usize = 1000;
/// Replacements a thread makes before handing its array to a new thread; small enough
/// that each run spawns dozens of threads per lane, like the original's short rounds.
const ROUND_REPLACEMENTS: u64 = 10_000;

/// A thread's array of blocks; `None` only transiently, between a free and its refill.
type Slots = Vec<Option<Block>>;

pub const WORKLOAD: Workload = Workload {
    name: "larson",
    origin: "Larson & Krishnan server simulation (mimalloc-bench larson-sized)",
    unit: "replacements",
    quick: Scale {
        iterations: 1_500_000,
        size: 1000,
        repeat: 1,
    },
    full: Scale {
        iterations: 10_000_000,
        size: 5000,
        repeat: 1,
    },
    run,
    quick_extra_threads: &[],
};

fn run(p: &Params) -> Outcome {
    // The main thread fills every lane's array, as Larson's `runthreads` does.
    let lanes: Vec<Slots> = (0..p.threads)
        .map(|tid| {
            let mut rng = Rng::for_stream(p.seed, tid as u64);
            let mut fill =
                |slot: usize| Some(Block::new(random_size(&mut rng), tag(tid, slot as u64)));
            (0..p.scale.size).map(&mut fill).collect()
        })
        .collect();
    let lanes: Vec<_> = lanes.into_iter().map(std::sync::Mutex::new).collect();
    on_threads(p.threads, |tid| {
        let array = std::mem::take(&mut *lanes[tid].lock().expect("lane poisoned"));
        lane(p, tid, array)
    })
}

/// One lane: a chain of short-lived threads, each inheriting the previous one's array.
fn lane(p: &Params, tid: usize, mut array: Slots) -> Outcome {
    let mut rng = Rng::for_stream(p.seed, (p.threads + tid) as u64);
    let mut remaining = share(p.scale.iterations, p.threads, tid);
    let mut next_id = p.scale.size as u64;
    let mut total = Outcome::default();
    while remaining > 0 {
        let round = remaining.min(ROUND_REPLACEMENTS);
        remaining -= round;
        let worker = std::thread::spawn(move || {
            let out = replace(&mut array, &mut rng, round, tid, next_id);
            (array, rng, out)
        });
        let out;
        (array, rng, out) = worker.join().expect("larson thread panicked");
        next_id += round;
        total = total + out;
    }
    total.mismatches += array.iter().flatten().map(Block::check).sum::<u64>();
    total
}

/// Frees a random slot and refills it, `count` times.
/// As in the original, the victim is freed before its replacement is allocated, so an
/// allocator may hand the same memory straight back.
fn replace(
    array: &mut [Option<Block>],
    rng: &mut Rng,
    count: u64,
    tid: usize,
    first_id: u64,
) -> Outcome {
    let mut mismatches = 0;
    for id in first_id..first_id + count {
        let victim = rng.index(array.len());
        if let Some(old) = array[victim].take() {
            mismatches += old.check();
        }
        array[victim] = Some(Block::new(random_size(rng), tag(tid, id)));
    }
    Outcome {
        ops: count,
        mismatches,
    }
}

fn random_size(rng: &mut Rng) -> usize {
    rng.range(MIN_SIZE, MAX_SIZE)
}

/// A block id unique across lanes.
fn tag(tid: usize, id: u64) -> u64 {
    ((tid as u64) << 40) | id
}
