//! The AVX2 + FMA tiles: up to 6 rows × 16 columns of `C` in 12 of the 16 ymm
//! registers (the classic AVX2 microkernel's shape, as the direct convolution's).

use core::arch::x86_64::*;

use super::Microkernel;
use crate::kernels::direct_conv::avx2::lane_mask;

/// AVX2 and FMA (detected at run time by the caller).
pub(super) struct Avx2;

impl Microkernel for Avx2 {
    fn block(_n: usize) -> (usize, usize) {
        (16, 6)
    }

    unsafe fn tile(
        rows: usize,
        cols: usize,
        k: usize,
        a: (*const f32, usize, usize, bool),
        b: (*const f32, usize),
        c: (*mut f32, usize),
        accumulate: bool,
    ) {
        // Whole vectors load and store plainly; only a last partial vector is masked.
        let partial = !cols.is_multiple_of(8);
        macro_rules! pick {
            ($($mr:literal)*) => {
                match (rows, cols > 8, partial, a.3) {
                    $(
                        ($mr, true, false, true) => tile::<$mr, 2, false, true>,
                        ($mr, false, false, true) => tile::<$mr, 1, false, true>,
                        ($mr, true, true, true) => tile::<$mr, 2, true, true>,
                        ($mr, false, true, true) => tile::<$mr, 1, true, true>,
                        ($mr, true, false, false) => tile::<$mr, 2, false, false>,
                        ($mr, false, false, false) => tile::<$mr, 1, false, false>,
                        ($mr, true, true, false) => tile::<$mr, 2, true, false>,
                        ($mr, false, true, false) => tile::<$mr, 1, true, false>,
                    )*
                    _ => unreachable!("tile rows are 1..=6"),
                }
            };
        }
        let kernel = pick!(1 2 3 4 5 6);
        // SAFETY: the trait's contract, which includes AVX2 and FMA; the mask covers
        // the last vector's columns of `cols`.
        unsafe {
            let mask = lane_mask(cols - 8 * (cols.div_ceil(8) - 1));
            kernel(k, (a.0, a.1, a.2), b, c, mask, accumulate)
        }
    }
}

/// An `MR × NV·8` tile of `C` (the last vector limited to `mask`'s lanes when
/// `MASKED`) over `k` steps, addressed as the AVX-512 tile.
///
/// # Safety
///
/// As [`Microkernel::tile`], with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const MR: usize, const NV: usize, const MASKED: bool, const A_UNIT_ROWS: bool>(
    k: usize,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs): (*const f32, usize),
    (c, c_rs): (*mut f32, usize),
    mask: __m256i,
    accumulate: bool,
) {
    // Vector `v` at `p`, masked when it is the last and `MASKED` (macros rather than
    // closures, so the intrinsics inline with this function's target features).
    macro_rules! load {
        ($v:expr, $p:expr) => {
            if MASKED && $v + 1 == NV {
                _mm256_maskload_ps($p, mask)
            } else {
                _mm256_loadu_ps($p)
            }
        };
    }
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    if accumulate {
        for (i, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `i` of `C`, vector `v`: readable by the contract.
                *acc = unsafe { load!(v, c.add(i * c_rs + 8 * v)) };
            }
        }
    }
    for p in 0..k {
        // SAFETY (this block and the loop below): row `p` of `B`, vector `v`, and
        // `A(i, p)` for `i < MR`: readable by the contract.
        let (ap, bp) = unsafe { (a.add(p * a_cs), b.add(p * b_rs)) };
        let mut bv = [_mm256_setzero_ps(); NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = unsafe { load!(v, bp.add(8 * v)) };
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let offset = if A_UNIT_ROWS { i } else { i * a_rs };
            let av = _mm256_set1_ps(unsafe { *ap.add(offset) });
            for v in 0..NV {
                acc[v] = _mm256_fmadd_ps(av, bv[v], acc[v]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: row `i` of `C`, vector `v`: writable by the contract.
            unsafe {
                let p = c.add(i * c_rs + 8 * v);
                if MASKED && v + 1 == NV {
                    _mm256_maskstore_ps(p, mask, acc)
                } else {
                    _mm256_storeu_ps(p, acc)
                }
            }
        }
    }
}
