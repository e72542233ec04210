//! The free index: free regions binned by space (which reservations they lie in,
//! `Space`) and size (power-of-two bins of their length), for placement. It owns the
//! bin heads, the free regions' intrusive links (`Region::link`) and the record of
//! which reservations are huge-page space, and is touched only by the holder of the
//! table's writer mutex, so it needs no synchronisation. Calls nothing.

use super::table::ARENA_SIZE;
use super::{Region, RegionKind, Space, BIN_NEXT, BIN_PREV, NO_BIN};
use crate::sync::atomic::Ordering::Relaxed;
use core::ptr;

const BINS: usize = usize::BITS as usize;
const SPACES: usize = 2;

/// One bit per `ARENA_SIZE` unit of the 47-bit user address space (where the kernel
/// places our reservations): set for huge-page space. 16 KiB.
const UNIT_SHIFT: u32 = ARENA_SIZE.trailing_zeros();
const UNIT_WORDS: usize = (1 << (47 - UNIT_SHIFT)) / u64::BITS as usize;

pub(crate) struct FreeIndex {
    /// `BINS` heads per space, `Space::Base`'s first.
    heads: [*mut Region; BINS * SPACES],
    /// Which reservation units are `Space::Huge`.
    huge_units: [u64; UNIT_WORDS],
    /// Bytes in all indexed free regions.
    pub bytes: usize,
    pub count: usize,
}

fn bin_of(len: usize) -> usize {
    (usize::BITS - 1 - len.leading_zeros()) as usize
}

impl FreeIndex {
    pub const fn new() -> Self {
        FreeIndex {
            heads: [ptr::null_mut(); BINS * SPACES],
            huge_units: [0; UNIT_WORDS],
            bytes: 0,
            count: 0,
        }
    }

    /// Records `[base, base + len)`, a new reservation (`ARENA_SIZE`-aligned, a multiple
    /// of it), as belonging to `space`, before any of it is indexed.
    pub fn set_space(&mut self, base: usize, len: usize, space: Space) {
        for unit in (base >> UNIT_SHIFT)..((base + len) >> UNIT_SHIFT) {
            let (word, bit) = (unit / u64::BITS as usize, unit % u64::BITS as usize);
            if let Some(w) = self.huge_units.get_mut(word) {
                match space {
                    Space::Huge => *w |= 1 << bit,
                    Space::Base => *w &= !(1 << bit),
                }
            }
        }
    }

    /// The space of the reservation holding `addr`.
    pub fn space_of(&self, addr: usize) -> Space {
        let unit = addr >> UNIT_SHIFT;
        let word = self.huge_units.get(unit / u64::BITS as usize).copied();
        match word {
            Some(w) if w & (1 << (unit % u64::BITS as usize)) != 0 => Space::Huge,
            _ => Space::Base,
        }
    }

    /// # Safety
    /// Writer mutex held; `r` is a live, attached free region not in the index.
    pub unsafe fn insert(&mut self, r: *mut Region) {
        // SAFETY: caller contract: exclusive access to the links of indexed regions.
        unsafe {
            debug_assert_eq!((*r).kind(), RegionKind::Free);
            debug_assert_eq!(*(*r).bin.get(), NO_BIN);
            let bin = bin_of((*r).len()) + self.space_of((*r).start()) as usize * BINS;
            let head = self.heads[bin];
            (*r).link(BIN_PREV).store(ptr::null_mut(), Relaxed);
            (*r).link(BIN_NEXT).store(head, Relaxed);
            if !head.is_null() {
                (*head).link(BIN_PREV).store(r, Relaxed);
            }
            self.heads[bin] = r;
            *(*r).bin.get() = bin as u8;
            self.bytes += (*r).len();
        }
        self.count += 1;
    }

