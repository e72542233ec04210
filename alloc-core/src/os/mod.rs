//! The OS layer: the only module that calls `mmap`, `munmap`, `madvise`, `mprotect`
//! and `mremap`. It owns the syscall counters (with those of overlays and of failed
//! moves' destinations) and, in test builds only, `move_pages`'s fault injection
//! (`inject`); it calls `libc`, its own parts (`maps`: the mappings gauge and `/proc`
//! reads) and `stats` (to count process-wide locks).
//!
//! Everything above speaks in page-aligned `(addr, len)` pairs and gets typed errors.
//! Each call preserves the caller's `errno`, because under `LD_PRELOAD` our callers are
//! C programs that read `errno` after an unrelated libc call.
//!
//! `memmap2` was considered and left out: its `MmapMut` unmaps on drop and cannot
//! express `MAP_NORESERVE` reservations that are trimmed to an alignment, which is all
//! this layer does.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

pub mod checkpoint;
pub mod maps;
pub mod pagemap;

/// The base page size. x86_64 and aarch64 Linux with 4 KiB pages are the supported
/// targets; `init_check` verifies it at start-up.
pub const PAGE_SIZE: usize = 4096;

/// The transparent huge page size of x86_64 and aarch64 (4 KiB base pages): an
/// `madvise` that covers part of one splits it.
pub const HUGE_PAGE: usize = 2 << 20;

/// `madvise` advice values newer than the `libc` crate's constants (Linux 6.13+).
const MADV_GUARD_INSTALL: libc::c_int = 102;
const MADV_GUARD_REMOVE: libc::c_int = 103;

/// How free memory is handed back to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeMode {
    /// `MADV_DONTNEED`: RSS drops at once and the pages read back as zero.
    DontNeed,
    /// `MADV_FREE`: the kernel reclaims lazily; content is undefined until rewritten.
    Free,
}

/// A failed system call, with the errno it reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OsError {
    /// The call that failed.
    pub call: Syscall,
    /// Its `errno`.
    pub errno: i32,
}

/// The syscalls we count. Each one that takes the kernel's `mmap_lock` for write is
/// marked in `takes_mmap_lock_write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Syscall {
    /// `mmap` (address-space reservations).
    Mmap = 0,
    /// `munmap`.
    Munmap,
    /// `mremap` (moving a big object's pages).
    Mremap,
    /// `mprotect` (guard pages on kernels without `MADV_GUARD_INSTALL`).
    Mprotect,
    /// `madvise(MADV_DONTNEED)` purges.
    MadviseDontNeed,
    /// `madvise(MADV_FREE)` purges.
    MadviseFree,
    /// `madvise(MADV_GUARD_INSTALL/REMOVE)`.
    MadviseGuard,
    /// `madvise(MADV_HUGEPAGE)`: once per large-object reservation, never per object.
    MadviseHugePage,
}

const SYSCALL_KINDS: usize = 8;

impl Syscall {
    /// Every kind, in counter order.
    pub const ALL: [Syscall; SYSCALL_KINDS] = [
        Syscall::Mmap,
        Syscall::Munmap,
        Syscall::Mremap,
        Syscall::Mprotect,
        Syscall::MadviseDontNeed,
        Syscall::MadviseFree,
        Syscall::MadviseGuard,
        Syscall::MadviseHugePage,
    ];

    /// The call as the report prints it.
    pub fn name(self) -> &'static str {
        match self {
            Syscall::Mmap => "mmap",
            Syscall::Munmap => "munmap",
            Syscall::Mremap => "mremap",
            Syscall::Mprotect => "mprotect",
            Syscall::MadviseDontNeed => "madvise(DONTNEED)",
            Syscall::MadviseFree => "madvise(FREE)",
            Syscall::MadviseGuard => "madvise(GUARD)",
            Syscall::MadviseHugePage => "madvise(HUGEPAGE)",
        }
    }

    /// True for the calls that take the kernel's `mmap_lock` for write (`MADV_HUGEPAGE`
    /// changes VMA flags, so it does).
    pub fn takes_mmap_lock_write(self) -> bool {
        matches!(
            self,
            Syscall::Mmap
                | Syscall::Munmap
                | Syscall::Mremap
                | Syscall::Mprotect
                | Syscall::MadviseHugePage
        )
    }
}

/// Issued-call counters. Relaxed: they are statistics, read without ordering needs.
static COUNTS: [AtomicU64; SYSCALL_KINDS] = [const { AtomicU64::new(0) }; SYSCALL_KINDS];

/// How many calls of each kind this process has issued, successful or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallCounts(pub [u64; SYSCALL_KINDS]);

impl SyscallCounts {
    /// The count of one kind.
    pub fn get(&self, call: Syscall) -> u64 {
        self.0[call as usize]
    }

    /// Calls that took the kernel's `mmap_lock` for write.
    pub fn mmap_lock_writers(&self) -> u64 {
        Syscall::ALL
            .iter()
            .filter(|c| c.takes_mmap_lock_write())
            .map(|&c| self.get(c))
            .sum()
    }
}

/// The memory syscalls made so far, per call.
pub fn syscall_counts() -> SyscallCounts {
    SyscallCounts(core::array::from_fn(|i| COUNTS[i].load(Ordering::Relaxed)))
}

fn count(call: Syscall) {
    COUNTS[call as usize].fetch_add(1, Ordering::Relaxed);
    if call.takes_mmap_lock_write() {
        // The kernel's `mmap_lock` is the process-wide lock of the address space.
        crate::stats::process_lock_taken();
    }
}

/// Restores `errno` when dropped, so internal syscalls never leak an errno to C callers.
struct ErrnoGuard(i32);

impl ErrnoGuard {
    fn save() -> Self {
        ErrnoGuard(errno())
    }
}

impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        set_errno(self.0);
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno` (the C ABI reports errors through it).
pub fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// Fails the build of a test or the start-up check if the kernel's page size differs.
pub fn init_check() -> bool {
    kernel_page_size() == PAGE_SIZE
}

fn kernel_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Room for the page-size message: its fixed text plus 20 decimal digits.
const PAGE_SIZE_MESSAGE_LEN: usize = 160;

/// The start-up check: every size class, segment and guard page assumes `PAGE_SIZE`, so
/// on a kernel with other pages (arm64 or ppc64 with 16 or 64 KiB) the allocator stops
/// at its first allocation with one clear line instead of corrupting memory later.
pub fn check_page_size() {
    let actual = kernel_page_size();
    if let Some((line, len)) = page_size_message(actual) {
        write_stderr(&line[..len]);
        std::process::abort();
    }
}

/// The message for an unsupported page size, or `None` when `actual` is supported.
fn page_size_message(actual: usize) -> Option<([u8; PAGE_SIZE_MESSAGE_LEN], usize)> {
    if actual == PAGE_SIZE {
        return None;
    }
    let mut line = [0u8; PAGE_SIZE_MESSAGE_LEN];
    let mut len = 0;
    let mut digits = [0u8; 20];
    for part in [
        b"rangealloc: fatal: the kernel's page size is ".as_slice(),
        decimal(actual as u64, &mut digits),
        b" bytes; this build supports only 4096-byte pages (Linux x86_64)\n",
    ] {
        line[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    Some((line, len))
}

/// `v` in decimal digits, written at the end of `digits` (no allocation).
fn decimal(mut v: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut n = digits.len();
    loop {
        n -= 1;
        digits[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &digits[n..]
}

/// Reserves `len` bytes of address space aligned to `align` (a power of two, at least a
/// page). The memory is readable and writable, committed lazily by the kernel on first
/// touch, and not charged against overcommit (`MAP_NORESERVE`).
pub fn reserve(len: usize, align: usize) -> Result<usize, OsError> {
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE);
    debug_assert!(len.is_multiple_of(PAGE_SIZE) && len > 0);
    let _errno = ErrnoGuard::save();
    let padded = len.checked_add(align - PAGE_SIZE).ok_or(OsError {
        call: Syscall::Mmap,
        errno: libc::ENOMEM,
    })?;
    let base = map(padded)?;
    let start = (base + align - 1) & !(align - 1);
    // Trim the padding so the kernel keeps one VMA of exactly `len` bytes.
    if start > base {
        unmap_raw(base, start - base)?;
    }
    let tail = base + padded - (start + len);
    if tail > 0 {
        unmap_raw(start + len, tail)?;
    }
    Ok(start)
}

fn map(len: usize) -> Result<usize, OsError> {
    count(Syscall::Mmap);
    // SAFETY: an anonymous private mapping at an address the kernel picks cannot alias
    // any existing memory.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(OsError {
            call: Syscall::Mmap,
            errno: errno(),
        });
    }
    Ok(p as usize)
}

fn unmap_raw(addr: usize, len: usize) -> Result<(), OsError> {
    count(Syscall::Munmap);
    // SAFETY: callers pass ranges this module mapped and nobody else references.
    if unsafe { libc::munmap(addr as *mut libc::c_void, len) } != 0 {
        return Err(OsError {
            call: Syscall::Munmap,
            errno: errno(),
        });
    }
    Ok(())
}

/// Returns a reservation to the kernel.
///
/// # Safety
/// `[addr, addr + len)` must be a range returned by `reserve` (or a page-aligned part of
/// one) that no live object uses any more.
pub unsafe fn release(addr: usize, len: usize) -> Result<(), OsError> {
    let _errno = ErrnoGuard::save();
    unmap_raw(addr, len)
}

/// Hands the pages of a free range back to the kernel; the range stays reserved.
///
/// # Safety
/// No live object may lie in the range: its content is lost.
pub unsafe fn purge(addr: usize, len: usize, mode: PurgeMode) -> Result<(), OsError> {
    let _errno = ErrnoGuard::save();
    let (call, advice) = mode.advice();
    madvise(call, addr, len, advice)
}

impl PurgeMode {
    /// The `madvise` advice this mode gives, and the counter its calls go to.
    fn advice(self) -> (Syscall, libc::c_int) {
        match self {
            PurgeMode::DontNeed => (Syscall::MadviseDontNeed, libc::MADV_DONTNEED),
            PurgeMode::Free => (Syscall::MadviseFree, libc::MADV_FREE),
        }
    }
}

/// Most ranges one `purge_many` call takes (the region table's purge batch).
pub const PURGE_MANY_MAX: usize = 16;

/// `process_madvise`'s pidfd for "the calling thread" (`PIDFD_SELF_THREAD`, Linux
/// 6.15+): no file descriptor to open, keep or leak into a `fork` child. Not
/// `PIDFD_SELF_THREAD_GROUP` (-10001), which goes through the thread-group leader: once
/// the main thread has called `pthread_exit` (the process lives on) it has no `mm`, and
/// every call failed with `ESRCH` (review11, a C probe); it also takes the leader's
/// `task_lock`, one lock for every purging thread.
const PIDFD_SELF: libc::c_int = -10000;

/// Whether `purge_many` may batch: `BATCH_UNKNOWN` until the first batched call
/// answers, then `BATCH_YES` or `BATCH_NO` for good. Relaxed: a hint; a stale read
/// costs one failed call or one unbatched batch, never correctness.
static BATCH: AtomicU8 = AtomicU8::new(BATCH_UNKNOWN);
const BATCH_UNKNOWN: u8 = 0;
const BATCH_YES: u8 = 1;
const BATCH_NO: u8 = 2;

/// Batched purges made (`purge_many` calls that reached the kernel), and the ranges
/// they advised (statistics; each call is also counted once as its `madvise` kind).
static BATCHES: AtomicU64 = AtomicU64::new(0);
static BATCHED_RANGES: AtomicU64 = AtomicU64::new(0);

/// Batched purge calls made and the ranges they purged.
pub fn batched_purges() -> (u64, u64) {
    (
        BATCHES.load(Ordering::Relaxed),
        BATCHED_RANGES.load(Ordering::Relaxed),
    )
}

/// Purges several free ranges with one `process_madvise` call: the kernel advises
/// them in order and (6.18 here does) flushes the TLB once for all of them, where one
/// `madvise` per range flushes once per range, and every flush that finds the process running on
/// another CPU is an inter-processor interrupt (a TLB shootdown; the `medium` workload's
/// purges cost about one each, BENCHMARKS.md "medpurge11"). Locks as `madvise` does,
/// range by range: a range inside one mapping under that mapping's lock (6.18, counted
/// by review11 with the `mmap_lock` tracepoints), a range spanning mappings (pages
/// `mremap` moved in) under `mmap_lock` for read, the process-wide lock's shared side,
/// which the kernel then keeps for the rest of the vector: a batch holding moved-in
/// pieces holds it for up to 16 MiB of zapping (27-66 us median against 5-9 us per
/// single `madvise`, in fewer acquisitions; no writer waited longer in `medium` at 2
/// threads). Returns how many leading ranges were purged: all of them, or fewer when the call failed part-way or
/// is not available (kernels before 6.15 have no `PIDFD_SELF`, before 6.13 no
/// `MADV_DONTNEED` through `process_madvise`; a seccomp filter may refuse it); the
/// caller purges the rest with `purge`. A refusal of the call itself turns batching off
/// for the process, at once for the errors no range can cause, and for `EINVAL` (which
/// a range can) only when it is the first answer.
///
/// # Safety
/// As `purge`, for every range: no live object may lie in any of them.
pub unsafe fn purge_many(ranges: &[(usize, usize)], mode: PurgeMode) -> usize {
    if ranges.len() < 2
        || ranges.len() > PURGE_MANY_MAX
        || BATCH.load(Ordering::Relaxed) == BATCH_NO
    {
        return 0;
    }
    let _errno = ErrnoGuard::save();
    let (call, advice) = mode.advice();
    let mut iov = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    }; PURGE_MANY_MAX];
    for (v, &(addr, len)) in iov.iter_mut().zip(ranges) {
        v.iov_base = addr as *mut libc::c_void;
        v.iov_len = len;
    }
    count(call);
    // SAFETY: the vector holds `ranges.len()` initialised entries; the caller
    // guarantees every range is ours and holds no live object.
    let done = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            PIDFD_SELF,
            iov.as_ptr(),
            ranges.len(),
            advice,
            0u32,
        )
    };
    if done < 0 {
        let e = errno();
        // The call itself refused (no syscall, no sentinel, advice not allowed, a
        // seccomp filter, perhaps installed after a first success): never again.
        // `EINVAL` may also be a range's (locked or PFN mappings), so it counts only as
        // the first answer. Other errors are the ranges' own, which the caller's
        // one-by-one `purge` meets and reports.
        let refused = matches!(
            e,
            libc::ENOSYS | libc::EBADF | libc::EPERM | libc::EACCES | libc::ESRCH
        ) || (e == libc::EINVAL && BATCH.load(Ordering::Relaxed) == BATCH_UNKNOWN);
        if refused {
            BATCH.store(BATCH_NO, Ordering::Relaxed);
        }
        return 0;
    }
    BATCH.store(BATCH_YES, Ordering::Relaxed);
    BATCHES.fetch_add(1, Ordering::Relaxed);
    // The kernel counts only whole ranges advised: the first `n` whose lengths add up
    // to what it returns.
    let mut left = done as usize;
    let mut n = 0;
    for &(_, len) in ranges {
        if len > left {
            break;
        }
        left -= len;
        n += 1;
    }
    BATCHED_RANGES.fetch_add(n as u64, Ordering::Relaxed);
    n
}

/// Whether this process may purge with `os::purge_many` (Linux 6.15 and later, no
/// seccomp filter refusing `process_madvise`): tried on a scratch mapping of our own.
#[cfg(test)]
pub(crate) fn purge_batching_works() -> bool {
    const LEN: usize = 4 * PAGE_SIZE;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let a = p as usize;
    // SAFETY: our own scratch mapping, holding nothing.
    let done = unsafe {
        purge_many(
            &[(a, PAGE_SIZE), (a + 2 * PAGE_SIZE, PAGE_SIZE)],
            PurgeMode::DontNeed,
        )
    };
    // SAFETY: mapped above, unused since.
    unsafe { libc::munmap(p, LEN) };
    done == 2
}

/// Purges a free range by laying a fresh mapping over it (`mmap(MAP_FIXED)`, flags as
/// `reserve`'s): the range reads as zero, and whatever mappings `mremap` moved into it
/// are gone; the fresh one takes the page offset of its address and merges with its
/// neighbours (`maps`). Takes `mmap_lock` for write (counted as `mmap`), where
/// `MADV_DONTNEED` does not: `maps::overlay_moved` says when it is worth it. Base space
/// only: the fresh mapping does not carry `MADV_HUGEPAGE`. Callers ask `overlay_is_safe`
/// first: on a failure the kernel (6.12 and later) leaves the old mappings in place.
///
/// # Safety
/// No live object may lie in the range, which is ours: its content is lost.
pub unsafe fn overlay(addr: usize, len: usize) -> Result<(), OsError> {
    let _errno = ErrnoGuard::save();
    count(Syscall::Mmap);
    maps::charge();
    OVERLAYS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: caller contract: MAP_FIXED replaces only our own free pages.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(OsError {
            call: Syscall::Mmap,
            errno: errno(),
        });
    }
    Ok(())
}

/// `overlay` calls made (statistics; each is also counted as an `mmap`).
static OVERLAYS: AtomicU64 = AtomicU64::new(0);

/// How many purges overwrote their range (`overlay`) so far.
pub fn overlays() -> u64 {
    OVERLAYS.load(Ordering::Relaxed)
}

fn madvise(call: Syscall, addr: usize, len: usize, advice: libc::c_int) -> Result<(), OsError> {
    count(call);
    // SAFETY: the caller guarantees the range is ours and holds no live object.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } != 0 {
        return Err(OsError {
            call,
            errno: errno(),
        });
    }
    Ok(())
}

/// `MADV_POPULATE_WRITE` (Linux 5.14): not in `libc` 0.2 for every target.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Faults in `[addr, addr + len)` (page-aligned, our own anonymous memory that reads
/// zero) for writing, so that the program's first access there, a read or a write,
/// finds a private page: `madvise(MADV_POPULATE_WRITE)` (Linux 5.14), one call per
/// `HUGE_PAGE` at most. The call holds `mmap_lock` for read while it populates: a
/// writer elsewhere in the process (an `mmap`, a thread stack) waits that long,
/// measured 14.8 ms behind a 32 MiB populate (review18 M3), so the pieces stay short.
/// No fallback: where the advice fails (an old kernel, a range made read-only by the
/// program, out of memory) the range stays lazy, which is never wrong. Preserves
/// `errno`; false when some piece failed (those before it are populated).
///
/// # Safety
/// The range is ours and mapped; the advice changes no byte.
pub unsafe fn prefault(addr: usize, len: usize) -> bool {
    let _errno = ErrnoGuard::save();
    let end = addr + len;
    let mut at = addr;
    while at < end {
        let piece = (end - at).min(HUGE_PAGE);
        // SAFETY: within the caller's range; the advice changes no byte.
        if unsafe { libc::madvise(at as *mut libc::c_void, piece, MADV_POPULATE_WRITE) } != 0 {
            return false;
        }
        at += piece;
    }
    true
}

/// Asks the kernel to back a reservation with transparent huge pages where whole
/// aligned 2 MiB frames of it are touched (`MADV_HUGEPAGE`). It changes the VMA's flags
/// and takes `mmap_lock` for write: called once per reservation, never per object.
pub fn advise_huge_pages(addr: usize, len: usize) -> Result<(), OsError> {
    let _errno = ErrnoGuard::save();
    madvise(Syscall::MadviseHugePage, addr, len, libc::MADV_HUGEPAGE)
}

/// The kernel's transparent huge page mode
/// (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelThp {
    /// `[always]`: every anonymous mapping may get huge pages, advised or not.
    Always,
    /// `[madvise]`: only ranges advised with `MADV_HUGEPAGE` get them.
    Madvise,
    /// `[never]`, or no THP support (the file is missing or unreadable).
    Never,
}

/// Where the kernel says its THP mode.
const THP_ENABLED_PATH: &core::ffi::CStr = c"/sys/kernel/mm/transparent_hugepage/enabled";

/// Room for that file's one line (`always [madvise] never\n` is 23 bytes).
const THP_ENABLED_MAX: usize = 64;

/// Reads the kernel's THP mode, without allocating (options are parsed before any heap
/// exists). Any failure reads as `Never`: then nothing changes.
pub fn kernel_thp() -> KernelThp {
    let _errno = ErrnoGuard::save();
    let mut buf = [0u8; THP_ENABLED_MAX];
    // Raw calls: no cancellation point inside the first allocation; outside the
    // descriptor slots, which refuse while a fork is in progress (the answer is kept
    // for the process: `options::thp`).
    let n = maps::read_once(THP_ENABLED_PATH, &mut buf);
    if n <= 0 {
        return KernelThp::Never;
    }
    parse_thp_mode(&buf[..n as usize])
}

/// The bracketed word of the THP `enabled` file.
fn parse_thp_mode(text: &[u8]) -> KernelThp {
    let Some(open) = text.iter().position(|&b| b == b'[') else {
        return KernelThp::Never;
    };
    let rest = &text[open + 1..];
    match rest.iter().position(|&b| b == b']').map(|end| &rest[..end]) {
        Some(b"always") => KernelThp::Always,
        Some(b"madvise") => KernelThp::Madvise,
        _ => KernelThp::Never,
    }
}

/// Makes a range fault on any access. Prefers `MADV_GUARD_INSTALL` (no VMA split, no
/// `mmap_lock` write); falls back to `mprotect(PROT_NONE)` on older kernels.
///
/// # Safety
/// No live object may lie in the range.
pub unsafe fn guard_install(addr: usize, len: usize) -> Result<(), OsError> {
    let _errno = ErrnoGuard::save();
    match madvise(Syscall::MadviseGuard, addr, len, MADV_GUARD_INSTALL) {
        Ok(()) => Ok(()),
        Err(_) => protect(addr, len, libc::PROT_NONE),
    }
}

/// Undoes `guard_install`; the range reads back as zero afterwards.
///
/// # Safety
/// The range must be one that `guard_install` protected.
pub unsafe fn guard_remove(addr: usize, len: usize) -> Result<(), OsError> {
    let _errno = ErrnoGuard::save();
    match madvise(Syscall::MadviseGuard, addr, len, MADV_GUARD_REMOVE) {
        Ok(()) => Ok(()),
        Err(_) => protect(addr, len, libc::PROT_READ | libc::PROT_WRITE),
    }
}

fn protect(addr: usize, len: usize, prot: libc::c_int) -> Result<(), OsError> {
    count(Syscall::Mprotect);
    // SAFETY: the range is ours (caller contract of guard_install/guard_remove).
    if unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) } != 0 {
        return Err(OsError {
            call: Syscall::Mprotect,
            errno: errno(),
        });
    }
    Ok(())
}

/// Where a `move_pages` stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveStop {
    /// The first `moved` bytes are at the destination (their source range mapped and
    /// empty); the rest are still at the source.
    pub moved: usize,
    /// This many bytes from `moved` on were the destination of the `mremap` that
    /// failed, which the kernel may have unmapped (`restore_destination`); 0 when no
    /// call was made.
    pub failed: usize,
}

/// Moves the pages of `[from, from + len)` to `[to, to + len)` without copying, leaving
/// the source mapped and empty (`MREMAP_DONTUNMAP`), so the arena keeps no hole: one
/// `mremap` per mapping the source spans (`maps::pieces`), never one over several
/// where a call could stop part-way.
/// From 6.17 the kernel moves a source of several mappings in one call, but one by
/// one, and a failure on a later one (a userfaultfd-registered part, `vm.max_map_count`
/// or `RLIMIT_DATA` reached, `EINTR` from KSM's unmerge, which `SA_RESTART` then reruns
/// over the emptied front and reports as success) keeps the earlier ones moved: a copy
/// from the source would read zeros there (review12b F1, `bench/probe/uffd_mremap_multi_vma.c`).
/// A move of one mapping either happens whole or not at all, so a failure stops at a
/// known piece (`MoveStop`). A source of more than `maps::MOVE_PIECES` mappings is not
/// moved (`MoveStop` of nothing: the caller copies). When the kernel cannot list the
/// pieces, a source that may span several (`may_span`: `region::MOVED_IN`) is not
/// moved either, nor is any source from 6.17 on: an unmarked object may span several
/// too, split by the program (`mprotect`, `madvise`, userfaultfd on part of it) or by
/// our own purges' overwrites of moved-in neighbours (review13 M1). Before 6.17 one
/// call is all or nothing, and an unmarked source goes in one.
///
/// # Safety
/// Both ranges must be ours; the destination holds no live object and the source's
/// content is not needed any more unless the move stops (`MoveStop`).
pub unsafe fn move_pages(
    from: usize,
    to: usize,
    len: usize,
    may_span: bool,
) -> Result<(), MoveStop> {
    let _errno = ErrnoGuard::save();
    let pieces = match maps::pieces(from, len) {
        maps::Layout::Known(pieces) => pieces,
        // Before 6.17 one call over several mappings fails whole (`EFAULT`, after
        // unmapping the destination), and over one it is all or nothing: a source
        // that is not known to span several may go in one call. From 6.17 (where
        // `PROCMAP_QUERY` exists, so only `/proc` or a sandbox refused it) one call may
        // stop part-way, and nothing tells an object the program split itself: copy.
        maps::Layout::Unknown if !may_span && unmaps_before_failing() => {
            // SAFETY: caller contract.
            return unsafe { move_mapping(from, to, len) }.map_err(|_| MoveStop {
                moved: 0,
                failed: len,
            });
        }
        maps::Layout::Unknown | maps::Layout::Several => {
            return Err(MoveStop {
                moved: 0,
                failed: 0,
            })
        }
    };
    for (offset, piece) in pieces.iter() {
        // SAFETY: caller contract; each piece lies in one mapping.
        if unsafe { move_mapping(from + offset, to + offset, piece) }.is_err() {
            return Err(MoveStop {
                moved: offset,
                failed: piece,
            });
        }
    }
    Ok(())
}

/// One `mremap` of `move_pages`.
///
/// # Safety
/// As `move_pages`.
unsafe fn move_mapping(from: usize, to: usize, len: usize) -> Result<(), OsError> {
    count(Syscall::Mremap);
    maps::charge();
    #[cfg(test)]
    if let Some(e) = inject::apply(from, to, len) {
        return Err(e);
    }
    // SAFETY: caller contract; MREMAP_FIXED replaces our own reserved pages at `to`.
    let p = unsafe {
        libc::mremap(
            from as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
            to as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(OsError {
            call: Syscall::Mremap,
            errno: errno(),
        });
    }
    Ok(())
}

/// What a failed `move_pages` left at its destination (`restore_destination`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Left mapped by the kernel, as it was: the caller may copy into it.
    Usable,
    /// Unmapped by the kernel and mapped again here, as `reserve` maps: the caller may
    /// copy into it. The fresh mapping merges with plain reservation beside it but not
    /// with moved-in pages (`region::MOVED_IN`), so it may be a mapping of its own.
    Restored,
    /// Part of the range was unmapped and another mapping took part of the hole: it is
    /// not ours to write to or to map over, and must stay unused for good. The first
    /// one stops page moves for the rest of the process (`page_moves_stopped`).
    Lost,
}

/// Destinations of failed moves mapped again (`restore_destination`; each also an
/// `mmap`) and destinations lost to another mapping.
static RESTORED: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);

/// How many failed moves found their destination unmapped and mapped it again.
pub fn restored_destinations() -> u64 {
    RESTORED.load(Ordering::Relaxed)
}

/// How many failed moves found their destination partly taken by another mapping.
pub fn lost_destinations() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Set by the first lost destination (`restore_destination`), never cleared: each lost
/// destination stays allocated for good (its range and its region descriptor), so
/// after one no page moves are tried (`page_moves_stopped`) and every big object that
/// cannot grow in place is copied. One leak per process at most, and a process whose
/// moves lose destinations (another thread mapping into the kernel's brief hole,
/// kernels before 6.17 only) is one that should not make more holes.
#[cfg(not(test))]
static MOVES_STOPPED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
std::thread_local! {
    /// Test builds: per thread, so the tests that lose a destination on purpose do not
    /// stop the moves of the tests running beside them.
    static MOVES_STOPPED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Whether a destination was lost (`Destination::Lost`): from then on no page moves
/// are tried (see `MOVES_STOPPED`). Relaxed: only moves already under way on other
/// threads at the first loss may lose theirs too.
pub fn page_moves_stopped() -> bool {
    #[cfg(not(test))]
    return MOVES_STOPPED.load(Ordering::Relaxed);
    #[cfg(test)]
    return MOVES_STOPPED.with(|c| c.get());
}

#[cold]
fn stop_page_moves() {
    #[cfg(not(test))]
    MOVES_STOPPED.store(true, Ordering::Relaxed);
    #[cfg(test)]
    MOVES_STOPPED.with(|c| c.set(true));
}

/// Makes the destination of a failed `move_pages` call usable again, or says it cannot
/// be. A failed `MREMAP_FIXED` may unmap its destination before it fails: kernels before
/// 6.17 do so for every failure past the argument checks (a source spanning two
/// mappings fails with `EFAULT` only then), and 6.17 on for those past the source
/// checks (`ENOMEM` from `RLIMIT_DATA` or `vm.max_map_count`, `EINTR` from KSM's
/// unmerge). Copying into such a hole faults, and any `mmap` of the process may take it
/// meanwhile.
/// - From 6.17, a range still mapped whole (`msync`: no `mmap_lock` writer, `ENOMEM`
///   on any unmapped page) is the kernel's leaving it alone: `Usable`. (A foreign
///   mapping that took exactly the whole hole of a failure past the source checks
///   would pass too; nothing in the range tells the two apart.)
/// - Otherwise the range is mapped again without replacing anything
///   (`MAP_FIXED_NOREPLACE`, flags as `reserve`'s; `advise_huge` re-applies
///   `MADV_HUGEPAGE`, which the fresh mapping does not carry): `Restored`, on every
///   kernel, so one transient failure costs one `mmap` and the moves go on (review12b
///   F3). If something is mapped there already, before 6.17 it is another mapping's
///   even if it fills the whole hole, and from 6.17 the range has holes beside it:
///   `Lost`.
///
/// # Safety
/// `[addr, addr + len)` was the destination of the failed call (ours, no live object).
#[cold]
#[inline(never)]
pub unsafe fn restore_destination(addr: usize, len: usize, advise_huge: bool) -> Destination {
    let _errno = ErrnoGuard::save();
    // SAFETY: MS_ASYNC on anonymous memory writes nothing back; it only checks that
    // every page of the range is mapped.
    if !unmaps_before_failing()
        && unsafe { libc::msync(addr as *mut libc::c_void, len, libc::MS_ASYNC) } == 0
    {
        return Destination::Usable;
    }
    count(Syscall::Mmap);
    // SAFETY: MAP_FIXED_NOREPLACE maps only where nothing is mapped: a hole in our own
    // reservation (caller contract), or nothing at all.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p as usize == addr {
        maps::charge();
        RESTORED.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        inject::count_restore();
        if advise_huge {
            let _ = madvise(Syscall::MadviseHugePage, addr, len, libc::MADV_HUGEPAGE);
        }
        return Destination::Restored;
    }
    if p != libc::MAP_FAILED {
        // A kernel before 4.17 took the address as a hint: a mapping elsewhere, ours.
        let _ = unmap_raw(p as usize, len);
    }
    LOST.fetch_add(1, Ordering::Relaxed);
    stop_page_moves();
    Destination::Lost
}

/// Whether one `mremap` over several mappings may move some and then fail (from 6.17),
/// as the tests that pretend to know no pieces (`inject::pretend_no_query`) ask.
#[cfg(test)]
pub(crate) fn one_call_may_stop_part_way() -> bool {
    !unmaps_before_failing()
}

/// Whether every failed `MREMAP_FIXED` past its argument checks unmapped its
/// destination first: kernels before 6.17, whose `mremap_to` unmaps the destination
/// before it looks the source up. From 6.17 the source is checked first ("mremap:
/// permit mremap() move of multiple VMAs"), and only later failures unmap.
fn unmaps_before_failing() -> bool {
    #[cfg(test)]
    if inject::pretends_old_kernel() {
        return true;
    }
    #[cfg(test)]
    if inject::pretends_one_mapping_moves() {
        return true;
    }
    static CHECKS_FIRST: AtomicU8 = AtomicU8::new(0);
    !kernel_from(&CHECKS_FIRST, 6, 17)
}

/// `!kernel_before(major, minor)`, asked once and kept in `cache` (0: not asked yet;
/// 1: yes; 2: no): the release never changes. Relaxed: every thread computes the same
/// answer.
fn kernel_from(cache: &AtomicU8, major: u32, minor: u32) -> bool {
    match cache.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let yes = !kernel_before(major, minor);
            cache.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
            yes
        }
    }
}

/// Whether `overlay` may run on this kernel: from 6.12 on, an `mmap(MAP_FIXED)` that
/// fails leaves the mappings it was to replace in place. Before, `mmap_region` unmapped
/// the range first and could still fail after (`ENOMEM` from the commit charge under
/// `vm.overcommit_memory=2`, which ignores `MAP_NORESERVE`), leaving a hole in a free
/// region: the next object placed there would fault on its first write, or, once any
/// `mmap` of the process took the hole, be someone else's memory. There purges only
/// advise (`MADV_DONTNEED` fails without unmapping anything), and the mappings that
/// moves split stay until a census finds them gone: medium moves then stop at
/// `maps::MAPPINGS_BOUND` and copy. Asked by purges of moved-in ranges once the gauge
/// passes `maps::OVERLAY_FROM`, so the answer is kept (the release never changes).
pub fn overlay_is_safe() -> bool {
    #[cfg(test)]
    if inject::pretends_old_fixed_map() {
        return false;
    }
    static SAFE: AtomicU8 = AtomicU8::new(0);
    kernel_from(&SAFE, 6, 12)
}

/// Whether a page of ours may carry a guard marker (`MADV_GUARD_INSTALL`, Linux 6.13,
/// or a backport), which faults on any access: a copy that reads one would crash
/// (`pagemap::guarded`). Asked of the kernel once: an advice it does not know fails
/// (`EINVAL`) before the length is looked at, and a known one over no bytes does
/// nothing and succeeds.
pub fn guard_markers_exist() -> bool {
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    match KNOWN.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let _errno = ErrnoGuard::save();
            // A page-aligned address (the length is zero: nothing is touched).
            let at = PAGE_SIZE as *mut libc::c_void;
            // SAFETY: an advice over zero bytes changes no mapping.
            let rc = unsafe { libc::madvise(at, 0, MADV_GUARD_INSTALL) };
            // Only an answer counts: a sandbox that refuses the call refuses the
            // program's markers too.
            let known = rc == 0;
            KNOWN.store(if known { 1 } else { 2 }, Ordering::Relaxed);
            known
        }
    }
}

/// Whether the running kernel's release is older than `major.minor`. A release string
/// it cannot read counts as old: callers ask to choose the side that never loses memory
/// to another mapping.
fn kernel_before(major: u32, minor: u32) -> bool {
    // SAFETY: `utsname` is plain C arrays of `c_char`, valid all zero, and `uname`
    // only writes into the struct it is handed.
    let (u, rc) = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        let rc = libc::uname(&mut u);
        (u, rc)
    };
    if rc != 0 {
        return true;
    }
    let release = u.release.iter().map(|&c| c as u8).take_while(|&c| c != 0);
    let mut parts = [0u32; 2];
    let mut i = 0;
    for c in release {
        match c {
            b'0'..=b'9' if i < 2 => parts[i] = parts[i] * 10 + u32::from(c - b'0'),
            b'.' if i < 1 => i += 1,
            _ => break,
        }
    }
    (parts[0], parts[1]) < (major, minor)
}

/// Test-only fault injection into `move_pages`: the next move call of this thread (or
/// the one after the next few, `fail_move_after`) fails as kernels before 6.17 fail one
/// whose source spans two mappings, after unmapping the destination (`UnmapThenFail`),
/// and optionally with another mapping taking the destination's last page
/// (`UnmapOthersMapThenFail`) or all of it (`UnmapOthersFillThenFail`) before the caller
/// can react, or as a kernel from 6.17 on fails past its source checks
/// (`NewKernelUnmapThenFail`); `maps::pieces` without an answer (`pretend_no_query`);
/// and, for `overlay_is_safe`, a kernel before 6.12 on this thread
/// (`pretend_old_fixed_map`).
#[cfg(test)]
pub(crate) mod inject {
    use super::{Syscall, PAGE_SIZE};
    use std::cell::Cell;

    /// How the next `move_pages` of this thread fails.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum MoveFault {
        None,
        UnmapThenFail,
        UnmapOthersMapThenFail,
        /// Another mapping takes the whole hole: nothing in the range tells it from ours.
        UnmapOthersFillThenFail,
        /// Unmaps and fails as a kernel from 6.17 on does past its source checks
        /// (`ENOMEM` from `RLIMIT_DATA`): the restore then runs as on such a kernel.
        NewKernelUnmapThenFail,
    }

    /// What a foreign mapping's page holds.
    pub const FOREIGN: u64 = 0x5eed_f00d_dead_beef;

    std::thread_local! {
        static NEXT: Cell<MoveFault> = const { Cell::new(MoveFault::None) };
        static SKIP: Cell<u32> = const { Cell::new(0) };
        static RESTORES: Cell<u64> = const { Cell::new(0) };
        static NO_QUERY: Cell<bool> = const { Cell::new(false) };
        static FOREIGN_AT: Cell<usize> = const { Cell::new(0) };
        static OLD_KERNEL: Cell<bool> = const { Cell::new(false) };
        static OLD_FIXED_MAP: Cell<bool> = const { Cell::new(false) };
        static ONE_MAPPING_MOVES: Cell<bool> = const { Cell::new(false) };
        static TRIED: Cell<u64> = const { Cell::new(0) };
        static REFUSED: Cell<u64> = const { Cell::new(0) };
    }

    /// Makes this thread's moves behave as on a kernel before 6.17 (`pretend_old_kernel(true)`):
    /// a move whose source spans more than one mapping (read from `/proc/self/maps`)
    /// unmaps its destination and fails with `EFAULT` (counted in `refused_moves`).
    pub fn pretend_old_kernel(on: bool) {
        ONE_MAPPING_MOVES.with(|c| c.set(on));
    }

    pub(super) fn pretends_one_mapping_moves() -> bool {
        ONE_MAPPING_MOVES.with(|c| c.get())
    }

    /// `move_pages` calls this thread made.
    pub fn moves_tried() -> u64 {
        TRIED.with(|c| c.get())
    }

    /// Moves of this thread that `pretend_old_kernel` made fail.
    pub fn refused_moves() -> u64 {
        REFUSED.with(|c| c.get())
    }

    /// Whether `[from, from + len)` lies in more than one mapping (or not all mapped).
    fn spans_mappings(from: usize, len: usize) -> bool {
        !matches!(super::maps::listed(from, len), super::maps::Layout::Known(p) if p.count() == 1)
    }

    /// Makes `overlay_is_safe` answer, on this thread, as on a kernel before 6.12.
    pub fn pretend_old_fixed_map(on: bool) {
        OLD_FIXED_MAP.with(|c| c.set(on));
    }

    pub(super) fn pretends_old_fixed_map() -> bool {
        OLD_FIXED_MAP.with(|c| c.get())
    }

    /// Whether the failure just applied stands for a kernel before 6.17 (asked once,
    /// by the restore that follows it).
    pub(super) fn pretends_old_kernel() -> bool {
        OLD_KERNEL.with(|c| c.replace(false))
    }

    /// Destinations this thread's failed moves mapped again (`restore_destination`).
    pub fn restores() -> u64 {
        RESTORES.with(|c| c.get())
    }

    pub(in crate::os) fn count_restore() {
        RESTORES.with(|c| c.set(c.get() + 1));
    }

    /// Arms the fault for this thread's next move.
    pub fn fail_next_move(fault: MoveFault) {
        fail_move_after(0, fault);
    }

    /// Arms the fault for this thread's move call after the next `calls` ones (each
    /// mapping of a source is one call: `move_pages`).
    pub fn fail_move_after(calls: u32, fault: MoveFault) {
        SKIP.with(|c| c.set(calls));
        NEXT.with(|c| c.set(fault));
    }

    /// Makes `maps::pieces` answer `Unknown` on this thread, as on a kernel without
    /// `PROCMAP_QUERY` (before 6.11) or without `/proc`.
    pub fn pretend_no_query(on: bool) {
        NO_QUERY.with(|c| c.set(on));
    }

    pub(in crate::os) fn pretends_no_query() -> bool {
        NO_QUERY.with(|c| c.get())
    }

    /// The page the last `UnmapOthersMapThenFail` mapped (0 if none).
    pub fn foreign_page() -> usize {
        FOREIGN_AT.with(|c| c.get())
    }

    /// Applies the armed fault, if any, or the old kernel's refusal of a source that spans
    /// mappings (`pretend_old_kernel`), to a move of `[from, from + len)` to `[to, to + len)`.
    pub(super) fn apply(from: usize, to: usize, len: usize) -> Option<super::OsError> {
        TRIED.with(|c| c.set(c.get() + 1));
        let mut fault = match SKIP.with(|c| c.get()) {
            0 => NEXT.with(|c| c.replace(MoveFault::None)),
            n => {
                SKIP.with(|c| c.set(n - 1));
                MoveFault::None
            }
        };
        if fault == MoveFault::None && pretends_one_mapping_moves() && spans_mappings(from, len) {
            REFUSED.with(|c| c.set(c.get() + 1));
            fault = MoveFault::UnmapThenFail;
        }
        if fault == MoveFault::None {
            return None;
        }
        OLD_KERNEL.with(|c| c.set(fault != MoveFault::NewKernelUnmapThenFail));
        // SAFETY: the destination is ours (move_pages' contract): the old kernel's
        // unmap, then another mapping in the hole's last page or in all of it.
        unsafe {
            assert_eq!(libc::munmap(to as *mut libc::c_void, len), 0);
            let foreign = match fault {
                MoveFault::UnmapOthersMapThenFail => Some((to + len - PAGE_SIZE, PAGE_SIZE)),
                MoveFault::UnmapOthersFillThenFail => Some((to, len)),
                _ => None,
            };
            if let Some((at, size)) = foreign {
                let p = libc::mmap(
                    at as *mut libc::c_void,
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                );
                assert_eq!(p as usize, at);
                let page = at + size - PAGE_SIZE;
                (page as *mut u64).write(FOREIGN);
                FOREIGN_AT.with(|c| c.set(page));
            }
        }
        Some(super::OsError {
            call: Syscall::Mremap,
            errno: if fault == MoveFault::NewKernelUnmapThenFail {
                libc::ENOMEM
            } else {
                libc::EFAULT
            },
        })
    }
}

/// A coarse monotonic clock in milliseconds for purge decay (vDSO, no syscall).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC_COARSE always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The CPUs online (at least 1): `sysconf(_SC_NPROCESSORS_ONLN)`, a property of the
/// machine, the same whichever thread asks. Not `sched_getaffinity(0)`, which is the
/// *calling thread's* mask: a program whose first allocating thread is pinned to one
/// CPU would size the whole process for one CPU. A process confined to fewer CPUs gets
/// more arenas than it needs, which costs nothing until a thread places in one.
pub fn cpu_count() -> usize {
    // SAFETY: sysconf has no memory arguments; glibc reads /sys (or /proc) without malloc.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// A precise monotonic clock in nanoseconds (vDSO, no syscall; about 20 ns here). Read
/// only where the caller is about to wait anyway (a contended writer lock), so its cost
/// hides in the wait, and it needs no TSC calibration to report nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes a message to stderr without allocating (used before aborting).
pub fn write_stderr(bytes: &[u8]) {
    let _errno = ErrnoGuard::save();
    // SAFETY: writing a valid buffer to fd 2; a short or failed write is acceptable here.
    unsafe { libc::write(2, bytes.as_ptr() as *const libc::c_void, bytes.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_page_size_is_named_in_the_message() {
        assert!(page_size_message(PAGE_SIZE).is_none());
        for (size, text) in [
            (16384, "is 16384 bytes"),
            (65536, "is 65536 bytes"),
            (0, "is 0 bytes"),
        ] {
            let (line, len) = page_size_message(size).expect("rejected");
            let line = core::str::from_utf8(&line[..len]).unwrap();
            assert!(
                line.starts_with("rangealloc: fatal: ") && line.contains(text),
                "{line}"
            );
            assert!(line.ends_with("4096-byte pages (Linux x86_64)\n"), "{line}");
        }
        let (_, len) = page_size_message(usize::MAX).expect("rejected");
        assert!(len < PAGE_SIZE_MESSAGE_LEN);
    }

    #[test]
    fn reserve_is_aligned_usable_and_counted() {
        assert!(init_check());
        let before = syscall_counts();
        let align = 1 << 22;
        let addr = reserve(8 * PAGE_SIZE, align).unwrap();
        assert_eq!(addr % align, 0);
        // SAFETY: freshly reserved, writable memory.
        unsafe {
            let p = addr as *mut u8;
            assert_eq!(*p, 0);
            p.write(7);
            purge(addr, PAGE_SIZE, PurgeMode::DontNeed).unwrap();
            assert_eq!(*p, 0, "DONTNEED must zero the page");
            release(addr, 8 * PAGE_SIZE).unwrap();
        }
        let after = syscall_counts();
        assert!(after.get(Syscall::Mmap) > before.get(Syscall::Mmap));
        assert!(after.get(Syscall::MadviseDontNeed) > before.get(Syscall::MadviseDontNeed));
    }

    #[test]
    fn the_kernel_thp_mode_is_the_bracketed_word() {
        assert_eq!(
            parse_thp_mode(b"always [madvise] never\n"),
            KernelThp::Madvise
        );
        assert_eq!(
            parse_thp_mode(b"[always] madvise never\n"),
            KernelThp::Always
        );
        assert_eq!(
            parse_thp_mode(b"always madvise [never]\n"),
            KernelThp::Never
        );
        assert_eq!(parse_thp_mode(b""), KernelThp::Never);
        assert_eq!(parse_thp_mode(b"[madvise"), KernelThp::Never);
        // Whatever this kernel says, reading it works and allocates nothing.
        let _ = kernel_thp();
    }

    #[test]
    fn errno_survives_internal_calls() {
        set_errno(libc::EAGAIN);
        let addr = reserve(PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: our reservation, unused.
        unsafe { release(addr, PAGE_SIZE).unwrap() };
        assert_eq!(errno(), libc::EAGAIN);
    }

    #[test]
    fn failures_are_typed() {
        // SAFETY: an unaligned address makes madvise fail with EINVAL and touches nothing.
        let err = unsafe { purge(1, PAGE_SIZE, PurgeMode::Free) }.unwrap_err();
        assert_eq!(err.call, Syscall::MadviseFree);
        assert_eq!(err.errno, libc::EINVAL);
    }

    #[test]
    fn guard_pages_fault_free_and_reverse() {
        let addr = reserve(2 * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: our reservation, unused.
        unsafe {
            guard_install(addr, PAGE_SIZE).unwrap();
            guard_remove(addr, PAGE_SIZE).unwrap();
            (addr as *mut u8).write(1);
            release(addr, 2 * PAGE_SIZE).unwrap();
        }
    }

    /// A userfaultfd of this process (`UFFD_USER_MODE_ONLY`), or `None` where the
    /// kernel or its settings refuse one (the test using it then says so and passes).
    fn userfaultfd() -> Option<libc::c_int> {
        // SAFETY: plain syscalls on our own descriptor and structures.
        unsafe {
            let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1) as libc::c_int;
            if fd < 0 {
                return None;
            }
            let mut api = [0u64; 3]; // struct uffdio_api: api, features, ioctls
            api[0] = 0xaa; // UFFD_API
                           // UFFDIO_API: _IOWR(0xaa, 0x3f, struct uffdio_api)
            if libc::ioctl(fd, 0xc018_aa3f, api.as_mut_ptr()) != 0 {
                libc::close(fd);
                return None;
            }
            Some(fd)
        }
    }

    /// Review12b F1 on this kernel: a source of two mappings, the second registered with
    /// a userfaultfd (write-protect mode) by the program. From 6.17 one `mremap` over
    /// both moves the first and then fails with `EFAULT`, so a copy from the source
    /// would read zeros in front (`bench/probe/uffd_mremap_multi_vma.c`); moved one
    /// mapping at a time, each moves whole.
    #[test]
    fn a_source_of_two_mappings_one_registered_moves_whole() {
        const PAGES: usize = 64;
        let Some(uffd) = userfaultfd() else {
            eprintln!("skipped: no userfaultfd here");
            return;
        };
        let addr = reserve(PAGES * PAGE_SIZE, PAGE_SIZE).unwrap();
        let (obj, len, to) = (addr, 16 * PAGE_SIZE, addr + 24 * PAGE_SIZE);
        // SAFETY: our reservation; the moved ranges do not overlap.
        unsafe {
            // The object's first half arrives by a move: a mapping of its own.
            move_pages(addr + 40 * PAGE_SIZE, obj, 8 * PAGE_SIZE, false).unwrap();
            for page in 0..16 {
                ((obj + page * PAGE_SIZE) as *mut u64).write(page as u64 + 1);
            }
            // struct uffdio_register: range { start, len }, mode, ioctls.
            let mut reg = [(obj + 8 * PAGE_SIZE) as u64, 8 * PAGE_SIZE as u64, 2, 0];
            // UFFDIO_REGISTER: _IOWR(0xaa, 0x00, struct uffdio_register); mode 2: WP.
            if libc::ioctl(uffd, 0xc020_aa00, reg.as_mut_ptr()) != 0 {
                eprintln!("skipped: userfaultfd write-protect registration refused");
                libc::close(uffd);
                return;
            }
            assert_eq!(
                maps::pieces(obj, len).known().map(|p| p.count()),
                Some(2),
                "two mappings"
            );
            assert_eq!(move_pages(obj, to, len, true), Ok(()), "not moved");
            for page in 0..16 {
                let word = ((to + page * PAGE_SIZE) as *const u64).read();
                assert_eq!(word, page as u64 + 1, "page {page} lost in the move");
            }
            libc::close(uffd);
            release(addr, PAGES * PAGE_SIZE).unwrap();
        }
    }

    /// `maps::pieces` lists the mappings a range spans, in order, and none for a range
    /// with a hole or one past `MOVE_PIECES` mappings.
    #[test]
    fn pieces_lists_the_mappings_of_a_range() {
        const PAGES: usize = 64;
        let addr = reserve(PAGES * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: our reservation; only its own pages are protected or unmapped.
        unsafe {
            let whole = maps::pieces(addr, PAGES * PAGE_SIZE)
                .known()
                .expect("this kernel lists mappings");
            assert_eq!(whole.iter().collect::<Vec<_>>(), [(0, PAGES * PAGE_SIZE)]);
            protect(addr + 8 * PAGE_SIZE, 4 * PAGE_SIZE, libc::PROT_READ).unwrap();
            let split = maps::pieces(addr + PAGE_SIZE, 15 * PAGE_SIZE)
                .known()
                .unwrap();
            assert_eq!(
                split.iter().collect::<Vec<_>>(),
                [
                    (0, 7 * PAGE_SIZE),
                    (7 * PAGE_SIZE, 4 * PAGE_SIZE),
                    (11 * PAGE_SIZE, 4 * PAGE_SIZE)
                ]
            );
            for i in 0..maps::MOVE_PIECES {
                protect(addr + (16 + 2 * i) * PAGE_SIZE, PAGE_SIZE, libc::PROT_READ).unwrap();
            }
            assert!(matches!(
                maps::pieces(addr + 16 * PAGE_SIZE, 2 * maps::MOVE_PIECES * PAGE_SIZE),
                maps::Layout::Several
            ));
            unmap_raw(addr + 60 * PAGE_SIZE, PAGE_SIZE).unwrap();
            assert!(
                matches!(
                    maps::pieces(addr + 56 * PAGE_SIZE, 8 * PAGE_SIZE),
                    maps::Layout::Several
                ),
                "a hole"
            );
            release(addr, 60 * PAGE_SIZE).unwrap();
            release(addr + 61 * PAGE_SIZE, 3 * PAGE_SIZE).unwrap();
        }
    }

    /// What `maps` relies on (kernel 6.18, `bench/probe/vma_merge.c`): faulted pages
    /// moved inside a reservation stay a mapping of their own (two mappings start
    /// inside the reservation: the moved one and the rest after it), and `overlay` over
    /// them merges them back (none does), reading as zero. Counted by starts strictly
    /// inside: the reservation itself may merge with a neighbour mapped beside it.
    #[test]
    fn an_overlay_merges_a_moved_in_mapping_back() {
        const PAGES: usize = 64;
        let addr = reserve(PAGES * PAGE_SIZE, PAGE_SIZE).unwrap();
        let inside = |a: usize| a > addr && a < addr + PAGES * PAGE_SIZE;
        // SAFETY: our reservation; the moved ranges do not overlap.
        unsafe {
            for page in 0..PAGES {
                ((addr + page * PAGE_SIZE) as *mut u64).write(page as u64 + 1);
            }
            assert_eq!(maps::count_mappings(inside), Some(0));
            let (from, to) = (addr + 8 * PAGE_SIZE, addr + 32 * PAGE_SIZE);
            move_pages(from, to, 8 * PAGE_SIZE, false).unwrap();
            assert_eq!((to as *const u64).read(), 9, "content moved");
            assert_eq!(maps::count_mappings(inside), Some(2), "moved pages split");
            overlay(to, 8 * PAGE_SIZE).unwrap();
            assert_eq!((to as *const u64).read(), 0, "overlay reads as zero");
            assert_eq!(maps::count_mappings(inside), Some(0), "merged back");
            release(addr, PAGES * PAGE_SIZE).unwrap();
        }
    }

    #[test]
    fn move_pages_keeps_content_and_source_mapped() {
        let addr = reserve(4 * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: our reservation; the two halves do not overlap.
        unsafe {
            (addr as *mut u64).write(0xfeed);
            move_pages(addr, addr + 2 * PAGE_SIZE, 2 * PAGE_SIZE, false).unwrap();
            assert_eq!(((addr + 2 * PAGE_SIZE) as *const u64).read(), 0xfeed);
            assert_eq!((addr as *const u64).read(), 0, "source reads back empty");
            release(addr, 4 * PAGE_SIZE).unwrap();
        }
    }
}
