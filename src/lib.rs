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
//! renamed dependency (`dn = { package = "densenet", … }`, then `dn::densenet!`).
//!
//!
#![doc = include_str!("../docs/SPEC.md")]
//!
//! # What a generated model offers
//! Associated consts `PARAMS`, `BUFFERS`, `MACS`, `INPUT`, `OUTPUT`, `CLASSES`
//! (classifier head) and `ARCHITECTURE`; `layers()`, the per-layer table; `summary()`, a
//! Keras-style table; `init(seed)`; `forward` on NCHW batches and `predict` (softmax).
#![deny(missing_docs)]

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

pub use densenet_runtime as runtime;
pub use densenet_runtime::ndarray;
