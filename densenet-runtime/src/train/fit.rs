//! The training loop: [`fit`] a model to a [`Dataset`] epoch by epoch, [`evaluate`] it,
//! and write a checkpoint per epoch.
//!
//! One run draws everything random (the order of each epoch, dropout masks) from one
//! [`Rng`] seeded with [`FitConfig::seed`], in a fixed sequence: the same model, data
//! and configuration give the same weights bit for bit.

use std::path::PathBuf;
use std::time::Instant;

use std::ops::ControlFlow;

use crate::rng::Rng;
use crate::stage::LayerRef;
use crate::stage::Network;
use crate::train::callbacks::best_epoch;
use crate::train::checkpoint::{self, checkpoint_path, checkpoints_in, resume, RunState};
use crate::train::dataset::permutation;
use crate::train::evaluate::{check_fits, count_correct};
use crate::train::recycled;
use crate::train::tape::step;
use crate::train::{
    evaluate, optim::Stepper, Adam, AdamConfig, EarlyStopping, EpochStats, Freeze, History,
    Monitor, Progress, Schedule, Sgd, SgdConfig, Source, StepConfig, TrainError,
};
use crate::weights;
use crate::weights::Naming;
use crate::weights::SaveError;

/// Which optimiser [`fit`] uses, with its settings (the learning rate is the base rate
/// of the [`Schedule`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// SGD; [`SgdConfig::default`] is the paper's (lr 0.1, Nesterov 0.9, wd 1e-4).
    Sgd(SgdConfig),
    /// Adam; [`AdamConfig::default`] is torch's (lr 1e-3).
    Adam(AdamConfig),
}

impl Optimizer {
    fn base_lr(&self) -> f32 {
        match self {
            Optimizer::Sgd(c) => c.lr,
            Optimizer::Adam(c) => c.lr,
        }
    }

    /// [`SgdConfig::validate`] or [`AdamConfig::validate`].
    fn validate(&self) -> Result<(), TrainError> {
        match self {
            Optimizer::Sgd(c) => c.validate(),
            Optimizer::Adam(c) => c.validate(),
        }
    }
}

/// Settings of [`fit`]. [`Default`]: 10 epochs of batches of 64 with the paper's SGD and
/// step schedule, the architecture's dropout, seed 0, no validation, no checkpoints, no
/// progress display.
#[derive(Clone, Debug)]
pub struct FitConfig<'a> {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step (the last batch of an epoch holds the remainder).
    pub batch_size: usize,
    /// The optimiser and its base learning rate.
    pub optimizer: Optimizer,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// The training step's dropout rate and BatchNorm momentum.
    pub step: StepConfig,
    /// The layers left alone ([`Freeze::backbone`]: train the classifier only).
    pub freeze: Freeze,
    /// Seeds the run's one generator (shuffling and dropout). The weights' initial
    /// values are the model's own (`M::init(seed)` by the caller).
    pub seed: u64,
    /// Evaluated after every epoch (accuracy in [`EpochStats::validation`]).
    pub validation: Option<&'a dyn Source>,
    /// If set, a resumable checkpoint is written after every epoch `e` (1-based) to
    /// `dir/epoch-{e:03}.safetensors` (the weights in torchvision naming, so it loads
    /// as a weights file, plus the optimiser's state, the generator and the history:
    /// see [`checkpoint_path`]); the directory is created if needed. A new run refuses
    /// a directory that holds checkpoints ([`TrainError::RunExists`]) unless `resume`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue the run whose checkpoints are in `checkpoint_dir` from its latest one
    /// (weights, optimiser state, generator, history), or start it if there are none:
    /// the result is the uninterrupted run's, bit for bit. `epochs` is the run's total.
    pub resume: bool,
    /// Also write `checkpoint_dir/best.safetensors` (a checkpoint like the others)
    /// after every epoch whose metric is the best so far (Keras's
    /// `ModelCheckpoint(save_best_only=True)`). Needs `checkpoint_dir`.
    pub save_best: Option<Monitor>,
    /// Stop when a metric stops improving (Keras's `EarlyStopping`).
    pub early_stopping: Option<EarlyStopping>,
    /// Called after every epoch with the history so far (on a resumed run, the whole
    /// run's); [`ControlFlow::Break`] ends the run there (after that epoch's
    /// checkpoint). E.g. write the history to a file, or stop on a condition of your own.
    pub on_epoch_end: Option<OnEpochEnd<'a>>,
    /// Show a progress bar per epoch (with the `progress` feature, else one line per
    /// epoch) on standard error.
    pub progress: bool,
}

