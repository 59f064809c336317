//! Convolution backward: weight and input gradients.
//!
//! A stride-1 "same" convolution (DenseNet's 3x3s) with the direct kernels available
//! takes its input gradient as a convolution of the padded output gradient with the
//! flipped kernel (by Winograd where it fits, else on the direct kernels), and its
//! weight gradient as one GEMM per tap
//! of a shifted view of the padded input: no im2col or col2im matrix, which cost more
//! than the products at DenseNet's widths. 1x1 convolutions are two products; anything
//! else (the stem's strided 7x7) takes im2col + GEMM and col2im, as does every
//! convolution on CPUs without the direct kernels. Every product is
//! [`gemm_unpacked`]: in the caller's layout, in the step's scratch, no allocation.

use ndarray::{Array4, ArrayView4};

use crate::kernels::direct_conv::{
    self, ConvShape, ConvWeight, Epilogue, ImageLayout, WinogradInput,
};
use crate::kernels::gemm::{gemm_unpacked, MatMut, MatRef};
use crate::kernels::im2col::{im2col, im2col_rows};
use crate::layers::{conv2d_into, relu_padded_into, zero_border, Conv2d};
use crate::parallel::prelude::*;
use crate::train::col2im;

/// Largest im2col matrix, in elements, built at once (16 MiB of `f32`), as in the
/// forward pass: a larger batch is processed a few images at a time. One image is
/// always processed whole.
const SCRATCH_LIMIT: usize = 1 << 22;

/// Gradients of `y = conv(x)` given `dy = ∂L/∂y`; returns `∂L/∂W` (HWIO, the shape of
/// [`Conv2d::weight`]) and, if `dx` is given, writes `∂L/∂x` into it.
///
/// With `X` the im2col matrix of `x` (`(n·oh·ow) × (kh·kw·c_in)`), the forward pass is
/// `Y = X·W`, so `∂L/∂W = Xᵀ·dY` and `∂L/∂X = dY·Wᵀ`, which [`col2im`] folds back onto
/// the input pixels. A 1x1 convolution with stride 1 and no padding uses `x` itself as
/// `X`. Any kernel, stride and padding.
///
/// - `x`: the forward pass's NHWC input `(n, h, w, c_in)`;
/// - `dy`: `(n·oh·ow) × c_out`, row-major;
/// - `dx`: `n·h·w·c_in` (contiguous NHWC), overwritten; `None` skips the input gradient
///   (the network's first convolution needs none);
/// - `scratch`: the im2col matrix, grown as needed and reused across calls.
///
/// # Panics
///
/// If `x` does not have `c_in` channels, `dy.len() != n·oh·ow·c_out`, or
/// `dx.len() != n·h·w·c_in`.
pub fn conv2d_backward(
    conv: &Conv2d,
    x: ArrayView4<'_, f32>,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
) -> Array4<f32> {
    conv2d_backward_reusing(conv, x, dy, dx, scratch, Vec::new())
}

/// [`conv2d_backward`] with the weight gradient written into `storage` (resized and
/// zeroed first): a training step's buffers, reused from step to step.
///
/// # Panics
///
/// As [`conv2d_backward`].
pub(crate) fn conv2d_backward_reusing(
    conv: &Conv2d,
    x: ArrayView4<'_, f32>,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
    storage: Vec<f32>,
) -> Array4<f32> {
    backward(conv, x.into(), dy, dx, scratch, Some(storage), None)
        .expect("asked for the weight gradient")
}

/// A convolution's input as its backward reads it: the NHWC batch, or the batch before
/// the BatchNorm-ReLU whose output it is.
pub(crate) enum ConvInput<'a> {
    /// The NHWC batch.
    Batch(ArrayView4<'a, f32>),
    /// The `(n, h, w, c)` NHWC batch before a BatchNorm-ReLU, `relu(z·scale + shift)`
    /// per channel being the convolution's input: a bottleneck's 3x3, whose Winograd
    /// weight gradient reads it so (no BN-ReLU map recomputed and padded first).
    BnRelu {
        z: &'a [f32],
        dims: [usize; 4],
        scale: &'a [f32],
        shift: &'a [f32],
    },
}

impl ConvInput<'_> {
    /// `(n, h, w, c)`.
    fn dims(&self) -> (usize, usize, usize, usize) {
        match self {
            ConvInput::Batch(x) => x.dim(),
            ConvInput::BnRelu {
                dims: [n, h, w, c], ..
            } => (*n, *h, *w, *c),
        }
    }
}

impl<'a> From<ArrayView4<'a, f32>> for ConvInput<'a> {
    fn from(x: ArrayView4<'a, f32>) -> Self {
        Self::Batch(x)
    }
}

/// Floats of the padded grid (with its zero tail) that the per-tap weight gradient of
/// `conv`, a stride-1 "same" convolution, reads for `n` images of `h × w`.
fn padded_grid_len(conv: &Conv2d, (n, h, w): (usize, usize, usize)) -> usize {
    let win = conv.window();
    let (hp, wp) = (h + 2 * win.padding, w + 2 * win.padding);
    // Taps reach up to `(k−1)·(wp + 1)` pixels past a grid position: zeros there.
    (n * hp * wp + (win.kernel_h - 1) * (wp + 1)) * conv.c_in()
}

/// [`conv2d_backward_reusing`] with the input in either form; without `storage`, the
/// input gradient alone (a frozen convolution: neither the `Xᵀ·dY` product nor the
/// im2col matrix of `x` it needs).
///
/// # Panics
///
/// As [`conv2d_backward`]; for an input before BN-ReLU, also if `z`, `scale` or `shift`
/// does not fit its dimensions.
pub(crate) fn conv2d_backward_from(
    conv: &Conv2d,
    x: ConvInput<'_>,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
    storage: Option<Vec<f32>>,
) -> Option<Array4<f32>> {
    backward(conv, x, dy, dx, scratch, storage, None)
}

/// [`conv2d_backward_from`] running `after` on the input gradient chunk by chunk of
/// images ([`AfterDx`]).
pub(crate) fn conv2d_backward_then(
    conv: &Conv2d,
    x: ConvInput<'_>,
    dy: &[f32],
    dx: &mut [f32],
    scratch: &mut Vec<f32>,
    storage: Option<Vec<f32>>,
    after: AfterDx<'_>,
) -> Option<Array4<f32>> {
    let chunks = dx_chunks(x.dims());
    assert!(
        after.out.len() >= chunks * after.out_width
            && after.part.len() >= chunks * after.part_width,
        "conv2d_backward_then: fewer result slots than chunks"
    );
    backward(conv, x, dy, Some(dx), scratch, storage, Some(after))
}

/// Work on a convolution's input gradient `dx` done a chunk of images at a time,
/// [`dx_chunk_images`] each: `f(rows, dx_rows, out, part)` gets the chunk's pixel rows
/// of the batch, its rows of `dx` and its own `out_width` floats of `out` and
/// `part_width` of `part` (chunk `i` the `i`-th of each). On the flipped-kernel path a
/// chunk's `f` runs right after the chunk is computed, on the same thread, while it is
/// in cache (a BatchNorm backward's sums over `dx`: read again from memory otherwise);
/// elsewhere after the whole `dx`. Chunks are fixed by the shape, so `out`, added in
/// chunk order, does not depend on the path or the thread count.
pub(crate) struct AfterDx<'a> {
    /// The work on one chunk.
    #[allow(clippy::type_complexity)]
    pub(crate) f: &'a (dyn Fn(std::ops::Range<usize>, &[f32], &mut [f64], &mut [f32]) + Sync),
    /// `chunks × out_width` per-chunk results.
    pub(crate) out: &'a mut [f64],
    pub(crate) out_width: usize,
    /// `chunks × part_width` per-chunk scratch.
    pub(crate) part: &'a mut [f32],
    pub(crate) part_width: usize,
}

/// Images per chunk of [`AfterDx`] for an input gradient of `n` images of `h × w × c`:
/// as many as keep a chunk within ~256 KiB (L2, beside what the kernels use), at least
/// one, and at most a quarter of the batch (so that two threads share several chunks).
pub(crate) fn dx_chunk_images((n, h, w, c): (usize, usize, usize, usize)) -> usize {
    let image = (h * w * c).max(1);
    ((64 * 1024) / image).clamp(1, n.div_ceil(4).max(1))
}

