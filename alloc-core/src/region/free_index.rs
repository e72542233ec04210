//! The free index: free regions on intrusive lists, one list per space (which
//! reservations they lie in, `Space`), dirtiness class (`Class`) and size bin, for
//! placement and for the purge's pick. It owns the list heads, the free regions' links
//! (`Region::link`, `Region::bin`) and the record of which reservations are huge-page
//! space, and is touched only by the holder of the table's writer mutex, so it needs no
//! synchronisation. Calls nothing.
//!
//! **Dirty and clean apart.** Placement prefers dirty space and a purge looks only for
//! dirty space; with one list per bin both walked every clean region of the bins they
//! searched. Each bin therefore has a dirty list and a clean list (as jemalloc keeps
//! its dirty and retained extents in separate heaps).
//!
//! **Filing is a hint that may only err one way.** A region is filed by the dirtiness it
//! reads when inserted, and dirtiness changes in two ways:
//! - by the writer, under the mutex, only while the region is out of the index (a new
//!   region before its insert; a drained, merged or moved one before `coalesce` files
//!   it), so that filing is current;
//! - by a purge, outside the mutex, under the region's read lock: the claim
//!   (`Since -> Purging`, made under the mutex) changes no class, since `Purging` files
//!   as dirty; its end (`Purging -> Clean` once advised, `Purging -> Since` when the
//!   advice failed or in a fork child) is the one change the index does not see.
//!
//! Hence (i) every region that reads `Since` is on a dirty list, so the dirty search
//! and the purge's visit miss none; (ii) a clean list holds only regions that read
//! `Clean`, which only the writer can change; (iii) a dirty list may also hold regions
//! that read `Clean`, a finished purge's pieces (at most one pass's batch per purge in
//! flight), until that purge's merge refiles them (`coalesce_overlapping`) or a search
//! finds one first and moves it (`refile`). Every search still re-reads the
//! `DirtyWord` of each region it would take, as it did with one list: a stale entry
//! costs one probe, never a placement the policy would not have made.

use super::table::ARENA_SIZE;
use super::{Dirtiness, Region, RegionKind, Space, BIN_NEXT, BIN_PREV, NO_BIN};
use crate::sync::atomic::Ordering::Relaxed;
use core::ptr;

/// Size bins: one per power of two of a region's length.
const SIZE_BINS: usize = usize::BITS as usize;
const SPACES: usize = 2;
const CLASSES: usize = 2;
const LISTS: usize = SIZE_BINS * CLASSES * SPACES;

/// One bit per `ARENA_SIZE` unit of the 47-bit user address space (where the kernel
/// places our reservations): set for huge-page space. 16 KiB.
const UNIT_SHIFT: u32 = ARENA_SIZE.trailing_zeros();
const UNIT_WORDS: usize = (1 << (47 - UNIT_SHIFT)) / u64::BITS as usize;

/// Which of a bin's two lists a free region is filed on (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// `Since` or `Purging` when filed; may read `Clean` since (a finished purge).
    Dirty = 0,
    /// `Clean` when filed, and still.
    Clean = 1,
}

impl Class {
    fn of(d: Dirtiness) -> Class {
        match d {
            // A claimed region files as dirty: its purge may fail and make it `Since`
            // again outside the mutex, and rule (i) of the module doc must still hold.
            Dirtiness::Since(_) | Dirtiness::Purging => Class::Dirty,
            Dirtiness::Clean => Class::Clean,
        }
    }
}

/// Which lists a search walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lists {
    /// Dirty lists only: for searches that take only dirty regions.
    Dirty,
    /// Both, the dirty list of each bin before its clean one.
    All,
}

impl Lists {
    fn classes(self) -> &'static [Class] {
        match self {
            Lists::Dirty => &[Class::Dirty],
            Lists::All => &[Class::Dirty, Class::Clean],
        }
    }
}

pub(crate) struct FreeIndex {
    /// The list heads, by `list_of`.
    heads: [*mut Region; LISTS],
    /// Which reservation units are `Space::Huge`.
    huge_units: [u64; UNIT_WORDS],
    /// Bytes in all indexed free regions.
    pub bytes: usize,
    pub count: usize,
}

