//! The region table: rangealloc's user-space VMA tree. It owns every address range the
//! allocator manages outside the metadata arena, each described by a `Region`, and it
//! calls `os` (for address space), `meta` (for descriptors and tree nodes), `space`,
//! `options`, `thread` (exit keys, the re-entrancy guard) and `stats`.
//!
//! - `tree`: the ordered map from start address to region, readable without locks
//!   (copy-on-write B+tree published by one atomic store, reclaimed by epoch).
//! - `lock`: the per-region lock word and the table sequence (kernel per-VMA locks).
//! - `protocol`: the reader's validation and the writer's stamp and detach, shared by the
//!   table and the loom models (`loom_table`'s harness; models a-d in `loom_tests`, e in
//!   `loom_table`, f and g in `loom_purge`, the retire models in `loom_retire`), which
//!   run the shipped table.
//! - `arenas`: the arena set (`ARENAS`): several `RegionTable`s side by side, the
//!   thread's home arena, placement across arenas and the process-wide walks.
//! - `directory`: address -> arena, lock-free (the per-slot arena byte in `space` and
//!   the registry of tables).
//! - `table`: `RegionTable` (one arena), its writer mutex, the read side (`find_and_read_lock`,
//!   `retire`) and purge; `table/writer.rs` holds the structural updates (allocate,
//!   grow, shrink, coalesce).
//! - `blocks`: one arena's cache of descriptor and node blocks, and their grace periods.
//! - `free_index`: free regions binned by size, for placement (writer-side only).
//! - `deferred`: ranges a purge cleaned but could not merge back (its arena's writer
//!   was busy), left lock-free for that arena's next writer to fold.
//! - `epoch`: our own crossbeam-epoch collector.

#[cfg(not(loom))]
pub mod arenas;
mod blocks;
mod deferred;
pub mod directory;
pub mod epoch;
mod free_index;
pub mod lock;
mod protocol;
pub mod table;
pub mod tree;

#[cfg(all(test, loom))]
mod loom_purge;
#[cfg(all(test, loom))]
mod loom_retire;
#[cfg(all(test, loom))]
mod loom_table;
#[cfg(all(test, loom))]
mod loom_tests;

use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use core::cell::UnsafeCell;
use lock::RegionLock;

#[cfg(not(loom))]
pub use arenas::{Arenas, ARENAS};
pub use table::{CachedRegion, Freed, LockCounters, PageMove, Placement, ReadGuard, RegionTable};

/// What a region holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RegionKind {
    /// Unused arena space, available for placement.
    Free = 0,
    /// One large object.
    Large = 1,
    /// A small-object segment (one `space::SLOT_SIZE` slot).
    Segment = 2,
}

/// Which reservations a placement draws from. Each reservation belongs to one space,
/// and a region never leaves its reservation, so growth and merges stay in one space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Space {
    /// Small-object segments and large objects below the huge-page threshold.
    Base = 0,
    /// Big large objects, each on a 2 MiB boundary, in reservations marked for
    /// transparent huge pages once, when reserved (`options::thp`): a small object here
    /// would sit alone in a 2 MiB frame and fault it all in.
    Huge = 1,
}

/// A region's lifecycle as seen by `free`: `Live` until freed, then `Retired` until the
/// next writer folds it back into free space. The `Live -> Retired` compare-and-swap is
/// what makes a double free of a large object detectable, exactly, without a lock.
/// A freed medium object may instead go `Live -> Cached` (the same compare-and-swap):
/// it stays in the tree, unchanged, in its freer's region cache (`large::cache`), until
/// an allocation takes it back (`Cached -> Live`) or the cache lets it go
/// (`Cached -> Retired`). Writers leave `Cached` regions alone, as they leave live ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RegionState {
    Live = 0,
    Retired = 1,
    Cached = 2,
}

