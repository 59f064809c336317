//! Times DenseNet forward passes for `tools/bench_compare.py` (std only, no extra
//! dependencies). Prints one JSON line per timing request on stdout; notes go to stderr.
//!
//! ```sh
//! cargo build --release --example bench_forward
//! RAYON_NUM_THREADS=2 target/release/examples/bench_forward --model densenet121 --batch 1 --iters 20
//! ```
//!
//! Options:
//! - `--model densenet121|densenet_bc100_k12` (default densenet121);
//! - `--batch N` (default 1), `--iters K` (default 10), `--warmup W` (default 3);
//! - `--threads T`: sets `RAYON_NUM_THREADS` before the global rayon pool starts (setting
//!   the variable in the environment does the same);
//! - `--weights PATH`: safetensors in torchvision naming (default: `init(0)`);
//! - `--input PATH`: raw little-endian `f32` NCHW input of the right size (default: a
//!   deterministic pattern); `--output PATH`: writes the first pass's logits there, raw
//!   little-endian `f32`, row-major `(N, classes)`;
//! - `--kernels best|direct|avx2|portable`: the convolution kernels: the best this CPU
//!   has (default), the direct kernel also for the 3x3 convolutions that take the
//!   Winograd path, the AVX2 ones even on an AVX-512 CPU, or the portable im2col + GEMM
//!   path;
//! - `--into`: times `forward_into` with one reused `Workspace` and output array (no
//!   allocation per pass) instead of `forward` (thread-local workspace, new output);
//!   the JSON line then says `"api": "forward_into"`;
//! - `--stages`: also times each stage (stem, blocks, transitions, head) separately,
//!   through the typed blocks' simple allocating `forward` (the reference path, not the
//!   workspace path that `forward` runs);
//! - `--serve`: after warming up, reads requests from stdin, one per line: a number `K`
//!   runs `K` timed passes and prints their JSON line, `quit` (or end of input) exits.
//!   The caller can then interleave our passes with other frameworks' in one process.
//!
//! A timing line: `{"model": "...", "batch": N, "threads": T, "times_ms": [...],
//! "median_ms": M}`; with `--stages`, a second line `{"stages_ms": {"stem": M, ...}}` of
//! per-stage medians.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use densenet::ndarray::{Array4, ArrayD, Ix4};
use densenet::runtime::kernels::direct_conv::{force_avx2, force_direct, force_portable};
use densenet::runtime::reference;
use densenet::runtime::stage::stages;
use densenet::runtime::{input_to_nhwc, Model, Workspace};
use densenet::{densenet, densenet_yaml};

densenet! {
    /// DenseNet-121, torchvision's `densenet121` layout.
    DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>
}

// The paper's CIFAR DenseNet-BC (L=100, k=12), from the preset.
densenet_yaml!("specs/densenet_bc100_k12.yaml");

struct Args {
    model: String,
    batch: usize,
    iters: usize,
    warmup: usize,
    threads: Option<usize>,
    weights: Option<PathBuf>,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    stages: bool,
    serve: bool,
    into: bool,
    kernels: String,
}

const USAGE: &str = "usage: bench_forward [--model densenet121|densenet_bc100_k12] [--batch N] \
[--iters K] [--warmup W] [--threads T] [--weights PATH] [--input PATH] [--output PATH] \
[--stages] [--serve] [--into] [--kernels best|direct|avx2|portable]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: "densenet121".to_owned(),
        batch: 1,
        iters: 10,
        warmup: 3,
        threads: None,
        weights: None,
        input: None,
        output: None,
        stages: false,
        serve: false,
        into: false,
        kernels: "best".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|e| format!("{flag}: `{v}` is not a count ({e})"))
        };
        match flag.as_str() {
            "--model" => args.model = value()?,
            "--batch" => args.batch = number(value()?)?,
            "--iters" => args.iters = number(value()?)?,
            "--warmup" => args.warmup = number(value()?)?,
            "--threads" => args.threads = Some(number(value()?)?),
            "--weights" => args.weights = Some(value()?.into()),
            "--input" => args.input = Some(value()?.into()),
            "--output" => args.output = Some(value()?.into()),
            "--stages" => args.stages = true,
            "--serve" => args.serve = true,
            "--into" => args.into = true,
            "--kernels" => args.kernels = value()?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if args.batch == 0 {
        return Err("--batch must be at least 1".to_owned());
    }
    match args.kernels.as_str() {
        "best" => {}
        "direct" => force_direct(true),
        "avx2" => force_avx2(true),
        "portable" => force_portable(true),
        other => {
            return Err(format!(
                "--kernels: `{other}` is not best, direct, avx2 or portable"
            ))
        }
    }
    Ok(args)
}

