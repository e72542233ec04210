//! Threads, fork and the dynamic loader under `LD_PRELOAD`: `tests/c/threads.c` (many
//! threads, cross-thread frees, thread churn), `fork.c` (fork from several threads
//! while others allocate; children allocate, free and exit 0), `dlopen_tls.c` (dlopen
//! and dlclose of a library with TLS from many threads).

mod ffi_support;

use ffi_support::{assert_lines, compile, preloaded, run, Lang};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(180);

#[test]
fn threads_cross_thread_free_and_churn() {
    let exe = compile("threads.c", "threads", Lang::C, &[]);
    let out = run(preloaded(&exe), LIMIT);
    out.assert_success("threads under LD_PRELOAD");
    assert_lines(
        &out.stdout,
        &[
            "ok threads",
            "ok cross-thread free",
            "ok thread churn",
            "ALL OK",
        ],
    );
}

#[test]
fn fork_from_several_threads() {
    let exe = compile("fork.c", "fork", Lang::C, &[]);
    let out = run(preloaded(&exe), LIMIT);
    out.assert_success("fork under LD_PRELOAD");
    assert_lines(&out.stdout, &["ALL OK"]);
}

#[test]
fn dlopen_with_tls_from_many_threads() {
    let lib = compile(
        "dlopen_tls_lib.c",
        "libdlopen_tls.so",
        Lang::C,
        &["-shared", "-fPIC"],
    );
    let exe = compile("dlopen_tls.c", "dlopen_tls", Lang::C, &[]);
    let mut cmd = preloaded(&exe);
    cmd.arg(&lib);
    let out = run(cmd, LIMIT);
    out.assert_success("dlopen_tls under LD_PRELOAD");
    assert_lines(&out.stdout, &["ALL OK"]);
}
