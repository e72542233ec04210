//! Real-thread stress of the region table's protocol (DESIGN.md §2, issue 3): lock-free
//! `find_and_read_lock` readers working under their read locks while other threads
//! allocate, retire, grow, shrink and purge *neighbouring* regions of the same arena.
//!
//! The table is a fresh `RegionTable` of this test's own, not the process's `TABLE`; this
//! binary keeps the system allocator (no `#[global_allocator]`), so nothing else touches
//! the table, and the counters and the final walk account for every operation made here.
//!
//! Checked while running: a reader's region always contains its address, is attached,
//! and is exactly the stable object it looked for (start, length, kind, state and the
//! header the object carries in its first bytes); a region found in churned space never
//! overlaps a stable object; each churner finds its own objects with exactly the range it
//! gave them. At the end: the regions tile the reserved space with no overlap or gap,
//! free regions are coalesced, the live set is exactly the expected one, every region can
//! be write-locked again (no leaked read reference), everything freed merges back into
//! whole free arenas, `dirty_bytes` matches the free bytes labelled dirty, the counters
//! add up, and nothing deadlocked (a watchdog bounds it).

use rangealloc_core::os::{PurgeMode, PAGE_SIZE};
use rangealloc_core::region::arenas::spawn_at_home;
use rangealloc_core::region::table::{RetireError, ARENA_SIZE, PURGE_PIECE};
use rangealloc_core::region::{
    epoch, Arenas, PageMove, Region, RegionKind, RegionState, RegionTable, Space,
};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lock-free readers: more than the 2 cores of the CI machine, so readers are preempted
/// inside their critical sections and writers must wait them out.
const READERS: usize = 8;
/// Threads changing the structure of the table.
const CHURNERS: usize = 3;
/// Stable objects the readers look up, each followed by a churned gap.
const STABLE: usize = 64;
const STABLE_PAGES: usize = 2;
/// Pages of free space between consecutive stable objects, where churners work: small
/// enough that the free index (best fit by size bin) places churn objects there, next to
/// the stable ones, rather than in the arena's big tail.
const GAP_PAGES: usize = 16;
/// Largest churn object, in pages (grown objects may reach twice this).
const CHURN_MAX_PAGES: usize = 6;
/// Objects each churner keeps at most.
const CHURN_OBJECTS: usize = 12;
/// How long the threads run; the watchdog fails the test if they are not all done by
/// `DEADLINE` (a deadlock, or a livelocked writer).
const RUN_FOR: Duration = Duration::from_secs(4);
const DEADLINE: Duration = Duration::from_secs(45);
const MAGIC: usize = 0x5eed_0b1e_c7ab_1e00;
static TABLE: RegionTable = RegionTable::new();

/// Calls that go through `find_and_read_lock` (lookups, `retire`, `object_len`) and
/// calls that run one writer update, counted by the test to check the table's counters.
static LOOKUPS: AtomicU64 = AtomicU64::new(0);
static FOUND: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);

use rangealloc_tests::tiling::{check_dirty_accounting, check_tiling, free_dirtiness, regions};
use rangealloc_tests::XorShift as Rng;

fn write_count() {
    WRITES.fetch_add(1, Ordering::Relaxed);
}

/// Writes `[start, len, MAGIC]` at the start of a live object we own.
fn write_header(start: usize, len: usize) {
    // SAFETY: `[start, start + len)` is a live region of ours, at least a page long, that
    // no other thread writes; the arena is mapped read/write.
    unsafe { (start as *mut [usize; 3]).write_volatile([start, len, MAGIC]) }
}

fn read_header(start: usize) -> [usize; 3] {
    // SAFETY: `start` begins a live object, at least a page long and mapped, that stays
    // allocated during the call: the caller either holds its read lock (a stable object,
    // never freed) or owns it (a churner's object, freed only by that churner).
    unsafe { (start as *const [usize; 3]).read_volatile() }
}

fn allocate(len: usize, roomy: bool) -> usize {
    write_count();
    let placed = if roomy {
        TABLE.allocate_roomy(len, PAGE_SIZE, RegionKind::Large)
    } else {
        TABLE.allocate(len, PAGE_SIZE, RegionKind::Large)
    }
    .expect("address space");
    assert_eq!(placed.len, len);
    assert_eq!(placed.start % PAGE_SIZE, 0);
    placed.start
}

fn retire(start: usize) -> Result<(), RetireError> {
    LOOKUPS.fetch_add(1, Ordering::Relaxed);
    TABLE.retire(start)
}

/// `find_and_read_lock(addr)` then `check` under the read lock, counted.
fn lookup<R>(
    addr: usize,
    check: impl FnOnce(Option<(usize, usize, RegionKind, RegionState)>) -> R,
) -> R {
    LOOKUPS.fetch_add(1, Ordering::Relaxed);
    let guard = TABLE.find_and_read_lock(addr);
    let seen = guard.as_ref().map(|g| {
        let r = g.region();
        assert!(
            !r.is_detached(),
            "a validated read lock on a detached region"
        );
        assert_eq!(g.start(), r.start(), "the guard's start is the region's");
        (r.start(), r.len(), r.kind(), r.state())
    });
    if seen.is_some() {
        FOUND.fetch_add(1, Ordering::Relaxed);
    }
    let result = check(seen);
    // Re-read before unlocking: the range and kind cannot change under a read lock; the
    // state may only go Live -> Retired (`retire` does that under its own read lock).
    if let (Some(g), Some((start, len, kind, state))) = (&guard, seen) {
        let r = g.region();
        assert_eq!(
            (r.start(), r.len(), r.kind(), r.is_detached()),
            (start, len, kind, false),
            "region changed under a read lock"
        );
        assert!(state == r.state() || r.state() == RegionState::Retired);
    }
    drop(guard);
    result
}

struct Layout {
    /// (start, len) of each stable object, in address order.
    stable: Vec<(usize, usize)>,
    /// The span stable objects and gaps occupy.
    lo: usize,
    hi: usize,
}

