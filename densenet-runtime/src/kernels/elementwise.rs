//! Element-wise passes compiled twice: for the baseline target and with AVX-512
//! enabled, picked at run time. The body is the same safe loop; only the compiler's
//! vectorisation differs (16 lanes instead of the baseline's 4), which matters for the
//! BN-ReLU passes that run over every dense layer's input.

/// `dst[j] = relu(src[j]·scale[j] + shift[j])` for every `j < dst.len()` (the runtime's
/// ReLU: `y <= 0 → 0`, so NaN stays NaN and -0.0 becomes 0.0).
///
/// # Panics
///
/// If `src`, `scale` or `shift` is shorter than `dst`.
pub fn scale_shift_relu(src: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) {
    let len = dst.len();
    let (src, scale, shift) = (&src[..len], &scale[..len], &shift[..len]);
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { scale_shift_relu_avx512(src, scale, shift, dst) };
        return;
    }
    scale_shift_relu_body(src, scale, shift, dst);
}

/// [`scale_shift_relu_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn scale_shift_relu_avx512(src: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) {
    scale_shift_relu_body(src, scale, shift, dst);
}

#[inline(always)]
fn scale_shift_relu_body(src: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) {
    for (((o, &v), &s), &t) in dst.iter_mut().zip(src).zip(scale).zip(shift) {
        let y = v * s + t;
        *o = if y <= 0.0 { 0.0 } else { y };
    }
}

/// `dst[j] += relu(src[j]·scale[j] + shift[j])` for every `j < dst.len()`: one input
/// pixel's BN-ReLU added into a pooling sum.
///
/// # Panics
///
/// If `src`, `scale` or `shift` is shorter than `dst`.
pub fn scale_shift_relu_add(src: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) {
    let len = dst.len();
    let (src, scale, shift) = (&src[..len], &scale[..len], &shift[..len]);
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { scale_shift_relu_add_avx512(src, scale, shift, dst) };
        return;
    }
    scale_shift_relu_add_body(src, scale, shift, dst);
}

/// [`scale_shift_relu_add_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn scale_shift_relu_add_avx512(src: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) {
    scale_shift_relu_add_body(src, scale, shift, dst);
}

#[inline(always)]
fn scale_shift_relu_add_body(src: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) {
    for (((o, &v), &s), &t) in dst.iter_mut().zip(src).zip(scale).zip(shift) {
        let y = v * s + t;
        *o += if y <= 0.0 { 0.0 } else { y };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_passes_match_the_portable_bodies() {
        let len = 1000;
        let f = |i: usize, a: usize| ((i * a) % 97) as f32 / 13.0 - 3.5;
        let src: Vec<f32> = (0..len).map(|i| f(i, 7)).collect();
        let scale: Vec<f32> = (0..len).map(|i| f(i, 11)).collect();
        let shift: Vec<f32> = (0..len).map(|i| f(i, 5)).collect();
        for n in [0, 1, 15, 16, 17, 999, 1000] {
            let mut fast = vec![f32::NAN; n];
            let mut slow = vec![f32::NAN; n];
            scale_shift_relu(&src, &scale, &shift, &mut fast);
            scale_shift_relu_body(&src[..n], &scale[..n], &shift[..n], &mut slow);
            assert_eq!(fast, slow, "length {n}");
        }
        for n in [0, 1, 17, 1000] {
            let mut fast: Vec<f32> = (0..n).map(|i| f(i, 3)).collect();
            let mut slow = fast.clone();
            scale_shift_relu_add(&src, &scale, &shift, &mut fast);
            scale_shift_relu_add_body(&src[..n], &scale[..n], &shift[..n], &mut slow);
            assert_eq!(fast, slow, "length {n}");
        }
        // The ReLU's edge cases: NaN stays, -0.0 and negatives become 0.0.
        let mut out = [1.0f32; 3];
        scale_shift_relu(&[f32::NAN, -0.0, -2.0], &[1.0; 3], &[0.0; 3], &mut out);
        assert!(out[0].is_nan());
        assert_eq!(out[1].to_bits(), 0.0f32.to_bits());
        assert_eq!(out[2], 0.0);
    }
}
