//! A folder of labelled images, one sub-folder per class, read from disk a batch at a
//! time: Keras's `image_dataset_from_directory`, torchvision's `ImageFolder`.
//!
//! Per image, in a batch's parallel decode: read and decode (under the decoder's limits,
//! so no file content can make it panic), the evaluation transform to the folder's size
//! ([`Resize`]), for a training batch the [`Augment`], then the [`Normalization`]. The
//! decoded, resized images can be kept in memory ([`FolderConfig::cache`]: 3 bytes a
//! pixel); without it, a folder larger than memory streams.

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::parallel::prelude::*;
use ndarray::{Array3, Array4, Axis};

use super::{
    center_window, decode_checked, resize_cover, resize_shorter_side, Normalization,
    MAX_RESIZED_PIXELS,
};
use crate::train::source::check_indices;
use crate::train::{image_rng, Augment, Batch, Source, TrainError};

/// The file extensions read (compared case-insensitively); other files are ignored.
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// How an image becomes the folder's size: the evaluation transform, applied to every
/// image before any augmentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resize {
    /// Resize (keeping the aspect ratio) just enough to cover the size, then take the
    /// centre window: an image of the folder's size is used as it is.
    #[default]
    Cover,
    /// Resize the shorter side to this length, then take the centre window (ImageNet
    /// evaluation: 256 for a size of 224). At least the size's larger side.
    ShorterSide(u32),
    /// No resizing: every image must be of the folder's size
    /// ([`TrainError::ImageSize`] otherwise).
    Exact,
}

/// What a batch does with a file that cannot be read or decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unreadable {
    /// Fail with [`TrainError::UnreadableImage`].
    #[default]
    Error,
    /// Leave it out of the batch (which is then shorter) and count it
    /// ([`ImageFolder::skipped`]); it is not read again.
    Skip,
}

/// The settings of an [`ImageFolder`].
///
/// ```
/// use densenet_runtime::image::{FolderConfig, Normalization, Resize, Unreadable};
/// use densenet_runtime::train::Augment;
///
/// // CIFAR-like training on 32x32 images, Keras's "tf" normalisation.
/// let config = FolderConfig {
///     size: (32, 32),
///     augment: Augment::cifar(),
///     normalization: Normalization::Tf,
///     unreadable: Unreadable::Skip,
///     ..FolderConfig::default()
/// };
/// assert_eq!(config.resize, Resize::Cover);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FolderConfig {
    /// The images' `(height, width)` in a batch.
    pub size: (u32, u32),
    /// The evaluation transform to that size.
    pub resize: Resize,
    /// The last step, after any augmentation.
    pub normalization: Normalization,
    /// The augmentation of training batches (`Source::batch` with `Some(seed)`).
    pub augment: Augment,
    /// Whether to keep every decoded, resized image in memory after its first read.
    pub cache: bool,
    /// What to do with unreadable files.
    pub unreadable: Unreadable,
}

impl Default for FolderConfig {
    /// 224x224 ([`Resize::Cover`]), [`Normalization::Torch`], no augmentation, no cache,
    /// unreadable files are errors.
    fn default() -> Self {
        FolderConfig {
            size: (224, 224),
            resize: Resize::Cover,
            normalization: Normalization::Torch,
            augment: Augment::None,
            cache: false,
            unreadable: Unreadable::Error,
        }
    }
}

