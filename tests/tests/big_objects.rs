//! Big objects (issue 14): freed big buffers are reused while dirty instead of purged,
//! dirty space is bounded by a budget that follows the live large bytes, large objects
//! grow in place by doubling up to 64 MiB without a copy, and content survives every
//! kind of resize. Each check runs in a child process of its own, so the allocator's
//! counters and dirty space are not shared with concurrently running tests.

use rangealloc::engine::purge;
use rangealloc::engine::region::{PageMove, ARENAS};
use rangealloc::{RangeAlloc, Syscall};
use std::alloc::{alloc, dealloc, realloc, Layout};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
/// A purge delay long enough that no timed pass runs during a check: what is purged is
/// purged by the dirty budget alone.
const NO_TIMED_PURGE: &str = "purge_delay_ms=600000";

fn madvise_calls() -> u64 {
    let c = rangealloc::syscall_counts();
    c.get(Syscall::MadviseDontNeed) + c.get(Syscall::MadviseFree)
}

fn minor_faults() -> u64 {
    rangealloc_tests::minor_faults(libc::RUSAGE_SELF)
}

fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn layout(len: usize) -> Layout {
    Layout::from_size_align(len, 8).unwrap()
}

/// Writes `tag`-derived words at every page of `[0, len)` of `p`.
///
/// # Safety
/// `p` is valid for `len` bytes.
unsafe fn fill(p: *mut u8, len: usize, tag: u64) {
    for off in (0..len).step_by(PAGE) {
        // SAFETY: caller contract; `off < len`, 8-byte aligned (p and PAGE are).
        unsafe { p.add(off).cast::<u64>().write(tag ^ off as u64) };
    }
}

/// Counts pages of `[0, len)` whose word differs from what `fill` wrote.
///
/// # Safety
/// As `fill`.
unsafe fn bad_pages(p: *const u8, len: usize, tag: u64) -> usize {
    (0..len)
        .step_by(PAGE)
        // SAFETY: caller contract.
        .filter(|&off| unsafe { p.add(off).cast::<u64>().read() } != tag ^ off as u64)
        .count()
}

fn run(mode: &str) {
    run_with(mode, NO_TIMED_PURGE);
}

fn run_with(mode: &str, options: &str) {
    let out = rangealloc_tests::run_child(mode, Some(options));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("PASSED {mode}")),
        "child {mode} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return; // only meaningful when spawned by `run`
    };
    match mode.as_str() {
        "reuse" => freed_buffer_reused(),
        "reuse-bigger" => bigger_buffer_reuses_hole(),
        "budget" => burst_bounded(),
        "budget-last" => last_frees_bounded(),
        "sparse-burst" => sparse_burst_purged_in_few_calls(),
        "doubling" => doubling_in_place(),
        "content" => content_across_moves(),
        "thp" => huge_pages_once(true),
        "remap" => remap_leaves_clean_space(),
        "remap-medium" => medium_move_remaps(),
        "room-bound" => room_reserves_bounded(),
        "nothp" => huge_pages_once(false),
        "thp-home" => huge_space_at_home(),
        "shrink-out" => shrink_out_of_huge_space(),
        "small-hole" => big_object_takes_small_hole(),
        "trim" => hole_rest_purged(),
        "uffd-part" => registered_part_moves_whole(),
        "lost" => lost_destination_stops_moves(),
        _ => panic!("unknown mode {mode}"),
    }
    println!("PASSED {mode}");
}

/// A freed 16 MiB buffer stays dirty and the next 16 MiB allocation takes its pages:
/// no `madvise`, and writing the new buffer faults (almost) nothing. Before the dirty
/// budget, objects of 8 MiB and more were purged when freed and faulted in again.
#[test]
fn freed_big_buffer_is_reused_without_purging() {
    run("reuse");
}

fn freed_buffer_reused() {
    const LEN: usize = 16 * MIB;
    // SAFETY: every pointer is used within its allocation and freed once.
    unsafe {
        let p = alloc(layout(LEN));
        fill(p, LEN, 1);
        let calls = madvise_calls();
        dealloc(p, layout(LEN));
        let q = alloc(layout(LEN));
        assert_eq!(madvise_calls(), calls, "the freed buffer was purged");
        assert_eq!(q, p, "the dirty buffer was not reused");
        let faults = minor_faults();
        fill(q, LEN, 2);
        let taken = minor_faults() - faults;
        assert!(
            taken < (LEN / PAGE / 16) as u64,
            "{taken} faults writing a reused 16 MiB buffer"
        );
        assert_eq!(bad_pages(q, LEN, 2), 0);
        dealloc(q, layout(LEN));
    }
}

/// A freed 8 MiB buffer's dirty pages serve the next, bigger, buffer: it starts in the
/// dirty hole and runs on into the clean room after it, so writing it faults only what
/// the hole lacks. The hole used to be skipped for clean space (every page faulted):
/// big-buffers replaces buffers of random sizes, and most were bigger than every hole.
#[test]
fn a_bigger_buffer_reuses_a_freed_dirty_hole() {
    run("reuse-bigger");
}

fn bigger_buffer_reuses_hole() {
    const HOLE: usize = 8 * MIB;
    const LEN: usize = 12 * MIB;
    // SAFETY: every pointer is used within its allocation and freed once.
    unsafe {
        let p = alloc(layout(HOLE));
        fill(p, HOLE, 1);
        let calls = madvise_calls();
        dealloc(p, layout(HOLE));
        let q = alloc(layout(LEN));
        assert_eq!(madvise_calls(), calls, "the freed buffer was purged");
        assert_eq!(q, p, "the dirty hole was not reused");
        let faults = minor_faults();
        fill(q, LEN, 2);
        let taken = minor_faults() - faults;
        // The 4 MiB the hole lacks (1,024 pages), and some slack for the test itself.
        assert!(
            taken < ((LEN - HOLE + MIB) / PAGE) as u64,
            "{taken} faults writing a 12 MiB buffer over an 8 MiB dirty hole"
        );
        assert_eq!(bad_pages(q, LEN, 2), 0);
        dealloc(q, layout(LEN));
    }
}

