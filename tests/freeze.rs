//! Frozen layers (Keras's `base.trainable = False`): frozen weights and BatchNorm
//! statistics never change, frozen BatchNorms normalise in inference mode, the
//! gradients that remain are the right ones, and unfreezing continues with the same
//! optimiser.

use std::collections::BTreeMap;

use densenet::densenet;
use densenet::ndarray::{Array2, Array4, Axis, Ix2};
use densenet::runtime::train::{
    fit, loss_and_gradients_frozen, softmax_cross_entropy, Dataset, FitConfig, Freeze, LayerGrad,
    Optimizer, Sgd, SgdConfig, StepConfig,
};
use densenet::runtime::weights::PartialLoad;
use densenet::runtime::{LayerName, Model, Network, Part, Rng, Site, TrainError};
use safetensors::SafeTensors;

densenet! {
    /// A small ImageNet-stem model with bottlenecks and dropout.
    Small<growth: 4, blocks: [2, 2, 2], init_features: 8, theta: 0.5, input: [3, 32, 32], classes: 4, dropout: 0.2>;
    /// A CIFAR stem (a conv alone): its output is the same whether it trains or not.
    SmallCifar<growth: 4, blocks: [2, 2, 2], init_features: 8, theta: 0.5, stem: cifar, input: [3, 32, 32], classes: 4, dropout: 0.2>;
    /// Its backbone with a pooled head: the features its classifier sees.
    SmallFeatures<growth: 4, blocks: [2, 2, 2], init_features: 8, theta: 0.5, input: [3, 32, 32], head: avg>
}

/// Every tensor (running statistics included) by torchvision key.
fn tensors(model: &dyn Model) -> BTreeMap<String, Vec<u8>> {
    let bytes = model.to_safetensors_bytes();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.iter()
        .map(|(k, v)| (k.to_string(), v.data().to_vec()))
        .collect()
}

/// A model whose BatchNorm running statistics are not the initial 0 / 1 (so that
/// inference mode differs from a fresh model's), from a few training steps.
fn trained(seed: u64) -> Small {
    let mut model = Small::init(seed);
    let data = data(16, seed);
    let config = FitConfig {
        epochs: 1,
        batch_size: 8,
        optimizer: Optimizer::Sgd(SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        }),
        ..FitConfig::default()
    };
    fit(&mut model, &data, &config).unwrap();
    model
}

fn data(n: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let images = Array4::from_shape_fn((n, 3, 32, 32), |_| rng.normal());
    let labels = (0..n).map(|i| i % 4).collect();
    Dataset::new(images, labels, 4).unwrap()
}

#[test]
fn head_only_training_leaves_the_backbone_bit_identical() {
    let mut model = trained(1);
    let before = tensors(&model);
    let config = FitConfig {
        epochs: 2,
        batch_size: 8,
        freeze: Freeze::backbone(),
        ..FitConfig::default()
    };
    fit(&mut model, &data(24, 2), &config).unwrap();
    let after = tensors(&model);
    let mut changed = Vec::new();
    for (key, bytes) in &before {
        if after[key] != *bytes {
            changed.push(key.as_str());
        }
    }
    // Weights, BN parameters, running statistics and counters of the backbone: all
    // unchanged; the classifier trained.
    assert_eq!(changed, ["classifier.bias", "classifier.weight"]);
}

