//! The spec parsers never panic: thousands of random and mutated specs, as YAML text and
//! as Rust tokens, go through everything the macros run (the front door: parse, check,
//! plan; then expand, and for failing specs the stand-in) and come out as errors or as
//! valid Rust, never a panic.
//!
//! Mutations start from the real presets in `specs/`: characters deleted, inserted and
//! replaced (Unicode and YAML/Rust punctuation included), lines swapped, deleted and
//! repeated, values replaced by random values of random types (huge, negative, NaN, …),
//! entries added with known, misspelt and random keys.
#![cfg(all(feature = "codegen", feature = "yaml"))]

use std::str::FromStr;
use std::sync::OnceLock;

use densenet_spec::expand::{default_runtime_path, expand_model};
use densenet_spec::{
    check, parse_specs, parse_yaml, CheckedSpec, Rejected, Span, SpecError, SpecSource,
};
use proptest::prelude::*;

/// Cases per property; the properties stay well under 20 s in the test profile.
/// `PROPTEST_CASES` overrides it for a longer campaign:
/// `PROPTEST_CASES=100000 cargo test --release -p densenet-spec --test robustness`.
const CASES: u32 = 3000;

/// [`CASES`] cases, unless `PROPTEST_CASES` is set (`ProptestConfig::default()` reads
/// it; `with_cases` would override it).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

/// The preset spec files, read once.
fn presets() -> &'static [String] {
    static PRESETS: OnceLock<Vec<String>> = OnceLock::new();
    PRESETS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
        let mut texts: Vec<String> = std::fs::read_dir(&dir)
            .expect("specs/ exists")
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                (path.extension()? == "yaml").then(|| std::fs::read_to_string(path).ok())?
            })
            .collect();
        texts.sort();
        assert!(
            texts.len() >= 10,
            "expected the presets in {}",
            dir.display()
        );
        texts
    })
}

/// A preset in the inline syntax: `pub Name<key: value, …>`, its comments dropped.
fn inline(yaml: &str) -> String {
    let mut name = "Model".to_string();
    let mut entries = Vec::new();
    for line in yaml.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if line.starts_with('#') {
            continue;
        }
        if key == "name" {
            name = value.trim().to_string();
        } else {
            entries.push(format!("{key}: {}", value.trim()));
        }
    }
    format!("/// Docs.\npub {name}<{}>", entries.join(", "))
}

/// What the macros do with the front door's answer, with every invariant they rely on
/// asserted.
fn outcome(model: &Result<CheckedSpec, Rejected>, yaml: Option<&str>) {
    match model {
        Ok(model) => {
            let (arch, plan) = (&model.architecture, &model.plan);
            assert!(plan.params > 0 && plan.params < u64::MAX, "{arch:?}");
            assert!(plan.stem.height > 0 && plan.stem.width > 0, "{arch:?}");
            assert!(plan
                .transitions
                .iter()
                .all(|t| t.c_out > 0 && t.height > 0 && t.width > 0));
            expand(model);
        }
        Err(rejected) => {
            assert!(!rejected.errors.is_empty(), "a failing spec must say why");
            for e in &rejected.errors {
                assert_good_error(e, yaml);
            }
            if let Some(stand_in) = &rejected.stand_in {
                expand(stand_in);
            }
        }
    }
}

/// Expands as the macros do; the expansion must parse as Rust.
fn expand(model: &CheckedSpec) {
    let tokens = expand_model(
        &model.item(),
        &model.architecture,
        &model.plan,
        &default_runtime_path(),
    );
    if let Err(e) = syn::parse2::<syn::File>(tokens) {
        panic!("expansion of {model:?} is not valid Rust: {e}");
    }
}

/// Messages say something, start lower-case, and YAML positions lie within the text.
fn assert_good_error(e: &SpecError, yaml: Option<&str>) {
    assert!(!e.message.trim().is_empty());
    assert!(
        !e.message.starts_with(char::is_uppercase),
        "messages are lower-case: {}",
        e.message
    );
    if let (Span::Yaml { line, column }, Some(text)) = (e.span, yaml) {
        let lines = yaml_lines(text);
        assert!(line >= 1 && column >= 1, "{e} in {text:?}");
        assert!(
            line <= lines,
            "{e} is past the last line, {lines}, of {text:?}"
        );
    }
}

