//! fp32 against bf16 and int8 on every convolution of DenseNet-121 at 224x224, by kind
//! (the shapes and layouts the runtime runs: bottleneck 1x1s with their BN-ReLU
//! prologue and epilogue into the 3x3's padded input, 3x3s into a column range of the
//! block buffer, pooled transitions, the stem), at batch 1 and 8, on 1 and 2 threads.
//! As in the runtime, a dense block's convolutions run image by image (the padded
//! input of the 3x3s is one image's scratch), the transitions and the stem on the
//! whole batch.
//!
//! ```sh
//! cargo run --release --example bench_lowp [-- --rounds 10 --batches 1,8 --threads 1,2 [KIND]]
//! ```
//!
//! `--avx-vnni` runs int8 on the 256-bit AVX-VNNI kernels even where AVX512-VNNI is.
//!
//! Variants, alternating within each round (their order rotating) so a slow spell of a
//! shared machine hits them all:
//! - `fp32`: `direct_conv` as the runtime calls it (weights with more than 32 outputs
//!   panel-major; Winograd for the 3x3s on 56x56 and 28x28 maps);
//! - `bf16`: `conv_bf16`, f32 inputs converted while packing (through the prologue),
//!   f32 outputs;
//! - `int8`: `conv_int8`, f32 inputs quantized while packing, f32 outputs; the stem
//!   (raw signed pixels, out of int8's scope) runs fp32;
//! - `int8 u8`: as an int8 model would chain them: the bottleneck 1x1 writes u8 (its
//!   epilogue requantized) into the 3x3's padded input, which the 3x3 reads in place.
//!
//! Weights are converted and packed once, before timing (as a model loads them);
//! activations are converted inside the timed calls. GFLOP/s count the direct
//! convolution's `2·MACs` (also for Winograd, which does fewer). Reported: the median
//! and the best round of each, and each low-precision variant's time over fp32's.

use std::hint::black_box;
use std::time::Instant;

use densenet::runtime::kernels::direct_conv::lowp::{
    conv_bf16, conv_int8, force_avx_vnni, Bf16Input, Bf16Output, Bf16Weight, Int8Input, Int8Output,
    Int8Weight, Precision,
};
use densenet::runtime::kernels::direct_conv::{
    direct_conv, ConvShape, ConvWeight, Epilogue, ImageLayout, PackedWeight, PACK,
};

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// An activation buffer of the runtime's arena, in f32 and (for the `int8 u8`
/// variant's padded 3x3 inputs) u8.
struct Buffer {
    f32: Vec<f32>,
    u8: Vec<u8>,
}

/// One convolution: its weights in every precision, and which buffers it reads and
/// writes, in the runtime's layouts (the layers of a block share its buffers, as in
/// the runtime's arena).
struct Case {
    kind: &'static str,
    shape: ConvShape,
    input: usize,
    in_layout: ImageLayout,
    weight: Vec<f32>,
    packed: Option<PackedWeight>,
    bf16: Bf16Weight,
    int8: Int8Weight,
    prologue: Option<(Vec<f32>, Vec<f32>)>,
    epilogue: Option<(Vec<f32>, Vec<f32>)>,
    output: usize,
    out_layout: ImageLayout,
    /// Images run one at a time (dense blocks, as the runtime runs them: their buffer
    /// and scratch stay in cache from layer to layer), each this far after the last in
    /// the input and the output (0: a one-image scratch reused); 1 for the transitions
    /// and the stem, whose shapes hold the batch.
    images: usize,
    steps: (usize, usize),
}

/// Every convolution of DenseNet-121 at one batch size, with its buffers.
struct Network {
    buffers: Vec<Buffer>,
    cases: Vec<Case>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Fp32,
    Bf16,
    Int8,
    Int8U8,
}

const VARIANTS: [Variant; 4] = [Variant::Fp32, Variant::Bf16, Variant::Int8, Variant::Int8U8];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Fp32 => "fp32",
            Variant::Bf16 => "bf16",
            Variant::Int8 => "int8",
            Variant::Int8U8 => "int8 u8",
        }
    }
}

fn ss(v: &Option<(Vec<f32>, Vec<f32>)>) -> Epilogue<'_> {
    match v {
        Some((s, t)) => Epilogue::ScaleShiftRelu { scale: s, shift: t },
        None => Epilogue::Store,
    }
}

