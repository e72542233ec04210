//! Finding, building and running the per-allocator worker binaries.
//!
//! Workers live next to the runner's own executable (`target/<profile>/`). `cargo run`
//! builds only the binary it runs, so the runner first runs `cargo build --bins` for
//! this package with the same profile and target directory (skipped with `--no-build`,
//! or when not started by cargo). Each run is a fresh process whose one stdout line is
//! a [`RunRecord`]; a run that outlives its timeout is killed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::allocators::{self, Allocator};
use crate::record::RunRecord;
use crate::worker::{WorkerArgs, EXIT_CORRUPT};

/// How often a running worker is polled for exit. Wall time is measured inside the
/// worker, so this only delays the next run, by at most this much.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Lines of a failed worker's stderr kept in the report.
const STDERR_TAIL_LINES: usize = 5;

/// The directory holding the runner and the workers.
pub fn bin_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "executable has no directory".into())
}

/// Builds every binary of this package, and rangealloc's C library (`rangealloc-c`),
/// with the runner's profile and target directory, when started by cargo (which sets
/// `CARGO`).
pub fn build(dir: &Path) -> Result<(), String> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        eprintln!(
            "not started by cargo: using the workers already in {}",
            dir.display()
        );
        return Ok(());
    };
    let profile_dir = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    // Cargo puts the dev profile in `debug/`; every other profile in a folder of its name.
    let profile = if profile_dir == "debug" {
        "dev"
    } else {
        profile_dir
    };
    let target_dir = dir.parent().ok_or("binary directory has no parent")?;
    eprintln!("building the worker binaries ({profile} profile)...");
    cargo_build(
        &cargo,
        [env!("CARGO_PKG_NAME"), "--bins"],
        profile,
        target_dir,
    )
    .map_err(|e| format!("cargo build of the workers failed ({e})"))?;
    // rangealloc's C library, preloaded into the system worker as `rangealloc-c`
    // (`--bins` above builds no library, and it is another package's).
    cargo_build(&cargo, ["rangealloc-ffi", "--lib"], profile, target_dir)
        .map_err(|e| format!("cargo build of librangealloc.so failed ({e})"))
}

/// `cargo build --quiet -p PACKAGE WHAT --profile PROFILE --target-dir TARGET_DIR`.
fn cargo_build(
    cargo: &std::ffi::OsStr,
    [package, what]: [&str; 2],
    profile: &str,
    target_dir: &Path,
) -> Result<(), String> {
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            what,
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(status.to_string())
    }
}

/// The worker binary for `allocator`, checked to exist.
pub fn worker_path(dir: &Path, allocator: &Allocator) -> Result<PathBuf, String> {
    let path = dir.join(allocator.worker_bin);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "missing worker {}; build it with `cargo build --release -p {} --bins`",
            path.display(),
            env!("CARGO_PKG_NAME")
        ))
    }
}

/// Runs `program` (a worker, or strace wrapping one) to completion or `timeout`.
/// Returns its exit status and its stdout; a failure message carries the stderr tail.
pub fn run(mut command: Command, timeout: Duration) -> Result<(ExitStatus, String), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    // Drain both pipes on their own threads so a chatty child can never block on them.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait(&mut child, timeout);
    let (out, err) = (join(stdout), join(stderr));
    let Some(status) = status else {
        return Err(format!("timed out after {}s, killed", timeout.as_secs()));
    };
    // A failed content check still prints its record; anything else is a crash.
    if status.success() || status.code() == Some(i32::from(EXIT_CORRUPT)) {
        Ok((status, out))
    } else {
        Err(format!("{status}: {}", tail(&err)))
    }
}

/// One measured run of one workload in `worker`, with `preload` (a shared library
/// replacing `malloc`) in its `LD_PRELOAD` and `options` in its `RANGEALLOC_OPTIONS`
/// when given (else the runner's environment is left as it is).
pub fn run_worker(
    worker: &Path,
    preload: Option<&str>,
    options: Option<&str>,
    args: &WorkerArgs,
    timeout: Duration,
) -> Result<RunRecord, String> {
    let mut command = Command::new(worker);
    command.args(args.to_args());
    if let Some(lib) = preload {
        command.env("LD_PRELOAD", lib);
    }
    if let Some(options) = options {
        command.env(allocators::OPTIONS_VAR, options);
    }
    let (status, out) = run(command, timeout)?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("worker printed no record")?;
    let value = serde_json::from_str(line).map_err(|e| format!("unreadable record: {e}"))?;
    let record = RunRecord::from_json(&value).ok_or("malformed record")?;
    if record.mismatches > 0 || !status.success() {
        return Err(format!(
            "{} content mismatches: memory did not hold what was written",
            record.mismatches
        ));
    }
    Ok(record)
}

fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > timeout {
            // Kills only the child we spawned, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

fn join(handle: std::thread::JoinHandle<String>) -> String {
    handle.join().unwrap_or_default()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join(" | ")
}
