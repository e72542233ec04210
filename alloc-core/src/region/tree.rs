//! PLACEHOLDER — being written by a helper (COW B+tree range map). See region/mod.rs.
