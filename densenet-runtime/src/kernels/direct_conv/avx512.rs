//! The AVX-512 kernels: 14-pixel × 32-channel tiles in 28 of the 32 zmm registers.

use core::arch::x86_64::*;

use super::job::Microkernel;
use super::{MAX_TILE, PREFETCH_ROWS};

/// AVX-512F (detected at run time by `direct_conv`).
pub(super) struct Avx512;

impl Microkernel for Avx512 {
    const TILE: usize = 14;
    const PANEL: usize = 32;

    unsafe fn pack_prologue(
        src: *const f32,
        offsets: &[usize],
        kc: usize,
        scale_shift: (*const f32, *const f32),
        dst: *mut f32,
    ) {
        // SAFETY: the trait's contract, which includes AVX-512F.
        unsafe { pack_prologue(src, offsets, kc, scale_shift, dst) }
    }

    unsafe fn tile(
        rows: usize,
        width: usize,
        a: *const f32,
        a_step: usize,
        taps: &[usize],
        c_in: usize,
        b: *const f32,
        ldb: usize,
        epilogue: (*const f32, *const f32),
        c: *mut f32,
        c_offsets: &[usize; MAX_TILE],
        accumulate: bool,
    ) {
        // SAFETY: the trait's contract, which includes AVX-512F and the tile's bounds.
        unsafe {
            dispatch(
                rows, width, a, a_step, taps, c_in, b, ldb, epilogue, c, c_offsets, accumulate,
            )
        }
    }
}

/// [`relu`](super::relu) of 16 lanes: `y <= 0 → 0`, so NaN stays NaN (as torch's
/// relu) and -0.0 becomes 0.0.
#[target_feature(enable = "avx512f")]
#[inline]
fn relu16(y: __m512) -> __m512 {
    let zero = _mm512_setzero_ps();
    _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(y, zero), zero)
}

/// Writes `relu(scale[ci]·x + shift[ci])` of input pixel `i < offsets.len()`,
/// channel `ci < kc` (at `src + offsets[i] + ci`) to `dst[i·kc + ci]`: a prologue's
/// BatchNorm-ReLU applied while a tile's inputs are packed. The runtime's ReLU
/// (`y <= 0 → 0`) as in [`tile`]'s epilogue.
///
/// # Safety
///
/// The CPU supports AVX-512F; the `offsets.len() × kc` inputs, `kc` values of each of
/// `scale` and `shift`, and `offsets.len()·kc` values at `dst` are valid (the last for
/// writes).
#[target_feature(enable = "avx512f")]
unsafe fn pack_prologue(
    src: *const f32,
    offsets: &[usize],
    kc: usize,
    (scale, shift): (*const f32, *const f32),
    dst: *mut f32,
) {
    for c0 in (0..kc).step_by(16) {
        let mask: __mmask16 = if kc - c0 >= 16 {
            0xffff
        } else {
            (1u16 << (kc - c0)) - 1
        };
        // SAFETY: channels `c0 .. min(c0 + 16, kc)`, masked: valid by the contract.
        let (sv, tv) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask, scale.add(c0)),
                _mm512_maskz_loadu_ps(mask, shift.add(c0)),
            )
        };
        for (i, &offset) in offsets.iter().enumerate() {
            // SAFETY: pixel `i`, the same masked channels: valid by the contract.
            unsafe {
                let x = _mm512_maskz_loadu_ps(mask, src.add(offset + c0));
                // Multiply then add, unfused: the same rounding as the runtime's
                // other BatchNorm-ReLU passes.
                let y = _mm512_add_ps(_mm512_mul_ps(x, sv), tv);
                _mm512_mask_storeu_ps(dst.add(i * kc + c0), mask, relu16(y));
            }
        }
    }
}