#[test]
fn head_only_gradients_are_those_of_the_inference_features() {
    let mut model = trained(3);
    let x = data(6, 4);
    let labels = x.labels().to_vec();
    let (loss, grads) = loss_and_gradients_frozen(
        &mut model,
        x.images(),
        &labels,
        StepConfig::default(),
        &Freeze::backbone(),
        &mut Rng::new(0),
    )
    .unwrap();
    // Only the classifier has a gradient.
    let names: Vec<LayerName> = grads.iter().map(|(name, _)| name).collect();
    assert_eq!(names, [LayerName::new(Site::Head, "classifier")]);

    // The same backbone as a pooled-features model, by the inference path.
    let mut features = SmallFeatures::init(0);
    features
        .load_partial(&model.to_safetensors_bytes(), &PartialLoad::backbone())
        .unwrap();
    let f = features
        .forward(x.images())
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap();
    let logits = model
        .forward(x.images())
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap();
    let (expected_loss, dlogits) = softmax_cross_entropy(logits.view(), &labels);
    assert!(
        (loss - expected_loss).abs() <= 1e-5 * expected_loss.abs(),
        "{loss} vs {expected_loss}"
    );
    // dW = dlogitsᵀ · features, db = Σ dlogits.
    let dw: Array2<f32> = dlogits.t().dot(&f);
    let db = dlogits.sum_axis(Axis(0));
    let Some(LayerGrad::Linear { weight, bias }) =
        grads.get(LayerName::new(Site::Head, "classifier"))
    else {
        panic!("a linear gradient");
    };
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * scale)
    };
    assert!(close(weight.as_slice().unwrap(), dw.as_slice().unwrap()));
    assert!(close(bias.as_slice().unwrap(), db.as_slice().unwrap()));
}

/// Gradients of every layer by name.
fn grads_of<M: Model>(
    model: &mut M,
    freeze: &Freeze,
    x: &Dataset,
) -> (f32, BTreeMap<String, Vec<f32>>) {
    let (loss, grads) = loss_and_gradients_frozen(
        model,
        x.images(),
        x.labels(),
        StepConfig::default(),
        freeze,
        &mut Rng::new(5),
    )
    .unwrap();
    let flat = grads
        .iter()
        .map(|(name, g)| {
            let values: Vec<f32> = match g {
                LayerGrad::Conv { weight } => weight.iter().copied().collect(),
                LayerGrad::BatchNorm { gamma, beta } => gamma.iter().chain(beta).copied().collect(),
                LayerGrad::Linear { weight, bias } => weight.iter().chain(bias).copied().collect(),
            };
            (format!("{name:?}"), values)
        })
        .collect();
    (loss, flat)
}

#[test]
fn a_frozen_stage_inside_the_network_runs_in_inference_mode_and_passes_gradients_through() {
    let mut model = SmallCifar::init(6);
    let config = FitConfig {
        epochs: 1,
        batch_size: 8,
        ..FitConfig::default()
    };
    fit(&mut model, &data(16, 6), &config).unwrap(); // running statistics not 0 / 1
    let x = data(6, 7);
    // Block 1 frozen with the stem trainable: block 1 is recorded with frozen BNs and
    // backpropagated through. With the stem frozen too it runs as plain inference.
    // With transition 1 frozen too, the prefix ends in a transition, whose output the
    // inference pass leaves in a wider buffer.
    let mut inner_grads = BTreeMap::new();
    for (i, last) in [
        vec![Part::Block(1)],
        vec![Part::Block(1), Part::Transition(1)],
    ]
    .into_iter()
    .enumerate()
    {
        let inner = Freeze::parts(last.clone());
        let prefix = Freeze::parts([vec![Part::Stem], last].concat());
        let (loss_inner, inner) = grads_of(&mut model.clone(), &inner, &x);
        let (loss_prefix, prefix_grads) = grads_of(&mut model.clone(), &prefix, &x);
        assert!((loss_inner - loss_prefix).abs() <= 1e-5 * loss_inner.abs());
        assert!(inner.keys().all(|k| !k.contains("block: 1")));
        assert!(inner.keys().any(|k| k.contains("Stem")));
        assert_eq!(prefix_grads.len() + 1, inner.len()); // all but the stem conv
        for (key, values) in &prefix_grads {
            let other = &inner[key];
            let scale = values.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let diff = values
                .iter()
                .zip(other)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4 * scale, "{key}: {diff} vs scale {scale}");
        }
        if i == 0 {
            inner_grads = inner;
        }
    }

    // The stem's gradient through the frozen block matches central differences of the
    // frozen-mode loss (the frozen BNs' running statistics are constants).
    let name = LayerName::new(Site::Stem, "conv0");
    let analytic = &inner_grads[&format!("{name:?}")];
    // The three largest entries; step 1e-3 as in tests/train_grads.rs (ReLU kinks
    // against float32 round-off).
    let mut order: Vec<usize> = (0..analytic.len()).collect();
    order.sort_by(|&a, &b| analytic[b].abs().total_cmp(&analytic[a].abs()));
    for &i in &order[..3] {
        let h = 1e-3f32;
        let loss_at = |delta: f32| {
            let mut m = model.clone();
            m.visit_layers_mut(&mut |n, layer| {
                if let (true, densenet::runtime::LayerMut::Conv(conv)) = (n == name, layer) {
                    let mut w = conv.weight_mut();
                    let mut v = w.view_mut();
                    let slot = v.iter_mut().nth(i).unwrap();
                    *slot += delta;
                }
            });
            f64::from(grads_of(&mut m, &Freeze::parts([Part::Block(1)]), &x).0)
        };
        let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h));
        let a = f64::from(analytic[i]);
        assert!(
            (a - numeric).abs() <= 2e-2 * numeric.abs().max(1e-2),
            "conv0[{i}]: analytic {a} vs numeric {numeric}"
        );
    }
}

