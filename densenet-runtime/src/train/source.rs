//! Where [`fit`](crate::train::fit) and [`evaluate`](crate::train::evaluate) get their
//! labelled images: any [`Source`], in memory ([`Dataset`]) or read from disk batch by
//! batch (`image::ImageFolder`, with the `image` feature).

use crate::rng::Rng;
use crate::train::{permutation, Batch, Dataset, TrainError};

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

    /// The label of image `index` if the source knows it without loading the image
    /// (both [`Dataset`] and an image folder do); [`split`] stratifies by it.
    fn label(&self, index: usize) -> Option<usize> {
        let _ = index;
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

/// Checks a batch or subset request against a source of `len` images.
///
/// # Errors
///
/// [`TrainError::EmptyDataset`] for no indices; [`TrainError::IndexOutOfRange`] for the
/// first index past the end.
pub(crate) fn check_indices(indices: &[usize], len: usize) -> Result<(), TrainError> {
    if indices.is_empty() {
        return Err(TrainError::EmptyDataset);
    }
    match indices.iter().find(|&&i| i >= len) {
        Some(&index) => Err(TrainError::IndexOutOfRange { index, len }),
        None => Ok(()),
    }
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

    fn label(&self, index: usize) -> Option<usize> {
        self.labels().get(index).copied()
    }

    /// The images at `indices`; for `Some(seed)`, transformed by the dataset's
    /// [`augment`](Dataset::augment) (the image at position `i` by
    /// [`image_rng`](crate::train::image_rng)`(seed, i)`).
    fn batch(&self, indices: &[usize], augment: Option<u64>) -> Result<Batch, TrainError> {
        let part = self.subset(indices)?;
        let labels = part.labels().to_vec();
        let mut images = part.into_images();
        if let Some(seed) = augment {
            self.augment().apply_batch(&mut images, seed)?;
        }
        Ok(Batch { images, labels })
    }
}

/// Some of a source's images, by index: a training or validation part from [`split`].
///
/// ```
/// use densenet_runtime::ndarray::Array4;
/// use densenet_runtime::train::{Dataset, Source, Subset};
///
/// let data = Dataset::new(Array4::zeros((4, 1, 2, 2)), vec![0, 1, 0, 1], 2)?;
/// let odd = Subset::new(&data, vec![1, 3])?;
/// assert_eq!((odd.len(), odd.label(0)), (2, Some(1)));
/// assert_eq!(odd.batch(&[1, 0], None)?.labels, [1, 1]);
/// # Ok::<(), densenet_runtime::TrainError>(())
/// ```
#[derive(Debug)]
pub struct Subset<'a, S: ?Sized> {
    source: &'a S,
    indices: Vec<usize>,
}

// Not derived: a derive would ask for `S: Clone`, and a reference is always Clone.
impl<S: ?Sized> Clone for Subset<'_, S> {
    fn clone(&self) -> Self {
        Subset {
            source: self.source,
            indices: self.indices.clone(),
        }
    }
}

impl<'a, S: Source + ?Sized> Subset<'a, S> {
    /// The images of `source` at `indices` (repeats allowed), in that order.
    ///
    /// # Errors
    ///
    /// [`TrainError::EmptyDataset`] for no indices; [`TrainError::IndexOutOfRange`].
    pub fn new(source: &'a S, indices: Vec<usize>) -> Result<Self, TrainError> {
        check_indices(&indices, source.len())?;
        Ok(Subset { source, indices })
    }

    /// The source's indices of this subset's images.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// The source.
    pub fn source(&self) -> &'a S {
        self.source
    }
}

