//! The region table (work in progress).
pub mod epoch;
pub mod tree;
