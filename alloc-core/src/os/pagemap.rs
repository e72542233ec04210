//! Which pages of a range hold bytes, as the kernel's page tables say (`PAGEMAP_SCAN`,
//! Linux 6.7: an ioctl on `/proc/self/pagemap`), and the sparse copy built on it; owns
//! the switch that remembers a kernel without the scan; calls `libc`, `maps` (its
//! `/proc` descriptor) and `os` (errno, guard-marker support). `large`
//! copies a moving object this way instead of moving its pages with `mremap`
//! (`copy_sparse`).
//!
//! A page holds bytes when it is present (and not the shared zero page) or swapped
//! out; every other page of an anonymous private mapping reads zero. A copy of only
//! those pages gives the destination the source's bytes without reading an untouched
//! source page or faulting an untouched destination page, and without an `mmap_lock`
//! writer: the scan takes `mmap_lock` for read (a reader waits only behind a writer),
//! where a move's `mremap` takes it for write and splits the destination's mapping.
//! Measured on this kernel (C probe): a scan of 2 MiB with a few runs costs about 1 us,
//! the `open` and `close` of the descriptor another 1 us.
//!
//! The descriptor is opened per copy (`maps::ProcFd`, as `maps::listed` opens
//! `/proc/self/maps`): one kept open could be closed by the program, and its number
//! reused for a file of the program's, which a scan would then misread (a wrong answer
//! here loses bytes).

use core::sync::atomic::{AtomicBool, Ordering};

/// Runs of pages holding bytes that one scan reports, per side; a range with more is
/// not sparse (the caller moves its pages instead). A stack array: nothing allocated.
pub const SCAN_RUNS: usize = 32;

/// Where the scan reads the page tables.
const PAGEMAP_PATH: &core::ffi::CStr = c"/proc/self/pagemap";

/// `struct page_region` of `<linux/fs.h>` (Linux 6.7).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` of `<linux/fs.h>` (Linux 6.7).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
    | ((core::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 16;

/// Page categories of the scan.
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// The shared zero page (a read of an untouched page): present, but reads zero.
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// A guard marker (`MADV_GUARD_INSTALL`, 6.13; reported by scans from 6.15): reads
/// fault. Asked for where the kernel knows it (`NO_GUARD_BIT`); a range with one is not
/// copied.
const PAGE_IS_GUARD: u64 = 1 << 8;

/// Set once the kernel refused `PAGEMAP_SCAN` as unknown (`ENOTTY`, `EINVAL`: before
/// 6.7) or a sandbox refused the calls (`EPERM`, `EACCES`, `ENOSYS`), a property of
/// the kernel or the process: not asked again.
static NO_SCAN: AtomicBool = AtomicBool::new(false);

/// Set once the kernel refused `PAGE_IS_GUARD` as an unknown category (before 6.15).
/// Where guard markers exist all the same (6.13 and 6.14, `guard_markers_exist`), a
/// scan reports one as swapped, a page holding bytes that a copy would read and fault
/// on, so scans there answer nothing (`Sparse::Unknown`); before 6.13 they go on
/// without the category.
static NO_GUARD_BIT: AtomicBool = AtomicBool::new(false);

/// What `copy_sparse` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparse {
    /// The destination holds the source's bytes, and the destination's pages that
    /// held other bytes were zeroed.
    Copied {
        /// The bytes copied (whole pages).
        bytes: usize,
    },
    /// Nothing was written: the source has more than the allowed pages holding bytes,
    /// or a guard marker.
    Dense,
    /// The destination has a guard marker, where no write may go (it may hold zeroed
    /// pages): its pages must be replaced, not written.
    GuardedDestination,
    /// Nothing was written: the kernel could not say (no `/proc`, no `PAGEMAP_SCAN`
    /// before 6.7, no descriptor left, a sandbox refused the call).
    Unknown,
}

/// One scan's answer: runs of pages present or swapped, as the kernel wrote them.
struct Batch {
    regions: [PageRegion; SCAN_RUNS],
    count: usize,
    /// Where the walk stopped: the range's end when it was scanned whole.
    walk_end: usize,
}

impl Batch {
    /// `(addr, len)` of each run that holds bytes (zero-page runs left out).
    fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.regions[..self.count]
            .iter()
            .filter(|r| r.categories & PAGE_IS_PFNZERO == 0)
            .map(|r| (r.start as usize, (r.end - r.start) as usize))
    }

    /// Pages present or swapped in this batch (zero-page runs included).
    fn pages(&self) -> usize {
        self.regions[..self.count]
            .iter()
            .map(|r| (r.end - r.start) as usize / super::PAGE_SIZE)
            .sum()
    }
}

