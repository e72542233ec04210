//! The per-thread cache of freed medium regions (jemalloc's tcache for large sizes):
//! objects above the small limit and up to `MEDIUM_MAX` are regions of their own, but a
//! freed one stays in the tree, `Cached` (`region::RegionState`), in a bin of its
//! freeing thread's cache, and the next allocation of its size class on that thread takes
//! it back. The common medium alloc/free pair then makes one lock-free lookup (the free's
//! validation) and no tree update, no writer mutex and no page fault. Owns the medium
//! size classes, the cache (its storage is a field of each `Heap`, so it lives and dies
//! with the heap and is reachable from the heap list) and its counters; calls `region`
//! (the state changes), `purge` (the live-bytes gauge, the purge interval), `options`,
//! `os` (the clock), `meta` (the bins' scratch lists), `thread`/`heap`/`init` (to find,
//! or start, the calling thread's cache, and to walk every heap's) .
//!
//! A bin keeps regions only for a class in demand (`Bin::limit`): one its thread has
//! allocated and found empty, or, for a free of another thread's object, one some
//! thread has (`DEMANDED`). A class reached only by `realloc` growth in place is not
//! cached: nobody would take such regions back, and sitting between dirty free ranges
//! they leave those no room to grow into, so growing buffers would be placed in fresh
//! pages (`realloc-growth` faulted 5x and peaked at 4x the RSS; BENCHMARKS.md).
//!
//! Bounds: `SLOTS` regions per bin and `MAX_BYTES` per thread; a region that does not
//! fit pushes out the oldest ones. A garbage collection (at most once per purge
//! interval, from a free) lets go of what a bin did not need during the last interval
//! (its low-water mark), so a thread that stops using a size gives its regions back to
//! the table, where the purge decays them as any freed space. A thread's cache is
//! emptied when it exits (`heap::abandon`), by `flush_all` (the public `purge`), and a
//! `fork` takes every cache lock first, so a child inherits whole caches; a region a
//! vanished thread held outside its cache is retired in the child
//! (`after_fork_in_child`).
//!
//! The cache lock is a leaf: nothing else is locked or called while it is held; regions
//! let go are retired after it is released.

use super::guard_len;
use crate::heap::{self, Heap};
use crate::os::{self, PAGE_SIZE};
use crate::region::CachedRegion;
use crate::stats::Counter;
use crate::sync::SpinLock;
use crate::thread;
use core::sync::atomic::{AtomicU64, Ordering};

/// The largest object served from the cache, as DESIGN.md §4's "medium sizes (up to
/// about 1 MiB)". Above it objects are rare enough, and big enough, that a tree update
/// per allocation is noise, and caching them per thread would pin too much memory.
pub const MEDIUM_MAX: usize = 1 << 20;
/// Medium size classes per doubling: eight, as the small classes, so a rounded-up
/// medium object wastes at most 12.5% of its (virtual) length; its untouched pages cost
/// nothing.
const PER_DOUBLING: usize = 8;
/// log2 of the small limit, where the medium classes start.
const FIRST_SHIFT: u32 = heap::SMALL_MAX.trailing_zeros();
const LAST_SHIFT: u32 = MEDIUM_MAX.trailing_zeros();
/// Medium classes: 40, from 36 KiB to 1 MiB in steps of an eighth of a power of two,
/// every one a page multiple.
pub const BINS: usize = (LAST_SHIFT - FIRST_SHIFT) as usize * PER_DOUBLING;
const _: () = assert!(heap::SMALL_MAX.is_power_of_two());
const _: () = assert!((heap::SMALL_MAX >> 3).is_multiple_of(PAGE_SIZE));
/// Regions kept per class. The `medium` workload (32 live objects per thread over 40
/// classes, a quarter freed by another thread) rarely has more than two of a class free
/// at once; four absorbs its bursts. A bin is a stack: the most recently freed region
/// (the one most likely still in cache and TLB) is reused first.
const SLOTS: usize = 4;
/// Bytes of regions one thread's cache holds at most (object lengths, which count
/// virtual bytes: what is resident is what the program touched). Four of the largest
/// class; chosen with the `medium` workload (BENCHMARKS.md, "Medium sizes").
pub const MAX_BYTES: usize = 8 * MEDIUM_MAX;
/// An allocation takes a region of its own class only (0 classes above). Taking one of
/// up to four classes above (measured: the `medium` workload's log-uniform sizes hit
/// their own class in under half the allocations) broke jemalloc's contract that
/// `nallocx(n)` is exactly the usable size `mallocx(n)` gives (`tests/c/jemalloc_api.c`
/// failed), and `malloc_usable_size` would vary for one request size. A larger fit
/// needs the object's usable length kept apart from its region's.
const FIT_CLASSES: usize = 0;
/// Regions one call may let go of: every slot of every bin, plus one.
const EVICT_MAX: usize = BINS * SLOTS + 1;

