//! The run-time model (`DynamicModel`) is the generated model's twin: same weights for
//! the same seed, same outputs, same weight files.

use std::path::PathBuf;

use densenet::densenet;
use densenet::ndarray::{Array4, Ix2};
use densenet::runtime::spec::{check, parse_yaml};
use densenet::runtime::train::{Dataset, FitConfig};
use densenet::runtime::{DynamicModel, Error, Model, Naming};

densenet! {
    Small<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    Features<growth: 4, blocks: [2, 2], stem: cifar, head: none, input: [3, 16, 12], bottleneck: false>;
    TinyBC<growth: 4, blocks: [2, 3], stem: cifar, theta: 0.5, input: [3, 8, 8], classes: 3, dropout: 0.2>
}

/// `TinyBC`, as a YAML spec given at run time.
const TINY_BC: &str = "name: TinyBC\ngrowth: 4\nblocks: [2, 3]\nstem: cifar\ntheta: 0.5\ninput: [3, 8, 8]\nclasses: 3\ndropout: 0.2\n";

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
        .unwrap()
        .forward(x.view())
        .unwrap();
    assert_eq!(dynamic.into_dimensionality::<Ix2>().unwrap(), generated);

    let x = batch(Features::INPUT);
    let generated = Features::init(1).forward(x.view()).unwrap();
    let dynamic = DynamicModel::init(Features::ARCHITECTURE, 1)
        .unwrap()
        .forward(x.view())
        .unwrap();
    assert_eq!(dynamic.shape(), generated.shape());
    assert_eq!(dynamic.into_dimensionality().unwrap(), generated);
    let err = DynamicModel::init(Features::ARCHITECTURE, 1)
        .unwrap()
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

/// The run-time model is not a second implementation: built from the same spec and seed
/// it is the generated model, bit for bit, in everything it does — outputs, weight
/// files, ONNX files, a training step's loss and gradients, and a whole `fit`.
#[test]
fn the_run_time_model_is_the_generated_model() {
    let arch = check(&parse_yaml(TINY_BC, "TinyBC").unwrap()).unwrap();
    assert_eq!(arch, TinyBC::ARCHITECTURE);
    let mut generated = TinyBC::init(3);
    let mut dynamic = DynamicModel::init(arch, 3).unwrap();

    let x = Array4::from_shape_fn((6, 3, 8, 8), |(n, c, h, w)| {
        ((n * 5 + c * 3 + h * 7 + w) % 23) as f32 / 23.0 - 0.5
    });
    let labels = [0, 2, 1, 1, 0, 2];
    assert_eq!(
        dynamic.forward(x.view()).unwrap(),
        generated.forward(x.view()).unwrap().into_dyn()
    );
    assert_eq!(
        dynamic.to_safetensors_bytes(),
        generated.to_safetensors_bytes()
    );
    assert_eq!(dynamic.to_onnx_bytes(), Model::to_onnx_bytes(&generated));
    assert_eq!(dynamic.summary().to_string(), TinyBC::summary().to_string());

    // A training step, dropout included: the same loss and gradients, and the same
    // running statistics afterwards.
    let (loss_d, grads_d) = dynamic.loss_and_gradients(x.view(), &labels).unwrap();
    let (loss_g, grads_g) = generated.loss_and_gradients(x.view(), &labels).unwrap();
    assert!(loss_d.is_finite() && loss_d > 0.0);
    assert_eq!(loss_d, loss_g);
    assert_eq!(grads_d, grads_g);
    assert!(grads_d.len() > 10, "every layer has gradients");

    // Two epochs of SGD: the same history and the same weights.
    let data = Dataset::new(x.clone(), labels.to_vec(), 3).unwrap();
    let config = FitConfig {
        epochs: 2,
        batch_size: 3,
        progress: false,
        ..FitConfig::default()
    };
    let history_d = dynamic.fit(&data, &config).unwrap();
    let history_g = generated.fit(&data, &config).unwrap();
    let losses = |h: &densenet::runtime::train::History| -> Vec<f32> {
        h.epochs.iter().map(|e| e.loss).collect()
    };
    assert_eq!(losses(&history_d), losses(&history_g));
    assert_eq!(
        dynamic.to_safetensors_bytes(),
        generated.to_safetensors_bytes()
    );
    assert_ne!(
        dynamic.to_safetensors_bytes(),
        TinyBC::init(3).to_safetensors_bytes(),
        "training changed the weights"
    );

    // What the run-time model saves, the generated one loads.
    let dir = std::env::temp_dir().join(format!("densenet-dynamic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trained.safetensors");
    dynamic.save_safetensors(&path).unwrap();
    let loaded = TinyBC::load_safetensors(&path).unwrap();
    assert_eq!(
        loaded.forward(x.view()).unwrap().into_dyn(),
        dynamic.forward(x.view()).unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `&dyn Model` runs, saves and exports: one code path for any model.
#[test]
fn models_are_object_safe() {
    let generated = TinyBC::init(1);
    let arch = check(&parse_yaml(TINY_BC, "TinyBC").unwrap()).unwrap();
    let dynamic = DynamicModel::init(arch, 1).unwrap();
    let models: [&dyn Model; 2] = [&generated, &dynamic];
    let x = Array4::<f32>::zeros((1, 3, 8, 8));
    let outputs: Vec<_> = models
        .iter()
        .map(|m| m.predict(x.view()).unwrap())
        .collect();
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0].shape(), &[1, 3]);
    assert_eq!(models[0].plan().params, TinyBC::PARAMS);
}

/// An `Architecture` built in code is checked by the spec's rules: a bad one is an
/// error naming every broken rule, never a panic while building the model.
#[test]
fn an_invalid_architecture_is_an_error() {
    let bad = densenet::runtime::spec::Architecture {
        growth: 0,
        theta: 0.0,
        ..Small::ARCHITECTURE
    };
    let err = DynamicModel::init(bad.clone(), 0).unwrap_err();
    let Error::InvalidArchitecture { model, problems } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(model, "Small");
    assert!(
        problems.iter().any(|p| p.contains("growth")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("theta")), "{problems:?}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision_small.safetensors");
    let err = DynamicModel::load_safetensors(bad, &path, Naming::Auto).unwrap_err();
    assert!(
        err.to_string().contains("not a valid architecture"),
        "{err}"
    );
}
