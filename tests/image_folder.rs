//! `ImageFolder` on the generated shapes folder (`tools/shapes.rs`): classes, order,
//! batches, thread-count independence, augmentation, caching, every typed error; and the
//! Keras `preprocess_input` modes against Keras itself.

use std::fs;
use std::path::{Path, PathBuf};

use densenet::runtime::image::{
    FolderConfig, ImageFolder, Normalization, Preprocessing, Resize, Unreadable,
};
use densenet::runtime::ndarray::{s, Array3, Array4, Axis};
use densenet::runtime::train::{evaluate, fit, AdamConfig, FitConfig, Optimizer, Schedule};
use densenet::runtime::train::{image_rng, split, Augment, Batch, Source};
use densenet::runtime::TrainError;

#[path = "../tools/shapes.rs"]
mod shapes;

densenet::densenet! {
    /// A small DenseNet for the 16x16 shapes.
    TinyShapes<input: [3, 16, 16], stem: cifar, growth: 8, blocks: [2, 2], init_features: 16, theta: 0.5, classes: 4>
}

/// A temporary directory, unique to the test, removed when dropped (also on failure).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "densenet-image-folder-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const PER_CLASS: usize = 6;

/// The shapes folder: 4 classes x 6 images of 32x32, seed 5.
fn shapes_folder(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    let files = shapes::write_shapes_folder(&dir.0, PER_CLASS, 32, 5).unwrap();
    assert_eq!(files.len(), 4 * PER_CLASS);
    dir
}

