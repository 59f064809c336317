//! A CPU without the low-precision instructions: `Quantized` runs the same arithmetic
//! on the fp32 kernels (dequantized weights, each convolution input rounded as the
//! kernels round it, each value entering a dense block's buffer rounded to bf16 as the
//! kernels store it), with a notice, or refuses after `require_kernels`.
//!
//! One test function: the switches (`force_lowp_off`, `force_direct`) are
//! process-wide, so nothing else may run in this binary while they are on.
//!
//! The fallback does not emulate the bf16 Winograd path (a 3x3 with at least 64 input
//! channels, a multiple of 16, on a map at least 14 wide), which rounds its transformed
//! values to bf16: so the kernels are compared on the direct path (`force_direct`),
//! and the Winograd path's own distance to the fallback is bounded separately.

use densenet::densenet;
use densenet::runtime::kernels::direct_conv::force_direct;
use densenet::runtime::kernels::direct_conv::lowp::{force_avx_vnni, force_lowp_off, LowpIsa};
use densenet::runtime::ndarray::{Array4, ArrayD};
use densenet::runtime::precision::{CalibrationMethod, Precision, QuantizeError, Quantized};
use densenet::runtime::{DynamicModel, Model, Network, Rng};

densenet! {
    /// torchvision-style, DenseNet-B layers.
    Small<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// Plain layers (one 3x3 each), CIFAR stem.
    CifarPlain<growth: 12, blocks: [2, 3, 2], stem: cifar, bottleneck: false, classes: 10>
}

fn images(n: usize, [c, h, w]: [usize; 3], seed: u64) -> Array4<f32> {
    let mut rng = Rng::new(seed);
    Array4::from_shape_simple_fn((n, c, h, w), move || {
        (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    })
}

/// Largest absolute difference, relative to `b`'s largest magnitude.
fn relative_gap(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// The fallback's outputs against the kernels' and fp32's, for one model.
fn check<M: Network + Clone>(name: &str, model: &M, x: &Array4<f32>) {
    let int8 = Quantized::int8(model, std::slice::from_ref(x), CalibrationMethod::MinMax).unwrap();
    let bf16 = Quantized::bf16(model).unwrap();
    let fp32 = model.forward(x.view()).unwrap();
    let strict = int8.clone().require_kernels().unwrap();
    let bf16_winograd = bf16.forward(x.view()).unwrap();
    force_direct(true);
    let kernels = [
        int8.forward(x.view()).unwrap(),
        bf16.forward(x.view()).unwrap(),
    ];
    // AVX-VNNI's 256-bit kernel, where the CPU has it (Zen 4 has AVX512-VNNI only:
    // forced there, int8 would fall back to the fp32 kernels).
    force_avx_vnni(true);
    let avx_vnni =
        (Precision::Int8.isa() == Some(LowpIsa::AvxVnni)).then(|| int8.forward(x.view()).unwrap());
    force_avx_vnni(false);

    force_lowp_off(true);
    let notice = int8
        .fallback_notice()
        .expect("a notice when the kernels are off");
    assert!(
        notice.contains("int8") && notice.contains("fp32 kernels"),
        "{notice}"
    );
    assert!(bf16.fallback_notice().unwrap().contains("bf16"));
    assert!(matches!(
        strict.forward(x.view()),
        Err(QuantizeError::Unsupported {
            precision: Precision::Int8,
            ..
        })
    ));
    assert!(matches!(
        bf16.clone().require_kernels(),
        Err(QuantizeError::Unsupported {
            precision: Precision::Bf16,
            ..
        })
    ));
    assert!(int8.summary().to_string().contains("fallback"));
    let fallback = [
        int8.forward(x.view()).unwrap(),
        bf16.forward(x.view()).unwrap(),
    ];
    force_lowp_off(false);
    force_direct(false);

    assert!(int8.fallback_notice().is_none());
    for (precision, (kernel, fallback)) in
        ["int8", "bf16"].iter().zip(kernels.iter().zip(&fallback))
    {
        let same = relative_gap(fallback, kernel);
        let from_fp32 = relative_gap(kernel, &fp32);
        eprintln!(
            "{name} {precision}: fallback vs kernels {same:.2e}, kernels vs fp32 {from_fp32:.2e}"
        );
        // The same arithmetic up to accumulation order: far closer to the kernels
        // than fp32 is, so not silently the fp32 model. int8's fallback sums
        // dequantized products in f32 where the kernels sum integers, so a value the
        // order moves across a rounding tie (an input's u8 step, a block buffer's bf16
        // step) now and then changes by one step, and the step carries on to the
        // logits: `Small`'s int8 pair differs by one such cascade (2e-3, 7x below
        // its distance from fp32); bf16's rounds the same f32 sums and stays at 1e-7.
        if *precision == "int8" {
            assert!(
                same * 5.0 < from_fp32,
                "{name} {precision}: {same} vs {from_fp32}"
            );
        } else {
            assert!(same <= 1e-4, "{name} {precision}: {same}");
            assert!(
                same * 20.0 < from_fp32,
                "{name} {precision}: {same} vs {from_fp32}"
            );
        }
    }
    // AVX-VNNI's 256-bit kernel: the same arithmetic as AVX512-VNNI's.
    match avx_vnni {
        Some(avx_vnni) => assert!(relative_gap(&avx_vnni, &kernels[0]) <= 1e-5),
        None => eprintln!("{name}: no AVX-VNNI on this CPU, its kernel not compared"),
    }
    // The bf16 Winograd path: the fallback's arithmetic but for the rounding of the
    // transformed values, a gap of bf16's order, still well inside bf16's from fp32.
    let winograd = relative_gap(&bf16_winograd, &fallback[1]);
    let from_fp32 = relative_gap(&kernels[1], &fp32);
    eprintln!("{name} bf16 with Winograd: fallback vs kernels {winograd:.2e}");
    assert!(
        winograd <= 1e-3 && winograd * 4.0 < from_fp32,
        "{name} bf16 Winograd: {winograd} vs {from_fp32}"
    );
}

#[test]
fn the_fallback_computes_the_same_arithmetic_with_a_notice() {
    if !(Precision::Int8.available() && Precision::Bf16.available()) {
        eprintln!("skipped: this CPU lacks the kernels to compare the fallback with");
        return;
    }
    let small = Small::init(1);
    check("Small", &small, &images(2, Small::INPUT, 2));
    // A run-time model, with plain layers.
    let plain = DynamicModel::init(CifarPlain::ARCHITECTURE, 3).unwrap();
    check(
        "CifarPlain (dynamic)",
        &plain,
        &images(3, CifarPlain::INPUT, 4),
    );
}
