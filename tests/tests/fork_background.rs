//! Issue 17 follow-up: the background purger in a fork child. Only the forking thread
//! survives `fork`, so a child of a process that ran the background purger had none: its
//! free memory stayed resident while it made no allocator calls. The engine now starts
//! the purger again at the child's first purge tick. Checked in a child process (the
//! option is read once per process), which forks a grandchild that frees 16 MiB and then
//! makes no allocator call at all: its RSS must fall while it sleeps.

use rangealloc::RangeAlloc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const MIB: usize = 1 << 20;
/// Freed by the grandchild: below the dirty budget's floor, so only the purge delay's
/// pass returns it.
const FREED: usize = 16 * MIB;
/// Most of it must come back (the rest: what else the pass leaves resident).
const MUST_RETURN: usize = 12 * MIB;
/// A purge delay short against the grandchild's wait.
const OPTIONS: &str = "background_purge=1,purge_delay_ms=40";
/// Time the grandchild gives the purger: 25 of its 40 ms delays (its first pass after
/// the delay comes within a quarter of it, or the purger's sleep of at most a second).
const WAIT: Duration = Duration::from_millis(1000);
/// A healthy run takes about a second; this leaves room for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// Exit codes of the grandchild.
const OK: i32 = 0;
const KEPT: i32 = 1;

/// Resident bytes from `/proc/self/statm`, read without allocating (the grandchild must
/// make no allocator call while it waits).
fn rss_without_alloc() -> usize {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; `buf` is ours, its length passed.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0);
        let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        libc::close(fd);
        n
    };
    assert!(n > 0);
    let text = &buf[..n as usize];
    let field = text
        .split(|&b| b == b' ')
        .nth(1)
        .expect("statm's resident field");
    let pages = field
        .iter()
        .fold(0usize, |acc, &d| acc * 10 + (d - b'0') as usize);
    pages * 4096
}

/// In the grandchild: frees 16 MiB (its first purge tick, which restarts the purger),
/// then sleeps without allocating; returns the exit code.
fn grandchild() -> i32 {
    let v = vec![1u8; FREED];
    drop(std::hint::black_box(v));
    let before = rss_without_alloc();
    let pause = libc::timespec {
        tv_sec: WAIT.as_secs() as libc::time_t,
        tv_nsec: WAIT.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid timespec; an early wake-up only shortens the wait.
    unsafe { libc::nanosleep(&pause, core::ptr::null_mut()) };
    let after = rss_without_alloc();
    if before.saturating_sub(after) >= MUST_RETURN {
        OK
    } else {
        KEPT
    }
}

#[test]
fn child_entry() {
    if std::env::var("RANGEALLOC_TEST_CHILD").as_deref() != Ok("fork") {
        return; // only meaningful when spawned by the test below
    }
    // The purger starts with the process (the option); wait until it has.
    let deadline = Instant::now() + DEADLINE;
    while !rangealloc::engine::reclaim::BACKGROUND_STARTED.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "the background purger never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: the grandchild allocates through the engine, reads /proc, sleeps and
    // calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = grandchild();
        // SAFETY: ends the grandchild without running the harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: polling, then killing and reaping, our own child.
    unsafe {
        while libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 {
            if Instant::now() > deadline {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    println!("FORK code={code}");
}

#[test]
fn a_fork_child_gets_its_background_purger_back() {
    let out = rangealloc_tests::run_child("fork", Some(OPTIONS));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The harness prints the child's line after the test's name.
    let line = stdout
        .lines()
        .find_map(|l| l.find("FORK ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    assert_eq!(
        line,
        format!("FORK code={OK}"),
        "the fork child's free memory stayed resident while it made no allocator call \
         (code {KEPT}: kept; -1: died or hung)"
    );
}
