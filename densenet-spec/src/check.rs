//! The checks: one `check_*` per rule, every error collected, then reported together.
//!
//! Input is a [`RawSpec`] from either front end; output is an [`Architecture`] with
//! every default resolved, or every mistake found, each at the offending token.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::arch::{Architecture, Head, Stem};
use crate::ast::{Entry, RawSpec, Value};
use crate::error::{Sp, Span, SpecError};
use crate::plan::Plan;

/// Every key a spec may use, with what it means (for suggestions and help).
pub const KEYS: &[(&str, &str)] = &[
    (
        "growth",
        "channels each dense layer adds, e.g. `growth: 32`",
    ),
    (
        "blocks",
        "layers per dense block, e.g. `blocks: [6, 12, 24, 16]`",
    ),
    (
        "depth",
        "the paper's L for a 3-block CIFAR net, e.g. `depth: 100`",
    ),
    ("theta", "compression in (0, 1], e.g. `theta: 0.5`"),
    (
        "bottleneck",
        "1x1 bottleneck width factor, e.g. `bottleneck: 4`, or `false`",
    ),
    ("stem", "`imagenet` or `cifar`"),
    (
        "init_features",
        "channels out of the stem, e.g. `init_features: 64`",
    ),
    (
        "input",
        "per-image input `[C, H, W]`, e.g. `input: [3, 224, 224]`",
    ),
    ("classes", "output classes, e.g. `classes: 1000`"),
    ("head", "`classifier`, `avg`, `max` or `none`"),
    ("dropout", "dropout rate in [0, 1), e.g. `dropout: 0.2`"),
    ("eps", "BatchNorm epsilon, e.g. `eps: 1e-5`"),
];

// Generous limits that keep every count far from overflow.
const MAX_WIDTH: i128 = 1 << 16;
const MAX_LAYERS: i128 = 4096;
const MAX_BLOCKS: usize = 16;
const MAX_DEPTH: i128 = 6 * MAX_LAYERS + 4;
const MAX_CLASSES: i128 = 10_000_000;

/// Checks `spec` and resolves its defaults.
pub fn check(spec: &RawSpec) -> Result<Architecture, Vec<SpecError>> {
    let mut cx = Checker::default();
    let keys = cx.check_keys(&spec.entries);
    let get = |k: &str| keys.get(k).map(|e| &e.value);

    check_name(&mut cx, &spec.name);
    let growth = match get("growth") {
        Some(v) => cx.int(v, "growth", 1, MAX_WIDTH),
        None => {
            cx.error(
                spec.name.span,
                "missing key `growth` (channels each dense layer adds); add e.g. `growth: 32`",
            );
            None
        }
    };
    let bottleneck = get("bottleneck").map_or(Some(Some(4)), |v| cx.check_bottleneck(v));
    let theta = get("theta").map_or(Some(1.0), |v| cx.check_theta(v));
    let stem = get("stem").map_or(Some(Stem::ImageNet), |v| {
        cx.word(
            v,
            "stem",
            &[("imagenet", Stem::ImageNet), ("cifar", Stem::Cifar)],
        )
    });
    let head = get("head").map_or(Some(Head::Classifier), |v| {
        let heads = [
            ("classifier", Head::Classifier),
            ("avg", Head::Avg),
            ("max", Head::Max),
            ("none", Head::None),
        ];
        cx.word(v, "head", &heads)
    });
    let blocks = cx.check_blocks_or_depth(spec, get("blocks"), get("depth"), bottleneck);
    let init_features = get("init_features").map(|v| cx.int(v, "init_features", 1, MAX_WIDTH));
    let input = get("input").map(|v| cx.check_input(v));
    let classes = get("classes").map(|v| cx.int(v, "classes", 1, MAX_CLASSES));
    let dropout = get("dropout").map_or(Some(0.0), |v| cx.check_dropout(v));
    let eps = get("eps").map_or(Some(1e-5), |v| cx.check_eps(v));

    let (
        Some(growth),
        Some(bottleneck),
        Some(theta),
        Some(stem),
        Some(head),
        Some(blocks),
        Some(dropout),
        Some(eps),
    ) = (growth, bottleneck, theta, stem, head, blocks, dropout, eps)
    else {
        return Err(cx.errors);
    };
    let (Some(init_features), Some(input), Some(classes)) = (
        init_features.unwrap_or(Some(default_init_features(stem, growth, bottleneck, theta))),
        input.unwrap_or(Some(match stem {
            Stem::ImageNet => [3, 224, 224],
            Stem::Cifar => [3, 32, 32],
        })),
        classes.unwrap_or(Some(match stem {
            Stem::ImageNet => 1000,
            Stem::Cifar => 10,
        })),
    ) else {
        return Err(cx.errors);
    };
    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    let arch = Architecture {
        name: Cow::Owned(spec.name.value.clone()),
        input,
        stem,
        init_features,
        growth,
        blocks: Cow::Owned(blocks),
        bottleneck,
        theta,
        classes,
        head,
        dropout: dropout as f32,
        eps: eps as f32,
    };
    let size_span = get("input")
        .or(get("blocks"))
        .or(get("depth"))
        .map_or(spec.name.span, |v| v.span);
    check_spatial_size(&mut cx, &arch, size_span);
    if cx.errors.is_empty() {
        Ok(arch)
    } else {
        Err(cx.errors)
    }
}

