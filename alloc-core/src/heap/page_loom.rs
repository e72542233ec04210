//! `loom` models of the page hand-off (DESIGN.md §3, issue 13's race 1): the real
//! `Page`, `ThreadFree` and `PendingPages` code (built on `crate::sync::atomic`, loom's
//! atomics under `cfg(loom)`), driven by an owner that takes the steps `heap/slow.rs`
//! takes (`park`, `unpark`, `collect`, `end_hand_off`), in the same order, while two
//! other threads free blocks of the page. The queues, segments and heap around the page
//! are left out: they are owner-only and take no part in the handshake.
//!
//! The models count which paths their executions took and assert that the interesting
//! ones were reached, so they cannot pass vacuously; `broken_park_hands_a_page_off_twice`
//! parks the way the old code did (storing `Full` over `Pending`) and must be caught.
//! `no_touch_after_publish` checks race 2: the owner retires its page (a loom cell
//! written) as soon as it is empty and not `Pending`, and every touch of the page by a
//! freer after its push must be ordered before that; its must-fail twin reads the page
//! after every push, as the old code did, and loom reports the causality violation.
//! `collect_beside_*` run `Page::collect` while the owner's `free` (and `local_free`)
//! hold blocks and two threads free remotely, the cases the hand-off model never
//! reaches (it collects only once `free` is empty): no block lost or linked twice,
//! `used` exact.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom`.

use super::page::{Block, HandOff, Page, PendingPages};
use loom::sync::Arc;
use loom::thread;
use std::sync::atomic::{AtomicUsize as StdCounter, Ordering::Relaxed};

/// Preemptions per execution: the race needs two (a freer stopped between its push and
/// its hand-off, the owner stopped between a park and its re-park), and three keeps the
/// model at a few seconds. `LOOM_MAX_PREEMPTIONS` overrides it.
const PREEMPTION_BOUND: usize = 3;

const BLOCK: usize = 16;
const BLOCKS: usize = 3;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(PREEMPTION_BOUND);
    }
    b
}

/// The page's blocks: real memory, 16-byte aligned like every block (room for the
/// largest model's page; each model carves only its own blocks).
#[repr(C, align(16))]
struct Memory([u8; BLOCK * COLLECT_BLOCKS]);

/// A page and the owner's pending stack, shared with the freers by address (the freers
/// touch only the atomics, through the same raw-pointer paths as `free_small`).
struct Shared {
    page: *mut Page,
    pending: PendingPages,
    _memory: Box<Memory>,
}

// SAFETY: the freers reach only the page's atomics and the stack's; the owner's fields
// are touched by the model's main thread alone.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `fresh`; every thread has been joined.
        drop(unsafe { Box::from_raw(self.page) });
    }
}

/// A page of `BLOCKS` blocks, all allocated by the owner (`used == BLOCKS`), parked full.
fn fresh() -> (Arc<Shared>, [*mut Block; BLOCKS]) {
    let memory = Box::new(Memory([0; BLOCK * COLLECT_BLOCKS]));
    let start = memory.0.as_ptr() as usize;
    let page = Box::into_raw(Box::new(Page::empty()));
    // SAFETY: a fresh descriptor over our own memory; no other thread sees it yet.
    let blocks = unsafe {
        (*page).init(0, BLOCK, 1, start, start + BLOCK * BLOCKS);
        assert!((*page).extend());
        let mut blocks = [core::ptr::null_mut(); BLOCKS];
        for b in &mut blocks {
            *b = pop(page).expect("a fresh page has every block");
        }
        assert!((*page).park(), "nothing freed yet: the page parks");
        blocks
    };
    let shared = Shared {
        page,
        pending: PendingPages::new(),
        _memory: memory,
    };
    (Arc::new(shared), blocks)
}

/// The owner's pop (`slow::pop` without the statistics).
///
/// # Safety
/// `page` is the owner's.
unsafe fn pop(page: *mut Page) -> Option<*mut Block> {
    // SAFETY: caller contract.
    unsafe {
        let block = (*page).free;
        if block.is_null() {
            return None;
        }
        (*page).free = Block::load_next(block);
        (*page).used += 1;
        Some(block)
    }
}

