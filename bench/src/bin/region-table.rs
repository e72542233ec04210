//! Region-table read scalability (issue 3): concurrent `find_and_read_lock` throughput
//! while one writer churns *other* regions, against the same workload guarded by one
//! global `RwLock<BTreeMap>` (a task-fair `parking_lot` lock and `std`'s), measured in
//! the same run.
//!
//! Readers look up a random address inside a random long-lived object and, under the
//! read lock, read the object's header word and its length (the "work" a `free` or
//! `usable_size` does). The writer allocates, grows, shrinks and frees objects placed in
//! the free gaps *between* the readers' objects, so every update touches a neighbour of
//! a region readers use. In the baseline the writer runs the identical table operations,
//! each inside the global write lock (as a single-lock allocator would place, resize and
//! free), and mirrors them into the `BTreeMap` of live objects the readers search.
//!
//! What the table variant is, now that the process's region table is a set of arenas:
//! one arena, a private `RegionTable` (registered in the arena directory by its first
//! placement, as every arena is), holding both the readers' objects and the writer's,
//! so every update is a structural change of the very arena the readers look up in:
//! the case arenas do nothing for (a thread's own objects usually sit in its home arena,
//! away from other threads' writers). Readers find the arena by address through the
//! directory first (`directory::table_of`), as `free` does, then look up and read-lock.
//! Uses only `std`, `libc` and the engine (`rangealloc::engine`); this binary keeps the
//! system allocator.
//!
//! The writer's pace: readers of the table never block, so with more runnable readers
//! than cores a writer at normal priority gets only its 1/(readers + 1) share of the CPU
//! and falls behind its rate for want of CPU, not of locks (measured: its write-locks
//! waited for readers 0 times in 30k, its mutex 0 times, yet it ran 2-10% of the
//! window), while the fair lock's readers sleep behind a waiting writer and leave it the
//! CPU. The two variants then ran different write loads. So in both variants the writer
//! thread runs at a raised priority (`WriterPriority`), and a cell counts only when both
//! writers kept at least `AT_PACE` of it.
//!
//! Which priority (session 11): nice -10 while the writer naps, and `SCHED_FIFO` from
//! the moment it wakes behind its schedule until it has caught up (`WriterPriority::
//! Bursts`). At nice -10 throughout (sessions 8-10) the fair lock's writer kept pace in
//! only 16 of the 35 target rounds of session 10's five quiet runs (3.1-8.8k of 10k
//! updates/s in the others), so the like-for-like verdict had too few rounds in three
//! runs of five. Timing its loop (`bench/probe/unmerged/rtable11-writer-timing.patch`)
//! showed where its time went, and it was not waiting for the lock: in 0.5 s runs at 8
//! readers (load 3-5) it spent 6-22 ms waiting to acquire the write lock and 441-454 ms
//! inside the write *unlock*, for 2.5-4.7k updates/s. `parking_lot` wakes the parked
//! readers one futex call each, and the readers it wakes took the CPU from it (a nice
//! -10 thread is still scheduled by the fair class, which lets a woken thread preempt
//! it) before it had woken the rest: the writer sat preempted in the middle of its own
//! unlock. Under `SCHED_FIFO` (priority 1, above every fair-class thread), runs
//! interleaved with those spent 16 ms in unlocks and kept 9.3-9.6k updates/s. That is
//! the harness failing to give its load generator the CPU it meant to give, not the lock
//! failing: the lock, its readers and its writer's lock calls are unchanged, and so is
//! the rule that a round counts only with both writers at pace. It is fairer to the
//! baseline in both directions: the stalled unlock cut its updates (a lighter load for
//! its readers) but also kept the readers it had not woken yet parked (a heavier one).
//!
//! Why not `SCHED_FIFO` throughout: it cost the readers of both variants, the table's
//! most. In six interleaved pairs of `cell table 8` (load 8-10) the table's readers did
//! 1.1-2.8 Mops/s beside a FIFO writer and 1.8-5.2 beside a nice -10 one, every pair
//! lower; and in three interleaved pairs of full header runs (load 4-13) the FIFO ones'
//! cells at 8 readers were 0.89-1.30x, the nice -10 ones' 1.60-2.65x (with the fair
//! writer starved). A writer that is FIFO only while it works kept its pace in both variants
//! (9.6-10.4k/s) with the table's readers at 3.0-5.4 Mops/s against 1.3-4.1 beside a
//! nice -10 writer, in four interleaved triples at load 8-9. The switch costs the writer
//! two `sched_setscheduler` calls per burst (a burst is the updates it owes after a
//! nap), in both variants. A writer that cannot reach its rate would never leave FIFO
//! and would own a CPU: so only rates up to `FIFO_MAX_RATE` (the target's 10k/s, which a
//! table update of about 2.4k instructions meets in a few percent of a CPU) use bursts;
//! the sweep's 100k/s and flat-out rows keep nice -10 throughout, as they always had.
//! `REGION_TABLE_WRITER=nice` in the environment gives every writer nice -10
//! throughout, to compare with sessions 8-10 on the same machine. Under FIFO the
//! engine's own waits (`sync::backoff` yields) would not let a fair-class thread run on
//! the writer's CPU; the table's writer waits for readers only of regions they hold,
//! and this bench's readers hold none of the writer's (the `writer waits` column).
//!
//! `cargo run --release -p rangealloc-bench --bin region-table [seconds-per-run
//! [writer-updates-per-s [objects [header|page|sweep|all|writer [steps [purged]]|reader
//! [lookups [rounds]]|cell table|fair|std [readers]|frees [count]]]]]`
//! (`writer`: the writer's steps alone, for callgrind; see `writer_alone`; `reader`: one
//! thread's lookups in each variant alone, for callgrind; see `readers_alone`; `cell`: one
//! run of one variant with the writer, header word, for callgrind or a quick look;
//! `frees`: lookups beside another thread's frees, see `frees_beside_lookups`)