impl FolderConfig {
    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`TrainError::Setting`] for a zero size or one past
    /// [`MAX_RESIZED_PIXELS`](super::MAX_RESIZED_PIXELS) pixels, a
    /// [`Resize::ShorterSide`] shorter than the size's larger side, or a
    /// [`Normalization::MeanStd`] with a non-finite value or a zero std; as
    /// [`Augment::validate`].
    pub fn validate(&self) -> Result<(), TrainError> {
        let (h, w) = self.size;
        if h == 0 || w == 0 || u64::from(h) * u64::from(w) > MAX_RESIZED_PIXELS {
            return Err(TrainError::Setting {
                field: "FolderConfig::size",
                value: h.min(w) as f32,
                range: "1..; at most 2^24 pixels",
            });
        }
        if let Resize::ShorterSide(side) = self.resize {
            if side < h.max(w) {
                return Err(TrainError::Setting {
                    field: "FolderConfig::resize (shorter side)",
                    value: side as f32,
                    range: "at least the larger side of FolderConfig::size",
                });
            }
        }
        if let Normalization::MeanStd { mean, std } = self.normalization {
            let bad_mean = mean.into_iter().find(|m| !m.is_finite());
            let bad_std = std.into_iter().find(|s| !s.is_finite() || *s == 0.0);
            if let Some(value) = bad_mean.or(bad_std) {
                return Err(TrainError::Setting {
                    field: "FolderConfig::normalization (MeanStd)",
                    value,
                    range: "finite (std nonzero)",
                });
            }
        }
        self.augment.validate()
    }
}

/// Labelled images on disk: `root/<class>/…/<image>.{jpg,jpeg,png}`.
///
/// Classes are the sub-folders of `root` sorted by name (labels `0..classes` in that
/// order, as Keras and torchvision number them); each class's images are its files,
/// then its sub-folders' (each sorted by name), with the extensions compared
/// case-insensitively. Hidden files and folders (a name starting with `.`) are ignored,
/// and so are other files; a symbolic link to a sub-folder of a class is not followed.
///
/// ```
/// use densenet_runtime::image::{FolderConfig, ImageFolder};
/// use densenet_runtime::train::{split, Augment, Source};
///
/// // A folder of two classes, three 8x8 PNGs each (`cat` first: classes sort by name).
/// let root = std::env::temp_dir().join(format!("doc-image-folder-{}", std::process::id()));
/// for (class, shade) in [("dog", 200), ("cat", 50)] {
///     std::fs::create_dir_all(root.join(class))?;
///     for i in 0..3u8 {
///         let image = image::RgbImage::from_pixel(8, 8, image::Rgb([shade, i, 0]));
///         image.save(root.join(class).join(format!("{i}.png")))?;
///     }
/// }
/// let config = FolderConfig { size: (8, 8), augment: Augment::Flip, ..FolderConfig::default() };
/// let folder = ImageFolder::open(&root, config)?;
/// assert_eq!(folder.class_names().unwrap(), ["cat", "dog"]);
/// let (train, val) = split(&folder, 1.0 / 3.0, 42)?; // --val-split 0.33: one per class
/// assert_eq!((train.len(), val.len()), (4, 2));
/// let batch = train.batch(&[0, 3], Some(7))?; // a training batch: augmented, normalised
/// assert_eq!((batch.images.dim(), batch.labels), ((2, 3, 8, 8), vec![0, 1]));
/// std::fs::remove_dir_all(&root)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ImageFolder {
    root: PathBuf,
    config: FolderConfig,
    class_names: Vec<String>,
    files: Vec<PathBuf>,
    labels: Vec<usize>,
    /// Per file, its resized pixels (HWC) once read (`config.cache` only).
    cache: Vec<OnceLock<Vec<u8>>>,
    /// Per file, whether it was found unreadable and skipped.
    bad: Vec<AtomicBool>,
    skipped: AtomicUsize,
}

impl fmt::Debug for ImageFolder {
    // Not derived: the cache would print every pixel.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageFolder")
            .field("root", &self.root)
            .field("config", &self.config)
            .field("class_names", &self.class_names)
            .field("files", &self.files.len())
            .field("skipped", &self.skipped())
            .finish()
    }
}

