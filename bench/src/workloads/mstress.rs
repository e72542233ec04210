//! mstress: mimalloc's stress test (`test/test-stress.c`, run by mimalloc-bench as
//! `mstress N 50 25`), random object lifetimes across threads.
//!
//! Each round starts fresh threads. A thread allocates `calloc`ed objects of 1–16 words
//! (short-lived) or 1–64 words (retained until the thread ends), occasionally 100×,
//! 1000× or 10000× larger; frees a random live object 2 times in 3; and 1 time in 4
//! swaps a random object with a slot of a shared transfer array, so objects are freed by
//! whichever thread finds them, possibly rounds later. Between rounds the main thread
//! frees half the transfer slots (all of them after the last round). Every word of an
//! object holds `(items - i) ^ COOKIE`, checked on free; fresh memory must read zero.
//!
//! Differences: `iterations` is the number of rounds (the original's `ITER`) and `size`
//! the allocations per round over all threads, split in the original's proportions
//! (thread t does `t % 8 + 1` shares) so totals do not grow with the thread count; the
//! pointer arrays are `Vec`s; a corrupt object is counted and leaked, not asserted.

use std::alloc::{self, Layout};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use super::{on_threads, Outcome, Params, Scale, Workload};
use crate::rng::Rng;

/// Shared transfer slots: the original's `TRANSFERS`.
const TRANSFERS: usize = 1000;
/// Short-lived objects are `1 << (0..MAX_ITEM_SHIFT)` words: the original's value.
const MAX_ITEM_SHIFT: u64 = 5;
/// Retained objects are `1 << (0..MAX_RETAINED_SHIFT)` words: the original's value.
const MAX_RETAINED_SHIFT: u64 = MAX_ITEM_SHIFT + 2;
/// The original's cookie (SplitMix64's multiplier): makes stale words unlikely to match.
const COOKIE: u64 = 0xbf58_476d_1ce4_e5b9;
/// The original's large-object multipliers: 100× (about 2%), 1000×, 10000× (rarer).
const LARGE: usize = 100;
const HUGE: usize = 1000;
const GIANT: usize = 10_000;
/// The object size the original nudges away from (glibc's pthreads uses it).
const PTHREAD_SIZE_ITEMS: usize = 40;
/// Threads of a round do `tid % SKEW + 1` shares of the work, as in the original.
const SKEW: usize = 8;
/// Largest plausible object, for rejecting a corrupt length word instead of freeing.
const MAX_ITEMS: usize = (1 << (MAX_RETAINED_SHIFT - 1)) * GIANT;

pub const WORKLOAD: Workload = Workload {
    name: "mstress",
    origin: "mimalloc test-stress random lifetimes + transfers (mimalloc-bench mstress)",
    unit: "allocations",
    quick: Scale {
        iterations: 8,
        size: 40_000,
        repeat: 1,
    },
    full: Scale {
        iterations: 25,
        size: 100_000,
        repeat: 1,
    },
    run,
    quick_extra_threads: &[],
};

fn run(p: &Params) -> Outcome {
    let transfer: Vec<AtomicPtr<u64>> = (0..TRANSFERS)
        .map(|_| AtomicPtr::new(ptr::null_mut()))
        .collect();
    let mut rng = Rng::for_stream(p.seed, u64::MAX);
    let mut total = Outcome::default();
    for round in 0..p.scale.iterations {
        total = total + on_threads(p.threads, |tid| stress(p, round, tid, &transfer));
        let last = round + 1 == p.scale.iterations;
        for slot in &transfer {
            if last || chance(&mut rng, 50) {
                // Acquire: see the contents the thread that stored it wrote.
                total.mismatches += free_items(slot.swap(ptr::null_mut(), Ordering::Acquire));
            }
        }
    }
    total
}

