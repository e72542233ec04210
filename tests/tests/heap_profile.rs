//! The heap profiler end to end: a program with three allocation sites that allocate
//! 60%, 30% and 10% of the bytes (small, medium and large objects; the 30% site's
//! objects freed) dumps a profile; this test decompresses it with `gzip`, decodes the
//! pprof message itself and checks each site's share of `alloc_space` and
//! `inuse_space` within ±5 points. Once as a Rust program (this binary, with
//! `#[global_allocator]`, as a child process with `RANGEALLOC_OPTIONS`), once as a C
//! program built with `-O2 -fomit-frame-pointer` under `LD_PRELOAD` (which also dumps
//! through `mallctl("prof.dump")`, at exit with `prof_dump`, and prints the leak report).
//! `go tool pprof -top` must find the three sites by name in both dumps; where `go` is
//! missing those checks say SKIP on stderr.

mod ffi_support;

use ffi_support::{compile, have, preloaded, run, Lang};
use rangealloc::RangeAlloc;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[global_allocator]
static A: RangeAlloc = RangeAlloc;

const LIMIT: Duration = Duration::from_secs(180);
/// A finer rate than the default so that 64 MiB give ~4000 samples: the 60% site's
/// share then has a standard error under one point, and ±5 points is 6+ errors wide.
const OPTIONS: &str = "prof=1,prof_sample=16384";
const TOLERANCE: f64 = 0.05;
const SITES: [&str; 3] = ["prof_site_a", "prof_site_b", "prof_site_c"];
/// Expected shares of (alloc_space, inuse_space) per site: B's 30% are freed, so A and C
/// hold 60/70 and 10/70 of what is live.
const EXPECTED: [(f64, f64); 3] = [(0.6, 0.6 / 0.7), (0.3, 0.0), (0.1, 0.1 / 0.7)];

// ---- the Rust program (the child) ------------------------------------------------------

const TOTAL: usize = 64 << 20;
const SIZE_A: usize = 1000;
const SIZE_B: usize = 3000;
const SIZE_C: usize = 100 << 10;

#[no_mangle]
#[inline(never)]
pub fn prof_site_a(slots: &mut Vec<Vec<u8>>) {
    let mut v = Vec::with_capacity(SIZE_A);
    v.push(1u8);
    slots.push(v);
}

#[no_mangle]
#[inline(never)]
pub fn prof_site_b(slots: &mut Vec<Vec<u8>>) {
    let mut v = Vec::with_capacity(SIZE_B);
    v.push(2u8);
    slots.push(v);
}

#[no_mangle]
#[inline(never)]
pub fn prof_site_c(slots: &mut Vec<Vec<u8>>) {
    let mut v = Vec::with_capacity(SIZE_C);
    v.push(3u8);
    slots.push(v);
}

const REALLOC_OBJECTS: usize = 200;
const REALLOC_FROM: usize = 1000;
const REALLOC_TO: usize = 50_000;

#[no_mangle]
#[inline(never)]
pub fn prof_site_grow(v: &mut Vec<u8>) {
    v.reserve_exact(REALLOC_TO - v.len());
    v.push(5);
}

/// Every allocation sampled (`prof_sample=1`): sampled blocks are reallocated (moved,
/// content kept) and freed; the profile then counts the growth at its call site and
/// nothing of it in use.
fn realloc_child(path: &str) {
    println!(
        "SITE prof_site_grow {:#x}",
        prof_site_grow as *const () as usize
    );
    let mut all: Vec<Vec<u8>> = Vec::with_capacity(REALLOC_OBJECTS);
    for i in 0..REALLOC_OBJECTS {
        let mut v = Vec::with_capacity(REALLOC_FROM);
        v.extend((0..REALLOC_FROM).map(|j| (i + j) as u8));
        all.push(v);
    }
    for v in &mut all {
        prof_site_grow(v);
    }
    for (i, v) in all.iter().enumerate() {
        assert!(v[..REALLOC_FROM]
            .iter()
            .enumerate()
            .all(|(j, &b)| b == (i + j) as u8));
        assert!(v.capacity() >= REALLOC_TO);
    }
    drop(all);
    rangealloc::profile::dump(path).expect("dump the profile");
    println!("DUMPED");
}

const BLOCKS: usize = 200_000;
/// Words per block: 48 bytes, a class whose refills hold 85 blocks (one 4 KiB extension),
/// so sample points at `BLOCKS_OPTIONS` rate (about four per list) cut lists anywhere.
const BLOCK_WORDS: usize = 6;
const BLOCKS_OPTIONS: &str = "prof=1,prof_sample=1024";

#[no_mangle]
#[inline(never)]
pub fn prof_site_block(id: usize) -> Box<[usize; BLOCK_WORDS]> {
    Box::new([id; BLOCK_WORDS])
}

/// Small blocks allocated with frequent sample points (one per KiB on average, so most
/// lists are cut, some several times): every block is handed out once (each keeps its
/// own id in every word while all are live), then all are freed; the dump is taken
/// while they are live and again after.
fn blocks_child(path: &str) {
    println!(
        "SITE prof_site_block {:#x}",
        prof_site_block as *const () as usize
    );
    let blocks: Vec<Box<[usize; BLOCK_WORDS]>> = (0..BLOCKS).map(prof_site_block).collect();
    for (id, b) in blocks.iter().enumerate() {
        assert!(
            b.iter().all(|&w| w == id),
            "block {id} was handed out twice"
        );
    }
    rangealloc::profile::dump(path).expect("dump the profile");
    drop(blocks);
    rangealloc::profile::dump(format!("{path}.after")).expect("dump again");
    println!("DUMPED");
}

