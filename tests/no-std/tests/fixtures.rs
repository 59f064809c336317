//! The `no_std` build's logits against torchvision's and Keras's (the fixtures of
//! `tools/make_fixtures.py`), within the host tests' 1e-4 of scale.

use densenet::ndarray::{Array2, Array4};
use densenet::Workspace;
use densenet_no_std_test::{arena_floats, classify, model, RUNTIME_HAS_STD};
use safetensors::SafeTensors;

const IO: [&[u8]; 3] = [
    include_bytes!("../../fixtures/torchvision_small.io.safetensors"),
    include_bytes!("../../fixtures/cifar_bc.io.safetensors"),
    include_bytes!("../../fixtures/keras_small.io.safetensors"),
];

fn tensor(file: &SafeTensors<'_>, key: &str) -> (Vec<usize>, Vec<f32>) {
    let view = file.tensor(key).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// CI runs this crate alone with `DENSENET_EXPECT_NO_STD=1`: then the runtime must have
/// been built without `std`, or the test below checked the wrong build.
#[test]
fn runtime_is_built_without_std_when_expected() {
    if std::env::var_os("DENSENET_EXPECT_NO_STD").is_some() && RUNTIME_HAS_STD {
        panic!("the runtime was built with `std`");
    }
}

#[test]
fn logits_match_the_frameworks() {
    for (index, io) in IO.iter().enumerate() {
        let file = SafeTensors::deserialize(io).unwrap();
        let (xs, x) = tensor(&file, "input");
        let (ys, y) = tensor(&file, "output");
        let x = Array4::from_shape_vec((xs[0], xs[1], xs[2], xs[3]), x).unwrap();
        let theirs = Array2::from_shape_vec((ys[0], ys[1]), y).unwrap();
        let model = model(index).unwrap();
        // The arena reserved up front from the macro's count, as on bare metal.
        let mut ws = Workspace::with_capacity(arena_floats(index, xs[0]));
        let capacity = ws.capacity();
        let mut ours = Array2::from_elem((ys[0], ys[1]), f32::NAN);
        classify(&*model, x.view(), &mut ws, ours.view_mut()).unwrap();
        assert_eq!(ws.capacity(), capacity, "fixture {index}: the arena grew");
        let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = ours
            .iter()
            .zip(&theirs)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff / scale < 1e-4,
            "fixture {index}: max |ours - theirs| = {diff} (scale {scale}), std: {RUNTIME_HAS_STD}"
        );
    }
}

#[test]
fn a_wrong_input_shape_is_an_error_not_a_panic() {
    let model = model(1).unwrap();
    let mut ws = Workspace::new();
    let mut out = Array2::zeros((1, 10));
    let x = Array4::zeros((1, 3, 31, 32));
    let err = classify(&*model, x.view(), &mut ws, out.view_mut()).unwrap_err();
    assert!(err.to_string().contains("32"), "{err}");
}