/// Allocations served from a cache, and medium allocations that found their bin empty.
pub static HITS: Counter = Counter::new();
pub static MISSES: Counter = Counter::new();
/// Regions a cache let go of (full bin, over budget, garbage collection, flush).
/// (The bytes cached now are counted by the table walk: `SpaceStats::cached`.)
pub static EVICTED: Counter = Counter::new();

/// Medium classes some thread has allocated from its cache and found empty, one bit per
/// bin. A class no thread allocates directly (one that buffers reach only by growing
/// with `realloc`, as in the `realloc-growth` workload) stays clear, and its freed
/// regions go back to the table (`Bin::limit`).
static DEMANDED: AtomicU64 = AtomicU64::new(0);
const _: () = assert!(BINS <= u64::BITS as usize);

/// Records that a thread allocates class `bin` directly.
#[inline]
fn demand(bin: usize) {
    // Relaxed: a hint for other threads' caches, publishing no data; the load first
    // keeps the cache line shared once the bit is set.
    if !demanded(bin) {
        DEMANDED.fetch_or(1 << bin, Ordering::Relaxed);
    }
}

#[inline]
fn demanded(bin: usize) -> bool {
    // Relaxed: see `demand`.
    DEMANDED.load(Ordering::Relaxed) & (1 << bin) != 0
}

/// The medium class length serving an object of `len` bytes (a page multiple), or
/// `len` itself outside the medium range.
#[inline]
pub fn class_len(len: usize) -> usize {
    match bin_of_at_least(len) {
        Some(bin) => bin_len(bin),
        None => len,
    }
}

/// The bin of the smallest class of at least `len` bytes, if `len` is medium.
#[inline]
fn bin_of_at_least(len: usize) -> Option<usize> {
    if len <= heap::SMALL_MAX || len > MEDIUM_MAX {
        return None;
    }
    let k = usize::BITS - 1 - (len - 1).leading_zeros(); // 2^k < len <= 2^(k+1)
    let step_shift = k - 3;
    Some((k - FIRST_SHIFT) as usize * PER_DOUBLING + ((len - 1 - (1 << k)) >> step_shift))
}

/// The bin holding objects of exactly `len` bytes (a class length), if any.
#[inline]
fn bin_of(len: usize) -> Option<usize> {
    bin_of_at_least(len).filter(|&bin| bin_len(bin) == len)
}

/// The object length of medium class `bin`.
#[inline]
const fn bin_len(bin: usize) -> usize {
    let k = FIRST_SHIFT as usize + bin / PER_DOUBLING;
    let j = bin % PER_DOUBLING;
    (1 << k) + (j + 1) * (1 << (k - 3))
}

/// One class's cached regions: `slots[..count]`, oldest first.
struct Bin {
    slots: [Option<CachedRegion>; SLOTS],
    count: u8,
    /// Regions the bin may hold: `SLOTS` once an allocation found the bin empty,
    /// lowered by what a garbage collection found unneeded. A
    /// class the thread never allocates directly (a buffer that reaches it only by
    /// growing in place with `realloc`) keeps 0 and caches nothing: its freed regions
    /// go back to the table as dirty free space, where the next growing buffer is
    /// placed and grows without faults.
    limit: u8,
    /// The fewest regions the bin held since the last garbage collection: that many
    /// were not needed during the interval.
    low_water: u8,
}

/// A thread's cache (a field of its heap; see the module doc).
pub struct RegionCache {
    bins: [Bin; BINS],
    /// Region bytes held (guard pages included).
    bytes: usize,
    /// When the next garbage collection is due (ms); 0 before the first free.
    next_gc_ms: u64,
}

/// Regions let go of under the lock, retired once it is released. Big (every slot of
/// every bin): built only off the common path.
struct Evicted {
    regions: [Option<CachedRegion>; EVICT_MAX],
    count: usize,
}

impl Evicted {
    fn new() -> Self {
        Evicted {
            regions: [const { None }; EVICT_MAX],
            count: 0,
        }
    }

