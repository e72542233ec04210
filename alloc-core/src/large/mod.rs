//! Large objects: every request above the small limit (or aligned beyond a page) is a
//! region of its own. Owns the realloc counters; calls `region` (placement, retire,
//! in-place growth and shrink, page moves), `purge` (the live-bytes gauge and the purge
//! clock), its parts `cache` (the medium size classes and the per-thread cache) and
//! `prefault`, `options`, `space` (a region's kind), `misuse` (out of memory), and `os`
//! only for its
//! clock, the mappings gauge and query (`os::maps::may_split`,
//! `os::maps::inside_a_larger_mapping`), sparse copies and guard markers
//! (`os::pagemap`, `os::checkpoint`): every
//! `mremap` is the region table's (`RegionTable::relocate`, `Arenas::move_pages`).
//!
//! Medium objects (up to `cache::MEDIUM_MAX`, 1 MiB) are rounded up to a medium class
//! (eight per doubling) and, when freed, stay in their freer's region cache (`cache`),
//! from which the next allocation of the class on that thread takes them back without a
//! tree update or the writer mutex.
//!
//! A zero-filled object placed on fresh pages is faulted in before it is returned, or
//! left lazy and sampled, as `prefault` decides from the program's earlier ones.
//!
//! The table places every large object with free address space after it (see
//! `region::table`), so `realloc` grows in place (a table update under the two
//! regions' write locks, one bulk unlock) through doubling up to 64 MiB; otherwise it
//! moves the object. Below `HUGE_OBJECT_MIN` (4 MiB) a move takes no process-wide lock
//! by default: in base space, one of `MEDIUM_REMAP_MIN` and more whose pages holding
//! bytes are at most `SPARSE_MAX_PAGES` is copied sparsely (those pages only:
//! `move_sparse`, option `sparse_moves`, not in a process restored from a checkpoint,
//! `os::checkpoint`), and the others are copied whole; with the `medium_remap` option,
//! and wherever a copy would fault on a guard marker (`os::pagemap::guarded`), those
//! of `MEDIUM_REMAP_MIN` and more move their pages with `mremap` within a process-wide
//! budget of moves (`RegionTable::relocate`). Objects of 4 MiB and more always move
//! their pages, in either space; all moves are counted (a move carries one mapping per
//! `mremap` and may stop part-way, leaving the rest to copy;
//! after a lost destination every object is copied: `region::table::move_pages_into`,
//! `os::move_pages`). Shrinking
//! gives the tail back as a free region. Freed objects stay dirty for reuse within
//! `purge::dirty_budget`; a fresh object in huge-page space that takes the front of a
//! bigger dirty hole purges the hole's rest at once (`trim_after`). No path here makes a
//! syscall in steady state but `madvise`, a sparse copy's scans and reads of `/proc`
//! (`mmap_lock` for read only) and a big object's `mremap` (one `mmap_lock` writer
//! instead of a copy's faults). Objects of 4 MiB and
//! more go to huge-page space (`HUGE_OBJECT_MIN`, `options::thp`), where their length is
//! a whole number of huge pages; the others, like small-object segments, to the base
//! space. An object growing into that size from base space moves there once, by a copy
//! of fewer than 4 MiB (`crosses_into_huge`), and keeps growing in place there.

pub mod cache;
pub mod prefault;

use crate::options::{self, Thp};
use crate::os::{self, HUGE_PAGE, PAGE_SIZE};
use crate::region::table::{Placed, RetireError, GUARD_LEN};
use crate::region::{Freed, PageMove, RegionKind, Space, ARENAS};
use crate::space::{self, SlotKind};
use crate::stats::Counter;
use core::ptr;

/// Growing reallocs of large objects that grew in place.
pub static GROWN_IN_PLACE: Counter = Counter::new();
/// Reallocs of large objects that moved by copying.
pub static MOVED: Counter = Counter::new();
/// Bytes those moves copied.
pub static COPIED_BYTES: Counter = Counter::new();
/// Reallocs of large objects that moved their pages with `mremap` (no copy).
pub static REMAPPED: Counter = Counter::new();
/// Bytes those moves carried.
pub static REMAPPED_BYTES: Counter = Counter::new();
/// Reallocs of large objects that moved by copying only the pages holding bytes
/// (`os::pagemap::copy_sparse`).
pub static SPARSE_MOVED: Counter = Counter::new();
/// Bytes those moves copied (whole pages).
pub static SPARSE_BYTES: Counter = Counter::new();

/// Objects of at least this many bytes that cannot grow in place move their pages with
/// `mremap` rather than being copied, with the `medium_remap` option below
/// `HUGE_OBJECT_MIN` (by default a dense one of 2-4 MiB is copied whole there, about a
/// millisecond, where an `mremap` takes the process-wide `mmap_lock` writer; such a
/// move is rare: the object was placed with growth room, and past 4 MiB it moves to
/// huge-page space by a copy anyway, `crosses_into_huge`). Measured on the 2-core VM
/// (`BENCHMARKS.md`, "Big objects: mremap moves"): from 256 KiB up, one `mremap` costs
/// 7-45 us where the copy (reading the source, faulting the destination) costs
/// 0.1-340 ms (64 MiB). The bound is higher
/// than that break-even for two reasons: each move leaves the kernel mapping split at
/// the destination's ends (the moved pages keep their own VMA), so the number of VMAs
/// it can create is bounded by reserved space / this size; and an object this big moves
/// whole 2 MiB page-table entries where it lives in huge-page space (from
/// `HUGE_OBJECT_MIN`, on both sides of the move, so the moved VMA keeps `MADV_HUGEPAGE`).
pub const REMAP_MIN: usize = HUGE_PAGE;

