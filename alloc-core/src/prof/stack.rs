//! Call-stack capture from the unwind tables, without frame pointers: works on code
//! built with `-fomit-frame-pointer` (Debian's C programs) because it reads the
//! `.eh_frame` CFI that x86-64 compilers emit by default. Owns the walk, a process-wide
//! cache of call-frame rules keyed by code address, and the fallback to libgcc's
//! `_Unwind_Backtrace`; calls `cfi` (rules from the unwind tables) and `libgcc` (the
//! unwinder: the program's, else ours).
//!
//! Cost. libgcc's walk costs about 1.4k-3k instructions per frame (the FDE lookup,
//! interpreting the CIE and FDE programs, updating a context of every register), about
//! 19k per sample. Here, each return address's rule (`cfi::Rule`: CFA from `rsp` or
//! `rbp` plus an offset, where the return address and `rbp` are saved) is worked out
//! once and cached, so a frame costs a hash probe and two loads once the program's call
//! sites have been seen. A frame whose rule the walk cannot follow (a signal frame, a
//! CFA expression) hands the whole walk to libgcc, whose frames are then the result.
//!
//! Safety of the walk: it reads only the slots the unwind tables name in the frames of
//! the calling thread's stack (as libgcc does), and gives up where a step would not
//! move up the stack or would leave it: every read lies between the frame's `sp` and
//! the end of the stack it runs on (the thread's, its mapping asked of the kernel once
//! per thread, or the alternate signal stack), so wrong rules or a corrupt `rbp` end the
//! walk rather than read another mapping (libgcc has no such bound). A stack neither
//! of those (a coroutine's, a fiber's: `makecontext`, green threads) has no bound we
//! can ask for without allocating, so there the walk is bounded differently
//! (`Probed`): every page it reads is first checked readable with one
//! `process_vm_readv` of the process itself (a syscall that fails with `EFAULT` instead
//! of faulting), the walk stays within `FOREIGN_STACK_BYTES` above `sp`, and a frame it
//! cannot follow ends it (it is never handed to libgcc, whose walk reads wherever the
//! frames point: `heap_profile`'s coroutine test crashed there).
//!
//! Nothing here allocates or locks on a cached frame; a missed frame in a loaded
//! object is looked up by `cfi` without libgcc (glibc's lock-free `_dl_find_object` on
//! 2.35+, else `dl_iterate_phdr`), and the walk ends at a frame inside libgcc or in
//! `_Unwind_Find_FDE`, so a malloc libgcc makes while holding its FDE mutex is never
//! walked back into libgcc. Only code outside every object (JIT frames) calls libgcc's
//! `_Unwind_Find_FDE`, under the profiler's busy flag and the allocator's re-entrancy
//! guard, so whatever it allocates on a first call neither samples nor recurses. The
//! cache takes no lock (a seqlock per slot whose writers never wait), so a `fork` in the
//! middle of a write leaves at worst one slot unusable in the child.
//!
//! Unloaded code: a cached rule is keyed by its address and by how many objects the
//! process had unloaded (`dl_iterate_phdr`'s `dlpi_subs`, read once per walk, as
//! libunwind does), so after a `dlclose`, code loaded later at a cached address is
//! walked with its own rule, not the old code's (which read far outside the stack:
//! `heap_profile`'s dlclose test). Code in no loaded object (a JIT's, described by
//! `__register_frame` entries) is never cached, since a JIT may free it and put other
//! code there without any count changing: each walk asks libgcc for its rule again
//! (`code_in_no_object_is_looked_up_on_every_walk`), which costs a lookup under
//! libgcc's mutex per such frame per sample, in JIT programs only.

#[cfg(target_arch = "x86_64")]
use core::cell::Cell;
use core::ffi::{c_int, c_void};

#[cfg(target_arch = "x86_64")]
use super::cfi::{self, Rule};
use super::libgcc::{self, GetIpFn, UnwindContext};
#[cfg(target_arch = "x86_64")]
use crate::sync::atomic::{fence, AtomicU64, Ordering};

/// The deepest stack kept (jemalloc keeps 128; 64 frames hold every realistic call
/// chain above `malloc` and keep a stack-table entry at about half a KiB).
pub const MAX_FRAMES: usize = 64;

/// Fills `frames` with the return addresses of the calling stack, innermost first,
/// leaving out this function and the `skip` frames above it; returns the depth. The
/// same frames as `_Unwind_Backtrace` would give from here.
#[inline(never)]
pub fn capture(frames: &mut [usize; MAX_FRAMES], skip: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // Read before `regs`: every frame the walk visits was entered before this.
        if let Some(unloads) = unloads() {
            let regs = Regs::here();
            // `regs` describe this frame, which stays alive while `walk` runs, on the
            // stack that ends at `top`.
            match stack_top(regs.sp) {
                Some(top) => {
                    if let Ok(depth) = walk(regs, unloads, top, frames, skip + 1, &mut OnStack) {
                        return depth;
                    }
                }
                // A stack we cannot bound: every page checked, and the frames found up
                // to one the walk cannot follow are the result.
                None => {
                    let top = regs.sp.saturating_add(FOREIGN_STACK_BYTES);
                    let mut probed = Probed::new(regs.sp);
                    let (Ok(depth) | Err(depth)) =
                        walk(regs, unloads, top, frames, skip + 1, &mut probed);
                    return depth;
                }
            }
        }
    }
    // Not a tail call: libgcc's walk starts in this frame, skipped by count.
    core::hint::black_box(libgcc_capture(frames, skip + 1))
}

