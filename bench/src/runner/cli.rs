//! The runner's command line.

use std::path::PathBuf;
use std::time::Duration;

use crate::allocators;
use crate::workloads;

pub const USAGE: &str = "\
usage: cargo run --release -p rangealloc-bench -- [OPTIONS]
       cargo run --release -p rangealloc-bench -- markdown|report [--in FILE]
       cargo run --release -p rangealloc-bench -- list

Runs every workload against rangealloc (its Rust global allocator, and as rangealloc-c
its C library preloaded into the system worker: the path C programs take), jemalloc,
mimalloc, the system allocator and tcmalloc (preloaded into the system worker, when
libtcmalloc-minimal4 is installed), interleaved, and writes a table (stdout),
results.json and SVG charts.

options:
  --quick              small inputs, 3 repetitions, threads 2,8 (and medium at 16)
                       (default; about 3 min on 2 cores)
  --full               larger inputs, 7 repetitions, threads 1,2,4,8
  --threads LIST       thread counts, e.g. 1,2,4,8
  --filter LIST        only workloads whose name contains one of these (comma-separated)
  --allocators LIST    only these allocators (jemalloc, the baseline, is always run)
  --reps N             repetitions per cell
  --seed N             input seed (same for every allocator)
  --out DIR            output directory (default bench-results)
  --syscalls           extra pass: count mmap/munmap/mremap/mprotect/madvise per run
                       with `strace -c -f` for every allocator (needs strace)
  --markdown           also print the BENCHMARKS.md section
  --timeout SECS       kill a worker run after this long (default 300)
  --no-build           do not run `cargo build` for the workers first
  --rangealloc-options OPTS
                       also run rangealloc with RANGEALLOC_OPTIONS=OPTS (reported as
                       ra+options) in the same rounds as plain rangealloc, which then
                       runs with the variable empty; e.g. prof=1

subcommands:
  markdown [--in FILE] print the BENCHMARKS.md section from a saved results.json
                       (default bench-results/results.json)
  report [--in FILE]   print the table and redraw the charts next to FILE
  list                 list the workloads and what each re-implements";

/// Repetitions in quick mode: the fewest that give a median and a spread.
pub const QUICK_REPS: usize = 3;
/// Repetitions in full mode: enough that one disturbed run cannot move the median.
pub const FULL_REPS: usize = 7;
/// Quick mode's thread counts: below and well above this 2-core machine's core count
/// (oversubscription is part of the test).
pub const QUICK_THREADS: [usize; 2] = [2, 8];
pub const FULL_THREADS: [usize; 4] = [1, 2, 4, 8];
/// The default input seed; any fixed value works, it only has to be the same for all.
pub const DEFAULT_SEED: u64 = 0x5eed;
/// Longest a single worker run may take before it is killed and counted as failed:
/// generous, since a full-mode run is seconds; it only catches hangs.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_OUT: &str = "bench-results";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Quick,
    Full,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    /// Print the BENCHMARKS.md section from a saved results.json.
    Markdown {
        input: PathBuf,
    },
    /// Print the table and redraw the charts (next to the file) from a saved results.json.
    Report {
        input: PathBuf,
    },
    List,
    Help,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub threads: Vec<usize>,
    /// `threads` are the mode's defaults (no `--threads`): quick mode then adds each
    /// workload's `quick_extra_threads`.
    pub default_threads: bool,
    pub workloads: Vec<&'static str>,
    pub allocators: Vec<&'static str>,
    pub reps: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub syscalls: bool,
    pub markdown: bool,
    pub timeout: Duration,
    pub build: bool,
    /// `--rangealloc-options`: run rangealloc a second time with these options.
    pub rangealloc_options: Option<String>,
}

impl Options {
    /// The thread counts `w` runs at: `threads`, plus the workload's own extra counts
    /// in quick mode when `--threads` was not given.
    pub fn thread_counts(&self, w: &workloads::Workload) -> Vec<usize> {
        let mut counts = self.threads.clone();
        if self.mode == Mode::Quick && self.default_threads {
            counts.extend(
                w.quick_extra_threads
                    .iter()
                    .filter(|t| !self.threads.contains(t)),
            );
        }
        counts
    }