/// How many chunks of [`dx_chunk_images`] an input gradient of `n` images makes.
pub(crate) fn dx_chunks(dims: (usize, usize, usize, usize)) -> usize {
    dims.0.div_ceil(dx_chunk_images(dims))
}

impl AfterDx<'_> {
    /// Runs `f` over every chunk of `dx` (already computed), in order.
    fn run_over(&mut self, dx: &[f32], (n, h, w, c): (usize, usize, usize, usize)) {
        let images = dx_chunk_images((n, h, w, c));
        let chunk_len = (images * h * w * c).max(1);
        let slots = self
            .out
            .chunks_mut(self.out_width.max(1))
            .zip(self.part.chunks_mut(self.part_width.max(1)));
        for (i, (dx_chunk, (out, part))) in dx.chunks(chunk_len).zip(slots).enumerate() {
            let first = i * images * h * w;
            (self.f)(
                first..first + dx_chunk.len() / c.max(1),
                dx_chunk,
                out,
                part,
            );
        }
    }
}

/// [`conv2d_backward`], the weight gradient (in `storage`) only if `storage` is given,
/// `after` run on the input gradient's chunks if given.
fn backward(
    conv: &Conv2d,
    input: ConvInput<'_>,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
    storage: Option<Vec<f32>>,
    after: Option<AfterDx<'_>>,
) -> Option<Array4<f32>> {
    let weights = storage.is_some();
    if let ConvInput::BnRelu {
        z,
        dims: [n, h, w, c],
        scale,
        shift,
    } = input
    {
        let win = conv.window();
        let same =
            win.stride == 1 && win.kernel_h == win.kernel_w && win.kernel_h == 2 * win.padding + 1;
        if !(same && win.kernel_h > 1 && direct_conv::available()) {
            // Paths that read the BN-ReLU map itself (CPUs without the direct kernels):
            // it is formed here.
            assert_eq!(z.len(), n * h * w * c, "conv2d_backward: z of another size");
            let mut normed = Array4::zeros((n, h, w, c));
            let rows = normed.as_slice_mut().expect("a new array is contiguous");
            for (src, dst) in z
                .chunks_exact(c.max(1))
                .zip(rows.chunks_exact_mut(c.max(1)))
            {
                crate::kernels::elementwise::scale_shift_relu(src, scale, shift, dst);
            }
            return backward(
                conv,
                ConvInput::Batch(normed.view()),
                dy,
                dx,
                scratch,
                storage,
                after,
            );
        }
    }
    // The batch as a view (for `BnRelu`, of the values before BN-ReLU, which only the
    // per-tap path below reads, as such).
    let x = match input {
        ConvInput::Batch(x) => x,
        ConvInput::BnRelu { z, dims, .. } => {
            ArrayView4::from_shape(dims, z).expect("z holds the images")
        }
    };
    let (n, h, w, c_in) = x.dim();
    let c_out = conv.c_out();
    let (oh, ow) = conv.output_size(h, w);
    if c_in != conv.c_in()
        || dy.len() != n * oh * ow * c_out
        || dx.as_ref().is_some_and(|dx| dx.len() != n * h * w * c_in)
    {
        shape_mismatch(
            conv,
            [n, h, w, c_in],
            dy.len(),
            dx.as_ref().map(|dx| dx.len()),
        );
    }
    // Contiguous, where a path reads the batch itself.
    let batch = || x.as_standard_layout();
    let win = conv.window();
    let k_len = win.kernel_h * win.kernel_w * c_in;
    let dw_shape = if weights {
        (win.kernel_h, win.kernel_w, c_in, c_out)
    } else {
        (0, 0, 0, 0)
    };
    let mut storage = storage.unwrap_or_default();
    storage.clear();
    storage.resize(dw_shape.0 * dw_shape.1 * dw_shape.2 * dw_shape.3, 0.0);
    let mut dw = Array4::from_shape_vec(dw_shape, storage).expect("sized for dw_shape");
    let dw_slice = dw.as_slice_mut().expect("a new array is contiguous");

    let mut after = after;
    let dims = (n, h, w, c_in);
    let pointwise = win.kernel_h == 1 && win.kernel_w == 1 && win.stride == 1 && win.padding == 0;
    if pointwise {
        let rows = n * h * w;
        let x = batch();
        let x = x.as_slice().expect("standard layout is contiguous");
        if weights {
            let partials = take(scratch, sum_partials_len(rows, k_len, c_out));
            sum_over_rows(x, dy, (rows, k_len, c_out), dw_slice, false, partials);
        }
        if let Some(dx) = dx {
            let w_t = take(scratch, k_len * c_out);
            conv.weight_transposed_into(w_t);
            product_by_rows(dy, MatRef::row_major(w_t, c_out, k_len), dx);
            if let Some(after) = after.as_mut() {
                after.run_over(dx, dims);
            }
        }
        return weights.then_some(dw);
    }

    // A stride-1 "same" convolution's input gradient is itself a convolution: of `dy`
    // padded by `kh − 1 − padding`, with the kernel flipped and its channels swapped. On
    // the direct kernels that needs neither the `dY·Wᵀ` matrix nor col2im.
    let mut dx = dx;
    let same = win.stride == 1
        && (oh, ow) == (h, w)
        && win.kernel_h == win.kernel_w
        && win.padding < win.kernel_h;
    if same && direct_conv::available() {
        // `dy` once in a zero-padded grid (border `k − 1 − padding`, the padding itself
        // for a "same" convolution; then a zero tail): the flipped-kernel convolution
        // reads it as its padded input, and the per-tap weight gradient reads it
        // shifted by `pad·(wp + 1)` pixels, so that each image's `dy` starts its grid
        // block with zeros past the `h × w` outputs.
        let k = win.kernel_h;
        let pad = k - 1 - win.padding;
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let (grid, shift) = (n * hp * wp, pad * (wp + 1));
        let dy_len = (grid + shift) * c_out;
        let x = match input {
            ConvInput::BnRelu {
                z, scale, shift, ..
            } => TapInput::BnRelu { z, scale, shift },
            ConvInput::Batch(_) => TapInput::Batch(batch()),
        };
        let flip_len = if dx.is_some() {
            k * k * c_out * c_in
        } else {
            0
        };
        let taps_len = if weights {
            taps_scratch_len(conv, &x, (n, h, w))
        } else {
            0
        };
        let (dy_grid, rest) = take(scratch, dy_len + flip_len.max(taps_len)).split_at_mut(dy_len);
        let (images, tail) = dy_grid.split_at_mut(grid * c_out);
        zero_border(images, (h, w, c_out), pad);
        tail.fill(0.0);
        for (r, src) in dy.chunks_exact(w * c_out).enumerate() {
            let (b, y) = (r / h, r % h);
            let start = ((b * hp + y + pad) * wp + pad) * c_out;
            images[start..start + w * c_out].copy_from_slice(src);
        }
        if let Some(dx) = dx.take() {
            let padded_dy = &dy_grid[..grid * c_out];
            let flipped = &mut rest[..flip_len];
            input_gradient_by_flipped_conv(conv, padded_dy, (n, h, w), dx, flipped, after);
        }
        if weights {
            let dy_at = &dy_grid[shift * c_out..][..grid * c_out];
            weight_gradient_by_taps(conv, x, dy_at, (n, h, w), dw_slice, &mut rest[..taps_len]);
        }
        return weights.then_some(dw);
    }
    let x = batch();
    let x = x.as_slice().expect("standard layout is contiguous");
    if weights && dx.is_none() {
        // The weight gradient alone (the ImageNet stem's, whose input needs none): im2col
        // a band of rows at a time, each multiplied while it is in cache.
        weight_gradient_by_bands(conv, x, (n, h, w), dy, dw_slice, scratch);
        return Some(dw);
    }

    let image_in = h * w * c_in;
    let image_rows = oh * ow;
    let image_scratch = image_rows * k_len;
    let images_per_step = (SCRATCH_LIMIT / image_scratch.max(1)).clamp(1, n.max(1));
    // The scratch holds a step's im2col matrix, then the weight transposed (for the
    // input gradient) or the weight gradient's partial sums.
    let step_rows = images_per_step * image_rows;
    let cols_len = step_rows * k_len;
    let rest_len = if weights {
        sum_partials_len(step_rows, k_len, c_out)
    } else {
        0
    }
    .max(if dx.is_some() { k_len * c_out } else { 0 });
    let (all_cols, rest) = take(scratch, cols_len + rest_len).split_at_mut(cols_len);
    let mut first = 0;
    while first < n {
        let count = images_per_step.min(n - first);
        let rows = count * image_rows;
        let cols = &mut all_cols[..rows * k_len];
        let dy_step = &dy[first * image_rows * c_out..][..rows * c_out];
        if weights {
            im2col(
                &x[first * image_in..(first + count) * image_in],
                count,
                h,
                w,
                c_in,
                win,
                cols,
            );
            // dW (+)= Xᵀ·dY, accumulated over the steps.
            let dims = (rows, k_len, c_out);
            sum_over_rows(cols, dy_step, dims, dw_slice, first > 0, rest);
        }
        if let Some(dx) = dx.as_deref_mut() {
            // dX = dY·Wᵀ into the same scratch (X is no longer needed), then col2im.
            let w_t = &mut rest[..k_len * c_out];
            conv.weight_transposed_into(w_t);
            product_by_rows(dy_step, MatRef::row_major(w_t, c_out, k_len), cols);
            col2im(
                cols,
                count,
                h,
                w,
                c_in,
                win,
                &mut dx[first * image_in..(first + count) * image_in],
            );
        }
        first += count;
    }
    if let (Some(after), Some(dx)) = (after.as_mut(), dx) {
        after.run_over(dx, dims);
    }
    weights.then_some(dw)
}

