//! A page: a run of 64 KiB units inside a segment, carved into blocks of one size class,
//! with mimalloc's three sharded free lists. It owns the page descriptor and its lists,
//! and calls nothing.
//!
//! - `free`: blocks ready for the owner's fast path;
//! - `local_free`: blocks freed by the owner (kept apart so the fast path's list stays
//!   short-lived and a page that empties is noticed without walking lists);
//! - `thread_free`: blocks freed by other threads, pushed with one CAS and taken whole
//!   by the owner with one swap (many producers, one consumer that takes everything:
//!   no ABA).
//!
//! Blocks beyond `bump` were never handed out; the owner carves them lazily, a batch at
//! a time, so a fresh page costs nothing until used.

use crate::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use core::ptr;

/// A free block's header. `cookie` marks it free (`FREE_COOKIE ^ address`), which is
/// how a second `free` of the same block is recognised; allocation clears it.
#[repr(C)]
pub struct Block {
    pub next: *mut Block,
    pub cookie: usize,
}

/// An arbitrary odd constant; a freed block carries it xor its own address, so user data
/// matching it by chance is as likely as guessing a 64-bit value.
const FREE_COOKIE: usize = 0x9e37_79b9_7f4a_7c15;

#[inline(always)]
pub fn free_cookie(block: *const Block) -> usize {
    FREE_COOKIE ^ block as usize
}

/// With the `secure` feature, free-list links are stored xor a per-process random key
/// and the block's own (rotated) address, so an attacker who overwrites a freed block
/// cannot plant a chosen pointer, and a corrupted link is caught when popped.
#[cfg(feature = "secure")]
pub mod hardening {
    use core::sync::atomic::{AtomicUsize, Ordering};

    static KEY: AtomicUsize = AtomicUsize::new(0);

