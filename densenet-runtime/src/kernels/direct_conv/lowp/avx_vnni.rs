//! The int8 AVX-VNNI kernels, for CPUs with the 256-bit VEX form of `VPDPBUSD` but
//! without AVX-512 (Alder Lake and later client cores, Zen 5's VEX path): 6-pixel ×
//! 16-channel tiles of i32 sums in 12 of the 16 ymm registers, as the fp32 AVX2 kernel.

use std::arch::x86_64::*;

use super::super::bf16_lanes::{bf16_bits8, widen8, words8};
use super::super::{MAX_TILE, PREFETCH_ROWS};
use super::job::{LowpKernel, Out, Post, Wide};

/// AVX2, FMA and AVX-VNNI (detected at run time by `conv_int8`).
pub(super) struct AvxVnni;

impl LowpKernel for AvxVnni {
    type Act = u8;
    type W = i8;
    const GROUP: usize = 4;
    const TILE: usize = 6;
    const PANEL: usize = 16;

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
                match (rows, width > 8) {
                    $(
                        ($mr, true) => tile::<$mr, 2>,
                        ($mr, false) => tile::<$mr, 1>,
                    )*
                    _ => unreachable!("tile rows are 1..=6"),
                }
            };
        }
        let kernel = pick!(1 2 3 4 5 6);
        // SAFETY: the trait's contract.
        unsafe { kernel(a, a_step, taps, groups, b, ldb, width, post, out, c_offsets) }
    }
}

/// The lanes `0 .. n` of 8 as a mask vector (all ones in a lane to keep).
#[target_feature(enable = "avx2")]
#[inline]
fn lanes(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// `clamp(round(y·inv), 0, 255)` of 8 lanes as i32, NaN to 0 (`VMAXPS` returns its
/// second operand, zero, when the first is NaN).
#[target_feature(enable = "avx2")]
#[inline]
fn quantize8(y: __m256, inv: __m256) -> __m256i {
    let clamped = _mm256_min_ps(
        _mm256_max_ps(_mm256_mul_ps(y, inv), _mm256_setzero_ps()),
        _mm256_set1_ps(255.0),
    );
    _mm256_cvtps_epi32(clamped)
}

/// The low byte of each of 8 i32 lanes (values in `0..=255`), in order.
#[target_feature(enable = "avx2")]
#[inline]
fn bytes8(q: __m256i) -> [u8; 8] {
    let words = _mm256_packus_epi32(q, q); // per 128-bit half: q0..q3, q0..q3
    let bytes = _mm256_packus_epi16(words, words); // per half: q0..q3 four times
    let both = _mm_unpacklo_epi32(
        _mm256_castsi256_si128(bytes),
        _mm256_extracti128_si256::<1>(bytes),
    );
    (_mm_cvtsi128_si64(both) as u64).to_le_bytes()
}

/// Writes the first `n ≤ 8` of `values` to `dst`.
///
/// # Safety
///
/// `n` bytes at `dst` are valid for writes.
#[inline]
unsafe fn store_bytes(dst: *mut u8, values: [u8; 8], n: usize) {
    // SAFETY: the caller's; `values` has 8 ≥ n bytes.
    unsafe {
        if n == 8 {
            // One store rather than a copy of a variable length.
            dst.cast::<u64>()
                .write_unaligned(u64::from_ne_bytes(values));
        } else {
            std::ptr::copy_nonoverlapping(values.as_ptr(), dst, n)
        }
    }
}

/// [`relu`](super::super::relu) of 8 lanes: `y <= 0 → 0`, NaN stays NaN.
#[target_feature(enable = "avx")]
#[inline]
fn relu8(y: __m256) -> __m256 {
    let zero = _mm256_setzero_ps();
    _mm256_blendv_ps(y, zero, _mm256_cmp_ps::<_CMP_LE_OQ>(y, zero))
}

/// See [`LowpKernel::pack`]: `q = clamp(round(z), 0, 255)` with
/// `z = fma(x, scale·inv, shift·inv)` (the prologue and the quantization's scale in
/// one multiply-add; the clamp at 0 is the ReLU) or, without a prologue, `z = x·inv`,
/// as the AVX-512 kernel.
///
/// # Safety
///
/// As [`LowpKernel::pack`], with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack(
    src: Wide,
    offsets: &[usize],
    c_in: usize,
    c_pad: usize,
    (scale, shift): (*const f32, *const f32),
    inv_scale: f32,
    dst: *mut u8,
) {
    let one = _mm256_set1_ps(1.0);
    let inv = _mm256_set1_ps(inv_scale);
    for c0 in (0..c_pad).step_by(8) {
        let real = c_in.saturating_sub(c0);
        let (load, store) = (lanes(real), (c_pad - c0).min(8));
        // SAFETY: channels `c0 ..` masked to `c_in`: valid by the contract.
        let (sv, tv) = if scale.is_null() {
            (inv, _mm256_setzero_ps())
        } else {
            unsafe {
                (
                    _mm256_mul_ps(_mm256_maskload_ps(scale.add(c0), load), inv),
                    _mm256_mul_ps(_mm256_maskload_ps(shift.add(c0), load), inv),
                )
            }
        };
        for (i, &offset) in offsets.iter().enumerate() {
            // SAFETY: pixel `i`'s channels masked to `c_in` (reads; the masked-off
            // lanes are not accessed) and `store ≤ c_pad − c0` bytes (writes): valid
            // by the contract.
            unsafe {
                let x = match src {
                    Wide::F32(p) => _mm256_maskload_ps(p.add(offset + c0), load),
                    Wide::Bf16(p) => widen8(load_words(p.add(offset + c0), real)),
                };
                let z = if scale.is_null() {
                    _mm256_mul_ps(x, sv)
                } else {
                    _mm256_fmadd_ps(x, sv, tv)
                };
                store_bytes(dst.add(i * c_pad + c0), bytes8(quantize8(z, one)), store);
            }
        }
    }
}