use rangealloc::engine::os::PAGE_SIZE;
use rangealloc::engine::region::{directory, RegionKind, RegionTable};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Reader thread counts; the machine has 2 cores, so 4..16 oversubscribe on purpose
/// (readers are preempted while they hold locks, the case a global lock handles worst).
const READER_COUNTS: [usize; 5] = [1, 2, 4, 8, 16];
/// Long-lived objects the readers look up (the third argument overrides it): 16 Ki
/// objects plus the free gaps between them make ~32 Ki regions, whose descriptors (2 MiB)
/// and tree (about 0.6 MiB), with the objects' header lines, no longer fit in this
/// machine's 2 MiB L2, as in a big process: lookups pay cache misses, as they would there.
const DEFAULT_OBJECTS: usize = 16 * 1024;
/// Free pages left between consecutive objects, where the writer places its objects.
const GAP_PAGES: usize = 8;
/// The writer keeps at most this many objects of its own, each 1..=`CHURN_MAX_PAGES`.
const CHURN_OBJECTS: usize = 512;
const CHURN_MAX_PAGES: usize = 3;
/// Default measuring window per run: 6 configurations (table and two baselines, with and
/// without the writer) x (`REPEATS` rounds x 4 reader counts + `TARGET_REPEATS` at
/// `TARGET_READERS`) x 2 workloads = 228 runs, plus 45 for the writer-rate sweep and
/// `WARM_UP_RUNS`, of 0.5 s: about two and a half minutes in all.
const DEFAULT_WINDOW: Duration = Duration::from_millis(500);
/// Rounds per cell; the table reports the median (single runs on this shared 2-core VM
/// varied by 2x between identical configurations).
const REPEATS: usize = 3;
/// Rounds at `TARGET_READERS`, whose ratio is the verdict: more than `REPEATS`, because
/// the verdict is the median of the rounds in which both writers kept pace (see
/// `like_for_like`), and a round with one starved writer drops out of it.
const TARGET_REPEATS: usize = 7;
/// The verdict needs at least this many like-for-like rounds of `TARGET_REPEATS`.
const MIN_LIKE_FOR_LIKE: usize = 4;
/// Structural updates per second the writer aims at, the same in both variants so the
/// readers of each face the same write load: 10 k/s is a busy large-object workload
/// (each update is one placement, resize or free; in a kernel-VMA allocator each would
/// be an mmap/mremap/munmap). The second argument overrides it; `0` lets the writer run
/// flat out, where each variant's writer gets whatever share of the lock it can take.
const DEFAULT_WRITER_RATE: u64 = 10_000;
/// When ahead of its rate the writer sleeps this long: below the scheduler's tick, so
/// it catches up in small bursts rather than one big one.
const WRITER_NAP: Duration = Duration::from_micros(200);
/// The writer thread's nice value, in both variants, when it runs flat out or may not use
/// `SCHED_FIFO` (see `WriterPriority`; raising a thread's priority needs
/// `CAP_SYS_NICE`: root here and in CI; without it the run says so). -10 weighs 9548
/// against a reader's 1024 in the kernel's fair scheduler: at 16 readers the writer may
/// take up to 37% of the CPUs, several times what 10k updates/s need (a table update is
/// about 2.4k instructions, 12.7k before the free index's finer bins: callgrind, the
/// `writer` part), so it keeps its rate on a loaded machine too; a
/// writer ahead of its rate naps and leaves the CPU to the readers.
const WRITER_NICE: i32 = -10;
/// The `SCHED_FIFO` priority of a paced writer's bursts: the lowest real-time one, above
/// every fair-class thread (the readers), which is all it needs.
const WRITER_FIFO_PRIORITY: i32 = 1;
/// The highest writer rate whose bursts run under `SCHED_FIFO` (see the module doc).
const FIFO_MAX_RATE: u64 = DEFAULT_WRITER_RATE;
/// A writer that completed at least this share of its target rate kept pace.
const AT_PACE: f64 = 0.9;
/// The ratio issue 3 asks for at `TARGET_READERS` readers.
const TARGET_RATIO: f64 = 2.0;
const TARGET_READERS: usize = 8;

static TABLE: RegionTable = RegionTable::new();

/// xorshift: cheap enough not to dominate a ~100 ns lookup.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The readers' objects: (start, len), each starting with its own address as a header.
type Objects = Arc<Vec<(usize, usize)>>;

/// What a reader does under the read lock once it found its object.
#[derive(Clone, Copy)]
enum Work {
    /// Read the object's header word: the bare lookup, as `free` or `usable_size` does.
    Header,
    /// Read the object's whole first page: work the size of a page fault's, which the
    /// kernel's per-VMA lock holds for the zeroing or copying of a page, and of the
    /// per-region work this allocator does under a read lock (a purge, a guard page).
    Page,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Header => "header word",
            Work::Page => "whole page",
        }
    }

    fn on(self, start: usize) -> usize {
        let words = match self {
            Work::Header => 1,
            Work::Page => PAGE_SIZE / size_of::<usize>(),
        };
        // SAFETY: `start` begins a live object of the private table (at least a page,
        // mapped read/write) that lives for the whole run; the caller holds its read lock
        // (table variant) or the global read lock (baseline).
        let object = unsafe { std::slice::from_raw_parts(start as *const usize, words) };
        object.iter().fold(0, |sum, w| sum.wrapping_add(*w))
    }
}

