//! Resumable training checkpoints.
//!
//! One safetensors file per epoch (`epoch-003.safetensors`) holds:
//! - the weights in torchvision naming, so a checkpoint is also a weights file for every
//!   loader (`load_safetensors`, `densenet run --weights`);
//! - the optimiser's buffers as tensors under `optimizer/<parameter>/<buffer>`
//!   (parameters numbered in `visit_layers` order: conv weight; BN gamma, beta; linear
//!   weight, bias; buffers SGD `0` = velocity, Adam `0` = m, `1` = v), which loaders skip;
//! - in the header's metadata: `format`, `architecture` (the model's architecture minus
//!   its name), `epoch` (epochs done), `rng` (the run's generator, four hex words),
//!   `optimizer` (`sgd` | `adam`), `optimizer_steps`, `parameter_steps` (per parameter
//!   its own step count, `-` before its first update), `history` ([`History::to_json`])
//!   and, if the data has them, `class_names` (one per line).
//!
//! Everything random in a run comes from its one generator and the learning rate is a
//! function of the history, so a run resumed from epoch `e` continues exactly as the
//! uninterrupted run did after epoch `e`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use densenet_spec::Architecture;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::rng::Rng;
use crate::stage::{LayerRef, Network};
use crate::train::optim::{OptimizerState, Stepper};
use crate::train::{History, TrainError};
use crate::weights::{self, Naming, SaveError};

/// The `format` entry of a checkpoint's metadata.
const FORMAT: &str = "densenet-rs training checkpoint 1";

/// The path of epoch `epoch`'s (1-based) checkpoint in `dir`: `dir/epoch-003.safetensors`.
pub fn checkpoint_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("epoch-{epoch:03}.safetensors"))
}

/// The checkpoints in `dir` by epoch, oldest first (files named as [`checkpoint_path`]
/// names them; a missing directory has none).
///
/// # Errors
/// [`TrainError::Checkpoint`] if the directory exists but cannot be listed.
pub fn checkpoints_in(dir: &Path) -> Result<Vec<(usize, PathBuf)>, TrainError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TrainError::Checkpoint(SaveError::Io {
                path: dir.to_path_buf(),
                source,
            }))
        }
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let epoch = name
                .to_str()?
                .strip_prefix("epoch-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((epoch, entry.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Where a run stands after an epoch: what a checkpoint saves besides the weights.
pub(crate) struct RunState<'a> {
    /// Epochs done.
    pub epoch: usize,
    pub rng: &'a Rng,
    pub optimizer: OptimizerState,
    pub history: &'a History,
    pub class_names: Option<&'a [String]>,
}

/// The architecture, name aside: what a checkpoint must match to be resumed.
fn fingerprint(architecture: &Architecture) -> String {
    let unnamed = Architecture {
        name: "".into(),
        ..architecture.clone()
    };
    format!("{unnamed:?}")
}

/// Writes `model` and `state` to `path` atomically.
pub(crate) fn write<M: Network + ?Sized>(
    model: &M,
    path: &Path,
    state: &RunState<'_>,
) -> Result<(), TrainError> {
    let mut extra = Vec::new();
    let mut steps = Vec::with_capacity(state.optimizer.params.len());
    for (i, param) in state.optimizer.params.iter().enumerate() {
        let Some((t, buffers)) = param else {
            steps.push("-".to_string());
            continue;
        };
        steps.push(t.to_string());
        for (b, buffer) in buffers.iter().enumerate() {
            extra.push((
                format!("{}{i}/{b}", crate::weights::CHECKPOINT_PREFIX),
                Dtype::F32,
                vec![buffer.len()],
                buffer.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        }
    }
    let history = state
        .history
        .to_json()
        .map_err(|e| TrainError::Checkpoint(SaveError::io(path, std::io::Error::other(e))))?;
    let rng = state.rng.state().map(|w| format!("{w:016x}")).join(",");
    let mut metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        (
            "architecture".to_string(),
            fingerprint(model.architecture()),
        ),
        ("epoch".to_string(), state.epoch.to_string()),
        ("rng".to_string(), rng),
        ("optimizer".to_string(), state.optimizer.kind.to_string()),
        (
            "optimizer_steps".to_string(),
            state.optimizer.steps.to_string(),
        ),
        ("parameter_steps".to_string(), steps.join(",")),
        ("history".to_string(), history),
    ]);
    if let Some(names) = state.class_names {
        metadata.insert("class_names".to_string(), names.join("\n"));
    }
    let bytes = weights::to_bytes_extended(model, Naming::Torchvision, extra, Some(metadata));
    crate::atomic_file::write(path, &bytes)
        .map_err(|e| TrainError::Checkpoint(SaveError::io(path, e)))
}

