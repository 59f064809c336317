//! Hot-kernel benchmarks on DenseNet-121's shapes at batch 1 (NHWC: pixels are the
//! GEMM's rows, `C[pixels × Cout] = X[pixels × K] · W[K × Cout]`).
//!
//! ```sh
//! cargo bench --bench kernels                          # all threads of the global rayon pool
//! RAYON_NUM_THREADS=1 cargo bench --bench kernels      # one thread
//! cargo bench --bench kernels -- --quick gemm          # only the GEMMs, short
//! ```
//!
//! GEMM throughput is reported in elements/s where one element is one FLOP
//! (`2·m·n·k` per call), so "Gelem/s" reads as GFLOP/s. Note that the runtime's
//! `gemm` only uses rayon's threads for products of at least 2²⁵ multiply-adds, so the
//! 14x14 and 7x7 shapes run on one thread whatever `RAYON_NUM_THREADS` says.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use densenet::ndarray::{Array1, Array4};
use densenet::runtime::kernels::direct_conv::{
    direct_conv, force_direct, winograd_conv, ConvShape, ConvWeight, Epilogue, ImageLayout,
    PackedWeight, WinogradInput,
};
use densenet::runtime::kernels::gemm::{gemm, gemm_unpacked, MatMut, MatRef};
use densenet::runtime::kernels::im2col::{im2col, Window};
use densenet::runtime::layers::{avg_pool2d, max_pool2d, BatchNorm2d, Conv2d, Conv2dConfig};
use densenet::runtime::Rng;

/// `len` deterministic values in [-0.5, 0.5).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.uniform() - 0.5).collect()
}

fn nhwc(n: usize, h: usize, w: usize, c: usize, seed: u64) -> Array4<f32> {
    Array4::from_shape_vec((n, h, w, c), data(n * h * w * c, seed)).unwrap()
}

fn short<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

/// `(name, m, k, n)`: `C[m × n] = A[m × k] · B[k × n]`, with how often DenseNet-121 runs
/// that shape (or one close to it) at batch 1.
const GEMM_SHAPES: [(&str, usize, usize, usize); 7] = [
    // Block 1's last bottleneck: 56x56 pixels, 64 + 5·32 = 256 channels in, 4k = 128 out.
    ("1x1_56x56_256to128", 3136, 256, 128),
    // Every 56x56 3x3 conv (6 of them) as im2col GEMM: K = 9·128.
    ("3x3_56x56_im2col", 3136, 1152, 32),
    // 28x28 3x3 conv (12 of them).
    ("3x3_28x28_im2col", 784, 1152, 32),
    // Block 3's widest bottleneck: 14x14, 256 + 23·32 = 992 channels in.
    ("1x1_14x14_992to128", 196, 992, 128),
    // 14x14 3x3 conv (24 of them).
    ("3x3_14x14_im2col", 196, 1152, 32),
    // 7x7 3x3 conv (16 of them).
    ("3x3_7x7_im2col", 49, 1152, 32),
    // The classifier at batch 1: a GEMV (1 × 1024 · 1024 × 1000).
    ("classifier_gemv", 1, 1024, 1000),
];

fn gemms(c: &mut Criterion) {
    let mut group = short(c, "gemm");
    for (i, &(name, m, k, n)) in GEMM_SHAPES.iter().enumerate() {
        let a = data(m * k, 2 * i as u64);
        let b = data(k * n, 2 * i as u64 + 1);
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.bench_function(BenchmarkId::new(name, format!("{m}x{k}x{n}")), |bench| {
            bench.iter(|| {
                gemm(
                    1.0,
                    MatRef::row_major(black_box(&a), m, k),
                    MatRef::row_major(black_box(&b), k, n),
                    0.0,
                    MatMut::row_major(&mut out, m, n),
                );
                black_box(&out);
            })
        });
    }
    // The dense-block write pattern: the output is a 32-column range of a wider buffer
    // (block 1's 256 channels), row stride 256.
    let (m, k, n, width) = (3136, 1152, 32, 256);
    let a = data(m * k, 100);
    let b = data(k * n, 101);
    let mut buf = vec![0.0f32; m * width];
    group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
    group.bench_function(
        BenchmarkId::new("3x3_56x56_im2col_strided_out", format!("{m}x{k}x{n}")),
        |bench| {
            bench.iter(|| {
                gemm(
                    1.0,
                    MatRef::row_major(black_box(&a), m, k),
                    MatRef::row_major(black_box(&b), k, n),
                    0.0,
                    MatMut::new(&mut buf[224..], m, n, width, 1),
                );
                black_box(&buf);
            })
        },
    );
    group.finish();
}

