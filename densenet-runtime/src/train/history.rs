//! What a run of [`fit`](crate::train::fit) did, epoch by epoch; the metrics a schedule,
//! early stopping or a best-only checkpoint can watch ([`Monitor`]); the history as CSV
//! (Keras's `CSVLogger` columns), as JSON (read back exactly, for resumable
//! checkpoints) and, with the `plot` feature, as a PNG chart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::train::Evaluation;

/// What one epoch of [`fit`](crate::train::fit) did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// The learning rate of the epoch's first step.
    #[serde(with = "exact")]
    pub lr: f32,
    /// Mean training loss over the epoch's images (each batch's mean softmax
    /// cross-entropy in training mode, weighted by its size).
    #[serde(with = "exact")]
    pub loss: f32,
    /// Fraction of the epoch's training images whose training-mode logits (before that
    /// batch's update) put the label first.
    #[serde(with = "exact")]
    pub train_accuracy: f32,
    /// The validation set's [`evaluate`](crate::train::evaluate) after the epoch, if one
    /// was given.
    pub validation: Option<Evaluation>,
    /// Training images per second (the steps only, not evaluation or checkpointing).
    #[serde(with = "exact")]
    pub images_per_sec: f64,
    /// Wall time of the whole epoch (steps, validation and checkpoint).
    #[serde(with = "exact")]
    pub seconds: f64,
    /// The checkpoint written after the epoch, if any.
    pub checkpoint: Option<PathBuf>,
}

/// Every epoch's [`EpochStats`], in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// One record per epoch.
    pub epochs: Vec<EpochStats>,
}