/// Medium and mid-size objects of at least this many bytes (below `REMAP_MIN`) are
/// copied sparsely when few of their pages hold bytes (`copies_sparse_first`), and
/// otherwise, with the `medium_remap` option (off by default since session 17, when
/// `sparse_moves` came on: no process-wide lock) or a guard marker in them, move with
/// `mremap` too, while the mappings they split stay below a bound
/// (`os::maps::may_split`). A plain copy reads every source page (an untouched one
/// faults in the zero page) and faults every destination page, where a program that
/// wrote a header and a trailer touched two: the `medium` workload (issue 16) spent
/// most of its faults there. Measured (BENCHMARKS.md, "medium7"),
/// against copying every move below 2 MiB, at 2 / 16 threads: 64 KiB cut the faults
/// from 36k / 80k to 7.5k / 10.6k, 256 KiB only to 11k / 17k (it still copied 9-19
/// MiB). Below 64 KiB a copy is at most 16 pages, about one `mremap`'s cost.
pub const MEDIUM_REMAP_MIN: usize = 64 << 10;

/// Whether a large object of `old_len` bytes in space `from`, that cannot grow in place,
/// moves its pages with `mremap` into space `to` (else it is copied). Only within one
/// space (see `remap`); `from` is the space the object lies in (`ARENAS.space_of`), not
/// `space_for(old_len)`: it may sit in base space (`base_instead`).
///
/// Each such move leaves the kernel mapping split at the destination's ends (the moved
/// pages keep their source's page offset), and nothing bounds the count of medium
/// moves by size as `REMAP_MIN` does for big objects: measured, 8,859 medium moves left
/// 15.6k mappings when nothing overwrote them. So a medium object moves while the
/// process's mappings in our reservations stay below `os::maps::MAPPINGS_BOUND`; the
/// purges that overwrite moved-in ranges (`os::overlay`) bring the count down, and a
/// census reads it back, so the budget renews (until session 7 it was 8,192 moves per
/// process, after which every move copied).
///
/// Below `HUGE_OBJECT_MIN`, where a copy would fault, whatever the budget: a guard
/// marker in the source `addr` (`os::pagemap::guarded`) or, as `carry` says, in the
/// destination a sparse copy found; within the budget where the kernel cannot say
/// whether the source has one. Otherwise only with the `medium_remap` option (off by
/// default: a copy takes no process-wide lock).
fn may_remap(from: Space, old_len: usize, to: Space, addr: usize, carry: bool) -> bool {
    if old_len < MEDIUM_REMAP_MIN || from != to {
        return false;
    }
    if old_len >= HUGE_OBJECT_MIN {
        return true;
    }
    let guarded = os::pagemap::guarded(addr, old_len);
    if carry || guarded == Some(true) {
        return true;
    }
    // Where the kernel cannot say (6.13 and 6.14, a sandbox), within the budget: each
    // move may split mappings, and unbounded they would reach `vm.max_map_count`.
    (move_options().medium_remap || guarded.is_none())
        && (old_len >= REMAP_MIN || os::maps::may_split(|a| space::kind_of(a) != SlotKind::Foreign))
}

/// Whether a large object of `old_len` bytes in space `from`, that cannot grow in place,
/// is first offered a sparse copy into space `to` (`os::pagemap::copy_sparse`) before an
/// `mremap` or a plain copy: within base space, from `MEDIUM_REMAP_MIN` (below it a
/// plain copy is a few pages), when the object lies inside one of our reservations'
/// mappings (the callers ask `os::maps::inside_a_larger_mapping`: the pages it does
/// not hold read zero). A sparse copy takes no `mmap_lock` writer, splits no
/// mapping and reads no untouched page; the pages that hold bytes are copied and fault
/// in the destination, where a move's `mremap` faults none but takes the process-wide
/// writer lock, so the copy is made only while at most `SPARSE_MAX_PAGES` pages hold
/// bytes. Huge-page space keeps its `mremap` moves: there a page is a 2 MiB frame,
/// and moving its page-table entry beats copying and faulting the frame. With the
/// `sparse_moves` option (on by default), and never in a process seen restored from a
/// checkpoint (`os::checkpoint`: each sparse copy is checked once made, `sparse_moved`).
#[inline]
fn copies_sparse_first(from: Space, old_len: usize, to: Space) -> bool {
    old_len >= MEDIUM_REMAP_MIN
        && from == Space::Base
        && to == Space::Base
        && move_options().sparse_moves
        && os::checkpoint::not_seen_restored()
}

/// The options that choose how an object moves (`sparse_moves`, `medium_remap`). The
/// engine's unit tests of moves by `mremap` turn those on for their own thread
/// (`tests::remap_medium_here`): their objects are medium ones, and the process's
/// options are not theirs to set.
#[inline]
fn move_options() -> options::Options {
    #[cfg(all(test, not(loom)))]
    if tests::REMAP_MEDIUM.get() {
        return options::Options {
            sparse_moves: false,
            medium_remap: true,
            ..options::get()
        };
    }
    options::get()
}

