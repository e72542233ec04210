//! `loom` model e: two arenas' writers beside a reader that looks up addresses in both,
//! run on the shipped `RegionTable` (DESIGN.md §2). Unlike `loom_tests`, whose models
//! replace the table around the per-region protocol with a miniature, this runs the
//! real one: its copy-on-write tree (`tree.rs`: root publication, leaf slots), its
//! writer spin lock and sequence, the writer's updates (`table/writer.rs`: `grow`,
//! `drain_retired`, `coalesce`, `absorb`, `detach`), the bulk unlock at the end of
//! `write`, the lock-free lookup and its slow path, all on `crate::sync` atomics (loom's
//! here), with each arena found from an address through `directory` and `space`'s arena
//! byte. What is not the shipped code: `meta` (model builds serve metadata from a
//! stand-in, `meta/model.rs`) and the epoch collector's thread registration, which
//! loom's threads share (they run on one OS thread): one participant pinned while any
//! of them is, which can only delay reclamation.
//!
//! Each execution builds two tables under fixed directory ids with a real reservation
//! each (`MAP_NORESERVE` address space, never touched), and releases both at its end.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom_table`.

use super::directory;
use super::table::ARENA_SIZE;
use super::{Region, RegionKind, RegionTable};
use crate::os::{self, PAGE_SIZE};
use loom::thread;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};

/// Preemptions per execution, as `loom_tests`' models: every interleaving with up to three
/// forced context switches (each race here needs at most two: a reader preempted between
/// its lookup and its lock, or a writer between two stores, while the other writer
/// runs). About 3,000 executions, 2 s. `LOOM_MAX_PREEMPTIONS` overrides it.
const PREEMPTION_BOUND: usize = 3;

/// Branches per execution: the real writer's spin-waits (`SpinLock`, `start_write`
/// draining a reader) yield to loom on every round, and a whole update is a few
/// hundred atomic operations; loom's default of 1,000 was exceeded.
const MAX_BRANCHES: usize = 20_000;

/// Stack of each model thread: a `RegionTable` is built on it (about 40 KiB, mostly its
/// free index), and loom's default is 32 KiB.
const STACK: usize = 1 << 20;

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(PREEMPTION_BOUND);
    }
    b.max_branches = b.max_branches.max(MAX_BRANCHES);
    b
}

fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("a model thread")
}

thread_local! {
    /// The broken twin's injected bug: the writer leaves the region starting here
    /// unlocked (0: none). Per OS thread, which is one test's loom threads: the tests
    /// run side by side in one process.
    static SKIP_WRITE_LOCK_AT: Cell<usize> = const { Cell::new(0) };
    /// The other twin's: the tree publishes its root with a Relaxed store.
    static RELAXED_ROOT: Cell<bool> = const { Cell::new(false) };
}

/// `RangeTree::commit`'s test hook: the ordering of the root's publication (Relaxed in
/// the broken twin).
pub(crate) fn root_store_order() -> Ordering {
    match RELAXED_ROOT.with(|r| r.get()) {
        true => Ordering::Relaxed,
        false => Ordering::Release,
    }
}

/// `Writer::start_write`'s test hook: true when the broken twin wants `r` left unlocked.
pub(crate) fn skips_write_lock(r: &Region) -> bool {
    let at = SKIP_WRITE_LOCK_AT.with(|a| a.get());
    at != 0 && r.start() == at
}

/// A region as a reader sees it under its read lock.
type Seen = (usize, usize, RegionKind, bool);

fn seen(r: &Region) -> Seen {
    (r.start(), r.len(), r.kind(), r.is_detached())
}

/// An address the reader looks up and the regions it may find there, whole: before or
/// after its arena's update.
struct Probe {
    addr: usize,
    before: Seen,
    after: Seen,
}

/// One arena of the model: the table, its object (the first region) and the reader's
/// probes.
struct Arena {
    table: &'static RegionTable,
    object: usize,
    probes: Vec<Probe>,
}

/// A fresh table registered under `id` (a fixed id: drawn ones would run out over the
/// executions), leaked for the directory until `release` takes it back.
fn new_table(id: u8) -> &'static RegionTable {
    let mut table = Box::new(RegionTable::new());
    table.fixed_id = id;
    Box::leak(table)
}

