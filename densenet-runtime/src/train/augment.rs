//! Seeded data augmentation of CHW `f32` images: the paper's CIFAR scheme, ImageNet's
//! random resized crop, horizontal flips.
//!
//! A transform never changes an image's shape, so a batch stays a valid model input.
//! Its randomness comes from one generator per image, [`image_rng`]`(seed, i)` for the
//! image at batch position `i`: a batch is the same whatever the number of threads
//! that build it, and whatever the batch's other images are.
//!
//! Augmentation sees the pixels as the source holds them: an image folder augments
//! before normalising (so `PadCropFlip`'s zero padding is black, as torchvision's
//! `RandomCrop(32, padding=4)` on a PIL image), an in-memory [`Dataset`](crate::train::Dataset)
//! after whatever preprocessing its images had (zero is then the normalised value 0,
//! typically the mean colour).

use crate::parallel::prelude::*;
use ndarray::{s, Array3, Array4, ArrayView3, Axis};

use crate::rng::Rng;
use crate::train::dataset::below;
use crate::train::TrainError;

/// The largest `pad` of [`Augment::PadCropFlip`] (a pad beyond the image only adds
/// crops that are all zeros).
pub const MAX_PAD: usize = 1 << 16;

/// A random transform of training images (the identity for evaluation).
///
/// ```
/// use densenet_runtime::ndarray::Array3;
/// use densenet_runtime::train::{image_rng, Augment};
///
/// let image = Array3::from_shape_fn((3, 32, 32), |(c, y, x)| (c * 1024 + y * 32 + x) as f32);
/// let out = Augment::cifar().apply(image.view(), &mut image_rng(7, 0))?;
/// assert_eq!(out.dim(), (3, 32, 32));
/// // The same seed and position give the same transform.
/// assert_eq!(out, Augment::cifar().apply(image.view(), &mut image_rng(7, 0))?);
/// # Ok::<(), densenet_runtime::TrainError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Augment {
    /// No augmentation.
    #[default]
    None,
    /// A horizontal flip with probability 1/2.
    Flip,
    /// The CIFAR scheme of the DenseNet paper (after He et al. 2016): zero-pad `pad`
    /// pixels on every side, crop a random window of the original size, and, if
    /// `flip`, flip horizontally with probability 1/2.
    PadCropFlip {
        /// Pixels of zeros added on each side (at most [`MAX_PAD`]).
        pad: usize,
        /// Whether to flip horizontally with probability 1/2.
        flip: bool,
    },
    /// ImageNet training (torchvision's `RandomResizedCrop` then `RandomHorizontalFlip`):
    /// a random window whose area is a fraction in `scale` of the image's and whose
    /// aspect ratio (width / height) is log-uniform in `ratio`, resized back to the
    /// image's size (bilinear, [`resize_bilinear`]); if ten draws give no window that
    /// fits, the centre window of the image's ratio clamped to `ratio`.
    RandomResizedCrop {
        /// Range of the window's area as a fraction of the image's, in `(0, 1]`.
        scale: (f32, f32),
        /// Range of the window's aspect ratio (width / height), positive.
        ratio: (f32, f32),
        /// Whether to flip horizontally with probability 1/2.
        flip: bool,
    },
}

impl Augment {
    /// The paper's CIFAR augmentation: pad 4, random crop, flip.
    pub fn cifar() -> Self {
        Augment::PadCropFlip { pad: 4, flip: true }
    }

