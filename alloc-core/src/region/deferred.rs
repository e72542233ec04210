//! Deferred folds: address ranges of free space that a purge cleaned and could not merge
//! back itself because its arena's writer mutex was held (issue 16: at 16 threads on 2
//! cores, 87 of 93 writer waits in the `medium` workload were that merge-back, each one
//! waiting out a preempted writer's scheduler slice). The purge leaves the range here,
//! lock-free, and the arena's next writer folds it (`Writer::fold_deferred`, at the start
//! of every update, as it drains the retired stack), the way a free leaves its region on
//! the retired stack. Owns nothing but the slots; calls only `sync`.
//!
//! A fold is `coalesce_overlapping` over the range, correct whenever it runs: it merges
//! every free region overlapping the range with its neighbours of equal dirtiness,
//! whatever writers did to the range meanwhile, and changes no byte's dirtiness, so a
//! fold that comes late costs only fragmentation until then, never a range or a dirty
//! byte. Pushes and takes are one atomic each: a range is in exactly one slot from its
//! push to its take, and a take empties the slot it read (`swap`), so no range is
//! folded twice or lost (the loom model `deferred_loom` checks it).

use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Slots per arena. A purge pass defers at most `BATCH` (16) ranges (the pieces of one
/// region are adjacent and go as one range, but a pass over many small dirty regions has
/// 16 apart), and several passes may run on one arena at once (every thread over the
/// dirty budget runs one, beside the timed one and the background purger), each arena's
/// next update folding all. Measured (`medium`, 16 threads, 32 runs): with 16 slots, 3
/// merge-backs found the set full and waited; 64 hold four whole passes. A full set is
/// no error: the purge then merges what is left itself, waiting for the mutex. 512
/// bytes an arena, touched only by arenas in use. (Three in the loom model, which
/// explores every interleaving of the scans.)
pub const SLOTS: usize = if cfg!(loom) { 3 } else { 64 };

/// Bits of a slot that hold the range's length in pages; the start's page number takes
/// the rest. 24 bits: ranges up to 64 GiB (a pass's are at most 16 x `PURGE_PIECE`,
/// 256 MiB), starts below 2^52 (the user address space is 47 bits, 56 with 5-level
/// paging).
const LEN_BITS: u32 = 24;

/// The page shift ranges are encoded in: purged ranges are page multiples.
const PAGE_SHIFT: u32 = 12;

/// A range packed into one word, or `None` when it does not fit (or is empty).
fn pack(start: usize, end: usize) -> Option<u64> {
    let mask = (1usize << PAGE_SHIFT) - 1;
    if start >= end || start & mask != 0 || end & mask != 0 {
        return None;
    }
    let pages = ((end - start) >> PAGE_SHIFT) as u64;
    let first = (start >> PAGE_SHIFT) as u64;
    if pages >= 1 << LEN_BITS || first >= 1 << (64 - LEN_BITS) {
        return None;
    }
    // Never 0 (`pages` >= 1): 0 marks an empty slot.
    Some((first << LEN_BITS) | pages)
}

fn unpack(word: u64) -> (usize, usize) {
    let start = ((word >> LEN_BITS) as usize) << PAGE_SHIFT;
    let len = ((word & ((1 << LEN_BITS) - 1)) as usize) << PAGE_SHIFT;
    (start, start + len)
}

/// One arena's deferred ranges.
pub struct DeferredFolds {
    slots: [AtomicU64; SLOTS],
    /// At least the number of full slots (raised before a slot fills, lowered after one
    /// is emptied): the writers' check of an empty set is this one load.
    pending: AtomicUsize,
}

impl Default for DeferredFolds {
    fn default() -> Self {
        Self::new()
    }
}

impl DeferredFolds {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        DeferredFolds {
            slots: [const { AtomicU64::new(0) }; SLOTS],
            pending: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        DeferredFolds {
            slots: core::array::from_fn(|_| AtomicU64::new(0)),
            pending: AtomicUsize::new(0),
        }
    }

    /// Leaves `[start, end)` for the arena's next writer; false when no slot is free or
    /// the range cannot be encoded (the caller folds it itself).
    pub fn push(&self, start: usize, end: usize) -> bool {
        let Some(word) = pack(start, end) else {
            return false;
        };
        // Raised first, so a writer that finds `pending` zero has no full slot to miss;
        // one that sees it raised before the slot fills folds the range next time.
        // Relaxed: the slot's own Release/Acquire carries the range.
        self.pending.fetch_add(1, Ordering::Relaxed);
        for slot in &self.slots {
            // Release pairs with the Acquire `swap` in `take_each`: the writer that takes
            // the range sees everything this thread did before it (its purge's stores
            // to the regions, though every fold write-locks them anyway).
            if slot.load(Ordering::Relaxed) == 0
                && slot
                    .compare_exchange(0, word, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
        self.pending.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// True when a range may be waiting (one load: the writers' common case is false).
    #[inline]
    pub fn any(&self) -> bool {
        // Relaxed: a hint; `take_each` takes each range with Acquire.
        self.pending.load(Ordering::Relaxed) != 0
    }

    /// Empties every full slot, calling `fold` on each range taken. Only under the
    /// arena's writer mutex in the table (any number of callers is safe for the slots:
    /// each range goes to the one whose `swap` emptied its slot).
    pub fn take_each(&self, mut fold: impl FnMut(usize, usize)) {
        if !self.any() {
            return;
        }
        for slot in &self.slots {
            // Relaxed load first: an empty slot costs no write to its cache line.
            if slot.load(Ordering::Relaxed) == 0 {
                continue;
            }
            // Acquire pairs with the Release in `push`.
            let word = slot.swap(0, Ordering::Acquire);
            if word != 0 {
                // Relaxed: see `pending`.
                self.pending.fetch_sub(1, Ordering::Relaxed);
                let (start, end) = unpack(word);
                fold(start, end);
            }
        }
    }

    /// Sets `pending` to the slots actually full, in a fork child: a purge of the parent
    /// stopped between raising it and filling a slot would leave it raised for good,
    /// and every writer of the child would scan the slots for nothing.
    ///
    /// # Safety
    /// Only in a fork child, before any other thread runs.
    pub unsafe fn reset_after_fork(&self) {
        // Relaxed: the only thread.
        self.pending.store(self.full_slots(), Ordering::Relaxed);
    }

    /// Ranges waiting now (tests and diagnostics).
    pub fn full_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_odd_ones_are_refused() {
        let (start, end) = (0x7f12_3456_7000, 0x7f12_3456_7000 + (256 << 20));
        assert_eq!(unpack(pack(start, end).unwrap()), (start, end));
        assert_eq!(pack(start, start), None, "empty");
        assert_eq!(pack(start + 1, end), None, "not page-aligned");
        assert_eq!(pack(0, 1 << 36), None, "too long to encode");
    }

    #[test]
    fn every_pushed_range_is_taken_once_and_a_full_set_refuses() {
        let d = DeferredFolds::new();
        let page = 1 << PAGE_SHIFT;
        for i in 0..SLOTS {
            assert!(d.push(i * 2 * page, (i * 2 + 1) * page));
        }
        assert!(
            !d.push(1 << 30, (1 << 30) + page),
            "a full set took a range"
        );
        assert_eq!(d.full_slots(), SLOTS);
        let mut taken = Vec::new();
        d.take_each(|s, e| taken.push((s, e)));
        taken.sort();
        let expected: Vec<_> = (0..SLOTS)
            .map(|i| (i * 2 * page, (i * 2 + 1) * page))
            .collect();
        assert_eq!(taken, expected);
        assert!(!d.any() && d.full_slots() == 0);
        d.take_each(|_, _| panic!("taken twice"));
    }
}

/// Loom models: two purges push while a writer takes; every range is folded exactly once
/// and none is left behind once the pushers end. The must-fail twin pushes with a load
/// and a plain store instead of the compare-exchange, and the model catches the range
/// one pusher overwrote.
#[cfg(all(test, loom))]
mod deferred_loom {
    use super::*;
    use loom::sync::Arc;

    /// `push` as it must not be: the slot is checked empty, then written.
    fn racy_push(d: &DeferredFolds, start: usize, end: usize) -> bool {
        let word = pack(start, end).unwrap();
        d.pending.fetch_add(1, Ordering::Relaxed);
        for slot in &d.slots {
            if slot.load(Ordering::Relaxed) == 0 {
                slot.store(word, Ordering::Release);
                return true;
            }
        }
        d.pending.fetch_sub(1, Ordering::Relaxed);
        false
    }

    fn two_pushers_and_a_writer(push: fn(&DeferredFolds, usize, usize) -> bool) {
        loom::model(move || {
            let d = Arc::new(DeferredFolds::new());
            let pushers: Vec<_> = (1..=2usize)
                .map(|i| {
                    let d = d.clone();
                    loom::thread::spawn(move || {
                        let start = i << 20;
                        assert!(push(&d, start, start + (1 << PAGE_SHIFT)));
                    })
                })
                .collect();
            let mut folded = Vec::new();
            d.take_each(|s, _| folded.push(s));
            for p in pushers {
                p.join().unwrap();
            }
            // The next writer, after both pushes: takes whatever the first left.
            assert!(d.any() || folded.len() == 2, "a range hidden from writers");
            d.take_each(|s, _| folded.push(s));
            folded.sort();
            assert_eq!(
                folded,
                vec![1 << 20, 2 << 20],
                "a range lost or folded twice"
            );
            assert!(!d.any());
        });
    }

    #[test]
    fn deferred_loom_no_range_lost_or_folded_twice() {
        two_pushers_and_a_writer(|d, s, e| d.push(s, e));
    }

    #[test]
    #[should_panic(expected = "a range lost or folded twice")]
    fn deferred_loom_broken_push_without_compare_exchange_loses_a_range() {
        two_pushers_and_a_writer(racy_push);
    }
}
