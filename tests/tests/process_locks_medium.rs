//! Issue 16: the medium sizes' churn takes no process-wide lock in steady state. As the
//! `medium` workload (bench): each thread keeps a ring of objects of log-uniform sizes
//! from 16 KiB to 2 MiB with their first and last lines written, replaces the oldest
//! (one in four freed by the next thread), and grows one object in eight by half with
//! `realloc` (while it stays below `large::HUGE_OBJECT_MIN`: bigger objects are big
//! ones, whose moves in huge-page space `mremap` by design, issue 14). Warmed up, a
//! measured phase counts the process-wide locks taken on the large-object path
//! (`stats::REGION_PATH_PROCESS_LOCKS`: the metadata lock, `mmap_lock` writers). By
//! default (session 17 on) there are none: a medium object that cannot grow in place is
//! copied sparsely (`sparse_moves`: only its pages that hold bytes, found by
//! `os::pagemap`, no `mmap_lock` writer) or, when more than `SPARSE_MAX_PAGES` pages
//! hold bytes (0-4 of ~500 moves, often earlier owners' lines in reused space), copied
//! whole (`medium_remap` off). With `sparse_moves=0` every move copies whole, also
//! without a lock. With `medium_remap=1,sparse_moves=0`, the default until session 16,
//! each move carries its pages with `mremap`, one `mmap_lock` writer each (992-1,189
//! in the phase): counted, and the only locks there are. On 6.13 and 6.14, whose scans
//! cannot name guard markers, dense moves carry their pages by default too: the test
//! says so. (A file of its own: the counters are process-wide, and `process_locks.rs`
//! counts its own phase.)

use rangealloc::engine::large::HUGE_OBJECT_MIN;
use rangealloc::engine::os::pagemap;
use rangealloc::engine::stats::{REGION_PATH_DEPENDENCY_LOCKS, REGION_PATH_PROCESS_LOCKS};
use rangealloc::{RangeAlloc, Syscall};
use rangealloc_tests::phases::{Inbox, Phases};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;

/// No timed purge pass during the test (as in `process_locks.rs`); the move options as
/// the environment sets them (the defaults in the first child).
#[global_allocator]
static A: RangeAlloc = RangeAlloc::with_options("purge_delay_ms=100000000");

const THREADS: usize = 4;
const RING: usize = 32;
const OPS: usize = 2000;
/// Phases of `OPS` replacements per thread; all but the last warm up.
const PHASES: usize = 4;
const MIN_SIZE: usize = 16 << 10;
const MAX_SIZE: usize = 2 << 20;
const LINE: usize = 64;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A log-uniform size in `[MIN_SIZE, MAX_SIZE]`.
fn size_of(seed: &mut u64) -> usize {
    let (lo, hi) = ((MIN_SIZE as f64).ln(), (MAX_SIZE as f64).ln());
    let u = (next(seed) >> 11) as f64 / (1u64 << 53) as f64;
    ((lo + u * (hi - lo)).exp() as usize).clamp(MIN_SIZE, MAX_SIZE)
}

/// Writes the first and last lines of the object with `tag`.
///
/// # Safety
/// `p` is live with `size` bytes.
unsafe fn stamp(p: *mut u8, size: usize, tag: u8) {
    // SAFETY: caller contract; `size` is at least two lines.
    unsafe {
        p.write_bytes(tag, LINE);
        p.add(size - LINE).write_bytes(tag, LINE);
    }
}

/// Checks the first line (kept by every `realloc`).
///
/// # Safety
/// `p` is live with at least a line.
unsafe fn check(p: *const u8, tag: u8) {
    // SAFETY: caller contract.
    assert!(
        (0..LINE).all(|i| unsafe { *p.add(i) } == tag),
        "content lost"
    );
}

fn new_object(seed: &mut u64) -> (usize, usize) {
    let size = size_of(seed);
    // SAFETY: a valid non-zero layout.
    let p = unsafe { A.alloc(layout(size)) };
    assert!(!p.is_null());
    // SAFETY: live, `size` bytes.
    unsafe { stamp(p, size, size as u8) };
    (p as usize, size)
}

/// One thread's share of a phase.
fn phase(ring: &mut [(usize, usize)], seed: &mut u64, outbox: &Inbox) {
    for op in 0..OPS {
        let i = op % RING;
        let (p, size) = ring[i];
        // SAFETY: every object in the ring is live with its recorded size and tag.
        unsafe {
            check(p as *const u8, size as u8);
            if op % 4 == 3 {
                outbox.lock().unwrap().push((p, size));
            } else {
                A.dealloc(p as *mut u8, layout(size));
            }
        }
        ring[i] = new_object(seed);
        if op % 8 == 7 {
            let j = (next(seed) % RING as u64) as usize;
            let (p, size) = ring[j];
            let new = size + size / 2;
            if new >= HUGE_OBJECT_MIN {
                continue;
            }
            // SAFETY: live with `size` bytes; `q` live with `new`.
            unsafe {
                let q = A.realloc(p as *mut u8, layout(size), new);
                assert!(!q.is_null());
                check(q, size as u8);
                check(q.add(size - LINE), size as u8);
                stamp(q, new, new as u8);
                ring[j] = (q as usize, new);
            }
        }
    }
}

