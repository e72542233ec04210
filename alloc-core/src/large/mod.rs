//! Large objects: every request above the small limit (or aligned beyond a page) is a
//! region of its own. Owns no state; calls `region` (placement, retire, in-place growth
//! and shrink) and `purge`.
//!
//! `realloc` grows in place when the next region is free (a table update under the two
//! regions' write locks, one bulk unlock); otherwise it moves the object to a roomy
//! spot, so that the next growth happens in place again. Shrinking gives the tail back
//! as a free region. No path here makes a syscall in steady state.

use crate::os::{self, PAGE_SIZE};
use crate::region::table::{RetireError, GUARD_LEN};
use crate::region::{RegionKind, TABLE};
use core::ptr;

fn page_round(size: usize) -> Option<usize> {
    size.max(1).checked_next_multiple_of(PAGE_SIZE)
}

/// With `secure=1`, every large object is followed by one guard page (installed with
/// `MADV_GUARD_INSTALL`, no `mmap_lock` write; `mprotect` on older kernels), so a linear
/// overflow faults at once instead of corrupting the neighbour.
fn guard_len() -> usize {
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
    let guard = guard_len();
    let Some(len) = page_round(size).and_then(|l| l.checked_add(guard)) else {
        crate::misuse::out_of_memory(size, align);
        return ptr::null_mut();
    };
    let p = place(len, align.max(PAGE_SIZE), zero, false);
    if p.is_null() {
        crate::misuse::out_of_memory(size, align);
    }
    if guard != 0 && !p.is_null() && TABLE.install_guard(p as usize).is_err() {
        let _ = TABLE.retire(p as usize);
        return ptr::null_mut();
    }
    p
}

fn place(len: usize, align: usize, zero: bool, roomy: bool) -> *mut u8 {
    let placed = if roomy {
        TABLE.allocate_roomy(len, align, RegionKind::Large)
    } else {
        TABLE.allocate(len, align, RegionKind::Large)
    };
    let Some(placed) = placed else {
        return ptr::null_mut();
    };
    if zero && !placed.zeroed {
        // SAFETY: the region is ours and `len` bytes long.
        unsafe { ptr::write_bytes(placed.start as *mut u8, 0, len) };
    }
    crate::purge::tick(os::now_ms());
    placed.start as *mut u8
}

/// Objects this big are purged by the thread that frees them, at once,
/// instead of waiting for the purge delay: jemalloc's `oversize_threshold` (8 MiB) makes
/// the same trade (a big buffer is rarely reused before it would have been purged, and
/// keeping it dirty costs the most memory). The `madvise` runs under the region's own
/// read lock: no process-wide lock, no `mmap_lock` write.
pub const OVERSIZE_PURGE: usize = 8 << 20;

/// Frees a large object.
pub fn free(p: *mut u8) -> Result<(), RetireError> {
    // A guard page (secure mode) is lifted by the retire itself.
    TABLE.retire_with(p as usize, |region| {
        let len = region.len();
        if len >= OVERSIZE_PURGE {
            let (_, mode) = crate::purge::settings();
            // SAFETY: the object is being freed by its owner: its content is dead, and
            // nobody can reuse the range before we retire it.
            if unsafe { os::purge(p as usize, len, mode) }.is_ok() {
                crate::purge::record_heap_purge(len);
                region.mark_purged(mode);
            }
        }
    })?;
    crate::purge::tick(os::now_ms());
    Ok(())
}

/// The usable size of a live large object, or `None` if `p` is not one.
pub fn usable_size(p: *const u8) -> Option<usize> {
    TABLE.object_len(p as usize).map(|len| len - guard_len())
}

/// Resizes a live large object of `old_len` bytes to `new_size` bytes (still large).
///
/// # Safety
/// `p` is a live large object of length `old_len`, allocated with `align`.
pub unsafe fn realloc(p: *mut u8, old_len: usize, new_size: usize, align: usize) -> *mut u8 {
    let Some(new_len) = page_round(new_size) else {
        return ptr::null_mut();
    };
    let addr = p as usize;
    if guard_len() != 0 {
        // Guarded objects always move: moving the guard in place would cost as much.
        return move_to(p, old_len.min(new_size), alloc(new_size, align, false));
    }
    if new_len == old_len
        || (new_len < old_len && TABLE.shrink_in_place(addr, new_len))
        || (new_len > old_len && TABLE.grow_in_place(addr, new_len))
    {
        return p;
    }
    if new_len < old_len {
        return p; // the tail could not be split off (out of metadata): keep it all
    }
    move_to(
        p,
        old_len,
        place(new_len, align.max(PAGE_SIZE), false, true),
    )
}

/// Copies `len` bytes of the large object `p` to `q` (when not null) and frees `p`.
fn move_to(p: *mut u8, len: usize, q: *mut u8) -> *mut u8 {
    if !q.is_null() {
        // SAFETY: both are live, distinct objects of at least `len` usable bytes.
        unsafe { ptr::copy_nonoverlapping(p, q, len) };
        if free(p).is_err() {
            crate::fatal("realloc: a live large object vanished from the region table");
        }
    }
    q
}
