//! What a new thread's first allocations cost in page faults: its heap, its first
//! small-object segment, its home arena's descriptor and metadata, and the stack our code
//! uses. Issue 14's big-buffers at 8 threads paid about 20 faults a thread for these, more
//! than half of them on the arena's static descriptor (37 KiB, of which a thread's first
//! placement touched 8-9 pages: counters sharded one kilobyte apart, a 16 KiB huge-space
//! map, list heads 2 KiB apart). Counted per thread (`RUSAGE_THREAD`), so other threads
//! do not disturb it; the process's one-time set-up runs on the main thread first. (A
//! file of its own, so that no other test's threads take arena tickets meanwhile.)

use rangealloc::RangeAlloc;
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

/// New threads measured, one after another, each kept alive: each takes a ticket no live
/// thread holds, so with four arenas per CPU each of them sets up an arena of its own on
/// a 2-core machine.
const THREADS: usize = 6;

/// Faults a thread's first small and big allocation (and their frees) may cost, on
/// average over the threads. Measured on the 2-core VM (kernel 6.18), four runs each:
/// 13.7-14.0 with the arena descriptor as it was (11-18 a thread), 10.2-10.3 with
/// bbfault13's layout (8-13), 7.8-8.3 with a new segment's descriptors written lazily
/// too (6-11). The first thread pays a few more (the process's first thread-exit hook
/// and collector work).
const MAX_FAULTS_PER_THREAD: u64 = 10;

fn thread_faults() -> u64 {
    rangealloc_tests::minor_faults(libc::RUSAGE_THREAD)
}

/// Writes 128 KiB of this thread's stack.
#[inline(never)]
fn touch_stack() {
    let mut frame = [0u8; 128 << 10];
    for i in (0..frame.len()).step_by(4096) {
        frame[i] = 1;
    }
    std::hint::black_box(&mut frame);
}

/// One small and one big allocation (the big one in huge-page space, never touched) and
/// their frees.
fn first_allocations() {
    let small = Layout::from_size_align(64, 16).unwrap();
    let big = Layout::from_size_align(6 << 20, 16).unwrap();
    // SAFETY: valid non-zero layouts; both freed with them below.
    unsafe {
        let (p, q) = (A.alloc(small), A.alloc(big));
        assert!(!p.is_null() && !q.is_null());
        p.write(1);
        A.dealloc(q, big);
        A.dealloc(p, small);
    }
}

#[test]
fn a_new_thread_touches_few_pages_for_its_first_allocations() {
    // The process's set-up (metadata arena, collector, options) on this thread, outside
    // the count.
    first_allocations();
    // Each measured thread stays alive (holding its arena ticket) until all are
    // measured: a thread that exited would hand its ticket, and its arena, to the next.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
    let mut held = Vec::new();
    let each: Vec<u64> = (0..THREADS)
        .map(|_| {
            let (faults_tx, faults_rx) = std::sync::mpsc::channel();
            let done_rx = done_rx.clone();
            held.push(std::thread::spawn(move || {
                // The stack our calls may reach, faulted outside the count: a debug
                // build's frames are deeper than a release build's (review13b M1).
                touch_stack();
                let before = thread_faults();
                first_allocations();
                faults_tx.send(thread_faults() - before).unwrap();
                // Disconnected (all measured) ends the wait.
                let _ = done_rx.lock().unwrap().recv();
            }));
            faults_rx.recv().unwrap()
        })
        .collect();
    drop(done_tx);
    for thread in held {
        thread.join().unwrap();
    }
    eprintln!("page faults of each new thread's first allocations: {each:?}");
    let total: u64 = each.iter().sum();
    assert!(
        total <= MAX_FAULTS_PER_THREAD * THREADS as u64,
        "new threads' first allocations cost {total} page faults ({each:?}); at most \
         {MAX_FAULTS_PER_THREAD} a thread on average expected"
    );
}