/// A remote free as `free_small` makes it: push, and hand the page off if the push won.
fn remote_free(shared: &Shared, block: usize) -> bool {
    let page = shared.page;
    // SAFETY: `block` is a block of the page that this thread frees; the page is live
    // (the block counts in `used`), and after the push we touch it only if we won.
    unsafe {
        let won = (*page).thread_free.push(block as *mut Block);
        if won {
            shared.pending.push(page);
        }
        won
    }
}

/// Paths the executions took, summed over a model's executions.
struct Tally {
    executions: StdCounter,
    won_early: StdCounter,
    parked_pending: StdCounter,
    won_late: StdCounter,
    drained_early: StdCounter,
}

impl Tally {
    const fn new() -> Self {
        Tally {
            executions: StdCounter::new(0),
            won_early: StdCounter::new(0),
            parked_pending: StdCounter::new(0),
            won_late: StdCounter::new(0),
            drained_early: StdCounter::new(0),
        }
    }
}

/// How the owner parks its page again after refilling: the shipped `Page::park`, or the
/// old code's unconditional store.
#[derive(Clone, Copy)]
enum Parking {
    Shipped,
    Broken,
}

/// `drain_pending`'s steps on the model's one page: pop the stack, read each link before
/// ending the hand-off, collect. Returns the pages popped.
///
/// # Safety
/// The caller is the page's owner.
unsafe fn drain(shared: &Shared) -> usize {
    let mut popped = 0;
    let mut top = shared.pending.take_all();
    // SAFETY: caller contract; pages on the stack are the owner's.
    unsafe {
        while !top.is_null() {
            assert_eq!(top, shared.page, "only our page is handed off");
            popped += 1;
            // Two freers can hand the page off at most twice in all; a third pop means
            // the stack links the page to itself.
            assert!(popped <= 2, "the page was handed off twice (a cycle)");
            let next = PendingPages::next(top);
            (*top).end_hand_off();
            (*top).collect();
            top = next;
        }
    }
    popped
}

/// The scenario of race 1. The owner has allocated every block of its page and parked
/// it; two threads free a block each; meanwhile the owner frees its third block locally
/// (un-parking the page) and allocates until the page is full again, draining its
/// pending stack at each slow-path entry as `alloc_slow` does, then parks it again;
/// finally it drains once more, as its next slow path would.
///
/// Checked in every execution: every hand-off is popped exactly once (a second push of a
/// page still on the stack makes a cycle or, with the two pushes unordered, loses a
/// link), and afterwards every block is either held by the owner or free in the page
/// exactly once, `used` counts the held ones, and a parked page is never left `Active`
/// (nobody would bring it back).
fn run(parking: Parking, tally: &'static Tally) {
    let (shared, [a, b, c]) = fresh();
    let freers: Vec<_> = [a, b]
        .into_iter()
        .map(|block| {
            let shared = shared.clone();
            let block = block as usize;
            thread::spawn(move || remote_free(&shared, block))
        })
        .collect();
    let page = shared.page;
    let mut held = vec![];
    let mut popped = 0;
    // SAFETY: this thread is the page's owner; the freers touch only its atomics.
    unsafe {
        // The local free of `c`: `free_small`'s owner branch, then `free_local_slow`.
        Block::store_next(c, (*page).local_free);
        (*page).local_free = c;
        (*page).used -= 1;
        if (*page).in_full {
            (*page).unpark();
        }
        if (*page).is_pending() {
            tally.won_early.fetch_add(1, Relaxed);
        }
        // Refill until the page is full again, then park it: `alloc_slow`'s loop.
        loop {
            if let Some(block) = pop(page) {
                held.push(block);
                continue;
            }
            popped += drain(&shared);
            if (*page).collect() {
                continue;
            }
            let parked = match parking {
                Parking::Shipped => {
                    if (*page).is_pending() {
                        tally.parked_pending.fetch_add(1, Relaxed);
                    }
                    (*page).park()
                }
                Parking::Broken => {
                    let parked = (*page).thread_free.park_as_before();
                    (*page).in_full = parked;
                    parked
                }
            };
            if parked {
                break;
            }
        }
    }
    let wins = freers
        .into_iter()
        .map(|f| f.join().unwrap() as usize)
        .sum::<usize>();
    if wins > popped && held.len() == BLOCKS {
        tally.won_late.fetch_add(1, Relaxed);
    }
    if popped > 0 {
        tally.drained_early.fetch_add(1, Relaxed);
    }
    // SAFETY: every freer is joined; the owner drains as `drain_pending` does.
    unsafe {
        popped += drain(&shared);
        assert_eq!(
            popped, wins,
            "a hand-off was lost: the page was handed off twice"
        );
        // Every block is held by the owner or free in the page, exactly once.
        assert_eq!((*page).used as usize, held.len(), "used miscounted");
        let mut seen = held.clone();
        while let Some(block) = pop(page) {
            seen.push(block);
        }
        seen.sort();
        assert_eq!(seen, [a, b, c], "a block was lost or duplicated");
        let state = (*page).thread_free.state();
        assert!(
            !((*page).in_full && state == HandOff::Active),
            "a parked page that no free will bring back"
        );
    }
    tally.executions.fetch_add(1, Relaxed);
}

