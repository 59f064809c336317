//! The portable path (im2col + the `gemm` crate), which CPUs without AVX-512 or AVX2 run: forced
//! here with `force_portable` (this file is its own test process, so the switch does
//! not reach other tests), and checked like the direct kernels are: against torchvision's
//! logits on the weight fixture, and against the reference path.

#[allow(dead_code)] // shared helpers; this file uses three of them
mod common;

use common::{assert_close_scaled, fixture, read_f32};
use densenet::ndarray::{Array2, Array4};
use densenet::runtime::kernels::direct_conv::{available, force_portable};
use densenet::runtime::reference;
use densenet::runtime::Workspace;
use densenet::{densenet, densenet_yaml};
use safetensors::SafeTensors;

densenet! {
    TorchvisionSmall<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>
}
densenet_yaml!("specs/densenet40_k12.yaml");

#[test]
fn portable_path_matches_torchvision_and_the_reference() {
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
