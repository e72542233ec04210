//! Statistics snapshots and the human-readable report. Owns nothing; reads the counters
//! of `heap`, `large`, `region`, `purge`, `meta`, `prof`, `stats` and `os`. Reading costs a walk over the heaps
//! (one per live thread at most) and the region tree, never a pause of the fast path.

use crate::heap::{self, segment, size_class};
use crate::os::{self, Syscall, SyscallCounts};
use crate::region::arenas::{ArenaContention, MAX_ARENAS};
use crate::region::ARENAS;
use crate::sync::atomic::Ordering;
use crate::{large, meta, purge};

/// Counts of one small size class.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassStats {
    /// The class's block size in bytes.
    pub block_size: usize,
    /// Blocks handed out so far.
    pub allocs: u64,
    /// Blocks freed so far.
    pub frees: u64,
}

impl ClassStats {
    /// Blocks live now (`allocs - frees`).
    pub fn live(&self) -> u64 {
        self.allocs.saturating_sub(self.frees)
    }
}

/// Region-table lookups by outcome (the kernel's `VMA_LOCK_*` counters' analogue).
#[derive(Clone, Copy, Debug, Default)]
pub struct LockStats {
    /// Lookups that read-locked their region without the writer mutex.
    pub success: u64,
    /// ... that found the region write-locked by an update.
    pub abort: u64,
    /// ... that found a detached region and retried.
    pub retry: u64,
    /// ... that found no region covering the address.
    pub miss: u64,
    /// ... that finished under the writer mutex.
    pub slow: u64,
    /// Acquisitions of the arenas' writer mutexes (all arenas).
    pub writer: u64,
    /// ... that found the mutex held and waited.
    pub waits: u64,
    /// Nanoseconds those waited.
    pub wait_ns: u64,
    /// Write-locks that found readers inside their region and waited for them.
    pub reader_waits: u64,
    /// Process-wide locks (the metadata lock, `mmap_lock` writers) taken on the
    /// region-table path, ours (`stats::REGION_PATH_PROCESS_LOCKS`; none in steady state
    /// but `mremap` moves of big objects, by design).
    pub process_locks: u64,
    /// ... taken there by crossbeam-epoch's own allocations (`REGION_PATH_DEPENDENCY_LOCKS`).
    pub dependency_locks: u64,
}

/// The region-table arenas: how many, and each one's writer contention.
#[derive(Clone, Copy, Debug)]
pub struct ArenaStats {
    /// Arenas placements use (`narenas`).
    pub count: usize,
    /// Placements that went to an arena other than the thread's home (its own was busy
    /// or full).
    pub fallbacks: u64,
    /// Per arena (index order; arenas never used read zero), writer acquisitions, waits
    /// and nanoseconds waited.
    pub each: [ArenaContention; MAX_ARENAS],
}

impl Default for ArenaStats {
    fn default() -> Self {
        ArenaStats {
            count: 0,
            fallbacks: 0,
            each: [ArenaContention::default(); MAX_ARENAS],
        }
    }
}

impl ArenaStats {
    /// The arenas with any writer activity, with their index.
    pub fn active(&self) -> impl Iterator<Item = (usize, &ArenaContention)> {
        self.each.iter().enumerate().filter(|(_, c)| c.writer > 0)
    }
}

/// The region table's contents.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionStats {
    /// Live large objects (one region each).
    pub large: usize,
    /// Their bytes.
    pub large_bytes: usize,
    /// Live small-object segments.
    pub segments: usize,
    /// Free regions.
    pub free: usize,
    /// Their bytes.
    pub free_bytes: usize,
    /// Free bytes not purged yet.
    pub dirty_bytes: usize,
    /// Bytes of freed regions not folded back into the table yet.
    pub retired_bytes: usize,
    /// Bytes of freed medium objects held in threads' region caches (not counted in
    /// `large_bytes`).
    pub cached_bytes: usize,
}

