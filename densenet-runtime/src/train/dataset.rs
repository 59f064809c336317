//! An in-memory labelled image dataset, seeded shuffling and mini-batches.
//!
//! A [`Dataset`] holds NCHW `f32` images (the layout `forward` takes) and one class
//! index per image, checked once when it is built: after that, every batch it yields is
//! a valid input for a model of its image shape and class count.

use ndarray::{Array4, ArrayView4, Axis};

use crate::rng::Rng;
use crate::train::source::check_indices;
use crate::train::{Augment, TrainError};

/// Labelled images in memory: `images` is `(N, C, H, W)`, `labels[i]` is image `i`'s
/// class in `0..classes`.
///
/// ```
/// use densenet_runtime::ndarray::Array4;
/// use densenet_runtime::train::Dataset;
/// use densenet_runtime::TrainError;
///
/// let images = Array4::<f32>::zeros((3, 1, 2, 2));
/// let data = Dataset::new(images.clone(), vec![0, 1, 1], 2)?;
/// assert_eq!((data.len(), data.image_shape()), (3, [1, 2, 2]));
/// // A label must be a class index.
/// let bad = Dataset::new(images, vec![0, 2, 1], 2);
/// assert!(matches!(bad, Err(TrainError::LabelOutOfRange { index: 1, label: 2, classes: 2 })));
/// # Ok::<(), TrainError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    images: Array4<f32>,
    labels: Vec<usize>,
    classes: usize,
    augment: Augment,
}

impl Dataset {
    /// A dataset of `images` (NCHW) labelled `labels`, with classes `0..classes`.
    ///
    /// # Errors
    ///
    /// [`TrainError::EmptyDataset`] for N = 0; [`TrainError::LabelCount`] unless there
    /// is one label per image; [`TrainError::NoClasses`]; [`TrainError::LabelOutOfRange`]
    /// for the first label not below `classes`; [`TrainError::NonFinite`] for the first
    /// image with a NaN or infinite pixel.
    pub fn new(
        images: Array4<f32>,
        labels: Vec<usize>,
        classes: usize,
    ) -> Result<Self, TrainError> {
        let n = images.dim().0;
        if n == 0 {
            return Err(TrainError::EmptyDataset);
        }
        if labels.len() != n {
            return Err(TrainError::LabelCount {
                images: n,
                labels: labels.len(),
            });
        }
        if classes == 0 {
            return Err(TrainError::NoClasses);
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(TrainError::LabelOutOfRange {
                index,
                label,
                classes,
            });
        }
        if let Some(index) = images
            .axis_iter(Axis(0))
            .position(|image| image.iter().any(|v| !v.is_finite()))
        {
            return Err(TrainError::NonFinite { index });
        }
        Ok(Dataset {
            images: images.as_standard_layout().into_owned(),
            labels,
            classes,
            augment: Augment::None,
        })
    }

    /// The dataset with training batches augmented by `augment` (as a
    /// [`Source`](crate::train::Source), when asked for `Some(seed)`): e.g.
    /// [`Augment::cifar`] for the paper's CIFAR training. Subsets and splits keep it.
    ///
    /// # Errors
    ///
    /// As [`Augment::validate`].
    pub fn with_augment(mut self, augment: Augment) -> Result<Self, TrainError> {
        augment.validate()?;
        self.augment = augment;
        Ok(self)
    }

    /// The augmentation of training batches ([`Augment::None`] unless set by
    /// [`with_augment`](Self::with_augment)).
    pub fn augment(&self) -> Augment {
        self.augment
    }

    /// Number of images (never 0).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Always `false`: a dataset has at least one image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes: labels are in `0..classes()`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Per-image shape `[C, H, W]`.
    pub fn image_shape(&self) -> [usize; 3] {
        let (_, c, h, w) = self.images.dim();
        [c, h, w]
    }

