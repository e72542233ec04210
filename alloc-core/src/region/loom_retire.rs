//! `loom` model of a free's retire against the writer that drains it (`protocol.rs`:
//! `Region::claim_live`, `Region::unlock_and_push_retired`, `RetiredStack`), running
//! the shipped code on loom's atomics. What it replaces is the table around it: a loom
//! `Mutex` as the writer mutex, a tree reduced to one region that stays at its key (a
//! retire never moves a region), and the drain reduced to the stores of
//! `Writer::drain_retired` that make the region free space.
//!
//! - One freer retires a live object while a writer drains the retired stack once: the
//!   writer's `start_write` on the drained region never finds a reader inside, i.e. a
//!   writer never waits for the freer that pushed the region (the point of unlocking
//!   before the push). The broken variant pushes before it unlocks, as the table did
//!   before, and loom must find the writer waiting.
//! - Two freers race for the object (a double free) beside the drain: exactly one wins,
//!   and the other sees the object retired or, once drained, free space, never a live
//!   object. (Here the drain may wait, for the loser's brief reference: a reader the
//!   program should not have had.)
//!
//! - The object's pages as a loom cell: the freer writes them in its `prepare` (under
//!   its read reference) and again after its unlock, before its push (the window where
//!   the region is still the freer's alone), and the writer that drains the region
//!   writes them as the next owner. Loom checks every such pair is ordered (the push's
//!   Release, the drain's Acquire swap). The broken variant touches the pages after its
//!   push, and loom must report the race.
//!
//! Each model counts which paths its executions took and asserts every interesting one
//! was reached, so it cannot pass vacuously.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom`.

use super::lock::TableSeq;
use super::protocol::{ReadAttempt, RetiredStack};
use super::{Region, RegionKind, RegionState, RETIRED_NEXT};
use crate::sync::atomic::Ordering;
use loom::cell::UnsafeCell;
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::sync::atomic::AtomicUsize as StdCounter;

/// As `loom_tests`: every interleaving with up to three forced context switches (each
/// race here needs at most two). `LOOM_MAX_PREEMPTIONS` overrides it.
const PREEMPTION_BOUND: usize = 3;

const PAGE: usize = 0x1000;

struct Arena {
    region: Region,
    seq: TableSeq,
    retired: RetiredStack,
    writer: Mutex<()>,
    /// The object's pages (what `prepare` purges and the next owner reuses).
    pages: UnsafeCell<u64>,
}

/// Writes the object's pages (loom checks the write against every other access).
fn touch(pages: &UnsafeCell<u64>, value: u64) {
    // SAFETY: loom's cell; whether the accesses are ordered is what the model checks.
    pages.with_mut(|p| unsafe { *p = value });
}

/// How a free ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FreeEnd {
    /// Won the claim and retired the object.
    Retired,
    /// Found it already retired (`RetireError::DoubleFree`).
    DoubleFree,
    /// Found free space: the writer had drained it already (`NotAllocated`).
    NotAllocated,
}

/// Per-model tallies over all executions (plain std atomics: they count, they are not
/// part of the model).
struct Tally {
    /// Frees that ended `DoubleFree` and `NotAllocated`; drains that took the region
    /// and that found the stack empty; lookups that took the slow path.
    double_free: StdCounter,
    not_allocated: StdCounter,
    drained: StdCounter,
    empty: StdCounter,
    slow: StdCounter,
}

impl Tally {
    const fn new() -> Self {
        Tally {
            double_free: StdCounter::new(0),
            not_allocated: StdCounter::new(0),
            drained: StdCounter::new(0),
            empty: StdCounter::new(0),
            slow: StdCounter::new(0),
        }
    }
}