/// What the threads' caches of freed medium objects did (`large::cache`).
#[derive(Clone, Copy, Debug, Default)]
pub struct MediumCacheStats {
    /// Medium allocations served from the thread's cache (no tree update).
    pub hits: u64,
    /// Medium allocations that found their class empty and placed a new region.
    pub misses: u64,
    /// Regions the caches let go of (bounds, garbage collection, thread exit, purge).
    pub evicted: u64,
}

/// What zero-filled large objects on fresh pages got (`large::prefault`).
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefaultStats {
    /// Objects faulted in before they were returned.
    pub prefaulted: u64,
    /// Bytes those objects held.
    pub prefaulted_bytes: u64,
    /// Objects left lazy as samples.
    pub sampled: u64,
    /// Sampled objects found written at their free.
    pub found_written: u64,
    /// Sampled objects found sparse at their free.
    pub found_sparse: u64,
    /// Bytes of live prefaulted objects.
    pub live_bytes: usize,
}

/// What growing reallocs of large objects did.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReallocStats {
    /// Grew in place (into the free space after the object).
    pub grown_in_place: u64,
    /// Moved to a new region, copying the object.
    pub moved: u64,
    /// Bytes those moves copied.
    pub copied_bytes: u64,
    /// Moved to a new region by moving the pages (`mremap`), copying nothing.
    pub remapped: u64,
    /// Bytes those moves carried.
    pub remapped_bytes: u64,
    /// Moved to a new region by copying only the pages that hold bytes
    /// (`os::pagemap::copy_sparse`): no `mmap_lock` writer.
    pub sparse: u64,
    /// Bytes those moves copied (whole pages).
    pub sparse_bytes: u64,
    /// Purges that overwrote a moved-in range with a fresh mapping (`os::overlay`).
    pub overwritten: u64,
    /// The gauge of kernel mappings in our reservations (`os::maps::mappings`).
    pub mappings: u64,
    /// Censuses of those mappings (`os::maps::censuses`).
    pub censuses: u64,
    /// Failed moves whose destination the kernel had unmapped, mapped again before the
    /// copy (`os::restored_destinations`).
    pub restored: u64,
    /// Failed moves whose destination could not be mapped again (another mapping took
    /// part of it, or the `mmap` failed), left unused (`os::lost_destinations`); after
    /// the first, no page moves are tried.
    pub lost: u64,
}

/// A statistics snapshot (see `snapshot`).
#[derive(Clone, Debug)]
pub struct Stats {
    /// Bytes in live blocks (small blocks at their class size, large objects whole).
    pub allocated: usize,
    /// Bytes in pages handed to size classes plus live large objects.
    pub active: usize,
    /// Upper bound on the memory we keep resident: active, dirty free memory not yet
    /// purged, retired regions and metadata.
    pub resident: usize,
    /// Address space reserved from the OS (arenas and metadata).
    pub mapped: usize,
    /// Reserved but not resident (`mapped - resident`).
    pub retained: usize,
    /// Metadata bytes carved (descriptors, tree nodes, heaps, dependencies' blocks).
    pub metadata: usize,
    /// The region table's contents.
    pub regions: RegionStats,
    /// Per small size class counts.
    pub classes: [ClassStats; size_class::CLASSES],
    /// Memory syscalls issued, by kind.
    pub syscalls: SyscallCounts,
    /// Region-table lookups by outcome, and writer contention over all arenas.
    pub lock: LockStats,
    /// The arenas and their writer contention.
    pub arenas: ArenaStats,
    /// Table-wide purge passes run.
    pub purge_passes: u64,
    /// Bytes returned to the OS with `madvise` (every purge path).
    pub purged_bytes: u64,
    /// Purges of the dirty rest of a hole a fresh big object took the front of
    /// (`large::trim_after`).
    pub trims: u64,
    /// Their bytes (part of `purged_bytes`).
    pub trimmed_bytes: u64,
    /// Batched purge calls (`os::purge_many`, one `process_madvise` and one TLB flush
    /// each).
    pub purge_batches: u64,
    /// The pieces they advised.
    pub batched_pieces: u64,
    /// Dirty free space the table may keep before the excess is purged at once.
    pub dirty_budget: usize,
    /// What growing reallocs of large objects did.
    pub reallocs: ReallocStats,
    /// What the caches of freed medium objects did.
    pub medium_cache: MediumCacheStats,
    /// What zero-filled large objects on fresh pages got.
    pub prefault: PrefaultStats,
    /// Thread heaps created.
    pub heaps: usize,
    /// Heaps of exited threads waiting for adoption.
    pub abandoned_heaps: usize,
    /// Heap-profiler samples not recorded because its tables were full (`prof`).
    pub prof_dropped_samples: u64,
}

