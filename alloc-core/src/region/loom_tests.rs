//! `loom` models a-d of the region table's read/write protocol (DESIGN.md §2), run on
//! the shipped `RegionTable` with `loom_table`'s harness: the real lookup
//! (`find_and_read_lock`, its validation `Region::read_lock_validated` and its slow
//! path), the real writer's updates (`grow`, `drain_retired`/`coalesce`/`absorb`,
//! `carve`, `shrink`) and the bulk unlock that ends each `write`. (Until session 9 these
//! models ran the per-region protocol inside a miniature table: a loom `Mutex` and
//! hand-built tree versions.) Each model's test explores it with one reader at
//! preemption bound 3, then with two readers at bound 1 (see `Readers`), counts which
//! lookup paths its executions took from the table's own counters and asserts that
//! every interesting one was reached, so it cannot pass vacuously; each `broken_*` twin
//! drops one step of the protocol (`loom_table::Broken`) and must be caught.
//!
//! - a: a writer grows an object twice into its free neighbour F (`take_front`'s rekey,
//!   then F's start and length, two stores, under `start_write`); readers in F.
//! - b: a writer folds a retired object X with its free neighbour T in one update
//!   (`absorb(X, T)`: T detached, X lengthened, one `end_write_all`); a reader in each.
//! - c: then the writer places a new object over X's whole range (`carve` at X's start:
//!   the object takes X's key, X is detached): readers that found T or X in an old tree
//!   must see them detached and retry, never act on them. This is reuse of a *range*.
//!   Reuse of a *descriptor* while a reader may hold it (what the miniature modelled)
//!   cannot happen in the shipped table, and is not modelled: a reader holds a
//!   descriptor either pinned (from its tree load to the end of its validation, and the
//!   slow path under the writer mutex) or read-locked (`ReadGuard`, after the pin
//!   ends). A descriptor leaves the tree only through `Writer::detach`/`discard`, which
//!   write-lock it first (`start_write` waits its read-lockers out) and then hand it to
//!   `Blocks::retire`; retired blocks come back only through a sealed batch's epoch
//!   grace period (`Blocks::seal`, crossbeam's collector, `take_expired`), which every
//!   pinned reader holds back. Blocks freed at once (`free_unpublished`) were never in
//!   the tree. Descriptors that change their meaning while attached (a retired object
//!   turned into free space by `drain_retired`, or the source of a `relocate`; a free
//!   region rekeyed by `take_front`; a cached object taken back) are models b and a,
//!   and the retire models. Reclamation itself is not in the loom build (crossbeam's
//!   atomics are std's): `loom_table::release` asserts that no execution sealed a batch,
//!   so no block unlinked in an execution is reused within it.
//! - d: a writer shrinks an object in place; its tail is a new region, stamped
//!   write-locked before it enters the tree (`stamp_new`), finished (its dirty stamp) by
//!   the time a reader can lock it. Its twin leaves the tail unstamped: a reader that
//!   looks up after the tail's insert, before its dirty stamp, must catch it. (Until
//!   session 10 loom never ran a lookup in that window: the writer's own loads of the
//!   root hid the readers' from loom's race detection; see `tree::Side`.)
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom`.

use super::loom_table::{
    arena_fold, check, new_table, read, read_last, regions, release, spawn, Broken, Dirt, Paths,
    Probe, Validation, View, PREEMPTION_BOUND,
};
use super::{RegionKind, RegionTable};
use crate::os::PAGE_SIZE;

const P: usize = PAGE_SIZE;

/// One execution: the writer runs `write` while readers look up their probes: this
/// thread `readers[0]`'s, one more thread per further entry its own; then every probe
/// must show its last view.
fn run(
    name: &'static str,
    table: &'static RegionTable,
    readers: Vec<Vec<Probe>>,
    broken: Broken,
    paths: &'static Paths,
    write: impl FnOnce() + Send + 'static,
) {
    broken.arm();
    let start = Paths::counts(table);
    let writer = spawn(write);
    let others: Vec<_> = readers[1..]
        .iter()
        .cloned()
        .map(|probes| {
            spawn(move || {
                for probe in &probes {
                    read(table, probe, name)
                }
            })
        })
        .collect();
    for probe in &readers[0] {
        read(table, probe, name);
    }
    writer.join().unwrap();
    for other in others {
        other.join().unwrap();
    }
    Broken::clear();
    paths.add(0, start, table);
    paths.execution();
    for probe in readers.iter().flatten() {
        read_last(table, probe, name);
    }
    release(table);
}

/// How many readers a model runs, and at which preemption bound: one reader at bound 3
/// (every race here needs at most two forced switches), or two at bound 1 (a writer
/// draining two readers; at bound 2, model a with two readers did not finish in
/// 150 s, at bound 3 in 300 s: every spin of a reader on the writer mutex, or of the
/// writer on a reader, is a yield, after which loom tries each other thread).
#[derive(Clone, Copy)]
enum Readers {
    One,
    Two,
}

impl Readers {
    fn bound(self) -> usize {
        match self {
            Readers::One => PREEMPTION_BOUND,
            Readers::Two => TWO_READERS_BOUND,
        }
    }

    /// The readers' lookups: `probes` in order by one reader, or one each by two.
    fn split(self, probes: Vec<Probe>) -> Vec<Vec<Probe>> {
        match self {
            Readers::One => vec![probes],
            Readers::Two => probes.into_iter().map(|p| vec![p]).collect(),
        }
    }
}

/// See `Readers`.
const TWO_READERS_BOUND: usize = 1;

/// A model's test: its executions with one reader, then with two (see `Readers`), each
/// tallied apart, every path in `required` taken with one reader.
fn one_then_two(
    model: &str,
    required: &[&str],
    run: impl Fn(Readers, &'static Paths) + Copy + Send + Sync + 'static,
    paths: &'static [Paths; 2],
) {
    check(Readers::One.bound(), move || run(Readers::One, &paths[0]));
    paths[0].report(&format!("{model}, one reader"), &["the arena"], required);
    check(Readers::Two.bound(), move || run(Readers::Two, &paths[1]));
    paths[1].report(&format!("{model}, two readers"), &["the arena"], &["fast"]);
}

// ------------------------------------------------- a. reader vs a region moved twice

/// `[O: one page][F: the rest]`; the writer grows O to two pages, then three, in two
/// updates, each taking F's first page: F moves from `f` to `f + P` to `f + 2P`. Both
/// readers look up `f + 2.5P`, covered by all three.
fn a_model(id: u8, readers: Readers, validation: Validation, paths: &'static Paths) {
    let table = new_table(id);
    let o = table
        .allocate(P, P, RegionKind::Large)
        .expect("a placement")
        .start;
    let [(_, P, RegionKind::Large), (f, len, RegionKind::Free)] = regions(table)[..] else {
        panic!("not [object][free]: {:x?}", regions(table));
    };
    let views: Vec<View> = (0..3)
        .map(|i| View(f + i * P, len - i * P, RegionKind::Free, Dirt::Clean))
        .collect();
    let probe = Probe {
        addr: f + 2 * P + P / 2,
        last: Some(views[2]),
        views,
    };
    let broken = Broken {
        validation,
        ..Broken::NONE
    };
    let probes = match readers {
        Readers::One => vec![probe],
        Readers::Two => vec![probe.clone(), probe],
    };
    run(
        "a",
        table,
        readers.split(probes),
        broken,
        paths,
        move || {
            assert!(table.grow_in_place(o, 2 * P));
            assert!(table.grow_in_place(o, 3 * P));
        },
    );
}

#[test]
fn loom_reader_vs_single_region_writer() {
    static PATHS: [Paths; 2] = [Paths::new(), Paths::new()];
    one_then_two(
        "a (reader vs a region moved twice)",
        &["fast", "abort", "retry", "slow"],
        |readers, paths| a_model(13, readers, Validation::Shipped, paths),
        &PATHS,
    );
}

/// Model a without the `lock_seq == table_seq` check (`try_read` alone): a reader slips
/// in while the update has F write-locked and sees F's start and length change under
/// its validated read lock (or a half-moved range). Loom must find it, which shows the
/// check is what model a relies on.
#[test]
#[should_panic(expected = "a: the region changed under a validated read lock")]
fn loom_broken_reader_without_lock_seq_check_sees_torn_range() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        a_model(14, Readers::One, Validation::NoSeqCheck, &PATHS)
    });
}

/// Model a with the validation handed the descriptor's own start as the key, so the key
/// re-check cannot fail: a reader that read the tree before a rekey and locks F after
/// the update ends holds a region that still covers its address, attached, under the
/// old key, and would work on the wrong start. Loom must find it.
#[test]
#[should_panic(expected = "a: stale key")]
fn loom_broken_reader_without_key_recheck_keeps_a_stale_key() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        a_model(15, Readers::One, Validation::NoKeyCheck, &PATHS)
    });
}

// --------------------------------------- b. readers vs a multi-region update, one unlock

/// `loom_table::arena_fold`'s arena (`[X: retired][T: dirty][clean]`); the writer folds
/// X (`collect_retired`: `drain_retired` makes X free space, `absorb(X, T)` detaches T
/// and lengthens X, one `end_write_all` unlocks both). One reader in T, one in X.
fn b_model(id: u8, readers: Readers, broken_x: bool, paths: &'static Paths) {
    let (table, x, probes) = arena_fold(id);
    let broken = Broken {
        skip_write_lock_at: if broken_x { x } else { 0 },
        ..Broken::NONE
    };
    run(
        "b",
        table,
        readers.split(Vec::from(probes)),
        broken,
        paths,
        move || table.collect_retired(),
    );
}

#[test]
fn loom_reader_vs_multi_region_write_and_bulk_unlock() {
    static PATHS: [Paths; 2] = [Paths::new(), Paths::new()];
    one_then_two(
        "b (readers vs a multi-region update and its bulk unlock)",
        &["fast", "abort", "retry", "slow"],
        |readers, paths| b_model(16, readers, false, paths),
        &PATHS,
    );
}

/// Model b with X left unlocked through the update: the reader in X sees it turned
/// into free space before `absorb` lengthens it. Loom must find it.
#[test]
#[should_panic(expected = "b: ")]
fn loom_broken_multi_region_write_without_the_objects_lock_is_caught() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || b_model(17, Readers::One, true, &PATHS));
}

// ------------------------------------------ c. readers vs detach and reuse of a range

/// Model b's fold, then a second update places a two-page object over X's whole range
/// (`allocate`: dirty space first; `carve` at X's start hands X's key to the new
/// descriptor and detaches X). Both readers' addresses end in the new object; a reader
/// that found T (detached by the first update) or X (by the second) in an old tree and
/// locks it later must see it detached and look again.
fn c_model(id: u8, readers: Readers, validation: Validation, paths: &'static Paths) {
    let (table, x, [mut in_t, mut in_x]) = arena_fold(id);
    let object = View(x, 2 * P, RegionKind::Large, Dirt::Clean);
    for probe in [&mut in_t, &mut in_x] {
        probe.views.push(object);
        probe.last = Some(object);
    }
    let broken = Broken {
        validation,
        ..Broken::NONE
    };
    let probes = vec![in_t, in_x];
    run(
        "c",
        table,
        readers.split(probes),
        broken,
        paths,
        move || {
            table.collect_retired();
            let placed = table
                .allocate(2 * P, P, RegionKind::Large)
                .expect("a placement");
            assert_eq!(placed.start, x, "the dirty space is reused");
        },
    );
}

#[test]
fn loom_reader_vs_detach_and_reuse() {
    static PATHS: [Paths; 2] = [Paths::new(), Paths::new()];
    one_then_two(
        "c (readers vs detach and reuse of a range)",
        &["fast", "abort", "retry", "slow"],
        |readers, paths| c_model(18, readers, Validation::Shipped, paths),
        &PATHS,
    );
}

/// Model c without the `detached` re-check: a reader that found T (or X) in an old tree
/// locks the descriptor after the update that detached it, whose range still covers
/// the address and whose start is still the key, and acts on it while the range is
/// another region's. Loom must find it.
#[test]
#[should_panic(expected = "c: detached")]
fn loom_broken_reader_without_detached_recheck_is_caught() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        c_model(19, Readers::One, Validation::NoDetachedCheck, &PATHS)
    });
}

// --------------------------------------------- d. readers vs a region created by shrink

/// The bug a model d twin injects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DBug {
    None,
    /// The writer leaves O unlocked while it shrinks it.
    UnlockedObject,
    /// The writer leaves the new tail unstamped (`stamp_new` skipped).
    UnstampedTail,
}

/// `[O: three pages][clean]`; the writer shrinks O to one page (`shrink`: the tail T,
/// two pages, is a new descriptor stamped write-locked, inserted, then given its dirty
/// stamp, then coalesced). Both readers look up `O + 2.5P`: they must see O whole
/// (before) or T finished (dirty), never T before its last store.
fn d_model(id: u8, readers: Readers, bug: DBug, paths: &'static Paths) {
    let table = new_table(id);
    let o = table
        .allocate(3 * P, P, RegionKind::Large)
        .expect("a placement")
        .start;
    let tail = View(o + P, 2 * P, RegionKind::Free, Dirt::Dirty);
    let probe = Probe {
        addr: o + 2 * P + P / 2,
        views: vec![View(o, 3 * P, RegionKind::Large, Dirt::Clean), tail],
        last: Some(tail),
    };
    let broken = Broken {
        skip_write_lock_at: if bug == DBug::UnlockedObject { o } else { 0 },
        skip_stamp_at: if bug == DBug::UnstampedTail { o + P } else { 0 },
        ..Broken::NONE
    };
    let probes = match readers {
        Readers::One => vec![probe],
        Readers::Two => vec![probe.clone(), probe],
    };
    run(
        "d",
        table,
        readers.split(probes),
        broken,
        paths,
        move || assert!(table.shrink_in_place(o, P)),
    );
}

#[test]
fn loom_reader_vs_new_region() {
    static PATHS: [Paths; 2] = [Paths::new(), Paths::new()];
    one_then_two(
        "d (readers vs a region created by shrink)",
        &["fast", "abort", "miss", "slow"],
        |readers, paths| d_model(20, readers, DBug::None, paths),
        &PATHS,
    );
}

/// Model d with the object left unlocked while `shrink` shortens it: a reader that
/// holds O sees it shrink under its validated read lock. Loom must find it.
#[test]
#[should_panic(expected = "d: ")]
fn loom_broken_shrink_without_the_objects_write_lock_is_caught() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        d_model(21, Readers::One, DBug::UnlockedObject, &PATHS)
    });
}

/// Model d with the tail left unstamped (`new_region` without `stamp_new`): a reader
/// that finds the tail once it is in the tree locks it before `shrink` gives it its
/// dirty stamp and sees free space that is not dirty, which never existed. Loom must
/// find it. It did not while the writer's tree loads were loom scheduling points (57
/// executions at bound 3, none with a lock-free lookup after the tail's insert: loom
/// compares a store with the last access to the word only, and the writer had just
/// loaded the root itself); with them `unsync_load`s (`tree::Side`) it is caught.
#[test]
#[should_panic(expected = "d: unfinished region")]
fn loom_broken_shrink_without_stamping_the_new_tail_is_caught() {
    static PATHS: Paths = Paths::new();
    check(PREEMPTION_BOUND, || {
        d_model(30, Readers::One, DBug::UnstampedTail, &PATHS)
    });
}
