//! Process and thread lifecycle, as mimalloc's `init.c` (`mi_process_init`,
//! `mi_thread_init`, `mi_thread_done`): the engine's once-per-process set-up (the
//! page-size check, the options parse, the hardening key, the `pthread_atfork`
//! handlers (registered at load, from `.init_array`), arming the exit report,
//! the background purger), the fork handlers themselves, and each thread's start (its
//! heap) and exit (giving the heap up). It owns the process set-up state and the
//! thread-exit key; it calls `heap` (create, adopt, abandon heaps; their fork hooks),
//! `region`, `meta`, `options`, `reclaim`, `tuning` (the exit report), `os` (the
//! page-size check, the checkpoint note, the `/proc` descriptors' fork handling),
//! `prof` and `large::cache` (their fork hooks) and `thread`.
//!
//! It is entered from three cold paths and nowhere else: a thread's first small
//! allocation (`heap`'s slow path calls `thread_start`), a thread's first medium free
//! or allocation (`large::cache` finds its cache through `thread_start`) and the
//! large-object path (`lib.rs` calls `ensure_process`). Every front end allocates through one of them
//! first, so the Rust `#[global_allocator]` gets the fork handlers exactly as the C
//! library does, and the fast paths carry no check.
//!
//! Set-up runs once per process under `ProcessOnce`: threads that arrive meanwhile wait
//! (so none allocates with default options the environment overrides), and a fork
//! child that inherits a set-up half done by a vanished thread runs it again.

use crate::heap::{self, Heap};
use crate::region::{self, epoch};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::thread::{self, ProcessOnce};
use crate::{meta, options, os, Reentrancy};
use core::cell::Cell;

/// The process set-up (`process_set_up`).
static PROCESS: ProcessOnce = ProcessOnce::new();

/// Whether `pthread_atfork` has our handlers: a fork child that takes over a set-up
/// must not register them a second time.
static FORK_HANDLERS: AtomicBool = AtomicBool::new(false);

/// Runs `on_thread_exit` for every thread that had a heap.
static EXIT_KEY: thread::ExitKey = thread::ExitKey::new(on_thread_exit);

/// Makes sure the process set-up has run; cheap once it has (one Acquire load).
#[inline]
pub fn ensure_process() {
    if !PROCESS.is_done() {
        process_set_up();
    }
}

/// Once per process, before the first heap or large object: the fork handlers first
/// (so a `fork` during the rest is already handled), then the options (parsed here, so
/// that everything after sees them), then what the options ask for.
#[cold]
#[inline(never)]
fn process_set_up() {
    if !PROCESS.begin() {
        return;
    }
    // Allocations made by what we call (pthread_atfork past glibc's static handlers,
    // when no constructor registered them first; pthread_create) go to the metadata
    // arena, never back here.
    let inside = Reentrancy::enter();
    os::check_page_size();
    register_fork_handlers();
    let options = options::get();
    if options.sparse_moves {
        // Before any object can move (`os::checkpoint`).
        os::checkpoint::note_start();
    }
    #[cfg(feature = "secure")]
    heap::page::hardening::init();
    if options.stats_at_exit {
        // The report checks the run-time switch at exit (`tuning`).
        crate::tuning::register_exit_report();
    }
    if options.background_purge {
        crate::reclaim::start_background_thread();
    }
    drop(inside);
    PROCESS.finish();
}

/// Registers the fork handlers when the loader initialises the engine: its
/// `.init_array` entry, in the C library (`librangealloc.so`) as in a Rust program
/// that links the engine (dynamic or static), before `main`. The process set-up runs at
/// the first allocation, and that may be the `malloc` glibc makes inside
/// `pthread_atfork` past its 48 static handlers while it holds its (non-recursive)
/// `atfork_lock`: registering from there waited on that lock forever
/// (`setup_under_libc_locks` test). The set-up still registers them if an allocation
/// comes before this constructor (another library's constructor, the loader).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static FORK_HANDLERS_AT_LOAD: extern "C" fn() = fork_handlers_at_load;

