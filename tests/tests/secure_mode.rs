//! Hardening: guard pages after large objects (`RANGEALLOC_OPTIONS=secure=1`), and with
//! the `secure` cargo feature, encoded free lists that catch writes into freed blocks,
//! randomized free-list order and zero-on-free. Run by tests/run-all.sh with
//! `--features secure`; the guard-page checks run in every build.

use rangealloc::engine;
use rangealloc::RangeAlloc;
use std::os::unix::process::ExitStatusExt;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

fn child(options: &str, mode: &str) -> std::process::Output {
    rangealloc_tests::run_child(mode, Some(options))
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return;
    };
    // SAFETY: deliberate overflows and writes after free, in a child process.
    unsafe {
        match mode.as_str() {
            "overflow-large" => {
                let size = 100_000;
                let p = engine::alloc(size, 8);
                let usable = engine::usable_size(p);
                println!("USABLE {usable}");
                std::ptr::write_bytes(p, 1, usable); // fine
                println!("WITHIN");
                let end = p.add(usable.next_multiple_of(4096));
                end.write_volatile(1); // the guard page
            }
            "guarded-roundtrip" => {
                let mut v: Vec<Vec<u8>> = Vec::new();
                for i in 0..200 {
                    let mut b = vec![i as u8; 50_000 + i * 1000];
                    b.resize(300_000, 3);
                    v.push(b);
                }
                for (i, b) in v.iter().enumerate() {
                    assert_eq!(b[0], i as u8);
                    assert_eq!(b[299_999], 3);
                }
                drop(v);
                println!("ROUNDTRIP OK");
            }
            "write-after-free" => {
                let p = engine::alloc(64, 8);
                let q = engine::alloc(64, 8);
                engine::free(p);
                engine::free(q);
                // Overwrite q's free-list link (the first word) with a wild pointer.
                (q as *mut usize).write(0x4141_4141_4141);
                for _ in 0..10_000 {
                    engine::alloc(64, 8);
                }
            }
            _ => {}
        }
    }
    println!("SURVIVED");
}

#[test]
fn guard_page_stops_large_overflow() {
    let out = child("secure=1", "overflow-large");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("WITHIN"), "{stdout}");
    assert!(
        !stdout.contains("SURVIVED"),
        "overflow into the guard went unnoticed"
    );
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV));
}

#[test]
fn guarded_objects_work_normally() {
    let out = child("secure=1", "guarded-roundtrip");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ROUNDTRIP OK"));
}

#[cfg(feature = "secure")]
#[test]
fn write_after_free_is_caught_on_allocation() {
    let out = child("", "write-after-free");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(stderr.contains("free list corrupted"), "{stderr}");
}

#[cfg(feature = "secure")]
#[test]
fn free_list_order_is_randomized_and_freed_blocks_are_wiped() {
    // SAFETY: plain allocations, checked and freed.
    unsafe {
        let blocks: Vec<usize> = (0..64).map(|_| engine::alloc(48, 8) as usize).collect();
        let ascending = blocks.windows(2).filter(|w| w[1] == w[0] + 48).count();
        assert!(
            ascending < 32,
            "allocation order looks sequential: {ascending}/63"
        );
        let p = blocks[0] as *mut u8;
        std::ptr::write_bytes(p, 0xee, 48);
        for &b in &blocks {
            engine::free(b as *mut u8);
        }
        let tail = std::slice::from_raw_parts(p.add(16), 32);
        assert!(
            tail.iter().all(|&b| b == 0),
            "freed block not wiped: {tail:?}"
        );
    }
}
