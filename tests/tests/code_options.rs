//! Options from code (`RangeAlloc::with_options`), the environment overriding them key
//! by key, the malformed item reported once, and the run-time setters (issue 17).
//! Checked in child processes: options are parsed once per process.

use rangealloc::RangeAlloc;

#[global_allocator]
static A: RangeAlloc = RangeAlloc::with_options("purge_delay_ms=321,dirty_budget_mb=5,bogus=1");

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return;
    };
    let o = rangealloc::options();
    match mode.as_str() {
        "print" => println!(
            "OPTIONS delay={} budget={} stats={}",
            o.purge_delay_ms, o.dirty_budget, o.stats_at_exit
        ),
        "setters" => {
            let parsed = rangealloc::engine::options::get();
            rangealloc::set_purge_delay_ms(12);
            rangealloc::set_stats_at_exit(true);
            rangealloc::set_background_purge(true);
            let now = rangealloc::options();
            println!(
                "SET delay={} stats={} background={} parsed_delay={}",
                now.purge_delay_ms, now.stats_at_exit, now.background_purge, parsed.purge_delay_ms
            );
            // The background purger is running: dirty space goes back without calls.
            let v = vec![1u8; 4 << 20];
            drop(v);
            let started = std::time::Instant::now();
            while rangealloc::stats().regions.dirty_bytes > 0
                && started.elapsed() < std::time::Duration::from_secs(20)
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            println!("DIRTY {}", rangealloc::stats().regions.dirty_bytes);
            rangealloc::set_stats_at_exit(false);
        }
        "budget" => {
            // 4 MiB freed stays dirty under a 5 MiB budget, and a lowered budget sends
            // the excess back at once.
            rangealloc::set_purge_delay_ms(u64::MAX);
            let _ = rangealloc::purge();
            let v = vec![1u8; 4 << 20];
            drop(v);
            // A freed region counts as dirty once folded back into the table.
            rangealloc::engine::region::ARENAS.collect_retired();
            let kept = rangealloc::stats().regions.dirty_bytes;
            rangealloc::set_dirty_budget(1 << 20);
            let after = rangealloc::stats().regions.dirty_bytes;
            println!("BUDGET kept={} after={}", kept >= 4 << 20, after <= 1 << 20);
        }
        _ => {}
    }
}

fn child(mode: &str, options: Option<&str>) -> std::process::Output {
    rangealloc_tests::run_child(mode, options)
}

fn stdout_line(out: &std::process::Output, prefix: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The harness prints "test child_entry ... " before the child's first line.
    stdout
        .lines()
        .find_map(|l| l.find(prefix).map(|at| l[at..].to_owned()))
        .unwrap_or_else(|| panic!("no {prefix} line in {stdout}"))
}

#[test]
fn code_options_apply_and_warn_once() {
    let out = child("print", None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout_line(&out, "OPTIONS"),
        format!("OPTIONS delay=321 budget={} stats=false", 5 << 20)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        ["rangealloc: warning: in the program's options: unknown option 'bogus'; ignored"]
    );
}

#[test]
fn the_environment_overrides_key_by_key() {
    let out = child("print", Some("purge_delay_ms=7,stats=1"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout_line(&out, "OPTIONS"),
        format!("OPTIONS delay=7 budget={} stats=true", 5 << 20)
    );
}

#[test]
fn run_time_setters_take_effect() {
    let out = child("setters", None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout_line(&out, "SET"),
        "SET delay=12 stats=true background=true parsed_delay=321"
    );
    assert_eq!(stdout_line(&out, "DIRTY"), "DIRTY 0");
    // Switched off again before exit: no report.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("statistics"));

    let out = child("budget", None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout_line(&out, "BUDGET"), "BUDGET kept=true after=true");
}

/// The default allocator constant is still the `RangeAlloc` users write.
#[test]
fn the_unit_like_constant_has_no_options() {
    assert_eq!(rangealloc::RangeAlloc.option_string(), "");
    assert_eq!(
        A.option_string(),
        "purge_delay_ms=321,dirty_budget_mb=5,bogus=1"
    );
}
