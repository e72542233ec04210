//! jemalloc's `mallctl` family (`mallctl`, `mallctlnametomib`, `mallctlbymib`) over the
//! part of jemalloc's namespace that programs linked against it read or drive, answered
//! from the engine's statistics snapshot. Debian's `redis-server` is the reason: its
//! `INFO memory` reads `stats.*` after writing `epoch`, and `MEMORY PURGE` reads
//! `arenas.narenas` and runs `arena.<narenas>.purge`. Calls only the engine's snapshot
//! and purge.
//!
//! Names (a MIB has one component per dot-separated level, as in jemalloc):
//! - `epoch` (`uint64_t`, read/write): a write takes a new statistics snapshot, as
//!   jemalloc refreshes its statistics; reads return the epoch.
//! - `stats.allocated`, `stats.active`, `stats.resident`, `stats.mapped`,
//!   `stats.retained`, `stats.metadata` (`size_t`, read-only): the snapshot taken at the
//!   last `epoch` write (the first read takes one if none was).
//! - `arenas.narenas` (`unsigned`, read-only): the number of region arenas placements
//!   use (`narenas` option, else four per CPU).
//! - `arena.<i>.purge` (neither read nor written): purges every free region and every
//!   heap's free pages now (`rangealloc_purge`), for every `i` below `narenas`,
//!   `narenas` itself (jemalloc's "all arenas") or 4096 (`MALLCTL_ARENAS_ALL`); one
//!   arena's purge purges them all (a superset of what jemalloc does, and what
//!   `MEMORY PURGE` wants).
//! - `arenas.dirty_decay_ms` (`ssize_t`, read/write): the purge delay in force; -1 is
//!   "never" (free pages go back only on an explicit purge or past the dirty budget).
//!   Other negative values are `EINVAL`, as in jemalloc.
//! - `background_thread` (`bool`, read/write): the background purger's switch.
//! - `opt.dirty_decay_ms` (`ssize_t`), `opt.background_thread`, `opt.stats_print`
//!   (`bool`), read-only: the options as parsed at start (the program's string, then
//!   `RANGEALLOC_OPTIONS`), whatever was set since, as jemalloc's `opt.*` are.
//! - `opt.prof` (`bool`, read-only): whether `prof=1` was given.
//! - `prof.active` (`bool`, read/write): whether allocations are sampled now.
//! - `prof.dump` (`const char *`, write-only): writes a heap profile (pprof format) to
//!   the path; without a value, to `<prof_dump prefix>.<pid>.<seq>.heap`. The error is
//!   the dump's errno (`ENOENT` when profiling was never on).
//! - `prof.reset` (`size_t`, write-only, optional): zeroes the stacks' allocation
//!   totals; a value sets the mean sample distance to 2^value bytes (jemalloc's
//!   `lg_prof_sample`).
//!
//! A read and a write in one call return the old value, then set the new one.
//!
//! Errors as jemalloc gives them: `ENOENT` for an unknown name, `EPERM` for writing a
//! read-only name or reading or writing a void one, `EINVAL` for a length that does not
//! match the value's type or a null name.

use core::ffi::{c_char, c_int, c_uint, c_void, CStr};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use rangealloc_core as engine;

/// jemalloc's statistics epoch: bumped by each write of `"epoch"`.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// The statistics as of the last `epoch` write, in `STAT_NAMES` order.
static STATS: [AtomicUsize; STAT_NAMES.len()] = [const { AtomicUsize::new(0) }; STAT_NAMES.len()];
static STATS_TAKEN: AtomicBool = AtomicBool::new(false);

const STAT_NAMES: [&str; 6] = [
    "allocated",
    "active",
    "resident",
    "mapped",
    "retained",
    "metadata",
];

/// `MALLCTL_ARENAS_ALL`.
const ARENAS_ALL: usize = 4096;

/// Top-level MIB components.
const EPOCH_MIB: usize = 0;
const STATS_MIB: usize = 1;
const ARENAS_MIB: usize = 2;
const ARENA_MIB: usize = 3;
const BACKGROUND_MIB: usize = 4;
const OPT_MIB: usize = 5;
const PROF_MIB: usize = 6;
const MAX_MIB: usize = 3;

/// Second-level components under `arenas`.
const ARENAS_NARENAS: usize = 0;
const ARENAS_DIRTY_DECAY: usize = 1;

