//! `meta`'s unit tests: block classes, chunk carving and cutting, spans, pools, and
//! the lock-free paths under threads. Each test builds its own `Meta` where it can, so
//! the process's metadata (which the test harness itself allocates through) stays out.

use super::*;

#[test]
fn class_blocks_are_aligned_and_reused_lifo() {
    let meta = Meta::new();
    let class = class_of(24, 8).unwrap();
    let a = meta.alloc_block(class);
    let b = meta.alloc_block(class);
    assert!(!a.is_null() && !b.is_null() && a != b);
    assert!(contains(a));
    assert_eq!(a as usize % 32, 0);
    assert_eq!(meta.block_bytes.load(Ordering::Relaxed), 64);
    // SAFETY: `a` is a live block of this arena.
    unsafe {
        assert_eq!(usable_size(a), 32);
        meta.free(a);
    }
    assert_eq!(meta.block_bytes.load(Ordering::Relaxed), 32);
    assert_eq!(meta.alloc_block(class), a, "LIFO reuse of the freed block");
}

#[test]
fn a_refill_carves_one_chunk() {
    let meta = Meta::new();
    let class = class_of(4096, 16).unwrap();
    let per_chunk = CHUNK_SIZE / 4096;
    let blocks: Vec<*mut u8> = (0..per_chunk).map(|_| meta.alloc_block(class)).collect();
    let chunk = blocks[0] as usize;
    assert_eq!(chunk % CHUNK_SIZE, 0);
    // One chunk's blocks in address order, a step at a time from its tail.
    let expected: Vec<*mut u8> = (0..per_chunk)
        .map(|i| (chunk + i * 4096) as *mut u8)
        .collect();
    assert_eq!(blocks, expected);
    assert!(meta.free[class].pop().is_null(), "the chunk is used up");
    // SAFETY: live blocks of this arena, freed once.
    unsafe { blocks.iter().for_each(|&p| meta.free(p)) };
    assert_eq!(meta.block_bytes.load(Ordering::Relaxed), 0);
    let again: Vec<*mut u8> = (0..per_chunk).map(|_| meta.alloc_block(class)).collect();
    assert!(
        again.iter().all(|p| blocks.contains(p)),
        "no new chunk carved"
    );
    assert_eq!(meta.state.lock().span_bytes, 0);
}

