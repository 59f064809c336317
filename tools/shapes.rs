//! A deterministic synthetic image folder: four classes of coloured shapes (`cross`,
//! `disc`, `square`, `triangle`) on noisy backgrounds, half PNG, half JPEG.
//!
//! Shared by `tools/make_image_folder.rs`, the image-folder tests and the fine-tuning
//! example (`#[path = "../tools/shapes.rs"] mod shapes;`). Every random choice comes
//! from [`Rng`] seeded by the caller, so a seed always writes the same pixels (the JPEG
//! files' bytes depend on the `image` crate's encoder version).
//!
//! The classes differ only in shape: the colours (one dark, one light, which is the shape
//! at random), the size (scaled so that every class covers the same area), the position,
//! the background's gradient and the noise are drawn independently of the class. A
//! logistic regression on an image's mean and std colour is at chance (0.265 for 4
//! classes); a small DenseNet reaches 0.9 in 10 epochs (`tests/image_folder.rs`). With
//! colours uniform over all RGB, including low-contrast pairs, neither it nor a 4-layer
//! Keras CNN learned anything in 10 epochs: hence the contrast.

#![allow(dead_code)] // each includer uses part of the module

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use densenet::runtime::Rng;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, Rgb, RgbImage};

/// The class folders, in label order (sorted by name, as an image folder reads them).
pub const CLASSES: [&str; 4] = ["cross", "disc", "square", "triangle"];

/// Writes `images_per_class` images of `size x size` pixels per class into
/// `dir/<class>/`, creating the folders; returns the files written, class by class.
/// Image `i` of a class is PNG for even `i`, JPEG (quality 90) for odd.
pub fn write_shapes_folder(
    dir: &Path,
    images_per_class: usize,
    size: u32,
    seed: u64,
) -> io::Result<Vec<PathBuf>> {
    if size < 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shapes need at least 8x8 pixels; got size {size}"),
        ));
    }
    let mut rng = Rng::new(seed);
    let mut files = Vec::new();
    for (class, name) in CLASSES.iter().enumerate() {
        let class_dir = dir.join(name);
        fs::create_dir_all(&class_dir)?;
        for i in 0..images_per_class {
            let image = draw(class, size, &mut rng);
            let path = if i % 2 == 0 {
                let path = class_dir.join(format!("{name}_{i:04}.png"));
                image
                    .save_with_format(&path, ImageFormat::Png)
                    .map_err(io::Error::other)?;
                path
            } else {
                let path = class_dir.join(format!("{name}_{i:04}.jpg"));
                let file = io::BufWriter::new(fs::File::create(&path)?);
                JpegEncoder::new_with_quality(file, 90)
                    .encode_image(&image)
                    .map_err(io::Error::other)?;
                path
            };
            files.push(path);
        }
    }
    Ok(files)
}

/// One image of class `class` (an index into [`CLASSES`]).
pub fn draw(class: usize, size: u32, rng: &mut Rng) -> RgbImage {
    let s = size as f32;
    // Colours are uniform over their ranges, whatever the class: which of the two is the
    // darker is random too, so neither brightness nor hue tells the class.
    let (mut background, mut foreground) = (color(rng, 0.0, 110.0), color(rng, 145.0, 255.0));
    if rng.uniform() < 0.5 {
        std::mem::swap(&mut background, &mut foreground);
    }
    // Per class, a scale that gives every shape the same area (in units of the radius
    // squared: cross 2.04, disc π, square 2.56, triangle 1.8), so the share of the image
    // in the shape's colour does not tell the class either.
    let equal_area = [1.24, 1.0, 1.108, 1.32][class % 4];
    let radius = s * (0.16 + 0.12 * rng.uniform()) * equal_area;
    let margin = radius + 1.0;
    let cx = margin + (s - 2.0 * margin) * rng.uniform();
    let cy = margin + (s - 2.0 * margin) * rng.uniform();
    // A background gradient of random direction, so a flat colour is not a cue either.
    let (gx, gy) = (rng.normal() * 0.6, rng.normal() * 0.6);
    RgbImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (
            (x as f32 + 0.5 - cx) / radius,
            (y as f32 + 0.5 - cy) / radius,
        );
        let inside = match class {
            0 => (dx.abs() <= 0.3 && dy.abs() <= 1.0) || (dy.abs() <= 0.3 && dx.abs() <= 1.0),
            1 => dx * dx + dy * dy <= 1.0,
            2 => dx.abs() <= 0.8 && dy.abs() <= 0.8,
            // Apex up: the half-width grows from 0 at dy = -1 to 1 at dy = 0.8.
            _ => (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) / 1.8,
        };
        let shade = (x as f32 * gx + y as f32 * gy) / s * 40.0;
        let base = if inside {
            foreground
        } else {
            background.map(|c| c + shade)
        };
        Rgb(base.map(|c| (c + rng.normal() * 10.0).round().clamp(0.0, 255.0) as u8))
    })
}

/// A random RGB colour, each channel uniform in `lo..hi`.
fn color(rng: &mut Rng, lo: f32, hi: f32) -> [f32; 3] {
    [0; 3].map(|_| lo + (hi - lo) * rng.uniform())
}
