//! Resumable training: a run interrupted after an epoch and resumed from its checkpoint
//! ends with the uninterrupted run's weights and history, bit for bit; checkpoints are
//! weights files too; a checkpoint of another run is refused with a typed error.

use std::ops::ControlFlow;
use std::path::PathBuf;

use densenet::densenet;
use densenet::runtime::train::{
    checkpoints_in, fit, read_checkpoint_info, AdamConfig, Dataset, EarlyStopping, EpochStats,
    FitConfig, Freeze, History, Monitor, OnEpochEnd, Optimizer, SgdConfig, BEST_CHECKPOINT,
};
use densenet::runtime::TrainError;

#[path = "../fixtures/digits/digits.rs"]
mod digits;
use digits::Split;

densenet! {
    /// A small digits model with dropout, so the generator's state matters.
    TinyDigits<input: [1, 8, 8], stem: cifar, growth: 6, blocks: [2, 2], init_features: 12, theta: 0.5, classes: 10, dropout: 0.2>;
    /// Another growth rate: another architecture.
    OtherDigits<input: [1, 8, 8], stem: cifar, growth: 4, blocks: [2, 2], init_features: 12, theta: 0.5, classes: 10, dropout: 0.2>
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn data() -> (Dataset, Dataset) {
    let train = digits::load(Split::Train).unwrap();
    let small: Vec<usize> = (0..200).collect();
    let test = digits::load(Split::Test).unwrap();
    let val: Vec<usize> = (0..60).collect();
    (train.subset(&small).unwrap(), test.subset(&val).unwrap())
}

/// The parts of an epoch's record that do not depend on timing.
fn trace(history: &History) -> Vec<(usize, u32, u32, u32, Option<u32>)> {
    history
        .epochs
        .iter()
        .map(|e: &EpochStats| {
            (
                e.epoch,
                e.lr.to_bits(),
                e.loss.to_bits(),
                e.train_accuracy.to_bits(),
                e.validation.map(|v| v.loss.to_bits()),
            )
        })
        .collect()
}

fn resumes_bit_for_bit(optimizer: Optimizer, name: &str) {
    let (train, val) = data();
    let config = |dir: PathBuf| FitConfig {
        epochs: 4,
        batch_size: 32,
        optimizer,
        validation: Some(&val),
        checkpoint_dir: Some(dir),
        seed: 11,
        ..FitConfig::default()
    };
    let mut straight = TinyDigits::init(1);
    let full = fit(
        &mut straight,
        &train,
        &config(scratch(&format!("{name}-straight"))),
    )
    .unwrap();

    // Interrupted after epoch 2, then resumed by a new process (a fresh model).
    let dir = scratch(&format!("{name}-interrupted"));
    let stop = |h: &History| {
        if h.epochs.len() == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let mut first = TinyDigits::init(1);
    let part = fit(
        &mut first,
        &train,
        &FitConfig {
            on_epoch_end: Some(OnEpochEnd(&stop)),
            ..config(dir.clone())
        },
    )
    .unwrap();
    assert_eq!(part.epochs.len(), 2);
    let mut resumed = TinyDigits::init(99);
    let rest = fit(
        &mut resumed,
        &train,
        &FitConfig {
            resume: true,
            ..config(dir.clone())
        },
    )
    .unwrap();
    assert_eq!(
        rest.epochs.len(),
        4,
        "the resumed history holds the whole run"
    );
    assert_eq!(trace(&rest), trace(&full));
    assert_eq!(
        resumed.to_safetensors_bytes(),
        straight.to_safetensors_bytes()
    );
    let epochs: Vec<usize> = checkpoints_in(&dir).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(epochs, [1, 2, 3, 4]);

    // Resuming a finished run trains nothing more.
    let again = fit(
        &mut resumed,
        &train,
        &FitConfig {
            resume: true,
            ..config(dir.clone())
        },
    )
    .unwrap();
    assert_eq!(trace(&again), trace(&full));
    assert_eq!(
        resumed.to_safetensors_bytes(),
        straight.to_safetensors_bytes()
    );

    // A checkpoint is also a weights file; its header keeps the run's record.
    let last = &checkpoints_in(&dir).unwrap()[3].1;
    let loaded = TinyDigits::load_safetensors(last).unwrap();
    assert_eq!(
        loaded.to_safetensors_bytes(),
        straight.to_safetensors_bytes()
    );
    let info = read_checkpoint_info(last).unwrap();
    assert_eq!((info.epoch, trace(&info.history)), (4, trace(&full)));
}

#[test]
fn an_interrupted_sgd_run_resumes_bit_for_bit() {
    resumes_bit_for_bit(
        Optimizer::Sgd(SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        }),
        "sgd",
    );
}

#[test]
fn an_interrupted_adam_run_with_frozen_layers_resumes_bit_for_bit() {
    resumes_bit_for_bit(Optimizer::Adam(AdamConfig::default()), "adam");
    // Frozen stem: its parameters have no optimiser state, saved as such.
    let (train, _) = data();
    let dir = scratch("adam-frozen");
    let config = |resume| FitConfig {
        epochs: 2,
        batch_size: 50,
        optimizer: Optimizer::Adam(AdamConfig::default()),
        freeze: Freeze::parts([densenet::runtime::Part::Stem]),
        checkpoint_dir: Some(dir.clone()),
        resume,
        ..FitConfig::default()
    };
    let mut straight = TinyDigits::init(2);
    fit(
        &mut straight,
        &train,
        &FitConfig {
            checkpoint_dir: None,
            ..config(false)
        },
    )
    .unwrap();
    let stop = |_: &History| ControlFlow::Break(());
    let mut model = TinyDigits::init(2);
    fit(
        &mut model,
        &train,
        &FitConfig {
            on_epoch_end: Some(OnEpochEnd(&stop)),
            ..config(false)
        },
    )
    .unwrap();
    let mut model = TinyDigits::init(3);
    fit(&mut model, &train, &config(true)).unwrap();
    assert_eq!(
        model.to_safetensors_bytes(),
        straight.to_safetensors_bytes()
    );
}

#[test]
fn checkpoints_of_another_run_are_refused_and_nothing_is_overwritten() {
    let (train, _) = data();
    let dir = scratch("refuse");
    let config = |resume| FitConfig {
        epochs: 1,
        batch_size: 50,
        checkpoint_dir: Some(dir.clone()),
        resume,
        ..FitConfig::default()
    };
    fit(&mut TinyDigits::init(0), &train, &config(false)).unwrap();
    let written = std::fs::read(dir.join("epoch-001.safetensors")).unwrap();

    // A new run into the same directory.
    let err = fit(&mut TinyDigits::init(0), &train, &config(false)).unwrap_err();
    assert!(
        matches!(err, TrainError::RunExists { last: 1, .. }),
        "{err}"
    );
    // Another architecture, resuming.
    let mut other = OtherDigits::init(0);
    let before = other.to_safetensors_bytes();
    let err = fit(&mut other, &train, &config(true)).unwrap_err();
    assert!(matches!(err, TrainError::Resume { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("another architecture than OtherDigits's"),
        "{err}"
    );
    assert_eq!(other.to_safetensors_bytes(), before);
    // Another optimiser.
    let adam = FitConfig {
        epochs: 2,
        optimizer: Optimizer::Adam(AdamConfig::default()),
        ..config(true)
    };
    let err = fit(&mut TinyDigits::init(0), &train, &adam).unwrap_err();
    assert!(
        err.to_string()
            .contains("the checkpoint's optimiser is sgd, this run's is adam"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("epoch-001.safetensors")).unwrap(),
        written
    );

    // A plain weights file where a checkpoint should be.
    let plain = scratch("plain");
    std::fs::create_dir_all(&plain).unwrap();
    TinyDigits::init(0)
        .save_safetensors(plain.join("epoch-001.safetensors"))
        .unwrap();
    let err = fit(
        &mut TinyDigits::init(0),
        &train,
        &FitConfig {
            checkpoint_dir: Some(plain),
            ..config(true)
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not a training checkpoint"),
        "{err}"
    );
}

#[test]
fn early_stopping_restores_the_best_epoch_and_best_only_keeps_it() {
    let (train, val) = data();
    let dir = scratch("early");
    let config = FitConfig {
        epochs: 12,
        batch_size: 25,
        // A large constant rate, so that the validation loss does not only go down.
        optimizer: Optimizer::Adam(AdamConfig {
            lr: 0.03,
            ..AdamConfig::default()
        }),
        schedule: densenet::runtime::train::Schedule::Constant,
        validation: Some(&val),
        checkpoint_dir: Some(dir.clone()),
        save_best: Some(Monitor::ValLoss),
        early_stopping: Some(EarlyStopping {
            monitor: Monitor::ValLoss,
            patience: 1,
            restore_best: true,
            ..EarlyStopping::default()
        }),
        ..FitConfig::default()
    };
    let mut model = TinyDigits::init(4);
    let history = fit(&mut model, &train, &config).unwrap();
    let losses: Vec<f32> = history
        .epochs
        .iter()
        .map(|e| e.validation.unwrap().loss)
        .collect();
    // Keras's rule, by hand: stop at the first epoch (after the first) that is the
    // second in a row without a new minimum.
    let mut best = f32::INFINITY;
    let (mut best_epoch, mut stale, mut stopped_at) = (0, 0, None);
    for (i, &loss) in losses.iter().enumerate() {
        if loss < best {
            (best, best_epoch, stale) = (loss, i + 1, 0);
        } else {
            stale += 1;
            if stale >= 1 && i > 0 {
                stopped_at = Some(i + 1);
                break;
            }
        }
    }
    assert!(
        stopped_at.is_some(),
        "the run should stop early: {losses:?}"
    );
    assert_eq!(stopped_at, Some(history.epochs.len()), "{losses:?}");
    // The model holds the best epoch's weights, which best.safetensors also holds.
    let best_file =
        TinyDigits::load_safetensors(checkpoints_in(&dir).unwrap()[best_epoch - 1].1.clone())
            .unwrap();
    assert_eq!(
        model.to_safetensors_bytes(),
        best_file.to_safetensors_bytes()
    );
    let saved = TinyDigits::load_safetensors(dir.join(BEST_CHECKPOINT)).unwrap();
    assert_eq!(
        saved.to_safetensors_bytes(),
        best_file.to_safetensors_bytes()
    );

    // Watching a validation metric without validation data is refused.
    let err = fit(
        &mut TinyDigits::init(0),
        &train,
        &FitConfig {
            validation: None,
            checkpoint_dir: None,
            save_best: None,
            ..config.clone()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "watching `val_loss` needs a validation set"
    );
}
