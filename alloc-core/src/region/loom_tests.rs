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
//! and must be caught. Model e runs two such tables as two arenas, found from an address
//! through the shipped `directory` (compiled over this file's `Table` in model builds)
//! and `space`'s arena byte.
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
/// the writer mutex. Model builds register it in `directory` (model e).
pub struct Table {
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

// ------------------------------------------- e. two arenas' writers beside one reader of both

/// Two arenas, each its own table (own tree versions, sequence and writer mutex), found
/// from an address through the shipped `directory::table_of` and `space`'s arena byte
/// (each arena registered under its fixed id, as `Arenas::process` does). Arena 1's
/// writer moves its one region as model a does (`grow`'s rekey); arena 2's writer merges
/// its two free regions as model b does (`absorb`). Each update ends with its own arena's
/// `end_write_all`, so the two sequences move independently: a region is write-locked
/// exactly while its own arena's sequence equals its stamp. The reader looks up an
/// address in arena 1, and while it holds that read lock, one in arena 2 (a reader never
/// blocks, so holding a lock in one arena while locking in another is allowed), and
/// checks what each validated lock shows. (A second reader, taking them in the other
/// order, made the model take over 10 minutes on the shared machine: left out.)
/// The arenas' addresses lie in two 4 MiB slots of their own, far from any real mapping
/// (the model build makes no reservation).
const E_SLOT_1: usize = 0x0100_0000_0000;
const E_SLOT_2: usize = E_SLOT_1 + crate::space::SLOT_SIZE;
const E_ID_1: u8 = 1;
const E_ID_2: u8 = 2;

/// Arena 1: model a's region and tree versions, shifted into its slot.
fn e_arena_1() -> &'static Table {
    let shift = |(start, len): (usize, usize)| (E_SLOT_1 + start, len);
    Box::leak(Box::new(Table::build(
        vec![shift(A_RANGES[0])],
        A_RANGES.iter().map(|&r| vec![(shift(r).0, 0)]).collect(),
    )))
}

/// Arena 2: model b's two free regions and tree versions, shifted into its slot.
fn e_arena_2() -> &'static Table {
    let (a, b) = ((E_SLOT_2 + B_A.0, B_A.1), (E_SLOT_2 + B_B.0, B_B.1));
    Box::leak(Box::new(Table::build(
        vec![a, b],
        vec![vec![(a.0, IDX_A), (b.0, IDX_B)], vec![(a.0, IDX_A)]],
    )))
}

/// Publishes both arenas in the directory and their slots in the arena map. The
/// directory's statics outlive an execution: each execution re-publishes its own
/// tables under the same ids before any thread looks them up.
fn e_register(one: &'static Table, two: &'static Table) {
    crate::space::set_arena(E_SLOT_1, crate::space::SLOT_SIZE, E_ID_1);
    crate::space::set_arena(E_SLOT_2, crate::space::SLOT_SIZE, E_ID_2);
    super::directory::register_fixed(one, E_ID_1);
    super::directory::register_fixed(two, E_ID_2);
}

/// Arena 1's address (model a's, in its slot) and arena 2's (in model b's right region).
const E_ADDR_1: usize = E_SLOT_1 + A_ADDR;
const E_ADDR_2: usize = E_SLOT_2 + B_IN_B;

/// Model a's `move_range` on arena 1 (ranges shifted into its slot).
fn e_move(t: &Table, to: usize) {
    let r = &t.regions[0];
    t.start_write(0);
    t.publish(to);
    r.start.store(E_SLOT_1 + A_RANGES[to].0, Ordering::Relaxed);
    r.len.store(A_RANGES[to].1, Ordering::Relaxed);
}

/// A validated read lock on arena 1: one whole range of model a's, unchanged until unlock
/// (the caller unlocks), found under its own start.
fn e_check_1(t: &Table, index: usize, key: usize) -> (usize, usize, bool) {
    let seen = snapshot(&t.regions[index]);
    let whole = A_RANGES
        .iter()
        .any(|&(start, len)| (E_SLOT_1 + start, len) == (seen.0, seen.1));
    assert!(
        whole && !seen.2 && key == seen.0,
        "arena 1: torn, detached or stale range under a validated read lock: {seen:x?}"
    );
    seen
}

/// A validated read lock on arena 2: `B` whole and attached, or `A` merged over it.
fn e_check_2(t: &Table, index: usize) -> (usize, usize, bool) {
    let (a, b) = (&t.regions[IDX_A], &t.regions[IDX_B]);
    let seen = snapshot(&t.regions[index]);
    assert!(
        t.regions[index].contains(E_ADDR_2) && !seen.2,
        "arena 2: a half-merged region under a validated read lock: {seen:x?}"
    );
    if index == IDX_A {
        assert!(
            a.len() == B_A.1 + B_B.1 && b.is_detached(),
            "arena 2: a half-merged region under a validated read lock: A {:x?}, B detached {}",
            snapshot(a),
            b.is_detached()
        );
    } else {
        assert_eq!(
            (seen.0, seen.1),
            (E_SLOT_2 + B_B.0, B_B.1),
            "arena 2: a half-merged region under a validated read lock"
        );
    }
    seen
}

