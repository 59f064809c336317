//! Declare DenseNet-121 inline and DenseNet-BC (L=100, k=12) from a YAML preset, print
//! their Keras-style summaries, and time a forward pass of each on a batch. Then load
//! a small DenseNet-BC trained on 8x8 handwritten digits (weights compiled into the
//! binary) and classify the 360 held-out digits.
//!
//! Run with `cargo run --release --example quickstart`.

use std::time::Instant;

use densenet::ndarray::{s, Array4};
use densenet::train::evaluate;
use densenet::{densenet, densenet_yaml};

#[path = "../fixtures/digits/digits.rs"]
mod digits;

densenet! {
    /// DenseNet-121 (Huang et al. 2017), as torchvision's `densenet121`.
    pub DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>
}

// DenseNet-BC (L=100, k=12) for CIFAR-10, compiled from the preset at build time.
densenet_yaml!("specs/densenet_bc100_k12.yaml");

// DigitsNet, a small DenseNet-BC for 1x8x8 digits, and its trained weights
// (`cargo run --release --example train_digits` writes them; torchvision naming).
densenet_yaml!("specs/digits.yaml");
static DIGITS_WEIGHTS: &[u8] = include_bytes!("../fixtures/digits/digitsnet.safetensors");

/// A deterministic stand-in for a batch of images.
fn batch(n: usize, [c, h, w]: [usize; 3]) -> Array4<f32> {
    Array4::from_shape_fn((n, c, h, w), |(n, c, y, x)| {
        ((n * 7 + c * 5 + y * 3 + x) % 17) as f32 / 17.0 - 0.5
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
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

    digits_demo()
}

/// Classifies the held-out digits with the embedded trained weights; shows three.
fn digits_demo() -> Result<(), Box<dyn std::error::Error>> {
    let model = DigitsNet::from_safetensors_bytes(DIGITS_WEIGHTS)?;
    // Preprocessing as in training: (v / 16 - mean) / std (fixtures/digits/digits.rs).
    let test = digits::load(digits::Split::Test)?;
    let start = Instant::now();
    let result = evaluate(&model, &test, test.len())?;
    println!(
        "\nDigitsNet ({} parameters, {} KB of embedded weights): {}/{} held-out digits right ({:.2}%) in {:.1} ms",
        DigitsNet::PARAMS,
        DIGITS_WEIGHTS.len() / 1024,
        result.correct,
        result.total,
        100.0 * result.accuracy,
        start.elapsed().as_secs_f64() * 1e3
    );
    let raw = digits::raw(digits::Split::Test)?;
    let shown = 3;
    let probs = model.predict(test.images().slice(s![..shown, .., .., ..]))?;
    let shades = [' ', '.', ':', '-', '=', '+', '*', '#', '%', '@'];
    for row in 0..8 {
        let line: Vec<String> = (0..shown)
            .map(|i| {
                (0..8)
                    .map(|col| {
                        let v = raw.images()[[i, 0, row, col]];
                        let c = shades[(v * 9.0 / 16.0).round() as usize];
                        format!("{c}{c}")
                    })
                    .collect()
            })
            .collect();
        println!("  {}", line.join("        "));
    }
    let labels: Vec<String> = (0..shown)
        .map(|i| {
            let p = probs.row(i);
            let best = (0..p.len()).fold(0, |b, c| if p[c] > p[b] { c } else { b });
            format!(
                "{:<24}",
                format!(
                    "pred {best} ({:.0}%), true {}",
                    100.0 * p[best],
                    raw.labels()[i]
                )
            )
        })
        .collect();
    println!("  {}", labels.join("").trim_end());
    Ok(())
}