/// A burst of frees leaves no more dirty memory than the budget (which shrinks with the
/// live bytes): the excess is purged at once, not after the purge delay, and RSS falls
/// with it.
#[test]
fn burst_of_frees_is_purged_down_to_the_budget() {
    run("budget");
}

/// Buffers in a burst (`burst_of_frees`).
const BURST_LEN: usize = 4 * MIB;
const BURST_COUNT: usize = 64;

/// Allocates and writes `BURST_COUNT` buffers of `BURST_LEN`, then frees them all;
/// returns the RSS (KiB) from before the burst.
fn burst_of_frees() -> usize {
    let base_rss = rss_kib();
    // SAFETY: each block is written within its length and freed once.
    unsafe {
        let blocks: Vec<*mut u8> = (0..BURST_COUNT)
            .map(|i| {
                let p = alloc(layout(BURST_LEN));
                fill(p, BURST_LEN, i as u64);
                p
            })
            .collect();
        assert!(rss_kib() >= base_rss + BURST_COUNT * BURST_LEN / 1024 * 9 / 10);
        for &p in &blocks {
            dealloc(p, layout(BURST_LEN));
        }
    }
    base_rss
}

/// RSS is back within the dirty budget of `base_rss` (KiB).
fn assert_rss_within_budget(base_rss: usize) {
    let budget = purge::dirty_budget();
    let rss = rss_kib();
    assert!(
        rss <= base_rss + (budget + 2 * BURST_LEN) / 1024,
        "RSS {} MiB after the burst, from {} MiB, budget {} MiB",
        rss / 1024,
        base_rss / 1024,
        budget / MIB
    );
}

fn burst_bounded() {
    const LEN: usize = BURST_LEN;
    let base_rss = burst_of_frees();
    // Ordinary activity after the burst: frees are folded in by the next writer,
    // and every large call checks the budget.
    // (`black_box`: an allocation nobody uses is otherwise removed by the compiler.)
    // SAFETY: freed once, unused.
    unsafe {
        let p = std::hint::black_box(alloc(layout(LEN)));
        dealloc(p, layout(LEN));
    }
    let budget = purge::dirty_budget();
    let dirty = ARENAS.dirty_bytes();
    assert!(
        dirty <= budget + LEN,
        "dirty {} MiB over the budget {} MiB",
        dirty / MIB,
        budget / MIB
    );
    assert_rss_within_budget(base_rss);
}

/// The last frees of a program (or of a phase) count against the dirty budget at once:
/// with no allocation after the burst, RSS still falls to the budget. Their regions used
/// to wait on the retired stack, outside the dirty count, for a writer that never came,
/// so every budget check saw no excess and memory stayed at its peak until a timed
/// purge pass (big-buffers' final RSS was its peak).
#[test]
fn the_last_frees_of_a_burst_are_purged_down_to_the_budget() {
    run("budget-last");
}

fn last_frees_bounded() {
    // No allocation after the last free.
    assert_rss_within_budget(burst_of_frees());
}

/// medpurge11: frees of objects touched only at their two ends (the `medium` workload's
/// pattern: little resident, much virtual space) past the dirty budget are purged a
/// batch at a time, down to the budget's low-water mark: a pass for many frees, and a
/// system call for many pieces. Purging just each free's excess made a pass and a
/// `madvise` per free (each a TLB shootdown while another thread runs). Dirty space
/// stays bounded by the budget.
#[test]
fn sparse_frees_past_the_budget_are_purged_in_few_calls() {
    run("sparse-burst");
}

fn sparse_burst_purged_in_few_calls() {
    // Above the medium cache's sizes (retired, not cached), big enough to count as
    // freed at its retire (`RETIRED_COUNT_MIN`: no writer runs between these frees),
    // below huge-page space. Seven fit in one batched call (`PURGE_PIECE` in all).
    const LEN: usize = 2 * MIB + 4 * PAGE;
    const COUNT: usize = 300;
    // SAFETY: each block is written within its length and freed once.
    unsafe {
        let blocks: Vec<*mut u8> = (0..COUNT)
            .map(|_| {
                let p = alloc(layout(LEN));
                p.cast::<u64>().write(1);
                p.add(LEN - 8).cast::<u64>().write(1);
                p
            })
            .collect();
        let (passes, calls, purged) = (
            purge::PASSES.get(),
            madvise_calls(),
            purge::PURGED_BYTES.get(),
        );
        // Every other one, so no two freed objects merge into one piece.
        for &p in blocks.iter().step_by(2) {
            dealloc(p, layout(LEN));
        }
        let pieces = (purge::PURGED_BYTES.get() - purged) / LEN as u64;
        let (passes, calls) = (purge::PASSES.get() - passes, madvise_calls() - calls);
        assert!(
            pieces >= 40,
            "{COUNT} sparse objects freed, {pieces} of them purged: the budget was not reached"
        );
        assert!(
            passes * 4 <= pieces,
            "{passes} purge passes for {pieces} objects purged"
        );
        // Only where the kernel batches (6.15+, no seccomp refusal): elsewhere each
        // piece is its own call, by design (review11).
        if rangealloc::engine::os::batched_purges().0 > 0 {
            assert!(
                calls * 4 <= pieces,
                "{calls} madvise calls for {pieces} objects purged"
            );
        }
        let (budget, dirty) = (purge::dirty_budget(), ARENAS.dirty_bytes());
        assert!(
            dirty <= budget + LEN,
            "dirty {} MiB over the budget {} MiB",
            dirty / MIB,
            budget / MIB
        );
        for &p in blocks.iter().skip(1).step_by(2) {
            dealloc(p, layout(LEN));
        }
    }
}