    fn push(&mut self, region: CachedRegion) {
        self.regions[self.count] = Some(region);
        self.count += 1;
    }

    /// Retires them (after the cache lock is released: the lock is a leaf).
    fn retire(&mut self) {
        for region in self.regions[..self.count]
            .iter_mut()
            .filter_map(Option::take)
        {
            region.retire();
        }
        EVICTED.add(self.count as u64);
        self.count = 0;
    }
}

impl RegionCache {
    pub const fn new() -> Self {
        RegionCache {
            bins: [const {
                Bin {
                    slots: [const { None }; SLOTS],
                    count: 0,
                    limit: 0,
                    low_water: 0,
                }
            }; BINS],
            bytes: 0,
            next_gc_ms: 0,
        }
    }

    /// The most recently cached region of class `bin` or of one of the `FIT_CLASSES`
    /// classes above it, the closest first; none found, `bin` may hold one more.
    fn pop_fit(&mut self, bin: usize) -> Option<CachedRegion> {
        let last = (bin + FIT_CLASSES).min(BINS - 1);
        let Some(fit) = (bin..=last).find(|&b| self.bins[b].count > 0) else {
            self.bins[bin].limit = SLOTS as u8;
            demand(bin);
            return None;
        };
        self.pop(fit)
    }

    fn pop(&mut self, bin: usize) -> Option<CachedRegion> {
        let b = &mut self.bins[bin];
        if b.count == 0 {
            return None;
        }
        b.count -= 1;
        b.low_water = b.low_water.min(b.count);
        let region = b.slots[b.count as usize].take()?;
        self.bytes -= region.len();
        Some(region)
    }

    /// Lets go of bin `bin`'s oldest region.
    fn evict_oldest(&mut self, bin: usize, out: &mut Evicted) {
        let b = &mut self.bins[bin];
        if b.count == 0 {
            return;
        }
        let Some(region) = b.slots[0].take() else {
            return;
        };
        b.slots[..b.count as usize].rotate_left(1);
        b.count -= 1;
        b.low_water = b.low_water.min(b.count);
        self.bytes -= region.len();
        out.push(region);
    }

    /// Whether `bin` keeps regions at all: its thread allocated the class since the
    /// last garbage collection, or (for frees of objects another thread allocated)
    /// some thread does (`DEMANDED`).
    #[inline]
    fn admits(&mut self, bin: usize) -> bool {
        let b = &mut self.bins[bin];
        if b.limit == 0 && demanded(bin) {
            b.limit = SLOTS as u8;
        }
        b.limit > 0
    }

    /// Whether `bin` takes a region of `len` bytes without letting go of another.
    #[inline]
    fn fits(&self, bin: usize, len: usize) -> bool {
        self.bins[bin].count < self.bins[bin].limit && self.bytes + len <= MAX_BYTES
    }

    /// Keeps `region` in `bin`, which `fits` it.
    #[inline]
    fn push_fitting(&mut self, bin: usize, region: CachedRegion) {
        self.bytes += region.len();
        let b = &mut self.bins[bin];
        b.slots[b.count as usize] = Some(region);
        b.count += 1;
    }

    /// Keeps `region` in `bin`, letting go of older regions to stay within the bounds.
    /// Returns it when even an empty cache could not hold it.
    fn push(&mut self, bin: usize, region: CachedRegion, out: &mut Evicted) {
        let len = region.len();
        if len > MAX_BYTES || self.bins[bin].limit == 0 {
            out.push(region);
            return;
        }
        if self.bins[bin].count >= self.bins[bin].limit {
            self.evict_oldest(bin, out);
        }
        // Over budget: the oldest regions of the biggest classes go first.
        let mut victim = BINS;
        while self.bytes + len > MAX_BYTES && victim > 0 {
            if self.bins[victim - 1].count == 0 {
                victim -= 1;
                continue;
            }
            self.evict_oldest(victim - 1, out);
        }
        self.push_fitting(bin, region);
    }

    /// Lets go of what each bin did not need since the last collection.
    fn collect(&mut self, out: &mut Evicted) {
        for bin in 0..BINS {
            let unneeded = self.bins[bin].low_water;
            for _ in 0..unneeded {
                self.evict_oldest(bin, out);
            }
            let b = &mut self.bins[bin];
            b.limit = b.limit.saturating_sub(unneeded);
            b.low_water = b.count;
        }
    }

    /// Every region the bins hold.
    fn regions(&self) -> impl Iterator<Item = &CachedRegion> {
        self.bins
            .iter()
            .flat_map(|b| b.slots[..b.count as usize].iter().flatten())
    }

