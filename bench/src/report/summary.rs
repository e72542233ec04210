//! Statistics over a cell's runs: median, min and max wall time, ratio of medians to the
//! baseline allocator, and the geometric mean of those ratios per allocator.

use super::{Cell, Results, KIB_PER_MIB};
use rangealloc::Syscall;

use crate::allocators::{Contention, BASELINE};

/// A cell's runs reduced to the numbers the reports show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Operations per second at the median time.
    pub throughput: f64,
    /// The highest peak RSS over the runs (worst case), MiB.
    pub peak_rss_mib: f64,
    /// The median RSS left after the workload freed everything, MiB.
    pub final_rss_mib: f64,
    /// The median of the allocator's own mmap_lock-writer syscall counts, if it keeps any.
    pub mmap_lock_writers: Option<u64>,
    /// The median of the runs' minor page faults, where the worker could count them.
    pub minor_faults: Option<u64>,
    /// The allocator's own lock contention, each count the median of the runs.
    pub contention: Option<Contention>,
}

impl Cell {
    /// `None` when no run succeeded.
    pub fn summary(&self) -> Option<Summary> {
        if self.runs.is_empty() {
            return None;
        }
        let times: Vec<f64> = self.runs.iter().map(|r| r.wall_ms()).collect();
        let median_ms = median(&times);
        const MS_PER_S: f64 = 1e3;
        let ops = self.runs[0].ops as f64;
        let finals: Vec<f64> = self
            .runs
            .iter()
            .map(|r| r.final_rss_kib as f64 / KIB_PER_MIB)
            .collect();
        let writers: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.mmap_lock_writers)
            .map(|n| n as f64)
            .collect();
        let faults: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.minor_faults)
            .map(|n| n as f64)
            .collect();
        let contended: Vec<Contention> = self.runs.iter().filter_map(|r| r.contention).collect();
        let median_of = |f: fn(&Contention) -> u64| {
            median(&contended.iter().map(|c| f(c) as f64).collect::<Vec<_>>()) as u64
        };
        Some(Summary {
            median_ms,
            min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
            max_ms: times.iter().copied().fold(0.0, f64::max),
            throughput: if median_ms > 0.0 {
                ops / (median_ms / MS_PER_S)
            } else {
                0.0
            },
            peak_rss_mib: self.runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64
                / KIB_PER_MIB,
            final_rss_mib: median(&finals),
            mmap_lock_writers: (!writers.is_empty()).then(|| median(&writers) as u64),
            minor_faults: (!faults.is_empty()).then(|| median(&faults) as u64),
            contention: (!contended.is_empty()).then(|| Contention {
                writer: median_of(|c| c.writer),
                waits: median_of(|c| c.waits),
                process_locks: median_of(|c| c.process_locks),
            }),
        })
    }
}

impl Results {
    /// This cell's median time over the baseline's median at the same workload and
    /// thread count (below 1: faster than the baseline).
    pub fn ratio(&self, cell: &Cell) -> Option<f64> {
        let mine = cell.summary()?.median_ms;
        let base = self
            .cell(&cell.workload, cell.threads, BASELINE)?
            .summary()?
            .median_ms;
        (base > 0.0).then(|| mine / base)
    }

    /// The geometric mean of `allocator`'s ratios over every row where both it and the
    /// baseline succeeded, with the number of rows it covers.
    pub fn geomean_ratio(&self, allocator: &str) -> Option<(f64, usize)> {
        let logs: Vec<f64> = self
            .cells
            .iter()
            .filter(|c| c.allocator == allocator)
            .filter_map(|c| self.ratio(c))
            .filter(|r| *r > 0.0)
            .map(f64::ln)
            .collect();
        (!logs.is_empty()).then(|| {
            (
                (logs.iter().sum::<f64>() / logs.len() as f64).exp(),
                logs.len(),
            )
        })
    }
}

impl Cell {
    /// Calls that take `mmap_lock` for write, as strace counted them in the `--syscalls`
    /// pass: the same calls rangealloc's own counter classifies as writers.
    pub fn strace_lock_writers(&self) -> Option<u64> {
        let counts = self.strace.as_ref()?;
        let writers = Syscall::ALL
            .iter()
            .filter(|c| c.takes_mmap_lock_write())
            .map(|c| c.name());
        Some(
            writers
                .map(|name| {
                    counts
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or(0, |(_, k)| *k)
                })
                .sum(),
        )
    }
}

/// The median (mean of the middle two for an even count); 0 for no samples.
pub fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RunRecord;
    use crate::report::{Meta, Results};
    use crate::workloads::Scale;

    fn cell(allocator: &str, times_ms: &[u64]) -> Cell {
        Cell {
            workload: "w".into(),
            threads: 2,
            allocator: allocator.into(),
            scale: Scale {
                iterations: 1,
                size: 1,
                repeat: 1,
            },
            runs: times_ms
                .iter()
                .map(|&ms| RunRecord {
                    allocator: allocator.into(),
                    wall_ns: ms * 1_000_000,
                    ops: 10,
                    ..Default::default()
                })
                .collect(),
            failures: vec![],
            strace: None,
        }
    }

    fn meta() -> Meta {
        Meta {
            command: String::new(),
            date: String::new(),
            machine: String::new(),
            nproc: 2,
            mode: "quick".into(),
            reps: 3,
            seed: 0,
            threads: vec![2],
            allocators: vec![],
            workloads: vec![],
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn ratios_and_geomean() {
        let r = Results {
            meta: meta(),
            cells: vec![
                cell("jemalloc", &[10, 12, 11]),
                cell("rangealloc", &[22, 20, 25]),
            ],
        };
        let s = r.cells[1].summary().unwrap();
        assert_eq!((s.median_ms, s.min_ms, s.max_ms), (22.0, 20.0, 25.0));
        assert!((r.ratio(&r.cells[1]).unwrap() - 2.0).abs() < 1e-9);
        let (g, n) = r.geomean_ratio("rangealloc").unwrap();
        assert!((g - 2.0).abs() < 1e-9 && n == 1);
    }
}
