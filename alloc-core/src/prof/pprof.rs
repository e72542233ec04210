//! The profile writer: stacks and the process's executable mappings encoded as pprof's
//! `profile.proto` (github.com/google/pprof, proto/profile.proto), which `dump` then
//! compresses (`gzip`). Owns the protobuf encoder; calls `libc::dl_iterate_phdr` for the
//! mappings.
//! Runs outside every allocator lock and allocates normally (`Vec`).
//!
//! Locations carry addresses only; `go tool pprof` symbolizes them against the binaries
//! named by the mappings (path, file offset, GNU build id), as it does for jemalloc and
//! Go heap profiles. A return address is stored minus one so that it falls inside the
//! call instruction (and so inside the caller's inlined frames), pprof's convention.

use super::table::StackSample;
use std::collections::HashMap;

/// Sample types, in the order of each sample's values (jemalloc's and Go's names).
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];
/// `inuse_space`, what `go tool pprof` shows by default (as for Go heap profiles).
const DEFAULT_SAMPLE_TYPE: usize = 3;

/// One executable segment of a loaded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub limit: usize,
    pub file_offset: usize,
    pub path: String,
    pub build_id: String,
}

/// Everything a profile holds besides the stacks.
pub struct Header {
    pub period: u64,
    pub time_nanos: i64,
    /// Samples the tables had no room for (`table`); written as a comment when nonzero.
    pub dropped: u64,
}

// ---- protobuf ------------------------------------------------------------------------

const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn uint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        key(out, field, WIRE_VARINT);
        varint(out, v);
    }
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, WIRE_LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn packed_field(out: &mut Vec<u8>, field: u64, values: impl Iterator<Item = u64>) {
    let mut body = Vec::new();
    for v in values {
        varint(&mut body, v);
    }
    bytes_field(out, field, &body);
}

/// pprof's string table: index 0 is "".
struct Strings {
    index: HashMap<String, u64>,
    table: Vec<String>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings {
            index: HashMap::new(),
            table: Vec::new(),
        };
        s.id("");
        s
    }

    fn id(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as u64;
        self.index.insert(s.to_owned(), i);
        self.table.push(s.to_owned());
        i
    }
}

fn value_type(strings: &mut Strings, ty: &str, unit: &str) -> Vec<u8> {
    let mut m = Vec::new();
    uint_field(&mut m, 1, strings.id(ty));
    uint_field(&mut m, 2, strings.id(unit));
    m
}

/// Encodes `stacks` as an uncompressed `profile.proto` message.
pub fn encode(stacks: &[StackSample], mappings: &[Mapping], header: &Header) -> Vec<u8> {
    let mut out = Vec::new();
    let mut strings = Strings::new();
    for (ty, unit) in SAMPLE_TYPES {
        let m = value_type(&mut strings, ty, unit);
        bytes_field(&mut out, 1, &m);
    }
    // Locations: one per distinct address, ids from 1.
    let mut location_ids: HashMap<usize, u64> = HashMap::new();
    let mut locations: Vec<usize> = Vec::new();
    for s in stacks {
        if s.counts.alloc_objects < 0.5 && s.counts.inuse_objects < 0.5 {
            continue;
        }
        let mut ids = Vec::with_capacity(s.depth);
        for &ip in &s.frames[..s.depth] {
            // Every frame is a return address (the walk starts inside the allocator).
            let addr = ip - 1;
            let next = locations.len() as u64 + 1;
            let id = *location_ids.entry(addr).or_insert_with(|| {
                locations.push(addr);
                next
            });
            ids.push(id);
        }
        let c = s.counts;
        let values = [
            c.alloc_objects,
            c.alloc_bytes,
            c.inuse_objects.max(0.0),
            c.inuse_bytes.max(0.0),
        ];
        let mut m = Vec::new();
        packed_field(&mut m, 1, ids.into_iter());
        packed_field(&mut m, 2, values.iter().map(|&v| v.round() as i64 as u64));
        bytes_field(&mut out, 2, &m);
    }
    for (i, map) in mappings.iter().enumerate() {
        let mut m = Vec::new();
        uint_field(&mut m, 1, i as u64 + 1);
        uint_field(&mut m, 2, map.start as u64);
        uint_field(&mut m, 3, map.limit as u64);
        uint_field(&mut m, 4, map.file_offset as u64);
        uint_field(&mut m, 5, strings.id(&map.path));
        uint_field(&mut m, 6, strings.id(&map.build_id));
        bytes_field(&mut out, 3, &m);
    }
    for (i, &addr) in locations.iter().enumerate() {
        let mut m = Vec::new();
        uint_field(&mut m, 1, i as u64 + 1);
        if let Some(j) = mappings
            .iter()
            .position(|map| map.start <= addr && addr < map.limit)
        {
            uint_field(&mut m, 2, j as u64 + 1);
        }
        uint_field(&mut m, 3, addr as u64);
        bytes_field(&mut out, 4, &m);
    }
    let period_type = value_type(&mut strings, "space", "bytes");
    let default_type = strings.id(SAMPLE_TYPES[DEFAULT_SAMPLE_TYPE].0);
    // `go tool pprof -comments` prints these.
    let comment = (header.dropped > 0).then(|| {
        strings.id(&format!(
            "rangealloc: {} samples dropped (profiler tables full): totals are low by about that many samples",
            header.dropped
        ))
    });
    for s in &strings.table {
        bytes_field(&mut out, 6, s.as_bytes());
    }
    uint_field(&mut out, 9, header.time_nanos as u64);
    bytes_field(&mut out, 11, &period_type);
    uint_field(&mut out, 12, header.period);
    if let Some(id) = comment {
        uint_field(&mut out, 13, id);
    }
    uint_field(&mut out, 14, default_type);
    out
}

