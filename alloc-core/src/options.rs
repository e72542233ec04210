//! Options: read once from `RANGEALLOC_OPTIONS=key=value,...` without allocating.
//! Owns the parsed options; calls `os` (for warnings) and `libc::getenv`.
//!
//! Unknown keys and bad values print one warning on stderr and keep the default.

use crate::os::{self, PurgeMode};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, Ordering};

/// jemalloc's `dirty_decay_ms` defaults to 10 s, mimalloc's purge delay to 10 ms; we
/// keep free pages one second, which lets a steady workload reuse them without faults
/// while idle memory goes back within seconds.
pub const DEFAULT_PURGE_DELAY_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub purge_delay_ms: u64,
    pub purge_mode: PurgeMode,
    pub background_purge: bool,
    pub secure: bool,
    pub stats_at_exit: bool,
    pub verbose: bool,
    /// Heap profiling (`prof`): sample allocations and record their stacks.
    pub prof: bool,
    /// Mean bytes between samples (`prof_sample`).
    pub prof_sample: u64,
    /// Where profiles go (`prof_dump=PREFIX`): `PREFIX.<pid>.final.heap` at exit, and
    /// `PREFIX.<pid>.<seq>.heap` for each dump asked for without a file name.
    pub prof_dump: Option<DumpPrefix>,
    /// At exit, print the call stacks still holding the most memory (`prof_leak`).
    pub prof_leak: bool,
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

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

pub const DEFAULTS: Options = Options {
    purge_delay_ms: DEFAULT_PURGE_DELAY_MS,
    purge_mode: PurgeMode::DontNeed,
    background_purge: false,
    secure: false,
    stats_at_exit: false,
    verbose: false,
    prof: false,
    prof_sample: DEFAULT_PROF_SAMPLE,
    prof_dump: None,
    prof_leak: false,
};

/// The options, parsed once. Not a `OnceLock`: a fork child whose parent had a thread
/// inside `OnceLock::set` would wait forever on the lock's `Once`, and this cell can be
/// repaired instead (`after_fork_in_child`).
static OPTIONS: ParseOnce = ParseOnce::new();

/// The options in force. The first call parses the environment; calls on other threads
/// while it does see the defaults (parsing is a few microseconds, on the first
/// allocation of the process).
pub fn get() -> Options {
    OPTIONS.get_or_parse(from_env)
}

/// In a fork child: a parse the parent's vanished thread had begun starts over.
pub fn after_fork_in_child() {
    OPTIONS.after_fork_in_child();
}

/// A value parsed once, without locks: `state` 0 = not parsed, 1 = parsing, 2 = parsed.
struct ParseOnce {
    state: AtomicU8,
    value: UnsafeCell<Options>,
}

// SAFETY: `value` is written only by the thread that moved `state` from 0 to 1, before
// its Release store of 2, and read only after an Acquire load of 2; never written again.
unsafe impl Sync for ParseOnce {}

impl ParseOnce {
    const fn new() -> Self {
        ParseOnce {
            state: AtomicU8::new(0),
            value: UnsafeCell::new(DEFAULTS),
        }
    }

    #[inline]
    fn get_or_parse(&self, parse: impl FnOnce() -> Options) -> Options {
        if self.state.load(Ordering::Acquire) == 2 {
            // SAFETY: published by the Release store of 2 (see `Sync`).
            return unsafe { *self.value.get() };
        }
        self.parse_now(parse)
    }

