//! Reporting detected misuse: one line naming the call, the pointer and the misuse,
//! then abort. Formats into a stack buffer (no allocation: the heap may be the thing
//! that is broken). Owns nothing; calls `os` and `options`.

use crate::region::table::RetireError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    DoubleFree,
    NotAllocated,
    Interior,
    UseAfterFree,
    /// A sized free (`free_sized`, `sdallocx`...) whose size exceeds the block's usable
    /// size: the size cannot belong to this block.
    SizeTooLarge,
    /// `free_aligned_sized` of a block not aligned as the call says it was allocated.
    Misaligned,
    /// A free list link points outside its page: something wrote into a freed block.
    #[cfg_attr(not(feature = "secure"), allow(dead_code))]
    CorruptFreeList,
}

impl From<RetireError> for Misuse {
    fn from(e: RetireError) -> Self {
        match e {
            RetireError::DoubleFree => Misuse::DoubleFree,
            RetireError::Interior => Misuse::Interior,
            RetireError::NotAllocated => Misuse::NotAllocated,
        }
    }
}

impl Misuse {
    fn describe(self) -> &'static [u8] {
        match self {
            Misuse::DoubleFree => b"double free of ",
            Misuse::NotAllocated => b"pointer not allocated by rangealloc: ",
            Misuse::Interior => b"pointer into the middle of an allocation: ",
            Misuse::UseAfterFree => b"pointer to an already freed block: ",
            Misuse::SizeTooLarge => b"size larger than the usable size of the block at ",
            Misuse::Misaligned => b"block not aligned to the given alignment: ",
            Misuse::CorruptFreeList => b"free list corrupted (write after free?) at block ",
        }
    }
}

/// Writes `rangealloc: <call>(): <misuse> 0x<ptr>` to stderr and aborts.
#[cold]
#[inline(never)]
pub fn report(misuse: Misuse, call: &str, p: *const u8) -> ! {
    let mut line = [0u8; 160];
    let mut len = 0;
    for part in [
        b"rangealloc: ".as_slice(),
        call.as_bytes(),
        b"(): ",
        misuse.describe(),
        b"0x",
    ] {
        let n = part.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    len += write_hex(&mut line[len..], p as usize);
    if len < line.len() {
        line[len] = b'\n';
        len += 1;
    }
    crate::os::write_stderr(&line[..len]);
    std::process::abort()
}

/// With `verbose=1`, reports an allocation that failed for lack of memory (the caller
/// then returns null as usual).
#[cold]
#[inline(never)]
pub fn out_of_memory(size: usize, align: usize) {
    if !crate::options::get().verbose {
        return;
    }
    let mut line = [0u8; 128];
    let mut len = 0;
    let mut put = |bytes: &[u8], line: &mut [u8; 128]| {
        let n = bytes.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(
        b"rangealloc: out of memory: could not allocate 0x",
        &mut line,
    );
    let mut hex = [0u8; 16];
    let n = write_hex(&mut hex, size);
    put(&hex[..n], &mut line);
    put(b" bytes aligned to 0x", &mut line);
    let n = write_hex(&mut hex, align);
    put(&hex[..n], &mut line);
    put(b"\n", &mut line);
    crate::os::write_stderr(&line[..len]);
}

fn write_hex(out: &mut [u8], value: usize) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - value.leading_zeros()).div_ceil(4)).max(1) as usize;
    let n = digits.min(out.len());
    for i in 0..n {
        out[i] = DIGITS[(value >> (4 * (digits - 1 - i))) & 0xf];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_formatting() {
        let mut buf = [0u8; 20];
        let n = write_hex(&mut buf, 0x7f00_dead_beef);
        assert_eq!(&buf[..n], b"7f00deadbeef");
        let n = write_hex(&mut buf, 0);
        assert_eq!(&buf[..n], b"0");
    }
}
