//! One arena's metadata blocks: region descriptors and tree nodes, taken from and given
//! back to a cache of the arena's own, so that steady-state updates never take the
//! metadata arena's process-wide lock. It owns the cache (writer-only free lists), the
//! batch of blocks unlinked and waiting for a grace period, and the per-arena stacks of
//! batches whose grace period has passed; it calls `meta` (for blocks when the cache is
//! empty or full, and to size them), `crossbeam_epoch` (one deferred function per
//! batch) and `stats` (time spent in it).
//!
//! A block's life: taken by a writer (`alloc`), published, unlinked by a later writer of
//! the same arena (`retire`: into the arena's pending batch), sealed into a list when the
//! batch is full and handed to the epoch collector, pushed lock-free onto the arena's
//! `EXPIRED` stack by whichever thread runs the collection once no reader can hold it,
//! and taken back whole (swap with null: no ABA) by the arena's next writer that finds
//! its free list empty. Blocks are meta blocks of two power-of-two classes, interchangeable
//! between arenas; a cache that runs dry (warm-up, growth) cuts fresh ones from a span of
//! whole chunks it took from `meta`, and asks `meta` again only when the span is used up.

use crate::meta;
use crate::stats::OnDependency;
use core::cell::UnsafeCell;
use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use crossbeam_epoch::Guard;

/// Region descriptors: one cache line (see `Region`). Model builds' descriptors are
/// larger (loom's atomics are a word each, its `AtomicBool`s too): two.
pub const DESC_BYTES: usize = if cfg!(loom) { 128 } else { 64 };
/// Tree nodes (see `tree::NODE_BYTES`); sealed lists use the same class.
pub const NODE_BYTES: usize = 256;
const CLASS_BYTES: [usize; 2] = [DESC_BYTES, NODE_BYTES];
/// One pool part per class (`meta::pool`).
const _: () = assert!(CLASS_BYTES.len() == meta::POOL_PARTS);

/// A sealed list: `[link, count, block...]`, one node-sized block.
const LIST_HEADER: usize = 2;
/// Blocks per sealed list: what fits a node-sized list. One deferred function (and one
/// crossbeam bag slot) per 30 blocks, about ten updates' worth.
const BATCH: usize = NODE_BYTES / size_of::<usize>() - LIST_HEADER;

/// A dry cache cuts fresh blocks with a bump pointer of its own (under the arena's writer
/// mutex), first from its arena's pool in `meta` (`meta::pool`: 2 MiB of address space
/// per class, reserved for the directory id, so the arena's first blocks and its growth
/// take no process-wide lock), then, if the pool is used up, from spans of whole meta
/// chunks (`meta::alloc_carved`: the metadata lock, counted, once per span; a span twice
/// the last, from `FIRST_SPAN` chunks up to `MAX_SPAN`). The pool covers any peak seen:
/// the peak has no fixed bound, since a reader preempted while pinned holds back every
/// arena's garbage until it runs again (`tests/tests/process_locks.rs`, 4 threads,
/// 2 cores: a 4 MiB pool, 8k nodes, ran dry), against 32k nodes and 128k descriptors in
/// a pool. Tables other than the process's arenas have no pool. A pool costs address space only: its pages fault
/// in as the bump pointer reaches them.
const FIRST_SPAN: usize = 16;
const MAX_SPAN: usize = 64;

/// Per directory id, the lists of that arena whose grace period has passed: pushed by
/// `expired` (any thread), emptied whole by the arena's writer. Id 0 (a tree of no
/// arena: unit tests) is never used: its lists go straight back to `meta`.
static EXPIRED: [AtomicPtr<usize>; 256] = [const { AtomicPtr::new(ptr::null_mut()) }; 256];

/// The highest directory id any cache was named for (`set_owner`): only stacks up to it
/// can hold lists, so a dry cache looks at those alone. Scanning all 256 cost a writer
/// ~3,100 instructions per dry refill, about a fifth of a large object's alloc + three
/// in-place grows + free (callgrind, BENCHMARKS.md "regrow").
static HIGHEST_OWNER: AtomicU8 = AtomicU8::new(0);