/// Scans `[addr, end)` on `fd` for up to `SCAN_RUNS` runs and, with `max_pages`
/// nonzero, up to `max_pages` pages present or swapped: the walk stops at whichever
/// runs out first (`Batch::walk_end`). `Unknown` when the call failed.
fn scan(fd: libc::c_int, addr: usize, end: usize, max_pages: usize) -> Result<Batch, Sparse> {
    let mut batch = Batch {
        regions: [PageRegion::default(); SCAN_RUNS],
        count: 0,
        walk_end: addr,
    };
    let (mut arg, found);
    loop {
        let guard = if NO_GUARD_BIT.load(Ordering::Relaxed) {
            if super::guard_markers_exist() {
                return Err(Sparse::Unknown); // 6.13, 6.14: markers the scan cannot name
            }
            0
        } else {
            PAGE_IS_GUARD
        };
        arg = PmScanArg {
            size: core::mem::size_of::<PmScanArg>() as u64,
            start: addr as u64,
            end: end as u64,
            vec: batch.regions.as_mut_ptr() as u64,
            vec_len: SCAN_RUNS as u64,
            max_pages: max_pages as u64,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | guard,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | guard,
            ..PmScanArg::default()
        };
        // SAFETY: `vec` points at `SCAN_RUNS` writable `page_region`s that live
        // through the call; no flag is set.
        let errno = match unsafe { scan_call(fd, &mut arg) } {
            Ok(runs) => {
                found = runs;
                break;
            }
            Err(errno) => errno,
        };
        match errno {
            libc::EINVAL if guard != 0 => NO_GUARD_BIT.store(true, Ordering::Relaxed),
            libc::ENOTTY | libc::EINVAL | libc::EPERM | libc::EACCES | libc::ENOSYS => {
                NO_SCAN.store(true, Ordering::Relaxed); // no such scan here
                return Err(Sparse::Unknown);
            }
            _ => return Err(Sparse::Unknown),
        }
    }
    let walk_end = arg.walk_end as usize;
    if found > SCAN_RUNS || walk_end < addr || walk_end > end {
        return Err(Sparse::Unknown); // not an answer this code understands
    }
    batch.count = found;
    batch.walk_end = walk_end;
    if batch.regions[..batch.count]
        .iter()
        .any(|r| r.categories & PAGE_IS_GUARD != 0)
    {
        return Err(Sparse::Dense); // a read there would fault: the caller moves the pages
    }
    Ok(batch)
}

/// One `PAGEMAP_SCAN` call on `fd` (our own `/proc/self/pagemap`): the runs it wrote,
/// or the `errno` it failed with.
///
/// # Safety
/// `arg.vec` points at `arg.vec_len` writable `page_region`s that live through the
/// call, and `arg.flags` asks the kernel to change no page.
unsafe fn scan_call(fd: libc::c_int, arg: &mut PmScanArg) -> Result<usize, i32> {
    // SAFETY: a valid `pm_scan_arg` of the size it states (the caller's contract for
    // its vector and flags).
    let found = unsafe { libc::ioctl(fd, PAGEMAP_SCAN as _, arg as *mut PmScanArg) };
    if found < 0 {
        Err(super::errno())
    } else {
        Ok(found as usize)
    }
}

