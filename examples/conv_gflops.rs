//! Throughput of the direct convolution kernel on every convolution of DenseNet-121 at
//! one image, grouped by kind (the hot loops of a forward pass), in GFLOP/s.
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo run --release --example conv_gflops [-- [--hwio|--direct] [KIND]]
//! ```
//!
//! Weights with more than 32 outputs are packed panel-major, as the runtime runs them;
//! `--hwio` also times every kind with the HWIO weight, alternating with the packed one
//! in the same repetitions, and prints the ratio; `--direct` likewise times the 3x3
//! convolutions on the direct kernel against the Winograd path the runtime takes for
//! them. GFLOP/s count the direct convolution's multiply-adds (`2·MACs / time`), also
//! for Winograd, which does fewer.

use std::hint::black_box;
use std::time::Instant;

use densenet::runtime::kernels::direct_conv::{
    direct_conv, force_direct, ConvShape, ConvWeight, Epilogue, ImageLayout, PackedWeight, PACK,
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

struct Case {
    kind: &'static str,
    shape: ConvShape,
    in_layout: ImageLayout,
    input: Vec<f32>,
    weight: Vec<f32>,
    /// Panel-major, for more than [`PACK`] outputs (as `Conv2d` packs them).
    packed: Option<PackedWeight>,
    prologue: Option<(Vec<f32>, Vec<f32>)>,
    epilogue: Option<(Vec<f32>, Vec<f32>)>,
    out: Vec<f32>,
    out_layout: ImageLayout,
}

impl Case {
    /// One convolution, with the packed weight when there is one and `hwio` is false.
    fn run(&mut self, hwio: bool) {
        let pro = match &self.prologue {
            Some((s, t)) => Epilogue::ScaleShiftRelu { scale: s, shift: t },
            None => Epilogue::Store,
        };
        let epi = match &self.epilogue {
            Some((s, t)) => Epilogue::ScaleShiftRelu { scale: s, shift: t },
            None => Epilogue::Store,
        };
        let weight = match &self.packed {
            Some(packed) if !hwio => ConvWeight::Packed(packed),
            _ => ConvWeight::Hwio(&self.weight),
        };
        let ok = direct_conv(
            black_box(&self.input),
            self.in_layout,
            pro,
            weight,
            self.shape,
            epi,
            &mut self.out,
            self.out_layout,
            true,
        );
        assert!(ok, "no AVX-512 or AVX2");
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let blocks = [(56, 64, 6), (28, 128, 12), (14, 256, 24), (7, 512, 16)];
    for (bi, &(hw, c0, layers)) in blocks.iter().enumerate() {
        let c_total = c0 + 32 * layers;
        for l in 0..layers {
            let c_in = c0 + 32 * l;
            // Bottleneck 1x1: reads the block buffer with norm1 as prologue, writes the
            // interior of conv2's padded input with norm2 as epilogue.
            v.push(Case {
                kind: ["1x1 56x56", "1x1 28x28", "1x1 14x14", "1x1 7x7"][bi],
                shape: ConvShape {
                    n: 1,
                    out_h: hw,
                    out_w: hw,
                    c_in,
                    c_out: 128,
                    kernel_h: 1,
                    kernel_w: 1,
                    stride: 1,
                },
                in_layout: ImageLayout::dense(hw, hw, c_total),
                input: data(hw * hw * c_total, 1),
                weight: data(c_in * 128, 2),
                packed: None,
                prologue: Some((data(c_in, 3), data(c_in, 4))),
                epilogue: Some((data(128, 5), data(128, 6))),
                out: vec![0.0; (hw + 2) * (hw + 2) * 128],
                out_layout: ImageLayout {
                    offset: (hw + 3) * 128,
                    ..ImageLayout::dense(hw + 2, hw + 2, 128)
                },
            });
            v.push(Case {
                kind: ["3x3 56x56", "3x3 28x28", "3x3 14x14", "3x3 7x7"][bi],
                shape: ConvShape {
                    n: 1,
                    out_h: hw,
                    out_w: hw,
                    c_in: 128,
                    c_out: 32,
                    kernel_h: 3,
                    kernel_w: 3,
                    stride: 1,
                },
                in_layout: ImageLayout::dense(hw + 2, hw + 2, 128),
                input: data((hw + 2) * (hw + 2) * 128, 7),
                weight: data(9 * 128 * 32, 8),
                packed: None,
                prologue: None,
                epilogue: None,
                out: vec![0.0; hw * hw * c_total],
                out_layout: ImageLayout {
                    offset: c_in,
                    ..ImageLayout::dense(hw, hw, c_total)
                },
            });
        }
        if bi < 3 {
            let (h2, c_out) = (hw / 2, c_total / 2);
            let next_total = c_out + 32 * blocks[bi + 1].2;
            v.push(Case {
                kind: "transition",
                shape: ConvShape {
                    n: 1,
                    out_h: h2,
                    out_w: h2,
                    c_in: c_total,
                    c_out,
                    kernel_h: 1,
                    kernel_w: 1,
                    stride: 1,
                },
                in_layout: ImageLayout::dense(h2, h2, c_total),
                input: data(h2 * h2 * c_total, 9),
                weight: data(c_total * c_out, 10),
                packed: None,
                prologue: None,
                epilogue: None,
                out: vec![0.0; h2 * h2 * next_total],
                out_layout: ImageLayout::dense(h2, h2, next_total),
            });
        }
    }
    // Everything in L1 (an 18 KiB weight): what the tile kernel reaches when nothing
    // waits on memory, the yardstick for the others.
    v.push(Case {
        kind: "3x3 c16 (L1)",
        shape: ConvShape {
            n: 1,
            out_h: 56,
            out_w: 56,
            c_in: 16,
            c_out: 32,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
        },
        in_layout: ImageLayout::dense(58, 58, 16),
        input: data(58 * 58 * 16, 15),
        weight: data(9 * 16 * 32, 16),
        packed: None,
        prologue: None,
        epilogue: None,
        out: vec![0.0; 56 * 56 * 32],
        out_layout: ImageLayout::dense(56, 56, 32),
    });
    v.push(Case {
        kind: "stem",
        shape: ConvShape {
            n: 1,
            out_h: 112,
            out_w: 112,
            c_in: 3,
            c_out: 64,
            kernel_h: 7,
            kernel_w: 7,
            stride: 2,
        },
        in_layout: ImageLayout::dense(230, 230, 3),
        input: data(230 * 230 * 3, 11),
        weight: data(49 * 3 * 64, 12),
        packed: None,
        prologue: None,
        epilogue: Some((data(64, 13), data(64, 14))),
        out: vec![0.0; 112 * 112 * 64],
        out_layout: ImageLayout::dense(112, 112, 64),
    });
    for c in &mut v {
        let s = c.shape;
        if s.c_out > PACK {
            let rows = s.kernel_h * s.kernel_w * s.c_in;
            c.packed = Some(PackedWeight::from_hwio(&c.weight, rows, s.c_out));
        }
    }
    v
}

fn main() {
    let mut cases = cases();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The baseline each kind alternates with: (flag, label, ratio's name).
    let baseline = [
        ("--hwio", "HWIO", "packed/HWIO"),
        ("--direct", "direct", "ours/direct"),
    ]
    .into_iter()
    .find(|(flag, ..)| args.iter().any(|a| a == flag));
    let compare = baseline.is_some();
    let hwio_mode = baseline.is_some_and(|(flag, ..)| flag == "--hwio");
    if let Some(only) = args.iter().find(|a| !a.starts_with("--")) {
        cases.retain(|c| c.kind == only);
    }
    let kinds: Vec<&str> = {
        let mut k: Vec<&str> = cases.iter().map(|c| c.kind).collect();
        k.dedup();
        let mut seen = Vec::new();
        for x in k {
            if !seen.contains(&x) {
                seen.push(x);
            }
        }
        seen
    };
    for c in cases.iter_mut() {
        c.run(false);
    }
    // Kinds (and with `--hwio` or `--direct` the two variants) alternate within each
    // repetition, so a slow spell of a shared machine hits them all; the best counts.
    let reps = if compare { 40 } else { 30 };
    let mut best = vec![f64::INFINITY; kinds.len()];
    let mut best_baseline = vec![f64::INFINITY; kinds.len()];
    let mut flops = vec![0.0; kinds.len()];
    for rep in 0..reps {
        for (k, kind) in kinds.iter().enumerate() {
            // The second run of a kind finds its inputs in cache: the variants take
            // turns going first.
            let order = if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let variants = if compare { &order[..] } else { &[false][..] };
            for &is_baseline in variants {
                force_direct(is_baseline && !hwio_mode);
                let start = Instant::now();
                let mut flop = 0.0;
                for c in cases.iter_mut().filter(|c| c.kind == *kind) {
                    c.run(is_baseline && hwio_mode);
                    flop += 2.0 * c.shape.macs() as f64;
                }
                let t = start.elapsed().as_secs_f64();
                let b = if is_baseline {
                    &mut best_baseline[k]
                } else {
                    &mut best[k]
                };
                *b = b.min(t);
                flops[k] = flop;
            }
        }
    }
    let mut total_ms = 0.0;
    let mut total_flop = 0.0;
    for (k, kind) in kinds.iter().enumerate() {
        if !kind.contains("(L1)") {
            total_ms += best[k] * 1e3;
            total_flop += flops[k];
        }
        print!(
            "{kind:16} {:7.2} ms  {:6.1} GFLOP/s",
            best[k] * 1e3,
            flops[k] / best[k] / 1e9
        );
        if let Some((_, label, ratio)) = baseline {
            print!(
                "   {label} {:7.2} ms  {ratio} {:.3}",
                best_baseline[k] * 1e3,
                best[k] / best_baseline[k]
            );
        }
        println!();
    }
    println!(
        "{:16} {:7.2} ms  {:6.1} GFLOP/s",
        "all convs",
        total_ms,
        total_flop / total_ms / 1e6
    );
}
