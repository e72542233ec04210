//! A page: a run of 64 KiB units inside a segment, carved into blocks of one size class,
//! with mimalloc's three sharded free lists. It owns the page descriptor and its lists
//! (and, with the `secure` feature, the per-process key that encodes their links), and
//! calls nothing (but `getrandom` for that key).
//!
//! - `free`: blocks ready for the owner's fast path;
//! - `local_free`: blocks freed by the owner (kept apart so the fast path's list stays
//!   short-lived and a page that empties is noticed without walking lists);
//! - `thread_free`: blocks freed by other threads, pushed with one CAS and taken whole
//!   by the owner with one RMW (many producers, one consumer that takes everything:
//!   no ABA). The same word carries the page's hand-off state (`ThreadFree`).
//!
//! Blocks beyond `carved` were never handed out; the owner carves them lazily, a batch at
//! a time, so a fresh page costs nothing until used.
//!
//! **What another thread may touch.** A remote freer reads only fields that never change
//! while the page is live (`start`, `block_size`, `block_magic`, `class`), `carved` (an
//! atomic: the owner advances it while freers validate against it), `divisor_magic` (an
//! atomic: the owner zeroes it while a block of the page is sampled by the heap
//! profiler, see `mark_sampled`), and the shared words (`thread_free`, `pending_next`,
//! `sampled`), always through raw pointers or atomics, never through
//! a `&Page`/`&mut Page` that would alias the owner's. It touches nothing of the page
//! after its block is published, except when its push won the page's hand-off (state
//! `Full` -> `Pending`): a `Pending` page is never retired until the owner has taken it
//! off its pending stack, so the freer may still link it there (DESIGN.md §5, publish
//! last).
//!
//! **Foreign drain.** A page that only other threads freed into stays parked on its
//! heap's pending stack until the owner's next slow path, which never comes for a
//! blocked thread. A foreign purger (`heap::reclaim`) may pop the stack and retire such a
//! page (`Page::drain_foreign`): the page is parked (`Pending`, not `PendingQueued`: the
//! owner finished with it before its Release park) and its remote list holds every
//! block it carved, so no thread holds a block of it and the owner cannot reach it.
//! Anything short of that is given back untouched. `heap/drain_loom.rs` checks it.

use crate::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use core::ptr;

/// A free block's header. `cookie` marks it free (`free_cookie(address)`), which is how
/// a second `free` of the same block is recognised; allocation clears it.
#[repr(C)]
pub struct Block {
    pub next: *mut Block,
    pub cookie: usize,
}

/// An arbitrary odd constant below 2^31 (the 32-bit fractional part of the golden
/// ratio, as hashes use it), so that `free_cookie` is one `lea` with a displacement.
const FREE_COOKIE: usize = 0x61c8_8647;

/// The mark of a free block at `block`: eight times its address plus `FREE_COOKIE`. It
/// is different for every block, never 0 (odd), and for every address above 2^44 (all
/// of ours: the kernel places our mappings near the top of the 47-bit user space) it is
/// above 2^47, so never a user pointer either; user data matching it by chance is as
/// likely as guessing a 64-bit value. One instruction (`lea`), where a 64-bit constant
/// xor the address took two, on every `free`.
#[inline(always)]
pub fn free_cookie(block: *const Block) -> usize {
    (block as usize).wrapping_mul(8).wrapping_add(FREE_COOKIE)
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
/// exactly once), never 1 or `batch - 1` where another stride exists: those link the
/// blocks in address order (or its reverse), from a random start. Drawn from all odd
/// candidates before, stride 1 came up for about one batch in 40 of 48-byte blocks
/// (`secure_mode`'s order check failed 1 run in 40 with "62/63" ascending).
#[cfg(feature = "secure")]
fn batch_order(batch: usize) -> (usize, usize) {
    let offset = hardening::random() % batch;
    (offset, scattering_stride(batch, hardening::random() as u64))
}

#[cfg(any(feature = "secure", test))]
fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The stride `batch_order` uses for a random draw `r`: the first stride from 2 to
/// `batch - 2` coprime with `batch`, scanning from a point `r` picks; 1 when there is
/// none (batches under 5, and 6, whose order is then only rotated).
#[cfg(any(feature = "secure", test))]
fn scattering_stride(batch: usize, r: u64) -> usize {
    if batch < 5 {
        return 1;
    }
    let span = batch - 3; // the strides 2..=batch-2
    let start = (r % span as u64) as usize;
    (0..span)
        .map(|k| 2 + (start + k) % span)
        .find(|&c| gcd(c, batch) == 1)
        .unwrap_or(1)
}

/// Where a page stands in the handshake between its owner, who parks a page that has no
/// free block off its queues, and remote freers, who must bring a parked page back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOff {
    /// In the owner's queues (or being emptied): a remote free just pushes its block.
    Active = 0,
    /// Parked off the queues: the next remote free must hand the page back.
    Full = 1,
    /// A remote freer won the hand-off: the page is on, or about to be pushed onto, the
    /// owner's pending stack. It stays `Pending` (or `PendingQueued`) until the owner pops
    /// it there, and until then the owner neither parks it as `Full` again nor retires
    /// it. The page is still parked: the owner has not touched it since it parked it, so a
    /// foreign drainer that holds it off the stack may take its remote blocks
    /// (`take_parked`).
    Pending = 2,
    /// As `Pending`, but the owner has taken the page back into its queues (a local free
    /// un-parked it): the owner uses its lists again, and no foreign drainer may.
    PendingQueued = 3,
}

/// The low bits of `ThreadFree`'s word hold the `HandOff` state; blocks are at least
/// 16-byte aligned (`MIN_BLOCK`), so a block address never uses them.
const STATE_MASK: usize = 0b11;
const _: () = assert!(super::size_class::MIN_BLOCK > STATE_MASK);

