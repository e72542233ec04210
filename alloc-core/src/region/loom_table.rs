//! `loom` models on the shipped `RegionTable` (DESIGN.md §2): the harness every region
//! model shares (tables built and released per execution, the reader's checks, the
//! lookup-path tallies, the broken twins' switches and the hooks the shipped code calls
//! for them), and model e: two arenas' writers beside readers that look up addresses in
//! both. Models a-d (`loom_tests`), the purge models f and g (`loom_purge`) and the
//! retire models (`loom_retire`) use the same harness.
//!
//! What runs is the real table: its copy-on-write tree (`tree.rs`: root publication,
//! leaf slots), its writer spin lock and sequence, the writer's updates
//! (`table/writer.rs`), the bulk unlock at the end of `write`, the lock-free lookup and
//! its slow path, purge and the deferred merge-back slots, all on `crate::sync` atomics
//! (loom's here), with each arena found from an address through `directory` and
//! `space`'s arena byte. The writer's own loads of the tree's words are loom
//! `unsync_load`s, not scheduling points (`tree::Side`): loom compares a pending store
//! with the last access to the word only, and a writer's load of the root just before
//! its store used to hide every reader's root load from it, so no lock-free lookup ever
//! ran between an update's publication and its end. What is not the shipped code: `meta` (model builds serve
//! metadata from a stand-in, `meta/model.rs`) and the epoch collector
//! (`crossbeam_epoch`, whose std atomics loom does not see; its thread registration is
//! shared by loom's threads, which run on one OS thread): reclamation is not modelled,
//! and within one execution no descriptor or node is ever freed (an arena hands its
//! detached blocks to the collector 30 at a time, `blocks::BATCH`; `release` asserts
//! that no execution sealed a batch). Why no reader can hold a reused descriptor in the
//! shipped code: `loom_tests`' model c.
//!
//! Each execution builds its tables under fixed directory ids with a real reservation
//! each (`MAP_NORESERVE` address space, never touched), and releases them at its end.
//!
//! Model e: arena 1's writer grows an object into its free neighbour (`take_front`'s
//! rekey), arena 2's folds a retired object with its free neighbour (`drain_retired`,
//! `coalesce`, `absorb`, `detach`). `e` has one reader doing three lookups across both
//! arenas, at preemption bound 3; `e2` two readers in opposite arena orders, one lookup
//! per arena each, at bound 2 and without yielding while they hold a lock (five
//! threads; 103,952 executions). Until session 10 `e2` ran at bound 1 (11,541
//! executions; bound 2 did not finish in 8 minutes): the writer's tree loads were loom
//! scheduling points then (see above), and with them `unsync_load`s bound 1 takes 1,375
//! executions and bound 2 finishes. (`e` with a second reader of three lookups did not
//! finish in 13 minutes at bound 3 nor in 5 at bound 2, session 9.)
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom_table`.

use super::directory;
use super::lock::TableSeq;
use super::protocol::ReadAttempt;
use super::table::ARENA_SIZE;
use super::{Dirtiness, Region, RegionKind, RegionTable};
use crate::os::{self, PAGE_SIZE};
use loom::thread;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};

/// Preemptions per execution: every interleaving with up to three forced context
/// switches (each race here needs at most two: a reader preempted between its lookup
/// and its lock, or a writer between two stores, while another thread runs).
/// `LOOM_MAX_PREEMPTIONS` overrides it.
pub(super) const PREEMPTION_BOUND: usize = 3;

/// Branches per execution: the real writer's spin-waits (`SpinLock`, `start_write`
/// draining a reader) yield to loom on every round, and a whole update is a few
/// hundred atomic operations; loom's default of 1,000 was exceeded.
const MAX_BRANCHES: usize = 20_000;

/// Stack of each model thread: a `RegionTable` is built on it (about 40 KiB, mostly its
/// free index), and loom's default is 32 KiB.
const STACK: usize = 1 << 20;

/// A model builder at preemption bound `bound` (unless `LOOM_MAX_PREEMPTIONS` says).
pub(super) fn builder(bound: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(bound);
    }
    b.max_branches = b.max_branches.max(MAX_BRANCHES);
    b
}

/// Runs `f` as one execution's body on a thread with room for a table on its stack.
pub(super) fn check(bound: usize, f: impl Fn() + Send + Sync + 'static) {
    let f = std::sync::Arc::new(f);
    builder(bound).check(move || {
        let f = f.clone();
        spawn(move || (*f)()).join().unwrap()
    });
}

pub(super) fn spawn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("a model thread")
}

// ------------------------------------------------------------ broken twins' switches

/// How the reader's validation (`Region::read_lock_validated`) runs: shipped, or with
/// one of its checks dropped (broken twins of models a and c).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Validation {
    Shipped,
    /// `try_read` alone: no `lock_seq == table_seq` check.
    NoSeqCheck,
    /// The key re-check handed the descriptor's own start (it cannot fail).
    NoKeyCheck,
    /// No `detached` re-check.
    NoDetachedCheck,
}

thread_local! {
    // Per OS thread, which is one test's loom threads: the tests run side by side in
    // one process. Set after an execution's setup, cleared by `Broken::clear`.
    /// The writer leaves the region starting here unlocked (0: none).
    static SKIP_WRITE_LOCK_AT: Cell<usize> = const { Cell::new(0) };
    /// The writer leaves the new region starting here unstamped (0: none).
    static SKIP_STAMP_AT: Cell<usize> = const { Cell::new(0) };
    /// The tree publishes its root with a Relaxed store.
    static RELAXED_ROOT: Cell<bool> = const { Cell::new(false) };
    static VALIDATION: Cell<Validation> = const { Cell::new(Validation::Shipped) };
    /// A retire pushes its region before it gives its read reference up.
    static PUSH_BEFORE_UNLOCK: Cell<bool> = const { Cell::new(false) };
    /// The page models f and g watch: an address, and a loom cell standing for its page
    /// (null: none). Written by a purge whose advice (`madvise` or a batched call) covers
    /// the address.
    static PAGE: Cell<(usize, *const loom::cell::UnsafeCell<u64>)> =
        const { Cell::new((0, core::ptr::null())) };
    /// Batches of unlinked blocks handed to the epoch collector since the last `release`.
    static SEALED: Cell<usize> = const { Cell::new(0) };
}

/// The bugs one execution injects (all off by default).
#[derive(Clone, Copy)]
pub(super) struct Broken {
    pub skip_write_lock_at: usize,
    pub skip_stamp_at: usize,
    pub relaxed_root: bool,
    pub validation: Validation,
    pub push_before_unlock: bool,
}

impl Broken {
    pub(super) const NONE: Broken = Broken {
        skip_write_lock_at: 0,
        skip_stamp_at: 0,
        relaxed_root: false,
        validation: Validation::Shipped,
        push_before_unlock: false,
    };

    /// Arms the bugs for this OS thread (after the execution's setup).
    pub(super) fn arm(self) {
        SKIP_WRITE_LOCK_AT.with(|a| a.set(self.skip_write_lock_at));
        SKIP_STAMP_AT.with(|a| a.set(self.skip_stamp_at));
        RELAXED_ROOT.with(|r| r.set(self.relaxed_root));
        VALIDATION.with(|v| v.set(self.validation));
        PUSH_BEFORE_UNLOCK.with(|p| p.set(self.push_before_unlock));
    }

    /// Disarms every bug (before the execution's final checks and teardown).
    pub(super) fn clear() {
        Broken::NONE.arm();
        PAGE.with(|p| p.set((0, core::ptr::null())));
    }
}

// --------------------------------------------- hooks the shipped code calls (test only)

/// `RangeTree::commit`'s hook: the ordering of the root's publication.
pub(crate) fn root_store_order() -> Ordering {
    match RELAXED_ROOT.with(|r| r.get()) {
        true => Ordering::Relaxed,
        false => Ordering::Release,
    }
}

/// `Writer::start_write`'s hook: true when a broken twin wants `r` left unlocked.
pub(crate) fn skips_write_lock(r: &Region) -> bool {
    let at = SKIP_WRITE_LOCK_AT.with(|a| a.get());
    at != 0 && r.start() == at
}

/// `Writer::new_region`'s hook: true when a broken twin wants the new region starting
/// at `start` left unstamped (readable as soon as it is published).
pub(crate) fn skips_stamp(start: usize) -> bool {
    let at = SKIP_STAMP_AT.with(|a| a.get());
    at != 0 && start == at
}

/// `Blocks::seal`'s hook: a batch of unlinked descriptors and nodes goes to the epoch
/// collector, after whose grace period (which loom does not see) they may be reused.
pub(crate) fn sealed_a_batch() {
    SEALED.with(|s| s.set(s.get() + 1));
}

/// `Region::unlock_and_push_retired`'s hook: true when a broken twin pushes first.
pub(crate) fn pushes_before_unlock() -> bool {
    PUSH_BEFORE_UNLOCK.with(|p| p.get())
}

/// `Region::read_lock_validated`'s hook: the broken twin's validation, or `None` to run
/// the shipped one. Each variant is the shipped code with one check dropped.
pub(crate) fn broken_validation(
    r: &Region,
    key: usize,
    addr: usize,
    seq: &TableSeq,
) -> Option<ReadAttempt> {
    let v = VALIDATION.with(|v| v.get());
    if v == Validation::Shipped {
        return None;
    }
    let locked = match v {
        Validation::NoSeqCheck => r.lock.try_read(),
        _ => r.lock.try_read_unlocked(seq),
    };
    if !locked {
        return Some(ReadAttempt::WriteLocked);
    }
    let key = match v {
        Validation::NoKeyCheck => r.start(),
        _ => key,
    };
    if (v != Validation::NoDetachedCheck && r.is_detached()) || r.start() != key {
        r.lock.read_unlock();
        return Some(ReadAttempt::Moved);
    }
    if !r.contains(addr) {
        r.lock.read_unlock();
        return Some(ReadAttempt::Missed);
    }
    Some(ReadAttempt::Locked)
}

/// The purge's hook, just before each `madvise` of `[start, end)`: writes the watched
/// page (`watch_page`) if the range covers it, as the kernel's zapping would.
pub(crate) fn in_madvise(start: usize, end: usize) {
    let (addr, cell) = PAGE.with(|p| p.get());
    if !cell.is_null() && (start..end).contains(&addr) {
        // SAFETY: `watch_page`'s caller keeps the cell alive until `Broken::clear`.
        let cell = unsafe { &*cell };
        // SAFETY: loom's cell; whether this write is ordered against the page's next
        // owner's is what the model checks.
        cell.with_mut(|p| unsafe { *p += 1 });
    }
}

/// Watches the page at `addr` through `page` (see `in_madvise`) until `Broken::clear`.
///
/// # Safety
/// `page` outlives every purge of this execution (the caller clears before dropping it).
pub(super) unsafe fn watch_page(addr: usize, page: &Page) {
    PAGE.with(|p| p.set((addr, &page.0 as *const _)));
}

/// A page's contents as loom sees them: a cell whose every access loom checks against
/// the others (a write not ordered after another is reported).
pub(super) struct Page(loom::cell::UnsafeCell<u64>);

// SAFETY: shared on purpose: loom reports every pair of unordered accesses, which is
// what the models that use it check.
unsafe impl Sync for Page {}

impl Page {
    pub(super) fn new() -> Self {
        Page(loom::cell::UnsafeCell::new(0))
    }

    /// Writes the page (its owner's new bytes, or a purge zapping it).
    pub(super) fn write(&self) {
        // SAFETY: loom's cell; whether this write is ordered against the others is
        // what the model checks.
        self.0.with_mut(|p| unsafe { *p += 1 });
    }
}

// ------------------------------------------------------------------ tables and reads

/// A fresh table registered under `id` (a fixed id: drawn ones would run out over the
/// executions), leaked for the directory until `release` takes it back.
pub(super) fn new_table(id: u8) -> &'static RegionTable {
    let mut table = Box::new(RegionTable::new());
    table.fixed_id = id;
    Box::leak(table)
}

/// Every region of `t`, in address order (deferred merge-backs folded first).
pub(super) fn regions(t: &RegionTable) -> Vec<(usize, usize, RegionKind)> {
    let mut all = Vec::new();
    t.for_each_region(|start, len, kind, _| all.push((start, len, kind)));
    all
}

/// Gives an execution's table and its reservation back (its threads are done).
pub(super) fn release(table: &'static RegionTable) {
    // No block unlinked in this execution was handed to the collector, so none came
    // back while a model thread could still hold it: the models check the protocol up
    // to reclamation, which they do not model (see the module doc).
    assert_eq!(
        SEALED.with(|s| s.replace(0)),
        0,
        "an execution sealed a batch of unlinked blocks"
    );
    let reserved = table.space().reserved;
    assert_eq!(reserved, ARENA_SIZE, "one reservation");
    let base = regions(table)[0].0 & !(ARENA_SIZE - 1);
    crate::space::set_arena(base, ARENA_SIZE, 0);
    // SAFETY: the reservation is this table's, and nothing of it is in use any more.
    unsafe { os::release(base, ARENA_SIZE) }.expect("munmap");
    // SAFETY: leaked by `new_table`; every thread that used it has ended, and the
    // directory entry that still names it is replaced before the next lookup.
    drop(unsafe { Box::from_raw(table as *const RegionTable as *mut RegionTable) });
}

/// What a reader may demand of a region's dirtiness (a purge changes it under its own
/// read lock, so it is checked once, not for stability).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dirt {
    Any,
    Dirty,
    Clean,
}

/// A whole region a reader may find: its range, its kind and its dirtiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct View(pub usize, pub usize, pub RegionKind, pub Dirt);

/// A region as a reader sees it under its read lock: range, kind, detached.
type Seen = (usize, usize, RegionKind, bool);

fn seen(r: &Region) -> Seen {
    (r.start(), r.len(), r.kind(), r.is_detached())
}

/// An address a reader looks up, the whole regions it may find there, and the one
/// found once every writer is done (`None`: any of them).
#[derive(Clone, Debug)]
pub(super) struct Probe {
    pub addr: usize,
    pub views: Vec<View>,
    pub last: Option<View>,
}

fn admits(view: &View, first: Seen, d: Dirtiness) -> bool {
    let dirt_ok = match view.3 {
        Dirt::Any => true,
        Dirt::Dirty => d.is_dirty(),
        Dirt::Clean => d == Dirtiness::Clean,
    };
    (view.0, view.1, view.2) == (first.0, first.1, first.2) && dirt_ok
}

/// Looks `probe.addr` up through the directory and the table's own `find_and_read_lock`
/// and checks what the validated read lock shows: one of the probe's whole regions,
/// found under its own start, attached, and unchanged across a yield (so writers run
/// meanwhile). The read lock is released on return (`ReadGuard`'s drop, which also
/// releases it when a check panics, so no writer spins on it forever). The messages
/// name what failed, for the broken twins' `should_panic`.
pub(super) fn read(table: &RegionTable, probe: &Probe, name: &str) {
    read_holding(table, probe, name, true)
}

/// `read`; with `hold` false, the reader does not yield while it holds the lock (a
/// writer still runs meanwhile if loom preempts the reader there).
pub(super) fn read_holding(table: &RegionTable, probe: &Probe, name: &str, hold: bool) {
    let found = directory::table_of(probe.addr).expect("the directory finds the arena");
    assert!(core::ptr::eq(found, table), "{name}: another arena");
    let read = table
        .find_and_read_lock(probe.addr)
        .expect("a covered address is found");
    let r = read.region();
    let first = seen(r);
    let d = r.dirtiness();
    assert!(
        probe
            .views
            .iter()
            .any(|v| (v.0, v.1, v.2) == (first.0, first.1, first.2)),
        "{name}: torn region under a validated read lock: {first:x?} (key {:#x})",
        read.start()
    );
    assert!(
        probe.views.iter().any(|v| admits(v, first, d)),
        "{name}: unfinished region under a validated read lock: {first:x?}, {d:?}"
    );
    assert!(
        !first.3,
        "{name}: detached region under a validated read lock: {first:x?}"
    );
    assert_eq!(
        read.start(),
        first.0,
        "{name}: stale key: the lookup's key is not the region's start"
    );
    if hold {
        thread::yield_now();
    }
    assert_eq!(
        seen(r),
        first,
        "{name}: the region changed under a validated read lock"
    );
}

/// Once every writer is done: the probe's address shows its last view (or one of its
/// views), unlocked, on the fast path.
pub(super) fn read_last(table: &RegionTable, probe: &Probe, name: &str) {
    let fast = table.counters.success().get();
    let read = table.find_and_read_lock(probe.addr).expect("covered");
    let r = read.region();
    let first = seen(r);
    let ok = match probe.last {
        Some(last) => admits(&last, first, r.dirtiness()),
        None => probe.views.iter().any(|v| admits(v, first, r.dirtiness())),
    };
    assert!(
        ok && !first.3,
        "{name}: after the writers, {first:x?} at {:#x}",
        probe.addr
    );
    assert_eq!(
        table.counters.success().get(),
        fast + 1,
        "{name}: an unlocked region took the slow path"
    );
}

/// Per-test tallies of the lookup paths, summed over executions from the tables'
/// own counters (success, abort, retry, miss, slow), per arena, and of executions.
pub(super) struct Paths([[AtomicU64; 5]; 2], AtomicU64);

pub(super) const PATH_NAMES: [&str; 5] = ["fast", "abort", "retry", "miss", "slow"];

impl Paths {
    pub(super) const fn new() -> Self {
        Paths(
            [const { [const { AtomicU64::new(0) }; 5] }; 2],
            AtomicU64::new(0),
        )
    }

    pub(super) fn counts(t: &RegionTable) -> [u64; 5] {
        let c = &t.counters;
        [c.success(), c.abort(), c.retry(), c.miss(), c.slow()].map(|k| k.get())
    }

    pub(super) fn add(&self, arena: usize, before: [u64; 5], t: &RegionTable) {
        for (i, now) in Self::counts(t).into_iter().enumerate() {
            self.0[arena][i].fetch_add(now - before[i], Relaxed);
        }
    }

    pub(super) fn execution(&self) {
        let n = self.1.fetch_add(1, Relaxed) + 1;
        // For runs that may not finish (a higher bound): `LOOM_PROGRESS=1` reports.
        if n.is_multiple_of(20_000) && std::env::var_os("LOOM_PROGRESS").is_some() {
            eprintln!("progress: {n} executions");
        }
    }

    pub(super) fn get(&self, arena: usize) -> [u64; 5] {
        self.0[arena].each_ref().map(|c| c.load(Relaxed))
    }

    /// Prints the tallies and asserts every path in `required` was taken in arena
    /// `arena` (so a model cannot pass vacuously).
    pub(super) fn report(&self, model: &str, arenas: &[&str], required: &[&str]) {
        for (arena, name) in arenas.iter().enumerate() {
            let counts = self.get(arena);
            eprintln!(
                "loom {model}, {name}: {} executions; lookups fast {} abort {} retry {} \
                 miss {} slow {}",
                self.1.load(Relaxed),
                counts[0],
                counts[1],
                counts[2],
                counts[3],
                counts[4]
            );
            for path in required {
                let i = PATH_NAMES.iter().position(|p| p == path).expect("a path");
                assert!(counts[i] > 0, "{model}, {name}: never took the {path} path");
            }
        }
    }
}

// ------------------------------------------------------------------------ model e

/// One arena of model e: the table, its object (the first region) and the probes.
struct Arena {
    table: &'static RegionTable,
    object: usize,
    probes: Vec<Probe>,
}

/// Arena 1: a one-page large object O, the rest of the reservation free (F). Its writer
/// grows O by a page in place: `grow` takes F's first page (`take_front`: F's key
/// moves in the tree, `rekey`, then its start and length, two stores). The probe is an
/// address in what stays of F (the rekey: under F's old key a lookup finds it moved).
fn arena_grow(id: u8) -> Arena {
    let table = new_table(id);
    let o = table
        .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .expect("a placement")
        .start;
    let [(o_start, PAGE_SIZE, RegionKind::Large), (f, f_len, RegionKind::Free)] =
        regions(table)[..]
    else {
        panic!("arena 1 is not [object][free]: {:x?}", regions(table));
    };
    assert_eq!((o_start, f), (o, o + PAGE_SIZE));
    let after = View(
        f + PAGE_SIZE,
        f_len - PAGE_SIZE,
        RegionKind::Free,
        Dirt::Clean,
    );
    Arena {
        table,
        object: o,
        probes: vec![Probe {
            addr: o + 3 * PAGE_SIZE,
            views: vec![View(f, f_len, RegionKind::Free, Dirt::Clean), after],
            last: Some(after),
        }],
    }
}

/// Arena 2: a two-page large object X shrunk in place to one page (its tail T, one dirty
/// free page, stays apart from the clean rest of the reservation), then freed: X is
/// retired, waiting on the arena's retired stack. Its writer folds it (`collect_retired`:
/// `drain_retired`, `coalesce`, `absorb(X, T)`, which detaches T and lengthens X). The
/// probes are an address in T (detached: under an old tree a lookup finds it gone)
/// and one in X (turned into free space and lengthened).
pub(super) fn arena_fold(id: u8) -> (&'static RegionTable, usize, [Probe; 2]) {
    let table = new_table(id);
    let x = table
        .allocate(2 * PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .expect("a placement")
        .start;
    assert!(table.shrink_in_place(x, PAGE_SIZE));
    table.retire(x).expect("a live object");
    let [(_, PAGE_SIZE, RegionKind::Large), (t, PAGE_SIZE, RegionKind::Free), (_, _, RegionKind::Free)] =
        regions(table)[..]
    else {
        panic!(
            "arena 2 is not [retired][dirty][clean]: {:x?}",
            regions(table)
        );
    };
    let merged = View(x, 2 * PAGE_SIZE, RegionKind::Free, Dirt::Dirty);
    (
        table,
        x,
        [
            Probe {
                addr: t + PAGE_SIZE / 2,
                views: vec![View(t, PAGE_SIZE, RegionKind::Free, Dirt::Dirty), merged],
                last: Some(merged),
            },
            Probe {
                addr: x + PAGE_SIZE / 2,
                views: vec![View(x, PAGE_SIZE, RegionKind::Large, Dirt::Clean), merged],
                last: Some(merged),
            },
        ],
    )
}

/// The bug a model e twin injects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EBug {
    None,
    /// Arena 1's writer leaves F, the neighbour its object grows into, unlocked.
    GrowNeighbour,
    /// Arena 2's writer leaves X, the object it turns into free space and merges T
    /// into, unlocked.
    FoldObject,
    /// The trees publish their new roots without Release.
    RelaxedRoot,
}

/// A reader's lookups: (arena, probe) pairs, in order.
type Lookups = &'static [(usize, usize)];

/// One execution of model e: both arenas' writers run while the execution's own thread
/// reads `readers[0]`'s lookups and one more thread per further entry reads its own.
fn e_model(ids: (u8, u8), bug: EBug, paths: &'static Paths, readers: &'static [Lookups]) {
    // With two readers, neither yields while it holds a lock (see `E2_BOUND`).
    let hold = readers.len() == 1;
    let one = arena_grow(ids.0);
    let (t2, x, probes2) = arena_fold(ids.1);
    let two = Arena {
        table: t2,
        object: x,
        probes: probes2.to_vec(),
    };
    Broken {
        skip_write_lock_at: match bug {
            EBug::GrowNeighbour => one.probes[0].views[0].0,
            EBug::FoldObject => two.object,
            _ => 0,
        },
        relaxed_root: bug == EBug::RelaxedRoot,
        ..Broken::NONE
    }
    .arm();
    let start = [Paths::counts(one.table), Paths::counts(two.table)];
    let (t1, o) = (one.table, one.object);
    let grow = spawn(move || assert!(t1.grow_in_place(o, 2 * PAGE_SIZE)));
    let fold = spawn(move || t2.collect_retired());
    let tables = [one.table, two.table];
    let probes = [one.probes.clone(), two.probes.clone()];
    let lookups = move |which: Lookups| {
        for &(arena, probe) in which {
            read_holding(tables[arena], &probes[arena][probe], NAMES[arena], hold);
        }
    };
    let others: Vec<_> = readers[1..]
        .iter()
        .map(|&which| {
            let lookups = lookups.clone();
            spawn(move || lookups(which))
        })
        .collect();
    lookups(readers[0]);
    grow.join().unwrap();
    fold.join().unwrap();
    for other in others {
        other.join().unwrap();
    }
    Broken::clear();
    paths.add(0, start[0], one.table);
    paths.add(1, start[1], two.table);
    paths.execution();
    // Both updates have ended: each arena shows its writer's result, unlocked.
    for (arena, name) in [(&one, NAMES[0]), (&two, NAMES[1])] {
        for probe in &arena.probes {
            read_last(arena.table, probe, name);
        }
    }
    release(one.table);
    release(two.table);
}

const NAMES: [&str; 2] = ["arena 1", "arena 2"];
const E_ARENAS: [&str; 2] = ["arena 1 (grow)", "arena 2 (fold)"];
/// Model e's reader: arena 1's probe, then both of arena 2's.
const E_READER: &[Lookups] = &[&[(0, 0), (1, 0), (1, 1)]];

#[test]
fn loom_table_two_arenas_writers_beside_a_reader_of_both() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        e_model((1, 2), EBug::None, &PATHS, E_READER)
    });
    PATHS.report(
        "e (real table)",
        &E_ARENAS,
        &["fast", "abort", "retry", "slow"],
    );
}

/// Model e2's preemption bound (see the module doc): two forced switches, so a writer
/// can drain two readers it preempted inside their validation, or one reader preempted
/// twice; three are `e`'s, with one reader.
const E2_BOUND: usize = 2;
/// Model e2's readers: one goes arena 1 then arena 2 (T), the other arena 2 (X) then
/// arena 1, so each arena has two readers, meeting its writer in either order.
const E2_READERS: &[Lookups] = &[&[(0, 0), (1, 0)], &[(1, 1), (0, 0)]];

#[test]
fn loom_table_two_arenas_writers_beside_two_readers_in_opposite_orders() {
    static PATHS: Paths = Paths::new();
    check(E2_BOUND, || {
        e_model((9, 10), EBug::None, &PATHS, E2_READERS)
    });
    PATHS.report(
        "e2 (real table, two readers)",
        &E_ARENAS,
        &["fast", "abort", "retry", "slow"],
    );
}

/// Model e2 with arena 2's writer leaving X unlocked (as `..._fold_without_...` below):
/// with two readers, loom must still find it.
#[test]
#[should_panic(expected = "arena 2: ")]
fn loom_table_broken_e2_fold_without_the_objects_write_lock_is_caught() {
    static PATHS: Paths = Paths::new();
    check(E2_BOUND, || {
        e_model((11, 12), EBug::FoldObject, &PATHS, E2_READERS)
    });
}

/// Model e with arena 1's writer leaving F unlocked while `take_front` moves its start
/// and then its length: a reader that finds F under its new key locks it between the
/// two stores and sees a region that never existed. Loom must find it.
#[test]
#[should_panic(expected = "arena 1: ")]
fn loom_table_broken_grow_without_the_neighbours_write_lock_is_caught() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        e_model((3, 4), EBug::GrowNeighbour, &PATHS, E_READER)
    });
}

/// Model e with arena 2's writer leaving X unlocked while `drain_retired` makes it free
/// space and `absorb` lengthens it over T: a reader on X's page locks it between the
/// two and sees a free region of X's old length, which never existed. Loom must find it.
#[test]
#[should_panic(expected = "arena 2: ")]
fn loom_table_broken_fold_without_the_objects_write_lock_is_caught() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        e_model((5, 6), EBug::FoldObject, &PATHS, E_READER)
    });
}

/// Model e with both trees publishing their new roots with a Relaxed store: a reader
/// that loads a new root may follow it into nodes whose creation it is not ordered
/// after. Loom's causality check must report it (the node slots are loom atomics, whose
/// creation counts as a write).
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_table_broken_tree_publishing_its_root_without_release_is_caught() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        e_model((7, 8), EBug::RelaxedRoot, &PATHS, E_READER)
    });
}
