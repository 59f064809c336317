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

/// [`scale_shift_relu`] of every row of `src` (adjacent columns) into the contiguous
/// rows of `dst`, in one call.
///
/// # Panics
///
/// If `src`'s columns are not adjacent, `scale` or `shift` is shorter than a row, or
/// `dst` than `src`.
pub fn scale_shift_relu_rows(
    src: ndarray::ArrayView2<'_, f32>,
    scale: &[f32],
    shift: &[f32],
    dst: &mut [f32],
) {
    let (rows, len) = src.dim();
    assert!(
        len <= 1 || src.strides()[1] == 1,
        "columns must be adjacent"
    );
    let (scale, shift, dst) = (&scale[..len], &shift[..len], &mut dst[..rows * len]);
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { scale_shift_relu_rows_avx512(src, scale, shift, dst) };
        return;
    }
    scale_shift_relu_rows_body(src, scale, shift, dst);
}

/// [`scale_shift_relu_rows_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn scale_shift_relu_rows_avx512(
    src: ndarray::ArrayView2<'_, f32>,
    scale: &[f32],
    shift: &[f32],
    dst: &mut [f32],
) {
    scale_shift_relu_rows_body(src, scale, shift, dst);
}

#[inline(always)]
fn scale_shift_relu_rows_body(
    src: ndarray::ArrayView2<'_, f32>,
    scale: &[f32],
    shift: &[f32],
    dst: &mut [f32],
) {
    let out = dst.chunks_exact_mut(src.ncols().max(1));
    for (r, o) in src.rows().into_iter().zip(out) {
        scale_shift_relu_body(r.to_slice().expect("adjacent"), scale, shift, o);
    }
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

/// `sum[j] += x[j]` and `sum_sq[j] += x[j]²` in `f64` for every `j < x.len()`: one row
/// of a batch's moments (`train::batch_norm::Moments`).
///
/// # Panics
///
/// If `sum` or `sum_sq` is shorter than `x`.
pub fn add_sums_and_squares(x: &[f32], sum: &mut [f64], sum_sq: &mut [f64]) {
    let len = x.len();
    let (sum, sum_sq) = (&mut sum[..len], &mut sum_sq[..len]);
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { add_sums_and_squares_avx512(x, sum, sum_sq) };
        return;
    }
    add_sums_and_squares_body(x, sum, sum_sq);
}

/// [`add_sums_and_squares_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn add_sums_and_squares_avx512(x: &[f32], sum: &mut [f64], sum_sq: &mut [f64]) {
    add_sums_and_squares_body(x, sum, sum_sq);
}

#[inline(always)]
fn add_sums_and_squares_body(x: &[f32], sum: &mut [f64], sum_sq: &mut [f64]) {
    for ((s, q), &v) in sum.iter_mut().zip(sum_sq.iter_mut()).zip(x) {
        let v = f64::from(v);
        *s += v;
        *q += v * v;
    }
}

/// [`add_sums_and_squares`] over every row of `x` (unit column stride) in one call: for
/// narrow rows (a dense layer's 12 new channels) the call and dispatch per row had cost
/// more than the sums.
///
/// # Panics
///
/// If `x`'s columns are not adjacent, or `sum` or `sum_sq` is shorter than a row.
pub fn add_sums_and_squares_rows(
    x: ndarray::ArrayView2<'_, f32>,
    sum: &mut [f64],
    sum_sq: &mut [f64],
) {
    let c = x.ncols();
    assert!(c <= 1 || x.strides()[1] == 1, "columns must be adjacent");
    let (sum, sum_sq) = (&mut sum[..c], &mut sum_sq[..c]);
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { add_sums_and_squares_rows_avx512(x, sum, sum_sq) };
        return;
    }
    add_sums_and_squares_rows_body(x, sum, sum_sq);
}

/// [`add_sums_and_squares_rows_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn add_sums_and_squares_rows_avx512(
    x: ndarray::ArrayView2<'_, f32>,
    sum: &mut [f64],
    sum_sq: &mut [f64],
) {
    add_sums_and_squares_rows_body(x, sum, sum_sq);
}

