//! Forward-pass benchmarks: DenseNet-121 (224x224) at batch 1, its stages one by one,
//! and the CIFAR DenseNet-BC (L=100, k=12) at batch 16.
//!
//! ```sh
//! cargo bench --bench forward                        # all threads of the global rayon pool
//! RAYON_NUM_THREADS=1 cargo bench --bench forward    # one thread
//! cargo bench --bench forward -- --quick stages      # a quick look at the per-stage split
//! ```
//!
//! Sample counts are small (a DenseNet-121 pass takes tens of milliseconds) so the whole
//! file runs in a few minutes; the 2-core reference machine is noisy, so compare runs
//! made back to back, or use `tools/bench_compare.py` for side-by-side numbers.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use densenet::ndarray::{Array2, Array4};
use densenet::runtime::{input_to_nhwc, Workspace};
use densenet::{densenet, densenet_yaml};

densenet! {
    /// DenseNet-121, torchvision's `densenet121` layout.
    DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>
}

// The paper's CIFAR DenseNet-BC (L=100, k=12), from the preset.
densenet_yaml!("specs/densenet_bc100_k12.yaml");

/// A deterministic NCHW batch with values in [-0.5, 0.5).
fn batch(n: usize, [c, h, w]: [usize; 3]) -> Array4<f32> {
    Array4::from_shape_fn((n, c, h, w), |(n, c, y, x)| {
        ((n * 7 + c * 5 + y * 3 + x) % 17) as f32 / 17.0 - 0.5
    })
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));

    let model = DenseNet121::init(0);
    let x = batch(1, DenseNet121::INPUT);
    group.throughput(Throughput::Elements(1));
    group.bench_with_input(BenchmarkId::new("densenet121", "b1"), &x, |b, x| {
        b.iter(|| model.forward(black_box(x.view())).unwrap())
    });
    let mut ws = Workspace::new();
    let mut out = Array2::zeros((1, 1000));
    group.bench_with_input(BenchmarkId::new("densenet121_into", "b1"), &x, |b, x| {
        b.iter(|| {
            model
                .forward_into(black_box(x.view()), &mut ws, out.view_mut())
                .unwrap()
        })
    });

    let model = DenseNetBC100K12::init(0);
    let x = batch(16, DenseNetBC100K12::INPUT);
    group.throughput(Throughput::Elements(16));
    group.bench_with_input(BenchmarkId::new("densenet_bc100_k12", "b16"), &x, |b, x| {
        b.iter(|| model.forward(black_box(x.view())).unwrap())
    });
    let mut out = Array2::zeros((16, 10));
    group.bench_with_input(
        BenchmarkId::new("densenet_bc100_k12_into", "b16"),
        &x,
        |b, x| {
            b.iter(|| {
                model
                    .forward_into(black_box(x.view()), &mut ws, out.view_mut())
                    .unwrap()
            })
        },
    );
    group.finish();
}

/// DenseNet-121 at batch 1, stage by stage, each on the real output of the stage before:
/// where the time of a forward pass goes.
fn stages(c: &mut Criterion) {
    let mut group = c.benchmark_group("densenet121_stages_b1");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let m = DenseNet121::init(0);
    let input = input_to_nhwc(batch(1, DenseNet121::INPUT).view(), DenseNet121::INPUT).unwrap();
    let x0 = m.stem.forward(input.view());
    let x1 = m.block1.forward(x0.view());
    let t1 = m.transition1.forward(x1.view());
    let x2 = m.block2.forward(t1.view());
    let t2 = m.transition2.forward(x2.view());
    let x3 = m.block3.forward(t2.view());
    let t3 = m.transition3.forward(x3.view());
    let x4 = m.block4.forward(t3.view());

    group.bench_function("0_stem", |b| {
        b.iter(|| m.stem.forward(black_box(input.view())))
    });
    group.bench_function("1_block1", |b| {
        b.iter(|| m.block1.forward(black_box(x0.view())))
    });
    group.bench_function("2_transition1", |b| {
        b.iter(|| m.transition1.forward(black_box(x1.view())))
    });
    group.bench_function("3_block2", |b| {
        b.iter(|| m.block2.forward(black_box(t1.view())))
    });
    group.bench_function("4_transition2", |b| {
        b.iter(|| m.transition2.forward(black_box(x2.view())))
    });
    group.bench_function("5_block3", |b| {
        b.iter(|| m.block3.forward(black_box(t2.view())))
    });
    group.bench_function("6_transition3", |b| {
        b.iter(|| m.transition3.forward(black_box(x3.view())))
    });
    group.bench_function("7_block4", |b| {
        b.iter(|| m.block4.forward(black_box(t3.view())))
    });
    group.bench_function("8_head", |b| {
        b.iter(|| m.head.forward(black_box(x4.view())))
    });
    group.finish();
}

criterion_group!(benches, forward, stages);
criterion_main!(benches);
