//! The measurement loop: for each workload and thread count, `reps` rounds in which
//! every allocator runs once (A B C D, then B C D A, …). Interleaving spreads machine
//! drift (thermal, noisy neighbours) over all allocators, and rotating the order keeps
//! any one of them from always running first or right after a particular other.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::cli::{Mode, Options};
use super::{strace, workers};
use crate::allocators;
use crate::report::Cell;
use crate::worker::WorkerArgs;
use crate::workloads::{self, Params};

/// Progress bar layout: elapsed time, bar, runs done, current run.
const PROGRESS_TEMPLATE: &str = "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}";

/// One cell to measure: which worker, with what arguments.
struct Job {
    cell: Cell,
    worker: PathBuf,
    /// The library preloaded into the worker (an allocator with no Rust binding).
    preload: Option<&'static str>,
    /// rangealloc's options for this worker (`--rangealloc-options`), if any.
    options: Option<String>,
    args: WorkerArgs,
}

/// Runs every timed repetition (and the strace pass if asked); returns the cells.
pub fn run_all(o: &Options, bin_dir: &Path) -> Result<Vec<Cell>, String> {
    let mut jobs = plan(o, bin_dir)?;
    let strace_runs = if o.syscalls { jobs.len() } else { 0 };
    let bar = ProgressBar::new((jobs.len() * o.reps + strace_runs) as u64);
    bar.set_style(
        ProgressStyle::with_template(PROGRESS_TEMPLATE)
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let per_row = o.allocators.len();
    for row in jobs.chunks_mut(per_row) {
        for rep in 0..o.reps {
            for k in 0..per_row {
                let job = &mut row[(k + rep) % per_row];
                bar.set_message(format!(
                    "{} / {} thr / {} (rep {})",
                    job.cell.workload,
                    job.cell.threads,
                    job.cell.allocator,
                    rep + 1
                ));
                match workers::run_worker(
                    &job.worker,
                    job.preload,
                    job.options.as_deref(),
                    &job.args,
                    o.timeout,
                ) {
                    Ok(mut record) => {
                        // A preloaded allocator runs in another's worker, whose probe
                        // names that one: the cell knows which allocator really ran.
                        record.allocator = job.cell.allocator.clone();
                        job.cell.runs.push(record)
                    }
                    Err(e) => {
                        bar.println(format!(
                            "FAILED {} / {} thr / {}: {e}",
                            job.cell.workload, job.cell.threads, job.cell.allocator
                        ));
                        job.cell.failures.push(e);
                    }
                }
                bar.inc(1);
            }
        }
    }
    if o.syscalls {
        let dir = o.out.join("strace");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for job in &mut jobs {
            bar.set_message(format!(
                "strace: {} / {} thr / {}",
                job.cell.workload, job.cell.threads, job.cell.allocator
            ));
            let file = dir.join(format!(
                "{}-{}-{}.txt",
                job.cell.workload, job.cell.threads, job.cell.allocator
            ));
            match strace::count(
                &job.worker,
                job.preload,
                job.options.as_deref(),
                &job.args,
                &file,
                o.timeout,
            ) {
                Ok(counts) => job.cell.strace = Some(counts),
                Err(e) => bar.println(format!("strace pass failed for {}: {e}", file.display())),
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(jobs.into_iter().map(|j| j.cell).collect())
}

/// `RANGEALLOC_OPTIONS` for allocator `name`'s worker: with `--rangealloc-options`, the
/// options for the variant and none (an empty string) for plain rangealloc; otherwise
/// the runner's environment decides.
fn engine_options(o: &Options, name: &str) -> Option<String> {
    let given = o.rangealloc_options.as_ref()?;
    if name == allocators::WITH_OPTIONS.name {
        Some(given.clone())
    } else if name == allocators::UNDER_TEST {
        Some(String::new())
    } else {
        None
    }
}

/// Jobs in report order, grouped by (workload, threads) with one job per allocator.
fn plan(o: &Options, bin_dir: &Path) -> Result<Vec<Job>, String> {
    let mut jobs = Vec::new();
    for &name in &o.workloads {
        let w = workloads::by_name(name).expect("validated by cli");
        let scale = match o.mode {
            Mode::Quick => w.quick,
            Mode::Full => w.full,
        };
        for threads in o.thread_counts(w) {
            for &a in &o.allocators {
                let allocator = allocators::by_name(a).expect("validated by cli");
                let args = WorkerArgs {
                    workload: name.to_owned(),
                    params: Params {
                        threads,
                        scale,
                        seed: o.seed,
                    },
                };
                let cell = Cell {
                    workload: name.to_owned(),
                    threads,
                    allocator: a.to_owned(),
                    scale,
                    runs: Vec::new(),
                    failures: Vec::new(),
                    strace: None,
                };
                jobs.push(Job {
                    cell,
                    worker: workers::worker_path(bin_dir, &allocator)?,
                    preload: allocator.preload_path()?,
                    options: engine_options(o, a),
                    args,
                });
            }
        }
    }
    Ok(jobs)
}