impl Layout {
    fn stable_overlapping(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        let i = self.stable.partition_point(|&(s, l)| s + l <= start);
        self.stable.get(i).copied().filter(|&(s, _)| s < end)
    }
}

/// Lays out `STABLE` stable objects separated by free gaps of `GAP_PAGES`.
fn build_layout() -> Layout {
    let mut stable = Vec::new();
    let mut gaps = Vec::new();
    for _ in 0..STABLE {
        let s = allocate(STABLE_PAGES * PAGE_SIZE, false);
        write_header(s, STABLE_PAGES * PAGE_SIZE);
        stable.push((s, STABLE_PAGES * PAGE_SIZE));
        gaps.push(allocate(GAP_PAGES * PAGE_SIZE, false));
    }
    for g in gaps {
        retire(g).unwrap();
    }
    write_count();
    TABLE.collect_retired();
    stable.sort_unstable();
    for w in stable.windows(2) {
        assert_eq!(
            w[1].0 - w[0].0,
            (STABLE_PAGES + GAP_PAGES) * PAGE_SIZE,
            "setup expects consecutive placement"
        );
    }
    let lo = stable[0].0;
    let last = stable[STABLE - 1];
    Layout {
        stable,
        lo,
        hi: last.0 + last.1 + GAP_PAGES * PAGE_SIZE,
    }
}

/// A reader: stable-object lookups with exact checks, plus lookups anywhere in the
/// churned span (and beyond the arena) with structural checks.
fn reader(layout: &Layout, seed: u64, stop: &AtomicBool) -> u64 {
    let mut rng = Rng(seed);
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        if rng.below(4) != 0 {
            let (s, l) = layout.stable[rng.below(STABLE)];
            let addr = s + rng.below(l);
            lookup(addr, |seen| {
                let (start, len, kind, state) = seen.expect("a stable object vanished");
                assert_eq!(
                    (start, len),
                    (s, l),
                    "wrong range for stable object at {addr:#x}"
                );
                assert_eq!((kind, state), (RegionKind::Large, RegionState::Live));
                assert_eq!(read_header(start), [s, l, MAGIC], "stable object's header");
            });
        } else {
            let addr = layout.lo + rng.below(layout.hi - layout.lo);
            lookup(addr, |seen| {
                let (start, len, ..) = seen.expect("the churned span is always covered");
                assert!(
                    start <= addr && addr < start + len,
                    "region misses {addr:#x}"
                );
                assert_eq!((start % PAGE_SIZE, len % PAGE_SIZE), (0, 0));
                if let Some(s) = layout.stable_overlapping(start, start + len) {
                    assert_eq!(s, (start, len), "a region overlaps a stable object");
                }
            });
        }
        done += 1;
    }
    done
}

struct Owned {
    start: usize,
    len: usize,
}

/// A churner: random allocate / allocate_roomy / grow / shrink / retire of its own
/// objects, each checked through a lookup of its own right after.
fn churner(seed: u64, stop: &AtomicBool) -> (Vec<Owned>, u64) {
    let mut rng = Rng(seed);
    let mut own: Vec<Owned> = Vec::new();
    let mut ops = 0;
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        let op = rng.below(10);
        if own.is_empty() || (op < 3 && own.len() < CHURN_OBJECTS) {
            let len = (1 + rng.below(CHURN_MAX_PAGES)) * PAGE_SIZE;
            let start = allocate(len, op == 0);
            write_header(start, len);
            own.push(Owned { start, len });
        } else {
            let i = rng.below(own.len());
            let o = &mut own[i];
            match op {
                3 | 4 => {
                    let new_len = o.len + (1 + rng.below(CHURN_MAX_PAGES)) * PAGE_SIZE;
                    write_count();
                    if TABLE.grow_in_place(o.start, new_len) {
                        o.len = new_len;
                    }
                }
                5 if o.len > PAGE_SIZE => {
                    let new_len = (1 + rng.below(o.len / PAGE_SIZE - 1)) * PAGE_SIZE;
                    write_count();
                    assert!(TABLE.shrink_in_place(o.start, new_len), "shrink refused");
                    o.len = new_len;
                }
                6 if o.len > PAGE_SIZE => {
                    let interior = o.start + PAGE_SIZE * (1 + rng.below(o.len / PAGE_SIZE - 1));
                    assert_eq!(retire(interior), Err(RetireError::Interior));
                }
                _ => {
                    let o = own.swap_remove(i);
                    assert_eq!(read_header(o.start), [o.start, o.len, MAGIC]);
                    assert_eq!(retire(o.start), Ok(()));
                    continue;
                }
            }
            let o = &own[i];
            write_header(o.start, o.len);
            let addr = o.start + rng.below(o.len);
            lookup(addr, |seen| {
                let (start, len, kind, state) = seen.expect("own object vanished");
                assert_eq!(
                    (start, len),
                    (o.start, o.len),
                    "own object's range at {addr:#x}"
                );
                assert_eq!((kind, state), (RegionKind::Large, RegionState::Live));
            });
        }
        if rng.below(64) == 0 {
            write_count();
            TABLE.collect_retired();
        }
    }
    (own, ops)
}

