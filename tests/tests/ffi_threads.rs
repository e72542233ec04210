//! Threads, fork and the dynamic loader under `LD_PRELOAD`: `tests/c/threads.c` (many
//! threads, cross-thread frees, thread churn), `fork.c` (fork from several threads
//! while others allocate; children allocate, free and exit 0), `dlopen_tls.c` (dlopen
//! and dlclose of a library with TLS from many threads), and `dlopen_malloc.c`
//! (librangealloc.so `dlopen`ed, not preloaded: dynamic TLS, its own malloc family from
//! threads started before and after the dlopen).

mod ffi_support;

use ffi_support::{assert_lines, compile, preloaded, run, so_path, Lang};
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

/// A program with more than 32 pthread keys before its first allocation: the
/// allocator's own keys need glibc's second-level blocks, allocated inside
/// `pthread_setspecific`; a thread whose first allocation is large keeps every key's
/// value, and thousands of such threads leak nothing (review15 #1).
#[test]
fn threads_keep_their_exit_hooks_with_keys_past_32() {
    let exe = compile("late_keys.c", "late_keys", Lang::C, &[]);
    let out = run(preloaded(&exe), LIMIT);
    out.assert_success("late_keys under LD_PRELOAD");
    assert_lines(
        &out.stdout,
        &[
            "ok keys keep their values",
            "ok no leak per thread",
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

/// A `dlopen`ed copy sits in dynamic TLS, so it must keep the general thread-local
/// access (the static-TLS proof fails for it), and Rust code inside it must not hand
/// its blocks to glibc's `free`.
#[test]
fn dlopened_library_serves_many_threads() {
    let exe = compile("dlopen_malloc.c", "dlopen_malloc", Lang::C, &[]);
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg(so_path());
    let out = run(cmd, LIMIT);
    out.assert_success("dlopen_malloc (not preloaded)");
    assert_lines(&out.stdout, &["ALL OK"]);
}
