//! Link arguments for `librangealloc.so`.
//!
//! A SONAME, so that programs linked with `-lrangealloc` record `librangealloc.so`
//! rather than the path they were linked against.
//!
//! libgcc's unwinder linked in statically (`libgcc_eh.a`, ahead of the `-lgcc_s` that
//! `std` asks for, which `--as-needed` then drops): `std`'s panic and backtrace code and
//! the heap profiler (`prof::libgcc`) call it. Through `libgcc_s.so` every program the
//! library is preloaded into loaded and relocated one more shared object, about 0.2 ms
//! per process, which a C program that never unwinds does not otherwise pay
//! (BENCHMARKS.md, "Start-up cost"; `ffi_dropin.rs` checks that nothing else is loaded).
//! Its symbols stay local (the cdylib exports only our own), so the program's libgcc,
//! if any, is unaffected. Two `-u`s make the archive's members part of the link where
//! `-lgcc_eh` stands: without LTO (a debug build) the objects that call the unwinder
//! come after it, and GNU ld, which does not look back, took `libgcc_s` for them
//! (review19 M4). Only on GNU/Linux and where the compiler has the archive (review19
//! M5); elsewhere the library links libgcc as `std` does, and says so.
//!
//! A library built where glibc is 2.35 or later needs 2.35 at run time: that libgcc's
//! FDE lookup calls `_dl_find_object` (review19 M3; built against an older glibc, its
//! libgcc does not).

use std::process::Command;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librangealloc.so");
    println!("cargo:rerun-if-changed=build.rs");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") != "linux" || target("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    if !has_libgcc_eh() {
        println!(
            "cargo:warning=libgcc_eh.a not found: librangealloc.so links libgcc_s.so, \
             which every program it is preloaded into then loads too"
        );
        return;
    }
    println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    for symbol in ["_Unwind_Backtrace", "_Unwind_Find_FDE"] {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-u,{symbol}");
    }
}

/// Whether the C compiler has `libgcc_eh.a`: `-print-file-name` prints the file's
/// path, or its bare name when it has none.
fn has_libgcc_eh() -> bool {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .is_some_and(|path| path != "libgcc_eh.a" && std::path::Path::new(&path).exists())
}