#[inline(always)]
fn add_sums_and_squares_rows_body(
    x: ndarray::ArrayView2<'_, f32>,
    sum: &mut [f64],
    sum_sq: &mut [f64],
) {
    let rows = x.nrows();
    for (i, r) in x.rows().into_iter().enumerate() {
        if i + PREFETCH_AHEAD < rows {
            prefetch(
                x.row(i + PREFETCH_AHEAD)
                    .to_slice()
                    .expect("adjacent columns"),
            );
        }
        let r = r.to_slice().expect("adjacent columns");
        add_sums_and_squares_body(r, sum, sum_sq);
    }
}

/// `acc[i] = max(acc[i], v[i])` over `acc.len()` values, a NaN in either kept (torch's
/// max pool propagates NaN); on equal values (`0.0` and `-0.0`) `acc` is kept.
pub fn max_into(acc: &mut [f32], v: &[f32]) {
    let v = &v[..acc.len()];
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { max_into_avx512(acc, v) };
        return;
    }
    max_into_body(acc, v);
}

/// [`max_into_body`] compiled with AVX-512F enabled (the stem's max pool: 5% of a bf16
/// DenseNet-121 pass at batch 8 when compiled for the baseline's SSE2).
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn max_into_avx512(acc: &mut [f32], v: &[f32]) {
    max_into_body(acc, v);
}

#[inline(always)]
fn max_into_body(acc: &mut [f32], v: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(v) {
        *a = if v > *a || v.is_nan() { v } else { *a };
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

/// The first pass of a BatchNorm-ReLU backward, the one that needs no sums yet, over
/// every row of `x`, `dy` and `dx` (adjacent columns): with `g = dy[j]` where the
/// forward's `y = x[j]·scale[j] + shift[j]` is positive (0 elsewhere), `sum_g[j] += g`,
/// `sum_gd[j] += g·(x[j] − mean[j])` and `dx[j] += a[j]·g` (the input gradient's term
/// that does not depend on the sums; the others are added later). In the same pass
/// over `x`, the forward's output `relu(y)` is recomputed into the contiguous rows of
/// `normed`. For a 1x1 convolution's backward, whose weight gradient needs
/// `normed` and whose input gradient `dy` needs only the weight: one read of `x` serves
/// both. One call for all the rows (a few dozen between the caller's `f64` flushes).
///
/// # Panics
///
/// If `x`, `dy` and `dx` differ in shape or lack adjacent columns, a constant, `a` or a
/// sum is shorter than a row, or `normed` than `x`.
pub fn bn_relu_recompute_and_backward_rows(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    a: &[f32],
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
    normed: &mut [f32],
    dx: ndarray::ArrayViewMut2<'_, f32>,
) {
    let (rows, len) = x.dim();
    let adjacent = |s: &[isize]| len <= 1 || s[1] == 1;
    assert!(
        x.dim() == dy.dim()
            && x.dim() == dx.dim()
            && adjacent(x.strides())
            && adjacent(dy.strides())
            && adjacent(dx.strides()),
        "x, dy and dx must have one shape and adjacent columns"
    );
    let (a, sum_g, sum_gd) = (&a[..len], &mut sum_g[..len], &mut sum_gd[..len]);
    let normed = &mut normed[..rows * len];
    let k = BnBackwardRow {
        scale: &k.scale[..len],
        shift: &k.shift[..len],
        mean: &k.mean[..len],
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { bn_relu_recompute_and_backward_avx512(x, dy, k, a, (sum_g, sum_gd), normed, dx) };
        return;
    }
    bn_relu_recompute_and_backward_body(x, dy, k, a, (sum_g, sum_gd), normed, dx);
}

/// [`bn_relu_recompute_and_backward_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn bn_relu_recompute_and_backward_avx512(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    a: &[f32],
    sums: (&mut [f32], &mut [f32]),
    normed: &mut [f32],
    dx: ndarray::ArrayViewMut2<'_, f32>,
) {
    bn_relu_recompute_and_backward_body(x, dy, k, a, sums, normed, dx);
}

#[inline(always)]
fn bn_relu_recompute_and_backward_body(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    a: &[f32],
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
    normed: &mut [f32],
    mut dx: ndarray::ArrayViewMut2<'_, f32>,
) {
    let rows = x.rows().into_iter().zip(dy.rows()).zip(dx.rows_mut());
    for (((xr, dr), mut o), n) in rows.zip(normed.chunks_exact_mut(x.ncols().max(1))) {
        let (xr, dr) = (
            xr.to_slice().expect("adjacent"),
            dr.to_slice().expect("adjacent"),
        );
        let o = o.as_slice_mut().expect("adjacent");
        bn_relu_recompute_and_backward_row(xr, dr, k, a, (&mut *sum_g, &mut *sum_gd), n, o);
    }
}

#[inline(always)]
fn bn_relu_recompute_and_backward_row(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    a: &[f32],
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
    normed: &mut [f32],
    dx: &mut [f32],
) {
    let it = x
        .iter()
        .zip(dy)
        .zip(k.scale)
        .zip(k.shift)
        .zip(k.mean)
        .zip(a);
    let out = sum_g.iter_mut().zip(sum_gd).zip(normed.iter_mut().zip(dx));
    for ((((((&v, &d), &s), &t), &m), &a), ((sg, sgd), (n, o))) in it.zip(out) {
        // As `scale_shift_relu` and `masked`: the same value, the same test.
        let y = v * s + t;
        let clipped = y <= 0.0;
        *n = if clipped { 0.0 } else { y };
        let g = if clipped { 0.0 } else { d };
        *sg += g;
        *sgd += g * (v - m);
        *o += a * g;
    }
}

/// One row of a BatchNorm-ReLU backward's sums pass: with `g = dy[j]` masked by the ReLU
/// if `RELU`, `sum_g[j] += g` and `sum_gd[j] += g·(x[j] − mean[j])`.
///
/// # Panics
///
/// If `x`, `dy`, a constant or `sum_gd` is shorter than `sum_g`.
pub fn bn_backward_sums<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
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
        unsafe { bn_backward_sums_avx512::<RELU>(x, dy, k, (sum_g, sum_gd)) };
        return;
    }
    bn_backward_sums_body::<RELU>(x, dy, k, (sum_g, sum_gd));
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
    sums: (&mut [f32], &mut [f32]),
) {
    bn_backward_sums_body::<RELU>(x, dy, k, sums);
}

