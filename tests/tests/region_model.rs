//! Randomized model test of the region table (issue 3): thousands of random sequences of
//! placements (a free region split), grows and shrinks (resizes), frees and collections
//! (merges), and purges (dirty space turned clean), each step checked against a
//! `BTreeMap` model of the live and the freed-but-not-yet-collected objects.
//!
//! After every step: the walk of the table shows exactly the model's objects, with their
//! state; the regions tile the reservation and free space is coalesced; `dirty_bytes`
//! and `live_regions` agree with the walk; lookups of random addresses inside objects,
//! inside free space and outside every arena find what the model says. A grow is
//! predicted from the layout before it (it must succeed exactly when the next region is
//! free and long enough), and a placement must land on free space. Each sequence ends
//! by freeing what it placed; every 250th then purges everything, after which each arena
//! must be one free region again.
//!
//! Every object carries contents of its own (its range, in its first and last words),
//! checked after every step and before its free, so a placement, grow, shrink or purge
//! that touched a live object's pages is caught. One free in four is made by another
//! thread (a home arena other than the placer's).
//!
//! The tables are a private set of `ARENAS` arenas, and the binary keeps the system
//! allocator. Each sequence runs on a thread of its own, started at each home arena in
//! turn (`spawn_at_home`): the model is the home arena's,
//! every placement must land there and the directory must name that arena for it, and
//! resizes, frees and lookups go through the set's address routing. The other arenas
//! keep one live witness object each, which lookups through the set must still find.
//! Deterministic: a failure replays from `SEED`.

use rangealloc_core::os::{PurgeMode, PAGE_SIZE};
use rangealloc_core::region::arenas::on_new_thread_at_home;
use rangealloc_core::region::table::{RetireError, ARENA_SIZE};
use rangealloc_core::region::{Arenas, RegionKind, RegionState, RegionTable};
use rangealloc_tests::tiling::{check_dirty_accounting, check_tiling, regions, Region};
use rangealloc_tests::XorShift as Rng;
use std::collections::BTreeMap;

/// Arenas in the set: sequences rotate over them.
const ARENAS: usize = 3;
static SET: Arenas = Arenas::new(ARENAS);

/// The running sequence's arena: the thread's home.
fn table() -> &'static RegionTable {
    SET.table(SET.home())
}

/// The witness object each arena keeps across sequences, by arena index.
const WITNESS_LEN: usize = 3 * PAGE_SIZE;

const SEED: u64 = 0x7265_6769_6f6e_6d64;
const SEQUENCES: usize = 3000;
/// Every `LONG_EVERY`th sequence runs `LONG_OPS` steps (deep fragmentation), the others
/// `SHORT_OPS`.
const SHORT_OPS: usize = 60;
const LONG_OPS: usize = 4000;
const LONG_EVERY: usize = 100;
const FULL_PURGE_EVERY: usize = 250;

/// Live objects and objects freed since the table last folded them into free space,
/// both by start address.
#[derive(Default)]
struct Model {
    live: BTreeMap<usize, usize>,
    retired: BTreeMap<usize, usize>,
}

impl Model {
    /// Whether `[start, start + len)` meets a live or retired object.
    fn overlaps(&self, start: usize, len: usize) -> bool {
        [&self.live, &self.retired].iter().any(|objects| {
            objects
                .range(..start + len)
                .next_back()
                .is_some_and(|(&s, &l)| s + l > start)
        })
    }

    fn pick_live(&self, rng: &mut Rng) -> Option<(usize, usize)> {
        let n = self.live.len();
        (n > 0).then(|| {
            let (&s, &l) = self.live.iter().nth(rng.below(n)).unwrap();
            (s, l)
        })
    }
}

fn pages(rng: &mut Rng) -> usize {
    let n = match rng.below(16) {
        0..=11 => 1 + rng.below(8),
        12..=14 => 1 + rng.below(256),
        _ => 1 + rng.below(8192),
    };
    n * PAGE_SIZE
}

