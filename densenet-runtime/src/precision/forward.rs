//! The low-precision forward pass on the kernels of `kernels/direct_conv/lowp`.
//!
//! Stage by stage, as [`reference`](crate::reference) runs fp32, with each dense
//! block's channels in one buffer (`(n, h, w, c_out)`, every layer writing its `k`
//! channels in place) stored in **bf16**: every bottleneck 1x1 reads all of its
//! block's channels so far, and in f32 that traffic bounded both low precisions
//! (int8 does a quarter of fp32's arithmetic on the same bytes). Each stored value is
//! a convolution's output rounded to nearest even, before the BatchNorm of the layers
//! that read it. A DenseNet-B layer is two kernel calls:
//! - the 1x1 reads the first `c` channels of the block buffer, widened to f32, through
//!   norm1 + ReLU (the prologue, applied while a tile's inputs are packed and quantized
//!   with the calibrated scale, or rounded to bf16) and writes through norm2 + ReLU (the
//!   epilogue) into the interior of the 3x3's zero-bordered input, as u8 (requantized
//!   with the 3x3's input scale) or bf16;
//! - the 3x3 reads that map in place and writes bf16 into its channels of the buffer.
//!
//! A plain layer writes its BN-ReLU'd input zero-padded in f32 and runs its 3x3 on it;
//! a transition pools its BN-ReLU'd input in f32 (one pass, as the fp32 arena) and runs
//! its 1x1 on the pooled map, into the next block's buffer. The stem runs fp32 as the
//! arena runs it (`stem_forward_into`: direct kernel, BN-ReLU fused) and its output is
//! rounded into the first block's buffer; the head widens the last buffer and runs as
//! the fp32 arena's head.

use half::bf16;
use ndarray::{ArrayD, ArrayView4};

use super::quantized::{LowWeight, QConv};
use super::QuantizeError;
use crate::input_to_nhwc;
use crate::kernels::direct_conv::lowp::{
    bf16_round, conv_bf16, conv_int8, Bf16Input, Bf16Output, Int8Input, Int8Output, LowpError,
};
use crate::kernels::direct_conv::{ConvShape, Epilogue, ImageLayout};
use crate::kernels::elementwise::scale_shift_relu_add;
use crate::layers::{
    feature_map_forward_into, pooled_head_forward_into, stem_forward_into, BatchNorm2d, Conv2d,
    DenseLayer, Linear,
};
use crate::parallel::prelude::*;
use crate::spec::{Head, Plan};
use crate::stage::{stages, Network, StageRef};
use crate::weights::torchvision_path;

