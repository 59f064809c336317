//! Every preset in `specs/`, compiled with `densenet_yaml!`, has exactly the counts of
//! an independent reference.
//!
//! ImageNet nets: torchvision 0.29's published/measured counts
//! (`sum(p.numel() for p in m.parameters())`; BN running stats; MACs of convs and the
//! linear layer), see densenet-facts.md; DenseNet-264 from torchvision's `DenseNet`
//! class with `block_config=(6, 12, 64, 48)`. CIFAR nets: the paper-way torch modules of
//! `tools/reference_counts.py` (output in `tools/reference_counts.txt`), which round to the
//! paper's Table 2 (1.0M, 7.0M, 27.2M, 0.8M, 15.3M, 25.6M).

use densenet::densenet_yaml;

densenet_yaml!("specs/densenet121.yaml");
densenet_yaml!("specs/densenet161.yaml");
densenet_yaml!("specs/densenet169.yaml");
densenet_yaml!("specs/densenet201.yaml");
densenet_yaml!("specs/densenet264.yaml");
densenet_yaml!("specs/densenet40_k12.yaml");
densenet_yaml!("specs/densenet100_k12.yaml");
densenet_yaml!("specs/densenet100_k24.yaml");
densenet_yaml!("specs/densenet_bc100_k12.yaml");
densenet_yaml!("specs/densenet_bc250_k24.yaml");
densenet_yaml!("specs/densenet_bc190_k40.yaml");

#[test]
fn imagenet_counts_match_torchvision() {
    assert_eq!(DenseNet121::PARAMS, 7_978_856);
    assert_eq!(DenseNet121::BUFFERS, 83_648);
    assert_eq!(DenseNet121::MACS, 2_834_161_664);
    assert_eq!(DenseNet161::PARAMS, 28_681_000);
    assert_eq!(DenseNet161::BUFFERS, 219_936);
    assert_eq!(DenseNet161::MACS, 7_727_907_072);
    assert_eq!(DenseNet169::PARAMS, 14_149_480);
    assert_eq!(DenseNet169::BUFFERS, 158_400);
    assert_eq!(DenseNet169::MACS, 3_359_843_328);
    assert_eq!(DenseNet201::PARAMS, 20_013_928);
    assert_eq!(DenseNet201::BUFFERS, 229_056);
    assert_eq!(DenseNet201::MACS, 4_291_365_888);
    assert_eq!(DenseNet264::PARAMS, 33_337_704);
    assert_eq!(DenseNet264::BUFFERS, 398_528);
    for input in [DenseNet121::INPUT, DenseNet161::INPUT, DenseNet264::INPUT] {
        assert_eq!(input, [3, 224, 224]);
    }
    assert_eq!(DenseNet121::CLASSES, 1000);
}

#[test]
fn keras_totals_for_densenet121() {
    // keras.applications.DenseNet121(weights=None).summary() (Keras 3.15):
    // Total params: 8,062,504 / Trainable params: 7,978,856 / Non-trainable params: 83,648
    let text = DenseNet121::summary().to_string();
    assert!(
        text.contains("Total params: 8,062,504 (30.76 MB)"),
        "{text}"
    );
    assert!(
        text.contains("Trainable params: 7,978,856 (30.44 MB)"),
        "{text}"
    );
    assert!(
        text.contains("Non-trainable params: 83,648 (326.75 KB)"),
        "{text}"
    );
}

/// Rounds to the 0.1M the paper prints.
fn millions(params: u64) -> f64 {
    (params as f64 / 1e5).round() / 10.0
}

#[test]
fn cifar_counts_match_the_paper_and_torch() {
    // (model, exact count of the torch module, the paper's Table 2 figure)
    let cases = [
        (DenseNet40K12::PARAMS, 1_019_722, 1.0),
        (DenseNet100K12::PARAMS, 6_979_642, 7.0),
        (DenseNet100K24::PARAMS, 27_249_082, 27.2),
        (DenseNetBC100K12::PARAMS, 769_162, 0.8),
        (DenseNetBC250K24::PARAMS, 15_324_406, 15.3),
        (DenseNetBC190K40::PARAMS, 25_624_430, 25.6),
    ];
    for (ours, torch, paper) in cases {
        assert_eq!(ours, torch);
        assert_eq!(millions(ours), paper);
    }
    assert_eq!(DenseNet40K12::INPUT, [3, 32, 32]);
    assert_eq!(DenseNet40K12::CLASSES, 10);
    // Table 2's nets: 3 blocks of (L-4)/3 plain layers, or (L-4)/6 bottleneck layers.
    assert_eq!(&*DenseNet40K12::ARCHITECTURE.blocks, &[12, 12, 12]);
    assert_eq!(&*DenseNetBC100K12::ARCHITECTURE.blocks, &[16, 16, 16]);
    assert_eq!(&*DenseNetBC190K40::ARCHITECTURE.blocks, &[31, 31, 31]);
}

#[test]
fn layer_table_agrees_with_the_consts() {
    fn totals(layers: &[densenet::runtime::spec::LayerPlan]) -> (u64, u64, u64) {
        layers.iter().fold((0, 0, 0), |(p, b, m), l| {
            (p + l.params, b + l.buffers, m + l.macs)
        })
    }
    assert_eq!(
        totals(DenseNet121::layers()),
        (DenseNet121::PARAMS, DenseNet121::BUFFERS, DenseNet121::MACS)
    );
    assert_eq!(
        totals(DenseNetBC100K12::layers()),
        (
            DenseNetBC100K12::PARAMS,
            DenseNetBC100K12::BUFFERS,
            DenseNetBC100K12::MACS
        )
    );
    // Keras's DenseNet121 has these layers with these shapes (channels-last there).
    let layers = DenseNet121::layers();
    let find = |name: &str| layers.iter().find(|l| l.name == name).unwrap();
    assert_eq!(find("conv1_conv").output, [64, 112, 112]);
    assert_eq!(find("pool1").output, [64, 56, 56]);
    assert_eq!(find("conv2_block6_concat").output, [256, 56, 56]);
    assert_eq!(find("pool2_pool").output, [128, 28, 28]);
    assert_eq!(find("conv5_block16_concat").output, [1024, 7, 7]);
    assert_eq!(find("predictions").params, 1_025_000);
}
