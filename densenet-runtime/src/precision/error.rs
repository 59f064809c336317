//! Why a model could not be quantized, run in low precision, or loaded from a
//! low-precision file: [`QuantizeError`].

use thiserror::Error;

use super::Precision;
use crate::kernels::direct_conv::lowp::LowpError;
use crate::train::TrainError;
use crate::weights::LoadError;

/// What went wrong building, running or loading a [`Quantized`](super::Quantized) model.
/// Every variant names what was wrong; none is a string of prose alone.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// int8 calibration was given no images (no batches, or only empty ones).
    #[error("int8 calibration needs at least one image; got none")]
    NoCalibrationImages,
    /// A calibration batch whose per-image shape is not the model's input.
    #[error("calibration batch {batch}: expected (N, {}, {}, {}) (NCHW), got {actual:?}", expected[0], expected[1], expected[2])]
    CalibrationShape {
        /// The batch's index in the caller's list.
        batch: usize,
        /// The model's per-image input `[C, H, W]`.
        expected: [usize; 3],
        /// The batch's shape.
        actual: Vec<usize>,
    },
    /// A calibration image with a NaN or infinite pixel.
    #[error("calibration batch {batch} has a non-finite pixel; calibrate on finite images")]
    NonFiniteCalibration {
        /// The batch's index in the caller's list.
        batch: usize,
    },
    /// A percentile outside `(0, 100]`.
    #[error("the calibration percentile must be in (0, 100]; got {value}")]
    Percentile {
        /// The value given.
        value: f64,
    },
    /// The CPU lacks the precision's instructions and the caller asked for strict
    /// behaviour ([`Quantized::require_kernels`](super::Quantized::require_kernels)).
    #[error("this CPU has no {precision} kernels ({needs}); without `require_kernels` (CLI: without --strict-precision) the model runs the same arithmetic on fp32 kernels")]
    Unsupported {
        /// The precision asked for.
        precision: Precision,
        /// The instructions it needs.
        needs: &'static str,
    },
    /// A convolution weight that cannot be quantized (e.g. a NaN), or that a kernel
    /// refused.
    #[error("convolution `{layer}`: {source}")]
    Kernel {
        /// The convolution's torchvision path.
        layer: String,
        /// What the kernel module said.
        source: LowpError,
    },
    /// Running the model failed (input shape, empty batch, not a classifier, …).
    #[error(transparent)]
    Model(#[from] crate::Error),
    /// The file's fp32 part (BatchNorm, classifier, stem, and the dequantized
    /// convolutions' shapes) does not fit the model: another architecture, a bad file.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The file is not a low-precision file of this runtime: no (or an unknown)
    /// `densenet.precision` entry in its header.
    #[error("not a low-precision model file: header metadata `densenet.precision` is {}; expected `int8` or `bf16`", found.as_deref().map_or("missing".to_string(), |f| format!("`{f}`")))]
    NotLowPrecision {
        /// The entry's value, if there is one.
        found: Option<String>,
    },
    /// A quantized convolution's tensor is missing from the file.
    #[error("missing tensor `{key}` (the model's convolution `{layer}` needs it)")]
    MissingTensor {
        /// The key looked for.
        key: String,
        /// The convolution's torchvision path.
        layer: String,
    },
    /// A tensor under `int8/` that no convolution of the model uses.
    #[error("unexpected tensor `{key}`: the model has no int8 convolution of that name")]
    UnexpectedTensor {
        /// The key.
        key: String,
    },
    /// A quantized tensor of the wrong dtype.
    #[error("tensor `{key}` has dtype {actual}; expected {expected}")]
    Dtype {
        /// The key.
        key: String,
        /// The dtype the layout requires.
        expected: &'static str,
        /// The file's dtype.
        actual: String,
    },
    /// A quantized tensor of the wrong shape.
    #[error("tensor `{key}`: expected shape {expected:?}, got {actual:?}")]
    Shape {
        /// The key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The file's shape.
        actual: Vec<usize>,
    },
    /// A scale in the file that is negative, zero (activation scales), NaN or infinite.
    #[error("tensor `{key}` has the invalid scale {value} at index {index}; scales must be finite and positive")]
    Scale {
        /// The key.
        key: String,
        /// The first bad value's index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A size that overflows `usize` (an absurd batch or tensor).
    #[error("{what} overflows usize; run smaller batches")]
    TooLarge {
        /// Which size.
        what: &'static str,
    },
    /// `evaluate`'s data does not fit the model, or could not be read.
    #[error(transparent)]
    Data(#[from] TrainError),
}
