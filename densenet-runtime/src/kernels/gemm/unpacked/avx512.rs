//! The AVX-512F tiles: up to 14 rows × 32 columns of `C` in 28 of the 32 zmm registers,
//! beside `B`'s two row vectors and one broadcast value of `A` (the direct
//! convolution's tile shape), or up to 8 × 48 or 6 × 64 for products 48 or 64 columns
//! wide (DenseNet-BC's 4k = 48), which then take one column block whose broadcasts
//! serve three or four vectors each.

use core::arch::x86_64::*;

use super::Microkernel;

/// AVX-512F (detected at run time by the caller).
pub(super) struct Avx512;

impl Microkernel for Avx512 {
    fn block(n: usize) -> (usize, usize) {
        match n.div_ceil(16) {
            0..=2 => (32, 14),
            3 => (48, 8),
            4 => (64, 6),
            _ => (32, 14),
        }
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
        macro_rules! pick {
            ($nv:literal: $($mr:literal)*) => {
                match (rows, a.3) {
                    $(
                        ($mr, true) => tile::<$mr, $nv, true>,
                        ($mr, false) => tile::<$mr, $nv, false>,
                    )*
                    _ => unreachable!("{rows} rows of a tile {} wide", $nv * 16),
                }
            };
        }
        let kernel = match cols.div_ceil(16) {
            1 => pick!(1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            2 => pick!(2: 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            3 => pick!(3: 1 2 3 4 5 6 7 8),
            4 => pick!(4: 1 2 3 4 5 6),
            _ => unreachable!("tiles are at most 64 columns wide"),
        };
        let mask: __mmask16 = match cols % 16 {
            0 => 0xffff,
            r => (1u16 << r) - 1,
        };
        // SAFETY: the trait's contract, which includes AVX-512F; the mask covers the
        // last vector's columns of `cols`.
        unsafe { kernel(k, (a.0, a.1, a.2), b, c, mask, accumulate) }
    }
}

/// An `MR × NV·16` tile of `C` (the last vector's columns masked by `mask`) over `k`
/// steps: `A(i, p)` at `a + i·a_rs + p·a_cs` (`i` added unscaled when `A_UNIT_ROWS`,
/// that is `a_rs == 1`), row `p` of `B` at `b + p·b_rs`, row `i` of `C` at `c + i·c_rs`.
///
/// # Safety
///
/// As [`Microkernel::tile`], with AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const MR: usize, const NV: usize, const A_UNIT_ROWS: bool>(
    k: usize,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs): (*const f32, usize),
    (c, c_rs): (*mut f32, usize),
    mask: __mmask16,
    accumulate: bool,
) {
    let masks = |v: usize| if v + 1 == NV { mask } else { 0xffff };
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    if accumulate {
        for (i, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `i` of `C`, unmasked columns: readable by the contract.
                *acc = unsafe { _mm512_maskz_loadu_ps(masks(v), c.add(i * c_rs + 16 * v)) };
            }
        }
    }
    for p in 0..k {
        // SAFETY (this block and the loop below): row `p` of `B`, unmasked columns,
        // and `A(i, p)` for `i < MR`: readable by the contract.
        let (ap, bp) = unsafe { (a.add(p * a_cs), b.add(p * b_rs)) };
        let mut bv = [_mm512_setzero_ps(); NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = unsafe { _mm512_maskz_loadu_ps(masks(v), bp.add(16 * v)) };
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let offset = if A_UNIT_ROWS { i } else { i * a_rs };
            let av = _mm512_set1_ps(unsafe { *ap.add(offset) });
            for v in 0..NV {
                acc[v] = _mm512_fmadd_ps(av, bv[v], acc[v]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: row `i` of `C`, unmasked columns: writable by the contract.
            unsafe { _mm512_mask_storeu_ps(c.add(i * c_rs + 16 * v), masks(v), acc) };
        }
    }
}