fn setup(count: usize) -> Objects {
    let mut objects = Vec::with_capacity(count);
    let mut gaps = Vec::with_capacity(count);
    for _ in 0..count {
        let o = TABLE
            .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
            .expect("address space");
        // SAFETY: a fresh object of the private table, a page long; nobody else sees it yet.
        unsafe { (o.start as *mut usize).write_volatile(o.start) };
        objects.push((o.start, o.len));
        let gap = TABLE.allocate(GAP_PAGES * PAGE_SIZE, PAGE_SIZE, RegionKind::Large);
        gaps.push(gap.expect("address space").start);
    }
    for g in gaps {
        TABLE.retire(g).expect("a live gap object");
    }
    TABLE.collect_retired();
    Arc::new(objects)
}

/// The structural changes the writer makes; both variants make exactly these.
enum Change {
    Insert(usize, usize),
    Remove(usize),
    Resize(usize, usize),
    None,
}

/// One writer step on the table: allocate (plain or roomy), grow, shrink or free one of
/// the writer's own objects. Never inlined, so that callgrind can count its
/// instructions alone (`--toggle-collect=*churn_step*`, see `writer_alone`).
#[inline(never)]
fn churn_step(rng: &mut Rng, own: &mut Vec<(usize, usize)>) -> Change {
    let op = rng.below(8);
    if own.is_empty() || (op < 3 && own.len() < CHURN_OBJECTS) {
        let len = (1 + rng.below(CHURN_MAX_PAGES)) * PAGE_SIZE;
        let placed = if op == 0 {
            TABLE.allocate_roomy(len, PAGE_SIZE, RegionKind::Large)
        } else {
            TABLE.allocate(len, PAGE_SIZE, RegionKind::Large)
        }
        .expect("address space");
        own.push((placed.start, placed.len));
        return Change::Insert(placed.start, placed.len);
    }
    let i = rng.below(own.len());
    let (start, len) = own[i];
    match op {
        3 | 4 => {
            let new_len = len + PAGE_SIZE;
            if TABLE.grow_in_place(start, new_len) {
                own[i].1 = new_len;
                return Change::Resize(start, new_len);
            }
            Change::None
        }
        5 if len > PAGE_SIZE => {
            let new_len = len - PAGE_SIZE;
            assert!(TABLE.shrink_in_place(start, new_len));
            own[i].1 = new_len;
            Change::Resize(start, new_len)
        }
        _ => {
            own.swap_remove(i);
            TABLE.retire(start).expect("the writer's own object");
            Change::Remove(start)
        }
    }
}

#[derive(Clone, Copy)]
enum Variant {
    Table,
    GlobalLock(Baseline),
}

#[derive(Clone, Copy)]
enum Baseline {
    Std,
    Fair,
}

/// The median run by reader throughput; its counters are the sum over all rounds.
fn median(mut runs: Vec<Run>) -> Run {
    let total: [u64; COUNTERS] = std::array::from_fn(|i| runs.iter().map(|r| r.counters[i]).sum());
    runs.sort_by(|a, b| a.lookups_per_s.total_cmp(&b.lookups_per_s));
    let mut mid = runs.swap_remove(runs.len() / 2);
    mid.counters = total;
    mid
}

struct Run {
    lookups_per_s: f64,
    updates_per_s: f64,
    /// Counter deltas over the run: success, abort, retry, miss, slow, and the writer's
    /// waits: write-locks that waited for readers, mutex acquisitions that waited.
    counters: [u64; COUNTERS],
}

const COUNTERS: usize = 7;

fn counters() -> [u64; COUNTERS] {
    let c = &TABLE.counters;
    [
        c.success().get(),
        c.abort().get(),
        c.retry().get(),
        c.miss().get(),
        c.slow().get(),
        c.reader_waits().get(),
        c.waits().get(),
    ]
}

fn table_reader(objects: &[(usize, usize)], work: Work, seed: u64, stop: &AtomicBool) -> u64 {
    let mut rng = Rng(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (start, len) = objects[rng.below(objects.len())];
        black_box(table_lookup(start + rng.below(len), work));
        n += 1;
    }
    n
}

/// One table reader's lookup: the arena by address, the lock-free lookup and read lock,
/// the work, the unlock. Never inlined, so that callgrind can count it alone
/// (`--toggle-collect=*table_lookup*`, see `readers_alone`).
#[inline(never)]
fn table_lookup(addr: usize, work: Work) -> usize {
    let table = directory::table_of(addr).expect("the table's own arena");
    let guard = table.find_and_read_lock(addr).expect("a live object");
    work.on(guard.start()) + guard.region().len()
}

/// The baseline's map: live objects by start, behind one global lock.
type Live = BTreeMap<usize, (usize, usize)>;

/// The two global locks the baseline is measured with.
struct Maps {
    /// `std::sync::RwLock`: on Linux a futex lock that lets waiting readers in ahead of
    /// a writer that is not running, so oversubscribed readers can starve the writer.
    std: RwLock<Live>,
    /// `parking_lot::RwLock`: task-fair (a waiting writer blocks new readers, and
    /// unlocks hand over fairly), so the writer gets its updates done, as an allocator's
    /// global lock must let a thread that frees or grows a large object make progress.
    fair: parking_lot::RwLock<Live>,
}

