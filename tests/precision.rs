//! Low-precision inference (`densenet::runtime::precision`): int8 and bf16 models
//! against the fp32 ones they come from.
//!
//! - logits on the repository's fixture models (torchvision's small DenseNet, the
//!   paper's CIFAR DenseNet-BC with its own stem) track fp32's: cosine similarity and
//!   top-1 agreement over generated images;
//! - the trained models' held-out accuracy (DigitsNet on scikit-learn's 360 test digits,
//!   a generated model; ShapesNet on 200 generated shapes, a `DynamicModel`) within 1
//!   point (int8) and 0.5 point (bf16) of fp32's;
//! - the file layout: the saved int8 weights are `round(w / (max|w[:, o]| / 127))`,
//!   computed here from the fp32 file; save → load gives the same outputs bit for bit;
//! - every bad input is its typed error.
//!
//! The fallback on CPUs without the instructions is `tests/precision_fallback.rs` (its
//! switch is process-wide).

mod common;
#[path = "../fixtures/digits/digits.rs"]
mod digits;
#[path = "../tools/shapes.rs"]
mod shapes;

use std::path::PathBuf;

use densenet::runtime::image::{FolderConfig, ImageFolder};
use densenet::runtime::ndarray::{s, Array2, Array4, ArrayD, ArrayView4, Axis, Ix2};
use densenet::runtime::precision::{
    CalibrationMethod, LowpWorkspace, Precision, QuantizeError, Quantized,
};
use densenet::runtime::train::{Augment, Source};
use densenet::runtime::{DynamicModel, LoadError, Model, Naming, Network, Rng};
use densenet::{densenet, densenet_yaml};
use safetensors::SafeTensors;

use common::fixture;

densenet! {
    /// torchvision `DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16,
    /// bn_size=4, num_classes=10)`: the `torchvision_small` fixture.
    Small<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// The paper's CIFAR DenseNet-BC, L = 40, k = 12: the `cifar_bc` fixture.
    CifarBC<depth: 40, growth: 12, theta: 0.5, stem: cifar, classes: 10>;
    /// A plain CIFAR DenseNet: no bottleneck (one 3x3 per layer), no compression.
    CifarPlain<growth: 12, blocks: [2, 3, 2], stem: cifar, bottleneck: false, classes: 10>;
    /// Pooled features, no classifier.
    SmallAvg<growth: 8, blocks: [2, 3, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], head: avg>;
    /// Max-pooled features.
    SmallMax<growth: 8, blocks: [2, 2], init_features: 16, theta: 0.5, input: [3, 32, 32], head: max>;
    /// The final feature map, NCHW.
    SmallMap<growth: 8, blocks: [2, 2], init_features: 16, theta: 0.5, input: [3, 32, 32], head: none>;
    /// ShapesNet's architecture (`specs/shapes.yaml`), run as a `DynamicModel` below.
    ShapesNet<input: [3, 32, 32], stem: cifar, growth: 8, blocks: [3, 3, 3], init_features: 16, theta: 0.5, bottleneck: 4, classes: 4>;
    /// `examples/fine_tune.rs`'s model: ShapesNet's backbone with a new 3-class head.
    ThreeShapes<input: [3, 32, 32], stem: cifar, growth: 8, blocks: [3, 3, 3], init_features: 16, theta: 0.5, bottleneck: 4, classes: 3>
}

densenet_yaml!("specs/digits.yaml");

/// `n` images of `shape` with values ~ N(0, 1) (Box–Muller over the crate's RNG).
fn gaussian(n: usize, [c, h, w]: [usize; 3], seed: u64) -> Array4<f32> {
    let mut rng = Rng::new(seed);
    let mut uniform = move || (rng.next_u64() >> 40) as f64 / (1u64 << 24) as f64;
    Array4::from_shape_simple_fn((n, c, h, w), move || {
        let (u, v) = (uniform().max(1e-12), uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    })
}

/// Cosine similarity of two arrays as flat vectors.
fn cosine(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |x: &ArrayD<f32>| x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The fraction of rows whose largest logit is at the same class.
fn top1_agreement(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let argmax = |row: densenet::runtime::ndarray::ArrayView1<'_, f32>| {
        row.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |m, (i, &v)| if v > m.1 { (i, v) } else { m },
            )
            .0
    };
    let (a, b) = (
        a.view().into_dimensionality::<Ix2>().unwrap(),
        b.view().into_dimensionality::<Ix2>().unwrap(),
    );
    let same = a
        .axis_iter(Axis(0))
        .zip(b.axis_iter(Axis(0)))
        .filter(|(x, y)| argmax(*x) == argmax(*y))
        .count();
    same as f64 / a.nrows() as f64
}

