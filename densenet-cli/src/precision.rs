//! `--precision f32|bf16|int8` of `run`, `eval` and `bench`: the model the command runs
//! ([`Runner`]), with int8's calibration images from `--calibration DIR`.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use densenet_runtime::ndarray::{Array2, Array4, ArrayD};
use densenet_runtime::precision::{CalibrationMethod, Quantized};
use densenet_runtime::train::{Evaluation, Source};
use densenet_runtime::{DynamicModel, Model};

/// Most calibration images (each an activation pass per batch of 16).
const MAX_CALIBRATION_IMAGES: usize = 100_000;
/// Images per calibration batch.
const CALIBRATION_BATCH: usize = 16;

/// The precision options shared by `run`, `eval` and `bench`.
#[derive(Args, Clone, Debug)]
pub(crate) struct PrecisionArgs {
    /// Precision of the convolutions (the stem, BatchNorm and head stay fp32). int8
    /// needs --calibration (bench: generated images without it).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// int8: a folder of calibration images (JPEG/PNG, searched recursively; for
    /// `eval`, one sub-folder per class like --data), preprocessed as the command's
    /// inputs.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// int8: how many of the calibration images to use (spread evenly over the sorted
    /// files).
    #[arg(long, default_value_t = 64)]
    pub calibration_images: usize,
    /// int8: calibrate each activation scale to this percentile of the values, in
    /// (0, 100] (e.g. 99.99), instead of their maximum.
    #[arg(long)]
    pub percentile: Option<f64>,
    /// Fail if this CPU lacks the precision's instructions, instead of running the same
    /// arithmetic on the fp32 kernels with a notice.
    #[arg(long)]
    pub strict_precision: bool,
}

/// `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PrecisionArg {
    F32,
    Bf16,
    Int8,
}

/// The model a command runs: fp32, or quantized.
pub(crate) enum Runner {
    F32(Box<DynamicModel>),
    Low(Box<Quantized<DynamicModel>>),
}

impl PrecisionArgs {
    /// Checks the options against each other before anything is loaded.
    ///
    /// # Errors
    /// Calibration options without int8; int8 without `--calibration` when `required`.
    pub(crate) fn validate(&self, calibration_required: bool) -> Result<(), String> {
        let int8 = self.precision == PrecisionArg::Int8;
        if !int8 && (self.calibration.is_some() || self.percentile.is_some()) {
            return Err("--calibration and --percentile apply to --precision int8 only".into());
        }
        if int8 && calibration_required && self.calibration.is_none() {
            return Err(
                "--precision int8 needs --calibration DIR: images like the ones the model will see, to set its activation scales"
                    .into(),
            );
        }
        if self.calibration_images == 0 || self.calibration_images > MAX_CALIBRATION_IMAGES {
            return Err(format!(
                "--calibration-images must be in 1..={MAX_CALIBRATION_IMAGES}; got {}",
                self.calibration_images
            ));
        }
        Ok(())
    }

    /// `model` in the precision asked for. `calibration` gives int8's images (NCHW
    /// batches of the model's input); it is called only for int8. Prints the fallback
    /// notice when the CPU lacks the kernels (an error with `--strict-precision`).
    ///
    /// # Errors
    /// The calibration's or quantization's error, as text.
    pub(crate) fn apply(
        &self,
        model: DynamicModel,
        calibration: impl FnOnce(&Self) -> Result<Vec<Array4<f32>>, String>,
    ) -> Result<Runner, String> {
        let quantized = match self.precision {
            PrecisionArg::F32 => return Ok(Runner::F32(Box::new(model))),
            PrecisionArg::Bf16 => Quantized::bf16(&model),
            PrecisionArg::Int8 => {
                let batches = calibration(self)?;
                let method = match self.percentile {
                    Some(p) => CalibrationMethod::Percentile(p),
                    None => CalibrationMethod::MinMax,
                };
                Quantized::int8(&model, &batches, method)
            }
        }
        .map_err(|e| e.to_string())?;
        let quantized = if self.strict_precision {
            quantized.require_kernels().map_err(|e| e.to_string())?
        } else {
            if let Some(notice) = quantized.fallback_notice() {
                eprintln!("{notice}");
            }
            quantized
        };
        Ok(Runner::Low(Box::new(quantized)))
    }
}