/// One thread of one round: the original's `stress()`.
fn stress(p: &Params, round: u64, tid: usize, transfer: &[AtomicPtr<u64>]) -> Outcome {
    let mut rng = Rng::for_stream(p.seed, (round << 32) | tid as u64);
    let weights: usize = (0..p.threads).map(|t| t % SKEW + 1).sum();
    let mut allocs = p.scale.size * (tid % SKEW + 1) / weights;
    let mut retain = allocs / 2;
    let mut data: Vec<*mut u64> = Vec::new();
    let mut retained: Vec<*mut u64> = Vec::with_capacity(retain);
    let mut out = Outcome::default();
    while allocs > 0 || retain > 0 {
        if retain == 0 || (chance(&mut rng, 50) && allocs > 0) {
            allocs -= 1;
            let items = 1 << rng.below(MAX_ITEM_SHIFT);
            data.push(alloc_items(items, &mut rng, &mut out));
        } else {
            retain -= 1;
            let items = 1 << rng.below(MAX_RETAINED_SHIFT);
            retained.push(alloc_items(items, &mut rng, &mut out));
        }
        if chance(&mut rng, 66) && !data.is_empty() {
            let idx = rng.index(data.len());
            out.mismatches += free_items(std::mem::replace(&mut data[idx], ptr::null_mut()));
        }
        if chance(&mut rng, 25) && !data.is_empty() {
            let idx = rng.index(data.len());
            let slot = &transfer[rng.index(TRANSFERS)];
            // AcqRel: publish this object's contents to whoever takes it, and see the
            // contents of the object we take.
            data[idx] = slot.swap(data[idx], Ordering::AcqRel);
        }
    }
    for object in retained.into_iter().chain(data) {
        out.mismatches += free_items(object);
    }
    out
}

/// The original's `chance`: note `<=`, so `chance(50)` is 51 in 100.
fn chance(rng: &mut Rng, percent: u64) -> bool {
    rng.below(100) <= percent
}

/// The original's `alloc_items`: a zeroed array, checked zero, then filled.
fn alloc_items(mut items: usize, rng: &mut Rng, out: &mut Outcome) -> *mut u64 {
    if chance(rng, 1) {
        items *= if chance(rng, 1) {
            GIANT
        } else if chance(rng, 10) {
            HUGE
        } else {
            LARGE
        };
    }
    if items == PTHREAD_SIZE_ITEMS {
        items += 1;
    }
    let layout = Layout::array::<u64>(items).expect("object size overflows");
    // SAFETY: `items >= 1`, so the layout is not zero-sized.
    let p = unsafe { alloc::alloc_zeroed(layout) }.cast::<u64>();
    if p.is_null() {
        alloc::handle_alloc_error(layout);
    }
    for i in 0..items {
        // SAFETY: `i < items`, inside the fresh allocation of `items` words.
        unsafe {
            out.mismatches += u64::from(p.add(i).read() != 0);
            p.add(i).write((items - i) as u64 ^ COOKIE);
        }
    }
    out.ops += 1;
    p
}

/// The original's `free_items`: checks every word, then frees. Returns the mismatch
/// count; a corrupt object is leaked, since its length word cannot be trusted.
fn free_items(p: *mut u64) -> u64 {
    if p.is_null() {
        return 0;
    }
    // SAFETY: a non-null pointer here came from `alloc_items` and is owned by the caller
    // (taken out of a thread's array or swapped out of a transfer slot).
    let items = (unsafe { p.read() } ^ COOKIE) as usize;
    if items == 0 || items > MAX_ITEMS {
        return 1;
    }
    // SAFETY: word 0 says the object has `items` words, checked plausible above.
    let bad = (0..items)
        .filter(|&i| unsafe { p.add(i).read() } != (items - i) as u64 ^ COOKIE)
        .count();
    if bad == 0 {
        // SAFETY: allocated by `alloc_items` with exactly this layout.
        unsafe { alloc::dealloc(p.cast(), Layout::array::<u64>(items).expect("checked size")) };
    }
    bad as u64
}