/// Takes a snapshot: a walk over the heaps and the region tree.
pub fn snapshot() -> Stats {
    let mut classes = [ClassStats::default(); size_class::CLASSES];
    for (c, class) in classes.iter_mut().enumerate() {
        class.block_size = size_class::class_size(c);
        class.frees = heap::ORPHAN_FREES[c].load(Ordering::Relaxed);
    }
    heap::for_each_heap(|h| {
        let counts = h.counts.allocs.iter().zip(h.counts.frees.iter());
        for (class, (allocs, frees)) in classes.iter_mut().zip(counts) {
            class.allocs += allocs.load(Ordering::Relaxed);
            class.frees += frees.load(Ordering::Relaxed);
        }
    });
    let small_live: usize = classes
        .iter()
        .map(|c| c.live() as usize * c.block_size)
        .sum();
    let space = ARENAS.space();
    let meta = meta::stats();
    let small_pages = segment::SMALL_PAGE_BYTES.get() as usize;
    let segment_dirty = segment::SEGMENT_DIRTY_BYTES.get() as usize;
    let active = small_pages + space.large_bytes;
    let resident =
        active + segment_dirty + space.dirty + space.retired + space.cached + meta.carved;
    let mapped = space.reserved + meta.reserved;
    let (counters, each) = ARENAS.lock_counts();
    let heaps = heap::heap_counts();
    Stats {
        allocated: small_live + space.large_bytes,
        active,
        resident,
        mapped,
        retained: mapped.saturating_sub(resident),
        metadata: meta.carved,
        regions: RegionStats {
            large: space.large_regions,
            large_bytes: space.large_bytes,
            segments: space.segment_regions,
            free: space.free_regions,
            free_bytes: space.free,
            dirty_bytes: space.dirty,
            retired_bytes: space.retired,
            cached_bytes: space.cached,
        },
        classes,
        syscalls: os::syscall_counts(),
        lock: LockStats {
            success: counters.success,
            abort: counters.abort,
            retry: counters.retry,
            miss: counters.miss,
            slow: counters.slow,
            writer: counters.writer,
            waits: counters.waits,
            wait_ns: counters.wait_ns,
            reader_waits: counters.reader_waits,
            process_locks: crate::stats::REGION_PATH_PROCESS_LOCKS.get(),
            dependency_locks: crate::stats::REGION_PATH_DEPENDENCY_LOCKS.get(),
        },
        arenas: ArenaStats {
            count: ARENAS.count(),
            fallbacks: ARENAS.fallbacks.get(),
            each,
        },
        purge_passes: purge::PASSES.get(),
        purged_bytes: purge::PURGED_BYTES.get(),
        trims: purge::TRIMS.get(),
        trimmed_bytes: purge::TRIMMED_BYTES.get(),
        purge_batches: os::batched_purges().0,
        batched_pieces: os::batched_purges().1,
        dirty_budget: purge::dirty_budget(),
        reallocs: ReallocStats {
            grown_in_place: large::GROWN_IN_PLACE.get(),
            moved: large::MOVED.get(),
            copied_bytes: large::COPIED_BYTES.get(),
            remapped: large::REMAPPED.get(),
            remapped_bytes: large::REMAPPED_BYTES.get(),
            sparse: large::SPARSE_MOVED.get(),
            sparse_bytes: large::SPARSE_BYTES.get(),
            overwritten: os::overlays(),
            mappings: os::maps::mappings(),
            censuses: os::maps::censuses(),
            restored: os::restored_destinations(),
            lost: os::lost_destinations(),
        },
        medium_cache: MediumCacheStats {
            hits: large::cache::HITS.get(),
            misses: large::cache::MISSES.get(),
            evicted: large::cache::EVICTED.get(),
        },
        prefault: PrefaultStats {
            prefaulted: large::prefault::PREFAULTED.get(),
            prefaulted_bytes: large::prefault::PREFAULTED_BYTES.get(),
            sampled: large::prefault::SAMPLED.get(),
            found_written: large::prefault::FOUND_WRITTEN.get(),
            found_sparse: large::prefault::FOUND_SPARSE.get(),
            live_bytes: large::prefault::live_bytes(),
        },
        heaps: heaps.heaps,
        abandoned_heaps: heaps.abandoned,
        prof_dropped_samples: crate::prof::dropped_samples(),
    }
}

