//! Home-arena tickets (`region::arenas`): a new thread takes the ticket the fewest live
//! threads hold and hands it back at its exit, as jemalloc binds a thread to its
//! least-loaded arena. Until session 15 tickets were dealt round-robin: threads that come
//! and go (mimalloc-bench's `mstress` starts fresh threads every round) visited every
//! arena in turn, each keeping its own dirty space, and placed in fresh memory while the
//! space their predecessors freed sat in other arenas (5x the faults, 2.5x the peak RSS
//! of one arena). One test function, in a file of its own: no other thread of this
//! process takes or hands back tickets meanwhile.

use rangealloc::engine::region::arenas::ticket_holders;
use rangealloc::engine::region::ARENAS;
use rangealloc::RangeAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

/// A big object outside the medium classes and the region cache (freed, it goes back
/// to its arena's free space, dirty), below huge-page space.
const BIG: usize = 2 << 20;

fn big() -> Layout {
    Layout::from_size_align(BIG, 16).unwrap()
}

fn held() -> u32 {
    ticket_holders(ARENAS.count()).sum()
}

/// On a new thread: places a big object, writes it, frees it; returns the thread's home
/// arena and the object's address.
fn place_write_free() -> (usize, usize) {
    std::thread::spawn(|| {
        // SAFETY: a valid layout; the object is written within its length, freed once.
        unsafe {
            let p = A.alloc(big());
            assert!(!p.is_null());
            p.write_bytes(7, BIG);
            A.dealloc(p, big());
            (ARENAS.home(), p as usize)
        }
    })
    .join()
    .unwrap()
}

#[test]
fn threads_take_the_least_held_ticket_and_hand_it_back() {
    // This thread's ticket first (the harness's threads may hold others).
    // SAFETY: a valid layout, freed at once.
    unsafe { A.dealloc(A.alloc(big()), big()) };
    let main_home = ARENAS.home();
    let base = held();

    // A thread that exited left its arena, and its freed space, to the next one.
    let (first_home, first) = place_write_free();
    assert_eq!(held(), base, "the exited thread still holds its ticket");
    let (second_home, second) = place_write_free();
    assert_ne!(first_home, main_home, "a new thread shares a held arena");
    assert_eq!(
        second_home, first_home,
        "the next thread went to another arena than the one the last left"
    );
    assert_eq!(
        second, first,
        "the next thread did not reuse the freed space"
    );

    // Live threads spread: each takes a ticket no one holds while there is one.
    let count = ARENAS.count();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
    let mut homes = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..count - 1 {
        let (home_tx, home_rx) = mpsc::channel();
        let done_rx = done_rx.clone();
        threads.push(std::thread::spawn(move || {
            // SAFETY: as above.
            unsafe { A.dealloc(A.alloc(big()), big()) };
            home_tx.send(ARENAS.home()).unwrap();
            let _ = done_rx.lock().unwrap().recv();
        }));
        homes.push(home_rx.recv().unwrap());
    }
    assert_eq!(held(), base + count as u32 - 1, "homes {homes:?}");
    let mut distinct = homes.clone();
    distinct.push(main_home);
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        count,
        "{count} live threads, homes {homes:?} and {main_home}"
    );

    // A fork child has one thread: it holds only its own ticket.
    // SAFETY: the child calls only async-signal-safe functions and the allocator, whose
    // fork handlers made it safe to use there, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = held() == 1 && ticket_holders(ARENAS.count()).nth(main_home) == Some(1);
        // SAFETY: ending the child without running the parent's exit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the fork child counts its parent's other threads' tickets (status {status:#x})"
    );

    drop(done_tx);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(held(), base, "exited threads still hold their tickets");
}