/// Calls `each(addr, len)` for every run of pages holding bytes in `[addr, addr +
/// len)`, in address order, scanning batch after batch; the first batch may be given
/// (`first`, scanned from `addr`).
fn each_run(
    fd: libc::c_int,
    addr: usize,
    len: usize,
    first: Option<&Batch>,
    mut each: impl FnMut(usize, usize),
) -> Result<(), Sparse> {
    let end = addr + len;
    let mut scanned;
    let (mut batch, mut from) = match first {
        Some(b) => (b, addr),
        None => {
            scanned = scan(fd, addr, end, 0)?;
            (&scanned, addr)
        }
    };
    loop {
        for (at, n) in batch.runs() {
            each(at, n);
        }
        if batch.walk_end == end {
            return Ok(());
        }
        if batch.walk_end == from {
            return Err(Sparse::Unknown); // no progress: not an answer we understand
        }
        from = batch.walk_end;
        scanned = scan(fd, from, end, 0)?;
        batch = &scanned;
    }
}

/// An open `/proc/self/pagemap`, for the scans of one move; closed on drop, which
/// also restores the caller's `errno` (fields drop in order: the descriptor first).
pub struct Scanner {
    file: super::maps::ProcFd,
    _errno: super::ErrnoGuard,
}

/// A source range counted sparse (`Scanner::count`), with its first scan.
pub struct Source {
    first: Batch,
    addr: usize,
    len: usize,
}

impl Scanner {
    /// Opens the descriptor: `Unknown` where the kernel cannot scan (no `/proc`, no
    /// descriptor left, no `PAGEMAP_SCAN` as found before).
    pub fn open() -> Result<Scanner, Sparse> {
        if NO_SCAN.load(Ordering::Relaxed) {
            return Err(Sparse::Unknown);
        }
        let _errno = super::ErrnoGuard::save();
        let file = super::maps::ProcFd::open(PAGEMAP_PATH).ok_or(Sparse::Unknown)?;
        Ok(Scanner { file, _errno })
    }

    /// Counts the pages present or swapped in `[src, src + len)` (page-aligned), up to
    /// `max_pages`: `Dense` past it, without looking further. Usually one scan, which
    /// the copy reuses.
    pub fn count(&self, src: usize, len: usize, max_pages: usize) -> Result<Source, Sparse> {
        let end = src + len;
        let first = scan(self.file.fd(), src, end, max_pages + 1)?;
        let (mut pages, mut at) = (first.pages(), first.walk_end);
        while pages <= max_pages && at < end {
            // The runs ran out first: on from where the walk stopped.
            let more = scan(self.file.fd(), at, end, max_pages + 1 - pages)?;
            if more.walk_end == at {
                return Err(Sparse::Unknown); // no progress: not an answer we understand
            }
            pages += more.pages();
            at = more.walk_end;
        }
        if pages > max_pages {
            return Err(Sparse::Dense);
        }
        Ok(Source {
            first,
            addr: src,
            len,
        })
    }

    /// Gives `[dst, dst + source.len)` the bytes of the counted source by writing only
    /// the pages that hold bytes on either side: each source page holding bytes is
    /// copied, each destination page holding other bytes where the source reads zero
    /// is zeroed, and every page absent on both sides is left alone (it reads zero on
    /// both). Returns the bytes copied. On `Err` the destination holds part of it:
    /// `Unknown` (a scan failed part-way), the caller copies the whole;
    /// `GuardedDestination` (a guard marker in the destination, where no write may go),
    /// it moves the pages.
    ///
    /// # Safety
    /// Both ranges are page-aligned, `source.len` bytes, readable and writable,
    /// anonymous private memory of the caller's that nothing else reads or writes
    /// meanwhile, and distinct; the source is unchanged since it was counted.
    pub unsafe fn copy(&self, source: &Source, dst: usize) -> Result<usize, Sparse> {
        let (src, len) = (source.addr, source.len);
        // Stale bytes first (a reused destination), then the source's over them.
        each_run(self.file.fd(), dst, len, None, |at, n| {
            // SAFETY: within the destination (the caller's contract).
            unsafe { core::ptr::write_bytes(at as *mut u8, 0, n) };
        })
        .map_err(|e| match e {
            Sparse::Dense => Sparse::GuardedDestination,
            other => other,
        })?;
        let mut bytes = 0;
        let whole = (source.first.walk_end == src + len).then_some(&source.first);
        each_run(self.file.fd(), src, len, whole, |at, n| {
            // SAFETY: within both ranges, which are distinct (the caller's contract).
            unsafe {
                core::ptr::copy_nonoverlapping(at as *const u8, (at - src + dst) as *mut u8, n)
            };
            bytes += n;
        })?;
        Ok(bytes)
    }
}