/// The top bits of `ThreadFree`'s word count the blocks on its list, so the owner takes
/// the list and its length with one RMW and never walks it (each block of it was last
/// written by another CPU: a walk is a chain of cache misses, a quarter of sh8bench's
/// time). Blocks lie in the 47-bit user space (`space` asserts it), so the bits from
/// `COUNT_SHIFT` up are free; a list holds at most one page's blocks (4,096), far below
/// 2^16. Two threads freeing one block at the same moment (a program's double free that
/// both cookie checks pass) push it twice: the count then says one block more than the
/// page's free blocks (its `used` one too low) and the block may link to itself, where
/// the old walk looped forever; neither is detected (review15b #2).
const COUNT_SHIFT: u32 = 48;
const COUNT_ONE: usize = 1 << COUNT_SHIFT;
const COUNT_MASK: usize = !(COUNT_ONE - 1);
/// The list head's bits of the word.
const LIST_MASK: usize = !(COUNT_MASK | STATE_MASK);
const _: () = assert!(1usize << 47 <= COUNT_ONE);
// The most blocks a page holds: a one-unit page of the smallest class (model builds
// have no segments).
#[cfg(not(loom))]
const _: () = assert!(
    super::segment::UNIT_SIZE / super::size_class::MIN_BLOCK < 1 << (usize::BITS - COUNT_SHIFT)
);

impl HandOff {
    #[inline(always)]
    fn of(word: usize) -> HandOff {
        match word & STATE_MASK {
            0 => HandOff::Active,
            1 => HandOff::Full,
            2 => HandOff::Pending,
            _ => HandOff::PendingQueued,
        }
    }

    /// True for both states of a hand-off under way.
    #[inline(always)]
    pub fn is_pending(self) -> bool {
        matches!(self, HandOff::Pending | HandOff::PendingQueued)
    }
}

/// What `ThreadFree::try_park` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Park {
    /// Parked; the next remote free hands the page back.
    Parked,
    /// Parked while a hand-off is already under way: the page comes back through the
    /// pending stack without another remote free.
    ParkedPending,
    /// Remote frees arrived: the page has blocks to collect and stays in its queue.
    HasBlocks,
}

/// The page's word shared with other threads: the head of the list of blocks they freed,
/// with the `HandOff` state in its low bits. Keeping both in one word makes "publish the
/// block" and "decide the hand-off" a single atomic step (mimalloc keeps its delayed-free
/// flags in its thread-free word for the same reason): a freer that does not win the
/// hand-off touches nothing after its push, and the owner cannot park the page in the
/// instant between a push and its check. Every operation is an RMW on this one word, so
/// its modification order alone orders parks, pushes and collects.
pub struct ThreadFree(AtomicUsize);

