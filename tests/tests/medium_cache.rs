//! Medium objects (above the small limit, up to 1 MiB; issue 16): a freed one stays in
//! its freeing thread's region cache and the next allocation of its class takes it back,
//! so the steady-state alloc/free pair (remote frees included) takes no region-table
//! writer lock; the cache gives its regions back when its thread exits and on `purge`,
//! stays within its byte bound, and hands out zeroed memory for `alloc_zeroed`. Each
//! check runs in a child process of its own, so the table's counters and the caches
//! are not shared with concurrently running tests.

use rangealloc::engine::large::cache::{MAX_BYTES, MEDIUM_MAX};
use rangealloc::engine::region::{RegionState, ARENAS};
use rangealloc::RangeAlloc;
use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::sync::mpsc::channel;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const KIB: usize = 1024;
/// Sizes spread over the medium range: just above the small limit, a few classes in the
/// middle, and the largest medium class.
const SIZES: [usize; 5] = [33 * KIB, 40 * KIB, 100 * KIB, 700 * KIB, MEDIUM_MAX];
/// Steady-state rounds of each check.
const ROUNDS: usize = 2_000;

fn layout(len: usize) -> Layout {
    Layout::from_size_align(len, 8).unwrap()
}

fn writer_acquisitions() -> u64 {
    rangealloc::stats().lock.writer
}

/// How many regions of exactly `len` bytes sit in a cache.
fn cached_of(len: usize) -> usize {
    let mut n = 0;
    ARENAS.for_each_region(|_, l, _, state| {
        if state == RegionState::Cached && l == len {
            n += 1;
        }
    });
    n
}

fn cached_regions() -> (usize, usize) {
    let (mut count, mut bytes) = (0, 0);
    ARENAS.for_each_region(|_, len, _, state| {
        if state == RegionState::Cached {
            count += 1;
            bytes += len;
        }
    });
    (count, bytes)
}

/// Allocates `len` bytes, writes the first and last byte, and returns the pointer.
///
/// # Safety
/// None beyond `alloc`'s; the caller frees the block with `layout(len)`.
unsafe fn touched(len: usize) -> *mut u8 {
    // SAFETY: nonzero size; both bytes lie in the block.
    unsafe {
        // `black_box`: LLVM may otherwise delete an allocation that is freed unread.
        let p = std::hint::black_box(alloc(layout(len)));
        assert!(!p.is_null());
        p.write(len as u8);
        p.add(len - 1).write(len as u8);
        p
    }
}

fn run(mode: &str) {
    let out = rangealloc_tests::run_child(mode, Some("purge_delay_ms=600000"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("PASSED {mode}")),
        "child {mode} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return; // only meaningful when spawned by `run`
    };
    match mode.as_str() {
        "local" => local_pairs(),
        "remote" => remote_pairs(),
        "exit" => exit_gives_back(),
        "purge" => purge_gives_back(),
        "bound" => bounded(),
        "zeroed" => zeroed(),
        "grown" => grown_not_cached(),
        "shrunk" => shrunk_not_cached(),
        "fork" => fork_mid_operation(),
        _ => panic!("unknown mode {mode}"),
    }
    println!("PASSED {mode}");
}

/// Alloc/free pairs of medium sizes on one thread, after one warm-up round, take the
/// table's writer mutex not once (before the cache, every allocation placed a region
/// under it).
#[test]
fn steady_state_medium_pairs_take_no_writer_lock() {
    run("local");
}

fn local_pairs() {
    let hits_before = rangealloc::stats().medium_cache.hits;
    // SAFETY: every block is freed once with its own layout.
    unsafe {
        for len in SIZES {
            dealloc(touched(len), layout(len));
        }
        let writers = writer_acquisitions();
        for _ in 0..ROUNDS {
            let blocks = SIZES.map(|len| touched(len));
            for (p, len) in blocks.into_iter().zip(SIZES) {
                assert_eq!(p.read(), len as u8);
                dealloc(p, layout(len));
            }
        }
        assert_eq!(
            writer_acquisitions() - writers,
            0,
            "steady-state medium pairs took the table's writer mutex"
        );
    }
    let hits = rangealloc::stats().medium_cache.hits - hits_before;
    assert!(hits >= (ROUNDS * SIZES.len()) as u64, "{hits} cache hits");
}

/// Two threads hand each other every block they allocate and free what they receive
/// (all frees remote): each thread's cache fills with the other's blocks and serves its
/// own next allocations, so the steady state takes no writer lock either.
#[test]
fn remote_frees_take_no_writer_lock() {
    run("remote");
}