#[inline(always)]
fn bn_backward_sums_body<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
) {
    let it = x.iter().zip(dy).zip(k.scale).zip(k.shift).zip(k.mean);
    for ((((((&v, &d), &s), &t), &m), sg), sgd) in it.zip(sum_g).zip(sum_gd) {
        let g = masked::<RELU>(v, d, s, t);
        *sg += g;
        *sgd += g * (v - m);
    }
}

/// [`bn_backward_sums`] over every row of `x` and `dy` (adjacent columns) in one call.
///
/// # Panics
///
/// If `x` and `dy` differ in shape or lack adjacent columns, or a constant or a sum is
/// shorter than a row.
pub fn bn_backward_sums_rows<const RELU: bool>(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
) {
    let len = x.ncols();
    let adjacent = |s: &[isize]| len <= 1 || s[1] == 1;
    assert!(
        x.dim() == dy.dim() && adjacent(x.strides()) && adjacent(dy.strides()),
        "x and dy must have one shape and adjacent columns"
    );
    let (sum_g, sum_gd) = (&mut sum_g[..len], &mut sum_gd[..len]);
    let k = BnBackwardRow {
        scale: &k.scale[..len],
        shift: &k.shift[..len],
        mean: &k.mean[..len],
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { bn_backward_sums_rows_avx512::<RELU>(x, dy, k, (sum_g, sum_gd)) };
        return;
    }
    bn_backward_sums_rows_body::<RELU>(x, dy, k, (sum_g, sum_gd));
}

/// [`bn_backward_sums_rows_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn bn_backward_sums_rows_avx512<const RELU: bool>(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    sums: (&mut [f32], &mut [f32]),
) {
    bn_backward_sums_rows_body::<RELU>(x, dy, k, sums);
}

#[inline(always)]
fn bn_backward_sums_rows_body<const RELU: bool>(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    (sum_g, sum_gd): (&mut [f32], &mut [f32]),
) {
    for (xr, dr) in x.rows().into_iter().zip(dy.rows()) {
        let (xr, dr) = (
            xr.to_slice().expect("adjacent"),
            dr.to_slice().expect("adjacent"),
        );
        bn_backward_sums_body::<RELU>(xr, dr, k, (&mut *sum_g, &mut *sum_gd));
    }
}

/// The terms of a BatchNorm's input gradient given its sums, per channel:
/// `∂L/∂x = a·g + b·(x − mean) + c`.
#[derive(Clone, Copy, Debug)]
pub struct BnInputTerms<'a> {
    /// The factor of `g`.
    pub a: &'a [f32],
    /// The factor of `x − mean`.
    pub b: &'a [f32],
    /// The constant.
    pub c: &'a [f32],
}

