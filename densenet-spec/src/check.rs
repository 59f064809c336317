//! The checks: one `check_*` per rule, every error collected, then reported together.
//!
//! Input is a [`RawSpec`] from either front end; output is an [`Architecture`] with
//! every default resolved, or every mistake found, each at the offending token.

use alloc::borrow::Cow;
use alloc::collections::BTreeMap;

use crate::arch::{Architecture, Head, Stem};
use crate::ast::{Entry, RawSpec, Value};
use crate::error::{Sp, Span, SpecError};
use crate::keys::{
    checked_keys, default_classes, default_init_features, default_input, default_value, example,
    DEFAULT_BOTTLENECK,
};
use crate::plan::Plan;
use crate::prelude::*;

// Generous limits that keep every count far from overflow.
const MAX_WIDTH: i128 = 1 << 16;
const MAX_LAYERS: i128 = 4096;
const MAX_BLOCKS: usize = 16;
const MAX_DEPTH: i128 = 6 * MAX_LAYERS + 4;
const MAX_CLASSES: i128 = 10_000_000;
/// Weights a model may hold: 2^32 floats, 16 GiB. DenseNet-264 has 33 million; past this
/// a model would not fit the memory of the machines it runs on, and building it would
/// abort instead of failing.
const MAX_WEIGHTS: u64 = 1 << 32;
/// Activation floats one image may need (the forward pass's arena at batch 1): 2^32,
/// 16 GiB. DenseNet-121 at 224x224 needs about 4 million.
const MAX_ACTIVATIONS: u64 = 1 << 32;

/// Checks `spec` and resolves its defaults.
///
/// Errors come in the order the user wrote the offending keys, errors about missing
/// keys first (they point at the model's name) and errors about the whole shape last.
pub fn check(spec: &RawSpec) -> Result<Architecture, Vec<SpecError>> {
    let mut cx = Checker::default();
    let keys = cx.check_keys(&spec.entries);

    if let Err(e) = check_name(&spec.name) {
        cx.error(e.span, e.message);
    }
    let growth = match cx.get(&keys, "growth") {
        Some(v) => cx.int(v, "growth", 1, MAX_WIDTH),
        None => {
            cx.missing(
                spec.name.span,
                &["growth"],
                "missing key `growth` (channels each dense layer adds); add e.g. `growth: 32`",
            );
            None
        }
    };
    let bottleneck = cx.given_or_default(&keys, "bottleneck", Checker::check_bottleneck);
    let theta = cx.given_or_default(&keys, "theta", Checker::check_theta);
    let stem = cx.given_or_default(&keys, "stem", |cx, v| cx.word(v, "stem", STEMS));
    let head = cx.given_or_default(&keys, "head", |cx, v| cx.word(v, "head", HEADS));
    let blocks = cx.check_blocks_or_depth(spec, &keys, bottleneck);
    let init_features = cx
        .get(&keys, "init_features")
        .map(|v| cx.int(v, "init_features", 1, MAX_WIDTH));
    let input = cx.get(&keys, "input").map(|v| cx.check_input(v));
    let classes = cx
        .get(&keys, "classes")
        .map(|v| cx.int(v, "classes", 1, MAX_CLASSES));
    let dropout = cx.given_or_default(&keys, "dropout", Checker::check_dropout);
    let eps = cx.given_or_default(&keys, "eps", Checker::check_eps);

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
        return Err(cx.finish());
    };
    let (Some(init_features), Some(input), Some(classes)) = (
        init_features.unwrap_or(Some(default_init_features(stem, growth, bottleneck, theta))),
        input.unwrap_or(Some(default_input(stem))),
        classes.unwrap_or(Some(default_classes(stem))),
    ) else {
        return Err(cx.finish());
    };
    if !cx.errors.is_empty() {
        return Err(cx.finish());
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
    let value_span = |k: &str| keys.get(k).map(|(_, e)| e.value.span);
    let size_span = value_span("input")
        .or(value_span("blocks"))
        .or(value_span("depth"))
        .unwrap_or(spec.name.span);
    let theta_span = value_span("theta").unwrap_or(spec.name.span);
    cx.order = usize::MAX;
    check_shapes(&mut cx, &arch, size_span, theta_span);
    if cx.errors.is_empty() {
        Ok(arch)
    } else {
        Err(cx.finish())
    }
}