/// Picks the monomorphised tile kernel for `rows` pixels × `width` channels.
///
/// # Safety
///
/// As [`tile`], with `1 ≤ rows ≤ 14` and `1 ≤ width ≤ 32`.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn dispatch(
    rows: usize,
    width: usize,
    a: *const f32,
    a_step: usize,
    taps: &[usize],
    c_in: usize,
    b: *const f32,
    ldb: usize,
    epilogue: (*const f32, *const f32),
    c: *mut f32,
    c_offsets: &[usize; MAX_TILE],
    accumulate: bool,
) {
    macro_rules! pick {
        ($($mr:literal)*) => {
            match (rows, width > 16) {
                $(
                    ($mr, true) => tile::<$mr, 2>,
                    ($mr, false) => tile::<$mr, 1>,
                )*
                _ => unreachable!("tile rows are 1..=14"),
            }
        };
    }
    let kernel = pick!(1 2 3 4 5 6 7 8 9 10 11 12 13 14);
    let mask: __mmask16 = match width % 16 {
        0 => 0xffff,
        r => (1u16 << r) - 1,
    };
    // SAFETY: forwarded from the caller's contract; the mask covers `width` columns.
    unsafe {
        kernel(
            a, a_step, taps, c_in, b, ldb, mask, epilogue, c, c_offsets, accumulate,
        )
    }
}

/// Accumulates an `MR`-pixel × `NV·16`-channel output tile (the last 16 channels
/// masked by `mask`) over every tap and input channel, starting from zero or, with
/// `accumulate`, from the tile's current contents (a later block of input channels),
/// then applies the epilogue and stores it.
///
/// Pixel `i` of the tile reads input `a + i·a_step + taps[t] + ci`; weight row
/// `t·c_in + ci` starts at `b + (t·c_in + ci)·ldb`; output pixel `i` starts at
/// `c + c_offsets[i]`. `epilogue` is `(scale, shift)`, both null for a plain store.
///
/// # Safety
///
/// The CPU supports AVX-512F; every address described above, for `i < MR`,
/// `t < taps.len()`, `ci < c_in` and the unmasked columns, is valid to read (inputs,
/// weights, scale, shift) or read and write (outputs), and no other thread accesses
/// the outputs during the call.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize, const NV: usize>(
    a: *const f32,
    a_step: usize,
    taps: &[usize],
    c_in: usize,
    b: *const f32,
    ldb: usize,
    mask: __mmask16,
    epilogue: (*const f32, *const f32),
    c: *mut f32,
    c_offsets: &[usize; MAX_TILE],
    accumulate: bool,
) {
    let masks = |v: usize| if v + 1 == NV { mask } else { 0xffff };
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    if accumulate {
        for (i, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: output pixel `i`, unmasked columns: readable by the contract.
                *acc = unsafe { _mm512_maskz_loadu_ps(masks(v), c.add(c_offsets[i] + 16 * v)) };
            }
        }
    }
    for (t, &tap) in taps.iter().enumerate() {
        // SAFETY (this block and the loop below): in bounds by the contract.
        let (at, bt) = unsafe { (a.add(tap), b.add(t * c_in * ldb)) };
        for ci in 0..c_in {
            // Ask for the weight row `PREFETCH_ROWS` steps ahead (into the next
            // tap's rows at the end of this one): the hardware prefetchers fill L2
            // but leave the loads waiting on L2 and L3 (10-20% of a conv's time,
            // measured with examples/conv_gflops).
            let ahead = bt.wrapping_add((ci + PREFETCH_ROWS) * ldb);
            // (A prefetch is a hint that never faults; `wrapping_add` keeps the
            // address arithmetic defined even past the weight's end.)
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            if NV == 2 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16).cast());
            }
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = unsafe { _mm512_maskz_loadu_ps(masks(v), bt.add(ci * ldb + 16 * v)) };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(unsafe { *at.add(i * a_step + ci) });
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(av, bv[v], acc[v]);
                }
            }
        }
    }
    let (scale, shift) = epilogue;
    if !scale.is_null() {
        for v in 0..NV {
            // SAFETY: `scale` and `shift` hold the tile's unmasked columns.
            let (sv, tv) = unsafe {
                (
                    _mm512_maskz_loadu_ps(masks(v), scale.add(16 * v)),
                    _mm512_maskz_loadu_ps(masks(v), shift.add(16 * v)),
                )
            };
            for acc in acc.iter_mut() {
                acc[v] = relu16(_mm512_fmadd_ps(acc[v], sv, tv));
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: output pixel `i`, unmasked columns: writable by the contract.
            unsafe { _mm512_mask_storeu_ps(c.add(c_offsets[i] + 16 * v), masks(v), acc) };
        }
    }
}