/// A `fmt::Write` into a fixed buffer that flushes through `out` when full: formatting
/// without allocating, so the report can be printed from `atexit` or a signal-free
/// corner of a broken program.
struct Sink<'a> {
    buf: [u8; 512],
    len: usize,
    out: &'a mut dyn FnMut(&[u8]),
}

impl core::fmt::Write for Sink<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                (self.out)(&self.buf);
                self.len = 0;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Writes the human-readable report through `out`, in pieces.
pub fn print(out: &mut dyn FnMut(&[u8])) {
    let s = snapshot();
    let mut w = Sink {
        buf: [0; 512],
        len: 0,
        out,
    };
    let _ = write_report(&mut w, &s);
    let len = w.len;
    (w.out)(&w.buf[..len]);
}

fn write_report(w: &mut impl core::fmt::Write, s: &Stats) -> core::fmt::Result {
    const MIB: f64 = (1 << 20) as f64;
    writeln!(w, "rangealloc {} statistics", env!("CARGO_PKG_VERSION"))?;
    for (name, value) in [
        ("allocated", s.allocated),
        ("active", s.active),
        ("resident", s.resident),
        ("mapped", s.mapped),
        ("retained", s.retained),
        ("metadata", s.metadata),
    ] {
        writeln!(w, "  {name:<10} {:>12.2} MiB", value as f64 / MIB)?;
    }
    let r = &s.regions;
    writeln!(
        w,
        "  regions    large {} ({:.2} MiB), segments {}, free {} ({:.2} MiB, {:.2} MiB dirty), retired {:.2} MiB, cached {:.2} MiB",
        r.large,
        r.large_bytes as f64 / MIB,
        r.segments,
        r.free,
        r.free_bytes as f64 / MIB,
        r.dirty_bytes as f64 / MIB,
        r.retired_bytes as f64 / MIB,
        r.cached_bytes as f64 / MIB
    )?;
    let l = &s.lock;
    writeln!(
        w,
        "  region lock: fast-path success {} abort {} retry {} miss {} slow {}; writer mutex {} (waited {}, {:.3} ms)",
        l.success,
        l.abort,
        l.retry,
        l.miss,
        l.slow,
        l.writer,
        l.waits,
        l.wait_ns as f64 / 1e6
    )?;
    writeln!(
        w,
        "  region path: writer waits for readers {}; process-wide locks {} (dependencies' {})",
        l.reader_waits, l.process_locks, l.dependency_locks
    )?;
    let a = &s.arenas;
    write!(
        w,
        "  arenas: {} (placements in another arena {}); writer acquisitions/waits/ms by arena:",
        a.count, a.fallbacks
    )?;
    for (i, c) in a.active() {
        write!(
            w,
            " {i}:{}/{}/{:.3}",
            c.writer,
            c.waits,
            c.wait_ns as f64 / 1e6
        )?;
    }
    writeln!(w)?;
    write!(w, "  syscalls:")?;
    for call in Syscall::ALL {
        write!(w, " {} {}", call.name(), s.syscalls.get(call))?;
    }
    writeln!(w, " (mmap_lock writers {})", s.syscalls.mmap_lock_writers())?;
    writeln!(
        w,
        "  purge: {} passes, {:.2} MiB (of which {} holes' rests after a new object, {:.2} MiB; {} pieces in {} batched calls; dirty budget {:.2} MiB); heaps {} ({} abandoned)",
        s.purge_passes,
        s.purged_bytes as f64 / MIB,
        s.trims,
        s.trimmed_bytes as f64 / MIB,
        s.batched_pieces,
        s.purge_batches,
        s.dirty_budget as f64 / MIB,
        s.heaps,
        s.abandoned_heaps
    )?;
    let g = &s.reallocs;
    writeln!(
        w,
        "  large reallocs: grown in place {}, moved {} ({:.2} MiB copied), remapped {} \
         ({:.2} MiB moved by mremap), copied sparsely {} ({:.2} MiB); moved-in ranges overwritten {}, mappings gauge {} \
         ({} censuses); failed moves' destinations mapped again {}, lost {}",
        g.grown_in_place,
        g.moved,
        g.copied_bytes as f64 / MIB,
        g.remapped,
        g.remapped_bytes as f64 / MIB,
        g.sparse,
        g.sparse_bytes as f64 / MIB,
        g.overwritten,
        g.mappings,
        g.censuses,
        g.restored,
        g.lost
    )?;
    let m = &s.medium_cache;
    writeln!(
        w,
        "  medium cache: hits {}, misses {}, evicted {}",
        m.hits, m.misses, m.evicted
    )?;
    let z = &s.prefault;
    writeln!(
        w,
        "  zeroed large objects: prefaulted {} ({:.2} MiB); left lazy as samples {}, found written {}, sparse {}; live prefaulted {:.2} MiB",
        z.prefaulted,
        z.prefaulted_bytes as f64 / MIB,
        z.sampled,
        z.found_written,
        z.found_sparse,
        z.live_bytes as f64 / MIB
    )?;
    if s.prof_dropped_samples > 0 {
        writeln!(
            w,
            "  heap profiler: {} samples dropped (tables full)",
            s.prof_dropped_samples
        )?;
    }
    writeln!(
        w,
        "  size classes with activity (block size: live / allocs / frees):"
    )?;
    for c in s.classes.iter().filter(|c| c.allocs > 0) {
        writeln!(
            w,
            "    {:>6}: {:>10} / {:>12} / {:>12}",
            c.block_size,
            c.live(),
            c.allocs,
            c.frees
        )?;
    }
    Ok(())
}

