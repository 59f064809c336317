//! Fine-tuning, as in Keras: a pretrained DenseNet backbone, a new head for your own
//! classes, the base frozen for a few epochs, then unfrozen and fine-tuned at a low
//! rate, on a folder of images with augmentation, with checkpoints you can resume.
//!
//! Offline by default: the "pretrained" backbone is a small DenseNet trained here on a
//! task of its own (four kinds of shapes, `tools/shapes.rs`), and the task to fine-tune
//! it for is a small folder of three of them, drawn anew. Given a DenseNet-121 file
//! (torchvision/timm or Keras naming), the backbone is DenseNet-121 instead, at 64x64:
//!
//! ```sh
//! cargo run --release --example fine_tune
//! cargo run --release --example fine_tune -- densenet121.safetensors
//! ```
//!
//! Everything is written under `target/fine_tune/`.

use std::path::{Path, PathBuf};

use densenet::densenet;
use densenet::runtime::image::{FolderConfig, ImageFolder};
use densenet::runtime::train::{
    fit, split, AdamConfig, Augment, CosineConfig, EarlyStopping, FitConfig, Freeze, Monitor,
    Optimizer, Schedule, Source,
};
use densenet::runtime::weights::PartialLoad;
use densenet::runtime::{Model, Network};

#[path = "../tools/shapes.rs"]
mod shapes;

densenet! {
    /// The backbone's own task: four kinds of shapes, 32x32.
    ShapesNet<input: [3, 32, 32], stem: cifar, growth: 8, blocks: [3, 3, 3], init_features: 16, theta: 0.5, bottleneck: 4, classes: 4>;
    /// The same backbone with a new head for the three classes of the task at hand.
    ThreeShapes<input: [3, 32, 32], stem: cifar, growth: 8, blocks: [3, 3, 3], init_features: 16, theta: 0.5, bottleneck: 4, classes: 3>;
    /// DenseNet-121 with a 3-class head, on 64x64 images (with a weights file).
    DenseNet121x64<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5, input: [3, 64, 64], classes: 3>
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fine_tune");
    let pretrained = std::env::args().nth(1).map(PathBuf::from);
    let size = if pretrained.is_some() { 64 } else { 32 };

    // The task: 40 images per class of three classes (a folder per class, as Keras's
    // `image_dataset_from_directory` reads it), and 100 per class to test on.
    let task = work.join(format!("task-{size}"));
    let test = work.join(format!("test-{size}"));
    for (dir, per_class, seed) in [(&task, 40, 7), (&test, 100, 8)] {
        if !dir.exists() {
            shapes::write_shapes_folder(dir, per_class, size, seed)?;
            std::fs::remove_dir_all(dir.join("cross"))?; // three of the four shapes
        }
    }
    let folder = |dir: &Path, augment| {
        ImageFolder::open(
            dir,
            FolderConfig {
                size: (size, size),
                augment,
                cache: true,
                ..FolderConfig::default() // Keras's "torch" preprocess_input mode
            },
        )
    };
    // Horizontal flips keep a shape's class.
    let images = folder(&task, Augment::Flip)?;
    let (train, val) = split(&images, 0.25, 0)?; // validation_split=0.25
    let test = folder(&test, Augment::None)?;
    println!(
        "task: {} images of {:?} ({} to train on, {} to validate), {} to test",
        images.len(),
        images.class_names().unwrap_or_default(),
        train.len(),
        val.len(),
        test.len()
    );

    match pretrained {
        Some(file) => {
            // base = DenseNet121(include_top=False, pooling='avg') under a new head.
            let mut model = DenseNet121x64::init(0);
            let report = model.load_partial_file(&file, &PartialLoad::backbone())?;
            println!("{}: {report}", file.display());
            fine_tune(&mut model, &train, &val, &test, &work.join("densenet121"))?;
        }
        None => {
            let backbone = work.join("backbone.safetensors");
            if !backbone.exists() {
                pretrain(&work, &backbone)?;
            }
            let mut model = ThreeShapes::init(0);
            let report = model.load_partial_file(&backbone, &PartialLoad::backbone())?;
            println!("{}: {report}", backbone.display());
            fine_tune(&mut model, &train, &val, &test, &work.join("shapes"))?;

            // For comparison: the same budget from scratch, no pretraining.
            let mut scratch = ThreeShapes::init(0);
            let config = FitConfig {
                epochs: 10,
                batch_size: 16,
                optimizer: Optimizer::Adam(AdamConfig::default()),
                schedule: Schedule::Cosine(CosineConfig::default()),
                ..FitConfig::default()
            };
            fit(&mut scratch, &train, &config)?;
            let accuracy = scratch.evaluate(&test, 100)?.accuracy;
            println!(
                "from scratch, same epochs: test accuracy {:.1}%",
                100.0 * accuracy
            );
        }
    }
    Ok(())
}

