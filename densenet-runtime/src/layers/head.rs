//! What follows the last dense block: always BN → ReLU, then a head-specific tail.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, ArrayViewMut2, ArrayViewMut4};

use crate::layers::{global_avg_pool, global_max_pool, global_pool_into, BatchNorm2d, Linear};
use crate::rng::Rng;
use crate::visit::{StageMut, StageRef};
use densenet_spec::Head;

/// A pooling head's forward pass on NHWC input: BN → ReLU → global average (or, with
/// `max`, max) pool → the classifier if there is one. `(N, C)` features or `(N, K)` logits.
pub fn pooled_head_forward(
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
pub fn feature_map_forward(norm: &BatchNorm2d, x: ArrayView4<'_, f32>) -> Array4<f32> {
    let x = norm.forward_relu(x);
    x.permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .into_owned()
}

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

/// BN → ReLU → global average pool → linear: logits for `CLASSES` classes.
#[derive(Clone, Debug)]
pub struct ClassifierHead<const C_IN: usize, const CLASSES: usize> {
    /// The final BatchNorm (torchvision's `features.norm5`).
    pub norm: BatchNorm2d,
    /// The linear classifier.
    pub classifier: Linear,
}

impl<const C_IN: usize, const CLASSES: usize> ClassifierHead<C_IN, CLASSES> {
    /// A freshly initialised head.
    pub fn init(rng: &mut Rng, eps: f32) -> Self {
        ClassifierHead {
            norm: BatchNorm2d::init(C_IN, eps),
            classifier: Linear::init(C_IN, CLASSES, rng),
        }
    }

    /// This as a network stage.
    pub fn stage(&self) -> StageRef<'_> {
        StageRef::Head {
            norm: &self.norm,
            classifier: Some(&self.classifier),
            head: Head::Classifier,
        }
    }

    /// [`stage`](Self::stage), mutably.
    pub fn stage_mut(&mut self) -> StageMut<'_> {
        StageMut::Head {
            norm: &mut self.norm,
            classifier: Some(&mut self.classifier),
            head: Head::Classifier,
        }
    }

    /// NHWC in, `(N, CLASSES)` logits out.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array2<f32> {
        pooled_head_forward(&self.norm, Some(&self.classifier), false, x)
    }
}

/// BN → ReLU → global average pool: `(N, C_IN)` features.
#[derive(Clone, Debug)]
pub struct AvgPoolHead<const C_IN: usize> {
    /// The final BatchNorm.
    pub norm: BatchNorm2d,
}

impl<const C_IN: usize> AvgPoolHead<C_IN> {
    /// A freshly initialised head.
    pub fn init(_rng: &mut Rng, eps: f32) -> Self {
        AvgPoolHead {
            norm: BatchNorm2d::init(C_IN, eps),
        }
    }

    /// This head as a network stage.
    pub fn stage(&self) -> StageRef<'_> {
        StageRef::Head {
            norm: &self.norm,
            classifier: None,
            head: Head::Avg,
        }
    }

    /// [`stage`](Self::stage), mutably.
    pub fn stage_mut(&mut self) -> StageMut<'_> {
        StageMut::Head {
            norm: &mut self.norm,
            classifier: None,
            head: Head::Avg,
        }
    }

    /// NHWC in, `(N, C_IN)` out.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array2<f32> {
        pooled_head_forward(&self.norm, None, false, x)
    }
}

/// BN → ReLU → global max pool: `(N, C_IN)` features.
#[derive(Clone, Debug)]
pub struct MaxPoolHead<const C_IN: usize> {
    /// The final BatchNorm.
    pub norm: BatchNorm2d,
}

impl<const C_IN: usize> MaxPoolHead<C_IN> {
    /// A freshly initialised head.
    pub fn init(_rng: &mut Rng, eps: f32) -> Self {
        MaxPoolHead {
            norm: BatchNorm2d::init(C_IN, eps),
        }
    }

    /// This head as a network stage.
    pub fn stage(&self) -> StageRef<'_> {
        StageRef::Head {
            norm: &self.norm,
            classifier: None,
            head: Head::Max,
        }
    }

    /// [`stage`](Self::stage), mutably.
    pub fn stage_mut(&mut self) -> StageMut<'_> {
        StageMut::Head {
            norm: &mut self.norm,
            classifier: None,
            head: Head::Max,
        }
    }

    /// NHWC in, `(N, C_IN)` out.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array2<f32> {
        pooled_head_forward(&self.norm, None, true, x)
    }
}

/// BN → ReLU: the final feature map, returned NCHW.
#[derive(Clone, Debug)]
pub struct FeatureMapHead<const C_IN: usize> {
    /// The final BatchNorm.
    pub norm: BatchNorm2d,
}

impl<const C_IN: usize> FeatureMapHead<C_IN> {
    /// A freshly initialised head.
    pub fn init(_rng: &mut Rng, eps: f32) -> Self {
        FeatureMapHead {
            norm: BatchNorm2d::init(C_IN, eps),
        }
    }

    /// This head as a network stage.
    pub fn stage(&self) -> StageRef<'_> {
        StageRef::Head {
            norm: &self.norm,
            classifier: None,
            head: Head::None,
        }
    }

    /// [`stage`](Self::stage), mutably.
    pub fn stage_mut(&mut self) -> StageMut<'_> {
        StageMut::Head {
            norm: &mut self.norm,
            classifier: None,
            head: Head::None,
        }
    }

    /// NHWC in, NCHW `(N, C_IN, H, W)` out.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array4<f32> {
        feature_map_forward(&self.norm, x)
    }
}