/// Objects allocated just above the small limit and doubled to 64 MiB, four at a time
/// (each with neighbours placed after it), all grow in place: no move, no byte copied.
#[test]
fn doubling_from_the_small_limit_to_64_mib_never_copies() {
    run_with("doubling", &format!("{NO_TIMED_PURGE},thp=never"));
}

/// With huge pages on, an object growing by doubling from the small limit moves once,
/// as it crosses into huge-page sizes (`large::HUGE_OBJECT_MIN`, 4 MiB), by copying its
/// fewer than 4 MiB to huge-page space, and grows in place there up to 64 MiB: every
/// later page faults in 2 MiB at a time. It used to grow in place in base space all the
/// way (the `region` workload's buffers: 16k faults each, 4 KiB at a time).
#[test]
fn a_growing_object_crosses_into_huge_space_once() {
    run_with("doubling", &format!("{NO_TIMED_PURGE},thp=auto"));
}

fn doubling_in_place() {
    use rangealloc::engine::large::HUGE_OBJECT_MIN;
    use rangealloc::engine::options::{thp, Thp};
    use rangealloc::engine::region::Space;
    // With huge pages, each object moves once: from below `HUGE_OBJECT_MIN` in base
    // space to it in huge-page space.
    let huge = thp() != Thp::Off;
    println!("huge pages: {huge}");
    const OBJECTS: usize = 4;
    const TOP: usize = 64 * MIB;
    // The first large size: the small limit plus a page (what `SMALL_MAX + 1` rounds to;
    // page-aligned, so the stamps of each grown tail stay word-aligned).
    let first = rangealloc::engine::heap::SMALL_MAX + PAGE;
    // Dirty space goes first in placement (it costs no faults), and dirty fragments
    // that the test harness left may have no room after them: start clean.
    rangealloc::purge();
    let before = rangealloc::stats().reallocs;
    let (mut steps, mut crossings, mut copied) = (0, 0, 0);
    // SAFETY: pointers are used within their current lengths and freed once.
    unsafe {
        let mut objs: Vec<(*mut u8, usize)> = (0..OBJECTS)
            .map(|i| {
                let p = alloc(layout(first));
                fill(p, first, i as u64);
                (p, first)
            })
            .collect();
        while objs[0].1 < TOP {
            for (i, (p, len)) in objs.iter_mut().enumerate() {
                let new_len = (*len * 2).min(TOP);
                let q = realloc(*p, layout(*len), new_len);
                assert!(!q.is_null());
                let crossing = huge && *len < HUGE_OBJECT_MIN && new_len >= HUGE_OBJECT_MIN;
                if crossing {
                    assert_ne!(q, *p, "object {i} stayed in base space at {new_len}");
                    assert_eq!(ARENAS.space_of(q as usize), Space::Huge);
                    crossings += 1;
                    copied += *len as u64;
                } else {
                    assert_eq!(q, *p, "object {i} moved growing {len} -> {new_len}");
                }
                *p = q;
                fill(q.add(*len), new_len - *len, i as u64 ^ *len as u64);
                assert_eq!(bad_pages(q, first, i as u64), 0);
                *len = new_len;
                steps += 1;
            }
        }
        for (p, len) in objs {
            dealloc(p, layout(len));
        }
    }
    let after = rangealloc::stats().reallocs;
    assert_eq!(crossings, if huge { OBJECTS as u64 } else { 0 });
    assert_eq!(after.moved - before.moved, crossings);
    assert_eq!(after.copied_bytes - before.copied_bytes, copied);
    assert_eq!(
        after.grown_in_place - before.grown_in_place,
        steps - crossings
    );
}

/// Content survives every kind of resize: small to large (copy), growth in place,
/// shrink in place (or, with huge pages, out of huge-page space: a copy), growth past
/// the room (a move, counted with its bytes), large to small (copy).
#[test]
fn content_is_preserved_across_every_move_kind() {
    run("content");
}

fn content_across_moves() {
    const TAG: u64 = 0x5eed;
    let before = rangealloc::stats().reallocs;
    // SAFETY: as above.
    unsafe {
        let mut len = 1000;
        let mut p = alloc(layout(len));
        for i in 0..len {
            p.add(i).write(i as u8);
        }
        // Small to large, then past the 64 MiB room (a copy: below
        // `MEDIUM_REMAP_MIN`), in place, past that room (an `mremap`), shrinks (out of
        // huge-page space when on, then in place), and back to small.
        let sizes = [
            48 * 1024,
            70 * MIB,
            100 * MIB,
            250 * MIB,
            3 * MIB,
            512 * 1024,
            2000,
        ];
        for &new_len in &sizes {
            let q = realloc(p, layout(len), new_len);
            assert!(!q.is_null());
            let kept = len.min(new_len);
            for i in (0..kept.min(1000)).step_by(7) {
                assert_eq!(
                    q.add(i).read(),
                    i as u8,
                    "byte {i} after {len} -> {new_len}"
                );
            }
            if kept > 1000 + PAGE {
                let paged = kept - PAGE;
                assert_eq!(
                    bad_pages(q.add(PAGE), paged / PAGE * PAGE, TAG),
                    0,
                    "after {len} -> {new_len}"
                );
            }
            if new_len > 1000 + PAGE {
                fill(q.add(PAGE), (new_len - PAGE) / PAGE * PAGE, TAG);
            }
            p = q;
            len = new_len;
        }
        dealloc(p, layout(len));
    }
    let after = rangealloc::stats().reallocs;
    assert!(
        after.grown_in_place > before.grown_in_place,
        "no growth in place"
    );
    // With huge pages, the shrink from 250 MiB to 3 MiB leaves huge-page space: a copy.
    let huge = rangealloc::engine::options::thp() != rangealloc::engine::options::Thp::Off;
    let shrink_copied = if huge { 3 * MIB as u64 } else { 0 };
    assert_eq!(after.moved - before.moved, 1 + u64::from(huge), "copies");
    assert_eq!(
        after.copied_bytes - before.copied_bytes,
        48 * 1024 + shrink_copied
    );
    assert_eq!(after.remapped - before.remapped, 1, "mremap moves");
    assert_eq!(
        after.remapped_bytes - before.remapped_bytes,
        100 * MIB as u64
    );
}