/// A function [`fit`] calls after every epoch ([`FitConfig::on_epoch_end`]).
#[derive(Clone, Copy)]
pub struct OnEpochEnd<'a>(pub &'a (dyn Fn(&History) -> ControlFlow<()> + Sync));

impl std::fmt::Debug for OnEpochEnd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEpochEnd(..)")
    }
}

impl Default for FitConfig<'_> {
    fn default() -> Self {
        FitConfig {
            epochs: 10,
            batch_size: 64,
            optimizer: Optimizer::Sgd(SgdConfig::default()),
            schedule: Schedule::Step,
            step: StepConfig::default(),
            freeze: Freeze::none(),
            seed: 0,
            validation: None,
            checkpoint_dir: None,
            resume: false,
            save_best: None,
            early_stopping: None,
            on_epoch_end: None,
            progress: false,
        }
    }
}

/// Trains `model` on `train` (any [`Source`]: a [`Dataset`](crate::train::Dataset) in
/// memory, an `image::ImageFolder` on disk, a [`Subset`](crate::train::Subset)) for
/// `config.epochs` epochs and returns the per-epoch history. Each epoch visits the
/// images in a fresh random order, in batches of `config.batch_size` (augmented by the
/// source, from the run's generator): per batch the learning rate from the schedule, a
/// training step ([`loss_and_gradients_frozen`](crate::train::loss_and_gradients_frozen),
/// with `config.freeze`) and an optimiser step. After each epoch: the validation set is
/// evaluated, the checkpoint (and the best epoch's) written, early stopping decided and
/// `on_epoch_end` called. With `resume`, the run continues from its latest checkpoint.
///
/// A batch of a single image is skipped if the model's last feature map is 1x1 (its
/// BatchNorm in training mode would see one value per channel, which torch rejects).
///
/// Any [`Model`](crate::Model) trains (a `densenet!` model, e.g. `let mut model = MyNet::init(0);`):
///
/// ```
/// use densenet_runtime::train::{evaluate, fit, AdamConfig, Dataset, FitConfig, Optimizer};
/// use densenet_runtime::{Model, TrainError};
///
/// fn train<M: Model>(model: &mut M, train: &Dataset, test: &Dataset) -> Result<f32, TrainError> {
///     let config = FitConfig {
///         epochs: 3,
///         batch_size: 32,
///         optimizer: Optimizer::Adam(AdamConfig::default()),
///         validation: Some(test),
///         ..FitConfig::default()
///     };
///     let history = fit(model, train, &config)?;
///     for e in &history.epochs {
///         println!("epoch {}: loss {:.3}, {:.0} images/s", e.epoch, e.loss, e.images_per_sec);
///     }
///     Ok(evaluate(model, test, 256)?.accuracy)
/// }
/// ```
///
/// # Errors
///
/// Checked before anything changes: [`TrainError::NoClassifier`];
/// [`TrainError::ImageShape`] or [`TrainError::Classes`] if `train` (or the validation
/// set) does not fit the model; [`TrainError::NoEpochs`]; [`TrainError::BatchSize`];
/// [`TrainError::LearningRate`] or [`TrainError::Setting`] for an optimiser setting out
/// of range ([`SgdConfig::validate`], [`AdamConfig::validate`]); [`TrainError::Dropout`];
/// [`TrainError::Setting`] for a BatchNorm momentum outside `(0, 1]`;
/// [`TrainError::Setting`] for a schedule setting out of range ([`Schedule::validate`]);
/// [`TrainError::Freeze`] for a part the model lacks or nothing left to train;
/// [`TrainError::Conflict`] for a validation metric watched without a validation set,
/// or a best checkpoint without a checkpoint directory;
/// [`TrainError::RunExists`] for a new run into a directory holding checkpoints;
/// [`TrainError::Resume`] for a checkpoint of another model, optimiser or class list
/// (the model unchanged);
/// [`TrainError::Checkpoint`] if the checkpoint directory cannot be created. During
/// training, [`TrainError::Diverged`] at the first NaN or infinite loss (before that
/// batch's update) and [`TrainError::NonFiniteWeights`] after the first step that
/// leaves a NaN or infinite weight or running statistic: the run stops there, so the
/// checkpoints already written are the earlier, finite epochs', while the model keeps
/// the diverged state;
/// [`TrainError::Checkpoint`] if a checkpoint cannot be written (the model keeps the
/// epochs trained so far).
pub fn fit<M: Network + ?Sized, S: Source + ?Sized>(
    model: &mut M,
    train: &S,
    config: &FitConfig<'_>,
) -> Result<History, TrainError> {
    let arch = model.architecture().clone();
    check_fits(&*model, train)?;
    if let Some(val) = config.validation {
        check_fits(&*model, val)?;
    }
    if config.epochs == 0 {
        return Err(TrainError::NoEpochs);
    }
    // BatchNorm on batch statistics needs two values per channel; the smallest feature
    // map is the last block's.
    let last = model.plan().blocks.last().map_or(1, |b| b.height * b.width);
    let min_batch = if last < 2 { 2 } else { 1 };
    if config.batch_size < min_batch || train.len() < min_batch {
        return Err(TrainError::BatchSize {
            batch_size: config.batch_size.min(train.len()),
            min: min_batch,
        });
    }
    config.optimizer.validate()?;
    // Steps reuse this thread's step memory; a finished (or failed) run frees it.
    let _release = ReleaseStepMemory;
    config.schedule.validate(config.epochs)?;
    let plateau = match config.schedule {
        Schedule::Plateau(p) => Some(p.monitor),
        _ => None,
    };
    let watched = config
        .save_best
        .into_iter()
        .chain(config.early_stopping.map(|e| e.monitor))
        .chain(plateau);
    for monitor in watched {
        if monitor.is_validation() && config.validation.is_none() {
            return Err(TrainError::Conflict {
                reason: format!("watching `{monitor}` needs a validation set"),
            });
        }
    }
    if config.save_best.is_some() && config.checkpoint_dir.is_none() {
        return Err(TrainError::Conflict {
            reason: "saving the best epoch needs a checkpoint directory".into(),
        });
    }
    config.freeze.check(&*model)?;
    let base_lr = config.optimizer.base_lr();
    let rate = config.step.dropout.unwrap_or(arch.dropout);
    if !(0.0..1.0).contains(&rate) {
        return Err(TrainError::Dropout { rate });
    }
    let bn_momentum = config.step.momentum;
    if !(bn_momentum > 0.0 && bn_momentum <= 1.0) {
        return Err(TrainError::Setting {
            field: "StepConfig::momentum",
            value: bn_momentum,
            range: "(0, 1]",
        });
    }
    let mut optimizer = match config.optimizer {
        Optimizer::Sgd(c) => Stepper::Sgd(Sgd::new(c)),
        Optimizer::Adam(c) => Stepper::Adam(Adam::new(c)),
    };
    let mut rng = Rng::new(config.seed);
    let mut history = History::default();
    let mut first_epoch = 0;
    if let Some(dir) = &config.checkpoint_dir {
        let existing = checkpoints_in(dir)?;
        match (existing.last(), config.resume) {
            (Some(&(last, _)), false) => {
                return Err(TrainError::RunExists {
                    dir: dir.clone(),
                    last,
                })
            }
            (Some((_, path)), true) => {
                let resumed = resume(model, path, &mut optimizer, train.class_names())?;
                rng = resumed.rng;
                history = resumed.history;
                first_epoch = resumed.epoch;
            }
            (None, _) => {}
        }
        std::fs::create_dir_all(dir).map_err(|source| {
            TrainError::Checkpoint(SaveError::Io {
                path: dir.clone(),
                source,
            })
        })?;
    }

    // The best epoch's weights, for `EarlyStopping::restore_best`.
    let mut best_weights: Option<(usize, Vec<u8>)> = None;
    for epoch in first_epoch..config.epochs {
        let start = Instant::now();
        let order = permutation(train.len(), &mut rng);
        let chunks = order.chunks(config.batch_size);
        let steps = chunks.len();
        let mut display = Display::new(config.progress, epoch + 1, config.epochs, steps);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = base_lr;
        for (index, chunk) in chunks.enumerate() {
            let at = Progress {
                epoch,
                epochs: config.epochs,
                step: index,
                steps,
            };
            let rate = config.schedule.lr(base_lr, at, &history.epochs);
            if index == 0 {
                lr = rate;
            }
            optimizer.set_lr(rate);
            let batch = train.batch(chunk, Some(rng.next_u64()))?;
            if batch.len() < min_batch {
                continue;
            }
            let (loss, logits, grads) = step(
                model,
                batch.images.view(),
                &batch.labels,
                config.step,
                &config.freeze,
                &mut rng,
                None,
            )?;
            // Diverged: stop before these gradients (non-finite too) reach the weights.
            if !loss.is_finite() {
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    batch: index + 1,
                    loss,
                });
            }
            optimizer.step(model, &grads);
            grads.recycle();
            // BatchNorm keeps a training-mode loss finite while weights and running
            // statistics overflow (lr 1e6: an infinite running variance after the
            // first step). One pass over the parameters, small beside the step.
            if let Some(tensor) = first_non_finite(model) {
                return Err(TrainError::NonFiniteWeights {
                    epoch: epoch + 1,
                    batch: index + 1,
                    tensor,
                });
            }
            loss_sum += f64::from(loss) * batch.len() as f64;
            correct += count_correct(&logits, &batch.labels);
            recycled::give(logits.into_raw_vec_and_offset().0);
            seen += batch.len();
            display.update(
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / start.elapsed().as_secs_f64(),
            );
        }
        let train_secs = start.elapsed().as_secs_f64();
        let validation = match config.validation {
            Some(val) => Some(evaluate(model, val, config.batch_size)?),
            None => None,
        };
        let checkpoint = config
            .checkpoint_dir
            .as_ref()
            .map(|dir| checkpoint_path(dir, epoch + 1));
        let stats = EpochStats {
            epoch: epoch + 1,
            lr,
            loss: (loss_sum / seen.max(1) as f64) as f32,
            train_accuracy: (correct as f64 / seen.max(1) as f64) as f32,
            validation,
            images_per_sec: seen as f64 / train_secs.max(f64::MIN_POSITIVE),
            seconds: start.elapsed().as_secs_f64(),
            checkpoint,
        };
        display.finish(&stats);
        history.epochs.push(stats);
        if let Some(path) = &history.epochs[history.epochs.len() - 1].checkpoint {
            let state = RunState {
                epoch: epoch + 1,
                rng: &rng,
                optimizer: optimizer.export(),
                history: &history,
                class_names: train.class_names(),
            };
            checkpoint::write(&*model, path, &state)?;
            let best = config
                .save_best
                .and_then(|m| best_epoch(m, &history.epochs));
            if best == Some(epoch + 1) {
                let dir = path.parent().expect("a checkpoint is in its directory");
                checkpoint::write(&*model, &dir.join(BEST_CHECKPOINT), &state)?;
            }
        }
        if let Some(stopping) = &config.early_stopping {
            let verdict = stopping.verdict(&history.epochs);
            // This epoch is the new best: keep its weights (an earlier best of a
            // resumed run is read back from its checkpoint instead).
            if stopping.restore_best && verdict.best == Some(epoch + 1) {
                best_weights = Some((epoch + 1, weights::to_bytes(&*model)));
            }
            if verdict.stop {
                if let (true, Some(best)) = (stopping.restore_best, verdict.best) {
                    restore(
                        model,
                        best,
                        best_weights.take(),
                        config.checkpoint_dir.as_deref(),
                    )?;
                }
                break;
            }
        }
        if let Some(OnEpochEnd(f)) = config.on_epoch_end {
            if f(&history).is_break() {
                break;
            }
        }
    }
    Ok(history)
}

