//! Where [`fit`](crate::train::fit) and [`evaluate`](crate::train::evaluate) get their
//! labelled images: any [`Source`], in memory ([`Dataset`]) or read from disk batch by
//! batch (`image::ImageFolder`, with the `image` feature).

use crate::train::{Batch, Dataset, TrainError};

/// Labelled images of one shape, loaded a batch at a time.
///
/// A source hands out batches by image index, so the training loop owns the order (a
/// seeded [`permutation`](crate::train::permutation) per epoch) and a source may load
/// lazily: a folder larger than memory streams from disk.
///
/// Augmentation is the source's: `augment` is `Some(seed)` for a training batch (the
/// random transform of the image at batch position `i` is drawn from `seed` and `i`
/// only, so a batch is the same for any number of threads, and a resumed run draws the
/// same batches) and `None` for evaluation (the deterministic transform).
pub trait Source: Sync + std::fmt::Debug {
    /// Number of images.
    fn len(&self) -> usize;

    /// Whether there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes: labels are in `0..classes()`.
    fn classes(&self) -> usize;

    /// The shape `[C, H, W]` of every image a batch holds.
    fn image_shape(&self) -> [usize; 3];

    /// The classes' names, in label order, if the source has them (a folder's
    /// sub-folders do).
    fn class_names(&self) -> Option<&[String]> {
        None
    }

    /// The images at `indices`, in that order, as one batch (NCHW), transformed for
    /// training (`augment: Some(seed)`) or evaluation (`None`).
    ///
    /// # Errors
    ///
    /// [`TrainError::IndexOutOfRange`] for an index past the end; a source that reads
    /// files also reports the files it cannot read (see its settings).
    fn batch(&self, indices: &[usize], augment: Option<u64>) -> Result<Batch, TrainError>;
}

impl Source for Dataset {
    fn len(&self) -> usize {
        Dataset::len(self)
    }

    fn classes(&self) -> usize {
        Dataset::classes(self)
    }

    fn image_shape(&self) -> [usize; 3] {
        Dataset::image_shape(self)
    }

    fn batch(&self, indices: &[usize], augment: Option<u64>) -> Result<Batch, TrainError> {
        let _ = augment; // An in-memory dataset is used as it is.
        let part = self.subset(indices)?;
        Ok(Batch {
            labels: part.labels().to_vec(),
            images: part.into_images(),
        })
    }
}
