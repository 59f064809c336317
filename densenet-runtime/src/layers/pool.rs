//! Pooling over NHWC tensors: windowed max and average, and global pools.
//!
//! Each output pixel combines whole channel vectors (`c` contiguous floats) of the
//! input pixels in its window, so the inner loops run over contiguous channels and
//! vectorise. Large outputs are split over rayon's threads by output image row.

use crate::parallel::prelude::*;
use ndarray::{Array2, Array4, ArrayView4};

use crate::kernels::elementwise::max_into;
use crate::kernels::im2col::Window;

/// Outputs with at least this many elements are computed by rayon's threads.
const PARALLEL_THRESHOLD: usize = 1 << 15;

/// Which reduction a windowed pool applies.
#[derive(Clone, Copy)]
enum Reduce {
    Max,
    Avg,
}

/// Max pooling with a `kernel × kernel` window, NHWC in and out.
///
/// Padding acts as −∞ (torch semantics: padded positions never win), output size in
/// floor mode. torch requires `padding <= kernel / 2`, which guarantees every window
/// holds an input pixel; a window that holds none here yields −∞. NaN propagates.
///
/// # Panics
///
/// If `kernel` or `stride` is 0.
pub fn max_pool2d(
    x: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Array4<f32> {
    pool(x, kernel, stride, padding, Reduce::Max)
}

/// Average pooling with a `kernel × kernel` window, no padding, floor mode: torch's
/// `AvgPool2d(kernel, stride)` (DenseNet's transitions use `AvgPool2d(2, 2)`).
///
/// # Panics
///
/// If `kernel` or `stride` is 0.
pub fn avg_pool2d(x: ArrayView4<'_, f32>, kernel: usize, stride: usize) -> Array4<f32> {
    pool(x, kernel, stride, 0, Reduce::Avg)
}

/// Mean over all pixels of each image and channel: `(N, H, W, C)` → `(N, C)`.
/// An image without pixels gives NaN, as torch.
pub fn global_avg_pool(x: ArrayView4<'_, f32>) -> Array2<f32> {
    let (n, h, w, c) = x.dim();
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    let mut out = Array2::zeros((n, c));
    if c == 0 {
        return out;
    }
    let pixels = h * w;
    let count = pixels as f32;
    for (image, acc) in x.chunks_exact((pixels * c).max(1)).zip(
        out.as_slice_mut()
            .expect("a new array is contiguous")
            .chunks_exact_mut(c),
    ) {
        for pixel in image.chunks_exact(c) {
            for (a, &v) in acc.iter_mut().zip(pixel) {
                *a += v;
            }
        }
        acc.iter_mut().for_each(|a| *a /= count);
    }
    if pixels == 0 {
        out.fill(f32::NAN);
    }
    out
}

/// Maximum over all pixels of each image and channel: `(N, H, W, C)` → `(N, C)`.
/// An image without pixels gives −∞. NaN propagates.
pub fn global_max_pool(x: ArrayView4<'_, f32>) -> Array2<f32> {
    let (n, h, w, c) = x.dim();
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    let mut out = Array2::from_elem((n, c), f32::NEG_INFINITY);
    if c == 0 || h * w == 0 {
        return out;
    }
    for (image, acc) in x.chunks_exact(h * w * c).zip(
        out.as_slice_mut()
            .expect("a new array is contiguous")
            .chunks_exact_mut(c),
    ) {
        for pixel in image.chunks_exact(c) {
            max_into(acc, pixel);
        }
    }
    out
}

#[cold]
#[inline(never)]
#[track_caller]
fn invalid_window(kernel: usize, stride: usize) -> ! {
    panic!("pooling: kernel and stride must be at least 1; got kernel={kernel}, stride={stride}");
}

#[track_caller]
fn pool(
    x: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    padding: usize,
    reduce: Reduce,
) -> Array4<f32> {
    if kernel == 0 || stride == 0 {
        invalid_window(kernel, stride);
    }
    let win = Window {
        kernel_h: kernel,
        kernel_w: kernel,
        stride,
        padding,
    };
    let (n, h, w, c) = x.dim();
    let (oh, ow) = win.output_size(h, w);
    let mut out = Array4::zeros((n, oh, ow, c));
    let out_row_len = ow * c;
    if out_row_len == 0 || n * oh == 0 {
        return out;
    }
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    let image_len = h * w * c;
    let out_slice = out.as_slice_mut().expect("a new array is contiguous");
    let row = |(r, dst): (usize, &mut [f32])| {
        let (b, oy) = (r / oh, r % oh);
        let image = &x[b * image_len..(b + 1) * image_len];
        pool_row(image, oy, h, w, c, win, reduce, dst, c);
    };
    if out_slice.len() >= PARALLEL_THRESHOLD {
        out_slice
            .par_chunks_mut(out_row_len)
            .enumerate()
            .for_each(row);
    } else {
        out_slice.chunks_mut(out_row_len).enumerate().for_each(row);
    }
    out
}

/// Windowed max (`max`) or average pooling of the contiguous NHWC map `x`
/// (`n, h, w, c`) into `out`, `n·oh·ow` pixels `out_stride` apart (the first `c` floats
/// of each written): e.g. straight into a dense block's concatenation buffer. The same
/// arithmetic as [`max_pool2d`] / [`avg_pool2d`], without allocating.
///
/// # Panics
///
/// If `kernel` or `stride` is 0, `out_stride < c`, or a slice does not fit the shapes.
#[allow(clippy::too_many_arguments)]
pub fn pool2d_into(
    x: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
    max: bool,
    out: &mut [f32],
    out_stride: usize,
) {
    if kernel == 0 || stride == 0 {
        invalid_window(kernel, stride);
    }
    let win = Window {
        kernel_h: kernel,
        kernel_w: kernel,
        stride,
        padding,
    };
    let (oh, ow) = win.output_size(h, w);
    assert!(
        out_stride >= c && x.len() == n * h * w * c && out.len() == n * oh * ow * out_stride,
        "pool2d_into: shapes do not fit the slices"
    );
    let out_row_len = ow * out_stride;
    if out_row_len == 0 || n * oh == 0 {
        return;
    }
    let reduce = if max { Reduce::Max } else { Reduce::Avg };
    let image_len = h * w * c;
    let row = |(r, dst): (usize, &mut [f32])| {
        let (b, oy) = (r / oh, r % oh);
        let image = &x[b * image_len..(b + 1) * image_len];
        pool_row(image, oy, h, w, c, win, reduce, dst, out_stride);
    };
    if n * oh * ow * c >= PARALLEL_THRESHOLD {
        out.par_chunks_mut(out_row_len).enumerate().for_each(row);
    } else {
        out.chunks_mut(out_row_len).enumerate().for_each(row);
    }
}

/// Global average (or, with `max`, max) pool of the contiguous NHWC map `x`
/// (`n` images of `pixels × c`) into `out` (`n × c`): the arithmetic of
/// [`global_avg_pool`] / [`global_max_pool`], without allocating.
///
/// # Panics
///
/// If `x.len() != n·pixels·c` or `out.len() != n·c`.
pub fn global_pool_into(x: &[f32], n: usize, pixels: usize, c: usize, max: bool, out: &mut [f32]) {
    assert!(
        x.len() == n * pixels * c && out.len() == n * c,
        "global_pool_into: shapes do not fit the slices"
    );
    if c == 0 {
        return;
    }
    for (b, acc) in out.chunks_exact_mut(c).enumerate() {
        let image = &x[b * pixels * c..(b + 1) * pixels * c];
        if max {
            acc.fill(f32::NEG_INFINITY);
            for pixel in image.chunks_exact(c) {
                max_into(acc, pixel);
            }
        } else {
            acc.fill(0.0);
            for pixel in image.chunks_exact(c) {
                for (a, &v) in acc.iter_mut().zip(pixel) {
                    *a += v;
                }
            }
            let count = pixels as f32;
            acc.iter_mut().for_each(|a| *a /= count);
            if pixels == 0 {
                acc.fill(f32::NAN);
            }
        }
    }
}

/// The in-bounds kernel taps `lo..hi` for output coordinate `o` (see im2col).
fn taps(o: usize, k: usize, stride: usize, padding: usize, len: usize) -> (usize, usize) {
    let start = o * stride;
    let lo = padding.saturating_sub(start).min(k);
    let hi = (len + padding).saturating_sub(start).min(k).max(lo);
    (lo, hi)
}

/// Computes output row `oy` of one image (`image` is `h × w × c`) into `dst` (`ow`
/// pixels, `dst_stride` apart, of which the first `c` floats are written).
#[allow(clippy::too_many_arguments)]
fn pool_row(
    image: &[f32],
    oy: usize,
    h: usize,
    w: usize,
    c: usize,
    win: Window,
    reduce: Reduce,
    dst: &mut [f32],
    dst_stride: usize,
) {
    let Window {
        kernel_h: k,
        stride,
        padding,
        ..
    } = win;
    let (ky_lo, ky_hi) = taps(oy, k, stride, padding, h);
    for (ox, acc) in dst.chunks_exact_mut(dst_stride).enumerate() {
        let acc = &mut acc[..c];
        let (kx_lo, kx_hi) = taps(ox, k, stride, padding, w);
        match reduce {
            Reduce::Max => acc.fill(f32::NEG_INFINITY),
            Reduce::Avg => acc.fill(0.0),
        }
        for ky in ky_lo..ky_hi {
            let iy = oy * stride + ky - padding;
            for kx in kx_lo..kx_hi {
                let ix = ox * stride + kx - padding;
                let pixel = &image[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                match reduce {
                    Reduce::Max => max_into(acc, pixel),
                    Reduce::Avg => acc.iter_mut().zip(pixel).for_each(|(a, &v)| *a += v),
                }
            }
        }
        if let Reduce::Avg = reduce {
            // No padding, so every window holds exactly k·k pixels (torch divides by
            // k·k also with padding, as count_include_pad defaults to true).
            let count = (k * k) as f32;
            acc.iter_mut().for_each(|a| *a /= count);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Golden values from `tools/layer_reference.py` (numpy float64 from the definition,
    //! cross-checked against torch), in NCHW order; `pattern` is the script's
    //! `((i·a) % m − m // 2) / m` over the flat NCHW index.

    use super::*;
    use ndarray::Array;

    fn pattern(len: usize, a: usize, m: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * a % m) as f32 - (m / 2) as f32) / m as f32)
            .collect()
    }

    /// `pattern(shape, 7, 11) + offset` in NCHW, permuted to NHWC.
    fn input(shape: (usize, usize, usize, usize), offset: f32) -> Array4<f32> {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        let data = pattern(len, 7, 11)
            .into_iter()
            .map(|v| v + offset)
            .collect();
        Array::from_shape_vec(shape, data)
            .unwrap()
            .permuted_axes([0, 2, 3, 1])
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

    fn assert_close_nchw(actual: &Array4<f32>, expected: &[f32]) {
        assert_close(
            actual.view().permuted_axes([0, 3, 1, 2]).iter().copied(),
            expected,
        );
    }

    // x = pattern((1, 2, 7, 7), 7, 11) - 0.25
    // y = F.max_pool2d(x, 3, stride=2, padding=1)
    const MAX_POOL_ODD: [f32; 32] = [
        -0.06818181,
        0.20454547,
        0.20454547,
        0.113636374,
        0.20454547,
        0.113636374,
        0.20454547,
        0.02272728,
        0.20454547,
        0.20454547,
        0.20454547,
        -0.06818181,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.113636374,
        0.20454547,
        0.113636374,
        0.113636374,
        0.02272728,
        0.20454547,
        0.113636374,
        0.20454547,
        -0.06818181,
        0.20454547,
        0.20454547,
        0.113636374,
        0.20454547,
        0.113636374,
        0.113636374,
        0.02272728,
    ];

    // x = pattern((1, 2, 8, 8), 7, 11) - 0.25
    // y = F.max_pool2d(x, 3, stride=2, padding=1)
    const MAX_POOL_EVEN: [f32; 32] = [
        0.02272728,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.113636374,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        -0.06818181,
        0.20454547,
        0.113636374,
        0.20454547,
        0.113636374,
        0.02272728,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.113636374,
        0.113636374,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.20454547,
        0.113636374,
    ];

    #[test]
    fn max_pool_3x3_stride2_pad1_matches_torch_at_odd_and_even_sizes() {
        let y = max_pool2d(input((1, 2, 7, 7), -0.25).view(), 3, 2, 1);
        assert_eq!(y.dim(), (1, 4, 4, 2));
        assert_close_nchw(&y, &MAX_POOL_ODD);
        let y = max_pool2d(input((1, 2, 8, 8), -0.25).view(), 3, 2, 1);
        assert_eq!(y.dim(), (1, 4, 4, 2));
        assert_close_nchw(&y, &MAX_POOL_EVEN);
    }

    // x = pattern((1, 2, 7, 7), 7, 11)
    // y = F.avg_pool2d(x, 2, stride=2)
    const AVG_POOL_ODD: [f32; 18] = [
        -0.1590909,
        0.11363637,
        -0.11363637,
        0.0,
        0.022727273,
        0.045454547,
        0.1590909,
        -0.06818182,
        -0.045454547,
        0.022727273,
        0.045454547,
        0.06818182,
        -0.06818182,
        -0.045454547,
        -0.022727273,
        -0.1590909,
        0.11363637,
        -0.11363637,
    ];

    #[test]
    fn avg_pool_2x2_floors_odd_sizes_like_torch() {
        let y = avg_pool2d(input((1, 2, 7, 7), 0.0).view(), 2, 2);
        assert_eq!(y.dim(), (1, 3, 3, 2));
        assert_close_nchw(&y, &AVG_POOL_ODD);
    }

    // x = pattern((2, 3, 3, 4), 7, 11)
    // y = x.mean(dim=(2, 3))
    const GLOBAL_AVG_POOL: [f32; 6] = [
        -0.03787879,
        0.015151516,
        -0.015151516,
        0.03787879,
        0.007575758,
        -0.022727273,
    ];

    // x = pattern((2, 3, 3, 4), 7, 11)
    // y = x.amax(dim=(2, 3))
    const GLOBAL_MAX_POOL: [f32; 6] = [
        0.45454547, 0.45454547, 0.45454547, 0.45454547, 0.45454547, 0.45454547,
    ];

    #[test]
    fn global_pools_match_torch() {
        let x = input((2, 3, 3, 4), 0.0);
        let avg = global_avg_pool(x.view());
        assert_eq!(avg.dim(), (2, 3));
        assert_close(avg.iter().copied(), &GLOBAL_AVG_POOL);
        let max = global_max_pool(x.view());
        assert_close(max.iter().copied(), &GLOBAL_MAX_POOL);
    }

    /// Pooling straight from the definition, for the parallel path and odd shapes.
    fn max_pool_naive(x: &Array4<f32>, k: usize, s: usize, p: usize) -> Array4<f32> {
        let (n, h, w, c) = x.dim();
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        Array4::from_shape_fn((n, oh, ow, c), |(b, oy, ox, ch)| {
            let mut m = f32::NEG_INFINITY;
            for ky in 0..k {
                for kx in 0..k {
                    let iy = (oy * s + ky) as isize - p as isize;
                    let ix = (ox * s + kx) as isize - p as isize;
                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                        m = m.max(x[[b, iy as usize, ix as usize, ch]]);
                    }
                }
            }
            m
        })
    }

    #[test]
    fn large_max_pool_matches_naive() {
        // DenseNet's stem pool at a small scale, above PARALLEL_THRESHOLD.
        let x = Array4::from_shape_fn((2, 33, 30, 72), |(b, y, x, c)| {
            ((b * 31 + y * 17 + x * 13 + c * 7) % 23) as f32 - 11.0
        });
        let y = max_pool2d(x.view(), 3, 2, 1);
        assert!(y.len() >= PARALLEL_THRESHOLD);
        assert_eq!(y, max_pool_naive(&x, 3, 2, 1));
    }

    #[test]
    fn nan_propagates_through_max_pools() {
        let mut x = Array4::zeros((1, 2, 2, 1));
        x[[0, 1, 0, 0]] = f32::NAN;
        assert!(max_pool2d(x.view(), 2, 2, 0)[[0, 0, 0, 0]].is_nan());
        assert!(global_max_pool(x.view())[[0, 0]].is_nan());
    }

    #[test]
    #[should_panic(expected = "kernel and stride must be at least 1")]
    fn zero_stride_panics() {
        let _ = avg_pool2d(Array4::zeros((1, 2, 2, 1)).view(), 2, 0);
    }
}