/// `model` on the NCHW batch `x` with its quantized convolutions `convs` (site order)
/// on the low-precision kernels.
///
/// # Errors
/// [`Error::InputShape`], [`Error::EmptyBatch`], [`QuantizeError::TooLarge`] for a
/// batch whose buffers overflow `usize`, [`QuantizeError::Kernel`] if a kernel refuses
/// (`LowpError::Unsupported` when the kernels were turned off meanwhile).
pub(crate) fn forward<M: Network + ?Sized>(
    model: &M,
    convs: &[QConv],
    x: ArrayView4<'_, f32>,
    ws: &mut LowpWorkspace,
) -> Result<ArrayD<f32>, QuantizeError> {
    let x = input_to_nhwc(x, model.plan().input)?;
    let (n, h, w, c) = x.dim();
    let input = Map {
        data: x.into_raw_vec_and_offset().0,
        dims: (n, h, w),
        c,
        width: c,
    };
    // The stem reads the input; every later stage a block buffer.
    let mut x = Map::<bf16>::default();
    let mut site = 0;
    let mut stages = stages(model).peekable();
    while let Some(stage) = stages.next() {
        // A stage before a block writes the first channels of the block's buffer, as
        // the fp32 arena does: no copy, no zero-fill.
        let growth = match stages.peek() {
            Some(StageRef::Block { layers, .. }) => {
                layers.iter().map(DenseLayer::growth).sum::<usize>()
            }
            _ => 0,
        };
        let next_x = match stage {
            StageRef::Stem { conv, norm } => stem(conv, norm, &input, growth, ws)?,
            StageRef::Block { layers, .. } => {
                let buf = core::mem::take(&mut x)
                    .widened(layers.iter().map(DenseLayer::growth).sum(), ws)?;
                block(layers, buf, convs, &mut site, ws)?
            }
            StageRef::Transition { norm, conv, .. } => {
                let pooled = bn_relu_pool(norm, &x, ws)?;
                let (n, h, w) = pooled.dims;
                let c_out = conv.c_out();
                let width = c_out.checked_add(growth).ok_or(QuantizeError::TooLarge {
                    what: "a dense block's buffer",
                })?;
                let mut out = ws
                    .bf16s
                    .take_dirty(size(&[n, h, w, width], "a transition's output")?);
                let src = Src::F32 {
                    data: &pooled.data,
                    prologue: Epilogue::Store,
                };
                let shape = pointwise(n, h, w, pooled.c, c_out);
                let conv = next(convs, &mut site)?;
                let (input, output) = (
                    ImageLayout::dense(h, w, pooled.c),
                    ImageLayout::dense(h, w, width),
                );
                run(
                    conv,
                    src,
                    input,
                    shape,
                    Epilogue::Store,
                    Dst::Bf16(&mut out),
                    output,
                    true,
                )?;
                ws.f32s.give(pooled.data);
                Map {
                    data: out,
                    dims: (n, h, w),
                    c: c_out,
                    width,
                }
            }
            StageRef::Head {
                norm,
                classifier,
                head,
            } => {
                let y = self::head(norm, classifier, head, model.plan(), x, ws)?;
                return Ok(y);
            }
        };
        ws.bf16s.give(core::mem::replace(&mut x, next_x).data);
    }
    // A model without a head: the last block's channels, widened.
    let (n, h, w) = x.dims;
    let widened: Vec<f32> = x
        .data
        .chunks_exact(x.width.max(1))
        .flat_map(|pixel| pixel[..x.c].iter().map(|v| v.to_f32()))
        .collect();
    ws.bf16s.give(x.data);
    Ok(ArrayD::from_shape_vec(vec![n, h, w, x.c], widened).expect("a map's buffer holds its dims"))
}

/// The head in fp32 as the fp32 arena runs it (BN-ReLU, then the global pool and the
/// classifier, or the NCHW feature map), into a new `[n] ++ plan.output` array.
fn head(
    norm: &BatchNorm2d,
    classifier: Option<&Linear>,
    head: Head,
    plan: &Plan,
    x: Map<bf16>,
    ws: &mut LowpWorkspace,
) -> Result<ArrayD<f32>, QuantizeError> {
    let ((n, h, w), c) = (x.dims, x.c);
    // The buffer's channels widened to f32 (exact), dense.
    let mut wide = ws.f32s.take_dirty(size(&[n, h, w, c], "the head's input")?);
    if c > 0 {
        for (dst, src) in wide.chunks_exact_mut(c).zip(x.data.chunks_exact(x.width)) {
            widen(&src[..c], dst);
        }
    }
    ws.bf16s.give(x.data);
    let shape: Vec<usize> = core::iter::once(n)
        .chain(plan.output.iter().copied())
        .collect();
    let mut out = ArrayD::zeros(shape);
    let classes = classifier.map_or(0, Linear::out_features);
    // The BN-ReLU'd map, the pooled features, the logits.
    let parts = [
        size(&[n, h, w, c], "the head's scratch")?,
        size(&[n, c], "the head's scratch")?,
        size(&[n, classes], "the head's scratch")?,
    ];
    let len = parts
        .iter()
        .try_fold(0usize, |sum, &part| sum.checked_add(part))
        .ok_or(QuantizeError::TooLarge {
            what: "the head's scratch",
        })?;
    let mut scratch = ws.f32s.take_dirty(len);
    let mut params = vec![0.0; 2 * c];
    match head {
        Head::None => {
            let out = out
                .view_mut()
                .into_dimensionality()
                .expect("plan's NCHW output");
            feature_map_forward_into(norm, &wide, (n, h, w), out, &mut params, &mut scratch);
        }
        _ => {
            let out = out
                .view_mut()
                .into_dimensionality()
                .expect("plan's (n, k) output");
            let max = head == Head::Max;
            pooled_head_forward_into(
                norm,
                classifier,
                max,
                &wide,
                (n, h, w),
                out,
                &mut params,
                &mut scratch,
            );
        }
    }
    ws.f32s.give(scratch);
    ws.f32s.give(wide);
    Ok(out)
}

