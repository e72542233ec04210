//! The C run-time setters of the options that can change safely. Calls the engine's
//! `tuning`. (The program's `rangealloc_conf` string is read by the engine's `options`
//! itself, at its first parse.)

use core::ffi::c_int;
use rangealloc_core::tuning;

/// Sets the purge delay in milliseconds (`UINT64_MAX`: never).
#[no_mangle]
pub extern "C" fn rangealloc_set_purge_delay_ms(ms: u64) {
    tuning::set_purge_delay_ms(ms);
}

/// Switches the background purger on (non-zero) or off.
#[no_mangle]
pub extern "C" fn rangealloc_set_background_purge(on: c_int) {
    tuning::set_background_purge(on != 0);
}

/// Switches the statistics report at exit on (non-zero) or off.
#[no_mangle]
pub extern "C" fn rangealloc_set_stats_at_exit(on: c_int) {
    tuning::set_stats_at_exit(on != 0);
}

/// Sets the dirty budget in bytes; free space above it is purged now.
#[no_mangle]
pub extern "C" fn rangealloc_set_dirty_budget(bytes: usize) {
    tuning::set_dirty_budget(bytes);
}
