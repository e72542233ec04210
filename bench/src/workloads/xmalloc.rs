//! xmalloc: Lever & Boreham's xmalloc-test (CITI, "malloc() performance in a
//! multithreaded Linux environment", USENIX 2000), as run by mimalloc-bench
//! (`xmalloc-test -w N -t 5 -s 64`): producer threads allocate batches of objects and
//! consumer threads free them, so every free is a cross-thread free.
//!
//! Producers send each batch to a consumer chosen round-robin through a bounded queue
//! (back-pressure, like the original's bounded batch list). Consumers check each
//! object's stamps before freeing it.
//!
//! Differences: a fixed object count (`iterations`, split over the producers) instead of
//! a timed run; `std::sync::mpsc` queues instead of a mutex-protected list; with T
//! threads, ceil(T/2) produce and the rest consume (T = 1 runs one of each). `size` is
//! the object size in bytes (the original's `-s`).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::{share, Outcome, Params, Scale, Workload};
use crate::block::Block;

/// Objects per batch: large enough that queue traffic is a small share of the work,
/// small enough that a batch's objects stay in the consumer's cache.
const BATCH_OBJECTS: usize = 1000;
/// Batches a consumer's queue holds before producers block: a few, so producers run
/// ahead but memory stays bounded.
const QUEUE_BATCHES: usize = 4;

pub const WORKLOAD: Workload = Workload {
    name: "xmalloc",
    origin: "Lever & Boreham xmalloc-test producer/consumer (mimalloc-bench)",
    unit: "objects",
    quick: Scale {
        iterations: 3_000_000,
        size: 64,
        repeat: 1,
    },
    full: Scale {
        iterations: 20_000_000,
        size: 64,
        repeat: 1,
    },
    run,
    quick_extra_threads: &[],
};

type Batch = Vec<Block>;

fn run(p: &Params) -> Outcome {
    let producers = p.threads.div_ceil(2);
    let consumers = (p.threads - producers).max(1);
    let (senders, receivers): (Vec<SyncSender<Batch>>, Vec<Receiver<Batch>>) =
        (0..consumers).map(|_| sync_channel(QUEUE_BATCHES)).unzip();
    std::thread::scope(|s| {
        let consuming: Vec<_> = receivers
            .into_iter()
            .map(|rx| s.spawn(move || consume(rx)))
            .collect();
        let producing: Vec<_> = (0..producers)
            .map(|tid| {
                let senders = senders.clone();
                s.spawn(move || produce(p, tid, producers, &senders))
            })
            .collect();
        // Consumers stop when every sender is gone: the producers' clones and ours.
        drop(senders);
        let produced: Outcome = producing
            .into_iter()
            .map(|h| h.join().expect("producer panicked"))
            .sum();
        let consumed: Outcome = consuming
            .into_iter()
            .map(|h| h.join().expect("consumer panicked"))
            .sum();
        Outcome {
            ops: produced.ops,
            mismatches: consumed.mismatches,
        }
    })
}

fn produce(p: &Params, tid: usize, producers: usize, queues: &[SyncSender<Batch>]) -> Outcome {
    let count = share(p.scale.iterations, producers, tid);
    let mut made = 0;
    let mut next_queue = tid;
    while made < count {
        let n = (count - made).min(BATCH_OBJECTS as u64);
        let batch = (made..made + n)
            .map(|i| Block::new(p.scale.size, ((tid as u64) << 40) | i))
            .collect();
        made += n;
        queues[next_queue % queues.len()]
            .send(batch)
            .expect("consumer gone");
        next_queue += 1;
    }
    Outcome {
        ops: made,
        mismatches: 0,
    }
}

fn consume(queue: Receiver<Batch>) -> Outcome {
    let mut out = Outcome::default();
    for batch in queue {
        out.ops += batch.len() as u64;
        out.mismatches += batch.iter().map(Block::check).sum::<u64>();
    }
    out
}