/// Times `f` once, in seconds, and returns its result.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms_list(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
    format!("[{}]", items.join(", "))
}

fn read_f32(path: &PathBuf, len: usize) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() != len * 4 {
        return Err(format!(
            "{}: {} bytes, expected {len} f32 values ({} bytes)",
            path.display(),
            bytes.len(),
            len * 4
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn write_f32(path: &PathBuf, values: &ArrayD<f32>) -> Result<(), String> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn bench(model: &dyn Model, args: &Args) -> Result<(), String> {
    let name = args.model.as_str();
    let [c, h, w] = model.plan().input;
    let shape = (args.batch, c, h, w);
    let x = match &args.input {
        Some(path) => Array4::from_shape_vec(shape, read_f32(path, args.batch * c * h * w)?)
            .map_err(|e| e.to_string())?,
        None => Array4::from_shape_fn(shape, |(n, c, y, x)| {
            ((n * 7 + c * 5 + y * 3 + x) % 17) as f32 / 17.0 - 0.5
        }),
    };
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".to_owned());
    let (first, t) = timed(|| model.forward(x.view()).expect("input shape checked"));
    eprintln!(
        "bench_forward: {} batch {} RAYON_NUM_THREADS={threads}: first pass {:.1} ms",
        name,
        args.batch,
        t * 1e3
    );
    if let Some(path) = &args.output {
        write_f32(path, &first)?;
    }
    for _ in 0..args.warmup {
        std::hint::black_box(model.forward(x.view()).expect("input shape checked"));
    }

    let mut ws = Workspace::new();
    let mut out = first.clone();
    let mut report = |iters: usize| -> Result<(), String> {
        let times: Vec<f64> = (0..iters)
            .map(|_| match args.into {
                true => {
                    timed(|| {
                        model
                            .forward_into(x.view(), &mut ws, out.view_mut())
                            .expect("shapes checked")
                    })
                    .1 * 1e3
                }
                false => {
                    timed(|| {
                        std::hint::black_box(model.forward(x.view()).expect("input shape checked"))
                    })
                    .1 * 1e3
                }
            })
            .collect();
        let api = match args.into {
            true => ", \"api\": \"forward_into\"",
            false => "",
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "{{\"model\": \"{}\", \"batch\": {}, \"threads\": \"{threads}\"{api}, \"times_ms\": {}, \"median_ms\": {:.3}}}",
            name,
            args.batch,
            ms_list(&times),
            median(&times)
        )
        .and_then(|()| stdout.flush())
        .map_err(|e| e.to_string())
    };

    if args.serve {
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| e.to_string())?;
            match line.trim() {
                "" => continue,
                "quit" => break,
                n => report(n.parse().map_err(|e| format!("request `{n}`: {e}"))?)?,
            }
        }
    } else {
        report(args.iters)?;
    }

    if args.stages {
        // The reference path, stage by stage, each on the output of the one before.
        let nhwc = input_to_nhwc(x.view(), [c, h, w]).map_err(|e| e.to_string())?;
        let names: Vec<String> = stages(model).map(|s| s.name()).collect();
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for _ in 0..args.iters.max(1) {
            let mut x = nhwc.clone().into_dyn();
            for (stage, samples) in stages(model).zip(&mut samples) {
                let input = x
                    .into_dimensionality::<Ix4>()
                    .expect("NHWC before the head");
                let (out, secs) = timed(|| reference::stage(stage, input.view()));
                samples.push(secs * 1e3);
                x = out;
            }
        }
        let items: Vec<String> = names
            .iter()
            .zip(&samples)
            .map(|(name, s)| format!("\"{name}\": {:.3}", median(s)))
            .collect();
        println!("{{\"stages_ms\": {{{}}}}}", items.join(", "));
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(t) = args.threads {
        // Before anything touches rayon: the global pool reads this once, when it starts.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    match args.model.as_str() {
        "densenet121" => {
            let start = std::time::Instant::now();
            let model = match &args.weights {
                Some(path) => DenseNet121::load_safetensors(path).map_err(|e| e.to_string())?,
                None => DenseNet121::init(0),
            };
            eprintln!(
                "bench_forward: model built in {:.1} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
            bench(&model, args)
        }
        "densenet_bc100_k12" => {
            let model = match &args.weights {
                Some(path) => {
                    DenseNetBC100K12::load_safetensors(path).map_err(|e| e.to_string())?
                }
                None => DenseNetBC100K12::init(0),
            };
            bench(&model, args)
        }
        other => Err(format!(
            "unknown model `{other}` (densenet121 or densenet_bc100_k12)"
        )),
    }
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench_forward: {message}");
            ExitCode::FAILURE
        }
    }
}
