//! Learning-rate schedules: the paper's step schedule, a constant rate, cosine decay with
//! linear warmup (Keras's `CosineDecay`) and reduce-on-plateau (Keras's
//! `ReduceLROnPlateau` callback).
//!
//! [`Schedule::lr`] is a pure function of the run's position and of the epochs already
//! finished, called before every step. Reduce-on-plateau, a stateful callback in Keras,
//! is computed here by replaying the callback over the history, so a run resumed from a
//! checkpoint (which stores the history) gets exactly the rates of an uninterrupted one
//! with no schedule state to save. The replay costs one pass over the epochs per step,
//! nothing beside a training step.

use crate::train::{step_lr, EpochStats, Monitor, TrainError};

/// How the learning rate changes over a run. The optimiser's learning rate is the base
/// rate `base` of [`Schedule::lr`].
///
/// ```
/// use densenet_runtime::train::{CosineConfig, Monitor, PlateauConfig, Progress, Schedule};
///
/// // One epoch of linear warmup from 0, then cosine decay to 1% of the base rate.
/// let cosine = Schedule::Cosine(CosineConfig { warmup_epochs: 1, alpha: 0.01, ..CosineConfig::default() });
/// let at = |epoch, step| Progress { epoch, epochs: 10, step, steps: 100 };
/// assert_eq!(cosine.lr(0.1, at(0, 0), &[]), 0.0);
/// assert_eq!(cosine.lr(0.1, at(1, 0), &[]), 0.1);
/// assert!(cosine.lr(0.1, at(5, 50), &[]) < 0.06);
///
/// // Divide by 10 after 3 epochs without a better validation loss.
/// let plateau = Schedule::Plateau(PlateauConfig { monitor: Monitor::ValLoss, patience: 3, ..PlateauConfig::default() });
/// plateau.validate(10)?;
/// # Ok::<(), densenet_runtime::TrainError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Schedule {
    /// The DenseNet paper's: divided by 10 at 50% and at 75% of the epochs ([`step_lr`]).
    #[default]
    Step,
    /// The optimiser's rate throughout.
    Constant,
    /// Linear warmup, then cosine decay, per step ([`CosineConfig`]).
    Cosine(CosineConfig),
    /// Divided by a factor when a metric stops improving, per epoch ([`PlateauConfig`]).
    Plateau(PlateauConfig),
}

/// Settings of [`Schedule::Cosine`]: over the first `warmup_epochs` epochs the rate rises
/// linearly from `warmup_start · base` to `base`, step by step; over the remaining steps
/// it decays along a half cosine from `base` towards `alpha · base`:
///
/// ```text
/// lr(s) = w + (base − w) · s / W                              for s < W, w = warmup_start · base
/// lr(s) = base · ((1 − alpha) · ½ (1 + cos(π (s − W) / D)) + alpha)   otherwise
/// ```
///
/// where `s` is the step counted over the whole run (0-based), `W = warmup_epochs ·
/// steps` and `D = epochs · steps − W`. This is Keras's
/// `keras.optimizers.schedules.CosineDecay` evaluated at the optimiser's step count, with
/// `decay_steps = D` and `alpha = alpha`; without warmup, `initial_learning_rate = base`
/// and `warmup_target = None`; with warmup, `initial_learning_rate = warmup_start · base`,
/// `warmup_target = base` and `warmup_steps = W` (our base rate is Keras's warmup target).
/// The last step's rate is just above `alpha · base`, as in Keras with these settings.
///
/// [`Default`]: no warmup, decay to 0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CosineConfig {
    /// Epochs of linear warmup (fewer than the run's epochs).
    pub warmup_epochs: usize,
    /// The first warmup step's rate, as a fraction of the base rate, in `[0, 1]`.
    pub warmup_start: f32,
    /// The rate the decay tends to, as a fraction of the base rate, in `[0, 1]`.
    pub alpha: f32,
}

/// Settings of [`Schedule::Plateau`], Keras's `ReduceLROnPlateau(monitor, factor,
/// patience, mode="auto", min_delta, cooldown, min_lr)`: after each epoch the monitored
/// value is compared with the best so far ([`Monitor::improves`], with `min_delta`); after
/// `patience` epochs in a row without improvement the rate is multiplied by `factor` (not
/// below `min_lr`), and the next `cooldown` epochs do not count towards the patience.
/// The new rate applies from the next epoch on. Epochs whose record lacks the metric
/// (no validation set) are skipped, as Keras skips them with a warning.
///
/// [`Default`]: Keras's defaults (`val_loss`, factor 0.1, patience 10, min_delta 1e-4,
/// cooldown 0, min_lr 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlateauConfig {
    /// The metric watched; its [`Monitor::mode`] says whether lower or higher is better.
    pub monitor: Monitor,
    /// The factor the rate is multiplied by, in `(0, 1)`.
    pub factor: f32,
    /// Epochs without improvement before the rate is reduced (0: at every such epoch).
    pub patience: usize,
    /// The smallest change that counts as an improvement, `>= 0`.
    pub min_delta: f32,
    /// Epochs after a reduction during which no epoch counts towards the patience.
    pub cooldown: usize,
    /// The rate is never reduced below this, `>= 0`.
    pub min_lr: f32,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        PlateauConfig {
            monitor: Monitor::ValLoss,
            factor: 0.1,
            patience: 10,
            min_delta: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
        }
    }
}

