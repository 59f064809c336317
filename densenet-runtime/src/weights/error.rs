//! Why weights could not be loaded or saved.

#[cfg(feature = "std")]
use std::path::PathBuf;

use thiserror::Error;

use crate::prelude::*;
use crate::weights::Naming;

/// Why weights could not be loaded (or saved). Each variant names the tensor or file
/// and what was wrong; a failed load never leaves a half-loaded model behind.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The model to load into could not be built (an invalid architecture).
    #[error(transparent)]
    Model(#[from] crate::Error),
    /// The file could not be read or written.
    #[cfg(feature = "std")]
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
    /// A tensor with a NaN or infinite value (also a finite F64 value too large for
    /// f32); a model loaded from it would give NaN logits.
    #[error("tensor `{name}` has a non-finite value at index {index}: {value}")]
    NonFinite {
        /// The key, as the file names it.
        name: String,
        /// The first bad value's index, in the file's layout (row-major).
        index: usize,
        /// The value (after conversion to f32).
        value: f32,
    },
    /// A BatchNorm running variance with a negative value.
    #[error("tensor `{name}` is a running variance but has {value} at index {index}; a variance cannot be negative")]
    NegativeVariance {
        /// The key, as the file names it.
        name: String,
        /// The first negative value's index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A partial load was asked to skip a part the model does not have.
    #[error("{model} has no part `{part}` to skip")]
    NoSuchPart {
        /// The part.
        part: crate::Part,
        /// The model's name.
        model: String,
    },
    /// Two keys of the file name the same weight once older spellings are normalised
    /// (torchvision's `norm.1` and `norm1`, Keras 2's `conv1/conv/kernel:0` and
    /// `conv1_conv/kernel`): which one is meant is ambiguous.
    #[error("tensors `{first}` and `{second}` are both `{key}` (one spelled the older way); a file must have only one")]
    DuplicateTensor {
        /// The key both normalise to.
        key: String,
        /// One of the file's keys (the first in sorted order).
        first: String,
        /// The other.
        second: String,
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

/// Why a model could not be saved or exported. The file is replaced atomically, so on
/// error whatever was at the path is still there.
#[cfg(feature = "std")]
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SaveError {
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

#[cfg(feature = "std")]
impl SaveError {
    /// `source` while writing `path`.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SaveError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