    #[cold]
    fn parse_now(&self, parse: impl FnOnce() -> Options) -> Options {
        match self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                let parsed = parse();
                // SAFETY: we moved `state` to 1: nobody else writes or reads `value`.
                unsafe { *self.value.get() = parsed };
                self.state.store(2, Ordering::Release);
                parsed
            }
            // SAFETY: as in `get_or_parse`.
            Err(2) => unsafe { *self.value.get() },
            Err(_) => DEFAULTS,
        }
    }

    fn after_fork_in_child(&self) {
        let _ = self
            .state
            .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

fn from_env() -> Options {
    // SAFETY: getenv with a NUL-terminated name; the result is read before any setenv
    // by this thread could change it.
    let value = unsafe { libc::getenv(c"RANGEALLOC_OPTIONS".as_ptr()) };
    if value.is_null() {
        return DEFAULTS;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    let bytes = unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes();
    parse(bytes, &mut |msg: &[&[u8]]| {
        os::write_stderr(b"rangealloc: warning: ");
        for part in msg {
            os::write_stderr(part);
        }
        os::write_stderr(b"\n");
    })
}

/// Parses an option string, reporting each problem through `warn`.
pub fn parse(text: &[u8], warn: &mut dyn FnMut(&[&[u8]])) -> Options {
    let mut o = DEFAULTS;
    for item in text.split(|&b| b == b',').filter(|s| !s.is_empty()) {
        let Some(eq) = item.iter().position(|&b| b == b'=') else {
            warn(&[b"option '", item, b"' has no '=value'; ignored"]);
            continue;
        };
        let (key, value) = (&item[..eq], &item[eq + 1..]);
        let ok = match key {
            b"purge_delay_ms" => parse_u64(value).map(|v| o.purge_delay_ms = v).is_some(),
            b"purge_mode" => parse_mode(value).map(|v| o.purge_mode = v).is_some(),
            b"background_purge" => parse_bool(value).map(|v| o.background_purge = v).is_some(),
            b"secure" => parse_bool(value).map(|v| o.secure = v).is_some(),
            b"stats" => parse_bool(value).map(|v| o.stats_at_exit = v).is_some(),
            b"verbose" => parse_bool(value).map(|v| o.verbose = v).is_some(),
            b"prof" => parse_bool(value).map(|v| o.prof = v).is_some(),
            b"prof_sample" => parse_u64(value)
                .filter(|&v| v > 0)
                .map(|v| o.prof_sample = v)
                .is_some(),
            b"prof_dump" => DumpPrefix::new(value)
                .map(|v| o.prof_dump = Some(v))
                .is_some(),
            b"prof_leak" => parse_bool(value).map(|v| o.prof_leak = v).is_some(),
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
    fn parses_once_and_a_fork_child_restarts_an_interrupted_parse() {
        let verbose = Options {
            verbose: true,
            ..DEFAULTS
        };
        let cell = ParseOnce::new();
        assert_eq!(cell.get_or_parse(|| verbose), verbose);
        assert_eq!(cell.get_or_parse(|| unreachable!("parsed once")), verbose);
        // A thread of the parent was parsing at fork (state 1) and does not exist in the
        // child: without the repair every call would see the defaults for good.
        let interrupted = ParseOnce::new();
        interrupted.state.store(1, Ordering::Relaxed);
        assert_eq!(interrupted.get_or_parse(|| verbose), DEFAULTS);
        interrupted.after_fork_in_child();
        assert_eq!(interrupted.get_or_parse(|| verbose), verbose);
        // The repair leaves a finished parse alone.
        cell.after_fork_in_child();
        assert_eq!(cell.get_or_parse(|| DEFAULTS), verbose);
    }

    fn parse_collect(text: &str) -> (Options, usize) {
        let mut warnings = 0;
        let o = parse(text.as_bytes(), &mut |_| warnings += 1);
        (o, warnings)
    }

    #[test]
    fn every_option_parses() {
        let (o, w) = parse_collect(
            "purge_delay_ms=250,purge_mode=free,background_purge=1,secure=on,stats=true,verbose=yes",
        );
        assert_eq!(w, 0);
        assert_eq!(o.purge_delay_ms, 250);
        assert_eq!(o.purge_mode, PurgeMode::Free);
        assert!(o.background_purge && o.secure && o.stats_at_exit && o.verbose);
        let (o, w) = parse_collect("prof=1,prof_sample=65536,prof_dump=/tmp/x/heap,prof_leak=1");
        assert_eq!(w, 0);
        assert!(o.prof && o.prof_leak);
        assert_eq!(o.prof_sample, 65536);
        assert_eq!(o.prof_dump.unwrap().as_bytes(), b"/tmp/x/heap");
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
            "prof_sample=0",
            "prof_dump=",
            "prof=maybe",
        ] {
            let (o, w) = parse_collect(bad);
            assert_eq!(o, DEFAULTS, "{bad}");
            assert_eq!(w, 1, "{bad}");
        }
        let (o, w) = parse_collect(",,stats=1,,bogus,");
        assert!(o.stats_at_exit);
        assert_eq!(w, 1);
    }
}
