//! `loom` models f and g: a purge (`RegionTable::purge`: its pick under the writer mutex
//! with `split_for_purge` and the `Purging` claim, its advice under the pieces' read
//! locks alone, then the merge-back, `try_write` or the deferred slots of
//! `region::deferred`) races a writer that grows an object into a piece being purged,
//! and a reader that looks a piece up; all on the shipped `RegionTable`, with
//! `loom_table`'s harness. Model f has one piece, cut off a dirty region; model g has
//! two, advised by one batched `os::purge_many` call (`process_madvise`).
//!
//! Model f's arena: `[O: one page][T: three dirty pages][clean]` (O was a four-page
//! object shrunk in place). The purge's budget is two pages, so its pick cuts T into a
//! piece off its top, `[O+2P, O+4P)`, claimed and advised, and a rest `[O+P, O+2P)` (T's
//! own descriptor), left dirty. The writer grows O by two pages: `grow` takes the free
//! region after O whole (the rest) and the first page of the one after that (the
//! piece), write-locking both first, which waits out the purge's read lock. The reader
//! looks up `O+3.5P`, in the piece.
//!
//! Model g's arena: `[O: one page][T1: three dirty pages][Y: one page][T2: one dirty
//! page][clean]` (O and Y shrunk in place). The purge's budget is four pages: it claims
//! T1 and T2 whole (no cut), two pieces, and advises both with one `purge_many` call,
//! holding both read locks until the call returns. The writer grows O by one page: the
//! first page of T1, which waits out T1's read lock. The reader looks up `T2+P/2`, in
//! the other piece, which the merge-back joins to the clean space after it.
//!
//! In both, the page the grow takes (`O+2P` in f, `O+P` in g) is watched as a loom cell
//! (`loom_table::watch_page`): the purge's advice writes it (the kernel zaps it), and so
//! does O's owner once `grow` returned (the object's new bytes); loom checks the two are
//! ordered. When the grower holds the mutex as the purge ends, the merge-back goes to
//! the deferred slots, and the next writer (here the final walk, `for_each_region`)
//! folds it. Each model runs three ways (`Racers`): all three threads at preemption
//! bound 2 (`THREE_BOUND`), and the purge beside the grower alone and beside the reader
//! alone at bound 3 (`TWO_BOUND`); see `THREE_BOUND` for why the three together do not
//! run at 3. Model g's grow goes into either piece (`Target`: O into T1, or Y into T2),
//! so a batched call that let either piece's read lock go before it returns is caught.
//! The broken twins drop the grow's write lock on the piece it takes a page of; loom
//! must report the two writes of the watched page.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p rangealloc-core --release --lib loom_purge`.

use super::loom_table::{
    check, new_table, read, read_last, regions, release, spawn, watch_page, Broken, Dirt, Page,
    Paths, Probe, View,
};
use super::{RegionKind, RegionTable};
use crate::os::{self, PurgeMode, PAGE_SIZE};
use loom::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const P: usize = PAGE_SIZE;

/// The preemption bound of the models with all three threads (purge, grow, reader): 2
/// (f: 9,253 executions; g: 4,923). At 3 neither finishes (session 12, load 5-19): f
/// ran past 420,000 executions in 50 minutes and g past 140,000 in 7, where f takes
/// 2, 342 and 9,253 at bounds 0, 1 and 2 (session 10: not in 11 minutes either). Each
/// pair of threads alone is small at 3 (f: the purge and the grow 641 executions, the
/// purge and the reader 1,601; g: 896 and 437), so the product of the three is the
/// cost. With all three, every wait is a spin that yields on each round (the grower
/// waiting out the purge's read lock while it holds the writer mutex: 8,544 rounds over
/// f's 9,253 executions at bound 2; the reader's slow path waiting for that mutex:
/// 11,887), and loom charges no preemption for a switch at a yield, so a third forced
/// switch multiplies the schedules of both waits. Every race here needs one forced
/// switch (the grow or the reader run while the purge is preempted inside its pick,
/// its advice or its merge-back), and each pair runs at 3 (`TWO_BOUND`).
const THREE_BOUND: usize = 2;