/// `Scanner::count` and `Scanner::copy` in one: gives `[dst, dst + len)` the bytes of
/// `[src, src + len)`, writing only the pages that hold bytes, or does nothing
/// (`Dense`, `Unknown`) when more than `max_pages` source pages are present or
/// swapped, or the kernel cannot say (where a scan fails part-way, the whole range is
/// copied: the outcome is still `Copied`), or the source has a guard marker; or
/// `GuardedDestination` when the destination has one (it may then hold zeroed pages).
/// Preserves `errno`; allocates nothing.
///
/// # Safety
/// As `Scanner::copy`.
pub unsafe fn copy_sparse(src: usize, dst: usize, len: usize, max_pages: usize) -> Sparse {
    let scanner = match Scanner::open() {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let source = match scanner.count(src, len, max_pages) {
        Ok(source) => source,
        Err(outcome) => return outcome,
    };
    // SAFETY: forwarded contract.
    match unsafe { scanner.copy(&source, dst) } {
        Ok(bytes) => Sparse::Copied { bytes },
        // A guard marker in the destination (the source's were counted): a plain copy
        // would fault there too.
        Err(Sparse::GuardedDestination) => Sparse::GuardedDestination,
        Err(_) => {
            // SAFETY: forwarded contract.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
            Sparse::Copied { bytes: len }
        }
    }
}

/// How many pages of `[addr, addr + len)` (page-aligned) hold bytes of their own:
/// present and not the shared zero page, or swapped out (`large::prefault` asks, of a
/// zero-filled object at its free, how much of it the program wrote). `None` where the
/// kernel cannot say, or the range has a guard marker.
pub fn written_pages(addr: usize, len: usize) -> Option<usize> {
    let scanner = Scanner::open().ok()?;
    let mut pages = 0;
    each_run(scanner.file.fd(), addr, len, None, |_, n| {
        pages += n / super::PAGE_SIZE
    })
    .ok()?;
    Some(pages)
}

/// Whether `[addr, addr + len)` (page-aligned) holds a guard marker, which a copy
/// reading it would fault on: `Some(false)` where none can exist (a kernel without
/// `MADV_GUARD_INSTALL`) or one scan of the whole range found none, `None` where the
/// kernel cannot say (a failed scan; 6.13 and 6.14, whose scans do not report
/// markers). The caller then moves the pages instead of copying them.
pub fn guarded(addr: usize, len: usize) -> Option<bool> {
    if !super::guard_markers_exist() {
        return Some(false);
    }
    if NO_GUARD_BIT.load(Ordering::Relaxed) {
        return None;
    }
    let scanner = Scanner::open().ok()?;
    let mut region = PageRegion::default();
    let mut arg = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        start: addr as u64,
        end: (addr + len) as u64,
        vec: &mut region as *mut PageRegion as u64,
        vec_len: 1,
        category_anyof_mask: PAGE_IS_GUARD,
        return_mask: PAGE_IS_GUARD,
        ..PmScanArg::default()
    };
    // SAFETY: `vec` points at one writable `page_region` that lives through the call;
    // no flag is set.
    match unsafe { scan_call(scanner.file.fd(), &mut arg) } {
        Ok(0) => {}
        Ok(_) => return Some(true),
        Err(errno) => {
            if errno == libc::EINVAL {
                NO_GUARD_BIT.store(true, Ordering::Relaxed); // 6.13, 6.14: no such category
            }
            return None;
        }
    }
    // With no run found the walk covers the whole range; anything else is not an
    // answer this code understands.
    (arg.walk_end as usize == addr + len).then_some(false)
}

/// Whether `guarded` can tell every range's answer here: no guard markers exist, or
/// scans name them (6.15 and later). Where it cannot (6.13, 6.14, no `PAGEMAP_SCAN`
/// answered), a dense medium object moves its pages with `mremap` (tests of lock-free
/// moves say so).
pub fn sees_guards() -> bool {
    if !super::guard_markers_exist() {
        return true;
    }
    let page = [0u8; 2 * super::PAGE_SIZE];
    let at = (page.as_ptr() as usize + super::PAGE_SIZE - 1) & !(super::PAGE_SIZE - 1);
    guarded(at, super::PAGE_SIZE).is_some()
}

