//! Partial loading: a pretrained backbone into a model with a new head (Keras's
//! `include_top=False`, torch's `load_state_dict(strict=False)`), saying what was
//! loaded, what was left as it was and why, and what the file had that went unused.

use core::fmt;

use safetensors::tensor::SafeTensors;

use crate::part::Part;
use crate::prelude::*;
use crate::stage::{LayerName, LayerRef, Network};
use crate::weights::naming::{self, Tensor};
use crate::weights::{
    check_architecture, expected_shape, format_error, load_into, load_layer, missing, tensor_map,
    to_bytes, LoadError, LoadOptions, Naming,
};

/// How to load a file into a model that differs from it. [`PartialLoad::backbone`] is
/// the usual case: everything but the classifier.
///
/// ```
/// use densenet_runtime::weights::PartialLoad;
/// use densenet_runtime::Part;
///
/// // Keep block 4 and the head freshly initialised; tolerate other shape mismatches.
/// let how = PartialLoad {
///     skip: vec![Part::Block(4), Part::Head],
///     skip_mismatched: true,
///     ..PartialLoad::default()
/// };
/// assert_eq!(PartialLoad::backbone().skip, [Part::Classifier]);
/// # let _ = how;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialLoad {
    /// Naming scheme and value checks, as for a full load.
    pub options: LoadOptions,
    /// Parts of the model left as they are, whatever the file holds for them.
    pub skip: Vec<Part>,
    /// Leave a layer as it is when the file lacks it or has it in another shape
    /// (Keras's `skip_mismatch=True`), instead of failing. Off by default: a typo'd
    /// file then fails loudly rather than loading nothing.
    pub skip_mismatched: bool,
}

impl PartialLoad {
    /// A pretrained backbone: every layer but the classifier must load; the classifier
    /// keeps its initialisation (whatever its class count), and a file's classifier is
    /// reported unused. Loads a 1000-class ImageNet file into a `classes: 5` model, a
    /// `head: avg | max | none` model, or a model of another input size.
    pub fn backbone() -> Self {
        PartialLoad {
            skip: vec![Part::Classifier],
            ..PartialLoad::default()
        }
    }
}

/// Why a layer was left as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kept {
    /// It is in a part [`PartialLoad::skip`] names.
    Skipped(Part),
    /// The file has no tensor for it (`key`, the first one missing).
    Missing {
        /// The key looked for, in the file's naming.
        key: String,
    },
    /// The file's tensor has another shape.
    Shape {
        /// The key, as the file names it.
        key: String,
        /// The model's shape, in the file's layout.
        expected: Vec<usize>,
        /// The file's.
        actual: Vec<usize>,
    },
}

/// What a partial load did, layer by layer (torchvision module paths, e.g.
/// `features.denseblock1.denselayer1.conv1`, `classifier`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// The naming scheme the file was read in.
    pub naming: Naming,
    /// Layers loaded from the file.
    pub loaded: Vec<String>,
    /// Layers left as they were, and why.
    pub kept: Vec<(String, Kept)>,
    /// The file's tensors no layer took, as the file names them.
    pub unused: Vec<String>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loaded {} layers ({} naming)",
            self.loaded.len(),
            self.naming
        )?;
        if !self.kept.is_empty() {
            write!(f, "; kept as initialised:")?;
            for (i, (layer, why)) in self.kept.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                match why {
                    Kept::Skipped(part) => write!(f, "{sep}{layer} (skipped: {part})")?,
                    Kept::Missing { key } => write!(f, "{sep}{layer} (not in the file: {key})")?,
                    Kept::Shape {
                        expected, actual, ..
                    } => write!(
                        f,
                        "{sep}{layer} (shape {actual:?} in the file, {expected:?} here)"
                    )?,
                }
            }
        }
        if !self.unused.is_empty() {
            write!(f, "; unused in the file: {}", self.unused.join(", "))?;
        }
        Ok(())
    }
}

/// The tensors of a layer.
fn tensors_of(layer: LayerRef<'_>) -> &'static [Tensor] {
    match layer {
        LayerRef::Conv(_) => &[Tensor::ConvWeight],
        LayerRef::BatchNorm(_) => &[
            Tensor::BnGamma,
            Tensor::BnBeta,
            Tensor::BnMean,
            Tensor::BnVar,
        ],
        LayerRef::Linear(_) => &[Tensor::LinearWeight, Tensor::LinearBias],
    }
}

/// Loads what `how` says from safetensors `bytes` into `model`. All or nothing: on an
/// error the model is restored to what it was.
pub(crate) fn load_partial<M: Network + ?Sized>(
    model: &mut M,
    bytes: &[u8],
    how: &PartialLoad,
) -> Result<LoadReport, LoadError> {
    for &part in &how.skip {
        // A model without a classifier has nothing to skip there: `backbone()` loads
        // into pooled and feature-map heads too.
        if part != Part::Classifier && !part.exists_in(model) {
            return Err(LoadError::NoSuchPart {
                part,
                model: model.architecture().name.to_string(),
            });
        }
    }
    let before = to_bytes(model);
    let result = load_partial_into(model, bytes, how);
    if result.is_err() {
        load_into(model, &before, Naming::Torchvision.into())
            .expect("the model's own weights load back into it");
    }
    result
}

fn load_partial_into<M: Network + ?Sized>(
    model: &mut M,
    bytes: &[u8],
    how: &PartialLoad,
) -> Result<LoadReport, LoadError> {
    let file = SafeTensors::deserialize(bytes).map_err(format_error)?;
    let (naming, mut tensors) = tensor_map(&file, how.options.naming)?;
    let all_keys: Vec<String> = tensors.values().map(|(key, _)| key.clone()).collect();
    if !how.skip_mismatched {
        check_architecture(model, &tensors, naming)?;
    }
    let mut report = LoadReport {
        naming,
        loaded: Vec::new(),
        kept: Vec::new(),
        unused: Vec::new(),
    };
    let mut result = Ok(());
    model.visit_layers_mut(&mut |name: LayerName, layer| {
        if result.is_err() {
            return;
        }
        let path = crate::weights::torchvision_path(name.site, name.part);
        if let Some(&part) = how.skip.iter().find(|p| p.contains(name)) {
            report.kept.push((path, Kept::Skipped(part)));
            return;
        }
        let r = layer.as_ref();
        let mut why = None;
        for &tensor in tensors_of(r) {
            let key = naming::key(name, tensor, naming);
            let expected = expected_shape(r, tensor, naming);
            why = match tensors.get(&key) {
                None => Some(Kept::Missing { key }),
                Some((file_key, view)) if view.shape() != expected.as_slice() => {
                    Some(Kept::Shape {
                        key: file_key.clone(),
                        expected,
                        actual: view.shape().to_vec(),
                    })
                }
                Some(_) => continue,
            };
            break;
        }
        result = match why {
            None => load_layer(name, layer, &mut tensors, &all_keys, naming, how.options)
                .map(|()| report.loaded.push(path)),
            Some(why) if how.skip_mismatched => {
                report.kept.push((path, why));
                Ok(())
            }
            Some(Kept::Missing { key }) => Err(missing(&key, &all_keys, naming)),
            Some(Kept::Shape {
                key,
                expected,
                actual,
            }) => Err(LoadError::Shape {
                name: key,
                expected,
                actual,
            }),
            Some(Kept::Skipped(_)) => unreachable!("skips are handled above"),
        };
    });
    result?;
    report.unused = tensors.into_values().map(|(key, _)| key).collect();
    report.unused.sort();
    Ok(report)
}