    /// ImageNet training with torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3),
    /// flip.
    pub fn imagenet() -> Self {
        Augment::RandomResizedCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`TrainError::Setting`] for a `pad` past [`MAX_PAD`], a `scale` range not within
    /// `(0, 1]` or a `ratio` range not positive and finite (or either range reversed).
    pub fn validate(&self) -> Result<(), TrainError> {
        match *self {
            Augment::None | Augment::Flip => Ok(()),
            Augment::PadCropFlip { pad, .. } if pad > MAX_PAD => Err(TrainError::Setting {
                field: "Augment::PadCropFlip::pad",
                value: pad as f32,
                range: "0..=65536",
            }),
            Augment::PadCropFlip { .. } => Ok(()),
            Augment::RandomResizedCrop { scale, ratio, .. } => {
                let range = |field, (lo, hi): (f32, f32), ok: &dyn Fn(f32) -> bool, range| {
                    for v in [lo, hi] {
                        if !ok(v) {
                            return Err(TrainError::Setting {
                                field,
                                value: v,
                                range,
                            });
                        }
                    }
                    if lo > hi {
                        return Err(TrainError::Setting {
                            field,
                            value: lo,
                            range: "at most the range's upper end",
                        });
                    }
                    Ok(())
                };
                range(
                    "Augment::RandomResizedCrop::scale",
                    scale,
                    &|v| v > 0.0 && v <= 1.0,
                    "(0, 1]",
                )?;
                range(
                    "Augment::RandomResizedCrop::ratio",
                    ratio,
                    &|v| v > 0.0 && v.is_finite(),
                    "(0, inf)",
                )
            }
        }
    }

    /// The transform of one `(C, H, W)` image, drawn from `rng`; same shape out.
    ///
    /// # Errors
    ///
    /// As [`Augment::validate`].
    pub fn apply(&self, image: ArrayView3<f32>, rng: &mut Rng) -> Result<Array3<f32>, TrainError> {
        self.validate()?;
        let (_, h, w) = image.dim();
        let (out, flip) = match *self {
            // An empty image has no window to crop (nor anything to flip).
            _ if h == 0 || w == 0 => return Ok(image.to_owned()),
            Augment::None => return Ok(image.to_owned()),
            Augment::Flip => (image.to_owned(), true),
            Augment::PadCropFlip { pad, flip } => {
                // torchvision's RandomCrop: the row offset first, then the column's,
                // each uniform over the 2·pad + 1 positions of the padded image.
                let positions = 2 * pad as u64 + 1;
                let dy = below(rng, positions) as usize;
                let dx = below(rng, positions) as usize;
                (pad_crop(image, pad, dy, dx), flip)
            }
            Augment::RandomResizedCrop { scale, ratio, flip } => {
                let (top, left, ch, cw) = resized_crop_window(h, w, scale, ratio, rng);
                let window = image.slice(s![.., top..top + ch, left..left + cw]);
                (resize_bilinear(window, h, w), flip)
            }
        };
        if flip && rng.uniform() < 0.5 {
            return Ok(out.slice(s![.., .., ..;-1]).to_owned());
        }
        Ok(out)
    }

    /// Transforms every image of an NCHW batch in place, the image at position `i` by
    /// [`image_rng`]`(seed, i)` (in parallel; the result does not depend on the number
    /// of threads).
    ///
    /// # Errors
    ///
    /// As [`Augment::validate`].
    pub fn apply_batch(&self, images: &mut Array4<f32>, seed: u64) -> Result<(), TrainError> {
        self.validate()?;
        if *self == Augment::None {
            return Ok(());
        }
        let view = images.view();
        let out = (0..view.dim().0)
            .into_par_iter()
            .map(|i| self.apply(view.index_axis(Axis(0), i), &mut image_rng(seed, i)))
            .collect::<Result<Vec<_>, _>>()?;
        for (mut dst, src) in images.axis_iter_mut(Axis(0)).zip(&out) {
            dst.assign(src);
        }
        Ok(())
    }
}

/// The generator of the image at batch position `position` of a batch drawn with
/// `seed`: a function of the two only.
pub fn image_rng(seed: u64, position: usize) -> Rng {
    // Rng::new hashes its seed (SplitMix64), so hashing `seed` first and mixing in the
    // position gives unrelated streams for neighbouring seeds and positions.
    let key = Rng::new(seed).next_u64();
    Rng::new(key ^ position as u64)
}

