//! `densenet`: the spec language and the runtime from the shell.
//!
//! ```text
//! densenet summary specs/densenet121.yaml      Keras-style table
//! densenet check specs/*.yaml                  every mistake with file:line:col (exit 1)
//! densenet expand specs/densenet121.yaml       the generated Rust, formatted
//! densenet expand 'pub Net<growth: 12, depth: 40>'   … of an inline spec
//! densenet run --spec S --weights W IMAGE...   top-5 classes per image (--labels, --json)
//! densenet train --spec S --data DIR --epochs N --out DIR [--init-weights W] [--freeze backbone] [--resume]
//! densenet eval --spec S --weights W --data DIR  loss, top-1 and top-5 accuracy
//! densenet bench --spec S                      forward-pass latency and throughput
//! densenet export --spec S --weights W --onnx OUT          an ONNX graph with the weights
//! densenet convert --spec S --weights IN --naming keras --out OUT   rename the weights
//! densenet convert --spec S --weights IN --backbone --out OUT       a backbone under a new head
//! ```
//!
//! Specs given here are only known at run time, so models are `DynamicModel`s: the same
//! layers and code paths as generated models, built from the checked architecture.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use densenet_runtime::ndarray::Array4;
use densenet_runtime::weights::PartialLoad;
use densenet_runtime::{DynamicModel, Model, Naming, Network, Summary};
use densenet_spec::{
    check_yaml_file, Architecture, CompileError, Config, LoadError, Plan, SpecSource,
};

mod inline;
mod precision;
mod run;
mod train;

#[derive(Parser)]
#[command(
    name = "densenet",
    version,
    about = "DenseNet specs and models from the shell"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a spec's Keras-style summary: layers, output shapes, parameter counts.
    Summary {
        /// A YAML spec file.
        spec: PathBuf,
    },
    /// Check specs; print every mistake with file:line:column (exit code 1 if any).
    Check {
        /// YAML spec files.
        #[arg(required = true)]
        specs: Vec<PathBuf>,
    },
    /// Print the Rust code `densenet_yaml!` (or `densenet!`) generates for a spec, formatted.
    Expand {
        /// A YAML spec file, or an inline spec such as 'pub Net<growth: 12, depth: 40>'.
        spec: PathBuf,
    },
    /// Classify images: top classes with probabilities.
    Run {
        /// The model's YAML spec.
        #[arg(long)]
        spec: PathBuf,
        /// Weights: safetensors in torchvision/timm or Keras naming.
        #[arg(long)]
        weights: PathBuf,
        /// Naming scheme of the weights.
        #[arg(long, value_enum, default_value_t = NamingArg::Auto)]
        naming: NamingArg,
        /// How many classes to show per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Class names, one per line in label order. Default: the names a training
        /// checkpoint saved, else ImageNet's for 1000 classes, else `class N`.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// JPEG or PNG images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        precision: precision::PrecisionArgs,
    },
    /// Train or fine-tune a spec's model on a folder of images (one sub-folder per
    /// class), with checkpoints, history and resumption in --out.
    Train(Box<train::TrainArgs>),
    /// Evaluate weights on a folder of images: loss, top-1 and top-5 accuracy.
    Eval(train::EvalArgs),
    /// Time the forward pass (random weights): latency and throughput.
    Bench {
        /// The model's YAML spec.
        #[arg(long)]
        spec: PathBuf,
        /// Images per forward pass.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed forward passes (after one warm-up).
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[command(flatten)]
        precision: precision::PrecisionArgs,
    },
    /// Export a model with its weights as an ONNX graph (opset 17, dynamic batch).
    Export {
        /// The model's YAML spec.
        #[arg(long)]
        spec: PathBuf,
        /// Weights: safetensors in torchvision/timm or Keras naming.
        #[arg(long)]
        weights: PathBuf,
        /// Naming scheme of the weights.
        #[arg(long, value_enum, default_value_t = NamingArg::Auto)]
        naming: NamingArg,
        /// The ONNX file to write (replaced atomically).
        #[arg(long)]
        onnx: PathBuf,
    },
    /// Rewrite a weights file in another naming scheme (torchvision/timm or Keras).
    Convert {
        /// The model's YAML spec.
        #[arg(long)]
        spec: PathBuf,
        /// Weights to read: safetensors in torchvision/timm or Keras naming (detected).
        #[arg(long)]
        weights: PathBuf,
        /// Naming scheme to write.
        #[arg(long, value_enum, default_value_t = OutputNaming::Torchvision)]
        naming: OutputNaming,
        /// Take only the backbone from --weights (every layer but the classifier, as
        /// Keras's include_top=False): for a model with another head, class count or
        /// input size; the classifier, if the spec has one, is freshly initialised.
        #[arg(long)]
        backbone: bool,
        /// The safetensors file to write (replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
}

