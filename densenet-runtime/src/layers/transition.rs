//! Transition between dense blocks: BN → ReLU → 1x1 conv → 2x2 average pool.

use crate::parallel::prelude::*;
use crate::prelude::*;

use crate::kernels::direct_conv::Epilogue;
use crate::kernels::elementwise::scale_shift_relu_add;
use crate::kernels::gemm::MatMut;
use crate::layers::{conv2d_into, BatchNorm2d, Conv2d};

/// Pooled outputs with at least this many floats are computed by rayon's threads, one
/// output row per task.
const PARALLEL_POOL: usize = 1 << 14;

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
    bn_relu_pool_into(x, (n, h, w, c), (scale, shift), pooled);
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

/// `relu(x·scale + shift)` per channel and the 2x2 average pool (floor mode) of the
/// contiguous NHWC batch `x` (`(n, h, w, c)`) in one pass into `pooled`
/// (`(n, h/2, w/2, c)`): each output pixel sums the BN-ReLU of its four inputs, so the
/// normalised map is never stored. A transition's conv input, at inference and in
/// training (with the batch's statistics folded into `scale` and `shift`).
///
/// # Panics
///
/// If a slice does not fit the shapes.
pub(crate) fn bn_relu_pool_into(
    x: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    (scale, shift): (&[f32], &[f32]),
    pooled: &mut [f32],
) {
    let (ho, wo) = (h / 2, w / 2);
    assert!(
        x.len() == n * h * w * c && pooled.len() == n * ho * wo * c,
        "bn_relu_pool_into: the slices do not fit the shapes"
    );
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
    if wo == 0 || c == 0 {
        return;
    }
    if pooled.len() >= PARALLEL_POOL && crate::parallel::current_num_threads() > 1 {
        pooled.par_chunks_mut(wo * c).enumerate().for_each(row);
    } else {
        pooled.chunks_mut(wo * c).enumerate().for_each(row);
    }
}
