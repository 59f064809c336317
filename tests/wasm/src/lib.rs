//! The runtime inside WebAssembly: three fixture models (torchvision, the paper's CIFAR
//! DenseNet-BC, Keras) with their weights and reference logits compiled in, checked by
//! `run.mjs` under Node.js through a plain `extern "C"` API (no bindings generator).
//!
//! ```sh
//! cargo build -p densenet-wasm-test --target wasm32-unknown-unknown --release
//! node tests/wasm/run.mjs target/wasm32-unknown-unknown/release/densenet_wasm_test.wasm
//! ```
//!
//! The same functions run on the host as this crate's tests, so a difference between
//! the two is the platform's, not the check's.

use densenet::densenet;
use densenet::ndarray::{Array2, Array4, Ix2};
use densenet::runtime::Model;
use safetensors::SafeTensors;

densenet! {
    /// torchvision `DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16)`.
    TorchvisionSmall<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// The paper's CIFAR DenseNet-BC, L = 40, k = 12.
    CifarBC<depth: 40, growth: 12, theta: 0.5, stem: cifar, classes: 10>;
    /// Keras `DenseNet(blocks=[1, 2, 2, 1], input_shape=(64, 64, 3), classes=10)`.
    KerasSmall<growth: 32, blocks: [1, 2, 2, 1], theta: 0.5, input: [3, 64, 64], classes: 10, eps: 1.001e-5>
}

/// The fixtures: weights, then the input batch and the framework's logits.
const FIXTURES: [(&[u8], &[u8]); 3] = [
    (
        include_bytes!("../../fixtures/torchvision_small.safetensors"),
        include_bytes!("../../fixtures/torchvision_small.io.safetensors"),
    ),
    (
        include_bytes!("../../fixtures/cifar_bc.safetensors"),
        include_bytes!("../../fixtures/cifar_bc.io.safetensors"),
    ),
    (
        include_bytes!("../../fixtures/keras_small.safetensors"),
        include_bytes!("../../fixtures/keras_small.io.safetensors"),
    ),
];

/// A float32 tensor of a safetensors file, with its shape.
fn tensor(file: &SafeTensors<'_>, key: &str) -> Option<(Vec<usize>, Vec<f32>)> {
    let view = file.tensor(key).ok()?;
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some((view.shape().to_vec(), values))
}

/// Fixture `index`'s input batch (NCHW) and the framework's logits.
fn io(index: usize) -> Option<(Array4<f32>, Array2<f32>)> {
    let file = SafeTensors::deserialize(FIXTURES.get(index)?.1).ok()?;
    let (xs, x) = tensor(&file, "input")?;
    let (ys, y) = tensor(&file, "output")?;
    Some((
        Array4::from_shape_vec((xs[0], xs[1], xs[2], xs[3]), x).ok()?,
        Array2::from_shape_vec((ys[0], ys[1]), y).ok()?,
    ))
}

/// Fixture `index`'s model with its weights.
fn model(index: usize) -> Option<Box<dyn Model>> {
    let weights = FIXTURES.get(index)?.0;
    Some(match index {
        0 => Box::new(TorchvisionSmall::from_safetensors_bytes(weights).ok()?),
        1 => Box::new(CifarBC::from_safetensors_bytes(weights).ok()?),
        _ => Box::new(KerasSmall::from_safetensors_bytes(weights).ok()?),
    })
}

/// Our logits for fixture `index`'s input.
fn logits(index: usize) -> Option<Array2<f32>> {
    let (x, _) = io(index)?;
    model(index)?
        .forward(x.view())
        .ok()?
        .into_dimensionality::<Ix2>()
        .ok()
}

/// Number of fixtures.
#[no_mangle]
pub extern "C" fn fixtures() -> u32 {
    FIXTURES.len() as u32
}

/// `max |ours − framework's| / max(1, max |framework's|)` over fixture `index`'s logits
/// (the tests' parity measure; 1e-4 is the bar), or −1 if the fixture cannot be run.
#[no_mangle]
pub extern "C" fn parity(index: u32) -> f32 {
    let index = index as usize;
    let (Some(ours), Some((_, theirs))) = (logits(index), io(index)) else {
        return -1.0;
    };
    let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&theirs)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// Runs fixture `index`'s model `iterations` times on its input (for timing from the
/// host); returns the first logit of the last pass, or NaN if it cannot run.
#[no_mangle]
pub extern "C" fn forward(index: u32, iterations: u32) -> f32 {
    let index = index as usize;
    let (Some(model), Some((x, _))) = (model(index), io(index)) else {
        return f32::NAN;
    };
    let mut first = f32::NAN;
    for _ in 0..iterations {
        first = model
            .forward(x.view())
            .ok()
            .and_then(|y| y.iter().next().copied())
            .unwrap_or(f32::NAN);
    }
    first
}

