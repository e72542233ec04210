//! Memory the kernel charges to this process, read from `/proc/self/status` (Linux):
//! the resident set now (`VmRSS`) and its high-water mark (`VmHWM`); and the page
//! faults it has taken (`getrusage`), a cost that does not depend on machine load.

use std::fs;

/// Resident-set sizes in KiB, as the kernel reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rss {
    pub peak_kib: u64,
    pub current_kib: u64,
}

/// Reads both counters; zero where the file or a field is missing (not Linux).
pub fn rss() -> Rss {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    Rss {
        peak_kib: field_kib(&status, "VmHWM:").unwrap_or(0),
        current_kib: field_kib(&status, "VmRSS:").unwrap_or(0),
    }
}

/// Minor page faults taken so far by every thread of this process (`ru_minflt` of
/// `RUSAGE_SELF`, which sums live and exited threads); `None` if the call fails.
pub fn minor_faults() -> Option<u64> {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid out-pointer for the duration of the call.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    ok.then_some(usage.ru_minflt as u64)
}

/// The value of a `Name:   1234 kB` line.
fn field_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(field_kib(text, "VmHWM:"), Some(2048));
        assert_eq!(field_kib(text, "VmRSS:"), Some(1024));
        assert_eq!(field_kib(text, "VmSwap:"), None);
    }

    #[test]
    fn own_process_has_resident_memory() {
        let r = rss();
        assert!(r.peak_kib >= r.current_kib && r.current_kib > 0);
    }

    #[test]
    fn touching_fresh_pages_counts_faults() {
        const PAGES: usize = 64;
        let before = minor_faults().unwrap();
        let mut v = vec![0u8; PAGES * 4096];
        for page in v.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&v);
        assert!(minor_faults().unwrap() >= before + PAGES as u64 / 2);
    }
}
