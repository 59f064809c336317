//! Pooling backward: windowed max (routed to the argmax) and average, and the global
//! average pool.

use ndarray::{Array4, ArrayView2, ArrayView4};

use crate::kernels::im2col::Window;
use crate::parallel::prelude::*;

/// The in-bounds taps `lo..hi` of a window at output coordinate `o` (as im2col's).
fn taps(o: usize, k: usize, stride: usize, padding: usize, len: usize) -> (usize, usize) {
    let start = o * stride;
    let lo = padding.saturating_sub(start).min(k);
    let hi = (len + padding).saturating_sub(start).min(k).max(lo);
    (lo, hi)
}

#[track_caller]
/// The output size `(oh, ow)` of a pooling window over an `input_hw` map.
///
/// # Panics
///
/// If `kernel` or `stride` is 0.
pub(crate) fn output_size(
    kernel: usize,
    stride: usize,
    padding: usize,
    (h, w): (usize, usize),
) -> (usize, usize) {
    window(kernel, stride, padding).output_size(h, w)
}

fn window(kernel: usize, stride: usize, padding: usize) -> Window {
    if kernel == 0 || stride == 0 {
        invalid_window(kernel, stride);
    }
    Window {
        kernel_h: kernel,
        kernel_w: kernel,
        stride,
        padding,
    }
}

