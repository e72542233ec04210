//! Whole-table checks shared by the region-table tests (stress and model): a walk of
//! every region, and the layout invariants it must satisfy between updates.

use rangealloc_core::os::PAGE_SIZE;
use rangealloc_core::region::table::ARENA_SIZE;
use rangealloc_core::region::{RegionKind, RegionState, RegionTable};
use std::collections::HashMap;

/// A region as the walk reports it: start, length, kind, state.
pub type Region = (usize, usize, RegionKind, RegionState);

/// Every region of `table`, in address order.
pub fn regions(table: &RegionTable) -> Vec<Region> {
    let mut all = Vec::new();
    table.for_each_region(|s, l, k, st| all.push((s, l, k, st)));
    all
}

/// Free regions' dirtiness (`Region::is_dirty`), by start address.
pub fn free_dirtiness(table: &RegionTable) -> HashMap<usize, bool> {
    let mut dirty = HashMap::new();
    table.for_each_free_region(|s, _, d| {
        dirty.insert(s, d);
    });
    dirty
}

/// The regions tile the reserved space: sorted, no overlap, contiguous runs that start
/// on an arena boundary and end on one, total length equal to the reservation. Free
/// regions are coalesced: two adjacent free regions of one arena differ in dirtiness
/// (dirty and clean space never merge, by design).
pub fn check_tiling(table: &RegionTable, all: &[Region]) {
    if all.is_empty() {
        assert_eq!(table.space().reserved, 0, "reserved space without regions");
        return;
    }
    let dirty = free_dirtiness(table);
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "walk not in address order"
    );
    let mut total = 0;
    let mut run_start = all[0].0;
    for (i, &(s, l, k, _)) in all.iter().enumerate() {
        assert!(
            l > 0 && s % PAGE_SIZE == 0 && l % PAGE_SIZE == 0,
            "bad region {s:#x}+{l:#x}"
        );
        total += l;
        if i > 0 {
            let (ps, pl, pk, _) = all[i - 1];
            assert!(ps + pl <= s, "regions overlap: {ps:#x}+{pl:#x} and {s:#x}");
            if ps + pl < s {
                assert_eq!(
                    (ps + pl) % ARENA_SIZE,
                    0,
                    "gap inside an arena at {:#x}",
                    ps + pl
                );
                assert_eq!(s % ARENA_SIZE, 0, "gap inside an arena before {s:#x}");
                run_start = s;
            } else if pk == RegionKind::Free
                && k == RegionKind::Free
                && ps / ARENA_SIZE == s / ARENA_SIZE
            {
                assert_ne!(
                    dirty[&ps], dirty[&s],
                    "uncoalesced free regions at {s:#x} (both dirty: {})",
                    dirty[&s]
                );
            }
        }
        assert_eq!(run_start % ARENA_SIZE, 0, "arena start {run_start:#x}");
    }
    assert_eq!(
        total,
        table.space().reserved,
        "regions do not add up to the reservation"
    );
}

/// `dirty_bytes` is the total length of the free regions labelled dirty.
pub fn check_dirty_accounting(table: &RegionTable) {
    let mut labelled = 0;
    table.for_each_free_region(|_, l, d| labelled += if d { l } else { 0 });
    assert_eq!(table.dirty_bytes(), labelled, "dirty byte accounting");
}
