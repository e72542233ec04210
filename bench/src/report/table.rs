//! The stdout table: one row per workload × threads × allocator, then the geometric
//! mean of the time ratios per allocator.

use std::fmt::Write;

use super::Results;
use crate::allocators::{BASELINE, UNDER_TEST};

/// Column headers and widths, kept together so they cannot drift apart.
const COLUMNS: [(&str, usize); 15] = [
    ("workload", 14),
    ("thr", 3),
    ("allocator", 12),
    ("median ms", 10),
    ("min ms", 9),
    ("max ms", 9),
    ("×jemalloc", 9),
    ("peak MiB", 9),
    ("final MiB", 9),
    ("faults", 9),
    ("lock-wr own", 11),
    ("lock-wr strace", 14),
    ("arena-wr", 8),
    ("wr-waits", 8),
    ("proc-lk", 7),
];

pub fn render(results: &Results) -> String {
    let mut out = String::new();
    let header: Vec<String> = COLUMNS
        .iter()
        .map(|(name, w)| format!("{name:>w$}"))
        .collect();
    writeln!(out, "{}  status", header.join(" ")).unwrap();
    let mut last_workload = None;
    for (workload, threads) in results.rows() {
        if last_workload.is_some() && last_workload.as_ref() != Some(&workload) {
            out.push('\n');
        }
        for allocator in &results.meta.allocators {
            let Some(cell) = results.cell(&workload, threads, allocator) else {
                continue;
            };
            let s = cell.summary();
            let num = |v: Option<f64>, digits: usize| {
                v.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
            };
            let count = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            let cols = [
                workload.clone(),
                threads.to_string(),
                allocator.clone(),
                num(s.map(|s| s.median_ms), 1),
                num(s.map(|s| s.min_ms), 1),
                num(s.map(|s| s.max_ms), 1),
                results
                    .ratio(cell)
                    .map_or("-".to_owned(), |r| format!("{r:.2}x")),
                num(s.map(|s| s.peak_rss_mib), 1),
                num(s.map(|s| s.final_rss_mib), 1),
                count(s.and_then(|s| s.minor_faults)),
                count(s.and_then(|s| s.mmap_lock_writers)),
                count(cell.strace_lock_writers()),
                count(s.and_then(|s| s.contention).map(|c| c.writer)),
                count(s.and_then(|s| s.contention).map(|c| c.waits)),
                count(s.and_then(|s| s.contention).map(|c| c.process_locks)),
            ];
            let status = match cell.failures.len() {
                0 => "ok".to_owned(),
                n => format!("FAILED {n}/{}", n + cell.runs.len()),
            };
            let row: Vec<String> = cols
                .iter()
                .zip(COLUMNS)
                .map(|(v, (_, w))| format!("{v:>w$}"))
                .collect();
            writeln!(out, "{}  {status}", row.join(" ")).unwrap();
        }
        last_workload = Some(workload);
    }
    out.push('\n');
    writeln!(
        out,
        "geometric mean of time ratios to {BASELINE} (lower is faster):"
    )
    .unwrap();
    for allocator in &results.meta.allocators {
        match results.geomean_ratio(allocator) {
            Some((g, n)) => writeln!(out, "  {allocator:>12}  {g:.3}x  over {n} rows").unwrap(),
            None => writeln!(out, "  {allocator:>12}  -").unwrap(),
        }
    }
    writeln!(
        out,
        "\nfaults: median minor page faults during the workload (getrusage, all threads)\n\
         lock-wr own: {UNDER_TEST}'s own count of mmap/munmap/mremap/mprotect (calls taking mmap_lock for write)\n\
         lock-wr strace: the same calls counted by strace -f in the --syscalls pass, for every allocator \
         (includes process start-up and thread stacks)\n\
         arena-wr, wr-waits: {UNDER_TEST}'s region-table writer-mutex acquisitions, and those that waited\n\
         proc-lk: {UNDER_TEST}'s process-wide locks on the large-object path (metadata lock, mmap_lock writers)"
    )
    .unwrap();
    out
}
