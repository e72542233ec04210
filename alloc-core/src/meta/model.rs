//! Model builds' (`cfg(loom)`) stand-in for the metadata arena, so that the region table
//! (`region::table`, its tree and block cache, `region::epoch`) builds and runs inside
//! the loom models. The real arena cannot: its lock and block stacks are on
//! `crate::sync` atomics, which are loom's there and cannot live in a static across
//! model executions (`meta/stack_loom.rs` checks the stacks themselves). Metadata is not
//! part of the protocol the table models check, so this serves the same calls from the
//! system allocator, one block per call, with the block's size in a header before it
//! (for `usable_size` and `free`). No pools and no spans (`region::blocks` cuts no
//! spans in model builds). Calls only `std::alloc`.

use std::alloc::{alloc as sys_alloc, dealloc, Layout};

/// As the real arena's: the unit `alloc_carved` counts in.
pub const CHUNK_SIZE: usize = 1 << 16;
/// As the real arena's: one pool part per block class of `region::blocks`.
pub const POOL_PARTS: usize = 2;
/// As the real arena's (directory ids with a pool; none has one here).
pub const POOL_OWNERS: usize = 64;

/// The header before each block: its size and the header's own length (the block's
/// alignment, at least two words).
const HEADER_MIN: usize = 2 * size_of::<usize>();

fn layout(size: usize, pad: usize) -> Layout {
    Layout::from_size_align(size + pad, pad).expect("a model metadata layout")
}

/// `size` bytes aligned to `align`; null for a size the layout cannot describe.
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    let pad = align.max(HEADER_MIN);
    let size = size.max(1);
    // SAFETY: a non-zero size.
    let base = unsafe { sys_alloc(layout(size, pad)) };
    if base.is_null() {
        return base;
    }
    // SAFETY: `pad` bytes of header lie before the block, at least two words, aligned.
    unsafe {
        let p = base.add(pad);
        (p as *mut usize).sub(1).write(size);
        (p as *mut usize).sub(2).write(pad);
        p
    }
}

/// Returns a block from `alloc`.
///
/// # Safety
/// `p` came from `alloc` and was not freed since.
pub unsafe fn free(p: *mut u8) {
    // SAFETY: caller contract: the header `alloc` wrote is before `p`.
    unsafe {
        let size = (p as *const usize).sub(1).read();
        let pad = (p as *const usize).sub(2).read();
        dealloc(p.sub(pad), layout(size, pad));
    }
}

/// Returns several blocks.
///
/// # Safety
/// As `free`, for every block.
pub unsafe fn free_all(blocks: impl Iterator<Item = *mut u8>) {
    for p in blocks {
        // SAFETY: caller contract.
        unsafe { free(p) };
    }
}

/// The size a block was allocated with.
///
/// # Safety
/// `p` is a live block from `alloc`.
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: caller contract.
    unsafe { (p as *const usize).sub(1).read() }
}

/// No pools in model builds.
pub fn pool(_owner: u8, _part: usize, _size: usize) -> Option<(usize, usize)> {
    None
}

/// No spans in model builds (`region::blocks` asks for single blocks there).
pub fn alloc_carved(_size: usize, _chunks: usize) -> *mut u8 {
    core::ptr::null_mut()
}

/// No pools in model builds.
pub fn in_pool(_p: *const u8) -> bool {
    false
}

/// No pools in model builds.
pub fn note_pool_carved(_bytes: usize) {}
