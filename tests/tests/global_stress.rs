//! Whole-allocator stress as the test binary's `#[global_allocator]`: randomized
//! multi-threaded alloc/realloc/free with hand-offs between threads and per-object
//! content patterns, and thread churn with bounded memory.

use rangealloc::engine;
use rangealloc::RangeAlloc;
use std::sync::mpsc;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

use rangealloc_tests::XorShift;

/// The churn test measures process-wide reservations: it runs alone (write), the other
/// tests of this binary beside each other (read). Large objects are placed with room to
/// grow, so a stress test running beside the churn test reserves arenas the churn test
/// would count as its own growth.
static PROCESS_WIDE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The stress's size distribution over a deterministic generator (failures replay from
/// the seed).
struct Rng(XorShift);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next()
    }
    fn size(&mut self, light: bool) -> usize {
        if light {
            // Small objects only: cheap operations, so 10^7 of them fit in CI.
            return (self.next() % 512) as usize;
        }
        match self.next() % 100 {
            0..=69 => (self.next() % 256) as usize,
            70..=94 => (self.next() % 8192) as usize,
            95..=98 => (self.next() % 200_000) as usize,
            _ => (self.next() % (4 << 20)) as usize,
        }
    }
}

/// An object whose bytes derive from its id, checked before it is dropped.
struct Obj {
    id: u64,
    data: Vec<u8>,
}

impl Obj {
    fn new(id: u64, len: usize) -> Obj {
        Obj {
            id,
            data: (0..len).map(|i| pattern(id, i)).collect(),
        }
    }
    fn verify(&self) {
        let bad = self
            .data
            .iter()
            .enumerate()
            .position(|(i, &b)| b != pattern(self.id, i));
        assert!(
            bad.is_none(),
            "object {} corrupted at byte {:?}",
            self.id,
            bad
        );
    }
    fn resize(&mut self, len: usize) {
        self.verify();
        let old = self.data.len();
        self.data.truncate(len);
        self.data
            .extend((old.min(len)..len).map(|i| pattern(self.id, i)));
        self.data.shrink_to_fit();
    }
}

fn pattern(id: u64, i: usize) -> u8 {
    (id as usize).wrapping_mul(31).wrapping_add(i) as u8
}

const THREADS: u64 = 16;
/// Operations per thread of the mixed-size run (up to 4 MiB objects); 16 threads give
/// about 10^6 operations. The small-object runs below make 10^7 (CI) and 10^8.
const OPS: u64 = 60_000;
const LIVE: usize = 400;

fn stress(ops: u64, light: bool) {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<Vec<Obj>>()).unzip();
    let threads: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let senders = senders.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(XorShift(0x9e37_79b9 + t as u64));
                let mut live: Vec<Obj> = Vec::with_capacity(LIVE);
                for op in 0..ops {
                    let id = (t as u64) << 40 | op;
                    match rng.next() % 10 {
                        0..=4 => {
                            if live.len() >= LIVE {
                                let victim = live.swap_remove(rng.next() as usize % live.len());
                                victim.verify();
                            }
                            live.push(Obj::new(id, rng.size(light)));
                        }
                        5..=6 if !live.is_empty() => {
                            let i = rng.next() as usize % live.len();
                            let len = rng.size(light);
                            live[i].resize(len);
                        }
                        7 if live.len() > 16 => {
                            let to = rng.next() as usize % senders.len();
                            let batch: Vec<Obj> = live.drain(..16).collect();
                            let _ = senders[to].send(batch);
                        }
                        _ => {
                            while let Ok(batch) = rx.try_recv() {
                                for o in batch {
                                    o.verify();
                                }
                            }
                        }
                    }
                }
                drop(senders);
                for o in &live {
                    o.verify();
                }
                live.len()
            })
        })
        .collect();
    drop(senders);
    for t in threads {
        t.join().expect("stress thread failed");
    }
}

#[test]
fn randomized_multithreaded_stress_with_content_checks() {
    let _shared = PROCESS_WIDE.read().unwrap_or_else(|e| e.into_inner());
    stress(OPS, false);
}

/// 16 threads x 625,000 small-object operations = 10^7 operations, in CI.
#[test]
fn randomized_stress_ten_million_operations() {
    let _shared = PROCESS_WIDE.read().unwrap_or_else(|e| e.into_inner());
    stress(625_000, true);
}

/// 16 threads x 6,250,000 = 10^8 operations: `cargo test --release -p rangealloc-tests
/// --test global_stress -- --ignored` (minutes; not in CI).
#[test]
#[ignore]
fn randomized_stress_hundred_million_operations() {
    let _shared = PROCESS_WIDE.read().unwrap_or_else(|e| e.into_inner());
    stress(6_250_000, true);
}

#[test]
fn thread_churn_keeps_memory_bounded() {
    let _alone = PROCESS_WIDE.write().unwrap_or_else(|e| e.into_inner());
    const ROUNDS: usize = 100;
    const PER_ROUND: usize = 100;
    let mut reserved_after_warmup = 0;
    for round in 0..ROUNDS {
        let threads: Vec<_> = (0..PER_ROUND)
            .map(|i| {
                std::thread::spawn(move || {
                    let v: Vec<Box<[u8]>> = (0..50)
                        .map(|k| vec![(i + k) as u8; 16 + k * 97].into_boxed_slice())
                        .collect();
                    // Keep a few alive across the thread's death: freed later by another
                    // thread into the abandoned heap.
                    v.into_iter().step_by(10).collect::<Vec<_>>()
                })
            })
            .collect();
        let survivors: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        drop(survivors);
        if round == 10 {
            reserved_after_warmup = engine::region::ARENAS.space().reserved;
        }
    }
    let counts = engine::heap::heap_counts();
    // 10,000 threads ran, at most PER_ROUND (+ the test harness's) at once.
    assert!(
        counts.heaps <= PER_ROUND + 16,
        "heaps grew with churn: {counts:?}"
    );
    let reserved = engine::region::ARENAS.space().reserved;
    assert!(
        reserved <= reserved_after_warmup.max(1 << 30),
        "address space grew under churn: {reserved} > {reserved_after_warmup}"
    );
}
