//! Weights I/O: safetensors files in torchvision/timm or Keras naming.
//!
//! Loading is strict and all-or-nothing: every weight of the model must be in the file
//! with the right shape, nothing else may be (bookkeeping such as `num_batches_tracked`
//! aside), and the model is returned only when all of it loaded. Any byte string gives
//! a [`LoadError`], never a panic.

mod error;
mod naming;
mod options;
mod partial;
mod validate;

use alloc::collections::BTreeMap;
#[cfg(feature = "std")]
use std::path::Path;

use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};

pub use error::LoadError;
#[cfg(feature = "std")]
pub use error::SaveError;
pub(crate) use naming::torchvision_path;
pub use naming::Naming;
use naming::Tensor;
#[cfg(feature = "std")]
pub(crate) use naming::CHECKPOINT_PREFIX;
pub use options::LoadOptions;
pub(crate) use partial::load_partial;
pub use partial::{Kept, LoadReport, PartialLoad};

use crate::prelude::*;
use crate::stage::Network;
use crate::stage::{LayerMut, LayerName, LayerRef};

/// Fills `model` from safetensors bytes read as `options` say (naming scheme, value
/// checks). On error the model is partly overwritten: the constructors
/// (`from_safetensors_bytes`, `load_safetensors`) load into a fresh model and drop it
/// on failure, so a user never sees a half-loaded one.
///
/// # Errors
/// A [`LoadError`] naming the tensor and what was wrong.
pub(crate) fn load_into<M: Network + ?Sized>(
    model: &mut M,
    bytes: &[u8],
    options: LoadOptions,
) -> Result<(), LoadError> {
    let file = SafeTensors::deserialize(bytes).map_err(format_error)?;
    let (naming, mut tensors) = tensor_map(&file, options.naming)?;
    let all_keys: Vec<String> = tensors.values().map(|(key, _)| key.clone()).collect();
    check_architecture(model, &tensors, naming)?;
    let mut result = Ok(());
    model.visit_layers_mut(&mut |name, layer| {
        if result.is_ok() {
            result = load_layer(name, layer, &mut tensors, &all_keys, naming, options);
        }
    });
    result?;
    if let Some((_, (key, _))) = tensors.iter().next() {
        return Err(LoadError::UnexpectedTensor {
            name: key.clone(),
            others: tensors.len() - 1,
        });
    }
    Ok(())
}

/// The file's tensors by normalised key (bookkeeping left out), with their keys as the
/// file spells them, and the naming scheme (`naming`, or the detected one for `Auto`).
type TensorMap<'a> = BTreeMap<String, (String, TensorView<'a>)>;

fn tensor_map<'a>(
    file: &SafeTensors<'a>,
    naming: Naming,
) -> Result<(Naming, TensorMap<'a>), LoadError> {
    let naming = match naming {
        Naming::Auto => naming::detect(file.names()).ok_or_else(|| {
            let mut sample: Vec<String> = file.names().into_iter().map(str::to_string).collect();
            sample.sort();
            sample.truncate(3);
            LoadError::UnknownNaming { sample }
        })?,
        forced => forced,
    };
    let mut tensors = TensorMap::new();
    for (key, view) in file.iter() {
        if !naming::is_bookkeeping(key) {
            validate::insert_unique(&mut tensors, naming::normalise(key, naming), key, view)?;
        }
    }
    Ok((naming, tensors))
}

/// The bytes of the file at `path`.
///
/// # Errors
/// [`LoadError::Io`] naming the file.
#[cfg(feature = "std")]
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Serialises a model's weights as safetensors in torchvision naming (conv weights
/// OIHW, BN running statistics and `num_batches_tracked` included), loadable by
/// `torchvision.models.DenseNet.load_state_dict` and by the loaders:
/// [`Model::to_safetensors_bytes`](crate::Model::to_safetensors_bytes).
pub fn to_bytes<M: Network + ?Sized>(model: &M) -> Vec<u8> {
    to_bytes_with(model, Naming::Torchvision)
}

