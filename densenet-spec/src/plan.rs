//! Shape inference: channels and spatial size after every layer, and exact parameter,
//! buffer and MAC counts.
//!
//! The one planner: the macro calls it at compile time to emit `PARAMS`, `MACS`, …, and
//! generated models call it at run time for their per-layer table and `summary()`.
//! Layer names follow Keras (`conv2_block1_0_bn`, `pool2_conv`, …) so a summary reads
//! like `keras.applications.DenseNet121().summary()`. Counts use saturating arithmetic so
//! that absurd specs cannot overflow; `check.rs` rejects those before code is generated.

use crate::arch::{Architecture, Head, Stem};
use crate::prelude::*;

/// What a planned layer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// The input batch.
    Input,
    /// A bias-free 2-D convolution with a square kernel.
    Conv2d {
        /// Kernel size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Zero padding on each side.
        padding: usize,
    },
    /// Batch normalisation (2 trainable and 2 running-statistic values per channel).
    BatchNorm,
    /// ReLU.
    Relu,
    /// Max pooling (padding acts as -inf).
    MaxPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on each side.
        padding: usize,
    },
    /// Average pooling without padding, floor mode.
    AvgPool {
        /// Window and stride.
        kernel: usize,
    },
    /// Channel concatenation of a dense layer's input and output.
    Concat,
    /// Global average pooling to one value per channel.
    GlobalAvgPool,
    /// Global max pooling to one value per channel.
    GlobalMaxPool,
    /// Fully connected layer with bias.
    Linear,
}

impl LayerKind {
    /// The Keras class name a Keras summary would show.
    pub fn keras_class(&self) -> &'static str {
        match self {
            LayerKind::Input => "InputLayer",
            LayerKind::Conv2d { .. } => "Conv2D",
            LayerKind::BatchNorm => "BatchNormalization",
            LayerKind::Relu => "Activation",
            LayerKind::MaxPool { .. } => "MaxPooling2D",
            LayerKind::AvgPool { .. } => "AveragePooling2D",
            LayerKind::Concat => "Concatenate",
            LayerKind::GlobalAvgPool => "GlobalAveragePooling2D",
            LayerKind::GlobalMaxPool => "GlobalMaxPooling2D",
            LayerKind::Linear => "Dense",
        }
    }
}

/// One row of the per-layer table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerPlan {
    /// Keras-style layer name.
    pub name: String,
    /// What the layer does.
    pub kind: LayerKind,
    /// Per-image output shape: `[C, H, W]`, or `[C]` after global pooling.
    pub output: Vec<usize>,
    /// Trainable parameters.
    pub params: u64,
    /// Non-trainable buffers (BatchNorm running mean and variance).
    pub buffers: u64,
    /// Multiply-accumulates per image (convolutions and the linear layer).
    pub macs: u64,
}

/// The stem's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StemPlan {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Output height.
    pub height: usize,
    /// Output width.
    pub width: usize,
}

/// A dense block's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    /// Channels in.
    pub c_in: usize,
    /// Dense layers.
    pub layers: usize,
    /// Channels out: `c_in + layers · k`.
    pub c_out: usize,
    /// Height (unchanged by the block).
    pub height: usize,
    /// Width (unchanged by the block).
    pub width: usize,
}

/// A transition's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionPlan {
    /// Channels in.
    pub c_in: usize,
    /// Channels out: `floor(θ · c_in)`.
    pub c_out: usize,
    /// Height after the 2x2 average pool.
    pub height: usize,
    /// Width after the 2x2 average pool.
    pub width: usize,
}

/// One stage of the network with its shape. [`Plan::stages`] lists them in network
/// order: the one sequence that code generation, initialisation, inference, training,
/// weight naming and export all walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StagePlan {
    /// The stem.
    Stem(StemPlan),
    /// Dense block `index` (1-based).
    Block {
        /// 1-based block index.
        index: usize,
        /// Its shape.
        plan: BlockPlan,
    },
    /// Transition `index` (1-based; it follows block `index`).
    Transition {
        /// 1-based transition index.
        index: usize,
        /// Its shape.
        plan: TransitionPlan,
    },
    /// The head: BN, ReLU, then what `head` says.
    Head {
        /// Channels in.
        channels: usize,
        /// Which head.
        head: Head,
        /// Classes of a classifier head.
        classes: usize,
    },
}