/// Why a [`History`] could not be read, written or plotted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// Not a history in [`History::to_json`]'s format, or (writing) a checkpoint path
    /// that is not valid UTF-8.
    #[error("history JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A plot of a history without epochs.
    #[error("the history has no epochs to plot")]
    Empty,
    /// The chart could not be drawn or encoded.
    #[error("cannot draw the plot: {0}")]
    Plot(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The columns of [`History::to_csv`].
const CSV_COLUMNS: [&str; 9] = [
    "epoch",
    "accuracy",
    "learning_rate",
    "loss",
    "val_accuracy",
    "val_loss",
    "val_sparse_top_k_categorical_accuracy",
    "images_per_sec",
    "seconds",
];

impl History {
    /// The last epoch's record (`None` only for an empty history).
    pub fn last(&self) -> Option<&EpochStats> {
        self.epochs.last()
    }

    /// Total wall time of all epochs, in seconds.
    pub fn seconds(&self) -> f64 {
        self.epochs.iter().map(|e| e.seconds).sum()
    }

    /// The history as CSV, one row per epoch, in the columns of Keras's `CSVLogger` for a
    /// model compiled with `metrics=["accuracy", "sparse_top_k_categorical_accuracy"]`
    /// and validation data: `epoch` (0-based, as Keras writes it; [`EpochStats::epoch`]
    /// is 1-based), then the metrics in Keras's alphabetical order, `accuracy`,
    /// `learning_rate` (Keras 3's name), `loss`, `val_accuracy`, `val_loss`,
    /// `val_sparse_top_k_categorical_accuracy` (top-k, `k` as in
    /// [`Evaluation::top_k`]), then two columns of ours, `images_per_sec` and `seconds`.
    /// Like Keras, the validation columns are always there, `NA` in epochs without
    /// validation. Numbers are written in their shortest exact form; lines end in `\n`.
    ///
    /// ```
    /// use densenet_runtime::train::{EpochStats, History};
    ///
    /// let epoch = EpochStats { epoch: 1, lr: 0.1, loss: 2.5, train_accuracy: 0.25,
    ///     validation: None, images_per_sec: 100.0, seconds: 2.0, checkpoint: None };
    /// let csv = History { epochs: vec![epoch] }.to_csv();
    /// assert_eq!(csv.lines().nth(1), Some("0,0.25,0.1,2.5,NA,NA,NA,100,2"));
    /// ```
    pub fn to_csv(&self) -> String {
        let mut out = CSV_COLUMNS.join(",");
        out.push('\n');
        for e in &self.epochs {
            let val = |f: fn(&Evaluation) -> f32| {
                e.validation
                    .as_ref()
                    .map_or_else(|| "NA".to_string(), |v| number(f(v)))
            };
            let row = [
                e.epoch.saturating_sub(1).to_string(),
                number(e.train_accuracy),
                number(e.lr),
                number(e.loss),
                val(|v| v.accuracy),
                val(|v| v.loss),
                val(|v| v.top_k_accuracy),
                number(e.images_per_sec),
                number(e.seconds),
            ];
            out.push_str(&row.join(","));
            out.push('\n');
        }
        out
    }

    /// The history as JSON: `{"epochs": [{"epoch": 1, "lr": 0.1, …}, …]}` with the
    /// fields of [`EpochStats`] and [`Evaluation`]. [`History::from_json`] reads it back
    /// equal, bit for bit: numbers are written in their shortest exact form, and a NaN or
    /// infinity (which JSON numbers cannot hold) as the string `"NaN"`, `"inf"` or
    /// `"-inf"` (a NaN reads back as a NaN, without its sign and payload bits).
    ///
    /// ```
    /// use densenet_runtime::train::{EpochStats, History};
    ///
    /// let epoch = EpochStats { epoch: 1, lr: 0.1, loss: f32::NAN, train_accuracy: 0.3,
    ///     validation: None, images_per_sec: 1e3 / 7.0, seconds: 7.0, checkpoint: None };
    /// let history = History { epochs: vec![epoch] };
    /// let back = History::from_json(&history.to_json()?)?;
    /// assert_eq!(back.epochs[0].images_per_sec, history.epochs[0].images_per_sec);
    /// assert!(back.epochs[0].loss.is_nan());
    /// # Ok::<(), densenet_runtime::train::HistoryError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`HistoryError::Json`] if a checkpoint path is not valid UTF-8.
    pub fn to_json(&self) -> Result<String, HistoryError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Reads a history written by [`History::to_json`].
    ///
    /// # Errors
    ///
    /// [`HistoryError::Json`] for anything else, with the line and column.
    pub fn from_json(json: &str) -> Result<History, HistoryError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Writes [`History::to_csv`] to `path`, atomically (a temporary file renamed over
    /// it).
    ///
    /// # Errors
    ///
    /// [`HistoryError::Io`].
    pub fn save_csv(&self, path: impl AsRef<Path>) -> Result<(), HistoryError> {
        write(path.as_ref(), self.to_csv().as_bytes())
    }

    /// Writes [`History::to_json`] to `path`, atomically.
    ///
    /// # Errors
    ///
    /// As [`History::to_json`]; [`HistoryError::Io`].
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<(), HistoryError> {
        write(path.as_ref(), self.to_json()?.as_bytes())
    }
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), HistoryError> {
    crate::atomic_file::write(path, bytes).map_err(|source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A CSV field: Rust's shortest round-trip form, and Python's spelling of the
/// non-finite values (`nan`, `inf`, `-inf`), which pandas and Python read back.
fn number<T: Into<f64> + fmt::Display + Copy>(v: T) -> String {
    let wide: f64 = v.into();
    if wide.is_nan() {
        "nan".into()
    } else {
        v.to_string()
    }
}

/// A metric of [`EpochStats`] that a schedule ([`PlateauConfig`](crate::train::PlateauConfig)),
/// early stopping or best-only checkpointing watches, by its Keras name. Lower is
/// better for the losses, higher for the accuracies ([`Monitor::mode`]), as Keras's
/// `mode="auto"` decides.
///
/// ```
/// use densenet_runtime::train::{Monitor, MonitorMode};
///
/// let monitor: Monitor = "val_accuracy".parse()?;
/// assert_eq!((monitor, monitor.mode()), (Monitor::ValAccuracy, MonitorMode::Max));
/// assert!(monitor.improves(0.80, None, 0.0));
/// assert!(monitor.improves(0.81, Some(0.80), 0.005));
/// assert!(!monitor.improves(0.804, Some(0.80), 0.005));
/// # Ok::<(), densenet_runtime::train::ParseMonitorError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Monitor {
    /// `loss`: [`EpochStats::loss`].
    Loss,
    /// `accuracy`: [`EpochStats::train_accuracy`].
    Accuracy,
    /// `val_loss`: the validation [`Evaluation::loss`] (Keras's default monitor).
    #[default]
    ValLoss,
    /// `val_accuracy`: the validation [`Evaluation::accuracy`].
    ValAccuracy,
    /// `val_sparse_top_k_categorical_accuracy`: the validation
    /// [`Evaluation::top_k_accuracy`].
    ValTopK,
}

/// Whether a [`Monitor`]'s metric improves downwards or upwards (Keras's `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MonitorMode {
    /// Lower is better (`mode="min"`).
    Min,
    /// Higher is better (`mode="max"`).
    Max,
}

impl Monitor {
    /// Every monitor, in the order of the [`History::to_csv`] columns.
    pub const ALL: [Monitor; 5] = [
        Monitor::Accuracy,
        Monitor::Loss,
        Monitor::ValAccuracy,
        Monitor::ValLoss,
        Monitor::ValTopK,
    ];

    /// Keras's name of the metric (`"val_loss"`, …), as [`FromStr`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Monitor::Loss => "loss",
            Monitor::Accuracy => "accuracy",
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
            Monitor::ValTopK => "val_sparse_top_k_categorical_accuracy",
        }
    }

    /// Whether lower or higher is better.
    pub fn mode(self) -> MonitorMode {
        match self {
            Monitor::Loss | Monitor::ValLoss => MonitorMode::Min,
            Monitor::Accuracy | Monitor::ValAccuracy | Monitor::ValTopK => MonitorMode::Max,
        }
    }

    /// Whether the metric comes from the validation set (so watching it needs one).
    pub fn is_validation(self) -> bool {
        matches!(
            self,
            Monitor::ValLoss | Monitor::ValAccuracy | Monitor::ValTopK
        )
    }

    /// The metric's value in `stats`; `None` for a validation metric of an epoch
    /// without validation.
    pub fn value(self, stats: &EpochStats) -> Option<f32> {
        let val = stats.validation.as_ref();
        match self {
            Monitor::Loss => Some(stats.loss),
            Monitor::Accuracy => Some(stats.train_accuracy),
            Monitor::ValLoss => val.map(|v| v.loss),
            Monitor::ValAccuracy => val.map(|v| v.accuracy),
            Monitor::ValTopK => val.map(|v| v.top_k_accuracy),
        }
    }

    /// Whether `value` improves on `best` (the best value so far; `None` at the first
    /// value, which always improves) by more than `min_delta`, as Keras's
    /// `MonitorCallback._is_improvement` decides: `value + |min_delta| < best` for
    /// [`MonitorMode::Min`], `value − |min_delta| > best` for [`MonitorMode::Max`],
    /// strict, with the shifted value rounded to f32 as Keras's float32 comparison does.
    /// A NaN value never improves.
    pub fn improves(self, value: f32, best: Option<f32>, min_delta: f32) -> bool {
        let Some(best) = best else {
            return true;
        };
        let delta = f64::from(min_delta.abs());
        match self.mode() {
            MonitorMode::Min => ((f64::from(value) + delta) as f32) < best,
            MonitorMode::Max => ((f64::from(value) - delta) as f32) > best,
        }
    }
}

