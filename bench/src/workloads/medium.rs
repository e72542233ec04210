//! medium: churn of medium-sized objects (16 KiB to 2 MiB), the sizes between every
//! allocator's small classes and its huge path, where purging, copying on `realloc` and
//! page faults decide the time (issue 14).
//!
//! Each thread keeps a ring of `RING` objects of log-uniform sizes in `[MIN_SIZE,
//! size]`. Each step replaces the oldest: the object leaving the ring is freed by this
//! thread, or, one time in `REMOTE_FREE_EVERY`, handed to the next thread, which frees
//! it. Every new object gets its first and last cache line written, as a program that
//! fills a header and a trailer (and leaves most pages untouched) does; one step in
//! `GROW_EVERY` grows a random object of the ring by half with `realloc`, which keeps
//! both lines and writes the new last one. Lines are checked before every free.
//!
//! Ours, after issue 14's measurement; no classic benchmark has this size band.
//! `iterations` is the number of replacements over all threads; `ops` counts
//! allocations plus `realloc` calls.

use std::alloc::{self, Layout};
use std::sync::mpsc::{Receiver, Sender};

use super::{on_ring, share, Outcome, Params, Scale, Workload};
use crate::dist::log_uniform;
use crate::rng::{mix, Rng};

/// Objects alive per thread.
const RING: usize = 32;
/// The smallest object: 16 KiB, past the small classes of all five allocators' fast
/// paths (jemalloc's small classes end at 14 KiB, mimalloc's small pages at 1 KiB).
const MIN_SIZE: usize = 16 * 1024;
/// The largest object by default: 2 MiB.
const MAX_SIZE: usize = 2 * 1024 * 1024;
/// One object in this many leaving the ring is freed by the next thread.
const REMOTE_FREE_EVERY: u64 = 4;
/// One step in this many grows an object of the ring by `GROW_NUM / GROW_DEN`.
const GROW_EVERY: u64 = 8;
const GROW_NUM: usize = 3;
const GROW_DEN: usize = 2;
/// The bytes written at each end: one cache line.
const LINE: usize = 64;
const ALIGN: usize = 8;

pub const WORKLOAD: Workload = Workload {
    name: "medium",
    origin: "ours: ring of 32 objects 16 KiB-2 MiB, ends written, 1/4 remote frees, 1/8 grown 1.5x",
    unit: "allocs+reallocs",
    quick: Scale {
        iterations: 6_000,
        size: MAX_SIZE,
        repeat: 1,
    },
    full: Scale {
        iterations: 100_000,
        size: MAX_SIZE,
        repeat: 1,
    },
    run,
    // Issue 16 asks for medium at 16 threads too: the oversubscribed case where
    // the old tree update per allocation serialised every thread on one lock.
    quick_extra_threads: &[16],
};

/// An object with stamped first and last lines.
struct Object {
    ptr: *mut u8,
    len: usize,
    tag: u64,
}

// SAFETY: the object owns its allocation; global allocators accept frees from any thread.
unsafe impl Send for Object {}

fn layout(len: usize) -> Layout {
    Layout::from_size_align(len, ALIGN).expect("object size fits isize")
}

/// The word stored at `offset` of line `which` (0 = first, 1 = last) of object `tag`.
fn word(tag: u64, which: u64, offset: usize) -> u64 {
    mix(tag ^ (which << 62) ^ offset as u64)
}

impl Object {
    fn new(len: usize, tag: u64) -> Object {
        let l = layout(len);
        // SAFETY: nonzero size.
        let ptr = unsafe { alloc::alloc(l) };
        if ptr.is_null() {
            alloc::handle_alloc_error(l);
        }
        let o = Object { ptr, len, tag };
        o.write_line(0, 0);
        o.write_line(1, len - LINE);
        o
    }

    fn write_line(&self, which: u64, at: usize) {
        for i in (0..LINE).step_by(8) {
            // SAFETY: `at + LINE <= len`; unaligned writes since `len` is arbitrary.
            unsafe {
                self.ptr
                    .add(at + i)
                    .cast::<u64>()
                    .write_unaligned(word(self.tag, which, i))
            };
        }
    }

    fn bad_words(&self, which: u64, at: usize) -> u64 {
        (0..LINE)
            .step_by(8)
            .filter(|&i| {
                // SAFETY: as in `write_line`.
                let v = unsafe { self.ptr.add(at + i).cast::<u64>().read_unaligned() };
                v != word(self.tag, which, i)
            })
            .count() as u64
    }

    fn check(&self) -> u64 {
        self.bad_words(0, 0) + self.bad_words(1, self.len - LINE)
    }

    /// Grows by `realloc`; checks that both old lines came along, writes the new last.
    fn grow(&mut self, new_len: usize) -> u64 {
        let old_last = self.len - LINE;
        // SAFETY: `ptr` is live with this layout; the new size is nonzero.
        let p = unsafe { alloc::realloc(self.ptr, layout(self.len), new_len) };
        if p.is_null() {
            alloc::handle_alloc_error(layout(new_len));
        }
        self.ptr = p;
        self.len = new_len;
        let bad = self.bad_words(0, 0) + self.bad_words(1, old_last);
        self.write_line(1, new_len - LINE);
        bad
    }

    /// Checks and frees.
    fn release(self) -> u64 {
        let bad = self.check();
        // SAFETY: live, allocated with this layout.
        unsafe { alloc::dealloc(self.ptr, layout(self.len)) };
        bad
    }
}

fn run(p: &Params) -> Outcome {
    on_ring(p.threads, |tid, inbox, next| worker(p, tid, inbox, next))
}

fn worker(p: &Params, tid: usize, inbox: Receiver<Object>, next: Sender<Object>) -> Outcome {
    let max = p.scale.size.max(MIN_SIZE);
    let mut rng = Rng::for_stream(p.seed, tid as u64);
    let mut ring: Vec<Object> = Vec::with_capacity(RING);
    let mut out = Outcome::default();
    for n in 0..share(p.scale.iterations, p.threads, tid) {
        out.mismatches += inbox.try_iter().map(Object::release).sum::<u64>();
        let tag = ((tid as u64) << 40) | n;
        let fresh = Object::new(log_uniform(&mut rng, MIN_SIZE, max), tag);
        out.ops += 1;
        if ring.len() < RING {
            ring.push(fresh);
        } else {
            let leaving = std::mem::replace(&mut ring[n as usize % RING], fresh);
            if n % REMOTE_FREE_EVERY == 0 {
                next.send(leaving).expect("inbox outlives its senders");
            } else {
                out.mismatches += leaving.release();
            }
        }
        if n % GROW_EVERY == 0 {
            let index = rng.index(ring.len());
            let victim = &mut ring[index];
            out.mismatches += victim.grow(victim.len / GROW_DEN * GROW_NUM);
            out.ops += 1;
        }
    }
    drop(next);
    out.mismatches += ring.into_iter().map(Object::release).sum::<u64>();
    out.mismatches += inbox.iter().map(Object::release).sum::<u64>();
    out
}