#[test]
fn loom_page_hand_off() {
    static TALLY: Tally = Tally::new();
    builder().check(|| run(Parking::Shipped, &TALLY));
    // Non-vacuity: the model reached the windows the race needs.
    for (name, count) in [
        (
            "a freer won before the owner's local free",
            &TALLY.won_early,
        ),
        (
            "the owner parked a page still pending",
            &TALLY.parked_pending,
        ),
        ("a freer won after the owner refilled", &TALLY.won_late),
        (
            "the owner drained while the freers ran",
            &TALLY.drained_early,
        ),
    ] {
        assert!(count.load(Relaxed) > 0, "no execution where {name}");
    }
    assert!(TALLY.executions.load(Relaxed) > 100);
}

/// The old `park_full` (store `Full` whatever the state) lets a second freer win the
/// hand-off of a page still `Pending`: the model must find the double push.
#[test]
#[should_panic(expected = "handed off twice")]
fn loom_broken_park_hands_a_page_off_twice() {
    static TALLY: Tally = Tally::new();
    builder().check(|| run(Parking::Broken, &TALLY));
}

// ------------------------------------------------- race 2: nothing touched after publish

/// How a freer behaves after its push: the shipped `free_small` (touches the page again
/// only if it won the hand-off, to link it), or the old code, which read the page's
/// hand-off state after every push.
#[derive(Clone, Copy)]
enum AfterPush {
    Shipped,
    TouchAlways,
}

/// The page's memory as loom sees it: the owner "retires" the page (its descriptor and
/// segment may go back to the region table) by writing this cell; every later touch of
/// the page by a freer reads it. Loom reports a read that is not ordered after the write
/// (or before it) as a causality violation: a touch of a page that may already be gone.
struct Retirable {
    shared: Arc<Shared>,
    retired: loom::cell::UnsafeCell<bool>,
}

// SAFETY: as `Shared`; the cell is loom's, which checks every access.
unsafe impl Send for Retirable {}
// SAFETY: as above.
unsafe impl Sync for Retirable {}

