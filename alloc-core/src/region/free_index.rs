//! The free index: free regions on intrusive lists, one list per space (which
//! reservations they lie in, `Space`), dirtiness class (`Class`) and size bin, for
//! placement and for the purge's pick. It owns the list heads, the free regions' links
//! (`Region::link`, `Region::bin`) and the record of which reservations are huge-page
//! space (one map for all tables, each writing only its own reservations' bits, with
//! atomic read-modify-writes); the rest is touched only by the holder of the table's
//! writer mutex, so it needs no synchronisation. Calls nothing.
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

/// Size bins per power of two of a region's length, as a power of two: 4 bins, each
/// 1/4 of its power wide (jemalloc's size classes have the same spacing). Every region
/// in a bin above a request's own bin is longer than the request, so a search takes the
/// first (aligned, acceptable) region there; with one bin per power of two a request in
/// the upper half of its bin walked every shorter region of that bin first (the
/// region-table bench's roomy 48 KiB placements walked all 16 Ki of its 32 KiB gaps:
/// about 80% of the writer's instructions, callgrind; 12.7k instructions per update
/// before, 2.4k after, BENCHMARKS.md "freeidx").
const SUB_BITS: u32 = 2;
/// Size bins in all: lengths below `1 << SUB_BITS` have a bin each, then
/// `1 << SUB_BITS` per power of two up to `usize::MAX` (252), rounded up to whole
/// bitmap words.
const SIZE_BINS: usize = 256;
const _: () = assert!(bin_of(usize::MAX) < SIZE_BINS);
const BITMAP_WORDS: usize = SIZE_BINS / u64::BITS as usize;
const SPACES: usize = 2;
const CLASSES: usize = 2;
/// One set of lists per space and class.
const SETS: usize = SPACES * CLASSES;
const LISTS: usize = SIZE_BINS * SETS;

/// Regions a preference pass (`find_dirty`, `find_any`) examines in the request's own
/// bin, whose regions may be too short for it, before it moves on to the bins above,
/// where every region is long enough. The lists are LIFO, so the region a same-sized
/// object just left is among the first; past a few probes the own bin mostly holds the
/// regions too short for this request, which placement would walk on every call. The
/// last-resort pass in `find` (before a new reservation) walks the own bin whole.
const OWN_BIN_PROBES: usize = 8;

/// One bit per `ARENA_SIZE` unit of the 47-bit user address space (where the kernel
/// places our reservations): set for huge-page space. 16 KiB.
const UNIT_SHIFT: u32 = ARENA_SIZE.trailing_zeros();
const UNIT_WORDS: usize = (1 << (47 - UNIT_SHIFT)) / u64::BITS as usize;

/// Which reservation units are `Space::Huge`, for every table's index at once: a unit
/// belongs to one reservation, so to one table, at a time (the kernel maps no address
/// twice; a reservation is recorded here by `set_space` before any of it is indexed).
/// One map rather than one per table: an arena's 16 KiB map cost it a page fault for
/// its one bit, and 1 MiB of static data over 64 arenas; here the bits of neighbouring
/// reservations, whatever their tables, share a page. Core atomics under `loom` too:
/// the map is ordered by each table's writer mutex, not a protocol the models check.
static HUGE_UNITS: [core::sync::atomic::AtomicU64; UNIT_WORDS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; UNIT_WORDS];

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

/// `repr(C)`: the small fields first, beside the table's other hot fields (see
/// `RegionTable`'s layout), then the 8 KiB of list heads.
#[repr(C)]
pub(crate) struct FreeIndex {
    /// Bytes in all indexed free regions.
    pub bytes: usize,
    pub count: usize,
    /// Per set of lists (`space * CLASSES + class`), one bit per size bin whose list is
    /// not empty, so that a search skips empty bins a word at a time.
    nonempty: [[u64; BITMAP_WORDS]; SETS],
    /// The list heads, by `list_of`.
    heads: [*mut Region; LISTS],
    /// Regions `find_where` looked at (tests: the bound on a search's walk).
    #[cfg(test)]
    probes: usize,
}