    fn drain(&mut self, out: &mut Evicted) {
        for bin in 0..BINS {
            while self.bins[bin].count > 0 {
                self.evict_oldest(bin, out);
            }
        }
    }
}

impl Default for RegionCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The calling thread's cache, if it has a heap (a thread nested inside the allocator
/// or past its exit hook uses the table directly). A thread's first call here starts
/// it (its heap, and the exit hook that empties the cache), as a first small
/// allocation does: a thread may allocate and free only medium objects. Never called
/// under a region lock (starting a thread may allocate).
#[inline]
fn own_cache() -> Option<&'static SpinLock<RegionCache>> {
    let mut slot = thread::get();
    if slot == thread::UNINIT {
        slot = crate::init::thread_start() as usize;
    }
    if slot < thread::SENTINEL_LIMIT {
        return None;
    }
    // SAFETY: a slot at or above the limit is this thread's heap, which lives forever.
    Some(unsafe { &(*(slot as *mut Heap)).region_cache })
}

/// A cached region for an object of `len` bytes (a class length, guard page included),
/// taken back as a live object: its start and length (at least `len`), or `None` (the
/// caller places a new region).
#[inline]
pub fn take(len: usize) -> Option<(usize, usize)> {
    let bin = bin_of(len - guard_len())?;
    let cache = own_cache()?;
    let (start, len) = {
        let mut c = cache.lock();
        let Some(region) = c.pop_fit(bin) else {
            drop(c);
            MISSES.inc();
            return None;
        };
        let len = region.len();
        // Live under the lock (one store, no call out): a `fork` waits for the lock, so
        // a child never inherits a region popped from its bin and still `Cached`.
        (region.take(), len)
    };
    HITS.inc();
    crate::purge::large_added(len);
    Some((start, len))
}

/// Whether the calling thread can cache freed regions: asked before a free looks its
/// region up (`own_cache` may start the thread, which must not happen under the
/// region's read lock).
#[inline]
pub fn available() -> bool {
    own_cache().is_some()
}

/// Whether a validated live object region of `len` bytes goes to the cache of a
/// thread for which `available` held (asked by `retire_or_cache` under the region's
/// read lock, before it changes the state).
#[inline]
pub fn wants(len: usize) -> bool {
    bin_of(len - guard_len()).is_some()
}

/// Keeps a region `wants` accepted in the calling thread's cache, or retires it when
/// its class has no use for it (`Bin::limit` 0); true when it was retired.
#[inline]
pub fn put(region: CachedRegion) -> bool {
    let len = region.len();
    crate::purge::large_removed(len);
    let (Some(bin), Some(cache)) = (bin_of(len - guard_len()), own_cache()) else {
        // `wants` said yes on this thread a moment ago, and neither answer can change.
        region.retire();
        return true;
    };
    let now = os::now_ms();
    let region = {
        let mut c = cache.lock();
        if !c.admits(bin) {
            drop(c);
            region.retire();
            return true;
        }
        if now < c.next_gc_ms && c.fits(bin, len) {
            c.push_fitting(bin, region);
            return false;
        }
        region
    };
    put_slow(cache, bin, region, now);
    false
}

/// `put` when older regions must go first (a full bin, the byte bound) or a garbage
/// collection is due.
#[cold]
#[inline(never)]
fn put_slow(cache: &SpinLock<RegionCache>, bin: usize, region: CachedRegion, now: u64) {
    let mut out = Evicted::new();
    {
        let mut c = cache.lock();
        c.push(bin, region, &mut out);
        if now >= c.next_gc_ms {
            let interval = crate::purge::interval_ms(crate::options::purge_delay_ms());
            if c.next_gc_ms != 0 {
                c.collect(&mut out);
            }
            c.next_gc_ms = now.saturating_add(interval);
        }
    }
    out.retire();
}

/// Empties `cache` (a thread's exit, a purge).
pub fn flush(cache: &SpinLock<RegionCache>) {
    let mut out = Evicted::new();
    cache.lock().drain(&mut out);
    out.retire();
}

/// Empties every thread's cache (the public `purge`; an idle thread's cache is emptied
/// too, under its lock).
pub fn flush_all() {
    heap::for_each_heap(|h| flush(&h.region_cache));
}

