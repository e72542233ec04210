//! The per-region steps of the region table's lock protocol, in one place that both the
//! table and the `loom` models run: the reader's validation after a lock-free lookup
//! (`Region::read_lock_validated`: try-read, the `lock_seq` check, then the detached,
//! key and range re-checks), the writer's two marks (`Region::stamp_new` for a
//! descriptor about to enter the tree, `Region::mark_detached` for one leaving it), and
//! a free's retire (`Region::claim_live`, then `Region::unlock_and_push_retired` onto the
//! table's `RetiredStack`, which the next writer drains). Compiled under `cfg(loom)` as
//! well (its atomics come from `crate::sync`), so the models check this code, not a copy
//! of it (as crossbeam-epoch's loom tests run its real code through one `primitive`
//! module). Calls only `lock`.
//!
//! Where a writer waits for readers: only in `start_write`, for readers inside the
//! region it is about to change. A retire gives its read reference up *before* it
//! pushes the region (`unlock_and_push_retired`), so the writer that drains the region
//! never waits for its freer: pushed the other way round, a freer preempted between the
//! push and the unlock held up the next update of its arena for a whole time slice
//! (`loom_retire` has the model, with the old order as a broken variant that loom
//! catches waiting). The reference is not needed after the claim: once `Retired`, a
//! region is changed by no writer until one drains it from the stack (writers change
//! only free regions, live objects their owner resizes, and what they drain).

use super::lock::TableSeq;
use super::{Region, RegionState, RETIRED_NEXT};
use crate::sync::atomic::{AtomicPtr, Ordering};
use core::ptr;

/// How a reader's attempt on the region a lock-free lookup found ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadAttempt {
    /// Read-locked, attached, still at the key it was found under, covering the
    /// address: the reader may work on it until it unlocks.
    Locked,
    /// A writer is draining readers, or the current update has the region write-locked
    /// (`lock_seq == table_seq`). Nothing held.
    WriteLocked,
    /// Detached, or moved since the tree version the lookup read (its start is no longer
    /// the key it was found under): a fresh lookup may find the right one. Nothing held.
    Moved,
    /// Attached at its key but no longer covering the address (it shrank). Nothing held.
    Missed,
}

impl Region {
    /// The reader's validation of `self`, found under tree key `key` for `addr` by a
    /// lock-free lookup (the kernel's `vma_start_read` and the re-checks of
    /// `lock_vma_under_rcu`). The re-checks come after the lock, and all three are
    /// needed: the descriptor may have left the tree (detached), been moved (`grow`
    /// rekeys a free neighbour and moves its start: the range may still cover `addr`,
    /// but the key the caller goes on to use would be stale), or shrunk.
    #[inline]
    pub(crate) fn read_lock_validated(
        &self,
        key: usize,
        addr: usize,
        seq: &TableSeq,
    ) -> ReadAttempt {
        // The loom models' broken twins: this validation with one check dropped.
        #[cfg(all(test, loom))]
        if let Some(broken) = super::loom_table::broken_validation(self, key, addr, seq) {
            return broken;
        }
        if !self.lock.try_read_unlocked(seq) {
            return ReadAttempt::WriteLocked;
        }
        // Under the read lock, these fields cannot change until we unlock (every change
        // write-locks first); the Acquire in `try_read` ordered them after the update
        // that last wrote them.
        if self.is_detached() || self.start() != key {
            self.lock.read_unlock();
            return ReadAttempt::Moved;
        }
        if !self.contains(addr) {
            self.lock.read_unlock();
            return ReadAttempt::Missed;
        }
        ReadAttempt::Locked
    }

    /// Write-locks a new descriptor for the current update before it enters the tree.
    ///
    /// # Safety
    /// The caller holds the table's writer mutex, will end the update with
    /// `end_write_all`, and has not published `self` yet.
    pub(crate) unsafe fn stamp_new(&self, seq: &TableSeq) {
        // SAFETY: caller contract.
        unsafe { self.lock.stamp_unpublished(seq) }
    }

