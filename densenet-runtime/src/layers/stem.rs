//! The network's first layers.

use ndarray::{ArrayView4, ArrayViewMut4};

use crate::kernels::direct_conv::Epilogue;
use crate::kernels::gemm::MatMut;
use crate::layers::{conv2d_into, pool2d_into};
use crate::prelude::*;

use crate::layers::{BatchNorm2d, Conv2d, Conv2dConfig};
use densenet_spec::Stem;

use crate::rng::Rng;

/// A freshly initialised stem conv: 7x7 stride 2 padding 3 (ImageNet, as torchvision)
/// or 3x3 stride 1 padding 1 (CIFAR, as the paper).
pub fn stem_conv(stem: Stem, c_in: usize, c_out: usize, rng: &mut Rng) -> Conv2d {
    let (kernel, stride, padding) = match stem {
        Stem::ImageNet => (7, 2, 3),
        Stem::Cifar => (3, 1, 1),
    };
    Conv2d::init(c_in, c_out, kernel, Conv2dConfig { stride, padding }, rng)
}

/// The stem's forward pass without allocating: the NCHW batch `x` is written as NHWC,
/// zero-padded for the conv, into `scratch`, convolved (for an ImageNet stem with its
/// BN-ReLU fused into the conv's epilogue) and, for an ImageNet stem, max-pooled; the
/// result is written into `out`, `n·oh·ow` pixels `out_stride` apart (the first
/// `c_out` floats of each): the first channels of dense block 1's concatenation buffer.
/// `bn_params` holds `2·c_out` floats of BatchNorm scale/shift; `fallback` is the
/// im2col matrix of CPUs without AVX-512 or AVX2 ([`conv2d_into`]). Returns the scratch floats
/// used: the padded input, and for an ImageNet stem the conv output.
///
/// # Panics
///
/// If `x` does not have the conv's input channels or a slice is too short.
// Buffers and shapes of one stage, each distinct: a flat list reads best here.
#[allow(clippy::too_many_arguments)]
pub fn stem_forward_into(
    conv: &Conv2d,
    norm: Option<&BatchNorm2d>,
    x: ArrayView4<'_, f32>,
    out: &mut [f32],
    out_stride: usize,
    bn_params: &mut [f32],
    scratch: &mut [f32],
    fallback: &mut Vec<f32>,
) -> usize {
    let (n, c, h, w) = x.dim();
    let c0 = conv.c_out();
    let p = conv.config().padding;
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let (input, rest) = scratch.split_at_mut(n * hp * wp * c);
    let mut padded = ArrayViewMut4::from_shape((n, hp, wp, c), &mut *input)
        .expect("the slice has n·hp·wp·c floats");
    // The border is rewritten every call: the scratch region is shared by all stages.
    padded.fill(0.0);
    padded
        .slice_mut(ndarray::s![.., p..p + h, p..p + w, ..])
        .assign(&x.permuted_axes([0, 2, 3, 1]));
    let input = &*input;
    let (oh, ow) = conv.output_size(h, w);
    let rows = n * oh * ow;
    match norm {
        None => {
            let dst = MatMut::new(out, rows, c0, out_stride, 1);
            conv2d_into(
                conv,
                input,
                (n, hp, wp),
                true,
                Epilogue::Store,
                dst,
                fallback,
            );
            input.len()
        }
        Some(norm) => {
            let (scale, rest_params) = bn_params.split_at_mut(c0);
            let shift = &mut rest_params[..c0];
            norm.scale_shift_into(scale, shift);
            let epilogue = Epilogue::ScaleShiftRelu {
                scale: &*scale,
                shift: &*shift,
            };
            let conv_out = &mut rest[..rows * c0];
            let dst = MatMut::row_major(conv_out, rows, c0);
            conv2d_into(conv, input, (n, hp, wp), true, epilogue, dst, fallback);
            pool2d_into(conv_out, (n, oh, ow, c0), 3, 2, 1, true, out, out_stride);
            input.len() + rows * c0
        }
    }
}