impl Network {
    /// Runs image `image` of case `i` as `variant`.
    fn run(&mut self, i: usize, image: usize, variant: Variant) {
        let c = &self.cases[i];
        let mut in_layout = c.in_layout;
        let mut out_layout = c.out_layout;
        in_layout.offset += image * c.steps.0;
        out_layout.offset += image * c.steps.1;
        let mut out = std::mem::replace(
            &mut self.buffers[c.output],
            Buffer {
                f32: Vec::new(),
                u8: Vec::new(),
            },
        );
        let input = &self.buffers[c.input];
        let (pro, epi) = (ss(&c.prologue), ss(&c.epilogue));
        let stem = c.shape.kernel_h == 7;
        let int8_scale = 0.02;
        let result = match variant {
            Variant::Fp32 => {
                fp32(
                    c,
                    (&input.f32, in_layout),
                    pro,
                    epi,
                    (&mut out.f32, out_layout),
                );
                Ok(())
            }
            Variant::Int8 | Variant::Int8U8 if stem => {
                fp32(
                    c,
                    (&input.f32, in_layout),
                    pro,
                    epi,
                    (&mut out.f32, out_layout),
                );
                Ok(())
            }
            Variant::Bf16 => conv_bf16(
                Bf16Input::F32 {
                    data: black_box(&input.f32),
                    prologue: pro,
                },
                in_layout,
                &c.bf16,
                c.shape,
                epi,
                Bf16Output::F32(&mut out.f32),
                out_layout,
                true,
            ),
            Variant::Int8 | Variant::Int8U8 => {
                let u8_in = variant == Variant::Int8U8 && c.kind.starts_with("3x3");
                let u8_out = variant == Variant::Int8U8 && c.kind.starts_with("1x1");
                let input = if u8_in {
                    Int8Input::U8 {
                        data: black_box(&input.u8),
                        scale: int8_scale,
                    }
                } else {
                    Int8Input::F32 {
                        data: black_box(&input.f32),
                        prologue: pro,
                        scale: int8_scale,
                    }
                };
                let output = if u8_out {
                    Int8Output::U8 {
                        data: &mut out.u8,
                        scale: int8_scale,
                    }
                } else {
                    Int8Output::F32(&mut out.f32)
                };
                conv_int8(
                    input, in_layout, &c.int8, c.shape, epi, output, out_layout, true,
                )
            }
        };
        self.buffers[c.output] = out;
        result.expect("the convolution ran");
    }
}

fn fp32(
    c: &Case,
    (input, in_layout): (&[f32], ImageLayout),
    pro: Epilogue<'_>,
    epi: Epilogue<'_>,
    (out, out_layout): (&mut [f32], ImageLayout),
) {
    let weight = match &c.packed {
        Some(packed) => ConvWeight::Packed(packed),
        None => ConvWeight::Hwio(&c.weight),
    };
    let ran = direct_conv(
        black_box(input),
        in_layout,
        pro,
        weight,
        c.shape,
        epi,
        out,
        out_layout,
        true,
    );
    assert!(ran, "no AVX-512 or AVX2");
}

/// A case with random weights (and prologue, epilogue) of its shape.
#[allow(clippy::too_many_arguments)]
fn case(
    kind: &'static str,
    shape: ConvShape,
    (input, in_layout): (usize, ImageLayout),
    prologue: bool,
    epilogue: bool,
    (output, out_layout): (usize, ImageLayout),
    seed: u64,
) -> Case {
    let s = shape;
    let rows = s.kernel_h * s.kernel_w * s.c_in;
    let weight = data(rows * s.c_out, seed);
    let hwio = densenet::ndarray::ArrayView4::from_shape(
        (s.kernel_h, s.kernel_w, s.c_in, s.c_out),
        &weight,
    )
    .unwrap();
    Case {
        kind,
        shape,
        input,
        in_layout,
        packed: (s.c_out > PACK).then(|| PackedWeight::from_hwio(&weight, rows, s.c_out)),
        bf16: Bf16Weight::from_hwio(hwio).unwrap(),
        int8: Int8Weight::quantize(hwio).unwrap(),
        weight,
        prologue: prologue.then(|| (data(s.c_in, seed + 2), data(s.c_in, seed + 3))),
        epilogue: epilogue.then(|| (data(s.c_out, seed + 4), data(s.c_out, seed + 5))),
        output,
        out_layout,
        images: 1,
        steps: (0, 0),
    }
}