/// By default, and with whole copies only: no process-wide lock in the measured phase.
/// With moves by `mremap`: none but theirs. Each setting in a child process of its own
/// (the counters are process-wide).
#[test]
fn steady_state_medium_churn_takes_no_process_wide_lock() {
    rangealloc_tests::run_child_passing("default", "");
    rangealloc_tests::run_child_passing("copy", "sparse_moves=0");
    rangealloc_tests::run_child_passing("remap", "sparse_moves=0,medium_remap=1");
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return; // only meaningful when spawned by the test above
    };
    churn_and_count(&mode);
    println!("PASSED {mode}");
}

fn churn_and_count(mode: &str) {
    let options = rangealloc::engine::options::get();
    let (sparse_moves, medium_remap) = match mode {
        "default" => (true, false),
        "copy" => (false, false),
        "remap" => (false, true),
        _ => panic!("unknown mode {mode}"),
    };
    assert_eq!(
        (options.sparse_moves, options.medium_remap),
        (sparse_moves, medium_remap)
    );
    let phases = Arc::new(Phases::new(THREADS, PHASES, OPS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let phases = phases.clone();
            std::thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                let mut ring: Vec<(usize, usize)> =
                    (0..RING).map(|_| new_object(&mut seed)).collect();
                phases.work(
                    t,
                    |outbox| phase(&mut ring, &mut seed, outbox),
                    // SAFETY: handed over live by the previous thread, freed once.
                    |p, size| unsafe {
                        check(p as *const u8, size as u8);
                        A.dealloc(p as *mut u8, layout(size));
                    },
                );
                for (p, size) in ring {
                    // SAFETY: live, freed once.
                    unsafe { A.dealloc(p as *mut u8, layout(size)) };
                }
            })
        })
        .collect();
    let count = || {
        (
            REGION_PATH_PROCESS_LOCKS.get(),
            REGION_PATH_DEPENDENCY_LOCKS.get(),
            rangealloc::syscall_counts(),
            rangealloc::stats().reallocs.sparse,
        )
    };
    let (
        (locks_before, dependency_before, counts_before, sparse_before),
        (locks_after, dependency_after, counts, sparse_after),
    ) = phases.measure_last(count);
    let locks = locks_after - locks_before;
    let sparse = sparse_after - sparse_before;
    let remaps = counts.get(Syscall::Mremap) - counts_before.get(Syscall::Mremap);
    let dependency = dependency_after - dependency_before;
    for w in workers {
        w.join().unwrap();
    }
    let calls: Vec<String> = Syscall::ALL
        .iter()
        .map(|&c| format!("{} {}", c.name(), counts.get(c) - counts_before.get(c)))
        .collect();
    eprintln!(
        "measured phase: {locks} process-wide locks, {dependency} by crossbeam-epoch, \
         {sparse} sparse copies; syscalls: {}",
        calls.join(", ")
    );
    assert_eq!(dependency, 0, "crossbeam's allocations took {dependency}");
    // Every process-wide lock is a move's `mremap`, and only moves by `mremap` take
    // them.
    let ours = locks - remaps;
    assert_eq!(
        ours,
        0,
        "{ours} process-wide locks besides moves' mremap ({})",
        calls.join(", ")
    );
    if medium_remap {
        assert!(remaps > 0, "no move carried its pages with mremap");
        assert_eq!(sparse, 0, "sparse copies with the option off");
        return;
    }
    if !pagemap::sees_guards() {
        // 6.13, 6.14, or no `PAGEMAP_SCAN` answered where guard markers exist: a copy
        // could fault on one nobody can see, so dense moves carry their pages.
        eprintln!("guard markers the kernel cannot name here: dense moves mremap");
        return;
    }
    assert_eq!(
        remaps, 0,
        "{remaps} moves took mmap_lock for write by mremap"
    );
    if !sparse_moves {
        assert_eq!(sparse, 0, "sparse copies with the option off");
    } else if pagemap::scans() {
        assert!(sparse > 0, "no move was a sparse copy");
    } else {
        eprintln!("no PAGEMAP_SCAN here (before Linux 6.7): every move copied whole");
    }
}