/// The `opt.*` names, in MIB order.
const OPT_NAMES: [&str; 4] = ["dirty_decay_ms", "background_thread", "stats_print", "prof"];
const OPT_DIRTY_DECAY: usize = 0;
const OPT_BACKGROUND: usize = 1;
const OPT_STATS_PRINT: usize = 2;
const OPT_PROF: usize = 3;

/// `prof.*` names, in MIB order.
const PROF_NAMES: [&str; 3] = ["dump", "active", "reset"];
const PROF_DUMP: usize = 0;
const PROF_ACTIVE: usize = 1;
const PROF_RESET: usize = 2;
/// The largest `lg_prof_sample` accepted by `prof.reset` (2^40 bytes between samples
/// means profiling in name only; larger shifts would overflow).
const LG_SAMPLE_MAX: usize = 40;

/// A name resolved to what it controls.
#[derive(Clone, Copy)]
enum Ctl {
    Epoch,
    Stat(usize),
    NArenas,
    ArenaPurge,
    DirtyDecay,
    BackgroundThread,
    Opt(usize),
    ProfDump,
    ProfActive,
    ProfReset,
}

/// jemalloc's `ssize_t` decay time from our delay: `PURGE_NEVER` is -1.
fn decay_ms(delay: u64) -> isize {
    if delay == engine::options::PURGE_NEVER {
        -1
    } else {
        isize::try_from(delay).unwrap_or(isize::MAX)
    }
}

/// `name` as a MIB, or `None` if it is not in the namespace.
fn name_to_mib(name: &[u8]) -> Option<([usize; MAX_MIB], usize)> {
    let name = core::str::from_utf8(name).ok()?;
    let mut parts = name.split('.');
    let mut mib = [0; MAX_MIB];
    let len = match parts.next()? {
        "epoch" => {
            mib[0] = EPOCH_MIB;
            1
        }
        "stats" => {
            mib[0] = STATS_MIB;
            let stat = parts.next()?;
            mib[1] = STAT_NAMES.iter().position(|&n| n == stat)?;
            2
        }
        "arenas" => {
            mib[0] = ARENAS_MIB;
            mib[1] = match parts.next()? {
                "narenas" => ARENAS_NARENAS,
                "dirty_decay_ms" => ARENAS_DIRTY_DECAY,
                _ => return None,
            };
            2
        }
        "background_thread" => {
            mib[0] = BACKGROUND_MIB;
            1
        }
        "opt" => {
            mib[0] = OPT_MIB;
            let opt = parts.next()?;
            mib[1] = OPT_NAMES.iter().position(|&n| n == opt)?;
            2
        }
        "arena" => {
            mib[0] = ARENA_MIB;
            mib[1] = parts.next()?.parse().ok()?;
            (parts.next()? == "purge").then_some(())?;
            3
        }
        "prof" => {
            mib[0] = PROF_MIB;
            let name = parts.next()?;
            mib[1] = PROF_NAMES.iter().position(|&n| n == name)?;
            2
        }
        _ => return None,
    };
    parts.next().is_none().then_some((mib, len))
}

fn resolve(mib: &[usize]) -> Option<Ctl> {
    match *mib {
        [EPOCH_MIB] => Some(Ctl::Epoch),
        [STATS_MIB, i] if i < STAT_NAMES.len() => Some(Ctl::Stat(i)),
        [ARENAS_MIB, ARENAS_NARENAS] => Some(Ctl::NArenas),
        [ARENAS_MIB, ARENAS_DIRTY_DECAY] => Some(Ctl::DirtyDecay),
        [BACKGROUND_MIB] => Some(Ctl::BackgroundThread),
        [OPT_MIB, i] if i < OPT_NAMES.len() => Some(Ctl::Opt(i)),
        [ARENA_MIB, i, 0] if i <= engine::region::ARENAS.count() || i == ARENAS_ALL => {
            Some(Ctl::ArenaPurge)
        }
        [PROF_MIB, PROF_DUMP] => Some(Ctl::ProfDump),
        [PROF_MIB, PROF_ACTIVE] => Some(Ctl::ProfActive),
        [PROF_MIB, PROF_RESET] => Some(Ctl::ProfReset),
        _ => None,
    }
}

fn take_stats() {
    let s = engine::snapshot::snapshot();
    let values = [
        s.allocated,
        s.active,
        s.resident,
        s.mapped,
        s.retained,
        s.metadata,
    ];
    for (slot, v) in STATS.iter().zip(values) {
        slot.store(v, Ordering::Relaxed);
    }
    STATS_TAKEN.store(true, Ordering::Release);
}