impl ThreadFree {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        ThreadFree(AtomicUsize::new(HandOff::Active as usize))
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        ThreadFree(AtomicUsize::new(HandOff::Active as usize))
    }

    /// Remote freer: pushes `block`. Returns true if the page was parked `Full` and this
    /// caller won its hand-off (it is now `Pending`): the caller must push the page onto
    /// its owner's pending stack, and may touch the page for that until it has done so.
    /// Otherwise the caller must not touch the page again: the owner may collect the
    /// block, empty the page and release its segment at once.
    ///
    /// # Safety
    /// `block` is a block of this page that the caller is freeing.
    #[inline]
    pub unsafe fn push(&self, block: *mut Block) -> bool {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let state = word & STATE_MASK;
            let won = state == HandOff::Full as usize;
            let new_state = if won {
                HandOff::Pending as usize
            } else {
                state
            };
            // SAFETY: the block is ours to link until the push is published.
            unsafe { Block::store_next(block, (word & LIST_MASK) as *mut Block) };
            let count = (word & COUNT_MASK).wrapping_add(COUNT_ONE);
            // Release publishes the block's link and cookie to the owner's Acquire in
            // `take_all`. Acquire (on success) makes a winner see what the owner did
            // before it parked, e.g. its last read of `pending_next` in `drain_pending`,
            // before the winner writes that link again.
            match self.0.compare_exchange_weak(
                word,
                block as usize | new_state | count,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return won,
                Err(seen) => word = seen,
            }
        }
    }

    /// Owner: takes every block other threads freed (the state stays).
    #[inline]
    pub fn take_all(&self) -> *mut Block {
        self.take_all_counted().0
    }

    /// Owner: `take_all`, with the number of blocks on the list (no walk).
    #[inline]
    pub fn take_all_counted(&self) -> (*mut Block, u32) {
        if self.0.load(Ordering::Relaxed) & !STATE_MASK == 0 {
            return (ptr::null_mut(), 0);
        }
        // Acquire pairs with the freers' Release push: their writes to the blocks (the
        // links) are visible before we follow them.
        let word = self.0.fetch_and(STATE_MASK, Ordering::Acquire);
        (
            (word & LIST_MASK) as *mut Block,
            (word >> COUNT_SHIFT) as u32,
        )
    }

    /// Owner: parks the page if no remote free has arrived. A page whose hand-off is
    /// already under way (`PendingQueued`) parks too, back to `Pending`, so a page is
    /// never on the pending stack twice. The owner must be done with the page when it
    /// calls this (off its queue, `in_full` set): once parked, a foreign drainer may
    /// take the page over (`take_parked`).
    pub fn try_park(&self) -> Park {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            if word & !STATE_MASK != 0 {
                return Park::HasBlocks;
            }
            let (parked, outcome) = match HandOff::of(word) {
                // Parked already, yet still queued: only a fork child sees these (its
                // parent's owner thread was between this CAS and taking the page off
                // its queue). Parking it again is what that thread was doing.
                HandOff::Pending => return Park::ParkedPending,
                HandOff::Full => return Park::Parked,
                HandOff::Active => (HandOff::Full, Park::Parked),
                HandOff::PendingQueued => (HandOff::Pending, Park::ParkedPending),
            };
            // The word's modification order alone orders the handshake (a freer's push
            // either precedes this CAS, which then fails, or sees `Full`). Release
            // publishes the owner's last writes to the page (its lists, `in_full`, the
            // queue links) to a foreign drainer: its Acquire in `take_parked` reads this
            // store or a later RMW of the word (a release sequence), so a drainer that
            // retires the page writes the descriptor after them.
            match self.0.compare_exchange_weak(
                word,
                parked as usize,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return outcome,
                Err(seen) => word = seen,
            }
        }
    }

    /// Owner: the page is back in its queues (a local free un-parked it). A `Full` page
    /// becomes `Active`; a `Pending` one becomes `PendingQueued` (its hand-off stays
    /// under way until `end_pending`), so foreign drainers leave its lists alone.
    pub fn unpark(&self) {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let queued = match HandOff::of(word) {
                HandOff::Full => HandOff::Active,
                HandOff::Pending => HandOff::PendingQueued,
                HandOff::Active | HandOff::PendingQueued => return,
            };
            // Relaxed: as in `try_park`'s handshake; the list bits are kept as they are.
            // A drainer that took the list before this CAS found the block this owner
            // just freed missing from it (it is on `local_free`), so it gives the list
            // back and touches nothing else of the page; one after it sees
            // `PendingQueued` and takes nothing.
            match self.0.compare_exchange_weak(
                word,
                (word & !STATE_MASK) | queued as usize,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => word = seen,
            }
        }
    }

    /// Foreign drainer: takes every block other threads freed into a page that is parked
    /// with a hand-off under way (`Pending`); null when the page is not in that state or
    /// has no such block. The state stays `Pending`. The blocks must go back
    /// (`give_back`) unless they are every block the page ever carved.
    ///
    /// # Safety
    /// The caller took the page off its heap's pending stack (`PendingPages::take_all`)
    /// and has not pushed it back: the owner cannot pop it, so it cannot end the hand-off
    /// or take the blocks itself while the page stays parked.
    pub unsafe fn take_parked(&self) -> *mut Block {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            if HandOff::of(word) != HandOff::Pending || word & !STATE_MASK == 0 {
                return ptr::null_mut();
            }
            // Acquire pairs with the freers' Release pushes (their links are visible)
            // and with the owner's Release park (see `try_park`).
            match self.0.compare_exchange_weak(
                word,
                HandOff::Pending as usize,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (word & LIST_MASK) as *mut Block,
                Err(seen) => word = seen,
            }
        }
    }

    /// Foreign drainer: puts back the list `head`..`tail` taken with `take_parked`, in
    /// front of whatever other threads freed since, keeping the state (the owner may
    /// have un-parked the page meanwhile).
    ///
    /// # Safety
    /// `head`..`tail` is a list `take_parked` returned, walked to its last block, of
    /// `count` blocks.
    pub unsafe fn give_back(&self, head: *mut Block, tail: *mut Block, count: usize) {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            // SAFETY: caller contract: the blocks are ours until the CAS publishes them.
            unsafe { Block::store_next(tail, (word & LIST_MASK) as *mut Block) };
            let total = (word & COUNT_MASK).wrapping_add(count << COUNT_SHIFT);
            // Release publishes the tail's link (and orders our reads of the blocks)
            // before the owner's Acquire `take_all`.
            match self.0.compare_exchange_weak(
                word,
                head as usize | (word & STATE_MASK) | total,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => word = seen,
            }
        }
    }

    /// Owner: the page was popped off the pending stack (its link already read): back to
    /// `Active`, so a later park can hand it off again.
    pub fn end_pending(&self) {
        // Release: our read of `pending_next` happens before a later winner's Acquire
        // push (through the parks that must come first), so it cannot see that
        // winner's new link.
        let old = self.0.fetch_and(!STATE_MASK, Ordering::Release);
        debug_assert!(HandOff::of(old).is_pending());
    }

    /// The old `park_full`, kept for the must-fail loom model only (issue 13's race 1):
    /// it stores `Full` whatever the state, so a `Pending` page can be handed off twice.
    /// Returns true if parked, as `try_park`'s `Parked`.
    #[cfg(all(loom, test))]
    pub fn park_as_before(&self) -> bool {
        // Set `Full` over whatever state (the bug), keeping the list.
        let mut word = self.0.load(Ordering::Relaxed);
        while let Err(seen) = self.0.compare_exchange_weak(
            word,
            (word & !STATE_MASK) | HandOff::Full as usize,
            Ordering::SeqCst,
            Ordering::Relaxed,
        ) {
            word = seen;
        }
        // Blocks arrived: un-park, unless a freer moved it on meanwhile.
        loop {
            let word = self.0.load(Ordering::SeqCst);
            if word & !STATE_MASK == 0 || HandOff::of(word) != HandOff::Full {
                return true;
            }
            let active = word & !STATE_MASK;
            if self
                .0
                .compare_exchange(word, active, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return false;
            }
        }
    }

    /// The current hand-off state. Owner: a `Pending` page must not be retired.
    #[inline]
    pub fn state(&self) -> HandOff {
        // Relaxed: the owner asks before retiring an empty page, and a page is empty only
        // after the owner's own `take_all` (an RMW) collected every remote block, the
        // winner's included; coherence then keeps this load from reading a state older
        // than that push. The pop in `drain_pending` is what synchronises with the
        // winner.
        HandOff::of(self.0.load(Ordering::Relaxed))
    }
}

impl Default for ThreadFree {
    fn default() -> Self {
        Self::new()
    }
}

