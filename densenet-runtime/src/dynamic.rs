//! A model built at run time from an [`Architecture`], for specs that are only known
//! then (the `densenet` CLI, tools).
//!
//! Not a second implementation: it holds the same layers as a generated model, runs
//! them with the same stage functions (`stem_forward`, `dense_block_forward`,
//! `transition_forward`, `pooled_head_forward`, `feature_map_forward`), initialises
//! them in the same order (so the same seed gives the same weights), and loads weights
//! through the same loader.

use std::path::Path;

use ndarray::{Array2, ArrayD, ArrayView4};

use crate::layers::{
    dense_block_forward, feature_map_forward, pooled_head_forward, stem_conv, stem_forward,
    transition_forward, BatchNorm2d, Conv2d, Conv2dConfig, DenseLayer, Linear,
};
use crate::spec::{Architecture, Head, Plan, Stem};
use crate::visit::{LayerMut, LayerName, LayerRef, StageMut, StageRef};
use crate::weights::{self, Naming};
use crate::{input_to_nhwc, softmax, Error, LoadError, Rng};

/// A DenseNet whose architecture is a run-time value.
#[derive(Clone, Debug)]
pub struct DynamicModel {
    architecture: Architecture,
    stem: (Conv2d, Option<BatchNorm2d>),
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<(BatchNorm2d, Conv2d)>,
    head: (BatchNorm2d, Option<Linear>),
}

impl DynamicModel {
    /// A model of `architecture` (checked, e.g. by `densenet_spec::check`) with the
    /// deterministic initial weights a generated model of it gets from `init(seed)`.
    pub fn init(architecture: Architecture, seed: u64) -> Self {
        let plan = Plan::new(&architecture);
        let arch = &architecture;
        let mut rng = Rng::new(seed);
        let eps = arch.eps;
        let conv = stem_conv(arch.stem, plan.stem.c_in, plan.stem.c_out, &mut rng);
        let norm = (arch.stem == Stem::ImageNet).then(|| BatchNorm2d::init(plan.stem.c_out, eps));
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, block) in plan.blocks.iter().enumerate() {
            let bn_size = arch.bottleneck.unwrap_or(0);
            blocks.push(
                (0..block.layers)
                    .map(|l| {
                        DenseLayer::init(
                            block.c_in + l * arch.growth,
                            arch.growth,
                            bn_size,
                            eps,
                            &mut rng,
                        )
                    })
                    .collect(),
            );
            if let Some(t) = plan.transitions.get(i) {
                let norm = BatchNorm2d::init(t.c_in, eps);
                let conv = Conv2d::init(t.c_in, t.c_out, 1, Conv2dConfig::default(), &mut rng);
                transitions.push((norm, conv));
            }
        }
        let head_norm = BatchNorm2d::init(plan.head_channels, eps);
        let classifier = (arch.head == Head::Classifier)
            .then(|| Linear::init(plan.head_channels, arch.classes, &mut rng));
        DynamicModel {
            architecture,
            stem: (conv, norm),
            blocks,
            transitions,
            head: (head_norm, classifier),
        }
    }

    /// Loads weights (torchvision/timm or Keras naming) into a model of `architecture`.
    ///
    /// # Errors
    /// As generated models' `from_safetensors_bytes_with`.
    pub fn from_safetensors_bytes(
        architecture: Architecture,
        bytes: &[u8],
        naming: Naming,
    ) -> Result<Self, LoadError> {
        let mut model = DynamicModel::init(architecture.clone(), 0);
        weights::load_into(&architecture, &mut model, bytes, naming)?;
        Ok(model)
    }

    /// [`from_safetensors_bytes`](Self::from_safetensors_bytes) from a file.
    ///
    /// # Errors
    /// [`LoadError::Io`] if the file cannot be read, else as `from_safetensors_bytes`.
    pub fn load_safetensors(
        architecture: Architecture,
        path: impl AsRef<Path>,
        naming: Naming,
    ) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_safetensors_bytes(architecture, &bytes, naming)
    }

    /// The architecture.
    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// The stages in network order.
    pub fn stages(&self) -> Vec<StageRef<'_>> {
        let mut stages = vec![StageRef::Stem {
            conv: &self.stem.0,
            norm: self.stem.1.as_ref(),
        }];
        for (i, layers) in self.blocks.iter().enumerate() {
            stages.push(StageRef::Block {
                index: i + 1,
                layers,
            });
            if let Some((norm, conv)) = self.transitions.get(i) {
                stages.push(StageRef::Transition {
                    index: i + 1,
                    norm,
                    conv,
                });
            }
        }
        stages.push(StageRef::Head {
            norm: &self.head.0,
            classifier: self.head.1.as_ref(),
            head: self.architecture.head,
        });
        stages
    }

    /// The stages in network order, mutably.
    pub fn stages_mut(&mut self) -> Vec<StageMut<'_>> {
        let mut stages = vec![StageMut::Stem {
            conv: &mut self.stem.0,
            norm: self.stem.1.as_mut(),
        }];
        let mut transitions = self.transitions.iter_mut();
        for (i, layers) in self.blocks.iter_mut().enumerate() {
            stages.push(StageMut::Block {
                index: i + 1,
                layers,
            });
            if let Some((norm, conv)) = transitions.next() {
                stages.push(StageMut::Transition {
                    index: i + 1,
                    norm,
                    conv,
                });
            }
        }
        stages.push(StageMut::Head {
            norm: &mut self.head.0,
            classifier: self.head.1.as_mut(),
            head: self.architecture.head,
        });
        stages
    }

    /// Calls `f` on every layer with weights, with the names generated models use.
    pub fn visit_layers(&self, f: &mut dyn FnMut(LayerName, LayerRef<'_>)) {
        crate::visit::visit_stage_layers(self.stages(), f);
    }

    /// [`visit_layers`](Self::visit_layers), mutably.
    pub fn visit_layers_mut(&mut self, f: &mut dyn FnMut(LayerName, LayerMut<'_>)) {
        crate::visit::visit_stage_layers_mut(self.stages_mut(), f);
    }

    /// Runs the network on an NCHW batch: `(N, classes)` logits, `(N, C)` pooled
    /// features, or an `(N, C, H, W)` feature map, as the head says.
    ///
    /// # Errors
    /// [`Error::InputShape`] when a per-image shape is not the architecture's input.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, Error> {
        let mut x = input_to_nhwc(x, self.architecture.input)?;
        for stage in self.stages() {
            x = match stage {
                StageRef::Stem { conv, norm } => stem_forward(conv, norm, x.view()),
                StageRef::Block { layers, .. } => dense_block_forward(layers, x.view()),
                StageRef::Transition { norm, conv, .. } => transition_forward(norm, conv, x.view()),
                StageRef::Head {
                    norm,
                    classifier,
                    head,
                } => {
                    return Ok(match head {
                        Head::None => feature_map_forward(norm, x.view()).into_dyn(),
                        _ => pooled_head_forward(norm, classifier, head == Head::Max, x.view())
                            .into_dyn(),
                    });
                }
            };
        }
        unreachable!("stages() always ends with the head")
    }

    /// Softmax probabilities of a classifier; `None` for other heads.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn predict(&self, x: ArrayView4<'_, f32>) -> Result<Option<Array2<f32>>, Error> {
        if self.architecture.head != Head::Classifier {
            return Ok(None);
        }
        let logits = self.forward(x)?;
        let logits = logits
            .into_dimensionality()
            .expect("a classifier head gives (N, classes)");
        Ok(Some(softmax(logits)))
    }
}