/// `(name, m, k, n, a_transposed)`: the training step's products, one thread.
/// `a_transposed` marks a weight gradient (`A` is an activation matrix's transpose,
/// `k` its pixels).
const TRAINING_SHAPES: [(&str, usize, usize, usize, bool); 5] = [
    // DenseNet-121 block 1, a bottleneck's 1x1 weight gradient over one 384-row chunk:
    // normedᵀ (256 × 384) · dz (384 × 128).
    ("121_1x1_weight_grad", 256, 384, 128, true),
    // Its input gradient over the chunk: dz (384 × 128) · Wᵀ (128 × 256).
    ("121_1x1_input_grad", 384, 128, 256, false),
    // One tap of a 56x56 3x3 weight gradient over an 8,192-pixel task, transposed:
    // dyᵀ (32 × 8192) · x (8192 × 128).
    ("121_3x3_tap_weight_grad", 32, 8192, 128, true),
    // DenseNet-BC-100 (k = 12): a 1x1 weight gradient over a 480-row chunk.
    ("bc100_1x1_weight_grad", 200, 480, 48, true),
    // One tap of its 3x3 weight gradient: dyᵀ (12 × 8192) · x (8192 × 48).
    ("bc100_3x3_tap_weight_grad", 12, 8192, 48, true),
];

