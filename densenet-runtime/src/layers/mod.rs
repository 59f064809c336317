//! Layers, one file each, and each stage kind's fast forward pass.
//!
//! All take and return NHWC tensors. Each stage kind (stem, dense block, transition,
//! head) has one fast forward pass, `*_forward_into`, working in the arena
//! ([`Model::forward_into`](crate::Model::forward_into)); [`reference`](crate::reference)
//! holds the plain allocating ones they are tested against. Layers know nothing of
//! models: stages ([`stage`](crate::stage)) are built from them.

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

#[cfg(feature = "std")] // training's
pub(crate) use batch_norm::relu_padded_into;
pub use batch_norm::BatchNorm2d;
pub use conv::{Conv2d, Conv2dConfig};
pub(crate) use conv_into::conv2d_into;
#[cfg(feature = "std")] // training's
pub(crate) use conv_into::{conv1x1_into_padded, zero_border};
pub use conv_weight::WeightMut;
pub(crate) use dense_block::dense_block_forward_into;
pub use dense_block::DenseLayer;
pub(crate) use head::{feature_map_forward_into, pooled_head_forward_into};
pub use linear::Linear;
pub use pool::{avg_pool2d, global_avg_pool, global_max_pool, max_pool2d};
pub(crate) use pool::{global_pool_into, pool2d_into};
pub(crate) use stem::{stem_conv, stem_forward_into};
#[cfg(feature = "std")]
pub(crate) use transition::bn_relu_pool_into;
pub(crate) use transition::transition_forward_into;