/// A heap's stack of pages handed back by remote freers (many pushers; poppers that
/// take everything at once: no ABA). A page is on it at most once: only the freer that
/// moved it `Full` -> `Pending` pushes it, and it leaves `Pending` only when its owner
/// pops it. A foreign drainer (`heap::reclaim`) may pop the whole stack too; it then
/// holds each page as the winning freer did, and pushes back the ones it does not retire.
pub struct PendingPages(AtomicPtr<Page>);

impl Default for PendingPages {
    fn default() -> Self {
        Self::new()
    }
}

impl PendingPages {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        PendingPages(AtomicPtr::new(ptr::null_mut()))
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        PendingPages(AtomicPtr::new(ptr::null_mut()))
    }

    /// Freer: pushes a page whose hand-off it won (or a foreign drainer: a page it popped).
    ///
    /// # Safety
    /// `page` is live and `Pending`, and the caller won its hand-off (`ThreadFree::push`
    /// returned true) or popped it off this stack: nobody else links it until the owner
    /// pops it.
    pub unsafe fn push(&self, page: *mut Page) {
        // SAFETY: caller contract: a live page; `pending_next` is an atomic.
        let link = unsafe { &(*page).pending_next };
        let mut head = self.0.load(Ordering::Relaxed);
        loop {
            link.store(head, Ordering::Relaxed);
            // Release publishes the link to the owner's Acquire `take_all`.
            match self
                .0
                .compare_exchange_weak(head, page, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => head = seen,
            }
        }
    }

    /// Owner: true if a page may be waiting (a cheap check before `take_all`).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.load(Ordering::Relaxed).is_null()
    }

    /// Owner: takes the whole stack; follow it with `next`.
    pub fn take_all(&self) -> *mut Page {
        // Acquire pairs with the pushers' Release: their links are visible.
        self.0.swap(ptr::null_mut(), Ordering::Acquire)
    }

    /// The page after `page` on a stack taken with `take_all`. Read it before
    /// `end_pending`, after which a freer may push (and relink) the page again.
    ///
    /// # Safety
    /// `page` came off a stack taken with `take_all` and is still `Pending`.
    pub unsafe fn next(page: *mut Page) -> *mut Page {
        // SAFETY: caller contract; Relaxed: ordered by `take_all`'s Acquire.
        unsafe { (*page).pending_next.load(Ordering::Relaxed) }
    }
}

/// The multiplier that tests an offset for being a multiple of `block_size` without a
/// division (Lemire, Kaser and Kurz, "Faster remainder by direct computation", 2019):
/// with `magic = ceil(2^64 / size)`, an offset `off < 2^32` is a multiple of `size`
/// exactly when `off * magic` (wrapping, 64 bits) is below `magic`. Page offsets are
/// below the 4 MiB segment and block sizes far below 2^32, so one multiply and one
/// compare replace the multiply, shift, multiply and compare of a reciprocal division.
const fn divisor_magic(size: usize) -> u64 {
    u64::MAX / size as u64 + 1
}

/// The largest offset (exclusive) for which `divisor_magic`'s test is exact.
const MAGIC_OFFSET_LIMIT: usize = 1 << 32;
// A segment is one `space` slot (`segment::SEGMENT_SIZE`; `space` is in model builds too).
const _: () = assert!(crate::space::SLOT_SIZE <= MAGIC_OFFSET_LIMIT);

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
    /// Owner-side: the heap profiler cut this page's list at a sample point (`cut`):
    /// the allocation that finds `free` empty is the one to sample.
    pub sample_next: bool,
    pub class: u8,
    /// Units this page spans; 0 when the descriptor is not a live page.
    pub units: u8,
    // --- shared ---
    pub thread_free: ThreadFree,
    /// The fast path's copy of `block_magic`, or 0 while the page is marked for the heap
    /// profiler (`mark_sampled`): a live block of it may be sampled, so every free of
    /// the page's blocks must reach the slow path (`is_block_start` fails for every
    /// address with 0), which tells the profiler. Only the owner writes it; any thread
    /// reads it (Relaxed: the free of a sampled block was handed its pointer after the
    /// owner marked the page, and the owner clears the mark only once no sampled block
    /// is left, see `unmark_if_unsampled`).
    pub divisor_magic: AtomicU64,
    /// Sampled blocks of this page still live: raised by the owner when it marks the
    /// page, lowered by whichever thread frees one (before it publishes the block).
    pub sampled: AtomicU32,
    // --- set by `init`, read-only while the page is live (remote freers read them) ---
    /// `divisor_magic(block_size)`, always (the slow paths validate with it).
    pub block_magic: u64,
    /// First block address and the end of the page's usable bytes.
    pub start: usize,
    pub end: usize,
    /// Bytes carved so far from `start` (the first never-carved byte is `start +
    /// carved`): an offset, so that one compare of a block's offset checks both ends.
    /// Only the owner writes it (in `extend`); remote freers read it to validate their
    /// block, hence an atomic (Relaxed: a freer's block was carved before it was handed
    /// out, and that hand-over orders the store before the freer's load; `carved` only
    /// grows while the page is live).
    pub carved: AtomicUsize,
    // --- owner-only, cold ---
    /// Class queue links.
    pub next: *mut Page,
    pub prev: *mut Page,
    /// Link in the heap's stack of pages that need the owner's attention.
    pub pending_next: AtomicPtr<Page>,
}

/// `Page::empty`'s body, shared by its `const` build and its loom build (loom's atomics
/// have no `const` constructors).
macro_rules! empty_page {
    () => {
        Page {
            free: ptr::null_mut(),
            used: 0,
            block_size: 0,
            local_free: ptr::null_mut(),
            in_full: false,
            sample_next: false,
            class: 0,
            units: 0,
            thread_free: ThreadFree::new(),
            divisor_magic: AtomicU64::new(0),
            sampled: AtomicU32::new(0),
            block_magic: 0,
            start: 0,
            end: 0,
            carved: AtomicUsize::new(0),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            pending_next: AtomicPtr::new(ptr::null_mut()),
        }
    };
}

