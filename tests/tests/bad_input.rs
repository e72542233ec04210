//! Bad input gets a clear outcome: misuse aborts with one line naming the call and the
//! pointer (checked in child processes), odd and huge sizes either work or return
//! null, and running out of address space returns null and recovers.

use rangealloc::engine;
use rangealloc::RangeAlloc;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

fn child(mode: &str) -> std::process::Output {
    rangealloc_tests::run_child(mode, None)
}

static STATIC_BYTES: [u8; 64] = [0; 64];

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return;
    };
    // SAFETY: deliberately invalid frees; the allocator must abort before acting.
    unsafe {
        match mode.as_str() {
            "double-free-small" => {
                let p = engine::alloc(40, 8);
                println!("PTR {:#x}", p as usize);
                engine::free(p);
                engine::free(p);
            }
            "double-free-large" => {
                let p = engine::alloc(1 << 20, 8);
                println!("PTR {:#x}", p as usize);
                engine::free(p);
                engine::free(p);
            }
            "double-free-cross-thread" => {
                let p = engine::alloc(40, 8) as usize;
                println!("PTR {p:#x}");
                std::thread::spawn(move || engine::free(p as *mut u8))
                    .join()
                    .unwrap();
                engine::free(p as *mut u8);
            }
            "double-free-medium-cached-by-another-thread" => {
                // The other thread's free keeps the region in that thread's cache
                // (the thread stays alive, so it is still cached at the second free).
                let p = engine::alloc(100 << 10, 8) as usize;
                println!("PTR {p:#x}");
                let (freed, wait) = std::sync::mpsc::channel();
                let (_hold, stay) = std::sync::mpsc::channel::<()>();
                std::thread::spawn(move || {
                    // A small allocation first gives the thread its heap (and cache).
                    engine::free(engine::alloc(16, 8));
                    engine::free(p as *mut u8);
                    freed.send(()).unwrap();
                    let _ = stay.recv();
                });
                wait.recv().unwrap();
                engine::free(p as *mut u8);
            }
            "interior-small" => {
                let p = engine::alloc(64, 8).add(16);
                println!("PTR {:#x}", p as usize);
                engine::free(p);
            }
            "interior-large" => {
                let p = engine::alloc(1 << 20, 8).add(4096);
                println!("PTR {:#x}", p as usize);
                engine::free(p);
            }
            "misaligned-small" => {
                let p = engine::alloc(64, 8).add(1);
                println!("PTR {:#x}", p as usize);
                engine::free(p);
            }
            "stack" => {
                let mut x = [0u8; 32];
                let p = x.as_mut_ptr();
                println!("PTR {:#x}", p as usize);
                engine::free(p);
            }
            "static" => {
                let p = STATIC_BYTES.as_ptr() as *mut u8;
                println!("PTR {:#x}", p as usize);
                engine::free(p);
            }
            "foreign-heap" => {
                let p = libc::malloc(100) as *mut u8;
                println!("PTR {:#x}", p as usize);
                engine::free(p);
            }
            "realloc-foreign" => {
                let p = libc::malloc(100) as *mut u8;
                println!("PTR {:#x}", p as usize);
                engine::realloc(p, 200, 8);
            }
            "realloc-freed-large" => {
                let p = engine::alloc(1 << 20, 8);
                println!("PTR {:#x}", p as usize);
                engine::free(p);
                engine::realloc(p, 2 << 20, 8);
            }
            "usable-size-freed-medium" => {
                let p = engine::alloc(100 << 10, 8);
                println!("PTR {:#x}", p as usize);
                engine::free(p);
                engine::usable_size(p);
            }
            "usable-size-freed-small" => {
                let p = engine::alloc(100, 8);
                println!("PTR {:#x}", p as usize);
                engine::free(p);
                engine::usable_size(p);
            }
            "rlimit" => rlimit_child(),
            _ => {}
        }
    }
    println!("SURVIVED");
}

