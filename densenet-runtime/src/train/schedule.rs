//! Learning-rate schedules.

use crate::train::{step_lr, EpochStats};

/// How the learning rate changes over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Schedule {
    /// The DenseNet paper's: divided by 10 at 50% and at 75% of the epochs ([`step_lr`]).
    #[default]
    Step,
    /// The optimiser's rate throughout.
    Constant,
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
    /// finished (`history`, oldest first: what schedules that react to the validation
    /// metric read). A pure function of its arguments, so a resumed run recomputes
    /// exactly the rates of an uninterrupted one.
    pub fn lr(&self, base: f32, at: Progress, history: &[EpochStats]) -> f32 {
        let _ = history;
        match self {
            Schedule::Step => step_lr(base, at.epoch, at.epochs),
            Schedule::Constant => base,
        }
    }
}