/// Every shape and count of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The stem.
    pub stem: StemPlan,
    /// The dense blocks, in order.
    pub blocks: Vec<BlockPlan>,
    /// The transitions, one after each block but the last.
    pub transitions: Vec<TransitionPlan>,
    /// Channels into the head.
    pub head_channels: usize,
    /// Per-image output shape of the model.
    pub output: Vec<usize>,
    /// Every layer, Keras-style.
    pub layers: Vec<LayerPlan>,
    /// Trainable parameters.
    pub params: u64,
    /// Non-trainable buffers (BatchNorm running statistics).
    pub buffers: u64,
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Per-image input shape `[C, H, W]`.
    pub input: [usize; 3],
    /// Which stem.
    pub stem_kind: Stem,
    /// Channels each dense layer adds.
    pub growth: usize,
    /// Bottleneck width factor (`None`: plain 3x3 dense layers).
    pub bottleneck: Option<usize>,
    /// Which head.
    pub head: Head,
    /// Output classes (used by a classifier head).
    pub classes: usize,
    /// The architecture's dropout rate (a training step regenerates its masks, and
    /// without dropout keeps fewer buffers: [`Plan::training`]).
    pub dropout: f32,
}

/// Output size of a sliding window: `floor((n + 2p - k) / s) + 1`, or 0 when it does not fit.
pub fn window_output(n: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    match (n + 2 * padding).checked_sub(kernel) {
        Some(d) if n > 0 => d / stride.max(1) + 1,
        _ => 0,
    }
}

fn m(a: usize, b: usize) -> u64 {
    (a as u64).saturating_mul(b as u64)
}

/// Builds the table row by row.
struct Rows {
    layers: Vec<LayerPlan>,
    shape: [usize; 3],
}

impl Rows {
    fn push(&mut self, name: String, kind: LayerKind, output: Vec<usize>, params: u64, macs: u64) {
        let buffers = if kind == LayerKind::BatchNorm {
            params
        } else {
            0
        };
        self.layers.push(LayerPlan {
            name,
            kind,
            output,
            params,
            buffers,
            macs,
        });
    }

    fn conv(&mut self, name: String, c_out: usize, kernel: usize, stride: usize, padding: usize) {
        let [c, h, w] = self.shape;
        let (oh, ow) = (
            window_output(h, kernel, stride, padding),
            window_output(w, kernel, stride, padding),
        );
        let params = m(c, kernel * kernel).saturating_mul(c_out as u64);
        let macs = params.saturating_mul(m(oh, ow));
        self.shape = [c_out, oh, ow];
        let kind = LayerKind::Conv2d {
            kernel,
            stride,
            padding,
        };
        self.push(name, kind, self.shape.to_vec(), params, macs);
    }

    fn bn_relu(&mut self, prefix: &str) {
        let c = self.shape[0];
        self.push(
            format!("{prefix}bn"),
            LayerKind::BatchNorm,
            self.shape.to_vec(),
            m(2, c),
            0,
        );
        self.push(
            format!("{prefix}relu"),
            LayerKind::Relu,
            self.shape.to_vec(),
            0,
            0,
        );
    }
}