/// An NHWC activation map `(n, h, w, c)` whose pixels are `width ≥ c` values apart:
/// the first channels of a dense block's buffer (bf16), or an f32 map (the input, a
/// transition's pooled input).
#[derive(Debug, Default)]
struct Map<T> {
    data: Vec<T>,
    dims: (usize, usize, usize),
    /// Channels held.
    c: usize,
    /// Floats per pixel.
    width: usize,
}

impl Map<f32> {
    /// The map as an `(n, h, w, c)` view.
    fn view(&self) -> ArrayView4<'_, f32> {
        let (n, h, w) = self.dims;
        ArrayView4::from_shape((n, h, w, self.width), &self.data)
            .expect("a map's buffer holds its dims")
            .slice_move(ndarray::s![.., .., .., ..self.c])
    }
}

impl Map<bf16> {
    /// The map as a buffer of `c + growth` channels a pixel, its own if it has that
    /// width (the stage before wrote it so), else copied into one.
    fn widened(self, growth: usize, ws: &mut LowpWorkspace) -> Result<Self, QuantizeError> {
        let width = self.c.checked_add(growth).ok_or(QuantizeError::TooLarge {
            what: "a dense block's buffer",
        })?;
        if self.width == width {
            return Ok(self);
        }
        let (n, h, w) = self.dims;
        let mut data = ws
            .bf16s
            .take_dirty(size(&[n, h, w, width], "a dense block's buffer")?);
        if width > 0 {
            for (dst, src) in data
                .chunks_exact_mut(width)
                .zip(self.data.chunks_exact(self.width.max(1)))
            {
                dst[..self.c].copy_from_slice(&src[..self.c]);
            }
        }
        ws.bf16s.give(self.data);
        Ok(Map {
            data,
            width,
            ..self
        })
    }
}

/// The buffers of [`Quantized`](super::Quantized)'s forward passes, kept between calls
/// so that a pass after the first of its batch size allocates only its output (and the
/// NHWC copy of its input): [`Quantized::forward_into`](super::Quantized::forward_into)
/// takes one; `forward` uses one per thread.
#[derive(Debug, Default)]
pub struct LowpWorkspace {
    /// Free f32 buffers (pooled maps, the stem's and the head's scratch).
    f32s: FreeList<f32>,
    /// Free bf16 buffers (dense blocks' buffers).
    bf16s: FreeList<bf16>,
    /// The blocks' scratch, one per task, kept between blocks and passes.
    scratches: Vec<Scratch>,
}

impl LowpWorkspace {
    /// An empty workspace; it grows to the largest batch it runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held.
    pub fn capacity_bytes(&self) -> usize {
        let f32s: usize = self
            .scratches
            .iter()
            .map(|s| s.padded.capacity())
            .sum::<usize>();
        let mid: usize = self
            .scratches
            .iter()
            .map(|s| match &s.mid {
                Some(Mid::U8(v)) => v.capacity(),
                Some(Mid::Bf16(v)) => 2 * v.capacity(),
                None => 0,
            })
            .sum();
        self.f32s.bytes() + self.bf16s.bytes() + 4 * f32s + mid
    }
}

/// Buffers of one element type, kept for later passes.
#[derive(Debug)]
struct FreeList<T> {
    free: Vec<Vec<T>>,
}

