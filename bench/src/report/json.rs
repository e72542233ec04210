//! `results.json`: the whole session, raw runs included, so every other output can be
//! regenerated from it. Hand-mapped with `serde_json::Value` (no derive macros).

use serde_json::{json, Value};

use super::{Cell, Meta, Results};
use crate::record::{counts_from_json, counts_to_json, RunRecord};
use crate::workloads::Scale;

/// Bumped when the layout changes incompatibly.
const FORMAT_VERSION: u64 = 1;

pub fn to_json(results: &Results) -> Value {
    let m = &results.meta;
    json!({
        "format": FORMAT_VERSION,
        "meta": {
            "command": m.command, "date": m.date, "machine": m.machine, "nproc": m.nproc,
            "mode": m.mode, "reps": m.reps, "seed": m.seed, "threads": m.threads,
            "allocators": m.allocators, "workloads": m.workloads,
        },
        "cells": results.cells.iter().map(|c| cell_to_json(results, c)).collect::<Vec<_>>(),
    })
}

fn cell_to_json(results: &Results, c: &Cell) -> Value {
    // The summary is derived (and recomputed on load), written for other consumers.
    let summary = c.summary().map(|s| {
        json!({
            "median_ms": s.median_ms, "min_ms": s.min_ms, "max_ms": s.max_ms,
            "ratio_to_baseline": results.ratio(c), "throughput_ops_per_s": s.throughput,
            "peak_rss_mib": s.peak_rss_mib, "final_rss_mib": s.final_rss_mib,
            "mmap_lock_writers": s.mmap_lock_writers, "minor_faults": s.minor_faults,
            "arena_writer_locks": s.contention.map(|c| c.writer),
            "arena_writer_waits": s.contention.map(|c| c.waits),
            "process_locks": s.contention.map(|c| c.process_locks),
        })
    });
    json!({
        "workload": c.workload, "threads": c.threads, "allocator": c.allocator,
        "scale": {"iterations": c.scale.iterations, "size": c.scale.size, "repeat": c.scale.repeat},
        "runs": c.runs.iter().map(RunRecord::to_json).collect::<Vec<_>>(),
        "failures": c.failures,
        "strace": c.strace.as_ref().map(|s| counts_to_json(s)),
        "summary": summary,
    })
}

pub fn from_json(v: &Value) -> Result<Results, String> {
    let format = v.get("format").and_then(Value::as_u64);
    if format != Some(FORMAT_VERSION) {
        return Err(format!(
            "unsupported results format {format:?} (expected {FORMAT_VERSION})"
        ));
    }
    let m = v.get("meta").ok_or("missing meta")?;
    let text = |key: &str| {
        m.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let number = |key: &str| m.get(key).and_then(Value::as_u64).unwrap_or_default();
    let strings = |key: &str| -> Vec<String> {
        m.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let meta = Meta {
        command: text("command"),
        date: text("date"),
        machine: text("machine"),
        nproc: number("nproc") as usize,
        mode: text("mode"),
        reps: number("reps") as usize,
        seed: number("seed"),
        threads: m
            .get("threads")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|t| t as usize)
                    .collect()
            })
            .unwrap_or_default(),
        allocators: strings("allocators"),
        workloads: strings("workloads"),
    };
    let cells = v
        .get("cells")
        .and_then(Value::as_array)
        .ok_or("missing cells")?;
    let cells = cells
        .iter()
        .map(cell_from_json)
        .collect::<Option<Vec<_>>>()
        .ok_or("malformed cell")?;
    Ok(Results { meta, cells })
}

fn cell_from_json(v: &Value) -> Option<Cell> {
    let scale = v.get("scale")?;
    Some(Cell {
        workload: v.get("workload")?.as_str()?.to_owned(),
        threads: v.get("threads")?.as_u64()? as usize,
        allocator: v.get("allocator")?.as_str()?.to_owned(),
        scale: Scale {
            iterations: scale.get("iterations")?.as_u64()?,
            size: scale.get("size")?.as_u64()? as usize,
            repeat: scale.get("repeat")?.as_u64()?,
        },
        runs: v
            .get("runs")?
            .as_array()?
            .iter()
            .map(RunRecord::from_json)
            .collect::<Option<_>>()?,
        failures: v
            .get("failures")?
            .as_array()?
            .iter()
            .map(|f| f.as_str().map(str::to_owned))
            .collect::<Option<_>>()?,
        strace: v.get("strace").and_then(counts_from_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let results = Results {
            meta: Meta {
                command: "cargo run".into(),
                date: "2026-01-02".into(),
                machine: "cpu".into(),
                nproc: 2,
                mode: "quick".into(),
                reps: 3,
                seed: 7,
                threads: vec![2, 8],
                allocators: vec!["jemalloc".into()],
                workloads: vec!["larson".into()],
            },
            cells: vec![Cell {
                workload: "larson".into(),
                threads: 2,
                allocator: "jemalloc".into(),
                scale: Scale {
                    iterations: 1,
                    size: 2,
                    repeat: 3,
                },
                runs: vec![RunRecord {
                    allocator: "jemalloc".into(),
                    wall_ns: 5,
                    ops: 1,
                    ..Default::default()
                }],
                failures: vec!["boom".into()],
                strace: Some(vec![("mmap".into(), 3)]),
            }],
        };
        assert_eq!(from_json(&to_json(&results)).unwrap(), results);
    }
}
