//! glibc's own allocator names and its introspection and tuning calls, answered by
//! rangealloc so that under `LD_PRELOAD` no block crosses between two allocators and no
//! program reads glibc's empty heap instead of ours. Also C23's sized frees.
//!
//! - `__libc_malloc` ... `__posix_memalign`: glibc exports these aliases of its
//!   allocator for code that wants "the C library's malloc" whatever is interposed;
//!   a block from them would be glibc's, and our `free` would reject it.
//! - `free_sized`, `free_aligned_sized` (C23, glibc 2.43).
//! - `malloc_trim`, `mallinfo`, `mallinfo2`, `malloc_info`, `malloc_stats`, `mallopt`:
//!   the values come from the engine's statistics, the knobs map to its settings (each
//!   mapping documented on the function and in ffi/README.md).
//!
//! Calls the malloc family in `malloc.rs`, the engine's snapshot, purge and tuning.

use crate::malloc;
use core::ffi::{c_int, c_void};
use rangealloc_core::{self as engine, tuning};

// ---------------------------------------------------------------------------------------
// glibc's internal names: the same functions under the names glibc exports them as.
// ---------------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    // SAFETY: `malloc`'s contract.
    unsafe { malloc::malloc(size) }
}

#[no_mangle]
pub unsafe extern "C" fn __libc_calloc(count: usize, size: usize) -> *mut c_void {
    // SAFETY: `calloc`'s contract.
    unsafe { malloc::calloc(count, size) }
}

#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: `realloc`'s contract.
    unsafe { malloc::realloc(p, size) }
}

#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: `free`'s contract; misuse reports name `__libc_free`.
    unsafe { crate::release(p, "__libc_free") }
}

#[no_mangle]
pub unsafe extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: `memalign`'s contract.
    unsafe { malloc::memalign(align, size) }
}

#[no_mangle]
pub unsafe extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    // SAFETY: `valloc`'s contract.
    unsafe { malloc::valloc(size) }
}

#[no_mangle]
pub unsafe extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    // SAFETY: `pvalloc`'s contract.
    unsafe { malloc::pvalloc(size) }
}

#[no_mangle]
pub unsafe extern "C" fn __posix_memalign(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    // SAFETY: `posix_memalign`'s contract.
    unsafe { malloc::posix_memalign(out, align, size) }
}

// ---------------------------------------------------------------------------------------
// C23 sized frees.
// ---------------------------------------------------------------------------------------

/// C23 `free_sized(p, size)`: `size` is the size `p` was allocated with (null: no-op).
/// A size larger than the block's usable size cannot belong to it and aborts with
/// `rangealloc: free_sized(): size larger than the usable size of the block at 0x...`.
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, size: usize) {
    if p.is_null() {
        return;
    }
    // SAFETY: C23's contract: `p` came from malloc, calloc or realloc. An alignment of
    // 1 asks no alignment check.
    unsafe { engine::free_sized_as(p.cast(), size, 1, "free_sized") }
}

/// C23 `free_aligned_sized(p, align, size)`: `p` came from `aligned_alloc(align, size)`.
/// Besides the size check of `free_sized`, a block not aligned to `align` (or an
/// `align` that is no power of two, which `aligned_alloc` rejects) is misuse.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, align: usize, size: usize) {
    if p.is_null() {
        return;
    }
    if !align.is_power_of_two() {
        engine::report_misaligned("free_aligned_sized", p.cast());
    }
    // SAFETY: C23's contract: `p` came from `aligned_alloc(align, size)`.
    unsafe { engine::free_sized_as(p.cast(), size, align, "free_aligned_sized") }
}

// ---------------------------------------------------------------------------------------
// Introspection.
// ---------------------------------------------------------------------------------------

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

/// glibc's `struct mallinfo` (the same fields as `int`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MallInfo {
    arena: c_int,
    ordblks: c_int,
    smblks: c_int,
    hblks: c_int,
    hblkhd: c_int,
    usmblks: c_int,
    fsmblks: c_int,
    uordblks: c_int,
    fordblks: c_int,
    keepcost: c_int,
}