impl<T> Default for FreeList<T> {
    fn default() -> Self {
        Self { free: Vec::new() }
    }
}

impl<T: Copy + Default> FreeList<T> {
    /// Bytes held.
    fn bytes(&self) -> usize {
        self.free.iter().map(Vec::capacity).sum::<usize>() * std::mem::size_of::<T>()
    }

    /// A buffer of `len` values holding whatever its last use left (zeros where it
    /// grew), for outputs written whole: the free buffer with the smallest capacity
    /// that holds it, else the largest one, grown.
    fn take_dirty(&mut self, len: usize) -> Vec<T> {
        let fits = (0..self.free.len())
            .filter(|&i| self.free[i].capacity() >= len)
            .min_by_key(|&i| self.free[i].capacity());
        let largest = (0..self.free.len()).max_by_key(|&i| self.free[i].capacity());
        let mut v = fits
            .or(largest)
            .map(|i| self.free.swap_remove(i))
            .unwrap_or_default();
        v.truncate(len);
        v.resize(len, T::default());
        v
    }

    /// A zeroed buffer of `len` values: see [`FreeList::take_dirty`].
    fn take(&mut self, len: usize) -> Vec<T> {
        let mut v = self.take_dirty(len);
        v.fill(T::default());
        v
    }

    /// Returns a buffer for later passes.
    fn give(&mut self, v: Vec<T>) {
        if v.capacity() > 0 {
            self.free.push(v);
        }
    }
}

/// bf16 values widened to f32 (exact: the bits shifted into the high half).
fn widen(src: &[bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s.to_bits()) << 16);
    }
}

/// f32 values rounded to bf16 as the kernels store them ([`bf16_round`]).
fn round(src: &[f32], dst: &mut [bf16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_round(s);
    }
}

/// The stem in fp32 as the fp32 arena runs it (`stem_forward_into`: the direct kernel on
/// an input padded once, an ImageNet stem's BN-ReLU fused into its epilogue, then the
/// max pool), on NHWC input, rounded into the first `c0` channels of a block buffer of
/// `c0 + growth`.
fn stem(
    conv: &Conv2d,
    norm: Option<&BatchNorm2d>,
    x: &Map<f32>,
    growth: usize,
    ws: &mut LowpWorkspace,
) -> Result<Map<bf16>, QuantizeError> {
    let ((n, h, w), c) = (x.dims, x.c);
    let p = conv.config().padding;
    let (oh, ow) = conv.output_size(h, w);
    let c0 = conv.c_out();
    // torch's 3x3/2 max pool with padding 1 after an ImageNet stem.
    let (out_h, out_w) = match norm {
        Some(_) => ((oh.max(1) - 1) / 2 + 1, (ow.max(1) - 1) / 2 + 1),
        None => (oh, ow),
    };
    let padded = size(&[n, h + 2 * p, w + 2 * p, c], "the stem's padded input")?;
    let conv_out = match norm {
        Some(_) => size(&[n, oh, ow, c0], "the stem's output")?,
        None => 0,
    };
    let scratch_len = padded
        .checked_add(conv_out)
        .ok_or(QuantizeError::TooLarge {
            what: "the stem's scratch",
        })?;
    let width = c0.checked_add(growth).ok_or(QuantizeError::TooLarge {
        what: "a dense block's buffer",
    })?;
    // All written whole: the padded input with its border, the f32 output, the
    // buffer's first `c0` channels of each pixel.
    let mut scratch = ws.f32s.take_dirty(scratch_len);
    let pixels = size(&[n, out_h, out_w], "the stem's output")?;
    let mut out = ws
        .f32s
        .take_dirty(size(&[pixels, c0], "the stem's output")?);
    let mut buf = ws
        .bf16s
        .take_dirty(size(&[pixels, width], "the stem's output")?);
    let mut params = vec![0.0f32; 2 * c0];
    let nchw = x.view().permuted_axes([0, 3, 1, 2]);
    stem_forward_into(
        conv,
        norm,
        nchw,
        &mut out,
        c0,
        &mut params,
        &mut scratch,
        &mut Vec::new(),
    );
    if c0 > 0 {
        buf.par_chunks_mut(64 * width)
            .zip(out.par_chunks(64 * c0))
            .for_each(|(dst, src)| {
                for (dst, src) in dst.chunks_exact_mut(width).zip(src.chunks_exact(c0)) {
                    round(src, &mut dst[..c0]);
                }
            });
    }
    ws.f32s.give(scratch);
    ws.f32s.give(out);
    Ok(Map {
        data: buf,
        dims: (n, out_h, out_w),
        c: c0,
        width,
    })
}