/// The `(H, W)` window at offset `(dy, dx)` of the image zero-padded by `pad`.
fn pad_crop(image: ArrayView3<f32>, pad: usize, dy: usize, dx: usize) -> Array3<f32> {
    let (c, h, w) = image.dim();
    Array3::from_shape_fn((c, h, w), |(k, y, x)| {
        // Padded row y + dy is source row y + dy - pad, if that is inside the image.
        match ((y + dy).checked_sub(pad), (x + dx).checked_sub(pad)) {
            (Some(sy), Some(sx)) if sy < h && sx < w => image[[k, sy, sx]],
            _ => 0.0,
        }
    })
}

/// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)` of a window
/// of an `h x w` image.
fn resized_crop_window(
    h: usize,
    w: usize,
    scale: (f32, f32),
    ratio: (f32, f32),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (f64::from(ratio.0).ln(), f64::from(ratio.1).ln());
    let uniform = |rng: &mut Rng, lo: f64, hi: f64| lo + (hi - lo) * f64::from(rng.uniform());
    for _ in 0..10 {
        let target_area = area * uniform(rng, f64::from(scale.0), f64::from(scale.1));
        let aspect = uniform(rng, log_lo, log_hi).exp();
        // Python's round: half to even.
        let cw = (target_area * aspect).sqrt().round_ties_even() as usize;
        let ch = (target_area / aspect).sqrt().round_ties_even() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = below(rng, (h - ch + 1) as u64) as usize;
            let left = below(rng, (w - cw + 1) as u64) as usize;
            return (top, left, ch, cw);
        }
    }
    // Fallback: the centre window of the image's ratio clamped to `ratio`.
    let in_ratio = w as f64 / h as f64;
    let (lo, hi) = (f64::from(ratio.0), f64::from(ratio.1));
    let (ch, cw) = if in_ratio < lo {
        ((w as f64 / lo).round_ties_even() as usize, w)
    } else if in_ratio > hi {
        (h, (h as f64 * hi).round_ties_even() as usize)
    } else {
        (h, w)
    };
    // Rounding keeps the window inside (w / lo < h and h · hi < w here); clamp anyway.
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Resizes a `(C, H, W)` image to `(C, height, width)` by bilinear interpolation with
/// half-pixel centres, as torch's `interpolate(mode="bilinear", align_corners=False)`
/// without antialiasing.
///
/// Output pixel `d` samples source coordinate `s = (d + ½)·in/out − ½`, clamped to
/// `[0, in − 1]`, weighting the two neighbours `⌊s⌋` and `⌊s⌋ + 1` by `1 − λ` and `λ`,
/// `λ = s − ⌊s⌋` (per axis; the product for the four neighbours). An empty input or
/// output gives an empty image.
///
/// ```
/// use densenet_runtime::ndarray::{array, Array3};
/// use densenet_runtime::train::resize_bilinear;
///
/// let image = array![[[1.0f32, 2.0], [3.0, 4.0]]];
/// let up = resize_bilinear(image.view(), 4, 4);
/// assert_eq!(up.slice(densenet_runtime::ndarray::s![0, 0, ..]).to_vec(), [1.0, 1.25, 1.75, 2.0]);
/// ```
pub fn resize_bilinear(image: ArrayView3<f32>, height: usize, width: usize) -> Array3<f32> {
    let (c, h, w) = image.dim();
    if h == 0 || w == 0 {
        return Array3::zeros((c, height, width));
    }
    let ys = taps(h, height);
    let xs = taps(w, width);
    Array3::from_shape_fn((c, height, width), |(k, y, x)| {
        let (y0, y1, ly) = ys[y];
        let (x0, x1, lx) = xs[x];
        let top = (1.0 - lx) * image[[k, y0, x0]] + lx * image[[k, y0, x1]];
        let bottom = (1.0 - lx) * image[[k, y1, x0]] + lx * image[[k, y1, x1]];
        (1.0 - ly) * top + ly * bottom
    })
}

