//! DenseNet-family networks in Rust: declare a model in one line, get a named,
//! statically-shaped struct that runs on the CPU.
//!
//! ```
//! use densenet::densenet;
//! use densenet::ndarray::Array4;
//!
//! densenet! {
//!     /// A small DenseNet-BC for 32x32 images.
//!     pub TinyNet<depth: 22, growth: 8, theta: 0.5, stem: cifar, classes: 10>
//! }
//!
//! // Every shape and count is computed at compile time.
//! assert_eq!(TinyNet::INPUT, [3, 32, 32]);
//! assert_eq!(TinyNet::CLASSES, 10);
//! println!("{}", TinyNet::summary());
//!
//! let model = TinyNet::init(0);
//! let logits = model.forward(Array4::zeros((2, 3, 32, 32)).view()).unwrap();
//! assert_eq!(logits.dim(), (2, 10));
//! ```
//!
//! YAML specs compile the same way, at build time:
//! `densenet::densenet_yaml!("specs/densenet121.yaml");` (the path is relative to your
//! crate's root, and Cargo rebuilds when the file changes). Both macros work under a
//! renamed dependency (`dn = { package = "densenet", … }`, then `dn::densenet!`). A
//! build script can write the same code to a file instead: `densenet_spec::Config`.
//!
//! The sections below: [the spec keys](#spec-keys), [what a generated model
//! offers](#what-a-generated-model-offers), [`Model` and `Network`](#model-and-network),
//! [training](#training), [errors](#errors) and [the rest of the
//! API](#the-rest-of-the-api).
//!
#![doc = include_str!("../docs/SPEC.md")]
//!
//! # What a generated model offers
//!
//! A `densenet!` or `densenet_yaml!` model is a struct whose public fields are its
//! stages, typed by their shapes ([`blocks`]): `stem`, `block1`, `transition1`, …,
//! `blockN`, `head`. Its inherent items take and return arrays of its own shapes:
//!
//! | item | what it is |
//! |---|---|
//! | `ARCHITECTURE` | the checked [`spec::Architecture`]: every key, defaults resolved |
//! | `INPUT`, `OUTPUT` | per-image input `[C, H, W]` and output shape |
//! | `PARAMS`, `BUFFERS`, `MACS` | trainable parameters, BatchNorm running statistics, multiply-accumulates per image |
//! | `CLASSES` | outputs of a classifier head (classifier heads only) |
//! | `ARENA_FLOATS`, `arena_floats(n)` | floats of the activation arena at batch 1 and at batch `n` (a `const fn`) |
//! | `plan()`, `layers()` | every shape and count ([`spec::Plan`]), and the per-layer table with Keras names |
//! | `summary()` | a Keras-style table ([`Summary`]); print it with `{}` |
//! | `init(seed)`, `init_with(&mut rng)` | deterministic initial weights (Kaiming-normal convs, [`Rng`]) |
//! | `forward(x)` | NCHW batch → logits `Array2`, pooled features `Array2` (`head: avg`/`max`) or the feature map `Array4` (`head: none`) |
//! | `forward_into(x, &mut ws, out)` | the same into your output, activations in a [`Workspace`]: no allocation once warm |
//! | `predict(x)` | softmax probabilities (classifier heads only) |
//! | `load_safetensors(path)`, `from_safetensors_bytes(bytes)` | weights in torchvision/timm or Keras naming, detected from the keys ([`weights`]) |
//! | `load_safetensors_with`, `from_safetensors_bytes_with` | the same with the [`Naming`] forced |
//! | `save_safetensors(path)`, `to_safetensors_bytes()` | the weights in torchvision naming, lossless |
//! | `to_onnx(path)` | a standard ONNX graph (opset 17, dynamic batch, weights included; [`onnx`]) |
//!
//! The model also implements [`Network`], so everything of [`Model`] works on it too.
//!
//! ```
//! use densenet::ndarray::{Array2, Array4};
//! use densenet::{densenet, Workspace};
//!
//! densenet!(pub Net<growth: 4, blocks: [2, 2], stem: cifar, input: [3, 8, 8], classes: 3>);
//!
//! assert_eq!(Net::OUTPUT, &[3]);
//! assert_eq!(Net::PARAMS, Net::layers().iter().map(|l| l.params).sum::<u64>());
//!
//! let model = Net::init(0);
//! let x = Array4::from_elem((4, 3, 8, 8), 0.5);
//! let probabilities = model.predict(x.view())?;
//! assert!((probabilities.row(0).sum() - 1.0).abs() < 1e-5);
//!
//! // A serving loop: one workspace, one output, no allocation after the first pass.
//! let mut ws = Workspace::with_capacity(Net::arena_floats(4));
//! let mut logits = Array2::zeros((4, Net::CLASSES));
//! model.forward_into(x.view(), &mut ws, logits.view_mut())?;
//! assert_eq!(logits, model.forward(x.view())?);
//!
//! // Weights round-trip through safetensors, as bytes or files.
//! let copy = Net::from_safetensors_bytes(&model.to_safetensors_bytes())?;
//! assert_eq!(copy.forward(x.view())?, logits);
//! let path = std::env::temp_dir().join(format!("densenet-doc-{}.safetensors", std::process::id()));
//! model.save_safetensors(&path)?;
//! assert_eq!(Net::load_safetensors(&path)?.forward(x.view())?, logits);
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # `Model` and `Network`
//!
//! [`Network`] is what a model *is*: its [`architecture`](Network::architecture), its
//! [`plan`](Network::plan) and its stages ([`stage`](Network::stage),
//! [`stage_mut`](Network::stage_mut)), and every layer with weights by its structural
//! name ([`visit_layers`](Network::visit_layers),
//! [`visit_layers_mut`](Network::visit_layers_mut)). Generated models and
//! [`DynamicModel`] (a model whose architecture is only known at run time, as in the
//! `densenet` command) implement it.
//!
//! [`Model`] is what a model *does*, written once for every `Network`; bring it into
//! scope and call on any model, or on `&dyn Model`:
//! [`forward`](Model::forward) and [`forward_into`](Model::forward_into) (dynamically
//! shaped arrays), [`predict`](Model::predict), [`summary`](Model::summary),
//! [`to_safetensors_bytes`](Model::to_safetensors_bytes),
//! [`save_safetensors`](Model::save_safetensors), [`to_onnx_bytes`](Model::to_onnx_bytes),
//! [`to_onnx`](Model::to_onnx), [`loss_and_gradients`](Model::loss_and_gradients),
//! [`fit`](Model::fit) and [`evaluate`](Model::evaluate).
//!
//! ```
//! use densenet::ndarray::Array4;
//! use densenet::{densenet, DynamicModel, Model, Network};
//!
//! densenet!(pub Net<growth: 4, blocks: [2, 2], stem: cifar, input: [3, 8, 8], classes: 3>);
//!
//! /// Works for any model, generated or built at run time.
//! fn describe(model: &dyn Model) -> String {
//!     let mut layers = 0;
//!     model.visit_layers(&mut |_name, _layer| layers += 1);
//!     format!("{}: {layers} layers with weights", model.architecture().name)
//! }
//!
//! // The same architecture as a run-time value: same layers, same weights per seed.
//! let dynamic = DynamicModel::init(Net::ARCHITECTURE, 0)?;
//! let generated = Net::init(0);
//! assert_eq!(describe(&dynamic), describe(&generated));
//! let x = Array4::from_elem((2, 3, 8, 8), 0.5);
//! assert_eq!(dynamic.forward(x.view())?, generated.forward(x.view())?.into_dyn());
//! let onnx = dynamic.to_onnx_bytes();
//! assert!(!onnx.is_empty());
//! # Ok::<(), densenet::Error>(())
//! ```
//!
//! # Training
//!
//! [`train::fit`] (or [`Model::fit`]) trains any classifier on an in-memory
//! [`train::Dataset`] with the paper's SGD and step schedule, or Adam; one seed fixes
//! the whole run. Bad data or settings are [`TrainError`]s before the first step.
//!
//! ```
//! use densenet::ndarray::Array4;
//! use densenet::train::{Dataset, FitConfig};
//! use densenet::{densenet, Model};
//!
//! densenet!(pub Net<growth: 4, blocks: [2, 2], stem: cifar, input: [1, 8, 8], classes: 2>);
//!
//! // Class 1 images are bright, class 0 dark.
//! let labels: Vec<usize> = (0..16).map(|i| i % 2).collect();
//! let images = Array4::from_shape_fn((16, 1, 8, 8), |(n, ..)| labels[n] as f32 - 0.5);
//! let data = Dataset::new(images, labels, 2)?;
//!
//! let mut model = Net::init(0);
//! let history = model.fit(&data, &FitConfig { epochs: 2, batch_size: 8, ..FitConfig::default() })?;
//! assert_eq!(history.epochs.len(), 2);
//! let evaluation = model.evaluate(&data, 16)?;
//! assert_eq!(evaluation.total, 16);
//! # Ok::<(), densenet::TrainError>(())
//! ```
//!
//! # Errors
//!
//! Each error lives beside what fails and carries structured fields: [`Error`]
//! (running a model: input or output shape, empty batch, `predict` without a
//! classifier), [`LoadError`] (reading weights: the tensor, the expected and actual
//! shape, closest key matches, another architecture), [`SaveError`] (writing a file),
//! [`TrainError`] (data and settings, divergence) and, with the `image` feature,
//! `ImageError` (decoding and preprocessing).
//!
//! ```
//! use densenet::ndarray::Array4;
//! use densenet::{densenet, Error, LoadError};
//!
//! densenet! {
//!     pub Small<growth: 4, blocks: [2, 2], stem: cifar, input: [3, 8, 8], classes: 3>;
//!     pub Wider<growth: 6, blocks: [2, 2], stem: cifar, input: [3, 8, 8], classes: 3>
//! }
//!
//! let err = Small::init(0).forward(Array4::zeros((1, 3, 9, 9)).view()).unwrap_err();
//! assert!(matches!(err, Error::InputShape { expected: [3, 8, 8], .. }));
//!
//! let err = Wider::from_safetensors_bytes(&Small::init(0).to_safetensors_bytes()).unwrap_err();
//! assert!(matches!(err, LoadError::ArchitectureMismatch { .. }), "{err}");
//! ```
//!
//! # The rest of the API
//!
//! - [`train`]: datasets, `fit`/`evaluate`, optimisers, learning-rate schedules (step,
//!   cosine with warmup, reduce-on-plateau), the history as CSV/JSON/PNG, every layer's
//!   backward pass;
//! - [`weights`]: safetensors loading and saving, the naming schemes;
//! - [`onnx`]: ONNX export of any [`Network`];
//! - [`spec`]: the spec language's data ([`spec::Architecture`], [`spec::Plan`]);
//! - `image` (feature `image`): JPEG/PNG decoding and ImageNet preprocessing;
//! - [`blocks`], [`layers`], [`stage`]: the typed building blocks of a generated
//!   model's fields, the layers inside them, the stage views every pass walks;
//!   [`reference`](mod@reference): the plain forward pass the fast one is tested against;
//! - [`ndarray`]: the array crate of every input and output, re-exported so versions
//!   match.
//!
//! Cargo features: `image` (JPEG/PNG decoding and preprocessing, the `image` module);
//! `yaml` (reading spec files at run time: `spec::parse_yaml`, `spec::check`, for
//! [`DynamicModel`]); `progress` (on by default: a progress bar per epoch in `fit`);
//! `parallel` (on by default: rayon's threads in the kernels, layers and training;
//! without it everything runs on the calling thread with the same results, e.g. for
//! WebAssembly in the browser); `plot` (a training history as a PNG chart:
//! `History::save_plot`); `std` (on by default: files, threads, training, ONNX; without
//! it the inference path builds on `core` + `alloc` for bare-metal targets, see the
//! README's "Embedding: no_std").
#![deny(missing_docs)]
#![cfg_attr(not(feature = "std"), no_std)]

