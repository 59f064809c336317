//! col2im: the adjoint of im2col (the convolution's GEMM input), summing every
//! window row back onto the input pixels it was copied from.

use crate::parallel::prelude::*;

use crate::kernels::im2col::Window;

/// Outputs with at least this many elements are filled by rayon's threads, one image
/// per task (windows of one image overlap, so an image is never split).
const PARALLEL_THRESHOLD: usize = 1 << 16;

/// `out ← col2im(cols)`: the NHWC tensor `(n, h, w, c)` whose pixel `(b, y, x)` is the
/// sum of every entry of `cols` that im2col copied
/// from it. Entries that im2col wrote for the zero padding are dropped.
///
/// `cols` is the `(n·oh·ow) × (kh·kw·c)` row-major matrix laid out as im2col's output
/// (`(oh, ow) = win.output_size(h, w)`); `out` is the contiguous NHWC tensor and is
/// overwritten. As im2col's adjoint, `⟨im2col(x), d⟩ = ⟨x, col2im(d)⟩`: this is how a
/// convolution's input gradient comes back from the gradient of its im2col matrix.
///
/// # Panics
///
/// If `cols.len() != n·oh·ow·kh·kw·c`, `out.len() != n·h·w·c`, or `win.stride == 0`.
#[track_caller]
pub fn col2im(cols: &[f32], n: usize, h: usize, w: usize, c: usize, win: Window, out: &mut [f32]) {
    let (oh, ow) = win.output_size(h, w);
    let k_len = win.kernel_h * win.kernel_w * c;
    if cols.len() != n * oh * ow * k_len {
        length_mismatch("cols", n * oh * ow * k_len, cols.len());
    }
    if out.len() != n * h * w * c {
        length_mismatch("output", n * h * w * c, out.len());
    }
    out.fill(0.0);
    let image_len = h * w * c;
    let image_cols = oh * ow * k_len;
    if image_len == 0 || image_cols == 0 {
        return;
    }
    let image = |(dst, src): (&mut [f32], &[f32])| add_image(src, oh, ow, h, w, c, win, dst);
    if out.len() >= PARALLEL_THRESHOLD {
        out.par_chunks_mut(image_len)
            .zip(cols.par_chunks(image_cols))
            .for_each(image);
    } else {
        out.chunks_mut(image_len)
            .zip(cols.chunks(image_cols))
            .for_each(image);
    }
}

/// The in-bounds kernel taps `lo..hi` for output coordinate `o` (as im2col's).
fn valid_taps(o: usize, k: usize, stride: usize, padding: usize, len: usize) -> (usize, usize) {
    let start = o * stride;
    let lo = padding.saturating_sub(start).min(k);
    let hi = (len + padding).saturating_sub(start).min(k).max(lo);
    (lo, hi)
}

/// Adds one image's windows (`cols`, `oh·ow` rows) onto its pixels (`dst`, `h × w × c`).
#[allow(clippy::too_many_arguments)]
fn add_image(
    cols: &[f32],
    oh: usize,
    ow: usize,
    h: usize,
    w: usize,
    c: usize,
    win: Window,
    dst: &mut [f32],
) {
    let Window {
        kernel_h: kh,
        kernel_w: kw,
        stride,
        padding,
    } = win;
    let tap_row_len = kw * c;
    for (r, window) in cols.chunks_exact(kh * tap_row_len).enumerate() {
        let (oy, ox) = (r / ow, r % ow);
        debug_assert!(oy < oh);
        let (ky_lo, ky_hi) = valid_taps(oy, kh, stride, padding, h);
        let (kx_lo, kx_hi) = valid_taps(ox, kw, stride, padding, w);
        if kx_lo == kx_hi {
            continue; // every tap in the padding
        }
        for ky in ky_lo..ky_hi {
            let iy = oy * stride + ky - padding;
            let ix = ox * stride + kx_lo - padding;
            let run = (kx_hi - kx_lo) * c;
            let src = &window[ky * tap_row_len + kx_lo * c..][..run];
            let start = (iy * w + ix) * c;
            for (d, &s) in dst[start..start + run].iter_mut().zip(src) {
                *d += s;
            }
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn length_mismatch(what: &str, expected: usize, actual: usize) -> ! {
    panic!("col2im: {what} has {actual} elements, expected {expected}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::im2col::im2col;
    use crate::train::check::{dot, values};

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let shapes = [
            // (n, h, w, c, kh, kw, stride, padding)
            (1, 5, 5, 3, 3, 3, 1, 1),
            (2, 9, 7, 2, 7, 7, 2, 3),
            (1, 4, 6, 5, 1, 1, 1, 0),
            (2, 7, 5, 1, 1, 3, 2, 0),
            (1, 6, 6, 4, 3, 2, 3, 2),
            (1, 2, 2, 2, 5, 5, 1, 2),
            (1, 3, 3, 2, 2, 2, 1, 4),
            (3, 30, 30, 8, 3, 3, 1, 1), // parallel path
        ];
        for (i, (n, h, w, c, kh, kw, stride, padding)) in shapes.into_iter().enumerate() {
            let win = Window {
                kernel_h: kh,
                kernel_w: kw,
                stride,
                padding,
            };
            let (oh, ow) = win.output_size(h, w);
            let x = values(n * h * w * c, 2 * i as u64);
            let d = values(n * oh * ow * kh * kw * c, 2 * i as u64 + 1);
            let mut cols = vec![0.0; d.len()];
            im2col(&x, n, h, w, c, win, &mut cols);
            let mut back = vec![f32::NAN; x.len()];
            col2im(&d, n, h, w, c, win, &mut back);
            let (lhs, rhs) = (dot(&cols, &d), dot(&x, &back));
            assert!(
                (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
                "shape {i}: <im2col x, d> = {lhs}, <x, col2im d> = {rhs}"
            );
        }
    }

    #[test]
    fn col2im_counts_how_often_each_pixel_is_read() {
        // All-ones windows: each pixel receives the number of windows that read it.
        let win = Window {
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            padding: 1,
        };
        let mut out = vec![0.0; 9];
        col2im(&[1.0; 81], 1, 3, 3, 1, win, &mut out);
        assert_eq!(out, [4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0]);
    }

    #[test]
    #[should_panic(expected = "col2im: cols has")]
    fn wrong_cols_length_panics() {
        let win = Window {
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            padding: 1,
        };
        col2im(&[0.0; 4], 1, 2, 2, 1, win, &mut [0.0; 4]);
    }
}
