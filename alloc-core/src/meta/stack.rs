//! A lock-free stack of free metadata blocks (a Treiber stack), one per block class of
//! `meta`: a free pushes its block and an allocation pops one without the metadata lock,
//! so blocks that one thread allocates and another frees (crossbeam-epoch's sealed-bag
//! nodes, which reach `meta` through the re-entrant path) circulate without any
//! process-wide lock once warm. An empty stack sends an allocation to `meta`'s refill,
//! which cuts the next page of its class's current chunk, or of a freshly carved one (a
//! CAS on the tail or bump word, no lock either), and pushes that page's blocks as one
//! chain. It owns its head word, the first word of each block on it (the
//! link) and the table of arena numbers by which it names blocks (`name_arena`); it
//! calls only `sync`.
//!
//! ABA: a pop reads the head block and its link, then swings the head to the link with
//! a compare-and-swap. Between the two, other threads may pop that block, pop its
//! successor and push the first back: the head names the same block again, its link is
//! stale, and a CAS on the address alone would install as head a block another thread
//! owns. So the head word carries a version tag beside the block's name, changed by
//! every successful CAS, and such a CAS fails. The tag has 32 bits because a name has
//! 32 (arena number and offset, not the 44-bit address): with the address, a 20-bit tag
//! came round after 2^20 changes, which `tests::stall` shows fooling a pop stalled that
//! long (a signal handler's million pops and pushes: about 10 ms of one thread).
//! Reading the link of a block that another thread has popped meanwhile is harmless
//! because metadata memory is never unmapped: the value read is discarded by the CAS
//! that then fails. (That read may race with the new
//! owner's plain writes to the block: the one deliberate race here, as in every Treiber
//! stack over recycled memory. Epoch-based reclamation would avoid it, but crossbeam's
//! allocates, which is what this stack exists to avoid.)
//!
//! `stack_loom.rs` model-checks pops, pushes and chain pushes against each other with
//! the shipped code, and a twin without the tag, which loom catches handing a block out
//! twice.

use crate::sync::atomic::{AtomicUsize, Ordering};
use core::marker::PhantomData;

/// How a stack names its blocks in its head word and in the links: a number below
/// `2^BITS`, 0 for none. The rest of the head word is the version tag, so the fewer
/// bits a name takes, the more changes a stalled pop survives (`TaggedStack`).
pub trait Names {
    const BITS: u32;
    /// The name of `block` (null: 0).
    fn name(block: usize) -> usize;
    /// The block named `name` (0: null). Only for names of blocks (`name`).
    fn block(name: usize) -> usize;
}

/// Every metadata arena is this large and aligned (`meta::ARENA_SIZE`).
pub const ARENA_SHIFT: u32 = 30;
/// Blocks are aligned to at least 16 bytes (`meta`'s smallest class).
const ALIGN_SHIFT: u32 = 4;
const OFFSET_BITS: u32 = ARENA_SHIFT - ALIGN_SHIFT;
const OFFSET_MASK: usize = (1 << OFFSET_BITS) - 1;
/// Arenas that can be named: `meta`'s 16 and the pools' arena in a process, the unit
/// tests' private arenas besides; an arena beyond is given up as a failed reservation.
/// 63 so that a name (arena number 1..=63, then the offset in 16-byte units) takes 32
/// bits, and the tag the other 32.
pub const NAMED_ARENAS: usize = 63;
const ARENA_NUMBER_BITS: u32 = 6;
const _: () = assert!(NAMED_ARENAS < 1 << ARENA_NUMBER_BITS);

/// The base of each named arena, by number - 1. Not `crate::sync`: written once per
/// arena, outside the protocol the loom model checks.
static ARENA_BASES: [core::sync::atomic::AtomicUsize; NAMED_ARENAS] =
    [const { core::sync::atomic::AtomicUsize::new(0) }; NAMED_ARENAS];
