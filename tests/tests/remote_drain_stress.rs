//! The foreign drain against live owners and remote freers (issue 17 follow-up, "memory
//! comes back from every thread" when other threads free): owner threads allocate
//! bursts of small blocks, stamp them and hand most to a freer thread, which checks and
//! frees them (so the owners' full pages park and come back through their pending
//! stacks); each owner keeps a few blocks of every burst, frees some of them locally
//! later (pages freed into from both sides), and idles now and then, while a purger
//! thread drains and purges every heap in a loop. A drain that retired a page someone
//! still held would let a purge zero its blocks, or the owner hand them out twice:
//! every block is checked word by word before it is freed.

use rangealloc::engine::heap::reclaim as heap_reclaim;
use rangealloc::RangeAlloc;
use rangealloc_tests::stamped::{check, fill};
use rangealloc_tests::XorShift;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

/// Seconds of stress; `RANGEALLOC_STRESS_SECS` overrides (CI keeps it short).
const DEFAULT_SECS: u64 = 5;
const OWNERS: usize = 3;
/// Blocks per burst: 1-2 MiB at the mean size, dozens of pages.
const BURST: usize = 3000;
/// Block sizes 16 B to 1 KiB: one-unit pages of many blocks each.
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 1024;
/// Of each burst, the owner keeps one block in this many; the rest go to the freer.
const KEEP_ONE_IN: usize = 16;
/// The owner frees its kept blocks once it holds this many (the older half).
const KEPT_MAX: usize = 2000;
/// One burst in this many is followed by a pause (the owner idles while drained).
const PAUSE_EVERY: usize = 4;
const PAUSE: Duration = Duration::from_millis(3);
/// A run that has not finished this long after its deadline is stuck.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// What may have broken a block, for `check`.
const WHAT: &str = "other threads drained its heap";

fn free(p: usize, size: usize) {
    check(p, size, WHAT);
    let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
    // SAFETY: allocated with this layout, freed once.
    unsafe { std::alloc::dealloc(p as *mut u8, layout) };
}

#[test]
fn remote_freed_pages_are_drained_while_owners_and_freers_run() {
    let deadline =
        Instant::now() + Duration::from_secs(rangealloc_tests::stress_secs(DEFAULT_SECS));
    static FINISHED: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(move || {
        std::thread::sleep(deadline - Instant::now() + STALL_LIMIT);
        if !FINISHED.load(Ordering::Relaxed) {
            eprintln!("remote_drain_stress: no progress {STALL_LIMIT:?} past the deadline");
            std::process::abort();
        }
    });
    let stop = AtomicBool::new(false);
    let drained = AtomicUsize::new(0);
    let passes = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mode = rangealloc::options().purge_mode;
            while !stop.load(Ordering::Relaxed) {
                let pass = heap_reclaim::purge_all_heaps(0, mode);
                drained.fetch_add(pass.drained_pages, Ordering::Relaxed);
                if passes.fetch_add(1, Ordering::Relaxed).is_multiple_of(8) {
                    rangealloc::purge();
                }
            }
        });
        let (to_freer, from_owners) = mpsc::channel::<Vec<(usize, usize)>>();
        s.spawn(move || {
            for blocks in from_owners {
                for (p, size) in blocks {
                    free(p, size);
                }
            }
        });
        let owners: Vec<_> = (0..OWNERS)
            .map(|t| {
                let to_freer = to_freer.clone();
                s.spawn(move || {
                    let mut rng = XorShift(0x0bad_cafe_f00d_d00d ^ (t as u64 + 1));
                    let mut kept: Vec<(usize, usize)> = Vec::new();
                    let mut bursts = 0;
                    while Instant::now() < deadline {
                        let mut burst = Vec::with_capacity(BURST);
                        for _ in 0..BURST {
                            let size = (MIN_SIZE + rng.below(MAX_SIZE - MIN_SIZE + 1)) & !7;
                            let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
                            // SAFETY: non-zero size.
                            let p = unsafe { std::alloc::alloc(layout) } as usize;
                            assert_ne!(p, 0);
                            fill(p, size);
                            if rng.below(KEEP_ONE_IN) == 0 {
                                kept.push((p, size));
                            } else {
                                burst.push((p, size));
                            }
                        }
                        to_freer.send(burst).unwrap();
                        if kept.len() > KEPT_MAX {
                            for (p, size) in kept.drain(..KEPT_MAX / 2) {
                                free(p, size);
                            }
                        }
                        for &(p, size) in &kept {
                            check(p, size, WHAT);
                        }
                        bursts += 1;
                        if bursts % PAUSE_EVERY == 0 {
                            std::thread::sleep(PAUSE);
                        }
                    }
                    for (p, size) in kept {
                        free(p, size);
                    }
                    bursts
                })
            })
            .collect();
        drop(to_freer);
        let bursts: usize = owners.into_iter().map(|h| h.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        eprintln!(
            "{bursts} bursts, {} heap passes, {} pages drained",
            passes.load(Ordering::Relaxed),
            drained.load(Ordering::Relaxed)
        );
    });
    FINISHED.store(true, Ordering::Relaxed);
    // Not vacuous: the purger ran many passes and retired pages the freer emptied.
    assert!(passes.load(Ordering::Relaxed) > 100);
    assert!(drained.load(Ordering::Relaxed) > 0);
}