/// Output pixels of one task of [`weight_gradient_by_bands`], about: an image's rows
/// split evenly into tasks of at most this many (the ImageNet stem's 112x112: four).
const BAND_TASK_PIXELS: usize = 4096;

/// Output pixels of one band of [`weight_gradient_by_bands`], about: its im2col rows and
/// their product in cache (~130 KiB of the stem's 147-float windows, in L2).
const BAND_PIXELS: usize = 256;

/// `dw ← Σ im2col(x)ᵀ·dY` for any convolution, a band of output rows at a time: each
/// task takes a fixed share of one image's output rows (fixed by the shape, so the
/// partials, added in task order, give the same sums on any thread count) and walks it
/// in bands whose im2col rows stay in cache for their product. (The whole batch's
/// im2col, two images at a time, had been written out and read back: the ImageNet
/// stem's 147 floats a pixel.)
fn weight_gradient_by_bands(
    conv: &Conv2d,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    dy: &[f32],
    dw: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let win = conv.window();
    let (c_in, c_out) = (conv.c_in(), conv.c_out());
    let (oh, ow) = conv.output_size(h, w);
    let k_len = win.kernel_h * win.kernel_w * c_in;
    let dw = &mut dw[..k_len * c_out];
    if n == 0 || oh == 0 || ow == 0 {
        dw.fill(0.0);
        return;
    }
    let per_image = (oh * ow).div_ceil(BAND_TASK_PIXELS).clamp(1, oh);
    let task_rows = oh.div_ceil(per_image);
    let per_image = oh.div_ceil(task_rows);
    let band_rows = (BAND_PIXELS / ow).clamp(1, task_rows);
    let part_len = k_len * c_out;
    let task_len = band_rows * ow * k_len + part_len;
    let tasks = n * per_image;
    let image_in = h * w * c_in;
    let floats = take(scratch, tasks * task_len);
    floats
        .par_chunks_mut(task_len)
        .enumerate()
        .for_each(|(t, floats)| {
            let (b, first) = (t / per_image, t % per_image * task_rows);
            let last = (first + task_rows).min(oh);
            let (cols, part) = floats.split_at_mut(task_len - part_len);
            let image = &x[b * image_in..][..image_in];
            for (i, r0) in (first..last).step_by(band_rows).enumerate() {
                let r1 = (r0 + band_rows).min(last);
                let pixels = (r1 - r0) * ow;
                let cols = &mut cols[..pixels * k_len];
                im2col_rows(image, (h, w, c_in), win, r0..r1, cols);
                let dy_rows = &dy[((b * oh + r0) * ow) * c_out..][..pixels * c_out];
                gemm_unpacked(
                    MatRef::row_major(cols, pixels, k_len).t(),
                    MatRef::row_major(dy_rows, pixels, c_out),
                    MatMut::row_major(part, k_len, c_out),
                    i > 0,
                );
            }
        });
    // The tasks' partials added in task order, a slice of elements per job.
    let floats = &*floats;
    dw.par_chunks_mut(4096).enumerate().for_each(|(j, dst)| {
        let at = task_len - part_len + j * 4096;
        dst.fill(0.0);
        for task in floats.chunks_exact(task_len) {
            for (d, &p) in dst.iter_mut().zip(&task[at..]) {
                *d += p;
            }
        }
    });
}

/// `dx ← conv(pad(dy, q), W′)` with `q = k − 1 − padding` and `W′[a][b][o][i] =
/// W[k−1−a][k−1−b][i][o]`: the input gradient of a stride-1 convolution whose output
/// has its input's size, on the Winograd or direct kernels. `padded_dy` is `dy` in its zero-padded
/// grid (`n` images of `(h + 2q) × (w + 2q)` pixels); `flipped` holds `W′`.
fn input_gradient_by_flipped_conv(
    conv: &Conv2d,
    padded_dy: &[f32],
    (n, h, w): (usize, usize, usize),
    dx: &mut [f32],
    flipped: &mut [f32],
    after: Option<AfterDx<'_>>,
) {
    let win = conv.window();
    let (k, c_in, c_out) = (win.kernel_h, conv.c_in(), conv.c_out());
    let q = k - 1 - win.padding;
    let (hp, wp) = (h + 2 * q, w + 2 * q);
    let weight = conv.weight();
    let mut flipped_values = flipped.iter_mut();
    for a in 0..k {
        for b in 0..k {
            for o in 0..c_out {
                for (i, f) in (0..c_in).zip(flipped_values.by_ref()) {
                    *f = weight[[k - 1 - a, k - 1 - b, i, o]];
                }
            }
        }
    }
    let flipped: &[f32] = flipped;
    let (dy_layout, dx_layout) = (
        ImageLayout::dense(hp, wp, c_out),
        ImageLayout::dense(h, w, c_in),
    );
    // `images` images of `dy` into `dx`: Winograd where it fits (DenseNet-121's
    // 32 → 128: 2.25x fewer multiply-adds), else the direct kernel.
    let shape = |images| ConvShape {
        n: images,
        out_h: h,
        out_w: w,
        c_in: c_out,
        c_out: c_in,
        kernel_h: k,
        kernel_w: k,
        stride: 1,
    };
    let conv_images = |images: usize, padded_dy: &[f32], dx: &mut [f32], parallel: bool| {
        let shape = shape(images);
        let padded = WinogradInput::Padded {
            data: padded_dy,
            layout: dy_layout,
        };
        let ran = direct_conv::winograd_conv(padded, flipped, shape, dx, dx_layout, parallel)
            || direct_conv::direct_conv(
                padded_dy,
                dy_layout,
                Epilogue::Store,
                ConvWeight::Hwio(flipped),
                shape,
                Epilogue::Store,
                dx,
                dx_layout,
                parallel,
            );
        // The caller checked that the kernels run here; a shape they refuse (its
        // multiply-adds overflow `usize`) is far past any buffer this step could hold.
        assert!(ran, "conv2d_backward: the direct kernels refused {shape:?}");
    };
    let Some(after) = after else {
        conv_images(n, padded_dy, dx, true);
        return;
    };
    // A chunk of images at a time on one thread, each followed by `after` there; the
    // chunks on the threads. (Winograd's task buffers for that many calls at once
    // first: none allocated by calls racing for them.)
    let images = dx_chunk_images((n, h, w, c_in));
    direct_conv::winograd_reserve(&shape(images), crate::parallel::current_num_threads());
    let AfterDx {
        f,
        out,
        out_width,
        part,
        part_width,
    } = after;
    dx.par_chunks_mut((images * h * w * c_in).max(1))
        .zip(padded_dy.par_chunks((images * hp * wp * c_out).max(1)))
        .zip(out.par_chunks_mut(out_width.max(1)))
        .zip(part.par_chunks_mut(part_width.max(1)))
        .enumerate()
        .for_each(|(i, (((dx, dy), out), part))| {
            let count = dx.len() / (h * w * c_in).max(1);
            conv_images(count, dy, dx, false);
            let first = i * images * h * w;
            f(first..first + count * h * w, dx, out, part);
        });
}

