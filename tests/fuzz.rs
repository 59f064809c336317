//! Bounded fuzzing of the run-time entry points: any input gives `Ok` or a typed error,
//! never a panic, an abort or a hang; kernels given bad geometry refuse it with their
//! documented caller-bug panic, and given good geometry agree with their oracle.
//!
//! Targets (the spec front doors, YAML text and Rust tokens, are fuzzed in
//! `densenet-spec/tests/robustness.rs`):
//! - `weights_*`: safetensors files of a small model, mutated in their structure (header
//!   JSON: dtypes, shapes, offsets, keys, punctuation; the length prefix; truncation;
//!   data values), into a generated model and a `DynamicModel` of the same architecture.
//!   `tests/weights.rs::mutated_files_never_panic` flips raw bytes of a larger file.
//! - `checkpoint_*`: training checkpoints (weights, optimiser tensors, the run's header)
//!   mutated as the weights files, and in their header's values, resumed by `fit`.
//! - `image_*`: arbitrary bytes, mutated PNG and JPEG files, PNGs of arbitrary small,
//!   odd and extreme dimensions (1xN, Nx1) under arbitrary preprocessing settings, and
//!   PNG headers claiming any size up to `u32::MAX` a side.
//! - `kernel_*`: `direct_conv` on random small geometry and layouts against
//!   `direct_conv_reference`, and on arbitrary (overflowing, inconsistent) geometry;
//!   `im2col` likewise against a plain loop.
//!
//! Each target runs a bounded number of cases (below, ~10 s or less each in the test
//! profile); `PROPTEST_CASES` overrides them all for a longer campaign:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! A failure prints the shrunk input; proptest records its seed in
//! `tests/fuzz.proptest-regressions`, which is replayed first on the next run (commit it
//! with the fix, or turn the input into a plain regression test).

use std::cell::Cell;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::Instant;

use densenet::densenet;
use densenet::runtime::image::{Preprocessing, MAX_PIXELS, MAX_RESIZED_PIXELS, MAX_SIDE};
use densenet::runtime::kernels::direct_conv::{
    direct_conv, direct_conv_reference, ConvShape, ConvWeight, Epilogue, ImageLayout, PackedWeight,
};
use densenet::runtime::kernels::im2col::{im2col, Window};
use densenet::runtime::train::{fit, AdamConfig, Dataset, FitConfig, Optimizer, SgdConfig};
use densenet::runtime::{DynamicModel, ImageError, LoadError, Model, Naming, Network, TrainError};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

densenet! {
    /// Small enough that a load takes microseconds; two blocks, a transition and a
    /// classifier, so every kind of tensor is in its file.
    Tiny<growth: 4, blocks: [1, 2], init_features: 8, theta: 0.5, stem: cifar, input: [3, 8, 8], classes: 3>
}

// ---- running a property ----

/// `cases` cases, or `PROPTEST_CASES` when set (which `Config::default()` reads).
fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    // Failing seeds are replayed first on the next run (proptest's default location
    // assumes a `src/` tree, which an integration test is not in).
    config.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(
        "tests/fuzz.proptest-regressions",
    )));
    config
}

/// Runs `test` on `cases` inputs from `strategy` and prints the count and time (the
/// campaign's record, with `--nocapture`).
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = config(cases);
    let cases = config.cases;
    let start = Instant::now();
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name}: {e}");
    }
    println!("{name}: {cases} cases in {:.2?}", start.elapsed());
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(not a string)".into())
}

/// Caller-bug panics that the kernel targets expect are not printed (thousands of
/// them); any other panic is, by the default hook.
fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // `payload_as_str` is newer than the MSRV (1.89).
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            let expected = message.is_some_and(|m| KERNEL_CHECKS.iter().any(|p| m.starts_with(p)));
            if !expected {
                default(info);
            }
        }));
    });
}

/// How the kernels' checks begin their messages (`bad_geometry` in `direct_conv`,
/// `size_overflow`/`length_mismatch`/`zero_stride`/`padding_overflow` in `im2col`).
const KERNEL_CHECKS: [&str; 4] = [
    "direct_conv: ",
    "im2col: ",
    "window stride must be at least 1",
    "window: a side of ",
];

// ---- weights ----

/// One structural edit of a safetensors file. Indices are taken modulo what they index.
#[derive(Clone, Debug)]
enum FileEdit {
    /// The `i`-th number of the header JSON (shapes, offsets) becomes `to`.
    Number(usize, String),
    /// The `i`-th dtype becomes `to`.
    Dtype(usize, String),
    /// A character of the header is inserted, replaced or deleted.
    HeaderChar(usize, Option<char>, bool),
    /// Two header entries' keys are swapped (so the shapes no longer match the names).
    SwapKeys(usize, usize),
    /// The header's length prefix becomes `to` (the header is not rewritten).
    Prefix(u64),
    /// The file ends after `at` bytes.
    Truncate(usize),
    /// Bytes appended to the file.
    Append(Vec<u8>),
    /// An f32 of the data section (4-aligned) becomes `value`.
    DataValue(usize, f32),
}

