//! The runtime that `densenet!`-generated models compile against.
//!
//! Activations flow through the network as NHWC tensors (`Array4<f32>` in standard
//! layout, often viewed as an `(N·H·W) × C` matrix): output pixels become the GEMM's
//! rows, which measured fastest for DenseNet's narrow 3x3 convolutions, and a dense
//! block's concatenation becomes a column range of one preallocated buffer.
//! The public model API (`forward`) takes and returns NCHW, like torchvision.
//!
//! - [`kernels`]: GEMM and im2col, the only `unsafe` code;
//! - [`layers`]: conv, batch norm, pooling, linear, and the building blocks generated
//!   models are made of (stems, dense blocks, transitions, heads);
//! - [`weights`]: safetensors in torchvision/timm or Keras naming;
//! - [`train`]: every layer's backward pass, a whole model's training step, optimisers,
//!   datasets and the `fit` loop;
//! - [`onnx`]: export to a standard ONNX graph (opset 17, dynamic batch) with the weights;
//! - [`Summary`]: the Keras-style table; [`spec`]: the planner it prints.
#![deny(missing_docs)]

mod atomic_file;
mod dynamic;
mod error;
#[cfg(feature = "image")]
pub mod image;
pub mod kernels;
pub mod layers;
mod model;
pub mod onnx;
pub mod rng;
pub mod stage;
mod summary;
pub mod train;
pub mod weights;
mod workspace;

pub use densenet_spec as spec;
pub use dynamic::DynamicModel;
pub use error::{Error, ImageError, LoadError, SaveError, TrainError};
pub use model::{input_to_nhwc, softmax, Model};
pub use ndarray;
pub use rng::Rng;
pub use stage::{LayerMut, LayerName, LayerRef, Site, Stage, StageMut, StageRef};
pub use summary::Summary;
pub use weights::Naming;
pub use workspace::Workspace;

/// What generated code calls; not part of the API (no stability promises).
#[doc(hidden)]
pub mod __private {
    pub use crate::layers::blocks::BuildingBlock;
    pub use crate::stage::init_stages;

    use crate::stage::Stage;
    use crate::{LoadError, Model, Naming};

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
    pub fn loaded<M: Model>(
        init: impl FnOnce(&mut crate::Rng) -> M,
        bytes: &[u8],
        naming: Naming,
    ) -> Result<M, LoadError> {
        let mut model = init(&mut crate::Rng::zeros());
        crate::weights::load_into(&mut model, bytes, naming)?;
        Ok(model)
    }
}
