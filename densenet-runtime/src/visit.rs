//! Walking a model: its stages and its layers by name. What weight loading, saving,
//! export and training build on, without knowing a generated model's concrete type.
//!
//! A layer's [`LayerName`] is structural (which block, which layer, which part), so each
//! naming scheme (torchvision/timm, Keras) is a function of it, in `weights/naming.rs`.

use densenet_spec::{Architecture, Head};

use crate::layers::{BatchNorm2d, Conv2d, DenseLayer, Linear};
use crate::rng::Rng;

/// Where a layer sits in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// The stem.
    Stem,
    /// Dense layer `layer` (1-based) of dense block `block` (1-based).
    Dense {
        /// 1-based block index.
        block: usize,
        /// 1-based layer index within the block.
        layer: usize,
    },
    /// Transition `index` (1-based; it follows block `index`).
    Transition {
        /// 1-based transition index.
        index: usize,
    },
    /// The head.
    Head,
}

/// A layer's structural name: its site and its torchvision part name (`conv0`, `norm1`,
/// `conv2`, `norm`, `norm5`, `classifier`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerName {
    /// Where the layer is.
    pub site: Site,
    /// Its torchvision part name.
    pub part: &'static str,
}

impl LayerName {
    /// A name at `site` for `part`.
    pub const fn new(site: Site, part: &'static str) -> Self {
        LayerName { site, part }
    }
}

