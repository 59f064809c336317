//! A dense block: every layer reads the concatenation of all earlier outputs.
//!
//! The concatenation costs nothing: the block allocates one NHWC buffer with room for
//! its final `C_IN + LAYERS·k` channels, copies its input into the first `C_IN`, and
//! each layer reads the first `c` channels and writes its `k` new ones right after them
//! (the shared-storage idea of Pleiss et al., 2017).

use crate::kernels::direct_conv::Epilogue;
use crate::kernels::gemm::MatMut;
use crate::layers::conv_into::{conv1x1_into_padded, conv2d_into};
use crate::layers::{BatchNorm2d, Conv2d, Conv2dConfig};
use crate::prelude::*;
use crate::rng::Rng;

/// One dense layer H_l.
// Layers live in a Vec of one kind per block; boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum DenseLayer {
    /// BN → ReLU → 3x3 conv to k channels (the paper's plain DenseNet layer).
    Basic {
        /// BatchNorm over the layer's input.
        norm1: BatchNorm2d,
        /// The 3x3 conv.
        conv1: Conv2d,
    },
    /// BN → ReLU → 1x1 conv to `bn_size·k` → BN → ReLU → 3x3 conv to k (DenseNet-B).
    Bottleneck {
        /// BatchNorm over the layer's input.
        norm1: BatchNorm2d,
        /// The 1x1 bottleneck conv.
        conv1: Conv2d,
        /// BatchNorm over the bottleneck output.
        norm2: BatchNorm2d,
        /// The 3x3 conv.
        conv2: Conv2d,
    },
}

impl DenseLayer {
    /// A freshly initialised layer reading `c_in` channels; `bn_size == 0` means no bottleneck.
    pub fn init(c_in: usize, growth: usize, bn_size: usize, eps: f32, rng: &mut Rng) -> Self {
        let same = Conv2dConfig {
            stride: 1,
            padding: 1,
        };
        if bn_size == 0 {
            DenseLayer::Basic {
                norm1: BatchNorm2d::init(c_in, eps),
                conv1: Conv2d::init(c_in, growth, 3, same, rng),
            }
        } else {
            let width = bn_size * growth;
            DenseLayer::Bottleneck {
                norm1: BatchNorm2d::init(c_in, eps),
                conv1: Conv2d::init(c_in, width, 1, Conv2dConfig::default(), rng),
                norm2: BatchNorm2d::init(width, eps),
                conv2: Conv2d::init(width, growth, 3, same, rng),
            }
        }
    }

    /// Channels the layer reads.
    pub fn c_in(&self) -> usize {
        match self {
            DenseLayer::Basic { norm1, .. } | DenseLayer::Bottleneck { norm1, .. } => {
                norm1.channels()
            }
        }
    }

    /// Channels the layer adds (the growth rate).
    pub fn growth(&self) -> usize {
        match self {
            DenseLayer::Basic { conv1: conv, .. } | DenseLayer::Bottleneck { conv2: conv, .. } => {
                conv.c_out()
            }
        }
    }
}

/// Floats of scratch [`dense_block_forward_into`] needs for `n` images of `h × w`:
/// `normed` and `bottleneck_padded`, each sized for the widest layer.
pub fn dense_block_scratch(layers: &[DenseLayer], n: usize, h: usize, w: usize) -> [usize; 2] {
    let padded = n * (h + 2) * (w + 2);
    let mut sizes = [0; 2];
    for layer in layers {
        let layer_sizes = match layer {
            DenseLayer::Basic { .. } => [padded * layer.c_in(), 0],
            // norm1 is conv1's prologue: no normalised copy of the input.
            DenseLayer::Bottleneck { conv1, .. } => [0, padded * conv1.c_out()],
        };
        for (s, l) in sizes.iter_mut().zip(layer_sizes) {
            *s = (*s).max(l);
        }
    }
    sizes
}