/// Checks that `mode` aborts with one line naming `call`, the misuse and the pointer.
fn expect_abort(mode: &str, call: &str, what: &str) {
    let out = child(mode);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("SURVIVED"),
        "{mode}: misuse went unnoticed"
    );
    assert!(!out.status.success(), "{mode}: exited successfully");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{mode}: {stderr}");
    let ptr = stdout
        .split_whitespace()
        .skip_while(|w| *w != "PTR")
        .nth(1)
        .expect("child printed its pointer")
        .to_string();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("rangealloc: "))
        .unwrap_or_else(|| panic!("{mode}: no report in {stderr:?}"));
    assert!(line.contains(&format!("{call}(): ")), "{mode}: {line}");
    assert!(line.contains(what), "{mode}: {line}");
    assert!(line.ends_with(&ptr), "{mode}: {line} does not name {ptr}");
}

#[test]
fn double_frees_abort_naming_the_pointer() {
    expect_abort("double-free-small", "free", "double free");
    expect_abort("double-free-large", "free", "double free");
    expect_abort("double-free-cross-thread", "free", "double free");
    expect_abort(
        "double-free-medium-cached-by-another-thread",
        "free",
        "double free",
    );
}

#[test]
fn interior_and_misaligned_frees_abort() {
    expect_abort("interior-small", "free", "not allocated");
    expect_abort("interior-large", "free", "middle of an allocation");
    expect_abort("misaligned-small", "free", "not allocated");
}

#[test]
fn foreign_pointers_abort() {
    expect_abort("stack", "free", "not allocated");
    expect_abort("static", "free", "not allocated");
    expect_abort("foreign-heap", "free", "not allocated");
    expect_abort("realloc-foreign", "realloc", "not allocated");
}

#[test]
fn use_of_freed_blocks_is_reported() {
    expect_abort("realloc-freed-large", "realloc", "not allocated");
    expect_abort(
        "usable-size-freed-medium",
        "malloc_usable_size",
        "not allocated",
    );
    expect_abort(
        "usable-size-freed-small",
        "malloc_usable_size",
        "already freed",
    );
}

#[test]
fn huge_and_odd_sizes() {
    // SAFETY: every pointer is checked and freed once.
    unsafe {
        for size in [
            usize::MAX,
            usize::MAX / 2 + 1,
            usize::MAX - 4095,
            isize::MAX as usize,
        ] {
            assert!(engine::alloc(size, 8).is_null(), "size {size:#x}");
            assert!(engine::alloc_zeroed(size, 8).is_null(), "size {size:#x}");
        }
        let p = engine::alloc(0, 1);
        assert!(!p.is_null());
        let q = engine::alloc(0, 1);
        assert_ne!(p, q, "zero-size allocations are distinct");
        engine::free(p);
        engine::free(q);
        for shift in 0..=30 {
            let align = 1usize << shift;
            let p = engine::alloc(1, align);
            assert!(!p.is_null(), "align 2^{shift}");
            assert_eq!(p as usize % align, 0);
            p.write(1);
            engine::free(p);
        }
        let p = engine::alloc(100, 8);
        assert!(engine::realloc(p, usize::MAX, 8).is_null());
        assert_eq!(*p, *p, "the block survives a failed realloc");
        engine::free(p);
    }
}

fn rlimit_child() {
    let limit = 1usize << 31; // 2 GiB of address space
    let rl = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: valid rlimit struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);
    let mut held = Vec::new();
    let mut failures = 0;
    for _ in 0..4096 {
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(16 << 20).is_err() {
            failures += 1;
            break;
        }
        held.push(v);
    }
    // Small allocations may fail too: they must return null, not crash.
    let mut small_fail = 0;
    for _ in 0..100_000 {
        let mut s: Vec<u8> = Vec::new();
        if s.try_reserve_exact(1000).is_err() {
            small_fail += 1;
        } else {
            held.push(s);
        }
    }
    println!("FAILED {failures} SMALLFAIL {small_fail}");
    held.clear();
    let purged = rangealloc::purge();
    // After freeing, big allocations work again.
    let again: Vec<Vec<u8>> = (0..16).map(|_| vec![1u8; 16 << 20]).collect();
    println!("RECOVERED {} purged {}", again.len(), purged);
}

#[test]
fn address_space_exhaustion_returns_null_and_recovers() {
    let out = child("rlimit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("FAILED 1"),
        "big allocations never failed: {stdout}"
    );
    assert!(stdout.contains("RECOVERED 16"), "{stdout}");
    assert!(stdout.contains("SURVIVED"));
}
