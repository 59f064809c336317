//! Training: the backward pass of every layer and of a whole model, optimisers, and a
//! training loop over an in-memory dataset.
//!
//! Each layer's backward is a plain function in its own file, checked against finite
//! differences in its tests; [`loss_and_gradients`] chains them over a model's stages
//! ([`Network::stage_mut`](crate::Network::stage_mut)) and returns one gradient per
//! parameter, addressed by the same [`LayerName`](crate::LayerName) as
//! [`Network::visit_layers`](crate::Network::visit_layers).
//!
//! Layouts are the runtime's: activations NHWC, seen as `(N·H·W) × C` matrices (pixels
//! are rows); conv weights and their gradients HWIO; linear weights `(out, in)`.
//!
//! Memory follows Pleiss et al., "Memory-Efficient Implementation of DenseNets" (2017):
//! a dense block keeps its one shared concatenation buffer, its gradient is one matrix
//! of the same shape that every layer's backward adds into, and the BN-ReLU outputs are
//! recomputed in the backward pass from the buffer and the stored batch statistics
//! instead of being kept for every layer. Dropout masks are regenerated from a saved
//! copy of the random generator rather than stored.
//!
//! - [`conv2d_backward`], [`col2im`]: convolution (any kernel, stride, padding);
//! - [`batch_norm_train`], [`batch_norm_apply`], [`batch_norm_backward`]: batch norm on
//!   batch statistics, optionally fused with the ReLU after it; [`relu_backward`];
//! - [`max_pool2d_train`], [`max_pool2d_backward`], [`avg_pool2d_backward`],
//!   [`global_avg_pool_backward`]: pooling;
//! - [`linear_backward`]; [`dropout_in_place`]; [`softmax_cross_entropy`];
//! - [`loss_and_gradients`]: a whole training-mode forward and backward pass;
//!   [`loss_and_gradients_profiled`]: the same, timed phase by phase ([`StepProfile`]);
//! - [`Sgd`], [`Adam`], [`step_lr`]: optimisers and the paper's schedule;
//! - [`Schedule`]: the learning rate of every step: the paper's steps, constant, cosine
//!   with linear warmup ([`CosineConfig`], Keras's `CosineDecay`) or reduce-on-plateau
//!   ([`PlateauConfig`], Keras's `ReduceLROnPlateau`), each a pure function of the
//!   position in the run and the history, so a resumed run gets the same rates;
//! - [`Source`]: where training reads batches; [`Dataset`], [`permutation`]: labelled
//!   images in memory, seeded shuffling, batches; [`Subset`], [`split`]: a stratified,
//!   seeded train/validation split of any source;
//! - [`Augment`]: seeded augmentation (CIFAR pad-crop-flip, ImageNet random resized
//!   crop, flips; [`resize_bilinear`]), drawn per image from [`image_rng`];
//! - [`fit`]: the training loop (per-epoch [`History`], checkpoints, progress bar);
//!   [`evaluate`]: loss, accuracy and top-k accuracy ([`in_top_k`]) in inference mode.
//!   Errors are [`TrainError`]s, checked before the first step;
//! - [`History`]: written as CSV in Keras's `CSVLogger` columns, as JSON read back
//!   exactly, and (feature `plot`) as a PNG chart; [`Monitor`]: a metric by its Keras
//!   name, with Keras's improvement test, for schedules, early stopping and best-only
//!   checkpoints.
//!
//! ```
//! use densenet_runtime::ndarray::Array4;
//! use densenet_runtime::train::{Dataset, FitConfig};
//!
//! // Four 1x2x2 images of two classes; preprocess in place.
//! let images = Array4::from_shape_fn((4, 1, 2, 2), |(n, ..)| n as f32);
//! let mut data = Dataset::new(images, vec![0, 1, 0, 1], 2)?;
//! data.map_pixels(|v| (v - 1.5) / 1.5)?;
//! let batches: Vec<_> = data.batches(3, None)?.collect();
//! assert_eq!((batches[0].len(), batches[1].len()), (3, 1));
//! // `fit(&mut model, &data, &FitConfig { epochs: 20, ..FitConfig::default() })` trains
//! // any generated model whose input is [1, 2, 2].
//! let config = FitConfig::default();
//! assert_eq!((config.epochs, config.batch_size), (10, 64));
//! # Ok::<(), densenet_runtime::TrainError>(())
//! ```

