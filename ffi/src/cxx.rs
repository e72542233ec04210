//! C++ `operator new` / `operator delete` in all their forms (plain, array, nothrow,
//! sized, aligned), under their Itanium mangled names, so C++ programs allocate through
//! us without a C++ runtime in this library.
//!
//! Throwing `new` behaves as the standard says: on failure it calls the installed
//! `std::new_handler` and retries until allocation succeeds or there is no handler, and
//! then throws `std::bad_alloc`. Both the handler and the throw unwind, and a C++
//! exception may not unwind through a Rust frame (with `panic = "abort"` it aborts), so
//! on x86_64 the throwing entry points are small naked assembly functions with their own
//! unwind info: they call Rust only for work that cannot throw (try to allocate, fetch
//! the handler, find the throw function), and make the calls that may throw themselves.
//! The C++ runtime is found at run time with `dlsym(RTLD_DEFAULT, ...)`
//! (`std::get_new_handler()`, `std::__throw_bad_alloc()`): a program calling `new`
//! has one, and we link none. If none is found we abort with a message.
//! On other architectures the loop is in Rust: a handler that returns works, one that
//! throws aborts the process, and with no handler we abort with a message.
//!
//! Deviation: the nothrow forms return null at once, without calling the new-handler
//! (libstdc++ calls it and catches `bad_alloc`). Sizes and alignments passed to `delete`
//! are not needed: every block knows its own.

// The exported names are C++ mangled names.
#![allow(non_snake_case)]

use crate::{allocate, release};
use core::ffi::{c_char, c_void, CStr};
use rangealloc_core::{self as engine, MALLOC_ALIGN};

/// A `std::new_handler`: `void (*)()`, which may return, throw or exit.
#[cfg(target_arch = "x86_64")]
type NewHandler = unsafe extern "C" fn();
#[cfg(not(target_arch = "x86_64"))]
type NewHandler = unsafe extern "C-unwind" fn();

/// `std::get_new_handler()`: `std::new_handler (*)() noexcept`.
type GetNewHandler = unsafe extern "C" fn() -> Option<NewHandler>;

/// `std::__throw_bad_alloc()` (libstdc++ and libc++): throws, never returns.
#[cfg(target_arch = "x86_64")]
type ThrowBadAlloc = unsafe extern "C" fn() -> !;

const GET_NEW_HANDLER: &CStr = c"_ZSt15get_new_handlerv";
#[cfg(target_arch = "x86_64")]
const THROW_BAD_ALLOC: &CStr = c"_ZSt17__throw_bad_allocv";

/// The address of `name` in the process's global scope, or null.
fn lookup(name: &CStr) -> *mut c_void {
    // SAFETY: `name` is NUL-terminated; RTLD_DEFAULT searches the global scope. A
    // failed lookup may allocate its error message through our `malloc`, which is fine:
    // we hold no engine state here.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr().cast::<c_char>()) }
}

/// One allocation attempt for `operator new`; null on failure (also for an alignment
/// that is not a power of two, which libstdc++ answers with `bad_alloc`).
extern "C" fn cxx_try_new(size: usize, align: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return core::ptr::null_mut();
    }
    // SAFETY: power of two, checked above.
    unsafe { allocate(size, align.max(MALLOC_ALIGN), false) }
}

/// The new-handler to call after a failed attempt, or `None` when `operator new` must
/// throw instead (no handler installed, no C++ runtime, or an invalid alignment).
extern "C" fn cxx_next_new_handler(align: usize) -> Option<NewHandler> {
    if !align.is_power_of_two() {
        return None;
    }
    let getter = lookup(GET_NEW_HANDLER);
    if getter.is_null() {
        return None;
    }
    // SAFETY: the symbol is `std::get_new_handler()`, whose C++ signature is
    // `new_handler () noexcept`: no arguments, a function pointer (or null) returned in
    // the ordinary register, so the C ABI describes it exactly.
    unsafe {
        let get: GetNewHandler = core::mem::transmute::<*mut c_void, GetNewHandler>(getter);
        get()
    }
}

/// Cold path shared by the throwing forms: aborts with a message when a failed
/// `operator new` has no way to throw.
#[cold]
fn cannot_throw() -> ! {
    engine::fatal(
        "operator new: out of memory, and no C++ runtime (std::__throw_bad_alloc) \
         is loaded to throw std::bad_alloc",
    )
}

// ---------------------------------------------------------------------------------------
// Throwing forms, x86_64: assembly trampolines (see the module comment).
// ---------------------------------------------------------------------------------------

