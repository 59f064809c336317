//! Images in, tensors out: decode JPEG/PNG and preprocess as torchvision's ImageNet
//! evaluation transform (and Keras's "torch" mode) do; read labelled image folders.
//!
//! - [`Preprocessing`]: `Resize(256)` (shorter side, bilinear with antialiasing) →
//!   `CenterCrop(224)` → `ToTensor()` (scale to [0, 1]) → `Normalize(mean, std)`, giving
//!   a CHW tensor; [`Preprocessing::pixels`] stops before the normalisation.
//! - [`Normalization`]: Keras's `preprocess_input` modes by name (`torch`, `tf`, `caffe`)
//!   and torchvision's `Normalize`.
//! - [`ImageFolder`]: one sub-folder per class, decoded a batch at a time in parallel,
//!   with the evaluation transform ([`Resize`]), seeded augmentation
//!   ([`Augment`](crate::train::Augment)) and a [`Normalization`]; a
//!   [`Source`](crate::train::Source) for [`fit`](crate::train::fit).
//!
//! Any bytes give a tensor or an [`ImageError`], never a panic or an abort: images
//! larger than [`MAX_SIDE`] or [`MAX_PIXELS`] are refused from their header, before
//! decoding (decompression bombs); truncated JPEG data is an error, not a gray fill;
//! and an aspect ratio so extreme that the resize would exceed [`MAX_RESIZED_PIXELS`]
//! is refused before anything is allocated for it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, Limits, RgbImage};
use ndarray::{s, Array3, Array4, ArrayViewMut3, Axis, Zip};

mod error;
mod folder;

pub use error::ImageError;
pub use folder::{FolderConfig, ImageFolder, Resize, Unreadable};

/// Longest side of an image the decoder accepts (2²⁰; [`MAX_PIXELS`] bounds the area).
pub const MAX_SIDE: u32 = 1 << 20;
/// Most pixels of an image the decoder accepts (2²⁷, 384 MiB as 8-bit RGB).
pub const MAX_PIXELS: u64 = 1 << 27;
/// Most bytes the decoder may allocate at once (1 GiB: a [`MAX_PIXELS`] image as
/// 16-bit RGBA).
const MAX_DECODER_ALLOC: u64 = 1 << 30;
/// Most pixels of the resized image (2²⁴, 48 MiB as RGB): with the default resize of
/// 256, aspect ratios up to 256:1.
pub const MAX_RESIZED_PIXELS: u64 = 1 << 24;

/// The preprocessing of a classifier's input images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocessing {
    /// Length the shorter side is resized to (bilinear).
    pub resize: u32,
    /// Side of the square center crop taken after resizing.
    pub crop: u32,
    /// Per-channel mean subtracted after scaling to [0, 1] (RGB).
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by (RGB).
    pub std: [f32; 3],
}

impl Default for Preprocessing {
    /// ImageNet evaluation: resize 256, crop 224, torchvision's mean and std.
    fn default() -> Self {
        Preprocessing {
            resize: 256,
            crop: 224,
            mean: Normalization::IMAGENET_MEAN,
            std: Normalization::IMAGENET_STD,
        }
    }
}

