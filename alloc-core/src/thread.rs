//! The calling thread's allocator slot: a `const` thread-local word holding this
//! thread's heap, or a sentinel, and beside it the fast word the fast paths read: the
//! heap, or `heap::NO_HEAP` (a heap with no block in any class; its address is this
//! module's only reference outside itself but `sync`'s back-off) while the slot holds a
//! sentinel. It owns those words and calls nothing for them.
//!
//! The sentinels double as the re-entrancy guard of DESIGN.md §5: while a thread runs
//! allocator code that may allocate through a dependency, its slot reads `BUSY` and its
//! fast word `NO_HEAP`, so a nested `alloc` finds no block on the fast path and, on the
//! slow path, goes to the metadata arena; a nested `free` of one of its own blocks sees
//! a foreign owner and takes the atomic (remote) path instead of touching the heap
//! mid-update. One thread-local load serves both the fast path and the guard, with no
//! test of the value before it is followed.
//!
//! How that load is made: in an executable, Rust reaches `WORDS` with one `%fs`-relative
//! instruction. In a shared object (`librangealloc.so`) Rust uses the general-dynamic TLS
//! model, a call to `__tls_get_addr` per access, and stable Rust cannot ask for the
//! initial-exec model. With the `static-tls` feature (enabled by the C library, x86_64
//! glibc only) the fast path can instead read its word at a recorded offset from the
//! thread pointer, once the library has proved it sits in static TLS: see
//! [`use_static_tls`] for the proof obligations and why the offset holds for every
//! thread, and [`verify_static_tls`] for the per-thread check.
//!
//! It also holds the two once-per-process primitives the engine's set-up needs, both
//! safe across `fork` (`ExitKey`, `ProcessOnce`); they call `libc` and `sync` (the
//! back-off of threads waiting for the set-up).

use core::cell::Cell;

/// No heap yet (first allocation of the thread).
pub const UNINIT: usize = 0;
/// Inside the allocator: nested requests bypass the heap and the table.
pub const BUSY: usize = 1;
/// The thread is exiting and gave its heap up.
pub const DEAD: usize = 2;
// 3 is `UNREAD`, never stored in a slot.
/// Slot values below this are sentinels, not heap pointers.
pub const SENTINEL_LIMIT: usize = 4096;

/// A thread's two words, in one thread-local so that one offset reaches both.
#[repr(C)]
struct Words {
    /// What the fast paths read: this thread's heap, or `heap::NO_HEAP` (a heap whose
    /// every class has only the empty page) while `slot` holds a sentinel, so a fast
    /// path needs no sentinel test: it finds no block and takes its slow path, which
    /// reads `slot`. Written only by `set` and `Reentrancy`, with `slot`.
    fast: Cell<*const u8>,
    /// This thread's heap, or a sentinel.
    slot: Cell<usize>,
}

/// `fast` while the thread has no heap of its own.
#[cfg(not(loom))]
const NO_HEAP: *const u8 = (&raw const crate::heap::NO_HEAP.0).cast();
/// Model builds have no heap; nothing reads `fast` there.
#[cfg(loom)]
const NO_HEAP: *const u8 = core::ptr::null();

thread_local! {
    static WORDS: Words = const {
        Words {
            fast: Cell::new(NO_HEAP),
            slot: Cell::new(UNINIT),
        }
    };
}

/// The byte offset of `slot` from the start of `Words` (where `TP_OFFSET` points).
#[cfg(static_tls)]
const SLOT_DISPLACEMENT: isize = core::mem::offset_of!(Words, slot) as isize;

#[inline(always)]
pub fn get() -> usize {
    #[cfg(static_tls)]
    {
        // Relaxed: the offset is a fact about the module's TLS layout, fixed before it
        // is stored and never changed afterwards except to 0; a thread that sees a
        // stale 0 just takes the general access, which reads the same word.
        let offset = TP_OFFSET.load(core::sync::atomic::Ordering::Relaxed);
        if offset != 0 {
            // SAFETY: a nonzero `TP_OFFSET` was stored by `use_static_tls`, whose caller
            // proved the module is in static TLS, where `WORDS` lies at this offset from
            // the thread pointer in every thread of the process (see there).
            return unsafe { static_tls::read(offset + SLOT_DISPLACEMENT) };
        }
        static_tls::get_general()
    }
    #[cfg(not(static_tls))]
    WORDS.with(|w| w.slot.get())
}

/// Sets the slot (a heap or a sentinel), and the fast word with it.
#[inline(always)]
pub fn set(value: usize) {
    WORDS.with(|w| {
        w.slot.set(value);
        w.fast.set(if value >= SENTINEL_LIMIT {
            value as *const u8
        } else {
            NO_HEAP
        });
    })
}

