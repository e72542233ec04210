//! Which libgcc unwinder the profiler calls. Owns the entry points `init` resolved;
//! calls libc (`dlsym`) and libgcc.
//!
//! `librangealloc.so` carries its own copy of libgcc's unwinder, linked statically
//! (`ffi/build.rs`), so that preloading it loads no `libgcc_s.so` into programs that do
//! not use it (BENCHMARKS.md, "Start-up cost"). That copy keeps its own registry of
//! frames: the frames a JIT registered with the program's libgcc (`__register_frame`)
//! are known only to the program's. So where the program has `libgcc_s.so` loaded, the
//! profiler calls its entry points, found with `dlsym` when profiling starts; otherwise,
//! and before `init` (unit tests), the linked copy. In the `rangealloc` crate the
//! linked copy is `libgcc_s.so` itself.
//!
//! Not covered (review19 M1): a `libgcc_s.so` that `dlsym` cannot see when profiling
//! starts, loaded later (a `dlopen`ed C++ library) or with `RTLD_LOCAL` (Python's
//! extension modules, numba's JIT): the profiler keeps the linked copy, which cannot see
//! the frames registered there, so such stacks end at the JIT frame, where before this
//! copy existed they went on. Looking it up again during a walk would mean `dlsym`
//! inside `malloc`; finding it without `dlsym` (its dynamic symbol table, through
//! `dl_iterate_phdr`) is the fix, not made yet.

use core::ffi::{c_int, c_void};

use crate::sync::atomic::{AtomicUsize, Ordering};

/// libgcc's `_Unwind_Context`, opaque.
#[repr(C)]
pub struct UnwindContext {
    _private: [u8; 0],
}

/// `struct dwarf_eh_bases` of libgcc's `unwind-dw2-fde.h`.
#[cfg(target_arch = "x86_64")]
#[repr(C)]
pub struct DwarfEhBases {
    pub tbase: *mut c_void,
    pub dbase: *mut c_void,
    pub func: *mut c_void,
}

/// `_Unwind_Backtrace`'s callback.
pub type TraceFn = extern "C" fn(*mut UnwindContext, *mut c_void) -> c_int;

#[cfg(target_arch = "x86_64")]
type FindFdeFn = unsafe extern "C" fn(*mut c_void, *mut DwarfEhBases) -> *const u8;
type BacktraceFn = unsafe extern "C" fn(TraceFn, *mut c_void) -> c_int;
pub type GetIpFn = unsafe extern "C" fn(*mut UnwindContext) -> usize;

extern "C" {
    #[cfg(target_arch = "x86_64")]
    fn _Unwind_Find_FDE(pc: *mut c_void, bases: *mut DwarfEhBases) -> *const u8;
    fn _Unwind_Backtrace(trace: TraceFn, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
}

/// The program's `_Unwind_Find_FDE`, or 0 for the linked one (only `cfi`, on x86-64,
/// looks FDEs up).
#[cfg(target_arch = "x86_64")]
static FIND_FDE: AtomicUsize = AtomicUsize::new(0);
/// The program's `_Unwind_Backtrace` and `_Unwind_GetIP`, or 0 for the linked pair: a
/// context is only read by the library that made it, so the two are taken together
/// (`GET_IP` is stored first, and read only after a non-zero `BACKTRACE`).
static BACKTRACE: AtomicUsize = AtomicUsize::new(0);
static GET_IP: AtomicUsize = AtomicUsize::new(0);

/// Looks the program's libgcc up, once profiling starts (`prof::start`: `dlsym` may
/// allocate, and the caller's re-entrancy guard sends that to the metadata arena).
/// Idempotent. Our own copy's symbols are not exported, so `dlsym` finds only the
/// program's.
pub fn init() {
    #[cfg(target_arch = "x86_64")]
    {
        let find = symbol(c"_Unwind_Find_FDE");
        if find != 0 {
            // Relaxed: `cfi::init` reads it next on this thread and publishes what it
            // derives with its `READY` Release store, which every lookup reads with
            // Acquire first; a walk on another thread before that uses the linked copy,
            // which is no worse than before `init`.
            FIND_FDE.store(find, Ordering::Relaxed);
        }
    }
    let (backtrace, get_ip) = (symbol(c"_Unwind_Backtrace"), symbol(c"_Unwind_GetIP"));
    if backtrace != 0 && get_ip != 0 {
        // Relaxed, then Release: a reader that sees this `BACKTRACE` sees this `GET_IP`.
        GET_IP.store(get_ip, Ordering::Relaxed);
        BACKTRACE.store(backtrace, Ordering::Release);
    }
}

/// `name`'s address in the global scope, or 0.
fn symbol(name: &core::ffi::CStr) -> usize {
    // SAFETY: a NUL-terminated name looked up in the global scope.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) as usize }
}

/// The address of the `_Unwind_Find_FDE` that `find_fde` calls.
#[cfg(target_arch = "x86_64")]
pub fn find_fde_address() -> usize {
    match FIND_FDE.load(Ordering::Relaxed) {
        0 => _Unwind_Find_FDE as *const () as usize,
        f => f,
    }
}

/// libgcc's `_Unwind_Find_FDE`: the FDE covering `pc`, or null; fills `bases.func` with
/// the start of the function it covers.
///
/// # Safety
/// As libgcc's: `bases` points to a writable `DwarfEhBases`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn find_fde(pc: *mut c_void, bases: *mut DwarfEhBases) -> *const u8 {
    // SAFETY: `find_fde_address` is `_Unwind_Find_FDE` (ours or the program's), of
    // this type.
    let f = unsafe { core::mem::transmute::<usize, FindFdeFn>(find_fde_address()) };
    // SAFETY: forwarded contract.
    unsafe { f(pc, bases) }
}

/// libgcc's `_Unwind_Backtrace` and the `_Unwind_GetIP` that reads its contexts.
pub fn backtrace_pair() -> (BacktraceFn, GetIpFn) {
    // Acquire: pairs with `init`'s Release store, so its `GET_IP` is visible.
    match BACKTRACE.load(Ordering::Acquire) {
        0 => (_Unwind_Backtrace, _Unwind_GetIP),
        // SAFETY: `init` stored the program's two functions, of these types.
        b => unsafe {
            (
                core::mem::transmute::<usize, BacktraceFn>(b),
                core::mem::transmute::<usize, GetIpFn>(GET_IP.load(Ordering::Relaxed)),
            )
        },
    }
}