// ---- the cached walk (x86-64) ---------------------------------------------------------

/// A frame's registers that call-frame rules refer to.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Regs {
    /// The frame's code address: a return address, or for the first frame the exact
    /// address its `rsp` and `rbp` were read at.
    pc: usize,
    sp: usize,
    bp: usize,
}

#[cfg(target_arch = "x86_64")]
impl Regs {
    /// The caller's registers, read at one instruction of the caller (inlined there).
    #[inline(always)]
    fn here() -> Regs {
        let (pc, sp, bp): (usize, usize, usize);
        // SAFETY: reads three registers; touches no memory, no stack, no flags. `pc` is
        // the address of the `mov` that reads `rsp`, so the unwind tables' row at `pc`
        // describes exactly the `rsp` read (an asm block moves no stack pointer).
        unsafe {
            core::arch::asm!(
                "lea {pc}, [rip + 2f]",
                "2:",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                pc = out(reg) pc,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags),
            );
        }
        Regs { pc, sp, bp }
    }
}

/// A walk never steps further up the stack than this in one frame: no frame is a GiB.
/// A larger step means the rules and the stack disagree (hand-written code with wrong
/// CFI), and the walk stops there rather than read far away.
#[cfg(target_arch = "x86_64")]
const MAX_FRAME_BYTES: usize = 1 << 30;

/// How many shared objects the process has unloaded so far (`dlpi_subs`), or `None` if
/// the C library does not say. While it is unchanged, the code at an address that was
/// loaded when a rule was cached is still the code the rule describes.
#[cfg(target_arch = "x86_64")]
fn unloads() -> Option<u64> {
    extern "C" fn first(info: *mut libc::dl_phdr_info, size: usize, out: *mut c_void) -> c_int {
        // `dlpi_subs` is there when the struct the library passes is long enough.
        if size >= core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            // SAFETY: `info` is valid for `size` bytes during the callback, and `out` is
            // the `Option<u64>` that `unloads` passed and owns.
            unsafe { *(out as *mut Option<u64>) = Some((*info).dlpi_subs) };
        }
        1 // the count is the same for every object: stop after the first
    }
    let mut subs: Option<u64> = None;
    // SAFETY: the callback matches dl_iterate_phdr's signature and `subs` outlives the
    // call. It takes the loader's (recursive) write lock, as libgcc's FDE lookup does
    // on glibc before 2.35, under the same busy flag and re-entrancy guard.
    unsafe { libc::dl_iterate_phdr(Some(first), &mut subs as *mut Option<u64> as *mut c_void) };
    subs
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// This thread's stack, `[low, high)`, from `thread_stack` at its first sample;
    /// `(0, 0)` until then, `(0, 1)` if it could not be told (the kernel could not say,
    /// or that sample ran on another stack: this thread's walks are then `Probed`).
    /// `const`, no Drop: nothing registered with the C library (see DESIGN's hazards).
    static STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// An address near the top of the initial thread's stack, set at start-up (glibc's
/// `__libc_stack_end`, in `ld.so`); 0 where the C library has none.
#[cfg(target_arch = "x86_64")]
fn libc_stack_end() -> usize {
    #[cfg(target_env = "gnu")]
    {
        extern "C" {
            static __libc_stack_end: *const c_void;
        }
        // SAFETY: glibc's variable, set once before any code of the program runs.
        unsafe { __libc_stack_end as usize }
    }
    #[cfg(not(target_env = "gnu"))]
    0
}

/// The end (one past the highest byte) of the stack that `sp` lies on: the thread's
/// own stack, or the alternate signal stack a handler runs on. `None` for a stack this
/// cannot bound (a coroutine's or fiber's, made by the program): that walk checks each
/// page it reads (`Probed`).
///
/// The thread's range is read on its first sample (`thread_stack`), and again when `sp`
/// is just below it on the initial thread's stack, which grows.
/// `sigaltstack` is a syscall, asked only when `sp` is outside the thread's stack.
#[cfg(target_arch = "x86_64")]
fn stack_top(sp: usize) -> Option<usize> {
    let (mut low, mut high) = STACK.with(|s| s.get());
    if high == 0 || (sp < low && low - sp <= STACK_GROWTH && high == initial_stack_end()) {
        (low, high) = thread_stack(sp).unwrap_or((0, 1));
        STACK.with(|s| s.set((low, high)));
    }
    // At least a word between `sp` and the end: `walk` relies on it.
    if low <= sp && sp <= high.saturating_sub(8) {
        return Some(high);
    }
    // SAFETY: `stack_t` is plain data; all zeroes is a valid value to be overwritten.
    let mut alt: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: a null new stack only reads the current one into `alt`, which we own.
    if unsafe { libc::sigaltstack(core::ptr::null(), &mut alt) } == 0
        && alt.ss_flags & libc::SS_ONSTACK != 0
    {
        let (low, high) = (alt.ss_sp as usize, alt.ss_sp as usize + alt.ss_size);
        if low <= sp && sp <= high.saturating_sub(8) {
            return Some(high);
        }
    }
    None
}

