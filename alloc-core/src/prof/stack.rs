//! Call-stack capture from the unwind tables: libgcc's `_Unwind_Backtrace`, which the
//! Rust standard library already links (`libgcc_s`) and which works on code built
//! without frame pointers (Debian's C programs, `-O2 -fomit-frame-pointer`): it reads
//! the `.eh_frame` CFI that x86-64 compilers emit by default. Owns nothing; calls
//! libgcc.
//!
//! libgcc finds each frame's unwind entry through glibc (`_dl_find_object` on glibc
//! 2.35+, else `dl_iterate_phdr`); neither calls `malloc` in steady state, and whatever a
//! first call allocates runs under the profiler's busy flag and the allocator's
//! re-entrancy guard, so it never recurses into sampling or into the region table.

use core::ffi::{c_int, c_void};

/// The deepest stack kept (jemalloc keeps 128; 64 frames hold every realistic call
/// chain above `malloc` and keep a stack-table entry at about half a KiB).
pub const MAX_FRAMES: usize = 64;

#[repr(C)]
struct UnwindContext {
    _private: [u8; 0],
}

/// `_URC_NO_REASON`: keep unwinding.
const URC_NO_REASON: c_int = 0;
/// `_URC_END_OF_STACK`, returned by the callback to stop early.
const URC_END_OF_STACK: c_int = 5;

extern "C" {
    fn _Unwind_Backtrace(
        trace: extern "C" fn(*mut UnwindContext, *mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> c_int;
    fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
}

struct Walk<'a> {
    frames: &'a mut [usize; MAX_FRAMES],
    depth: usize,
    skip: usize,
}

extern "C" fn on_frame(ctx: *mut UnwindContext, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Walk` that `capture` passed, alive for the whole walk.
    let walk = unsafe { &mut *(arg as *mut Walk) };
    // SAFETY: a context libgcc handed us for this callback.
    let ip = unsafe { _Unwind_GetIP(ctx) };
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

/// Fills `frames` with the return addresses of the calling stack, innermost first,
/// leaving out this function and the `skip` frames above it; returns the depth.
#[inline(never)]
pub fn capture(frames: &mut [usize; MAX_FRAMES], skip: usize) -> usize {
    let mut walk = Walk {
        frames,
        depth: 0,
        // The first context is `capture` itself.
        skip: skip + 1,
    };
    // SAFETY: the callback matches libgcc's signature and `walk` outlives the call.
    unsafe { _Unwind_Backtrace(on_frame, &mut walk as *mut Walk as *mut c_void) };
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
}
