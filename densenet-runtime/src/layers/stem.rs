//! The network's first layers.

use ndarray::{Array4, ArrayView4};

use crate::layers::{max_pool2d, BatchNorm2d, Conv2d, Conv2dConfig};
use densenet_spec::Stem;

use crate::rng::Rng;
use crate::visit::{StageMut, StageRef};

/// A freshly initialised stem conv: 7x7 stride 2 padding 3 (ImageNet, as torchvision)
/// or 3x3 stride 1 padding 1 (CIFAR, as the paper).
pub fn stem_conv(stem: Stem, c_in: usize, c_out: usize, rng: &mut Rng) -> Conv2d {
    let (kernel, stride, padding) = match stem {
        Stem::ImageNet => (7, 2, 3),
        Stem::Cifar => (3, 1, 1),
    };
    Conv2d::init(c_in, c_out, kernel, Conv2dConfig { stride, padding }, rng)
}

/// The stem's forward pass on NHWC input: the conv, then for an ImageNet stem (one
/// with a BatchNorm) BN → ReLU → 3x3/2 max pool with padding 1.
pub fn stem_forward(
    conv: &Conv2d,
    norm: Option<&BatchNorm2d>,
    x: ArrayView4<'_, f32>,
) -> Array4<f32> {
    let x = conv.forward(x);
    match norm {
        Some(norm) => max_pool2d(norm.forward_relu(x.view()).view(), 3, 2, 1),
        None => x,
    }
}

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
        ImageNetStem {
            conv: stem_conv(Stem::ImageNet, C_IN, C_OUT, rng),
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
        stem_forward(&self.conv, Some(&self.norm), x)
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
        CifarStem {
            conv: stem_conv(Stem::Cifar, C_IN, C_OUT, rng),
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
        stem_forward(&self.conv, None, x)
    }
}
