//! `loom` model f: a purge (`RegionTable::purge`: its pick under the writer mutex with
//! `split_for_purge` and the `Purging` claim, each `madvise` under its piece's read lock
//! alone, then the merge-back, `try_write` or the deferred slots of `region::deferred`)
//! races a writer that grows an object into the very piece being purged, and a reader
//! that looks the piece's neighbourhood up; all on the shipped `RegionTable`, with
//! `loom_table`'s harness.
//!
//! The arena: `[O: one page][T: three dirty pages][clean]` (O was a four-page object
//! shrunk in place). The purge's budget is two pages, so its pick cuts T into a piece
//! off its top, `[O+2P, O+4P)`, claimed and advised, and a rest `[O+P, O+2P)` (T's own
//! descriptor), left dirty. The writer grows O by two pages: `grow` takes the free
//! region after O whole (the rest) and the first page of the one after that (the
//! piece), write-locking both first, which waits out the purge's read lock. The page
//! `O+2P` is watched as a loom cell (`loom_table::watch_page`): the purge's `madvise`
//! writes it (the kernel zaps it), and so does O's owner once `grow` returned (the
//! object's new bytes); loom checks the two are ordered. When the grower holds the
//! mutex as the purge ends, the merge-back goes to the deferred slots, and the next
//! writer (here the final walk, `for_each_region`) folds it.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom_purge`.

use super::loom_table::{
    check, new_table, read, read_last, regions, release, spawn, watch_page, Broken, Dirt, Page,
    Paths, Probe, View,
};
use super::RegionKind;
use crate::os::{PurgeMode, PAGE_SIZE};
use loom::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const P: usize = PAGE_SIZE;

/// Model f's preemption bound: 2 (7,720 executions since session 10, was 14,747 while
/// the writer's tree loads were loom scheduling points). At 3 it did not finish: not in
/// 200 s (session 9), not in 11 minutes at load 13-19 (session 10), and not in 3.5
/// minutes of CPU (13 wall) with the reader not yielding under its lock (which at bound
/// 3 would cover every schedule of bound 2 with the yield). A purge is two updates and a
/// `madvise` between; the lead, not measured: the grower waits out the purge's read
/// lock in 4,932 of the 7,720 executions, and every round of that wait is a yield, a
/// switch loom makes for free. Its races need one forced switch each: the grow or the
/// reader run while the purge is preempted inside its pick, its `madvise` or its
/// merge-back.
const F_BOUND: usize = 2;

/// Tallies beside the lookup paths: executions where the grower waited for a purge's
/// read lock, where the merge-back was deferred, and where the purge's pick came first
/// (cut T; the grow took the rest and the advised piece's first page: two pages
/// purged) or second (after the grow: T's last page purged).
struct Tally {
    waits: AtomicU64,
    deferred: AtomicU64,
    piece_grown: AtomicU64,
    grown_first: AtomicU64,
}

impl Tally {
    const fn new() -> Self {
        Tally {
            waits: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            piece_grown: AtomicU64::new(0),
            grown_first: AtomicU64::new(0),
        }
    }
}

