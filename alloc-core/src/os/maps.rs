//! The kernel's mappings (VMAs) of our reservations, as page moves split them: owns
//! their gauge, its census from `/proc/self/maps`, the switch that asks purges to
//! overwrite moved-in ranges with fresh mappings (`overlay_moved`), and the `/proc`
//! descriptors of the allocator (`ProcFd`: opened by raw syscalls, in slots a `fork`
//! waits for so no child inherits one); calls `libc` and `os` (errno, the clock).
//! `large` asks `may_split`
//! before a medium object moves by `mremap` and `inside_a_larger_mapping` before a
//! sparse copy.
//!
//! Measured on this kernel (6.18, a C probe; BENCHMARKS.md, "movecap8"): a faulted
//! anonymous mapping moved by `mremap` keeps its page offset and `anon_vma`, so the
//! moved pages stay a mapping of their own in the reservation around them (1 -> 3
//! mappings), whatever is done to them later (`MADV_DONTNEED`, `MADV_NORMAL`,
//! `mprotect` away and back: still 3). A fresh mapping over them (`mmap(MAP_FIXED)`,
//! `os::overlay`) takes the page offset of its address and merges with its neighbours:
//! back to 1, also when laid piecewise. The source, left mapped by
//! `MREMAP_DONTUNMAP`, merges back by itself unless its pages had been moved in before.
//! So the mappings a process holds follow the moved-in ranges not yet overwritten: the
//! budget renews as purges overwrite them, and the census reads how many there are.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Mappings in our reservations past which medium objects stop moving by `mremap`
/// (they are copied) until a census finds fewer: a quarter of the default
/// `vm.max_map_count` (65,530), past which every `mmap` of the process (thread stacks,
/// our reservations) fails; the bound the fixed budget of 8,192 moves gave (2 mappings
/// each) before it renewed.
pub const MAPPINGS_BOUND: u64 = 16384;

/// From this gauge on, purges overwrite the moved-in ranges they purge (`overlay_moved`)
/// instead of advising them: three quarters of the bound. Each overwrite takes an
/// `mmap_lock` writer where the `madvise` it replaces takes none, and the mark it acts
/// on is coarse (`region::MOVED_IN` spreads over merged free space), so the fewer the
/// better: in the `medium` workload's 400k-iteration run (BENCHMARKS.md, "movecap8")
/// overwriting from 2,048 made 70k overwrites, from 8,192 about 20k, from 12,288 7-11k
/// per 12-14k moves, with the same faults and at most 12k mappings. Short runs, and
/// the tests' steady states, never overwrite.
pub const OVERLAY_FROM: u64 = MAPPINGS_BOUND / 4 * 3;

/// The most mappings one move or one overwrite adds: a range laid inside one mapping
/// cuts it in three. (A move of an object that spans several mappings carries them all
/// and may add more; the census counts what the gauge missed.)
pub const SPLIT_CHARGE: u64 = 2;

/// After a census that finds the bound still reached, this many refused moves pass
/// before the next one: a census reads every mapping's line (16k lines: a few ms), and
/// this many copies of objects of 64 KiB or more fault at least as many pages.
const REFUSALS_PER_CENSUS: u64 = 1024;

/// Where the kernel lists the process's mappings, one line each.
const MAPS_PATH: &core::ffi::CStr = c"/proc/self/maps";

/// Bytes read from `MAPS_PATH` per call: a stack buffer (no allocation inside the
/// allocator), about 40 lines.
const READ_CHUNK: usize = 4096;

/// Upper bound on the mappings in our reservations: the last census, plus
/// `SPLIT_CHARGE` per move and overwrite since. Relaxed everywhere: a gauge that
/// publishes nothing.
static MAPPINGS: AtomicU64 = AtomicU64::new(0);
/// Moves refused since the last census that lifted the bound.
static REFUSED: AtomicU64 = AtomicU64::new(0);
/// One census at a time (Acquire/Release: the census's gauge update is seen by the next).
static CENSUS_BUSY: AtomicBool = AtomicBool::new(false);
/// Censuses taken (statistics).
static CENSUSES: AtomicU64 = AtomicU64::new(0);