/// Cosine and top-1 agreement of `q`'s logits with `model`'s on `x`.
fn agreement<M: Network + Clone>(model: &M, q: &Quantized<M>, x: &Array4<f32>) -> (f64, f64) {
    let fp32 = model.forward(x.view()).unwrap();
    let low = q.forward(x.view()).unwrap();
    (cosine(&fp32, &low), top1_agreement(&fp32, &low))
}

fn small() -> Small {
    Small::load_safetensors(fixture("torchvision_small.safetensors")).unwrap()
}

fn cifar_bc() -> CifarBC {
    CifarBC::load_safetensors(fixture("cifar_bc.safetensors")).unwrap()
}

/// Calibration batches of generated images for a model of input `shape`.
fn calibration(shape: [usize; 3]) -> Vec<Array4<f32>> {
    vec![gaussian(8, shape, 1), gaussian(8, shape, 2)]
}

#[test]
fn int8_and_bf16_logits_track_fp32_on_the_fixture_models() {
    // Generated inputs like the fixtures' own (~ randn), other seeds than calibration's.
    let small = small();
    let x = gaussian(32, Small::INPUT, 11);
    let int8 = Quantized::int8(
        &small,
        &calibration(Small::INPUT),
        CalibrationMethod::MinMax,
    )
    .unwrap();
    let percentile = Quantized::int8(
        &small,
        &calibration(Small::INPUT),
        CalibrationMethod::Percentile(99.99),
    )
    .unwrap();
    let bf16 = Quantized::bf16(&small).unwrap();
    for (name, q, min_cos, min_top1) in [
        ("small int8 minmax", &int8, 0.999, 0.95),
        ("small int8 p99.99", &percentile, 0.999, 0.95),
        ("small bf16", &bf16, 0.9999, 0.96),
    ] {
        let (cos, top1) = agreement(&small, q, &x);
        eprintln!("{name}: cosine {cos:.6}, top-1 agreement {top1:.3}");
        assert!(cos >= min_cos, "{name}: cosine {cos} < {min_cos}");
        assert!(
            top1 >= min_top1,
            "{name}: top-1 agreement {top1} < {min_top1}"
        );
    }

    let cifar = cifar_bc();
    let x = gaussian(32, CifarBC::INPUT, 12);
    let int8 = Quantized::int8(
        &cifar,
        &calibration(CifarBC::INPUT),
        CalibrationMethod::MinMax,
    )
    .unwrap();
    let bf16 = Quantized::bf16(&cifar).unwrap();
    for (name, q, min_cos, min_top1) in [
        ("cifar_bc int8", &int8, 0.999, 0.9),
        ("cifar_bc bf16", &bf16, 0.9999, 0.96),
    ] {
        let (cos, top1) = agreement(&cifar, q, &x);
        eprintln!("{name}: cosine {cos:.6}, top-1 agreement {top1:.3}");
        assert!(cos >= min_cos, "{name}: cosine {cos} < {min_cos}");
        assert!(
            top1 >= min_top1,
            "{name}: top-1 agreement {top1} < {min_top1}"
        );
    }
}

