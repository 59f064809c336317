//! Batch normalisation in inference mode, alone or fused with the ReLU that follows it
//! everywhere in DenseNet.

use crate::parallel::prelude::*;
use crate::prelude::*;
use ndarray::{Array1, Array4, ArrayView4, ArrayViewMut1};

use crate::kernels::elementwise::scale_shift_relu;
use crate::Error;

/// Matrices with at least this many elements are processed by rayon's threads.
const PARALLEL_THRESHOLD: usize = 1 << 16;

/// 2-D batch normalisation with frozen statistics (inference mode):
/// `y = (x − running_mean) / √(running_var + eps) · gamma + beta`, per channel of an
/// NHWC tensor, computed as `y = x·scale + shift` (see [`BatchNorm2d::scale_shift`]).
///
/// The `_mut` accessors are for loading trained values; they must not change the
/// length of a parameter (forward panics if the four lengths disagree).
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    gamma: Array1<f32>,
    beta: Array1<f32>,
    running_mean: Array1<f32>,
    running_var: Array1<f32>,
    eps: f32,
}

impl BatchNorm2d {
    /// A batch norm from its scale (`gamma`, torch's `weight`), shift (`beta`, torch's
    /// `bias`), running statistics and `eps` (torch's default is 1e-5).
    ///
    /// # Errors
    ///
    /// [`Error::TensorShape`] if `gamma` is empty, or another parameter's length differs
    /// from `gamma`'s.
    pub fn new(
        gamma: Array1<f32>,
        beta: Array1<f32>,
        running_mean: Array1<f32>,
        running_var: Array1<f32>,
        eps: f32,
    ) -> Result<Self, Error> {
        let channels = gamma.len();
        if channels == 0 {
            return Err(Error::TensorShape {
                name: "batch_norm.weight (at least one channel)".to_owned(),
                expected: vec![1],
                actual: vec![0],
            });
        }
        for (name, p) in [
            ("batch_norm.bias", &beta),
            ("batch_norm.running_mean", &running_mean),
            ("batch_norm.running_var", &running_var),
        ] {
            if p.len() != channels {
                return Err(Error::TensorShape {
                    name: name.to_owned(),
                    expected: vec![channels],
                    actual: vec![p.len()],
                });
            }
        }
        Ok(Self {
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
        })
    }

    /// The identity-initialised batch norm of a fresh torch module: gamma 1, beta 0,
    /// running mean 0, running variance 1.
    ///
    /// # Panics
    ///
    /// If `channels` is 0.
    pub fn init(channels: usize, eps: f32) -> Self {
        if channels == 0 {
            zero_channels();
        }
        Self {
            gamma: Array1::ones(channels),
            beta: Array1::zeros(channels),
            running_mean: Array1::zeros(channels),
            running_var: Array1::ones(channels),
            eps,
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.gamma.len()
    }

    /// The constant added to the variance before the square root.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Per-channel scale (torch's `weight`).
    pub fn gamma(&self) -> &Array1<f32> {
        &self.gamma
    }

    /// Per-channel shift (torch's `bias`).
    pub fn beta(&self) -> &Array1<f32> {
        &self.beta
    }

    /// Per-channel running mean.
    pub fn running_mean(&self) -> &Array1<f32> {
        &self.running_mean
    }

    /// Per-channel running variance.
    pub fn running_var(&self) -> &Array1<f32> {
        &self.running_var
    }

    /// The per-channel scale, mutably: its values, not its length (a view).
    pub fn gamma_mut(&mut self) -> ArrayViewMut1<'_, f32> {
        self.gamma.view_mut()
    }

