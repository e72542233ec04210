//! The profiler's tables: one entry per distinct sampled call stack (with its estimated
//! allocated and in-use objects and bytes) and one per live sampled object (its stack
//! and weight, so its free can be subtracted). Both are open-addressed and mapped once
//! from the OS, so recording a sample never allocates; the live table uses a prefix of
//! its mapping that doubles as live samples accumulate, so the pages it touches (and
//! the faults taken under the lock) follow the live samples. Owns the tables, their spin
//! lock and the side marks that let `free` skip unsampled objects; calls `os`.
//!
//! The lock's word names its holder (its `pthread_self`), so a signal handler that
//! interrupts the holder and reaches the tables (a free of a sampled object while the
//! program was dumping or resetting the profile) sees that the lock is its own thread's
//! and is refused (`Held::ByThisThread`) instead of waiting for ever for a holder that
//! cannot run until it returns. Each caller says what a refusal means: `record` drops
//! the sample, `forget` leaves the free to the caller (`prof` defers it), the control
//! calls do nothing.
//!
//! A sampled object is a large one (its own page-aligned region) or a small block on its
//! page (see `prof`); either way its address identifies one live object exactly, and the
//! side marks (a counter per hashed address) answer "may this object be sampled?" with
//! one load.

use super::stack::MAX_FRAMES;
use crate::os::{self, PAGE_SIZE};
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use core::cell::UnsafeCell;

/// Distinct stacks kept: 16K. Real services show a few thousand distinct allocation
/// stacks (jemalloc's profiles of large C++ servers); an entry is ~550 bytes, so the
/// table reserves 9 MiB of address space, touched only as stacks appear.
const STACK_CAPACITY: usize = 1 << 14;
/// Live sampled objects kept: 128K, i.e. 64 GiB of live heap at the default 512 KiB
/// mean (more at a coarser rate); 32 bytes each, 4 MiB reserved. Only a prefix of it is
/// the table (`Tables::live_active`), one page at first, doubled when half full, so the
/// pages touched follow the live samples, not the addresses they had.
const LIVE_CAPACITY: usize = 1 << 17;
/// The live table's first size: one page of slots.
const LIVE_START: usize = PAGE_SIZE / core::mem::size_of::<LiveEntry>();
/// Tables are kept below 7/8 full so linear probes stay short.
const FILL_LIMIT_NUM: usize = 7;
const FILL_LIMIT_DEN: usize = 8;
/// Side marks: one counter per hashed address. 4096 counters (16 KiB) keep a false
/// positive (a wasted locked lookup on free) rare while thousands of samples are live.
const MARKS: usize = 1 << 12;

/// Estimated totals of one stack.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct Counts {
    /// Objects allocated at the stack since the last reset (estimated from the samples).
    pub alloc_objects: f64,
    /// Their bytes.
    pub alloc_bytes: f64,
    /// Objects from the stack still live.
    pub inuse_objects: f64,
    /// Their bytes.
    pub inuse_bytes: f64,
}

/// One stack as a dump sees it.
#[derive(Clone, Copy)]
pub struct StackSample {
    pub frames: [usize; MAX_FRAMES],
    pub depth: usize,
    pub counts: Counts,
}

#[derive(Clone, Copy)]
struct StackEntry {
    /// 0 = empty slot (a real hash of 0 is stored as 1).
    hash: u64,
    sample: StackSample,
}

#[derive(Clone, Copy)]
struct LiveEntry {
    /// 0 = empty slot.
    addr: usize,
    stack: u32,
    objects: f64,
    bytes: f64,
}

struct Tables {
    stacks: *mut StackEntry,
    /// Slots in `stacks` and `live` (powers of two): `STACK_CAPACITY` and
    /// `LIVE_CAPACITY`, or tiny ones in tests of what happens when they fill up.
    stack_capacity: usize,
    stacks_used: usize,
    live: *mut LiveEntry,
    live_capacity: usize,
    /// Slots of `live` in use as the table (a power of two, at most `live_capacity`):
    /// homes are taken modulo this, and the slots past it are empty and untouched.
    live_active: usize,
    live_used: usize,
}

