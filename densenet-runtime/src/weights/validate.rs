//! Checks of a file beyond its shapes and dtypes: every value finite, running variances
//! not negative, and no two keys that name the same weight. Each refuses with a
//! [`LoadError`] naming the tensor (or both keys) instead of loading a model whose
//! logits would be NaN, or silently keeping one of two spellings.

use alloc::collections::btree_map::{BTreeMap, Entry};

use super::naming::Tensor;
use crate::prelude::*;
use crate::weights::LoadError;

/// Checks the values of `tensor` (named `name` in the file): all finite, and for a
/// running variance none negative. The first bad value is reported with its index in
/// the file's layout.
pub(super) fn values(tensor: Tensor, name: &str, values: &[f32]) -> Result<(), LoadError> {
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(LoadError::NonFinite {
            name: name.to_string(),
            index,
            value,
        });
    }
    if tensor == Tensor::BnVar {
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, &v)| v < 0.0) {
            return Err(LoadError::NegativeVariance {
                name: name.to_string(),
                index,
                value,
            });
        }
    }
    Ok(())
}

/// Adds `value` under `normalised` (the key of `file_key` after [`normalise`]), refusing
/// a second file key that normalises to the same key: e.g. torchvision's
/// `…denselayer1.norm1.weight` and its legacy spelling `…denselayer1.norm.1.weight`.
///
/// [`normalise`]: super::naming::normalise
pub(super) fn insert_unique<V>(
    tensors: &mut BTreeMap<String, (String, V)>,
    normalised: String,
    file_key: &str,
    value: V,
) -> Result<(), LoadError> {
    match tensors.entry(normalised) {
        Entry::Vacant(slot) => {
            slot.insert((file_key.to_string(), value));
            Ok(())
        }
        Entry::Occupied(slot) => {
            let mut keys = [slot.get().0.clone(), file_key.to_string()];
            keys.sort();
            let [first, second] = keys;
            Err(LoadError::DuplicateTensor {
                key: slot.key().clone(),
                first,
                second,
            })
        }
    }
}
