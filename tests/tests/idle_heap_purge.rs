//! Issue 17, "memory comes back from every thread": a thread allocates 200 MiB of small
//! blocks, frees them and blocks; `rangealloc::purge()` called by another thread returns
//! that memory. Alone in its own binary (one test), so no other test moves the RSS.

use rangealloc::RangeAlloc;
use rangealloc_tests::{rss_bytes, XorShift};
use std::sync::mpsc;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const MIB: usize = 1 << 20;
/// The figures: 200 MiB allocated, at least 180 MiB must come back.
const ALLOCATED: usize = 200 * MIB;
const MUST_RETURN: usize = 180 * MIB;
/// Block sizes drawn from 16 B to 2 KiB (the one-unit page classes a program mostly
/// uses), so every class's pages interleave in the heap's segments.
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 2048;
/// Fixed, so a failure replays.
const SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// The worker frees in a shuffled order: the last empty page of each class then sits
/// anywhere in the heap, and each one keeps its segment (and the segment's freed,
/// still-dirty units) with the idle heap. Before this fix nothing but the owner
/// thread's own next allocation returned those units, and this test failed (about
/// 150 MiB stayed resident after `purge()`).
#[test]
fn purge_returns_the_empty_pages_of_an_idle_thread() {
    let (to_main, from_worker) = mpsc::channel::<()>();
    let (to_worker, from_main) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
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
        to_main.send(()).unwrap(); // peak
        from_main.recv().unwrap();
        for i in (1..blocks.len()).rev() {
            blocks.swap(i, rng.below(i + 1));
        }
        for (p, size) in blocks.drain(..) {
            let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
            // SAFETY: allocated above with this layout, freed once.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
        }
        drop(blocks);
        to_main.send(()).unwrap(); // freed; now idle
        from_main.recv().unwrap(); // blocks until the main thread has measured
    });
    from_worker.recv().unwrap();
    let peak = rss_bytes();
    to_worker.send(()).unwrap();
    from_worker.recv().unwrap();
    let freed = rss_bytes();
    let purged = rangealloc::purge();
    let after = rss_bytes();
    to_worker.send(()).unwrap();
    worker.join().unwrap();
    eprintln!(
        "RSS: peak {} KiB, after the frees {} KiB, after purge() {} KiB ({} KiB purged)",
        peak / 1024,
        freed / 1024,
        after / 1024,
        purged / 1024
    );
    assert!(
        peak.saturating_sub(after) >= MUST_RETURN,
        "RSS fell by {} MiB from its peak ({} MiB) after the idle thread's frees and \
         purge(); at least {} MiB must come back",
        peak.saturating_sub(after) / MIB,
        peak / MIB,
        MUST_RETURN / MIB
    );
}
