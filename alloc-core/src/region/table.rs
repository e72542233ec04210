//! `RegionTable`: one arena (its own "mm"): the tree of regions, its writer mutex (the `mmap_lock` analogue, taken
//! only for structural changes) and its sequence counter, with the read side
//! (`find_and_read_lock`, lock-free, and `retire`), the public updates, the purge (in
//! bounded pieces), secure mode's guard pages (`install_guard`, lifted by `retire`) and
//! the diagnostic walks. The updates themselves are in `writer` (`table/writer.rs`);
//! test hooks in `table/hooks.rs`. Calls `tree`, `lock`, `protocol`, `free_index`,
//! `deferred`, `directory`, `epoch`, `os`, `options`, `space` and `thread` (the
//! re-entrancy guard).
//!
//! Read side (free, usable size, purge of one region):
//! pin; r = tree.floor(addr); try-read r; back off if `lock_seq == table_seq`; re-check
//! `detached`, the key and the range (the descriptor may have left the tree or moved
//! since we found it: `Region::read_lock_validated`, which the loom models run too);
//! unpin. The read reference alone then keeps `r` attached: detaching needs
//! `start_write`, which waits readers out. Any failure falls to the slow path, which
//! repeats the lookup under the writer mutex, where it cannot fail spuriously. A free
//! holds its reference only to validate and claim the object (`Live -> Retired`, and
//! the work its caller does on the dead object's pages), and gives it up *before* it
//! pushes the region on the retired stack (`protocol::Region::unlock_and_push_retired`),
//! so the writer that drains the region never waits for a freer preempted after its
//! push. Writers count the waits they do have (`LockCounters::reader_waits`).
//!
//! Write side: every update runs in `write()` (or `try_write()`, which gives up at once
//! if another writer holds the mutex): writer mutex, epoch pin, the retired stack
//! drained and the ranges purges left (`region::deferred`) folded, the update (a `Writer`
//! method, `start_write` on each region it changes), one `end_write_all`, unlock. The
//! mutex, the sequence, the retired stack, the free index and the reservations are this
//! table's alone: the process runs several tables side by side (`region::arenas`), each
//! registered in `region::directory` at its first placement so that an address finds
//! its table without a lock.

use super::deferred::DeferredFolds;
use super::directory;
use super::epoch;
use super::free_index::FreeIndex;
use super::lock::TableSeq;
use super::protocol::{ReadAttempt, RetiredStack};
use super::tree::{OwnLines, RegionTree};
use super::{Dirtiness, Region, RegionKind, RegionState, Space};
use crate::os::{self, PurgeMode};
use crate::stats::{CounterRef, CounterSet};
use crate::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use crate::sync::{SpinGuard, SpinLock};
use crate::Reentrancy;
use core::ptr::NonNull;
use writer::Writer;

mod writer;

#[cfg(test)]
mod hooks;
#[cfg(test)]
use hooks::TestPause;

/// Address space is reserved in arenas of this size (or the request rounded up to it):
/// large enough that steady state never maps again, and free with `MAP_NORESERVE`.
pub const ARENA_SIZE: usize = 1 << 30;

/// The most one purge `madvise` covers. A huge free region is purged in pieces of at
/// most this much, each its own region under its own read lock and claim, so a writer
/// that needs one waits for one piece, never for the whole range. Measured here: a
/// `MADV_DONTNEED` of 16 MiB of resident 4 KiB pages takes 0.9 ms (median 5 ms on the
/// shared 2-core VM), 64 MiB 2.4 ms (10 ms); a 1 GiB region in one call would hold its
/// lock for 40-160 ms. A multiple of the 2 MiB huge page, so pieces cut on huge-page
/// boundaries never split a transparent huge page.
pub const PURGE_PIECE: usize = 16 << 20;

/// Pieces one purge call picks and advises (and so holds read references on at once).
const PURGE_BATCH: usize = 16;
// A group larger than `purge_many` takes would go one piece per call (review11).
const _: () = assert!(PURGE_BATCH <= os::PURGE_MANY_MAX);

/// Fast-path attempts before a reader takes the slow path after finding a stale region.
const STALE_RETRIES: u32 = 2;

/// Counters of the read-side protocol, as the kernel's `VMA_LOCK_*` events, and of the
/// table's purges: one `CounterSet`, so a thread's shard of all of them shares a line
/// (an arena's first use touched three pages of twelve separate counters, issue 14).
pub struct LockCounters(CounterSet<TABLE_COUNTERS>);

/// The counters in `LockCounters`.
const TABLE_COUNTERS: usize = 12;

/// One of them.
pub type TableCounter<'a> = CounterRef<'a, TABLE_COUNTERS>;

impl LockCounters {
    const fn new() -> Self {
        LockCounters(CounterSet::new())
    }

    /// Lookups that got a validated read lock without the writer mutex.
    #[inline]
    pub fn success(&self) -> TableCounter<'_> {
        self.0.at(0)
    }

    /// try-read failed, or the region was write-locked by an update (`lock_seq`).
    #[inline]
    pub fn abort(&self) -> TableCounter<'_> {
        self.0.at(1)
    }

    /// The region found was detached or no longer covered the address.
    #[inline]
    pub fn retry(&self) -> TableCounter<'_> {
        self.0.at(2)
    }

    /// The lock-free lookup found no region covering the address.
    #[inline]
    pub fn miss(&self) -> TableCounter<'_> {
        self.0.at(3)
    }

    /// Lookups finished under the writer mutex.
    #[inline]
    pub fn slow(&self) -> TableCounter<'_> {
        self.0.at(4)
    }

    /// Writer-mutex acquisitions (structural updates and slow lookups).
    #[inline]
    pub fn writer(&self) -> TableCounter<'_> {
        self.0.at(5)
    }

    /// Acquisitions that found the mutex held and waited for it (a `try_write` that
    /// gives up instead is not one).
    #[inline]
    pub fn waits(&self) -> TableCounter<'_> {
        self.0.at(6)
    }

    /// Nanoseconds those acquisitions waited (`os::now_ns` around the wait, read only
    /// when the lock was found held).
    #[inline]
    pub fn wait_ns(&self) -> TableCounter<'_> {
        self.0.at(7)
    }

    /// Write-locks (`start_write`) that found readers inside a region and waited for
    /// them to leave: the one place a writer waits for readers, and where a reader
    /// preempted while holding its reference would stall the update.
    #[inline]
    pub fn reader_waits(&self) -> TableCounter<'_> {
        self.0.at(8)
    }

    /// Pieces `purge` advised (each one `madvise`, or one range of a batched call).
    #[inline]
    pub fn purge_calls(&self) -> TableCounter<'_> {
        self.0.at(9)
    }

    /// System calls `purge` made for them: batched calls (`os::purge_many`, one TLB
    /// flush each) and single ones.
    #[inline]
    pub fn purge_syscalls(&self) -> TableCounter<'_> {
        self.0.at(10)
    }

    /// Purges whose merge-back took no writer-mutex acquisition: every range went to
    /// `deferred` (so each purge is one acquisition, its pick, or two, or one).
    #[inline]
    pub fn merges_deferred(&self) -> TableCounter<'_> {
        self.0.at(11)
    }
}

/// What a reader holds: a validated read reference on one region. The reference, not
/// an epoch guard, keeps the descriptor alive (attached: detaching it needs
/// `start_write`, which waits for the reference to go), so the region is lent for as
/// long as the guard is borrowed.
pub struct ReadGuard {
    region: NonNull<Region>,
    /// The region's start, as the tree gave it (validated equal to the descriptor's).
    start: usize,
}

impl ReadGuard {
    /// Wraps a read reference the caller holds on `region` (validated, or taken under
    /// the writer mutex), found under tree key `start`.
    fn new(region: &Region, start: usize) -> Self {
        ReadGuard {
            region: NonNull::from(region),
            start,
        }
    }

    #[inline]
    pub fn region(&self) -> &Region {
        // SAFETY: our read reference keeps the region attached, and an attached
        // descriptor is never freed.
        unsafe { self.region.as_ref() }
    }

