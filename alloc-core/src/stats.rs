//! Statistics: sharded event counters cheap to bump from many threads, merged on read.
//! Owns nothing but counters; calls nothing.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards per counter: more than the cores we expect to contend, few enough that a read
/// (summing them) stays cheap.
const SHARDS: usize = 16;

#[repr(align(64))]
struct Padded(AtomicU64);

/// A counter whose increments from different threads usually touch different cache
/// lines. Relaxed throughout: these are statistics with no ordering duties.
pub struct Counter([Padded; SHARDS]);

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn shard() -> usize {
    SHARD.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        s.set(v);
        v
    })
}

impl Counter {
    pub const fn new() -> Self {
        Counter([const { Padded(AtomicU64::new(0)) }; SHARDS])
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts (the shards wrap; their sum is exact).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.add(n.wrapping_neg());
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}