    /// Every thread count some selected workload runs at, ascending.
    pub fn all_thread_counts(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self
            .workloads
            .iter()
            .filter_map(|name| workloads::by_name(name))
            .flat_map(|w| self.thread_counts(w))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

pub fn parse(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some(sub @ ("markdown" | "report")) => {
            let input = match &args[1..] {
                [] => PathBuf::from(DEFAULT_OUT).join("results.json"),
                [flag, file] if flag == "--in" => PathBuf::from(file),
                _ => return Err(format!("{sub} takes only --in FILE")),
            };
            return Ok(if sub == "markdown" {
                Command::Markdown { input }
            } else {
                Command::Report { input }
            });
        }
        Some("list") => return Ok(Command::List),
        _ => {}
    }
    // Mode-dependent settings stay unset until the mode is known (flags may come in
    // any order); the rest go straight into `o`.
    let (mut threads, mut reps, mut filter, mut alloc_list) = (None, None, None, None);
    let mut o = Options {
        mode: Mode::Quick,
        threads: vec![],
        default_threads: true,
        workloads: vec![],
        allocators: vec![],
        reps: 0,
        seed: DEFAULT_SEED,
        out: PathBuf::from(DEFAULT_OUT),
        syscalls: false,
        markdown: false,
        timeout: DEFAULT_TIMEOUT,
        build: true,
        rangealloc_options: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--quick" => o.mode = Mode::Quick,
            "--full" => o.mode = Mode::Full,
            "--threads" => threads = Some(number_list(&value()?)?),
            "--reps" => reps = Some(number(&value()?)? as usize),
            "--filter" => filter = Some(value()?),
            "--allocators" => alloc_list = Some(value()?),
            "--seed" => o.seed = number(&value()?)?,
            "--timeout" => o.timeout = Duration::from_secs(number(&value()?)?),
            "--out" => o.out = PathBuf::from(value()?),
            "--syscalls" => o.syscalls = true,
            "--markdown" => o.markdown = true,
            "--no-build" => o.build = false,
            "--rangealloc-options" => o.rangealloc_options = Some(value()?),
            _ => return Err(format!("unknown argument {flag}\n\n{USAGE}")),
        }
    }
    let (default_reps, default_threads) = match o.mode {
        Mode::Quick => (QUICK_REPS, QUICK_THREADS.to_vec()),
        Mode::Full => (FULL_REPS, FULL_THREADS.to_vec()),
    };
    o.reps = reps.unwrap_or(default_reps).max(1);
    o.default_threads = threads.is_none();
    o.threads = threads.unwrap_or(default_threads);
    if o.threads.is_empty() || o.threads.contains(&0) {
        return Err("--threads needs positive counts".into());
    }
    o.workloads = select_workloads(filter.as_deref())?;
    o.allocators = select_allocators(alloc_list.as_deref())?;
    if o.rangealloc_options.is_some() {
        add_options_variant(&mut o.allocators);
    }
    Ok(Command::Run(o))
}

fn select_workloads(filter: Option<&str>) -> Result<Vec<&'static str>, String> {
    let names = workloads::ALL.iter().map(|w| w.name);
    let Some(filter) = filter else {
        return Ok(names.collect());
    };
    let wanted: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let chosen: Vec<_> = names
        .filter(|n| wanted.iter().any(|w| n.contains(w)))
        .collect();
    if chosen.is_empty() {
        let all: Vec<_> = workloads::ALL.iter().map(|w| w.name).collect();
        return Err(format!(
            "--filter {filter} matches no workload; workloads: {}",
            all.join(", ")
        ));
    }
    Ok(chosen)
}

fn select_allocators(list: Option<&str>) -> Result<Vec<&'static str>, String> {
    let Some(list) = list else {
        // Every allocator that can run here; a preloaded one that is not installed is
        // left out with a warning (asked for by name, it is an error instead).
        let mut all = Vec::new();
        for a in allocators::ALL {
            match a.preload_path() {
                Ok(_) => all.push(a.name),
                Err(e) => eprintln!("warning: {e}; skipped"),
            }
        }
        return Ok(all);
    };
    let mut chosen = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        chosen.push(
            allocators::ALL
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| format!("unknown allocator {name}"))?
                .name,
        );
    }
    // Ratios need the baseline in the same session.
    if !chosen.contains(&allocators::BASELINE) {
        chosen.push(allocators::BASELINE);
    }
    // Keep the canonical order whatever order the user typed.
    Ok(allocators::ALL
        .iter()
        .map(|a| a.name)
        .filter(|n| chosen.contains(n))
        .collect())
}

