//! The int8 AVX-512 kernels: 14-pixel × 32-channel tiles of i32 sums in 28 zmm
//! registers, `VPDPBUSD` (AVX512-VNNI) multiplying a broadcast group of four u8
//! activations by the four s8 weights of each of 16 output channels.

use std::arch::x86_64::*;

use super::super::bf16_lanes::{bf16_bits16, load16};
use super::super::{MAX_TILE, PREFETCH_ROWS};
use super::job::{LowpKernel, Out, Post, Wide};

/// AVX-512F/BW/VL and AVX512-VNNI (detected at run time by `conv_int8`).
pub(super) struct Avx512Vnni;

impl LowpKernel for Avx512Vnni {
    type Act = u8;
    type W = i8;
    const GROUP: usize = 4;
    const TILE: usize = 14;
    const PANEL: usize = 32;

    unsafe fn pack(
        src: Wide,
        offsets: &[usize],
        c_in: usize,
        c_pad: usize,
        prologue: (*const f32, *const f32),
        inv_scale: f32,
        dst: *mut u8,
    ) {
        // SAFETY: the trait's contract, which includes the instruction set.
        unsafe { pack(src, offsets, c_in, c_pad, prologue, inv_scale, dst) }
    }

    unsafe fn tile(
        rows: usize,
        width: usize,
        a: *const u8,
        a_step: usize,
        taps: &[usize],
        groups: usize,
        b: *const i8,
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

/// `round(max(y, 0))` of 16 lanes as i32 (NaN to 0: `VMAXPS` returns its second
/// operand, zero, when the first is NaN; rounding to nearest even, MXCSR's default, as
/// the reference's `round_ties_even`). Values of 2³¹ and more become `i32::MIN`, whose
/// unsigned saturation (`VPMOVUSDB`) is 255 like that of any value above 255: so the
/// clamp at 255 is the store's.
#[target_feature(enable = "avx512f")]
#[inline]
fn round_positive(y: __m512) -> __m512i {
    _mm512_cvtps_epi32(_mm512_max_ps(y, _mm512_setzero_ps()))
}

/// [`relu`](super::super::relu) of 16 lanes: `y <= 0 → 0`, NaN stays NaN.
#[target_feature(enable = "avx512f")]
#[inline]
fn relu16(y: __m512) -> __m512 {
    let zero = _mm512_setzero_ps();
    _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(y, zero), zero)
}

/// See [`LowpKernel::pack`]: `q = min(round(max(z, 0)), 255)` with
/// `z = fma(x, scale·inv, shift·inv)` (the prologue and the quantization's scale in
/// one multiply-add; `max(·, 0)` is the ReLU) or, without a prologue, `z = x·inv`.
/// Pixel by pixel, each one's channels in order, the prologue folded again for each:
/// a sequential read the hardware prefetchers follow. (Going over 64 channels of every
/// pixel in turn, the folded prologue kept in registers, waited on each pixel's next
/// cache lines, the pixels of a block buffer being 1-4 KiB apart.)
///
/// # Safety
///
/// As [`LowpKernel::pack`], with AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack(
    src: Wide,
    offsets: &[usize],
    c_in: usize,
    c_pad: usize,
    prologue: (*const f32, *const f32),
    inv_scale: f32,
    dst: *mut u8,
) {
    for (i, &offset) in offsets.iter().enumerate() {
        let dst = dst.wrapping_add(i * c_pad);
        let p = prologue;
        // SAFETY: pixel `i`'s `c_in` channels are readable and its `c_pad` packed
        // values writable, by the contract.
        unsafe {
            match (src, prologue.0.is_null()) {
                (Wide::F32(s), true) => {
                    pack_pixel::<false, false>(s.add(offset).cast(), c_in, c_pad, p, inv_scale, dst)
                }
                (Wide::F32(s), false) => {
                    pack_pixel::<true, false>(s.add(offset).cast(), c_in, c_pad, p, inv_scale, dst)
                }
                (Wide::Bf16(s), true) => {
                    pack_pixel::<false, true>(s.add(offset).cast(), c_in, c_pad, p, inv_scale, dst)
                }
                (Wide::Bf16(s), false) => {
                    pack_pixel::<true, true>(s.add(offset).cast(), c_in, c_pad, p, inv_scale, dst)
                }
            }
        }
    }
}

/// One pixel of [`pack`]: `c_in` values from `src` (f32, or bf16 if `BF16`), through
/// the folded prologue if `PROLOGUE`, quantized into `dst`'s `c_pad` values (those past
/// `c_in` zero).
///
/// # Safety
///
/// `src` holds `c_in` readable values, the prologue's pointers (if `PROLOGUE`) `c_in`
/// each, `dst` `c_pad ≤ c_in + 15` writable ones; the CPU has AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn pack_pixel<const PROLOGUE: bool, const BF16: bool>(
    src: *const u8,
    c_in: usize,
    c_pad: usize,
    (scale, shift): (*const f32, *const f32),
    inv_scale: f32,
    dst: *mut u8,
) {
    let inv = _mm512_set1_ps(inv_scale);
    // `load` masks the real channels; the padded ones load 0 and quantize to 0.
    // SAFETY (the closure's callers): channels `c ..` masked to `c_in` are readable,
    // the prologue's only when `PROLOGUE`.
    let quantize = |c: usize, load: __mmask16| unsafe {
        let x = load16::<BF16>(src, c, load);
        let z = if PROLOGUE {
            let sv = _mm512_mul_ps(_mm512_maskz_loadu_ps(load, scale.add(c)), inv);
            let tv = _mm512_mul_ps(_mm512_maskz_loadu_ps(load, shift.add(c)), inv);
            _mm512_fmadd_ps(x, sv, tv)
        } else {
            _mm512_mul_ps(x, inv)
        };
        round_positive(z)
    };
    let full = c_in / 16 * 16;
    let mut c = 0;
    while c < full {
        // SAFETY: channels `c .. c + 16 ≤ c_in` are readable and writable.
        unsafe {
            _mm512_mask_cvtusepi32_storeu_epi8(dst.add(c).cast(), 0xffff, quantize(c, 0xffff))
        };
        c += 16;
    }
    if c < c_pad {
        let (load, store) = (lanes(c_in - c), lanes(c_pad - c));
        // SAFETY: channels masked to `c_in` (reads) and `c_pad` (writes).
        unsafe { _mm512_mask_cvtusepi32_storeu_epi8(dst.add(c).cast(), store, quantize(c, load)) };
    }
}