    /// The region's start address. Equal to `region().start()`, but taken from the tree
    /// node the lookup already read: a caller that goes on to touch the region's memory
    /// does not wait for the descriptor's cache miss first (the validating comparison
    /// is a predicted branch, so the CPU runs ahead with this value).
    #[inline]
    pub fn start(&self) -> usize {
        self.start
    }
}

impl ReadGuard {
    /// Ends a retire won under this reference (`Region::claim_live`): gives the
    /// reference up, then pushes the region on `stack` (in that order: see `protocol`).
    fn unlock_and_retire(self, stack: &RetiredStack, between: impl FnOnce()) {
        let region = self.region;
        core::mem::forget(self);
        // SAFETY: this guard was a validated read reference, given up here (not
        // dropped), and the caller won `claim_live(Retired)` under it; the descriptor is
        // still attached (see `unlock_and_push_retired`).
        unsafe { region.as_ref().unlock_and_push_retired(stack, between) };
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        self.region().lock.read_unlock();
    }
}

/// A region in the `Cached` state, owned by whoever holds this handle (a region cache):
/// only `take` or `retire` end it, so exactly one of them runs. It knows its arena.
pub struct CachedRegion {
    region: NonNull<Region>,
    /// Arenas are never freed (statics, or leaked by the arena set).
    table: &'static RegionTable,
}

impl CachedRegion {
    fn region(&self) -> &Region {
        // SAFETY: a cached region stays attached (writers leave `Cached` regions alone)
        // until `take` or `retire`, which consume this handle.
        unsafe { self.region.as_ref() }
    }

    /// Hands the region back to its new owner as a live object (`Cached -> Live`);
    /// returns its start.
    pub fn take(self) -> usize {
        self.table.take_cached(self.region())
    }

    /// Lets the region go (`Cached -> Retired`): its guard page, if any, is lifted and
    /// its arena's next writer folds it into free space, as any retired object.
    pub fn retire(self) {
        self.table.retire_cached(self.region())
    }

    /// The region's start. Relaxed loads: a cached region is never changed.
    pub fn start(&self) -> usize {
        self.region().start()
    }

    /// The region's length (the object's, with its guard page if any).
    #[allow(clippy::len_without_is_empty)] // a region is never empty
    pub fn len(&self) -> usize {
        self.region().len()
    }
}

/// What `retire_or_cache` did with the object.
pub enum Freed {
    /// Retired: the next writer folds it into free space.
    Retired,
    /// Cached: the caller keeps it.
    Cached(CachedRegion),
}

/// The guard page `install_guard` puts after an object: its region's last page.
pub const GUARD_LEN: usize = os::PAGE_SIZE;

impl Region {
    /// Lifts the guard page `install_guard` put at the end of this region, if it is
    /// still there; true when no guard remains. Called by the retire that wins the
    /// region (under its read lock, before anyone can reuse the range) and, for a retire
    /// a fork interrupted or whose lift failed, by the writer that folds the region into
    /// free space.
    pub(crate) fn lift_guard(&self) -> bool {
        // Relaxed: the flag was set under a read lock by the thread that owned the live
        // object; whoever lifts it got the object from that thread (a free is ordered
        // after the allocation by the program) or drains it after the retire's Release
        // push (or is a fork child, alone).
        if !self.guarded.load(Ordering::Relaxed) {
            return true;
        }
        // SAFETY: the region's last page, where `install_guard` put the guard; the
        // object is dead (retired) and nobody reuses the range before this returns.
        if unsafe { os::guard_remove(self.end() - GUARD_LEN, GUARD_LEN) }.is_err() {
            return false;
        }
        self.guarded.store(false, Ordering::Relaxed);
        true
    }
}

/// Why a `retire` was refused: each is misuse by the caller of `free`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireError {
    /// No live object region covers the address.
    NotAllocated,
    /// The address lies inside a region but is not its start.
    Interior,
    /// The region was already freed.
    DoubleFree,
}

/// `repr(C)`: the small field before the free index's list heads (`RegionTable`).
#[repr(C)]
struct WriterState {
    /// Address space reserved from the OS, in bytes.
    reserved: usize,
    free: FreeIndex,
}

// SAFETY: the raw pointers inside the free index are followed only under the mutex.
unsafe impl Send for WriterState {}

/// One arena's table. `repr(C)`, page-aligned, hot fields first: an arena's first use
/// faults in every page of its descriptor it touches (the process's 64 arenas are static
/// data), and 12 separately sharded counters, a 16 KiB huge-unit map and the fields
/// around an 8 KiB list-head array put what one thread touched on 8-9 pages of 37 KiB.
/// Now the counters (shard-major), the small fields, the tree's root and spares, the
/// sequence and the free index's small fields share the first page, and the list heads
/// that one size range uses (bin-major) usually one more (issue 14's big-buffers).
#[repr(C, align(4096))]
pub struct RegionTable {
    pub counters: LockCounters,
    /// This table's id in `region::directory` (0 until its first placement registers it,
    /// once, under the writer mutex).
    id: AtomicU8,
    /// The id this table registers under, fixed when the table was built (the process's
    /// arenas: `Arenas::process`), or 0 to draw one from the directory.
    pub(super) fixed_id: u8,
    /// Per `Space` (indexed by its value): set once the table has reserved address
    /// space of that space (`Writer::add_arena`).
    reserved_any: [AtomicBool; 2],
    live_regions: AtomicUsize,
    /// Bytes in dirty free regions (written under the writer mutex, or by a purge that
    /// holds the region's read lock; Relaxed: a statistic that drives purging).
    dirty_bytes: AtomicUsize,
    /// Bytes in big regions (`counted_retired`) on the retired stack: freed, dirty, not
    /// yet folded into free space by a writer. Counted with `dirty_bytes` by the dirty
    /// budget (`freed_bytes`), so a burst of frees that no allocation follows (a
    /// program's or a phase's last frees) is purged down to the budget at once rather
    /// than held at its peak until a timed pass. Added by the freer before its push,
    /// subtracted by the writer that pops the region (the push/pop pair orders the two,
    /// so it never wraps); Relaxed: a statistic that drives purging.
    retired_bytes: AtomicUsize,
    /// Retired regions waiting to become free space (see `RetiredStack`).
    retired: RetiredStack,
    /// Ranges a purge cleaned and left to this table's next writer to merge back, the
    /// writer mutex being held when it was done (see `region::deferred`).
    deferred: DeferredFolds,
    tree: RegionTree,
    /// On lines of its own: every lookup reads it, and the fields around it are written
    /// by writers and freers.
    seq: OwnLines<TableSeq>,
    /// The writer mutex. A spin-then-yield lock rather than `parking_lot::Mutex`: a
    /// parking lock's `fork` handling is unsafe (a child whose parent had threads parked
    /// on it must wake them through parking_lot's bucket locks, which a vanished thread
    /// may hold: the child hangs on a futex, as `tests/tests/fork_signals.rs` showed),
    /// and parking allocates. Sections under it make no syscall but the rare arena
    /// reservation, so spinning is short.
    writer: SpinLock<WriterState>,
    /// Test hook: stops a purge just before one of its `madvise` calls.
    #[cfg(test)]
    pub(crate) pause_in_madvise: TestPause,
    /// Test hook: stops a retire between its state change and lifting the guard page.
    #[cfg(test)]
    pub(crate) pause_in_retire: TestPause,
    /// Test hook: stops a retire after it gave up its read reference, before it pushes
    /// the region on the retired stack.
    #[cfg(test)]
    pub(crate) pause_after_unlock: TestPause,
}

/// Retired large objects of at least this many bytes count against the dirty budget
/// before a writer drains them (`retired_bytes`); other retired regions only once
/// drained. Big buffers are the ones whose last frees pinned memory at its peak
/// (big-buffers: 5-12 MiB). Counting every retired region raised realloc-growth's
/// `madvise` calls at 8 threads (24,000 buffers) from a median of 35 to about 300:
/// heap segments released as its threads ended pushed the count over the budget's
/// floor, near which its dirty space sits, and each excess purge took space the other
/// threads were reusing; with this bound and segments left out, 0-19. One huge page:
/// where objects are "big" elsewhere (`writer::DIRTY_START_MIN`,
/// `large::HUGE_OBJECT_MIN`).
pub const RETIRED_COUNT_MIN: usize = os::HUGE_PAGE;