/// The calling thread's stack `[low, high)`, where `sp` lies: for the initial thread,
/// the mapping holding `__libc_stack_end`; for a thread glibc started, the mapping
/// holding its thread descriptor (`pthread_self()`), up to the descriptor, which glibc
/// puts at the top of the thread's stack, and only if nothing readable lies below that
/// mapping (glibc's guard page, or a gap): a stack without a guard page can share its
/// mapping with a coroutine's stack mapped next to it, or lie in a bigger mapping
/// (`pthread_attr_setstack` on allocated memory), and such a range would pass another
/// stack off as this one (review19b H1). `None` when `sp` is in neither, or the kernel
/// cannot say: that thread's walks check every page they read (`Probed`).
///
/// Not `pthread_getattr_np`: it holds the thread's lock while it allocates (the
/// initial thread's stack is read from `/proc/self/maps` through stdio, every thread's
/// CPU set is `realloc`ed), so a sample taken inside it waited on that lock forever
/// (review19 H1). `maps` allocates nothing and takes no lock of the C library.
#[cfg(target_arch = "x86_64")]
fn thread_stack(sp: usize) -> Option<(usize, usize)> {
    let holds_sp = |&(low, high): &(usize, usize)| low <= sp && sp < high;
    let initial = libc_stack_end();
    if initial != 0 {
        if let Some(stack) = crate::os::maps::mapping_of(initial).filter(holds_sp) {
            return Some(stack);
        }
    }
    // SAFETY: no preconditions; returns the calling thread's descriptor.
    let descriptor = unsafe { libc::pthread_self() } as usize;
    let (low, end) = crate::os::maps::mapping_of(descriptor)?;
    Some((low, end.min(descriptor)))
        .filter(holds_sp)
        .filter(|&(low, _)| crate::os::maps::closed_below(low))
}

/// The end of the initial thread's stack mapping as last seen (0 if unknown), so that
/// `stack_top` tells that stack's growth from a stack elsewhere.
#[cfg(target_arch = "x86_64")]
fn initial_stack_end() -> usize {
    let at = libc_stack_end();
    // Relaxed: a hint read and written whole; a stale 0 only costs a lookup.
    match INITIAL_STACK_END.load(Ordering::Relaxed) {
        0 if at != 0 => {
            let end = crate::os::maps::mapping_of(at).map_or(0, |(_, end)| end);
            INITIAL_STACK_END.store(end, Ordering::Relaxed);
            end
        }
        end => end,
    }
}

/// How far below its last known start `sp` may be for `stack_top` to ask whether the
/// initial thread's stack grew there: within the usual stack limit's reach, so a
/// coroutine's stack of the main thread mapped further away costs no lookup per sample
/// (one mapped nearer, which address randomisation allows, costs two per sample, and
/// may leave the thread's cached range unknown: its walks are then `Probed`).
#[cfg(target_arch = "x86_64")]
const STACK_GROWTH: usize = 64 << 20;

/// See `initial_stack_end`.
#[cfg(target_arch = "x86_64")]
static INITIAL_STACK_END: crate::sync::atomic::AtomicUsize =
    crate::sync::atomic::AtomicUsize::new(0);

/// How far above `sp` a walk on a stack we cannot bound may read: 8 MiB, the usual
/// main-thread stack limit (`ulimit -s`), above any coroutine stack's usual size
/// (`makecontext` users and coroutine libraries allocate 64 KiB to 1 MiB). Only a
/// bound on garbage: every page read is checked (`Probed`), and `MAX_FRAMES` bounds the
/// frames.
#[cfg(target_arch = "x86_64")]
const FOREIGN_STACK_BYTES: usize = 8 << 20;

/// Which words of `[sp, top)` a walk may read without checking them first.
#[cfg(target_arch = "x86_64")]
trait Readable {
    /// Whether the aligned word at `at` (inside `[sp, top)`) can be read.
    fn readable(&mut self, at: usize) -> bool;
}

/// On the thread's own stack or the alternate signal stack: all of `[sp, top)` is the
/// live stack, readable without a check (inlined away: the walk is as without it).
#[cfg(target_arch = "x86_64")]
struct OnStack;

#[cfg(target_arch = "x86_64")]
impl Readable for OnStack {
    #[inline(always)]
    fn readable(&mut self, _at: usize) -> bool {
        true
    }
}

/// Checking granule of `Probed`: 4 KiB, the smallest page size on x86-64, so a
/// granule never spans two mappings (on larger pages it only probes more often).
#[cfg(target_arch = "x86_64")]
const PROBE_GRANULE: usize = 4096;

/// On a stack we cannot bound: a granule is read only after one `process_vm_readv` of
/// a word of it succeeded (a syscall that fails with `EFAULT` on memory that is not
/// mapped readable, instead of faulting, and allocates nothing). The granules known
/// readable are kept as one run `[low, high]`: reads move up the stack, so a walk
/// pays one syscall per granule it reaches (a few per sample), on these stacks only.
/// The granule holding the first frame's `sp` is known readable: the walk runs on it.
#[cfg(target_arch = "x86_64")]
struct Probed {
    low: usize,
    high: usize,
}