/// Review12b F1, end to end: a big object that arrived by a move, then grew in place,
/// and part of whose grown part the program registered with a userfaultfd, spans three
/// mappings. From 6.17 one `mremap` over all of them moves the first and then fails on
/// the registered one, and the copy that followed read zeros where the first had been.
/// Each mapping now moves by itself: every page arrives, by `mremap`.
#[test]
fn a_move_of_an_object_with_a_registered_part_keeps_every_page() {
    run("uffd-part");
}

/// A userfaultfd of this process, or `None` where the kernel or its settings refuse one.
fn userfaultfd() -> Option<libc::c_int> {
    // SAFETY: plain syscalls on our own descriptor and structures.
    unsafe {
        let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1) as libc::c_int;
        if fd < 0 {
            return None;
        }
        // struct uffdio_api { api = UFFD_API, features, ioctls }; UFFDIO_API.
        let mut api = [0xaa_u64, 0, 0];
        if libc::ioctl(fd, 0xc018_aa3f, api.as_mut_ptr()) != 0 {
            libc::close(fd);
            return None;
        }
        Some(fd)
    }
}

fn registered_part_moves_whole() {
    const TAG: u64 = 0xf1;
    let Some(uffd) = userfaultfd() else {
        println!("skipped: no userfaultfd here");
        return;
    };
    let before = rangealloc::stats().reallocs;
    // SAFETY: live objects of the lengths given; the registered range lies inside one.
    unsafe {
        let p = alloc(layout(8 * MIB));
        fill(p, 8 * MIB, TAG);
        // Past its room: moved by `mremap`, its 8 MiB a mapping of their own.
        let q = realloc(p, layout(8 * MIB), 100 * MIB);
        assert!(!q.is_null() && q != p);
        fill(q, 16 * MIB, TAG);
        // struct uffdio_register { range { start, len }, mode = WP, ioctls }.
        let mut reg = [q.add(8 * MIB) as u64, 8 * MIB as u64, 2, 0];
        if libc::ioctl(uffd, 0xc020_aa00, reg.as_mut_ptr()) != 0 {
            println!("skipped: write-protect registration refused");
            return;
        }
        let r = realloc(q, layout(100 * MIB), 300 * MIB);
        assert!(!r.is_null() && r != q, "not moved");
        assert_eq!(bad_pages(r, 16 * MIB, TAG), 0, "pages lost in the move");
        dealloc(r, layout(300 * MIB));
        libc::close(uffd);
    }
    let after = rangealloc::stats().reallocs;
    assert_eq!(after.remapped - before.remapped, 2, "mremap moves");
    assert_eq!(after.moved, before.moved, "copies");
}

/// Review12b F6, on this kernel and in the shipped build: with `RLIMIT_DATA` below the
/// process's data size, a move's `mremap` unmaps its destination and then fails
/// (`ENOMEM`: `MREMAP_DONTUNMAP` would add the source's size again), and mapping the
/// hole again fails the same way. The destination is lost: the object is copied into
/// another, whole, and from then on no page moves are tried (`os::page_moves_stopped`,
/// process-wide outside test builds): the next big move copies.
#[test]
fn a_lost_destination_stops_page_moves_for_the_process() {
    run("lost");
}

fn lost_destination_stops_moves() {
    const TAG: u64 = 0x105;
    let mremaps = || rangealloc::syscall_counts().get(Syscall::Mremap);
    // SAFETY: live objects of the lengths given; the limit is put back before anything
    // else allocates. Each move is the table's own (`relocate`, what `realloc` calls
    // for a big object that cannot grow in place), so that it moves whatever
    // placement does; its caller's copy is done here, as `realloc` does it.
    unsafe {
        let p = alloc(layout(8 * MIB));
        fill(p, 8 * MIB, TAG);
        let (lost, calls) = (rangealloc::stats().reallocs.lost, mremaps());
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_DATA, &mut limit), 0);
        let tight = libc::rlimit {
            rlim_cur: MIB as libc::rlim_t,
            rlim_max: limit.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_DATA, &tight), 0);
        let moved = ARENAS.relocate(p as usize, 100 * MIB, PAGE, ARENAS.space_of(p as usize));
        assert_eq!(libc::setrlimit(libc::RLIMIT_DATA, &limit), 0);
        let (placed, moved) = moved.expect("no room for the move");
        assert_eq!(moved, PageMove::Copy { moved: 0 }, "not copied");
        assert_eq!(mremaps() - calls, 1, "mremap calls");
        assert_eq!(rangealloc::stats().reallocs.lost - lost, 1, "not lost");
        assert!(rangealloc::engine::os::page_moves_stopped(), "moves go on");
        let q = placed.start as *mut u8;
        assert!(q != p);
        std::ptr::copy_nonoverlapping(p, q, 8 * MIB);
        dealloc(p, layout(8 * MIB));
        assert_eq!(bad_pages(q, 8 * MIB, TAG), 0, "pages lost in the copy");
        // The next move copies without asking the kernel.
        let (placed, moved) = ARENAS
            .relocate(q as usize, 300 * MIB, PAGE, ARENAS.space_of(q as usize))
            .expect("no room for the move");
        assert_eq!(
            moved,
            PageMove::Copy { moved: 0 },
            "pages moved after a lost destination"
        );
        assert_eq!(mremaps() - calls, 1, "mremap calls");
        dealloc(q, layout(100 * MIB));
        dealloc(placed.start as *mut u8, layout(300 * MIB));
    }
}

