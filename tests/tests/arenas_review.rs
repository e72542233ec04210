//! Review of the arenas commit (3162e99): placements that fail although another arena
//! has room. Checked in child processes (an address-space limit is process-wide, and
//! `narenas` is read once per process).

use rangealloc::engine::region::ARENAS;
use rangealloc::RangeAlloc;
use std::alloc::{alloc, dealloc, Layout};

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const LARGE: usize = 1 << 20;

fn vm_size() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .expect("VmSize")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a number");
    kib * 1024
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return;
    };
    assert_eq!(mode, "rlimit");
    // One large object first: its home arena reserves (1 GiB) and keeps most of it free.
    let layout = Layout::from_size_align(LARGE, 8).unwrap();
    // SAFETY: non-zero size.
    let first = unsafe { alloc(layout) };
    assert!(!first.is_null());
    // Address space for what the program does besides (thread stacks, the harness), but
    // not for another 1 GiB reservation: the memory the process already has must do.
    let limit = (vm_size() + (512 << 20)) as libc::rlim_t;
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
    // Threads on a home arena that is not main's (each takes the ticket the one before
    // handed back), which cannot reserve: each places one large object.
    let mut failed = 0;
    for _ in 0..4 {
        let ok = std::thread::spawn(move || {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) };
            if p.is_null() {
                return false;
            }
            // SAFETY: allocated just above with this layout.
            unsafe { dealloc(p, layout) };
            true
        })
        .join()
        .unwrap();
        if !ok {
            failed += 1;
        }
    }
    let reserved = ARENAS.space().reserved;
    println!("FAILED {failed} reserved {} MiB", reserved >> 20);
}

/// A thread whose home arena has no reservation yet reserves one, and if it cannot
/// (address-space limit, `vm.overcommit_memory=2`, `vm.max_map_count`), its placement
/// fails: other arenas with nearly 1 GiB free each are never tried. With one table
/// (before 3162e99) the same program placed every object in the first reservation.
#[test]
fn a_fresh_home_arena_that_cannot_reserve_uses_the_others() {
    let out = rangealloc_tests::run_child("rlimit", Some("narenas=4"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = stdout
        .lines()
        .find_map(|l| l.find("FAILED").map(|at| l[at..].to_owned()))
        .unwrap_or_else(|| panic!("no FAILED line in {stdout}"));
    assert!(
        line.starts_with("FAILED 0 "),
        "large placements failed with free space in other arenas: {line}"
    );
}

/// Several arenas at once: threads place, grow, shrink and free large objects, one in
/// four freed by another thread (a retire onto an arena that is not the freer's home);
/// contents stay intact and the regions of all arenas never overlap.
#[test]
fn cross_arena_churn_keeps_contents_and_tiling() {
    use std::sync::mpsc;
    const THREADS: usize = 6;
    const OPS: usize = 3000;
    let (tx, rx) = mpsc::channel::<(usize, usize, u8)>();
    let freer = std::thread::spawn(move || {
        for (p, len, tag) in rx {
            let p = p as *mut u8;
            // SAFETY: a live object of `len` bytes handed over by its owner.
            let s = unsafe { std::slice::from_raw_parts(p, len) };
            assert!(s.iter().step_by(4096).all(|&b| b == tag), "content lost");
            // SAFETY: as above, allocated with this layout.
            unsafe { dealloc(p, Layout::from_size_align(len, 8).unwrap()) };
        }
    });
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut rng = rangealloc_tests::XorShift(0x9E37_79B9 + t as u64 * 7919);
                let mut live: Vec<(usize, usize, u8)> = Vec::new();
                for i in 0..OPS {
                    let tag = (i % 251) as u8 + 1;
                    match rng.below(4) {
                        0 | 1 => {
                            let len = (64 << 10) + rng.below(2 << 20);
                            let layout = Layout::from_size_align(len, 8).unwrap();
                            // SAFETY: non-zero size.
                            let p = unsafe { alloc(layout) };
                            assert!(!p.is_null());
                            // SAFETY: fresh object of `len` bytes.
                            unsafe { std::ptr::write_bytes(p, tag, len) };
                            live.push((p as usize, len, tag));
                        }
                        2 if !live.is_empty() => {
                            let k = rng.below(live.len());
                            let (p, len, tag) = live[k];
                            let new_len = (64 << 10) + rng.below(4 << 20);
                            // SAFETY: live object of this layout.
                            let q = unsafe {
                                std::alloc::realloc(
                                    p as *mut u8,
                                    Layout::from_size_align(len, 8).unwrap(),
                                    new_len,
                                )
                            };
                            assert!(!q.is_null());
                            // SAFETY: the first min(len, new_len) bytes carry over.
                            let s = unsafe { std::slice::from_raw_parts(q, len.min(new_len)) };
                            assert!(
                                s.iter().step_by(4096).all(|&b| b == tag),
                                "realloc lost content"
                            );
                            // SAFETY: the new object has `new_len` bytes.
                            unsafe { std::ptr::write_bytes(q, tag, new_len) };
                            live[k] = (q as usize, new_len, tag);
                        }
                        _ if !live.is_empty() => {
                            let k = rng.below(live.len());
                            let obj = live.swap_remove(k);
                            if rng.below(4) == 0 {
                                tx.send(obj).unwrap();
                            } else {
                                let (p, len, tag) = obj;
                                // SAFETY: live object of `len` bytes.
                                let s = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
                                assert!(s.iter().step_by(4096).all(|&b| b == tag), "content lost");
                                // SAFETY: as above.
                                unsafe {
                                    dealloc(p as *mut u8, Layout::from_size_align(len, 8).unwrap())
                                };
                            }
                        }
                        _ => {}
                    }
                    while live.len() > 24 {
                        tx.send(live.swap_remove(0)).unwrap();
                    }
                }
                for obj in live {
                    tx.send(obj).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    drop(tx);
    freer.join().unwrap();
    ARENAS.collect_retired();
    let mut regions = Vec::new();
    ARENAS.for_each_region(|start, len, _, _| regions.push((start, len)));
    regions.sort_unstable();
    for w in regions.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "regions overlap: {:x?}", w);
    }
    let used = (0..64).filter(|&i| ARENAS.table(i).in_use()).count();
    println!("arenas in use {used}, fallbacks {}", ARENAS.fallbacks.get());
    assert!(used > 1, "the test ran in one arena only");
}