const REMOTE_BLOCKS: usize = 20_000;
/// Every allocation sampled: every block of the pages involved is a sampled one.
const REMOTE_OPTIONS: &str = "prof=1,prof_sample=1";

/// Sampled small blocks are ordinary blocks of their pages: their usable size is their
/// class's, a `realloc` that still fits keeps them in place, and they may be freed by
/// another thread. Round one: every block is allocated here (each with its id), every
/// other one shrunk in place with `realloc`, then all are freed by another thread. Round
/// two reuses those pages here (every block handed out once) and frees locally. The dump
/// is taken at the end: the site must have nothing in use.
fn remote_child(path: &str) {
    use std::alloc::{dealloc, realloc, Layout};
    println!(
        "SITE prof_site_block {:#x}",
        prof_site_block as *const () as usize
    );
    let block_bytes = BLOCK_WORDS * std::mem::size_of::<usize>();
    let full = Layout::new::<[usize; BLOCK_WORDS]>();
    let shrunk = Layout::from_size_align(block_bytes - 8, full.align()).unwrap();
    let check = |p: *const usize, id: usize, words: usize| {
        // SAFETY: `p` is a live block of at least `words` words, written by us.
        let got = unsafe { std::slice::from_raw_parts(p, words) };
        assert!(
            got.iter().all(|&w| w == id),
            "block {id} was handed out twice"
        );
    };
    for round in 0..2 {
        let first = round * REMOTE_BLOCKS;
        let blocks: Vec<usize> = (first..first + REMOTE_BLOCKS)
            .map(|id| Box::into_raw(prof_site_block(id)) as usize)
            .collect();
        for (i, &b) in blocks.iter().enumerate() {
            check(b as *const usize, first + i, BLOCK_WORDS);
            // SAFETY: a live block of ours.
            let usable = unsafe { rangealloc::usable_size(b as *const u8) };
            assert!(
                (block_bytes..2 * block_bytes).contains(&usable),
                "a sampled {block_bytes}-byte block has a usable size of {usable}"
            );
        }
        let mut sizes = Vec::with_capacity(REMOTE_BLOCKS);
        for (i, &b) in blocks.iter().enumerate() {
            if i % 2 == 1 {
                // SAFETY: a live block allocated with `full`; the new size is non-zero.
                let q = unsafe { realloc(b as *mut u8, full, shrunk.size()) };
                assert_eq!(
                    q as usize, b,
                    "a shrinking realloc that fits moved block {i}"
                );
                check(q as *const usize, first + i, BLOCK_WORDS - 1);
                sizes.push(shrunk);
            } else {
                sizes.push(full);
            }
        }
        let free_all = move || {
            for (&b, &layout) in blocks.iter().zip(&sizes) {
                // SAFETY: live blocks of ours, with the layouts they have now.
                unsafe { dealloc(b as *mut u8, layout) };
            }
        };
        if round == 0 {
            std::thread::spawn(free_all).join().unwrap();
        } else {
            free_all();
        }
    }
    rangealloc::profile::dump(path).expect("dump the profile");
    println!("DUMPED");
}

/// Threads the forked child starts at once: enough to adopt every heap the child
/// inherits (the abandoned ones first, then the orphans, among them the sampling
/// thread's).
const FORK_ADOPTERS: usize = 12;
const FORK_BLOCKS: usize = 5000;

/// A thread of the parent holds sampled small blocks (every block of its pages is
/// sampled, so every page is marked) and is alive at `fork`: in the child its heap is an
/// orphan, rebuilt from its page descriptors by the first child thread that adopts it
/// (`heap::repair`). The marked pages must be taken for the live pages they are: were
/// their units given back, the adopters would carve new blocks over the sampled ones.
/// The child starts `FORK_ADOPTERS` threads that fill blocks of the same class, checks
/// that the sampled blocks kept their contents, frees them and exits 0.
fn fork_child(_path: &str) {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let blocks: Vec<usize> = (0..FORK_BLOCKS)
            .map(|id| Box::into_raw(prof_site_block(id)) as usize)
            .collect();
        tx.send(blocks).unwrap();
        // Alive, with its heap, until the parent has forked.
        done_rx.recv().unwrap();
    });
    let blocks = rx.recv().unwrap();
    // SAFETY: the child only allocates, frees, starts threads and calls `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(FORK_ADOPTERS));
        let adopters: Vec<_> = (0..FORK_ADOPTERS)
            .map(|t| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mine: Vec<Box<[usize; BLOCK_WORDS]>> = (0..FORK_BLOCKS)
                        .map(|_| Box::new([usize::MAX - t; BLOCK_WORDS]))
                        .collect();
                    // Every adopter holds its heap until all have one.
                    barrier.wait();
                    mine.iter().all(|b| b.iter().all(|&w| w == usize::MAX - t))
                })
            })
            .collect();
        let mut ok = adopters.into_iter().all(|a| a.join().unwrap_or(false));
        for (id, &b) in blocks.iter().enumerate() {
            // SAFETY: a live block of `BLOCK_WORDS` words, inherited from the parent.
            let words = unsafe { std::slice::from_raw_parts(b as *const usize, BLOCK_WORDS) };
            if words.iter().any(|&w| w != id) {
                ok = false;
                break;
            }
        }
        if ok {
            for &b in &blocks {
                // SAFETY: live blocks allocated as `Box<[usize; BLOCK_WORDS]>`.
                drop(unsafe { Box::from_raw(b as *mut [usize; BLOCK_WORDS]) });
            }
        }
        // SAFETY: `_exit` skips the harness's destructors: fine in a forked child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child found sampled blocks overwritten, or died (wait status {status:#x})"
    );
    for &b in &blocks {
        // SAFETY: as in the child.
        drop(unsafe { Box::from_raw(b as *mut [usize; BLOCK_WORDS]) });
    }
    println!("FORKED");
}

