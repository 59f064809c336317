//! What can go wrong running a model: [`Error`]. Loading, saving, training and
//! images have their own errors, in their modules.

use crate::prelude::*;
use thiserror::Error;

/// What can go wrong when running or building a model.
///
/// Every variant carries structured fields, so callers can match on them and the
/// message names what was wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// An input batch whose per-image shape is not the model's.
    #[error("input shape mismatch: expected (N, {}, {}, {}) (NCHW), got {actual:?}", expected[0], expected[1], expected[2])]
    InputShape {
        /// The model's per-image input shape `[C, H, W]`.
        expected: [usize; 3],
        /// The shape that was passed in.
        actual: Vec<usize>,
    },
    /// A batch of zero images.
    #[error("empty batch: the input has N = 0 images")]
    EmptyBatch,
    /// An output array handed to `forward_into` whose shape is not the model's output
    /// for this batch.
    #[error("output shape mismatch: expected {expected:?}, got {actual:?}")]
    OutputShape {
        /// `[N]` followed by the model's per-image output shape.
        expected: Vec<usize>,
        /// The shape that was passed in.
        actual: Vec<usize>,
    },
    /// A batch whose activations (or output) cannot be allocated: more bytes than memory
    /// or `usize` holds. Split the batch.
    #[error("a batch of {batch} images needs {bytes} bytes of activations, more than can be allocated; run it in smaller batches")]
    BatchTooLarge {
        /// Images in the batch.
        batch: usize,
        /// Bytes the batch would need.
        bytes: u128,
    },
    /// An architecture built in code that breaks a spec rule (e.g. growth 0).
    #[error("{model} is not a valid architecture: {}", problems.join("; "))]
    InvalidArchitecture {
        /// The model's name.
        model: String,
        /// Every rule it breaks, as the spec checker words it.
        problems: Vec<String>,
    },
    /// `predict` on a model whose head is not a classifier (no classes to score).
    #[error("{model} has no classifier head: `predict` needs one (use `forward` for features)")]
    NotAClassifier {
        /// The model's name.
        model: String,
    },
    /// A tensor handed to a layer constructor has the wrong shape.
    #[error("{name}: expected shape {expected:?}, got {actual:?}")]
    TensorShape {
        /// Which tensor (e.g. `conv.weight`).
        name: String,
        /// The shape the layer needs.
        expected: Vec<usize>,
        /// The shape that was given.
        actual: Vec<usize>,
    },
}
