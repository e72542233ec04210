//! Test hooks of the region table (`cfg(test)` only): points where a test can stop a
//! table operation on another thread deterministically. Calls nothing but `std`.

use std::sync::atomic::{AtomicU8, Ordering};

/// A test hook: once armed, the next thread to reach it stops there until released, so
/// a test can act while another thread is deterministically at that point (a purge
/// holding its pieces' read locks and claims just before `madvise`; a retire between
/// its compare-and-swap and lifting the guard page).
pub(crate) struct TestPause(AtomicU8);

impl TestPause {
    const OFF: u8 = 0;
    const ARMED: u8 = 1;
    const PAUSED: u8 = 2;
    const RELEASED: u8 = 3;

    pub(super) const fn new() -> Self {
        TestPause(AtomicU8::new(Self::OFF))
    }

    pub(crate) fn arm(&self) {
        self.0.store(Self::ARMED, Ordering::SeqCst);
    }

    /// Returns once the hooked thread has stopped.
    pub(crate) fn wait_paused(&self) {
        while self.0.load(Ordering::SeqCst) != Self::PAUSED {
            std::thread::yield_now();
        }
    }

    pub(crate) fn release(&self) {
        self.0.store(Self::RELEASED, Ordering::SeqCst);
    }

    /// Where the hooked thread stops.
    pub(super) fn pause_here(&self) {
        let armed = self
            .0
            .compare_exchange(
                Self::ARMED,
                Self::PAUSED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok();
        if armed {
            while self.0.load(Ordering::SeqCst) != Self::RELEASED {
                std::thread::yield_now();
            }
            self.0.store(Self::OFF, Ordering::SeqCst);
        }
    }
}
