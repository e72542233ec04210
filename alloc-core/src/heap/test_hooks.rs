//! Test-only pause points inside owner-only heap updates, so a test can stop a thread
//! half way through one (and fork, say) deterministically. Armed per thread: other
//! tests running in parallel never stop. Compiled only under `cfg(test)`.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// Set when the armed thread reached its pause point; it waits there until `RELEASE`.
pub static PAUSED: AtomicBool = AtomicBool::new(false);
pub static RELEASE: AtomicBool = AtomicBool::new(false);

/// The calling thread stops at the next pause point it passes (once).
pub fn arm_this_thread() {
    ARMED.with(|a| a.set(true));
}

/// A pause point: returns at once unless this thread is armed.
pub fn pause_point() {
    if !ARMED.with(|a| a.replace(false)) {
        return;
    }
    PAUSED.store(true, Ordering::Release);
    while !RELEASE.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
}