/// The most pages holding bytes that an object may have to be copied sparsely
/// (`copies_sparse_first`), whatever its length: 256 KiB, a copy of about four
/// `mremap`s' time (`MEDIUM_REMAP_MIN`: 16 pages cost about one) and no process-wide
/// lock. Denser objects (a filled buffer) move their pages, which copies and faults
/// nothing. A bound in pages, not a fraction: half of a 64 MiB buffer, copied, took 26
/// ms where its `mremap` took 0.15 (review14 F7). The `medium` workload's objects of
/// 64-128 KiB placed in reused dirty space hold stale bytes in more than half their
/// pages (an earlier owner's header and trailer every few pages): with half their
/// pages as the bound, 1-4 of them a run still moved by `mremap`.
const SPARSE_MAX_PAGES: usize = 64;

/// Objects of at least this many bytes go to huge-page space (`Space::Huge`) when
/// `options::thp` is on: two huge pages. A small object there would sit alone in a
/// 2 MiB frame (its growth room keeps the rest of the frame free) and the kernel would
/// fault the whole frame in at its first touch, or khugepaged collapse it later: RSS
/// up to 50x for a 40 KiB object. From here the waste, the last frame's unused part,
/// is under half the object (a quarter on average over uniform sizes). At one huge page
/// (2 MiB, the bound until session 7) the medium workload's biggest objects and their
/// 1.5x reallocs landed there: peak RSS +14% to +28% at 2/8/16 threads, no time or
/// faults saved (BENCHMARKS.md, "THP by default").
pub const HUGE_OBJECT_MIN: usize = 2 * HUGE_PAGE;

/// The space an object of `len` bytes is placed in.
#[inline]
fn space_for(len: usize) -> Space {
    if len >= HUGE_OBJECT_MIN && options::thp() != Thp::Off {
        Space::Huge
    } else {
        Space::Base
    }
}

/// The length of the region that serves an object of `size` bytes: a page multiple,
/// for a medium object its medium class, so a freed one fits every later request of
/// its class, and in huge-page space a multiple of the huge page. There the kernel
/// faults the object's last frame in whole at its first touch anyway, so the rounding
/// costs no RSS; it keeps every free range in that space whole frames on frame
/// boundaries, so a freed object's hole fits any later object of its length or less
/// (with page-multiple lengths, placement on frame boundaries left the frame tails
/// of holes unusable: big-buffers purged 200 MiB a run and faulted it back in).
fn page_round(size: usize) -> Option<usize> {
    let len = size
        .max(1)
        .checked_next_multiple_of(PAGE_SIZE)
        .map(cache::class_len)?;
    match space_for(len) {
        Space::Huge => len.checked_next_multiple_of(HUGE_PAGE),
        Space::Base => Some(len),
    }
}

/// With `secure=1`, every large object is followed by one guard page (installed with
/// `MADV_GUARD_INSTALL`, no `mmap_lock` write; `mprotect` on older kernels), so a linear
/// overflow faults at once instead of corrupting the neighbour.
pub(crate) fn guard_len() -> usize {
    if crate::options::get().secure {
        GUARD_LEN
    } else {
        0
    }
}

/// The usable size of a large object of `size` bytes at `align`, or `None` if no such
/// object fits the address space.
pub fn good_size(size: usize, align: usize) -> Option<usize> {
    let len = page_round(size)?;
    // Placement needs `len + align` of room at worst, and sizes stay below isize::MAX.
    (len.checked_add(align.max(PAGE_SIZE))? <= isize::MAX as usize).then_some(len)
}

/// Allocates a large object. Null when out of memory.
pub fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    alloc_placed(size, align, zero, false)
}

/// Allocates a large object that a `realloc` grows into (from a small block, or from a
/// large one that could not grow in place): placed where it can keep growing in place
/// rather than in dirty space without room.
pub fn alloc_growing(size: usize, align: usize) -> *mut u8 {
    alloc_placed(size, align, false, true)
}

fn alloc_placed(size: usize, align: usize, zero: bool, growing: bool) -> *mut u8 {
    let guard = guard_len();
    let Some(len) = page_round(size).and_then(|l| l.checked_add(guard)) else {
        crate::misuse::out_of_memory(size, align);
        return ptr::null_mut();
    };
    if align <= PAGE_SIZE {
        if let Some((start, got)) = cache::take(len) {
            if zero {
                // SAFETY: the region is ours again and `got - guard` bytes are the
                // object's (its usable size); a cached region holds its last owner's
                // bytes.
                unsafe { ptr::write_bytes(start as *mut u8, 0, got - guard) };
            }
            return start as *mut u8;
        }
    }
    let p = place(len, align.max(PAGE_SIZE), zero, growing);
    if p.is_null() {
        crate::misuse::out_of_memory(size, align);
    }
    if guard != 0 && !p.is_null() && ARENAS.install_guard(p as usize).is_err() {
        crate::purge::large_removed(len);
        prefault::resizing(p as usize, guard); // gives its prefaulted bytes back
        let _ = ARENAS.retire(p as usize);
        return ptr::null_mut();
    }
    p
}

