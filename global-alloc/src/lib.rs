//! rangealloc as the Rust global allocator.
//!
//! rangealloc is a general-purpose allocator for multithreaded programs: thread-local
//! heaps serve small objects without locks, and big objects live in a user-space
//! region table (a "VMA tree" with per-region locks) that grows them in place and
//! returns their memory without process-wide locks. It runs on Linux x86_64 with 4 KiB
//! pages (it checks the page size at start and stops with a message elsewhere).
//!
//! # Using it
//!
//! Add the crate and declare the allocator once, in the binary:
//!
//! ```
//! #[global_allocator]
//! static A: rangealloc::RangeAlloc = rangealloc::RangeAlloc;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     let s = rangealloc::stats();
//!     assert!(s.allocated >= v.len() * 8);
//!     println!("{} bytes allocated", s.allocated);
//! }
//! ```
//!
//! # Options
//!
//! Options come from the program (`RangeAlloc::with_options`) and from the environment
//! variable `RANGEALLOC_OPTIONS=key=value,...`, whose keys override the program's one by
//! one. A malformed item is reported once on stderr at the first allocation and keeps
//! its default. Among the keys (the README has the full table): `purge_delay_ms`,
//! `purge_mode` (`dontneed`/`free`), `background_purge`, `secure`, `stats`, `verbose`,
//! `dirty_budget_mb`, `thp` (`auto`/`never`), `calloc_prefault`.
//!
//! ```
//! #[global_allocator]
//! static A: rangealloc::RangeAlloc =
//!     rangealloc::RangeAlloc::with_options("purge_delay_ms=200,dirty_budget_mb=16");
//!
//! fn main() {
//!     let _warm_up = Box::new(1); // options are read at the first allocation
//!     if std::env::var_os("RANGEALLOC_OPTIONS").is_none() {
//!         assert_eq!(rangealloc::options().purge_delay_ms, 200);
//!     }
//!     // Four options can change while the program runs:
//!     rangealloc::set_purge_delay_ms(50);
//!     rangealloc::set_dirty_budget(8 << 20);
//!     assert_eq!(rangealloc::options().purge_delay_ms, 50);
//! }
//! ```
//!
//! # Statistics and purging
//!
//! [`stats`] returns a snapshot ([`Stats`], printable as text with [`print_stats`] or as
//! JSON with [`Stats::to_json`]); [`purge`] returns free memory to the OS now.
//!
//! This crate is a thin adapter over the engine, `rangealloc-core`.

#![warn(missing_docs)]

use core::alloc::{GlobalAlloc, Layout};
use rangealloc_core as core_api;

pub use rangealloc_core::options::Options;
pub use rangealloc_core::os::{PurgeMode, Syscall, SyscallCounts};
pub use rangealloc_core::snapshot::{
    ClassStats, LockStats, MediumCacheStats, ReallocStats, RegionStats, Stats,
};

/// The engine itself, for the project's benchmarks and tools that study its parts (the
/// region table, size classes, counters). Not a stable API.
#[doc(hidden)]
pub use rangealloc_core as engine;

/// The allocator. All state lives in the engine; the value carries only the program's
/// option string. Use the constant [`RangeAlloc`](constant@RangeAlloc) for the
/// defaults, or [`RangeAlloc::with_options`].
pub struct RangeAlloc {
    options: &'static str,
}

/// The allocator with default options (`RANGEALLOC_OPTIONS` still applies), so that
/// `static A: RangeAlloc = RangeAlloc;` reads like a unit struct.
#[allow(non_upper_case_globals)]
pub const RangeAlloc: RangeAlloc = RangeAlloc::with_options("");

impl RangeAlloc {
    /// The allocator with options set by the program, in `RANGEALLOC_OPTIONS`' syntax
    /// (`"purge_delay_ms=200,background_purge=1"`). They are read at the first
    /// allocation; `RANGEALLOC_OPTIONS` overrides them key by key; a malformed item is
    /// reported once on stderr then and keeps its default (as the environment's are).
    pub const fn with_options(options: &'static str) -> RangeAlloc {
        RangeAlloc { options }
    }

    /// The option string this allocator was built with (empty for the defaults).
    pub const fn option_string(&self) -> &'static str {
        self.options
    }

    /// Hands the option string to the engine before its first parse. For the default
    /// allocator the string is a compile-time empty constant and this folds away.
    #[inline(always)]
    fn hand_over_options(&self) {
        if !self.options.is_empty() && !core_api::options::parsed() {
            self.give_options();
        }
    }

    #[cold]
    #[inline(never)]
    fn give_options(&self) {
        core_api::options::set_code_options(self.options.as_bytes());
    }
}

impl Default for RangeAlloc {
    fn default() -> Self {
        RangeAlloc
    }
}