fn file_edit() -> impl Strategy<Value = FileEdit> {
    let i = any::<usize>();
    let number = prop_oneof![
        prop::sample::select(vec![
            "0",
            "1",
            "2",
            "3",
            "4",
            "8",
            "12",
            "-1",
            "1.5",
            "1e3",
            "4294967296",
            "9223372036854775807",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999",
            "\"8\"",
            "null",
            "[]",
        ])
        .prop_map(str::to_string),
        (0u64..5000).prop_map(|n| n.to_string()),
    ];
    let dtype = prop::sample::select(vec![
        "F32", "F16", "BF16", "F64", "I32", "I64", "U8", "I8", "BOOL", "F8_E4M3", "F4", "f32", "",
        "F33",
    ])
    .prop_map(str::to_string);
    let punctuation =
        prop::sample::select("{}[],:\"\\ 0123456789.-eaF_".chars().collect::<Vec<_>>());
    prop_oneof![
        4 => (i, number).prop_map(|(i, to)| FileEdit::Number(i, to)),
        2 => (i, dtype).prop_map(|(i, to)| FileEdit::Dtype(i, to)),
        2 => (i, prop::option::of(prop_oneof![3 => punctuation, 1 => any::<char>()]), any::<bool>())
            .prop_map(|(i, c, replace)| FileEdit::HeaderChar(i, c, replace)),
        1 => (i, i).prop_map(|(a, b)| FileEdit::SwapKeys(a, b)),
        1 => prop_oneof![
            Just(0u64), Just(1), Just(7), Just(u64::MAX), Just(u64::MAX / 2), Just(1 << 32),
            0u64..20_000
        ]
        .prop_map(FileEdit::Prefix),
        1 => i.prop_map(FileEdit::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(FileEdit::Append),
        2 => (i, prop_oneof![
            Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY), Just(-1.0f32),
            Just(f32::MAX), Just(0.0f32), any::<f32>()
        ])
        .prop_map(|(i, v)| FileEdit::DataValue(i, v)),
    ]
}

/// `(header text, data section)` of a safetensors file.
fn split(bytes: &[u8]) -> (String, Vec<u8>) {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + len].to_vec()).unwrap();
    (header, bytes[8 + len..].to_vec())
}