/// Writes the statistics as one JSON object through `out`, in pieces, without
/// allocating (the C API and `malloc_stats_print` with jemalloc's `J` option).
pub fn print_json(out: &mut dyn FnMut(&[u8])) {
    let s = snapshot();
    let mut w = Sink {
        buf: [0; 512],
        len: 0,
        out,
    };
    let _ = s.write_json(&mut w);
    let len = w.len;
    (w.out)(&w.buf[..len]);
}

impl Stats {
    /// Writes these statistics as one JSON object (no trailing newline). The keys are
    /// the field names; nested structs are objects, `classes` an array of the classes
    /// with activity, `syscalls` an object keyed by syscall name. Hand-written, so the
    /// engine needs no serialisation dependency.
    pub fn write_json(&self, w: &mut impl core::fmt::Write) -> core::fmt::Result {
        write!(w, "{{\"version\":\"{}\"", env!("CARGO_PKG_VERSION"))?;
        for (name, value) in [
            ("allocated", self.allocated),
            ("active", self.active),
            ("resident", self.resident),
            ("mapped", self.mapped),
            ("retained", self.retained),
            ("metadata", self.metadata),
            ("heaps", self.heaps),
            ("abandoned_heaps", self.abandoned_heaps),
        ] {
            write!(w, ",\"{name}\":{value}")?;
        }
        write!(
            w,
            ",\"purge_passes\":{},\"purged_bytes\":{},\"trims\":{},\"trimmed_bytes\":{},\"purge_batches\":{},\"batched_pieces\":{},\"dirty_budget\":{}",
            self.purge_passes,
            self.purged_bytes,
            self.trims,
            self.trimmed_bytes,
            self.purge_batches,
            self.batched_pieces,
            self.dirty_budget
        )?;
        write!(w, ",\"prof_dropped_samples\":{}", self.prof_dropped_samples)?;
        let re = &self.reallocs;
        write!(
            w,
            ",\"reallocs\":{{\"grown_in_place\":{},\"moved\":{},\"copied_bytes\":{},\
             \"remapped\":{},\"remapped_bytes\":{},\"sparse\":{},\"sparse_bytes\":{},\
             \"overwritten\":{},\"mappings\":{},\
             \"censuses\":{},\"restored\":{},\"lost\":{}}}",
            re.grown_in_place,
            re.moved,
            re.copied_bytes,
            re.remapped,
            re.remapped_bytes,
            re.sparse,
            re.sparse_bytes,
            re.overwritten,
            re.mappings,
            re.censuses,
            re.restored,
            re.lost
        )?;
        let r = &self.regions;
        write!(
            w,
            ",\"regions\":{{\"large\":{},\"large_bytes\":{},\"segments\":{},\"free\":{},\"free_bytes\":{},\"dirty_bytes\":{},\"retired_bytes\":{},\"cached_bytes\":{}}}",
            r.large, r.large_bytes, r.segments, r.free, r.free_bytes, r.dirty_bytes, r.retired_bytes, r.cached_bytes
        )?;
        let m = &self.medium_cache;
        write!(
            w,
            ",\"medium_cache\":{{\"hits\":{},\"misses\":{},\"evicted\":{}}}",
            m.hits, m.misses, m.evicted
        )?;
        let z = &self.prefault;
        write!(
            w,
            ",\"prefault\":{{\"prefaulted\":{},\"prefaulted_bytes\":{},\"sampled\":{},\"found_written\":{},\"found_sparse\":{},\"live_bytes\":{}}}",
            z.prefaulted, z.prefaulted_bytes, z.sampled, z.found_written, z.found_sparse, z.live_bytes
        )?;
        let l = &self.lock;
        write!(
            w,
            ",\"lock\":{{\"success\":{},\"abort\":{},\"retry\":{},\"miss\":{},\"slow\":{},\"writer\":{},\"waits\":{},\"wait_ns\":{},",
            l.success, l.abort, l.retry, l.miss, l.slow, l.writer, l.waits, l.wait_ns
        )?;
        write!(
            w,
            "\"reader_waits\":{},\"process_locks\":{},\"dependency_locks\":{}}}",
            l.reader_waits, l.process_locks, l.dependency_locks
        )?;
        let a = &self.arenas;
        write!(
            w,
            ",\"arenas\":{{\"count\":{},\"fallbacks\":{},\"each\":[",
            a.count, a.fallbacks
        )?;
        for (n, (i, c)) in a.active().enumerate() {
            let comma = if n == 0 { "" } else { "," };
            write!(
                w,
                "{comma}{{\"arena\":{i},\"writer\":{},\"waits\":{},\"wait_ns\":{}}}",
                c.writer, c.waits, c.wait_ns
            )?;
        }
        write!(w, "]}}")?;
        write!(w, ",\"syscalls\":{{")?;
        for (i, call) in Syscall::ALL.into_iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(w, "{comma}\"{}\":{}", call.name(), self.syscalls.get(call))?;
        }
        write!(
            w,
            "}},\"mmap_lock_writers\":{},\"classes\":[",
            self.syscalls.mmap_lock_writers()
        )?;
        for (i, c) in self.classes.iter().filter(|c| c.allocs > 0).enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(
                w,
                "{comma}{{\"block_size\":{},\"live\":{},\"allocs\":{},\"frees\":{}}}",
                c.block_size,
                c.live(),
                c.allocs,
                c.frees
            )?;
        }
        write!(w, "]}}")
    }

    /// These statistics as a JSON string (see `write_json`).
    pub fn to_json(&self) -> String {
        let mut text = String::new();
        let _ = self.write_json(&mut text);
        text
    }
}

/// Prints the report on stderr (for `stats=1` at exit).
pub fn print_to_stderr() {
    print(&mut |bytes| os::write_stderr(bytes));
}
