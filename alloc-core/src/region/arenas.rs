//! The arena set: several independent `RegionTable`s ("arenas", each its own "mm": tree,
//! writer mutex, sequence, retired stack, free index and reservations), a thread's home
//! arena, placement across them, and every process-wide walk (purge, statistics, fork).
//! It owns `ARENAS` and the threads' arena tickets (with their exit key); it calls
//! `table`, `directory`, `options`, `os` (the CPU count), `space`, `stats` (the region
//! path's count) and `thread` (the exit key, the re-entrancy guard).
//!
//! - Placement: a thread places in its home arena (`home`: a ticket dealt at the thread's
//!   first placement, the one the fewest live threads hold, handed back at its exit; so
//!   `n` live threads spread over `min(n, count)` arenas, and a new thread takes the
//!   arena an exited one left). First
//!   with `try_write` and without reserving address space; then, in order, every other
//!   arena that has space the same way (try-lock, no reservation), so a thread whose
//!   arena is busy or full uses space another arena has before it waits; only then does
//!   it wait for its home arena's mutex, which may reserve. A home arena without any
//!   reservation yet reserves at its first placement (unless its mutex is held: then
//!   the order above, other arenas' space first). When the home arena can neither
//!   place nor reserve (the mmap failed, or it has no directory id), every other arena
//!   with space is tried again, waiting for its mutex and without reserving, before the
//!   placement is out of memory.
//! - The count of arenas (`narenas`, else `ARENAS_PER_CPU` per online CPU) is decided
//!   once per set, by its first placement; the process's arenas register under fixed
//!   directory ids (`Arenas::process`).
//! - Everything on an existing region (free, usable size, grow, shrink, guard) goes to
//!   the arena whose reservation holds the address (`directory::table_of`: two loads, no
//!   lock). An in-place grow or shrink takes that arena's writer mutex only; a free is a
//!   lock-free retire onto that arena's retired stack, folded by that arena's next writer
//!   (or by `collect_retired`, or the next purge).
//! - Walks (purge, statistics, regions, fork) visit the arenas one at a time, each under
//!   its own mutex: a statistic summed over arenas is not one atomic snapshot.

use super::directory;
use super::table::{
    Freed, LockCounters, PageMove, Placed, Placement, ReadGuard, RetireError, SpaceStats,
};
use super::{Region, RegionKind, RegionState, RegionTable, Space};
use crate::os::{self, PurgeMode};
use crate::stats::{Counter, OnRegionPath};
use crate::sync::SpinLock;
use crate::thread::ExitKey;
use core::cell::Cell;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// The most arenas a set holds (the `narenas` option's upper bound). Each unused arena
/// costs only its zeroed static descriptor; 64 covers jemalloc's default of four per CPU
/// up to 16 CPUs, beyond which four threads per arena still rarely meet in one (its
/// mutex is held for a few hundred nanoseconds per update).
pub const MAX_ARENAS: usize = crate::options::MAX_ARENAS;
// `Arenas::used` has a bit per arena.
const _: () = assert!(MAX_ARENAS <= u64::BITS as usize);

/// Arenas per CPU by default, as jemalloc's `narenas` (4 x CPUs): threads outnumber CPUs
/// in the programs that contend, and a writer preempted while it holds its arena's mutex
/// stalls only that arena's threads. An arena in use keeps its own dirty space, so fewer
/// arenas pool more of it: measured in session 16 (BENCHMARKS.md, "the arena count"),
/// 2 arenas on 2 CPUs cut mstress/8's time 23% and peak 18%, but raised `medium`/16's
/// writer waits from 2 to 104 and `region`/8's peak by a third.
pub const ARENAS_PER_CPU: usize = 4;

/// A set of arenas. The process has one (`ARENAS`); tests build their own.
pub struct Arenas {
    tables: [RegionTable; MAX_ARENAS],
    /// Arenas in use for placement (1..=MAX_ARENAS), or 0 until the first placement
    /// decides it (`narenas`, else `ARENAS_PER_CPU` per CPU).
    count: AtomicUsize,
    /// Placements that went to an arena other than the thread's home.
    pub fallbacks: Counter,
    /// The purge pass counter: each pass starts one arena in use further.
    purge_start: AtomicUsize,
    /// Bit `i`: arena `i` may be in use (`mark_used`), set before any placement in it
    /// can register it. Walks visit only these: each arena's descriptor is ~37 KiB of
    /// static data, so a walk over all `MAX_ARENAS` read 64 lines on 64 pages (a page
    /// fault each at a process's first purge tick, and 64 cache misses at every tick,
    /// which runs on each large allocation and free).
    used: AtomicU64,
    /// Held from `fork_prepare` to `fork_release`, and by `mark_new` while it sets a
    /// bit of `used`: so `used` stays as it is while a fork is under way, and the
    /// arenas a fork locks (the marked ones) are every arena a thread can be inside.
    fork_gate: SpinLock<()>,
}

/// The process's arenas (fixed directory ids: `Arenas::process`).
pub static ARENAS: Arenas = Arenas::process();

thread_local! {
    /// This thread's ticket: its home arena is `ticket % count` (in any set). `NO_TICKET`
    /// until dealt (`deal`); `HANDED_BACK` is set in it once the thread has exited
    /// (`hand_back`), after which its late placements (other exit destructors) still go
    /// to the same arena but no longer count in `HOLDERS`.
    static TICKET: Cell<u32> = const { Cell::new(NO_TICKET) };
}

const NO_TICKET: u32 = u32::MAX;
const HANDED_BACK: u32 = 1 << 31;
// Tickets are arena indexes of the process's set.
const _: () = assert!(MAX_ARENAS < HANDED_BACK as usize);