/// Resident pages of `[start, start + len)` (`mincore`: fresh anonymous memory is
/// resident once touched).
fn resident_pages(start: usize, len: usize) -> usize {
    let mut resident = vec![0u8; len / os::PAGE_SIZE];
    // SAFETY: the range lies in a meta arena's mapping; `resident` has a byte a page.
    let r = unsafe { libc::mincore(start as *mut _, len, resident.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore");
    resident.iter().filter(|&&b| b & 1 != 0).count()
}

/// A refill cuts one page of a fresh chunk (one block, for classes of a page) and
/// leaves the rest untouched: a class a thread uses a block or two of costs at most
/// the page its links are written in, not the chunk's sixteen (the whole-chunk cut
/// wrote a link into every block). A block of a page is linked by nobody.
#[test]
fn a_refill_touches_only_the_page_it_cuts() {
    if os::kernel_thp() == os::KernelThp::Always {
        // Every 2 MiB frame of a meta arena may then fault in whole at its first write
        // (review12 saw 16 of 16 pages resident): nothing a cut can save.
        return;
    }
    let meta = Meta::new();
    for size in [64, 1024, 2048, 4096] {
        let class = class_of(size, 16).unwrap();
        let block = meta.alloc_block(class);
        assert!(!block.is_null());
        let chunk = block as usize & !(CHUNK_SIZE - 1);
        let linked = usize::from(size < os::PAGE_SIZE);
        assert_eq!(
            resident_pages(chunk, CHUNK_SIZE),
            linked,
            "class {size}: the chunk's pages in memory after one block"
        );
        // The next blocks come from that page, then from the chunk's next one.
        let per_page = os::PAGE_SIZE / size.min(os::PAGE_SIZE);
        let more: Vec<usize> = (0..per_page)
            .map(|_| meta.alloc_block(class) as usize)
            .collect();
        assert!(more.iter().all(|&p| p & !(CHUNK_SIZE - 1) == chunk));
        assert_eq!(
            resident_pages(chunk, CHUNK_SIZE),
            2 * linked,
            "class {size}"
        );
    }
}

/// Two threads that carve a chunk of one class together: the second chunk cannot be
/// the class's tail (the first is), so it is cut whole and none of it is lost.
#[test]
fn a_chunk_carved_beside_the_tail_is_cut_whole() {
    let meta = Meta::new();
    let class = class_of(4096, 16).unwrap();
    let first = meta.alloc_block(class);
    assert!(!first.is_null());
    assert_ne!(
        meta.tail[class].load(Ordering::Relaxed),
        0,
        "the first chunk's rest"
    );
    let chunk = meta.carve(1).expect("the arena has chunks left");
    let block = meta.start_chunk(class, chunk);
    assert_eq!(block as usize, chunk);
    let mut stacked = 0;
    while !meta.free[class].pop().is_null() {
        stacked += 1;
    }
    assert_eq!(
        stacked,
        CHUNK_SIZE / 4096 - 1,
        "the rest of the chunk, stacked"
    );
}

#[test]
fn blocks_freed_on_other_threads_are_reused_without_the_lock() {
    let meta: &'static Meta = Box::leak(Box::new(Meta::new()));
    let class = class_of(2048, 16).unwrap();
    // Warm: one chunk's worth in flight at most.
    let warm: Vec<usize> = (0..CHUNK_SIZE / 2048)
        .map(|_| meta.alloc_block(class) as usize)
        .collect();
    // SAFETY: live blocks, freed once.
    unsafe { warm.iter().for_each(|&p| meta.free(p as *mut u8)) };
    let carved = meta.bump.load(Ordering::Relaxed);
    let (tx, rx) = std::sync::mpsc::sync_channel::<usize>(8);
    let freer = std::thread::spawn(move || {
        for p in rx {
            // SAFETY: handed over live by the allocating thread, freed once.
            unsafe { meta.free(p as *mut u8) };
        }
    });
    for _ in 0..10_000 {
        let p = meta.alloc_block(class);
        assert!(!p.is_null());
        tx.send(p as usize).unwrap();
    }
    drop(tx);
    freer.join().unwrap();
    assert_eq!(
        meta.bump.load(Ordering::Relaxed),
        carved,
        "no chunk carved after warm-up"
    );
}

#[test]
fn spans_are_chunk_aligned_and_reused_first_fit() {
    let meta = Meta::new();
    let mut state = meta.state.lock();
    let big = meta.alloc_span(&mut state, 4);
    assert_eq!(big as usize % CHUNK_SIZE, 0);
    // SAFETY: `big` is a live 4-chunk span of this state's arena.
    unsafe {
        assert_eq!(usable_size(big), 4 * CHUNK_SIZE);
        ptr::write_bytes(big, 0xab, 4 * CHUNK_SIZE);
        (big as *mut FreeSpan).write(FreeSpan {
            next: ptr::null_mut(),
            chunks: 4,
        });
    }
    state.free_spans = big as *mut FreeSpan;
    assert_eq!(
        meta.alloc_span(&mut state, 3),
        big,
        "first fit reuses the freed span"
    );
    let rest = meta.alloc_span(&mut state, 1);
    assert_eq!(
        rest as usize,
        big as usize + 3 * CHUNK_SIZE,
        "the split tail"
    );
}

#[test]
fn concurrent_carves_are_disjoint_and_need_no_lock() {
    let meta: &'static Meta = Box::leak(Box::new(Meta::new()));
    // The first carve reserves the arena, under the lock.
    let first = meta.alloc_block(class_of(64, 16).unwrap()) as usize;
    assert!(first != 0);
    // Held for the rest of the test: a carve that took it would never return.
    let held = meta.state.lock();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                (0..500)
                    .map(|_| meta.carve(1).expect("room in the arena"))
                    .collect::<Vec<usize>>()
            })
        })
        .collect();
    let mut chunks: Vec<usize> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    drop(held);
    chunks.sort_unstable();
    let arena = first & !(ARENA_SIZE - 1);
    assert!(
        chunks.windows(2).all(|w| w[1] - w[0] == CHUNK_SIZE),
        "disjoint, dense"
    );
    assert!(chunks[0] > first && chunks[0] & !(ARENA_SIZE - 1) == arena);
    assert_eq!(
        meta.bump.load(Ordering::Relaxed),
        chunks[chunks.len() - 1] + CHUNK_SIZE
    );
}

