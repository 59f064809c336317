//! Transition between dense blocks: BN → ReLU → 1x1 conv → 2x2 average pool.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use crate::kernels::direct_conv::Epilogue;
use crate::kernels::elementwise::scale_shift_relu_add;
use crate::kernels::gemm::MatMut;
use crate::layers::{avg_pool2d, conv2d_into, BatchNorm2d, Conv2d, Conv2dConfig};
use crate::rng::Rng;
use crate::visit::{StageMut, StageRef};

/// Pooled outputs with at least this many floats are computed by rayon's threads, one
/// output row per task.
const PARALLEL_POOL: usize = 1 << 14;

/// A transition's forward pass on NHWC input: BN → ReLU → 2x2 average pool → 1x1 conv.
///
/// Pools before the 1x1 conv: both are linear per pixel, so the order does not change
/// the result, and the conv then runs on a quarter of the pixels.
pub fn transition_forward(
    norm: &BatchNorm2d,
    conv: &Conv2d,
    x: ArrayView4<'_, f32>,
) -> Array4<f32> {
    let x = norm.forward_relu(x);
    let x = avg_pool2d(x.view(), 2, 2);
    conv.forward(x.view())
}

/// A transition's forward pass without allocating: `x` is the contiguous NHWC block
/// output `(n, h, w, c_in)`; BN-ReLU and the 2x2 average pool run as one pass into
/// `scratch` (each output pixel sums the BN-ReLU of its four inputs, so the normalised
/// map is never stored), and the 1x1 conv writes `(n, h/2, w/2, c_out)` into `out` with
/// pixels `out_stride` apart: the first channels of the next block's concatenation
/// buffer. `bn_params` holds `2·c_in` floats. Returns the scratch floats used.
///
/// # Panics
///
/// If a slice does not fit the shapes.
#[allow(clippy::too_many_arguments)]
pub fn transition_forward_into(
    norm: &BatchNorm2d,
    conv: &Conv2d,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    out: &mut [f32],
    out_stride: usize,
    bn_params: &mut [f32],
    scratch: &mut [f32],
) -> usize {
    let c = norm.channels();
    let (ho, wo) = (h / 2, w / 2);
    assert!(
        x.len() == n * h * w * c,
        "transition_forward_into: input size"
    );
    let pooled = &mut scratch[..n * ho * wo * c];
    let (scale, rest) = bn_params.split_at_mut(c);
    let shift = &mut rest[..c];
    norm.scale_shift_into(scale, shift);
    let (scale, shift) = (&*scale, &*shift);
    // Output row `r` (image `r / ho`, row `r % ho`): 2x2 windows, floor mode.
    let row = |(r, dst): (usize, &mut [f32])| {
        let (b, oy) = (r / ho, r % ho);
        for (ox, dst) in dst.chunks_exact_mut(c).enumerate() {
            dst.fill(0.0);
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let p = (b * h + 2 * oy + dy) * w + 2 * ox + dx;
                scale_shift_relu_add(&x[p * c..(p + 1) * c], scale, shift, dst);
            }
            dst.iter_mut().for_each(|v| *v *= 0.25);
        }
    };
    if pooled.len() >= PARALLEL_POOL && rayon::current_num_threads() > 1 {
        pooled.par_chunks_mut(wo * c).enumerate().for_each(row);
    } else {
        pooled.chunks_mut(wo * c).enumerate().for_each(row);
    }
    let dst = MatMut::new(out, n * ho * wo, conv.c_out(), out_stride, 1);
    // A 1x1 convolution: a GEMM, no fallback scratch (an empty Vec does not allocate).
    let pooled = &*pooled;
    conv2d_into(
        conv,
        pooled,
        (n, ho, wo),
        false,
        Epilogue::Store,
        dst,
        &mut Vec::new(),
    );
    pooled.len()
}

/// A transition from `C_IN` to `C_OUT = floor(θ·C_IN)` channels, halving height and width.
#[derive(Clone, Debug)]
pub struct Transition<const C_IN: usize, const C_OUT: usize> {
    /// BatchNorm over the block output.
    pub norm: BatchNorm2d,
    /// The 1x1 compression conv.
    pub conv: Conv2d,
}

impl<const C_IN: usize, const C_OUT: usize> Transition<C_IN, C_OUT> {
    /// A freshly initialised transition.
    pub fn init(rng: &mut Rng, eps: f32) -> Self {
        Transition {
            norm: BatchNorm2d::init(C_IN, eps),
            conv: Conv2d::init(C_IN, C_OUT, 1, Conv2dConfig::default(), rng),
        }
    }

    /// This transition as stage `index` (1-based) of a network.
    pub fn stage(&self, index: usize) -> StageRef<'_> {
        StageRef::Transition {
            index,
            norm: &self.norm,
            conv: &self.conv,
        }
    }

    /// [`stage`](Self::stage), mutably.
    pub fn stage_mut(&mut self, index: usize) -> StageMut<'_> {
        StageMut::Transition {
            index,
            norm: &mut self.norm,
            conv: &mut self.conv,
        }
    }

    /// NHWC in, NHWC out; see [`transition_forward`].
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array4<f32> {
        transition_forward(&self.norm, &self.conv, x)
    }
}
