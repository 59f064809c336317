//! Compile-fail tests: every mistake a spec can hold, with the error the user sees.
//!
//! Each case in `tests/ui/<category>/<mistake>.rs` sits next to its blessed `.stderr`.
//! After changing a message, regenerate them with
//! `TRYBUILD=overwrite cargo test --test ui` and read the diff.

#[test]
fn ui() {
    // trybuild compiles the cases in a generated crate under `target/`, so
    // `densenet_yaml!` would resolve spec paths against that crate's root. Point it back
    // at this one (the override trybuild's author recommends, dtolnay/trybuild#202).
    std::env::set_var("DENSENET_MANIFEST_DIR", env!("CARGO_MANIFEST_DIR"));
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*/*.rs");
}
