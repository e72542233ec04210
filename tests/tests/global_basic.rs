//! The allocator as this test binary's own `#[global_allocator]`: every size class and
//! alignment round trip with content checks, realloc across the small/large boundary,
//! cross-thread frees.

use rangealloc::RangeAlloc;
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: the caller passes a block of at least `len` bytes.
        unsafe { *p.add(i) = seed.wrapping_add(i as u8) };
    }
}

fn check(p: *const u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: as in `fill`.
        let v = unsafe { *p.add(i) };
        assert_eq!(v, seed.wrapping_add(i as u8), "byte {i} of {len}");
    }
}

#[test]
fn every_class_and_alignment_round_trips() {
    let mut sizes: Vec<usize> = (0..rangealloc_core::heap::class_of(32768) + 1)
        .map(rangealloc_core::heap::class_size)
        .flat_map(|s| [s - 1, s, s + 1])
        .collect();
    sizes.extend([
        1,
        2,
        3,
        7,
        8,
        9,
        65_536,
        100_000,
        1 << 20,
        3 << 20,
        17 << 20,
    ]);
    for &size in &sizes {
        for shift in [0, 3, 4, 5, 6, 7, 8, 10, 12, 13, 16, 21] {
            let align = 1usize << shift;
            let layout = Layout::from_size_align(size.max(1), align).unwrap();
            let blocks: Vec<*mut u8> = (0..3)
                .map(|k| {
                    // SAFETY: non-zero size layout.
                    let p = unsafe { A.alloc(layout) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    fill(p, layout.size(), k as u8);
                    p
                })
                .collect();
            for (k, &p) in blocks.iter().enumerate() {
                check(p, layout.size(), k as u8);
                // SAFETY: allocated above with `layout`.
                unsafe { A.dealloc(p, layout) };
            }
        }
    }
}

#[test]
fn zeroed_memory_is_zero_even_when_recycled() {
    for size in [8, 100, 5000, 40_000, 300_000, 5 << 20] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for _ in 0..3 {
            // SAFETY: non-zero size.
            let p = unsafe { A.alloc(layout) };
            fill(p, size, 0xaa);
            // SAFETY: from alloc above.
            unsafe { A.dealloc(p, layout) };
            // SAFETY: non-zero size.
            let z = unsafe { A.alloc_zeroed(layout) };
            assert!((0..size).all(|i| unsafe { *z.add(i) } == 0), "size {size}");
            // SAFETY: from alloc_zeroed above.
            unsafe { A.dealloc(z, layout) };
        }
    }
}

#[test]
fn realloc_preserves_content_across_boundaries() {
    let steps = [
        1usize,
        16,
        100,
        1000,
        32_768,
        32_769,
        65_536,
        1 << 20,
        64 << 20,
        3 << 20,
        40_000,
        30_000,
        100,
        1,
    ];
    let layout = Layout::from_size_align(steps[0], 8).unwrap();
    // SAFETY: non-zero size.
    let mut p = unsafe { A.alloc(layout) };
    fill(p, 1, 7);
    let mut cur = 1;
    for &next in &steps[1..] {
        let old_layout = Layout::from_size_align(cur, 8).unwrap();
        // SAFETY: `p` is live with `old_layout`.
        p = unsafe { A.realloc(p, old_layout, next) };
        assert!(!p.is_null());
        check(p, cur.min(next), 7);
        fill(p, next, 7);
        cur = next;
    }
    // SAFETY: live with this layout.
    unsafe { A.dealloc(p, Layout::from_size_align(cur, 8).unwrap()) };
}

#[test]
fn cross_thread_free_producer_consumer() {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Box<[u8]>>>(8);
    let consumer = std::thread::spawn(move || {
        let mut n = 0usize;
        for batch in rx {
            for (i, b) in batch.into_iter().enumerate() {
                assert!(b.iter().all(|&x| x == (i % 251) as u8));
                n += 1;
            }
        }
        n
    });
    for round in 0..200 {
        let batch: Vec<Box<[u8]>> = (0..500)
            .map(|i| vec![(i % 251) as u8; 1 + (i * 37 + round) % 3000].into_boxed_slice())
            .collect();
        tx.send(batch).unwrap();
    }
    drop(tx);
    assert_eq!(consumer.join().unwrap(), 200 * 500);
}
