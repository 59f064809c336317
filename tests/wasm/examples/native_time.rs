//! The host's time for what `run.mjs` times in wasm: a forward pass of each fixture
//! model on its batch of 2 (median of 5 after a warm-up), for BENCHMARKS.md's wasm vs
//! native comparison.
//!
//! `cargo run --release -p densenet-wasm-test --example native_time`

use std::time::Instant;

use densenet_wasm_test::{fixtures, forward};

fn main() {
    let names = ["torchvision_small", "cifar_bc", "keras_small"];
    for index in 0..fixtures() {
        forward(index, 1);
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                forward(index, 1);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{}: forward {:.2} ms (batch of 2), {} threads",
            names[index as usize],
            times[2],
            rayon_threads()
        );
    }
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into())
}