/// A region descriptor. Lives in metadata memory; freed one grace period after it is
/// detached. `start`, `len` and `kind` change only while the region is write-locked by
/// the current update (so a reader that validated its read lock sees them stable).
///
/// `repr(C)`, hot fields first: a lookup reads the lock, the range, the kind, the state
/// and `detached`, and they all sit in the descriptor's first cache line (metadata
/// blocks are aligned to their power-of-two size). Left to the compiler, the byte-sized
/// fields went after the links, at offset 64, and every lookup touched two lines.
#[repr(C)]
pub struct Region {
    pub lock: RegionLock,
    start: AtomicUsize,
    len: AtomicUsize,
    kind: AtomicU8,
    state: AtomicU8,
    /// Set (Release, before `end_write_all`) when the region leaves the tree.
    detached: AtomicBool,
    /// True when every page of a free region reads as zero (fresh or DONTNEED-purged).
    zeroed: AtomicBool,
    /// The region's last page may carry a guard page (`RegionTable::install_guard`) that
    /// is not lifted yet. Set before the guard goes in and cleared once it is out, so a
    /// fork child that inherits a retire interrupted in between still lifts it before
    /// the range is reused (`Writer::drain_retired`).
    guarded: AtomicBool,
    /// `SHRUNK`, `MOVED_IN` and `PREFAULTED` (one byte for all: the descriptor has no spare
    /// byte).
    marks: AtomicU8,
    /// The free-index list this region sits on, or `NO_BIN`; writer mutex only. Two
    /// bytes: the lists are per space, dirtiness class and size bin (`free_index`),
    /// and the second byte was padding before `dirtiness`.
    pub(crate) bin: UnsafeCell<u16>,
    /// A free region's dirtiness (`Dirtiness`, encoded by `DirtyWord` alone).
    pub(crate) dirtiness: DirtyWord,
    /// Two list links, shared by the two lists a region can be on, which never overlap:
    /// an object region (retired, waiting for the writer) may be on the table's retired
    /// stack (`RETIRED_NEXT`: lock-free push, pop-all under the mutex); a free region may
    /// be in the free index (`BIN_NEXT`, `BIN_PREV`: only under the writer mutex). The
    /// writer pops a region off the retired stack before it becomes free, and a free
    /// region is never retired. Sharing keeps the descriptor at 64 bytes, one cache line
    /// and one meta block class, where it would otherwise take a 128-byte block.
    links: [AtomicPtr<Region>; 2],
}

/// `Region::marks`: the object was shrunk in place (`Writer::shrink`) at least once: its
/// freed tail lies after it, so freeing it should let the two merge again rather than
/// keep it in a thread's region cache (`large::free`).
const SHRUNK: u8 = 1;
/// `Region::marks`: some page of the range may be mapped by a kernel mapping (VMA) that
/// `mremap` moved here. A moved anonymous mapping keeps its old page offset and
/// `anon_vma`, so it never merges with the reservation around it again, until a purge
/// overwrites it with a fresh mapping (`os::overlay`, `os::maps`; base space only). So
/// an object holding such pages may span several mappings: it moves one mapping per
/// `mremap` where the kernel lists them, and is copied where it cannot
/// (`os::move_pages`). An unmarked one may span several too (split by the program, or
/// by overwrites of moved-in neighbours), so the mark only decides what happens where
/// the kernel cannot list them. Conservative: set on every move's
/// destination (and on one a failed move's restore mapped again), in both spaces,
/// inherited by every region cut from a marked one and by every merge with one, cleared
/// only by that overwrite of the whole region.
const MOVED_IN: u8 = 2;

/// `Region::marks`: the live object was faulted in before it was returned and counts
/// in `large::prefault`'s live prefaulted bytes; set by its allocator before the
/// object is returned (or by a `realloc` on the object that comes out), taken (cleared)
/// once: at its free, at a `realloc`, or before the retire of an object never returned.
/// So never set on a region that is not a live object.
const PREFAULTED: u8 = 4;