/// Live threads holding each ticket. A new thread takes the least-held ticket, the
/// lowest of them on a tie, and hands it back at exit, as jemalloc's `arena_choose`
/// binds a thread to its least-loaded arena: threads that come and go (a round of
/// workers, a thread per request) land in the arenas their predecessors left, with
/// those arenas' dirty space and retired regions, instead of going round every arena.
/// Dealt round-robin until session 15, `mstress` (fresh threads each round) touched
/// each arena in turn: 5x the faults and 2.5x the peak RSS of one arena (BENCHMARKS.md,
/// "Arena tickets handed back"). Process-wide, whichever set places: a ticket indexes
/// the process's arenas, and a set of fewer arenas takes it modulo its count.
static HOLDERS: [AtomicU32; MAX_ARENAS] = [const { AtomicU32::new(0) }; MAX_ARENAS];

/// Hands a thread's ticket back at its exit (`hand_back`).
static TICKET_KEY: ExitKey = ExitKey::new(hand_back_at_exit);

#[inline]
fn ticket() -> usize {
    match TICKET.with(Cell::get) {
        NO_TICKET => deal(),
        t => (t & !HANDED_BACK) as usize,
    }
}

/// Deals the calling thread its ticket: the least-held, the lowest on a tie (an arena
/// a thread used before, with space of its own, rather than one never used). The count
/// is taken with a compare-exchange against the count the choice read, so threads dealt
/// at once do not pile onto one ticket while another sits free (a lost race chooses
/// again).
#[cold]
#[inline(never)]
fn deal() -> usize {
    let chosen = loop {
        let (chosen, held) = least_held(ARENAS.count());
        // Relaxed: the counts are a hint; no data is published through them.
        if HOLDERS[chosen]
            .compare_exchange(held, held + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            break chosen;
        }
    };
    TICKET.with(|t| t.set(chosen as u32));
    // Under the re-entrancy guard: a thread's first placement may come before any guard
    // is set (a large object first, or a heap's first segment), and
    // `pthread_setspecific` may `calloc` (keys past the first 32): served here, that
    // calloc could be the thread's first small allocation, whose own
    // `pthread_setspecific`s (heap and epoch exit keys) glibc's outer call would then
    // overwrite (review15 #1: 26 KiB lost a thread). Without a key (none left), or set
    // in glibc's last round of key destructors (a thread whose first placement comes
    // from a late destructor: that round's keys run no destructor), the ticket stays
    // counted for good: a thread fewer to spread by (review15 #2).
    if let Some(key) = TICKET_KEY.get(|| {}) {
        let _inside = crate::Reentrancy::enter();
        // SAFETY: a valid key; the value is only a marker for the destructor.
        unsafe { libc::pthread_setspecific(key, core::ptr::dangling::<libc::c_void>()) };
    }
    chosen
}

/// The least-held of the first `count` tickets, the lowest on a tie, and its holders.
fn least_held(count: usize) -> (usize, u32) {
    let mut best = (0, u32::MAX);
    for (i, holders) in HOLDERS.iter().enumerate().take(count) {
        // Relaxed: as in `deal`.
        let held = holders.load(Ordering::Relaxed);
        if held < best.1 {
            best = (i, held);
            if held == 0 {
                break;
            }
        }
    }
    best
}

/// `TICKET_KEY`'s destructor.
unsafe extern "C" fn hand_back_at_exit(_: *mut libc::c_void) {
    hand_back();
}

/// Hands the calling thread's ticket back (thread exit): its arena counts one holder
/// less (never below none: a fork child, whose counts start over with the forking
/// thread's own, may run a `deal` that a signal handler's `fork` interrupted). The
/// thread keeps its home arena for whatever it still places.
fn hand_back() {
    let t = TICKET.with(Cell::get);
    if t == NO_TICKET || t & HANDED_BACK != 0 {
        return;
    }
    TICKET.with(|c| c.set(t | HANDED_BACK));
    // Relaxed: as in `deal`.
    let _ = HOLDERS[t as usize]
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

/// In a fork child: the parent's other threads are gone, and so are their tickets;
/// only the forking thread's own stays held. Also lets `TICKET_KEY` be created again
/// if a vanished thread was creating it.
///
/// # Safety
/// Only in a fork child while it is single-threaded.
pub unsafe fn tickets_after_fork_in_child() {
    for holders in &HOLDERS {
        // Relaxed: one thread; threads started later see it through `pthread_create`.
        holders.store(0, Ordering::Relaxed);
    }
    let t = TICKET.with(Cell::get);
    if t != NO_TICKET && t & HANDED_BACK == 0 {
        HOLDERS[t as usize].store(1, Ordering::Relaxed);
    }
    // SAFETY: caller contract.
    unsafe { TICKET_KEY.after_fork_in_child() };
}

/// The live threads holding each of the first `n` tickets (tests, diagnostics).
pub fn ticket_holders(n: usize) -> impl Iterator<Item = u32> {
    HOLDERS.iter().take(n).map(|h| h.load(Ordering::Relaxed))
}

/// Starts `f` on a new thread whose home arena in `set` is `home` (tests). A new thread
/// takes the least-held ticket, so one that exits before the next starts hands its
/// ticket to it: the probe threads dealt another home stay alive, holding their tickets,
/// until one is dealt a ticket of `home`; that one runs `f`, the others then exit.
#[doc(hidden)]
pub fn spawn_at_home<T: Send + 'static>(
    set: &'static Arenas,
    home: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> AtHome<T> {
    assert!(
        home < set.count().min(ARENAS.count()),
        "home {home}: tickets index the process's {} arenas, the set has {}",
        ARENAS.count(),
        set.count()
    );
    use std::sync::mpsc;
    type Job<T> = Box<dyn FnOnce() -> T + Send>;
    let mut job: Option<Job<T>> = Some(Box::new(f));
    let mut held = Vec::new();
    loop {
        let (home_tx, home_rx) = mpsc::channel();
        let (job_tx, job_rx) = mpsc::channel::<Job<T>>();
        let thread = std::thread::spawn(move || {
            home_tx.send(set.home()).expect("the caller waits");
            // A probe's wait ends when its sender is dropped, without a job.
            job_rx.recv().ok().map(|job| job())
        });
        if home_rx.recv().expect("the thread reports its home") != home {
            held.push((job_tx, thread));
            continue;
        }
        job_tx
            .send(job.take().expect("one job"))
            .expect("the thread waits");
        for (job_tx, thread) in held {
            drop(job_tx);
            thread.join().expect("a probe thread");
        }
        return AtHome(thread);
    }
}

/// A thread `spawn_at_home` started.
#[doc(hidden)]
pub struct AtHome<T>(std::thread::JoinHandle<Option<T>>);

impl<T> AtHome<T> {
    /// Waits for the thread: what its job returned, or its panic.
    pub fn join(self) -> std::thread::Result<T> {
        self.0
            .join()
            .map(|out| out.expect("the job was sent before the handle was returned"))
    }
}

/// `spawn_at_home`, joined: what `f` returns.
#[doc(hidden)]
pub fn on_new_thread_at_home<T: Send + 'static>(
    set: &'static Arenas,
    home: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    spawn_at_home(set, home, f).join().expect("the job ran")
}

