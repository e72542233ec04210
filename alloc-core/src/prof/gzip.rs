//! The gzip container (RFC 1952) and a DEFLATE compressor (RFC 1951) for profile dumps:
//! LZ77 over a 32 KiB window with hash chains, coded with the fixed Huffman codes
//! (§3.2.6), in one block. Owns the CRC-32 and the compressor; calls nothing. Runs while
//! dumping, outside every allocator lock, and allocates normally.
//!
//! Why hand-written and fixed codes: the engine may depend on nothing but `libc` and
//! `crossbeam-epoch`, and a profile is mostly repeats (the same return addresses, field
//! keys and varint prefixes again and again), which LZ77 removes; dynamic Huffman codes
//! would save a further few percent for twice the code. Every gzip reader (`gzip -d`,
//! Python's `gzip`, Go's `compress/gzip` in `go tool pprof`) reads the stream.

/// The CRC-32 (IEEE, reflected) table gzip's trailer needs.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// `data` as a gzip member: header, one compressed deflate block, CRC-32 and length.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    // Magic, CM = deflate, no flags, no mtime, XFL 0, OS = Unix.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    out = deflate_into(out, data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1).
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

// ---- DEFLATE -------------------------------------------------------------------------

/// The window DEFLATE allows: matches reach at most 32 KiB back.
const WINDOW: usize = 1 << 15;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
/// Hash table size for 3-byte prefixes: 2^15 heads (128 KiB), as zlib's default.
const HASH_BITS: u32 = 15;
/// Candidates tried per position: zlib's level 6 tries up to 128 with lazy matching; 64
/// without it compresses profiles within a few percent of `gzip -6` (measured on a dump
/// of the heap_profile test: see BENCHMARKS.md) and keeps a dump's time small.
const MAX_CHAIN: usize = 64;
/// No position: heads and links store positions plus one.
const NONE: usize = 0;

/// Base lengths of length codes 257..=285 and their extra bits (RFC 1951 §3.2.5).
const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// Base distances of distance codes 0..=29 and their extra bits.
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
const END_OF_BLOCK: u16 = 256;

/// Bits in DEFLATE's order: fields least significant bit first, packed from each byte's
/// low bit.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    count: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        self.acc |= (value as u64) << self.count;
        self.count += count;
        while self.count >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.count -= 8;
        }
    }

    /// A Huffman code, which DEFLATE stores most significant bit first.
    fn put_code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// Writes literal/length symbol `sym` with the fixed code (§3.2.6).
fn put_symbol(bits: &mut Bits, sym: u16) {
    let sym = sym as u32;
    match sym {
        0..=143 => bits.put_code(0x30 + sym, 8),
        144..=255 => bits.put_code(0x190 + sym - 144, 9),
        256..=279 => bits.put_code(sym - 256, 7),
        _ => bits.put_code(0xC0 + sym - 280, 8),
    }
}

/// The table index whose base is the largest not above `value`.
fn bucket(bases: &[u16], value: usize) -> usize {
    bases.partition_point(|&b| b as usize <= value) - 1
}

fn put_match(bits: &mut Bits, len: usize, dist: usize) {
    let l = bucket(&LENGTH_BASE, len);
    put_symbol(bits, 257 + l as u16);
    bits.put(
        (len - LENGTH_BASE[l] as usize) as u32,
        LENGTH_EXTRA[l] as u32,
    );
    let d = bucket(&DIST_BASE, dist);
    bits.put_code(d as u32, 5);
    bits.put((dist - DIST_BASE[d] as usize) as u32, DIST_EXTRA[d] as u32);
}

