//! Heap profiling: sampled allocation stacks, written as pprof profiles, and a leak
//! report at exit. Owns the profiler's on/off state and its hooks into `alloc`, `free`
//! and `realloc`; calls `large` (sampled large objects are served there), `heap` (a
//! reallocated sampled block's page count), `thread` (the re-entrancy guard), `options`,
//! `os`, `space` (what kind of memory a pointer is in), the crate's own entry points
//! (a sampled object's allocation, free and resize), and its own parts: `sampler` (the per-thread byte countdown and sample
//! weights), `stack` (unwinding, with `cfi`'s call-frame rules and `libgcc`'s unwinder,
//! the program's or ours), `table` (stacks and live
//! samples), `pprof` (the encoder), `gzip` (its compression) and `report` (the leak
//! report).
//!
//! Cost model. The fast paths carry nothing of the profiler, on or off: small blocks
//! are counted toward the thread's sample point a whole refilled list at a time, in the
//! heap's slow path (`charge_blocks`), which cuts the list before a sample point so that
//! the sampled allocation reaches the slow path too (`sample_block`); large objects,
//! already on a slow path, are counted one by one (`alloc_large`). With profiling off a
//! refill tests one byte. A sampled small block stays an ordinary block of its page; the
//! heap marks the page (`heap::page::Page::mark_sampled`), which makes the fast free's
//! block test fail for every block of it, so their frees reach the heap's slow path,
//! which asks `forget_if_sampled` (one load and a hash when the block is not sampled).
//! The mark goes when no sampled block of the page is left. The free of a table region,
//! already slow, asks too. One allocation in `prof_sample` bytes on average unwinds its
//! stack and records it.
//!
//! Hooks: the heap's `alloc_slow` calls `charge_blocks` and `sample_block` while
//! `sampling()`; `alloc_generic` (`lib.rs`) calls `alloc_large` while `sampling()`;
//! `realloc` calls `realloc_profiled` while `watching()`; `free` of a table region
//! (`large_freed`) and the heap's free of a block of a marked page call
//! `forget_if_sampled`; the fork handlers take and release the table lock.
//!
//! Signal handlers. A handler that frees (or reallocs) an object that may be sampled
//! while its own thread holds the table lock (the program was dumping or resetting the
//! profile) cannot wait for the lock: its holder is the code it interrupted. The table
//! refuses it (`Held`), and the free is deferred (`defer_free`: a lock-free list
//! through the objects' first words), made by the next control call or large free
//! (`free_deferred`); such a realloc copies to a new object and defers the old one's
//! free.

// The cached walk reads x86-64 rules; other targets use libgcc's walk alone.
#[cfg(target_arch = "x86_64")]
mod cfi;
mod gzip;
mod libgcc;
mod pprof;
mod report;
mod sampler;
mod stack;
mod table;

use crate::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};
use crate::{large, options, thread, MALLOC_ALIGN};
use stack::MAX_FRAMES;
use std::path::Path;

pub use table::{Counts, Held};

const OFF: u8 = 0;
const ON: u8 = 1;
/// The options have not been read yet: the first allocation reads them.
const UNREAD: u8 = 2;
/// One thread is reading the options; the others allocate unprofiled meanwhile.
const STARTING: u8 = 3;

/// The profiler's state; anything but `OFF` makes the slow paths count allocations.
pub(crate) static STATE: AtomicU8 = AtomicU8::new(UNREAD);
/// The mean sample distance in bytes (`prof_sample`).
static MEAN: AtomicU64 = AtomicU64::new(options::DEFAULT_PROF_SAMPLE);
/// Dumps made through `prof.dump` without a path, for unique file names.
static DUMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// True while allocations count toward sample points (or the options are still unread):
/// one byte load and a branch, on slow paths only.
#[inline(always)]
pub fn sampling() -> bool {
    // Relaxed: a thread that misses a concurrent switch samples one allocation more
    // or less; no data hangs on this flag (the tables have their own lock).
    STATE.load(Ordering::Relaxed) != OFF
}

/// True while `realloc` must go through `realloc_profiled` (sampling, or sampled
/// objects live that a `realloc` may move).
#[inline(always)]
pub fn watching() -> bool {
    sampling() || table::any_live()
}

fn mean() -> u64 {
    // Relaxed: a lone value; no data hangs on it.
    MEAN.load(Ordering::Relaxed)
}