/// Image tasks' scratch, BatchNorm parameters and fallback matrix
/// ([`images_in_parallel`]): one shared list, topped up to one set per thread before the
/// tasks start, not a set per thread, which grew when a thread first ran an image task
/// of a shape, so that whether a pass allocated depended on where its tasks had landed
/// before (`tests/train_allocations.rs` caught it under load).
#[cfg(feature = "parallel")]
static IMAGE_SCRATCH: std::sync::Mutex<Vec<[Vec<f32>; 3]>> = std::sync::Mutex::new(Vec::new());

/// [`IMAGE_SCRATCH`], locked (tasks only pop and push whole sets).
#[cfg(feature = "parallel")]
fn image_scratch() -> std::sync::MutexGuard<'static, Vec<[Vec<f32>; 3]>> {
    IMAGE_SCRATCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`dense_block_forward_into`] of a batch split over the pool's threads
/// ([`image_tasks`](crate::parallel::image_tasks)): each task takes its images
/// through the block on single-threaded kernels, in a scratch set of
/// [`IMAGE_SCRATCH`] (kept between passes: outside the planned arena, as the Winograd
/// kernel's), so the
/// threads meet once per block instead of once per convolution. The same values as
/// the images in turn. Returns the scratch floats one image uses, as that path does.
#[cfg(feature = "parallel")]
fn images_in_parallel(
    layers: &[DenseLayer],
    (n, h, w, c_in): (usize, usize, usize, usize),
    buf: &mut [f32],
    bn_len: usize,
) -> usize {
    use crate::parallel::prelude::*;
    let c_out = c_in + layers.iter().map(DenseLayer::growth).sum::<usize>();
    let scratch_len: usize = dense_block_scratch(layers, 1, h, w).iter().sum();
    let per_task = n.div_ceil(crate::parallel::image_tasks(n));
    let run = |images: &mut [f32], [scratch, bn, fallback]: &mut [Vec<f32>; 3]| {
        scratch.resize(scratch.len().max(scratch_len), 0.0);
        bn.resize(bn.len().max(bn_len), 0.0);
        crate::parallel::sequential(|| {
            for image in images.chunks_exact_mut(h * w * c_out) {
                let shape = (1, h, w, c_in);
                dense_block_forward_into(layers, shape, image, bn, scratch, fallback);
            }
        });
    };
    {
        let mut sets = image_scratch();
        let threads = crate::parallel::current_num_threads();
        if sets.len() < threads {
            sets.resize_with(threads, Default::default);
        }
        for [scratch, bn, _] in sets.iter_mut() {
            scratch.resize(scratch.len().max(scratch_len), 0.0);
            bn.resize(bn.len().max(bn_len), 0.0);
        }
    }
    buf.par_chunks_mut(per_task * h * w * c_out)
        .for_each(|images| {
            // (A new set only if every one is in use, as when rayon runs this task
            // while an outer one waits.)
            let mut buffers = image_scratch().pop().unwrap_or_default();
            run(images, &mut buffers);
            image_scratch().push(buffers);
        });
    scratch_len
}