/// The fields of `mallinfo2` from a snapshot. glibc's meanings carried over: large
/// objects are our "mmapped chunks" (`hblks`, `hblkhd`: their count and bytes, outside
/// `arena`, as glibc's mmapped chunks are); `arena` is the rest of what we hold from
/// the system (small-object pages, dirty free space, retired regions; metadata
/// excluded), `uordblks` the live small blocks at their class size and `fordblks`
/// `arena - uordblks`, so `uordblks + hblkhd` is every live byte (`stats.allocated`).
/// `ordblks` counts free regions, `keepcost` the dirty free bytes `malloc_trim` would
/// release now (the callers fold freed regions into the table first). No fastbins and no high-water mark: `smblks`, `fsmblks` and `usmblks`
/// are 0 (glibc's `usmblks` is always 0 too).
fn mallinfo_from(s: &engine::snapshot::Stats) -> MallInfo2 {
    let large = s.regions.large_bytes;
    let arena = s.resident.saturating_sub(s.metadata).saturating_sub(large);
    let uordblks = s.allocated.saturating_sub(large);
    MallInfo2 {
        arena,
        ordblks: s.regions.free,
        smblks: 0,
        hblks: s.regions.large,
        hblkhd: large,
        usmblks: 0,
        fsmblks: 0,
        uordblks,
        fordblks: arena.saturating_sub(uordblks),
        keepcost: s.regions.dirty_bytes,
    }
}

/// A snapshot with the retired regions folded into the table first, so that dirty and
/// purged free space are told apart (a freed region counts as neither until folded).
fn fresh_snapshot() -> engine::snapshot::Stats {
    engine::region::ARENAS.collect_retired();
    engine::snapshot::snapshot()
}

/// glibc 2.33's `mallinfo2`: see `mallinfo_from` for each field.
#[no_mangle]
pub extern "C" fn mallinfo2() -> MallInfo2 {
    mallinfo_from(&fresh_snapshot())
}

/// The old `mallinfo`: `mallinfo2`'s fields, each clamped to `INT_MAX` (glibc truncates
/// them, which turns 2 GiB and more into nonsense).
#[no_mangle]
pub extern "C" fn mallinfo() -> MallInfo {
    let m = mallinfo2();
    let c = |v: usize| c_int::try_from(v).unwrap_or(c_int::MAX);
    MallInfo {
        arena: c(m.arena),
        ordblks: c(m.ordblks),
        smblks: c(m.smblks),
        hblks: c(m.hblks),
        hblkhd: c(m.hblkhd),
        usmblks: c(m.usmblks),
        fsmblks: c(m.fsmblks),
        uordblks: c(m.uordblks),
        fordblks: c(m.fordblks),
        keepcost: c(m.keepcost),
    }
}

/// `malloc_trim(pad)`: returns every free region's pages to the OS now (as
/// `rangealloc_purge`); 1 if any memory was released, else 0. `pad` (how much of the
/// heap top glibc keeps) has no meaning here and is ignored.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    (crate::stats::rangealloc_purge() > 0) as c_int
}

/// `malloc_stats()`: rangealloc's text report on stderr (glibc prints its own there).
#[no_mangle]
pub extern "C" fn malloc_stats() {
    engine::snapshot::print_to_stderr();
}

/// A `fmt::Write` onto a C `FILE *`, without allocating.
struct FileWriter(*mut libc::FILE);

impl core::fmt::Write for FileWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // SAFETY: `self.0` is the caller's valid FILE * (malloc_info's contract).
        let n = unsafe { libc::fwrite(s.as_ptr().cast(), 1, s.len(), self.0) };
        if n == s.len() {
            Ok(())
        } else {
            Err(core::fmt::Error)
        }
    }
}

/// `malloc_info(options, stream)`: an XML report in glibc's shape (one `<heap nr="0">`,
/// glibc's element names). `options` must be 0, else `EINVAL` and -1, as glibc. Values:
/// `<sizes>` is empty (we keep no per-bin free-chunk lists); "fast" totals are 0;
/// "rest" is the free regions (count) and `mallinfo2`'s `fordblks` (size); "mmap" is
/// the large objects; `system current` and `max` are the bytes held from the system
/// (`arena + hblkhd`; no high-water mark is kept, so `max` repeats `current`);
/// `aspace total` and `mprotect` are the reserved address space (`stats.mapped`).
///
/// # Safety
/// `stream` must be a valid, writable `FILE *`.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 {
        engine::os::set_errno(libc::EINVAL);
        return -1;
    }
    if stream.is_null() {
        engine::os::set_errno(libc::EINVAL);
        return -1;
    }
    let s = fresh_snapshot();
    let m = mallinfo_from(&s);
    match write_malloc_info(&mut FileWriter(stream), &s, &m) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

