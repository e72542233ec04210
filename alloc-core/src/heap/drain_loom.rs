//! `loom` model of the foreign drain (`heap::reclaim`'s invariant 6, `page`'s module
//! doc): the real `Page`, `ThreadFree` and `PendingPages` code, with an owner that parks
//! its page as `slow::alloc_slow` does (off its queue first, then `Page::park`), a
//! remote freer, and a foreign drainer that pops the pending stack and calls the shipped
//! `Page::drain_foreign`, retiring the page when it says so and pushing it back
//! otherwise, as `reclaim::drain_remote_emptied` does. The segments lock and the unit
//! bitmaps are left out (`segments_lock_loom.rs` models them): the drain's hazard is the
//! page descriptor itself.
//!
//! The descriptor's owner-side fields are stood for by one loom cell, `desc`: the owner
//! writes it at every touch of the page (queue links, `in_full`, lists), and a retire,
//! whoever makes it, overwrites it as `Segment::free_page` overwrites the descriptor.
//! Loom reports any pair of these not ordered by the protocol as a causality violation:
//! a drainer that retired a page its owner was still touching, or was about to.
//!
//! Scenarios: the freer frees every block while the owner parks the page (`Idle`: the
//! drainer or the owner's next slow path retires it, exactly once); or the owner keeps
//! one block and frees it locally meanwhile (`LocalFree`: the drainer must give
//! everything back), then also takes every free block back and parks the page again
//! (`Repark`: `PendingQueued` -> `Pending` while the drainer may hold the page). The must-fail twins park before unlinking (the order `alloc_slow`
//! had before the drain) and drain without counting the blocks; loom catches both.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom`.

use super::page::{Block, Page, PendingPages};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use std::sync::atomic::{AtomicUsize as StdCounter, Ordering::Relaxed};

/// Preemptions per execution: the hazards need the drainer between the owner's steps
/// (one) and the freer between its pushes (one more); three as in `page_loom.rs`.
const PREEMPTION_BOUND: usize = 3;

const BLOCK: usize = 16;
const MAX_BLOCKS: usize = 3;
/// `desc` once the page is retired.
const RETIRED: u32 = u32::MAX;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(PREEMPTION_BOUND);
    }
    b
}

#[repr(C, align(16))]
struct Memory([u8; BLOCK * MAX_BLOCKS]);

/// The page, its heap's pending stack and the descriptor stand-in.
struct Shared {
    page: *mut Page,
    pending: PendingPages,
    desc: UnsafeCell<u32>,
    _memory: Box<Memory>,
}

// SAFETY: the freer and the drainer reach the page through its atomics and the shipped
// foreign paths; the owner-side fields are the owner's (and a retirer's, which `desc`
// lets loom check).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `fresh`; every thread has been joined.
        drop(unsafe { Box::from_raw(self.page) });
    }
}

impl Shared {
    /// The owner touches its page: it must not be retired.
    fn touch(&self) {
        self.desc.with_mut(|d| {
            // SAFETY: a loom cell; loom checks the access.
            let d = unsafe { &mut *d };
            assert_ne!(*d, RETIRED, "the owner touched a retired page");
            *d += 1;
        });
    }

    /// A retire (`free_page`): once only.
    fn retire(&self) {
        self.desc.with_mut(|d| {
            // SAFETY: as in `touch`.
            let d = unsafe { &mut *d };
            assert_ne!(*d, RETIRED, "the page was retired twice");
            *d = RETIRED;
        });
    }

    fn is_retired(&self) -> bool {
        // SAFETY: as in `touch`.
        self.desc.with(|d| unsafe { *d } == RETIRED)
    }
}

/// A page of `blocks` blocks, all allocated by the owner, still in its queue (`Active`).
fn fresh(blocks: usize) -> (Arc<Shared>, Vec<*mut Block>) {
    let memory = Box::new(Memory([0; BLOCK * MAX_BLOCKS]));
    let start = memory.0.as_ptr() as usize;
    let page = Box::into_raw(Box::new(Page::empty()));
    // SAFETY: a fresh descriptor over our own memory; no other thread sees it yet.
    let held = unsafe {
        (*page).init(0, BLOCK, 1, start, start + BLOCK * blocks);
        assert!((*page).extend());
        (0..blocks)
            .map(|_| {
                let block = (*page).free;
                (*page).free = Block::load_next(block);
                (*page).used += 1;
                block
            })
            .collect()
    };
    let shared = Shared {
        page,
        pending: PendingPages::new(),
        desc: UnsafeCell::new(0),
        _memory: memory,
    };
    (Arc::new(shared), held)
}