impl ImageFolder {
    /// Lists the folder's classes and images (no image is read yet).
    ///
    /// # Errors
    ///
    /// [`TrainError::Folder`] if `root` (or a class folder) is missing or cannot be
    /// listed; [`TrainError::NotAFolder`]; [`TrainError::NoClassFolders`];
    /// [`TrainError::EmptyClass`] for the first class folder without images; as
    /// [`FolderConfig::validate`].
    pub fn open(root: impl AsRef<Path>, config: FolderConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let root = root.as_ref().to_path_buf();
        let meta = fs::metadata(&root).map_err(|source| TrainError::Folder {
            path: root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(TrainError::NotAFolder { path: root });
        }
        let mut class_dirs = Vec::new();
        for (name, path) in sorted_entries(&root)? {
            // A class folder may be a link to one (`metadata` follows links).
            if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                class_dirs.push((name.to_string_lossy().into_owned(), path));
            }
        }
        if class_dirs.is_empty() {
            return Err(TrainError::NoClassFolders { path: root });
        }
        let (mut files, mut labels) = (Vec::new(), Vec::new());
        for (label, (class, path)) in class_dirs.iter().enumerate() {
            let start = files.len();
            collect_images(path, &mut files)?;
            if files.len() == start {
                return Err(TrainError::EmptyClass {
                    class: class.clone(),
                    path: path.clone(),
                });
            }
            labels.resize(files.len(), label);
        }
        let cached = if config.cache { files.len() } else { 0 };
        Ok(ImageFolder {
            cache: (0..cached).map(|_| OnceLock::new()).collect(),
            bad: (0..files.len()).map(|_| AtomicBool::new(false)).collect(),
            skipped: AtomicUsize::new(0),
            class_names: class_dirs.into_iter().map(|(name, _)| name).collect(),
            root,
            config,
            files,
            labels,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The settings.
    pub fn config(&self) -> &FolderConfig {
        &self.config
    }

    /// Every image file, in label order (image `i` is `files()[i]`).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Every image's label.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// How many images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// How many files were found unreadable and skipped so far ([`Unreadable::Skip`]);
    /// each is counted once, however often it is asked for.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The files skipped so far, in the folder's order.
    pub fn skipped_files(&self) -> Vec<&Path> {
        self.files
            .iter()
            .zip(&self.bad)
            .filter(|(_, bad)| bad.load(Ordering::Relaxed))
            .map(|(path, _)| path.as_path())
            .collect()
    }

    /// Image `index` as a normalised `(3, H, W)` tensor, transformed for training by
    /// `augment = Some(rng seed, batch position)` or for evaluation (`None`); `None`
    /// if it is unreadable and skipped.
    fn image(
        &self,
        index: usize,
        augment: Option<(u64, usize)>,
    ) -> Result<Option<Array3<f32>>, TrainError> {
        let Some(pixels) = self.pixels(index)? else {
            return Ok(None);
        };
        let (h, w) = (self.config.size.0 as usize, self.config.size.1 as usize);
        let mut image = Array3::from_shape_fn((3, h, w), |(c, y, x)| {
            f32::from(pixels[(y * w + x) * 3 + c])
        });
        if let Some((seed, position)) = augment {
            image = self
                .config
                .augment
                .apply(image.view(), &mut image_rng(seed, position))?;
        }
        // Checked when the folder was opened, and the image is RGB.
        self.config.normalization.normalize(image.view_mut());
        Ok(Some(image))
    }

    /// Image `index` after the evaluation transform: HWC pixels of the folder's size,
    /// from the cache if it is there.
    fn pixels(&self, index: usize) -> Result<Option<Cow<'_, [u8]>>, TrainError> {
        if self.bad[index].load(Ordering::Relaxed) {
            return Ok(None);
        }
        if let Some(cached) = self.cache.get(index).and_then(OnceLock::get) {
            return Ok(Some(Cow::Borrowed(cached)));
        }
        let path = &self.files[index];
        let pixels = match self.read(path) {
            Ok(pixels) => pixels,
            Err(_) if self.config.unreadable == Unreadable::Skip => {
                if !self.bad[index].swap(true, Ordering::Relaxed) {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(None);
            }
            Err(reason) => {
                return Err(TrainError::UnreadableImage {
                    path: path.clone(),
                    reason,
                })
            }
        };
        let (h, w) = self.config.size;
        let [ah, aw] = [pixels.height(), pixels.width()];
        if [ah, aw] != [h, w] {
            // Only exact-size mode keeps an image's own size.
            return Err(TrainError::ImageSize {
                path: path.clone(),
                expected: [h as usize, w as usize],
                actual: [ah as usize, aw as usize],
            });
        }
        let raw = pixels.into_raw();
        match self.cache.get(index) {
            Some(cell) => Ok(Some(Cow::Borrowed(cell.get_or_init(|| raw)))),
            None => Ok(Some(Cow::Owned(raw))),
        }
    }

    /// Reads, decodes and resizes a file; the error is the reason it is unreadable.
    fn read(&self, path: &Path) -> Result<image::RgbImage, String> {
        let bytes = fs::read(path).map_err(|e| e.to_string())?;
        let image = decode_checked(&bytes).map_err(|e| e.to_string())?;
        let (h, w) = self.config.size;
        let resized = match self.config.resize {
            Resize::Exact => return Ok(image),
            Resize::Cover => resize_cover(&image, w, h),
            Resize::ShorterSide(side) => resize_shorter_side(&image, side),
        };
        Ok(center_window(&resized.map_err(|e| e.to_string())?, w, h))
    }
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn classes(&self) -> usize {
        self.class_names.len()
    }

    fn image_shape(&self) -> [usize; 3] {
        [3, self.config.size.0 as usize, self.config.size.1 as usize]
    }

    fn class_names(&self) -> Option<&[String]> {
        Some(&self.class_names)
    }

    fn label(&self, index: usize) -> Option<usize> {
        self.labels.get(index).copied()
    }

    /// Decodes the images at `indices` in parallel (rayon), in order. Skipped files
    /// leave the batch shorter (possibly empty); otherwise the first failure in batch
    /// order is the error.
    fn batch(&self, indices: &[usize], augment: Option<u64>) -> Result<Batch, TrainError> {
        check_indices(indices, self.len())?;
        let images = indices
            .par_iter()
            .enumerate()
            .map(|(position, &i)| self.image(i, augment.map(|seed| (seed, position))))
            .collect::<Vec<_>>();
        let mut kept = Vec::with_capacity(indices.len());
        for (result, &i) in images.into_iter().zip(indices) {
            if let Some(image) = result? {
                kept.push((image, self.labels[i]));
            }
        }
        let [c, h, w] = self.image_shape();
        let mut out = Array4::zeros((kept.len(), c, h, w));
        for (mut dst, (image, _)) in out.axis_iter_mut(Axis(0)).zip(&kept) {
            dst.assign(image);
        }
        Ok(Batch {
            images: out,
            labels: kept.into_iter().map(|(_, label)| label).collect(),
        })
    }
}

/// The entries of `dir` that are not hidden, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>, TrainError> {
    let folder_error = |source| TrainError::Folder {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(folder_error)? {
        let entry = entry.map_err(folder_error)?;
        let name = entry.file_name();
        if !name.as_encoded_bytes().starts_with(b".") {
            entries.push((name, entry.path()));
        }
    }
    entries.sort();
    Ok(entries)
}

/// Appends the images of `dir` (its files, then its sub-folders', each sorted).
fn collect_images(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), TrainError> {
    let mut sub_dirs = Vec::new();
    for (_, path) in sorted_entries(dir)? {
        // `symlink_metadata`: a link to a folder is not followed (no cycles).
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)));
        if is_dir {
            sub_dirs.push(path);
        } else if is_image {
            files.push(path);
        }
    }
    for sub in sub_dirs {
        collect_images(&sub, files)?;
    }
    Ok(())
}
