//! Trains DigitsNet (`specs/digits.yaml`, a small DenseNet-BC) on scikit-learn's 8x8
//! handwritten digits (`fixtures/digits`), prints the per-epoch history and the test
//! accuracy, and writes the weights to `fixtures/digits/digitsnet.safetensors` (which
//! `examples/quickstart.rs` embeds).
//!
//! Run with `cargo run --release --example train_digits [-- OUT.safetensors]`.
//!
//! The recipe: the paper's optimiser (SGD, Nesterov momentum 0.9, weight decay 1e-4,
//! learning rate 0.1 divided by 10 at 50% and 75% of the epochs), batches of 64, seed 0,
//! pixels preprocessed as `(v / 16 − mean) / std` (`fixtures/digits/digits.rs`).

use std::path::PathBuf;
use std::time::Instant;

use densenet::densenet_yaml;
use densenet::train::{evaluate, fit, FitConfig, Optimizer, Schedule, SgdConfig};

#[path = "../fixtures/digits/digits.rs"]
mod digits;

densenet_yaml!("specs/digits.yaml");

/// Epochs of the committed run.
const EPOCHS: usize = 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/digits/digitsnet.safetensors")
        });
    let train = digits::load(digits::Split::Train)?;
    let test = digits::load(digits::Split::Test)?;
    println!(
        "DigitsNet: {} parameters, {:.1} MMACs per image; {} training and {} test images",
        DigitsNet::PARAMS,
        DigitsNet::MACS as f64 / 1e6,
        train.len(),
        test.len()
    );

    let mut model = DigitsNet::init(0);
    let config = FitConfig {
        epochs: EPOCHS,
        batch_size: 64,
        optimizer: Optimizer::Sgd(SgdConfig::default()),
        schedule: Schedule::Step,
        seed: 0,
        validation: Some(&test),
        progress: true,
        ..FitConfig::default()
    };
    let start = Instant::now();
    let history = fit(&mut model, &train, &config)?;
    let seconds = start.elapsed().as_secs_f64();

    println!("epoch      lr    loss  train acc  test acc  images/s  seconds");
    for e in &history.epochs {
        let test_acc = e.validation.map_or(f32::NAN, |v| v.accuracy);
        println!(
            "{:>5} {:>7} {:>7.4} {:>9.2}% {:>8.2}% {:>9.0} {:>8.2}",
            e.epoch,
            e.lr,
            e.loss,
            100.0 * e.train_accuracy,
            100.0 * test_acc,
            e.images_per_sec,
            e.seconds
        );
    }
    let result = evaluate(&model, &test, 256)?;
    let images = (EPOCHS * train.len()) as f64;
    println!(
        "test accuracy {:.2}% ({}/{}), test loss {:.4}; trained {EPOCHS} epochs in {seconds:.1} s ({:.0} images/s overall)",
        100.0 * result.accuracy,
        result.correct,
        result.total,
        result.loss,
        images / seconds
    );
    model.save_safetensors(&out)?;
    println!("wrote {}", out.display());
    Ok(())
}
