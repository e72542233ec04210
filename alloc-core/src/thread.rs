//! The calling thread's allocator slot: one `const` thread-local word holding this
//! thread's heap, or a sentinel. It owns that word and calls nothing.
//!
//! The sentinels double as the re-entrancy guard of DESIGN.md §5: while a thread runs
//! allocator code that may allocate through a dependency, its slot reads `BUSY`, so a
//! nested `alloc` fails the fast path's single check and goes to the metadata arena,
//! and a nested `free` of one of its own blocks sees a foreign owner and takes the
//! atomic (remote) path instead of touching the heap mid-update. One thread-local load
//! serves both the fast path and the guard.
//!
//! It also holds the two once-per-process primitives the engine's set-up needs, both
//! safe across `fork` (`ExitKey`, `ProcessOnce`); they call only `libc`.

use core::cell::Cell;

/// No heap yet (first allocation of the thread).
pub const UNINIT: usize = 0;
/// Inside the allocator: nested requests bypass the heap and the table.
pub const BUSY: usize = 1;
/// The thread is exiting and gave its heap up.
pub const DEAD: usize = 2;
/// Slot values below this are sentinels, not heap pointers.
pub const SENTINEL_LIMIT: usize = 4096;

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(UNINIT) };
}

#[inline(always)]
pub fn get() -> usize {
    SLOT.with(|s| s.get())
}

#[inline(always)]
pub fn set(value: usize) {
    SLOT.with(|s| s.set(value))
}

/// Marks this thread as inside the allocator until dropped.
pub struct Reentrancy {
    saved: usize,
}

impl Reentrancy {
    #[inline]
    pub fn enter() -> Self {
        Reentrancy {
            saved: SLOT.with(|s| s.replace(BUSY)),
        }
    }
}

impl Drop for Reentrancy {
    #[inline]
    fn drop(&mut self) {
        let saved = self.saved;
        SLOT.with(|s| s.set(saved));
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
