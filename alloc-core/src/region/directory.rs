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

use super::RegionTable;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Directory ids are one byte (`space`'s per-slot arena byte), 0 meaning none: 255
/// tables in all. The process's arenas take at most `arenas::MAX_ARENAS` of them; the
/// rest serve the tables tests and benchmarks build for themselves.
const MAX_TABLES: usize = u8::MAX as usize;

static TABLES: [AtomicPtr<RegionTable>; MAX_TABLES] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_TABLES];

/// The next id to hand out (ids start at 1).
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// Address space reserved by all tables together (bounds placement with growth room:
/// `writer::ROOMY_RESERVE_LIMIT` is a property of the address space, not of one arena).
static RESERVED: AtomicUsize = AtomicUsize::new(0);

/// Gives `table` a directory id and publishes it; `None` when all ids are taken (the
/// table then cannot reserve address space: its placements fail as out of memory).
pub(super) fn register(table: &'static RegionTable) -> Option<u8> {
    // Relaxed: the counter only makes ids unique; the entry is published below.
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if id > MAX_TABLES {
        return None;
    }
    // Release pairs with the Acquire in `table_of`: whoever finds the id finds the table
    // (a static or leaked table, initialised before its first use).
    TABLES[id - 1].store(
        table as *const RegionTable as *mut RegionTable,
        Ordering::Release,
    );
    Some(id as u8)
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
