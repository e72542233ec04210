//! The workloads: re-implementations of well-known allocator benchmarks, one file each,
//! run unchanged against every allocator. Each file's doc comment names the original
//! and says how ours differs.
//!
//! Every workload does a fixed amount of work (no "run for N seconds"), so wall time is
//! the measure, and verifies the memory it got: blocks are stamped from their ids and
//! checked before being freed ([`crate::block`]); the mismatch count is reported and a
//! nonzero count fails the run.

use std::ops::Add;
use std::sync::mpsc::{channel, Receiver, Sender};

pub mod big_buffers;
pub mod cache_scratch;
pub mod cache_thrash;
pub mod glibc_thread;
pub mod larson;
pub mod medium;
pub mod mstress;
pub mod realloc_growth;
pub mod region;
pub mod rptest;
pub mod sh8bench;
pub mod xmalloc;

/// The size of one run. Each workload says what its fields mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    /// The outer loop count (total over all threads unless the workload says otherwise).
    pub iterations: u64,
    /// Bytes or slots, per workload.
    pub size: usize,
    /// An inner repetition count, per workload (1 where unused).
    pub repeat: u64,
}

/// Everything a workload run depends on: identical for every allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub threads: usize,
    pub scale: Scale,
    pub seed: u64,
}

/// What a run did: operations (as the workload counts them) and failed content checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub ops: u64,
    pub mismatches: u64,
}

impl Add for Outcome {
    type Output = Outcome;
    fn add(self, other: Outcome) -> Outcome {
        Outcome {
            ops: self.ops + other.ops,
            mismatches: self.mismatches + other.mismatches,
        }
    }
}

impl std::iter::Sum for Outcome {
    fn sum<I: Iterator<Item = Outcome>>(iter: I) -> Outcome {
        iter.fold(Outcome::default(), Add::add)
    }
}

/// A benchmark: its name, provenance, sizes for `--quick` and `--full`, and its body.
pub struct Workload {
    pub name: &'static str,
    /// One line: what it re-implements.
    pub origin: &'static str,
    /// What `ops` counts, for throughput labels.
    pub unit: &'static str,
    pub quick: Scale,
    pub full: Scale,
    pub run: fn(&Params) -> Outcome,
    /// Thread counts `--quick` runs for this workload besides its default ones (not
    /// when `--threads` is given).
    pub quick_extra_threads: &'static [usize],
}

/// Every workload, in report order.
pub const ALL: [&Workload; 12] = [
    &larson::WORKLOAD,
    &xmalloc::WORKLOAD,
    &cache_scratch::WORKLOAD,
    &cache_thrash::WORKLOAD,
    &mstress::WORKLOAD,
    &rptest::WORKLOAD,
    &sh8bench::WORKLOAD,
    &glibc_thread::WORKLOAD,
    &realloc_growth::WORKLOAD,
    &region::WORKLOAD,
    &medium::WORKLOAD,
    &big_buffers::WORKLOAD,
];

pub fn by_name(name: &str) -> Option<&'static Workload> {
    ALL.iter().copied().find(|w| w.name == name)
}

/// Thread `tid`'s share of `total` units split across `threads`, the remainder going to
/// the first threads, so totals are the same whatever the thread count.
pub fn share(total: u64, threads: usize, tid: usize) -> u64 {
    let threads = threads as u64;
    total / threads + u64::from((tid as u64) < total % threads)
}

/// Runs `body(tid)` on `threads` scoped threads and sums their outcomes.
pub fn on_threads<F>(threads: usize, body: F) -> Outcome
where
    F: Fn(usize) -> Outcome + Sync,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|tid| {
                s.spawn({
                    let body = &body;
                    move || body(tid)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("workload thread panicked"))
            .sum()
    })
}

/// Runs `body(tid, inbox, next)` on `threads` scoped threads joined in a ring: each
/// thread's `next` sends to the following thread's `inbox` (the last to the first), for
/// workloads whose objects are freed by another thread than the one that made them.
/// Sums their outcomes.
pub fn on_ring<T, F>(threads: usize, body: F) -> Outcome
where
    T: Send,
    F: Fn(usize, Receiver<T>, Sender<T>) -> Outcome + Sync,
{
    let (senders, receivers): (Vec<Sender<T>>, Vec<_>) = (0..threads).map(|_| channel()).unzip();
    std::thread::scope(|s| {
        let handles: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(tid, inbox)| {
                let next = senders[(tid + 1) % threads].clone();
                let body = &body;
                s.spawn(move || body(tid, inbox, next))
            })
            .collect();
        drop(senders);
        handles
            .into_iter()
            .map(|h| h.join().expect("workload thread panicked"))
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for threads in 1..10 {
            let total: u64 = (0..threads).map(|t| share(1001, threads, t)).sum();
            assert_eq!(total, 1001);
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(ALL[i + 1..].iter().all(|b| b.name != a.name));
        }
    }

    /// Every workload, tiny, on two threads: runs, does work and verifies clean.
    #[test]
    fn every_workload_verifies_clean_at_tiny_scale() {
        for w in ALL {
            let scale = tiny(w.quick);
            let out = (w.run)(&Params {
                threads: 2,
                scale,
                seed: 1,
            });
            assert_eq!(out.mismatches, 0, "{}", w.name);
            assert!(out.ops > 0, "{}", w.name);
        }
    }

    /// A quick scale cut down so the unit test stays fast (debug build).
    fn tiny(quick: Scale) -> Scale {
        const SHRINK: u64 = 50;
        Scale {
            iterations: (quick.iterations / SHRINK).max(2),
            size: quick.size,
            repeat: (quick.repeat / SHRINK).max(1),
        }
    }
}
