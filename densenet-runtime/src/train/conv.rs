//! Convolution backward: weight and input gradients by the same im2col + GEMM as the
//! forward pass.

use ndarray::{Array4, ArrayView4};

use crate::kernels::gemm::{gemm, MatMut, MatRef};
use crate::kernels::im2col::im2col;
use crate::layers::Conv2d;
use crate::train::col2im;

/// Largest im2col matrix, in elements, built at once (16 MiB of `f32`), as in the
/// forward pass: a larger batch is processed a few images at a time. One image is
/// always processed whole.
const SCRATCH_LIMIT: usize = 1 << 22;

/// Gradients of `y = conv(x)` given `dy = ∂L/∂y`; returns `∂L/∂W` (HWIO, the shape of
/// [`Conv2d::weight`]) and, if `dx` is given, writes `∂L/∂x` into it.
///
/// With `X` the im2col matrix of `x` (`(n·oh·ow) × (kh·kw·c_in)`), the forward pass is
/// `Y = X·W`, so `∂L/∂W = Xᵀ·dY` and `∂L/∂X = dY·Wᵀ`, which [`col2im`] folds back onto
/// the input pixels. A 1x1 convolution with stride 1 and no padding uses `x` itself as
/// `X`. Any kernel, stride and padding.
///
/// - `x`: the forward pass's NHWC input `(n, h, w, c_in)`;
/// - `dy`: `(n·oh·ow) × c_out`, row-major;
/// - `dx`: `n·h·w·c_in` (contiguous NHWC), overwritten; `None` skips the input gradient
///   (the network's first convolution needs none);
/// - `scratch`: the im2col matrix, grown as needed and reused across calls.
///
/// # Panics
///
/// If `x` does not have `c_in` channels, `dy.len() != n·oh·ow·c_out`, or
/// `dx.len() != n·h·w·c_in`.
pub fn conv2d_backward(
    conv: &Conv2d,
    x: ArrayView4<'_, f32>,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
) -> Array4<f32> {
    backward(conv, x, dy, dx, scratch, true).expect("asked for the weight gradient")
}

/// [`conv2d_backward`]'s input gradient alone, for a frozen convolution: neither the
/// `Xᵀ·dY` product nor the im2col matrix of `x` it needs.
///
/// # Panics
///
/// As [`conv2d_backward`].
pub(crate) fn conv2d_backward_input(
    conv: &Conv2d,
    x: ArrayView4<'_, f32>,
    dy: &[f32],
    dx: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    backward(conv, x, dy, Some(dx), scratch, false);
}