impl<S: Source + ?Sized> Source for Subset<'_, S> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn classes(&self) -> usize {
        self.source.classes()
    }

    fn image_shape(&self) -> [usize; 3] {
        self.source.image_shape()
    }

    fn class_names(&self) -> Option<&[String]> {
        self.source.class_names()
    }

    fn label(&self, index: usize) -> Option<usize> {
        self.source.label(*self.indices.get(index)?)
    }

    fn batch(&self, indices: &[usize], augment: Option<u64>) -> Result<Batch, TrainError> {
        let mapped = indices
            .iter()
            .map(|&i| {
                self.indices
                    .get(i)
                    .copied()
                    .ok_or(TrainError::IndexOutOfRange {
                        index: i,
                        len: self.indices.len(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Positions in the batch are unchanged, so augmentation draws as the source's.
        self.source.batch(&mapped, augment)
    }
}

/// Splits `source` into a training and a validation part, the latter holding a
/// fraction `validation` of the images (`--val-split`), drawn at random from `seed`.
///
/// Stratified when the source knows its labels ([`Source::label`]): each class gives
/// `round(n_c · validation)` of its `n_c` images to validation, so both parts keep the
/// class proportions. Otherwise the last `round(n · validation)` images of a seeded
/// permutation. Each part lists its images in the source's order.
///
/// ```
/// use densenet_runtime::ndarray::Array4;
/// use densenet_runtime::train::{split, Dataset, Source};
///
/// let labels: Vec<usize> = (0..20).map(|i| i % 2).collect();
/// let data = Dataset::new(Array4::zeros((20, 1, 2, 2)), labels, 2)?;
/// let (train, val) = split(&data, 0.2, 7)?;
/// assert_eq!((train.len(), val.len()), (16, 4));
/// // Two of each class in validation.
/// assert_eq!(val.indices().iter().filter(|&&i| i % 2 == 0).count(), 2);
/// # Ok::<(), densenet_runtime::TrainError>(())
/// ```
///
/// # Errors
///
/// [`TrainError::Setting`] for `validation` outside `(0, 1)` or a split that would
/// leave either part empty.
pub fn split<S: Source + ?Sized>(
    source: &S,
    validation: f32,
    seed: u64,
) -> Result<(Subset<'_, S>, Subset<'_, S>), TrainError> {
    let setting = |range| TrainError::Setting {
        field: "validation split",
        value: validation,
        range,
    };
    if !(validation > 0.0 && validation < 1.0) {
        return Err(setting("(0, 1)"));
    }
    let n = source.len();
    let mut rng = Rng::new(seed);
    let labels: Option<Vec<usize>> = (0..n).map(|i| source.label(i)).collect();
    let mut val = Vec::new();
    match labels {
        Some(labels) => {
            let mut by_class = vec![Vec::new(); source.classes()];
            for (i, &l) in labels.iter().enumerate() {
                if let Some(class) = by_class.get_mut(l) {
                    class.push(i);
                }
            }
            for members in by_class {
                let take = (members.len() as f64 * f64::from(validation)).round() as usize;
                let order = permutation(members.len(), &mut rng);
                val.extend(order[..take].iter().map(|&k| members[k]));
            }
        }
        None => {
            let take = (n as f64 * f64::from(validation)).round() as usize;
            val.extend(permutation(n, &mut rng).into_iter().take(take));
        }
    }
    val.sort_unstable();
    let mut in_val = vec![false; n];
    for &i in &val {
        in_val[i] = true;
    }
    let train: Vec<usize> = (0..n).filter(|&i| !in_val[i]).collect();
    if train.is_empty() || val.is_empty() {
        return Err(setting("(0, 1), leaving images in both parts"));
    }
    Ok((Subset::new(source, train)?, Subset::new(source, val)?))
}

#[cfg(test)]
mod tests {
    use ndarray::{Array4, Axis};

    use super::*;
    use crate::train::{image_rng, Augment};

    fn data(n: usize, classes: usize) -> Dataset {
        let images =
            Array4::from_shape_fn((n, 1, 4, 4), |(i, _, y, x)| (i * 16 + y * 4 + x) as f32);
        Dataset::new(images, (0..n).map(|i| i % classes).collect(), classes).unwrap()
    }

    #[test]
    fn a_dataset_augments_training_batches_only() {
        let plain = data(6, 2);
        let flipped = plain.clone().with_augment(Augment::Flip).unwrap();
        let indices = [4, 1, 5];
        assert_eq!(
            flipped.batch(&indices, None).unwrap(),
            plain.batch(&indices, None).unwrap()
        );
        let batch = flipped.batch(&indices, Some(3)).unwrap();
        assert_eq!(batch.labels, [0, 1, 1]);
        for (pos, &i) in indices.iter().enumerate() {
            let expected = Augment::Flip
                .apply(
                    plain.images().index_axis(Axis(0), i),
                    &mut image_rng(3, pos),
                )
                .unwrap();
            assert_eq!(batch.images.index_axis(Axis(0), pos), expected);
        }
        // Subsets keep the augmentation.
        assert_eq!(flipped.subset(&[0]).unwrap().augment(), Augment::Flip);
        assert!(matches!(
            plain.with_augment(Augment::PadCropFlip {
                pad: usize::MAX,
                flip: true
            }),
            Err(TrainError::Setting { .. })
        ));
    }

    #[test]
    fn split_is_stratified_seeded_and_disjoint() {
        // Class sizes 10, 10, 10: 3 of each to validation.
        let source = data(30, 3);
        let (train, val) = split(&source, 0.3, 1).unwrap();
        assert_eq!((train.len(), val.len()), (21, 9));
        for class in 0..3 {
            let count = (0..val.len())
                .filter(|&i| val.label(i) == Some(class))
                .count();
            assert_eq!(count, 3, "class {class}");
        }
        let mut all: Vec<usize> = train
            .indices()
            .iter()
            .chain(val.indices())
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..30).collect::<Vec<_>>());
        assert_eq!(split(&source, 0.3, 1).unwrap().1.indices(), val.indices());
        assert_ne!(split(&source, 0.3, 2).unwrap().1.indices(), val.indices());
        // A subset's batch is the source's batch of the mapped indices.
        let batch = val.batch(&[2, 0], None).unwrap();
        let mapped = [val.indices()[2], val.indices()[0]];
        assert_eq!(batch, source.batch(&mapped, None).unwrap());
        assert!(matches!(
            val.batch(&[9], None),
            Err(TrainError::IndexOutOfRange { index: 9, len: 9 })
        ));
        for bad in [0.0, 1.0, f32::NAN, 0.01] {
            assert!(
                matches!(split(&source, bad, 1), Err(TrainError::Setting { .. })),
                "{bad}"
            );
        }
    }
}