/// A page of two blocks, both allocated, `Active` (in the owner's queue); one block goes
/// to a freer, the owner keeps the other. The owner frees its block locally, collects,
/// and retires the page as `retire_if_spare` would once it is empty and not `Pending`.
fn run_retire(after_push: AfterPush, tally: &StdCounter) {
    let memory = Box::new(Memory([0; BLOCK * COLLECT_BLOCKS]));
    let start = memory.0.as_ptr() as usize;
    let page = Box::into_raw(Box::new(Page::empty()));
    // SAFETY: a fresh descriptor over our own memory; no other thread sees it yet.
    let (a, b) = unsafe {
        (*page).init(0, BLOCK, 1, start, start + BLOCK * 2);
        assert!((*page).extend());
        (pop(page).unwrap(), pop(page).unwrap())
    };
    let shared = Arc::new(Retirable {
        shared: Arc::new(Shared {
            page,
            pending: PendingPages::new(),
            _memory: memory,
        }),
        retired: loom::cell::UnsafeCell::new(false),
    });
    let freer = {
        let shared = shared.clone();
        let b = b as usize;
        thread::spawn(move || {
            let page = shared.shared.page;
            // SAFETY: `b` is a live block of the page, freed once; the page is live
            // until the push publishes it.
            unsafe {
                let won = (*page).thread_free.push(b as *mut Block);
                if won || matches!(after_push, AfterPush::TouchAlways) {
                    // The touch after the push: must be ordered before any retire.
                    shared
                        .retired
                        .with(|r| assert!(!*r, "touched a retired page"));
                    let _ = (*page).thread_free.state();
                }
                if won {
                    shared.shared.pending.push(page);
                }
            }
        })
    };
    // The owner: a local free of `a`, then its slow path: drain, collect, retire.
    // SAFETY: this thread owns the page.
    unsafe {
        Block::store_next(a, (*page).local_free);
        (*page).local_free = a;
        (*page).used -= 1;
        // A scheduling point before the slow path, so loom also runs the freer's whole
        // free before it (loom's reduction did not reach that order by itself: without
        // it the model ran one execution).
        loom::thread::yield_now();
        drain(&shared.shared);
        (*page).collect();
        if (*page).used == 0 && !(*page).is_pending() {
            tally.fetch_add(1, Relaxed);
            shared.retired.with_mut(|r| *r = true);
        }
    }
    freer.join().unwrap();
}

/// The shipped freer touches nothing of a page after a losing push, so the owner may
/// retire the page the moment it has collected the block.
#[test]
fn loom_no_touch_after_publish() {
    static RETIRES: StdCounter = StdCounter::new(0);
    builder().check(|| run_retire(AfterPush::Shipped, &RETIRES));
    assert!(RETIRES.load(Relaxed) > 0, "no execution retired the page");
}

/// The old freer read the page's state after every push (issue 13's race 2): loom finds
/// that read unordered with the owner's retire.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_broken_freer_touches_a_page_after_publishing() {
    static RETIRES: StdCounter = StdCounter::new(0);
    builder().check(|| run_retire(AfterPush::TouchAlways, &RETIRES));
}

// ------------------------------------- collect with blocks on the owner's lists (review15b)

/// What the owner's lists hold when it collects in `run_collect`.
#[derive(Clone, Copy)]
enum OwnerLists {
    /// `free` only: a remote list goes whole onto the empty `local_free`.
    Free,
    /// `free` and `local_free`: a remote list is walked to its tail and linked in front
    /// of `local_free`.
    FreeAndLocal,
}

/// Paths `run_collect` took, summed over a model's executions.
struct CollectTally {
    executions: StdCounter,
    /// A first collect that took one remote block, and one that took both.
    took_one: StdCounter,
    took_two: StdCounter,
}

impl CollectTally {
    const fn new() -> Self {
        CollectTally {
            executions: StdCounter::new(0),
            took_one: StdCounter::new(0),
            took_two: StdCounter::new(0),
        }
    }
}

/// Blocks in `run_collect`'s page: two for the freers, one the owner frees locally, and
/// two left on `free`.
const COLLECT_BLOCKS: usize = 5;

