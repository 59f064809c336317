//! Element-wise passes compiled twice: for the baseline target and with AVX-512
//! enabled, picked at run time. The body is the same safe loop; only the compiler's
//! vectorisation differs (16 lanes instead of the baseline's 4), which matters for the
//! BN-ReLU passes that run over every dense layer's input, and for the training step's
//! BatchNorm-ReLU backward passes, which run over it twice per layer.

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

/// The per-channel constants of a BatchNorm-ReLU backward row pass: the forward's
/// folded `scale` and `shift` (to recompute the ReLU's mask) and the batch `mean`.
#[derive(Clone, Copy)]
pub struct BnBackwardRow<'a> {
    /// `gamma·invstd` per channel.
    pub scale: &'a [f32],
    /// `beta − mean·scale` per channel.
    pub shift: &'a [f32],
    /// The batch mean per channel.
    pub mean: &'a [f32],
}

/// The gradient reaching the BN output: `d`, or 0 where the ReLU (if `RELU`) clipped,
/// tested on the same values as the forward pass, so the masks agree.
#[inline(always)]
fn masked<const RELU: bool>(v: f32, d: f32, s: f32, t: f32) -> f32 {
    if RELU && v * s + t <= 0.0 {
        0.0
    } else {
        d
    }
}

/// `sum_g[j] += g` and `sum_gd[j] += g·(x[j] − mean[j])` for one row of `x`, `dy`, with
/// `g = dy[j]` masked by the ReLU if `RELU`.
///
/// # Panics
///
/// If `x`, `dy` or a constant is shorter than `sum_g`, or `sum_gd` is.
pub fn bn_backward_sums<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    sum_g: &mut [f32],
    sum_gd: &mut [f32],
) {
    let len = sum_g.len();
    let (x, dy, sum_gd) = (&x[..len], &dy[..len], &mut sum_gd[..len]);
    let k = BnBackwardRow {
        scale: &k.scale[..len],
        shift: &k.shift[..len],
        mean: &k.mean[..len],
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { bn_backward_sums_avx512::<RELU>(x, dy, k, sum_g, sum_gd) };
        return;
    }
    bn_backward_sums_body::<RELU>(x, dy, k, sum_g, sum_gd);
}

/// [`bn_backward_sums_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn bn_backward_sums_avx512<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    sum_g: &mut [f32],
    sum_gd: &mut [f32],
) {
    bn_backward_sums_body::<RELU>(x, dy, k, sum_g, sum_gd);
}

#[inline(always)]
fn bn_backward_sums_body<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    sum_g: &mut [f32],
    sum_gd: &mut [f32],
) {
    let it = x.iter().zip(dy).zip(k.scale).zip(k.shift).zip(k.mean);
    for ((((((&v, &d), &s), &t), &m), sg), sgd) in it.zip(sum_g).zip(sum_gd) {
        let g = masked::<RELU>(v, d, s, t);
        *sg += g;
        *sgd += g * (v - m);
    }
}

/// `dx[j] += a[j]·g + b[j]·(x[j] − mean[j]) + c[j]` for one row, with `g = dy[j]` masked
/// by the ReLU if `RELU`: a BatchNorm's input gradient given its sums.
///
/// # Panics
///
/// If `x`, `dy`, a constant, `a`, `b` or `c` is shorter than `dx`.
pub fn bn_backward_dx<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    (a, b, c): (&[f32], &[f32], &[f32]),
    dx: &mut [f32],
) {
    let len = dx.len();
    let (x, dy) = (&x[..len], &dy[..len]);
    let abc = (&a[..len], &b[..len], &c[..len]);
    let k = BnBackwardRow {
        scale: &k.scale[..len],
        shift: &k.shift[..len],
        mean: &k.mean[..len],
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { bn_backward_dx_avx512::<RELU>(x, dy, k, abc, dx) };
        return;
    }
    bn_backward_dx_body::<RELU>(x, dy, k, abc, dx);
}

/// [`bn_backward_dx_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn bn_backward_dx_avx512<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    abc: (&[f32], &[f32], &[f32]),
    dx: &mut [f32],
) {
    bn_backward_dx_body::<RELU>(x, dy, k, abc, dx);
}

#[inline(always)]
fn bn_backward_dx_body<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    (a, b, c): (&[f32], &[f32], &[f32]),
    dx: &mut [f32],
) {
    let it = x.iter().zip(dy).zip(k.scale).zip(k.shift).zip(k.mean);
    for ((((((((&v, &d), &s), &t), &m), &a), &b), &c), o) in it.zip(a).zip(b).zip(c).zip(dx) {
        *o += a * masked::<RELU>(v, d, s, t) + b * (v - m) + c;
    }
}