/// Indexes into `Region::links`.
pub(crate) const RETIRED_NEXT: usize = 0;
pub(crate) const BIN_NEXT: usize = 0;
pub(crate) const BIN_PREV: usize = 1;

// What a lookup reads fits one cache line (see above).
#[cfg(not(loom))]
const _: () = assert!(core::mem::offset_of!(Region, zeroed) < 64);
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Region>() == 64);
// Model builds too: their atomics are larger, and so is their descriptor block.
const _: () = assert!(
    core::mem::size_of::<Region>() <= blocks::DESC_BYTES
        && core::mem::align_of::<Region>() <= blocks::DESC_BYTES
);

pub(crate) const NO_BIN: u16 = u16::MAX;

// SAFETY: all shared mutable state is atomic, except `bin_links`/`bin`, which only the
// holder of the table's writer mutex touches.
unsafe impl Sync for Region {}
// SAFETY: as above.
unsafe impl Send for Region {}

impl Region {
    fn new(start: usize, len: usize, kind: RegionKind, zeroed: bool) -> Self {
        Region {
            lock: RegionLock::new(),
            start: AtomicUsize::new(start),
            len: AtomicUsize::new(len),
            kind: AtomicU8::new(kind as u8),
            state: AtomicU8::new(RegionState::Live as u8),
            detached: AtomicBool::new(false),
            dirtiness: DirtyWord::new(Dirtiness::Clean),
            zeroed: AtomicBool::new(zeroed),
            guarded: AtomicBool::new(false),
            marks: AtomicU8::new(0),
            links: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
            bin: UnsafeCell::new(NO_BIN),
        }
    }

    /// One of the list links (see `links`). Relaxed suffices everywhere: the retired
    /// stack's head orders its pushes, and the writer mutex orders the free index.
    #[inline]
    pub(crate) fn link(&self, which: usize) -> &AtomicPtr<Region> {
        &self.links[which]
    }

    // Relaxed loads below: callers either hold a validated read lock (the fields cannot
    // change until they release it) or the writer mutex (they are the only writer).
    #[inline]
    pub fn start(&self) -> usize {
        self.start.load(Ordering::Relaxed)
    }

    #[inline]
    #[allow(clippy::len_without_is_empty)] // a region is never empty
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn end(&self) -> usize {
        self.start() + self.len()
    }