/// The tables behind their lock: a spin lock whose word is 0 when free and the
/// holder's thread id (`pthread_self`) when held.
struct Locked {
    holder: AtomicUsize,
    tables: UnsafeCell<Option<Tables>>,
}

// SAFETY: `tables` is reached only through a `Guard`, which proves the lock is held
// (exclusive access); its raw pointers name process-wide mappings.
unsafe impl Sync for Locked {}

static TABLES: Locked = Locked {
    holder: AtomicUsize::new(0),
    tables: UnsafeCell::new(None),
};

/// Why `lock` gave no guard.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// The calling thread holds the lock already: this call runs in a signal handler
    /// that interrupted the holder (the only way one thread reaches the tables twice),
    /// which cannot go on until the handler returns.
    ByThisThread,
}

/// The calling thread's id as the lock records it: never 0, distinct among live
/// threads, and the same in a signal handler as in the code it interrupted (glibc's
/// `pthread_self` reads the thread pointer: no lock, no allocation).
fn this_thread() -> usize {
    // SAFETY: no preconditions.
    (unsafe { libc::pthread_self() }) as usize
}

/// Holds the tables' lock; releases it when dropped.
struct Guard {
    _private: (),
}

impl core::ops::Deref for Guard {
    type Target = Option<Tables>;
    fn deref(&self) -> &Option<Tables> {
        // SAFETY: the guard proves the lock is held by this thread.
        unsafe { &*TABLES.tables.get() }
    }
}

impl core::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Option<Tables> {
        // SAFETY: as above, exclusively.
        unsafe { &mut *TABLES.tables.get() }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Release publishes the section's writes to the next Acquire in `lock`.
        TABLES.holder.store(0, Ordering::Release);
    }
}

/// Takes the tables' lock, waiting for another holder; refused when this thread holds
/// it (see `Held`). A handler that interrupts this thread between the exchange and the
/// return sees its id in the word and is refused too, so there is no window.
fn lock() -> Result<Guard, Held> {
    let me = this_thread();
    let mut round = 0;
    loop {
        // Acquire on success pairs with the Release in `Guard::drop`.
        match TABLES
            .holder
            .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => return Ok(Guard { _private: () }),
            Err(holder) if holder == me => return Err(Held::ByThisThread),
            Err(_) => crate::sync::backoff(&mut round),
        }
    }
}

/// Set once the tables are mapped (they are never unmapped): `initialised` without the
/// lock.
static MAPPED: AtomicBool = AtomicBool::new(false);

/// Live sampled objects, read without the lock by `free` to skip the profiler entirely
/// when none are live.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Samples not recorded because a table was full, read without the lock by the
/// statistics.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static MARK: [AtomicU32; MARKS] = [const { AtomicU32::new(0) }; MARKS];

