//! Zero-filled large objects on fresh pages (`large::prefault`, option
//! `calloc_prefault`): once sampled objects show the program writes its zeroed objects
//! whole, the next ones are faulted in before they are returned, so reading one before
//! writing it maps no zero page (no fault at all); a program that then leaves its
//! zeroed objects sparse loses at most the credit's worth of RSS, and once a sparse
//! sample is freed nothing more is prefaulted; every zeroed object reads zero, guard
//! page or not. Each check runs in a child process of its own (the credit and the
//! counters are process-wide).

use rangealloc::engine::large::prefault;
use rangealloc::engine::purge;
use rangealloc::RangeAlloc;
use std::alloc::{alloc_zeroed, dealloc, Layout};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
/// Above the medium cache's sizes (a cached region is reused dirty and zeroed by a
/// write, never fresh) and below huge-page space: a base-space object of 384 pages.
const LEN: usize = 3 * MIB / 2;
/// No timed purge during a check: each phase purges what it freed itself
/// (`purge_all`), so every placement lands on pages that read zero (fresh or purged),
/// the ones prefaulting decides about.
const NO_TIMED_PURGE: &str = "purge_delay_ms=600000";

fn layout() -> Layout {
    Layout::from_size_align(LEN, 8).unwrap()
}

/// Reads every word of `p`'s `LEN` bytes (as a program checking a zeroed buffer does)
/// and returns how many are not zero.
///
/// # Safety
/// `p` is valid for `LEN` bytes.
unsafe fn nonzero_words(p: *const u8) -> usize {
    let words = p.cast::<u64>();
    // SAFETY: within the caller's `LEN` bytes.
    (0..LEN / 8)
        .filter(|&i| unsafe { words.add(i).read_volatile() } != 0)
        .count()
}

/// Writes a word in every page of `p`'s `LEN` bytes.
///
/// # Safety
/// As `nonzero_words`.
unsafe fn write_all(p: *mut u8) {
    for off in (0..LEN).step_by(PAGE) {
        // SAFETY: within the caller's bytes, 8-byte aligned.
        unsafe { p.add(off).cast::<u64>().write_volatile(off as u64 | 1) };
    }
}

/// Allocates, checks zero, writes whole and frees `n` zeroed objects: a program that
/// uses its zeroed objects whole.
fn dense_phase(n: usize) {
    for _ in 0..n {
        // SAFETY: a nonzero layout; the object is ours until the `dealloc`.
        unsafe {
            let p = alloc_zeroed(layout());
            assert!(!p.is_null());
            assert_eq!(nonzero_words(p), 0, "a zeroed object reads zero");
            write_all(p);
            dealloc(p, layout());
        }
        purge::purge_all();
    }
}

fn resident_bytes() -> usize {
    rangealloc_tests::rss_bytes()
}

/// A program that writes its zeroed objects whole: after the first samples, objects are
/// prefaulted, and a read-then-write of a prefaulted one takes no page fault (where the
/// lazy object took one per page for the read's zero page and one for the write).
fn dense() {
    dense_phase(64);
    let written = prefault::FOUND_WRITTEN.get();
    let prefaulted = prefault::PREFAULTED.get();
    assert!(written >= 1, "a sample found written ({written})");
    assert_eq!(prefault::FOUND_SPARSE.get(), 0);
    assert!(
        prefaulted >= 32,
        "most of 64 objects prefaulted once samples were found written ({prefaulted})"
    );
    // One more object that the process's sampling does not pick: count its faults.
    let mut checked = false;
    for _ in 0..16 {
        let before = prefault::PREFAULTED.get();
        // SAFETY: as in `dense_phase`.
        unsafe {
            let p = alloc_zeroed(layout());
            assert!(!p.is_null());
            if prefault::PREFAULTED.get() == before + 1 {
                let faults = rangealloc_tests::minor_faults(libc::RUSAGE_THREAD);
                assert_eq!(nonzero_words(p), 0);
                write_all(p);
                let taken = rangealloc_tests::minor_faults(libc::RUSAGE_THREAD) - faults;
                assert!(
                    taken <= 2,
                    "a prefaulted object of {} pages took {taken} faults",
                    LEN / PAGE
                );
                checked = true;
            } else {
                write_all(p);
            }
            dealloc(p, layout());
        }
        purge::purge_all();
        if checked {
            break;
        }
    }
    assert!(checked, "no object of 16 was prefaulted");
}

