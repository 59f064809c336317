//! `densenet train` and `densenet eval`: fine-tune or train a spec's model on a folder of
//! images (one sub-folder per class), and evaluate weights on one.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use densenet_runtime::image::{FolderConfig, ImageFolder, Normalization, Unreadable};
use densenet_runtime::train::{
    self, checkpoints_in, fit, split, AdamConfig, Augment, CosineConfig, EarlyStopping, FitConfig,
    Freeze, History, Monitor, OnEpochEnd, Optimizer, PlateauConfig, Schedule, SgdConfig, Source,
};
use densenet_runtime::weights::PartialLoad;
use densenet_runtime::{DynamicModel, Model, Naming, Network};

use crate::load_spec;
use crate::precision::{calibration_from_source, PrecisionArgs};

/// `densenet train`'s arguments.
#[derive(Args)]
pub(crate) struct TrainArgs {
    /// The model's YAML spec (its input is the images' size).
    #[arg(long)]
    spec: PathBuf,
    /// Training images: one sub-folder per class, JPEG or PNG.
    #[arg(long)]
    data: PathBuf,
    /// Validation images, in the same layout (same class folders).
    #[arg(long, conflicts_with = "val_split")]
    val: Option<PathBuf>,
    /// Hold out this fraction of --data (per class) for validation instead.
    #[arg(long)]
    val_split: Option<f32>,
    /// Start from these weights (e.g. ImageNet DenseNet-121), every layer but the
    /// classifier (Keras's include_top=False); what was loaded is printed.
    #[arg(long)]
    init_weights: Option<PathBuf>,
    /// Parts left untrained: `backbone` (all but the classifier), or a list such as
    /// `stem,block1,transition1`.
    #[arg(long, default_value = "none")]
    freeze: Freeze,
    /// Passes over the training images.
    #[arg(long)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Where checkpoints (epoch-NNN.safetensors, best.safetensors) and the history
    /// (history.csv, history.json, history.png) go.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// The optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    optimizer: OptimizerArg,
    /// Base learning rate (default: 1e-3 for Adam, 0.1 for SGD).
    #[arg(long)]
    lr: Option<f32>,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    schedule: ScheduleArg,
    /// Warm-up epochs of the cosine schedule.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Augmentation of training images.
    #[arg(long, value_enum, default_value_t = AugmentArg::Flip)]
    augment: AugmentArg,
    /// Pixel normalisation, as Keras's preprocess_input modes.
    #[arg(long, value_enum, default_value_t = NormalizationArg::Torch)]
    normalization: NormalizationArg,
    /// Keep decoded images in memory after the first epoch.
    #[arg(long)]
    cache: bool,
    /// Skip (and count) unreadable images instead of stopping.
    #[arg(long)]
    skip_unreadable: bool,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long)]
    patience: Option<usize>,
    /// Seed of the run (order, augmentation, dropout) and of the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `densenet eval`'s arguments.
#[derive(Args)]
pub(crate) struct EvalArgs {
    /// The model's YAML spec.
    #[arg(long)]
    spec: PathBuf,
    /// Weights (a training checkpoint works too).
    #[arg(long)]
    weights: PathBuf,
    /// Images: one sub-folder per class, JPEG or PNG.
    #[arg(long)]
    data: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Pixel normalisation, as Keras's preprocess_input modes.
    #[arg(long, value_enum, default_value_t = NormalizationArg::Torch)]
    normalization: NormalizationArg,
    #[command(flatten)]
    precision: PrecisionArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    /// The DenseNet paper's: /10 at 50% and 75% of the epochs.
    Step,
    Constant,
    /// Cosine decay (after --warmup epochs of linear warm-up).
    Cosine,
    /// Divided by 10 after 2 epochs without a better (validation) loss.
    Plateau,
}

#[derive(Clone, Copy, ValueEnum)]
enum AugmentArg {
    None,
    /// Horizontal flips.
    Flip,
    /// The paper's CIFAR scheme: pad 4, random crop, flip.
    Cifar,
    /// ImageNet training: random resized crop, flip.
    Imagenet,
}

#[derive(Clone, Copy, ValueEnum)]
enum NormalizationArg {
    /// x/255, ImageNet mean and std (torchvision; Keras's DenseNet).
    Torch,
    /// x/127.5 − 1.
    Tf,
    /// BGR, ImageNet means subtracted, no scaling.
    Caffe,
}

