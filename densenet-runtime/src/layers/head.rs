//! What follows the last dense block: always BN → ReLU, then a head-specific tail.

use ndarray::{ArrayView2, ArrayView4, ArrayViewMut2, ArrayViewMut4};

use crate::layers::{global_pool_into, BatchNorm2d, Linear};

/// [`pooled_head_forward`] without allocating: `x` is the contiguous NHWC map
/// `(n, h, w, c)`; BN-ReLU, the pooled features and the logits go to `scratch`, then are
/// copied into `out` (`(n, classes)` or `(n, c)`, any layout). `bn_params` holds `2·c`
/// floats. Returns the scratch floats used.
///
/// # Panics
///
/// If a slice or `out` does not fit the shapes.
#[allow(clippy::too_many_arguments)]
pub fn pooled_head_forward_into(
    norm: &BatchNorm2d,
    classifier: Option<&Linear>,
    max: bool,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    mut out: ArrayViewMut2<'_, f32>,
    bn_params: &mut [f32],
    scratch: &mut [f32],
) -> usize {
    let c = norm.channels();
    let (normed, rest) = scratch.split_at_mut(n * h * w * c);
    let (pooled, rest) = rest.split_at_mut(n * c);
    norm.forward_relu_padded_into(x, c, (n, h, w), 0, bn_params, normed);
    global_pool_into(normed, n, h * w, c, max, pooled);
    let used = normed.len() + pooled.len();
    match classifier {
        Some(linear) => {
            let logits = &mut rest[..n * linear.out_features()];
            linear.forward_into(pooled, n, logits);
            out.assign(&ArrayView2::from_shape((n, linear.out_features()), &*logits).expect("n·k"));
            used + logits.len()
        }
        None => {
            out.assign(&ArrayView2::from_shape((n, c), &*pooled).expect("n·c"));
            used
        }
    }
}

/// [`feature_map_forward`] without allocating: BN-ReLU of the contiguous NHWC map `x`
/// into `scratch`, copied into `out` as NCHW `(n, c, h, w)`. Returns the scratch used.
///
/// # Panics
///
/// If a slice or `out` does not fit the shapes.
pub fn feature_map_forward_into(
    norm: &BatchNorm2d,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    mut out: ArrayViewMut4<'_, f32>,
    bn_params: &mut [f32],
    scratch: &mut [f32],
) -> usize {
    let c = norm.channels();
    let normed = &mut scratch[..n * h * w * c];
    norm.forward_relu_padded_into(x, c, (n, h, w), 0, bn_params, normed);
    let nhwc = ArrayView4::from_shape((n, h, w, c), &*normed).expect("n·h·w·c");
    out.assign(&nhwc.permuted_axes([0, 3, 1, 2]));
    normed.len()
}
