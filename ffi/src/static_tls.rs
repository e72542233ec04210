//! Deciding, once, whether this library sits in static TLS, so that the engine's fast
//! path may read the thread's slot with one `%fs`-relative load instead of a call to
//! `__tls_get_addr` per allocation (`rangealloc_core::thread::use_static_tls`). It owns
//! one `.init_array` constructor and calls only the dynamic loader's public API and the
//! engine.
//!
//! The engine's precondition is "loaded at process start by glibc's dynamic loader":
//! glibc places every such module in static TLS, at one offset for all threads. We
//! prove it from facts the loader reports, all of which must hold:
//! 1. the program was started through the dynamic loader (`AT_BASE` is nonzero; a
//!    static program that `dlopen`s us, or `ld.so prog` run by hand, says 0 and stays
//!    on the general path);
//! 2. we live in the base link-map namespace (not a `dlmopen` copy, whose TLS is
//!    dynamic and whose `RTLD_DEFAULT` scope is its own namespace);
//! 3. the process's `malloc`, as `dlsym(RTLD_DEFAULT)` finds it in the global scope,
//!    is in this module. The global scope lists the objects loaded at start (program,
//!    preloads, dependencies) before anything `dlopen(RTLD_GLOBAL)` adds, and any
//!    program that can `dlopen` has libc, which defines `malloc`, among them; so the
//!    first `malloc` is ours only if we were loaded at start ahead of libc: preloaded,
//!    or linked before it.
//!
//! A copy that fails any test (a `dlopen`ed one, or one linked after libc, which is
//! then not the process's `malloc` anyway) keeps the general access: correct, slower.
//! The constructor runs when the loader initialises us, after libc's own constructor
//! (libc is our dependency), on the thread that loads us; under `LD_PRELOAD` earlier
//! allocations simply used the general access. Each thread then re-checks the offset
//! on its first slow path (`thread::verify_static_tls`).

use core::ffi::{c_int, c_void};
use rangealloc_core as engine;

/// glibc's `RTLD_DL_LINKMAP` (`<dlfcn.h>`): `dladdr1` also returns the `link_map`.
const RTLD_DL_LINKMAP: c_int = 2;

#[used]
#[link_section = ".init_array"]
static DECIDE_AT_LOAD: extern "C" fn() = decide_at_load;

extern "C" fn decide_at_load() {
    if loaded_at_process_start() {
        // SAFETY: `loaded_at_process_start` established the precondition (module doc).
        unsafe { engine::thread::use_static_tls() };
    }
}

/// The three tests of the module doc.
fn loaded_at_process_start() -> bool {
    // SAFETY: `getauxval` reads the process's auxiliary vector; no preconditions.
    if unsafe { libc::getauxval(libc::AT_BASE) } == 0 {
        return false;
    }
    let Some((own_base, own_map)) = module_of(decide_at_load as *const c_void) else {
        return false;
    };
    let mut namespace: libc::Lmid_t = -1;
    // SAFETY: in glibc a `dlopen` handle is the object's `link_map`, which is what
    // `dladdr1(RTLD_DL_LINKMAP)` returned; the out-pointer is valid.
    let rc = unsafe {
        libc::dlinfo(
            own_map,
            libc::RTLD_DI_LMID,
            (&mut namespace as *mut libc::Lmid_t).cast(),
        )
    };
    if rc != 0 || namespace != libc::LM_ID_BASE {
        return false;
    }
    // SAFETY: a NUL-terminated name; RTLD_DEFAULT searches the caller's global scope.
    let default_malloc = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()) };
    if default_malloc.is_null() {
        return false;
    }
    matches!(module_of(default_malloc), Some((base, _)) if base == own_base)
}

/// The load base and `link_map` of the module containing `addr`.
fn module_of(addr: *const c_void) -> Option<(*mut c_void, *mut c_void)> {
    // SAFETY: `Dl_info` is plain data, valid when zeroed.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    let mut map: *mut c_void = core::ptr::null_mut();
    // SAFETY: valid out-pointers; `addr` is only looked up, never dereferenced.
    let found = unsafe { libc::dladdr1(addr, &mut info, &mut map, RTLD_DL_LINKMAP) };
    (found != 0 && !map.is_null()).then_some((info.dli_fbase, map))
}