#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("RANGEALLOC_TEST_CHILD") else {
        return; // only meaningful when spawned by the tests below
    };
    let path = std::env::var("RANGEALLOC_TEST_PROFILE").expect("profile path");
    if mode == "realloc" {
        return realloc_child(&path);
    }
    if mode == "blocks" {
        return blocks_child(&path);
    }
    if mode == "remote" {
        return remote_child(&path);
    }
    if mode == "fork" {
        return fork_child(&path);
    }
    assert_eq!(mode, "sites");
    for (name, f) in SITES.iter().zip([
        prof_site_a as fn(&mut Vec<Vec<u8>>),
        prof_site_b,
        prof_site_c,
    ]) {
        println!("SITE {name} {:#x}", f as *const () as usize);
    }
    assert!(rangealloc::profile::enabled());
    let (na, nb, nc) = (
        TOTAL * 6 / 10 / SIZE_A,
        TOTAL * 3 / 10 / SIZE_B,
        TOTAL / 10 / SIZE_C,
    );
    let (mut a, mut b, mut c) = (
        Vec::with_capacity(na),
        Vec::with_capacity(nb),
        Vec::with_capacity(nc),
    );
    while a.len() < na || b.len() < nb || c.len() < nc {
        for _ in 0..20 {
            if a.len() < na {
                prof_site_a(&mut a);
            }
        }
        for _ in 0..3 {
            if b.len() < nb {
                prof_site_b(&mut b);
            }
        }
        if c.len() < nc {
            prof_site_c(&mut c);
        }
    }
    drop(b);
    rangealloc::profile::dump(&path).expect("dump the profile");
    // Sampling can be switched off and the dump still works; a missing directory
    // reports the OS error.
    assert!(rangealloc::profile::set_active(false));
    assert!(!rangealloc::profile::enabled());
    assert!(rangealloc::profile::dump("/nonexistent-dir/x.heap").is_err());
    println!("DUMPED");
    std::hint::black_box((a, c));
}

// ---- reading a profile -----------------------------------------------------------------

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[0];
        *b = &b[1..];
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long");
}

/// The fields of one protobuf message, in order.
fn fields(mut b: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut b)),
            1 => {
                let (v, rest) = b.split_at(8);
                b = rest;
                Field::Bytes(v)
            }
            2 => {
                let len = varint(&mut b) as usize;
                let (v, rest) = b.split_at(len);
                b = rest;
                Field::Bytes(v)
            }
            5 => {
                let (v, rest) = b.split_at(4);
                b = rest;
                Field::Bytes(v)
            }
            wire => panic!("wire type {wire}"),
        };
        out.push((key >> 3, field));
    }
    out
}

/// A repeated integer field, packed or not.
fn push_ints(out: &mut Vec<u64>, f: &Field) {
    match f {
        Field::Varint(v) => out.push(*v),
        Field::Bytes(mut b) => {
            while !b.is_empty() {
                out.push(varint(&mut b));
            }
        }
    }
}

struct Profile {
    types: Vec<String>,
    /// (location ids, values)
    samples: Vec<(Vec<u64>, Vec<i64>)>,
    /// location id -> address
    locations: HashMap<u64, u64>,
    /// (start, limit, path, build id)
    mappings: Vec<(u64, u64, String, String)>,
}

/// `gzip -dc` of a whole stream.
fn gunzip(gz: &[u8]) -> Vec<u8> {
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip stream");
    let mut gunzip = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    // Written from a thread: the output may outgrow the pipe before the input is in.
    let mut stdin = gunzip.stdin.take().unwrap();
    let input = gz.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input)
    });
    let out = gunzip.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "gzip -dc reads the profile");
    out.stdout
}

fn decode(gz: &[u8]) -> Profile {
    let raw = gunzip(gz);
    let mut strings = Vec::new();
    let mut type_ids = Vec::new();
    let mut samples = Vec::new();
    let mut locations = HashMap::new();
    let mut mapping_ids = Vec::new();
    for (no, f) in fields(&raw) {
        match (no, f) {
            (1, Field::Bytes(m)) => {
                let vt: HashMap<u64, u64> = fields(m)
                    .into_iter()
                    .filter_map(|(n, f)| match f {
                        Field::Varint(v) => Some((n, v)),
                        _ => None,
                    })
                    .collect();
                type_ids.push(vt.get(&1).copied().unwrap_or(0));
            }
            (2, Field::Bytes(m)) => {
                let (mut ids, mut values) = (Vec::new(), Vec::new());
                for (n, f) in fields(m) {
                    match n {
                        1 => push_ints(&mut ids, &f),
                        2 => push_ints(&mut values, &f),
                        _ => {}
                    }
                }
                samples.push((ids, values.into_iter().map(|v| v as i64).collect()));
            }
            (3, Field::Bytes(m)) => {
                let mut v = [0u64; 7];
                for (n, f) in fields(m) {
                    if let (1..=6, Field::Varint(x)) = (n, f) {
                        v[n as usize] = x;
                    }
                }
                mapping_ids.push(v);
            }
            (4, Field::Bytes(m)) => {
                let (mut id, mut addr) = (0, 0);
                for (n, f) in fields(m) {
                    match (n, f) {
                        (1, Field::Varint(x)) => id = x,
                        (3, Field::Varint(x)) => addr = x,
                        _ => {}
                    }
                }
                locations.insert(id, addr);
            }
            (6, Field::Bytes(s)) => strings.push(String::from_utf8(s.to_vec()).unwrap()),
            _ => {}
        }
    }
    Profile {
        types: type_ids
            .iter()
            .map(|&i| strings[i as usize].clone())
            .collect(),
        samples,
        locations,
        mappings: mapping_ids
            .iter()
            .map(|v| {
                (
                    v[2],
                    v[3],
                    strings[v[5] as usize].clone(),
                    strings[v[6] as usize].clone(),
                )
            })
            .collect(),
    }
}