    /// Removes `r` if it is indexed. Must be called before `r`'s length changes.
    ///
    /// # Safety
    /// Writer mutex held; `r` is a live region descriptor.
    pub unsafe fn remove(&mut self, r: *mut Region) {
        // SAFETY: caller contract, as in `insert`.
        unsafe {
            let bin = *(*r).bin.get();
            if bin == NO_BIN {
                return;
            }
            let prev = (*r).link(BIN_PREV).load(Relaxed);
            let next = (*r).link(BIN_NEXT).load(Relaxed);
            if prev.is_null() {
                self.heads[bin as usize] = next;
            } else {
                (*prev).link(BIN_NEXT).store(next, Relaxed);
            }
            if !next.is_null() {
                (*next).link(BIN_PREV).store(prev, Relaxed);
            }
            *(*r).bin.get() = NO_BIN;
            self.bytes -= (*r).len();
        }
        self.count -= 1;
    }

    /// A free region that can hold `len` bytes at an `align`-aligned start, and that
    /// start. Dirty regions (pages still resident, not yet purged) come first: reusing
    /// them costs no page faults and no new resident memory, while a clean region would
    /// grow RSS as the dirty one waits for its purge. Within each pass the smallest bins
    /// are searched first (best fit by bin, first fit within it), which keeps the big
    /// free regions whole for big objects and growth.
    ///
    /// Regions a purge has claimed (`Dirtiness::Purging`, inside or about to enter `madvise` under
    /// their read lock) come last: carving one makes the writer wait for the `madvise`,
    /// with the writer mutex held. Only when nothing else fits, rather than reserving a
    /// new arena (the wait is for one bounded piece, `PURGE_PIECE`).
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find(
        &self,
        space: Space,
        len: usize,
        align: usize,
    ) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe {
            self.find_dirty(space, len, align)
                .or_else(|| self.find_any(space, len, align))
                .or_else(|| self.find_where(space, len, align, |_| true))
        }
    }

    /// `find` among dirty regions only.
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find_dirty(
        &self,
        space: Space,
        len: usize,
        align: usize,
    ) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe { self.find_where(space, len, align, |r| (*r).is_dirty()) }
    }

    /// `find` among all regions but those a purge has claimed, in bin order. `Purging`
    /// read here is current: the claim is made under the writer mutex (a purge may end
    /// it meanwhile; the region is then skipped once for nothing).
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find_any(
        &self,
        space: Space,
        len: usize,
        align: usize,
    ) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe { self.find_where(space, len, align, |r| !(*r).is_purging()) }
    }

    /// The first region, in bin order from `min_len`'s bin, for which `place` returns a
    /// start (the caller's placement rule), with that start.
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find_placed(
        &self,
        space: Space,
        min_len: usize,
        mut place: impl FnMut(&Region) -> Option<usize>,
    ) -> Option<(*mut Region, usize)> {
        let heads = &self.heads[space as usize * BINS..][..BINS];
        for &head in heads.iter().skip(bin_of(min_len)) {
            let mut r = head;
            while !r.is_null() {
                // SAFETY: indexed regions are live while the writer mutex is held.
                let region = unsafe { &*r };
                if let Some(at) = place(region) {
                    return Some((r, at));
                }
                r = region.link(BIN_NEXT).load(Relaxed);
            }
        }
        None
    }

    unsafe fn find_where(
        &self,
        space: Space,
        len: usize,
        align: usize,
        accept: impl Fn(*mut Region) -> bool,
    ) -> Option<(*mut Region, usize)> {
        let heads = &self.heads[space as usize * BINS..][..BINS];
        for &head in heads.iter().skip(bin_of(len)) {
            let mut r = head;
            while !r.is_null() {
                // SAFETY: indexed regions are live while the writer mutex is held.
                let (start, end) = unsafe { ((*r).start(), (*r).end()) };
                let at = (start + align - 1) & !(align - 1);
                if at >= start && at.checked_add(len).is_some_and(|e| e <= end) && accept(r) {
                    return Some((r, at));
                }
                // SAFETY: as above.
                r = unsafe { (*r).link(BIN_NEXT).load(Relaxed) };
            }
        }
        None
    }

    /// Visits every indexed region (for the purge pass).
    ///
    /// # Safety
    /// Writer mutex held for the whole visit; `f` must not change the index.
    pub unsafe fn for_each(&self, mut f: impl FnMut(*mut Region)) {
        for &head in &self.heads {
            let mut r = head;
            while !r.is_null() {
                f(r);
                // SAFETY: as in `find`.
                r = unsafe { (*r).link(BIN_NEXT).load(Relaxed) };
            }
        }
    }
}