/// For fast paths that have a slow path of their own: this thread's heap when the
/// thread has one and its words can be read with one load (always in an executable;
/// in the C library once static TLS is proven), else `heap::NO_HEAP`, where every
/// class is empty, so the caller misses and its slow path calls `get`. Never a
/// sentinel: the caller tests nothing before following it. Keeps the general access's
/// call out of the fast path, which then needs no stack frame.
#[inline(always)]
pub fn get_fast() -> *const u8 {
    #[cfg(static_tls)]
    {
        // Relaxed: as in `get`.
        let offset = TP_OFFSET.load(core::sync::atomic::Ordering::Relaxed);
        if offset == 0 {
            return NO_HEAP;
        }
        // SAFETY: as in `get`; the fast word is the first of `WORDS`.
        unsafe { static_tls::read(offset) as *const u8 }
    }
    #[cfg(not(static_tls))]
    WORDS.with(|w| w.fast.get())
}

/// `get_fast` for a caller that only compares the result with a heap address (`free`
/// asking whether it owns a block's page): the fast word when it can be read with one
/// load, else a word that is never a heap's address, so the compare fails and the
/// caller takes its slow path. Without a proven offset it reads `%fs:0`, the thread
/// pointer (the TCB's self pointer, always readable): glibc's thread control block,
/// never a heap, which lives in our metadata arena. One branch fewer than `get_fast`.
#[inline(always)]
pub fn get_for_owner_check() -> usize {
    #[cfg(static_tls)]
    {
        // Relaxed: as in `get`; 0 reads the thread pointer, see above.
        let offset = TP_OFFSET.load(core::sync::atomic::Ordering::Relaxed);
        // SAFETY: a nonzero offset as in `get`; offset 0 is the TCB's self pointer,
        // which the TLS ABI requires at `%fs:0` in every thread.
        unsafe { static_tls::read(offset) }
    }
    #[cfg(not(static_tls))]
    {
        WORDS.with(|w| w.fast.get()) as usize
    }
}

/// `WORDS`'s offset from the thread pointer (`%fs:0`) when the module is proven to sit
/// in static TLS; 0 while unproven or after a thread disproved it (static TLS offsets on
/// x86_64 are negative, so 0 is never a real one).
#[cfg(static_tls)]
static TP_OFFSET: core::sync::atomic::AtomicIsize = core::sync::atomic::AtomicIsize::new(0);

/// Set once `use_static_tls` has run (or a thread disproved the offset): the decision is
/// made once per process and never revisited.
#[cfg(static_tls)]
static TP_OFFSET_DECIDED: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Lets the fast path read `WORDS` with one `%fs`-relative load from now on.
///
/// Why one offset serves every thread: glibc gives each module loaded at process start
/// (preloaded, or a dependency of the program) a fixed place in *static* TLS, decided
/// once before `main` (`_dl_determine_tlsoffset`) and never changed: every thread's copy
/// of such a module's TLS block lies at the same offset below its thread pointer (x86_64
/// TLS variant II), in threads that exist now and in threads created later, which get
/// their static TLS laid out from the same offsets at creation. So the offset measured
/// here, on this thread, is the offset of every thread's `WORDS`. Modules loaded later
/// with `dlopen` get dynamic TLS (a block malloc'ed per thread, at no fixed offset): for
/// them this must not be called, and `thread_local!`'s general access stays in use.
///
/// What the fast path then does per call: one load of the offset, one load at
/// `%fs:offset`. A thread whose slot is `UNINIT` (fresh thread: static TLS is
/// initialised from the module's zero image) still reads `UNINIT` there and takes the
/// slow path, where `verify_static_tls` checks its own offset. `fork` keeps the layout
/// and the calling thread's thread pointer, so the child needs nothing. A signal
/// handler runs on the interrupted thread with the same `%fs`, and the read is a single
/// instruction with no state of its own.
///
/// # Safety
/// The caller must have established that the module containing this engine was loaded
/// at process start by glibc's dynamic loader (so its TLS is static), on x86_64.
#[cfg(static_tls)]
pub unsafe fn use_static_tls() {
    use core::sync::atomic::Ordering;
    // Relaxed (both): one-time decision flag; the offset itself is published below and
    // read with Relaxed loads whose justification is in `get`.
    if TP_OFFSET_DECIDED.swap(true, Ordering::Relaxed) {
        return;
    }
    let offset = static_tls::own_offset();
    // Variant II: static TLS blocks lie below the thread pointer. Anything else means
    // the caller's premise is wrong; stay on the general path.
    if offset < 0 {
        TP_OFFSET.store(offset, Ordering::Relaxed);
    }
}

