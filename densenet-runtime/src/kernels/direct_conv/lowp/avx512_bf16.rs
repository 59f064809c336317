//! The bf16 AVX-512 kernels: 14-pixel × 32-channel tiles of fp32 sums in 28 zmm
//! registers, `VDPBF16PS` (AVX512-BF16) adding, per lane, the two products of a
//! broadcast pair of bf16 activations with the pair of weights of its output channel.

use std::arch::x86_64::*;

use super::super::bf16_lanes::load16;
use super::super::{MAX_TILE, PREFETCH_ROWS};
use super::job::{LowpKernel, Out, Post, Wide};

/// AVX-512F/BW/VL and AVX512-BF16 (detected at run time by `conv_bf16`).
pub(super) struct Avx512Bf16;

impl LowpKernel for Avx512Bf16 {
    type Act = u16;
    type W = u16;
    const GROUP: usize = 2;
    const TILE: usize = 14;
    const PANEL: usize = 32;

    unsafe fn pack(
        src: Wide,
        offsets: &[usize],
        c_in: usize,
        c_pad: usize,
        prologue: (*const f32, *const f32),
        _inv_scale: f32,
        dst: *mut u16,
    ) {
        // SAFETY: the trait's contract, which includes the instruction set.
        unsafe { pack(src, offsets, c_in, c_pad, prologue, dst) }
    }

    unsafe fn tile(
        rows: usize,
        width: usize,
        a: *const u16,
        a_step: usize,
        taps: &[usize],
        groups: usize,
        b: *const u16,
        ldb: usize,
        post: &Post,
        out: Out,
        c_offsets: &[usize; MAX_TILE],
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
        // SAFETY: the trait's contract; the mask covers `width` columns.
        unsafe { kernel(a, a_step, taps, groups, b, ldb, mask, post, out, c_offsets) }
    }
}

/// The lanes `0 .. n` (all 16 for `n ≥ 16`).
#[inline]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// [`relu`](super::super::relu) of 16 lanes: `y <= 0 → 0`, NaN stays NaN.
#[target_feature(enable = "avx512f")]
#[inline]
fn relu16(y: __m512) -> __m512 {
    let zero = _mm512_setzero_ps();
    _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(y, zero), zero)
}

/// 16 f32 lanes rounded to bf16 (`VCVTNEPS2BF16`: nearest even), as bits.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
fn to_bf16(y: __m512) -> __m256i {
    // SAFETY: `__m256bh` and `__m256i` are both 256 bits of plain data.
    unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(y)) }
}

/// See [`LowpKernel::pack`]. Pixel by pixel, each one's channels in order: a
/// sequential read the hardware prefetchers follow (going over 64 channels of every
/// pixel in turn, as the fp32 pack does, waited on each pixel's next cache lines: the
/// pixels of a block buffer are 1-4 KiB apart).
///
/// # Safety
///
/// As [`LowpKernel::pack`], with AVX-512F/BW/VL and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack(
    src: Wide,
    offsets: &[usize],
    c_in: usize,
    c_pad: usize,
    prologue: (*const f32, *const f32),
    dst: *mut u16,
) {
    for (i, &offset) in offsets.iter().enumerate() {
        let dst = dst.wrapping_add(i * c_pad);
        // SAFETY: pixel `i`'s `c_in` channels are readable and its `c_pad` packed
        // values writable, by the contract.
        unsafe {
            match (src, prologue.0.is_null()) {
                (Wide::F32(p), true) => {
                    pack_pixel::<false, false>(p.add(offset).cast(), c_in, c_pad, prologue, dst)
                }
                (Wide::F32(p), false) => {
                    pack_pixel::<true, false>(p.add(offset).cast(), c_in, c_pad, prologue, dst)
                }
                (Wide::Bf16(p), true) => {
                    pack_pixel::<false, true>(p.add(offset).cast(), c_in, c_pad, prologue, dst)
                }
                (Wide::Bf16(p), false) => {
                    pack_pixel::<true, true>(p.add(offset).cast(), c_in, c_pad, prologue, dst)
                }
            }
        }
    }
}