/// The preemption bound of the models with the purge and one other thread.
const TWO_BOUND: usize = 3;

/// Which threads run beside the purge, and whether the grow skips its write lock.
#[derive(Clone, Copy)]
struct Racers {
    grow: bool,
    read: bool,
    broken: bool,
}

const ALL: Racers = Racers {
    grow: true,
    read: true,
    broken: false,
};
const GROW: Racers = Racers {
    grow: true,
    read: false,
    broken: false,
};
const READ: Racers = Racers {
    grow: false,
    read: true,
    broken: false,
};
/// The twins: `grow` does not write-lock the piece it takes a page of. (No reader: the
/// twin is about the page.)
const BROKEN: Racers = Racers {
    grow: true,
    read: false,
    broken: true,
};

/// Tallies beside the lookup paths: executions where a writer waited for a read lock
/// (the grower for the purge's, the purge for the reader's), where the merge-back was
/// deferred, where the purge's pick came first (before the grow, or with no grow) or
/// second, and where the purge's pieces went to the kernel in one batched call.
struct Tally {
    waits: AtomicU64,
    deferred: AtomicU64,
    pick_first: AtomicU64,
    grow_first: AtomicU64,
    two_pieces: AtomicU64,
    batched: AtomicU64,
}

impl Tally {
    const fn new() -> Self {
        Tally {
            waits: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            pick_first: AtomicU64::new(0),
            grow_first: AtomicU64::new(0),
            two_pieces: AtomicU64::new(0),
            batched: AtomicU64::new(0),
        }
    }

    /// Prints the tallies and asserts each one named in `required` was reached.
    fn report(&self, model: &str, required: &[&str]) {
        let counts = [
            (
                "waited",
                "a writer that waited for a read lock",
                &self.waits,
            ),
            (
                "deferred",
                "a merge-back left to the deferred slots",
                &self.deferred,
            ),
            (
                "pick first",
                "the purge's pick first (or no grow)",
                &self.pick_first,
            ),
            (
                "grow first",
                "the grow before the purge's pick",
                &self.grow_first,
            ),
            ("batched", "the pieces advised in one call", &self.batched),
        ];
        for (key, what, count) in counts {
            let n = count.load(Relaxed);
            eprintln!("loom {model}: {what}: {n} executions");
            assert!(
                n > 0 || !required.contains(&key),
                "model {model} never reached {what}"
            );
        }
    }
}

/// One execution's race, set up: the table, the object the grower grows (to
/// `grown_len`), the free region it grows into (the one the twin leaves unlocked), the
/// page it takes and watches, the purge's budget and the reader's probe.
struct Race {
    name: &'static str,
    table: &'static RegionTable,
    object: usize,
    grown_len: usize,
    neighbour: usize,
    watched: usize,
    budget: usize,
    probe: Probe,
}

/// Runs the purge and `racers` on `race`, tallies what they did and checks what the
/// reader finds after; the bytes purged.
fn run(race: &Race, racers: Racers, paths: &Paths, tally: &Tally) -> usize {
    let table = race.table;
    let page = Arc::new(Page::new());
    // SAFETY: `page` lives until the end of this execution, after `Broken::clear`.
    unsafe { watch_page(race.watched, &page) };
    Broken {
        skip_write_lock_at: if racers.broken { race.neighbour } else { 0 },
        ..Broken::NONE
    }
    .arm();
    let start = Paths::counts(table);
    let (waits, deferred) = (
        table.counters.reader_waits().get(),
        table.counters.merges_deferred().get(),
    );
    let (calls, syscalls) = (
        table.counters.purge_calls().get(),
        table.counters.purge_syscalls().get(),
    );
    let grower = racers.grow.then(|| {
        let page = page.clone();
        let (o, len) = (race.object, race.grown_len);
        spawn(move || {
            assert!(table.grow_in_place(o, len));
            // O's new bytes: ordered after the purge's advice of the page, if any?
            page.write();
        })
    });
    let budget = race.budget;
    let purger = spawn(move || table.purge(0, PurgeMode::DontNeed, budget));
    if racers.read {
        read(table, &race.probe, race.name);
    }
    if let Some(grower) = grower {
        grower.join().unwrap();
    }
    let purged = purger.join().unwrap();
    Broken::clear();
    paths.add(0, start, table);
    paths.execution();
    read_last(table, &race.probe, race.name);
    if table.counters.reader_waits().get() > waits {
        tally.waits.fetch_add(1, Relaxed);
    }
    if table.counters.merges_deferred().get() > deferred {
        tally.deferred.fetch_add(1, Relaxed);
    }
    // Two pieces advised, in one system call.
    if table.counters.purge_calls().get() - calls == 2 {
        tally.two_pieces.fetch_add(1, Relaxed);
        if table.counters.purge_syscalls().get() - syscalls == 1 {
            tally.batched.fetch_add(1, Relaxed);
        }
    }
    purged
}

