//! Fork safety for a Rust program whose global allocator is `RangeAlloc` and which
//! registers nothing itself: the engine must install its own `pthread_atfork` handlers
//! (issue 13, item 9). Before it did, a child forked while another thread held the
//! region table's writer mutex or the metadata lock inherited the held lock and hung on
//! its first large allocation.
//!
//! The parent forks `FORKS` times while `WORKERS` threads allocate and free small and
//! large blocks; each child allocates small and large blocks, frees them, every
//! `THREAD_EVERY`th child starts a thread that allocates too, and exits 0. The parent
//! waits for each child with a deadline: a child that has not exited by then is killed
//! and the test fails, naming the round.

use rangealloc::RangeAlloc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

/// The reproduction: 300 forks beside four allocating threads (81 children hung).
const FORKS: usize = 300;
const WORKERS: usize = 4;
/// A healthy child finishes in milliseconds; 20 s leaves room for a 2-core machine
/// shared with several parallel builds, and a hung child never finishes at all.
const CHILD_DEADLINE: Duration = Duration::from_secs(20);
/// How often the parent polls a child that has not exited yet.
const POLL: Duration = Duration::from_millis(2);
/// Every this many children also start a thread (its first allocation adopts a heap).
const THREAD_EVERY: usize = 3;
/// Above the small-object limit: every allocation of this size is a region-table update
/// under the writer mutex, the lock a child must never inherit held.
const LARGE: usize = 256 << 10;

/// A big object grown far past the free space after it: it moves by `mremap`
/// (`large::REMAP_MIN`), a table update that also calls into the kernel. True when its
/// first and last bytes came through.
fn remap_move(tag: u8) -> bool {
    const FROM: usize = 4 << 20;
    const TO: usize = 80 << 20;
    let layout = std::alloc::Layout::from_size_align(FROM, 8).unwrap();
    // SAFETY: used within its lengths, freed once with its last layout.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            return false;
        }
        p.write(tag);
        p.add(FROM - 1).write(tag);
        let q = std::alloc::realloc(p, layout, TO);
        if q.is_null() {
            return false;
        }
        let ok = q.read() == tag && q.add(FROM - 1).read() == tag;
        std::alloc::dealloc(q, std::alloc::Layout::from_size_align(TO, 8).unwrap());
        ok
    }
}

/// Small and large blocks allocated, checked and freed, with a bounded live set, and
/// now and then a big object moved by `mremap`.
fn churn(stop: Arc<AtomicBool>, seed: usize) {
    let mut live: Vec<Vec<u8>> = Vec::with_capacity(64);
    let mut i = seed.wrapping_mul(0x9e37_79b9) | 1;
    while !stop.load(Ordering::Relaxed) {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let size = if (i >> 60) < 3 {
            LARGE + (((i >> 20) % 64) << 12)
        } else {
            (i >> 33) % 2048 + 1
        };
        if (i >> 56) == 0 {
            assert!(
                remap_move((i >> 40) as u8),
                "a moved object lost its content"
            );
        }
        let v = vec![(i >> 40) as u8; size];
        let slot = (i >> 24) % 64;
        if live.len() < 64 {
            live.push(v);
        } else {
            let old = std::mem::replace(&mut live[slot], v);
            assert!(old.iter().all(|&b| b == old[0]), "a block lost its content");
        }
    }
}

/// What a child does: allocations of both kinds, freed again; optionally from a new
/// thread too. Returns false when a block came back wrong. No panics (the child would
/// unwind into a copy of the test harness).
fn child_work(start_thread: bool) -> bool {
    let mut ok = true;
    let small: Vec<Vec<u8>> = (0..500).map(|i| vec![i as u8; i % 700 + 1]).collect();
    let large: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; LARGE << (i % 3)]).collect();
    for (i, v) in small.iter().enumerate() {
        ok &= v.iter().all(|&b| b == i as u8);
    }
    for (i, v) in large.iter().enumerate() {
        ok &= v.iter().all(|&b| b == i as u8);
    }
    drop(small);
    drop(large);
    ok &= remap_move(0x5a);
    if start_thread {
        let t = std::thread::spawn(|| {
            let small: Vec<Box<[u8; 48]>> = (0..1000).map(|_| Box::new([7u8; 48])).collect();
            let large = vec![9u8; LARGE * 2];
            small.iter().all(|b| b.iter().all(|&x| x == 7)) && large.iter().all(|&x| x == 9)
        });
        ok &= t.join().unwrap_or(false);
    }
    ok
}