    /// Write-locks `self` (waiting out its readers) and marks it detached: readers that
    /// still find it in an old tree version see the mark once they can lock it, which is
    /// after `end_write_all`. The caller unlinks it from the tree in the same update.
    ///
    /// # Safety
    /// The caller holds the table's writer mutex and will call `end_write_all`.
    pub(crate) unsafe fn mark_detached(&self, seq: &TableSeq) {
        // SAFETY: caller contract.
        unsafe { self.lock.start_write(seq) };
        // Release, made visible to readers by `end_write_all` (and paired with the
        // Acquire in `is_detached`).
        self.detached.store(true, Ordering::Release);
    }

    /// A free's claim on a live object: `Live -> to` (`Retired`, or `Cached` for a
    /// region cache), by compare-and-swap, so exactly one freer wins and a second free
    /// is caught. The caller holds a validated read reference and has checked that the
    /// region is an object, not free space (whose state also reads `Live`).
    #[inline]
    pub(crate) fn claim_live(&self, to: RegionState) -> bool {
        // AcqRel: the winner's accesses to the object happen before the writer (or the
        // cache's next taker) that later reads the state (Acquire in `state()`).
        self.state
            .compare_exchange(
                RegionState::Live as u8,
                to as u8,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Ends a retire: gives up the caller's read reference, then pushes the region on
    /// `stack` for the next writer to fold into free space. In this order (see the
    /// module doc): the writer that drains the region finds no reader inside.
    ///
    /// `between` runs after the unlock and before the push: a test hook (the table's
    /// unit tests stop a retire there; elsewhere it is empty).
    ///
    /// # Safety
    /// The caller holds a validated read reference on `self`, which this consumes, and
    /// won `claim_live(RegionState::Retired)` under it.
    #[inline]
    pub(crate) unsafe fn unlock_and_push_retired(
        &self,
        stack: &RetiredStack,
        between: impl FnOnce(),
    ) {
        // The broken twin of the loom retire model: the old order, push then unlock.
        #[cfg(all(test, loom))]
        if super::loom_table::pushes_before_unlock() {
            stack.push(self);
            self.lock.read_unlock();
            return;
        }
        self.lock.read_unlock();
        between();
        // Still ours after the unlock: `Retired` and not on the stack, no writer changes
        // it or frees its descriptor (detaching it needs a drain first).
        stack.push(self);
    }
}

/// A table's retired regions waiting to become free space: a lock-free stack pushed by
/// frees and emptied whole (swap with null) by the writer, so it has no ABA hazard.
/// Linked through `Region::link(RETIRED_NEXT)`.
pub(crate) struct RetiredStack(AtomicPtr<Region>);

impl RetiredStack {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        RetiredStack(AtomicPtr::new(ptr::null_mut()))
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        RetiredStack(AtomicPtr::new(ptr::null_mut()))
    }

    /// Pushes a region that just became `Retired`; after this returns, the pusher may
    /// not touch the region again (the writer may already be reusing it).
    pub(crate) fn push(&self, region: &Region) {
        let node = region as *const Region as *mut Region;
        let mut head = self.0.load(Ordering::Relaxed);
        loop {
            region.link(RETIRED_NEXT).store(head, Ordering::Relaxed);
            // Release publishes the link and everything the freer did before (its
            // claim, its unlock, its work on the object) to the writer's Acquire swap.
            match self
                .0
                .compare_exchange_weak(head, node, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => head = seen,
            }
        }
    }

    /// Takes every pushed region (null when none), linked through `RETIRED_NEXT`.
    pub(crate) fn take_all(&self) -> *mut Region {
        // Acquire pairs with the Release pushes.
        self.0.swap(ptr::null_mut(), Ordering::Acquire)
    }

    /// Forgets every pushed region (fork child only: it rebuilds the stack from the
    /// regions' states).
    ///
    /// # Safety
    /// Only in a fork child, which has one thread.
    pub(crate) unsafe fn clear_after_fork(&self) {
        self.0.store(ptr::null_mut(), Ordering::Relaxed);
    }
}
