//! A deterministic synthetic image folder: four classes of coloured shapes (`cross`,
//! `disc`, `square`, `triangle`) on noisy backgrounds, half PNG, half JPEG.
//!
//! Shared by `tools/make_image_folder.rs`, the image-folder tests and the fine-tuning
//! example (`#[path = "../tools/shapes.rs"] mod shapes;`). Every random choice comes
//! from [`Rng`] seeded by the caller, so a seed always writes the same pixels (the JPEG
//! files' bytes depend on the `image` crate's encoder version).
//!
//! The classes differ only in shape: the shape's and the background's colours, the
//! shape's size and position and the noise are drawn independently of the class, so a
//! model cannot classify by mean colour but a small CNN learns the shapes in a few epochs.

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
    let background = color(rng);
    // The shape's colour is at least this far from the background's (sum over channels),
    // so the shape is visible; both are otherwise uniform over all colours.
    let foreground = loop {
        let c = color(rng);
        let distance: f32 = c.iter().zip(&background).map(|(a, b)| (a - b).abs()).sum();
        if distance > 150.0 {
            break c;
        }
    };
    let radius = s * (0.18 + 0.14 * rng.uniform());
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

/// A uniformly random RGB colour.
fn color(rng: &mut Rng) -> [f32; 3] {
    [0; 3].map(|_| 255.0 * rng.uniform())
}