/// Lines as YAML counts them (`\n`, `\r\n`, `\r`, NEL, LS, PS), counting a last empty one.
fn yaml_lines(text: &str) -> usize {
    let text = text.replace("\r\n", "\n");
    let breaks = text
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'));
    breaks.count() + 1
}

fn run_yaml(text: &str) {
    let source = SpecSource::Yaml {
        text,
        path: "model.yaml",
    };
    let models = source.check().expect("text needs no reading");
    assert_eq!(models.len(), 1);
    outcome(&models[0], Some(text));
}

fn run_tokens(text: &str) {
    // Text the Rust lexer rejects never reaches a macro.
    let Ok(tokens) = proc_macro2::TokenStream::from_str(text) else {
        return;
    };
    let models = SpecSource::Inline(tokens)
        .check()
        .expect("tokens need no reading");
    assert!(!models.is_empty());
    for model in &models {
        outcome(model, None);
    }
}

// ---- strategies ----

/// Characters worth inserting: YAML and Rust punctuation, whitespace and line breaks of
/// every kind, digits, and Unicode (accents, astral, right-to-left, zero-width). For
/// token streams, mostly characters the Rust lexer accepts, so edits reach the parser.
fn interesting_char(tokens: bool) -> BoxedStrategy<char> {
    let punctuation = if tokens {
        ":-[](),<>#&*!|%@?=/.;_ \n0123456789eE+xkiu"
    } else {
        ":-[]{}(),<>#&*!|'\"%@`?=/\\.;_ \t\n\r0123456789eE+xk"
    };
    let unicode = if tokens {
        vec!['é', 'ß', 'λ', '中', '\u{3000}', '🦀']
    } else {
        vec![
            '\u{85}', '\u{2028}', '\u{2029}', '\u{feff}', '\u{200b}', 'é', 'ß', 'λ', '中', '𝓧',
            '🦀', '\u{202e}', '\u{0}', '\u{7f}',
        ]
    };
    prop_oneof![
        8 => prop::sample::select(punctuation.chars().collect::<Vec<_>>()),
        2 => prop::sample::select(unicode),
        1 => any::<char>(),
    ]
    .boxed()
}

/// A number or a word as written in either syntax.
fn scalar() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0i64..80).prop_map(|i| i.to_string()),
        1 => any::<i64>().prop_map(|i| i.to_string()),
        1 => any::<u64>().prop_map(|i| i.to_string()),
        1 => "-?[1-9][0-9]{18,45}",
        1 => "-[0-9]{1,4}",
        1 => any::<f64>().prop_map(|x| format!("{x:?}")),
        2 => prop::sample::select(vec![
            "0", "1", "0.5", "1.0", "1.5", "0.0", "-0.0", "1e-5", "1.001e-5", "1e-50", "1e999",
            "1e308", "0.2", "0.999999999999", "4096", "4097", "65536", "65537", "10000000",
            "true", "false", "cifar", "imagenet", "avg", "max", "none", "classifier",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_]{1,10}",
    ]
    .boxed()
}

/// A random YAML value of a random type.
fn yaml_value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        6 => scalar(),
        1 => prop::sample::select(vec![
            "", "~", "null", ".nan", ".inf", "-.inf", "yes", "0x20", "0o17", "1_000", "\"32\"",
            "'0.5'", "&a 32", "*a", "!!str 32", "!!float 1", "!custom 4", "{}", "[]", "{a: 1}",
            "|\n  6\n", ">-\n  7\n", "[6, [12]]", "[1,]", "- 1", "? x", "\"\\u0000\"",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ];
    prop_oneof![
        4 => leaf.clone(),
        2 => prop::collection::vec(leaf.clone(), 0..7).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => prop::collection::vec(leaf, 1..5)
            .prop_map(|v| v.iter().map(|x| format!("\n  - {x}")).collect::<String>()),
    ]
    .boxed()
}