impl Page {
    #[cfg(not(loom))]
    pub const fn empty() -> Self {
        empty_page!()
    }

    #[cfg(loom)]
    pub fn empty() -> Self {
        empty_page!()
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
        self.block_magic = divisor_magic(block_size);
        self.divisor_magic = AtomicU64::new(self.block_magic);
        self.start = start;
        self.end = end;
    }

    /// The fast paths' test: true if `addr` is the start of a block ever carved here and
    /// the page is not marked for the profiler (a marked page's blocks all fail, so
    /// their frees take the slow path, which asks `is_block_start_exact`). Any thread may
    /// ask: it reads only the fields fixed while the page is live and the atomics
    /// `carved` and `divisor_magic`, through the raw pointer (no reference that would
    /// alias the owner's).
    ///
    /// # Safety
    /// `page` is a live page descriptor.
    #[inline(always)]
    pub unsafe fn is_block_start(page: *const Page, addr: usize) -> bool {
        // SAFETY: caller contract; `start` does not change while the page is live.
        // Relaxed (a plain load on x86-64, as the field was before it could change): see
        // the field.
        let magic = unsafe { (*page).divisor_magic.load(Ordering::Relaxed) };
        // SAFETY: as above.
        unsafe { Page::is_multiple_carved(page, addr, magic) }
    }

    /// True if `addr` is the start of a block ever carved here, marked page or not: the
    /// slow paths' test (misuse checks, `usable_size`).
    ///
    /// # Safety
    /// `page` is a live page descriptor.
    #[inline]
    pub unsafe fn is_block_start_exact(page: *const Page, addr: usize) -> bool {
        // SAFETY: caller contract; `block_magic` does not change while the page is live.
        unsafe { Page::is_multiple_carved(page, addr, (*page).block_magic) }
    }

    /// `addr` lies in the carved part and `magic` says its offset is a block boundary.
    ///
    /// # Safety
    /// `page` is a live page descriptor.
    #[inline(always)]
    unsafe fn is_multiple_carved(page: *const Page, addr: usize, magic: u64) -> bool {
        // SAFETY: caller contract; `start` is fixed while the page is live.
        let (start, carved) = unsafe { ((*page).start, &(*page).carved) };
        // An address below `start` wraps to an offset far above `carved`: one compare
        // checks both ends. Relaxed: see the field.
        let off = addr.wrapping_sub(start);
        if off >= carved.load(Ordering::Relaxed) {
            return false;
        }
        // `off < carved <= MAGIC_OFFSET_LIMIT`: the magic test is exact (and with a magic
        // of 0 always false).
        (off as u64).wrapping_mul(magic) < magic
    }

    /// Owner, for the heap profiler: a block of this page was just sampled (and is not
    /// yet handed out). Every free of the page's blocks takes the slow path from now on,
    /// until `unmark_if_unsampled` finds no sampled block left.
    pub fn mark_sampled(&self) {
        // Relaxed: the block is handed out after both stores, in this thread's program
        // order; whoever frees it got its pointer through that hand-out (which orders
        // these stores before its loads), so it sees the mark or a later value of it,
        // and a later value (the mark cleared) needs this block's own `unsampled` first.
        self.sampled.fetch_add(1, Ordering::Relaxed);
        self.divisor_magic.store(0, Ordering::Relaxed);
    }

    /// True while the page is marked (its frees take the slow path).
    ///
    /// # Safety
    /// `page` is a live page descriptor.
    #[inline]
    pub unsafe fn is_marked(page: *const Page) -> bool {
        // SAFETY: caller contract. Relaxed: see the field.
        unsafe { (*page).divisor_magic.load(Ordering::Relaxed) == 0 }
    }