impl Maps {
    fn read(&self, lock: Baseline) -> MapRead<'_> {
        match lock {
            Baseline::Std => MapRead::Std(self.std.read().unwrap()),
            Baseline::Fair => MapRead::Fair(self.fair.read()),
        }
    }

    fn write(&self, lock: Baseline) -> MapWrite<'_> {
        match lock {
            Baseline::Std => MapWrite::Std(self.std.write().unwrap()),
            Baseline::Fair => MapWrite::Fair(self.fair.write()),
        }
    }
}

enum MapRead<'a> {
    Std(std::sync::RwLockReadGuard<'a, Live>),
    Fair(parking_lot::RwLockReadGuard<'a, Live>),
}

impl std::ops::Deref for MapRead<'_> {
    type Target = Live;
    fn deref(&self) -> &Live {
        match self {
            MapRead::Std(g) => g,
            MapRead::Fair(g) => g,
        }
    }
}

enum MapWrite<'a> {
    Std(std::sync::RwLockWriteGuard<'a, Live>),
    Fair(parking_lot::RwLockWriteGuard<'a, Live>),
}

impl MapWrite<'_> {
    fn live(&mut self) -> &mut Live {
        match self {
            MapWrite::Std(g) => g,
            MapWrite::Fair(g) => g,
        }
    }
}

/// Baseline reader: the same lookup in a `BTreeMap` of live objects behind one RwLock.
fn map_reader(
    maps: &Maps,
    lock: Baseline,
    objects: &[(usize, usize)],
    work: Work,
    seed: u64,
    stop: &AtomicBool,
) -> u64 {
    let mut rng = Rng(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (start, len) = objects[rng.below(objects.len())];
        black_box(map_lookup(maps, lock, start + rng.below(len), work));
        n += 1;
    }
    n
}

/// One baseline reader's lookup: the global read lock, the map search, the work, the
/// unlock. Never inlined, as `table_lookup` (`--toggle-collect=*map_lookup*`).
#[inline(never)]
fn map_lookup(maps: &Maps, lock: Baseline, addr: usize, work: Work) -> usize {
    let live = maps.read(lock);
    let (&s, &(l, _)) = live.range(..=addr).next_back().expect("a live object");
    assert!(addr < s + l);
    work.on(s) + l
}

/// The `reader` part: `lookups` header-word lookups on this thread in the table, then as
/// many in the fair lock's map, same addresses, no writer: for counting a lookup's
/// instructions and cache misses independently of the machine's load:
/// `valgrind --tool=callgrind --cache-sim=yes --LL=2097152,16,64 region-table 0 0 16384
/// reader 200000 1`, then `callgrind_annotate --inclusive=yes` and divide the inclusive
/// counts of `table_lookup` and `map_lookup` by `lookups` times `rounds`. Outside
/// valgrind it prints each variant's wall time per lookup (the median of `rounds`
/// interleaved rounds): one thread, so no contention, only each read path's own cost.
fn readers_alone(objects: &Objects, maps: &Maps, lookups: u64, rounds: usize) {
    let pass = |f: &dyn Fn(usize) -> usize| {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut sum = 0usize;
        let began = Instant::now();
        for _ in 0..lookups {
            let (start, len) = objects[rng.below(objects.len())];
            sum = sum.wrapping_add(f(start + rng.below(len)));
        }
        (sum, began.elapsed().as_nanos() as f64 / lookups as f64)
    };
    let table = || pass(&|a| table_lookup(a, Work::Header));
    let fair = || pass(&|a| map_lookup(maps, Baseline::Fair, a, Work::Header));
    // Rounds interleave the variants; the median round of each is printed.
    let (mut t_ns, mut f_ns) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let ((t_sum, t), (f_sum, f)) = (table(), fair());
        assert_eq!(t_sum, f_sum, "both variants found the same objects");
        t_ns.push(t);
        f_ns.push(f);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{lookups} lookups per variant and round, one thread, no writer, median of \
         {rounds} interleaved rounds: table {:.1} ns, fair lock {:.1} ns per lookup",
        median(&mut t_ns),
        median(&mut f_ns)
    );
}

/// The `frees` part: one thread looks up the readers' objects (header word, as the
/// readers do) while another frees `frees` one-page objects of the same table, then again
/// while that thread only asks each object's length (`object_len`: the same lookup and
/// read lock, nothing freed). A free writes the table's retired-stack head and live
/// count, a length query neither, so the difference between the two lookup rates is what
/// frees cost lookups through shared cache lines. No writer runs: the freed objects stay
/// on the retired stack until the end. Run it under `chrt -f` so both threads have a CPU.
fn frees_beside_lookups(objects: &Objects, frees: usize) {
    let pass = |free: bool| {
        let own: Vec<usize> = (0..frees)
            .map(|_| {
                TABLE
                    .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
                    .expect("address space")
                    .start
            })
            .collect();
        let done = AtomicBool::new(false);
        let (lookups, elapsed) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
                let (mut n, began) = (0u64, Instant::now());
                while !done.load(Ordering::Relaxed) {
                    let (start, len) = objects[rng.below(objects.len())];
                    black_box(table_lookup(start + rng.below(len), Work::Header));
                    n += 1;
                }
                (n, began.elapsed())
            });
            for &o in &own {
                if free {
                    TABLE.retire(o).expect("our own object");
                } else {
                    black_box(TABLE.object_len(o).expect("our own object"));
                }
            }
            done.store(true, Ordering::Relaxed);
            reader.join().unwrap()
        });
        if !free {
            for o in own {
                TABLE.retire(o).expect("our own object");
            }
        }
        TABLE.collect_retired();
        elapsed.as_nanos() as f64 / lookups as f64
    };
    let (mut with_frees, mut with_queries) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        with_frees.push(pass(true));
        with_queries.push(pass(false));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "lookups beside {frees} frees: {:.1} ns each; beside as many length queries: {:.1} ns \
         (medians of 5 interleaved rounds)",
        median(&mut with_frees),
        median(&mut with_queries)
    );
}

