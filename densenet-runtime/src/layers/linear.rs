//! Fully connected layer (DenseNet's classifier).

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};

use crate::kernels::gemm::{gemm, MatMut, MatRef};
use crate::prelude::*;
use crate::rng::Rng;
use crate::Error;

/// `y = x·Wᵀ + b`, with the weight `W` stored `(out_features, in_features)` as torch's
/// `nn.Linear`, so trained weights load without a transpose (the product reads `W`
/// through a transposed view).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Array2<f32>,
    bias: Array1<f32>,
}

impl Linear {
    /// A linear layer from its `(out, in)` weight (any memory layout; stored contiguous)
    /// and its `out`-long bias.
    ///
    /// # Errors
    ///
    /// [`Error::TensorShape`] if a weight dimension is 0 or `bias.len()` is not the
    /// weight's number of rows.
    pub fn new(weight: Array2<f32>, bias: Array1<f32>) -> Result<Self, Error> {
        let (out_features, in_features) = weight.dim();
        if out_features == 0 || in_features == 0 {
            return Err(Error::TensorShape {
                name: "linear.weight (every dimension nonzero)".to_owned(),
                expected: vec![out_features.max(1), in_features.max(1)],
                actual: vec![out_features, in_features],
            });
        }
        if bias.len() != out_features {
            return Err(Error::TensorShape {
                name: "linear.bias".to_owned(),
                expected: vec![out_features],
                actual: vec![bias.len()],
            });
        }
        let weight = if weight.is_standard_layout() {
            weight
        } else {
            weight.as_standard_layout().into_owned()
        };
        Ok(Self { weight, bias })
    }

    /// A layer with torch's default weight init, `U(−1/√in, 1/√in)`, drawn from `rng` in
    /// row-major `(out, in)` order, and a zero bias (torchvision's DenseNet zeroes the
    /// classifier's bias).
    ///
    /// # Panics
    ///
    /// If `in_features` or `out_features` is 0.
    pub fn init(in_features: usize, out_features: usize, rng: &mut Rng) -> Self {
        if in_features == 0 || out_features == 0 {
            invalid_init(in_features, out_features);
        }
        let bound = 1.0 / crate::math::sqrtf(in_features as f32);
        let weight = Array2::from_shape_simple_fn((out_features, in_features), || {
            (rng.uniform() * 2.0 - 1.0) * bound
        });
        Self {
            weight,
            bias: Array1::zeros(out_features),
        }
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.ncols()
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.nrows()
    }

    /// The `(out, in)` weight.
    pub fn weight(&self) -> &Array2<f32> {
        &self.weight
    }

    /// The bias, `out` long.
    pub fn bias(&self) -> &Array1<f32> {
        &self.bias
    }

    /// The `(out, in)` weight, mutably: its values, not its shape (a view).
    pub fn weight_mut(&mut self) -> ArrayViewMut2<'_, f32> {
        self.weight.view_mut()
    }

    /// The bias, mutably: its values, not its length (a view).
    pub fn bias_mut(&mut self) -> ArrayViewMut1<'_, f32> {
        self.bias.view_mut()
    }

    /// `out ← x·Wᵀ + b` for a contiguous `n × in_features` matrix `x`, written into the
    /// contiguous `n × out_features` slice `out` (no allocation); the product of
    /// [`forward`](Self::forward), summed in another order.
    ///
    /// # Panics
    ///
    /// If a slice does not fit the shapes, or a `_mut` accessor resized the bias.
    pub fn forward_into(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let (out_features, in_features) = (self.out_features(), self.in_features());
        if self.bias.len() != out_features {
            resized_parameters(out_features, self.bias.len());
        }
        assert!(
            x.len() == n * in_features && out.len() == n * out_features,
            "Linear::forward_into: shapes do not fit the slices"
        );
        // One dot product per output: the classifier is a matrix-vector product per
        // image, memory-bound on the weight, and a plain loop allocates nothing (the
        // GEMM crate allocates per call).
        let weight = self.weight.as_standard_layout();
        let weight = weight.as_slice().expect("contiguous");
        for (x, out) in x
            .chunks_exact(in_features.max(1))
            .zip(out.chunks_exact_mut(out_features.max(1)))
        {
            for ((o, w), &b) in out
                .iter_mut()
                .zip(weight.chunks_exact(in_features.max(1)))
                .zip(&self.bias)
            {
                *o = b + dot(x, w);
            }
        }
    }

    /// `(N, in)` → `(N, out)`: `y = x·Wᵀ + b`, one GEMM reading `W` transposed in place.
    ///
    /// # Panics
    ///
    /// If `x` does not have `in_features` columns, or a `_mut` accessor left the weight
    /// and bias with disagreeing lengths.
    pub fn forward(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let (n, in_features) = x.dim();
        let out_features = self.out_features();
        if in_features != self.in_features() {
            width_mismatch(self.in_features(), in_features);
        }
        if self.bias.len() != out_features {
            resized_parameters(out_features, self.bias.len());
        }
        // Every row starts as the bias, then `y ← 1·x·Wᵀ + 1·y`.
        let mut y = self
            .bias
            .view()
            .insert_axis(Axis(0))
            .broadcast((n, out_features))
            .expect("bias broadcasts to (n, out)")
            .to_owned();
        let x = x.as_standard_layout();
        let weight = self.weight.as_standard_layout();
        gemm(
            1.0,
            MatRef::row_major(x.as_slice().expect("contiguous"), n, in_features),
            MatRef::row_major(
                weight.as_slice().expect("contiguous"),
                out_features,
                in_features,
            )
            .t(),
            1.0,
            MatMut::row_major(
                y.as_slice_mut().expect("a new array is contiguous"),
                n,
                out_features,
            ),
        );
        y
    }
}