#[test]
fn a_used_up_arena_is_replaced_under_the_lock() {
    let meta = Meta::new();
    let class = class_of(64, 16).unwrap();
    let first = meta.alloc_block(class) as usize;
    let arena = first & !(ARENA_SIZE - 1);
    // Leave one chunk in the arena, then use it and ask for one more.
    meta.bump
        .store(arena + ARENA_SIZE - CHUNK_SIZE, Ordering::Relaxed);
    assert_eq!(meta.carve(2), None, "two chunks do not fit in one");
    assert_eq!(meta.carve(1), Some(arena + ARENA_SIZE - CHUNK_SIZE));
    assert_eq!(meta.carve(1), None, "used up");
    let fresh = meta.refill(class + 1) as usize;
    assert!(
        fresh != 0 && fresh & !(ARENA_SIZE - 1) != arena,
        "a new arena"
    );
    assert_eq!(
        fresh % ARENA_SIZE,
        CHUNK_SIZE,
        "its first chunk after the table"
    );
    assert_eq!(meta.state.lock().arena_count, 2);
}

#[test]
fn pool_parts_are_disjoint_classed_and_freeable() {
    // Owner 64: the last process arena's id; the unit tests never place in the
    // process's arenas beyond the first few.
    let (d0, d1) = pool(64, 0, 64).expect("pools reserved");
    let (n0, n1) = pool(64, 1, 256).expect("pools reserved");
    assert_eq!(d1 - d0, POOL_PART_BYTES);
    assert!(d1 <= n0 && n1 - n0 == POOL_PART_BYTES, "parts disjoint");
    assert_eq!(pool(65, 0, 64), None, "ids of other tables have no pool");
    assert_eq!(d0 % CHUNK_SIZE, 0);
    assert!(in_pool(d0 as *const u8) && in_pool((n1 - 1) as *const u8));
    assert!(!in_pool(ptr::null()));
    // SAFETY: blocks cut from the parts, as `region::blocks` cuts them.
    unsafe {
        assert_eq!(usable_size(d0 as *const u8), 64);
        assert_eq!(usable_size((d1 - 64) as *const u8), 64);
        assert_eq!(usable_size(n0 as *const u8), 256);
    }
    assert!(
        stats().reserved >= ARENA_SIZE,
        "the pools' arena is counted"
    );
    // A pool block given to `meta` is counted out of the pools, not out of the
    // arena's block bytes (a fresh arena has none: subtracting would wrap), and back
    // into the pools when it is taken again.
    note_pool_carved(256);
    let meta = Meta::new();
    // SAFETY: a block cut (and counted) from the node part, given to this arena.
    unsafe { meta.free(n0 as *mut u8) };
    assert_eq!(meta.block_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(meta.alloc_block(class_of(256, 256).unwrap()), n0 as *mut u8);
    assert_eq!(meta.block_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn global_arena_round_trip() {
    let aligned = alloc(100, 4096);
    assert_eq!(aligned as usize % 4096, 0);
    let zeroed = alloc_zeroed(200_000, 16);
    // SAFETY: live meta blocks of the sizes asked for.
    unsafe {
        assert!((0..200_000).all(|i| *zeroed.add(i) == 0));
        assert!(usable_size(zeroed) >= 200_000);
        free(zeroed);
        free(aligned);
    }
    assert!(stats().reserved >= ARENA_SIZE);
}

/// The state right after a race (review12): this thread's `cut_from_tail` saw none, then
/// another's `start_chunk` carved the arena's last chunk and published its tail. With no
/// arena left to reserve, `refill_locked` must take a step of that tail (a 4 KiB class
/// pushes nothing on the stack) rather than fail with 15 steps uncut.
#[test]
fn refill_locked_takes_the_tail_before_a_new_arena() {
    let meta = Meta::new();
    let class = class_of(4096, 16).unwrap();
    let first = meta.alloc_block(class);
    assert!(!first.is_null());
    assert_ne!(meta.tail[class].load(Ordering::Relaxed), 0);
    let arena = first as usize & !(ARENA_SIZE - 1);
    meta.bump.store(arena + ARENA_SIZE, Ordering::Relaxed);
    meta.state.lock().arena_count = MAX_ARENAS;
    assert!(
        !meta.refill_locked(class).is_null(),
        "steps uncut in the tail, yet no block"
    );
}

/// Threads that refill classes together (page-cut, one-block and half-chunk classes)
/// hand out every block of every chunk carved into a class exactly once: each is handed
/// out, stacked, or still in the tail at the end (review12's stress).
#[test]
fn concurrent_cuts_hand_out_each_block_once_and_lose_none() {
    use std::sync::{Arc, Barrier};
    const THREADS: usize = 4;
    let meta: &'static Meta = Box::leak(Box::new(Meta::new()));
    let sizes = [64usize, 2048, 4096, 32768];
    let mut got: Vec<Vec<usize>> = sizes
        .iter()
        .map(|&size| vec![meta.alloc_block(class_of(size, 16).unwrap()) as usize])
        .collect();
    let arena = got[0][0] & !(ARENA_SIZE - 1);
    for _round in 0..50 {
        for (i, &size) in sizes.iter().enumerate() {
            let class = class_of(size, 16).unwrap();
            let n = CHUNK_SIZE / size / 2 + 1;
            let barrier = Arc::new(Barrier::new(THREADS));
            let threads: Vec<_> = (0..THREADS)
                .map(|_| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        (0..n)
                            .map(|_| meta.alloc_block(class) as usize)
                            .collect::<Vec<usize>>()
                    })
                })
                .collect();
            for t in threads {
                got[i].extend(t.join().unwrap());
            }
        }
    }
    let bump = meta.bump.load(Ordering::Relaxed);
    for (i, &size) in sizes.iter().enumerate() {
        let class = class_of(size, 16).unwrap();
        loop {
            let p = meta.free[class].pop();
            if !p.is_null() {
                got[i].push(p as usize);
                continue;
            }
            match meta.cut_from_tail(class) {
                Some(p) => got[i].push(p as usize),
                None => break,
            }
        }
        let all = &mut got[i];
        assert!(all.iter().all(|&p| p != 0), "class {size}: a null block");
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "class {size}: a block handed out twice");
        let chunks = (arena + CHUNK_SIZE..bump)
            .step_by(CHUNK_SIZE)
            // SAFETY: words of this arena's table, written before the threads were joined.
            .filter(|&c| unsafe { *chunk_word(c) } == class as u32 + 1)
            .count();
        assert_eq!(
            n,
            chunks * (CHUNK_SIZE / size),
            "class {size}: blocks lost ({chunks} chunks)"
        );
    }
}

/// `carved` (the statistic) leaves a class's uncut steps out: they never faulted in.
#[test]
fn carved_bytes_leave_out_the_uncut_steps() {
    let meta = Meta::new();
    let block = meta.alloc_block(class_of(4096, 16).unwrap());
    assert!(!block.is_null());
    let carved = meta.carved(&meta.state.lock());
    // The arena's table chunk, and one step of the class's chunk (not its 64 KiB).
    assert_eq!(carved, CHUNK_SIZE + 4096);
}