/// Purges free regions (no delay) under their read locks, racing the writers.
fn purger(stop: &AtomicBool) -> u64 {
    let mut passes = 0;
    while !stop.load(Ordering::Relaxed) {
        write_count();
        if TABLE.purge(0, PurgeMode::DontNeed, 1 << 20) > 0 {
            write_count(); // the purge's second update, which merges what it cleaned
        }
        passes += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    passes
}

/// Counts a thread as finished when it ends, by return or by panic (the panic itself
/// then fails the test at `join`, not as a false deadlock).
struct Finished(Arc<AtomicUsize>);
impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Lets the threads run for `RUN_FOR`, stops them and waits for all `threads` to finish,
/// failing the test as a deadlock after `DEADLINE`. Returns when the run began.
fn run_and_watch(stop: &AtomicBool, finished: &AtomicUsize, threads: usize) -> Instant {
    let began = Instant::now();
    std::thread::sleep(RUN_FOR);
    stop.store(true, Ordering::Relaxed);
    while finished.load(Ordering::Acquire) < threads {
        assert!(
            began.elapsed() < DEADLINE,
            "deadlock: {} of {threads} threads still running after {DEADLINE:?}",
            threads - finished.load(Ordering::Acquire)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    began
}

/// After everything was freed and purged: the walk `all` holds only free regions, one
/// per reservation (arena-sized run).
fn check_merged_back(all: &[rangealloc_tests::tiling::Region]) {
    assert!(all.iter().all(|r| r.2 == RegionKind::Free));
    for w in all.windows(2) {
        assert!(
            w[0].0 + w[0].1 < w[1].0 || w[0].0 / ARENA_SIZE != w[1].0 / ARENA_SIZE,
            "an arena did not merge back into one free region"
        );
    }
}

#[test]
fn region_table_stress() {
    let layout = Arc::new(build_layout());
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let threads = READERS + CHURNERS + 1;

    let spawn = |f: Box<dyn FnOnce() + Send>| {
        let done = Finished(finished.clone());
        std::thread::spawn(move || {
            let _done = done;
            f();
        })
    };
    let reads = Arc::new(AtomicU64::new(0));
    let churned = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..READERS {
        let (layout, stop, reads) = (layout.clone(), stop.clone(), reads.clone());
        handles.push(spawn(Box::new(move || {
            let n = reader(&layout, 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1), &stop);
            reads.fetch_add(n, Ordering::Relaxed);
        })));
    }
    for t in 0..CHURNERS {
        let (stop, churned, ops) = (stop.clone(), churned.clone(), ops.clone());
        handles.push(spawn(Box::new(move || {
            let (own, n) = churner(0xc2b2_ae3d_27d4_eb4f ^ (t as u64 + 1), &stop);
            churned
                .lock()
                .unwrap()
                .extend(own.into_iter().map(|o| (o.start, o.len)));
            ops.fetch_add(n, Ordering::Relaxed);
        })));
    }
    {
        let stop = stop.clone();
        handles.push(spawn(Box::new(move || {
            purger(&stop);
        })));
    }

    let began = run_and_watch(&stop, &finished, threads);
    for h in handles {
        h.join().unwrap();
    }

    // The live set is exactly the stable objects plus what the churners kept.
    write_count();
    TABLE.collect_retired();
    let all = regions(&TABLE);
    check_tiling(&TABLE, &all);
    let mut expected: Vec<(usize, usize)> = layout.stable.clone();
    expected.extend(churned.lock().unwrap().iter().copied());
    expected.sort_unstable();
    let live: Vec<(usize, usize)> = all
        .iter()
        .filter(|r| r.2 != RegionKind::Free)
        .map(|r| {
            assert_eq!(r.3, RegionState::Live, "retired region left after collect");
            (r.0, r.1)
        })
        .collect();
    assert_eq!(live, expected, "lost or duplicated object regions");
    assert_eq!(TABLE.live_regions(), expected.len());
    check_dirty_accounting(&TABLE);

    // Counters: every lookup ended either on the fast path or on the slow path, each slow
    // path followed an abort, a miss or exhausted retries, and every writer-mutex
    // acquisition was an update of ours or a slow lookup.
    let c = &TABLE.counters;
    let (success, abort, retry, miss, slow, writer) = (
        c.success().get(),
        c.abort().get(),
        c.retry().get(),
        c.miss().get(),
        c.slow().get(),
        c.writer().get(),
    );
    let lookups = LOOKUPS.load(Ordering::Relaxed);
    eprintln!(
        "region_stress: {} reader lookups, {} churn ops in {:?}; table: {lookups} lookups \
         (success {success}, abort {abort}, retry {retry}, miss {miss}, slow {slow}), \
         {} updates, writer {writer}",
        reads.load(Ordering::Relaxed),
        ops.load(Ordering::Relaxed),
        began.elapsed(),
        WRITES.load(Ordering::Relaxed),
    );
    assert_eq!(
        success + slow,
        lookups,
        "a lookup was lost or counted twice"
    );
    assert!(success + slow >= FOUND.load(Ordering::Relaxed));
    assert!(
        abort + miss <= slow && slow <= abort + miss + retry,
        "slow path accounting"
    );
    // A purge's second update is no acquisition when the mutex was busy and it left
    // its ranges to the next writer (`merges_deferred`).
    assert_eq!(
        writer + TABLE.counters.merges_deferred().get(),
        WRITES.load(Ordering::Relaxed) + slow,
        "writer mutex accounting"
    );
    assert!(
        success > 0 && abort + retry + miss > 0,
        "the run never raced a reader against a writer"
    );

    // Free everything and purge it all: each retire, merge and purge write-locks every
    // region again (a leaked read reference would hang here, under the watchdog of the
    // test harness), and once all free space is clean each arena must be one region.
    for &(s, _) in &expected {
        retire(s).unwrap();
        assert_eq!(retire(s), Err(RetireError::DoubleFree));
    }
    write_count();
    TABLE.collect_retired();
    check_tiling(&TABLE, &regions(&TABLE));
    loop {
        write_count();
        if TABLE.purge(0, PurgeMode::DontNeed, usize::MAX) == 0 {
            break;
        }
        write_count(); // the purge's second update, which merges what it cleaned
    }
    let all = regions(&TABLE);
    check_tiling(&TABLE, &all);
    assert!(
        free_dirtiness(&TABLE).values().all(|&d| !d),
        "dirty space left after purging"
    );
    check_merged_back(&all);
    assert_eq!(TABLE.live_regions(), 0);
    check_dirty_accounting(&TABLE);
}

/// `allocate_roomy` must honour `align` like `allocate` does. It centres the object in a
/// free region that `find(4 * len, align)` accepted and falls back to the region's start
/// when rounding the centre down to `align` goes below it; that fallback must be the
/// aligned start, not the region's own (a regression test: with `align > 3 * len` and
/// an unaligned free start the object used to be misaligned).
#[test]
fn allocate_roomy_honours_alignment() {
    static T: RegionTable = RegionTable::new();
    const ALIGN: usize = 1 << 20;
    // Arena base A (ARENA_SIZE-aligned): X = [A, A + ALIGN + 4K) live, then a free region
    // F = [A + ALIGN + 4K, A + 2 ALIGN + 64K) bounded by a live page W. F is the smallest
    // free region that `find(4 * len, ALIGN)` accepts (at A + 2 ALIGN).
    let x = T
        .allocate(ALIGN + PAGE_SIZE, ALIGN, RegionKind::Large)
        .unwrap();
    assert_eq!(x.start % ARENA_SIZE, 0);
    let f_len = ALIGN - PAGE_SIZE + 16 * PAGE_SIZE;
    let f = T.allocate(f_len, PAGE_SIZE, RegionKind::Large).unwrap();
    assert_eq!(f.start, x.start + x.len);
    T.allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large).unwrap();
    T.retire(f.start).unwrap();
    T.collect_retired();
    let len = 4 * PAGE_SIZE;
    let placed = T.allocate_roomy(len, ALIGN, RegionKind::Large).unwrap();
    assert_eq!(
        placed.start % ALIGN,
        0,
        "allocate_roomy returned {:#x}",
        placed.start
    );
}

/// `fork()` while another thread holds a region's read lock: `fork_prepare` takes only the
/// writer mutex, but readers (`find_and_read_lock` users, and `purge`, which holds up to
/// 16 read locks across `madvise` without the mutex) never take it, so the child inherits
/// their reader counts with no thread left to drop them. The child's first update that
/// write-locks such a region (here: freeing it, i.e. `collect_retired`; in real programs,
/// carving a large object out of a free region a purge pass was advising) spins forever
/// in `start_write`. The child must reset every region's lock word after `fork`, which
/// `RegionTable::after_fork_in_child` does (the engine's `fork_child` calls it).
#[test]
fn fork_while_a_region_is_read_locked_leaves_the_child_working() {
    static T: RegionTable = RegionTable::new();
    /// The child gets this long to finish before SIGALRM kills it (it needs ~1 ms).
    const CHILD_SECONDS: u32 = 5;
    let object = T.allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large).unwrap();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let guard = T.find_and_read_lock(object.start).unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        drop(guard);
    });
    locked_rx.recv().unwrap();
    T.fork_prepare();
    // SAFETY: the child only runs the table's code and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: after `fork_prepare`, in the child; `alarm`/`_exit` are async-signal-safe.
        unsafe {
            T.fork_release();
            T.after_fork_in_child();
            libc::alarm(CHILD_SECONDS);
        }
        T.retire(object.start).unwrap();
        T.collect_retired();
        // SAFETY: ends the child without running the harness's exit path.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: after `fork_prepare`, in the parent.
    unsafe { T.fork_release() };
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child hung in start_write on a region read-locked by a thread that does not \
         exist after fork (killed by signal {})",
        libc::WTERMSIG(status)
    );
}

