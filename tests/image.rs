//! Image preprocessing against torchvision's ImageNet evaluation transform.
//!
//! Reference: `tools/make_image_fixture.py` (torchvision 0.29, Pillow): Resize(256) →
//! CenterCrop(224) → ToTensor() → Normalize(mean, std) of `tests/fixtures/astronaut.png`
//! (a crop of scikit-image's public-domain `astronaut` photo).
//!
//! Tolerance: Pillow resizes in 8-bit fixed point and rounds to u8, the `image` crate
//! filters in f32 before rounding; both use a triangle (bilinear) filter widened by the
//! downscale factor (antialiasing). So pixels may differ by a rounding step or two:
//! we allow 3/255 before normalisation (3/255/0.224 ≈ 0.053 after), and require the mean
//! difference to stay below 0.5/255, so a systematic error (a shifted crop, a swapped
//! channel, no antialiasing) cannot hide in the bound.

use std::path::PathBuf;

use densenet::runtime::image::{stack, Preprocessing, MAX_RESIZED_PIXELS, MAX_SIDE};
use densenet::runtime::ImageError;
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn torchvision_pixels() -> Vec<f32> {
    let bytes = std::fs::read(fixture("astronaut.preprocessed.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor("pixels").unwrap();
    assert_eq!(view.shape(), [3, 224, 224]);
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// (max, mean) of |ours - theirs| in [0, 1] pixel units (normalisation undone).
fn pixel_differences(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    let std = Preprocessing::default().std;
    let plane = 224 * 224;
    let mut max = 0.0f32;
    let mut sum = 0.0f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let d = (a - b).abs() * std[i / plane];
        max = max.max(d);
        sum += d;
    }
    (max, sum / ours.len() as f32)
}

#[test]
fn png_matches_torchvision_transforms() {
    let ours = Preprocessing::default()
        .load(fixture("astronaut.png"))
        .unwrap();
    assert_eq!(ours.dim(), (3, 224, 224));
    let (max, mean) = pixel_differences(ours.as_slice().unwrap(), &torchvision_pixels());
    println!(
        "vs torchvision: max {:.2}/255, mean {:.3}/255",
        max * 255.0,
        mean * 255.0
    );
    assert!(
        max <= 3.0 / 255.0,
        "max pixel difference {}/255",
        max * 255.0
    );
    assert!(
        mean <= 0.5 / 255.0,
        "mean pixel difference {}/255",
        mean * 255.0
    );
}

#[test]
fn jpeg_decodes_close_to_the_png() {
    // The JPEG is the same picture at quality 92: lossy, so only close.
    let ours = Preprocessing::default()
        .load(fixture("astronaut.jpg"))
        .unwrap();
    let (_, mean) = pixel_differences(ours.as_slice().unwrap(), &torchvision_pixels());
    assert!(
        mean <= 4.0 / 255.0,
        "mean pixel difference {}/255",
        mean * 255.0
    );
    let batch = stack(&[ours.clone(), ours]).unwrap();
    assert_eq!(batch.dim(), (2, 3, 224, 224));
}

#[test]
fn bad_images_are_clear_errors() {
    let err = Preprocessing::default()
        .load(fixture("missing.png"))
        .unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
    let err = Preprocessing::default()
        .load(fixture("README.md"))
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::Decode { path: Some(_), .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("cannot decode image "), "{err}");
    let png = std::fs::read(fixture("astronaut.png")).unwrap();
    let err = Preprocessing::default()
        .decode(&png[..png.len() / 2])
        .unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err:?}");
    let bad = Preprocessing {
        crop: 300,
        ..Preprocessing::default()
    };
    assert!(matches!(bad.decode(&png), Err(ImageError::Config { .. })));
}

/// A black `width x height` RGB PNG, encoded in memory.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::new(width, height);
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// A 1x100000 PNG (470 bytes at best compression): resizing its shorter side to 256 asked for a
/// 256x25600000 image, 19.7 GB, and the process aborted.
#[test]
fn an_extreme_aspect_ratio_is_refused_before_resizing() {
    let bytes = png(1, 100_000);
    let err = Preprocessing::default().decode(&bytes).unwrap_err();
    let ImageError::ResizedTooLarge {
        width,
        height,
        resize,
        resized_width,
        resized_height,
        limit,
        ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!((width, height, resize), (1, 100_000, 256));
    assert_eq!((resized_width, resized_height), (256, 25_600_000));
    assert_eq!(limit, MAX_RESIZED_PIXELS);
    let message = err.to_string();
    assert!(
        message.contains("1x100000") && message.contains("16777216"),
        "{message}"
    );
    // The same from a file names it.
    let path = std::env::temp_dir().join(format!("densenet-tall-{}.png", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let err = Preprocessing::default().load(&path).unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(
        matches!(&err, ImageError::ResizedTooLarge { path: Some(p), .. } if *p == path),
        "{err:?}"
    );
    // A 4:1 panorama is fine.
    let out = Preprocessing::default().decode(&png(400, 100)).unwrap();
    assert_eq!(out.dim(), (3, 224, 224));
}

/// A 1x16777216 image: `256 · 16777216` is 2³², which `as u32` made 0, and the center
/// crop's `0 − 224` underflowed. Refused by the decoder limits from the PNG header,
/// and by the resize bound when the image is already decoded.
#[test]
fn a_side_past_the_limits_is_refused() {
    let tall = image::RgbImage::new(1, 16_777_216);
    let err = Preprocessing::default().apply(&tall).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::ResizedTooLarge {
                width: 1,
                height: 16_777_216,
                resized_height: 4_294_967_296,
                ..
            }
        ),
        "{err:?}"
    );
    let mut bytes = Vec::new();
    tall.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    drop(tall);
    let err = Preprocessing::default().decode(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 1,
                height: 16_777_216,
                max_side: MAX_SIDE,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("1x16777216"), "{err}");
}

/// A PNG whose header claims 60000x60000 pixels (3.6 billion; its data would decompress
/// to 10 GB): refused from the header, before any pixel is decoded.
#[test]
fn a_decompression_bomb_is_refused_from_its_header() {
    let mut bytes = png(8, 8);
    // IHDR's width and height are bytes 16..24; its CRC (29..33) covers bytes 12..29.
    bytes[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    let err = Preprocessing::default().decode(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 60_000,
                height: 60_000,
                ..
            }
        ),
        "{err:?}"
    );
}

/// PNG's CRC-32 (IEEE, reflected), bit by bit.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A JPEG cut in half decoded "successfully", the missing rows gray; now an error.
#[test]
fn a_truncated_jpeg_is_an_error() {
    let jpeg = std::fs::read(fixture("astronaut.jpg")).unwrap();
    for keep in [jpeg.len() / 2, jpeg.len() - 2] {
        let err = Preprocessing::default().decode(&jpeg[..keep]).unwrap_err();
        assert!(
            matches!(&err, ImageError::Truncated { format, .. } if format == "JPEG"),
            "{keep} bytes: {err:?}"
        );
    }
    // Bytes after the end-of-image marker do not matter.
    let mut padded = jpeg.clone();
    padded.extend_from_slice(&[0; 16]);
    assert!(Preprocessing::default().decode(&padded).is_ok());
}

#[test]
fn a_zero_or_non_finite_std_is_a_config_error() {
    let png = png(8, 8);
    for std in [[0.0, 1.0, 1.0], [1.0, f32::NAN, 1.0]] {
        let bad = Preprocessing {
            resize: 8,
            crop: 8,
            std,
            ..Preprocessing::default()
        };
        assert!(matches!(bad.decode(&png), Err(ImageError::Config { .. })));
    }
}