#[cfg(target_arch = "x86_64")]
impl Probed {
    fn new(sp: usize) -> Probed {
        let granule = sp & !(PROBE_GRANULE - 1);
        Probed {
            low: granule,
            high: granule,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Readable for Probed {
    fn readable(&mut self, at: usize) -> bool {
        let granule = at & !(PROBE_GRANULE - 1);
        if self.low <= granule && granule <= self.high {
            return true;
        }
        if !probe(at) {
            return false;
        }
        if granule == self.high + PROBE_GRANULE {
            self.high = granule;
        } else {
            (self.low, self.high) = (granule, granule);
        }
        true
    }
}

/// Whether the word at `at` can be read, asked of the kernel: `process_vm_readv` from
/// this process into itself copies it, or fails (`EFAULT` where nothing readable is
/// mapped; `EPERM`/`ENOSYS` where a sandbox forbids the call, which then ends every
/// walk on such a stack at its first unchecked granule).
#[cfg(target_arch = "x86_64")]
fn probe(at: usize) -> bool {
    let mut word = 0usize;
    let local = libc::iovec {
        iov_base: (&mut word as *mut usize).cast(),
        iov_len: core::mem::size_of::<usize>(),
    };
    let remote = libc::iovec {
        iov_base: at as *mut c_void,
        iov_len: core::mem::size_of::<usize>(),
    };
    // SAFETY: the kernel writes at most one word into `word`, which we own, and reads
    // `at` through the page tables, failing instead of faulting where it is not mapped.
    let copied = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    copied == core::mem::size_of::<usize>() as isize
}

/// Walks up from `regs` (a live frame of the calling thread, on a stack that ends at
/// `top`) with the rules cached for `unloads` (see `unloads`); `Err` with the frames
/// found so far if some frame needs libgcc. Every word it reads lies between the
/// frame's `sp` and `top`, and is `readable`: a frame whose rules point elsewhere
/// (wrong CFI in hand-written or JIT code, a corrupt `rbp`) ends the walk there instead
/// of reading another mapping, or none.
#[cfg(target_arch = "x86_64")]
fn walk(
    mut regs: Regs,
    unloads: u64,
    top: usize,
    frames: &mut [usize; MAX_FRAMES],
    mut skip: usize,
    check: &mut impl Readable,
) -> Result<usize, usize> {
    let mut depth = 0;
    // The first frame's rule is the row at its exact address; a caller's is the row of
    // its call instruction, one byte before the return address (libgcc's lookup).
    let mut at = regs.pc;
    loop {
        if regs.pc == 0 {
            break;
        }
        if skip > 0 {
            skip -= 1;
        } else {
            frames[depth] = regs.pc;
            depth += 1;
            if depth == MAX_FRAMES {
                break;
            }
        }
        let (cfa_from_bp, cfa_off, ra_off, bp_off) = match rule(at, unloads) {
            Rule::Step {
                cfa_from_bp,
                cfa_off,
                ra_off,
                bp_off,
            } => (cfa_from_bp, cfa_off, ra_off, bp_off),
            Rule::End => break,
            Rule::Unsupported => return Err(depth),
        };
        let base = if cfa_from_bp { regs.bp } else { regs.sp };
        let cfa = base.wrapping_add_signed(cfa_off as isize);
        // The caller's frame lies above this one, on this stack, at most a frame's
        // length away; anything else is not a stack we read. `step - 1` wraps for a
        // CFA at or below `sp`, so one compare tests both ends.
        // `regs.sp <= top - 8` holds for the first frame (`stack_top`) and then for
        // every CFA this lets through, so `room` does not wrap.
        let step = cfa.wrapping_sub(regs.sp);
        let room = (top - 8 - regs.sp).min(MAX_FRAME_BYTES);
        if (step.wrapping_sub(1) >= room) | !cfa.is_multiple_of(8) {
            break;
        }
        let Some(ra) = read_stack(cfa, ra_off.into(), regs.sp, top, check) else {
            break;
        };
        let bp = match bp_off {
            Some(off) => match read_stack(cfa, off.into(), regs.sp, top, check) {
                Some(bp) => bp,
                None => break,
            },
            None => regs.bp,
        };
        regs = Regs {
            pc: ra,
            sp: cfa,
            bp,
        };
        at = ra.wrapping_sub(1);
    }
    Ok(depth)
}

/// The word at `cfa + off` if it lies in `[sp, top)`, the stack from the current frame
/// up (`None` otherwise), is aligned and `check` says it is readable. `sp <= top - 8`
/// (see `walk`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn read_stack(
    cfa: usize,
    off: isize,
    sp: usize,
    top: usize,
    check: &mut impl Readable,
) -> Option<usize> {
    let at = cfa.wrapping_add_signed(off);
    // `at - sp` wraps for an `at` below `sp`, so one compare tests both ends; one
    // branch for both tests (this runs twice per frame of every sample).
    if (at.wrapping_sub(sp) > top - 8 - sp) | !at.is_multiple_of(8) || !check.readable(at) {
        return None;
    }
    // SAFETY: `[sp, top)` is the live part of the stack the walk runs on (`stack_top`),
    // from the frame being walked to the stack's end, which outlives the walk, or a
    // word `check` found readable (`Probed`, on a stack we cannot bound); `at` is an
    // aligned word inside it. Volatile: the compiler knows nothing of these frames.
    Some(unsafe { core::ptr::read_volatile(at as *const usize) })
}

/// Slots in the rule cache: 4096, 128 KiB of zeroed static memory, touched only while
/// profiling. A program's distinct allocating call sites number in the hundreds to a
/// few thousand (the stack table keeps 16K whole stacks); a slot lost to a collision
/// costs one libgcc FDE lookup when its address comes again.
#[cfg(target_arch = "x86_64")]
const CACHE_SLOTS: usize = 1 << 12;

/// One cached rule: the rule at code address `at` while `unloads` objects had been
/// unloaded. `seq` is odd while a writer fills the slot; readers that see it odd, or
/// changed across their read, treat the slot as a miss.
#[cfg(target_arch = "x86_64")]
struct Slot {
    seq: AtomicU64,
    at: AtomicU64,
    unloads: AtomicU64,
    rule: AtomicU64,
}

#[cfg(target_arch = "x86_64")]
static CACHE: [Slot; CACHE_SLOTS] = [const {
    Slot {
        seq: AtomicU64::new(0),
        at: AtomicU64::new(0),
        unloads: AtomicU64::new(0),
        rule: AtomicU64::new(0),
    }
}; CACHE_SLOTS];

#[cfg(target_arch = "x86_64")]
fn slot_of(at: usize) -> &'static Slot {
    // Fibonacci hashing: call sites are close together and not aligned.
    let h = (at as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CACHE_SLOTS.trailing_zeros());
    &CACHE[h as usize]
}

/// The rule at `at`, from the cache or worked out (and cached); `unloads` as read at
/// the start of the walk.
///
/// Inlined into both walks (`OnStack`, `Probed`): called out of line, each frame paid
/// about 70 instructions more (callgrind, pairs probe with `prof_sample=1`: +350 per
/// sample). The miss is out of line (`rule_missed`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rule(at: usize, unloads: u64) -> Rule {
    let slot = slot_of(at);
    // Acquire: pairs with the writer's Release store of the even `seq`, so the `at` and
    // `rule` read after it are at least that write's.
    let seq = slot.seq.load(Ordering::Acquire);
    if seq & 1 == 0 && seq != 0 {
        // Relaxed: ordered by the fences around them (seqlock reader).
        let key = slot.at.load(Ordering::Relaxed);
        let key_unloads = slot.unloads.load(Ordering::Relaxed);
        let packed = slot.rule.load(Ordering::Relaxed);
        // Acquire fence: the loads above happen before the re-check of `seq`, so an
        // unchanged `seq` means no writer overlapped them.
        fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) == seq && key == at as u64 && key_unloads == unloads {
            return unpack(packed);
        }
    }
    rule_missed(at, unloads, slot, seq)
}

