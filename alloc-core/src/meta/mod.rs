//! The metadata arena: memory for the allocator's own structures (region descriptors,
//! tree nodes, heaps) and for allocations made by our dependencies while we are inside
//! the allocator (the re-entrancy bootstrap path of DESIGN.md §5). It owns its arenas and
//! calls only `os`, `space` and `stats` (to count process-wide locks); it never touches
//! the region table, so it can serve any
//! caller at any depth without recursion.
//!
//! Layout: 1 GiB reservations, cut into 64 KiB chunks. Chunk 0 holds a table with one
//! word per chunk: the power-of-two block class the chunk was carved into, or the length
//! of a multi-chunk span; chunk 0's own word holds the arena's number, by which the
//! stacks name its blocks (`stack::name_arena`). Freed blocks go to per-class lock-free
//! stacks (`stack`): a block allocated on one thread and freed on another
//! (crossbeam-epoch's sealed-bag nodes: one per 64 deferred functions of a thread, freed
//! by whichever thread collects them) comes and goes without any lock. An empty stack
//! takes the next page of its class's partly cut chunk, or carves a fresh chunk from the
//! newest arena with a compare-and-swap on one bump word (`Meta::carve`), without any
//! lock either; a chunk is cut a page at a time, so its untouched pages never fault in.
//! One spin lock guards the rest: multi-chunk spans and reserving arenas; every section
//! is a few list operations (no syscall except when a new arena is reserved, a
//! once-per-GiB event). So the lock is off the
//! path of every block allocation: a program's steady state never takes it, even when
//! it sets a new peak of blocks in flight (each such carve used to take it).
//!
//! Why stacks and not a deferral of our own: the lock was taken by dependency
//! allocations on the region-table path (77-89 per 12.1k updates in
//! `tests/tests/process_locks.rs`), and crossbeam allocates those nodes itself; keeping
//! its deferrals from allocating would mean replacing its collector. A per-thread cache
//! in front of the lock only lowers the count, since the nodes are allocated on one
//! thread and freed on another. Shared lock-free stacks serve that traffic with no lock
//! at all, for every user of `meta`, and keep the memory type-stable, which is what
//! makes their ABA tag enough. Until session 10 a stack that ran dry took the lock to
//! carve its chunk: once per new peak of blocks in flight, which a scheduler's whim
//! sets (a preempted pinned thread holds crossbeam's collection back), so 1-2 locks
//! showed up in 2 of 20 runs of that test's measured phase.

pub mod stack;

use crate::os;
use crate::space::{self, SlotKind};
use crate::sync::SpinLock;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};
use stack::FreeStack;

/// Meta arenas are reserved this large and aligned, so `p & !(ARENA_SIZE - 1)` finds the
/// chunk table of any meta pointer.
const ARENA_SIZE: usize = 1 << stack::ARENA_SHIFT;
const CHUNK_SHIFT: u32 = 16;
/// The unit of `alloc_carved`.
pub const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;
const CHUNKS_PER_ARENA: usize = ARENA_SIZE / CHUNK_SIZE;
/// The chunk table (one u32 per chunk) fills exactly chunk 0.
const _: () = assert!(CHUNKS_PER_ARENA * 4 == CHUNK_SIZE);
const MAX_ARENAS: usize = 16;

/// Block classes: powers of two from 16 bytes to half a chunk; larger requests take
/// whole-chunk spans.
const MIN_CLASS_SHIFT: u32 = 4;
const MAX_CLASS_SHIFT: u32 = CHUNK_SHIFT - 1;
const CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;

/// Chunk-table words: 0 = unused, 1..=CLASSES = carved into class (word - 1),
/// SPAN_FLAG | n = first chunk of an n-chunk span.
const SPAN_FLAG: u32 = 1 << 31;

struct FreeSpan {
    next: *mut FreeSpan,
    chunks: usize,
}

struct MetaState {
    arenas: [usize; MAX_ARENAS],
    arena_count: usize,
    free_spans: *mut FreeSpan,
    /// Bytes of spans handed out (class blocks are counted in `Meta::block_bytes`).
    span_bytes: usize,
}