    /// The per-channel shift, mutably: its values, not its length (a view).
    pub fn beta_mut(&mut self) -> ArrayViewMut1<'_, f32> {
        self.beta.view_mut()
    }

    /// The running mean, mutably: its values, not its length (a view).
    pub fn running_mean_mut(&mut self) -> ArrayViewMut1<'_, f32> {
        self.running_mean.view_mut()
    }

    /// The running variance, mutably: its values, not its length (a view).
    pub fn running_var_mut(&mut self) -> ArrayViewMut1<'_, f32> {
        self.running_var.view_mut()
    }

    /// The per-channel `(scale, shift)` with `y = x·scale + shift`:
    /// `scale = gamma / √(var + eps)`, `shift = beta − mean·scale`, computed in `f64`
    /// and rounded once to `f32`.
    ///
    /// # Panics
    ///
    /// If a `_mut` accessor changed a parameter's length.
    pub fn scale_shift(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.channels();
        if self.beta.len() != c || self.running_mean.len() != c || self.running_var.len() != c {
            resized_parameters(
                c,
                self.beta.len(),
                self.running_mean.len(),
                self.running_var.len(),
            );
        }
        let eps = f64::from(self.eps);
        (0..c)
            .map(|i| {
                let scale = f64::from(self.gamma[i])
                    / crate::math::sqrt(f64::from(self.running_var[i]) + eps);
                let shift = f64::from(self.beta[i]) - f64::from(self.running_mean[i]) * scale;
                (scale as f32, shift as f32)
            })
            .unzip()
    }

    /// NHWC in, NHWC out: the batch norm of every pixel.
    ///
    /// # Panics
    ///
    /// If the input's channel count is not [`BatchNorm2d::channels`].
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array4<f32> {
        self.forward_impl(x, false)
    }

    /// Fused batch norm then ReLU, NHWC in, NHWC out.
    ///
    /// # Panics
    ///
    /// If the input's channel count is not [`BatchNorm2d::channels`].
    pub fn forward_relu(&self, x: ArrayView4<'_, f32>) -> Array4<f32> {
        self.forward_impl(x, true)
    }

    fn forward_impl(&self, x: ArrayView4<'_, f32>, relu: bool) -> Array4<f32> {
        let (n, h, w, c) = x.dim();
        if c != self.channels() {
            channel_mismatch(self.channels(), c);
        }
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout is contiguous");
        let mut out = Array4::zeros((n, h, w, c));
        let out_slice = out.as_slice_mut().expect("a new array is contiguous");
        let (scale, shift) = self.scale_shift();
        apply(x, n * h * w, c, out_slice, &scale, &shift, relu);
        out
    }

    /// Fused batch norm then ReLU over a matrix: `x` holds `rows` pixels, row `r`
    /// starting at `r·row_stride`, of which the first [`BatchNorm2d::channels`] columns
    /// are read (so `x` may be a dense block's wider concatenation buffer). The result is
    /// written contiguous into `out`, `rows × channels`.
    ///
    /// # Panics
    ///
    /// If `row_stride < channels`, `x` is too short for `rows` rows, or
    /// `out.len() != rows·channels`.
    pub fn forward_relu_into(&self, x: &[f32], rows: usize, row_stride: usize, out: &mut [f32]) {
        let c = self.channels();
        let needed = match rows {
            0 => 0,
            _ => (rows - 1) * row_stride + c,
        };
        if row_stride < c || x.len() < needed || out.len() != rows * c {
            matrix_mismatch(c, rows, row_stride, x.len(), out.len());
        }
        let (scale, shift) = self.scale_shift();
        apply(x, rows, row_stride, out, &scale, &shift, true);
    }
}

impl BatchNorm2d {
    /// [`scale_shift`](Self::scale_shift) written into `scale` and `shift` (each
    /// [`channels`](Self::channels) long) instead of two new vectors.
    ///
    /// # Panics
    ///
    /// If either slice is not `channels` long, or a `_mut` accessor changed a
    /// parameter's length.
    pub fn scale_shift_into(&self, scale: &mut [f32], shift: &mut [f32]) {
        let c = self.channels();
        if self.beta.len() != c || self.running_mean.len() != c || self.running_var.len() != c {
            resized_parameters(
                c,
                self.beta.len(),
                self.running_mean.len(),
                self.running_var.len(),
            );
        }
        assert!(
            scale.len() == c && shift.len() == c,
            "BatchNorm2d::scale_shift_into: {c} channels, got slices of {} and {}",
            scale.len(),
            shift.len()
        );
        let eps = f64::from(self.eps);
        for i in 0..c {
            let s =
                f64::from(self.gamma[i]) / crate::math::sqrt(f64::from(self.running_var[i]) + eps);
            let t = f64::from(self.beta[i]) - f64::from(self.running_mean[i]) * s;
            (scale[i], shift[i]) = (s as f32, t as f32);
        }
    }