extern "C" fn fork_handlers_at_load() {
    register_fork_handlers();
}

/// Registers `fork_prepare`/`fork_parent`/`fork_child` with `pthread_atfork`, once
/// (from the load-time constructor, or the set-up if it comes first). glibc keeps the
/// first 48 handlers in static storage (past them it calls `malloc`, which the
/// re-entrancy guard sends to the metadata arena when the set-up registers; the
/// constructor runs before any such call of ours). The handlers work on an engine that
/// is not set up yet: they take and release static locks, and the child's repairs find
/// nothing to repair.
fn register_fork_handlers() {
    // Relaxed: read and written by the loading thread at load, then by the set-up
    // thread (a fork child's takeover reads its own copy, single-threaded at that point
    // or ordered by `ProcessOnce`). Threads that already run at load (a `dlopen`) may
    // both register: the handlers nest (`FORK_DEPTH`), so a second registration is
    // harmless.
    if FORK_HANDLERS.load(Ordering::Relaxed) {
        return;
    }
    extern "C" fn prepare() {
        fork_prepare();
    }
    extern "C" fn parent() {
        fork_parent();
    }
    extern "C" fn child() {
        fork_child();
    }
    // SAFETY: three `extern "C"` functions without arguments, valid for the life of the
    // process (the engine is never unloaded: a preloaded library stays).
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        crate::fatal("pthread_atfork failed: fork() in a threaded program would be unsafe");
    }
    FORK_HANDLERS.store(true, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------
// Threads.
// ---------------------------------------------------------------------------------------

/// A thread's first small allocation: creates or adopts its heap, and arms the exit
/// hook that gives the heap up. Null when out of memory (the caller then serves the
/// request from metadata memory).
#[cold]
#[inline(never)]
pub fn thread_start() -> *mut Heap {
    ensure_process();
    // pthread_setspecific may call calloc (keys past the first 32), and adopting a heap
    // may repair it: nested calls must not come back here.
    let inside = Reentrancy::enter();
    // Before this thread gets a heap, so before its fast path can succeed.
    thread::verify_static_tls();
    let key = EXIT_KEY.get(|| {});
    let heap = heap::adopt_or_create();
    if !heap.is_null() {
        if let Some(key) = key {
            // SAFETY: a valid key; the value is only read back by our destructor.
            unsafe { libc::pthread_setspecific(key, heap as *const libc::c_void) };
        }
    }
    drop(inside);
    if !heap.is_null() {
        thread::set(heap as usize);
    }
    heap
}

/// The `pthread` key destructor: runs once per exiting thread that had a heap.
unsafe extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    let heap = value as *mut Heap;
    thread::set(thread::BUSY);
    // SAFETY: `value` is the heap `thread_start` stored for this thread, which owns it.
    unsafe { heap::abandon(heap) };
    epoch::release_thread();
    // Later allocations of this thread (other destructors) go to metadata memory.
    thread::set(thread::DEAD);
}

// ---------------------------------------------------------------------------------------
// fork.
// ---------------------------------------------------------------------------------------