/// What a training checkpoint says about its run.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    /// Epochs done when it was written.
    pub epoch: usize,
    /// The classes' names, if the training data had them (a folder's sub-folders).
    pub class_names: Option<Vec<String>>,
    /// The run's history up to that epoch.
    pub history: History,
}

/// Reads the run information of the checkpoint at `path` (not its weights: load those
/// with any weights loader).
///
/// # Errors
/// [`TrainError::Resume`] if the file cannot be read or is not a training checkpoint.
pub fn read_checkpoint_info(path: &Path) -> Result<CheckpointInfo, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| resume_error(path, e.to_string()))?;
    let file = Parsed::new(path, &bytes)?;
    Ok(CheckpointInfo {
        epoch: file.number("epoch")?,
        class_names: file.class_names(),
        history: file.history()?,
    })
}

fn resume_error(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Resume {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A checkpoint's header, read.
struct Parsed<'a> {
    path: &'a Path,
    metadata: std::collections::HashMap<String, String>,
}

impl<'a> Parsed<'a> {
    fn new(path: &'a Path, bytes: &[u8]) -> Result<Self, TrainError> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| resume_error(path, format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(resume_error(
                path,
                "not a training checkpoint (a weights file? start from it with initial weights instead)",
            ));
        }
        Ok(Parsed { path, metadata })
    }

    fn get(&self, key: &str) -> Result<&str, TrainError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| resume_error(self.path, format!("the header has no `{key}`")))
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<T, TrainError> {
        let text = self.get(key)?;
        text.parse()
            .map_err(|_| resume_error(self.path, format!("`{key}` is not a number: {text:?}")))
    }

    fn class_names(&self) -> Option<Vec<String>> {
        self.metadata
            .get("class_names")
            .map(|names| names.lines().map(str::to_string).collect())
    }

    fn history(&self) -> Result<History, TrainError> {
        History::from_json(self.get("history")?)
            .map_err(|e| resume_error(self.path, format!("`history`: {e}")))
    }

    fn rng(&self) -> Result<Rng, TrainError> {
        let text = self.get("rng")?;
        let words: Vec<u64> = text
            .split(',')
            .map(|w| u64::from_str_radix(w, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                resume_error(self.path, format!("`rng` is not four hex words: {text:?}"))
            })?;
        <[u64; 4]>::try_from(words)
            .ok()
            .and_then(Rng::from_state)
            .ok_or_else(|| {
                resume_error(
                    self.path,
                    format!("`rng` is not a generator state: {text:?}"),
                )
            })
    }
}

/// The length of every parameter of `model`, in walking order.
fn parameter_lengths<M: Network + ?Sized>(model: &M) -> Vec<usize> {
    let mut lengths = Vec::new();
    model.visit_layers(&mut |_, layer| match layer {
        LayerRef::Conv(conv) => lengths.push(conv.weight_shape().iter().product()),
        LayerRef::BatchNorm(bn) => lengths.extend([bn.channels(); 2]),
        LayerRef::Linear(linear) => lengths.extend([
            linear.in_features() * linear.out_features(),
            linear.out_features(),
        ]),
    });
    lengths
}

/// A run restored from a checkpoint: epochs done, its generator and history.
pub(crate) struct Resumed {
    pub epoch: usize,
    pub rng: Rng,
    pub history: History,
}

