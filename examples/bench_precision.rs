//! DenseNet-121 at 224x224 in fp32, bf16 and int8 (`densenet::runtime::precision`),
//! the whole model: speed at batch 1 and 8 on 1 and 2 threads, the three alternating
//! within each round (their order rotating, so a slow spell of a shared machine hits
//! them all), and how far bf16's and int8's logits are from fp32's.
//!
//! ```sh
//! cargo run --release --example bench_precision [-- --rounds 7 --batches 1,8 --threads 1,2 --images 64]
//! ```
//!
//! For `tools/bench_int8.py` (ONNX Runtime's own int8 model of the same weights):
//! `--export DIR` writes the fp32 weights (`densenet121.safetensors`), their ONNX graph
//! (`densenet121.onnx`, our exporter) and the 16 calibration images and 16 evaluation
//! images as raw little-endian f32 NCHW (`calibration.f32`, `eval.f32`), then exits;
//! `--serve` reads requests `PRECISION BATCH THREADS ITERS` (`fp32|bf16|int8`) from stdin,
//! one per line, and answers each with a line of the passes' times in ms (after one
//! untimed pass), or `logits PRECISION` with the evaluation images' logits, as f32
//! numbers on one line.
//!
//! Weights: torchvision's DenseNet-121 layout with random values as
//! `tools/make_fixtures.py` draws them for its fixtures (He-normal convolutions;
//! BatchNorm gamma ~ U(0.5, 1.5), beta ~ 0.1·N(0, 1), running mean ~ 0.1·N(0, 1),
//! running var ~ U(0.5, 1.5); classifier bias ~ 0.1·N(0, 1)): no trained ImageNet
//! weights are available offline. Images: generated, smooth colour gradients and
//! blobs plus noise, normalised like ImageNet inputs; int8 calibrates on 16 of them
//! (other seeds than the evaluated ones).
//!
//! Reported: the median of the rounds (after one warm-up round) for each precision and
//! the median of the per-round ratios to fp32; then over `--images` images the logits'
//! cosine similarity to fp32's (mean and minimum over images), top-1 agreement, and
//! top-5 agreement (fp32's top class among the other's five).

use std::time::Instant;

use densenet::densenet;
use densenet::runtime::ndarray::{Array1, Array2, Array4, Axis, Ix2};
use densenet::runtime::precision::{CalibrationMethod, Precision, Quantized};
use densenet::runtime::{LayerMut, Model, Network, Rng};

densenet! {
    /// torchvision's `densenet121()`.
    DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>
}

/// A uniform draw in [0, 1).
fn uniform(rng: &mut Rng) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut Rng) -> f32 {
    let (u, v) = (uniform(rng).max(1e-7), uniform(rng));
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// DenseNet-121 with the fixtures' random BatchNorm statistics and classifier bias.
fn densenet121() -> DenseNet121 {
    let mut model = DenseNet121::init(0);
    let mut rng = Rng::new(121);
    model.visit_layers_mut(&mut |_, layer| match layer {
        LayerMut::BatchNorm(bn) => {
            let c = bn.channels();
            let draw = |rng: &mut Rng, f: &dyn Fn(&mut Rng) -> f32| -> Vec<f32> {
                (0..c).map(|_| f(rng)).collect()
            };
            let gamma = draw(&mut rng, &|r| 0.5 + uniform(r));
            let beta = draw(&mut rng, &|r| 0.1 * normal(r));
            let mean = draw(&mut rng, &|r| 0.1 * normal(r));
            let var = draw(&mut rng, &|r| 0.5 + uniform(r));
            bn.gamma_mut().assign(&Array1::from(gamma));
            bn.beta_mut().assign(&Array1::from(beta));
            bn.running_mean_mut().assign(&Array1::from(mean));
            bn.running_var_mut().assign(&Array1::from(var));
        }
        LayerMut::Linear(linear) => {
            let k = linear.out_features();
            let bias: Vec<f32> = (0..k).map(|_| 0.1 * normal(&mut rng)).collect();
            linear.bias_mut().assign(&Array1::from(bias));
        }
        LayerMut::Conv(_) => {}
    });
    model
}

/// `n` generated 224x224 images: a colour gradient, a few Gaussian blobs and noise,
/// normalised with ImageNet's mean and standard deviation.
fn images(n: usize, seed: u64) -> Array4<f32> {
    let mut rng = Rng::new(seed);
    let mut x = Array4::<f32>::zeros((n, 3, 224, 224));
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    for mut image in x.axis_iter_mut(Axis(0)) {
        let gradient: Vec<[f32; 3]> = (0..3)
            .map(|_| {
                [
                    uniform(&mut rng),
                    uniform(&mut rng) - 0.5,
                    uniform(&mut rng) - 0.5,
                ]
            })
            .collect();
        let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..4)
            .map(|_| {
                let centre = (224.0 * uniform(&mut rng), 224.0 * uniform(&mut rng));
                let radius = 10.0 + 50.0 * uniform(&mut rng);
                let colour = [uniform(&mut rng), uniform(&mut rng), uniform(&mut rng)];
                (centre.0, centre.1, radius, colour)
            })
            .collect();
        for c in 0..3 {
            for y in 0..224 {
                for x in 0..224 {
                    let (fy, fx) = (y as f32 / 224.0, x as f32 / 224.0);
                    let [base, dy, dx] = gradient[c];
                    let mut v = base + dy * fy + dx * fx;
                    for &(cy, cx, r, colour) in &blobs {
                        let d2 = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)) / (r * r);
                        v += (colour[c] - v) * (-d2).exp();
                    }
                    v += 0.03 * normal(&mut rng);
                    image[[c, y, x]] = (v.clamp(0.0, 1.0) - mean[c]) / std[c];
                }
            }
        }
    }
    x
}