fn bin_of(len: usize) -> usize {
    (usize::BITS - 1 - len.max(1).leading_zeros()) as usize
}

fn list_of(space: Space, class: Class, bin: usize) -> usize {
    (space as usize * CLASSES + class as usize) * SIZE_BINS + bin
}

fn class_of_list(list: usize) -> Class {
    match (list / SIZE_BINS) % CLASSES {
        0 => Class::Dirty,
        _ => Class::Clean,
    }
}

impl FreeIndex {
    pub const fn new() -> Self {
        FreeIndex {
            heads: [ptr::null_mut(); LISTS],
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

    /// Files `r` by its space, its length and the dirtiness it reads now (Relaxed: under
    /// the mutex, only a purge's end can change it meanwhile, and either reading files
    /// it correctly, see the module doc).
    ///
    /// # Safety
    /// Writer mutex held; `r` is a live, attached free region not in the index.
    pub unsafe fn insert(&mut self, r: *mut Region) {
        // SAFETY: caller contract.
        let region = unsafe { &*r };
        debug_assert_eq!(region.kind(), RegionKind::Free);
        let class = Class::of(region.dirtiness());
        let list = list_of(self.space_of(region.start()), class, bin_of(region.len()));
        // SAFETY: caller contract: exclusive access to the links of indexed regions.
        unsafe { self.push(r, list) };
        self.bytes += region.len();
        self.count += 1;
    }

    /// Removes `r` if it is indexed. Must be called before `r`'s length changes.
    ///
    /// # Safety
    /// Writer mutex held; `r` is a live region descriptor.
    pub unsafe fn remove(&mut self, r: *mut Region) {
        // SAFETY: caller contract: `bin` and the links are the writer's.
        if unsafe { self.unlink(r) } {
            // SAFETY: as above; the length has not changed since `insert`.
            self.bytes -= unsafe { (*r).len() };
            self.count -= 1;
        }
    }

    /// Puts `r` (not on any list) at the head of `list`.
    ///
    /// # Safety
    /// Writer mutex held; `r` is a live region descriptor on no list.
    unsafe fn push(&mut self, r: *mut Region, list: usize) {
        // SAFETY: caller contract.
        unsafe {
            debug_assert_eq!(*(*r).bin.get(), NO_BIN);
            let head = self.heads[list];
            (*r).link(BIN_PREV).store(ptr::null_mut(), Relaxed);
            (*r).link(BIN_NEXT).store(head, Relaxed);
            if !head.is_null() {
                (*head).link(BIN_PREV).store(r, Relaxed);
            }
            self.heads[list] = r;
            *(*r).bin.get() = list as u16;
        }
    }

    /// Takes `r` off its list; false if it was on none.
    ///
    /// # Safety
    /// Writer mutex held; `r` is a live region descriptor.
    unsafe fn unlink(&mut self, r: *mut Region) -> bool {
        // SAFETY: caller contract.
        unsafe {
            let list = *(*r).bin.get();
            if list == NO_BIN {
                return false;
            }
            let prev = (*r).link(BIN_PREV).load(Relaxed);
            let next = (*r).link(BIN_NEXT).load(Relaxed);
            if prev.is_null() {
                self.heads[list as usize] = next;
            } else {
                (*prev).link(BIN_NEXT).store(next, Relaxed);
            }
            if !next.is_null() {
                (*next).link(BIN_PREV).store(prev, Relaxed);
            }
            *(*r).bin.get() = NO_BIN;
        }
        true
    }

    /// Moves `r`, found on a dirty list reading `Clean`, to its clean list. Sound under
    /// the mutex: only the writer turns a `Clean` region into anything else (a purge
    /// claims only `Since` ones), so the reading stays true until we change it.
    ///
    /// # Safety
    /// Writer mutex held; `r` is indexed.
    unsafe fn refile(&mut self, r: *mut Region) {
        // SAFETY: caller contract.
        unsafe {
            let list = *(*r).bin.get() as usize;
            debug_assert_eq!((*r).dirtiness(), Dirtiness::Clean);
            self.unlink(r);
            self.push(r, list + (Class::Clean as usize - Class::Dirty as usize) * SIZE_BINS);
        }
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
        &mut self,
        space: Space,
        len: usize,
        align: usize,
    ) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe {
            self.find_dirty(space, len, align)
                .or_else(|| self.find_any(space, len, align))
                .or_else(|| self.find_where(space, len, align, Lists::All, |_| true))
        }
    }

    /// `find` among dirty regions only: the dirty lists, each region's `Since` re-read
    /// (exact under the mutex: only the writer and a purge's claim, which needs the
    /// mutex, end a `Since`).
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find_dirty(
        &mut self,
        space: Space,
        len: usize,
        align: usize,
    ) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe { self.find_where(space, len, align, Lists::Dirty, |r| (*r).is_dirty()) }
    }

