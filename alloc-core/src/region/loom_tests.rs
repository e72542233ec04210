//! `loom` models of the region table's read/write protocol (DESIGN.md §2). They run the
//! real per-region code: `RegionLock`, `TableSeq`, the `Region` descriptor and the
//! protocol steps in `protocol.rs` (the reader's `read_lock_validated`, the writer's
//! `stamp_new` and `mark_detached`), all built on `crate::sync::atomic`, which is loom's
//! under `cfg(loom)`. What they replace is the table around them: a loom `Mutex` as the
//! writer mutex, and a copy-on-write "tree" reduced to what the protocol sees of it:
//! immutable versions of the address map and one root index published with `Release`,
//! read with `Acquire` (as `tree.rs` does). The lookup loop and slow path follow
//! `RegionTable::find_and_read_lock` and `find_and_read_lock_slow`; the writers make the
//! stores of `grow`, `absorb`/`detach` and `shrink` in their order. Each model also counts
//! which paths its executions took and asserts that every interesting one was reached,
//! so a model cannot pass vacuously; the `broken_*` models drop one step of the protocol
//! and must be caught. The two-arena model (e) runs the real `RegionTable`: `loom_table`.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom`.

use super::lock::TableSeq;
use super::protocol::ReadAttempt;
use super::{Dirtiness, Region, RegionKind};
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::sync::atomic::AtomicUsize as StdCounter;

/// Preemptions per execution. Bound 3 explores every interleaving with up to three forced
/// context switches: enough for each race below (each needs at most two), and every
/// model still finishes in seconds. `LOOM_MAX_PREEMPTIONS` overrides it.
const PREEMPTION_BOUND: usize = 3;

/// `table.rs`'s `STALE_RETRIES`: fast-path attempts after finding a detached region.
const STALE_RETRIES: u32 = 2;

const PAGE: usize = 0x1000;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(PREEMPTION_BOUND);
    }
    b
}

// ---------------------------------------------------------------- the modelled table

/// How a lookup ended, for the path counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Fast,
    /// Fast path refused (`ReadAttempt::WriteLocked`): the region was write-locked.
    Abort,
    /// Found a detached or moved descriptor and retried (`ReadAttempt::Moved`).
    Retry,
    /// Found a descriptor that no longer covers the address (`ReadAttempt::Missed`).
    Stale,
    Slow,
}

/// Per-model tallies over all executions (plain std atomics: they count, they are not
/// part of the model).
struct Tally([StdCounter; 5], StdCounter);

