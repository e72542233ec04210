//! Issue 17, "memory comes back from every thread", when the frees come from another
//! thread: a thread allocates 200 MiB of small blocks and hands them to another thread,
//! which frees them all; the first thread blocks. Its pages are parked on its pending
//! stack with every block on their remote lists, and only its own next slow path used to
//! take them back. `rangealloc::purge()` called by a third thread must return that
//! memory. Alone in its own binary (one test), so no other test moves the RSS.

use rangealloc::RangeAlloc;
use rangealloc_tests::{rss_bytes, XorShift};
use std::sync::mpsc;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const MIB: usize = 1 << 20;
/// The figures: 200 MiB allocated, at least 180 MiB must come back.
const ALLOCATED: usize = 200 * MIB;
const MUST_RETURN: usize = 180 * MIB;
/// Block sizes drawn from 16 B to 2 KiB (the one-unit page classes).
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 2048;
/// Fixed, so a failure replays.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Before the foreign drain, `purge()` returned nothing of the idle owner's pages here:
/// RSS stayed at its peak (see the commit that added this test for the figures).
#[test]
fn purge_returns_pages_other_threads_emptied_for_an_idle_thread() {
    let (to_main, from_owner) = mpsc::channel::<Vec<(usize, usize)>>();
    let (to_owner, from_main) = mpsc::channel::<()>();
    let owner = std::thread::spawn(move || {
        let mut rng = XorShift(SEED);
        let mut blocks: Vec<(usize, usize)> = Vec::with_capacity(ALLOCATED / MIN_SIZE / 32);
        let mut total = 0;
        while total < ALLOCATED {
            let size = MIN_SIZE + rng.below(MAX_SIZE - MIN_SIZE + 1);
            let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
            // SAFETY: a non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: `size` writable bytes; touching them makes them resident.
            unsafe { core::ptr::write_bytes(p, 0xa5, size) };
            blocks.push((p as usize, size));
            total += size;
        }
        to_main.send(blocks).unwrap();
        from_main.recv().unwrap(); // blocks until the main thread has measured
    });
    let blocks = from_owner.recv().unwrap();
    let peak = rss_bytes();
    // Another thread frees them all, in a shuffled order.
    let freer = std::thread::spawn(move || {
        let mut blocks = blocks;
        let mut rng = XorShift(SEED ^ 1);
        for i in (1..blocks.len()).rev() {
            blocks.swap(i, rng.below(i + 1));
        }
        for &(p, size) in &blocks {
            let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
            // SAFETY: allocated by the owner with this layout, freed once.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
        }
    });
    freer.join().unwrap();
    let freed = rss_bytes();
    let before = rangealloc::stats().purged_bytes;
    let purged = rangealloc::purge();
    let after = rss_bytes();
    let stats = rangealloc::stats();
    to_owner.send(()).unwrap();
    owner.join().unwrap();
    eprintln!(
        "RSS: peak {} KiB, after the remote frees {} KiB, after purge() {} KiB ({} KiB \
         purged, purged_bytes +{} KiB)",
        peak / 1024,
        freed / 1024,
        after / 1024,
        purged / 1024,
        (stats.purged_bytes - before) / 1024
    );
    assert!(
        peak.saturating_sub(after) >= MUST_RETURN,
        "RSS fell by {} MiB from its peak ({} MiB) after another thread freed the idle \
         thread's blocks and purge(); at least {} MiB must come back",
        peak.saturating_sub(after) / MIB,
        peak / MIB,
        MUST_RETURN / MIB
    );
}
