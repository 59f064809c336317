//! Layers and the building blocks generated models are made of, one file each.
//!
//! All take and return NHWC tensors. Building blocks carry their sizes as const
//! generics, fixed by the macro; their forward passes are plain functions of the
//! layers they hold.

mod batch_norm;
mod conv;
mod conv_into;
mod conv_weight;
mod dense_block;
mod head;
mod linear;
mod pool;
mod stem;
mod transition;

pub use batch_norm::BatchNorm2d;
pub use conv::{Conv2d, Conv2dConfig};
pub use conv_into::{conv1x1_into_padded, conv2d_into};
pub use conv_weight::WeightMut;
pub use dense_block::{
    dense_block_forward, dense_block_forward_into, dense_block_scratch, DenseBlock, DenseLayer,
};
pub use head::{
    feature_map_forward, feature_map_forward_into, pooled_head_forward, pooled_head_forward_into,
    AvgPoolHead, ClassifierHead, FeatureMapHead, MaxPoolHead,
};
pub use linear::Linear;
pub use pool::{
    avg_pool2d, global_avg_pool, global_max_pool, global_pool_into, max_pool2d, pool2d_into,
};
pub use stem::{stem_conv, stem_forward, stem_forward_into, CifarStem, ImageNetStem};
pub use transition::{transition_forward, transition_forward_into, Transition};
