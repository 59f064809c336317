//! The checked, fully resolved description of a model: every default filled in.
//!
//! Generated code embeds it as a `const`, so the run-time summary and the macro's
//! compile-time counts come from the same planner (`plan.rs`).

use std::borrow::Cow;

/// The network's first layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 7x7/2 conv (padding 3), BN, ReLU, 3x3/2 max pool (padding 1), as torchvision.
    ImageNet,
    /// One 3x3 conv, stride 1, padding 1, as the paper's CIFAR nets.
    Cifar,
}

/// What follows the last dense block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// BN, ReLU, global average pool, linear: logits.
    Classifier,
    /// BN, ReLU, global average pool: pooled features.
    Avg,
    /// BN, ReLU, global max pool: pooled features.
    Max,
    /// BN, ReLU: the final feature map.
    None,
}

/// A checked DenseNet description with every default resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    /// The model's type name.
    pub name: Cow<'static, str>,
    /// Per-image input shape `[C, H, W]`.
    pub input: [usize; 3],
    /// Stem kind.
    pub stem: Stem,
    /// Channels out of the stem.
    pub init_features: usize,
    /// Growth rate k: channels each dense layer adds.
    pub growth: usize,
    /// Layers per dense block.
    pub blocks: Cow<'static, [usize]>,
    /// Bottleneck width factor (`bn_size`): the 1x1 conv has `bn_size * k` channels;
    /// `None` for plain BN-ReLU-conv3x3 layers.
    pub bottleneck: Option<usize>,
    /// Compression θ in (0, 1]: a transition keeps `floor(θ·C)` channels.
    pub theta: f64,
    /// Output classes of the classifier head.
    pub classes: usize,
    /// Head kind.
    pub head: Head,
    /// Dropout rate after each conv but the first (training only).
    pub dropout: f32,
    /// BatchNorm epsilon.
    pub eps: f32,
}

impl Architecture {
    /// Channels a transition keeps out of `channels`: `floor(θ·C)`.
    pub fn compress(&self, channels: usize) -> usize {
        (self.theta * channels as f64).floor() as usize
    }
}
