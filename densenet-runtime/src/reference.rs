//! The reference forward pass: plain, allocating, stage by stage, obviously right.
//!
//! The test oracle of the fast path ([`Model::forward_into`](crate::Model::forward_into),
//! with its arena, fused BN-ReLU prologues and epilogues, and direct kernels): each
//! function returns a new NHWC array, built from the layers' own simple `forward`s.

use ndarray::{Array2, Array4, ArrayD, ArrayView4, Ix4};

use crate::kernels::gemm::MatMut;
use crate::layers::{
    avg_pool2d, global_avg_pool, global_max_pool, max_pool2d, BatchNorm2d, Conv2d, DenseLayer,
    Linear,
};
use crate::prelude::*;
use crate::spec::Head;
use crate::stage::{stages, Network, StageRef};
use crate::{input_to_nhwc, Error};

/// Runs `model` stage by stage on the NCHW batch `x`, every stage returning a new
/// array. Returns the head's output: `(N, classes)`, `(N, C)` or NCHW `(N, C, H, W)`.
///
/// # Errors
/// [`Error::InputShape`] or [`Error::EmptyBatch`].
pub fn forward<M: Network + ?Sized>(
    model: &M,
    x: ArrayView4<'_, f32>,
) -> Result<ArrayD<f32>, Error> {
    let mut x = input_to_nhwc(x, model.plan().input)?.into_dyn();
    for s in stages(model) {
        let input = x.view().into_dimensionality::<Ix4>();
        x = stage(s, input.expect("every stage before the head gives NHWC"));
    }
    Ok(x)
}

/// One stage on NHWC input: NHWC out, or for the head its output (`(N, classes)`,
/// `(N, C)`, or the NCHW feature map).
pub fn stage(stage: StageRef<'_>, x: ArrayView4<'_, f32>) -> ArrayD<f32> {
    match stage {
        StageRef::Stem { conv, norm } => stem(conv, norm, x).into_dyn(),
        StageRef::Block { layers, .. } => dense_block(layers, x).into_dyn(),
        StageRef::Transition { norm, conv, .. } => transition(norm, conv, x).into_dyn(),
        StageRef::Head {
            norm,
            classifier,
            head: Head::None,
        } => {
            debug_assert!(classifier.is_none());
            feature_map(norm, x).into_dyn()
        }
        StageRef::Head {
            norm,
            classifier,
            head,
        } => pooled_head(norm, classifier, head == Head::Max, x).into_dyn(),
    }
}

/// The stem's forward pass on NHWC input: the conv, then for an ImageNet stem (one
/// with a BatchNorm) BN → ReLU → 3x3/2 max pool with padding 1.
pub fn stem(conv: &Conv2d, norm: Option<&BatchNorm2d>, x: ArrayView4<'_, f32>) -> Array4<f32> {
    let x = conv.forward(x);
    match norm {
        Some(norm) => max_pool2d(norm.forward_relu(x.view()).view(), 3, 2, 1),
        None => x,
    }
}

/// Runs `layers` over an NHWC input, each writing its channels into one shared buffer.
///
/// The layers must chain: layer `l` reads `c_in + l·k` channels. This is the one
/// implementation of a dense block's forward pass.
pub fn dense_block(layers: &[DenseLayer], x: ArrayView4<'_, f32>) -> Array4<f32> {
    let (n, h, w, c_in) = x.dim();
    let c_out = c_in + layers.iter().map(DenseLayer::growth).sum::<usize>();
    let pixels = n * h * w;
    let mut out = Array4::<f32>::zeros((n, h, w, c_out));
    let buf = out.as_slice_mut().expect("fresh array is contiguous");
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    for (dst, src) in buf.chunks_exact_mut(c_out).zip(x.chunks_exact(c_in)) {
        dst[..c_in].copy_from_slice(src);
    }

    let mut s = Scratch::default();
    let mut c = c_in;
    for layer in layers {
        debug_assert_eq!(layer.c_in(), c, "dense layers must chain");
        let k = layer.growth();
        s.normed.resize(pixels * c, 0.0);
        match layer {
            DenseLayer::Basic { norm1, conv1 } => {
                norm1.forward_relu_into(buf, pixels, c_out, &mut s.normed);
                let dst = MatMut::new(&mut buf[c..], pixels, k, c_out, 1);
                conv1.forward_into(&s.normed, n, h, w, dst, &mut s.im2col);
            }
            DenseLayer::Bottleneck {
                norm1,
                conv1,
                norm2,
                conv2,
            } => {
                norm1.forward_relu_into(buf, pixels, c_out, &mut s.normed);
                let width = conv1.c_out();
                s.bottleneck.resize(pixels * width, 0.0);
                s.bottleneck_normed.resize(pixels * width, 0.0);
                let mid = MatMut::row_major(&mut s.bottleneck, pixels, width);
                conv1.forward_into(&s.normed, n, h, w, mid, &mut s.im2col);
                norm2.forward_relu_into(&s.bottleneck, pixels, width, &mut s.bottleneck_normed);
                let dst = MatMut::new(&mut buf[c..], pixels, k, c_out, 1);
                conv2.forward_into(&s.bottleneck_normed, n, h, w, dst, &mut s.im2col);
            }
        }
        c += k;
    }
    out
}

/// Reusable buffers of a block's forward pass.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    bottleneck: Vec<f32>,
    bottleneck_normed: Vec<f32>,
    im2col: Vec<f32>,
}

/// A transition's forward pass on NHWC input: BN → ReLU → 2x2 average pool → 1x1 conv.
///
/// Pools before the 1x1 conv: both are linear per pixel, so the order does not change
/// the result, and the conv then runs on a quarter of the pixels.
pub fn transition(norm: &BatchNorm2d, conv: &Conv2d, x: ArrayView4<'_, f32>) -> Array4<f32> {
    let x = norm.forward_relu(x);
    let x = avg_pool2d(x.view(), 2, 2);
    conv.forward(x.view())
}

/// A pooling head's forward pass on NHWC input: BN → ReLU → global average (or, with
/// `max`, max) pool → the classifier if there is one. `(N, C)` features or `(N, K)` logits.
pub fn pooled_head(
    norm: &BatchNorm2d,
    classifier: Option<&Linear>,
    max: bool,
    x: ArrayView4<'_, f32>,
) -> Array2<f32> {
    let x = norm.forward_relu(x);
    let pooled = if max {
        global_max_pool(x.view())
    } else {
        global_avg_pool(x.view())
    };
    match classifier {
        Some(linear) => linear.forward(pooled.view()),
        None => pooled,
    }
}

/// A feature-map head's forward pass: BN → ReLU on NHWC input, returned NCHW.
pub fn feature_map(norm: &BatchNorm2d, x: ArrayView4<'_, f32>) -> Array4<f32> {
    let x = norm.forward_relu(x);
    x.permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .into_owned()
}
