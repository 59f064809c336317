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
//! crate's root, and Cargo rebuilds when the file changes).
//!
#![doc = include_str!("../docs/SPEC.md")]
//!
//! # What a generated model offers
//! Associated consts `PARAMS`, `BUFFERS`, `MACS`, `INPUT`, `OUTPUT`, `CLASSES`
//! (classifier head) and `ARCHITECTURE`; `layers()`, the per-layer table; `summary()`, a
//! Keras-style table; `init(seed)`; `forward` on NCHW batches and `predict` (softmax).
#![deny(missing_docs)]

pub use densenet_macros::{densenet, densenet_yaml};
pub use densenet_runtime as runtime;
pub use densenet_runtime::ndarray;
