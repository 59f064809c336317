//! The AVX2 + FMA kernels, for x86-64 CPUs without AVX-512: 6-pixel × 16-channel tiles
//! in 12 of the 16 ymm registers (the shape of the classic AVX2 GEMM microkernel: two
//! weight vectors and one broadcast input alongside the accumulators).

use core::arch::x86_64::*;

use super::job::Microkernel;
use super::{MAX_TILE, PREFETCH_ROWS};

/// AVX2 and FMA (detected at run time by `direct_conv`).
pub(super) struct Avx2;

impl Microkernel for Avx2 {
    const TILE: usize = 6;
    const PANEL: usize = 16;

    unsafe fn pack_prologue(
        src: *const f32,
        offsets: &[usize],
        kc: usize,
        scale_shift: (*const f32, *const f32),
        dst: *mut f32,
    ) {
        // SAFETY: the trait's contract, which includes AVX2 and FMA.
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
        // SAFETY: the trait's contract, which includes AVX2, FMA and the tile's bounds.
        unsafe {
            dispatch(
                rows, width, a, a_step, taps, c_in, b, ldb, epilogue, c, c_offsets, accumulate,
            )
        }
    }
}

/// A lane mask for `AVX2` masked loads and stores: the first `lanes` of 8 lanes set
/// (also the unpacked GEMM's).
#[target_feature(enable = "avx2")]
#[inline]
pub(in crate::kernels) fn lane_mask(lanes: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(lanes as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// [`relu`](super::relu) of 8 lanes: `y <= 0 → 0`, so NaN stays NaN (as torch's relu)
/// and -0.0 becomes 0.0.
#[target_feature(enable = "avx2")]
#[inline]
fn relu8(y: __m256) -> __m256 {
    let zero = _mm256_setzero_ps();
    _mm256_blendv_ps(y, zero, _mm256_cmp_ps::<_CMP_LE_OQ>(y, zero))
}

/// [`Microkernel::pack_prologue`] for AVX2.
///
/// # Safety
///
/// As [`Microkernel::pack_prologue`], with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_prologue(
    src: *const f32,
    offsets: &[usize],
    kc: usize,
    (scale, shift): (*const f32, *const f32),
    dst: *mut f32,
) {
    for c0 in (0..kc).step_by(8) {
        let mask = lane_mask(kc - c0);
        // SAFETY: channels `c0 .. min(c0 + 8, kc)`, masked (masked-out lanes are not
        // accessed): valid by the contract.
        let (sv, tv) = unsafe {
            (
                _mm256_maskload_ps(scale.add(c0), mask),
                _mm256_maskload_ps(shift.add(c0), mask),
            )
        };
        for (i, &offset) in offsets.iter().enumerate() {
            // SAFETY: pixel `i`, the same masked channels: valid by the contract.
            unsafe {
                let x = _mm256_maskload_ps(src.add(offset + c0), mask);
                // Multiply then add, unfused: the same rounding as the runtime's
                // other BatchNorm-ReLU passes.
                let y = _mm256_add_ps(_mm256_mul_ps(x, sv), tv);
                _mm256_maskstore_ps(dst.add(i * kc + c0), mask, relu8(y));
            }
        }
    }
}

/// Picks the monomorphised tile kernel for `rows` pixels × `width` channels.
///
/// # Safety
///
/// As [`Microkernel::tile`], with AVX2 and FMA, `1 ≤ rows ≤ 6` and `1 ≤ width ≤ 16`.
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
    // Whole vectors load and store plainly; only a last partial vector is masked.
    let partial = !width.is_multiple_of(8);
    macro_rules! pick {
        ($($mr:literal)*) => {
            match (rows, width > 8, partial) {
                $(
                    ($mr, true, false) => tile::<$mr, 2, false>,
                    ($mr, false, false) => tile::<$mr, 1, false>,
                    ($mr, true, true) => tile::<$mr, 2, true>,
                    ($mr, false, true) => tile::<$mr, 1, true>,
                )*
                _ => unreachable!("tile rows are 1..=6"),
            }
        };
    }
    let kernel = pick!(1 2 3 4 5 6);
    // SAFETY: forwarded from the caller's contract; the mask covers the last vector's
    // columns of `width`.
    unsafe {
        kernel(
            a,
            a_step,
            taps,
            c_in,
            b,
            ldb,
            lane_mask(width - 8 * (width.div_ceil(8) - 1)),
            epilogue,
            c,
            c_offsets,
            accumulate,
        )
    }
}

/// [`Microkernel::tile`] for `MR` pixels × `NV·8` channels, the last vector masked by
/// `mask` when `MASKED`.
///
/// # Safety
///
/// As [`Microkernel::tile`], with AVX2 and FMA, for `MR` rows and the `NV` vectors'
/// columns (the last one's limited to `mask`'s lanes when `MASKED`).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize, const NV: usize, const MASKED: bool>(
    a: *const f32,
    a_step: usize,
    taps: &[usize],
    c_in: usize,
    b: *const f32,
    ldb: usize,
    mask: __m256i,
    epilogue: (*const f32, *const f32),
    c: *mut f32,
    c_offsets: &[usize; MAX_TILE],
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
    macro_rules! store {
        ($v:expr, $p:expr, $x:expr) => {
            if MASKED && $v + 1 == NV {
                _mm256_maskstore_ps($p, mask, $x)
            } else {
                _mm256_storeu_ps($p, $x)
            }
        };
    }
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    if accumulate {
        for (i, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: output pixel `i`, vector `v`: readable by the contract.
                *acc = unsafe { load!(v, c.add(c_offsets[i] + 8 * v)) };
            }
        }
    }
    for (t, &tap) in taps.iter().enumerate() {
        // SAFETY (this block and the loop below): in bounds by the contract.
        let (at, bt) = unsafe { (a.add(tap), b.add(t * c_in * ldb)) };
        for ci in 0..c_in {
            // The weight row `PREFETCH_ROWS` steps ahead, as the AVX-512 kernel (a
            // hint that never faults; `wrapping_add` keeps the arithmetic defined).
            _mm_prefetch::<_MM_HINT_T0>(bt.wrapping_add((ci + PREFETCH_ROWS) * ldb).cast());
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = unsafe { load!(v, bt.add(ci * ldb + 8 * v)) };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(unsafe { *at.add(i * a_step + ci) });
                for v in 0..NV {
                    acc[v] = _mm256_fmadd_ps(av, bv[v], acc[v]);
                }
            }
        }
    }
    let (scale, shift) = epilogue;
    if !scale.is_null() {
        for v in 0..NV {
            // SAFETY: `scale` and `shift` hold the tile's columns.
            let (sv, tv) = unsafe { (load!(v, scale.add(8 * v)), load!(v, shift.add(8 * v))) };
            for acc in acc.iter_mut() {
                acc[v] = relu8(_mm256_fmadd_ps(acc[v], sv, tv));
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: output pixel `i`, vector `v`: writable by the contract.
            unsafe { store!(v, c.add(c_offsets[i] + 8 * v), acc) };
        }
    }
}