impl Runner {
    /// The model's output on an NCHW batch.
    pub(crate) fn forward(&self, x: &Array4<f32>) -> Result<ArrayD<f32>, String> {
        match self {
            Runner::F32(m) => m.forward(x.view()).map_err(|e| e.to_string()),
            Runner::Low(q) => q.forward(x.view()).map_err(|e| e.to_string()),
        }
    }

    /// Softmax probabilities of a classifier.
    pub(crate) fn predict(&self, x: &Array4<f32>) -> Result<Array2<f32>, String> {
        match self {
            Runner::F32(m) => m.predict(x.view()).map_err(|e| e.to_string()),
            Runner::Low(q) => q.predict(x.view()).map_err(|e| e.to_string()),
        }
    }

    /// Loss and accuracies on labelled images.
    pub(crate) fn evaluate(&self, data: &dyn Source, batch: usize) -> Result<Evaluation, String> {
        match self {
            Runner::F32(m) => m.evaluate(data, batch).map_err(|e| e.to_string()),
            Runner::Low(q) => q.evaluate(data, batch).map_err(|e| e.to_string()),
        }
    }

    /// Nothing for fp32; ` bf16 (… MiB of weights)` or ` int8 (…)`: what a command's
    /// report adds after the model's name.
    pub(crate) fn describe(&self) -> String {
        match self {
            Runner::F32(_) => String::new(),
            Runner::Low(q) => format!(
                " {} ({:.2} MiB of weights)",
                q.precision(),
                q.weight_bytes() as f64 / (1024.0 * 1024.0)
            ),
        }
    }
}

/// `want` indices spread evenly over `0..len` (all of them if `len <= want`).
pub(crate) fn spread(len: usize, want: usize) -> Vec<usize> {
    if len <= want {
        return (0..len).collect();
    }
    (0..want).map(|i| i * len / want).collect()
}

/// The JPEG and PNG files under `dir` (recursively), sorted.
///
/// # Errors
/// An unreadable folder; a folder without images.
pub(crate) fn image_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot read {}: {e}", d.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "--calibration {}: no JPEG or PNG images in it",
            dir.display()
        ));
    }
    Ok(files)
}

/// Calibration batches from `--calibration`'s image files, each preprocessed by `load`
/// into a `[C, H, W]` array.
///
/// # Errors
/// As [`image_files`], or the first image `load` fails on.
pub(crate) fn calibration_from_files(
    args: &PrecisionArgs,
    load: &dyn Fn(&Path) -> Result<densenet_runtime::ndarray::Array3<f32>, String>,
) -> Result<Vec<Array4<f32>>, String> {
    let dir = args
        .calibration
        .as_deref()
        .ok_or("--precision int8 needs --calibration DIR")?;
    let files = image_files(dir)?;
    let chosen: Vec<&PathBuf> = spread(files.len(), args.calibration_images)
        .into_iter()
        .map(|i| &files[i])
        .collect();
    let mut batches = Vec::new();
    for chunk in chosen.chunks(CALIBRATION_BATCH) {
        let images = chunk
            .iter()
            .map(|path| load(path).map_err(|e| format!("{}: {e}", path.display())))
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(densenet_runtime::image::stack(&images).map_err(|e| e.to_string())?);
    }
    Ok(batches)
}

/// Calibration batches from a labelled source (e.g. an image folder opened like the
/// evaluation data): `--calibration-images` of its images, spread over them.
///
/// # Errors
/// A source without images, or one that cannot be read.
pub(crate) fn calibration_from_source(
    args: &PrecisionArgs,
    source: &dyn Source,
) -> Result<Vec<Array4<f32>>, String> {
    let chosen = spread(source.len(), args.calibration_images);
    chosen
        .chunks(CALIBRATION_BATCH)
        .map(|chunk| {
            source
                .batch(chunk, None)
                .map(|b| b.images)
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_covers_the_range_evenly() {
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(7, 3), vec![0, 2, 4]);
    }
}
