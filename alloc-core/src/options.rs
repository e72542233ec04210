//! Options: read once, without allocating, from the program's own option strings
//! (C's `rangealloc_conf`, Rust's `RangeAlloc::with_options`) and then from
//! `RANGEALLOC_OPTIONS=key=value,...`, whose keys override the program's one by one.
//! Owns the parsed options and the run-time overrides of the few that may change while
//! the program runs (`live`); calls `os` (for warnings and the kernel's THP mode),
//! `thread` (`ProcessOnce`) and `libc::getenv`.
//!
//! Unknown keys and bad values print one warning on stderr and keep the default.

use crate::os::{self, PurgeMode};
use crate::thread::ProcessOnce;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// jemalloc's `dirty_decay_ms` defaults to 10 s, mimalloc's purge delay to 10 ms; we
/// keep free pages one second, which lets a steady workload reuse them without faults
/// while idle memory goes back within seconds.
pub const DEFAULT_PURGE_DELAY_MS: u64 = 1000;

/// The fixed part of the dirty budget (`purge::dirty_budget` adds a quarter of the live
/// large bytes): one 64 MiB buffer's worth kept for reuse whatever the program's size
/// (the region workload's biggest).
pub const DEFAULT_DIRTY_BUDGET: usize = 64 << 20;

/// The largest `narenas` (see `region::arenas::MAX_ARENAS`, which is this, for why).
pub const MAX_ARENAS: usize = 64;

/// A purge delay that never comes: free pages stay until an explicit purge or the dirty
/// budget sends them back (jemalloc's `dirty_decay_ms = -1`).
pub const PURGE_NEVER: u64 = u64::MAX;

/// The allocator's options (see the README's table for each key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// `purge_delay_ms`: how long free pages stay dirty before they are purged.
    pub purge_delay_ms: u64,
    /// `purge_mode`: `MADV_DONTNEED` or `MADV_FREE`.
    pub purge_mode: PurgeMode,
    /// `purge_batch`: a purge pass advises its pieces with one `process_madvise` call
    /// (one TLB flush) where the kernel allows it (`os::purge_many`).
    pub purge_batch: bool,
    /// `background_purge`: a thread purges even when the program makes no calls.
    pub background_purge: bool,
    /// `secure`: a guard page after every large object.
    pub secure: bool,
    /// `sparse_moves`: a large object that must move and holds bytes in few pages is
    /// copied sparsely (`large::copies_sparse_first`, no `mmap_lock` writer), not in a
    /// process restored from a checkpoint (`os::checkpoint`).
    pub sparse_moves: bool,
    /// `medium_remap`: a large object below `large::HUGE_OBJECT_MIN` that must move
    /// (and is not copied sparsely) moves its pages with `mremap` (one `mmap_lock`
    /// writer) instead of being copied (`large::may_remap`).
    pub medium_remap: bool,
    /// `calloc_prefault`: a zero-filled large object on fresh pages is faulted in before
    /// it is returned while sampled ones show the program writes such objects whole
    /// (`large::prefault`).
    pub calloc_prefault: bool,
    /// `stats`: print the statistics report on stderr at exit.
    pub stats_at_exit: bool,
    /// `verbose`: report allocations that fail for lack of memory.
    pub verbose: bool,
    /// `dirty_budget_mb` (held in bytes): the fixed part of the dirty budget, free dirty
    /// space kept (beside a quarter of the live large bytes) before dirty space is purged
    /// at once, down to an eighth under the budget (`purge::low_water`).
    pub dirty_budget: usize,
    /// Heap profiling (`prof`): sample allocations and record their stacks.
    pub prof: bool,
    /// Mean bytes between samples (`prof_sample`).
    pub prof_sample: u64,
    /// Where profiles go (`prof_dump=PREFIX`): `PREFIX.<pid>.final.heap` at exit, and
    /// `PREFIX.<pid>.<seq>.heap` for each dump asked for without a file name.
    pub prof_dump: Option<DumpPrefix>,
    /// At exit, print the call stacks still holding the most memory (`prof_leak`).
    pub prof_leak: bool,
    /// `prof_unwind_phdr`: the stack walk finds unwind tables through `dl_iterate_phdr`
    /// only, as it must where glibc has no `_dl_find_object` (before 2.35, static
    /// programs); a switch to test that path on a newer glibc.
    pub prof_unwind_phdr: bool,
    /// `thp`: transparent huge pages for big large objects (`thp()` is what applies).
    pub thp: ThpOption,
    /// `narenas`: region-table arenas large objects and segments are placed in (1 to
    /// `region::arenas::MAX_ARENAS`); 0, the default, means four per online CPU.
    pub narenas: usize,
}

