//! The region table: rangealloc's user-space VMA tree. It owns every address range the
//! allocator manages outside the metadata arena, each described by a `Region`, and it
//! calls `os` (for address space), `meta` (for descriptors and tree nodes) and `space`.
//!
//! - `tree`: the ordered map from start address to region, readable without locks
//!   (copy-on-write B+tree published by one atomic store, reclaimed by epoch).
//! - `lock`: the per-region lock word and the table sequence (kernel per-VMA locks).
//! - `protocol`: the reader's validation and the writer's stamp and detach, shared by the
//!   table and the loom models (`loom_tests`), which run the same code.
//! - `arenas`: the arena set (`ARENAS`): several `RegionTable`s side by side, the
//!   thread's home arena, placement across arenas and the process-wide walks.
//! - `directory`: address -> arena, lock-free (the per-slot arena byte in `space` and
//!   the registry of tables).
//! - `table`: `RegionTable` (one arena), its writer mutex, the read side (`find_and_read_lock`,
//!   `retire`) and purge; `table/writer.rs` holds the structural updates (allocate,
//!   grow, shrink, coalesce).
//! - `blocks`: one arena's cache of descriptor and node blocks, and their grace periods.
//! - `free_index`: free regions binned by size, for placement (writer-side only).
//! - `epoch`: our own crossbeam-epoch collector.

#[cfg(not(loom))]
pub mod arenas;
#[cfg(not(loom))]
mod blocks;
#[cfg(not(loom))]
pub mod directory;
#[cfg(not(loom))]
pub mod epoch;
#[cfg(not(loom))]
mod free_index;
pub mod lock;
mod protocol;
#[cfg(not(loom))]
pub mod table;
#[cfg(not(loom))]
pub mod tree;

#[cfg(all(test, loom))]
mod loom_retire;
#[cfg(all(test, loom))]
mod loom_tests;

use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use core::cell::UnsafeCell;
use lock::RegionLock;

#[cfg(not(loom))]
pub use arenas::{Arenas, ARENAS};
#[cfg(not(loom))]
pub use table::{CachedRegion, Freed, LockCounters, Placement, ReadGuard, RegionTable};

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
    /// The free-index bin this region sits in, or `NO_BIN`; writer mutex only.
    pub(crate) bin: UnsafeCell<u8>,
    /// Milliseconds stamp of the moment a free region got dirty pages; 0 when clean.
    dirty_since: AtomicU64,
    /// Two list links, shared by the two lists a region can be on, which never overlap:
    /// an object region (retired, waiting for the writer) may be on the table's retired
    /// stack (`RETIRED_NEXT`: lock-free push, pop-all under the mutex); a free region may
    /// be in the free index (`BIN_NEXT`, `BIN_PREV`: only under the writer mutex). The
    /// writer pops a region off the retired stack before it becomes free, and a free
    /// region is never retired. Sharing keeps the descriptor at 64 bytes, one cache line
    /// and one meta block class, where it would otherwise take a 128-byte block.
    links: [AtomicPtr<Region>; 2],
}

/// Indexes into `Region::links`.
pub(crate) const RETIRED_NEXT: usize = 0;
pub(crate) const BIN_NEXT: usize = 0;
pub(crate) const BIN_PREV: usize = 1;

// What a lookup reads fits one cache line (see above).
#[cfg(not(loom))]
const _: () = assert!(core::mem::offset_of!(Region, zeroed) < 64);
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Region>() == 64);
#[cfg(not(loom))]
const _: () = assert!(
    core::mem::size_of::<Region>() <= blocks::DESC_BYTES
        && core::mem::align_of::<Region>() <= blocks::DESC_BYTES
);

pub(crate) const NO_BIN: u8 = u8::MAX;

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
            dirty_since: AtomicU64::new(0),
            zeroed: AtomicBool::new(zeroed),
            guarded: AtomicBool::new(false),
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

    pub fn dirty_since(&self) -> u64 {
        self.dirty_since.load(Ordering::Relaxed)
    }

    /// Whether a free region holds dirty pages: stamped, and not claimed by a purge
    /// that is advising them now (`PURGING`: already out of `dirty_bytes`).
    pub fn is_dirty(&self) -> bool {
        let since = self.dirty_since();
        since != 0 && since != PURGING
    }
}

/// `dirty_since` of a free region a purge has picked and is advising under its read
/// lock. Writers never see it (they write-lock the region first, which waits for the
/// purge); placement, statistics and other purges treat it as clean; a fork child, whose
/// copy of the purge never finishes, turns it back into a dirty stamp.
pub(crate) const PURGING: u64 = u64::MAX - 1;
