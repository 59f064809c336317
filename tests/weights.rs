//! Weights I/O: loading torchvision and Keras checkpoints reproduces the frameworks'
//! outputs, saving round-trips, and every bad file is a typed error.
//!
//! Fixtures come from `tools/make_fixtures.py` (see tests/fixtures/README.md): random
//! weights with randomised BatchNorm statistics, an NCHW input batch, and the reference
//! framework's logits (torchvision 0.29 / torch 2.15, Keras 3.15 on JAX).

use std::path::PathBuf;

use densenet::densenet;
use densenet::ndarray::{Array2, Array4};
use densenet::runtime::weights::LoadOptions;
use densenet::runtime::{weights, LayerRef, LoadError, Naming, Network};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

densenet! {
    /// torchvision `DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16, bn_size=4, num_classes=10)`.
    TorchvisionSmall<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// The paper's CIFAR DenseNet-BC, L = 40, k = 12.
    CifarBC<depth: 40, growth: 12, theta: 0.5, stem: cifar, classes: 10>;
    /// Keras `DenseNet(blocks=[1, 2, 2, 1], input_shape=(64, 64, 3), classes=10)`.
    KerasSmall<growth: 32, blocks: [1, 2, 2, 1], theta: 0.5, input: [3, 64, 64], classes: 10, eps: 1.001e-5>;
    /// A different architecture, for mismatch errors.
    OtherBlocks<growth: 8, blocks: [2, 3, 5, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// Same blocks, other growth rate.
    OtherGrowth<growth: 12, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture's input batch (NCHW) and the framework's logits.
fn io(name: &str) -> (Array4<f32>, Array2<f32>) {
    let bytes = std::fs::read(fixture(&format!("{name}.io.safetensors"))).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let read = |key: &str| {
        let view = file.tensor(key).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (view.shape().to_vec(), values)
    };
    let (xs, x) = read("input");
    let (ys, y) = read("output");
    (
        Array4::from_shape_vec((xs[0], xs[1], xs[2], xs[3]), x).unwrap(),
        Array2::from_shape_vec((ys[0], ys[1]), y).unwrap(),
    )
}

/// The issue's parity bar: max |ours - theirs| <= 1e-4 * max(1, max |theirs|).
fn assert_parity(ours: &Array2<f32>, theirs: &Array2<f32>) {
    assert_eq!(ours.dim(), theirs.dim());
    let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(theirs.iter())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "max |ours - theirs| = {diff:e} > 1e-4 * {scale}"
    );
}

#[test]
fn torchvision_parity() {
    let model =
        TorchvisionSmall::load_safetensors(fixture("torchvision_small.safetensors")).unwrap();
    let (x, expected) = io("torchvision_small");
    assert_parity(&model.forward(x.view()).unwrap(), &expected);
}

#[test]
fn cifar_bc_parity() {
    let model = CifarBC::load_safetensors(fixture("cifar_bc.safetensors")).unwrap();
    let (x, expected) = io("cifar_bc");
    assert_parity(&model.forward(x.view()).unwrap(), &expected);
}

#[test]
fn keras_parity() {
    let model = KerasSmall::load_safetensors(fixture("keras_small.safetensors")).unwrap();
    let (x, expected) = io("keras_small");
    assert_parity(&model.forward(x.view()).unwrap(), &expected);
}

/// Rewrites every key of a safetensors file (and optionally converts F32 data).
fn rewrite(
    bytes: &[u8],
    key: impl Fn(&str) -> Option<String>,
    dtype: Option<safetensors::Dtype>,
) -> Vec<u8> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.iter() {
        let Some(new) = key(name) else { continue };
        let (dt, data) = match (dtype, view.dtype()) {
            (Some(target), safetensors::Dtype::F32) => (target, convert(view.data(), target)),
            (_, dt) => (dt, view.data().to_vec()),
        };
        entries.push((new, dt, view.shape().to_vec(), data));
    }
    let views = entries.iter().map(|(k, dt, s, d)| {
        (
            k.as_str(),
            safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

fn convert(data: &[u8], dtype: safetensors::Dtype) -> Vec<u8> {
    let values = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match dtype {
        safetensors::Dtype::F64 => values.flat_map(|v| f64::from(v).to_le_bytes()).collect(),
        safetensors::Dtype::F16 => values
            .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        // bf16: the top half of the f32 bits (round toward zero, fine for a test).
        safetensors::Dtype::BF16 => values
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        safetensors::Dtype::I32 => values.flat_map(|v| (v as i32).to_le_bytes()).collect(),
        other => panic!("no conversion to {other:?} in this test"),
    }
}

#[test]
fn legacy_torchvision_keys_load() {
    // Old torchvision checkpoints spell `norm1` as `norm.1`; torchvision remaps them.
    let bytes = std::fs::read(fixture("torchvision_small.safetensors")).unwrap();
    let legacy = rewrite(
        &bytes,
        |k| {
            Some(
                k.replace(".norm1.", ".norm.1.")
                    .replace(".conv2.", ".conv.2."),
            )
        },
        None,
    );
    let model = TorchvisionSmall::from_safetensors_bytes(&legacy).unwrap();
    let (x, expected) = io("torchvision_small");
    assert_parity(&model.forward(x.view()).unwrap(), &expected);
}

#[test]
fn keras2_spelling_loads() {
    let bytes = std::fs::read(fixture("keras_small.safetensors")).unwrap();
    let keras2 = rewrite(
        &bytes,
        |k| {
            let k = k
                .replace("conv1_conv/", "conv1/conv/")
                .replace("conv1_bn/", "conv1/bn/");
            Some(format!("{k}:0"))
        },
        None,
    );
    let model = KerasSmall::from_safetensors_bytes(&keras2).unwrap();
    let (x, expected) = io("keras_small");
    assert_parity(&model.forward(x.view()).unwrap(), &expected);
}

#[test]
fn f64_f16_and_bf16_weights_convert() {
    let bytes = std::fs::read(fixture("torchvision_small.safetensors")).unwrap();
    let (x, expected) = io("torchvision_small");
    let f64s = rewrite(
        &bytes,
        |k| Some(k.to_string()),
        Some(safetensors::Dtype::F64),
    );
    let model = TorchvisionSmall::from_safetensors_bytes(&f64s).unwrap();
    assert_parity(&model.forward(x.view()).unwrap(), &expected);
    // bf16 keeps 8 bits of mantissa: the output moves, but stays close.
    let bf16s = rewrite(
        &bytes,
        |k| Some(k.to_string()),
        Some(safetensors::Dtype::BF16),
    );
    let model = TorchvisionSmall::from_safetensors_bytes(&bf16s).unwrap();
    let ours = model.forward(x.view()).unwrap();
    let diff = ours
        .iter()
        .zip(expected.iter())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 0.1, "bf16 weights moved logits by {diff}");
}

#[test]
fn save_then_load_is_lossless() {
    let model =
        TorchvisionSmall::load_safetensors(fixture("torchvision_small.safetensors")).unwrap();
    let path = std::env::temp_dir().join(format!(
        "densenet-roundtrip-{}.safetensors",
        std::process::id()
    ));
    model.save_safetensors(&path).unwrap();
    let again = TorchvisionSmall::load_safetensors(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (x, _) = io("torchvision_small");
    assert_eq!(
        model.forward(x.view()).unwrap(),
        again.forward(x.view()).unwrap()
    );
    // The saved file has exactly torchvision's keys.
    let original = std::fs::read(fixture("torchvision_small.safetensors")).unwrap();
    let saved = model.to_safetensors_bytes();
    let keys = |b: &[u8]| {
        let mut k: Vec<String> = SafeTensors::deserialize(b)
            .unwrap()
            .names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&original), keys(&saved));
    // Keras weights saved in torchvision naming load back too.
    let keras = KerasSmall::load_safetensors(fixture("keras_small.safetensors")).unwrap();
    let back =
        KerasSmall::from_safetensors_bytes_with(&keras.to_safetensors_bytes(), Naming::Torchvision)
            .unwrap();
    let (x, _) = io("keras_small");
    assert_eq!(
        keras.forward(x.view()).unwrap(),
        back.forward(x.view()).unwrap()
    );
}

fn torchvision_bytes() -> Vec<u8> {
    std::fs::read(fixture("torchvision_small.safetensors")).unwrap()
}

#[test]
fn missing_tensor_names_it_and_close_matches() {
    let bytes = rewrite(
        &torchvision_bytes(),
        |k| (k != "features.norm5.running_var").then(|| k.to_string()),
        None,
    );
    let err = TorchvisionSmall::from_safetensors_bytes(&bytes).unwrap_err();
    let LoadError::MissingTensor { name, close, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(name, "features.norm5.running_var");
    assert!(
        close.contains(&"features.norm5.running_mean".to_string()),
        "{close:?}"
    );
    assert!(
        err.to_string()
            .starts_with("missing tensor `features.norm5.running_var` (torchvision naming)"),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_an_error() {
    let mut extra = rewrite(&torchvision_bytes(), |k| Some(k.to_string()), None);
    let file = SafeTensors::deserialize(&extra).unwrap();
    let bias = file.tensor("classifier.bias").unwrap();
    let mut entries: Vec<_> = file.iter().map(|(k, v)| (k.to_string(), v)).collect();
    entries.push(("features.conv0.bias".to_string(), bias));
    extra =
        safetensors::serialize(entries.iter().map(|(k, v)| (k.as_str(), v.clone())), None).unwrap();
    let err = TorchvisionSmall::from_safetensors_bytes(&extra).unwrap_err();
    assert!(
        matches!(&err, LoadError::UnexpectedTensor { name, others: 0 } if name == "features.conv0.bias"),
        "{err:?}"
    );
}

#[test]
fn bookkeeping_keys_are_known() {
    // The fixture has 163 tensors: 33 of them `num_batches_tracked`, which load silently.
    let bytes = torchvision_bytes();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    assert!(file
        .names()
        .iter()
        .any(|k| k.ends_with("num_batches_tracked")));
    assert!(TorchvisionSmall::from_safetensors_bytes(&bytes).is_ok());
}

#[test]
fn wrong_shape_and_dtype_are_errors() {
    // CifarBC's stem conv is 3x3 with 24 channels; load a file whose conv0 is 7x7x16.
    let bytes = torchvision_bytes();
    let err = TorchvisionSmall::from_safetensors_bytes(&rewrite(
        &bytes,
        |k| Some(k.to_string()),
        Some(safetensors::Dtype::I32),
    ))
    .unwrap_err();
    assert!(
        matches!(&err, LoadError::Dtype { dtype, .. } if dtype == "I32"),
        "{err:?}"
    );
    // One tensor of the wrong shape: a Shape error naming it, expected vs actual.
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let wrong = file.tensor("classifier.bias").unwrap();
    let entries: Vec<_> = file
        .iter()
        .map(|(k, v)| {
            if k == "features.norm5.bias" {
                (k, wrong.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    let bad = safetensors::serialize(entries, None).unwrap();
    let err = TorchvisionSmall::from_safetensors_bytes(&bad).unwrap_err();
    let LoadError::Shape {
        name,
        expected,
        actual,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (name.as_str(), expected.as_slice(), actual.as_slice()),
        ("features.norm5.bias", &[42][..], &[10][..])
    );
}

/// The torchvision fixture with value `index` of F32 tensor `key` set to `value`.
fn with_value(key: &str, index: usize, value: f32) -> Vec<u8> {
    let bytes = torchvision_bytes();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    let (_, _, _, data) = entries.iter_mut().find(|(k, ..)| k == key).unwrap();
    data[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
    let views = entries.iter().map(|(k, dt, s, d)| {
        (
            k.as_str(),
            safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

/// NaN or infinite weights loaded silently (and every logit was NaN); now refused,
/// naming the tensor, the first bad index and its value.
#[test]
fn non_finite_values_are_refused() {
    let cases = [
        ("features.conv0.weight", 5, f32::NAN),
        (
            "features.denseblock2.denselayer3.norm2.running_mean",
            0,
            f32::INFINITY,
        ),
        ("classifier.bias", 9, f32::NEG_INFINITY),
    ];
    for (key, index, value) in cases {
        let err =
            TorchvisionSmall::from_safetensors_bytes(&with_value(key, index, value)).unwrap_err();
        let LoadError::NonFinite {
            name,
            index: at,
            value: found,
        } = &err
        else {
            panic!("{key}: {err:?}")
        };
        assert_eq!((name.as_str(), *at), (key, index), "{err}");
        assert_eq!(found.to_bits(), value.to_bits(), "{err}");
        assert!(err.to_string().contains(key), "{err}");
        // Opted out, the file loads with the value as it is.
        let options = LoadOptions {
            check_values: false,
            ..LoadOptions::default()
        };
        let model =
            TorchvisionSmall::from_safetensors_bytes_with(&with_value(key, index, value), options)
                .unwrap();
        let mut seen = None;
        model.visit_layers(&mut |_, layer| {
            if let LayerRef::Conv(conv) = layer {
                seen = seen.or(Some(conv.weight().iter().any(|v| v.is_nan())));
            }
        });
        if key == "features.conv0.weight" {
            assert_eq!(seen, Some(true), "the NaN was loaded");
        }
    }
    // A finite F64 too large for f32 is infinite once converted: refused too.
    let f64_bytes = rewrite(
        &with_value("features.norm5.bias", 3, f32::MAX),
        |k| Some(k.to_string()),
        Some(safetensors::Dtype::F64),
    );
    let file = SafeTensors::deserialize(&f64_bytes).unwrap();
    let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    let (.., data) = entries
        .iter_mut()
        .find(|(k, ..)| k == "features.norm5.bias")
        .unwrap();
    data[24..32].copy_from_slice(&1e300f64.to_le_bytes());
    let views = entries.iter().map(|(k, dt, s, d)| {
        (
            k.as_str(),
            safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap(),
        )
    });
    let huge = safetensors::serialize(views, None).unwrap();
    let err = TorchvisionSmall::from_safetensors_bytes(&huge).unwrap_err();
    assert!(
        matches!(&err, LoadError::NonFinite { name, index: 3, value } if name == "features.norm5.bias" && value.is_infinite()),
        "{err:?}"
    );
}

#[test]
fn a_negative_running_variance_is_refused() {
    let key = "features.denseblock1.denselayer2.norm1.running_var";
    let err = TorchvisionSmall::from_safetensors_bytes(&with_value(key, 4, -0.5)).unwrap_err();
    assert!(
        matches!(&err, LoadError::NegativeVariance { name, index: 4, value } if name == key && *value == -0.5),
        "{err:?}"
    );
    assert!(err.to_string().contains(key), "{err}");
    // Zero is a variance (BatchNorm adds eps).
    assert!(TorchvisionSmall::from_safetensors_bytes(&with_value(key, 4, 0.0)).is_ok());
}

/// A file with both `norm1.weight` and its legacy spelling `norm.1.weight` loaded one
/// of them and dropped the other; now the ambiguity is an error naming both keys.
#[test]
fn two_spellings_of_one_key_are_refused() {
    let bytes = torchvision_bytes();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let modern = "features.denseblock1.denselayer1.norm1.weight";
    let legacy = "features.denseblock1.denselayer1.norm.1.weight";
    let mut entries: Vec<_> = file.iter().map(|(k, v)| (k.to_string(), v)).collect();
    entries.push((legacy.to_string(), file.tensor(modern).unwrap()));
    let both =
        safetensors::serialize(entries.iter().map(|(k, v)| (k.as_str(), v.clone())), None).unwrap();
    let err = TorchvisionSmall::from_safetensors_bytes(&both).unwrap_err();
    let LoadError::DuplicateTensor { key, first, second } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (key.as_str(), first.as_str(), second.as_str()),
        (modern, legacy, modern)
    );
    let message = err.to_string();
    assert!(
        message.contains(legacy) && message.contains(modern),
        "{message}"
    );

    // Keras 2's `conv1/conv/kernel:0` beside Keras 3's `conv1_conv/kernel`.
    let bytes = std::fs::read(fixture("keras_small.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<_> = file.iter().map(|(k, v)| (k.to_string(), v)).collect();
    entries.push((
        "conv1/conv/kernel:0".to_string(),
        file.tensor("conv1_conv/kernel").unwrap(),
    ));
    let both =
        safetensors::serialize(entries.iter().map(|(k, v)| (k.as_str(), v.clone())), None).unwrap();
    let err = KerasSmall::from_safetensors_bytes(&both).unwrap_err();
    assert!(
        matches!(&err, LoadError::DuplicateTensor { key, .. } if key == "conv1_conv/kernel"),
        "{err:?}"
    );
}

#[test]
fn another_architecture_is_one_clear_error() {
    let err = OtherBlocks::from_safetensors_bytes(&torchvision_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "these weights are for another architecture: the file has blocks [2, 3, 4, 2], OtherBlocks has blocks [2, 3, 5, 2]"
    );
    let err = OtherGrowth::from_safetensors_bytes(&torchvision_bytes()).unwrap_err();
    assert!(
        matches!(err, LoadError::ArchitectureMismatch { .. }),
        "{err:?}"
    );
    // Keras weights into a torchvision-shaped model of other blocks: same one line.
    let err = TorchvisionSmall::load_safetensors(fixture("keras_small.safetensors")).unwrap_err();
    assert!(
        err.to_string().contains("the file has blocks [1, 2, 2, 1]"),
        "{err}"
    );
}

#[test]
fn naming_is_detected_or_forced() {
    let keras = std::fs::read(fixture("keras_small.safetensors")).unwrap();
    // Forcing the wrong scheme: the model's first torchvision key is missing.
    let err = KerasSmall::from_safetensors_bytes_with(&keras, Naming::Torchvision).unwrap_err();
    assert!(
        matches!(&err, LoadError::MissingTensor { name, .. } if name == "features.conv0.weight"),
        "{err:?}"
    );
    let anonymous = rewrite(&torchvision_bytes(), |k| Some(k.replace('.', "_")), None);
    let err = TorchvisionSmall::from_safetensors_bytes(&anonymous).unwrap_err();
    assert!(matches!(err, LoadError::UnknownNaming { .. }), "{err:?}");
}

#[test]
fn broken_files_are_typed_errors() {
    let bytes = torchvision_bytes();
    let err = TorchvisionSmall::from_safetensors_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(matches!(err, LoadError::Truncated { .. }), "{err:?}");
    let err = TorchvisionSmall::from_safetensors_bytes(&bytes[..5]).unwrap_err();
    assert!(matches!(err, LoadError::Truncated { .. }), "{err:?}");
    let err =
        TorchvisionSmall::from_safetensors_bytes(b"PK\x03\x04 this is a zip, not safetensors")
            .unwrap_err();
    assert!(matches!(err, LoadError::NotSafetensors { .. }), "{err:?}");
    // A header whose offsets overlap.
    let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 12]);
    let err = TorchvisionSmall::from_safetensors_bytes(&file).unwrap_err();
    assert!(matches!(err, LoadError::BadOffsets { .. }), "{err:?}");
    let err = TorchvisionSmall::load_safetensors("/nonexistent/weights.safetensors").unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot access /nonexistent/weights.safetensors"),
        "{err}"
    );
}

/// Mutated and truncated files never panic: 10,000 of them, deterministic.
#[test]
fn mutated_files_never_panic() {
    let original = torchvision_bytes();
    let header_len = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut outcomes = [0usize; 2];
    for i in 0..10_000 {
        let mut bytes = original.clone();
        match i % 4 {
            0 => bytes.truncate(next() as usize % bytes.len()),
            // Flip bytes in the header, where the structure is.
            1 => {
                for _ in 0..1 + next() % 4 {
                    let at = next() as usize % header_len;
                    bytes[at] = next() as u8;
                }
            }
            2 => {
                let at = next() as usize % header_len;
                let digit = b'0' + (next() % 10) as u8;
                if bytes[at].is_ascii_digit() {
                    bytes[at] = digit;
                } else {
                    bytes.insert(at, digit);
                }
            }
            _ => {
                let at = next() as usize % bytes.len();
                bytes[at] = next() as u8;
            }
        }
        let result =
            std::panic::catch_unwind(|| TorchvisionSmall::from_safetensors_bytes(&bytes).is_ok());
        let ok = result.unwrap_or_else(|_| panic!("loader panicked on mutation {i}"));
        outcomes[usize::from(ok)] += 1;
    }
    // Most mutations break the file; data-byte flips still load.
    assert!(outcomes[0] > 5_000 && outcomes[1] > 0, "{outcomes:?}");
}

densenet! {
    DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>
}

/// Full-size parity, run locally: `python tools/make_fixtures.py --large DIR`, then
/// `DENSENET_LARGE_FIXTURES=DIR cargo test --release --test weights -- --ignored`.
/// (The 32 MB weights are too large to commit.)
#[test]
#[ignore = "needs DENSENET_LARGE_FIXTURES from tools/make_fixtures.py --large"]
fn densenet121_parity_full_size() {
    let dir = PathBuf::from(
        std::env::var("DENSENET_LARGE_FIXTURES").expect("set DENSENET_LARGE_FIXTURES"),
    );
    let model = DenseNet121::load_safetensors(dir.join("densenet121.safetensors")).unwrap();
    let bytes = std::fs::read(dir.join("densenet121.io.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let read = |key: &str| -> Vec<f32> {
        let view = file.tensor(key).unwrap();
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let x = Array4::from_shape_vec((1, 3, 224, 224), read("input")).unwrap();
    let expected = Array2::from_shape_vec((1, 1000), read("output")).unwrap();
    let ours = model.forward(x.view()).unwrap();
    let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(expected.iter())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "DenseNet-121 parity: max |ours - torchvision| = {diff:e}, max |torchvision| = {scale}"
    );
    assert_parity(&ours, &expected);
}

/// Written in Keras naming, a model's file is the file Keras wrote: the same 86 keys
/// (Keras 3 `Variable.path`s), shapes and values as `keras_small.safetensors`, which
/// `tools/make_fixtures.py` exported from `keras.applications`-style DenseNet layers.
#[test]
fn keras_naming_writes_what_keras_wrote() {
    let original = std::fs::read(fixture("keras_small.safetensors")).unwrap();
    let model = KerasSmall::from_safetensors_bytes(&original).unwrap();
    let written = weights::to_bytes_with(&model, Naming::Keras);
    let (original, written) = (
        SafeTensors::deserialize(&original).unwrap(),
        SafeTensors::deserialize(&written).unwrap(),
    );
    let mut keys = original.names();
    keys.sort();
    let mut ours = written.names();
    ours.sort();
    assert_eq!(ours, keys);
    for key in keys {
        let (a, b) = (original.tensor(key).unwrap(), written.tensor(key).unwrap());
        assert_eq!(b.dtype(), Dtype::F32, "{key}");
        assert_eq!(b.shape(), a.shape(), "{key}");
        assert_eq!(b.data(), a.data(), "{key}");
    }
}

/// A save that fails names the file, leaves what was there, and leaves no temporary
/// file behind; ONNX export alike.
#[test]
fn failed_saves_name_the_file_and_keep_what_was_there() {
    let model = KerasSmall::init(0);
    let dir = std::env::temp_dir().join(format!("densenet-failed-save-{}", std::process::id()));
    let taken = dir.join("taken.safetensors");
    std::fs::create_dir_all(taken.join("inside")).unwrap();
    let err = model.save_safetensors(&taken).unwrap_err();
    assert!(err.to_string().contains("taken.safetensors"), "{err}");
    let err = model.to_onnx(&taken).unwrap_err();
    assert!(err.to_string().contains("taken.safetensors"), "{err}");
    assert!(taken.join("inside").is_dir());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left"
    );
    // A good save replaces an existing file whole.
    let good = dir.join("good.safetensors");
    std::fs::write(&good, b"old").unwrap();
    model.save_safetensors(&good).unwrap();
    assert_eq!(std::fs::read(&good).unwrap(), model.to_safetensors_bytes());
    std::fs::remove_dir_all(dir).unwrap();
}