/// Whether this kernel answers `PAGEMAP_SCAN` (tests that need it say so): a scan of
/// the stack page this function runs on.
pub fn scans() -> bool {
    let here = 0u8;
    let page = core::ptr::addr_of!(here) as usize & !(super::PAGE_SIZE - 1);
    Scanner::open().is_ok_and(|s| scan(s.file.fd(), page, page + super::PAGE_SIZE, 0).is_ok())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::os::PAGE_SIZE;

    /// An anonymous private mapping of `pages` pages (unmapped on drop).
    struct Map(usize, usize);

    impl Map {
        fn new(pages: usize) -> Map {
            let len = pages * PAGE_SIZE;
            // SAFETY: a fresh anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Map(p as usize, len)
        }

        fn page(&self, i: usize) -> *mut u8 {
            (self.0 + i * PAGE_SIZE) as *mut u8
        }

        /// Pages present, as `mincore` says.
        fn resident(&self) -> usize {
            let mut v = vec![0u8; self.1 / PAGE_SIZE];
            // SAFETY: our mapping; `v` has a byte per page.
            assert_eq!(
                unsafe { libc::mincore(self.0 as *mut _, self.1, v.as_mut_ptr()) },
                0
            );
            v.iter().filter(|&&b| b & 1 != 0).count()
        }
    }

    impl Drop for Map {
        fn drop(&mut self) {
            // SAFETY: our mapping.
            unsafe { libc::munmap(self.0 as *mut _, self.1) };
        }
    }

    /// The destination reads exactly the source's bytes; only the written source pages
    /// are copied, untouched pages stay absent on both sides, a page the source only
    /// read (the zero page) is not copied, and a stale destination page is zeroed.
    #[test]
    fn a_sparse_copy_writes_only_the_pages_that_hold_bytes() {
        if !scans() {
            eprintln!("no PAGEMAP_SCAN here (before Linux 6.7): skipped");
            return;
        }
        const PAGES: usize = 64;
        let (src, dst) = (Map::new(PAGES), Map::new(PAGES));
        // SAFETY: pages of our own mappings.
        unsafe {
            src.page(0).write(1);
            src.page(5).add(100).write(2);
            src.page(PAGES - 1).add(PAGE_SIZE - 1).write(3);
            let _ = src.page(9).read_volatile(); // the zero page
            dst.page(7).write(9); // stale: the source reads zero there
            dst.page(5).write(8); // stale, under a source page
        }
        let dst_before = dst.resident();
        // SAFETY: both ours, page-aligned, distinct.
        let outcome = unsafe { copy_sparse(src.0, dst.0, src.1, PAGES / 2) };
        assert_eq!(
            outcome,
            Sparse::Copied {
                bytes: 3 * PAGE_SIZE
            }
        );
        // Three copied pages, of which one was present already; page 7 stays present.
        // (Before the comparison below, which maps the zero page wherever it reads.)
        assert_eq!(dst.resident(), dst_before + 2, "destination pages faulted");
        for i in 0..PAGES {
            // SAFETY: pages of our mappings.
            let (s, d) = unsafe {
                (
                    core::slice::from_raw_parts(src.page(i), PAGE_SIZE),
                    core::slice::from_raw_parts(dst.page(i), PAGE_SIZE),
                )
            };
            assert!(s == d, "page {i} differs");
        }
    }

    /// A source with more pages holding bytes than allowed is left to the caller:
    /// nothing is written.
    #[test]
    fn a_dense_source_is_not_copied() {
        if !scans() {
            return;
        }
        const PAGES: usize = 32;
        let (src, dst) = (Map::new(PAGES), Map::new(PAGES));
        for i in 0..8 {
            // SAFETY: pages of our mapping.
            unsafe { src.page(i).write(1) };
        }
        // SAFETY: both ours, page-aligned, distinct.
        assert_eq!(
            unsafe { copy_sparse(src.0, dst.0, src.1, 7) },
            Sparse::Dense
        );
        assert_eq!(dst.resident(), 0, "written while dense");
        // SAFETY: as above.
        let copied = unsafe { copy_sparse(src.0, dst.0, src.1, 8) };
        assert_eq!(
            copied,
            Sparse::Copied {
                bytes: 8 * PAGE_SIZE
            }
        );
    }

    /// A guard marker (`MADV_GUARD_INSTALL`) in the source or the destination: a
    /// read or write there faults, so the range is left to a move of its pages.
    #[test]
    fn a_range_with_a_guard_marker_is_not_copied() {
        if !scans() {
            return;
        }
        for guarded_side in 0..2 {
            let (src, dst) = (Map::new(16), Map::new(16));
            // SAFETY: pages of our mappings.
            unsafe { src.page(0).write(1) };
            let side = if guarded_side == 0 { &src } else { &dst };
            // SAFETY: a page of our own mapping; 102 is `MADV_GUARD_INSTALL` (6.13).
            if unsafe { libc::madvise(side.page(5).cast(), PAGE_SIZE, 102) } != 0 {
                return; // no guard markers here
            }
            // SAFETY: both ours, page-aligned, distinct.
            let outcome = unsafe { copy_sparse(src.0, dst.0, src.1, 16) };
            if NO_GUARD_BIT.load(Ordering::Relaxed) {
                return; // 6.13, 6.14: markers the scan cannot report
            }
            let expected = [Sparse::Dense, Sparse::GuardedDestination][guarded_side];
            assert_eq!(outcome, expected, "guard on side {guarded_side}");
        }
    }

    /// A guard marker anywhere in a range is found, past any number of pages that
    /// hold bytes (a dense source's count stops at its bound), and a range without one
    /// reads as clear.
    #[test]
    fn a_guard_marker_past_many_pages_holding_bytes_is_found() {
        let map = Map::new(512);
        for i in 0..512 {
            // SAFETY: pages of our mapping.
            unsafe { map.page(i).write(1) };
        }
        if !scans() || !super::super::guard_markers_exist() {
            return;
        }
        assert_eq!(guarded(map.0, map.1), Some(false));
        // SAFETY: a page of our own mapping; 102 is `MADV_GUARD_INSTALL` (6.13).
        assert_eq!(
            unsafe { libc::madvise(map.page(500).cast(), PAGE_SIZE, 102) },
            0
        );
        if NO_GUARD_BIT.load(Ordering::Relaxed) {
            assert_eq!(guarded(map.0, map.1), None, "6.13: the scan cannot say");
            return;
        }
        assert_eq!(guarded(map.0, map.1), Some(true));
        assert_eq!(guarded(map.0, 500 * PAGE_SIZE), Some(false));
    }

    /// Runs past one scan's `SCAN_RUNS`, on both sides: the source's pages are counted
    /// across scans (dense by one page past the bound, found in a later scan), and a
    /// copy within the bound copies every run and zeroes every stale one.
    #[test]
    fn runs_past_one_scan_are_counted_and_copied() {
        if !scans() {
            return;
        }
        const PAGES: usize = 6 * SCAN_RUNS;
        let (src, dst) = (Map::new(PAGES), Map::new(PAGES));
        let mut written = 0;
        for i in (0..PAGES).step_by(2) {
            // SAFETY: pages of our mappings.
            unsafe {
                src.page(i).add(i).write(i as u8 | 1);
                dst.page(i + 1).write(0xee); // stale, where the source reads zero
            }
            written += 1;
        }
        // SAFETY: both ours, page-aligned, distinct.
        let dense = unsafe { copy_sparse(src.0, dst.0, src.1, written - 1) };
        assert_eq!(dense, Sparse::Dense);
        // SAFETY: as above.
        let copied = unsafe { copy_sparse(src.0, dst.0, src.1, written) };
        assert_eq!(
            copied,
            Sparse::Copied {
                bytes: written * PAGE_SIZE
            }
        );
        for i in 0..PAGES {
            // SAFETY: pages of our mappings.
            let (s, d) = unsafe {
                (
                    core::slice::from_raw_parts(src.page(i), PAGE_SIZE),
                    core::slice::from_raw_parts(dst.page(i), PAGE_SIZE),
                )
            };
            assert!(s == d, "page {i} differs");
        }
    }
}