/// The bytes a retired region adds to `retired_bytes`: a big large object's length.
/// (A heap segment released when empty is no program's free, and its reuse is the
/// heap's business.)
#[inline]
pub(super) fn counted_retired(region: &Region) -> usize {
    let len = region.len();
    if len >= RETIRED_COUNT_MIN && region.kind() == RegionKind::Large {
        len
    } else {
        0
    }
}

/// The placement policies (see `RegionTable::allocate`, `allocate_roomy`,
/// `allocate_with_room`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Dense,
    Roomy,
    WithRoom { growing: bool, space: Space },
}

impl Placement {
    /// The space this placement draws from.
    pub fn space(self) -> Space {
        match self {
            Placement::Dense | Placement::Roomy => Space::Base,
            Placement::WithRoom { space, .. } => space,
        }
    }
}

/// A live region's description for callers that placed it.
#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub start: usize,
    pub len: usize,
    /// The memory reads as zero (fresh or purged with DONTNEED).
    pub zeroed: bool,
    /// The placement cut the object from the front of dirty free space and left the
    /// rest of it, still dirty, as the free region right after the object
    /// (`RegionTable::purge_at` its end purges it).
    pub dirty_after: bool,
}

impl Default for RegionTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RegionTable {
    // Not indented under the macro, so that merges of new fields stay line-for-line.
    crate::sync::const_fn_unless_loom! {
    pub fn new() -> Self {
        RegionTable {
            id: AtomicU8::new(0),
            fixed_id: 0,
            reserved_any: [AtomicBool::new(false), AtomicBool::new(false)],
            tree: RegionTree::new(),
            seq: OwnLines(TableSeq::new()),
            writer: SpinLock::new(WriterState {
                free: FreeIndex::new(),
                reserved: 0,
            }),
            retired: RetiredStack::new(),
            counters: LockCounters::new(),
            live_regions: AtomicUsize::new(0),
            dirty_bytes: AtomicUsize::new(0),
            retired_bytes: AtomicUsize::new(0),
            deferred: DeferredFolds::new(),
            #[cfg(test)]
            pause_in_madvise: TestPause::new(),
            #[cfg(test)]
            pause_in_retire: TestPause::new(),
            #[cfg(test)]
            pause_after_unlock: TestPause::new(),
        }
    }
    }

    // ------------------------------------------------------------------ read side

    /// The region covering `addr`, read-locked, or `None` if no region covers it.
    #[inline]
    pub fn find_and_read_lock(&self, addr: usize) -> Option<ReadGuard> {
        let _inside = Reentrancy::enter();
        match self.find_and_read_lock_fast(addr) {
            Some(read) => Some(read),
            None => self.find_and_read_lock_slow(addr),
        }
    }

    /// The lock-free lookup alone: `None` sends the caller to the slow path (a miss
    /// included: the lock-free walk may have seen a tree an update was replacing).
    #[inline]
    fn find_and_read_lock_fast(&self, addr: usize) -> Option<ReadGuard> {
        for _ in 0..STALE_RETRIES {
            let guard = epoch::pin();
            let Some((start, region)) = self.tree.floor(addr, &guard) else {
                self.counters.miss().inc();
                break;
            };
            match region.read_lock_validated(start, addr, &self.seq) {
                ReadAttempt::Locked => {}
                ReadAttempt::WriteLocked => {
                    self.counters.abort().inc();
                    break;
                }
                // A detached region, or one an update moved after our tree snapshot.
                ReadAttempt::Moved => {
                    self.counters.retry().inc();
                    continue;
                }
                ReadAttempt::Missed => {
                    self.counters.miss().inc();
                    break;
                }
            }
            self.counters.success().inc();
            return Some(ReadGuard::new(region, start));
        }
        None
    }

    #[cold]
    #[inline(never)]
    fn find_and_read_lock_slow(&self, addr: usize) -> Option<ReadGuard> {
        let _inside = Reentrancy::enter();
        let _writer = self.lock_writer();
        self.counters.slow().inc();
        let guard = epoch::pin();
        // Under the writer mutex the region found is attached.
        let (start, region) = self.tree.floor(addr, &guard)?;
        if !region.contains(addr) {
            return None;
        }
        debug_assert_eq!(region.start(), start, "the tree is current under the mutex");
        // SAFETY: we hold the writer mutex.
        unsafe { region.lock.read_lock_under_writer() };
        Some(ReadGuard::new(region, start))
    }

    /// Frees the object region starting at `addr`: marks it retired (exactly once, which
    /// detects double frees) under its read lock, without the writer mutex. The next
    /// writer folds it into free space.
    pub fn retire(&self, addr: usize) -> Result<(), RetireError> {
        self.retire_with(addr, |_| {})
    }

    /// `retire`, running `prepare` on the validated, still-live region under its read
    /// lock first: the place for work on the object's pages that must finish before
    /// anyone can reuse them (purging a big object) and that needs no process-wide lock.
    /// A guard page from `install_guard` is lifted before `prepare` runs.
    pub fn retire_with(
        &self,
        addr: usize,
        prepare: impl FnOnce(&Region),
    ) -> Result<(), RetireError> {
        self.free_object(addr, |_| false, prepare).map(|_| ())
    }

    /// Frees the object region starting at `addr` as `retire_with` does, unless `keep`
    /// (asked once the region is validated as a live object) wants it cached: then the
    /// region goes `Live -> Cached` by the same compare-and-swap, so a second free is
    /// still caught exactly, and stays in the tree, unchanged, for the caller's cache.
    /// Neither way takes the writer mutex (unless the lock-free lookup fails).
    pub fn retire_or_cache(
        &'static self,
        addr: usize,
        keep: impl FnOnce(&Region) -> bool,
        prepare: impl FnOnce(&Region),
    ) -> Result<Freed, RetireError> {
        Ok(match self.free_object(addr, keep, prepare)? {
            Some(region) => Freed::Cached(CachedRegion {
                region,
                table: self,
            }),
            None => Freed::Retired,
        })
    }

    /// `retire_or_cache`'s work: the region when it was cached, `None` when retired.
    fn free_object(
        &self,
        addr: usize,
        keep: impl FnOnce(&Region) -> bool,
        prepare: impl FnOnce(&Region),
    ) -> Result<Option<NonNull<Region>>, RetireError> {
        let read = self
            .find_and_read_lock(addr)
            .ok_or(RetireError::NotAllocated)?;
        let region = read.region();
        if region.kind() == RegionKind::Free {
            return Err(RetireError::NotAllocated);
        }
        if region.start() != addr {
            return Err(RetireError::Interior);
        }
        if region.state() != RegionState::Live {
            return Err(RetireError::DoubleFree);
        }
        let cached = keep(region);
        let next = if cached {
            RegionState::Cached
        } else {
            RegionState::Retired
        };
        if !region.claim_live(next) {
            return Err(RetireError::DoubleFree);
        }
        if cached {
            // A cached region stays attached: writers only change free regions, regions
            // they drain from the retired stack and live objects their owner resizes
            // (`Writer::live_object_at`), so the descriptor outlives our read lock.
            return Ok(Some(NonNull::from(region)));
        }
        // Only the winning freer prepares; still under our read lock and not yet on the
        // retired stack, so no writer can reuse the range meanwhile. A guard not lifted
        // here (a failed call) is lifted by the writer that drains the region.
        #[cfg(test)]
        self.pause_in_retire.pause_here();
        region.lift_guard();
        prepare(region);
        // Before the push: the writer that pops it subtracts (under our read lock, the
        // length is the one it will see).
        self.retired_bytes
            .fetch_add(counted_retired(region), Ordering::Relaxed);
        read.unlock_and_retire(&self.retired, || {
            #[cfg(test)]
            self.pause_after_unlock.pause_here();
        });
        self.live_regions.fetch_sub(1, Ordering::Relaxed);
        Ok(None)
    }