/// The runtime code range of function `site`: its address as the program printed it
/// ("SITE name 0x..."; libtest may print "test child_entry ... " before it) and its
/// size as `nm -S` reads it from the binary.
fn site_range(stdout: &str, binary: &Path, site: &str) -> (u64, u64) {
    let start = stdout
        .lines()
        .find_map(|l| l.split_once(&format!("SITE {site} 0x")))
        .and_then(|(_, hex)| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("{site}'s address in:\n{stdout}"));
    let nm = Command::new("nm")
        .args(["-S", "--defined-only"])
        .arg(binary)
        .output()
        .expect("run nm (binutils)");
    assert!(nm.status.success());
    let size = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts.len() == 4 && parts[3] == site)
                .then(|| u64::from_str_radix(parts[1], 16).unwrap())
        })
        .unwrap_or_else(|| panic!("{site} in nm's output"));
    (start, start + size)
}

fn site_ranges(stdout: &str, binary: &Path) -> Vec<(u64, u64)> {
    SITES
        .iter()
        .map(|site| site_range(stdout, binary, site))
        .collect()
}

/// Each site's share of the sample type `ty`, over all samples; a sample belongs to the
/// first (innermost) site on its stack.
fn shares(p: &Profile, sites: &[(u64, u64)], ty: &str) -> Vec<f64> {
    let index = p.types.iter().position(|t| t == ty).expect(ty);
    let mut per_site = vec![0.0; sites.len()];
    let mut total = 0.0;
    for (ids, values) in &p.samples {
        let v = values[index] as f64;
        total += v;
        let site = ids.iter().find_map(|id| {
            let addr = p.locations[id];
            sites.iter().position(|&(s, e)| s <= addr && addr < e)
        });
        if let Some(i) = site {
            per_site[i] += v;
        }
    }
    assert!(total > 0.0, "{ty} has samples");
    per_site.iter().map(|v| v / total).collect()
}

fn check_profile(what: &str, path: &Path, stdout: &str, binary: &Path) {
    let p = decode(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    assert_eq!(
        p.types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    // The program's own mapping is there, with its path and a build id, for pprof.
    let exe = binary.canonicalize().unwrap();
    assert!(
        p.mappings
            .iter()
            .any(|(_, _, path, id)| Path::new(path) == exe && id.len() >= 16),
        "{what}: mapping of {} in {:?}",
        exe.display(),
        p.mappings
    );
    let sites = site_ranges(stdout, binary);
    let alloc = shares(&p, &sites, "alloc_space");
    let inuse = shares(&p, &sites, "inuse_space");
    eprintln!("{what}: alloc_space shares {alloc:.3?}, inuse_space shares {inuse:.3?}");
    for (i, site) in SITES.iter().enumerate() {
        let (want_alloc, want_inuse) = EXPECTED[i];
        assert!(
            (alloc[i] - want_alloc).abs() <= TOLERANCE,
            "{what}: {site} has {:.3} of alloc_space, expected {want_alloc:.3}",
            alloc[i]
        );
        assert!(
            (inuse[i] - want_inuse).abs() <= TOLERANCE,
            "{what}: {site} has {:.3} of inuse_space, expected {want_inuse:.3}",
            inuse[i]
        );
    }
}

/// `go tool pprof -top` on the dump lists the three sites by name.
fn check_with_go_pprof(what: &str, binary: &Path, profile: &Path) {
    if !have("go") {
        eprintln!("SKIP {what}: `go` not found, `go tool pprof` not run (install golang-go)");
        return;
    }
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=alloc_space"])
        .arg(binary)
        .arg(profile)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: go tool pprof failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for site in SITES {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().last() == Some(site)),
            "{what}: go tool pprof -top does not list {site}:\n{text}"
        );
    }
}