/// The `thp` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThpOption {
    /// Large objects of `HUGE_OBJECT_MIN` and more go to reservations of their own,
    /// on 2 MiB boundaries, marked `MADV_HUGEPAGE` once when the kernel's mode is
    /// `madvise` (with `always` they get huge pages unasked; with `never`, nothing
    /// changes).
    Auto,
    /// One space for everything, no huge-page advice, no 2 MiB placement.
    Never,
}

/// What the `thp` option and the kernel's mode make of huge pages (`thp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thp {
    /// Off (the option or the kernel says never).
    Off,
    /// Huge space, marked `MADV_HUGEPAGE` at reservation (kernel mode `madvise`).
    Advise,
    /// Huge space, unmarked: the kernel gives huge pages to every mapping (`always`).
    Unasked,
}

/// jemalloc's `lg_prof_sample` default (2^19 = 512 KiB): about two samples per MiB
/// allocated, which keeps the unwinding cost well below the allocation cost itself.
pub const DEFAULT_PROF_SAMPLE: u64 = 1 << 19;

/// The longest `prof_dump` prefix: options are parsed without allocating, so the prefix
/// is kept inline; 255 bytes hold any realistic directory plus a name.
pub const DUMP_PREFIX_MAX: usize = 255;

/// A `prof_dump` path prefix, stored inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpPrefix {
    len: u8,
    bytes: [u8; DUMP_PREFIX_MAX],
}

impl DumpPrefix {
    /// `None` if `text` is empty or longer than `DUMP_PREFIX_MAX`.
    pub fn new(text: &[u8]) -> Option<Self> {
        if text.is_empty() || text.len() > DUMP_PREFIX_MAX {
            return None;
        }
        let mut bytes = [0; DUMP_PREFIX_MAX];
        bytes[..text.len()].copy_from_slice(text);
        Some(DumpPrefix {
            len: text.len() as u8,
            bytes,
        })
    }