/// A transition's BN-ReLU and 2x2 average pool (floor mode) in one pass, as the fp32
/// arena's transition computes them, from the bf16 block buffer: `(n, h/2, w/2, c)`.
fn bn_relu_pool(
    norm: &BatchNorm2d,
    x: &Map<bf16>,
    ws: &mut LowpWorkspace,
) -> Result<Map<f32>, QuantizeError> {
    /// Channels widened at a time, on the stack.
    const CHUNK: usize = 256;
    let ((n, h, w), c, width) = (x.dims, x.c, x.width);
    let (ho, wo) = (h / 2, w / 2);
    let x = &x.data;
    let (scale, shift) = norm.scale_shift();
    let mut pooled = ws
        .f32s
        .take(size(&[n, ho, wo, c], "a transition's pooled input")?);
    if wo > 0 && c > 0 {
        pooled
            .par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(r, dst)| {
                let (b, oy) = (r / ho, r % ho);
                let mut wide = [0.0f32; CHUNK];
                for (ox, dst) in dst.chunks_exact_mut(c).enumerate() {
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let p = (b * h + 2 * oy + dy) * w + 2 * ox + dx;
                        let at = p * width;
                        for c0 in (0..c).step_by(CHUNK) {
                            let len = (c - c0).min(CHUNK);
                            widen(&x[at + c0..at + c0 + len], &mut wide[..len]);
                            scale_shift_relu_add(
                                &wide[..len],
                                &scale[c0..],
                                &shift[c0..],
                                &mut dst[c0..c0 + len],
                            );
                        }
                    }
                    dst.iter_mut().for_each(|v| *v *= 0.25);
                }
            });
    }
    Ok(Map {
        data: pooled,
        dims: (n, ho, wo),
        c,
        width: c,
    })
}

/// A dense block on the kernels (see the module's documentation), image by image as
/// the fp32 arena runs blocks: one image's buffer and bottleneck map stay in cache
/// from layer to layer. `buf` is the block's buffer (`width` its output channels),
/// its first `c` channels the block's input; the rest is written before it is read.
fn block(
    layers: &[DenseLayer],
    mut buf: Map<bf16>,
    convs: &[QConv],
    site: &mut usize,
    ws: &mut LowpWorkspace,
) -> Result<Map<bf16>, QuantizeError> {
    let ((_, h, w), c_in, c_out) = (buf.dims, buf.c, buf.width);
    let first = *site;
    let n = buf.dims.0;
    let image_len = h * w * c_out;
    // A batch that splits over the pool's threads runs one task per thread, each
    // taking its images through the block on single-threaded kernels (see
    // `image_tasks`); otherwise images in turn, each convolution split over the
    // threads. The same values either way: a kernel's result does not depend on how
    // its work is split.
    let tasks = crate::parallel::image_tasks(n);
    if ws.scratches.len() < tasks {
        ws.scratches.resize_with(tasks, Scratch::default);
    }
    let per_task = n.div_ceil(tasks);
    let sites: Vec<Result<usize, QuantizeError>> = buf
        .data
        .par_chunks_mut(per_task * image_len)
        .zip(ws.scratches.par_chunks_mut(1))
        .map(|(images, scratch)| {
            let scratch = &mut scratch[0];
            // The bottleneck map's geometry is the block's: zeroed once, at its first
            // layer.
            scratch.mid_ready = false;
            let mut site = first;
            let mut images_in_turn = || {
                for image in images.chunks_exact_mut(image_len) {
                    site = first;
                    let dims = (h, w, c_in, c_out);
                    image_layers(layers, image, dims, convs, &mut site, scratch, tasks == 1)?;
                }
                Ok::<(), QuantizeError>(())
            };
            if tasks > 1 {
                crate::parallel::sequential(images_in_turn)?;
            } else {
                images_in_turn()?;
            }
            Ok(site)
        })
        .collect();
    for result in sites {
        *site = result?;
    }
    buf.c = c_out;
    Ok(buf)
}