    /// All images, `(N, C, H, W)`.
    pub fn images(&self) -> ArrayView4<'_, f32> {
        self.images.view()
    }

    /// The images, consumed.
    pub(crate) fn into_images(self) -> Array4<f32> {
        self.images
    }

    /// All labels, one per image.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// How many images of each class: `counts[c]` is the number labelled `c`.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// Applies `f` to every pixel (e.g. normalisation, `(x / 16 − mean) / std`).
    ///
    /// # Errors
    ///
    /// [`TrainError::NonFinite`] if `f` makes a pixel NaN or infinite (the dataset is
    /// then unchanged).
    pub fn map_pixels(&mut self, f: impl Fn(f32) -> f32) -> Result<(), TrainError> {
        let mapped = self.images.mapv(f);
        if let Some(index) = mapped
            .axis_iter(Axis(0))
            .position(|image| image.iter().any(|v| !v.is_finite()))
        {
            return Err(TrainError::NonFinite { index });
        }
        self.images = mapped;
        Ok(())
    }

    /// The images at `indices`, in that order (repeats allowed), with the same classes.
    ///
    /// # Errors
    ///
    /// [`TrainError::EmptyDataset`] for no indices; [`TrainError::IndexOutOfRange`].
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, TrainError> {
        check_indices(indices, self.len())?;
        Ok(self.gather(indices))
    }

    /// The first `n` images and the rest, e.g. a training and a validation set (shuffle
    /// first with [`Dataset::shuffled`] for a random split).
    ///
    /// # Errors
    ///
    /// [`TrainError::EmptyDataset`] if either part would be empty (`n` is 0 or at
    /// least [`len`](Self::len)).
    pub fn split_at(&self, n: usize) -> Result<(Dataset, Dataset), TrainError> {
        if n == 0 || n >= self.len() {
            return Err(TrainError::EmptyDataset);
        }
        let head: Vec<usize> = (0..n).collect();
        let tail: Vec<usize> = (n..self.len()).collect();
        Ok((self.gather(&head), self.gather(&tail)))
    }

    /// The dataset in a random order drawn from `rng` ([`permutation`]).
    pub fn shuffled(&self, rng: &mut Rng) -> Dataset {
        self.gather(&permutation(self.len(), rng))
    }

    /// Mini-batches of at most `batch_size` images in the order `order` (a permutation
    /// from [`permutation`], or `None` for the dataset's own order); the last batch
    /// holds the remainder.
    ///
    /// # Errors
    ///
    /// [`TrainError::BatchSize`] for `batch_size` 0; [`TrainError::IndexOutOfRange`]
    /// if `order` names an image past the end; [`TrainError::EmptyDataset`] for an
    /// empty `order`.
    pub fn batches<'a>(
        &'a self,
        batch_size: usize,
        order: Option<Vec<usize>>,
    ) -> Result<Batches<'a>, TrainError> {
        if batch_size == 0 {
            return Err(TrainError::BatchSize { batch_size, min: 1 });
        }
        let order = order.unwrap_or_else(|| (0..self.len()).collect());
        check_indices(&order, self.len())?;
        Ok(Batches {
            data: self,
            order,
            batch_size,
            next: 0,
        })
    }

    /// The images at `indices` (checked by the caller).
    fn gather(&self, indices: &[usize]) -> Dataset {
        Dataset {
            images: self.images.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
            augment: self.augment,
        }
    }
}

