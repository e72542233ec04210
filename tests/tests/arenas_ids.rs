//! Review of 3162e99: directory ids (one byte, 255 in all) are shared by every
//! `RegionTable` of the process and spent by racing first placements; a home arena
//! that cannot get one fails every placement, though another arena has free space.
//! Its own binary (system allocator): it spends the whole id space.

use rangealloc_core::region::arenas::on_new_thread_at_home;
use rangealloc_core::region::{Arenas, Placement, RegionKind, RegionTable};

const PAGE: usize = 4096;

#[test]
fn a_home_arena_without_a_directory_id_places_elsewhere() {
    static SET: Arenas = Arenas::new(2);
    // Arena `home` of this thread gets an id and a reservation.
    let home = SET.home();
    SET.allocate(16 * PAGE, PAGE, RegionKind::Large)
        .expect("placed at home");
    // Other tables (benchmarks, tests, or ids lost to racing first placements) take the
    // rest of the id space; a placement that may not reserve registers without mapping.
    for _ in 0..300 {
        let t: &'static RegionTable = Box::leak(Box::new(RegionTable::new()));
        let _ = t.place(Placement::Dense, PAGE, PAGE, RegionKind::Large, true, false);
    }
    // A thread whose home is the other arena: its arena cannot register, and the
    // placement fails instead of using the ~1 GiB free in arena `home`.
    let placed = on_new_thread_at_home(&SET, 1 - home, || {
        SET.allocate(16 * PAGE, PAGE, RegionKind::Large).is_some()
    });
    assert!(placed, "placement failed with free space in another arena");
}