/// Fibonacci hashing of an object's address in 16-byte units (`MALLOC_ALIGN`: sampled
/// small blocks are that far apart at least, and sampled large objects are page-aligned).
/// The top bits are the well-mixed ones: the marks take theirs from there. (Hashed by
/// page number, as they once were, the small blocks of one page shared one mark.)
fn address_hash(addr: usize) -> u64 {
    ((addr / crate::MALLOC_ALIGN) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn mark_of(addr: usize) -> &'static AtomicU32 {
    &MARK[(address_hash(addr) >> (64 - MARKS.trailing_zeros())) as usize]
}

/// True if some sampled object is live.
#[inline]
pub fn any_live() -> bool {
    // Relaxed: a free only ever looks up its own object, whose record was made by the
    // thread that allocated it and published to the freeing thread with the pointer.
    LIVE.load(Ordering::Relaxed) != 0
}

/// True if the object at `addr` may be sampled (no false negatives).
#[inline]
pub fn maybe_sampled(addr: usize) -> bool {
    // Relaxed: as in `any_live`.
    any_live() && mark_of(addr).load(Ordering::Relaxed) != 0
}

fn reserve_array<T>(count: usize) -> Option<*mut T> {
    let len = (count * core::mem::size_of::<T>()).next_multiple_of(PAGE_SIZE);
    // Fresh anonymous memory is zero: every slot starts empty.
    os::reserve(len, PAGE_SIZE).ok().map(|a| a as *mut T)
}

impl Tables {
    /// Maps empty tables of the given sizes (powers of two); `None` if the OS refused.
    fn map(stack_capacity: usize, live_capacity: usize) -> Option<Tables> {
        debug_assert!(stack_capacity.is_power_of_two() && live_capacity.is_power_of_two());
        Some(Tables {
            stacks: reserve_array::<StackEntry>(stack_capacity)?,
            stack_capacity,
            stacks_used: 0,
            live: reserve_array::<LiveEntry>(live_capacity)?,
            live_capacity,
            live_active: live_capacity.min(LIVE_START),
            live_used: 0,
        })
    }
}

/// Maps the tables if they are not yet; false if the OS refused (or this is a signal
/// handler of the lock's holder, with the tables not yet mapped).
pub fn init() -> bool {
    let Ok(mut tables) = lock() else {
        return initialised();
    };
    if tables.is_none() {
        *tables = Tables::map(STACK_CAPACITY, LIVE_CAPACITY);
        // Release: pairs with `initialised`'s Acquire (the mapping exists).
        MAPPED.store(tables.is_some(), Ordering::Release);
    }
    tables.is_some()
}

/// True once the tables are mapped. Takes no lock.
pub fn initialised() -> bool {
    MAPPED.load(Ordering::Acquire)
}

fn hash_frames(frames: &[usize]) -> u64 {
    // FNV-1a over the words, then forced non-zero.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &f in frames {
        h ^= f as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h.max(1)
}

fn under_fill_limit(used: usize, capacity: usize) -> bool {
    (used + 1) * FILL_LIMIT_DEN <= capacity * FILL_LIMIT_NUM
}

/// What happens when a table is full: the sample is dropped whole. Its object stays an
/// ordinary large object, absent from both tables, so its `free` finds no record and
/// changes nothing (no phantom in-use entry, nothing subtracted that was never added);
/// the drop is counted (`dropped`: the statistics, the leak report and a comment in
/// every dump say how many). The live table makes room again as sampled objects are
/// freed; the stack table keeps every stack it has (their totals are the profile), so
/// once it is full only samples from stacks already in it are recorded.
impl Tables {
    /// See `record`; false when a table is full.
    fn insert(
        &mut self,
        addr: usize,
        hash: u64,
        frames: &[usize],
        objects: f64,
        bytes: f64,
    ) -> bool {
        debug_assert!(
            addr != 0 && addr & MOVED == 0,
            "addresses are 16-byte aligned"
        );
        if !under_fill_limit(self.live_used, self.live_capacity) {
            return false;
        }
        let stack_mask = self.stack_capacity - 1;
        // SAFETY: `stacks` has `stack_capacity` entries; the caller holds the lock.
        let stack = unsafe {
            let mut i = hash as usize & stack_mask;
            loop {
                let e = &mut *self.stacks.add(i);
                if e.hash == hash
                    && e.sample.depth == frames.len()
                    && e.sample.frames[..frames.len()] == *frames
                {
                    break i;
                }
                if e.hash == 0 {
                    if !under_fill_limit(self.stacks_used, self.stack_capacity) {
                        return false;
                    }
                    e.hash = hash;
                    e.sample.depth = frames.len();
                    e.sample.frames[..frames.len()].copy_from_slice(frames);
                    self.stacks_used += 1;
                    break i;
                }
                i = (i + 1) & stack_mask;
            }
        };
        if (self.live_used + 1) * 2 > self.live_active && self.live_active < self.live_capacity {
            self.grow_live();
        }
        let live_mask = self.live_active - 1;
        // SAFETY: as above; `stack` is an occupied slot, `live` has `live_active`
        // entries and a free one (half full at most, or below the fill limit once the
        // table is whole).
        unsafe {
            let c = &mut (*self.stacks.add(stack)).sample.counts;
            c.alloc_objects += objects;
            c.alloc_bytes += bytes;
            c.inuse_objects += objects;
            c.inuse_bytes += bytes;
            let mut i = live_home(addr, live_mask);
            while (*self.live.add(i)).addr != 0 {
                i = (i + 1) & live_mask;
            }
            *self.live.add(i) = LiveEntry {
                addr,
                stack: stack as u32,
                objects,
                bytes,
            };
        }
        self.live_used += 1;
        true
    }

    /// Doubles the live table, rehashing it in place. Under the lock, as every change of
    /// the table: at most 10 times in a process (`LIVE_START` to `LIVE_CAPACITY`), each
    /// touching the new half's pages (half the table's) and moving every entry once.
    ///
    /// The new half is empty. Every entry is taken out and put back at its new home's
    /// probe run, marked `MOVED` (an address bit that is otherwise 0); the probe skips
    /// moved entries only, and an entry not yet moved that sits where a moved one goes
    /// is taken out in its turn. Moved entries are never moved again, so when every
    /// entry is moved, each one's probe run from its home holds moved entries alone: a
    /// valid table. The marks are then cleared.
    #[cold]
    fn grow_live(&mut self) {
        let old = self.live_active;
        let size = old * 2;
        debug_assert!(size <= self.live_capacity);
        let mask = size - 1;
        // SAFETY: `live` has `live_capacity >= size` entries; the caller holds the lock.
        unsafe {
            for j in 0..old {
                let mut carry = *self.live.add(j);
                if carry.addr == 0 || carry.addr & MOVED != 0 {
                    continue;
                }
                (*self.live.add(j)).addr = 0;
                loop {
                    let mut i = live_home(carry.addr, mask);
                    while (*self.live.add(i)).addr & MOVED != 0 {
                        i = (i + 1) & mask;
                    }
                    let displaced = *self.live.add(i);
                    carry.addr |= MOVED;
                    *self.live.add(i) = carry;
                    if displaced.addr == 0 {
                        break;
                    }
                    carry = displaced;
                }
            }
            for j in 0..size {
                (*self.live.add(j)).addr &= !MOVED;
            }
        }
        self.live_active = size;
    }

    /// See `forget`.
    fn remove(&mut self, addr: usize) -> bool {
        let mask = self.live_active - 1;
        // SAFETY: `live` has `live_active` entries in use, `stacks` `stack_capacity`;
        // the caller holds the lock. Deletion shifts later entries of the probe run back
        // (no tombstones). The live table is never full (at most half full while it can
        // grow, below the fill limit once whole), so a probe ends.
        unsafe {
            let mut i = live_home(addr, mask);
            loop {
                let e = *self.live.add(i);
                if e.addr == 0 {
                    return false;
                }
                if e.addr == addr {
                    break;
                }
                i = (i + 1) & mask;
            }
            let e = *self.live.add(i);
            let c = &mut (*self.stacks.add(e.stack as usize)).sample.counts;
            c.inuse_objects -= e.objects;
            c.inuse_bytes -= e.bytes;
            let mut hole = i;
            let mut j = i;
            loop {
                j = (j + 1) & mask;
                let next = *self.live.add(j);
                if next.addr == 0 {
                    break;
                }
                let home = live_home(next.addr, mask);
                // `next` may fill the hole if its home is not cyclically in (hole, j].
                let home_after_hole = (home.wrapping_sub(hole) & mask)
                    <= (j.wrapping_sub(hole) & mask)
                    && home != hole;
                if !home_after_hole {
                    *self.live.add(hole) = next;
                    hole = j;
                }
            }
            (*self.live.add(hole)).addr = 0;
        }
        self.live_used -= 1;
        true
    }

    /// The occupied stack slots.
    fn stacks(&self) -> impl Iterator<Item = *mut StackSample> + '_ {
        (0..self.stack_capacity)
            // SAFETY: in bounds of the mapping.
            .map(|i| unsafe { self.stacks.add(i) })
            // SAFETY: the caller holds the lock, so no slot changes meanwhile.
            .filter(|&e| unsafe { (*e).hash } != 0)
            // SAFETY: as above; a field of a live slot.
            .map(|e| unsafe { core::ptr::addr_of_mut!((*e).sample) })
    }
}

