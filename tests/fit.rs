//! The training loop on real data: scikit-learn's 8x8 handwritten digits
//! (`fixtures/digits`, see `tools/export_digits.py`).
//!
//! - a short run of DigitsNet (`specs/digits.yaml`) learns the digits (>= 90% on the
//!   held-out 360 images after 4 epochs; the full run of `examples/train_digits.rs`
//!   reaches more, see BENCHMARKS.md);
//! - one seed gives the same weights bit for bit, dropout and shuffling included;
//! - every epoch's checkpoint loads back with the generated `load_safetensors`;
//! - `evaluate` agrees with a hand computation; bad data and settings are typed errors
//!   that leave the model untouched.

use std::path::PathBuf;

use densenet::ndarray::Array4;
use densenet::runtime::train::{
    evaluate, fit, AdamConfig, Dataset, FitConfig, Optimizer, Schedule, SgdConfig, StepConfig,
};
use densenet::runtime::{weights, LayerMut, Network, TrainError};
use densenet::{densenet, densenet_yaml};

#[path = "../fixtures/digits/digits.rs"]
mod digits;
use digits::Split;

densenet_yaml!("specs/digits.yaml");

densenet! {
    /// A smaller digits model with dropout, so reproducibility covers the dropout masks.
    TinyDigits<input: [1, 8, 8], stem: cifar, growth: 6, blocks: [2, 2], init_features: 12, theta: 0.5, classes: 10, dropout: 0.2>;
    /// No classifier: nothing to train on labels.
    Features<input: [1, 8, 8], stem: cifar, growth: 6, blocks: [2], init_features: 12, classes: 10, head: none>
}

