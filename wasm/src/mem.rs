//! `memcmp` and `bcmp` for wasm32, eight bytes at a time.
//!
//! The Rust standard library's own (compiler-builtins, weakly linked) compares byte by byte.
//! The working set's keys are long and share long prefixes (every key of a group starts with
//! the same ~90 bytes), so its ordered map spends much of a message's time in `memcmp`; these
//! strong definitions replace the weak ones in the wasm build (on the host they are plain
//! functions, for their tests).

use core::ffi::c_int;

/// Compare `n` bytes at `a` and `b` as `memcmp` does: the sign of the first difference.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    let mut i = 0;
    while i + 8 <= n {
        let x = a.add(i).cast::<u64>().read_unaligned();
        let y = b.add(i).cast::<u64>().read_unaligned();
        if x != y {
            // The first differing byte is the lowest one that differs (little-endian).
            let at = (x ^ y).trailing_zeros() as usize / 8;
            return c_int::from(*a.add(i + at)) - c_int::from(*b.add(i + at));
        }
        i += 8;
    }
    while i < n {
        let (x, y) = (*a.add(i), *b.add(i));
        if x != y {
            return c_int::from(x) - c_int::from(y);
        }
        i += 1;
    }
    0
}

/// Zero if the `n` bytes at `a` and `b` are equal.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[cfg_attr(target_arch = "wasm32", no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    memcmp(a, b, n)
}

#[cfg(test)]
mod tests {
    use super::{bcmp, memcmp};

    #[test]
    fn orders_as_slices_do() {
        let mut cases: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for n in 0..40 {
            let base: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            cases.push((base.clone(), base.clone()));
            for at in 0..n {
                for delta in [1u8, 0x80, 0xff] {
                    let mut other = base.clone();
                    other[at] = other[at].wrapping_add(delta);
                    cases.push((base.clone(), other));
                }
            }
        }
        for (a, b) in cases {
            let got = unsafe { memcmp(a.as_ptr(), b.as_ptr(), a.len()) };
            assert_eq!(got.cmp(&0), a.cmp(&b), "{a:?} {b:?}");
            assert_eq!(unsafe { bcmp(a.as_ptr(), b.as_ptr(), a.len()) } == 0, a == b);
        }
    }
}
