//! `librangealloc.so`: rangealloc as a drop-in C allocator, for `LD_PRELOAD` or for
//! linking with `-lrangealloc`.
//!
//! This crate owns the C ABI and nothing else: argument checking, `errno`, the exact
//! C/POSIX/glibc semantics of each entry point. Process set-up (the `pthread_atfork`
//! handlers included) and thread exit are the engine's, done on its first allocation
//! for every front end alike. It calls only `rangealloc-core`'s public API, `libc` and
//! the loader's `dl*` functions; the C code here never allocates through Rust's global
//! allocator, which for the Rust code linked in (crossbeam-epoch, `std`) is the engine
//! itself (`RUST_ALLOCATIONS`).
//!
//! `malloc` holds the C malloc family, `cxx` the C++ `operator new`/`delete` family,
//! `compat` the historical and jemalloc-compatible names; this file holds what they
//! share. Nothing here may panic: the workspace builds with `panic = "abort"`, and the
//! code uses no indexing, `unwrap` or unchecked arithmetic on caller-supplied values.

#![deny(unsafe_op_in_unsafe_fn)]

mod compat;
mod config;
mod cxx;
mod glibc;
mod mallctl;
mod malloc;
mod prof;
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod static_tls;
mod stats;

use core::ffi::{c_char, c_void};
use rangealloc_core::{self as engine, MALLOC_ALIGN};

/// Rust code linked into this library (crossbeam-epoch, `std`) allocates through the
/// engine directly, never through the `malloc`/`free` symbols. Through the symbols, one
/// call could bind to our definition (fat LTO resolves a call to `malloc` inside the
/// library to the function defined here, and may inline it) while its `free` goes
/// through the GOT to whatever the process's global scope binds: the same function
/// under `LD_PRELOAD`, but glibc's when the library is `dlopen`ed, which then receives
/// our block and aborts ("free(): invalid pointer"; `tests/c/dlopen_malloc.c`).
#[global_allocator]
static RUST_ALLOCATIONS: rangealloc::RangeAlloc = rangealloc::RangeAlloc;

/// The largest request we accept. Like glibc (which fails anything above
/// `PTRDIFF_MAX`), because pointer differences inside a larger object would overflow,
/// and because `size + alignment padding` must never wrap into a tiny block.
const MAX_REQUEST: usize = isize::MAX as usize;

/// `rangealloc_version()`: the crate version, NUL-terminated.
static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library version as a NUL-terminated string, e.g. `"0.1.0"`. Also the way to ask
/// "is rangealloc the allocator of this process?": `dlsym(RTLD_DEFAULT,
/// "rangealloc_version")` is non-null exactly when the library is loaded.
#[no_mangle]
pub extern "C" fn rangealloc_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// True when a block of `size` bytes aligned to `align` (a power of two) can be
/// requested without the size, plus alignment padding, exceeding `MAX_REQUEST`.
#[inline(always)]
fn request_fits(size: usize, align: usize) -> bool {
    // `align >= 1`, and every power of two up to 2^63 minus one is at most
    // `isize::MAX`, so the subtraction cannot wrap.
    size <= MAX_REQUEST - (align - 1)
}

/// The failure return of every malloc-family call: `errno = ENOMEM`, null.
#[cold]
#[inline(never)]
fn out_of_memory() -> *mut c_void {
    engine::os::set_errno(libc::ENOMEM);
    core::ptr::null_mut()
}

/// Allocates `size` bytes aligned to `align`, as C's allocation functions do: never a
/// null for size 0 (a unique, freeable block), `errno = ENOMEM` and null on failure.
///
/// # Safety
/// `align` must be a power of two.
#[inline(always)]
unsafe fn allocate(size: usize, align: usize, zeroed: bool) -> *mut c_void {
    // The fast path: a small request the thread's heap serves from a current page. It
    // succeeds only for a thread that already has a heap, and every heap is made on a
    // slow path, where the engine's process set-up (fork handlers, options) runs first.
    // A block from it also means `request_fits`; size 0 always goes to the slow path,
    // which asks for 1 byte.
    if align <= MALLOC_ALIGN {
        let p = engine::heap::try_alloc_size(size);
        if !p.is_null() {
            if zeroed {
                // SAFETY: a fresh block of at least `size` bytes.
                unsafe { core::ptr::write_bytes(p, 0, size) };
            }
            return p.cast();
        }
    }
    // SAFETY: forwarded contract.
    unsafe { allocate_slow(size, align, zeroed) }
}

/// Everything `allocate`'s fast path does not serve: first use, large and aligned
/// requests, refills.
///
/// # Safety
/// As `allocate`.
#[cold]
#[inline(never)]
unsafe fn allocate_slow(size: usize, align: usize, zeroed: bool) -> *mut c_void {
    if !request_fits(size, align) {
        return out_of_memory();
    }
    // The engine may treat 0 as its smallest class already; asking for 1 makes the
    // "unique pointer for malloc(0)" promise independent of that.
    let size = size.max(1);
    let p = if zeroed {
        // SAFETY: the caller guarantees `align` is a power of two.
        unsafe { engine::alloc_zeroed(size, align) }
    } else {
        // SAFETY: as above.
        unsafe { engine::alloc(size, align) }
    };
    if p.is_null() {
        out_of_memory()
    } else {
        p.cast()
    }
}

/// Frees a block from any of our allocation functions; null is a no-op. `call` names
/// the exported function in misuse messages.
///
/// # Safety
/// `p` must be null or a live block of this allocator; misuse is the engine's to
/// detect and report.
#[inline(always)]
unsafe fn release(p: *mut c_void, call: &'static str) {
    // SAFETY: forwarded contract.
    unsafe { engine::free_as(p.cast(), call) }
}