/// The per-thread check, on each thread's first slow path (before it has a heap, so
/// before its fast path can succeed): this thread's own `WORDS` must lie at the recorded
/// offset. A mismatch means the static-TLS premise failed; the process then uses the
/// general access for good. (It is a tripwire, not the proof: a thread whose offset
/// differed would have read a foreign word before getting here; the proof is
/// `use_static_tls`'s precondition.)
#[cfg(static_tls)]
#[cold]
pub fn verify_static_tls() {
    use core::sync::atomic::Ordering;
    // An engine linked into the main program (a Rust program built in one cargo run
    // with the C library, which unifies this feature into its build) has its TLS in the
    // program's own block, static by construction: decided here, on the first heap,
    // since no constructor of the C library runs there. Relaxed: a hint; the decision
    // itself is made once in `use_static_tls`.
    if !TP_OFFSET_DECIDED.load(Ordering::Relaxed) && static_tls::engine_in_main_program() {
        // SAFETY: the main program's TLS is static (module 1, at a fixed offset).
        unsafe { use_static_tls() };
    }
    // Relaxed: see `get`.
    let recorded = TP_OFFSET.load(Ordering::Relaxed);
    if recorded != 0 && static_tls::own_offset() != recorded {
        TP_OFFSET.store(0, Ordering::Relaxed);
    }
}

/// Without the `static-tls` feature there is nothing to verify.
#[cfg(not(static_tls))]
#[inline(always)]
pub fn verify_static_tls() {}

/// The `%fs`-relative access to `WORDS` (x86_64 Linux with glibc).
#[cfg(static_tls)]
mod static_tls {
    use super::WORDS;

    /// The thread pointer: on x86_64 the word at `%fs:0` holds its own address (the
    /// TCB's self pointer, required by the ELF TLS ABI).
    #[inline(always)]
    fn thread_pointer() -> isize {
        let tp: isize;
        // SAFETY: reading `%fs:0` is valid in every thread of a glibc process.
        unsafe {
            core::arch::asm!(
                "mov {tp}, qword ptr fs:[0]",
                tp = out(reg) tp,
                options(nostack, readonly, preserves_flags, pure)
            )
        };
        tp
    }

    /// True when this code lies in the main program's loaded segments (from the
    /// auxiliary vector's program headers: no loader call, no lock, no allocation, so
    /// it is safe on the first allocation of the process).
    pub fn engine_in_main_program() -> bool {
        let here = engine_in_main_program as *const () as usize;
        // SAFETY: `getauxval` has no preconditions; the kernel's AT_PHDR/AT_PHNUM
        // describe the main program's program headers, mapped for the process's life.
        unsafe {
            let phdr = libc::getauxval(libc::AT_PHDR) as *const libc::Elf64_Phdr;
            let count = libc::getauxval(libc::AT_PHNUM) as usize;
            if phdr.is_null() {
                return false;
            }
            let headers = core::slice::from_raw_parts(phdr, count);
            // The load bias: where PT_PHDR says the headers are, against where they are.
            let Some(bias) = headers
                .iter()
                .find(|h| h.p_type == libc::PT_PHDR)
                .map(|h| (phdr as usize).wrapping_sub(h.p_vaddr as usize))
            else {
                return false;
            };
            headers.iter().any(|h| {
                let start = bias.wrapping_add(h.p_vaddr as usize);
                h.p_type == libc::PT_LOAD && here.wrapping_sub(start) < h.p_memsz as usize
            })
        }
    }

    /// This thread's `WORDS` address minus its thread pointer, through the general
    /// (always correct) access.
    pub fn own_offset() -> isize {
        let words = WORDS.with(|w| w as *const _ as isize);
        words.wrapping_sub(thread_pointer())
    }

    /// The general access (a `__tls_get_addr` call in a shared object), kept out of
    /// line so that the callers' fast paths need no call and no saved registers.
    #[cold]
    #[inline(never)]
    pub fn get_general() -> usize {
        WORDS.with(|w| w.slot.get())
    }

