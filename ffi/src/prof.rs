//! The heap profiler's C API: `rangealloc_prof_dump` (declared in `rangealloc.h`), and
//! the path handling shared with `mallctl("prof.dump")`. Calls the engine's `prof`.

use core::ffi::{c_char, c_int, CStr};
use rangealloc_core as engine;
use std::os::unix::ffi::OsStrExt;

/// Dumps to `path`, or to the `prof_dump` prefix when `path` is null.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
pub(crate) unsafe fn dump_c_path(path: *const c_char) -> Result<(), c_int> {
    if path.is_null() {
        return engine::prof::dump_to_prefix();
    }
    // SAFETY: caller contract.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    if bytes.is_empty() {
        return Err(libc::EINVAL);
    }
    engine::prof::dump(std::path::Path::new(std::ffi::OsStr::from_bytes(bytes)))
}

/// Writes a heap profile (gzip-compressed pprof `profile.proto`) to `path`, or, when
/// `path` is null, to `<prof_dump prefix>.<pid>.<seq>.heap`. Returns 0, or an errno
/// value: `ENOENT` if profiling was never on, `EINVAL` for an empty path (or a null one
/// without a prefix), else the error of creating or writing the file.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rangealloc_prof_dump(path: *const c_char) -> c_int {
    // SAFETY: caller contract.
    match unsafe { dump_c_path(path) } {
        Ok(()) => 0,
        Err(errno) => errno,
    }
}
