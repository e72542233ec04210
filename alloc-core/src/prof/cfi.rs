//! The x86-64 call-frame rules of one code address, read from its `.eh_frame` entry (its
//! FDE and CIE): where the caller's stack pointer (the CFA), return address and frame
//! pointer are. Owns the FDE lookup in loaded objects (glibc's `_dl_find_object`, then
//! the object's `.eh_frame_hdr` search table: no lock, no allocation; without
//! `_dl_find_object`, as before glibc 2.35 or in a static program, `dl_iterate_phdr`
//! finds the object) and the DWARF call-frame instruction interpreter (the subset
//! compilers emit for x86-64); calls glibc, and libgcc's `_Unwind_Find_FDE` (the one
//! `libgcc` picks: the program's, else ours) only for
//! code outside every loaded object (frames a JIT registered) or in an object whose
//! search table is missing or in unusual encodings. The
//! walker in `stack` caches one `Rule` per return address, so this runs once per
//! address, not once per sample.
//!
//! Only the rules a walk from `rsp` and `rbp` can follow are `Rule::Step`: the CFA is
//! `rsp` or `rbp` plus an offset, the return address is saved at an offset from the
//! CFA, `rbp` is unchanged or saved at an offset from it, and `rsp` has no rule of its
//! own (the caller's `rsp` is the CFA). Anything else (CFA expressions, signal frames,
//! registers saved in other registers, unknown opcodes, malformed entries) is
//! `Rule::Unsupported`, and the walk of that stack is left to libgcc whole.

use core::ffi::{c_int, c_void};

use super::libgcc::{self, DwarfEhBases};
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// DWARF register numbers of x86-64 (System V psABI, figure 3.36).
const REG_RBP: u64 = 6;
const REG_RSP: u64 = 7;
/// The return-address column.
const REG_RA: u64 = 16;

/// Nested `DW_CFA_remember_state`s followed: compilers nest at most one or two (an
/// epilogue inside a function body); deeper is `Unsupported`.
const STATE_STACK: usize = 4;

/// How to find the caller's frame from a frame's `rsp` and `rbp`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rule {
    Step {
        /// The CFA is `rbp + cfa_off` (else `rsp + cfa_off`).
        cfa_from_bp: bool,
        cfa_off: i32,
        /// The return address is saved at `CFA + ra_off`.
        ra_off: i8,
        /// The caller's `rbp` is saved at `CFA + off`; `None`: `rbp` is unchanged.
        bp_off: Option<i16>,
    },
    /// The outermost frame: no unwind entry, or the return address is undefined
    /// (`_start`, `clone`).
    End,
    /// A frame this walker does not follow.
    Unsupported,
}

/// `struct dl_find_object` of glibc 2.35+'s `<dlfcn.h>` (x86-64 layout).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *mut c_void,
    /// The object's `PT_GNU_EH_FRAME` segment (its `.eh_frame_hdr`), or null.
    eh_frame: *mut c_void,
    reserved: [u64; 7],
}

/// `_dl_find_object`'s type: 0 and `*result` filled if `address` lies in a loaded
/// object. glibc's implementation takes no lock and does not allocate.
type DlFindObjectFn =
    unsafe extern "C" fn(address: *mut c_void, result: *mut DlFindObject) -> c_int;

/// `_dl_find_object`, resolved by `init` (0: not there, not wanted, or `init` has not
/// run: objects are then found through `dl_iterate_phdr`).
static DL_FIND_OBJECT: AtomicUsize = AtomicUsize::new(0);
/// The mapping of the object holding libgcc's `_Unwind_Find_FDE` (`[start, end)`; empty
/// if unknown or if libgcc is part of our own object). Set before `READY`, published by
/// its Release store.
static LIBGCC_START: AtomicUsize = AtomicUsize::new(0);
static LIBGCC_END: AtomicUsize = AtomicUsize::new(0);
/// The code of `_Unwind_Find_FDE` itself (`[start, end)`, from its FDE), wherever it
/// lies: the one frame that ends the walk in a static program, where libgcc is part of
/// the program and has no mapping of its own. Published as `LIBGCC_*`.
static FIND_FDE_START: AtomicUsize = AtomicUsize::new(0);
static FIND_FDE_END: AtomicUsize = AtomicUsize::new(0);
/// Set once `init` has stored the values above.
static READY: AtomicBool = AtomicBool::new(false);