/// The writer: `churn_step` at `rate` updates per second (`0`: flat out); in the
/// baseline each step runs inside the global write lock and is mirrored into the map.
fn writer(variant: Variant, maps: &Maps, rate: u64, stop: &AtomicBool) -> u64 {
    let bursts = raise_priority(rate) == WriterPriority::Bursts;
    // Under `SCHED_FIFO` now: only between waking behind schedule and catching up.
    let mut fifo = false;
    let mut rng = Rng(0xc2b2_ae3d_27d4_eb4f);
    let mut own = Vec::new();
    let mut updates = 0u64;
    let began = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let due = (began.elapsed().as_secs_f64() * rate as f64) as u64;
        if rate != 0 && updates >= due {
            if fifo {
                fifo = !set_fifo(false);
            }
            std::thread::sleep(WRITER_NAP);
            continue;
        }
        if bursts && !fifo {
            fifo = set_fifo(true);
        }
        match variant {
            Variant::Table => {
                churn_step(&mut rng, &mut own);
            }
            Variant::GlobalLock(lock) => {
                let mut live = maps.write(lock);
                match churn_step(&mut rng, &mut own) {
                    Change::Insert(s, l) | Change::Resize(s, l) => {
                        live.live().insert(s, (l, 0));
                    }
                    Change::Remove(s) => {
                        live.live().remove(&s);
                    }
                    Change::None => {}
                }
            }
        }
        updates += 1;
    }
    // Give the writer's objects back so every run starts from the same layout.
    for (s, _) in own {
        TABLE.retire(s).expect("the writer's own object");
        maps.std.write().unwrap().remove(&s);
        maps.fair.write().remove(&s);
    }
    TABLE.collect_retired();
    updates
}

/// The `writer` part: `steps` writer steps on this thread, no readers and no pacing, for
/// counting the instructions of an update independently of the machine's load:
/// `valgrind --tool=callgrind --toggle-collect='*churn_step*' region-table 0 0 16384
/// writer 20000` counts the steps alone (callgrind's total over `steps`). With
/// `purged`, every free region is purged first, so the readers' gaps are clean and the
/// writer's placements look for dirty space among them (the layout after a purge pass).
/// Prints the free space's shape before and after (the free regions a placement may
/// scan).
fn writer_alone(steps: u64, purged: bool) {
    if purged {
        while TABLE.purge(0, rangealloc::PurgeMode::DontNeed, usize::MAX) > 0 {}
    }
    let shape = |when: &str| {
        let s = TABLE.space();
        println!(
            "{when}: {} free regions, {} KiB free, {} KiB of it dirty",
            s.free_regions,
            s.free >> 10,
            s.dirty >> 10
        );
    };
    shape("before");
    let mut rng = Rng(0xc2b2_ae3d_27d4_eb4f);
    let mut own = Vec::new();
    for _ in 0..steps {
        churn_step(&mut rng, &mut own);
    }
    shape(&format!("after {steps} writer steps"));
}

/// The scheduling the writer thread got (`raise_priority`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriterPriority {
    /// Nice `WRITER_NICE` while napping, `SCHED_FIFO` at `WRITER_FIFO_PRIORITY` while
    /// catching up: a writer paced at up to `FIFO_MAX_RATE` (see the module doc).
    Bursts,
    /// Nice `WRITER_NICE` throughout: a writer flat out or above `FIFO_MAX_RATE`,
    /// `REGION_TABLE_WRITER=nice`, or `SCHED_FIFO` was refused.
    Nice,
    /// Neither was permitted: nice 0.
    Normal,
}

impl WriterPriority {
    fn name(self) -> String {
        match self {
            WriterPriority::Bursts => {
                format!("nice {WRITER_NICE} napping, SCHED_FIFO {WRITER_FIFO_PRIORITY} catching up")
            }
            WriterPriority::Nice => format!("nice {WRITER_NICE}"),
            WriterPriority::Normal => "nice 0 (raising it was refused)".to_string(),
        }
    }
}

/// Puts the calling thread under `SCHED_FIFO` at `WRITER_FIFO_PRIORITY` (`fifo`) or back
/// under the fair class (its nice value stays); false if refused.
fn set_fifo(fifo: bool) -> bool {
    let (policy, priority) = if fifo {
        (libc::SCHED_FIFO, WRITER_FIFO_PRIORITY)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a plain syscall on the calling thread (pid 0), with a valid parameter.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// Raises the calling thread's priority for a writer at `rate` updates/s (0: flat out):
/// nice `WRITER_NICE`, and for a writer paced at up to `FIFO_MAX_RATE` (unless
/// `REGION_TABLE_WRITER=nice`) `SCHED_FIFO` bursts if the kernel allows it (tried once
/// here, the thread left in the fair class); what it got.
fn raise_priority(rate: u64) -> WriterPriority {
    // SAFETY: a plain syscall on the calling thread's own id.
    let niced = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            WRITER_NICE,
        ) == 0
    };
    let bursts = std::env::var_os("REGION_TABLE_WRITER").is_none_or(|v| v != "nice")
        && rate != 0
        && rate <= FIFO_MAX_RATE;
    if bursts && set_fifo(true) && set_fifo(false) {
        WriterPriority::Bursts
    } else if niced {
        WriterPriority::Nice
    } else {
        WriterPriority::Normal
    }
}