#[test]
fn plain_layers_and_feature_heads_run_too() {
    let plain = CifarPlain::init(3);
    let x = gaussian(4, CifarPlain::INPUT, 5);
    let int8 =
        Quantized::int8(&plain, std::slice::from_ref(&x), CalibrationMethod::MinMax).unwrap();
    let (cos, _) = agreement(&plain, &int8, &x);
    assert!(cos >= 0.99, "plain int8 cosine {cos}");
    let bf16 = Quantized::bf16(&plain).unwrap();
    let (cos, _) = agreement(&plain, &bf16, &x);
    assert!(cos >= 0.9999, "plain bf16 cosine {cos}");

    let features = SmallAvg::init(4);
    let x = gaussian(2, SmallAvg::INPUT, 6);
    let int8 = Quantized::int8(
        &features,
        std::slice::from_ref(&x),
        CalibrationMethod::MinMax,
    )
    .unwrap();
    let fp32 = Model::forward(&features, x.view()).unwrap();
    let low = int8.forward(x.view()).unwrap();
    assert_eq!(low.shape(), fp32.shape());
    assert!(cosine(&fp32, &low) >= 0.99);
    assert!(matches!(
        int8.predict(x.view()),
        Err(QuantizeError::Model(
            densenet::runtime::Error::NotAClassifier { .. }
        ))
    ));
    // The other heads: max-pooled features and the NCHW feature map, both precisions.
    fn close<M: Network + Clone>(model: &M, x: &Array4<f32>) {
        let fp32 = Model::forward(model, x.view()).unwrap();
        let int8 =
            Quantized::int8(model, std::slice::from_ref(x), CalibrationMethod::MinMax).unwrap();
        let bf16 = Quantized::bf16(model).unwrap();
        for (low, min) in [
            (int8.forward(x.view()).unwrap(), 0.99),
            (bf16.forward(x.view()).unwrap(), 0.9999),
        ] {
            assert_eq!(low.shape(), fp32.shape());
            let cos = cosine(&fp32, &low);
            assert!(cos >= min, "{:?}: cosine {cos}", fp32.shape());
        }
    }
    close(&SmallMax::init(5), &gaussian(2, SmallMax::INPUT, 7));
    close(&SmallMap::init(6), &gaussian(2, SmallMap::INPUT, 8));
}

/// Held-out accuracy of fp32, int8 (both methods) and bf16, in points.
fn accuracies<M: Network + Clone>(
    model: &M,
    test: &dyn Source,
    calibration: &[Array4<f32>],
) -> [f64; 4] {
    let fp32 = model.evaluate(test, 100).unwrap();
    let int8 = Quantized::int8(model, calibration, CalibrationMethod::MinMax).unwrap();
    let pct = Quantized::int8(model, calibration, CalibrationMethod::Percentile(99.99)).unwrap();
    let bf16 = Quantized::bf16(model).unwrap();
    let points = |q: &Quantized<M>| {
        let e = q.evaluate(test, 100).unwrap();
        assert_eq!(e.total, fp32.total);
        100.0 * e.correct as f64 / e.total as f64
    };
    [
        100.0 * fp32.correct as f64 / fp32.total as f64,
        points(&int8),
        points(&pct),
        points(&bf16),
    ]
}

fn check_accuracies(name: &str, [fp32, minmax, pct, bf16]: [f64; 4]) {
    eprintln!(
        "{name}: fp32 {fp32:.2}%, int8 min-max {minmax:.2}%, int8 p99.99 {pct:.2}%, bf16 {bf16:.2}%"
    );
    assert!(
        (minmax - fp32).abs() <= 1.0,
        "{name}: int8 (min-max) {minmax} vs fp32 {fp32}"
    );
    assert!(
        (pct - fp32).abs() <= 1.0,
        "{name}: int8 (p99.99) {pct} vs fp32 {fp32}"
    );
    assert!(
        (bf16 - fp32).abs() <= 0.5,
        "{name}: bf16 {bf16} vs fp32 {fp32}"
    );
}

#[test]
fn trained_digits_model_keeps_its_held_out_accuracy() {
    let bytes = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/digits/digitsnet.safetensors"),
    )
    .unwrap();
    let model = DigitsNet::from_safetensors_bytes(&bytes).unwrap();
    let train = digits::load(digits::Split::Train).unwrap();
    let test = digits::load(digits::Split::Test).unwrap();
    // 128 training images calibrate; the 360 held-out ones test.
    let calibration: Vec<Array4<f32>> = (0..2)
        .map(|b| {
            let indices: Vec<usize> = (b * 64..(b + 1) * 64).collect();
            train.batch(&indices, None).unwrap().images
        })
        .collect();
    let result = accuracies(&model, &test, &calibration);
    assert!(
        result[0] >= 95.0,
        "the trained model's own accuracy: {}",
        result[0]
    );
    check_accuracies("DigitsNet", result);
}