/// Where in a run a learning rate is asked for: step `step` (0-based) of `steps` in epoch
/// `epoch` (0-based) of `epochs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The epoch, 0-based.
    pub epoch: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// The step within the epoch, 0-based.
    pub step: usize,
    /// Steps in an epoch.
    pub steps: usize,
}

impl Schedule {
    /// The rate for the step at `at`, for a base rate `base`, given the epochs already
    /// finished (`history`, oldest first: what [`Schedule::Plateau`] reads; only its
    /// first `at.epoch` records are used). A pure function of its arguments, so a
    /// resumed run recomputes exactly the rates of an uninterrupted one. Settings out of
    /// range ([`Schedule::validate`]) give unspecified rates, never a panic.
    pub fn lr(&self, base: f32, at: Progress, history: &[EpochStats]) -> f32 {
        match self {
            Schedule::Step => step_lr(base, at.epoch, at.epochs),
            Schedule::Constant => base,
            Schedule::Cosine(c) => c.lr(base, at),
            Schedule::Plateau(c) => c.lr(base, &history[..at.epoch.min(history.len())]),
        }
    }

    /// Checks the settings for a run of `epochs` epochs; [`fit`](crate::train::fit)
    /// calls it before the first step.
    ///
    /// # Errors
    ///
    /// [`TrainError::Setting`] naming the field: [`CosineConfig::warmup_epochs`] not
    /// below `epochs`, [`CosineConfig::warmup_start`] or [`CosineConfig::alpha`] outside
    /// `[0, 1]`; [`PlateauConfig::factor`] outside `(0, 1)`, [`PlateauConfig::min_delta`]
    /// or [`PlateauConfig::min_lr`] negative or not finite.
    pub fn validate(&self, epochs: usize) -> Result<(), TrainError> {
        match self {
            Schedule::Step | Schedule::Constant => Ok(()),
            Schedule::Cosine(c) => {
                if c.warmup_epochs > 0 && c.warmup_epochs >= epochs {
                    return Err(TrainError::Setting {
                        field: "CosineConfig::warmup_epochs",
                        value: c.warmup_epochs as f32,
                        range: "[0, epochs) (the decay needs at least one epoch)",
                    });
                }
                unit_interval("CosineConfig::warmup_start", c.warmup_start)?;
                unit_interval("CosineConfig::alpha", c.alpha)
            }
            Schedule::Plateau(c) => {
                if !(c.factor > 0.0 && c.factor < 1.0) {
                    return Err(TrainError::Setting {
                        field: "PlateauConfig::factor",
                        value: c.factor,
                        range: "(0, 1)",
                    });
                }
                non_negative("PlateauConfig::min_delta", c.min_delta)?;
                non_negative("PlateauConfig::min_lr", c.min_lr)
            }
        }
    }
}

fn unit_interval(field: &'static str, value: f32) -> Result<(), TrainError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(TrainError::Setting {
            field,
            value,
            range: "[0, 1]",
        })
    }
}

fn non_negative(field: &'static str, value: f32) -> Result<(), TrainError> {
    if value >= 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(TrainError::Setting {
            field,
            value,
            range: "[0, inf)",
        })
    }
}

impl CosineConfig {
    /// Keras's `CosineDecay.__call__` (module `keras.optimizers.schedules`), in f64.
    fn lr(&self, base: f32, at: Progress) -> f32 {
        let step = (at.epoch * at.steps + at.step) as f64;
        let total = (at.epochs * at.steps) as f64;
        let warmup = (self.warmup_epochs * at.steps) as f64;
        let base = f64::from(base);
        if step < warmup {
            let start = f64::from(self.warmup_start) * base;
            return (start + (base - start) * step / warmup) as f32;
        }
        // At least one step, so a schedule out of range still gives a number.
        let decay = (total - warmup).max(1.0);
        let done = (step - warmup).min(decay) / decay;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * done).cos());
        let alpha = f64::from(self.alpha);
        (base * ((1.0 - alpha) * cosine + alpha)) as f32
    }
}

