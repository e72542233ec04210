//! The arena directory: from an address to the arena (`RegionTable`) whose reservation
//! holds it, without a lock. It owns the registry of arenas (a directory id per table,
//! given at its first reservation) and the process-wide count of reserved bytes; it
//! calls `space` (whose per-slot arena byte holds the id).
//!
//! A lookup is two loads: the slot's arena id (`space::arena_id_of`), then the registry
//! entry of that id. Both are written once, before the arena's first region can be
//! found, and never change (a reservation is never given back, an id never reused), so
//! an address's arena cannot change under a reader: what a reader finds is the table
//! whose tree holds every region of that reservation, for the life of the process.
//!
//! Model builds (`cfg(loom)`) compile it unchanged: the two-arena loom model
//! (`loom_table`) finds its arenas through this code and `space`'s arena byte.

use super::RegionTable;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Directory ids are one byte (`space`'s per-slot arena byte), 0 meaning none: 255
/// tables in all. The process's arenas own ids 1..=`FIXED_IDS` (`register_fixed`), so no
/// other table can take them; the rest serve the tables tests and benchmarks build for
/// themselves (`register`).
const MAX_TABLES: usize = u8::MAX as usize;

/// Ids kept for the process's arenas (`ARENAS` arena `i` is id `i + 1`).
pub(super) const FIXED_IDS: usize = crate::options::MAX_ARENAS;
const _: () = assert!(FIXED_IDS < MAX_TABLES, "ids left for other tables");
/// Every fixed id has a metadata pool (`region::blocks`).
#[cfg(not(loom))]
const _: () = assert!(FIXED_IDS <= crate::meta::POOL_OWNERS);

static TABLES: [AtomicPtr<RegionTable>; MAX_TABLES] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_TABLES];

/// The next id to hand out (past the fixed ones).
static NEXT_ID: AtomicUsize = AtomicUsize::new(FIXED_IDS + 1);

/// Address space reserved by all tables together (bounds placement with growth room:
/// `writer::ROOMY_RESERVE_LIMIT` is a property of the address space, not of one arena).
static RESERVED: AtomicUsize = AtomicUsize::new(0);

/// Gives `table` a directory id and publishes it; `None` when all ids are taken (the
/// table then cannot reserve address space: its placements fail as out of memory).
/// A table registers once (`RegionTable::register_once`, under its writer mutex).
pub(super) fn register(table: &'static RegionTable) -> Option<u8> {
    // Relaxed: the counter only makes ids unique; the entry is published below. Never
    // past the last id, so a table that finds none can ask again without wrapping.
    let id = NEXT_ID
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| {
            (id <= MAX_TABLES).then_some(id + 1)
        })
        .ok()?;
    publish(table, id);
    Some(id as u8)
}

/// Publishes the process arena `table` under its fixed id (1..=`FIXED_IDS`).
pub(super) fn register_fixed(table: &'static RegionTable, id: u8) {
    debug_assert!((1..=FIXED_IDS).contains(&(id as usize)));
    publish(table, id as usize);
}

fn publish(table: &'static RegionTable, id: usize) {
    // Release pairs with the Acquire in `table_of`: whoever finds the id finds the table
    // (a static or leaked table, initialised before its first use).
    TABLES[id - 1].store(
        table as *const RegionTable as *mut RegionTable,
        Ordering::Release,
    );
}

/// The arena whose reservation holds `addr`, or `None` if no arena's does.
#[inline]
pub fn table_of(addr: usize) -> Option<&'static RegionTable> {
    let id = crate::space::arena_id_of(addr) as usize;
    if id == 0 {
        return None;
    }
    // Acquire pairs with the Release in `register`.
    let table = TABLES[id - 1].load(Ordering::Acquire);
    // SAFETY: registered tables are `'static` (`register` takes `&'static`) and an entry,
    // once published, never changes; an id in the slot map was registered before it was
    // written there (`Writer::add_arena`).
    (!table.is_null()).then(|| unsafe { &*table })
}

/// Records `bytes` more reserved address space.
pub(super) fn add_reserved(bytes: usize) {
    // Relaxed: a bound on placement, read as a statistic.
    RESERVED.fetch_add(bytes, Ordering::Relaxed);
}

/// Address space reserved by all tables together.
pub fn reserved_total() -> usize {
    RESERVED.load(Ordering::Relaxed)
}

/// How many ids point at `table` (tests: a table registers once).
#[cfg(test)]
pub(super) fn ids_of(table: &RegionTable) -> usize {
    TABLES
        .iter()
        .filter(|e| core::ptr::eq(e.load(Ordering::Acquire), table))
        .count()
}

/// The (first) id pointing at `table` (tests).
#[cfg(test)]
pub(super) fn id_of(table: &RegionTable) -> Option<usize> {
    TABLES
        .iter()
        .position(|e| core::ptr::eq(e.load(Ordering::Acquire), table))
        .map(|i| i + 1)
}
