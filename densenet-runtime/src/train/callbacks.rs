//! Early stopping and best-only checkpoints, as Keras's `EarlyStopping` and
//! `ModelCheckpoint(save_best_only=True)` decide them. Both are functions of the
//! history, so a resumed run decides exactly as the uninterrupted one.

use crate::train::{EpochStats, Monitor};

/// Stop when the monitored metric has not improved for `patience` epochs (Keras's
/// `EarlyStopping`, whose defaults these are: `val_loss`, patience 0, no minimum
/// change, weights not restored).
///
/// ```
/// use densenet_runtime::train::{EarlyStopping, Monitor};
///
/// let stop = EarlyStopping { monitor: Monitor::ValAccuracy, patience: 3, ..EarlyStopping::default() };
/// assert_eq!(stop.patience, 3);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EarlyStopping {
    /// The metric watched.
    pub monitor: Monitor,
    /// Epochs without improvement tolerated before stopping.
    pub patience: usize,
    /// Smallest change that counts as an improvement.
    pub min_delta: f32,
    /// On stopping, put back the weights of the best epoch (Keras's
    /// `restore_best_weights`).
    pub restore_best: bool,
}

/// What the history says so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The best epoch (1-based), if any had the metric.
    pub best: Option<usize>,
    /// Whether to stop after the last epoch.
    pub stop: bool,
}

impl EarlyStopping {
    /// Replays Keras's `EarlyStopping.on_epoch_end` over `history`.
    pub(crate) fn verdict(&self, history: &[EpochStats]) -> Verdict {
        let (mut best, mut best_epoch, mut wait, mut stop) = (None, None, 0usize, false);
        for (i, stats) in history.iter().enumerate() {
            stop = false;
            let Some(value) = self.monitor.value(stats) else {
                continue; // Keras warns and skips an epoch without the metric.
            };
            wait += 1;
            if self.monitor.improves(value, best, self.min_delta) {
                (best, best_epoch, wait) = (Some(value), Some(stats.epoch), 0);
                continue;
            }
            stop = wait >= self.patience && i > 0;
        }
        Verdict {
            best: best_epoch,
            stop,
        }
    }
}

/// The epoch (1-based) whose `monitor` value is the best so far, as
/// `ModelCheckpoint(save_best_only=True)` keeps it: strictly better than every earlier
/// one.
pub(crate) fn best_epoch(monitor: Monitor, history: &[EpochStats]) -> Option<usize> {
    let mut best: Option<(f32, usize)> = None;
    for stats in history {
        if let Some(value) = monitor.value(stats) {
            if monitor.improves(value, best.map(|b| b.0), 0.0) {
                best = Some((value, stats.epoch));
            }
        }
    }
    best.map(|b| b.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::history::test_epoch;

    fn history(val_losses: &[f32]) -> Vec<EpochStats> {
        val_losses
            .iter()
            .enumerate()
            .map(|(i, &loss)| test_epoch(i + 1, 1.0, Some(loss)))
            .collect()
    }

    /// Keras 3's `EarlyStopping(patience=2)` on val_loss 1.0, 0.9, 0.95, 0.92, 0.8
    /// stops after the fourth epoch (epoch index 3: two epochs without improvement);
    /// with patience 0 after the third. Traced by hand from `keras/src/callbacks/early_stopping.py`.
    #[test]
    fn stops_when_keras_would() {
        let losses = [1.0, 0.9, 0.95, 0.92, 0.8];
        let patient = EarlyStopping {
            patience: 2,
            ..EarlyStopping::default()
        };
        let stops: Vec<bool> = (1..=5)
            .map(|n| patient.verdict(&history(&losses[..n])).stop)
            .collect();
        assert_eq!(stops, [false, false, false, true, false]);
        let eager = EarlyStopping::default();
        let stops: Vec<bool> = (1..=5)
            .map(|n| eager.verdict(&history(&losses[..n])).stop)
            .collect();
        assert_eq!(stops, [false, false, true, true, false]);
        assert_eq!(patient.verdict(&history(&losses[..4])).best, Some(2));
        assert_eq!(best_epoch(Monitor::ValLoss, &history(&losses)), Some(5));
        assert_eq!(best_epoch(Monitor::ValLoss, &history(&[1.0, 1.0])), Some(1));
    }
}