impl PlateauConfig {
    /// Keras's `ReduceLROnPlateau.on_epoch_end` replayed over `history`. The rate is
    /// rounded to f32 at each reduction, as Keras stores it in the optimiser's float32
    /// variable; the product and the floor are taken in f64, as Keras does in Python.
    fn lr(&self, base: f32, history: &[EpochStats]) -> f32 {
        let mut lr = base;
        let mut best = None;
        let (mut wait, mut cooldown) = (0usize, 0usize);
        for stats in history {
            let Some(current) = self.monitor.value(stats) else {
                continue;
            };
            if cooldown > 0 {
                cooldown -= 1;
                wait = 0;
            }
            if self.monitor.improves(current, best, self.min_delta) {
                best = Some(current);
                wait = 0;
            } else if cooldown == 0 {
                wait += 1;
                // Keras keeps `wait` when the rate is already at the floor, so it tries
                // again at the next epoch; so does this.
                if wait >= self.patience && lr > self.min_lr {
                    let reduced = f64::from(lr) * f64::from(self.factor);
                    lr = reduced.max(f64::from(self.min_lr)) as f32;
                    cooldown = self.cooldown;
                    wait = 0;
                }
            }
        }
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::history::test_epoch;

    fn at(epoch: usize, step: usize, epochs: usize, steps: usize) -> Progress {
        Progress {
            epoch,
            epochs,
            step,
            steps,
        }
    }

    #[test]
    fn cosine_ends_of_the_warmup_and_of_the_decay() {
        let s = Schedule::Cosine(CosineConfig {
            warmup_epochs: 2,
            warmup_start: 0.5,
            alpha: 0.25,
        });
        // Warmup: 0.5·base at step 0, half-way (0.75·base) at step 2 of 4.
        assert_eq!(s.lr(0.4, at(0, 0, 4, 2), &[]), 0.2);
        assert_eq!(s.lr(0.4, at(1, 0, 4, 2), &[]), 0.3);
        // Decay from base; half-way its value is (1 + alpha) / 2 · base.
        assert_eq!(s.lr(0.4, at(2, 0, 4, 2), &[]), 0.4);
        assert_eq!(s.lr(0.4, at(3, 0, 4, 2), &[]), 0.25);
        // Past the run (a caller's mistake): held at alpha · base.
        assert_eq!(s.lr(0.4, at(9, 0, 4, 2), &[]), 0.1);
    }

    #[test]
    fn cosine_out_of_range_gives_a_number() {
        let s = Schedule::Cosine(CosineConfig {
            warmup_epochs: 3,
            ..CosineConfig::default()
        });
        assert!(s.validate(3).is_err());
        assert!(s.lr(1.0, at(2, 0, 3, 1), &[]).is_finite());
        assert!(s.lr(1.0, at(0, 0, 0, 0), &[]).is_finite());
    }

    #[test]
    fn plateau_reads_only_the_finished_epochs_and_skips_missing_values() {
        let s = Schedule::Plateau(PlateauConfig {
            patience: 1,
            factor: 0.5,
            ..PlateauConfig::default()
        });
        let history = [
            test_epoch(1, 1.0, Some(1.0)),
            test_epoch(1, 1.0, None),
            test_epoch(1, 1.0, Some(2.0)),
        ];
        // Epoch 1 sees one value: nothing to compare with.
        assert_eq!(s.lr(0.1, at(1, 0, 5, 3), &history), 0.1);
        // Epoch 2: the missing value is skipped, not counted as a plateau.
        assert_eq!(s.lr(0.1, at(2, 0, 5, 3), &history), 0.1);
        // Epoch 3: 2.0 is no better than 1.0; patience 1 is used up.
        assert_eq!(s.lr(0.1, at(3, 0, 5, 3), &history), 0.05);
        // A history longer than the position (not from `fit`) is cut to it.
        assert_eq!(s.lr(0.1, at(1, 0, 5, 3), &history), 0.1);
    }

    #[test]
    fn validate_names_the_field() {
        let bad = [
            (
                Schedule::Cosine(CosineConfig {
                    alpha: 1.5,
                    ..CosineConfig::default()
                }),
                "CosineConfig::alpha",
            ),
            (
                Schedule::Cosine(CosineConfig {
                    warmup_start: -0.1,
                    ..CosineConfig::default()
                }),
                "CosineConfig::warmup_start",
            ),
            (
                Schedule::Cosine(CosineConfig {
                    warmup_epochs: 10,
                    ..CosineConfig::default()
                }),
                "CosineConfig::warmup_epochs",
            ),
            (
                Schedule::Plateau(PlateauConfig {
                    factor: 1.0,
                    ..PlateauConfig::default()
                }),
                "PlateauConfig::factor",
            ),
            (
                Schedule::Plateau(PlateauConfig {
                    min_delta: f32::NAN,
                    ..PlateauConfig::default()
                }),
                "PlateauConfig::min_delta",
            ),
            (
                Schedule::Plateau(PlateauConfig {
                    min_lr: -1.0,
                    ..PlateauConfig::default()
                }),
                "PlateauConfig::min_lr",
            ),
        ];
        for (schedule, name) in bad {
            match schedule.validate(10) {
                Err(TrainError::Setting { field, .. }) => assert_eq!(field, name),
                other => panic!("{schedule:?}: {other:?}"),
            }
        }
        for good in [
            Schedule::Step,
            Schedule::Constant,
            Schedule::Cosine(CosineConfig {
                warmup_epochs: 9,
                warmup_start: 1.0,
                alpha: 0.0,
            }),
            Schedule::Plateau(PlateauConfig::default()),
        ] {
            good.validate(10).unwrap();
        }
    }
}
