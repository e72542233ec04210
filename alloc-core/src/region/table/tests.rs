//! Unit tests of the table's writer where only fault injection reaches: updates that
//! run out of metadata part-way must leave the table exactly as it was.

use super::*;
use crate::os::PAGE_SIZE;
use crate::region::tree::meta_budget;

type Snapshot = (
    Vec<(usize, usize, RegionKind, RegionState)>,
    Vec<(usize, usize, bool)>,
    usize,
    usize,
);

/// Everything observable about the layout: regions, free regions with their
/// dirtiness, dirty bytes, live objects.
fn snapshot(table: &RegionTable) -> Snapshot {
    let mut regions = Vec::new();
    table.for_each_region(|s, l, k, st| regions.push((s, l, k, st)));
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    (regions, free, table.dirty_bytes(), table.live_regions())
}

/// The regions tile the reservation, and `dirty_bytes` is what the labels say.
fn check_layout(table: &RegionTable) {
    let (regions, free, dirty, _) = snapshot(table);
    let reserved: usize = regions.iter().map(|r| r.1).sum();
    assert_eq!(reserved, table.space().reserved);
    for w in regions.windows(2) {
        let (s, l) = (w[0].0, w[0].1);
        assert!(
            s + l == w[1].0 || (s + l) % ARENA_SIZE == 0,
            "gap after {s:#x}"
        );
    }
    let labelled: usize = free.iter().filter(|f| f.2).map(|f| f.1).sum();
    assert_eq!(dirty, labelled, "dirty accounting");
}

/// Every placement kind (at a free region's start or inside it, with or without a
/// tail, plain or roomy, in dirty or clean space) failed at each of its metadata
/// allocations in turn: descriptors first, then the tree nodes of each insert. Each
/// failure must change nothing; the first budget that suffices must succeed.
#[test]
fn a_placement_out_of_metadata_changes_nothing() {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let mut objects = Vec::new();
    for i in 0..64 {
        let len = (1 + i % 3) * PAGE_SIZE;
        objects.push(
            table
                .allocate(len, PAGE_SIZE, RegionKind::Large)
                .unwrap()
                .start,
        );
    }
    // Dirty gaps of one to three pages between the survivors; clean space after them.
    for (i, &start) in objects.iter().enumerate() {
        if i % 4 == 1 {
            table.retire(start).unwrap();
        }
    }
    table.collect_retired();
    assert!(table.dirty_bytes() > 0);
    let cases = [
        (PAGE_SIZE, PAGE_SIZE, false),
        (2 * PAGE_SIZE, PAGE_SIZE, false),
        (8 * PAGE_SIZE, PAGE_SIZE, false),
        (PAGE_SIZE, 64 * 1024, false),
        (5 * PAGE_SIZE, 2 * 1024 * 1024, false),
        (2 * PAGE_SIZE, PAGE_SIZE, true),
        (64 * PAGE_SIZE, PAGE_SIZE, true),
    ];
    let mut most_failures = 0;
    for (len, align, roomy) in cases {
        let mut failures = 0;
        let placed = (0..64)
            .find_map(|budget| {
                let before = snapshot(table);
                meta_budget::set(budget);
                let placed = if roomy {
                    table.allocate_roomy(len, align, RegionKind::Large)
                } else {
                    table.allocate(len, align, RegionKind::Large)
                };
                meta_budget::set(usize::MAX);
                if placed.is_none() {
                    assert_eq!(
                        snapshot(table),
                        before,
                        "budget {budget}: {len:#x} @ {align:#x}"
                    );
                    failures += 1;
                }
                placed
            })
            .expect("enough metadata eventually");
        // The object's descriptor at least (an exact fit at a free region's start takes
        // its key in place: no tree node); a tail or a placement inside the free region
        // adds a descriptor and the nodes of one or two inserts.
        assert!(failures >= 1);
        most_failures = most_failures.max(failures);
        assert_eq!(placed.len, len);
        assert_eq!(placed.start % align, 0);
        assert_eq!(table.object_len(placed.start), Some(len));
        check_layout(table);
    }
    assert!(
        most_failures >= 4,
        "no placement failed inside its tree inserts"
    );
}

/// A table holding a one-page object with, right after it, a dirty free neighbour of
/// `pages` pages (a freed object) and clean free space after that.
fn object_with_dirty_neighbour(pages: usize) -> (&'static RegionTable, usize) {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let object = table
        .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    let neighbour = table
        .allocate(pages * PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    assert_eq!(neighbour, object + PAGE_SIZE, "placed side by side");
    table.retire(neighbour).unwrap();
    table.collect_retired();
    assert_eq!(
        table.dirty_bytes(),
        pages * PAGE_SIZE,
        "a dirty free neighbour"
    );
    (table, object)
}

/// Grows `object` to `new_len` with ever more metadata until it succeeds, checking that
/// each refused grow changed nothing; returns how many were refused.
fn grow_until_enough_metadata(table: &RegionTable, object: usize, new_len: usize) -> usize {
    let mut failures = 0;
    let grown = (0..64).find(|&budget| {
        let before = snapshot(table);
        meta_budget::set(budget);
        let grown = table.grow_in_place(object, new_len);
        meta_budget::set(usize::MAX);
        if !grown {
            assert_eq!(snapshot(table), before, "budget {budget}: a failed grow");
            failures += 1;
        }
        grown
    });
    assert!(grown.is_some(), "enough metadata eventually");
    failures
}

/// Issue 13 item 4: `grow` into a dirty free neighbour that it only shortens must move
/// the neighbour's key (`rekey`), which needs tree nodes and can fail. A grow refused
/// that way must change nothing, `dirty_bytes` included (it used to be lowered before
/// the `rekey` and never raised again, so the counter drifted and could wrap).
#[test]
fn a_grow_out_of_metadata_changes_nothing() {
    let (table, object) = object_with_dirty_neighbour(8);
    let failures = grow_until_enough_metadata(table, object, 3 * PAGE_SIZE);
    assert!(
        failures >= 1,
        "the rekey never failed: the test did not run"
    );
    assert_eq!(table.object_len(object), Some(3 * PAGE_SIZE));
    assert_eq!(table.dirty_bytes(), 6 * PAGE_SIZE);
    check_layout(table);
}

/// Issue 14: room that runs from a dirty free neighbour on into the clean one after it
/// (dirty and clean space are never merged) is two free regions; a grow that needs
/// more than the dirty one used to be refused, and the object moved. It takes both now,
/// and out of metadata for the second one's `rekey` it changes nothing.
#[test]
fn a_grow_takes_a_dirty_neighbour_and_the_clean_space_after_it() {
    let (table, object) = object_with_dirty_neighbour(2);
    let (_, free, _, _) = snapshot(table);
    let clean = free
        .iter()
        .find(|f| f.0 == object + 3 * PAGE_SIZE && !f.2)
        .expect("clean free space after the dirty neighbour")
        .1;
    let failures = grow_until_enough_metadata(table, object, 6 * PAGE_SIZE);
    assert!(failures >= 1, "the rekey never failed");
    assert_eq!(table.object_len(object), Some(6 * PAGE_SIZE));
    assert_eq!(table.dirty_bytes(), 0, "the dirty neighbour is all taken");
    check_layout(table);
    // Exactly the rest of the clean region: the next grow detaches it too.
    assert!(table.grow_in_place(object, 3 * PAGE_SIZE + clean));
    check_layout(table);
}

/// Issue 13 item 8: a descriptor an update creates (the object `carve` cuts, the free
/// tail it leaves, the tail `shrink` gives back) is write-locked before it enters the
/// tree, as the kernel write-locks a new VMA before inserting it: until the update's
/// `end_write_all`, a lock-free reader that finds it must back off to the slow path
/// (which waits for the writer mutex), never read-lock it half made.
#[test]
fn a_new_region_is_write_locked_until_its_update_ends() {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    // A first update makes the arena; the rest of the test runs in later ones.
    let first = table
        .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    // The reader runs on another thread, as a real one would, while the writer holds
    // the update open; it only tries the fast path (the slow one would wait for us).
    let fast = |addr: usize| {
        std::thread::scope(|s| {
            s.spawn(|| table.find_and_read_lock_fast(addr).is_some())
                .join()
                .unwrap()
        })
    };
    // Inside the free region (the object and its tail are both new descriptors).
    let (object, tail) = table.write(|w| {
        let placed = w
            .allocate(2 * PAGE_SIZE, 64 * 1024, RegionKind::Large, Space::Base)
            .unwrap();
        assert_ne!(
            placed.start,
            first + PAGE_SIZE,
            "placed inside the free region"
        );
        let tail = placed.start + placed.len;
        assert!(
            !fast(placed.start),
            "new object read-locked before end_write_all"
        );
        assert!(
            !fast(tail),
            "new free tail read-locked before end_write_all"
        );
        (placed.start, tail)
    });
    assert!(fast(object) && fast(tail), "unlocked once the update ended");
    // At a free region's start (the object takes its key) with a new tail behind it.
    let head = table.write(|w| {
        let placed = w
            .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large, Space::Base)
            .unwrap();
        assert_eq!(
            placed.start,
            first + PAGE_SIZE,
            "placed at the free head's start"
        );
        assert!(
            !fast(placed.start),
            "object in a replaced key read-locked early"
        );
        placed.start
    });
    assert!(fast(head));
    // The tail a shrink gives back.
    table.write(|w| {
        assert!(w.shrink(object, PAGE_SIZE));
        assert!(
            !fast(object + PAGE_SIZE),
            "shrink's new tail read-locked early"
        );
    });
    assert!(fast(object + PAGE_SIZE));
    check_layout(table);
}

