//! Low-precision models in safetensors files (the layout is documented in
//! [`precision`](super)).

use std::collections::BTreeMap;

use ndarray::{Array4, ArrayView4};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::forward::size;
use super::quantized::{LowWeight, QConv};
use super::{simulate, Precision, QuantizeError};
use crate::kernels::direct_conv::lowp::{Bf16Weight, Int8Weight};
use crate::stage::{LayerRef, Network};
use crate::weights::{self, torchvision_path, Entry, LoadOptions, Naming};

/// The header entry naming the precision.
pub(crate) const PRECISION_KEY: &str = "densenet.precision";
/// The prefix of int8 tensors.
const INT8: &str = "int8/";

/// The file of a low-precision model: the fp32 layers as [`weights::to_bytes`] writes
/// them (torchvision naming), the quantized convolutions as the layout says.
pub(crate) fn to_bytes<M: Network + ?Sized>(
    model: &M,
    precision: Precision,
    convs: &[QConv],
) -> Vec<u8> {
    let mut entries = weights::entries_except(model, Naming::Torchvision, &|name, layer| {
        matches!(layer, LayerRef::Conv(_)) && simulate::is_quantized(name)
    });
    for conv in convs {
        let path = torchvision_path(conv.name.site, conv.name.part);
        match &conv.weight {
            LowWeight::Int8 {
                weight,
                input_scale,
            } => {
                let (oihw, shape) = oihw(weight.dims(), weight.to_hwio());
                let qweight = oihw.into_iter().map(|q| q.to_le_bytes()[0]).collect();
                entries.push((format!("{INT8}{path}.qweight"), Dtype::I8, shape, qweight));
                let scales = weight.scales();
                let bytes = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                entries.push((
                    format!("{INT8}{path}.qscale"),
                    Dtype::F32,
                    vec![scales.len()],
                    bytes,
                ));
                let bytes = input_scale.to_le_bytes().to_vec();
                entries.push((
                    format!("{INT8}{path}.input_scale"),
                    Dtype::F32,
                    vec![],
                    bytes,
                ));
            }
            LowWeight::Bf16(weight) => {
                let (oihw, shape) = oihw(weight.dims(), weight.to_hwio());
                let bytes = oihw.into_iter().flat_map(|b| b.to_le_bytes()).collect();
                entries.push((format!("{path}.weight"), Dtype::BF16, shape, bytes));
            }
        }
    }
    let mut metadata = BTreeMap::new();
    metadata.insert(PRECISION_KEY.to_string(), precision.to_string());
    metadata.insert(
        "densenet.model".to_string(),
        model.architecture().name.to_string(),
    );
    weights::serialize(entries, Some(metadata))
}

/// HWIO values of `dims` in torch's OIHW order, and that shape.
fn oihw<T: Copy>(dims: [usize; 4], hwio: Vec<T>) -> (Vec<T>, Vec<usize>) {
    let [kh, kw, ci, co] = dims;
    let array = Array4::from_shape_vec((kh, kw, ci, co), hwio).expect("dims match the values");
    let values = array
        .view()
        .permuted_axes([3, 2, 0, 1])
        .iter()
        .copied()
        .collect();
    (values, vec![co, ci, kh, kw])
}