/// Returns `std::__throw_bad_alloc`, or aborts if the process has no C++ runtime.
#[cfg(target_arch = "x86_64")]
extern "C" fn cxx_bad_alloc_thrower() -> ThrowBadAlloc {
    let thrower = lookup(THROW_BAD_ALLOC);
    if thrower.is_null() {
        cannot_throw();
    }
    // SAFETY: the symbol is `void std::__throw_bad_alloc()`, `[[noreturn]]`, no arguments.
    unsafe { core::mem::transmute::<*mut c_void, ThrowBadAlloc>(thrower) }
}

/// `operator new(size, align)`: `rdi = size`, `rsi = align`. Loops over the new-handler
/// and throws `std::bad_alloc`; its CFI lets exceptions unwind through it to the caller.
///
/// Frame: 24 bytes (size at `[rsp]`, align at `[rsp + 8]`), which also restores the
/// 16-byte call alignment (entry `rsp % 16 == 8`).
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
unsafe extern "C" fn new_or_throw(size: usize, align: usize) -> *mut c_void {
    core::arch::naked_asm!(
        ".cfi_startproc",
        "sub rsp, 24",
        ".cfi_adjust_cfa_offset 24",
        "mov [rsp], rdi",
        "mov [rsp + 8], rsi",
        "2:",
        "mov rdi, [rsp]",
        "mov rsi, [rsp + 8]",
        "call {try_new}",
        "test rax, rax",
        "jz 3f",
        "add rsp, 24",
        ".cfi_adjust_cfa_offset -24",
        "ret",
        ".cfi_adjust_cfa_offset 24",
        "3:",
        "mov rdi, [rsp + 8]",
        "call {next_handler}",
        "test rax, rax",
        "jz 4f",
        // The handler may free memory and return (retry), throw, or exit.
        "call rax",
        "jmp 2b",
        "4:",
        "call {thrower}",
        "call rax",
        "ud2",
        ".cfi_endproc",
        try_new = sym cxx_try_new,
        next_handler = sym cxx_next_new_handler,
        thrower = sym cxx_bad_alloc_thrower,
    )
}

/// The first attempt of the plain throwing `new`: `malloc`'s code in full (the small
/// fast path, else a tail call to the engine's slow path), so a hit costs what
/// `malloc`'s does and the slow path needs no second entry. Null only when out of
/// memory, when `new_or_throw` takes over (another attempt, then the new-handler
/// loop). Never unwinds, so the trampolines may call it before their own frame exists.
#[cfg(target_arch = "x86_64")]
extern "C" fn cxx_new_fast(size: usize) -> *mut c_void {
    // SAFETY: MALLOC_ALIGN is a power of two.
    unsafe { allocate(size, MALLOC_ALIGN, false) }
}