// SAFETY: the raw pointers are only followed under the META lock.
unsafe impl Send for MetaState {}

impl MetaState {
    const EMPTY: MetaState = MetaState {
        arenas: [0; MAX_ARENAS],
        arena_count: 0,
        free_spans: ptr::null_mut(),
        span_bytes: 0,
    };
}

/// The metadata arena: the locked state and the lock-free block stacks, bump word and
/// class tails beside it.
struct Meta {
    state: SpinLock<MetaState>,
    free: [FreeStack; CLASSES],
    /// The next never-used chunk of the newest arena; its end is the arena's end, the
    /// next `ARENA_SIZE` boundary. A value on an `ARENA_SIZE` boundary (0 before the
    /// first arena, the end once it is used up) leaves nothing to carve: chunk 0 of an
    /// arena is its table, so a usable value never lies on one. Carved with a CAS
    /// (`carve`); set, under the lock, only when a new arena is reserved (`new_arena`).
    /// Not `crate::sync`: `meta` is not part of model builds (`model.rs` replaces it).
    bump: AtomicUsize,
    /// Bytes of class blocks handed out and not yet freed, pool blocks aside
    /// (`POOL_CARVED`).
    block_bytes: AtomicUsize,
    /// Per class: the first uncut step of the chunk the class cuts page by page
    /// (`start_chunk`, `cut_from_tail`), or 0.
    tail: [AtomicUsize; CLASSES],
}

impl Meta {
    const fn new() -> Self {
        Meta {
            state: SpinLock::new(MetaState::EMPTY),
            free: [const { FreeStack::new() }; CLASSES],
            bump: AtomicUsize::new(0),
            block_bytes: AtomicUsize::new(0),
            tail: [const { AtomicUsize::new(0) }; CLASSES],
        }
    }
}

static META: Meta = Meta::new();

/// Metadata statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetaStats {
    /// Bytes handed out and not yet freed.
    pub in_use: usize,
    /// Bytes of arena carved so far, the classes' uncut steps aside (an upper bound on
    /// what metadata made resident).
    pub carved: usize,
    /// Address space reserved for metadata.
    pub reserved: usize,
}

pub fn stats() -> MetaStats {
    let state = META.state.lock();
    let carved = META.carved(&state);
    // Relaxed: statistics.
    let pools = POOLS.load(Ordering::Relaxed);
    let pool_carved = POOL_CARVED.load(Ordering::Relaxed);
    // Relaxed: a statistic.
    let blocks = META.block_bytes.load(Ordering::Relaxed);
    MetaStats {
        in_use: state.span_bytes + blocks + pool_carved,
        carved: carved + pool_carved,
        reserved: (state.arena_count + usize::from(pools != 0 && pools != usize::MAX)) * ARENA_SIZE,
    }
}

impl Meta {
    /// Bytes of this arena set carved so far, the classes' uncut steps aside (carved,
    /// never touched), pools aside.
    fn carved(&self, state: &MetaState) -> usize {
        if state.arena_count == 0 {
            return 0;
        }
        // Relaxed: a statistic. Under the lock, the bump word lies in the newest arena
        // (`new_arena` moves it there under the lock), at most at its end.
        let bump = self.bump.load(Ordering::Relaxed);
        let carved =
            (state.arena_count - 1) * ARENA_SIZE + (bump - state.arenas[state.arena_count - 1]);
        // Relaxed: a statistic (a tail read while another thread advances it is off by
        // a step at most).
        let uncut: usize = self
            .tail
            .iter()
            .map(|t| match t.load(Ordering::Relaxed) {
                0 => 0,
                tail => tail.next_multiple_of(CHUNK_SIZE) - tail,
            })
            .sum();
        carved - uncut.min(carved)
    }
}

fn class_of(size: usize, align: usize) -> Option<usize> {
    let need = size.max(align).max(1 << MIN_CLASS_SHIFT);
    let shift = usize::BITS - (need - 1).leading_zeros();
    (shift <= MAX_CLASS_SHIFT).then(|| (shift - MIN_CLASS_SHIFT) as usize)
}