impl Ctl {
    /// The size of the value read (0 for a name that cannot be read).
    fn value_size(self) -> usize {
        match self {
            Ctl::Epoch => size_of::<u64>(),
            Ctl::Stat(_) => size_of::<usize>(),
            Ctl::NArenas => size_of::<c_uint>(),
            Ctl::ArenaPurge | Ctl::ProfDump | Ctl::ProfReset => 0,
            Ctl::DirtyDecay | Ctl::Opt(OPT_DIRTY_DECAY) => size_of::<isize>(),
            Ctl::BackgroundThread | Ctl::Opt(_) | Ctl::ProfActive => size_of::<bool>(),
        }
    }

    /// The size of the value written, `None` for a read-only name.
    fn write_size(self) -> Option<usize> {
        match self {
            Ctl::Epoch => Some(size_of::<u64>()),
            Ctl::DirtyDecay => Some(size_of::<isize>()),
            Ctl::BackgroundThread | Ctl::ProfActive => Some(size_of::<bool>()),
            Ctl::ProfDump => Some(size_of::<*const c_char>()),
            Ctl::ProfReset => Some(size_of::<usize>()),
            Ctl::Stat(_) | Ctl::NArenas | Ctl::ArenaPurge | Ctl::Opt(_) => None,
        }
    }
}

/// Checks the request against jemalloc's rules, acts, then copies the value out.
///
/// # Safety
/// As `mallctl`'s contract for `oldp`, `oldlenp` and `newp`.
unsafe fn control(
    ctl: Ctl,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    let (reads, writes) = (!oldp.is_null(), !newp.is_null());
    let size = ctl.value_size();
    let write_size = ctl.write_size();
    if (writes && write_size.is_none()) || (reads && size == 0) {
        return libc::EPERM;
    }
    if writes && Some(newlen) != write_size {
        return libc::EINVAL;
    }
    // SAFETY: jemalloc's contract: with `oldp`, `oldlenp` points to its length.
    if reads && (oldlenp.is_null() || unsafe { oldlenp.read() } != size) {
        return libc::EINVAL;
    }
    match ctl {
        Ctl::Epoch => {
            if writes {
                // Relaxed: the epoch orders nothing; it is a counter callers compare.
                EPOCH.fetch_add(1, Ordering::Relaxed);
                take_stats();
            }
            if reads {
                let epoch = EPOCH.load(Ordering::Relaxed);
                // SAFETY: `out` has room for the value (checked against `*oldlenp`
                // above); it may be unaligned. The same below.
                unsafe { oldp.cast::<u64>().write_unaligned(epoch) };
            }
        }
        Ctl::Stat(i) => {
            if !STATS_TAKEN.load(Ordering::Acquire) {
                take_stats();
            }
            if reads {
                let value = STATS[i].load(Ordering::Relaxed);
                // SAFETY: as above.
                unsafe { oldp.cast::<usize>().write_unaligned(value) };
            }
        }
        Ctl::NArenas => {
            if reads {
                let n = engine::region::ARENAS.count() as c_uint;
                // SAFETY: as above.
                unsafe { oldp.cast::<c_uint>().write_unaligned(n) };
            }
        }
        Ctl::ArenaPurge => {
            crate::stats::rangealloc_purge();
        }
        Ctl::DirtyDecay => {
            // SAFETY: `newp` has `newlen == size` readable bytes (checked above).
            let new = writes.then(|| unsafe { newp.cast::<isize>().read_unaligned() });
            if new.is_some_and(|ms| ms < -1) {
                return libc::EINVAL;
            }
            if reads {
                let old = decay_ms(engine::options::purge_delay_ms());
                // SAFETY: as above.
                unsafe { oldp.cast::<isize>().write_unaligned(old) };
            }
            if let Some(ms) = new {
                let delay = u64::try_from(ms).unwrap_or(engine::options::PURGE_NEVER);
                engine::tuning::set_purge_delay_ms(delay);
            }
        }
        Ctl::BackgroundThread => {
            // SAFETY: `newp` has one readable byte (checked above); any non-zero byte is
            // true (read as u8: a C bool holding another value would be UB as `bool`).
            let new = writes.then(|| unsafe { newp.cast::<u8>().read() } != 0);
            if reads {
                let old = engine::options::background_purge();
                // SAFETY: as above.
                unsafe { oldp.cast::<bool>().write(old) };
            }
            if let Some(on) = new {
                engine::tuning::set_background_purge(on);
            }
        }
        Ctl::Opt(i) if reads => {
            let o = engine::options::get();
            // SAFETY (each write): as above.
            match i {
                OPT_DIRTY_DECAY => unsafe {
                    oldp.cast::<isize>()
                        .write_unaligned(decay_ms(o.purge_delay_ms))
                },
                OPT_BACKGROUND => unsafe { oldp.cast::<bool>().write(o.background_purge) },
                OPT_STATS_PRINT => unsafe { oldp.cast::<bool>().write(o.stats_at_exit) },
                OPT_PROF => unsafe { oldp.cast::<bool>().write(o.prof) },
                _ => {}
            }
        }
        Ctl::Opt(_) => {}
        Ctl::ProfActive => {
            // Read before the write: jemalloc returns the old value.
            let was = engine::prof::active();
            if writes {
                // SAFETY: `newp` holds a `bool` (length checked above); any non-zero
                // byte reads as true, as C's `bool` conversion would.
                let on = unsafe { newp.cast::<u8>().read() } != 0;
                engine::prof::set_active(on);
            }
            if reads {
                // SAFETY: as above.
                unsafe { oldp.cast::<bool>().write_unaligned(was) };
            }
        }
        Ctl::ProfDump => {
            let result = if writes {
                // SAFETY: `newp` holds a `const char *` (length checked above).
                let path = unsafe { newp.cast::<*const c_char>().read_unaligned() };
                // SAFETY: jemalloc's contract: a NUL-terminated path or null.
                unsafe { crate::prof::dump_c_path(path) }
            } else {
                engine::prof::dump_to_prefix()
            };
            if let Err(errno) = result {
                return errno;
            }
        }
        Ctl::ProfReset => {
            if writes {
                // SAFETY: `newp` holds a `size_t` (length checked above).
                let lg = unsafe { newp.cast::<usize>().read_unaligned() };
                if lg > LG_SAMPLE_MAX {
                    return libc::EINVAL;
                }
                engine::prof::set_sample_bytes(1 << lg);
            }
            engine::prof::reset();
        }
    }
    0
}

