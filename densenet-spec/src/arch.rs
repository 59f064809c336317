//! The checked, fully resolved description of a model: every default filled in.
//!
//! Generated code embeds it as a `const`, so the run-time summary and the macro's
//! compile-time counts come from the same planner (`plan.rs`).

use crate::prelude::*;
use alloc::borrow::Cow;

/// The network's first layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 7x7/2 conv (padding 3), BN, ReLU, 3x3/2 max pool (padding 1), as torchvision.
    ImageNet,
    /// One 3x3 conv, stride 1, padding 1, as the paper's CIFAR nets.
    Cifar,
}

/// What follows the last dense block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// BN, ReLU, global average pool, linear: logits.
    Classifier,
    /// BN, ReLU, global average pool: pooled features.
    Avg,
    /// BN, ReLU, global max pool: pooled features.
    Max,
    /// BN, ReLU: the final feature map.
    None,
}

/// A checked DenseNet description with every default resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    /// The model's type name.
    pub name: Cow<'static, str>,
    /// Per-image input shape `[C, H, W]`.
    pub input: [usize; 3],
    /// Stem kind.
    pub stem: Stem,
    /// Channels out of the stem.
    pub init_features: usize,
    /// Growth rate k: channels each dense layer adds.
    pub growth: usize,
    /// Layers per dense block.
    pub blocks: Cow<'static, [usize]>,
    /// Bottleneck width factor (`bn_size`): the 1x1 conv has `bn_size * k` channels;
    /// `None` for plain BN-ReLU-conv3x3 layers.
    pub bottleneck: Option<usize>,
    /// Compression θ in (0, 1]: a transition keeps `floor(θ·C)` channels.
    pub theta: f64,
    /// Output classes of the classifier head.
    pub classes: usize,
    /// Head kind.
    pub head: Head,
    /// Dropout rate after each conv but the first (training only).
    pub dropout: f32,
    /// BatchNorm epsilon.
    pub eps: f32,
}

impl Architecture {
    /// Channels a transition keeps out of `channels`: `floor(θ·C)`.
    pub fn compress(&self, channels: usize) -> usize {
        // `as` truncates toward zero, which is `floor` for θ·C ≥ 0 (and needs no libm).
        (self.theta * channels as f64) as usize
    }
}

impl Architecture {
    /// Checks an `Architecture` built in code (its fields are public) by the same rules
    /// as a written spec: it is written back as spec entries and checked, so the rules
    /// live in one place (`check.rs`). A checked architecture passes unchanged.
    ///
    /// # Errors
    /// Every rule it breaks, each message naming the key; the spans are meaningless (the
    /// `n`-th key is reported at line `n`).
    pub fn validate(&self) -> Result<(), Vec<crate::SpecError>> {
        use crate::ast::{Entry, RawSpec, Value};
        use crate::error::{Sp, Span};

        let at = |line| Span::Yaml { line, column: 1 };
        let int = |n: usize| Value::Int(n as i128);
        let word = |w: &str| Value::Ident(w.to_string());
        let list = |items: &[usize]| {
            Value::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| Sp::new(int(n), at(i + 1)))
                    .collect(),
            )
        };
        let values = [
            ("input", list(&self.input)),
            (
                "stem",
                word(match self.stem {
                    Stem::ImageNet => "imagenet",
                    Stem::Cifar => "cifar",
                }),
            ),
            ("init_features", int(self.init_features)),
            ("growth", int(self.growth)),
            ("blocks", list(&self.blocks)),
            (
                "bottleneck",
                self.bottleneck.map_or(Value::Bool(false), int),
            ),
            ("theta", Value::Float(self.theta)),
            ("classes", int(self.classes)),
            (
                "head",
                word(match self.head {
                    Head::Classifier => "classifier",
                    Head::Avg => "avg",
                    Head::Max => "max",
                    Head::None => "none",
                }),
            ),
            ("dropout", Value::Float(f64::from(self.dropout))),
            ("eps", Value::Float(f64::from(self.eps))),
        ];
        let entries = values
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| Entry {
                key: Sp::new(key.to_string(), at(i + 2)),
                value: Sp::new(value, at(i + 2)),
            })
            .collect();
        let spec = RawSpec {
            name: Sp::new(self.name.to_string(), at(1)),
            #[cfg(feature = "codegen")]
            attrs: Vec::new(),
            #[cfg(feature = "codegen")]
            vis: syn::Visibility::Inherited,
            entries,
            span: at(1),
        };
        let checked = crate::check(&spec)?;
        // Every field was written explicitly, so nothing was defaulted: a difference
        // would be a rule that rewrites values, which none does.
        debug_assert_eq!(&checked, self);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn densenet121() -> Architecture {
        Architecture {
            name: Cow::Borrowed("DenseNet121"),
            input: [3, 224, 224],
            stem: Stem::ImageNet,
            init_features: 64,
            growth: 32,
            blocks: Cow::Borrowed(&[6, 12, 24, 16]),
            bottleneck: Some(4),
            theta: 0.5,
            classes: 1000,
            head: Head::Classifier,
            dropout: 0.0,
            eps: 1e-5,
        }
    }

    #[test]
    fn architectures_built_in_code_follow_the_spec_rules() {
        assert!(densenet121().validate().is_ok());
        let bad = Architecture {
            name: Cow::Borrowed("f32"),
            growth: 0,
            blocks: Cow::Borrowed(&[]),
            theta: 1.5,
            ..densenet121()
        };
        let messages: Vec<String> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.message)
            .collect();
        for key in ["f32", "growth", "blocks", "theta"] {
            assert!(
                messages.iter().any(|m| m.contains(key)),
                "{key}: {messages:?}"
            );
        }
    }
}