/// A big object that cannot grow in place moves its pages with `mremap`: its content
/// arrives without a copy (almost no page faults), and the range it left is clean free
/// space (not dirty, not counted in the dirty bytes, reading zero, no longer sharing
/// pages with the object). Repeated moves do not pile up kernel mappings. Both with
/// huge pages on and off. Every move here is forced whatever placement does: the
/// `realloc` asks for more than the free space after the object, and the repeated
/// moves are the table's own (`relocate`, what that `realloc` calls).
#[test]
fn a_remapped_object_leaves_clean_free_space() {
    run_with("remap", "thp=never");
    run_with("remap", "thp=auto");
}

/// Lines of `/proc/self/maps`: the process's kernel mappings (VMAs).
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// The end of the free space that starts at `addr` (`addr` itself when none does): the
/// most an object ending at `addr` could grow in place into.
fn free_run_end(addr: usize) -> usize {
    let mut end = addr;
    // In address order within the arena: the free regions of one run come one after
    // the other (dirty and clean pieces are regions of their own).
    ARENAS.for_each_free_region(|start, len, _| {
        if start == end {
            end = start + len;
        }
    });
    end
}

fn remap_leaves_clean_space() {
    const LEN: usize = 8 * MIB;
    const TAG: u64 = 0xfade;
    let free_at = |addr: usize| {
        let mut found = None;
        ARENAS.for_each_free_region(|start, len, dirty| {
            if (start..start + len).contains(&addr) {
                found = Some(dirty);
            }
        });
        found
    };
    // SAFETY: pointers are used within their lengths and freed once; the old range is
    // read only while it is free space of our own reservation (mapped, reads zero).
    unsafe {
        let p = alloc(layout(LEN));
        fill(p, LEN, TAG);
        ARENAS.collect_retired();
        // Past all the free space after the object (its growth room and whatever free
        // space runs on from there), so it cannot grow in place wherever it was placed.
        let room = free_run_end(p as usize + LEN) - (p as usize + LEN);
        let grown = (LEN + room + MIB).max(100 * MIB);
        let (before, dirty0, faults0) = (
            rangealloc::stats().reallocs,
            ARENAS.dirty_bytes(),
            minor_faults(),
        );
        let q = realloc(p, layout(LEN), grown);
        assert!(!q.is_null() && q != p, "no move");
        assert_eq!(bad_pages(q, LEN, TAG), 0, "content lost in the move");
        let faults = minor_faults() - faults0;
        assert!(
            faults < (LEN / PAGE / 16) as u64,
            "{faults} faults: pages copied?"
        );
        let after = rangealloc::stats().reallocs;
        assert_eq!(after.remapped - before.remapped, 1);
        assert_eq!(after.remapped_bytes - before.remapped_bytes, LEN as u64);
        assert_eq!(after.moved, before.moved, "copied");
        assert_eq!(
            free_at(p as usize),
            Some(false),
            "old range not clean free space"
        );
        assert!(
            ARENAS.dirty_bytes() < dirty0 + LEN,
            "old range counted dirty"
        );
        q.write(0xab);
        let old = |off: usize| core::ptr::read_volatile(p.add(off));
        assert!(
            (0..LEN).step_by(PAGE).all(|off| old(off) == 0),
            "old range not empty"
        );
        // Moves that repeat reuse the same space: once the first moves have split the
        // reservation's mapping where they land, more moves split nothing new. Each
        // round moves the object by the table's own move, the one `realloc` makes for
        // an object that cannot grow in place (`large::remap`), so that every round
        // moves: a `realloc` to a fixed size grows in place as soon as placement puts
        // the next object where the last one's freed space has room for it (992 of
        // 1,000 rounds did with purges cut from a region's top, peak9).
        dealloc(q, layout(grown));
        const FAR: usize = 600 * MIB;
        let churn = |rounds: usize| {
            for i in 0..rounds {
                let p = alloc(layout(LEN));
                p.write(i as u8);
                let (placed, moved) = ARENAS
                    .relocate(p as usize, FAR, PAGE, ARENAS.space_of(p as usize))
                    .expect("no room for the move");
                assert_eq!(moved, PageMove::Moved, "round {i}: not moved by mremap");
                let q = placed.start as *mut u8;
                assert!(q != p);
                // `large::remap`'s gauge update: the object now holds `FAR` bytes.
                purge::large_added(FAR - LEN);
                assert_eq!(q.read(), i as u8);
                dealloc(q, layout(FAR));
            }
        };
        churn(200);
        let maps0 = mappings();
        churn(800);
        let added = mappings().saturating_sub(maps0);
        assert!(added <= 2, "800 more moves added {added} mappings");
    }
}

/// A medium-sized object that cannot grow in place and holds bytes in few pages is, by
/// default (`sparse_moves`), copied sparsely (`large::copies_sparse_first`, issue 16): a
/// program that wrote its first and last page and read one in the middle grows it past
/// its room; only the two written pages are copied (no `mremap`, no copy of the rest),
/// so neither the destination's other pages nor the source's untouched ones fault, and
/// every byte reads as before. The same object with every page written is dense: it is
/// copied whole by default, and moves its pages with one `mremap` with `medium_remap=1`.
/// With `sparse_moves=0` the sparse one goes the dense one's way. (Huge pages off: a 70
/// MiB object would otherwise go to huge-page space, which a base-space object never
/// moves into.)
#[test]
fn a_medium_object_that_must_move_is_copied_sparsely_or_moves_its_pages() {
    for options in [
        "",
        ",medium_remap=1",
        ",sparse_moves=0",
        ",sparse_moves=0,medium_remap=1",
    ] {
        run_with(
            "remap-medium",
            &format!("thp=never,purge_delay_ms=600000{options}"),
        );
    }
}