    /// The prefix's bytes, as given in the option (no terminating NUL).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// The options of a program that sets none.
pub const DEFAULTS: Options = Options {
    purge_delay_ms: DEFAULT_PURGE_DELAY_MS,
    purge_mode: PurgeMode::DontNeed,
    // Measured on the 2-core VM (BENCHMARKS.md, "medpurge11"): one TLB shootdown per
    // pass instead of one per piece.
    purge_batch: true,
    background_purge: false,
    secure: false,
    // On since session 17. A sparse copy skips the source's absent pages as zero,
    // which they are not where a userfaultfd monitor fills them on first touch and
    // covers more than the object, as CRIU's lazy restore does (review14b: every such
    // page was lost). No cheap call tells a range so registered, but a restored process
    // is a new task with a new start time, so sparse copies stop for good once a move
    // sees one (`os::checkpoint`). Measured with `medium_remap` off (BENCHMARKS.md,
    // "Session 17"): the `medium` workload 20-35% faster than moving pages by `mremap`
    // and 2.6-3x faster than copying every page.
    sparse_moves: true,
    // Off since session 17 (issue 16: no process-wide lock on the large path in
    // steady state): below 4 MiB, an object that must move and is not copied sparsely
    // is copied whole, where `mremap` takes `mmap_lock` for write. Dense sources are
    // rare (0-4 of ~500 moves in the `medium` churn). BENCHMARKS.md, "Session 17".
    medium_remap: false,
    // On since session 18: a program that reads a fresh zeroed object before writing
    // it maps the shared zero page, and each write then replaces it with a TLB flush
    // that interrupts every other CPU running the process. Prefaulting follows
    // evidence (sampled objects found written whole), so a program that leaves its
    // zeroed objects sparse keeps them lazy. BENCHMARKS.md, "Session 18".
    calloc_prefault: true,
    stats_at_exit: false,
    verbose: false,
    dirty_budget: DEFAULT_DIRTY_BUDGET,
    prof: false,
    prof_sample: DEFAULT_PROF_SAMPLE,
    prof_dump: None,
    prof_leak: false,
    prof_unwind_phdr: false,
    // Measured on the 2-core VM (BENCHMARKS.md, "THP by default"): on a quiet machine huge
    // pages make big-buffers 3x faster (0.14-0.27x jemalloc against 0.46-0.59x, with
    // mimalloc, which advises huge pages too, at 0.14-0.19x) and leave the other
    // workloads unchanged. The session-5 measurement that chose `never` ran at load
    // 6-14, where clearing fresh 2 MiB frames the VM's host had not backed yet dominated.
    thp: ThpOption::Auto,
    narenas: 0,
};

/// The options, parsed once. Not a `OnceLock`: a fork child whose parent had a thread
/// inside `OnceLock::set` would wait forever on the lock's `Once`; `ProcessOnce` lets
/// the child parse again instead.
static OPTIONS: ParseOnce = ParseOnce::new();

/// The options as parsed at start (the program's string, then the environment). The
/// first call parses (the engine makes that call in its process set-up, `init`, before
/// any heap or large object exists); a call on another thread while the parse runs
/// waits for it, so no allocation ever works with defaults the environment overrides.
/// The run-time setters do not change this value: `current` includes them.
pub fn get() -> Options {
    OPTIONS.get_or_parse(from_env)
}

/// The options in force now: `get` with the run-time overrides applied.
pub fn current() -> Options {
    Options {
        purge_delay_ms: purge_delay_ms(),
        background_purge: background_purge(),
        stats_at_exit: stats_at_exit(),
        dirty_budget: dirty_budget(),
        ..get()
    }
}

/// `Thp` not resolved yet (the other values are `Thp as u8`).
const THP_UNKNOWN: u8 = u8::MAX;
static THP: AtomicU8 = AtomicU8::new(THP_UNKNOWN);

/// Huge pages as the `thp` option and the kernel's mode (read once) make them.
#[inline]
pub fn thp() -> Thp {
    // Relaxed: a cache of a value every thread computes the same way.
    match THP.load(Ordering::Relaxed) {
        0 => Thp::Off,
        1 => Thp::Advise,
        2 => Thp::Unasked,
        _ => resolve_thp(),
    }
}

#[cold]
#[inline(never)]
fn resolve_thp() -> Thp {
    let thp = match (get().thp, os::kernel_thp()) {
        (ThpOption::Never, _) | (_, os::KernelThp::Never) => Thp::Off,
        (ThpOption::Auto, os::KernelThp::Madvise) => Thp::Advise,
        (ThpOption::Auto, os::KernelThp::Always) => Thp::Unasked,
    };
    THP.store(thp as u8, Ordering::Relaxed);
    thp
}

/// True once the options have been parsed (after which a code option string comes too
/// late to count).
#[inline]
pub fn parsed() -> bool {
    OPTIONS.once.is_done()
}

// ---------------------------------------------------------------------------------------
// The program's own option string: `RangeAlloc::with_options("...")` in Rust, the
// `rangealloc_conf` symbol in C. Handed over once before the first parse.
// ---------------------------------------------------------------------------------------

static CODE_TEXT: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static CODE_LEN: AtomicUsize = AtomicUsize::new(0);

/// Gives the engine the option string compiled into the program. It is parsed with the
/// environment at the first parse (the environment's keys win); malformed items warn
/// once on stderr then, like the environment's. Returns false when the options were
/// already parsed (the string then has no effect) or another string was given first.
pub fn set_code_options(text: &'static [u8]) -> bool {
    if parsed() {
        return false;
    }
    // Relaxed: the length is published by the Release exchange of the pointer below.
    CODE_LEN.store(text.len(), Ordering::Relaxed);
    // Release: pairs with the Acquire load in `code_options`, which then sees the length.
    CODE_TEXT
        .compare_exchange(
            core::ptr::null_mut(),
            text.as_ptr().cast_mut(),
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// The program's option string, if one was given.
fn code_options() -> Option<&'static [u8]> {
    // Acquire: pairs with the Release in `set_code_options` (the length is visible).
    let text = CODE_TEXT.load(Ordering::Acquire);
    if text.is_null() {
        return None;
    }
    let len = CODE_LEN.load(Ordering::Relaxed);
    // SAFETY: `text` and `len` come from a `&'static [u8]` given to `set_code_options`.
    Some(unsafe { core::slice::from_raw_parts(text, len) })
}

// ---------------------------------------------------------------------------------------
// C's `rangealloc_conf` (jemalloc's `malloc_conf`): `const char *rangealloc_conf =
// "purge_delay_ms=200";` in the program. Looked up here, at the parse, as an undefined
// weak symbol, so no front end has to hand it over first: a program linked with
// `-lrangealloc` exports its definition automatically (the library references it);
// under `LD_PRELOAD` alone the executable must export it (`-rdynamic`), since
// executables export only the symbols a library they link references. In a Rust
// program without such a symbol the linker resolves the reference to null.
// ---------------------------------------------------------------------------------------

// The weak reference, read through the GOT: stable Rust has no weak extern statics. A
// hidden global so that the declaration below binds in any codegen unit, without being
// exported from `librangealloc.so`.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".weak rangealloc_conf",
    ".pushsection .text.rangealloc_conf_slot,\"ax\",@progbits",
    ".globl rangealloc_conf_slot",
    ".hidden rangealloc_conf_slot",
    ".type rangealloc_conf_slot,@function",
    ".p2align 4",
    "rangealloc_conf_slot:",
    "    mov rax, qword ptr [rip + rangealloc_conf@GOTPCREL]",
    "    ret",
    ".size rangealloc_conf_slot, . - rangealloc_conf_slot",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    /// The address of the program's `rangealloc_conf` variable, or null.
    fn rangealloc_conf_slot() -> *const *const core::ffi::c_char;
}

/// The program's `rangealloc_conf` string, if it defines one (x86_64 only).
fn program_conf() -> Option<&'static [u8]> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the function only loads a GOT entry.
        let slot = unsafe { rangealloc_conf_slot() };
        if slot.is_null() {
            return None;
        }
        // SAFETY: `slot` is the address of the program's `const char *` variable.
        let text = unsafe { slot.read() };
        if text.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated string that lives as long as the program (a string
        // literal, by the contract documented in rangealloc.h).
        Some(unsafe { core::ffi::CStr::from_ptr(text) }.to_bytes())
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

// ---------------------------------------------------------------------------------------
// Run-time overrides: options that can change safely while the program runs. Each is a
// value plus a flag saying it was set; until then the parsed option holds. The engine
// reads them on slow paths only (purge ticks, the background thread, exit).
// ---------------------------------------------------------------------------------------

/// One run-time override.
struct Live {
    set: AtomicBool,
    value: AtomicU64,
}

impl Live {
    const fn new() -> Self {
        Live {
            set: AtomicBool::new(false),
            value: AtomicU64::new(0),
        }
    }

    #[inline]
    fn get(&self, parsed: u64) -> u64 {
        // Acquire: pairs with the Release in `put`, so the value read is the one set
        // (or a later one). No other data hangs off it.
        if self.set.load(Ordering::Acquire) {
            self.value.load(Ordering::Relaxed)
        } else {
            parsed
        }
    }

    fn put(&self, value: u64) {
        // Relaxed, then Release on the flag: see `get`. Two setters racing leave one of
        // their values, either of which is a valid setting.
        self.value.store(value, Ordering::Relaxed);
        self.set.store(true, Ordering::Release);
    }
}

static LIVE_PURGE_DELAY: Live = Live::new();
static LIVE_BACKGROUND: Live = Live::new();
static LIVE_STATS_AT_EXIT: Live = Live::new();
static LIVE_DIRTY_BUDGET: Live = Live::new();

/// The purge delay in force (ms; `PURGE_NEVER` for never).
pub fn purge_delay_ms() -> u64 {
    LIVE_PURGE_DELAY.get(get().purge_delay_ms)
}

/// Whether the background purger should purge now.
pub fn background_purge() -> bool {
    LIVE_BACKGROUND.get(get().background_purge as u64) != 0
}

/// Whether the report is printed at exit.
pub fn stats_at_exit() -> bool {
    LIVE_STATS_AT_EXIT.get(get().stats_at_exit as u64) != 0
}

/// The fixed part of the dirty budget in force, in bytes.
pub fn dirty_budget() -> usize {
    LIVE_DIRTY_BUDGET.get(get().dirty_budget as u64) as usize
}

/// Stores a run-time purge delay (the caller, `tuning`, applies side effects).
pub fn put_purge_delay_ms(ms: u64) {
    LIVE_PURGE_DELAY.put(ms);
}

/// Stores the run-time background-purge switch.
pub fn put_background_purge(on: bool) {
    LIVE_BACKGROUND.put(on as u64);
}

/// Stores the run-time stats-at-exit switch.
pub fn put_stats_at_exit(on: bool) {
    LIVE_STATS_AT_EXIT.put(on as u64);
}

/// Stores a run-time dirty budget, in bytes.
pub fn put_dirty_budget(bytes: usize) {
    LIVE_DIRTY_BUDGET.put(bytes as u64);
}

/// A value parsed once, without locks or allocation.
struct ParseOnce {
    once: ProcessOnce,
    value: UnsafeCell<Options>,
}

// SAFETY: `value` is written only by the thread `once.begin()` chose, before its
// `finish` (Release), and read only after `is_done`/`begin` saw it done (Acquire). A
// fork child that takes over a parse its parent's thread had begun writes it again
// while nobody else in the child can read it (they wait in `begin`).
unsafe impl Sync for ParseOnce {}

impl ParseOnce {
    const fn new() -> Self {
        ParseOnce {
            once: ProcessOnce::new(),
            value: UnsafeCell::new(DEFAULTS),
        }
    }

    #[inline]
    fn get_or_parse(&self, parse: impl FnOnce() -> Options) -> Options {
        if !self.once.is_done() {
            self.parse_now(parse);
        }
        // SAFETY: done, and published by `finish` (see `Sync`).
        unsafe { *self.value.get() }
    }

    #[cold]
    fn parse_now(&self, parse: impl FnOnce() -> Options) {
        if self.once.begin() {
            let parsed = parse();
            // SAFETY: `begin` chose us: nobody else writes or reads `value` until
            // `finish`.
            unsafe { *self.value.get() = parsed };
            self.once.finish();
        }
    }
}

/// The program's option strings (C's `rangealloc_conf`, then Rust's `with_options`),
/// then the environment's on top of them, key by key.
fn from_env() -> Options {
    let mut base = DEFAULTS;
    for text in [program_conf(), code_options()].into_iter().flatten() {
        base = parse_onto(base, text, &mut |msg| {
            warn(b"in the program's options: ", msg)
        });
    }
    // SAFETY: getenv with a NUL-terminated name; the result is read before any setenv
    // by this thread could change it.
    let value = unsafe { libc::getenv(c"RANGEALLOC_OPTIONS".as_ptr()) };
    if value.is_null() {
        return base;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    let bytes = unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes();
    parse_onto(base, bytes, &mut |msg| warn(b"", msg))
}

fn warn(source: &[u8], msg: &[&[u8]]) {
    os::write_stderr(b"rangealloc: warning: ");
    os::write_stderr(source);
    for part in msg {
        os::write_stderr(part);
    }
    os::write_stderr(b"\n");
}

/// Parses an option string over the defaults, reporting each problem through `warn`.
pub fn parse(text: &[u8], warn: &mut dyn FnMut(&[&[u8]])) -> Options {
    parse_onto(DEFAULTS, text, warn)
}

/// Parses an option string over `base`: each key given replaces `base`'s value.
pub fn parse_onto(base: Options, text: &[u8], warn: &mut dyn FnMut(&[&[u8]])) -> Options {
    let mut o = base;
    for item in text.split(|&b| b == b',').filter(|s| !s.is_empty()) {
        let Some(eq) = item.iter().position(|&b| b == b'=') else {
            warn(&[b"option '", item, b"' has no '=value'; ignored"]);
            continue;
        };
        let (key, value) = (&item[..eq], &item[eq + 1..]);
        let ok = match key {
            b"purge_delay_ms" => parse_u64(value).map(|v| o.purge_delay_ms = v).is_some(),
            b"purge_mode" => parse_mode(value).map(|v| o.purge_mode = v).is_some(),
            b"purge_batch" => parse_bool(value).map(|v| o.purge_batch = v).is_some(),
            b"background_purge" => parse_bool(value).map(|v| o.background_purge = v).is_some(),
            b"secure" => parse_bool(value).map(|v| o.secure = v).is_some(),
            b"sparse_moves" => parse_bool(value).map(|v| o.sparse_moves = v).is_some(),
            b"medium_remap" => parse_bool(value).map(|v| o.medium_remap = v).is_some(),
            b"calloc_prefault" => parse_bool(value).map(|v| o.calloc_prefault = v).is_some(),
            b"stats" => parse_bool(value).map(|v| o.stats_at_exit = v).is_some(),
            b"verbose" => parse_bool(value).map(|v| o.verbose = v).is_some(),
            b"dirty_budget_mb" => parse_u64(value)
                .and_then(|mb| usize::try_from(mb).ok()?.checked_mul(MIB))
                .map(|v| o.dirty_budget = v)
                .is_some(),
            b"prof" => parse_bool(value).map(|v| o.prof = v).is_some(),
            b"prof_sample" => parse_u64(value)
                .filter(|&v| v > 0)
                .map(|v| o.prof_sample = v)
                .is_some(),
            b"prof_dump" => DumpPrefix::new(value)
                .map(|v| o.prof_dump = Some(v))
                .is_some(),
            b"prof_leak" => parse_bool(value).map(|v| o.prof_leak = v).is_some(),
            b"prof_unwind_phdr" => parse_bool(value).map(|v| o.prof_unwind_phdr = v).is_some(),
            b"thp" => parse_thp(value).map(|v| o.thp = v).is_some(),
            b"narenas" => parse_u64(value)
                // 0: the default (four per CPU), as the README's options table says.
                .filter(|&v| v <= MAX_ARENAS as u64)
                .map(|v| o.narenas = v as usize)
                .is_some(),
            _ => {
                warn(&[b"unknown option '", key, b"'; ignored"]);
                continue;
            }
        };
        if !ok {
            warn(&[
                b"bad value '",
                value,
                b"' for option '",
                key,
                b"'; default kept",
            ]);
        }
    }
    o
}

const MIB: usize = 1 << 20;

fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 18 {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as u64)
    })
}