/// The sum of sample type `ty` over the samples whose stack passes through
/// `[start, end)`.
fn site_total(p: &Profile, (start, end): (u64, u64), ty: &str) -> f64 {
    let index = p.types.iter().position(|t| t == ty).expect(ty);
    p.samples
        .iter()
        .filter(|(ids, _)| {
            ids.iter().any(|id| {
                let addr = p.locations[id];
                start <= addr && addr < end
            })
        })
        .map(|(_, values)| values[index] as f64)
        .sum()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("heap-profile-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- the tests -------------------------------------------------------------------------

#[test]
fn rust_program_profile_gives_each_site_its_share() {
    let dir = scratch("rust");
    let path = dir.join("sites.heap");
    let exe = std::env::current_exe().unwrap();
    let out = run(child("sites", &path, OPTIONS), LIMIT);
    out.assert_success("the Rust sites program");
    assert!(out.stdout.contains("DUMPED"), "{}", out.stdout);
    check_profile("Rust", &path, &out.stdout, &exe);
    check_with_go_pprof("Rust", &exe, &path);
}

fn child(mode: &str, profile: &Path, options: &str) -> Command {
    child_of(&std::env::current_exe().unwrap(), mode, profile, options)
}

fn child_of(exe: &Path, mode: &str, profile: &Path, options: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("RANGEALLOC_TEST_CHILD", mode)
        .env("RANGEALLOC_TEST_PROFILE", profile)
        .env("RANGEALLOC_OPTIONS", options);
    cmd
}

/// The Rust three-site program as a static program (glibc linked in, no dynamic
/// loader): the profiler finds unwind tables without `_dl_find_object` (`dlsym` finds
/// nothing there), through `dl_iterate_phdr` and `.eh_frame_hdr`. The program is this
/// test binary rebuilt with `+crt-static` by `static_test_binary`, run in the same
/// "sites" mode as `rust_program_profile_gives_each_site_its_share`.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
#[test]
fn static_rust_program_profile_gives_each_site_its_share() {
    let exe = static_test_binary();
    assert!(has_interpreter(&std::env::current_exe().unwrap()));
    assert!(
        !has_interpreter(&exe),
        "{} has a PT_INTERP: not a static program",
        exe.display()
    );
    let path = scratch("static").join("sites.heap");
    let out = run(child_of(&exe, "sites", &path, OPTIONS), LIMIT);
    out.assert_success("the static Rust sites program");
    assert!(out.stdout.contains("DUMPED"), "{}", out.stdout);
    check_profile("static Rust", &path, &out.stdout, &exe);
    check_with_go_pprof("static Rust", &exe, &path);
}

/// This test binary built again for `x86_64-unknown-linux-gnu` with
/// `-C target-feature=+crt-static` (a static-pie program: glibc's `libc.a`, from
/// libc6-dev, linked in), into `<target>/x86_64-unknown-linux-gnu/release`. Without
/// LTO and with 16 codegen units: the link is what is under test, and the build then
/// takes about 40 s of CPU instead of a fat-LTO build's minutes.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
fn static_test_binary() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .args(["-p", "rangealloc-tests", "--test", "heap_profile"])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .current_dir(ffi_support::workspace())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo for the static build");
    assert!(out.status.success(), "the static build failed (see stderr)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("the static test binary's path in cargo's messages")
}

/// Whether the ELF file at `exe` names a program interpreter (`PT_INTERP`): every
/// dynamically linked program does, a static one (static-pie included) does not.
fn has_interpreter(exe: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(exe).unwrap();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    // ELF64 header: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38.
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}

/// `realloc` of sampled blocks moves them with their content, counts the new size at
/// the `realloc` call site, and their frees leave nothing of them in use.
#[test]
fn reallocated_and_freed_samples_leave_nothing_in_use() {
    let path = scratch("realloc").join("realloc.heap");
    let out = run(child("realloc", &path, "prof=1,prof_sample=1"), LIMIT);
    out.assert_success("the realloc program");
    assert!(out.stdout.contains("DUMPED"), "{}", out.stdout);
    let p = decode(&std::fs::read(&path).unwrap());
    let grow = site_range(
        &out.stdout,
        &std::env::current_exe().unwrap(),
        "prof_site_grow",
    );
    let grown = site_total(&p, grow, "alloc_space");
    let want = (REALLOC_OBJECTS * REALLOC_TO) as f64;
    assert!(
        (grown / want - 1.0).abs() < TOLERANCE,
        "alloc_space at the realloc site: {grown}, expected about {want}"
    );
    assert_eq!(site_total(&p, grow, "inuse_space"), 0.0);
    assert_eq!(site_total(&p, grow, "inuse_objects"), 0.0);
}

/// Sampling at refills, with lists cut at sample points, hands every small block out
/// once and estimates the site's objects and bytes within 5% (block size: 48 bytes);
/// after the frees nothing of the site is in use.
#[test]
fn small_blocks_sampled_at_refills_are_counted_and_freed() {
    let path = scratch("blocks").join("blocks.heap");
    let out = run(child("blocks", &path, BLOCKS_OPTIONS), LIMIT);
    out.assert_success("the blocks program");
    assert!(out.stdout.contains("DUMPED"), "{}", out.stdout);
    let exe = std::env::current_exe().unwrap();
    let site = site_range(&out.stdout, &exe, "prof_site_block");
    let live = decode(&std::fs::read(&path).unwrap());
    let block_bytes = (BLOCK_WORDS * std::mem::size_of::<usize>()) as f64;
    for (ty, want) in [
        ("alloc_objects", BLOCKS as f64),
        ("alloc_space", BLOCKS as f64 * block_bytes),
        ("inuse_objects", BLOCKS as f64),
        ("inuse_space", BLOCKS as f64 * block_bytes),
    ] {
        let got = site_total(&live, site, ty);
        eprintln!("blocks: {ty} {got} (true {want})");
        assert!(
            (got / want - 1.0).abs() < TOLERANCE,
            "{ty} at the block site: {got}, expected about {want}"
        );
    }
    let after = decode(&std::fs::read(format!("{}.after", path.display())).unwrap());
    assert_eq!(site_total(&after, site, "inuse_objects"), 0.0);
    assert!(site_total(&after, site, "alloc_objects") > 0.0);
}

/// Sampled small blocks stay blocks of their pages (usable size, in-place `realloc`),
/// and their frees from another thread and the reuse of their pages leave the profile
/// right: everything the site allocated is counted, nothing of it in use.
#[test]
fn sampled_small_blocks_freed_by_another_thread_leave_nothing_in_use() {
    let path = scratch("remote").join("remote.heap");
    let out = run(child("remote", &path, REMOTE_OPTIONS), LIMIT);
    out.assert_success("the remote-free program");
    assert!(out.stdout.contains("DUMPED"), "{}", out.stdout);
    let exe = std::env::current_exe().unwrap();
    let site = site_range(&out.stdout, &exe, "prof_site_block");
    let p = decode(&std::fs::read(&path).unwrap());
    let allocated = site_total(&p, site, "alloc_objects");
    let want = (2 * REMOTE_BLOCKS) as f64;
    assert!(
        (allocated / want - 1.0).abs() < TOLERANCE,
        "alloc_objects at the block site: {allocated}, expected about {want}"
    );
    assert_eq!(site_total(&p, site, "inuse_objects"), 0.0);
    assert_eq!(site_total(&p, site, "inuse_space"), 0.0);
}

/// Pages marked for sampled blocks survive `fork`: the heap of a thread that held
/// sampled blocks at the fork is rebuilt in the child with those pages live.
#[test]
fn a_forked_childs_repair_keeps_pages_holding_sampled_blocks() {
    let path = scratch("fork").join("fork.heap");
    let out = run(child("fork", &path, REMOTE_OPTIONS), LIMIT);
    out.assert_success("the fork program");
    assert!(out.stdout.contains("FORKED"), "{}", out.stdout);
}

#[test]
fn c_program_without_frame_pointers_profile_gives_each_site_its_share() {
    let exe = compile(
        "prof_sites.c",
        "prof_sites",
        Lang::C,
        // -rdynamic exports the sites, so the leak report's dladdr can name them.
        &["-fomit-frame-pointer", "-rdynamic"],
    );
    let dir = scratch("c");
    let (direct, by_mallctl) = (dir.join("direct.heap"), dir.join("mallctl.heap"));
    let prefix = dir.join("exit");
    let mut cmd = preloaded(&exe);
    cmd.arg(&direct).arg(&by_mallctl).env(
        "RANGEALLOC_OPTIONS",
        format!("{OPTIONS},prof_leak=1,prof_dump={}", prefix.display()),
    );
    let out = run(cmd, LIMIT);
    out.assert_success("prof_sites under LD_PRELOAD");
    assert!(out.stdout.contains("DUMPED"), "{}", out.stdout);
    check_profile("C (rangealloc_prof_dump)", &direct, &out.stdout, &exe);
    check_profile("C (mallctl prof.dump)", &by_mallctl, &out.stdout, &exe);
    // The dump at exit: A and C are still allocated then, as when the others were taken.
    let final_dump = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".final.heap"))
        .expect("the prof_dump file written at exit");
    assert!(final_dump.starts_with(&dir));
    check_profile("C (at exit)", &final_dump, &out.stdout, &exe);
    // The leak report: the largest holder first, and its stack names the site.
    let report = &out.stderr;
    let first = report.find("leak #1:").expect("a leak report on stderr");
    let second = report.find("leak #2:").expect("a second leaking stack");
    assert!(
        report[first..second].contains("prof_site_a"),
        "leak #1 is site A:\n{report}"
    );
    assert!(
        report[second..]
            .lines()
            .take(8)
            .any(|l| l.contains("prof_site_c")),
        "leak #2 is site C:\n{report}"
    );
    assert!(!report.contains("prof_site_b"), "B was freed:\n{report}");
    check_with_go_pprof("C", &exe, &direct);
}

