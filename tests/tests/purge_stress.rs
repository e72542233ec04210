//! Foreign purges against busy owners (issue 17, "memory comes back from every
//! thread"): owner threads allocate, stamp, check and free small blocks in bursts (so
//! their pages keep retiring into dirty units and being claimed again), pausing now and
//! then, while a purger thread calls `rangealloc::purge()` in a loop. A purge that
//! `madvise`d a unit an owner had just claimed again would zero live blocks: every
//! block is checked word by word before it is freed.

use rangealloc::engine::heap::reclaim as heap_reclaim;
use rangealloc::RangeAlloc;
use rangealloc_tests::stamped::{check, fill};
use rangealloc_tests::XorShift;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

/// Seconds of stress; `RANGEALLOC_STRESS_SECS` overrides (CI keeps it short).
const DEFAULT_SECS: u64 = 5;
const OWNERS: usize = 4;
/// Blocks per burst: about 2-3 MiB at the mean size, so a burst fills and empties
/// dozens of pages, and part of a segment.
const BURST: usize = 4000;
/// Block sizes 16 B to 2 KiB: the one-unit page classes.
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 2048;
/// One burst in this many is followed by a pause (the owner idles while purged).
const PAUSE_EVERY: usize = 8;
const PAUSE: Duration = Duration::from_millis(2);
/// The purger calls the public `purge()` (table and heaps) once per this many passes.
const WHOLE_PURGE_EVERY: usize = 16;

/// What may have broken a block, for `check`.
const WHAT: &str = "other threads purged";

/// A run that has not finished this long after its deadline is stuck (a purger walking
/// a segment list an owner was changing loops forever): the watchdog fails it.
const STALL_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn owners_keep_their_blocks_while_another_thread_purges() {
    let deadline =
        Instant::now() + Duration::from_secs(rangealloc_tests::stress_secs(DEFAULT_SECS));
    static FINISHED: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(move || {
        std::thread::sleep(deadline - Instant::now() + STALL_LIMIT);
        if !FINISHED.load(Ordering::Relaxed) {
            eprintln!("purge_stress: no progress {STALL_LIMIT:?} past the deadline: stalled");
            std::process::abort();
        }
    });
    let stop = AtomicBool::new(false);
    let purged = AtomicUsize::new(0);
    let passes = AtomicUsize::new(0);
    let busy = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mode = rangealloc::options().purge_mode;
            while !stop.load(Ordering::Relaxed) {
                // The heaps' pass alone (its counts show what it reached), and now and
                // then the whole public purge.
                let pass = heap_reclaim::purge_all_heaps(0, mode);
                purged.fetch_add(pass.purged, Ordering::Relaxed);
                busy.fetch_add(pass.busy, Ordering::Relaxed);
                if passes
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(WHOLE_PURGE_EVERY)
                {
                    rangealloc::purge();
                }
            }
        });
        let owners: Vec<_> = (0..OWNERS)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = XorShift(0x1234_5678_9abc_def1 ^ (t as u64 + 1));
                    let mut blocks: Vec<(usize, usize)> = Vec::with_capacity(BURST);
                    let mut bursts = 0;
                    while Instant::now() < deadline {
                        for _ in 0..BURST {
                            let size = (MIN_SIZE + rng.below(MAX_SIZE - MIN_SIZE + 1)) & !7;
                            let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
                            // SAFETY: non-zero size.
                            let p = unsafe { std::alloc::alloc(layout) } as usize;
                            assert_ne!(p, 0);
                            fill(p, size);
                            blocks.push((p, size));
                        }
                        // Free all but a few, in a random order: pages empty and retire
                        // all over the segments, a few stay live beside free units.
                        for i in (1..blocks.len()).rev() {
                            blocks.swap(i, rng.below(i + 1));
                        }
                        let keep = rng.below(16);
                        for (p, size) in blocks.drain(keep..) {
                            check(p, size, WHAT);
                            let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
                            // SAFETY: allocated above with this layout, freed once.
                            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
                        }
                        for &(p, size) in &blocks {
                            check(p, size, WHAT);
                        }
                        bursts += 1;
                        if bursts % PAUSE_EVERY == 0 {
                            std::thread::sleep(PAUSE);
                        }
                    }
                    for (p, size) in blocks {
                        check(p, size, WHAT);
                        let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
                        // SAFETY: as above.
                        unsafe { std::alloc::dealloc(p as *mut u8, layout) };
                    }
                    bursts
                })
            })
            .collect();
        let bursts: usize = owners.into_iter().map(|h| h.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        eprintln!(
            "{bursts} bursts, {} heap passes, {} MiB of heap units purged, {} heaps \
             skipped while their owner held the lock",
            passes.load(Ordering::Relaxed),
            purged.load(Ordering::Relaxed) >> 20,
            busy.load(Ordering::Relaxed)
        );
    });
    FINISHED.store(true, Ordering::Relaxed);
    // Not vacuous: the purger ran many passes and returned units of the owners' heaps.
    assert!(passes.load(Ordering::Relaxed) > 100);
    assert!(purged.load(Ordering::Relaxed) > 0);
}