/// A fresh folder under the target directory.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A generated shapes folder (`tools/shapes.rs`) of 32x32 images, `per_class` of each
/// kind drawn with `seed`, without the "cross" class if `three`, opened for evaluation.
fn shapes_folder(dir: &std::path::Path, per_class: usize, seed: u64, three: bool) -> ImageFolder {
    shapes::write_shapes_folder(dir, per_class, 32, seed).unwrap();
    if three {
        std::fs::remove_dir_all(dir.join("cross")).unwrap();
    }
    let config = FolderConfig {
        size: (32, 32),
        augment: Augment::None,
        cache: true,
        ..FolderConfig::default()
    };
    ImageFolder::open(dir, config).unwrap()
}

/// Every image of `folder` as one calibration batch.
fn one_batch(folder: &ImageFolder) -> Vec<Array4<f32>> {
    let all: Vec<usize> = (0..folder.len()).collect();
    vec![folder.batch(&all, None).unwrap().images]
}

#[test]
fn trained_shapes_model_keeps_its_held_out_accuracy_as_a_dynamic_model() {
    let bytes = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/shapes/shapesnet.safetensors"),
    )
    .unwrap();
    let model = DynamicModel::from_safetensors_bytes(ShapesNet::ARCHITECTURE, &bytes, Naming::Auto)
        .unwrap();
    // As `examples/train_shapes.rs` draws them: the test set (seed 9, 50 a class), and a
    // calibration set from the training seed (1), 16 a class.
    let dir = scratch_dir("precision_shapes");
    let test = shapes_folder(&dir.join("test"), 50, 9, false);
    let calibration = one_batch(&shapes_folder(&dir.join("calibration"), 16, 1, false));
    let result = accuracies(&model, &test, &calibration);
    assert!(
        result[0] >= 90.0,
        "the trained model's own accuracy: {}",
        result[0]
    );
    check_accuracies("ShapesNet", result);
}

/// The fine-tuning example's model, as it ships: `fixtures/shapes/three_shapes_fine_tuned.safetensors`
/// is the `target/fine_tune/shapes/fine_tuned.safetensors` that `cargo run --release
/// --example fine_tune` writes (ShapesNet pretrained, head trained on the frozen base,
/// then everything at a low rate; 99.3% on its test set).
#[test]
fn fine_tuned_model_keeps_its_held_out_accuracy() {
    let model = ThreeShapes::load_safetensors(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/shapes/three_shapes_fine_tuned.safetensors"),
    )
    .unwrap();
    // As the example draws them: its test set (seed 8, 100 a class) and, to calibrate,
    // its task folder (seed 7, 40 a class), both without the fourth shape ("cross").
    let dir = scratch_dir("precision_fine_tuned");
    let test = shapes_folder(&dir.join("test"), 100, 8, true);
    let calibration = one_batch(&shapes_folder(&dir.join("task"), 40, 7, true));
    let result = accuracies(&model, &test, &calibration);
    assert!(
        result[0] >= 95.0,
        "the fine-tuned model's own accuracy: {}",
        result[0]
    );
    check_accuracies("ThreeShapes (fine-tuned)", result);
}

/// An F32 tensor of a safetensors file.
fn floats(file: &SafeTensors<'_>, key: &str) -> (Vec<usize>, Vec<f32>) {
    common::read_f32(file, key)
}