// ---- mappings ------------------------------------------------------------------------

/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;

/// The executable segments of every loaded object, with their files and build ids.
pub fn mappings() -> Vec<Mapping> {
    let mut found: Vec<Mapping> = Vec::with_capacity(64);
    // SAFETY: the callback matches dl_iterate_phdr's signature and `found` outlives it.
    unsafe { libc::dl_iterate_phdr(Some(on_object), &mut found as *mut Vec<Mapping> as _) };
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    for m in &mut found {
        if m.path.is_empty() {
            m.path = exe.clone();
        }
    }
    found.retain(|m| !m.path.is_empty() && !m.path.starts_with("linux-vdso"));
    found
}

unsafe extern "C" fn on_object(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: glibc passes a valid info for the duration of the call, and `data` is the
    // vector `mappings` passed.
    let (info, found) = unsafe { (&*info, &mut *(data as *mut Vec<Mapping>)) };
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated path owned by the loader.
        unsafe { core::ffi::CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
    let phdrs = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let mut build_id = String::new();
    for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_NOTE) {
        // SAFETY: a loaded PT_NOTE segment is mapped readable at bias + vaddr.
        let notes = unsafe {
            core::slice::from_raw_parts(
                (info.dlpi_addr as usize + ph.p_vaddr as usize) as *const u8,
                ph.p_memsz as usize,
            )
        };
        if let Some(id) = gnu_build_id(notes) {
            build_id = id;
        }
    }
    for ph in phdrs
        .iter()
        .filter(|ph| ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0)
    {
        let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
        // The segment's exact bounds and file offset, not the page-rounded ones of
        // /proc/self/maps: when a text segment's file offset and address differ within
        // the page (Rust test binaries linked by GNU ld), Debian's `go tool pprof` 1.19
        // symbolizes page-rounded mappings at wrong addresses (seen: 0xce0 bytes off)
        // and exact ones right (tests/tests/heap_profile.rs checks it).
        found.push(Mapping {
            start,
            limit: start + ph.p_memsz as usize,
            file_offset: ph.p_offset as usize,
            path: name.clone(),
            build_id: build_id.clone(),
        });
    }
    0
}

/// The GNU build id in an ELF notes area, as lowercase hex.
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let align4 = |n: usize| n.next_multiple_of(4);
    while notes.len() >= 12 {
        let (namesz, descsz, ty) = (
            word(&notes[0..]) as usize,
            word(&notes[4..]) as usize,
            word(&notes[8..]),
        );
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        if desc_end > notes.len() {
            return None;
        }
        if ty == NT_GNU_BUILD_ID && notes[12..12 + namesz] == *b"GNU\0" {
            let desc = &notes[name_end..name_end + descsz];
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = &notes[desc_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prof::table::Counts;

    #[test]
    fn own_mapping_has_a_path_and_covers_this_code() {
        let here = own_mapping_has_a_path_and_covers_this_code as *const () as usize;
        let maps = mappings();
        let m = maps
            .iter()
            .find(|m| m.start <= here && here < m.limit)
            .expect("a mapping covers the test's code");
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(m.path, exe.to_string_lossy());
        // rustc links with --build-id on Linux.
        assert!(m.build_id.len() >= 16, "build id {:?}", m.build_id);
    }

    #[test]
    fn encodes_sample_values_and_locations() {
        let mut frames = [0; crate::prof::stack::MAX_FRAMES];
        frames[0] = 0x1001;
        frames[1] = 0x2002;
        let s = StackSample {
            frames,
            depth: 2,
            counts: Counts {
                alloc_objects: 3.0,
                alloc_bytes: 300.0,
                inuse_objects: 1.0,
                inuse_bytes: 100.0,
            },
        };
        let p = encode(
            &[s],
            &[],
            &Header {
                period: 512,
                time_nanos: 1,
                dropped: 0,
            },
        );
        // The sample message: field 2, holding packed ids 1, 2 and values 3,300,1,100.
        let sample = [
            0x12, 0x0b, 0x0a, 0x02, 1, 2, 0x12, 0x05, 3, 0xac, 0x02, 1, 100,
        ];
        assert!(p.windows(sample.len()).any(|w| w == sample));
        // Locations store the return address minus one.
        let loc = [0x22, 0x05, 0x08, 1, 0x18, 0x80, 0x20];
        assert!(p.windows(loc.len()).any(|w| w == loc));
        // No comment (field 13: key 0x68) without dropped samples; with them, a comment
        // naming the count, referenced from field 13.
        let comment = b"rangealloc: 7 samples dropped";
        assert!(!p.windows(comment.len()).any(|w| w == comment));
        let header = Header {
            period: 512,
            time_nanos: 1,
            dropped: 7,
        };
        let q = encode(&[s], &[], &header);
        assert!(q.windows(comment.len()).any(|w| w == comment));
        assert!(q.len() > p.len() + comment.len());
    }
}