fn remote_pairs() {
    let (to_peer, from_main) = channel::<usize>();
    let (to_main, from_peer) = channel::<usize>();
    let (warm, warmed) = channel::<()>();
    let (go, start) = channel::<()>();
    // One round: allocate every size, send them, free the blocks received.
    fn round(send: &std::sync::mpsc::Sender<usize>, recv: &std::sync::mpsc::Receiver<usize>) {
        for len in SIZES {
            // SAFETY: freed by the receiver with `layout(len)`.
            send.send(unsafe { touched(len) } as usize).unwrap();
        }
        for len in SIZES {
            let p = recv.recv().unwrap() as *mut u8;
            // SAFETY: a live block of `len` bytes from the peer, freed once.
            unsafe {
                assert_eq!(p.add(len - 1).read(), len as u8);
                dealloc(p, layout(len));
            }
        }
    }
    let peer = std::thread::spawn(move || {
        round(&to_main, &from_main);
        warm.send(()).unwrap();
        start.recv().unwrap();
        for _ in 0..ROUNDS {
            round(&to_main, &from_main);
        }
    });
    round(&to_peer, &from_peer);
    warmed.recv().unwrap();
    let writers = writer_acquisitions();
    go.send(()).unwrap();
    for _ in 0..ROUNDS {
        round(&to_peer, &from_peer);
    }
    peer.join().unwrap();
    // Thread exit empties the peer's cache (no writer lock either: retiring is
    // lock-free); spawning and joining a thread takes none.
    assert_eq!(
        writer_acquisitions() - writers,
        0,
        "steady-state remote frees of medium blocks took the table's writer mutex"
    );
}

/// A thread that cached regions gives them all back when it exits.
#[test]
fn an_exiting_thread_gives_its_cached_regions_back() {
    run("exit");
}

fn exit_gives_back() {
    std::thread::spawn(|| {
        // SAFETY: freed once with their layouts.
        unsafe {
            let blocks = SIZES.map(|len| touched(len));
            for (p, len) in blocks.into_iter().zip(SIZES) {
                dealloc(p, layout(len));
            }
        }
        let (count, _) = cached_regions();
        assert!(count >= SIZES.len(), "{count} regions cached");
    })
    .join()
    .unwrap();
    assert_eq!(cached_regions(), (0, 0));
    assert_eq!(rangealloc::stats().regions.cached_bytes, 0);
}

/// `purge` empties every thread's cache, an idle thread's included.
#[test]
fn purge_empties_idle_threads_caches() {
    run("purge");
}

fn purge_gives_back() {
    let (done, cached) = channel::<()>();
    let (resume, idle) = channel::<()>();
    let peer = std::thread::spawn(move || {
        // SAFETY: freed once with their layouts.
        unsafe {
            let blocks = SIZES.map(|len| touched(len));
            for (p, len) in blocks.into_iter().zip(SIZES) {
                dealloc(p, layout(len));
            }
        }
        done.send(()).unwrap();
        idle.recv().unwrap();
        // The cache still works after the purge emptied it.
        // SAFETY: freed once with its layout.
        unsafe { dealloc(touched(SIZES[2]), layout(SIZES[2])) };
    });
    cached.recv().unwrap();
    assert!(cached_regions().0 >= SIZES.len());
    rangealloc::purge();
    assert_eq!(cached_regions(), (0, 0));
    assert_eq!(rangealloc::stats().regions.cached_bytes, 0);
    resume.send(()).unwrap();
    peer.join().unwrap();
}

/// However many medium objects a thread frees at once, its cache holds at most
/// `MAX_BYTES`; the rest go back to the table.
#[test]
fn a_thread_caches_at_most_its_byte_bound() {
    run("bound");
}

fn bounded() {
    const OBJECTS: usize = 64;
    // SAFETY: freed once with their layouts.
    unsafe {
        let blocks: Vec<*mut u8> = (0..OBJECTS).map(|_| touched(MEDIUM_MAX)).collect();
        for p in blocks {
            dealloc(p, layout(MEDIUM_MAX));
        }
    }
    let (count, bytes) = cached_regions();
    assert!(count > 0, "nothing cached");
    assert!(bytes <= MAX_BYTES, "{bytes} bytes cached");
    assert!(rangealloc::stats().medium_cache.evicted >= (OBJECTS - count) as u64);
}

/// A region taken back from the cache for `alloc_zeroed` is zero, though its last
/// owner wrote every byte.
#[test]
fn a_cached_region_is_zeroed_for_alloc_zeroed() {
    run("zeroed");
}

fn zeroed() {
    let len = 100 * KIB;
    // SAFETY: each block is used within `len` bytes and freed once.
    unsafe {
        let p = std::hint::black_box(alloc(layout(len)));
        p.write_bytes(0xab, len);
        dealloc(p, layout(len));
        let hits = rangealloc::stats().medium_cache.hits;
        let q = alloc_zeroed(layout(len));
        assert_eq!(
            rangealloc::stats().medium_cache.hits,
            hits + 1,
            "not a cache hit"
        );
        let usable = rangealloc::usable_size(q);
        assert!(usable >= len);
        let bytes = std::slice::from_raw_parts(q, usable);
        assert!(
            bytes.iter().all(|&b| b == 0),
            "a recycled region was not zeroed"
        );
        dealloc(q, layout(len));
    }
}