/// How a child ended.
enum Outcome {
    Exited(libc::c_int),
    Signalled(libc::c_int),
    Hung,
}

/// Waits for our child `pid` until `CHILD_DEADLINE`; a child still running then is
/// killed (and reaped) and reported hung.
fn wait_with_deadline(pid: libc::pid_t) -> Outcome {
    let deadline = Instant::now() + CHILD_DEADLINE;
    loop {
        let mut status = 0;
        // SAFETY: polling our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Outcome::Exited(libc::WEXITSTATUS(status));
            }
            return Outcome::Signalled(libc::WTERMSIG(status));
        }
        assert!(
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR),
            "waitpid failed"
        );
        if Instant::now() >= deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Outcome::Hung;
        }
        std::thread::sleep(POLL);
    }
}

#[test]
fn a_rust_program_forks_while_threads_allocate_and_every_child_finishes() {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || churn(stop, t + 1))
        })
        .collect();
    let mut failure = None;
    for round in 0..FORKS {
        // SAFETY: the child only allocates, frees, starts a thread and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = child_work(round % THREAD_EVERY == 0);
            // SAFETY: _exit skips destructors and atexit handlers: fine in a test child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        match wait_with_deadline(pid) {
            Outcome::Exited(0) => {}
            Outcome::Exited(code) => failure = Some(format!("child {round} exited {code}")),
            Outcome::Signalled(sig) => failure = Some(format!("child {round} died of {sig}")),
            Outcome::Hung => {
                failure = Some(format!(
                    "child {round} hung (killed after {CHILD_DEADLINE:?})"
                ))
            }
        }
        if failure.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    if let Some(failure) = failure {
        panic!("{failure}");
    }
    assert!(
        rangealloc::stats().reallocs.remapped > 0,
        "the workers moved no object with mremap"
    );
}

/// Threads whose heaps the measurement below leaves in the parent.
const HEAP_THREADS: usize = 16;
/// Forks measured.
const MEASURED_FORKS: usize = 50;

/// Measurement, not a check (run with `--ignored --nocapture`): the minor page faults of
/// a child that calls `_exit` at once, as a child about to `exec` nearly does, while the
/// parent has `HEAP_THREADS` threads with heaps in several classes. Each write the
/// child's fork handler makes into a heap or segment of the parent is a copy-on-write
/// fault; the figure goes to BENCHMARKS.md.
#[test]
#[ignore]
fn measure_fork_child_faults() {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(std::sync::Barrier::new(HEAP_THREADS + 1));
    let threads: Vec<_> = (0..HEAP_THREADS)
        .map(|t| {
            let (stop, ready) = (stop.clone(), ready.clone());
            std::thread::spawn(move || {
                // Blocks of many classes, half freed locally, so every heap has pages
                // with both free lists in use.
                let mut kept: Vec<Vec<u8>> =
                    (0..4000).map(|i| vec![t as u8; 16 + i % 2000]).collect();
                for i in (0..kept.len()).step_by(2) {
                    kept[i] = Vec::new();
                }
                ready.wait();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                drop(kept);
            })
        })
        .collect();
    ready.wait();
    // SAFETY: getrusage with a valid out-pointer.
    let faults = || unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_minflt
    };
    let before = faults();
    for _ in 0..MEASURED_FORKS {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        assert!(matches!(wait_with_deadline(pid), Outcome::Exited(0)));
    }
    let per_child = (faults() - before) as f64 / MEASURED_FORKS as f64;
    println!(
        "fork child with {HEAP_THREADS} other threads' heaps in the parent: {per_child:.1} minor faults per child ({MEASURED_FORKS} forks)"
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}
