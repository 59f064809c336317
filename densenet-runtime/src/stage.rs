//! The network as a sequence of stages: stem, dense blocks and transitions, head.
//!
//! A model lists its stages by index ([`Network::stage`]); every pass
//! over a network (inference, the oracle, training, weight naming, loading, export)
//! walks that one list, in the order [`Plan::stages`](crate::spec::Plan::stages) gives,
//! and [`init_stages`] builds it in that order for generated and run-time models alike.
//!
//! A layer's [`LayerName`] is structural (which block, which layer, which part), so each
//! naming scheme (torchvision/timm, Keras) is a function of it, in `weights/naming.rs`.

use densenet_spec::{Architecture, Head, Plan, StagePlan, Stem};

use crate::layers::{stem_conv, BatchNorm2d, Conv2d, Conv2dConfig, DenseLayer, Linear};
use crate::prelude::*;
use crate::rng::Rng;

/// Calls `f` on every layer with weights of `stage`, in network order, with its
/// structural name; `visit_stage_layers!(StageMut, LayerMut, iter_mut)` is the same walk
/// over mutable borrows. One macro, since Rust cannot be generic over `&` and `&mut`.
macro_rules! visit_stage_layers {
    ($stage:expr, $f:expr, $Stage:ident, $Layer:ident, $iter:ident) => {
        match $stage {
            $Stage::Stem { conv, norm } => {
                $f(LayerName::new(Site::Stem, "conv0"), $Layer::Conv(conv));
                if let Some(norm) = norm {
                    $f(LayerName::new(Site::Stem, "norm0"), $Layer::BatchNorm(norm));
                }
            }
            $Stage::Block { index, layers } => {
                for (j, layer) in layers.$iter().enumerate() {
                    let site = Site::Dense {
                        block: index,
                        layer: j + 1,
                    };
                    let name = |part| LayerName::new(site, part);
                    match layer {
                        DenseLayer::Basic { norm1, conv1 } => {
                            $f(name("norm1"), $Layer::BatchNorm(norm1));
                            $f(name("conv1"), $Layer::Conv(conv1));
                        }
                        DenseLayer::Bottleneck {
                            norm1,
                            conv1,
                            norm2,
                            conv2,
                        } => {
                            $f(name("norm1"), $Layer::BatchNorm(norm1));
                            $f(name("conv1"), $Layer::Conv(conv1));
                            $f(name("norm2"), $Layer::BatchNorm(norm2));
                            $f(name("conv2"), $Layer::Conv(conv2));
                        }
                    }
                }
            }
            $Stage::Transition { index, norm, conv } => {
                let site = Site::Transition { index };
                $f(LayerName::new(site, "norm"), $Layer::BatchNorm(norm));
                $f(LayerName::new(site, "conv"), $Layer::Conv(conv));
            }
            $Stage::Head {
                norm, classifier, ..
            } => {
                $f(LayerName::new(Site::Head, "norm5"), $Layer::BatchNorm(norm));
                if let Some(classifier) = classifier {
                    $f(
                        LayerName::new(Site::Head, "classifier"),
                        $Layer::Linear(classifier),
                    );
                }
            }
        }
    };
}

/// What a model is: its architecture, its plan, and its stages by index, borrowed or
/// mutably. Generated models and [`DynamicModel`](crate::DynamicModel) implement it;
/// every pass over a network (inference, the oracle, training, loading, saving, export)
/// walks it; [`Model`](crate::Model) adds what a model can do, for every `Network`.
pub trait Network: Send + Sync {
    /// The checked architecture.
    fn architecture(&self) -> &Architecture;

    /// Every shape and count, stage by stage and layer by layer.
    fn plan(&self) -> &Plan;

    /// Stage `index` (0: the stem; then blocks and transitions; the head last), in the
    /// order of [`Plan::stages`]; `None` past the head.
    fn stage(&self, index: usize) -> Option<StageRef<'_>>;

    /// [`stage`](Self::stage), mutably: weights and statistics may change, not shapes.
    fn stage_mut(&mut self, index: usize) -> Option<StageMut<'_>>;

    /// Calls `f` on every layer with weights, in network order, with its structural
    /// name: the order of saved files, gradients and optimiser state.
    fn visit_layers(&self, f: &mut dyn FnMut(LayerName, LayerRef<'_>)) {
        for stage in stages(self) {
            visit_stage_layers!(stage, f, StageRef, LayerRef, iter);
        }
    }

    /// [`visit_layers`](Self::visit_layers), mutably, in the same order with the same names.
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(LayerName, LayerMut<'_>)) {
        let mut index = 0;
        while let Some(stage) = self.stage_mut(index) {
            visit_stage_layers!(stage, f, StageMut, LayerMut, iter_mut);
            index += 1;
        }
    }
}

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

impl LayerMut<'_> {
    /// The same layer, borrowed shared.
    pub fn as_ref(&self) -> LayerRef<'_> {
        match self {
            LayerMut::Conv(conv) => LayerRef::Conv(conv),
            LayerMut::BatchNorm(bn) => LayerRef::BatchNorm(bn),
            LayerMut::Linear(linear) => LayerRef::Linear(linear),
        }
    }
}

/// One stage of a network, borrowed: what every pass over a model sees of it.
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

