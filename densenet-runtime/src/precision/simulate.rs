//! The fp32 walk over a model with a hook on every quantized convolution's input.
//!
//! One walk, two uses: calibration runs it on the fp32 model and the hook records each
//! input's statistics; the fallback (a CPU without the low-precision instructions) runs
//! it on the quantized model's fp32 copy, whose convolution weights are the dequantized
//! (int8) or bf16-rounded values, and the hook rounds each input exactly as the kernels
//! would (int8: `q = clamp(round(x/s), 0, 255)`, then `q·s`; bf16: round to nearest
//! even). The convolutions then run on the fp32 kernels: the same products, accumulated
//! in f32 instead of i32 (int8) or in another order (bf16).
//!
//! The kernels' path stores every dense block's buffer in bf16 (`forward.rs`): the
//! fallback rounds what enters a buffer likewise (`round_buffers`: the stem's output, each
//! layer's new channels, each transition's output), calibration does not (fp32's values).
//!
//! Sites are numbered in network order, as [`conv_sites`] lists them: for each dense
//! layer its 1x1's input (BN-ReLU of the block buffer) and its 3x3's input (or a plain
//! layer's one conv input), for each transition its pooled BN-ReLU output. The stem's
//! input (raw, signed pixels) is not a site: the stem stays fp32.

use ndarray::{s, Array4, ArrayD, ArrayView4};

use crate::kernels::direct_conv::lowp::bf16_round;
use crate::layers::{avg_pool2d, DenseLayer};
use crate::reference;
use crate::stage::{stages, LayerName, LayerRef, Network, Site, StageRef};
use crate::{input_to_nhwc, Error};

/// Every quantized convolution's name, in site order: every conv but the stem's.
pub(crate) fn conv_sites<M: Network + ?Sized>(model: &M) -> Vec<LayerName> {
    let mut names = Vec::new();
    model.visit_layers(&mut |name, layer| {
        if matches!(layer, LayerRef::Conv(_)) && is_quantized(name) {
            names.push(name);
        }
    });
    names
}

/// Whether the layer named `name`, if a convolution, runs in low precision: all but the
/// stem's.
pub(crate) fn is_quantized(name: LayerName) -> bool {
    name.site != Site::Stem
}

/// The model on an NCHW batch, `hook(site, input)` called on every quantized
/// convolution's input (NHWC, contiguous) before the convolution reads it; with
/// `round_buffers`, every value entering a dense block's buffer rounded to bf16 as the
/// kernels' path stores it.
///
/// # Errors
/// [`Error::InputShape`] or [`Error::EmptyBatch`].
pub(crate) fn forward<M: Network + ?Sized>(
    model: &M,
    x: ArrayView4<'_, f32>,
    round_buffers: bool,
    hook: &mut dyn FnMut(usize, &mut [f32]),
) -> Result<ArrayD<f32>, Error> {
    let mut x = input_to_nhwc(x, model.plan().input)?;
    let mut site = 0;
    let stored = |mut y: Array4<f32>| {
        if round_buffers {
            y.mapv_inplace(|v| bf16_round(v).to_f32());
        }
        y
    };
    for stage in stages(model) {
        x = match stage {
            StageRef::Stem { conv, norm } => stored(reference::stem(conv, norm, x.view())),
            StageRef::Block { layers, .. } => block(layers, x.view(), &mut site, &stored, hook),
            StageRef::Transition { norm, conv, .. } => {
                let mut pooled = avg_pool2d(norm.forward_relu(x.view()).view(), 2, 2);
                hook(site, contiguous(&mut pooled));
                site += 1;
                stored(conv.forward(pooled.view()))
            }
            head @ StageRef::Head { .. } => return Ok(reference::stage(head, x.view())),
        };
    }
    Ok(x.into_dyn())
}

/// A dense block: the buffer of all its channels (each layer's new ones through
/// `stored`), each layer's BN-ReLU'd inputs passed through the hook.
fn block(
    layers: &[DenseLayer],
    x: ArrayView4<'_, f32>,
    site: &mut usize,
    stored: &dyn Fn(Array4<f32>) -> Array4<f32>,
    hook: &mut dyn FnMut(usize, &mut [f32]),
) -> Array4<f32> {
    let (n, h, w, c_in) = x.dim();
    let c_out = c_in + layers.iter().map(DenseLayer::growth).sum::<usize>();
    let mut buf = Array4::<f32>::zeros((n, h, w, c_out));
    buf.slice_mut(s![.., .., .., ..c_in]).assign(&x);
    let mut c = c_in;
    for layer in layers {
        let k = layer.growth();
        let mut input = match layer {
            DenseLayer::Basic { norm1, .. } | DenseLayer::Bottleneck { norm1, .. } => {
                norm1.forward_relu(buf.slice(s![.., .., .., ..c]))
            }
        };
        hook(*site, contiguous(&mut input));
        *site += 1;
        let new = match layer {
            DenseLayer::Basic { conv1, .. } => conv1.forward(input.view()),
            DenseLayer::Bottleneck {
                conv1,
                norm2,
                conv2,
                ..
            } => {
                let mid = conv1.forward(input.view());
                let mut mid = norm2.forward_relu(mid.view());
                hook(*site, contiguous(&mut mid));
                *site += 1;
                conv2.forward(mid.view())
            }
        };
        buf.slice_mut(s![.., .., .., c..c + k]).assign(&stored(new));
        c += k;
    }
    buf
}

/// The values of an array the layers just built (standard layout).
fn contiguous(x: &mut Array4<f32>) -> &mut [f32] {
    if !x.is_standard_layout() {
        *x = x.as_standard_layout().into_owned();
    }
    x.as_slice_mut()
        .expect("a standard-layout array is contiguous")
}
