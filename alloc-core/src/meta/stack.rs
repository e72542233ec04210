//! A lock-free stack of free metadata blocks (a Treiber stack), one per block class of
//! `meta`: a free pushes its block and an allocation pops one without the metadata lock,
//! so blocks that one thread allocates and another frees (crossbeam-epoch's sealed-bag
//! nodes, which reach `meta` through the re-entrant path) circulate without any
//! process-wide lock once warm. Only an empty stack sends an allocation to the lock,
//! where `meta` carves a fresh chunk and pushes its blocks as one chain. It owns its head
//! word and the first word of each block on it (the link); it calls only `sync`.
//!
//! ABA: a pop reads the head block and its link, then swings the head to the link with
//! a compare-and-swap. Between the two, other threads may pop that block, pop its
//! successor and push the first back: the head names the same block again, its link is
//! stale, and a CAS on the address alone would install as head a block another thread
//! owns. So the head word carries a version tag beside the address, changed by every
//! successful CAS, and such a CAS fails. Reading the link of a block that another thread
//! has popped meanwhile is harmless because metadata memory is never unmapped: the value
//! read is discarded by the CAS that then fails. (That read may race with the new
//! owner's plain writes to the block: the one deliberate race here, as in every Treiber
//! stack over recycled memory. Epoch-based reclamation would avoid it, but crossbeam's
//! allocates, which is what this stack exists to avoid.)
//!
//! `stack_loom.rs` model-checks pops, pushes and chain pushes against each other with
//! the shipped code, and a twin without the tag, which loom catches handing a block out
//! twice.

use crate::sync::atomic::{AtomicUsize, Ordering};

/// Block addresses are below 2^ADDR_BITS: user space with 4-level page tables on x86-64
/// (47 bits) and AArch64 (48); the kernel maps above only when asked with a hint, which
/// `os::reserve` never gives. `meta` checks every arena it reserves (`fits`).
pub const ADDR_BITS: u32 = 48;
/// Blocks are aligned to at least 16 bytes (`meta`'s smallest class), so the head word
/// keeps the address shifted right by four, and the tag gets those bits.
const ALIGN_SHIFT: u32 = 4;
const ADDR_FIELD_BITS: u32 = ADDR_BITS - ALIGN_SHIFT;
const ADDR_MASK: usize = (1 << ADDR_FIELD_BITS) - 1;
/// One step of the version tag: the top 20 bits of the head word. A pop is fooled only
/// if it stalls between its load and its CAS while exactly a multiple of 2^20 changes
/// of its class's head happen and the last leaves the same block on top.
pub const TAG_UNIT: usize = 1 << ADDR_FIELD_BITS;

/// A stack whose head's tag advances by `TAG` per change: `TAG_UNIT` in the shipped
/// `FreeStack`; 0 only in the loom twin that shows what the tag prevents.
pub struct TaggedStack<const TAG: usize> {
    head: AtomicUsize,
}

/// The shipped stack.
pub type FreeStack = TaggedStack<TAG_UNIT>;

/// True if a block at `addr` can be kept on a stack (aligned and below 2^ADDR_BITS).
#[inline]
pub const fn fits(addr: usize) -> bool {
    addr.trailing_zeros() >= ALIGN_SHIFT && addr >> ADDR_BITS == 0
}

/// The link word of a free block: its first word.
///
/// # Safety
/// `block` is (or was) a metadata block: aligned, at least a word long, never unmapped.
#[inline]
unsafe fn link<'a>(block: usize) -> &'a AtomicUsize {
    // SAFETY: caller contract; an `AtomicUsize` has the layout of the `usize` there.
    unsafe { &*(block as *const AtomicUsize) }
}