/// [`to_bytes`] in `naming`: torchvision (also for [`Naming::Auto`]), or Keras 3
/// (`Variable.path` keys such as `conv2_block1_1_conv/kernel`, conv kernels HWIO, dense
/// kernels `(in, out)`, no `num_batches_tracked`), as `keras.applications.DenseNet121`
/// names its weights. Every file loads back into the same model.
pub fn to_bytes_with<M: Network + ?Sized>(model: &M, naming: Naming) -> Vec<u8> {
    to_bytes_extended(model, naming, Vec::new(), None)
}

/// A tensor for [`to_bytes_extended`]: key, dtype, shape, little-endian bytes.
pub(crate) type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// [`to_bytes_with`] plus `extra` tensors (whose keys the loaders skip, see
/// `naming::is_bookkeeping`) and header `metadata`: a training checkpoint.
pub(crate) fn to_bytes_extended<M: Network + ?Sized>(
    model: &M,
    naming: Naming,
    extra: Vec<Entry>,
    metadata: Option<BTreeMap<String, String>>,
) -> Vec<u8> {
    let mut entries = entries_except(model, naming, &|_, _| false);
    entries.extend(extra);
    serialize(entries, metadata)
}

/// The tensors of every layer of `model` in `naming` (torchvision unless Keras) except
/// those `skip` names, and for torchvision each BatchNorm's `num_batches_tracked`: what
/// [`to_bytes_extended`] writes; a low-precision file writes its convolutions itself.
pub(crate) fn entries_except<M: Network + ?Sized>(
    model: &M,
    naming: Naming,
    skip: &dyn Fn(LayerName, LayerRef<'_>) -> bool,
) -> Vec<Entry> {
    let keras = naming == Naming::Keras;
    let naming = if keras {
        Naming::Keras
    } else {
        Naming::Torchvision
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut push = |name: LayerName,
                    tensor: Tensor,
                    shape: Vec<usize>,
                    values: &mut dyn Iterator<Item = f32>| {
        let bytes = values.flat_map(f32::to_le_bytes).collect();
        entries.push((naming::key(name, tensor, naming), Dtype::F32, shape, bytes));
    };
    model.visit_layers(&mut |name, layer| match layer {
        _ if skip(name, layer) => {}
        LayerRef::Conv(conv) => {
            let hwio = conv.weight();
            let layout = if keras { [0, 1, 2, 3] } else { [3, 2, 0, 1] }; // HWIO or OIHW
            let weight = hwio.view().permuted_axes(layout);
            let shape = weight.shape().to_vec();
            push(name, Tensor::ConvWeight, shape, &mut weight.iter().copied());
        }
        LayerRef::BatchNorm(bn) => {
            let c = vec![bn.channels()];
            push(
                name,
                Tensor::BnGamma,
                c.clone(),
                &mut bn.gamma().iter().copied(),
            );
            push(
                name,
                Tensor::BnBeta,
                c.clone(),
                &mut bn.beta().iter().copied(),
            );
            push(
                name,
                Tensor::BnMean,
                c.clone(),
                &mut bn.running_mean().iter().copied(),
            );
            push(
                name,
                Tensor::BnVar,
                c,
                &mut bn.running_var().iter().copied(),
            );
        }
        LayerRef::Linear(linear) => {
            // torch's (out, in); Keras's kernel is (in, out).
            let w = linear.weight();
            let w = if keras { w.t() } else { w.view() };
            push(
                name,
                Tensor::LinearWeight,
                w.shape().to_vec(),
                &mut w.iter().copied(),
            );
            let b = linear.bias();
            push(
                name,
                Tensor::LinearBias,
                vec![b.len()],
                &mut b.iter().copied(),
            );
        }
    });
    // torch's BatchNorm keeps a step counter; strict loaders expect the key.
    let counters: Vec<_> = entries
        .iter()
        .filter_map(|(key, ..)| key.strip_suffix(".running_var"))
        .map(|layer| {
            (
                format!("{layer}.num_batches_tracked"),
                Dtype::I64,
                Vec::new(),
                0i64.to_le_bytes().to_vec(),
            )
        })
        .collect();
    entries.extend(counters);
    entries
}

/// A safetensors file of `entries` and header `metadata`.
pub(crate) fn serialize(
    entries: Vec<Entry>,
    metadata: Option<BTreeMap<String, String>>,
) -> Vec<u8> {
    let views = entries.iter().map(|(key, dtype, shape, bytes)| {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .expect("shape and byte length agree by construction");
        (key.as_str(), view)
    });
    safetensors::serialize(views, metadata.map(|m| m.into_iter().collect()))
        .expect("in-memory serialisation of valid views cannot fail")
}

/// Writes [`to_bytes`] to `path` atomically (a failed write leaves what was there):
/// [`Model::save_safetensors`](crate::Model::save_safetensors), also for `dyn Model`.
///
/// # Errors
/// [`SaveError`] naming the file if it cannot be written.
#[cfg(feature = "std")]
pub fn save_file<M: Network + ?Sized>(model: &M, path: &Path) -> Result<(), SaveError> {
    save_file_with(model, path, Naming::Torchvision)
}

/// [`save_file`] in `naming` (see [`to_bytes_with`]).
///
/// # Errors
/// [`SaveError`] naming the file if it cannot be written.
#[cfg(feature = "std")]
pub fn save_file_with<M: Network + ?Sized>(
    model: &M,
    path: &Path,
    naming: Naming,
) -> Result<(), SaveError> {
    crate::atomic_file::write(path, &to_bytes_with(model, naming))
        .map_err(|e| SaveError::io(path, e))
}

pub(crate) fn format_error(e: SafeTensorError) -> LoadError {
    use SafeTensorError as E;
    match e {
        E::HeaderTooSmall | E::InvalidHeaderLength => LoadError::Truncated {
            reason: "the file ends inside its header".into(),
        },
        E::MetadataIncompleteBuffer => LoadError::Truncated {
            reason: "the data section is not as long as the header says".into(),
        },
        E::InvalidOffset(tensor) => LoadError::BadOffsets { tensor },
        E::TensorInvalidInfo
        | E::ValidationOverflow
        | E::MisalignedSlice
        | E::InvalidTensorView(..) => LoadError::BadOffsets {
            tensor: "(unnamed)".into(),
        },
        other => LoadError::NotSafetensors {
            reason: other.to_string(),
        },
    }
}

/// Refuses, in one line, a file whose blocks differ from the model's (e.g. DenseNet-169
/// weights into a DenseNet-121) instead of reporting hundreds of missing tensors.
fn check_architecture<M: Network + ?Sized>(
    model: &M,
    tensors: &BTreeMap<String, (String, TensorView<'_>)>,
    naming: Naming,
) -> Result<(), LoadError> {
    let architecture = model.architecture();
    let file_blocks = naming::blocks_in(tensors.keys().map(String::as_str));
    if file_blocks == *architecture.blocks {
        // Same layout: compare widths via the first conv of each kind the model expects.
        let mut mismatched = 0;
        model.visit_layers(&mut |name, layer| {
            if let LayerRef::Conv(conv) = layer {
                let key = naming::key(name, Tensor::ConvWeight, naming);
                if let Some((_, view)) = tensors.get(&key) {
                    if view.shape()
                        != expected_shape(LayerRef::Conv(conv), Tensor::ConvWeight, naming)
                    {
                        mismatched += 1;
                    }
                }
            }
        });
        if mismatched <= 1 {
            return Ok(());
        }
        return Err(LoadError::ArchitectureMismatch {
            model: architecture.name.to_string(),
            expected: format!("blocks {:?}", architecture.blocks),
            file: format!("blocks {file_blocks:?} but {mismatched} convolutions of other widths (another growth rate or stem?)"),
        });
    }
    if file_blocks.is_empty() {
        return Ok(()); // No dense-layer keys at all: let the per-tensor errors say what is missing.
    }
    Err(LoadError::ArchitectureMismatch {
        model: architecture.name.to_string(),
        expected: format!("blocks {:?}", architecture.blocks),
        file: format!("blocks {file_blocks:?}"),
    })
}

/// The shape a tensor must have in the file, in the file's layout.
fn expected_shape(layer: LayerRef<'_>, tensor: Tensor, naming: Naming) -> Vec<usize> {
    let keras = naming == Naming::Keras;
    match layer {
        LayerRef::Conv(conv) => {
            let [kh, kw, ci, co] = conv.weight_shape();
            if keras {
                vec![kh, kw, ci, co]
            } else {
                vec![co, ci, kh, kw]
            }
        }
        LayerRef::BatchNorm(bn) => vec![bn.channels()],
        LayerRef::Linear(linear) => match tensor {
            Tensor::LinearBias => vec![linear.out_features()],
            _ if keras => vec![linear.in_features(), linear.out_features()],
            _ => vec![linear.out_features(), linear.in_features()],
        },
    }
}

fn load_layer(
    name: LayerName,
    layer: LayerMut<'_>,
    tensors: &mut BTreeMap<String, (String, TensorView<'_>)>,
    all_keys: &[String],
    naming: Naming,
    options: LoadOptions,
) -> Result<(), LoadError> {
    let keras = naming == Naming::Keras;
    let mut take = |tensor: Tensor, layer: LayerRef<'_>| -> Result<ArrayD<f32>, LoadError> {
        let key = naming::key(name, tensor, naming);
        let Some((file_key, view)) = tensors.remove(&key) else {
            return Err(missing(&key, all_keys, naming));
        };
        let expected = expected_shape(layer, tensor, naming);
        if view.shape() != expected.as_slice() {
            return Err(LoadError::Shape {
                name: file_key,
                expected,
                actual: view.shape().to_vec(),
            });
        }
        let values = to_f32(&view).ok_or_else(|| LoadError::Dtype {
            name: file_key.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        if options.check_values {
            validate::values(tensor, &file_key, &values)?;
        }
        Ok(ArrayD::from_shape_vec(IxDyn(&expected), values)
            .expect("length checked against the shape"))
    };
    match layer {
        LayerMut::Conv(conv) => {
            let w = take(Tensor::ConvWeight, LayerRef::Conv(conv))?;
            let w: Array4<f32> = w.into_dimensionality().expect("4-D by the shape check");
            // Stored HWIO: Keras's own layout; torch's OIHW permuted.
            let hwio = if keras {
                w
            } else {
                w.permuted_axes([2, 3, 1, 0])
            };
            conv.set_weight(hwio.view())
                .expect("the file's shape was checked against the layer's");
        }
        LayerMut::BatchNorm(bn) => {
            let r = LayerRef::BatchNorm(bn);
            let [gamma, beta, mean, var] = [
                Tensor::BnGamma,
                Tensor::BnBeta,
                Tensor::BnMean,
                Tensor::BnVar,
            ]
            .map(|t| take(t, r).map(|a| a.into_dimensionality::<ndarray::Ix1>().expect("1-D")));
            let (gamma, beta, mean, var): (Array1<f32>, _, _, _) = (gamma?, beta?, mean?, var?);
            bn.gamma_mut().assign(&gamma);
            bn.beta_mut().assign(&beta);
            bn.running_mean_mut().assign(&mean);
            bn.running_var_mut().assign(&var);
        }
        LayerMut::Linear(linear) => {
            let r = LayerRef::Linear(linear);
            let w: Array2<f32> = take(Tensor::LinearWeight, r)?
                .into_dimensionality()
                .expect("2-D");
            let b: Array1<f32> = take(Tensor::LinearBias, r)?
                .into_dimensionality()
                .expect("1-D");
            // Stored (out, in) as torch; Keras's kernel is (in, out).
            let w = if keras { w.reversed_axes() } else { w };
            linear.weight_mut().assign(&w);
            linear.bias_mut().assign(&b);
        }
    }
    Ok(())
}

/// A missing-tensor error listing the file's closest keys.
fn missing(key: &str, all_keys: &[String], naming: Naming) -> LoadError {
    let mut close: Vec<(usize, &String)> = all_keys.iter().map(|k| (distance(key, k), k)).collect();
    close.sort();
    LoadError::MissingTensor {
        name: key.to_string(),
        naming,
        close: close.into_iter().take(3).map(|(_, k)| k.clone()).collect(),
    }
}

/// Edit distance, for "did you mean" lists.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Little-endian F32, F16, BF16 or F64 data as f32; `None` for other dtypes.
fn to_f32(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let data = view.data();
    let values = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(values)
}