/// A dense block's forward pass in place, without allocating: `buf` is the block's
/// concatenation buffer, NHWC `(n, h, w, c_out)`, whose first `c_in` channels of every
/// pixel hold the block input (written there by the stem or the previous transition);
/// each layer appends its channels. `bn_params` holds BatchNorm scale/shift (`2·` the
/// widest layer), `scratch` at least the sum of [`dense_block_scratch`] for one image
/// (a batch runs image by image), carved as
/// `normed | bottleneck_padded`; `fallback` is the im2col matrix of CPUs
/// without AVX-512 or AVX2 ([`conv2d_into`]). Returns the scratch floats used.
///
/// A plain layer's BN-ReLU is written zero-padded by 1, so its 3x3 conv runs unpadded
/// (on the direct kernel); a bottleneck layer's 1x1 conv reads the block buffer through
/// norm1 and its ReLU (the prologue) and writes through norm2 and its ReLU (the
/// epilogue), zero-padded likewise. `bn_params` holds `2·(c + 4k)` floats then. Same
/// arithmetic as [`dense_block_forward`], which stays as the simple reference.
///
/// # Panics
///
/// If the layers do not chain from `c_in`, or a slice is too short.
pub fn dense_block_forward_into(
    layers: &[DenseLayer],
    (n, h, w, c_in): (usize, usize, usize, usize),
    buf: &mut [f32],
    bn_params: &mut [f32],
    scratch: &mut [f32],
    fallback: &mut Vec<f32>,
) -> usize {
    let c_out = c_in + layers.iter().map(DenseLayer::growth).sum::<usize>();
    assert_eq!(buf.len(), n * h * w * c_out, "dense block buffer size");
    if n > 1 {
        // One image at a time through the whole block: its buffer and scratch stay in
        // cache from layer to layer (a batch's would not), and the scratch is one
        // image's whatever the batch.
        #[cfg(feature = "parallel")]
        if crate::parallel::image_tasks(n) > 1 {
            return images_in_parallel(layers, (n, h, w, c_in), buf, bn_params.len());
        }
        let mut used = 0;
        for image in buf.chunks_exact_mut(h * w * c_out) {
            let shape = (1, h, w, c_in);
            used = dense_block_forward_into(layers, shape, image, bn_params, scratch, fallback);
        }
        return used;
    }
    let pixels = n * h * w;
    let sizes = dense_block_scratch(layers, n, h, w);
    let (normed_all, rest) = scratch.split_at_mut(sizes[0]);
    let padded_all = &mut rest[..sizes[1]];
    let padded_dims = (n, h + 2, w + 2);
    let mut c = c_in;
    for layer in layers {
        assert_eq!(layer.c_in(), c, "dense layers must chain");
        let k = layer.growth();
        match layer {
            DenseLayer::Basic { norm1, conv1 } => {
                let normed = &mut normed_all[..n * (h + 2) * (w + 2) * c];
                norm1.forward_relu_padded_into(buf, c_out, (n, h, w), 1, bn_params, normed);
                let dst = MatMut::new(&mut buf[c..], pixels, k, c_out, 1);
                conv2d_into(
                    conv1,
                    normed,
                    padded_dims,
                    true,
                    Epilogue::Store,
                    dst,
                    fallback,
                );
            }
            DenseLayer::Bottleneck {
                norm1,
                conv1,
                norm2,
                conv2,
            } => {
                // norm1 + ReLU, conv1, norm2 + ReLU in one pass over the block buffer:
                // the first BN-ReLU as conv1's prologue, the second as its epilogue,
                // straight into the padded input of conv2 (BN folded, in effect).
                let width = conv1.c_out();
                let (scale1, rest) = bn_params.split_at_mut(c);
                let (shift1, rest) = rest.split_at_mut(c);
                let (scale2, rest) = rest.split_at_mut(width);
                let shift2 = &mut rest[..width];
                norm1.scale_shift_into(scale1, shift1);
                norm2.scale_shift_into(scale2, shift2);
                let prologue = Epilogue::ScaleShiftRelu {
                    scale: &*scale1,
                    shift: &*shift1,
                };
                let epilogue = Epilogue::ScaleShiftRelu {
                    scale: &*scale2,
                    shift: &*shift2,
                };
                let padded = &mut padded_all[..n * (h + 2) * (w + 2) * width];
                let input = &buf[..(pixels - 1) * c_out + c];
                let dims = (n, h, w);
                conv1x1_into_padded(
                    conv1, input, c_out, dims, prologue, epilogue, padded, 1, fallback,
                );
                let dst = MatMut::new(&mut buf[c..], pixels, k, c_out, 1);
                conv2d_into(
                    conv2,
                    padded,
                    padded_dims,
                    true,
                    Epilogue::Store,
                    dst,
                    fallback,
                );
            }
        }
        c += k;
    }
    sizes.iter().sum()
}