fn parse_mode(text: &[u8]) -> Option<PurgeMode> {
    match text {
        b"dontneed" => Some(PurgeMode::DontNeed),
        b"free" => Some(PurgeMode::Free),
        _ => None,
    }
}

fn parse_thp(text: &[u8]) -> Option<ThpOption> {
    match text {
        b"auto" => Some(ThpOption::Auto),
        b"never" => Some(ThpOption::Never),
        _ => None,
    }
}

fn parse_bool(text: &[u8]) -> Option<bool> {
    match text {
        b"1" | b"true" | b"on" | b"yes" => Some(true),
        b"0" | b"false" | b"off" | b"no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_once() {
        let verbose = Options {
            verbose: true,
            ..DEFAULTS
        };
        let cell = ParseOnce::new();
        assert_eq!(cell.get_or_parse(|| verbose), verbose);
        assert_eq!(cell.get_or_parse(|| unreachable!("parsed once")), verbose);
    }

    /// Issue 13, item 10: a thread that asks for the options while another parses them
    /// must get the parsed values, never the defaults. The first parse is held (the
    /// hook is the parse function itself) until the second reader has asked; before
    /// the fix the reader got `DEFAULTS` at once.
    #[test]
    fn a_reader_during_the_parse_waits_for_the_parsed_values() {
        use std::sync::atomic::{AtomicU8, Ordering};
        use std::sync::Arc;
        const PARSING: u8 = 1;
        const RELEASED: u8 = 2;
        let verbose = Options {
            verbose: true,
            ..DEFAULTS
        };
        let cell = Arc::new(ParseOnce::new());
        let step = Arc::new(AtomicU8::new(0));
        let parser = {
            let (cell, step) = (cell.clone(), step.clone());
            std::thread::spawn(move || {
                cell.get_or_parse(|| {
                    step.store(PARSING, Ordering::Release);
                    while step.load(Ordering::Acquire) != RELEASED {
                        std::thread::yield_now();
                    }
                    verbose
                })
            })
        };
        while step.load(Ordering::Acquire) != PARSING {
            std::thread::yield_now();
        }
        let waits_before = crate::thread::tests::WAITS.load(Ordering::Relaxed);
        let reader = {
            let cell = cell.clone();
            std::thread::spawn(move || cell.get_or_parse(|| unreachable!("parsed once")))
        };
        // Release the parse once the reader is waiting for it (or, with a cell that
        // does not wait, has already returned).
        while !reader.is_finished()
            && crate::thread::tests::WAITS.load(Ordering::Relaxed) == waits_before
        {
            std::thread::yield_now();
        }
        step.store(RELEASED, Ordering::Release);
        assert_eq!(
            reader.join().unwrap(),
            verbose,
            "the reader saw the defaults"
        );
        assert_eq!(parser.join().unwrap(), verbose);
    }

    /// A fork child whose parent's thread was parsing (and does not exist in the child)
    /// parses again instead of waiting forever or keeping the defaults.
    #[test]
    fn a_parse_cut_off_by_fork_is_redone() {
        let verbose = Options {
            verbose: true,
            ..DEFAULTS
        };
        let cell = ParseOnce::new();
        cell.once.begun_by_another_process();
        assert_eq!(cell.get_or_parse(|| verbose), verbose);
    }

    fn parse_collect(text: &str) -> (Options, usize) {
        let mut warnings = 0;
        let o = parse(text.as_bytes(), &mut |_| warnings += 1);
        (o, warnings)
    }

    #[test]
    fn every_option_parses() {
        let (o, w) = parse_collect(
            "purge_delay_ms=250,purge_mode=free,background_purge=1,secure=on,stats=true,verbose=yes,dirty_budget_mb=3",
        );
        assert_eq!(w, 0);
        assert_eq!(o.purge_delay_ms, 250);
        assert_eq!(o.dirty_budget, 3 << 20);
        assert_eq!(o.purge_mode, PurgeMode::Free);
        assert!(o.background_purge && o.secure && o.stats_at_exit && o.verbose);
        let (o, w) = parse_collect("prof=1,prof_sample=65536,prof_dump=/tmp/x/heap,prof_leak=1");
        assert_eq!(w, 0);
        assert!(o.prof && o.prof_leak);
        assert_eq!(o.prof_sample, 65536);
        assert_eq!(o.prof_dump.unwrap().as_bytes(), b"/tmp/x/heap");
        assert_eq!(parse_collect("thp=auto"), (DEFAULTS, 0));
        assert_eq!(
            parse_collect("thp=never"),
            (
                Options {
                    thp: ThpOption::Never,
                    ..DEFAULTS
                },
                0
            )
        );
        let (o, w) = parse_collect("narenas=3");
        assert_eq!(w, 0);
        assert_eq!(o.narenas, 3);
        // 0 is the default (four per CPU), as README's options table says.
        let (o, w) = parse_collect("narenas=3,narenas=0");
        assert_eq!(w, 0);
        assert_eq!(o.narenas, DEFAULTS.narenas);
    }

    #[test]
    fn malformed_strings_warn_and_keep_defaults() {
        for bad in [
            "purge_delay_ms=-1",
            "purge_delay_ms=",
            "purge_mode=maybe",
            "secure",
            "nonsense=1",
            "stats=2",
            "purge_delay_ms=99999999999999999999",
            "dirty_budget_mb=x",
            "prof_sample=0",
            "prof_dump=",
            "prof=maybe",
            "thp=always",
            "narenas=65",
        ] {
            let (o, w) = parse_collect(bad);
            assert_eq!(o, DEFAULTS, "{bad}");
            assert_eq!(w, 1, "{bad}");
        }
        let (o, w) = parse_collect(",,stats=1,,bogus,");
        assert!(o.stats_at_exit);
        assert_eq!(w, 1);
    }

    /// The environment's keys override the program's one by one; the others stay.
    #[test]
    fn a_second_string_overrides_key_by_key() {
        let mut warnings = 0;
        let code = parse(b"purge_delay_ms=200,stats=1", &mut |_| warnings += 1);
        let o = parse_onto(code, b"purge_delay_ms=5,verbose=1", &mut |_| warnings += 1);
        assert_eq!(warnings, 0);
        assert_eq!(o.purge_delay_ms, 5);
        assert!(o.stats_at_exit && o.verbose);
        assert!(!o.secure);
    }

    #[test]
    fn a_live_override_wins_over_the_parsed_value_once_set() {
        let live = Live::new();
        assert_eq!(live.get(7), 7);
        live.put(3);
        assert_eq!(live.get(7), 3);
    }
}