/// Every convolution of DenseNet-121 at `n` images of 224x224.
fn network(n: usize) -> Network {
    let mut buffers = Vec::new();
    let mut buffer = |layout: ImageLayout, images: usize, seed: u64| {
        let f32 = data(layout.image_stride * images, seed);
        let u8 = f32.iter().map(|&x| (x.max(0.0) * 500.0) as u8).collect();
        buffers.push(Buffer { f32, u8 });
        buffers.len() - 1
    };
    let mut cases = Vec::new();
    let blocks = [(56, 64, 6), (28, 128, 12), (14, 256, 24), (7, 512, 16)];
    for (bi, &(hw, c0, layers)) in blocks.iter().enumerate() {
        let c_total = c0 + 32 * layers;
        let block_layout = ImageLayout::dense(hw, hw, c_total);
        let padded_layout = ImageLayout::dense(hw + 2, hw + 2, 128);
        // The block buffer holds the batch; the 3x3's padded input is one image's
        // scratch, as in the runtime's arena.
        let block = buffer(block_layout, n, bi as u64);
        let padded = buffer(padded_layout, 1, 10 + bi as u64);
        for l in 0..layers {
            let c_in = c0 + 32 * l;
            let seed = (bi * 100 + l) as u64 * 10;
            // Bottleneck 1x1: the block buffer's first `c_in` channels through norm1,
            // norm2's epilogue into the interior of the 3x3's padded input.
            cases.push(case(
                ["1x1 56x56", "1x1 28x28", "1x1 14x14", "1x1 7x7"][bi],
                ConvShape {
                    n: 1,
                    out_h: hw,
                    out_w: hw,
                    c_in,
                    c_out: 128,
                    kernel_h: 1,
                    kernel_w: 1,
                    stride: 1,
                },
                (block, block_layout),
                true,
                true,
                (
                    padded,
                    ImageLayout {
                        offset: (hw + 3) * 128,
                        ..padded_layout
                    },
                ),
                seed,
            ));
            let last = cases.len() - 1;
            (cases[last].images, cases[last].steps) = (n, (block_layout.image_stride, 0));
            // 3x3: the padded map into the block buffer's next 32 channels.
            cases.push(case(
                ["3x3 56x56", "3x3 28x28", "3x3 14x14", "3x3 7x7"][bi],
                ConvShape {
                    n: 1,
                    out_h: hw,
                    out_w: hw,
                    c_in: 128,
                    c_out: 32,
                    kernel_h: 3,
                    kernel_w: 3,
                    stride: 1,
                },
                (padded, padded_layout),
                false,
                false,
                (
                    block,
                    ImageLayout {
                        offset: c_in,
                        ..block_layout
                    },
                ),
                seed + 7,
            ));
            let last = cases.len() - 1;
            (cases[last].images, cases[last].steps) = (n, (0, block_layout.image_stride));
        }
        if bi < 3 {
            // Pooled first (BN-ReLU and the average pool in one pass), then the 1x1
            // into the next block buffer's first channels (a separate buffer here).
            let (h2, c_out) = (hw / 2, c_total / 2);
            let next_total = c_out + 32 * blocks[bi + 1].2;
            let pooled_layout = ImageLayout::dense(h2, h2, c_total);
            let next_layout = ImageLayout::dense(h2, h2, next_total);
            let pooled = buffer(pooled_layout, n, 20 + bi as u64);
            let next = buffer(next_layout, n, 30 + bi as u64);
            cases.push(case(
                "transition",
                ConvShape {
                    n,
                    out_h: h2,
                    out_w: h2,
                    c_in: c_total,
                    c_out,
                    kernel_h: 1,
                    kernel_w: 1,
                    stride: 1,
                },
                (pooled, pooled_layout),
                false,
                false,
                (next, next_layout),
                900 + bi as u64 * 10,
            ));
        }
    }
    let image_layout = ImageLayout::dense(230, 230, 3);
    let stem_layout = ImageLayout::dense(112, 112, 64);
    let image = buffer(image_layout, n, 40);
    let stem = buffer(stem_layout, n, 41);
    cases.push(case(
        "stem",
        ConvShape {
            n,
            out_h: 112,
            out_w: 112,
            c_in: 3,
            c_out: 64,
            kernel_h: 7,
            kernel_w: 7,
            stride: 2,
        },
        (image, image_layout),
        false,
        true,
        (stem, stem_layout),
        990,
    ));
    Network { buffers, cases }
}