/// The arena once both are done (deferred merge-backs folded by the walk): exactly
/// `objects` (start, length) as large objects and `free` (start, length, dirty) as free
/// regions, so none claimed, none left unmerged, and no page dirty that the purge
/// advised.
fn check_arena(race: &Race, objects: &[(usize, usize)], free: &[(usize, usize, bool)]) {
    let name = race.name;
    let mut seen = Vec::new();
    race.table.for_each_region(|start, len, kind, _| {
        if kind != RegionKind::Free {
            assert_eq!(kind, RegionKind::Large, "{name}: {kind:?} at {start:#x}");
            seen.push((start, len));
        }
    });
    assert_eq!(seen, objects, "{name}: the objects after the purge");
    let mut seen = Vec::new();
    race.table
        .for_each_free_region(|start, len, dirty| seen.push((start, len, dirty)));
    assert_eq!(seen, free, "{name}: an unexpected arena after the purge");
}

fn f_model(id: u8, racers: Racers, paths: &'static Paths, tally: &'static Tally) {
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
    // purged, merged with the clean space. After the threads: any of them (a deferred
    // merge-back is folded by the next writer), and after the final walk, the piece
    // (less the grown page) merged with the clean space.
    let last = if racers.grow {
        View(t + 2 * P, P + clean_len, RegionKind::Free, Dirt::Clean)
    } else {
        View(t + P, 2 * P + clean_len, RegionKind::Free, Dirt::Clean)
    };
    let race = Race {
        name: "f",
        table,
        object: o,
        grown_len: 3 * P,
        // The twin's grow leaves the piece (`O+2P`, cut off T) unlocked.
        neighbour: t + P,
        watched: base + 2 * P,
        budget: 2 * P,
        probe: Probe {
            addr: base + 3 * P + P / 2,
            views: vec![
                View(t, 3 * P, RegionKind::Free, Dirt::Dirty),
                View(t + P, 2 * P, RegionKind::Free, Dirt::Any),
                View(t + P, 2 * P + clean_len, RegionKind::Free, Dirt::Clean),
                View(t + 2 * P, P, RegionKind::Free, Dirt::Any),
                last,
            ],
            last: None,
        },
    };
    let purged = run(&race, racers, paths, tally);
    if racers.grow {
        // O grown; the rest of the arena one clean region: the piece less the grown
        // page, or T's last page, purged and merged with the clean space.
        check_arena(&race, &[(o, 3 * P)], &[(base + 3 * P, last.1, false)]);
    } else {
        // T's rest dirty; the piece purged and merged with the clean space.
        check_arena(&race, &[(o, P)], &[(t, P, true), (t + P, last.1, false)]);
    }
    match purged {
        // The pick came first: the piece, cut off T's top.
        x if x == 2 * P => tally.pick_first.fetch_add(1, Relaxed),
        // The grow came first: T's last page, purged whole.
        P if racers.grow => tally.grow_first.fetch_add(1, Relaxed),
        _ => panic!("f: the purge advised {purged:#x} bytes"),
    };
    release(table);
}

#[test]
fn loom_purge_races_a_grow_into_its_piece_and_a_reader() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(THREE_BOUND, || f_model(22, ALL, &PATHS, &TALLY));
    PATHS.report(
        "f (purge vs grow vs reader)",
        &["the arena"],
        &["fast", "abort", "slow"],
    );
    TALLY.report("f", &["waited", "deferred", "pick first", "grow first"]);
}