/// The per-tap weight gradient's input: the contiguous batch, copied into a padded
/// grid in the scratch, or the batch before BN-ReLU ([`ConvInput::BnRelu`]: read so by
/// the Winograd path, else formed into the padded grid in the scratch).
enum TapInput<'a> {
    Batch(ndarray::CowArray<'a, f32, ndarray::Ix4>),
    BnRelu {
        z: &'a [f32],
        scale: &'a [f32],
        shift: &'a [f32],
    },
}

/// Rows of one task of [`sum_over_rows`]: fixed, so the partial sums and the order they
/// are added in do not depend on the thread count.
const TAP_ROWS: usize = 8192;

/// Rows of the padded grid one task of [`weight_gradient_by_taps`] sums over: an eighth
/// of the grid in multiples of [`TAP_CHUNK`], 512 to 8,192 (fixed by the shape, not the
/// thread count, so that the partial sums and their order are too; a 7x7 map at batch
/// 16, 1,296 rows, still makes three tasks).
fn tap_task_rows(grid: usize) -> usize {
    grid.div_ceil(8)
        .next_multiple_of(TAP_CHUNK)
        .clamp(512, 8192)
}

/// Rows a task takes at once through all nine taps: the chunk's shifted windows of the
/// padded input (256 rows plus two image rows of overlap, ~190 KiB at 128 channels)
/// stay in L2 while every tap reads them.
const TAP_CHUNK: usize = 256;

/// Floats of the scratch [`weight_gradient_by_taps`] takes: the padded input (unless
/// given padded), then the Winograd path's scratch or each task's partial weight
/// gradient.
fn taps_scratch_len(conv: &Conv2d, x: &TapInput<'_>, (n, h, w): (usize, usize, usize)) -> usize {
    let win = conv.window();
    let grid = n * (h + 2 * win.padding) * (w + 2 * win.padding);
    let winograd = winograd_scratch(conv, (n, h, w));
    let x_len = match x {
        TapInput::Batch(_) => padded_grid_len(conv, (n, h, w)),
        TapInput::BnRelu { .. } if winograd.is_none() => padded_grid_len(conv, (n, h, w)),
        TapInput::BnRelu { .. } => 0,
    };
    if let Some(len) = winograd {
        return x_len + len;
    }
    let tasks = grid.div_ceil(tap_task_rows(grid));
    x_len + tasks * win.kernel_h * win.kernel_w * conv.c_in() * conv.c_out()
}

/// The shape of `conv` (stride 1, "same") on `n` images of `h × w`, as the kernels take it.
fn same_shape(conv: &Conv2d, (n, h, w): (usize, usize, usize)) -> ConvShape {
    let win = conv.window();
    ConvShape {
        n,
        out_h: h,
        out_w: w,
        c_in: conv.c_in(),
        c_out: conv.c_out(),
        kernel_h: win.kernel_h,
        kernel_w: win.kernel_w,
        stride: 1,
    }
}

/// The scratch of the Winograd weight gradient, where it takes `conv` (a 3x3 with
/// padding 1 on an even map) and pays ([`winograd_min_outputs`]), on maps at least
/// [`WINOGRAD_MIN_SIDE`] wide and high.
fn winograd_scratch(conv: &Conv2d, dims: (usize, usize, usize)) -> Option<usize> {
    let (_, h, w) = dims;
    if conv.window().padding != 1
        || conv.c_out() < winograd_min_outputs()
        || h.min(w) < WINOGRAD_MIN_SIDE
    {
        return None;
    }
    direct_conv::winograd_weight_gradient_scratch(&same_shape(conv, dims))
}

/// Smallest map side on which the weight gradient takes Winograd. On a 2x2 map a tap's
/// sum has a term or two, often all zero (the ReLU's zeros, the padding), and the
/// per-tap products give the exact zero torch does; Winograd's transforms, which
/// subtract pixels, leave ±1e-9 there, and Adam, which divides by the gradient's scale,
/// moved those weights by its full step (521 of the small torchvision fixture's 42,058
/// parameters after three steps, all on its 2x2 block). On the maps it was measured to
/// pay on (8x8 up) a tap sums a hundred terms or more.
const WINOGRAD_MIN_SIDE: usize = 8;

/// Fewest outputs for which the Winograd weight gradient pays. Where AVX-512 runs at
/// full width, 32 (two full vectors of its GEMMs' columns): DenseNet-121's 3x3s but
/// its 7x7 block, not DenseNet-BC-100's 48 → 12, whose GEMMs are too small for the
/// transforms (its weight gradients took 80 against 67 ms a step by the taps,
/// alternating in one run, Zen 5). Where it runs at half width
/// ([`crate::kernels::avx512_half_width`], Zen 4), the taps' multiply-adds cost twice
/// the cycles and Winograd pays on any: BC's 3x3 backward, in the step's chunks of
/// images, took 0.80–0.89x the time at 32x32, 16x16 and 8x8 (alternating calls).
fn winograd_min_outputs() -> usize {
    if crate::kernels::avx512_half_width() {
        return 1;
    }
    32
}

