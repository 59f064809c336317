//! The build-script generator's output, pinned by golden files.
//!
//! `Config` and `densenet_yaml!` share one code generator (`expand_model`); this pins
//! its formatted output so changes to the generated API are reviewed as a diff. Three
//! models cover the generator's branches: a CIFAR DenseNet-BC (bottleneck, classifier),
//! DenseNet-121 (ImageNet stem) and a headless feature extractor (no bottleneck, the
//! feature map as output). The root crate's `tests/generated.rs` compiles the files.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p densenet-spec --test golden`.

use std::path::Path;

use densenet_spec::{CompileError, Config};

/// Generates `spec` (YAML text, shown as `path`) and compares it with `golden/<file>`;
/// `UPDATE_GOLDEN` rewrites the file instead of failing.
fn check_golden(text: &str, path: &str, file: &str) {
    let code = Config::new().generate(text, path).unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &code).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    // The first differing line, not two whole files: DenseNet-121's is long.
    if let Some((i, (got, want))) = (code.lines().zip(expected.lines()))
        .enumerate()
        .find(|(_, (got, want))| got != want)
    {
        panic!(
            "{file}:{}: expected\n{want}\ngenerated\n{got}\n\
             review the diff after UPDATE_GOLDEN=1 cargo test -p densenet-spec --test golden",
            i + 1
        );
    }
    assert_eq!(
        code.lines().count(),
        expected.lines().count(),
        "{file}: generated code and golden file differ in length; \
         review the diff after UPDATE_GOLDEN=1 cargo test -p densenet-spec --test golden"
    );
    assert!(code.starts_with("// @generated"));
}

fn preset(file: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("../specs").join(file)).unwrap()
}

#[test]
fn cifar_densenet_bc_matches_the_golden_file() {
    let text = preset("densenet_bc100_k12.yaml");
    check_golden(
        &text,
        "specs/densenet_bc100_k12.yaml",
        "densenet_bc100_k12.rs",
    );
}

#[test]
fn imagenet_stem_matches_the_golden_file() {
    let text = preset("densenet121.yaml");
    check_golden(&text, "specs/densenet121.yaml", "densenet121.rs");
}

/// No preset is headless: a small feature extractor, without bottleneck layers (the
/// `BN_SIZE` 0 branch), whose output is the final feature map (`Array4`).
const FEATURES: &str = "\
name: Features
stem: cifar
growth: 6
blocks: [2, 3]
bottleneck: false
head: none
";

#[test]
fn headless_model_matches_the_golden_file() {
    check_golden(FEATURES, "features.yaml", "features.rs");
}

#[test]
fn compile_writes_only_when_changed_and_reports_spec_errors() {
    let dir = std::env::temp_dir().join(format!("densenet-spec-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/densenet121.yaml");
    let config = Config::new().out_dir(&dir).cargo_directives(false);
    let written = config.compile(&[&spec]).unwrap();
    assert_eq!(written, vec![dir.join("densenet121.rs")]);
    let modified = std::fs::metadata(&written[0]).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    config.compile(&[&spec]).unwrap();
    assert_eq!(
        std::fs::metadata(&written[0]).unwrap().modified().unwrap(),
        modified
    );

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "growth: 32\nblocks: [6, 0]\ntheta: 2\n").unwrap();
    let err = config.compile(&[&bad]).unwrap_err();
    let CompileError::Spec(errors) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(errors.errors.len(), 2);
    let text = err.to_string();
    assert!(text.contains("bad.yaml:2:13: "), "{text}");
    assert!(text.contains("bad.yaml:3:8: "), "{text}");
    let missing = config.compile(&[dir.join("missing.yaml")]).unwrap_err();
    assert!(matches!(missing, CompileError::Io { .. }), "{missing:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
