//! What freezing saves: the time of one training step of DenseNet-121 with the backbone
//! frozen (Keras's `base.trainable = False`: only the classifier trains), against a full
//! training step and an inference forward pass of the same batch, measured alternately
//! in one run (rounds of full, head-only, forward) so that machine noise hits all three
//! alike.
//!
//! ```sh
//! cargo run --release --example bench_freeze -- [--batch 16] [--size 112] [--rounds 5]
//! ```
//!
//! Prints one line of JSON per round and the medians, and the ratios BENCHMARKS.md
//! reports ("Fine-tuning: a frozen backbone").

use std::time::Instant;

use densenet::densenet;
use densenet::ndarray::Array4;
use densenet::runtime::train::{loss_and_gradients_frozen, Freeze, StepConfig};
use densenet::runtime::{DynamicModel, Model, Network, Rng};

densenet!(DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5, classes: 5>);

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (batch, size, rounds) = (arg("--batch", 16), arg("--size", 112), arg("--rounds", 5));
    // DenseNet-121 with a 5-class head, at `size`x`size`.
    let mut arch = DenseNet121::ARCHITECTURE.clone();
    arch.input = [3, size, size];
    let mut model = DynamicModel::init(arch, 0)?;
    let mut rng = Rng::new(1);
    let x = Array4::from_shape_simple_fn((batch, 3, size, size), || rng.normal());
    let labels: Vec<usize> = (0..batch).map(|i| i % 5).collect();
    let step = |model: &mut DynamicModel, freeze: &Freeze| {
        let start = Instant::now();
        let (loss, grads) = loss_and_gradients_frozen(
            model,
            x.view(),
            &labels,
            StepConfig::default(),
            freeze,
            &mut Rng::new(0),
        )
        .expect("a valid batch");
        assert!(loss.is_finite() && !grads.is_empty());
        start.elapsed().as_secs_f64() * 1e3
    };
    // Warm-up: thread pools, workspaces, page faults.
    step(&mut model, &Freeze::none());
    step(&mut model, &Freeze::backbone());
    model.forward(x.view())?;
    let (mut full, mut head, mut forward) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        full.push(step(&mut model, &Freeze::none()));
        head.push(step(&mut model, &Freeze::backbone()));
        let start = Instant::now();
        model.forward(x.view())?;
        forward.push(start.elapsed().as_secs_f64() * 1e3);
        println!(
            r#"{{"round":{round},"full_ms":{:.1},"head_only_ms":{:.1},"forward_ms":{:.1}}}"#,
            full[round], head[round], forward[round]
        );
    }
    let (full, head, forward) = (median(full), median(head), median(forward));
    println!(
        "DenseNet-121 ({} parameters), batch {batch} at {size}x{size}, {} threads: \
         full step {full:.1} ms, head-only step {head:.1} ms, forward {forward:.1} ms; \
         head-only / full {:.3}, head-only / forward {:.2}",
        model.plan().params,
        rayon::current_num_threads(),
        head / full,
        head / forward
    );
    Ok(())
}