/// A layer with weights, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum LayerRef<'a> {
    /// A convolution.
    Conv(&'a Conv2d),
    /// A batch norm.
    BatchNorm(&'a BatchNorm2d),
    /// A linear layer.
    Linear(&'a Linear),
}

/// A layer with weights, borrowed mutably.
#[derive(Debug)]
pub enum LayerMut<'a> {
    /// A convolution.
    Conv(&'a mut Conv2d),
    /// A batch norm.
    BatchNorm(&'a mut BatchNorm2d),
    /// A linear layer.
    Linear(&'a mut Linear),
}

/// One stage of a network, borrowed: the dynamic view of a generated model's fields
/// that loading, saving, export and training walk.
#[derive(Clone, Copy, Debug)]
pub enum StageRef<'a> {
    /// The stem: a conv, then (ImageNet stem) BN, ReLU and a 3x3/2 max pool.
    Stem {
        /// The stem conv.
        conv: &'a Conv2d,
        /// The BatchNorm of an ImageNet stem (`None` for a CIFAR stem).
        norm: Option<&'a BatchNorm2d>,
    },
    /// Dense block `index` (1-based).
    Block {
        /// 1-based block index.
        index: usize,
        /// Its layers.
        layers: &'a [DenseLayer],
    },
    /// Transition `index` (1-based): BN, ReLU, 1x1 conv, 2x2 average pool.
    Transition {
        /// 1-based transition index.
        index: usize,
        /// The BatchNorm.
        norm: &'a BatchNorm2d,
        /// The 1x1 conv.
        conv: &'a Conv2d,
    },
    /// The head: BN, ReLU, then the tail `head` says.
    Head {
        /// The final BatchNorm.
        norm: &'a BatchNorm2d,
        /// The classifier, for a classifier head.
        classifier: Option<&'a Linear>,
        /// Which head.
        head: Head,
    },
}

/// One stage of a network, borrowed mutably; see [`StageRef`].
#[derive(Debug)]
pub enum StageMut<'a> {
    /// The stem.
    Stem {
        /// The stem conv.
        conv: &'a mut Conv2d,
        /// The BatchNorm of an ImageNet stem.
        norm: Option<&'a mut BatchNorm2d>,
    },
    /// Dense block `index` (1-based).
    Block {
        /// 1-based block index.
        index: usize,
        /// Its layers.
        layers: &'a mut [DenseLayer],
    },
    /// Transition `index` (1-based).
    Transition {
        /// 1-based transition index.
        index: usize,
        /// The BatchNorm.
        norm: &'a mut BatchNorm2d,
        /// The 1x1 conv.
        conv: &'a mut Conv2d,
    },
    /// The head.
    Head {
        /// The final BatchNorm.
        norm: &'a mut BatchNorm2d,
        /// The classifier, for a classifier head.
        classifier: Option<&'a mut Linear>,
        /// Which head.
        head: Head,
    },
}

/// What generated models implement so the runtime can load, save, export (and later
/// train) them without knowing their concrete types.
pub trait Model: Sized {
    /// The checked architecture the model was generated from.
    const ARCHITECTURE: Architecture;

    /// A model with deterministic initial weights.
    fn init(seed: u64) -> Self {
        Self::init_with(&mut Rng::new(seed))
    }

    /// [`init`](Self::init) drawing from `rng`.
    fn init_with(rng: &mut Rng) -> Self;

    /// The stages in network order.
    fn stages(&self) -> Vec<StageRef<'_>>;

    /// The stages in network order, mutably.
    fn stages_mut(&mut self) -> Vec<StageMut<'_>>;

    /// Calls `f` on every layer with weights, in network order, with its structural name.
    fn visit_layers(&self, f: &mut dyn FnMut(LayerName, LayerRef<'_>)) {
        visit_stage_layers(self.stages(), f);
    }

    /// [`visit_layers`](Self::visit_layers), mutably, in the same order with the same names.
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(LayerName, LayerMut<'_>)) {
        visit_stage_layers_mut(self.stages_mut(), f);
    }
}

/// Calls `f` on every layer with weights of `stages`, in order, with its structural name.
pub fn visit_stage_layers(stages: Vec<StageRef<'_>>, f: &mut dyn FnMut(LayerName, LayerRef<'_>)) {
    for stage in stages {
        match stage {
            StageRef::Stem { conv, norm } => {
                f(LayerName::new(Site::Stem, "conv0"), LayerRef::Conv(conv));
                if let Some(norm) = norm {
                    f(
                        LayerName::new(Site::Stem, "norm0"),
                        LayerRef::BatchNorm(norm),
                    );
                }
            }
            StageRef::Block { index, layers } => {
                for (j, layer) in layers.iter().enumerate() {
                    let site = Site::Dense {
                        block: index,
                        layer: j + 1,
                    };
                    let name = |part| LayerName::new(site, part);
                    match layer {
                        DenseLayer::Basic { norm1, conv1 } => {
                            f(name("norm1"), LayerRef::BatchNorm(norm1));
                            f(name("conv1"), LayerRef::Conv(conv1));
                        }
                        DenseLayer::Bottleneck {
                            norm1,
                            conv1,
                            norm2,
                            conv2,
                        } => {
                            f(name("norm1"), LayerRef::BatchNorm(norm1));
                            f(name("conv1"), LayerRef::Conv(conv1));
                            f(name("norm2"), LayerRef::BatchNorm(norm2));
                            f(name("conv2"), LayerRef::Conv(conv2));
                        }
                    }
                }
            }
            StageRef::Transition { index, norm, conv } => {
                let site = Site::Transition { index };
                f(LayerName::new(site, "norm"), LayerRef::BatchNorm(norm));
                f(LayerName::new(site, "conv"), LayerRef::Conv(conv));
            }
            StageRef::Head {
                norm, classifier, ..
            } => {
                f(
                    LayerName::new(Site::Head, "norm5"),
                    LayerRef::BatchNorm(norm),
                );
                if let Some(classifier) = classifier {
                    f(
                        LayerName::new(Site::Head, "classifier"),
                        LayerRef::Linear(classifier),
                    );
                }
            }
        }
    }
}

/// [`visit_stage_layers`], mutably: the same walk, written twice because Rust has no
/// way to be generic over `&` and `&mut`.
pub fn visit_stage_layers_mut(
    stages: Vec<StageMut<'_>>,
    f: &mut dyn FnMut(LayerName, LayerMut<'_>),
) {
    for stage in stages {
        match stage {
            StageMut::Stem { conv, norm } => {
                f(LayerName::new(Site::Stem, "conv0"), LayerMut::Conv(conv));
                if let Some(norm) = norm {
                    f(
                        LayerName::new(Site::Stem, "norm0"),
                        LayerMut::BatchNorm(norm),
                    );
                }
            }
            StageMut::Block { index, layers } => {
                for (j, layer) in layers.iter_mut().enumerate() {
                    let site = Site::Dense {
                        block: index,
                        layer: j + 1,
                    };
                    let name = |part| LayerName::new(site, part);
                    match layer {
                        DenseLayer::Basic { norm1, conv1 } => {
                            f(name("norm1"), LayerMut::BatchNorm(norm1));
                            f(name("conv1"), LayerMut::Conv(conv1));
                        }
                        DenseLayer::Bottleneck {
                            norm1,
                            conv1,
                            norm2,
                            conv2,
                        } => {
                            f(name("norm1"), LayerMut::BatchNorm(norm1));
                            f(name("conv1"), LayerMut::Conv(conv1));
                            f(name("norm2"), LayerMut::BatchNorm(norm2));
                            f(name("conv2"), LayerMut::Conv(conv2));
                        }
                    }
                }
            }
            StageMut::Transition { index, norm, conv } => {
                let site = Site::Transition { index };
                f(LayerName::new(site, "norm"), LayerMut::BatchNorm(norm));
                f(LayerName::new(site, "conv"), LayerMut::Conv(conv));
            }
            StageMut::Head {
                norm, classifier, ..
            } => {
                f(
                    LayerName::new(Site::Head, "norm5"),
                    LayerMut::BatchNorm(norm),
                );
                if let Some(classifier) = classifier {
                    f(
                        LayerName::new(Site::Head, "classifier"),
                        LayerMut::Linear(classifier),
                    );
                }
            }
        }
    }
}