/// Defines an exported throwing `operator new`. The plain forms first call
/// `cxx_new_fast` (which cannot throw; `size` is saved on the stack across the call,
/// which also keeps the call 16-byte aligned) and return its block; when it is out of
/// memory they tail-jump to `new_or_throw` with `rsi` = the default alignment. The aligned forms
/// tail-jump to `new_or_throw` with the caller's alignment.
#[cfg(target_arch = "x86_64")]
macro_rules! throwing_new {
    ($(#[$doc:meta])* $name:ident(size)) => {
        $(#[$doc])*
        #[no_mangle]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name(size: usize) -> *mut c_void {
            core::arch::naked_asm!(
                ".cfi_startproc",
                "push rdi",
                ".cfi_adjust_cfa_offset 8",
                "call {fast}",
                "pop rdi",
                ".cfi_adjust_cfa_offset -8",
                "test rax, rax",
                "jz 2f",
                "ret",
                "2:",
                "mov esi, {align}",
                "jmp {slow}",
                ".cfi_endproc",
                fast = sym cxx_new_fast,
                align = const MALLOC_ALIGN,
                slow = sym new_or_throw,
            )
        }
    };
    ($(#[$doc:meta])* $name:ident(size, align)) => {
        $(#[$doc])*
        #[no_mangle]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name(size: usize, align: usize) -> *mut c_void {
            core::arch::naked_asm!("jmp {slow}", slow = sym new_or_throw)
        }
    };
}

// ---------------------------------------------------------------------------------------
// Throwing forms, other architectures: the loop in Rust (see the module comment).
// ---------------------------------------------------------------------------------------

#[cfg(not(target_arch = "x86_64"))]
unsafe fn new_or_abort(size: usize, align: usize) -> *mut c_void {
    loop {
        let p = cxx_try_new(size, align);
        if !p.is_null() {
            return p;
        }
        match cxx_next_new_handler(align) {
            // SAFETY: a `std::new_handler` takes no arguments; if it throws, the unwind
            // reaches this frame and the process aborts (`panic = "abort"`).
            Some(handler) => unsafe { handler() },
            None => cannot_throw(),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
macro_rules! throwing_new {
    ($(#[$doc:meta])* $name:ident(size)) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name(size: usize) -> *mut c_void {
            // SAFETY: MALLOC_ALIGN is a power of two.
            unsafe { new_or_abort(size, MALLOC_ALIGN) }
        }
    };
    ($(#[$doc:meta])* $name:ident(size, align)) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $name(size: usize, align: usize) -> *mut c_void {
            // SAFETY: `cxx_try_new` checks the alignment.
            unsafe { new_or_abort(size, align) }
        }
    };
}

throwing_new!(
    /// `operator new(std::size_t)`
    _Znwm(size)
);
throwing_new!(
    /// `operator new[](std::size_t)`
    _Znam(size)
);
throwing_new!(
    /// `operator new(std::size_t, std::align_val_t)`
    _ZnwmSt11align_val_t(size, align)
);
throwing_new!(
    /// `operator new[](std::size_t, std::align_val_t)`
    _ZnamSt11align_val_t(size, align)
);

// ---------------------------------------------------------------------------------------
// nothrow forms: null on failure.
// ---------------------------------------------------------------------------------------

/// `operator new(std::size_t, const std::nothrow_t&)`
#[no_mangle]
pub unsafe extern "C" fn _ZnwmRKSt9nothrow_t(size: usize, _tag: *const c_void) -> *mut c_void {
    cxx_try_new(size, MALLOC_ALIGN)
}

/// `operator new[](std::size_t, const std::nothrow_t&)`
#[no_mangle]
pub unsafe extern "C" fn _ZnamRKSt9nothrow_t(size: usize, _tag: *const c_void) -> *mut c_void {
    cxx_try_new(size, MALLOC_ALIGN)
}

/// `operator new(std::size_t, std::align_val_t, const std::nothrow_t&)`
#[no_mangle]
pub unsafe extern "C" fn _ZnwmSt11align_val_tRKSt9nothrow_t(
    size: usize,
    align: usize,
    _tag: *const c_void,
) -> *mut c_void {
    cxx_try_new(size, align)
}

/// `operator new[](std::size_t, std::align_val_t, const std::nothrow_t&)`
#[no_mangle]
pub unsafe extern "C" fn _ZnamSt11align_val_tRKSt9nothrow_t(
    size: usize,
    align: usize,
    _tag: *const c_void,
) -> *mut c_void {
    cxx_try_new(size, align)
}

// ---------------------------------------------------------------------------------------
// delete: every form frees the block; sizes and alignments are not needed.
// ---------------------------------------------------------------------------------------

/// Defines exported `operator delete` forms; the extra arguments (size, alignment,
/// `nothrow_t`) are accepted and ignored.
macro_rules! delete_forms {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *mut c_void $(, $arg: $ty)*) {
            $(let _ = $arg;)*
            // SAFETY: C++'s contract: `p` is null or came from the matching `new`.
            unsafe { release(p, "operator delete") }
        }
    )*};
}

delete_forms! {
    /// `operator delete(void*)`
    _ZdlPv();
    /// `operator delete[](void*)`
    _ZdaPv();
    /// `operator delete(void*, std::size_t)`
    _ZdlPvm(size: usize);
    /// `operator delete[](void*, std::size_t)`
    _ZdaPvm(size: usize);
    /// `operator delete(void*, const std::nothrow_t&)`
    _ZdlPvRKSt9nothrow_t(tag: *const c_void);
    /// `operator delete[](void*, const std::nothrow_t&)`
    _ZdaPvRKSt9nothrow_t(tag: *const c_void);
    /// `operator delete(void*, std::align_val_t)`
    _ZdlPvSt11align_val_t(align: usize);
    /// `operator delete[](void*, std::align_val_t)`
    _ZdaPvSt11align_val_t(align: usize);
    /// `operator delete(void*, std::size_t, std::align_val_t)`
    _ZdlPvmSt11align_val_t(size: usize, align: usize);
    /// `operator delete[](void*, std::size_t, std::align_val_t)`
    _ZdaPvmSt11align_val_t(size: usize, align: usize);
    /// `operator delete(void*, std::align_val_t, const std::nothrow_t&)`
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: usize, tag: *const c_void);
    /// `operator delete[](void*, std::align_val_t, const std::nothrow_t&)`
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: usize, tag: *const c_void);
}
