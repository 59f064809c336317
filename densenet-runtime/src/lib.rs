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

mod dynamic;
mod error;
#[cfg(feature = "image")]
pub mod image;
pub mod kernels;
pub mod layers;
mod model;
pub mod onnx;
pub mod rng;
mod summary;
pub mod train;
mod visit;
pub mod weights;
mod workspace;

pub use densenet_spec as spec;
pub use dynamic::DynamicModel;
pub use error::{Error, ImageError, LoadError, TrainError};
pub use model::{input_to_nhwc, softmax};
pub use ndarray;
pub use rng::Rng;
pub use summary::Summary;
pub use visit::{
    visit_stage_layers, visit_stage_layers_mut, LayerMut, LayerName, LayerRef, Model, Site,
    StageMut, StageRef,
};
pub use weights::Naming;
pub use workspace::{forward_alloc, forward_into, forward_reference, Workspace};
