//! f32 lanes rounded to bf16 bits with integer instructions, for kernels that store
//! bf16 on CPUs without AVX512-BF16's `VCVTNEPS2BF16` (the int8 kernels writing a
//! dense block's bf16 buffer, the Winograd output transform). The same rounding as
//! the instruction and as `lowp::bf16_round`: to nearest, ties to even; a NaN stays
//! NaN (made quiet); a subnormal input becomes zero of its sign.

use core::arch::x86_64::*;

/// 16 lanes of `y` rounded to bf16, the bits in the low half of each i32 lane (the
/// high half zero).
#[target_feature(enable = "avx512f")]
#[inline]
pub(in crate::kernels) fn bf16_bits16(y: __m512) -> __m512i {
    let bits = _mm512_castps_si512(y);
    let exponent = _mm512_and_si512(bits, _mm512_set1_epi32(0x7f80_0000));
    let zero = _mm512_setzero_si512();
    // Subnormals (and zeros) keep only their sign.
    let tiny = _mm512_cmpeq_epi32_mask(exponent, zero);
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(y, y);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    // No overflow: the largest non-NaN pattern, 0xff80_0000, plus 0x8000 fits in u32.
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        bits,
        _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)),
    ));
    let sign = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x8000));
    let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x40));
    let value = _mm512_mask_mov_epi32(rounded, tiny, sign);
    _mm512_mask_mov_epi32(value, nan, quiet)
}

/// 8 lanes of `y` rounded to bf16, the bits in the low half of each i32 lane (the
/// high half zero).
#[target_feature(enable = "avx2")]
#[inline]
pub(in crate::kernels) fn bf16_bits8(y: __m256) -> __m256i {
    let bits = _mm256_castps_si256(y);
    let exponent = _mm256_and_si256(bits, _mm256_set1_epi32(0x7f80_0000));
    let tiny = _mm256_cmpeq_epi32(exponent, _mm256_setzero_si256());
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(y, y));
    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
    let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(
        bits,
        _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)),
    ));
    let sign = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(0x8000));
    let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(0x40));
    let value = _mm256_blendv_epi8(rounded, sign, tiny);
    _mm256_blendv_epi8(value, quiet, nan)
}

/// The low 16 bits of each of `y`'s 8 lanes, in order.
#[target_feature(enable = "avx2")]
#[inline]
pub(in crate::kernels) fn words8(y: __m256i) -> __m128i {
    // Lanes hold 0..=0xffff, so the unsigned saturation keeps them.
    let packed = _mm256_packus_epi32(y, y); // per 128-bit half: y0..y3 twice
    _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(packed))
}

/// The bf16 bits of 16 or 8 f32s widened back to f32 (exact).
#[target_feature(enable = "avx512f")]
#[inline]
pub(in crate::kernels) fn widen16(bits: __m256i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
}

/// The 16 values at channel `c` of `src` (f32, or bf16 if `BF16`, widened), lanes
/// outside `mask` zero and not read: a packing kernel's load of either kind of input.
///
/// # Safety
///
/// The lanes in `mask` of channels `c ..` at `src` (elements of the kind) are readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub(in crate::kernels) unsafe fn load16<const BF16: bool>(
    src: *const u8,
    c: usize,
    mask: __mmask16,
) -> __m512 {
    // SAFETY: the caller's.
    unsafe {
        if BF16 {
            widen16(_mm256_maskz_loadu_epi16(
                mask,
                src.cast::<u16>().add(c).cast(),
            ))
        } else {
            _mm512_maskz_loadu_ps(mask, src.cast::<f32>().add(c))
        }
    }
}

/// See [`widen16`].
#[target_feature(enable = "avx2")]
#[inline]
pub(in crate::kernels) fn widen8(bits: __m128i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::direct_conv::lowp::bf16_round;

    /// Values that exercise every branch: ties both ways, subnormals, NaNs with
    /// payloads, infinities, values that round up to infinity, signed zeros.
    fn samples() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffa0_1234),
            f32::MIN_POSITIVE,
            f32::from_bits(0x0000_0001),
            f32::from_bits(0x807f_ffff),
            f32::from_bits(0x3f80_8000), // tie, even stays
            f32::from_bits(0x3f81_8000), // tie, odd rounds up
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x3f80_7fff),
            f32::from_bits(0x7f7f_8000), // rounds to infinity
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.push(f32::from_bits(state as u32));
        }
        v
    }

    #[test]
    fn the_lanes_round_as_bf16_round() {
        let values = samples();
        let expected: Vec<u16> = values.iter().map(|&x| bf16_round(x).to_bits()).collect();
        if std::arch::is_x86_feature_detected!("avx512f") {
            for (chunk, want) in values.chunks_exact(16).zip(expected.chunks_exact(16)) {
                let mut got = [0u32; 16];
                let mut back = [0f32; 16];
                // SAFETY: AVX-512F detected; 16 values read and written.
                unsafe {
                    let bits = bf16_bits16(_mm512_loadu_ps(chunk.as_ptr()));
                    _mm512_storeu_si512(got.as_mut_ptr().cast(), bits);
                    let words = _mm512_cvtepi32_epi16(bits);
                    _mm512_storeu_ps(back.as_mut_ptr(), widen16(words));
                }
                for i in 0..16 {
                    assert_eq!(got[i], u32::from(want[i]), "{:#x}", chunk[i].to_bits());
                    assert_eq!(back[i].to_bits(), u32::from(want[i]) << 16);
                }
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            for (chunk, want) in values.chunks_exact(8).zip(expected.chunks_exact(8)) {
                let mut got = [0u16; 8];
                let mut back = [0f32; 8];
                // SAFETY: AVX2 detected; 8 values read and written.
                unsafe {
                    let words = words8(bf16_bits8(_mm256_loadu_ps(chunk.as_ptr())));
                    _mm_storeu_si128(got.as_mut_ptr().cast(), words);
                    _mm256_storeu_ps(back.as_mut_ptr(), widen8(words));
                }
                assert_eq!(got, want, "{chunk:?}");
                for i in 0..8 {
                    assert_eq!(back[i].to_bits(), u32::from(want[i]) << 16);
                }
            }
        }
    }
}
