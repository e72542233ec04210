//! The `rangealloc-bench` command: builds the workers, runs the schedule, and writes
//! the reports. Owns the process-level flow only; measuring is in [`schedule`] and
//! [`workers`], rendering in [`crate::report`].

pub mod cli;
pub mod machine;
pub mod schedule;
pub mod strace;
pub mod workers;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::report::{charts, json, markdown, table, Meta, Results};
use crate::workloads;
use cli::{Command, Options};

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match cli::parse(&args) {
        Ok(Command::Run(o)) => run(&o, &args),
        Ok(Command::Markdown { input }) => load(&input).map(|r| {
            emit(&markdown::render(&r));
            true
        }),
        Ok(Command::Report { input }) => load(&input).map(|r| {
            emit(&table::render(&r));
            write_charts(&r, input.parent().unwrap_or(Path::new(".")));
            true
        }),
        Ok(Command::List) => {
            for w in workloads::ALL {
                emit(&format!("{:>15}  {}\n", w.name, w.origin));
            }
            Ok(true)
        }
        Ok(Command::Help) => {
            emit(&format!("{}\n", cli::USAGE));
            Ok(true)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rangealloc-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A whole session; `Ok(false)` when some run failed (the reports are still written).
fn run(o: &Options, args: &[String]) -> Result<bool, String> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; timings are meaningless (use --release)");
    }
    let mut o = o.clone();
    if o.syscalls && !strace::available() {
        eprintln!("warning: --syscalls needs strace, which is not installed; skipping that pass");
        o.syscalls = false;
    }
    let dir = workers::bin_dir()?;
    if o.build {
        workers::build(&dir)?;
    }
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let meta = Meta {
        command: command_line(args),
        date: machine::today(),
        machine: machine::cpu_model(),
        nproc: machine::nproc(),
        mode: o.mode.name().to_owned(),
        reps: o.reps,
        seed: o.seed,
        threads: o.all_thread_counts(),
        allocators: o.allocators.iter().map(|s| s.to_string()).collect(),
        workloads: o.workloads.iter().map(|s| s.to_string()).collect(),
    };
    let cells = schedule::run_all(&o, &dir)?;
    let results = Results { meta, cells };
    emit(&table::render(&results));
    let json_path = o.out.join("results.json");
    let text = serde_json::to_string_pretty(&json::to_json(&results)).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    emit(&format!("\nwrote {}\n", json_path.display()));
    write_charts(&results, &o.out);
    if o.markdown {
        emit(&format!("\n{}", markdown::render(&results)));
    }
    let failures: Vec<_> = results.failures().collect();
    for (cell, f) in &failures {
        eprintln!(
            "FAILED {} / {} thr / {}: {f}",
            cell.workload, cell.threads, cell.allocator
        );
    }
    Ok(failures.is_empty())
}

fn load(input: &Path) -> Result<Results, String> {
    let text = std::fs::read_to_string(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", input.display()))?;
    json::from_json(&value)
}

/// Charts are a convenience: failing to draw them is reported, not fatal.
fn write_charts(results: &Results, dir: &Path) {
    match charts::write_all(results, dir) {
        Ok(files) => files
            .iter()
            .for_each(|f| emit(&format!("wrote {}\n", f.display()))),
        Err(e) => eprintln!("charts not written: {e}"),
    }
}

/// Writes to stdout, ignoring a closed pipe (`rangealloc-bench markdown | head`): the
/// results are already saved, so there is nothing to lose.
fn emit(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// The command as a user would retype it.
fn command_line(args: &[String]) -> String {
    let mut line = format!("cargo run --release -p {} --", env!("CARGO_PKG_NAME"));
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    line
}
