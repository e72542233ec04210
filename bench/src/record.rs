//! The record one worker run prints (one JSON line on stdout) and the runner parses:
//! the only interface between the two processes.

use serde_json::{json, Map, Value};

use crate::allocators::{AllocStats, Contention};

/// What one run of one workload in one process measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRecord {
    pub allocator: String,
    pub wall_ns: u64,
    pub ops: u64,
    pub mismatches: u64,
    /// `VmHWM` at the end of the run, KiB: includes the process's start-up footprint.
    pub peak_rss_kib: u64,
    /// `VmRSS` at the end of the run, after the workload freed everything: what the
    /// allocator kept.
    pub final_rss_kib: u64,
    /// The allocator's own statistics at the end of the run, where it has them.
    pub stats: Option<AllocStats>,
    /// The allocator's own syscall counts during the workload, by call name.
    pub syscalls: Option<Vec<(String, u64)>>,
    /// Of those, the calls that take the kernel's `mmap_lock` for write.
    pub mmap_lock_writers: Option<u64>,
    /// Minor page faults taken during the workload (`getrusage`, all threads).
    pub minor_faults: Option<u64>,
    /// The allocator's own lock contention during the workload, where it counts it.
    pub contention: Option<Contention>,
}

impl RunRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "allocator": self.allocator,
            "wall_ns": self.wall_ns,
            "ops": self.ops,
            "mismatches": self.mismatches,
            "peak_rss_kib": self.peak_rss_kib,
            "final_rss_kib": self.final_rss_kib,
            "stats": self.stats.map(|s| json!({
                "allocated": s.allocated, "active": s.active, "resident": s.resident,
            })),
            "syscalls": self.syscalls.as_ref().map(|calls| counts_to_json(calls)),
            "mmap_lock_writers": self.mmap_lock_writers,
            "minor_faults": self.minor_faults,
            "contention": self.contention.map(|c| json!({
                "writer": c.writer, "waits": c.waits, "process_locks": c.process_locks,
            })),
        })
    }

    pub fn from_json(v: &Value) -> Option<RunRecord> {
        let u = |key: &str| v.get(key).and_then(Value::as_u64);
        let stats = v.get("stats").filter(|s| !s.is_null()).and_then(|s| {
            Some(AllocStats {
                allocated: s.get("allocated")?.as_u64()?,
                active: s.get("active")?.as_u64()?,
                resident: s.get("resident")?.as_u64()?,
            })
        });
        Some(RunRecord {
            allocator: v.get("allocator")?.as_str()?.to_owned(),
            wall_ns: u("wall_ns")?,
            ops: u("ops")?,
            mismatches: u("mismatches")?,
            peak_rss_kib: u("peak_rss_kib")?,
            final_rss_kib: u("final_rss_kib")?,
            stats,
            syscalls: v.get("syscalls").and_then(counts_from_json),
            mmap_lock_writers: u("mmap_lock_writers"),
            minor_faults: u("minor_faults"),
            contention: v.get("contention").filter(|c| !c.is_null()).and_then(|c| {
                Some(Contention {
                    writer: c.get("writer")?.as_u64()?,
                    waits: c.get("waits")?.as_u64()?,
                    process_locks: c.get("process_locks")?.as_u64()?,
                })
            }),
        })
    }

    pub fn wall_ms(&self) -> f64 {
        const NS_PER_MS: f64 = 1e6;
        self.wall_ns as f64 / NS_PER_MS
    }
}

/// `[("mmap", 3), …]` as `{"mmap": 3, …}`, keeping the order.
pub fn counts_to_json(counts: &[(String, u64)]) -> Value {
    Value::Object(
        counts
            .iter()
            .map(|(k, n)| (k.clone(), json!(n)))
            .collect::<Map<_, _>>(),
    )
}

pub fn counts_from_json(v: &Value) -> Option<Vec<(String, u64)>> {
    let map = v.as_object()?;
    map.iter()
        .map(|(k, n)| Some((k.clone(), n.as_u64()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let r = RunRecord {
            allocator: "jemalloc".into(),
            wall_ns: 12,
            ops: 3,
            mismatches: 0,
            peak_rss_kib: 100,
            final_rss_kib: 50,
            stats: Some(AllocStats {
                allocated: 1,
                active: 2,
                resident: 3,
            }),
            syscalls: Some(vec![("mmap".into(), 4), ("munmap".into(), 1)]),
            mmap_lock_writers: Some(5),
            minor_faults: Some(6),
            contention: Some(Contention {
                writer: 7,
                waits: 8,
                process_locks: 9,
            }),
        };
        let line = r.to_json().to_string();
        let back = RunRecord::from_json(&serde_json::from_str(&line).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn nulls_parse_as_none() {
        let mut r = RunRecord {
            allocator: "system".into(),
            ..RunRecord::default()
        };
        r.wall_ns = 1;
        let back = RunRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back.stats, None);
        assert_eq!(back.syscalls, None);
        assert_eq!(back.mmap_lock_writers, None);
        assert_eq!(back.minor_faults, None);
        assert_eq!(back.contention, None);
    }
}
