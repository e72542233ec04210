//! A heap's segments lock: the one word that orders a heap's owner and foreign
//! purgers over the heap's segment list and unit bookkeeping (the protocol and its
//! invariants are in `reclaim`'s module doc). Owns the lock word only; calls `sync`.
//! Built in model builds too: `segments_lock_loom.rs` checks it with loom.

use crate::sync::atomic::{AtomicU8, Ordering};
use crate::sync::backoff;

const UNLOCKED: u8 = 0;
/// Held by the heap's owner (or, after `fork`, its adopter).
const OWNER: u8 = 1;
/// Held by a foreign purger.
const PURGER: u8 = 2;

/// The lock over a heap's segment list and its segments' unit bookkeeping.
pub struct SegmentsLock(AtomicU8);

impl SegmentsLock {
    /// An unlocked lock (a new heap's).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        SegmentsLock(AtomicU8::new(UNLOCKED))
    }

    /// An unlocked lock (loom's atomics have no `const` constructor).
    #[cfg(loom)]
    pub fn new() -> Self {
        SegmentsLock(AtomicU8::new(UNLOCKED))
    }

    /// Owner: takes the lock, waiting while a purger holds it (a purger holds it for at
    /// most one pass over this heap's segments: a few `madvise` calls).
    #[inline]
    pub fn lock_owner(&self) {
        let mut round = 0;
        // Acquire on success pairs with the Release of the previous `unlock`.
        while self
            .0
            .compare_exchange_weak(UNLOCKED, OWNER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            backoff(&mut round);
        }
    }

    /// Adopter of a fork orphan: takes the lock, or inherits it from the vanished owner
    /// that held it at `fork` (no other thread takes an orphan's lock as `OWNER`).
    pub fn lock_owner_inheriting(&self) {
        let mut round = 0;
        loop {
            // Acquire as in `lock_owner`; an inherited lock was taken by the parent's
            // thread, whose writes are in the child's memory as it left them.
            match self.0.compare_exchange_weak(
                UNLOCKED,
                OWNER,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) | Err(OWNER) => return,
                Err(_) => backoff(&mut round),
            }
        }
    }

    /// Purger: takes the lock if nobody holds it.
    pub fn try_lock_purger(&self) -> bool {
        // Acquire on success pairs with the owner's Release in `unlock`: the segment
        // list and unit bits it left are visible.
        self.0
            .compare_exchange(UNLOCKED, PURGER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock (owner or purger).
    #[inline]
    pub fn unlock(&self) {
        // Release publishes the section's writes to the next holder's Acquire.
        self.0.store(UNLOCKED, Ordering::Release);
    }
}

impl Default for SegmentsLock {
    fn default() -> Self {
        Self::new()
    }
}
