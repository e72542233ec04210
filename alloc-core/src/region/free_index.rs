//! The free index: free regions binned by size (power-of-two bins of their length), for
//! placement. It owns the bin heads and the free regions' intrusive links (`Region::link`), and is touched only
//! by the holder of the table's writer mutex, so it needs no synchronisation. Calls
//! nothing.

use super::{Region, RegionKind, BIN_NEXT, BIN_PREV, NO_BIN, PURGING};
use crate::sync::atomic::Ordering::Relaxed;
use core::ptr;

const BINS: usize = usize::BITS as usize;

pub(crate) struct FreeIndex {
    heads: [*mut Region; BINS],
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
            heads: [ptr::null_mut(); BINS],
            bytes: 0,
            count: 0,
        }
    }

    /// # Safety
    /// Writer mutex held; `r` is a live, attached free region not in the index.
    pub unsafe fn insert(&mut self, r: *mut Region) {
        // SAFETY: caller contract: exclusive access to the links of indexed regions.
        unsafe {
            debug_assert_eq!((*r).kind(), RegionKind::Free);
            debug_assert_eq!(*(*r).bin.get(), NO_BIN);
            let bin = bin_of((*r).len());
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
    /// Regions a purge has claimed (`PURGING`, inside or about to enter `madvise` under
    /// their read lock) come last: carving one makes the writer wait for the `madvise`,
    /// with the writer mutex held. Only when nothing else fits, rather than reserving a
    /// new arena (the wait is for one bounded piece, `PURGE_PIECE`).
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find(&self, len: usize, align: usize) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe {
            self.find_dirty(len, align)
                .or_else(|| self.find_any(len, align))
                .or_else(|| self.find_where(len, align, |_| true))
        }
    }

    /// `find` among dirty regions only.
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find_dirty(&self, len: usize, align: usize) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe { self.find_where(len, align, |r| (*r).is_dirty()) }
    }

    /// `find` among all regions but those a purge has claimed, in bin order. `PURGING`
    /// read here is current: the claim is made under the writer mutex (a purge may end
    /// it meanwhile; the region is then skipped once for nothing).
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find_any(&self, len: usize, align: usize) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe { self.find_where(len, align, |r| (*r).dirty_since() != PURGING) }
    }

    unsafe fn find_where(
        &self,
        len: usize,
        align: usize,
        accept: impl Fn(*mut Region) -> bool,
    ) -> Option<(*mut Region, usize)> {
        for bin in bin_of(len)..BINS {
            let mut r = self.heads[bin];
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