impl Plan {
    /// The stages in network order: the stem, each dense block followed by its
    /// transition (none after the last block), then the head.
    pub fn stages(&self) -> impl Iterator<Item = StagePlan> + '_ {
        let blocks = self.blocks.iter().enumerate().flat_map(|(i, &plan)| {
            let transition = self
                .transitions
                .get(i)
                .map(|&plan| StagePlan::Transition { index: i + 1, plan });
            core::iter::once(StagePlan::Block { index: i + 1, plan }).chain(transition)
        });
        let head = StagePlan::Head {
            channels: self.head_channels,
            head: self.head,
            classes: self.classes,
        };
        core::iter::once(StagePlan::Stem(self.stem))
            .chain(blocks)
            .chain(core::iter::once(head))
    }

    /// Plans `arch`. Never panics; sizes that shrink to nothing come out as 0
    /// (`check.rs` turns that into an error before code is generated).
    pub fn new(arch: &Architecture) -> Plan {
        let mut rows = Rows {
            layers: Vec::new(),
            shape: arch.input,
        };
        rows.push("input".into(), LayerKind::Input, arch.input.to_vec(), 0, 0);
        match arch.stem {
            Stem::ImageNet => {
                rows.conv("conv1_conv".into(), arch.init_features, 7, 2, 3);
                rows.bn_relu("conv1_");
                let [c, h, w] = rows.shape;
                rows.shape = [c, window_output(h, 3, 2, 1), window_output(w, 3, 2, 1)];
                let kind = LayerKind::MaxPool {
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                };
                rows.push("pool1".into(), kind, rows.shape.to_vec(), 0, 0);
            }
            Stem::Cifar => rows.conv("conv1_conv".into(), arch.init_features, 3, 1, 1),
        }
        let stem = StemPlan {
            c_in: arch.input[0],
            c_out: rows.shape[0],
            height: rows.shape[1],
            width: rows.shape[2],
        };

        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (b, &layers) in arch.blocks.iter().enumerate() {
            let stage = b + 2;
            let [c_in, height, width] = rows.shape;
            for j in 1..=layers {
                let [c, h, w] = rows.shape;
                let prefix = format!("conv{stage}_block{j}_");
                rows.bn_relu(&format!("{prefix}0_"));
                match arch.bottleneck {
                    Some(bn_size) => {
                        rows.conv(
                            format!("{prefix}1_conv"),
                            bn_size.saturating_mul(arch.growth),
                            1,
                            1,
                            0,
                        );
                        rows.bn_relu(&format!("{prefix}1_"));
                        rows.conv(format!("{prefix}2_conv"), arch.growth, 3, 1, 1);
                    }
                    None => rows.conv(format!("{prefix}1_conv"), arch.growth, 3, 1, 1),
                }
                rows.shape = [c.saturating_add(arch.growth), h, w];
                rows.push(
                    format!("{prefix}concat"),
                    LayerKind::Concat,
                    rows.shape.to_vec(),
                    0,
                    0,
                );
            }
            blocks.push(BlockPlan {
                c_in,
                layers,
                c_out: rows.shape[0],
                height,
                width,
            });
            if b + 1 < arch.blocks.len() {
                let c_in = rows.shape[0];
                let prefix = format!("pool{stage}_");
                rows.bn_relu(&prefix);
                rows.conv(format!("{prefix}conv"), arch.compress(c_in), 1, 1, 0);
                let [c, h, w] = rows.shape;
                rows.shape = [c, h / 2, w / 2];
                rows.push(
                    format!("{prefix}pool"),
                    LayerKind::AvgPool { kernel: 2 },
                    rows.shape.to_vec(),
                    0,
                    0,
                );
                transitions.push(TransitionPlan {
                    c_in,
                    c_out: c,
                    height: h / 2,
                    width: w / 2,
                });
            }
        }

        let head_channels = rows.shape[0];
        rows.bn_relu("");
        match arch.head {
            Head::Classifier => {
                rows.push(
                    "avg_pool".into(),
                    LayerKind::GlobalAvgPool,
                    vec![head_channels],
                    0,
                    0,
                );
                let params = m(head_channels, arch.classes).saturating_add(arch.classes as u64);
                let macs = m(head_channels, arch.classes);
                rows.push(
                    "predictions".into(),
                    LayerKind::Linear,
                    vec![arch.classes],
                    params,
                    macs,
                );
            }
            Head::Avg => rows.push(
                "avg_pool".into(),
                LayerKind::GlobalAvgPool,
                vec![head_channels],
                0,
                0,
            ),
            Head::Max => rows.push(
                "max_pool".into(),
                LayerKind::GlobalMaxPool,
                vec![head_channels],
                0,
                0,
            ),
            Head::None => {}
        }

        let layers = rows.layers;
        let sum =
            |f: fn(&LayerPlan) -> u64| layers.iter().fold(0u64, |acc, l| acc.saturating_add(f(l)));
        let (params, buffers, macs) = (sum(|l| l.params), sum(|l| l.buffers), sum(|l| l.macs));
        Plan {
            stem,
            blocks,
            transitions,
            head_channels,
            output: layers.last().map(|l| l.output.clone()).unwrap_or_default(),
            layers,
            params,
            buffers,
            macs,
            input: arch.input,
            stem_kind: arch.stem,
            growth: arch.growth,
            bottleneck: arch.bottleneck,
            head: arch.head,
            classes: arch.classes,
            dropout: arch.dropout,
        }
    }
}

/// The activation arena of one forward pass at a given batch size, in `f32`s, region
/// by region (the runtime's `Workspace` is carved exactly like this).
///
/// Always live: two ping-pong concatenation buffers (dense block `i` (0-based) works in
/// `concat[i % 2]`, `(n, H, W, C_out)` NHWC; the stem writes into the first one, each
/// transition into the other one) and the BatchNorm scale/shift pair. Then one scratch
/// region, reused by every stage: its size is the largest any stage needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaPlan {
    /// Batch size.
    pub batch: usize,
    /// The two concatenation buffers: the largest block of each parity.
    pub concat: [usize; 2],
    /// Per-channel BatchNorm scale and shift: `2 ·` the widest BatchNorm, or of a
    /// bottleneck layer's two BatchNorms together (both are fused into its 1x1 conv).
    pub bn_params: usize,
    /// Stem scratch: the NHWC input, zero-padded for the conv, and for an ImageNet stem
    /// the conv output with its BN-ReLU fused (the max pool writes into `concat[0]`).
    pub stem: usize,
    /// Dense-block scratch: `normed + bottleneck_padded` of the block needing the most,
    /// for one image (blocks run a batch image by image; the sizes below are that
    /// block's).
    pub block: usize,
    /// BN-ReLU of the concatenation prefix, zero-padded, `(H+2)·(W+2)·c`, for a layer
    /// without bottleneck (its 3x3 conv reads it); 0 with bottlenecks (norm1 is fused
    /// into the 1x1 conv).
    pub normed: usize,
    /// The 1x1 bottleneck conv's output after its BN-ReLU (fused into the conv),
    /// zero-padded for the 3x3 conv: `n·(H+2)·(W+2)·4k` (0 without bottleneck).
    pub bottleneck_padded: usize,
    /// Transition scratch: the 2x2 average pool of the BN-ReLU (one pass),
    /// `n·(H/2)·(W/2)·c`; the 1x1 conv writes into the next block's concatenation buffer.
    pub transition: usize,
    /// Head scratch: BN-ReLU `n·H·W·c`, pooled features `n·c` and logits.
    pub head: usize,
}