    /// Any thread freeing a sampled block of this page (its record already dropped),
    /// before the block is published: one fewer sampled block.
    ///
    /// # Safety
    /// `page` is a live page descriptor holding the block being freed.
    pub unsafe fn unsampled(page: *const Page) {
        // SAFETY: caller contract; an atomic reached through the raw pointer. Relaxed:
        // the block's publication (the local list, or the Release push) orders this
        // before the owner's reuse of it; the owner reads the count only to clear the
        // mark. Never below 0: a count damaged by an interrupted owner in a fork child
        // (`repair`) must not wrap and keep the page marked for ever.
        let _ =
            unsafe { &(*page).sampled }
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Owner: clears the mark once no sampled block of the page is live (the frees of
    /// the last ones may have come from other threads, which leave the mark to the
    /// owner: only the owner writes `divisor_magic`). No sampled block can appear
    /// meanwhile: only the owner samples.
    pub fn unmark_if_unsampled(&self) {
        // Relaxed: see `unsampled`.
        if self.divisor_magic.load(Ordering::Relaxed) == 0
            && self.sampled.load(Ordering::Relaxed) == 0
        {
            self.divisor_magic
                .store(self.block_magic, Ordering::Relaxed);
        }
    }

    /// Owner: the page has no free block and the caller has taken it off its queue;
    /// parks it (`in_full`) unless a remote free arrived. Returns true if parked: the
    /// owner touches the page no more (a foreign drainer may retire it, see
    /// `drain_foreign`); false if it has blocks again (the caller queues it again).
    pub fn park(&mut self) -> bool {
        // Before the parking CAS, whose Release publishes it.
        self.in_full = true;
        match self.thread_free.try_park() {
            Park::HasBlocks => {
                self.in_full = false;
                false
            }
            Park::Parked | Park::ParkedPending => true,
        }
    }

    /// Owner: a local free landed in a parked page: it goes back in its queue. If a
    /// freer already won its hand-off it stays `Pending` and still comes through the
    /// pending stack, where `end_hand_off` finds it un-parked.
    pub fn unpark(&mut self) {
        self.thread_free.unpark();
        self.in_full = false;
    }

    /// Owner: the page came off the pending stack (its link already read). Returns true
    /// if it was still parked: the caller puts it back in its queue.
    pub fn end_hand_off(&mut self) -> bool {
        self.thread_free.end_pending();
        core::mem::replace(&mut self.in_full, false)
    }

    /// Owner: true while a remote freer's hand-off is under way (the page must not be
    /// retired: the freer, or a foreign drainer, may still link it).
    pub fn is_pending(&self) -> bool {
        self.thread_free.state().is_pending()
    }

    /// Foreign drainer: for a page taken off its heap's pending stack, true if the page
    /// is parked and every block it ever carved is on its remote list: then nobody holds
    /// a block of it and its owner will not touch it again (a local free needs a live
    /// block; the owner reaches a parked page only through the pending stack, which the
    /// caller holds it off), so the caller retires it under the heap's segments lock
    /// instead of pushing it back, and the blocks are dropped with it. Otherwise the
    /// blocks are given back as they were and the caller pushes the page back onto the
    /// stack. Walks the remote list once (at most the page's carved blocks, 4096 for the
    /// smallest class, unless the program freed a block twice at once).
    ///
    /// # Safety
    /// `page` is live and was popped off its heap's pending stack by the caller, who
    /// has not pushed it back.
    pub unsafe fn drain_foreign(page: *mut Page) -> bool {
        // SAFETY: caller contract. The shared word is an atomic, reached without a
        // reference to the descriptor (its owner may hold one); `block_size` and
        // `carved` (an atomic) are fixed while the page is parked.
        unsafe {
            let remote = &*ptr::addr_of!((*page).thread_free);
            let head = remote.take_parked();
            if head.is_null() {
                return false;
            }
            let size = ptr::addr_of!((*page).block_size).read() as usize;
            // Relaxed: a parked page was carved to its end before it parked, and the
            // Acquire of `take_parked` orders that.
            let carved = (*ptr::addr_of!((*page).carved)).load(Ordering::Relaxed) / size;
            // The whole list, as the owner's `collect` would walk it: its tail is needed
            // to give it back.
            let mut tail = head;
            let mut count = 1;
            loop {
                let next = Block::load_next(tail);
                if next.is_null() {
                    break;
                }
                tail = next;
                count += 1;
            }
            // More blocks than were carved is a corrupted list (two frees of one block
            // that raced each other's check): left to the owner, as any other.
            if count == carved {
                return true;
            }
            remote.give_back(head, tail, count);
            false
        }
    }

    /// Capacity in blocks.
    pub fn capacity(&self) -> usize {
        (self.end - self.start) / self.block_size as usize
    }

    /// Blocks carved so far (handed out, free, or on a list).
    pub fn carved_blocks(&self) -> usize {
        // Relaxed: only this (owner) thread writes `carved`.
        self.carved.load(Ordering::Relaxed) / self.block_size as usize
    }

    /// Owner, for the heap profiler: keeps the first `keep` blocks of `free` (fewer than
    /// it holds) and moves the rest to `local_free`, which must be empty (as
    /// `collect_all` leaves it), then sets `sample_next`. The fast path pops the kept blocks; the
    /// allocation after them finds `free` empty and reaches the slow path, which samples
    /// it and `collect`s the rest back. Walks `keep` links: the profiler cuts once per
    /// sample point, never on the fast path.
    pub fn cut(&mut self, keep: usize) {
        debug_assert!(self.local_free.is_null() && !self.free.is_null());
        if keep == 0 {
            self.local_free = self.free;
            self.free = ptr::null_mut();
        } else {
            let mut tail = self.free;
            // SAFETY: `free` holds more than `keep` free blocks of this page.
            unsafe {
                for _ in 1..keep {
                    tail = Block::load_next(tail);
                }
                self.local_free = Block::load_next(tail);
                Block::store_next(tail, ptr::null_mut());
            }
        }
        self.sample_next = true;
    }

    /// Carves the next batch of never-used blocks into `free`. False when none remain.
    pub fn extend(&mut self) -> bool {
        let size = self.block_size as usize;
        // Relaxed: only this (owner) thread writes `carved`.
        let carved = self.carved.load(Ordering::Relaxed);
        let first = self.start + carved;
        let left = (self.end - first) / size;
        if left == 0 {
            return false;
        }
        let batch = left.min((EXTEND_BYTES / size).max(EXTEND_MIN_BLOCKS));
        self.carved.store(carved + batch * size, Ordering::Relaxed);
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

    /// Makes the blocks other threads freed and, when `free` is empty, the owner's
    /// `local_free` ready for the fast path; returns true if `free` is non-empty
    /// afterwards. Touches no block: the remote list comes with its length
    /// (`take_all_counted`) and goes whole onto `free` (or `local_free`), and
    /// `local_free` becomes `free` only once `free` is empty (mimalloc's order), so a
    /// collect walks no list of blocks another CPU wrote last. `local_free` may hold
    /// blocks afterwards (`merge_local` moves them when every free block must be on
    /// `free`). Only when both owner lists hold blocks is the remote list walked, to
    /// link its tail.
    pub fn collect(&mut self) -> bool {
        let (list, count) = self.thread_free.take_all_counted();
        if !list.is_null() {
            self.used -= count;
            if self.free.is_null() {
                self.free = list;
            } else if self.local_free.is_null() {
                self.local_free = list;
            } else {
                let mut tail = list;
                // SAFETY: blocks on the list are free blocks of this page.
                unsafe {
                    loop {
                        let next = Block::load_next(tail);
                        if next.is_null() {
                            break;
                        }
                        tail = next;
                    }
                    Block::store_next(tail, self.local_free);
                }
                self.local_free = list;
            }
        }
        if self.free.is_null() {
            self.free = self.local_free;
            self.local_free = ptr::null_mut();
        }
        !self.free.is_null()
    }

    /// `collect`, then every free block onto `free` (`local_free` appended by a walk):
    /// for the heap profiler, which counts and cuts `free`, and for a trim.
    pub fn collect_all(&mut self) -> bool {
        self.collect();
        self.merge_local();
        !self.free.is_null()
    }

    /// Appends `local_free` to `free` (walks `local_free` to its tail).
    fn merge_local(&mut self) {
        if self.local_free.is_null() {
            return;
        }
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
            // Both lists now share the local blocks, until the next store.
            #[cfg(all(test, not(loom)))]
            super::test_hooks::pause_point();
        }
        self.local_free = ptr::null_mut();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Secure mode's free-list order: for every batch with a choice, the stride is
    /// coprime with the batch and neither 1 nor `batch - 1` (address order or its
    /// reverse), whatever the random draw; with draws that used to give stride 1 too.
    #[test]
    fn scattering_strides_never_keep_address_order() {
        for batch in 1..300usize {
            for r in (0..600u64).chain([u64::MAX, u64::MAX - 1]) {
                let s = scattering_stride(batch, r);
                let mut seen = vec![false; batch];
                for i in 0..batch {
                    seen[(i * s) % batch] = true;
                }
                assert!(
                    seen.iter().all(|&b| b),
                    "batch {batch} stride {s} skips blocks"
                );
                let choice = (2..batch.saturating_sub(1)).any(|c| gcd(c, batch) == 1);
                if choice {
                    assert!(
                        s != 1 && s != batch - 1,
                        "batch {batch}, draw {r}: stride {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn extend_collect_and_validate() {
        let mut memory = vec![0u64; 1024];
        let start = memory.as_mut_ptr() as usize;
        let mut page = Page::empty();
        page.init(3, 64, 1, start, start + 8192);
        let p = &page as *const Page;
        assert_eq!(page.capacity(), 128);
        // SAFETY (all `is_block_start` calls): `p` is a live page descriptor.
        assert!(
            !unsafe { Page::is_block_start(p, start) },
            "nothing carved yet"
        );
        assert!(page.extend());
        let p = &page as *const Page;
        assert!(unsafe { Page::is_block_start(p, start + 64 * 5) });
        assert!(
            !unsafe { Page::is_block_start(p, start + 64 * 5 + 8) },
            "interior"
        );
        assert!(!unsafe { Page::is_block_start(p, start - 64) });
        assert!(
            !unsafe { Page::is_block_start(p, start + 64 * 64) },
            "beyond the carved batch"
        );
        let a = page.free;
        // SAFETY: `a` is a carved block of the page.
        page.free = unsafe { Block::load_next(a) };
        page.used = 1;
        // SAFETY: `a` is a block of the page.
        assert!(
            !unsafe { page.thread_free.push(a) },
            "not parked: no hand-off"
        );
        let rest = page.free;
        assert!(page.collect());
        assert_eq!(page.used, 0);
        // `free` still held the extension's other blocks: the remote list goes whole
        // onto the empty `local_free`, no block is walked.
        assert_eq!((page.free, page.local_free), (rest, a));
        assert_eq!(page.thread_free.state(), HandOff::Active);
    }

    /// The multiply-and-compare test agrees with `%` for every class, at every offset
    /// of the first and the last 64 KiB of a segment (the proof covers all offsets below
    /// 2^32; these are where a wrong magic would show first and last).
    #[test]
    fn divisor_magic_is_exact_for_every_class() {
        use super::super::segment::SEGMENT_SIZE;
        use super::super::size_class::{class_size, CLASSES};
        const EDGE: usize = 64 * 1024;
        for class in 0..CLASSES {
            let size = class_size(class);
            let magic = divisor_magic(size);
            for off in (0..EDGE).chain(SEGMENT_SIZE - EDGE..SEGMENT_SIZE) {
                assert_eq!(
                    (off as u64).wrapping_mul(magic) < magic,
                    off % size == 0,
                    "size {size} offset {off}"
                );
            }
        }
    }

    /// The profiler's mark: a marked page fails the fast paths' block test for every
    /// block (so their frees take the slow path) and passes the exact one; the mark
    /// stays while a sampled block is live and is cleared by the owner once none is;
    /// the count never goes below zero, and a fresh page is unmarked.
    #[test]
    fn a_marked_page_sends_frees_to_the_slow_path_until_no_sample_is_left() {
        let mut memory = vec![0u64; 64];
        let start = memory.as_mut_ptr() as usize;
        let mut page = Page::empty();
        page.init(0, 16, 1, start, start + 512);
        assert!(page.extend());
        let p = &page as *const Page;
        // SAFETY (all calls on `p`): a live page descriptor.
        let fast = |a| unsafe { Page::is_block_start(p, a) };
        let exact = |a| unsafe { Page::is_block_start_exact(p, a) };
        assert!(fast(start + 16) && exact(start + 16) && !unsafe { Page::is_marked(p) });
        page.mark_sampled();
        page.mark_sampled();
        for a in [start, start + 16, start + 496] {
            assert!(!fast(a), "marked: the fast test fails");
            assert!(exact(a), "marked: still a block");
        }
        assert!(!exact(start + 8) && !exact(start + 512), "not blocks");
        page.unmark_if_unsampled();
        assert!(unsafe { Page::is_marked(p) }, "two sampled blocks live");
        unsafe { Page::unsampled(p) };
        page.unmark_if_unsampled();
        assert!(unsafe { Page::is_marked(p) }, "one sampled block live");
        unsafe { Page::unsampled(p) };
        assert!(
            unsafe { Page::is_marked(p) },
            "only the owner clears the mark"
        );
        page.unmark_if_unsampled();
        assert!(!unsafe { Page::is_marked(p) } && fast(start + 16));
        unsafe { Page::unsampled(p) };
        assert_eq!(page.sampled.load(Ordering::Relaxed), 0, "never below zero");
        page.mark_sampled();
        page.init(0, 16, 1, start, start + 512);
        assert!(!unsafe { Page::is_marked(p) } && page.sampled.load(Ordering::Relaxed) == 0);
    }

    /// `collect` takes the remote list with its count (no walk) and keeps every block:
    /// onto `free` when it is empty, onto `local_free` when only `free` holds blocks,
    /// and linked in front of `local_free` when both do; `collect_all` leaves every
    /// free block on `free`.
    #[test]
    fn collect_keeps_every_block_whichever_lists_hold_blocks() {
        let mut memory = vec![0u64; 64 * 2];
        let start = memory.as_mut_ptr() as usize;
        let block = |i: usize| (start + 16 * i) as *mut Block;
        let len = |mut b: *mut Block| {
            let mut n = 0;
            while !b.is_null() {
                n += 1;
                // SAFETY: a list of blocks of the page.
                b = unsafe { Block::load_next(b) };
            }
            n
        };
        for case in 0..3 {
            let mut page = Page::empty();
            page.init(0, 16, 1, start, start + 1024);
            assert!(page.extend());
            // Take all 64 carved blocks, then give some back on each list.
            page.free = ptr::null_mut();
            page.used = 64;
            let mut owner_lists = 0;
            if case >= 1 {
                // SAFETY (all list edits): blocks of the page, each on one list.
                unsafe { Block::store_next(block(0), ptr::null_mut()) };
                page.free = block(0);
                owner_lists += 1;
            }
            if case >= 2 {
                unsafe {
                    Block::store_next(block(1), ptr::null_mut());
                    Block::store_next(block(2), block(1));
                }
                page.local_free = block(2);
                owner_lists += 2;
            }
            page.used -= owner_lists;
            for i in 10..15 {
                // SAFETY: blocks of the page, freed once.
                assert!(!unsafe { page.thread_free.push(block(i)) });
            }
            assert!(page.collect());
            assert_eq!(page.used, 64 - owner_lists - 5, "case {case}");
            assert_eq!(
                len(page.free) + len(page.local_free),
                owner_lists as usize + 5,
                "case {case}"
            );
            assert_eq!(page.thread_free.take_all_counted(), (ptr::null_mut(), 0));
            assert!(page.collect_all());
            assert!(page.local_free.is_null());
            assert_eq!(len(page.free), owner_lists as usize + 5, "case {case}");
        }
    }

    #[test]
    fn park_full_handshake() {
        let mut memory = vec![0u64; 64];
        let start = memory.as_mut_ptr() as usize;
        let mut page = Page::empty();
        page.init(0, 16, 1, start, start + 512);
        // The two blocks freed below were handed out (a collect subtracts them).
        page.used = 2;
        assert_eq!(page.thread_free.try_park(), Park::Parked);
        let block = start as *mut Block;
        // SAFETY: both are blocks of the page.
        let (first, second) = unsafe {
            (
                page.thread_free.push(block),
                page.thread_free.push((start + 16) as *mut Block),
            )
        };
        assert!(first, "first remote free of a parked page hands it off");
        assert_eq!(page.thread_free.state(), HandOff::Pending);
        assert!(!second, "only once");
        assert_eq!(page.thread_free.try_park(), Park::HasBlocks);
        assert!(page.collect(), "both blocks collected");
        assert_eq!(
            page.thread_free.state(),
            HandOff::Pending,
            "collect keeps the state"
        );
    }

    /// Race 1 of issue 13, step by step on one thread: a freer wins the hand-off of a
    /// parked page but has not pushed it yet; the owner un-parks the page by a local
    /// free, fills it and parks it again; a second remote free comes. The page must not
    /// be handed off a second time (it would go on the pending stack twice and form a
    /// cycle). The old `park_full` stored `FULL` over `PENDING` and failed this.
    #[test]
    fn a_pending_page_is_handed_off_once() {
        let mut memory = vec![0u64; 64];
        let start = memory.as_mut_ptr() as usize;
        let mut page = Page::empty();
        page.init(0, 16, 1, start, start + 512);
        // B's and C's blocks were handed out (a collect subtracts them).
        page.used = 2;
        let (b, c) = (start as *mut Block, (start + 16) as *mut Block);
        assert_eq!(page.thread_free.try_park(), Park::Parked);
        // SAFETY: blocks of the page.
        assert!(unsafe { page.thread_free.push(b) }, "B wins the hand-off");
        // The owner's local free un-parks it; it collects B's block, fills up again.
        page.thread_free.unpark();
        assert!(page.collect());
        assert_eq!(page.thread_free.try_park(), Park::ParkedPending);
        // SAFETY: as above.
        assert!(
            !unsafe { page.thread_free.push(c) },
            "C must not hand it off again"
        );
        let stack = PendingPages::new();
        // SAFETY: B won the hand-off of a live page.
        unsafe { stack.push(&mut page) };
        let top = stack.take_all();
        assert_eq!(top, &mut page as *mut Page);
        // SAFETY: popped off the stack, still pending.
        assert!(
            unsafe { PendingPages::next(top) }.is_null(),
            "on the stack once"
        );
        page.thread_free.end_pending();
        assert_eq!(page.thread_free.state(), HandOff::Active);
        assert_eq!(
            page.thread_free.try_park(),
            Park::HasBlocks,
            "C's block is there"
        );
    }
}
