//! 2-D convolution without bias, NHWC activations, HWIO weights.
//!
//! The main path is the direct kernel (AVX-512, else AVX2 + FMA, chosen at run time):
//! it takes unpadded windows, so the model's forward passes write their inputs
//! zero-padded and convolve with padding 0. A padded window, or a CPU without those
//! instruction sets, falls back to im2col + GEMM (a 1x1 convolution: one GEMM). The
//! choice is made in one place, `Conv2d::run`.

use ndarray::{Array4, ArrayView4, CowArray, Ix4};

use super::conv_weight::{StoredWeight, WeightMut};
use crate::kernels::direct_conv::{apply_epilogue, direct_conv, ConvShape, Epilogue, ImageLayout};
use crate::kernels::gemm::{MatMut, MatRef};
use crate::kernels::im2col::{im2col, Window};
use crate::prelude::*;
use crate::rng::Rng;
use crate::Error;

/// Largest im2col matrix, in elements, built at once (16 MiB of `f32`). A batch whose
/// im2col matrix is larger is processed a few images at a time, so scratch memory does
/// not grow with the batch: a 3x3 convolution of DenseNet-121's first dense block needs
/// 3136 × 1152 floats (14 MiB) per image, which would be 0.9 GiB at batch 64.
/// One image is always processed whole.
pub(crate) const SCRATCH_LIMIT: usize = 1 << 22;

/// Stride and padding of a [`Conv2d`]; the kernel size comes from the weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Step between output pixels, along both axes; at least 1.
    pub stride: usize,
    /// Zero padding on each of the four sides.
    pub padding: usize,
}

impl Default for Conv2dConfig {
    /// Stride 1, no padding.
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
        }
    }
}

/// A 2-D convolution without bias (DenseNet's convolutions have none).
///
/// The weight is HWIO, `[kh, kw, c_in, c_out]`: the `(kh·kw·c_in) × c_out` right-hand
/// matrix of the convolution's GEMM, whose rows are the output pixels of the NHWC input
/// (im2col's rows, or the direct kernel's tiles). A torch `OIHW` weight `w` becomes HWIO by
/// `w.permuted_axes([2, 3, 1, 0])`.
///
/// It is stored once, in the layout the kernels read: HWIO and contiguous for at most 32
/// outputs; panel-major for more (`PackedWeight`: 32-column panels that the direct kernels stream sequentially). [`Conv2d::weight`]
/// therefore borrows a narrow weight and unpacks a wide one; [`Conv2d::weight_mut`]
/// and [`Conv2d::set_weight`] write either.
///
/// ```
/// use densenet_runtime::layers::{Conv2d, Conv2dConfig};
/// use densenet_runtime::ndarray::{Array4, Axis};
/// use densenet_runtime::Rng;
///
/// // 1x1, 64 → 128 channels: stored as four 32-column panels.
/// let mut conv = Conv2d::init(64, 128, 1, Conv2dConfig::default(), &mut Rng::new(0));
/// assert_eq!(conv.weight_shape(), [1, 1, 64, 128]);
///
/// // Trained values, e.g. torch's OIHW tensor, written in place through a view.
/// let oihw = Array4::from_shape_fn((128, 64, 1, 1), |(o, i, _, _)| (o * 64 + i) as f32);
/// conv.set_weight(oihw.view().permuted_axes([2, 3, 1, 0]))?;
/// assert_eq!(conv.weight()[[0, 0, 3, 2]], (2 * 64 + 3) as f32); // unpacked on request
///
/// // An in-place update: the guard packs the weight again when it drops.
/// conv.weight_mut().view_mut().mapv_inplace(|w| w * 0.5);
/// assert_eq!(conv.weight().index_axis(Axis(3), 2)[[0, 0, 3]], (2 * 64 + 3) as f32 * 0.5);
/// # Ok::<(), densenet_runtime::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: StoredWeight,
    config: Conv2dConfig,
}

impl Conv2d {
    /// A convolution with the given HWIO weight `[kh, kw, c_in, c_out]` (any memory
    /// layout; it is stored contiguous).
    ///
    /// # Errors
    ///
    /// [`Error::TensorShape`] if a weight dimension is 0, or if `config.stride` is 0
    /// (reported as tensor `conv.stride` with expected shape `[1]`, i.e. at least 1).
    pub fn new(weight: Array4<f32>, config: Conv2dConfig) -> Result<Self, Error> {
        if weight.shape().contains(&0) {
            return Err(Error::TensorShape {
                name: "conv.weight (HWIO, every dimension nonzero)".to_owned(),
                expected: weight.shape().iter().map(|&d| d.max(1)).collect(),
                actual: weight.shape().to_vec(),
            });
        }
        if config.stride == 0 {
            return Err(Error::TensorShape {
                name: "conv.stride (must be at least 1)".to_owned(),
                expected: vec![1],
                actual: vec![0],
            });
        }
        Ok(Self {
            weight: StoredWeight::from_hwio(weight),
            config,
        })
    }