/// Byte ranges of the header's JSON numbers: digit runs (with a leading minus) right
/// after `[`, `,` or `:` (so not the digits of a key or a dtype).
fn number_ranges(header: &str) -> Vec<(usize, usize)> {
    let bytes = header.as_bytes();
    let mut ranges = Vec::new();
    for start in 1..bytes.len() {
        if matches!(bytes[start - 1], b'[' | b',' | b':')
            && (bytes[start].is_ascii_digit() || bytes[start] == b'-')
        {
            let len = bytes[start + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            ranges.push((start, start + 1 + len));
        }
    }
    ranges
}

/// Byte ranges of the values of `"field":"…"` in the header.
fn string_field_ranges(header: &str, field: &str) -> Vec<(usize, usize)> {
    let pattern = format!("\"{field}\":\"");
    header
        .match_indices(&pattern)
        .filter_map(|(at, _)| {
            let start = at + pattern.len();
            let end = start + header[start..].find('"')?;
            Some((start, end))
        })
        .collect()
}

/// Byte ranges of the tensor names: the strings right before `:{"dtype"`.
fn key_ranges(header: &str) -> Vec<(usize, usize)> {
    header
        .match_indices("\":{\"dtype\"")
        .filter_map(|(end, _)| {
            let start = header[..end].rfind('"')? + 1;
            Some((start, end))
        })
        .collect()
}

fn apply_file_edits(original: &[u8], edits: &[FileEdit]) -> Vec<u8> {
    let (mut header, mut data) = split(original);
    let mut prefix = None;
    let mut truncate = None;
    let mut append = Vec::new();
    for edit in edits {
        match edit {
            FileEdit::Number(i, to) => {
                let ranges = number_ranges(&header);
                if !ranges.is_empty() {
                    let (start, end) = ranges[i % ranges.len()];
                    header.replace_range(start..end, to);
                }
            }
            FileEdit::Dtype(i, to) => {
                let ranges = string_field_ranges(&header, "dtype");
                if !ranges.is_empty() {
                    let (start, end) = ranges[i % ranges.len()];
                    header.replace_range(start..end, to);
                }
            }
            FileEdit::HeaderChar(i, c, replace) => {
                let boundaries: Vec<usize> = header.char_indices().map(|(at, _)| at).collect();
                let at = boundaries[i % boundaries.len()];
                let next = header[at..]
                    .chars()
                    .next()
                    .map_or(at, |c| at + c.len_utf8());
                match (c, replace) {
                    (Some(c), false) => header.insert(at, *c),
                    (Some(c), true) => header.replace_range(at..next, &c.to_string()),
                    (None, _) => header.replace_range(at..next, ""),
                }
            }
            FileEdit::SwapKeys(a, b) => {
                let ranges = key_ranges(&header);
                let (ra, rb) = (ranges[a % ranges.len()], ranges[b % ranges.len()]);
                let (first, second) = if ra.0 <= rb.0 { (ra, rb) } else { (rb, ra) };
                if first != second {
                    let (k1, k2) = (
                        header[first.0..first.1].to_string(),
                        header[second.0..second.1].to_string(),
                    );
                    header.replace_range(second.0..second.1, &k1);
                    header.replace_range(first.0..first.1, &k2);
                }
            }
            FileEdit::Prefix(to) => prefix = Some(*to),
            FileEdit::Truncate(at) => truncate = Some(*at),
            FileEdit::Append(bytes) => append.extend_from_slice(bytes),
            FileEdit::DataValue(i, value) => {
                let at = (i % (data.len() / 4)) * 4;
                data[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }
    let mut bytes = prefix.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    bytes.extend_from_slice(&append);
    if let Some(at) = truncate {
        bytes.truncate(at % (bytes.len() + 1));
    }
    bytes
}

/// The valid files the mutations start from: torchvision and Keras naming.
fn tiny_files() -> Vec<Vec<u8>> {
    let model = Tiny::init(7);
    vec![
        model.to_safetensors_bytes(),
        densenet::runtime::weights::to_bytes_with(&model, Naming::Keras),
    ]
}

/// Loads `bytes` into a generated `Tiny` and into a `DynamicModel` of its architecture:
/// both must agree, and a model that loads must save the file it loaded from (up to
/// the other naming's layout), so `Ok` is not vacuous.
fn load_both(bytes: &[u8]) -> Result<bool, TestCaseError> {
    let generated = catch_unwind(|| Tiny::from_safetensors_bytes(bytes)).map_err(|p| {
        TestCaseError::fail(format!("generated loader panicked: {}", panic_message(&*p)))
    })?;
    let dynamic = catch_unwind(|| {
        DynamicModel::from_safetensors_bytes(
            Tiny::init(0).architecture().clone(),
            bytes,
            Naming::Auto,
        )
    })
    .map_err(|p| TestCaseError::fail(format!("dynamic loader panicked: {}", panic_message(&*p))))?;
    match (generated, dynamic) {
        (Ok(a), Ok(b)) => {
            let saved = a.to_safetensors_bytes();
            prop_assert_eq!(&saved, &b.to_safetensors_bytes());
            let again = Tiny::from_safetensors_bytes(&saved).expect("a saved file loads");
            prop_assert_eq!(&again.to_safetensors_bytes(), &saved);
            Ok(true)
        }
        (Err(a), Err(b)) => {
            prop_assert_eq!(a.to_string(), b.to_string());
            prop_assert!(!a.to_string().is_empty());
            Ok(false)
        }
        (a, b) => Err(TestCaseError::fail(format!(
            "generated and dynamic loaders disagree: {:?} vs {:?}",
            a.map(|_| ()),
            b.map(|_| ())
        ))),
    }
}

/// Mutated safetensors files give a model or a `LoadError`, the same for a generated
/// and a dynamic model; both outcomes occur.
#[test]
fn weights_mutated_files_load_or_refuse() {
    let files = tiny_files();
    let outcomes = Cell::new([0u32; 2]);
    let strategy = (
        prop::sample::select(files),
        prop::collection::vec(file_edit(), 1..4),
    );
    fuzz(
        "weights_mutated_files_load_or_refuse",
        2000,
        strategy,
        |(file, edits)| {
            let bytes = apply_file_edits(&file, &edits);
            let ok = load_both(&bytes)?;
            let mut o = outcomes.get();
            o[usize::from(ok)] += 1;
            outcomes.set(o);
            Ok(())
        },
    );
    let [refused, loaded] = outcomes.get();
    println!("weights: {loaded} loaded, {refused} refused");
    assert!(
        refused > 0 && loaded > 0,
        "{refused} refused, {loaded} loaded"
    );
}

/// A training checkpoint of `Tiny` after one epoch (weights, optimiser tensors and the
/// run's header), written by `fit` into `dir`.
fn tiny_checkpoint(dir: &std::path::Path, optimizer: Optimizer) -> Vec<u8> {
    let _ = std::fs::remove_dir_all(dir);
    let mut model = Tiny::init(3);
    let data = tiny_data();
    let config = FitConfig {
        epochs: 1,
        batch_size: 4,
        optimizer,
        checkpoint_dir: Some(dir.to_path_buf()),
        ..FitConfig::default()
    };
    fit(&mut model, &data, &config).expect("a tiny run");
    std::fs::read(dir.join("epoch-001.safetensors")).expect("its checkpoint")
}

fn tiny_data() -> Dataset {
    let images = densenet::ndarray::Array4::from_shape_fn((8, 3, 8, 8), |(n, c, y, x)| {
        ((n * 7 + c * 5 + y * 3 + x) % 11) as f32 / 11.0 - 0.5
    });
    Dataset::new(images, (0..8).map(|i| i % 3).collect(), 3).expect("valid")
}

/// Mutated training checkpoints (header numbers, keys and punctuation, the metadata's
/// values, truncation, data) resume a run or refuse with `TrainError::Resume`, never a
/// panic; a refused resume leaves the model as it was. Both outcomes occur.
#[test]
fn checkpoint_mutated_files_resume_or_refuse() {
    let base = std::env::temp_dir().join(format!("densenet-fuzz-ckpt-{}", std::process::id()));
    let files = [
        tiny_checkpoint(&base.join("sgd"), Optimizer::Sgd(SgdConfig::default())),
        tiny_checkpoint(&base.join("adam"), Optimizer::Adam(AdamConfig::default())),
    ];
    let kinds = ["sgd", "adam"];
    let outcomes = Cell::new([0u32; 2]);
    let strategy = (
        0..2usize,
        prop::collection::vec(file_edit(), 0..3),
        prop::option::of((0..9usize, "[-a-z0-9,.{}\\[\\]\":]{0,12}")),
    );
    fuzz(
        "checkpoint_mutated_files_resume_or_refuse",
        1000,
        strategy,
        |(which, edits, metadata_edit)| {
            let mut bytes = apply_file_edits(&files[which], &edits);
            // Replace one metadata value (there are 8 or 9) by arbitrary text.
            let prefix = bytes
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
            let whole_header = prefix.is_some_and(|n| n <= bytes.len() as u64 - 8)
                && std::str::from_utf8(&bytes[8..8 + prefix.unwrap_or(0) as usize]).is_ok();
            if let (Some((index, text)), true) = (&metadata_edit, whole_header) {
                let (header, data) = split(&bytes);
                let keys = [
                    "format",
                    "architecture",
                    "epoch",
                    "rng",
                    "optimizer",
                    "optimizer_steps",
                    "parameter_steps",
                    "history",
                    "class_names",
                ];
                let key = format!("\"{}\":\"", keys[index % keys.len()]);
                if let Some(start) = header.find(&key).map(|s| s + key.len()) {
                    let end = header[start..]
                        .find('"')
                        .map_or(header.len(), |e| start + e);
                    let mut edited = header.clone();
                    edited.replace_range(start..end, &text.replace('"', "'"));
                    let mut out = (edited.len() as u64).to_le_bytes().to_vec();
                    out.extend_from_slice(edited.as_bytes());
                    out.extend_from_slice(&data);
                    bytes = out;
                }
            }
            let dir = base.join(format!("case-{}", kinds[which]));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| TestCaseError::fail(e.to_string()))?;
            std::fs::write(dir.join("epoch-001.safetensors"), &bytes)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let optimizer = if which == 0 {
                Optimizer::Sgd(SgdConfig::default())
            } else {
                Optimizer::Adam(AdamConfig::default())
            };
            let mut model = Tiny::init(5);
            let before = model.to_safetensors_bytes();
            let data = tiny_data();
            let config = FitConfig {
                epochs: 2,
                batch_size: 4,
                optimizer,
                checkpoint_dir: Some(dir.clone()),
                resume: true,
                ..FitConfig::default()
            };
            let result = catch_unwind(AssertUnwindSafe(|| fit(&mut model, &data, &config)))
                .map_err(|p| {
                    TestCaseError::fail(format!("fit panicked: {}", panic_message(&*p)))
                })?;
            let resumed = match result {
                Ok(history) => {
                    prop_assert_eq!(history.epochs.len(), 2);
                    true
                }
                Err(TrainError::Resume { .. }) => {
                    prop_assert_eq!(&model.to_safetensors_bytes(), &before);
                    false
                }
                // A finite run can still diverge from edited weights or state.
                Err(TrainError::Diverged { .. } | TrainError::NonFiniteWeights { .. }) => false,
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
            };
            // The file also loads, or not, as a weights file, and partially.
            let _ = Tiny::from_safetensors_bytes(&bytes);
            let _ = Tiny::init(0)
                .load_partial(&bytes, &densenet::runtime::weights::PartialLoad::backbone());
            let mut o = outcomes.get();
            o[usize::from(resumed)] += 1;
            outcomes.set(o);
            Ok(())
        },
    );
    let _ = std::fs::remove_dir_all(&base);
    let [refused, resumed] = outcomes.get();
    println!("checkpoints: {resumed} resumed, {refused} refused");
    assert!(
        refused > 0 && resumed > 0,
        "{refused} refused, {resumed} resumed"
    );
}

/// Each kind of edit reaches the check it aims at, so the property above exercises the
/// loader's checks rather than failing early on every input.
#[test]
fn weights_edits_reach_their_checks() {
    let file = &tiny_files()[0];
    let load = |edits: &[FileEdit]| Tiny::from_safetensors_bytes(&apply_file_edits(file, edits));
    assert!(load(&[]).is_ok());
    // Edits of one tensor among the first 20 (some are bookkeeping, some have the
    // same shape as others): each kind of error is reached by some.
    let reaches = |edit: &dyn Fn(usize) -> FileEdit, check: fn(&LoadError) -> bool| {
        (0..20).any(|i| load(&[edit(i)]).as_ref().is_err_and(check))
    };
    assert!(reaches(
        &|i| FileEdit::Dtype(i, "F64".into()),
        |e| matches!(e, LoadError::BadOffsets { .. })
    ));
    assert!(reaches(
        &|i| FileEdit::Dtype(i, "I32".into()),
        |e| matches!(e, LoadError::Dtype { .. })
    ));
    assert!(reaches(&|j| FileEdit::SwapKeys(0, j), |e| matches!(
        e,
        LoadError::Shape { .. }
    )));
    let err = load(&[FileEdit::Prefix(u64::MAX)]).unwrap_err();
    assert!(matches!(err, LoadError::NotSafetensors { .. }), "{err:?}");
    let err = load(&[FileEdit::Prefix(7)]).unwrap_err();
    assert!(matches!(err, LoadError::NotSafetensors { .. }), "{err:?}");
    let err = load(&[FileEdit::Truncate(100)]).unwrap_err();
    assert!(matches!(err, LoadError::Truncated { .. }), "{err:?}");
    assert!(reaches(
        &|i| FileEdit::DataValue(i, f32::NAN),
        |e| matches!(e, LoadError::NonFinite { .. })
    ));
    assert!(reaches(
        &|i| FileEdit::Number(i, "4294967296".into()),
        |e| matches!(e, LoadError::BadOffsets { .. })
    ));
    let err = load(&[FileEdit::HeaderChar(0, None, false)]).unwrap_err();
    assert!(matches!(err, LoadError::NotSafetensors { .. }), "{err:?}");
}

// ---- images ----

/// The color types a PNG of the target is written in; all decode to RGB.
#[derive(Clone, Copy, Debug)]
enum Color {
    L8,
    Rgb8,
    Rgba8,
}

fn encode(
    width: u32,
    height: u32,
    color: Color,
    value: [u8; 3],
    format: image::ImageFormat,
) -> Vec<u8> {
    let rgb = image::RgbImage::from_pixel(width, height, image::Rgb(value));
    let image = match color {
        Color::L8 => {
            image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(rgb).to_luma8())
        }
        Color::Rgb8 => image::DynamicImage::ImageRgb8(rgb),
        Color::Rgba8 => {
            image::DynamicImage::ImageRgba8(image::DynamicImage::ImageRgb8(rgb).to_rgba8())
        }
    };
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// Settings that are mostly valid and small (so an accepted image resizes fast), with
/// the ImageNet defaults and invalid crops mixed in.
fn preprocessing() -> impl Strategy<Value = Preprocessing> {
    prop_oneof![
        4 => (1u32..24, 0u32..26).prop_map(|(resize, crop)| Preprocessing {
            resize,
            crop,
            ..Preprocessing::default()
        }),
        1 => Just(Preprocessing::default()),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(resize, crop)| Preprocessing {
            resize,
            crop,
            ..Preprocessing::default()
        }),
    ]
}

/// Image sides: small, odd, and one side of 1 against a long one.
fn dimensions() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        3 => (1u32..48, 1u32..48),
        1 => (1u32..3, 1u32..5000),
        1 => (1u32..5000, 1u32..3),
        1 => (1u32..8, 1u32..700),
    ]
}

