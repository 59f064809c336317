//! Training speed: one SGD-free training step (`loss_and_gradients_with`: forward with
//! batch statistics, loss, backward, every gradient) against an inference forward pass of
//! the same batch, alternating in one run, with the FLOP rates of both.
//!
//! ```sh
//! cargo run --release --example bench_train -- [--model bc100|121] [--batch 64] [--rounds 5] [--profile]
//! ```
//!
//! With `--profile` it then runs `--rounds` more steps timed phase by phase
//! (`loss_and_gradients_profiled`) and prints the profile of the median one: where a
//! step's time goes, per stage and kind of work.
//!
//! With `--serve` it times steps for `tools/bench_compare.py --train` instead: after two
//! warm-up steps it reads a count `K` per line from stdin, runs `K` steps and answers
//! `{"times_ms": [...]}` on one line, until `quit`.
//!
//! `bc100` is the paper's DenseNet-BC (L = 100, k = 12) on 32x32 images (default batch
//! 64), `121` DenseNet-121 on 224x224 (default batch 16). A step counts 3x the forward
//! pass's multiply-adds (forward, input gradient, weight gradient), 2 FLOPs each; the
//! issue's target is a step FLOP rate at least half the forward's. Prints one line of
//! JSON per round and the medians.

use std::time::Instant;

use densenet::densenet;
use densenet::ndarray::Array4;
use densenet::runtime::train::{
    loss_and_gradients_profiled, loss_and_gradients_with, step_memory, StepConfig,
};
use densenet::runtime::{DynamicModel, Model, Network, Rng};

densenet! {
    DenseNetBC100<depth: 100, growth: 12, theta: 0.5, stem: cifar, classes: 10>;
    DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

const MIB: f64 = (1 << 20) as f64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which = arg("--model").unwrap_or_else(|| "bc100".into());
    let (arch, default_batch) = match which.as_str() {
        "bc100" => (DenseNetBC100::ARCHITECTURE, 64),
        "121" => (DenseNet121::ARCHITECTURE, 16),
        other => return Err(format!("unknown model {other}: bc100 or 121").into()),
    };
    let batch = arg("--batch").map_or(Ok(default_batch), |b| b.parse())?;
    let rounds = arg("--rounds").map_or(Ok(5), |r| r.parse())?;
    let [c, h, w] = arch.input;
    let classes = arch.classes;
    let mut model = DynamicModel::init(arch, 0)?;
    let mut rng = Rng::new(1);
    let x = Array4::from_shape_simple_fn((batch, c, h, w), || rng.normal());
    let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();
    let step = |model: &mut DynamicModel| {
        let start = Instant::now();
        let (loss, grads) = loss_and_gradients_with(
            model,
            x.view(),
            &labels,
            StepConfig::default(),
            &mut Rng::new(0),
        )
        .expect("a valid batch");
        assert!(loss.is_finite() && !grads.is_empty());
        // As `fit` does after its optimiser step: the next step reuses their storage.
        grads.recycle();
        start.elapsed().as_secs_f64()
    };
    // Warm-up: thread pools, workspaces, page faults. Two steps: the first plans the
    // step's buffers (allocating as it goes), the second faults in the planned ones.
    step(&mut model);
    step(&mut model);
    if std::env::args().any(|a| a == "--serve") {
        for line in std::io::stdin().lines() {
            let line = line?;
            let Ok(k) = line.trim().parse::<usize>() else {
                break;
            };
            let times: Vec<String> = (0..k)
                .map(|_| format!("{:.3}", step(&mut model) * 1e3))
                .collect();
            println!(r#"{{"times_ms":[{}]}}"#, times.join(","));
        }
        return Ok(());
    }
    model.forward(x.view())?;
    let (mut steps, mut forwards) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        steps.push(step(&mut model));
        let start = Instant::now();
        model.forward(x.view())?;
        forwards.push(start.elapsed().as_secs_f64());
        println!(
            r#"{{"round":{round},"step_ms":{:.1},"forward_ms":{:.1},"kept_mib":{:.1}}}"#,
            steps[round] * 1e3,
            forwards[round] * 1e3,
            step_memory().kept_bytes as f64 / MIB
        );
    }
    let (step, forward) = (median(steps), median(forwards));
    let flops = 2.0 * model.plan().macs as f64 * batch as f64;
    let (step_rate, forward_rate) = (3.0 * flops / step / 1e9, flops / forward / 1e9);
    println!(
        "{which}, batch {batch} at {h}x{w}, {} threads: step {:.1} ms ({:.1} images/s, \
         {step_rate:.1} GFLOP/s), forward {:.1} ms ({forward_rate:.1} GFLOP/s); \
         step rate / forward rate {:.2}",
        rayon::current_num_threads(),
        step * 1e3,
        batch as f64 / step,
        forward * 1e3,
        step_rate / forward_rate,
    );
    let memory = step_memory();
    let planned = memory.buffers;
    println!(
        "step memory kept {:.1} MiB: {} buffer requests in {} planned vectors of {:.1} MiB \
         (at most {:.1} MiB live at once), scratch {:.1} MiB, weight gradients {:.1} MiB",
        memory.kept_bytes as f64 / MIB,
        planned.requests,
        planned.slots,
        4.0 * planned.slot_floats as f64 / MIB,
        4.0 * planned.live_peak_floats as f64 / MIB,
        memory.scratch_bytes as f64 / MIB,
        (memory.kept_bytes - memory.scratch_bytes - 4 * planned.slot_floats) as f64 / MIB,
    );
    if std::env::args().any(|a| a == "--profile") {
        let mut profiles: Vec<_> = (0..rounds.max(1))
            .map(|_| {
                let (_, grads, profile) = loss_and_gradients_profiled(
                    &mut model,
                    x.view(),
                    &labels,
                    StepConfig::default(),
                    &mut Rng::new(0),
                )
                .expect("a valid batch");
                grads.recycle();
                profile
            })
            .collect();
        profiles.sort_by_key(|p| p.step_time());
        println!(
            "\nthe median of {} profiled steps:\n{}",
            profiles.len(),
            profiles[profiles.len() / 2]
        );
    }
    Ok(())
}
