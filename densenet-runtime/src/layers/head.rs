//! What follows the last dense block: always BN → ReLU, then a head-specific tail.

use ndarray::{Array2, Array4, ArrayView4};

use crate::layers::{global_avg_pool, global_max_pool, BatchNorm2d, Linear};
use crate::rng::Rng;
use crate::visit::{StageMut, StageRef};
use densenet_spec::Head;

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
        let x = self.norm.forward_relu(x);
        self.classifier.forward(global_avg_pool(x.view()).view())
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
        global_avg_pool(self.norm.forward_relu(x).view())
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
        global_max_pool(self.norm.forward_relu(x).view())
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
        let x = self.norm.forward_relu(x);
        x.permuted_axes([0, 3, 1, 2])
            .as_standard_layout()
            .into_owned()
    }
}
