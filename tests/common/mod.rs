//! Helpers shared by the tests that compare against torch fixtures.

use std::path::PathBuf;

use densenet::ndarray::Array2;
use densenet::runtime::{LayerName, Site};
use safetensors::SafeTensors;

/// A file of `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A float32 tensor of a safetensors file: shape and values.
pub fn read_f32(file: &SafeTensors<'_>, key: &str) -> (Vec<usize>, Vec<f32>) {
    let view = file.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{key}");
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// torchvision's `state_dict` prefix of a layer (written out here, independently of the
/// crate's naming code, so the tests also check the structure).
#[allow(dead_code)] // not every test file that shares this module uses it
pub fn torchvision_layer(name: LayerName) -> String {
    let part = name.part;
    match name.site {
        Site::Stem => format!("features.{part}"),
        Site::Dense { block, layer } => {
            format!("features.denseblock{block}.denselayer{layer}.{part}")
        }
        Site::Transition { index } => format!("features.transition{index}.{part}"),
        Site::Head if part == "classifier" => "classifier".to_string(),
        Site::Head => format!("features.{part}"),
    }
}

/// Asserts `actual` is within `tol` of `expected`, relative to the largest magnitude of
/// `expected` (at least 1): logits compared as a whole.
#[allow(dead_code)] // used by the forced-kernel tests only; each test file is a crate
pub fn assert_close_scaled(actual: &Array2<f32>, expected: &Array2<f32>, tol: f32) {
    assert_eq!(actual.shape(), expected.shape());
    let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() <= tol * scale, "{a} vs {e}");
    }
}