/// [`conv2d_backward`], the weight gradient only if `weights`.
fn backward(
    conv: &Conv2d,
    x: ArrayView4<'_, f32>,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
    weights: bool,
) -> Option<Array4<f32>> {
    let (n, h, w, c_in) = x.dim();
    let c_out = conv.c_out();
    let (oh, ow) = conv.output_size(h, w);
    if c_in != conv.c_in()
        || dy.len() != n * oh * ow * c_out
        || dx.as_ref().is_some_and(|dx| dx.len() != n * h * w * c_in)
    {
        shape_mismatch(
            conv,
            [n, h, w, c_in],
            dy.len(),
            dx.as_ref().map(|dx| dx.len()),
        );
    }
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    let hwio = conv.weight();
    let weight = hwio.as_slice().expect("weight() is contiguous");
    let win = conv.window();
    let k_len = win.kernel_h * win.kernel_w * c_in;
    let w_mat = MatRef::row_major(weight, k_len, c_out);
    let dw_shape = if weights {
        (win.kernel_h, win.kernel_w, c_in, c_out)
    } else {
        (0, 0, 0, 0)
    };
    let mut dw = Array4::<f32>::zeros(dw_shape);
    let dw_slice = dw.as_slice_mut().expect("a new array is contiguous");

    let pointwise = win.kernel_h == 1 && win.kernel_w == 1 && win.stride == 1 && win.padding == 0;
    if pointwise {
        let rows = n * h * w;
        let dy = MatRef::row_major(dy, rows, c_out);
        let x_mat = MatRef::row_major(x, rows, c_in);
        if weights {
            gemm(
                1.0,
                x_mat.t(),
                dy,
                0.0,
                MatMut::row_major(dw_slice, k_len, c_out),
            );
        }
        if let Some(dx) = dx {
            gemm(1.0, dy, w_mat.t(), 0.0, MatMut::row_major(dx, rows, c_in));
        }
        return weights.then_some(dw);
    }

    let image_in = h * w * c_in;
    let image_rows = oh * ow;
    let image_scratch = image_rows * k_len;
    let images_per_step = (SCRATCH_LIMIT / image_scratch.max(1)).clamp(1, n.max(1));
    let mut dx = dx;
    let mut first = 0;
    while first < n {
        let count = images_per_step.min(n - first);
        let rows = count * image_rows;
        let len = rows * k_len;
        if scratch.len() < len {
            scratch.resize(len, 0.0);
        }
        let cols = &mut scratch[..len];
        let dy_step = MatRef::row_major(
            &dy[first * image_rows * c_out..][..rows * c_out],
            rows,
            c_out,
        );
        if weights {
            im2col(
                &x[first * image_in..(first + count) * image_in],
                count,
                h,
                w,
                c_in,
                win,
                cols,
            );
            // dW (+)= Xᵀ·dY, accumulated over the steps.
            let beta = if first == 0 { 0.0 } else { 1.0 };
            gemm(
                1.0,
                MatRef::row_major(cols, rows, k_len).t(),
                dy_step,
                beta,
                MatMut::row_major(dw_slice, k_len, c_out),
            );
        }
        if let Some(dx) = dx.as_deref_mut() {
            // dX = dY·Wᵀ into the same scratch (X is no longer needed), then col2im.
            gemm(
                1.0,
                dy_step,
                w_mat.t(),
                0.0,
                MatMut::row_major(cols, rows, k_len),
            );
            col2im(
                cols,
                count,
                h,
                w,
                c_in,
                win,
                &mut dx[first * image_in..(first + count) * image_in],
            );
        }
        first += count;
    }
    weights.then_some(dw)
}

