//! Optimisers: three steps of `Sgd` (the paper's settings) and of `Adam` (torch's
//! defaults) on the small torchvision fixture model match `torch.optim`.
//!
//! The reference is `tests/fixtures/optim_{sgd,adam}.safetensors`, made by
//! `tools/make_optim_fixtures.py`: every parameter of `torchvision_small` after three
//! steps of `torch.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)`
//! and of `torch.optim.Adam()` (float64, rounded to float32 once), with the same
//! gradient at every step: the training-mode gradient of the fixture batch (labels
//! [3, 7]) of `torchvision_small.grads.safetensors`. Here that gradient comes from our
//! own `loss_and_gradients` (checked against the same file by `tests/train_grads.rs`),
//! so the comparison covers the optimiser's update, its state across steps and its
//! walk over the model (HWIO conv weights, BN gamma/beta, linear weight/bias).
//!
//! The optimiser arithmetic alone, with gradients that change from step to step, is
//! checked against torch in the unit tests of `densenet-runtime/src/train/optim.rs`.

use std::collections::BTreeMap;

use densenet::densenet;
use densenet::ndarray::Array4;
use densenet::runtime::train::{
    loss_and_gradients, step_lr, Adam, AdamConfig, Gradients, LayerGrad, Sgd, SgdConfig,
};
use densenet::runtime::{LayerRef, Network};
use safetensors::SafeTensors;

mod common;
use common::{fixture, read_f32, torchvision_layer};

densenet! {
    /// torchvision `DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16, bn_size=4, num_classes=10)`.
    TorchvisionSmall<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>
}

const STEPS: usize = 3;

/// Every parameter of `model` under its torchvision key, in torch's layout (OIHW).
fn parameters(model: &TorchvisionSmall) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    model.visit_layers(&mut |name, layer| {
        let layer_key = torchvision_layer(name);
        let mut put = |suffix: &str, values: Vec<f32>| {
            out.insert(format!("{layer_key}.{suffix}"), values);
        };
        match layer {
            LayerRef::Conv(conv) => put(
                "weight",
                conv.weight()
                    .view()
                    .permuted_axes([3, 2, 0, 1])
                    .iter()
                    .copied()
                    .collect(),
            ),
            LayerRef::BatchNorm(bn) => {
                put("weight", bn.gamma().to_vec());
                put("bias", bn.beta().to_vec());
            }
            LayerRef::Linear(linear) => {
                put("weight", linear.weight().iter().copied().collect());
                put("bias", linear.bias().to_vec());
            }
        }
    });
    out
}

/// Every gradient under its torchvision key, in torch's layout (OIHW).
fn gradients(grads: &Gradients) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for (name, grad) in grads.iter() {
        let layer_key = torchvision_layer(name);
        let mut put = |suffix: &str, values: Vec<f32>| {
            out.insert(format!("{layer_key}.{suffix}"), values);
        };
        match grad {
            LayerGrad::Conv { weight } => put(
                "weight",
                weight
                    .view()
                    .permuted_axes([3, 2, 0, 1])
                    .iter()
                    .copied()
                    .collect(),
            ),
            LayerGrad::BatchNorm { gamma, beta } => {
                put("weight", gamma.to_vec());
                put("bias", beta.to_vec());
            }
            LayerGrad::Linear { weight, bias } => {
                put("weight", weight.iter().copied().collect());
                put("bias", bias.to_vec());
            }
        }
    }
    out
}

/// The fixture model and our gradient of its fixture batch.
fn model_and_gradients() -> (TorchvisionSmall, Gradients) {
    let mut model =
        TorchvisionSmall::load_safetensors(fixture("torchvision_small.safetensors")).unwrap();
    let io = std::fs::read(fixture("torchvision_small.io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io).unwrap();
    let (shape, input) = read_f32(&io, "input");
    let x = Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), input).unwrap();
    let (_, grads) = loss_and_gradients(&mut model, x.view(), &[3, 7]).unwrap();
    (model, grads)
}

/// The worst figures of one comparison.
#[derive(Default)]
struct Worst {
    /// max over tensors of `max |ours − torch| / max |torch|` (final parameters).
    param: (f32, String),
    /// max over tensors of `max |Δours − Δtorch| / max |Δtorch|` (Δ: total update).
    update: (f32, String),
    /// Elements outside the parameter tolerance, allowed there (Adam, near-zero
    /// gradients).
    exempt: usize,
}