/// A uniformly random permutation of `0..len` (Fisher–Yates, drawing from `rng` with
/// rejection sampling, so every order is equally likely and the result depends only on
/// the generator's state).
pub fn permutation(len: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// A uniform integer in `0..n` (`n > 0`): rejects the top `2⁶⁴ mod n` values of the
/// 64-bit stream so that the remainder is unbiased.
pub(crate) fn below(rng: &mut Rng, n: u64) -> u64 {
    let reject = (u64::MAX % n + 1) % n; // 2^64 mod n
    loop {
        let x = rng.next_u64();
        if x <= u64::MAX - reject {
            return x % n;
        }
    }
}

/// One mini-batch: images `(n, C, H, W)` and their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The images, NCHW.
    pub images: Array4<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch has no images (never, from [`Batches`]).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The iterator of [`Dataset::batches`]: copies each batch's images out of the dataset.
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    next: usize,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let part = self.data.gather(&self.order[self.next..end]);
        self.next = end;
        Some(Batch {
            images: part.images,
            labels: part.labels,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.next).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        // Image i is filled with the value i.
        let images = Array4::from_shape_fn((5, 1, 2, 2), |(n, ..)| n as f32);
        Dataset::new(images, vec![0, 1, 2, 0, 1], 3).unwrap()
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        let images = Array4::<f32>::zeros((2, 1, 2, 2));
        assert!(matches!(
            Dataset::new(Array4::zeros((0, 1, 2, 2)), vec![], 3),
            Err(TrainError::EmptyDataset)
        ));
        assert!(matches!(
            Dataset::new(images.clone(), vec![0], 3),
            Err(TrainError::LabelCount {
                images: 2,
                labels: 1
            })
        ));
        assert!(matches!(
            Dataset::new(images.clone(), vec![0, 1], 0),
            Err(TrainError::NoClasses)
        ));
        let mut nan = images.clone();
        nan[[1, 0, 1, 0]] = f32::NAN;
        assert!(matches!(
            Dataset::new(nan, vec![0, 1], 2),
            Err(TrainError::NonFinite { index: 1 })
        ));
        let mut data = Dataset::new(images, vec![0, 1], 2).unwrap();
        assert!(matches!(
            data.map_pixels(|v| v / 0.0 - v / 0.0),
            Err(TrainError::NonFinite { index: 0 })
        ));
        assert!(matches!(
            data.subset(&[0, 2]),
            Err(TrainError::IndexOutOfRange { index: 2, len: 2 })
        ));
        assert!(matches!(data.subset(&[]), Err(TrainError::EmptyDataset)));
        assert!(matches!(data.split_at(2), Err(TrainError::EmptyDataset)));
        assert!(matches!(
            data.batches(0, None),
            Err(TrainError::BatchSize { batch_size: 0, .. })
        ));
        assert!(matches!(
            data.batches(1, Some(vec![1, 5])),
            Err(TrainError::IndexOutOfRange { index: 5, len: 2 })
        ));
    }

    #[test]
    fn subsets_splits_and_counts() {
        let data = tiny();
        assert_eq!(data.class_counts(), [2, 2, 1]);
        let sub = data.subset(&[4, 0, 4]).unwrap();
        assert_eq!(sub.labels(), [1, 0, 1]);
        assert_eq!(sub.images()[[0, 0, 1, 1]], 4.0);
        assert_eq!(sub.images()[[1, 0, 0, 0]], 0.0);
        let (a, b) = data.split_at(2).unwrap();
        assert_eq!((a.labels(), b.labels()), (&[0, 1][..], &[2, 0, 1][..]));
        assert_eq!(b.images()[[0, 0, 0, 0]], 2.0);
    }

    #[test]
    fn batches_cover_the_order_with_a_short_last_batch() {
        let data = tiny();
        let batches: Vec<Batch> = data
            .batches(2, Some(vec![3, 1, 4, 0, 2]))
            .unwrap()
            .collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].labels, [0, 1]);
        assert_eq!(batches[0].images.dim(), (2, 1, 2, 2));
        assert_eq!(batches[0].images[[0, 0, 0, 0]], 3.0);
        assert_eq!(batches[2].images.dim(), (1, 1, 2, 2));
        assert_eq!(batches[2].images[[0, 0, 1, 0]], 2.0);
        assert_eq!(data.batches(2, None).unwrap().len(), 3);
    }

    #[test]
    fn permutations_are_seeded_and_cover_every_index() {
        let p = permutation(100, &mut Rng::new(1));
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(100, &mut Rng::new(1)));
        assert_ne!(p, permutation(100, &mut Rng::new(2)));
        assert_ne!(p, sorted);
        assert!(permutation(0, &mut Rng::new(1)).is_empty());
        assert_eq!(permutation(1, &mut Rng::new(1)), [0]);
    }

    #[test]
    fn below_is_uniform() {
        // 3 does not divide 2^64, so a plain `% 3` would be (very slightly) biased;
        // here, the counts of 60,000 draws are each within 5 sigma (sd ~115) of 20,000.
        let mut rng = Rng::new(9);
        let mut counts = [0usize; 3];
        for _ in 0..60_000 {
            counts[below(&mut rng, 3) as usize] += 1;
        }
        for c in counts {
            assert!(c.abs_diff(20_000) < 600, "{counts:?}");
        }
        // And every position of a 3-element shuffle is equally likely: 6 orders.
        let mut orders = std::collections::HashMap::new();
        for _ in 0..6_000 {
            *orders.entry(permutation(3, &mut rng)).or_insert(0usize) += 1;
        }
        assert_eq!(orders.len(), 6);
        for (order, c) in orders {
            assert!(c.abs_diff(1_000) < 150, "{order:?}: {c}");
        }
    }
}