/// `dW[a][b] = Σ_p x_pad[p + off(a, b)]ᵀ · dy_grid[p]` for a stride-1 "same"
/// convolution: `x` padded into `(n, h + 2·pad, w + 2·pad)` images, `dy_grid` `dy` in
/// the same grid (each image's outputs at the top left of its block, zero past the
/// `h × w` outputs), so that every tap is one GEMM of a shifted view of the padded
/// input over all the batch's pixels, with no im2col matrix (whose `k·k`-fold copy
/// costs more than the products here). Rows are split into tasks ([`tap_task_rows`])
/// run in parallel, whose partial gradients are added in task order. `scratch` is
/// [`taps_scratch_len`] floats.
///
/// A 3x3 on an even map takes Winograd F(3x3, 2x2) instead
/// ([`direct_conv::winograd_weight_gradient`]: 2.25x fewer multiply-adds; DenseNet-121's
/// 3x3 weight gradients at batch 16 went from 134 to ~90 ms a step).
fn weight_gradient_by_taps(
    conv: &Conv2d,
    x: TapInput<'_>,
    dyg: &[f32],
    (n, h, w): (usize, usize, usize),
    dw: &mut [f32],
    scratch: &mut [f32],
) {
    let win = conv.window();
    let (k, pad, c_in, c_out) = (win.kernel_h, win.padding, conv.c_in(), conv.c_out());
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let grid = n * hp * wp;
    let (taps, per_tap) = (k * k, c_in * c_out);
    let per_task = tap_task_rows(grid);
    let winograd = winograd_scratch(conv, (n, h, w)).is_some();
    let dy_layout = ImageLayout {
        offset: 0,
        image_stride: hp * wp * c_out,
        row_stride: wp * c_out,
        pixel_stride: c_out,
    };
    if let (true, TapInput::BnRelu { z, scale, shift }) = (winograd, &x) {
        // `dyg` is `dy` in the padded grid's layout, from each image's first pixel.
        let input = WinogradInput::BnRelu {
            data: z,
            layout: ImageLayout::dense(h, w, c_in),
            scale,
            shift,
        };
        let shape = same_shape(conv, (n, h, w));
        let ran =
            direct_conv::winograd_weight_gradient(input, dyg, dy_layout, shape, dw, scratch, true);
        debug_assert!(ran, "winograd_scratch said it runs");
        return;
    }
    let (xp_scratch, partials) = scratch.split_at_mut(padded_grid_len(conv, (n, h, w)));
    // `x`'s border and the tail zero, its rows (through BN-ReLU, on the threads) into
    // the interior.
    let (images, tail_x) = xp_scratch.split_at_mut(grid * c_in);
    tail_x.fill(0.0);
    match &x {
        TapInput::Batch(x) => {
            zero_border(images, (h, w, c_in), pad);
            let x = x.as_slice().expect("standard layout is contiguous");
            for r in 0..n * h {
                let (b, y) = (r / h, r % h);
                let xs = ((b * hp + y + pad) * wp + pad) * c_in;
                images[xs..xs + w * c_in].copy_from_slice(&x[r * w * c_in..][..w * c_in]);
            }
        }
        TapInput::BnRelu { z, scale, shift } => {
            relu_padded_into(z, c_in, (n, h, w), pad, scale, shift, images);
        }
    }
    let xp: &[f32] = xp_scratch;
    if winograd {
        let shape = same_shape(conv, (n, h, w));
        let input = WinogradInput::Padded {
            data: xp,
            layout: ImageLayout::dense(hp, wp, c_in),
        };
        let ran =
            direct_conv::winograd_weight_gradient(input, dyg, dy_layout, shape, dw, partials, true);
        debug_assert!(ran, "winograd_scratch said it runs");
        return;
    }
    // One job per task (each writes its own partials, so the jobs may run in any order
    // on any thread), a chunk of rows at a time through every tap: the input's rows are
    // read from memory once and by the nine taps from L2 (one job per tap and task read
    // a task's 4 MiB of rows nine times from memory: 2x slower on DenseNet-121).
    let task = |(t, dst): (usize, &mut [f32])| {
        let first = t * per_task;
        let rows = per_task.min(grid - first);
        for c0 in (0..rows).step_by(TAP_CHUNK) {
            let (r0, len) = (first + c0, TAP_CHUNK.min(rows - c0));
            let dy_rows = MatRef::row_major(&dyg[r0 * c_out..][..len * c_out], len, c_out);
            for (tap, dst) in dst.chunks_exact_mut(per_tap.max(1)).enumerate() {
                let off = (tap / k) * wp + tap % k;
                let x_rows = MatRef::row_major(&xp[(r0 + off) * c_in..][..len * c_in], len, c_in);
                // Transposed (`dyᵀ·x`, `c_out` rows of `c_in`): the tiles' vectors then
                // span `c_in` (a multiple of 16 in DenseNet-BC's 4k = 48) instead of
                // `c_out` (k = 12: 12 of 16 lanes).
                let dst = MatMut::row_major(dst, c_out, c_in);
                gemm_unpacked(dy_rows.t(), x_rows, dst, c0 > 0);
            }
        }
    };
    let task_len = (taps * per_tap).max(1);
    partials.par_chunks_mut(task_len).enumerate().for_each(task);
    // Added in task order (the same sums on any number of threads), each tap's partial
    // transposed back to `c_in × c_out`.
    dw.fill(0.0);
    for p in partials.chunks(task_len) {
        for (d_tap, p_tap) in dw.chunks_exact_mut(per_tap).zip(p.chunks_exact(per_tap)) {
            for (ci, d_row) in d_tap.chunks_exact_mut(c_out).enumerate() {
                for (co, d) in d_row.iter_mut().enumerate() {
                    *d += p_tap[co * c_in + ci];
                }
            }
        }
    }
}

/// `y ← conv(x)` for the training step: on the direct kernels when the convolution
/// has no padding (a transition's 1x1), else by im2col and products in row tasks,
/// panel by panel of the stored weight, in the step's scratch (the stem's, on an
/// unpadded input; the layer's own im2col path multiplies with the `gemm` crate, which
/// allocates on every call).
///
/// - `x`: the NHWC input, `n·h·w·c_in` floats;
/// - `y`: the output, `(n·oh·ow) × c_out`, row-major;
/// - `scratch`: the im2col matrix (up to [`SCRATCH_LIMIT`] floats at once).
///
/// # Panics
///
/// If the slices do not fit the shapes.
pub(crate) fn conv_forward(
    conv: &Conv2d,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    y: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let win = conv.window();
    let (c_in, c_out) = (conv.c_in(), conv.c_out());
    let (oh, ow) = conv.output_size(h, w);
    let k_len = win.kernel_h * win.kernel_w * c_in;
    assert!(
        x.len() == n * h * w * c_in && y.len() == n * oh * ow * c_out,
        "conv_forward: the slices do not fit the shapes"
    );
    if direct_conv::available() {
        let out = MatMut::row_major(y, n * oh * ow, c_out);
        let pad = win.padding;
        if pad == 0 {
            return conv2d_into(conv, x, (n, h, w), false, Epilogue::Store, out, scratch);
        }
        // Copied once into a zero-padded grid, which the direct kernels read in place
        // (the ImageNet stem's 7x7: im2col would write 147 floats a pixel).
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let grid = take(scratch, n * hp * wp * c_in);
        zero_border(grid, (h, w, c_in), pad);
        for (r, src) in x.chunks_exact(w * c_in).enumerate() {
            let (b, row) = (r / h, r % h);
            let start = ((b * hp + row + pad) * wp + pad) * c_in;
            grid[start..start + w * c_in].copy_from_slice(src);
        }
        let mut unused = Vec::new();
        return conv2d_into(
            conv,
            grid,
            (n, hp, wp),
            true,
            Epilogue::Store,
            out,
            &mut unused,
        );
    }
    let (image_in, image_rows) = (h * w * c_in, oh * ow);
    let images_per_step = (SCRATCH_LIMIT / (image_rows * k_len).max(1)).clamp(1, n.max(1));
    let cols = take(scratch, images_per_step * image_rows * k_len);
    let mut first = 0;
    while first < n {
        let count = images_per_step.min(n - first);
        let rows = count * image_rows;
        let cols = &mut cols[..rows * k_len];
        let x_step = &x[first * image_in..(first + count) * image_in];
        im2col(x_step, count, h, w, c_in, win, cols);
        let cols = &*cols;
        y[first * image_rows * c_out..][..rows * c_out]
            .par_chunks_mut((PRODUCT_ROWS * c_out).max(1))
            .enumerate()
            .for_each(|(t, y)| {
                let len = y.len() / c_out;
                let a =
                    MatRef::row_major(&cols[t * PRODUCT_ROWS * k_len..][..len * k_len], len, k_len);
                conv.for_each_weight_panel(|c0, panel| {
                    let out = MatMut::new(&mut y[c0..], len, panel.cols(), c_out, 1);
                    gemm_unpacked(a, panel, out, false);
                });
            });
        first += count;
    }
}

/// Floats of the partial sums [`sum_over_rows`] keeps for `rows` rows of an
/// `m × n` product (none when one task takes them all).
fn sum_partials_len(rows: usize, m: usize, n: usize) -> usize {
    match rows.div_ceil(TAP_ROWS) {
        0 | 1 => 0,
        tasks => tasks * m * n,
    }
}

/// `dst ← aᵀ·b` (or `dst += aᵀ·b` with `accumulate`) for row-major `a` (`rows × m`)
/// and `b` (`rows × n`), `dst` row-major `m × n`: a weight gradient, summed over the
/// batch's pixels. The rows split into [`TAP_ROWS`]-row tasks, each task's product in
/// `partials` ([`sum_partials_len`] floats), added in task order: the same sums on any
/// number of threads. Each task's product is itself split into blocks of `dst` rows
/// ([`dst_block_rows`]), so that a transition's few pixels (DenseNet-121's 14x14 at
/// batch 16: one task) still keep both threads busy; a block changes no element's sum.
fn sum_over_rows(
    a: &[f32],
    b: &[f32],
    (rows, m, n): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    partials: &mut [f32],
) {
    let tasks = rows.div_ceil(TAP_ROWS);
    let block = dst_block_rows(tasks, m);
    // Rows `r0..r0 + len` of the product, its `dst` rows from `i0` (as many as `dst` has).
    let product = |r0: usize, len: usize, i0: usize, dst: &mut [f32], accumulate: bool| {
        let rows_out = dst.len() / n.max(1);
        let a = MatRef::new(&a[r0 * m + i0..], len, rows_out, m, 1).t();
        let b = MatRef::row_major(&b[r0 * n..][..len * n], len, n);
        gemm_unpacked(a, b, MatMut::row_major(dst, rows_out, n), accumulate);
    };
    let blocks = |dst: &mut [f32], r0: usize, len: usize, accumulate: bool| {
        dst.par_chunks_mut((block * n).max(1))
            .enumerate()
            .for_each(|(j, dst)| product(r0, len, j * block, dst, accumulate));
    };
    if tasks <= 1 {
        return blocks(&mut dst[..m * n], 0, rows, accumulate);
    }
    let partials = &mut partials[..tasks * m * n];
    partials
        .par_chunks_mut((m * n).max(1))
        .enumerate()
        .for_each(|(t, partial)| {
            let r0 = t * TAP_ROWS;
            blocks(partial, r0, TAP_ROWS.min(rows - r0), false);
        });
    let dst = &mut dst[..m * n];
    if !accumulate {
        dst.fill(0.0);
    }
    for partial in partials.chunks_exact((m * n).max(1)) {
        dst.iter_mut().zip(partial).for_each(|(d, &p)| *d += p);
    }
}