/// Compares `after` (ours) with the reference file `file`. Every parameter must be
/// within `1e-4 · max |torch|` of torch's, except, with `exempt = Some((below, lr))`
/// (Adam), elements whose gradient, ours or torch's (`torchvision_small.grads`, from
/// which the reference was made), is below `below · max(1e-2, max |g|)`: with a fixed
/// gradient Adam's update is `±lr` per step whatever the gradient's size, so near zero
/// its sign is decided by gradient round-off (e.g. the stem BatchNorm's beta of a
/// channel whose block-input gradient sums to zero: torch's gradient -1.3e-15, ours
/// 1.2e-7 at float32's precision); those are held only to `2·STEPS·lr`, and counted
/// when beyond `1e-4 · max |torch|`. The gradients themselves are held to torch's by
/// `tests/train_grads.rs`.
fn compare(
    file: &str,
    before: &BTreeMap<String, Vec<f32>>,
    after: &BTreeMap<String, Vec<f32>>,
    grads: &BTreeMap<String, Vec<f32>>,
    exempt: Option<(f32, f32)>,
) -> Worst {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    let grad_bytes = std::fs::read(fixture("torchvision_small.grads.safetensors")).unwrap();
    let torch_grads = SafeTensors::deserialize(&grad_bytes).unwrap();
    assert_eq!(reference.len(), after.len(), "{file}: parameter count");
    let mut worst = Worst::default();
    for (key, ours) in after {
        let (_, theirs) = read_f32(&reference, key);
        let p0 = &before[key];
        let g = &grads[key];
        let g_torch = read_f32(&torch_grads, key).1;
        assert_eq!(ours.len(), theirs.len(), "{key}: length");
        let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let g_scale = g.iter().fold(1e-2f32, |m, v| m.max(v.abs()));
        let (mut diff, mut d_diff, mut d_scale) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..ours.len() {
            let e = (ours[i] - theirs[i]).abs();
            let tol = match exempt {
                Some((below, lr)) if g[i].abs().min(g_torch[i].abs()) < below * g_scale => {
                    if e > 1e-4 * scale {
                        worst.exempt += 1;
                    }
                    2.0 * STEPS as f32 * lr
                }
                _ => {
                    diff = diff.max(e);
                    d_diff = d_diff.max(((ours[i] - p0[i]) - (theirs[i] - p0[i])).abs());
                    1e-4 * scale
                }
            };
            d_scale = d_scale.max((theirs[i] - p0[i]).abs());
            assert!(
                e <= tol,
                "{file} {key}[{i}]: ours {} vs torch {} (|diff| {e:e} > {tol:e})",
                ours[i],
                theirs[i]
            );
        }
        if diff / scale >= worst.param.0 {
            worst.param = (diff / scale, key.clone());
        }
        if d_diff / d_scale >= worst.update.0 {
            worst.update = (d_diff / d_scale, key.clone());
        }
    }
    worst
}

fn report(what: &str, worst: &Worst, elements: usize) {
    eprintln!(
        "{what}: worst max|ours - torch| / max|torch| {:.2e} ({}); of the update {:.2e} ({}); \
         {} of {elements} elements exempt",
        worst.param.0, worst.param.1, worst.update.0, worst.update.1, worst.exempt
    );
}

#[test]
fn sgd_nesterov_three_steps_match_torch() {
    let (mut model, grads) = model_and_gradients();
    let before = parameters(&model);
    let mut sgd = Sgd::new(SgdConfig::default());
    for _ in 0..STEPS {
        sgd.step(&mut model, &grads);
    }
    let after = parameters(&model);
    assert_eq!(after.len(), 82);
    let worst = compare(
        "optim_sgd.safetensors",
        &before,
        &after,
        &gradients(&grads),
        None,
    );
    report("SGD", &worst, after.values().map(Vec::len).sum());
}

#[test]
fn adam_three_steps_match_torch() {
    let (mut model, grads) = model_and_gradients();
    let before = parameters(&model);
    let config = AdamConfig::default();
    let mut adam = Adam::new(config);
    for _ in 0..STEPS {
        adam.step(&mut model, &grads);
    }
    assert_eq!(adam.steps(), STEPS as u32);
    let after = parameters(&model);
    let worst = compare(
        "optim_adam.safetensors",
        &before,
        &after,
        &gradients(&grads),
        Some((1e-5, config.lr)),
    );
    let elements: usize = after.values().map(Vec::len).sum();
    report("Adam", &worst, elements);
    // 4 of 42058 at the time of writing.
    assert!(worst.exempt * 1000 < elements, "too many elements exempt");
}

#[test]
fn learning_rate_changes_keep_the_momentum() {
    // Two steps at lr, then the schedule's drop: the third step's update is a tenth of
    // what it would be at the old rate, with the same momentum buffer.
    let (mut a, grads) = model_and_gradients();
    let mut b =
        TorchvisionSmall::load_safetensors(fixture("torchvision_small.safetensors")).unwrap();
    let config = SgdConfig {
        weight_decay: 0.0,
        ..SgdConfig::default()
    };
    let (mut sa, mut sb) = (Sgd::new(config), Sgd::new(config));
    for _ in 0..2 {
        sa.step(&mut a, &grads);
        sb.step(&mut b, &grads);
    }
    let mid = parameters(&a);
    sa.step(&mut a, &grads);
    sb.set_lr(step_lr(config.lr, 150, 300));
    assert_eq!(sb.lr(), config.lr / 10.0);
    sb.step(&mut b, &grads);
    let (pa, pb) = (parameters(&a), parameters(&b));
    for (key, m) in &mid {
        for i in 0..m.len() {
            let (da, db) = (pa[key][i] - m[i], pb[key][i] - m[i]);
            assert!(
                // Round-off: the parameters are rounded to float32 (ε·|p|) at each step.
                (db * 10.0 - da).abs() <= 1e-3 * da.abs() + 32.0 * f32::EPSILON * m[i].abs(),
                "{key}[{i}]: update {db} at lr/10 vs {da} at lr"
            );
        }
    }
}