/// The file [`FitConfig::save_best`] writes in the checkpoint directory.
pub const BEST_CHECKPOINT: &str = "best.safetensors";

/// Puts back epoch `best`'s weights: kept in memory when this process trained it, else
/// (a resumed run) read from its checkpoint.
fn restore<M: Network + ?Sized>(
    model: &mut M,
    best: usize,
    kept: Option<(usize, Vec<u8>)>,
    dir: Option<&std::path::Path>,
) -> Result<(), TrainError> {
    let bytes = match (kept, dir) {
        (Some((epoch, bytes)), _) if epoch == best => bytes,
        (_, Some(dir)) => {
            let path = checkpoint_path(dir, best);
            std::fs::read(&path).map_err(|e| TrainError::Resume {
                path: path.clone(),
                reason: format!("cannot read the best epoch's weights: {e}"),
            })?
        }
        _ => unreachable!("the best epoch's weights are kept from the epoch on"),
    };
    weights::load_into(model, &bytes, Naming::Torchvision.into()).map_err(|e| TrainError::Resume {
        path: dir.map(|d| checkpoint_path(d, best)).unwrap_or_default(),
        reason: e.to_string(),
    })
}

/// The torchvision key of the first weight or running statistic of `model` holding a
/// NaN or infinity, if any.
fn first_non_finite<M: Network + ?Sized>(model: &M) -> Option<String> {
    let mut found = None;
    model.visit_layers(&mut |name, layer| {
        if found.is_some() {
            return;
        }
        fn bad<'a>(values: impl IntoIterator<Item = &'a f32>) -> bool {
            values.into_iter().any(|v| !v.is_finite())
        }
        let tensor = match layer {
            LayerRef::Conv(conv) => bad(conv.weight().iter()).then_some("weight"),
            LayerRef::BatchNorm(bn) => [
                ("weight", bn.gamma()),
                ("bias", bn.beta()),
                ("running_mean", bn.running_mean()),
                ("running_var", bn.running_var()),
            ]
            .into_iter()
            .find(|(_, values)| bad(values.iter()))
            .map(|(tensor, _)| tensor),
            LayerRef::Linear(linear) => {
                if bad(linear.weight().iter()) {
                    Some("weight")
                } else {
                    bad(linear.bias().iter()).then_some("bias")
                }
            }
        };
        if let Some(tensor) = tensor {
            found = Some(format!(
                "{}.{tensor}",
                weights::torchvision_path(name.site, name.part)
            ));
        }
    });
    found
}

