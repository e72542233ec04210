//! Whether this process is still the one the engine saw start, or a copy of it restored
//! from a checkpoint (CRIU), told by the start time the kernel reports for it (field 22
//! of its first thread's `/proc/self/task/<pid>/stat`): a restored process is a new
//! task, with a new start
//! time, while our memory (where the first one was noted) comes back as it was. Owns
//! that note and the latch set once a restore is seen; calls `maps` (its `/proc`
//! descriptors), `os` (errno, number parsing) and `libc` (`getpid`).
//!
//! Why it matters: a sparse copy (`pagemap`) reads an absent page as zero, which it is
//! not while a userfaultfd monitor still has to fill it, and CRIU's lazy restore
//! (`--lazy-pages`) registers whole mappings so and fills them on first touch. A sparse
//! copy in such a process would lose the pages not filled yet, so once a restore is
//! seen the engine makes none for the rest of the process (`large::copies_sparse_first`,
//! asked again after each sparse copy, which a checkpoint taken during it undoes), nor
//! do its fork children, and moves copy or carry every page. A fork child notes its own
//! start (`note_start` from the engine's fork handler); a child made without the
//! handlers (a raw `clone`) reads as restored and only loses sparse copies.
//! The kernel counts start times in clock ticks (10 ms): a copy started within the tick
//! its original started in is not told apart, which a restore never is (it follows a
//! checkpoint of a process that ran).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The start time noted for this process and the latch.
static NOTE: StartNote = StartNote::new();

/// No start time noted: no sparse copy is trusted.
const UNNOTED: u64 = u64::MAX;

/// A noted start time, in clock ticks since boot (as the kernel reports it), and the
/// latch set for good once a start time read differs from it.
struct StartNote {
    /// `UNNOTED` before the engine's set-up or when it could not be read.
    started_at: AtomicU64,
    restored: AtomicBool,
}

impl StartNote {
    const fn new() -> Self {
        StartNote {
            started_at: AtomicU64::new(UNNOTED),
            restored: AtomicBool::new(false),
        }
    }

    /// Notes a start; the latch stays: a child of a restored process may be filled
    /// lazily too (CRIU's monitor follows forks).
    fn note(&self, now: Option<u64>) {
        // Relaxed: read back by the same process's moves, which come after the set-up
        // (ordered by its `ProcessOnce`) or in the fork child's only thread.
        self.started_at
            .store(now.unwrap_or(UNNOTED), Ordering::Relaxed);
    }