impl fmt::Display for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A [`Monitor`] name that is none of Keras's names [`Monitor::name`] gives.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("unknown metric `{given}`; expected one of: loss, accuracy, val_loss, val_accuracy, val_sparse_top_k_categorical_accuracy")]
pub struct ParseMonitorError {
    /// The name given.
    pub given: String,
}

impl FromStr for Monitor {
    type Err = ParseMonitorError;

    fn from_str(s: &str) -> Result<Monitor, ParseMonitorError> {
        Monitor::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ParseMonitorError { given: s.into() })
    }
}

/// Serde for the floats of [`EpochStats`] and [`Evaluation`]: a finite value as a JSON
/// number (serde_json writes the shortest form that reads back to the same float, and
/// reads it with `float_roundtrip`), a NaN or infinity as a string, since JSON numbers
/// cannot hold them (serde_json would write `null` and fail to read it).
pub(crate) mod exact {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// f32 or f64.
    pub(crate) trait Float: Copy + Display + FromStr + Serialize {
        fn finite(self) -> bool;
        /// From the f64 serde_json reads: exact for an f64; for an f32, the f64 is the
        /// nearest to the shortest decimal of an f32, which rounds back to that f32.
        fn from_f64(v: f64) -> Self;
    }

    impl Float for f32 {
        fn finite(self) -> bool {
            self.is_finite()
        }
        fn from_f64(v: f64) -> Self {
            v as f32
        }
    }