/// What a refill cuts of a chunk carved into `class`: one page, or one block for classes
/// of a page and more. A power of two dividing `CHUNK_SIZE`.
fn step_of(class: usize) -> usize {
    os::PAGE_SIZE.max(1 << (class as u32 + MIN_CLASS_SHIFT))
}

fn chunk_word(addr: usize) -> *mut u32 {
    let base = addr & !(ARENA_SIZE - 1);
    let index = (addr - base) >> CHUNK_SHIFT;
    (base as *mut u32).wrapping_add(index)
}

/// Allocates `size` bytes aligned to `align` (a power of two; above 64 KiB, null).
/// Returns null when the address space is exhausted.
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    if align > CHUNK_SIZE {
        return ptr::null_mut();
    }
    match class_of(size, align) {
        Some(class) => META.alloc_block(class),
        None => {
            let Some(bytes) = size.checked_add(CHUNK_SIZE - 1) else {
                return ptr::null_mut();
            };
            crate::stats::process_lock_taken();
            META.alloc_span(&mut META.state.lock(), bytes >> CHUNK_SHIFT)
        }
    }
}

/// `chunks` whole chunks carved into the block class serving `size` (at most half a
/// chunk), handed out at once and counted in use: the caller cuts its blocks from them
/// without the lock (a bump pointer of its own), and each block is a meta block of that
/// class for `usable_size` and `free`. For caches that own a growing pool
/// (`region::blocks`). Null when the address space is exhausted.
pub fn alloc_carved(size: usize, chunks: usize) -> *mut u8 {
    let Some(class) = class_of(size, size.next_power_of_two()) else {
        return ptr::null_mut();
    };
    crate::stats::process_lock_taken();
    let mut state = META.state.lock();
    let span = META.alloc_span(&mut state, chunks);
    if span.is_null() {
        return span;
    }
    // Its blocks are class blocks: counted as such, as they come back one by one.
    state.span_bytes -= chunks * CHUNK_SIZE;
    // Relaxed: a statistic.
    META.block_bytes
        .fetch_add(chunks * CHUNK_SIZE, Ordering::Relaxed);
    for chunk in (span as usize..span as usize + chunks * CHUNK_SIZE).step_by(CHUNK_SIZE) {
        // SAFETY: the chunk is ours; its table word is in its arena's chunk 0.
        unsafe { *chunk_word(chunk) = class as u32 + 1 };
    }
    span
}

/// Owner pools: one meta arena of its own (reserved at the first `pool` call), cut into
/// `POOL_OWNERS` equal pools, one per owner id `1..=POOL_OWNERS` (the process's region
/// arenas' fixed directory ids). An owner cuts blocks from its pool with a bump pointer
/// of its own, under its own lock, so a cache that grows in steady state takes no
/// process-wide lock (`region::blocks`). The arena's chunk table takes the first chunk of
/// owner 1's pool.
pub const POOL_OWNERS: usize = 64;
/// 16 MiB of address space per owner; pages fault in only as the owner's bump pointer
/// reaches them. Sized by `tests/tests/process_locks.rs`: 4 MiB per owner ran dry
/// there (an arena's blocks wait for their grace period in crossbeam's per-thread bags,
/// up to 63 deferred lists of 30 blocks per thread, besides its live tree).
pub const POOL_BYTES: usize = ARENA_SIZE / POOL_OWNERS;
/// A pool is split into this many parts, one per block class its owner uses.
pub const POOL_PARTS: usize = 2;
const POOL_PART_BYTES: usize = POOL_BYTES / POOL_PARTS;

/// The pools' arena: 0 until the first `pool` call reserves it, `usize::MAX` if that
/// reservation failed (owners then fall back to `alloc_carved`).
static POOLS: AtomicUsize = AtomicUsize::new(0);
/// Bytes owners have cut from their pools (`note_pool_carved`), for `stats`.
static POOL_CARVED: AtomicUsize = AtomicUsize::new(0);