fn hit(counter: &StdCounter) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn count(counter: &StdCounter) -> usize {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

impl Arena {
    fn new() -> Arc<Self> {
        Arc::new(Arena {
            region: Region::new(PAGE, PAGE, RegionKind::Large, false),
            seq: TableSeq::new(),
            retired: RetiredStack::new(),
            writer: Mutex::new(()),
            pages: UnsafeCell::new(0),
        })
    }

    /// `RegionTable::free_object` for the object at `PAGE`: the lock-free lookup (the
    /// region is always at its key here) or, when the region is write-locked, the slow
    /// path under the writer mutex; then the checks and the claim under the read lock,
    /// and the retire's end, shipped (`unlock_and_push_retired`) or `broken`.
    fn free(&self, tally: &Tally, broken: bool) -> FreeEnd {
        let r = &self.region;
        match r.read_lock_validated(PAGE, PAGE, &self.seq) {
            ReadAttempt::Locked => {}
            ReadAttempt::WriteLocked => {
                hit(&tally.slow);
                let _writer = self.writer.lock().unwrap();
                // SAFETY: we hold the writer mutex.
                unsafe { r.lock.read_lock_under_writer() };
            }
            other => panic!("a region that never moves read as {other:?}"),
        }
        if r.kind() == RegionKind::Free {
            r.lock.read_unlock();
            return FreeEnd::NotAllocated;
        }
        if !r.claim_live(RegionState::Retired) {
            assert_eq!(r.state(), RegionState::Retired, "lost to a non-retire");
            r.lock.read_unlock();
            return FreeEnd::DoubleFree;
        }
        if broken {
            // The table's old order: push first, give the reference up after.
            self.retired.push(r);
            r.lock.read_unlock();
        } else {
            // SAFETY: we hold a validated read reference and won the claim.
            unsafe { r.unlock_and_push_retired(&self.retired, || {}) };
        }
        FreeEnd::Retired
    }

    /// `Writer::drain_retired` once, under the writer mutex, ended by `end_write_all`:
    /// takes the stack, write-locks each region and makes it free space. With
    /// `no_wait`, fails if `start_write` found a reader inside.
    fn drain(&self, tally: &Tally, no_wait: bool) {
        let _writer = self.writer.lock().unwrap();
        let mut p = self.retired.take_all();
        if p.is_null() {
            hit(&tally.empty);
        }
        while !p.is_null() {
            assert!(
                core::ptr::eq(p, &self.region),
                "only our region is ever pushed"
            );
            // SAFETY: a pushed region is our arena's, alive for the whole model.
            let r = unsafe { &*p };
            p = r.link(RETIRED_NEXT).load(Ordering::Relaxed);
            assert!(p.is_null(), "pushed once");
            assert_eq!(r.state(), RegionState::Retired);
            // SAFETY: we hold the writer mutex and end the update below.
            let waited = unsafe { r.lock.start_write_waited(&self.seq) };
            assert!(
                !(no_wait && waited),
                "the writer waited for the freer that pushed the region"
            );
            r.kind.store(RegionKind::Free as u8, Ordering::Relaxed);
            r.state.store(RegionState::Live as u8, Ordering::Relaxed);
            hit(&tally.drained);
        }
        // SAFETY: we hold the writer mutex; this ends the update.
        unsafe { self.seq.end_write_all() };
    }
}

/// `freers` threads free the object while this thread drains once; with one freer,
/// the drain must not wait.
fn frees_vs_drain(tally: &'static Tally, freers: usize, broken: bool) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTION_BOUND);
    }
    builder.check(move || {
        let arena = Arena::new();
        let freers: Vec<_> = (0..freers)
            .map(|_| {
                let arena = arena.clone();
                thread::spawn(move || arena.free(tally, broken))
            })
            .collect();
        arena.drain(tally, freers.len() == 1);
        let ends: Vec<FreeEnd> = freers.into_iter().map(|f| f.join().unwrap()).collect();
        let winners = ends.iter().filter(|&&e| e == FreeEnd::Retired).count();
        assert_eq!(winners, 1, "exactly one free wins: {ends:?}");
        for end in ends {
            match end {
                FreeEnd::DoubleFree => hit(&tally.double_free),
                FreeEnd::NotAllocated => hit(&tally.not_allocated),
                FreeEnd::Retired => {}
            }
        }
    });
}