fn align(rng: &mut Rng) -> usize {
    match rng.below(8) {
        0 => 64 * 1024,
        1 => 2 * 1024 * 1024,
        _ => PAGE_SIZE,
    }
}

/// The region starting right at `end`, as the walk `all` shows it.
fn region_at(all: &[Region], end: usize) -> Option<Region> {
    all.binary_search_by_key(&end, |r| r.0).ok().map(|i| all[i])
}

/// Writes an object's contents as this test checks them: `[start, len]` in its first
/// words and `start ^ len` in its last.
fn stamp(start: usize, len: usize) {
    // SAFETY: a live object of the model's, at least a page long and mapped read/write,
    // which only this sequence's thread writes.
    unsafe {
        (start as *mut [usize; 2]).write([start, len]);
        ((start + len - 8) as *mut usize).write(start ^ len);
    }
}

/// Checks the contents `stamp` wrote (a grow keeps the head and the old last word, a
/// shrink the head: the caller re-stamps after each).
fn check_stamp(start: usize, len: usize) {
    // SAFETY: as in `stamp`.
    let (head, tail) = unsafe {
        (
            (start as *const [usize; 2]).read(),
            ((start + len - 8) as *const usize).read(),
        )
    };
    assert_eq!(
        (head, tail),
        ([start, len], start ^ len),
        "object {start:#x}+{len:#x}'s contents"
    );
}

fn allocate(model: &mut Model, rng: &mut Rng) {
    let (len, align) = (pages(rng), align(rng));
    let placed = if rng.below(4) == 0 {
        table().allocate_roomy(len, align, RegionKind::Large)
    } else {
        table().allocate(len, align, RegionKind::Large)
    }
    .expect("address space");
    assert!(
        Arenas::table_of(placed.start).is_some_and(|t| std::ptr::eq(t, table())),
        "the directory names the arena that placed {:#x}",
        placed.start
    );
    assert_eq!(placed.len, len);
    assert_eq!(
        placed.start % align,
        0,
        "placement ignores alignment {align:#x}"
    );
    // Frees made before this update were folded in first, so their space may be reused.
    model.retired.clear();
    assert!(
        !model.overlaps(placed.start, len),
        "placed {:#x}+{len:#x} over a live object",
        placed.start
    );
    model.live.insert(placed.start, len);
    stamp(placed.start, len);
}

fn grow(model: &mut Model, rng: &mut Rng) {
    let Some((start, len)) = model.pick_live(rng) else {
        return;
    };
    let delta = (1 + rng.below(16)) * PAGE_SIZE;
    // With no free pending, the layout before the update is the one it works on.
    // One free neighbour, or two (dirty space, then clean) when the first is too short;
    // both in the object's arena.
    let predicted = model.retired.is_empty().then(|| {
        let all = regions(table());
        let free_at = |at: usize| {
            region_at(&all, at)
                .filter(|r| r.2 == RegionKind::Free && at / ARENA_SIZE == start / ARENA_SIZE)
                .map(|r| r.1)
        };
        match free_at(start + len) {
            Some(l) if l >= delta => true,
            Some(l) => free_at(start + len + l).is_some_and(|l2| l + l2 >= delta),
            None => false,
        }
    });
    let grown = SET.grow_in_place(start, len + delta);
    model.retired.clear();
    if let Some(predicted) = predicted {
        assert_eq!(grown, predicted, "grow {start:#x}+{len:#x} by {delta:#x}");
    }
    if grown {
        assert!(!model.overlaps(start + len, delta), "grew over an object");
        check_stamp(start, len);
        model.live.insert(start, len + delta);
        stamp(start, len + delta);
    }
}

fn shrink(model: &mut Model, rng: &mut Rng) {
    let Some((start, len)) = model.pick_live(rng) else {
        return;
    };
    if len == PAGE_SIZE {
        return;
    }
    let new_len = (1 + rng.below(len / PAGE_SIZE - 1)) * PAGE_SIZE;
    assert!(SET.shrink_in_place(start, new_len));
    model.retired.clear();
    model.live.insert(start, new_len);
    stamp(start, new_len);
}