/// Restores `model` and `optimizer` from the checkpoint at `path`, checking that it is
/// `model`'s (same architecture, same optimiser kind, same classes) before anything
/// changes; on a load error the model is restored to what it was.
pub(crate) fn resume<M: Network + ?Sized>(
    model: &mut M,
    path: &Path,
    optimizer: &mut Stepper,
    class_names: Option<&[String]>,
) -> Result<Resumed, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| resume_error(path, e.to_string()))?;
    let file = Parsed::new(path, &bytes)?;
    let theirs = file.get("architecture")?;
    let ours = fingerprint(model.architecture());
    if theirs != ours {
        return Err(resume_error(
            path,
            format!(
                "it was written by another architecture than {}'s:\n  checkpoint: {theirs}\n  this model: {ours}",
                model.architecture().name
            ),
        ));
    }
    if let (Some(ours), Some(theirs)) = (class_names, file.class_names()) {
        if ours != theirs.as_slice() {
            return Err(resume_error(
                path,
                format!("its classes are {theirs:?}, the data's are {ours:?}"),
            ));
        }
    }
    let epoch: usize = file.number("epoch")?;
    let rng = file.rng()?;
    let history = file.history()?;
    if history.epochs.len() != epoch {
        return Err(resume_error(
            path,
            format!(
                "its header says {epoch} epochs are done, its history has {}",
                history.epochs.len()
            ),
        ));
    }

    // The optimiser's state, checked against the model's parameters.
    let lengths = parameter_lengths(&*model);
    let steps_text = file.get("parameter_steps")?;
    let steps: Vec<&str> = steps_text.split(',').collect();
    if steps.len() != lengths.len() {
        return Err(resume_error(
            path,
            format!(
                "it has optimiser state for {} parameters, the model has {}",
                steps.len(),
                lengths.len()
            ),
        ));
    }
    let kind = file.get("optimizer")?;
    let buffers = match kind {
        "sgd" => 1,
        "adam" => 2,
        other => return Err(resume_error(path, format!("unknown optimiser {other:?}"))),
    };
    let tensors = SafeTensors::deserialize(&bytes)
        .map_err(|e| resume_error(path, format!("not a safetensors file: {e}")))?;
    let mut params = Vec::with_capacity(steps.len());
    for (i, (step, &len)) in steps.iter().zip(&lengths).enumerate() {
        if *step == "-" {
            params.push(None);
            continue;
        }
        let t: u32 = step
            .parse()
            .map_err(|_| resume_error(path, format!("parameter {i}'s step count is {step:?}")))?;
        let mut state = Vec::with_capacity(buffers);
        for b in 0..buffers {
            let key = format!("{}{i}/{b}", crate::weights::CHECKPOINT_PREFIX);
            let view = tensors.tensor(&key).map_err(|_| {
                resume_error(path, format!("the optimiser tensor `{key}` is missing"))
            })?;
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            // SGD without momentum keeps no buffer.
            let fits = values.len() == len || (kind == "sgd" && values.is_empty());
            if view.dtype() != Dtype::F32 || !fits {
                return Err(resume_error(
                    path,
                    format!(
                        "the optimiser tensor `{key}` has {} values, its parameter {len}",
                        values.len()
                    ),
                ));
            }
            state.push(values);
        }
        params.push(Some((t, state)));
    }
    let steps_done: u32 = file.number("optimizer_steps")?;
    let state = OptimizerState {
        kind: if kind == "sgd" { "sgd" } else { "adam" },
        steps: steps_done,
        params,
    };
    let mut restored = optimizer.clone();
    restored
        .import(state)
        .map_err(|reason| resume_error(path, reason))?;

    let before = weights::to_bytes(&*model);
    if let Err(e) = weights::load_into(model, &bytes, Naming::Torchvision.into()) {
        weights::load_into(model, &before, Naming::Torchvision.into())
            .expect("the model's own weights load back into it");
        return Err(resume_error(path, e.to_string()));
    }
    *optimizer = restored;
    Ok(Resumed {
        epoch,
        rng,
        history,
    })
}
