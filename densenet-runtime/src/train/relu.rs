//! ReLU backward.

/// `dy[i] ← 0` wherever `y[i] <= 0`: the backward pass of `y = max(x, 0)` given its
/// output `y` (or its input, which is positive at the same places), in place, as
/// torch's `threshold_backward`. The BN-ReLU pairs of a DenseNet use the fused form,
/// [`batch_norm_backward`](crate::train::batch_norm_backward) with `relu`.
///
/// # Panics
///
/// If `y` and `dy` differ in length.
pub fn relu_backward(y: &[f32], dy: &mut [f32]) {
    if y.len() != dy.len() {
        length_mismatch(y.len(), dy.len());
    }
    for (d, &v) in dy.iter_mut().zip(y) {
        if v <= 0.0 {
            *d = 0.0;
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn length_mismatch(y: usize, dy: usize) -> ! {
    panic!("relu_backward: y has {y} elements, dy {dy}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::check::{assert_grad_close, dot, numeric_grad, values};

    #[test]
    fn matches_finite_differences_away_from_zero() {
        // Inputs at least 0.05 from the kink, step 1e-2.
        let x: Vec<f32> = values(40, 5)
            .into_iter()
            .map(|v| if v.abs() < 0.05 { v + 0.1 } else { v })
            .collect();
        let r = values(40, 6);
        let relu = |x: &[f32]| x.iter().map(|v| v.max(0.0)).collect::<Vec<f32>>();
        let mut dx = r.clone();
        relu_backward(&relu(&x), &mut dx);
        let numeric = numeric_grad(&x, 1e-2, |x| dot(&r, &relu(x)));
        assert_grad_close("dx", &dx, &numeric, 1e-4);
        assert!(dx.contains(&0.0) && dx.iter().any(|&d| d != 0.0));
    }

    #[test]
    fn zero_output_passes_no_gradient() {
        let mut dy = [1.0, 2.0, 3.0];
        relu_backward(&[0.0, 1.0, -0.0], &mut dy);
        assert_eq!(dy, [0.0, 2.0, 0.0]);
    }
}