/// A random Rust value as the inline syntax might hold it.
fn token_value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        6 => scalar(),
        1 => prop::sample::select(vec![
            "\"32\"", "'a'", "b\"x\"", "32u8", "32usize", "1_000", "0x20", "0b1", "0o7", "1.",
            "16 * 2", "(6, 12)", "{6}", "- -5", "-cifar", "-", "r#type", "_", "self", "Self",
            "1e", "0.5f32", "[", "]", ">", "<", "::x", "#[x]", "/// doc", "/* c */ 3", "'lt",
        ])
        .prop_map(str::to_string),
    ];
    prop_oneof![
        4 => leaf.clone(),
        2 => prop::collection::vec(leaf.clone(), 0..7).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => prop::collection::vec(prop::collection::vec(leaf, 0..3), 0..3).prop_map(|v| {
            let inner: Vec<String> = v.iter().map(|l| format!("[{}]", l.join(", "))).collect();
            format!("[{}]", inner.join(", "))
        }),
    ]
    .boxed()
}

/// Known keys, typos of them, and random words.
fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "growth", "blocks", "depth", "theta", "bottleneck", "stem", "init_features", "input",
            "classes", "head", "dropout", "eps", "name",
        ])
        .prop_map(str::to_string),
        1 => prop::sample::select(vec!["grwoth", "block", "thta", "clases", "Growth", "dept"])
            .prop_map(str::to_string),
        1 => "[a-z_][a-z0-9_]{0,12}",
        1 => "\\PC{1,6}",
    ]
    .boxed()
}

/// One edit of a text; positions are taken modulo the text's length when applied.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, char),
    Replace(usize, char),
    InsertText(usize, String),
    SwapLines(usize, usize),
    DeleteLine(usize),
    RepeatLine(usize),
    SetValue(usize, String),
    AddEntry(usize, String, String),
    Truncate(usize),
}

fn edit(value: BoxedStrategy<String>, tokens: bool) -> impl Strategy<Value = Edit> {
    let n = any::<usize>();
    prop_oneof![
        3 => (n, 1usize..4).prop_map(|(i, len)| Edit::Delete(i, len)),
        3 => (n, interesting_char(tokens)).prop_map(|(i, c)| Edit::Insert(i, c)),
        3 => (n, interesting_char(tokens)).prop_map(|(i, c)| Edit::Replace(i, c)),
        1 => (n, value.clone()).prop_map(|(i, s)| Edit::InsertText(i, s)),
        1 => (n, n).prop_map(|(i, j)| Edit::SwapLines(i, j)),
        1 => n.prop_map(Edit::DeleteLine),
        1 => n.prop_map(Edit::RepeatLine),
        4 => (n, value.clone()).prop_map(|(i, v)| Edit::SetValue(i, v)),
        2 => (n, key(), value).prop_map(|(i, k, v)| Edit::AddEntry(i, k, v)),
        1 => n.prop_map(Edit::Truncate),
    ]
}

/// Applies `edits` to `text`. `yaml` picks how entries are separated: lines or commas.
fn apply(text: &str, edits: &[Edit], yaml: bool) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len().max(1);
        match e {
            Edit::Delete(i, n) => {
                let i = i % len;
                let end = (i + n).min(chars.len());
                if i < end {
                    chars.drain(i..end);
                }
            }
            Edit::Insert(i, c) => chars.insert(i % (chars.len() + 1), *c),
            Edit::Replace(i, c) => {
                if !chars.is_empty() {
                    chars[i % len] = *c;
                }
            }
            Edit::InsertText(i, s) => {
                let at = i % (chars.len() + 1);
                chars.splice(at..at, s.chars());
            }
            Edit::Truncate(i) => chars.truncate(i % (chars.len() + 1)),
            Edit::SwapLines(..)
            | Edit::DeleteLine(_)
            | Edit::RepeatLine(_)
            | Edit::SetValue(..)
            | Edit::AddEntry(..) => {
                let s: String = chars.iter().collect();
                let sep = if yaml { "\n" } else { ", " };
                let mut parts: Vec<String> = s.split(sep).map(str::to_string).collect();
                let m = parts.len();
                match e {
                    Edit::SwapLines(i, j) => parts.swap(i % m, j % m),
                    Edit::DeleteLine(i) => {
                        parts.remove(i % m);
                    }
                    Edit::RepeatLine(i) => {
                        let p = parts[i % m].clone();
                        parts.insert(i % m, p);
                    }
                    Edit::SetValue(i, v) => {
                        let p = &mut parts[i % m];
                        if let Some(colon) = p.find(':') {
                            // Keep what closes the inline spec.
                            let tail = if !yaml && p.ends_with('>') { ">" } else { "" };
                            p.truncate(colon + 1);
                            p.push(' ');
                            p.push_str(v);
                            p.push_str(tail);
                        }
                    }
                    Edit::AddEntry(i, k, v) => parts.insert(i % (m + 1), format!("{k}: {v}")),
                    _ => unreachable!(),
                }
                chars = parts.join(sep).chars().collect();
            }
        }
    }
    chars.into_iter().collect()
}

