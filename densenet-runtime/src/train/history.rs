//! What a run of [`fit`](crate::train::fit) did, epoch by epoch.

use std::path::PathBuf;

use crate::train::Evaluation;

/// What one epoch of [`fit`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// The learning rate of the epoch's first step.
    pub lr: f32,
    /// Mean training loss over the epoch's images (each batch's mean softmax
    /// cross-entropy in training mode, weighted by its size).
    pub loss: f32,
    /// Fraction of the epoch's training images whose training-mode logits (before that
    /// batch's update) put the label first.
    pub train_accuracy: f32,
    /// The validation set's [`evaluate`] after the epoch, if one was given.
    pub validation: Option<Evaluation>,
    /// Training images per second (the steps only, not evaluation or checkpointing).
    pub images_per_sec: f64,
    /// Wall time of the whole epoch (steps, validation and checkpoint).
    pub seconds: f64,
    /// The checkpoint written after the epoch, if any.
    pub checkpoint: Option<PathBuf>,
}

/// Every epoch's [`EpochStats`], in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// One record per epoch.
    pub epochs: Vec<EpochStats>,
}

impl History {
    /// The last epoch's record (`None` only for an empty history).
    pub fn last(&self) -> Option<&EpochStats> {
        self.epochs.last()
    }

    /// Total wall time of all epochs, in seconds.
    pub fn seconds(&self) -> f64 {
        self.epochs.iter().map(|e| e.seconds).sum()
    }
}