impl Tally {
    const fn new() -> Self {
        Tally([const { StdCounter::new(0) }; 5], StdCounter::new(0))
    }
    fn hit(&self, path: Path) {
        self.0[path as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn execution(&self) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn get(&self, path: Path) -> usize {
        self.0[path as usize].load(std::sync::atomic::Ordering::Relaxed)
    }
    fn report(&self, model: &str) {
        eprintln!(
            "loom {model}: {} executions; paths fast {} abort {} retry {} stale {} slow {}",
            self.1.load(std::sync::atomic::Ordering::Relaxed),
            self.get(Path::Fast),
            self.get(Path::Abort),
            self.get(Path::Retry),
            self.get(Path::Stale),
            self.get(Path::Slow),
        );
    }
}

/// A region table in miniature: descriptors, the versions of the address map that the
/// writer publishes in order, the root (index of the current version), the sequence and
/// the writer mutex.
struct Table {
    regions: Vec<Region>,
    /// `versions[v]`: (start key, region index) sorted by key; immutable once built.
    versions: Vec<Vec<(usize, usize)>>,
    root: AtomicUsize,
    seq: TableSeq,
    writer: Mutex<()>,
}

impl Table {
    fn new(regions: Vec<(usize, usize)>, versions: Vec<Vec<(usize, usize)>>) -> Arc<Self> {
        Arc::new(Self::build(regions, versions))
    }

    fn build(regions: Vec<(usize, usize)>, versions: Vec<Vec<(usize, usize)>>) -> Self {
        Table {
            regions: regions
                .into_iter()
                .map(|(start, len)| Region::new(start, len, RegionKind::Free, false))
                .collect(),
            versions,
            root: AtomicUsize::new(0),
            seq: TableSeq::new(),
            writer: Mutex::new(()),
        }
    }

    /// `tree.floor(addr)`: the key and the region. Acquire on the root pairs with the
    /// writer's Release publish.
    fn floor(&self, addr: usize) -> Option<(usize, usize)> {
        let version = &self.versions[self.root.load(Ordering::Acquire)];
        version.iter().rev().find(|&&(key, _)| key <= addr).copied()
    }

    /// The writer's tree update: publish the next version (one Release store).
    fn publish(&self, version: usize) {
        self.root.store(version, Ordering::Release);
    }

    /// `RegionTable::find_and_read_lock`, with the tree lookup above: the region's index
    /// and the key the lookup carries (`ReadGuard::start`).
    fn find_and_read_lock(&self, addr: usize, tally: &Tally) -> Option<(usize, usize)> {
        self.find_and_read_lock_checking(addr, tally, true, &self.seq)
    }

    /// `find_and_read_lock`; without `key_check`, the validation is handed the
    /// descriptor's own start as the key (so the key re-check cannot fail), as the
    /// hand-written mirror these models once used did: the broken variant.
    /// `seq` is the sequence the validation compares with: this table's own, but for the
    /// broken variant of model e, which hands it another arena's.
    fn find_and_read_lock_checking(
        &self,
        addr: usize,
        tally: &Tally,
        key_check: bool,
        seq: &TableSeq,
    ) -> Option<(usize, usize)> {
        for _ in 0..STALE_RETRIES {
            let Some((key, index)) = self.floor(addr) else {
                break;
            };
            let region = &self.regions[index];
            let checked_key = if key_check { key } else { region.start() };
            match region.read_lock_validated(checked_key, addr, seq) {
                ReadAttempt::Locked => {
                    tally.hit(Path::Fast);
                    return Some((index, key));
                }
                ReadAttempt::WriteLocked => {
                    tally.hit(Path::Abort);
                    break;
                }
                ReadAttempt::Moved => {
                    tally.hit(Path::Retry);
                    continue;
                }
                ReadAttempt::Missed => {
                    tally.hit(Path::Stale);
                    break;
                }
            }
        }
        self.find_and_read_lock_slow(addr, tally)
    }

    /// `RegionTable::find_and_read_lock_slow`: the lookup repeated under the writer mutex,
    /// which is released before the caller works under the read lock.
    fn find_and_read_lock_slow(&self, addr: usize, tally: &Tally) -> Option<(usize, usize)> {
        let _writer = self.writer.lock().unwrap();
        tally.hit(Path::Slow);
        let (key, index) = self.floor(addr)?;
        let region = &self.regions[index];
        if !region.contains(addr) {
            return None;
        }
        assert_eq!(region.start(), key, "the tree is current under the mutex");
        // SAFETY: we hold the writer mutex.
        unsafe { region.lock.read_lock_under_writer() };
        Some((index, key))
    }

    /// `RegionTable::write`: the update runs under the mutex and ends with one bulk unlock.
    fn write(&self, update: impl FnOnce(&Self)) {
        let _writer = self.writer.lock().unwrap();
        update(self);
        // SAFETY: we hold the writer mutex; this ends the update.
        unsafe { self.seq.end_write_all() };
    }

    fn start_write(&self, index: usize) {
        // SAFETY: called only inside `write`, under the writer mutex.
        unsafe { self.regions[index].lock.start_write(&self.seq) }
    }

    /// `Writer::detach`'s marks (the tree update is the caller's `publish`).
    fn mark_detached(&self, index: usize) {
        // SAFETY: called only inside `write`, under the writer mutex.
        unsafe { self.regions[index].mark_detached(&self.seq) }
    }
}

/// A snapshot of a descriptor's range and detached flag, as a reader sees it.
fn snapshot(r: &Region) -> (usize, usize, bool) {
    (r.start(), r.len(), r.is_detached())
}

// ------------------------------------------------------ a. reader vs single-region writer

/// One region, `[0x1000, 0x4000)`. Two successive updates each move its range the way
/// `grow` moves a free neighbour's: under `start_write`, the tree is rekeyed (a new
/// version published) and start and length are two separate stores: first to
/// `[0x2000, 0x4000)`, then to `[0x3000, 0x4000)`. A reader on 0x3800 (covered by all
/// three ranges; two such readers run) must, while it holds a validated read lock, see
/// exactly one of the three whole ranges, the same one until it unlocks, and the key its
/// lookup carries must be that range's start. After the writer is done, a fresh lookup
/// must take the fast path and see the final range.
const A_RANGES: [(usize, usize); 3] = [(PAGE, 3 * PAGE), (2 * PAGE, 2 * PAGE), (3 * PAGE, PAGE)];
const A_ADDR: usize = 3 * PAGE + PAGE / 2;

fn single_region_table() -> Arc<Table> {
    Table::new(
        vec![A_RANGES[0]],
        A_RANGES
            .iter()
            .map(|&(start, _)| vec![(start, 0)])
            .collect(),
    )
}

/// Moves the region to `A_RANGES[to]`, publishing tree version `to` (its key).
fn move_range(t: &Table, to: usize) {
    let r = &t.regions[0];
    t.start_write(0);
    t.publish(to);
    r.start.store(A_RANGES[to].0, Ordering::Relaxed);
    r.len.store(A_RANGES[to].1, Ordering::Relaxed);
}

fn read_single(t: &Table, tally: &Tally, key_check: bool) {
    let (index, key) = t
        .find_and_read_lock_checking(A_ADDR, tally, key_check, &t.seq)
        .expect("a covered address is found");
    let r = &t.regions[index];
    let seen = snapshot(r);
    assert!(
        A_RANGES.contains(&(seen.0, seen.1)) && !seen.2,
        "torn or detached range under a validated read lock: {seen:x?}"
    );
    assert_eq!(
        key, seen.0,
        "stale key: the lookup's key is not the region's start"
    );
    thread::yield_now();
    assert_eq!(snapshot(r), seen, "range changed under a read lock");
    r.lock.read_unlock();
}

#[test]
fn loom_reader_vs_single_region_writer() {
    static TALLY: Tally = Tally::new();
    builder().check(|| {
        TALLY.execution();
        let t = single_region_table();
        let writer = {
            let t = t.clone();
            thread::spawn(move || {
                t.write(|t| move_range(t, 1));
                t.write(|t| move_range(t, 2));
            })
        };
        // Two readers, so the writer's drain sees a count above one and readers overlap.
        let other = {
            let t = t.clone();
            thread::spawn(move || read_single(&t, &TALLY, true))
        };
        read_single(&t, &TALLY, true);
        writer.join().unwrap();
        other.join().unwrap();
        // Every update has ended: the fast path must succeed and see the last range.
        let fast_before = TALLY.get(Path::Fast);
        let (index, _) = t.find_and_read_lock(A_ADDR, &TALLY).expect("covered");
        assert_eq!(
            TALLY.get(Path::Fast),
            fast_before + 1,
            "unlocked region took the slow path"
        );
        let r = &t.regions[index];
        assert_eq!((r.start(), r.len()), A_RANGES[2]);
        r.lock.read_unlock();
        assert_eq!(r.lock.readers(), 0);
    });
    TALLY.report("a (reader vs single-region writer)");
    for path in [Path::Fast, Path::Abort, Path::Retry, Path::Slow] {
        assert!(TALLY.get(path) > 0, "model a never took the {path:?} path");
    }
}

/// Model a without the `lock_seq == table_seq` check (`try_read` alone): a reader slips
/// in between `start_write` and `end_write_all` and sees a half-moved range. Loom must
/// find that execution, which shows the check is what model a relies on.
#[test]
#[should_panic(expected = "torn")]
fn loom_broken_reader_without_lock_seq_check_sees_torn_range() {
    builder().check(|| {
        let t = single_region_table();
        let writer = {
            let t = t.clone();
            thread::spawn(move || t.write(|t| move_range(t, 1)))
        };
        let r = &t.regions[0];
        if r.lock.try_read() {
            let (start, len, _) = snapshot(r);
            assert!(
                A_RANGES[..2].contains(&(start, len)),
                "torn range {start:#x}+{len:#x}"
            );
            r.lock.read_unlock();
        }
        writer.join().unwrap();
    });
}

/// Model a with the validation handed the descriptor's own start as the key, so the key
/// re-check cannot fail (the hand-written mirror these models once used lacked it): a
/// reader that read the tree before a `grow`'s rekey and locks the region after the
/// update ends holds a region whose range still covers its address, attached, but
/// carries the old key, and would work on the wrong start. Loom must find it.
#[test]
#[should_panic(expected = "stale key")]
fn loom_broken_reader_without_key_recheck_keeps_a_stale_key() {
    static TALLY: Tally = Tally::new();
    builder().check(|| {
        let t = single_region_table();
        let writer = {
            let t = t.clone();
            thread::spawn(move || t.write(|t| move_range(t, 1)))
        };
        read_single(&t, &TALLY, false);
        writer.join().unwrap();
    });
}

// --------------------------------------- b. reader vs multi-region write-lock + bulk unlock

/// Two adjacent free regions, A = `[0x1000, 0x2000)` and B = `[0x2000, 0x3000)`. The writer
/// merges them exactly as `absorb(A, B)` does: `start_write(A)`, then `detach(B)`
/// (`start_write(B)`, tree without B published, `B.detached = true`), then `A.len += B.len`,
/// and one `end_write_all` unlocks both. One reader looks up an address in B, another
/// an address in A.
const B_A: (usize, usize) = (PAGE, PAGE);
const B_B: (usize, usize) = (2 * PAGE, PAGE);
const B_IN_A: usize = PAGE + PAGE / 2;
const B_IN_B: usize = 2 * PAGE + PAGE / 2;
const IDX_A: usize = 0;
const IDX_B: usize = 1;

fn merge(t: &Table) {
    t.start_write(IDX_A);
    t.start_write(IDX_B);
    let right_len = t.regions[IDX_B].len();
    // detach(B): the tree update, then `discard`'s marks.
    t.publish(1);
    t.mark_detached(IDX_B);
    // back in absorb
    t.regions[IDX_A].len.fetch_add(right_len, Ordering::Relaxed);
}

/// What a reader holding a validated read lock on `index` for `addr` may see.
fn check_merge_guard(t: &Table, index: usize, addr: usize) {
    let (a, b) = (&t.regions[IDX_A], &t.regions[IDX_B]);
    let r = &t.regions[index];
    let seen = snapshot(r);
    assert!(
        r.contains(addr) && !seen.2,
        "guard on a region that is detached or misses {addr:#x}: {seen:x?}"
    );
    if index == IDX_A {
        // A's length and B's detachment change in one update: never one without the other.
        match a.len() {
            l if l == B_A.1 => assert!(!b.is_detached(), "B detached but A not grown"),
            l if l == B_A.1 + B_B.1 => assert!(b.is_detached(), "A grown over a live B"),
            l => panic!("A has an intermediate length {l:#x}"),
        }
    } else {
        assert_eq!((seen.0, seen.1), B_B, "B's range changed");
    }
    thread::yield_now();
    assert_eq!(snapshot(r), seen, "range changed under a read lock");
    r.lock.read_unlock();
}

#[test]
fn loom_reader_vs_multi_region_write_and_bulk_unlock() {
    static TALLY: Tally = Tally::new();
    builder().check(|| {
        TALLY.execution();
        let t = Table::new(
            vec![B_A, B_B],
            vec![vec![(B_A.0, IDX_A), (B_B.0, IDX_B)], vec![(B_A.0, IDX_A)]],
        );
        let writer = {
            let t = t.clone();
            thread::spawn(move || t.write(merge))
        };
        let reader_b = {
            let t = t.clone();
            thread::spawn(move || {
                let (index, _) = t
                    .find_and_read_lock(B_IN_B, &TALLY)
                    .expect("B's address is covered");
                check_merge_guard(&t, index, B_IN_B);
            })
        };
        let (index, _) = t
            .find_and_read_lock(B_IN_A, &TALLY)
            .expect("A's address is covered");
        assert_eq!(index, IDX_A);
        check_merge_guard(&t, index, B_IN_A);
        writer.join().unwrap();
        reader_b.join().unwrap();
        // After the bulk unlock both regions are unlocked, B's address is A's.
        let (index, _) = t
            .find_and_read_lock(B_IN_B, &TALLY)
            .expect("covered after merge");
        assert_eq!(index, IDX_A);
        assert_eq!(t.regions[IDX_A].len(), B_A.1 + B_B.1);
        t.regions[IDX_A].lock.read_unlock();
        assert!(t.regions.iter().all(|r| r.lock.readers() == 0));
    });
    TALLY.report("b (reader vs multi-region write + bulk unlock)");
    for path in [Path::Fast, Path::Abort, Path::Retry, Path::Slow] {
        assert!(TALLY.get(path) > 0, "model b never took the {path:?} path");
    }
}

// ------------------------------------------------ c. reader vs detach-and-reuse of a descriptor

/// Descriptor D covers `[0x1000, 0x2000)`. Update 1 detaches it (as `detach` does);
/// update 2 then reuses the *same* descriptor for `[0x8000, 0xa000)` (as a type-stable,
/// `SLAB_TYPESAFE_BY_RCU`-style pool would, without waiting for a grace period): it
/// write-locks D, rewrites start and length, clears `detached` and publishes the new key.
/// A reader that found D for 0x1800 in the first tree version, and locks it at any later
/// point, must never act on D as covering 0x1800 once the reuse has begun: a ghost flag
/// set by the writer right after it rewrites D must read false throughout the reader's
/// critical section. A second reader looks up an address of the new range meanwhile.
const C_OLD: (usize, usize) = (PAGE, PAGE);
const C_NEW: (usize, usize) = (8 * PAGE, 2 * PAGE);
const C_ADDR: usize = PAGE + PAGE / 2;

struct Reuse {
    t: Arc<Table>,
    /// Ghost: set (SeqCst) once the writer has begun rewriting D's range.
    reused: AtomicBool,
}

fn reuse_table() -> Arc<Reuse> {
    Arc::new(Reuse {
        t: Table::new(
            vec![C_OLD],
            vec![vec![(C_OLD.0, 0)], vec![], vec![(C_NEW.0, 0)]],
        ),
        reused: AtomicBool::new(false),
    })
}

fn detach_then_reuse(w: &Reuse, lock_before_reuse: bool) {
    w.t.write(|t| {
        t.start_write(0);
        t.publish(1);
        t.mark_detached(0);
    });
    w.t.write(|t| {
        let d = &t.regions[0];
        if lock_before_reuse {
            t.start_write(0);
        }
        // Re-attach, then re-range: the order of a re-initialisation is arbitrary (a
        // `Region::new` is one struct write); under `start_write` it does not matter.
        d.detached.store(false, Ordering::Release);
        d.start.store(C_NEW.0, Ordering::Relaxed);
        w.reused.store(true, Ordering::SeqCst);
        d.len.store(C_NEW.1, Ordering::Relaxed);
        t.publish(2);
    });
}

/// The reader side of model c: the lookup, then work under the lock while checking that
/// D still describes the address it was found for.
fn reader_on_reused(w: &Reuse, tally: &Tally) {
    if let Some((index, _)) = w.t.find_and_read_lock(C_ADDR, tally) {
        let d = &w.t.regions[index];
        let seen = snapshot(d);
        assert_eq!(
            (seen.0, seen.1, seen.2),
            (C_OLD.0, C_OLD.1, false),
            "acted on a reused region"
        );
        thread::yield_now();
        assert!(
            !w.reused.load(Ordering::SeqCst) && snapshot(d) == seen,
            "acted on a reused region: the descriptor was rewritten under the read lock"
        );
        d.lock.read_unlock();
    }
}

#[test]
fn loom_reader_vs_detach_and_reuse() {
    static TALLY: Tally = Tally::new();
    builder().check(|| {
        TALLY.execution();
        let w = reuse_table();
        let writer = {
            let w = w.clone();
            thread::spawn(move || detach_then_reuse(&w, true))
        };
        // A second reader looks up the new range: it finds nothing, or D wholly reused.
        let newcomer = {
            let w = w.clone();
            thread::spawn(move || {
                if let Some((index, _)) = w.t.find_and_read_lock(C_NEW.0 + PAGE, &TALLY) {
                    let d = &w.t.regions[index];
                    assert!(w.reused.load(Ordering::SeqCst));
                    assert_eq!(snapshot(d), (C_NEW.0, C_NEW.1, false), "half-reused region");
                    d.lock.read_unlock();
                }
            })
        };
        reader_on_reused(&w, &TALLY);
        writer.join().unwrap();
        newcomer.join().unwrap();
        // The reused descriptor serves its new range, and nothing covers the old one.
        assert!(w.t.find_and_read_lock(C_ADDR, &TALLY).is_none());
        let (index, _) =
            w.t.find_and_read_lock(C_NEW.0, &TALLY)
                .expect("reused range");
        w.t.regions[index].lock.read_unlock();
        assert_eq!(w.t.regions[0].lock.readers(), 0);
    });
    TALLY.report("c (reader vs detach-and-reuse)");
    // `Stale` is the newcomer's: an old tree version sends it to D still at its old
    // range (the reader of the old range meets the reuse as `Retry`: the key re-check).
    for path in [
        Path::Fast,
        Path::Abort,
        Path::Retry,
        Path::Stale,
        Path::Slow,
    ] {
        assert!(TALLY.get(path) > 0, "model c never took the {path:?} path");
    }
}

/// Model c with a reuse that skips `start_write` ("a detached descriptor has no readers
/// worth waiting for"): a reader that took the read lock on the detached descriptor sees
/// it re-attached with a half-written range and acts on it. This is why reuse without a
/// grace period must drain readers first, and why the real table, which re-initialises
/// descriptors with `Region::new` (resetting the lock word), may only reuse them after
/// the epoch grace period.
#[test]
#[should_panic(expected = "acted on a reused region")]
fn loom_broken_reuse_without_start_write_is_caught() {
    static TALLY: Tally = Tally::new();
    builder().check(|| {
        let w = reuse_table();
        let writer = {
            let w = w.clone();
            thread::spawn(move || detach_then_reuse(&w, false))
        };
        reader_on_reused(&w, &TALLY);
        writer.join().unwrap();
    });
}

// --------------------------------------------- d. reader vs a region created by an update

/// `shrink`: object O = `[0x1000, 0x4000)` shrinks to `[0x1000, 0x2000)` and gives its tail
/// back as a new free region T = `[0x2000, 0x4000)`. The writer write-locks O, shortens
/// it, stamps T (`stamp_new`), publishes the tree with T, and only then sets T's dirty
/// stamp (the real `shrink` stores `dirtiness` after the insert). Readers on 0x3800
/// must see O whole (before the update) or T finished, never T before its last store:
/// a new descriptor is write-locked until `end_write_all`, as the kernel write-locks a
/// new VMA before it enters the tree (issue 13 item 8).
const D_OBJECT: (usize, usize) = (PAGE, 3 * PAGE);
const D_KEPT: usize = PAGE;
const D_TAIL: (usize, usize) = (2 * PAGE, 2 * PAGE);
const D_ADDR: usize = 3 * PAGE + PAGE / 2;
const D_DIRTY: u64 = 7;
const IDX_O: usize = 0;
const IDX_T: usize = 1;

fn shrink_table() -> Arc<Table> {
    Table::new(
        vec![D_OBJECT, D_TAIL],
        vec![
            vec![(D_OBJECT.0, IDX_O)],
            vec![(D_OBJECT.0, IDX_O), (D_TAIL.0, IDX_T)],
        ],
    )
}

fn shrink(t: &Table, stamp: bool) {
    t.start_write(IDX_O);
    t.regions[IDX_O].len.store(D_KEPT, Ordering::Relaxed);
    if stamp {
        // SAFETY: under the writer mutex (inside `write`), T not yet published.
        unsafe { t.regions[IDX_T].stamp_new(&t.seq) };
    }
    t.publish(1);
    t.regions[IDX_T]
        .dirtiness
        .store(Dirtiness::Since(D_DIRTY), Ordering::Relaxed);
}

fn read_shrunk(t: &Table, tally: &Tally) {
    let Some((index, key)) = t.find_and_read_lock(D_ADDR, tally) else {
        panic!("0x{D_ADDR:x} is always covered");
    };
    let r = &t.regions[index];
    assert_eq!(key, r.start());
    if index == IDX_O {
        assert_eq!(r.len(), D_OBJECT.1, "the object shrank under a read lock");
    } else {
        assert_eq!(
            r.dirtiness(),
            Dirtiness::Since(D_DIRTY),
            "read-locked a new region before its update ended"
        );
    }
    r.lock.read_unlock();
}

#[test]
fn loom_reader_vs_new_region() {
    static TALLY: Tally = Tally::new();
    builder().check(|| {
        TALLY.execution();
        let t = shrink_table();
        let writer = {
            let t = t.clone();
            thread::spawn(move || t.write(|t| shrink(t, true)))
        };
        let other = {
            let t = t.clone();
            thread::spawn(move || read_shrunk(&t, &TALLY))
        };
        read_shrunk(&t, &TALLY);
        writer.join().unwrap();
        other.join().unwrap();
        assert!(t.regions.iter().all(|r| r.lock.readers() == 0));
    });
    TALLY.report("d (reader vs a region created by an update)");
    for path in [Path::Fast, Path::Abort, Path::Stale, Path::Slow] {
        assert!(TALLY.get(path) > 0, "model d never took the {path:?} path");
    }
}

/// Model d without `stamp_new`: the new tail is readable as soon as the tree publishes
/// it, and a reader locks it before the update's last store to it. Loom must find it.
#[test]
#[should_panic(expected = "before its update ended")]
fn loom_broken_new_region_without_stamp_is_caught() {
    static TALLY: Tally = Tally::new();
    builder().check(|| {
        let t = shrink_table();
        let writer = {
            let t = t.clone();
            thread::spawn(move || t.write(|t| shrink(t, false)))
        };
        read_shrunk(&t, &TALLY);
        writer.join().unwrap();
    });
}