/// A read lock the reader of model e holds, released on drop: when a check fails, the
/// panic unwinds through it, so the writer waiting for it finishes and loom reports the
/// panic (not a writer spinning forever on a lock nobody will release).
struct Held {
    table: &'static Table,
    index: usize,
    seen: (usize, usize, bool),
    arena: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.table.regions[self.index].lock.read_unlock();
    }
}

/// The reader: looks `first` up, then `second`, both through the directory, each checked
/// under its validated read lock across a yield (so the other arena's writer runs
/// meanwhile) and released before the next lookup. Not nested, as the table is used: a
/// reader that held a read lock in one arena while its lookup in the other fell to the
/// slow path (that arena's writer mutex) would break DESIGN.md's rule (no writer mutex
/// while holding a read lock) across arenas, and with a second reader taking them in the
/// other order would close a cycle with the two writers draining them. (A first, nested
/// version of this model exceeded loom's branch limit; nothing shipped holds two read
/// locks.) `wrong_seq`: arena 2's
/// regions are validated against arena 1's sequence (the broken variant: one sequence
/// taken for another arena's).
fn e_read_both(first: usize, second: usize, tallies: [&Tally; 2], wrong_seq: bool) {
    for addr in [first, second] {
        let table = super::directory::table_of(addr).expect("the directory finds the arena");
        let arena = usize::from(addr >= E_SLOT_2);
        let seq = if wrong_seq && arena == 1 {
            &super::directory::table_of(E_ADDR_1).expect("arena 1").seq
        } else {
            &table.seq
        };
        let (index, key) = table
            .find_and_read_lock_checking(addr, tallies[arena], true, seq)
            .expect("a covered address is found");
        let mut lock = Held {
            table,
            index,
            seen: (0, 0, false),
            arena,
        };
        lock.seen = if arena == 0 {
            e_check_1(table, index, key)
        } else {
            e_check_2(table, index)
        };
        thread::yield_now();
        assert_eq!(
            snapshot(&lock.table.regions[lock.index]),
            lock.seen,
            "arena {}: range changed under a validated read lock",
            lock.arena + 1
        );
    }
}

fn e_model(wrong_seq: bool, tallies: [&'static Tally; 2]) {
    let (one, two) = (e_arena_1(), e_arena_2());
    e_register(one, two);
    let writer_1 = thread::spawn(move || one.write(|t| e_move(t, 1)));
    let writer_2 = thread::spawn(move || two.write(merge));
    e_read_both(E_ADDR_1, E_ADDR_2, tallies, wrong_seq);
    writer_1.join().unwrap();
    writer_2.join().unwrap();
    // Both updates have ended: each arena's lookup takes the fast path and sees it done.
    for (addr, t) in [(E_ADDR_1, one), (E_ADDR_2, two)] {
        let tally = tallies[usize::from(addr >= E_SLOT_2)];
        let fast = tally.get(Path::Fast);
        let (index, _) = t.find_and_read_lock(addr, tally).expect("covered");
        assert_eq!(
            tally.get(Path::Fast),
            fast + 1,
            "an unlocked region took the slow path"
        );
        t.regions[index].lock.read_unlock();
    }
    assert_eq!(
        (one.regions[0].start(), one.regions[0].len()),
        (E_SLOT_1 + A_RANGES[1].0, A_RANGES[1].1)
    );
    assert_eq!(two.regions[IDX_A].len(), B_A.1 + B_B.1);
    assert!(one
        .regions
        .iter()
        .chain(&two.regions)
        .all(|r| r.lock.readers() == 0));
}

#[test]
fn loom_two_arenas_writers_beside_a_reader_of_both() {
    static ONE: Tally = Tally::new();
    static TWO: Tally = Tally::new();
    builder().check(|| {
        ONE.execution();
        TWO.execution();
        e_model(false, [&ONE, &TWO]);
    });
    ONE.report("e (two arenas' writers, a reader of both), arena 1");
    TWO.report("e (two arenas' writers, a reader of both), arena 2");
    for (tally, arena) in [(&ONE, 1), (&TWO, 2)] {
        for path in [Path::Fast, Path::Abort, Path::Retry, Path::Slow] {
            assert!(
                tally.get(path) > 0,
                "model e never took the {path:?} path in arena {arena}"
            );
        }
    }
}

/// Model e with arena 2's regions validated against arena 1's sequence, as a reader
/// would that took the sequence of another arena than the region's (one sequence for
/// the process, or the wrong directory entry): once arena 1's update has ended, its
/// sequence has moved past the stamp arena 2's writer put on the regions it is merging,
/// and the reader takes them mid-update. Loom must find it.
#[test]
#[should_panic(expected = "arena 2: ")]
fn loom_broken_two_arenas_reader_with_the_other_arenas_seq_is_caught() {
    static ONE: Tally = Tally::new();
    static TWO: Tally = Tally::new();
    builder().check(|| e_model(true, [&ONE, &TWO]));
}
