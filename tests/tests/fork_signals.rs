//! `fork` from a multithreaded process, repeatedly, while other threads allocate: the
//! child can allocate, free (including blocks of threads that no longer exist in it)
//! and exit cleanly, and reclaims the region table's metadata even though a thread was
//! pinned in the epoch when the process forked. Signals arriving during allocation
//! (handlers that do not allocate, as POSIX requires: malloc is not async-signal-safe,
//! here as in glibc) disturb nothing.

use rangealloc::engine;
use rangealloc::RangeAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Once};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

fn churn(stop: Arc<AtomicBool>, seed: usize) -> Vec<Vec<u8>> {
    let mut keep = Vec::new();
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) {
        i = i.wrapping_mul(6364136223846793005).wrapping_add(1);
        let v = vec![(i >> 33) as u8; (i >> 40) % 70_000];
        if keep.len() < 200 {
            keep.push(v);
        } else {
            keep[(i >> 20) % 200] = v;
        }
    }
    keep
}

/// The engine registers its fork handlers itself on its first allocation (see
/// `fork_rust.rs`). These tests register them a second time, as Rust programs had to
/// before the engine did: the handlers must nest (only the outermost pair locks and
/// releases), or `fork_prepare` would spin on its own locks.
fn register_fork_handlers() {
    extern "C" fn prepare() {
        engine::fork_prepare()
    }
    extern "C" fn parent() {
        engine::fork_parent()
    }
    extern "C" fn child() {
        engine::fork_child()
    }
    static ONCE: Once = Once::new();
    // SAFETY: registering plain extern "C" functions.
    ONCE.call_once(|| unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    });
}

/// Waits for our own child and returns its wait status.
fn wait_for(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    // SAFETY: waiting for our own child; retried when a signal (the other test's timer)
    // interrupts the wait.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR)
        );
    }
    status
}

#[test]
fn fork_from_a_multithreaded_process_repeatedly() {
    register_fork_handlers();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || churn(stop, t))
        })
        .collect();
    let shared: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 1000 + i * 500]).collect();
    for round in 0..30 {
        // SAFETY: the child only allocates, frees and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut ok = shared
                .iter()
                .enumerate()
                .all(|(i, v)| v.iter().all(|&b| b == i as u8));
            let mut fresh: Vec<Vec<u8>> = (0..2000).map(|i| vec![3u8; i % 5000 + 1]).collect();
            fresh.extend((0..20).map(|_| vec![4u8; 1 << 20]));
            ok &= fresh.iter().all(|v| v.iter().all(|&b| b == 3 || b == 4));
            drop(fresh);
            drop(shared);
            let threaded =
                std::thread::spawn(|| vec![5u8; 100_000].iter().map(|&b| b as u64).sum::<u64>());
            ok &= threaded.join().map(|s| s == 500_000).unwrap_or(false);
            // SAFETY: _exit skips destructors and atexit handlers: fine in a test child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let status = wait_for(pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child of round {round} failed: status {status:#x}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
}

/// States of the thread `pinned_at_fork` holds in the epoch.
const NOT_YET: u8 = 0;
const PINNED: u8 = 1;
const RELEASED: u8 = 2;
/// What the child's metadata may grow by over its cycles: each cycle's garbage is a few
/// KiB, so with the epoch stuck 30K cycles leave tens of MiB; reclaimed, well under 1 MiB.
const GROWTH_BOUND: usize = 4 << 20;

#[test]
fn a_fork_child_reclaims_table_metadata_though_a_thread_was_pinned_at_fork() {
    register_fork_handlers();
    // A thread is pinned in the region table's epoch whenever it is on the lock-free
    // lookup path (every large free), inside an update, or waiting for the metadata lock
    // after one (which `fork_prepare` holds). Here one stays pinned until after the fork,
    // so the fork lands at that moment every time; in the child that thread is gone but
    // its registration still reads pinned.
    static STATE: AtomicU8 = AtomicU8::new(NOT_YET);
    let pinned = std::thread::spawn(|| {
        let _inside = engine::thread::Reentrancy::enter();
        let _guard = engine::region::epoch::pin();
        STATE.store(PINNED, Ordering::Release);
        while STATE.load(Ordering::Acquire) != RELEASED {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || churn(stop, 100 + t))
        })
        .collect();
    while STATE.load(Ordering::Acquire) != PINNED {
        std::thread::yield_now();
    }
    // SAFETY: the child allocates, frees and calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // Large objects: each allocation is a table update, whose replaced tree nodes
        // and detached descriptors wait one grace period in metadata memory.
        const WARM_UP: usize = 2_000;
        const CYCLES: usize = 30_000;
        // No panics here: the child would unwind into a copy of the test harness.
        let mut ok = true;
        let mut cycle = |i: usize| {
            let size = 256 << 10 | (i % 8) << 12;
            // SAFETY: a valid, non-zero layout; the block is freed at once.
            unsafe {
                let layout = Layout::from_size_align_unchecked(size, 16);
                let p = A.alloc(layout);
                ok &= !p.is_null();
                if !p.is_null() {
                    p.write(i as u8);
                    A.dealloc(p, layout);
                }
            }
        };
        (0..WARM_UP).for_each(&mut cycle);
        let before = engine::meta::stats().in_use;
        (WARM_UP..WARM_UP + CYCLES).for_each(&mut cycle);
        let after = engine::meta::stats().in_use;
        // What waits for a grace period is a few hundred updates' worth, not a number
        // that grows with the updates.
        let grown = after.saturating_sub(before);
        if grown >= GROWTH_BOUND {
            ok = false;
            let message = format!(
                "metadata in use grew by {} KiB over {CYCLES} large alloc/free cycles\n",
                grown >> 10
            );
            // SAFETY: writing our own buffer to stderr (the harness captures `eprintln`,
            // and the child ends without handing its capture back).
            unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
        }
        // SAFETY: _exit skips destructors and atexit handlers: fine in a test child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    STATE.store(RELEASED, Ordering::Release);
    let status = wait_for(pid);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    pinned.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child leaked its table metadata: status {status:#x}"
    );
}

static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn signals_during_allocation_do_not_disturb_it() {
    // SAFETY: installing a handler that only bumps an atomic, and a 100 us timer.
    unsafe {
        libc::signal(
            libc::SIGALRM,
            on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        let t = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 100,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: 100,
            },
        };
        libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || churn(stop, 7))
    };
    let mut total = 0usize;
    for i in 0..60_000usize {
        let v = vec![i as u8; i % 3000 + (i % 97) * 1000];
        total += v.len();
        assert!(v.iter().all(|&b| b == i as u8));
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    // SAFETY: stopping the timer.
    unsafe {
        let t: libc::itimerval = std::mem::zeroed();
        libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut());
    }
    assert!(total > 0);
    assert!(
        SIGNALS.load(Ordering::Relaxed) > 10,
        "the timer never fired"
    );
}