/// Places an object of `len` bytes in `t`, writes every page (resident, so a purge of
/// it stays inside `madvise` for a while), frees it and folds it into free space: a
/// dirty free region. Returns its start.
fn dirty_free_region(t: &'static RegionTable, len: usize) -> usize {
    let o = t.allocate(len, PAGE_SIZE, RegionKind::Large).unwrap();
    // SAFETY: a fresh object of ours, `len` bytes long and mapped read/write.
    unsafe { std::ptr::write_bytes(o.start as *mut u8, 1, len) };
    t.retire(o.start).unwrap();
    t.collect_retired();
    o.start
}

/// Fills the free space of the arena from `from` to its end with a live object, so that
/// a region being purged is the only place a new object fits: placement prefers any
/// other space to a region a purge holds in `madvise`, and only this way does a carve
/// still wait one out (the race the tests below keep covered).
fn fill_rest_of_arena(t: &'static RegionTable, from: usize) {
    let rest = ARENA_SIZE - from % ARENA_SIZE;
    let filler = t.allocate(rest, PAGE_SIZE, RegionKind::Large).unwrap();
    assert_eq!(filler.start, from, "the arena's free rest, filled");
}

/// Starts a full purge of `t` on another thread and returns once it holds the read lock
/// of every region starting at `starts`, i.e. is inside their `madvise` (phase two). On
/// a loaded machine the purge may instead finish before this thread looks; the race is
/// then not exercised, but every caller's end state must hold all the same.
fn purge_in_madvise(t: &'static RegionTable, starts: &[usize]) -> std::thread::JoinHandle<usize> {
    // Pinned while we look at the descriptors: the purge may finish and merge them away
    // meanwhile, and a descriptor that left the tree is freed only after a grace period.
    let pinned = epoch::pin();
    let regions: Vec<*const Region> = starts
        .iter()
        .map(|&s| t.find_and_read_lock(s).unwrap().region() as *const Region)
        .collect();
    let purger = std::thread::spawn(move || t.purge(0, PurgeMode::DontNeed, usize::MAX));
    // SAFETY: each was attached when found, and `pinned` keeps it from being freed.
    while regions.iter().any(|&r| unsafe { &*r }.lock.readers() == 0) && !purger.is_finished() {
        std::hint::spin_loop();
    }
    drop(pinned);
    purger
}

