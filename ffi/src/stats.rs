//! The C statistics API: `rangealloc_stats_get`, `rangealloc_stats_print`,
//! `rangealloc_stats_json`, `rangealloc_purge`, and jemalloc's `malloc_stats_print`
//! answered with our report (text, or JSON with jemalloc's `J` option). Thin: it copies
//! the engine's snapshot into a C struct and writes its text or JSON report.

use core::ffi::{c_char, c_void, CStr};
use rangealloc_core as engine;
use rangealloc_core::os::Syscall;

/// Mirrors `struct rangealloc_stats` in `ffi/include/rangealloc.h` field for field.
#[repr(C)]
#[derive(Default)]
pub struct RangeallocStats {
    pub allocated: usize,
    pub active: usize,
    pub resident: usize,
    pub mapped: usize,
    pub retained: usize,
    pub metadata: usize,
    pub large_regions: usize,
    pub segment_regions: usize,
    pub free_regions: usize,
    pub dirty_bytes: usize,
    pub heaps: usize,
    pub abandoned_heaps: usize,
    pub lock_fast_success: u64,
    pub lock_abort: u64,
    pub lock_retry: u64,
    pub lock_miss: u64,
    pub lock_slow: u64,
    pub writer_acquisitions: u64,
    pub syscalls_mmap: u64,
    pub syscalls_munmap: u64,
    pub syscalls_mremap: u64,
    pub syscalls_mprotect: u64,
    pub syscalls_madvise_dontneed: u64,
    pub syscalls_madvise_free: u64,
    pub syscalls_madvise_guard: u64,
    pub purge_passes: u64,
    pub purged_bytes: u64,
    pub syscalls_madvise_hugepage: u64,
    pub reallocs_grown_in_place: u64,
    pub reallocs_moved: u64,
    pub reallocs_copied_bytes: u64,
    pub reallocs_remapped: u64,
    pub reallocs_remapped_bytes: u64,
    pub reallocs_sparse: u64,
    pub reallocs_sparse_bytes: u64,
}

/// Fills `out` with a snapshot. `size` is `sizeof(struct rangealloc_stats)` as the
/// caller was compiled with: only that many bytes are written, so a program built
/// against an older, shorter struct keeps working. Returns 0, or EINVAL for a null
/// `out`.
///
/// # Safety
/// `out` must be null or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rangealloc_stats_get(out: *mut RangeallocStats, size: usize) -> i32 {
    if out.is_null() {
        return libc::EINVAL;
    }
    let s = engine::snapshot::snapshot();
    let c = &s.syscalls;
    let snapshot = RangeallocStats {
        allocated: s.allocated,
        active: s.active,
        resident: s.resident,
        mapped: s.mapped,
        retained: s.retained,
        metadata: s.metadata,
        large_regions: s.regions.large,
        segment_regions: s.regions.segments,
        free_regions: s.regions.free,
        dirty_bytes: s.regions.dirty_bytes,
        heaps: s.heaps,
        abandoned_heaps: s.abandoned_heaps,
        lock_fast_success: s.lock.success,
        lock_abort: s.lock.abort,
        lock_retry: s.lock.retry,
        lock_miss: s.lock.miss,
        lock_slow: s.lock.slow,
        writer_acquisitions: s.lock.writer,
        syscalls_mmap: c.get(Syscall::Mmap),
        syscalls_munmap: c.get(Syscall::Munmap),
        syscalls_mremap: c.get(Syscall::Mremap),
        syscalls_mprotect: c.get(Syscall::Mprotect),
        syscalls_madvise_dontneed: c.get(Syscall::MadviseDontNeed),
        syscalls_madvise_free: c.get(Syscall::MadviseFree),
        syscalls_madvise_guard: c.get(Syscall::MadviseGuard),
        purge_passes: s.purge_passes,
        purged_bytes: s.purged_bytes,
        syscalls_madvise_hugepage: c.get(Syscall::MadviseHugePage),
        reallocs_grown_in_place: s.reallocs.grown_in_place,
        reallocs_moved: s.reallocs.moved,
        reallocs_copied_bytes: s.reallocs.copied_bytes,
        reallocs_remapped: s.reallocs.remapped,
        reallocs_remapped_bytes: s.reallocs.remapped_bytes,
        reallocs_sparse: s.reallocs.sparse,
        reallocs_sparse_bytes: s.reallocs.sparse_bytes,
    };
    let n = size.min(core::mem::size_of::<RangeallocStats>());
    // SAFETY: `out` has `size` writable bytes (caller contract); we copy at most that.
    unsafe {
        core::ptr::copy_nonoverlapping(
            &snapshot as *const RangeallocStats as *const u8,
            out as *mut u8,
            n,
        )
    };
    0
}