#[cold]
#[inline(never)]
#[track_caller]
fn shape_mismatch(conv: &Conv2d, x: [usize; 4], dy_len: usize, dx_len: Option<usize>) -> ! {
    let (oh, ow) = conv.output_size(x[1], x[2]);
    panic!(
        "conv2d_backward: the convolution takes {} channels and gives {}; x is {x:?} (NHWC), \
         so dy needs n·oh·ow·c_out = {} elements (got {dy_len}) and dx n·h·w·c_in = {} \
         (got {dx_len:?})",
        conv.c_in(),
        conv.c_out(),
        x[0] * oh * ow * conv.c_out(),
        x[0] * x[1] * x[2] * x[3],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Conv2dConfig;
    use crate::train::check::{assert_grad_close, dot, numeric_grad, values};

    fn conv(
        kh: usize,
        kw: usize,
        c_in: usize,
        c_out: usize,
        stride: usize,
        padding: usize,
    ) -> Conv2d {
        let weight =
            Array4::from_shape_vec((kh, kw, c_in, c_out), values(kh * kw * c_in * c_out, 7))
                .unwrap();
        Conv2d::new(weight, Conv2dConfig { stride, padding }).unwrap()
    }

    /// The input gradient alone (a frozen convolution's) is the full backward's, bit
    /// for bit, for a 1x1 and a strided, padded 3x3.
    #[test]
    fn the_input_gradient_alone_is_the_full_backwards() {
        for layer in [conv(1, 1, 5, 3, 1, 0), conv(3, 3, 4, 6, 2, 1)] {
            let (n, h, w) = (2, 7, 6);
            let (oh, ow) = layer.output_size(h, w);
            let x = Array4::from_shape_vec(
                (n, h, w, layer.c_in()),
                values(n * h * w * layer.c_in(), 3),
            )
            .unwrap();
            let dy = values(n * oh * ow * layer.c_out(), 4);
            let (mut full, mut alone) = (vec![0.0; x.len()], vec![1.0; x.len()]);
            let mut scratch = Vec::new();
            conv2d_backward(&layer, x.view(), &dy, Some(&mut full), &mut scratch);
            conv2d_backward_input(&layer, x.view(), &dy, &mut alone, &mut Vec::new());
            assert_eq!(full, alone);
        }
    }

    /// `L = Σ r·conv(x)`: checks ∂L/∂x and ∂L/∂W against central differences.
    fn check(n: usize, h: usize, w: usize, layer: Conv2d) {
        let c_in = layer.c_in();
        let (oh, ow) = layer.output_size(h, w);
        let x = values(n * h * w * c_in, 1);
        let r = values(n * oh * ow * layer.c_out(), 2);
        let x4 = ArrayView4::from_shape((n, h, w, c_in), &x).unwrap();
        let mut dx = vec![f32::NAN; x.len()];
        let dw = conv2d_backward(&layer, x4, &r, Some(&mut dx), &mut Vec::new());

        let numeric_dx = numeric_grad(&x, 1e-2, |x| {
            let x4 = ArrayView4::from_shape((n, h, w, c_in), x).unwrap();
            dot(&r, layer.forward(x4).as_slice().unwrap())
        });
        assert_grad_close("dx", &dx, &numeric_dx, 1e-3);

        let w0 = layer.weight().as_standard_layout().into_owned();
        let numeric_dw = numeric_grad(w0.as_slice().unwrap(), 1e-2, |wv| {
            let weight = Array4::from_shape_vec(w0.dim(), wv.to_vec()).unwrap();
            let moved = Conv2d::new(weight, layer.config()).unwrap();
            dot(&r, moved.forward(x4).as_slice().unwrap())
        });
        assert_eq!(dw.dim(), w0.dim());
        assert_grad_close("dw", dw.as_slice().unwrap(), &numeric_dw, 1e-3);
    }

    #[test]
    fn conv3x3_same_padding_matches_finite_differences() {
        check(2, 5, 4, conv(3, 3, 3, 4, 1, 1));
    }

    #[test]
    fn conv7x7_stride2_pad3_matches_finite_differences() {
        check(1, 9, 8, conv(7, 7, 2, 3, 2, 3));
    }

    #[test]
    fn conv1x1_pointwise_matches_finite_differences() {
        check(2, 3, 3, conv(1, 1, 5, 3, 1, 0));
    }

    #[test]
    fn rectangular_strided_kernels_match_finite_differences() {
        check(2, 7, 6, conv(3, 2, 2, 2, 2, 0));
        check(1, 5, 5, conv(1, 1, 3, 2, 2, 1));
    }

    #[test]
    fn chunked_batches_match_one_image_at_a_time() {
        // 4 images of 40x40 with a 3x3 kernel on 300 channels exceed SCRATCH_LIMIT, so
        // the batch is split; dW must equal the sum of the per-image gradients.
        let (n, h, w) = (4, 40, 40);
        let layer = conv(3, 3, 300, 2, 1, 1);
        assert!(h * w * 9 * 300 * n > SCRATCH_LIMIT);
        let x = values(n * h * w * 300, 3);
        let dy = values(n * h * w * 2, 4);
        let x4 = ArrayView4::from_shape((n, h, w, 300), &x).unwrap();
        let mut dx = vec![0.0; x.len()];
        let dw = conv2d_backward(&layer, x4, &dy, Some(&mut dx), &mut Vec::new());
        let mut sum = Array4::<f32>::zeros(dw.dim());
        let image = h * w * 300;
        for b in 0..n {
            let xb = ArrayView4::from_shape((1, h, w, 300), &x[b * image..][..image]).unwrap();
            let mut dxb = vec![0.0; image];
            let dyb = &dy[b * h * w * 2..][..h * w * 2];
            sum += &conv2d_backward(&layer, xb, dyb, Some(&mut dxb), &mut Vec::new());
            for (a, e) in dx[b * image..][..image].iter().zip(&dxb) {
                assert!(
                    (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "image {b}: {a} vs {e}"
                );
            }
        }
        for (a, b) in dw.iter().zip(&sum) {
            assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    #[should_panic(expected = "conv2d_backward")]
    fn wrong_dy_length_panics() {
        let layer = conv(3, 3, 1, 1, 1, 1);
        let x = [0.0; 4];
        let x4 = ArrayView4::from_shape((1, 2, 2, 1), &x).unwrap();
        let _ = conv2d_backward(&layer, x4, &[0.0; 3], None, &mut Vec::new());
    }
}