/// The paper's stem width: 2k, but 16 for CIFAR nets that are not DenseNet-BC
/// (Table 2's parameter counts need it).
fn default_init_features(
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

/// The model name becomes a Rust type name.
fn check_name(cx: &mut Checker, name: &Sp<String>) {
    let s = &name.value;
    let mut chars = s.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        cx.error(
            name.span,
            format!("model name {s:?} is not a Rust identifier; use letters, digits and `_`, e.g. `DenseNet121`"),
        );
    }
}

/// An input that pools away to nothing before the head cannot run.
fn check_spatial_size(cx: &mut Checker, arch: &Architecture, span: Span) {
    let plan = Plan::new(arch);
    let [_, h, w] = arch.input;
    let mut stages = vec![("the stem".to_string(), plan.stem.height, plan.stem.width)];
    for (i, t) in plan.transitions.iter().enumerate() {
        stages.push((format!("transition {}", i + 1), t.height, t.width));
    }
    if let Some((stage, sh, sw)) = stages.into_iter().find(|(_, sh, sw)| *sh == 0 || *sw == 0) {
        cx.error(
            span,
            format!(
                "input {h}x{w} shrinks to {sh}x{sw} after {stage}, before the head; \
                 use a larger `input` or fewer `blocks`"
            ),
        );
    } else if plan.params == u64::MAX || plan.macs == u64::MAX {
        cx.error(
            span,
            "model is too large to count its parameters in 64 bits; use smaller sizes",
        );
    }
}

#[derive(Default)]
struct Checker {
    errors: Vec<SpecError>,
}