/// Reads the options on the first call; true if sampling is on afterwards.
#[cold]
fn start() -> bool {
    // Relaxed: the options cell has its own Acquire/Release; STATE publishes nothing.
    if STATE
        .compare_exchange(UNREAD, STARTING, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        let o = options::get();
        MEAN.store(o.prof_sample, Ordering::Relaxed);
        let on = o.prof && table::init();
        if on {
            // `dlsym` may allocate; this may run in the middle of a heap refill
            // (`charge_blocks`), so that goes to the metadata arena, as in `capture_here`.
            let _inside = thread::Reentrancy::enter();
            libgcc::init();
            #[cfg(target_arch = "x86_64")]
            cfi::init(o.prof_unwind_phdr);
        }
        // Relaxed: as in `sampling`.
        STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
    }
    STATE.load(Ordering::Relaxed) == ON
}

/// True if sampling is on, reading the options first if nobody has yet.
#[inline]
fn on() -> bool {
    // Relaxed: as in `sampling`.
    STATE.load(Ordering::Relaxed) == ON || start()
}

/// The heap's refill: `blocks` blocks of `block_size` bytes are about to be handed out by
/// the fast path, in list order. Counts them toward the thread's sample point at once
/// and returns how many come before the block the point falls in (`blocks` if none
/// does); the next point is then drawn at once. The caller cuts its list there, so the
/// allocation that takes the next block reaches `sample_block` instead.
///
/// Unbiased as the per-allocation count is: the thread's blocks form the same stream of
/// bytes, counted in batches, and the allocation sampled is the one whose block holds
/// the point. A block counted but never handed out (its page retired or adopted with
/// the list) only removes bytes from the stream, whatever the points do, so the
/// remaining ones are still sampled at the rate `1 / prof_sample`.
#[cold]
#[inline(never)]
pub fn charge_blocks(blocks: usize, block_size: usize) -> usize {
    if !on() {
        return blocks;
    }
    sampler::charge(blocks, block_size, mean)
}

/// Frames of ours above `record_block` when it records a small block: `sample_block`,
/// the heap's `sample_point` and its `alloc_slow` (each called, never jumped to: they
/// keep their callers' frames). A tail call further up only ever removes an allocator
/// frame (`malloc`'s), never one of the program's.
const SMALL_CALLERS: usize = 3;

/// The allocation at a sample point of a small block: `block`, of `block_size` bytes,
/// just taken from its page, is recorded with its stack and the weight of a block of
/// that size (the profile counts block sizes, as jemalloc's counts usable sizes). True
/// if it was recorded: the caller then marks its page, so that its free reaches the
/// heap's slow path (`forget_if_sampled`). False if the profiler declines (off by now,
/// the thread is inside the profiler, or a table is full).
#[cold]
#[inline(never)]
pub fn sample_block(block: *mut u8, block_size: usize) -> bool {
    if STATE.load(Ordering::Relaxed) != ON || thread::inside_allocator() || sampler::busy() {
        return false;
    }
    core::hint::black_box(record_block(block, block_size, SMALL_CALLERS))
}

/// Records one sampled small block; `callers` frames above this one are the
/// allocator's. Out of line, as `sample`.
#[cold]
#[inline(never)]
fn record_block(block: *mut u8, block_size: usize, callers: usize) -> bool {
    let _busy = sampler::Busy::enter();
    let (frames, depth) = capture_here(callers + 1);
    let (objects, bytes) = sampler::weight(block_size, mean());
    // A full table leaves the block an ordinary, unrecorded one.
    table::record(block as usize, &frames[..depth], objects, bytes)
}

/// Frames of ours above `sample` when it samples a large object: `alloc_large` and the
/// engine's `alloc_generic`.
const LARGE_CALLERS: usize = 2;

/// A large object while sampling: counts its bytes (one by one: large objects have no
/// refills) and, at a sample point, records its stack.
#[cold]
#[inline(never)]
pub fn alloc_large(size: usize, align: usize, zero: bool) -> *mut u8 {
    if !on() || !sampler::take(size, mean) || thread::inside_allocator() || sampler::busy() {
        return large::alloc(size, align, zero);
    }
    not_a_tail_call(sample(size, align, zero, LARGE_CALLERS))
}

/// Keeps a call to `sample` from becoming a jump, which would take the caller's frame
/// off the stack and make the frame counts skip one of the program's frames.
#[inline(always)]
fn not_a_tail_call(p: *mut u8) -> *mut u8 {
    core::hint::black_box(p)
}