/// A fresh directory under Cargo's per-test-target scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Facts about the data set itself, independent of our code: scikit-learn's
/// documentation gives 1,797 images of 0..16 values, and `np.bincount(load_digits().target)`
/// is [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]. The stratified split keeps
/// 20% of each class (the export script printed the test counts).
#[test]
fn digits_fixture_is_the_scikit_learn_data_set() {
    let train = digits::raw(Split::Train).unwrap();
    let test = digits::raw(Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (1437, 360));
    assert_eq!(train.image_shape(), [1, 8, 8]);
    let total: Vec<usize> = train
        .class_counts()
        .iter()
        .zip(test.class_counts())
        .map(|(a, b)| a + b)
        .collect();
    assert_eq!(total, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    assert_eq!(
        test.class_counts(),
        [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    );
    for data in [&train, &test] {
        assert!(data
            .images()
            .iter()
            .all(|&v| v == v.round() && (0.0..=16.0).contains(&v)));
    }
    // The preprocessing standardises the training pixels.
    let x = digits::load(Split::Train).unwrap();
    let n = x.images().len() as f64;
    let mean = x.images().iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .images()
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(
        mean.abs() < 1e-5 && (var.sqrt() - 1.0).abs() < 1e-5,
        "{mean} {var}"
    );
}

#[test]
fn a_short_run_learns_the_digits() {
    let train = digits::load(Split::Train).unwrap();
    let test = digits::load(Split::Test).unwrap();
    let mut model = DigitsNet::init(0);
    let config = FitConfig {
        epochs: 4,
        batch_size: 64,
        // The paper's recipe, compressed: lr 0.1, 0.1, 0.01, 0.001.
        optimizer: Optimizer::Sgd(SgdConfig::default()),
        schedule: Schedule::Step,
        validation: Some(&test),
        ..FitConfig::default()
    };
    let history = fit(&mut model, &train, &config).unwrap();
    assert_eq!(history.epochs.len(), 4);
    let first = &history.epochs[0];
    let last = history.last().unwrap();
    // Chance is 10% and a loss of ln 10 = 2.30.
    assert!(last.loss < first.loss, "{history:?}");
    assert!(last.loss < 0.5, "{history:?}");
    // Same batch size as fit's validation, so the per-batch mean losses are summed in
    // the same groups and the figures match exactly.
    let result = evaluate(&model, &test, 64).unwrap();
    println!("after {} epochs: {result:?}", history.epochs.len());
    assert_eq!(result.total, 360);
    assert!(result.accuracy >= 0.90, "{result:?}");
    assert_eq!(Some(result), last.validation);
    assert!(last.images_per_sec > 0.0 && last.seconds > 0.0);
}

#[test]
fn the_same_seed_gives_the_same_weights() {
    let data = digits::load(Split::Train).unwrap();
    let data = data.subset(&(0..300).collect::<Vec<_>>()).unwrap();
    let run = |seed| {
        let mut model = TinyDigits::init(0);
        let config = FitConfig {
            epochs: 2,
            batch_size: 32,
            optimizer: Optimizer::Adam(AdamConfig::default()),
            seed,
            ..FitConfig::default()
        };
        let history = fit(&mut model, &data, &config).unwrap();
        (weights::to_bytes(&model), history)
    };
    let (a, history_a) = run(7);
    let (b, history_b) = run(7);
    let (c, _) = run(8);
    assert!(a == b, "same seed, different weights");
    let losses = |h: &densenet::runtime::train::History| {
        h.epochs
            .iter()
            .map(|e| e.loss.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&history_a), losses(&history_b));
    assert!(a != c, "another seed shuffles and drops out differently");
}

#[test]
fn every_epoch_leaves_a_checkpoint_that_loads_back() {
    let data = digits::load(Split::Train).unwrap();
    let data = data.subset(&(0..200).collect::<Vec<_>>()).unwrap();
    let dir = scratch("fit-checkpoints");
    let mut model = DigitsNet::init(0);
    let config = FitConfig {
        epochs: 2,
        batch_size: 50,
        checkpoint_dir: Some(dir.clone()),
        ..FitConfig::default()
    };
    let history = fit(&mut model, &data, &config).unwrap();
    let first = dir.join("epoch-001.safetensors");
    let second = dir.join("epoch-002.safetensors");
    assert_eq!(
        history.epochs[0].checkpoint.as_deref(),
        Some(first.as_path())
    );
    assert_eq!(
        history.epochs[1].checkpoint.as_deref(),
        Some(second.as_path())
    );

    let loaded = DigitsNet::load_safetensors(&second).unwrap();
    assert!(weights::to_bytes(&loaded) == weights::to_bytes(&model));
    let x = data.images();
    assert_eq!(loaded.forward(x).unwrap(), model.forward(x).unwrap());
    // torchvision naming: the first checkpoint is another state of the same model.
    let earlier = DigitsNet::load_safetensors(&first).unwrap();
    assert!(weights::to_bytes(&earlier) != weights::to_bytes(&model));
    let file = std::fs::read(&second).unwrap();
    let keys = safetensors::SafeTensors::deserialize(&file)
        .unwrap()
        .names()
        .len();
    assert!(keys > 0);
    assert!(safetensors::SafeTensors::deserialize(&file)
        .unwrap()
        .tensor("features.denseblock3.denselayer4.conv2.weight")
        .is_ok());
}

/// With a zero classifier weight and bias `b = e₂` (1 at class 2, else 0), every image's
/// logits are `b`: the prediction is always 2, so the accuracy is the share of 2s, and
/// the cross-entropy is `ln(9 + e) − 1` for a 2 and `ln(9 + e)` otherwise. The test
/// set has 35 twos of 360 (the fixture's class counts).
#[test]
fn evaluate_matches_a_hand_computation() {
    let test = digits::load(Split::Test).unwrap();
    let mut model = DigitsNet::init(3);
    model.visit_layers_mut(&mut |_, layer| {
        if let LayerMut::Linear(linear) = layer {
            linear.weight_mut().fill(0.0);
            linear.bias_mut().fill(0.0);
            linear.bias_mut()[2] = 1.0;
        }
    });
    let lse = (9.0 + 1f64.exp()).ln();
    let expected_loss = lse - 35.0 / 360.0;
    for batch_size in [1, 7, 360, 1000] {
        let result = evaluate(&model, &test, batch_size).unwrap();
        assert_eq!((result.correct, result.total), (35, 360));
        assert!((f64::from(result.accuracy) - 35.0 / 360.0).abs() < 1e-7);
        assert!(
            (f64::from(result.loss) - expected_loss).abs() < 1e-5,
            "{} vs {expected_loss}",
            result.loss
        );
    }
    // Labels all 2: every prediction right.
    let twos = Dataset::new(test.images().to_owned(), vec![2; 360], 10).unwrap();
    assert_eq!(evaluate(&model, &twos, 64).unwrap().accuracy, 1.0);
}

#[test]
fn bad_data_and_settings_are_typed_errors_and_change_nothing() {
    let data = digits::load(Split::Test).unwrap();
    let mut model = DigitsNet::init(0);
    let before = weights::to_bytes(&model);
    let mut fails = |config: &FitConfig<'_>, data: &Dataset| {
        fit(&mut model, data, config).expect_err("should fail")
    };

    let rgb = Dataset::new(Array4::zeros((4, 3, 8, 8)), vec![0, 1, 2, 3], 10).unwrap();
    assert!(matches!(
        fails(&FitConfig::default(), &rgb),
        TrainError::ImageShape {
            expected: [1, 8, 8],
            actual: [3, 8, 8],
            ..
        }
    ));
    let twelve = Dataset::new(Array4::zeros((2, 1, 8, 8)), vec![0, 11], 12).unwrap();
    assert!(matches!(
        fails(&FitConfig::default(), &twelve),
        TrainError::Classes {
            classes: 10,
            dataset: 12,
            ..
        }
    ));
    type Expected = fn(&TrainError) -> bool;
    let cases: [(FitConfig<'_>, Expected); 5] = [
        (
            FitConfig {
                batch_size: 0,
                ..FitConfig::default()
            },
            |e| matches!(e, TrainError::BatchSize { batch_size: 0, .. }),
        ),
        (
            FitConfig {
                epochs: 0,
                ..FitConfig::default()
            },
            |e| matches!(e, TrainError::NoEpochs),
        ),
        (
            FitConfig {
                optimizer: Optimizer::Sgd(SgdConfig {
                    lr: f32::NAN,
                    ..SgdConfig::default()
                }),
                ..FitConfig::default()
            },
            |e| matches!(e, TrainError::LearningRate { .. }),
        ),
        (
            FitConfig {
                step: StepConfig {
                    dropout: Some(1.0),
                    ..StepConfig::default()
                },
                ..FitConfig::default()
            },
            |e| matches!(e, TrainError::Dropout { rate } if *rate == 1.0),
        ),
        (
            // A checkpoint "directory" that is a file.
            FitConfig {
                checkpoint_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
                ..FitConfig::default()
            },
            |e| matches!(e, TrainError::Checkpoint(_)),
        ),
    ];
    for (config, expected) in &cases {
        let err = fails(config, &data);
        assert!(expected(&err), "{err:?}");
        assert!(!err.to_string().is_empty());
    }
    // A validation set that does not fit is caught before training too.
    let config = FitConfig {
        validation: Some(&rgb),
        ..FitConfig::default()
    };
    assert!(matches!(
        fails(&config, &data),
        TrainError::ImageShape { .. }
    ));
    assert!(
        weights::to_bytes(&model) == before,
        "a failed fit changed the model"
    );

    // Datasets reject bad labels and empty inputs; evaluate rejects what fit rejects.
    assert!(matches!(
        Dataset::new(Array4::zeros((2, 1, 8, 8)), vec![0, 10], 10),
        Err(TrainError::LabelOutOfRange {
            index: 1,
            label: 10,
            classes: 10
        })
    ));
    assert!(matches!(
        Dataset::new(Array4::zeros((0, 1, 8, 8)), vec![], 10),
        Err(TrainError::EmptyDataset)
    ));
    assert!(matches!(
        evaluate(&model, &data, 0),
        Err(TrainError::BatchSize { batch_size: 0, .. })
    ));
    assert!(matches!(
        evaluate(&model, &rgb, 8),
        Err(TrainError::ImageShape { .. })
    ));
    let mut features = Features::init(0);
    assert!(matches!(
        fit(&mut features, &data, &FitConfig::default()),
        Err(TrainError::NoClassifier { .. })
    ));
}

/// With lr 1e6 a running variance is infinite within a few steps (the training-mode
/// loss, on batch statistics, stays finite) and the inference-mode logits NaN: `fit`
/// used to keep going, overwrite every checkpoint with NaN weights and return `Ok`. It
/// stops after that step, before any checkpoint of the diverged weights. A NaN loss
/// stops it before the step.
#[test]
fn a_diverging_run_stops_before_checkpointing_bad_weights() {
    let data = digits::load(Split::Train).unwrap();
    let data = data.subset(&(0..200).collect::<Vec<_>>()).unwrap();
    let dir = scratch("fit-diverged");
    let mut model = DigitsNet::init(0);
    let config = FitConfig {
        epochs: 3,
        batch_size: 50,
        optimizer: Optimizer::Sgd(SgdConfig {
            lr: 1e6,
            ..SgdConfig::default()
        }),
        schedule: Schedule::Constant,
        checkpoint_dir: Some(dir.clone()),
        ..FitConfig::default()
    };
    let err = fit(&mut model, &data, &config).expect_err("a diverging run must fail");
    let TrainError::NonFiniteWeights {
        epoch,
        batch,
        tensor,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*epoch, 1, "{err}");
    assert!((1..=4).contains(batch), "{err}");
    assert!(tensor.starts_with("features."), "{err}");
    assert!(err.to_string().contains("diverged"), "{err}");
    let written = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(written, 0, "a checkpoint of diverged weights was written");

    // A NaN classifier bias: the very first loss is NaN.
    let mut model = DigitsNet::init(0);
    model.visit_layers_mut(&mut |_, layer| {
        if let LayerMut::Linear(linear) = layer {
            linear.bias_mut()[0] = f32::NAN;
        }
    });
    let config = FitConfig {
        optimizer: Optimizer::Sgd(SgdConfig::default()),
        ..config
    };
    let err = fit(&mut model, &data, &config).expect_err("a NaN loss must fail");
    assert!(
        matches!(err, TrainError::Diverged { epoch: 1, batch: 1, loss } if loss.is_nan()),
        "{err:?}"
    );
    let written = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(written, 0, "a checkpoint of diverged weights was written");
}

#[test]
fn optimiser_and_step_settings_are_checked_up_front() {
    let data = digits::load(Split::Test).unwrap();
    let mut model = DigitsNet::init(0);
    let before = weights::to_bytes(&model);
    let sgd = |c: SgdConfig| FitConfig {
        optimizer: Optimizer::Sgd(c),
        ..FitConfig::default()
    };
    let adam = |c: AdamConfig| FitConfig {
        optimizer: Optimizer::Adam(c),
        ..FitConfig::default()
    };
    let step = |momentum: f32| FitConfig {
        step: StepConfig {
            momentum,
            ..StepConfig::default()
        },
        ..FitConfig::default()
    };
    let cases: Vec<(FitConfig<'_>, &str)> = vec![
        (
            sgd(SgdConfig {
                momentum: 1.0,
                ..SgdConfig::default()
            }),
            "SgdConfig::momentum",
        ),
        (
            sgd(SgdConfig {
                momentum: -0.1,
                ..SgdConfig::default()
            }),
            "SgdConfig::momentum",
        ),
        (
            sgd(SgdConfig {
                weight_decay: -1e-4,
                ..SgdConfig::default()
            }),
            "SgdConfig::weight_decay",
        ),
        (
            sgd(SgdConfig {
                weight_decay: f32::INFINITY,
                ..SgdConfig::default()
            }),
            "SgdConfig::weight_decay",
        ),
        (
            adam(AdamConfig {
                betas: (1.0, 0.999),
                ..AdamConfig::default()
            }),
            "AdamConfig::betas.0",
        ),
        (
            adam(AdamConfig {
                betas: (0.9, f32::NAN),
                ..AdamConfig::default()
            }),
            "AdamConfig::betas.1",
        ),
        (
            adam(AdamConfig {
                eps: 0.0,
                ..AdamConfig::default()
            }),
            "AdamConfig::eps",
        ),
        (
            adam(AdamConfig {
                weight_decay: f32::NAN,
                ..AdamConfig::default()
            }),
            "AdamConfig::weight_decay",
        ),
        (step(0.0), "StepConfig::momentum"),
        (step(1.5), "StepConfig::momentum"),
        (step(f32::NAN), "StepConfig::momentum"),
    ];
    for (config, expected) in &cases {
        let err = fit(&mut model, &data, config).expect_err(expected);
        assert!(
            matches!(&err, TrainError::Setting { field, .. } if field == expected),
            "{expected}: {err:?}"
        );
        assert!(err.to_string().starts_with(expected), "{err}");
    }
    // Adam's learning rate too.
    let err = fit(
        &mut model,
        &data,
        &adam(AdamConfig {
            lr: 0.0,
            ..AdamConfig::default()
        }),
    )
    .unwrap_err();
    assert!(
        matches!(err, TrainError::LearningRate { lr } if lr == 0.0),
        "{err:?}"
    );
    assert!(
        weights::to_bytes(&model) == before,
        "a failed fit changed the model"
    );
    // The defaults and edge values inside the ranges pass.
    assert!(SgdConfig::default().validate().is_ok());
    assert!(AdamConfig::default().validate().is_ok());
    let zero = SgdConfig {
        momentum: 0.0,
        weight_decay: 0.0,
        ..SgdConfig::default()
    };
    assert!(zero.validate().is_ok());
}