    /// Fused batch norm then ReLU of the first [`channels`](Self::channels) `c` of every
    /// pixel of an NHWC map `x` (`n·h·w` pixels, pixel `p` at `p·pixel_stride`), written
    /// into `out` as an `(n, h + 2·pad, w + 2·pad, c)` map whose `pad`-wide border is
    /// zero (written here, so `out`'s previous contents do not matter): the input of a
    /// convolution with padding `pad` run as one without padding. Allocation-free:
    /// `params` (at least `2·c` floats) holds the per-channel scale and shift.
    ///
    /// # Panics
    ///
    /// If a slice is too short for the shapes, or `out.len()` is not
    /// `n·(h+2·pad)·(w+2·pad)·c`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_relu_padded_into(
        &self,
        x: &[f32],
        pixel_stride: usize,
        (n, h, w): (usize, usize, usize),
        pad: usize,
        params: &mut [f32],
        out: &mut [f32],
    ) {
        let c = self.channels();
        if params.len() < 2 * c {
            matrix_mismatch(c, n * h * w, pixel_stride, x.len(), out.len());
        }
        let (scale, rest) = params.split_at_mut(c);
        let shift = &mut rest[..c];
        self.scale_shift_into(scale, shift);
        relu_padded_into(x, pixel_stride, (n, h, w), pad, scale, shift, out);
    }
}

/// `relu(x·scale + shift)` of the first `c = scale.len()` channels of every pixel of an
/// NHWC map `x` (`n·h·w` pixels, pixel `p` at `p·pixel_stride`), written into `out` as
/// an `(n, h + 2·pad, w + 2·pad, c)` map with a zero `pad`-wide border (written here):
/// [`BatchNorm2d::forward_relu_padded_into`] with the scale and shift given, e.g. from a
/// training step's batch statistics.
///
/// # Panics
///
/// If `shift` is shorter than `scale`, a slice is too short for the shapes, or
/// `out.len()` is not `n·(h+2·pad)·(w+2·pad)·c`.
pub(crate) fn relu_padded_into(
    x: &[f32],
    pixel_stride: usize,
    (n, h, w): (usize, usize, usize),
    pad: usize,
    scale: &[f32],
    shift: &[f32],
    out: &mut [f32],
) {
    let c = scale.len();
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let pixels = n * h * w;
    let needed = match pixels {
        0 => 0,
        _ => (pixels - 1) * pixel_stride + c,
    };
    if shift.len() < c || pixel_stride < c || x.len() < needed || out.len() != n * hp * wp * c {
        matrix_mismatch(c, pixels, pixel_stride, x.len(), out.len());
    }
    let shift = &shift[..c];
    if out.is_empty() {
        return;
    }
    let row = |(r, dst): (usize, &mut [f32])| {
        let (b, yp) = (r / hp, r % hp);
        if yp < pad || yp >= h + pad {
            dst.fill(0.0);
            return;
        }
        dst[..pad * c].fill(0.0);
        dst[(w + pad) * c..].fill(0.0);
        let first = (b * h + yp - pad) * w;
        for (xx, o) in dst[pad * c..(w + pad) * c].chunks_exact_mut(c).enumerate() {
            let src = &x[(first + xx) * pixel_stride..][..c];
            // As `apply`: keeps NaN and turns -0.0 into 0.0.
            scale_shift_relu(src, scale, shift, o);
        }
    };
    if out.len() >= PARALLEL_THRESHOLD {
        out.par_chunks_mut(wp * c).enumerate().for_each(row);
    } else {
        out.chunks_mut(wp * c).enumerate().for_each(row);
    }
}