/// A small valid architecture with the head `spec` asks for (when it names one), for the
/// stub the macros emit next to a failing spec's errors: the model's name and API then
/// still exist, so later uses of them add no errors of their own.
pub fn stub_architecture(spec: &RawSpec) -> Architecture {
    let head = spec
        .entries
        .iter()
        .find(|e| e.key.value == "head")
        .and_then(|e| e.value.value.as_word())
        .and_then(|w| HEADS.iter().find(|(n, _)| *n == w))
        .map_or(Head::Classifier, |&(_, h)| h);
    Architecture {
        name: Cow::Owned(spec.name.value.clone()),
        input: [1, 1, 1],
        stem: Stem::Cifar,
        init_features: 1,
        growth: 1,
        blocks: Cow::Borrowed(&[1]),
        bottleneck: None,
        theta: 1.0,
        classes: 1,
        head,
        dropout: 0.0,
        eps: 1e-5,
    }
}

const STEMS: &[(&str, Stem)] = &[("imagenet", Stem::ImageNet), ("cifar", Stem::Cifar)];

const HEADS: &[(&str, Head)] = &[
    ("classifier", Head::Classifier),
    ("avg", Head::Avg),
    ("max", Head::Max),
    ("none", Head::None),
];

/// The model name becomes a Rust type name, which generated code declares and uses: it
/// must be an identifier, not a keyword (`Self`, `crate`, …) and not a primitive type
/// (`f32`, `usize`, …), which the struct would shadow inside its own impl.
pub fn check_name(name: &Sp<String>) -> Result<(), SpecError> {
    let s = name.value.as_str();
    let mut chars = s.chars();
    let identifier = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s != "_";
    let problem = if !identifier {
        format!("model name {s:?} is not a Rust identifier; use letters, digits and `_`")
    } else if KEYWORDS.contains(&s) {
        format!("model name `{s}` is a Rust keyword; choose another name")
    } else if PRIMITIVES.contains(&s) {
        format!("model name `{s}` is a Rust primitive type; choose another name")
    } else {
        return Ok(());
    };
    Err(SpecError::new(
        name.span,
        format!("{problem}, e.g. `DenseNet121`"),
    ))
}