    /// `CachedRegion::take`.
    fn take_cached(&self, region: &Region) -> usize {
        // Release: the owner's later free (Acquire CAS) sees the object live. Nobody else
        // changes a cached region's state: a stray free of it fails (`DoubleFree`).
        region
            .state
            .store(RegionState::Live as u8, Ordering::Release);
        region.start()
    }

    /// `CachedRegion::retire`.
    fn retire_cached(&self, region: &Region) {
        // Release: publishes the cache's accesses to the writer that drains the region;
        // the handle proves the state is `Cached` and ours.
        region
            .state
            .store(RegionState::Retired as u8, Ordering::Release);
        region.lift_guard();
        // Before the push, as in `free_object`.
        self.retired_bytes
            .fetch_add(counted_retired(region), Ordering::Relaxed);
        self.retired.push(region);
        self.live_regions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Makes the last page of the live object region starting at `addr` fault on any
    /// access (secure mode's guard after a large object). The region records it before
    /// the guard goes in, and its retire lifts it, so the range is never reused with a
    /// guard inside, even by a fork child that inherits a retire half done.
    pub fn install_guard(&self, addr: usize) -> Result<(), os::OsError> {
        let read = self.find_and_read_lock(addr).ok_or(os::OsError {
            call: os::Syscall::MadviseGuard,
            errno: libc::EINVAL,
        })?;
        let region = read.region();
        debug_assert!(region.start() == addr && region.kind() != RegionKind::Free);
        // Relaxed: see `lift_guard`.
        region.guarded.store(true, Ordering::Relaxed);
        let page = region.end() - GUARD_LEN;
        // SAFETY: the last page of a live object of the caller's, which holds no object
        // bytes (the caller sized the object to leave it out).
        let installed = unsafe { os::guard_install(page, GUARD_LEN) };
        if installed.is_err() {
            region.guarded.store(false, Ordering::Relaxed);
        }
        installed
    }

    /// Moves the pages of the live object at `from` into the live object region that
    /// starts at `to`, in `space` (`move_pages_into`), under the destination's read lock
    /// and without the writer mutex: for a move between objects of different arenas.
    /// `PageMove::Copy` when no such region is here, when the move is not tried
    /// (see `move_pages_into`), or `mremap` failed (the caller copies what did not
    /// move); `PageMove::Lost` when the failed move lost the destination (the caller
    /// leaves that object allocated for good and copies into another).
    ///
    /// # Safety
    /// `from` is a live object of the caller's, at least `len` bytes, whose content is
    /// not needed after the move; the object at `to` is the caller's too, nobody else
    /// knows it yet, and its first `len` bytes hold nothing.
    pub unsafe fn move_pages_into(
        &self,
        from: usize,
        from_moved_in: bool,
        to: usize,
        len: usize,
        space: Space,
    ) -> PageMove {
        let Some(read) = self.find_and_read_lock(to) else {
            return PageMove::Copy { moved: 0 };
        };
        let dest = read.region();
        if dest.start() != to || dest.len() < len || dest.state() != RegionState::Live {
            return PageMove::Copy { moved: 0 };
        }
        // SAFETY: caller contract; the read reference keeps `dest` attached and live.
        unsafe { move_pages_into(from, from_moved_in, dest, len, space) }
    }

    /// Whether the live object at `addr` may hold pages moved in by `mremap`
    /// (`Region::holds_moved_pages`), asked without the writer mutex, which a move
    /// through another arena does not wait for: the lock-free lookup only, and `true`
    /// when it does not answer. The mark of an object is changed only by its owner's
    /// calls (its move, its growth), so it holds while the owner is inside `realloc`.
    pub fn may_hold_moved_pages(&self, addr: usize) -> bool {
        let _inside = Reentrancy::enter();
        self.find_and_read_lock_fast(addr)
            .is_none_or(|read| read.region().start() != addr || read.region().holds_moved_pages())
    }

    /// The length of the live object region starting at `addr`.
    pub fn object_len(&self, addr: usize) -> Option<usize> {
        self.live_object(addr, Region::len)
    }

    /// Runs `f` on the live object region starting at `addr`, under its read lock.
    pub fn live_object<T>(&self, addr: usize, f: impl FnOnce(&Region) -> T) -> Option<T> {
        let read = self.find_and_read_lock(addr)?;
        let r = read.region();
        (r.kind() != RegionKind::Free && r.start() == addr && r.state() == RegionState::Live)
            .then(|| f(r))
    }

    // ----------------------------------------------------------------- write side

    /// Takes the writer mutex, counting the acquisition and, when it was held, the wait
    /// and its length.
    fn lock_writer(&self) -> SpinGuard<'_, WriterState> {
        self.counters.writer().inc();
        if let Some(state) = self.writer.try_lock() {
            return state;
        }
        self.lock_writer_contended()
    }