// The proc macros, for the wrappers below: generated code reaches the runtime through
// the `$crate` they pass, whatever name the user's crate gives this one.
#[doc(hidden)]
pub use densenet_macros::{densenet as __densenet, densenet_yaml as __densenet_yaml};

/// Declares one or more DenseNet models inline, as named structs.
///
/// ```
/// densenet::densenet! {
///     /// A small DenseNet-BC for 32x32 images.
///     pub TinyNet<depth: 22, growth: 8, theta: 0.5, stem: cifar>;
///     pub(crate) Features<growth: 4, blocks: [2, 2], stem: cifar, head: avg>
/// }
/// assert_eq!(TinyNet::CLASSES, 10);
/// ```
///
/// Each model is `attributes visibility Name<key: value, …>`, separated by `;`; the keys
/// are in the [crate docs](crate#spec-keys). Every mistake is reported at once, at the
/// offending token, and the name still declares a stand-in with the same API, so its
/// uses add no errors of their own.
#[macro_export]
macro_rules! densenet {
    // The proc macro says the same, but its call site is inside this expansion; said
    // here, the error points at the user's call as it did before the wrapper existed.
    () => {
        ::core::compile_error! {
            "unexpected end of input, expected a model, e.g. `pub DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>`"
        }
    };
    ($($spec:tt)+) => {
        $crate::__densenet! { $crate; $($spec)* }
    };
}