fn medium_move_remaps() {
    const LEN: usize = 512 * 1024;
    // Past the object's growth room (64 MiB minus its length), at least: a move.
    const GROWN: usize = 70 * MIB;
    const TAG: u64 = 0x3ed1;
    let sparse = rangealloc::engine::options::get().sparse_moves;
    if sparse && !rangealloc::engine::os::pagemap::scans() {
        println!("skipped: no PAGEMAP_SCAN here (before Linux 6.7): moves are mremaps");
        return;
    }
    if !rangealloc::engine::os::pagemap::sees_guards() {
        println!("skipped: guard markers the scans cannot name (6.13, 6.14): moves mremap");
        return;
    }
    for dense in [false, true] {
        // SAFETY: pointers are used within their lengths and freed once.
        unsafe {
            let p = alloc(layout(LEN));
            if dense {
                fill(p, LEN, TAG);
            } else {
                fill(p, PAGE, TAG);
                fill(p.add(LEN - PAGE), PAGE, !TAG);
                let _ = p.add(LEN / 2).read_volatile(); // the zero page
            }
            // Past all the free space after the object (the first round's freed
            // destination may follow it), so it cannot grow in place.
            ARENAS.collect_retired();
            let room = free_run_end(p as usize + LEN) - (p as usize + LEN);
            let grown = (LEN + room + MIB).max(GROWN);
            let (before, faults0) = (rangealloc::stats().reallocs, minor_faults());
            let remaps0 = rangealloc::syscall_counts().get(rangealloc::Syscall::Mremap);
            let q = realloc(p, layout(LEN), grown);
            assert!(!q.is_null() && q != p, "no move");
            let faults = minor_faults() - faults0;
            let remaps = rangealloc::syscall_counts().get(rangealloc::Syscall::Mremap) - remaps0;
            let after = rangealloc::stats().reallocs;
            if dense {
                assert_eq!(bad_pages(q, LEN, TAG), 0, "pages lost in the move");
            } else {
                assert_eq!(bad_pages(q, PAGE, TAG), 0, "first page lost in the move");
                let last = q.add(LEN - PAGE);
                assert_eq!(bad_pages(last, PAGE, !TAG), 0, "last page lost");
                let rest = std::slice::from_raw_parts(q.add(PAGE), LEN - 2 * PAGE);
                assert!(
                    rest.iter().all(|&b| b == 0),
                    "bytes where none were written"
                );
            }
            let options = rangealloc::engine::options::get();
            if sparse && !dense {
                assert_eq!(after.sparse - before.sparse, 1, "sparse copies");
                assert_eq!(after.sparse_bytes - before.sparse_bytes, 2 * PAGE as u64);
            } else {
                assert_eq!(after.sparse - before.sparse, 0, "sparse copies");
            }
            let (remapped, copied) = match (sparse && !dense, options.medium_remap) {
                (true, _) => (0, 0),
                (false, true) => (1, 0),
                (false, false) => (0, 1),
            };
            assert_eq!(after.remapped - before.remapped, remapped, "mremap moves");
            assert_eq!(remaps, remapped, "mremap calls");
            assert_eq!(after.moved - before.moved, copied, "copied whole");
            if remapped == 1 {
                assert_eq!(after.remapped_bytes - before.remapped_bytes, LEN as u64);
            }
            if copied == 1 {
                assert_eq!(after.copied_bytes - before.copied_bytes, LEN as u64);
            } else {
                assert!(
                    faults < (LEN / PAGE / 8) as u64,
                    "{faults} faults: pages copied? (dense {dense})"
                );
            }
            dealloc(q, layout(grown));
        }
    }
}

fn huge_page_marks() -> u64 {
    rangealloc::syscall_counts().get(Syscall::MadviseHugePage)
}

/// The `VmFlags` of the kernel mapping holding `addr`, from `/proc/self/smaps`.
fn vm_flags(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.to_string();
            }
        }
    }
    panic!("no mapping holds {addr:#x}");
}

/// Huge pages (`thp=auto`, the kernel in `madvise` or `always` mode): large objects of
/// 4 MiB and more start on 2 MiB boundaries in reservations of their own, marked
/// `MADV_HUGEPAGE` (when the kernel wants the advice) once per reservation and never
/// in steady state, while small objects and large objects below 4 MiB stay out of
/// them. With `thp=never`, no mark and no huge space at all.
#[test]
fn huge_pages_are_marked_once_per_reservation_and_big_regions_aligned() {
    run_with("thp", "thp=auto");
    run_with("nothp", "thp=never");
}

/// With huge pages on, a thread's first big object reserves huge-page space in the
/// thread's own arena, even when that arena already has base space (small and medium
/// objects): it used to go to another arena's huge space (a fallback placement), so
/// the threads of big-buffers freed into each other's holes while placing in clean
/// space of their own. And a big object there is a whole number of huge pages long, so
/// the hole it leaves fits any object of its length or less on a frame boundary.
#[test]
fn a_threads_first_big_object_goes_to_its_own_arenas_huge_space() {
    run_with("thp-home", "thp=auto");
}

