//! What a `fork` costs the parent in page faults: after `fork`, every page either process
//! writes first is copied, so the fork handlers' unlocks must touch few pages. Until
//! session 12 they locked and unlocked all 64 arenas' writer mutexes, 37 KiB apart, used
//! or not: 64 faults a fork in the parent (72 measured in a C program under
//! `LD_PRELOAD`, where glibc's malloc takes 2), and as many in every child. (A file of its
//! own: the fault count is the whole process's, so no other test may run beside it.)

use rangealloc::RangeAlloc;
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const FORKS: u64 = 50;
/// Faults a fork may cost the parent: its handlers' locks (the metadata lock, the heap
/// lists, every heap's region cache, the arenas in use, the profiler's), a stack page or
/// two, and the C library's own (2 a fork with glibc's malloc). The 64 arenas' mutexes
/// alone were 64.
const MAX_FAULTS_PER_FORK: u64 = 24;

#[test]
fn a_fork_touches_only_the_arenas_in_use() {
    // One large object (an arena in use) and a small one, kept live across the forks.
    let large = Layout::from_size_align(1 << 20, 16).unwrap();
    let small = Layout::from_size_align(64, 16).unwrap();
    // SAFETY: valid non-zero layouts; both freed below.
    let (p, q) = unsafe { (A.alloc(large), A.alloc(small)) };
    assert!(!p.is_null() && !q.is_null());
    // A first fork outside the count: the handlers' first run may fault their own pages in.
    let fork_and_wait = || {
        // SAFETY: the child only calls `_exit`, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    };
    fork_and_wait();
    let before = rangealloc_tests::minor_faults(libc::RUSAGE_SELF);
    for _ in 0..FORKS {
        fork_and_wait();
    }
    let per_fork = (rangealloc_tests::minor_faults(libc::RUSAGE_SELF) - before) / FORKS;
    eprintln!("{per_fork} page faults in the parent per fork");
    // SAFETY: live, allocated above with these layouts.
    unsafe {
        A.dealloc(p, large);
        A.dealloc(q, small);
    }
    assert!(
        per_fork <= MAX_FAULTS_PER_FORK,
        "{per_fork} page faults in the parent per fork (at most {MAX_FAULTS_PER_FORK})"
    );
}
