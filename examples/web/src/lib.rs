//! ShapesNet (`specs/shapes.yaml`) in the browser: the generated model and its weights
//! compiled into one WebAssembly module, JPEG/PNG decoding and preprocessing included,
//! behind a plain `extern "C"` API (no bindings generator) that `index.html` calls:
//!
//! 1. `alloc(len)` returns a buffer in the module's memory; the page copies the
//!    image file's bytes into it;
//! 2. `classify(ptr, len)` decodes, preprocesses as `densenet run` does (resize the
//!    shorter side to 37, centre crop 32, ImageNet normalisation), runs the model and
//!    returns the length of a JSON answer (`{"top":[{"label":…,"probability":…},…]}`
//!    or `{"error":…}`), which `result()` points to; `dealloc` frees the buffer.
//!
//! Build with `examples/web/build.sh`; `node examples/web/test.mjs` checks it in
//! headless Chromium against the native `densenet run`.

use std::sync::{Mutex, OnceLock};

use densenet::densenet_yaml;
use densenet::image::Preprocessing;

densenet_yaml!("../../specs/shapes.yaml");

/// The trained weights (`cargo run --release --example train_shapes`).
static WEIGHTS: &[u8] = include_bytes!("../../../fixtures/shapes/shapesnet.safetensors");
/// The class names, in label order.
static LABELS: &str = include_str!("../../../fixtures/shapes/labels.txt");

/// The model, loaded from the embedded weights on first use.
fn model() -> Result<&'static ShapesNet, String> {
    static MODEL: OnceLock<Result<ShapesNet, String>> = OnceLock::new();
    MODEL
        .get_or_init(|| ShapesNet::from_safetensors_bytes(WEIGHTS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The latest answer, which `result` points to.
static RESULT: Mutex<String> = Mutex::new(String::new());

/// The classes of an encoded image, best first, as JSON.
pub fn classify_bytes(bytes: &[u8]) -> String {
    let run = || -> Result<String, String> {
        let [_, h, _] = ShapesNet::INPUT;
        // `densenet run`'s evaluation transform for the model's input size.
        let preprocessing = Preprocessing {
            crop: h as u32,
            resize: (h as f64 * 256.0 / 224.0).round() as u32,
            ..Preprocessing::default()
        };
        let image = preprocessing.decode(bytes).map_err(|e| e.to_string())?;
        let batch = image.insert_axis(densenet::ndarray::Axis(0));
        let probabilities = model()?.predict(batch.view()).map_err(|e| e.to_string())?;
        let mut ranked: Vec<(usize, f32)> =
            probabilities.row(0).iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let labels: Vec<&str> = LABELS.lines().collect();
        let top: Vec<_> = ranked
            .iter()
            .map(|&(class, p)| {
                let label = labels.get(class).copied().unwrap_or("?");
                serde_json::json!({"label": label, "probability": p})
            })
            .collect();
        Ok(serde_json::json!({ "top": top }).to_string())
    };
    run().unwrap_or_else(|e| serde_json::json!({ "error": e }).to_string())
}

/// A buffer of `len` bytes for the page to fill; free it with [`dealloc`].
#[no_mangle]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    let mut buf = std::mem::ManuallyDrop::new(vec![0u8; len]);
    buf.as_mut_ptr()
}

/// Frees a buffer from [`alloc`].
///
/// # Safety
///
/// `ptr` and `len` are an [`alloc`] result and its length, not freed before.
#[no_mangle]
pub unsafe extern "C" fn dealloc(ptr: *mut u8, len: usize) {
    // SAFETY: by the contract, `ptr` is a `Vec<u8>` of `len` bytes and capacity `len`
    // that `alloc` leaked.
    drop(unsafe { Vec::from_raw_parts(ptr, len, len) });
}

/// Classifies the image file (JPEG or PNG) in `ptr[..len]`; returns the length of the
/// JSON answer at [`result`].
///
/// # Safety
///
/// `ptr[..len]` is readable (an [`alloc`] buffer).
#[no_mangle]
pub unsafe extern "C" fn classify(ptr: *const u8, len: usize) -> usize {
    // SAFETY: readable by the contract.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    let answer = classify_bytes(bytes);
    let mut result = RESULT.lock().unwrap_or_else(|e| e.into_inner());
    *result = answer;
    result.len()
}

/// The latest answer of [`classify`] (UTF-8, its returned length).
#[no_mangle]
pub extern "C" fn result() -> *const u8 {
    RESULT.lock().unwrap_or_else(|e| e.into_inner()).as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_is_a_disc_and_bad_bytes_are_an_answer() {
        let fixture = include_bytes!("../fixture.png");
        let answer = classify_bytes(fixture);
        assert!(answer.starts_with(r#"{"top":[{"label":"disc""#), "{answer}");
        let answer = classify_bytes(b"not an image");
        assert!(answer.starts_with(r#"{"error":"#), "{answer}");
    }
}