/// PNGs of any small, odd or extreme size give exactly what the rules say: a refused
/// setting, a refused aspect ratio, or a `(3, crop, crop)` tensor of the image's color.
#[test]
fn image_pngs_of_any_size_preprocess_or_refuse() {
    let strategy = (
        dimensions(),
        prop::sample::select(vec![Color::L8, Color::Rgb8, Color::Rgba8]),
        any::<[u8; 3]>(),
        preprocessing(),
    );
    fuzz(
        "image_pngs_of_any_size_preprocess_or_refuse",
        600,
        strategy,
        |((w, h), color, value, p)| {
            let bytes = encode(w, h, color, value, image::ImageFormat::Png);
            let result = catch_unwind(|| p.decode(&bytes)).map_err(|e| {
                TestCaseError::fail(format!("decode panicked: {}", panic_message(&*e)))
            })?;
            let (short, long) = (u64::from(w.min(h)), u64::from(w.max(h)));
            let resized_long = u64::from(p.resize) * long / short;
            match result {
                Err(ImageError::Config { .. }) => prop_assert!(p.crop == 0 || p.crop > p.resize),
                Err(ImageError::ResizedTooLarge {
                    width,
                    height,
                    limit,
                    ..
                }) => {
                    prop_assert!(p.crop >= 1 && p.crop <= p.resize);
                    prop_assert_eq!((width, height, limit), (w, h, MAX_RESIZED_PIXELS));
                    prop_assert!(
                        u128::from(p.resize) * u128::from(resized_long)
                            > u128::from(MAX_RESIZED_PIXELS)
                    );
                }
                Ok(tensor) => {
                    prop_assert!(p.crop >= 1 && p.crop <= p.resize);
                    prop_assert!(u64::from(p.resize) * resized_long <= MAX_RESIZED_PIXELS);
                    let crop = p.crop as usize;
                    prop_assert_eq!(tensor.dim(), (3, crop, crop));
                    // A one-color image stays that color through the resize (to within a
                    // rounding step of the filter).
                    let expected =
                        match color {
                            Color::L8 => {
                                let luma = image::DynamicImage::ImageRgb8(
                                    image::RgbImage::from_pixel(1, 1, image::Rgb(value)),
                                )
                                .to_luma8()[(0, 0)][0];
                                [luma; 3]
                            }
                            Color::Rgb8 | Color::Rgba8 => value,
                        };
                    for (c, plane) in tensor.outer_iter().enumerate() {
                        let want = (f32::from(expected[c]) / 255.0 - p.mean[c]) / p.std[c];
                        let tol = 1.01 / 255.0 / p.std[c];
                        for &v in plane {
                            prop_assert!(
                                (v - want).abs() <= tol,
                                "channel {}: {} vs {}",
                                c,
                                v,
                                want
                            );
                        }
                    }
                }
                Err(other) => {
                    return Err(TestCaseError::fail(format!(
                        "{w}x{h}: unexpected {other:?}"
                    )))
                }
            }
            Ok(())
        },
    );
}