/// One pixel of [`pack`]: `c_in` values from `src` (f32, or bf16 if `BF16`), through
/// the prologue if `PROLOGUE`, rounded to bf16 into `dst`'s `c_pad` values (those past
/// `c_in` zero).
///
/// # Safety
///
/// `src` holds `c_in` readable values, the prologue's pointers (if `PROLOGUE`) `c_in`
/// each, `dst` `c_pad ≤ c_in + 15` writable ones; the CPU has AVX-512F/BW/VL and
/// AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn pack_pixel<const PROLOGUE: bool, const BF16: bool>(
    src: *const u8,
    c_in: usize,
    c_pad: usize,
    (scale, shift): (*const f32, *const f32),
    dst: *mut u16,
) {
    // `load` masks the real channels; the padded ones load 0 and round to 0.
    // SAFETY (the closure's callers): channels `c ..` masked to `c_in` are readable,
    // the prologue's only when `PROLOGUE`.
    let convert = |c: usize, load: __mmask16| unsafe {
        let x = load16::<BF16>(src, c, load);
        let y = if PROLOGUE {
            // Multiply then add, unfused, as the fp32 prologue.
            let (sv, tv) = (
                _mm512_maskz_loadu_ps(load, scale.add(c)),
                _mm512_maskz_loadu_ps(load, shift.add(c)),
            );
            relu16(_mm512_add_ps(_mm512_mul_ps(x, sv), tv))
        } else {
            x
        };
        to_bf16(y)
    };
    let full = c_in / 16 * 16;
    let mut c = 0;
    while c < full {
        // SAFETY: channels `c .. c + 16 ≤ c_in` are readable and writable.
        unsafe { _mm256_storeu_si256(dst.add(c).cast(), convert(c, 0xffff)) };
        c += 16;
    }
    if c < c_pad {
        let (load, store) = (lanes(c_in - c), lanes(c_pad - c));
        // SAFETY: channels masked to `c_in` (reads) and `c_pad` (writes).
        unsafe { _mm256_mask_storeu_epi16(dst.add(c).cast(), store, convert(c, load)) };
    }
}

/// Accumulates an `MR`-pixel × `NV·16`-channel tile of fp32 sums (the last 16 channels
/// masked by `mask` at the store) over every tap and pair of channels, then applies
/// `post` and stores it. See [`LowpKernel::tile`] for the addresses.
///
/// # Safety
///
/// As [`LowpKernel::tile`], with AVX-512F/BW/VL and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize, const NV: usize>(
    a: *const u16,
    a_step: usize,
    taps: &[usize],
    groups: usize,
    b: *const u16,
    ldb: usize,
    mask: __mmask16,
    post: &Post,
    out: Out,
    c_offsets: &[usize; MAX_TILE],
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for (t, &tap) in taps.iter().enumerate() {
        // SAFETY (this block and the loop below): in bounds by the contract.
        let (at, bt) = unsafe { (a.add(tap), b.add(t * groups * ldb)) };
        for g in 0..groups {
            // The weight row `PREFETCH_ROWS` pairs ahead (a hint that never faults;
            // `wrapping_add` keeps the address arithmetic defined past the end).
            let ahead = bt.wrapping_add((g + PREFETCH_ROWS) * ldb);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            if NV == 2 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(32).cast());
            }
            let mut bv = [_mm512_setzero_si512(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                // SAFETY: row `t·groups + g` of the panel, inside it by the contract.
                *bv = unsafe { _mm512_loadu_si512(bt.add(g * ldb + 32 * v).cast()) };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // Two bf16 activations of pixel `i`, broadcast to every lane.
                // SAFETY: pixel `i`'s group `g` at tap `t`: readable by the contract.
                let pair = unsafe { at.add(i * a_step + 2 * g).cast::<i32>().read_unaligned() };
                let av = _mm512_set1_epi32(pair);
                for v in 0..NV {
                    // SAFETY: `__m512i` and `__m512bh` are both 512 bits of plain data.
                    acc[v] = unsafe {
                        _mm512_dpbf16_ps(
                            acc[v],
                            std::mem::transmute::<__m512i, __m512bh>(av),
                            std::mem::transmute::<__m512i, __m512bh>(bv[v]),
                        )
                    };
                }
            }
        }
    }
    let masks = |v: usize| if v + 1 == NV { mask } else { 0xffff };
    for v in 0..NV {
        let m = masks(v);
        // SAFETY: the unmasked columns of the epilogue's values, by the contract.
        let epilogue = (!post.scale.is_null()).then(|| unsafe {
            (
                _mm512_maskz_loadu_ps(m, post.scale.add(16 * v)),
                _mm512_maskz_loadu_ps(m, post.shift.add(16 * v)),
            )
        });
        for (i, acc) in acc.iter().enumerate() {
            let mut y = acc[v];
            if let Some((sv, tv)) = epilogue {
                y = relu16(_mm512_fmadd_ps(y, sv, tv));
            }
            // SAFETY: output pixel `i`, unmasked columns: writable by the contract.
            unsafe {
                match out {
                    Out::F32(c) => _mm512_mask_storeu_ps(c.add(c_offsets[i] + 16 * v), m, y),
                    Out::Bf16(c) => {
                        _mm256_mask_storeu_epi16(c.add(c_offsets[i] + 16 * v).cast(), m, to_bf16(y))
                    }
                    Out::U8(_) | Out::I32(_) => unreachable!("bf16 stores f32 or bf16"),
                }
            }
        }
    }
}