    /// Sets the key once, from the kernel's random bytes (before the first block).
    pub fn init() {
        if KEY.load(Ordering::Relaxed) != 0 {
            return;
        }
        let mut key = 0usize;
        // SAFETY: getrandom writes at most size_of::<usize>() bytes into `key`.
        unsafe {
            libc::getrandom(
                &mut key as *mut usize as *mut libc::c_void,
                core::mem::size_of::<usize>(),
                0,
            )
        };
        let _ = KEY.compare_exchange(0, key | 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    #[inline(always)]
    pub fn mask(block: usize) -> usize {
        KEY.load(Ordering::Relaxed) ^ block.rotate_left(17)
    }

    /// A cheap per-thread generator for free-list shuffling (xorshift seeded by the key
    /// and the stack address).
    pub fn random() -> usize {
        thread_local! {
            static STATE: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
        }
        STATE.with(|s| {
            let mut x = s.get();
            if x == 0 {
                x = (KEY.load(Ordering::Relaxed) ^ (&x as *const usize as usize)) | 1;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        })
    }
}

impl Block {
    /// The next link of a free block.
    ///
    /// # Safety
    /// `this` is a free block.
    #[inline(always)]
    pub unsafe fn load_next(this: *mut Block) -> *mut Block {
        // SAFETY: caller contract.
        let stored = unsafe { (*this).next } as usize;
        #[cfg(feature = "secure")]
        let stored = stored ^ hardening::mask(this as usize);
        stored as *mut Block
    }

    /// Sets the next link of a free block.
    ///
    /// # Safety
    /// `this` is a block we own.
    #[inline(always)]
    pub unsafe fn store_next(this: *mut Block, next: *mut Block) {
        let stored = next as usize;
        #[cfg(feature = "secure")]
        let stored = stored ^ hardening::mask(this as usize);
        // SAFETY: caller contract.
        unsafe { (*this).next = stored as *mut Block };
    }
}

/// Blocks carved per lazy extension: one OS page's worth (as mimalloc's), so an extension
/// faults in at most the page it links and a class with few live blocks touches little.
/// Measured against 16 KiB (`/usr/bin/time`, bench workers at 8 threads): larson 8.4K ->
/// 6.0K minor faults and 36 -> 27 MiB max RSS, mstress 22K -> 17K faults and 64 -> 50
/// MiB, for 0.4-1.9% more instructions (callgrind, 2 threads) in the extra slow paths.
const EXTEND_BYTES: usize = 4 * 1024;
const EXTEND_MIN_BLOCKS: usize = 4;

#[cfg(not(feature = "secure"))]
fn batch_order(_batch: usize) -> (usize, usize) {
    (0, 1)
}

/// A random start and a random stride coprime with `batch` (so every block is linked
/// exactly once).
#[cfg(feature = "secure")]
fn batch_order(batch: usize) -> (usize, usize) {
    fn gcd(mut a: usize, mut b: usize) -> usize {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
    let offset = hardening::random() % batch;
    let mut stride = 1;
    for _ in 0..8 {
        let candidate = (hardening::random() % batch) | 1;
        if gcd(candidate, batch) == 1 {
            stride = candidate;
            break;
        }
    }
    (offset, stride)
}

/// `full_state` values: the handshake between an owner that parks a full page off its
/// queues and remote freers that must bring it back.
pub const NOT_FULL: u8 = 0;
pub const FULL: u8 = 1;
pub const PENDING: u8 = 2;

/// Scale of the reciprocal used to validate block offsets without a division: for
/// offsets below 2^20 and block sizes up to 2^19, `(off * ceil(2^40 / size)) >> 40`
/// is exactly `off / size`.
const RECIPROCAL_SHIFT: u32 = 40;

/// 128 bytes (two cache lines, a power of two so indexing is a shift): the hot owner
/// fields share the first line with the shared `thread_free` word.
#[repr(C, align(128))]
pub struct Page {
    // --- owner-only fields, hot ---
    pub free: *mut Block,
    pub used: u32,
    pub block_size: u32,
    pub local_free: *mut Block,
    /// Owner-side: the page is parked off its queue because it had no free block.
    pub in_full: bool,
    pub class: u8,
    /// Units this page spans; 0 when the descriptor is not a live page.
    pub units: u8,
    // --- shared ---
    pub thread_free: AtomicPtr<Block>,
    pub full_state: AtomicU8,
    // --- owner-only, cold ---
    pub reciprocal: u64,
    /// First block address and the end of the page's usable bytes.
    pub start: usize,
    pub end: usize,
    /// First never-carved byte.
    pub bump: usize,
    /// Class queue links.
    pub next: *mut Page,
    pub prev: *mut Page,
    /// Link in the heap's stack of pages that need the owner's attention.
    pub pending_next: AtomicPtr<Page>,
}

impl Page {
    pub const fn empty() -> Self {
        Page {
            free: ptr::null_mut(),
            used: 0,
            block_size: 0,
            local_free: ptr::null_mut(),
            in_full: false,
            class: 0,
            units: 0,
            thread_free: AtomicPtr::new(ptr::null_mut()),
            full_state: AtomicU8::new(NOT_FULL),
            reciprocal: 0,
            start: 0,
            end: 0,
            bump: 0,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            pending_next: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Makes this descriptor a fresh page of `class` over `[start, end)`.
    pub fn init(
        &mut self,
        class: usize,
        block_size: usize,
        units: usize,
        start: usize,
        end: usize,
    ) {
        *self = Page::empty();
        self.class = class as u8;
        self.units = units as u8;
        self.block_size = block_size as u32;
        self.reciprocal = (1u64 << RECIPROCAL_SHIFT).div_ceil(block_size as u64);
        self.start = start;
        self.end = end;
        self.bump = start;
    }

    /// The block index of `addr`, if `addr` is the start of a block ever carved here.
    #[inline(always)]
    pub fn block_index(&self, addr: usize) -> Option<usize> {
        // Two comparisons against the bounds rather than one of `addr - start` against
        // `bump - start`: one subtraction and load fewer on every free.
        if addr >= self.bump || addr < self.start {
            return None;
        }
        let off = addr - self.start;
        let index = ((off as u64 * self.reciprocal) >> RECIPROCAL_SHIFT) as usize;
        (index * self.block_size as usize == off).then_some(index)
    }

    /// Capacity in blocks.
    pub fn capacity(&self) -> usize {
        (self.end - self.start) / self.block_size as usize
    }

    /// Carves the next batch of never-used blocks into `free`. False when none remain.
    pub fn extend(&mut self) -> bool {
        let size = self.block_size as usize;
        let left = (self.end - self.bump) / size;
        if left == 0 {
            return false;
        }
        let batch = left.min((EXTEND_BYTES / size).max(EXTEND_MIN_BLOCKS));
        let first = self.bump;
        self.bump += batch * size;
        // Link the batch; blocks keep cookie 0 (never freed). In order by default (the
        // next allocation is the next address: friendly to caches and prefetchers); with
        // the `secure` feature, in a random stride order so addresses are not predictable.
        let (offset, stride) = batch_order(batch);
        let mut next = self.free;
        for i in (0..batch).rev() {
            let index = (offset + i * stride) % batch;
            let block = (first + index * size) as *mut Block;
            // SAFETY: the block lies in this page's never-used part, owned by us.
            unsafe {
                block.write(Block {
                    next: ptr::null_mut(),
                    cookie: 0,
                });
                Block::store_next(block, next);
            }
            next = block;
        }
        self.free = next;
        true
    }

    /// Moves `local_free` and `thread_free` into `free`; returns true if `free` is
    /// non-empty afterwards.
    pub fn collect(&mut self) -> bool {
        if !self.thread_free.load(Ordering::Relaxed).is_null() {
            // Acquire pairs with the freers' Release push: their last writes to the
            // blocks (the links) are visible before we follow them.
            let mut list = self.thread_free.swap(ptr::null_mut(), Ordering::Acquire);
            let mut count = 0u32;
            while !list.is_null() {
                // SAFETY: blocks on the list are free blocks of this page.
                let next = unsafe { Block::load_next(list) };
                // SAFETY: as above.
                unsafe { Block::store_next(list, self.free) };
                self.free = list;
                list = next;
                count += 1;
            }
            self.used -= count;
        }
        if !self.local_free.is_null() {
            if self.free.is_null() {
                self.free = self.local_free;
            } else {
                let mut tail = self.local_free;
                // SAFETY: local_free holds free blocks of this page.
                unsafe {
                    loop {
                        let next = Block::load_next(tail);
                        if next.is_null() {
                            break;
                        }
                        tail = next;
                    }
                    Block::store_next(tail, self.free);
                }
                self.free = self.local_free;
            }
            self.local_free = ptr::null_mut();
        }
        !self.free.is_null()
    }

    /// Pushes a block freed by a thread that does not own the page. Returns true if the
    /// page was parked full and this caller must hand it to the owner's pending stack.
    ///
    /// # Safety
    /// `block` is a block of this page that the caller is freeing.
    #[inline]
    pub unsafe fn push_remote(&self, block: *mut Block) -> bool {
        let mut head = self.thread_free.load(Ordering::Relaxed);
        loop {
            // SAFETY: the block is ours to link until the push is published.
            unsafe { Block::store_next(block, head) };
            // SeqCst pairs with the owner's SeqCst store of FULL and load of
            // `thread_free` in `park_full` (a store-load handshake: either the owner
            // sees this block, or we see FULL).
            match self.thread_free.compare_exchange_weak(
                head,
                block,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => head = seen,
            }
        }
        self.full_state.load(Ordering::SeqCst) == FULL
            && self
                .full_state
                .compare_exchange(FULL, PENDING, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    }

    /// Owner: parks the page as full. Returns false if a remote free raced in and the
    /// page stays usable (not parked).
    pub fn park_full(&mut self) -> bool {
        self.in_full = true;
        self.full_state.store(FULL, Ordering::SeqCst);
        if self.thread_free.load(Ordering::SeqCst).is_null() {
            return true;
        }
        if self
            .full_state
            .compare_exchange(FULL, NOT_FULL, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            self.in_full = false;
            return false;
        }
        // A freer moved it to PENDING and is pushing it to our pending stack.
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn extend_collect_and_validate() {
        let mut memory = vec![0u64; 1024];
        let start = memory.as_mut_ptr() as usize;
        let mut page = Page::empty();
        page.init(3, 64, 1, start, start + 8192);
        assert_eq!(page.capacity(), 128);
        assert_eq!(page.block_index(start), None, "nothing carved yet");
        assert!(page.extend());
        assert_eq!(page.block_index(start + 64 * 5), Some(5));
        assert_eq!(page.block_index(start + 64 * 5 + 8), None, "interior");
        assert_eq!(page.block_index(start - 64), None);
        let a = page.free;
        // SAFETY: `a` is a carved block of the page.
        page.free = unsafe { Block::load_next(a) };
        page.used = 1;
        // SAFETY: `a` is a block of the page.
        assert!(!unsafe { page.push_remote(a) }, "not parked: no hand-off");
        assert!(page.collect());
        assert_eq!(page.used, 0);
        assert_eq!(page.free, a);
    }

    #[test]
    fn park_full_handshake() {
        let mut memory = vec![0u64; 64];
        let start = memory.as_mut_ptr() as usize;
        let mut page = Page::empty();
        page.init(0, 16, 1, start, start + 512);
        assert!(page.park_full());
        let block = start as *mut Block;
        // SAFETY: both are blocks of the page.
        let (first, second) = unsafe {
            (
                page.push_remote(block),
                page.push_remote((start + 16) as *mut Block),
            )
        };
        assert!(first, "first remote free of a parked page hands it off");
        assert_eq!(page.full_state.load(Ordering::Relaxed), PENDING);
        assert!(!second, "only once");
    }
}