/// The first `n` (of 8) u16 at `src`, the rest zero.
///
/// # Safety
///
/// `min(n, 8)` values at `src` are readable; the CPU has SSE2 (x86-64's baseline).
#[inline]
unsafe fn load_words(src: *const u16, n: usize) -> __m128i {
    // SAFETY: the caller's.
    unsafe {
        if n >= 8 {
            _mm_loadu_si128(src.cast())
        } else {
            let mut words = [0u16; 8];
            std::ptr::copy_nonoverlapping(src, words.as_mut_ptr(), n);
            _mm_loadu_si128(words.as_ptr().cast())
        }
    }
}

/// Writes the first `n ≤ 8` u16 of `values` to `dst`.
///
/// # Safety
///
/// `n` values at `dst` are valid for writes; the CPU has SSE2 (x86-64's baseline).
#[inline]
unsafe fn store_words(dst: *mut u16, values: __m128i, n: usize) {
    // SAFETY: the caller's.
    unsafe {
        if n >= 8 {
            _mm_storeu_si128(dst.cast(), values);
        } else {
            let mut words = [0u16; 8];
            _mm_storeu_si128(words.as_mut_ptr().cast(), values);
            std::ptr::copy_nonoverlapping(words.as_ptr(), dst, n);
        }
    }
}

/// Accumulates an `MR`-pixel × `NV·8`-channel tile of i32 sums (storing the first
/// `width` channels) over every tap and group, then applies `post` and stores it. See
/// [`LowpKernel::tile`] for the addresses.
///
/// # Safety
///
/// As [`LowpKernel::tile`], with AVX2, FMA and AVX-VNNI.
#[target_feature(enable = "avx2,fma,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize, const NV: usize>(
    a: *const u8,
    a_step: usize,
    taps: &[usize],
    groups: usize,
    b: *const i8,
    ldb: usize,
    width: usize,
    post: &Post,
    out: Out,
    c_offsets: &[usize; MAX_TILE],
) {
    let mut acc = [[_mm256_setzero_si256(); NV]; MR];
    for (t, &tap) in taps.iter().enumerate() {
        // SAFETY (this block and the loop below): in bounds by the contract.
        let (at, bt) = unsafe { (a.add(tap), b.add(t * groups * ldb)) };
        for g in 0..groups {
            _mm_prefetch::<_MM_HINT_T0>(bt.wrapping_add((g + PREFETCH_ROWS) * ldb).cast());
            let mut bv = [_mm256_setzero_si256(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                // SAFETY: row `t·groups + g` of the panel, inside it by the contract.
                *bv = unsafe { _mm256_loadu_si256(bt.add(g * ldb + 32 * v).cast()) };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: pixel `i`'s group `g` at tap `t`: readable by the contract.
                let group = unsafe { at.add(i * a_step + 4 * g).cast::<i32>().read_unaligned() };
                let av = _mm256_set1_epi32(group);
                for v in 0..NV {
                    acc[v] = _mm256_dpbusd_avx_epi32(acc[v], av, bv[v]);
                }
            }
        }
    }
    let act_scale = _mm256_set1_ps(post.act_scale);
    let inv = _mm256_set1_ps(post.out_inv_scale);
    let one = _mm256_set1_ps(1.0);
    let u8_out = matches!(out, Out::U8(_));
    for v in 0..NV {
        let n = width - 8 * v;
        let m = lanes(n);
        if let Out::I32(c) = out {
            for (i, acc) in acc.iter().enumerate() {
                // SAFETY: output pixel `i`, its first `n` columns: writable by the contract.
                unsafe { _mm256_maskstore_epi32(c.add(c_offsets[i] + 8 * v), m, acc[v]) };
            }
            continue;
        }
        // The per-channel factors, folded as in the AVX-512 kernel.
        // SAFETY: the first `n` columns of the per-channel values, by the contract.
        let (mul, add) = unsafe {
            let mut mul = _mm256_mul_ps(
                act_scale,
                _mm256_maskload_ps(post.weight_scale.add(8 * v), m),
            );
            let mut add = None;
            if !post.scale.is_null() {
                mul = _mm256_mul_ps(mul, _mm256_maskload_ps(post.scale.add(8 * v), m));
                add = Some(_mm256_maskload_ps(post.shift.add(8 * v), m));
            }
            if u8_out {
                mul = _mm256_mul_ps(mul, inv);
                add = add.map(|t| _mm256_mul_ps(t, inv));
            }
            (mul, add)
        };
        for (i, acc) in acc.iter().enumerate() {
            let x = _mm256_cvtepi32_ps(acc[v]);
            let y = match add {
                Some(t) => _mm256_fmadd_ps(x, mul, t),
                None => _mm256_mul_ps(x, mul),
            };
            // SAFETY: output pixel `i`, its first `n` columns: writable by the contract.
            unsafe {
                match out {
                    Out::F32(c) => {
                        let y = if add.is_some() { relu8(y) } else { y };
                        _mm256_maskstore_ps(c.add(c_offsets[i] + 8 * v), m, y)
                    }
                    Out::U8(c) => store_bytes(
                        c.add(c_offsets[i] + 8 * v),
                        bytes8(quantize8(y, one)),
                        n.min(8),
                    ),
                    Out::Bf16(c) => {
                        let y = if add.is_some() { relu8(y) } else { y };
                        store_words(c.add(c_offsets[i] + 8 * v), words8(bf16_bits8(y)), n)
                    }
                    Out::I32(_) => unreachable!("stored above"),
                }
            }
        }
    }
}