/// Accumulates an `MR`-pixel × `NV·16`-channel tile of i32 sums (the last 16 channels
/// masked by `mask` at the store) over every tap and group, then applies `post` and
/// stores it. See [`LowpKernel::tile`] for the addresses.
///
/// # Safety
///
/// As [`LowpKernel::tile`], with AVX-512F/BW/VL and AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize, const NV: usize>(
    a: *const u8,
    a_step: usize,
    taps: &[usize],
    groups: usize,
    b: *const i8,
    ldb: usize,
    mask: __mmask16,
    post: &Post,
    out: Out,
    c_offsets: &[usize; MAX_TILE],
) {
    let mut acc = [[_mm512_setzero_si512(); NV]; MR];
    for (t, &tap) in taps.iter().enumerate() {
        // SAFETY (this block and the loop below): in bounds by the contract.
        let (at, bt) = unsafe { (a.add(tap), b.add(t * groups * ldb)) };
        for g in 0..groups {
            // The weight row `PREFETCH_ROWS` groups ahead (a hint that never faults;
            // `wrapping_add` keeps the address arithmetic defined past the end).
            let ahead = bt.wrapping_add((g + PREFETCH_ROWS) * ldb);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            if NV == 2 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
            }
            let mut bv = [_mm512_setzero_si512(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                // SAFETY: row `t·groups + g` of the panel, inside it by the contract.
                *bv = unsafe { _mm512_loadu_si512(bt.add(g * ldb + 64 * v).cast()) };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // Four u8 activations of pixel `i`, broadcast to every lane.
                // SAFETY: pixel `i`'s group `g` at tap `t`: readable by the contract.
                let group = unsafe { at.add(i * a_step + 4 * g).cast::<i32>().read_unaligned() };
                let av = _mm512_set1_epi32(group);
                for v in 0..NV {
                    acc[v] = _mm512_dpbusd_epi32(acc[v], av, bv[v]);
                }
            }
        }
    }
    let masks = |v: usize| if v + 1 == NV { mask } else { 0xffff };
    if let Out::I32(c) = out {
        for (i, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                // SAFETY: output pixel `i`, unmasked columns: writable by the contract.
                unsafe {
                    _mm512_mask_storeu_epi32(c.add(c_offsets[i] + 16 * v).cast(), masks(v), acc)
                };
            }
        }
        return;
    }
    let act_scale = _mm512_set1_ps(post.act_scale);
    let inv = _mm512_set1_ps(post.out_inv_scale);
    let u8_out = matches!(out, Out::U8(_));
    for v in 0..NV {
        let m = masks(v);
        // The per-channel factors, folded as `conv_int8_reference` folds them:
        // `y = f32(acc)·mul (+ add)`, with `mul = scale_a·scale_w (·scale) (·inv)`
        // and `add = shift (·inv)`.
        // SAFETY: the unmasked columns of the per-channel values, by the contract.
        let (mul, add) = unsafe {
            let mut mul = _mm512_mul_ps(
                act_scale,
                _mm512_maskz_loadu_ps(m, post.weight_scale.add(16 * v)),
            );
            let mut add = None;
            if !post.scale.is_null() {
                mul = _mm512_mul_ps(mul, _mm512_maskz_loadu_ps(m, post.scale.add(16 * v)));
                add = Some(_mm512_maskz_loadu_ps(m, post.shift.add(16 * v)));
            }
            if u8_out {
                mul = _mm512_mul_ps(mul, inv);
                add = add.map(|t| _mm512_mul_ps(t, inv));
            }
            (mul, add)
        };
        for (i, acc) in acc.iter().enumerate() {
            let x = _mm512_cvtepi32_ps(acc[v]);
            let y = match add {
                Some(t) => _mm512_fmadd_ps(x, mul, t),
                None => _mm512_mul_ps(x, mul),
            };
            // SAFETY: output pixel `i`, unmasked columns: writable by the contract.
            unsafe {
                match out {
                    Out::F32(c) => {
                        let y = if add.is_some() { relu16(y) } else { y };
                        _mm512_mask_storeu_ps(c.add(c_offsets[i] + 16 * v), m, y)
                    }
                    Out::Bf16(c) => {
                        let y = if add.is_some() { relu16(y) } else { y };
                        _mm512_mask_cvtepi32_storeu_epi16(
                            c.add(c_offsets[i] + 16 * v).cast(),
                            m,
                            bf16_bits16(y),
                        )
                    }
                    // `max(·, 0)` in the rounding is the ReLU.
                    Out::U8(c) => _mm512_mask_cvtusepi32_storeu_epi8(
                        c.add(c_offsets[i] + 16 * v).cast(),
                        m,
                        round_positive(y),
                    ),
                    Out::I32(_) => unreachable!("stored above"),
                }
            }
        }
    }
}
