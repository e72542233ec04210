//! False sharing between threads' small blocks (Hoard's cache-thrash and cache-scratch,
//! as the bench runs them): the property behind those benchmarks, asserted on
//! addresses instead of timed.
//!
//! - Active false sharing (cache-thrash): threads that allocate small blocks at the
//!   same time must get blocks on cache lines of their own, so that their writes never
//!   move one line between cores.
//! - Passive false sharing (cache-scratch): the main thread allocates one small block
//!   per thread (adjacent) and hands each to its thread, which frees it (a remote free).
//!   The freed block must not come back to the freeing thread: its line still holds the
//!   other threads' handed-over blocks, so the thread would then share that line with
//!   them (jemalloc's and tcmalloc's thread caches do exactly that; tcmalloc's
//!   cache-thrash time is 2.5-4x jemalloc's in the quick bench).
//!
//! Every thread stays alive until all have recorded their blocks, so no heap is
//! abandoned and adopted by another thread in between (that reuse would be legitimate).

use rangealloc::RangeAlloc;
use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashMap;
use std::sync::{Barrier, Mutex};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

/// A cache line on every x86-64 and most AArch64 cores.
const LINE: usize = 64;
/// Threads: more than the machine's cores, as the bench's 8-thread rows.
const THREADS: usize = 8;
/// Sizes of Hoard's tests (1 and 8 bytes) and of the classes beside them, all below a
/// cache line, so that several blocks share one line.
const SIZES: [usize; 5] = [1, 8, 16, 24, 48];
/// Blocks each thread allocates per size: a few lines' worth, all live at once.
const BLOCKS: usize = 64;
/// Times each thread allocates and frees one block per size, as cache-thrash's loop.
const CHURN: usize = 500;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 1).expect("valid layout")
}

/// Every line address touched by the block `[p, p + size)`.
fn lines(p: usize, size: usize) -> impl Iterator<Item = usize> {
    (p / LINE)..=((p + size - 1) / LINE)
}

/// The owner id of the main thread's blocks.
const MAIN: usize = usize::MAX;

fn name(owner: usize) -> String {
    if owner == MAIN {
        "the main thread".to_owned()
    } else {
        format!("thread {owner}")
    }
}

/// Records which thread's blocks sit on each cache line; panics naming the line and
/// both owners when two threads meet on one.
#[derive(Default)]
struct LineOwners(HashMap<usize, (usize, &'static str)>);

impl LineOwners {
    fn claim(&mut self, owner: usize, what: &'static str, p: usize, size: usize) {
        for line in lines(p, size) {
            let (first, first_what) = *self.0.entry(line).or_insert((owner, what));
            assert_eq!(
                first,
                owner,
                "cache line {:#x} holds a block of {} ({first_what}) and of {} ({what}, \
                 {p:#x}, {size} bytes)",
                line * LINE,
                name(first),
                name(owner)
            );
        }
    }
}

/// Blocks (address, size) each thread allocated while every other thread allocated too,
/// including every address its cache-thrash loop was handed.
fn concurrent_blocks(handed: Option<&[Mutex<Option<usize>>]>) -> Vec<Vec<(usize, usize)>> {
    let start = Barrier::new(THREADS);
    let done = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|tid| {
                let (start, done) = (&start, &done);
                s.spawn(move || {
                    if let Some(handed) = handed {
                        let p = handed[tid].lock().unwrap().take().expect("handed once");
                        // SAFETY: the main thread allocated `p` with `layout(SIZES[1])`
                        // and gave it to this thread alone.
                        unsafe { dealloc(p as *mut u8, layout(SIZES[1])) };
                    }
                    let mut mine = Vec::with_capacity(SIZES.len() * (BLOCKS + CHURN));
                    start.wait();
                    let mut live = Vec::with_capacity(SIZES.len() * BLOCKS);
                    for &size in &SIZES {
                        for _ in 0..BLOCKS {
                            // SAFETY: a nonzero size.
                            let p = unsafe { alloc(layout(size)) };
                            assert!(!p.is_null());
                            // Written as the benchmarks do: the line is really used.
                            // SAFETY: `p` is a live block of `size` bytes.
                            unsafe { p.write_bytes(tid as u8, size) };
                            mine.push((p as usize, size));
                            live.push((p, size));
                        }
                    }
                    for _ in 0..CHURN {
                        for &size in &SIZES {
                            // SAFETY: a nonzero size; freed at once with its layout.
                            unsafe {
                                let p = alloc(layout(size));
                                assert!(!p.is_null());
                                p.write_bytes(tid as u8, size);
                                mine.push((p as usize, size));
                                dealloc(p, layout(size));
                            }
                        }
                    }
                    // Nobody frees anything before everybody has allocated.
                    done.wait();
                    for (p, size) in live {
                        // SAFETY: allocated above with this layout, freed once.
                        unsafe { dealloc(p, layout(size)) };
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// cache-thrash: threads allocating at the same time never share a line.
#[test]
fn concurrent_threads_get_lines_of_their_own() {
    let blocks = concurrent_blocks(None);
    let mut owners = LineOwners::default();
    for (tid, mine) in blocks.iter().enumerate() {
        for &(p, size) in mine {
            owners.claim(tid, "its own block", p, size);
        }
    }
}

/// cache-scratch: a block the main thread allocated and another thread freed never
/// comes back to the freeing thread (nor to any other), so no thread's fresh blocks
/// share a line with the handed-over blocks of the others.
#[test]
fn remotely_freed_blocks_do_not_come_back_to_the_freer() {
    // Allocated back to back on the main thread, as Hoard's cache-scratch does: with
    // 8-byte blocks, several threads' handed blocks share each line.
    let handed_addresses: Vec<usize> = (0..THREADS)
        // SAFETY: a nonzero size.
        .map(|_| unsafe { alloc(layout(SIZES[1])) } as usize)
        .collect();
    assert!(handed_addresses.iter().all(|&p| p != 0));
    let handed: Vec<_> = handed_addresses
        .iter()
        .map(|&p| Mutex::new(Some(p)))
        .collect();
    let blocks = concurrent_blocks(Some(&handed));
    let mut owners = LineOwners::default();
    // The main thread's lines: its handed blocks stay its own (freed, not reused).
    for &p in &handed_addresses {
        owners.claim(MAIN, "a block the main thread handed over", p, SIZES[1]);
    }
    for (tid, mine) in blocks.iter().enumerate() {
        for &(p, size) in mine {
            owners.claim(tid, "its own block", p, size);
        }
    }
}
