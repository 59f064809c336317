//! Partial loading (Keras's `include_top=False`): framework checkpoints load into models
//! with a new head, another head kind or another input size, and the report says what
//! was loaded, kept and unused. Checked against the frameworks' own logits.

use densenet::densenet;
use densenet::ndarray::{Array2, Array4, Ix2};
use densenet::runtime::weights::{Kept, PartialLoad};
use densenet::runtime::{LoadError, Model, Network, Part};
use safetensors::SafeTensors;

densenet! {
    /// torchvision `DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16)`, 10 classes.
    Torchvision10<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// The same backbone with a new 5-class head.
    Torchvision5<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 5>;
    /// The same backbone, pooled features out (`include_top=False, pooling='avg'`).
    TorchvisionAvg<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], head: avg>;
    /// The same backbone on 96x96 images, 5 classes.
    Torchvision96<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 96, 96], classes: 5>;
    /// Keras `DenseNet(blocks=[1, 2, 2, 1])` with a 3-class head.
    Keras3<growth: 32, blocks: [1, 2, 2, 1], theta: 0.5, input: [3, 64, 64], classes: 3, eps: 1.001e-5>;
    /// Keras's backbone, pooled features out.
    KerasAvg<growth: 32, blocks: [1, 2, 2, 1], theta: 0.5, input: [3, 64, 64], head: avg, eps: 1.001e-5>
}

mod common;
use common::{assert_close_scaled, fixture, read_f32};

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// A float32 tensor of a safetensors file, with its shape.
fn tensor(bytes: &[u8], key: &str) -> (Vec<usize>, Vec<f32>) {
    read_f32(&SafeTensors::deserialize(bytes).unwrap(), key)
}

fn io(name: &str) -> (Array4<f32>, Array2<f32>) {
    let bytes = bytes(&format!("{name}.io.safetensors"));
    let (xs, x) = tensor(&bytes, "input");
    let (ys, y) = tensor(&bytes, "output");
    (
        Array4::from_shape_vec((xs[0], xs[1], xs[2], xs[3]), x).unwrap(),
        Array2::from_shape_vec((ys[0], ys[1]), y).unwrap(),
    )
}

/// The parity bar of `tests/weights.rs`: `max |ours − theirs| <= 1e-4 · max(1, max |theirs|)`.
fn assert_parity(ours: &Array2<f32>, theirs: &Array2<f32>) {
    assert_close_scaled(ours, theirs, 1e-4);
}

/// The logits a pooled-features model's output gives under the file's classifier:
/// `features · Wᵀ + b`, with `W` as `(out, in)`.
fn classify(features: &Array2<f32>, weight: (Vec<usize>, Vec<f32>), bias: Vec<f32>) -> Array2<f32> {
    let w = Array2::from_shape_vec((weight.0[0], weight.0[1]), weight.1).unwrap();
    let mut logits = features.dot(&w.t());
    for mut row in logits.rows_mut() {
        row += &densenet::ndarray::ArrayView1::from(&bias);
    }
    logits
}

/// Every tensor of a model by its torchvision key (conv weights OIHW), from its own
/// safetensors bytes.
fn weights_of(model: &dyn Model) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = model.to_safetensors_bytes();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.names()
        .into_iter()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .map(|k| (k.to_string(), tensor(&bytes, k).1))
        .collect()
}

#[test]
fn a_torchvision_backbone_under_a_pooled_head_reproduces_torchvisions_logits() {
    let file = bytes("torchvision_small.safetensors");
    let mut model = TorchvisionAvg::init(7);
    let report = model.load_partial(&file, &PartialLoad::backbone()).unwrap();
    // Every layer loaded (the model has no classifier); the file's classifier unused.
    assert!(report.kept.is_empty(), "{report}");
    assert_eq!(report.unused, ["classifier.bias", "classifier.weight"]);
    let mut layers = 0;
    model.visit_layers(&mut |_, _| layers += 1);
    assert_eq!(report.loaded.len(), layers);

    // torchvision's logits are the file's classifier applied to our pooled features.
    let (x, expected) = io("torchvision_small");
    let features = model
        .forward(x.view())
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap();
    let (_, bias) = tensor(&file, "classifier.bias");
    let logits = classify(&features, tensor(&file, "classifier.weight"), bias);
    assert_parity(&logits, &expected);
}

