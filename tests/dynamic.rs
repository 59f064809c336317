//! The run-time model (`DynamicModel`) is the generated model's twin: same weights for
//! the same seed, same outputs, same weight files.

use std::path::PathBuf;

use densenet::densenet;
use densenet::ndarray::{Array4, Ix2};
use densenet::runtime::spec::{check, parse_yaml};
use densenet::runtime::{DynamicModel, Error, Model, Naming};

densenet! {
    Small<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    Features<growth: 4, blocks: [2, 2], stem: cifar, head: none, input: [3, 16, 12], bottleneck: false>
}

fn batch(shape: [usize; 3]) -> Array4<f32> {
    Array4::from_shape_fn((2, shape[0], shape[1], shape[2]), |(n, c, h, w)| {
        ((n * 13 + c * 7 + h * 3 + w) % 19) as f32 / 19.0 - 0.5
    })
}

#[test]
fn same_seed_same_outputs_as_the_generated_model() {
    let x = batch(Small::INPUT);
    let generated = Small::init(5).forward(x.view()).unwrap();
    let dynamic = DynamicModel::init(Small::ARCHITECTURE, 5)
        .forward(x.view())
        .unwrap();
    assert_eq!(dynamic.into_dimensionality::<Ix2>().unwrap(), generated);

    let x = batch(Features::INPUT);
    let generated = Features::init(1).forward(x.view()).unwrap();
    let dynamic = DynamicModel::init(Features::ARCHITECTURE, 1)
        .forward(x.view())
        .unwrap();
    assert_eq!(dynamic.shape(), generated.shape());
    assert_eq!(dynamic.into_dimensionality().unwrap(), generated);
    let err = DynamicModel::init(Features::ARCHITECTURE, 1)
        .predict(x.view())
        .unwrap_err();
    assert!(matches!(err, Error::NotAClassifier { .. }), "{err:?}");
}

#[test]
fn loads_the_torchvision_fixture_from_a_yaml_spec() {
    let spec = "name: Small\ngrowth: 8\nblocks: [2, 3, 4, 2]\ninit_features: 16\ntheta: 0.5\ninput: [3, 64, 64]\nclasses: 10\n";
    let arch = check(&parse_yaml(spec, "Small").unwrap()).unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision_small.safetensors");
    let dynamic = DynamicModel::load_safetensors(arch, &path, Naming::Auto).unwrap();
    let generated = Small::load_safetensors(&path).unwrap();
    let x = batch(Small::INPUT);
    let probabilities = dynamic.predict(x.view()).unwrap();
    assert_eq!(probabilities, generated.predict(x.view()).unwrap());
    let err = dynamic
        .forward(Array4::zeros((1, 3, 32, 32)).view())
        .unwrap_err();
    assert!(matches!(err, Error::InputShape { .. }), "{err:?}");
}