/// Resolves `_dl_find_object` (glibc 2.35+, unless `phdr_only`) and libgcc's code, once,
/// when profiling starts (`prof::start`, never from a walk): `dlsym` and the first
/// `dl_iterate_phdr` may allocate, and the caller's re-entrancy guard sends that to the
/// metadata arena. Idempotent (the unit tests call it).
///
/// Without `_dl_find_object` (glibc before 2.35, static programs, other C libraries, or
/// `phdr_only`: the `prof_unwind_phdr` option), objects are found through
/// `dl_iterate_phdr`, which takes the loader's recursive lock and does not allocate;
/// libgcc's `_Unwind_Find_FDE` is still never called for code in a loaded object. With
/// `phdr_only` libgcc's mapping is not recorded either, as in a static program, so the
/// walk ends at `_Unwind_Find_FDE`'s own frame only (what keeps a static program from
/// deadlocking; `heap_profile` runs the register_frame test so).
pub fn init(phdr_only: bool) {
    if READY.load(Ordering::Acquire) {
        return;
    }
    let sym = if phdr_only {
        core::ptr::null_mut()
    } else {
        // SAFETY: a NUL-terminated name looked up in the global scope.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) }
    };
    let find = sym as usize;
    let find_fde = libgcc::find_fde_address();
    if let Some(libgcc) = object_of(find_fde, find) {
        // The walk ends at libgcc's frames only if libgcc is an object of its own
        // (libgcc_s.so); linked into our own object, its range would cover ours too.
        let ours = object_of(init as *const () as usize, find);
        if !phdr_only && ours.is_none_or(|o| o.start != libgcc.start) {
            // Relaxed: published by the Release store of `READY`.
            LIBGCC_START.store(libgcc.start, Ordering::Relaxed);
            LIBGCC_END.store(libgcc.end, Ordering::Relaxed);
        }
        if !libgcc.eh_frame_hdr.is_null() {
            // SAFETY: the object's mapped `.eh_frame_hdr`, and an FDE its table names.
            let span = unsafe {
                fde_from_hdr(libgcc.eh_frame_hdr, find_fde)
                    .flatten()
                    .and_then(|(fde, func)| Some((func, func + fde_len(fde)?)))
            };
            if let Some((start, end)) =
                span.filter(|&(start, end)| start <= find_fde && find_fde < end)
            {
                // Relaxed: as above.
                FIND_FDE_START.store(start, Ordering::Relaxed);
                FIND_FDE_END.store(end, Ordering::Relaxed);
            }
        }
    }
    // Relaxed: published by the Release store of `READY`.
    DL_FIND_OBJECT.store(find, Ordering::Relaxed);
    // Release: pairs with `rule_at`'s Acquire load, which then sees the values above.
    READY.store(true, Ordering::Release);
}

/// A loaded object: its mapping and its `.eh_frame_hdr` (null if it has none).
#[derive(Clone, Copy)]
struct Object {
    start: usize,
    end: usize,
    eh_frame_hdr: *const u8,
}

/// The loaded object holding `at`, found with `_dl_find_object` (`find`, its address)
/// or, if `find` is 0, with `dl_iterate_phdr`. Neither allocates or takes a lock that
/// libgcc's FDE lookup holds.
fn object_of(at: usize, find: usize) -> Option<Object> {
    if find != 0 {
        // SAFETY: `find` is `_dl_find_object`'s address (`init`), of this type.
        let find = unsafe { core::mem::transmute::<usize, DlFindObjectFn>(find) };
        let mut o = empty_dlfo();
        // SAFETY: reads `at` as a number and fills `o`, which we own.
        return (unsafe { find(at as *mut c_void, &mut o) } == 0).then_some(Object {
            start: o.map_start as usize,
            end: o.map_end as usize,
            eh_frame_hdr: o.eh_frame as *const u8,
        });
    }
    let mut search = PhdrSearch { at, found: None };
    // SAFETY: the callback matches `dl_iterate_phdr`'s signature and `search` outlives
    // the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(phdr_search),
            &mut search as *mut PhdrSearch as *mut c_void,
        )
    };
    search.found
}

struct PhdrSearch {
    at: usize,
    found: Option<Object>,
}