/// Serves and records one sampled allocation; `callers` frames above this one are the
/// allocator's. Out of line, so that its callers' common paths carry neither its stack
/// buffer nor the registers it saves.
#[cold]
#[inline(never)]
fn sample(size: usize, align: usize, zero: bool, callers: usize) -> *mut u8 {
    let _busy = sampler::Busy::enter();
    let (frames, depth) = capture_here(callers + 1);
    let p = large::alloc(size, align.max(MALLOC_ALIGN), zero);
    if !p.is_null() {
        let (objects, bytes) = sampler::weight(size, MEAN.load(Ordering::Relaxed));
        // A full table leaves the object an ordinary, unrecorded large object.
        table::record(p as usize, &frames[..depth], objects, bytes);
    }
    p
}

/// `realloc` while `watching`. A sampled block's record is dropped first (the normal
/// path may move it and free the old region without passing `free`). A large result's
/// bytes count toward the thread's sample point, as a large allocation's do (the whole
/// new size: jemalloc samples `realloc` the same way), and one that reaches the point is
/// recorded where it lands (resized in place when it can be). A small result is counted
/// at its page's refill, as every small block is.
///
/// # Safety
/// As `crate::realloc`.
#[cold]
#[inline(never)]
pub unsafe fn realloc_profiled(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    match forget_if_sampled(p) {
        Ok(true) if crate::space::kind_of(p as usize) == crate::space::SlotKind::Segment => {
            // SAFETY: forwarded contract: a live block, here of a segment.
            unsafe { crate::heap::sampled_block_forgotten(p) };
        }
        Ok(_) => {}
        // SAFETY: forwarded contract.
        Err(Held::ByThisThread) => return unsafe { realloc_by_copy(p, new_size, align) },
    }
    free_deferred();
    let take = !crate::served_by_pages(new_size, align)
        && STATE.load(Ordering::Relaxed) == ON
        && sampler::take(new_size, mean)
        && !thread::inside_allocator()
        && !sampler::busy();
    if !take {
        // SAFETY: forwarded contract.
        return unsafe { crate::realloc_unprofiled(p, new_size, align) };
    }
    // SAFETY: forwarded contract.
    not_a_tail_call(unsafe { sample_realloc(p, new_size, align) })
}

/// `realloc` of an object that may be sampled, in a signal handler of the thread that
/// holds the table's lock (`forget_if_sampled`'s `Err`): its record cannot be dropped
/// now, so it is not resized or moved in place (which frees nothing through `free`);
/// its contents go to a new object and its free is deferred, as a `free` of it would be.
///
/// # Safety
/// As `crate::realloc`.
#[cold]
#[inline(never)]
unsafe fn realloc_by_copy(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded contract: `p` is a live object of this allocator.
    let old = unsafe { crate::checked_usable_size(p, "realloc") };
    // SAFETY: `align` is the object's, a power of two (forwarded contract).
    let q = unsafe { crate::alloc(new_size.max(1), align) };
    if !q.is_null() {
        // SAFETY: distinct live objects, each at least `min(old, new_size)` bytes; then
        // `p`'s free, deferred (forwarded contract: live, freed once).
        unsafe {
            core::ptr::copy_nonoverlapping(p, q, old.min(new_size));
            defer_free(p);
        }
    }
    q
}

/// Frames of ours above `sample_realloc`: `realloc_profiled`.
const REALLOC_CALLERS: usize = 1;

/// The sampled `realloc`: see `realloc_profiled`.
///
/// # Safety
/// As `crate::realloc`.
#[cold]
#[inline(never)]
unsafe fn sample_realloc(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    let _busy = sampler::Busy::enter();
    let (frames, depth) = capture_here(REALLOC_CALLERS + 1);
    // SAFETY: forwarded contract. The result is a large object (the size is not served
    // from pages), resized in place when `p` is one that can grow.
    let q = unsafe { crate::realloc_unprofiled(p, new_size, align) };
    // Only a table region is recorded: `free` looks a record up for those alone, so a
    // record of anything else could never be forgotten.
    if !q.is_null() && crate::space::kind_of(q as usize) == crate::space::SlotKind::Table {
        let (objects, bytes) = sampler::weight(new_size, mean());
        table::record(q as usize, &frames[..depth], objects, bytes);
    }
    q
}

/// The stack above this many frames of ours, innermost first.
#[inline(always)]
fn capture_here(ours: usize) -> ([usize; MAX_FRAMES], usize) {
    let mut frames = [0usize; MAX_FRAMES];
    // Whatever the unwinder allocates on a first call goes to the metadata arena.
    let _inside = thread::Reentrancy::enter();
    let depth = stack::capture(&mut frames, ours);
    (frames, depth)
}