fn retire(model: &mut Model, rng: &mut Rng) {
    let Some((start, len)) = model.pick_live(rng) else {
        return;
    };
    if len > PAGE_SIZE && rng.below(4) == 0 {
        let interior = start + (1 + rng.below(len / PAGE_SIZE - 1)) * PAGE_SIZE;
        assert_eq!(SET.retire(interior), Err(RetireError::Interior));
    }
    check_stamp(start, len);
    // One free in four comes from another thread (whose home the sequence's thread,
    // holding its own ticket, does not decide): the set routes it by address all the same.
    let freed = if rng.below(4) == 0 {
        std::thread::scope(|s| s.spawn(|| SET.retire(start)).join().unwrap())
    } else {
        SET.retire(start)
    };
    assert_eq!(freed, Ok(()));
    if rng.below(4) == 0 {
        assert_eq!(SET.retire(start), Err(RetireError::DoubleFree));
    }
    model.live.remove(&start);
    model.retired.insert(start, len);
}

fn purge(model: &mut Model, rng: &mut Rng) {
    let mode = if rng.below(2) == 0 {
        PurgeMode::DontNeed
    } else {
        PurgeMode::Free
    };
    table().purge(0, mode, (1 + rng.below(64)) * PAGE_SIZE);
    model.retired.clear();
}

/// The walk shows exactly the model's objects; lookups agree with both.
fn check(model: &Model, rng: &mut Rng) {
    let all = regions(table());
    check_tiling(table(), &all);
    check_dirty_accounting(table());
    let mut live = BTreeMap::new();
    let mut retired = BTreeMap::new();
    for &(s, l, k, st) in &all {
        match (k, st) {
            (RegionKind::Free, _) => {}
            (_, RegionState::Live) => assert!(live.insert(s, l).is_none()),
            (_, RegionState::Retired) => assert!(retired.insert(s, l).is_none()),
            // Only `large::cache` caches regions, and this model drives the table alone.
            (_, RegionState::Cached) => panic!("a cached region at {s:#x} in the model"),
        }
    }
    // The home arena's witness is live too, outside the model.
    let witness = witnesses()[SET.home()];
    assert_eq!(live.remove(&witness), Some(WITNESS_LEN), "the witness");
    assert_eq!(live, model.live, "live objects");
    for (&start, &len) in &model.live {
        check_stamp(start, len);
    }
    // A free the model still holds may already be folded in (an update ran since).
    assert!(
        retired.iter().all(|(s, l)| model.retired.get(s) == Some(l)),
        "a retired region the model does not know"
    );
    assert_eq!(table().live_regions(), model.live.len() + 1);

    if let Some((start, len)) = model.pick_live(rng) {
        let addr = start + rng.below(len);
        let guard = SET.find_and_read_lock(addr).expect("a live object");
        let r = guard.region();
        assert_eq!((guard.start(), r.start(), r.len()), (start, start, len));
        assert_eq!(
            (r.kind(), r.state()),
            (RegionKind::Large, RegionState::Live)
        );
        drop(guard);
        assert_eq!(SET.object_len(start), Some(len));
        if len > PAGE_SIZE {
            assert_eq!(SET.object_len(start + PAGE_SIZE), None);
        }
    }
    let free: Vec<&Region> = all.iter().filter(|r| r.2 == RegionKind::Free).collect();
    if !free.is_empty() {
        let &&(s, l, _, _) = &free[rng.below(free.len())];
        let addr = s + rng.below(l);
        let guard = SET
            .find_and_read_lock(addr)
            .expect("free space is a region");
        assert_eq!(guard.region().kind(), RegionKind::Free);
        assert!(guard.region().contains(addr));
        drop(guard);
        assert_eq!(SET.retire(addr), Err(RetireError::NotAllocated));
        assert_eq!(SET.object_len(s), None);
    }
    assert!(SET.find_and_read_lock(PAGE_SIZE).is_none());
    // Every arena's witness, found through the directory in its own arena.
    for (i, &w) in witnesses().iter().enumerate() {
        let t = Arenas::table_of(w + PAGE_SIZE).expect("the directory knows the witness");
        assert!(std::ptr::eq(t, SET.table(i)), "witness of arena {i}");
        assert_eq!(SET.object_len(w), Some(WITNESS_LEN));
    }
}