thread_local! {
    /// The forking thread's slot, restored after the fork in both processes.
    static SLOT_BEFORE_FORK: Cell<usize> = const { Cell::new(0) };
    /// Whether `fork_prepare` found this process the one whose start was noted
    /// (`os::checkpoint::same_process`), for the child's handler.
    static SAME_BEFORE_FORK: Cell<bool> = const { Cell::new(false) };
    /// `fork_prepare` calls on this thread not yet matched by a release: a program
    /// that also registers the engine's handlers itself (as Rust programs had to before
    /// the engine did) nests them, and only the outermost pair locks and releases.
    static FORK_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// `pthread_atfork` prepare handler: takes every allocator lock before `fork` so the
/// child never inherits one mid-update. First, holding no lock, it waits for the
/// `/proc` descriptors other threads hold to be closed (`os::maps::fork_prepare`), so
/// the child inherits none. Lock order: the profiler's tables, heap lists,
/// then the arenas' fork gate and the writer mutexes of the arenas in use
/// (`Arenas::fork_prepare`), then the metadata arena (no path holds a later one while
/// taking an earlier one; the profiler's lock is held only around its own table updates,
/// which take no other lock). Owner-only, lock-free state (a heap's queues and pages)
/// may still be mid-update in another thread: the child leaves such heaps alone until
/// one is adopted, and the adopter repairs it (`heap::adopt_or_create`).
pub fn fork_prepare() {
    let depth = FORK_DEPTH.with(|d| d.replace(d.get() + 1));
    if depth > 0 {
        return;
    }
    SLOT_BEFORE_FORK.with(|s| s.set(thread::get()));
    // A restored parent latches before its child notes a start of its own
    // (`os::checkpoint`), and a child notes one only where the parent was found the
    // same process; before the descriptors' wait, which bars new ones.
    let same = PROCESS.is_done() && options::get().sparse_moves && os::checkpoint::same_process();
    SAME_BEFORE_FORK.with(|s| s.set(same));
    // Before any lock: a thread holding a `/proc` descriptor may wait for one.
    os::maps::fork_prepare();
    // Anything the locking below allocates goes to the metadata arena.
    thread::set(thread::BUSY);
    crate::prof::fork_prepare();
    heap::fork_prepare();
    region::ARENAS.fork_prepare();
    meta::fork_prepare();
}

/// `pthread_atfork` parent handler.
pub fn fork_parent() {
    if leave_fork() {
        release_fork_locks();
        os::maps::fork_done(false);
    }
}

/// `pthread_atfork` child handler: the child's only thread releases the locks, then
/// repairs what the vanished threads left: the epoch and the region table (pins and
/// region locks they held), regions they held outside their region caches, the heaps'
/// exit-key creation, the background purger (started
/// again at the child's first purge tick). Their heaps stay as they are
/// (no write into them here: a child about to `exec` would pay a copy-on-write fault
/// per heap) and are repaired by whichever thread adopts them.
pub fn fork_child() {
    if !leave_fork() {
        return;
    }
    // SAFETY: `fork_prepare` ran on this thread and its locks are still held.
    let in_caches = unsafe { heap::cached_while_forking() };
    release_fork_locks();
    // SAFETY: we are the child's only thread, the locks are released and nothing else
    // runs yet. The epoch first: the table's repair already pins. The caches' repair
    // after the table's, which counts the `Cached` regions.
    unsafe {
        epoch::after_fork_in_child();
        let in_table = region::ARENAS.after_fork_in_child();
        region::arenas::tickets_after_fork_in_child();
        EXIT_KEY.after_fork_in_child();
        crate::large::cache::after_fork_in_child(in_table, in_caches);
    }
    heap::fork_child();
    crate::reclaim::after_fork_in_child();
    os::maps::fork_done(true);
    if SAME_BEFORE_FORK.with(|s| s.get()) {
        // The child is a task of its own (`os::checkpoint`); after `fork_done`, which
        // frees the `/proc` descriptor slots again. Otherwise it keeps its parent's
        // note, which its own start differs from: no sparse copy.
        os::checkpoint::note_start();
    }
}

/// Counts a parent/child handler call off; true for the outermost one.
fn leave_fork() -> bool {
    FORK_DEPTH.with(|d| {
        let depth = d.get().saturating_sub(1);
        d.set(depth);
        depth == 0
    })
}

/// Releases what `fork_prepare` took (reverse order) and restores the thread slot.
fn release_fork_locks() {
    // SAFETY: `fork_prepare` ran on this thread (in the child, the only one left).
    unsafe {
        meta::fork_release();
        region::ARENAS.fork_release();
        heap::fork_release();
        crate::prof::fork_release();
    }
    thread::set(SLOT_BEFORE_FORK.with(|s| s.get()));
}