/// Called by `free` for a table region before it is released, and by the heap's free of
/// a block of a marked page before it is published: `Ok(true)` if `p` was a sampled
/// object (its record is dropped: its stack's in-use totals go down), `Ok(false)` if
/// not. `Err` when `p` may be sampled and this is a signal handler that interrupted its
/// own thread inside the table's lock: the caller must not free `p` now (its record
/// would outlive it, and a new object there would take it over) and hands it to
/// `defer_free` instead.
#[inline]
pub fn forget_if_sampled(p: *mut u8) -> Result<bool, Held> {
    if !table::maybe_sampled(p as usize) {
        return Ok(false);
    }
    table::forget(p as usize)
}

/// Frees whose thread held the table's lock (see `Held`), linked through their first
/// words; freed by the next `free_deferred`.
static DEFERRED: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// Leaves the free of `p` to a later `free_deferred`. Lock-free, so a signal handler
/// may call it whatever its thread was doing. The block stays allocated until then, as
/// if the program had freed it a little later.
///
/// # Safety
/// `p` is a live object of this allocator (at least a word long) whose free was asked
/// for and changed nothing yet.
#[cold]
pub unsafe fn defer_free(p: *mut u8) {
    let mut head = DEFERRED.load(Ordering::Relaxed);
    loop {
        // SAFETY: caller contract: the object is ours, and at least one word long.
        unsafe { (p as *mut *mut u8).write(head) };
        // Release: the link written above is seen by the `free_deferred` that takes it.
        match DEFERRED.compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// Frees the objects `defer_free` kept, if any: called where a free may run and the
/// table's lock is not held by this code (the control calls, after their tables' work;
/// a large object's free). Frees each once: a free that finds the lock still its
/// thread's (a handler again) is deferred anew, for a later call.
#[inline]
pub fn free_deferred() {
    // Relaxed: an empty list is the common case; the swap below orders what it takes.
    if DEFERRED.load(Ordering::Relaxed).is_null() {
        return;
    }
    free_deferred_now();
}

/// With this thread's signals blocked: the program whose handler freed is the one
/// whose handlers free, and one of them must not land in the middle of these frees.
#[cold]
#[inline(never)]
fn free_deferred_now() {
    // SAFETY: plain data, filled in by the calls below.
    let (mut all, mut saved): (libc::sigset_t, libc::sigset_t) =
        unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
    // SAFETY: valid sets, ours; `pthread_sigmask` neither allocates nor locks.
    let blocked = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut saved) == 0
    };
    // Acquire: pairs with `defer_free`'s Release (the links).
    let mut p = DEFERRED.swap(core::ptr::null_mut(), Ordering::Acquire);
    while !p.is_null() {
        // SAFETY: a deferred object's first word links the list (`defer_free`); the
        // object is still live and now freed exactly once.
        unsafe {
            let next = *(p as *const *mut u8);
            crate::free(p);
            p = next;
        }
    }
    if blocked {
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, core::ptr::null_mut()) };
    }
}

/// `free`'s part for a large object (a table region): true if the free was deferred
/// (`forget_if_sampled`'s `Err`), and the caller stops there. Frees what earlier
/// deferrals left first, if anything.
///
/// # Safety
/// `p` lies in a table region and is being freed, nothing changed yet.
#[cold]
pub unsafe fn large_freed(p: *mut u8) -> bool {
    // Deferred only once the table says `p` starts a live large object: anything else
    // goes on to `large::free`, which reports it.
    if forget_if_sampled(p).is_err() && large::usable_size(p).is_some() {
        // SAFETY: a live large object (checked above), whose free changed nothing yet.
        unsafe { defer_free(p) };
        return true;
    }
    free_deferred();
    false
}

// ---- control -------------------------------------------------------------------------

/// True if sampling is on (`prof=1`, or turned on with `set_active`).
pub fn active() -> bool {
    STATE.load(Ordering::Relaxed) == ON || (STATE.load(Ordering::Relaxed) == UNREAD && start())
}

/// True once profiling has been on in this process (the tables exist, a dump has
/// something to say).
pub fn enabled() -> bool {
    active() || table::initialised()
}

/// Turns sampling on or off; returns whether it was on. Turning it on maps the tables
/// on first use (false and no change if the OS refuses). Live samples stay recorded
/// while it is off, and their frees are still subtracted.
pub fn set_active(on: bool) -> bool {
    let was = active();
    let mapped = !on || table::init();
    free_deferred();
    if !mapped {
        return was;
    }
    // Relaxed: as in `sampling`.
    STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
    was
}

/// Zeroes the allocation totals (`alloc_objects`, `alloc_space`) of every stack; the
/// in-use totals follow the live objects and stay.
pub fn reset() {
    table::reset();
    free_deferred();
}

/// The mean sample distance in bytes.
pub fn sample_bytes() -> u64 {
    MEAN.load(Ordering::Relaxed)
}