impl Preprocessing {
    /// Reads, decodes and preprocesses an image file into a `(3, crop, crop)` tensor.
    ///
    /// # Errors
    /// [`ImageError::Io`] if the file cannot be read, else as [`Preprocessing::decode`]
    /// (with the file's path).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Array3<f32>, ImageError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.decode(&bytes).map_err(|mut e| {
            if let ImageError::Decode { path: p, .. }
            | ImageError::TooLarge { path: p, .. }
            | ImageError::ResizedTooLarge { path: p, .. }
            | ImageError::Truncated { path: p, .. } = &mut e
            {
                *p = Some(path.to_path_buf());
            }
            e
        })
    }

    /// Decodes and preprocesses an encoded JPEG or PNG image.
    ///
    /// # Errors
    /// [`ImageError::Decode`] for bytes that are not a supported image;
    /// [`ImageError::TooLarge`] for an image past [`MAX_SIDE`] or [`MAX_PIXELS`];
    /// [`ImageError::Truncated`] for JPEG data that ends before its end-of-image marker;
    /// as [`Preprocessing::apply`] after decoding.
    pub fn decode(&self, bytes: &[u8]) -> Result<Array3<f32>, ImageError> {
        let image = decode_checked(bytes)?;
        self.apply(&image)
    }

    /// Preprocesses a decoded RGB image: [`pixels`](Self::pixels), then
    /// [`normalization`](Self::normalization).
    ///
    /// # Errors
    /// [`ImageError::Config`] for a crop larger than the resize or zero sizes, or a mean
    /// or standard deviation that is not finite (or a zero standard deviation);
    /// [`ImageError::Decode`] for an empty image; [`ImageError::ResizedTooLarge`] if the
    /// resized image would have more than [`MAX_RESIZED_PIXELS`] pixels.
    pub fn apply(&self, image: &RgbImage) -> Result<Array3<f32>, ImageError> {
        check_crop(self.resize, self.crop)?;
        let normalization = self.normalization();
        normalization.validate()?;
        let mut pixels = self.pixels(image)?;
        normalization.apply(pixels.view_mut())?;
        Ok(pixels)
    }

    /// The normalisation [`apply`](Self::apply) ends with: torchvision's
    /// `Normalize(mean, std)` after scaling to [0, 1], [`Normalization::MeanStd`] (the
    /// default's is [`Normalization::Torch`]). For Keras's other modes, normalise the
    /// [`pixels`](Self::pixels) with another [`Normalization`].
    pub fn normalization(&self) -> Normalization {
        Normalization::MeanStd {
            mean: self.mean,
            std: self.std,
        }
    }

    /// Resizes the shorter side to `resize` and takes the centre `crop x crop` square:
    /// a `(3, crop, crop)` RGB tensor of pixel values in `0.0..=255.0`, not normalised.
    ///
    /// # Errors
    /// As [`Preprocessing::apply`], but for the mean and standard deviation.
    pub fn pixels(&self, image: &RgbImage) -> Result<Array3<f32>, ImageError> {
        check_crop(self.resize, self.crop)?;
        let resized = resize_shorter_side(image, self.resize)?;
        Ok(center_crop(&resized, self.crop, self.crop))
    }
}

/// Checks that a square `crop` fits in a shorter side of `resize`.
fn check_crop(resize: u32, crop: u32) -> Result<(), ImageError> {
    if crop == 0 || crop > resize {
        return Err(ImageError::Config {
            reason: format!("crop {crop} must be in 1..={resize} (the resize)"),
        });
    }
    Ok(())
}

/// Keras's `preprocess_input` modes (`keras.applications.imagenet_utils`) and
/// torchvision's `Normalize`: how RGB pixel values in `0..=255` become a model's input.
///
/// Each mode computes exactly Keras's `float32` operations, in Keras's order:
///
/// | mode | channel `c` of pixel `x` | models |
/// |---|---|---|
/// | [`Torch`](Self::Torch) | `(x / 255 − mean[c]) / std[c]`, ImageNet's mean and std, RGB | torchvision, timm, Keras DenseNet |
/// | [`Tf`](Self::Tf) | `x / 127.5 − 1`, RGB | Keras MobileNet, Inception, … |
/// | [`Caffe`](Self::Caffe) | `x − mean[c]` in BGR order (channel 0 is blue), no scaling | Keras VGG, ResNet50 |
/// | [`MeanStd`](Self::MeanStd) | `(x / 255 − mean[c]) / std[c]`, RGB | torchvision's `Normalize(mean, std)` |
///
/// ```
/// use densenet_runtime::image::Normalization;
/// use densenet_runtime::ndarray::Array3;
///
/// // One pixel, RGB (255, 0, 127.5).
/// let pixel = Array3::from_shape_vec((3, 1, 1), vec![255.0f32, 0.0, 127.5])?;
/// let mut tf = pixel.clone();
/// Normalization::Tf.apply(tf.view_mut())?;
/// assert_eq!(tf.as_slice().unwrap(), [1.0, -1.0, 0.0]);
/// let mut caffe = pixel.clone();
/// Normalization::Caffe.apply(caffe.view_mut())?;
/// assert_eq!(caffe.as_slice().unwrap(), [127.5 - 103.939, 0.0 - 116.779, 255.0 - 123.68]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Normalization {
    /// Keras `mode="torch"`: scale to [0, 1], then ImageNet's mean and std (RGB). The
    /// input of torchvision's and timm's DenseNets, and of Keras's own.
    #[default]
    Torch,
    /// Keras `mode="tf"`: scale to [-1, 1].
    Tf,
    /// Keras `mode="caffe"`: RGB to BGR, then subtract ImageNet's BGR mean; no scaling.
    Caffe,
    /// Scale to [0, 1], then subtract `mean` and divide by `std` (per RGB channel).
    MeanStd {
        /// Per-channel mean (RGB, in [0, 1] units).
        mean: [f32; 3],
        /// Per-channel standard deviation (RGB, in [0, 1] units).
        std: [f32; 3],
    },
}

