//! Why a dataset could not be built or a model trained.

use std::path::PathBuf;

use thiserror::Error;

use crate::weights::SaveError;
use crate::Error;

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
    /// A [`Freeze`](crate::train::Freeze) that does not fit the model.
    #[error("cannot freeze {model} that way: {reason}")]
    Freeze {
        /// The model's name.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// A run cannot resume from this checkpoint (another model's, another optimiser's,
    /// a plain weights file, or damaged). Nothing has changed.
    #[error("cannot resume from {}: {reason}", path.display())]
    Resume {
        /// The checkpoint.
        path: std::path::PathBuf,
        /// Why not.
        reason: String,
    },
    /// A new run's checkpoint directory already holds another run's checkpoints, which
    /// it would overwrite.
    #[error(
        "{} already holds checkpoints up to epoch {last}: resume that run, or choose another directory",
        dir.display()
    )]
    RunExists {
        /// The directory.
        dir: std::path::PathBuf,
        /// Its latest checkpoint's epoch.
        last: usize,
    },
    /// Settings of `fit` that do not go together.
    #[error("{reason}")]
    Conflict {
        /// What conflicts.
        reason: String,
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
    // Image folders (`image::ImageFolder`): reading the folder and its files.
    /// The image folder (or one of its class folders) could not be read: missing, or
    /// not readable.
    #[error("cannot read image folder {}: {source}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The image folder's path is not a directory.
    #[error("{} is not a directory: an image folder holds one sub-folder per class", path.display())]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// An image folder without class sub-folders.
    #[error("{} has no class folders: put each class's JPEG or PNG images in a sub-folder named after the class", path.display())]
    NoClassFolders {
        /// The folder.
        path: PathBuf,
    },
    /// A class folder without JPEG or PNG images.
    #[error("class folder `{class}` ({}) holds no .jpg, .jpeg or .png images", path.display())]
    EmptyClass {
        /// The class (the folder's name).
        class: String,
        /// The class folder.
        path: PathBuf,
    },
    /// An image file that could not be read or decoded (with the folder's
    /// `Unreadable::Error` setting; `Unreadable::Skip` skips and counts it).
    #[error("unreadable image {}: {reason}", path.display())]
    UnreadableImage {
        /// The file.
        path: PathBuf,
        /// What went wrong (the OS's or the decoder's message).
        reason: String,
    },
    /// An image whose size is not the one required (an image folder's exact-size mode).
    #[error(
        "image {} is {}x{} (height x width), but the folder's images must be exactly {}x{} (exact-size mode; resize them or let the folder resize)",
        path.display(), actual[0], actual[1], expected[0], expected[1]
    )]
    ImageSize {
        /// The file.
        path: PathBuf,
        /// The required `[height, width]`.
        expected: [usize; 2],
        /// The image's `[height, width]`.
        actual: [usize; 2],
    },
}
