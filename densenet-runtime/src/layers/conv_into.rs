//! The convolution of the allocation-free forward pass: reads an input that already
//! carries its zero padding (the BN-ReLU that produced it wrote the border), applies an
//! optional fused BatchNorm-ReLU epilogue, and picks the kernel.
//!
//! - Every convolution runs on the direct AVX-512 kernel
//!   ([`direct_conv`](crate::kernels::direct_conv::direct_conv)): no im2col, no scratch
//!   (the kernel selection itself is `Conv2d`'s, shared with its `forward_into`).
//! - On a CPU without AVX-512 or AVX2, a 1x1 convolution is one GEMM of the input and a window
//!   runs as im2col + GEMM with its matrix in the `fallback` vector (grown on first use,
//!   outside the planned arena: the arena that `densenet_spec::ArenaPlan` plans, and
//!   generated models' `ARENA_FLOATS` state, is the AVX-512 path's).

use crate::kernels::direct_conv::{apply_epilogue, direct_conv, ConvShape, Epilogue, ImageLayout};
use crate::kernels::elementwise::scale_shift_relu;
use crate::kernels::gemm::{MatMut, MatRef};
use crate::layers::conv::SCRATCH_LIMIT;
use crate::layers::Conv2d;
use crate::prelude::*;

/// Writes the convolution of the contiguous NHWC input `x` (`n, h, w, c_in`) into `out`
/// (`(n·oh·ow) × c_out`, any row stride, column stride 1), then `epilogue` (a BatchNorm
/// and ReLU after the convolution, fused where the kernel allows).
///
/// With `pre_padded`, `x` already carries the convolution's zero padding on every side
/// (`h`, `w` are the padded sizes) and the convolution runs without padding: the same
/// result as padding inside. `fallback` holds the im2col matrix on CPUs without
/// AVX-512 (see the module docs); it is not touched otherwise.
///
/// # Panics
///
/// If a slice or view does not fit the shapes (a caller bug).
pub fn conv2d_into(
    conv: &Conv2d,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    pre_padded: bool,
    epilogue: Epilogue<'_>,
    out: MatMut<'_>,
    fallback: &mut Vec<f32>,
) {
    let mut win = conv.window();
    if pre_padded {
        win.padding = 0;
    }
    conv.run(x, (n, h, w), win, epilogue, out, fallback, SCRATCH_LIMIT);
}

/// A 1x1 convolution (stride 1, no padding) of the NHWC input `x` (`n, h, w` pixels
/// `x_stride` floats apart, the first `c_in` of each: e.g. the prefix of a dense
/// block's buffer), each value first passed through `prologue` (the BatchNorm and ReLU
/// before the conv), written with `epilogue` into the interior of `out`, the
/// `(n, h + 2·pad, w + 2·pad, c_out)` map that the next 3x3 convolution reads; the border
/// is zeroed. This is DenseNet-B's bottleneck: norm1 and its ReLU, conv1, then norm2 and
/// the ReLU, in one pass over the block's buffer, so neither the normalised input nor
/// the un-normalised bottleneck output is stored. `fallback` holds the normalised
/// input on CPUs without AVX-512 or AVX2.
///
/// # Panics
///
/// If the convolution is not 1x1 with stride 1 and no padding, or a slice does not fit
/// the shapes (caller bugs).
#[allow(clippy::too_many_arguments)]
pub fn conv1x1_into_padded(
    conv: &Conv2d,
    x: &[f32],
    x_stride: usize,
    (n, h, w): (usize, usize, usize),
    prologue: Epilogue<'_>,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    pad: usize,
    fallback: &mut Vec<f32>,
) {
    let win = conv.window();
    let (c_in, c_out) = (conv.c_in(), conv.c_out());
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let pixels = n * h * w;
    assert!(
        (win.kernel_h, win.kernel_w, win.stride, win.padding) == (1, 1, 1, 0)
            && x_stride >= c_in
            && (pixels == 0 || x.len() >= (pixels - 1) * x_stride + c_in)
            && out.len() == n * hp * wp * c_out,
        "conv1x1_into_padded: not a 1x1 convolution, or shapes do not fit the slices"
    );
    zero_border(out, (h, w, c_out), pad);
    let row = wp * c_out;
    let shape = ConvShape {
        n,
        out_h: h,
        out_w: w,
        c_in,
        c_out,
        kernel_h: 1,
        kernel_w: 1,
        stride: 1,
    };
    let out_layout = ImageLayout {
        offset: pad * row + pad * c_out,
        image_stride: hp * row,
        row_stride: row,
        pixel_stride: c_out,
    };
    let input_layout = ImageLayout {
        offset: 0,
        image_stride: h * w * x_stride,
        row_stride: w * x_stride,
        pixel_stride: x_stride,
    };
    if direct_conv(
        x,
        input_layout,
        prologue,
        conv.stored_weight().kernel_weight(),
        shape,
        epilogue,
        out,
        out_layout,
        true,
    ) {
        return;
    }
    // Portable path: the prologue into `fallback`, then one GEMM per image row, each a
    // contiguous run of the interior.
    fallback.resize(pixels * c_in, 0.0);
    for (p, dst) in fallback.chunks_exact_mut(c_in.max(1)).enumerate() {
        let src = &x[p * x_stride..][..c_in];
        match prologue {
            Epilogue::Store => dst.copy_from_slice(src),
            Epilogue::ScaleShiftRelu { scale, shift } => scale_shift_relu(src, scale, shift, dst),
        }
    }
    for (r, input_row) in fallback.chunks_exact(w * c_in).enumerate() {
        let start = out_layout.offset + (r / h) * out_layout.image_stride + (r % h) * row;
        let dst = &mut out[start..start + w * c_out];
        let a = MatRef::row_major(input_row, w, c_in);
        conv.stored_weight()
            .multiply(a, MatMut::row_major(dst, w, c_out));
        apply_epilogue(epilogue, dst, w, c_out);
    }
}

/// Zeroes the `pad`-wide border of every `(h + 2·pad, w + 2·pad, c)` image of `out`.
pub(crate) fn zero_border(out: &mut [f32], (h, w, c): (usize, usize, usize), pad: usize) {
    if pad == 0 {
        return;
    }
    let row = (w + 2 * pad) * c;
    for image in out.chunks_exact_mut((h + 2 * pad) * row) {
        let (top, rest) = image.split_at_mut(pad * row);
        top.fill(0.0);
        let (middle, bottom) = rest.split_at_mut(h * row);
        bottom.fill(0.0);
        for r in middle.chunks_exact_mut(row) {
            r[..pad * c].fill(0.0);
            r[(w + pad) * c..].fill(0.0);
        }
    }
}