/// `Page::collect` with a non-empty `free` (the page-hand-off model above only collects
/// once `free` is empty). The owner carves a page of five blocks, allocates three (`a`,
/// `b`, `c`), leaving two on `free`; two threads free `a` and `b` remotely; the owner
/// (with `FreeAndLocal`) frees `c` locally, then collects while the freers run, takes one
/// block off `free` and gives it back locally, and collects again once they are done.
/// Checked in every execution: `used` counts exactly the blocks the owner holds, and
/// draining the page (pop, collect, pop) yields every block exactly once.
fn run_collect(lists: OwnerLists, tally: &'static CollectTally) {
    let memory = Box::new(Memory([0; BLOCK * COLLECT_BLOCKS]));
    let start = memory.0.as_ptr() as usize;
    let page = Box::into_raw(Box::new(Page::empty()));
    // SAFETY: a fresh descriptor over our own memory; no other thread sees it yet.
    let (a, b, c) = unsafe {
        (*page).init(0, BLOCK, 1, start, start + BLOCK * COLLECT_BLOCKS);
        assert!((*page).extend());
        (pop(page).unwrap(), pop(page).unwrap(), pop(page).unwrap())
    };
    let shared = Arc::new(Shared {
        page,
        pending: PendingPages::new(),
        _memory: memory,
    });
    let freers: Vec<_> = [a, b]
        .into_iter()
        .map(|block| {
            let shared = shared.clone();
            let block = block as usize;
            thread::spawn(move || {
                // SAFETY: a block of the page this thread frees once; the page stays live
                // (the block counts in `used` until the owner collects it). Nothing of
                // the page is touched after the push: the page is `Active`, no hand-off.
                let won = unsafe { (*shared.page).thread_free.push(block as *mut Block) };
                assert!(!won, "an active page is never handed off");
            })
        })
        .collect();
    let mut held = vec![];
    // SAFETY: this thread owns the page; the freers touch only its remote-free word.
    unsafe {
        if matches!(lists, OwnerLists::FreeAndLocal) {
            Block::store_next(c, (*page).local_free);
            (*page).local_free = c;
            (*page).used -= 1;
        } else {
            held.push(c);
        }
        let used_before = (*page).used;
        assert!(
            !(*page).free.is_null(),
            "the model collects with blocks on free"
        );
        // A scheduling point before the collect, as in `run_retire`: loom's reduction
        // does not otherwise run a freer's whole free before the owner's first atomic.
        loom::thread::yield_now();
        assert!((*page).collect(), "free stays non-empty");
        match used_before - (*page).used {
            0 => {}
            1 => {
                tally.took_one.fetch_add(1, Relaxed);
            }
            2 => {
                tally.took_two.fetch_add(1, Relaxed);
            }
            n => panic!("collect counted {n} remote blocks of two"),
        }
        // Work on the lists between collects, as the fast path does.
        let d = pop(page).expect("free was non-empty");
        Block::store_next(d, (*page).local_free);
        (*page).local_free = d;
        (*page).used -= 1;
    }
    for f in freers {
        f.join().unwrap();
    }
    // SAFETY: every freer is joined; this thread owns the page.
    unsafe {
        (*page).collect();
        assert_eq!((*page).used as usize, held.len(), "used miscounted");
        let mut seen = held.clone();
        loop {
            while let Some(block) = pop(page) {
                seen.push(block);
                // A list that links back to itself would pop forever.
                assert!(
                    seen.len() <= COLLECT_BLOCKS,
                    "a block was lost or duplicated"
                );
            }
            if !(*page).collect() {
                break;
            }
        }
        assert!((*page).local_free.is_null() && (*page).thread_free.take_all().is_null());
        assert_eq!(
            (*page).used as usize,
            seen.len(),
            "used miscounted after draining"
        );
        seen.sort();
        let all: Vec<_> = (0..COLLECT_BLOCKS)
            .map(|i| (start + i * BLOCK) as *mut Block)
            .collect();
        assert_eq!(seen, all, "a block was lost or duplicated");
    }
    tally.executions.fetch_add(1, Relaxed);
}

fn check_collect(lists: OwnerLists) {
    static FREE: CollectTally = CollectTally::new();
    static FREE_AND_LOCAL: CollectTally = CollectTally::new();
    let tally = match lists {
        OwnerLists::Free => &FREE,
        OwnerLists::FreeAndLocal => &FREE_AND_LOCAL,
    };
    builder().check(move || run_collect(lists, tally));
    // Non-vacuity: the first collect met one and two remote blocks.
    assert!(
        tally.took_one.load(Relaxed) > 0,
        "no collect took one block"
    );
    assert!(
        tally.took_two.load(Relaxed) > 0,
        "no collect took both blocks"
    );
    assert!(tally.executions.load(Relaxed) > 10);
}

/// A remote list collected while `free` holds blocks goes whole onto `local_free`.
#[test]
fn loom_collect_beside_free_blocks() {
    check_collect(OwnerLists::Free);
}

/// A remote list collected while `free` and `local_free` hold blocks is linked in front
/// of `local_free` (the one walk `collect` makes).
#[test]
fn loom_collect_beside_free_and_local_blocks() {
    check_collect(OwnerLists::FreeAndLocal);
}
