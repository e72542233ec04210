//! C++ `operator new`/`delete` under `LD_PRELOAD` (`tests/c/cxx_new.cpp`): all forms
//! resolve to rangealloc, honour alignment, loop over the new-handler and throw
//! `std::bad_alloc` (through the assembly trampolines), and carry an STL workload.

mod ffi_support;

use ffi_support::{assert_lines, compile, have, preloaded, run, Lang};
use std::time::Duration;

#[test]
fn operator_new_and_delete() {
    if !have("c++") {
        eprintln!("SKIP: no C++ compiler (apt package g++)");
        return;
    }
    let exe = compile(
        "cxx_new.cpp",
        "cxx_new",
        Lang::Cxx,
        &["-faligned-new", "-fsized-deallocation"],
    );
    let out = run(preloaded(&exe), Duration::from_secs(120));
    out.assert_success("cxx_new under LD_PRELOAD");
    assert_lines(
        &out.stdout,
        &[
            "ok resolution",
            "ok forms",
            "ok new-expressions",
            "ok bad_alloc",
            "ok new_handler",
            "ok stl threads",
            "ALL OK",
        ],
    );
}