impl From<NormalizationArg> for Normalization {
    fn from(n: NormalizationArg) -> Self {
        match n {
            NormalizationArg::Torch => Normalization::Torch,
            NormalizationArg::Tf => Normalization::Tf,
            NormalizationArg::Caffe => Normalization::Caffe,
        }
    }
}

/// The image folder at `dir` for a model taking `input`.
fn folder(
    dir: &Path,
    input: [usize; 3],
    normalization: Normalization,
    augment: Augment,
    cache: bool,
    unreadable: Unreadable,
) -> Result<ImageFolder, String> {
    let [c, h, w] = input;
    if c != 3 {
        return Err(format!(
            "image folders are RGB; the spec's input has {c} channels"
        ));
    }
    let size = |v: usize| u32::try_from(v).map_err(|_| format!("input size {v} is too large"));
    let config = FolderConfig {
        size: (size(h)?, size(w)?),
        normalization,
        augment,
        cache,
        unreadable,
        ..FolderConfig::default()
    };
    ImageFolder::open(dir, config).map_err(|e| e.to_string())
}

pub(crate) fn train(args: &TrainArgs) -> Result<(), String> {
    let arch = load_spec(&args.spec).map_err(|e| e.to_string())?;
    let augment = match args.augment {
        AugmentArg::None => Augment::None,
        AugmentArg::Flip => Augment::Flip,
        AugmentArg::Cifar => Augment::cifar(),
        AugmentArg::Imagenet => Augment::imagenet(),
    };
    let unreadable = if args.skip_unreadable {
        Unreadable::Skip
    } else {
        Unreadable::Error
    };
    let data = folder(
        &args.data,
        arch.input,
        args.normalization.into(),
        augment,
        args.cache,
        unreadable,
    )?;
    let val_folder = match &args.val {
        Some(dir) => Some(folder(
            dir,
            arch.input,
            args.normalization.into(),
            Augment::None,
            args.cache,
            unreadable,
        )?),
        None => None,
    };
    if let Some(val) = &val_folder {
        if val.class_names() != data.class_names() {
            return Err(format!(
                "{} has classes {:?}, {} has {:?}",
                args.val.as_ref().expect("a validation folder").display(),
                val.class_names().unwrap_or_default(),
                args.data.display(),
                data.class_names().unwrap_or_default()
            ));
        }
    }
    if data.classes() != arch.classes {
        return Err(format!(
            "{} has {} classes ({}), the spec's model {}: set `classes: {}` in the spec",
            args.data.display(),
            data.classes(),
            data.class_names().unwrap_or_default().join(", "),
            arch.classes,
            data.classes()
        ));
    }
    let mut model = DynamicModel::init(arch, args.seed).map_err(|e| e.to_string())?;
    if let Some(weights) = &args.init_weights {
        let report = model
            .load_partial_file(weights, &PartialLoad::backbone())
            .map_err(|e| format!("{}: {e}", weights.display()))?;
        eprintln!("{}: {report}", weights.display());
    }
    println!("{}", model.summary());

    let held_out = match args.val_split {
        Some(fraction) => Some(split(&data, fraction, args.seed).map_err(|e| e.to_string())?),
        None => None,
    };
    let (train_set, val_set): (&dyn Source, Option<&dyn Source>) = match &held_out {
        Some((train, val)) => (train, Some(val)),
        None => (&data, val_folder.as_ref().map(|v| v as &dyn Source)),
    };
    let optimizer = match args.optimizer {
        OptimizerArg::Sgd => Optimizer::Sgd(SgdConfig {
            lr: args.lr.unwrap_or(SgdConfig::default().lr),
            ..SgdConfig::default()
        }),
        OptimizerArg::Adam => Optimizer::Adam(AdamConfig {
            lr: args.lr.unwrap_or(AdamConfig::default().lr),
            ..AdamConfig::default()
        }),
    };
    let has_val = val_set.is_some();
    let schedule = match args.schedule {
        ScheduleArg::Step => Schedule::Step,
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::Cosine => Schedule::Cosine(CosineConfig {
            warmup_epochs: args.warmup,
            ..CosineConfig::default()
        }),
        ScheduleArg::Plateau => Schedule::Plateau(PlateauConfig {
            monitor: if has_val {
                Monitor::ValLoss
            } else {
                Monitor::Loss
            },
            patience: 2,
            ..PlateauConfig::default()
        }),
    };
    let out = args.out.clone();
    let write_history = |history: &History| {
        // Best effort each epoch; the checkpoints hold the history too.
        for result in [
            history.save_csv(out.join("history.csv")),
            history.save_json(out.join("history.json")),
            history.save_plot(out.join("history.png")),
        ] {
            if let Err(e) = result {
                eprintln!("warning: {e}");
            }
        }
        ControlFlow::Continue(())
    };
    let config = FitConfig {
        epochs: args.epochs,
        batch_size: args.batch,
        optimizer,
        schedule,
        freeze: args.freeze.clone(),
        seed: args.seed,
        validation: val_set,
        checkpoint_dir: Some(args.out.clone()),
        resume: args.resume,
        save_best: has_val.then_some(Monitor::ValLoss),
        early_stopping: args.patience.map(|patience| EarlyStopping {
            monitor: if has_val {
                Monitor::ValLoss
            } else {
                Monitor::Loss
            },
            patience,
            restore_best: true,
            ..EarlyStopping::default()
        }),
        on_epoch_end: Some(OnEpochEnd(&write_history)),
        progress: true,
        ..FitConfig::default()
    };
    let history = fit(&mut model, train_set, &config).map_err(|e| e.to_string())?;
    if data.skipped() > 0 {
        eprintln!(
            "warning: skipped {} unreadable images, e.g. {}",
            data.skipped(),
            data.skipped_files()[0].display()
        );
    }
    let last = checkpoints_in(&args.out)
        .map_err(|e| e.to_string())?
        .pop()
        .map(|(_, path)| path.display().to_string())
        .unwrap_or_default();
    match history.last() {
        Some(e) => {
            let val = e.validation.map_or(String::new(), |v| {
                format!(
                    ", val loss {:.4}, val top-1 {:.2}%, top-{} {:.2}%",
                    v.loss,
                    100.0 * v.accuracy,
                    v.top_k,
                    100.0 * v.top_k_accuracy
                )
            });
            println!(
                "epoch {}: loss {:.4}, accuracy {:.2}%{val}; last checkpoint {last}",
                e.epoch,
                e.loss,
                100.0 * e.train_accuracy
            );
        }
        None => println!("nothing to train"),
    }
    Ok(())
}