impl Normalization {
    /// ImageNet's per-channel mean, RGB, in [0, 1] units (Keras's "torch" mode).
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    /// ImageNet's per-channel standard deviation, RGB, in [0, 1] units.
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
    /// ImageNet's per-channel mean, BGR, in pixel units (Keras's "caffe" mode).
    pub const CAFFE_MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];

    /// Checks a [`MeanStd`](Self::MeanStd)'s values (the named modes are always valid).
    ///
    /// # Errors
    /// [`ImageError::Config`] for a mean or standard deviation that is not finite, or a
    /// zero standard deviation.
    pub fn validate(&self) -> Result<(), ImageError> {
        if let Normalization::MeanStd { mean, std } = self {
            let bad_std = std.iter().any(|s| !s.is_finite() || *s == 0.0);
            if bad_std || mean.iter().any(|m| !m.is_finite()) {
                return Err(ImageError::Config {
                    reason: format!(
                        "mean {mean:?} must be finite and std {std:?} finite and nonzero"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Normalises a `(3, H, W)` RGB image of pixel values in `0..=255`, in place.
    ///
    /// # Errors
    /// [`ImageError::Config`] for an image without 3 channels, or as
    /// [`Normalization::validate`].
    pub fn apply(&self, image: ArrayViewMut3<f32>) -> Result<(), ImageError> {
        self.validate()?;
        if image.dim().0 != 3 {
            return Err(ImageError::Config {
                reason: format!(
                    "normalisation takes RGB images of 3 channels; got {}",
                    image.dim().0
                ),
            });
        }
        self.normalize(image);
        Ok(())
    }

    /// [`apply`](Self::apply) for a valid normalisation and a 3-channel image.
    pub(crate) fn normalize(&self, mut image: ArrayViewMut3<f32>) {
        let (mean, std) = match *self {
            Normalization::Tf => {
                image.mapv_inplace(|x| x / 127.5 - 1.0);
                return;
            }
            Normalization::Caffe => {
                // Keras reverses the channels, then subtracts the BGR mean.
                let (mut red, mut blue) = image.multi_slice_mut((s![0, .., ..], s![2, .., ..]));
                Zip::from(&mut red).and(&mut blue).for_each(std::mem::swap);
                for (mut plane, m) in image.outer_iter_mut().zip(Self::CAFFE_MEAN_BGR) {
                    plane.mapv_inplace(|x| x - m);
                }
                return;
            }
            Normalization::Torch => (Self::IMAGENET_MEAN, Self::IMAGENET_STD),
            Normalization::MeanStd { mean, std } => (mean, std),
        };
        for ((mut plane, m), s) in image.outer_iter_mut().zip(mean).zip(std) {
            plane.mapv_inplace(|x| (x / 255.0 - m) / s);
        }
    }
}

/// Resizes `image` so that its shorter side is `resize` (bilinear, antialiased: the
/// `image` crate's triangle filter), the longer side `⌊resize · long / short⌋` as
/// torchvision's `Resize(int)`.
pub(crate) fn resize_shorter_side(image: &RgbImage, resize: u32) -> Result<RgbImage, ImageError> {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return Err(empty_image());
    }
    // In u64 a u32 times a u32 cannot overflow.
    let (short, long) = (u64::from(w.min(h)), u64::from(w.max(h)));
    let side = u64::from(resize);
    let resized_long = side * long / short;
    let (width, height) = if w <= h {
        (side, resized_long)
    } else {
        (resized_long, side)
    };
    resize_to(image, width, height, resize)
}

/// Resizes `image` so that it just covers `width x height` keeping its aspect ratio:
/// one side becomes the target's, the other `⌊⌋` of its scaled length, at least the
/// target's. An image already of that size is unchanged.
pub(crate) fn resize_cover(
    image: &RgbImage,
    width: u32,
    height: u32,
) -> Result<RgbImage, ImageError> {
    let (w, h) = (u64::from(image.width()), u64::from(image.height()));
    if w == 0 || h == 0 {
        return Err(empty_image());
    }
    let (tw, th) = (u64::from(width), u64::from(height));
    // Scale by max(th / h, tw / w), compared without division.
    let (rw, rh) = if th * w >= tw * h {
        ((w * th / h).max(tw), th)
    } else {
        (tw, (h * tw / w).max(th))
    };
    resize_to(image, rw, rh, u32::try_from(rw.min(rh)).unwrap_or(u32::MAX))
}

/// Resizes `image` to `width x height`, refusing sizes past [`MAX_RESIZED_PIXELS`]
/// before anything is allocated for them (`resize` is the setting, for the error).
fn resize_to(
    image: &RgbImage,
    width: u64,
    height: u64,
    resize: u32,
) -> Result<RgbImage, ImageError> {
    let pixels = width.checked_mul(height);
    if pixels.is_none_or(|pixels| pixels > MAX_RESIZED_PIXELS) {
        return Err(ImageError::ResizedTooLarge {
            path: None,
            width: image.width(),
            height: image.height(),
            resize,
            resized_width: width,
            resized_height: height,
            limit: MAX_RESIZED_PIXELS,
        });
    }
    // Both sides are at most `MAX_RESIZED_PIXELS` < 2³², so they fit a u32. An image of
    // the target size is copied unchanged by the `image` crate.
    Ok(image::imageops::resize(
        image,
        width as u32,
        height as u32,
        FilterType::Triangle,
    ))
}

/// The centre `width x height` window of `image` (at least that large) as a CHW
/// tensor of pixel values.
fn center_crop(image: &RgbImage, width: u32, height: u32) -> Array3<f32> {
    let window = center_window(image, width, height);
    Array3::from_shape_fn((3, height as usize, width as usize), |(c, y, x)| {
        f32::from(window.get_pixel(x as u32, y as u32)[c])
    })
}

/// The centre `width x height` window of `image` (at least that large). torchvision's
/// CenterCrop rounds the offsets half to even (Python's round).
pub(crate) fn center_window(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let top = ((image.height() - height) as f64 / 2.0).round_ties_even() as u32;
    let left = ((image.width() - width) as f64 / 2.0).round_ties_even() as u32;
    image::imageops::crop_imm(image, left, top, width, height).to_image()
}

fn empty_image() -> ImageError {
    ImageError::Decode {
        path: None,
        reason: "the image is empty".into(),
    }
}

/// Decodes `bytes` as an RGB image under the decoder limits: the header's size is
/// checked first (no pixel is decoded for an image past [`MAX_SIDE`] or
/// [`MAX_PIXELS`]), then the decoder runs with the same limits (and an allocation cap),
/// and JPEG data must reach its end-of-image marker.
pub(crate) fn decode_checked(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let decode_error = |e: image::ImageError| ImageError::Decode {
        path: None,
        reason: e.to_string(),
    };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_error(e.into()))
    };
    // A PNG's size is read from its IHDR chunk first: the decoder's own header reading
    // refuses huge claims with a bare "memory limit" (or wants image data to report them).
    let (width, height) = match png_size(bytes) {
        Some(size) => size,
        None => reader()?.into_dimensions().map_err(decode_error)?,
    };
    let too_large = |path: Option<PathBuf>| ImageError::TooLarge {
        path,
        width,
        height,
        max_side: MAX_SIDE,
        max_pixels: MAX_PIXELS,
    };
    if width.max(height) > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(too_large(None));
    }
    let mut reader = reader()?;
    let format = reader.format();
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(None),
        other => decode_error(other),
    })?;
    if format == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(ImageError::Truncated {
            path: None,
            format: "JPEG".into(),
        });
    }
    Ok(image.to_rgb8())
}

