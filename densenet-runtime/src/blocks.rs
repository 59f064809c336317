//! The typed building blocks a generated model's fields are made of: a stage whose
//! sizes are const generics, fixed by the macro.
//!
//! They are built only from [`Stage`]s of exactly their shape (what [`init_stages`]
//! and the loaders produce), and their layers are private: a generated model's shapes
//! are guarantees, not labels. Read them through the accessors, change weights through
//! [`Network::stage_mut`](crate::Network::stage_mut) or
//! [`Network::visit_layers_mut`](crate::Network::visit_layers_mut), which keep shapes.
//!
//! [`init_stages`]: crate::stage::init_stages

use densenet_spec::Head;

use crate::layers::{BatchNorm2d, Conv2d, DenseLayer, Linear};
use crate::prelude::*;
use crate::stage::{Stage, StageMut, StageRef};

/// What generated code needs of a building block: built from a stage of its shape,
/// viewed as stage `index`. Not for users (the generated model's `Network` impl is).
#[doc(hidden)]
pub trait BuildingBlock: Sized {
    /// `Some` when `stage` has exactly this block's shape.
    fn from_stage(stage: Stage) -> Option<Self>;
    /// This block as stage `index` (1-based for blocks and transitions; ignored otherwise).
    fn stage(&self, index: usize) -> StageRef<'_>;
    /// [`stage`](Self::stage), mutably.
    fn stage_mut(&mut self, index: usize) -> StageMut<'_>;
}

/// Whether `conv` maps `c_in` to `c_out` channels with a square `kernel`.
fn conv_is(conv: &Conv2d, c_in: usize, c_out: usize, kernel: usize) -> bool {
    let [kh, kw, ci, co] = conv.weight_shape();
    [kh, kw, ci, co] == [kernel, kernel, c_in, c_out]
}

/// ImageNet stem: 7x7/2 conv (padding 3) → BN → ReLU → 3x3/2 max pool (padding 1).
#[derive(Clone, Debug)]
pub struct ImageNetStem<const C_IN: usize, const C_OUT: usize> {
    conv: Conv2d,
    norm: BatchNorm2d,
}

impl<const C_IN: usize, const C_OUT: usize> ImageNetStem<C_IN, C_OUT> {
    /// The 7x7 stride-2 conv.
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    /// The BatchNorm after it.
    pub fn norm(&self) -> &BatchNorm2d {
        &self.norm
    }
}

impl<const C_IN: usize, const C_OUT: usize> BuildingBlock for ImageNetStem<C_IN, C_OUT> {
    fn from_stage(stage: Stage) -> Option<Self> {
        match stage {
            Stage::Stem {
                conv,
                norm: Some(norm),
            } if conv_is(&conv, C_IN, C_OUT, 7)
                && conv.config().stride == 2
                && norm.channels() == C_OUT =>
            {
                Some(ImageNetStem { conv, norm })
            }
            _ => None,
        }
    }

    fn stage(&self, _: usize) -> StageRef<'_> {
        StageRef::Stem {
            conv: &self.conv,
            norm: Some(&self.norm),
        }
    }

    fn stage_mut(&mut self, _: usize) -> StageMut<'_> {
        StageMut::Stem {
            conv: &mut self.conv,
            norm: Some(&mut self.norm),
        }
    }
}

/// CIFAR stem: one 3x3 conv, stride 1, padding 1 (the first dense layer's BN follows).
#[derive(Clone, Debug)]
pub struct CifarStem<const C_IN: usize, const C_OUT: usize> {
    conv: Conv2d,
}

impl<const C_IN: usize, const C_OUT: usize> CifarStem<C_IN, C_OUT> {
    /// The 3x3 conv.
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }
}

impl<const C_IN: usize, const C_OUT: usize> BuildingBlock for CifarStem<C_IN, C_OUT> {
    fn from_stage(stage: Stage) -> Option<Self> {
        match stage {
            Stage::Stem { conv, norm: None } if conv_is(&conv, C_IN, C_OUT, 3) => {
                Some(CifarStem { conv })
            }
            _ => None,
        }
    }

    fn stage(&self, _: usize) -> StageRef<'_> {
        StageRef::Stem {
            conv: &self.conv,
            norm: None,
        }
    }

    fn stage_mut(&mut self, _: usize) -> StageMut<'_> {
        StageMut::Stem {
            conv: &mut self.conv,
            norm: None,
        }
    }
}

