//! The allocators under comparison: their names, worker binaries, and the probes a
//! worker uses to read an allocator's own statistics and syscall counters.
//!
//! Each `bench-worker-*` binary sets its `#[global_allocator]` and passes the matching
//! probe to [`crate::worker_main`]. Probes only read; a probe for an allocator that the
//! binary did not link as global allocator must never be called (jemalloc's control
//! interface would initialise a second, idle heap).

use rangealloc::SyscallCounts;

/// One allocator: the name used in reports, the worker binary that links it, and the
/// shared library preloaded into that worker, for allocators with no Rust binding (and
/// for rangealloc's own C library, whose path `malloc` every C program meets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocator {
    pub name: &'static str,
    pub worker_bin: &'static str,
    /// The shared library preloaded into the worker, if any. A preloaded `malloc`
    /// replaces glibc's, so the system worker (`std::alloc::System`) runs it.
    pub preload: Preload,
}

/// Which shared library, if any, a worker runs with in its `LD_PRELOAD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preload {
    /// None: the worker links the allocator.
    None,
    /// A library installed by a system package: the first of these paths that exists.
    Installed(&'static [&'static str]),
    /// This workspace's `librangealloc.so` (crate `rangealloc-ffi`), next to the
    /// workers: the C path (`malloc`, `free`, thread-local fast path through the
    /// preloaded library) that C and C++ programs take, which the Rust worker does not.
    Ours,
}

/// The file name of rangealloc's C library (`ffi/`), built next to the workers.
pub const OUR_LIBRARY: &str = "librangealloc.so";

/// Debian's `libtcmalloc-minimal4` (gperftools' tcmalloc without the profiler), in the
/// multiarch directories of the two supported targets.
const TCMALLOC_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
];

/// Every allocator, in the order runs interleave and reports list them.
pub const ALL: [Allocator; 6] = [
    Allocator {
        name: "rangealloc",
        worker_bin: "bench-worker-rangealloc",
        preload: Preload::None,
    },
    Allocator {
        name: "rangealloc-c",
        worker_bin: "bench-worker-system",
        preload: Preload::Ours,
    },
    Allocator {
        name: "jemalloc",
        worker_bin: "bench-worker-jemalloc",
        preload: Preload::None,
    },
    Allocator {
        name: "mimalloc",
        worker_bin: "bench-worker-mimalloc",
        preload: Preload::None,
    },
    Allocator {
        name: "system",
        worker_bin: "bench-worker-system",
        preload: Preload::None,
    },
    Allocator {
        name: "tcmalloc",
        worker_bin: "bench-worker-system",
        preload: Preload::Installed(TCMALLOC_PATHS),
    },
];

impl Allocator {
    /// The library to preload: `Ok(None)` for a linked allocator, an error naming the
    /// package when a preloaded one is not installed.
    pub fn preload_path(&self) -> Result<Option<&'static str>, String> {
        match self.preload {
            Preload::None => Ok(None),
            Preload::Installed(paths) => paths
                .iter()
                .copied()
                .find(|p| std::path::Path::new(p).is_file())
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "{} is not installed (looked for {}; Debian: apt-get install libtcmalloc-minimal4)",
                        self.name,
                        paths.join(", ")
                    )
                }),
            Preload::Ours => our_library().map(Some),
        }
    }

    /// Whether this allocator can run here (its library, if any, is installed).
    pub fn available(&self) -> bool {
        self.preload_path().is_ok()
    }
}

/// rangealloc's C library next to the running executable (the runner and the workers
/// share `target/<profile>/`), as a `'static` path: looked up once, then kept.
fn our_library() -> Result<&'static str, String> {
    static PATH: std::sync::OnceLock<Result<&'static str, String>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path = crate::runner::workers::bin_dir()?.join(OUR_LIBRARY);
        if !path.is_file() {
            return Err(format!(
                "rangealloc-c: {} is missing; build it with `cargo build --release -p rangealloc-ffi`",
                path.display()
            ));
        }
        let path = path.to_str().ok_or("library path is not UTF-8")?.to_owned();
        Ok(&*Box::leak(path.into_boxed_str()))
    })
    .clone()
}

/// The allocator that ratios are taken against: the best-known general-purpose
/// allocator with a stable Rust binding, and the one rangealloc aims to beat.
pub const BASELINE: &str = "jemalloc";

/// The allocator whose own syscall counters the report shows.
pub const UNDER_TEST: &str = "rangealloc";

/// Heap statistics in bytes, as an allocator reports them about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes handed to the program and not yet freed.
    pub allocated: u64,
    /// Bytes in pages the allocator holds for live objects (allocated + fragmentation).
    pub active: u64,
    /// Bytes the allocator believes are resident (active + metadata + dirty caches).
    pub resident: u64,
}

/// Lock contention an allocator counts about itself (rangealloc's region-table
/// arenas, issue 16): cumulative since start; a worker reports the difference over the
/// workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Contention {
    /// Acquisitions of the arenas' writer mutexes.
    pub writer: u64,
    /// ... that found the mutex held and waited.
    pub waits: u64,
    /// Process-wide locks taken on the large-object (region-table) path: the metadata
    /// lock and `mmap_lock`-writer syscalls (`REGION_PATH_PROCESS_LOCKS`).
    pub process_locks: u64,
}