    /// A `kernel × kernel` convolution from `c_in` to `c_out` channels with Kaiming-normal
    /// weights in fan-in mode, `N(0, 2 / (c_in·kernel²))`, as torch's
    /// `nn.init.kaiming_normal_` default (which torchvision's DenseNet uses). The weights
    /// are drawn from `rng` in HWIO storage order.
    ///
    /// # Panics
    ///
    /// If `c_in`, `c_out`, `kernel` or `config.stride` is 0 (a caller bug: specs are
    /// checked before any layer is built).
    pub fn init(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        config: Conv2dConfig,
        rng: &mut Rng,
    ) -> Self {
        if c_in == 0 || c_out == 0 || kernel == 0 || config.stride == 0 {
            invalid_init(c_in, c_out, kernel, config);
        }
        let std = crate::math::sqrt(2.0 / (c_in * kernel * kernel) as f64) as f32;
        let shape = [kernel, kernel, c_in, c_out];
        Self {
            weight: StoredWeight::from_fn(shape, || rng.normal() * std),
            config,
        }
    }

    /// The HWIO weight `[kh, kw, c_in, c_out]`: borrowed with at most 32 outputs,
    /// otherwise unpacked into a new array (see the type's docs).
    pub fn weight(&self) -> CowArray<'_, f32, Ix4> {
        self.weight.hwio()
    }

    /// The weight's HWIO shape `[kh, kw, c_in, c_out]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        self.weight.shape()
    }

    /// Mutable access to the HWIO weight, e.g. for an optimiser step: a guard whose
    /// [`view_mut`](WeightMut::view_mut) changes the `[kh, kw, c_in, c_out]` values (never
    /// the shape) and that stores them back, packed if wide, when dropped. To replace
    /// the whole weight, [`Conv2d::set_weight`] saves unpacking the old one.
    pub fn weight_mut(&mut self) -> WeightMut<'_> {
        WeightMut::new(&mut self.weight)
    }

    /// Calls `f(first column, panel)` for the weight's `(kh·kw·c_in) × c_out` matrix as
    /// stored: one panel when HWIO, each 32-column panel when packed (`B` of a product
    /// `im2col(x)·W`, without unpacking).
    #[cfg_attr(not(feature = "std"), allow(dead_code))] // training's
    pub(crate) fn for_each_weight_panel(&self, f: impl FnMut(usize, MatRef<'_>)) {
        self.weight.for_each_panel(f);
    }

    /// Calls `f(offset, run)` on every contiguous run of the weight's values as stored,
    /// `offset` being the run's first index in the HWIO weight (row-major
    /// `[kh, kw, c_in, c_out]`), its next values following it: an elementwise update
    /// (an optimiser step) in place, without unpacking a wide weight as
    /// [`weight_mut`](Self::weight_mut) does.
    #[cfg_attr(not(feature = "std"), allow(dead_code))] // training's
    pub(crate) fn for_each_weight_run_mut(&mut self, f: impl FnMut(usize, &mut [f32])) {
        self.weight.for_each_run_mut(f);
    }

    /// Overwrites the weight with `weight` (HWIO, any memory layout, e.g. torch's OIHW
    /// permuted), in place: e.g. trained values.
    ///
    /// # Errors
    ///
    /// [`Error::TensorShape`] if its shape is not the current one.
    pub fn set_weight(&mut self, weight: ArrayView4<'_, f32>) -> Result<(), Error> {
        let expected = self.weight_shape();
        if weight.shape() != expected {
            return Err(Error::TensorShape {
                name: "conv.weight (HWIO)".to_owned(),
                expected: expected.to_vec(),
                actual: weight.shape().to_vec(),
            });
        }
        self.weight.assign(weight);
        Ok(())
    }

    /// Stride and padding.
    pub fn config(&self) -> Conv2dConfig {
        self.config
    }

    /// Input channels.
    pub fn c_in(&self) -> usize {
        self.weight.shape()[2]
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.weight.shape()[3]
    }

    /// The weight's `(kh·kw·c_in) × c_out` matrix transposed into `dst` (`c_out` rows),
    /// read from the stored layout without unpacking: what an input gradient `dY·Wᵀ`
    /// multiplies by.
    ///
    /// # Panics
    ///
    /// If `dst` is shorter than the weight.
    #[cfg_attr(not(feature = "std"), allow(dead_code))] // training's
    pub(crate) fn weight_transposed_into(&self, dst: &mut [f32]) {
        self.weight.transposed_into(dst);
    }

    /// The stored weight (for the forward paths in `conv_into.rs`).
    pub(super) fn stored_weight(&self) -> &StoredWeight {
        &self.weight
    }

    /// The kernel window (size, stride, padding).
    pub fn window(&self) -> Window {
        Window {
            kernel_h: self.weight.shape()[0],
            kernel_w: self.weight.shape()[1],
            stride: self.config.stride,
            padding: self.config.padding,
        }
    }

    /// Output `(height, width)` for an `h × w` input (torch's floor mode).
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.window().output_size(h, w)
    }

    /// NHWC in, NHWC out: `(n, h, w, c_in)` → `(n, oh, ow, c_out)` (allocates).
    ///
    /// # Panics
    ///
    /// If the input does not have `c_in` channels.
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Array4<f32> {
        let (n, h, w, c) = x.dim();
        if c != self.c_in() {
            channel_mismatch(self.c_in(), c);
        }
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout is contiguous");
        let (oh, ow) = self.output_size(h, w);
        let mut out = Array4::zeros((n, oh, ow, self.c_out()));
        let out_slice = out.as_slice_mut().expect("a new array is contiguous");
        let mut scratch = Vec::new();
        self.forward_into(
            x,
            n,
            h,
            w,
            MatMut::row_major(out_slice, n * oh * ow, self.c_out()),
            &mut scratch,
        );
        out
    }

    /// Writes the convolution of `x` into `out`, an `(n·oh·ow) × c_out` matrix view: for
    /// example a column range of a dense block's concatenation buffer. `out`'s previous
    /// contents are ignored.
    ///
    /// `x` is the contiguous NHWC input of shape `(n, h, w, c_in)`. Without padding the
    /// direct kernel runs when the CPU has one; otherwise a 1x1 convolution with stride 1
    /// multiplies `x` directly and any other builds the im2col matrix in `scratch` (grown
    /// as needed, never shrunk, so reusing one buffer across layers allocates only on the
    /// first, largest use).
    ///
    /// # Panics
    ///
    /// If `x.len() != n·h·w·c_in`, or `out` is not `(n·oh·ow) × c_out`.
    pub fn forward_into(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        out: MatMut<'_>,
        scratch: &mut Vec<f32>,
    ) {
        self.forward_into_chunked(x, n, h, w, out, scratch, SCRATCH_LIMIT);
    }

    /// [`Conv2d::forward_into`] with the im2col matrix limited to about `scratch_limit`
    /// elements per step (at least one image).
    #[allow(clippy::too_many_arguments)]
    fn forward_into_chunked(
        &self,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        out: MatMut<'_>,
        scratch: &mut Vec<f32>,
        scratch_limit: usize,
    ) {
        let win = self.window();
        let epilogue = Epilogue::Store;
        self.run(x, (n, h, w), win, epilogue, out, scratch, scratch_limit);
    }

    /// The one implementation of a convolution's forward pass, with the window given
    /// (the workspace path passes padding 0 for an input it padded itself) and an
    /// epilogue. A window with no padding runs on the direct kernel (AVX-512 or AVX2; it
    /// declines elsewhere); otherwise a 1x1 convolution is one GEMM of `x` and any
    /// other builds im2col matrices in `scratch`, at most `scratch_limit` floats (whole
    /// images, at least one) at a time.
    ///
    /// # Panics
    ///
    /// If `x` is not `n·h·w·c_in` floats, or `out` is not `(n·oh·ow) × c_out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        x: &[f32],
        (n, h, w): (usize, usize, usize),
        win: Window,
        epilogue: Epilogue<'_>,
        mut out: MatMut<'_>,
        scratch: &mut Vec<f32>,
        scratch_limit: usize,
    ) {
        let (c_in, c_out) = (self.c_in(), self.c_out());
        let (oh, ow) = win.output_size(h, w);
        if x.len() != n * h * w * c_in {
            input_length_mismatch(x.len(), n, h, w, c_in);
        }
        if out.rows() != n * oh * ow || out.cols() != c_out {
            output_shape_mismatch(out.rows(), out.cols(), n * oh * ow, c_out);
        }
        let k_len = win.kernel_h * win.kernel_w * c_in;
        let pointwise = win.kernel_h == 1 && win.kernel_w == 1 && win.stride == 1;
        let pixel = out.row_stride();

        if win.padding == 0 && out.col_stride() == 1 {
            let shape = ConvShape {
                n,
                out_h: oh,
                out_w: ow,
                c_in,
                c_out,
                kernel_h: win.kernel_h,
                kernel_w: win.kernel_w,
                stride: win.stride,
            };
            let out_layout = ImageLayout {
                offset: 0,
                image_stride: oh * ow * pixel,
                row_stride: ow * pixel,
                pixel_stride: pixel,
            };
            let input_layout = ImageLayout::dense(h, w, c_in);
            let data = out.data_mut();
            let prologue = Epilogue::Store;
            if direct_conv(
                x,
                input_layout,
                prologue,
                self.weight.kernel_weight(),
                shape,
                epilogue,
                data,
                out_layout,
                true,
            ) {
                return;
            }
        }
        if pointwise && win.padding == 0 {
            let x = MatRef::row_major(x, n * h * w, c_in);
            self.weight.multiply(x, out.rb_mut());
        } else {
            let image_in = h * w * c_in;
            let image_rows = oh * ow;
            let image_scratch = image_rows * k_len;
            let images_per_step = (scratch_limit / image_scratch.max(1)).clamp(1, n.max(1));
            let mut first = 0;
            while first < n {
                let count = images_per_step.min(n - first);
                let len = count * image_scratch;
                if scratch.len() < len {
                    scratch.resize(len, 0.0);
                }
                let cols = &mut scratch[..len];
                let input = &x[first * image_in..(first + count) * image_in];
                im2col(input, count, h, w, c_in, win, cols);
                let rows = count * image_rows;
                let cols = MatRef::row_major(cols, rows, k_len);
                self.weight
                    .multiply(cols, out.subrows_mut(first * image_rows, rows));
                first += count;
            }
        }
        if let Epilogue::ScaleShiftRelu { .. } = epilogue {
            assert_eq!(out.col_stride(), 1, "an epilogue needs unit column stride");
            apply_epilogue(epilogue, out.data_mut(), n * oh * ow, pixel);
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn invalid_init(c_in: usize, c_out: usize, kernel: usize, config: Conv2dConfig) -> ! {
    panic!(
        "Conv2d::init: c_in, c_out, kernel and stride must be nonzero; \
         got c_in={c_in}, c_out={c_out}, kernel={kernel}, stride={}",
        config.stride
    );
}

#[cold]
#[inline(never)]
#[track_caller]
fn channel_mismatch(expected: usize, actual: usize) -> ! {
    panic!("Conv2d::forward: input has {actual} channels, the convolution takes {expected}");
}

#[cold]
#[inline(never)]
#[track_caller]
fn input_length_mismatch(len: usize, n: usize, h: usize, w: usize, c: usize) -> ! {
    panic!(
        "Conv2d::forward_into: input slice has {len} elements, expected n·h·w·c_in = \
         {n}·{h}·{w}·{c} = {}",
        n * h * w * c
    );
}

#[cold]
#[inline(never)]
#[track_caller]
fn output_shape_mismatch(rows: usize, cols: usize, expected_rows: usize, c_out: usize) -> ! {
    panic!(
        "Conv2d::forward_into: output view is {rows}x{cols}, expected \
         (n·oh·ow) x c_out = {expected_rows}x{c_out}"
    );
}

#[cfg(test)]
mod tests {
    //! Golden values from `tools/layer_reference.py` (numpy float64 from the definition,
    //! cross-checked against torch), in NCHW order. Inputs are the script's
    //! `pattern(shape, a, m)[i] = ((i·a) % m − m // 2) / m` in torch's NCHW / OIHW order.

    use super::*;
    use ndarray::Array;

    fn pattern(len: usize, a: usize, m: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * a % m) as f32 - (m / 2) as f32) / m as f32)
            .collect()
    }

    /// An NCHW pattern, permuted to NHWC (a non-contiguous view of the NCHW data).
    fn input_nhwc(shape: (usize, usize, usize, usize), a: usize, m: usize) -> Array4<f32> {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        Array::from_shape_vec(shape, pattern(len, a, m))
            .unwrap()
            .permuted_axes([0, 2, 3, 1])
    }

    /// An OIHW pattern, permuted to HWIO.
    fn weight_hwio(shape: (usize, usize, usize, usize), a: usize, m: usize) -> Array4<f32> {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        Array::from_shape_vec(shape, pattern(len, a, m))
            .unwrap()
            .permuted_axes([2, 3, 1, 0])
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

    /// Compares an NHWC result with golden NCHW values.
    fn assert_close_nchw(actual: &Array4<f32>, expected: &[f32]) {
        assert_close(
            actual.view().permuted_axes([0, 3, 1, 2]).iter().copied(),
            expected,
        );
    }

    fn conv(weight: Array4<f32>, stride: usize, padding: usize) -> Conv2d {
        Conv2d::new(weight, Conv2dConfig { stride, padding }).unwrap()
    }

    // x = pattern((1, 3, 5, 5), 7, 11); w = pattern((4, 3, 3, 3), 5, 13)
    // y = F.conv2d(x, w, stride=1, padding=1)
    const CONV3X3_S1_P1: [f32; 100] = [
        -0.39160842,
        -0.020979023,
        0.23776224,
        0.034965046,
        -0.34965038,
        0.5874126,
        0.13286713,
        0.30069932,
        0.08391608,
        -0.20979021,
        0.30769232,
        -0.33566436,
        -0.013986018,
        -6.7732553e-10,
        0.5734266,
        -0.2797203,
        0.5034965,
        0.13286713,
        0.30069932,
        0.2027972,
        -0.2937063,
        -0.16083917,
        -0.11888112,
        -0.15384616,
        -0.23076925,
        0.2937063,
        -0.39160842,
        -0.39160842,
        0.3776224,
        -0.13286713,
        -0.16083917,
        0.7972028,
        -0.944056,
        0.54545456,
        0.11188812,
        -0.3776224,
        0.4755245,
        -0.49650353,
        -0.39160842,
        0.13986014,
        -0.13286714,
        -0.15384616,
        0.7972028,
        -0.944056,
        0.3986014,
        0.3776224,
        -0.30769232,
        0.06993008,
        -0.24475525,
        -0.13986015,
        0.16083917,
        0.23776224,
        -0.020979023,
        -0.27972028,
        0.2657343,
        -0.09090909,
        0.006993,
        0.35664338,
        -0.44755247,
        0.5244756,
        -0.24475525,
        -0.16783217,
        0.5664336,
        -0.23776224,
        -0.3846154,
        -0.16783218,
        -0.2657343,
        0.006993,
        0.35664338,
        -0.6783217,
        0.13986014,
        0.09090909,
        -0.19580421,
        0.20979021,
        -0.048951052,
        -0.5174825,
        0.41258743,
        -0.3776224,
        0.062937066,
        -0.15384616,
        -0.3846154,
        -0.23776224,
        0.5664336,
        -0.16783217,
        -0.24475525,
        0.5244756,
        -0.44755247,
        0.35664338,
        0.006993,
        -0.09090909,
        0.43356645,
        -0.19580421,
        -0.23776224,
        0.5664336,
        0.06293707,
        -0.097902104,
        0.3986014,
        -0.1888112,
        0.30069932,
        0.22377624,
    ];

    #[test]
    fn conv3x3_stride1_pad1_matches_torch() {
        let conv = conv(weight_hwio((4, 3, 3, 3), 5, 13), 1, 1);
        let y = conv.forward(input_nhwc((1, 3, 5, 5), 7, 11).view());
        assert_eq!(y.dim(), (1, 5, 5, 4));
        assert_close_nchw(&y, &CONV3X3_S1_P1);
    }

    // x = pattern((1, 3, 9, 9), 7, 11); w = pattern((4, 3, 7, 7), 5, 13)
    // y = F.conv2d(x, w, stride=2, padding=3)
    const CONV7X7_S2_P3: [f32; 100] = [
        0.09090909,
        -0.24475524,
        0.2867133,
        0.0069929995,
        -0.104895115,
        -0.54545456,
        0.6293706,
        0.71328676,
        0.020979034,
        -0.23776223,
        0.2937063,
        -0.3146853,
        -1.1468532,
        0.6853147,
        0.6013986,
        -0.3846154,
        0.41958043,
        0.118881114,
        0.048951052,
        -0.54545456,
        0.62237763,
        -0.73426574,
        -0.22377622,
        -0.16083917,
        0.027972018,
        0.5734266,
        -0.07692309,
        -0.11888112,
        0.23776226,
        0.3146853,
        -0.44755244,
        -0.27972028,
        0.3146853,
        -0.60839164,
        -0.090909086,
        0.5734266,
        -0.06993008,
        -0.4125874,
        -0.041958034,
        -0.15384617,
        -0.23776223,
        -0.05594405,
        0.30769232,
        0.13286713,
        -0.25174826,
        0.7622378,
        0.055944048,
        0.16783218,
        -0.3916084,
        0.3846154,
        0.8741259,
        0.36363634,
        0.5664336,
        -1.0769231,
        -0.17482518,
        -0.71328676,
        -0.27972028,
        0.1888112,
        0.7622378,
        0.5104895,
        0.85314685,
        0.90209794,
        -0.31468534,
        -0.041958027,
        -0.36363637,
        -0.090909086,
        -0.986014,
        0.4055944,
        0.7622378,
        0.22377622,
        -0.1888112,
        -0.06293707,
        0.4685315,
        -1.0769231,
        0.104895115,
        -0.27972028,
        0.25874126,
        0.61538464,
        -0.3916084,
        -0.02797201,
        -0.16083916,
        -0.27972028,
        -1.0279721,
        0.13286713,
        0.4755245,
        -0.32167834,
        0.3286713,
        0.14685315,
        -0.041958034,
        -0.937063,
        0.5104895,
        -0.46153846,
        -0.3146853,
        -0.60839164,
        0.60839164,
        0.31468534,
        0.36363637,
        0.13286713,
        0.23776226,
        0.09790212,
    ];

    #[test]
    fn conv7x7_stride2_pad3_matches_torch() {
        let conv = conv(weight_hwio((4, 3, 7, 7), 5, 13), 2, 3);
        assert_eq!(conv.output_size(9, 9), (5, 5));
        let y = conv.forward(input_nhwc((1, 3, 9, 9), 7, 11).view());
        assert_eq!(y.dim(), (1, 5, 5, 4));
        assert_close_nchw(&y, &CONV7X7_S2_P3);
    }

    // x = pattern((2, 5, 3, 3), 7, 11); w = pattern((3, 5, 1, 1), 5, 13)
    // y = F.conv2d(x, w, stride=1, padding=0)
    const CONV1X1: [f32; 54] = [
        0.30769232,
        -0.2937063,
        0.18181819,
        -0.11188811,
        -0.25174826,
        0.14685315,
        -0.06993007,
        0.097902104,
        0.1888112,
        -0.14685315,
        -0.12587413,
        0.048951052,
        0.30069932,
        -0.13986014,
        -0.11888112,
        0.2867133,
        0.07692308,
        -0.13286714,
        -0.14685315,
        -0.13986015,
        0.097902104,
        0.25874126,
        -0.11888112,
        -0.11188812,
        0.27972028,
        0.05594406,
        -0.09090909,
        -0.2937063,
        0.18181819,
        -0.11188811,
        -0.25174826,
        0.14685315,
        -0.06993007,
        0.097902104,
        0.1888112,
        -0.33566436,
        -0.12587413,
        0.048951052,
        0.30069932,
        -0.13986014,
        -0.11888112,
        0.2867133,
        0.07692308,
        -0.13286714,
        -0.11188812,
        -0.13986015,
        0.097902104,
        0.25874126,
        -0.11888112,
        -0.11188812,
        0.27972028,
        0.05594406,
        -0.09090909,
        -0.16083917,
    ];

    #[test]
    fn conv1x1_matches_torch() {
        let conv = conv(weight_hwio((3, 5, 1, 1), 5, 13), 1, 0);
        let y = conv.forward(input_nhwc((2, 5, 3, 3), 7, 11).view());
        assert_eq!(y.dim(), (2, 3, 3, 3));
        assert_close_nchw(&y, &CONV1X1);
    }

    // x = pattern((2, 2, 7, 5), 7, 11); w = pattern((3, 2, 3, 2), 5, 13)
    // y = F.conv2d(x, w, stride=2, padding=1)
    const CONV3X2_S2_P1: [f32; 72] = [
        0.013986019,
        -0.23776224,
        0.3846154,
        0.006993009,
        0.055944055,
        -0.21678323,
        0.2657343,
        0.07692308,
        -0.27272728,
        0.013986017,
        0.20979021,
        -0.17482519,
        -0.0909091,
        -0.006993012,
        -0.25174826,
        0.17482518,
        -0.30769232,
        0.06293707,
        0.09090909,
        -0.22377624,
        0.3006993,
        -0.24475525,
        0.08391608,
        -0.27972028,
        0.07692308,
        0.13286714,
        -0.25174826,
        -0.020979024,
        0.14685315,
        -0.11188811,
        -0.08391609,
        -0.06993007,
        0.05594406,
        -0.04895105,
        -0.04195804,
        0.34265736,
        0.2027972,
        -0.30069932,
        0.0909091,
        -0.41258743,
        -0.25874126,
        0.006993009,
        2.7093021e-09,
        0.3776224,
        0.027972024,
        0.0069930055,
        -0.17482519,
        -0.020979019,
        -0.2657343,
        0.19580421,
        -0.048951056,
        0.12587413,
        0.27972028,
        0.41958043,
        0.19580421,
        -0.4055944,
        -0.11188812,
        -0.16083917,
        0.12587413,
        0.30069932,
        -0.00699301,
        0.05594406,
        -0.0979021,
        -0.15384616,
        0.09090909,
        -0.16783218,
        -0.062937066,
        -0.2797203,
        0.3846154,
        0.21678323,
        -0.11888112,
        -0.19580421,
    ];

    #[test]
    fn conv3x2_stride2_odd_sizes_matches_torch() {
        let conv = conv(weight_hwio((3, 2, 3, 2), 5, 13), 2, 1);
        let y = conv.forward(input_nhwc((2, 2, 7, 5), 7, 11).view());
        assert_eq!(y.dim(), (2, 4, 3, 3));
        assert_close_nchw(&y, &CONV3X2_S2_P1);
        // Batch chunking (one image per im2col step) gives the same result.
        let x = input_nhwc((2, 2, 7, 5), 7, 11)
            .as_standard_layout()
            .into_owned();
        let mut out = vec![0.0; 2 * 4 * 3 * 3];
        conv.forward_into_chunked(
            x.as_slice().unwrap(),
            2,
            7,
            5,
            MatMut::row_major(&mut out, 24, 3),
            &mut Vec::new(),
            1,
        );
        let y = Array4::from_shape_vec((2, 4, 3, 3), out).unwrap();
        assert_close_nchw(&y, &CONV3X2_S2_P1);
    }

    #[test]
    fn forward_into_writes_a_column_range_of_a_wider_buffer() {
        // The 3x3 case into columns 2..6 of a 25 x 9 buffer, as a dense block appends
        // its new features to the concatenation; both paths (im2col and 1x1).
        let conv3 = conv(weight_hwio((4, 3, 3, 3), 5, 13), 1, 1);
        let conv1 = conv(weight_hwio((3, 5, 1, 1), 5, 13), 1, 0);
        let cases = [
            (conv3, (1, 3, 5, 5), &CONV3X3_S1_P1[..]),
            (conv1, (2, 5, 3, 3), &CONV1X1[..]),
        ];
        for (conv, (n, c, h, w), expected) in cases {
            let x = input_nhwc((n, c, h, w), 7, 11)
                .as_standard_layout()
                .into_owned();
            let rows = n * h * w;
            let (width, first) = (9, 2);
            let mut buf = vec![f32::NAN; rows * width];
            let mut scratch = vec![f32::NAN; 3]; // stale contents must not matter
            conv.forward_into(
                x.as_slice().unwrap(),
                n,
                h,
                w,
                MatMut::new(&mut buf[first..], rows, conv.c_out(), width, 1),
                &mut scratch,
            );
            let c_out = conv.c_out();
            let got = Array4::from_shape_fn((n, h, w, c_out), |(b, y, x, ch)| {
                buf[((b * h + y) * w + x) * width + first + ch]
            });
            assert_close_nchw(&got, expected);
            for (i, v) in buf.iter().enumerate() {
                if !(first..first + c_out).contains(&(i % width)) {
                    assert!(
                        v.is_nan(),
                        "element {i} outside the column range was written"
                    );
                }
            }
        }
    }

    /// Direct convolution from the definition, NHWC / HWIO, for random-shape checks.
    fn conv_naive(x: &Array4<f32>, w: &Array4<f32>, stride: usize, pad: usize) -> Array4<f32> {
        let (n, h, wd, c) = x.dim();
        let (kh, kw, _, o) = w.dim();
        let oh = (h + 2 * pad - kh) / stride + 1;
        let ow = (wd + 2 * pad - kw) / stride + 1;
        Array4::from_shape_fn((n, oh, ow, o), |(b, oy, ox, oc)| {
            let mut acc = 0.0f64;
            for ky in 0..kh {
                for kx in 0..kw {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    let ix = (ox * stride + kx) as isize - pad as isize;
                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                        continue;
                    }
                    for ic in 0..c {
                        acc += f64::from(x[[b, iy as usize, ix as usize, ic]])
                            * f64::from(w[[ky, kx, ic, oc]]);
                    }
                }
            }
            acc as f32
        })
    }

    #[test]
    fn forward_matches_naive_convolution_on_random_shapes() {
        let mut rng = Rng::new(5);
        for _ in 0..40 {
            let r = |rng: &mut Rng, lo: usize, hi: usize| {
                lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
            };
            let (kh, kw) = (r(&mut rng, 1, 4), r(&mut rng, 1, 4));
            let (stride, pad) = (r(&mut rng, 1, 3), r(&mut rng, 0, 2));
            let (n, c, o) = (r(&mut rng, 1, 3), r(&mut rng, 1, 6), r(&mut rng, 1, 5));
            let (h, w) = (r(&mut rng, kh, 9), r(&mut rng, kw, 9));
            let x = Array4::from_shape_simple_fn((n, h, w, c), || rng.uniform() - 0.5);
            let wt = Array4::from_shape_simple_fn((kh, kw, c, o), || rng.uniform() - 0.5);
            let expected = conv_naive(&x, &wt, stride, pad);
            let conv = conv(wt, stride, pad);
            let y = conv.forward(x.view());
            assert_eq!(y.dim(), expected.dim());
            let expected: Vec<f32> = expected.iter().copied().collect();
            assert_close(y.iter().copied(), &expected);
        }
    }

    #[test]
    fn weights_read_and_write_through_either_layout() {
        // 40 outputs: stored panel-major (two panels, the second masked); 32: one
        // panel, stored HWIO. Every way of writing the weight must reach the kernels,
        // and `weight()` must give back what was written.
        let mut rng = Rng::new(9);
        let x = Array4::from_shape_simple_fn((2, 5, 6, 7), || rng.uniform() - 0.5);
        for (kernel, c_out) in [(1, 40), (3, 40), (1, 32), (2, 70)] {
            let wt = Array4::from_shape_simple_fn((kernel, kernel, 7, c_out), || rng.uniform());
            let mut conv = conv(wt.clone(), 1, 0);
            assert_eq!(conv.weight(), wt);
            assert_eq!(conv.weight_shape(), [kernel, kernel, 7, c_out]);
            let y = conv.forward(x.view());
            assert_close(
                y.iter().copied(),
                conv_naive(&x, &wt, 1, 0).as_slice().unwrap(),
            );
            // In place, through the guard.
            conv.weight_mut().view_mut().mapv_inplace(|v| 0.5 - v);
            let changed = wt.mapv(|v| 0.5 - v);
            assert_eq!(conv.weight(), changed);
            let y = conv.forward(x.view());
            let expected = conv_naive(&x, &changed, 1, 0);
            assert_close(y.iter().copied(), expected.as_slice().unwrap());
            // A non-contiguous replacement (the same values, stored reversed).
            let mut reversed = Array4::zeros((c_out, 7, kernel, kernel));
            reversed.assign(&changed.view().reversed_axes());
            conv.weight_mut()
                .view_mut()
                .assign(&reversed.reversed_axes());
            assert_eq!(conv.weight(), changed);
            // A whole new weight, and one of the wrong shape.
            let doubled = changed.mapv(|v| v * 2.0);
            conv.set_weight(doubled.view()).unwrap();
            assert_eq!(conv.weight(), doubled);
            let y = conv.forward(x.view());
            let expected = conv_naive(&x, &doubled, 1, 0);
            assert_close(y.iter().copied(), expected.as_slice().unwrap());
            let wrong = Array4::zeros((kernel, kernel, 7, c_out + 1));
            let err = conv.set_weight(wrong.view());
            assert!(
                matches!(&err, Err(Error::TensorShape { actual, .. }) if actual[3] == c_out + 1),
                "{err:?}"
            );
            assert_eq!(conv.weight(), doubled);
        }
    }

    #[test]
    fn init_is_kaiming_normal_fan_in_and_deterministic() {
        let config = Conv2dConfig {
            stride: 1,
            padding: 1,
        };
        let a = Conv2d::init(64, 32, 3, config, &mut Rng::new(1));
        let b = Conv2d::init(64, 32, 3, config, &mut Rng::new(1));
        assert_eq!(a.weight(), b.weight());
        assert_eq!(a.weight().dim(), (3, 3, 64, 32));
        assert_eq!((a.c_in(), a.c_out(), a.config()), (64, 32, config));
        let n = a.weight().len() as f64;
        let mean = a.weight().iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a
            .weight()
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let expected_std = (2.0 / (64.0 * 9.0f64)).sqrt();
        assert!(mean.abs() < 0.05 * expected_std, "mean {mean}");
        assert!(
            (var.sqrt() / expected_std - 1.0).abs() < 0.03,
            "std {}",
            var.sqrt()
        );
    }

    #[test]
    fn new_validates_the_weight_and_stride() {
        let err = Conv2d::new(Array4::zeros((3, 3, 0, 4)), Conv2dConfig::default()).unwrap_err();
        assert!(matches!(err, Error::TensorShape { ref actual, .. } if actual == &[3, 3, 0, 4]));
        let zero_stride = Conv2dConfig {
            stride: 0,
            padding: 0,
        };
        assert!(Conv2d::new(Array4::zeros((1, 1, 2, 2)), zero_stride).is_err());
        let ok = Conv2d::new(Array4::zeros((1, 3, 2, 5)), Conv2dConfig::default()).unwrap();
        assert_eq!(
            ok.window(),
            Window {
                kernel_h: 1,
                kernel_w: 3,
                stride: 1,
                padding: 0
            }
        );
        assert_eq!(
            Conv2dConfig::default(),
            Conv2dConfig {
                stride: 1,
                padding: 0
            }
        );
    }

    #[test]
    fn empty_batch_gives_empty_output() {
        let conv = conv(weight_hwio((4, 3, 3, 3), 5, 13), 1, 1);
        let y = conv.forward(Array4::zeros((0, 5, 5, 3)).view());
        assert_eq!(y.dim(), (0, 5, 5, 4));
    }

    #[test]
    #[should_panic(expected = "input has 2 channels, the convolution takes 3")]
    fn wrong_channel_count_panics() {
        let conv = conv(weight_hwio((4, 3, 3, 3), 5, 13), 1, 1);
        let _ = conv.forward(Array4::zeros((1, 5, 5, 2)).view());
    }
}