/// Part `part` (< `POOL_PARTS`) of owner `owner`'s pool, as `[start, end)`, with every
/// chunk of it carved into the block class serving `size` (at most half a chunk): each
/// block cut from it is a meta block of that class for `usable_size`. None for an owner
/// above `POOL_OWNERS`, or when the pools could not be reserved.
///
/// Each (owner, part) must be asked for at most once in the process, by its owner: an
/// owner is a `'static` table whose directory id is never reused. Its blocks may reach
/// `free` (blocks travel between arenas' caches, and a unit test's tree gives back what
/// it holds): they then join the ordinary free lists.
pub fn pool(owner: u8, part: usize, size: usize) -> Option<(usize, usize)> {
    debug_assert!(part < POOL_PARTS);
    let index = (owner as usize)
        .checked_sub(1)
        .filter(|&i| i < POOL_OWNERS)?;
    let class = class_of(size, size.next_power_of_two())?;
    let base = pools_base()?;
    let start = base + index * POOL_BYTES + part * POOL_PART_BYTES;
    let end = start + POOL_PART_BYTES;
    // Chunk 0 is the arena's table.
    let start = start.max(base + CHUNK_SIZE);
    for chunk in (start..end).step_by(CHUNK_SIZE) {
        // SAFETY: the chunk lies in the pools' arena, whose chunk 0 is its table; its
        // word is written only here, once, by the part's only owner (contract), before
        // any block of it is handed out. Other words of the table are other owners'.
        unsafe { *chunk_word(chunk) = class as u32 + 1 };
    }
    Some((start, end))
}

/// Counts `bytes` cut from a pool (for `stats`: carved and in use).
pub fn note_pool_carved(bytes: usize) {
    // Relaxed: a statistic.
    POOL_CARVED.fetch_add(bytes, Ordering::Relaxed);
}

/// True if `p` lies in an owner's pool.
pub fn in_pool(p: *const u8) -> bool {
    // Acquire: as in `pools_base`.
    let base = POOLS.load(Ordering::Acquire);
    base != 0 && base != usize::MAX && (p as usize).wrapping_sub(base) < ARENA_SIZE
}

fn pools_base() -> Option<usize> {
    // Acquire pairs with the Release store below: the arena's kind bytes are set.
    match POOLS.load(Ordering::Acquire) {
        0 => reserve_pools(),
        usize::MAX => None,
        base => Some(base),
    }
}

/// Reserves the pools' arena, once in the process, under the metadata lock (counted: the
/// first dry cache of the first arena, during warm-up).
#[cold]
fn reserve_pools() -> Option<usize> {
    crate::stats::process_lock_taken();
    let _state = META.state.lock();
    // Relaxed: the lock orders this against the only store, made under it.
    let base = match POOLS.load(Ordering::Relaxed) {
        0 => match os::reserve(ARENA_SIZE, ARENA_SIZE) {
            // SAFETY: a fresh arena of ours, named before any block of it exists.
            Ok(base) if unsafe { stack::name_arena(base) } => {
                space::set_kind(base, ARENA_SIZE, SlotKind::Meta);
                base
            }
            _ => usize::MAX,
        },
        seen => seen,
    };
    // Release: an owner that sees the base sees the kind bytes set above.
    POOLS.store(base, Ordering::Release);
    (base != usize::MAX).then_some(base)
}

/// Like `alloc`, with the memory zeroed.
pub fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    let p = alloc(size, align);
    if !p.is_null() {
        // SAFETY: `p` points to at least `size` bytes we just handed out.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

/// Returns a block to the arena.
///
/// # Safety
/// `p` must come from `alloc`/`alloc_zeroed` and not have been freed since.
pub unsafe fn free(p: *mut u8) {
    // SAFETY: caller contract.
    unsafe { META.free(p) };
}

/// Returns several blocks.
///
/// # Safety
/// As `free`, for every block.
pub unsafe fn free_all(blocks: impl Iterator<Item = *mut u8>) {
    for p in blocks {
        // SAFETY: caller contract.
        unsafe { META.free(p) };
    }
}

/// The usable size of a meta block.
///
/// # Safety
/// `p` must be a live meta block.
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: caller contract, as in `free`.
    let word = unsafe { *chunk_word(p as usize) };
    if word & SPAN_FLAG != 0 {
        (word & !SPAN_FLAG) as usize * CHUNK_SIZE
    } else {
        1 << (word - 1 + MIN_CLASS_SHIFT)
    }
}