/// Issue 13 item 7: one free region of 1 GiB, dirty. A purge pass with a budget
/// must not pick it whole (the budget used to be checked before a region was added),
/// and every `madvise` covers at most `PURGE_PIECE` bytes, each piece under its own read
/// lock. Once all is purged, the pieces merge back into one clean region.
#[test]
fn a_huge_free_region_is_purged_in_bounded_pieces() {
    const BUDGET: usize = 256 << 20;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    // A whole arena's worth, at an arena boundary (regions merge within one arena).
    let len = ARENA_SIZE;
    let huge = table
        .allocate(len, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    table.retire(huge).unwrap();
    table.collect_retired();
    assert_eq!(table.dirty_bytes(), len);
    let first = table.purge(0, PurgeMode::DontNeed, BUDGET);
    assert!(
        first > 0 && first <= BUDGET,
        "one pass with a {BUDGET:#x} budget purged {first:#x}"
    );
    assert!(
        table.counters.purge_calls().get() as usize >= first.div_ceil(PURGE_PIECE),
        "{} madvise calls for {first:#x} bytes: some exceeded {PURGE_PIECE:#x}",
        table.counters.purge_calls().get()
    );
    check_layout(table);
    let mut total = first;
    loop {
        let bytes = table.purge(0, PurgeMode::DontNeed, usize::MAX);
        if bytes == 0 {
            break;
        }
        total += bytes;
    }
    assert_eq!(total, len);
    assert!(table.counters.purge_calls().get() as usize >= len.div_ceil(PURGE_PIECE));
    assert_eq!(table.dirty_bytes(), 0);
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    assert!(
        free.iter().any(|&(s, l, d)| s == huge && l == len && !d),
        "the purged pieces merged back: {free:x?}"
    );
    check_layout(table);
}

/// Runs `op` on another thread while a purge of `table` is stopped inside `madvise` on
/// `purged`, and fails if `op` ever waits for that purge (it write-locks the region: the
/// lock word shows a writer draining readers) instead of working around it.
fn without_waiting_for<R: Send>(
    table: &'static RegionTable,
    purged: usize,
    op: impl FnOnce() -> R + Send,
) -> R {
    // Pinned while we look at the descriptor (a purge that finishes may merge it away,
    // and a descriptor that left the tree is freed only after a grace period).
    let pinned = epoch::pin();
    let purged = table
        .tree
        .get(purged, &pinned)
        .expect("the region to purge");
    table.pause_in_madvise.arm();
    std::thread::scope(|s| {
        let purger = s.spawn(|| table.purge(0, PurgeMode::DontNeed, usize::MAX));
        table.pause_in_madvise.wait_paused();
        assert!(purged.lock.readers() > 0, "the purge holds the region");
        let op = s.spawn(op);
        let waited = loop {
            if op.is_finished() {
                break false;
            }
            if purged.lock.writer_waiting() {
                break true;
            }
            std::thread::yield_now();
        };
        table.pause_in_madvise.release();
        let result = op.join().unwrap();
        assert!(purger.join().unwrap() > 0);
        assert!(
            !waited,
            "a writer waited for a purge's madvise it could avoid"
        );
        result
    })
}

/// Issue 13 item 7: while a purge holds a free region inside `madvise`, a placement
/// that other free space can serve goes there at once; it used to pick the region being
/// purged (`find_any` did not skip `Dirtiness::Purging`) and spin in `start_write`, holding the
/// writer mutex, for the whole `madvise`.
#[test]
fn a_placement_beside_a_purge_does_not_wait_for_it() {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let o = table
        .allocate(8 * PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    table.retire(o).unwrap();
    table.collect_retired();
    // Layout: O (free, dirty, the smallest fit), the rest of the arena (free, clean).
    let placed = without_waiting_for(table, o, || {
        table.allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
    })
    .unwrap();
    assert_ne!(placed.start, o, "placed in the region being purged");
    check_layout(table);
}

/// Issue 13 item 7: freeing an object next to a free region a purge holds inside
/// `madvise` does not wait to merge with it (the purge merges the cleaned region with
/// its clean neighbours when it is done).
#[test]
fn a_free_beside_a_purge_does_not_wait_for_it() {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let a = table
        .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    let b = table
        .allocate(8 * PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    table.retire(b).unwrap();
    table.collect_retired();
    // Layout: A (live), B (free, dirty), the rest of the arena (free, clean).
    without_waiting_for(table, b, || {
        table.retire(a).unwrap();
        table.collect_retired();
    });
    // A (dirty) stays apart from the clean space, which the purge merged into one.
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    assert_eq!(free.len(), 2, "{free:x?}");
    assert_eq!(
        (free[0].0, free[0].1, free[0].2),
        (a, PAGE_SIZE, true),
        "{free:x?}"
    );
    assert_eq!((free[1].0, free[1].2), (b, false), "{free:x?}");
    check_layout(table);
}

/// Forks while the test's table is locked and the engine's own locks (heap lists, the
/// global table, the metadata arena) are taken by its fork handlers, runs `child` in the
/// child (with the table repaired) and returns the child's wait status. The handlers
/// are called here explicitly: once any test of this process has allocated through the
/// engine, `pthread_atfork` runs them too, and they nest. `child` returns the exit code;
/// a hang is ended by an alarm.
fn fork_with(table: &'static RegionTable, child: impl FnOnce() -> i32) -> i32 {
    const CHILD_SECONDS: u32 = 10;
    table.fork_prepare();
    crate::init::fork_prepare();
    // SAFETY: the child runs only the table's code, the metadata arena and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        crate::init::fork_child();
        // SAFETY: in the child, after the prepare call above; alarm/_exit are
        // async-signal-safe.
        unsafe {
            table.fork_release();
            table.after_fork_in_child();
            libc::alarm(CHILD_SECONDS);
            libc::_exit(child());
        }
    }
    crate::init::fork_parent();
    // SAFETY: after the prepare call above, in the parent.
    unsafe { table.fork_release() };
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// Issue 13 item 6: secure mode puts a guard page after a large object, lifted by the
/// freer after it has won the retire. A fork between the two (retire paused there)
/// leaves the child a retired region with the guard still installed; the child's repair
/// folds it into free space, and the next object placed there must not fault on its
/// last page.
#[test]
fn a_retire_interrupted_by_fork_leaves_no_guard_in_the_child() {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let len = 4 * PAGE_SIZE;
    let o = table
        .allocate(len, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    table.install_guard(o).unwrap();
    table.pause_in_retire.arm();
    let freer = std::thread::spawn(move || table.retire(o));
    table.pause_in_retire.wait_paused();
    let status = fork_with(table, || {
        let placed = table.allocate(len, PAGE_SIZE, RegionKind::Large).unwrap();
        if placed.start != o {
            return 2;
        }
        // SAFETY: a fresh object of ours, `len` bytes long.
        unsafe { core::ptr::write_bytes(o as *mut u8, 1, len) };
        0
    });
    table.pause_in_retire.release();
    freer.join().unwrap().unwrap();
    assert!(
        libc::WIFEXITED(status),
        "child killed by signal {} (the guard page was still installed)",
        libc::WTERMSIG(status)
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child reused another range"
    );
}

/// Review of the retire order (a free gives up its read reference before it pushes the
/// region on the retired stack): with a retire stopped in that window, the region is
/// `Retired`, unlocked and on no list. Readers may lock it (and see it retired), a second
/// free is refused, and writers must leave it alone: the drain of another retire does
/// not wait for it or fold it, a neighbour cannot grow into it, freed neighbours do not
/// merge with it, a purge does not advise it, and no placement lands in it. Its guard
/// page is already lifted. Once the push happens, the next writer folds it into free
/// space with its neighbours.
#[test]
fn a_retire_between_unlock_and_push_is_left_alone() {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let len = 4 * PAGE_SIZE;
    let place = || {
        table
            .allocate(len, PAGE_SIZE, RegionKind::Large)
            .unwrap()
            .start
    };
    let (p, a, n) = (place(), place(), place());
    assert_eq!((a, n), (p + len, p + 2 * len), "three adjacent objects");
    table.install_guard(a).unwrap();
    // SAFETY: A's first page, ours: a purge that advised A would zero it.
    unsafe { core::ptr::write_volatile(a as *mut u8, 0xab) };
    table.pause_after_unlock.arm();
    let freer = std::thread::spawn(move || table.retire(a));
    table.pause_after_unlock.wait_paused();
    {
        let read = table.find_and_read_lock(a).expect("still in the tree");
        assert_eq!(read.region().state(), RegionState::Retired);
        assert_eq!(
            read.region().lock.readers(),
            1,
            "the freer holds no reference"
        );
        assert!(
            !read.region().guarded.load(Ordering::Relaxed),
            "the guard is lifted before the unlock"
        );
    }
    // SAFETY: A's last page, no longer a guard (lifted by the retire): must not fault.
    unsafe { core::ptr::write_volatile((a + len - GUARD_LEN) as *mut u8, 1) };
    assert_eq!(table.retire(a), Err(RetireError::DoubleFree));
    assert_eq!(table.object_len(a), None);
    assert!(
        !table.grow_in_place(p, 2 * len),
        "grew into a retired object"
    );
    // The neighbours go: their drain (on this thread: it would hang if it waited for
    // the paused freer) must leave A retired, between two free regions.
    table.retire(p).unwrap();
    table.retire(n).unwrap();
    table.collect_retired();
    let mut regions = Vec::new();
    table.for_each_region(|s, l, k, st| regions.push((s, l, k, st)));
    let at_a = regions.iter().find(|r| r.0 == a).copied();
    assert_eq!(
        at_a,
        Some((a, len, RegionKind::Large, RegionState::Retired)),
        "{regions:x?}"
    );
    // A purge of everything dirty now (P and N): A is not free space, not advised.
    assert!(table.purge(0, PurgeMode::DontNeed, usize::MAX) >= 2 * len);
    // SAFETY: as above: A's pages are still mapped, whatever happened to them.
    assert_eq!(unsafe { core::ptr::read_volatile(a as *const u8) }, 0xab);
    let others: Vec<usize> = (0..8).map(|_| place()).collect();
    assert!(
        others.iter().all(|&o| o + len <= a || o >= a + len),
        "placed inside a retired object: {others:x?} vs {a:#x}"
    );
    for o in others {
        table.retire(o).unwrap();
    }
    table.pause_after_unlock.release();
    freer.join().unwrap().unwrap();
    table.collect_retired();
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    assert!(
        free.iter().any(|f| f.0 <= p && f.0 + f.1 >= n + len),
        "P, A and N did not merge: {free:x?}"
    );
    assert_eq!(table.live_regions(), 0);
    check_layout(table);
}

/// A fork while a retire is stopped after its unlock and before its push: the child
/// never sees the push, so its repair must find the region by its state and fold it,
/// and the range must be placeable again in the child.
#[test]
fn a_fork_between_a_retires_unlock_and_push_loses_no_region() {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let len = 4 * PAGE_SIZE;
    let o = table
        .allocate(len, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    table.pause_after_unlock.arm();
    let freer = std::thread::spawn(move || table.retire(o));
    table.pause_after_unlock.wait_paused();
    let status = fork_with(table, || {
        table.collect_retired();
        let mut state = None;
        table.for_each_region(|s, _, k, st| {
            if s == o {
                state = Some((k, st));
            }
        });
        if state != Some((RegionKind::Free, RegionState::Live)) {
            return 2;
        }
        match table.allocate(len, PAGE_SIZE, RegionKind::Large) {
            Some(placed) if placed.start == o => 0,
            _ => 3,
        }
    });
    table.pause_after_unlock.release();
    freer.join().unwrap().unwrap();
    assert!(libc::WIFEXITED(status), "child killed: {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "the child lost the region");
    table.collect_retired();
    check_layout(table);
}

/// A big retired region counts as freed (`freed_bytes`, what the dirty budget bounds)
/// from its free on, before any writer folds it into free space, and exactly once
/// after; a small one counts once drained.
#[test]
fn a_big_retired_region_counts_as_freed_before_it_is_drained() {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let big = table
        .allocate(RETIRED_COUNT_MIN, PAGE_SIZE, RegionKind::Large)
        .unwrap();
    let small = table
        .allocate(2 * PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap();
    assert_eq!(table.freed_bytes(), table.dirty_bytes());
    let before = table.freed_bytes();
    table.retire(big.start).unwrap();
    table.retire(small.start).unwrap();
    assert_eq!(table.freed_bytes(), before + big.len, "not counted at free");
    table.collect_retired();
    assert_eq!(table.freed_bytes(), before + big.len + small.len);
    assert_eq!(table.freed_bytes(), table.dirty_bytes());
    check_layout(table);
}

/// Issue 16: the purge an allocator call runs on its way (`try_purge`) skips an arena
/// whose writer mutex is held, purging nothing and waiting for nothing (a waiter on a
/// busy machine waits out the holder's scheduler slice); once the mutex is free it
/// purges as `purge` does.
#[test]
fn try_purge_skips_a_table_whose_writer_is_busy() {
    let len = 1 << 20;
    let (table, _) = dirty_region_in_new_table(len);
    assert_eq!(table.dirty_bytes(), len);
    let (writers, waits) = (table.counters.writer().get(), table.counters.waits().get());
    {
        let _held = table.writer.lock();
        assert_eq!(table.try_purge(0, PurgeMode::DontNeed, usize::MAX), 0);
    }
    assert_eq!(
        table.counters.writer().get(),
        writers,
        "an acquisition counted"
    );
    assert_eq!(table.counters.waits().get(), waits);
    assert_eq!(table.dirty_bytes(), len);
    assert_eq!(table.try_purge(0, PurgeMode::DontNeed, usize::MAX), len);
    assert_eq!(table.dirty_bytes(), 0);
}

/// A new table whose first `len` bytes are a dirty free region (placed, retired and
/// folded), followed by the clean rest of the arena; returns the region's start.
fn dirty_region_in_new_table(len: usize) -> (&'static RegionTable, usize) {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let start = table
        .allocate(len, PAGE_SIZE, RegionKind::Large)
        .unwrap()
        .start;
    table.retire(start).unwrap();
    table.collect_retired();
    (table, start)
}

/// A free region purged in pieces merges back whole, with the clean space after it:
/// the first piece's coalesce took its neighbour piece and stopped (one step a side),
/// so the clean rest of the arena stayed a region of its own beside the purged space.
#[test]
fn a_region_purged_in_pieces_merges_with_the_clean_space_after_it() {
    let len = 2 * PURGE_PIECE;
    let (table, start) = dirty_region_in_new_table(len);
    // Layout: [start, start + len) free and dirty, the rest of the arena free and clean.
    assert_eq!(table.purge(0, PurgeMode::DontNeed, usize::MAX), len);
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    let arena_end = start - start % ARENA_SIZE + ARENA_SIZE;
    assert_eq!(free, [(start, arena_end - start, false)], "{free:x?}");
    check_layout(table);
}

/// A freed 64 MiB buffer that had grown from 4 MiB where the table placed it, with its
/// growth room: at the top of its reservation, below its room, as the first object
/// placed with room in a reservation goes. Returns the table and the buffer's start,
/// its region now free and dirty, with clean free space below it.
fn freed_buffer_at_reservation_top() -> (&'static RegionTable, usize) {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    // The reservation, made by a dense placement: growth room may not reserve when this
    // process's tests hold many (`ROOM_RESERVE_FLOOR`), but it needs none in this one.
    table
        .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap();
    let start = table
        .allocate_with_room(4 << 20, PAGE_SIZE, RegionKind::Large, true, Space::Base)
        .unwrap()
        .start;
    assert_eq!(
        start + writer::GROWTH_TARGET,
        start - start % ARENA_SIZE + ARENA_SIZE,
        "not at the top of its reservation"
    );
    assert!(table.grow_in_place(start, writer::GROWTH_TARGET));
    table.retire(start).unwrap();
    table.collect_retired();
    assert_eq!(table.dirty_bytes(), writer::GROWTH_TARGET);
    (table, start)
}

/// Issue 14 (peak9): a purge of part of a dirty region (the dirty budget's excess) takes
/// the region's top and leaves its start dirty, so the next object placed with growth
/// room starts there and grows in place through every dirty page left. Cut from the
/// front, the dirty rest sat at the reservation's end with no room after it: the next
/// object went to clean space below and the rest stayed dirty beside it (the `region`
/// workload's 2-thread peak RSS, up to 199 MiB where 149 was reachable).
#[test]
fn a_partial_purge_leaves_dirty_space_the_next_buffer_reuses() {
    const EXCESS: usize = 40 << 20;
    let (table, start) = freed_buffer_at_reservation_top();
    let top = writer::GROWTH_TARGET;
    assert_eq!(table.purge(0, PurgeMode::DontNeed, EXCESS), EXCESS);
    check_layout(table);
    assert_eq!(table.dirty_bytes(), top - EXCESS);
    let next = table
        .allocate_with_room(4 << 20, PAGE_SIZE, RegionKind::Large, true, Space::Base)
        .unwrap()
        .start;
    assert_eq!(next, start, "the next buffer skipped the dirty space");
    assert!(table.grow_in_place(next, top));
    assert_eq!(table.dirty_bytes(), 0, "dirty space left beside the buffer");
    check_layout(table);
}

/// In huge-page space a purge's pieces are whole huge pages: a budget off the 2 MiB grid
/// is rounded up to it (a cut inside a huge page splits it, and the part left faults
/// 4 KiB at a time when reused), and the dirty space left is the region's start.
#[test]
fn a_partial_purge_in_huge_page_space_takes_whole_huge_pages() {
    use crate::os::HUGE_PAGE;
    const LEN: usize = 64 << 20;
    const EXCESS: usize = (37 << 20) + 3 * PAGE_SIZE;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let start = table
        .allocate_with_room(LEN, PAGE_SIZE, RegionKind::Large, false, Space::Huge)
        .unwrap()
        .start;
    assert_eq!(table.space_of(start), Space::Huge);
    table.retire(start).unwrap();
    table.collect_retired();
    let purged = table.purge(0, PurgeMode::DontNeed, EXCESS);
    assert_eq!(purged, EXCESS.next_multiple_of(HUGE_PAGE));
    check_layout(table);
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    assert!(
        free.iter()
            .all(|f| f.0 % HUGE_PAGE == 0 && (f.0 + f.1) % HUGE_PAGE == 0),
        "a purge cut inside a huge page: {free:x?}"
    );
    assert!(
        free.contains(&(start, LEN - purged, true)),
        "the dirty space left is not the region's start: {free:x?}"
    );
}

/// Issue 16: a purge whose second update (merging the cleaned pieces back) finds the
/// writer mutex held does not wait for it: it leaves the range to the table's next
/// writer, which folds it before its own update. The holder lets go as soon as the
/// purge counts a blocking acquisition (`lock_writer` counts before it waits), so a
/// purge that waits is seen, not hung.
#[test]
fn a_purge_whose_merge_back_finds_the_writer_busy_leaves_it_to_the_next_writer() {
    // Bigger than a piece: purged in pieces, which must merge back with each other and
    // with the clean rest of the arena.
    let len = 2 * PURGE_PIECE;
    let (table, start) = dirty_region_in_new_table(len);
    assert_eq!(table.dirty_bytes(), len);
    let waits = table.counters.waits().get();
    table.pause_in_madvise.arm();
    let (purged, blocked) = std::thread::scope(|s| {
        let purger = s.spawn(|| table.purge(0, PurgeMode::DontNeed, usize::MAX));
        table.pause_in_madvise.wait_paused();
        // The pick's acquisition is counted; the merge-back's would be the next.
        let writers = table.counters.writer().get();
        let held = table.writer.lock();
        table.pause_in_madvise.release();
        let blocked = loop {
            if purger.is_finished() {
                break false;
            }
            if table.counters.writer().get() != writers {
                break true;
            }
            std::thread::yield_now();
        };
        let deferred = table.deferred_folds();
        drop(held);
        (purger.join().unwrap(), blocked.then_some(deferred))
    });
    assert_eq!(purged, len);
    assert_eq!(blocked, None, "the merge-back took the mutex, blocking");
    assert_eq!(table.counters.waits().get(), waits, "the merge-back waited");
    assert_eq!(table.deferred_folds(), 1, "the pieces went as one range");
    assert_eq!(table.counters.merges_deferred().get(), 1);
    // Unmerged until a writer comes (read from the tree, not by a walk, which folds).
    let pieces = {
        let guard = epoch::pin();
        let mut n = 0;
        table.tree.for_each(&guard, |_, r| {
            n += usize::from(r.kind() == RegionKind::Free && r.start() < start + len);
        });
        n
    };
    assert!(
        pieces > 1,
        "{pieces} free regions where the purge cut pieces"
    );
    // The next writer folds it: one clean free region from `start` to the arena's end.
    table.collect_retired();
    assert_eq!(table.deferred_folds(), 0);
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    assert_eq!(free.len(), 1, "{free:x?}");
    assert_eq!((free[0].0, free[0].2), (start, false), "{free:x?}");
    assert_eq!(
        free[0].0 + free[0].1,
        start - start % ARENA_SIZE + ARENA_SIZE
    );
    check_layout(table);
}

/// The two words every lookup reads, the tree's root and the table's sequence, share no
/// 128-byte block (an aligned pair of cache lines, what x86's spatial prefetcher moves
/// together) with anything that frees or writers store to: the retired stack's head, the
/// live, dirty and retired counts, the tree's length, the writer mutex and its state.
/// Before they had their own lines, the release layout put the root, the sequence, the
/// retired-stack head and the three counts in one 64-byte line (and this test's build
/// put the sequence beside the writer mutex), so every large free on one core made the
/// next lookup on another miss twice.
#[test]
fn the_words_every_lookup_reads_have_their_lines_to_themselves() {
    fn blocks<T>(item: &T) -> core::ops::RangeInclusive<usize> {
        let start = item as *const T as usize;
        start / 128..=(start + size_of::<T>() - 1) / 128
    }
    let table = RegionTable::new();
    let (root, len) = table.tree.word_addresses();
    let read = [root / 128, blocks(&table.seq).start().to_owned()];
    let written = [
        len / 128..=len / 128,
        blocks(&table.retired),
        blocks(&table.live_regions),
        blocks(&table.dirty_bytes),
        blocks(&table.retired_bytes),
        blocks(&table.writer),
    ];
    for r in read {
        for w in &written {
            assert!(
                !w.contains(&r),
                "a read word in block {r}, written ones in {w:?}"
            );
        }
    }
}

/// Issue 14 (bigbuf10): in huge-page space a fresh big object takes a freed dirty hole
/// smaller than half of it, running on into the clean space after the hole, rather
/// than fresh clean space; and one smaller than a hole takes its front and reports the
/// dirty rest after it, which `purge_at` purges whole, merged back with the clean room.
#[test]
fn a_big_object_starts_in_a_dirty_hole_under_half_its_size() {
    const MIB: usize = 1 << 20;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let place = |len: usize| {
        table
            .allocate_with_room(len, PAGE_SIZE, RegionKind::Large, false, Space::Huge)
            .unwrap()
    };
    for _ in 0..4 {
        place(8 * MIB);
    }
    let hole = place(10 * MIB).start;
    place(12 * MIB);
    table.retire(hole).unwrap();
    table.collect_retired();
    assert_eq!(table.dirty_bytes(), 10 * MIB);
    let big = place(24 * MIB);
    assert_eq!(big.start, hole, "the 10 MiB dirty hole was skipped");
    assert!(!big.dirty_after);
    assert_eq!(table.dirty_bytes(), 0);
    check_layout(table);
    table.retire(big.start).unwrap();
    table.collect_retired();
    let small = place(6 * MIB);
    assert_eq!(small.start, hole, "the 24 MiB dirty hole was skipped");
    assert!(small.dirty_after, "no dirty rest reported");
    assert_eq!(table.dirty_bytes(), 18 * MIB);
    assert_eq!(
        table.purge_at(hole + 6 * MIB, PurgeMode::DontNeed),
        18 * MIB
    );
    assert_eq!(table.dirty_bytes(), 0);
    assert_eq!(table.purge_at(hole + 6 * MIB, PurgeMode::DontNeed), 0);
    check_layout(table);
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    assert!(
        free.iter()
            .any(|f| f.0 == hole + 6 * MIB && f.1 >= 58 * MIB && !f.2),
        "the purged rest did not merge with the clean room: {free:x?}"
    );
}

/// Fills `len` bytes at `addr` with words that name their offset and `tag`.
fn fill_words(addr: usize, len: usize, tag: u64) {
    for i in (0..len).step_by(8) {
        // SAFETY: the callers' live objects, at least `len` bytes.
        unsafe { ((addr + i) as *mut u64).write(tag << 32 | i as u64) };
    }
}

/// True if `len` bytes at `addr` hold what `fill_words(.., tag)` wrote.
fn holds_words(addr: usize, len: usize, tag: u64) -> bool {
    // SAFETY: the callers' live objects, at least `len` bytes.
    (0..len)
        .step_by(8)
        .all(|i| unsafe { ((addr + i) as *const u64).read() } == tag << 32 | i as u64)
}

/// What `large::move_to` does after a move that did not happen: copies the object to
/// the destination (and would free the source).
fn copy_object(from: usize, to: usize, len: usize) {
    // SAFETY: distinct live objects of the callers', at least `len` bytes each.
    unsafe { core::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, len) };
}

/// `relocate` of the live object at `addr` (`len` bytes) to twice its length, its move
/// failing with `fault`: the destination, which the caller copies into.
fn relocate_failing(
    table: &RegionTable,
    addr: usize,
    len: usize,
    fault: os::inject::MoveFault,
) -> Placed {
    os::inject::fail_next_move(fault);
    let (placed, moved) = table
        .relocate(addr, 2 * len, PAGE_SIZE, Space::Base)
        .unwrap();
    assert_eq!(
        moved,
        PageMove::Copy { moved: 0 },
        "the injected failure did not happen"
    );
    placed
}

/// Kernels before 6.17 unmap an `mremap(MREMAP_FIXED)` destination before they find
/// that the source spans two mappings (an object moved in, then grown in place) and fail
/// with `EFAULT` (injected here: this kernel moves such sources). `relocate` must map
/// the destination again before it hands it back for the copy: the copy faulted on the
/// hole before (SIGSEGV), and any `mmap` of the process could have taken it.
#[test]
fn a_relocate_whose_move_unmapped_its_destination_maps_it_again_for_the_copy() {
    const LEN: usize = 16 * PAGE_SIZE;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let a = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
    fill_words(a.start, LEN, 1);
    let restored = os::restored_destinations();
    let placed = relocate_failing(table, a.start, LEN, os::inject::MoveFault::UnmapThenFail);
    copy_object(a.start, placed.start, LEN);
    assert!(holds_words(placed.start, LEN, 1), "content copied");
    fill_words(placed.start, 2 * LEN, 2);
    assert!(os::restored_destinations() > restored, "not counted");
    check_layout(table);
}

/// The same failure through `move_pages_into` (`large::move_elsewhere`'s move under the
/// destination's read lock), and then another mapping of the process taking part of
/// the hole before the allocator can react: the destination is not ours any more, so
/// it is neither copied into nor mapped over (either would write another mapping's
/// memory); it stays allocated, unused.
#[test]
fn a_move_under_a_read_lock_restores_its_destination_or_gives_it_up() {
    const LEN: usize = 8 * PAGE_SIZE;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let src = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
    let dest = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
    fill_words(src.start, LEN, 3);
    os::inject::fail_next_move(os::inject::MoveFault::UnmapThenFail);
    // SAFETY: two live objects of ours; `dest` is unused, `src`'s content is copied below.
    let outcome = unsafe { table.move_pages_into(src.start, false, dest.start, LEN, Space::Base) };
    assert_eq!(outcome, PageMove::Copy { moved: 0 });
    copy_object(src.start, dest.start, LEN);
    assert!(holds_words(dest.start, LEN, 3), "content copied");

    let lost = os::lost_destinations();
    let other = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
    os::inject::fail_next_move(os::inject::MoveFault::UnmapOthersMapThenFail);
    // SAFETY: as above.
    let outcome = unsafe { table.move_pages_into(src.start, false, other.start, LEN, Space::Base) };
    let foreign = os::inject::foreign_page();
    assert!((other.start..other.start + LEN).contains(&foreign));
    assert_eq!(
        outcome,
        PageMove::Lost,
        "a destination another mapping holds"
    );
    // SAFETY: the page the injected foreign mapping wrote.
    assert_eq!(
        unsafe { (foreign as *const u64).read() },
        os::inject::FOREIGN
    );
    assert!(os::lost_destinations() > lost, "not counted");
    assert_eq!(
        table.object_len(other.start),
        Some(LEN),
        "the lost one stays live"
    );
}

/// `relocate` whose destination another mapping took part of: it places a second
/// destination for the copy, and the first stays live (never handed out, freed or
/// purged) with the other mapping's page intact.
#[test]
fn a_relocate_that_lost_its_destination_copies_into_another() {
    relocate_losing_the_destination(os::inject::MoveFault::UnmapOthersMapThenFail);
}

/// Review of hazard10: another mapping that takes the *whole* hole the old kernel's
/// unmap left looks, range-wise, exactly like the destination left in place; the restore
/// must not take it for ours and copy the object over it.
#[test]
fn a_relocate_whose_destination_another_mapping_filled_does_not_copy_over_it() {
    relocate_losing_the_destination(os::inject::MoveFault::UnmapOthersFillThenFail);
}

/// A `relocate` whose move fails with `fault` (another mapping in the hole): the object
/// is copied into a destination no foreign page is in, the foreign page keeps what it
/// holds, and the lost destination stays live beside the source and the new one.
fn relocate_losing_the_destination(fault: os::inject::MoveFault) {
    const LEN: usize = 16 * PAGE_SIZE;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let a = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
    fill_words(a.start, LEN, 4);
    let live = table.live_regions();
    let placed = relocate_failing(table, a.start, LEN, fault);
    let foreign = os::inject::foreign_page();
    assert!(
        !(placed.start..placed.start + placed.len).contains(&foreign),
        "handed out a destination another mapping holds ({fault:?})"
    );
    copy_object(a.start, placed.start, LEN);
    assert!(holds_words(placed.start, LEN, 4), "content copied");
    // SAFETY: the last page of the injected foreign mapping, which it wrote.
    assert_eq!(
        unsafe { (foreign as *const u64).read() },
        os::inject::FOREIGN
    );
    assert_eq!(
        table.live_regions(),
        live + 2,
        "source, lost and new destinations"
    );
    check_layout(table);
}

/// Review of hazard10 (H3-2) and review12b (F1, F4): an object that arrived by a move
/// spans two mappings (its moved-in pages and the reservation's rest). A kernel before
/// 6.17 refuses to move it in one call, after unmapping the destination; one from 6.17
/// moves it mapping by mapping and keeps the first moved when a later one fails. So
/// such a source moves one `mremap` per mapping where the kernel lists them
/// (`os::maps::pieces`), and is copied without asking where it cannot: never a refused
/// move (`inject::pretend_old_kernel`: the refusal is read from `/proc/self/maps`), no
/// restore. In both spaces: huge-page space's moves leave the same two mappings.
#[test]
fn a_moved_in_object_moves_one_mapping_at_a_time_or_is_copied() {
    for query in [true, false] {
        for (space, len) in [(Space::Base, 16 * PAGE_SIZE), (Space::Huge, os::HUGE_PAGE)] {
            let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
            let align = if space == Space::Huge {
                os::HUGE_PAGE
            } else {
                PAGE_SIZE
            };
            let a = table
                .allocate_with_room(len, align, RegionKind::Large, true, space)
                .unwrap();
            fill_words(a.start, len, 7);
            os::inject::pretend_old_kernel(true);
            os::inject::pretend_no_query(!query);
            let (tried, refused) = (os::inject::moves_tried(), os::inject::refused_moves());
            let (b, moved) = table.relocate(a.start, 2 * len, align, space).unwrap();
            assert_eq!(
                moved,
                PageMove::Moved,
                "{space:?}: a fresh object lies in one mapping"
            );
            assert!(holds_words(b.start, len, 7), "{space:?}: content moved");
            assert!(
                table.grow_in_place(b.start, 2 * len),
                "{space:?}: not grown"
            );
            fill_words(b.start + len, len, 8);
            let (c, moved) = table.relocate(b.start, 4 * len, align, space).unwrap();
            os::inject::pretend_old_kernel(false);
            os::inject::pretend_no_query(false);
            assert_eq!(
                os::inject::refused_moves() - refused,
                0,
                "{space:?}: asked the kernel for a move it refuses"
            );
            if query {
                assert_eq!(moved, PageMove::Moved, "{space:?}: not moved");
                assert_eq!(
                    os::inject::moves_tried() - tried,
                    3,
                    "{space:?}: one call per mapping"
                );
            } else {
                assert_eq!(
                    moved,
                    PageMove::Copy { moved: 0 },
                    "{space:?}: moved an object of two mappings"
                );
                assert_eq!(
                    os::inject::moves_tried() - tried,
                    1,
                    "{space:?}: moves tried"
                );
                copy_object(b.start, c.start, 2 * len);
            }
            assert!(holds_words(c.start, len, 7), "{space:?}: front kept");
            assert!(
                holds_words(c.start + len, len, 8),
                "{space:?}: grown part kept"
            );
            check_layout(table);
        }
    }
}

/// The length of `object_of_two_mappings`' halves.
const LEN: usize = 16 * PAGE_SIZE;

/// A live object of `2 * LEN` bytes in a table of its own, of two mappings: its first
/// half moved in by `relocate` (holding `fill_words(.., 5)`), its second grown in place
/// (holding `fill_words(.., 6)`).
fn object_of_two_mappings() -> (&'static RegionTable, Placed) {
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let a = table
        .allocate_with_room(LEN, PAGE_SIZE, RegionKind::Large, true, Space::Base)
        .unwrap();
    // Faulted pages keep their page offset when they move: a mapping of their own.
    fill_words(a.start, LEN, 5);
    let (b, moved) = table
        .relocate(a.start, 2 * LEN, PAGE_SIZE, Space::Base)
        .unwrap();
    assert_eq!(moved, PageMove::Moved);
    assert!(table.grow_in_place(b.start, 2 * LEN), "not grown");
    fill_words(b.start + LEN, LEN, 6);
    let pieces = os::maps::pieces(b.start, 2 * LEN)
        .known()
        .map(|p| p.count());
    assert_eq!(pieces, Some(2), "not two mappings");
    (table, b)
}

/// An object of two mappings whose second mapping's move fails (review12b F1: from 6.17
/// the kernel itself would have stopped there, with the first moved): the first stays
/// moved, its source range is empty, and `relocate` says how much moved, so the copy
/// takes only the rest. Then the same failure as a kernel from 6.17 on makes it past
/// its source checks, after unmapping that piece of the destination (review12b F3): the
/// piece is mapped again (`Restored`), not given up, and moves go on.
#[test]
fn a_move_that_stops_after_its_first_mapping_copies_only_the_rest() {
    for fault in [
        os::inject::MoveFault::UnmapThenFail,
        os::inject::MoveFault::NewKernelUnmapThenFail,
    ] {
        let (table, b) = object_of_two_mappings();
        let restored = os::inject::restores();
        os::inject::fail_move_after(1, fault);
        let (c, moved) = table
            .relocate(b.start, 4 * LEN, PAGE_SIZE, Space::Base)
            .unwrap();
        assert_eq!(moved, PageMove::Copy { moved: LEN }, "{fault:?}");
        assert!(holds_words(c.start, LEN, 5), "{fault:?}: the moved mapping");
        // SAFETY: `b` is live, `LEN` bytes and more.
        let empty = (0..LEN)
            .step_by(8)
            .all(|i| unsafe { ((b.start + i) as *const u64).read() } == 0);
        assert!(empty, "{fault:?}: its source is not empty");
        copy_object(b.start + LEN, c.start + LEN, LEN);
        assert!(
            holds_words(c.start + LEN, LEN, 6),
            "{fault:?}: the copied rest"
        );
        assert!(os::inject::restores() > restored, "{fault:?}: not restored");
        // Per thread in test builds, where the process-wide counters see other tests.
        assert!(
            !os::page_moves_stopped(),
            "{fault:?}: given up, moves stopped"
        );
        fill_words(c.start, 4 * LEN, 9);
        table.retire(b.start).unwrap();
        check_layout(table);
    }
}

/// The same stop, and then another mapping takes part of the failed piece's hole: the
/// destination is given up, and what had moved into it goes back to the source first,
/// so the copy into the second destination reads the whole object.
#[test]
fn a_move_that_stops_and_loses_its_destination_brings_the_moved_part_back() {
    let (table, b) = object_of_two_mappings();
    os::inject::fail_move_after(1, os::inject::MoveFault::UnmapOthersMapThenFail);
    let (c, moved) = table
        .relocate(b.start, 4 * LEN, PAGE_SIZE, Space::Base)
        .unwrap();
    assert_eq!(moved, PageMove::Copy { moved: 0 });
    let foreign = os::inject::foreign_page();
    assert!(
        !(c.start..c.start + c.len).contains(&foreign),
        "handed out the lost one"
    );
    assert!(holds_words(b.start, LEN, 5), "the moved part is not back");
    copy_object(b.start, c.start, 2 * LEN);
    assert!(holds_words(c.start, LEN, 5) && holds_words(c.start + LEN, LEN, 6));
    assert!(os::page_moves_stopped());
    check_layout(table);
}

/// Review13 M1: an object the table does not mark may still span several mappings (the
/// program split it, or our own overwrites of moved-in neighbours did), and from 6.17
/// one `mremap` over them may move some and fail, or with KSM and `SA_RESTART` even
/// report success over an emptied front. So an object of more mappings than a move
/// lists (`os::maps::MOVE_PIECES`) is copied, and so is any object whose mappings the
/// kernel cannot list (`inject::pretend_no_query`) on such a kernel; before 6.17, where
/// one call is all or nothing, an unmarked one still moves in one call.
#[test]
fn an_object_of_too_many_or_unknown_mappings_is_copied_where_a_move_could_stop_part_way() {
    const PAGES: usize = 4 * os::maps::MOVE_PIECES;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let a = table
        .allocate(PAGES * PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap();
    fill_words(a.start, PAGES * PAGE_SIZE, 3);
    // The program's own split: a mapping per page pair, no mark of ours.
    for page in (0..PAGES).step_by(4) {
        // SAFETY: pages of our own live object; the advice changes only fork's copying.
        let rc = unsafe {
            libc::madvise(
                (a.start + page * PAGE_SIZE) as *mut libc::c_void,
                2 * PAGE_SIZE,
                libc::MADV_DONTFORK,
            )
        };
        assert_eq!(rc, 0);
    }
    assert!(matches!(
        os::maps::pieces(a.start, PAGES * PAGE_SIZE),
        os::maps::Layout::Several
    ));
    let tried = os::inject::moves_tried();
    let (b, moved) = table
        .relocate(a.start, 2 * PAGES * PAGE_SIZE, PAGE_SIZE, Space::Base)
        .unwrap();
    assert_eq!(
        moved,
        PageMove::Copy { moved: 0 },
        "moved too many mappings"
    );
    assert_eq!(os::inject::moves_tried(), tried, "asked the kernel");
    copy_object(a.start, b.start, PAGES * PAGE_SIZE);
    assert!(holds_words(b.start, PAGES * PAGE_SIZE, 3));
    table.retire(a.start).unwrap();

    // Unknown mappings: an unmarked object of one (fresh from the copy's reservation).
    let c = table
        .allocate(16 * PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
        .unwrap();
    fill_words(c.start, 16 * PAGE_SIZE, 4);
    os::inject::pretend_no_query(true);
    let tried = os::inject::moves_tried();
    let (d, moved) = table
        .relocate(c.start, 32 * PAGE_SIZE, PAGE_SIZE, Space::Base)
        .unwrap();
    os::inject::pretend_no_query(false);
    if os::one_call_may_stop_part_way() {
        assert_eq!(
            moved,
            PageMove::Copy { moved: 0 },
            "moved without a listing"
        );
        assert_eq!(os::inject::moves_tried(), tried, "asked the kernel");
        copy_object(c.start, d.start, 16 * PAGE_SIZE);
    } else {
        assert_eq!(moved, PageMove::Moved, "one call is all or nothing here");
    }
    assert!(holds_words(d.start, 16 * PAGE_SIZE, 4));
    check_layout(table);
}

/// Review of hazard10 (H3-3): a destination mapped again after a failed move is a fresh
/// mapping that does not merge with a moved-in neighbour, so it is marked as holding
/// moved pages: the purge overwrite folds it back, and a kernel before 6.17 is not
/// asked to move it with its neighbours.
#[test]
fn a_destination_mapped_again_is_marked_as_holding_moved_pages() {
    const LEN: usize = 16 * PAGE_SIZE;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let a = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
    let placed = relocate_failing(table, a.start, LEN, os::inject::MoveFault::UnmapThenFail);
    let read = table.find_and_read_lock(placed.start).unwrap();
    assert!(
        read.region().holds_moved_pages(),
        "a restored destination is not marked"
    );
}

/// Review of hazard10 (H3-4): each lost destination stays allocated for good, so after
/// the first one no page moves are tried (in test builds: on this thread), and the
/// leak happens at most once.
#[test]
fn after_a_lost_destination_no_more_pages_move() {
    const LEN: usize = 16 * PAGE_SIZE;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let a = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
    let placed = relocate_failing(
        table,
        a.start,
        LEN,
        os::inject::MoveFault::UnmapOthersMapThenFail,
    );
    table.retire(a.start).unwrap();
    let tried = os::inject::moves_tried();
    let (_, moved) = table
        .relocate(placed.start, 4 * LEN, PAGE_SIZE, Space::Base)
        .unwrap();
    assert_eq!(
        moved,
        PageMove::Copy { moved: 0 },
        "pages moved after a lost destination"
    );
    let b = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
    // SAFETY: two live objects of ours; `b` holds nothing.
    let outcome = unsafe { table.move_pages_into(b.start, false, placed.start, LEN, Space::Base) };
    assert_eq!(outcome, PageMove::Copy { moved: 0 });
    assert_eq!(os::inject::moves_tried(), tried, "moves tried");
}

/// Before 6.12 an `mmap(MAP_FIXED)` that fails may have unmapped its range first
/// (`os::overlay_is_safe`): a purge that overwrote a moved-in free range that way could
/// leave a hole the next object there faults on, or another mapping takes. On such a
/// kernel purges of moved-in ranges only advise; on a newer one they overwrite once
/// the mappings gauge asks (`os::maps::overlay_moved`), as before.
#[test]
fn purges_overwrite_moved_in_ranges_only_where_a_failed_overwrite_keeps_them() {
    const LEN: usize = 16 * PAGE_SIZE;
    for old_kernel in [false, true] {
        let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
        let a = table.allocate(LEN, PAGE_SIZE, RegionKind::Large).unwrap();
        fill_words(a.start, LEN, 6);
        let (placed, moved) = table
            .relocate(a.start, 2 * LEN, PAGE_SIZE, Space::Base)
            .unwrap();
        assert_eq!(moved, PageMove::Moved, "this kernel refused the move");
        assert!(holds_words(placed.start, LEN, 6), "content moved");
        table.retire(placed.start).unwrap();
        table.collect_retired();
        assert!(
            table.dirty_bytes() >= LEN,
            "the moved-in object is not dirty"
        );
        os::maps::pretend_overlay_due(true);
        os::inject::pretend_old_fixed_map(old_kernel);
        let overlays = os::overlays();
        let purged = table.purge(0, PurgeMode::DontNeed, usize::MAX);
        let overwrote = os::overlays() - overlays;
        os::maps::pretend_overlay_due(false);
        os::inject::pretend_old_fixed_map(false);
        assert!(purged >= LEN, "{purged} bytes purged");
        assert_eq!(table.dirty_bytes(), 0);
        assert_eq!(
            overwrote,
            u64::from(!old_kernel),
            "overwrites (kernel before 6.12: {old_kernel})"
        );
        // SAFETY: the purged free range is ours and mapped (it reads as zero).
        assert_eq!(unsafe { (placed.start as *const u64).read() }, 0);
        check_layout(table);
    }
}

/// The `VmFlags` line of the mapping that holds `addr` (`/proc/self/smaps`).
fn vm_flags(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.to_string();
            }
        }
    }
    panic!("no mapping holds {addr:#x}");
}

/// In huge-page space, a destination mapped again gets `MADV_HUGEPAGE` again (while the
/// options advise it), as its reservation had: a fresh mapping does not carry it.
#[test]
fn a_destination_mapped_again_in_huge_space_keeps_its_huge_page_advice() {
    if crate::options::thp() != crate::options::Thp::Advise {
        return; // the kernel's THP mode asks for no advice: nothing to keep
    }
    const LEN: usize = os::HUGE_PAGE;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let a = table
        .allocate_with_room(LEN, os::HUGE_PAGE, RegionKind::Large, true, Space::Huge)
        .unwrap();
    assert!(vm_flags(a.start).contains(" hg"), "huge space unadvised");
    fill_words(a.start, LEN, 5);
    os::inject::fail_next_move(os::inject::MoveFault::UnmapThenFail);
    let (placed, moved) = table
        .relocate(a.start, 4 * LEN, os::HUGE_PAGE, Space::Huge)
        .unwrap();
    assert_eq!(
        moved,
        PageMove::Copy { moved: 0 },
        "the injected failure did not happen"
    );
    copy_object(a.start, placed.start, LEN);
    assert!(holds_words(placed.start, LEN, 5), "content copied");
    assert!(
        vm_flags(placed.start).contains(" hg"),
        "the destination lost MADV_HUGEPAGE: {}",
        vm_flags(placed.start)
    );
}

/// medpurge11: sixteen freed objects touched only at their two ends (as the `medium`
/// workload touches them), kept apart by live objects, are purged by one pass in one
/// batched call: one TLB flush, where one `madvise` each flushed sixteen times (a TLB
/// shootdown each while another thread of the process runs). Their pages read as zero
/// after, and the free regions say so.
#[test]
fn one_pass_purges_sixteen_apart_pieces_in_one_call() {
    const N: usize = 16;
    const LEN: usize = 256 << 10;
    if !os::purge_batching_works() {
        eprintln!("skipped: process_madvise(PIDFD_SELF, MADV_DONTNEED) is not available here");
        return;
    }
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let mut freed = Vec::new();
    for i in 0..2 * N {
        let start = table
            .allocate(LEN, PAGE_SIZE, RegionKind::Large)
            .unwrap()
            .start;
        if i % 2 == 0 {
            freed.push(start);
        }
    }
    for &p in &freed {
        // SAFETY: live objects of LEN bytes, ours.
        unsafe {
            (p as *mut u64).write(!0);
            ((p + LEN - 8) as *mut u64).write(!0);
        }
        table.retire(p).unwrap();
    }
    table.collect_retired();
    assert_eq!(table.dirty_bytes(), N * LEN);
    assert_eq!(table.purge(0, PurgeMode::DontNeed, usize::MAX), N * LEN);
    assert_eq!(
        table.counters.purge_calls().get(),
        N as u64,
        "pieces advised"
    );
    assert_eq!(
        table.counters.purge_syscalls().get(),
        1,
        "system calls for {N} pieces"
    );
    for &p in &freed {
        // SAFETY: free regions of ours, still mapped (a reservation's pages).
        let ends = unsafe {
            [
                (p as *const u64).read(),
                ((p + LEN - 8) as *const u64).read(),
            ]
        };
        assert_eq!(ends, [0, 0], "a purged piece at {p:#x} kept its content");
    }
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    for &p in &freed {
        assert!(
            free.iter()
                .any(|&(s, l, d)| s <= p && p + LEN <= s + l && !d),
            "{p:#x} is not clean free space: {free:x?}"
        );
    }
    check_layout(table);
}

/// Review of hazard12 (review12b F2): an object placed from a dirty hole on into the
/// clean free region after it (`find_dirty_start`, then `extend_into_next`) lies partly
/// in that region's range, so it holds moved-in pages when that region may: the mark
/// must come with the bytes taken, as every other cut and merge carries it. Without it
/// the object spans two kernel mappings unmarked, and a kernel before 6.17 is asked to
/// move it (the window of review10's H3-2).
#[test]
fn an_object_extended_into_a_marked_free_region_is_marked() {
    const H: usize = os::HUGE_PAGE;
    let table: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
    let x = table
        .allocate_with_room(H, H, RegionKind::Large, false, Space::Huge)
        .unwrap();
    // The clean free space after X: as if a move had once landed there (and a purge
    // cleaned it without laying a fresh mapping over it, as in huge-page space).
    {
        let after = table
            .find_and_read_lock(x.start + x.len)
            .expect("room after X");
        assert_eq!(after.region().kind(), RegionKind::Free);
        assert!(!after.region().is_dirty());
        after.region().set_moved_pages(true);
    }
    // X freed: a dirty, unmarked hole right before the marked clean region.
    table.retire(x.start).unwrap();
    table.collect_retired();
    {
        let hole = table.find_and_read_lock(x.start).unwrap();
        assert!(hole.region().is_dirty() && !hole.region().holds_moved_pages());
        assert_eq!(
            hole.region().end(),
            x.start + x.len,
            "the hole and the marked space apart"
        );
    }
    // A bigger fresh object starts in the hole and runs on into the marked space.
    let o = table
        .allocate_with_room(2 * H, H, RegionKind::Large, false, Space::Huge)
        .unwrap();
    assert_eq!(o.start, x.start, "placed from the dirty hole");
    let read = table.find_and_read_lock(o.start).unwrap();
    assert!(
        read.region().holds_moved_pages(),
        "an object across a marked free region is not marked"
    );
    drop(read);
    check_layout(table);
}