    /// The word at `offset` from the thread pointer.
    ///
    /// # Safety
    /// `offset` must be the offset from the thread pointer of one of the calling
    /// thread's `WORDS` (or 0: the TCB's self pointer).
    #[inline(always)]
    pub unsafe fn read(offset: isize) -> usize {
        let value: usize;
        // SAFETY: caller contract: `%fs:offset` is one of this thread's `WORDS`, a
        // live, aligned word for the thread's life. Not `pure`: the words change between
        // calls (`set`), so two reads may not be merged across calls that write it;
        // `readonly` lets the compiler know no memory is written.
        unsafe {
            core::arch::asm!(
                "mov {value}, qword ptr fs:[{offset}]",
                offset = in(reg) offset,
                value = out(reg) value,
                options(nostack, readonly, preserves_flags)
            )
        };
        value
    }
}

/// Marks this thread as inside the allocator until dropped.
pub struct Reentrancy {
    saved: usize,
}

impl Reentrancy {
    #[inline]
    pub fn enter() -> Self {
        let saved = WORDS.with(|w| {
            w.fast.set(NO_HEAP);
            w.slot.replace(BUSY)
        });
        Reentrancy { saved }
    }
}

impl Drop for Reentrancy {
    #[inline]
    fn drop(&mut self) {
        set(self.saved);
    }
}

#[inline]
pub fn inside_allocator() -> bool {
    get() == BUSY
}

/// A `pthread` key whose destructor runs at thread exit, created once on first use.
/// `pthread_key_create` does not allocate, so this is safe on the allocation path.
pub struct ExitKey {
    /// 0 = not created, 1 = being created, `usize::MAX` = failed, else key + 2.
    state: core::sync::atomic::AtomicUsize,
    destructor: unsafe extern "C" fn(*mut libc::c_void),
}

impl ExitKey {
    pub const fn new(destructor: unsafe extern "C" fn(*mut libc::c_void)) -> Self {
        ExitKey {
            state: core::sync::atomic::AtomicUsize::new(0),
            destructor,
        }
    }

    /// The key, creating it on the first call, which also runs `on_create` once.
    pub fn get(&self, on_create: impl FnOnce()) -> Option<libc::pthread_key_t> {
        use core::sync::atomic::Ordering;
        loop {
            match self.state.load(Ordering::Acquire) {
                0 => {
                    if self
                        .state
                        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                    {
                        continue;
                    }
                    let mut key: libc::pthread_key_t = 0;
                    // SAFETY: valid out-pointer and a destructor with the C signature.
                    let ok = unsafe { libc::pthread_key_create(&mut key, Some(self.destructor)) };
                    let value = if ok == 0 {
                        key as usize + 2
                    } else {
                        usize::MAX
                    };
                    on_create();
                    // Release pairs with the Acquire loads of other threads.
                    self.state.store(value, Ordering::Release);
                    return (ok == 0).then_some(key);
                }
                1 => core::hint::spin_loop(),
                usize::MAX => return None,
                value => return Some((value - 2) as libc::pthread_key_t),
            }
        }
    }

