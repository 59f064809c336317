//! The runtime that `densenet!`-generated models compile against, and that runs models
//! built at run time ([`DynamicModel`]).
//!
//! A model is a [`Network`] (its architecture, plan and stages: stem, dense blocks and
//! transitions, head) and, through that, a [`Model`]: `forward`, `forward_into`,
//! `predict`, `summary`, safetensors and ONNX export, training, all written once here.
//!
//! Activations flow through the network as NHWC tensors (often viewed as an
//! `(N·H·W) × C` matrix): output pixels are the rows of every convolution, which
//! measured fastest for DenseNet's narrow 3x3 convolutions, and a dense block's
//! concatenation is a column range of one preallocated buffer. The public API takes and
//! returns NCHW, like torchvision.
//!
//! - [`stage`]: the network as stages, and [`Network`], the walk every pass uses;
//! - [`layers`]: conv, batch norm, pooling, linear, dense layers, and each stage's fast
//!   forward pass over the [`Workspace`] arena; [`reference`](mod@reference): the plain oracle;
//! - [`blocks`]: the typed building blocks a generated model's fields are made of;
//! - [`weights`]: safetensors in torchvision/timm or Keras naming;
//! - [`onnx`]: export to a standard ONNX graph (opset 17, dynamic batch) with the weights;
//! - [`train`]: every layer's backward pass, a whole model's training step, optimisers,
//!   datasets and the `fit` loop;
//! - [`Summary`]: the Keras-style table; [`spec`]: the planner it prints;
//! - the convolution kernels (direct AVX-512/AVX2, Winograd, GEMM fallback) are
//!   private: the only `unsafe` code, each block with a `// SAFETY:` comment.
#![deny(missing_docs)]

mod atomic_file;
pub mod blocks;
mod dynamic;
mod error;
#[cfg(feature = "image")]
pub mod image;
// The kernels and their process-wide test switches (`force_portable`, …) are not API:
// public only with the `internals` feature, which this workspace's tests and benchmarks
// enable.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod kernels;
#[cfg(not(feature = "internals"))]
#[allow(dead_code)]
mod kernels;
pub mod layers;
mod model;
pub mod onnx;
mod parallel;
mod part;
pub mod reference;
pub mod rng;
pub mod stage;
mod summary;
pub mod train;
pub mod weights;
mod workspace;

pub use densenet_spec as spec;
pub use dynamic::DynamicModel;
pub use error::Error;
#[cfg(feature = "image")]
pub use image::ImageError;
pub use model::{input_to_nhwc, softmax, Model};
pub use ndarray;
pub use part::{ParsePartError, Part};
pub use rng::Rng;
pub use stage::{LayerMut, LayerName, LayerRef, Network, Site, Stage, StageMut, StageRef};
pub use summary::Summary;
pub use train::TrainError;
pub use weights::Naming;
pub use weights::{LoadError, SaveError};
pub use workspace::Workspace;

/// What generated code calls; not part of the API (no stability promises).
#[doc(hidden)]
pub mod __private {
    pub use crate::blocks::BuildingBlock;
    pub use crate::stage::init_stages;

    use crate::stage::Stage;
    use crate::{LoadError, Network};

    /// The next stage of `stages` as the building block `B`.
    ///
    /// # Panics
    /// If the stage is missing or of another shape: the macro generated the struct and
    /// its plan from one architecture, so this is a bug, not bad input.
    pub fn take<B: BuildingBlock>(stages: &mut impl Iterator<Item = Stage>) -> B {
        stages
            .next()
            .and_then(B::from_stage)
            .expect("the planned stages have the generated struct's shapes")
    }

    /// The bytes of the weights file at `path`.
    ///
    /// # Errors
    /// [`LoadError::Io`] naming the file.
    pub fn read(path: &std::path::Path) -> Result<Vec<u8>, LoadError> {
        crate::weights::read_file(path)
    }

    /// A model made by `init` (from a generator that draws zeros: every weight gets
    /// overwritten) with its weights read from safetensors `bytes`.
    ///
    /// # Errors
    /// A [`LoadError`] naming the tensor and what was wrong.
    pub fn loaded<M: Network>(
        init: impl FnOnce(&mut crate::Rng) -> M,
        bytes: &[u8],
        options: impl Into<crate::weights::LoadOptions>,
    ) -> Result<M, LoadError> {
        let mut model = init(&mut crate::Rng::zeros());
        crate::weights::load_into(&mut model, bytes, options.into())?;
        Ok(model)
    }
}
