//! Inference-mode evaluation of a classifier on labelled images.

use densenet_spec::Head;
use ndarray::{Array2, ArrayView4, Axis, Ix2};

use crate::stage::Network;
use crate::train::{softmax_cross_entropy, Source, TrainError};

/// How a model does on a dataset: [`evaluate`]'s result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean softmax cross-entropy over the images.
    pub loss: f32,
    /// `correct / total`.
    pub accuracy: f32,
    /// Images whose largest logit (the first, on ties) is their label's.
    pub correct: usize,
    /// Images evaluated.
    pub total: usize,
}

/// Runs `model` in inference mode (BatchNorm on running statistics, no dropout: the
/// same stage functions as `forward`) over `data` in batches of `batch_size`, and
/// returns the mean cross-entropy and the accuracy.
///
/// # Errors
///
/// [`TrainError::NoClassifier`]; [`TrainError::ImageShape`] or [`TrainError::Classes`]
/// if `data` does not fit the model; [`TrainError::BatchSize`] for `batch_size` 0.
pub fn evaluate<M: Network + ?Sized, S: Source + ?Sized>(
    model: &M,
    data: &S,
    batch_size: usize,
) -> Result<Evaluation, TrainError> {
    check_fits(model, data)?;
    if batch_size == 0 {
        return Err(TrainError::BatchSize { batch_size, min: 1 });
    }
    let (mut loss_sum, mut correct, mut total) = (0.0f64, 0usize, 0usize);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size) {
        let batch = data.batch(chunk, None)?;
        if batch.is_empty() {
            continue;
        }
        let logits = logits(model, batch.images.view())?;
        let (loss, _) = softmax_cross_entropy(logits.view(), &batch.labels);
        loss_sum += f64::from(loss) * batch.len() as f64;
        correct += count_correct(&logits, &batch.labels);
        total += batch.len();
    }
    if total == 0 {
        return Err(TrainError::EmptyDataset);
    }
    Ok(Evaluation {
        loss: (loss_sum / total as f64) as f32,
        accuracy: (correct as f64 / total as f64) as f32,
        correct,
        total,
    })
}

/// The inference-mode logits `(N, classes)` of an NCHW batch, for any classifier
/// [`Model`](crate::Model), by the path its `forward` takes (stages over a thread-local workspace).
///
/// # Errors
///
/// As `forward` ([`TrainError::Model`] with [`Error::InputShape`](crate::Error::InputShape)
/// or [`Error::EmptyBatch`](crate::Error::EmptyBatch)); [`TrainError::NoClassifier`]
/// for a model without a classifier head.
pub fn logits<M: Network + ?Sized>(
    model: &M,
    x: ArrayView4<'_, f32>,
) -> Result<Array2<f32>, TrainError> {
    let arch = model.architecture();
    if arch.head != Head::Classifier {
        return Err(TrainError::NoClassifier {
            model: arch.name.to_string(),
        });
    }
    let logits = crate::workspace::forward_alloc(model, x)?;
    Ok(logits
        .into_dimensionality::<Ix2>()
        .expect("a classifier head gives (N, classes)"))
}

/// How many rows of `logits` have their largest entry (the first, on ties) at the label.
pub(crate) fn count_correct(logits: &Array2<f32>, labels: &[usize]) -> usize {
    logits
        .axis_iter(Axis(0))
        .zip(labels)
        .filter(|(row, &label)| argmax(row.iter().copied()) == label)
        .count()
}

fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Checks that `data` fits `model`: a classifier with `data`'s image shape and at
/// least its number of classes.
pub(crate) fn check_fits<M: Network + ?Sized, S: Source + ?Sized>(
    model: &M,
    data: &S,
) -> Result<(), TrainError> {
    let arch = model.architecture();
    let model = || arch.name.to_string();
    if arch.head != Head::Classifier {
        return Err(TrainError::NoClassifier { model: model() });
    }
    if data.image_shape() != arch.input {
        return Err(TrainError::ImageShape {
            model: model(),
            expected: arch.input,
            actual: data.image_shape(),
        });
    }
    if data.classes() > arch.classes {
        return Err(TrainError::Classes {
            model: model(),
            classes: arch.classes,
            dataset: data.classes(),
        });
    }
    Ok(())
}
