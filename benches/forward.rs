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
use densenet::ndarray::{Array2, Array4, Ix4};
use densenet::runtime::reference;
use densenet::runtime::stage::stages;
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
fn by_stage(c: &mut Criterion) {
    let mut group = c.benchmark_group("densenet121_stages_b1");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let m = DenseNet121::init(0);
    let mut x = input_to_nhwc(batch(1, DenseNet121::INPUT).view(), DenseNet121::INPUT)
        .unwrap()
        .into_dyn();
    for (i, stage) in stages(&m).enumerate() {
        let input = x.into_dimensionality::<Ix4>().unwrap();
        group.bench_function(format!("{i}_{}", stage.name()), |b| {
            b.iter(|| reference::stage(stage, black_box(input.view())))
        });
        x = reference::stage(stage, input.view());
    }
    group.finish();
}

criterion_group!(benches, forward, by_stage);
criterion_main!(benches);
