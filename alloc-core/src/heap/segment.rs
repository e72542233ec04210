//! A segment: one 4 MiB region of the table (one `space` slot), owned by one heap, cut
//! into 64 KiB units that pages occupy. The segment header (this struct) sits at the
//! segment base, so `free(p)` finds the page of any small block by masking `p`: no
//! table lookup, no lock. Owns the header and its unit bitmaps, and the segment
//! counters; calls `region` (to get and give back the segment), `page` (an empty page
//! descriptor) and `os` (to purge unused units). The bitmaps and links
//! are guarded by the owning heap's segments lock (`heap::reclaim`), so another thread
//! may purge the free units of an idle heap.

use super::page::Page;
use crate::os::{self, PurgeMode};
use crate::region::{RegionKind, ARENAS};
use crate::space::SLOT_SIZE;
use crate::stats::Counter;

/// Bytes of pages in use (handed to a size class), unused units not yet purged, and
/// live segments: the small-object side of `stats`.
pub static SMALL_PAGE_BYTES: Counter = Counter::new();
pub static SEGMENT_DIRTY_BYTES: Counter = Counter::new();
pub static SEGMENTS: Counter = Counter::new();
use core::ptr;

pub const SEGMENT_SIZE: usize = SLOT_SIZE;
pub const UNIT_SHIFT: u32 = 16;
pub const UNIT_SIZE: usize = 1 << UNIT_SHIFT;
pub const UNITS: usize = SEGMENT_SIZE / UNIT_SIZE;
const ALL_UNITS: u64 = u64::MAX;
const _: () = assert!(UNITS == 64);
// Every descriptor offset fits `unit_page`'s entries.
const _: () = assert!(
    core::mem::offset_of!(Segment, pages) + UNITS * core::mem::size_of::<Page>()
        <= u16::MAX as usize
);

/// Bytes reserved for the header at the start of unit 0 (page-aligned, so blocks of
/// page-aligned classes stay aligned).
pub const HEADER_SIZE: usize = core::mem::size_of::<Segment>().next_multiple_of(os::PAGE_SIZE);

#[repr(C)]
pub struct Segment {
    /// The owning heap (type-erased to keep this layer below `heap`). Set once at
    /// creation and never changed (heaps are adopted whole, never split), so a remote
    /// freer may read it while the segment is live.
    pub heap: usize,
    /// For each unit, where the descriptor of the page covering it lies: its byte offset
    /// from the segment base (`page_offset` of the unit where the page starts), so that
    /// `free` finds the descriptor with one load and one add.
    pub unit_page: [u16; UNITS],
    /// Units not in any page (bit per unit). This, `dirty_units`, `dirty_since` and the
    /// links change only under the owning heap's segments lock (`heap::reclaim`), which
    /// a foreign purger takes too.
    pub free_units: u64,
    /// Free units that hold dirty pages not yet purged, and since when (ms).
    pub dirty_units: u64,
    pub dirty_since: u64,
    /// Links in the owning heap's list of segments.
    pub next: *mut Segment,
    pub prev: *mut Segment,
    /// Units whose descriptor in `pages` has been written (bit per unit): unit 0's at
    /// creation (every `unit_page` entry starts out pointing to it), any other's when a
    /// page first starts there (`alloc_page`); once written a descriptor stays a valid
    /// `Page` (`free_page` writes it empty again). The rest hold whatever the region
    /// held before: no `unit_page` entry points to them and nothing reads them
    /// (`repair` skips them), so no `Page` is ever read from those bytes. Writing all 64 (8 KiB) at creation touched the header's three pages, two
    /// page faults more for a thread's first segment than the descriptors it uses, which
    /// sit on the first page (issue 14). Changes only under the segments lock, as
    /// `free_units`.
    pub described: u64,
    pub pages: [Page; UNITS],
}

