//! Images in, tensors out: decode JPEG/PNG and preprocess as torchvision's ImageNet
//! evaluation transform (and Keras's "torch" mode) do.
//!
//! `Resize(256)` (shorter side, bilinear with antialiasing) → `CenterCrop(224)` →
//! `ToTensor()` (scale to [0, 1]) → `Normalize(mean, std)`, giving a CHW tensor.
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
use ndarray::{Array3, Array4, Axis};

mod error;

pub use error::ImageError;

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
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
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

    /// Preprocesses a decoded RGB image.
    ///
    /// # Errors
    /// [`ImageError::Config`] for a crop larger than the resize or zero sizes, or a mean
    /// or standard deviation that is not finite (or a zero standard deviation);
    /// [`ImageError::Decode`] for an empty image; [`ImageError::ResizedTooLarge`] if the
    /// resized image would have more than [`MAX_RESIZED_PIXELS`] pixels.
    pub fn apply(&self, image: &RgbImage) -> Result<Array3<f32>, ImageError> {
        if self.crop == 0 || self.crop > self.resize {
            return Err(ImageError::Config {
                reason: format!(
                    "crop {} must be in 1..={} (the resize)",
                    self.crop, self.resize
                ),
            });
        }
        let bad_std = self.std.iter().any(|s| !s.is_finite() || *s == 0.0);
        if bad_std || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(ImageError::Config {
                reason: format!(
                    "mean {:?} must be finite and std {:?} finite and nonzero",
                    self.mean, self.std
                ),
            });
        }
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(ImageError::Decode {
                path: None,
                reason: "the image is empty".into(),
            });
        }
        // torchvision: the shorter side becomes `resize`, the longer int(resize * long / short).
        // In u64 a u32 times a u32 cannot overflow; the resized size is bounded before
        // anything is allocated for it.
        let (short, long) = (u64::from(w.min(h)), u64::from(w.max(h)));
        let resize = u64::from(self.resize);
        let resized_long = resize * long / short;
        let (resized_width, resized_height) = if w <= h {
            (resize, resized_long)
        } else {
            (resized_long, resize)
        };
        let pixels = resize.checked_mul(resized_long);
        if pixels.is_none_or(|pixels| pixels > MAX_RESIZED_PIXELS) {
            return Err(ImageError::ResizedTooLarge {
                path: None,
                width: w,
                height: h,
                resize: self.resize,
                resized_width,
                resized_height,
                limit: MAX_RESIZED_PIXELS,
            });
        }
        // Both sides are at most `MAX_RESIZED_PIXELS` < 2³², so they fit a u32.
        let (nw, nh) = (resized_width as u32, resized_height as u32);
        let resized = image::imageops::resize(image, nw, nh, FilterType::Triangle);
        // `resized_long ≥ resize ≥ crop` (long ≥ short): both offsets are ≥ 0.
        // torchvision's CenterCrop rounds the offsets half to even (Python's round).
        let top = ((nh - self.crop) as f64 / 2.0).round_ties_even() as u32;
        let left = ((nw - self.crop) as f64 / 2.0).round_ties_even() as u32;
        let crop = self.crop as usize;
        Ok(Array3::from_shape_fn((3, crop, crop), |(c, y, x)| {
            let pixel = resized.get_pixel(left + x as u32, top + y as u32);
            (f32::from(pixel[c]) / 255.0 - self.mean[c]) / self.std[c]
        }))
    }
}

/// Decodes `bytes` as an RGB image under the decoder limits: the header's size is
/// checked first (no pixel is decoded for an image past [`MAX_SIDE`] or
/// [`MAX_PIXELS`]), then the decoder runs with the same limits (and an allocation cap),
/// and JPEG data must reach its end-of-image marker.
fn decode_checked(bytes: &[u8]) -> Result<RgbImage, ImageError> {
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
