//! The region workload in steady state, alone in its own test binary (process), so no
//! other test's allocations can reserve address space during the measurement.

use rangealloc::RangeAlloc;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

/// The region workload (threads growing buffers 64 KiB -> 64 MiB by realloc, shrinking
/// them, freeing them on another thread) makes no mmap/munmap/mremap/mprotect call once
/// warm: each takes the kernel's process-wide mmap_lock for write.
#[test]
fn region_workload_steady_state_takes_no_mmap_lock() {
    fn round(threads: usize) {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut v: Vec<u8> = Vec::with_capacity(64 << 10);
                    while v.capacity() < 64 << 20 {
                        let cap = v.capacity() * 2;
                        v.reserve_exact(cap - v.len());
                        v.resize(cap, t as u8);
                    }
                    v.truncate(1 << 20);
                    v.shrink_to_fit();
                    tx.send(v).unwrap();
                })
            })
            .collect();
        drop(tx);
        for h in handles {
            h.join().unwrap();
        }
        for v in rx {
            assert_eq!(v.len(), 1 << 20);
        }
    }
    round(4); // warm-up: arenas reserved, heaps created
    let before = rangealloc::syscall_counts();
    for _ in 0..3 {
        round(4);
    }
    let after = rangealloc::syscall_counts();
    assert_eq!(
        after.mmap_lock_writers(),
        before.mmap_lock_writers(),
        "steady state issued mmap-lock syscalls: {before:?} -> {after:?}"
    );
}
