//! What the macro generates: the struct's shape, its API, and forward passes of every
//! head on both stems.

use densenet::densenet;
use densenet::ndarray::Array4;
use densenet::runtime::Error;

densenet! {
    /// A small ImageNet-stem net (torchvision's test-sized config).
    pub Small<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, input: [3, 64, 64], classes: 10, theta: 0.5>;
    pub(crate) Pooled<growth: 4, blocks: [1, 1], stem: cifar, head: avg, input: [3, 16, 16]>;
    MaxPooled<growth: 4, blocks: [1, 1], stem: cifar, head: max, input: [1, 8, 8], bottleneck: false>;
    #[allow(dead_code)]
    Features<growth: 4, blocks: [2, 2], stem: cifar, head: none, input: [3, 16, 12], theta: 0.5>
}

fn input(n: usize, shape: [usize; 3]) -> Array4<f32> {
    Array4::from_shape_fn((n, shape[0], shape[1], shape[2]), |(n, c, h, w)| {
        ((n * 31 + c * 17 + h * 7 + w * 3) % 23) as f32 / 23.0 - 0.5
    })
}

#[test]
fn models_are_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Small>();
    check::<Pooled>();
    check::<MaxPooled>();
    check::<Features>();
}

#[test]
fn the_struct_mirrors_the_architecture() {
    let model = Small::init(0);
    // torchvision DenseNet(growth_rate=8, block_config=(2,3,4,2), num_init_features=16):
    // 42,058 parameters, 1,668 BN running-stat values (tools/reference_counts.txt).
    assert_eq!(Small::PARAMS, 42_058);
    assert_eq!(Small::BUFFERS, 1_668);
    assert_eq!(Small::OUTPUT, &[10]);
    assert_eq!(model.block1.layers().len(), 2);
    assert_eq!(model.block3.layers().len(), 4);
    // floor(0.5 * (16 + 2 * 8))
    assert_eq!(model.transition1.conv().c_out(), 16);
    // 16 -> block1 -> 32 -> transition -> 16 -> block2 -> 40 -> 20 -> block3 -> 52 -> 26 -> block4 -> 42
    assert_eq!(model.head.classifier().in_features(), 42);
}

#[test]
fn forward_gives_logits_and_predict_probabilities() {
    let model = Small::init(7);
    let x = input(3, Small::INPUT);
    let logits = model.forward(x.view()).unwrap();
    assert_eq!(logits.dim(), (3, 10));
    assert!(logits.iter().all(|v| v.is_finite()));
    let probs = model.predict(x.view()).unwrap();
    for row in probs.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
    // Images are independent: a batch gives each image's single-image result.
    let one = model
        .forward(x.slice(densenet::ndarray::s![1..2, .., .., ..]))
        .unwrap();
    for (a, b) in one.row(0).iter().zip(logits.row(1).iter()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn init_is_deterministic_per_seed() {
    let x = input(1, Small::INPUT);
    let a = Small::init(1).forward(x.view()).unwrap();
    let b = Small::init(1).forward(x.view()).unwrap();
    let c = Small::init(2).forward(x.view()).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn heads_return_their_shapes() {
    let pooled = Pooled::init(0)
        .forward(input(2, Pooled::INPUT).view())
        .unwrap();
    // Not BC (theta 1), so 16 stem channels -> 20 -> transition keeps 20 -> 24.
    assert_eq!(pooled.dim(), (2, 24));
    assert_eq!(Pooled::OUTPUT, &[24]);
    let maxed = MaxPooled::init(0)
        .forward(input(2, MaxPooled::INPUT).view())
        .unwrap();
    assert_eq!(maxed.dim(), (2, 16 + 4 + 4));
    // After ReLU, max pooling is never negative.
    assert!(maxed.iter().all(|&v| v >= 0.0));
    let features = Features::init(0)
        .forward(input(2, Features::INPUT).view())
        .unwrap();
    // BC, so 2k = 8 stem channels -> 16 -> 8 -> 16, at 16x12 then 8x6.
    assert_eq!(Features::OUTPUT, &[16, 8, 6]);
    assert_eq!(features.dim(), (2, 16, 8, 6));
}

#[test]
fn wrong_input_shape_is_an_error() {
    let model = Small::init(0);
    let err = model
        .forward(Array4::zeros((1, 3, 32, 32)).view())
        .unwrap_err();
    assert_eq!(
        err,
        Error::InputShape {
            expected: [3, 64, 64],
            actual: vec![1, 3, 32, 32]
        }
    );
    assert_eq!(
        err.to_string(),
        "input shape mismatch: expected (N, 3, 64, 64) (NCHW), got [1, 3, 32, 32]"
    );
}

#[test]
fn summary_lists_every_layer() {
    let text = Small::summary().to_string();
    assert!(text.starts_with("Model: \"Small\""));
    assert!(text.contains("conv5_block2_2_conv (Conv2D)"), "{text}");
    assert!(text.contains("predictions (Dense)"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("(Concatenate)")).count(),
        11
    );
}

/// The spec crate's golden files (`densenet-spec/tests/golden/`) are what a build script
/// gets from `Config`: they must compile against this crate and agree with the macro.
#[allow(dead_code)]
mod golden {
    pub mod bc100 {
        include!("../densenet-spec/tests/golden/densenet_bc100_k12.rs");
    }
    pub mod densenet121 {
        include!("../densenet-spec/tests/golden/densenet121.rs");
    }
    pub mod features {
        include!("../densenet-spec/tests/golden/features.rs");
    }
}

#[test]
fn golden_files_compile_and_agree_with_the_macro() {
    use golden::{bc100::DenseNetBC100K12, densenet121::DenseNet121, features};

    densenet! {
        // `features` in densenet-spec/tests/golden.rs, inline.
        GoldenFeatures<stem: cifar, growth: 6, blocks: [2, 3], bottleneck: false, head: none>
    }
    assert_eq!(DenseNetBC100K12::PARAMS, 769_162);
    assert_eq!(DenseNet121::PARAMS, 7_978_856);
    assert_eq!(DenseNet121::ARENA_FLOATS, 2_167_980);
    assert_eq!(features::Features::PARAMS, GoldenFeatures::PARAMS);
    assert_eq!(features::Features::MACS, GoldenFeatures::MACS);
    assert_eq!(features::Features::OUTPUT, GoldenFeatures::OUTPUT);
    assert_eq!(
        features::Features::arena_floats(3),
        GoldenFeatures::arena_floats(3)
    );
    let x = input(2, features::Features::INPUT);
    assert_eq!(
        features::Features::init(5).forward(x.view()).unwrap(),
        GoldenFeatures::init(5).forward(x.view()).unwrap()
    );
}
