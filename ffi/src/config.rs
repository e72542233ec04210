//! Configuration from C: the program's `rangealloc_conf` string (as jemalloc's
//! `malloc_conf`), read before the engine's first parse, and the run-time setters of the
//! options that can change safely. Calls the engine's `options` and `tuning`.
//!
//! `rangealloc_conf` is looked up as an undefined weak symbol: the program defines
//! `const char *rangealloc_conf = "purge_delay_ms=200";` and the dynamic linker binds
//! our reference to it, or to null when it has none. A program linked with
//! `-lrangealloc` exports it automatically; under `LD_PRELOAD` alone the executable must
//! export it (`-rdynamic`, or `-Wl,--dynamic-list`), since executables export only the
//! symbols a library they link references.

use core::ffi::{c_char, c_int, CStr};
use rangealloc_core::{options, tuning};

// The weak reference, read through the GOT: stable Rust has no weak extern statics.
// A hidden global so that the Rust declaration below binds to it in any codegen unit,
// without exporting it from the library.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".weak rangealloc_conf",
    ".pushsection .text.rangealloc_conf_slot,\"ax\",@progbits",
    ".globl rangealloc_conf_slot",
    ".hidden rangealloc_conf_slot",
    ".type rangealloc_conf_slot,@function",
    ".p2align 4",
    "rangealloc_conf_slot:",
    "    mov rax, qword ptr [rip + rangealloc_conf@GOTPCREL]",
    "    ret",
    ".size rangealloc_conf_slot, . - rangealloc_conf_slot",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    /// The address of the program's `rangealloc_conf` variable, or null.
    fn rangealloc_conf_slot() -> *const *const c_char;
}

/// Hands the program's `rangealloc_conf` to the engine, if it defines one, before the
/// engine's first parse. Cheap after that parse (one load).
pub(crate) fn give_program_options() {
    if options::parsed() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the function only loads a GOT entry.
        let slot = unsafe { rangealloc_conf_slot() };
        if slot.is_null() {
            return;
        }
        // SAFETY: `slot` is the address of the program's `const char *` variable.
        let text = unsafe { slot.read() };
        if text.is_null() {
            return;
        }
        // SAFETY: a NUL-terminated string that lives as long as the program (a string
        // literal, by the contract documented in rangealloc.h).
        let text: &'static CStr = unsafe { CStr::from_ptr(text) };
        options::set_code_options(text.to_bytes());
    }
}

/// Sets the purge delay in milliseconds (`UINT64_MAX`: never).
#[no_mangle]
pub extern "C" fn rangealloc_set_purge_delay_ms(ms: u64) {
    crate::ensure_initialised();
    tuning::set_purge_delay_ms(ms);
}

/// Switches the background purger on (non-zero) or off.
#[no_mangle]
pub extern "C" fn rangealloc_set_background_purge(on: c_int) {
    crate::ensure_initialised();
    tuning::set_background_purge(on != 0);
}

/// Switches the statistics report at exit on (non-zero) or off.
#[no_mangle]
pub extern "C" fn rangealloc_set_stats_at_exit(on: c_int) {
    crate::ensure_initialised();
    tuning::set_stats_at_exit(on != 0);
}

/// Sets the dirty budget in bytes; free space above it is purged now.
#[no_mangle]
pub extern "C" fn rangealloc_set_dirty_budget(bytes: usize) {
    crate::ensure_initialised();
    tuning::set_dirty_budget(bytes);
}
