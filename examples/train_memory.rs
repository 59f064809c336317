//! Training memory of DenseNet-BC (L=100, k=12) on a batch of 64 32x32 images: the peak
//! live heap of one real training step (`loss_and_gradients_with`, the memory-efficient
//! implementation: one shared concatenation buffer per block, BN-ReLU outputs
//! recomputed in the backward pass) against what a naive implementation keeps.
//!
//! Run with `cargo run --release --example train_memory`. Prints the table of
//! BENCHMARKS.md's "Training memory" section.
//!
//! Three figures, all in bytes of live heap (a counting global allocator):
//!
//! 1. **ours, measured**: peak live bytes during one `loss_and_gradients_with` step,
//!    above what was live before it (model and input batch), gradients included;
//! 2. **naive, measured**: the peak of a naive forward pass that keeps, as an autograd
//!    tape does for the backward pass, every tensor torchvision's DenseNet
//!    (`memory_efficient=False`, in-place ReLU) saves: per dense layer its concatenated
//!    input (BN1's input), BN1-ReLU output (conv1's input), bottleneck conv output (BN2's
//!    input) and BN2-ReLU output (conv2's input); per transition and for the head the
//!    block's concatenated output (BN's input) and BN-ReLU output; the input batch, the
//!    pooled features and the logits. Transient tensors (each layer's new features until
//!    the block's output is built, a transition's conv output until pooled) count
//!    towards the peak while they live. This is a lower bound for a naive step, whose
//!    backward pass adds gradient buffers on top;
//! 3. **naive, formula**: the saved tensors counted from the plan, `4·N·Σ elements`,
//!    per dense layer of input width `c` at `h × w`: `h·w·(2c + 2·bn·k)` (bn·k = 48
//!    bottleneck channels), per block `2·h·w·c_out` for the BN after it, plus the input
//!    and the head's `C + classes`. The example checks that the measured tape holds
//!    exactly this many elements.
//!
//! The formula of what our tape keeps: the input batch, each block's buffer
//! (`h·w·c_out`), each bottleneck conv's output (`h·w·bn·k`, BN2's input), the head's
//! pooled features; BN statistics and generator states are negligible.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use densenet::densenet_yaml;
use densenet::ndarray::{concatenate, Array4, Axis};
use densenet::runtime::layers::{avg_pool2d, global_avg_pool, DenseLayer};
use densenet::runtime::spec::Plan;
use densenet::runtime::stage::stages;
use densenet::runtime::train::{loss_and_gradients_with, release_step_memory, StepConfig};
use densenet::runtime::{input_to_nhwc, Model, Rng, StageRef};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes
// (the same harness as tests/concurrency.rs).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

densenet_yaml!("specs/densenet_bc100_k12.yaml");

const BATCH: usize = 64;

/// Runs `f` and returns its result and the peak live bytes above those live before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The naive forward pass: keeps, in `tape`, every tensor a naive autograd framework
/// saves for the backward pass (torchvision's DenseNet without `memory_efficient`,
/// ReLU in place, so a BN-ReLU pair saves the BN input and one output), and drops the
/// rest as torch would (a layer's new features once the block's output is built, a
/// transition's conv output once pooled). Returns the saved elements at the end.
fn naive_forward<M: Model>(model: &M, x: &Array4<f32>) -> usize {
    let mut tape: Vec<Array4<f32>> = Vec::new();
    let mut x = Some(input_to_nhwc(x.view(), model.plan().input).expect("the model's input"));
    for stage in stages(model) {
        let input = x.take().expect("each stage has an input");
        x = Some(match stage {
            StageRef::Stem { conv, norm } => {
                assert!(norm.is_none(), "a CIFAR stem");
                let y = conv.forward(input.view());
                tape.push(input); // conv0 saves its input
                y
            }
            StageRef::Block { layers, .. } => {
                let mut features = vec![input];
                for layer in layers {
                    let views: Vec<_> = features.iter().map(|f| f.view()).collect();
                    let cat = concatenate(Axis(3), &views).expect("same n, h, w");
                    let DenseLayer::Bottleneck {
                        norm1,
                        conv1,
                        norm2,
                        conv2,
                    } = layer
                    else {
                        panic!("DenseNet-BC has bottleneck layers")
                    };
                    let r1 = norm1.forward_relu(cat.view());
                    let z = conv1.forward(r1.view());
                    let r2 = norm2.forward_relu(z.view());
                    let new = conv2.forward(r2.view());
                    // BN1 saves the concatenation, conv1 the BN1-ReLU output, BN2 the
                    // bottleneck output, conv2 the BN2-ReLU output.
                    tape.extend([cat, r1, z, r2]);
                    features.push(new);
                }
                let views: Vec<_> = features.iter().map(|f| f.view()).collect();
                concatenate(Axis(3), &views).expect("same n, h, w")
            }
            StageRef::Transition { norm, conv, .. } => {
                // torch's order: BN-ReLU, conv at full resolution, then the pool.
                let r = norm.forward_relu(input.view());
                let y = conv.forward(r.view());
                tape.extend([input, r]);
                avg_pool2d(y.view(), 2, 2)
            }
            StageRef::Head {
                norm, classifier, ..
            } => {
                let r = norm.forward_relu(input.view());
                let pooled = global_avg_pool(r.view());
                let logits = classifier.expect("a classifier").forward(pooled.view());
                tape.extend([input, r]);
                // The classifier saves its input, the loss its log-softmax.
                let saved = pooled.len() + logits.len();
                return saved + tape.iter().map(|t| t.len()).sum::<usize>();
            }
        });
    }
    unreachable!("a model ends with its head")
}