    #[cold]
    #[inline(never)]
    fn lock_writer_contended(&self) -> SpinGuard<'_, WriterState> {
        let since = os::now_ns();
        let state = self.writer.lock();
        self.counters.waits().inc();
        self.counters
            .wait_ns()
            .add(os::now_ns().saturating_sub(since));
        state
    }

    fn write<R>(&self, update: impl FnOnce(&mut Writer<'_>) -> R) -> R {
        let _inside = Reentrancy::enter();
        let state = self.lock_writer();
        self.write_locked(state, true, update)
    }

    /// `write`, unless another writer holds the mutex now (then `None` at once, nothing
    /// counted but nothing waited either); `may_reserve` false forbids new reservations.
    fn try_write<R>(
        &self,
        may_reserve: bool,
        update: impl FnOnce(&mut Writer<'_>) -> R,
    ) -> Option<R> {
        let _inside = Reentrancy::enter();
        let state = self.writer.try_lock()?;
        self.counters.writer().inc();
        Some(self.write_locked(state, may_reserve, update))
    }

    fn write_locked<R>(
        &self,
        mut state: SpinGuard<'_, WriterState>,
        may_reserve: bool,
        update: impl FnOnce(&mut Writer<'_>) -> R,
    ) -> R {
        let guard = epoch::pin();
        let mut writer = Writer {
            table: self,
            state: &mut state,
            guard: &guard,
            may_reserve,
            refused_reserve: false,
        };
        writer.drain_retired();
        writer.fold_deferred();
        let result = update(&mut writer);
        // SAFETY: we hold the writer mutex; this ends the update.
        unsafe { self.seq.end_write_all() };
        // The blocks this update unlinked wait in the arena's batch (`blocks`), which
        // goes to the collector when full; nothing is freed to `meta` here.
        drop(state);
        result
    }

    /// This table's directory id, registering it first if it has none (the first
    /// placement does: only a registered table may reserve address space, since every
    /// reservation is recorded in the directory under the table's id). 0 when the
    /// directory has no id left.
    #[inline]
    fn directory_id(&'static self) -> u8 {
        // Acquire pairs with the Release in `register_once`: whoever sees the id also
        // sees the directory entry published under it, before it writes the id into the
        // slot map for a reservation (a reader of that slot then finds the table).
        match self.id.load(Ordering::Acquire) {
            0 => self.register_once(),
            id => id,
        }
    }

    /// Registers this table in the directory exactly once: under the writer mutex, so
    /// first placements racing in one table spend one id, not one each (the directory
    /// has 255), and no registration is half done across `fork` (`fork_prepare` holds
    /// every arena's mutex). A failure leaves the id 0, to be tried again.
    #[cold]
    #[inline(never)]
    fn register_once(&'static self) -> u8 {
        let _inside = Reentrancy::enter();
        // The mutex itself, not `lock_writer`: a registration is not an update, and the
        // writer counters count updates (region_stress checks them exactly).
        let _state = self.writer.lock();
        // Relaxed: under the mutex, the one that registered stored it under the mutex.
        let id = self.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        let new = match self.fixed_id {
            0 => directory::register(self).unwrap_or(0),
            fixed => {
                directory::register_fixed(self, fixed);
                fixed
            }
        };
        if new != 0 {
            // Before the id is published: this arena's writers (ordered after by the
            // mutex) free tree blocks onto the owner's `EXPIRED` stack.
            self.tree.blocks().set_owner(new);
        }
        // Release pairs with the Acquire in `directory_id`.
        self.id.store(new, Ordering::Release);
        new
    }

    /// True once this table has been asked to place anything (it has a directory id).
    pub fn in_use(&self) -> bool {
        self.id.load(Ordering::Relaxed) != 0
    }

    /// True once this table has address space of its own in `space` to place in.
    pub fn has_space(&self, space: Space) -> bool {
        // Relaxed: a hint for where to try first; placement itself runs under the mutex.
        self.reserved_any[space as usize].load(Ordering::Relaxed)
    }

    /// Places a new live region by `how`. `try_only`: give up at once (`None`) if
    /// another writer holds this table's mutex; `may_reserve` false: never reserve new
    /// address space (`None` where a reservation would be needed). `region::arenas`
    /// tries its tables this way before it waits, or reserves, in the thread's own.
    pub fn place(
        &'static self,
        how: Placement,
        len: usize,
        align: usize,
        kind: RegionKind,
        try_only: bool,
        may_reserve: bool,
    ) -> Option<Placed> {
        self.place_with(how, len, align, kind, try_only, may_reserve)
            .flatten()
    }

    /// `place` with try-lock, telling a busy mutex (`None`: nothing tried) from a
    /// placement that failed (`Some(None)`: no room, or no reservation could be made).
    pub fn try_place(
        &'static self,
        how: Placement,
        len: usize,
        align: usize,
        kind: RegionKind,
        may_reserve: bool,
    ) -> Option<Option<Placed>> {
        self.place_with(how, len, align, kind, true, may_reserve)
    }

    /// `place`'s work: `None` only when `try_only` found the mutex held.
    fn place_with(
        &'static self,
        how: Placement,
        len: usize,
        align: usize,
        kind: RegionKind,
        try_only: bool,
        may_reserve: bool,
    ) -> Option<Option<Placed>> {
        debug_assert!(kind != RegionKind::Free);
        if self.directory_id() == 0 {
            return Some(None);
        }
        let update = |w: &mut Writer<'_>| match how {
            Placement::Dense => w.allocate(len, align, kind, Space::Base),
            Placement::Roomy => w.allocate_roomy(len, align, kind),
            Placement::WithRoom { growing, space } => {
                w.allocate_with_room(len, align, kind, growing, space)
            }
        };
        let placed = if try_only {
            self.try_write(may_reserve, update)?
        } else {
            let _inside = Reentrancy::enter();
            let state = self.lock_writer();
            self.write_locked(state, may_reserve, update)
        };
        if placed.is_some() {
            self.live_regions.fetch_add(1, Ordering::Relaxed);
        }
        Some(placed)
    }

    /// Places a new live region of `len` bytes (page multiple) aligned to `align`.
    pub fn allocate(&'static self, len: usize, align: usize, kind: RegionKind) -> Option<Placed> {
        self.place(Placement::Dense, len, align, kind, false, true)
    }

    /// Places a new live region where at least three times its length is free around
    /// it, in the middle of that space, so it can later grow in place. Used when an object
    /// moves because it grew: it is likely to grow again. Falls back to `allocate`.
    pub fn allocate_roomy(
        &'static self,
        len: usize,
        align: usize,
        kind: RegionKind,
    ) -> Option<Placed> {
        self.place(Placement::Roomy, len, align, kind, false, true)
    }

    /// Places a new live region of `len` bytes with free address space after it to grow
    /// into (`writer::growth_room`): in dirty space where some fits, else clean, else a
    /// new arena; densely (`allocate`) when none has room. Large objects use this; a
    /// `growing` one (a realloc's destination) takes clean space with room before dirty
    /// space without. Only reservations of `space` are used; in `Space::Huge` the region
    /// starts on a 2 MiB boundary.
    pub fn allocate_with_room(
        &'static self,
        len: usize,
        align: usize,
        kind: RegionKind,
        growing: bool,
        space: Space,
    ) -> Option<Placed> {
        self.place(
            Placement::WithRoom { growing, space },
            len,
            align,
            kind,
            false,
            true,
        )
    }

    /// Grows the live object region at `addr` to `new_len` into a free neighbour.
    /// False when the neighbour is not free or too small (the caller moves instead).
    pub fn grow_in_place(&self, addr: usize, new_len: usize) -> bool {
        self.write(|w| w.grow(addr, new_len))
    }

    /// Runs `f` while another thread holds this table's writer mutex, as a long update
    /// would (tests: an arena kept busy). The holder lets go once `f` has returned, or
    /// earlier if some other writer got the mutex meanwhile (`f` waited: the caller's
    /// `waits` assertion then fails instead of the test hanging).
    #[cfg(test)]
    pub(crate) fn while_writer_busy<R>(&self, f: impl FnOnce() -> R) -> R {
        use core::sync::atomic::AtomicBool;
        let writers = self.counters.writer().get();
        let done = AtomicBool::new(false);
        let held = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _busy = self.writer.lock();
                // SeqCst: test-only handshake, ordering not under study.
                held.store(true, Ordering::SeqCst);
                while !done.load(Ordering::SeqCst) && self.counters.writer().get() == writers {
                    std::hint::spin_loop();
                }
            });
            while !held.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            let out = f();
            done.store(true, Ordering::SeqCst);
            out
        })
    }

    /// `grow_in_place`, unless another writer holds the mutex now: then `None` at once,
    /// nothing waited (the caller can move the object through another arena instead).
    pub fn try_grow_in_place(&self, addr: usize, new_len: usize) -> Option<bool> {
        self.try_write(true, |w| w.grow(addr, new_len))
    }

    /// Moves the live large object at `addr` to a new region of `new_len` bytes (more
    /// than its length) in `space`, moving its pages with `mremap` (see
    /// `Writer::relocate`). `Some((placed, PageMove::Moved))`: moved, the old range is
    /// free space. `Some((placed, PageMove::Copy { moved }))`: the move stopped, the new
    /// region is live and holds the first `moved` bytes, and the caller copies the rest
    /// and frees the old one (a destination the failure lost stays allocated, unused,
    /// and `placed` is another). `None`: no room for the new region.
    pub fn relocate(
        &self,
        addr: usize,
        new_len: usize,
        align: usize,
        space: Space,
    ) -> Option<(Placed, PageMove)> {
        let (placed, moved) = self.write(|w| w.relocate(addr, new_len, align, space))?;
        if moved != PageMove::Moved {
            self.live_regions.fetch_add(1, Ordering::Relaxed);
        }
        Some((placed, moved))
    }

    /// Shrinks the live object region at `addr` to `new_len`, giving the tail back.
    pub fn shrink_in_place(&self, addr: usize, new_len: usize) -> bool {
        self.write(|w| w.shrink(addr, new_len))
    }

    /// Folds retired regions into free space now (normally done by the next writer).
    pub fn collect_retired(&self) {
        self.write(|_| ())
    }

    /// Purges free regions dirty for at least `delay_ms`, at most `budget` bytes (give or
    /// take a page) in at most 16 pieces of at most `PURGE_PIECE` bytes each (call again
    /// while it returns nonzero to purge them all), advised together by one
    /// `os::purge_many` call per run of pieces up to `PURGE_PIECE` bytes in all (one TLB
    /// flush for the run; the option `purge_batch`), else one `madvise` each. The writer mutex is held
    /// only to pick them and to merge them back after, if it is free then (`merge_back`);
    /// a region bigger than what is left of the budget, or than a
    /// piece, is first cut into pieces from its top end (`split_for_purge`: the dirty
    /// space left stays at the region's start, where placement reuses it), each its own
    /// region. Each `madvise` runs under its
    /// piece's read lock (a batched call: under the read locks of its run of pieces, at
    /// most `PURGE_PIECE` bytes in all): writers place around claimed pieces and do not
    /// merge with them (`FreeIndex::find`, `coalesce`); one that needs that very piece
    /// (the only space that fits, or the neighbour an object grows into) waits for one
    /// call.
    ///
    /// Picking a region claims it: it is stamped `Purging` (which reads as clean) and
    /// leaves `dirty_bytes` at once, so a purge running beside this one (a dirty-budget
    /// pass beside the timed one) skips it instead of repeating the `madvise`. No writer
    /// sees the stamp: everything that acts on a region's dirtiness write-locks it first,
    /// which waits for our read lock. A failed `madvise` puts the dirty stamp back; a fork
    /// child, whose copy of this purge never ends, does too (`after_fork_in_child`).
    pub fn purge(&self, delay_ms: u64, mode: PurgeMode, budget: usize) -> usize {
        self.purge_with(delay_ms, mode, budget, false, None)
    }

    /// Purges the dirty free region that starts at `addr`, whatever its age (nothing
    /// when the region there is not free and dirty); returns the bytes purged. As
    /// `purge` (the same claim, `madvise` under the piece's read lock, merge back), for
    /// one region a caller knows it will not reuse: the dirty rest of a hole that a
    /// smaller object took (`large`).
    pub fn purge_at(&self, addr: usize, mode: PurgeMode) -> usize {
        self.purge_with(0, mode, usize::MAX, false, Some(addr))
    }

    /// `purge`, unless another writer holds the mutex now: then 0 at once, nothing
    /// purged and nothing waited. For the passes an allocator call runs on its way
    /// (`purge::tick`): a purge can be put off, but a thread waiting for a preempted
    /// writer on a busy machine waits a scheduler slice (issue 16: most of the `medium`
    /// workload's writer waits at 16 threads were such passes).
    pub fn try_purge(&self, delay_ms: u64, mode: PurgeMode, budget: usize) -> usize {
        self.purge_with(delay_ms, mode, budget, true, None)
    }

    /// `purge`'s work: over every dirty region, or (`at`) the one free region starting
    /// at that address.
    fn purge_with(
        &self,
        delay_ms: u64,
        mode: PurgeMode,
        budget: usize,
        try_only: bool,
        at: Option<usize>,
    ) -> usize {
        const BATCH: usize = PURGE_BATCH;
        // No pin across the phases: the read references keep the picked regions attached
        // through `madvise` (detaching needs `start_write`), and phase two works on
        // addresses, not on the descriptors.
        let _inside = Reentrancy::enter();
        let now = os::now_ms();
        // Each picked piece's read reference, with the dirty stamp its claim replaced.
        let mut picked: [Option<(ReadGuard, Dirtiness)>; BATCH] = [const { None }; BATCH];
        let mut count = 0;
        let pick = |w: &mut Writer<'_>| {
            // The candidates first: cutting pieces changes the free index, which its
            // `for_each` visit must not see.
            let mut candidates: [Option<(&Region, Dirtiness)>; BATCH] = [None; BATCH];
            let mut found = 0;
            if let Some(addr) = at {
                if let Some(region) = w.free_at(addr, addr) {
                    // Acquire: as below.
                    let since = region.dirtiness.load(Ordering::Acquire);
                    if since.dirty_for(now, delay_ms) {
                        candidates[0] = Some((region, since));
                    }
                }
            } else {
                // SAFETY: we hold the writer mutex for the visit.
                unsafe {
                    w.state.free.for_each_dirty(|r| {
                        let region: &Region = &*r;
                        // Acquire pairs with the Release of a failed purge's un-claim, so
                        // its `dirty_bytes` add comes before our subtraction.
                        let since = region.dirtiness.load(Ordering::Acquire);
                        if found < BATCH && since.dirty_for(now, delay_ms) {
                            candidates[found] = Some((region, since));
                            found += 1;
                        }
                    })
                };
            }
            let mut bytes = 0;
            for &(region, since) in candidates.iter().flatten() {
                let mut rest = Some(region);
                // Checked before each piece, and each piece cut to what is left of it:
                // a pass overshoots its budget by less than a page (a huge page in
                // huge-page space, `split_for_purge`).
                while let Some(whole) = rest.filter(|_| count < BATCH && bytes < budget) {
                    let (region, left) = w.split_for_purge(whole, budget - bytes);
                    rest = left;
                    // SAFETY: we hold the writer mutex.
                    unsafe { region.lock.read_lock_under_writer() };
                    // The claim (see above): under our read lock, as in phase two.
                    region
                        .dirtiness
                        .store(Dirtiness::Purging, Ordering::Relaxed);
                    self.dirty_bytes.fetch_sub(region.len(), Ordering::Relaxed);
                    bytes += region.len();
                    let read = ReadGuard::new(region, region.start());
                    picked[count] = Some((read, since));
                    count += 1;
                }
            }
        };
        if try_only {
            // The pass never reserves: `may_reserve` does not matter.
            if self.try_write(false, pick).is_none() {
                return 0;
            }
        } else {
            self.write(pick);
        }
        let mut purged = 0;
        // Every piece's range, to merge back once all are done.
        let mut ranges: [(usize, usize); BATCH] = [(0, 0); BATCH];
        for (pick, range) in picked.iter().take(count).zip(ranges.iter_mut()) {
            if let Some((read, _)) = pick {
                *range = (read.region().start(), read.region().end());
            }
        }
        let batch = crate::options::get().purge_batch;
        let mut i = 0;
        while i < count {
            // A group: the pieces from `i` on that one `os::purge_many` call advises,
            // up to `PURGE_PIECE` bytes in all (the time one call holds its pieces'
            // read locks stays what one piece's `madvise` held it before), none that
            // `purge_region` overwrites instead (moved-in pages while `os::maps` asks for
            // that: those go one by one). A group of one is purged alone.
            let mut end = i;
            let mut bytes = 0;
            while batch && end < count {
                let Some((read, _)) = &picked[end] else {
                    break;
                };
                let r = read.region();
                if bytes + r.len() > PURGE_PIECE || overlays(r) {
                    break;
                }
                bytes += r.len();
                end += 1;
            }
            let end = end.max(i + 1);
            let mut group: [(usize, usize); BATCH] = [(0, 0); BATCH];
            for (g, &(start, stop)) in group.iter_mut().zip(&ranges[i..end]) {
                *g = (start, stop - start);
            }
            let group = &group[..end - i];
            for &(_start, _len) in group {
                #[cfg(test)]
                self.pause_in_madvise.pause_here();
                // Loom models f and g watch a page this call may cover.
                #[cfg(all(test, loom))]
                crate::region::loom_table::in_madvise(_start, _start + _len);
                self.counters.purge_calls().inc();
            }
            // SAFETY: free regions hold no live object, and our read references keep
            // any writer from handing them out until the call returns.
            let batched = unsafe { os::purge_many(group, mode) };
            // A batch that reached the kernel, then one call for each piece it did not.
            self.counters
                .purge_syscalls()
                .add(u64::from(batched > 0) + (group.len() - batched) as u64);
            for (k, pick) in picked[i..i + group.len()].iter_mut().enumerate() {
                let Some((read, since)) = pick.take() else {
                    continue;
                };
                let r = read.region();
                // The pieces the batch did not reach (a failure part-way, no batching)
                // go one by one.
                let result = if k < batched {
                    Ok(mode == PurgeMode::DontNeed)
                } else {
                    // SAFETY: as above, for this piece alone.
                    unsafe { purge_region(r, mode) }
                };
                if let Ok(zeroed) = result {
                    r.zeroed.store(zeroed, Ordering::Relaxed);
                    r.dirtiness.store(Dirtiness::Clean, Ordering::Relaxed);
                    purged += r.len();
                } else {
                    // Still dirty: un-claim it (still under our read lock). Bytes first,
                    // then the stamp (Release), so a purge that claims it next subtracts
                    // after.
                    self.dirty_bytes.fetch_add(r.len(), Ordering::Relaxed);
                    r.dirtiness.store(since, Ordering::Release);
                }
            }
            i += group.len();
        }
        if count > 0 {
            // The pieces merge back with each other and with neighbours of their new
            // dirtiness (writers skipped them while they were claimed). By address, not
            // by the descriptors picked: between the phases a writer that waited out a
            // `madvise` sees a region clean and may rebuild it into descriptors this
            // purge never saw, whose neighbours nobody re-examines. `carve` leaves a clean
            // tail beside the clean space that followed the region; `coalesce` of a clean
            // neighbour absorbs the region and stops, short of the clean space beyond it;
            // `grow` moves its start. Every free region holding a piece's pages overlaps
            // the piece's range, so coalescing those restores the invariant, whatever ran.
            // Adjacent pieces (one region's, cut from its top down) go as one range.
            let mut merged: [(usize, usize); BATCH] = [(0, 0); BATCH];
            let mut n = 0;
            for &(start, end) in ranges[..count].iter().filter(|r| r.0 < r.1) {
                if n > 0 && merged[n - 1].0 == end {
                    merged[n - 1].0 = start;
                } else if n > 0 && merged[n - 1].1 == start {
                    merged[n - 1].1 = end;
                } else {
                    merged[n] = (start, end);
                    n += 1;
                }
            }
            self.merge_back(&merged[..n]);
        }
        purged
    }

    /// A purge's second update: coalesces the free space overlapping each of `ranges`.
    /// When another writer holds the mutex, the ranges are left to this table's next
    /// writer instead (`region::deferred`; every update folds them first), so the purge
    /// never waits (issue 16: at 16 threads on 2 cores, these waits were 87 of the 93
    /// writer waits of the `medium` workload, each one a preempted writer's slice).
    /// Folding later is as correct as now (`coalesce_overlapping` works by address,
    /// whatever ran meanwhile), and only ranges no slot takes are merged here, waiting.
    fn merge_back(&self, ranges: &[(usize, usize)]) {
        let fold = |w: &mut Writer<'_>, ranges: &[(usize, usize)]| {
            for &(start, end) in ranges {
                w.coalesce_overlapping(start, end);
            }
        };
        // The fold never reserves: `may_reserve` does not matter.
        if self.try_write(false, |w| fold(w, ranges)).is_some() {
            return;
        }
        let mut left: [(usize, usize); PURGE_BATCH] = [(0, 0); PURGE_BATCH];
        let mut n = 0;
        for &(start, end) in ranges {
            if !self.deferred.push(start, end) {
                left[n] = (start, end);
                n += 1;
            }
        }
        if n == 0 {
            self.counters.merges_deferred().inc();
        } else {
            self.write(|w| fold(w, &left[..n]));
        }
    }

    /// Folds the ranges purges left (`merge_back`) under the writer mutex held as
    /// `state`, outside any update: the diagnostic walks show the table as the next
    /// update would find it.
    fn fold_deferred_locked(&self, state: &mut WriterState) {
        if !self.deferred.any() {
            return;
        }
        let guard = epoch::pin();
        let mut writer = Writer {
            table: self,
            state,
            guard: &guard,
            may_reserve: false,
            refused_reserve: false,
        };
        writer.fold_deferred();
        // SAFETY: we hold the writer mutex (as `state`); this ends the update.
        unsafe { self.seq.end_write_all() };
    }

    /// Ranges left to the next writer now (tests).
    #[cfg(test)]
    pub(crate) fn deferred_folds(&self) -> usize {
        self.deferred.full_slots()
    }

    // ------------------------------------------------------------- introspection

    /// Bytes of dirty free space (freed pages not purged yet).
    pub fn dirty_bytes(&self) -> usize {
        self.dirty_bytes.load(Ordering::Relaxed)
    }

    /// Bytes freed and not purged: dirty free space plus big regions still on the
    /// retired stack (what the dirty budget bounds).
    pub fn freed_bytes(&self) -> usize {
        self.dirty_bytes
            .load(Ordering::Relaxed)
            .saturating_add(self.retired_bytes.load(Ordering::Relaxed))
    }

    /// Live object regions (large objects and segments), not counting retired ones.
    pub fn live_regions(&self) -> usize {
        self.live_regions.load(Ordering::Relaxed)
    }

    /// Address space reserved, and free bytes (total, and dirty part) in the index.
    pub fn space(&self) -> SpaceStats {
        let _inside = Reentrancy::enter();
        let mut state = self.writer.lock();
        self.fold_deferred_locked(&mut state);
        let guard = epoch::pin();
        let mut stats = SpaceStats {
            reserved: state.reserved,
            free: state.free.bytes,
            ..SpaceStats::default()
        };
        self.tree
            .for_each(&guard, |_, r| match (r.kind(), r.state()) {
                (RegionKind::Free, _) => {
                    stats.free_regions += 1;
                    if r.is_dirty() {
                        stats.dirty += r.len();
                    }
                }
                (_, RegionState::Retired) => stats.retired += r.len(),
                (_, RegionState::Cached) => stats.cached += r.len(),
                (RegionKind::Large, _) => {
                    stats.large_regions += 1;
                    stats.large_bytes += r.len();
                }
                (RegionKind::Segment, _) => {
                    stats.segment_regions += 1;
                    stats.segment_bytes += r.len();
                }
            });
        stats
    }

    /// The space of the reservation holding `addr` (tests and diagnostics).
    pub fn space_of(&self, addr: usize) -> Space {
        let _inside = Reentrancy::enter();
        self.writer.lock().free.space_of(addr)
    }

    /// Visits every region in address order (tests and diagnostics), once the ranges
    /// purges left to the next writer are folded (`fold_deferred_locked`).
    pub fn for_each_region(&self, mut f: impl FnMut(usize, usize, RegionKind, RegionState)) {
        self.for_each_region_folded(|r| f(r.start(), r.len(), r.kind(), r.state()));
    }

    /// Visits every free region in address order with its dirtiness (tests and
    /// diagnostics), as `for_each_region`.
    pub fn for_each_free_region(&self, mut f: impl FnMut(usize, usize, bool)) {
        self.for_each_region_folded(|r| {
            if r.kind() == RegionKind::Free {
                f(r.start(), r.len(), r.is_dirty())
            }
        });
    }

    /// `for_each_region_ref` after folding the deferred ranges, under one hold of the
    /// mutex.
    fn for_each_region_folded(&self, mut f: impl FnMut(&Region)) {
        let _inside = Reentrancy::enter();
        let mut state = self.writer.lock();
        self.fold_deferred_locked(&mut state);
        let guard = epoch::pin();
        self.tree.for_each(&guard, |_, r| f(r));
    }

    /// Under the writer mutex: a lock-free walk could pair an old tree version with
    /// descriptors an update is changing in place (a merge grows the left region before
    /// the new tree drops the right one), and show ranges that never coexisted.
    fn for_each_region_ref(&self, mut f: impl FnMut(&Region)) {
        let _inside = Reentrancy::enter();
        let _writer = self.writer.lock();
        let guard = epoch::pin();
        self.tree.for_each(&guard, |_, r| f(r));
    }

    /// Repairs the table in a fork child: read references held by threads that do not
    /// exist in the child would block every later writer of their regions forever, a
    /// retire interrupted between its state change and its push would be lost, and a
    /// region a purge had claimed would stay `Purging` (clean to everyone, yet never
    /// advised in the child). Resets every lock word, rebuilds the retired stack from the
    /// regions' states, and makes claimed regions dirty again. Returns how many regions
    /// are `Cached`, for the caches' own repair (`large::cache::after_fork_in_child`).
    ///
    /// # Safety
    /// Only in a fork child, after `fork_release`, before anything else uses the table.
    pub unsafe fn after_fork_in_child(&self) -> usize {
        let now = Dirtiness::since(os::now_ms());
        let mut cached = 0;
        // SAFETY: caller contract: the only thread.
        unsafe {
            self.retired.clear_after_fork();
            self.deferred.reset_after_fork();
        }
        self.retired_bytes.store(0, Ordering::Relaxed);
        self.for_each_region_ref(|r| {
            // SAFETY: caller contract: the only thread, holding no reference.
            unsafe { r.lock.reset_after_fork() };
            if r.kind() != RegionKind::Free && r.state() == RegionState::Retired {
                self.retired_bytes
                    .fetch_add(counted_retired(r), Ordering::Relaxed);
                self.retired.push(r);
            }
            if r.kind() != RegionKind::Free && r.state() == RegionState::Cached {
                cached += 1;
            }
            if r.kind() == RegionKind::Free && r.is_purging() {
                r.dirtiness.store(now, Ordering::Relaxed);
                self.dirty_bytes.fetch_add(r.len(), Ordering::Relaxed);
            }
        });
        cached
    }

    /// Retires, in a fork child, every `Cached` region whose start `held` denies: one a
    /// vanished thread held outside every cache (between a free's `Live -> Cached` and
    /// its cache's lock, or let go by a cache and not yet retired), whose handle nobody
    /// in the child has. Returns how many it retired.
    ///
    /// # Safety
    /// Only in a fork child, after `after_fork_in_child`, and `held` must accept every
    /// region a cache of the child holds.
    pub unsafe fn retire_cached_outside(&self, held: &dyn Fn(usize) -> bool) -> usize {
        let mut retired = 0;
        self.for_each_region_ref(|r| {
            if r.kind() != RegionKind::Free && r.state() == RegionState::Cached && !held(r.start())
            {
                // Caller contract: no handle of it is left in the child.
                self.retire_cached(r);
                retired += 1;
            }
        });
        retired
    }

    /// Locks the table across `fork` (the child must not inherit a half-done update).
    pub fn fork_prepare(&self) {
        self.writer.raw_lock();
    }

    /// # Safety
    /// Only after `fork_prepare`, in the parent or the child.
    pub unsafe fn fork_release(&self) {
        // SAFETY: caller contract: the mutex is held by this thread via fork_prepare.
        unsafe { self.writer.raw_unlock() };
    }
}