fn huge_space_at_home() {
    use rangealloc::engine::options::{thp, Thp};
    use rangealloc::engine::region::Space;
    if thp() == Thp::Off {
        println!("huge pages are off (kernel mode never): nothing to check");
        return;
    }
    let big = 4 * MIB + 5;
    // SAFETY: pointers are used within their lengths and freed once.
    unsafe {
        let first = alloc(layout(big));
        assert_eq!(ARENAS.space_of(first as usize), Space::Huge);
        let len = rangealloc::usable_size(first);
        assert_eq!(len, 6 * MIB, "a {big}-byte object in huge-page space");
        let main_home = ARENAS.home();
        let first_addr = first as usize;
        std::thread::spawn(move || {
            assert_ne!(
                ARENAS.home(),
                main_home,
                "the new thread shares main's arena"
            );
            // Base space in this thread's arena first: a small and a medium object.
            let small = alloc(layout(100));
            let medium = alloc(layout(64 * 1024));
            let before = ARENAS.fallbacks.get();
            eprintln!(
                "DBG home {} main {} fb {} small {:p} medium {:p}",
                ARENAS.home(),
                main_home,
                before,
                small,
                medium
            );
            let p = alloc(layout(big));
            assert_eq!(ARENAS.space_of(p as usize), Space::Huge);
            assert_eq!(
                ARENAS.fallbacks.get(),
                before,
                "the big object went to another arena's huge space"
            );
            assert!(
                (p as usize).abs_diff(first_addr) >= 1 << 30,
                "the big object went to main's reservation"
            );
            // The hole a freed object leaves takes an object of its length back.
            dealloc(p, layout(big));
            let q = alloc(layout(6 * MIB));
            assert_eq!(q, p, "the freed 6 MiB hole was not reused");
            dealloc(q, layout(6 * MIB));
            dealloc(medium, layout(64 * 1024));
            dealloc(small, layout(100));
        })
        .join()
        .unwrap();
        dealloc(first, layout(big));
    }
}

/// With huge pages on, a big object in huge-page space that shrinks below 4 MiB (the
/// `region` workload shrinks its 64 MiB buffers back to 64 KiB) moves out to base space,
/// its content kept, and leaves its whole region free: the next big buffer takes it
/// from its start, in place of the pages its predecessor faulted in. Shrunk in place,
/// the small remainder kept the region's first frame and split the freed space.
#[test]
fn a_big_object_shrunk_below_huge_sizes_leaves_huge_space() {
    run_with("shrink-out", &format!("{NO_TIMED_PURGE},thp=auto"));
}

fn shrink_out_of_huge_space() {
    use rangealloc::engine::options::{thp, Thp};
    use rangealloc::engine::region::Space;
    if thp() == Thp::Off {
        println!("huge pages are off (kernel mode never): nothing to check");
        return;
    }
    const BIG: usize = 64 * MIB;
    const SMALL: usize = 64 << 10;
    // SAFETY: pointers are used within their current lengths and freed once.
    unsafe {
        let p = alloc(layout(BIG));
        assert_eq!(ARENAS.space_of(p as usize), Space::Huge);
        fill(p, BIG, 3);
        let q = realloc(p, layout(BIG), SMALL);
        assert!(!q.is_null());
        assert_eq!(ARENAS.space_of(q as usize), Space::Base, "shrunk in place");
        assert_eq!(bad_pages(q, SMALL, 3), 0);
        let next = alloc(layout(BIG));
        assert_eq!(next, p, "the next big buffer did not take the freed region");
        dealloc(next, layout(BIG));
        dealloc(q, layout(SMALL));
    }
}

fn huge_pages_once(auto: bool) {
    use rangealloc::engine::options::{thp, Thp};
    use rangealloc::engine::region::Space;
    let mode = thp();
    let on = auto && mode != Thp::Off;
    if auto && mode == Thp::Off {
        let kernel = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        assert!(
            kernel.map_or(true, |k| k.contains("[never]")),
            "thp=auto is off, yet the kernel allows huge pages"
        );
        println!("the kernel's THP mode is never: only the no-change half runs");
    }
    // SAFETY: pointers are used within their lengths and freed once.
    unsafe {
        let small = alloc(layout(100));
        let medium = alloc(layout(40 * 1024));
        let sizes = [4 * MIB, 4 * MIB + PAGE, 5 * MIB + 5, 17 * MIB, 64 * MIB + 1];
        let big: Vec<*mut u8> = sizes.iter().map(|&n| alloc(layout(n))).collect();
        for p in [small, medium] {
            assert_eq!(ARENAS.space_of(p as usize), Space::Base);
            assert!(
                !vm_flags(p as usize).contains(" hg"),
                "small object in THP space"
            );
        }
        for (&p, &n) in big.iter().zip(&sizes) {
            fill(p, n, 1);
            let space = ARENAS.space_of(p as usize);
            if on {
                assert_eq!(p as usize % (2 * MIB), 0, "{n}-byte object at {p:?}");
                assert_eq!(space, Space::Huge, "{n}-byte object");
                if mode == Thp::Advise {
                    assert!(vm_flags(p as usize).contains(" hg"), "{n}: not advised");
                }
            } else {
                assert_eq!(space, Space::Base, "{n}-byte object");
            }
        }
        let marks = huge_page_marks();
        assert_eq!(marks > 0, on && mode == Thp::Advise, "marks: {marks}");
        // Steady state: allocation, growth in place, moves and frees of big objects
        // mark nothing more. The first round may reserve (and mark) what it needs;
        // the same round again, with everything freed in between, marks nothing.
        let warm = churn_big_objects(on);
        assert!(warm - marks <= 2, "{} marks for one round", warm - marks);
        churn_big_objects(on);
        assert_eq!(huge_page_marks(), warm, "MADV_HUGEPAGE in steady state");
        for (p, n) in big.into_iter().zip(sizes) {
            dealloc(p, layout(n));
        }
        dealloc(medium, layout(40 * 1024));
        dealloc(small, layout(100));
    }
}

