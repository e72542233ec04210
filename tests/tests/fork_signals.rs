//! `fork` from a multithreaded process, repeatedly, while other threads allocate: the
//! child can allocate, free (including blocks of threads that no longer exist in it)
//! and exit cleanly. Signals arriving during allocation (handlers that do not allocate,
//! as POSIX requires: malloc is not async-signal-safe, here as in glibc) disturb nothing.

use rangealloc::engine;
use rangealloc::RangeAlloc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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

#[test]
fn fork_from_a_multithreaded_process_repeatedly() {
    // The fork handlers are registered by the C shim; a Rust program registers them
    // itself (as a Rust runtime embedding us would).
    extern "C" fn prepare() {
        engine::fork_prepare()
    }
    extern "C" fn parent() {
        engine::fork_parent()
    }
    extern "C" fn child() {
        engine::fork_child()
    }
    // SAFETY: registering plain extern "C" functions.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };

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
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
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