/// The table's free-space totals.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpaceStats {
    pub reserved: usize,
    pub free: usize,
    pub dirty: usize,
    pub retired: usize,
    /// Bytes of regions held in threads' caches of freed medium objects.
    pub cached: usize,
    pub free_regions: usize,
    pub large_regions: usize,
    pub large_bytes: usize,
    pub segment_regions: usize,
    pub segment_bytes: usize,
}

/// How a move of pages into a destination region ended (`move_pages_into`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageMove {
    /// The pages moved: the destination holds the content, the source is empty.
    Moved,
    /// The move was not made, or stopped part-way, and the destination is mapped and
    /// ours: it holds the object's first `moved` bytes (0 or more: the mappings that
    /// moved before the one that failed, their source range now empty), and the caller
    /// copies the rest from the source.
    Copy { moved: usize },
    /// `mremap` failed after unmapping its piece of the destination, and another mapping
    /// took part of the hole (`os::Destination::Lost`): the destination region stays a
    /// live object nobody holds, never written, freed or purged, and the caller needs
    /// another one. Whatever had moved into it before is back at the source, so the
    /// source holds the whole content. The first one stops page moves for good
    /// (`os::page_moves_stopped`): one such range and descriptor per process, and one
    /// per move already under way beside it.
    Lost,
}

