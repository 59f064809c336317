//! Inverted dropout, deterministic from a [`Rng`].

use ndarray::ArrayViewMut2;

use crate::rng::Rng;

/// Inverted dropout in place: each element of `x` is zeroed with probability `p` and
/// otherwise scaled by `1/(1 − p)`, so the expectation is unchanged and inference needs
/// no rescaling (dropout is off at inference).
///
/// One [`Rng::uniform`] is drawn per element, in row-major order of the view, and the
/// element is kept iff it is `>= p`. The mask is a function of the generator's state
/// alone, so the backward pass (which multiplies the incoming gradient by the same
/// mask and scale) is this very call on the gradient, with a clone of the generator
/// taken before the forward call: masks are regenerated, never stored. `p == 0` is the
/// identity and draws nothing.
///
/// # Panics
///
/// If `p` is not in `[0, 1)`.
pub fn dropout_in_place(mut x: ArrayViewMut2<'_, f32>, p: f32, rng: &mut Rng) {
    if !(0.0..1.0).contains(&p) {
        bad_rate(p);
    }
    if p == 0.0 {
        return;
    }
    let scale = 1.0 / (1.0 - p);
    for mut row in x.rows_mut() {
        for v in row.iter_mut() {
            *v = if rng.uniform() >= p { *v * scale } else { 0.0 };
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn bad_rate(p: f32) -> ! {
    panic!("dropout_in_place: the rate must be in [0, 1); got {p}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::check::{assert_grad_close, dot, numeric_grad, values};
    use ndarray::{s, Array2, ArrayView2};

    #[test]
    fn keeps_about_one_minus_p_and_scales_them() {
        let mut x = Array2::from_elem((100, 100), 1.0f32);
        dropout_in_place(x.view_mut(), 0.2, &mut Rng::new(1));
        let kept = x.iter().filter(|&&v| v != 0.0).count();
        // Binomial(10000, 0.8): sd 40.
        assert!((7800..8200).contains(&kept), "{kept}");
        assert!(x.iter().all(|&v| v == 0.0 || v == 1.25));
    }

    #[test]
    fn zero_rate_is_the_identity_and_draws_nothing() {
        let mut x = Array2::from_elem((3, 3), 2.0f32);
        let mut rng = Rng::new(5);
        dropout_in_place(x.view_mut(), 0.0, &mut rng);
        assert!(x.iter().all(|&v| v == 2.0));
        assert_eq!(rng.next_u64(), Rng::new(5).next_u64());
    }

    #[test]
    fn backward_is_the_same_mask_from_a_cloned_rng_and_matches_finite_differences() {
        let (rows, cols, p) = (6, 7, 0.3);
        let x = values(rows * cols, 1);
        let r = values(rows * cols, 2);
        let rng = Rng::new(9);
        let forward = |x: &[f32]| {
            let mut y = Array2::from_shape_vec((rows, cols), x.to_vec()).unwrap();
            dropout_in_place(y.view_mut(), p, &mut rng.clone());
            y.into_raw_vec_and_offset().0
        };
        let mut grad = Array2::from_shape_vec((rows, cols), r.clone()).unwrap();
        dropout_in_place(grad.view_mut(), p, &mut rng.clone());
        let numeric = numeric_grad(&x, 1e-2, |x| dot(&r, &forward(x)));
        assert_grad_close("dx", grad.as_slice().unwrap(), &numeric, 1e-4);
    }

    #[test]
    fn a_column_range_of_a_wider_buffer_gets_the_mask_of_a_contiguous_matrix() {
        let data = values(4 * 5, 3);
        let mut wide = Array2::from_shape_vec((4, 5), data).unwrap();
        let mut narrow = wide.slice(s![.., 2..]).to_owned();
        dropout_in_place(wide.slice_mut(s![.., 2..]), 0.5, &mut Rng::new(4));
        dropout_in_place(narrow.view_mut(), 0.5, &mut Rng::new(4));
        assert_eq!(wide.slice(s![.., 2..]), narrow);
        let untouched = ArrayView2::from_shape((4, 5), &values(20, 3))
            .unwrap()
            .slice(s![.., ..2])
            .to_owned();
        assert_eq!(wide.slice(s![.., ..2]), untouched);
    }

    #[test]
    #[should_panic(expected = "must be in [0, 1)")]
    fn rate_one_panics() {
        dropout_in_place(Array2::zeros((1, 1)).view_mut(), 1.0, &mut Rng::new(0));
    }
}