static ARENAS_NAMED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Gives the fresh arena at `base` a number, kept in its first word (the chunk table's
/// entry for chunk 0, the table itself, which is otherwise unused). False if all
/// `NAMED_ARENAS` numbers are taken: its blocks cannot be stacked.
///
/// # Safety
/// `base` is a fresh `2^ARENA_SHIFT`-aligned arena of ours, named once, before any block
/// of it reaches a stack.
pub unsafe fn name_arena(base: usize) -> bool {
    debug_assert!(base.trailing_zeros() >= ARENA_SHIFT);
    // Relaxed: only hands out distinct numbers.
    let index = ARENAS_NAMED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if index >= NAMED_ARENAS {
        return false;
    }
    // Relaxed: a pop decodes a name only after its Acquire load of the head synchronised
    // with the push that stored it, which follows this store (the arena's blocks are
    // carved after it is named, and reach other threads through the stacks or locks).
    ARENA_BASES[index].store(base, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: caller contract: the arena's first word is ours.
    unsafe { (base as *mut u32).write(index as u32 + 1) };
    true
}

/// `meta`'s names: the arena's number (`name_arena`), then the block's offset in it in
/// 16-byte units. 32 bits, where the address itself would take 44: the tag gets 32.
pub struct ArenaNames;

impl Names for ArenaNames {
    const BITS: u32 = ARENA_NUMBER_BITS + OFFSET_BITS;

    #[inline]
    fn name(block: usize) -> usize {
        if block == 0 {
            return 0;
        }
        let base = block & !((1 << ARENA_SHIFT) - 1);
        // SAFETY: `block` is a block of a named arena (the stacks' contract), whose
        // first word holds its number, written before any of its blocks existed.
        let number = unsafe { *(base as *const u32) } as usize;
        debug_assert!(
            (1..=NAMED_ARENAS).contains(&number) && block.trailing_zeros() >= ALIGN_SHIFT,
            "block {block:#x} cannot be stacked"
        );
        number << OFFSET_BITS | (block - base) >> ALIGN_SHIFT
    }

    #[inline]
    fn block(name: usize) -> usize {
        if name == 0 {
            return 0;
        }
        // Relaxed: see `name_arena`.
        let base =
            ARENA_BASES[(name >> OFFSET_BITS) - 1].load(core::sync::atomic::Ordering::Relaxed);
        base + ((name & OFFSET_MASK) << ALIGN_SHIFT)
    }
}

/// Names that are the address itself (16-aligned, below 2^48), for the loom model, whose
/// blocks lie in no arena: 44 bits, a 20-bit tag.
pub struct AddressNames;

impl Names for AddressNames {
    const BITS: u32 = 48 - ALIGN_SHIFT;

    #[inline]
    fn name(block: usize) -> usize {
        debug_assert!(block.trailing_zeros() >= ALIGN_SHIFT && block >> 48 == 0);
        block >> ALIGN_SHIFT
    }

    #[inline]
    fn block(name: usize) -> usize {
        name << ALIGN_SHIFT
    }
}

/// A stack whose head word holds the top block's name (`N`) and, if `TAGGED`, a version
/// tag in the bits above it, advanced by every change. A pop is fooled only if it stalls
/// between its load and its CAS while exactly a multiple of `2^(64 - N::BITS)` changes
/// of the head happen and the last leaves the same block on top: 2^32 with
/// `ArenaNames` (the shipped `FreeStack`: seconds of one class's churn at any rate
/// `meta` sees). Untagged only in the loom twin that shows what the tag prevents.
pub struct TaggedStack<N: Names, const TAGGED: bool> {
    head: AtomicUsize,
    names: PhantomData<N>,
}

/// The shipped stack.
pub type FreeStack = TaggedStack<ArenaNames, true>;

/// The link word of a free block: its first word, the name of the next block.
///
/// # Safety
/// `block` is (or was) a metadata block: aligned, at least a word long, never unmapped.
#[inline]
unsafe fn link<'a>(block: usize) -> &'a AtomicUsize {
    // SAFETY: caller contract; an `AtomicUsize` has the layout of the `usize` there.
    unsafe { &*(block as *const AtomicUsize) }
}

impl<N: Names, const TAGGED: bool> TaggedStack<N, TAGGED> {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        TaggedStack {
            head: AtomicUsize::new(0),
            names: PhantomData,
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        TaggedStack {
            head: AtomicUsize::new(0),
            names: PhantomData,
        }
    }

    const NAME_MASK: usize = (1 << N::BITS) - 1;
    const TAG_UNIT: usize = if TAGGED { 1 << N::BITS } else { 0 };

    /// The head word naming `name`, one tag step after `old`. (Not checked: a pop may
    /// build a word from a stale link, which its failing CAS then discards; names are
    /// checked where blocks are named, `Names::name`.)
    #[inline]
    fn word(name: usize, old: usize) -> usize {
        name | (old & !Self::NAME_MASK).wrapping_add(Self::TAG_UNIT)
    }

    /// Takes the top block, or null if the stack is empty.
    #[inline]
    pub fn pop(&self) -> *mut u8 {
        // Acquire pairs with the Release CAS of the push that put the head block there:
        // its link (read next) and its contents are the pusher's.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let block = N::block(head & Self::NAME_MASK);
            if block == 0 {
                return core::ptr::null_mut();
            }
            // Relaxed: the Acquire that gave us `head` ordered the link's store before
            // it; if the block was popped since, the value is stale (any word its new
            // owner wrote: only compared and stored, never followed) and the CAS fails.
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
    /// `block` is a metadata block that `N` names (`ArenaNames`: of a named arena, at
    /// least 16-aligned), owned by the caller and on no stack; the stack owns it
    /// afterwards.
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
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release CAS below.
            // SAFETY: caller contract: `last` is ours until the CAS succeeds.
            unsafe { link(last as usize) }.store(head & Self::NAME_MASK, Ordering::Relaxed);
            // Release: the chain's links and the blocks' last contents happen before the
            // pop (Acquire) that takes each of them.
            match self.head.compare_exchange_weak(
                head,
                Self::word(N::name(first as usize), head),
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
        unsafe { link(block as usize) }.store(N::name(next as usize), Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
impl<N: Names, const TAGGED: bool> Default for TaggedStack<N, TAGGED> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A fresh named arena (address space only), as `meta` reserves them.
    pub(super) fn named_arena() -> usize {
        let size = 1 << ARENA_SHIFT;
        let base = crate::os::reserve(size, size).expect("an arena reserved");
        // SAFETY: fresh, aligned, ours; named once.
        assert!(unsafe { name_arena(base) }, "a number left for the arena");
        base
    }

    /// `count` 16-byte blocks of a fresh named arena, past its first chunk.
    fn blocks(count: usize) -> Vec<*mut u8> {
        let base = named_arena();
        (0..count)
            .map(|i| (base + (1 << 16) + 16 * i) as *mut u8)
            .collect()
    }

    #[test]
    fn pops_what_was_pushed_lifo_and_chains_keep_their_order() {
        let b = blocks(4);
        let stack = FreeStack::new();
        assert!(stack.pop().is_null());
        // SAFETY: 16-byte aligned blocks of a named arena, each pushed once while off
        // the stack.
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
    fn every_change_advances_the_tag_above_a_32_bit_name() {
        let b = blocks(2);
        let last = (b[0] as usize | ((1 << ARENA_SHIFT) - 16)) as *mut u8;
        for &p in [b[0], b[1], last].iter() {
            let name = ArenaNames::name(p as usize);
            assert!(name != 0 && name >> 32 == 0, "{name:#x}: 32 bits");
            assert_eq!(ArenaNames::block(name), p as usize);
        }
        let stack = FreeStack::new();
        let before = stack.head.load(Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { stack.push(b[0]) };
        assert_eq!(stack.pop(), b[0]);
        let after = stack.head.load(Ordering::Relaxed);
        assert_eq!(after & FreeStack::NAME_MASK, 0);
        assert_eq!(
            after.wrapping_sub(before),
            2 << 32,
            "push and pop each step the 32-bit tag"
        );
    }

    /// A pop stalled between its link read and its CAS while the head changes a million
    /// times (the stall: a signal handler on the popping thread, so it lands inside
    /// `pop` at an arbitrary instruction; the changes: the ABA sequence, then pops and
    /// pushes of the top block to make up `STALL_CHANGES`). The handler takes the top
    /// two blocks, gives back the one it held since its last run, puts the first back on
    /// top (a new link) and keeps the second: if the interrupted pop had read the old
    /// top's link, its CAS must fail, else the block the handler keeps is back on the
    /// stack and the handler's next run pops it while holding it.
    mod stall {
        use super::super::*;
        use std::sync::atomic::AtomicBool;
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

        /// Changes of the head per stall: about 10 ms of one thread's pops and pushes.
        const STALL_CHANGES: usize = 1 << 20;
        /// Stalls before giving up (each lands in the pop's window, between its link
        /// read and its CAS, a few percent of the time).
        const STALLS: usize = 100;
        const BLOCKS: usize = 8;

        /// The named arena the blocks lie in.
        static BASE: AtomicUsize = AtomicUsize::new(0);
        static STACK: FreeStack = FreeStack::new();
        /// The block the handler keeps between its runs.
        static HELD: AtomicUsize = AtomicUsize::new(0);
        static FOOLED: AtomicBool = AtomicBool::new(false);
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        static STOP: AtomicBool = AtomicBool::new(false);

        fn block(i: usize) -> *mut u8 {
            (BASE.load(Relaxed) + (1 << 16) + 16 * i) as *mut u8
        }

        extern "C" fn handler(_: libc::c_int) {
            let (x, y) = (STACK.pop(), STACK.pop());
            let held = HELD.load(Relaxed);
            if x as usize == held || y as usize == held || x.is_null() || y.is_null() {
                FOOLED.store(true, Relaxed);
            } else {
                // SAFETY: blocks of the named arena, each off the stack and ours.
                unsafe {
                    STACK.push(held as *mut u8);
                    STACK.push(x);
                }
                HELD.store(y as usize, Relaxed);
                // Four changes so far; the rest in pop-push pairs of the top block.
                for _ in 0..STALL_CHANGES / 2 - 2 {
                    let p = STACK.pop();
                    // SAFETY: as above.
                    unsafe { STACK.push(p) };
                }
            }
            // Release: the sender reads `FOOLED` after this.
            RUNS.fetch_add(1, Release);
        }

        #[test]
        fn a_pop_stalled_for_a_million_changes_is_not_fooled() {
            BASE.store(super::named_arena(), Relaxed);
            HELD.store(block(BLOCKS - 1) as usize, Relaxed);
            for i in (0..BLOCKS - 1).rev() {
                // SAFETY: 16-aligned blocks of the named arena, each pushed once.
                unsafe { STACK.push(block(i)) };
            }
            // SAFETY: a handler that only touches atomics and the stack.
            unsafe {
                let mut action: libc::sigaction = core::mem::zeroed();
                action.sa_sigaction = handler as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                assert_eq!(
                    libc::sigaction(libc::SIGUSR2, &action, core::ptr::null_mut()),
                    0
                );
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let looper = std::thread::spawn(move || {
                // SAFETY: plain call.
                tx.send(unsafe { libc::pthread_self() }).unwrap();
                while !STOP.load(Relaxed) {
                    let p = STACK.pop();
                    if !p.is_null() {
                        // SAFETY: a block we just popped.
                        unsafe { STACK.push(p) };
                    }
                }
            });
            let thread = rx.recv().unwrap();
            let mut stalls = 0;
            while stalls < STALLS && !FOOLED.load(Relaxed) {
                // SAFETY: the looper runs until `STOP`.
                assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR2) }, 0);
                stalls += 1;
                // Acquire pairs with the handler's Release.
                while RUNS.load(Acquire) < stalls {
                    std::thread::yield_now();
                }
            }
            STOP.store(true, Relaxed);
            looper.join().unwrap();
            assert!(
                !FOOLED.load(Relaxed),
                "a pop stalled for {STALL_CHANGES} changes took a stale link ({stalls} stalls)"
            );
        }
    }
}
