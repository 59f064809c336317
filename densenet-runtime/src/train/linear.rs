//! Fully connected layer backward.

use ndarray::{Array1, Array2, ArrayView2};

use super::recycled::{self, Recycled};
use crate::kernels::gemm::{gemm_unpacked, MatMut, MatRef};
use crate::layers::Linear;

/// Gradients of `y = x·Wᵀ + b` given `dy = ∂L/∂y` (`(N, out)`), for the forward input
/// `x` (`(N, in)`): returns `(∂L/∂x, ∂L/∂W, ∂L/∂b)` =
/// `(dy·W, dyᵀ·x, Σ_rows dy)`, shaped `(N, in)`, `(out, in)` (as [`Linear::weight`])
/// and `(out,)`.
///
/// # Panics
///
/// If `x` is not `(N, in_features)` or `dy` not `(N, out_features)`.
pub fn linear_backward(
    linear: &Linear,
    x: ArrayView2<'_, f32>,
    dy: ArrayView2<'_, f32>,
) -> (Array2<f32>, Array2<f32>, Array1<f32>) {
    let (n, in_features) = x.dim();
    let out_features = linear.out_features();
    if in_features != linear.in_features() || dy.dim() != (n, out_features) {
        shape_mismatch(linear, x.dim(), dy.dim());
    }
    let x = x.as_standard_layout();
    let x = MatRef::row_major(x.as_slice().expect("contiguous"), n, in_features);
    let dy_std = dy.as_standard_layout();
    let dy_mat = MatRef::row_major(dy_std.as_slice().expect("contiguous"), n, out_features);
    let weight = linear.weight().as_standard_layout();
    let weight = MatRef::row_major(
        weight.as_slice().expect("contiguous"),
        out_features,
        in_features,
    );

    // From the pool of small vectors: the step gives them back (`Gradients::recycle`).
    let mut dx = recycled::matrix(n, in_features);
    let dx_slice = dx.as_slice_mut().expect("a new array is contiguous");
    gemm_unpacked(
        dy_mat,
        weight,
        MatMut::row_major(dx_slice, n, in_features),
        false,
    );
    let mut dw = recycled::matrix(out_features, in_features);
    let dw_slice = dw.as_slice_mut().expect("a new array is contiguous");
    gemm_unpacked(
        dy_mat.t(),
        x,
        MatMut::row_major(dw_slice, out_features, in_features),
        false,
    );
    let mut db = Recycled::<f32>::zeros(out_features);
    for row in dy.rows() {
        db.iter_mut().zip(row).for_each(|(d, &v)| *d += v);
    }
    let db = Array1::from(db.into_vec());
    (dx, dw, db)
}

#[cold]
#[inline(never)]
#[track_caller]
fn shape_mismatch(linear: &Linear, x: (usize, usize), dy: (usize, usize)) -> ! {
    panic!(
        "linear_backward: the layer maps {} to {} features; got x {x:?} and dy {dy:?}",
        linear.in_features(),
        linear.out_features()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::check::{assert_grad_close, dot, numeric_grad, values};

    #[test]
    fn matches_finite_differences() {
        let (n, i, o) = (3, 5, 4);
        let layer = Linear::new(
            Array2::from_shape_vec((o, i), values(o * i, 1)).unwrap(),
            Array1::from(values(o, 2)),
        )
        .unwrap();
        let x = Array2::from_shape_vec((n, i), values(n * i, 3)).unwrap();
        let r = values(n * o, 4);
        let dy = Array2::from_shape_vec((n, o), r.clone()).unwrap();
        let (dx, dw, db) = linear_backward(&layer, x.view(), dy.view());

        let numeric = numeric_grad(x.as_slice().unwrap(), 1e-2, |xs| {
            let x = ArrayView2::from_shape((n, i), xs).unwrap();
            dot(&r, layer.forward(x).as_slice().unwrap())
        });
        assert_grad_close("dx", dx.as_slice().unwrap(), &numeric, 1e-4);
        let numeric = numeric_grad(layer.weight().as_slice().unwrap(), 1e-2, |ws| {
            let moved = Linear::new(
                Array2::from_shape_vec((o, i), ws.to_vec()).unwrap(),
                layer.bias().clone(),
            )
            .unwrap();
            dot(&r, moved.forward(x.view()).as_slice().unwrap())
        });
        assert_grad_close("dw", dw.as_slice().unwrap(), &numeric, 1e-4);
        let numeric = numeric_grad(layer.bias().as_slice().unwrap(), 1e-2, |bs| {
            let moved = Linear::new(layer.weight().clone(), Array1::from(bs.to_vec())).unwrap();
            dot(&r, moved.forward(x.view()).as_slice().unwrap())
        });
        assert_grad_close("db", db.as_slice().unwrap(), &numeric, 1e-4);
    }

    #[test]
    #[should_panic(expected = "linear_backward")]
    fn wrong_dy_shape_panics() {
        let layer = Linear::new(Array2::zeros((2, 3)), Array1::zeros(2)).unwrap();
        let _ = linear_backward(
            &layer,
            Array2::zeros((1, 3)).view(),
            Array2::zeros((1, 3)).view(),
        );
    }
}
