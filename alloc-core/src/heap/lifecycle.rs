//! Heap lifecycle: creating a heap or adopting an abandoned one for a starting thread,
//! giving a heap up, and the heap lists' part of `fork`. Owns the global heap lists;
//! calls `meta`, `slow` (trim), `repair` (an orphan's rebuild), `reclaim` (its fork
//! hooks), `large::cache` (an abandoned heap's cache flushed, a child's cached regions
//! counted) and `thread`. The thread and process events that drive it
//! (first allocation, the exit hook, the fork handlers) are `init`'s.
//!
//! A heap is never freed: a dying thread trims it (empty pages and segments go back)
//! and pushes it on the abandoned stack, and the next new thread adopts it whole. Under
//! thread churn the number of heaps stays at the peak number of live threads, and
//! blocks other threads free into an abandoned heap are collected by its adopter.
//!
//! In a `fork` child, the heaps of the parent's other threads are orphans: their owners
//! do not exist here and may have stopped half way through an update. The child only
//! lists them (an array in metadata memory, no write into any heap: a child about to
//! `exec` would pay a copy-on-write fault per heap and segment); a thread that adopts
//! one rebuilds it first (`repair`).

use super::{repair, slow, Heap, PageQueue, CLASSES};
use crate::large::cache::{self, RegionCache};
use crate::sync::SpinLock;
use crate::{meta, thread};
use core::ptr;

struct HeapLists {
    all: *mut Heap,
    abandoned: *mut Heap,
    count: usize,
    abandoned_count: usize,
    /// Heaps orphaned by the last `fork` and not adopted yet: `orphans[..orphan_count]`
    /// (metadata memory, `orphan_capacity` entries).
    orphans: *mut *mut Heap,
    orphan_count: usize,
    orphan_capacity: usize,
}

// SAFETY: the heap pointers are only followed under the lock.
unsafe impl Send for HeapLists {}

static HEAPS: SpinLock<HeapLists> = SpinLock::new(HeapLists {
    all: ptr::null_mut(),
    abandoned: ptr::null_mut(),
    count: 0,
    abandoned_count: 0,
    orphans: ptr::null_mut(),
    orphan_count: 0,
    orphan_capacity: 0,
});

/// Heap counts: created, and currently abandoned (waiting for adoption; in a fork child
/// this includes the parent's other threads' heaps).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapCounts {
    pub heaps: usize,
    pub abandoned: usize,
}

pub fn heap_counts() -> HeapCounts {
    let lists = HEAPS.lock();
    HeapCounts {
        heaps: lists.count,
        abandoned: lists.abandoned_count + lists.orphan_count,
    }
}

/// A heap for a starting thread: an abandoned one if any (adopted whole), else an
/// orphan of a `fork` (rebuilt first), else a new one. Null when out of metadata memory.
pub fn adopt_or_create() -> *mut Heap {
    let orphan = {
        let mut lists = HEAPS.lock();
        let heap = lists.abandoned;
        if !heap.is_null() {
            // SAFETY: abandoned heaps are live and linked only here.
            lists.abandoned = unsafe { (*heap).abandoned_next };
            lists.abandoned_count -= 1;
            return heap;
        }
        if lists.orphan_count > 0 {
            lists.orphan_count -= 1;
            // SAFETY: the first `orphan_count` entries of the array are set.
            unsafe { *lists.orphans.add(lists.orphan_count) }
        } else {
            ptr::null_mut()
        }
    };
    if !orphan.is_null() {
        // SAFETY: taken off the orphan list under the lock, so it is ours alone; its
        // owner was a thread of the parent process.
        unsafe { repair::rebuild_orphan(orphan) };
        return orphan;
    }
    let heap =
        meta::alloc(core::mem::size_of::<Heap>(), core::mem::align_of::<Heap>()) as *mut Heap;
    if heap.is_null() {
        return heap;
    }
    // SAFETY: fresh metadata memory sized and aligned for a Heap.
    unsafe {
        heap.write(Heap {
            current: super::CurrentPages::new(),
            counts: super::ClassCounts::new(),
            queues: [PageQueue {
                first: ptr::null_mut(),
                last: ptr::null_mut(),
            }; CLASSES],
            pending: super::page::PendingPages::new(),
            segments: ptr::null_mut(),
            segments_lock: super::reclaim::SegmentsLock::new(),
            next_purge_ms: 0,
            all_next: ptr::null_mut(),
            abandoned_next: ptr::null_mut(),
            region_cache: SpinLock::new(RegionCache::new()),
        });
        let mut lists = HEAPS.lock();
        (*heap).all_next = lists.all;
        lists.all = heap;
        lists.count += 1;
    }
    heap
}

