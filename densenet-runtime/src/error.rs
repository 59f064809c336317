//! The runtime's one error type.

use std::path::PathBuf;

use thiserror::Error;

use crate::weights::Naming;

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

/// Why weights could not be loaded (or saved). Each variant names the tensor or file
/// and what was wrong; a failed load never leaves a half-loaded model behind.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read or written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The bytes are not a safetensors file (bad header length, JSON or UTF-8).
    #[error("not a safetensors file: {reason}")]
    NotSafetensors {
        /// What the parser found.
        reason: String,
    },
    /// The file is shorter (or longer) than its header says.
    #[error("truncated safetensors file: {reason}")]
    Truncated {
        /// What is missing.
        reason: String,
    },
    /// A tensor's data offsets are out of range, overlapping, or disagree with its shape.
    #[error("corrupt safetensors file: tensor `{tensor}` has data offsets that do not fit the file or its shape")]
    BadOffsets {
        /// The tensor, as the file names it.
        tensor: String,
    },
    /// The keys follow neither torchvision nor Keras naming.
    #[error(
        "cannot tell the naming scheme: expected torchvision keys like `features.conv0.weight` \
         or Keras keys like `conv1_conv/kernel`, found e.g. {sample:?}; force one with `Naming`"
    )]
    UnknownNaming {
        /// A few of the file's keys.
        sample: Vec<String>,
    },
    /// A weight the model needs is not in the file.
    #[error("missing tensor `{name}` ({naming} naming){}", close_matches(close))]
    MissingTensor {
        /// The key the model looked for.
        name: String,
        /// The naming scheme in use.
        naming: Naming,
        /// The file's closest keys.
        close: Vec<String>,
    },
    /// The file has a tensor the model has no place for.
    #[error("unexpected tensor `{name}`: the model has no such weight{}", more(*others))]
    UnexpectedTensor {
        /// The key, as the file names it.
        name: String,
        /// How many other unexpected keys there are.
        others: usize,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}`: expected shape {expected:?}, got {actual:?}")]
    Shape {
        /// The key, as the file names it.
        name: String,
        /// The shape the model needs, in the file's layout.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// A tensor's dtype is not F32, F16, BF16 or F64.
    #[error("tensor `{name}` has dtype {dtype}; supported dtypes are F32, F16, BF16 and F64")]
    Dtype {
        /// The key, as the file names it.
        name: String,
        /// The file's dtype.
        dtype: String,
    },
    /// The file holds another architecture (e.g. DenseNet-169 weights for a DenseNet-121).
    #[error(
        "these weights are for another architecture: the file has {file}, {model} has {expected}"
    )]
    ArchitectureMismatch {
        /// The model's name.
        model: String,
        /// What the model has.
        expected: String,
        /// What the file has.
        file: String,
    },
}

fn close_matches(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!("; closest keys in the file: {}", close.join(", "))
    }
}

fn more(others: usize) -> String {
    match others {
        0 => String::new(),
        n => format!(" (and {n} more unexpected tensors)"),
    }
}

/// Why an image could not be turned into a tensor.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read image {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The bytes are not a JPEG or PNG image the decoder accepts.
    #[error("cannot decode image{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Decode {
        /// The file, when decoding one.
        path: Option<PathBuf>,
        /// What the decoder said.
        reason: String,
    },
    /// The preprocessing settings cannot be applied.
    #[error("image preprocessing: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}