impl StageRef<'_> {
    /// `stem`, `block1`, `transition1`, …, `head`: the generated model's field name.
    pub fn name(&self) -> String {
        match self {
            StageRef::Stem { .. } => "stem".into(),
            StageRef::Block { index, .. } => format!("block{index}"),
            StageRef::Transition { index, .. } => format!("transition{index}"),
            StageRef::Head { .. } => "head".into(),
        }
    }
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

/// One stage of a network, owned: what [`init_stages`] builds, what a
/// [`DynamicModel`](crate::DynamicModel) holds, and what a generated model's typed
/// building blocks are made from.
#[derive(Clone, Debug)]
pub enum Stage {
    /// The stem.
    Stem {
        /// The stem conv.
        conv: Conv2d,
        /// The BatchNorm of an ImageNet stem.
        norm: Option<BatchNorm2d>,
    },
    /// Dense block `index` (1-based).
    Block {
        /// 1-based block index.
        index: usize,
        /// Its layers.
        layers: Vec<DenseLayer>,
    },
    /// Transition `index` (1-based).
    Transition {
        /// 1-based transition index.
        index: usize,
        /// The BatchNorm.
        norm: BatchNorm2d,
        /// The 1x1 conv.
        conv: Conv2d,
    },
    /// The head.
    Head {
        /// The final BatchNorm.
        norm: BatchNorm2d,
        /// The classifier, for a classifier head.
        classifier: Option<Linear>,
        /// Which head.
        head: Head,
    },
}

/// `stage` viewed as `$View` (`StageRef` or `StageMut`), `$as` being `as_ref` or
/// `as_mut`: one body for both borrows.
macro_rules! borrow_stage {
    ($stage:expr, $View:ident, $as:ident) => {
        match $stage {
            Stage::Stem { conv, norm } => $View::Stem {
                conv,
                norm: norm.$as(),
            },
            Stage::Block { index, layers } => $View::Block {
                index: *index,
                layers,
            },
            Stage::Transition { index, norm, conv } => $View::Transition {
                index: *index,
                norm,
                conv,
            },
            Stage::Head {
                norm,
                classifier,
                head,
            } => $View::Head {
                norm,
                classifier: classifier.$as(),
                head: *head,
            },
        }
    };
}

impl Stage {
    /// Borrows the stage.
    pub fn as_ref(&self) -> StageRef<'_> {
        borrow_stage!(self, StageRef, as_ref)
    }

    /// Borrows the stage mutably.
    pub fn as_mut(&mut self) -> StageMut<'_> {
        borrow_stage!(self, StageMut, as_mut)
    }
}

/// The stages of `architecture` (planned as `plan`), initialised deterministically from
/// `rng` in network order: Kaiming-normal convs, BatchNorm γ = 1 and β = 0, linear bias
/// 0. The one initialisation: generated models' `init_with` and
/// [`DynamicModel`](crate::DynamicModel) both call it, so the same seed gives the same
/// weights.
pub fn init_stages(architecture: &Architecture, plan: &Plan, rng: &mut Rng) -> Vec<Stage> {
    let eps = architecture.eps;
    let bn_size = architecture.bottleneck.unwrap_or(0);
    plan.stages()
        .map(|stage| match stage {
            StagePlan::Stem(stem) => Stage::Stem {
                conv: stem_conv(architecture.stem, stem.c_in, stem.c_out, rng),
                norm: (architecture.stem == Stem::ImageNet)
                    .then(|| BatchNorm2d::init(stem.c_out, eps)),
            },
            StagePlan::Block { index, plan } => Stage::Block {
                index,
                layers: (0..plan.layers)
                    .map(|l| {
                        let c_in = plan.c_in + l * architecture.growth;
                        DenseLayer::init(c_in, architecture.growth, bn_size, eps, rng)
                    })
                    .collect(),
            },
            StagePlan::Transition { index, plan } => Stage::Transition {
                index,
                norm: BatchNorm2d::init(plan.c_in, eps),
                conv: Conv2d::init(plan.c_in, plan.c_out, 1, Conv2dConfig::default(), rng),
            },
            StagePlan::Head {
                channels,
                head,
                classes,
            } => Stage::Head {
                norm: BatchNorm2d::init(channels, eps),
                classifier: (head == Head::Classifier)
                    .then(|| Linear::init(channels, classes, rng)),
                head,
            },
        })
        .collect()
}

/// Calls `f` on every layer with weights of one stage, as [`Network::visit_layers`]
/// does for the whole network.
pub fn visit_stage_layers(stage: StageRef<'_>, f: &mut dyn FnMut(LayerName, LayerRef<'_>)) {
    visit_stage_layers!(stage, f, StageRef, LayerRef, iter);
}

/// The stages of `model` in network order.
pub fn stages<M: Network + ?Sized>(model: &M) -> impl Iterator<Item = StageRef<'_>> + Send {
    StageIter { model, next: 0 }
}

/// [`stages`]: `Network::stage(0)`, `stage(1)`, … until `None`.
struct StageIter<'a, M: ?Sized> {
    model: &'a M,
    next: usize,
}

impl<'a, M: Network + ?Sized> Iterator for StageIter<'a, M> {
    type Item = StageRef<'a>;

    fn next(&mut self) -> Option<StageRef<'a>> {
        let stage = self.model.stage(self.next)?;
        self.next += 1;
        Some(stage)
    }
}
