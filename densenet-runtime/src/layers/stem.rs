//! The network's first layers.

use ndarray::{Array4, ArrayView4};

use crate::layers::{max_pool2d, BatchNorm2d, Conv2d, Conv2dConfig};
use crate::rng::Rng;
use crate::visit::{StageMut, StageRef};

/// ImageNet stem: 7x7/2 conv (padding 3) → BN → ReLU → 3x3/2 max pool (padding 1).
#[derive(Clone, Debug)]
pub struct ImageNetStem<const C_IN: usize, const C_OUT: usize> {
    /// The 7x7 stride-2 conv.
    pub conv: Conv2d,
    /// BatchNorm after it.
    pub norm: BatchNorm2d,
}

impl<const C_IN: usize, const C_OUT: usize> ImageNetStem<C_IN, C_OUT> {
    /// A freshly initialised stem.
    pub fn init(rng: &mut Rng, eps: f32) -> Self {
        let config = Conv2dConfig {
            stride: 2,
            padding: 3,
        };
        ImageNetStem {
            conv: Conv2d::init(C_IN, C_OUT, 7, config, rng),
            norm: BatchNorm2d::init(C_OUT, eps),
        }
    }

    /// This as a network stage.
    pub fn stage(&self) -> StageRef<'_> {
        StageRef::Stem {
            conv: &self.conv,
            norm: Some(&self.norm),
        }
    }

    /// [`stage`](Self::stage), mutably.
    pub fn stage_mut(&mut self) -> StageMut<'_> {
        StageMut::Stem {
            conv: &mut self.conv,
            norm: Some(&mut self.norm),
        }
    }

    /// NHWC in, NHWC out.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array4<f32> {
        let x = self.conv.forward(x);
        let x = self.norm.forward_relu(x.view());
        max_pool2d(x.view(), 3, 2, 1)
    }
}

/// CIFAR stem: one 3x3 conv, stride 1, padding 1 (the first dense layer's BN follows).
#[derive(Clone, Debug)]
pub struct CifarStem<const C_IN: usize, const C_OUT: usize> {
    /// The 3x3 conv.
    pub conv: Conv2d,
}

impl<const C_IN: usize, const C_OUT: usize> CifarStem<C_IN, C_OUT> {
    /// A freshly initialised stem.
    pub fn init(rng: &mut Rng, _eps: f32) -> Self {
        let config = Conv2dConfig {
            stride: 1,
            padding: 1,
        };
        CifarStem {
            conv: Conv2d::init(C_IN, C_OUT, 3, config, rng),
        }
    }

    /// This as a network stage.
    pub fn stage(&self) -> StageRef<'_> {
        StageRef::Stem {
            conv: &self.conv,
            norm: None,
        }
    }

    /// [`stage`](Self::stage), mutably.
    pub fn stage_mut(&mut self) -> StageMut<'_> {
        StageMut::Stem {
            conv: &mut self.conv,
            norm: None,
        }
    }

    /// NHWC in, NHWC out.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array4<f32> {
        self.conv.forward(x)
    }
}
