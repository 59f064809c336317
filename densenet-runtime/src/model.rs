//! What every generated model shares at its edges: checking and converting the user's
//! NCHW input, and turning logits into probabilities.

use ndarray::{Array2, Array4, ArrayView4, Axis};

use crate::Error;

/// Checks an NCHW batch against the model's per-image `[C, H, W]` and converts it to
/// the NHWC layout the layers use.
///
/// # Errors
/// [`Error::InputShape`] when the per-image shape differs; [`Error::EmptyBatch`] for N = 0.
pub fn input_to_nhwc(x: ArrayView4<'_, f32>, expected: [usize; 3]) -> Result<Array4<f32>, Error> {
    let (n, c, h, w) = x.dim();
    if [c, h, w] != expected {
        return Err(Error::InputShape {
            expected,
            actual: x.shape().to_vec(),
        });
    }
    if n == 0 {
        return Err(Error::EmptyBatch);
    }
    Ok(x.permuted_axes([0, 2, 3, 1])
        .as_standard_layout()
        .into_owned())
}

/// Row-wise softmax of `(N, classes)` logits, computed stably (max subtracted).
pub fn softmax(mut logits: Array2<f32>) -> Array2<f32> {
    for mut row in logits.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    logits
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array4};

    #[test]
    fn wrong_shape_names_expected_and_actual() {
        let x = Array4::<f32>::zeros((2, 3, 32, 30));
        let err = input_to_nhwc(x.view(), [3, 32, 32]).unwrap_err();
        assert_eq!(
            err,
            Error::InputShape {
                expected: [3, 32, 32],
                actual: vec![2, 3, 32, 30]
            }
        );
        assert!(err.to_string().contains("(N, 3, 32, 32)"), "{err}");
        let empty = Array4::<f32>::zeros((0, 3, 32, 32));
        assert_eq!(
            input_to_nhwc(empty.view(), [3, 32, 32]),
            Err(Error::EmptyBatch)
        );
    }

    #[test]
    fn nchw_becomes_nhwc() {
        // x[n, c, h, w] = 1000n + 100c + 10h + w
        let x = Array4::from_shape_fn((2, 3, 2, 2), |(n, c, h, w)| {
            (1000 * n + 100 * c + 10 * h + w) as f32
        });
        let y = input_to_nhwc(x.view(), [3, 2, 2]).unwrap();
        assert_eq!(y.dim(), (2, 2, 2, 3));
        assert_eq!(y[[1, 0, 1, 2]], 1201.0);
    }

    #[test]
    fn softmax_matches_numpy() {
        // numpy: e = np.exp(x - x.max(1, keepdims=True)); e / e.sum(1, keepdims=True)
        // x = [[1, 2, 3], [1000, 1000, 1000]] -> [[0.09003057, 0.24472847, 0.66524096], [1/3]*3]
        let p = softmax(array![[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]]);
        let expected = array![
            [0.090_030_57, 0.244_728_47, 0.665_240_96],
            [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]
        ];
        for (a, b) in p.iter().zip(expected.iter()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