/// Elements per image that the naive tape keeps, from the plan (see the module docs).
fn naive_formula(
    plan: &Plan,
    input: [usize; 3],
    growth: usize,
    bn: usize,
    classes: usize,
) -> usize {
    let [c, h, w] = input;
    let mut total = c * h * w;
    for block in &plan.blocks {
        let hw = block.height * block.width;
        for j in 0..block.layers {
            let c = block.c_in + j * growth;
            total += hw * (2 * c + 2 * bn * growth);
        }
        // The next transition's (or the head's) BN input and BN-ReLU output.
        total += 2 * hw * block.c_out;
    }
    total + plan.head_channels + classes
}

/// Elements per image that our tape keeps, from the plan.
fn ours_formula(plan: &Plan, input: [usize; 3], growth: usize, bn: usize, classes: usize) -> usize {
    let [c, h, w] = input;
    let mut total = c * h * w + plan.head_channels + classes;
    for block in &plan.blocks {
        let hw = block.height * block.width;
        total += hw * block.c_out + block.layers * hw * bn * growth;
    }
    total
}

fn main() {
    type Net = DenseNetBC100K12;
    let arch = Net::ARCHITECTURE;
    let plan = Plan::new(&arch);
    let (growth, bn) = (arch.growth, arch.bottleneck.expect("DenseNet-BC"));
    let x = Array4::from_shape_fn((BATCH, 3, 32, 32), |(n, c, y, x)| {
        ((n * 13 + c * 7 + y * 3 + x) % 23) as f32 / 23.0 - 0.5
    });
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
    let mut model = Net::init(0);
    let param_bytes = 4 * Net::PARAMS as usize;

    // One warm-up step (thread pools, lazily allocated scratch) outside the count.
    let mut rng = Rng::new(0);
    loss_and_gradients_with(
        &mut model,
        x.view(),
        &labels,
        StepConfig::default(),
        &mut rng,
    )
    .expect("a valid batch");
    // The step memory a thread keeps between steps is the step's own: free the
    // warm-up's, so that the measured step allocates (and counts) all of it.
    release_step_memory();
    let start = Instant::now();
    let ((loss, grads), ours) = peak_of(|| {
        loss_and_gradients_with(
            &mut model,
            x.view(),
            &labels,
            StepConfig::default(),
            &mut rng,
        )
        .expect("a valid batch")
    });
    let step_secs = start.elapsed().as_secs_f64();
    drop(grads);

    let start = Instant::now();
    let (naive_elems, naive) = peak_of(|| naive_forward(&model, &x));
    let naive_secs = start.elapsed().as_secs_f64();
    let naive_formula = 4 * BATCH * naive_formula(&plan, arch.input, growth, bn, arch.classes);
    let ours_formula = 4 * BATCH * ours_formula(&plan, arch.input, growth, bn, arch.classes);
    assert_eq!(
        4 * naive_elems,
        naive_formula,
        "the naive tape holds exactly the tensors of the formula"
    );

    println!(
        "{} ({} parameters, {:.1} MiB), batch {BATCH} of 3x32x32; step loss {loss:.4} in {step_secs:.2} s, naive forward {naive_secs:.2} s",
        arch.name,
        Net::PARAMS,
        mib(param_bytes)
    );
    println!("| what | MiB | per image |");
    println!("|---|---:|---:|");
    let row = |what: &str, bytes: usize| {
        println!(
            "| {what} | {:.1} | {:.2} MiB |",
            mib(bytes),
            mib(bytes) / BATCH as f64
        );
    };
    row(
        "ours, measured: peak of one training step (forward + backward, gradients included)",
        ours,
    );
    row("ours, formula: activations the tape keeps", ours_formula);
    row(
        "naive, measured: peak of a forward that keeps every saved tensor",
        naive,
    );
    row(
        "naive, formula: the saved tensors (see the formula)",
        naive_formula,
    );
    println!(
        "ratio naive/ours: {:.2}x (measured peaks), {:.2}x (kept activations)",
        naive as f64 / ours as f64,
        naive_formula as f64 / ours_formula as f64
    );
}