impl Segment {
    /// Gets a fresh segment from the region table. Null when out of memory.
    pub fn create(heap: usize) -> *mut Segment {
        let Some(placed) = ARENAS.allocate(SEGMENT_SIZE, SEGMENT_SIZE, RegionKind::Segment) else {
            return ptr::null_mut();
        };
        SEGMENTS.inc();
        let seg = placed.start as *mut Segment;
        // SAFETY: the region is ours, writable and at least HEADER_SIZE long. Fields are
        // written in place: `Segment` is too big for the stack of a small thread.
        unsafe {
            ptr::addr_of_mut!((*seg).heap).write(heap);
            ptr::addr_of_mut!((*seg).unit_page).write([Segment::page_offset(0); UNITS]);
            ptr::addr_of_mut!((*seg).free_units).write(ALL_UNITS);
            ptr::addr_of_mut!((*seg).dirty_units).write(0);
            ptr::addr_of_mut!((*seg).dirty_since).write(0);
            ptr::addr_of_mut!((*seg).next).write(ptr::null_mut());
            ptr::addr_of_mut!((*seg).prev).write(ptr::null_mut());
            ptr::addr_of_mut!((*seg).described).write(1);
            (ptr::addr_of_mut!((*seg).pages) as *mut Page).write(Page::empty());
        }
        seg
    }

    /// Gives the (empty) segment back to the region table.
    ///
    /// # Safety
    /// No page of the segment is live and nothing references it any more.
    pub unsafe fn release(seg: *mut Segment) {
        // SAFETY: caller contract: the header is still ours to read.
        let dirty = unsafe { (*seg).dirty_units.count_ones() } as u64;
        SEGMENT_DIRTY_BYTES.sub(dirty * UNIT_SIZE as u64);
        SEGMENTS.sub(1);
        if ARENAS.retire(seg as usize).is_err() {
            crate::fatal("segment release: the region table does not know the segment");
        }
    }

    /// The byte offset from the segment base of `pages[first]`, as `unit_page` holds it.
    pub const fn page_offset(first: usize) -> u16 {
        (core::mem::offset_of!(Segment, pages) + first * core::mem::size_of::<Page>()) as u16
    }

    /// The segment holding `addr`.
    #[inline(always)]
    pub fn of(addr: usize) -> *mut Segment {
        (addr & !(SEGMENT_SIZE - 1)) as *mut Segment
    }