/// The `(width, height)` a PNG's header claims: the 8-byte signature, then the IHDR
/// chunk (length, `IHDR`, width and height as big-endian `u32`s).
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let header = bytes.strip_prefix(SIGNATURE)?.get(4..16)?;
    let (kind, size) = header.split_at(4);
    if kind != b"IHDR" {
        return None;
    }
    let side = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((side(&size[..4]), side(&size[4..])))
}

/// Whether JPEG `bytes` reach an end-of-image marker (`FF D9`). The decoder accepts
/// data that stops early and fills the rest of the image with gray; this walks the
/// markers after the start-of-image: segments are skipped by their length (so an EXIF
/// thumbnail's own end marker does not count), and entropy-coded data by its markers
/// (`FF 00` is a stuffed byte, `FF D0`–`FF D7` restarts, `FF FF` fill).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1; // entropy-coded data
            continue;
        }
        match bytes[i + 1] {
            0xD9 => return true,
            0xFF => i += 1,
            0x00 | 0x01 | 0xD0..=0xD8 => i += 2,
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4) else {
                    return false;
                };
                i += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
    false
}

/// Stacks `(C, H, W)` images into an NCHW batch.
///
/// # Errors
/// [`ImageError::Config`] if the images differ in shape or there are none.
pub fn stack(images: &[Array3<f32>]) -> Result<Array4<f32>, ImageError> {
    let views: Vec<_> = images.iter().map(|i| i.view()).collect();
    ndarray::stack(Axis(0), &views).map_err(|e| ImageError::Config {
        reason: format!("cannot stack {} images into a batch: {e}", images.len()),
    })
}