/// `dl_iterate_phdr` callback: stops at the object one of whose loaded segments holds
/// `at`, and records its extent and its `PT_GNU_EH_FRAME` segment.
extern "C" fn phdr_search(info: *mut libc::dl_phdr_info, _size: usize, out: *mut c_void) -> c_int {
    // SAFETY: `info` is valid during the callback; `out` is the `PhdrSearch` that
    // `object_of` passed and owns.
    let (info, search) = unsafe { (&*info, &mut *(out as *mut PhdrSearch)) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: the loader's program headers of this object, `dlpi_phnum` of them.
    let headers = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
    let base = info.dlpi_addr as usize;
    let (mut hit, mut start, mut end, mut hdr) = (false, usize::MAX, 0, 0);
    for h in headers {
        let from = base.wrapping_add(h.p_vaddr as usize);
        match h.p_type {
            libc::PT_LOAD => {
                let to = from.wrapping_add(h.p_memsz as usize);
                hit |= from <= search.at && search.at < to;
                start = start.min(from);
                end = end.max(to);
            }
            libc::PT_GNU_EH_FRAME => hdr = from,
            _ => {}
        }
    }
    if !hit {
        return 0;
    }
    search.found = Some(Object {
        start,
        end,
        eh_frame_hdr: hdr as *const u8,
    });
    1
}

fn empty_dlfo() -> DlFindObject {
    DlFindObject {
        flags: 0,
        map_start: core::ptr::null_mut(),
        map_end: core::ptr::null_mut(),
        link_map: core::ptr::null_mut(),
        eh_frame: core::ptr::null_mut(),
        reserved: [0; 7],
    }
}

/// The rule at code address `at` (the address of the call instruction for a return
/// address, `ra - 1`, as libgcc looks it up, or the exact address for the frame a walk
/// starts in), and whether it may be cached: true for code in a loaded object (which
/// stays what it is until a `dlclose`, which the cache's key sees), false for code in
/// no object (a JIT's, which it may free and reuse for other code without any count
/// changing: its frames are looked up again on every walk).
///
/// Code in a loaded object has its FDE found here, through `_dl_find_object` or
/// `dl_iterate_phdr` and the object's `.eh_frame_hdr` search table, without libgcc.
/// Only code outside every object (frames a JIT registered) and objects whose table is
/// not in the usual encodings are looked up by libgcc's `_Unwind_Find_FDE`. A frame
/// inside libgcc itself, or in `_Unwind_Find_FDE`, is the end of the walk: libgcc
/// mallocs while holding its FDE mutex (sorting newly registered frames), and a sampled
/// walk of that malloc must not call into libgcc, nor hand the walk to it, again
/// (`heap_profile`'s register_frame tests).
pub fn rule_at(at: usize) -> (Rule, bool) {
    match lookup(at) {
        Lookup::Found(rule) => (rule, true),
        Lookup::UnusualTable => (rule_by_libgcc(at), true),
        Lookup::NoObject => (rule_by_libgcc(at), false),
    }
}

/// What the lookup without libgcc found.
#[derive(Debug, PartialEq)]
enum Lookup {
    Found(Rule),
    /// In an object whose `.eh_frame_hdr` is missing its table or unusual: libgcc's.
    UnusualTable,
    /// In no loaded object: libgcc's (registered frames).
    NoObject,
}

fn lookup(at: usize) -> Lookup {
    // Acquire: pairs with `init`'s Release store, so the values it set are visible.
    // Before `init` (unit tests) objects are found through `dl_iterate_phdr`.
    let ready = READY.load(Ordering::Acquire);
    // Relaxed: published by the Acquire load above (zero before `init`).
    let find = DL_FIND_OBJECT.load(Ordering::Relaxed);
    if ready {
        let in_range = |start: &AtomicUsize, end: &AtomicUsize| {
            start.load(Ordering::Relaxed) <= at && at < end.load(Ordering::Relaxed)
        };
        if in_range(&LIBGCC_START, &LIBGCC_END) || in_range(&FIND_FDE_START, &FIND_FDE_END) {
            return Lookup::Found(Rule::End);
        }
    }
    lookup_in(at, find)
}

/// `lookup` through `find` (see `object_of`), without the libgcc checks.
fn lookup_in(at: usize, find: usize) -> Lookup {
    let Some(o) = object_of(at, find) else {
        return Lookup::NoObject;
    };
    if o.eh_frame_hdr.is_null() {
        return Lookup::Found(Rule::End); // an object without unwind tables, as libgcc says
    }
    // SAFETY: the loader gives the object's mapped `PT_GNU_EH_FRAME` segment; the
    // object stays loaded while its code is on the stack being walked.
    match unsafe { fde_from_hdr(o.eh_frame_hdr, at) } {
        Some(None) => Lookup::Found(Rule::End),
        // SAFETY: `fde` is an FDE of the object's `.eh_frame`, named by its table.
        Some(Some((fde, func))) => {
            Lookup::Found(unsafe { rule_from_fde(fde, func, at) }.unwrap_or(Rule::Unsupported))
        }
        None => Lookup::UnusualTable,
    }
}

/// The rule at `at` from libgcc's `_Unwind_Find_FDE`.
fn rule_by_libgcc(at: usize) -> Rule {
    let mut bases = DwarfEhBases {
        tbase: core::ptr::null_mut(),
        dbase: core::ptr::null_mut(),
        func: core::ptr::null_mut(),
    };
    // SAFETY: libgcc reads `at` only as a number and writes `bases`, which we own.
    let fde = unsafe { libgcc::find_fde(at as *mut c_void, &mut bases) };
    if fde.is_null() {
        return Rule::End;
    }
    // SAFETY: `fde` is an FDE in a loaded object's `.eh_frame` (or a registered one),
    // as libgcc returns it; every read below stays inside the lengths its header and
    // its CIE's header declare.
    unsafe { rule_from_fde(fde, bases.func as usize, at) }.unwrap_or(Rule::Unsupported)
}

/// `.eh_frame_hdr` encodings this reads (what GNU ld, gold, lld and mold write):
/// `eh_frame_ptr` pc-relative sdata4, `fde_count` udata4, the table datarel sdata4.
const HDR_PTR_ENC: u8 = 0x1b;
const HDR_COUNT_ENC: u8 = 0x03;
const HDR_TABLE_ENC: u8 = 0x3b;

/// Binary-searches the `.eh_frame_hdr` at `hdr` for the last FDE starting at or before
/// `at`: `Some(Some((fde, function start)))`, `Some(None)` if none does, `None` if the
/// header is not version 1 in the usual encodings. The FDE's range is checked by
/// `rule_from_fde`.
///
/// # Safety
/// `hdr` is a loaded object's mapped `.eh_frame_hdr`.
unsafe fn fde_from_hdr(hdr: *const u8, at: usize) -> Option<Option<(*const u8, usize)>> {
    // SAFETY: the header's first 12 bytes (version, three encodings, eh_frame_ptr,
    // fde_count) are present when its encodings are these; each table entry is two
    // 4-byte words within the `fde_count` the linker wrote.
    unsafe {
        let head = core::slice::from_raw_parts(hdr, 4);
        if head != [1, HDR_PTR_ENC, HDR_COUNT_ENC, HDR_TABLE_ENC] {
            return None;
        }
        let count = hdr.add(8).cast::<u32>().read_unaligned() as usize;
        let table = hdr.add(12).cast::<[i32; 2]>();
        let entry = |i: usize| table.add(i).read_unaligned();
        let base = hdr as usize;
        // The first entry whose start is after `at`; the one before it is the candidate.
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if base.wrapping_add_signed(entry(mid)[0] as isize) <= at {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Some(None);
        }
        let [loc, fde] = entry(lo - 1);
        Some(Some((
            base.wrapping_add_signed(fde as isize) as *const u8,
            base.wrapping_add_signed(loc as isize),
        )))
    }
}

/// What an FDE's CIE says that the FDE and the interpreter need.
struct Cie {
    code_align: u64,
    data_align: i64,
    /// How the FDE's address and range are written.
    fde_encoding: u8,
    /// A signal frame ('S').
    signal: bool,
    /// The FDE carries augmentation data ('z').
    has_aug_data: bool,
    /// The CIE's initial instructions.
    program: Reader,
}

/// The FDE at `fde` after its CIE pointer (at its address field), and its CIE; `None`
/// where they say something unsupported.
///
/// # Safety
/// As `rule_from_fde`.
unsafe fn read_fde(fde: *const u8) -> Option<(Reader, Cie)> {
    // SAFETY (of every `Reader::new`): the caller vouches for the header's 4 bytes; the
    // readers then stay inside the length the header declares.
    let mut f = unsafe { Reader::entry(fde)? };
    let id_at = f.p;
    let cie_delta = f.u32()? as usize;
    let cie = (id_at as usize).checked_sub(cie_delta)? as *const u8;
    // SAFETY: an FDE's CIE pointer names its CIE in the same section.
    let mut c = unsafe { Reader::entry(cie)? };
    if c.u32()? != 0 {
        return None; // not a CIE
    }
    let version = c.u8()?;
    let aug = c.cstr()?;
    if !(version == 1 || version == 3) || aug.contains(&b'h') {
        return None; // unknown version, or the ancient "eh" field
    }
    let code_align = c.uleb()?;
    let data_align = c.sleb()?;
    let ra_reg = if version == 1 {
        u64::from(c.u8()?)
    } else {
        c.uleb()?
    };
    if ra_reg != REG_RA {
        return None;
    }
    let mut fde_encoding = DW_EH_PE_ABSPTR;
    let mut signal = false;
    let has_aug_data = aug.first() == Some(&b'z');
    if has_aug_data {
        let len = c.uleb()? as usize;
        let mut a = c.sub(len)?;
        for &ch in &aug[1..] {
            match ch {
                b'R' => fde_encoding = a.u8()?,
                b'L' => {
                    a.u8()?;
                }
                b'P' => {
                    let enc = a.u8()?;
                    a.skip_encoded(enc)?;
                }
                // A signal frame: libgcc knows its rules (but an address past its range
                // is in no frame, which the FDE's range says first).
                b'S' => signal = true,
                // Known to libgcc on other targets, or new: the length covers them.
                _ => break,
            }
        }
        c.skip(len)?;
    } else if !aug.is_empty() {
        return None;
    }
    let cie = Cie {
        code_align,
        data_align,
        fde_encoding,
        signal,
        has_aug_data,
        program: c,
    };
    Some((f, cie))
}

/// The length of the code the FDE at `fde` covers (its address range).
///
/// # Safety
/// As `rule_from_fde`.
unsafe fn fde_len(fde: *const u8) -> Option<usize> {
    // SAFETY: forwarded contract.
    let (mut f, cie) = unsafe { read_fde(fde)? };
    f.skip_encoded(cie.fde_encoding)?;
    usize::try_from(f.unsigned(cie.fde_encoding & 0x0f)?).ok()
}

/// Reads the FDE at `fde` (of a function starting at `func`) and its CIE, and runs their
/// call-frame instructions up to `at`; `None` where they say something unsupported.
///
/// # Safety
/// `fde` points at a well-formed `.eh_frame` FDE header whose declared length, and its
/// CIE's, lie in readable memory.
pub unsafe fn rule_from_fde(fde: *const u8, func: usize, at: usize) -> Option<Rule> {
    // SAFETY: forwarded contract.
    let (mut f, cie) = unsafe { read_fde(fde)? };
    let Cie {
        code_align,
        data_align,
        fde_encoding,
        signal,
        has_aug_data,
        program: mut c,
    } = cie;

    // The FDE: its address range (we have its start, `func`, from the lookup), its
    // augmentation data, then its instructions. An address past the range lies in no
    // function's entry (a gap, a PLT), where libgcc's lookup would find none either.
    f.skip_encoded(fde_encoding)?;
    let range = f.unsigned(fde_encoding & 0x0f)?;
    if at < func || (at - func) as u64 >= range {
        return Some(Rule::End);
    }
    if signal {
        return None;
    }
    if has_aug_data {
        let len = f.uleb()? as usize;
        f.skip(len)?;
    }

    let mut m = Machine {
        code_align,
        data_align,
        initial: State::default(),
        now: State::default(),
        saved: [State::default(); STATE_STACK],
        depth: 0,
        loc: func,
    };
    // The CIE's instructions run to their end; they set the initial rules that
    // `DW_CFA_restore` returns to.
    m.run(&mut c, usize::MAX)?;
    m.initial = m.now;
    if !m.run(&mut f, at)? {
        return None;
    }
    m.now.rule()
}

/// `DW_EH_PE_absptr`: a pointer-sized value (the default FDE encoding).
const DW_EH_PE_ABSPTR: u8 = 0x00;
/// `DW_EH_PE_omit`: no value.
const DW_EH_PE_OMIT: u8 = 0xff;
/// `DW_EH_PE_aligned`: a value aligned to pointer size, which needs the section's
/// address to skip; never emitted for x86-64.
const DW_EH_PE_ALIGNED: u8 = 0x50;

/// What one register's rule says, for the registers the walk follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum Saved {
    /// Unchanged from the caller (also "unspecified", as libgcc treats it).
    #[default]
    Same,
    Undefined,
    /// At `CFA + offset`.
    At(i64),
    /// Anything else: in another register, by an expression, a value rule.
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct State {
    cfa_reg: u64,
    cfa_off: i64,
    cfa_expr: bool,
    rbp: Saved,
    ra: Saved,
    /// `rsp` has a rule of its own (the walk assumes the caller's `rsp` is the CFA).
    rsp_ruled: bool,
}

impl State {
    fn rule(&self) -> Option<Rule> {
        match self.ra {
            Saved::Undefined => return Some(Rule::End),
            Saved::At(_) => {}
            _ => return None,
        }
        if self.cfa_expr || self.rsp_ruled || !(self.cfa_reg == REG_RSP || self.cfa_reg == REG_RBP)
        {
            return None;
        }
        let Saved::At(ra_off) = self.ra else {
            return None;
        };
        let bp_off = match self.rbp {
            Saved::Same => None,
            Saved::At(off) => Some(i16::try_from(off).ok()?),
            _ => return None,
        };
        Some(Rule::Step {
            cfa_from_bp: self.cfa_reg == REG_RBP,
            cfa_off: i32::try_from(self.cfa_off).ok()?,
            ra_off: i8::try_from(ra_off).ok()?,
            bp_off,
        })
    }

    fn set(&mut self, reg: u64, how: Saved) {
        match reg {
            REG_RBP => self.rbp = how,
            REG_RA => self.ra = how,
            REG_RSP => self.rsp_ruled = true,
            _ => {}
        }
    }
}

struct Machine {
    code_align: u64,
    data_align: i64,
    initial: State,
    now: State,
    saved: [State; STATE_STACK],
    depth: usize,
    /// The code address the current row starts at.
    loc: usize,
}

impl Machine {
    /// Runs instructions until the reader ends or the row for `at` is complete (the next
    /// row starts after `at`). `Some(true)`: done; `Some(false)`: a `DW_CFA_set_loc`
    /// (an absolute address, never emitted for x86-64); `None`: unsupported.
    fn run(&mut self, r: &mut Reader, at: usize) -> Option<bool> {
        while !r.done() {
            let op = r.u8()?;
            let (high, low) = (op & 0xc0, u64::from(op & 0x3f));
            match high {
                0x40 => {
                    if self.advance(low, at)? {
                        return Some(true);
                    }
                    continue;
                }
                0x80 => {
                    let off = self.scaled(r.uleb()?)?;
                    self.now.set(low, Saved::At(off));
                    continue;
                }
                0xc0 => {
                    self.restore(low);
                    continue;
                }
                _ => {}
            }
            match op {
                0x00 => {}                  // nop
                0x01 => return Some(false), // set_loc
                0x02 => {
                    let d = u64::from(r.u8()?);
                    if self.advance(d, at)? {
                        return Some(true);
                    }
                }
                0x03 => {
                    let d = u64::from(r.u16()?);
                    if self.advance(d, at)? {
                        return Some(true);
                    }
                }
                0x04 => {
                    let d = u64::from(r.u32()?);
                    if self.advance(d, at)? {
                        return Some(true);
                    }
                }
                0x05 => {
                    // offset_extended
                    let reg = r.uleb()?;
                    let off = self.scaled(r.uleb()?)?;
                    self.now.set(reg, Saved::At(off));
                }
                0x06 => {
                    let reg = r.uleb()?;
                    self.restore(reg);
                }
                0x07 => {
                    let reg = r.uleb()?;
                    self.now.set(reg, Saved::Undefined);
                }
                0x08 => {
                    let reg = r.uleb()?;
                    self.now.set(reg, Saved::Same);
                }
                0x09 => {
                    // register: saved in another register
                    let reg = r.uleb()?;
                    r.uleb()?;
                    self.now.set(reg, Saved::Other);
                }
                0x0a => {
                    *self.saved.get_mut(self.depth)? = self.now;
                    self.depth += 1;
                }
                0x0b => {
                    self.depth = self.depth.checked_sub(1)?;
                    self.now = self.saved[self.depth];
                }
                0x0c => {
                    // def_cfa
                    self.now.cfa_reg = r.uleb()?;
                    self.now.cfa_off = i64::try_from(r.uleb()?).ok()?;
                    self.now.cfa_expr = false;
                }
                0x0d => {
                    self.now.cfa_reg = r.uleb()?;
                    self.now.cfa_expr = false;
                }
                0x0e => self.now.cfa_off = i64::try_from(r.uleb()?).ok()?,
                0x0f => {
                    // def_cfa_expression
                    let len = r.uleb()? as usize;
                    r.skip(len)?;
                    self.now.cfa_expr = true;
                }
                0x10 | 0x16 => {
                    // expression, val_expression
                    let reg = r.uleb()?;
                    let len = r.uleb()? as usize;
                    r.skip(len)?;
                    self.now.set(reg, Saved::Other);
                }
                0x11 => {
                    // offset_extended_sf
                    let reg = r.uleb()?;
                    let off = r.sleb()?.checked_mul(self.data_align)?;
                    self.now.set(reg, Saved::At(off));
                }
                0x12 => {
                    // def_cfa_sf
                    self.now.cfa_reg = r.uleb()?;
                    self.now.cfa_off = r.sleb()?.checked_mul(self.data_align)?;
                    self.now.cfa_expr = false;
                }
                0x13 => self.now.cfa_off = r.sleb()?.checked_mul(self.data_align)?,
                0x14 => {
                    // val_offset: the value is an address, not a saved slot
                    let reg = r.uleb()?;
                    r.uleb()?;
                    self.now.set(reg, Saved::Other);
                }
                0x15 => {
                    // val_offset_sf
                    let reg = r.uleb()?;
                    r.sleb()?;
                    self.now.set(reg, Saved::Other);
                }
                0x2e => {
                    // GNU_args_size: for landing pads only
                    r.uleb()?;
                }
                0x2f => {
                    // GNU_negative_offset_extended
                    let reg = r.uleb()?;
                    let off = self.scaled(r.uleb()?)?;
                    self.now.set(reg, Saved::At(off.checked_neg()?));
                }
                _ => return None,
            }
        }
        Some(true)
    }

    /// Moves to the next row; true if that row starts after `at` (the current row is
    /// the one that covers `at`).
    fn advance(&mut self, delta: u64, at: usize) -> Option<bool> {
        let next = self
            .loc
            .checked_add(usize::try_from(delta.checked_mul(self.code_align)?).ok()?)?;
        if next > at {
            return Some(true);
        }
        self.loc = next;
        Some(false)
    }

    fn scaled(&self, factored: u64) -> Option<i64> {
        i64::try_from(factored).ok()?.checked_mul(self.data_align)
    }

    fn restore(&mut self, reg: u64) {
        match reg {
            REG_RBP => self.now.rbp = self.initial.rbp,
            REG_RA => self.now.ra = self.initial.ra,
            REG_RSP => self.now.rsp_ruled = self.initial.rsp_ruled,
            _ => {}
        }
    }
}

/// Bounded reads of an `.eh_frame` entry.
struct Reader {
    p: *const u8,
    end: *const u8,
}

impl Reader {
    /// The body of the CIE or FDE at `entry` (after its 4-byte length).
    ///
    /// # Safety
    /// `entry` starts a well-formed entry in readable memory.
    unsafe fn entry(entry: *const u8) -> Option<Reader> {
        // SAFETY: the caller's contract covers the length field.
        let len = unsafe { entry.cast::<u32>().read_unaligned() };
        if len == 0 || len == u32::MAX {
            return None; // a terminator, or the 64-bit format (never used for .eh_frame)
        }
        // SAFETY: the declared length lies inside the entry's section.
        let body = unsafe { entry.add(4) };
        Some(Reader {
            p: body,
            // SAFETY: as above.
            end: unsafe { body.add(len as usize) },
        })
    }

    fn done(&self) -> bool {
        self.p >= self.end
    }

    fn left(&self) -> usize {
        self.end as usize - self.p as usize
    }

    fn bytes(&mut self, n: usize) -> Option<*const u8> {
        if n > self.left() {
            return None;
        }
        let at = self.p;
        // SAFETY: `n` bytes remain before `end`.
        self.p = unsafe { self.p.add(n) };
        Some(at)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(|_| ())
    }

    /// A reader of the next `n` bytes.
    fn sub(&self, n: usize) -> Option<Reader> {
        (n <= self.left()).then(|| Reader {
            p: self.p,
            // SAFETY: `n` bytes remain before `end`.
            end: unsafe { self.p.add(n) },
        })
    }

    fn u8(&mut self) -> Option<u8> {
        // SAFETY: `bytes` checked the byte is inside the entry.
        self.bytes(1).map(|p| unsafe { p.read() })
    }

    fn u16(&mut self) -> Option<u16> {
        // SAFETY: as in `u8`, for two bytes.
        self.bytes(2)
            .map(|p| unsafe { p.cast::<u16>().read_unaligned() })
    }

    fn u32(&mut self) -> Option<u32> {
        // SAFETY: as in `u8`, for four bytes.
        self.bytes(4)
            .map(|p| unsafe { p.cast::<u32>().read_unaligned() })
    }

    fn uleb(&mut self) -> Option<u64> {
        let (mut value, mut shift) = (0u64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                value |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
    }

    fn sleb(&mut self) -> Option<i64> {
        let (mut value, mut shift) = (0i64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                value |= i64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                return Some(value);
            }
        }
    }

    /// A NUL-terminated string (the CIE's augmentation), without its NUL.
    fn cstr(&mut self) -> Option<&'static [u8]> {
        let start = self.p;
        let mut n = 0;
        while self.u8()? != 0 {
            n += 1;
        }
        // SAFETY: the `n` bytes were just read inside the entry, which lives as long as
        // its object stays loaded (the walk runs while the caller's code is mapped).
        Some(unsafe { core::slice::from_raw_parts(start, n) })
    }

    /// An unsigned value in format `fmt` (the low four bits of a `DW_EH_PE_*`
    /// encoding), as an FDE's address range is written.
    fn unsigned(&mut self, fmt: u8) -> Option<u64> {
        match fmt {
            0x00 | 0x04 | 0x0c => {
                let lo = u64::from(self.u32()?);
                Some(lo | u64::from(self.u32()?) << 32)
            }
            0x02 | 0x0a => self.u16().map(u64::from),
            0x03 | 0x0b => self.u32().map(u64::from),
            0x01 => self.uleb(),
            _ => None,
        }
    }

    /// Skips a value in pointer encoding `enc` (`DW_EH_PE_*`: its low four bits give the
    /// format, the high ones only how the value is applied).
    fn skip_encoded(&mut self, enc: u8) -> Option<()> {
        if enc == DW_EH_PE_OMIT {
            return Some(());
        }
        if enc & 0x70 == DW_EH_PE_ALIGNED {
            return None;
        }
        match enc & 0x0f {
            0x00 | 0x04 | 0x0c => self.skip(8),
            0x02 | 0x0a => self.skip(2),
            0x03 | 0x0b => self.skip(4),
            0x01 => self.uleb().map(|_| ()),
            0x09 => self.sleb().map(|_| ()),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A CIE as GCC and LLVM emit it for x86-64 ("zR", code align 1, data align -8,
    /// return address column 16, FDE addresses in `fde_encoding`, CFA = rsp + 8, return
    /// address at CFA - 8): its body, after the length word. Also `stack`'s tests'.
    pub(in crate::prof) fn cie_body(fde_encoding: u8) -> Vec<u8> {
        vec![
            0,
            0,
            0,
            0, // CIE id
            1, // version
            b'z',
            b'R',
            0,    // augmentation
            1,    // code alignment
            0x78, // data alignment -8
            16,   // return address column
            1,    // augmentation length
            fde_encoding,
            0x0c,
            7,
            8, // def_cfa rsp+8
            0x90,
            1, // offset r16 at cfa-8
            0,
            0, // padding
        ]
    }

    /// `cie_body`'s CIE with pc-relative sdata4 pointers, followed by an FDE with `body`
    /// as its instructions. Returns the bytes and the FDE's offset in them.
    fn section(fde_aug_len: u8, body: &[u8]) -> (Vec<u8>, usize) {
        let cie_body = cie_body(0x1b);
        let mut s = Vec::new();
        s.extend_from_slice(&(cie_body.len() as u32).to_le_bytes());
        s.extend_from_slice(&cie_body);
        let fde_at = s.len();
        let mut fde_body = Vec::new();
        fde_body.extend_from_slice(&((fde_at + 4) as u32).to_le_bytes()); // back to the CIE
        fde_body.extend_from_slice(&0u32.to_le_bytes()); // pc_begin (ignored: libgcc's)
        fde_body.extend_from_slice(&0x100u32.to_le_bytes()); // pc_range
        fde_body.push(fde_aug_len);
        fde_body.extend(core::iter::repeat_n(0, fde_aug_len as usize));
        fde_body.extend_from_slice(body);
        s.extend_from_slice(&(fde_body.len() as u32).to_le_bytes());
        s.extend_from_slice(&fde_body);
        s.extend_from_slice(&0u32.to_le_bytes()); // terminator
        (s, fde_at)
    }

    fn rule(s: &[u8], fde_at: usize, func: usize, at: usize) -> Option<Rule> {
        // SAFETY: a well-formed section built by `section`.
        unsafe { rule_from_fde(s.as_ptr().add(fde_at), func, at) }
    }

    fn step(cfa_from_bp: bool, cfa_off: i32, bp_off: Option<i16>) -> Option<Rule> {
        Some(Rule::Step {
            cfa_from_bp,
            cfa_off,
            ra_off: -8,
            bp_off,
        })
    }

    /// A frame-pointer prologue and an epilogue inside the body, as GCC writes them:
    /// push rbp (1 byte), mov rbp, rsp (3 bytes), ... remember; leave at 0x20; ret;
    /// restore.
    #[test]
    fn follows_prologue_body_and_epilogue() {
        let body = [
            0x41, // advance 1
            0x0e, 16, // def_cfa_offset 16
            0x86, 2,    // offset rbp at cfa-16
            0x43, // advance 3
            0x0d, 6,    // def_cfa_register rbp
            0x5c, // advance 0x1c (to 0x20)
            0x0a, // remember_state
            0x0c, 7, 8,    // def_cfa rsp+8 (after leave)
            0xc6, // restore rbp
            0x41, // advance 1 (to 0x21)
            0x0b, // restore_state
        ];
        let (s, at) = section(0, &body);
        let f = 0x1000;
        assert_eq!(rule(&s, at, f, f), step(false, 8, None));
        assert_eq!(rule(&s, at, f, f + 1), step(false, 16, Some(-16)));
        assert_eq!(rule(&s, at, f, f + 3), step(false, 16, Some(-16)));
        assert_eq!(rule(&s, at, f, f + 4), step(true, 16, Some(-16)));
        assert_eq!(rule(&s, at, f, f + 0x1f), step(true, 16, Some(-16)));
        assert_eq!(rule(&s, at, f, f + 0x20), step(false, 8, None));
        assert_eq!(rule(&s, at, f, f + 0x21), step(true, 16, Some(-16)));
        assert_eq!(rule(&s, at, f, f + 0xff), step(true, 16, Some(-16)));
    }

    /// Frames the walk leaves to libgcc, and the end of the stack.
    #[test]
    fn unsupported_rules_and_the_end() {
        let f = 0x1000;
        // def_cfa_expression (a PLT-style rule).
        let (s, at) = section(0, &[0x0f, 2, 0x77, 8]);
        assert_eq!(rule(&s, at, f, f), None);
        // rbp saved in another register.
        let (s, at) = section(0, &[0x09, 6, 3]);
        assert_eq!(rule(&s, at, f, f), None);
        // The CFA from rbx.
        let (s, at) = section(0, &[0x0d, 3]);
        assert_eq!(rule(&s, at, f, f), None);
        // An unknown opcode.
        let (s, at) = section(0, &[0x3f]);
        assert_eq!(rule(&s, at, f, f), None);
        // A return address marked undefined, as `_start` does.
        let (s, at) = section(0, &[0x07, 16]);
        assert_eq!(rule(&s, at, f, f), Some(Rule::End));
        // Instructions cut short.
        let (s, at) = section(0, &[0x0c, 7]);
        assert_eq!(rule(&s, at, f, f), None);
        // FDE augmentation data is skipped; large frames take a multi-byte offset.
        let (s, at) = section(3, &[0x0e, 0x90, 0x4e]);
        assert_eq!(rule(&s, at, f, f), step(false, 10000, None));
    }

    /// The rule of this very function, from the real tables: a Rust function's CFA
    /// is found from `rsp` (no frame pointers) or `rbp`, with the return address at
    /// CFA - 8.
    #[test]
    fn reads_the_real_tables() {
        let here = reads_the_real_tables as *const () as usize;
        match rule_at(here + 1) {
            (Rule::Step { ra_off, .. }, true) => assert_eq!(ra_off, -8),
            other => panic!("{other:?}"),
        }
        assert_eq!(rule_at(8).0, Rule::End);
    }

    /// The lookup without libgcc, through `_dl_find_object` and through `dl_iterate_phdr`
    /// (the path of glibc before 2.35 and static programs), then `.eh_frame_hdr`, gives
    /// libgcc's rule at every address sampled across this test program's code and the C
    /// library's (function starts, bodies, epilogues, gaps between functions), and ends
    /// the walk inside libgcc and inside `_Unwind_Find_FDE`.
    #[test]
    fn object_lookup_matches_libgccs() {
        init(false);
        let dl_find_object = DL_FIND_OBJECT.load(Ordering::Acquire);
        assert_ne!(dl_find_object, 0, "glibc 2.35+ expected");
        let here = object_lookup_matches_libgccs as *const () as usize;
        let libc_code = libc::qsort as *const () as usize;
        for find in [dl_find_object, 0] {
            let mut compared = 0;
            for centre in [here, libc_code] {
                // 7: odd, so the addresses fall at every offset within instructions;
                // 11 for the slower `dl_iterate_phdr` search.
                let step = if find == 0 { 11 } else { 7 };
                for at in (centre.saturating_sub(1 << 20)..centre + (1 << 20)).step_by(step) {
                    let Lookup::Found(mine) = lookup_in(at, find) else {
                        continue;
                    };
                    assert_eq!(mine, rule_by_libgcc(at), "at {at:#x} (find {find:#x})");
                    compared += 1;
                }
            }
            assert!(compared > 50_000, "{compared}");
        }
        let libgcc = libgcc::find_fde_address();
        assert_eq!(lookup(libgcc + 1), Lookup::Found(Rule::End));
        let (start, end) = (
            FIND_FDE_START.load(Ordering::Relaxed),
            FIND_FDE_END.load(Ordering::Relaxed),
        );
        assert!(start <= libgcc && libgcc < end, "{start:#x}..{end:#x}");
        // Code in no object: libgcc's, not to be cached.
        assert_eq!(rule_at(8), (Rule::End, false));
        assert_eq!(lookup_in(8, 0), Lookup::NoObject);
    }
}