/// Gives a heap up: trims it and pushes it for adoption.
///
/// # Safety
/// The caller owns `heap` (its thread is exiting) and never uses it again.
pub unsafe fn abandon(heap: *mut Heap) {
    // SAFETY: the caller owns `heap` (its thread is exiting, or we are a fork child).
    unsafe {
        cache::flush(&(*heap).region_cache);
        slow::trim(&mut *heap);
        let mut lists = HEAPS.lock();
        (*heap).abandoned_next = lists.abandoned;
        lists.abandoned = heap;
        lists.abandoned_count += 1;
    }
}

/// In a fork child only the forking thread survives: every other heap that is not
/// abandoned is an orphan, listed for adoption and left untouched until then.
pub fn fork_child() {
    let own = thread::get() as *mut Heap;
    let mut lists = HEAPS.lock();
    // The abandoned heaps, sorted, to tell them from orphans in one pass over `all`.
    let abandoned = meta::alloc(
        lists.abandoned_count.max(1) * core::mem::size_of::<*mut Heap>(),
        core::mem::align_of::<*mut Heap>(),
    ) as *mut *mut Heap;
    if lists.orphan_capacity < lists.count {
        if !lists.orphans.is_null() {
            // SAFETY: the previous array, from `meta::alloc` below.
            unsafe { meta::free(lists.orphans as *mut u8) };
        }
        lists.orphans = meta::alloc(
            lists.count * core::mem::size_of::<*mut Heap>(),
            core::mem::align_of::<*mut Heap>(),
        ) as *mut *mut Heap;
        lists.orphan_capacity = if lists.orphans.is_null() {
            0
        } else {
            lists.count
        };
    }
    lists.orphan_count = 0;
    if abandoned.is_null() || lists.orphans.is_null() {
        // Out of metadata memory: the orphans stay unused in this child (a leak, never
        // a heap walked half made).
        if !abandoned.is_null() {
            // SAFETY: allocated above.
            unsafe { meta::free(abandoned as *mut u8) };
        }
        return;
    }
    // SAFETY: heaps in the lists are live forever and only read here; the arrays are
    // ours and sized for `abandoned_count` and `count` entries.
    unsafe {
        let sorted = core::slice::from_raw_parts_mut(abandoned, lists.abandoned_count);
        let mut heap = lists.abandoned;
        for entry in sorted.iter_mut() {
            *entry = heap;
            heap = (*heap).abandoned_next;
        }
        sorted.sort_unstable();
        let mut heap = lists.all;
        while !heap.is_null() {
            if heap != own && sorted.binary_search(&heap).is_err() {
                *lists.orphans.add(lists.orphan_count) = heap;
                lists.orphan_count += 1;
            }
            heap = (*heap).all_next;
        }
        meta::free(abandoned as *mut u8);
    }
}

/// Locks out foreign purge passes, then the heap lists, then every heap's region cache
/// (a leaf lock, never held while another is taken), across `fork`, so the child
/// inherits each cache whole.
pub fn fork_prepare() {
    super::reclaim::fork_prepare();
    let lists = HEAPS.lock();
    let mut heap = lists.all;
    while !heap.is_null() {
        // SAFETY: heaps in the list are live forever.
        unsafe {
            (*heap).region_cache.raw_lock();
            heap = (*heap).all_next;
        }
    }
    core::mem::forget(lists);
}

/// # Safety
/// After `fork_prepare` on this thread.
pub unsafe fn fork_release() {
    // SAFETY: caller contract: we hold the pass lock, the heap lists' lock and every
    // cache's lock.
    unsafe {
        let mut heap = HEAPS.held().all;
        while !heap.is_null() {
            (*heap).region_cache.raw_unlock();
            heap = (*heap).all_next;
        }
        HEAPS.raw_unlock();
        super::reclaim::fork_release();
    }
}

/// The regions held in every heap's region cache, counted in a fork child before
/// `fork_release` (each cache whole, no write into any heap).
///
/// # Safety
/// After `fork_prepare` on this thread, before `fork_release`.
pub unsafe fn cached_while_forking() -> usize {
    let mut count = 0;
    // SAFETY: caller contract: we hold the heap lists' lock and every cache's lock.
    unsafe {
        let mut heap = HEAPS.held().all;
        while !heap.is_null() {
            count += cache::held_regions(&(*heap).region_cache);
            heap = (*heap).all_next;
        }
    }
    count
}

/// The most recently created heap; follow the list with `next_heap`. The list only
/// grows at its head and heaps are never freed, so a walk needs the lock only here.
pub(super) fn first_heap() -> *mut Heap {
    HEAPS.lock().all
}

