//! One workload run in one process: the body of every `bench-worker-*` binary.
//!
//! Arguments name the workload and its parameters ([`WorkerArgs`]); the worker runs it
//! once, measures wall time and minor page faults around the workload only, reads RSS
//! and the allocator's own counters, and prints one [`RunRecord`] JSON line. Exit status: 0 clean, 1 content
//! check failed, 2 bad arguments.

use std::process::ExitCode;
use std::time::Instant;

use rangealloc::{Syscall, SyscallCounts};

use crate::allocators::Probe;
use crate::proc_status;
use crate::record::RunRecord;
use crate::workloads::{self, Params, Scale};

/// Exit status when a workload found memory that did not hold what was written.
pub const EXIT_CORRUPT: u8 = 1;
/// Exit status for unusable arguments.
pub const EXIT_USAGE: u8 = 2;

/// Everything a worker needs, and its command line (built by the runner, parsed here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerArgs {
    pub workload: String,
    pub params: Params,
}

impl WorkerArgs {
    pub fn to_args(&self) -> Vec<String> {
        let p = &self.params;
        [
            ("--workload", self.workload.clone()),
            ("--threads", p.threads.to_string()),
            ("--iterations", p.scale.iterations.to_string()),
            ("--size", p.scale.size.to_string()),
            ("--repeat", p.scale.repeat.to_string()),
            ("--seed", p.seed.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<WorkerArgs, String> {
        let mut workload = None;
        let (mut threads, mut iterations, mut size, mut repeat, mut seed) =
            (None, None, None, None, None);
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            };
            match flag.as_str() {
                "--workload" => workload = Some(value.clone()),
                "--threads" => threads = Some(number()? as usize),
                "--iterations" => iterations = Some(number()?),
                "--size" => size = Some(number()? as usize),
                "--repeat" => repeat = Some(number()?),
                "--seed" => seed = Some(number()?),
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        let workload = workload.ok_or("--workload is required")?;
        let w =
            workloads::by_name(&workload).ok_or_else(|| format!("unknown workload {workload}"))?;
        let threads = threads.unwrap_or(1);
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        let scale = Scale {
            iterations: iterations.unwrap_or(w.quick.iterations),
            size: size.unwrap_or(w.quick.size),
            repeat: repeat.unwrap_or(w.quick.repeat),
        };
        Ok(WorkerArgs {
            workload,
            params: Params {
                threads,
                scale,
                seed: seed.unwrap_or(0),
            },
        })
    }
}

/// The `main` of every worker binary: `probe` belongs to the allocator it links.
pub fn worker_main(probe: &dyn Probe) -> ExitCode {
    let args = match WorkerArgs::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{}: {e}", probe.name());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let record = run_once(probe, &args);
    println!("{}", record.to_json());
    if record.mismatches > 0 {
        eprintln!(
            "{}: {}: {} content mismatches",
            probe.name(),
            args.workload,
            record.mismatches
        );
        return ExitCode::from(EXIT_CORRUPT);
    }
    ExitCode::SUCCESS
}

fn run_once(probe: &dyn Probe, args: &WorkerArgs) -> RunRecord {
    let workload = workloads::by_name(&args.workload).expect("validated by parse");
    let before = probe.syscalls();
    let contention_before = probe.contention();
    let faults_before = proc_status::minor_faults();
    let start = Instant::now();
    let outcome = (workload.run)(&args.params);
    let wall = start.elapsed();
    let faults = faults_before
        .zip(proc_status::minor_faults())
        .map(|(b, a)| a.saturating_sub(b));
    let calls = before.zip(probe.syscalls()).map(|(b, a)| delta(&b, &a));
    let contention = contention_before
        .zip(probe.contention())
        .map(|(b, a)| a.since(&b));
    let rss = proc_status::rss();
    RunRecord {
        allocator: probe.name().to_owned(),
        wall_ns: wall.as_nanos().try_into().unwrap_or(u64::MAX),
        ops: outcome.ops,
        mismatches: outcome.mismatches,
        peak_rss_kib: rss.peak_kib,
        final_rss_kib: rss.current_kib,
        stats: probe.stats(),
        syscalls: calls.map(|c| {
            Syscall::ALL
                .iter()
                .map(|&s| (s.name().to_owned(), c.get(s)))
                .collect()
        }),
        mmap_lock_writers: calls.map(|c| c.mmap_lock_writers()),
        minor_faults: faults,
        contention,
    }
}

/// Calls issued between two snapshots.
fn delta(before: &SyscallCounts, after: &SyscallCounts) -> SyscallCounts {
    SyscallCounts(std::array::from_fn(|i| {
        after.0[i].saturating_sub(before.0[i])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let args = WorkerArgs {
            workload: "larson".into(),
            params: Params {
                threads: 8,
                scale: Scale {
                    iterations: 5,
                    size: 6,
                    repeat: 7,
                },
                seed: 9,
            },
        };
        assert_eq!(WorkerArgs::parse(args.to_args()).unwrap(), args);
    }

    #[test]
    fn rejects_unknown_workload_and_flags() {
        let parse = |a: &[&str]| WorkerArgs::parse(a.iter().map(|s| s.to_string()));
        assert!(parse(&["--workload", "nope"]).is_err());
        assert!(parse(&["--workload", "larson", "--bogus", "1"]).is_err());
        assert!(parse(&["--workload", "larson", "--threads", "0"]).is_err());
    }
}
