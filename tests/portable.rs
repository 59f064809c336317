//! The portable path (im2col + the `gemm` crate), which CPUs without AVX-512 or AVX2 run: forced
//! here with `force_portable` (this file is its own test process, so the switch does
//! not reach other tests), and checked like the direct kernels are: against torchvision's
//! logits on the weight fixture, and against the reference path; and a training step
//! on it against the same step on the kernels (which `train_grads.rs` checks against
//! torch autograd); and a step with Winograd input gradients against the direct kernel's
//! (`force_direct`, process-wide as well).

#[allow(dead_code)] // shared helpers; this file uses three of them
mod common;

use common::{assert_close_scaled, fixture, read_f32};
use densenet::ndarray::{Array2, Array4};
use densenet::runtime::kernels::direct_conv::{available, force_direct, force_portable};
use densenet::runtime::reference;
use densenet::runtime::train::{loss_and_gradients, Gradients, LayerGrad};
use densenet::runtime::Workspace;
use densenet::{densenet, densenet_yaml};
use safetensors::SafeTensors;

densenet! {
    TorchvisionSmall<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// Growth 32 on 28x28 and 14x14 maps: the 3x3s' input gradients (32 → 128
    /// channels) fit the Winograd path (`winograd_conv`).
    Wide<growth: 32, blocks: [2, 2], init_features: 32, stem: cifar, theta: 0.5, input: [3, 28, 28], classes: 5>;
    /// DenseNet-BC's k = 12 on 32x32 and 16x16 maps: the forward 3x3s (48 → 12) read
    /// BN2-ReLU inside the Winograd tiles (`winograd_applies`).
    NarrowBc<growth: 12, blocks: [2, 2], init_features: 24, stem: cifar, theta: 0.5, input: [3, 32, 32], classes: 5>
}
densenet_yaml!("specs/densenet40_k12.yaml");

/// The tests here switch the process-wide path: one at a time.
static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn portable_path_matches_torchvision_and_the_reference() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    force_portable(true);
    assert!(!available());

    // torchvision's logits for the fixture weights and input (tools/make_fixtures.py).
    let model =
        TorchvisionSmall::load_safetensors(fixture("torchvision_small.safetensors")).unwrap();
    let bytes = std::fs::read(fixture("torchvision_small.io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let (xs, x) = read_f32(&io, "input");
    let (ys, y) = read_f32(&io, "output");
    let x = Array4::from_shape_vec((xs[0], xs[1], xs[2], xs[3]), x).unwrap();
    let expected = Array2::from_shape_vec((ys[0], ys[1]), y).unwrap();
    let mut ws = Workspace::new();
    let mut out = Array2::zeros(expected.dim());
    model
        .forward_into(x.view(), &mut ws, out.view_mut())
        .unwrap();
    assert_close_scaled(&out, &expected, 1e-4);
    assert_eq!(ws.capacity(), TorchvisionSmall::arena_floats(xs[0]));

    // A net without bottlenecks (3x3 convs straight on the block buffer's BN-ReLU).
    let plain = DenseNet40K12::init(4);
    let x = Array4::from_shape_fn((2, 3, 32, 32), |(b, c, y, x)| {
        ((b * 17 + c * 7 + y * 3 + x * 5) % 29) as f32 / 29.0 - 0.5
    });
    let mut out = Array2::zeros((2, 10));
    plain
        .forward_into(x.view(), &mut ws, out.view_mut())
        .unwrap();
    let reference = reference::forward(&plain, x.view()).unwrap();
    assert_close_scaled(&out, &reference.into_dimensionality().unwrap(), 1e-5);
    force_portable(false);
}

/// A training step (bottlenecks, ImageNet stem) on the portable path: im2col + GEMM
/// backward convolutions, the 3x3s' input read from the interior of the padded grid
/// the step's BN2-ReLU writes. Its loss and every gradient match the kernels' step.
#[test]
fn a_training_step_on_the_portable_path_matches_the_kernels() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let model =
        TorchvisionSmall::load_safetensors(fixture("torchvision_small.safetensors")).unwrap();
    let bytes = std::fs::read(fixture("torchvision_small.io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let (xs, x) = read_f32(&io, "input");
    let x = Array4::from_shape_vec((xs[0], xs[1], xs[2], xs[3]), x).unwrap();
    let labels: Vec<usize> = (0..xs[0]).map(|i| (3 + 4 * i) % 10).collect();
    assert_same_step(
        step(&model, &x, &labels, false),
        step(&model, &x, &labels, true),
    );
}

/// A training step of a copy of `model` on the kernels or, with `portable`, on the
/// portable path (the switch restored after).
fn step<M: densenet::runtime::Network + Clone>(
    model: &M,
    x: &Array4<f32>,
    labels: &[usize],
    portable: bool,
) -> (f32, Gradients) {
    force_portable(portable);
    let mut model = model.clone();
    let result = loss_and_gradients(&mut model, x.view(), labels).unwrap();
    force_portable(false);
    result
}

/// Two steps' losses within 1e-5 and every gradient within 1e-4 of its layer's largest;
/// returns how many gradient values differ at all.
fn assert_same_step(a: (f32, Gradients), b: (f32, Gradients)) -> usize {
    let ((loss, a), (loss_b, b)) = (a, b);
    assert!(
        (loss - loss_b).abs() <= 1e-5 * loss.abs(),
        "{loss} vs {loss_b}"
    );
    assert_eq!(a.len(), b.len());
    let values = |g: &LayerGrad| -> Vec<f32> {
        match g {
            LayerGrad::Conv { weight } => weight.iter().copied().collect(),
            LayerGrad::BatchNorm { gamma, beta } => gamma.iter().chain(beta).copied().collect(),
            LayerGrad::Linear { weight, bias } => weight.iter().chain(bias).copied().collect(),
        }
    };
    let mut differ = 0;
    for ((name, a), (other, b)) in a.iter().zip(b.iter()) {
        assert_eq!(name, other);
        let (a, b) = (values(a), values(b));
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{name:?}[{i}]: {x} vs {y}");
            differ += usize::from(x.to_bits() != y.to_bits());
        }
    }
    differ
}

/// A training step whose 3x3 input gradients run on the Winograd path (growth 32: dy's
/// 32 channels into 128, `winograd_conv`) against the same step with Winograd off
/// (`force_direct`: the direct kernels, as `train_grads.rs` checks against torch): loss
/// and every gradient within 1e-4 of the largest. A wrong layout or panel offset in
/// the Winograd input gradient would be far off.
#[test]
fn a_training_step_with_winograd_input_gradients_matches_the_direct_kernel() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    // With AVX-512 the step's forward 3x3s (128 → 32) and its four input gradients
    // (32 → 128) run Winograd.
    winograd_against_direct(Wide::init(5), 28);
}