/// The heap created before `heap`, or null.
///
/// # Safety
/// `heap` came from `first_heap` or `next_heap`.
pub(super) unsafe fn next_heap(heap: *mut Heap) -> *mut Heap {
    // SAFETY: caller contract; `all_next` is written before the heap is published
    // under the lists' lock (whose Acquire in `first_heap` orders it) and never again.
    unsafe { ptr::addr_of!((*heap).all_next).read() }
}

/// Visits every heap ever created (heaps are never freed, so this is safe while their
/// owners run; the counts read are each a consistent word, possibly a moment old).
pub fn for_each_heap(mut f: impl FnMut(&Heap)) {
    let lists = HEAPS.lock();
    let mut heap = lists.all;
    while !heap.is_null() {
        // SAFETY: heaps in the list are live forever.
        unsafe {
            f(&*heap);
            heap = (*heap).all_next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{alloc_small, class_of, free_small, test_hooks};
    use super::heap_counts;
    use crate::thread;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A class no other unit test allocates from (208-byte blocks, 19 per extension).
    const SIZE: usize = 208;
    /// The owner allocates this many blocks and frees the first `FREED` locally, so its
    /// page has both a `free` list (the rest of the extension) and a `local_free` list.
    const ALLOCATED: usize = 12;
    const FREED: usize = 6;
    /// Blocks the adopter takes in the class: more than a whole page holds (64 KiB /
    /// 208 B = 315), so every block of the orphan's page comes round.
    const ADOPTER_BLOCKS: usize = 700;
    /// A healthy child finishes in milliseconds; this leaves room for a loaded machine.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// Issue 13, item 5: a thread is stopped half way through `collect` (in the trim of
    /// its exit: both free lists share its local blocks) while another thread forks.
    /// The child must not walk that heap at fork, and a child thread that adopts it
    /// must get a working heap: distinct blocks that keep their contents, no hang.
    /// Before the fix, the child's `fork_child` trimmed the heap: `collect` ran again on
    /// the half-merged lists, linked them into a cycle, and the adopter was handed the
    /// same blocks over and over.
    #[test]
    fn a_fork_child_adopts_a_heap_whose_owner_stopped_mid_collect() {
        let class = class_of(SIZE);
        let (tx, rx) = mpsc::channel();
        let owner = std::thread::spawn(move || {
            let blocks: Vec<usize> = (0..ALLOCATED)
                .map(|_| alloc_small(class) as usize)
                .collect();
            for &b in &blocks[..FREED] {
                // SAFETY: a live block of ours, freed once.
                unsafe { free_small(b as *mut u8) }.unwrap();
            }
            tx.send(thread::get()).unwrap();
            // The exit hook abandons the heap; its trim stops in `collect`.
            test_hooks::arm_this_thread();
        });
        let orphan = rx.recv().unwrap();
        while !test_hooks::PAUSED.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        // SAFETY: the child only allocates through the engine, starts threads (the test
        // binary's allocator is glibc's, fork-safe) and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = adopt_and_allocate(orphan, class);
            // SAFETY: ends the child without running the harness.
            unsafe { libc::_exit(code) };
        }
        test_hooks::RELEASE.store(true, Ordering::Release);
        owner.join().unwrap();
        let deadline = Instant::now() + DEADLINE;
        let mut status = 0;
        // SAFETY: polling, then killing and reaping, our own child.
        unsafe {
            while libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 {
                if Instant::now() > deadline {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                    panic!("the child hung adopting the orphaned heap");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(
            libc::WIFEXITED(status),
            "the child died: status {status:#x}"
        );
        match libc::WEXITSTATUS(status) {
            CHILD_OK => {}
            CHILD_BAD_BLOCKS => panic!("the adopter of the orphaned heap got bad blocks"),
            _ => panic!("no child thread adopted the orphaned heap"),
        }
    }

    /// A class only `an_owner_holding_its_segments_lock_at_fork...` allocates from.
    const LOCKED_SIZE: usize = 240;

    /// The segments lock across `fork` (`heap::reclaim`, invariant 5): a thread is
    /// stopped in its exit trim while it holds its heap's segments lock, and another
    /// thread forks. In the child, a purge pass must skip that orphan (not wait for a
    /// lock nobody will release), and the thread that adopts it must inherit the lock,
    /// repair the heap and allocate. With an adopter that waited for the lock as an
    /// owner does (`lock_owner`), the child hung.
    #[test]
    fn an_owner_holding_its_segments_lock_at_fork_leaves_an_adoptable_heap() {
        let class = class_of(LOCKED_SIZE);
        let site = test_hooks::Site::TrimLocked as usize;
        let (tx, rx) = mpsc::channel();
        let owner = std::thread::spawn(move || {
            let blocks: Vec<usize> = (0..ALLOCATED)
                .map(|_| alloc_small(class) as usize)
                .collect();
            for &b in &blocks {
                // SAFETY: a live block of ours, freed once.
                unsafe { free_small(b as *mut u8) }.unwrap();
            }
            tx.send(thread::get()).unwrap();
            // The exit hook abandons the heap; its trim stops holding the lock.
            test_hooks::arm_this_thread_at(test_hooks::Site::TrimLocked);
        });
        let orphan = rx.recv().unwrap();
        while !test_hooks::PAUSED_AT[site].load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        // SAFETY: the child only allocates through the engine, purges, starts threads
        // and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = purge_adopt_and_purge(orphan, class);
            // SAFETY: ends the child without running the harness.
            unsafe { libc::_exit(code) };
        }
        test_hooks::RELEASE_AT[site].store(true, Ordering::Release);
        owner.join().unwrap();
        match wait_for_child(pid) {
            CHILD_OK => {}
            CHILD_BAD_BLOCKS => panic!("the adopter of the orphaned heap got bad blocks"),
            CHILD_LOCK_HELD => panic!("the adopted heap's segments lock stayed held"),
            _ => panic!("no child thread adopted the orphaned heap"),
        }
    }

    /// In the child: a purge pass (skips the orphan), adoption (`adopt_and_allocate`),
    /// then a second pass; the orphan's lock must be free at the end.
    fn purge_adopt_and_purge(orphan: usize, class: usize) -> i32 {
        let mode = crate::os::PurgeMode::DontNeed;
        let first = super::super::reclaim::purge_all_heaps(0, mode);
        if first.busy == 0 {
            return CHILD_LOCK_HELD + 1; // the orphan was not seen locked: test broken
        }
        let code = adopt_and_allocate(orphan, class);
        if code != CHILD_OK {
            return code;
        }
        super::super::reclaim::purge_all_heaps(0, mode);
        let heap = orphan as *mut super::Heap;
        // SAFETY: heaps live forever; the lock word is an atomic.
        let lock = unsafe { &*core::ptr::addr_of!((*heap).segments_lock) };
        if !lock.try_lock_purger() {
            return CHILD_LOCK_HELD;
        }
        lock.unlock();
        CHILD_OK
    }

    /// Waits for the child with `DEADLINE` (killing it past that); its exit code.
    fn wait_for_child(pid: libc::pid_t) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        let mut status = 0;
        // SAFETY: polling, then killing and reaping, our own child.
        unsafe {
            while libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 {
                if Instant::now() > deadline {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                    panic!("the child hung adopting the orphaned heap");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(
            libc::WIFEXITED(status),
            "the child died: status {status:#x}"
        );
        libc::WEXITSTATUS(status)
    }

    /// The child's exit codes.
    const CHILD_OK: i32 = 0;
    const CHILD_BAD_BLOCKS: i32 = 1;
    const CHILD_NOT_ADOPTED: i32 = 2;
    const CHILD_LOCK_HELD: i32 = 3;

    /// In the child: starts threads (each kept alive, so none gives its heap back) until
    /// one adopts `orphan`; that one allocates `ADOPTER_BLOCKS` blocks of `class` and
    /// checks they are distinct and keep what it wrote. Returns the exit code. No panics
    /// (the child must not unwind into the harness).
    fn adopt_and_allocate(orphan: usize, class: usize) -> i32 {
        let (tx, rx) = mpsc::channel();
        for _ in 0..heap_counts().heaps + 1 {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let first = alloc_small(class) as usize;
                if thread::get() != orphan {
                    let _ = tx.send(None);
                } else {
                    let mut blocks = vec![first];
                    blocks.extend((1..ADOPTER_BLOCKS).map(|_| alloc_small(class) as usize));
                    for (i, &b) in blocks.iter().enumerate() {
                        // SAFETY: blocks of SIZE bytes just allocated.
                        unsafe { core::ptr::write_bytes(b as *mut u8, i as u8, SIZE) };
                    }
                    let kept = blocks.iter().enumerate().all(|(i, &b)| {
                        // SAFETY: as above.
                        unsafe { core::slice::from_raw_parts(b as *const u8, SIZE) }
                            .iter()
                            .all(|&x| x == i as u8)
                    });
                    blocks.sort_unstable();
                    blocks.dedup();
                    let _ = tx.send(Some(kept && blocks.len() == ADOPTER_BLOCKS));
                }
                loop {
                    std::thread::park();
                }
            });
            match rx.recv_timeout(DEADLINE) {
                Ok(Some(true)) => return CHILD_OK,
                Ok(Some(false)) => return CHILD_BAD_BLOCKS,
                Ok(None) => continue,
                Err(_) => return CHILD_NOT_ADOPTED,
            }
        }
        CHILD_NOT_ADOPTED
    }
}