/// Records a move or an overwrite in our reservations.
pub(crate) fn charge() {
    MAPPINGS.fetch_add(SPLIT_CHARGE, Ordering::Relaxed);
}

/// The gauge: at least the mappings in our reservations (as of the last census, give
/// or take the moves that ran beside it).
pub fn mappings() -> u64 {
    MAPPINGS.load(Ordering::Relaxed)
}

/// Censuses taken so far.
pub fn censuses() -> u64 {
    CENSUSES.load(Ordering::Relaxed)
}

/// Whether purges should overwrite the moved-in ranges they purge now.
#[inline]
pub fn overlay_moved() -> bool {
    #[cfg(test)]
    if PRETEND_OVERLAY_DUE.with(|c| c.get()) {
        return true;
    }
    MAPPINGS.load(Ordering::Relaxed) >= OVERLAY_FROM
}

#[cfg(test)]
std::thread_local! {
    static PRETEND_OVERLAY_DUE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Test-only: makes `overlay_moved` say yes on this thread, as with the gauge past
/// `OVERLAY_FROM`, without raising the process-wide gauge other tests read.
#[cfg(test)]
pub(crate) fn pretend_overlay_due(on: bool) {
    PRETEND_OVERLAY_DUE.with(|c| c.set(on));
}

/// Whether one more move may split mappings: below the bound, yes; at it, a census
/// (one thread at a time, at most once per `REFUSALS_PER_CENSUS` refusals) decides.
/// `is_ours` tells the addresses of our reservations. Without `/proc` the gauge only
/// grows, and moves stop at the bound for good, as the fixed budget did.
pub fn may_split(is_ours: impl Fn(usize) -> bool) -> bool {
    if mappings() < MAPPINGS_BOUND {
        return true;
    }
    if !REFUSED
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(REFUSALS_PER_CENSUS)
        || CENSUS_BUSY.swap(true, Ordering::Acquire)
    {
        return false;
    }
    let lifted = census(is_ours).is_some_and(|n| n < MAPPINGS_BOUND);
    if lifted {
        REFUSED.store(0, Ordering::Relaxed);
    }
    CENSUS_BUSY.store(false, Ordering::Release);
    lifted
}

/// Counts the mappings in our reservations (`/proc/self/maps` lines whose start
/// `is_ours`) and sets the gauge to that count plus the charges made while it read.
fn census(is_ours: impl Fn(usize) -> bool) -> Option<u64> {
    let before = MAPPINGS.load(Ordering::Relaxed);
    let counted = count_mappings(is_ours)?;
    CENSUSES.fetch_add(1, Ordering::Relaxed);
    let mut now = MAPPINGS.load(Ordering::Relaxed);
    loop {
        let set = counted.saturating_add(now.saturating_sub(before));
        match MAPPINGS.compare_exchange_weak(now, set, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(set),
            Err(seen) => now = seen,
        }
    }
}

/// The number of `/proc/self/maps` lines whose start address `is_ours`; `None` when the
/// file cannot be read. Allocates nothing.
pub fn count_mappings(is_ours: impl Fn(usize) -> bool) -> Option<u64> {
    let _errno = super::ErrnoGuard::save();
    let file = ProcFd::open(MAPS_PATH)?;
    let mut lines = LineStarts::default();
    let mut buf = [0u8; READ_CHUNK];
    let complete = loop {
        let n = file.read(&mut buf);
        if n < 0 {
            break false;
        }
        if n == 0 {
            break true;
        }
        lines.feed(&buf[..n as usize], &is_ours);
    };
    drop(file);
    complete.then_some(lines.ours)
}

/// The mapping holding `at`, as `(start, end)`; `None` when there is none or `/proc`
/// cannot be read. One `PROCMAP_QUERY` (6.11+), else a pass over `/proc/self/maps`.
/// Allocates nothing and takes no lock of the C library: the heap profiler asks it for
/// the stack a walk runs on, from inside `malloc`, where `pthread_getattr_np` (which
/// holds the thread's lock while it `malloc`s) could be the caller (review19 H1).
pub fn mapping_of(at: usize) -> Option<(usize, usize)> {
    let _errno = super::ErrnoGuard::save();
    let file = ProcFd::open(MAPS_PATH)?;
    if QUERY.load(Ordering::Relaxed) != 2 {
        match query(file.fd(), at) {
            Ok((start, end)) if start <= at && at < end => return Some((start, end)),
            Err(libc::ENOENT) => return None,
            _ => {} // an old kernel (now remembered) or an odd answer: read the text
        }
    }
    let mut lines = LineRanges {
        at,
        ..LineRanges::default()
    };
    let mut buf = [0u8; READ_CHUNK];
    while lines.found.is_none() {
        let n = file.read(&mut buf);
        if n <= 0 {
            break;
        }
        lines.feed(&buf[..n as usize]);
    }
    lines.found
}

/// Whether nothing readable lies right below `start` (the page before it is unmapped,
/// or mapped without read access: a guard page), as `PROCMAP_QUERY` says; false where
/// it cannot say (before 6.11, or no `/proc`). The heap profiler trusts a mapping as a
/// thread's whole stack only when it is closed off below (review19b H1).
pub fn closed_below(start: usize) -> bool {
    if start < super::PAGE_SIZE || QUERY.load(Ordering::Relaxed) == 2 {
        return false;
    }
    let _errno = super::ErrnoGuard::save();
    let Some(file) = ProcFd::open(MAPS_PATH) else {
        return false;
    };
    match ask(file.fd(), start - super::PAGE_SIZE) {
        Ok(q) => q.vma_flags & PROCMAP_QUERY_VMA_READABLE == 0,
        Err(errno) => errno == libc::ENOENT,
    }
}

/// `PROCMAP_QUERY_VMA_READABLE` of `<linux/fs.h>`.
const PROCMAP_QUERY_VMA_READABLE: u64 = 0x01;

/// Most mappings a source may span and still move, one `mremap` per mapping
/// (`os::move_pages`); a source of more is copied. An object that arrived by a move and
/// then grew in place spans two; each later move and growth may add one more.
pub const MOVE_PIECES: usize = 8;

/// The mappings a range spans (`pieces`): where each of its pieces ends, as an offset
/// from the range's start, in address order; the last is the range's length.
#[derive(Clone, Copy, Debug)]
pub struct Pieces {
    ends: [usize; MOVE_PIECES],
    count: usize,
}

impl Pieces {
    /// The pieces as `(offset, length)` from the range's start, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut start = 0;
        self.ends[..self.count].iter().map(move |&end| {
            let piece = (start, end - start);
            start = end;
            piece
        })
    }

    /// How many mappings the range spans.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// `struct procmap_query` of `<linux/fs.h>` (Linux 6.11): asks the kernel for the
/// mapping covering an address, through an ioctl on `/proc/self/maps`.
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `PROCMAP_QUERY`: `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong = (3 << 30)
    | ((core::mem::size_of::<ProcmapQuery>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 17;

/// 2 once `PROCMAP_QUERY` was refused as unknown (`ENOTTY`, `EINVAL`: before 6.11), a
/// property of the kernel: not asked again. 0 otherwise.
static QUERY: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// What `pieces` found.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// The range spans these mappings.
    Known(Pieces),
    /// The range spans more than `MOVE_PIECES` mappings, or has a hole.
    Several,
    /// The kernel could not say: no `/proc`, no `PROCMAP_QUERY` (before 6.11), no
    /// descriptor left, or a sandbox refused the call.
    Unknown,
}

impl Layout {
    /// The pieces, when known.
    pub fn known(self) -> Option<Pieces> {
        match self {
            Layout::Known(pieces) => Some(pieces),
            Layout::Several | Layout::Unknown => None,
        }
    }
}

/// The mappings `[addr, addr + len)` spans, asked of the kernel piece by piece
/// (`PROCMAP_QUERY`: one `open`, one `ioctl` per mapping and one `close`, measured at
/// 3 us for one mapping on a quiet machine; from 6.17 the kernel answers under the
/// mapping's own lock, no `mmap_lock`). Allocates nothing. The answer holds while
/// nothing changes the range's mappings: for an object, while its owner makes no call
/// on it (others' purges, moves and merges cut or join mappings only at their own
/// ranges' ends, outside it).
pub fn pieces(addr: usize, len: usize) -> Layout {
    #[cfg(test)]
    if super::inject::pretends_no_query() {
        return Layout::Unknown;
    }
    listed(addr, len)
}

/// `pieces` as the kernel answers, whatever a test pretends (`os::inject`'s simulated
/// old kernel asks it too).
pub(super) fn listed(addr: usize, len: usize) -> Layout {
    if QUERY.load(Ordering::Relaxed) == 2 {
        return Layout::Unknown;
    }
    let _errno = super::ErrnoGuard::save();
    let Some(file) = ProcFd::open(MAPS_PATH) else {
        return Layout::Unknown;
    };
    let fd = file.fd();
    let end = addr + len;
    let mut pieces = Pieces {
        ends: [0; MOVE_PIECES],
        count: 0,
    };
    let mut at = addr;
    let layout = loop {
        if at >= end {
            break Layout::Known(pieces);
        }
        if pieces.count == MOVE_PIECES {
            break Layout::Several;
        }
        let (vma_start, vma_end) = match query(fd, at) {
            Ok(vma) => vma,
            Err(libc::ENOENT) => break Layout::Several, // a hole at `at`
            Err(_) => break Layout::Unknown,
        };
        if vma_start > at || vma_end <= at {
            break Layout::Unknown;
        }
        let piece_end = vma_end.min(end);
        pieces.ends[pieces.count] = piece_end - addr;
        pieces.count += 1;
        at = piece_end;
    };
    drop(file);
    layout
}

/// The mapping covering `at`, as `(start, end)`, asked with one `PROCMAP_QUERY` on `fd`
/// (a `/proc/self/maps` descriptor); else the call's errno. A kernel that knows no
/// such query (`ENOTTY`, `EINVAL`) is not asked again (`QUERY`).
fn query(fd: libc::c_int, at: usize) -> Result<(usize, usize), i32> {
    ask(fd, at).map(|q| (q.vma_start as usize, q.vma_end as usize))
}

/// `query`'s `PROCMAP_QUERY`, the kernel's whole answer.
fn ask(fd: libc::c_int, at: usize) -> Result<ProcmapQuery, i32> {
    let mut q = ProcmapQuery {
        size: core::mem::size_of::<ProcmapQuery>() as u64,
        query_addr: at as u64,
        ..ProcmapQuery::default()
    };
    // SAFETY: the caller's descriptor; `q` is a valid `procmap_query` of the size it
    // states, and its name and build-id buffers are null with size 0 (not filled).
    if unsafe { libc::ioctl(fd, PROCMAP_QUERY as _, &mut q as *mut ProcmapQuery) } != 0 {
        let errno = super::errno();
        if matches!(errno, libc::ENOTTY | libc::EINVAL) {
            QUERY.store(2, Ordering::Relaxed); // no such query here
        }
        return Err(errno);
    }
    Ok(q)
}

/// Slots for the `/proc` descriptors open at one time (`ProcFd`); past them a caller
/// gets none and its question goes unanswered (its move copies or `mremap`s). One per
/// thread moving an object at the same moment: 64 covers the `medium` workload's 16
/// threads with room; a fork scans them all (64 loads).
const PROC_SLOTS: usize = 64;
/// A slot nobody holds.
const FREE: i32 = -1;
/// A slot taken, its descriptor being opened (then the slot holds the descriptor,
/// until it is closed).
const HELD: i32 = -2;
/// The slots: while a `fork` waits in `fork_prepare`, none is taken anew, and the fork
/// waits for the held ones to be freed, so a child inherits none of our descriptors.
/// (`O_CLOEXEC` covers `exec`, not `fork`: review14 F5 counted 509 of 2,000 children
/// inheriting one, which also holds the parent's address space for `pagemap`.)
static PROC_FDS: [AtomicI32; PROC_SLOTS] = [const { AtomicI32::new(FREE) }; PROC_SLOTS];
/// Forks between their prepare handler and their parent handler (0 in a child): a
/// count, not a flag, because glibc (2.36+) runs the handlers of concurrent forks
/// without a common lock, and one fork's parent handler must not reopen the door
/// while another's prepare has waited (review14b: 18-60 children in 1,200-1,500 forks
/// from 2-3 threads inherited a descriptor with a flag).
static FORKING: AtomicU32 = AtomicU32::new(0);
/// How long a fork waits for held descriptors (ms): a holder takes microseconds, but
/// one stopped by a signal must not hang the fork (its descriptor then leaks into that
/// child, as before the slots).
const FORK_WAIT_MS: u64 = 100;

/// Opens `path` read-only and close-on-exec by the raw system call (see `ProcFd`): the
/// descriptor, or -1. The caller closes it.
fn open_raw(path: &core::ffi::CStr) -> libc::c_int {
    // SAFETY: a NUL-terminated path.
    unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        ) as libc::c_int
    }
}

/// Reads the start of the file at `path` into `buf` by raw system calls, outside the
/// slots (`ProcFd`): for a question asked once per process whose answer is kept, which
/// must not fail because a `fork` is in progress (`os::kernel_thp`: the THP mode). A
/// fork at that moment may leave the descriptor in its child, as before the slots.
/// The bytes read, or a negative value.
pub(super) fn read_once(path: &core::ffi::CStr, buf: &mut [u8]) -> isize {
    let fd = open_raw(path);
    if fd < 0 {
        return -1;
    }
    let n = read_raw(fd, buf);
    close_raw(fd);
    n
}

/// Reads into `buf` from `fd` by the raw system call (not a cancellation point): the
/// bytes read, or a negative value.
fn read_raw(fd: libc::c_int, buf: &mut [u8]) -> isize {
    // SAFETY: `buf` is a valid writable buffer of the length passed.
    unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) as isize }
}

/// Closes `fd`, a descriptor of ours, by the raw system call.
fn close_raw(fd: libc::c_int) {
    // SAFETY: the caller's own descriptor, closed once.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// A `/proc` file of ours, open read-only and close-on-exec; closed on drop. Opened
/// and closed by the raw system calls: glibc's `open` and `close` are cancellation
/// points (a pending `pthread_cancel` would act inside `malloc`, review14 F4), and a
/// program may interpose them.
pub(super) struct ProcFd {
    fd: libc::c_int,
    slot: usize,
}

impl ProcFd {
    /// Opens `path`: `None` on failure, with no slot free, or while a fork waits.
    pub(super) fn open(path: &core::ffi::CStr) -> Option<ProcFd> {
        let slot = PROC_FDS.iter().position(|s| {
            s.compare_exchange(FREE, HELD, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        })?;
        // Against `fork_prepare`'s increment of `FORKING` then load of the slots (both
        // SeqCst): either it sees this slot held and waits, or this sees it forking.
        if FORKING.load(Ordering::SeqCst) != 0 {
            PROC_FDS[slot].store(FREE, Ordering::Release);
            return None;
        }
        let fd = open_raw(path); // closed on drop
        if fd < 0 {
            PROC_FDS[slot].store(FREE, Ordering::Release);
            return None;
        }
        // Where a fork child that inherited it after a timed-out wait finds it.
        PROC_FDS[slot].store(fd, Ordering::Release);
        Some(ProcFd { fd, slot })
    }

    pub(super) fn fd(&self) -> libc::c_int {
        self.fd
    }

    /// Reads into `buf` (`read_raw`).
    pub(super) fn read(&self, buf: &mut [u8]) -> isize {
        read_raw(self.fd, buf)
    }
}

impl Drop for ProcFd {
    fn drop(&mut self) {
        // The number leaves the slot before the close: a child forked after a timed-out
        // wait never closes a number another thread has reopened for a file of its own
        // (at worst it inherits this descriptor).
        PROC_FDS[self.slot].store(HELD, Ordering::SeqCst);
        close_raw(self.fd);
        // Freed after the close: a fork that waited for it inherits no descriptor.
        PROC_FDS[self.slot].store(FREE, Ordering::Release);
    }
}

/// `pthread_atfork` prepare handler, before any allocator lock is taken (a holder may
/// be waiting for one): no descriptor is opened from now until `fork_done`, and the
/// held ones are waited for (up to `FORK_WAIT_MS`).
pub fn fork_prepare() {
    FORKING.fetch_add(1, Ordering::SeqCst);
    let start = super::now_ms();
    while PROC_FDS.iter().any(|s| s.load(Ordering::SeqCst) != FREE) {
        if super::now_ms().saturating_sub(start) > FORK_WAIT_MS {
            break;
        }
        // SAFETY: plain syscall.
        unsafe { libc::sched_yield() };
    }
}

/// `pthread_atfork` parent and child handler: descriptors may be opened again once no
/// fork is between its handlers. In the
/// child (`child`), whatever slot is still held belonged to a thread that is gone (its
/// holder outlasted the fork's wait): its descriptor, if it had one yet, is closed, and
/// the slot freed.
pub fn fork_done(child: bool) {
    if child {
        for s in &PROC_FDS {
            let fd = s.swap(FREE, Ordering::Relaxed);
            if fd >= 0 {
                close_raw(fd); // ours; its holder does not exist here
            }
        }
        // The child's only thread: the forks of the parent's other threads are not its.
        FORKING.store(0, Ordering::SeqCst);
    } else {
        FORKING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether `[addr, addr + len)` lies inside one kernel mapping that reaches beyond it
/// (one `PROCMAP_QUERY`); false when it does not or the kernel cannot say. An object
/// of ours inside one of our reservations' mappings qualifies; a range the program
/// registered with a userfaultfd does not, because a registration makes its range a
/// mapping of its own (a program cannot register part of our reservation without
/// registering memory it does not own), and neither does an object whose pages were
/// moved in by `mremap` and kept their own mapping.
pub fn inside_a_larger_mapping(addr: usize, len: usize) -> bool {
    #[cfg(test)]
    if super::inject::pretends_no_query() {
        return false;
    }
    if QUERY.load(Ordering::Relaxed) == 2 {
        return false;
    }
    let _errno = super::ErrnoGuard::save();
    let Some(file) = ProcFd::open(MAPS_PATH) else {
        return false;
    };
    let Ok((start, end)) = query(file.fd(), addr) else {
        return false;
    };
    start <= addr && end >= addr + len && (start < addr || end > addr + len)
}

/// Parses the start address (hex digits up to `-`) of each line of a maps file fed in
/// pieces, and counts the lines whose start `is_ours`.
#[derive(Default)]
struct LineStarts {
    /// The start address read so far on this line.
    start: usize,
    /// Past this line's start address (skipping to its end).
    in_rest: bool,
    ours: u64,
}

impl LineStarts {
    fn feed(&mut self, bytes: &[u8], is_ours: &impl Fn(usize) -> bool) {
        for &b in bytes {
            if b == b'\n' {
                self.start = 0;
                self.in_rest = false;
            } else if !self.in_rest {
                match (b as char).to_digit(16) {
                    Some(d) => self.start = (self.start << 4) | d as usize,
                    None => {
                        self.in_rest = true;
                        if is_ours(self.start) {
                            self.ours += 1;
                        }
                    }
                }
            }
        }
    }
}

/// Parses each line's range (`start-end`, hex) of a maps file fed in pieces, and keeps
/// the first that holds `at`.
#[derive(Default)]
struct LineRanges {
    at: usize,
    /// The number being read on this line, and whether it is the end (after `-`).
    value: usize,
    start: usize,
    in_end: bool,
    /// Past this line's range (skipping to its end).
    in_rest: bool,
    found: Option<(usize, usize)>,
}

impl LineRanges {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                (self.value, self.in_end, self.in_rest) = (0, false, false);
            } else if !self.in_rest {
                match (b as char).to_digit(16) {
                    Some(d) => self.value = (self.value << 4) | d as usize,
                    None if !self.in_end && b == b'-' => {
                        (self.start, self.value, self.in_end) = (self.value, 0, true);
                    }
                    None => {
                        self.in_rest = true;
                        let range = (self.start, self.value);
                        if self.in_end && range.0 <= self.at && self.at < range.1 {
                            self.found.get_or_insert(range);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ranges_are_parsed_across_pieces() {
        let text = b"7f0000000000-7f0000400000 rw-p 7f0000000 00:00 0 \n\
                     7f0000400000-7f0000500000 rw-p 00000000 00:00 0\n\
                     555555554000-555555556000 r--p 00000000 08:01 42 /bin/x\n";
        for (at, want) in [
            (0x7f0000400000, Some((0x7f0000400000, 0x7f0000500000))),
            (0x7f00003fffff, Some((0x7f0000000000, 0x7f0000400000))),
            (0x555555555000, Some((0x555555554000, 0x555555556000))),
            (0x7f0000500000, None),
        ] {
            for cut in 0..text.len() {
                let mut lines = LineRanges {
                    at,
                    ..LineRanges::default()
                };
                lines.feed(&text[..cut]);
                lines.feed(&text[cut..]);
                assert_eq!(lines.found, want, "at {at:#x}, cut at {cut}");
            }
        }
    }

    /// A mapping is closed off below by a hole or a page without read access, not by a
    /// readable mapping (here each case splits one private mapping of four pages).
    #[test]
    fn closed_below_tells_guards_and_holes_from_readable_neighbours() {
        let page = crate::os::PAGE_SIZE;
        // SAFETY: a fresh private mapping of four pages, changed and unmapped only here.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let at = |i: usize| base as usize + i * page;
        // Page 1 read-only: a readable neighbour below page 2's mapping.
        // SAFETY: pages of the mapping above.
        assert_eq!(
            unsafe { libc::mprotect(at(1) as *mut _, page, libc::PROT_READ) },
            0
        );
        if mapping_of(at(1)) != Some((at(1), at(2))) {
            // SAFETY: as above.
            unsafe { libc::munmap(base, 4 * page) };
            return; // the kernel cannot say (no PROCMAP_QUERY, no /proc): nothing to test
        }
        let readable_below = closed_below(at(2));
        // Page 1 a guard (no access): closed.
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::mprotect(at(1) as *mut _, page, libc::PROT_NONE) },
            0
        );
        let guard_below = closed_below(at(2));
        // Page 1 unmapped: closed.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::munmap(at(1) as *mut _, page) }, 0);
        let hole_below = closed_below(at(2));
        // SAFETY: the pages of the mapping left.
        unsafe {
            libc::munmap(base, page);
            libc::munmap(at(2) as *mut _, 2 * page);
        }
        if QUERY.load(Ordering::Relaxed) != 2 {
            assert!(!readable_below, "a readable page below");
            assert!(guard_below, "a guard page below");
            assert!(hole_below, "nothing mapped below");
        }
    }

    #[test]
    fn the_mapping_of_a_stack_address_holds_it() {
        let local = 0u64;
        let at = &local as *const u64 as usize;
        let (start, end) = mapping_of(at).expect("/proc/self/maps");
        assert!(start <= at && at < end, "{start:#x}..{end:#x} for {at:#x}");
        assert_eq!(mapping_of(8), None, "page 0 is never mapped");
    }

    #[test]
    fn line_starts_are_parsed_across_pieces() {
        let text = b"7f0000000000-7f0000400000 rw-p 7f0000000 00:00 0 \n\
                     7f0000400000-7f0000500000 rw-p 00000000 00:00 0\n\
                     555555554000-555555556000 r--p 00000000 08:01 42 /bin/x\n";
        for cut in 0..text.len() {
            let mut lines = LineStarts::default();
            let ours = |a: usize| a >> 40 == 0x7f;
            lines.feed(&text[..cut], &ours);
            lines.feed(&text[cut..], &ours);
            assert_eq!(lines.ours, 2, "cut at {cut}");
        }
    }

    #[test]
    fn the_census_counts_this_process_mappings() {
        let all = count_mappings(|_| true).expect("/proc/self/maps");
        assert!(all >= 3, "{all} mappings");
        assert_eq!(count_mappings(|_| false), Some(0));
    }
}