/// The option off: nothing is prefaulted or sampled.
fn off() {
    dense_phase(64);
    assert_eq!(prefault::PREFAULTED.get(), 0);
    assert_eq!(prefault::FOUND_WRITTEN.get(), 0);
}

/// A program that wrote its zeroed objects whole, then keeps 200 of them with one byte
/// written each (review15 #7: 200 `calloc(1 MiB)` prefaulted held 205 MiB): the RSS
/// they add stays within the credit's bound, and once the sparse samples are freed the
/// credit is gone and the next zeroed objects stay lazy.
fn sparse() {
    dense_phase(64);
    assert!(prefault::credit() > 0, "credit earned by the dense phase");
    let before = resident_bytes();
    let held: Vec<*mut u8> = (0..200)
        .map(|_| {
            // SAFETY: a nonzero layout; one byte written, inside the object.
            unsafe {
                let p = alloc_zeroed(layout());
                assert!(!p.is_null());
                p.write(1);
                p
            }
        })
        .collect();
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown <= prefault::CREDIT_MAX + 8 * MIB,
        "200 sparse objects of {} KiB added {} MiB of RSS (credit bound {} MiB)",
        LEN >> 10,
        grown / MIB,
        prefault::CREDIT_MAX / MIB
    );
    for p in held {
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(p, layout()) };
    }
    purge::purge_all();
    assert!(
        prefault::FOUND_SPARSE.get() >= 1,
        "a sparse sample was found at its free"
    );
    assert_eq!(
        prefault::credit(),
        0,
        "a sparse sample takes the credit away"
    );
    let prefaulted = prefault::PREFAULTED.get();
    let again: Vec<*mut u8> = (0..32)
        .map(|_| {
            // SAFETY: as above.
            unsafe {
                let p = alloc_zeroed(layout());
                assert!(!p.is_null());
                assert_eq!(nonzero_words(p), 0);
                p.write(1);
                p
            }
        })
        .collect();
    assert_eq!(
        prefault::PREFAULTED.get(),
        prefaulted,
        "nothing prefaulted without credit"
    );
    for p in again {
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(p, layout()) };
    }
}

#[test]
fn zeroed_objects_written_whole_are_prefaulted() {
    rangealloc_tests::run_child_passing("dense", NO_TIMED_PURGE);
    // With a guard page after each object (secure mode): the guard is not prefaulted,
    // and the objects still read zero.
    rangealloc_tests::run_child_passing("dense", &format!("{NO_TIMED_PURGE},secure=1"));
}

#[test]
fn prefault_off_leaves_zeroed_objects_lazy() {
    rangealloc_tests::run_child_passing("off", &format!("{NO_TIMED_PURGE},calloc_prefault=0"));
}

#[test]
fn sparse_zeroed_objects_cost_at_most_the_credit() {
    rangealloc_tests::run_child_passing("sparse", NO_TIMED_PURGE);
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return; // only meaningful when spawned by the tests above
    };
    if !rangealloc::engine::os::pagemap::scans() {
        // No page scan here (before 6.7, or a sandbox): no evidence, nothing prefaulted.
        dense_phase(64);
        assert_eq!(prefault::PREFAULTED.get(), 0);
        println!("PASSED {mode}");
        return;
    }
    match mode.as_str() {
        "dense" => dense(),
        "off" => off(),
        "sparse" => sparse(),
        _ => panic!("unknown mode {mode}"),
    }
    println!("PASSED {mode}");
}