/// Rows of `dst` one job of [`sum_over_rows`] computes when its `rows` make `tasks`
/// tasks: enough blocks for about eight jobs, none under 64 rows, a multiple of 16.
fn dst_block_rows(tasks: usize, m: usize) -> usize {
    let blocks = (8 / tasks.max(1)).clamp(1, (m / 64).max(1));
    m.div_ceil(blocks).next_multiple_of(16)
}

/// Most rows of `c` one task of [`product_by_rows`] computes.
const PRODUCT_ROWS: usize = 512;

/// `c ← a·b` for row-major `a` (`rows × k`) and `c` (`rows × n`), `b` a `k × n` view
/// with unit-stride rows: an input gradient `dY·Wᵀ`, its rows split into tasks of equal
/// size (up to [`PRODUCT_ROWS`], a multiple of 8) run in parallel (each row's value does
/// not depend on the split).
fn product_by_rows(a: &[f32], b: MatRef<'_>, c: &mut [f32]) {
    let (k, n) = (b.rows(), b.cols());
    let rows = c.len().checked_div(n).unwrap_or(0);
    let per_task = rows
        .div_ceil(rows.div_ceil(PRODUCT_ROWS).max(1))
        .next_multiple_of(8);
    c[..rows * n]
        .par_chunks_mut((per_task * n).max(1))
        .enumerate()
        .for_each(|(t, c)| {
            let len = c.len() / n;
            let a = MatRef::row_major(&a[t * per_task * k..][..len * k], len, k);
            gemm_unpacked(a, b, MatMut::row_major(c, len, n), false);
        });
}