/// The size bin of a length: the length itself below `1 << SUB_BITS`, then per power
/// of two `2^p` (p >= `SUB_BITS`) the bins of `[2^p + k * 2^(p - SUB_BITS), ...)`,
/// k in `0..1 << SUB_BITS`. Monotonic, so bins above a length's hold only longer ones.
const fn bin_of(len: usize) -> usize {
    let sub = 1 << SUB_BITS;
    if len < sub {
        return len;
    }
    let power = usize::BITS - 1 - len.leading_zeros();
    let shift = power - SUB_BITS;
    (((shift + 1) as usize) << SUB_BITS) | ((len >> shift) & (sub - 1))
}

fn set_of(space: Space, class: Class) -> usize {
    space as usize * CLASSES + class as usize
}

/// Bin-major: a bin's lists of every set are adjacent, so the bins one size range
/// uses share a page of `heads` whatever their class (set-major, the dirty and clean
/// lists of big sizes were 2 KiB apart: a page fault each at an arena's first use).
fn list_of(space: Space, class: Class, bin: usize) -> usize {
    bin * SETS + set_of(space, class)
}

/// The set and the bin of a list (`list_of`'s inverse).
fn set_and_bin(list: usize) -> (usize, usize) {
    (list % SETS, list / SETS)
}

/// The first bin at or after `from` set in `map`, if any.
fn next_bin(map: &[u64; BITMAP_WORDS], from: usize) -> Option<usize> {
    let bits = u64::BITS as usize;
    let mut word = from / bits;
    let mut w = *map.get(word)? & (u64::MAX << (from % bits));
    loop {
        if w != 0 {
            return Some(word * bits + w.trailing_zeros() as usize);
        }
        word += 1;
        w = *map.get(word)?;
    }
}

impl FreeIndex {
    pub const fn new() -> Self {
        FreeIndex {
            bytes: 0,
            count: 0,
            nonempty: [[0; BITMAP_WORDS]; SETS],
            heads: [ptr::null_mut(); LISTS],
            #[cfg(test)]
            probes: 0,
        }
    }

    /// Records `[base, base + len)`, a new reservation (`ARENA_SIZE`-aligned, a multiple
    /// of it), as belonging to `space`, before any of it is indexed.
    pub fn set_space(&mut self, base: usize, len: usize, space: Space) {
        for unit in (base >> UNIT_SHIFT)..((base + len) >> UNIT_SHIFT) {
            let (word, bit) = (unit / u64::BITS as usize, unit % u64::BITS as usize);
            if let Some(w) = HUGE_UNITS.get(word) {
                // Relaxed: the bit is read under this table's writer mutex, which
                // ordered this store before; the RMW keeps other tables' bits of the word.
                match space {
                    Space::Huge => w.fetch_or(1 << bit, Relaxed),
                    Space::Base => w.fetch_and(!(1 << bit), Relaxed),
                };
            }
        }
    }

    /// The space of the reservation holding `addr`.
    pub fn space_of(&self, addr: usize) -> Space {
        let unit = addr >> UNIT_SHIFT;
        // Relaxed: as in `set_space`.
        let word = HUGE_UNITS
            .get(unit / u64::BITS as usize)
            .map(|w| w.load(Relaxed));
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
        let (set, bin) = set_and_bin(list);
        self.nonempty[set][bin / u64::BITS as usize] |= 1 << (bin % u64::BITS as usize);
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
            let list = list as usize;
            if prev.is_null() {
                self.heads[list] = next;
                if next.is_null() {
                    let (set, bin) = set_and_bin(list);
                    self.nonempty[set][bin / u64::BITS as usize] &=
                        !(1 << (bin % u64::BITS as usize));
                }
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
            // The same space and bin, the clean set (`set_of`: the class is the low
            // part of the set, and the set the low part of the list, `list_of`).
            let (set, bin) = set_and_bin(list);
            let clean = set + (Class::Clean as usize - Class::Dirty as usize);
            self.push(r, bin * SETS + clean);
        }
    }