fn f_model(id: u8, broken: bool, paths: &'static Paths, tally: &'static Tally) {
    let table = new_table(id);
    let o = table
        .allocate(4 * P, P, RegionKind::Large)
        .expect("a placement")
        .start;
    assert!(table.shrink_in_place(o, P));
    let base = o;
    let [(_, P, RegionKind::Large), (t, t_len, RegionKind::Free), (clean, clean_len, RegionKind::Free)] =
        regions(table)[..]
    else {
        panic!("not [object][dirty][clean]: {:x?}", regions(table));
    };
    assert_eq!((t, t_len, clean), (base + P, 3 * P, base + 4 * P));
    // What a reader of `O + 3.5P` may find: T whole; the advised piece (claimed, then
    // clean), and merged with the clean space; the piece after the grow took its first
    // page, or T after the grow took its first two (dirty, claimed, clean); and that,
    // purged, merged with the clean space.
    let probe = Probe {
        addr: base + 3 * P + P / 2,
        views: vec![
            View(t, 3 * P, RegionKind::Free, Dirt::Dirty),
            View(t + P, 2 * P, RegionKind::Free, Dirt::Any),
            View(t + P, 2 * P + clean_len, RegionKind::Free, Dirt::Clean),
            View(t + 2 * P, P, RegionKind::Free, Dirt::Any),
            View(t + 2 * P, P + clean_len, RegionKind::Free, Dirt::Clean),
        ],
        last: None,
    };
    let page = Arc::new(Page::new());
    // SAFETY: `page` lives until the end of this execution, after `Broken::clear`.
    unsafe { watch_page(base + 2 * P, &page) };
    Broken {
        // The twin: `grow` does not write-lock the piece it takes a page of.
        skip_write_lock_at: if broken { t + P } else { 0 },
        ..Broken::NONE
    }
    .arm();
    let start = Paths::counts(table);
    let (waits, deferred) = (
        table.counters.reader_waits.get(),
        table.merges_deferred.get(),
    );
    let grower = {
        let page = page.clone();
        spawn(move || {
            assert!(table.grow_in_place(o, 3 * P));
            // O's new bytes: ordered after the purge's `madvise` of the page, if any?
            page.write();
        })
    };
    let purger = spawn(move || table.purge(0, PurgeMode::DontNeed, 2 * P));
    if !broken {
        // (The twin has no reader: the twin is about the page.)
        read(table, &probe, "f");
    }
    grower.join().unwrap();
    let purged = purger.join().unwrap();
    Broken::clear();
    paths.add(0, start, table);
    paths.execution();
    read_last(table, &probe, "f");
    if table.counters.reader_waits.get() > waits {
        tally.waits.fetch_add(1, Relaxed);
    }
    if table.merges_deferred.get() > deferred {
        tally.deferred.fetch_add(1, Relaxed);
    }
    // The arena after both (deferred merge-backs folded by the walk): O grown, the rest
    // of the reservation tiled by free regions, none claimed, no two adjacent ones of
    // equal dirtiness (merged), and no page dirty that the purge advised.
    let mut free = Vec::new();
    table.for_each_region(|start, len, kind, _| {
        assert!(start == o || kind == RegionKind::Free, "one object");
        if start == o {
            assert_eq!((len, kind), (3 * P, RegionKind::Large), "O grown");
        }
    });
    table.for_each_free_region(|start, len, dirty| free.push((start, len, dirty)));
    let mut at = base + 3 * P;
    for (i, &(start, len, dirty)) in free.iter().enumerate() {
        assert_eq!(start, at, "free space tiles the arena: {free:x?}");
        at += len;
        if i > 0 {
            assert_ne!(
                dirty,
                free[i - 1].2,
                "equal neighbours left apart: {free:x?}"
            );
        }
    }
    assert_eq!(at, base + super::table::ARENA_SIZE);
    // Either way the rest of the arena is one clean region: the piece less the grown
    // page, or T's last page, purged and merged with the clean space.
    assert!(
        matches!(free[..], [(_, _, false)]),
        "f: an unexpected arena after the purge: {free:x?}"
    );
    if purged == 2 * P {
        // The pick came first: the piece, cut off T's top.
        tally.piece_grown.fetch_add(1, Relaxed);
    } else if purged == P {
        // The grow came first: T's last page, purged whole.
        tally.grown_first.fetch_add(1, Relaxed);
    } else {
        panic!("f: the purge advised {purged:#x} bytes");
    }
    release(table);
}

#[test]
fn loom_purge_races_a_grow_into_its_piece_and_a_reader() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(F_BOUND, || f_model(22, false, &PATHS, &TALLY));
    PATHS.report(
        "f (purge vs grow vs reader)",
        &["the arena"],
        &["fast", "abort", "slow"],
    );
    let counts = [
        ("a grow that waited for the purge's read lock", &TALLY.waits),
        ("a merge-back left to the deferred slots", &TALLY.deferred),
        (
            "the pick first (T cut, the piece grown into)",
            &TALLY.piece_grown,
        ),
        ("the grow first", &TALLY.grown_first),
    ];
    for (what, count) in counts {
        let n = count.load(Relaxed);
        eprintln!("loom f: {what}: {n} executions");
        assert!(n > 0, "model f never reached {what}");
    }
}

/// Model f with `grow` taking the purged piece's first page without write-locking it,
/// so without waiting for the purge's read lock: the page is the object's while the
/// purge still advises it. Loom's causality check must report the two writes.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_broken_grow_into_a_piece_being_purged_is_caught() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(F_BOUND, || f_model(23, true, &PATHS, &TALLY));
}
