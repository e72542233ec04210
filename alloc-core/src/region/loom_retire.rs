//! `loom` models of a free's retire against the writer that drains it, on the shipped
//! `RegionTable` (`loom_table`'s harness): `retire`/`retire_with` (the lookup, the
//! checks and `Region::claim_live` under the read reference, then
//! `Region::unlock_and_push_retired` onto the table's `RetiredStack`) beside a writer
//! whose update drains the stack (`Writer::drain_retired`, which write-locks each
//! region and makes it free space, then `coalesce`). (Until session 9 these models ran
//! the protocol steps inside a miniature table: a loom `Mutex` and the drain's stores.)
//!
//! The arena: `[X: one-page live object][clean free space]`.
//!
//! - One freer retires X while a writer runs one update: the writer never waits for a
//!   reader (`LockCounters::reader_waits`), i.e. never for the freer that pushed the
//!   region (the point of unlocking before the push). The broken twin pushes before it
//!   unlocks, as the table did before, and loom must find the writer waiting.
//! - Two freers race for X (a double free) beside the update: exactly one wins, and the
//!   other sees the object retired (`DoubleFree`) or, once drained, free space
//!   (`NotAllocated`), never a live object.
//! - X's page as a loom cell: the freer writes it in its `prepare` (under its read
//!   reference), and the writer, if its placement got X's range back, writes it as the
//!   next owner. Loom checks the pair is ordered (the push's Release, the drain's
//!   Acquire swap). The broken twin's freer touches the page after its `retire`
//!   returned, and loom must report the race.
//!
//! Each model counts which paths its executions took and asserts every interesting one
//! was reached, so it cannot pass vacuously.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom_retire`.

use super::loom_table::{
    check, new_table, regions, release, spawn, Broken, Page, PREEMPTION_BOUND,
};
use super::table::RetireError;
use super::{RegionKind, RegionTable};
use crate::os::PAGE_SIZE;
use loom::sync::Arc;
use std::sync::atomic::AtomicUsize as StdCounter;
use std::sync::atomic::Ordering::Relaxed;

const P: usize = PAGE_SIZE;

/// Per-model tallies over all executions (plain std atomics: they count, they are not
/// part of the model).
struct Tally {
    /// Frees that ended `DoubleFree` and `NotAllocated`; updates that drained X and
    /// that found the stack empty; lookups that took the slow path.
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

    fn report(&self, model: &str, required: &[(&str, &StdCounter)]) {
        let c = |n: &StdCounter| n.load(Relaxed);
        eprintln!(
            "loom {model}: double free {} not allocated {} drained {} empty {} slow {}",
            c(&self.double_free),
            c(&self.not_allocated),
            c(&self.drained),
            c(&self.empty),
            c(&self.slow),
        );
        for (what, counter) in required {
            assert!(c(counter) > 0, "no execution reached {what}");
        }
    }
}

/// The arena and its object X.
fn arena(id: u8) -> (&'static RegionTable, usize) {
    let table = new_table(id);
    let x = table
        .allocate(P, P, RegionKind::Large)
        .expect("a placement")
        .start;
    let [(_, P, RegionKind::Large), (_, _, RegionKind::Free)] = regions(table)[..] else {
        panic!("not [object][free]: {:x?}", regions(table));
    };
    (table, x)
}

/// Whether the update drained X (it is free space now) or ran before the push.
fn drained(table: &RegionTable, x: usize, tally: &Tally) {
    let kind = regions(table)
        .into_iter()
        .find(|r| r.0 == x)
        .expect("X's start is a region's")
        .2;
    match kind {
        RegionKind::Free => tally.drained.fetch_add(1, Relaxed),
        _ => tally.empty.fetch_add(1, Relaxed),
    };
}

