//! The drop-in surface of issue 17 under `LD_PRELOAD`: glibc's internal names, C23's
//! sized frees, glibc's introspection and tuning calls, the statistics JSON
//! (`tests/c/dropin.c`), `malloc_trim` reaching an idle thread's pages
//! (`tests/c/idle_trim.c`), the program's own options with the run-time setters
//! (`tests/c/conf.c`), and what preloading loads besides the allocator
//! (`tests/c/loaded_objects.c`).

mod ffi_support;

use ffi_support::{assert_lines, compile, preloaded, run, Lang};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn glibc_and_c23_surface() {
    let exe = compile("dropin.c", "dropin", Lang::C, &[]);
    let mut cmd = preloaded(&exe);
    cmd.env_remove("RANGEALLOC_OPTIONS");
    let out = run(cmd, LIMIT);
    out.assert_success("dropin.c under LD_PRELOAD");
    assert_lines(
        &out.stdout,
        &[
            "ok resolved",
            "ok aliases",
            "ok free_sized",
            "ok mallinfo2",
            "ok malloc_trim",
            "ok mallopt",
            "ok malloc_info",
            "ok json",
            "ALL OK",
        ],
    );
    // malloc_stats() printed our report on stderr.
    assert!(
        out.stderr.contains(&format!(
            "rangealloc {} statistics",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        out.stderr
    );
    // The C JSON is valid JSON with the documented keys.
    let json = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    for key in ["allocated", "resident", "mapped", "purged_bytes"] {
        assert!(v[key].is_u64(), "{key} in {json}");
    }
    assert!(v["regions"]["large"].is_u64() && v["lock"]["success"].is_u64());
    assert!(v["syscalls"]["mmap"].as_u64().unwrap() > 0);
    let classes = v["classes"].as_array().expect("classes array");
    assert!(classes
        .iter()
        .any(|c| c["block_size"] == 64 && c["allocs"].as_u64() >= Some(1000)));
}

/// Preloading loads nothing but the allocator, with the profiler off or on: the
/// program's objects under the preload are its objects without it plus
/// `librangealloc.so`. Before, the library brought `libgcc_s` (now its unwinder is
/// linked in) and `libm` (the profiler's two float functions are Rust's), which cost
/// every short-lived process about 0.2 ms to load and relocate (BENCHMARKS.md, "Start-up
/// cost").
#[test]
fn preloading_loads_no_other_library() {
    let exe = compile("loaded_objects.c", "loaded_objects", Lang::C, &[]);
    let objects = |out: &ffi_support::Outcome| -> Vec<String> {
        out.assert_success("loaded_objects.c");
        let mut v: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("object "))
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let alone = objects(&run(std::process::Command::new(&exe), LIMIT));
    for options in ["", "prof=1,prof_sample=1"] {
        let mut cmd = preloaded(&exe);
        cmd.env("RANGEALLOC_OPTIONS", options);
        let mut preloaded_objects = objects(&run(cmd, LIMIT));
        let ours = preloaded_objects
            .iter()
            .position(|o| o.ends_with("librangealloc.so"))
            .unwrap_or_else(|| panic!("not preloaded: {preloaded_objects:?}"));
        preloaded_objects.remove(ours);
        assert_eq!(
            preloaded_objects, alone,
            "with options {options:?} the allocator loaded more than itself"
        );
    }
}

/// `malloc_trim(0)` returns the pages of a thread that freed 200 MiB of small blocks and
/// went idle (issue 17, "memory comes back from every thread"): it returns 1 and RSS
/// falls by at least 180 MiB from its peak (`tests/c/idle_trim.c`, its own process).
/// Before the fix the trim reached only the region table: about 110 MiB stayed.
#[test]
fn malloc_trim_returns_an_idle_threads_pages() {
    let exe = compile("idle_trim.c", "idle_trim", Lang::C, &["-pthread"]);
    let mut cmd = preloaded(&exe);
    cmd.env_remove("RANGEALLOC_OPTIONS");
    let out = run(cmd, LIMIT);
    eprintln!("{}", out.stdout);
    out.assert_success("idle_trim.c under LD_PRELOAD");
    assert_lines(&out.stdout, &["ok idle trim"]);
}

/// The same when another thread frees the idle thread's blocks (`idle_trim.c remote`):
/// the pages wait, parked, on the idle thread's pending stack, and the trim's foreign
/// drain retires them. Before the drain about 220 MiB of 224 stayed.
#[test]
fn malloc_trim_returns_pages_other_threads_emptied_for_an_idle_thread() {
    // Its own output name: the tests of a binary compile side by side.
    let exe = compile("idle_trim.c", "idle_trim_remote", Lang::C, &["-pthread"]);
    let mut cmd = preloaded(&exe);
    cmd.env_remove("RANGEALLOC_OPTIONS");
    cmd.arg("remote");
    let out = run(cmd, LIMIT);
    eprintln!("{}", out.stdout);
    out.assert_success("idle_trim.c remote under LD_PRELOAD");
    assert_lines(&out.stdout, &["ok idle trim"]);
}

/// `malloc_stats_print` with jemalloc's `J` option writes the same JSON object.
#[test]
fn malloc_stats_print_json_option() {
    let exe = compile("jemalloc_api.c", "jemalloc_api", Lang::C, &[]);
    let mut cmd = preloaded(&exe);
    cmd.arg("json");
    let out = run(cmd, LIMIT);
    out.assert_success("jemalloc_api json");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("valid JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["allocated"].as_u64() > Some(0));
}

/// `rangealloc_conf` under the preload (the program is built with `-rdynamic`), the
/// environment overriding it key by key, the malformed item reported once, and the
/// run-time setters through the C API and `mallctl`.
#[test]
fn program_options_and_run_time_setters() {
    let exe = compile("conf.c", "conf", Lang::C, &["-rdynamic"]);
    let mut cmd = preloaded(&exe);
    cmd.env_remove("RANGEALLOC_OPTIONS");
    let out = run(cmd, LIMIT);
    out.assert_success("conf.c");
    assert_lines(
        &out.stdout,
        &[
            "opt.dirty_decay_ms=250 opt.stats_print=1 opt.background_thread=0",
            "ok setters",
            "ALL OK",
        ],
    );
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("rangealloc: warning"))
        .collect();
    assert_eq!(
        warnings,
        ["rangealloc: warning: in the program's options: unknown option 'bogus'; ignored"],
        "{}",
        out.stderr
    );
    // stats=1 from rangealloc_conf: the report at exit.
    assert!(out.stderr.contains("statistics"), "{}", out.stderr);

    // The environment wins key by key; the program's other keys stay.
    let mut cmd = preloaded(&exe);
    cmd.arg("quiet-exit")
        .env("RANGEALLOC_OPTIONS", "purge_delay_ms=40,background_purge=0");
    let out = run(cmd, LIMIT);
    out.assert_success("conf.c with RANGEALLOC_OPTIONS");
    assert_lines(
        &out.stdout,
        &[
            "opt.dirty_decay_ms=40 opt.stats_print=1 opt.background_thread=0",
            "ALL OK",
        ],
    );
    // rangealloc_set_stats_at_exit(0) silenced the report stats=1 asked for.
    assert!(!out.stderr.contains("statistics"), "{}", out.stderr);

    // Without -rdynamic the executable does not export rangealloc_conf: defaults.
    let hidden = compile("conf.c", "conf-hidden", Lang::C, &[]);
    let mut cmd = preloaded(&hidden);
    cmd.arg("only-options").env_remove("RANGEALLOC_OPTIONS");
    let out = run(cmd, LIMIT);
    out.assert_success("conf.c without -rdynamic");
    assert_lines(
        &out.stdout,
        &["opt.dirty_decay_ms=1000 opt.stats_print=0 opt.background_thread=0"],
    );
}
