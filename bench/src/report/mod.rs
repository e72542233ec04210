//! The results of a whole benchmark session and everything rendered from them: the
//! stdout table, `results.json`, the SVG charts and the BENCHMARKS.md section.
//!
//! [`Results`] is the single source: the runner fills it, [`json`] saves and reloads it
//! (so `markdown` can regenerate the section from a saved file), and the renderers only
//! read it through [`summary`].

pub mod charts;
pub mod json;
pub mod markdown;
pub mod summary;
pub mod table;

use crate::record::RunRecord;
use crate::workloads::Scale;

/// How, when and where the session ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    /// The command line, as a user would retype it.
    pub command: String,
    /// UTC date, `YYYY-MM-DD`.
    pub date: String,
    /// CPU model name from `/proc/cpuinfo`.
    pub machine: String,
    /// Online CPUs.
    pub nproc: usize,
    /// `quick` or `full`.
    pub mode: String,
    pub reps: usize,
    pub seed: u64,
    pub threads: Vec<usize>,
    pub allocators: Vec<String>,
    pub workloads: Vec<String>,
}

/// All runs of one workload at one thread count with one allocator.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub workload: String,
    pub threads: usize,
    pub allocator: String,
    pub scale: Scale,
    /// Successful runs, in the order they ran.
    pub runs: Vec<RunRecord>,
    /// One line per failed run (crash, timeout, content mismatch).
    pub failures: Vec<String>,
    /// Syscall counts from the `--syscalls` pass under strace, by call name.
    pub strace: Option<Vec<(String, u64)>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Results {
    pub meta: Meta,
    pub cells: Vec<Cell>,
}

impl Results {
    pub fn cell(&self, workload: &str, threads: usize, allocator: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.workload == workload && c.threads == threads && c.allocator == allocator)
    }

    /// The (workload, threads) pairs in run order.
    pub fn rows(&self) -> Vec<(String, usize)> {
        let mut rows: Vec<(String, usize)> = Vec::new();
        for c in &self.cells {
            if !rows
                .iter()
                .any(|(w, t)| *w == c.workload && *t == c.threads)
            {
                rows.push((c.workload.clone(), c.threads));
            }
        }
        rows
    }

    pub fn failures(&self) -> impl Iterator<Item = (&Cell, &String)> {
        self.cells
            .iter()
            .flat_map(|c| c.failures.iter().map(move |f| (c, f)))
    }
}

/// KiB per MiB: the kernel reports RSS in KiB, the reports show MiB.
pub const KIB_PER_MIB: f64 = 1024.0;
