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
//! if any, is unaffected.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librangealloc.so");
    println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    println!("cargo:rerun-if-changed=build.rs");
}
