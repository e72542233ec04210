//! The BENCHMARKS.md section: command, date, machine, then wide tables (one column per
//! allocator) of median time with its ratio to the baseline, of peak RSS and of page
//! faults.

use std::fmt::Write;

use super::summary::Summary;
use super::Results;
use crate::allocators::{BASELINE, UNDER_TEST};

pub fn render(results: &Results) -> String {
    let m = &results.meta;
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "## Results: {} mode, {}\n", m.mode, m.date).unwrap();
    writeln!(w, "- Command: `{}`", m.command).unwrap();
    writeln!(w, "- Machine: {} ({} CPUs online)", m.machine, m.nproc).unwrap();
    writeln!(
        w,
        "- {} repetitions per cell, allocators interleaved; seed {}; thread counts {:?}",
        m.reps, m.seed, m.threads
    )
    .unwrap();
    writeln!(
        w,
        "- Time: median wall time in ms (ratio to {BASELINE}'s median; below 1 is faster)\n"
    )
    .unwrap();

    header(w, &m.allocators, &[]);
    for (workload, threads) in results.rows() {
        let cells: Vec<String> = m
            .allocators
            .iter()
            .map(|a| match results.cell(&workload, threads, a) {
                Some(c) if !c.failures.is_empty() => "FAILED".to_owned(),
                Some(c) => match (c.summary(), results.ratio(c)) {
                    (Some(s), Some(r)) => format!("{:.1} ({r:.2}×)", s.median_ms),
                    (Some(s), None) => format!("{:.1}", s.median_ms),
                    _ => "-".to_owned(),
                },
                None => "-".to_owned(),
            })
            .collect();
        writeln!(w, "| {workload} | {threads} | {} |", cells.join(" | ")).unwrap();
    }
    let geo: Vec<String> = m
        .allocators
        .iter()
        .map(|a| {
            results
                .geomean_ratio(a)
                .map_or("-".to_owned(), |(g, _)| format!("**{g:.2}×**"))
        })
        .collect();
    writeln!(w, "| **geometric mean** | | {} |\n", geo.join(" | ")).unwrap();

    writeln!(w, "Peak RSS (MiB, VmHWM); last column: {UNDER_TEST}'s own count of syscalls taking `mmap_lock` for write.\n").unwrap();
    header(w, &m.allocators, &[&format!("{UNDER_TEST} lock writers")]);
    for (workload, threads) in results.rows() {
        let cells = summary_cells(results, &workload, threads, |s| {
            Some(format!("{:.1}", s.peak_rss_mib))
        });
        let writers = results
            .cell(&workload, threads, UNDER_TEST)
            .and_then(|c| c.summary())
            .and_then(|s| s.mmap_lock_writers)
            .map_or("-".to_owned(), |n| n.to_string());
        writeln!(
            w,
            "| {workload} | {threads} | {} | {writers} |",
            cells.join(" | ")
        )
        .unwrap();
    }

    writeln!(
        w,
        "\nMinor page faults during the workload (median of the runs; `getrusage`, all threads).\n"
    )
    .unwrap();
    header(w, &m.allocators, &[]);
    for (workload, threads) in results.rows() {
        let cells = summary_cells(results, &workload, threads, |s| {
            s.minor_faults.map(|n| n.to_string())
        });
        writeln!(w, "| {workload} | {threads} | {} |", cells.join(" | ")).unwrap();
    }
    out
}

/// One cell per allocator of a (workload, threads) row: `show` of the cell's summary, or
/// "-" where there is none (no run, or the value was not measured).
fn summary_cells(
    results: &Results,
    workload: &str,
    threads: usize,
    show: impl Fn(&Summary) -> Option<String>,
) -> Vec<String> {
    results
        .meta
        .allocators
        .iter()
        .map(|a| {
            results
                .cell(workload, threads, a)
                .and_then(|c| c.summary())
                .and_then(|s| show(&s))
                .unwrap_or_else(|| "-".to_owned())
        })
        .collect()
}

/// A table header: workload, threads, one column per allocator, then `extra` columns.
fn header(w: &mut String, allocators: &[String], extra: &[&str]) {
    let columns: Vec<&str> = allocators
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    writeln!(w, "| workload | threads | {} |", columns.join(" | ")).unwrap();
    writeln!(w, "|---|---:|{}", "---:|".repeat(columns.len())).unwrap();
}
