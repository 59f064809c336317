//! Softmax cross-entropy, the classification loss.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// The mean softmax cross-entropy of `(N, classes)` logits against class indices, and
/// its gradient: returns `(L, ∂L/∂logits)` with
/// `L = −(1/N)·Σ_n log softmax(logits_n)[labels_n]` and
/// `∂L/∂logits_n = (softmax(logits_n) − onehot(labels_n)) / N`, torch's
/// `F.cross_entropy` with its default mean reduction. Computed in `f64` (max
/// subtracted, log-sum-exp), rounded once.
///
/// # Panics
///
/// If `labels.len()` is not the number of rows, the batch is empty, or a label is not
/// below the number of classes.
pub fn softmax_cross_entropy(logits: ArrayView2<'_, f32>, labels: &[usize]) -> (f32, Array2<f32>) {
    let mut grad = Array2::zeros(logits.dim());
    let loss = softmax_cross_entropy_into(logits, labels, grad.view_mut());
    (loss, grad)
}

/// [`softmax_cross_entropy`] writing the gradient into `grad` (the logits' shape).
pub(crate) fn softmax_cross_entropy_into(
    logits: ArrayView2<'_, f32>,
    labels: &[usize],
    mut grad: ArrayViewMut2<'_, f32>,
) -> f32 {
    let (n, classes) = logits.dim();
    if labels.len() != n || n == 0 {
        label_count_mismatch(n, labels.len());
    }
    if let Some((i, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
        label_out_of_range(i, label, classes);
    }
    assert_eq!(
        grad.dim(),
        (n, classes),
        "softmax_cross_entropy: gradient shape"
    );
    let mut total = 0.0f64;
    for ((row, mut g), &label) in logits.rows().into_iter().zip(grad.rows_mut()).zip(labels) {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        let log_sum = max + sum.ln();
        total += log_sum - f64::from(row[label]);
        for (j, (gj, &v)) in g.iter_mut().zip(row).enumerate() {
            let p = (f64::from(v) - log_sum).exp();
            let onehot = if j == label { 1.0 } else { 0.0 };
            *gj = ((p - onehot) / n as f64) as f32;
        }
    }
    (total / n as f64) as f32
}

#[cold]
#[inline(never)]
#[track_caller]
fn label_count_mismatch(rows: usize, labels: usize) -> ! {
    panic!("softmax_cross_entropy: {rows} rows of logits but {labels} labels (need one per row, at least one)");
}

#[cold]
#[inline(never)]
#[track_caller]
fn label_out_of_range(i: usize, label: usize, classes: usize) -> ! {
    panic!("softmax_cross_entropy: labels[{i}] = {label} is not below the {classes} classes");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::check::{assert_grad_close, numeric_grad, values};
    use ndarray::array;

    #[test]
    fn matches_torch() {
        // torch: F.cross_entropy(tensor([[1., 2., 3.], [1000., 1000., 1000.]]), tensor([0, 2]))
        // = (2.4076059644 + 1.0986122887) / 2 = 1.7531091265
        let (loss, grad) = softmax_cross_entropy(
            array![[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]].view(),
            &[0, 2],
        );
        assert!((loss - 1.753_109_1).abs() < 1e-6, "{loss}");
        let third = 1.0 / 6.0;
        let expected = array![
            [
                (0.090_030_57 - 1.0) / 2.0,
                0.244_728_47 / 2.0,
                0.665_240_96 / 2.0
            ],
            [third, third, third - 0.5]
        ];
        for (a, e) in grad.iter().zip(&expected) {
            assert!((a - e).abs() < 1e-7, "{a} vs {e}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, classes) = (3, 5);
        let logits = values(n * classes, 8)
            .into_iter()
            .map(|v| 3.0 * v)
            .collect::<Vec<_>>();
        let labels = [4, 0, 2];
        let loss_of = |z: &[f32]| {
            f64::from(
                softmax_cross_entropy(ArrayView2::from_shape((n, classes), z).unwrap(), &labels).0,
            )
        };
        let (_, grad) = softmax_cross_entropy(
            ArrayView2::from_shape((n, classes), &logits).unwrap(),
            &labels,
        );
        let numeric = numeric_grad(&logits, 1e-2, loss_of);
        assert_grad_close("dlogits", grad.as_slice().unwrap(), &numeric, 1e-3);
    }

    #[test]
    #[should_panic(expected = "labels[1] = 3 is not below the 3 classes")]
    fn out_of_range_label_panics() {
        let _ = softmax_cross_entropy(Array2::zeros((2, 3)).view(), &[0, 3]);
    }
}