// SAFETY: every method forwards to the engine, which returns blocks of at least the
// requested size and alignment, or null, and accepts back exactly the blocks it returned.
unsafe impl GlobalAlloc for RangeAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.hand_over_options();
        // SAFETY: Layout guarantees a power-of-two alignment.
        unsafe { core_api::alloc(layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.hand_over_options();
        // SAFETY: as in `alloc`.
        unsafe { core_api::alloc_zeroed(layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from this allocator.
        unsafe { core_api::free(ptr) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: `ptr` is live and was allocated with `layout`.
        unsafe { core_api::realloc(ptr, new_size, layout.align()) }
    }
}

/// The usable size of a live block: at least the size it was allocated with, and all of
/// it may be used (tikv-jemallocator's `usable_size`).
///
/// # Safety
/// `ptr` must be a live block returned by rangealloc (as the global allocator); any
/// other pointer aborts the process with a message, or worse if the checks cannot see it.
pub unsafe fn usable_size<T>(ptr: *const T) -> usize {
    // SAFETY: forwarded contract.
    unsafe { core_api::usable_size(ptr.cast()) }
}

/// Syscalls the allocator has issued so far, by kind.
pub fn syscall_counts() -> SyscallCounts {
    rangealloc_core::os::syscall_counts()
}

/// A snapshot of the allocator's statistics (allocated, active, resident, mapped,
/// retained, metadata, regions by kind, per-class counts, syscalls, region-lock
/// counters, purge counts). Costs a walk over the heaps and the region tree.
pub fn stats() -> Stats {
    rangealloc_core::snapshot::snapshot()
}

/// Writes the human-readable statistics report to stderr.
pub fn print_stats() {
    rangealloc_core::snapshot::print_to_stderr()
}

/// The options in force now: those parsed at start (the program's string, then
/// `RANGEALLOC_OPTIONS`) with the run-time settings applied.
pub fn options() -> Options {
    rangealloc_core::options::current()
}

/// Returns free memory to the OS now, whatever the purge delay: every thread's cache of
/// freed medium objects, every free region, and
/// the free pages of every thread's heap, including threads that are blocked or idle
/// (not the one empty page each size class keeps per heap, nor blocks other threads
/// freed into a page, which go back at its owner's next allocation or exit). Returns
/// the bytes purged.
pub fn purge() -> usize {
    rangealloc_core::reclaim::purge_now()
}

/// Sets the purge delay at run time: free pages dirty for `ms` milliseconds go back at
/// the next pass; `u64::MAX` means never (only [`purge`] and the dirty budget return
/// memory). Takes effect within a second.
pub fn set_purge_delay_ms(ms: u64) {
    rangealloc_core::tuning::set_purge_delay_ms(ms)
}

/// Switches the background purger on (its thread starts the first time) or off.
pub fn set_background_purge(on: bool) {
    rangealloc_core::tuning::set_background_purge(on)
}

/// Switches the statistics report on stderr at exit on or off.
pub fn set_stats_at_exit(on: bool) {
    rangealloc_core::tuning::set_stats_at_exit(on)
}

/// Sets the dirty budget: free dirty bytes kept for reuse before the excess is purged
/// at once, whatever its age. Applied now.
pub fn set_dirty_budget(bytes: usize) {
    rangealloc_core::tuning::set_dirty_budget(bytes)
}

/// Heap profiling: sampled allocation stacks as pprof profiles (see the README's
/// "Heap profiling"). Sampling starts with `RANGEALLOC_OPTIONS=prof=1` or
/// `set_active(true)`; one allocation per `prof_sample` bytes (512 KiB by default) on
/// average records its call stack.
pub mod profile {
    use std::io;
    use std::path::Path;

    /// Writes a gzip-compressed pprof profile (`alloc_objects`, `alloc_space`,
    /// `inuse_objects`, `inuse_space`, with the process's mappings) to `path`, for
    /// `go tool pprof <binary> <path>`. Fails with `NotFound` if profiling was never on.
    pub fn dump(path: impl AsRef<Path>) -> io::Result<()> {
        rangealloc_core::prof::dump(path.as_ref()).map_err(io::Error::from_raw_os_error)
    }

    /// True while allocations are being sampled.
    pub fn enabled() -> bool {
        rangealloc_core::prof::active()
    }

    /// Starts or stops sampling; returns whether it was on. Samples already taken
    /// stay, and their frees are still accounted while sampling is off.
    pub fn set_active(active: bool) -> bool {
        rangealloc_core::prof::set_active(active)
    }

    /// Zeroes the allocation totals of every stack (`alloc_*`); the in-use totals
    /// follow the live objects and stay.
    pub fn reset() {
        rangealloc_core::prof::reset()
    }
}
