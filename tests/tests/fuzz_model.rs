//! A model-checked fuzzer: random sequences of alloc / alloc_zeroed / realloc / aligned
//! alloc / free, with sizes from every range and blocks handed between threads, checked
//! against a model of what must hold: alignment, usable size, no two live blocks
//! overlapping, content preserved, zeroed memory zero. Bounded by time
//! (`RANGEALLOC_FUZZ_SECS`, default 10 s) so CI runs it; the seed is printed so any
//! failure replays (`RANGEALLOC_FUZZ_SEED`).

use rangealloc::engine;
use rangealloc::RangeAlloc;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn size(&mut self) -> usize {
        match self.below(16) {
            0 => 0,
            1..=7 => self.below(129) as usize,
            8..=11 => self.below(4097) as usize,
            12..=13 => self.below(32 * 1024 + 2) as usize,
            14 => self.below(1 << 20) as usize,
            _ => self.below(8 << 20) as usize,
        }
    }
    fn align(&mut self) -> usize {
        match self.below(8) {
            0..=4 => 8,
            5 => 16,
            6 => 1 << self.below(13),
            _ => 1 << self.below(22),
        }
    }
}

#[derive(Clone, Copy)]
struct Block {
    addr: usize,
    size: usize,
    align: usize,
    tag: u8,
}

/// Blocks in flight between threads.
type Mailbox = Arc<Mutex<Vec<Block>>>;

fn fill(b: &Block) {
    // SAFETY: the block is live and at least `size` bytes.
    unsafe { std::ptr::write_bytes(b.addr as *mut u8, b.tag, b.size) };
}

fn verify(b: &Block) {
    if b.size == 0 {
        return;
    }
    // Check the ends and a stride through the middle (full scans of 8 MiB blocks would
    // dominate the run).
    let step = (b.size / 64).max(1);
    for i in (0..b.size).step_by(step).chain([b.size - 1]) {
        // SAFETY: within the live block.
        let v = unsafe { *(b.addr as *const u8).add(i) };
        assert_eq!(
            v, b.tag,
            "block {:#x}+{i} (size {}) corrupted",
            b.addr, b.size
        );
    }
}

fn check_new(live: &BTreeMap<usize, Block>, b: &Block) {
    assert!(b.addr != 0, "null for size {} align {}", b.size, b.align);
    assert_eq!(
        b.addr % b.align,
        0,
        "misaligned: {:#x} align {}",
        b.addr,
        b.align
    );
    // SAFETY: a live block of ours.
    let usable = unsafe { engine::usable_size(b.addr as *const u8) };
    assert!(usable >= b.size, "usable {usable} < size {}", b.size);
    let end = b.addr + b.size.max(1);
    if let Some((_, prev)) = live.range(..end).next_back() {
        assert!(
            prev.addr + prev.size.max(1) <= b.addr,
            "overlap: new {:#x}+{} with live {:#x}+{}",
            b.addr,
            b.size,
            prev.addr,
            prev.size
        );
    }
}

fn worker(seed: u64, deadline: Instant, mailboxes: Vec<Mailbox>, me: usize) -> u64 {
    let mut rng = Rng(seed);
    let mut live: BTreeMap<usize, Block> = BTreeMap::new();
    let mut ops = 0u64;
    while Instant::now() < deadline {
        for _ in 0..256 {
            ops += 1;
            let tag = rng.next() as u8;
            match rng.below(12) {
                0..=3 => {
                    let (size, align) = (rng.size(), rng.align());
                    // SAFETY: power-of-two alignment.
                    let addr = unsafe { engine::alloc(size, align) } as usize;
                    let b = Block {
                        addr,
                        size,
                        align,
                        tag,
                    };
                    check_new(&live, &b);
                    fill(&b);
                    live.insert(addr, b);
                }
                4 => {
                    let size = rng.size();
                    // SAFETY: 16 is a power of two.
                    let addr = unsafe { engine::alloc_zeroed(size, 16) } as usize;
                    let b = Block {
                        addr,
                        size,
                        align: 16,
                        tag,
                    };
                    check_new(&live, &b);
                    // SAFETY: within the fresh block.
                    let zero = (0..size).all(|i| unsafe { *(addr as *const u8).add(i) } == 0);
                    assert!(zero, "alloc_zeroed({size}) not zero");
                    fill(&b);
                    live.insert(addr, b);
                }
                5..=6 if !live.is_empty() => {
                    let key = *live
                        .keys()
                        .nth(rng.below(live.len() as u64) as usize)
                        .unwrap();
                    let old = live.remove(&key).unwrap();
                    verify(&old);
                    let size = rng.size();
                    // SAFETY: live block allocated with `old.align`.
                    let addr = unsafe { engine::realloc(old.addr as *mut u8, size, old.align) };
                    let b = Block {
                        addr: addr as usize,
                        size,
                        align: old.align,
                        tag: old.tag,
                    };
                    check_new(&live, &b);
                    verify(&Block {
                        size: size.min(old.size),
                        ..b
                    });
                    let b = Block { tag, ..b };
                    fill(&b);
                    live.insert(b.addr, b);
                }
                7 if live.len() > 8 => {
                    let to = rng.below(mailboxes.len() as u64) as usize;
                    let keys: Vec<usize> = live.keys().take(4).copied().collect();
                    let mut out = mailboxes[to].lock().unwrap();
                    for k in keys {
                        out.push(live.remove(&k).unwrap());
                    }
                }
                8 => {
                    let inbox: Vec<Block> = std::mem::take(&mut *mailboxes[me].lock().unwrap());
                    for b in inbox {
                        verify(&b);
                        // SAFETY: handed over by its previous owner, live.
                        unsafe { engine::free(b.addr as *mut u8) };
                    }
                }
                _ if !live.is_empty() => {
                    let key = *live
                        .keys()
                        .nth(rng.below(live.len() as u64) as usize)
                        .unwrap();
                    let b = live.remove(&key).unwrap();
                    verify(&b);
                    // SAFETY: live block, freed once.
                    unsafe { engine::free(b.addr as *mut u8) };
                }
                _ => {}
            }
        }
    }
    for b in live.values() {
        verify(b);
        // SAFETY: live blocks, freed once.
        unsafe { engine::free(b.addr as *mut u8) };
    }
    ops
}

#[test]
fn fuzz_against_the_model() {
    let secs: u64 = std::env::var("RANGEALLOC_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("RANGEALLOC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 * 0x9e37_79b9);
    println!("fuzz seed {seed} for {secs} s (RANGEALLOC_FUZZ_SEED to replay)");
    let threads = 4;
    let mailboxes: Vec<Mailbox> = (0..threads).map(|_| Arc::default()).collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mb = mailboxes.clone();
            std::thread::spawn(move || worker(seed.wrapping_add(t as u64), deadline, mb, t))
        })
        .collect();
    let ops: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("fuzz worker failed"))
        .sum();
    for mb in &mailboxes {
        for b in mb.lock().unwrap().drain(..) {
            verify(&b);
            // SAFETY: undelivered live blocks, freed once.
            unsafe { engine::free(b.addr as *mut u8) };
        }
    }
    println!("fuzz: {ops} operations");
    assert!(ops > 10_000);
}