/// Model f's purge and grow alone, at bound 3.
#[test]
fn loom_purge_races_a_grow_into_its_piece() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(TWO_BOUND, || f_model(30, GROW, &PATHS, &TALLY));
    PATHS.report("f-grow (purge vs grow)", &["the arena"], &[]);
    TALLY.report(
        "f-grow",
        &["waited", "deferred", "pick first", "grow first"],
    );
}

/// Model f's purge and reader alone, at bound 3.
#[test]
fn loom_purge_races_a_reader_of_its_piece() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(TWO_BOUND, || f_model(31, READ, &PATHS, &TALLY));
    PATHS.report(
        "f-read (purge vs reader)",
        &["the arena"],
        &["fast", "abort", "slow"],
    );
    TALLY.report("f-read", &["waited", "deferred", "pick first"]);
}

/// Model f with `grow` taking the purged piece's first page without write-locking it,
/// so without waiting for the purge's read lock: the page is the object's while the
/// purge still advises it. Loom's causality check must report the two writes.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_broken_grow_into_a_piece_being_purged_is_caught() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(TWO_BOUND, || f_model(23, BROKEN, &PATHS, &TALLY));
}

/// Which piece model g's grower grows into: O into T1 (the group's second piece in
/// this build's free-index order) or Y into T2 (its first). A batched call must hold
/// every piece's read lock until it returns; a bug that let one go early is caught
/// only by a grow into that piece (a temporary mutation releasing every piece after
/// the first before the call was caught by g and g-grow, and not by f; one releasing
/// every piece before the last, by g-grow-t2 alone).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    T1,
    T2,
}

fn g_model(id: u8, racers: Racers, target: Target, paths: &'static Paths, tally: &'static Tally) {
    let table = new_table(id);
    let place = |len| {
        table
            .allocate(len, P, RegionKind::Large)
            .expect("a placement")
            .start
    };
    let o = place(4 * P);
    let y = place(2 * P);
    assert!(table.shrink_in_place(o, P));
    assert!(table.shrink_in_place(y, P));
    let [(_, P, RegionKind::Large), (t1, t1_len, RegionKind::Free), (_, P, RegionKind::Large), (t2, P, RegionKind::Free), (clean, clean_len, RegionKind::Free)] =
        regions(table)[..]
    else {
        panic!(
            "not [object][dirty][object][dirty][clean]: {:x?}",
            regions(table)
        );
    };
    assert_eq!(
        (t1, t1_len, y, t2, clean),
        (o + P, 3 * P, o + 4 * P, o + 5 * P, o + 6 * P)
    );
    // What a reader of `T2 + P/2` may find: T2 (dirty, claimed, clean), and T2 purged
    // and merged with the clean space, which it is after the final walk. (With Y
    // growing into T2 no reader runs: `loom_batched_purge_races_a_grow_into_its_other_piece`.)
    let last = View(t2, P + clean_len, RegionKind::Free, Dirt::Clean);
    let (object, grown_len, piece) = match target {
        // O takes T1's first page.
        Target::T1 => (o, 2 * P, t1),
        // Y takes T2, its only page.
        Target::T2 => (y, 2 * P, t2),
    };
    let race = Race {
        name: "g",
        table,
        object,
        grown_len,
        neighbour: piece,
        watched: piece,
        budget: 4 * P,
        probe: match target {
            Target::T1 => Probe {
                addr: t2 + P / 2,
                views: vec![View(t2, P, RegionKind::Free, Dirt::Any), last],
                last: None,
            },
            // T2 is Y's: the final lookup is in T1, purged whole.
            Target::T2 => Probe {
                addr: t1 + P / 2,
                views: vec![View(t1, 3 * P, RegionKind::Free, Dirt::Any)],
                last: None,
            },
        },
    };
    let purged = run(&race, racers, paths, tally);
    match (racers.grow, target) {
        // O grown by T1's first page; T1's rest purged (before or after the grow), kept
        // apart from T2 by Y; T2 purged and merged with the clean space.
        (true, Target::T1) => check_arena(
            &race,
            &[(o, 2 * P), (y, P)],
            &[(t1 + P, 2 * P, false), (t2, last.1, false)],
        ),
        // Y grown over T2; T1 purged.
        (true, Target::T2) => check_arena(
            &race,
            &[(o, P), (y, 2 * P)],
            &[(t1, 3 * P, false), (clean, clean_len, false)],
        ),
        (false, _) => check_arena(
            &race,
            &[(o, P), (y, P)],
            &[(t1, 3 * P, false), (t2, last.1, false)],
        ),
    }
    match purged {
        // The pick came first: T1 and T2 whole.
        x if x == 4 * P => tally.pick_first.fetch_add(1, Relaxed),
        // The grow came first: T1 less its first page and T2, or T1 alone (Y took T2:
        // one piece, no batch).
        x if x == 3 * P && racers.grow => tally.grow_first.fetch_add(1, Relaxed),
        _ => panic!("g: the purge advised {purged:#x} bytes"),
    };
    release(table);
}