pub(crate) fn eval(args: &EvalArgs) -> Result<(), String> {
    args.precision.validate(true)?;
    let arch = load_spec(&args.spec).map_err(|e| e.to_string())?;
    let data = folder(
        &args.data,
        arch.input,
        args.normalization.into(),
        Augment::None,
        false,
        Unreadable::Error,
    )?;
    let saved = train::read_checkpoint_info(&args.weights)
        .ok()
        .and_then(|info| info.class_names);
    if let (Some(saved), Some(names)) = (&saved, data.class_names()) {
        if saved.as_slice() != names {
            return Err(format!(
                "{} was trained on classes {saved:?}, {} has {names:?}",
                args.weights.display(),
                args.data.display()
            ));
        }
    }
    let input = arch.input;
    let model = DynamicModel::load_safetensors(arch, &args.weights, Naming::Auto)
        .map_err(|e| e.to_string())?;
    let name = model.architecture().name.to_string();
    // Calibration images are read as the evaluation data: same size and normalisation.
    let model = args.precision.apply(model, |p| {
        let dir = p
            .calibration
            .as_deref()
            .ok_or("--precision int8 needs --calibration DIR")?;
        let images = folder(
            dir,
            input,
            args.normalization.into(),
            Augment::None,
            false,
            Unreadable::Error,
        )?;
        calibration_from_source(p, &images)
    })?;
    let result = model.evaluate(&data, args.batch)?;
    println!(
        "{name}{}: {} images of {} classes: loss {:.4}, top-1 {:.2}%, top-{} {:.2}%",
        model.describe(),
        result.total,
        data.classes(),
        result.loss,
        100.0 * result.accuracy,
        result.top_k,
        100.0 * result.top_k_accuracy
    );
    Ok(())
}
