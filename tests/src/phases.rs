//! The phased threads of the steady-state counting tests (`process_locks*.rs`): workers
//! run phases of operations between barriers, handing some objects to the next thread to
//! free; the main thread lets every phase but the last warm up (arenas, reservations,
//! metadata caches, epoch registration) and counts what the last one did.

use std::sync::{Barrier, Mutex};

/// Objects (address, size) handed to a thread to free.
pub type Inbox = Mutex<Vec<(usize, usize)>>;

/// The barrier and inboxes `threads` workers and the main thread share.
pub struct Phases {
    threads: usize,
    phases: usize,
    barrier: Barrier,
    inboxes: Vec<Inbox>,
}

impl Phases {
    /// `phases` phases (all but the last warm up) of `threads` workers, each inbox with
    /// room for `inbox_capacity` objects (so a push never reallocates mid-phase).
    pub fn new(threads: usize, phases: usize, inbox_capacity: usize) -> Self {
        assert!(phases >= 1, "at least the measured phase");
        Phases {
            threads,
            phases,
            barrier: Barrier::new(threads + 1),
            inboxes: (0..threads)
                .map(|_| Mutex::new(Vec::with_capacity(inbox_capacity)))
                .collect(),
        }
    }

    /// Worker `t`'s part: in each phase, `phase` runs with the next thread's inbox as its
    /// outbox; then, once every worker's phase has ended, `free` takes each object the
    /// previous thread handed over.
    pub fn work(
        &self,
        t: usize,
        mut phase: impl FnMut(&Inbox),
        mut free: impl FnMut(usize, usize),
    ) {
        for _ in 0..self.phases {
            self.barrier.wait();
            phase(&self.inboxes[(t + 1) % self.threads]);
            self.barrier.wait();
            for (p, size) in self.inboxes[t].lock().unwrap().drain(..) {
                free(p, size);
            }
            self.barrier.wait();
        }
    }

    /// The main thread's part: waits out the warm-up phases and returns `count()` taken
    /// just before the last phase began and just after its frees ended.
    pub fn measure_last<T>(&self, mut count: impl FnMut() -> T) -> (T, T) {
        for _ in 0..3 * (self.phases - 1) {
            self.barrier.wait();
        }
        let before = count();
        for _ in 0..3 {
            self.barrier.wait();
        }
        (before, count())
    }
}
