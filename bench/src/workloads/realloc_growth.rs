//! realloc-growth: the growth pattern of Rust's own collections, `Vec::push` and
//! `String::push`, whose amortised doubling turns into a chain of `realloc`s.
//!
//! Each thread repeatedly builds a `Vec<u64>` of a log-uniform random length up to
//! `size` elements and a `String` of a quarter as many characters, keeps the last
//! `LIVE` of each alive (so a growing buffer usually has neighbours and cannot always
//! grow in place), shrinks one in `SHRINK_EVERY` with `shrink_to_fit`, and verifies
//! every element before dropping it.
//!
//! Not a re-implementation: no classic benchmark targets realloc growth; this stands in
//! for the many Rust programs whose allocation profile is dominated by it. `iterations`
//! is the number of buffers built over all threads; `ops` counts elements pushed.

use std::collections::VecDeque;

use super::{on_threads, share, Outcome, Params, Scale, Workload};
use crate::dist::log_uniform;
use crate::rng::{mix, Rng};

/// Shortest buffer built: below Vec's first capacity step, so the chain starts at the
/// smallest size class.
const MIN_LEN: usize = 4;
/// Finished buffers kept alive per thread before the oldest is dropped.
const LIVE: usize = 8;
/// One buffer in this many is shrunk with `shrink_to_fit` (a shrinking realloc).
const SHRINK_EVERY: u64 = 4;
/// One string byte per this many vector elements; the string stays smaller than the
/// vector (8 bytes an element) so the two climb through different size classes.
const STRING_CHARS_DIVISOR: usize = 4;
/// Letters the string is made of.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

pub const WORKLOAD: Workload = Workload {
    name: "realloc-growth",
    origin: "Vec/String push growth (ours: Rust collections' realloc chains)",
    unit: "elements pushed",
    quick: Scale {
        iterations: 6000,
        size: 64 * 1024,
        repeat: 1,
    },
    full: Scale {
        iterations: 30_000,
        size: 32 * 1024,
        repeat: 1,
    },
    run,
    quick_extra_threads: &[],
};

fn run(p: &Params) -> Outcome {
    on_threads(p.threads, |tid| {
        let mut rng = Rng::for_stream(p.seed, tid as u64);
        let mut live: VecDeque<(u64, Vec<u64>, String)> = VecDeque::with_capacity(LIVE + 1);
        let mut out = Outcome::default();
        for n in 0..share(p.scale.iterations, p.threads, tid) {
            let tag = ((tid as u64) << 40) | n;
            let len = log_uniform(&mut rng, MIN_LEN, p.scale.size.max(MIN_LEN));
            // One push at a time (not `extend`, which would reserve once up front).
            let mut pushed = Vec::new();
            for i in 0..len {
                pushed.push(element(tag, i));
            }
            let mut text = String::new();
            for i in 0..len / STRING_CHARS_DIVISOR {
                text.push(letter(tag, i));
            }
            if n % SHRINK_EVERY == 0 {
                pushed.truncate(len / 2);
                pushed.shrink_to_fit();
                text.truncate(text.len() / 2);
                text.shrink_to_fit();
            }
            out.ops += (len + len / STRING_CHARS_DIVISOR) as u64;
            live.push_back((tag, pushed, text));
            if live.len() > LIVE {
                let (tag, v, s) = live.pop_front().expect("nonempty");
                out.mismatches += verify(tag, &v, &s);
            }
        }
        out.mismatches += live
            .iter()
            .map(|(tag, v, s)| verify(*tag, v, s))
            .sum::<u64>();
        out
    })
}

fn element(tag: u64, i: usize) -> u64 {
    mix(tag ^ i as u64)
}

fn letter(tag: u64, i: usize) -> char {
    char::from(ALPHABET[(element(tag, i) % ALPHABET.len() as u64) as usize])
}

/// Counts elements and characters that differ from what was pushed.
fn verify(tag: u64, numbers: &[u64], text: &str) -> u64 {
    let bad_numbers = numbers
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x != element(tag, i))
        .count();
    let bad_chars = text
        .chars()
        .enumerate()
        .filter(|&(i, c)| c != letter(tag, i))
        .count();
    (bad_numbers + bad_chars) as u64
}
