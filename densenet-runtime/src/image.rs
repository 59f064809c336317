//! Images in, tensors out: decode JPEG/PNG and preprocess as torchvision's ImageNet
//! evaluation transform (and Keras's "torch" mode) do.
//!
//! `Resize(256)` (shorter side, bilinear with antialiasing) → `CenterCrop(224)` →
//! `ToTensor()` (scale to [0, 1]) → `Normalize(mean, std)`, giving a CHW tensor.

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use ndarray::{Array3, Array4, Axis};

use crate::error::ImageError;

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
    /// [`ImageError::Io`] if the file cannot be read, [`ImageError::Decode`] if it is not
    /// a JPEG or PNG image, [`ImageError::Config`] for a crop larger than the resize.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Array3<f32>, ImageError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.decode(&bytes).map_err(|e| match e {
            ImageError::Decode { reason, .. } => ImageError::Decode {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })
    }

    /// Decodes and preprocesses an encoded JPEG or PNG image.
    ///
    /// # Errors
    /// [`ImageError::Decode`] for bytes that are not a supported image,
    /// [`ImageError::Config`] for a crop larger than the resize.
    pub fn decode(&self, bytes: &[u8]) -> Result<Array3<f32>, ImageError> {
        let image = image::load_from_memory(bytes).map_err(|e| ImageError::Decode {
            path: None,
            reason: e.to_string(),
        })?;
        self.apply(&image.to_rgb8())
    }

    /// Preprocesses a decoded RGB image.
    ///
    /// # Errors
    /// [`ImageError::Config`] for a crop larger than the resize or zero sizes.
    pub fn apply(&self, image: &RgbImage) -> Result<Array3<f32>, ImageError> {
        if self.crop == 0 || self.crop > self.resize {
            return Err(ImageError::Config {
                reason: format!(
                    "crop {} must be in 1..={} (the resize)",
                    self.crop, self.resize
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
        let (short, long) = (w.min(h) as u64, w.max(h) as u64);
        let resized_long = (self.resize as u64 * long / short) as u32;
        let (nw, nh) = if w <= h {
            (self.resize, resized_long)
        } else {
            (resized_long, self.resize)
        };
        let resized = image::imageops::resize(image, nw, nh, FilterType::Triangle);
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