/// One measurement: `readers` reader threads for `window`, with a writer at `rate`
/// updates/s, or none.
fn run(
    variant: Variant,
    work: Work,
    readers: usize,
    rate: Option<u64>,
    objects: &Objects,
    maps: &Arc<Maps>,
    window: Duration,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let before = counters();
    // The writer first: it raises its priority before the readers take the CPUs, so a
    // writer spawned behind them does not lose the first milliseconds of its window.
    let writer = rate.map(|rate| {
        let (maps, stop) = (maps.clone(), stop.clone());
        std::thread::spawn(move || writer(variant, &maps, rate, &stop))
    });
    let handles: Vec<_> = (0..readers)
        .map(|t| {
            let (objects, maps, stop) = (objects.clone(), maps.clone(), stop.clone());
            let seed = 0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) << 32);
            std::thread::spawn(move || match variant {
                Variant::Table => table_reader(&objects, work, seed, &stop),
                Variant::GlobalLock(lock) => map_reader(&maps, lock, &objects, work, seed, &stop),
            })
        })
        .collect();
    let began = Instant::now();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    let lookups: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let elapsed = began.elapsed().as_secs_f64();
    let updates = writer.map_or(0, |w| w.join().unwrap());
    let after = counters();
    Run {
        lookups_per_s: lookups as f64 / elapsed,
        updates_per_s: updates as f64 / elapsed,
        counters: std::array::from_fn(|i| after[i] - before[i]),
    }
}