/// A purge changes `dirtiness`, `zeroed` and the table's `dirty_bytes` under the
/// region's *read* lock, after its `madvise`. A writer that reads those fields before it
/// write-locks the region (`carve` reads `dirtiness` and `zeroed` before `start_write`;
/// `absorb` reads the right neighbour's before `detach` locks it) acts on stale values
/// once `start_write` has waited the purge out: here `carve` subtracts the carved length
/// from `dirty_bytes` a second time (the purge already subtracted the whole region), so
/// the counter wraps below zero, and the clean tail is labelled dirty. The purge must
/// finish inside `madvise`'s window for the race to show, so the region is made big
/// enough (64 MiB resident) that `madvise` takes milliseconds.
#[test]
fn a_carve_racing_a_purge_keeps_dirty_accounting() {
    static T: RegionTable = RegionTable::new();
    const BIG: usize = 64 << 20;
    let o = dirty_free_region(&T, BIG);
    assert_eq!(
        T.dirty_bytes(),
        BIG,
        "one dirty free region (dirty never merges clean)"
    );
    fill_rest_of_arena(&T, o + BIG);
    let purger = purge_in_madvise(&T, &[o]);
    let placed = T.allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large).unwrap();
    assert_eq!(purger.join().unwrap(), BIG);
    assert!(
        (o..o + BIG).contains(&placed.start),
        "carved from the purged region"
    );
    let mut dirty_free = 0;
    T.for_each_free_region(|_, len, dirty| dirty_free += if dirty { len } else { 0 });
    assert_eq!(
        (T.dirty_bytes(), dirty_free),
        (0, 0),
        "dirty accounting after a carve waited out a purge (bytes counted, bytes labelled)"
    );
}

/// A purge records the start address of each region it cleaned and, in a second update,
/// looks them up again to merge them with clean neighbours. A writer that moves such a
/// region in between (`grow` rekeys the free neighbour it grows into, after
/// `start_write` has waited the purge out) leaves the key stale: the lookup misses, the
/// moved, now clean region is never merged with its clean neighbour, and free space
/// stays fragmented. Made deterministic as in the test above: 64 MiB of resident pages
/// keep the purge inside `madvise` while the object next to them grows.
#[test]
fn a_grow_racing_a_purge_leaves_free_space_merged() {
    static T: RegionTable = RegionTable::new();
    const BIG: usize = 64 << 20;
    let a = T.allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large).unwrap();
    let b = dirty_free_region(&T, BIG);
    assert_eq!(b, a.start + a.len);
    // Layout: A (live), B (free, dirty), the rest of the arena (free, clean).
    let purger = purge_in_madvise(&T, &[b]);
    assert!(T.grow_in_place(a.start, 2 * PAGE_SIZE));
    assert_eq!(purger.join().unwrap(), BIG);
    let mut free = Vec::new();
    T.for_each_free_region(|s, l, d| free.push((s, l, d)));
    assert!(free.iter().all(|&(_, _, d)| !d), "everything free is clean");
    assert_eq!(
        free.len(),
        1,
        "clean free space after the grown object must be one region: {free:x?}"
    );
}

/// Two adjacent free regions of one arena with the same dirtiness, or `None`.
fn unmerged_free_neighbours(table: &RegionTable) -> Option<[(usize, usize, bool); 2]> {
    let mut free = Vec::new();
    table.for_each_free_region(|s, l, d| free.push((s, l, d)));
    free.windows(2)
        .find(|w| {
            w[0].0 + w[0].1 == w[1].0
                && w[0].0 / ARENA_SIZE == w[1].0 / ARENA_SIZE
                && w[0].2 == w[1].2
        })
        .map(|w| [w[0], w[1]])
}

/// The purge's second update re-merged only the descriptors it cleaned, but a writer
/// running between its two phases, once `start_write` has waited out the `madvise`, sees
/// the region clean and may cut new free regions out of it: `carve` (here, `allocate`,
/// which prefers the dirty region the purge is advising) detaches it and leaves a clean
/// tail, a new descriptor that nobody coalesces, beside the clean space that already
/// followed the region. The stress test's unmerged clean neighbours came from this.
#[test]
fn a_carve_racing_a_purge_leaves_free_space_merged() {
    static T: RegionTable = RegionTable::new();
    const BIG: usize = 64 << 20;
    let o = dirty_free_region(&T, BIG);
    fill_rest_of_arena(&T, o + BIG);
    // Layout: O (free, dirty), the rest of the arena (live).
    let purger = purge_in_madvise(&T, &[o]);
    let placed = T.allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large).unwrap();
    assert_eq!(purger.join().unwrap(), BIG);
    assert!(
        (o..o + BIG).contains(&placed.start),
        "carved from the purged region"
    );
    assert_eq!(
        unmerged_free_neighbours(&T),
        None,
        "the clean tail of a region carved between the purge's phases"
    );
}

/// The same window, seen by a writer that merges: an object whose pages `relocate`
/// moved away with `mremap` leaves clean free space, beside its dirty right neighbour
/// that a purge holds in `madvise`; `coalesce` does not merge with the claimed piece,
/// and the purge's second update merges the cleaned piece with it and with the clean
/// space beyond. (Until the dirty budget, `large::free` purged big objects before
/// retiring them, `mark_purged`, which made the same clean free space.)
#[test]
fn freeing_a_purged_object_racing_a_purge_leaves_free_space_merged() {
    static T: RegionTable = RegionTable::new();
    const BIG: usize = 64 << 20;
    let a = T.allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large).unwrap();
    let b = dirty_free_region(&T, BIG);
    assert_eq!(b, a.start + a.len);
    // Layout: A (live), B (free, dirty), the rest of the arena (free, clean).
    let purger = purge_in_madvise(&T, &[b]);
    let (_, moved) = T
        .relocate(a.start, 2 * PAGE_SIZE, PAGE_SIZE, Space::Base)
        .unwrap();
    assert_eq!(moved, PageMove::Moved, "mremap failed");
    assert_eq!(purger.join().unwrap(), BIG);
    assert_eq!(
        unmerged_free_neighbours(&T),
        None,
        "a clean object freed next to a region being purged"
    );
}