/// `rule` when the cache has no usable entry: works the rule out and caches it if the
/// slot is free (`seq` as `rule` read it).
#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn rule_missed(at: usize, unloads: u64, slot: &Slot, seq: u64) -> Rule {
    let (found, lasting) = cfi::rule_at(at);
    // A writer claims the slot by making `seq` odd; if another writer has it, this rule
    // simply goes uncached. Relaxed CAS: the Release fence after it orders the claim
    // before the data stores, for readers that see those stores. Code in no loaded
    // object (a JIT's) is never cached: its memory may hold other code by the next walk.
    if lasting
        && seq & 1 == 0
        && slot
            .seq
            .compare_exchange(seq, seq + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        fence(Ordering::Release);
        // Relaxed: published by the Release store of `seq` below.
        slot.at.store(at as u64, Ordering::Relaxed);
        slot.unloads.store(unloads, Ordering::Relaxed);
        slot.rule.store(pack(found), Ordering::Relaxed);
        // Release: makes the stores above visible to a reader that sees this `seq`.
        slot.seq.store(seq + 2, Ordering::Release);
    }
    found
}

/// Rule tags in the low byte of a packed rule.
#[cfg(target_arch = "x86_64")]
const TAG_STEP: u64 = 1;
#[cfg(target_arch = "x86_64")]
const TAG_END: u64 = 2;
#[cfg(target_arch = "x86_64")]
const TAG_UNSUPPORTED: u64 = 3;
/// Flags beside the tag.
#[cfg(target_arch = "x86_64")]
const FROM_BP: u64 = 1 << 2;
#[cfg(target_arch = "x86_64")]
const BP_SAVED: u64 = 1 << 3;

/// A rule in one word: tag and flags in bits 0-7, the return address offset in 8-15,
/// the saved `rbp` offset in 16-31, the CFA offset in 32-63.
#[cfg(target_arch = "x86_64")]
fn pack(rule: Rule) -> u64 {
    match rule {
        Rule::Step {
            cfa_from_bp,
            cfa_off,
            ra_off,
            bp_off,
        } => {
            let mut w = TAG_STEP;
            if cfa_from_bp {
                w |= FROM_BP;
            }
            if bp_off.is_some() {
                w |= BP_SAVED;
            }
            w | u64::from(ra_off as u8) << 8
                | u64::from(bp_off.unwrap_or(0) as u16) << 16
                | u64::from(cfa_off as u32) << 32
        }
        Rule::End => TAG_END,
        Rule::Unsupported => TAG_UNSUPPORTED,
    }
}