/// Per output index along one axis: the two source indices and the second's weight
/// (torch's `area_pixel_compute_source_index` and `compute_indices_weights_linear`).
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|d| {
            let s = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            let lambda = (s - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, lambda)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pixel (c, y, x) holds a value unique to it (never 0).
    fn numbered(c: usize, h: usize, w: usize) -> Array3<f32> {
        Array3::from_shape_fn((c, h, w), |(k, y, x)| (k * h * w + y * w + x + 1) as f32)
    }

    #[test]
    fn a_pad_crop_is_an_exact_window_of_the_padded_image() {
        let image = numbered(2, 5, 6);
        let pad = 3;
        let mut padded = Array3::zeros((2, 5 + 2 * pad, 6 + 2 * pad));
        padded
            .slice_mut(s![.., pad..pad + 5, pad..pad + 6])
            .assign(&image);
        let no_flip = Augment::PadCropFlip { pad, flip: false };
        let mut offsets = std::collections::HashSet::new();
        for seed in 0..200 {
            let out = no_flip
                .apply(image.view(), &mut image_rng(seed, 0))
                .unwrap();
            // Exactly one window of the padded image equals the output.
            let windows: Vec<(usize, usize)> = (0..=2 * pad)
                .flat_map(|dy| (0..=2 * pad).map(move |dx| (dy, dx)))
                .filter(|&(dy, dx)| padded.slice(s![.., dy..dy + 5, dx..dx + 6]) == out)
                .collect();
            assert_eq!(windows.len(), 1, "seed {seed}");
            offsets.insert(windows[0]);
        }
        // 200 draws over 49 offsets reach most of them (each is missed with p ~ 0.017).
        assert!(offsets.len() > 40, "{}", offsets.len());
        // Pad 0 keeps the image.
        let none = Augment::PadCropFlip {
            pad: 0,
            flip: false,
        };
        assert_eq!(none.apply(image.view(), &mut Rng::new(1)).unwrap(), image);
    }

    #[test]
    fn flip_mirrors_exactly_about_half_of_the_time() {
        let image = numbered(3, 4, 5);
        let mut mirrored = image.clone();
        for k in 0..3 {
            for y in 0..4 {
                for x in 0..5 {
                    mirrored[[k, y, x]] = image[[k, y, 4 - x]];
                }
            }
        }
        let n = 4000;
        let mut flipped = 0u64;
        for seed in 0..n {
            let out = Augment::Flip
                .apply(image.view(), &mut image_rng(seed, 3))
                .unwrap();
            if out == mirrored {
                flipped += 1;
            } else {
                assert_eq!(out, image);
            }
        }
        // Binomial(4000, 1/2): sd ~32; allow 5 sd.
        assert!(flipped.abs_diff(2000) < 160, "{flipped}");
    }

    #[test]
    fn identity_resized_crop_returns_the_image() {
        let image = numbered(3, 7, 7);
        let identity = Augment::RandomResizedCrop {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            flip: false,
        };
        for seed in 0..20 {
            let out = identity.apply(image.view(), &mut Rng::new(seed)).unwrap();
            assert_eq!(out, image);
        }
        // A wide image cannot hold a full-area square window: the fallback is the centre
        // square, 4 of 8 columns starting at 2, resized back to 4x8.
        let wide = numbered(1, 4, 8);
        let out = identity.apply(wide.view(), &mut Rng::new(0)).unwrap();
        let centre = wide.slice(s![.., .., 2..6]);
        assert_eq!(out, resize_bilinear(centre, 4, 8));
    }

    #[test]
    fn resized_crop_windows_follow_scale_and_ratio() {
        let (h, w) = (40, 50);
        let (scale, ratio) = ((0.25, 0.5), (0.5, 2.0));
        for seed in 0..500 {
            let (top, left, ch, cw) = resized_crop_window(h, w, scale, ratio, &mut Rng::new(seed));
            assert!(top + ch <= h && left + cw <= w);
            // Rounding each side moves the area and ratio a little off the ranges.
            let area = (ch * cw) as f64 / (h * w) as f64;
            let r = cw as f64 / ch as f64;
            assert!((0.23..=0.52).contains(&area), "area {area}");
            assert!((0.45..=2.2).contains(&r), "ratio {r}");
        }
    }

    #[test]
    fn bilinear_upsampling_equals_torch_formula() {
        // F.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), size=(4, 4),
        //               mode="bilinear", align_corners=False)
        // Sources per output index: (d + .5)/2 - .5 = -.25 (→ 0), .25, .75, 1.25 (→ 1).
        let image = ndarray::array![[[1.0f32, 2.0], [3.0, 4.0]]];
        let up = resize_bilinear(image.view(), 4, 4);
        let expected = ndarray::array![[
            [1.0f32, 1.25, 1.75, 2.0],
            [1.5, 1.75, 2.25, 2.5],
            [2.5, 2.75, 3.25, 3.5],
            [3.0, 3.25, 3.75, 4.0]
        ]];
        assert_eq!(up, expected);
        // 3 -> 2 columns: sources (d + .5)·1.5 - .5 = .25 and 1.75.
        let row = ndarray::array![[[0.0f32, 4.0, 8.0]]];
        let down = resize_bilinear(row.view(), 1, 2);
        assert_eq!(down, ndarray::array![[[1.0f32, 7.0]]]);
        // Same size: every source is exact.
        let image = numbered(2, 3, 5);
        assert_eq!(resize_bilinear(image.view(), 3, 5), image);
    }

    #[test]
    #[cfg(feature = "parallel")]
    fn positions_and_seeds_draw_independent_transforms_in_any_thread_count() {
        let images = Array4::from_shape_fn((6, 3, 8, 8), |(n, c, y, x)| {
            (n * 192 + c * 64 + y * 8 + x) as f32
        });
        let batch = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = images.clone();
            pool.install(|| Augment::imagenet().apply_batch(&mut out, 11))
                .unwrap();
            out
        };
        let one = batch(1);
        assert_eq!(one, batch(2));
        assert_ne!(one, images);
        // Image i is transformed by image_rng(11, i), whatever the rest of the batch.
        for i in 0..6 {
            let alone = Augment::imagenet()
                .apply(images.index_axis(Axis(0), i), &mut image_rng(11, i))
                .unwrap();
            assert_eq!(one.index_axis(Axis(0), i), alone);
        }
        let mut other = images.clone();
        Augment::imagenet().apply_batch(&mut other, 12).unwrap();
        assert_ne!(one, other);
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        let image = numbered(1, 4, 4);
        let bad = [
            Augment::PadCropFlip {
                pad: MAX_PAD + 1,
                flip: true,
            },
            Augment::RandomResizedCrop {
                scale: (0.0, 1.0),
                ratio: (0.75, 1.33),
                flip: true,
            },
            Augment::RandomResizedCrop {
                scale: (0.5, 1.5),
                ratio: (0.75, 1.33),
                flip: true,
            },
            Augment::RandomResizedCrop {
                scale: (0.5, 0.4),
                ratio: (0.75, 1.33),
                flip: true,
            },
            Augment::RandomResizedCrop {
                scale: (0.5, 1.0),
                ratio: (f32::NAN, 1.33),
                flip: true,
            },
        ];
        for augment in bad {
            assert!(
                matches!(augment.validate(), Err(TrainError::Setting { .. })),
                "{augment:?}"
            );
            assert!(augment.apply(image.view(), &mut Rng::new(0)).is_err());
        }
        assert!(Augment::cifar().validate().is_ok() && Augment::imagenet().validate().is_ok());
        // An empty image comes back as it is.
        let empty = Array3::<f32>::zeros((3, 0, 5));
        let out = Augment::imagenet().apply(empty.view(), &mut Rng::new(0));
        assert_eq!(out.unwrap().dim(), (3, 0, 5));
    }
}
