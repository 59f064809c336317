//! Naming schemes: where each weight of a model lives in a torchvision/timm or Keras file.
//!
//! Every scheme is a function of the structural [`LayerName`]; file keys in older
//! spellings (torchvision's `norm.1`, Keras 2's `conv1/conv/kernel:0`) are normalised to
//! the current ones before lookup.

use core::fmt;

use crate::prelude::*;
use crate::stage::{LayerName, Site};

/// How a file names its tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Naming {
    /// Detect from the keys (the default).
    #[default]
    Auto,
    /// torchvision / timm `state_dict` keys: `features.denseblock1.denselayer1.conv1.weight`.
    Torchvision,
    /// Keras 3 `Variable.path` keys (`conv2_block1_1_conv/kernel`), or the Keras 2 / h5
    /// spelling (`conv1/conv/kernel:0`); conv kernels HWIO, dense kernels (in, out).
    Keras,
}

impl fmt::Display for Naming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Naming::Auto => "auto-detected",
            Naming::Torchvision => "torchvision",
            Naming::Keras => "Keras",
        })
    }
}

/// Which tensor of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tensor {
    ConvWeight,
    BnGamma,
    BnBeta,
    BnMean,
    BnVar,
    LinearWeight,
    LinearBias,
}

impl Tensor {
    fn suffix(self, naming: Naming) -> &'static str {
        let keras = naming == Naming::Keras;
        match self {
            Tensor::ConvWeight | Tensor::LinearWeight if keras => "kernel",
            Tensor::ConvWeight | Tensor::LinearWeight | Tensor::BnGamma => "weight",
            Tensor::BnBeta | Tensor::LinearBias => "bias",
            Tensor::BnMean if keras => "moving_mean",
            Tensor::BnMean => "running_mean",
            Tensor::BnVar if keras => "moving_variance",
            Tensor::BnVar => "running_var",
        }
    }
}

/// The key of `tensor` of layer `name` under `naming` (Torchvision or Keras).
pub(crate) fn key(name: LayerName, tensor: Tensor, naming: Naming) -> String {
    let suffix = match (naming, tensor) {
        (Naming::Keras, Tensor::BnGamma) => "gamma",
        (Naming::Keras, Tensor::BnBeta) => "beta",
        _ => tensor.suffix(naming),
    };
    match naming {
        Naming::Keras => format!("{}/{suffix}", keras_layer(name)),
        _ => format!("{}.{suffix}", torchvision_layer(name)),
    }
}

fn torchvision_layer(name: LayerName) -> String {
    torchvision_path(name.site, name.part)
}

/// torchvision's module path of `part` at `site` (`features.denseblock1.denselayer2.norm1`);
/// also names the ONNX export's nodes.
pub(crate) fn torchvision_path(site: Site, part: &str) -> String {
    match site {
        Site::Stem => format!("features.{part}"),
        Site::Dense { block, layer } => {
            format!("features.denseblock{block}.denselayer{layer}.{part}")
        }
        Site::Transition { index } => format!("features.transition{index}.{part}"),
        Site::Head if part == "classifier" => part.to_string(),
        Site::Head => format!("features.{part}"),
    }
}

/// Keras's layer names: stage `s` is block `s - 1` (conv1 is the stem).
fn keras_layer(name: LayerName) -> String {
    match (name.site, name.part) {
        (Site::Stem, "norm0") => "conv1_bn".to_string(),
        (Site::Stem, _) => "conv1_conv".to_string(),
        (Site::Dense { block, layer }, part) => {
            let op = match part {
                "norm1" => "0_bn",
                "conv1" => "1_conv",
                "norm2" => "1_bn",
                _ => "2_conv",
            };
            format!("conv{}_block{layer}_{op}", block + 1)
        }
        (Site::Transition { index }, "norm") => format!("pool{}_bn", index + 1),
        (Site::Transition { index }, _) => format!("pool{}_conv", index + 1),
        (Site::Head, "classifier") => "predictions".to_string(),
        (Site::Head, _) => "bn".to_string(),
    }
}

/// Bookkeeping entries that carry no weights.
pub(crate) fn is_bookkeeping(key: &str) -> bool {
    key.ends_with("num_batches_tracked") || key.starts_with(CHECKPOINT_PREFIX)
}

/// The key prefix of a training checkpoint's optimiser state: not weights, so a
/// checkpoint loads as a weights file.
pub(crate) const CHECKPOINT_PREFIX: &str = "optimizer/";

/// Guesses the scheme from the keys (bookkeeping keys, such as a checkpoint's
/// `optimizer/…`, say nothing about it).
pub(crate) fn detect<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Naming> {
    for key in keys.into_iter().filter(|k| !is_bookkeeping(k)) {
        if key.starts_with("features.") || key.starts_with("classifier.") {
            return Some(Naming::Torchvision);
        }
        if key.contains('/') {
            return Some(Naming::Keras);
        }
    }
    None
}

/// Rewrites older spellings of a key to the one [`key`] produces.
pub(crate) fn normalise(key: &str, naming: Naming) -> String {
    match naming {
        Naming::Keras => {
            let key = key.strip_suffix(":0").unwrap_or(key);
            // Keras 2 named the stem layers `conv1/conv`, `conv1/bn` and the classifier `fc1000`.
            let key =
                key.replacen("conv1/conv/", "conv1_conv/", 1)
                    .replacen("conv1/bn/", "conv1_bn/", 1);
            match key.strip_prefix("fc1000/") {
                Some(rest) => format!("predictions/{rest}"),
                None => key,
            }
        }
        _ => {
            // Old torchvision checkpoints: `denselayer1.norm.1.weight` → `denselayer1.norm1.weight`
            // (torchvision remaps these with a regex in `_load_state_dict`).
            if !key.contains(".denselayer") {
                return key.to_string();
            }
            let mut out = key.to_string();
            for part in ["norm", "relu", "conv"] {
                for i in ["1", "2"] {
                    out = out.replace(&format!(".{part}.{i}."), &format!(".{part}{i}."));
                }
            }
            out
        }
    }
}