/// Contention counters of one arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaContention {
    /// Writer-mutex acquisitions.
    pub writer: u64,
    /// Acquisitions that found the mutex held and waited.
    pub waits: u64,
    /// Nanoseconds they waited.
    pub wait_ns: u64,
}

impl Default for Arenas {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Arenas {
    /// A set of `count` arenas (0: decided at the first placement from the options).
    pub const fn new(count: usize) -> Self {
        Arenas {
            tables: [const { RegionTable::new() }; MAX_ARENAS],
            count: AtomicUsize::new(if count > MAX_ARENAS {
                MAX_ARENAS
            } else {
                count
            }),
            fallbacks: Counter::new(),
            purge_start: AtomicUsize::new(0),
            used: AtomicU64::new(0),
            fork_gate: SpinLock::new(()),
        }
    }

    /// The process's set: arena `i` registers under the directory id `i + 1`, kept for
    /// it, so other tables (tests', benchmarks', `engine` users') cannot spend the ids
    /// the process's arenas need. Only `ARENAS` may be built so (ids are unique).
    const fn process() -> Self {
        let mut set = Self::new(0);
        let mut i = 0;
        while i < MAX_ARENAS {
            set.tables[i].fixed_id = (i + 1) as u8;
            i += 1;
        }
        set
    }

    /// The number of arenas placements use.
    #[inline]
    pub fn count(&self) -> usize {
        // Relaxed: the value is decided once (`decide_count`'s compare-exchange) and
        // publishes nothing else.
        match self.count.load(Ordering::Relaxed) {
            0 => self.decide_count(),
            n => n,
        }
    }

    #[cold]
    #[inline(never)]
    fn decide_count(&self) -> usize {
        let n = match crate::options::get().narenas {
            0 => os::cpu_count().saturating_mul(ARENAS_PER_CPU),
            n => n,
        }
        .clamp(1, MAX_ARENAS);
        // Once for the set: the first decider's count stands, so no placement ever used
        // a count that a racing decider then changed (arenas beyond the final count would
        // keep space nothing places in again). Relaxed: as in `count`.
        match self
            .count
            .compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => n,
            Err(decided) => decided,
        }
    }

    /// Arena `i` (any of the `MAX_ARENAS`, in use or not). Walks visit it from now on:
    /// its caller may place in it directly.
    pub fn table(&self, i: usize) -> &RegionTable {
        self.mark_used(i);
        &self.tables[i]
    }

    /// Records that arena `i` may be in use from now on, before anything places in it.
    /// Relaxed: a walk that misses a bit set beside it misses an arena that had nothing
    /// to walk yet, as it would have read its id before the registration; `fork` locks
    /// every arena's mutex, which orders the bit before a child's walks.
    #[inline]
    fn mark_used(&self, i: usize) {
        if self.used.load(Ordering::Relaxed) & (1u64 << i) == 0 {
            self.mark_new(i);
        }
    }

    /// `mark_used` for an arena not marked yet: under the fork gate, so a fork either
    /// sees the bit (and locks the arena) or holds the gate until the child and parent
    /// are both past their handlers (and this thread has placed nothing meanwhile).
    #[cold]
    #[inline(never)]
    fn mark_new(&self, i: usize) {
        let _gate = self.fork_gate.lock();
        self.used.fetch_or(1u64 << i, Ordering::Relaxed);
    }

    /// The index of the calling thread's home arena: its ticket modulo this set's
    /// count. Tickets index the process's arenas (`ARENAS.count()`), so a set with more
    /// arenas than the process (tests) has homes only among its first that many.
    #[inline]
    pub fn home(&self) -> usize {
        ticket() % self.count()
    }