/// 2000 steps over at most 8 live objects of 4-32 MiB: allocate, realloc (in place or
/// moving) or free; all freed at the end. Returns the huge-page marks so far.
fn churn_big_objects(on: bool) -> u64 {
    let mut rng = rangealloc_tests::XorShift(0x7a9);
    let mut live: Vec<(*mut u8, usize)> = Vec::new();
    // SAFETY: pointers are used within their lengths and freed once.
    unsafe {
        for _ in 0..2000 {
            let n = (4 + rng.below(28)) * MIB + rng.below(MIB);
            if live.len() < 8 {
                let p = alloc(layout(n));
                p.write(1);
                live.push((p, n));
            } else {
                let i = rng.below(live.len());
                let (p, len) = live[i];
                if rng.below(2) == 0 {
                    let q = realloc(p, layout(len), n);
                    assert_eq!(q.read(), 1);
                    if on {
                        assert_eq!(q as usize % (2 * MIB), 0, "realloc to {n}");
                    }
                    live[i] = (q, n);
                } else {
                    dealloc(p, layout(len));
                    live.swap_remove(i);
                }
            }
        }
        for (p, len) in live {
            dealloc(p, layout(len));
        }
    }
    huge_page_marks()
}

/// Growth room does not reserve address space without bound: 3000 live objects of
/// 256 KiB (each would keep 64 MiB of room after it, 190 GiB in all) leave the
/// reservations within 16 GiB plus an arena or two (the bound: 16 GiB or 8x the bytes
/// in use), and every object still works.
#[test]
fn growth_room_reserves_bounded_address_space() {
    run("room-bound");
}

fn room_reserves_bounded() {
    const OBJECTS: usize = 3000;
    const LEN: usize = 256 * 1024;
    const BOUND: usize = 16 << 30;
    const ARENA: usize = 1 << 30;
    // SAFETY: pointers are used within their lengths and freed once.
    unsafe {
        let objs: Vec<*mut u8> = (0..OBJECTS)
            .map(|i| {
                let p = alloc(layout(LEN));
                assert!(!p.is_null());
                p.write(i as u8);
                p
            })
            .collect();
        let reserved = ARENAS.space().reserved;
        assert!(
            reserved <= BOUND + 2 * ARENA,
            "{} GiB reserved for {} MiB of objects",
            reserved >> 30,
            (OBJECTS * LEN) >> 20
        );
        for (i, &p) in objs.iter().enumerate() {
            assert_eq!(p.read(), i as u8);
            dealloc(p, layout(LEN));
        }
    }
}

/// Issue 14 (bigbuf10): with huge pages on, a fresh big object takes a freed dirty hole
/// however small against it (here a 6 MiB hole for a 20 MiB buffer), running on into the
/// clean room after it. It used to skip holes under half its length for clean space:
/// big-buffers' small holes piled up dirty, up to 100 MiB of peak RSS at 5-25 MiB.
#[test]
fn a_big_object_takes_a_dirty_hole_under_half_its_length() {
    run_with("small-hole", &format!("{NO_TIMED_PURGE},thp=auto"));
}

fn big_object_takes_small_hole() {
    use rangealloc::engine::options::{thp, Thp};
    if thp() == Thp::Off {
        println!("huge pages are off (kernel mode never): nothing to check");
        return;
    }
    const HOLE: usize = 6 * MIB;
    const LEN: usize = 20 * MIB;
    // SAFETY: every pointer is used within its allocation and freed once.
    unsafe {
        let p = alloc(layout(HOLE));
        fill(p, HOLE, 1);
        dealloc(p, layout(HOLE));
        let q = alloc(layout(LEN));
        assert_eq!(q, p, "the 6 MiB dirty hole was skipped for a 20 MiB buffer");
        fill(q, LEN, 2);
        assert_eq!(bad_pages(q, LEN, 2), 0);
        dealloc(q, layout(LEN));
    }
}

/// Whether each page of `[p, p + len)` is resident (`mincore`).
fn resident_pages(p: *const u8, len: usize) -> usize {
    let mut vec = vec![0u8; len / PAGE];
    // SAFETY: `p` is page-aligned, `vec` has one byte per page of the range.
    assert_eq!(
        unsafe { libc::mincore(p as *mut libc::c_void, len, vec.as_mut_ptr()) },
        0
    );
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

/// Issue 14 (bigbuf10): with huge pages on, a fresh big object placed at the front of a
/// bigger dirty hole purges the hole's rest right away: only the object could grow into
/// it, and kept, it stayed resident, so each hole's resident size only rose to the
/// biggest buffer ever placed there (big-buffers' peak RSS above jemalloc's). The rest is
/// whole huge pages, counted as a trim; writing the object faults nothing.
#[test]
fn a_big_object_in_a_bigger_dirty_hole_purges_the_rest() {
    run_with("trim", &format!("{NO_TIMED_PURGE},thp=auto"));
}

fn hole_rest_purged() {
    use rangealloc::engine::options::{thp, Thp};
    if thp() == Thp::Off {
        println!("huge pages are off (kernel mode never): nothing to check");
        return;
    }
    const HOLE: usize = 24 * MIB;
    const LEN: usize = 6 * MIB;
    // SAFETY: every pointer is used within its allocation and freed once; `mincore`
    // reads only the mapping's residency.
    unsafe {
        let p = alloc(layout(HOLE));
        fill(p, HOLE, 1);
        dealloc(p, layout(HOLE));
        assert_eq!(
            resident_pages(p, HOLE),
            HOLE / PAGE,
            "the hole was purged at free"
        );
        let before = rangealloc::stats();
        let q = alloc(layout(LEN));
        assert_eq!(q, p, "the dirty hole was not reused");
        let after = rangealloc::stats();
        assert_eq!(after.trims - before.trims, 1, "no trim");
        assert_eq!(
            after.trimmed_bytes - before.trimmed_bytes,
            (HOLE - LEN) as u64
        );
        assert_eq!(
            resident_pages(q.add(LEN), HOLE - LEN),
            0,
            "the rest is resident"
        );
        assert_eq!(
            resident_pages(q, LEN),
            LEN / PAGE,
            "the object's pages went too"
        );
        let faults = minor_faults();
        fill(q, LEN, 2);
        assert!(
            minor_faults() - faults < 16,
            "writing the reused front faulted"
        );
        dealloc(q, layout(LEN));
    }
}
