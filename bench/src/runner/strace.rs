//! The `--syscalls` pass: each workload, thread count and allocator run once more under
//! `strace -c -f`, which counts the memory-mapping syscalls of every thread. Allocators
//! other than rangealloc keep no counters, so this is the one method that treats all
//! four alike (it also counts the process's start-up mappings and thread stacks, the
//! same for every allocator). Runs under strace are slow; their times are not used.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::workers;
use crate::worker::WorkerArgs;

/// The syscalls counted: every call an allocator uses to get, return or advise memory.
pub const TRACED: [&str; 5] = ["mmap", "munmap", "mremap", "mprotect", "madvise"];

/// Whether `strace` can be run here.
pub fn available() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `worker` under strace, keeping strace's summary in `summary_file`; returns the
/// count per traced call.
pub fn count(
    worker: &Path,
    preload: Option<&str>,
    options: Option<&str>,
    args: &WorkerArgs,
    summary_file: &Path,
    timeout: Duration,
) -> Result<Vec<(String, u64)>, String> {
    let mut command = Command::new("strace");
    command
        .args(["-f", "-c", "-e"])
        .arg(format!("trace={}", TRACED.join(",")))
        .arg("-o")
        .arg(summary_file);
    if let Some(lib) = preload {
        // `-E`: in the traced program's environment only, not in strace's own.
        command.arg("-E").arg(format!("LD_PRELOAD={lib}"));
    }
    if let Some(options) = options {
        command
            .arg("-E")
            .arg(format!("{}={options}", crate::allocators::OPTIONS_VAR));
    }
    command.arg(worker).args(args.to_args());
    workers::run(command, timeout)?;
    let text =
        std::fs::read_to_string(summary_file).map_err(|e| format!("no strace summary: {e}"))?;
    Ok(parse_summary(&text))
}

/// Reads strace's `-c` table: rows end with the syscall name, and `calls` is the fourth
/// column (`% time, seconds, usecs/call, calls, [errors,] syscall`).
pub fn parse_summary(text: &str) -> Vec<(String, u64)> {
    const CALLS_COLUMN: usize = 3;
    TRACED
        .iter()
        .map(|&name| {
            let calls = text
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|cols| cols.last() == Some(&name))
                .and_then(|cols| cols.get(CALLS_COLUMN)?.parse().ok())
                .unwrap_or(0);
            (name.to_owned(), calls)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_table() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.000300          10        30           mmap
 40.00    0.000200          40         5         1 mprotect
  0.00    0.000000           0         1           munmap
------ ----------- ----------- --------- --------- ----------------
100.00    0.000500          13        36         1 total
";
        let counts = parse_summary(text);
        let get = |n: &str| counts.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(
            (get("mmap"), get("mprotect"), get("munmap"), get("madvise")),
            (30, 5, 1, 0)
        );
    }
}
