//! The C malloc family with glibc's exact semantics: `malloc`, `free`, `calloc`,
//! `realloc`, `reallocarray`, `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`,
//! `pvalloc` and `malloc_usable_size`. These are the functions glibc's manual lists
//! under "Replacing malloc"; glibc's own internal allocations reach them through the
//! PLT, so with `LD_PRELOAD` every allocation in the process lands here.
//!
//! Where C leaves a choice, we do what glibc does and say so on the function. Every
//! failure sets `errno = ENOMEM` (or `EINVAL` for a bad alignment, where glibc does),
//! except `posix_memalign`, which returns the error and leaves `errno` alone.

use crate::{allocate, out_of_memory, release, request_fits};
use core::ffi::{c_int, c_void};
use rangealloc_core::{self as engine, os::PAGE_SIZE, MALLOC_ALIGN};

/// `malloc(0)` returns a unique pointer that must be passed to `free`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: MALLOC_ALIGN is a power of two.
    unsafe { allocate(size, MALLOC_ALIGN, false) }
}

#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: C's contract for `free`.
    unsafe { release(p, "free") }
}

/// Overflow of `count * size` fails with `ENOMEM`, never returns a short block.
#[no_mangle]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else {
        return out_of_memory();
    };
    // SAFETY: MALLOC_ALIGN is a power of two.
    unsafe { allocate(total, MALLOC_ALIGN, true) }
}

/// `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns null
/// without touching `errno` (glibc's `REALLOC_ZERO_BYTES_FREES`); on failure `p` is
/// left intact and `errno = ENOMEM`. The result is aligned to `MALLOC_ALIGN` only, as in
/// glibc, even when `p` came from `memalign`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        // SAFETY: MALLOC_ALIGN is a power of two.
        return unsafe { allocate(size, MALLOC_ALIGN, false) };
    }
    if size == 0 {
        // SAFETY: C's contract: `p` is a live block of ours.
        unsafe { release(p, "realloc") };
        return core::ptr::null_mut();
    }
    // SAFETY: as above; `p` is non-null and MALLOC_ALIGN is a power of two.
    unsafe { resize(p, size, MALLOC_ALIGN) }
}

/// Resizes the non-null block `p`; on failure `p` stays valid and `errno = ENOMEM`.
///
/// # Safety
/// `p` must be a live, non-null block of ours; `align` a power of two.
pub(crate) unsafe fn resize(p: *mut c_void, size: usize, align: usize) -> *mut c_void {
    if !request_fits(size, align) {
        return out_of_memory();
    }
    // SAFETY: forwarded contract.
    let q = unsafe { engine::realloc(p.cast(), size, align) };
    if q.is_null() {
        out_of_memory()
    } else {
        q.cast()
    }
}

/// `realloc(p, count * size)` with the multiplication checked (overflow: `ENOMEM`,
/// `p` intact). A zero product frees `p`, as `realloc(p, 0)` does.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, count: usize, size: usize) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else {
        return out_of_memory();
    };
    // SAFETY: C's contract for `realloc`.
    unsafe { realloc(p, total) }
}

/// Returns 0, `EINVAL` (alignment not a power-of-two multiple of `sizeof(void *)`) or
/// `ENOMEM`; `*out` is written only on success and `errno` is never changed (POSIX).
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    let word = core::mem::size_of::<*mut c_void>();
    if !align.is_multiple_of(word) || !(align / word).is_power_of_two() {
        return libc::EINVAL;
    }
    let saved_errno = engine::os::errno();
    // SAFETY: `align` is a power of two (a power-of-two multiple of a power of two).
    let p = unsafe { allocate(size, align.max(MALLOC_ALIGN), false) };
    if p.is_null() {
        engine::os::set_errno(saved_errno);
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-pointer (POSIX contract).
    unsafe { out.write(p) };
    0
}

/// C11 `aligned_alloc` with glibc 2.38+ semantics: the alignment must be a power of
/// two (else `EINVAL`, null); the size need not be a multiple of it (C17 DR 460).
/// glibc before 2.38 rounded other alignments up, like `memalign`.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        engine::os::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    // SAFETY: checked just above.
    unsafe { allocate(size, align.max(MALLOC_ALIGN), false) }
}

/// glibc's `memalign`: alignments up to `MALLOC_ALIGN` (including 0) mean plain
/// `malloc`; other non-powers of two are rounded up to the next power of two; an
/// alignment above `SIZE_MAX / 2 + 1` (no power of two is that large) is `EINVAL`.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    const LARGEST_POWER_OF_TWO: usize = 1 << (usize::BITS - 1);
    if align > LARGEST_POWER_OF_TWO {
        engine::os::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    // No overflow: `align <= 2^63`, whose next power of two is itself.
    let align = align.max(MALLOC_ALIGN).next_power_of_two();
    // SAFETY: `align` is a power of two.
    unsafe { allocate(size, align, false) }
}

/// `memalign(page size, size)`.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: PAGE_SIZE is a power of two.
    unsafe { allocate(size, PAGE_SIZE, false) }
}

/// `valloc` with the size rounded up to whole pages; a rounding overflow is `ENOMEM`.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let Some(padded) = size.checked_add(PAGE_SIZE - 1) else {
        return out_of_memory();
    };
    let rounded = padded & !(PAGE_SIZE - 1);
    // SAFETY: PAGE_SIZE is a power of two.
    unsafe { allocate(rounded, PAGE_SIZE, false) }
}

/// The number of usable bytes in the block `p` (at least what was requested); 0 for
/// null, as in glibc.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: C's contract: `p` is a live block of ours.
    unsafe { engine::usable_size(p.cast_const().cast()) }
}