/// `Σ x[i]·w[i]` in 16 independent lanes (so it vectorises), then summed.
fn dot(x: &[f32], w: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (xc, wc) = (x.chunks_exact(16), w.chunks_exact(16));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (x, w) in xc.zip(wc) {
        for ((l, &a), &b) in lanes.iter_mut().zip(x).zip(w) {
            *l += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cold]
#[inline(never)]
#[track_caller]
fn invalid_init(in_features: usize, out_features: usize) -> ! {
    panic!("Linear::init: in_features and out_features must be nonzero; got {in_features}, {out_features}");
}

#[cold]
#[inline(never)]
#[track_caller]
fn width_mismatch(expected: usize, actual: usize) -> ! {
    panic!("Linear::forward: input has {actual} features, the layer takes {expected}");
}

#[cold]
#[inline(never)]
#[track_caller]
fn resized_parameters(rows: usize, bias: usize) -> ! {
    panic!(
        "Linear: weight has {rows} rows but bias has {bias} elements; a _mut accessor changed one"
    );
}

#[cfg(test)]
mod tests {
    //! Golden values from `tools/layer_reference.py` (numpy float64, cross-checked
    //! against torch); `pattern` is the script's `((i·a) % m − m // 2) / m`.

    use super::*;
    use ndarray::ShapeBuilder;

    fn pattern(len: usize, a: usize, m: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * a % m) as f32 - (m / 2) as f32) / m as f32)
            .collect()
    }

    // x = pattern((2, 5), 7, 11); w = pattern((3, 5), 5, 13); b = pattern((3,), 3, 7)
    // y = F.linear(x, w, b)
    const LINEAR: [f32; 6] = [
        -0.42157844,
        -0.45454547,
        -0.03296705,
        -0.19780219,
        -0.041958045,
        0.3866134,
    ];

    fn test_layer() -> Linear {
        Linear::new(
            Array2::from_shape_vec((3, 5), pattern(15, 5, 13)).unwrap(),
            Array1::from(pattern(3, 3, 7)),
        )
        .unwrap()
    }

    #[test]
    fn forward_matches_torch() {
        let x = Array2::from_shape_vec((2, 5), pattern(10, 7, 11)).unwrap();
        let y = test_layer().forward(x.view());
        assert_eq!(y.dim(), (2, 3));
        for (i, (a, e)) in y.iter().zip(&LINEAR).enumerate() {
            assert!(
                (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "element {i}: got {a}, expected {e}"
            );
        }
        // A column-major input gives the same result.
        let mut x_f = Array2::zeros((2, 5).f());
        x_f.assign(&x);
        assert!(!x_f.is_standard_layout());
        assert_eq!(test_layer().forward(x_f.view()), y);
    }

    #[test]
    fn init_is_torch_uniform_with_zero_bias() {
        let a = Linear::init(1024, 10, &mut Rng::new(3));
        let b = Linear::init(1024, 10, &mut Rng::new(3));
        assert_eq!(a.weight(), b.weight());
        assert_eq!((a.in_features(), a.out_features()), (1024, 10));
        assert!(a.bias().iter().all(|&v| v == 0.0));
        let bound = 1.0 / 32.0;
        assert!(a.weight().iter().all(|v| v.abs() <= bound));
        let max = a.weight().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            max > 0.99 * bound,
            "samples should fill the range, max {max}"
        );
    }

    #[test]
    fn new_validates_shapes() {
        let err = Linear::new(Array2::zeros((3, 5)), Array1::zeros(4)).unwrap_err();
        assert_eq!(
            err,
            Error::TensorShape {
                name: "linear.bias".to_owned(),
                expected: vec![3],
                actual: vec![4],
            }
        );
        assert!(Linear::new(Array2::zeros((0, 5)), Array1::zeros(0)).is_err());
    }

    #[test]
    fn empty_batch() {
        let y = test_layer().forward(Array2::zeros((0, 5)).view());
        assert_eq!(y.dim(), (0, 3));
    }

    #[test]
    #[should_panic(expected = "input has 4 features, the layer takes 5")]
    fn wrong_width_panics() {
        let _ = test_layer().forward(Array2::zeros((1, 4)).view());
    }
}