fn report(model: &str, tally: &Tally, required: &[(&str, &StdCounter)]) {
    eprintln!(
        "loom {model}: double free {} not allocated {} drained {} empty {} slow {}",
        count(&tally.double_free),
        count(&tally.not_allocated),
        count(&tally.drained),
        count(&tally.empty),
        count(&tally.slow),
    );
    for (what, counter) in required {
        assert!(count(counter) > 0, "no execution reached {what}");
    }
}

#[test]
fn loom_retire_unlocks_before_push_so_the_drain_never_waits() {
    static TALLY: Tally = Tally::new();
    frees_vs_drain(&TALLY, 1, false);
    report(
        "retire vs drain",
        &TALLY,
        &[
            ("a drain of the pushed region", &TALLY.drained),
            ("a drain before the push", &TALLY.empty),
        ],
    );
}

#[test]
#[should_panic(expected = "the writer waited for the freer")]
fn loom_broken_retire_pushing_before_unlock_makes_the_drain_wait() {
    static TALLY: Tally = Tally::new();
    frees_vs_drain(&TALLY, 1, true);
}

#[test]
fn loom_double_free_beside_the_drain_is_caught_exactly_once() {
    static TALLY: Tally = Tally::new();
    frees_vs_drain(&TALLY, 2, false);
    report(
        "double free vs drain",
        &TALLY,
        &[
            ("a double free seen as retired", &TALLY.double_free),
            ("a double free seen as free space", &TALLY.not_allocated),
            ("a drain of the pushed region", &TALLY.drained),
            ("a drain before any push", &TALLY.empty),
            ("a free sent to the slow path by the drain", &TALLY.slow),
        ],
    );
}

/// One freer retires the object, touching its pages in `prepare` and between its
/// unlock and its push (or, `broken`, after its push), while this thread drains once
/// and, if it took the region, reuses the pages.
fn pages_vs_drain(tally: &'static Tally, broken: bool) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTION_BOUND);
    }
    builder.check(move || {
        let arena = Arena::new();
        let freer = {
            let arena = arena.clone();
            thread::spawn(move || {
                let r = &arena.region;
                if r.read_lock_validated(PAGE, PAGE, &arena.seq) != ReadAttempt::Locked {
                    // The drain cannot have the region write-locked before the push.
                    panic!("the freer's lookup failed");
                }
                assert!(r.claim_live(RegionState::Retired));
                touch(&arena.pages, 1); // prepare, under the read reference
                                        // SAFETY: we hold a validated read reference and won the claim.
                unsafe {
                    r.unlock_and_push_retired(&arena.retired, || {
                        if !broken {
                            touch(&arena.pages, 2);
                        }
                    })
                };
                if broken {
                    touch(&arena.pages, 2);
                }
            })
        };
        {
            let _writer = arena.writer.lock().unwrap();
            let p = arena.retired.take_all();
            if p.is_null() {
                hit(&tally.empty);
            } else {
                // SAFETY: a pushed region is our arena's, alive for the whole model.
                let r = unsafe { &*p };
                // SAFETY: we hold the writer mutex and end the update below.
                unsafe { r.lock.start_write(&arena.seq) };
                r.kind.store(RegionKind::Free as u8, Ordering::Relaxed);
                r.state.store(RegionState::Live as u8, Ordering::Relaxed);
                touch(&arena.pages, 3); // the next owner
                hit(&tally.drained);
            }
            // SAFETY: we hold the writer mutex; this ends the update.
            unsafe { arena.seq.end_write_all() };
        }
        freer.join().unwrap();
    });
}

#[test]
fn loom_retire_hands_the_pages_over_with_the_push() {
    static TALLY: Tally = Tally::new();
    pages_vs_drain(&TALLY, false);
    report(
        "pages vs drain",
        &TALLY,
        &[
            ("a drain that reused the pages", &TALLY.drained),
            ("a drain before the push", &TALLY.empty),
        ],
    );
}

#[test]
#[should_panic(expected = "Causality violation")]
fn loom_broken_retire_touching_pages_after_its_push_races_the_drain() {
    static TALLY: Tally = Tally::new();
    pages_vs_drain(&TALLY, true);
}