fn place(len: usize, align: usize, zero: bool, growing: bool) -> *mut u8 {
    let space = space_for(len);
    let placed = ARENAS
        .allocate_with_room(len, align, RegionKind::Large, growing, space)
        .or_else(|| base_instead(space, len, align, growing));
    let Some(placed) = placed else {
        return ptr::null_mut();
    };
    crate::purge::large_added(len);
    if placed.dirty_after && !growing && space == Space::Huge {
        trim_after(placed.start + placed.len);
    }
    if zero && !placed.zeroed {
        // SAFETY: the region is ours and `len` bytes long.
        unsafe { ptr::write_bytes(placed.start as *mut u8, 0, len) };
    }
    // SAFETY: the region is ours, `len` bytes long (its guard page not installed yet,
    // and left out), and reads zero where `placed.zeroed` says so.
    unsafe { prefault::placed(placed.start, len, guard_len(), zero && placed.zeroed) };
    crate::purge::tick(os::now_ms());
    placed.start as *mut u8
}

/// Purges the dirty rest of the hole a fresh object in huge-page space was placed in,
/// the free region at `end`, right after the object. Placement keeps that space as
/// the object's growth room, so mostly only the object itself could use it, and a
/// fresh object that grows faults it back in as it would clean room. Kept, it stayed
/// resident until a purge, and the next buffer placed in that hole, if bigger, kept it
/// resident again: each hole's resident size only rose, up to the largest buffer
/// (big-buffers' peak RSS up to 249 MiB against jemalloc's 247 at 2 threads;
/// BENCHMARKS.md, "bigbuf10"). Whole huge pages (both ends are on the 2 MiB grid in
/// that space), so no huge page is split. One `madvise`, outside the writer mutex (the
/// table's `purge_at`), only when a placement left such a rest (`Placed::dirty_after`).
#[cold]
#[inline(never)]
fn trim_after(end: usize) {
    let (_, mode) = crate::purge::settings();
    crate::purge::record_trim(ARENAS.purge_at(end, mode));
}

/// A big object's placement in base space when huge-page space has none for it: no
/// huge-page reservation could be made (an address-space limit, `RLIMIT_AS`, that base
/// reservations already fill), while freed base space would take the object. Its length
/// stays the huge-page multiple `page_round` gave it, so `good_size` still tells the
/// truth. Huge pages are an optimisation, never a reason to fail.
#[cold]
#[inline(never)]
fn base_instead(space: Space, len: usize, align: usize, growing: bool) -> Option<Placed> {
    if space != Space::Huge {
        return None;
    }
    ARENAS.allocate_with_room(len, align, RegionKind::Large, growing, Space::Base)
}

/// Frees a large object. Its pages stay dirty, for the next allocation that fits (a
/// big buffer freed and allocated again faults nothing); `purge::tick` purges what
/// exceeds the dirty budget. (Objects of 8 MiB and more used to be purged here at once,
/// jemalloc's `oversize_threshold`: a program replacing big buffers then faulted every
/// page of each one in again.)
pub fn free(p: *mut u8) -> Result<(), RetireError> {
    // A guard page (secure mode) is lifted by the retire itself; a cached region keeps
    // its guard.
    let cache = cache::available();
    // After `available`, which starts the thread (a first call may allocate).
    prefault::freeing(p as usize, guard_len());
    let freed = ARENAS.retire_or_cache(
        p as usize,
        // Not a region shrunk in place: its freed tail follows it, and retiring it lets
        // the two merge back (a big buffer shrunk to a medium size and freed would
        // otherwise keep its old range split, and the next big buffer faults fresh pages).
        |region| {
            prefault::released(region, guard_len());
            cache && !region.was_shrunk() && cache::wants(region.len())
        },
        |region| crate::purge::large_removed(region.len()),
    )?;
    let retired = match freed {
        Freed::Cached(region) => cache::put(region),
        Freed::Retired => true,
    };
    if retired {
        crate::purge::tick(os::now_ms());
    }
    Ok(())
}

/// The usable size of a live large object, or `None` if `p` is not one.
pub fn usable_size(p: *const u8) -> Option<usize> {
    ARENAS.object_len(p as usize).map(|len| len - guard_len())
}

/// Resizes a live large object of `old_len` bytes to `new_size` bytes (still large).
///
/// A prefaulted object's count moves to the object that comes out (`p` itself where the
/// resize failed): its populated pages live on there, grown in place, kept, or carried
/// by a move (review18b H1).
///
/// # Safety
/// `p` is a live large object of length `old_len`, allocated with `align`.
pub unsafe fn realloc(p: *mut u8, old_len: usize, new_size: usize, align: usize) -> *mut u8 {
    let carried = prefault::resizing(p as usize, guard_len());
    // SAFETY: forwarded contract.
    let q = unsafe { resize(p, old_len, new_size, align) };
    if carried {
        prefault::resized(if q.is_null() { p } else { q } as usize, guard_len());
    }
    q
}