/// A block's buffers reused from image to image (and block to block).
#[derive(Debug, Default)]
struct Scratch {
    /// A plain layer's padded f32 input.
    padded: Vec<f32>,
    /// The bottleneck's output, zero-bordered.
    mid: Option<Mid>,
    /// Whether `mid` has this block's size and a zero border.
    mid_ready: bool,
}

/// A block's layers on one image's buffer `(h, w, c_out)`, whose first `c_in` channels
/// hold the block's input.
fn image_layers(
    layers: &[DenseLayer],
    buf: &mut [bf16],
    (h, w, c_in, c_out): (usize, usize, usize, usize),
    convs: &[QConv],
    site: &mut usize,
    scratch: &mut Scratch,
    parallel: bool,
) -> Result<(), QuantizeError> {
    let n = 1;
    let at = |offset| ImageLayout {
        offset,
        image_stride: h * w * c_out,
        row_stride: w * c_out,
        pixel_stride: c_out,
    };
    let Scratch {
        padded,
        mid,
        mid_ready,
    } = scratch;
    let mut c = c_in;
    for layer in layers {
        let k = layer.growth();
        match layer {
            DenseLayer::Basic { norm1, conv1 } => {
                let win = conv1.window();
                let (hp, wp) = (h + 2 * win.padding, w + 2 * win.padding);
                padded.resize(size(&[n, hp, wp, c], "a padded input")?, 0.0);
                let (scale, shift) = norm1.scale_shift();
                bn_relu_padded(buf, (h, w, c_out), win.padding, &scale, &shift, padded);
                let (oh, ow) = conv1.output_size(h, w);
                let shape = window_shape(n, oh, ow, c, k, conv1.window());
                let src = Src::F32 {
                    data: padded,
                    prologue: Epilogue::Store,
                };
                let conv = next(convs, site)?;
                run(
                    conv,
                    src,
                    ImageLayout::dense(hp, wp, c),
                    shape,
                    Epilogue::Store,
                    Dst::Bf16(buf),
                    at(c),
                    parallel,
                )?;
            }
            DenseLayer::Bottleneck {
                norm1,
                conv1,
                norm2,
                conv2,
            } => {
                let width = conv1.c_out();
                let (scale1, shift1) = norm1.scale_shift();
                let (scale2, shift2) = norm2.scale_shift();
                let win = conv2.window();
                let (hp, wp) = (h + 2 * win.padding, w + 2 * win.padding);
                let len = size(&[n, hp, wp, width], "a bottleneck's output")?;
                let (first, second) = (next(convs, site)?, next(convs, site)?);
                // The map's border stays 0 (u8's and bf16's zero): the 1x1 writes only
                // its interior, the same for every layer of the block.
                let mid = match &mut *mid {
                    Some(m) if *mid_ready => m,
                    slot => {
                        *mid_ready = true;
                        Mid::reset(slot, &second.weight, len)
                    }
                };
                let mid_layout = ImageLayout::dense(hp, wp, width);
                let interior = ImageLayout {
                    offset: (win.padding * wp + win.padding) * width,
                    ..mid_layout
                };
                let src = Src::Bf16 {
                    data: buf,
                    prologue: Epilogue::ScaleShiftRelu {
                        scale: &scale1,
                        shift: &shift1,
                    },
                };
                let epilogue = Epilogue::ScaleShiftRelu {
                    scale: &scale2,
                    shift: &shift2,
                };
                let shape = pointwise(n, h, w, c, width);
                run(
                    first,
                    src,
                    at(0),
                    shape,
                    epilogue,
                    mid.as_dst(second),
                    interior,
                    parallel,
                )?;
                let (oh, ow) = conv2.output_size(h, w);
                let shape = window_shape(n, oh, ow, width, k, win);
                run(
                    second,
                    mid.as_src(),
                    mid_layout,
                    shape,
                    Epilogue::Store,
                    Dst::Bf16(buf),
                    at(c),
                    parallel,
                )?;
            }
        }
        c += k;
    }
    Ok(())
}

