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
