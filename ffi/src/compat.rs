//! Historical and foreign allocator names that programs call directly, so that under
//! `LD_PRELOAD` no block ever crosses between us and another allocator.
//!
//! - `cfree`: glibc keeps it as a compatibility symbol for old binaries.
//! - jemalloc's non-standard API (`mallocx`, `rallocx`, `xallocx`, `sallocx`, `dallocx`,
//!   `sdallocx`, `nallocx`, `mallctl`, `mallctlnametomib`, `mallctlbymib`,
//!   `malloc_stats_print`). Debian links some programs against `libjemalloc.so.2` with
//!   unprefixed names: `redis-server` calls `malloc`/`free`/`realloc`/`calloc`/
//!   `malloc_usable_size` (which our preload wins) and `nallocx`, `mallctl` and
//!   `malloc_stats_print` (which would otherwise reach jemalloc). If a program mixes
//!   our `malloc` with jemalloc's `sdallocx`, jemalloc frees a block it does not own, so
//!   we answer the whole API ourselves.
//!
//! The `mallctl` family is in `mallctl.rs`. `xallocx` never resizes in place (it reports the current size,
//! which jemalloc's contract allows). `nallocx` answers the engine's own size class
//! (`rangealloc_core::good_size`), so it equals `sallocx` of the block `mallocx` returns.

use crate::malloc::resize;
use crate::{allocate, release, request_fits};
use core::ffi::{c_int, c_void};
use rangealloc_core::{self as engine, MALLOC_ALIGN};

/// glibc's compatibility `cfree`: `free`.
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: `free`'s contract.
    unsafe { release(p, "cfree") }
}

// ---------------------------------------------------------------------------------------
// jemalloc's `*allocx` family. Flags: the low 6 bits are log2(alignment) (0: default),
// bit 6 is MALLOCX_ZERO; the tcache and arena bits are accepted and ignored.
// ---------------------------------------------------------------------------------------

const MALLOCX_LG_ALIGN_MASK: c_int = 0x3f;
const MALLOCX_ZERO: c_int = 0x40;

/// The alignment `flags` ask for, at least `MALLOC_ALIGN`; always a power of two.
fn flags_align(flags: c_int) -> usize {
    // The mask keeps the shift below 64.
    let lg = (flags & MALLOCX_LG_ALIGN_MASK) as u32;
    (1usize << lg).max(MALLOC_ALIGN)
}

fn flags_zero(flags: c_int) -> bool {
    flags & MALLOCX_ZERO != 0
}

#[no_mangle]
pub unsafe extern "C" fn mallocx(size: usize, flags: c_int) -> *mut c_void {
    // SAFETY: `flags_align` returns a power of two.
    unsafe { allocate(size, flags_align(flags), flags_zero(flags)) }
}

/// Null on failure with `p` intact. With MALLOCX_ZERO, the bytes past the old usable
/// size are zeroed, as jemalloc specifies.
#[no_mangle]
pub unsafe extern "C" fn rallocx(p: *mut c_void, size: usize, flags: c_int) -> *mut c_void {
    if p.is_null() {
        // jemalloc leaves this undefined; we treat it as `mallocx`.
        // SAFETY: as in `mallocx`.
        return unsafe { mallocx(size, flags) };
    }
    let align = flags_align(flags);
    if !flags_zero(flags) {
        // SAFETY: `p` is a live block (jemalloc's contract); `align` a power of two.
        return unsafe { resize(p, size.max(1), align) };
    }
    // SAFETY: `p` is a live block.
    let old_usable = unsafe { engine::usable_size(p.cast_const().cast()) };
    // SAFETY: as above.
    let q = unsafe { resize(p, size.max(1), align) };
    if !q.is_null() {
        // SAFETY: `q` is live; its usable size bounds the write.
        let new_usable = unsafe { engine::usable_size(q.cast_const().cast()) };
        if new_usable > old_usable {
            // SAFETY: `[old_usable, new_usable)` lies inside the block `q`.
            unsafe {
                core::ptr::write_bytes(q.cast::<u8>().add(old_usable), 0, new_usable - old_usable)
            };
        }
    }
    q
}

/// Never resizes in place: returns the current usable size, which jemalloc's contract
/// allows ("the real size of the allocation, which may be unchanged").
#[no_mangle]
pub unsafe extern "C" fn xallocx(p: *mut c_void, size: usize, extra: usize, flags: c_int) -> usize {
    let _ = (size, extra);
    // SAFETY: `p` is a live block (jemalloc's contract).
    unsafe { sallocx(p, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn sallocx(p: *const c_void, _flags: c_int) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live block (jemalloc's contract).
    unsafe { engine::usable_size(p.cast()) }
}

#[no_mangle]
pub unsafe extern "C" fn dallocx(p: *mut c_void, _flags: c_int) {
    // SAFETY: `p` came from us (jemalloc's contract).
    unsafe { release(p, "dallocx") }
}

#[no_mangle]
pub unsafe extern "C" fn sdallocx(p: *mut c_void, _size: usize, _flags: c_int) {
    // SAFETY: `p` came from us (jemalloc's contract).
    unsafe { release(p, "sdallocx") }
}

/// The usable size `mallocx(size, flags)` would provide (its size class, or the page
/// multiple of a large object), or 0 if it would fail for size reasons.
#[no_mangle]
pub extern "C" fn nallocx(size: usize, flags: c_int) -> usize {
    let align = flags_align(flags);
    if !request_fits(size, align) {
        return 0;
    }
    engine::good_size(size.max(1), align).unwrap_or(0)
}
