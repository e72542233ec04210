//! The table's write side: `Writer`, one structural update in progress (writer mutex
//! held, thread pinned), and every change it makes to the tree, the descriptors and the
//! free index: placement (`allocate`, `allocate_roomy`, `carve`, new arenas), resizing
//! in place (`grow`, `shrink`), folding freed objects back into free space
//! (`drain_retired`, `coalesce`, `absorb`) and detaching descriptors. Each change
//! write-locks the regions it touches (`start_write`) and creates new ones write-locked
//! (`new_region`); `RegionTable::write` ends the update with one `end_write_all`.
//! Placement draws from one `Space` (huge-page reservations or the base ones). Calls
//! `tree` (and its descriptor blocks, `blocks`), `free_index`, `directory` (the
//! reserved total), `os`, `options` (the huge-page mode) and `space`.

use super::{Placed, RegionTable, WriterState, ARENA_SIZE, PURGE_PIECE};
use crate::os;
use crate::os::{HUGE_PAGE, PAGE_SIZE};
use crate::region::blocks::DESC_BYTES;
use crate::region::directory;
use crate::region::free_index::Lists;
use crate::region::{Dirtiness, PageMove, Region, RegionKind, RegionState, Space, RETIRED_NEXT};
use crate::space::{self, SlotKind};
use crate::sync::atomic::Ordering;
use core::ptr;
use crossbeam_epoch::Guard;

/// One structural update in progress: the writer mutex is held and the thread pinned.
pub(super) struct Writer<'a> {
    pub(super) table: &'a RegionTable,
    pub(super) state: &'a mut WriterState,
    pub(super) guard: &'a Guard,
    /// Whether this update may reserve new address space (`add_arena`). The arena set
    /// first tries placements without, in every arena, before one reserves.
    pub(super) may_reserve: bool,
    /// Set when `add_arena` was refused for `may_reserve`: the placement then gives up
    /// (`None`) rather than settle for what it would not have taken with a reservation.
    pub(super) refused_reserve: bool,
}

/// Free address space a large object gets after it, to grow into: doubling from the
/// small limit up to 64 MiB never moves (issue 14: with the 4x room `allocate_roomy`
/// gives, a `Vec` doubling from 64 KiB to 16 MiB still moved several times). Address
/// space is nearly free (47 bits; untouched pages cost no RSS and no page tables);
/// copies and faults are not.
pub const GROWTH_TARGET: usize = 64 << 20;

/// Growth room may reserve new address space while all reservations stay within this
/// much, whatever the program holds: room for 128 objects growing to 64 MiB (each
/// keeps 64 MiB after it), more than the region and realloc-growth workloads use, and
/// 1/8192 of the 47-bit user space. Untouched reserved space costs no RSS and no page
/// tables, but it counts against `RLIMIT_AS` and `vm.max_map_count` (one mapping per
/// reservation), and unbounded, a program that keeps moving big objects reserved a new
/// arena per move (1.6 TiB after 800 moves of a 600 MiB object, before this bound).
const ROOM_RESERVE_FLOOR: usize = 16 << 30;
/// ... or within this many times the bytes in use (reserved minus free), for programs
/// big enough that the floor would leave their large objects without room: 8x keeps
/// every live object's room (up to one doubling or 64 MiB) with space to spare.
const ROOM_RESERVE_FACTOR: usize = 8;

/// Objects of at least this many bytes may start in a dirty hole smaller than they are,
/// or with half their room (`find_dirty_start`). Measured (BENCHMARKS.md, "growth"):
/// for big-buffers' 5-12 MiB buffers it cut faults by 38% and madvise calls to none,
/// but applied to every large object it raised realloc-growth's faults (objects up to
/// 512 KiB) from 18k to 28k and its madvise calls from 30-70 to ~400, scattering small
/// growing objects over dirty holes. One huge page: the size from which objects are
/// "big" elsewhere (`large::HUGE_OBJECT_MIN`, `REMAP_MIN`).
const DIRTY_START_MIN: usize = HUGE_PAGE;

/// The room kept after an object of `len` bytes: up to `GROWTH_TARGET`, and at least
/// one doubling for objects beyond it.
pub fn growth_room(len: usize) -> usize {
    GROWTH_TARGET.saturating_sub(len).max(len)
}

/// The arena a range belongs to: regions merge only within one reservation, since a
/// range spanning two kernel mappings cannot be moved with `mremap`.
fn arena_of(addr: usize) -> usize {
    addr & !(ARENA_SIZE - 1)
}

/// The highest `align`ed start of `len` bytes ending at or before `end`.
fn top_start(end: usize, len: usize, align: usize) -> usize {
    (end - len) & !(align - 1)
}

impl<'a> Writer<'a> {
    fn start_write(&self, r: &Region) {
        // The broken twin of the two-arena loom model: one region left unlocked.
        #[cfg(all(test, loom))]
        if crate::region::loom_table::skips_write_lock(r) {
            return;
        }
        // SAFETY: we hold the writer mutex and `write()` ends the update.
        if unsafe { r.lock.start_write_waited(&self.table.seq) } {
            self.table.counters.reader_waits().inc();
        }
    }