/// One row of a BatchNorm-ReLU backward's input-gradient pass: with `g = dy[j]` masked by
/// the ReLU if `RELU`, `dx[j] = a·g + b·(x[j] − mean[j]) + c` (added to `dx[j]` if
/// `ADD`).
///
/// # Panics
///
/// If `x`, `dy`, a constant or a term is shorter than `dx`.
pub fn bn_backward_dx<const RELU: bool, const ADD: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    terms: BnInputTerms<'_>,
    dx: &mut [f32],
) {
    let len = dx.len();
    let (x, dy) = (&x[..len], &dy[..len]);
    let k = BnBackwardRow {
        scale: &k.scale[..len],
        shift: &k.shift[..len],
        mean: &k.mean[..len],
    };
    let terms = BnInputTerms {
        a: &terms.a[..len],
        b: &terms.b[..len],
        c: &terms.c[..len],
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { bn_backward_dx_avx512::<RELU, ADD>(x, dy, k, terms, dx) };
        return;
    }
    bn_backward_dx_body::<RELU, ADD>(x, dy, k, terms, dx);
}

/// [`bn_backward_dx`] over every row of `x` and `dy` (adjacent columns), into the
/// contiguous rows of `dx`, in one call: for narrow rows (DenseNet-BC's 48-channel
/// bottleneck) the call and dispatch per row were a good part of the pass.
///
/// # Panics
///
/// If `x` and `dy` differ in shape or lack adjacent columns, a constant or a term is
/// shorter than a row, or `dx` than `x`.
pub fn bn_backward_dx_rows<const RELU: bool, const ADD: bool>(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    terms: BnInputTerms<'_>,
    dx: &mut [f32],
) {
    let (rows, len) = x.dim();
    let adjacent = |v: &ndarray::ArrayView2<'_, f32>| len <= 1 || v.strides()[1] == 1;
    assert!(
        x.dim() == dy.dim() && adjacent(&x) && adjacent(&dy),
        "x and dy must have one shape and adjacent columns"
    );
    let dx = &mut dx[..rows * len];
    let k = BnBackwardRow {
        scale: &k.scale[..len],
        shift: &k.shift[..len],
        mean: &k.mean[..len],
    };
    let terms = BnInputTerms {
        a: &terms.a[..len],
        b: &terms.b[..len],
        c: &terms.c[..len],
    };
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { bn_backward_dx_rows_avx512::<RELU, ADD>(x, dy, k, terms, dx) };
        return;
    }
    bn_backward_dx_rows_body::<RELU, ADD>(x, dy, k, terms, dx);
}

/// [`bn_backward_dx_rows_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn bn_backward_dx_rows_avx512<const RELU: bool, const ADD: bool>(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    terms: BnInputTerms<'_>,
    dx: &mut [f32],
) {
    bn_backward_dx_rows_body::<RELU, ADD>(x, dy, k, terms, dx);
}

#[inline(always)]
fn bn_backward_dx_rows_body<const RELU: bool, const ADD: bool>(
    x: ndarray::ArrayView2<'_, f32>,
    dy: ndarray::ArrayView2<'_, f32>,
    k: BnBackwardRow<'_>,
    terms: BnInputTerms<'_>,
    dx: &mut [f32],
) {
    let out = dx.chunks_exact_mut(x.ncols().max(1));
    for ((xr, dr), o) in x.rows().into_iter().zip(dy.rows()).zip(out) {
        let (xr, dr) = (xr.to_slice(), dr.to_slice());
        let (xr, dr) = (xr.expect("adjacent"), dr.expect("adjacent"));
        bn_backward_dx_body::<RELU, ADD>(xr, dr, k, terms, o);
    }
}

/// [`bn_backward_dx_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn bn_backward_dx_avx512<const RELU: bool, const ADD: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    terms: BnInputTerms<'_>,
    dx: &mut [f32],
) {
    bn_backward_dx_body::<RELU, ADD>(x, dy, k, terms, dx);
}

