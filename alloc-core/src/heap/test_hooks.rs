//! Test-only pause points inside owner-only heap updates, so a test can stop a thread
//! half way through one (and fork, say) deterministically. Armed per thread: other
//! tests running in parallel never stop. Each site has its own `PAUSED`/`RELEASE` pair,
//! so tests of different sites do not disturb each other. Compiled only under
//! `cfg(test)`.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, Ordering};

/// Where a thread can be stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// `Page::merge_local` (from `collect_all`), after `free = local_free` and before
    /// `local_free = null`.
    Collect = 1,
    /// `slow::trim`, holding the heap's segments lock (before releasing segments).
    TrimLocked = 2,
}

const SITES: usize = 3;

thread_local! {
    static ARMED: Cell<u8> = const { Cell::new(0) };
}

/// Set when a thread armed for the site reached it; it waits there until `RELEASE`.
pub static PAUSED_AT: [AtomicBool; SITES] = [const { AtomicBool::new(false) }; SITES];
pub static RELEASE_AT: [AtomicBool; SITES] = [const { AtomicBool::new(false) }; SITES];
/// The `Collect` site's pair, under the names its first test used.
pub static PAUSED: &AtomicBool = &PAUSED_AT[Site::Collect as usize];
pub static RELEASE: &AtomicBool = &RELEASE_AT[Site::Collect as usize];

/// The calling thread stops at the next `Collect` pause point it passes (once).
pub fn arm_this_thread() {
    arm_this_thread_at(Site::Collect);
}

/// The calling thread stops at the next pause point of `site` it passes (once).
pub fn arm_this_thread_at(site: Site) {
    ARMED.with(|a| a.set(site as u8));
}

/// The `Collect` pause point.
pub fn pause_point() {
    pause_point_at(Site::Collect);
}

/// A pause point: returns at once unless this thread is armed for `site`.
pub fn pause_point_at(site: Site) {
    if ARMED.with(|a| a.get()) != site as u8 {
        return;
    }
    ARMED.with(|a| a.set(0));
    PAUSED_AT[site as usize].store(true, Ordering::Release);
    while !RELEASE_AT[site as usize].load(Ordering::Acquire) {
        std::thread::yield_now();
    }
}