/// Moves `len` bytes of pages from `from` into the region `dest` with `mremap`, one call
/// per mapping the source spans (`os::move_pages`), and marks `dest` as holding moved
/// pages (`Region::holds_moved_pages`) once any piece moved: the one place a move sets
/// that mark, in both spaces (only base space's purges act on it, `overlays`). Asks
/// the kernel nothing, and the caller copies, when a destination was lost before
/// (`os::page_moves_stopped`). `from_moved_in` (the source's mark) says the source
/// may span several mappings: it then moves only where the kernel lists them. When a
/// call fails, the destination piece it was given is mapped again if the kernel
/// unmapped it (`os::restore_destination`, with `MADV_HUGEPAGE` again in huge space
/// while THP is advised), before any caller copies into it, and `dest` is marked too:
/// the fresh mapping does not merge with moved-in pages beside it. Guards need no
/// restoring: guarded objects never move by `mremap` (`large::realloc` copies them).
///
/// # Safety
/// `from` is ours, at least `len` bytes, and its content is not needed after the move
/// but for what `PageMove::Copy` leaves at the source; `dest` is a region of the
/// caller's (write- or read-locked) whose first `len` bytes hold nothing.
unsafe fn move_pages_into(
    from: usize,
    from_moved_in: bool,
    dest: &Region,
    len: usize,
    space: Space,
) -> PageMove {
    if os::page_moves_stopped() {
        return PageMove::Copy { moved: 0 };
    }
    // SAFETY: caller contract: `MREMAP_FIXED` replaces only `dest`'s own pages.
    let Err(stop) = (unsafe { os::move_pages(from, dest.start(), len, from_moved_in) }) else {
        dest.set_moved_pages(true);
        return PageMove::Moved;
    };
    if stop.moved > 0 {
        dest.set_moved_pages(true);
    }
    if stop.failed == 0 {
        return PageMove::Copy { moved: stop.moved };
    }
    let advise_huge = space == Space::Huge && crate::options::thp() == crate::options::Thp::Advise;
    let failed_at = dest.start() + stop.moved;
    // SAFETY: `[failed_at, failed_at + stop.failed)` was the failed call's destination.
    match unsafe { os::restore_destination(failed_at, stop.failed, advise_huge) } {
        os::Destination::Usable => PageMove::Copy { moved: stop.moved },
        os::Destination::Restored => {
            dest.set_moved_pages(true);
            PageMove::Copy { moved: stop.moved }
        }
        os::Destination::Lost => {
            // The pieces that moved go back to the source, and the lost region, never
            // purged, gives their pages back now.
            // SAFETY: the pieces that moved are `dest`'s first `stop.moved` bytes, still
            // mapped and ours (only the failed piece's range was lost); their source
            // range is mapped and empty (`MREMAP_DONTUNMAP`); the ranges are disjoint,
            // and nothing else reads or writes either while the caller holds them.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    dest.start() as *const u8,
                    from as *mut u8,
                    stop.moved,
                );
                let _ = os::purge(dest.start(), stop.moved, PurgeMode::DontNeed);
            }
            PageMove::Lost
        }
    }
}

