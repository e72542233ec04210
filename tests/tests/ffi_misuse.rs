//! Misuse through the C ABI (`tests/c/misuse.c`): double frees, frees of stack,
//! static and interior pointers, `realloc` and `malloc_usable_size` of foreign pointers
//! abort with SIGABRT and rangealloc's one-line report naming the call and the pointer
//! (DESIGN.md §5 "Foreign pointers", issue 7); C23's sized frees with a size the
//! block cannot have, and glibc's `__libc_free` (issue 17).

mod ffi_support;

use ffi_support::{compile, preloaded, run, Lang};
use std::time::Duration;

#[test]
fn misuse_aborts_with_a_report() {
    let exe = compile("misuse.c", "misuse", Lang::C, &[]);
    let cases = [
        ("double-free", "free(): double free of 0x"),
        ("double-free-large", "free(): double free of 0x"),
        (
            "free-stack",
            "free(): pointer not allocated by rangealloc: 0x",
        ),
        (
            "free-static",
            "free(): pointer not allocated by rangealloc: 0x",
        ),
        ("free-interior", "free(): "),
        (
            "free-alias-high",
            "free(): pointer not allocated by rangealloc: 0x",
        ),
        (
            "free-alias-kernel",
            "free(): pointer not allocated by rangealloc: 0x",
        ),
        (
            "free-interior-large",
            "free(): pointer into the middle of an allocation: 0x",
        ),
        ("delete-twice", "operator delete(): double free of 0x"),
        ("cfree-twice", "cfree(): double free of 0x"),
        (
            "dallocx-stack",
            "dallocx(): pointer not allocated by rangealloc: 0x",
        ),
        (
            "free-sized-too-large",
            "free_sized(): size larger than the usable size of the block at 0x",
        ),
        (
            "free-sized-too-large-large",
            "free_sized(): size larger than the usable size of the block at 0x",
        ),
        (
            "free-aligned-sized-bad-align",
            "free_aligned_sized(): block not aligned to the given alignment: 0x",
        ),
        ("libc-free-twice", "__libc_free(): double free of 0x"),
        (
            "realloc-stack",
            "realloc(): pointer not allocated by rangealloc: 0x",
        ),
        (
            "usable-size-static",
            "malloc_usable_size(): pointer not allocated by rangealloc: 0x",
        ),
    ];
    for (case, report) in cases {
        let mut cmd = preloaded(&exe);
        cmd.arg(case);
        let out = run(cmd, Duration::from_secs(30));
        assert_eq!(
            out.signal(),
            Some(libc::SIGABRT),
            "{case}: {:?}, stderr {}",
            out.status,
            out.stderr
        );
        assert!(!out.stdout.contains("survived"), "{case} survived");
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with("rangealloc: "))
            .unwrap_or("");
        assert!(
            line.contains(report),
            "{case}: expected {report:?} in {:?}",
            out.stderr
        );
    }
}
