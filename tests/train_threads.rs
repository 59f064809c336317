//! A training step computes the same bits on any number of threads: every phase splits
//! its work into tasks fixed by the shapes (never by the thread count) and reduces
//! their partial sums in task order, so batch statistics, weight gradients and the
//! block-buffer gradients do not depend on which thread ran what.

use densenet::densenet;
use densenet::ndarray::Array4;
use densenet::runtime::train::{loss_and_gradients_with, Gradients, StepConfig};
use densenet::runtime::{LayerRef, Model, Rng};

densenet! {
    /// DenseNet-BC with dropout: 40 images of 32x32 make 40,960 pixel rows in the first
    /// block, five of the bottleneck backward's 8,192-row tasks (whose partial sums are
    /// added in task order) and many 256-row chunks.
    Bc<growth: 12, blocks: [3, 3, 3], stem: cifar, theta: 0.5, input: [3, 32, 32], classes: 10, dropout: 0.1>;
    /// An ImageNet stem (7x7 conv, max pool), plain layers.
    Plain<growth: 8, blocks: [2, 2], init_features: 16, bottleneck: false, theta: 0.5, input: [3, 48, 48], classes: 5>;
    /// A block on a 14x14 map (DenseNet-121's third block's width), its 3x3s 64 → 16:
    /// narrow enough that the forward's choice of Winograd or the direct kernel for
    /// them must not follow the thread count.
    Narrow<growth: 16, blocks: [2], init_features: 16, input: [3, 56, 56], classes: 5>
}

/// Loss, gradients and the updated model of one step on `threads` threads.
fn step_on<M: Model + Clone>(
    model: &M,
    x: &Array4<f32>,
    labels: &[usize],
    threads: usize,
) -> (u32, Gradients, M) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    pool.install(|| {
        let mut model = model.clone();
        let (loss, grads) = loss_and_gradients_with(
            &mut model,
            x.view(),
            labels,
            StepConfig::default(),
            &mut Rng::new(7),
        )
        .expect("a valid batch");
        (loss.to_bits(), grads, model)
    })
}

fn batch(n: usize, [c, h, w]: [usize; 3]) -> Array4<f32> {
    let mut rng = Rng::new(11);
    Array4::from_shape_simple_fn((n, c, h, w), || rng.uniform() * 2.0 - 1.0)
}

/// Every gradient and every BatchNorm's running statistics, bit for bit, on 1, 2 and 3
/// threads.
fn same_bits_on_any_thread_count<M: Model + Clone>(model: M, n: usize) {
    let x = batch(n, model.architecture().input);
    let classes = model.architecture().classes;
    let labels: Vec<usize> = (0..n).map(|i| (i * 7) % classes).collect();
    let (loss, grads, after) = step_on(&model, &x, &labels, 1);
    let state = |m: &M| {
        let mut all = Vec::new();
        m.visit_layers(&mut |_, layer| {
            if let LayerRef::BatchNorm(norm) = layer {
                all.extend(norm.running_mean().iter().map(|v| v.to_bits()));
                all.extend(norm.running_var().iter().map(|v| v.to_bits()));
            }
        });
        all
    };
    for threads in [2, 3] {
        let (loss_t, grads_t, after_t) = step_on(&model, &x, &labels, threads);
        assert_eq!(loss, loss_t, "loss on {threads} threads");
        for ((name, ours), (name_t, theirs)) in grads.iter().zip(grads_t.iter()) {
            assert_eq!(name, name_t);
            assert!(
                ours == theirs,
                "{name:?}: gradient differs on {threads} threads"
            );
        }
        assert_eq!(grads.len(), grads_t.len());
        assert!(
            state(&after) == state(&after_t),
            "running statistics differ on {threads} threads"
        );
    }
}

#[test]
fn bottleneck_step_is_the_same_on_any_thread_count() {
    same_bits_on_any_thread_count(Bc::init(3), 40);
}

#[test]
fn plain_step_is_the_same_on_any_thread_count() {
    same_bits_on_any_thread_count(Plain::init(4), 12);
}

#[test]
fn narrow_map_step_is_the_same_on_any_thread_count() {
    // Batches of 8 and 2: 32 and 8 Winograd tasks, on either side of where the
    // forward's BN-ReLU-reading Winograd takes a 14-wide map on Zen 4 (the smaller
    // batch then runs the 3x3 from the padded map).
    for n in [8, 2] {
        same_bits_on_any_thread_count(Narrow::init(5), n);
    }
}