/// Sets the mean sample distance (at least one byte). Samples already taken keep the
/// weights they were recorded with; threads switch at their next sample point.
pub fn set_sample_bytes(bytes: u64) {
    // Relaxed: a lone value read on the profiled path; no data hangs on it.
    MEAN.store(bytes.max(1), Ordering::Relaxed);
}

/// Samples not recorded because a table was full (their objects are ordinary large
/// objects, missing from the profile; see `table` for what a full table does).
pub fn dropped_samples() -> u64 {
    table::dropped()
}

/// The estimated totals of every recorded stack, innermost frame first.
pub fn stacks() -> Vec<(Vec<usize>, Counts)> {
    let _busy = sampler::Busy::enter();
    snapshot()
        .into_iter()
        .map(|s| (s.frames[..s.depth].to_vec(), s.counts))
        .collect()
}

/// Extra room when copying the stack table, for stacks added between the count and
/// the copy (a dump copies what fits; later stacks go in the next dump).
const SNAPSHOT_SLACK: usize = 64;

/// The stacks, copied under the table's lock; then the frees a signal handler left
/// while this thread held it (see `defer_free`).
fn snapshot() -> Vec<table::StackSample> {
    let mut out = Vec::with_capacity(table::stack_count() + SNAPSHOT_SLACK);
    table::snapshot(&mut out);
    free_deferred();
    out
}

/// Writes a gzip-compressed pprof profile of the recorded stacks to `path`. Errors are
/// errno values: `ENOENT` if profiling was never on, else what the write failed with.
pub fn dump(path: &Path) -> Result<(), i32> {
    if !table::initialised() {
        return Err(libc::ENOENT);
    }
    let _busy = sampler::Busy::enter();
    let stacks = snapshot();
    let header = pprof::Header {
        period: MEAN.load(Ordering::Relaxed),
        time_nanos: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        dropped: table::dropped(),
    };
    let body = pprof::encode(&stacks, &pprof::mappings(), &header);
    std::fs::write(path, gzip::gzip(&body)).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Dumps to `<prof_dump prefix>.<pid>.<seq>.heap` (jemalloc's naming for `prof.dump`
/// without a file name); `EINVAL` when no prefix was given.
pub fn dump_to_prefix() -> Result<(), i32> {
    let Some(prefix) = options::get().prof_dump else {
        return Err(libc::EINVAL);
    };
    // Relaxed: only uniqueness matters.
    let seq = DUMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let path = format!(
        "{}.{}.{seq}.heap",
        String::from_utf8_lossy(prefix.as_bytes()),
        std::process::id()
    );
    dump(Path::new(&path))
}

/// The exit dump and leak report (`prof_dump`, `prof_leak`), run by the loader's
/// `_dl_fini` at `exit` (after the program's `atexit` handlers and C++ static
/// destructors), or when a `dlopen`ed copy is unloaded. Not registered with `atexit`
/// from `start`: `start` runs at the process's first allocation, which may be the one
/// glibc makes inside `atexit` while holding its (non-recursive) exit-handler lock, and
/// registering there waited on that lock forever (`heap_profile`'s atexit test).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = at_exit;

/// See `AT_EXIT`. Not under the re-entrancy guard, by design: it runs from `exit`, with
/// no allocator frame below it on the stack (no allocator path calls `exit`), so its
/// allocations are the program's own and may use the heap and the table like any
/// other (the dump allocates megabytes, which the metadata arena is not for). The busy
/// flag keeps them from being sampled into the profile being written.
extern "C" fn at_exit() {
    let o = options::get();
    // As `start` registered it before: only for `prof=1` with a dump or a report asked
    // for, and only once profiling has made its tables.
    if !o.prof || (o.prof_dump.is_none() && !o.prof_leak) || !table::initialised() {
        return;
    }
    let _busy = sampler::Busy::enter();
    if let Some(prefix) = o.prof_dump {
        let path = format!(
            "{}.{}.final.heap",
            String::from_utf8_lossy(prefix.as_bytes()),
            std::process::id()
        );
        if let Err(errno) = dump(Path::new(&path)) {
            crate::os::write_stderr(
                format!("rangealloc: warning: prof_dump to {path} failed (errno {errno})\n")
                    .as_bytes(),
            );
        }
    }
    if o.prof_leak {
        report::print_leaks(&snapshot());
    }
}

/// `fork` handlers: see `table::fork_prepare`.
pub fn fork_prepare() {
    table::fork_prepare();
}

/// # Safety
/// After `fork_prepare` on this thread.
pub unsafe fn fork_release() {
    // SAFETY: caller contract.
    unsafe { table::fork_release() }
}