/// Max pooling with a `kernel × kernel` window (padding acts as −∞, floor mode, as
/// [`max_pool2d`](crate::layers::max_pool2d)) that also returns where each maximum
/// came from: `(y, argmax)`, both `(n, oh, ow, c)`, `argmax` holding the input pixel
/// `iy·w + ix` within its image, as torch's `max_pool2d(…, return_indices=True)`.
///
/// Ties go to the first maximum in the window's row-major scan and NaN wins, exactly as
/// torch's CPU kernel (`if (val > max || isnan(val))`, starting from the first
/// in-bounds tap), so gradients are routed where torch routes them.
///
/// # Panics
///
/// If `kernel` or `stride` is 0, or an image has more than `u32::MAX` pixels.
pub fn max_pool2d_train(
    x: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (Array4<f32>, Array4<u32>) {
    let (n, h, w, c) = x.dim();
    let (oh, ow) = window(kernel, stride, padding).output_size(h, w);
    let mut y = Array4::zeros((n, oh, ow, c));
    let mut idx = Array4::<u32>::zeros((n, oh, ow, c));
    max_pool2d_train_into(
        x,
        kernel,
        stride,
        padding,
        y.as_slice_mut().expect("a new array is contiguous"),
        idx.as_slice_mut().expect("a new array is contiguous"),
    );
    (y, idx)
}

/// [`max_pool2d_train`] into `ys` and `is` (`n·oh·ow·c` each, overwritten).
///
/// # Panics
///
/// As [`max_pool2d_train`], and if a slice does not have the output's size.
pub(crate) fn max_pool2d_train_into(
    x: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    padding: usize,
    ys: &mut [f32],
    is: &mut [u32],
) {
    let win = window(kernel, stride, padding);
    let (n, h, w, c) = x.dim();
    assert!(
        u32::try_from(h * w).is_ok(),
        "max_pool2d_train: image too large for u32 indices"
    );
    let (oh, ow) = win.output_size(h, w);
    assert!(
        ys.len() == n * oh * ow * c && is.len() == ys.len(),
        "max_pool2d_train: output slices do not fit"
    );
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout is contiguous");
    let image_len = h * w * c;
    // One task per output row (each writes only its own row: no reduction, the same
    // result on any number of threads).
    let row_len = (ow * c).max(1);
    let rows = ys.par_chunks_mut(row_len).zip(is.par_chunks_mut(row_len));
    rows.enumerate().for_each(|(r, (ys, is))| {
        let (b, oy) = (r / oh.max(1), r % oh.max(1));
        ys.fill(f32::NEG_INFINITY);
        is.fill(0);
        let image = &x[b * image_len..][..image_len];
        let (ky_lo, ky_hi) = taps(oy, kernel, stride, padding, h);
        for ox in 0..ow {
            let (kx_lo, kx_hi) = taps(ox, kernel, stride, padding, w);
            let (best, arg) = (&mut ys[ox * c..][..c], &mut is[ox * c..][..c]);
            if ky_lo == ky_hi || kx_lo == kx_hi {
                continue; // a window in the padding only: −∞, index 0
            }
            let first = (oy * stride + ky_lo - padding) * w + ox * stride + kx_lo - padding;
            arg.fill(first as u32);
            for ky in ky_lo..ky_hi {
                let iy = oy * stride + ky - padding;
                for kx in kx_lo..kx_hi {
                    let pixel = iy * w + ox * stride + kx - padding;
                    let values = &image[pixel * c..][..c];
                    // Bit masks, not branches or selects (which LLVM turned back into
                    // a conditional store per lane), so that the loop vectorises.
                    let pixel = pixel as u32;
                    for ((m, a), &v) in best.iter_mut().zip(arg.iter_mut()).zip(values) {
                        let take = u32::from((v > *m) | v.is_nan()).wrapping_neg();
                        *m = f32::from_bits((m.to_bits() & !take) | (v.to_bits() & take));
                        *a = (*a & !take) | (pixel & take);
                    }
                }
            }
        }
    });
}

/// Backward of [`max_pool2d_train`]: each output gradient goes to the input pixel its
/// maximum came from (summed where windows share it). `dy` and `argmax` are
/// `(n, oh, ow, c)`; returns `(n, h, w, c)` for the forward input's `input_hw = (h, w)`.
///
/// # Panics
///
/// If `dy` and `argmax` differ in shape or an index is not below `h·w`.
pub fn max_pool2d_backward(
    dy: ArrayView4<'_, f32>,
    argmax: ArrayView4<'_, u32>,
    input_hw: (usize, usize),
) -> Array4<f32> {
    let (n, _, _, c) = dy.dim();
    let (h, w) = input_hw;
    let mut dx = Array4::zeros((n, h, w, c));
    max_pool2d_backward_into(
        dy,
        argmax,
        input_hw,
        dx.as_slice_mut().expect("a new array is contiguous"),
    );
    dx
}

/// [`max_pool2d_backward`] into `out` (`n·h·w·c`, overwritten).
///
/// # Panics
///
/// As [`max_pool2d_backward`], and if `out` does not have the input's size.
pub(crate) fn max_pool2d_backward_into(
    dy: ArrayView4<'_, f32>,
    argmax: ArrayView4<'_, u32>,
    input_hw: (usize, usize),
    out: &mut [f32],
) {
    let (n, oh, ow, c) = dy.dim();
    let (h, w) = input_hw;
    if argmax.dim() != dy.dim() {
        shape_mismatch("max_pool2d_backward: argmax", dy.dim(), argmax.dim());
    }
    assert_eq!(out.len(), n * h * w * c, "max_pool2d_backward: output size");
    let (dy, argmax) = (dy.as_standard_layout(), argmax.as_standard_layout());
    let (dy, argmax) = (
        dy.as_slice().expect("standard layout is contiguous"),
        argmax.as_slice().expect("standard layout is contiguous"),
    );
    let per_image = oh * ow * c;
    if per_image == 0 || out.is_empty() {
        out.fill(0.0);
        return;
    }
    // Image by image on the threads (each image's gradients land in its own input
    // image): a DenseNet-121 step's stem at batch 16 zeroes and scatters 51 MB here.
    let image = |(b, image): (usize, &mut [f32])| {
        image.fill(0.0);
        let (g, a) = (
            &dy[b * per_image..][..per_image],
            &argmax[b * per_image..][..per_image],
        );
        for (gp, ap) in g.chunks_exact(c.max(1)).zip(a.chunks_exact(c.max(1))) {
            for (ch, (&d, &pixel)) in gp.iter().zip(ap).enumerate() {
                image[pixel as usize * c + ch] += d;
            }
        }
    };
    out.par_chunks_mut(h * w * c).enumerate().for_each(image);
}

/// Backward of [`avg_pool2d`](crate::layers::avg_pool2d) (`kernel × kernel`, no
/// padding, floor mode): each output gradient is spread evenly, `1/kernel²` each, over
/// its window; input pixels no window covers (the odd last row or column) get 0.
/// `dy` is `(n, oh, ow, c)`; returns `(n, h, w, c)` for `input_hw = (h, w)`.
///
/// # Panics
///
/// If `kernel` or `stride` is 0, or `dy`'s size is not the pool's output size for
/// `input_hw`.
pub fn avg_pool2d_backward(
    dy: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    input_hw: (usize, usize),
) -> Array4<f32> {
    let (n, _, _, c) = dy.dim();
    let (h, w) = input_hw;
    let mut dx = Array4::zeros((n, h, w, c));
    avg_pool2d_backward_into(
        dy,
        kernel,
        stride,
        input_hw,
        dx.as_slice_mut().expect("a new array is contiguous"),
    );
    dx
}

/// [`avg_pool2d_backward`] into `out` (`n·h·w·c`, overwritten).
///
/// # Panics
///
/// As [`avg_pool2d_backward`], and if `out` does not have the input's size.
pub(crate) fn avg_pool2d_backward_into(
    dy: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    input_hw: (usize, usize),
    out: &mut [f32],
) {
    let win = window(kernel, stride, 0);
    let (n, oh, ow, c) = dy.dim();
    let (h, w) = input_hw;
    if win.output_size(h, w) != (oh, ow) {
        let (eh, ew) = win.output_size(h, w);
        shape_mismatch("avg_pool2d_backward: dy", (n, eh, ew, c), dy.dim());
    }
    assert_eq!(out.len(), n * h * w * c, "avg_pool2d_backward: output size");
    out.fill(0.0);
    let dy = dy.as_standard_layout();
    let dy = dy.as_slice().expect("standard layout is contiguous");
    let inv = 1.0 / (kernel * kernel) as f32;
    for (r, g) in dy.chunks_exact(c.max(1)).enumerate().take(n * oh * ow) {
        let (b, oy, ox) = (r / (oh * ow), r / ow % oh, r % ow);
        for ky in 0..kernel {
            for kx in 0..kernel {
                let pixel = (b * h + oy * stride + ky) * w + ox * stride + kx;
                for (d, &v) in out[pixel * c..][..c].iter_mut().zip(g) {
                    *d += v * inv;
                }
            }
        }
    }
}

/// Backward of [`global_avg_pool`](crate::layers::global_avg_pool): `dy` is `(n, c)`;
/// returns `(n, h, w, c)` with every pixel's gradient `dy / (h·w)`.
pub fn global_avg_pool_backward(dy: ArrayView2<'_, f32>, input_hw: (usize, usize)) -> Array4<f32> {
    let (n, c) = dy.dim();
    let (h, w) = input_hw;
    let mut dx = Array4::zeros((n, h, w, c));
    global_avg_pool_backward_into(
        dy,
        input_hw,
        dx.as_slice_mut().expect("a new array is contiguous"),
    );
    dx
}

/// [`global_avg_pool_backward`] into `out` (`n·h·w·c`, overwritten).
///
/// # Panics
///
/// If `out` does not have the input's size.
pub(crate) fn global_avg_pool_backward_into(
    dy: ArrayView2<'_, f32>,
    input_hw: (usize, usize),
    out: &mut [f32],
) {
    let (n, c) = dy.dim();
    let (h, w) = input_hw;
    assert_eq!(
        out.len(),
        n * h * w * c,
        "global_avg_pool_backward: output size"
    );
    let inv = 1.0 / (h * w) as f32;
    for (b, image) in out.chunks_mut((h * w * c).max(1)).enumerate().take(n) {
        for pixel in image.chunks_exact_mut(c.max(1)) {
            for (d, &g) in pixel.iter_mut().zip(dy.row(b)) {
                *d = g * inv;
            }
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn invalid_window(kernel: usize, stride: usize) -> ! {
    panic!("pooling: kernel and stride must be at least 1; got kernel={kernel}, stride={stride}");
}

#[cold]
#[inline(never)]
#[track_caller]
fn shape_mismatch(
    what: &str,
    expected: (usize, usize, usize, usize),
    actual: (usize, usize, usize, usize),
) -> ! {
    panic!("{what} has shape {actual:?}, expected {expected:?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{avg_pool2d, global_avg_pool, max_pool2d};
    use crate::train::check::{assert_grad_close, dot, numeric_grad, values};

    /// Distinct values (a permutation scaled to [-1, 1)), so no window has a tie and
    /// small steps never change an argmax.
    fn distinct(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 % len) as f32 / len as f32) * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn max_pool_forward_matches_the_inference_pool() {
        for (h, w) in [(7, 7), (8, 6), (5, 9)] {
            let x = Array4::from_shape_vec((2, h, w, 3), values(2 * h * w * 3, 1)).unwrap();
            let (y, _) = max_pool2d_train(x.view(), 3, 2, 1);
            assert_eq!(y, max_pool2d(x.view(), 3, 2, 1));
        }
    }

    #[test]
    fn max_pool_3x3_stride2_pad1_matches_finite_differences() {
        let (n, h, w, c) = (2, 7, 6, 2);
        let x = distinct(n * h * w * c);
        let xv = ArrayView4::from_shape((n, h, w, c), &x).unwrap();
        let (y, idx) = max_pool2d_train(xv, 3, 2, 1);
        let r = values(y.len(), 2);
        let dy = ArrayView4::from_shape(y.dim(), &r).unwrap();
        let dx = max_pool2d_backward(dy, idx.view(), (h, w));
        // Step well below the gap between distinct values (2/len ≈ 0.012).
        let numeric = numeric_grad(&x, 1e-3, |xs| {
            let xv = ArrayView4::from_shape((n, h, w, c), xs).unwrap();
            dot(&r, max_pool2d(xv, 3, 2, 1).as_slice().unwrap())
        });
        assert_grad_close("dx", dx.as_slice().unwrap(), &numeric, 1e-3);
    }

    #[test]
    fn max_pool_ties_go_to_the_first_maximum_like_torch() {
        // torch: x = zeros(1, 1, 4, 4); x[0, 0, 1, 2] = x[0, 0, 2, 1] = 1
        // F.max_pool2d(x, 3, 2, 1, return_indices=True)[1] = [[0, 6], [9, 6]]:
        // window (0, 0) is all zeros -> its first in-bounds pixel, 0; window (0, 1)
        // holds the 1 at pixel 6 (row 1, col 2); window (1, 0) the 1 at 9 (row 2, col 1)
        // and window (1, 1) both ones -> the first in scan order, 6.
        let mut x = Array4::<f32>::zeros((1, 4, 4, 1));
        x[[0, 1, 2, 0]] = 1.0;
        x[[0, 2, 1, 0]] = 1.0;
        let (y, idx) = max_pool2d_train(x.view(), 3, 2, 1);
        assert_eq!(idx.iter().copied().collect::<Vec<_>>(), [0, 6, 9, 6]);
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), [0.0, 1.0, 1.0, 1.0]);
        let dx = max_pool2d_backward(
            Array4::from_elem((1, 2, 2, 1), 1.0).view(),
            idx.view(),
            (4, 4),
        );
        assert_eq!(
            (dx[[0, 0, 0, 0]], dx[[0, 1, 2, 0]], dx[[0, 2, 1, 0]]),
            (1.0, 2.0, 1.0)
        );
        assert_eq!(dx.sum(), 4.0);
    }

    #[test]
    fn max_pool_propagates_nan_from_the_last_nan_like_torch() {
        // torch's CPU max pool takes `val` when `val > maxval || isnan(val)`: a window
        // holding NaNs gives NaN, its index the last NaN in scan order. 37 channels: the
        // vectorised body and its tail.
        let c = 37;
        let mut x = Array4::from_shape_vec((1, 4, 4, c), distinct(16 * c)).unwrap();
        x[[0, 0, 0, 5]] = f32::NAN;
        x[[0, 1, 1, 5]] = f32::NAN;
        x[[0, 3, 3, 36]] = f32::NAN;
        let (y, idx) = max_pool2d_train(x.view(), 3, 2, 1);
        assert!(y[[0, 0, 0, 5]].is_nan() && idx[[0, 0, 0, 5]] == 5);
        assert!(y[[0, 1, 1, 36]].is_nan() && idx[[0, 1, 1, 36]] == 15);
        let inference = max_pool2d(x.view(), 3, 2, 1);
        for (i, (&a, &b)) in y.iter().zip(&inference).enumerate() {
            assert!(
                a == b || (a.is_nan() && b.is_nan()),
                "output {i}: {a} vs {b}"
            );
        }
        // Elsewhere the maximum's own pixel.
        for ((b, oy, ox, ch), &i) in idx.indexed_iter() {
            let (iy, ix) = (i as usize / 4, i as usize % 4);
            let v = x[[b, iy, ix, ch]];
            assert!(
                v == y[[b, oy, ox, ch]] || v.is_nan(),
                "index of output {oy},{ox},{ch}"
            );
        }
    }

    #[test]
    fn avg_pool_2x2_matches_finite_differences_at_odd_sizes() {
        let (n, h, w, c) = (2, 5, 4, 3);
        let x = values(n * h * w * c, 3);
        let (oh, ow) = (h / 2, w / 2);
        let r = values(n * oh * ow * c, 4);
        let dy = ArrayView4::from_shape((n, oh, ow, c), &r).unwrap();
        let dx = avg_pool2d_backward(dy, 2, 2, (h, w));
        let numeric = numeric_grad(&x, 1e-2, |xs| {
            let xv = ArrayView4::from_shape((n, h, w, c), xs).unwrap();
            dot(&r, avg_pool2d(xv, 2, 2).as_slice().unwrap())
        });
        assert_grad_close("dx", dx.as_slice().unwrap(), &numeric, 1e-4);
        assert!(dx
            .slice(ndarray::s![.., 4, .., ..])
            .iter()
            .all(|&v| v == 0.0));
    }

    #[test]
    fn global_avg_pool_matches_finite_differences() {
        let (n, h, w, c) = (2, 3, 4, 3);
        let x = values(n * h * w * c, 5);
        let r = values(n * c, 6);
        let dy = ArrayView2::from_shape((n, c), &r).unwrap();
        let dx = global_avg_pool_backward(dy, (h, w));
        let numeric = numeric_grad(&x, 1e-2, |xs| {
            let xv = ArrayView4::from_shape((n, h, w, c), xs).unwrap();
            dot(&r, global_avg_pool(xv).as_slice().unwrap())
        });
        assert_grad_close("dx", dx.as_slice().unwrap(), &numeric, 1e-4);
    }
}