/// One row of a BatchNorm-ReLU backward pass that needs no sums yet: with
/// `g = dy[j]` masked by the ReLU if `RELU`, `sum_g[j] += g`,
/// `sum_gd[j] += g·(x[j] − mean[j])` and `dx[j] += a[j]·g` (the input gradient's term
/// that does not depend on the sums; the others are added later).
///
/// # Panics
///
/// If `x`, `dy`, a constant, `a` or `sum_gd` is shorter than `sum_g`, or `dx` is.
pub fn bn_backward_sums_and_scaled<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    a: &[f32],
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
    dx: &mut [f32],
) {
    let len = sum_g.len();
    let (x, dy, a) = (&x[..len], &dy[..len], &a[..len]);
    let (sum_gd, dx) = (&mut sum_gd[..len], &mut dx[..len]);
    let k = BnBackwardRow {
        scale: &k.scale[..len],
        shift: &k.shift[..len],
        mean: &k.mean[..len],
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { bn_backward_sums_and_scaled_avx512::<RELU>(x, dy, k, a, (sum_g, sum_gd), dx) };
        return;
    }
    bn_backward_sums_and_scaled_body::<RELU>(x, dy, k, a, (sum_g, sum_gd), dx);
}

/// [`bn_backward_sums_and_scaled_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn bn_backward_sums_and_scaled_avx512<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    a: &[f32],
    sums: (&mut [f32], &mut [f32]),
    dx: &mut [f32],
) {
    bn_backward_sums_and_scaled_body::<RELU>(x, dy, k, a, sums, dx);
}

#[inline(always)]
fn bn_backward_sums_and_scaled_body<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    a: &[f32],
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
    dx: &mut [f32],
) {
    let it = x
        .iter()
        .zip(dy)
        .zip(k.scale)
        .zip(k.shift)
        .zip(k.mean)
        .zip(a);
    for (((((((&v, &d), &s), &t), &m), &a), sg), (sgd, o)) in
        it.zip(sum_g).zip(sum_gd.iter_mut().zip(dx))
    {
        let g = masked::<RELU>(v, d, s, t);
        *sg += g;
        *sgd += g * (v - m);
        *o += a * g;
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

    #[test]
    fn dispatched_batch_norm_backward_rows_match_the_portable_bodies() {
        let len = 1000;
        let f = |i: usize, a: usize| ((i * a) % 97) as f32 / 13.0 - 3.5;
        let v = |a: usize| -> Vec<f32> { (0..len).map(|i| f(i, a)).collect() };
        let (x, dy, scale, shift, mean) = (v(7), v(11), v(5), v(3), v(13));
        let (a, b, c) = (v(17), v(19), v(23));
        let k = BnBackwardRow {
            scale: &scale,
            shift: &shift,
            mean: &mean,
        };
        let cut = |n: usize| BnBackwardRow {
            scale: &scale[..n],
            shift: &shift[..n],
            mean: &mean[..n],
        };
        for n in [0, 1, 15, 16, 17, 999, 1000] {
            let start: Vec<f32> = (0..n).map(|i| f(i, 29)).collect();
            let (mut fast, mut slow) = ((start.clone(), start.clone()), (start.clone(), start));
            bn_backward_sums::<true>(&x, &dy, k, &mut fast.0, &mut fast.1);
            bn_backward_sums_body::<true>(&x[..n], &dy[..n], cut(n), &mut slow.0, &mut slow.1);
            assert_eq!(fast, slow, "sums, relu, length {n}");
            bn_backward_sums::<false>(&x, &dy, k, &mut fast.0, &mut fast.1);
            bn_backward_sums_body::<false>(&x[..n], &dy[..n], cut(n), &mut slow.0, &mut slow.1);
            assert_eq!(fast, slow, "sums, length {n}");
            let abc = (&a[..n], &b[..n], &c[..n]);
            bn_backward_dx::<true>(&x, &dy, k, (&a, &b, &c), &mut fast.0);
            bn_backward_dx_body::<true>(&x[..n], &dy[..n], cut(n), abc, &mut slow.0);
            assert_eq!(fast.0, slow.0, "dx, relu, length {n}");
            bn_backward_dx::<false>(&x, &dy, k, (&a, &b, &c), &mut fast.1);
            bn_backward_dx_body::<false>(&x[..n], &dy[..n], cut(n), abc, &mut slow.1);
            assert_eq!(fast.1, slow.1, "dx, length {n}");
            let mut fast_dx: Vec<f32> = (0..n).map(|i| f(i, 31)).collect();
            let mut slow_dx = fast_dx.clone();
            let sums = (&mut fast.0[..], &mut fast.1[..]);
            bn_backward_sums_and_scaled::<true>(&x, &dy, k, &a, sums, &mut fast_dx);
            let sums = (&mut slow.0[..], &mut slow.1[..]);
            let cut_a = &a[..n];
            bn_backward_sums_and_scaled_body::<true>(
                &x[..n],
                &dy[..n],
                cut(n),
                cut_a,
                sums,
                &mut slow_dx,
            );
            assert_eq!(
                (&fast, &fast_dx),
                (&slow, &slow_dx),
                "fused, relu, length {n}"
            );
        }
    }
}