/// What the owner does beside the freer and the drainer.
#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// Every block is freed by the freer; the owner parks the page and idles.
    Idle,
    /// The owner keeps its last block and frees it locally after parking.
    LocalFree,
    /// As `LocalFree`, then the owner's next slow path takes the page's free blocks back
    /// (`collect`, every one allocated) and parks it again (`PendingQueued` ->
    /// `Pending` if a hand-off is under way) while the drainer may still hold it; at the
    /// end it frees what it holds. The drainer must never retire it.
    Repark,
}

/// How the owner parks, and how the drainer decides.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Shipped,
    /// Park first, unlink after (the order `alloc_slow` had before the drain).
    ParkBeforeUnlink,
    /// Retire whatever `take_parked` gave, without counting it against `carved`.
    DrainWithoutCount,
}

/// Who retired the page, summed over a model's executions.
struct Tally {
    drainer_retired: StdCounter,
    owner_retired: StdCounter,
}

impl Tally {
    const fn new() -> Self {
        Tally {
            drainer_retired: StdCounter::new(0),
            owner_retired: StdCounter::new(0),
        }
    }
}

/// The drainer: `reclaim::drain_remote_emptied` on the model's one page.
fn drain_foreign(shared: &Shared, variant: Variant) -> bool {
    let mut page = shared.pending.take_all();
    let mut retired = false;
    // SAFETY: pages popped off the stack are live and `Pending`, ours to link until
    // pushed back.
    unsafe {
        while !page.is_null() {
            let next = PendingPages::next(page);
            let empty = match variant {
                Variant::DrainWithoutCount => !(*page).thread_free.take_parked().is_null(),
                _ => Page::drain_foreign(page),
            };
            if empty {
                shared.retire();
                retired = true;
            } else {
                shared.pending.push(page);
            }
            page = next;
        }
    }
    retired
}

/// The owner's `drain_pending`: pop, read the link, end the hand-off, collect, retire an
/// empty page.
///
/// # Safety
/// The caller is the page's owner.
unsafe fn owner_drain(shared: &Shared) -> bool {
    let mut page = shared.pending.take_all();
    let mut retired = false;
    // SAFETY: caller contract; pages on the stack are the owner's.
    unsafe {
        while !page.is_null() {
            shared.touch();
            let next = PendingPages::next(page);
            (*page).end_hand_off();
            (*page).collect();
            if (*page).used == 0 && !(*page).is_pending() {
                shared.retire();
                retired = true;
            }
            page = next;
        }
    }
    retired
}

/// The owner's local free of `block`: `push_local`, then `free_local_slow`'s un-park.
///
/// # Safety
/// The caller is the page's owner and holds `block`, a block of it.
unsafe fn local_free(shared: &Shared, block: *mut Block) {
    let page = shared.page;
    shared.touch();
    // SAFETY: caller contract.
    unsafe {
        Block::store_next(block, (*page).local_free);
        (*page).local_free = block;
        (*page).used -= 1;
        if (*page).in_full {
            (*page).unpark();
        }
    }
}