/// Whether the direct convolution kernels run in this build (SIMD128 in a wasm32 build
/// with `target-feature=+simd128`; AVX-512 or AVX2 on an x86-64 host): 1 or 0.
#[no_mangle]
pub extern "C" fn kernels() -> u32 {
    u32::from(densenet_runtime::kernels::direct_conv::available())
}

/// The direct convolution against its plain-loop oracle on shapes that reach every tile
/// size, partial vector and weight layout: `1x1` with a BatchNorm-ReLU prologue and
/// epilogue, `3x3` over a padded input, outputs written into a wider buffer. Returns the
/// largest `|kernel − oracle| / (√k · max(1, |oracle|))` (k the dot products' length;
/// the host tests allow 1e-5), −1 if the kernels do not run here, −2 if they declined a
/// shape.
#[no_mangle]
pub extern "C" fn kernel_check() -> f32 {
    use densenet_runtime::kernels::direct_conv::{
        direct_conv, direct_conv_reference, ConvShape, ConvWeight, Epilogue, ImageLayout,
        PackedWeight,
    };
    if kernels() == 0 {
        return -1.0;
    }
    let mut rng = densenet::runtime::Rng::new(5);
    let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal()).collect() };
    let mut worst = 0.0f32;
    for (case, &(n, out_w, c_in, c_out, kernel)) in [
        (1, 9, 16, 1, 1),
        (2, 7, 24, 3, 1),
        (1, 13, 8, 5, 1),
        (3, 6, 12, 8, 1),
        (1, 15, 40, 12, 3),
        (2, 5, 20, 40, 3),
        (1, 11, 64, 64, 1),
        (1, 8, 7, 33, 3),
    ]
    .iter()
    .enumerate()
    {
        let shape = ConvShape {
            n,
            out_h: out_w - 1,
            out_w,
            c_in,
            c_out,
            kernel_h: kernel,
            kernel_w: kernel,
            stride: 1,
        };
        let (in_h, in_w) = (shape.out_h + kernel - 1, out_w + kernel - 1);
        let input_layout = ImageLayout::dense(in_h, in_w, c_in);
        let input = random(n * in_h * in_w * c_in);
        let weight = random(kernel * kernel * c_in * c_out);
        let (scale, shift) = (random(c_out), random(c_out));
        let (pro_scale, pro_shift) = (random(c_in), random(c_in));
        // 1x1: prologue and epilogue; 3x3: neither (as DenseNet's layers have them).
        let (prologue, epilogue) = if kernel == 1 {
            (
                Epilogue::ScaleShiftRelu {
                    scale: &pro_scale,
                    shift: &pro_shift,
                },
                Epilogue::ScaleShiftRelu {
                    scale: &scale,
                    shift: &shift,
                },
            )
        } else {
            (Epilogue::Store, Epilogue::Store)
        };
        // Output channels are columns `3 ..` of a buffer 5 wider (a block buffer).
        let stride = c_out + 5;
        let out_layout = ImageLayout {
            offset: 3,
            image_stride: shape.out_h * out_w * stride,
            row_stride: out_w * stride,
            pixel_stride: stride,
        };
        let sentinel = random(3 + n * out_layout.image_stride);
        let mut expected = sentinel.clone();
        direct_conv_reference(
            &input,
            input_layout,
            prologue,
            &weight,
            shape,
            epilogue,
            &mut expected,
            out_layout,
        );
        let packed = PackedWeight::from_hwio(&weight, kernel * kernel * c_in, c_out);
        for weight in [ConvWeight::Hwio(&weight), ConvWeight::Packed(&packed)] {
            let mut actual = sentinel.clone();
            let parallel = case % 2 == 0;
            if !direct_conv(
                &input,
                input_layout,
                prologue,
                weight,
                shape,
                epilogue,
                &mut actual,
                out_layout,
                parallel,
            ) {
                return -2.0;
            }
            let k = ((kernel * kernel * c_in) as f32).sqrt();
            for (&e, &a) in expected.iter().zip(&actual) {
                worst = worst.max((e - a).abs() / (k * e.abs().max(1.0)));
            }
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixture_matches_its_framework_on_the_host() {
        for index in 0..fixtures() {
            let d = parity(index);
            assert!((0.0..=1e-4).contains(&d), "fixture {index}: {d}");
            assert!(forward(index, 1).is_finite());
        }
        assert_eq!(parity(7), -1.0);
        // On an x86-64 host with AVX-512 or AVX2, the same check of those kernels.
        if kernels() == 1 {
            let worst = kernel_check();
            assert!((0.0..=1e-5).contains(&worst), "{worst}");
        }
    }
}