mod augment;
mod batch_norm;
mod buffers;
mod callbacks;
mod checkpoint;
mod col2im;
mod conv;
mod dataset;
mod dropout;
mod error;
mod evaluate;
mod fit;
mod freeze;
mod history;
mod linear;
mod loss;
mod narrow_1x1;
mod optim;
#[cfg(feature = "plot")]
mod plot;
mod pool;
mod profile;
mod recycled;
mod relu;
mod schedule;
pub(crate) mod source;
mod tape;

pub use augment::{image_rng, resize_bilinear, Augment, MAX_PAD};
pub use batch_norm::{
    batch_norm_apply, batch_norm_backward, batch_norm_frozen, batch_norm_train, BatchStats,
};
pub use buffers::PlannedBuffers;
pub use callbacks::EarlyStopping;
pub use checkpoint::{checkpoint_path, checkpoints_in, read_checkpoint_info, CheckpointInfo};
pub use col2im::col2im;
pub use conv::conv2d_backward;
pub use dataset::{permutation, Batch, Batches, Dataset};
pub use dropout::dropout_in_place;
pub use evaluate::{evaluate, in_top_k, logits, Evaluation};
pub use fit::{fit, FitConfig, OnEpochEnd, Optimizer, BEST_CHECKPOINT};
pub use freeze::Freeze;
pub use history::{EpochStats, History, HistoryError, Monitor, MonitorMode, ParseMonitorError};
pub use linear::linear_backward;
pub use loss::softmax_cross_entropy;
pub(crate) use loss::softmax_cross_entropy_into;
pub use optim::{step_lr, Adam, AdamConfig, Sgd, SgdConfig};
pub use pool::{
    avg_pool2d_backward, global_avg_pool_backward, max_pool2d_backward, max_pool2d_train,
};
pub use profile::{Part, Pass, Phase, StepProfile, StepStage};
pub use relu::relu_backward;
pub use schedule::{CosineConfig, PlateauConfig, Progress, Schedule};
pub use source::{split, Source, Subset};
#[cfg(feature = "internals")]
pub use tape::planned_requests;
pub use tape::{
    kept_step_memory, loss_and_gradients, loss_and_gradients_frozen, loss_and_gradients_profiled,
    loss_and_gradients_with, release_step_memory, step_memory, Gradients, LayerGrad, StepConfig,
    StepMemory,
};

pub use error::TrainError;

#[cfg(test)]
pub(crate) mod check {
    //! Finite-difference checking shared by the layer tests.

    /// A deterministic pseudo-random vector in `[-1, 1)` (an LCG; tests only).
    pub fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `Σ r·y`, accumulated in f64: the scalar "loss" whose gradient w.r.t. `y` is `r`.
    pub fn dot(r: &[f32], y: &[f32]) -> f64 {
        assert_eq!(r.len(), y.len());
        r.iter()
            .zip(y)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum()
    }

    /// Central differences of `loss` w.r.t. every element of `x`, step `h`.
    pub fn numeric_grad(x: &[f32], h: f32, mut loss: impl FnMut(&[f32]) -> f64) -> Vec<f64> {
        let mut x = x.to_vec();
        (0..x.len())
            .map(|i| {
                let v = x[i];
                x[i] = v + h;
                let up = loss(&x);
                x[i] = v - h;
                let down = loss(&x);
                x[i] = v;
                (up - down) / (2.0 * f64::from(h))
            })
            .collect()
    }

    /// Asserts `max |analytic − numeric| <= tol · max(1, max |numeric|)`.
    #[track_caller]
    pub fn assert_grad_close(what: &str, analytic: &[f32], numeric: &[f64], tol: f64) {
        assert_eq!(analytic.len(), numeric.len(), "{what}: lengths");
        let scale = numeric.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let (worst, at) = analytic
            .iter()
            .zip(numeric)
            .enumerate()
            .map(|(i, (&a, &n))| ((f64::from(a) - n).abs(), i))
            .fold((0.0, 0), |m, v| if v.0 > m.0 { v } else { m });
        assert!(
            worst <= tol * scale,
            "{what}: element {at}: analytic {} vs numeric {} (|diff| {worst:e} > {tol:e}·{scale})",
            analytic[at],
            numeric[at]
        );
    }
}