/// `realloc`'s work.
///
/// # Safety
/// As `realloc`.
unsafe fn resize(p: *mut u8, old_len: usize, new_size: usize, align: usize) -> *mut u8 {
    let Some(new_len) = page_round(new_size) else {
        return ptr::null_mut();
    };
    let addr = p as usize;
    if guard_len() != 0 {
        // Guarded objects always move: moving the guard in place would cost as much.
        return move_to(p, old_len.min(new_size), alloc(new_size, align, false));
    }
    if new_len == old_len {
        return p;
    }
    // Asked once: every move decision below depends on where the object lies.
    let space = ARENAS.space_of(addr);
    if new_len < old_len {
        if old_len <= cache::MEDIUM_MAX && new_len >= old_len / 2 {
            // A medium object keeps its class length (it stays cacheable), as a small
            // block stays put, while it wastes at most half: no table update.
            return p;
        }
        if leaves_huge_space(space, new_len) {
            let q = place(new_len, align.max(PAGE_SIZE), false, false);
            if !q.is_null() {
                return move_to(p, new_len, q);
            }
        }
        if ARENAS.shrink_in_place(addr, new_len) {
            crate::purge::large_removed(old_len - new_len);
        }
        return p; // or the tail could not be split off (out of metadata): keep it all
    }
    if crosses_into_huge(space, old_len, new_len) {
        let q = place(new_len, align.max(PAGE_SIZE), false, true);
        if !q.is_null() {
            return move_to(p, old_len, q);
        }
    }
    match try_grow_in_place(addr, new_len) {
        Some(true) => {
            crate::purge::large_added(new_len - old_len);
            GROWN_IN_PLACE.inc();
            return p;
        }
        Some(false) => {}
        None => return move_elsewhere(p, space, old_len, new_len, align.max(PAGE_SIZE)),
    }
    let mut carry = false;
    if copies_sparse_first(space, old_len, space_for(new_len)) {
        match move_sparse(p, old_len, new_len, align.max(PAGE_SIZE)) {
            Ok(q) => return q,
            Err(NotSparse::Guarded) => carry = true,
            Err(NotSparse::Dense) => {}
        }
    }
    if may_remap(space, old_len, space_for(new_len), addr, carry) {
        return remap(p, old_len, new_len, align.max(PAGE_SIZE));
    }
    move_to(
        p,
        old_len,
        place(new_len, align.max(PAGE_SIZE), false, true),
    )
}

/// Whether a growing object of `old_len` bytes in space `from`, below `HUGE_OBJECT_MIN`
/// in base space, moves to huge-page space as it grows to `new_len` there, instead of
/// growing in place in base space for the rest of its life: every later page of it
/// would fault 4 KiB at a time (the `region` workload's buffers start at 64 KiB and grow
/// in place to 64 MiB: 16k faults each). The move copies fewer than `HUGE_OBJECT_MIN`
/// bytes once (an `mremap` would carry the base space's VMA flags, without
/// `MADV_HUGEPAGE`, into huge space: see `remap`); an object already that big in base
/// space (`base_instead`) stays there.
#[inline]
fn crosses_into_huge(from: Space, old_len: usize, new_len: usize) -> bool {
    old_len < HUGE_OBJECT_MIN && space_for(new_len) == Space::Huge && from == Space::Base
}

/// Whether an object in huge-page space (`from`) that shrinks to `new_len`, below
/// `HUGE_OBJECT_MIN`, moves out to base space (a copy of fewer than 4 MiB), the reverse
/// of `crosses_into_huge`. Shrunk in place, it would sit at the start of a 2 MiB frame
/// (all of it resident) and keep the huge region it shrank from split in two: the
/// `region` workload's next buffer, growing from 4 MiB, then found the freed tail behind
/// a live object and went to fresh space, or started after it with half its room and
/// moved again halfway, leaving dirty space behind that raised the peak RSS.
#[inline]
fn leaves_huge_space(from: Space, new_len: usize) -> bool {
    space_for(new_len) == Space::Base && from == Space::Huge
}

/// Spins before a busy arena counts as busy: a writer running on another core ends
/// its update within them (`sync::SPINS_BEFORE_YIELD`, as the spin lock's waiters).
const GROW_SPINS: u32 = crate::sync::SPINS_BEFORE_YIELD;

/// Grows the object at `addr` in place: `Some(grown)`, or `None` when its arena's
/// writer mutex stayed held through `GROW_SPINS` spins. On a machine with more threads
/// than cores that holder is usually preempted, and a waiter waits out its scheduler
/// slice: in the `medium` workload at 16 threads on 2 cores, 34 of 42 writer waits were
/// these grows (placements already try other arenas first).
fn try_grow_in_place(addr: usize, new_len: usize) -> Option<bool> {
    for _ in 0..GROW_SPINS {
        if let Some(grown) = ARENAS.try_grow_in_place(addr, new_len) {
            return Some(grown);
        }
        core::hint::spin_loop();
    }
    None
}

/// Why `move_sparse` made no sparse copy (nothing was moved).
enum NotSparse {
    /// Too many pages hold bytes, or the kernel cannot say (or a guard marker in the
    /// part of the source counted): the caller copies or moves the pages.
    Dense,
    /// A guard marker in the destination placed for it: a copy would fault there too,
    /// so the pages move.
    Guarded,
}