/// Every region of `t`, in address order.
fn regions(t: &RegionTable) -> Vec<(usize, usize, RegionKind)> {
    let mut all = Vec::new();
    t.for_each_region(|start, len, kind, _| all.push((start, len, kind)));
    all
}

/// Arena 1: a one-page large object O, the rest of the reservation free (F). Its writer
/// grows O by a page in place: `grow` takes F's first page (`take_front`: F's key
/// moves in the tree, `rekey`, then its start and length, two stores). The reader looks
/// up an address in what stays of F (the rekey: under F's old key a lookup finds it
/// moved).
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
    Arena {
        table,
        object: o,
        probes: vec![Probe {
            addr: o + 3 * PAGE_SIZE,
            before: (f, f_len, RegionKind::Free, false),
            after: (f + PAGE_SIZE, f_len - PAGE_SIZE, RegionKind::Free, false),
        }],
    }
}

/// Arena 2: a two-page large object X shrunk in place to one page (its tail T, one dirty
/// free page, stays apart from the clean rest of the reservation), then freed: X is
/// retired, waiting on the arena's retired stack. Its writer folds it (`collect_retired`:
/// `drain_retired`, `coalesce`, `absorb(X, T)`, which detaches T and lengthens X). The
/// reader looks up an address in T (detached: under an old tree a lookup finds it gone)
/// and one in X (turned into free space and lengthened).
fn arena_fold(id: u8) -> Arena {
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
    Arena {
        table,
        object: x,
        probes: vec![
            Probe {
                addr: t + PAGE_SIZE / 2,
                before: (t, PAGE_SIZE, RegionKind::Free, false),
                after: (x, 2 * PAGE_SIZE, RegionKind::Free, false),
            },
            Probe {
                addr: x + PAGE_SIZE / 2,
                before: (x, PAGE_SIZE, RegionKind::Large, false),
                after: (x, 2 * PAGE_SIZE, RegionKind::Free, false),
            },
        ],
    }
}

/// Looks `probe.addr` up through the directory and the table's own `find_and_read_lock`
/// and checks what the validated read lock shows: one of the two whole regions, found
/// under its own start, attached, and unchanged across a yield (so the writers run
/// meanwhile). The read lock is released before the next lookup (`ReadGuard`'s drop,
/// which also releases it when a check panics, so no writer spins on it forever).
fn read(arena: &Arena, probe: &Probe, name: &str) {
    let table = directory::table_of(probe.addr).expect("the directory finds the arena");
    assert!(core::ptr::eq(table, arena.table), "{name}: another arena");
    let read = table
        .find_and_read_lock(probe.addr)
        .expect("a covered address is found");
    let r = read.region();
    let first = seen(r);
    assert!(
        (first == probe.before || first == probe.after) && read.start() == first.0,
        "{name}: torn, detached or stale region under a validated read lock: {first:x?} \
         (key {:#x})",
        read.start()
    );
    thread::yield_now();
    assert_eq!(
        seen(r),
        first,
        "{name}: the region changed under a validated read lock"
    );
}

/// Gives an execution's table and its reservation back (its threads are done).
fn release(table: &'static RegionTable) {
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

/// Per-test tallies of the lookup paths, summed over executions from the tables'
/// own counters (success, abort, retry, miss, slow), per arena.
struct Paths([[AtomicU64; 5]; 2], AtomicU64);

impl Paths {
    const fn new() -> Self {
        Paths(
            [const { [const { AtomicU64::new(0) }; 5] }; 2],
            AtomicU64::new(0),
        )
    }

    fn counts(t: &RegionTable) -> [u64; 5] {
        let c = &t.counters;
        [&c.success, &c.abort, &c.retry, &c.miss, &c.slow].map(|k| k.get())
    }

    fn add(&self, arena: usize, before: [u64; 5], t: &RegionTable) {
        for (i, now) in Self::counts(t).into_iter().enumerate() {
            self.0[arena][i].fetch_add(now - before[i], Relaxed);
        }
    }

    fn get(&self, arena: usize) -> [u64; 5] {
        self.0[arena].each_ref().map(|c| c.load(Relaxed))
    }
}

/// The bug a broken twin injects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Broken {
    None,
    /// Arena 1's writer leaves F, the neighbour its object grows into, unlocked.
    GrowNeighbour,
    /// Arena 2's writer leaves X, the object it turns into free space and merges T
    /// into, unlocked.
    FoldObject,
    /// The trees publish their new roots without Release.
    RelaxedRoot,
}