/// A list option `--name a,b` (or the default).
fn list(args: &[String], name: &str, default: &[usize]) -> Vec<usize> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(|x| x.parse().expect("a number")).collect())
        .unwrap_or_else(|| default.to_vec())
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

/// The indices of the `k` largest entries of a row.
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(k);
    idx
}

/// Mean and minimum per-image cosine, top-1 and top-5 agreement of `low` with `fp32`.
fn agreement(fp32: &Array2<f32>, low: &Array2<f32>) -> (f64, f64, f64, f64) {
    let (mut sum, mut min, mut top1, mut top5) = (0.0, f64::INFINITY, 0, 0);
    for (a, b) in fp32.axis_iter(Axis(0)).zip(low.axis_iter(Axis(0))) {
        let (a, b) = (a.to_vec(), b.to_vec());
        let dot: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (norm(&a) * norm(&b));
        sum += cos;
        min = min.min(cos);
        let reference = top_k(&a, 1)[0];
        top1 += usize::from(top_k(&b, 1)[0] == reference);
        top5 += usize::from(top_k(&b, 5).contains(&reference));
    }
    let n = fp32.nrows() as f64;
    (sum / n, min, top1 as f64 / n, top5 as f64 / n)
}

/// The three models a run compares.
enum Variant<'a> {
    Fp32(&'a DenseNet121),
    Low(&'a Quantized<DenseNet121>),
}

impl Variant<'_> {
    fn logits(&self, x: &Array4<f32>) -> Array2<f32> {
        match self {
            Variant::Fp32(m) => Model::forward(*m, x.view()).unwrap(),
            Variant::Low(q) => q.forward(x.view()).unwrap(),
        }
        .into_dimensionality::<Ix2>()
        .unwrap()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = list(&args, "--rounds", &[7])[0];
    let batches = list(&args, "--batches", &[1, 8]);
    let threads = list(&args, "--threads", &[1, 2]);
    let n_images = list(&args, "--images", &[64])[0];
    for p in [Precision::Bf16, Precision::Int8] {
        match p.isa() {
            Some(isa) => println!("{p}: {isa} kernels"),
            None => println!("{p}: not on this CPU (fp32 fallback of the same arithmetic)"),
        }
    }

    let model = densenet121();
    let calibration: Vec<Array4<f32>> = (0..2).map(|b| images(8, 1000 + b)).collect();
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--export")
        .and_then(|i| args.get(i + 1))
    {
        export(&model, &calibration, std::path::Path::new(dir));
        return;
    }
    let start = Instant::now();
    let int8 = Quantized::int8(&model, &calibration, CalibrationMethod::MinMax).unwrap();
    println!(
        "int8 calibrated on 16 images (min-max) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let int8_pct =
        Quantized::int8(&model, &calibration, CalibrationMethod::Percentile(99.99)).unwrap();
    let bf16 = Quantized::bf16(&model).unwrap();
    for q in [&bf16, &int8] {
        println!(
            "{}: {} weight bytes ({:.3} of fp32's {})",
            q.precision(),
            q.weight_bytes(),
            q.weight_bytes() as f64 / q.fp32_weight_bytes() as f64,
            q.fp32_weight_bytes()
        );
    }
    let variants = [
        ("fp32", Variant::Fp32(&model)),
        ("bf16", Variant::Low(&bf16)),
        ("int8", Variant::Low(&int8)),
    ];
    if args.iter().any(|a| a == "--serve") {
        serve(&variants);
        return;
    }

    // Speed.
    println!("\n{rounds} rounds after a warm-up; ms = median of the rounds; ratio = median of the per-round ratios to fp32");
    println!("| batch | threads | fp32 ms | bf16 ms | int8 ms | bf16 / fp32 | int8 / fp32 |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &batches {
        let x = images(n, 7);
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .expect("a thread pool");
            let mut times = vec![Vec::new(); variants.len()];
            for round in 0..=rounds {
                for j in 0..variants.len() {
                    let vi = (j + round) % variants.len();
                    let elapsed = pool.install(|| {
                        let start = Instant::now();
                        std::hint::black_box(variants[vi].1.logits(&x));
                        start.elapsed().as_secs_f64() * 1e3
                    });
                    if round > 0 {
                        times[vi].push(elapsed);
                    }
                }
            }
            let ratio = |vi: usize| {
                median(
                    times[vi]
                        .iter()
                        .zip(&times[0])
                        .map(|(a, b)| a / b)
                        .collect(),
                )
            };
            println!(
                "| {n} | {t} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
                median(times[0].clone()),
                median(times[1].clone()),
                median(times[2].clone()),
                ratio(1),
                ratio(2)
            );
        }
    }

    // Accuracy against fp32.
    let mut fp32 = Vec::new();
    let mut low = vec![Vec::new(); 3];
    let others: [&Quantized<DenseNet121>; 3] = [&bf16, &int8, &int8_pct];
    for start in (0..n_images).step_by(8) {
        let x = images(8.min(n_images - start), 5000 + start as u64);
        fp32.push(variants[0].1.logits(&x));
        for (i, q) in others.iter().enumerate() {
            low[i].push(Variant::Low(q).logits(&x));
        }
    }
    let stack = |parts: &[Array2<f32>]| {
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        densenet::runtime::ndarray::concatenate(Axis(0), &views).unwrap()
    };
    let fp32 = stack(&fp32);
    println!("\nagreement with fp32 over {n_images} generated images");
    println!("| precision | cosine (mean) | cosine (min) | top-1 agreement | top-5 agreement |");
    println!("|---|---|---|---|---|");
    for (name, parts) in ["bf16", "int8 (min-max)", "int8 (p99.99)"].iter().zip(&low) {
        let (mean, min, top1, top5) = agreement(&fp32, &stack(parts));
        println!(
            "| {name} | {mean:.5} | {min:.5} | {:.1}% | {:.1}% |",
            100.0 * top1,
            100.0 * top5
        );
    }
}

/// The evaluation images of `--export` and `--serve`'s `logits`.
fn eval_images() -> Array4<f32> {
    images(16, 9000)
}

/// `--export DIR`: weights, ONNX graph, calibration and evaluation images.
fn export(model: &DenseNet121, calibration: &[Array4<f32>], dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("the export directory");
    Model::save_safetensors(model, dir.join("densenet121.safetensors")).expect("weights");
    Model::to_onnx(model, dir.join("densenet121.onnx")).expect("ONNX");
    let raw = |arrays: &[&Array4<f32>]| -> Vec<u8> {
        arrays
            .iter()
            .flat_map(|a| a.iter().flat_map(|v| v.to_le_bytes()))
            .collect()
    };
    let parts: Vec<&Array4<f32>> = calibration.iter().collect();
    std::fs::write(dir.join("calibration.f32"), raw(&parts)).expect("calibration images");
    std::fs::write(dir.join("eval.f32"), raw(&[&eval_images()])).expect("evaluation images");
    println!("wrote {}", dir.display());
}

/// `--serve`: timing and logits requests on stdin (see the module documentation).
fn serve(variants: &[(&str, Variant<'_>)]) {
    use std::io::BufRead;
    let mut pools: Vec<(usize, rayon::ThreadPool)> = Vec::new();
    let mut inputs: Vec<(usize, Array4<f32>)> = Vec::new();
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("a request line");
        let words: Vec<&str> = line.split_whitespace().collect();
        let find = |name: &str| {
            variants
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
                .expect("fp32, bf16 or int8")
        };
        match words.as_slice() {
            ["logits", precision] => {
                let logits = find(precision).logits(&eval_images());
                let text: Vec<String> = logits.iter().map(|v| v.to_string()).collect();
                println!("{}", text.join(" "));
            }
            [precision, batch, threads, iters] => {
                let (batch, threads, iters): (usize, usize, usize) = (
                    batch.parse().expect("batch"),
                    threads.parse().expect("threads"),
                    iters.parse().expect("iters"),
                );
                if !pools.iter().any(|(t, _)| *t == threads) {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("a thread pool");
                    pools.push((threads, pool));
                }
                if !inputs.iter().any(|(b, _)| *b == batch) {
                    inputs.push((batch, images(batch, 7)));
                }
                let pool = &pools.iter().find(|(t, _)| *t == threads).unwrap().1;
                let x = &inputs.iter().find(|(b, _)| *b == batch).unwrap().1;
                let variant = find(precision);
                let times: Vec<String> = pool.install(|| {
                    std::hint::black_box(variant.logits(x));
                    (0..iters)
                        .map(|_| {
                            let start = Instant::now();
                            std::hint::black_box(variant.logits(x));
                            format!("{:.4}", start.elapsed().as_secs_f64() * 1e3)
                        })
                        .collect()
                });
                println!("{}", times.join(" "));
            }
            _ => println!("error: expected `PRECISION BATCH THREADS ITERS` or `logits PRECISION`"),
        }
    }
}