/// Moves the object `p` of `old_len` bytes that cannot grow in place by copying only
/// its pages that hold bytes (`os::pagemap`), when they are few enough
/// (`SPARSE_MAX_PAGES`): `Err` when they are not or the kernel cannot say, with nothing
/// moved (the caller moves the pages or copies). The source's emptied pages are not the
/// question here, unlike `remap`'s: they stay resident, and its region is freed dirty
/// as any object's.
#[cold]
#[inline(never)]
fn move_sparse(
    p: *mut u8,
    old_len: usize,
    new_len: usize,
    align: usize,
) -> Result<*mut u8, NotSparse> {
    // Not a range whose absent pages may get bytes from a userfaultfd's handler at
    // their first read (review14 F1) when the program registered exactly the object:
    // such a range is a mapping of its own, as is one moved in by `mremap`. (A
    // registration wider than the object, as CRIU's lazy restore makes, passes: a
    // restored process makes no sparse copy, `os::checkpoint`.)
    if !os::maps::inside_a_larger_mapping(p as usize, old_len) {
        return Err(NotSparse::Dense);
    }
    let source = os::pagemap::Scanner::open()
        .and_then(|s| s.count(p as usize, old_len, SPARSE_MAX_PAGES))
        .map_err(|_| NotSparse::Dense)?;
    // The descriptor is not held across the placement, whose purge passes may take
    // long: a `fork` waits for every descriptor held (`os::maps::fork_prepare`).
    let q = place(new_len, align, false, true);
    if q.is_null() {
        return Ok(q);
    }
    let Ok(scanner) = os::pagemap::Scanner::open() else {
        return Ok(move_to(p, old_len, q)); // a fork began meanwhile: copy it all
    };
    // SAFETY: `p` is ours (its owner is inside `realloc`), unchanged since counted, and
    // `q` a distinct live object nobody else knows yet; both page-aligned, of `old_len`
    // bytes at least, anonymous private memory.
    let copied = unsafe { scanner.copy(&source, q as usize) };
    drop(scanner); // before `sparse_moved` opens one of its own
    match copied {
        Ok(bytes) => Ok(sparse_moved(p, old_len, bytes, q)),
        Err(os::pagemap::Sparse::GuardedDestination) => {
            // A guard marker in the destination: the pages move instead.
            if free(q).is_err() {
                crate::fatal("realloc: a new large object vanished from the region table");
            }
            Err(NotSparse::Guarded)
        }
        Err(_) => Ok(move_to(p, old_len, q)), // a scan failed part-way: copy it all
    }
}

/// Ends a sparse copy of the object `p` of `len` bytes into `q` that copied `bytes`:
/// counts it and frees `p`. Unless the process turns out restored from a checkpoint
/// taken while the copy ran, whose scans may have passed over pages a userfaultfd
/// monitor had still to fill (`os::checkpoint`): then the untouched source is copied
/// whole over the destination.
fn sparse_moved(p: *mut u8, len: usize, bytes: usize, q: *mut u8) -> *mut u8 {
    if !os::checkpoint::same_process() {
        return move_to(p, len, q);
    }
    SPARSE_MOVED.inc();
    SPARSE_BYTES.add(bytes as u64);
    if free(p).is_err() {
        crate::fatal("realloc: a live large object vanished from the region table");
    }
    q
}

/// Moves the object `p` (in space `from`) whose arena is busy through whichever arena
/// is free (`place` tries them with try-lock): copying only the pages that hold bytes
/// where it may (`copies_sparse_first`), else carrying its pages with `mremap` without
/// the source arena's writer mutex when it may (`may_remap`, `Arenas::move_pages`),
/// else copying. The source is ours (its owner is inside `realloc`) and the destination
/// is a live region nobody else knows yet, so no reader can meet either while the pages
/// move; the emptied source is then freed as any object.
#[cold]
#[inline(never)]
fn move_elsewhere(
    p: *mut u8,
    from: Space,
    old_len: usize,
    new_len: usize,
    align: usize,
) -> *mut u8 {
    let q = place(new_len, align, false, true);
    if q.is_null() {
        return q;
    }
    let to = ARENAS.space_of(q as usize);
    let mut carry = false;
    if copies_sparse_first(from, old_len, to)
        && os::maps::inside_a_larger_mapping(p as usize, old_len)
    {
        // SAFETY: both are ours (see above), distinct, page-aligned live objects of
        // `old_len` bytes at least, in base space (anonymous private memory).
        match unsafe { os::pagemap::copy_sparse(p as usize, q as usize, old_len, SPARSE_MAX_PAGES) }
        {
            os::pagemap::Sparse::Copied { bytes } => return sparse_moved(p, old_len, bytes, q),
            // A copy into `q` would fault there too: its pages are replaced instead.
            os::pagemap::Sparse::GuardedDestination => carry = true,
            os::pagemap::Sparse::Dense | os::pagemap::Sparse::Unknown => {}
        }
    }
    if !may_remap(from, old_len, to, p as usize, carry) {
        return move_to(p, old_len, q);
    }
    // SAFETY: both are ours (see above), distinct live objects of `old_len` bytes at
    // least, `q` in space `to`; the source's content is not needed after the move.
    match unsafe { ARENAS.move_pages(p as usize, q as usize, old_len, to) } {
        PageMove::Moved => {
            REMAPPED.inc();
            REMAPPED_BYTES.add(old_len as u64);
            if free(p).is_err() {
                crate::fatal("realloc: a live large object vanished from the region table");
            }
            q
        }
        PageMove::Copy { moved } => move_rest(p, old_len, q, moved),
        // `q` stays allocated for good, unused (another mapping holds part of it).
        PageMove::Lost => move_to(p, old_len, place(new_len, align, false, true)),
    }
}