/// The not-yet-carved rest of a class's pool part or last span: `[next, end)`.
#[derive(Clone, Copy)]
struct Carve {
    next: usize,
    end: usize,
    /// Whether the class's pool part was taken (it is asked for once).
    pooled: bool,
    /// Chunks the next span takes.
    span: usize,
}

struct State {
    /// Free blocks per class, linked through their first word.
    free: [*mut usize; 2],
    /// Per class, the bump range blocks are cut from when the lists run dry.
    carve: [Carve; 2],
    /// Blocks unlinked by this arena's writers, not yet handed to the collector.
    pending: [usize; BATCH],
    pending_len: usize,
}

/// One arena's block cache. Everything but `owner` belongs to the arena's writer.
pub struct Blocks {
    state: UnsafeCell<State>,
    /// The arena's directory id (0 until it registers): names its `EXPIRED` stack.
    owner: AtomicU8,
}

// SAFETY: `state` is touched only by the arena's writer (the `# Safety` contract of
// every method that does); `owner` is atomic.
unsafe impl Sync for Blocks {}
// SAFETY: the blocks are metadata memory, not tied to a thread.
unsafe impl Send for Blocks {}

impl Default for Blocks {
    fn default() -> Self {
        Self::new()
    }
}

fn class_of(size: usize) -> usize {
    debug_assert!(size <= NODE_BYTES);
    usize::from(size > DESC_BYTES)
}

impl Blocks {
    pub const fn new() -> Self {
        Blocks {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); 2],
                carve: [Carve {
                    next: 0,
                    end: 0,
                    pooled: false,
                    span: FIRST_SPAN,
                }; 2],
                pending: [0; BATCH],
                pending_len: 0,
            }),
            owner: AtomicU8::new(0),
        }
    }

    /// Names the arena (directory id) whose `EXPIRED` stack this cache uses.
    pub fn set_owner(&self, id: u8) {
        // Relaxed: read by this arena's writers, ordered after by the writer mutex.
        self.owner.store(id, Ordering::Relaxed);
        // Relaxed: a bound for a hint (`alloc_from` skips stacks above it); a stack of
        // an id not yet seen here is empty, or is taken by its own writer.
        HIGHEST_OWNER.fetch_max(id, Ordering::Relaxed);
    }

    /// A block of at least `size` bytes (at most `NODE_BYTES`), aligned to its class.
    ///
    /// # Safety
    /// Only the arena's writer (its mutex held, or the tree's `&mut`).
    pub unsafe fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: caller contract: we are the only writer.
        let state = unsafe { &mut *self.state.get() };
        alloc_from(state, self.owner.load(Ordering::Relaxed) as usize, size)
    }

    /// Takes back a block no reader ever saw (an update that failed half way).
    ///
    /// # Safety
    /// As `alloc`; `p` came from `alloc` (or `meta`, of one of the two classes) and was
    /// never published.
    pub unsafe fn free_unpublished(&self, p: *mut u8) {
        // SAFETY: caller contract.
        unsafe { push_free(&mut *self.state.get(), p) };
    }

    /// Frees `p` once every reader pinned now has unpinned: batched, then sealed.
    ///
    /// # Safety
    /// As `alloc`; `p` is a block of one of the two classes that no new reader can reach
    /// (unlinked), and `guard` is pinned on the collector of `region::epoch`.
    pub unsafe fn retire(&self, guard: &Guard, p: *mut u8) {
        // SAFETY: caller contract.
        let state = unsafe { &mut *self.state.get() };
        state.pending[state.pending_len] = p as usize;
        state.pending_len += 1;
        if state.pending_len == BATCH {
            // SAFETY: caller contract.
            unsafe { self.seal(state, guard) };
        }
    }

    /// Hands the pending batch to the collector as one list (its grace period starts now,
    /// later than when the blocks were unlinked: only safer).
    ///
    /// # Safety
    /// As `retire`.
    unsafe fn seal(&self, state: &mut State, guard: &Guard) {
        // The loom models assert that no execution seals a batch (so none reuses a block).
        #[cfg(all(test, loom))]
        crate::region::loom_table::sealed_a_batch();
        let len = core::mem::take(&mut state.pending_len);
        let owner = self.owner.load(Ordering::Relaxed);
        let list = alloc_from(state, owner as usize, NODE_BYTES) as *mut usize;
        // The collector's own allocations (crossbeam's sealed-bag nodes) are its own.
        let _dependency = OnDependency::enter();
        if list.is_null() {
            // Metadata exhausted: one deferred function per block, which crossbeam
            // stores inline.
            for &p in &state.pending[..len] {
                // SAFETY: each block is unreachable for new readers; the closure runs
                // after the grace period.
                unsafe { guard.defer_unchecked(move || meta::free(p as *mut u8)) };
            }
            return;
        }
        // SAFETY: a node-sized block: the link, the count, then `len <= BATCH` blocks.
        unsafe {
            list.add(1).write(len);
            ptr::copy_nonoverlapping(state.pending.as_ptr(), list.add(LIST_HEADER), len);
        }
        let list = list as usize;
        // SAFETY: the closure captures two words (inline in crossbeam's bag) and runs
        // after the grace period, when no reader can hold any block of the list; the
        // list block itself was never published.
        unsafe { guard.defer_unchecked(move || expired(list as *mut usize, owner)) };
    }
}