/// # Safety
/// jemalloc's contract: `name` is a NUL-terminated string; `oldp`, when not null, has
/// `*oldlenp` writable bytes; `newp`, when not null, has `newlen` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn mallctl(
    name: *const c_char,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    if name.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: caller contract.
    let name = unsafe { CStr::from_ptr(name) };
    match name_to_mib(name.to_bytes()).and_then(|(mib, len)| resolve(&mib[..len])) {
        // SAFETY: caller contract.
        Some(ctl) => unsafe { control(ctl, oldp, oldlenp, newp, newlen) },
        None => libc::ENOENT,
    }
}

/// Translates `name` to a MIB of at most `*miblenp` components (a shorter prefix when
/// `*miblenp` is smaller, as jemalloc allows), and stores the length used.
///
/// # Safety
/// `name` is a NUL-terminated string; `mibp` has room for `*miblenp` words.
#[no_mangle]
pub unsafe extern "C" fn mallctlnametomib(
    name: *const c_char,
    mibp: *mut usize,
    miblenp: *mut usize,
) -> c_int {
    if name.is_null() || mibp.is_null() || miblenp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: caller contract.
    let name = unsafe { CStr::from_ptr(name) };
    let Some((mib, len)) = name_to_mib(name.to_bytes()) else {
        return libc::ENOENT;
    };
    // SAFETY: caller contract.
    let len = len.min(unsafe { miblenp.read() });
    // SAFETY: `mibp` has room for `*miblenp >= len` words; `miblenp` is writable.
    unsafe {
        core::ptr::copy_nonoverlapping(mib.as_ptr(), mibp, len);
        miblenp.write(len);
    }
    0
}

/// # Safety
/// `mib` points to `miblen` words; `oldp`, `oldlenp`, `newp` as in `mallctl`.
#[no_mangle]
pub unsafe extern "C" fn mallctlbymib(
    mib: *const usize,
    miblen: usize,
    oldp: *mut c_void,
    oldlenp: *mut usize,
    newp: *mut c_void,
    newlen: usize,
) -> c_int {
    if mib.is_null() || miblen == 0 || miblen > MAX_MIB {
        return libc::ENOENT;
    }
    // SAFETY: caller contract.
    let mib = unsafe { core::slice::from_raw_parts(mib, miblen) };
    match resolve(mib) {
        // SAFETY: caller contract.
        Some(ctl) => unsafe { control(ctl, oldp, oldlenp, newp, newlen) },
        None => libc::ENOENT,
    }
}
