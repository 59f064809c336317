//! Weights inside the binary: the model's safetensors file is compiled in with
//! `include_bytes!` and loaded with `from_safetensors_bytes`, so the executable runs
//! with no files beside it.
//!
//! Run with `cargo run --release --example embedded`. It embeds the small torchvision
//! fixture (190 KB) and checks its logits against torchvision's; a DenseNet-121 file
//! (32 MB) embeds the same way (see docs/EMBEDDING.md for build time and size).

use densenet::densenet;
use densenet::ndarray::Array4;

densenet! {
    /// torchvision `DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16, num_classes=10)`.
    pub SmallNet<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>
}

/// The weights, in the binary.
static WEIGHTS: &[u8] = include_bytes!("../tests/fixtures/torchvision_small.safetensors");
/// An input batch and torchvision's logits for it, to show the numbers are the same.
static REFERENCE: &[u8] = include_bytes!("../tests/fixtures/torchvision_small.io.safetensors");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = SmallNet::from_safetensors_bytes(WEIGHTS)?;
    println!(
        "loaded {} parameters from {} embedded bytes",
        SmallNet::PARAMS,
        WEIGHTS.len()
    );

    // The reference file is safetensors too; read it with the same loader's format.
    let (input, torchvision) = reference()?;
    let logits = model.forward(input.view())?;
    let diff = logits
        .iter()
        .zip(&torchvision)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    for (i, row) in logits.rows().into_iter().enumerate() {
        let best = row
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (c, &v)| if v > b.1 { (c, v) } else { b });
        println!("image {i}: class {} (logit {:.4})", best.0, best.1);
    }
    println!("max |ours - torchvision| = {diff:.2e}");
    Ok(())
}

/// The fixture's `input` (NCHW) and `output` (torchvision logits) tensors.
fn reference() -> Result<(Array4<f32>, Vec<f32>), Box<dyn std::error::Error>> {
    let file = safetensors::SafeTensors::deserialize(REFERENCE)?;
    let floats = |name: &str| -> Result<(Vec<usize>, Vec<f32>), Box<dyn std::error::Error>> {
        let view = file.tensor(name)?;
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        Ok((view.shape().to_vec(), values.collect()))
    };
    let (shape, input) = floats("input")?;
    let input = Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), input)?;
    Ok((input, floats("output")?.1))
}