/// Moves a big object that cannot grow in place by moving its pages (`mremap`, one
/// `mmap_lock` writer, nothing copied or faulted); copies when the call fails. Both
/// sides are in the same space: a VMA moved from base into huge-page space would carry
/// the base space's flags with it, and the reverse would give huge pages to small
/// objects later placed where it landed.
#[cold]
#[inline(never)]
fn remap(p: *mut u8, old_len: usize, new_len: usize, align: usize) -> *mut u8 {
    let Some((placed, moved)) = ARENAS.relocate(p as usize, new_len, align, space_for(new_len))
    else {
        // No room in that space (see `base_instead`): a copying move may still find some.
        return move_to(p, old_len, place(new_len, align, false, true));
    };
    let q = placed.start as *mut u8;
    let moved = match moved {
        PageMove::Moved => {
            REMAPPED.inc();
            REMAPPED_BYTES.add(old_len as u64);
            crate::purge::large_added(new_len - old_len);
            crate::purge::tick(os::now_ms());
            return q;
        }
        PageMove::Copy { moved } => moved,
        PageMove::Lost => 0, // never: `relocate` places another destination
    };
    crate::purge::large_added(new_len);
    move_rest(p, old_len, q, moved)
}

/// Copies `len` bytes of the large object `p` to `q` (when not null) and frees `p`.
fn move_to(p: *mut u8, len: usize, q: *mut u8) -> *mut u8 {
    move_rest(p, len, q, 0)
}