    #[inline]
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.start()) < self.len()
    }

    #[inline]
    pub fn kind(&self) -> RegionKind {
        match self.kind.load(Ordering::Relaxed) {
            1 => RegionKind::Large,
            2 => RegionKind::Segment,
            _ => RegionKind::Free,
        }
    }

    #[inline]
    pub fn state(&self) -> RegionState {
        match self.state.load(Ordering::Acquire) {
            1 => RegionState::Retired,
            2 => RegionState::Cached,
            _ => RegionState::Live,
        }
    }

    #[inline]
    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    pub fn is_zeroed(&self) -> bool {
        self.zeroed.load(Ordering::Relaxed)
    }

    /// True once the object was shrunk in place. Relaxed: set by the writer that shrank
    /// it, on behalf of the object's owner, whose later free is ordered after the
    /// `realloc` that shrank it (same thread, or a hand-off that synchronises).
    pub fn was_shrunk(&self) -> bool {
        self.marks.load(Ordering::Relaxed) & SHRUNK != 0
    }

    pub(crate) fn mark_shrunk(&self) {
        // Relaxed: see `was_shrunk`.
        self.marks.fetch_or(SHRUNK, Ordering::Relaxed);
    }

    /// Marks a live object as prefaulted (see `PREFAULTED`). Relaxed, as `was_shrunk`:
    /// set by the object's allocator before the object is returned, and read by its
    /// free or resize, which the program orders after that.
    pub(crate) fn mark_prefaulted(&self) {
        self.marks.fetch_or(PREFAULTED, Ordering::Relaxed);
    }

    /// Clears `PREFAULTED`, saying whether it was set (each mark is taken once). A load
    /// first: every large free asks, and few objects are marked (no locked instruction
    /// for the rest). The mark was set before the object reached its freer, and only
    /// that one caller takes it (a free or resize of a live object is the program's
    /// alone), so the load sees it.
    pub(crate) fn take_prefaulted(&self) -> bool {
        self.marks.load(Ordering::Relaxed) & PREFAULTED != 0
            && self.marks.fetch_and(!PREFAULTED, Ordering::Relaxed) & PREFAULTED != 0
    }

    /// True when some page of the range may lie in a kernel mapping that `mremap` moved
    /// here (see `MOVED_IN`). Relaxed, as `was_shrunk`: set by a writer, by the owner of
    /// the live object at its move, under its read lock (`table::move_pages_into`; a
    /// later free orders it before the writers that fold the region), or cleared by a
    /// purge under its read lock; everyone who reads it holds the writer mutex or a read
    /// reference taken after those.
    pub fn holds_moved_pages(&self) -> bool {
        self.marks.load(Ordering::Relaxed) & MOVED_IN != 0
    }

    /// Sets or clears `MOVED_IN` (see `holds_moved_pages` for the ordering).
    pub(crate) fn set_moved_pages(&self, moved: bool) {
        if moved {
            self.marks.fetch_or(MOVED_IN, Ordering::Relaxed);
        } else {
            self.marks.fetch_and(!MOVED_IN, Ordering::Relaxed);
        }
    }

    /// The region's dirtiness. Relaxed, like the fields above: a free region's is
    /// changed only by the writer (mutex) or by a purge under the region's read lock, and
    /// readers of it hold one of the two or write-lock the region first.
    #[inline]
    pub fn dirtiness(&self) -> Dirtiness {
        self.dirtiness.load(Ordering::Relaxed)
    }

    /// Whether a free region holds dirty pages: stamped, and not claimed by a purge
    /// that is advising them now (`Purging`: already out of `dirty_bytes`).
    pub fn is_dirty(&self) -> bool {
        self.dirtiness().is_dirty()
    }

    /// Whether a purge has claimed this free region and is advising it now.
    pub fn is_purging(&self) -> bool {
        self.dirtiness() == Dirtiness::Purging
    }
}

/// What a free region's pages hold, as far as purging is concerned. Object regions
/// keep `Clean`: only free space is stamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dirtiness {
    /// No page written since the range was fresh or last purged.
    Clean,
    /// Dirty pages since this `os::now_ms` stamp (the oldest, after a merge). Build it
    /// with `Dirtiness::since`, which keeps the stamp in range.
    Since(u64),
    /// A purge picked the region and is advising it now, under its read lock. Writers
    /// never see it (they write-lock the region first, which waits for the purge);
    /// placement, statistics and other purges treat it as clean (its bytes already left
    /// `dirty_bytes`); a fork child, whose copy of the purge never finishes, turns it
    /// back into a stamp (`RegionTable::after_fork_in_child`).
    Purging,
}

impl Dirtiness {
    /// Dirty since `now_ms`.
    #[inline]
    pub fn since(now_ms: u64) -> Self {
        Dirtiness::Since(now_ms.clamp(DirtyWord::OLDEST_STAMP, DirtyWord::NEWEST_STAMP))
    }

    /// A merged region's dirtiness: the older stamp, dirty if either side is. A claimed
    /// side (only a fork child's stale claim can reach a merge) counts as clean, as it
    /// does everywhere outside its purge.
    pub fn merge(self, other: Self) -> Self {
        match (self, other) {
            (Dirtiness::Since(a), Dirtiness::Since(b)) => Dirtiness::Since(a.min(b)),
            (Dirtiness::Since(t), _) | (_, Dirtiness::Since(t)) => Dirtiness::Since(t),
            // Neither side dirty: a claim without its purge (see above) is no claim.
            _ => Dirtiness::Clean,
        }
    }