/// Puts plain rangealloc and its `--rangealloc-options` variant side by side in the list.
fn add_options_variant(list: &mut Vec<&'static str>) {
    if !list.contains(&allocators::UNDER_TEST) {
        list.insert(0, allocators::UNDER_TEST);
    }
    let at = list
        .iter()
        .position(|&a| a == allocators::UNDER_TEST)
        .unwrap_or(0);
    list.insert(at + 1, allocators::WITH_OPTIONS.name);
}

fn number(s: &str) -> Result<u64, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

fn number_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|p| number(p.trim()).map(|n| n as usize))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap() {
            Command::Run(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_quick() {
        let o = run(&[]);
        assert_eq!(o.mode, Mode::Quick);
        assert_eq!(o.reps, QUICK_REPS);
        assert_eq!(o.threads, QUICK_THREADS.to_vec());
        assert_eq!(o.workloads.len(), workloads::ALL.len());
        let available = allocators::ALL.iter().filter(|a| a.available()).count();
        assert_eq!(o.allocators.len(), available);
    }

    #[test]
    fn quick_runs_medium_at_16_threads_too_unless_threads_are_given() {
        let medium = workloads::by_name("medium").unwrap();
        let larson = workloads::by_name("larson").unwrap();
        let o = run(&[]);
        assert_eq!(o.thread_counts(medium), vec![2, 8, 16]);
        assert_eq!(o.thread_counts(larson), vec![2, 8]);
        assert_eq!(o.all_thread_counts(), vec![2, 8, 16]);
        let o = run(&["--threads", "2"]);
        assert_eq!(o.thread_counts(medium), vec![2]);
        let o = run(&["--full"]);
        assert_eq!(o.thread_counts(medium), FULL_THREADS.to_vec());
        let o = run(&["--filter", "larson"]);
        assert_eq!(o.all_thread_counts(), vec![2, 8]);
    }

    #[test]
    fn full_and_overrides() {
        let o = run(&[
            "--full",
            "--threads",
            "1,3",
            "--filter",
            "cache,region",
            "--allocators",
            "system,rangealloc",
        ]);
        assert_eq!(o.reps, FULL_REPS);
        assert_eq!(o.threads, vec![1, 3]);
        assert_eq!(o.workloads, vec!["cache-scratch", "cache-thrash", "region"]);
        assert_eq!(o.allocators, vec!["rangealloc", "jemalloc", "system"]);
    }

    #[test]
    fn options_variant_runs_beside_plain_rangealloc() {
        let o = run(&["--allocators", "jemalloc", "--rangealloc-options", "prof=1"]);
        assert_eq!(o.allocators, vec!["rangealloc", "ra+options", "jemalloc"]);
        assert_eq!(o.rangealloc_options.as_deref(), Some("prof=1"));
        let o = run(&["--rangealloc-options", "prof=1,prof_sample=4096"]);
        assert_eq!(o.allocators[..2], ["rangealloc", "ra+options"]);
        assert_eq!(run(&[]).rangealloc_options, None);
    }

    #[test]
    fn rejects_bad_input() {
        let parse_str = |a: &[&str]| parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(parse_str(&["--filter", "nothing-matches"]).is_err());
        assert!(parse_str(&["--threads", "0"]).is_err());
        assert!(parse_str(&["--bogus"]).is_err());
        assert!(parse_str(&["--allocators", "ptmalloc3"]).is_err());
        assert!(parse_str(&["--allocators", "ra+options"]).is_err());
        assert!(parse_str(&["--rangealloc-options"]).is_err());
    }

    #[test]
    fn subcommands() {
        let parse_str =
            |a: &[&str]| parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        assert_eq!(parse_str(&["list"]), Command::List);
        assert_eq!(
            parse_str(&["markdown", "--in", "x.json"]),
            Command::Markdown {
                input: "x.json".into()
            }
        );
    }
}
