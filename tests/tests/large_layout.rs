//! Large objects never overlap, whatever mix of allocation, in-place growth, moves,
//! shrinks and frees produced them; the region table tiles its arenas exactly.

use rangealloc::engine;
use rangealloc::engine::region::{RegionKind, RegionState, ARENAS};
use rangealloc::RangeAlloc;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

fn check_tiling() {
    let mut regions = Vec::new();
    // Arena by arena: sorted, the regions of all arenas must still not overlap.
    ARENAS.for_each_region(|start, len, kind, state| regions.push((start, len, kind, state)));
    regions.sort_unstable_by_key(|r| r.0);
    for w in regions.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert!(a.0 + a.1 <= b.0, "regions overlap: {a:x?} and {b:x?}");
    }
    assert!(regions
        .iter()
        .all(|r| r.3 == RegionState::Live || r.2 != RegionKind::Free));
    // Adjacent free regions of one arena stay apart only when one is dirty and the other
    // clean (dirty and clean space are kept apart on purpose).
    let mut free = Vec::new();
    ARENAS.for_each_free_region(|start, len, dirty| free.push((start, len, dirty)));
    free.sort_unstable_by_key(|r| r.0);
    for w in free.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.0 >> 30 == b.0 >> 30 && a.0 + a.1 == b.0 {
            assert_ne!(
                a.2, b.2,
                "adjacent free regions of equal dirtiness not merged: {a:x?} {b:x?}"
            );
        }
    }
}

#[test]
fn growing_vectors_keep_their_content() {
    let mut v: Vec<Vec<u8>> = Vec::new();
    for i in 0..200 {
        let mut b = vec![i as u8; 50_000 + i * 1000];
        b.resize(300_000, 3);
        v.push(b);
        check_tiling();
    }
    for (i, b) in v.iter().enumerate() {
        assert_eq!(b[0], i as u8, "vector {i}");
        assert_eq!(b[299_999], 3, "vector {i}");
    }
}

#[test]
fn realloc_sequences_never_overlap() {
    // SAFETY: every block is live until freed once; writes stay within usable sizes.
    unsafe {
        let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
        let mut seed = 12345u64;
        for step in 0..3000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let size = 33_000 + (seed % (3 << 20)) as usize;
            match seed % 4 {
                0 | 1 => {
                    let p = engine::alloc(size, 8);
                    std::ptr::write_bytes(p, step as u8, size);
                    live.push((p, size, step as u8));
                }
                2 if !live.is_empty() => {
                    let i = (seed >> 8) as usize % live.len();
                    let (p, old, tag) = live[i];
                    let q = engine::realloc(p, size, 8);
                    assert!(!q.is_null());
                    for k in [0, old.min(size) - 1] {
                        assert_eq!(*q.add(k), tag, "content lost at {k} after realloc");
                    }
                    std::ptr::write_bytes(q, tag, size);
                    live[i] = (q, size, tag);
                }
                _ if !live.is_empty() => {
                    let (p, size, tag) = live.swap_remove((seed >> 8) as usize % live.len());
                    assert_eq!(*p, tag);
                    assert_eq!(*p.add(size - 1), tag);
                    engine::free(p);
                }
                _ => {}
            }
            if step % 100 == 0 {
                check_tiling();
                for &(p, size, tag) in &live {
                    assert_eq!(*p, tag);
                    assert_eq!(*p.add(size - 1), tag, "object overwritten");
                }
            }
        }
    }
}

/// Regression (found by the model fuzzer): a growing realloc that moves an object with a
/// large alignment to a roomy spot must keep the alignment.
#[test]
fn moving_realloc_keeps_large_alignment() {
    for shift in 12..=22 {
        let align = 1usize << shift;
        // SAFETY: live blocks, checked and freed once.
        unsafe {
            let blocker = engine::alloc(64 << 10, 8);
            let mut p = engine::alloc(40_000, align);
            for size in [100_000usize, 1 << 20, 5 << 20] {
                p = engine::realloc(p, size, align);
                assert_eq!(p as usize % align, 0, "align {align} size {size}");
            }
            engine::free(p);
            engine::free(blocker);
        }
    }
}
