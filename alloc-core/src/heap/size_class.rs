//! Size classes for small objects. Owns the class table; calls nothing.
//!
//! 16-byte steps up to 128 bytes (every block keeps C's 16-byte `malloc` alignment, as
//! jemalloc's classes do), then eight classes per power of two up to `SMALL_MAX`, so a
//! request above 128 bytes wastes at most 12.5% of its class (below, at most 15 bytes).

/// The largest small object. Larger requests become regions of their own. Chosen so a
/// 512 KiB page still holds 16 of the largest class, and so the 64 KiB buffers of the
/// region workload are regions (they grow in place).
pub const SMALL_MAX: usize = 32 * 1024;
pub const MIN_BLOCK: usize = 16;
/// Classes at or below this size live in one-unit (64 KiB) pages, bigger ones in
/// eight-unit (512 KiB) pages: each page then holds at least 16 blocks.
pub const SMALL_PAGE_MAX_BLOCK: usize = 4096;

const LINEAR_CLASSES: usize = 8;
pub const LINEAR_STEP: usize = 16;
/// Sizes up to here have classes `ceil(size / LINEAR_STEP) - 1`.
pub const LINEAR_MAX: usize = LINEAR_CLASSES * LINEAR_STEP;
const PER_DOUBLING: usize = 8;
/// Doublings from 128 B to 32 KiB.
const DOUBLINGS: usize = 8;
pub const CLASSES: usize = LINEAR_CLASSES + PER_DOUBLING * DOUBLINGS;

const _: () = assert!(LINEAR_MAX << DOUBLINGS == SMALL_MAX);

/// The class serving `size` (at most `SMALL_MAX`) at 16-byte alignment.
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    if size <= LINEAR_MAX {
        return size.saturating_sub(1) / LINEAR_STEP;
    }
    let k = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize; // 2^k < size <= 2^(k+1)
    let step_shift = k - 3;
    LINEAR_CLASSES + (k - 7) * PER_DOUBLING + ((size - 1 - (1 << k)) >> step_shift)
}

/// The class serving `size` at 16-byte alignment, or `None` above `SMALL_MAX`: for a
/// caller whose size is not a constant, the linear range is tested first, so the most
/// common requests pass one comparison.
#[inline(always)]
pub fn small_class_of(size: usize) -> Option<usize> {
    if size <= LINEAR_MAX {
        return Some(size.saturating_sub(1) / LINEAR_STEP);
    }
    (size <= SMALL_MAX).then(|| class_of(size))
}

/// `class_of(size) + 1` for `1 <= size <= LINEAR_MAX`, and 0 for size 0: the index of
/// `size`'s page among the heap's current pages, which keep an always-empty entry
/// first (see `heap::CurrentPages`).
#[inline(always)]
pub fn linear_entry(size: usize) -> usize {
    debug_assert!(size <= LINEAR_MAX);
    size.div_ceil(LINEAR_STEP)
}

/// The block size of `class`.
pub const fn class_size(class: usize) -> usize {
    if class < LINEAR_CLASSES {
        return (class + 1) * LINEAR_STEP;
    }
    let k = 7 + (class - LINEAR_CLASSES) / PER_DOUBLING;
    let j = (class - LINEAR_CLASSES) % PER_DOUBLING;
    (1 << k) + (j + 1) * (1 << (k - 3))
}

/// The class serving `size` at `align` (a power of two up to the OS page size): the
/// smallest class at least `size` whose block size is a multiple of `align`, since
/// blocks sit at multiples of their size from a page-aligned start.
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    let size = size.max(align);
    if size > SMALL_MAX {
        return None;
    }
    let mut class = class_of(size);
    while !class_size(class).is_multiple_of(align) {
        class += 1;
        if class == CLASSES {
            return None;
        }
    }
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_sizes_with_bounded_waste() {
        assert_eq!(class_size(CLASSES - 1), SMALL_MAX);
        for size in 0..=SMALL_MAX {
            let c = class_of(size);
            let s = class_size(c);
            assert!(s >= size.max(1), "size {size} class {c} block {s}");
            assert!(
                c == 0 || class_size(c - 1) < size,
                "size {size} not in smallest class"
            );
            assert_eq!(s % 16, 0, "16-byte alignment for size {size}");
            assert_eq!(small_class_of(size), Some(c));
            if (1..=LINEAR_MAX).contains(&size) {
                assert_eq!(linear_entry(size), c + 1, "direct entry of size {size}");
            }
            if size > LINEAR_MAX {
                assert!((s - size) * 8 <= s, "waste above 12.5% for {size}");
            } else {
                assert!(s - size.max(1) < LINEAR_STEP);
            }
        }
    }

    #[test]
    fn aligned_classes_are_multiples() {
        for shift in 0..=12 {
            let align = 1 << shift;
            for size in [1, 17, 100, 1000, 5000, 20000] {
                if let Some(c) = class_for(size, align) {
                    assert_eq!(class_size(c) % align, 0);
                    assert!(class_size(c) >= size);
                }
            }
        }
        assert_eq!(class_for(SMALL_MAX + 1, 8), None);
        assert_eq!(small_class_of(SMALL_MAX + 1), None);
        assert_eq!(linear_entry(0), 0, "size 0 meets the always-empty entry");
        assert_eq!(class_size(class_for(1, 4096).unwrap()), 4096);
    }
}
