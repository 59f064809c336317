//! The `densenet` binary end to end.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn summary_prints_keras_totals() {
    let out = densenet(&["summary", "specs/densenet121.yaml"]);
    assert!(out.status.success());
    // keras.applications.DenseNet121(weights=None).summary() (Keras 3.15).
    let text = stdout(&out);
    assert!(
        text.contains("Total params: 8,062,504 (30.76 MB)"),
        "{text}"
    );
    assert!(
        text.contains("conv5_block16_concat (Concatenate)"),
        "{text}"
    );
}

#[test]
fn check_reports_every_mistake_with_positions() {
    let out = densenet(&[
        "check",
        "specs/densenet121.yaml",
        "specs/densenet_bc100_k12.yaml",
    ]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("specs/densenet121.yaml: ok (DenseNet121, 7978856 parameters)"));

    let bad = std::env::temp_dir().join(format!("densenet-cli-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, "growth: 0\nblocks: [6, 12]\ntheta: 1.5\n").unwrap();
    let out = densenet(&["check", bad.to_str().unwrap()]);
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        errors.contains(":1:9: `growth` must be at least 1"),
        "{errors}"
    );
    assert!(
        errors.contains(":3:8: `theta` must be in (0, 1]"),
        "{errors}"
    );
}

#[test]
fn expand_prints_the_generated_struct() {
    let out = densenet(&["expand", "specs/densenet121.yaml"]);
    assert!(out.status.success());
    let code = stdout(&out);
    assert!(code.starts_with("// @generated"));
    assert!(code.contains("pub struct DenseNet121"));
    assert!(code.contains("DenseBlock<64, 6, 32, 4>"));
}

#[test]
fn names_follow_the_macros_rules() {
    let dir = std::env::temp_dir().join(format!("densenet-cli-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, kind) in [
        ("Self", "keyword"),
        ("crate", "keyword"),
        ("f32", "primitive type"),
    ] {
        let spec = dir.join("net.yaml");
        std::fs::write(&spec, format!("name: {name}\ngrowth: 12\ndepth: 40\n")).unwrap();
        let out = densenet(&["check", spec.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let errors = String::from_utf8_lossy(&out.stderr);
        assert!(
            errors.contains(&format!(
                "net.yaml:1:7: model name `{name}` is a Rust {kind}"
            )),
            "{errors}"
        );
    }
    // Without `name`, the file's name in UpperCamelCase, under the same rules.
    let spec = dir.join("self.yaml");
    std::fs::write(&spec, "growth: 12\ndepth: 40\n").unwrap();
    let out = densenet(&["check", spec.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("self.yaml:1:1: model name `Self`"));
    let spec = dir.join("tiny_net.yaml");
    std::fs::write(&spec, "growth: 12\ndepth: 40\n").unwrap();
    let out = densenet(&["check", spec.to_str().unwrap()]);
    assert!(stdout(&out).contains(": ok (TinyNet, "), "{}", stdout(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_classifies_images_with_loaded_weights() {
    let out = densenet(&[
        "run",
        "--spec",
        "densenet-cli/tests/small.yaml",
        "--weights",
        "tests/fixtures/torchvision_small.safetensors",
        "--top",
        "3",
        "tests/fixtures/astronaut.png",
        "tests/fixtures/astronaut.jpg",
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("% ")).count(),
        6,
        "{text}"
    );
    assert!(text.contains("class "), "{text}");

    let out = densenet(&[
        "run",
        "--spec",
        "densenet-cli/tests/small.yaml",
        "--weights",
        "tests/fixtures/torchvision_small.safetensors",
        "README.md",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot decode image README.md"));
}

#[test]
fn bench_reports_latency() {
    let out = densenet(&[
        "bench",
        "--spec",
        "densenet-cli/tests/small.yaml",
        "--batch",
        "2",
        "--iters",
        "3",
    ]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("Small: batch 2, median"),
        "{}",
        stdout(&out)
    );
}