/// The regions `cache` holds, read by the fork child's only thread while the fork still
/// holds every cache's lock (`heap::cached_while_forking`).
///
/// # Safety
/// The caller holds `cache`'s lock by `raw_lock`.
pub unsafe fn held_regions(cache: &SpinLock<RegionCache>) -> usize {
    // SAFETY: caller contract.
    unsafe { cache.held() }.regions().count()
}

/// Repairs the caches in a fork child. A `fork` waits for every cache's lock, but a
/// region is `Cached` outside them at two moments: a free makes it `Cached` (under the
/// region's read lock, which must not wait for a cache lock: `fork` holds the caches'
/// locks while it waits for the arenas' writers, and a writer may wait for that read
/// lock) before `put` takes the lock, and regions a cache lets go are retired after the
/// lock is released (the lock is a leaf). A thread that vanished at such a moment left a
/// region nobody in the child will ever take or retire. So, when the table holds more
/// `Cached` regions (`in_table`, counted by the table's own repair walk) than the
/// caches (`in_caches`, counted before the fork's locks were released), every `Cached`
/// region no cache holds is retired. Nothing is written into a heap unless a region
/// leaked (a child about to `exec` pays no copy-on-write fault for it); the parent's
/// free path pays nothing. (The vanished thread's live-bytes gauge update may be lost
/// with it: the gauge only steers the dirty budget.)
///
/// Returns how many regions it retired.
///
/// # Safety
/// In a fork child's only thread, after the table's repair
/// (`RegionTable::after_fork_in_child`), before the child makes any other thread.
#[cold]
pub unsafe fn after_fork_in_child(in_table: usize, in_caches: usize) -> usize {
    if in_table == in_caches {
        return 0;
    }
    // Each cache's lock is free in the child; taking it is the one write per heap, paid
    // only here. Two passes: count, then copy the starts into metadata memory.
    let mut capacity = 0;
    heap::for_each_heap(|h| capacity += h.region_cache.lock().regions().count());
    let held = match capacity {
        0 => core::ptr::NonNull::<usize>::dangling().as_ptr(),
        _ => crate::meta::alloc(capacity * size_of::<usize>(), align_of::<usize>()) as *mut usize,
    };
    if held.is_null() {
        // Out of metadata memory: the strays stay (a leak, never a double retire).
        return 0;
    }
    let mut count = 0;
    heap::for_each_heap(|h| {
        for region in h.region_cache.lock().regions().take(capacity - count) {
            // SAFETY: below the `capacity` words allocated above.
            unsafe { held.add(count).write(region.start()) };
            count += 1;
        }
    });
    // SAFETY: `count` words written above (none, over a dangling aligned pointer, when
    // `capacity` is 0).
    let starts = unsafe { core::slice::from_raw_parts_mut(held, count) };
    starts.sort_unstable();
    // SAFETY: caller contract; `starts` holds every region the child's caches hold.
    let retired = unsafe {
        crate::region::ARENAS.retire_cached_outside(&|start| starts.binary_search(&start).is_ok())
    };
    if capacity > 0 {
        // SAFETY: allocated above, freed once.
        unsafe { crate::meta::free(held as *mut u8) };
    }
    EVICTED.add(retired as u64);
    retired
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_page_multiples_with_bounded_waste() {
        assert_eq!(BINS, 40);
        assert_eq!(bin_len(0), 36 << 10);
        assert_eq!(bin_len(BINS - 1), MEDIUM_MAX);
        for bin in 0..BINS {
            assert!(bin_len(bin).is_multiple_of(PAGE_SIZE));
            assert_eq!(bin_of(bin_len(bin)), Some(bin));
            // A page less is never this class: it is the class below where the classes
            // are one page apart (36-64 KiB), else no class at all.
            let below = bin
                .checked_sub(1)
                .filter(|&b| bin_len(b) == bin_len(bin) - PAGE_SIZE);
            assert_eq!(bin_of(bin_len(bin) - PAGE_SIZE), below);
        }
        for len in (heap::SMALL_MAX + PAGE_SIZE..=MEDIUM_MAX).step_by(PAGE_SIZE) {
            let class = class_len(len);
            assert!(
                class >= len && (class - len) * 8 <= class,
                "len {len} class {class}"
            );
            assert!(bin_of(class).is_some());
        }
        assert_eq!(class_len(MEDIUM_MAX + PAGE_SIZE), MEDIUM_MAX + PAGE_SIZE);
        assert_eq!(class_len(heap::SMALL_MAX), heap::SMALL_MAX);
        assert_eq!(bin_of(MEDIUM_MAX + PAGE_SIZE), None);
    }
}
