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
    /// An image larger than the decoder accepts (its header's size is checked before
    /// any pixel is decoded, so a small file claiming a huge image, a decompression
    /// bomb, is refused without the allocation).
    #[error(
        "image{} is {width}x{height} pixels; the limit is {max_side} pixels a side and {max_pixels} pixels in all",
        path_suffix(path)
    )]
    TooLarge {
        /// The file, when decoding one.
        path: Option<PathBuf>,
        /// The image's width.
        width: u32,
        /// The image's height.
        height: u32,
        /// The longest side accepted.
        max_side: u32,
        /// The most pixels accepted.
        max_pixels: u64,
    },
    /// An image whose aspect ratio is so extreme (or `resize` so large) that resizing
    /// its shorter side to `resize` would make an image of more than `limit` pixels.
    #[error(
        "image{} is {width}x{height} pixels: resizing its shorter side to {resize} would make it {resized_width}x{resized_height}, more than the limit of {limit} pixels (aspect ratio too extreme)",
        path_suffix(path)
    )]
    ResizedTooLarge {
        /// The file, when decoding one.
        path: Option<PathBuf>,
        /// The image's width.
        width: u32,
        /// The image's height.
        height: u32,
        /// The configured length of the shorter side after resizing.
        resize: u32,
        /// The width the resize would give.
        resized_width: u64,
        /// The height the resize would give.
        resized_height: u64,
        /// The most pixels a resized image may have.
        limit: u64,
    },
    /// Image data that ends before the image does (the JPEG decoder would fill the
    /// missing part with gray and say nothing).
    #[error(
        "truncated image{}: the {format} data ends before the image does",
        path_suffix(path)
    )]
    Truncated {
        /// The file, when decoding one.
        path: Option<PathBuf>,
        /// The image format (`JPEG`).
        format: String,
    },
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// Why a dataset could not be built or a model could not be trained or evaluated on it
/// ([`train::fit`](crate::train::fit), [`train::evaluate`](crate::train::evaluate),
/// [`train::Dataset`](crate::train::Dataset)). Everything is checked before the first
/// training step: a bad dataset or setting never leaves a half-trained model behind.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A dataset (or a subset, or a batch request) with no images.
    #[error("empty dataset: there are no images")]
    EmptyDataset,
    /// Not one label per image.
    #[error("{labels} labels for {images} images: a dataset needs exactly one label per image")]
    LabelCount {
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label that is not a class index.
    #[error("image {index} has label {label}, but there are only {classes} classes (labels 0..{classes})")]
    LabelOutOfRange {
        /// The image (0-based, in the dataset's order).
        index: usize,
        /// Its label.
        label: usize,
        /// The number of classes (of the dataset or the model, whichever was checked).
        classes: usize,
    },
    /// A dataset declared with zero classes.
    #[error("a dataset needs at least one class; got classes = 0")]
    NoClasses,
    /// An image with a NaN or infinite pixel.
    #[error("image {index} has a NaN or infinite pixel")]
    NonFinite {
        /// The image (0-based, in the dataset's order).
        index: usize,
    },
    /// A subset index past the end of the dataset.
    #[error("index {index} is out of range for a dataset of {len} images")]
    IndexOutOfRange {
        /// The requested image.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// The dataset's images are not the shape the model takes.
    #[error("the dataset's images are {actual:?} (C, H, W), but {model} takes {expected:?}")]
    ImageShape {
        /// The model's name.
        model: String,
        /// The model's per-image input `[C, H, W]`.
        expected: [usize; 3],
        /// The dataset's per-image shape.
        actual: [usize; 3],
    },
    /// The dataset has more classes than the model's classifier.
    #[error("the dataset has {dataset} classes but {model} classifies into {classes}")]
    Classes {
        /// The model's name.
        model: String,
        /// The model's number of classes.
        classes: usize,
        /// The dataset's number of classes.
        dataset: usize,
    },
    /// The model has no classifier head, so there are no logits to train or evaluate.
    #[error("{model} has no classifier head (head: none, avg or max pooling only); training and evaluation need class logits")]
    NoClassifier {
        /// The model's name.
        model: String,
    },
    /// A batch size too small: zero, or one where BatchNorm in training mode would see
    /// a single value per channel (a model whose last feature map is 1x1).
    #[error("batch_size must be at least {min}; got {batch_size}")]
    BatchSize {
        /// The requested batch size.
        batch_size: usize,
        /// The smallest that works.
        min: usize,
    },
    /// Zero epochs requested.
    #[error("epochs must be at least 1; got 0")]
    NoEpochs,
    /// A learning rate that is not a positive finite number.
    #[error("the learning rate must be positive and finite; got {lr}")]
    LearningRate {
        /// The configured learning rate.
        lr: f32,
    },
    /// A dropout rate outside `[0, 1)`.
    #[error("the dropout rate must be in [0, 1); got {rate}")]
    Dropout {
        /// The configured rate.
        rate: f32,
    },
    /// A checkpoint could not be written (or its directory created).
    #[error("checkpoint: {0}")]
    Checkpoint(#[source] SaveError),
    /// The model rejected a batch (not expected once the dataset has been checked).
    #[error(transparent)]
    Model(#[from] Error),
    /// The training loss became NaN or infinite (typically a learning rate too large).
    /// [`fit`](crate::train::fit) stops at that batch, before the optimiser applies its
    /// gradients and before any checkpoint of the diverged weights is written.
    #[error(
        "training diverged: the loss of epoch {epoch}, batch {batch} is {loss}; try a smaller learning rate"
    )]
    Diverged {
        /// The epoch (1-based).
        epoch: usize,
        /// The batch within the epoch (1-based).
        batch: usize,
        /// The non-finite loss.
        loss: f32,
    },
    /// A weight or BatchNorm running statistic became NaN or infinite in a training
    /// step (BatchNorm can keep the loss finite while they overflow). [`fit`](crate::train::fit)
    /// stops after that step, before any evaluation or checkpoint of the weights.
    #[error(
        "training diverged: after epoch {epoch}, batch {batch}, `{tensor}` holds a non-finite value; try a smaller learning rate"
    )]
    NonFiniteWeights {
        /// The epoch (1-based).
        epoch: usize,
        /// The batch within the epoch (1-based).
        batch: usize,
        /// The tensor, by its torchvision key (e.g. `features.conv0.weight`).
        tensor: String,
    },
    /// An optimiser or training-step setting outside its range.
    #[error("{field} must be in {range}; got {value}")]
    Setting {
        /// The setting, e.g. `AdamConfig::betas.1` or `StepConfig::momentum`.
        field: &'static str,
        /// Its value.
        value: f32,
        /// The values it may take, e.g. `[0, 1)`.
        range: &'static str,
    },
}

/// Why a model could not be saved or exported. The file is replaced atomically, so on
/// error whatever was at the path is still there.
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