/// Strict and reserved keywords of every edition up to 2024: none can name a struct.
const KEYWORDS: &[&str] = &[
    "Self", "abstract", "as", "async", "await", "become", "box", "break", "const", "continue",
    "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if",
    "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub",
    "ref", "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Primitive types (`f16` and `f128` included, on their way to stable).
const PRIMITIVES: &[&str] = &[
    "bool", "char", "str", "f16", "f32", "f64", "f128", "i8", "i16", "i32", "i64", "i128", "isize",
    "u8", "u16", "u32", "u64", "u128", "usize",
];

/// Shapes that only the whole model shows: an input that pools away to nothing before
/// the head, a transition that keeps no channels, counts beyond 64 bits.
fn check_shapes(cx: &mut Checker, arch: &Architecture, size_span: Span, theta_span: Span) {
    let plan = Plan::new(arch);
    let [_, h, w] = arch.input;
    let mut stages = vec![("the stem".to_string(), plan.stem.height, plan.stem.width)];
    for (i, t) in plan.transitions.iter().enumerate() {
        stages.push((format!("transition {}", i + 1), t.height, t.width));
    }
    if let Some((stage, sh, sw)) = stages.into_iter().find(|(_, sh, sw)| *sh == 0 || *sw == 0) {
        cx.error(
            size_span,
            format!(
                "input {h}x{w} shrinks to {sh}x{sw} after {stage}, before the head; \
                 use a larger `input` or fewer `blocks`"
            ),
        );
    }
    if let Some((i, t)) = plan
        .transitions
        .iter()
        .enumerate()
        .find(|(_, t)| t.c_out == 0)
    {
        cx.error(
            theta_span,
            format!(
                "`theta` {} keeps 0 of the {} channels at transition {}; use a larger `theta`, \
                 such as 0.5",
                arch.theta,
                t.c_in,
                i + 1
            ),
        );
    }
    if plan.params == u64::MAX || plan.macs == u64::MAX {
        cx.error(
            size_span,
            "model is too large to count its parameters in 64 bits; use smaller sizes",
        );
    } else if plan.params.saturating_add(plan.buffers) > MAX_WEIGHTS {
        cx.error(
            size_span,
            format!(
                "model has {} parameters and buffers ({} GiB of f32 weights); at most {MAX_WEIGHTS} \
                 are supported: use smaller sizes",
                plan.params.saturating_add(plan.buffers),
                plan.params.saturating_add(plan.buffers).saturating_mul(4) >> 30
            ),
        );
    } else if plan.arena_floats(1) as u64 > MAX_ACTIVATIONS {
        cx.error(
            size_span,
            format!(
                "one image needs {} floats of activations ({} GiB); at most {MAX_ACTIVATIONS} \
                 are supported: use a smaller `input`",
                plan.arena_floats(1),
                plan.arena_floats(1) >> 28
            ),
        );
    }
}

/// The first entry of each known key, with its index among the entries.
type Keys<'a> = BTreeMap<&'a str, (usize, &'a Entry)>;

#[derive(Default)]
struct Checker {
    /// Each error with where it sorts: 0 for the model as a whole (missing keys),
    /// 1 + the entry's index for errors about an entry, `usize::MAX` for whole-model shapes.
    errors: Vec<(usize, SpecError)>,
    /// Where the errors being found now sort.
    order: usize,
    /// Known keys that an unknown key was taken for, e.g. `growth` for `grwoth`.
    suggested: Vec<&'static str>,
}

impl Checker {
    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.errors
            .push((self.order, SpecError::new(span, message)));
    }

    /// The value of `key`, if given; errors found next sort under its entry.
    fn get<'a>(&mut self, keys: &Keys<'a>, key: &str) -> Option<&'a Sp<Value>> {
        self.at(keys, key);
        keys.get(key).map(|&(_, entry)| &entry.value)
    }

    /// `check` applied to the value of `key` as written, or else to its fixed default
    /// from the key table, as if written (a default the checks refuse is an error, not a
    /// panic).
    fn given_or_default<T>(
        &mut self,
        keys: &Keys<'_>,
        key: &str,
        check: impl FnOnce(&mut Self, &Sp<Value>) -> Option<T>,
    ) -> Option<T> {
        let value = match self.get(keys, key) {
            Some(v) => v.clone(),
            None => Sp::new(
                default_value(key).unwrap_or(Value::Other("no default")),
                Span::call_site(),
            ),
        };
        check(self, &value)
    }

    /// Errors found next sort under `key`'s entry (or first, if it is missing).
    fn at(&mut self, keys: &Keys<'_>, key: &str) {
        self.order = keys.get(key).map_or(0, |&(i, _)| i + 1);
    }

    /// A missing key, unless an unknown key was already taken for one of `keys`: the
    /// typo's "did you mean" says all there is to say.
    fn missing(&mut self, span: Span, keys: &[&str], message: &str) {
        if !keys.iter().any(|k| self.suggested.contains(k)) {
            self.error(span, message);
        }
    }

    /// The errors in the order the user wrote what they are about.
    fn finish(mut self) -> Vec<SpecError> {
        self.errors.sort_by_key(|(order, _)| *order);
        self.errors.into_iter().map(|(_, e)| e).collect()
    }

    /// Unknown and duplicate keys; returns the first entry of each known key.
    fn check_keys<'a>(&mut self, entries: &'a [Entry]) -> Keys<'a> {
        let mut seen = Keys::new();
        for (i, entry) in entries.iter().enumerate() {
            self.order = i + 1;
            let key = entry.key.value.as_str();
            if !checked_keys().any(|k| k == key) {
                let hint = match closest(key, checked_keys()) {
                    Some(k) => {
                        self.suggested.push(k);
                        format!("did you mean `{k}`?")
                    }
                    None => {
                        let all: Vec<_> = checked_keys().collect();
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
                seen.insert(key, (i, entry));
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
            Value::Other(TOO_LARGE) => {
                self.error(
                    v.span,
                    format!("`{key}` must be at most {max}; got {TOO_LARGE}"),
                );
                None
            }
            Value::Str(ref s) if without_suffix(s).is_some() => {
                self.suffixed(v.span, key, s);
                None
            }
            ref other => {
                self.error(
                    v.span,
                    format!(
                        "`{key}` must be an integer, like `{}`; got {}",
                        example(key),
                        describe(other)
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
            Value::Str(ref s) if without_suffix(s).is_some() => {
                self.suffixed(v.span, key, s);
                None
            }
            ref other => {
                self.error(
                    v.span,
                    format!(
                        "`{key}` must be a number, like `{}`; got {}",
                        example(key),
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    /// A number written with a Rust type suffix, as YAML reads it: a string.
    fn suffixed(&mut self, span: Span, key: &str, written: &str) {
        let plain = without_suffix(written).unwrap_or(written);
        self.error(
            span,
            format!("`{key}` takes a plain number: write `{plain}`, not `{written}`"),
        );
    }

    fn word<T: Copy>(&mut self, v: &Sp<Value>, key: &str, options: &[(&str, T)]) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let Some(word) = v.value.as_word() else {
            self.error(
                v.span,
                format!(
                    "`{key}` must be one of {}; got {}",
                    names.join(", "),
                    describe(&v.value)
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
                format!(
                    "`theta` must be in (0, 1] (1 keeps every channel); got {}",
                    number(&v.value)
                ),
            );
            None
        }
    }

    fn check_dropout(&mut self, v: &Sp<Value>) -> Option<f64> {
        let rate = self.float(v, "dropout")?;
        // The runtime keeps it as f32: 0.99999999999 must not round to 1.
        if (0.0..1.0).contains(&rate) && (rate as f32) < 1.0 {
            Some(rate)
        } else {
            self.error(
                v.span,
                format!(
                    "`dropout` must be in [0, 1) (the paper uses 0.2); got {}",
                    number(&v.value)
                ),
            );
            None
        }
    }

    fn check_eps(&mut self, v: &Sp<Value>) -> Option<f64> {
        let eps = self.float(v, "eps")?;
        // The runtime keeps it as f32, where it must stay a normal positive number.
        if eps < 1.0 && (eps as f32) >= f32::MIN_POSITIVE {
            Some(eps)
        } else {
            self.error(
                v.span,
                format!(
                    "`eps` must be a small positive number like 1e-5; got {}",
                    number(&v.value)
                ),
            );
            None
        }
    }

    fn check_bottleneck(&mut self, v: &Sp<Value>) -> Option<Option<usize>> {
        match v.value {
            Value::Bool(false) => Some(None),
            Value::Bool(true) => Some(Some(DEFAULT_BOTTLENECK)),
            Value::Int(0) => {
                self.error(
                    v.span,
                    "`bottleneck` must be at least 1; write `bottleneck: false` to have none",
                );
                None
            }
            Value::Int(_) | Value::Other(TOO_LARGE) => self.int(v, "bottleneck", 1, 64).map(Some),
            ref other => {
                self.error(
                    v.span,
                    format!(
                        "`bottleneck` must be a width factor like `bottleneck: 4`, or `false`; got {}",
                        describe(other)
                    ),
                );
                None
            }
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
                        describe(other)
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
                    "`input` must be [C, H, W], three integers, like `{}`; got {} value{}",
                    example("input"),
                    items.len(),
                    if items.len() == 1 { "" } else { "s" }
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
        keys: &Keys<'_>,
        bottleneck: Option<Option<usize>>,
    ) -> Option<Vec<usize>> {
        let blocks = self.get(keys, "blocks");
        let depth = self.get(keys, "depth");
        match (blocks, depth) {
            (Some(_), Some(depth)) => {
                self.at(keys, "depth");
                self.error(
                    depth.span,
                    "give either `blocks` or `depth`, not both: `depth` sets three equal blocks; \
                     remove one of them",
                );
                None
            }
            (None, None) => {
                self.missing(
                    spec.name.span,
                    &["blocks", "depth"],
                    "missing key `blocks` or `depth`: add the layers per dense block, e.g. \
                     `blocks: [6, 12, 24, 16]`, or the paper's L, e.g. `depth: 100`",
                );
                None
            }
            (Some(blocks), None) => {
                self.at(keys, "blocks");
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
                            self.error(
                                item.span,
                                "a dense block needs at least one layer; got 0 (remove the block instead)",
                            );
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
                let (per_layer, kind) = match bottleneck.unwrap_or(Some(DEFAULT_BOTTLENECK)) {
                    Some(_) => (6, "with a bottleneck"),
                    None => (3, "without a bottleneck"),
                };
                if l <= 4 || (l - 4) % per_layer != 0 {
                    let below = 4 + (l.saturating_sub(4) / per_layer) * per_layer;
                    let fix = if below > 4 {
                        format!("use {below} or {}", below + per_layer)
                    } else {
                        format!("use {}", 4 + per_layer)
                    };
                    self.error(
                        depth.span,
                        format!(
                            "depth {l} does not give three whole blocks: {kind}, depth - 4 must be a \
                             positive multiple of {per_layer}; {fix}"
                        ),
                    );
                    return None;
                }
                Some(vec![(l - 4) / per_layer; 3])
            }
        }
    }
}

/// What a too-large integer literal parses to: no key accepts it, and the checks say so.
pub(crate) const TOO_LARGE: &str = "an integer too large to represent";

/// How a value reads in a message; floats as written (`32.0`, not `32`).
fn describe(value: &Value) -> String {
    match value {
        Value::Float(x) => format!("the float {x:?}"),
        other => other.describe(),
    }
}

/// `300` for `300u8`, `0.5` for `0.5f32`: a number with a Rust type suffix, without it.
fn without_suffix(s: &str) -> Option<&str> {
    const SUFFIXES: &[&str] = &[
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
        "f32", "f64",
    ];
    let plain = SUFFIXES.iter().find_map(|suffix| s.strip_suffix(suffix))?;
    let plain = plain.strip_suffix('_').unwrap_or(plain);
    let digits = plain.strip_prefix('-').unwrap_or(plain);
    (digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.replace('_', "").parse::<f64>().is_ok())
    .then_some(plain)
}

/// A number as written, for range errors: `0`, `1.0`, `-0.1`.
fn number(value: &Value) -> String {
    match value {
        Value::Float(x) => format!("{x:?}"),
        Value::Int(i) => i.to_string(),
        other => describe(other),
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
        assert_eq!(closest("grwoth", checked_keys()), Some("growth"));
        assert_eq!(closest("block", checked_keys()), Some("blocks"));
        assert_eq!(closest("zzzzzz", checked_keys()), None);
    }

    #[cfg(feature = "yaml")]
    fn errors(text: &str) -> Vec<(usize, String)> {
        let spec = crate::parse_yaml(text, "X").unwrap();
        check(&spec)
            .unwrap_err()
            .into_iter()
            .map(|e| match e.span {
                Span::Yaml { line, .. } => (line, e.message),
                Span::Rust(_) => (0, e.message),
            })
            .collect()
    }

    /// 2.3e18 parameters used to pass the checker and abort the process building the
    /// model; now refused with the count, at the sizes.
    #[cfg(feature = "yaml")]
    #[test]
    fn models_too_large_to_build_are_refused() {
        let found = errors("growth: 1024\nblocks: [1024]\nstem: cifar\ninput: [3, 8, 8]\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].1.contains("at most 4294967296"), "{found:?}");
        // Activations: a 65536x65536 input is far past 2^32 floats per image.
        let found = errors("growth: 12\nblocks: [1, 1]\nstem: cifar\ninput: [3, 65536, 65536]\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].1.contains("floats of activations"), "{found:?}");
        // DenseNet-264, the largest preset, is far below the limit.
        let spec = crate::parse_yaml("growth: 32\nblocks: [6, 12, 64, 48]\n", "X").unwrap();
        assert!(check(&spec).is_ok());
    }

    /// YAML reads `300u8` as a string; the message says to drop the suffix.
    #[cfg(feature = "yaml")]
    #[test]
    fn numbers_with_rust_suffixes_say_to_drop_them() {
        let found = errors(
            "growth: 32
blocks: [6, 12u32]
classes: 300u8
theta: 0.5f32
",
        );
        assert_eq!(
            found,
            [
                (
                    2,
                    "`blocks` takes a plain number: write `12`, not `12u32`".to_string()
                ),
                (
                    3,
                    "`classes` takes a plain number: write `300`, not `300u8`".to_string()
                ),
                (
                    4,
                    "`theta` takes a plain number: write `0.5`, not `0.5f32`".to_string()
                ),
            ]
        );
        assert_eq!(without_suffix("1_000_usize"), Some("1_000"));
        assert_eq!(without_suffix("-1e-5f64"), Some("-1e-5"));
        assert_eq!(without_suffix("u8"), None);
        assert_eq!(without_suffix("cifar"), None);
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn errors_come_in_the_order_written() {
        let found = errors("stem: cifr\ndropout: 2\nblocks: [0]\nhead: x\ngrowth: 0\n");
        let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5], "{found:?}");
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn a_misspelt_key_is_not_also_missing() {
        let found = errors("grwoth: 32\nblock: [1]\n");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].1.contains("did you mean `growth`"));
        assert!(found[1].1.contains("did you mean `blocks`"));
        // Without the typo, the missing key is reported at the model.
        assert!(errors("blocks: [1]\n")[0]
            .1
            .starts_with("missing key `growth`"));
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn the_stub_keeps_the_head_it_can_read() {
        let spec = crate::parse_yaml("growth: 0\nhead: none\n", "X").unwrap();
        assert_eq!(stub_architecture(&spec).head, Head::None);
        let spec = crate::parse_yaml("growth: 0\nhead: nope\n", "X").unwrap();
        let stub = stub_architecture(&spec);
        assert_eq!(stub.head, Head::Classifier);
        assert!(Plan::new(&stub).params > 0);
    }

    /// The table's fixed defaults are what a spec without the key gets, and each passes
    /// the checks as if written.
    #[cfg(feature = "yaml")]
    #[test]
    fn fixed_defaults_come_from_the_key_table() {
        let arch = |text: &str| check(&crate::parse_yaml(text, "X").unwrap()).unwrap();
        let bare = arch("growth: 12\nblocks: [2, 2]\n");
        assert_eq!(
            (bare.theta, bare.bottleneck, bare.stem),
            (1.0, Some(4), Stem::ImageNet)
        );
        assert_eq!(
            (bare.head, bare.dropout, bare.eps),
            (Head::Classifier, 0.0, 1e-5)
        );
        let mut written = "growth: 12\nblocks: [2, 2]\n".to_string();
        let mut fixed = 0;
        for key in crate::keys::KEYS {
            if let crate::keys::KeyDefault::Value(_) = key.default {
                let value = match default_value(key.name).unwrap() {
                    Value::Float(x) => format!("{x:?}"),
                    Value::Int(i) => i.to_string(),
                    other => other.as_word().unwrap().to_string(),
                };
                written.push_str(&format!("{}: {value}\n", key.name));
                fixed += 1;
            }
        }
        assert_eq!(fixed, 6, "{written}");
        assert_eq!(arch(&written), bare, "{written}");
        assert_eq!(arch("growth: 12\nblocks: [2, 2]\nbottleneck: true\n"), bare);
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn f32_rounding_cannot_sneak_past_the_ranges() {
        assert_eq!(
            errors("growth: 1\nblocks: [1]\ndropout: 0.99999999999\n").len(),
            1
        );
        assert_eq!(errors("growth: 1\nblocks: [1]\neps: 1e-50\n").len(), 1);
    }
}
