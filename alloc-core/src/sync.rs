//! Synchronisation primitives shared by the engine: the atomics (swapped for `loom`'s
//! under `cfg(loom)` so the region protocol can be model-checked) and a spin lock for
//! the few short, allocation-free critical sections where parking would allocate.
//! It calls nothing but `core`/`std` (and `loom` in model builds).

#[cfg(not(loom))]
pub use core::sync::atomic;
#[cfg(loom)]
pub use loom::sync::atomic;

use atomic::{AtomicBool, Ordering};
use core::cell::UnsafeCell;

/// Declares a `const fn` that model builds (`cfg(loom)`, whose atomics have no `const`
/// constructors) get as a plain `fn`: one body for both, so a constructor of a static
/// (`RegionTable::new`) and the one the loom models call cannot drift apart.
macro_rules! const_fn_unless_loom {
    ($(#[$attr:meta])* $vis:vis fn $name:ident() -> $ret:ty $body:block) => {
        #[cfg(not(loom))]
        $(#[$attr])*
        $vis const fn $name() -> $ret $body

        #[cfg(loom)]
        $(#[$attr])*
        $vis fn $name() -> $ret $body
    };
}
pub(crate) use const_fn_unless_loom;

/// Spins this many times before yielding the CPU: a short section on another core ends
/// within that, while on an oversubscribed machine yielding lets the holder run.
pub const SPINS_BEFORE_YIELD: u32 = 64;

pub fn backoff(round: &mut u32) {
    if *round < SPINS_BEFORE_YIELD {
        *round += 1;
        #[cfg(not(loom))]
        core::hint::spin_loop();
        #[cfg(loom)]
        loom::thread::yield_now();
    } else {
        #[cfg(not(loom))]
        std::thread::yield_now();
        #[cfg(loom)]
        loom::thread::yield_now();
    }
}

/// A test-and-test-and-set lock that never allocates (unlike a parking lock's first
/// park). Used for the metadata arena and the global heap lists: sections of a few
/// dozen instructions. `repr(C)`: the lock word before the value, so that a big value's
/// first fields share its line and page (`RegionTable`'s layout counts on it).
#[repr(C)]
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock gives exclusive access to `value`, so sharing the lock across threads
// is sound whenever moving a `T` between threads is.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        let mut round = 0;
        // Acquire on success pairs with the Release in `SpinGuard::drop`.
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                backoff(&mut round);
            }
        }
        SpinGuard { lock: self }
    }

    /// Takes the lock if it is free now; never waits.
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // Acquire on success pairs with the Release in `SpinGuard::drop`. The plain load
        // first keeps a busy lock's cache line shared (no write on a failed attempt).
        if self.locked.load(Ordering::Relaxed) {
            return None;
        }
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard { lock: self })
    }

    /// Takes the lock without a guard (for `fork` handlers, which lock in one call and
    /// unlock in another).
    pub fn raw_lock(&self) {
        core::mem::forget(self.lock());
    }

    /// The value, for the holder of a `raw_lock`.
    ///
    /// # Safety
    /// The caller took the lock with `raw_lock` and has not released it, and makes no
    /// other reference to the value meanwhile.
    #[allow(clippy::mut_from_ref)] // the lock, held by the caller, makes it exclusive
    pub unsafe fn held(&self) -> &mut T {
        // SAFETY: caller contract.
        unsafe { &mut *self.value.get() }
    }

    /// # Safety
    /// The caller took the lock with `raw_lock` (or is the only thread left after fork).
    pub unsafe fn raw_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> core::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves we hold the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves we hold the lock exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // Release publishes the section's writes to the next Acquire in `lock`.
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn spin_lock_excludes() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 40_000);
    }
}
