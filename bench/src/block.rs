//! Heap blocks whose content proves the allocator handed out usable memory.
//!
//! A [`Block`] is allocated through the global allocator (whichever the worker binary
//! linked) and carries a `tag` (an object id). Its stamp words are a function of the tag
//! and the offset only, so a stamp written once stays valid across `realloc` moves and
//! across threads; [`Block::check`] counts the words that no longer match. Stamping one
//! word per page (plus the last word) proves every page is mapped and writable, and
//! catches overlapping live blocks, without turning each workload into `memset`.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::rng::mix;

/// One stamp per page: enough to fault in and check every page of a large block, cheap
/// (two words) for the small blocks that dominate most workloads.
pub const STAMP_STRIDE: usize = 4096;

/// Alignment requested for every block: a word, so stamps are aligned at stride offsets
/// and every allocator takes its plain `malloc` path.
const BLOCK_ALIGN: usize = 8;

/// Bytes in one stamp.
const WORD: usize = std::mem::size_of::<u64>();

/// The value stored at `offset` of the block tagged `tag`.
#[inline]
pub fn stamp_value(tag: u64, offset: usize) -> u64 {
    mix(tag) ^ offset as u64
}

/// An owned allocation of `len` bytes (at least 1) that frees itself on drop.
pub struct Block {
    ptr: NonNull<u8>,
    len: usize,
    tag: u64,
}

// SAFETY: a Block owns its allocation exclusively (no aliasing pointers escape), and
// global allocators accept frees from any thread, which is what several workloads test.
unsafe impl Send for Block {}

impl Block {
    /// Allocates `len` bytes and stamps them for `tag`.
    pub fn new(len: usize, tag: u64) -> Block {
        let layout = layout(len);
        // SAFETY: `layout` has a nonzero size (see `layout`).
        let raw = unsafe { alloc::alloc(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        let block = Block {
            ptr,
            len: layout.size(),
            tag,
        };
        block.stamp_from(0);
        block
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn tag(&self) -> u64 {
        self.tag
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Writes the stamps at offsets `>= start` (the new tail after a grow), and always
    /// the last word, whose position moves with the length.
    pub fn stamp_from(&self, start: usize) {
        let base = self.ptr.as_ptr();
        if self.len < WORD {
            for offset in start..self.len {
                // SAFETY: `offset < len`: in bounds of our live allocation.
                unsafe { base.add(offset).write(tiny_stamp(self.tag, offset)) };
            }
            return;
        }
        for offset in self.word_offsets(start) {
            // SAFETY: `word_offsets` yields offsets with `offset + WORD <= len`; unaligned
            // because the last word need not be word-aligned.
            unsafe {
                base.add(offset)
                    .cast::<u64>()
                    .write_unaligned(stamp_value(self.tag, offset))
            };
        }
    }

    /// Counts stamps that do not hold their expected value.
    pub fn check(&self) -> u64 {
        let base = self.ptr.as_ptr();
        if self.len < WORD {
            let bad = (0..self.len).filter(|&offset| {
                // SAFETY: `offset < len`; every byte of a tiny block is stamped.
                unsafe { base.add(offset).read() != tiny_stamp(self.tag, offset) }
            });
            return bad.count() as u64;
        }
        let bad = self.word_offsets(0).filter(|&offset| {
            // SAFETY: as in `stamp_from`; every yielded word was stamped.
            unsafe {
                base.add(offset).cast::<u64>().read_unaligned() != stamp_value(self.tag, offset)
            }
        });
        bad.count() as u64
    }

    /// Resizes through the global allocator's `realloc`. The stamps of the kept prefix
    /// must survive the move (the caller checks); the positions that are new at this
    /// length (the grown tail, the moved last word) are stamped here.
    pub fn realloc(&mut self, new_len: usize) {
        let old = layout(self.len);
        let new = layout(new_len);
        // SAFETY: `ptr` is live and was allocated with `old`; `new.size()` is nonzero and
        // fits isize once rounded to the alignment (checked by `layout`).
        let raw = unsafe { alloc::realloc(self.ptr.as_ptr(), old, new.size()) };
        self.ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(new));
        let old_len = std::mem::replace(&mut self.len, new.size());
        let kept = old_len.min(self.len);
        if kept < WORD {
            // A tiny block's byte stamps differ from word stamps: restamp everything.
            self.stamp_from(0);
        } else {
            // Stride words starting past `kept - 2 * WORD` were not stamp positions before.
            self.stamp_from((kept + 1).saturating_sub(2 * WORD));
        }
    }

    /// Offsets of the stamp words at or after `start`, for a block of at least a word:
    /// one per [`STAMP_STRIDE`] whose word ends before the last word begins, then the
    /// last word.
    fn word_offsets(&self, start: usize) -> impl Iterator<Item = usize> {
        let last = self.len - WORD;
        let first = start.div_ceil(STAMP_STRIDE) * STAMP_STRIDE;
        // Stride words must end at or before `last` so they never overlap it.
        let strides_end = (last + 1).saturating_sub(WORD);
        (first..strides_end)
            .step_by(STAMP_STRIDE)
            .chain(std::iter::once(last))
    }
}

/// The byte stored at `offset` of a block shorter than a word.
fn tiny_stamp(tag: u64, offset: usize) -> u8 {
    stamp_value(tag, offset) as u8
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `ptr` is live and was allocated (or last reallocated) with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout(self.len)) }
    }
}

/// The layout of a block of `len` bytes; zero-length requests become one byte, since
/// `GlobalAlloc` forbids zero-sized allocations.
fn layout(len: usize) -> Layout {
    Layout::from_size_align(len.max(1), BLOCK_ALIGN).expect("block size overflows isize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_blocks_check_clean() {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 4095, 4096, 4104, 4105, 100_000] {
            let b = Block::new(len, len as u64);
            assert_eq!(b.check(), 0, "len {len}");
        }
    }

    #[test]
    fn corruption_is_counted() {
        let b = Block::new(64, 5);
        // SAFETY: offset 0 is in bounds of the 64-byte block.
        unsafe { b.as_ptr().write(b.as_ptr().read() ^ 1) };
        assert_eq!(b.check(), 1);
    }

    #[test]
    fn stamps_survive_grow_and_shrink() {
        let mut b = Block::new(64 * 1024, 9);
        let mut len = b.len();
        while len < 1 << 20 {
            len *= 2;
            b.realloc(len);
            assert_eq!(b.check(), 0);
        }
        while len > 64 * 1024 {
            len /= 2;
            b.realloc(len);
            assert_eq!(b.check(), 0);
        }
    }

    #[test]
    fn odd_sizes_survive_realloc() {
        let mut b = Block::new(13, 1);
        for len in [21, 4099, 9000, 5, 3, 40] {
            b.realloc(len);
            assert_eq!(b.check(), 0, "len {len}");
        }
    }
}