    impl Float for f64 {
        fn finite(self) -> bool {
            self.is_finite()
        }
        fn from_f64(v: f64) -> Self {
            v
        }
    }

    pub(crate) fn serialize<T: Float, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        if v.finite() {
            v.serialize(s)
        } else {
            // Rust's spelling, which `FromStr` reads: "NaN", "inf", "-inf".
            s.collect_str(v)
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    pub(crate) fn deserialize<'de, T: Float, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(T::from_f64(v)),
            Repr::Text(text) => match text.parse::<T>() {
                Ok(v) if !v.finite() => Ok(v),
                _ => Err(serde::de::Error::custom(format!(
                    "expected a number, \"NaN\", \"inf\" or \"-inf\"; got \"{text}\""
                ))),
            },
        }
    }
}

/// An epoch record with the given training and validation losses (other fields
/// fixed), for the tests of what reads histories.
#[cfg(test)]
pub(crate) fn test_epoch(epoch: usize, loss: f32, val_loss: Option<f32>) -> EpochStats {
    EpochStats {
        epoch,
        lr: 0.1,
        loss,
        train_accuracy: 0.5,
        validation: val_loss.map(|loss| Evaluation {
            loss,
            accuracy: 0.5,
            correct: 1,
            total: 2,
            top_k: 1,
            top_k_correct: 1,
            top_k_accuracy: 0.5,
        }),
        images_per_sec: 1.0,
        seconds: 1.0,
        checkpoint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(epoch: usize, validation: Option<Evaluation>) -> EpochStats {
        EpochStats {
            epoch,
            lr: 0.1,
            loss: 2.25,
            train_accuracy: 0.125,
            validation,
            images_per_sec: 1234.5678,
            seconds: 3.25,
            checkpoint: Some(PathBuf::from("runs/epoch-001.safetensors")),
        }
    }

    fn evaluation() -> Evaluation {
        Evaluation {
            loss: 1.75,
            accuracy: 0.5,
            correct: 5,
            total: 10,
            top_k: 5,
            top_k_correct: 9,
            top_k_accuracy: 0.9,
        }
    }

    /// A deterministic stream of arbitrary bit patterns (an LCG), every exponent.
    fn bits(seed: u64) -> impl Iterator<Item = u64> {
        let mut s = seed;
        std::iter::repeat_with(move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s
        })
    }

    #[test]
    fn json_round_trip_is_exact_for_every_kind_of_float() {
        let mut epochs = Vec::new();
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::MAX,
            0.1,
        ];
        for (i, b) in bits(7).take(20_000).enumerate() {
            let x = if i < specials.len() {
                specials[i]
            } else {
                f32::from_bits((b >> 32) as u32)
            };
            let y = f64::from_bits(b);
            let mut e = stats(i + 1, (i % 2 == 0).then(evaluation));
            (e.lr, e.loss, e.train_accuracy) = (x, -x, x / 3.0);
            (e.images_per_sec, e.seconds) = (y, f64::from(x));
            if let Some(v) = &mut e.validation {
                (v.loss, v.accuracy, v.top_k_accuracy) = (x, x * 0.5, -x);
            }
            epochs.push(e);
        }
        let history = History { epochs };
        let back = History::from_json(&history.to_json().unwrap()).unwrap();
        assert_eq!(back.epochs.len(), history.epochs.len());
        // Bit patterns, so that -0 != 0; every NaN (sign and payload are not kept) as one.
        let f = |v: f32| if v.is_nan() { u32::MAX } else { v.to_bits() };
        let d = |v: f64| if v.is_nan() { u64::MAX } else { v.to_bits() };
        let key = |e: &EpochStats| {
            let v = e.validation.map(|v| {
                (
                    f(v.loss),
                    f(v.accuracy),
                    f(v.top_k_accuracy),
                    v.correct,
                    v.total,
                    v.top_k,
                    v.top_k_correct,
                )
            });
            (
                e.epoch,
                f(e.lr),
                f(e.loss),
                f(e.train_accuracy),
                d(e.images_per_sec),
                d(e.seconds),
                v,
                e.checkpoint.clone(),
            )
        };
        for (a, b) in history.epochs.iter().zip(&back.epochs) {
            assert_eq!(key(a), key(b), "epoch {}", a.epoch);
        }
    }

    #[test]
    fn from_json_rejects_what_is_not_a_history() {
        for bad in [
            "",
            "{}",
            r#"{"epochs": [{"epoch": 1}]}"#,
            r#"{"epochs": [{"epoch": 1, "lr": "fast", "loss": 1, "train_accuracy": 1,
                "validation": null, "images_per_sec": 1, "seconds": 1, "checkpoint": null}]}"#,
            r#"{"epochs": [{"epoch": 1, "lr": "1.5", "loss": 1, "train_accuracy": 1,
                "validation": null, "images_per_sec": 1, "seconds": 1, "checkpoint": null}]}"#,
        ] {
            assert!(
                matches!(History::from_json(bad), Err(HistoryError::Json(_))),
                "{bad}"
            );
        }
    }

    // The header is Keras's: `keras.callbacks.CSVLogger` sorts the log keys; with
    // `model.compile(metrics=["accuracy", "sparse_top_k_categorical_accuracy"])`, a
    // learning-rate callback and validation data, Keras 3.15 writes
    // `epoch,accuracy,learning_rate,loss,sparse_top_k_categorical_accuracy,val_accuracy,
    // val_loss,val_sparse_top_k_categorical_accuracy` (we have no training top-k).
    #[test]
    fn csv_rows_follow_the_header() {
        let history = History {
            epochs: vec![stats(1, Some(evaluation())), stats(2, None)],
        };
        let csv = history.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            [
                "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss,\
                 val_sparse_top_k_categorical_accuracy,images_per_sec,seconds",
                "0,0.125,0.1,2.25,0.5,1.75,0.9,1234.5678,3.25",
                "1,0.125,0.1,2.25,NA,NA,NA,1234.5678,3.25",
            ]
        );
        let mut nan = history.clone();
        nan.epochs[0].loss = f32::NAN;
        nan.epochs[0].lr = f32::INFINITY;
        assert!(nan.to_csv().contains("\n0,0.125,inf,nan,"));
    }

    #[test]
    fn saves_replace_files_atomically() {
        let dir = std::env::temp_dir().join(format!("densenet-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let history = History {
            epochs: vec![stats(1, Some(evaluation()))],
        };
        let (csv, json) = (dir.join("h.csv"), dir.join("h.json"));
        std::fs::write(&json, "old").unwrap();
        history.save_csv(&csv).unwrap();
        history.save_json(&json).unwrap();
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), history.to_csv());
        let back = History::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(back, history);
        // A directory where the file should go: a typed error naming the path.
        match history.save_csv(&dir) {
            Err(HistoryError::Io { path, .. }) => assert_eq!(path, dir),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn monitor_names_parse_back_and_modes_follow_keras() {
        for m in Monitor::ALL {
            assert_eq!(m.name().parse::<Monitor>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
        }
        let err = "val_acc".parse::<Monitor>().unwrap_err();
        assert_eq!(err.given, "val_acc");
        assert!(err.to_string().contains("val_accuracy"));
        assert_eq!(Monitor::ValLoss.mode(), MonitorMode::Min);
        assert_eq!(Monitor::ValTopK.mode(), MonitorMode::Max);
        assert!(!Monitor::Loss.is_validation() && Monitor::ValTopK.is_validation());
    }

    #[test]
    fn monitor_values_and_improvements() {
        let e = stats(1, Some(evaluation()));
        let values: Vec<_> = Monitor::ALL.iter().map(|m| m.value(&e)).collect();
        assert_eq!(
            values,
            [Some(0.125), Some(2.25), Some(0.5), Some(1.75), Some(0.9)]
        );
        assert_eq!(Monitor::ValLoss.value(&stats(1, None)), None);
        // Strict comparison; min_delta is a magnitude, as Keras takes abs(min_delta).
        assert!(!Monitor::ValLoss.improves(1.0, Some(1.0), 0.0));
        assert!(Monitor::ValLoss.improves(0.9, Some(1.0), 0.05));
        assert!(Monitor::ValLoss.improves(0.9, Some(1.0), -0.05));
        assert!(!Monitor::ValLoss.improves(0.96, Some(1.0), 0.05));
        assert!(!Monitor::Accuracy.improves(0.9, Some(1.0), 0.0));
        assert!(!Monitor::Loss.improves(f32::NAN, Some(1.0), 0.0));
        assert!(Monitor::Loss.improves(f32::NAN, None, 0.0));
    }
}