/// `relu(x·scale + shift)` of the first `c = scale.len()` channels of an image's bf16
/// block buffer `(h, w, width)`, widened, into `out` as an `(h + 2·pad, w + 2·pad, c)`
/// f32 map with a zero border (written here): a plain layer's input.
fn bn_relu_padded(
    buf: &[bf16],
    (h, w, width): (usize, usize, usize),
    pad: usize,
    scale: &[f32],
    shift: &[f32],
    out: &mut [f32],
) {
    let c = scale.len();
    let wp = w + 2 * pad;
    out.fill(0.0);
    for y in 0..h {
        for x in 0..w {
            let src = &buf[(y * w + x) * width..][..c];
            let at = ((y + pad) * wp + x + pad) * c;
            let dst = &mut out[at..at + c];
            widen(src, dst);
            for ((v, &s), &t) in dst.iter_mut().zip(scale).zip(shift) {
                *v = crate::kernels::direct_conv::relu(*v * s + t);
            }
        }
    }
}

/// The bottleneck's output between its 1x1 and its 3x3: u8 or bf16.
#[derive(Debug)]
enum Mid {
    U8(Vec<u8>),
    Bf16(Vec<bf16>),
}

impl Mid {
    /// `len` zeros of the type `weight`'s kernel reads, in `slot`'s memory if it holds
    /// that type.
    fn reset<'a>(slot: &'a mut Option<Mid>, weight: &LowWeight, len: usize) -> &'a mut Mid {
        match (&mut *slot, weight) {
            (Some(Mid::U8(v)), LowWeight::Int8 { .. }) => {
                v.clear();
                v.resize(len, 0);
            }
            (Some(Mid::Bf16(v)), LowWeight::Bf16(_)) => {
                v.clear();
                v.resize(len, bf16::ZERO);
            }
            _ => {
                *slot = Some(match weight {
                    LowWeight::Int8 { .. } => Mid::U8(vec![0; len]),
                    LowWeight::Bf16(_) => Mid::Bf16(vec![bf16::ZERO; len]),
                })
            }
        }
        slot.get_or_insert_with(|| Mid::U8(Vec::new()))
    }

    /// The map as the output of the 1x1, requantized with `reader`'s input scale.
    fn as_dst(&mut self, reader: &QConv) -> Dst<'_> {
        match self {
            Mid::U8(v) => Dst::U8(v, reader.input_scale()),
            Mid::Bf16(v) => Dst::Bf16(v),
        }
    }

    fn as_src(&self) -> Src<'_> {
        match self {
            Mid::U8(v) => Src::U8(v),
            Mid::Bf16(v) => Src::Bf16 {
                data: v,
                prologue: Epilogue::Store,
            },
        }
    }
}

/// A convolution's input.
enum Src<'a> {
    F32 {
        data: &'a [f32],
        prologue: Epilogue<'a>,
    },
    U8(&'a [u8]),
    /// A block buffer read through a prologue, or the bottleneck's bf16 map.
    Bf16 {
        data: &'a [bf16],
        prologue: Epilogue<'a>,
    },
}

