//! Learning-rate schedules.

use crate::train::step_lr;

/// How the learning rate changes over the epochs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// The DenseNet paper's: divided by 10 at 50% and at 75% of the epochs ([`step_lr`]).
    #[default]
    Step,
    /// The optimiser's rate throughout.
    Constant,
}

impl Schedule {
    /// The rate of epoch `epoch` (0-based) of `epochs` for a base rate `base`.
    pub fn lr(self, base: f32, epoch: usize, epochs: usize) -> f32 {
        match self {
            Schedule::Step => step_lr(base, epoch, epochs),
            Schedule::Constant => base,
        }
    }
}