fn list(args: &[String], flag: &str, default: &[usize]) -> Vec<usize> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1]
            .split(',')
            .map(|x| x.parse().expect("a number"))
            .collect(),
        None => default.to_vec(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = list(&args, "--rounds", &[10])[0];
    let batches = list(&args, "--batches", &[1, 8]);
    let threads = list(&args, "--threads", &[1, 2]);
    let only: Option<&String> = args
        .iter()
        .enumerate()
        .find(|(i, a)| {
            let after_value_flag =
                *i > 0 && ["--rounds", "--batches", "--threads"].contains(&args[i - 1].as_str());
            !a.starts_with("--") && !after_value_flag
        })
        .map(|(_, a)| a);
    if args.iter().any(|a| a == "--avx-vnni") {
        force_avx_vnni(true);
    }
    for p in [Precision::Bf16, Precision::Int8] {
        match p.isa() {
            Some(isa) => println!("{p}: {isa}"),
            None => println!("{p}: not on this CPU"),
        }
    }
    let variants: Vec<Variant> = VARIANTS
        .into_iter()
        .filter(|v| match v {
            Variant::Fp32 => true,
            Variant::Bf16 => Precision::Bf16.available(),
            Variant::Int8 | Variant::Int8U8 => Precision::Int8.available(),
        })
        .collect();
    let pools: Vec<(usize, rayon::ThreadPool)> = threads
        .iter()
        .map(|&t| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build();
            (t, pool.expect("a thread pool"))
        })
        .collect();
    let mut networks: Vec<(usize, Network)> = batches.iter().map(|&n| (n, network(n))).collect();
    let mut kinds: Vec<&str> = Vec::new();
    for c in &networks[0].1.cases {
        if !kinds.contains(&c.kind) && only.is_none_or(|o| o == c.kind) {
            kinds.push(c.kind);
        }
    }
    // times[network][pool][kind][variant]: one entry per round (seconds).
    let mut times =
        vec![vec![vec![vec![Vec::new(); variants.len()]; kinds.len()]; pools.len()]; batches.len()];
    for round in 0..=rounds {
        for (ni, (_, net)) in networks.iter_mut().enumerate() {
            for (pi, (_, pool)) in pools.iter().enumerate() {
                for (k, kind) in kinds.iter().enumerate() {
                    let ids: Vec<usize> = (0..net.cases.len())
                        .filter(|&i| net.cases[i].kind == *kind)
                        .collect();
                    for j in 0..variants.len() {
                        // The variants take turns going first.
                        let vi = (j + round) % variants.len();
                        let images = net.cases[ids[0]].images;
                        let elapsed = pool.install(|| {
                            let start = Instant::now();
                            // A dense block's layers image by image, as the runtime.
                            for image in 0..images {
                                for &i in &ids {
                                    net.run(i, image, variants[vi]);
                                }
                            }
                            start.elapsed().as_secs_f64()
                        });
                        // Round 0 warms up (thread-local scratch, caches, page faults).
                        if round > 0 {
                            times[ni][pi][k][vi].push(elapsed);
                        }
                    }
                }
            }
        }
    }
    println!(
        "{rounds} rounds; ms = median (best) of the rounds; xR = median of the per-round \
         ratios to fp32; GF = GFLOP/s of the median"
    );
    for (ni, (n, net)) in networks.iter().enumerate() {
        for (pi, (t, _)) in pools.iter().enumerate() {
            println!("\nbatch {n}, {t} thread(s)");
            print!("{:12}", "kind");
            for v in &variants {
                print!(" | {:>24}", v.name());
            }
            println!();
            let mut total = vec![vec![0.0; rounds]; variants.len()];
            let mut total_flop = 0.0;
            let mut rows: Vec<(String, Vec<Vec<f64>>, f64)> = Vec::new();
            for (k, kind) in kinds.iter().enumerate() {
                let flop: f64 = net
                    .cases
                    .iter()
                    .filter(|c| c.kind == *kind)
                    .map(|c| 2.0 * (c.shape.macs() * c.images) as f64)
                    .sum();
                total_flop += flop;
                for (vi, per_round) in times[ni][pi][k].iter().enumerate() {
                    for (r, &x) in per_round.iter().enumerate() {
                        total[vi][r] += x;
                    }
                }
                rows.push((kind.to_string(), times[ni][pi][k].clone(), flop));
            }
            rows.push(("all convs".to_string(), total, total_flop));
            for (name, per_variant, flop) in rows {
                print!("{name:12}");
                let base = &per_variant[0];
                for (vi, per_round) in per_variant.iter().enumerate() {
                    let med = median(per_round.clone());
                    let best = per_round.iter().copied().fold(f64::INFINITY, f64::min);
                    let gflops = flop / med / 1e9;
                    if vi == 0 {
                        print!(
                            " | {:7.2} ({:7.2}) {:4.0} GF",
                            med * 1e3,
                            best * 1e3,
                            gflops
                        );
                    } else {
                        let ratio =
                            median(per_round.iter().zip(base).map(|(x, b)| x / b).collect());
                        print!(" | {:7.2} {:4.0} GF x{:.2}", med * 1e3, gflops, ratio);
                    }
                }
                println!();
            }
        }
    }
}