impl Checker {
    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.errors.push(SpecError::new(span, message));
    }

    /// Unknown and duplicate keys; returns the first entry of each known key.
    fn check_keys<'a>(&mut self, entries: &'a [Entry]) -> HashMap<&'a str, &'a Entry> {
        let mut seen: HashMap<&str, &Entry> = HashMap::new();
        for entry in entries {
            let key = entry.key.value.as_str();
            if !KEYS.iter().any(|(k, _)| *k == key) {
                let hint = match closest(key, KEYS.iter().map(|(k, _)| *k)) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => {
                        let all: Vec<_> = KEYS.iter().map(|(k, _)| *k).collect();
                        format!("expected one of: {}", all.join(", "))
                    }
                };
                self.error(entry.key.span, format!("unknown key `{key}`; {hint}"));
            } else if seen.contains_key(key) {
                self.error(
                    entry.key.span,
                    format!("duplicate key `{key}`; give each key once"),
                );
            } else {
                seen.insert(key, entry);
            }
        }
        seen
    }

    fn int(&mut self, v: &Sp<Value>, key: &str, min: i128, max: i128) -> Option<usize> {
        match v.value {
            Value::Int(i) if i < min => {
                self.error(v.span, format!("`{key}` must be at least {min}; got {i}"));
                None
            }
            Value::Int(i) if i > max => {
                self.error(v.span, format!("`{key}` must be at most {max}; got {i}"));
                None
            }
            Value::Int(i) => Some(i as usize),
            ref other => {
                self.error(
                    v.span,
                    format!(
                        "`{key}` must be an integer, like `{}`; got {}",
                        example(key),
                        other.describe()
                    ),
                );
                None
            }
        }
    }

    fn float(&mut self, v: &Sp<Value>, key: &str) -> Option<f64> {
        match v.value {
            Value::Float(x) => Some(x),
            Value::Int(i) => Some(i as f64),
            ref other => {
                self.error(
                    v.span,
                    format!(
                        "`{key}` must be a number, like `{}`; got {}",
                        example(key),
                        other.describe()
                    ),
                );
                None
            }
        }
    }

    fn word<T: Copy>(&mut self, v: &Sp<Value>, key: &str, options: &[(&str, T)]) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let Some(word) = v.value.as_word() else {
            self.error(
                v.span,
                format!(
                    "`{key}` must be one of {}; got {}",
                    names.join(", "),
                    v.value.describe()
                ),
            );
            return None;
        };
        if let Some((_, t)) = options.iter().find(|(n, _)| *n == word) {
            return Some(*t);
        }
        let hint = match closest(word, names.iter().copied()) {
            Some(n) => format!("; did you mean `{n}`?"),
            None => String::new(),
        };
        self.error(
            v.span,
            format!(
                "unknown {key} `{word}`: expected one of {}{hint}",
                names.join(", ")
            ),
        );
        None
    }

    fn check_theta(&mut self, v: &Sp<Value>) -> Option<f64> {
        let theta = self.float(v, "theta")?;
        if theta > 0.0 && theta <= 1.0 {
            Some(theta)
        } else {
            self.error(
                v.span,
                format!("`theta` must be in (0, 1] (1 keeps every channel); got {theta}"),
            );
            None
        }
    }

    fn check_dropout(&mut self, v: &Sp<Value>) -> Option<f64> {
        let rate = self.float(v, "dropout")?;
        if (0.0..1.0).contains(&rate) {
            Some(rate)
        } else {
            self.error(
                v.span,
                format!("`dropout` must be in [0, 1) (the paper uses 0.2); got {rate}"),
            );
            None
        }
    }

    fn check_eps(&mut self, v: &Sp<Value>) -> Option<f64> {
        let eps = self.float(v, "eps")?;
        if eps > 0.0 && eps < 1.0 {
            Some(eps)
        } else {
            self.error(
                v.span,
                format!("`eps` must be a small positive number like 1e-5; got {eps}"),
            );
            None
        }
    }

    fn check_bottleneck(&mut self, v: &Sp<Value>) -> Option<Option<usize>> {
        match v.value {
            Value::Bool(false) => Some(None),
            Value::Bool(true) => Some(Some(4)),
            Value::Int(0) => {
                self.error(
                    v.span,
                    "`bottleneck` must be at least 1; write `bottleneck: false` to have none",
                );
                None
            }
            _ => self.int(v, "bottleneck", 1, 64).map(Some),
        }
    }

    fn list<'a>(&mut self, v: &'a Sp<Value>, key: &str) -> Option<&'a [Sp<Value>]> {
        match &v.value {
            Value::List(items) => Some(items),
            other => {
                self.error(
                    v.span,
                    format!(
                        "`{key}` must be a list, like `{}`; got {}",
                        example(key),
                        other.describe()
                    ),
                );
                None
            }
        }
    }

    fn check_input(&mut self, v: &Sp<Value>) -> Option<[usize; 3]> {
        let items = self.list(v, "input")?;
        if items.len() != 3 {
            self.error(
                v.span,
                format!(
                    "`input` must be [C, H, W], three integers; got {} values",
                    items.len()
                ),
            );
            return None;
        }
        let dims: Vec<_> = items
            .iter()
            .map(|i| self.int(i, "input", 1, MAX_WIDTH))
            .collect();
        Some([dims[0]?, dims[1]?, dims[2]?])
    }

    /// Exactly one of `blocks` and `depth`; a depth must split into three whole blocks.
    fn check_blocks_or_depth(
        &mut self,
        spec: &RawSpec,
        blocks: Option<&Sp<Value>>,
        depth: Option<&Sp<Value>>,
        bottleneck: Option<Option<usize>>,
    ) -> Option<Vec<usize>> {
        match (blocks, depth) {
            (Some(_), Some(depth)) => {
                self.error(depth.span, "give either `blocks` or `depth`, not both");
                None
            }
            (None, None) => {
                self.error(
                    spec.name.span,
                    "missing key `blocks` (layers per dense block, e.g. `blocks: [6, 12, 24, 16]`) \
                     or `depth` (the paper's L, e.g. `depth: 100`)",
                );
                None
            }
            (Some(blocks), None) => {
                let items = self.list(blocks, "blocks")?;
                if items.is_empty() {
                    self.error(
                        blocks.span,
                        "`blocks` must list at least one dense block, e.g. `[6, 12, 24, 16]`",
                    );
                    return None;
                }
                if items.len() > MAX_BLOCKS {
                    self.error(
                        blocks.span,
                        format!(
                            "`blocks` lists {} blocks; at most {MAX_BLOCKS} are supported",
                            items.len()
                        ),
                    );
                    return None;
                }
                let layers: Vec<_> = items
                    .iter()
                    .map(|item| match item.value {
                        Value::Int(0) => {
                            self.error(item.span, "a dense block needs at least one layer; got 0 (remove the block instead)");
                            None
                        }
                        _ => self.int(item, "blocks", 1, MAX_LAYERS),
                    })
                    .collect();
                layers.into_iter().collect()
            }
            (None, Some(depth)) => {
                let l = self.int(depth, "depth", 1, MAX_DEPTH)?;
                // Unknown bottleneck (its own error is already reported): assume the default.
                let per_layer = if bottleneck.unwrap_or(Some(4)).is_some() {
                    6
                } else {
                    3
                };
                let kind = if per_layer == 6 {
                    "with a bottleneck"
                } else {
                    "without a bottleneck"
                };
                if l <= 4 || (l - 4) % per_layer != 0 {
                    let lo = 4 + per_layer;
                    self.error(
                        depth.span,
                        format!(
                            "depth {l} does not give three whole blocks: {kind}, depth - 4 must be a \
                             positive multiple of {per_layer} (e.g. {lo}, {})",
                            4 + 16 * per_layer
                        ),
                    );
                    return None;
                }
                Some(vec![(l - 4) / per_layer; 3])
            }
        }
    }
}

fn example(key: &str) -> &'static str {
    match key {
        "growth" => "growth: 32",
        "init_features" => "init_features: 64",
        "classes" => "classes: 1000",
        "depth" => "depth: 100",
        "blocks" => "blocks: [6, 12, 24, 16]",
        "input" => "input: [3, 224, 224]",
        "theta" => "theta: 0.5",
        "dropout" => "dropout: 0.2",
        "eps" => "eps: 1e-5",
        "bottleneck" => "bottleneck: 4",
        _ => "…",
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_nearest_key() {
        assert_eq!(
            closest("grwoth", KEYS.iter().map(|(k, _)| *k)),
            Some("growth")
        );
        assert_eq!(
            closest("block", KEYS.iter().map(|(k, _)| *k)),
            Some("blocks")
        );
        assert_eq!(closest("zzzzzz", KEYS.iter().map(|(k, _)| *k)), None);
    }
}
