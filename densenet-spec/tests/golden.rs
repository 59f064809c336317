//! The build-script generator's output, pinned by a golden file.
//!
//! `Config` and `densenet_yaml!` share one code generator (`expand_model`); this pins
//! its formatted output so changes to the generated API are reviewed as a diff.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p densenet-spec --test golden`.

use std::path::Path;

use densenet_spec::{CompileError, Config};

#[test]
fn generated_code_matches_the_golden_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = root.join("../specs/densenet_bc100_k12.yaml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let code = Config::new()
        .generate(&text, "specs/densenet_bc100_k12.yaml")
        .unwrap();
    let golden = root.join("tests/golden/densenet_bc100_k12.rs");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &code).unwrap();
    }
    assert_eq!(code, std::fs::read_to_string(&golden).unwrap());
    assert!(code.starts_with("// @generated"));
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