/// The progress display of one epoch: an `indicatif` bar with the `progress` feature,
/// else one line at the end of the epoch; nothing if not asked for.
struct Display {
    on: bool,
    epoch: usize,
    epochs: usize,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Display {
    fn new(on: bool, epoch: usize, epochs: usize, batches: usize) -> Self {
        #[cfg(feature = "progress")]
        let bar = on.then(|| {
            let bar = indicatif::ProgressBar::new(batches as u64);
            let style = indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} batches {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{epoch}/{epochs}"));
            bar
        });
        #[cfg(not(feature = "progress"))]
        let _ = batches;
        Display {
            on,
            epoch,
            epochs,
            #[cfg(feature = "progress")]
            bar,
        }
    }

    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    fn update(&mut self, loss: f64, accuracy: f64, images_per_sec: f64) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {loss:.4} acc {:.1}% {images_per_sec:.0} img/s",
                100.0 * accuracy
            ));
            bar.inc(1);
        }
    }

    fn finish(self, stats: &EpochStats) {
        if !self.on {
            return;
        }
        let val = stats
            .validation
            .map(|v| format!(" val loss {:.4} val acc {:.2}%", v.loss, 100.0 * v.accuracy))
            .unwrap_or_default();
        let line = format!(
            "loss {:.4} acc {:.2}%{val} lr {} {:.0} img/s {:.1} s",
            stats.loss,
            100.0 * stats.train_accuracy,
            stats.lr,
            stats.images_per_sec,
            stats.seconds
        );
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar {
            // Not drawn when standard error is not a terminal: print the line then.
            if !bar.is_hidden() {
                bar.finish_with_message(line);
                return;
            }
        }
        eprintln!("epoch {}/{} {line}", self.epoch, self.epochs);
    }
}

/// Frees this thread's kept step memory when dropped ([`super::release_step_memory`]).
struct ReleaseStepMemory;

impl Drop for ReleaseStepMemory {
    fn drop(&mut self) {
        super::release_step_memory();
    }
}