/// A dense block of `LAYERS` layers reading `C_IN` channels, each adding `GROWTH`;
/// `BN_SIZE` is the bottleneck width factor (0: no bottleneck).
#[derive(Clone, Debug)]
pub struct DenseBlock<
    const C_IN: usize,
    const LAYERS: usize,
    const GROWTH: usize,
    const BN_SIZE: usize,
> {
    layers: Vec<DenseLayer>,
}

impl<const C_IN: usize, const LAYERS: usize, const GROWTH: usize, const BN_SIZE: usize>
    DenseBlock<C_IN, LAYERS, GROWTH, BN_SIZE>
{
    /// Channels out: `C_IN + LAYERS · GROWTH`.
    pub const C_OUT: usize = C_IN + LAYERS * GROWTH;

    /// The layers, in order.
    pub fn layers(&self) -> &[DenseLayer] {
        &self.layers
    }

    /// Whether layer `l` (0-based) has the shape this block promises.
    fn layer_fits(l: usize, layer: &DenseLayer) -> bool {
        let c_in = C_IN + l * GROWTH;
        match layer {
            DenseLayer::Basic { norm1, conv1 } => {
                BN_SIZE == 0 && norm1.channels() == c_in && conv_is(conv1, c_in, GROWTH, 3)
            }
            DenseLayer::Bottleneck {
                norm1,
                conv1,
                norm2,
                conv2,
            } => {
                let width = BN_SIZE * GROWTH;
                BN_SIZE > 0
                    && norm1.channels() == c_in
                    && conv_is(conv1, c_in, width, 1)
                    && norm2.channels() == width
                    && conv_is(conv2, width, GROWTH, 3)
            }
        }
    }
}

impl<const C_IN: usize, const LAYERS: usize, const GROWTH: usize, const BN_SIZE: usize>
    BuildingBlock for DenseBlock<C_IN, LAYERS, GROWTH, BN_SIZE>
{
    fn from_stage(stage: Stage) -> Option<Self> {
        match stage {
            Stage::Block { layers, .. }
                if layers.len() == LAYERS
                    && layers
                        .iter()
                        .enumerate()
                        .all(|(l, x)| Self::layer_fits(l, x)) =>
            {
                Some(DenseBlock { layers })
            }
            _ => None,
        }
    }

    fn stage(&self, index: usize) -> StageRef<'_> {
        StageRef::Block {
            index,
            layers: &self.layers,
        }
    }

    fn stage_mut(&mut self, index: usize) -> StageMut<'_> {
        StageMut::Block {
            index,
            layers: &mut self.layers,
        }
    }
}

/// A transition from `C_IN` to `C_OUT = floor(θ·C_IN)` channels, halving height and width.
#[derive(Clone, Debug)]
pub struct Transition<const C_IN: usize, const C_OUT: usize> {
    norm: BatchNorm2d,
    conv: Conv2d,
}

impl<const C_IN: usize, const C_OUT: usize> Transition<C_IN, C_OUT> {
    /// The BatchNorm over the block output.
    pub fn norm(&self) -> &BatchNorm2d {
        &self.norm
    }

    /// The 1x1 compression conv.
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }
}

impl<const C_IN: usize, const C_OUT: usize> BuildingBlock for Transition<C_IN, C_OUT> {
    fn from_stage(stage: Stage) -> Option<Self> {
        match stage {
            Stage::Transition { norm, conv, .. }
                if norm.channels() == C_IN && conv_is(&conv, C_IN, C_OUT, 1) =>
            {
                Some(Transition { norm, conv })
            }
            _ => None,
        }
    }

    fn stage(&self, index: usize) -> StageRef<'_> {
        StageRef::Transition {
            index,
            norm: &self.norm,
            conv: &self.conv,
        }
    }

    fn stage_mut(&mut self, index: usize) -> StageMut<'_> {
        StageMut::Transition {
            index,
            norm: &mut self.norm,
            conv: &mut self.conv,
        }
    }
}

/// BN → ReLU → global average pool → linear: logits for `CLASSES` classes.
#[derive(Clone, Debug)]
pub struct ClassifierHead<const C_IN: usize, const CLASSES: usize> {
    norm: BatchNorm2d,
    classifier: Linear,
}

impl<const C_IN: usize, const CLASSES: usize> ClassifierHead<C_IN, CLASSES> {
    /// The final BatchNorm (torchvision's `features.norm5`).
    pub fn norm(&self) -> &BatchNorm2d {
        &self.norm
    }