#[cfg(target_arch = "x86_64")]
fn unpack(w: u64) -> Rule {
    match w & 3 {
        TAG_STEP => Rule::Step {
            cfa_from_bp: w & FROM_BP != 0,
            cfa_off: (w >> 32) as u32 as i32,
            ra_off: (w >> 8) as u8 as i8,
            bp_off: (w & BP_SAVED != 0).then_some((w >> 16) as u16 as i16),
        },
        TAG_END => Rule::End,
        _ => Rule::Unsupported,
    }
}

// ---- libgcc's walk ---------------------------------------------------------------------

/// `_URC_NO_REASON`: keep unwinding.
const URC_NO_REASON: c_int = 0;
/// `_URC_END_OF_STACK`, returned by the callback to stop early.
const URC_END_OF_STACK: c_int = 5;

struct Walk<'a> {
    frames: &'a mut [usize; MAX_FRAMES],
    depth: usize,
    skip: usize,
    /// The `_Unwind_GetIP` of the library whose `_Unwind_Backtrace` runs the walk.
    get_ip: GetIpFn,
}

extern "C" fn on_frame(ctx: *mut UnwindContext, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Walk` that `libgcc_capture` passed, alive for the whole walk.
    let walk = unsafe { &mut *(arg as *mut Walk) };
    // SAFETY: a context libgcc handed us for this callback.
    let ip = unsafe { (walk.get_ip)(ctx) };
    if ip == 0 {
        return URC_END_OF_STACK;
    }
    if walk.skip > 0 {
        walk.skip -= 1;
        return URC_NO_REASON;
    }
    walk.frames[walk.depth] = ip;
    walk.depth += 1;
    if walk.depth == MAX_FRAMES {
        URC_END_OF_STACK
    } else {
        URC_NO_REASON
    }
}

/// `capture` by libgcc's `_Unwind_Backtrace` alone: leaves out this function and the
/// `skip` frames above it.
#[inline(never)]
fn libgcc_capture(frames: &mut [usize; MAX_FRAMES], skip: usize) -> usize {
    let (backtrace, get_ip) = libgcc::backtrace_pair();
    let mut walk = Walk {
        frames,
        depth: 0,
        // The first context is this function itself.
        skip: skip + 1,
        get_ip,
    };
    // SAFETY: the callback matches libgcc's signature and `walk` outlives the call.
    unsafe { backtrace(on_frame, &mut walk as *mut Walk as *mut c_void) };
    walk.depth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn inner(frames: &mut [usize; MAX_FRAMES]) -> usize {
        let depth = capture(frames, 0);
        core::hint::black_box(depth)
    }

    #[inline(never)]
    fn outer(frames: &mut [usize; MAX_FRAMES]) -> usize {
        let depth = inner(frames);
        core::hint::black_box(depth)
    }

    /// The walk starts at the caller and goes through both test frames: the first
    /// return address lies in `outer` (returning from `inner`), so the innermost frame
    /// reported is `inner`'s own.
    #[test]
    fn captures_the_callers() {
        let mut frames = [0; MAX_FRAMES];
        let depth = outer(&mut frames);
        assert!(depth >= 3, "depth {depth}");
        let inner_at = inner as *const () as usize;
        let outer_at = outer as *const () as usize;
        // The innermost frame is a return address inside `inner`, after its start.
        assert!(frames[0] > inner_at && frames[0] - inner_at < 4096);
        assert!(frames[1] > outer_at && frames[1] - outer_at < 4096);
        // Called one level higher, the walk is one frame shorter.
        let mut again = [0; MAX_FRAMES];
        assert_eq!(inner(&mut again), depth - 1);
    }

    type Walker = fn(&mut [usize; MAX_FRAMES], usize) -> usize;

    /// `walker`'s frames after recursing `levels` deep (a frame-pointer-free Rust frame
    /// per level, with a stack buffer so its CFA offset is not trivial). Every frame up
    /// to the caller's is the same code whichever walker is passed.
    #[inline(never)]
    fn walk_from(levels: usize, walker: Walker) -> ([usize; MAX_FRAMES], usize) {
        if levels > 0 {
            let pad = core::hint::black_box([levels as u8; 200]);
            let r = walk_from(levels - 1, walker);
            core::hint::black_box(pad);
            return core::hint::black_box(r);
        }
        let mut out = [0; MAX_FRAMES];
        let depth = core::hint::black_box(core::hint::black_box(walker)(&mut out, 0));
        (out, depth)
    }

    /// `capture` without the fallback: panics where the cached walk would hand over.
    #[inline(never)]
    fn cached_only(frames: &mut [usize; MAX_FRAMES], skip: usize) -> usize {
        let unloads = unloads().expect("dlpi_subs");
        let regs = Regs::here();
        let top = stack_top(regs.sp).expect("the thread's stack");
        let depth = walk(regs, unloads, top, frames, skip + 1, &mut OnStack)
            .expect("the walk handed over to libgcc");
        core::hint::black_box(depth)
    }

    /// The cached walk gives exactly libgcc's frames, down through the test harness's
    /// thread to the end of the stack (or the frame limit), on the first walk (rules
    /// worked out) and on later ones (rules from the cache); it never hands over to
    /// libgcc on these Rust and glibc frames. (The one frame that differs is the return
    /// address into this test, from its two call sites.)
    #[test]
    fn cached_walk_matches_libgcc() {
        // Rules found through `_dl_find_object`, as a profiling process finds them.
        cfi::init(false);
        let this = cached_walk_matches_libgcc as *const () as usize;
        for levels in [0, 5, 70] {
            for _ in 0..3 {
                let (fast, fast_depth) = walk_from(levels, cached_only);
                let (slow, slow_depth) = walk_from(levels, libgcc_capture);
                assert!(slow_depth >= (levels + 4).min(MAX_FRAMES), "{slow_depth}");
                assert_eq!(fast_depth, slow_depth);
                for i in 0..fast_depth {
                    if i == levels + 1 {
                        assert!(fast[i] > this && fast[i] - this < 4096);
                        assert!(slow[i] > this && slow[i] - this < 4096);
                    } else {
                        assert_eq!(fast[i], slow[i], "frame {i} of {fast_depth}");
                    }
                }
            }
        }
    }

    // A function with ordinary frame-pointer CFI (after its `mov rbp, rsp`: CFA = rbp +
    // 16, return address at CFA - 8, caller's rbp at CFA - 16). It never runs: the test
    // walks from its body with an `rbp` that points off the stack, as a corrupt frame
    // or code with wrong CFI would leave it.
    core::arch::global_asm!(
        ".pushsection .text.rangealloc_test_bad_frame, \"ax\", @progbits",
        ".globl rangealloc_test_bad_frame",
        ".hidden rangealloc_test_bad_frame",
        ".type rangealloc_test_bad_frame, @function",
        "rangealloc_test_bad_frame:",
        ".cfi_startproc",
        "push rbp",
        ".cfi_def_cfa_offset 16",
        ".cfi_offset rbp, -16",
        "mov rbp, rsp",
        ".cfi_def_cfa_register rbp",
        ".globl rangealloc_test_bad_frame_body",
        ".hidden rangealloc_test_bad_frame_body",
        "rangealloc_test_bad_frame_body:",
        "nop",
        "pop rbp",
        ".cfi_def_cfa rsp, 8",
        "ret",
        ".cfi_endproc",
        ".size rangealloc_test_bad_frame, . - rangealloc_test_bad_frame",
        ".popsection",
    );
    extern "C" {
        fn rangealloc_test_bad_frame_body();
    }

    /// The return address the fake frame above the stack holds.
    const FAKE_RA: usize = 0x0dea_d000;
    /// The test thread's stack: room for the walk and libtest-free Rust frames.
    const OWN_STACK: usize = 256 << 10;

    /// Runs on a thread whose stack is the lower part of one mapping and whose upper
    /// part (`arg`) holds a fake frame, readable, right above the stack's end: walks
    /// from the bad frame with `rbp` pointing at it; returns the depth and the frames.
    extern "C" fn walk_bad_frame(arg: *mut c_void) -> *mut c_void {
        let fake = arg as *mut usize;
        // SAFETY: the test mapped two words' worth (a page) at `fake` for this thread.
        unsafe {
            fake.write(0); // the "caller's rbp"
            fake.add(1).write(FAKE_RA);
        }
        let here = Regs::here();
        let regs = Regs {
            pc: rangealloc_test_bad_frame_body as *const () as usize,
            sp: here.sp,
            bp: fake as usize,
        };
        let mut frames = [0; MAX_FRAMES];
        let depth = stack_top(here.sp).map_or(usize::MAX, |top| {
            walk(regs, unloads().unwrap(), top, &mut frames, 0, &mut OnStack)
                .unwrap_or(usize::MAX - 1)
        });
        let out = Box::new((depth, frames));
        Box::into_raw(out) as *mut c_void
    }

    /// A frame whose rules lead off the thread's stack (here, into readable memory right
    /// above it) ends the walk: the word there is never read as a return address.
    /// Without the bound the walk returned two frames, the second `FAKE_RA`.
    #[test]
    fn a_frame_pointing_off_the_stack_ends_the_walk() {
        cfi::init(false);
        let page = 4096;
        // SAFETY: a fresh private mapping: the thread's stack, then one page above it.
        let map = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                OWN_STACK + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: plain pthread calls on attributes and a thread we own; the stack lies
        // in the mapping, which outlives the thread (joined before the unmap).
        let (depth, frames) = unsafe {
            let mut attr: libc::pthread_attr_t = core::mem::zeroed();
            assert_eq!(libc::pthread_attr_init(&mut attr), 0);
            assert_eq!(libc::pthread_attr_setstack(&mut attr, map, OWN_STACK), 0);
            let mut thread: libc::pthread_t = 0;
            let fake = (map as *mut u8).add(OWN_STACK) as *mut c_void;
            assert_eq!(
                libc::pthread_create(&mut thread, &attr, walk_bad_frame, fake),
                0
            );
            let mut out = core::ptr::null_mut();
            assert_eq!(libc::pthread_join(thread, &mut out), 0);
            libc::pthread_attr_destroy(&mut attr);
            libc::munmap(map, OWN_STACK + page);
            *Box::from_raw(out as *mut (usize, [usize; MAX_FRAMES]))
        };
        assert_ne!(depth, usize::MAX, "the thread's stack was not found");
        assert_ne!(depth, usize::MAX - 1, "the walk handed over to libgcc");
        assert!(
            !frames[..depth].contains(&FAKE_RA),
            "read off the stack: {:x?}",
            &frames[..depth]
        );
        assert_eq!(depth, 1, "{:x?}", &frames[..depth]);
    }

    /// `Probed` lets a word be read only where the kernel could copy it: not in a
    /// `PROT_NONE` guard page, not where nothing is mapped, yes in readable pages (the
    /// first frame's granule without asking).
    #[test]
    fn probed_reads_only_readable_granules() {
        let page = PROBE_GRANULE;
        // SAFETY: a fresh private mapping of three pages, the middle one made a guard;
        // only `Probed` touches it, and it is unmapped at the end.
        unsafe {
            let map = libc::mmap(
                core::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let base = map as usize;
            assert_eq!(
                libc::mprotect((base + page) as *mut c_void, page, libc::PROT_NONE),
                0
            );
            let mut probed = Probed::new(base + 64);
            assert!(
                probed.readable(base + page - 8),
                "the first frame's granule"
            );
            assert!(!probed.readable(base + page + 8), "the guard page");
            assert!(
                probed.readable(base + 2 * page + 16),
                "readable above the guard"
            );
            assert!(
                probed.readable(base + 2 * page + 24),
                "the same granule again"
            );
            assert_eq!(libc::munmap((base + 2 * page) as *mut c_void, page), 0);
            let mut after = Probed::new(base);
            assert!(!after.readable(base + 2 * page), "nothing mapped");
            assert_eq!(libc::munmap(map, 2 * page), 0);
        }
    }

    extern "C" {
        fn __register_frame(begin: *const u8);
        fn __deregister_frame(begin: *const u8);
    }

    /// A `.eh_frame` section with one CIE (`cfi`'s tests', with absolute 8-byte FDE
    /// addresses) and one FDE covering `[code, code + 0x100)` whose rule is CFA = rsp +
    /// `cfa_off`, return address at CFA - 8; then the terminator.
    fn jit_eh_frame(code: usize, cfa_off: u8) -> Vec<u8> {
        let cie_body = cfi::tests::cie_body(0x00);
        let mut s = Vec::new();
        s.extend_from_slice(&(cie_body.len() as u32).to_le_bytes());
        s.extend_from_slice(&cie_body);
        let fde_at = s.len();
        let mut fde = Vec::new();
        fde.extend_from_slice(&((fde_at + 4) as u32).to_le_bytes()); // back to the CIE
        fde.extend_from_slice(&(code as u64).to_le_bytes());
        fde.extend_from_slice(&0x100u64.to_le_bytes());
        fde.push(0); // no augmentation data
        fde.extend_from_slice(&[0x0e, cfa_off]); // def_cfa_offset
        s.extend_from_slice(&(fde.len() as u32).to_le_bytes());
        s.extend_from_slice(&fde);
        s.extend_from_slice(&0u32.to_le_bytes());
        s
    }

    /// A JIT that frees code it registered and puts other code at the same address
    /// (`__deregister_frame`, then `__register_frame` of new tables): the walk follows
    /// the new code's rule. No loaded object holds the code and nothing is unloaded, so
    /// the cache's key (address, `dlpi_subs`) cannot tell; such code is not cached.
    /// Before, the second lookup gave the first code's rule from the cache.
    #[test]
    fn code_in_no_object_is_looked_up_on_every_walk() {
        cfi::init(false);
        // SAFETY: a fresh anonymous mapping, never executed: only its address is used.
        let code = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(code, libc::MAP_FAILED);
        let at = code as usize + 0x10;
        let unloads = unloads().unwrap();
        for cfa_off in [16u8, 48, 16] {
            let tables = jit_eh_frame(code as usize, cfa_off);
            // SAFETY: a well-formed, terminated `.eh_frame` that outlives its
            // registration (deregistered below, before it is dropped).
            unsafe { __register_frame(tables.as_ptr()) };
            let got = rule(at, unloads);
            // SAFETY: registered above.
            unsafe { __deregister_frame(tables.as_ptr()) };
            assert_eq!(
                got,
                Rule::Step {
                    cfa_from_bp: false,
                    cfa_off: cfa_off.into(),
                    ra_off: -8,
                    bp_off: None,
                }
            );
        }
        // SAFETY: mapped above, unused since.
        unsafe { libc::munmap(code, 4096) };
    }

    /// Rules survive the cache's packing.
    #[test]
    fn packing_round_trips() {
        for rule in [
            Rule::End,
            Rule::Unsupported,
            Rule::Step {
                cfa_from_bp: true,
                cfa_off: 16,
                ra_off: -8,
                bp_off: Some(-16),
            },
            Rule::Step {
                cfa_from_bp: false,
                cfa_off: 1 << 20,
                ra_off: -8,
                bp_off: None,
            },
            Rule::Step {
                cfa_from_bp: false,
                cfa_off: -24,
                ra_off: 127,
                bp_off: Some(i16::MIN),
            },
        ] {
            assert_eq!(unpack(pack(rule)), rule);
        }
    }
}
