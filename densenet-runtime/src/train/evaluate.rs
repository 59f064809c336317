//! Inference-mode evaluation of a classifier on labelled images.

use densenet_spec::Head;
use ndarray::{Array2, ArrayView4, Axis, Ix2};
use serde::{Deserialize, Serialize};

use crate::stage::Network;
use crate::train::history::exact;
use crate::train::{softmax_cross_entropy, Source, TrainError};

/// How a model does on a dataset: [`evaluate`]'s result.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean softmax cross-entropy over the images.
    #[serde(with = "exact")]
    pub loss: f32,
    /// `correct / total`.
    #[serde(with = "exact")]
    pub accuracy: f32,
    /// Images whose largest logit (the first, on ties) is their label's.
    pub correct: usize,
    /// Images evaluated.
    pub total: usize,
    /// The `k` of the top-k counts: `min(5, classes)`, the model's classes.
    pub top_k: usize,
    /// Images whose label's logit is among the `top_k` largest ([`in_top_k`]).
    pub top_k_correct: usize,
    /// `top_k_correct / total` (Keras's `sparse_top_k_categorical_accuracy`).
    #[serde(with = "exact")]
    pub top_k_accuracy: f32,
}

/// The `k` of [`Evaluation::top_k`]: top-5, as ImageNet reports, or every class if
/// there are fewer.
const TOP_K: usize = 5;

/// Runs `model` in inference mode (BatchNorm on running statistics, no dropout: the
/// same stage functions as `forward`) over `data` in batches of `batch_size`, and
/// returns the mean cross-entropy, the accuracy and the top-k accuracy (`k = min(5,
/// classes)`).
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
    let top_k = TOP_K.min(model.architecture().classes);
    let (mut loss_sum, mut correct, mut top_k_correct, mut total) = (0.0f64, 0, 0, 0usize);
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
        top_k_correct += count_top_k(&logits, &batch.labels, top_k);
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
        top_k,
        top_k_correct,
        top_k_accuracy: (top_k_correct as f64 / total as f64) as f32,
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

/// How many rows of `logits` have their label [`in_top_k`].
fn count_top_k(logits: &Array2<f32>, labels: &[usize], k: usize) -> usize {
    let logits = logits.as_standard_layout();
    let (values, classes) = (logits.as_slice().unwrap_or_default(), logits.ncols());
    values
        .chunks(classes.max(1))
        .zip(labels)
        .filter(|(row, &label)| in_top_k(row, label, k))
        .count()
}

/// Whether `label` is among the `k` largest of `logits`, as Keras's
/// `sparse_top_k_categorical_accuracy` (`ops.in_top_k`; TensorFlow's `in_top_k`) decides:
/// the label's logit ranks `1 + ` the number of logits strictly greater, and counts if
/// that rank is at most `k`. So on ties every tied class is in the top k (a label tied
/// with the k-th largest counts), where `torch.topk` would keep only some of them; a
/// NaN label logit ranks as −∞, and NaN logits are never greater. A label outside
/// `logits` is never in it.
///
/// ```
/// use densenet_runtime::train::in_top_k;
///
/// let logits = [0.1, 3.0, 2.0, 2.0, -1.0];
/// assert!(in_top_k(&logits, 1, 1));
/// assert!(!in_top_k(&logits, 2, 1));
/// // Classes 2 and 3 tie for second place: both are in the top 2.
/// assert!(in_top_k(&logits, 2, 2) && in_top_k(&logits, 3, 2));
/// ```
pub fn in_top_k(logits: &[f32], label: usize, k: usize) -> bool {
    let Some(&at) = logits.get(label) else {
        return false;
    };
    let at = if at.is_nan() { f32::NEG_INFINITY } else { at };
    logits.iter().filter(|&&v| v > at).count() < k
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

#[cfg(test)]
mod tests {
    use ndarray::ShapeBuilder;

    use super::*;

    // Keras 3.15 (jax backend) on the same logits and labels:
    //   keras.metrics.sparse_top_k_categorical_accuracy(labels, logits, k=k)
    //   k=1: [0, 0, 1, 0, 0, 0, 0]
    //   k=2: [1, 0, 1, 0, 0, 0, 0]
    //   k=5: [1, 0, 1, 1, 0, 0, 0]
    #[test]
    fn top_k_counts_ties_and_nans_as_keras() {
        let logits = Array2::from_shape_vec(
            (7, 7),
            vec![
                0.1,
                3.0,
                2.0,
                2.0,
                -1.0,
                0.5,
                0.0, // label 2, tied for 2nd
                0.1,
                3.0,
                2.0,
                2.0,
                -1.0,
                0.5,
                0.0, // label 6, 6th
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0, // all tied: always in
                5.0,
                4.0,
                3.0,
                2.0,
                1.0,
                0.0,
                -1.0, // label 4, 5th
                5.0,
                4.0,
                3.0,
                2.0,
                1.0,
                0.0,
                -1.0, // label 5, 6th
                f32::NAN,
                4.0,
                3.0,
                2.0,
                1.0,
                0.0,
                -1.0, // NaN label logit: last
                0.0,
                4.0,
                3.0,
                2.0,
                1.0,
                0.5,
                -1.0, // label 0, 6th
            ],
        )
        .unwrap();
        let labels = [2, 6, 6, 4, 5, 0, 0];
        let keras = [
            (1, [0, 0, 1, 0, 0, 0, 0]),
            (2, [1, 0, 1, 0, 0, 0, 0]),
            (5, [1, 0, 1, 1, 0, 0, 0]),
        ];
        for (k, expected) in keras {
            let ours: Vec<usize> = logits
                .rows()
                .into_iter()
                .zip(labels)
                .map(|(row, label)| usize::from(in_top_k(&row.to_vec(), label, k)))
                .collect();
            assert_eq!(ours, expected, "k = {k}");
            let total: usize = expected.iter().sum();
            assert_eq!(count_top_k(&logits, &labels, k), total, "k = {k}");
        }
        // A column-major copy counts the same (rows are not contiguous there).
        let mut column_major = Array2::zeros((7, 7).f());
        column_major.assign(&logits);
        assert!(column_major.as_slice().is_none());
        assert_eq!(count_top_k(&column_major, &labels, 2), 2);
        // Every class: every label is in; a label past the classes never is.
        assert_eq!(count_top_k(&logits, &labels, 7), 7);
        assert!(!in_top_k(&[1.0, 2.0], 2, 5));
    }
}