/// CRC-32 (IEEE) of a PNG chunk's type and data, bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
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

/// A PNG that is only a signature, a valid IHDR claiming `width × height` RGB8, and
/// (with `idat`) a few bytes of image data: the shape of a decompression bomb.
fn png_header(width: u32, height: u32, idat: &[u8]) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no interlace
    chunk(b"IHDR", &ihdr);
    if !idat.is_empty() {
        chunk(b"IDAT", idat);
    }
    chunk(b"IEND", &[]);
    png
}

/// A header claiming any size: past the limits it is `TooLarge` before any pixel is
/// decoded; within them, the missing or garbage data is a `Decode` error.
#[test]
fn image_claimed_sizes_are_refused_from_the_header() {
    let side = prop_oneof![
        Just(0u32),
        Just(1),
        Just(MAX_SIDE),
        Just(MAX_SIDE + 1),
        Just(1 << 31),
        Just((1 << 31) - 1),
        Just(u32::MAX),
        Just((MAX_PIXELS / u64::from(MAX_SIDE)) as u32),
        1u32..100_000,
        any::<u32>(),
    ];
    let idat = prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 1..64)];
    fuzz(
        "image_claimed_sizes_are_refused_from_the_header",
        2000,
        (side.clone(), side, idat),
        |(w, h, idat)| {
            let bytes = png_header(w, h, &idat);
            let result = catch_unwind(|| Preprocessing::default().decode(&bytes)).map_err(|e| {
                TestCaseError::fail(format!("decode panicked: {}", panic_message(&*e)))
            })?;
            let too_large = w.max(h) > MAX_SIDE || u64::from(w) * u64::from(h) > MAX_PIXELS;
            match result {
                Err(ImageError::TooLarge { width, height, .. }) => {
                    prop_assert!(too_large, "{}x{} refused as too large", w, h);
                    prop_assert_eq!((width, height), (w, h));
                }
                // The size is read from the IHDR chunk before the decoder runs, so every
                // claim past the limits is `TooLarge`, with or without image data; the
                // decoder refuses the rest (zero sides, missing data) itself.
                Err(ImageError::Decode { reason, .. }) => prop_assert!(
                    !too_large,
                    "{}x{}: past the limits, but refused as {}",
                    w,
                    h,
                    reason
                ),
                other => return Err(TestCaseError::fail(format!("{w}x{h}: {other:?}"))),
            }
            Ok(())
        },
    );
}

