//! `loom` model of the segments lock (`heap::reclaim`'s invariants 1 and 2): the real
//! `SegmentsLock`, an owner that claims a free unit, writes live data into it, checks
//! it and retires the unit again (the steps `slow::fresh_page` and
//! `slow::retire_if_spare` take, with their lock sections), and a foreign purger that
//! `madvise`s the free dirty units it finds (modelled as zeroing the unit: what
//! `MADV_DONTNEED` does). The unit bitmaps and the unit memory are loom cells, so any
//! access not ordered by the lock is reported as a race. Segments, pages and the real
//! `madvise` are left out: they add nothing to the ordering.
//!
//! `a_purger_without_the_lock_is_caught` purges without taking the lock and must fail,
//! so the model cannot pass vacuously; the passing model also counts that the purger
//! both purged a unit and was kept out by the owner in some executions.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom`.

use super::segments_lock::SegmentsLock;
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use std::sync::atomic::{AtomicUsize as StdCounter, Ordering::Relaxed};

/// Preemptions per execution: the interesting interleavings need the purger between
/// the owner's lock sections (one) and inside them (two).
const PREEMPTION_BOUND: usize = 3;
const UNITS: usize = 2;
/// What the owner writes into a unit it holds (a live block).
const LIVE: u64 = 0xa5a5;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(PREEMPTION_BOUND);
    }
    b
}

/// One segment's unit bookkeeping and memory, guarded by its heap's lock.
struct Segment {
    lock: SegmentsLock,
    free_units: UnsafeCell<u64>,
    dirty_units: UnsafeCell<u64>,
    memory: [UnsafeCell<u64>; UNITS],
}

impl Segment {
    /// Unit 0 free and dirty (a page retired earlier), unit 1 free and clean.
    fn new() -> Self {
        Segment {
            lock: SegmentsLock::new(),
            free_units: UnsafeCell::new(0b11),
            dirty_units: UnsafeCell::new(0b01),
            memory: [UnsafeCell::new(LIVE), UnsafeCell::new(0)],
        }
    }
}

/// Reads a cell. Loom reports the read if it is not ordered after the last write.
fn get(cell: &UnsafeCell<u64>) -> u64 {
    // SAFETY: a live loom cell; loom itself checks that the access is not a race.
    cell.with(|p| unsafe { *p })
}

/// Writes a cell. Loom reports the write if it races with any other access.
fn set(cell: &UnsafeCell<u64>, value: u64) {
    // SAFETY: as in `get`.
    cell.with_mut(|p| unsafe { *p = value });
}

/// The owner: claims a unit under the lock (`alloc_page`), fills and checks it outside
/// the lock (the fast path's blocks), then retires it under the lock (`free_page`).
fn owner(seg: &Segment) {
    seg.lock.lock_owner();
    let free = get(&seg.free_units);
    let unit = free.trailing_zeros() as usize;
    set(&seg.free_units, free & !(1 << unit));
    set(&seg.dirty_units, get(&seg.dirty_units) & !(1 << unit));
    seg.lock.unlock();
    set(&seg.memory[unit], LIVE);
    thread::yield_now();
    assert_eq!(
        get(&seg.memory[unit]),
        LIVE,
        "a purger zeroed a unit the owner holds"
    );
    seg.lock.lock_owner();
    set(&seg.free_units, get(&seg.free_units) | 1 << unit);
    set(&seg.dirty_units, get(&seg.dirty_units) | 1 << unit);
    seg.lock.unlock();
}

/// The purger's work once it may touch the bookkeeping (`Segment::purge`): zeroes every
/// free dirty unit. Returns how many it zeroed.
fn purge_units(seg: &Segment) -> usize {
    let free = get(&seg.free_units);
    let dirty = get(&seg.dirty_units);
    let mut purged = 0;
    for unit in 0..UNITS {
        if free & dirty & (1 << unit) != 0 {
            set(&seg.memory[unit], 0);
            purged += 1;
        }
    }
    set(&seg.dirty_units, dirty & !free);
    purged
}

#[test]
fn loom_a_purger_never_touches_a_unit_the_owner_holds() {
    static PURGED: StdCounter = StdCounter::new(0);
    static KEPT_OUT: StdCounter = StdCounter::new(0);
    builder().check(|| {
        let seg = Arc::new(Segment::new());
        let purger = {
            let seg = seg.clone();
            thread::spawn(move || {
                if seg.lock.try_lock_purger() {
                    if purge_units(&seg) > 0 {
                        PURGED.fetch_add(1, Relaxed);
                    }
                    seg.lock.unlock();
                } else {
                    KEPT_OUT.fetch_add(1, Relaxed);
                }
            })
        };
        owner(&seg);
        purger.join().unwrap();
    });
    assert!(PURGED.load(Relaxed) > 0, "no execution purged a unit");
    assert!(
        KEPT_OUT.load(Relaxed) > 0,
        "no execution found the owner holding the lock"
    );
}

#[test]
#[should_panic(expected = "Causality violation")]
fn a_purger_without_the_lock_is_caught() {
    builder().check(|| {
        let seg = Arc::new(Segment::new());
        let purger = {
            let seg = seg.clone();
            thread::spawn(move || {
                purge_units(&seg);
            })
        };
        owner(&seg);
        purger.join().unwrap();
    });
}