/// The first `len` floats of `v`, grown (with zeros) if it is shorter.
fn take(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

#[cold]
#[inline(never)]
#[track_caller]
fn shape_mismatch(conv: &Conv2d, x: [usize; 4], dy_len: usize, dx_len: Option<usize>) -> ! {
    let (oh, ow) = conv.output_size(x[1], x[2]);
    panic!(
        "conv2d_backward: the convolution takes {} channels and gives {}; x is {x:?} (NHWC), \
         so dy needs n·oh·ow·c_out = {} elements (got {dy_len}) and dx n·h·w·c_in = {} \
         (got {dx_len:?})",
        conv.c_in(),
        conv.c_out(),
        x[0] * oh * ow * conv.c_out(),
        x[0] * x[1] * x[2] * x[3],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Conv2dConfig;
    use crate::train::check::{assert_grad_close, dot, numeric_grad, values};

    fn conv(
        kh: usize,
        kw: usize,
        c_in: usize,
        c_out: usize,
        stride: usize,
        padding: usize,
    ) -> Conv2d {
        let weight =
            Array4::from_shape_vec((kh, kw, c_in, c_out), values(kh * kw * c_in * c_out, 7))
                .unwrap();
        Conv2d::new(weight, Conv2dConfig { stride, padding }).unwrap()
    }

    /// The products of a weight gradient and an input gradient, split into blocks of
    /// rows for the threads: against an `f64` product, and bit for bit against one
    /// unsplit product per row task (the blocks change no element's sum).
    #[test]
    fn split_products_match_unsplit_ones() {
        // One row task with blocks of `dst` rows (a 14x14 transition), two tasks with
        // partials and a partial block, and rows fewer than a block.
        for (rows, m, n) in [(784, 1024, 48), (TAP_ROWS + 700, 150, 33), (40, 70, 20)] {
            let (a, b) = (values(rows * m, 1), values(rows * n, 2));
            let tasks = rows.div_ceil(TAP_ROWS);
            let mut partials = vec![0.0; sum_partials_len(rows, m, n)];
            let mut dw = vec![f32::NAN; m * n];
            sum_over_rows(&a, &b, (rows, m, n), &mut dw, false, &mut partials);
            let mut unsplit = vec![0.0f32; m * n];
            for t in 0..tasks {
                let (r0, len) = (t * TAP_ROWS, TAP_ROWS.min(rows - t * TAP_ROWS));
                let mut part = vec![0.0f32; m * n];
                gemm_unpacked(
                    MatRef::row_major(&a[r0 * m..][..len * m], len, m).t(),
                    MatRef::row_major(&b[r0 * n..][..len * n], len, n),
                    MatMut::row_major(&mut part, m, n),
                    false,
                );
                if tasks == 1 {
                    unsplit = part;
                } else {
                    unsplit.iter_mut().zip(&part).for_each(|(u, &p)| *u += p);
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dw), bits(&unsplit), "({rows}, {m}, {n}): dW");
            for i in (0..m).step_by(7) {
                for j in (0..n).step_by(5) {
                    let exact: f64 = (0..rows)
                        .map(|r| f64::from(a[r * m + i]) * f64::from(b[r * n + j]))
                        .sum();
                    let tol = 1e-4 * (rows as f64).sqrt();
                    let got = f64::from(dw[i * n + j]);
                    assert!((got - exact).abs() < tol, "({rows}, {m}, {n}) [{i}][{j}]");
                }
            }
            // The input gradient's product, in row tasks, against one call.
            let w = values(n * m, 3);
            let mut dx = vec![f32::NAN; rows * m];
            product_by_rows(&b, MatRef::row_major(&w, n, m), &mut dx);
            let mut whole = vec![0.0; rows * m];
            gemm_unpacked(
                MatRef::row_major(&b, rows, n),
                MatRef::row_major(&w, n, m),
                MatMut::row_major(&mut whole, rows, m),
                false,
            );
            assert_eq!(bits(&dx), bits(&whole), "({rows}, {m}, {n}): dX");
        }
    }

    /// The weight gradient alone (the ImageNet stem's: 7x7, stride 2) by bands of
    /// output rows, several tasks an image and several bands a task, against plain
    /// loops in `f64`.
    #[test]
    fn the_weight_gradient_alone_by_bands_matches_plain_loops() {
        let layer = conv(7, 7, 3, 10, 2, 3);
        let (n, h, w) = (2, 140, 137);
        let (oh, ow) = layer.output_size(h, w);
        assert!(oh * ow > BAND_TASK_PIXELS && ow < BAND_PIXELS);
        let x = values(n * h * w * 3, 8);
        let dy = values(n * oh * ow * 10, 9);
        let x4 = ArrayView4::from_shape((n, h, w, 3), &x).unwrap();
        let dw = conv2d_backward_from(
            &layer,
            x4.into(),
            &dy,
            None,
            &mut Vec::new(),
            Some(Vec::new()),
        )
        .unwrap();
        for (ky, kx, ci, co) in [(0, 0, 0, 0), (3, 3, 1, 4), (6, 2, 2, 9), (1, 6, 0, 7)] {
            let mut want = 0.0f64;
            for b in 0..n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (iy, ix) = ((oy * 2 + ky) as isize - 3, (ox * 2 + kx) as isize - 3);
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            let xv = x[((b * h + iy as usize) * w + ix as usize) * 3 + ci];
                            let g = dy[((b * oh + oy) * ow + ox) * 10 + co];
                            want += f64::from(xv) * f64::from(g);
                        }
                    }
                }
            }
            let got = f64::from(dw[[ky, kx, ci, co]]);
            assert!(
                (got - want).abs() < 1e-3 * want.abs().max(1.0),
                "[{ky}][{kx}][{ci}][{co}]: {got} vs {want}"
            );
        }
    }

    /// The 3x3 paths (flipped-kernel input gradient, per-tap weight gradient over
    /// several row tasks) against plain loops in `f64`, on a batch whose padded grid is
    /// larger than one task.
    #[test]
    fn same_convolutions_match_plain_loops_across_row_tasks() {
        let (n, h, w, c_in, c_out) = (2, 70, 66, 5, 3);
        assert!(n * (h + 2) * (w + 2) > TAP_ROWS);
        let layer = conv(3, 3, c_in, c_out, 1, 1);
        let x = Array4::from_shape_vec((n, h, w, c_in), values(n * h * w * c_in, 3)).unwrap();
        let dy = values(n * h * w * c_out, 5);
        let mut dx = vec![f32::NAN; n * h * w * c_in];
        let dw = conv2d_backward(&layer, x.view(), &dy, Some(&mut dx), &mut Vec::new());
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let (want_dw, want_dx) = plain_same_3x3_gradients(&layer, &x64, &dy, (n, h, w));
        assert_close(dw.as_slice().unwrap(), &want_dw, "dW");
        assert_close(&dx, &want_dx, "dX");
    }

    /// A stride-1, padding-1 3x3's weight and input gradients by plain loops in `f64`:
    /// `x` is `(n, h, w, c_in)` NHWC, `dy` `(n, h, w, c_out)`.
    fn plain_same_3x3_gradients(
        layer: &Conv2d,
        x: &[f64],
        dy: &[f32],
        (n, h, w): (usize, usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let (c_in, c_out, wt) = (layer.c_in(), layer.c_out(), layer.weight());
        let (mut want_dw, mut want_dx) = (vec![0.0f64; 9 * c_in * c_out], vec![0.0f64; x.len()]);
        for b in 0..n {
            for y in 0..h {
                for xx in 0..w {
                    for (ky, kx) in (0..3).flat_map(|a| (0..3).map(move |c| (a, c))) {
                        let (iy, ix) = (y + ky, xx + kx); // padded coordinates
                        if iy < 1 || ix < 1 || iy > h || ix > w {
                            continue;
                        }
                        let (iy, ix) = (iy - 1, ix - 1);
                        for ci in 0..c_in {
                            for co in 0..c_out {
                                let g = f64::from(dy[((b * h + y) * w + xx) * c_out + co]);
                                let xi = ((b * h + iy) * w + ix) * c_in + ci;
                                want_dw[((ky * 3 + kx) * c_in + ci) * c_out + co] += x[xi] * g;
                                want_dx[xi] += f64::from(wt[[ky, kx, ci, co]]) * g;
                            }
                        }
                    }
                }
            }
        }
        (want_dw, want_dx)
    }

    /// Every value within `1e-5` of the largest reference magnitude (at least 1).
    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (g, e)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - e).abs() <= 1e-5 * scale,
                "{what}[{i}]: {g} vs {e}"
            );
        }
    }

    /// DenseNet-BC's 3x3 (48 → 12) given its input before BN-ReLU, against plain loops
    /// in `f64`: through the per-tap products where AVX-512 runs at full width, through
    /// the Winograd weight gradient where it runs at half width (Zen 4), the portable
    /// path elsewhere.
    #[test]
    fn a_bc_3x3_before_bn_relu_matches_plain_loops() {
        let (n, h, w, c_in, c_out) = (3, 8, 8, 48, 12);
        let layer = conv(3, 3, c_in, c_out, 1, 1);
        let z = values(n * h * w * c_in, 11);
        let (scale, shift) = (values(c_in, 12), values(c_in, 13));
        let dy = values(n * h * w * c_out, 14);
        let mut dx = vec![f32::NAN; n * h * w * c_in];
        let input = ConvInput::BnRelu {
            z: &z,
            dims: [n, h, w, c_in],
            scale: &scale,
            shift: &shift,
        };
        let storage = Some(Vec::new());
        let dw = conv2d_backward_from(&layer, input, &dy, Some(&mut dx), &mut Vec::new(), storage)
            .unwrap();
        // The normed input as the runtime forms it (multiply, then add, in `f32`).
        let normed: Vec<f64> = z
            .iter()
            .enumerate()
            .map(|(i, &v)| f64::from((v * scale[i % c_in] + shift[i % c_in]).max(0.0)))
            .collect();
        assert!(normed.contains(&0.0) && normed.iter().any(|&v| v > 0.0));
        let (want_dw, _) = plain_same_3x3_gradients(&layer, &normed, &dy, (n, h, w));
        assert_close(dw.as_slice().unwrap(), &want_dw, "dW");
    }

    /// On a 2x2 map a tap whose every term is zero (the input's channel zero, as after
    /// a ReLU, at the one pixel the tap reads in each image) gets exactly zero, as in
    /// torch: the per-tap products, not Winograd's transforms, on maps this small.
    #[test]
    fn a_tap_with_only_zero_terms_on_a_tiny_map_gets_exactly_zero() {
        let (n, c_in, c_out) = (2, 32, 32);
        let layer = conv(3, 3, c_in, c_out, 1, 1);
        let mut x = Array4::from_shape_vec((n, 2, 2, c_in), values(n * 4 * c_in, 21)).unwrap();
        // Channel 0 zero at pixel (0, 0): the top-left tap reads it alone (for the
        // output at (1, 1)); the other pixels are all that the other taps see there.
        for b in 0..n {
            x[[b, 0, 0, 0]] = 0.0;
        }
        let dy = values(n * 4 * c_out, 22);
        let dw = conv2d_backward(&layer, x.view(), &dy, None, &mut Vec::new());
        for co in 0..c_out {
            assert_eq!(dw[[0, 0, 0, co]].to_bits(), 0, "dW[0][0][0][{co}]");
        }
        assert!(dw.iter().filter(|&&v| v != 0.0).count() > dw.len() / 2);
    }

    /// The input gradient alone (a frozen convolution's) is the full backward's, bit
    /// for bit, for a 1x1 and a strided, padded 3x3.
    /// The batch given already in the padded grid (as the training step's BN2-ReLU
    /// writes it) gives the very bits of the batch given plainly. (The portable path,
    /// which reads the grid's interior, is tested in `tests/portable.rs`: the switch is
    /// process-wide.)
    #[test]
    fn an_input_before_bn_relu_gives_the_normed_inputs_gradients() {
        // A 3x3 given `z` and BN-ReLU's scale and shift against the same conv given
        // relu(z·scale + shift): the same bits, through the per-tap products (5 outputs)
        // and through the Winograd weight gradient (32 outputs, even map; where the CPU
        // has AVX-512F).
        for (n, h, w, c_in, c_out) in [(3, 9, 7, 16, 5), (2, 8, 6, 16, 32)] {
            let layer = conv(3, 3, c_in, c_out, 1, 1);
            let z = values(n * h * w * c_in, 7);
            let (scale, shift) = (values(c_in, 9), values(c_in, 10));
            let mut normed = Array4::zeros((n, h, w, c_in));
            let rows = normed.as_slice_mut().unwrap().chunks_exact_mut(c_in);
            for (src, dst) in z.chunks_exact(c_in).zip(rows) {
                crate::kernels::elementwise::scale_shift_relu(src, &scale, &shift, dst);
            }
            assert!(normed.iter().any(|&v| v == 0.0) && normed.iter().any(|&v| v > 0.0));
            let dy = values(n * h * w * c_out, 8);
            let run = |input: ConvInput<'_>| {
                let mut dx = vec![f32::NAN; n * h * w * c_in];
                let dw = conv2d_backward_from(
                    &layer,
                    input,
                    &dy,
                    Some(&mut dx),
                    &mut Vec::new(),
                    Some(Vec::new()),
                )
                .unwrap();
                (dw, dx)
            };
            let (dw_plain, dx_plain) = run(normed.view().into());
            let (dw_bn, dx_bn) = run(ConvInput::BnRelu {
                z: &z,
                dims: [n, h, w, c_in],
                scale: &scale,
                shift: &shift,
            });
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(dw_plain.as_slice().unwrap()),
                bits(dw_bn.as_slice().unwrap()),
                "{c_out} outputs: weight gradients"
            );
            assert_eq!(
                bits(&dx_plain),
                bits(&dx_bn),
                "{c_out} outputs: input gradients"
            );
        }
    }

    /// The work after the input gradient sees every chunk of images once, in order,
    /// with exactly the input gradient's rows (which it leaves as computed), on the
    /// flipped-kernel path (a 3x3, chunked as it is computed; 32 outputs: Winograd
    /// where the CPU has AVX-512F), a 1x1 and a strided 3x3 (after the whole).
    #[test]
    fn work_after_the_input_gradient_sees_each_chunk_of_its_rows() {
        for (layer, (n, h, w)) in [
            (conv(3, 3, 32, 16, 1, 1), (9, 6, 4)),
            (conv(3, 3, 32, 32, 1, 1), (5, 14, 14)),
            (conv(1, 1, 5, 3, 1, 0), (6, 3, 3)),
            (conv(3, 3, 4, 6, 2, 1), (5, 7, 6)),
        ] {
            let c_in = layer.c_in();
            let (oh, ow) = layer.output_size(h, w);
            let x = Array4::from_shape_vec((n, h, w, c_in), values(n * h * w * c_in, 3)).unwrap();
            let dy = values(n * oh * ow * layer.c_out(), 4);
            let mut expected = vec![0.0; x.len()];
            let plain = conv2d_backward_from(
                &layer,
                x.view().into(),
                &dy,
                Some(&mut expected),
                &mut Vec::new(),
                Some(Vec::new()),
            );
            let dims = (n, h, w, c_in);
            let (images, chunks) = (dx_chunk_images(dims), dx_chunks(dims));
            assert!(chunks > 1, "{dims:?} makes one chunk");
            // Per chunk: its first row, its rows, and its values' sum.
            let (mut out, mut part) = (vec![f64::NAN; 3 * chunks], vec![0.0f32; chunks]);
            let f = |r: std::ops::Range<usize>, d: &[f32], out: &mut [f64], _: &mut [f32]| {
                assert_eq!(d.len(), r.len() * c_in);
                out[0] = r.start as f64;
                out[1] = r.len() as f64;
                out[2] = d.iter().map(|&v| f64::from(v)).sum();
            };
            let after = AfterDx {
                f: &f,
                out: &mut out,
                out_width: 3,
                part: &mut part,
                part_width: 1,
            };
            let mut dx = vec![f32::NAN; x.len()];
            let mut scratch = Vec::new();
            let dw = conv2d_backward_then(
                &layer,
                x.view().into(),
                &dy,
                &mut dx,
                &mut scratch,
                Some(Vec::new()),
                after,
            );
            assert_eq!(dw, plain, "{dims:?}: weight gradients");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dx), bits(&expected), "{dims:?}: input gradients");
            for (i, o) in out.chunks_exact(3).enumerate() {
                let first = i * images * h * w;
                let rows = (n * h * w - first).min(images * h * w);
                let sum: f64 = expected[first * c_in..(first + rows) * c_in]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum();
                assert_eq!(
                    (o[0], o[1], o[2]),
                    (first as f64, rows as f64, sum),
                    "{dims:?} chunk {i}"
                );
            }
        }
    }

    #[test]
    fn the_input_gradient_alone_is_the_full_backwards() {
        for layer in [conv(1, 1, 5, 3, 1, 0), conv(3, 3, 4, 6, 2, 1)] {
            let (n, h, w) = (2, 7, 6);
            let (oh, ow) = layer.output_size(h, w);
            let x = Array4::from_shape_vec(
                (n, h, w, layer.c_in()),
                values(n * h * w * layer.c_in(), 3),
            )
            .unwrap();
            let dy = values(n * oh * ow * layer.c_out(), 4);
            let (mut full, mut alone) = (vec![0.0; x.len()], vec![1.0; x.len()]);
            let mut scratch = Vec::new();
            conv2d_backward(&layer, x.view(), &dy, Some(&mut full), &mut scratch);
            conv2d_backward_from(
                &layer,
                x.view().into(),
                &dy,
                Some(&mut alone),
                &mut Vec::new(),
                None,
            );
            assert_eq!(full, alone);
        }
    }

    /// `L = Σ r·conv(x)`: checks ∂L/∂x and ∂L/∂W against central differences.
    fn check(n: usize, h: usize, w: usize, layer: Conv2d) {
        let c_in = layer.c_in();
        let (oh, ow) = layer.output_size(h, w);
        let x = values(n * h * w * c_in, 1);
        let r = values(n * oh * ow * layer.c_out(), 2);
        let x4 = ArrayView4::from_shape((n, h, w, c_in), &x).unwrap();
        let mut dx = vec![f32::NAN; x.len()];
        let dw = conv2d_backward(&layer, x4, &r, Some(&mut dx), &mut Vec::new());

        let numeric_dx = numeric_grad(&x, 1e-2, |x| {
            let x4 = ArrayView4::from_shape((n, h, w, c_in), x).unwrap();
            dot(&r, layer.forward(x4).as_slice().unwrap())
        });
        assert_grad_close("dx", &dx, &numeric_dx, 1e-3);

        let w0 = layer.weight().as_standard_layout().into_owned();
        let numeric_dw = numeric_grad(w0.as_slice().unwrap(), 1e-2, |wv| {
            let weight = Array4::from_shape_vec(w0.dim(), wv.to_vec()).unwrap();
            let moved = Conv2d::new(weight, layer.config()).unwrap();
            dot(&r, moved.forward(x4).as_slice().unwrap())
        });
        assert_eq!(dw.dim(), w0.dim());
        assert_grad_close("dw", dw.as_slice().unwrap(), &numeric_dw, 1e-3);
    }

    #[test]
    fn conv3x3_same_padding_matches_finite_differences() {
        check(2, 5, 4, conv(3, 3, 3, 4, 1, 1));
    }

    #[test]
    fn conv7x7_stride2_pad3_matches_finite_differences() {
        check(1, 9, 8, conv(7, 7, 2, 3, 2, 3));
    }

    #[test]
    fn conv1x1_pointwise_matches_finite_differences() {
        check(2, 3, 3, conv(1, 1, 5, 3, 1, 0));
    }

    #[test]
    fn rectangular_strided_kernels_match_finite_differences() {
        check(2, 7, 6, conv(3, 2, 2, 2, 2, 0));
        check(1, 5, 5, conv(1, 1, 3, 2, 2, 1));
    }

    #[test]
    fn chunked_batches_match_one_image_at_a_time() {
        // 4 images of 40x40 with a 3x3 kernel on 300 channels exceed SCRATCH_LIMIT, so
        // the batch is split; dW must equal the sum of the per-image gradients.
        let (n, h, w) = (4, 40, 40);
        let layer = conv(3, 3, 300, 2, 1, 1);
        assert!(h * w * 9 * 300 * n > SCRATCH_LIMIT);
        let x = values(n * h * w * 300, 3);
        let dy = values(n * h * w * 2, 4);
        let x4 = ArrayView4::from_shape((n, h, w, 300), &x).unwrap();
        let mut dx = vec![0.0; x.len()];
        let dw = conv2d_backward(&layer, x4, &dy, Some(&mut dx), &mut Vec::new());
        let mut sum = Array4::<f32>::zeros(dw.dim());
        let image = h * w * 300;
        for b in 0..n {
            let xb = ArrayView4::from_shape((1, h, w, 300), &x[b * image..][..image]).unwrap();
            let mut dxb = vec![0.0; image];
            let dyb = &dy[b * h * w * 2..][..h * w * 2];
            sum += &conv2d_backward(&layer, xb, dyb, Some(&mut dxb), &mut Vec::new());
            for (a, e) in dx[b * image..][..image].iter().zip(&dxb) {
                assert!(
                    (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "image {b}: {a} vs {e}"
                );
            }
        }
        for (a, b) in dw.iter().zip(&sum) {
            assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    #[should_panic(expected = "conv2d_backward")]
    fn wrong_dy_length_panics() {
        let layer = conv(3, 3, 1, 1, 1, 1);
        let x = [0.0; 4];
        let x4 = ArrayView4::from_shape((1, 2, 2, 1), &x).unwrap();
        let _ = conv2d_backward(&layer, x4, &[0.0; 3], None, &mut Vec::new());
    }
}
