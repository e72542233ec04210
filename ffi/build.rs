//! Link arguments for `librangealloc.so`.
//!
//! A SONAME, so that programs linked with `-lrangealloc` record `librangealloc.so`
//! rather than the path they were linked against.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librangealloc.so");
    println!("cargo:rerun-if-changed=build.rs");
}
