//! Layers and the building blocks generated models are made of, one file each.
//!
//! All take and return NHWC tensors. Building blocks carry their sizes as const
//! generics, fixed by the macro; their forward passes are plain functions of the
//! layers they hold.

mod batch_norm;
mod conv;
mod dense_block;
mod head;
mod linear;
mod pool;
mod stem;
mod transition;

pub use batch_norm::BatchNorm2d;
pub use conv::{Conv2d, Conv2dConfig};
pub use dense_block::{dense_block_forward, DenseBlock, DenseLayer};
pub use head::{
    feature_map_forward, pooled_head_forward, AvgPoolHead, ClassifierHead, FeatureMapHead,
    MaxPoolHead,
};
pub use linear::Linear;
pub use pool::{avg_pool2d, global_avg_pool, global_max_pool, max_pool2d};
pub use stem::{stem_conv, stem_forward, CifarStem, ImageNetStem};
pub use transition::{transition_forward, Transition};
