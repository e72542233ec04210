//! Grace-period garbage of the region table stays bounded during a burst of updates.
//!
//! Every table update copies tree nodes and may detach descriptors; the old ones are
//! freed one grace period later through the epoch collector. crossbeam collects on its
//! own too rarely for a burst of placements, and a 32K-region table once left 78 MB of
//! metadata waiting (5 MB live), spread over pages the readers then missed in the TLB.
//! Each update now hands its unlinked blocks to the collector as one batch
//! (`epoch::seal`), and writers free expired batches (`epoch::reclaim`).
//!
//! Own binary, one test, a private table and the system allocator: the metadata figures
//! are process-wide, and nothing else here makes any.

use rangealloc_core::meta;
use rangealloc_core::os::PAGE_SIZE;
use rangealloc_core::region::{RegionKind, RegionTable};

static TABLE: RegionTable = RegionTable::new();

#[test]
fn a_burst_of_placements_leaves_little_metadata_waiting() {
    const OBJECTS: usize = 16 * 1024;
    let mut gaps = Vec::with_capacity(OBJECTS);
    for _ in 0..OBJECTS {
        TABLE
            .allocate(PAGE_SIZE, PAGE_SIZE, RegionKind::Large)
            .expect("address space");
        let gap = TABLE.allocate(8 * PAGE_SIZE, PAGE_SIZE, RegionKind::Large);
        gaps.push(gap.expect("address space").start);
    }
    for g in gaps {
        TABLE.retire(g).expect("a live gap object");
    }
    TABLE.collect_retired();
    let regions = 2 * OBJECTS + 1;
    let m = meta::stats();
    // Live metadata is a descriptor (a 128-byte block) per region plus the tree (under
    // 2 KiB per 15 regions); 4x that is a generous bound on what may still wait.
    let live_bound = regions * (128 + 2048 / 15);
    assert!(
        m.in_use < 4 * live_bound,
        "{} KiB of metadata in use for {regions} regions (bound {} KiB)",
        m.in_use >> 10,
        (4 * live_bound) >> 10
    );
    assert!(m.carved < 4 * live_bound, "{} KiB carved", m.carved >> 10);
}