/// Whether `purge_region` would overwrite `r` with a fresh mapping (`os::overlay`)
/// rather than advise it. Never in huge-page space, whose moved-in regions carry the
/// mark too: the fresh mapping would not carry `MADV_HUGEPAGE`.
fn overlays(r: &Region) -> bool {
    r.holds_moved_pages()
        && !crate::space::is_huge(r.start())
        && os::maps::overlay_moved()
        && os::overlay_is_safe()
}

/// Hands the pages of the free region `r` (read-locked by the caller's purge) back to
/// the kernel: `Ok(true)` when they read as zero afterwards. A region holding pages
/// that `mremap` moved in is overwritten with a fresh mapping while `os::maps` asks for
/// it (the moved mappings go, and the fresh one merges with its neighbours) and the
/// kernel keeps the old mapping when that fails (`os::overlay_is_safe`), which clears
/// its mark; otherwise, or when that fails, `os::purge` advises it.
///
/// # Safety
/// `r` holds no live object, and the caller's read reference keeps it free.
unsafe fn purge_region(r: &Region, mode: PurgeMode) -> Result<bool, os::OsError> {
    if overlays(r) {
        // SAFETY: caller contract; base space only (`overlays`).
        if unsafe { os::overlay(r.start(), r.len()) }.is_ok() {
            r.set_moved_pages(false);
            return Ok(true);
        }
    }
    // SAFETY: caller contract.
    unsafe { os::purge(r.start(), r.len(), mode) }.map(|()| mode == PurgeMode::DontNeed)
}

#[cfg(all(test, not(loom)))]
mod tests;