#[inline(always)]
fn bn_backward_dx_body<const RELU: bool, const ADD: bool>(
    x: &[f32],
    dy: &[f32],
    k: BnBackwardRow<'_>,
    BnInputTerms { a, b, c }: BnInputTerms<'_>,
    dx: &mut [f32],
) {
    let it = x.iter().zip(dy).zip(k.scale).zip(k.shift).zip(k.mean);
    for ((((((((&v, &d), &s), &t), &m), &a), &b), &c), o) in it.zip(a).zip(b).zip(c).zip(dx) {
        let g = a * masked::<RELU>(v, d, s, t) + b * (v - m) + c;
        *o = if ADD { *o + g } else { g };
    }
}

/// `dst[j] = g[j] + b[j]·(x[j] − mean[j]) + c[j]`: a dense block's buffer gradient
/// completed with the BatchNorm terms deferred to when the channel is read (one row of
/// [`add_deferred_terms_rows`]).
#[inline(always)]
fn add_deferred_terms_body(
    g: &[f32],
    x: &[f32],
    (b, c, mean): (&[f32], &[f32], &[f32]),
    dst: &mut [f32],
) {
    for (((((o, &g), &v), &b), &c), &m) in dst.iter_mut().zip(g).zip(x).zip(b).zip(c).zip(mean) {
        *o = g + b * (v - m) + c;
    }
}

/// `dst[j] = g[j] + b[j]·(x[j] − mean[j]) + c[j]` (a dense block's buffer gradient
/// completed with the BatchNorm terms deferred to when the channel is read) for each of
/// the `dst.len() / width` rows of `dst` in one call:
/// row `i` of `g` and `x` starts at `first + i·stride`. For narrow rows (a dense layer's
/// 12 new channels, read from a block gradient hundreds of channels wide) the call and
/// dispatch per row had cost more than the arithmetic.
///
/// # Panics
///
/// If `width` is 0 while `dst` is not empty, a row of `g` or `x` lies past its end, or a
/// term is shorter than `width`.
pub fn add_deferred_terms_rows(
    g: &[f32],
    x: &[f32],
    (first, stride): (usize, usize),
    (b, c, mean): (&[f32], &[f32], &[f32]),
    dst: &mut [f32],
    width: usize,
) {
    if dst.is_empty() {
        return;
    }
    assert!(width > 0, "rows of no columns");
    let rows = dst.len() / width;
    let end = (rows - 1) * stride + first + width;
    assert!(
        g.len() >= end && x.len() >= end,
        "rows past the end of g or x"
    );
    let terms = (&b[..width], &c[..width], &mean[..width]);
    let dst = &mut dst[..rows * width];
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if super::cpu::avx512f() {
        // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
        // of a `#[target_feature]` function; the body is safe code.
        unsafe { add_deferred_terms_rows_avx512(g, x, (first, stride), terms, dst, width) };
        return;
    }
    add_deferred_terms_rows_body(g, x, (first, stride), terms, dst, width);
}

/// [`add_deferred_terms_rows_body`] compiled with AVX-512F enabled.
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "avx512f")]
unsafe fn add_deferred_terms_rows_avx512(
    g: &[f32],
    x: &[f32],
    at: (usize, usize),
    terms: (&[f32], &[f32], &[f32]),
    dst: &mut [f32],
    width: usize,
) {
    add_deferred_terms_rows_body(g, x, at, terms, dst, width);
}

#[inline(always)]
fn add_deferred_terms_rows_body(
    g: &[f32],
    x: &[f32],
    (first, stride): (usize, usize),
    terms: (&[f32], &[f32], &[f32]),
    dst: &mut [f32],
    width: usize,
) {
    for (i, o) in dst.chunks_exact_mut(width).enumerate() {
        let at = first + i * stride;
        let ahead = at + PREFETCH_AHEAD * stride;
        if let (Some(ga), Some(xa)) = (g.get(ahead..ahead + width), x.get(ahead..ahead + width)) {
            prefetch(ga);
            prefetch(xa);
        }
        add_deferred_terms_body(&g[at..at + width], &x[at..at + width], terms, o);
    }
}

/// Rows ahead that the narrow-row passes ask for: a dense layer's 12 new channels are
/// 48 bytes of each 864- to 1,368-byte row of a DenseNet-BC-100 block buffer, a stride
/// the hardware prefetchers followed poorly. With the hint, the new channels' completed
/// gradients took 12–14 ms of a step instead of 16–19, their moments ~6.3 instead of
/// ~8 (`bench_train --profile`, alternating binaries, 2 threads, Zen 5); 32 rows ahead
/// was no better.
const PREFETCH_AHEAD: usize = 16;