    /// The region starting at `key` (under the writer mutex, attached).
    fn region_at(&self, key: usize) -> Option<&'a Region> {
        // SAFETY: we hold the writer mutex, and `guard` pins us.
        unsafe { self.table.tree.get_held(key, self.guard) }
    }

    /// The region with the greatest start <= `addr`.
    fn floor(&self, addr: usize) -> Option<(usize, &'a Region)> {
        // SAFETY: as in `region_at`.
        unsafe { self.table.tree.floor_held(addr, self.guard) }
    }

    /// The region with the smallest start > `addr`.
    fn next_after(&self, addr: usize) -> Option<(usize, &'a Region)> {
        // SAFETY: as in `region_at`.
        unsafe { self.table.tree.next_after_held(addr, self.guard) }
    }

    /// The region with the greatest start < `addr`.
    fn prev_before(&self, addr: usize) -> Option<(usize, &'a Region)> {
        // SAFETY: as in `region_at`.
        unsafe { self.table.tree.prev_before_held(addr, self.guard) }
    }

    /// A region the free index or the retired stack holds, seen for this update.
    ///
    /// # Safety
    /// `p` is an indexed free region or one drained from the retired stack: attached
    /// (or, drained, freed only by this writer after it detaches it), and this update
    /// is pinned for `'a`.
    unsafe fn held(&self, p: *const Region) -> &'a Region {
        // SAFETY: caller contract.
        unsafe { &*p }
    }

    fn live_object_at(&self, addr: usize) -> Option<&'a Region> {
        self.region_at(addr)
            .filter(|r| r.kind() != RegionKind::Free && r.state() == RegionState::Live)
    }

    /// A new descriptor, write-locked by this update (every region the writer creates
    /// comes from here, so none enters the tree readable before `end_write_all`).
    fn new_region(&self, start: usize, len: usize, kind: RegionKind, zeroed: bool) -> *mut Region {
        #[cfg(test)]
        if crate::region::tree::meta_budget::exhausted() {
            return ptr::null_mut();
        }
        // SAFETY: we hold the writer mutex. The descriptor class (64 B, aligned to its
        // size) covers Region's size and alignment (asserted in `region`).
        let p = unsafe { self.table.tree.blocks().alloc(DESC_BYTES) } as *mut Region;
        if !p.is_null() {
            // SAFETY: fresh metadata memory sized and aligned for a Region; it becomes
            // reachable only when inserted, so it is write-locked for this update first
            // (we hold the writer mutex, and `write()` ends the update).
            unsafe {
                p.write(Region::new(start, len, kind, zeroed));
                // The broken twin of loom model d: the new region left unstamped.
                #[cfg(all(test, loom))]
                if crate::region::loom_table::skips_stamp(start) {
                    return p;
                }
                (*p).stamp_new(&self.table.seq);
            }
        }
        p
    }

    /// Takes `r` out of the tree and frees its descriptor after the grace period.
    fn detach(&mut self, r: &'a Region) {
        self.start_write(r);
        // SAFETY: writer mutex held; removal never fails (the tree keeps spare nodes).
        unsafe { self.table.tree.remove(r.start(), self.guard) };
        self.discard(r);
    }

    /// Retires the descriptor of `r`, which the tree no longer reaches (removed, or its
    /// key now holds another descriptor): out of the free index, marked detached, freed
    /// after the grace period.
    fn discard(&mut self, r: &'a Region) {
        let p = r as *const Region as *mut Region;
        // Write-locked here, counted, so that `mark_detached` finds it locked already.
        self.start_write(r);
        // SAFETY: writer mutex held, and `write()` ends the update; `r` may be indexed.
        // Readers that still find `r` in an old tree version see it detached once they
        // can lock it, after `end_write_all`.
        unsafe {
            r.mark_detached(&self.table.seq);
            self.state.free.remove(p);
        }
        // SAFETY: unreachable from the tree; readers pinned now may still look at it, and
        // it is freed after they unpin. We hold the writer mutex.
        unsafe { self.table.tree.blocks().retire(self.guard, p as *mut u8) };
    }

    fn insert(&mut self, r: *mut Region) -> bool {
        // SAFETY: writer mutex held; `r` is a fresh descriptor not yet published.
        let inserted = unsafe { self.table.tree.insert(r, self.guard) };
        if inserted.is_err() {
            // SAFETY: never published, so no reader can hold it; writer mutex held.
            unsafe { self.table.tree.blocks().free_unpublished(r as *mut u8) };
            return false;
        }
        true
    }

    pub(super) fn drain_retired(&mut self) {
        let mut r = self.table.retired.take_all();
        let now = Dirtiness::since(os::now_ms());
        while !r.is_null() {
            // SAFETY: retired regions stay attached until this writer frees them.
            let region = unsafe { self.held(r) };
            r = region.link(RETIRED_NEXT).load(Ordering::Relaxed);
            // Off the stack now, whether it becomes free space below or stays retired.
            self.table
                .retired_bytes
                .fetch_sub(super::counted_retired(region), Ordering::Relaxed);
            // A guard page its retire did not lift (a fork child inherited the retire
            // half done, or the lift failed): lifted now, or, if it still cannot be,
            // the region stays retired and out of free space for good, rather than be
            // handed out with a page that faults. Rare, so the syscall under the writer
            // mutex costs nothing in steady state.
            if !region.lift_guard() {
                continue;
            }
            if region.kind() == RegionKind::Segment {
                // Segments live in base space only.
                space::set_table(region.start(), region.len(), false);
            }
            self.start_write(region);
            region.kind.store(RegionKind::Free as u8, Ordering::Relaxed);
            region
                .state
                .store(RegionState::Live as u8, Ordering::Relaxed);
            region.zeroed.store(false, Ordering::Relaxed);
            region.dirtiness.store(now, Ordering::Relaxed);
            self.table
                .dirty_bytes
                .fetch_add(region.len(), Ordering::Relaxed);
            self.coalesce(region);
        }
    }

    /// Merges the free region `r` with free neighbours in its arena that are as dirty
    /// as it is, and indexes it. Dirty and clean space stay apart (as jemalloc keeps its
    /// dirty and retained extents apart): a merged region could only be called all
    /// dirty, which would send placement into clean pages and purges over clean ones.
    fn coalesce(&mut self, mut r: &'a Region) -> &'a Region {
        // Dirtiness is read only after both regions are write-locked (a purge changes it
        // under a read lock); `kind` and the range change only under the writer mutex.
        let mergeable = |w: &mut Self, a: &Region, b: &Region| {
            if a.kind() != RegionKind::Free
                || b.kind() != RegionKind::Free
                || a.end() != b.start()
                || arena_of(a.start()) != arena_of(b.start())
            {
                return false;
            }
            // A piece a purge has claimed is not merged now, which would wait for its
            // `madvise`: the purge merges it when done (`coalesce_overlapping`). The
            // claim is made under the writer mutex, so `Purging` read here is current
            // or already over (then the purge's merge follows).
            if a.is_purging() || b.is_purging() {
                return false;
            }
            w.start_write(a);
            w.start_write(b);
            a.is_dirty() == b.is_dirty()
        };
        // Loops, not one step a side: between a purge's phases its pieces (adjacent,
        // equally clean once done) stay apart, so the first piece's merge-back finds its
        // neighbour piece and, beyond it, the clean space that follows. One step took the
        // piece and stopped short of that space, which stayed a region of its own.
        while let Some((_, prev)) = self.prev_before(r.start()) {
            if !mergeable(self, prev, r) {
                break;
            }
            self.absorb(prev, r);
            r = prev;
        }
        while let Some((_, next)) = self.next_after(r.start()) {
            if !mergeable(self, r, next) {
                break;
            }
            self.absorb(r, next);
        }
        let p = r as *const Region as *mut Region;
        // SAFETY: writer mutex held; remove first since its length may have changed.
        unsafe {
            self.state.free.remove(p);
            self.state.free.insert(p);
        }
        r
    }

    /// Folds the ranges purges left to this table's next writer (`RegionTable::merge_back`,
    /// `region::deferred`): each is coalesced as the purge would have.
    pub(super) fn fold_deferred(&mut self) {
        let table = self.table;
        table
            .deferred
            .take_each(|start, end| self.coalesce_overlapping(start, end));
    }

    /// Coalesces every free region overlapping `[start, end)` (nothing if it is empty).
    /// Costs one lookup per region now covering the range: the one region a purge
    /// cleaned, unless writers cut it up between the purge's phases.
    pub(super) fn coalesce_overlapping(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        let mut next = self.floor(start);
        while let Some((_, mut r)) = next {
            if r.start() >= end {
                break;
            }
            // Dirty ones too: a purge-owned field read here, unlocked, could be stale, and
            // `coalesce` reads dirtiness only after it write-locks both sides.
            if r.end() > start && r.kind() == RegionKind::Free {
                r = self.coalesce(r);
            }
            next = self.next_after(r.start());
        }
    }

    /// `left` (free) takes over its adjacent free neighbour `right`.
    fn absorb(&mut self, left: &'a Region, right: &'a Region) {
        // Both locked before their purge-owned fields are read (see `carve`).
        self.start_write(left);
        self.start_write(right);
        let p = left as *const Region as *mut Region;
        // SAFETY: writer mutex held; its bin depends on the length about to change.
        unsafe { self.state.free.remove(p) };
        let right_len = right.len();
        let zeroed = left.is_zeroed() && right.is_zeroed();
        let dirty = left.dirtiness().merge(right.dirtiness());
        if right.holds_moved_pages() {
            left.set_moved_pages(true);
        }
        self.detach(right);
        left.len.fetch_add(right_len, Ordering::Relaxed);
        left.zeroed.store(zeroed, Ordering::Relaxed);
        left.dirtiness.store(dirty, Ordering::Relaxed);
    }

    pub(super) fn allocate(
        &mut self,
        len: usize,
        align: usize,
        kind: RegionKind,
        space: Space,
    ) -> Option<Placed> {
        // SAFETY: writer mutex held.
        let found = unsafe { self.state.free.find(space, len, align) };
        let (free, at) = match found {
            Some(hit) => hit,
            None => {
                self.add_arena(len, align, space)?;
                // SAFETY: as above.
                unsafe { self.state.free.find(space, len, align)? }
            }
        };
        // SAFETY: indexed regions are attached descriptors.
        let free = unsafe { self.held(free) };
        self.carve(free, at, len, kind)
    }

    /// Roomy placement, in order of preference: dirty space with room to grow (no
    /// faults, no new RSS, and the next growth is in place), dirty space that just fits
    /// (still no new RSS: a growing buffer most often finds the space its previous
    /// incarnation left), clean space with room, then whatever `allocate` finds.
    pub(super) fn allocate_roomy(
        &mut self,
        len: usize,
        align: usize,
        kind: RegionKind,
    ) -> Option<Placed> {
        const ROOM_FACTOR: usize = 4;
        let want = len.saturating_mul(ROOM_FACTOR);
        let free = &mut self.state.free;
        // SAFETY: writer mutex held.
        let found = unsafe {
            free.find_dirty(Space::Base, want, align)
                .map(|hit| (hit, true))
                .or_else(|| {
                    free.find_dirty(Space::Base, len, align)
                        .map(|hit| (hit, false))
                })
                .or_else(|| {
                    free.find_any(Space::Base, want, align)
                        .map(|hit| (hit, true))
                })
        };
        let Some(((region, at), roomy)) = found else {
            return self.allocate(len, align, kind, Space::Base);
        };
        // SAFETY: indexed regions are attached descriptors.
        let free = unsafe { self.held(region) };
        let at = if roomy {
            // `find` guaranteed an aligned start with `want` bytes after it, so rounding
            // the middle down can only fall back to that aligned start.
            let middle = free.start() + (free.len() - len) / 2;
            (middle & !(align - 1)).max(at)
        } else {
            at
        };
        self.carve(free, at, len, kind)
    }

    /// Placement with growth room (see `RegionTable::allocate_with_room`). Objects go to
    /// the top of the free region that takes them, below the room they keep, so the
    /// free space right after each live object is the last a later placement uses; a
    /// region right after a live large object keeps that object's room free too. In
    /// order: dirty space with room after it (no faults), dirty space that fits (no new
    /// RSS; skipped for a `growing` object, which would soon move out of it and copy),
    /// clean space with room, a new arena, then `allocate`. All within `space`, where
    /// `Space::Huge` places on huge-page boundaries.
    pub(super) fn allocate_with_room(
        &mut self,
        len: usize,
        align: usize,
        kind: RegionKind,
        growing: bool,
        space: Space,
    ) -> Option<Placed> {
        let align = match space {
            Space::Huge => align.max(HUGE_PAGE),
            Space::Base => align,
        };
        let room = growth_room(len);
        let want = len.saturating_add(room);
        let found = self
            .find_with_room(space, len, room, align, true)
            .or_else(|| {
                (len >= DIRTY_START_MIN)
                    .then(|| self.find_dirty_start(space, len, room, align, len / 2))
                    .flatten()
            })
            .or_else(|| {
                if growing {
                    return None;
                }
                // SAFETY: writer mutex held; indexed regions are attached descriptors.
                unsafe {
                    let (r, _) = self.state.free.find_dirty(space, len, align)?;
                    Some((r, top_start((*r).end(), len, align)))
                }
            })
            .or_else(|| {
                // In huge-page space a fresh object takes any dirty hole it can start in,
                // however small: the hole's pages need no fault, and a hole left behind
                // stays resident until a purge. big-buffers' holes under half the next
                // buffer piled up there (peak RSS 505 MiB against jemalloc's 409 at
                // 5-25 MiB, one thread; BENCHMARKS.md, "bigbuf10").
                (!growing && space == Space::Huge)
                    .then(|| self.find_dirty_start(space, len, room, align, HUGE_PAGE))
                    .flatten()
            });
        let found = found
            .or_else(|| self.find_with_room(space, len, room, align, false))
            .or_else(|| {
                if !self.may_reserve_for_room(want) {
                    return None;
                }
                self.add_arena(want, align, space)?;
                self.find_with_room(space, len, room, align, false)
            });
        let Some((region, at)) = found else {
            if self.refused_reserve {
                // Growth room needs a reservation this update may not make: the caller
                // looks elsewhere, then comes back allowed to reserve.
                return None;
            }
            return self.allocate(len, align, kind, space);
        };
        // SAFETY: indexed regions are attached descriptors.
        let free = unsafe { self.held(region) };
        if at + len > free.end() && !self.extend_into_next(free, at + len - free.end()) {
            return self.allocate(len, align, kind, space);
        }
        self.carve(free, at, len, kind)
    }

    /// Dirty space of at least `min_len` bytes an object can start in, at the dirty
    /// region's start, with at least half its room after it, the object and its room
    /// running on into the clean free region after the dirty one where they need to: the
    /// start, and the dirty region.
    /// A freed big buffer leaves a dirty hole with clean room after it; the next buffer,
    /// if bigger, used to skip it for clean space and fault every page, and a growing
    /// object found no dirty space with all its room once a live object (a buffer shrunk
    /// in place, whose tail is the dirty space) sat before it. With half its room, an
    /// object grows in place through the dirty pages and moves (by `mremap` when big, no
    /// copy) at most once more before its room is whole. A live large object right
    /// before the dirty region keeps room for one doubling of its own.
    fn find_dirty_start(
        &self,
        space: Space,
        len: usize,
        room: usize,
        align: usize,
        min_len: usize,
    ) -> Option<(*mut Region, usize)> {
        let place = |r: &Region| -> Option<usize> {
            if !r.is_dirty() {
                return None;
            }
            let start = r.start();
            let end = match self.free_at(r.end(), start) {
                Some(next) if next.dirtiness() == Dirtiness::Clean => next.end(),
                _ => r.end(),
            };
            let floor = self
                .large_before(start)
                .map_or(start, |prev| start.saturating_add(prev.len()));
            let at = floor.checked_next_multiple_of(align)?;
            let room_end = at.checked_add(len)?.checked_add(room / 2)?;
            (at < r.end() && room_end <= end).then_some(at)
        };
        // Dirty regions of about half the object and more (smaller ones save few faults).
        // SAFETY: writer mutex held; `place` only reads the tree.
        unsafe {
            self.state
                .free
                .find_placed(space, min_len.max(1), Lists::Dirty, place)
        }
    }

    /// Lengthens the free region `r` by the first `by` bytes of the clean free region
    /// after it, so that one `carve` can cut an object across both; `dirty_bytes` counts
    /// the taken bytes as `r`'s (the carve subtracts them with the rest). False, with
    /// nothing changed, when there is no such region or its `rekey` ran out of metadata.
    fn extend_into_next(&mut self, r: &'a Region, by: usize) -> bool {
        let Some(next) = self.free_at(r.end(), r.start()) else {
            return false;
        };
        self.start_write(r);
        self.start_write(next);
        // A purge may have cleaned `r` (never dirtied `next`) before the locks.
        // The bytes taken may lie in a mapping a move brought in: their mark comes with
        // them, as in every other cut and merge (review12b F2). Read before `take_front`,
        // which may take `next` whole.
        let moved = next.holds_moved_pages();
        if next.is_dirty() || next.len() < by || !self.take_front(next, by) {
            return false;
        }
        if moved {
            r.set_moved_pages(true);
        }
        let rp = r as *const Region as *mut Region;
        // SAFETY: writer mutex held; out of the index before its length changes.
        unsafe {
            self.state.free.remove(rp);
            r.len.fetch_add(by, Ordering::Relaxed);
            self.state.free.insert(rp);
        }
        if r.is_dirty() {
            self.table.dirty_bytes.fetch_add(by, Ordering::Relaxed);
        }
        true
    }

    /// Whether a new reservation of about `want` bytes may be made for growth room
    /// (see `ROOM_RESERVE_FLOOR`, `ROOM_RESERVE_FACTOR`); when not, the object is placed
    /// densely in the space there is.
    /// All arenas' reservations count (`directory::reserved_total`), against this
    /// arena's bytes in use: a bound that can only err on the tight side.
    fn may_reserve_for_room(&self, want: usize) -> bool {
        let in_use = self.state.reserved.saturating_sub(self.state.free.bytes);
        let limit = ROOM_RESERVE_FLOOR.max(in_use.saturating_mul(ROOM_RESERVE_FACTOR));
        directory::reserved_total().saturating_add(want.next_multiple_of(ARENA_SIZE)) <= limit
    }

    /// A free region (dirty ones only if `dirty`) where `len` fits at an `align`ed start
    /// with `room` free bytes after it, without taking the room of the live large object
    /// right before the region; and the highest such start.
    fn find_with_room(
        &self,
        space: Space,
        len: usize,
        room: usize,
        align: usize,
        dirty: bool,
    ) -> Option<(*mut Region, usize)> {
        let place = |r: &Region| -> Option<usize> {
            // A region a purge has claimed would make this writer wait for its
            // `madvise` (see `FreeIndex::find`): left to the dense fallback.
            if (dirty && !r.is_dirty()) || r.is_purging() {
                return None;
            }
            let start = r.start();
            // The room may run on into a clean free region after a dirty one (dirty and
            // clean space are kept apart), which `grow` takes as one neighbour at a time.
            let end = if dirty {
                match self.next_after(start) {
                    Some((next, n)) if next == r.end() => {
                        if n.kind() == RegionKind::Free && arena_of(next) == arena_of(start) {
                            n.end()
                        } else {
                            r.end()
                        }
                    }
                    _ => r.end(),
                }
            } else {
                r.end()
            };
            // As high as the room allows, and inside the region itself.
            let below_room = end.checked_sub(len.checked_add(room)?)?;
            let at = below_room.min(r.end().checked_sub(len)?) & !(align - 1);
            if at < start {
                return None;
            }
            let floor = self
                .large_before(start)
                .map_or(start, |prev| start.saturating_add(growth_room(prev.len())));
            (at >= floor).then_some(at)
        };
        // SAFETY: writer mutex held; `place` only reads the tree.
        unsafe {
            self.state.free.find_placed(
                space,
                if dirty { len } else { len.saturating_add(room) },
                if dirty { Lists::Dirty } else { Lists::All },
                place,
            )
        }
    }

    /// Reserves new address space big enough for `len` at `align` for `space` and
    /// indexes it as free. The reservation is recorded in the directory under this
    /// table's id before any of it can be handed out, and stays this table's for good.
    /// A huge-space reservation is marked for transparent huge pages here, once for its
    /// lifetime, when the kernel's mode wants the advice (`options::thp`); the mark
    /// failing (a kernel without THP) leaves ordinary pages, which is no error.
    fn add_arena(&mut self, len: usize, align: usize, space: Space) -> Option<()> {
        if !self.may_reserve {
            self.refused_reserve = true;
            return None;
        }
        // Relaxed: set by this table's first placement, on this path or one ordered
        // before it by the writer mutex.
        let id = self.table.id.load(Ordering::Relaxed);
        if id == 0 {
            return None;
        }
        let size = len
            .checked_add(align)?
            .checked_next_multiple_of(ARENA_SIZE)?;
        let base = os::reserve(size, ARENA_SIZE).ok()?;
        let r = self.new_region(base, size, RegionKind::Free, true);
        if r.is_null() || !self.insert(r) {
            // SAFETY: the reservation was never published.
            let _ = unsafe { os::release(base, size) };
            return None;
        }
        if space == Space::Huge && crate::options::thp() == crate::options::Thp::Advise {
            let _ = os::advise_huge_pages(base, size);
        }
        self.state.free.set_space(base, size, space);
        // Before anything in it is handed out (the carve that follows, under this same
        // mutex): every address a caller can hold finds this table (see `directory`).
        space::set_arena(base, size, id);
        space::set_table(base, size, space == Space::Huge);
        self.state.reserved += size;
        directory::add_reserved(size);
        self.table.reserved_any[space as usize].store(true, Ordering::Relaxed);
        // SAFETY: writer mutex held; fresh attached free region.
        unsafe { self.state.free.insert(r) };
        Some(())
    }

    /// Cuts `[at, at + len)` out of the free region `free` as a new live region. All or
    /// nothing: the descriptors are allocated and every tree insert (the steps that can
    /// fail, for want of metadata) is made before `free` changes, and a failure undoes
    /// what was published, so the table is as it was when this returns `None`.
    fn carve(
        &mut self,
        free: &'a Region,
        at: usize,
        len: usize,
        kind: RegionKind,
    ) -> Option<Placed> {
        // Write-lock first: a purge may be changing `zeroed`/`dirtiness` under its read
        // lock, and `start_write` waits it out.
        self.start_write(free);
        let (start, end) = (free.start(), free.end());
        let zeroed = free.is_zeroed();
        let dirty = free.dirtiness();
        let moved = free.holds_moved_pages();
        let object = self.new_region(at, len, kind, zeroed);
        if object.is_null() {
            return None;
        }
        // SAFETY: fresh, unpublished; the object's pages are the free region's.
        unsafe { (*object).set_moved_pages(moved) };
        let tail = if at + len < end {
            let t = self.new_region(at + len, end - at - len, RegionKind::Free, zeroed);
            if t.is_null() {
                // SAFETY: never published; writer mutex held.
                unsafe { self.table.tree.blocks().free_unpublished(object as *mut u8) };
                return None;
            }
            // SAFETY: fresh, unpublished; the tail carries the free region's purge state.
            unsafe {
                (*t).dirtiness.store(dirty, Ordering::Relaxed);
                (*t).set_moved_pages(moved);
            }
            t
        } else {
            ptr::null_mut()
        };
        // The tail first: until `free` shrinks, readers in its range still find `free`
        // (write-locked, so they wait for this update) or the tail, which is free space.
        if !tail.is_null() && !self.insert(tail) {
            // SAFETY: never published (`insert` freed the tail); writer mutex held.
            unsafe { self.table.tree.blocks().free_unpublished(object as *mut u8) };
            return None;
        }
        let fp = free as *const Region as *mut Region;
        if at == start {
            // The object takes the free region's key in place: no allocation, no failure.
            // SAFETY: writer mutex held, `start` is in the tree.
            unsafe { self.table.tree.replace(start, object, self.guard) };
            self.discard(free);
        } else if self.insert(object) {
            // SAFETY: writer mutex held; out of the index before its length changes,
            // back in after, as the head that stays free.
            unsafe {
                self.state.free.remove(fp);
                free.len.store(at - start, Ordering::Relaxed);
                self.state.free.insert(fp);
            }
        } else {
            if !tail.is_null() {
                // SAFETY: published above, so it goes the way of any detached region.
                self.detach(unsafe { &*tail });
            }
            return None;
        }
        if !tail.is_null() {
            // SAFETY: writer mutex held; attached free region.
            unsafe { self.state.free.insert(tail) };
        }
        if kind == RegionKind::Segment {
            space::set_kind(at, len, SlotKind::Segment);
        }
        if dirty.is_dirty() {
            self.table.dirty_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        Some(Placed {
            start: at,
            len,
            zeroed,
            dirty_after: !tail.is_null() && dirty.is_dirty(),
        })
    }

    /// Cuts a piece off the top of the free region `r` for a purge: returns the piece to
    /// purge, at most `limit` bytes (rounded up to a page) and at most `PURGE_PIECE`, and
    /// the rest (`r` itself, shortened, just as dirty), or `(r, None)` when `r` is small
    /// enough already. In huge-page space the cut falls on a huge-page boundary, below
    /// the exact one (the piece is less than a huge page longer than `limit`), so no
    /// purge splits a transparent huge page and leaves its other half to fault 4 KiB at
    /// a time. Out of metadata, `r` stays whole (and is the piece): purging it in one
    /// call is slower for a writer that needs it, never wrong.
    ///
    /// From the top, because the dirty space a purge leaves is what placement reuses
    /// next: kept at the region's start, with the purged piece (clean, free) after it,
    /// an object placed there has its growth room through the dirty pages and on into
    /// the clean ones (`find_with_room` runs the room on into the free region after a
    /// dirty one). Cut from the front, the dirty rest sat at the region's end, where a
    /// region at the top of its reservation (the first object a reservation takes goes
    /// to its top, below its room) has no room after it: the `region` workload's next
    /// buffer went to clean space and left the rest dirty at its own peak (BENCHMARKS.md,
    /// "peak9").
    pub(super) fn split_for_purge(
        &mut self,
        r: &'a Region,
        limit: usize,
    ) -> (&'a Region, Option<&'a Region>) {
        let limit = limit
            .min(PURGE_PIECE)
            .next_multiple_of(PAGE_SIZE)
            .max(PAGE_SIZE);
        let (start, end) = (r.start(), r.end());
        if end - start <= limit {
            return (r, None);
        }
        let cut = match self.state.free.space_of(start) {
            Space::Huge => {
                let down = (end - limit) & !(HUGE_PAGE - 1);
                // An end off the huge-page grid (rare there): a piece within the bound.
                let cut = if end - down > PURGE_PIECE {
                    down + HUGE_PAGE
                } else {
                    down
                };
                if cut <= start {
                    return (r, None);
                }
                cut
            }
            Space::Base => end - limit,
        };
        // Write-locked before its purge-owned fields are read (see `carve`).
        self.start_write(r);
        let piece = self.new_region(cut, end - cut, RegionKind::Free, r.is_zeroed());
        if piece.is_null() {
            return (r, None);
        }
        // SAFETY: fresh, unpublished; the piece keeps the region's dirty stamp and marks.
        unsafe {
            (*piece).dirtiness.store(r.dirtiness(), Ordering::Relaxed);
            (*piece).set_moved_pages(r.holds_moved_pages());
        }
        if !self.insert(piece) {
            return (r, None);
        }
        let rp = r as *const Region as *mut Region;
        // SAFETY: writer mutex held; out of the index before its length changes. Both
        // are attached free regions.
        unsafe {
            self.state.free.remove(rp);
            r.len.store(cut - start, Ordering::Relaxed);
            self.state.free.insert(rp);
            self.state.free.insert(piece);
            (&*piece, Some(r))
        }
    }

    /// The large object ending at `start` in the same arena (only such a neighbour can
    /// grow into the space at `start`), if any.
    fn large_before(&self, start: usize) -> Option<&'a Region> {
        let (prev_start, prev) = self.prev_before(start)?;
        (prev.kind() == RegionKind::Large
            && prev.end() == start
            && arena_of(prev_start) == arena_of(start))
        .then_some(prev)
    }

    /// The free region starting at `at` in the same arena as `addr`, if any.
    pub(super) fn free_at(&self, at: usize, addr: usize) -> Option<&'a Region> {
        self.region_at(at)
            .filter(|r| r.kind() == RegionKind::Free && arena_of(at) == arena_of(addr))
    }

    /// Takes the first `take` bytes (at most its length) of the write-locked free region
    /// `r`: detaches it when that is all of it, else moves its key up (`rekey`, which
    /// needs tree nodes and can fail: then nothing changed and this is false). Lowers
    /// `dirty_bytes` by what it took of dirty space.
    fn take_front(&mut self, r: &'a Region, take: usize) -> bool {
        // Read after the write lock (a purge changes it under its read lock).
        let dirty = r.is_dirty();
        if r.len() == take {
            self.detach(r);
        } else {
            let rp = r as *const Region as *mut Region;
            // SAFETY: writer mutex held; no key lies between r.start and the new start,
            // which stays inside `r`.
            unsafe {
                self.state.free.remove(rp);
                if self
                    .table
                    .tree
                    .rekey(r.start(), r.start() + take, self.guard)
                    .is_err()
                {
                    self.state.free.insert(rp);
                    return false;
                }
                r.start.fetch_add(take, Ordering::Relaxed);
                r.len.fetch_sub(take, Ordering::Relaxed);
                self.state.free.insert(rp);
            }
        }
        if dirty {
            self.table.dirty_bytes.fetch_sub(take, Ordering::Relaxed);
        }
        true
    }

    /// Grows the live object at `addr` to `new_len` into the free space after it: one
    /// free neighbour, or two when the first is too short. Dirty and clean free space
    /// are kept apart (`coalesce`), so room that runs from a dirty region on into the
    /// clean one after it (as `find_with_room` places it) is two regions; taking only one
    /// at a time, a doubling that crossed their border moved the object.
    pub(super) fn grow(&mut self, addr: usize, new_len: usize) -> bool {
        let Some(r) = self.live_object_at(addr) else {
            return false;
        };
        let delta = match new_len.checked_sub(r.len()) {
            Some(0) | None => return true,
            Some(d) => d,
        };
        let Some(next) = self.free_at(r.end(), addr) else {
            return false;
        };
        if next.len() >= delta {
            self.start_write(r);
            self.start_write(next);
            let moved = next.holds_moved_pages();
            if !self.take_front(next, delta) {
                return false;
            }
            if moved {
                r.set_moved_pages(true);
            }
        } else {
            let Some(after) = self.free_at(next.end(), addr) else {
                return false;
            };
            let rest = delta - next.len();
            if after.len() < rest {
                return false;
            }
            self.start_write(r);
            self.start_write(next);
            self.start_write(after);
            // The step that can fail first; then `next` goes whole, which cannot.
            if !self.take_front(after, rest) {
                return false;
            }
            let moved = next.holds_moved_pages() || after.holds_moved_pages();
            // Taking all of it detaches it, which cannot fail.
            let taken = self.take_front(next, next.len());
            debug_assert!(taken);
            if moved {
                r.set_moved_pages(true);
            }
        }
        // The counter moved only once nothing could fail any more (`take_front`).
        r.len.store(new_len, Ordering::Relaxed);
        true
    }

    /// Moves the live object at `addr` into a new region of `new_len` bytes placed as
    /// `allocate_with_room` places a growing one, moving its pages with `mremap` instead
    /// of copying them, in this one update: the source, the destination's free region
    /// and the neighbours they merge with are write-locked (`start_write`) and unlocked
    /// together by `end_write_all`, so no reader sees the object in two places and no
    /// purge advises either range meanwhile (`carve` waits a purge's read lock out).
    /// The source range is left mapped and empty (`MREMAP_DONTUNMAP`): it becomes
    /// clean free space reading as zero, counted in no dirty bytes: `PageMove::Moved`.
    /// When a move stops (`os::move_pages`), the destination is still returned with
    /// `PageMove::Copy` and the bytes that did move, for the caller to copy the rest
    /// into and free the source (mapped again if the kernel unmapped it; if another
    /// mapping took part of it, it stays allocated and unused, and a second one is
    /// placed, into which everything is copied); `None` when no destination could be
    /// placed. Never `PageMove::Lost`.
    pub(super) fn relocate(
        &mut self,
        addr: usize,
        new_len: usize,
        align: usize,
        space: Space,
    ) -> Option<(Placed, PageMove)> {
        let r = self.live_object_at(addr)?;
        let old_len = r.len();
        debug_assert!(old_len < new_len && r.kind() == RegionKind::Large);
        let placed = self.allocate_with_room(new_len, align, RegionKind::Large, true, space)?;
        let Some(dest) = self.region_at(placed.start) else {
            return Some((placed, PageMove::Copy { moved: 0 })); // never: it was just placed
        };
        self.start_write(r);
        // SAFETY: both ranges are in our reservations; the destination is a region this
        // update just carved out of free space, the source a live object whose owner is
        // inside `realloc` (it needs only the content, which moves with the pages), and
        // both are write-locked until the update ends.
        match unsafe { super::move_pages_into(addr, r.holds_moved_pages(), dest, old_len, space) } {
            PageMove::Moved => {}
            copy @ PageMove::Copy { .. } => return Some((placed, copy)),
            PageMove::Lost => {
                // `dest` stays live for good, nobody's: count it, and place another.
                self.table.live_regions.fetch_add(1, Ordering::Relaxed);
                let other = self.allocate_with_room(new_len, align, RegionKind::Large, true, space);
                return other.map(|other| (other, PageMove::Copy { moved: 0 }));
            }
        }
        // The source is now empty: clean, zero, free.
        r.kind.store(RegionKind::Free as u8, Ordering::Relaxed);
        r.zeroed.store(true, Ordering::Relaxed);
        r.dirtiness.store(Dirtiness::Clean, Ordering::Relaxed);
        self.coalesce(r);
        Some((placed, PageMove::Moved))
    }

    pub(super) fn shrink(&mut self, addr: usize, new_len: usize) -> bool {
        let Some(r) = self.live_object_at(addr) else {
            return false;
        };
        if new_len >= r.len() || new_len == 0 {
            return new_len == r.len();
        }
        let tail = self.new_region(addr + new_len, r.len() - new_len, RegionKind::Free, false);
        if tail.is_null() {
            return false;
        }
        let old_len = r.len();
        self.start_write(r);
        r.len.store(new_len, Ordering::Relaxed);
        if !self.insert(tail) {
            r.len.store(old_len, Ordering::Relaxed);
            return false;
        }
        r.mark_shrunk();
        // SAFETY: just inserted, attached.
        let tail = unsafe { &*tail };
        tail.set_moved_pages(r.holds_moved_pages());
        tail.dirtiness
            .store(Dirtiness::since(os::now_ms()), Ordering::Relaxed);
        self.table
            .dirty_bytes
            .fetch_add(tail.len(), Ordering::Relaxed);
        self.coalesce(tail);
        true
    }
}