/// A low-precision file read into `model`: the model (fp32 layers loaded, quantized
/// convolutions holding the values the fallback runs), the precision, the quantized
/// weights in site order.
pub(crate) fn from_bytes<M: Network>(
    mut model: M,
    bytes: &[u8],
) -> Result<(M, Precision, Vec<QConv>), QuantizeError> {
    let file = SafeTensors::deserialize(bytes).map_err(weights::format_error)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(weights::format_error)?;
    let found = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(PRECISION_KEY).cloned());
    let precision = match found.as_deref() {
        Some("int8") => Precision::Int8,
        Some("bf16") => Precision::Bf16,
        _ => return Err(QuantizeError::NotLowPrecision { found }),
    };
    let options = LoadOptions::from(Naming::Torchvision);
    match precision {
        Precision::Bf16 => {
            let names = simulate::conv_sites(&model);
            for name in &names {
                let key = format!("{}.weight", torchvision_path(name.site, name.part));
                if let Ok(view) = file.tensor(&key) {
                    if view.dtype() != Dtype::BF16 {
                        return Err(QuantizeError::Dtype {
                            key,
                            expected: "BF16",
                            actual: view.dtype().to_string(),
                        });
                    }
                } // a missing one is the loader's error, with its near matches
            }
            weights::load_into(&mut model, bytes, options)?;
            let mut convs = Vec::with_capacity(names.len());
            let mut failed = None;
            model.visit_layers(&mut |name, layer| {
                if let LayerRef::Conv(conv) = layer {
                    if simulate::is_quantized(name) && failed.is_none() {
                        // Exact: the values came from bf16.
                        match Bf16Weight::from_hwio(conv.weight().view()) {
                            Ok(w) => convs.push(QConv {
                                name,
                                weight: LowWeight::Bf16(w),
                            }),
                            Err(source) => {
                                failed = Some(QuantizeError::Kernel {
                                    layer: torchvision_path(name.site, name.part),
                                    source,
                                })
                            }
                        }
                    }
                }
            });
            match failed {
                Some(e) => Err(e),
                None => Ok((model, precision, convs)),
            }
        }
        Precision::Int8 => {
            let mut int8 = BTreeMap::new();
            let mut entries: Vec<Entry> = Vec::new();
            for (key, view) in file.iter() {
                match key.strip_prefix(INT8) {
                    Some(rest) => {
                        int8.insert(rest.to_string(), view);
                    }
                    None => entries.push(entry(key, &view)),
                }
            }
            // Every int8 convolution of the file, read, checked and dequantized under
            // its fp32 key, so that the strict loader compares the file's architecture
            // with the model's (by keys and shapes) before anything else.
            let paths: Vec<String> = int8
                .keys()
                .filter_map(|k| k.strip_suffix(".qweight").map(str::to_string))
                .collect();
            let mut decoded = BTreeMap::new();
            for path in paths {
                let (weight, input_scale) = read_int8(&mut int8, &path)?;
                let (values, shape) = oihw(weight.dims(), weight.dequantized_hwio());
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                entries.push((format!("{path}.weight"), Dtype::F32, shape, bytes));
                decoded.insert(path, (weight, input_scale));
            }
            if let Some(key) = int8.keys().next() {
                return Err(QuantizeError::UnexpectedTensor {
                    key: format!("{INT8}{key}"),
                });
            }
            let fp32 = weights::serialize(entries, None);
            weights::load_into(&mut model, &fp32, options)?;
            // The model's quantized convolutions, each of which must be int8 in the
            // file (not an fp32 weight); any other int8 tensor was unexpected above.
            let mut convs = Vec::new();
            for name in simulate::conv_sites(&model) {
                let path = torchvision_path(name.site, name.part);
                let (weight, input_scale) =
                    decoded
                        .remove(&path)
                        .ok_or_else(|| QuantizeError::MissingTensor {
                            key: format!("{INT8}{path}.qweight"),
                            layer: path.clone(),
                        })?;
                convs.push(QConv {
                    name,
                    weight: LowWeight::Int8 {
                        weight,
                        input_scale,
                    },
                });
            }
            if let Some(path) = decoded.keys().next() {
                return Err(QuantizeError::UnexpectedTensor {
                    key: format!("{INT8}{path}.qweight"),
                });
            }
            Ok((model, precision, convs))
        }
    }
}

/// A tensor of the file as an entry to write again.
fn entry(key: &str, view: &TensorView<'_>) -> Entry {
    (
        key.to_string(),
        view.dtype(),
        view.shape().to_vec(),
        view.data().to_vec(),
    )
}

/// Takes the int8 tensors of the convolution at `path` out of `int8`: its weight
/// (OIHW, `I8`), per-channel scales (`F32 [c_out]`, finite, not negative) and input
/// scale (`F32 []`, finite and positive), checked against each other; the shape against
/// the model is the loader's check.
fn read_int8(
    int8: &mut BTreeMap<String, TensorView<'_>>,
    path: &str,
) -> Result<(Int8Weight, f32), QuantizeError> {
    let mut take = |suffix: &str, dtype: Dtype| {
        let key = format!("{path}.{suffix}");
        let full = format!("{INT8}{key}");
        let view = int8.remove(&key).ok_or(QuantizeError::MissingTensor {
            key: full.clone(),
            layer: path.to_string(),
        })?;
        if view.dtype() != dtype {
            return Err(QuantizeError::Dtype {
                key: full,
                expected: if dtype == Dtype::I8 { "I8" } else { "F32" },
                actual: view.dtype().to_string(),
            });
        }
        Ok((full, view))
    };
    let (wkey, w) = take("qweight", Dtype::I8)?;
    let (skey, s) = take("qscale", Dtype::F32)?;
    let (ikey, i) = take("input_scale", Dtype::F32)?;
    let &[co, ci, kh, kw] = w.shape() else {
        return Err(QuantizeError::Shape {
            key: wkey,
            expected: vec![0; 4],
            actual: w.shape().to_vec(),
        });
    };
    size(&[co, ci, kh, kw], "an int8 weight's size")?;
    if s.shape() != [co] {
        return Err(QuantizeError::Shape {
            key: skey,
            expected: vec![co],
            actual: s.shape().to_vec(),
        });
    }
    if !i.shape().is_empty() {
        return Err(QuantizeError::Shape {
            key: ikey,
            expected: vec![],
            actual: i.shape().to_vec(),
        });
    }
    let floats = |data: &[u8]| -> Vec<f32> {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let scales = floats(s.data());
    if let Some((index, &value)) = scales
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
    {
        return Err(QuantizeError::Scale {
            key: skey,
            index,
            value,
        });
    }
    let input_scale = floats(i.data())[0];
    if !(input_scale.is_finite() && input_scale > 0.0) {
        return Err(QuantizeError::Scale {
            key: ikey,
            index: 0,
            value: input_scale,
        });
    }
    let q: Vec<i8> = w.data().iter().map(|&b| b as i8).collect();
    let oihw = ArrayView4::from_shape((co, ci, kh, kw), &q).expect("the file checked the size");
    let hwio: Vec<i8> = oihw.permuted_axes([2, 3, 1, 0]).iter().copied().collect();
    let weight =
        Int8Weight::from_quantized([kh, kw, ci, co], &hwio, &scales).map_err(|source| {
            QuantizeError::Kernel {
                layer: path.to_string(),
                source,
            }
        })?;
    Ok((weight, input_scale))
}