#[test]
fn a_new_five_class_head_keeps_its_initialisation_and_the_backbone_is_the_files() {
    let file = bytes("torchvision_small.safetensors");
    // A strict load refuses: the classifier has 10 rows in the file.
    assert!(matches!(
        Torchvision5::from_safetensors_bytes(&file),
        Err(LoadError::Shape { .. })
    ));
    let mut model = Torchvision5::init(3);
    let report = model.load_partial(&file, &PartialLoad::backbone()).unwrap();
    assert_eq!(
        report.kept,
        [("classifier".to_string(), Kept::Skipped(Part::Classifier))]
    );
    assert_eq!(report.unused, ["classifier.bias", "classifier.weight"]);
    assert!(report
        .to_string()
        .contains("classifier (skipped: classifier)"));

    let ours = weights_of(&model);
    let reference = weights_of(&Torchvision10::from_safetensors_bytes(&file).unwrap());
    let fresh = weights_of(&Torchvision5::init(3));
    for (key, values) in &ours {
        let expected = if key.starts_with("classifier.") {
            &fresh[key]
        } else {
            &reference[key]
        };
        assert_eq!(values, expected, "{key}");
    }
    let (x, _) = io("torchvision_small");
    assert_eq!(model.forward(x.view()).unwrap().shape(), &[2, 5]);
}

#[test]
fn a_backbone_loads_into_a_model_of_another_input_size() {
    let file = bytes("torchvision_small.safetensors");
    let mut model = Torchvision96::init(0);
    let report = model.load_partial(&file, &PartialLoad::backbone()).unwrap();
    assert_eq!(report.kept.len(), 1);
    let x = Array4::<f32>::zeros((1, 3, 96, 96));
    assert!(model
        .forward(x.view())
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn a_keras_backbone_loads_under_a_new_head_and_under_a_pooled_head() {
    let file = bytes("keras_small.safetensors");
    let mut three = Keras3::init(0);
    let report = three.load_partial(&file, &PartialLoad::backbone()).unwrap();
    assert_eq!(report.naming, densenet::runtime::Naming::Keras);
    assert_eq!(report.kept.len(), 1, "{report}");
    assert_eq!(report.unused.len(), 2, "{report}"); // predictions/kernel, predictions/bias

    let mut avg = KerasAvg::init(0);
    avg.load_partial(&file, &PartialLoad::backbone()).unwrap();
    let (x, expected) = io("keras_small");
    let features = avg
        .forward(x.view())
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap();
    // Keras's kernel is (in, out): transpose to (out, in).
    let (shape, kernel) = tensor(
        &file,
        report.unused.iter().find(|k| k.contains("kernel")).unwrap(),
    );
    let kernel_t = Array2::from_shape_vec((shape[0], shape[1]), kernel).unwrap();
    let w = kernel_t.t().as_standard_layout().into_owned();
    let (_, bias) = tensor(
        &file,
        report.unused.iter().find(|k| k.contains("bias")).unwrap(),
    );
    let logits = classify(
        &features,
        (vec![shape[1], shape[0]], w.into_raw_vec_and_offset().0),
        bias,
    );
    assert_parity(&logits, &expected);
}

#[test]
fn skipping_parts_and_mismatches_is_reported_and_errors_leave_the_model_as_it_was() {
    let file = bytes("torchvision_small.safetensors");
    // Skip block 4 and the head: they keep the seed's values.
    let mut model = Torchvision10::init(5);
    let how = PartialLoad {
        skip: vec![Part::Block(4), Part::Head],
        ..PartialLoad::default()
    };
    let report = model.load_partial(&file, &how).unwrap();
    let fresh = weights_of(&Torchvision10::init(5));
    let ours = weights_of(&model);
    for (layer, why) in &report.kept {
        assert!(
            matches!(why, Kept::Skipped(Part::Block(4) | Part::Head)),
            "{layer}"
        );
        let key = format!("{layer}.weight");
        assert_eq!(ours[&key], fresh[&key], "{key}");
    }
    // Block 4 has 2 layers of (norm1, conv1, norm2, conv2); the head norm5 and classifier.
    assert_eq!(report.kept.len(), 2 * 4 + 2);

    // skip_mismatched: a 5-class model takes everything but the classifier, reported
    // as a shape mismatch.
    let mut five = Torchvision5::init(0);
    let how = PartialLoad {
        skip_mismatched: true,
        ..PartialLoad::default()
    };
    let report = five.load_partial(&file, &how).unwrap();
    assert!(
        matches!(
            &report.kept[..],
            [(layer, Kept::Shape { expected, actual, .. })]
                if layer == "classifier" && expected == &[5, 42] && actual == &[10, 42]
        ),
        "{report}"
    );

    // Without it the same load fails, and the model is unchanged.
    let mut five = Torchvision5::init(9);
    let before = weights_of(&five);
    let err = five
        .load_partial(&file, &PartialLoad::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::Shape { .. }), "{err}");
    assert_eq!(weights_of(&five), before);

    // A part the model does not have.
    let err = five
        .load_partial(
            &file,
            &PartialLoad {
                skip: vec![Part::Block(5)],
                ..PartialLoad::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "Torchvision5 has no part `block5` to skip");
    // A truncated file.
    let err = five
        .load_partial(&file[..file.len() / 2], &PartialLoad::backbone())
        .unwrap_err();
    assert!(matches!(err, LoadError::Truncated { .. }), "{err}");
    assert_eq!(weights_of(&five), before);
}
