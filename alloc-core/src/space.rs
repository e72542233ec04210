//! The address-space map: which 4 MiB slots of the address space belong to rangealloc
//! and what each holds. It owns two static bytes per slot (the kind and the arena, below) and calls nothing.
//!
//! `free(p)` reads one byte here before it follows any pointer: a small-object segment
//! (its header sits at the slot base), a slot whose objects the region table knows, our
//! metadata arena, or memory that is not ours at all (a foreign pointer, reported and
//! never followed). Beside the kind, a second byte per slot names the arena (the
//! `RegionTable`, through `region::directory`) whose reservation holds the slot: written
//! once when the reservation is made, before the slot's kind says `Table`, and never
//! changed while the reservation exists (reservations are never given back). A parallel
//! array rather than bits of the kind byte: the kind byte changes (`Table` <->
//! `Segment`) while the arena never does, and the small-object free path, which reads
//! only the kind, keeps its one compare with no mask. The map covers the 47-bit user address space, which is where the
//! kernel places mappings that were not asked for above it; 32 MiB of zero-initialised
//! static memory of which only the pages that describe our arenas are ever touched.

use core::sync::atomic::{AtomicU8, Ordering};

/// Slot size: the small-object segment size, so a segment is exactly one slot.
pub const SLOT_SHIFT: u32 = 22;
pub const SLOT_SIZE: usize = 1 << SLOT_SHIFT;
const ADDRESS_BITS: u32 = 47;
const SLOTS: usize = 1 << (ADDRESS_BITS - SLOT_SHIFT);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotKind {
    /// Not ours: never followed.
    Foreign = 0,
    /// A small-object segment whose header sits at the slot base.
    Segment = 1,
    /// Arena memory whose objects the region table describes.
    Table = 2,
    /// The internal metadata arena.
    Meta = 3,
}

static SLOT_KIND: [AtomicU8; SLOTS] = [const { AtomicU8::new(0) }; SLOTS];

/// Set in a `Table` slot's kind byte when its reservation is huge-page space
/// (`region::Space::Huge`): which space an object lives in, read without the arena's
/// writer mutex (`set_table`, `is_huge`). Never set with any other kind, so the
/// segment test of `segment_slot`, a compare of the whole byte, is unaffected.
const HUGE_BIT: u8 = 0x80;

/// Per slot, the directory id of the arena whose reservation holds it (0: none). Another
/// 32 MiB of zero-initialised static memory, touched only where arenas lie.
static SLOT_ARENA: [AtomicU8; SLOTS] = [const { AtomicU8::new(0) }; SLOTS];

/// The directory id of the arena whose reservation holds `addr`, 0 when none does.
#[inline]
pub fn arena_id_of(addr: usize) -> u8 {
    let index = addr >> SLOT_SHIFT;
    if index >= SLOTS {
        return 0;
    }
    // Acquire pairs with the Release in `set_arena`. A caller that holds an address of
    // an object got it from the allocation that placed it, which happens after the
    // arena's reservation was recorded, so it never reads a stale 0 for its own object;
    // Acquire covers the callers that probe addresses they did not get from us.
    SLOT_ARENA[index].load(Ordering::Acquire)
}

/// Records that the reservation `[addr, addr + len)` belongs to the arena `id`. Called
/// once per reservation, before any of its slots is marked `Table`.
pub fn set_arena(addr: usize, len: usize, id: u8) {
    let first = addr >> SLOT_SHIFT;
    let last = (addr + len - 1) >> SLOT_SHIFT;
    assert!(last < SLOTS, "address above the 47-bit user space");
    for slot in &SLOT_ARENA[first..=last] {
        slot.store(id, Ordering::Release);
    }
}

/// The kind of the slot holding `addr`.
#[inline(always)]
pub fn kind_of(addr: usize) -> SlotKind {
    let index = addr >> SLOT_SHIFT;
    if index >= SLOTS {
        return SlotKind::Foreign;
    }
    // Acquire pairs with the Release in `set_kind`: whoever sees `Segment` also sees the
    // segment header written before the slot was published.
    match SLOT_KIND[index].load(Ordering::Acquire) & !HUGE_BIT {
        1 => SlotKind::Segment,
        2 => SlotKind::Table,
        3 => SlotKind::Meta,
        _ => SlotKind::Foreign,
    }
}