/// A block of the class serving `size` from `state`, the cache of arena `own`: its free
/// list, else its expired stack, else the other arenas' (blocks are interchangeable, so
/// the garbage waiting for a grace period is pooled over all arenas and one arena's
/// burst draws on the others' returns), else a block cut from the arena's span (`carve`).
fn alloc_from(state: &mut State, own: usize, size: usize) -> *mut u8 {
    let class = class_of(size);
    if state.free[class].is_null() {
        take_expired(state, own);
        // Relaxed: see `HIGHEST_OWNER`.
        let highest = HIGHEST_OWNER.load(Ordering::Relaxed) as usize;
        for other in (1..=highest).filter(|&id| id != own) {
            if !state.free[class].is_null() {
                break;
            }
            take_expired(state, other);
        }
    }
    if state.free[class].is_null() {
        // The cache is dry: warm-up or growth. Cut a block from the class's span.
        return carve(&mut state.carve[class], own, class);
    }
    let p = state.free[class];
    if p.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: a free block of ours links through its first word.
    state.free[class] = unsafe { *p } as *mut usize;
    p as *mut u8
}

/// A fresh block of `class` from `carve`, which takes arena `own`'s pool part for the
/// class when it first runs dry (no lock), then a new span from `meta` (the metadata
/// lock, counted) each time it is used up. Null when metadata is exhausted.
fn carve(carve: &mut Carve, own: usize, class: usize) -> *mut u8 {
    let size = CLASS_BYTES[class];
    if cfg!(loom) {
        // Model builds' `meta` (a stand-in) has no pools or spans: one block per call.
        return meta::alloc(size, size);
    }
    if carve.next == carve.end {
        let pool = match carve.pooled || own == 0 {
            true => None,
            false => {
                carve.pooled = true;
                // Part `class` of the pool of directory id `own`, asked for once: this
                // arena's writer is the id's only user (ids are never reused).
                meta::pool(own as u8, class, size)
            }
        };
        let (start, end) = match pool {
            Some(range) => range,
            None => {
                let span = meta::alloc_carved(size, carve.span);
                if span.is_null() {
                    return span;
                }
                let bytes = carve.span * meta::CHUNK_SIZE;
                carve.span = (carve.span * 2).min(MAX_SPAN);
                (span as usize, span as usize + bytes)
            }
        };
        carve.next = start;
        carve.end = end;
    }
    let p = carve.next;
    carve.next += size;
    if meta::in_pool(p as *const u8) {
        meta::note_pool_carved(size);
    }
    p as *mut u8
}

