//! Declare DenseNet-121 inline and DenseNet-BC (L=100, k=12) from a YAML preset, print
//! their Keras-style summaries, and time a forward pass of each on a batch.
//!
//! Run with `cargo run --release --example quickstart`.

use std::time::Instant;

use densenet::ndarray::Array4;
use densenet::{densenet, densenet_yaml};

densenet! {
    /// DenseNet-121 (Huang et al. 2017), as torchvision's `densenet121`.
    pub DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>
}

// DenseNet-BC (L=100, k=12) for CIFAR-10, compiled from the preset at build time.
densenet_yaml!("specs/densenet_bc100_k12.yaml");

/// A deterministic stand-in for a batch of images.
fn batch(n: usize, [c, h, w]: [usize; 3]) -> Array4<f32> {
    Array4::from_shape_fn((n, c, h, w), |(n, c, y, x)| {
        ((n * 7 + c * 5 + y * 3 + x) % 17) as f32 / 17.0 - 0.5
    })
}

fn main() -> Result<(), densenet::runtime::Error> {
    println!("{}\n", DenseNet121::summary());
    println!("{}\n", DenseNetBC100K12::summary());

    let imagenet = DenseNet121::init(0);
    let x = batch(2, DenseNet121::INPUT);
    imagenet.forward(x.view())?; // warm-up
    let start = Instant::now();
    let logits = imagenet.forward(x.view())?;
    let took = start.elapsed();
    println!(
        "DenseNet121: input {:?} -> logits {:?} in {:.1} ms ({:.2} GMACs per image)",
        x.shape(),
        logits.shape(),
        took.as_secs_f64() * 1e3,
        DenseNet121::MACS as f64 / 1e9
    );

    let cifar = DenseNetBC100K12::init(0);
    let x = batch(16, DenseNetBC100K12::INPUT);
    cifar.forward(x.view())?;
    let start = Instant::now();
    let probs = cifar.predict(x.view())?;
    let took = start.elapsed();
    println!(
        "DenseNetBC100K12: input {:?} -> probabilities {:?} in {:.1} ms; image 0's top class: {}",
        x.shape(),
        probs.shape(),
        took.as_secs_f64() * 1e3,
        probs
            .row(0)
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b })
            .0
    );
    Ok(())
}
