//! im2col: lays out every convolution window of an NHWC input as one row of a matrix,
//! so a convolution becomes one GEMM with the HWIO weight.
//!
//! Row `(b·oh + oy)·ow + ox` of the result holds the window of output pixel `(b, oy, ox)`
//! in `(ky, kx, c)` order, the order of an HWIO weight's `kh·kw·c_in` rows. Positions
//! in the zero padding are written as 0. Safe code: per window row, the in-bounds pixels
//! are one contiguous run of the input, copied with `copy_from_slice`.

use crate::parallel::prelude::*;

/// Output matrices with at least this many elements are filled by rayon's threads,
/// one output image row per task.
const PARALLEL_THRESHOLD: usize = 1 << 16;

/// Geometry of a 2-D convolution or pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Window height.
    pub kernel_h: usize,
    /// Window width.
    pub kernel_w: usize,
    /// Step between windows, the same along both axes; must be at least 1.
    pub stride: usize,
    /// Zero (or, for max pooling, -∞) padding on each of the four sides.
    pub padding: usize,
}

impl Window {
    /// Output `(height, width)` for an `h × w` input:
    /// `⌊(h + 2p − k) / s⌋ + 1` along each axis (floor mode, as torch), or 0 when the
    /// padded input is smaller than the window.
    ///
    /// # Panics
    ///
    /// If `stride` is 0, or the padded input `len + 2p` or the output size overflows
    /// `usize` (caller bugs).
    #[track_caller]
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        if self.stride == 0 {
            zero_stride();
        }
        let axis = |len: usize, k: usize| {
            let Some(padded) = self.padding.checked_mul(2).and_then(|p| p.checked_add(len)) else {
                padding_overflow(len, self.padding)
            };
            match padded.checked_sub(k) {
                // Overflows only for an empty window (k = 0) over `usize::MAX` at stride 1.
                Some(span) => (span / self.stride)
                    .checked_add(1)
                    .unwrap_or_else(|| output_overflow(len, k)),
                None => 0,
            }
        };
        (axis(h, self.kernel_h), axis(w, self.kernel_w))
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn zero_stride() -> ! {
    panic!("window stride must be at least 1");
}

#[cold]
#[inline(never)]
#[track_caller]
fn padding_overflow(len: usize, padding: usize) -> ! {
    panic!("window: a side of {len} padded by {padding} on each end overflows usize");
}

#[cold]
#[inline(never)]
#[track_caller]
fn output_overflow(len: usize, kernel: usize) -> ! {
    panic!("window: a side of {len} has more than usize::MAX windows of {kernel}");
}

#[cold]
#[inline(never)]
#[track_caller]
fn size_overflow(what: &str) -> ! {
    panic!("im2col: the {what} size overflows usize");
}

/// The product of `sizes`, 0 if any is 0 (however large the others), `None` if it
/// overflows `usize`.
fn product(sizes: &[usize]) -> Option<usize> {
    if sizes.contains(&0) {
        return Some(0);
    }
    sizes.iter().try_fold(1usize, |acc, &s| acc.checked_mul(s))
}

#[cold]
#[inline(never)]
#[track_caller]
fn length_mismatch(what: &str, expected: usize, actual: usize) -> ! {
    panic!("im2col: {what} has {actual} elements, expected {expected}");
}

/// For output column `ox`, the range of kernel columns `kx` whose input column
/// `ox·s + kx − p` lies inside `0..w`.
fn valid_taps(o: usize, k: usize, stride: usize, padding: usize, len: usize) -> (usize, usize) {
    let start = o * stride; // position of tap 0 in padded coordinates
    let lo = padding.saturating_sub(start).min(k);
    let hi = (len + padding).saturating_sub(start).min(k).max(lo);
    (lo, hi)
}

/// Writes the im2col matrix of an NHWC input into `out`: shape
/// `(n·oh·ow) × (kh·kw·c)`, row-major, zero padding.
///
/// `input` is the contiguous NHWC tensor of shape `(n, h, w, c)`; `(oh, ow)` is
/// `win.output_size(h, w)`.
///
/// # Panics
///
/// If `input.len() != n·h·w·c`, `out.len() != n·oh·ow·kh·kw·c`, `win.stride == 0`, or
/// one of these sizes overflows `usize` (caller bugs).
#[track_caller]
pub fn im2col(input: &[f32], n: usize, h: usize, w: usize, c: usize, win: Window, out: &mut [f32]) {
    let (oh, ow) = win.output_size(h, w);
    let Some(input_len) = product(&[n, h, w, c]) else {
        size_overflow("input")
    };
    let Some(out_len) = product(&[n, oh, ow, win.kernel_h, win.kernel_w, c]) else {
        size_overflow("output")
    };
    if input.len() != input_len {
        length_mismatch("input", input_len, input.len());
    }
    if out.len() != out_len {
        length_mismatch("output", out_len, out.len());
    }
    if out.is_empty() {
        return;
    }
    // No overflow from here: every size is a factor of a length checked above (all
    // nonzero, since `out` is not empty), and every index is below one of them.
    let k_len = win.kernel_h * win.kernel_w * c;
    let image_len = h * w * c;
    let out_row_len = ow * k_len; // one output image row: ow windows
    let fill_row = |(r, dst): (usize, &mut [f32])| {
        let (b, oy) = (r / oh, r % oh);
        let image = &input[b * image_len..(b + 1) * image_len];
        fill_output_row(image, oy, h, w, c, win, dst);
    };
    if out.len() >= PARALLEL_THRESHOLD {
        out.par_chunks_mut(out_row_len)
            .enumerate()
            .for_each(fill_row);
    } else {
        out.chunks_mut(out_row_len).enumerate().for_each(fill_row);
    }
}

/// The im2col rows of output rows `rows` of one image (`image`: `h × w × c`,
/// contiguous NHWC) into `out` (`rows.len()·ow` rows of `kh·kw·c`), on the calling
/// thread: a band of [`im2col`]'s matrix, for a caller that multiplies each band while
/// it is in cache.
///
/// # Panics
///
/// If `image` is not `h·w·c` long, `rows` reaches past the output's rows, `out` is not
/// the band's size, `win.stride == 0`, or a size overflows `usize` (caller bugs).
#[track_caller]
pub fn im2col_rows(
    image: &[f32],
    (h, w, c): (usize, usize, usize),
    win: Window,
    rows: core::ops::Range<usize>,
    out: &mut [f32],
) {
    let (oh, ow) = win.output_size(h, w);
    let Some(image_len) = product(&[h, w, c]) else {
        size_overflow("input")
    };
    if image.len() != image_len {
        length_mismatch("input", image_len, image.len());
    }
    assert!(
        rows.start <= rows.end && rows.end <= oh,
        "im2col: output rows {rows:?} of {oh}"
    );
    let Some(out_len) = product(&[rows.len(), ow, win.kernel_h, win.kernel_w, c]) else {
        size_overflow("output")
    };
    if out.len() != out_len {
        length_mismatch("output", out_len, out.len());
    }
    if out.is_empty() {
        return;
    }
    let out_row_len = out_len / rows.len();
    for (oy, dst) in rows.zip(out.chunks_exact_mut(out_row_len)) {
        fill_output_row(image, oy, h, w, c, win, dst);
    }
}

/// Fills the `ow` windows of output row `oy` of one image (`image` is `h × w × c`).
fn fill_output_row(
    image: &[f32],
    oy: usize,
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
    let (ky_lo, ky_hi) = valid_taps(oy, kh, stride, padding, h);
    let tap_row_len = kw * c;
    for (ox, window) in dst.chunks_exact_mut(kh * tap_row_len).enumerate() {
        let (kx_lo, kx_hi) = valid_taps(ox, kw, stride, padding, w);
        for (ky, tap_row) in window.chunks_exact_mut(tap_row_len).enumerate() {
            if ky < ky_lo || ky >= ky_hi || kx_lo == kx_hi {
                tap_row.fill(0.0);
                continue;
            }
            let iy = oy * stride + ky - padding;
            let ix = ox * stride + kx_lo - padding;
            let src_start = (iy * w + ix) * c;
            let run = (kx_hi - kx_lo) * c;
            let (left, rest) = tap_row.split_at_mut(kx_lo * c);
            let (mid, right) = rest.split_at_mut(run);
            left.fill(0.0);
            mid.copy_from_slice(&image[src_start..src_start + run]);
            right.fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element-by-element im2col straight from the definition.
    fn im2col_naive(
        input: &[f32],
        n: usize,
        h: usize,
        w: usize,
        c: usize,
        win: Window,
    ) -> Vec<f32> {
        let (oh, ow) = win.output_size(h, w);
        let mut out = Vec::new();
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..win.kernel_h {
                        for kx in 0..win.kernel_w {
                            for ch in 0..c {
                                let iy = (oy * win.stride + ky) as isize - win.padding as isize;
                                let ix = (ox * win.stride + kx) as isize - win.padding as isize;
                                let inside =
                                    (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                                out.push(if inside {
                                    input[((b * h + iy as usize) * w + ix as usize) * c + ch]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn output_size_follows_torch_floor_mode() {
        let win = |k, s, p| Window {
            kernel_h: k,
            kernel_w: k,
            stride: s,
            padding: p,
        };
        assert_eq!(win(7, 2, 3).output_size(224, 224), (112, 112));
        assert_eq!(win(3, 2, 1).output_size(112, 112), (56, 56));
        assert_eq!(win(3, 2, 1).output_size(7, 8), (4, 4));
        assert_eq!(win(2, 2, 0).output_size(7, 7), (3, 3));
        assert_eq!(win(3, 1, 1).output_size(5, 6), (5, 6));
        assert_eq!(win(5, 1, 0).output_size(4, 9), (0, 5));
        let rect = Window {
            kernel_h: 1,
            kernel_w: 3,
            stride: 2,
            padding: 0,
        };
        assert_eq!(rect.output_size(5, 5), (3, 2));
    }

    #[test]
    fn im2col_matches_naive_definition() {
        let shapes = [
            // (n, h, w, c, kh, kw, stride, padding)
            (1, 5, 5, 3, 3, 3, 1, 1),
            (2, 9, 7, 2, 7, 7, 2, 3),
            (1, 4, 6, 5, 1, 1, 1, 0),
            (2, 7, 5, 1, 1, 3, 2, 0),
            (1, 6, 6, 4, 3, 2, 3, 2),
            (1, 2, 2, 2, 5, 5, 1, 2),   // window wider than the input
            (1, 3, 3, 2, 2, 2, 1, 4),   // windows entirely in the padding
            (3, 30, 30, 8, 3, 3, 1, 1), // large enough for the parallel path
        ];
        for (n, h, w, c, kh, kw, stride, padding) in shapes {
            let win = Window {
                kernel_h: kh,
                kernel_w: kw,
                stride,
                padding,
            };
            let input: Vec<f32> = (0..n * h * w * c).map(|i| i as f32 + 1.0).collect();
            let expected = im2col_naive(&input, n, h, w, c, win);
            let mut out = vec![f32::NAN; expected.len()];
            im2col(&input, n, h, w, c, win, &mut out);
            assert_eq!(out, expected, "shape {:?}", (n, h, w, c, win));
        }
        const { assert!(30 * 30 * 3 * 9 * 8 >= PARALLEL_THRESHOLD) };
    }

    #[test]
    #[should_panic(expected = "im2col: the output size overflows")]
    fn an_output_size_that_overflows_panics() {
        // 2 windows of 2³² × 2³² taps: the output's length wraps to 0 on 64 bits, which
        // an empty output slice matched.
        let half = 1usize << (usize::BITS / 2);
        let win = Window {
            kernel_h: half,
            kernel_w: half,
            stride: 1,
            padding: half,
        };
        im2col(&[0.0; 4], 1, 2, 2, 1, win, &mut []);
    }

    /// Found by `tests/fuzz.rs`: `usize::MAX / 1 + 1` windows overflowed unchecked.
    #[test]
    #[should_panic(
        expected = "window: a side of 18446744073709551615 has more than usize::MAX windows of 0"
    )]
    #[cfg(target_pointer_width = "64")]
    fn an_output_count_that_overflows_panics() {
        let window = Window {
            kernel_h: 0,
            kernel_w: 1,
            stride: 1,
            padding: 0,
        };
        window.output_size(usize::MAX, 1);
    }

    #[test]
    #[should_panic(expected = "overflows usize")]
    fn a_padding_that_overflows_panics() {
        let win = Window {
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
            padding: usize::MAX / 2,
        };
        let _ = win.output_size(4, 4);
    }

    #[test]
    #[should_panic(expected = "im2col: output has")]
    fn wrong_output_length_panics() {
        let win = Window {
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            padding: 1,
        };
        im2col(&[0.0; 4], 1, 2, 2, 1, win, &mut [0.0; 4]);
    }

    #[test]
    fn bands_of_rows_are_the_matrix_rows() {
        let (h, w, c) = (11, 9, 3);
        let image: Vec<f32> = (0..h * w * c).map(|i| i as f32 * 0.5 - 7.0).collect();
        for win in [
            Window {
                kernel_h: 7,
                kernel_w: 7,
                stride: 2,
                padding: 3,
            },
            Window {
                kernel_h: 3,
                kernel_w: 3,
                stride: 1,
                padding: 1,
            },
        ] {
            let (oh, ow) = win.output_size(h, w);
            let k_len = win.kernel_h * win.kernel_w * c;
            let whole = im2col_naive(&image, 1, h, w, c, win);
            for rows in [0..oh, 0..1, 2..oh - 1, oh - 1..oh, 3..3] {
                let mut band = vec![f32::NAN; rows.len() * ow * k_len];
                im2col_rows(&image, (h, w, c), win, rows.clone(), &mut band);
                assert_eq!(
                    band,
                    whole[rows.start * ow * k_len..rows.end * ow * k_len],
                    "{rows:?}"
                );
            }
        }
    }
}