/// Places one witness object in each arena (from threads whose home it is), once.
fn witnesses() -> &'static [usize; ARENAS] {
    static WITNESSES: std::sync::OnceLock<[usize; ARENAS]> = std::sync::OnceLock::new();
    WITNESSES.get_or_init(|| {
        let mut placed = [0; ARENAS];
        for (home, start) in placed.iter_mut().enumerate() {
            *start = on_new_thread_at_home(&SET, home, move || {
                let p = SET
                    .table(home)
                    .allocate(WITNESS_LEN, PAGE_SIZE, RegionKind::Large);
                p.expect("address space").start
            });
        }
        placed
    })
}

/// Frees everything the model holds and folds it into free space.
fn release_all(model: &mut Model) {
    for &start in model.live.keys() {
        assert_eq!(SET.retire(start), Ok(()));
    }
    model.live.clear();
    table().collect_retired();
    model.retired.clear();
}

#[test]
fn region_table_matches_its_model() {
    let mut rng = Rng(SEED);
    let mut steps = 0;
    let mut most_regions = 0;
    witnesses();
    let mut homes = [0usize; ARENAS];
    for seq in 0..SEQUENCES {
        // A thread per sequence, at each home in turn.
        let home = seq % ARENAS;
        let (r, s, m) = (Rng(rng.0), steps, most_regions);
        let (r, s, m, at) = on_new_thread_at_home(&SET, home, move || {
            let (mut r, mut s, mut m) = (r, s, m);
            let at = SET.home();
            sequence(seq, &mut r, &mut s, &mut m);
            (r, s, m, at)
        });
        (rng, steps, most_regions) = (r, s, m);
        homes[at] += 1;
    }
    assert!(
        homes.iter().all(|&n| n >= SEQUENCES / ARENAS / 2),
        "homes {homes:?}"
    );
    assert!(steps > SEQUENCES * SHORT_OPS);
    eprintln!("{steps} steps, up to {most_regions} regions, sequences per arena {homes:?}");
}

fn sequence(seq: usize, rng: &mut Rng, steps: &mut usize, most_regions: &mut usize) {
    let rng = &mut *rng;
    {
        let mut model = Model::default();
        let ops = if seq % LONG_EVERY == LONG_EVERY - 1 {
            LONG_OPS
        } else {
            SHORT_OPS
        };
        for _ in 0..ops {
            match rng.below(16) {
                0..=4 => allocate(&mut model, rng),
                5..=6 => grow(&mut model, rng),
                7..=8 => shrink(&mut model, rng),
                9..=12 => retire(&mut model, rng),
                13 => {
                    table().collect_retired();
                    model.retired.clear();
                }
                _ => purge(&mut model, rng),
            }
            check(&model, rng);
            *steps += 1;
            *most_regions = (*most_regions).max(regions(table()).len());
        }
        release_all(&mut model);
        check(&model, rng);
        let witness = witnesses()[SET.home()];
        assert!(regions(table())
            .iter()
            .all(|r| r.2 == RegionKind::Free || r.0 == witness));
        if seq % FULL_PURGE_EVERY == FULL_PURGE_EVERY - 1 {
            // One call purges a batch of regions: repeat until nothing is left.
            while table().purge(0, PurgeMode::DontNeed, usize::MAX) > 0 {}
            let all = regions(table());
            check_tiling(table(), &all);
            assert_eq!(table().dirty_bytes(), 0);
            // Each reservation is one free region again, but the one holding the
            // witness, whose free space it may split in two.
            let free = all.iter().filter(|r| r.2 == RegionKind::Free).count();
            assert!(
                free <= table().space().reserved / ARENA_SIZE + 1,
                "empty clean arenas are one free region each, but for the witness: {all:x?}"
            );
        }
    }
}