/// Writes the human-readable report to `stream` (a `FILE *`), or to stderr when null.
///
/// # Safety
/// `stream` must be null or a valid, writable `FILE *`.
#[no_mangle]
pub unsafe extern "C" fn rangealloc_stats_print(stream: *mut libc::FILE) {
    engine::snapshot::print(&mut |bytes: &[u8]| {
        if stream.is_null() {
            engine::os::write_stderr(bytes);
        } else {
            // SAFETY: caller contract: a valid FILE *.
            unsafe { libc::fwrite(bytes.as_ptr() as *const c_void, 1, bytes.len(), stream) };
        }
    });
}

/// Returns free memory to the OS now: every free region and the free pages of every
/// thread's heap, idle threads' included (`reclaim::purge_now`); returns the bytes purged.
#[no_mangle]
pub extern "C" fn rangealloc_purge() -> usize {
    engine::reclaim::purge_now()
}

/// Writes the statistics as one JSON object (the same keys as the Rust `Stats::to_json`)
/// into `buf`, `snprintf`-style: at most `size - 1` bytes and a NUL (nothing when `size`
/// is 0); returns the length of the whole text, so a return `>= size` means truncated.
///
/// # Safety
/// `buf` must be null with `size` 0, or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rangealloc_stats_json(buf: *mut c_char, size: usize) -> usize {
    let mut total = 0usize;
    let room = size.saturating_sub(1);
    engine::snapshot::print_json(&mut |bytes: &[u8]| {
        let start = total.min(room);
        let n = bytes.len().min(room - start);
        // SAFETY: `start + n <= room < size`: inside the caller's buffer.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>().add(start), n) };
        total += bytes.len();
    });
    if size > 0 {
        // SAFETY: `min(total, room) < size`.
        unsafe { buf.add(total.min(room)).write(0) };
    }
    total
}

/// The engine's text or JSON report writer.
type Printer = fn(&mut dyn FnMut(&[u8]));

pub type WriteCallback = unsafe extern "C" fn(*mut c_void, *const c_char);

/// jemalloc's `malloc_stats_print`: our report, through `write_cb` (NUL-terminated
/// pieces) or to stderr when it is null. With `J` among `opts` (jemalloc's JSON option)
/// the report is our statistics JSON (`rangealloc_stats_json`'s object); other option
/// letters select parts of jemalloc's own report and are ignored.
///
/// # Safety
/// `write_cb`, when given, must accept `cbopaque` and a C string; `opts` is null or a C
/// string.
#[no_mangle]
pub unsafe extern "C" fn malloc_stats_print(
    write_cb: Option<WriteCallback>,
    cbopaque: *mut c_void,
    opts: *const c_char,
) {
    // SAFETY: caller contract: a C string when not null.
    let json = !opts.is_null() && unsafe { CStr::from_ptr(opts) }.to_bytes().contains(&b'J');
    let print: Printer = if json {
        engine::snapshot::print_json
    } else {
        engine::snapshot::print
    };
    let Some(write) = write_cb else {
        print(&mut |bytes: &[u8]| engine::os::write_stderr(bytes));
        return;
    };
    print(&mut |bytes: &[u8]| {
        let mut piece = [0u8; 513];
        for chunk in bytes.chunks(piece.len() - 1) {
            piece[..chunk.len()].copy_from_slice(chunk);
            piece[chunk.len()] = 0;
            // SAFETY: caller contract; `piece` is NUL-terminated.
            unsafe { write(cbopaque, piece.as_ptr() as *const c_char) };
        }
    });
}