/// True if `p` lies in a meta arena.
pub fn contains(p: *const u8) -> bool {
    space::kind_of(p as usize) == SlotKind::Meta
}

/// Lock the arena across `fork` so the child never inherits a half-done update.
/// (The block stacks and class tails need no lock: every change is one CAS, so the child
/// inherits each whole; a block a vanished thread was pushing or had just popped, or the
/// step it had just cut, stays that thread's.)
pub fn fork_prepare() {
    META.state.raw_lock();
}

/// # Safety
/// Only after `fork_prepare` on this thread.
pub unsafe fn fork_release() {
    // SAFETY: caller contract.
    unsafe { META.state.raw_unlock() };
}

impl Meta {
    /// # Safety
    /// `p` must be a live block of this arena.
    unsafe fn free(&self, p: *mut u8) {
        // SAFETY: `p` lies in a meta arena (caller contract), whose chunk 0 is the table.
        let word = unsafe { *chunk_word(p as usize) };
        if word & SPAN_FLAG != 0 {
            crate::stats::process_lock_taken();
            // SAFETY: caller contract.
            unsafe { self.state.lock().free_span(p, (word & !SPAN_FLAG) as usize) };
            return;
        }
        let class = word as usize - 1;
        let size = 1 << (class as u32 + MIN_CLASS_SHIFT);
        // Relaxed: statistics. A pool block (counted by `note_pool_carved`) becomes an
        // ordinary free block of ours, counted back to the pools when it is taken again.
        if in_pool(p) {
            POOL_CARVED.fetch_sub(size, Ordering::Relaxed);
        } else {
            self.block_bytes.fetch_sub(size, Ordering::Relaxed);
        }
        // SAFETY: the block is ours again; every meta arena is checked to `fit` a stack.
        unsafe { self.free[class].push(p) };
    }

    #[inline]
    fn alloc_block(&self, class: usize) -> *mut u8 {
        let mut block = self.free[class].pop();
        if block.is_null() {
            block = self.refill(class);
            if block.is_null() {
                return block;
            }
        }
        let size = 1 << (class as u32 + MIN_CLASS_SHIFT);
        // Relaxed: statistics (see `free`).
        if in_pool(block) {
            POOL_CARVED.fetch_add(size, Ordering::Relaxed);
        } else {
            self.block_bytes.fetch_add(size, Ordering::Relaxed);
        }
        block
    }

    /// An empty stack: the next page of the class's partly cut chunk (`cut_from_tail`),
    /// else a fresh chunk carved into the class (`carve`, no lock) and its first page cut
    /// (`start_chunk`). Either way one page's blocks (one block, for classes of a page
    /// and more): the one returned, the rest onto the stack as one chain. Threads that
    /// find both empty together carve a chunk each. Only a used-up arena sends a refill
    /// to the lock (`refill_locked`), once per GiB of metadata.
    #[cold]
    #[inline(never)]
    fn refill(&self, class: usize) -> *mut u8 {
        if let Some(block) = self.cut_from_tail(class) {
            return block;
        }
        let Some(chunk) = self.carve(1) else {
            return self.refill_locked(class);
        };
        self.start_chunk(class, chunk)
    }

    /// `refill` when the newest arena is used up: under the lock, a block another thread
    /// pushed meanwhile, or a step of a chunk another thread carved meanwhile, or a chunk
    /// of the arena another thread reserved meanwhile, or of a new one.
    #[cold]
    #[inline(never)]
    fn refill_locked(&self, class: usize) -> *mut u8 {
        crate::stats::process_lock_taken();
        let mut state = self.state.lock();
        let block = self.free[class].pop();
        if !block.is_null() {
            return block;
        }
        // Another thread may have carved the arena's last chunk for this class since our
        // `cut_from_tail` found none (review12): its uncut steps come before a new arena,
        // whose reservation may fail.
        if let Some(block) = self.cut_from_tail(class) {
            return block;
        }
        let Some(chunk) = self.carve_locked(&mut state, 1) else {
            return ptr::null_mut();
        };
        drop(state);
        self.start_chunk(class, chunk)
    }