#[test]
fn saved_int8_weights_are_the_rounded_per_channel_quotients() {
    // Independent of the kernels' packing: from the fp32 file, per output channel
    // s = max|w| / 127 and q = round_ties_even(w / s).
    let model = small();
    let int8 = Quantized::int8(
        &model,
        &calibration(Small::INPUT),
        CalibrationMethod::MinMax,
    )
    .unwrap();
    let bytes = int8.to_safetensors_bytes();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let fp32_bytes = std::fs::read(fixture("torchvision_small.safetensors")).unwrap();
    let fp32 = SafeTensors::deserialize(&fp32_bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata().as_ref().unwrap()["densenet.precision"],
        "int8"
    );
    let mut convs = 0;
    for key in [
        "features.denseblock1.denselayer1.conv1",
        "features.denseblock3.denselayer4.conv2",
        "features.transition2.conv",
    ] {
        let (shape, w) = floats(&fp32, &format!("{key}.weight"));
        let q = file.tensor(&format!("int8/{key}.qweight")).unwrap();
        assert_eq!(q.dtype(), safetensors::Dtype::I8);
        assert_eq!(q.shape(), shape.as_slice(), "OIHW, as torch");
        let (_, scales) = floats(&file, &format!("int8/{key}.qscale"));
        let per_out = w.len() / shape[0];
        for (o, chunk) in w.chunks(per_out).enumerate() {
            let max = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(scales[o], max / 127.0, "{key} scale {o}");
            for (i, &v) in chunk.iter().enumerate() {
                let expected = (v / scales[o]).round_ties_even() as i8;
                assert_eq!(q.data()[o * per_out + i] as i8, expected, "{key}[{o}, {i}]");
            }
        }
        let (shape, scale) = floats(&file, &format!("int8/{key}.input_scale"));
        assert!(shape.is_empty() && scale[0] > 0.0);
        assert!(
            file.tensor(&format!("{key}.weight")).is_err(),
            "no fp32 copy"
        );
        convs += 1;
    }
    assert_eq!(convs, 3);
    // The stem stays fp32.
    assert_eq!(
        file.tensor("features.conv0.weight").unwrap().dtype(),
        safetensors::Dtype::F32
    );
    assert!(int8.weight_bytes() * 2 < int8.fp32_weight_bytes());
}

