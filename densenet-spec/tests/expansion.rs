//! The generated code grows with the number of blocks, not layers: DenseNet-264 (130
//! dense layers) expands to exactly as many lines as DenseNet-121 (58), and both stay
//! small. The block sizes live in const generics, so the expansion names each block's
//! shape once.
#![cfg(all(feature = "codegen", feature = "yaml"))]

use densenet_spec::expand::{default_runtime_path, expand_model, ItemInfo};
use densenet_spec::{check, parse_yaml, Plan};

/// A budget with room for the API to grow (228 lines when written, 333 with the
/// `Model` impl listing the stages by index); unrolling
/// DenseNet-264's 130 layers would take thousands.
const MAX_LINES: usize = 400;

/// The preset `specs/<file>.yaml` expanded as `densenet_yaml!` does, formatted with
/// prettyplease.
fn expand_preset(file: &str) -> String {
    let path = format!("{}/../specs/{file}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let spec = parse_yaml(&text, "Model").unwrap_or_else(|e| panic!("{path}: {e:?}"));
    let arch = check(&spec).unwrap_or_else(|e| panic!("{path}: {e:?}"));
    let plan = Plan::new(&arch);
    let name = syn::parse_str::<syn::Ident>(&spec.name.value).unwrap();
    let item = ItemInfo {
        name: &name,
        attrs: &spec.attrs,
        vis: &spec.vis,
    };
    let tokens = expand_model(&item, &arch, &plan, &default_runtime_path());
    prettyplease::unparse(&syn::parse2(tokens).expect("the expansion is valid Rust"))
}

fn lines(code: &str) -> usize {
    code.lines().count()
}

#[test]
fn expansion_grows_with_blocks_not_layers() {
    let d121 = expand_preset("densenet121");
    let d264 = expand_preset("densenet264");
    assert!(
        lines(&d264) < MAX_LINES,
        "DenseNet-264 expands to {} lines:\n{d264}",
        lines(&d264)
    );
    // Same four blocks, three times the layers: the same code, other numbers.
    assert_eq!(lines(&d121), lines(&d264));
    for four_blocks in ["densenet161", "densenet169", "densenet201"] {
        assert_eq!(
            lines(&expand_preset(four_blocks)),
            lines(&d121),
            "{four_blocks}"
        );
    }
    // The CIFAR nets: three blocks, from 12 to 82 layers each.
    let bc100 = expand_preset("densenet_bc100_k12");
    assert_eq!(lines(&expand_preset("densenet_bc250_k24")), lines(&bc100));
    assert_eq!(lines(&expand_preset("densenet_bc190_k40")), lines(&bc100));
    // One more block (and transition) costs a few lines: a field, its init, its forward.
    let per_block = lines(&d121).abs_diff(lines(&bc100));
    assert!(
        per_block < 40,
        "a block and a transition cost {per_block} lines"
    );
}

#[test]
fn expansion_names_each_block_shape_once() {
    let d264 = expand_preset("densenet264");
    // Stem 64 channels; each block adds layers x 32, each transition halves:
    // 64 -6-> 256 -> 128 -12-> 512 -> 256 -64-> 2304 -> 1152 -48-> 2688.
    for ty in [
        "ImageNetStem<3, 64>",
        "DenseBlock<64, 6, 32, 4>",
        "Transition<256, 128>",
        "DenseBlock<128, 12, 32, 4>",
        "Transition<512, 256>",
        "DenseBlock<256, 64, 32, 4>",
        "Transition<2304, 1152>",
        "DenseBlock<1152, 48, 32, 4>",
        "ClassifierHead<2688, 1000>",
    ] {
        assert!(d264.contains(ty), "{ty} missing from\n{d264}");
    }
    assert!(!d264.contains("block5") && !d264.contains("transition4"));
    // No per-layer code: Keras layer names are planned at run time, not spelled out.
    assert!(!d264.contains("conv4_block64"), "per-layer code in\n{d264}");

    let d121 = expand_preset("densenet121");
    // 64 -6-> 256 -> 128 -12-> 512 -> 256 -24-> 1024 -> 512 -16-> 1024.
    for ty in [
        "DenseBlock<64, 6, 32, 4>",
        "DenseBlock<128, 12, 32, 4>",
        "DenseBlock<256, 24, 32, 4>",
        "Transition<1024, 512>",
        "DenseBlock<512, 16, 32, 4>",
        "ClassifierHead<1024, 1000>",
    ] {
        assert!(d121.contains(ty), "{ty} missing from\n{d121}");
    }
}