impl Contention {
    /// The counts between two snapshots.
    pub fn since(&self, before: &Contention) -> Contention {
        Contention {
            writer: self.writer.saturating_sub(before.writer),
            waits: self.waits.saturating_sub(before.waits),
            process_locks: self.process_locks.saturating_sub(before.process_locks),
        }
    }
}

/// What a worker can ask of the allocator it links.
pub trait Probe: Sync {
    fn name(&self) -> &'static str;
    /// The allocator's own statistics, if it exposes them.
    fn stats(&self) -> Option<AllocStats>;
    /// The allocator's own count of the syscalls it issued, if it keeps one.
    fn syscalls(&self) -> Option<SyscallCounts>;
    /// The allocator's own lock-contention counters, if it keeps them.
    fn contention(&self) -> Option<Contention> {
        None
    }
}

/// rangealloc: statistics from its snapshot, syscall counters from its OS layer.
pub struct Rangealloc;

impl Probe for Rangealloc {
    fn name(&self) -> &'static str {
        "rangealloc"
    }

    fn stats(&self) -> Option<AllocStats> {
        // A snapshot walks the heaps and the region tree: taken once, after the timing.
        let s = rangealloc::stats();
        Some(AllocStats {
            allocated: s.allocated as u64,
            active: s.active as u64,
            resident: s.resident as u64,
        })
    }

    fn syscalls(&self) -> Option<SyscallCounts> {
        Some(rangealloc::syscall_counts())
    }

    fn contention(&self) -> Option<Contention> {
        use rangealloc::engine::{region::ARENAS, stats::REGION_PATH_PROCESS_LOCKS};
        // Counter sums, not the full snapshot `stats()` takes (no heap or tree walk).
        let (totals, _) = ARENAS.lock_counts();
        Some(Contention {
            writer: totals.writer,
            waits: totals.waits,
            process_locks: REGION_PATH_PROCESS_LOCKS.get(),
        })
    }
}

/// jemalloc through `tikv-jemallocator`: statistics from its `mallctl` interface.
pub struct Jemalloc;

impl Probe for Jemalloc {
    fn name(&self) -> &'static str {
        "jemalloc"
    }

    fn stats(&self) -> Option<AllocStats> {
        use tikv_jemalloc_ctl::{epoch, stats};
        // jemalloc caches its statistics; advancing the epoch refreshes them.
        epoch::advance().ok()?;
        Some(AllocStats {
            allocated: stats::allocated::read().ok()? as u64,
            active: stats::active::read().ok()? as u64,
            resident: stats::resident::read().ok()? as u64,
        })
    }

    fn syscalls(&self) -> Option<SyscallCounts> {
        None
    }
}

/// mimalloc through the `mimalloc` crate, which exposes no statistics.
pub struct Mimalloc;

impl Probe for Mimalloc {
    fn name(&self) -> &'static str {
        "mimalloc"
    }

    fn stats(&self) -> Option<AllocStats> {
        None
    }

    fn syscalls(&self) -> Option<SyscallCounts> {
        None
    }
}

/// The system allocator (glibc malloc on Linux) through `std::alloc::System`.
pub struct System;

impl Probe for System {
    fn name(&self) -> &'static str {
        "system"
    }

    fn stats(&self) -> Option<AllocStats> {
        None
    }

    fn syscalls(&self) -> Option<SyscallCounts> {
        None
    }
}

/// rangealloc's worker run with `RANGEALLOC_OPTIONS` set to the runner's
/// `--rangealloc-options` (for example `prof=1`), in the same rounds as plain rangealloc
/// (which then runs with the variable empty), so the two compare like for like.
pub const WITH_OPTIONS: Allocator = Allocator {
    name: "ra+options",
    worker_bin: "bench-worker-rangealloc",
    preload: Preload::None,
};

/// The environment variable rangealloc reads its options from.
pub const OPTIONS_VAR: &str = "RANGEALLOC_OPTIONS";

/// Looks an allocator up by name (`WITH_OPTIONS` included).
pub fn by_name(name: &str) -> Option<Allocator> {
    ALL.iter()
        .copied()
        .chain([WITH_OPTIONS])
        .find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rangealloc-c` runs the system worker with this workspace's C library from the
    /// executable's own directory. A test binary lives in `target/<profile>/deps/`,
    /// where no `librangealloc.so` is ever built: the lookup must fail saying which file
    /// it wanted and how to build it (the runner then skips the row with that warning).
    #[test]
    fn rangealloc_c_preloads_our_library_from_beside_the_executable() {
        let c = by_name("rangealloc-c").expect("rangealloc-c is listed");
        assert_eq!(
            (c.worker_bin, c.preload),
            ("bench-worker-system", Preload::Ours)
        );
        let dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let wanted = dir.join(OUR_LIBRARY);
        match c.preload_path() {
            Ok(Some(path)) => assert_eq!(std::path::Path::new(path), wanted),
            Ok(None) => panic!("rangealloc-c preloads nothing"),
            Err(e) => {
                assert!(!wanted.is_file(), "{e}");
                assert!(e.contains(&wanted.display().to_string()), "{e}");
                assert!(e.contains("cargo build --release -p rangealloc-ffi"), "{e}");
            }
        }
        assert!(!ALL
            .iter()
            .any(|a| a.name != c.name && a.preload == Preload::Ours));
    }
}
