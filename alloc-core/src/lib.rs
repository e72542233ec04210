//! rangealloc-core: the allocator engine.
//!
//! Reading order: `heap/` is the small-object fast path (thread-local, never touches the
//! region table); `large/` serves big objects, one region each; `region/` is the region
//! table (the user-space VMA tree with lock-free lookups and per-region locks); `purge/`
//! returns memory; `meta/` holds our own metadata; `os/` is the only code that makes
//! memory syscalls; `space` maps addresses to their owner. This file is the public
//! surface (used by `rangealloc` and the C shim) and the re-entrancy guard.

pub mod meta;
pub mod os;
pub mod region;
pub mod space;
pub mod sync;

use core::cell::Cell;

/// The alignment C's `malloc` guarantees on x86_64 (`alignof(max_align_t)`).
pub const MALLOC_ALIGN: usize = 16;

thread_local! {
    /// Set while this thread runs allocator code that may allocate through a dependency
    /// (crossbeam-epoch, parking_lot). Nested requests then go to `meta`, never to the
    /// table. `const` and without `Drop`, so reading it never allocates or registers a
    /// destructor.
    static IN_ALLOCATOR: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside the allocator until dropped.
pub(crate) struct Reentrancy {
    was_inside: bool,
}

impl Reentrancy {
    #[inline]
    pub(crate) fn enter() -> Self {
        Reentrancy {
            was_inside: IN_ALLOCATOR.with(|f| f.replace(true)),
        }
    }
}

impl Drop for Reentrancy {
    #[inline]
    fn drop(&mut self) {
        let was = self.was_inside;
        IN_ALLOCATOR.with(|f| f.set(was));
    }
}

#[inline]
pub(crate) fn inside_allocator() -> bool {
    IN_ALLOCATOR.with(|f| f.get())
}

/// Reports an internal failure that leaves no safe way on, and aborts.
#[cold]
pub fn fatal(message: &str) -> ! {
    os::write_stderr(b"rangealloc: fatal: ");
    os::write_stderr(message.as_bytes());
    os::write_stderr(b"\n");
    std::process::abort()
}

// ---------------------------------------------------------------------------------------
// Public allocation API. TEMPORARY: forwards to glibc while the engine is being built;
// replaced by heap/ and large/ before the first release.
// ---------------------------------------------------------------------------------------
extern "C" {
    fn __libc_memalign(align: usize, size: usize) -> *mut u8;
    fn __libc_free(p: *mut u8);
}

/// Allocates `size` bytes aligned to `align` (a power of two). Null when out of memory.
///
/// # Safety
/// `align` must be a power of two.
pub unsafe fn alloc(size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarding.
    unsafe { __libc_memalign(align.max(MALLOC_ALIGN), size.max(1)) }
}

/// Like `alloc`, zero-filled.
///
/// # Safety
/// As `alloc`.
pub unsafe fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarding.
    let p = unsafe { alloc(size, align) };
    if !p.is_null() {
        // SAFETY: fresh block of at least `size` bytes.
        unsafe { core::ptr::write_bytes(p, 0, size) };
    }
    p
}

/// Frees a block; null is a no-op. Misuse (double free, foreign pointer) aborts.
///
/// # Safety
/// `p` must be null or come from this allocator.
pub unsafe fn free(p: *mut u8) {
    if !p.is_null() {
        // SAFETY: forwarding.
        unsafe { __libc_free(p) }
    }
}

/// The usable size of a live block.
///
/// # Safety
/// `p` must be a live block of this allocator.
pub unsafe fn usable_size(p: *const u8) -> usize {
    extern "C" {
        fn malloc_usable_size(p: *const u8) -> usize;
    }
    // SAFETY: forwarding.
    unsafe { malloc_usable_size(p) }
}

/// Resizes a live block to `new_size` bytes aligned to `align`, in place when possible.
/// Returns null (and leaves `p` intact) when out of memory.
///
/// # Safety
/// `p` must be a live, non-null block of this allocator, allocated with `align`.
pub unsafe fn realloc(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarding.
    unsafe {
        let old = usable_size(p);
        if new_size <= old && new_size >= old / 2 {
            return p;
        }
        let q = alloc(new_size, align);
        if !q.is_null() {
            core::ptr::copy_nonoverlapping(p, q, old.min(new_size));
            free(p);
        }
        q
    }
}

/// `pthread_atfork` handlers: lock everything before `fork`, release in both processes.
pub fn fork_prepare() {}
pub fn fork_parent() {}
pub fn fork_child() {}