fn config() -> FolderConfig {
    FolderConfig {
        size: (32, 32),
        ..FolderConfig::default()
    }
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// A file's pixels as decoded by the `image` crate, CHW, in 0..=255.
fn decoded(path: &Path) -> Array3<f32> {
    let image = image::open(path).unwrap().to_rgb8();
    let (w, h) = image.dimensions();
    Array3::from_shape_fn((3, h as usize, w as usize), |(c, y, x)| {
        f32::from(image.get_pixel(x as u32, y as u32)[c])
    })
}

#[test]
fn a_generated_folder_opens_with_sorted_classes_and_files() {
    let dir = shapes_folder("open");
    let folder = ImageFolder::open(&dir.0, config()).unwrap();
    assert_eq!(folder.class_names().unwrap(), shapes::CLASSES);
    assert_eq!((folder.len(), folder.classes()), (24, 4));
    assert_eq!(folder.image_shape(), [3, 32, 32]);
    assert_eq!(folder.class_counts(), [PER_CLASS; 4]);
    // Label order: class by class, each class's files by name.
    let root = &dir.0;
    let expected: Vec<PathBuf> = shapes::CLASSES
        .iter()
        .flat_map(|class| {
            (0..PER_CLASS).map(move |i| {
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                root.join(class).join(format!("{class}_{i:04}.{ext}"))
            })
        })
        .collect();
    assert_eq!(folder.files(), expected);
    assert_eq!(folder.label(7), Some(1));
    assert_eq!(folder.label(24), None);

    // An evaluation batch of 32x32 images is the decoded pixels, normalised: for PNG
    // (lossless) exactly the file's values; Keras "tf" mode is x / 127.5 - 1.
    let tf = ImageFolder::open(
        &dir.0,
        FolderConfig {
            normalization: Normalization::Tf,
            ..config()
        },
    )
    .unwrap();
    let batch = tf.batch(&[12, 0, 6], None).unwrap();
    assert_eq!(batch.labels, [2, 0, 1]);
    assert_eq!(batch.images.dim(), (3, 3, 32, 32));
    for (pos, &i) in [12usize, 0, 6].iter().enumerate() {
        let expected = decoded(&tf.files()[i]).mapv(|x| x / 127.5 - 1.0);
        assert_eq!(batch.images.index_axis(Axis(0), pos), expected);
    }
    assert!(matches!(
        tf.batch(&[3, 24], None),
        Err(TrainError::IndexOutOfRange { index: 24, len: 24 })
    ));
    assert!(matches!(tf.batch(&[], None), Err(TrainError::EmptyDataset)));
}

#[test]
fn batches_are_the_same_for_any_thread_count_and_seeded() {
    let dir = shapes_folder("threads");
    let folder = ImageFolder::open(
        &dir.0,
        FolderConfig {
            augment: Augment::cifar(),
            ..config()
        },
    )
    .unwrap();
    let indices: Vec<usize> = (0..24).rev().step_by(2).collect();
    let batch = |threads, augment| in_pool(threads, || folder.batch(&indices, augment).unwrap());
    let one = batch(1, Some(9));
    assert_eq!(one, batch(2, Some(9)));
    assert_eq!(batch(1, None), batch(2, None));
    assert_ne!(one, batch(1, Some(10)));
    assert_ne!(one, batch(1, None));

    // Image i of a training batch is the evaluation image transformed by
    // image_rng(seed, i): a flip commutes with the per-pixel normalisation, exactly.
    let flip = ImageFolder::open(
        &dir.0,
        FolderConfig {
            augment: Augment::Flip,
            ..config()
        },
    )
    .unwrap();
    let plain = flip.batch(&indices, None).unwrap();
    let flipped = flip.batch(&indices, Some(3)).unwrap();
    let mut mirrored = 0;
    for pos in 0..indices.len() {
        let expected = Augment::Flip
            .apply(
                plain.images.index_axis(Axis(0), pos),
                &mut image_rng(3, pos),
            )
            .unwrap();
        assert_eq!(flipped.images.index_axis(Axis(0), pos), expected);
        if expected != plain.images.index_axis(Axis(0), pos) {
            mirrored += 1;
        }
    }
    assert!((1..indices.len()).contains(&mirrored), "{mirrored}");
}

#[test]
fn caching_gives_the_streamed_batches() {
    let dir = shapes_folder("cache");
    let augment = Augment::imagenet();
    let streamed = ImageFolder::open(
        &dir.0,
        FolderConfig {
            augment,
            ..config()
        },
    )
    .unwrap();
    let cached = ImageFolder::open(
        &dir.0,
        FolderConfig {
            augment,
            cache: true,
            ..config()
        },
    )
    .unwrap();
    let indices = [5, 7, 17, 0, 7, 23]; // 7 is a disc
    let first: Batch = cached.batch(&indices, Some(1)).unwrap();
    assert_eq!(first, streamed.batch(&indices, Some(1)).unwrap());
    // From the cache now: the files may even be gone.
    fs::remove_dir_all(dir.0.join("disc")).unwrap();
    assert_eq!(cached.batch(&indices, Some(1)).unwrap(), first);
    assert_eq!(
        cached.batch(&[0, 5], None).unwrap(),
        streamed.batch(&[0, 5], None).unwrap()
    );
    assert!(matches!(
        streamed.batch(&[7], None),
        Err(TrainError::UnreadableImage { .. })
    ));
}

#[test]
fn split_keeps_class_proportions_and_names() {
    let dir = shapes_folder("split");
    let folder = ImageFolder::open(&dir.0, config()).unwrap();
    let (train, val) = split(&folder, 1.0 / 3.0, 4).unwrap();
    assert_eq!((train.len(), val.len()), (16, 8));
    let mut per_class = [0; 4];
    for i in 0..val.len() {
        per_class[val.label(i).unwrap()] += 1;
    }
    assert_eq!(per_class, [2; 4]);
    assert_eq!(val.class_names(), folder.class_names());
    let batch = val.batch(&[1, 0], None).unwrap();
    let direct = folder
        .batch(&[val.indices()[1], val.indices()[0]], None)
        .unwrap();
    assert_eq!(batch, direct);
}

#[test]
fn hidden_and_other_files_are_ignored_and_extensions_case_insensitive() {
    let dir = TempDir::new("listing");
    shapes::write_shapes_folder(&dir.0, 2, 16, 1).unwrap();
    let disc = dir.0.join("disc");
    let png = disc.join("disc_0000.png");
    fs::copy(&png, disc.join("UPPER.PNG")).unwrap();
    fs::copy(&png, disc.join(".hidden.png")).unwrap();
    fs::write(disc.join("notes.txt"), "not an image").unwrap();
    fs::create_dir_all(disc.join("nested")).unwrap();
    fs::copy(&png, disc.join("nested").join("a.jpeg")).unwrap(); // PNG bytes, .jpeg name
    fs::create_dir_all(dir.0.join(".git")).unwrap();
    fs::copy(&png, dir.0.join(".git").join("x.png")).unwrap();
    fs::write(dir.0.join("README.txt"), "a file at the top is not a class").unwrap();
    let folder = ImageFolder::open(
        &dir.0,
        FolderConfig {
            size: (16, 16),
            ..FolderConfig::default()
        },
    )
    .unwrap();
    assert_eq!(folder.classes(), 4);
    assert_eq!(folder.class_counts(), [2, 4, 2, 2]);
    // A class's files by name (uppercase sorts first), then its sub-folders'.
    let names: Vec<_> = folder.files()[2..6]
        .iter()
        .map(|p| p.strip_prefix(&disc).unwrap().to_path_buf())
        .collect();
    let expected = [
        "UPPER.PNG",
        "disc_0000.png",
        "disc_0001.jpg",
        "nested/a.jpeg",
    ];
    assert_eq!(names, expected.map(PathBuf::from));
    // Decoding goes by content, not by name.
    let batch = folder.batch(&[2, 5], None).unwrap();
    assert_eq!(
        batch.images.index_axis(Axis(0), 0),
        batch.images.index_axis(Axis(0), 1)
    );
}

#[test]
fn resizing_covers_the_size_then_crops_the_centre() {
    let dir = TempDir::new("resize");
    let class = dir.0.join("only");
    fs::create_dir_all(&class).unwrap();
    // 40 wide, 20 high: pixel (x, y) = (6x, 12y, 100).
    let wide =
        image::RgbImage::from_fn(40, 20, |x, y| image::Rgb([6 * x as u8, 12 * y as u8, 100]));
    wide.save(class.join("wide.png")).unwrap();
    let raw = raw();
    let open = |size, resize| {
        ImageFolder::open(
            &dir.0,
            FolderConfig {
                size,
                resize,
                normalization: raw,
                ..FolderConfig::default()
            },
        )
        .unwrap()
        .batch(&[0], None)
        .unwrap()
        .images
    };
    let pixels = |image: &image::RgbImage, left: u32, top: u32, w: u32, h: u32| {
        Array4::from_shape_fn((1, 3, h as usize, w as usize), |(_, c, y, x)| {
            f32::from(image.get_pixel(left + x as u32, top + y as u32)[c])
        })
    };
    let close = |a: &Array4<f32>, b: &Array4<f32>| {
        assert_eq!(a.dim(), b.dim());
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        // MeanStd with std 1/255 reproduces the integers to within float rounding.
        assert!(worst < 1e-3, "max difference {worst}");
    };
    // Exact size: the file's pixels.
    close(&open((20, 40), Resize::Exact), &pixels(&wide, 0, 0, 40, 20));
    // Cover 16x16: scale by max(16/20, 16/40) = 0.8 to 32x16, then columns 8..24.
    let covered = image::imageops::resize(&wide, 32, 16, image::imageops::FilterType::Triangle);
    close(
        &open((16, 16), Resize::Cover),
        &pixels(&covered, 8, 0, 16, 16),
    );
    // Shorter side 18, crop 16x16: 36x18, columns 10..26 and rows 1..17.
    let shorter = image::imageops::resize(&wide, 36, 18, image::imageops::FilterType::Triangle);
    close(
        &open((16, 16), Resize::ShorterSide(18)),
        &pixels(&shorter, 10, 1, 16, 16),
    );
}

/// A normalisation that keeps pixel values (up to rounding): x / 255 / (1 / 255).
fn raw() -> Normalization {
    Normalization::MeanStd {
        mean: [0.0; 3],
        std: [1.0 / 255.0; 3],
    }
}

#[test]
fn bad_folders_and_files_are_typed_errors() {
    let dir = TempDir::new("errors");
    let missing = dir.0.join("missing");
    match ImageFolder::open(&missing, config()) {
        Err(TrainError::Folder { path, source }) => {
            assert_eq!(
                (path, source.kind()),
                (missing, std::io::ErrorKind::NotFound)
            );
        }
        other => panic!("{other:?}"),
    }
    let file = dir.0.join("file.png");
    fs::write(&file, b"x").unwrap();
    assert!(
        matches!(ImageFolder::open(&file, config()), Err(TrainError::NotAFolder { path }) if path == file)
    );
    // Only a file and a hidden folder: no classes.
    fs::create_dir_all(dir.0.join(".cache")).unwrap();
    let err = ImageFolder::open(&dir.0, config()).unwrap_err();
    assert!(
        matches!(&err, TrainError::NoClassFolders { path } if *path == dir.0),
        "{err:?}"
    );

    shapes::write_shapes_folder(&dir.0.join("data"), 2, 32, 0).unwrap();
    let data = dir.0.join("data");
    let empty = data.join("empty");
    fs::create_dir_all(&empty).unwrap();
    fs::write(empty.join("readme.txt"), "no images").unwrap();
    let err = ImageFolder::open(&data, config()).unwrap_err();
    match &err {
        TrainError::EmptyClass { class, path } => {
            assert_eq!((class.as_str(), path), ("empty", &empty))
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("`empty`"), "{err}");
    fs::remove_dir_all(&empty).unwrap();

    // A corrupt file: an error naming it, or skipped and counted once.
    let corrupt = data.join("disc").join("corrupt.png");
    fs::write(&corrupt, b"\x89PNG\r\n\x1a\n not really").unwrap();
    let strict = ImageFolder::open(&data, config()).unwrap();
    assert_eq!(strict.len(), 9);
    let index = strict.files().iter().position(|p| *p == corrupt).unwrap();
    match strict.batch(&[0, index], None) {
        Err(TrainError::UnreadableImage { path, reason }) => {
            assert_eq!(path, corrupt);
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let lenient = ImageFolder::open(
        &data,
        FolderConfig {
            unreadable: Unreadable::Skip,
            ..config()
        },
    )
    .unwrap();
    for _ in 0..2 {
        let batch = lenient.batch(&[0, index, 1], Some(4)).unwrap();
        assert_eq!(batch.labels, [0, 0]);
        assert_eq!(batch.images.dim().0, 2);
    }
    assert_eq!(lenient.skipped(), 1);
    assert_eq!(lenient.skipped_files(), [corrupt.as_path()]);
    assert_eq!(lenient.batch(&[index], None).unwrap().len(), 0);
    fs::remove_file(&corrupt).unwrap();

    // Exact-size mode: a 32x32 image in a folder of 24x30 names both sizes.
    let exact = ImageFolder::open(
        &data,
        FolderConfig {
            size: (24, 30),
            resize: Resize::Exact,
            ..config()
        },
    )
    .unwrap();
    match exact.batch(&[3], None) {
        Err(TrainError::ImageSize {
            path,
            expected,
            actual,
        }) => {
            assert_eq!(path, exact.files()[3]);
            assert_eq!((expected, actual), ([24, 30], [32, 32]));
        }
        other => panic!("{other:?}"),
    }

    // Settings are checked when the folder opens.
    let bad = [
        FolderConfig {
            size: (0, 32),
            ..config()
        },
        FolderConfig {
            resize: Resize::ShorterSide(31),
            ..config()
        },
        FolderConfig {
            normalization: Normalization::MeanStd {
                mean: [0.0; 3],
                std: [1.0, 0.0, 1.0],
            },
            ..config()
        },
        FolderConfig {
            augment: Augment::RandomResizedCrop {
                scale: (0.5, 2.0),
                ratio: (1.0, 1.0),
                flip: false,
            },
            ..config()
        },
    ];
    for config in bad {
        assert!(
            matches!(
                ImageFolder::open(&data, config),
                Err(TrainError::Setting { .. })
            ),
            "{config:?}"
        );
    }
}

/// The fixture's tensor `name` as f32 values (HWC).
fn fixture_tensor(bytes: &[u8], name: &str) -> Vec<f32> {
    let tensors = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    assert_eq!(view.shape(), [2, 3, 3]);
    match view.dtype() {
        safetensors::Dtype::U8 => view.data().iter().map(|&b| f32::from(b)).collect(),
        safetensors::Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => panic!("{name}: {other:?}"),
    }
}

/// Keras 3's `preprocess_input` (tools/make_preprocess_fixture.py):
///
/// ```python
/// x = image.astype("float32")  # (2, 3, 3) HWC
/// keras.applications.imagenet_utils.preprocess_input(x, data_format="channels_last", mode=mode)
/// ```
///
/// Each mode is the same float32 operations in the same order, so the values are equal
/// to the bit.
#[test]
fn normalization_modes_equal_keras_preprocess_input() {
    let bytes = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess_input.safetensors"),
    )
    .unwrap();
    let hwc = fixture_tensor(&bytes, "image");
    let image = Array3::from_shape_fn((3, 2, 3), |(c, y, x)| hwc[(y * 3 + x) * 3 + c]);
    let modes = [
        ("torch", Normalization::Torch),
        ("tf", Normalization::Tf),
        ("caffe", Normalization::Caffe),
    ];
    for (name, mode) in modes {
        let keras = fixture_tensor(&bytes, name);
        let mut ours = image.clone();
        mode.apply(ours.view_mut()).unwrap();
        for ((c, y, x), v) in ours.indexed_iter() {
            assert_eq!(
                v.to_bits(),
                keras[(y * 3 + x) * 3 + c].to_bits(),
                "{name} at ({c}, {y}, {x}): {v}"
            );
        }
    }
    // Preprocessing's default normalisation is Keras's "torch" mode.
    let mut torch = image.clone();
    Preprocessing::default()
        .normalization()
        .apply(torch.view_mut())
        .unwrap();
    let mut keras_torch = image.clone();
    Normalization::Torch.apply(keras_torch.view_mut()).unwrap();
    assert_eq!(torch, keras_torch);
    // Caffe's channel 0 is blue: pixel (0, 0) is RGB (0, 128, 255).
    let mut caffe = image;
    Normalization::Caffe.apply(caffe.view_mut()).unwrap();
    assert_eq!(
        caffe.slice(s![.., 0, 0]).to_vec(),
        [255.0 - 103.939, 128.0 - 116.779, 0.0 - 123.68]
    );
}

/// The shapes are learnable, by shape and not by colour: a small DenseNet trained for a
/// few epochs on 240 augmented 16x16 images classifies 80 others far above chance (1/4).
#[test]
fn a_small_densenet_learns_the_shapes() {
    let dir = TempDir::new("learn");
    shapes::write_shapes_folder(&dir.0.join("train"), 60, 16, 11).unwrap();
    shapes::write_shapes_folder(&dir.0.join("val"), 20, 16, 12).unwrap();
    let config = FolderConfig {
        size: (16, 16),
        augment: Augment::Flip,
        cache: true,
        ..FolderConfig::default()
    };
    let train = ImageFolder::open(dir.0.join("train"), config).unwrap();
    let val = ImageFolder::open(dir.0.join("val"), config).unwrap();
    let mut model = TinyShapes::init(0);
    // Measured: validation accuracy 0.9 after these 10 epochs (chance 0.25); a logistic
    // regression on each image's mean and std colour gets 0.265 (800 / 200 images of 24x24).
    let history = fit(
        &mut model,
        &train,
        &FitConfig {
            epochs: 10,
            batch_size: 16,
            optimizer: Optimizer::Adam(AdamConfig {
                lr: 3e-3,
                ..AdamConfig::default()
            }),
            schedule: Schedule::Constant,
            ..FitConfig::default()
        },
    )
    .unwrap();
    let accuracy = evaluate(&model, &val, 40).unwrap().accuracy;
    let last = history.epochs.last().unwrap();
    println!(
        "training loss {}, accuracy {}; validation accuracy {accuracy}",
        last.loss, last.train_accuracy
    );
    assert!(accuracy > 0.6, "validation accuracy {accuracy}");
}