/// Records a sampled object at `addr` allocated from `frames`, standing for `objects`
/// objects and `bytes` bytes. False (and counted as dropped) when a table is full or
/// this is a signal handler of the lock's holder.
pub fn record(addr: usize, frames: &[usize], objects: f64, bytes: f64) -> bool {
    let hash = hash_frames(frames);
    let Ok(mut guard) = lock() else {
        // Relaxed: a lone counter.
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    let Some(t) = guard.as_mut() else {
        return false;
    };
    if !t.insert(addr, hash, frames, objects, bytes) {
        // Relaxed: a lone counter; the lock orders it among recorders.
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    // Relaxed: see `any_live`; the lock orders these among recorders.
    mark_of(addr).fetch_add(1, Ordering::Relaxed);
    LIVE.fetch_add(1, Ordering::Relaxed);
    true
}

/// The bit of a live entry's address that marks it moved during `grow_live` (addresses
/// of sampled objects are 16-byte aligned).
const MOVED: usize = 1;

/// The home slot of `addr` in a live table of `mask + 1` slots: the top bits of its
/// address hash. The table is compact (`Tables::live_active`), so homes need no
/// locality: every page of it is in use. (Homes once took a page of the whole 4 MiB
/// table by the 64 KiB span of heap an object lay in, which kept larson's samples in
/// few pages but gave each sampled large object, in its own span, a page of its own:
/// `medium` with `prof=1` touched the whole table, 1,300 more minor faults, each taken
/// under the table lock.) Blocks 16 bytes apart get different homes.
fn live_home(addr: usize, mask: usize) -> usize {
    let bits = (mask + 1).trailing_zeros();
    address_hash(addr).checked_shr(64 - bits).unwrap_or(0) as usize
}

/// Forgets the sampled object at `addr` (it is being freed), subtracting it from its
/// stack's in-use totals: `Ok(false)` if `addr` was not recorded, `Err` (nothing
/// looked at) in a signal handler of the lock's holder.
pub fn forget(addr: usize) -> Result<bool, Held> {
    let mut guard = lock()?;
    let Some(t) = guard.as_mut() else {
        return Ok(false);
    };
    if !t.remove(addr) {
        return Ok(false);
    }
    // Relaxed: see `any_live`.
    mark_of(addr).fetch_sub(1, Ordering::Relaxed);
    LIVE.fetch_sub(1, Ordering::Relaxed);
    Ok(true)
}

/// How many stacks a snapshot would copy now (0 in a signal handler of the lock's
/// holder).
pub fn stack_count() -> usize {
    lock().map_or(0, |t| t.as_ref().map_or(0, |t| t.stacks_used))
}

/// Samples dropped because a table was full, since the process started.
pub fn dropped() -> u64 {
    // Relaxed: a lone counter.
    DROPPED.load(Ordering::Relaxed)
}

/// Copies every stack into `out`, up to its spare capacity (it never grows `out`: the
/// caller reserves first, so nothing allocates under the lock). Copies nothing in a
/// signal handler of the lock's holder.
pub fn snapshot(out: &mut Vec<StackSample>) {
    let Ok(guard) = lock() else {
        return;
    };
    let Some(t) = guard.as_ref() else {
        return;
    };
    let room = out.capacity() - out.len();
    // SAFETY: occupied slots, read under the lock.
    out.extend(t.stacks().take(room).map(|s| unsafe { *s }));
}

/// Zeroes every stack's allocation totals (in-use totals follow the live objects and
/// stay). Does nothing in a signal handler of the lock's holder.
pub fn reset() {
    let Ok(mut guard) = lock() else {
        return;
    };
    let Some(t) = guard.as_mut() else {
        return;
    };
    for s in t.stacks() {
        // SAFETY: an occupied slot; we hold the lock.
        unsafe {
            (*s).counts.alloc_objects = 0.0;
            (*s).counts.alloc_bytes = 0.0;
        }
    }
}

/// Set while `fork_prepare` holds the lock for the `fork` in progress.
static HELD_FOR_FORK: AtomicBool = AtomicBool::new(false);

/// `fork` handlers: the child must not inherit the lock mid-update. A `fork` from a
/// signal handler of the lock's holder leaves the lock as it is: its holder, the
/// interrupted code, finishes its update and releases it after the handler, in the
/// parent and in the child alike (the child's thread has the same id).
pub fn fork_prepare() {
    if let Ok(guard) = lock() {
        core::mem::forget(guard);
        // Relaxed: read by this thread only, in `fork_release`.
        HELD_FOR_FORK.store(true, Ordering::Relaxed);
    }
}

/// # Safety
/// After `fork_prepare` on this thread.
pub unsafe fn fork_release() {
    // Relaxed: as above.
    if HELD_FOR_FORK.swap(false, Ordering::Relaxed) {
        drop(Guard { _private: () });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records and forgets many objects whose probe runs collide and wrap, through every
    /// doubling of a 4,096-slot live table (from `LIVE_START`); every lookup still finds
    /// its object after others were deleted, and the in-use totals return to zero. The
    /// addresses (16-byte aligned, in the kernel half) are chosen so that their homes in
    /// the whole table are its last 32 and first 32 slots: in every smaller one they are
    /// its last slot and its first, so the runs wrap at every size.
    #[test]
    fn live_table_survives_colliding_deletes() {
        const CAPACITY: usize = 1 << 12;
        let mut t = Tables::map(16, CAPACITY).expect("map test tables");
        const BASE: usize = 0xffff_8000_0000_0000;
        const WINDOW: usize = 32;
        let frames = [0x1234usize, 0x5678];
        let hash = hash_frames(&frames);
        let n = 2000;
        let mask = CAPACITY - 1;
        let addrs: Vec<usize> = (0..)
            .map(|k| BASE + k * crate::MALLOC_ALIGN)
            .filter(|&a| (live_home(a, mask) + WINDOW) & mask < 2 * WINDOW)
            .take(n)
            .collect();
        let addr = |i: usize| addrs[i];
        let mut sizes = vec![t.live_active];
        for i in 0..n {
            assert!(t.insert(addr(i), hash, &frames, 1.0, 100.0), "insert {i}");
            if sizes.last() != Some(&t.live_active) {
                sizes.push(t.live_active);
                // Every object recorded so far is found where the new size puts it.
                for k in (0..=i).step_by(97) {
                    assert!(t.remove(addr(k)), "{k} lost growing to {}", t.live_active);
                    assert!(t.insert(addr(k), hash, &frames, 0.0, 0.0));
                }
            }
        }
        assert_eq!(sizes, [128, 256, 512, 1024, 2048, 4096]);
        for i in (0..n).step_by(3) {
            assert!(t.remove(addr(i)), "{i} lost");
        }
        for i in (0..n).step_by(3) {
            assert!(!t.remove(addr(i)), "{i} forgotten twice");
        }
        for i in (0..n).filter(|i| i % 3 != 0) {
            assert!(t.remove(addr(i)), "{i} lost");
        }
        assert_eq!(t.live_used, 0);
        // SAFETY: occupied slots of a table only this test uses.
        let c: Vec<Counts> = t.stacks().map(|s| unsafe { (*s).counts }).collect();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].alloc_objects, n as f64);
        assert_eq!((c[0].inuse_objects, c[0].inuse_bytes), (0.0, 0.0));
    }

    /// The process-wide tables: a recorded object may be sampled, is forgotten once, and
    /// leaves its stack's in-use totals at zero.
    #[test]
    fn record_and_forget_on_the_process_tables() {
        assert!(init());
        const BASE: usize = 0xffff_8800_0000_0000;
        let frames = [0x2468usize, 0x1357, 0x9999];
        for i in 0..300 {
            assert!(record(BASE + i * PAGE_SIZE, &frames, 1.0, 4096.0));
        }
        assert!(maybe_sampled(BASE + 7 * PAGE_SIZE));
        for i in 0..300 {
            assert_eq!(forget(BASE + i * PAGE_SIZE), Ok(true), "{i} lost");
            assert_eq!(
                forget(BASE + i * PAGE_SIZE),
                Ok(false),
                "{i} forgotten twice"
            );
        }
        let mut out = Vec::with_capacity(stack_count());
        snapshot(&mut out);
        let mine = out
            .iter()
            .find(|s| s.frames[..s.depth] == frames)
            .expect("the stack is kept");
        assert_eq!(
            (mine.counts.inuse_objects, mine.counts.alloc_objects),
            (0.0, 300.0)
        );
    }

    /// A signal handler of the lock's holder (here: its thread asking again while it
    /// holds the lock, which is what the handler's calls look like) is refused, not made
    /// to wait for itself: a forget looks nothing up, a record is dropped, the control
    /// calls do nothing. Once the lock is released the same calls go through.
    #[test]
    fn the_lock_holders_own_thread_is_refused_not_made_to_wait() {
        assert!(init());
        const ADDR: usize = 0xffff_a000_0000_0000;
        let frames = [0x4321usize];
        let guard = lock().expect("the lock is free");
        assert_eq!(lock().err(), Some(Held::ByThisThread));
        assert_eq!(forget(ADDR), Err(Held::ByThisThread));
        let dropped_before = dropped();
        assert!(!record(ADDR, &frames, 1.0, 16.0));
        assert!(
            dropped() > dropped_before,
            "the refused sample counts as dropped"
        );
        assert_eq!(stack_count(), 0);
        reset();
        let mut out = Vec::with_capacity(4);
        snapshot(&mut out);
        assert!(out.is_empty());
        assert!(initialised());
        drop(guard);
        assert!(record(ADDR, &frames, 1.0, 16.0));
        assert_eq!(forget(ADDR), Ok(true));
    }

    /// The blocks of one 4 KiB page (16 bytes apart, as sampled small blocks may be)
    /// spread over the live table's homes and the marks: hashed by page number, as they
    /// once were, all 256 shared one home and one mark. Page-aligned objects next to each
    /// other get homes of their own too, even in the first, one-page table.
    #[test]
    fn blocks_of_one_page_do_not_share_a_home() {
        let base = 0x7f00_1234_5000usize;
        let blocks = PAGE_SIZE / crate::MALLOC_ALIGN;
        let distinct = |f: &dyn Fn(usize) -> usize, step: usize| {
            let mut seen: Vec<usize> = (0..blocks).map(|i| f(base + i * step)).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len()
        };
        let homes = distinct(&|a| live_home(a, LIVE_CAPACITY - 1), crate::MALLOC_ALIGN);
        let marks = distinct(
            &|a| mark_of(a) as *const AtomicU32 as usize,
            crate::MALLOC_ALIGN,
        );
        // 256 blocks over 2^17 homes and 2^12 marks: at most a few collide.
        assert!(homes >= blocks - 4, "{homes} homes for {blocks} blocks");
        assert!(marks >= blocks - 16, "{marks} marks for {blocks} blocks");
        let first = distinct(&|a| live_home(a, LIVE_START - 1), PAGE_SIZE);
        assert!(
            first >= LIVE_START * 3 / 5,
            "{first} homes of {LIVE_START} for {blocks} pages"
        );
    }

    /// Resident pages of the live table of `t` (`mincore`: fresh anonymous memory is
    /// resident once touched).
    fn live_pages_touched(t: &Tables) -> usize {
        let len = (t.live_capacity * core::mem::size_of::<LiveEntry>()).next_multiple_of(PAGE_SIZE);
        let mut resident = vec![0u8; len / PAGE_SIZE];
        // SAFETY: `live` is a mapping of `len` bytes; `resident` has a byte per page.
        let r = unsafe { libc::mincore(t.live.cast(), len, resident.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        resident.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// The live table's touched pages follow the number of live samples, not the
    /// addresses they had: 4,000 sampled objects 2 MiB apart (as sampled large objects
    /// are, each in its own part of the address space), never more than 64 live at once,
    /// touch at most two pages of a full-size table. (With homes spread over the whole
    /// table by span, they touched all 1,024 of its pages: `medium` with `prof=1` took
    /// 1,300 more minor faults, each under the table lock.)
    #[test]
    fn live_table_pages_follow_live_samples_not_addresses() {
        let mut t = Tables::map(16, LIVE_CAPACITY).expect("map test tables");
        let len = (LIVE_CAPACITY * core::mem::size_of::<LiveEntry>()).next_multiple_of(PAGE_SIZE);
        // SAFETY: advice on a mapping this test owns; huge pages would make one touch
        // resident 512 pages.
        unsafe { libc::madvise(t.live.cast(), len, libc::MADV_NOHUGEPAGE) };
        const BASE: usize = 0x7e00_0000_0000;
        const LIVE: usize = 64;
        let addr = |i: usize| BASE + i * (2 << 20) + (i % 7) * PAGE_SIZE;
        let frames = [0x4321usize, 0x8765];
        let hash = hash_frames(&frames);
        for i in 0..4000 {
            assert!(t.insert(addr(i), hash, &frames, 1.0, 4096.0), "insert {i}");
            if i >= LIVE {
                assert!(t.remove(addr(i - LIVE)), "remove {}", i - LIVE);
            }
        }
        assert_eq!(t.live_used, LIVE);
        let pages = live_pages_touched(&t);
        assert!(
            pages <= 2,
            "{pages} pages of the live table touched for {LIVE} live samples"
        );
        for i in 4000 - LIVE..4000 {
            assert!(t.remove(addr(i)), "remove {i}");
        }
        assert_eq!(t.live_used, 0);
    }

    /// Full tables, at a test size (8 live slots: 7 usable under the fill limit; 4 stack
    /// slots: 3 usable): the samples beyond are refused, their frees find nothing, every
    /// recorded free is found, in-use totals return to exactly zero, and freed slots are
    /// used again. Once the stack table is full, known stacks still record.
    #[test]
    fn full_tables_drop_samples_without_phantoms() {
        let mut t = Tables::map(4, 8).expect("map test tables");
        const BASE: usize = 0xffff_9000_0000_0000;
        let addr = |i: usize| BASE + i * PAGE_SIZE;
        let frames = [0xabcusize, 0xdef];
        let hash = hash_frames(&frames);
        let recorded: Vec<bool> = (0..10)
            .map(|i| t.insert(addr(i), hash, &frames, 1.0, 64.0))
            .collect();
        assert_eq!(recorded.iter().filter(|&&r| r).count(), 7, "{recorded:?}");
        assert!(recorded[..7].iter().all(|&r| r), "the first ones fit");
        let totals = |t: &Tables| -> Vec<Counts> {
            // SAFETY: occupied slots of a table only this test uses.
            t.stacks().map(|s| unsafe { (*s).counts }).collect()
        };
        let c = totals(&t)[0];
        assert_eq!(
            (c.alloc_objects, c.inuse_objects, c.inuse_bytes),
            (7.0, 7.0, 448.0)
        );
        // Every free: the dropped ones find nothing, the recorded ones are found once.
        for (i, &was) in recorded.iter().enumerate() {
            assert_eq!(t.remove(addr(i)), was, "free of object {i}");
            assert!(!t.remove(addr(i)), "object {i} forgotten twice");
        }
        let c = totals(&t)[0];
        assert_eq!(
            (c.inuse_objects, c.inuse_bytes),
            (0.0, 0.0),
            "no phantom in use"
        );
        assert_eq!(t.live_used, 0);
        // Room again after the frees.
        assert!(t.insert(addr(20), hash, &frames, 1.0, 64.0));
        // The stack table: two more stacks fit (three in all), the fourth is refused,
        // and a known stack still records.
        let other = |k: usize| [0x1000 + k, 0x2000];
        assert!(t.insert(addr(21), hash_frames(&other(1)), &other(1), 1.0, 8.0));
        assert!(t.insert(addr(22), hash_frames(&other(2)), &other(2), 1.0, 8.0));
        assert!(!t.insert(addr(23), hash_frames(&other(3)), &other(3), 1.0, 8.0));
        assert!(!t.remove(addr(23)));
        assert!(t.insert(addr(24), hash, &frames, 1.0, 64.0));
        assert_eq!(t.stacks().count(), 3);
        for i in [20, 21, 22, 24] {
            assert!(t.remove(addr(i)));
        }
        assert!(totals(&t)
            .iter()
            .all(|c| c.inuse_objects == 0.0 && c.inuse_bytes == 0.0));
    }
}
