//! `densenet run`: classify images, as a table or JSON, with class names from a file,
//! a training checkpoint, or ImageNet's list.

use std::path::{Path, PathBuf};

use densenet_runtime::image::{stack, Preprocessing};
use densenet_runtime::train::read_checkpoint_info;
use densenet_runtime::Naming;

use crate::precision::{calibration_from_files, PrecisionArgs};
use crate::{load_model, load_spec};

/// The 1000 ImageNet-1k class names in index order (torchvision's list).
const IMAGENET_CLASSES: &str = include_str!("imagenet_classes.txt");

/// What `densenet run` was asked.
pub(crate) struct Request<'a> {
    pub spec: &'a Path,
    pub weights: &'a Path,
    pub naming: Naming,
    pub top: usize,
    pub labels: Option<&'a Path>,
    pub json: bool,
    pub images: &'a [PathBuf],
    pub precision: &'a PrecisionArgs,
}

/// The names of a model's `classes` classes: `--labels`, else those a training
/// checkpoint saved, else ImageNet's for 1000 classes, else `class N`.
pub(crate) fn class_names(
    labels: Option<&Path>,
    weights: &Path,
    classes: usize,
) -> Result<Vec<String>, String> {
    let names: Vec<String> = match labels {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => match read_checkpoint_info(weights)
            .ok()
            .and_then(|i| i.class_names)
        {
            Some(names) => names,
            None if classes == 1000 => IMAGENET_CLASSES.lines().map(str::to_string).collect(),
            None => (0..classes).map(|c| format!("class {c}")).collect(),
        },
    };
    if names.len() != classes {
        return Err(format!(
            "{} names {} classes, the model has {classes}",
            labels.map_or_else(
                || weights.display().to_string(),
                |l| l.display().to_string()
            ),
            names.len()
        ));
    }
    Ok(names)
}

/// ImageNet's evaluation transform scaled to a square input: resize 256 → crop 224.
///
/// # Errors
/// A non-square input.
pub(crate) fn preprocessing([_, h, w]: [usize; 3]) -> Result<Preprocessing, String> {
    if h != w {
        return Err(format!(
            "run needs a square input to center-crop to; the spec's is {h}x{w}"
        ));
    }
    let side = u32::try_from(h).map_err(|_| format!("input size {h} is too large"))?;
    Ok(Preprocessing {
        crop: side,
        resize: (h as f64 * 256.0 / 224.0).round() as u32,
        ..Preprocessing::default()
    })
}

pub(crate) fn classify(request: &Request<'_>) -> Result<(), String> {
    request.precision.validate(true)?;
    let arch = load_spec(request.spec).map_err(|e| e.to_string())?;
    let preprocessing = preprocessing(arch.input)?;
    let names = class_names(request.labels, request.weights, arch.classes)?;
    let model = load_model(request.spec, request.weights, request.naming)?;
    let model = request.precision.apply(model, |args| {
        calibration_from_files(args, &|path| {
            preprocessing.load(path).map_err(|e| e.to_string())
        })
    })?;
    let tensors = request
        .images
        .iter()
        .map(|path| preprocessing.load(path).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let batch = stack(&tensors).map_err(|e| e.to_string())?;
    let probabilities = model.predict(&batch)?;
    let mut json = Vec::new();
    for (path, row) in request.images.iter().zip(probabilities.rows()) {
        let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(request.top);
        if request.json {
            let top: Vec<_> = ranked
                .iter()
                .map(|&(class, p)| {
                    serde_json::json!({"class": class, "label": names[class], "probability": p})
                })
                .collect();
            json.push(serde_json::json!({"image": path.display().to_string(), "top": top}));
        } else {
            println!("{}", path.display());
            for (class, p) in ranked {
                println!("  {:>6.2}%  {}", p * 100.0, names[class]);
            }
        }
    }
    if request.json {
        println!("{}", serde_json::Value::Array(json));
    }
    Ok(())
}