/// Two purges at once (the dirty-budget pass runs on any thread, beside the timed or the
/// background one): the second runs while the first is still inside `madvise` on the
/// region. Once, each subtracted the length from `dirty_bytes`, which wrapped below
/// zero (and a wrapped total above the dirty budget sends every later `purge::tick` into a
/// pass); later the second still repeated the `madvise`. The first purge's pick now
/// claims the region (each of its pieces), so the second skips it: one `madvise` per piece.
#[test]
fn two_purges_of_one_region_count_its_bytes_once() {
    static T: RegionTable = RegionTable::new();
    const BIG: usize = 64 << 20;
    let o = dirty_free_region(&T, BIG);
    let first = purge_in_madvise(&T, &[o]);
    let second = T.purge(0, PurgeMode::DontNeed, usize::MAX);
    let first = first.join().unwrap();
    assert_eq!((first, second), (BIG, 0));
    assert_eq!(
        T.counters.purge_calls().get() as usize,
        BIG / PURGE_PIECE,
        "a piece of the region was purged twice"
    );
    let mut dirty_free = 0;
    T.for_each_free_region(|_, len, dirty| dirty_free += if dirty { len } else { 0 });
    assert_eq!(
        (T.dirty_bytes(), dirty_free),
        (0, 0),
        "dirty accounting after two purges of one region (bytes counted, bytes labelled)"
    );
}

/// Pages of `[start, start + len)` resident now (`mincore`).
fn resident_pages(start: usize, len: usize) -> usize {
    let mut vec = vec![0u8; len.div_ceil(PAGE_SIZE)];
    // SAFETY: `[start, start + len)` is mapped (our table's arena); `vec` has one byte
    // per page.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore");
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

/// A fork while a purge is inside `madvise`: the purge had claimed its regions (stamped
/// `Dirtiness::Purging`, out of `dirty_bytes`), and the child's copy of it never finishes. The child
/// must see those regions dirty again and purge them itself; once, it kept them labelled
/// clean with their pages resident, and `dirty_bytes` short of them, for good. (Found by
/// review; made deterministic by waiting until the purge holds every region's read lock.)
#[test]
fn fork_during_a_purge_leaves_the_childs_claimed_regions_dirty() {
    static T: RegionTable = RegionTable::new();
    const BIG: usize = 32 << 20;
    const CHILD_SECONDS: u32 = 10;
    let mut objects = Vec::new();
    for _ in 0..3 {
        let o = T.allocate(BIG, PAGE_SIZE, RegionKind::Large).unwrap();
        // A live separator, so the three freed objects stay three free regions.
        T.allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large).unwrap();
        // SAFETY: a fresh object of ours, `BIG` bytes long and mapped read/write.
        unsafe { std::ptr::write_bytes(o.start as *mut u8, 1, BIG) };
        objects.push(o.start);
    }
    for &o in &objects {
        T.retire(o).unwrap();
    }
    T.collect_retired();
    let purger = purge_in_madvise(&T, &objects);
    T.fork_prepare();
    // SAFETY: the child only runs the table's code, `mincore` and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: after `fork_prepare`, in the child; `alarm`/`_exit` are async-signal-safe.
        unsafe {
            T.fork_release();
            rangealloc_core::region::epoch::after_fork_in_child();
            T.after_fork_in_child();
            libc::alarm(CHILD_SECONDS);
        }
        let mut labelled = 0;
        T.for_each_free_region(|_, l, dirty| labelled += if dirty { l } else { 0 });
        let accounted = T.dirty_bytes() == labelled;
        while T.purge(0, PurgeMode::DontNeed, usize::MAX) > 0 {}
        let mut resident_clean = 0;
        T.for_each_free_region(|s, l, dirty| {
            if objects.contains(&s) && !dirty && resident_pages(s, l) > 0 {
                resident_clean += 1;
            }
        });
        let code = if !accounted {
            20
        } else {
            resident_clean.min(9)
        };
        // SAFETY: ends the child without running the harness's exit path.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: after `fork_prepare`, in the parent.
    unsafe { T.fork_release() };
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(purger.join().unwrap(), 3 * BIG);
    assert!(
        libc::WIFEXITED(status),
        "child killed by signal {}",
        libc::WTERMSIG(status)
    );
    match libc::WEXITSTATUS(status) {
        0 => {}
        20 => panic!("child: dirty_bytes disagrees with the dirty labels after fork"),
        n => panic!("child: {n} free region(s) labelled clean but resident"),
    }
}

// ------------------------------------------------------------------ across arenas

/// Arenas of `region_arenas_stress`'s set: its churners are started at each home in turn.
const SET_ARENAS: usize = 3;
/// Churners of the set: more than its arenas, so homes repeat and arenas are shared, and
/// at least one churner per arena.
const SET_CHURNERS: usize = 4;
const SET_READERS: usize = 4;
/// Stable objects per arena, each followed by a churned gap.
const SET_STABLE: usize = 16;
/// Objects a churner hands to the exchange, for another churner to free, at most.
const EXCHANGE_MAX: usize = 64;
static SET: Arenas = Arenas::new(SET_ARENAS);

/// The words an object of the set test carries at its start and in its last word: its
/// start, its length, and the thread that placed it.
fn stamp(start: usize, len: usize, owner: usize) {
    // SAFETY: `[start, start + len)` is a live object of ours, at least a page long and
    // mapped read/write, that only its holder writes.
    unsafe {
        (start as *mut [usize; 3]).write_volatile([start, len, MAGIC ^ owner]);
        ((start + len - 8) as *mut usize).write_volatile(start ^ len);
    }
}