/// Asks for the cache lines of `v` (its first and last), a hint only.
#[inline(always)]
fn prefetch(v: &[f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        if let (Some(first), Some(last)) = (v.first(), v.last()) {
            // SAFETY: SSE is in x86-64's baseline; a prefetch reads nothing and never
            // faults (the addresses are elements', in bounds anyway).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>((first as *const f32).cast());
                _mm_prefetch::<_MM_HINT_T0>((last as *const f32).cast());
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    let _ = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_batch_norm_passes_match_the_portable_bodies() {
        // Every length around the vector widths, ReLU-clipped and not, overwritten and
        // added: the same bits as the portable body (the same operations per element).
        let f = |i: usize, a: usize| ((i * a) % 89) as f32 / 11.0 - 4.0;
        let v = |a: usize| (0..300).map(|i| f(i, a)).collect::<Vec<f32>>();
        let (x, dy, scale, shift, mean) = (v(3), v(5), v(7), v(11), v(13));
        let (a, b, c) = (v(17), v(19), v(23));
        let k = BnBackwardRow {
            scale: &scale,
            shift: &shift,
            mean: &mean,
        };
        let terms = BnInputTerms {
            a: &a,
            b: &b,
            c: &c,
        };
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for n in [0, 1, 15, 16, 17, 100, 300] {
            let (mut fast, mut slow) = (
                (v(29)[..n].to_vec(), v(31)[..n].to_vec()),
                (v(29)[..n].to_vec(), v(31)[..n].to_vec()),
            );
            bn_backward_sums::<true>(&x, &dy, k, (&mut fast.0, &mut fast.1));
            bn_backward_sums_body::<true>(&x, &dy, k, (&mut slow.0, &mut slow.1));
            assert_eq!(
                (bits(&fast.0), bits(&fast.1)),
                (bits(&slow.0), bits(&slow.1)),
                "sums, {n}"
            );
            bn_backward_sums::<false>(&x, &dy, k, (&mut fast.0, &mut fast.1));
            bn_backward_sums_body::<false>(&x, &dy, k, (&mut slow.0, &mut slow.1));
            assert_eq!(
                (bits(&fast.0), bits(&fast.1)),
                (bits(&slow.0), bits(&slow.1)),
                "sums, {n}"
            );
            let (mut fast, mut slow) = (v(37)[..n].to_vec(), v(37)[..n].to_vec());
            bn_backward_dx::<true, true>(&x, &dy, k, terms, &mut fast);
            bn_backward_dx_body::<true, true>(&x, &dy, k, terms, &mut slow);
            assert_eq!(bits(&fast), bits(&slow), "dx added, {n}");
            bn_backward_dx::<false, false>(&x, &dy, k, terms, &mut fast);
            bn_backward_dx_body::<false, false>(&x, &dy, k, terms, &mut slow);
            assert_eq!(bits(&fast), bits(&slow), "dx, {n}");
            let (mut fast, mut slow) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            add_deferred_terms_rows(&dy, &x, (0, n), (&b, &c, &mean), &mut fast, n);
            add_deferred_terms_body(&dy, &x, (&b, &c, &mean), &mut slow);
            assert_eq!(bits(&fast), bits(&slow), "deferred, {n}");
        }
    }

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
    fn sums_and_squares_add_each_row_in_f64() {
        // Rows of lengths around the vector widths, added into running totals: each
        // total equal, bit for bit, to the plain f64 loop (the same additions in the
        // same order, whichever width the compiler used).
        let f = |i: usize| ((i * 7919) % 1013) as f32 / 17.0 - 29.0;
        for c in [1, 7, 8, 9, 16, 33, 128] {
            let (mut sum, mut sum_sq) = (vec![0.5f64; c], vec![0.25f64; c]);
            let (mut want, mut want_sq) = (vec![0.5f64; c], vec![0.25f64; c]);
            for r in 0..5 {
                let row: Vec<f32> = (0..c).map(|j| f(r * c + j)).collect();
                add_sums_and_squares(&row, &mut sum, &mut sum_sq);
                for (j, &v) in row.iter().enumerate() {
                    want[j] += f64::from(v);
                    want_sq[j] += f64::from(v) * f64::from(v);
                }
            }
            assert_eq!(sum, want, "{c} channels");
            assert_eq!(sum_sq, want_sq, "{c} channels");
        }
    }

    #[test]
    fn dispatched_max_matches_the_portable_body() {
        // Edge cases first: NaN on either side stays, equal zeros keep `acc`'s sign.
        let specials = [f32::NAN, -0.0, 0.0, 1.0, f32::NEG_INFINITY, -1.0];
        let value = |i: usize, a: usize| match (i * a) % 13 {
            k @ 0..=5 => specials[k],
            k => k as f32 - 9.0,
        };
        for n in [0, 1, 15, 16, 17, 999, 1000] {
            let v: Vec<f32> = (0..n).map(|i| value(i, 7)).collect();
            let mut fast: Vec<f32> = (0..n).map(|i| value(i, 5)).collect();
            let mut slow = fast.clone();
            max_into(&mut fast, &v);
            max_into_body(&mut slow, &v);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "length {n}");
        }
        let mut acc = [1.0, f32::NAN, 0.0, 2.0];
        max_into(&mut acc, &[f32::NAN, 3.0, -0.0, 1.0]);
        assert!(acc[0].is_nan() && acc[1].is_nan());
        assert_eq!((acc[2].to_bits(), acc[3]), (0.0f32.to_bits(), 2.0));
    }

    /// The backward row the merged pass replaced (after the forward's BN-ReLU): with `g =
    /// dy[j]` masked by the ReLU if `RELU`, `sum_g[j] += g`, `sum_gd[j] += g·(x[j] −
    /// mean[j])` and `dx[j] += a[j]·g`.
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

    /// The many-row passes against their one-row bodies called row by row, bit for bit:
    /// narrow and wide rows, strided, one row and none.
    #[test]
    fn row_loops_match_the_one_row_bodies() {
        let f = |i: usize, a: usize| ((i * a) % 97) as f32 / 13.0 - 3.5;
        for (rows, width, stride, first) in [
            (0, 12, 20, 3),
            (1, 12, 12, 0),
            (37, 12, 216, 40),
            (9, 48, 50, 1),
        ] {
            let len = first + rows * stride + width;
            let (g, x) = (
                (0..len).map(|i| f(i, 7)).collect::<Vec<_>>(),
                (0..len).map(|i| f(i, 11)).collect::<Vec<_>>(),
            );
            let t = |a: usize| (0..width).map(|i| f(i, a)).collect::<Vec<_>>();
            let (b, c, mean) = (t(3), t(5), t(13));
            let mut fast = vec![f32::NAN; rows * width];
            add_deferred_terms_rows(&g, &x, (first, stride), (&b, &c, &mean), &mut fast, width);
            let mut slow = vec![f32::NAN; rows * width];
            for (i, o) in slow.chunks_exact_mut(width).enumerate() {
                let at = first + i * stride;
                add_deferred_terms_body(&g[at..at + width], &x[at..at + width], (&b, &c, &mean), o);
            }
            assert_eq!(fast, slow, "{rows} rows of {width}");

            let m = ndarray::ArrayView2::from_shape(
                ndarray::ShapeBuilder::strides((rows, width), (stride, 1)),
                &x[first..],
            )
            .unwrap();
            let (mut sum, mut sq) = (vec![0.5f64; width], vec![0.25f64; width]);
            add_sums_and_squares_rows(m, &mut sum, &mut sq);
            let (mut want_sum, mut want_sq) = (vec![0.5f64; width], vec![0.25f64; width]);
            for r in m.rows() {
                add_sums_and_squares_body(r.to_slice().unwrap(), &mut want_sum, &mut want_sq);
            }
            assert_eq!((sum, sq), (want_sum, want_sq), "{rows} rows of {width}");
        }
    }

    /// The many-row input-gradient and sums passes against the one-row bodies, row by
    /// row, bit for bit (strided inputs, both const flags).
    #[test]
    fn input_gradient_rows_match_the_one_row_body() {
        let f = |i: usize, a: usize| ((i * a) % 97) as f32 / 13.0 - 3.5;
        let (rows, width, stride) = (23, 48, 53);
        let m = |a: usize| (0..rows * stride).map(|i| f(i, a)).collect::<Vec<_>>();
        let (x, dy) = (m(7), m(11));
        fn view(
            v: &[f32],
            (rows, width, stride): (usize, usize, usize),
        ) -> ndarray::ArrayView2<'_, f32> {
            let shape = ndarray::ShapeBuilder::strides((rows, width), (stride, 1));
            ndarray::ArrayView2::from_shape(shape, &v[..(rows - 1) * stride + width]).unwrap()
        }
        let dims = (rows, width, stride);
        let t = |a: usize| (0..width).map(|i| f(i, a)).collect::<Vec<_>>();
        let (scale, shift, mean, a, b, c) = (t(3), t(5), t(13), t(17), t(19), t(23));
        let k = BnBackwardRow {
            scale: &scale,
            shift: &shift,
            mean: &mean,
        };
        let terms = BnInputTerms {
            a: &a,
            b: &b,
            c: &c,
        };
        let start = (0..rows * width).map(|i| f(i, 29)).collect::<Vec<_>>();
        let (mut fast, mut slow) = (start.clone(), start.clone());
        bn_backward_dx_rows::<true, true>(view(&x, dims), view(&dy, dims), k, terms, &mut fast);
        for (r, o) in slow.chunks_exact_mut(width).enumerate() {
            let (xr, dr) = (&x[r * stride..][..width], &dy[r * stride..][..width]);
            bn_backward_dx_body::<true, true>(xr, dr, k, terms, o);
        }
        assert_eq!(fast, slow);
        let (mut sums, mut want) = ((t(31), t(37)), (t(31), t(37)));
        let sums_mut = (&mut sums.0[..], &mut sums.1[..]);
        bn_backward_sums_rows::<true>(view(&x, dims), view(&dy, dims), k, sums_mut);
        for r in 0..rows {
            let (xr, dr) = (&x[r * stride..][..width], &dy[r * stride..][..width]);
            bn_backward_sums_body::<true>(xr, dr, k, (&mut want.0, &mut want.1));
        }
        assert_eq!(sums, want);
        bn_backward_dx_rows::<false, false>(view(&x, dims), view(&dy, dims), k, terms, &mut fast);
        for (r, o) in slow.chunks_exact_mut(width).enumerate() {
            let (xr, dr) = (&x[r * stride..][..width], &dy[r * stride..][..width]);
            bn_backward_dx_body::<false, false>(xr, dr, k, terms, o);
        }
        assert_eq!(fast, slow);
    }

    /// The merged pass against the two it replaces (the forward's BN-ReLU, then the
    /// backward row on the portable body), bit for bit: values on both sides of the
    /// ReLU's threshold, exactly on it, and NaN.
    #[test]
    fn recompute_and_backward_is_the_two_passes_it_replaces() {
        let len = 1000;
        let f = |i: usize, a: usize| ((i * a) % 97) as f32 / 13.0 - 3.5;
        let v = |a: usize| -> Vec<f32> { (0..len).map(|i| f(i, a)).collect() };
        let (mut x, dy, scale, mut shift, mean, a) = (v(7), v(11), v(5), v(3), v(13), v(17));
        // `x·scale + shift` exactly 0 (masked), and a NaN input (kept, as the scalar path).
        (x[3], shift[3]) = (2.0, -2.0 * scale[3]);
        x[20] = f32::NAN;
        let k = BnBackwardRow {
            scale: &scale,
            shift: &shift,
            mean: &mean,
        };
        for n in [0, 1, 15, 16, 17, 999, 1000] {
            let start = |m: usize| -> Vec<f32> { (0..n).map(|i| f(i, m)).collect() };
            let mut fast = (start(29), start(31), vec![f32::NAN; n], start(37));
            let mut slow = fast.clone();
            let sums = (&mut fast.0[..], &mut fast.1[..]);
            let (xm, dym) = (ndarray::aview1(&x[..n]), ndarray::aview1(&dy[..n]));
            let (xm, dym) = (
                xm.insert_axis(ndarray::Axis(0)),
                dym.insert_axis(ndarray::Axis(0)),
            );
            let dx = ndarray::ArrayViewMut2::from_shape((1, n), &mut fast.3[..]).unwrap();
            bn_relu_recompute_and_backward_rows(xm, dym, k, &a, sums, &mut fast.2, dx);
            scale_shift_relu(&x[..n], &scale, &shift, &mut slow.2);
            let sums = (&mut slow.0[..], &mut slow.1[..]);
            bn_backward_sums_and_scaled_body::<true>(&x, &dy, k, &a, sums, &mut slow.3);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for (ours, want) in [(&fast.0, &slow.0), (&fast.1, &slow.1), (&fast.2, &slow.2)] {
                assert_eq!(bits(ours), bits(want), "length {n}");
            }
            assert_eq!(bits(&fast.3), bits(&slow.3), "length {n}");
        }
    }
}
