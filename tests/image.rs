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

use densenet::runtime::image::{stack, Preprocessing};
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
