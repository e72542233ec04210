//! Options: read once from `RANGEALLOC_OPTIONS=key=value,...` without allocating.
//! Owns the parsed options; calls `os` (for warnings) and `libc::getenv`.
//!
//! Unknown keys and bad values print one warning on stderr and keep the default.

use crate::os::{self, PurgeMode};
use crate::thread::ProcessOnce;
use core::cell::UnsafeCell;

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
}

pub const DEFAULTS: Options = Options {
    purge_delay_ms: DEFAULT_PURGE_DELAY_MS,
    purge_mode: PurgeMode::DontNeed,
    background_purge: false,
    secure: false,
    stats_at_exit: false,
    verbose: false,
};

/// The options, parsed once. Not a `OnceLock`: a fork child whose parent had a thread
/// inside `OnceLock::set` would wait forever on the lock's `Once`; `ProcessOnce` lets
/// the child parse again instead.
static OPTIONS: ParseOnce = ParseOnce::new();

/// The options in force. The first call parses the environment (the engine makes that
/// call in its process set-up, `init`, before any heap or large object exists); a call
/// on another thread while the parse runs waits for it, so no allocation ever works
/// with defaults the environment overrides.
pub fn get() -> Options {
    OPTIONS.get_or_parse(from_env)
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
            "purge_delay_ms=250,purge_mode=free,background_purge=1,secure=on,stats=true,verbose=yes",
        );
        assert_eq!(w, 0);
        assert_eq!(o.purge_delay_ms, 250);
        assert_eq!(o.purge_mode, PurgeMode::Free);
        assert!(o.background_purge && o.secure && o.stats_at_exit && o.verbose);
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