/// Layers per dense block implied by a file's keys (block and layer indices in either scheme).
pub(crate) fn blocks_in<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
    let mut blocks: Vec<usize> = Vec::new();
    for key in keys {
        let found = number_after(key, "denseblock")
            .zip(number_after(key, "denselayer"))
            .or_else(|| {
                // Keras: conv{stage}_block{layer}_…, stage 2 is block 1.
                let stage = number_after(key, "conv")?;
                Some((stage.checked_sub(1)?, number_after(key, "_block")?))
            });
        if let Some((block, layer)) = found {
            if (1..=64).contains(&block) && layer <= 1 << 16 {
                if blocks.len() < block {
                    blocks.resize(block, 0);
                }
                blocks[block - 1] = blocks[block - 1].max(layer);
            }
        }
    }
    blocks
}

fn number_after(key: &str, marker: &str) -> Option<usize> {
    let rest = &key[key.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_torchvision_and_keras_names() {
        // Names from torchvision's densenet121().state_dict() and from
        // shared/reference/keras3-densenet121-weights.tsv (Keras 3.15).
        let cases = [
            (
                LayerName::new(Site::Stem, "conv0"),
                Tensor::ConvWeight,
                "features.conv0.weight",
                "conv1_conv/kernel",
            ),
            (
                LayerName::new(Site::Stem, "norm0"),
                Tensor::BnVar,
                "features.norm0.running_var",
                "conv1_bn/moving_variance",
            ),
            (
                LayerName::new(Site::Dense { block: 1, layer: 1 }, "norm1"),
                Tensor::BnGamma,
                "features.denseblock1.denselayer1.norm1.weight",
                "conv2_block1_0_bn/gamma",
            ),
            (
                LayerName::new(
                    Site::Dense {
                        block: 4,
                        layer: 16,
                    },
                    "conv2",
                ),
                Tensor::ConvWeight,
                "features.denseblock4.denselayer16.conv2.weight",
                "conv5_block16_2_conv/kernel",
            ),
            (
                LayerName::new(Site::Dense { block: 1, layer: 2 }, "norm2"),
                Tensor::BnMean,
                "features.denseblock1.denselayer2.norm2.running_mean",
                "conv2_block2_1_bn/moving_mean",
            ),
            (
                LayerName::new(Site::Transition { index: 1 }, "conv"),
                Tensor::ConvWeight,
                "features.transition1.conv.weight",
                "pool2_conv/kernel",
            ),
            (
                LayerName::new(Site::Transition { index: 3 }, "norm"),
                Tensor::BnBeta,
                "features.transition3.norm.bias",
                "pool4_bn/beta",
            ),
            (
                LayerName::new(Site::Head, "norm5"),
                Tensor::BnBeta,
                "features.norm5.bias",
                "bn/beta",
            ),
            (
                LayerName::new(Site::Head, "classifier"),
                Tensor::LinearWeight,
                "classifier.weight",
                "predictions/kernel",
            ),
            (
                LayerName::new(Site::Head, "classifier"),
                Tensor::LinearBias,
                "classifier.bias",
                "predictions/bias",
            ),
        ];
        for (name, tensor, torchvision, keras) in cases {
            assert_eq!(key(name, tensor, Naming::Torchvision), torchvision);
            assert_eq!(key(name, tensor, Naming::Keras), keras);
        }
    }

    #[test]
    fn old_spellings_are_normalised() {
        assert_eq!(
            normalise(
                "features.denseblock2.denselayer3.norm.1.running_var",
                Naming::Torchvision
            ),
            "features.denseblock2.denselayer3.norm1.running_var"
        );
        assert_eq!(
            normalise(
                "features.denseblock2.denselayer3.conv.2.weight",
                Naming::Torchvision
            ),
            "features.denseblock2.denselayer3.conv2.weight"
        );
        assert_eq!(
            normalise("features.norm0.weight", Naming::Torchvision),
            "features.norm0.weight"
        );
        assert_eq!(
            normalise("conv1/conv/kernel:0", Naming::Keras),
            "conv1_conv/kernel"
        );
        assert_eq!(
            normalise("conv1/bn/gamma:0", Naming::Keras),
            "conv1_bn/gamma"
        );
        assert_eq!(
            normalise("conv2_block1_0_bn/gamma:0", Naming::Keras),
            "conv2_block1_0_bn/gamma"
        );
        assert_eq!(
            normalise("fc1000/kernel:0", Naming::Keras),
            "predictions/kernel"
        );
    }

    #[test]
    fn detects_schemes_and_blocks() {
        assert_eq!(detect(["features.conv0.weight"]), Some(Naming::Torchvision));
        assert_eq!(detect(["conv1_conv/kernel"]), Some(Naming::Keras));
        assert_eq!(detect(["weight", "bias"]), None);
        let keys = [
            "features.denseblock1.denselayer6.conv2.weight",
            "features.denseblock2.denselayer12.norm1.weight",
            "features.denseblock1.denselayer2.conv2.weight",
        ];
        assert_eq!(blocks_in(keys), vec![6, 12]);
        assert_eq!(
            blocks_in([
                "conv2_block3_1_conv/kernel",
                "conv3_block1_0_bn/beta",
                "conv1_conv/kernel"
            ]),
            vec![3, 1]
        );
    }
}