fn write_malloc_info(
    w: &mut impl core::fmt::Write,
    s: &engine::snapshot::Stats,
    m: &MallInfo2,
) -> core::fmt::Result {
    let system = m.arena + m.hblkhd;
    let totals = |w: &mut dyn core::fmt::Write| -> core::fmt::Result {
        writeln!(w, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
        writeln!(
            w,
            "<total type=\"rest\" count=\"{}\" size=\"{}\"/>",
            m.ordblks, m.fordblks
        )
    };
    let system_lines = |w: &mut dyn core::fmt::Write| -> core::fmt::Result {
        writeln!(w, "<system type=\"current\" size=\"{system}\"/>")?;
        writeln!(w, "<system type=\"max\" size=\"{system}\"/>")?;
        writeln!(w, "<aspace type=\"total\" size=\"{}\"/>", s.mapped)?;
        writeln!(w, "<aspace type=\"mprotect\" size=\"{}\"/>", s.mapped)
    };
    writeln!(w, "<malloc version=\"1\">")?;
    writeln!(w, "<heap nr=\"0\">")?;
    writeln!(w, "<sizes>")?;
    writeln!(w, "</sizes>")?;
    totals(w)?;
    system_lines(w)?;
    writeln!(w, "</heap>")?;
    totals(w)?;
    writeln!(
        w,
        "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>",
        m.hblks, m.hblkhd
    )?;
    system_lines(w)?;
    writeln!(w, "</malloc>")
}

// ---------------------------------------------------------------------------------------
// mallopt: glibc's parameter numbers (malloc.h).
// ---------------------------------------------------------------------------------------

const M_MXFAST: c_int = 1;
const M_NLBLKS: c_int = 2;
const M_GRAIN: c_int = 3;
const M_KEEP: c_int = 4;
const M_TRIM_THRESHOLD: c_int = -1;
const M_TOP_PAD: c_int = -2;
const M_MMAP_THRESHOLD: c_int = -3;
const M_MMAP_MAX: c_int = -4;
const M_CHECK_ACTION: c_int = -5;
const M_PERTURB: c_int = -6;
const M_ARENA_TEST: c_int = -7;
const M_ARENA_MAX: c_int = -8;

/// glibc's largest `M_MMAP_THRESHOLD` on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`, 32 MiB):
/// larger values fail there, so they fail here too.
const MMAP_THRESHOLD_MAX: usize = 32 << 20;

/// `mallopt(param, value)`, returning 1 on success and 0 on error as glibc:
/// - `M_TRIM_THRESHOLD`: the fixed part of the dirty budget (free dirty bytes kept,
///   beside a quarter of the live large bytes, before the excess is purged at once);
///   glibc trims its heap top past this many free bytes. A negative
///   value is a huge one (glibc converts to `unsigned long`): no budget purge.
/// - `M_MMAP_THRESHOLD`: accepted without effect for 0 to 32 MiB, else 0 (glibc's
///   bound). glibc unmaps chunks of that size at `free`; rangealloc keeps freed large
///   objects dirty for reuse within the dirty budget instead (issue 14 removed the
///   purge-at-free threshold this could have set).
/// - `M_MXFAST`, `M_NLBLKS`, `M_GRAIN`, `M_KEEP`, `M_TOP_PAD`, `M_MMAP_MAX`,
///   `M_CHECK_ACTION`, `M_PERTURB`, `M_ARENA_TEST`, `M_ARENA_MAX`, and numbers glibc
///   does not know: accepted without effect (no fastbins, top pad, mmapped chunks or
///   arenas to tune; misuse always aborts), returning 1 as glibc does.
#[no_mangle]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    match param {
        M_TRIM_THRESHOLD => {
            let bytes = usize::try_from(value).unwrap_or(usize::MAX);
            tuning::set_dirty_budget(bytes);
            1
        }
        M_MMAP_THRESHOLD => match usize::try_from(value) {
            Ok(bytes) if bytes <= MMAP_THRESHOLD_MAX => 1,
            _ => 0,
        },
        M_MXFAST | M_NLBLKS | M_GRAIN | M_KEEP | M_TOP_PAD | M_MMAP_MAX | M_CHECK_ACTION
        | M_PERTURB | M_ARENA_TEST | M_ARENA_MAX => 1,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mallinfo_fields_add_up() {
        let mut s = engine::snapshot::snapshot();
        s.allocated = 5000 + (1 << 20);
        s.regions.large_bytes = 1 << 20;
        s.regions.large = 1;
        s.metadata = 100;
        s.resident = 100 + (1 << 20) + 65536;
        let m = mallinfo_from(&s);
        assert_eq!(m.uordblks + m.hblkhd, s.allocated);
        assert_eq!(m.arena, 65536);
        assert_eq!(m.uordblks + m.fordblks, m.arena);
        assert_eq!(m.hblks, 1);
    }
}