/// `move_to` of an object whose first `moved` bytes are at `q` already (a move of its
/// pages that stopped part-way, `PageMove::Copy`): copies the rest.
fn move_rest(p: *mut u8, len: usize, q: *mut u8, moved: usize) -> *mut u8 {
    if !q.is_null() {
        MOVED.inc();
        COPIED_BYTES.add((len - moved) as u64);
        // SAFETY: both are live, distinct objects of at least `len` usable bytes, and
        // `moved <= len`.
        unsafe { ptr::copy_nonoverlapping(p.add(moved), q.add(moved), len - moved) };
        if free(p).is_err() {
            crate::fatal("realloc: a live large object vanished from the region table");
        }
    }
    q
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::cell::Cell;

    std::thread_local! {
        /// This thread's medium objects move by `mremap` (`move_options`).
        pub(super) static REMAP_MEDIUM: Cell<bool> = const { Cell::new(false) };
    }

    /// Makes this thread's medium moves carry their pages by `mremap`, as
    /// `sparse_moves=0,medium_remap=1` would (the default until session 16).
    fn remap_medium_here() {
        REMAP_MEDIUM.set(true);
    }

    /// A live object of `len` bytes, once another thread's home arena has address space
    /// of its own to place in (where a move out of a busy arena can go).
    fn object_beside_another_arena(len: usize) -> *mut u8 {
        // A thread of another home (one that exited would hand its ticket, and its
        // arena, to this thread's next placement if this one had none yet).
        let other = (ARENAS.home() + 1) % ARENAS.count();
        crate::region::arenas::on_new_thread_at_home(&ARENAS, other, move || {
            let q = alloc(len, PAGE_SIZE, false);
            assert!(!q.is_null());
            free(q).unwrap();
        });
        let p = alloc(len, PAGE_SIZE, false);
        assert!(!p.is_null());
        p
    }

    /// Issue 16: a `realloc` that would grow an object in place while another thread
    /// holds the object's arena's writer mutex does not wait for it: it moves the object
    /// through another arena (its pages by `mremap`). The holder lets go as soon as the
    /// grower counts a blocking acquisition (`lock_writer` counts before it waits), so
    /// a grower that waits is seen, not hung.
    #[test]
    fn a_grow_whose_arena_is_busy_moves_instead_of_waiting() {
        remap_medium_here();
        const LEN: usize = 256 << 10;
        let p = object_beside_another_arena(LEN);
        // SAFETY: `p` is a live object of `LEN` bytes.
        unsafe {
            p.write(7);
            p.add(LEN - 1).write(9);
        }
        let table = ARENAS.table_of_addr(p as usize);
        let (writers, waits) = (table.counters.writer().get(), table.counters.waits().get());
        // Moves are counted per thread: `REMAPPED` also counts the tests beside this one.
        let (before, moved) = table.while_writer_busy(|| {
            let before = os::inject::moves_tried();
            // SAFETY: live, `LEN` bytes, page-aligned.
            (before, unsafe { realloc(p, LEN, 4 * LEN, PAGE_SIZE) })
        });
        assert_eq!(table.counters.waits().get(), waits, "the grow waited");
        assert_eq!(
            table.counters.writer().get(),
            writers,
            "a blocking acquisition"
        );
        assert!(!moved.is_null() && moved != p, "not moved");
        assert!(os::inject::moves_tried() > before, "not moved by mremap");
        // SAFETY: `moved` is live with `4 * LEN` bytes.
        unsafe {
            assert_eq!(moved.read(), 7);
            assert_eq!(moved.add(LEN - 1).read(), 9);
        }
        free(moved).unwrap();
    }

    /// Review of hazard10 (H3-2) and review12b (F1) through `move_elsewhere`: an object
    /// that arrived by a move and grew spans two mappings, which a kernel before 6.17
    /// (`inject::pretend_old_kernel`, whose refusal reads `/proc/self/maps`) refuses to
    /// move in one call after unmapping the destination. Its next move out of a busy
    /// arena goes one mapping at a time where the kernel lists them, and is copied
    /// without asking where it cannot (`inject::pretend_no_query`). The source's mark
    /// is read without its arena's writer mutex.
    #[test]
    fn a_busy_arenas_move_of_a_moved_in_object_moves_each_mapping_or_copies() {
        remap_medium_here();
        for query in [true, false] {
            // Both moves stay in base space (below `HUGE_OBJECT_MIN`), where pages move.
            const LEN: usize = 128 << 10;
            let mut p = object_beside_another_arena(LEN);
            // Parallel tests may have left moved-in pages where `p` was placed: its
            // first move must be one the kernel makes.
            while ARENAS
                .table_of_addr(p as usize)
                .may_hold_moved_pages(p as usize)
            {
                p = alloc(LEN, PAGE_SIZE, false);
                assert!(!p.is_null());
            }
            // SAFETY: `p` is a live object of `LEN` bytes.
            unsafe {
                p.write(7);
                p.add(LEN - 1).write(9);
            }
            os::inject::pretend_old_kernel(true);
            os::inject::pretend_no_query(!query);
            let (tried, refused) = (os::inject::moves_tried(), os::inject::refused_moves());
            let busy_move = |p: *mut u8, len: usize| {
                ARENAS.table_of_addr(p as usize).while_writer_busy(|| {
                    // SAFETY: live, `len` bytes, page-aligned.
                    unsafe { realloc(p, len, 4 * len, PAGE_SIZE) }
                })
            };
            let q = busy_move(p, LEN);
            assert!(!q.is_null() && q != p, "not moved");
            assert_eq!(os::inject::moves_tried() - tried, 1, "not moved by mremap");
            // SAFETY: `q` is live with `4 * LEN` bytes: its grown part holds a mark too.
            unsafe { q.add(4 * LEN - 1).write(5) };
            // Its moved-in pages and the rest (more where the tests beside this one
            // left moved-in pages in the shared arenas).
            os::inject::pretend_no_query(false);
            let mappings = os::maps::pieces(q as usize, 4 * LEN)
                .known()
                .map_or(0, |p| p.count());
            assert!(mappings >= 2, "{mappings} mappings");
            os::inject::pretend_no_query(!query);
            let r = busy_move(q, 4 * LEN);
            os::inject::pretend_old_kernel(false);
            os::inject::pretend_no_query(false);
            assert!(!r.is_null() && r != q, "not moved");
            assert_eq!(
                os::inject::refused_moves() - refused,
                0,
                "asked the kernel for a move it refuses"
            );
            let calls = if query { 1 + mappings as u64 } else { 1 };
            assert_eq!(
                os::inject::moves_tried() - tried,
                calls,
                "moves tried ({query})"
            );
            // SAFETY: `r` is live with `16 * LEN` bytes.
            unsafe {
                assert_eq!(r.read(), 7);
                assert_eq!(r.add(LEN - 1).read(), 9);
                assert_eq!(r.add(4 * LEN - 1).read(), 5);
            }
            free(r).unwrap();
        }
    }

    /// The same move (`move_elsewhere`, its pages moved under the destination's read
    /// lock) failing as kernels before 6.17 fail it, after unmapping the destination,
    /// and another mapping taking the hole's last page meanwhile (fault injection): the
    /// object is copied into a second destination, and the other mapping's page is not
    /// written. Before, the copy went into the first destination (and faulted on the
    /// hole).
    #[test]
    fn a_busy_arenas_move_that_loses_its_destination_copies_elsewhere() {
        remap_medium_here();
        const LEN: usize = 256 << 10;
        let p = object_beside_another_arena(LEN);
        // SAFETY: `p` is a live object of `LEN` bytes.
        unsafe {
            for i in (0..LEN).step_by(PAGE_SIZE) {
                p.add(i).write((i / PAGE_SIZE) as u8 + 1);
            }
        }
        let table = ARENAS.table_of_addr(p as usize);
        let lost = os::lost_destinations();
        let moved = table.while_writer_busy(|| {
            os::inject::fail_next_move(os::inject::MoveFault::UnmapOthersMapThenFail);
            // SAFETY: live, `LEN` bytes, page-aligned.
            unsafe { realloc(p, LEN, 4 * LEN, PAGE_SIZE) }
        });
        assert!(os::lost_destinations() > lost, "not counted");
        let foreign = os::inject::foreign_page();
        assert_ne!(foreign, 0, "no move by mremap was tried");
        assert!(!moved.is_null() && moved != p, "not moved");
        assert!(
            !(moved as usize..moved as usize + 4 * LEN).contains(&foreign),
            "copied into the destination another mapping took part of"
        );
        // SAFETY: `moved` is live with `4 * LEN` bytes; `foreign` the injected page.
        unsafe {
            for i in (0..LEN).step_by(PAGE_SIZE) {
                assert_eq!(moved.add(i).read(), (i / PAGE_SIZE) as u8 + 1);
            }
            assert_eq!((foreign as *const u64).read(), os::inject::FOREIGN);
        }
        free(moved).unwrap();
    }
}