fn preset() -> impl Strategy<Value = String> {
    prop::sample::select(presets().to_vec())
}

/// A spec made up from scratch: `key: value` entries with random keys and values.
fn random_entries(value: BoxedStrategy<String>) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec((key(), value).prop_map(|(k, v)| format!("{k}: {v}")), 0..10)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_yaml_presets_never_panic(
        text in preset(),
        edits in prop::collection::vec(edit(yaml_value(), false), 1..6),
    ) {
        run_yaml(&apply(&text, &edits, true));
    }

    #[test]
    fn random_yaml_never_panics(
        entries in random_entries(yaml_value()),
        edits in prop::collection::vec(edit(yaml_value(), false), 0..3),
    ) {
        run_yaml(&apply(&entries.join("\n"), &edits, true));
    }

    #[test]
    fn mutated_inline_presets_never_panic(
        text in preset(),
        edits in prop::collection::vec(edit(token_value(), true), 1..8),
    ) {
        run_tokens(&apply(&inline(&text), &edits, false));
    }

    #[test]
    fn random_inline_specs_never_panic(
        models in prop::collection::vec(
            ("[A-Z][A-Za-z0-9_]{0,8}", random_entries(token_value())),
            1..3,
        ),
        edits in prop::collection::vec(edit(token_value(), true), 0..3),
    ) {
        let text: Vec<String> = models
            .iter()
            .map(|(name, entries)| format!("pub {name}<{}>", entries.join(", ")))
            .collect();
        run_tokens(&apply(&text.join(";\n"), &edits, false));
    }

    /// Any text at all, not only spec-shaped text: control characters, astral planes,
    /// unbalanced brackets and quotes, tabs, BOMs.
    #[test]
    fn arbitrary_text_as_yaml_never_panics(text in prop_oneof![
        "\\PC{0,80}",
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..120)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        prop::collection::vec(interesting_char(false), 0..60)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ]) {
        run_yaml(&text);
        // The library entry points, as `DynamicModel` users call them.
        if let Ok(spec) = parse_yaml(&text, "Model") {
            let _ = check(&spec);
        }
    }

    /// Any text that lexes as Rust tokens, through the token front door and `parse_specs`.
    #[test]
    fn arbitrary_tokens_never_panic(text in prop_oneof![
        "\\PC{0,80}",
        prop::collection::vec(interesting_char(true), 0..60)
            .prop_map(|c| c.into_iter().collect::<String>()),
        (
            "[A-Za-z_][A-Za-z0-9_]{0,6}",
            prop::collection::vec(
                prop_oneof![
                    token_value(),
                    prop::collection::vec(interesting_char(true), 0..6)
                        .prop_map(|c| c.into_iter().collect::<String>()),
                ],
                0..10,
            ),
        )
            .prop_map(|(name, parts)| format!("{name}<{}>", parts.join(" "))),
    ]) {
        run_tokens(&text);
        if let Ok(tokens) = proc_macro2::TokenStream::from_str(&text) {
            if let Ok(specs) = parse_specs(tokens) {
                for spec in &specs {
                    let _ = check(spec);
                }
            }
        }
    }
}