/// The base of the small-object segment in the slot that `addr`'s low 47 bits select,
/// if that slot holds one: `free`'s fast path, one byte read and no range compare. An
/// address at or above 2^47 (a foreign pointer whose low bits alias a segment's slot)
/// also gets that segment, so the caller must place `addr` inside one of the
/// segment's pages before following it, which such an address always fails (its offset
/// from the page start is at least 2^47 minus a slot); `kind_of` then reports it as foreign.
#[inline(always)]
pub fn segment_slot(addr: usize) -> Option<usize> {
    let index = (addr >> SLOT_SHIFT) & (SLOTS - 1);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads the byte `SLOT_KIND[index]` (`index < SLOTS` by the mask) as the
    // compare's memory operand, which is an atomic byte load on x86-64, and jumps. Not
    // `readonly`: the block stands for a compiler barrier, so no later load (of the
    // segment header) is moved above it, which with x86-64's ordered loads makes it the
    // Acquire load of `kind_of`. (The compiler never folds an atomic load into a
    // compare itself; this one is on every `free`.)
    unsafe {
        core::arch::asm!(
            "cmp byte ptr [{kinds} + {index}], {segment}",
            "jne {other}",
            kinds = in(reg) SLOT_KIND.as_ptr(),
            index = in(reg) index,
            segment = const SlotKind::Segment as u8,
            other = label { return None; },
            options(nostack),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    if SLOT_KIND[index].load(Ordering::Acquire) != SlotKind::Segment as u8 {
        // Acquire: as in `kind_of`.
        return None;
    }
    Some(index << SLOT_SHIFT)
}

/// Marks every slot overlapping `[addr, addr + len)` as `Table`, in huge-page space if
/// `huge`. Stored before any object of the reservation is handed out (under its arena's
/// writer mutex), so whoever holds an object sees its space.
pub fn set_table(addr: usize, len: usize, huge: bool) {
    store_kind(
        addr,
        len,
        SlotKind::Table as u8 | if huge { HUGE_BIT } else { 0 },
    );
}

/// True if `addr` lies in a reservation of huge-page space (`set_table`): no lock.
pub fn is_huge(addr: usize) -> bool {
    let index = addr >> SLOT_SHIFT;
    // Acquire pairs with `set_table`'s Release (a caller that holds an object in the
    // reservation is ordered after it anyway).
    index < SLOTS && SLOT_KIND[index].load(Ordering::Acquire) & HUGE_BIT != 0
}

/// Marks every slot overlapping `[addr, addr + len)` as `kind`.
pub fn set_kind(addr: usize, len: usize, kind: SlotKind) {
    store_kind(addr, len, kind as u8);
}

/// Stores the kind byte `byte` in every slot overlapping `[addr, addr + len)`.
fn store_kind(addr: usize, len: usize, byte: u8) {
    let first = addr >> SLOT_SHIFT;
    let last = (addr + len - 1) >> SLOT_SHIFT;
    assert!(last < SLOTS, "address above the 47-bit user space");
    for slot in &SLOT_KIND[first..=last] {
        // Release pairs with `kind_of`'s and `is_huge`'s Acquire.
        slot.store(byte, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_kernel_addresses_are_foreign() {
        assert_eq!(kind_of(0), SlotKind::Foreign);
        assert_eq!(kind_of(usize::MAX), SlotKind::Foreign);
        assert_eq!(kind_of(1 << 47), SlotKind::Foreign);
    }

    /// A huge-page table slot is still a `Table` to `kind_of`, never a segment to the
    /// free fast path, and tells its space without a lock; a base one and a slot made a
    /// segment and given back are base space.
    #[test]
    fn a_huge_table_slot_is_a_table_in_huge_space() {
        let base = 0x7000_0000_0000 - 16 * SLOT_SIZE;
        set_table(base, 2 * SLOT_SIZE, true);
        set_table(base + 2 * SLOT_SIZE, SLOT_SIZE, false);
        assert_eq!(kind_of(base + SLOT_SIZE), SlotKind::Table);
        assert!(is_huge(base) && is_huge(base + 2 * SLOT_SIZE - 1));
        assert_eq!(segment_slot(base), None);
        assert!(!is_huge(base + 2 * SLOT_SIZE));
        assert_eq!(kind_of(base + 2 * SLOT_SIZE), SlotKind::Table);
        set_kind(base + 2 * SLOT_SIZE, SLOT_SIZE, SlotKind::Segment);
        assert_eq!(
            segment_slot(base + 2 * SLOT_SIZE),
            Some(base + 2 * SLOT_SIZE)
        );
        assert!(!is_huge(base + 2 * SLOT_SIZE));
        assert!(!is_huge(usize::MAX) && !is_huge(0));
        set_kind(base, 3 * SLOT_SIZE, SlotKind::Foreign);
        assert!(!is_huge(base));
    }

    #[test]
    fn set_kind_covers_every_overlapped_slot() {
        let base = 0x7000_0000_0000 - 4 * SLOT_SIZE;
        set_kind(base + 10, SLOT_SIZE + 1, SlotKind::Meta);
        assert_eq!(kind_of(base), SlotKind::Meta);
        assert_eq!(kind_of(base + SLOT_SIZE + 10), SlotKind::Meta);
        assert_eq!(kind_of(base + 2 * SLOT_SIZE), SlotKind::Foreign);
        set_kind(base, 2 * SLOT_SIZE, SlotKind::Foreign);
    }
}