#[test]
fn unfreezing_continues_with_the_same_optimiser() {
    let mut model = trained(8);
    let x = data(8, 9);
    let config = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
    };
    let mut sgd = Sgd::new(config);
    let step = |model: &mut Small, freeze: &Freeze| {
        loss_and_gradients_frozen(
            model,
            x.images(),
            x.labels(),
            StepConfig {
                dropout: Some(0.0),
                ..StepConfig::default()
            },
            freeze,
            &mut Rng::new(0),
        )
        .unwrap()
        .1
    };
    let grads = step(&mut model, &Freeze::backbone());
    sgd.step(&mut model, &grads);
    // Unfrozen: every parameter gets a gradient; the backbone's first update is
    // torch's first momentum step, p ← p − lr·(1 + m)·(g + wd·p) with Nesterov.
    let conv0 = LayerName::new(Site::Stem, "conv0");
    let before = tensors(&model)["features.conv0.weight"].clone();
    let grads = step(&mut model, &Freeze::none());
    let Some(LayerGrad::Conv { weight }) = grads.get(conv0) else {
        panic!("a conv gradient")
    };
    // The file is OIHW; the gradient HWIO.
    let g_oihw = weight
        .view()
        .permuted_axes([3, 2, 0, 1])
        .iter()
        .copied()
        .collect::<Vec<f32>>();
    sgd.step(&mut model, &grads);
    let after = tensors(&model)["features.conv0.weight"].clone();
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    for ((p0, p1), g) in f32s(&before).iter().zip(f32s(&after)).zip(g_oihw) {
        let d = g + 1e-4 * p0;
        let expected = p0 - 0.1 * (1.0 + 0.9) * d;
        assert!(
            (p1 - expected).abs() <= 1e-6 * expected.abs().max(1.0),
            "{p1} vs {expected}"
        );
    }
}

#[test]
fn freezing_what_the_model_lacks_or_everything_is_a_typed_error() {
    let mut model = Small::init(0);
    let data = data(8, 0);
    let mut fails = |freeze: Freeze| {
        let config = FitConfig {
            epochs: 1,
            batch_size: 4,
            freeze,
            ..FitConfig::default()
        };
        fit(&mut model, &data, &config).unwrap_err()
    };
    let err = fails(Freeze::parts([Part::Block(4)]));
    assert!(matches!(err, TrainError::Freeze { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "cannot freeze Small that way: it has no part `block4`"
    );
    let err = fails(Freeze::parts([Part::Backbone, Part::Classifier]));
    assert_eq!(
        err.to_string(),
        "cannot freeze Small that way: freezing backbone,classifier leaves nothing to train"
    );
    assert_eq!(
        "stem, block2".parse::<Freeze>().unwrap(),
        Freeze::parts([Part::Stem, Part::Block(2)])
    );
    assert!("stem,block".parse::<Freeze>().is_err());
}
