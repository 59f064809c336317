//! `docs/SPEC.md` is the key table of `densenet-spec/src/keys.rs`, rendered: the one
//! description of every key that the checks, their messages and the docs share.

use std::path::Path;

#[test]
fn docs_spec_md_is_the_rendered_key_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SPEC.md");
    let rendered = densenet_spec::keys::markdown();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "docs/SPEC.md differs from the key table in densenet-spec/src/keys.rs; regenerate it \
         with `BLESS=1 cargo test -p densenet-spec --test spec_docs` and review the diff.\n\
         --- docs/SPEC.md\n{on_disk}\n+++ rendered\n{rendered}"
    );
    // Every key the checks accept is documented, with its example.
    for key in densenet_spec::keys::KEYS {
        assert!(rendered.contains(&format!("| `{}` |", key.name)), "{key:?}");
    }
    assert!(rendered.contains("| `theta` | compression in (0, 1]"));
    assert!(rendered.contains("| `growth` |") && rendered.contains("| required |"));
}
