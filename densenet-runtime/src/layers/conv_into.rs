//! A convolution whose im2col scratch is a slice of the caller's arena (the
//! [`Workspace`](crate::Workspace)), and which can read an input that is already
//! zero-padded.
//!
//! The same kernels and the same chunking as [`Conv2d::forward_into`] (whole images, at
//! most [`IM2COL_LIMIT`] floats of im2col at once), so the arena plan
//! (`densenet_spec::ArenaPlan`) and the run agree to the float.

use crate::kernels::gemm::{gemm, MatMut, MatRef};
use crate::kernels::im2col::im2col;
use crate::layers::Conv2d;
use densenet_spec::{im2col_floats, IM2COL_LIMIT};

/// Floats of im2col scratch [`conv2d_into`] needs for `n` images of `h × w`
/// (the padded size when `pre_padded`); 0 for a pointwise convolution.
pub fn conv2d_scratch(conv: &Conv2d, (n, h, w): (usize, usize, usize), pre_padded: bool) -> usize {
    let mut win = conv.window();
    if pre_padded {
        win.padding = 0;
    }
    if win.kernel_h == 1 && win.kernel_w == 1 && win.stride == 1 && win.padding == 0 {
        return 0;
    }
    let (oh, ow) = win.output_size(h, w);
    im2col_floats(n, oh * ow, win.kernel_h * win.kernel_w * conv.c_in())
}

/// Writes the convolution of the contiguous NHWC input `x` (`n, h, w, c_in`) into `out`
/// (`(n·oh·ow) × c_out`, any row stride), using `scratch` (at least
/// [`conv2d_scratch`] floats) for the im2col matrix.
///
/// With `pre_padded`, `x` already carries the convolution's zero padding on every side
/// (`h`, `w` are the padded sizes) and the convolution runs without padding: the same
/// result as padding inside, with the border written once per map by the BN-ReLU that
/// produced `x` ([`BatchNorm2d::forward_relu_padded_into`](crate::layers::BatchNorm2d::forward_relu_padded_into)).
///
/// # Panics
///
/// If a slice or view does not fit the shapes.
pub fn conv2d_into(
    conv: &Conv2d,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    pre_padded: bool,
    mut out: MatMut<'_>,
    scratch: &mut [f32],
) {
    let mut win = conv.window();
    if pre_padded {
        win.padding = 0;
    }
    let (c_in, c_out) = (conv.c_in(), conv.c_out());
    if win.kernel_h == 1 && win.kernel_w == 1 && win.stride == 1 && win.padding == 0 {
        // A plain matrix product: the layer's own path, which needs no scratch
        // (an empty Vec does not allocate).
        conv.forward_into(x, n, h, w, out, &mut Vec::new());
        return;
    }
    let (oh, ow) = win.output_size(h, w);
    assert!(
        x.len() == n * h * w * c_in && out.rows() == n * oh * ow && out.cols() == c_out,
        "conv2d_into: shapes do not fit the slices"
    );
    let weight = conv.weight().as_standard_layout();
    let weight = weight.as_slice().expect("standard layout is contiguous");
    let k_len = win.kernel_h * win.kernel_w * c_in;
    let b = MatRef::row_major(weight, k_len, c_out);
    let image_in = h * w * c_in;
    let image_rows = oh * ow;
    let image_scratch = image_rows * k_len;
    let images_per_step = (IM2COL_LIMIT / image_scratch.max(1)).clamp(1, n.max(1));
    let mut first = 0;
    while first < n {
        let count = images_per_step.min(n - first);
        let cols = &mut scratch[..count * image_scratch];
        im2col(
            &x[first * image_in..(first + count) * image_in],
            count,
            h,
            w,
            c_in,
            win,
            cols,
        );
        let rows = count * image_rows;
        gemm(
            1.0,
            MatRef::row_major(cols, rows, k_len),
            b,
            0.0,
            out.subrows_mut(first * image_rows, rows),
        );
        first += count;
    }
}