    /// The page descriptor serving `addr`. Any thread may ask (a remote free does): it
    /// reads one `unit_page` entry through the raw pointer, and that entry does not
    /// change while a live page covers the unit; no reference to the header is made, so
    /// none aliases the owner's.
    ///
    /// # Safety
    /// `seg` is a live segment, `addr` lies in it.
    #[inline(always)]
    pub unsafe fn page_of(seg: *mut Segment, addr: usize) -> *mut Page {
        let unit = (addr & (SEGMENT_SIZE - 1)) >> UNIT_SHIFT;
        // SAFETY: caller contract; `unit` < UNITS by the mask, and `unit_page` entries
        // are `page_offset`s, offsets of descriptors inside the header.
        unsafe {
            let offset = ptr::addr_of!((*seg).unit_page)
                .cast::<u16>()
                .add(unit)
                .read() as usize;
            seg.cast::<u8>().add(offset).cast::<Page>()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.free_units == ALL_UNITS
    }

    /// Claims `units` units (1, or a power of two aligned to itself) for a new page of
    /// `class` with blocks of `block_size`. Returns the page, or null if no run is free.
    pub fn alloc_page(&mut self, class: usize, block_size: usize, units: usize) -> *mut Page {
        let run = if units == 64 {
            ALL_UNITS
        } else {
            (1u64 << units) - 1
        };
        let mut first = 0;
        while first < UNITS {
            if self.free_units & (run << first) == run << first {
                break;
            }
            first += units;
        }
        if first >= UNITS {
            return ptr::null_mut();
        }
        let reused_dirty = (self.dirty_units & (run << first)).count_ones() as u64;
        SEGMENT_DIRTY_BYTES.sub(reused_dirty * UNIT_SIZE as u64);
        SMALL_PAGE_BYTES.add((units * UNIT_SIZE) as u64);
        self.free_units &= !(run << first);
        self.dirty_units &= !(run << first);
        // The descriptor is written before any unit points at it (review13b L1): a
        // stray free racing this claim reads an empty page, never an earlier life's.
        if self.described & (1 << first) == 0 {
            // SAFETY: `first < UNITS`; the descriptor has never been written (whatever
            // the memory held), so it is written whole, through a raw pointer, before
            // any reference to it is made.
            unsafe {
                (ptr::addr_of_mut!(self.pages) as *mut Page)
                    .add(first)
                    .write(Page::empty())
            };
            self.described |= 1 << first;
        }
        for u in first..first + units {
            self.unit_page[u] = Segment::page_offset(first);
        }
        let base = self as *mut Segment as usize;
        let start = base + first * UNIT_SIZE + if first == 0 { HEADER_SIZE } else { 0 };
        let span_end = base + (first + units) * UNIT_SIZE;
        // Blocks start at `start`; the page ends at the last whole block.
        let end = start + (span_end - start) / block_size * block_size;
        let page = &mut self.pages[first];
        page.init(class, block_size, units, start, end);
        page
    }

    /// Returns the units of an empty page to the segment; they are dirty until purged.
    /// Works through the raw pointer, as `purge` does, so a foreign purger retiring a
    /// page (`heap::reclaim`) makes no reference that would alias the owner's pages.
    ///
    /// # Safety
    /// `seg` is live and the caller holds its heap's segments lock; `page` is an empty
    /// live page descriptor of `seg` that nobody else touches.
    pub unsafe fn free_page(seg: *mut Segment, page: *mut Page, now_ms: u64) {
        // SAFETY: caller contract: `page` is one of this segment's descriptors, and the
        // unit fields are ours while the lock is held.
        unsafe {
            let pages = ptr::addr_of_mut!((*seg).pages) as *mut Page;
            let first = page.offset_from(pages) as usize;
            let units = (*page).units as usize;
            let run = if units == 64 {
                ALL_UNITS
            } else {
                (1u64 << units) - 1
            };
            let free_units = ptr::addr_of_mut!((*seg).free_units);
            let dirty_units = ptr::addr_of_mut!((*seg).dirty_units);
            free_units.write(free_units.read() | run << first);
            SMALL_PAGE_BYTES.sub((units * UNIT_SIZE) as u64);
            SEGMENT_DIRTY_BYTES.add((units * UNIT_SIZE) as u64);
            if dirty_units.read() == 0 {
                ptr::addr_of_mut!((*seg).dirty_since).write(now_ms);
            }
            dirty_units.write(dirty_units.read() | run << first);
            pages.add(first).write(Page::empty());
        }
    }

    /// True if the segment has free units dirty for at least `delay_ms` (what `purge`
    /// would return).
    ///
    /// # Safety
    /// As `purge`.
    pub unsafe fn purgeable(seg: *mut Segment, now_ms: u64, delay_ms: u64) -> bool {
        // SAFETY: caller contract.
        let (dirty_units, dirty_since) = unsafe {
            (
                ptr::addr_of!((*seg).dirty_units).read(),
                ptr::addr_of!((*seg).dirty_since).read(),
            )
        };
        dirty_units != 0 && now_ms.saturating_sub(dirty_since) >= delay_ms
    }

    /// Purges dirty free units if they have been dirty for `delay_ms`. Returns bytes.
    /// Works through the raw pointer (reading and writing only the unit bitmaps), so a
    /// foreign purger makes no reference that would alias the owner's pages.
    ///
    /// # Safety
    /// `seg` is live and the caller holds its heap's segments lock (`heap::reclaim`).
    pub unsafe fn purge(seg: *mut Segment, now_ms: u64, delay_ms: u64, mode: PurgeMode) -> usize {
        // SAFETY: caller contract.
        if !unsafe { Segment::purgeable(seg, now_ms, delay_ms) } {
            return 0;
        }
        // SAFETY: caller contract: the unit fields are ours while the lock is held.
        let dirty_units = unsafe { ptr::addr_of!((*seg).dirty_units).read() };
        let base = seg as usize;
        let mut purged = 0;
        let mut unit = 0;
        while unit < UNITS {
            if dirty_units & (1 << unit) == 0 {
                unit += 1;
                continue;
            }
            let first = unit;
            while unit < UNITS && dirty_units & (1 << unit) != 0 {
                unit += 1;
            }
            // Unit 0 keeps its header.
            let lo = base + first * UNIT_SIZE + if first == 0 { HEADER_SIZE } else { 0 };
            let hi = base + unit * UNIT_SIZE;
            // SAFETY: free units hold no live block, and nobody can claim them while we
            // hold the segments lock (`heap::reclaim`, invariant 2).
            if unsafe { os::purge(lo, hi - lo, mode) }.is_ok() {
                purged += hi - lo;
            }
        }
        SEGMENT_DIRTY_BYTES.sub(dirty_units.count_ones() as u64 * UNIT_SIZE as u64);
        // SAFETY: as above.
        unsafe { ptr::addr_of_mut!((*seg).dirty_units).write(0) };
        purged
    }
}