/// One edit of an encoded image.
#[derive(Clone, Debug)]
enum ByteEdit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let i = any::<usize>();
    prop_oneof![
        3 => (i, any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        1 => (i, any::<u8>()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        1 => i.prop_map(ByteEdit::Delete),
        1 => i.prop_map(ByteEdit::Truncate),
    ]
}

/// Arbitrary bytes, bytes behind a PNG or JPEG signature, and mutated PNG and JPEG
/// files (edits mostly in their first 100 bytes, where the headers are) decode to a
/// tensor or to a decoding error: never a panic, a setting error or an I/O error.
#[test]
fn image_arbitrary_and_mutated_bytes_decode_or_refuse() {
    let originals: Vec<Vec<u8>> = [(5, 7), (16, 3), (1, 9)]
        .into_iter()
        .flat_map(|(w, h)| {
            [image::ImageFormat::Png, image::ImageFormat::Jpeg]
                .map(|f| encode(w, h, Color::Rgb8, [200, 30, 90], f))
        })
        .collect();
    let inputs = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (
            prop::sample::select(vec![b"\x89PNG\r\n\x1a\n".to_vec(), vec![0xFF, 0xD8, 0xFF]]),
            prop::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(|(mut head, tail)| {
                head.extend(tail);
                head
            }),
        4 => (
            prop::sample::select(originals),
            prop::collection::vec(byte_edit(), 1..5),
            any::<bool>()
        )
            .prop_map(|(mut bytes, edits, header)| {
                for edit in edits {
                    let span = if header { bytes.len().min(100) } else { bytes.len() }.max(1);
                    match edit {
                        ByteEdit::Set(i, b) => {
                            if !bytes.is_empty() {
                                bytes[i % span] = b;
                            }
                        }
                        ByteEdit::Insert(i, b) => bytes.insert(i % (span + 1).min(bytes.len() + 1), b),
                        ByteEdit::Delete(i) => {
                            if !bytes.is_empty() {
                                bytes.remove(i % span);
                            }
                        }
                        ByteEdit::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
                    }
                }
                bytes
            }),
    ];
    let p = Preprocessing {
        resize: 8,
        crop: 6,
        ..Preprocessing::default()
    };
    let outcomes = Cell::new([0u32; 2]);
    fuzz(
        "image_arbitrary_and_mutated_bytes_decode_or_refuse",
        2000,
        inputs,
        |bytes| {
            let result = catch_unwind(|| p.decode(&bytes)).map_err(|e| {
                TestCaseError::fail(format!("decode panicked: {}", panic_message(&*e)))
            })?;
            let mut o = outcomes.get();
            match result {
                Ok(tensor) => {
                    prop_assert_eq!(tensor.dim(), (3, 6, 6));
                    prop_assert!(tensor.iter().all(|v| v.is_finite()));
                    o[1] += 1;
                }
                Err(
                    ImageError::Decode { path: None, .. }
                    | ImageError::TooLarge { path: None, .. }
                    | ImageError::ResizedTooLarge { path: None, .. }
                    | ImageError::Truncated { path: None, .. },
                ) => o[0] += 1,
                Err(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            }
            outcomes.set(o);
            Ok(())
        },
    );
    let [refused, decoded] = outcomes.get();
    println!("images: {decoded} decoded, {refused} refused");
    assert!(
        refused > 0 && decoded > 0,
        "{refused} refused, {decoded} decoded"
    );
}

// ---- kernels ----

/// Valid geometry for `direct_conv`, with strided layouts around it.
#[derive(Clone, Debug)]
struct ConvCase {
    shape: ConvShape,
    /// Spare channels per input pixel, spare pixels per input row, offset, gap between
    /// images.
    input_slack: (usize, usize, usize, usize),
    /// Spare channels per output pixel, output offset, zero border around each image.
    output_slack: (usize, usize, usize),
    prologue: bool,
    epilogue: bool,
    packed: bool,
    parallel: bool,
    seed: u64,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    let shape = (
        1usize..4,
        1usize..7,
        1usize..33,
        1usize..40,
        1usize..70,
        1usize..5,
        1usize..5,
        1usize..4,
    )
        .prop_map(
            |(n, out_h, out_w, c_in, c_out, kernel_h, kernel_w, stride)| ConvShape {
                n,
                out_h,
                out_w,
                c_in,
                c_out,
                kernel_h,
                kernel_w,
                stride,
            },
        );
    (
        shape,
        (0usize..3, 0usize..3, 0usize..5, 0usize..5),
        (0usize..40, 0usize..5, 0usize..2),
        any::<[bool; 4]>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                mut shape,
                input_slack,
                output_slack,
                [prologue, epilogue, packed, parallel],
                seed,
            )| {
                // A prologue needs a 1x1 convolution.
                if prologue {
                    (shape.kernel_h, shape.kernel_w) = (1, 1);
                }
                ConvCase {
                    shape,
                    input_slack,
                    output_slack,
                    prologue,
                    epilogue,
                    packed,
                    parallel,
                    seed,
                }
            },
        )
}

/// Deterministic values in [-1, 1) from `seed` (xorshift).
fn values(len: usize, seed: &mut u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `direct_conv` on random small geometry (strided input and output layouts, prologue,
/// epilogue, HWIO or packed weights, serial or parallel) writes what
/// `direct_conv_reference` writes and leaves every other output element alone.
#[test]
fn kernel_direct_conv_matches_its_oracle() {
    fuzz(
        "kernel_direct_conv_matches_its_oracle",
        1000,
        conv_case(),
        |case| {
            let s = case.shape;
            let mut seed = case.seed | 1;
            let in_h = (s.out_h - 1) * s.stride + s.kernel_h;
            let in_w = (s.out_w - 1) * s.stride + s.kernel_w;
            let (spare_c, spare_px, offset, gap) = case.input_slack;
            let pixel = s.c_in + spare_c;
            let row = (in_w + spare_px) * pixel;
            let input_layout = ImageLayout {
                offset,
                image_stride: in_h * row + gap,
                row_stride: row,
                pixel_stride: pixel,
            };
            let input = values(offset + s.n * (in_h * row + gap), &mut seed);
            let taps = s.kernel_h * s.kernel_w;
            let weight = values(taps * s.c_in * s.c_out, &mut seed);
            let (scale, shift) = (values(s.c_out, &mut seed), values(s.c_out, &mut seed));
            let (pro_scale, pro_shift) = (values(s.c_in, &mut seed), values(s.c_in, &mut seed));
            let prologue = if case.prologue {
                Epilogue::ScaleShiftRelu {
                    scale: &pro_scale,
                    shift: &pro_shift,
                }
            } else {
                Epilogue::Store
            };
            let epilogue = if case.epilogue {
                Epilogue::ScaleShiftRelu {
                    scale: &scale,
                    shift: &shift,
                }
            } else {
                Epilogue::Store
            };
            let (spare_out, out_offset, border) = case.output_slack;
            let out_pixel = s.c_out + spare_out;
            let ow = s.out_w + 2 * border;
            let out_layout = ImageLayout {
                offset: out_offset + (ow + 1) * border * out_pixel,
                image_stride: (s.out_h + 2 * border) * ow * out_pixel,
                row_stride: ow * out_pixel,
                pixel_stride: out_pixel,
            };
            let sentinel = values(out_offset + s.n * out_layout.image_stride, &mut seed);
            let mut expected = sentinel.clone();
            direct_conv_reference(
                &input,
                input_layout,
                prologue,
                &weight,
                s,
                epilogue,
                &mut expected,
                out_layout,
            );
            let packed = PackedWeight::from_hwio(&weight, taps * s.c_in, s.c_out);
            let w = if case.packed {
                ConvWeight::Packed(&packed)
            } else {
                ConvWeight::Hwio(&weight)
            };
            let mut actual = sentinel.clone();
            let ran = catch_unwind(AssertUnwindSafe(|| {
                direct_conv(
                    &input,
                    input_layout,
                    prologue,
                    w,
                    s,
                    epilogue,
                    &mut actual,
                    out_layout,
                    case.parallel,
                )
            }))
            .map_err(|e| {
                TestCaseError::fail(format!("valid geometry panicked: {}", panic_message(&*e)))
            })?;
            if !ran {
                // No AVX here (or a window past 49 taps): nothing may have been touched.
                prop_assert!(actual == sentinel);
                return Ok(());
            }
            let k = (taps * s.c_in) as f32;
            for (i, (&e, &a)) in expected.iter().zip(&actual).enumerate() {
                let tol = 1e-5 * k.sqrt() * e.abs().max(1.0);
                prop_assert!((e - a).abs() <= tol, "element {}: {} vs {}", i, a, e);
            }
            Ok(())
        },
    );
}

/// Sizes and strides as a caller bug might pass them: small, zero, and near `usize::MAX`.
fn any_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..6,
        1 => Just(usize::MAX),
        1 => Just(usize::MAX / 2 + 1),
        1 => Just(1usize << 32),
        1 => Just((1usize << 32) + 1),
        1 => any::<usize>(),
    ]
}

fn any_layout() -> impl Strategy<Value = ImageLayout> {
    (any_size(), any_size(), any_size(), any_size()).prop_map(
        |(offset, image_stride, row_stride, pixel_stride)| ImageLayout {
            offset,
            image_stride,
            row_stride,
            pixel_stride,
        },
    )
}

/// Arbitrary geometry, layouts and slice lengths: `direct_conv` and its oracle either
/// both run (and agree) or both refuse with the same `direct_conv: …` panic; no other
/// panic, and no out-of-bounds access (which the kernels' `unsafe` would not catch).
#[test]
fn kernel_direct_conv_refuses_bad_geometry() {
    quiet_expected_panics();
    let shape = (
        any_size(),
        any_size(),
        any_size(),
        any_size(),
        any_size(),
        any_size(),
        any_size(),
        any_size(),
    )
        .prop_map(
            |(n, out_h, out_w, c_in, c_out, kernel_h, kernel_w, stride)| ConvShape {
                n,
                out_h,
                out_w,
                c_in,
                c_out,
                kernel_h,
                kernel_w,
                stride,
            },
        );
    let strategy = (
        shape,
        any_layout(),
        any_layout(),
        (0usize..200, 0usize..200, 0usize..200),
        (0usize..6, 0usize..6, 0usize..6, 0usize..6),
        any::<[bool; 3]>(),
    );
    let outcomes = Cell::new([0u32; 2]);
    fuzz(
        "kernel_direct_conv_refuses_bad_geometry",
        2000,
        strategy,
        |(
            s,
            in_layout,
            out_layout,
            (in_len, w_len, out_len),
            (pro_s, pro_t, epi_s, epi_t),
            [prologue, epilogue, packed],
        )| {
            let mut seed = 0x9E37_79B9_7F4A_7C15;
            let input = values(in_len, &mut seed);
            let weight = values(w_len, &mut seed);
            let vectors: Vec<Vec<f32>> = [pro_s, pro_t, epi_s, epi_t]
                .iter()
                .map(|&l| values(l, &mut seed))
                .collect();
            let pro = if prologue {
                Epilogue::ScaleShiftRelu {
                    scale: &vectors[0],
                    shift: &vectors[1],
                }
            } else {
                Epilogue::Store
            };
            let epi = if epilogue {
                Epilogue::ScaleShiftRelu {
                    scale: &vectors[2],
                    shift: &vectors[3],
                }
            } else {
                Epilogue::Store
            };
            // A packed weight of the shape's rows, when that is small enough to build.
            let rows = s
                .kernel_h
                .checked_mul(s.kernel_w)
                .and_then(|t| t.checked_mul(s.c_in));
            let packed_weight = match rows {
                Some(rows) if packed && rows.checked_mul(s.c_out).is_some_and(|len| len <= 200) => {
                    Some(PackedWeight::from_hwio(
                        &values(rows * s.c_out, &mut seed),
                        rows,
                        s.c_out,
                    ))
                }
                _ => None,
            };
            let w = packed_weight
                .as_ref()
                .map_or(ConvWeight::Hwio(&weight), ConvWeight::Packed);
            let hwio = packed_weight
                .as_ref()
                .map_or(weight.clone(), PackedWeight::to_hwio);
            let sentinel = values(out_len, &mut seed);
            let mut expected = sentinel.clone();
            let reference = catch_unwind(AssertUnwindSafe(|| {
                direct_conv_reference(
                    &input,
                    in_layout,
                    pro,
                    &hwio,
                    s,
                    epi,
                    &mut expected,
                    out_layout,
                )
            }));
            let mut actual = sentinel.clone();
            let kernel = catch_unwind(AssertUnwindSafe(|| {
                direct_conv(
                    &input,
                    in_layout,
                    pro,
                    w,
                    s,
                    epi,
                    &mut actual,
                    out_layout,
                    false,
                )
            }));
            let mut o = outcomes.get();
            match (reference, kernel) {
                (Err(r), Err(k)) => {
                    let (r, k) = (panic_message(&*r), panic_message(&*k));
                    prop_assert!(r.starts_with("direct_conv: "), "reference: {}", r);
                    prop_assert_eq!(r, k);
                    o[0] += 1;
                }
                (Ok(()), Ok(ran)) => {
                    if ran {
                        for (&e, &a) in expected.iter().zip(&actual) {
                            prop_assert!(
                                (e - a).abs() <= 1e-4 * e.abs().max(1.0),
                                "{} vs {}",
                                a,
                                e
                            );
                        }
                    } else {
                        prop_assert!(actual == sentinel);
                    }
                    o[1] += 1;
                }
                (Err(r), Ok(_)) => {
                    return Err(TestCaseError::fail(format!(
                        "only the reference refused: {}",
                        panic_message(&*r)
                    )))
                }
                (Ok(()), Err(k)) => {
                    return Err(TestCaseError::fail(format!(
                        "only the kernel refused: {}",
                        panic_message(&*k)
                    )))
                }
            }
            outcomes.set(o);
            Ok(())
        },
    );
    let [refused, ran] = outcomes.get();
    println!("direct_conv: {ran} ran, {refused} refused");
    assert!(refused > 0 && ran > 0, "{refused} refused, {ran} ran");
}

/// `im2col` by plain loops, for the valid cases.
fn im2col_reference(
    input: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    win: Window,
) -> Vec<f32> {
    let (oh, ow) = win.output_size(h, w);
    let mut out = Vec::new();
    // Loops of `usize::MAX` images over zero rows would not end.
    if [n, oh, ow, win.kernel_h, win.kernel_w, c].contains(&0) {
        return out;
    }
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..win.kernel_h {
                    for kx in 0..win.kernel_w {
                        let y = (oy * win.stride + ky)
                            .checked_sub(win.padding)
                            .filter(|&y| y < h);
                        let x = (ox * win.stride + kx)
                            .checked_sub(win.padding)
                            .filter(|&x| x < w);
                        for ch in 0..c {
                            out.push(match (y, x) {
                                (Some(y), Some(x)) => input[((b * h + y) * w + x) * c + ch],
                                _ => 0.0,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// `im2col` on small geometry equals the plain loops; on arbitrary geometry and buffer
/// lengths it runs (and still agrees) or refuses with one of its own messages.
#[test]
fn kernel_im2col_matches_or_refuses() {
    quiet_expected_panics();
    let small = (
        1usize..3,
        1usize..8,
        1usize..8,
        1usize..5,
        1usize..4,
        1usize..4,
        1usize..3,
        0usize..3,
    );
    let sizes = prop_oneof![
        3 => small.prop_map(|(n, h, w, c, kh, kw, stride, padding)| ((n, h, w, c), Window { kernel_h: kh, kernel_w: kw, stride, padding }, true)),
        1 => ((any_size(), any_size(), any_size(), any_size()), (any_size(), any_size(), any_size(), any_size()), any::<bool>())
            .prop_map(|(dims, (kernel_h, kernel_w, stride, padding), exact)| (dims, Window { kernel_h, kernel_w, stride, padding }, exact)),
    ];
    let outcomes = Cell::new([0u32; 2]);
    fuzz(
        "kernel_im2col_matches_or_refuses",
        2000,
        (sizes, 0usize..300, 0usize..300),
        |((dims, win, exact), in_len, out_len)| {
            let (n, h, w, c) = dims;
            // The exact lengths when they are small, else the arbitrary ones.
            let lengths = catch_unwind(|| {
                let (oh, ow) = win.output_size(h, w);
                let input = [n, h, w, c]
                    .iter()
                    .try_fold(1usize, |a, &b| a.checked_mul(b))?;
                let out = [n, oh, ow, win.kernel_h, win.kernel_w, c]
                    .iter()
                    .try_fold(1usize, |a, &b| a.checked_mul(b))?;
                Some((input, out))
            });
            let (in_len, out_len) = match lengths {
                Ok(Some((i, o))) if exact && i <= 10_000 && o <= 100_000 => (i, o),
                _ => (in_len, out_len),
            };
            let mut seed = 0x1234_5678_9ABC_DEF1;
            let input = values(in_len, &mut seed);
            let mut out = vec![f32::NAN; out_len];
            let result = catch_unwind(AssertUnwindSafe(|| {
                im2col(&input, n, h, w, c, win, &mut out)
            }));
            let mut o = outcomes.get();
            match result {
                Ok(()) => {
                    // It ran: the lengths were right, so the oracle can run too.
                    prop_assert_eq!(out, im2col_reference(&input, dims, win));
                    o[1] += 1;
                }
                Err(e) => {
                    let message = panic_message(&*e);
                    prop_assert!(
                        KERNEL_CHECKS[1..].iter().any(|p| message.starts_with(p)),
                        "{}",
                        message
                    );
                    o[0] += 1;
                }
            }
            outcomes.set(o);
            Ok(())
        },
    );
    let [refused, ran] = outcomes.get();
    println!("im2col: {ran} ran, {refused} refused");
    assert!(refused > 0 && ran > 0, "{refused} refused, {ran} ran");
}