impl<const TAG: usize> TaggedStack<TAG> {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        TaggedStack {
            head: AtomicUsize::new(0),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        TaggedStack {
            head: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn block_of(word: usize) -> usize {
        (word & ADDR_MASK) << ALIGN_SHIFT
    }

    /// The head word naming `block`, one tag step after `old`. (Not checked here: a pop
    /// may build a word from a stale link, which its failing CAS then discards.)
    #[inline]
    fn word(block: usize, old: usize) -> usize {
        (block >> ALIGN_SHIFT) | (old & !ADDR_MASK).wrapping_add(TAG)
    }

    /// Takes the top block, or null if the stack is empty.
    #[inline]
    pub fn pop(&self) -> *mut u8 {
        // Acquire pairs with the Release CAS of the push that put the head block there:
        // its link (read next) and its contents are the pusher's.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let block = Self::block_of(head);
            if block == 0 {
                return core::ptr::null_mut();
            }
            // Relaxed: the Acquire that gave us `head` ordered the link's store before
            // it; if the block was popped since, the value is stale and the CAS fails.
            // SAFETY: a block that was on the stack: metadata memory is never unmapped.
            let next = unsafe { link(block) }.load(Ordering::Relaxed);
            // Acquire on success: the block's contents are ours to read and write after
            // the pusher's. On failure as at the top: we read the new head's link.
            match self.head.compare_exchange_weak(
                head,
                Self::word(next, head),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return block as *mut u8,
                Err(seen) => head = seen,
            }
        }
    }

    /// Pushes one free block.
    ///
    /// # Safety
    /// `block` is a metadata block (`fits`), owned by the caller and on no stack; the
    /// stack owns it afterwards.
    #[inline]
    pub unsafe fn push(&self, block: *mut u8) {
        // SAFETY: caller contract.
        unsafe { self.push_chain(block, block) }
    }

    /// Pushes the chain `first ..= last` (linked with `set_link`) with one CAS.
    ///
    /// # Safety
    /// Every block of the chain is as in `push`; the links lead from `first` to `last`.
    pub unsafe fn push_chain(&self, first: *mut u8, last: *mut u8) {
        debug_assert!(fits(first as usize) && fits(last as usize) && !first.is_null());
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release CAS below.
            // SAFETY: caller contract: `last` is ours until the CAS succeeds.
            unsafe { link(last as usize) }.store(Self::block_of(head), Ordering::Relaxed);
            // Release: the chain's links and the blocks' last contents happen before the
            // pop (Acquire) that takes each of them.
            match self.head.compare_exchange_weak(
                head,
                Self::word(first as usize, head),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => head = seen,
            }
        }
    }

    /// Links `block` to `next` in a chain being built for `push_chain`.
    ///
    /// # Safety
    /// `block` is owned by the caller, as in `push`.
    #[inline]
    pub unsafe fn set_link(block: *mut u8, next: *mut u8) {
        // Relaxed: published by `push_chain`'s Release CAS.
        // SAFETY: caller contract.
        unsafe { link(block as usize) }.store(next as usize, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
impl<const TAG: usize> Default for TaggedStack<TAG> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[repr(C, align(16))]
    struct Blocks([[usize; 2]; 4]);

    #[test]
    fn pops_what_was_pushed_lifo_and_chains_keep_their_order() {
        let mut memory = Box::new(Blocks([[0; 2]; 4]));
        let b: Vec<*mut u8> = memory
            .0
            .iter_mut()
            .map(|x| x.as_mut_ptr() as *mut u8)
            .collect();
        let stack = FreeStack::new();
        assert!(stack.pop().is_null());
        // SAFETY: 16-byte aligned blocks of our own, each pushed once while off the stack.
        unsafe {
            stack.push(b[0]);
            FreeStack::set_link(b[1], b[2]);
            FreeStack::set_link(b[2], b[3]);
            stack.push_chain(b[1], b[3]);
        }
        let order: Vec<*mut u8> = (0..4).map(|_| stack.pop()).collect();
        assert_eq!(order, [b[1], b[2], b[3], b[0]]);
        assert!(stack.pop().is_null());
    }

    #[test]
    fn every_change_advances_the_tag() {
        let mut memory = Box::new(Blocks([[0; 2]; 4]));
        let a = memory.0[0].as_mut_ptr() as *mut u8;
        let stack = FreeStack::new();
        let before = stack.head.load(Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { stack.push(a) };
        assert_eq!(stack.pop(), a);
        let after = stack.head.load(Ordering::Relaxed);
        assert_eq!(FreeStack::block_of(after), 0);
        assert_eq!(
            after.wrapping_sub(before),
            2 * TAG_UNIT,
            "push and pop each step it"
        );
        assert!(fits(a as usize) && !fits(a as usize + 8) && !fits(1 << ADDR_BITS));
    }
}