/// One workload's table: every reader count, table and both baselines, with the writer
/// and without; returns the table's ratio to the fair lock at `TARGET_READERS` and
/// whether either writer was starved.
fn report(
    work: Work,
    rate: u64,
    objects: &Objects,
    maps: &Arc<Maps>,
    window: Duration,
) -> Option<Verdict> {
    println!("\nReaders' work under the lock: {}\n", work.name());
    println!(
        "| readers | table Mops/s | fair RwLock Mops/s | ratio | std RwLock Mops/s | ratio | \
         writer kupdates/s (table / fair / std) | no writer: table / fair / std Mops/s | \
         table lookups | abort | retry | miss | slow | writer waits: readers / mutex |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut target = None;
    let mut paired = None;
    let mut rounds = Vec::new();
    for readers in READER_COUNTS {
        let fair = Variant::GlobalLock(Baseline::Fair);
        let std = Variant::GlobalLock(Baseline::Std);
        let configs = [
            (Variant::Table, Some(rate)),
            (Variant::Table, None),
            (fair, Some(rate)),
            (fair, None),
            (std, Some(rate)),
            (std, None),
        ];
        // Rounds interleave the configurations, so a slow spell of the machine (it is
        // shared, and a VM) hits all of them; each cell is the median round.
        let mut runs: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
        let repeats = if readers == TARGET_READERS {
            TARGET_REPEATS
        } else {
            REPEATS
        };
        for _ in 0..repeats {
            for (runs, &(variant, writer)) in runs.iter_mut().zip(&configs) {
                runs.push(run(variant, work, readers, writer, objects, maps, window));
            }
        }
        if readers == TARGET_READERS {
            rounds.push((readers, round_cells(&runs)));
            paired = Some(like_for_like(&runs[0], &runs[2], rate));
        }
        let mut medians = runs.into_iter().map(median);
        let mut next = || medians.next().expect("one median per configuration");
        let (table, table_alone, fair, fair_alone, std, std_alone) =
            (next(), next(), next(), next(), next(), next());
        let ratio = |base: &Run| table.lookups_per_s / base.lookups_per_s;
        // A baseline whose writer fell behind ran a lighter workload than the table's.
        // The comparison holds only if both writers did (nearly) the same work: a
        // baseline whose writer fell behind ran its readers against a lighter load, and
        // so did the table if its own writer fell behind (16 always-runnable readers
        // leave a napping writer little CPU; blocked readers of a lock leave it more).
        let slow_writer = |run: &Run| rate != 0 && run.updates_per_s < AT_PACE * rate as f64;
        let starved = |base: &Run| {
            if base.updates_per_s < AT_PACE * table.updates_per_s || slow_writer(base) {
                " (baseline writer starved)"
            } else if table.updates_per_s < AT_PACE * base.updates_per_s || slow_writer(&table) {
                " (table writer starved)"
            } else {
                ""
            }
        };
        let [success, abort, retry, miss, slow, reader_waits, mutex_waits] = table.counters;
        println!(
            "| {readers} | {:.2} | {:.2} | {:.2}x{} | {:.2} | {:.2}x{} | {:.1} / {:.1} / {:.1} | \
             {:.2} / {:.2} / {:.2} | {} | {abort} ({:.4}%) | {retry} | {miss} | {slow} | \
             {reader_waits} / {mutex_waits} |",
            table.lookups_per_s / 1e6,
            fair.lookups_per_s / 1e6,
            ratio(&fair),
            starved(&fair),
            std.lookups_per_s / 1e6,
            ratio(&std),
            starved(&std),
            table.updates_per_s / 1e3,
            fair.updates_per_s / 1e3,
            std.updates_per_s / 1e3,
            table_alone.lookups_per_s / 1e6,
            fair_alone.lookups_per_s / 1e6,
            std_alone.lookups_per_s / 1e6,
            success + slow,
            100.0 * abort as f64 / (success + slow).max(1) as f64,
        );
        if readers == TARGET_READERS {
            target = Some((ratio(&fair), starved(&fair)));
        }
    }
    // Every round of the target row, not only the medians: a median of 3 on this shared
    // VM can be any one of them, and a low ratio reads differently when the table's
    // readers were slow than when the fair lock's were fast.
    for (readers, cells) in rounds {
        println!(
            "\nRounds at {readers} readers (table / fair lock Mops/s with the writer, and \
                  their writers' kupdates/s): {cells}"
        );
    }
    let (cell, starved) = target?;
    Some(Verdict {
        cell,
        starved,
        paired: paired?,
    })
}

/// A workload's result at `TARGET_READERS`: the table's cell ratio to the fair lock (the
/// median rounds of each, as in the table) with its starvation mark, and the paired
/// verdict of `like_for_like`.
struct Verdict {
    cell: f64,
    starved: &'static str,
    /// The median of the like-for-like rounds' ratios, and how many rounds were.
    paired: (Option<f64>, usize),
}

/// The rounds in which the table and the fair lock ran the same write load: both
/// writers at `AT_PACE` of the target rate and of each other. A round pairs the table's
/// run with the fair lock's run right after it (the configurations interleave), so a
/// slow spell of this shared VM hits both sides of a pair; the medians of the table's
/// cells pair runs from different rounds, and a cell whose median run had a slow writer
/// used to void the whole comparison. Returns the median ratio over those rounds (none
/// if fewer than `MIN_LIKE_FOR_LIKE`) and their number.
fn like_for_like(table: &[Run], fair: &[Run], rate: u64) -> (Option<f64>, usize) {
    let at_pace = |run: &Run, other: &Run| {
        (rate == 0 || run.updates_per_s >= AT_PACE * rate as f64)
            && run.updates_per_s >= AT_PACE * other.updates_per_s
    };
    let mut ratios: Vec<f64> = table
        .iter()
        .zip(fair)
        .filter(|(t, f)| at_pace(t, f) && at_pace(f, t))
        .map(|(t, f)| t.lookups_per_s / f.lookups_per_s)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = (n >= MIN_LIKE_FOR_LIKE).then(|| {
        if n % 2 == 1 {
            ratios[n / 2]
        } else {
            (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
        }
    });
    (median, n)
}

/// One line of the target row's rounds: "round: table / fair (writers), ..." from the
/// runs of the table and the fair lock with the writer (configurations 0 and 2).
fn round_cells(runs: &[Vec<Run>]) -> String {
    runs[0]
        .iter()
        .zip(&runs[2])
        .enumerate()
        .map(|(i, (t, f))| {
            format!(
                "{}: {:.2} / {:.2} = {:.2}x ({:.1} / {:.1})",
                i + 1,
                t.lookups_per_s / 1e6,
                f.lookups_per_s / 1e6,
                t.lookups_per_s / f.lookups_per_s,
                t.updates_per_s / 1e3,
                f.updates_per_s / 1e3
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Unmeasured runs before the first measured one, with the writer and the most readers:
/// the table's block cache starts empty after `setup`, and while it warms the writer
/// cuts fresh (cold) blocks. Counted with a probe on the cache's dry path: in one
/// process, three 0.5 s windows cut 2,119 / 1,499 / 0 fresh blocks at 1 reader and
/// 8,286 / 5,717 / 0 at 16 (preempted readers hold more garbage back, so more blocks
/// circulate). Without this, the first configuration measured (the table with its
/// writer, 1 reader, first round) paid the warm-up alone. Both variants' writers use
/// the same table, so warming it serves both.
const WARM_UP_RUNS: usize = 3;

fn warm_up(rate: u64, objects: &Objects, maps: &Arc<Maps>, window: Duration) {
    let readers = READER_COUNTS[READER_COUNTS.len() - 1];
    for _ in 0..WARM_UP_RUNS {
        run(
            Variant::Table,
            Work::Header,
            readers,
            Some(rate),
            objects,
            maps,
            window,
        );
    }
}

/// Writer rates of the sweep (updates/s; 0 = flat out), at `TARGET_READERS` readers.
const SWEEP_RATES: [u64; 4] = [1_000, 10_000, 100_000, 0];

/// How much each variant's readers keep of their no-writer throughput as the writer
/// speeds up: the claim "readers are not slowed by writers of other regions", measured
/// at `TARGET_READERS` readers on the header-word workload.
fn sweep(objects: &Objects, maps: &Arc<Maps>, window: Duration) {
    let readers = TARGET_READERS;
    let work = Work::Header;
    println!(
        "\nWriter-rate sweep, {readers} readers, header word: reader Mops/s with the writer \
         (share of the same variant without it) and the writer's kupdates/s\n"
    );
    println!("| writer target | table | fair RwLock | std RwLock |");
    println!("|---:|---:|---:|---:|");
    let variants = [
        Variant::Table,
        Variant::GlobalLock(Baseline::Fair),
        Variant::GlobalLock(Baseline::Std),
    ];
    let alone: Vec<Run> = variants
        .iter()
        .map(|&v| {
            median(
                (0..REPEATS)
                    .map(|_| run(v, work, readers, None, objects, maps, window))
                    .collect(),
            )
        })
        .collect();
    for rate in SWEEP_RATES {
        let mut runs: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
        for _ in 0..REPEATS {
            for (runs, &v) in runs.iter_mut().zip(&variants) {
                runs.push(run(v, work, readers, Some(rate), objects, maps, window));
            }
        }
        let cells: Vec<String> = runs
            .into_iter()
            .map(median)
            .zip(&alone)
            .map(|(with, alone)| {
                format!(
                    "{:.2} ({:.0}%), {:.1}k/s",
                    with.lookups_per_s / 1e6,
                    100.0 * with.lookups_per_s / alone.lookups_per_s,
                    with.updates_per_s / 1e3
                )
            })
            .collect();
        let target = if rate == 0 {
            "flat out".to_string()
        } else {
            format!("{}k/s", rate / 1000)
        };
        println!("| {target} | {} |", cells.join(" | "));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let window = args
        .next()
        .map(|s| Duration::from_secs_f64(s.parse().expect("seconds per run")))
        .unwrap_or(DEFAULT_WINDOW);
    let rate = args
        .next()
        .map(|s| s.parse().expect("writer updates per second (0: flat out)"))
        .unwrap_or(DEFAULT_WRITER_RATE);
    let count = args
        .next()
        .map(|s| s.parse().expect("reader objects"))
        .unwrap_or(DEFAULT_OBJECTS);
    let objects = setup(count);
    let live: Live = objects.iter().map(|&(s, l)| (s, (l, 0))).collect();
    let maps = Arc::new(Maps {
        std: RwLock::new(live.clone()),
        fair: parking_lot::RwLock::new(live),
    });
    let priority = std::thread::spawn(move || raise_priority(rate))
        .join()
        .unwrap();
    println!(
        "region-table: {count} reader objects with {GAP_PAGES}-page churned gaps between \
         them, in one arena; one writer at {} updates/s, {}; {:.1} s per run; {} CPUs\n",
        if rate == 0 {
            "unlimited".to_string()
        } else {
            rate.to_string()
        },
        priority.name(),
        window.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (works, sweep_rates) = match args.next().as_deref() {
        None | Some("all") => (vec![Work::Header, Work::Page], true),
        Some("header") => (vec![Work::Header], false),
        Some("page") => (vec![Work::Page], false),
        Some("sweep") => (vec![], true),
        Some("writer") => {
            let steps = args
                .next()
                .map_or(20_000, |s| s.parse().expect("writer steps"));
            let purged = match args.next().as_deref() {
                None => false,
                Some("purged") => true,
                Some(other) => panic!("writer steps [purged], not {other:?}"),
            };
            writer_alone(steps, purged);
            return;
        }
        Some("cell") => {
            let variant = match args.next().as_deref() {
                Some("table") => Variant::Table,
                Some("fair") => Variant::GlobalLock(Baseline::Fair),
                Some("std") => Variant::GlobalLock(Baseline::Std),
                other => panic!("cell table|fair|std readers, not {other:?}"),
            };
            let readers = args
                .next()
                .map_or(TARGET_READERS, |s| s.parse().expect("readers"));
            let r = run(
                variant,
                Work::Header,
                readers,
                Some(rate),
                &objects,
                &maps,
                window,
            );
            let [success, abort, retry, miss, slow, reader_waits, mutex_waits] = r.counters;
            println!(
                "{readers} readers, header word, one run: {:.2} Mops/s, writer {:.1} kupdates/s; \
                 table counters: success {success} abort {abort} retry {retry} miss {miss} \
                 slow {slow}, writer waits {reader_waits} / {mutex_waits}",
                r.lookups_per_s / 1e6,
                r.updates_per_s / 1e3
            );
            return;
        }
        Some("frees") => {
            let frees = args.next().map_or(100_000, |s| s.parse().expect("frees"));
            frees_beside_lookups(&objects, frees);
            return;
        }
        Some("reader") => {
            let lookups = args.next().map_or(200_000, |s| s.parse().expect("lookups"));
            let rounds = args.next().map_or(5, |s| s.parse().expect("rounds"));
            readers_alone(&objects, &maps, lookups, rounds);
            return;
        }
        Some(other) => {
            panic!("part: header, page, sweep, all, writer, reader, cell or frees, not {other:?}")
        }
    };
    warm_up(rate, &objects, &maps, window);
    for work in works {
        if let Some(v) = report(work, rate, &objects, &maps, window) {
            let (paired, n) = v.paired;
            let paired_text = paired.map_or_else(
                || format!("fewer than {MIN_LIKE_FOR_LIKE} rounds"),
                |r| format!("{r:.2}x"),
            );
            println!(
                "\n{}: ratio to the fair global lock at {TARGET_READERS} readers: median of the \
                 {n} of {TARGET_REPEATS} rounds with both writers at pace {paired_text}; median \
                 cells {:.2}x{} (issue 3 target >= {TARGET_RATIO:.1}x like-for-like: {})",
                work.name(),
                v.cell,
                v.starved,
                if paired.is_some_and(|r| r >= TARGET_RATIO) {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
    if sweep_rates {
        sweep(&objects, &maps, window);
    }
    println!();
    println!(
        "Cells are the median of {REPEATS} interleaved rounds ({TARGET_REPEATS} at \
         {TARGET_READERS} readers, whose verdict is the median ratio of the rounds in \
         which both writers kept pace, each table run paired with the fair lock's run of \
         the same round). Ratios are table lookups/s \
         over the baseline's, both with the writer running. A variant marked \"writer \
         starved\" completed under 90% of the other's writer updates, or of its target rate, \
         so its readers ran a lighter workload: that ratio is not a like-for-like \
         comparison. Counters are the \
         table's fast-path events in its runs with the writer, summed over the rounds (its own `retire` lookups included); `slow` = \
         lookups finished under the writer mutex; writer waits: the table writer's \
         write-locks that found readers inside, and its mutex acquisitions that found it \
         held."
    );
}
