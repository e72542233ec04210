//! Statistics: sharded event counters cheap to bump from many threads, merged on read,
//! and the count of process-wide locks taken on the region-table path. Owns nothing but
//! counters (and the per-thread "on the region path" flag); calls nothing.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards per counter: more than the cores we expect to contend, few enough that a read
/// (summing them) stays cheap.
const SHARDS: usize = 16;

#[repr(align(64))]
struct Padded(AtomicU64);

/// A counter whose increments from different threads usually touch different cache
/// lines. Relaxed throughout: these are statistics with no ordering duties.
pub struct Counter([Padded; SHARDS]);

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn shard() -> usize {
    SHARD.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        s.set(v);
        v
    })
}

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter([const { Padded(AtomicU64::new(0)) }; SHARDS])
    }

    /// Adds `n` (to this thread's shard).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts (the shards wrap; their sum is exact).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.add(n.wrapping_neg());
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The sum of the shards: exact once the updates it should see are done.
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// `N` counters kept shard-major: a thread's shard of all of them is one row of
/// adjacent words (one or two cache lines), where `N` separate `Counter`s would put its
/// shards on `N` lines a kilobyte apart. A structure that counts many events per
/// instance (an arena's table: twelve counters) costs a thread one fresh page for its
/// counters, not three (a page fault each on first use, issue 14's big-buffers), and
/// is 2 KiB rather than 12. Same sharding as `Counter` (a thread's shard, Relaxed).
pub struct CounterSet<const N: usize>([Row<N>; SHARDS]);

/// One shard of a `CounterSet`, on lines no other shard shares.
#[repr(align(64))]
struct Row<const N: usize>([AtomicU64; N]);

impl<const N: usize> CounterSet<N> {
    /// `N` counters at zero.
    pub const fn new() -> Self {
        CounterSet([const { Row([const { AtomicU64::new(0) }; N]) }; SHARDS])
    }

    /// Counter `i` of the set.
    #[inline]
    pub fn at(&self, i: usize) -> CounterRef<'_, N> {
        debug_assert!(i < N);
        CounterRef { set: self, i }
    }
}

impl<const N: usize> Default for CounterSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// One counter of a `CounterSet`, with `Counter`'s operations.
#[derive(Clone, Copy)]
pub struct CounterRef<'a, const N: usize> {
    set: &'a CounterSet<N>,
    i: usize,
}

impl<const N: usize> CounterRef<'_, N> {
    /// Adds `n` (to this thread's shard).
    #[inline]
    pub fn add(self, n: u64) {
        self.set.0[shard()].0[self.i].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(self) {
        self.add(1);
    }

    /// The sum of the shards: exact once the updates it should see are done.
    pub fn get(self) -> u64 {
        self.set.0.iter().fold(0u64, |sum, r| {
            sum.wrapping_add(r.0[self.i].load(Ordering::Relaxed))
        })
    }
}

/// Process-wide locks taken by a thread while it is on the region-table path (placing,
/// freeing, growing, shrinking or purging large objects and segments through
/// `region::ARENAS`): acquisitions of the metadata arena's lock and system calls that
/// take the kernel's `mmap_lock` for write (reservations). The design promises none in
/// steady state: each arena has its own writer lock, and nothing else on that path is
/// shared by the whole process.
pub static REGION_PATH_PROCESS_LOCKS: Counter = Counter::new();

/// The process-wide locks counted in `REGION_PATH_PROCESS_LOCKS` no more, but here:
/// those taken on the region-table path by what `crossbeam-epoch` allocates and frees
/// for itself (the node of each sealed bag of deferred functions, one per 64 deferred
/// batches of a thread) through the allocator's re-entrant path.
pub static REGION_PATH_DEPENDENCY_LOCKS: Counter = Counter::new();

/// Not on the region path / on it / on it, inside a dependency's call.
const OFF: u8 = 0;
const ON: u8 = 1;
const IN_DEPENDENCY: u8 = 2;

thread_local! {
    static ON_REGION_PATH: Cell<u8> = const { Cell::new(OFF) };
}

/// Marks the current thread as on the region-table path until dropped (nests).
pub struct OnRegionPath {
    was: u8,
}

impl OnRegionPath {
    /// Marks the thread until the guard is dropped.
    #[inline]
    pub fn enter() -> Self {
        OnRegionPath {
            was: ON_REGION_PATH.with(|f| f.replace(f.get().max(ON))),
        }
    }
}

impl Drop for OnRegionPath {
    #[inline]
    fn drop(&mut self) {
        let was = self.was;
        ON_REGION_PATH.with(|f| f.set(was));
    }
}

/// Marks a call into a dependency (`crossbeam-epoch`'s pin and defer) until dropped: the
/// process-wide locks it takes count in `REGION_PATH_DEPENDENCY_LOCKS`.
pub struct OnDependency {
    was: u8,
}

impl OnDependency {
    /// Marks the thread until the guard is dropped.
    #[inline]
    pub fn enter() -> Self {
        OnDependency {
            was: ON_REGION_PATH.with(|f| {
                let was = f.get();
                if was == ON {
                    f.set(IN_DEPENDENCY);
                }
                was
            }),
        }
    }
}

impl Drop for OnDependency {
    #[inline]
    fn drop(&mut self) {
        let was = self.was;
        ON_REGION_PATH.with(|f| f.set(was));
    }
}

/// Counts a process-wide lock if the current thread is on the region-table path.
#[inline]
pub fn process_lock_taken() {
    match ON_REGION_PATH.with(|f| f.get()) {
        ON => REGION_PATH_PROCESS_LOCKS.inc(),
        IN_DEPENDENCY => REGION_PATH_DEPENDENCY_LOCKS.inc(),
        _ => {}
    }
}