    /// `find` among all regions but those a purge has claimed, in bin order. `Purging`
    /// read here is current: the claim is made under the writer mutex (a purge may end
    /// it meanwhile; the region is then skipped once for nothing).
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find_any(
        &mut self,
        space: Space,
        len: usize,
        align: usize,
    ) -> Option<(*mut Region, usize)> {
        // SAFETY: caller contract; indexed regions are live.
        unsafe { self.find_where(space, len, align, Lists::All, |r| !(*r).is_purging()) }
    }

    /// The first region on `lists`, in bin order from `min_len`'s bin, for which
    /// `place` returns a start (the caller's placement rule, which re-reads what it
    /// needs of the region's dirtiness), with that start.
    ///
    /// # Safety
    /// Writer mutex held.
    pub unsafe fn find_placed(
        &self,
        space: Space,
        min_len: usize,
        lists: Lists,
        mut place: impl FnMut(&Region) -> Option<usize>,
    ) -> Option<(*mut Region, usize)> {
        for bin in bin_of(min_len)..SIZE_BINS {
            for &class in lists.classes() {
                let mut r = self.heads[list_of(space, class, bin)];
                while !r.is_null() {
                    // SAFETY: indexed regions are live while the writer mutex is held.
                    let region = unsafe { &*r };
                    if let Some(at) = place(region) {
                        return Some((r, at));
                    }
                    r = region.link(BIN_NEXT).load(Relaxed);
                }
            }
        }
        None
    }

    /// The first region on `lists`, in bin order from `len`'s bin, where `len` fits at
    /// an `align`ed start and that `accept` takes. A region on a dirty list that reads
    /// `Clean` is refiled on the way (see the module doc).
    unsafe fn find_where(
        &mut self,
        space: Space,
        len: usize,
        align: usize,
        lists: Lists,
        accept: impl Fn(*mut Region) -> bool,
    ) -> Option<(*mut Region, usize)> {
        for bin in bin_of(len)..SIZE_BINS {
            for &class in lists.classes() {
                let mut r = self.heads[list_of(space, class, bin)];
                while !r.is_null() {
                    // SAFETY: indexed regions are live while the writer mutex is held.
                    let region = unsafe { &*r };
                    let next = region.link(BIN_NEXT).load(Relaxed);
                    let (start, end) = (region.start(), region.end());
                    let at = (start + align - 1) & !(align - 1);
                    if at >= start && at.checked_add(len).is_some_and(|e| e <= end) && accept(r)
                    {
                        return Some((r, at));
                    }
                    if class == Class::Dirty && region.dirtiness() == Dirtiness::Clean {
                        // SAFETY: writer mutex held; `r` is indexed. `next` stays valid:
                        // only `r` moves.
                        unsafe { self.refile(r) };
                    }
                    r = next;
                }
            }
        }
        None
    }

    /// Visits every indexed region that may be dirty (the dirty lists: every region
    /// that reads `Since` is on one), for the purge pass.
    ///
    /// # Safety
    /// Writer mutex held for the whole visit; `f` must not change the index.
    pub unsafe fn for_each_dirty(&self, mut f: impl FnMut(*mut Region)) {
        for (list, &head) in self.heads.iter().enumerate() {
            if class_of_list(list) != Class::Dirty {
                continue;
            }
            let mut r = head;
            while !r.is_null() {
                f(r);
                // SAFETY: as in `find`.
                r = unsafe { (*r).link(BIN_NEXT).load(Relaxed) };
            }
        }
    }
}