/// A naming scheme to write.
#[derive(Clone, Copy, ValueEnum)]
enum OutputNaming {
    Torchvision,
    Keras,
}

#[derive(Clone, Copy, ValueEnum)]
enum NamingArg {
    Auto,
    Torchvision,
    Keras,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Summary { spec } => {
            let arch = load_spec(&spec).map_err(|e| e.to_string())?;
            let plan = Plan::new(&arch);
            println!("{}", Summary::new(&arch.name, &plan));
        }
        Command::Check { specs } => {
            let mut failed = false;
            for spec in &specs {
                match load_spec(spec) {
                    Ok(arch) => println!(
                        "{}: ok ({}, {} parameters)",
                        spec.display(),
                        arch.name,
                        Plan::new(&arch).params
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        Command::Expand { spec } => print!("{}", expand(&spec)?),
        Command::Run {
            spec,
            weights,
            naming,
            top,
            labels,
            json,
            images,
            precision,
        } => run::classify(&run::Request {
            spec: &spec,
            weights: &weights,
            naming: naming.into(),
            top,
            labels: labels.as_deref(),
            json,
            images: &images,
            precision: &precision,
        })?,
        Command::Train(args) => train::train(&args)?,
        Command::Eval(args) => train::eval(&args)?,
        Command::Bench {
            spec,
            batch,
            iters,
            precision,
        } => bench(&spec, batch, iters, &precision)?,
        Command::Export {
            spec,
            weights,
            naming,
            onnx,
        } => {
            let model = load_model(&spec, &weights, naming.into())?;
            model.to_onnx(&onnx).map_err(|e| e.to_string())?;
            println!("{}: {} as ONNX", onnx.display(), model.architecture().name);
        }
        Command::Convert {
            spec,
            weights,
            naming,
            backbone,
            out,
        } => {
            let model = if backbone {
                let arch = load_spec(&spec).map_err(|e| e.to_string())?;
                let mut model = DynamicModel::init(arch, 0).map_err(|e| e.to_string())?;
                let report = model
                    .load_partial_file(&weights, &PartialLoad::backbone())
                    .map_err(|e| format!("{}: {e}", weights.display()))?;
                eprintln!("{}: {report}", weights.display());
                model
            } else {
                load_model(&spec, &weights, Naming::Auto)?
            };
            let naming = match naming {
                OutputNaming::Torchvision => Naming::Torchvision,
                OutputNaming::Keras => Naming::Keras,
            };
            densenet_runtime::weights::save_file_with(&model, &out, naming)
                .map_err(|e| e.to_string())?;
            println!(
                "{}: {} in {naming} naming",
                out.display(),
                model.architecture().name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The generated code of a spec file, or of an inline spec when the argument names no
/// file and reads as one (it has a `<`).
fn expand(spec: &Path) -> Result<String, String> {
    let inline = spec.to_str().filter(|s| !spec.exists() && s.contains('<'));
    let Some(text) = inline else {
        let source = SpecSource::YamlFile(spec);
        return Config::new()
            .generate_source(&source, &spec.display().to_string())
            .map_err(|e| e.to_string());
    };
    let tokens = inline::tokens(text)?;
    Config::new()
        .generate_source(&SpecSource::Inline(tokens), "an inline spec")
        .map_err(|e| match e {
            CompileError::Spec(e) => inline::render_errors(text, &e.errors),
            e => e.to_string(),
        })
}

impl From<NamingArg> for Naming {
    fn from(naming: NamingArg) -> Naming {
        match naming {
            NamingArg::Auto => Naming::Auto,
            NamingArg::Torchvision => Naming::Torchvision,
            NamingArg::Keras => Naming::Keras,
        }
    }
}

/// The model of a spec file with its weights.
pub(crate) fn load_model(
    spec: &Path,
    weights: &Path,
    naming: Naming,
) -> Result<DynamicModel, String> {
    let arch = load_spec(spec).map_err(|e| e.to_string())?;
    DynamicModel::load_safetensors(arch, weights, naming).map_err(|e| e.to_string())
}

/// Parses and checks a spec file; errors carry `file:line:column`.
pub(crate) fn load_spec(path: &Path) -> Result<Architecture, LoadError> {
    check_yaml_file(path).map(|model| model.architecture)
}

/// Most timed passes `bench` runs (their times are kept to take the median).
const MAX_ITERS: usize = 100_000;

fn bench(
    spec: &Path,
    batch: usize,
    iters: usize,
    precision: &precision::PrecisionArgs,
) -> Result<(), String> {
    precision.validate(false)?;
    let arch = load_spec(spec).map_err(|e| e.to_string())?;
    if batch == 0 || iters == 0 {
        return Err("--batch and --iters must be at least 1".into());
    }
    if iters > MAX_ITERS {
        return Err(format!("--iters must be at most {MAX_ITERS}; got {iters}"));
    }
    let [c, h, w] = arch.input;
    // The input batch, allocated fallibly: an absurd --batch is an error, not an abort.
    let len = [batch, c, h, w]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    let mut values = Vec::new();
    if len.is_none_or(|len| values.try_reserve_exact(len).is_err()) {
        return Err(format!(
            "--batch {batch}: a batch of {batch} images of {c}x{h}x{w} is too large to allocate"
        ));
    }
    let macs = Plan::new(&arch).macs;
    let name = arch.name.to_string();
    let input = arch.input;
    let model = DynamicModel::init(arch, 0).map_err(|e| e.to_string())?;
    let model = precision.apply(model, |args| match &args.calibration {
        Some(_) => {
            let preprocessing = run::preprocessing(input)?;
            precision::calibration_from_files(args, &|path| {
                preprocessing.load(path).map_err(|e| e.to_string())
            })
        }
        None => Ok(generated_images(input, args.calibration_images)),
    })?;
    values.extend((0..batch).flat_map(|n| {
        (0..c).flat_map(move |c| {
            (0..h).flat_map(move |y| (0..w).map(move |x| ((n + c + y + x) % 7) as f32 / 7.0 - 0.5))
        })
    }));
    let x = Array4::from_shape_vec((batch, c, h, w), values).expect("len is the shape's product");
    model.forward(&x)?;
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            let _ = model.forward(&x);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{name}{}: batch {batch}, median {median:.2} ms over {iters} runs (min {:.2}), {:.1} images/s, {:.1} GFLOP/s",
        model.describe(),
        times[0],
        batch as f64 / (median / 1e3),
        2.0 * macs as f64 * batch as f64 / (median / 1e3) / 1e9
    );
    Ok(())
}

/// int8 calibration images for `bench` without `--calibration`: `n` images of uniform
/// noise in [-2, 2] (the range of normalised pixels), in batches of 16.
fn generated_images([c, h, w]: [usize; 3], n: usize) -> Vec<Array4<f32>> {
    let mut rng = densenet_runtime::Rng::new(1);
    let n = n.min(64);
    eprintln!("calibrating int8 on {n} generated images (give --calibration DIR for real ones)");
    (0..n)
        .step_by(16)
        .map(|start| {
            let images = (n - start).min(16);
            Array4::from_shape_simple_fn((images, c, h, w), || {
                (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
        })
        .collect()
}
