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
//! # Spec keys
//! | key | meaning | default |
//! |---|---|---|
//! | `growth` | k, channels each dense layer adds | required |
//! | `blocks` | layers per dense block, e.g. `[6, 12, 24, 16]` | one of `blocks`/`depth` |
//! | `depth` | the paper's L for 3-block nets: (L-4)/6 layers per block, (L-4)/3 without bottleneck | |
//! | `theta` | compression in (0, 1]: a transition keeps floor(θ·C) channels | 1.0 |
//! | `bottleneck` | bottleneck width factor (bn_size), or `false` for none | 4 |
//! | `stem` | `imagenet` (7x7/2 conv, BN, ReLU, 3x3/2 max pool) or `cifar` (3x3 conv) | `imagenet` |
//! | `init_features` | stem channels | 2k (16 for a CIFAR stem without BC) |
//! | `input` | per-image `[C, H, W]` | `[3, 224, 224]` (`[3, 32, 32]` for `cifar`) |
//! | `classes` | classifier outputs | 1000 (10 for `cifar`) |
//! | `head` | `classifier`, `avg`, `max` (pooled features) or `none` (feature map) | `classifier` |
//! | `dropout` | rate after each conv but the first, used in training | 0 |
//! | `eps` | BatchNorm epsilon (Keras uses 1.001e-5) | 1e-5 |
//!
//! # What a generated model offers
//! Associated consts `PARAMS`, `BUFFERS`, `MACS`, `INPUT`, `OUTPUT`, `CLASSES`
//! (classifier head) and `ARCHITECTURE`; `layers()`, the per-layer table; `summary()`, a
//! Keras-style table; `init(seed)`; `forward` on NCHW batches and `predict` (softmax).
#![deny(missing_docs)]

pub use densenet_macros::{densenet, densenet_yaml};
pub use densenet_runtime as runtime;
pub use densenet_runtime::ndarray;