    /// The arena whose reservation holds `addr` (any table registered in the directory,
    /// this set's or not).
    #[inline]
    pub fn table_of(addr: usize) -> Option<&'static RegionTable> {
        directory::table_of(addr)
    }

    /// The arenas that have placed something, in index order (the fixed order of every
    /// walk).
    fn in_use(&self) -> impl Iterator<Item = &RegionTable> {
        self.marked()
            .map(|i| &self.tables[i])
            .filter(|t| t.in_use())
    }

    /// The indexes of the arenas `mark_used` marked, in index order.
    fn marked(&self) -> impl Iterator<Item = usize> {
        let mut left = self.used.load(Ordering::Relaxed);
        core::iter::from_fn(move || {
            let i = left.trailing_zeros() as usize;
            // The lowest set bit cleared; `None` once none is left.
            (left != 0).then(|| {
                left &= left - 1;
                i
            })
        })
    }

    // ------------------------------------------------------------------ placement

    /// Places a new live region (see the module doc for the order arenas are tried in).
    pub fn place(
        &'static self,
        how: Placement,
        len: usize,
        align: usize,
        kind: RegionKind,
    ) -> Option<Placed> {
        let _path = OnRegionPath::enter();
        let count = self.count();
        let home = self.home();
        self.mark_used(home);
        let own = &self.tables[home];
        let space = how.space();
        if !own.has_space(space) {
            // A home arena's first placement in a space reserves at once: were it to use
            // the space of the arenas already in use, every thread would share the first
            // arena's mutex until that arena filled up, and (huge-page space) its objects
            // would be freed into another arena's holes while its next ones went to its
            // own clean space. If it cannot reserve (or get a directory id), the other
            // arenas' space must do. With try-lock: a busy mutex here is most often a
            // thread sharing this home arena making that same first reservation (an
            // `mmap` under the mutex; with 16 threads on 8 arenas, 3 of the 3 writer
            // waits left in 32 `medium` runs were this wait), so a busy arena goes the
            // way of the common case below: other arenas' space first, waiting last.
            match own.try_place(how, len, align, kind, true) {
                Some(Some(placed)) => return Some(placed),
                Some(None) => {
                    return self.place_elsewhere_waiting(home, count, how, len, align, kind)
                }
                None => {}
            }
        }
        if let Some(placed) = own.place(how, len, align, kind, true, false) {
            return Some(placed);
        }
        if let Some(placed) = self.place_in_others(home, count, how, len, align, kind, true) {
            return Some(placed);
        }
        match own.place(how, len, align, kind, false, true) {
            Some(placed) => Some(placed),
            None => self.place_elsewhere_waiting(home, count, how, len, align, kind),
        }
    }

    /// The last resort of `place`, when the home arena could neither place nor reserve
    /// (the mmap failed: an address-space or commit limit, `vm.max_map_count`; or it has
    /// no directory id): every other arena with space, in order, waiting for its mutex
    /// (the try-lock pass skipped the busy ones) and without reserving (the home arena
    /// just failed to). Only then is the placement out of memory.
    #[cold]
    #[inline(never)]
    fn place_elsewhere_waiting(
        &'static self,
        home: usize,
        count: usize,
        how: Placement,
        len: usize,
        align: usize,
        kind: RegionKind,
    ) -> Option<Placed> {
        self.place_in_others(home, count, how, len, align, kind, false)
    }

    /// Places in the first arena other than `home` (in order from `home + 1`) that has
    /// space, without reserving: with try-lock (`try_lock`: busy ones skipped) or waiting
    /// for each mutex. A placement made there counts as a fallback.
    #[allow(clippy::too_many_arguments)]
    fn place_in_others(
        &'static self,
        home: usize,
        count: usize,
        how: Placement,
        len: usize,
        align: usize,
        kind: RegionKind,
        try_lock: bool,
    ) -> Option<Placed> {
        let used = self.used.load(Ordering::Relaxed);
        for step in 1..count {
            let i = (home + step) % count;
            // An arena never marked has no space (and its descriptor stays untouched).
            if used & (1u64 << i) == 0 {
                continue;
            }
            let other = &self.tables[i];
            if !other.has_space(how.space()) {
                continue;
            }
            if let Some(placed) = other.place(how, len, align, kind, try_lock, false) {
                self.fallbacks.inc();
                return Some(placed);
            }
        }
        None
    }

    /// `RegionTable::allocate` in this set (dense placement).
    pub fn allocate(&'static self, len: usize, align: usize, kind: RegionKind) -> Option<Placed> {
        self.place(Placement::Dense, len, align, kind)
    }

    /// `RegionTable::allocate_roomy` in this set.
    pub fn allocate_roomy(
        &'static self,
        len: usize,
        align: usize,
        kind: RegionKind,
    ) -> Option<Placed> {
        self.place(Placement::Roomy, len, align, kind)
    }

    /// `RegionTable::allocate_with_room` in this set.
    pub fn allocate_with_room(
        &'static self,
        len: usize,
        align: usize,
        kind: RegionKind,
        growing: bool,
        space: Space,
    ) -> Option<Placed> {
        self.place(Placement::WithRoom { growing, space }, len, align, kind)
    }

    // ------------------------------------------------- operations on one region

    /// `RegionTable::find_and_read_lock` in the arena holding `addr`.
    #[inline]
    pub fn find_and_read_lock(&self, addr: usize) -> Option<ReadGuard> {
        Self::table_of(addr)?.find_and_read_lock(addr)
    }

    /// Marks the live object at `addr` prefaulted (`Region::mark_prefaulted`): its
    /// length (guard page included), or `None` when no live object starts there.
    pub fn mark_prefaulted(&self, addr: usize) -> Option<usize> {
        let _path = OnRegionPath::enter();
        Self::table_of(addr)?.live_object(addr, |r| {
            r.mark_prefaulted();
            r.len()
        })
    }

    /// Takes the prefaulted mark of the live object at `addr`: its length (guard page
    /// included) when the mark was set.
    pub fn take_prefaulted(&self, addr: usize) -> Option<usize> {
        let _path = OnRegionPath::enter();
        Self::table_of(addr)?
            .live_object(addr, |r| r.take_prefaulted().then(|| r.len()))
            .flatten()
    }

    /// `RegionTable::retire` in the arena holding `addr`.
    pub fn retire(&self, addr: usize) -> Result<(), RetireError> {
        let _path = OnRegionPath::enter();
        Self::table_of(addr)
            .ok_or(RetireError::NotAllocated)?
            .retire(addr)
    }

    /// `RegionTable::retire_with` in the arena holding `addr`.
    pub fn retire_with(
        &self,
        addr: usize,
        prepare: impl FnOnce(&Region),
    ) -> Result<(), RetireError> {
        let _path = OnRegionPath::enter();
        Self::table_of(addr)
            .ok_or(RetireError::NotAllocated)?
            .retire_with(addr, prepare)
    }

    /// `RegionTable::retire_or_cache` in the arena holding `addr`.
    pub fn retire_or_cache(
        &self,
        addr: usize,
        keep: impl FnOnce(&Region) -> bool,
        prepare: impl FnOnce(&Region),
    ) -> Result<Freed, RetireError> {
        let _path = OnRegionPath::enter();
        Self::table_of(addr)
            .ok_or(RetireError::NotAllocated)?
            .retire_or_cache(addr, keep, prepare)
    }

    /// `RegionTable::install_guard` in the arena holding `addr`.
    pub fn install_guard(&self, addr: usize) -> Result<(), os::OsError> {
        match Self::table_of(addr) {
            Some(t) => t.install_guard(addr),
            None => Err(os::OsError {
                call: os::Syscall::MadviseGuard,
                errno: libc::EINVAL,
            }),
        }
    }

    /// `RegionTable::move_pages_into` in the arena holding `to`: a move between two live
    /// objects that may lie in different arenas, made without either arena's writer
    /// mutex (`large::move_elsewhere`). Its `mremap` counts as a process-wide lock on the
    /// region-table path, as the one `RegionTable::relocate` makes under its mutex.
    ///
    /// # Safety
    /// As `RegionTable::move_pages_into`; `space` is `to`'s (`space_of`).
    pub unsafe fn move_pages(&self, from: usize, to: usize, len: usize, space: Space) -> PageMove {
        let _path = OnRegionPath::enter();
        let from_moved_in = Self::table_of(from).is_none_or(|t| t.may_hold_moved_pages(from));
        match Self::table_of(to) {
            // SAFETY: caller contract.
            Some(t) => unsafe { t.move_pages_into(from, from_moved_in, to, len, space) },
            None => PageMove::Copy { moved: 0 },
        }
    }

    /// `RegionTable::object_len` in the arena holding `addr`.
    pub fn object_len(&self, addr: usize) -> Option<usize> {
        let _path = OnRegionPath::enter();
        Self::table_of(addr)?.object_len(addr)
    }

    /// `RegionTable::grow_in_place`: takes the writer mutex of `addr`'s arena only.
    pub fn grow_in_place(&self, addr: usize, new_len: usize) -> bool {
        let _path = OnRegionPath::enter();
        Self::table_of(addr).is_some_and(|t| t.grow_in_place(addr, new_len))
    }

    /// The arena holding `addr` (tests).
    #[cfg(test)]
    pub(crate) fn table_of_addr(&self, addr: usize) -> &'static RegionTable {
        Self::table_of(addr).expect("an arena holds the address")
    }

    /// `RegionTable::try_grow_in_place`: `None` when `addr`'s arena's writer mutex is
    /// held now (or no arena holds `addr`).
    pub fn try_grow_in_place(&self, addr: usize, new_len: usize) -> Option<bool> {
        let _path = OnRegionPath::enter();
        Self::table_of(addr)?.try_grow_in_place(addr, new_len)
    }

    /// The space of the reservation holding `addr` (`Space::Base` when no arena holds
    /// it): one byte of the slot map, no lock, so `large`'s move paths may ask while the
    /// arena's writer is busy.
    pub fn space_of(&self, addr: usize) -> Space {
        if crate::space::is_huge(addr) {
            Space::Huge
        } else {
            Space::Base
        }
    }

    /// `RegionTable::relocate` in the arena holding `addr` (the object moves within its
    /// arena's reservations: its writer mutex only).
    pub fn relocate(
        &self,
        addr: usize,
        new_len: usize,
        align: usize,
        space: Space,
    ) -> Option<(Placed, PageMove)> {
        let _path = OnRegionPath::enter();
        Self::table_of(addr)?.relocate(addr, new_len, align, space)
    }

    /// `RegionTable::shrink_in_place`: takes the writer mutex of `addr`'s arena only.
    pub fn shrink_in_place(&self, addr: usize, new_len: usize) -> bool {
        let _path = OnRegionPath::enter();
        Self::table_of(addr).is_some_and(|t| t.shrink_in_place(addr, new_len))
    }

    // ------------------------------------------------------------ process-wide

    /// Folds every arena's retired regions into free space now.
    pub fn collect_retired(&self) {
        for t in self.in_use() {
            t.collect_retired();
        }
    }

    /// `RegionTable::purge` over the arenas in use, starting one further each pass (so
    /// a pass whose budget runs out does not always spare the same arenas), until the
    /// budget is spent; returns the bytes purged. Zero only when no arena purged any.
    pub fn purge(&self, delay_ms: u64, mode: PurgeMode, budget: usize) -> usize {
        self.purge_with(delay_ms, mode, budget, false)
    }

    /// `RegionTable::purge_at` in the arena holding `addr` (nothing when none does).
    pub fn purge_at(&self, addr: usize, mode: PurgeMode) -> usize {
        let _path = OnRegionPath::enter();
        Self::table_of(addr).map_or(0, |t| t.purge_at(addr, mode))
    }

    /// `purge`, skipping the arenas whose writer mutex is held now
    /// (`RegionTable::try_purge`): for passes run on an allocator call's way.
    pub fn try_purge(&self, delay_ms: u64, mode: PurgeMode, budget: usize) -> usize {
        self.purge_with(delay_ms, mode, budget, true)
    }

    fn purge_with(&self, delay_ms: u64, mode: PurgeMode, budget: usize, try_only: bool) -> usize {
        let _path = OnRegionPath::enter();
        // The rotation is over the arenas in use (not over the `MAX_ARENAS` slots, where
        // every start past the last arena in use would wrap to arena 0 first).
        let mut used = [0u8; MAX_ARENAS];
        let mut n = 0;
        for i in self.marked() {
            if self.tables[i].in_use() {
                used[n] = i as u8;
                n += 1;
            }
        }
        if n == 0 {
            return 0;
        }
        // Relaxed: only rotates the starting arena.
        let start = self.purge_start.fetch_add(1, Ordering::Relaxed) % n;
        let mut purged = 0;
        for step in 0..n {
            if purged >= budget {
                break;
            }
            let t = &self.tables[used[(start + step) % n] as usize];
            purged += if try_only {
                t.try_purge(delay_ms, mode, budget - purged)
            } else {
                t.purge(delay_ms, mode, budget - purged)
            };
        }
        purged
    }

    /// Dirty free bytes over all arenas.
    pub fn dirty_bytes(&self) -> usize {
        self.in_use().map(|t| t.dirty_bytes()).sum()
    }

    /// `RegionTable::freed_bytes` over all arenas: what the dirty budget bounds.
    pub fn freed_bytes(&self) -> usize {
        self.in_use().map(|t| t.freed_bytes()).sum()
    }

    /// Live object regions over all arenas.
    pub fn live_regions(&self) -> usize {
        self.in_use().map(|t| t.live_regions()).sum()
    }

    /// `RegionTable::space` summed over the arenas.
    pub fn space(&self) -> SpaceStats {
        let mut sum = SpaceStats::default();
        for t in self.in_use() {
            let s = t.space();
            sum.reserved += s.reserved;
            sum.free += s.free;
            sum.dirty += s.dirty;
            sum.retired += s.retired;
            sum.cached += s.cached;
            sum.free_regions += s.free_regions;
            sum.large_regions += s.large_regions;
            sum.large_bytes += s.large_bytes;
            sum.segment_regions += s.segment_regions;
            sum.segment_bytes += s.segment_bytes;
        }
        sum
    }

    /// The read-side counters summed over the arenas, with each arena's contention.
    pub fn lock_counts(&self) -> (LockTotals, [ArenaContention; MAX_ARENAS]) {
        let mut totals = LockTotals::default();
        let mut each = [ArenaContention::default(); MAX_ARENAS];
        for i in self.marked() {
            let (t, e) = (&self.tables[i], &mut each[i]);
            let c: &LockCounters = &t.counters;
            totals.success += c.success().get();
            totals.abort += c.abort().get();
            totals.retry += c.retry().get();
            totals.miss += c.miss().get();
            totals.slow += c.slow().get();
            totals.reader_waits += c.reader_waits().get();
            *e = ArenaContention {
                writer: c.writer().get(),
                waits: c.waits().get(),
                wait_ns: c.wait_ns().get(),
            };
            totals.writer += e.writer;
            totals.waits += e.waits;
            totals.wait_ns += e.wait_ns;
        }
        (totals, each)
    }

    /// Visits every region of every arena: arena by arena, in address order within one
    /// (tests and diagnostics; sort for a global address order).
    pub fn for_each_region(&self, mut f: impl FnMut(usize, usize, RegionKind, RegionState)) {
        for t in self.in_use() {
            t.for_each_region(&mut f);
        }
    }

    /// Visits every free region of every arena with its dirtiness (as `for_each_region`).
    pub fn for_each_free_region(&self, mut f: impl FnMut(usize, usize, bool)) {
        for t in self.in_use() {
            t.for_each_free_region(&mut f);
        }
    }

    /// Locks the arenas across `fork`, in index order (the one order every multi-arena
    /// lock follows; no path holds two arena mutexes otherwise).
    ///
    /// Only the marked arenas (`used`): the others hold nothing and no thread is inside
    /// them, and the fork gate keeps it so until `fork_release`. Until session 12 every
    /// one of the `MAX_ARENAS` was locked and unlocked, a write on each descriptor's
    /// page, 37 KiB apart: 64 page faults in the parent and as many in the child, at
    /// every fork (a C program forking under `LD_PRELOAD`: 72 and 96 faults a fork,
    /// glibc's malloc 2 and 17).
    pub fn fork_prepare(&self) {
        self.fork_gate.raw_lock();
        for i in self.marked() {
            self.tables[i].fork_prepare();
        }
    }

    /// # Safety
    /// Only after `fork_prepare`, in the parent or the child.
    pub unsafe fn fork_release(&self) {
        // The gate is held: the marked arenas are the ones `fork_prepare` locked.
        let marked = self.used.load(Ordering::Relaxed);
        for i in (0..MAX_ARENAS).rev().filter(|i| marked & (1u64 << i) != 0) {
            // SAFETY: caller contract: `fork_prepare` locked every marked arena on this
            // thread.
            unsafe { self.tables[i].fork_release() };
        }
        // SAFETY: caller contract: `fork_prepare` took the gate on this thread.
        unsafe { self.fork_gate.raw_unlock() };
    }

    /// `RegionTable::after_fork_in_child` for every arena in use: the `Cached` regions
    /// of all.
    ///
    /// # Safety
    /// As `RegionTable::after_fork_in_child`.
    pub unsafe fn after_fork_in_child(&self) -> usize {
        self.in_use()
            // SAFETY: caller contract.
            .map(|t| unsafe { t.after_fork_in_child() })
            .sum()
    }

    /// `RegionTable::retire_cached_outside` for every arena in use.
    ///
    /// # Safety
    /// As `RegionTable::retire_cached_outside`.
    pub unsafe fn retire_cached_outside(&self, held: &dyn Fn(usize) -> bool) -> usize {
        self.in_use()
            // SAFETY: caller contract.
            .map(|t| unsafe { t.retire_cached_outside(held) })
            .sum()
    }
}

