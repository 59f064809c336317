//! Trains ShapesNet (`specs/shapes.yaml`) on a generated folder of four shapes
//! (`tools/shapes.rs`, seed 1, 150 images a class) and writes the weights the web
//! example embeds: `fixtures/shapes/shapesnet.safetensors`, with the class names in
//! `fixtures/shapes/labels.txt` and a test image, `examples/web/fixture.png`.
//!
//! ```sh
//! cargo run --release --example train_shapes     # ~1.5 minutes on 2 cores
//! ```

use std::path::PathBuf;

use densenet::densenet_yaml;
use densenet::runtime::image::{FolderConfig, ImageFolder};
use densenet::runtime::train::{
    evaluate, fit, AdamConfig, Augment, CosineConfig, FitConfig, Optimizer, Schedule,
};
use densenet::runtime::Rng;

#[path = "../tools/shapes.rs"]
mod shapes;

densenet_yaml!("specs/shapes.yaml");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = root.join("target/train_shapes");
    let _ = std::fs::remove_dir_all(&work);
    shapes::write_shapes_folder(&work.join("train"), 150, 32, 1)?;
    shapes::write_shapes_folder(&work.join("test"), 50, 32, 9)?;
    let config = |augment| FolderConfig {
        size: (32, 32),
        augment,
        cache: true,
        ..FolderConfig::default()
    };
    let train = ImageFolder::open(work.join("train"), config(Augment::Flip))?;
    let test = ImageFolder::open(work.join("test"), config(Augment::None))?;
    let mut model = ShapesNet::init(0);
    fit(
        &mut model,
        &train,
        &FitConfig {
            epochs: 25,
            batch_size: 32,
            optimizer: Optimizer::Adam(AdamConfig {
                lr: 3e-3,
                ..AdamConfig::default()
            }),
            schedule: Schedule::Cosine(CosineConfig::default()),
            progress: true,
            ..FitConfig::default()
        },
    )?;
    let result = evaluate(&model, &test, 100)?;
    println!(
        "test accuracy {:.1}% on {} images",
        100.0 * result.accuracy,
        result.total
    );
    let out = root.join("fixtures/shapes");
    std::fs::create_dir_all(&out)?;
    model.save_safetensors(out.join("shapesnet.safetensors"))?;
    std::fs::write(out.join("labels.txt"), shapes::CLASSES.join("\n") + "\n")?;
    // The web test's image: a disc drawn at 64x64 (the page resizes it as `densenet run`).
    let image = shapes::draw(1, 64, &mut Rng::new(2026));
    image.save(root.join("examples/web/fixture.png"))?;
    println!("wrote {}", out.display());
    Ok(())
}