/// A Python program's allocations (Debian's `python3`: no frame pointers, thousands of
/// distinct stacks through the interpreter).
const PYTHON_WORK: &str = "
import json, re, collections
rows = [{'id': i, 'name': str(i) * 10, 'tags': [i] * 20} for i in range(100000)]
text = json.dumps(rows[:20000])
back = json.loads(text)
words = collections.Counter(re.findall(r'[0-9]+', text))
print(len(back), len(words))
";

/// The dump of a real program is compressed for real (DEFLATE with LZ77 and Huffman
/// codes, not stored blocks): at least `MIN_FACTOR` times smaller than the stored form
/// of the same profile would be (2.7x measured here), and it still reads back with `gzip`,
/// this test's decoder and `go tool pprof`.
#[test]
fn a_real_programs_dump_is_compressed() {
    const MIN_FACTOR: f64 = 2.0;
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        eprintln!("SKIP a_real_programs_dump_is_compressed: /usr/bin/python3 not found");
        return;
    }
    let dir = scratch("python");
    let prefix = dir.join("py");
    let mut cmd = preloaded(python);
    cmd.args(["-c", PYTHON_WORK]).env(
        "RANGEALLOC_OPTIONS",
        format!("prof=1,prof_sample=4096,prof_dump={}", prefix.display()),
    );
    run(cmd, LIMIT).assert_success("python3 under LD_PRELOAD");
    let dump = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".final.heap"))
        .expect("python's dump at exit");
    let gz = std::fs::read(&dump).unwrap();
    let raw = gunzip(&gz);
    // Stored blocks: a 5-byte header per 65535 bytes, plus gzip's 10 + 8 bytes.
    let stored = raw.len() + 5 * raw.len().div_ceil(0xFFFF) + 18;
    let factor = stored as f64 / gz.len() as f64;
    eprintln!(
        "python profile: {} bytes of protobuf, {} compressed, stored would be {stored}: {factor:.2}x",
        raw.len(),
        gz.len()
    );
    assert!(
        factor >= MIN_FACTOR,
        "compressed {factor:.2}x, expected at least {MIN_FACTOR}x"
    );
    let p = decode(&gz);
    assert!(p.samples.len() > 100, "{} stacks", p.samples.len());
    if !have("go") {
        eprintln!("SKIP python dump: `go` not found, `go tool pprof` not run (install golang-go)");
        return;
    }
    let out = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(python)
        .arg(&dump)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run go tool pprof");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Showing nodes"),
        "go tool pprof reads the python dump:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With profiling off (the default), nothing is sampled and a dump says so.