/// Checks an object's stamp: the head words are `[start, len, MAGIC ^ owner]` as placed
/// (or as last resized, for the head), and the last word holds `start ^ len`.
fn check_stamp(start: usize, len: usize, owner: usize) {
    // SAFETY: as in `stamp`: a live object the caller holds (or a stable one under a read
    // lock).
    let (head, tail) = unsafe {
        (
            (start as *const [usize; 3]).read_volatile(),
            ((start + len - 8) as *const usize).read_volatile(),
        )
    };
    assert_eq!(
        head,
        [start, len, MAGIC ^ owner],
        "object {start:#x}'s head"
    );
    assert_eq!(tail, start ^ len, "object {start:#x}'s last word");
}

/// The set test's lookup: through the directory (the set routes by address), checked
/// under the read lock, and the arena the directory names must be the one whose walk
/// holds the region (checked at the end) and must not change.
fn set_lookup<R>(addr: usize, check: impl FnOnce(Option<(usize, usize, RegionKind)>) -> R) -> R {
    let arena = Arenas::table_of(addr).map(|t| t as *const RegionTable);
    let guard = SET.find_and_read_lock(addr);
    let seen = guard.as_ref().map(|g| {
        let r = g.region();
        assert!(
            !r.is_detached(),
            "a validated read lock on a detached region"
        );
        assert!(r.contains(addr), "region misses {addr:#x}");
        (r.start(), r.len(), r.kind())
    });
    let result = check(seen);
    if let (Some(g), Some((start, len, kind))) = (&guard, seen) {
        let r = g.region();
        assert_eq!(
            (r.start(), r.len(), r.kind(), r.is_detached()),
            (start, len, kind, false),
            "region changed under a read lock"
        );
    }
    drop(guard);
    assert_eq!(
        Arenas::table_of(addr).map(|t| t as *const RegionTable),
        arena,
        "an address changed arena"
    );
    result
}

/// Per arena: stable objects with free gaps between them, placed in that arena itself.
fn set_layout() -> Vec<(usize, usize)> {
    let mut stable = Vec::new();
    for i in 0..SET_ARENAS {
        let t = SET.table(i);
        let mut gaps = Vec::new();
        for _ in 0..SET_STABLE {
            let s = t
                .allocate(STABLE_PAGES * PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
                .expect("address space");
            stamp(s.start, s.len, usize::MAX);
            stable.push((s.start, s.len));
            gaps.push(t.allocate(GAP_PAGES * PAGE_SIZE, PAGE_SIZE, RegionKind::Large));
        }
        for g in gaps {
            t.retire(g.expect("address space").start).unwrap();
        }
        t.collect_retired();
    }
    stable.sort_unstable();
    stable
}

/// A churner of the set: places in its home arena (or, when that one is busy, another:
/// the set's fallback), grows, shrinks, frees its own objects, and frees objects other
/// churners placed (in their home arenas) through the exchange, checking each object's
/// contents at every step. Returns the objects it keeps, its home and the arenas its
/// placements landed in (a bit per arena).
fn set_churner(
    me: usize,
    seed: u64,
    stop: &AtomicBool,
    exchange: &std::sync::Mutex<Vec<(usize, usize, usize)>>,
) -> (Vec<(usize, usize)>, usize, u32, u64) {
    let mut rng = Rng(seed);
    let mut own: Vec<(usize, usize)> = Vec::new();
    let mut landed = 0u32;
    let mut foreign_frees = 0;
    let home = SET.home();
    let arena_index = |addr: usize| {
        let t = Arenas::table_of(addr).expect("a placed object has an arena");
        (0..SET_ARENAS)
            .find(|&i| std::ptr::eq(SET.table(i), t))
            .expect("the set's own arena")
    };
    while !stop.load(Ordering::Relaxed) {
        let op = rng.below(12);
        if own.is_empty() || (op < 3 && own.len() < CHURN_OBJECTS) {
            let len = (1 + rng.below(CHURN_MAX_PAGES)) * PAGE_SIZE;
            let placed = if op == 0 {
                SET.allocate_roomy(len, PAGE_SIZE, RegionKind::Large)
            } else {
                SET.allocate(len, PAGE_SIZE, RegionKind::Large)
            }
            .expect("address space");
            assert_eq!(placed.len, len);
            landed |= 1 << arena_index(placed.start);
            stamp(placed.start, len, me);
            own.push((placed.start, len));
            continue;
        }
        let i = rng.below(own.len());
        let (start, len) = own[i];
        check_stamp(start, len, me);
        match op {
            3 | 4 => {
                let new_len = len + (1 + rng.below(CHURN_MAX_PAGES)) * PAGE_SIZE;
                if SET.grow_in_place(start, new_len) {
                    // The grown object keeps its contents; its new last word is stamped.
                    check_stamp(start, len, me);
                    own[i].1 = new_len;
                    stamp(start, new_len, me);
                }
            }
            5 if len > PAGE_SIZE => {
                let new_len = (1 + rng.below(len / PAGE_SIZE - 1)) * PAGE_SIZE;
                assert!(SET.shrink_in_place(start, new_len), "shrink refused");
                own[i].1 = new_len;
                stamp(start, new_len, me);
            }
            6 => {
                // To the exchange: another churner (whose home is another arena, most
                // likely) frees it.
                let mut x = exchange.lock().unwrap();
                if x.len() < EXCHANGE_MAX {
                    x.push((start, len, me));
                    own.swap_remove(i);
                }
                continue;
            }
            7 => {
                let theirs = {
                    let mut x = exchange.lock().unwrap();
                    let n = x.len();
                    (n > 0).then(|| x.swap_remove(rng.below(n)))
                };
                if let Some((s, l, owner)) = theirs {
                    check_stamp(s, l, owner);
                    // (No second free to check here: another writer of the arena may
                    // already have folded the range into free space, or reused it.)
                    assert_eq!(SET.retire(s), Ok(()), "a handed-over object's free");
                    foreign_frees += 1;
                }
                continue;
            }
            _ => {
                own.swap_remove(i);
                assert_eq!(SET.retire(start), Ok(()));
                continue;
            }
        }
        let (start, len) = own[i];
        set_lookup(start + rng.below(len), |seen| {
            assert_eq!(
                seen.map(|(s, l, _)| (s, l)),
                Some((start, len)),
                "own object's range"
            );
        });
        if rng.below(64) == 0 {
            SET.collect_retired();
        }
    }
    for &(start, len) in &own {
        check_stamp(start, len, me);
    }
    (own, home, landed, foreign_frees)
}

/// A reader of the set: stable objects of every arena (exact range and contents), and
/// random addresses anywhere in the arenas' spans (structure only).
fn set_reader(stable: &[(usize, usize)], seed: u64, stop: &AtomicBool) -> u64 {
    let mut rng = Rng(seed);
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let (s, l) = stable[rng.below(stable.len())];
        if rng.below(4) != 0 {
            set_lookup(s + rng.below(l), |seen| {
                assert_eq!(seen, Some((s, l, RegionKind::Large)), "a stable object");
                check_stamp(s, l, usize::MAX);
            });
        } else {
            // Somewhere in the gap after a stable object (churned space of its arena).
            let addr = s + l + rng.below(GAP_PAGES * PAGE_SIZE);
            set_lookup(addr, |seen| {
                let (start, len, _) = seen.expect("an arena's span is always covered");
                let i = stable.partition_point(|&(t, u)| t + u <= start);
                if let Some(&(t, u)) = stable.get(i).filter(|&&(t, _)| t < start + len) {
                    assert_eq!((t, u), (start, len), "a region overlaps a stable object");
                }
            });
        }
        done += 1;
    }
    done
}

