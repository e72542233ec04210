//! The leak report (`prof_leak=1`): at exit, the call stacks that still hold the most
//! sampled memory, as text on stderr, symbolized with `dladdr` (exported symbols; other
//! frames print as module + offset, for `addr2line`). Owns the report's format; calls
//! `os`, libc and its parent `prof` (the sample interval, the dropped samples). Runs at exit, outside allocator locks, and allocates normally.

use super::table::StackSample;
use core::fmt::Write;

/// Stacks printed: the ten largest, as jeprof's `--top` shows by default.
const LEAK_STACKS: usize = 10;
/// Frames printed per stack: enough to reach the program's own code above the
/// allocator and the library layers in between.
const LEAK_FRAMES: usize = 24;

pub fn print_leaks(stacks: &[StackSample]) {
    let mut live: Vec<&StackSample> = stacks
        .iter()
        .filter(|s| s.counts.inuse_bytes >= 1.0)
        .collect();
    live.sort_by(|a, b| b.counts.inuse_bytes.total_cmp(&a.counts.inuse_bytes));
    let total: f64 = live.iter().map(|s| s.counts.inuse_bytes).sum();
    let objects: f64 = live.iter().map(|s| s.counts.inuse_objects).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rangealloc: leak report: about {:.0} bytes in {:.0} objects still allocated at exit \
         (estimated from samples, one per {} bytes on average), from {} call stacks",
        total,
        objects,
        super::sample_bytes(),
        live.len()
    );
    let dropped = super::dropped_samples();
    if dropped > 0 {
        let _ = writeln!(
            out,
            "rangealloc: {dropped} samples dropped (profiler tables full)"
        );
    }
    for (rank, s) in live.iter().take(LEAK_STACKS).enumerate() {
        let _ = writeln!(
            out,
            "rangealloc: leak #{}: {:.0} bytes in {:.0} objects, allocated at:",
            rank + 1,
            s.counts.inuse_bytes,
            s.counts.inuse_objects
        );
        for &ip in s.frames[..s.depth].iter().take(LEAK_FRAMES) {
            let _ = writeln!(out, "    {}", describe(ip - 1));
        }
    }
    crate::os::write_stderr(out.as_bytes());
}

/// `0x… symbol+0x… (module)`, or `0x… (module+0x…)` without a symbol.
fn describe(addr: usize) -> String {
    let mut info: libc::Dl_info = empty_info();
    // SAFETY: `info` is a valid out-parameter; dladdr only reads loader data.
    let found = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } != 0;
    if !found {
        return format!("{addr:#x}");
    }
    let cstr = |p: *const libc::c_char| {
        (!p.is_null()).then(|| {
            // SAFETY: dladdr's strings are NUL-terminated and owned by the loader.
            unsafe { core::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        })
    };
    let module = cstr(info.dli_fname).unwrap_or_default();
    match cstr(info.dli_sname) {
        Some(name) => format!(
            "{addr:#x} {name}+{:#x} ({module})",
            addr - info.dli_saddr as usize
        ),
        None => format!("{addr:#x} ({module}+{:#x})", addr - info.dli_fbase as usize),
    }
}

fn empty_info() -> libc::Dl_info {
    libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    }
}