/// `out[r][j] = x[r·row_stride + j]·scale[j] + shift[j]` (then ReLU) for every row `r`
/// and channel `j < scale.len()`; `out` is contiguous.
fn apply(
    x: &[f32],
    rows: usize,
    row_stride: usize,
    out: &mut [f32],
    scale: &[f32],
    shift: &[f32],
    relu: bool,
) {
    let c = scale.len();
    if rows == 0 || c == 0 {
        return;
    }
    let row = |(r, dst): (usize, &mut [f32])| {
        let src = &x[r * row_stride..r * row_stride + c];
        if relu {
            // Keeps NaN (like torch's relu) and turns -0.0 into 0.0.
            scale_shift_relu(src, scale, shift, dst);
        } else {
            for (((o, &v), &s), &t) in dst.iter_mut().zip(src).zip(scale).zip(shift) {
                *o = v * s + t;
            }
        }
    };
    if rows * c >= PARALLEL_THRESHOLD {
        // Tasks of at least ~4K elements, so per-row overhead stays small.
        let min_rows = (4096 / c).max(1);
        out.par_chunks_mut(c)
            .enumerate()
            .with_min_len(min_rows)
            .for_each(row);
    } else {
        out.chunks_mut(c).enumerate().for_each(row);
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn zero_channels() -> ! {
    panic!("BatchNorm2d::init: channels must be at least 1");
}

#[cold]
#[inline(never)]
#[track_caller]
fn resized_parameters(gamma: usize, beta: usize, mean: usize, var: usize) -> ! {
    panic!(
        "BatchNorm2d: parameter lengths disagree (gamma {gamma}, beta {beta}, \
         running_mean {mean}, running_var {var}); a _mut accessor changed one"
    );
}

#[cold]
#[inline(never)]
#[track_caller]
fn channel_mismatch(expected: usize, actual: usize) -> ! {
    panic!("BatchNorm2d::forward: input has {actual} channels, the batch norm has {expected}");
}

#[cold]
#[inline(never)]
#[track_caller]
fn matrix_mismatch(c: usize, rows: usize, row_stride: usize, x_len: usize, out_len: usize) -> ! {
    panic!(
        "BatchNorm2d::forward_relu_into: {c} channels, {rows} rows with row stride \
         {row_stride} (must be >= channels) need x of at least (rows-1)·row_stride + \
         channels elements (got {x_len}) and out of rows·channels (got {out_len})"
    );
}

#[cfg(test)]
mod tests {
    //! Golden values from `tools/layer_reference.py` (numpy float64 from the definition,
    //! cross-checked against torch), in NCHW order; `pattern` is the script's
    //! `((i·a) % m − m // 2) / m` over the flat NCHW index.

    use super::*;
    use ndarray::{array, Array};

    fn pattern(len: usize, a: usize, m: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * a % m) as f32 - (m / 2) as f32) / m as f32)
            .collect()
    }

    fn assert_close(actual: impl IntoIterator<Item = f32>, expected: &[f32]) {
        let actual: Vec<f32> = actual.into_iter().collect();
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "element {i}: got {a}, expected {e}"
            );
        }
    }

    fn test_bn() -> BatchNorm2d {
        BatchNorm2d::new(
            array![0.5, -1.25, 2.0],
            array![0.1, 0.0, -0.3],
            array![0.05, -0.2, 0.15],
            array![0.9, 0.04, 2.5],
            1e-5,
        )
        .unwrap()
    }

    /// `pattern((2, 3, 2, 3), 7, 11) * 4` in NCHW, permuted to NHWC.
    fn test_input() -> Array4<f32> {
        let data = pattern(36, 7, 11).into_iter().map(|v| v * 4.0).collect();
        Array::from_shape_vec((2, 3, 2, 3), data)
            .unwrap()
            .permuted_axes([0, 2, 3, 1])
    }

    // x = pattern((2, 3, 2, 3), 7, 11) * 4
    // bn = nn.BatchNorm2d(3, eps=1e-5).eval()  # weight, bias, running_mean, running_var =
    //   [0.5, -1.25, 2.0], [0.1, 0.0, -0.3], [0.05, -0.2, 0.15], [0.9, 0.04, 2.5]
    // y = bn(x)
    const BATCH_NORM: [f32; 36] = [
        -0.88461286,
        0.4569521,
        -0.30965644,
        1.0319085,
        0.26529998,
        -0.50130856,
        -10.339617,
        -1.2498438,
        7.8399296,
        -8.067174,
        1.0225995,
        10.112372,
        0.4301972,
        -1.4096698,
        1.8100975,
        -0.029769545,
        -1.8696365,
        1.3501307,
        0.073647834,
        -0.6929607,
        0.6486042,
        -0.1180043,
        -0.88461286,
        0.4569521,
        3.2950428,
        -12.612061,
        -3.5222871,
        5.5674863,
        -10.339617,
        -1.2498438,
        -2.3296032,
        0.89016396,
        -0.94970304,
        -2.78957,
        0.4301972,
        -1.4096698,
    ];

    // (same x and bn)
    // y = F.relu(bn(x))
    const BATCH_NORM_RELU: [f32; 36] = [
        0.0,
        0.4569521,
        0.0,
        1.0319085,
        0.26529998,
        0.0,
        0.0,
        0.0,
        7.8399296,
        0.0,
        1.0225995,
        10.112372,
        0.4301972,
        0.0,
        1.8100975,
        0.0,
        0.0,
        1.3501307,
        0.073647834,
        0.0,
        0.6486042,
        0.0,
        0.0,
        0.4569521,
        3.2950428,
        0.0,
        0.0,
        5.5674863,
        0.0,
        0.0,
        0.0,
        0.89016396,
        0.0,
        0.0,
        0.4301972,
        0.0,
    ];

    #[test]
    fn forward_matches_torch() {
        let y = test_bn().forward(test_input().view());
        assert_eq!(y.dim(), (2, 2, 3, 3));
        assert_close(y.permuted_axes([0, 3, 1, 2]).iter().copied(), &BATCH_NORM);
    }

    #[test]
    fn forward_relu_matches_torch() {
        let y = test_bn().forward_relu(test_input().view());
        assert_close(
            y.permuted_axes([0, 3, 1, 2]).iter().copied(),
            &BATCH_NORM_RELU,
        );
        assert!(BATCH_NORM_RELU.contains(&0.0) && BATCH_NORM_RELU.iter().any(|&v| v > 0.0));
    }

    #[test]
    fn forward_relu_into_reads_the_first_channels_of_a_wider_matrix() {
        // The 12 pixels of the test input, as the first 3 of 5 columns of a wider buffer.
        let x = test_input().as_standard_layout().into_owned();
        let (rows, width) = (12, 5);
        let mut wide = vec![f32::NAN; rows * width - 2]; // the last row may end early
        for r in 0..rows {
            for ch in 0..3 {
                wide[r * width + ch] = x.as_slice().unwrap()[r * 3 + ch];
            }
        }
        let mut out = vec![f32::NAN; rows * 3];
        test_bn().forward_relu_into(&wide, rows, width, &mut out);
        let y = Array4::from_shape_vec((2, 2, 3, 3), out).unwrap();
        assert_close(
            y.permuted_axes([0, 3, 1, 2]).iter().copied(),
            &BATCH_NORM_RELU,
        );
    }

    #[test]
    fn scale_shift_and_init() {
        let bn = BatchNorm2d::new(array![2.0], array![1.0], array![3.0], array![4.0], 0.0).unwrap();
        assert_eq!(bn.scale_shift(), (vec![1.0], vec![-2.0]));
        let id = BatchNorm2d::init(4, 1e-5);
        assert_eq!((id.channels(), id.eps()), (4, 1e-5));
        let (scale, shift) = id.scale_shift();
        assert!(scale.iter().all(|&s| (s - 1.0).abs() < 1e-5));
        assert!(shift.iter().all(|&t| t == 0.0));
        assert_eq!(id.running_var(), &Array1::<f32>::ones(4));
    }

    #[test]
    fn large_inputs_take_the_parallel_path_with_the_same_result() {
        let c = 32;
        let rows = PARALLEL_THRESHOLD / c + 7;
        let bn = BatchNorm2d::new(
            Array1::from_shape_fn(c, |i| 0.5 + i as f32 * 0.01),
            Array1::from_shape_fn(c, |i| i as f32 * -0.02),
            Array1::from_shape_fn(c, |i| 0.1 * i as f32),
            Array1::from_shape_fn(c, |i| 1.0 + 0.05 * i as f32),
            1e-5,
        )
        .unwrap();
        let x: Vec<f32> = (0..rows * c)
            .map(|i| (i % 97) as f32 / 50.0 - 1.0)
            .collect();
        let mut out = vec![0.0; rows * c];
        bn.forward_relu_into(&x, rows, c, &mut out);
        let (scale, shift) = bn.scale_shift();
        for (i, (&v, &o)) in x.iter().zip(&out).enumerate() {
            let y = (v * scale[i % c] + shift[i % c]).max(0.0);
            assert_eq!(o, y, "element {i}");
        }
    }

    #[test]
    fn new_rejects_mismatched_lengths() {
        let err = BatchNorm2d::new(
            array![1.0, 1.0],
            array![0.0],
            array![0.0, 0.0],
            array![1.0, 1.0],
            1e-5,
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::TensorShape {
                name: "batch_norm.bias".to_owned(),
                expected: vec![2],
                actual: vec![1],
            }
        );
        assert!(BatchNorm2d::new(array![], array![], array![], array![], 1e-5).is_err());
    }
}