    /// A fresh chunk for `class`: names its class in the chunk table, cuts its first
    /// step (`cut`) and leaves the rest as the class's tail for later refills, untouched.
    /// Until session 12 the whole chunk was cut at once, which wrote a link into every
    /// block, so its 16 pages faulted in together however few blocks the class would
    /// ever use: the 2-4 KiB classes of crossbeam's thread records and bag nodes cost 16
    /// faults per chunk for a block or two per thread (the big-buffers worker at 8
    /// threads: 75 of the whole process's ~540 faults were these cuts, measured with
    /// `perf record -e page-faults`; now ~495).
    fn start_chunk(&self, class: usize, chunk: usize) -> *mut u8 {
        // SAFETY: the chunk is ours (carved) and its table word is in the arena's
        // chunk 0; no other thread reads the word before a block of it is handed out,
        // and the tail that hands its blocks to others is published below (Release).
        unsafe { *chunk_word(chunk) = class as u32 + 1 };
        let step = step_of(class);
        if step < CHUNK_SIZE {
            let rest = chunk + step;
            // Release: a refill that takes the tail (Acquire) sees the chunk's word.
            if self.tail[class]
                .compare_exchange(0, rest, Ordering::Release, Ordering::Relaxed)
                .is_err()
            {
                // Another thread's chunk is the tail (it carved beside us): cut ours
                // whole rather than lose it.
                return self.cut(class, chunk, chunk + CHUNK_SIZE);
            }
        }
        self.cut(class, chunk, chunk + step)
    }

    /// The next step of the class's partly cut chunk, cut (`cut`): its first block, or
    /// `None` when no chunk of the class has uncut steps left.
    ///
    /// The compare-and-swap cannot be fooled by a recurring value: the tail only grows
    /// within its chunk, then becomes 0 or another chunk's, and a chunk is carved once.
    fn cut_from_tail(&self, class: usize) -> Option<*mut u8> {
        let step = step_of(class);
        // Acquire (here and on the CAS) pairs with `start_chunk`'s Release: the chunk's
        // table word is set.
        let mut tail = self.tail[class].load(Ordering::Acquire);
        loop {
            if tail == 0 {
                return None;
            }
            let next = if (tail + step).is_multiple_of(CHUNK_SIZE) {
                0
            } else {
                tail + step
            };
            match self.tail[class].compare_exchange_weak(
                tail,
                next,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(self.cut(class, tail, tail + step)),
                Err(seen) => tail = seen,
            }
        }
    }

    /// Cuts `[from, to)` of a chunk carved into `class` into blocks: returns the first
    /// and pushes the rest as one chain.
    fn cut(&self, class: usize, from: usize, to: usize) -> *mut u8 {
        let size = 1usize << (class as u32 + MIN_CLASS_SHIFT);
        let (first, last) = (from + size, to - size);
        if first <= last {
            for block in (first..last).step_by(size) {
                // SAFETY: blocks of a fresh step of the chunk, ours until pushed.
                unsafe { FreeStack::set_link(block as *mut u8, (block + size) as *mut u8) };
            }
            // SAFETY: as above; the chain runs from `first` to `last`.
            unsafe { self.free[class].push_chain(first as *mut u8, last as *mut u8) };
        }
        from as *mut u8
    }

    /// Takes `chunks` never-used chunks from the newest arena without the lock: one CAS
    /// on the bump word. None when the arena has fewer left (or none is reserved yet).
    ///
    /// The CAS cannot be fooled by a recurring value: within an arena the word only
    /// grows, a new arena's range is disjoint from every earlier one (arenas are never
    /// unmapped), so a value the word leaves never comes back.
    #[inline]
    fn carve(&self, chunks: usize) -> Option<usize> {
        let bytes = chunks * CHUNK_SIZE;
        // Acquire (here and on the CAS) pairs with the Release store of `new_arena`: a
        // chunk's carver sees its arena named and its kind bytes set (the word's later
        // values come from CASes, which continue that store's release sequence).
        let mut bump = self.bump.load(Ordering::Acquire);
        loop {
            if bump.is_multiple_of(ARENA_SIZE) {
                return None;
            }
            let end = (bump & !(ARENA_SIZE - 1)) + ARENA_SIZE;
            if end - bump < bytes {
                return None;
            }
            match self.bump.compare_exchange_weak(
                bump,
                bump + bytes,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(bump),
                Err(seen) => bump = seen,
            }
        }
    }