/// A convolution's output.
enum Dst<'a> {
    /// Requantized with this scale.
    U8(&'a mut [u8], f32),
    /// A block buffer, or the bottleneck's bf16 map.
    Bf16(&'a mut [bf16]),
}

/// Runs `conv` on its kernel. Mixed precisions (a u8 input for a bf16 weight) are
/// refused as a geometry error; `Quantized` never builds them.
// A kernel call's flat argument list, as the kernels'.
#[allow(clippy::too_many_arguments)]
fn run(
    conv: &QConv,
    src: Src<'_>,
    input_layout: ImageLayout,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    dst: Dst<'_>,
    out_layout: ImageLayout,
    parallel: bool,
) -> Result<(), QuantizeError> {
    let mixed = LowpError::Geometry("an input or output of another precision than the weight");
    let result = match &conv.weight {
        LowWeight::Int8 {
            weight,
            input_scale: scale,
        } => {
            let scale = *scale;
            let input = match src {
                Src::F32 { data, prologue } => Ok(Int8Input::F32 {
                    data,
                    prologue,
                    scale,
                }),
                Src::U8(data) => Ok(Int8Input::U8 { data, scale }),
                Src::Bf16 { data, prologue } => Ok(Int8Input::Bf16 {
                    data,
                    prologue,
                    scale,
                }),
            };
            let output = match dst {
                Dst::U8(data, scale) => Int8Output::U8 { data, scale },
                Dst::Bf16(o) => Int8Output::Bf16(o),
            };
            input.and_then(|input| {
                conv_int8(
                    input,
                    input_layout,
                    weight,
                    shape,
                    epilogue,
                    output,
                    out_layout,
                    parallel,
                )
            })
        }
        LowWeight::Bf16(weight) => {
            let input = match src {
                Src::F32 { data, prologue } => Ok(Bf16Input::F32 { data, prologue }),
                Src::Bf16 { data, prologue } => Ok(Bf16Input::Bf16 { data, prologue }),
                Src::U8(_) => Err(mixed.clone()),
            };
            let output = match dst {
                Dst::Bf16(o) => Ok(Bf16Output::Bf16(o)),
                Dst::U8(..) => Err(mixed),
            };
            input.and_then(|input| {
                let output = output?;
                conv_bf16(
                    input,
                    input_layout,
                    weight,
                    shape,
                    epilogue,
                    output,
                    out_layout,
                    parallel,
                )
            })
        }
    };
    result.map_err(|source| QuantizeError::Kernel {
        layer: torchvision_path(conv.name.site, conv.name.part),
        source,
    })
}

/// The next site's convolution.
fn next<'a>(convs: &'a [QConv], site: &mut usize) -> Result<&'a QConv, QuantizeError> {
    let conv = convs.get(*site).ok_or(QuantizeError::Kernel {
        layer: format!("(site {site})"),
        source: LowpError::Geometry("the model has more convolutions than quantized weights"),
    })?;
    *site += 1;
    Ok(conv)
}

/// A 1x1, stride-1 convolution over `n × h × w` pixels.
fn pointwise(n: usize, h: usize, w: usize, c_in: usize, c_out: usize) -> ConvShape {
    ConvShape {
        n,
        out_h: h,
        out_w: w,
        c_in,
        c_out,
        kernel_h: 1,
        kernel_w: 1,
        stride: 1,
    }
}

/// A convolution with `window`, run on an input padded beforehand.
fn window_shape(
    n: usize,
    out_h: usize,
    out_w: usize,
    c_in: usize,
    c_out: usize,
    window: crate::kernels::im2col::Window,
) -> ConvShape {
    ConvShape {
        n,
        out_h,
        out_w,
        c_in,
        c_out,
        kernel_h: window.kernel_h,
        kernel_w: window.kernel_w,
        stride: window.stride,
    }
}

/// The product of `dims`, or [`QuantizeError::TooLarge`] naming `what`.
pub(crate) fn size(dims: &[usize], what: &'static str) -> Result<usize, QuantizeError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or(QuantizeError::TooLarge { what })
}