/// `region_table_stress` across the arenas of a set: churners with different home
/// arenas place, grow, shrink and free objects, some of them placed by others (frees
/// from other threads, into other arenas); readers look up addresses in every arena
/// through the directory; a purger purges the whole set. Every object's contents are
/// checked at each step, and at the end every arena's regions tile its reservations,
/// the live set is exactly the expected one (each object in the arena the directory
/// names), the dirty accounting holds per arena, and everything freed and purged merges
/// back into whole free arenas.
#[test]
fn region_arenas_stress() {
    let stable = Arc::new(set_layout());
    let stop = Arc::new(AtomicBool::new(false));
    let exchange = Arc::new(std::sync::Mutex::new(Vec::new()));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut churners = Vec::new();
    let mut readers = Vec::new();
    for t in 0..SET_CHURNERS {
        let (stop, exchange, done) = (stop.clone(), exchange.clone(), Finished(finished.clone()));
        // Churner `t` at home `t % SET_ARENAS`: the homes cover the set.
        churners.push(spawn_at_home(&SET, t % SET_ARENAS, move || {
            let _done = done;
            set_churner(t, 0x243f_6a88_85a3_08d3 ^ (t as u64 + 1), &stop, &exchange)
        }));
    }
    for t in 0..SET_READERS {
        let (stable, stop, done) = (stable.clone(), stop.clone(), Finished(finished.clone()));
        readers.push(std::thread::spawn(move || {
            let _done = done;
            set_reader(&stable, 0x1319_8a2e_0370_7344 ^ (t as u64 + 1), &stop)
        }));
    }
    let purger = {
        let (stop, done) = (stop.clone(), Finished(finished.clone()));
        std::thread::spawn(move || {
            let _done = done;
            while !stop.load(Ordering::Relaxed) {
                SET.purge(0, PurgeMode::DontNeed, 1 << 20);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    run_and_watch(&stop, &finished, SET_CHURNERS + SET_READERS + 1);
    purger.join().unwrap();
    let reads: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    let mut expected = (*stable).clone();
    let (mut homes, mut landed, mut foreign) = (0u32, 0u32, 0);
    for h in churners {
        let (own, home, arenas, frees) = h.join().unwrap();
        expected.extend(own);
        homes |= 1 << home;
        landed |= arenas;
        foreign += frees;
    }
    // Objects still in the exchange are live too.
    expected.extend(exchange.lock().unwrap().iter().map(|&(s, l, _)| (s, l)));
    expected.sort_unstable();
    eprintln!(
        "region_arenas_stress: {reads} reader lookups, {foreign} frees of other threads' \
         objects, homes {homes:#b}, placements landed in {landed:#b}"
    );
    assert_eq!(
        homes.count_ones() as usize,
        SET_ARENAS,
        "churners' homes cover the set"
    );
    assert!(foreign > 0, "no object was freed by another thread");

    // Per arena: the walk tiles its reservations and holds exactly the objects the
    // directory routes to it.
    SET.collect_retired();
    let mut live = Vec::new();
    for i in 0..SET_ARENAS {
        let t = SET.table(i);
        let all = regions(t);
        check_tiling(t, &all);
        check_dirty_accounting(t);
        for r in all.iter().filter(|r| r.2 != RegionKind::Free) {
            assert_eq!(r.3, RegionState::Live, "retired region left after collect");
            assert!(
                std::ptr::eq(Arenas::table_of(r.0).unwrap(), t),
                "the directory names another arena for {:#x}",
                r.0
            );
            live.push((r.0, r.1));
        }
    }
    live.sort_unstable();
    assert_eq!(live, expected, "lost or duplicated object regions");
    assert_eq!(SET.live_regions(), expected.len());
    for &(s, l) in &expected {
        assert_eq!(SET.object_len(s), Some(l));
    }

    // Free everything (from this thread: a free from another thread than the placer's),
    // purge everything, and every arena must be whole free reservations again.
    for &(s, _) in &expected {
        SET.retire(s).unwrap();
    }
    SET.collect_retired();
    while SET.purge(0, PurgeMode::DontNeed, usize::MAX) > 0 {}
    for i in 0..SET_ARENAS {
        let t = SET.table(i);
        let all = regions(t);
        check_tiling(t, &all);
        check_dirty_accounting(t);
        check_merged_back(&all);
        assert_eq!(t.live_regions(), 0);
    }
}