fn run(scenario: Scenario, variant: Variant, tally: &'static Tally) {
    let blocks = match scenario {
        Scenario::Idle => 2,
        Scenario::LocalFree | Scenario::Repark => 3,
    };
    let (shared, held) = fresh(blocks);
    let page = shared.page;
    let remote: Vec<usize> = held[..2].iter().map(|&b| b as usize).collect();
    let freer = {
        let shared = shared.clone();
        thread::spawn(move || {
            for block in remote {
                // SAFETY: a live block of the page, freed once; after the push we touch
                // the page only if we won its hand-off (`free_small`).
                unsafe {
                    if (*shared.page).thread_free.push(block as *mut Block) {
                        shared.pending.push(shared.page);
                    }
                }
            }
        })
    };
    let drainer = {
        let shared = shared.clone();
        thread::spawn(move || drain_foreign(&shared, variant))
    };
    let mut owner_retired = false;
    let mut mine: Vec<*mut Block> = Vec::new();
    // SAFETY: this thread is the page's owner.
    unsafe {
        // `alloc_slow` found the page without a free block: unlink, then park.
        let parked = match variant {
            Variant::ParkBeforeUnlink => {
                let parked = (*page).park();
                shared.touch(); // queue_remove after the park
                parked
            }
            _ => {
                shared.touch(); // queue_remove
                (*page).park()
            }
        };
        if !parked {
            // A remote free came first: the page is the owner's again (queued).
            shared.touch();
            (*page).collect();
        }
        if scenario == Scenario::LocalFree {
            // The local free of the last block: `push_local`, then `free_local_slow`.
            let block = held[2];
            shared.touch();
            Block::store_next(block, (*page).local_free);
            (*page).local_free = block;
            (*page).used -= 1;
            if (*page).in_full {
                (*page).unpark();
            }
            // Its next slow path.
            owner_retired |= owner_drain(&shared);
        }
        if scenario == Scenario::Repark {
            local_free(&shared, held[2]);
            // `alloc_slow` on the page: collect, allocate every free block, then (no
            // free block left) off the queue and park again.
            shared.touch();
            // `collect` may leave the local blocks on `local_free` until `free` is
            // empty: collect again until it finds nothing, as `alloc_slow` does.
            while (*page).collect() {
                while !(*page).free.is_null() {
                    let block = (*page).free;
                    (*page).free = Block::load_next(block);
                    (*page).used += 1;
                    mine.push(block);
                }
            }
            shared.touch(); // queue_remove
            if !(*page).park() {
                shared.touch(); // queue_push_front
            }
        }
    }
    freer.join().unwrap();
    let drainer_retired = drainer.join().unwrap();
    // SAFETY: every other thread is joined; the owner's next slow path.
    unsafe {
        for block in mine {
            local_free(&shared, block);
        }
        if !drainer_retired && !owner_retired {
            owner_retired |= owner_drain(&shared);
            if !owner_retired && !shared.is_retired() {
                // Not parked when the frees came: the page is in the queue, where the
                // owner's `collect` finds the blocks.
                shared.touch();
                (*page).collect();
                if (*page).used == 0 && !(*page).is_pending() {
                    shared.retire();
                    owner_retired = true;
                }
            }
        }
    }
    assert!(
        drainer_retired || owner_retired,
        "every block is free, yet nobody retired the page"
    );
    if scenario != Scenario::Idle {
        assert!(
            !drainer_retired,
            "the drainer retired a page its owner held"
        );
    }
    if drainer_retired {
        tally.drainer_retired.fetch_add(1, Relaxed);
    } else {
        tally.owner_retired.fetch_add(1, Relaxed);
    }
}

#[test]
fn loom_foreign_drain_retires_only_what_nobody_holds() {
    static IDLE: Tally = Tally::new();
    builder().check(|| run(Scenario::Idle, Variant::Shipped, &IDLE));
    assert!(
        IDLE.drainer_retired.load(Relaxed) > 0,
        "no execution where the drainer retired the page"
    );
    assert!(
        IDLE.owner_retired.load(Relaxed) > 0,
        "no execution where the owner retired the page"
    );
}

/// The owner takes a page back (a local free), empties its lists and parks it again
/// while the drainer may hold it off the stack: no retire by the drainer, one by the
/// owner once it frees what it holds.
#[test]
fn loom_foreign_drain_leaves_a_page_its_owner_reparks() {
    static REPARK: Tally = Tally::new();
    builder().check(|| run(Scenario::Repark, Variant::Shipped, &REPARK));
    assert!(REPARK.owner_retired.load(Relaxed) > 0);
}

#[test]
fn loom_foreign_drain_gives_back_a_page_its_owner_frees_into() {
    static LOCAL: Tally = Tally::new();
    builder().check(|| run(Scenario::LocalFree, Variant::Shipped, &LOCAL));
    assert!(LOCAL.owner_retired.load(Relaxed) > 0);
}

/// Parking before unlinking lets a drainer retire the page while its owner still
/// writes the queue links.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_broken_park_before_unlink_is_caught() {
    static T: Tally = Tally::new();
    builder().check(|| run(Scenario::Idle, Variant::ParkBeforeUnlink, &T));
}

/// A drainer that does not count the blocks retires a page whose owner still holds one.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_broken_drain_without_count_is_caught() {
    static T: Tally = Tally::new();
    builder().check(|| run(Scenario::LocalFree, Variant::DrainWithoutCount, &T));
}

/// The re-park scenario's must-fail twin: a drainer that does not count retires the page
/// while its owner holds the blocks it took back (loom's first failing execution is one
/// where the owner's later touch is ordered after the retire: the model's own check).
#[test]
#[should_panic(expected = "the owner touched a retired page")]
fn loom_broken_drain_without_count_is_caught_on_a_repark() {
    static T: Tally = Tally::new();
    builder().check(|| run(Scenario::Repark, Variant::DrainWithoutCount, &T));
}