#[test]
fn profiling_is_off_by_default() {
    if std::env::var_os("RANGEALLOC_OPTIONS").is_some() {
        return; // the environment asked for something else
    }
    let v = vec![0u8; 1 << 20];
    assert!(!rangealloc::profile::enabled());
    let err = rangealloc::profile::dump(scratch("off").join("x.heap")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    drop(v);
}

/// The stack walk's cached call-frame rules do not outlive the code they describe: a
/// library whose call to malloc has a frame-pointer rule is closed, and another one
/// loaded at the same address calls malloc from the same address with `rbp` holding a
/// value 256 MiB above the stack (`prof_dlclose_lib.S`). With the first library's rule
/// kept, the sampled walk read there and the program died of SIGSEGV.
#[test]
fn a_rule_cached_before_a_dlclose_is_not_used_for_code_loaded_after_it() {
    let libs: Vec<PathBuf> = [1, 2]
        .iter()
        .map(|v| {
            compile(
                "prof_dlclose_lib.S",
                &format!("libprof_dlclose_{v}.so"),
                Lang::C,
                &["-shared", "-fPIC", &format!("-DVARIANT={v}")],
            )
        })
        .collect();
    let exe = compile("prof_dlclose.c", "prof_dlclose", Lang::C, &["-ldl"]);
    for _ in 0..3 {
        let mut cmd = preloaded(&exe);
        cmd.args(&libs)
            .env("RANGEALLOC_OPTIONS", "prof=1,prof_sample=1");
        let out = run(cmd, LIMIT);
        out.assert_success("prof_dlclose under LD_PRELOAD");
        if out.stdout.contains("SAME ADDRESS") {
            return;
        }
    }
    eprintln!("SKIP: the second library never reused the first one's address");
}

/// libgcc (GCC 12) mallocs while it holds its FDE lookup's mutex: on the first lookup
/// after `__register_frame_info` (JITs, static binaries), to sort the new object's
/// FDEs. A sampled walk of that malloc must not call libgcc's lookup again: the thread
/// deadlocked on itself (the run limit kills it), with the cached walk and with
/// `_Unwind_Backtrace` before it. The walk now finds FDEs in loaded objects without
/// libgcc (`_dl_find_object` and the object's `.eh_frame_hdr` table) and ends at a
/// frame inside libgcc (`prof/cfi.rs`); without that, this hangs for the run limit.
#[test]
fn a_malloc_made_inside_libgccs_fde_lookup_does_not_deadlock() {
    register_frame_program("prof=1,prof_sample=1");
}

/// The same where glibc has no `_dl_find_object` (before 2.35) or in a static program,
/// forced here by `prof_unwind_phdr`: objects are found through `dl_iterate_phdr`, and
/// libgcc's mapping is not known (as in a static program, where libgcc is part of it),
/// so only the end of the walk at `_Unwind_Find_FDE`'s own frame keeps the walk out of
/// libgcc. Before, such a process looked every FDE up through libgcc and hung here.
#[test]
fn without_dl_find_object_a_malloc_inside_libgccs_fde_lookup_does_not_deadlock() {
    register_frame_program("prof=1,prof_sample=1,prof_unwind_phdr=1");
}

/// A JIT's frame (code in no loaded object, its unwind table registered with the
/// program's libgcc) between a sampled malloc and its caller: the walk asks libgcc for
/// that frame's rule, and it must ask the program's `libgcc_s.so`, where the table is
/// registered, not the copy of the unwinder linked into `librangealloc.so`, whose
/// registry is empty (`prof::libgcc`). With the copy, the stack ended at the JIT frame.
#[test]
fn a_jit_frame_registered_with_the_programs_libgcc_is_walked_through() {
    let exe = compile("prof_jit.c", "prof_jit", Lang::C, &["-rdynamic"]);
    let mut cmd = preloaded(&exe);
    cmd.env("RANGEALLOC_OPTIONS", "prof=1,prof_sample=1,prof_leak=1");
    let out = run(cmd, LIMIT);
    out.assert_success("prof_jit under LD_PRELOAD");
    assert!(out.stdout.contains("ALL OK"), "{}", out.stdout);
    let report = &out.stderr;
    let first = report.find("leak #1:").expect("a leak report on stderr");
    let end = report[first..]
        .find("leak #2:")
        .map_or(report.len(), |i| first + i);
    assert!(
        report[first..end].contains("prof_jit_caller"),
        "the JIT object's stack stops at the JIT frame:\n{report}"
    );
}

/// A sampled allocation inside `pthread_getattr_np`, which holds the thread's lock while
/// it allocates: the walk must not call it for its stack bound (review19 H1: the thread
/// waited on its own lock, on the main thread and on others, and a Rust program hung
/// in `std`'s start-up, which asks for the main thread's stack).
#[test]
fn a_sample_inside_pthread_getattr_np_does_not_deadlock() {
    let exe = compile("prof_getattr.c", "prof_getattr", Lang::C, &[]);
    let mut cmd = preloaded(&exe);
    cmd.env("RANGEALLOC_OPTIONS", "prof=1,prof_sample=1");
    let out = run(cmd, Duration::from_secs(60));
    out.assert_success("prof_getattr under LD_PRELOAD");
    assert!(out.stdout.contains("ALL OK"), "{}", out.stdout);
}

fn register_frame_program(options: &str) {
    let exe = compile("prof_register_frame.c", "prof_register_frame", Lang::C, &[]);
    let mut cmd = preloaded(&exe);
    cmd.env("RANGEALLOC_OPTIONS", options);
    let out = run(cmd, Duration::from_secs(60));
    out.assert_success("prof_register_frame under LD_PRELOAD");
    assert!(out.stdout.contains("frames "), "{}", out.stdout);
}

/// The profiler starts at the process's first allocation, which may be one glibc makes
/// inside `atexit` while holding its exit-handler lock (`prof_atexit.c`: the 33rd
/// handler). Its exit dump and leak report must still run, without the profiler calling
/// `atexit` there: that waited on glibc's lock forever (seen: killed at the run limit).
#[test]
fn profiling_that_starts_inside_atexit_does_not_deadlock() {
    let exe = compile("prof_atexit.c", "prof_atexit", Lang::C, &[]);
    let dir = scratch("atexit");
    let prefix = dir.join("exit");
    let mut cmd = preloaded(&exe);
    cmd.env(
        "RANGEALLOC_OPTIONS",
        format!(
            "prof=1,prof_sample=1,prof_leak=1,prof_dump={}",
            prefix.display()
        ),
    );
    let out = run(cmd, Duration::from_secs(60));
    out.assert_success("prof_atexit under LD_PRELOAD");
    assert!(out.stdout.contains("ok 1"), "{}", out.stdout);
    let final_dump = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".final.heap"))
        .expect("the prof_dump file written at exit");
    let profile = decode(&std::fs::read(final_dump).unwrap());
    assert!(!profile.samples.is_empty(), "an empty exit dump");
    assert!(out.stderr.contains("leak #1:"), "{}", out.stderr);
}