/// A buffer that reaches a class only by growing with `realloc` (as a `Vec` does) is not
/// cached when freed while no thread allocates that class directly: its region goes
/// back to the table as dirty free space, where the next growing buffer is placed and
/// grows without faults. (Caching them cost `realloc-growth` 5x the faults and 4x the
/// peak RSS: regions nobody took back sat between the dirty free ranges and left them
/// no room to grow into.) Once a thread allocates the class, freed ones are cached.
#[test]
fn regions_reached_only_by_realloc_growth_are_not_cached() {
    run("grown");
}

fn grown_not_cached() {
    const START: usize = 64 * KIB;
    const END: usize = 512 * KIB;
    // SAFETY: each block is used within its current size and freed once with it.
    unsafe {
        for _ in 0..4 {
            let mut p = touched(START);
            let mut len = START;
            while len < END {
                p = std::alloc::realloc(p, layout(len), len * 2);
                assert!(!p.is_null());
                len *= 2;
                p.add(len - 1).write(1);
            }
            assert_eq!(rangealloc::usable_size(p), END);
            dealloc(p, layout(END));
        }
        assert_eq!(cached_of(END), 0, "a region grown by realloc was cached");
        // The class allocated directly is cached as before.
        dealloc(touched(END), layout(END));
        assert_eq!(
            cached_of(END),
            1,
            "a directly allocated region was not cached"
        );
    }
}

/// A big buffer shrunk in place to a medium size and then freed is retired, not cached:
/// its freed tail lies right after it, and only a retire lets the two merge back into one
/// free range (the region workload: buffers grown to many MiB, shrunk to a quarter, freed
/// by another thread; cached stubs kept every buffer's old range split, so the next
/// buffer grew into fresh pages, 269 MiB peak against jemalloc's 147 at 2 threads).
#[test]
fn regions_shrunk_in_place_are_not_cached() {
    run("shrunk");
}

fn shrunk_not_cached() {
    // Below huge-page sizes (4 MiB): a shrink from there moves out of huge-page space
    // (a new region, no stub left) when huge pages are on.
    const BIG: usize = 2 * MEDIUM_MAX;
    const STUB: usize = MEDIUM_MAX / 4;
    // SAFETY: each block is used within its current size and freed once with it.
    unsafe {
        // The class is in demand (allocated directly, freed, taken back).
        dealloc(touched(STUB), layout(STUB));
        let again = touched(STUB);
        for _ in 0..4 {
            let p = touched(BIG);
            let p = std::alloc::realloc(p, layout(BIG), STUB);
            assert!(!p.is_null());
            assert_eq!(rangealloc::usable_size(p), STUB, "shrunk in place");
            dealloc(p, layout(STUB));
        }
        assert_eq!(cached_of(STUB), 0, "a region shrunk in place was cached");
        dealloc(again, layout(STUB));
        assert_eq!(
            cached_of(STUB),
            1,
            "a directly allocated region was not cached"
        );
    }
}

/// A `fork` that lands while another thread is between a cache operation's steps (a
/// region already `Cached` but not yet in a bin, or taken from a bin but not yet live)
/// leaves the child no region that is `Cached` outside every cache: after `purge`
/// empties the child's caches, none is left.
///
/// At fb5dfd0 98 of 200 children kept one; taking a region back under the cache lock
/// left 36 (cb46110), and 74 at 347a857 on a loaded machine: a free makes its region
/// `Cached` (under the region's read lock) before it takes the cache lock, and a fork
/// between the two leaves the region in no bin. The fork child now retires every
/// `Cached` region no cache holds (`large::cache::after_fork_in_child`).
#[test]
fn a_fork_child_keeps_no_region_cached_outside_a_cache() {
    run("fork");
}

fn fork_mid_operation() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const FORKS: usize = 200;
    const LEN: usize = 100 * KIB;
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: freed once with its layout.
                unsafe { dealloc(touched(LEN), layout(LEN)) };
            }
        })
    };
    let mut leaked = 0;
    for _ in 0..FORKS {
        // SAFETY: the child only purges, walks the table and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            rangealloc::purge();
            let ok = cached_regions().0 == 0;
            // SAFETY: _exit skips destructors and atexit handlers: fine in a test child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status}");
        if libc::WEXITSTATUS(status) != 0 {
            leaked += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert_eq!(
        leaked, 0,
        "{leaked} of {FORKS} fork children kept a cached region outside every cache"
    );
}