/// The read-side counters and writer contention summed over a set's arenas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockTotals {
    pub success: u64,
    pub abort: u64,
    pub retry: u64,
    pub miss: u64,
    pub slow: u64,
    pub writer: u64,
    pub waits: u64,
    pub wait_ns: u64,
    pub reader_waits: u64,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::os::PAGE_SIZE;

    const LEN: usize = 16 * PAGE_SIZE;

    fn index_of(set: &Arenas, table: &RegionTable) -> usize {
        (0..MAX_ARENAS)
            .find(|&i| core::ptr::eq(set.table(i), table))
            .expect("a table of this set")
    }

    /// Threads spread over the arenas by ticket; each places in its home arena, the
    /// directory finds that arena from the address, and growing, shrinking and freeing
    /// there takes no other arena's writer mutex.
    #[test]
    fn threads_place_in_their_home_arena_and_resize_there_alone() {
        static SET: Arenas = Arenas::new(4);
        // Tickets are dealt to every set's threads alike (other tests hold some too):
        // place from a new thread of each home in turn.
        let homes: Vec<(usize, usize)> = (0..4)
            .map(|home| {
                let start = on_new_thread_at_home(&SET, home, || {
                    SET.allocate_with_room(LEN, PAGE_SIZE, RegionKind::Large, false, Space::Base)
                        .expect("placed")
                        .start
                });
                (home, start)
            })
            .collect();
        let mut seen: Vec<usize> = homes.iter().map(|h| h.0).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 4, "four threads, four home arenas: {homes:?}");
        for &(home, start) in &homes {
            let table = Arenas::table_of(start).expect("the directory knows the object");
            assert_eq!(index_of(&SET, table), home, "object {start:#x}");
            let before = SET.lock_counts().1;
            assert!(SET.grow_in_place(start, 2 * LEN));
            assert!(SET.shrink_in_place(start, LEN));
            assert_eq!(SET.object_len(start), Some(LEN));
            SET.retire(start).expect("live");
            assert_eq!(SET.retire(start), Err(RetireError::DoubleFree));
            let after = SET.lock_counts().1;
            for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
                let expected = if i == home { 2 } else { 0 };
                assert_eq!(a.writer - b.writer, expected, "arena {i}, home {home}");
            }
        }
        SET.collect_retired();
        assert_eq!(SET.live_regions(), 0);
    }

    /// Threads racing the first placement in one table register it in the directory
    /// once: every id the directory gives out points at a distinct table (before, each
    /// racer drew an id, the compare-exchange kept one, and the others were lost).
    #[test]
    fn racing_first_placements_register_a_table_once() {
        const TABLES: usize = 24;
        const RACERS: usize = 4;
        for _ in 0..TABLES {
            let t: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
            let go = std::sync::Arc::new(std::sync::Barrier::new(RACERS));
            let racers: Vec<_> = (0..RACERS)
                .map(|_| {
                    let go = go.clone();
                    std::thread::spawn(move || {
                        go.wait();
                        // May not reserve: registers without mapping anything.
                        let _ = t.place(
                            Placement::Dense,
                            PAGE_SIZE,
                            PAGE_SIZE,
                            RegionKind::Large,
                            true,
                            false,
                        );
                    })
                })
                .collect();
            for r in racers {
                r.join().unwrap();
            }
            assert!(t.in_use());
            assert_eq!(
                directory::ids_of(t),
                1,
                "directory ids pointing at one table"
            );
        }
    }

    /// The process's arenas register under their fixed ids, whatever other tables
    /// registered first.
    #[test]
    fn process_arenas_have_fixed_ids() {
        let other: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
        let _ = other.place(
            Placement::Dense,
            PAGE_SIZE,
            PAGE_SIZE,
            RegionKind::Large,
            true,
            false,
        );
        for i in [MAX_ARENAS - 1, MAX_ARENAS - 2] {
            let t = ARENAS.table(i);
            let _ = t.place(
                Placement::Dense,
                PAGE_SIZE,
                PAGE_SIZE,
                RegionKind::Large,
                true,
                false,
            );
            assert_eq!(directory::ids_of(t), 1);
            assert_eq!(directory::id_of(t), Some(i + 1));
        }
        assert!(directory::id_of(other).unwrap() > MAX_ARENAS);
    }

    /// Places an object from a new thread whose home arena in `set` is `home`; returns
    /// its start.
    fn placed_from_home(set: &'static Arenas, home: usize) -> usize {
        on_new_thread_at_home(set, home, move || {
            set.allocate(LEN, PAGE_SIZE, RegionKind::Large)
                .expect("placed")
                .start
        })
    }

    /// Issue 16: a placement whose home arena has no space of its own yet, and whose
    /// writer mutex is held (a thread sharing the arena making its first reservation),
    /// goes to another arena that has space, without waiting. The holder lets go as
    /// soon as a blocking acquisition is counted (`lock_writer` counts before it
    /// waits), so a placement that waits is seen, not hung.
    #[test]
    fn a_busy_home_arena_without_space_yet_sends_placement_elsewhere_without_waiting() {
        static SET: Arenas = Arenas::new(2);
        let home = SET.home();
        let other = (home + 1) % 2;
        // The other arena has space.
        placed_from_home(&SET, other);
        // The home arena registered (a placement may not reserve), with no space yet.
        let own = SET.table(home);
        assert!(own
            .place(
                Placement::Dense,
                LEN,
                PAGE_SIZE,
                RegionKind::Large,
                true,
                false
            )
            .is_none());
        assert!(own.in_use() && !own.has_space(Space::Base));
        let (writers, waits) = (own.counters.writer().get(), own.counters.waits().get());
        let placed = own
            .while_writer_busy(|| SET.allocate(LEN, PAGE_SIZE, RegionKind::Large))
            .expect("placed");
        assert_eq!(own.counters.waits().get(), waits, "the placement waited");
        assert_eq!(
            own.counters.writer().get(),
            writers,
            "a blocking acquisition"
        );
        let t = Arenas::table_of(placed.start).expect("known");
        assert_eq!(index_of(&SET, t), other);
    }

    /// Walks visit the arenas a placement (or `table`) marked, and only those: an arena
    /// nothing placed in is never read (its descriptor's pages stay untouched).
    #[test]
    fn walks_visit_only_the_arenas_placements_marked() {
        static SET: Arenas = Arenas::new(8);
        assert_eq!(SET.marked().count(), 0);
        assert_eq!(SET.in_use().count(), 0);
        let p = SET
            .allocate(LEN, PAGE_SIZE, RegionKind::Large)
            .expect("placed");
        let home = SET.home();
        assert_eq!(SET.marked().collect::<Vec<_>>(), [home]);
        assert_eq!(SET.in_use().count(), 1);
        let mut found = 0;
        SET.for_each_region(|start, _, _, _| found += usize::from(start == p.start));
        assert_eq!(found, 1, "the walk missed the object");
        // The highest and lowest bits: marked, walked in index order, not in use.
        let _ = SET.table(MAX_ARENAS - 1);
        let _ = SET.table(0);
        let mut expect = vec![0, home, MAX_ARENAS - 1];
        expect.dedup();
        assert_eq!(SET.marked().collect::<Vec<_>>(), expect);
        assert_eq!(SET.in_use().count(), 1);
    }

    /// A placement whose home arena's writer mutex is held goes to another arena in
    /// use, without waiting for it.
    #[test]
    fn a_busy_home_arena_sends_placement_elsewhere_without_waiting() {
        static SET: Arenas = Arenas::new(2);
        let home = SET.home();
        let other = (home + 1) % 2;
        SET.allocate(LEN, PAGE_SIZE, RegionKind::Large)
            .expect("placed at home");
        // Both arenas in use: a thread whose home is the other one places there.
        let there = Arenas::table_of(placed_from_home(&SET, other)).expect("known");
        assert_eq!(index_of(&SET, there), other);
        assert!(SET.table(other).in_use());
        let fallbacks = SET.fallbacks.get();
        let waits_before = SET.lock_counts().1[home].waits;
        // Hold the home arena's mutex as a writer in another thread would.
        SET.table(home).fork_prepare();
        let p = SET
            .allocate(LEN, PAGE_SIZE, RegionKind::Large)
            .expect("placed in the other arena");
        // SAFETY: locked just above on this thread.
        unsafe { SET.table(home).fork_release() };
        let t = Arenas::table_of(p.start).expect("known");
        assert_eq!(index_of(&SET, t), other);
        assert_eq!(SET.fallbacks.get(), fallbacks + 1);
        assert_eq!(SET.lock_counts().1[home].waits, waits_before);
    }

    /// Review: the purge's rotation is over `MAX_ARENAS` slots, not over the arenas in
    /// use, so with two arenas in use every start from 2 to 63 wraps to arena 0 first: a
    /// pass whose budget arena 0 can spend spares arena 1 in 62 passes of 64.
    #[test]
    fn purge_passes_take_turns_over_the_arenas_in_use() {
        static SET: Arenas = Arenas::new(2);
        const MIB: usize = 1 << 20;
        for i in 0..2 {
            let t = SET.table(i);
            // Arena 0 has four times the expired dirty space of arena 1.
            let objects: Vec<usize> = (0..if i == 0 { 16 } else { 4 })
                .map(|_| {
                    t.allocate(16 * MIB, PAGE_SIZE, RegionKind::Large)
                        .unwrap()
                        .start
                })
                .collect();
            for o in objects {
                SET.retire(o).unwrap();
            }
        }
        SET.collect_retired();
        let before = [SET.table(0).dirty_bytes(), SET.table(1).dirty_bytes()];
        assert!(before.iter().all(|&d| d >= 64 * MIB), "{before:?}");
        // Past the one start (1) that visits arena 1 first (the counter is shared by
        // every set; a budget of 0 purges nothing).
        SET.purge(0, PurgeMode::DontNeed, 0);
        SET.purge(0, PurgeMode::DontNeed, 0);
        for _ in 0..8 {
            SET.purge(0, PurgeMode::DontNeed, 16 * MIB);
        }
        let purged: Vec<usize> = (0..2)
            .map(|i| before[i] - SET.table(i).dirty_bytes())
            .collect();
        assert!(
            purged.iter().all(|&p| p >= 16 * MIB),
            "eight passes of 16 MiB over two arenas with 256 and 64 MiB expired dirty: purged {purged:?}"
        );
    }
}
