//! Real programs on rangealloc: each workload script in `tests/real/` runs once with
//! the C library's allocator and once with `librangealloc.so` preloaded into the
//! program under test; both runs must succeed and print byte-identical output.
//!
//! A script exits 77 when its program is not installed; the test then passes with a
//! "SKIP" note naming the Debian package (`.ci/run` installs them all). Timings of both
//! runs are printed; `tests/real/compare.sh` is the benchmark (not a test).

mod ffi_support;

use ffi_support::{run, so_path, workspace, Outcome};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Exit status by which a workload script says "program not installed".
const SKIPPED: i32 = 77;

/// Runs `tests/real/<script>` with `RA_PRELOAD` set to `preload` (or unset).
fn run_script(script: &str, preload: Option<&Path>, limit: Duration) -> Outcome {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace().join("tests/real").join(script))
        .env_remove("LD_PRELOAD")
        .env_remove("RA_TIME_LOG")
        .env_remove("RA_SCALE");
    match preload {
        Some(so) => cmd.env("RA_PRELOAD", so),
        None => cmd.env_remove("RA_PRELOAD"),
    };
    run(cmd, limit)
}

/// Runs `script` without and with the preload and compares the two outputs. Returns
/// the preloaded run, or `None` if the script skipped.
fn same_with_and_without_preload(script: &str, limit: Duration) -> Option<Outcome> {
    let plain = run_script(script, None, limit);
    if plain.status.code() == Some(SKIPPED) {
        eprintln!("{script}: {}", plain.stderr.trim());
        return None;
    }
    plain.assert_success(&format!("{script} without preload"));
    let with = run_script(script, Some(so_path()), limit);
    with.assert_success(&format!("{script} with {}", so_path().display()));
    assert!(!plain.stdout.trim().is_empty(), "{script} printed nothing");
    if plain.stdout != with.stdout {
        let (line, (a, b)) = plain
            .stdout
            .lines()
            .zip(with.stdout.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("<length differs>", "<length differs>")));
        panic!(
            "{script}: output differs under the preload, first at line {}:\n  glibc:      {a}\n  rangealloc: {b}\n\
             --- glibc\n{}\n--- rangealloc\n{}",
            line + 1,
            plain.stdout,
            with.stdout
        );
    }
    eprintln!(
        "{script}: identical output ({} lines); {:.2?} without, {:.2?} with the preload",
        plain.stdout.lines().count(),
        plain.elapsed,
        with.elapsed
    );
    Some(with)
}

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn python3_workload() {
    same_with_and_without_preload("python.sh", LIMIT);
}

/// The interpreter under the preload really runs on rangealloc: our extended API is
/// reachable from inside it.
#[test]
fn python3_sees_rangealloc() {
    let python = "/usr/bin/python3";
    if !Path::new(python).is_file() {
        eprintln!("SKIP: {python} not installed (apt package python3)");
        return;
    }
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        "import ctypes; f = ctypes.CDLL(None).rangealloc_version; f.restype = ctypes.c_char_p; print(f().decode())",
    ])
    .env("LD_PRELOAD", so_path());
    let out = run(cmd, LIMIT);
    out.assert_success("python3 looking up rangealloc_version");
    assert_eq!(out.stdout.trim(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn cpython_test_suite_subset() {
    if let Some(out) = same_with_and_without_preload("cpython_tests.sh", LIMIT) {
        assert!(
            out.stdout.contains("Tests result: SUCCESS"),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn sqlite3_generated_database() {
    if let Some(out) = same_with_and_without_preload("sqlite.sh", LIMIT) {
        assert!(
            out.stdout.lines().any(|l| l == "ok"),
            "no integrity_check ok:\n{}",
            out.stdout
        );
    }
}

#[test]
fn git_generated_repository() {
    same_with_and_without_preload("git.sh", LIMIT);
}

#[test]
fn redis_server_with_benchmark() {
    if let Some(out) = same_with_and_without_preload("redis.sh", LIMIT) {
        assert!(out.stdout.contains("server exit 0"), "{}", out.stdout);
        assert!(
            out.stderr.contains("librangealloc.so is mapped"),
            "redis-server did not load the preload:\n{}",
            out.stderr
        );
    }
}

#[test]
fn perl_workload() {
    same_with_and_without_preload("perl.sh", LIMIT);
}
