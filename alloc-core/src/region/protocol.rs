//! The per-region steps of the region table's lock protocol, in one place that both the
//! table and the `loom` models run: the reader's validation after a lock-free lookup
//! (`Region::read_lock_validated`: try-read, the `lock_seq` check, then the detached,
//! key and range re-checks) and the writer's two marks (`Region::stamp_new` for a
//! descriptor about to enter the tree, `Region::mark_detached` for one leaving it).
//! Compiled under `cfg(loom)` as well (its atomics come from `crate::sync`), so the
//! models check this code, not a copy of it (as crossbeam-epoch's loom tests run its
//! real code through one `primitive` module). Calls only `lock`.

use super::lock::TableSeq;
use super::Region;
use crate::sync::atomic::Ordering;

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
}