    /// `read` is called only when nothing is latched and a start was noted.
    fn is_same(&self, read: impl FnOnce() -> Option<u64>) -> bool {
        // Relaxed: a latch and a value noted before any move (see `note`).
        if self.restored.load(Ordering::Relaxed) {
            return false;
        }
        let noted = self.started_at.load(Ordering::Relaxed);
        if noted == UNNOTED {
            return false;
        }
        match read() {
            Some(now) if now == noted => true,
            Some(_) => {
                self.restored.store(true, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }
}

/// Notes this process's start time: at the engine's set-up and in a fork child, before
/// any object of the process can move. A fork's prepare handler asks `same_process`
/// first, so a restored parent that never moved an object latches before its child
/// notes a start of its own.
pub fn note_start() {
    NOTE.note(read_start());
}

/// Whether this process is the one whose start was noted: false once it has been
/// restored from a checkpoint (latched), and false (without latching) while its start
/// time cannot be read. Four system calls (`getpid`, `open`, `read`, `close`), whatever
/// the number of threads; for moves only, after the copy they vouch for.
pub fn same_process() -> bool {
    NOTE.is_same(read_start)
}

/// Whether sparse copies may be tried at all: a start was noted and no restore seen
/// yet. One load: the copy is checked by `same_process` after it is made, which is
/// enough (a restore before or during it shows then, and the source is untouched).
#[inline]
pub fn not_seen_restored() -> bool {
    // Relaxed: a latch and a value noted before any move (see `StartNote::note`).
    !NOTE.restored.load(Ordering::Relaxed) && NOTE.started_at.load(Ordering::Relaxed) != UNNOTED
}

/// This process's start time as the kernel reports it now: its first thread's
/// (`/proc/self/task/<pid>/stat`, the process's own start), because `/proc/self/stat`
/// sums the times of every thread, a walk that costs 0.4 ms at 4,000 threads.
fn read_start() -> Option<u64> {
    let _errno = super::ErrnoGuard::save();
    // SAFETY: no arguments; it cannot fail.
    let pid = unsafe { libc::getpid() };
    let mut path = [0u8; 48];
    let path = leader_stat_path(pid as u32, &mut path)?;
    let file = super::maps::ProcFd::open(path)?;
    // The line is at most 52 fields of 20 digits and a name of 64 bytes.
    let mut buf = [0u8; 1536];
    let mut len = 0;
    while len < buf.len() {
        let n = file.read(&mut buf[len..]);
        if n <= 0 {
            break;
        }
        len += n as usize;
        if buf[len - 1] == b'\n' {
            break; // the whole line: no read to learn of its end
        }
    }
    start_time_of(&buf[..len])
}

/// `/proc/self/task/<pid>/stat`, NUL-terminated, in `buf`.
fn leader_stat_path(pid: u32, buf: &mut [u8; 48]) -> Option<&core::ffi::CStr> {
    const HEAD: &[u8] = b"/proc/self/task/";
    const TAIL: &[u8] = b"/stat\0";
    let mut digits = [0u8; 20];
    let mut len = 0;
    for &b in HEAD
        .iter()
        .chain(super::decimal(u64::from(pid), &mut digits))
        .chain(TAIL)
    {
        buf[len] = b;
        len += 1;
    }
    core::ffi::CStr::from_bytes_with_nul(&buf[..len]).ok()
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted from
/// the last `)`.
fn start_time_of(line: &[u8]) -> Option<u64> {
    let close = line.iter().rposition(|&b| b == b')')?;
    // After the name: field 3 (`state`) is the first, so `starttime` is the 20th.
    let field = line[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(19)?;
    if field.is_empty() || field.len() > 19 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        field
            .iter()
            .fold(0, |acc, &b| acc * 10 + u64::from(b - b'0')),
    )
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_counted_past_the_name() {
        let line = b"4242 (a) b) (c d) S 1 4242 4242 0 -1 4194560 105 0 0 0 0 0 0 0 20 0 1 0 \
                     98765 4468736 214 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
        assert_eq!(start_time_of(line), Some(98765));
        assert_eq!(start_time_of(b"4242 (a) S 1 2"), None);
        assert_eq!(start_time_of(b"no name here"), None);
    }

    #[test]
    fn the_leaders_stat_path_is_built_without_allocating() {
        let mut buf = [0u8; 48];
        let path = leader_stat_path(4_294_967_295, &mut buf).unwrap();
        assert_eq!(path.to_bytes(), b"/proc/self/task/4294967295/stat");
        let path = leader_stat_path(7, &mut buf).unwrap();
        assert_eq!(path.to_bytes(), b"/proc/self/task/7/stat");
    }

    /// The process's start as the kernel reports it (read here with std from
    /// `/proc/self/stat`), and stable across reads, from any thread.
    #[test]
    fn the_start_time_read_is_the_kernels() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after = &text[text.rfind(')').unwrap() + 1..];
        let expected: u64 = after.split_whitespace().nth(19).unwrap().parse().unwrap();
        assert_eq!(read_start(), Some(expected));
        assert_eq!(read_start(), Some(expected));
        let other = std::thread::spawn(read_start).join().unwrap();
        assert_eq!(other, Some(expected));
    }

    /// A start time that differs from the noted one latches `is_same` false for good,
    /// through later notes (a fork child's); one that cannot be read does not latch.
    #[test]
    fn a_different_start_time_latches_for_good() {
        let note = StartNote::new();
        assert!(!note.is_same(|| Some(7)), "nothing noted yet");
        note.note(Some(7));
        assert!(note.is_same(|| Some(7)));
        assert!(!note.is_same(|| None));
        assert!(note.is_same(|| Some(7)));
        note.note(None);
        assert!(!note.is_same(|| Some(7)), "the start could not be read");
        note.note(Some(7));
        assert!(!note.is_same(|| Some(8)));
        assert!(!note.is_same(|| Some(7)), "latched");
        note.note(Some(8));
        assert!(!note.is_same(|| Some(8)), "latched through a child's note");
    }
}