fn hash(b: &[u8]) -> usize {
    let v = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// Appends `data` to `out` as one final fixed-Huffman deflate block.
pub fn deflate_into(out: Vec<u8>, data: &[u8]) -> Vec<u8> {
    let mut bits = Bits {
        out,
        acc: 0,
        count: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE = 01, fixed Huffman codes
    let mut head = vec![NONE; 1 << HASH_BITS];
    let mut prev = vec![NONE; WINDOW];
    let insert = |pos: usize, head: &mut [usize], prev: &mut [usize]| {
        if pos + MIN_MATCH <= data.len() {
            let h = hash(&data[pos..]);
            prev[pos % WINDOW] = head[h];
            head[h] = pos + 1;
        }
    };
    let mut i = 0;
    while i < data.len() {
        let (mut best_len, mut best_dist) = (0, 0);
        if i + MIN_MATCH <= data.len() {
            let max = MAX_MATCH.min(data.len() - i);
            let mut candidate = head[hash(&data[i..])];
            for _ in 0..MAX_CHAIN {
                if candidate == NONE {
                    break;
                }
                let at = candidate - 1;
                let dist = i - at;
                if dist > WINDOW {
                    break;
                }
                // Cheap rejection first: a longer match must agree at `best_len`.
                if data[at + best_len] == data[i + best_len] {
                    let len = data[at..at + max]
                        .iter()
                        .zip(&data[i..i + max])
                        .take_while(|(a, b)| a == b)
                        .count();
                    if len > best_len {
                        (best_len, best_dist) = (len, dist);
                        if len == max {
                            break;
                        }
                    }
                }
                let next = prev[at % WINDOW];
                // Links only go back; a slot reused by a newer position ends the chain.
                if next >= candidate {
                    break;
                }
                candidate = next;
            }
        }
        if best_len >= MIN_MATCH {
            put_match(&mut bits, best_len, best_dist);
            for pos in i..i + best_len {
                insert(pos, &mut head, &mut prev);
            }
            i += best_len;
        } else {
            put_symbol(&mut bits, data[i] as u16);
            insert(i, &mut head, &mut prev);
            i += 1;
        }
    }
    put_symbol(&mut bits, END_OF_BLOCK);
    bits.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decompresses with Python's `gzip` (the standard's reference reader here); `None`
    /// when python3 is missing.
    fn python_gunzip(gz: &[u8]) -> Option<Vec<u8>> {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take().unwrap();
        let input = gz.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "python's gzip rejects the stream");
        Some(out.stdout)
    }

    #[test]
    fn crc_matches_the_standard() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// Random bytes (nothing to find), repetitive text, long runs (overlapping matches
    /// at distance 1), repeats further back than the window, every length and distance
    /// bucket, and the empty input: each one round-trips through Python's gzip.
    #[test]
    fn round_trips_through_a_standard_reader() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text: Vec<u8> = b"alloc_space inuse_space 0x7f3204615f9e prof_site_a "
            .iter()
            .cycle()
            .take(300_000)
            .copied()
            .collect();
        let runs: Vec<u8> = (0..200_000).map(|i| (i / 1000) as u8).collect();
        // A 40 KiB random block repeated: its repeat is out of the window's reach.
        let far: Vec<u8> = random[..40_000].repeat(3);
        // Matches of every length 3..=258 at growing distances.
        let mut buckets = Vec::new();
        for len in 3..=MAX_MATCH {
            let start = random.len() - 30_000 + len * 100;
            buckets.extend_from_slice(&random[start..start + len]);
            buckets.extend_from_slice(&random[len..len * 2]);
            buckets.extend_from_slice(&random[start..start + len]);
        }
        let cases: [(&str, &[u8]); 6] = [
            ("empty", &[]),
            ("random", &random),
            ("text", &text),
            ("runs", &runs),
            ("far", &far),
            ("buckets", &buckets),
        ];
        for (name, data) in cases {
            let gz = gzip(data);
            let Some(back) = python_gunzip(&gz) else {
                eprintln!("SKIP gzip round trip: python3 not found");
                return;
            };
            assert!(back == data, "{name}: python's gzip reads back other bytes");
            // Random bytes cost at most 9 bits each (fixed codes); repeats far less.
            match name {
                "random" => assert!(gz.len() < data.len() * 9 / 8 + 32, "{name}"),
                "text" | "runs" => assert!(gz.len() * 50 < data.len(), "{name}: {}", gz.len()),
                _ => {}
            }
        }
    }
}