/// Declares a DenseNet model from a YAML spec file, read at build time.
///
/// ```
/// densenet::densenet_yaml!("specs/densenet_bc100_k12.yaml");
/// assert_eq!(DenseNetBC100K12::PARAMS, 769_162);
/// ```
///
/// The path is relative to the calling crate's root (`CARGO_MANIFEST_DIR`; absolute
/// paths are rejected), and Cargo rebuilds when the file changes. The model is named by
/// the file's `name` key, or else after the file in UpperCamelCase. Mistakes are
/// reported as `file:line:column` at the path.
///
/// Test harnesses that compile the call in a generated crate elsewhere, such as
/// trybuild, can set the environment variable `DENSENET_MANIFEST_DIR` to the real
/// crate root.
#[macro_export]
macro_rules! densenet_yaml {
    ($($path:tt)*) => {
        $crate::__densenet_yaml! { $crate; $($path)* }
    };
}

// What generated code names (`$crate::runtime`); every item of it is re-exported below.
#[doc(hidden)]
pub use densenet_runtime as runtime;

pub use densenet_runtime::ndarray;

#[doc(inline)]
pub use densenet_runtime::{
    DynamicModel, Error, LayerMut, LayerName, LayerRef, LoadError, Model, Naming, Network, Rng,
    Site, Stage, StageMut, StageRef, Summary, Workspace,
};

#[doc(inline)]
pub use densenet_runtime::{blocks, layers, reference, rng, spec, stage, weights};

#[cfg(feature = "std")]
#[doc(inline)]
pub use densenet_runtime::{onnx, precision, train, SaveError, TrainError};

#[cfg(feature = "image")]
#[doc(inline)]
pub use densenet_runtime::{image, ImageError};

/// The traits every model method comes from, in one import:
/// `use densenet::prelude::*;` gives `forward`, `save_safetensors`, `fit`, … ([`Model`])
/// and `plan`, `architecture`, `visit_layers`, … ([`Network`]) on any model.
pub mod prelude {
    pub use densenet_runtime::{Model, Network};
}