/// As above for DenseNet-BC's k = 12, where only the forward 3x3s (48 → 12, reading
/// BN2-ReLU of the bottleneck output as their tiles load) run Winograd: their input
/// gradients (12 → 48) and weight gradients (12 outputs) stay on the direct kernels.
#[test]
fn a_training_step_with_winograd_forward_bn_relu_3x3s_matches_the_direct_kernel() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    winograd_against_direct(NarrowBc::init(6), 32);
}

/// A step of `model` on three random `side`x`side` images with Winograd on, against
/// the same step with it off ([`assert_same_step`]). With AVX-512, where Winograd runs,
/// also that they are not the same arithmetic twice (sums in another order): some
/// gradient value differs.
fn winograd_against_direct<M: densenet::runtime::Network + Clone>(model: M, side: usize) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let x = Array4::from_shape_simple_fn((3, 3, side, side), || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    });
    let labels = [0, 3, 4];
    let step = |direct: bool| {
        force_direct(direct);
        let mut model = model.clone();
        let result = loss_and_gradients(&mut model, x.view(), &labels).unwrap();
        force_direct(false);
        result
    };
    let differ = assert_same_step(step(false), step(true));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        assert!(differ > 0, "the Winograd path did not run");
    }
    let _ = differ;
}

/// A DenseNet-BC k=12 training step, whose 48-wide bottleneck 1x1s run forward as one
/// product per chunk of BN1-ReLU rows (`narrow_1x1`), against the same step on the
/// portable path (checked against torchvision above): loss and every gradient within
/// 1e-4 of the largest.
#[test]
fn a_dense_net_bc_training_step_matches_the_portable_path() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let model = NarrowBc::init(6);
    let x = Array4::from_shape_fn((4, 3, 32, 32), |(b, c, y, x)| {
        ((b * 13 + c * 7 + y * 3 + x * 5) % 31) as f32 / 31.0 - 0.5
    });
    let labels = [0, 3, 1, 4];
    assert_same_step(
        step(&model, &x, &labels, false),
        step(&model, &x, &labels, true),
    );
}