/// `freers` threads free X while this thread runs one update; with one freer, the
/// update must not wait for a reader.
fn frees_vs_drain(id: u8, tally: &'static Tally, freers: usize, push_first: bool) {
    check(PREEMPTION_BOUND, move || {
        let (table, x) = arena(id);
        Broken {
            push_before_unlock: push_first,
            ..Broken::NONE
        }
        .arm();
        let (waits, slow) = (
            table.counters.reader_waits().get(),
            table.counters.slow().get(),
        );
        let freers: Vec<_> = (0..freers)
            .map(|_| spawn(move || table.retire(x)))
            .collect();
        table.collect_retired();
        let one = freers.len() == 1;
        let ends: Vec<_> = freers.into_iter().map(|f| f.join().unwrap()).collect();
        Broken::clear();
        assert!(
            !(one && table.counters.reader_waits().get() > waits),
            "the writer waited for the freer that pushed the region"
        );
        let winners = ends.iter().filter(|e| e.is_ok()).count();
        assert_eq!(winners, 1, "exactly one free wins: {ends:?}");
        for end in ends {
            match end {
                Err(RetireError::DoubleFree) => tally.double_free.fetch_add(1, Relaxed),
                Err(RetireError::NotAllocated) => tally.not_allocated.fetch_add(1, Relaxed),
                Err(e) => panic!("a free of X's start ended {e:?}"),
                Ok(()) => 0,
            };
        }
        if table.counters.slow().get() > slow {
            tally.slow.fetch_add(1, Relaxed);
        }
        drained(table, x, tally);
        release(table);
    });
}

#[test]
fn loom_retire_unlocks_before_push_so_the_drain_never_waits() {
    static TALLY: Tally = Tally::new();
    frees_vs_drain(24, &TALLY, 1, false);
    TALLY.report(
        "retire vs drain",
        &[
            ("a drain of the pushed region", &TALLY.drained),
            ("an update before the push", &TALLY.empty),
        ],
    );
}

#[test]
#[should_panic(expected = "the writer waited for the freer")]
fn loom_broken_retire_pushing_before_unlock_makes_the_drain_wait() {
    static TALLY: Tally = Tally::new();
    frees_vs_drain(25, &TALLY, 1, true);
}

#[test]
fn loom_double_free_beside_the_drain_is_caught_exactly_once() {
    static TALLY: Tally = Tally::new();
    frees_vs_drain(26, &TALLY, 2, false);
    TALLY.report(
        "double free vs drain",
        &[
            ("a double free seen as retired", &TALLY.double_free),
            ("a double free seen as free space", &TALLY.not_allocated),
            ("a drain of the pushed region", &TALLY.drained),
            ("an update before any push", &TALLY.empty),
            ("a free sent to the slow path by the update", &TALLY.slow),
        ],
    );
}

/// One freer retires X, writing its page in `prepare` (or, `broken`, after `retire`
/// returned), while this thread places a one-page object and, if it got X's range,
/// writes the page as its next owner.
fn pages_vs_drain(id: u8, tally: &'static Tally, broken: bool) {
    check(PREEMPTION_BOUND, move || {
        let (table, x) = arena(id);
        let page = Arc::new(Page::new());
        let freer = {
            let page = page.clone();
            spawn(move || {
                let prepare = |_: &super::Region| {
                    if !broken {
                        page.write()
                    }
                };
                table.retire_with(x, prepare).expect("a live object");
                if broken {
                    page.write();
                }
            })
        };
        let placed = table
            .allocate(P, P, RegionKind::Large)
            .expect("a placement");
        if placed.start == x {
            page.write();
            tally.drained.fetch_add(1, Relaxed);
        } else {
            tally.empty.fetch_add(1, Relaxed);
        }
        freer.join().unwrap();
        release(table);
    });
}

#[test]
fn loom_retire_hands_the_pages_over_with_the_push() {
    static TALLY: Tally = Tally::new();
    pages_vs_drain(27, &TALLY, false);
    TALLY.report(
        "pages vs drain",
        &[
            ("a placement that reused X's page", &TALLY.drained),
            ("a placement before the push", &TALLY.empty),
        ],
    );
}

#[test]
#[should_panic(expected = "Causality violation")]
fn loom_broken_retire_touching_pages_after_its_push_races_the_drain() {
    static TALLY: Tally = Tally::new();
    pages_vs_drain(28, &TALLY, true);
}