/// The `gemm` crate against [`gemm_unpacked`] on the training step's shapes (the
/// crate packs both operands on every call; the unpacked tiles read them in place).
fn training_gemms(c: &mut Criterion) {
    let mut group = short(c, "training_gemm");
    for (i, &(name, m, k, n, a_transposed)) in TRAINING_SHAPES.iter().enumerate() {
        let a = data(m * k, 20 + 2 * i as u64);
        let b = data(k * n, 21 + 2 * i as u64);
        let a_view = || {
            if a_transposed {
                MatRef::row_major(black_box(&a), k, m).t()
            } else {
                MatRef::row_major(black_box(&a), m, k)
            }
        };
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.bench_function(BenchmarkId::new("crate", name), |bench| {
            bench.iter(|| {
                let b = MatRef::row_major(black_box(&b), k, n);
                gemm(1.0, a_view(), b, 0.0, MatMut::row_major(&mut out, m, n));
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("unpacked", name), |bench| {
            bench.iter(|| {
                let b = MatRef::row_major(black_box(&b), k, n);
                gemm_unpacked(a_view(), b, MatMut::row_major(&mut out, m, n), false);
                black_box(&out);
            })
        });
    }
    group.finish();
}

/// The training step's 3x3 input gradients of DenseNet-121 at batch 16 (the padded `dy`,
/// 32 channels, convolved with the flipped kernel into 128): the direct kernel against
/// Winograd F(2x2, 3x3) (`winograd_conv`), in the same run.
fn training_input_gradients(c: &mut Criterion) {
    let mut group = short(c, "training_input_gradient");
    for (i, &hw) in [56usize, 28, 14].iter().enumerate() {
        let (n, c_in, c_out) = (16, 32, 128);
        let s = ConvShape {
            n,
            out_h: hw,
            out_w: hw,
            c_in,
            c_out,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
        };
        let (il, ol) = (
            ImageLayout::dense(hw + 2, hw + 2, c_in),
            ImageLayout::dense(hw, hw, c_out),
        );
        let input = data(n * (hw + 2) * (hw + 2) * c_in, 40 + 2 * i as u64);
        let weight = data(9 * c_in * c_out, 41 + 2 * i as u64);
        let mut out = vec![0.0f32; n * hw * hw * c_out];
        let name = format!("{hw}x{hw}_b16_32to128");
        group.throughput(Throughput::Elements(2 * s.macs() as u64));
        group.bench_function(BenchmarkId::new("direct", &name), |bench| {
            bench.iter(|| {
                let weight = ConvWeight::Hwio(black_box(&weight));
                let store = Epilogue::Store;
                direct_conv(&input, il, store, weight, s, store, &mut out, ol, true);
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("winograd", &name), |bench| {
            bench.iter(|| {
                let input = WinogradInput::Padded {
                    data: &input,
                    layout: il,
                };
                winograd_conv(input, black_box(&weight), s, &mut out, ol, true);
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn convs(c: &mut Criterion) {
    let mut group = short(c, "conv");
    let mut rng = Rng::new(7);
    let pad1 = Conv2dConfig {
        stride: 1,
        padding: 1,
    };

    // A 56x56 3x3 conv (128 → 32) with padding 1: im2col + GEMM, allocating its output
    // and scratch.
    let conv3 = Conv2d::init(128, 32, 3, pad1, &mut rng);
    let x = nhwc(1, 56, 56, 128, 1);
    group.throughput(Throughput::Elements(2 * 3136 * 1152 * 32));
    group.bench_function("3x3_56x56_128to32/forward", |b| {
        b.iter(|| conv3.forward(black_box(x.view())))
    });
    // The same through `forward_into` with a reused scratch buffer, as dense blocks call it.
    let xs = x.as_slice().unwrap();
    let mut out = vec![0.0f32; 3136 * 32];
    let mut scratch = Vec::new();
    group.bench_function("3x3_56x56_128to32/forward_into", |b| {
        b.iter(|| {
            conv3.forward_into(
                black_box(xs),
                1,
                56,
                56,
                MatMut::row_major(&mut out, 3136, 32),
                &mut scratch,
            );
            black_box(&out);
        })
    });

    // A 7x7 3x3 conv (128 → 32), block 4.
    let x7 = nhwc(1, 7, 7, 128, 2);
    group.throughput(Throughput::Elements(2 * 49 * 1152 * 32));
    group.bench_function("3x3_7x7_128to32/forward", |b| {
        b.iter(|| conv3.forward(black_box(x7.view())))
    });

    // A 56x56 1x1 bottleneck (256 → 128): no im2col (the direct kernel, or a GEMM).
    let conv1 = Conv2d::init(256, 128, 1, Conv2dConfig::default(), &mut rng);
    let x = nhwc(1, 56, 56, 256, 3);
    group.throughput(Throughput::Elements(2 * 3136 * 256 * 128));
    group.bench_function("1x1_56x56_256to128/forward", |b| {
        b.iter(|| conv1.forward(black_box(x.view())))
    });

    // The stem: 7x7 stride 2 pad 3, 3 → 64 at 224x224.
    let stem = Conv2d::init(
        3,
        64,
        7,
        Conv2dConfig {
            stride: 2,
            padding: 3,
        },
        &mut rng,
    );
    let x = nhwc(1, 224, 224, 3, 4);
    group.throughput(Throughput::Elements(2 * 12544 * 147 * 64));
    group.bench_function("7x7s2_224x224_3to64/forward", |b| {
        b.iter(|| stem.forward(black_box(x.view())))
    });
    group.finish();
}

/// The direct (im2col-free) convolution against the im2col + GEMM path on the same
/// shapes, all writing a 32-column range of the block buffer as dense layers do.
/// `im2col` rows reuse their scratch; `direct` rows read a zero-padded input on the
/// direct kernel (`force_direct`), `default` rows the path `direct_conv` picks (Winograd
/// at 56x56 and 28x28).
fn direct_convs(c: &mut Criterion) {
    let mut group = short(c, "direct_conv");
    let mut rng = Rng::new(11);
    let pad1 = Conv2dConfig {
        stride: 1,
        padding: 1,
    };
    let conv3 = Conv2d::init(128, 32, 3, pad1, &mut rng);
    // (spatial size, block buffer width) of DenseNet-121's four blocks.
    for (hw, width) in [(56, 256), (28, 512), (14, 1024), (7, 1024)] {
        let pixels = hw * hw;
        group.throughput(Throughput::Elements((2 * pixels * 1152 * 32) as u64));
        let x = data(pixels * 128, 20);
        let mut buf = vec![0.0f32; pixels * width];
        let mut scratch = Vec::new();
        group.bench_function(format!("3x3_{hw}x{hw}_128to32/im2col"), |b| {
            b.iter(|| {
                conv3.forward_into(
                    black_box(&x),
                    1,
                    hw,
                    hw,
                    MatMut::new(&mut buf[width - 32..], pixels, 32, width, 1),
                    &mut scratch,
                );
                black_box(&buf);
            })
        });
        let padded = data((hw + 2) * (hw + 2) * 128, 21);
        let weight3 = conv3.weight();
        let weight = weight3.as_slice().unwrap();
        let shape = ConvShape {
            n: 1,
            out_h: hw,
            out_w: hw,
            c_in: 128,
            c_out: 32,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
        };
        let out_layout = ImageLayout {
            offset: width - 32,
            ..ImageLayout::dense(hw, hw, width)
        };
        for (label, direct) in [("direct", true), ("default", false)] {
            force_direct(direct);
            group.bench_function(format!("3x3_{hw}x{hw}_128to32/{label}"), |b| {
                b.iter(|| {
                    direct_conv(
                        black_box(&padded),
                        ImageLayout::dense(hw + 2, hw + 2, 128),
                        Epilogue::Store,
                        ConvWeight::Hwio(weight),
                        shape,
                        Epilogue::Store,
                        &mut buf,
                        out_layout,
                        true,
                    );
                    black_box(&buf);
                })
            });
        }
        force_direct(false);
    }
    // Bottlenecks (1x1 to 128) at 56x56 and 14x14, BN-ReLU epilogue into a padded buffer.
    for (hw, c_in) in [(56, 256), (14, 992)] {
        let pixels = hw * hw;
        group.throughput(Throughput::Elements((2 * pixels * c_in * 128) as u64));
        let conv1 = Conv2d::init(c_in, 128, 1, Conv2dConfig::default(), &mut rng);
        let x = data(pixels * c_in, 22);
        // HWIO, unpacked once (the conv stores 128 outputs panel-major).
        let weight1 = conv1.weight().into_owned();
        let weight1 = weight1.as_slice().unwrap();
        let mut out = vec![0.0f32; pixels * 128];
        group.bench_function(format!("1x1_{hw}x{hw}_{c_in}to128/gemm"), |b| {
            b.iter(|| {
                gemm(
                    1.0,
                    MatRef::row_major(black_box(&x), pixels, c_in),
                    MatRef::row_major(weight1, c_in, 128),
                    0.0,
                    MatMut::row_major(&mut out, pixels, 128),
                );
                black_box(&out);
            })
        });
        let scale = data(128, 23);
        let shift = data(128, 24);
        let mut padded = vec![0.0f32; (hw + 2) * (hw + 2) * 128];
        let shape = ConvShape {
            n: 1,
            out_h: hw,
            out_w: hw,
            c_in,
            c_out: 128,
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
        };
        let out_layout = ImageLayout {
            offset: (hw + 3) * 128,
            ..ImageLayout::dense(hw + 2, hw + 2, 128)
        };
        let packed = PackedWeight::from_hwio(weight1, c_in, 128);
        group.bench_function(format!("1x1_{hw}x{hw}_{c_in}to128/direct_bn_relu"), |b| {
            b.iter(|| {
                direct_conv(
                    black_box(&x),
                    ImageLayout::dense(hw, hw, c_in),
                    Epilogue::Store,
                    ConvWeight::Packed(&packed),
                    shape,
                    Epilogue::ScaleShiftRelu {
                        scale: &scale,
                        shift: &shift,
                    },
                    &mut padded,
                    out_layout,
                    true,
                );
                black_box(&padded);
            })
        });
    }
    group.finish();
}

fn im2cols(c: &mut Criterion) {
    let mut group = short(c, "im2col");
    let win = Window {
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        padding: 1,
    };
    for (h, ch) in [(56, 128), (7, 128)] {
        let x = data(h * h * ch, 5);
        let mut out = vec![0.0f32; h * h * 9 * ch];
        group.throughput(Throughput::Bytes((out.len() * 4) as u64));
        group.bench_function(format!("3x3_{h}x{h}x{ch}"), |b| {
            b.iter(|| {
                im2col(black_box(&x), 1, h, h, ch, win, &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn batch_norms(c: &mut Criterion) {
    let mut group = short(c, "batch_norm_relu_into");
    // `(name, pixels, channels read, row stride)`: a dense layer's norm1 reads the first
    // channels of its block's buffer; norm2 reads the contiguous 128-wide bottleneck.
    let cases = [
        ("56x56_norm1_128_of_256", 3136, 128, 256),
        ("56x56_norm2_128", 3136, 128, 128),
        ("14x14_norm1_992_of_1024", 196, 992, 1024),
        ("7x7_norm1_1000_of_1024", 49, 1000, 1024),
    ];
    for (i, (name, rows, ch, stride)) in cases.into_iter().enumerate() {
        let bn = BatchNorm2d::new(
            Array1::from_shape_fn(ch, |j| 0.5 + j as f32 * 1e-3),
            Array1::from_shape_fn(ch, |j| j as f32 * -1e-3),
            Array1::from_shape_fn(ch, |j| 0.01 * (j % 7) as f32),
            Array1::from_shape_fn(ch, |j| 1.0 + 0.01 * (j % 5) as f32),
            1e-5,
        )
        .unwrap();
        let x = data(rows * stride, i as u64);
        let mut out = vec![0.0f32; rows * ch];
        group.throughput(Throughput::Elements((rows * ch) as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                bn.forward_relu_into(black_box(&x), rows, stride, &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn pools(c: &mut Criterion) {
    let mut group = short(c, "pool");
    // The stem's 3x3/2 max pool on 112x112x64, and transition 1's 2x2 average pool.
    let x = nhwc(1, 112, 112, 64, 8);
    group.bench_function("max3x3s2_112x112x64", |b| {
        b.iter(|| max_pool2d(black_box(x.view()), 3, 2, 1))
    });
    let x = nhwc(1, 56, 56, 256, 9);
    group.bench_function("avg2x2_56x56x256", |b| {
        b.iter(|| avg_pool2d(black_box(x.view()), 2, 2))
    });
    group.finish();
}

criterion_group!(
    benches,
    gemms,
    training_gemms,
    training_input_gradients,
    convs,
    direct_convs,
    im2cols,
    batch_norms,
    pools
);
criterion_main!(benches);