    /// A free region that can hold `len` bytes at an `align`-aligned start, and that
    /// start. Dirty regions (pages still resident, not yet purged) come first: reusing
    /// them costs no page faults and no new resident memory, while a clean region would
    /// grow RSS as the dirty one waits for its purge. Within each pass the smallest bins
    /// are searched first (best fit by bin, a quarter power of two wide; first fit
    /// within it, the request's own bin probed only `OWN_BIN_PROBES` deep), which keeps
    /// the big free regions whole for big objects and growth.
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
                .or_else(|| {
                    // Before the caller reserves: the own bin walked whole, claimed
                    // regions last.
                    let any = |r: *mut Region| !(*r).is_purging();
                    self.find_where(space, len, align, Lists::All, usize::MAX, any)
                        .or_else(|| {
                            self.find_where(space, len, align, Lists::All, usize::MAX, |_| true)
                        })
                })
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
        unsafe {
            self.find_where(space, len, align, Lists::Dirty, OWN_BIN_PROBES, |r| {
                (*r).is_dirty()
            })
        }
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
        unsafe {
            self.find_where(space, len, align, Lists::All, OWN_BIN_PROBES, |r| {
                !(*r).is_purging()
            })
        }
    }

    /// The first region on `lists`, in bin order from `min_len`'s bin, for which
    /// `place` returns a start (the caller's placement rule, which re-reads what it
    /// needs of the region's dirtiness), with that start. Every region from `min_len`'s
    /// bin up is offered (the rule may take a region shorter than it needs when the
    /// space runs on into the next one).
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
        let mut from = bin_of(min_len);
        while let Some(bin) = self.next_bin(space, lists, from) {
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
            from = bin + 1;
        }
        None
    }

    /// The first bin at or after `from` with a region on one of `lists` of `space`.
    fn next_bin(&self, space: Space, lists: Lists, from: usize) -> Option<usize> {
        let mut map = self.nonempty[set_of(space, Class::Dirty)];
        if lists == Lists::All {
            let clean = &self.nonempty[set_of(space, Class::Clean)];
            map.iter_mut().zip(clean).for_each(|(m, c)| *m |= c);
        }
        next_bin(&map, from)
    }

    /// The first region on `lists`, in bin order from `len`'s bin, where `len` fits at
    /// an `align`ed start and that `accept` takes, looking at no more than `probes`
    /// regions per list of `len`'s own bin (see `OWN_BIN_PROBES`). A region on a dirty
    /// list that reads `Clean` is refiled on the way (see the module doc).
    unsafe fn find_where(
        &mut self,
        space: Space,
        len: usize,
        align: usize,
        lists: Lists,
        probes: usize,
        accept: impl Fn(*mut Region) -> bool,
    ) -> Option<(*mut Region, usize)> {
        let own = bin_of(len);
        let mut from = own;
        while let Some(bin) = self.next_bin(space, lists, from) {
            let limit = if bin == own { probes } else { usize::MAX };
            for &class in lists.classes() {
                let mut r = self.heads[list_of(space, class, bin)];
                let mut seen = 0;
                while !r.is_null() && seen < limit {
                    seen += 1;
                    #[cfg(test)]
                    {
                        self.probes += 1;
                    }
                    // SAFETY: indexed regions are live while the writer mutex is held.
                    let region = unsafe { &*r };
                    let next = region.link(BIN_NEXT).load(Relaxed);
                    let (start, end) = (region.start(), region.end());
                    let at = (start + align - 1) & !(align - 1);
                    if at >= start && at.checked_add(len).is_some_and(|e| e <= end) && accept(r) {
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
            from = bin + 1;
        }
        None
    }

    /// Visits every indexed region that may be dirty (the dirty lists: every region
    /// that reads `Since` is on one), for the purge pass.
    ///
    /// # Safety
    /// Writer mutex held for the whole visit; `f` must not change the index.
    pub unsafe fn for_each_dirty(&self, mut f: impl FnMut(*mut Region)) {
        for space in [Space::Base, Space::Huge] {
            let mut from = 0;
            while let Some(bin) = self.next_bin(space, Lists::Dirty, from) {
                let mut r = self.heads[list_of(space, Class::Dirty, bin)];
                while !r.is_null() {
                    f(r);
                    // SAFETY: as in `find`.
                    r = unsafe { (*r).link(BIN_NEXT).load(Relaxed) };
                }
                from = bin + 1;
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::region::Dirtiness;
    use std::boxed::Box;
    use std::vec::Vec;

    const KIB: usize = 1024;
    /// Where the test regions pretend to lie (never dereferenced as memory).
    const BASE: usize = 1 << 40;

    /// Free regions, laid out one after another from `BASE`, with their index.
    struct Fixture {
        index: Box<FreeIndex>,
        /// Boxed: the index links the descriptors, which must not move as this grows.
        #[allow(clippy::vec_box)]
        regions: Vec<Box<Region>>,
        next: usize,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                index: Box::new(FreeIndex::new()),
                regions: Vec::new(),
                next: BASE,
            }
        }

        /// A free region of `len` bytes, of dirtiness `d`, indexed; its position.
        fn add(&mut self, len: usize, d: Dirtiness) -> usize {
            let r = Box::new(Region::new(self.next, len, RegionKind::Free, false));
            r.dirtiness.store(d, Relaxed);
            self.next += len + 4 * KIB;
            self.regions.push(r);
            let p = self.ptr(self.regions.len() - 1);
            // SAFETY: a live free region on no list; this test is the only thread.
            unsafe { self.index.insert(p) };
            self.regions.len() - 1
        }

        fn ptr(&self, i: usize) -> *mut Region {
            &*self.regions[i] as *const Region as *mut Region
        }

        fn class(&self, i: usize) -> Class {
            // SAFETY: the test is the only thread.
            let list = unsafe { *self.regions[i].bin.get() } as usize;
            assert_ne!(list, NO_BIN as usize, "indexed");
            match set_and_bin(list).0 % CLASSES {
                0 => Class::Dirty,
                _ => Class::Clean,
            }
        }

        fn find_dirty(&mut self, len: usize) -> Option<*mut Region> {
            // SAFETY: the test is the only thread.
            unsafe { self.index.find_dirty(Space::Base, len, 4 * KIB) }.map(|(r, _)| r)
        }

        fn find(&mut self, len: usize) -> Option<*mut Region> {
            // SAFETY: the test is the only thread.
            unsafe { self.index.find(Space::Base, len, 4 * KIB) }.map(|(r, _)| r)
        }

        fn dirty_visited(&self) -> Vec<*mut Region> {
            let mut seen = Vec::new();
            // SAFETY: the test is the only thread.
            unsafe { self.index.for_each_dirty(|r| seen.push(r)) };
            seen
        }
    }

    #[test]
    fn bins_are_a_quarter_power_of_two_wide_and_ordered() {
        let mut last = 0;
        for len in (1..=1 << 20).chain([usize::MAX / 2, usize::MAX]) {
            let bin = bin_of(len);
            assert!(bin >= last && bin < SIZE_BINS, "{len}");
            last = bin;
        }
        assert_eq!(bin_of(32 * KIB), bin_of(40 * KIB - 1));
        assert_eq!(bin_of(40 * KIB), bin_of(32 * KIB) + 1);
        assert_eq!(bin_of(48 * KIB), bin_of(32 * KIB) + 2);
        assert_eq!(bin_of(64 * KIB), bin_of(32 * KIB) + 4);
    }

    /// The region-table bench's shape: a bin full of regions just too short for the
    /// request (its 32 KiB gaps against a 36-48 KiB roomy placement). One list per power
    /// of two walked all of them before it reached the region that fits; the walk must
    /// not grow with their number.
    #[test]
    fn a_search_walks_a_few_of_the_regions_too_short_for_it() {
        let probes = |short: usize, len: usize| {
            let mut f = Fixture::new();
            let fits = f.add(64 * KIB, Dirtiness::since(1));
            for _ in 0..short {
                f.add(32 * KIB, Dirtiness::since(1));
            }
            assert_eq!(f.find_dirty(len), Some(f.ptr(fits)));
            f.index.probes
        };
        for len in [36 * KIB, 39 * KIB] {
            let (few, many) = (probes(100, len), probes(1000, len));
            assert_eq!(
                few, many,
                "walked {few} regions among 100, {many} among 1000"
            );
            assert!(many <= OWN_BIN_PROBES + 1);
        }
    }

    /// Placement wants dirty space first; clean regions are on lists of their own, so
    /// that search walks none of them.
    #[test]
    fn the_dirty_search_walks_no_clean_region() {
        let mut f = Fixture::new();
        let dirty = f.add(256 * KIB, Dirtiness::since(1));
        for _ in 0..1000 {
            f.add(32 * KIB, Dirtiness::Clean);
        }
        f.index.probes = 0;
        assert_eq!(f.find_dirty(8 * KIB), Some(f.ptr(dirty)));
        assert_eq!(f.index.probes, 1);
        assert_eq!(f.dirty_visited(), [f.ptr(dirty)]);
    }

    /// A purge ends outside the writer mutex: a region filed dirty may read `Clean`
    /// later. The dirty search must not take it, and moves it to its clean list; the
    /// search that takes any region still finds it.
    #[test]
    fn a_region_a_purge_cleaned_is_refiled_and_never_taken_as_dirty() {
        let mut f = Fixture::new();
        let r = f.add(32 * KIB, Dirtiness::since(1));
        // The purge: claimed under the mutex, advised under its read lock.
        f.regions[r].dirtiness.store(Dirtiness::Purging, Relaxed);
        assert_eq!(f.class(r), Class::Dirty);
        f.regions[r].dirtiness.store(Dirtiness::Clean, Relaxed);
        assert_eq!(f.find_dirty(8 * KIB), None);
        assert_eq!(f.class(r), Class::Clean);
        assert_eq!(f.find(8 * KIB), Some(f.ptr(r)));
    }

    /// A purge whose `madvise` failed (or a fork child's copy of one) makes its region
    /// `Since` again outside the mutex: it never left its dirty list, so placement and
    /// the next purge still find it.
    #[test]
    fn a_region_whose_purge_failed_stays_where_dirty_searches_look() {
        let mut f = Fixture::new();
        let r = f.add(32 * KIB, Dirtiness::since(5));
        f.regions[r].dirtiness.store(Dirtiness::Purging, Relaxed);
        // A writer refiles it meanwhile (a neighbour merged, say): still dirty-filed.
        // SAFETY: the test is the only thread; the region is indexed.
        unsafe {
            f.index.remove(f.ptr(r));
            f.index.insert(f.ptr(r));
        }
        assert_eq!(
            f.find_dirty(8 * KIB),
            None,
            "claimed regions are not placed"
        );
        f.regions[r].dirtiness.store(Dirtiness::since(5), Relaxed);
        assert_eq!(f.find_dirty(8 * KIB), Some(f.ptr(r)));
        assert_eq!(f.dirty_visited(), [f.ptr(r)]);
    }

    /// Before the caller reserves new address space, the request's own bin is walked
    /// whole: a region that fits deep in it is found.
    #[test]
    fn the_last_resort_walks_the_whole_own_bin() {
        let mut f = Fixture::new();
        let fits = f.add(39 * KIB, Dirtiness::Clean);
        for _ in 0..100 {
            f.add(32 * KIB, Dirtiness::since(1));
        }
        assert_eq!(f.find(36 * KIB), Some(f.ptr(fits)));
        // SAFETY: the test is the only thread; the region is indexed.
        unsafe { f.index.remove(f.ptr(fits)) };
        assert_eq!(f.find(36 * KIB), None);
        assert_eq!(f.index.count, 100);
    }
}
