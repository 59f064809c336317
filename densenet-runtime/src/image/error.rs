//! Why an image could not be turned into a tensor.

use std::path::PathBuf;

use thiserror::Error;

/// Why an image could not be turned into a tensor.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read image {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The bytes are not a JPEG or PNG image the decoder accepts.
    #[error("cannot decode image{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Decode {
        /// The file, when decoding one.
        path: Option<PathBuf>,
        /// What the decoder said.
        reason: String,
    },
    /// The preprocessing settings cannot be applied.
    #[error("image preprocessing: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// An image larger than the decoder accepts (its header's size is checked before
    /// any pixel is decoded, so a small file claiming a huge image, a decompression
    /// bomb, is refused without the allocation).
    #[error(
        "image{} is {width}x{height} pixels; the limit is {max_side} pixels a side and {max_pixels} pixels in all",
        path_suffix(path)
    )]
    TooLarge {
        /// The file, when decoding one.
        path: Option<PathBuf>,
        /// The image's width.
        width: u32,
        /// The image's height.
        height: u32,
        /// The longest side accepted.
        max_side: u32,
        /// The most pixels accepted.
        max_pixels: u64,
    },
    /// An image whose aspect ratio is so extreme (or `resize` so large) that resizing
    /// its shorter side to `resize` would make an image of more than `limit` pixels.
    #[error(
        "image{} is {width}x{height} pixels: resizing its shorter side to {resize} would make it {resized_width}x{resized_height}, more than the limit of {limit} pixels (aspect ratio too extreme)",
        path_suffix(path)
    )]
    ResizedTooLarge {
        /// The file, when decoding one.
        path: Option<PathBuf>,
        /// The image's width.
        width: u32,
        /// The image's height.
        height: u32,
        /// The configured length of the shorter side after resizing.
        resize: u32,
        /// The width the resize would give.
        resized_width: u64,
        /// The height the resize would give.
        resized_height: u64,
        /// The most pixels a resized image may have.
        limit: u64,
    },
    /// Image data that ends before the image does (the JPEG decoder would fill the
    /// missing part with gray and say nothing).
    #[error(
        "truncated image{}: the {format} data ends before the image does",
        path_suffix(path)
    )]
    Truncated {
        /// The file, when decoding one.
        path: Option<PathBuf>,
        /// The image format (`JPEG`).
        format: String,
    },
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}
