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
//!
//! Without the `std` feature (on by default) the crate is `no_std` + `alloc`: layers,
//! kernels (chosen by compile-time target features there), weights from bytes and
//! `forward_into` with a caller's [`Workspace`] remain; files, threads, training, ONNX
//! and images need `std`.
#![deny(missing_docs)]
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "std")]
mod atomic_file;
// Tests use files and threads whatever the features.
#[cfg(any(feature = "std", test))]
extern crate std;
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
mod math;
mod model;
#[cfg(feature = "std")]
pub mod onnx;
mod parallel;
mod part;
#[cfg(feature = "std")]
pub mod precision;
mod prelude;
pub mod reference;
pub mod rng;
pub mod stage;
mod summary;
#[cfg(feature = "std")]
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
#[cfg(feature = "std")]
pub use train::TrainError;
pub use weights::LoadError;
pub use weights::Naming;
#[cfg(feature = "std")]
pub use weights::SaveError;
pub use workspace::Workspace;

/// Its input with the `std` feature, nothing without: generated models' methods that
/// take paths. Not API.
#[cfg(feature = "std")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_std {
    ($($item:tt)*) => { $($item)* };
}

/// Its input with the `std` feature, nothing without: generated models' methods that
/// take paths. Not API.
#[cfg(not(feature = "std"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_std {
    ($($item:tt)*) => {};
}

/// What generated code calls; not part of the API (no stability promises).
#[doc(hidden)]
pub mod __private {
    pub use crate::blocks::BuildingBlock;
    pub use crate::stage::init_stages;
    pub use alloc::borrow::Cow;

    /// Whether this build has the `std` feature (for tests of `no_std` builds).
    pub const STD: bool = cfg!(feature = "std");
    pub use alloc::vec::Vec;
    #[cfg(feature = "std")]
    pub use std::path::Path;

    /// A generated model's plan, computed on first use: `OnceLock` with `std`; without
    /// it `once_cell::race::OnceBox` (no lock: racing threads may each compute the plan,
    /// one result is kept).
    pub struct PlanCell {
        #[cfg(feature = "std")]
        cell: std::sync::OnceLock<crate::spec::Plan>,
        #[cfg(not(feature = "std"))]
        cell: once_cell::race::OnceBox<crate::spec::Plan>,
    }

    impl PlanCell {
        /// An empty cell.
        #[allow(clippy::new_without_default)]
        pub const fn new() -> Self {
            PlanCell {
                #[cfg(feature = "std")]
                cell: std::sync::OnceLock::new(),
                #[cfg(not(feature = "std"))]
                cell: once_cell::race::OnceBox::new(),
            }
        }

        /// The plan, made by `init` on first use.
        pub fn get_or_init(&self, init: impl FnOnce() -> crate::spec::Plan) -> &crate::spec::Plan {
            #[cfg(feature = "std")]
            return self.cell.get_or_init(init);
            #[cfg(not(feature = "std"))]
            self.cell.get_or_init(|| alloc::boxed::Box::new(init()))
        }
    }

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
    #[cfg(feature = "std")]
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