    /// The linear classifier.
    pub fn classifier(&self) -> &Linear {
        &self.classifier
    }
}

impl<const C_IN: usize, const CLASSES: usize> BuildingBlock for ClassifierHead<C_IN, CLASSES> {
    fn from_stage(stage: Stage) -> Option<Self> {
        match stage {
            Stage::Head {
                norm,
                classifier: Some(classifier),
                head: Head::Classifier,
            } if norm.channels() == C_IN
                && classifier.in_features() == C_IN
                && classifier.out_features() == CLASSES =>
            {
                Some(ClassifierHead { norm, classifier })
            }
            _ => None,
        }
    }

    fn stage(&self, _: usize) -> StageRef<'_> {
        StageRef::Head {
            norm: &self.norm,
            classifier: Some(&self.classifier),
            head: Head::Classifier,
        }
    }

    fn stage_mut(&mut self, _: usize) -> StageMut<'_> {
        StageMut::Head {
            norm: &mut self.norm,
            classifier: Some(&mut self.classifier),
            head: Head::Classifier,
        }
    }
}

/// The heads without a classifier: BN → ReLU, then a pool (or nothing).
macro_rules! norm_only_head {
    ($(#[$doc:meta])* $name:ident, $head:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name<const C_IN: usize> {
            norm: BatchNorm2d,
        }

        impl<const C_IN: usize> $name<C_IN> {
            /// The final BatchNorm.
            pub fn norm(&self) -> &BatchNorm2d {
                &self.norm
            }
        }

        impl<const C_IN: usize> BuildingBlock for $name<C_IN> {
            fn from_stage(stage: Stage) -> Option<Self> {
                match stage {
                    Stage::Head {
                        norm,
                        classifier: None,
                        head,
                    } if head == $head && norm.channels() == C_IN => Some($name { norm }),
                    _ => None,
                }
            }

            fn stage(&self, _: usize) -> StageRef<'_> {
                StageRef::Head {
                    norm: &self.norm,
                    classifier: None,
                    head: $head,
                }
            }

            fn stage_mut(&mut self, _: usize) -> StageMut<'_> {
                StageMut::Head {
                    norm: &mut self.norm,
                    classifier: None,
                    head: $head,
                }
            }
        }
    };
}

norm_only_head!(
    /// BN → ReLU → global average pool: `(N, C_IN)` features.
    AvgPoolHead,
    Head::Avg
);
norm_only_head!(
    /// BN → ReLU → global max pool: `(N, C_IN)` features.
    MaxPoolHead,
    Head::Max
);
norm_only_head!(
    /// BN → ReLU: the final feature map, returned NCHW.
    FeatureMapHead,
    Head::None
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Conv2dConfig;
    use crate::rng::Rng;

    fn dense_layer(c_in: usize, growth: usize, bn_size: usize) -> DenseLayer {
        DenseLayer::init(c_in, growth, bn_size, 1e-5, &mut Rng::new(0))
    }

    #[test]
    fn blocks_take_only_stages_of_their_shape() {
        let block = |layers| Stage::Block { index: 1, layers };
        // 2 layers from 8 channels, growth 4, bottleneck 4: layer 2 reads 12.
        let fits = vec![dense_layer(8, 4, 4), dense_layer(12, 4, 4)];
        assert!(DenseBlock::<8, 2, 4, 4>::from_stage(block(fits.clone())).is_some());
        assert!(DenseBlock::<8, 3, 4, 4>::from_stage(block(fits.clone())).is_none());
        assert!(DenseBlock::<8, 2, 4, 0>::from_stage(block(fits)).is_none());
        let unchained = vec![dense_layer(8, 4, 4), dense_layer(8, 4, 4)];
        assert!(DenseBlock::<8, 2, 4, 4>::from_stage(block(unchained)).is_none());

        let transition = |c_in, c_out| Stage::Transition {
            index: 1,
            norm: BatchNorm2d::init(c_in, 1e-5),
            conv: Conv2d::init(c_in, c_out, 1, Conv2dConfig::default(), &mut Rng::new(0)),
        };
        assert!(Transition::<16, 8>::from_stage(transition(16, 8)).is_some());
        assert!(Transition::<16, 8>::from_stage(transition(16, 7)).is_none());
        assert!(ClassifierHead::<16, 3>::from_stage(transition(16, 8)).is_none());
    }
}
