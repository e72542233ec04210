//! Size distributions shared by the workloads: bounded power laws, the shape that real
//! programs' request sizes follow (many small, few large), as used by glibc's
//! bench-malloc-thread (inverse square) and rpmalloc's rptest.

use crate::rng::Rng;

/// A bounded power law on `[min, max]`: density proportional to `size^-exponent`.
#[derive(Clone, Copy, Debug)]
pub struct PowerLaw {
    min_pow: f64,
    max_pow: f64,
    inverse: f64,
    min: usize,
    max: usize,
}

impl PowerLaw {
    /// `exponent` must not be 1 (that law is log-uniform; use [`log_uniform`]).
    pub fn new(min: usize, max: usize, exponent: f64) -> Self {
        assert!(min > 0 && min <= max && exponent != 1.0);
        let e = 1.0 - exponent;
        PowerLaw {
            min_pow: (min as f64).powf(e),
            max_pow: (max as f64).powf(e),
            inverse: 1.0 / e,
            min,
            max,
        }
    }

    /// Inverse-CDF sampling, the method glibc's bench-malloc-thread uses.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        let x = ((self.max_pow - self.min_pow) * u + self.min_pow).powf(self.inverse);
        (x as usize).clamp(self.min, self.max)
    }

    /// `count` sizes drawn up front, as the original benchmarks do, so that drawing does
    /// not run inside the timed allocation loop.
    pub fn table(&self, rng: &mut Rng, count: usize) -> Vec<usize> {
        (0..count).map(|_| self.sample(rng)).collect()
    }
}

/// Log-uniform on `[min, max]`: every power of two between them equally likely.
pub fn log_uniform(rng: &mut Rng, min: usize, max: usize) -> usize {
    let (lo, hi) = ((min as f64).ln(), (max as f64).ln());
    ((lo + (hi - lo) * rng.unit()).exp() as usize).clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_law_is_bounded_and_skewed_small() {
        let law = PowerLaw::new(16, 16 * 1024, 1.5);
        let mut rng = Rng::new(1);
        let sizes = law.table(&mut rng, 10_000);
        assert!(sizes.iter().all(|&s| (16..=16 * 1024).contains(&s)));
        let small = sizes.iter().filter(|&&s| s < 256).count();
        assert!(small > sizes.len() / 2, "most sizes should be small");
    }

    #[test]
    fn log_uniform_is_bounded() {
        let mut rng = Rng::new(2);
        for _ in 0..1000 {
            assert!((10..=1000).contains(&log_uniform(&mut rng, 10, 1000)));
        }
    }
}