/// Keras's two-phase recipe: train the new head on a frozen base, then unfreeze
/// everything and fine-tune at a tenth of the rate, with the same optimiser settings,
/// early stopping and the best epoch kept.
fn fine_tune<M: Model>(
    model: &mut M,
    train: &dyn Source,
    val: &dyn Source,
    test: &dyn Source,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(out);
    // base.trainable = False; model.fit(train, epochs=4, validation_data=val)
    let head = FitConfig {
        epochs: 4,
        batch_size: 16,
        optimizer: Optimizer::Adam(AdamConfig {
            lr: 3e-3,
            ..AdamConfig::default()
        }),
        schedule: Schedule::Constant,
        freeze: Freeze::backbone(),
        validation: Some(val),
        checkpoint_dir: Some(out.join("head")),
        progress: true,
        ..FitConfig::default()
    };
    fit(model, train, &head)?;
    let accuracy = model.evaluate(test, 100)?.accuracy;
    println!("head only: test accuracy {:.1}%", 100.0 * accuracy);

    // base.trainable = True; recompile with a low rate; fit with
    // callbacks=[EarlyStopping(patience=3, restore_best_weights=True), ModelCheckpoint(save_best_only=True)]
    let all = FitConfig {
        epochs: 6,
        optimizer: Optimizer::Adam(AdamConfig {
            lr: 3e-4,
            ..AdamConfig::default()
        }),
        schedule: Schedule::Cosine(CosineConfig::default()),
        freeze: Freeze::none(),
        checkpoint_dir: Some(out.join("all")),
        save_best: Some(Monitor::ValLoss),
        early_stopping: Some(EarlyStopping {
            monitor: Monitor::ValLoss,
            patience: 3,
            restore_best: true,
            ..EarlyStopping::default()
        }),
        ..head
    };
    let history = fit(model, train, &all)?;
    history.save_csv(out.join("history.csv"))?;
    // The model to ship (weights only; the checkpoints also hold the optimiser's state).
    model.save_safetensors(out.join("fine_tuned.safetensors"))?;
    let result = model.evaluate(test, 100)?;
    println!(
        "fine-tuned: test accuracy {:.1}% (top-{} {:.1}%), {} epochs; model and checkpoints \
         in {}",
        100.0 * result.accuracy,
        result.top_k,
        100.0 * result.top_k_accuracy,
        history.epochs.len(),
        out.display()
    );
    Ok(())
}

/// Trains the backbone on its own task, 100 images per class of all four shapes, and
/// saves it: what downloading ImageNet weights stands for here.
fn pretrain(work: &Path, backbone: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let dir = work.join("pretrain");
    if !dir.exists() {
        shapes::write_shapes_folder(&dir, 150, 32, 1)?;
    }
    let images = ImageFolder::open(
        &dir,
        FolderConfig {
            size: (32, 32),
            augment: Augment::Flip,
            cache: true,
            ..FolderConfig::default()
        },
    )?;
    println!(
        "pretraining the backbone on {} images of four shapes",
        images.len()
    );
    let mut model = ShapesNet::init(0);
    let config = FitConfig {
        epochs: 25,
        batch_size: 32,
        optimizer: Optimizer::Adam(AdamConfig {
            lr: 3e-3,
            ..AdamConfig::default()
        }),
        schedule: Schedule::Cosine(CosineConfig::default()),
        progress: true,
        ..FitConfig::default()
    };
    let history = fit(&mut model, &images, &config)?;
    println!(
        "backbone: training accuracy {:.1}% ({} parameters)",
        100.0 * history.last().map_or(0.0, |e| e.train_accuracy),
        model.plan().params
    );
    model.save_safetensors(backbone)?;
    Ok(())
}