/// Sampled walks from a malloc in a signal handler on an alternate stack, in threads
/// with 16 KiB stacks, in code without frame pointers (`prof_signals.c`): the walk
/// hands signal frames to libgcc and never reads outside the stacks.
/// Allocations on a coroutine stack (`makecontext`), where the walk has no stack bound
/// from the C library: it checks each page it reads instead. The coroutine's site is
/// profiled with its whole stack (the coroutine's function above it), and the two
/// allocations made under a frame whose rule points at a guard page, then at nothing
/// mapped, are recorded with the frames below that one. Before the check these walks
/// went to libgcc, which read the guard page: SIGSEGV.
#[test]
fn sampled_mallocs_on_a_coroutine_stack_with_an_odd_frame() {
    const SITE_CALLS: f64 = 1000.0;
    const SITE_SIZE: f64 = 1000.0;
    let exe = compile(
        "prof_coroutine.c",
        "prof_coroutine",
        Lang::C,
        &["-fomit-frame-pointer"],
    );
    let path = scratch("coroutine").join("coroutine.heap");
    let mut cmd = preloaded(&exe);
    cmd.arg(&path)
        .env("RANGEALLOC_OPTIONS", "prof=1,prof_sample=1");
    let out = run(cmd, LIMIT);
    out.assert_success("prof_coroutine under LD_PRELOAD");
    assert!(out.stdout.contains("DUMPED"), "{}", out.stdout);
    let p = decode(&std::fs::read(&path).unwrap());
    let site = site_range(&out.stdout, &exe, "prof_coro_site");
    let main = site_range(&out.stdout, &exe, "prof_coroutine_main");
    let odd = site_range(&out.stdout, &exe, "prof_odd_frame");
    let at_site = site_total(&p, site, "alloc_space");
    let want = SITE_CALLS * SITE_SIZE;
    eprintln!("coroutine: alloc_space at the site {at_site} (true {want})");
    assert!(
        (at_site / want - 1.0).abs() < TOLERANCE,
        "alloc_space at the coroutine's site: {at_site}, expected about {want}"
    );
    // The walk went on above the site, on the coroutine's stack.
    let index = p.types.iter().position(|t| t == "alloc_space").unwrap();
    let through_both: f64 = p
        .samples
        .iter()
        .filter(|(ids, _)| {
            let has = |(start, end): (u64, u64)| {
                ids.iter().any(|id| (start..end).contains(&p.locations[id]))
            };
            has(site) && has(main)
        })
        .map(|(_, values)| values[index] as f64)
        .sum();
    assert_eq!(
        through_both, at_site,
        "every site sample has the coroutine's frame"
    );
    assert_eq!(
        site_total(&p, odd, "alloc_objects"),
        2.0,
        "the odd frame's two"
    );
}

#[test]
fn sampled_mallocs_in_signal_handlers_on_alternate_stacks() {
    let exe = compile(
        "prof_signals.c",
        "prof_signals",
        Lang::C,
        &["-fomit-frame-pointer"],
    );
    let mut cmd = preloaded(&exe);
    cmd.env("RANGEALLOC_OPTIONS", "prof=1,prof_sample=1");
    let out = run(cmd, LIMIT);
    out.assert_success("prof_signals under LD_PRELOAD");
    let handled: u64 = out
        .stdout
        .trim()
        .strip_prefix("ok ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(handled > 0, "no handler ran");
}

/// Frees and reallocs of sampled objects (small blocks of marked pages, and large
/// objects) in a signal handler that interrupted its own thread inside the profile
/// table's lock (`prof_signal_free.c`: the main thread resets the profile in a loop
/// while another thread signals it). The profiler defers them instead of waiting for
/// the lock's holder, which is the interrupted code: before, the handler spun for ever
/// and the harness killed the program. Afterwards the deferred frees have been made:
/// the pool's site has nothing in use.
#[test]
fn frees_in_a_signal_handler_of_the_table_locks_holder_are_deferred() {
    let exe = compile("prof_signal_free.c", "prof_signal_free", Lang::C, &[]);
    let path = scratch("signal_free").join("signal_free.heap");
    let mut cmd = preloaded(&exe);
    cmd.arg(&path)
        .env("RANGEALLOC_OPTIONS", "prof=1,prof_sample=1");
    let out = run(cmd, LIMIT);
    out.assert_success("prof_signal_free under LD_PRELOAD");
    let handled: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("ok "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(handled > 0, "no handler ran");
    let p = decode(&std::fs::read(&path).unwrap());
    let site = site_range(&out.stdout, &exe, "prof_pool_site");
    assert_eq!(
        site_total(&p, site, "inuse_space"),
        0.0,
        "the pool's site still holds memory after every object was freed"
    );
}
