//! The byte sampler: each thread counts allocated bytes down to its next sample point,
//! drawn from an exponential distribution with mean `prof_sample`, so sample points form
//! a Poisson process over the thread's allocated bytes (jemalloc's and tcmalloc's
//! scheme). Owns the thread-local countdown and random state; calls nothing.
//!
//! Small blocks are counted a refilled list at a time (`charge`), large objects one by
//! one (`take`): both advance the same countdown, so the thread's blocks and objects
//! form one stream of bytes with sample points at rate `1 / prof_sample`.

use core::cell::Cell;

/// A sample point is never further than this many means away: `-ln(u)` for the
/// smallest `u` the generator gives (2^-53) is 36.7, so this bound never binds in
/// practice; it keeps the product in `i64` for any `prof_sample`.
const MAX_MEANS: f64 = 40.0;

/// Seeds for the per-thread generators: a global odd step (the 64-bit golden ratio,
/// Weyl sequence) so threads get distinct, reproducible streams: a single-threaded
/// program samples the same allocations on every run.
const SEED_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
static NEXT_SEED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(SEED_STEP);

thread_local! {
    /// Bytes left before this thread's next sample point; 0 until the first draw, so
    /// the first allocation takes the cold path, which draws.
    static BYTES_LEFT: Cell<i64> = const { Cell::new(0) };
    /// xorshift64* state; 0 until seeded.
    static RNG: Cell<u64> = const { Cell::new(0) };
    /// Set while this thread runs profiler code (capturing a stack, dumping): its own
    /// allocations are neither sampled nor allowed to take the profiler's lock.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Counts an allocation of `size` bytes; true if it reaches the thread's sample point
/// (the next point is then drawn at once, memoryless, as a Poisson process needs).
/// The common case is a thread-local subtract and compare; `mean` is read only when a
/// point is drawn.
#[inline(always)]
pub fn take(size: usize, mean: impl FnOnce() -> u64) -> bool {
    // `size` below 2^63: the allocator refuses larger requests before this point, and
    // the saturating conversion keeps the arithmetic defined regardless.
    let size = size.min(i64::MAX as usize) as i64;
    let left = BYTES_LEFT.with(|c| c.get()).wrapping_sub(size);
    if left > 0 {
        BYTES_LEFT.with(|c| c.set(left));
        return false;
    }
    reached(left.wrapping_add(size), size, mean())
}

/// Counts a list of `blocks` blocks of `block_size` bytes, to be handed out in order.
/// Returns how many whole blocks come before the sample point, or `blocks` when the
/// point lies beyond the list. When it falls in the list, the next point is drawn at
/// once and counted from there; the blocks after the one it fell in are not counted
/// (the caller counts them again as a new list).
pub fn charge(blocks: usize, block_size: usize, mean: impl FnOnce() -> u64) -> usize {
    let size = block_size.clamp(1, i64::MAX as usize) as i64;
    let mut left = BYTES_LEFT.with(|c| c.get());
    let mean = mean();
    if left == 0 && RNG.with(|c| c.get()) == 0 {
        // The thread's first count: draw its first point.
        left = draw(mean);
    }
    // Saturating: a list longer than any countdown is simply "past the point".
    let total = (blocks as i64).saturating_mul(size);
    if total < left {
        BYTES_LEFT.with(|c| c.set(left - total));
        return blocks;
    }
    // The point lies in block `ceil(left / size)` (counting from 1); `left` is at least
    // one byte, so that block exists and at most `blocks - 1` come before it.
    let before = ((left - 1) / size) as usize;
    BYTES_LEFT.with(|c| c.set(draw(mean)));
    before
}

/// The countdown ran out (or was never drawn: `before` is 0 only then, since a drawn
/// distance is at least one byte and a positive remainder is always stored).
#[cold]
fn reached(before: i64, size: i64, mean: u64) -> bool {
    if before == 0 && RNG.with(|c| c.get()) == 0 {
        // The thread's first allocation: draw its first point, then count as usual.
        let left = draw(mean).saturating_sub(size);
        if left > 0 {
            BYTES_LEFT.with(|c| c.set(left));
            return false;
        }
    }
    BYTES_LEFT.with(|c| c.set(draw(mean)));
    true
}

/// The next sample distance: `-ln(u) * mean`, at least one byte.
fn draw(mean: u64) -> i64 {
    let u = uniform();
    let distance = (-libm::log(u)).min(MAX_MEANS) * mean as f64;
    (distance as i64).max(1)
}

/// A uniform value in (0, 1].
fn uniform() -> f64 {
    let mut x = RNG.with(|c| c.get());
    if x == 0 {
        // Relaxed: only distinctness matters, which the RMW gives.
        x = NEXT_SEED.fetch_add(SEED_STEP, core::sync::atomic::Ordering::Relaxed) | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    RNG.with(|c| c.set(x));
    let bits = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11; // 53 random bits
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

/// What one sample of an allocation of `size` bytes stands for: `1 / p` objects and
/// `size / p` bytes, where `p = 1 - exp(-size / mean)` is the chance that a Poisson
/// process of rate `1 / mean` puts a point in those bytes. Dividing by `p` makes each
/// stack's totals unbiased estimates (tcmalloc and Go weight their samples the same way).
pub fn weight(size: usize, mean: u64) -> (f64, f64) {
    let p = -libm::expm1(-(size as f64) / mean as f64);
    let objects = if p > 0.0 { 1.0 / p } else { 1.0 };
    (objects, objects * size as f64)
}

/// Whether this thread is inside profiler code.
#[inline]
pub fn busy() -> bool {
    BUSY.with(|b| b.get())
}

/// Marks this thread as inside profiler code until dropped.
pub struct Busy {
    saved: bool,
}

impl Busy {
    pub fn enter() -> Self {
        Busy {
            saved: BUSY.with(|b| b.replace(true)),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let saved = self.saved;
        BUSY.with(|b| b.set(saved));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The countdown samples about one allocation per `mean` bytes, and the weights
    /// turn the samples back into the true totals (within a few percent over 10^4
    /// samples), for sizes far below, near and above the mean.
    #[test]
    fn weighted_samples_estimate_the_totals() {
        const MEAN: u64 = 4096;
        for size in [16usize, 1000, 4096, 50_000] {
            let n = 40_000_000 / size;
            let (mut objects, mut bytes) = (0.0, 0.0);
            for _ in 0..n {
                if take(size, || MEAN) {
                    let (o, b) = weight(size, MEAN);
                    objects += o;
                    bytes += b;
                }
            }
            let truth = (n * size) as f64;
            assert!(
                (bytes / truth - 1.0).abs() < 0.05,
                "size {size}: {bytes} vs {truth}"
            );
            assert!((objects / n as f64 - 1.0).abs() < 0.05, "size {size}");
        }
    }

    /// Lists counted at refills, cut at each point as the heap does (the sampled
    /// allocation takes no block; the rest of the list is counted again), give weights
    /// whose sum estimates the bytes handed out, for blocks far below, near and above the
    /// mean and lists of 1 to 256 blocks.
    #[test]
    fn refill_counts_estimate_the_totals() {
        const MEAN: u64 = 4096;
        for (size, list) in [(16usize, 256usize), (1024, 4), (4096, 16), (32768, 1)] {
            let n = 40_000_000 / size;
            let (mut allocs, mut objects, mut bytes) = (0usize, 0.0, 0.0);
            let mut on_list = 0;
            while allocs < n {
                if on_list == 0 {
                    on_list = list;
                }
                let before = charge(on_list, size, || MEAN);
                if before == on_list {
                    allocs += on_list;
                    on_list = 0;
                } else {
                    // `before` popped, then one sampled allocation.
                    allocs += before + 1;
                    on_list -= before;
                    let (o, b) = weight(size, MEAN);
                    objects += o;
                    bytes += b;
                }
            }
            let truth = (allocs * size) as f64;
            assert!(
                (bytes / truth - 1.0).abs() < 0.05,
                "size {size}: {bytes} vs {truth}"
            );
            assert!((objects / allocs as f64 - 1.0).abs() < 0.05, "size {size}");
        }
    }

    #[test]
    fn draws_have_the_requested_mean() {
        const MEAN: u64 = 1 << 19;
        const N: usize = 100_000;
        let sum: f64 = (0..N).map(|_| draw(MEAN) as f64).sum();
        assert!((sum / N as f64 / MEAN as f64 - 1.0).abs() < 0.02);
    }
}
