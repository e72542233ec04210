//! The per-region lock and the table's sequence counter: the kernel's per-VMA lock
//! protocol (`vma_start_read` / `vma_start_write` / `vma_end_write_all`) in user space.
//! It owns two atomics per region and one per table, and calls only `sync`.
//!
//! The lock is one word, like the kernel's `vm_refcnt` since 6.15: the low bits count
//! readers, `WRITER` marks a writer draining them. Readers never block: they `try_read`
//! and fall back to the table's slow path. A writer (always holding the table's writer
//! mutex, so there is at most one) sets `WRITER`, waits for readers to leave, stamps
//! `lock_seq = table_seq` and clears `WRITER`. From then until the writer's single
//! `end_write_all` (one `table_seq += 1`), every reader that gets the word sees
//! `lock_seq == table_seq` and backs off: the region counts as write-locked without a
//! held lock, so an update of many regions needs no list of locks and no unlock order.
//!
//! We chose the single word over `parking_lot::RawRwLock` (DESIGN.md §2 names both):
//! readers only ever try-lock, so parking buys nothing on their side; the one writer
//! waits out readers with a spin-then-yield (readers hold the lock for a few hundred
//! instructions, or one bounded `madvise`), which never allocates, whereas a parking
//! writer allocates its thread data on first park; and pure atomics let `loom` check
//! the whole protocol.

use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::sync::backoff;

const WRITER: usize = 1 << (usize::BITS - 1);

/// The table-wide sequence counter. Only the holder of the writer mutex moves it. Every
/// lookup reads it, so it has its cache lines to itself (aligned and sized to 128
/// bytes, as `tree::OwnLines` and for the same reason): no free or writer store to a
/// neighbouring word makes readers miss on it.
#[repr(align(128))]
pub struct TableSeq(AtomicU64);

impl TableSeq {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        // Starts above every region's initial `lock_seq` (0), so new regions are unlocked.
        TableSeq(AtomicU64::new(1))
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        TableSeq(AtomicU64::new(1))
    }

    /// The current sequence. Acquire pairs with the Release in `end_write_all`: a reader
    /// that sees the bumped value also sees every store of the update it ends.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Ends the current update: every region `start_write` stamped since the last call
    /// becomes unlocked at once.
    ///
    /// # Safety
    /// The caller holds the table's writer mutex.
    pub unsafe fn end_write_all(&self) {
        // Release publishes the update (ranges, kinds, detached flags) to readers that
        // observe the new sequence with Acquire.
        self.0.fetch_add(1, Ordering::Release);
    }
}

#[cfg(not(loom))]
impl Default for TableSeq {
    fn default() -> Self {
        Self::new()
    }
}

pub struct RegionLock {
    word: AtomicUsize,
    lock_seq: AtomicU64,
}

#[cfg(not(loom))]
impl Default for RegionLock {
    fn default() -> Self {
        Self::new()
    }
}

impl RegionLock {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RegionLock {
            word: AtomicUsize::new(0),
            lock_seq: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        RegionLock {
            word: AtomicUsize::new(0),
            lock_seq: AtomicU64::new(0),
        }
    }