impl ArenaPlan {
    /// The scratch region: the largest of the stage scratches.
    pub fn scratch(&self) -> usize {
        self.stem
            .max(self.block)
            .max(self.transition)
            .max(self.head)
    }

    /// The whole arena: `concat[0] + concat[1] + bn_params + scratch()`.
    pub fn total(&self) -> usize {
        self.concat[0] + self.concat[1] + self.bn_params + self.scratch()
    }

    /// [`total`](Self::total) in bytes.
    pub fn bytes(&self) -> usize {
        self.total() * core::mem::size_of::<f32>()
    }
}

impl Plan {
    /// The activation arena for a batch of `batch` images (no allocation).
    pub fn arena(&self, batch: usize) -> ArenaPlan {
        let n = batch;
        let [c_img, h_img, w_img] = self.input;
        let c0 = self.stem.c_out;
        let mut a = ArenaPlan {
            batch,
            ..ArenaPlan::default()
        };
        let mut widest = self.head_channels;
        // The conv reads its input zero-padded (3 for the 7x7 stem, 1 for the 3x3).
        a.stem = match self.stem_kind {
            Stem::ImageNet => {
                let (oh, ow) = (window_output(h_img, 7, 2, 3), window_output(w_img, 7, 2, 3));
                widest = widest.max(c0);
                n * c_img * (h_img + 6) * (w_img + 6) + n * oh * ow * c0
            }
            Stem::Cifar => n * c_img * (h_img + 2) * (w_img + 2),
        };
        for (i, b) in self.blocks.iter().enumerate() {
            a.concat[i % 2] = a.concat[i % 2].max(n * b.height * b.width * b.c_out);
            // A dense block runs image by image: its scratch is one image's.
            let padded = (b.height + 2) * (b.width + 2);
            if b.layers == 0 {
                continue;
            }
            let c_last = b.c_out - self.growth;
            widest = widest.max(c_last);
            let (normed, bottleneck_padded) = match self.bottleneck {
                // norm1 is conv1's prologue (no normed copy), and both BatchNorms'
                // scale/shift are live at once.
                Some(bn_size) => {
                    let width = bn_size * self.growth;
                    widest = widest.max(c_last + width);
                    (0, padded * width)
                }
                None => (padded * c_last, 0),
            };
            let block = normed + bottleneck_padded;
            if block > a.block {
                (a.block, a.normed, a.bottleneck_padded) = (block, normed, bottleneck_padded);
            }
        }
        for t in &self.transitions {
            widest = widest.max(t.c_in);
            // BN-ReLU and the pool are one pass: only the pooled map is stored.
            let pooled = n * t.height * t.width * t.c_in;
            a.transition = a.transition.max(pooled);
        }
        if let Some(last) = self.blocks.last() {
            let c = self.head_channels;
            let logits = match self.head {
                Head::Classifier => n * self.classes,
                _ => 0,
            };
            let pooled = match self.head {
                Head::None => 0,
                _ => n * c,
            };
            a.head = n * last.height * last.width * c + pooled + logits;
        }
        a.bn_params = 2 * widest;
        a
    }

    /// Floats of the activation arena at batch `batch`: [`ArenaPlan::total`].
    ///
    /// Concatenation buffers, stem, transition and head scratch grow with the batch; a
    /// dense block's scratch (one image) and the BatchNorm scale/shift do not. The arena
    /// of the direct kernels (AVX-512, or AVX2 + FMA): elsewhere the runtime's portable
    /// convolutions need an im2col matrix besides (allocated once, outside the arena).
    pub fn arena_floats(&self, batch: usize) -> usize {
        self.arena(batch).total()
    }
}
