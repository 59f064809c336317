//! The portable path (im2col + the `gemm` crate), which CPUs without AVX-512 or AVX2 run: forced
//! here with `force_portable` (this file is its own test process, so the switch does
//! not reach other tests), and checked like the direct kernels are: against torchvision's
//! logits on the weight fixture, and against the reference path; and a training step
//! on it against the same step on the kernels (which `train_grads.rs` checks against
//! torch autograd).

#[allow(dead_code)] // shared helpers; this file uses three of them
mod common;

use common::{assert_close_scaled, fixture, read_f32};
use densenet::ndarray::{Array2, Array4};
use densenet::runtime::kernels::direct_conv::{available, force_portable};
use densenet::runtime::reference;
use densenet::runtime::train::{loss_and_gradients, LayerGrad};
use densenet::runtime::Workspace;
use densenet::{densenet, densenet_yaml};
use safetensors::SafeTensors;

densenet! {
    TorchvisionSmall<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>
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
    let step = |portable: bool| {
        force_portable(portable);
        let mut model = model.clone();
        let result = loss_and_gradients(&mut model, x.view(), &labels).unwrap();
        force_portable(false);
        result
    };
    let (loss, kernels) = step(false);
    let (loss_portable, portable) = step(true);
    assert!(
        (loss - loss_portable).abs() <= 1e-5 * loss.abs(),
        "{loss} vs {loss_portable}"
    );
    assert_eq!(kernels.len(), portable.len());
    let values = |g: &LayerGrad| -> Vec<f32> {
        match g {
            LayerGrad::Conv { weight } => weight.iter().copied().collect(),
            LayerGrad::BatchNorm { gamma, beta } => gamma.iter().chain(beta).copied().collect(),
            LayerGrad::Linear { weight, bias } => weight.iter().chain(bias).copied().collect(),
        }
    };
    for ((name, a), (other, b)) in kernels.iter().zip(portable.iter()) {
        assert_eq!(name, other);
        let (a, b) = (values(a), values(b));
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{name:?}[{i}]: {x} vs {y}");
        }
    }
}