    /// `carve` under the lock, reserving new arenas while the newest is used up: None
    /// when no arena can be reserved.
    fn carve_locked(&self, state: &mut MetaState, chunks: usize) -> Option<usize> {
        loop {
            if let Some(chunk) = self.carve(chunks) {
                return Some(chunk);
            }
            if !state.new_arena(&self.bump, chunks * CHUNK_SIZE) {
                return None;
            }
        }
    }

    /// A span of `chunks` chunks: the first freed span that fits, or never-used chunks.
    fn alloc_span(&self, state: &mut MetaState, chunks: usize) -> *mut u8 {
        if let Some(span) = state.reuse_span(chunks) {
            return span;
        }
        match self.carve_locked(state, chunks) {
            Some(span) => state.mark_span(span, chunks),
            None => ptr::null_mut(),
        }
    }
}

impl MetaState {
    /// # Safety
    /// `p` must be the start of a live span of `chunks` chunks of this arena.
    unsafe fn free_span(&mut self, p: *mut u8, chunks: usize) {
        self.span_bytes -= chunks * CHUNK_SIZE;
        let span = p as *mut FreeSpan;
        // SAFETY: the span is ours again and at least one chunk long.
        unsafe {
            span.write(FreeSpan {
                next: self.free_spans,
                chunks,
            })
        };
        self.free_spans = span;
    }

    /// The first freed span of at least `chunks` chunks, split to that length.
    fn reuse_span(&mut self, chunks: usize) -> Option<*mut u8> {
        let mut link: *mut *mut FreeSpan = &mut self.free_spans;
        // First fit over freed spans; metadata spans are rare (large dependency tables).
        // SAFETY: the list holds free spans written by `free`.
        unsafe {
            while !(*link).is_null() {
                let span = *link;
                let have = (*span).chunks;
                if have >= chunks {
                    *link = (*span).next;
                    if have > chunks {
                        let rest = (span as usize + chunks * CHUNK_SIZE) as *mut FreeSpan;
                        rest.write(FreeSpan {
                            next: self.free_spans,
                            chunks: have - chunks,
                        });
                        *chunk_word(rest as usize) = SPAN_FLAG | (have - chunks) as u32;
                        self.free_spans = rest;
                    }
                    return Some(self.mark_span(span as usize, chunks));
                }
                link = &mut (*span).next;
            }
        }
        None
    }

    fn mark_span(&mut self, span: usize, chunks: usize) -> *mut u8 {
        // SAFETY: the span is ours; its first chunk's table word is in chunk 0.
        unsafe { *chunk_word(span) = SPAN_FLAG | chunks as u32 };
        self.span_bytes += chunks * CHUNK_SIZE;
        span as *mut u8
    }

    /// Reserves a new arena and points `bump` (the arena's bump word) at its first
    /// chunk after the table. False if none can be reserved or `bytes` cannot fit one.
    fn new_arena(&mut self, bump: &AtomicUsize, bytes: usize) -> bool {
        if self.arena_count == MAX_ARENAS || bytes > ARENA_SIZE - CHUNK_SIZE {
            return false;
        }
        let Ok(base) = os::reserve(ARENA_SIZE, ARENA_SIZE) else {
            return false;
        };
        // SAFETY: a fresh arena of ours, named before any block of it exists.
        if !unsafe { stack::name_arena(base) } {
            // More arenas than a block stack's head word can name (never: a process
            // reserves at most 17): given up as if the reservation had failed.
            return false;
        }
        space::set_kind(base, ARENA_SIZE, SlotKind::Meta);
        self.arenas[self.arena_count] = base;
        self.arena_count += 1;
        // The unused tail of the previous arena is abandoned: at most one span's worth.
        // Release: see `Meta::carve`. A carver still on the previous arena fails its CAS
        // against this value and carves here.
        bump.store(base + CHUNK_SIZE, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests;
