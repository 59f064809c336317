//! Layers, one file each, and the stages made of them.
//!
//! All take and return NHWC tensors. Each stage kind (stem, dense block, transition,
//! head) has one fast forward pass, `*_forward_into`, working in the arena
//! ([`Model::forward_into`](crate::Model::forward_into)); [`reference`] holds the plain
//! allocating ones they are tested against. [`blocks`] has the typed building blocks a
//! generated model's fields are made of.

mod batch_norm;
pub mod blocks;
mod conv;
mod conv_into;
mod conv_weight;
mod dense_block;
mod head;
mod linear;
mod pool;
pub mod reference;
mod stem;
mod transition;

pub use batch_norm::BatchNorm2d;
pub use blocks::{
    AvgPoolHead, CifarStem, ClassifierHead, DenseBlock, FeatureMapHead, ImageNetStem, MaxPoolHead,
    Transition,
};
pub use conv::{Conv2d, Conv2dConfig};
pub use conv_into::{conv1x1_into_padded, conv2d_into};
pub use conv_weight::WeightMut;
pub use dense_block::{dense_block_forward_into, dense_block_scratch, DenseLayer};
pub use head::{feature_map_forward_into, pooled_head_forward_into};
pub use linear::Linear;
pub use pool::{
    avg_pool2d, global_avg_pool, global_max_pool, global_pool_into, max_pool2d, pool2d_into,
};
pub use stem::{stem_conv, stem_forward_into};
pub use transition::transition_forward_into;
