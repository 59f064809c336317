//! A model built at run time from an [`Architecture`], for specs that are only known
//! then (the `densenet` CLI, tools).
//!
//! Not a second implementation: it holds the same layers as a generated model, runs
//! them with the same stage functions (`stem_forward_into`, `dense_block_forward_into`,
//! … through [`crate::forward_into`]), initialises
//! them in the same order (so the same seed gives the same weights), and loads weights
//! through the same loader.

use std::path::Path;

use ndarray::{Array2, ArrayD, ArrayView4, ArrayViewMutD};

use crate::layers::{stem_conv, BatchNorm2d, Conv2d, Conv2dConfig, DenseLayer, Linear};
use crate::spec::{Architecture, Head, Plan, Stem};
use crate::visit::{LayerMut, LayerName, LayerRef, StageMut, StageRef};
use crate::weights::{self, Naming};
use crate::{softmax, Error, LoadError, Rng, Workspace};

/// A DenseNet whose architecture is a run-time value.
#[derive(Clone, Debug)]
pub struct DynamicModel {
    architecture: Architecture,
    plan: Plan,
    stem: (Conv2d, Option<BatchNorm2d>),
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<(BatchNorm2d, Conv2d)>,
    head: (BatchNorm2d, Option<Linear>),
}

impl DynamicModel {
    /// A model of `architecture` (checked, e.g. by `densenet_spec::check`) with the
    /// deterministic initial weights a generated model of it gets from `init(seed)`.
    pub fn init(architecture: Architecture, seed: u64) -> Self {
        Self::init_with(architecture, &mut Rng::new(seed))
    }

    /// [`init`](Self::init) drawing from `rng`.
    pub fn init_with(architecture: Architecture, rng: &mut Rng) -> Self {
        let plan = Plan::new(&architecture);
        let arch = &architecture;
        let eps = arch.eps;
        let conv = stem_conv(arch.stem, plan.stem.c_in, plan.stem.c_out, rng);
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
                            rng,
                        )
                    })
                    .collect(),
            );
            if let Some(t) = plan.transitions.get(i) {
                let norm = BatchNorm2d::init(t.c_in, eps);
                let conv = Conv2d::init(t.c_in, t.c_out, 1, Conv2dConfig::default(), rng);
                transitions.push((norm, conv));
            }
        }
        let head_norm = BatchNorm2d::init(plan.head_channels, eps);
        let classifier = (arch.head == Head::Classifier)
            .then(|| Linear::init(plan.head_channels, arch.classes, rng));
        DynamicModel {
            architecture,
            plan,
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
        // Every weight gets overwritten: skip drawing the initial ones.
        let mut model = DynamicModel::init_with(architecture.clone(), &mut Rng::zeros());
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

    /// The stages in network order, without collecting them (no allocation).
    fn stage_iter(&self) -> impl Iterator<Item = StageRef<'_>> {
        let stem = StageRef::Stem {
            conv: &self.stem.0,
            norm: self.stem.1.as_ref(),
        };
        let blocks = self.blocks.iter().enumerate().flat_map(|(i, layers)| {
            let block = StageRef::Block {
                index: i + 1,
                layers,
            };
            let transition = self
                .transitions
                .get(i)
                .map(|(norm, conv)| StageRef::Transition {
                    index: i + 1,
                    norm,
                    conv,
                });
            std::iter::once(block).chain(transition)
        });
        let head = StageRef::Head {
            norm: &self.head.0,
            classifier: self.head.1.as_ref(),
            head: self.architecture.head,
        };
        std::iter::once(stem)
            .chain(blocks)
            .chain(std::iter::once(head))
    }

    /// The shapes and counts of every layer.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Floats of the activation arena a batch of `batch` needs ([`Plan::arena_floats`]).
    pub fn arena_floats(&self, batch: usize) -> usize {
        self.plan.arena_floats(batch)
    }

    /// Runs the network on an NCHW batch: `(N, classes)` logits, `(N, C)` pooled
    /// features, or an `(N, C, H, W)` feature map, as the head says. Activations live
    /// in this thread's cached [`Workspace`]: only the output is allocated.
    ///
    /// # Errors
    /// [`Error::InputShape`] when a per-image shape is not the architecture's input.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, Error> {
        crate::forward_alloc(self.stage_iter(), &self.plan, x)
    }

    /// [`forward`](Self::forward) into `out` (`[N] ++ plan().output`, any layout) with
    /// every activation in `ws`: no allocation once `ws` has grown to the batch.
    ///
    /// # Errors
    /// [`Error::InputShape`], [`Error::EmptyBatch`], [`Error::OutputShape`].
    pub fn forward_into(
        &self,
        x: ArrayView4<'_, f32>,
        ws: &mut Workspace,
        out: ArrayViewMutD<'_, f32>,
    ) -> Result<(), Error> {
        crate::forward_into(self.stage_iter(), &self.plan, x, ws, out)
    }

    /// The simple allocating stage-by-stage path (the oracle of `forward_into`).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_reference(&self, x: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, Error> {
        crate::forward_reference(self.stage_iter(), self.architecture.input, x)
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