/// Moves every list on arena `owner`'s expired stack into `state`'s free lists. Any
/// arena's writer may take any stack: it is emptied whole (swap), so no ABA.
fn take_expired(state: &mut State, owner: usize) {
    // Relaxed: only a hint to skip the swap; the swap orders what it takes.
    if owner == 0 || EXPIRED[owner].load(Ordering::Relaxed).is_null() {
        return;
    }
    // Acquire pairs with the Release push in `expired`: the list's words are visible.
    let mut list = EXPIRED[owner].swap(ptr::null_mut(), Ordering::Acquire);
    while !list.is_null() {
        // SAFETY: a sealed list past its grace period, taken by us alone: its blocks and
        // itself are unreachable metadata blocks of the two classes.
        unsafe {
            let next = *list as *mut usize;
            let count = *list.add(1);
            for i in 0..count {
                push_free(state, *list.add(LIST_HEADER + i) as *mut u8);
            }
            push_free(state, list as *mut u8);
            list = next;
        }
    }
}

/// # Safety
/// `p` is a free meta block of one of the two classes, owned by the caller.
unsafe fn push_free(state: &mut State, p: *mut u8) {
    // SAFETY: caller contract: a live meta block (for its class) that nobody else uses.
    let class = class_of(unsafe { meta::usable_size(p) });
    let p = p as *mut usize;
    // SAFETY: as above; the block's first word becomes the link.
    unsafe { p.write(state.free[class] as usize) };
    state.free[class] = p;
}

/// Runs when a list's grace period has passed, on whichever thread runs crossbeam's
/// collection (mostly lookup readers): only a lock-free push onto the arena's stack, so
/// no reader takes the metadata lock (one preempted there used to stall every writer
/// that needed metadata). A list of no arena goes straight back to `meta`.
fn expired(list: *mut usize, owner: u8) {
    if owner == 0 {
        // SAFETY: the list and its blocks are unreachable meta blocks, ours alone.
        unsafe {
            let count = *list.add(1);
            let blocks = (0..count).map(|i| *list.add(LIST_HEADER + i) as *mut u8);
            meta::free_all(blocks.chain([list as *mut u8]));
        }
        return;
    }
    let stack = &EXPIRED[owner as usize];
    let mut head = stack.load(Ordering::Relaxed);
    loop {
        // SAFETY: the list's link word is ours: it is off every stack.
        unsafe { list.write(head as usize) };
        // Release publishes the link and the list's words to `take_expired`'s swap.
        match stack.compare_exchange_weak(head, list, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => head = seen,
        }
    }
}

impl Drop for Blocks {
    /// Gives the cache back to `meta` (a tree being dropped: no reader remains, so the
    /// pending blocks may go at once too).
    fn drop(&mut self) {
        let state = self.state.get_mut();
        for class in 0..2 {
            let mut p = state.free[class];
            while !p.is_null() {
                // SAFETY: free blocks of ours, linked through their first word.
                unsafe {
                    let next = *p as *mut usize;
                    meta::free(p as *mut u8);
                    p = next;
                }
            }
        }
        for &p in &state.pending[..state.pending_len] {
            // SAFETY: `&mut self`: no reader or writer of the tree remains.
            unsafe { meta::free(p as *mut u8) };
        }
        // The uncut rest of a pool part stays the id's (a tree with a pool has an id and
        // is `'static`: never dropped); only a span's rest is given back.
        for (class, carve) in state.carve.iter().enumerate() {
            if meta::in_pool(carve.next as *const u8) {
                continue;
            }
            for p in (carve.next..carve.end).step_by(CLASS_BYTES[class]) {
                // SAFETY: never-used blocks of a span carved for this class.
                unsafe { meta::free(p as *mut u8) };
            }
        }
    }
}