    /// Takes a read reference unless a writer is draining readers. Does not check
    /// `lock_seq`: see `try_read_unlocked`.
    ///
    /// The first compare-and-swap guesses the word (no readers, no writer: the common
    /// case) rather than loading it first. The answer is the same (a compare-and-swap
    /// succeeds only on the value it was given, and a failed one returns the current
    /// word for the next try), but the descriptor's line is fetched once, for writing.
    /// A plain load first fetched it shared, and the swap then had to fetch it again,
    /// exclusively: a second cross-core transfer whenever another core last locked the
    /// region, which with lookups spread over both cores is about every other lookup.
    #[inline]
    pub fn try_read(&self) -> bool {
        let mut word = 0;
        loop {
            if word & WRITER != 0 {
                return false;
            }
            // Acquire pairs with the writer's Release when it clears WRITER, so a reader
            // that gets in after a `start_write` sees its `lock_seq` stamp.
            match self.word.compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => word = seen,
            }
        }
    }

    /// `try_read`, then the kernel's check that no update has this region write-locked.
    /// On `false` the caller holds nothing.
    #[inline]
    pub fn try_read_unlocked(&self, seq: &TableSeq) -> bool {
        if !self.try_read() {
            return false;
        }
        // Relaxed is enough for `lock_seq`: the Acquire in `try_read` ordered it after
        // the writer's stamp. `seq.current()` is Acquire (see `TableSeq::current`).
        if self.lock_seq.load(Ordering::Relaxed) == seq.current() {
            self.read_unlock();
            return false;
        }
        true
    }

    #[inline]
    pub fn read_unlock(&self) {
        // Release: the reader's accesses to the region happen before a writer that
        // observes the count drop to zero proceeds.
        self.word.fetch_sub(1, Ordering::Release);
    }

    /// Takes a read reference, waiting only while a writer drains readers.
    ///
    /// # Safety
    /// The caller holds the table's writer mutex, so no `start_write` is in progress
    /// and every stamped region was unlocked by `end_write_all`: this cannot wait.
    pub unsafe fn read_lock_under_writer(&self) {
        let mut round = 0;
        while !self.try_read() {
            backoff(&mut round);
        }
    }

    /// Write-locks the region for the current update (`vma_start_write`).
    ///
    /// # Safety
    /// The caller holds the table's writer mutex and will call `end_write_all`.
    pub unsafe fn start_write(&self, seq: &TableSeq) {
        // SAFETY: caller contract.
        unsafe { self.start_write_waited(seq) };
    }

    /// `start_write`, telling whether it found readers inside and had to wait for them
    /// (the table counts those waits: `LockCounters::reader_waits`).
    ///
    /// # Safety
    /// As `start_write`.
    pub unsafe fn start_write_waited(&self, seq: &TableSeq) -> bool {
        let stamp = seq.current();
        if self.lock_seq.load(Ordering::Relaxed) == stamp {
            return false; // already write-locked by this update
        }
        // Acquire pairs with readers' Release in `read_unlock`: once the count reads zero
        // their accesses are complete.
        let mut word = self.word.fetch_or(WRITER, Ordering::Acquire);
        let waited = word & !WRITER != 0;
        let mut round = 0;
        while word & !WRITER != 0 {
            backoff(&mut round);
            word = self.word.load(Ordering::Acquire);
        }
        self.lock_seq.store(stamp, Ordering::Relaxed);
        // Release orders the stamp before any reader's Acquire in `try_read`.
        self.word.fetch_and(!WRITER, Ordering::Release);
        waited
    }

    /// Write-locks a region that no reader can reach yet (a new descriptor, before it
    /// enters the tree), as the kernel write-locks a new VMA before inserting it: no
    /// readers to drain, just the stamp. Until `end_write_all`, a reader that finds the
    /// region backs off instead of read-locking something the update may still change.
    ///
    /// # Safety
    /// As `start_write`; and the region is not published yet.
    pub unsafe fn stamp_unpublished(&self, seq: &TableSeq) {
        // Relaxed: the store that publishes the region (the tree's Release root or node
        // store) orders the stamp before any reader that can find it.
        self.lock_seq.store(seq.current(), Ordering::Relaxed);
    }

    /// True if the current update has write-locked this region.
    pub fn is_write_locked(&self, seq: &TableSeq) -> bool {
        self.lock_seq.load(Ordering::Relaxed) == seq.current()
    }

    /// Forgets every read reference and writer mark (fork child only).
    ///
    /// # Safety
    /// Only in a fork child, where the threads that held references no longer exist
    /// and this thread holds none.
    pub unsafe fn reset_after_fork(&self) {
        self.word.store(0, Ordering::Relaxed);
    }

    /// True while a writer is draining this region's readers (tests and assertions: a
    /// writer blocked on a reader, such as a purge inside `madvise`).
    pub fn writer_waiting(&self) -> bool {
        self.word.load(Ordering::Relaxed) & WRITER != 0
    }

    /// Readers currently inside (for tests and assertions).
    pub fn readers(&self) -> usize {
        self.word.load(Ordering::Relaxed) & !WRITER
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn stamp_locks_until_end_write_all() {
        let seq = TableSeq::new();
        let a = RegionLock::new();
        let b = RegionLock::new();
        assert!(a.try_read_unlocked(&seq));
        a.read_unlock();
        // SAFETY: single-threaded test: we are the only writer.
        unsafe {
            a.start_write(&seq);
            b.start_write(&seq);
            a.start_write(&seq); // idempotent within one update
        }
        assert!(!a.try_read_unlocked(&seq) && !b.try_read_unlocked(&seq));
        assert!(a.is_write_locked(&seq));
        assert_eq!(a.readers(), 0, "a failed attempt leaves no reference");
        // SAFETY: as above.
        unsafe { seq.end_write_all() };
        assert!(a.try_read_unlocked(&seq) && b.try_read_unlocked(&seq));
        assert_eq!(a.readers(), 1);
        a.read_unlock();
        b.read_unlock();
    }

    #[test]
    fn writer_waits_for_readers() {
        use std::sync::Arc;
        let seq = Arc::new(TableSeq::new());
        let lock = Arc::new(RegionLock::new());
        assert!(lock.try_read());
        let (l2, s2) = (lock.clone(), seq.clone());
        // SAFETY: the spawned thread is the only writer.
        let writer = std::thread::spawn(move || unsafe { l2.start_write(&s2) });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!writer.is_finished(), "writer must wait for the reader");
        lock.read_unlock();
        writer.join().unwrap();
        assert!(lock.is_write_locked(&seq));
    }
}