/// One execution of model e.
fn e_model(ids: (u8, u8), broken: Broken, paths: &'static Paths) {
    let one = arena_grow(ids.0);
    let two = arena_fold(ids.1);
    let skip = match broken {
        Broken::None => 0,
        Broken::GrowNeighbour => one.probes[0].before.0,
        Broken::FoldObject => two.object,
        Broken::RelaxedRoot => 0,
    };
    SKIP_WRITE_LOCK_AT.with(|a| a.set(skip));
    RELAXED_ROOT.with(|r| r.set(broken == Broken::RelaxedRoot));
    let start = [Paths::counts(one.table), Paths::counts(two.table)];
    let (t1, o, t2) = (one.table, one.object, two.table);
    let grow = spawn(move || assert!(t1.grow_in_place(o, 2 * PAGE_SIZE)));
    let fold = spawn(move || t2.collect_retired());
    for (arena, name) in [(&one, "arena 1"), (&two, "arena 2")] {
        for probe in &arena.probes {
            read(arena, probe, name);
        }
    }
    grow.join().unwrap();
    fold.join().unwrap();
    paths.add(0, start[0], one.table);
    paths.add(1, start[1], two.table);
    paths.1.fetch_add(1, Relaxed);
    // Both updates have ended: each arena shows its writer's result, unlocked.
    for arena in [&one, &two] {
        for probe in &arena.probes {
            let read = arena.table.find_and_read_lock(probe.addr).expect("covered");
            assert_eq!(seen(read.region()), probe.after);
        }
    }
    SKIP_WRITE_LOCK_AT.with(|a| a.set(0));
    RELAXED_ROOT.with(|r| r.set(false));
    release(one.table);
    release(two.table);
}

fn report(model: &str, paths: &Paths) {
    for (arena, name) in ["arena 1 (grow)", "arena 2 (fold)"].iter().enumerate() {
        let [success, abort, retry, miss, slow] = paths.get(arena);
        eprintln!(
            "loom {model}, {name}: {} executions; lookups fast {success} abort {abort} \
             retry {retry} miss {miss} slow {slow}",
            paths.1.load(Relaxed)
        );
    }
}

#[test]
fn loom_table_two_arenas_writers_beside_a_reader_of_both() {
    static PATHS: Paths = Paths::new();
    builder().check(|| {
        spawn(|| e_model((1, 2), Broken::None, &PATHS))
            .join()
            .unwrap()
    });
    report("e (real table)", &PATHS);
    for arena in 0..2 {
        let [success, abort, retry, _, slow] = PATHS.get(arena);
        for (path, count) in [("fast", success), ("abort", abort), ("retry", retry)] {
            assert!(count > 0, "arena {}: never took the {path} path", arena + 1);
        }
        assert!(slow > 0, "arena {}: never took the slow path", arena + 1);
    }
}

/// Model e with arena 1's writer leaving F unlocked while `take_front` moves its start
/// and then its length: a reader that finds F under its new key locks it between the
/// two stores and sees a region that never existed. Loom must find it.
#[test]
#[should_panic(expected = "arena 1: ")]
fn loom_table_broken_grow_without_the_neighbours_write_lock_is_caught() {
    static PATHS: Paths = Paths::new();
    builder().check(|| {
        spawn(|| e_model((3, 4), Broken::GrowNeighbour, &PATHS))
            .join()
            .unwrap()
    });
}

/// Model e with arena 2's writer leaving X unlocked while `drain_retired` makes it free
/// space and `absorb` lengthens it over T: a reader on X's page locks it between the
/// two and sees a free region of X's old length, which never existed. Loom must find it.
#[test]
#[should_panic(expected = "arena 2: ")]
fn loom_table_broken_fold_without_the_objects_write_lock_is_caught() {
    static PATHS: Paths = Paths::new();
    builder().check(|| {
        spawn(|| e_model((5, 6), Broken::FoldObject, &PATHS))
            .join()
            .unwrap()
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
    builder().check(|| {
        spawn(|| e_model((7, 8), Broken::RelaxedRoot, &PATHS))
            .join()
            .unwrap()
    });
}
