//! Cross-thread free stress (issue 13): 16 or more threads on the 2-core machine, each
//! allocating blocks of every small class and handing them round a ring of lock-free
//! queues to the next thread, which checks their content and frees them (a remote free),
//! while each thread also keeps a stash of its own blocks that it frees locally in
//! bursts (the local free that un-parks a full page while a remote freer is handing it
//! off). Threads yield at random so preemption lands inside the handshake windows. A
//! watchdog fails the run if no thread makes progress for `STALL_SECS` (a page pushed
//! twice on a pending stack makes its owner spin forever in `drain_pending`).
//!
//! CI runs it for `RANGEALLOC_STRESS_SECS` (default `CI_SECS`); the documented long run is
//! `cargo test --release -p rangealloc-tests --test remote_free_stress -- --ignored`
//! (10 minutes).

use rangealloc::RangeAlloc;
use rangealloc_tests::XorShift;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

/// Threads in the ring: eight per core, so most hand-offs cross a preemption.
const THREADS: usize = 16;
/// Seconds of the CI run: long enough for a few million remote frees on two cores.
const CI_SECS: u64 = 20;
/// Seconds of the `--ignored` run.
const LONG_SECS: u64 = 600;
/// A run fails if the total progress counter stands still this long.
const STALL_SECS: u64 = 60;
/// Blocks in flight between two neighbours: enough to fill many pages of each class, so
/// pages park full and remote frees must hand them back.
const QUEUE: usize = 4096;
/// Blocks a thread keeps for itself before freeing a burst of them locally.
const STASH: usize = 512;
/// The largest small object (`rangealloc_core::heap::SMALL_MAX`).
const SMALL_MAX: usize = 32 * 1024;

/// A single-producer, single-consumer ring of blocks (`ptr`, `len`), allocation-free.
struct Queue {
    slots: Box<[(AtomicUsize, AtomicUsize)]>,
    head: AtomicUsize,
    tail: AtomicUsize,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            slots: (0..QUEUE)
                .map(|_| (AtomicUsize::new(0), AtomicUsize::new(0)))
                .collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }

    fn push(&self, block: (usize, usize)) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        // Acquire pairs with the consumer's Release of `head`: the slot is free.
        if tail - self.head.load(Ordering::Acquire) == QUEUE {
            return false;
        }
        let slot = &self.slots[tail % QUEUE];
        slot.0.store(block.0, Ordering::Relaxed);
        slot.1.store(block.1, Ordering::Relaxed);
        // Release publishes the slot (and the block's content) to the consumer.
        self.tail.store(tail + 1, Ordering::Release);
        true
    }

    fn pop(&self) -> Option<(usize, usize)> {
        let head = self.head.load(Ordering::Relaxed);
        // Acquire pairs with the producer's Release of `tail`.
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        let slot = &self.slots[head % QUEUE];
        let block = (
            slot.0.load(Ordering::Relaxed),
            slot.1.load(Ordering::Relaxed),
        );
        self.head.store(head + 1, Ordering::Release);
        Some(block)
    }
}

/// A size in a random small class: every class from 1 byte to `SMALL_MAX` is reached,
/// smaller sizes more often (log-uniform).
fn random_size(rng: &mut XorShift) -> usize {
    let bits = 1 + rng.next() % 15; // 2^1 .. 2^15 = SMALL_MAX
    let size = 1 + (rng.next() as usize) % (1usize << bits);
    size.min(SMALL_MAX)
}

/// The word written at a block's first and last 8 bytes (and every 4 KiB between):
/// derived from its address and length, so a block handed to the wrong owner, freed
/// twice or overwritten by another block's use is caught.
fn stamp(ptr: usize, len: usize) -> u64 {
    (ptr as u64).rotate_left(17) ^ (len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Where the stamps go: multiples of 8, so two stamps never overlap.
fn stamp_offsets(len: usize) -> impl Iterator<Item = usize> {
    let last = (len - 8) & !7;
    (0..last).step_by(4096).chain(std::iter::once(last))
}

fn alloc_block(rng: &mut XorShift) -> (usize, usize) {
    let len = random_size(rng).max(8);
    let layout = std::alloc::Layout::from_size_align(len, 8).unwrap();
    // SAFETY: a non-zero size.
    let p = unsafe { std::alloc::alloc(layout) } as usize;
    assert_ne!(p, 0, "allocation of {len} bytes failed");
    for off in stamp_offsets(len) {
        // SAFETY: `off + 8 <= len`; unaligned writes are fine.
        unsafe { ((p + off) as *mut u64).write_unaligned(stamp(p, len)) };
    }
    (p, len)
}

fn check_and_free((p, len): (usize, usize)) {
    for off in stamp_offsets(len) {
        // SAFETY: a live block of `len` bytes.
        let seen = unsafe { ((p + off) as *const u64).read_unaligned() };
        assert_eq!(
            seen,
            stamp(p, len),
            "block {p:#x} ({len} bytes) corrupted at offset {off}"
        );
    }
    let layout = std::alloc::Layout::from_size_align(len, 8).unwrap();
    // SAFETY: allocated with this layout, freed once.
    unsafe { std::alloc::dealloc(p as *mut u8, layout) };
}

fn run(secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let queues: Arc<Vec<Queue>> = Arc::new((0..THREADS).map(|_| Queue::new()).collect());
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let watchdog = {
        let (progress, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            let mut last = (progress.load(Ordering::Relaxed), Instant::now());
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = progress.load(Ordering::Relaxed);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(STALL_SECS) {
                    eprintln!("remote_free_stress: no progress for {STALL_SECS} s: a hang");
                    std::process::abort();
                }
            }
        })
    };

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (queues, progress) = (queues.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut rng = XorShift((0x5eed ^ (t as u64 + 1) * 0x1234_5678_9abc) | 1);
                let out = &queues[(t + 1) % THREADS];
                let inbox = &queues[t];
                let mut stash = Vec::with_capacity(STASH);
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..64 {
                        // Produce for the next thread, or keep it when its queue is full.
                        let block = alloc_block(&mut rng);
                        if rng.next() % 4 == 0 || !out.push(block) {
                            stash.push(block);
                        }
                        // Consume from the previous thread: remote frees.
                        for _ in 0..2 {
                            if let Some(block) = inbox.pop() {
                                check_and_free(block);
                            }
                        }
                        // A burst of local frees: un-parks pages others are freeing into.
                        if stash.len() == STASH {
                            let keep = (rng.next() % STASH as u64) as usize;
                            for block in stash.drain(keep..) {
                                check_and_free(block);
                            }
                        }
                        if rng.next() % 32 == 0 {
                            std::thread::yield_now();
                        }
                        ops += 1;
                    }
                    progress.fetch_add(64, Ordering::Relaxed);
                }
                stash.into_iter().for_each(check_and_free);
                ops
            })
        })
        .collect();
    let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    // Whatever is still queued was allocated by one thread and is freed by this one.
    for q in queues.iter() {
        while let Some(block) = q.pop() {
            check_and_free(block);
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    assert!(ops > 10_000, "the run made only {ops} operations");
    eprintln!("remote_free_stress: {ops} allocations in {secs} s over {THREADS} threads");
}

#[test]
fn remote_frees_across_a_ring_of_threads() {
    let secs = std::env::var("RANGEALLOC_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SECS);
    run(secs);
}

#[test]
#[ignore = "ten minutes: the documented long run"]
fn remote_frees_across_a_ring_of_threads_ten_minutes() {
    run(LONG_SECS);
}