    /// In a fork child: a creation that a vanished parent thread had begun will never
    /// finish, and `get` would spin on it forever; start over (the key it may have made
    /// leaks, one per such fork).
    ///
    /// # Safety
    /// Only in a fork child while it is single-threaded.
    pub unsafe fn after_fork_in_child(&self) {
        use core::sync::atomic::Ordering;
        // Relaxed: one thread; threads started later see it through `pthread_create`.
        let _ = self
            .state
            .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// `ProcessOnce` states besides "running": the pid of the process whose thread runs
/// the set-up (pids are positive and below 2^22 on Linux, so neither value is a pid).
const ONCE_NOT_STARTED: u64 = 0;
const ONCE_DONE: u64 = u64::MAX;

/// Set-up that runs once per process, with two guarantees `std::sync::Once` lacks:
/// - callers that arrive while another thread runs it wait, and then see everything it
///   did (the finishing Release store pairs with their Acquire load): nobody goes on
///   with half-done set-up (options read as defaults, say);
/// - a `fork` child whose parent had a thread inside it does not wait forever for a
///   thread it does not have: the running state records the pid of the process it runs
///   in, and a caller in another process takes the set-up over and runs it again.
///
/// It never allocates. The set-up must not call `begin` of the same cell on the same
/// thread (that thread would wait for itself); the engine's callers run under the
/// re-entrancy guard, whose nested requests never reach set-up.
pub struct ProcessOnce {
    /// `ONCE_NOT_STARTED`, `ONCE_DONE`, or the pid of the process where it runs.
    state: core::sync::atomic::AtomicU64,
}

impl Default for ProcessOnce {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessOnce {
    pub const fn new() -> Self {
        ProcessOnce {
            state: core::sync::atomic::AtomicU64::new(ONCE_NOT_STARTED),
        }
    }

    /// True once the set-up has finished (in this process or before its `fork`).
    #[inline(always)]
    pub fn is_done(&self) -> bool {
        use core::sync::atomic::Ordering;
        // Acquire pairs with the Release in `finish`: the set-up's writes are visible.
        self.state.load(Ordering::Acquire) == ONCE_DONE
    }

    /// True if the caller must run the set-up now (and then call `finish`); false once
    /// it is done. Waits while another thread of this process runs it.
    #[cold]
    pub fn begin(&self) -> bool {
        use core::sync::atomic::Ordering;
        // SAFETY: getpid has no preconditions (and never fails).
        let me = unsafe { libc::getpid() } as u64;
        let mut round = 0;
        loop {
            // Acquire: as in `is_done`.
            match self.state.load(Ordering::Acquire) {
                ONCE_DONE => return false,
                running if running == me => {
                    #[cfg(test)]
                    tests::WAITS.fetch_add(1, Ordering::Relaxed);
                    crate::sync::backoff(&mut round);
                }
                // Not started, or started by a thread of the process we were forked
                // from, which does not exist here and will never finish it.
                seen => {
                    // Acquire: whatever the vanished runner wrote before the fork is
                    // ours to redo; Relaxed on failure, the loop reloads.
                    if self
                        .state
                        .compare_exchange(seen, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return true;
                    }
                }
            }
        }
    }

    /// As a fork child finds a set-up its parent's thread had begun.
    #[cfg(test)]
    pub(crate) fn begun_by_another_process(&self) {
        use core::sync::atomic::Ordering;
        // SAFETY: getpid has no preconditions.
        let other = unsafe { libc::getpid() } as u64 + 1;
        self.state.store(other, Ordering::Relaxed);
    }

    /// Marks the set-up done; only by the caller `begin` answered true.
    pub fn finish(&self) {
        use core::sync::atomic::Ordering;
        // Release publishes the set-up to every Acquire load of `ONCE_DONE`.
        self.state.store(ONCE_DONE, Ordering::Release);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{ExitKey, ProcessOnce};
    use std::sync::atomic::AtomicUsize;

    /// Times a `ProcessOnce::begin` caller found the set-up running and waited.
    pub(crate) static WAITS: AtomicUsize = AtomicUsize::new(0);

    /// A set-up begun by a thread of another process (a fork parent's) is taken over;
    /// one that finished is not run again.
    #[test]
    fn a_set_up_cut_off_by_fork_is_taken_over() {
        let once = ProcessOnce::new();
        once.begun_by_another_process();
        assert!(!once.is_done());
        assert!(once.begin(), "the vanished runner's set-up is ours to run");
        once.finish();
        assert!(once.is_done());
        assert!(!once.begin());
    }
    use core::sync::atomic::Ordering;

    unsafe extern "C" fn nothing(_: *mut libc::c_void) {}

    /// A fork child inherits a key "being created" by a thread it does not have; after
    /// the fork repair, `get` creates one instead of spinning forever.
    #[test]
    fn a_creation_cut_off_by_fork_starts_over() {
        let key = ExitKey::new(nothing);
        key.state.store(1, Ordering::Relaxed); // as the vanished creator left it
                                               // SAFETY: this test is the only user of `key`.
        unsafe { key.after_fork_in_child() };
        let mut created = false;
        assert!(key.get(|| created = true).is_some());
        assert!(created);
        // A finished key is left alone.
        let before = key.state.load(Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { key.after_fork_in_child() };
        assert_eq!(key.state.load(Ordering::Relaxed), before);
    }
}

/// The `%fs`-relative access in a test binary (the engine is in the main program): the
/// decision is made on a thread's first heap, and every thread then reads its own slot
/// through the recorded offset. Run with `--features static-tls`.
#[cfg(all(test, static_tls))]
mod static_tls_tests {
    use super::*;
    use core::sync::atomic::Ordering;

    #[test]
    fn every_thread_reads_its_own_slot_at_the_recorded_offset() {
        assert!(static_tls::engine_in_main_program());
        verify_static_tls();
        let offset = TP_OFFSET.load(Ordering::Relaxed);
        assert!(
            offset < 0,
            "static TLS lies below the thread pointer: {offset}"
        );
        let threads: Vec<_> = (1..=4usize)
            .map(|i| {
                std::thread::spawn(move || {
                    verify_static_tls();
                    let saved = get();
                    let value = SENTINEL_LIMIT * (i + 1);
                    set(value);
                    let seen = (get(), get_fast() as usize, WORDS.with(|w| w.slot.get()));
                    set(saved);
                    seen == (value, value, value)
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(
            TP_OFFSET.load(Ordering::Relaxed),
            offset,
            "no thread disproved it"
        );
    }
}
