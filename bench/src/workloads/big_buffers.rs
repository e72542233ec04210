//! big-buffers: big zero-filled buffers replaced over and over, mimalloc-bench's
//! `malloc-large` (issue 14): whether freed big buffers are reused while their pages are
//! resident, or purged and faulted in again by the next one.
//!
//! `LIVE` buffers of uniform sizes in `[MIN_SIZE, size]` MiB are alive; each step
//! frees a random one and allocates its replacement, zero-filled by writing it (the
//! original value-initialises with `new char[size]()`, a `memset` after `malloc`, so every
//! page is touched whatever the allocator knows about fresh memory). The first and last
//! words are then stamped, and checked (with a word per page, which must still read as
//! zero) before the buffer is freed.
//!
//! Differences: the original runs one thread; with T threads the buffers are split
//! between them (thread t owns slots t, t+T, ...), so the live total stays the same.
//! `iterations` counts replacements over all threads; `ops` counts them too.

use std::alloc::{self, Layout};

use super::{on_threads, share, Outcome, Params, Scale, Workload};
use crate::rng::{mix, Rng};

/// Buffers alive at once (the original's 20).
const LIVE: usize = 20;
/// Smallest and (by default) largest buffer: the original's 5 to 25 MiB.
const MIN_SIZE: usize = 5 << 20;
const MAX_SIZE: usize = 25 << 20;
const QUICK_MAX_SIZE: usize = 12 << 20;
const PAGE: usize = 4096;
const WORD: usize = 8;
const ALIGN: usize = 8;

pub const WORKLOAD: Workload = Workload {
    name: "big-buffers",
    origin: "mimalloc-bench malloc-large: replace one of 20 zero-filled 5-25 MiB buffers",
    unit: "buffers replaced",
    // Quick: buffers of 5-12 MiB (still past the 8 MiB where allocators switch to their
    // huge path), so the 20 initial buffers cost half as much to fill and one run stays
    // near a second on the 2-core machine.
    quick: Scale {
        iterations: 40,
        size: QUICK_MAX_SIZE,
        repeat: 1,
    },
    full: Scale {
        iterations: 2000,
        size: MAX_SIZE,
        repeat: 1,
    },
    run,
    quick_extra_threads: &[],
};

struct Buffer {
    ptr: *mut u8,
    len: usize,
    tag: u64,
}

fn layout(len: usize) -> Layout {
    Layout::from_size_align(len, ALIGN).expect("buffer size fits isize")
}

impl Buffer {
    fn new(len: usize, tag: u64) -> Buffer {
        let l = layout(len);
        // SAFETY: nonzero size. `black_box`: LLVM would otherwise fuse the allocation
        // and the `memset` below into `alloc_zeroed`, which skips touching fresh pages
        // and is not what the original measures.
        let ptr = std::hint::black_box(unsafe { alloc::alloc(l) });
        if ptr.is_null() {
            alloc::handle_alloc_error(l);
        }
        // SAFETY: `len` bytes were just allocated at `ptr`.
        unsafe {
            std::ptr::write_bytes(ptr, 0, len);
            ptr.cast::<u64>().write(mix(tag));
            ptr.add(len - WORD).cast::<u64>().write_unaligned(!mix(tag));
        }
        Buffer { ptr, len, tag }
    }

    /// The stamps, and one word per page in between, which must still be zero.
    fn check(&self) -> u64 {
        // SAFETY: every offset read is below `len - WORD`, or is the last word.
        unsafe {
            let mut bad = u64::from(self.ptr.cast::<u64>().read() != mix(self.tag));
            bad += u64::from(
                self.ptr.add(self.len - WORD).cast::<u64>().read_unaligned() != !mix(self.tag),
            );
            bad += (PAGE..self.len - WORD)
                .step_by(PAGE)
                .filter(|&o| self.ptr.add(o).cast::<u64>().read() != 0)
                .count() as u64;
            bad
        }
    }

    fn release(self) -> u64 {
        let bad = self.check();
        // SAFETY: live, allocated with this layout.
        unsafe { alloc::dealloc(self.ptr, layout(self.len)) };
        bad
    }
}

fn run(p: &Params) -> Outcome {
    on_threads(p.threads, |tid| {
        let max = p.scale.size.max(MIN_SIZE);
        let mut rng = Rng::for_stream(p.seed, tid as u64);
        let slots = (tid..LIVE).step_by(p.threads).count().max(1);
        let size = |rng: &mut Rng| rng.range(MIN_SIZE, max + 1);
        let mut live: Vec<Buffer> = (0..slots)
            .map(|i| Buffer::new(size(&mut rng), ((tid as u64) << 40) | (1 << 39) | i as u64))
            .collect();
        let mut out = Outcome::default();
        for n in 0..share(p.scale.iterations, p.threads, tid) {
            let slot = rng.index(slots);
            let fresh_len = size(&mut rng);
            let old = std::mem::replace(
                &mut live[slot],
                Buffer::new(fresh_len, ((tid as u64) << 40) | n),
            );
            out.mismatches += old.release();
            out.ops += 1;
        }
        out.mismatches += live.into_iter().map(Buffer::release).sum::<u64>();
        out
    })
}