/// The unmutated presets pass, in both syntaxes: the mutations start from valid specs.
#[test]
fn presets_pass_in_both_syntaxes() {
    for text in presets() {
        let spec = parse_yaml(text, "Model").unwrap();
        check(&spec).unwrap();
        let specs = parse_specs(proc_macro2::TokenStream::from_str(&inline(text)).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", inline(text)));
        check(&specs[0]).unwrap_or_else(|e| panic!("{}: {e:?}", inline(text)));
    }
}

/// Mistakes the properties found once, kept as plain cases.
#[test]
fn known_hard_inputs() {
    for text in [
        "growth: 32\rblocks: [0]\r",
        "growth: 100000000000000000000000\nblocks: [1]\n",
        "growth: 32\ngrowth: 12\nblocks: [1]\n",
        "growth: 32\nblocks: [1]\ndropout: 0.99999999999\n",
        "growth: 32\nblocks: [1]\neps: 1e-50\n",
        "growth: 32\nblocks: [6, 12, 24, 16]\ntheta: 0.001\n",
        // libyaml reports the end of a text without a final newline past its last line.
        "growth: 32\nblocks: [1, 2\nb",
    ] {
        run_yaml(text);
        let spec = parse_yaml(text, "X");
        assert!(
            spec.map_or(true, |s| check(&s).is_err()),
            "{text:?} must fail"
        );
    }
    for text in [
        "X<growth: - - - 5, blocks: [1]>",
        "X<growth: 1000000000000000000000000000000000000000000, blocks: [1]>",
        "X<growth: 32, blocks: [1], dropout: 0.99999999999>",
    ] {
        run_tokens(text);
    }
}

/// A megabyte of YAML, near the size limit: a list written on one line and in blocks.
fn large_specs() -> Vec<(&'static str, String)> {
    const SIZE: usize = 1000 * 1000;
    let mut unknown_keys = String::new();
    let mut i = 0;
    while unknown_keys.len() < SIZE {
        unknown_keys.push_str(&format!("key_{i}: {i}\n"));
        i += 1;
    }
    let mut flow_list = String::from("growth: 32\nblocks: [1");
    while flow_list.len() < SIZE {
        flow_list.push_str(", 1");
    }
    flow_list.push_str("]\n");
    let mut block_list = String::from("growth: 32\nblocks:\n");
    while block_list.len() < SIZE {
        block_list.push_str("  - 1\n");
    }
    vec![
        ("unknown keys", unknown_keys),
        ("flow list", flow_list),
        ("block list", block_list),
    ]
}

/// Finding where keys and list items are is one pass over the text: a megabyte of
/// unknown keys or of list items is checked in well under a second (release), not the
/// minutes that rescanning the text for each key or item took. 5 s leaves room for a
/// debug build on a busy machine.
#[test]
fn large_specs_are_checked_in_linear_time() {
    for (what, text) in large_specs() {
        let start = std::time::Instant::now();
        let source = SpecSource::Yaml {
            text: &text,
            path: "model.yaml",
        };
        let models = source.check().unwrap();
        let elapsed = start.elapsed();
        let Err(rejected) = &models[0] else {
            panic!("{what}: accepted")
        };
        assert!(
            elapsed < std::time::Duration::from_secs(5),
            "{what}: {} bytes took {elapsed:?}",
            text.len()
        );
        println!("{what}: {} bytes in {elapsed:?}", text.len());
        let errors: Vec<String> = rejected.errors.iter().map(|e| e.to_string()).collect();
        match what {
            "unknown keys" => {
                assert!(errors[0].starts_with("1:1: missing key `growth`"));
                assert!(
                    errors[1].starts_with("1:1: missing key `blocks`"),
                    "{:?}",
                    &errors[..3]
                );
                assert!(
                    errors[2].starts_with("1:1: unknown key `key_0`"),
                    "{:?}",
                    &errors[..3]
                );
                assert!(errors
                    .last()
                    .unwrap()
                    .starts_with(&format!("{}:1: unknown key `key_", text.lines().count())));
            }
            _ => assert!(
                errors.len() == 1 && errors[0].ends_with("blocks; at most 16 are supported"),
                "{what}: {errors:?}"
            ),
        }
    }
}

/// A spec file past the limit is refused, unread past the limit, with its size.
#[test]
fn spec_files_past_the_limit_are_refused() {
    let limit = densenet_spec::yaml::MAX_SPEC_BYTES;
    let dir = std::env::temp_dir().join(format!("densenet-robustness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge.yaml");
    let mut text = "growth: 32\nblocks: [1]\n".to_string();
    while text.len() <= 3 * limit {
        text.push_str("key: 1\n");
    }
    std::fs::write(&path, &text).unwrap();
    let start = std::time::Instant::now();
    let error = densenet_spec::check_yaml_file(&path)
        .unwrap_err()
        .to_string();
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        error,
        format!(
            "{}:1:1: spec file is {} bytes; at most {limit} (1 MiB) are read: a spec is a few \
             `key: value` lines",
            path.display(),
            text.len()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