/// Two safetensors files hold the same tensors and metadata (the header's key order
/// may differ: the metadata is a hash map).
fn assert_same_tensors(a: &[u8], b: &[u8]) {
    let (fa, fb) = (
        SafeTensors::deserialize(a).unwrap(),
        SafeTensors::deserialize(b).unwrap(),
    );
    let mut names = fa.names();
    names.sort();
    let mut other = fb.names();
    other.sort();
    assert_eq!(names, other);
    for name in names {
        let (x, y) = (fa.tensor(name).unwrap(), fb.tensor(name).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{name}");
        assert!(x.data() == y.data(), "{name} differs");
    }
    let meta = |bytes| {
        SafeTensors::read_metadata(bytes)
            .unwrap()
            .1
            .metadata()
            .clone()
    };
    assert_eq!(meta(a), meta(b));
}

#[test]
fn save_then_load_gives_the_same_outputs() {
    let model = small();
    let x = gaussian(3, Small::INPUT, 21);
    let int8 = Quantized::int8(
        &model,
        &calibration(Small::INPUT),
        CalibrationMethod::Percentile(99.9),
    )
    .unwrap();
    let bf16 = Quantized::bf16(&model).unwrap();
    let dir = scratch_dir("precision_round_trip");
    std::fs::create_dir_all(&dir).unwrap();
    for q in [&int8, &bf16] {
        let path = dir.join(format!("small.{}.safetensors", q.precision()));
        q.save_safetensors(&path).unwrap();
        // Into a fresh generated model (any weights) and into a DynamicModel.
        let loaded = Quantized::load_safetensors(Small::init(99), &path).unwrap();
        assert_eq!(loaded.precision(), q.precision());
        assert_eq!(loaded.input_scales(), q.input_scales());
        assert_eq!(
            loaded.forward(x.view()).unwrap(),
            q.forward(x.view()).unwrap()
        );
        assert_same_tensors(&loaded.to_safetensors_bytes(), &q.to_safetensors_bytes());
        let dynamic = DynamicModel::init(Small::ARCHITECTURE, 0).unwrap();
        let loaded =
            Quantized::from_safetensors_bytes(dynamic, &std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            loaded.forward(x.view()).unwrap(),
            q.forward(x.view()).unwrap()
        );
        let summary = loaded.summary().to_string();
        assert!(
            summary.contains(&format!("Precision: {}", q.precision())),
            "{summary}"
        );
        assert!(
            summary.contains(&format!("Weight bytes: {}", q.weight_bytes())),
            "{summary}"
        );
    }
    // A bf16 file is a torchvision state dict too: the fp32 loader reads it.
    let fp32 = Small::from_safetensors_bytes(&bf16.to_safetensors_bytes()).unwrap();
    assert_eq!(
        fp32.forward(x.view()).unwrap(),
        bf16.network().forward(x.view()).unwrap()
    );
    assert_eq!(int8.precision(), Precision::Int8);
}

#[test]
fn calibration_errors_are_typed() {
    let model = small();
    let good = gaussian(1, Small::INPUT, 1);
    let method = CalibrationMethod::MinMax;
    assert!(matches!(
        Quantized::int8(&model, &[], method),
        Err(QuantizeError::NoCalibrationImages)
    ));
    let empty = Array4::<f32>::zeros((0, 3, 64, 64));
    assert!(matches!(
        Quantized::int8(&model, &[empty], method),
        Err(QuantizeError::NoCalibrationImages)
    ));
    let wrong = Array4::<f32>::zeros((2, 3, 32, 32));
    match Quantized::int8(&model, &[good.clone(), wrong], method) {
        Err(QuantizeError::CalibrationShape {
            batch: 1,
            expected: [3, 64, 64],
            actual,
        }) => assert_eq!(actual, vec![2, 3, 32, 32]),
        other => panic!("{other:?}"),
    }
    let mut nan = good.clone();
    nan[[0, 1, 2, 3]] = f32::NAN;
    assert!(matches!(
        Quantized::int8(&model, &[nan], method),
        Err(QuantizeError::NonFiniteCalibration { batch: 0 })
    ));
    for p in [0.0, -1.0, 100.5, f64::NAN] {
        assert!(matches!(
            Quantized::int8(
                &model,
                std::slice::from_ref(&good),
                CalibrationMethod::Percentile(p)
            ),
            Err(QuantizeError::Percentile { .. })
        ));
    }
    // A NaN weight cannot be quantized: the error names the convolution.
    let mut broken = model.clone();
    broken.visit_layers_mut(&mut |name, layer| {
        if let densenet::runtime::LayerMut::Conv(conv) = layer {
            if name.part == "conv2" {
                conv.weight_mut().view_mut()[[0, 0, 0, 0]] = f32::NAN;
            }
        }
    });
    match Quantized::int8(&broken, std::slice::from_ref(&good), method) {
        Err(QuantizeError::Kernel { layer, .. }) => {
            assert_eq!(layer, "features.denseblock1.denselayer1.conv2")
        }
        other => panic!("{other:?}"),
    }
    // Running on images of the wrong shape.
    let int8 = Quantized::int8(&model, &[good], method).unwrap();
    assert!(matches!(
        int8.forward(Array4::zeros((1, 3, 32, 32)).view()),
        Err(QuantizeError::Model(
            densenet::runtime::Error::InputShape { .. }
        ))
    ));
    assert!(matches!(
        int8.forward(Array4::zeros((0, 3, 64, 64)).view()),
        Err(QuantizeError::Model(densenet::runtime::Error::EmptyBatch))
    ));
    let mut ws = LowpWorkspace::new();
    let mut out = ArrayD::zeros(vec![1, 9]);
    assert!(matches!(
        int8.forward_into(
            Array4::zeros((1, 3, 64, 64)).view(),
            &mut ws,
            out.view_mut()
        ),
        Err(QuantizeError::Model(
            densenet::runtime::Error::OutputShape { .. }
        ))
    ));
    let mut out = Array2::<f32>::zeros((1, 10)).into_dyn();
    int8.forward_into(
        Array4::zeros((1, 3, 64, 64)).view(),
        &mut ws,
        out.view_mut(),
    )
    .unwrap();
}

/// `bytes` with the tensor `key` replaced by `(dtype, shape, data)` (or removed).
fn edit(
    bytes: &[u8],
    key: &str,
    new: Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .iter()
        .filter(|(k, _)| *k != key)
        .map(|(k, v)| {
            (
                k.to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    if let Some((dtype, shape, data)) = new {
        tensors.push((key.to_string(), dtype, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, meta.metadata().clone()).unwrap()
}

#[test]
fn loading_errors_are_typed() {
    let model = small();
    let int8 = Quantized::int8(
        &model,
        &calibration(Small::INPUT),
        CalibrationMethod::MinMax,
    )
    .unwrap();
    let bytes = int8.to_safetensors_bytes();
    let load = |b: &[u8]| Quantized::from_safetensors_bytes(Small::init(0), b);

    // Another architecture: a CIFAR DenseNet-BC's int8 file into the small torchvision one.
    let cifar = cifar_bc();
    let other = Quantized::int8(
        &cifar,
        &calibration(CifarBC::INPUT),
        CalibrationMethod::MinMax,
    )
    .unwrap()
    .to_safetensors_bytes();
    match load(&other) {
        Err(QuantizeError::Load(LoadError::ArchitectureMismatch { .. })) => {}
        other => panic!("{other:?}"),
    }
    // ... and the small one's into a DynamicModel of the CIFAR architecture.
    let dynamic = DynamicModel::init(CifarBC::ARCHITECTURE, 0).unwrap();
    assert!(matches!(
        Quantized::from_safetensors_bytes(dynamic, &bytes),
        Err(QuantizeError::Load(LoadError::ArchitectureMismatch { .. }))
    ));
    // An fp32 file is not a low-precision one.
    let fp32 = std::fs::read(fixture("torchvision_small.safetensors")).unwrap();
    assert!(matches!(
        load(&fp32),
        Err(QuantizeError::NotLowPrecision { found: None })
    ));
    // Not a file at all, and a truncated one.
    assert!(matches!(
        load(b"not safetensors"),
        Err(QuantizeError::Load(_))
    ));
    assert!(matches!(
        load(&bytes[..bytes.len() - 10]),
        Err(QuantizeError::Load(_))
    ));
    assert!(matches!(
        Quantized::load_safetensors(Small::init(0), "/nonexistent/x.safetensors"),
        Err(QuantizeError::Load(LoadError::Io { .. }))
    ));

    let key = "int8/features.denseblock2.denselayer1.conv1";
    // A missing scale.
    match load(&edit(&bytes, &format!("{key}.qscale"), None)) {
        Err(QuantizeError::MissingTensor { key: k, .. }) => assert_eq!(k, format!("{key}.qscale")),
        other => panic!("{other:?}"),
    }
    // A missing weight: the convolution's fp32 key is then missing too.
    assert!(matches!(
        load(&edit(&bytes, &format!("{key}.qweight"), None)),
        Err(QuantizeError::UnexpectedTensor { .. }
            | QuantizeError::Load(LoadError::MissingTensor { .. }))
    ));
    // Weights of the wrong dtype and shape.
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let w = file.tensor(&format!("{key}.qweight")).unwrap();
    let as_u8 = edit(
        &bytes,
        &format!("{key}.qweight"),
        Some((
            safetensors::Dtype::U8,
            w.shape().to_vec(),
            w.data().to_vec(),
        )),
    );
    assert!(matches!(
        load(&as_u8),
        Err(QuantizeError::Dtype { expected: "I8", .. })
    ));
    let mut shape = w.shape().to_vec();
    shape.swap(0, 1);
    let transposed = edit(
        &bytes,
        &format!("{key}.qweight"),
        Some((safetensors::Dtype::I8, shape, w.data().to_vec())),
    );
    assert!(matches!(
        load(&transposed),
        Err(QuantizeError::Shape { .. } | QuantizeError::Load(LoadError::Shape { .. }))
    ));
    // Bad scales.
    let negative = edit(
        &bytes,
        &format!("{key}.input_scale"),
        Some((
            safetensors::Dtype::F32,
            vec![],
            (-1.0f32).to_le_bytes().to_vec(),
        )),
    );
    assert!(matches!(load(&negative), Err(QuantizeError::Scale { value, .. }) if value == -1.0));
    let s = file.tensor(&format!("{key}.qscale")).unwrap();
    let mut nan = s.data().to_vec();
    nan[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan = edit(
        &bytes,
        &format!("{key}.qscale"),
        Some((safetensors::Dtype::F32, s.shape().to_vec(), nan)),
    );
    assert!(matches!(
        load(&nan),
        Err(QuantizeError::Scale { index: 1, .. })
    ));
    // A stray int8 tensor.
    let stray = edit(
        &bytes,
        "int8/features.conv0.qscale",
        Some((safetensors::Dtype::F32, vec![16], vec![0; 64])),
    );
    assert!(matches!(
        load(&stray),
        Err(QuantizeError::UnexpectedTensor { .. } | QuantizeError::MissingTensor { .. })
    ));
    // An unknown precision.
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut m = meta.metadata().clone().unwrap();
    m.insert("densenet.precision".into(), "int4".into());
    let views: Vec<_> = file.iter().collect();
    let int4 = safetensors::serialize(views, Some(m)).unwrap();
    assert!(
        matches!(load(&int4), Err(QuantizeError::NotLowPrecision { found: Some(f) }) if f == "int4")
    );
}

#[test]
fn this_cpu_runs_the_kernels() {
    // The repository's CI machine (Sapphire Rapids) has both; elsewhere this says why not.
    let model = small();
    let bf16 = Quantized::bf16(&model).unwrap();
    if Precision::Bf16.available() {
        assert!(bf16.fallback_notice().is_none());
        bf16.clone().require_kernels().unwrap();
    } else {
        assert!(bf16.fallback_notice().is_some());
    }
}

/// `q` on `x` through `ws`, through a fresh workspace and through `forward`: equal.
fn same_through_workspaces<M: Network>(q: &Quantized<M>, x: &Array4<f32>, ws: &mut LowpWorkspace) {
    let shape: Vec<usize> = std::iter::once(x.dim().0)
        .chain(q.network().plan().output.iter().copied())
        .collect();
    let mut reused = ArrayD::zeros(shape.clone());
    q.forward_into(x.view(), ws, reused.view_mut()).unwrap();
    let mut fresh = ArrayD::zeros(shape);
    q.forward_into(x.view(), &mut LowpWorkspace::new(), fresh.view_mut())
        .unwrap();
    assert_eq!(reused, fresh, "{} batch {}", q.precision(), x.dim().0);
    assert_eq!(reused, q.forward(x.view()).unwrap());
}

#[test]
fn a_reused_workspace_gives_the_same_outputs() {
    // One workspace across models, precisions and batch sizes (buffers handed from one
    // shape to another must come back zeroed where it matters): equal to a fresh one
    // and to `forward` (a per-thread workspace), bit for bit.
    let small = small();
    let int8 = Quantized::int8(
        &small,
        &calibration(Small::INPUT),
        CalibrationMethod::MinMax,
    )
    .unwrap();
    let bf16 = Quantized::bf16(&CifarPlain::init(7)).unwrap();
    let mut ws = LowpWorkspace::new();
    for n in [1, 3, 2] {
        same_through_workspaces(&int8, &gaussian(n, Small::INPUT, 40 + n as u64), &mut ws);
        same_through_workspaces(
            &bf16,
            &gaussian(n, CifarPlain::INPUT, 50 + n as u64),
            &mut ws,
        );
    }
    assert!(ws.capacity_bytes() > 0);
}

#[test]
fn the_thread_count_and_the_batch_change_no_bit() {
    // A batch that splits over the threads runs its dense blocks one task per thread
    // (each image on single-threaded kernels); one thread, or one image, splits each
    // convolution instead. The values are the same bit for bit, in both precisions.
    let model = small();
    let x = gaussian(4, Small::INPUT, 60);
    let int8 = Quantized::int8(
        &model,
        &calibration(Small::INPUT),
        CalibrationMethod::MinMax,
    )
    .unwrap();
    let bf16 = Quantized::bf16(&model).unwrap();
    let on = |threads: usize, q: &Quantized<Small>, x: ArrayView4<'_, f32>| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| q.forward(x).unwrap())
    };
    for q in [&int8, &bf16] {
        let batch = on(2, q, x.view());
        assert_eq!(
            batch,
            on(1, q, x.view()),
            "{}: two threads against one",
            q.precision()
        );
        assert_eq!(
            batch,
            on(3, q, x.view()),
            "{}: three threads (4 images)",
            q.precision()
        );
        for i in 0..4 {
            let one = on(2, q, x.slice(s![i..i + 1, .., .., ..]));
            assert_eq!(
                batch.index_axis(Axis(0), i),
                one.index_axis(Axis(0), 0),
                "{}: image {i} alone",
                q.precision()
            );
        }
    }
}