/// Model g's tallies: those of f, and every execution's two pieces (all but Y's grow
/// first) in one call where
/// this kernel batches (`process_madvise` with `PIDFD_SELF`, Linux 6.15 and later);
/// elsewhere the purge falls back to one `madvise` a piece, and says so.
fn g_report(model: &str, tally: &Tally, required: &[&str]) {
    let (two, batched) = (tally.two_pieces.load(Relaxed), tally.batched.load(Relaxed));
    if os::purge_batching_works() {
        assert_eq!(
            batched, two,
            "{model}: executions whose two pieces went in one call"
        );
    } else {
        eprintln!("loom {model}: process_madvise does not batch here: one madvise a piece");
    }
    let required: Vec<_> = required
        .iter()
        .copied()
        .chain(os::purge_batching_works().then_some("batched"))
        .collect();
    tally.report(model, &required);
}

#[test]
fn loom_batched_purge_races_a_grow_into_one_piece_and_a_reader_of_the_other() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(THREE_BOUND, || g_model(32, ALL, Target::T1, &PATHS, &TALLY));
    PATHS.report(
        "g (batched purge vs grow vs reader)",
        &["the arena"],
        &["fast", "abort", "slow"],
    );
    g_report(
        "g",
        &TALLY,
        &["waited", "deferred", "pick first", "grow first"],
    );
}

/// Model g's purge and grow alone, at bound 3.
#[test]
fn loom_batched_purge_races_a_grow_into_one_piece() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(TWO_BOUND, || g_model(33, GROW, Target::T1, &PATHS, &TALLY));
    PATHS.report("g-grow (batched purge vs grow)", &["the arena"], &[]);
    g_report(
        "g-grow",
        &TALLY,
        &["waited", "deferred", "pick first", "grow first"],
    );
}

/// Model g's purge and a grow of Y into T2, the batch's other piece, at bound 3.
#[test]
fn loom_batched_purge_races_a_grow_into_its_other_piece() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(TWO_BOUND, || g_model(36, GROW, Target::T2, &PATHS, &TALLY));
    PATHS.report("g-grow-t2 (batched purge vs grow)", &["the arena"], &[]);
    g_report(
        "g-grow-t2",
        &TALLY,
        &["waited", "deferred", "pick first", "grow first"],
    );
}

/// Model g's purge and reader alone, at bound 3.
#[test]
fn loom_batched_purge_races_a_reader_of_a_piece() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(TWO_BOUND, || g_model(34, READ, Target::T1, &PATHS, &TALLY));
    PATHS.report(
        "g-read (batched purge vs reader)",
        &["the arena"],
        &["fast", "abort", "slow"],
    );
    g_report("g-read", &TALLY, &["waited", "pick first"]);
}

/// Model g with `grow` taking T1's first page without write-locking T1: the page is the
/// object's while the batched call still advises it. Loom must report the two writes.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_broken_grow_into_a_piece_of_a_batched_purge_is_caught() {
    static PATHS: Paths = Paths::new();
    static TALLY: Tally = Tally::new();
    check(TWO_BOUND, || {
        g_model(35, BROKEN, Target::T1, &PATHS, &TALLY)
    });
}