    /// Holds dirty pages counted in `dirty_bytes` (a claimed region's left it).
    #[inline]
    pub fn is_dirty(self) -> bool {
        matches!(self, Dirtiness::Since(_))
    }

    /// Dirty for at least `delay_ms` at `now_ms`: what a timed purge picks.
    pub fn dirty_for(self, now_ms: u64, delay_ms: u64) -> bool {
        matches!(self, Dirtiness::Since(t) if now_ms.saturating_sub(t) >= delay_ms)
    }
}

/// `Dirtiness` in one atomic word, the only place that knows its encoding: 0 is
/// `Clean`, `u64::MAX` is `Purging`, anything between a `Since` stamp (milliseconds
/// since boot fit many times over).
pub(crate) struct DirtyWord(AtomicU64);

impl DirtyWord {
    const CLEAN: u64 = 0;
    const PURGING: u64 = u64::MAX;
    const OLDEST_STAMP: u64 = Self::CLEAN + 1;
    const NEWEST_STAMP: u64 = Self::PURGING - 1;

    fn new(d: Dirtiness) -> Self {
        DirtyWord(AtomicU64::new(Self::encode(d)))
    }

    #[inline]
    fn encode(d: Dirtiness) -> u64 {
        match d {
            Dirtiness::Clean => Self::CLEAN,
            Dirtiness::Purging => Self::PURGING,
            Dirtiness::Since(t) => t.clamp(Self::OLDEST_STAMP, Self::NEWEST_STAMP),
        }
    }

    #[inline]
    fn decode(word: u64) -> Dirtiness {
        match word {
            Self::CLEAN => Dirtiness::Clean,
            Self::PURGING => Dirtiness::Purging,
            t => Dirtiness::Since(t),
        }
    }

    /// Callers say why their ordering suffices: Relaxed everywhere but a failed
    /// purge's un-claim (Release) and the next purge's pick (Acquire).
    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> Dirtiness {
        Self::decode(self.0.load(order))
    }

    #[inline]
    pub(crate) fn store(&self, d: Dirtiness, order: Ordering) {
        self.0.store(Self::encode(d), order)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Dirtiness, DirtyWord};

    #[test]
    fn dirtiness_round_trips_through_its_word() {
        for d in [
            Dirtiness::Clean,
            Dirtiness::Purging,
            Dirtiness::Since(1),
            Dirtiness::Since(123_456),
            Dirtiness::Since(u64::MAX - 1),
        ] {
            assert_eq!(DirtyWord::decode(DirtyWord::encode(d)), d);
        }
        // A stamp can never read as another state.
        assert_eq!(Dirtiness::since(0), Dirtiness::Since(1));
        assert_eq!(Dirtiness::since(u64::MAX), Dirtiness::Since(u64::MAX - 1));
        assert_eq!(
            DirtyWord::decode(DirtyWord::encode(Dirtiness::Since(0))),
            Dirtiness::Since(1)
        );
    }

    #[test]
    fn dirtiness_merges_to_the_older_stamp() {
        use Dirtiness::*;
        assert_eq!(Clean.merge(Clean), Clean);
        assert_eq!(Clean.merge(Since(5)), Since(5));
        assert_eq!(Since(5).merge(Clean), Since(5));
        assert_eq!(Since(9).merge(Since(5)), Since(5));
        assert_eq!(Purging.merge(Since(5)), Since(5));
        // A stale claim counts as clean, as the doc says (it used to stay claimed, and a
        // claimed region is never purged again).
        assert_eq!(Purging.merge(Clean), Clean);
        assert_eq!(Clean.merge(Purging), Clean);
        assert!(Since(5).dirty_for(15, 10) && !Since(6).dirty_for(15, 10));
        assert!(!Clean.dirty_for(u64::MAX, 0) && !Purging.dirty_for(u64::MAX, 0));
    }
}
