//! Every key a spec may use, described once: what it means, an example, its default.
//!
//! The checks take the known keys, "did you mean" suggestions, examples in messages and
//! the fixed defaults from [`KEYS`]; `docs/SPEC.md` is [`markdown`]'s output (a test
//! keeps them equal). Defaults that depend on other keys are computed by the functions
//! below the table, whose docs the table's text paraphrases.

use crate::arch::Stem;
use crate::ast::Value;
use crate::prelude::*;

/// One spec key.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The key as written, e.g. `growth`.
    pub name: &'static str,
    /// What it sets, for docs and for messages.
    pub meaning: &'static str,
    /// A whole entry, e.g. `growth: 32`; messages quote it.
    pub example: &'static str,
    /// What a spec without the key gets.
    pub default: KeyDefault,
    /// Only YAML files have it (the inline syntax writes the name before `<`).
    pub yaml_only: bool,
}

/// What a spec without a key gets.
#[derive(Clone, Copy, Debug)]
pub enum KeyDefault {
    /// Nothing: the spec must give it. The text says when, if not always.
    Required(&'static str),
    /// A fixed value, checked as if written.
    Value(Literal),
    /// A value that depends on other keys, described for docs.
    Derived(&'static str),
}

/// A default value as the table holds it.
#[derive(Clone, Copy, Debug)]
pub enum Literal {
    /// An integer.
    Int(i128),
    /// A number.
    Float(f64),
    /// A word such as `imagenet`.
    Word(&'static str),
}

impl Literal {
    /// The value as if it had been written in a spec.
    pub fn to_value(self) -> Value {
        match self {
            Literal::Int(i) => Value::Int(i),
            Literal::Float(x) => Value::Float(x),
            Literal::Word(w) => Value::Ident(w.to_string()),
        }
    }
}

/// The bottleneck width factor of `bottleneck` left out or `true`, torchvision's `bn_size`.
pub const DEFAULT_BOTTLENECK: usize = 4;

/// The table, in the order the docs list it.
pub const KEYS: &[Key] = &[
    Key {
        name: "name",
        meaning: "the model's type name; not a keyword or primitive type (YAML only: inline specs write it before `<`)",
        example: "name: DenseNet121",
        default: KeyDefault::Derived("the file name in UpperCamelCase"),
        yaml_only: true,
    },
    Key {
        name: "growth",
        meaning: "k, channels each dense layer adds",
        example: "growth: 32",
        default: KeyDefault::Required("required"),
        yaml_only: false,
    },
    Key {
        name: "blocks",
        meaning: "layers per dense block",
        example: "blocks: [6, 12, 24, 16]",
        default: KeyDefault::Required("required, unless `depth` is given"),
        yaml_only: false,
    },
    Key {
        name: "depth",
        meaning: "the paper's L for a 3-block net: (L-4)/6 layers per block, (L-4)/3 without a bottleneck",
        example: "depth: 100",
        default: KeyDefault::Required("instead of `blocks`"),
        yaml_only: false,
    },
    Key {
        name: "theta",
        meaning: "compression in (0, 1]: a transition keeps floor(θ·C) channels",
        example: "theta: 0.5",
        default: KeyDefault::Value(Literal::Float(1.0)),
        yaml_only: false,
    },
    Key {
        name: "bottleneck",
        meaning: "1x1 bottleneck width factor (bn_size): the 1x1 conv has bottleneck·k channels; `false` for none",
        example: "bottleneck: 4",
        default: KeyDefault::Value(Literal::Int(DEFAULT_BOTTLENECK as i128)),
        yaml_only: false,
    },
    Key {
        name: "stem",
        meaning: "`imagenet` (7x7/2 conv, BN, ReLU, 3x3/2 max pool) or `cifar` (one 3x3 conv)",
        example: "stem: cifar",
        default: KeyDefault::Value(Literal::Word("imagenet")),
        yaml_only: false,
    },
    Key {
        name: "init_features",
        meaning: "channels out of the stem",
        example: "init_features: 64",
        default: KeyDefault::Derived(
            "2k; 16 for a `cifar` stem unless DenseNet-BC (a bottleneck and theta < 1)",
        ),
        yaml_only: false,
    },
    Key {
        name: "input",
        meaning: "per-image input `[C, H, W]`",
        example: "input: [3, 224, 224]",
        default: KeyDefault::Derived("`[3, 224, 224]`; `[3, 32, 32]` for `stem: cifar`"),
        yaml_only: false,
    },
    Key {
        name: "classes",
        meaning: "outputs of the classifier head",
        example: "classes: 1000",
        default: KeyDefault::Derived("1000; 10 for `stem: cifar`"),
        yaml_only: false,
    },
    Key {
        name: "head",
        meaning: "`classifier` (logits), `avg` or `max` (pooled features), `none` (the final feature map)",
        example: "head: avg",
        default: KeyDefault::Value(Literal::Word("classifier")),
        yaml_only: false,
    },
    Key {
        name: "dropout",
        meaning: "dropout rate in [0, 1) after each conv but the first, in training",
        example: "dropout: 0.2",
        default: KeyDefault::Value(Literal::Float(0.0)),
        yaml_only: false,
    },
    Key {
        name: "eps",
        meaning: "BatchNorm epsilon (Keras uses 1.001e-5)",
        example: "eps: 1e-5",
        default: KeyDefault::Value(Literal::Float(1e-5)),
        yaml_only: false,
    },
];

/// The entry of `name`, if it is a key.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The keys the checks accept: all but the YAML-only ones, which the YAML reader takes.
pub fn checked_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().filter(|k| !k.yaml_only).map(|k| k.name)
}

/// An example entry for `key`, for messages.
pub fn example(key: &str) -> &'static str {
    self::key(key).map_or("key: value", |k| k.example)
}

/// The fixed default of `key`, as if written; `None` for required and derived keys.
pub fn default_value(key: &str) -> Option<Value> {
    match self::key(key)?.default {
        KeyDefault::Value(literal) => Some(literal.to_value()),
        KeyDefault::Required(_) | KeyDefault::Derived(_) => None,
    }
}

/// `init_features` when not given: the paper's 2k, but 16 for CIFAR nets that are not
/// DenseNet-BC (Table 2's parameter counts need it).
pub fn default_init_features(
    stem: Stem,
    growth: usize,
    bottleneck: Option<usize>,
    theta: f64,
) -> usize {
    let bc = bottleneck.is_some() && theta < 1.0;
    if stem == Stem::Cifar && !bc {
        16
    } else {
        2 * growth
    }
}

/// `input` when not given: ImageNet's 224x224 RGB, or CIFAR's 32x32.
pub fn default_input(stem: Stem) -> [usize; 3] {
    match stem {
        Stem::ImageNet => [3, 224, 224],
        Stem::Cifar => [3, 32, 32],
    }
}

/// `classes` when not given: ImageNet-1k's 1000, or CIFAR-10's 10.
pub fn default_classes(stem: Stem) -> usize {
    match stem {
        Stem::ImageNet => 1000,
        Stem::Cifar => 10,
    }
}

/// `docs/SPEC.md`: the table as markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from densenet-spec/src/keys.rs; do not edit. Regenerate with\n     \
         BLESS=1 cargo test -p densenet-spec --test spec_docs -->\n\
         # Spec keys\n\n\
         A spec is a list of `key: value` entries: inline, \
         `densenet!(pub Net<growth: 12, depth: 40>)`; in a YAML file, one entry a line.\n\
         Keys left out take the default below.\n\n\
         | key | meaning | example | default |\n|---|---|---|---|\n",
    );
    for k in KEYS {
        let default = match k.default {
            KeyDefault::Required(text) | KeyDefault::Derived(text) => text.to_string(),
            KeyDefault::Value(Literal::Int(i)) => format!("`{i}`"),
            KeyDefault::Value(Literal::Float(x)) => format!("`{x:?}`"),
            KeyDefault::Value(Literal::Word(w)) => format!("`{w}`"),
        };
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {default} |\n",
            k.name, k.meaning, k.example
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_answers_lookups() {
        for k in KEYS {
            assert!(k.example.starts_with(&format!("{}: ", k.name)), "{k:?}");
        }
        assert_eq!(default_value("theta"), Some(Value::Float(1.0)));
        assert_eq!(default_value("stem"), Some(Value::Ident("imagenet".into())));
        assert_eq!(default_value("growth"), None);
        assert_eq!(default_value("classes"), None);
        assert_eq!(example("blocks"), "blocks: [6, 12, 24, 16]");
        assert!(!checked_keys().any(|k| k == "name"));
    }
}
