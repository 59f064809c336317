//! A whole training step: a training-mode forward pass over a model's stages that
//! records what the backward pass needs (a "tape"), the softmax cross-entropy loss, and
//! the backward pass over the stages in reverse, one gradient per parameter.
//!
//! What the tape keeps, per stage:
//! - stem: the input batch; for an ImageNet stem also the conv output (BN's input), the
//!   BN batch statistics and the max pool's argmax;
//! - dense block: its one shared concatenation buffer (input and every layer's output),
//!   and per layer only the BN batch statistics, the bottleneck conv's output (BN2's
//!   input) and the random generator's state before each dropout. BN-ReLU outputs are
//!   recomputed in the backward pass; the gradient of the buffer is one matrix of the
//!   same shape, into whose columns `[0, c)` each layer adds its input gradient;
//! - transition: the BN statistics and generator state (its input is the block buffer);
//! - head: the BN statistics and the pooled features.

use std::collections::HashMap;

use densenet_spec::Head;
use ndarray::{s, Array1, Array2, Array4, ArrayView2, ArrayView4, ArrayViewMut2};

use crate::kernels::direct_conv::{self, ConvShape, Epilogue, ImageLayout, WinogradInput};
use crate::kernels::gemm::{gemm_unpacked, MatMut, MatRef};
use crate::layers::{
    bn_relu_pool_into, conv1x1_into_padded, conv2d_into, global_pool_into, relu_padded_into,
    BatchNorm2d, Conv2d, DenseLayer, Linear,
};
use crate::model::check_input;
use crate::parallel::prelude::*;
use crate::rng::Rng;
use crate::stage::Network;
use crate::stage::{LayerName, Site, StageMut, StageRef};
use crate::train::batch_norm::{
    backward_terms, batch_norm_backward_pooled_write, batch_norm_backward_write,
    batch_norm_train_moments, input_gradient_scale, scale_shift, BackwardCoef, InputGradient,
    Moments, SumsPass,
};
use crate::train::buffers::{Buffers, PlannedBuffers};
use crate::train::conv::{
    conv2d_backward_from, conv2d_backward_reusing, conv2d_backward_then, dx_chunks, AfterDx,
    ConvInput,
};
use crate::train::narrow_1x1;
use crate::train::pool::{
    avg_pool2d_backward_into, global_avg_pool_backward_into, max_pool2d_backward_into,
    max_pool2d_train_into, output_size,
};
use crate::train::profile::{Clock, Part, Pass, StepProfile, StepStage};
use crate::train::recycled::{self, Recycled};
use crate::train::{
    batch_norm_apply, batch_norm_backward, batch_norm_frozen, batch_norm_train, dropout_in_place,
    linear_backward, softmax_cross_entropy_into, BatchStats, Freeze,
};
use crate::Error;

/// Options of a training step; [`Default`] is torch's behaviour with the architecture's
/// dropout rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepConfig {
    /// Dropout rate after every convolution but the stem's (dense layers' convs and
    /// transition convs, as the paper's reference code); `None` takes the model's
    /// `ARCHITECTURE.dropout`. torchvision instead drops only after each dense layer's
    /// last conv; with rate 0 (torchvision's default) the two agree.
    pub dropout: Option<f32>,
    /// BatchNorm running-statistics momentum: `running ← (1 − m)·running + m·batch`.
    /// torch's default is 0.1 (Keras's momentum 0.99 is 0.01 here).
    pub momentum: f32,
}

impl Default for StepConfig {
    /// The architecture's dropout rate, momentum 0.1.
    fn default() -> Self {
        Self {
            dropout: None,
            momentum: 0.1,
        }
    }
}

/// One layer's parameter gradients, shaped like its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerGrad {
    /// A convolution's.
    Conv {
        /// `∂L/∂W`, HWIO like [`Conv2d::weight`].
        weight: Array4<f32>,
    },
    /// A batch norm's.
    BatchNorm {
        /// `∂L/∂gamma` (torch's `weight`).
        gamma: Array1<f32>,
        /// `∂L/∂beta` (torch's `bias`).
        beta: Array1<f32>,
    },
    /// A linear layer's.
    Linear {
        /// `∂L/∂W`, `(out, in)` like [`Linear::weight`].
        weight: Array2<f32>,
        /// `∂L/∂b`.
        bias: Array1<f32>,
    },
}

/// The gradient of the loss with respect to every parameter of a model, one
/// [`LayerGrad`] per layer with weights, in network order and addressed by the same
/// structural [`LayerName`] as `Model::visit_layers` (so an optimiser walks
/// `visit_layers_mut` and looks each layer's gradient up by its name).
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    layers: Vec<(LayerName, LayerGrad)>,
    index: HashMap<LayerName, usize>,
}

impl Gradients {
    /// The gradients of layer `name`, if it has weights.
    pub fn get(&self, name: LayerName) -> Option<&LayerGrad> {
        self.index.get(&name).map(|&i| &self.layers[i].1)
    }

    /// Every layer's gradients, in the order of `Model::visit_layers`.
    pub fn iter(&self) -> impl Iterator<Item = (LayerName, &LayerGrad)> + '_ {
        self.layers.iter().map(|(name, grad)| (*name, grad))
    }

    /// Number of layers with weights.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers (never, for a model).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Gives the weight gradients' storage to this thread's step memory, from which the
    /// next training step on this thread takes its weight gradients instead of
    /// allocating them ([`fit`](crate::train::fit) does this after each optimiser step;
    /// a custom loop can too). Dropping the gradients instead just frees them.
    pub fn recycle(mut self) {
        MEMORY.with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                for (_, grad) in self.layers.drain(..) {
                    match grad {
                        LayerGrad::Conv { weight } => {
                            m.1.give_gradient(weight.into_raw_vec_and_offset().0);
                        }
                        // Small: back to the pool they came from.
                        LayerGrad::BatchNorm { gamma, beta } => {
                            recycled::give(gamma.into_raw_vec_and_offset().0);
                            recycled::give(beta.into_raw_vec_and_offset().0);
                        }
                        LayerGrad::Linear { weight, bias } => {
                            recycled::give(weight.into_raw_vec_and_offset().0);
                            recycled::give(bias.into_raw_vec_and_offset().0);
                        }
                    }
                }
                // The (empty) list and index, for the next step's gradients.
                self.index.clear();
                m.0.grad_layers = self.layers;
                m.0.grad_index = self.index;
            }
        });
    }
}

/// [`loss_and_gradients_with`] with [`StepConfig::default`] and a generator seeded with
/// 0 for dropout (irrelevant when the architecture's dropout rate is 0, as by default):
/// one training step's mean softmax cross-entropy and its gradients.
///
/// # Errors
///
/// As [`loss_and_gradients_with`].
///
/// # Panics
///
/// As [`loss_and_gradients_with`].
pub fn loss_and_gradients<M: Network + ?Sized>(
    model: &mut M,
    x: ArrayView4<'_, f32>,
    labels: &[usize],
) -> Result<(f32, Gradients), Error> {
    loss_and_gradients_with(model, x, labels, StepConfig::default(), &mut Rng::new(0))
}

/// One training step on the batch `x` (NCHW, like `forward`) with class indices
/// `labels`: runs the model in training mode (BatchNorm on batch statistics, updating
/// each BN's running statistics with `config.momentum` as torch does; dropout at the
/// configured rate, masks drawn from `rng`), computes the mean softmax cross-entropy of
/// the logits, and backpropagates it. Returns the loss and the gradient of every
/// parameter. The weights themselves are not changed (an optimiser does that).
///
/// # Errors
///
/// [`Error::InputShape`] if `x` is not `(N, C, H, W)` with the model's `[C, H, W]`;
/// [`Error::EmptyBatch`] for N = 0. Nothing is changed then.
///
/// # Panics
///
/// Checked before anything changes: if the model has no classifier head, `labels.len()`
/// is not N, a label is not below the number of classes, or the dropout rate is not in
/// `[0, 1)`. During the pass, as torch: if a BatchNorm sees a single value per channel
/// (batch of one image whose final feature map is 1x1).
pub fn loss_and_gradients_with<M: Network + ?Sized>(
    model: &mut M,
    x: ArrayView4<'_, f32>,
    labels: &[usize],
    config: StepConfig,
    rng: &mut Rng,
) -> Result<(f32, Gradients), Error> {
    step(model, x, labels, config, &Freeze::none(), rng, None).map(|(loss, logits, grads)| {
        recycled::give(logits.into_raw_vec_and_offset().0);
        (loss, grads)
    })
}

/// [`loss_and_gradients_with`], also timing each phase of the step: the returned
/// [`StepProfile`] says where the step's wall time went, per stage and per kind of work
/// (for a dense block: the 1x1 and 3x3 convolutions forward and backward, the
/// BatchNorm statistics and backward sums, ...). The loss and gradients are the same
/// bits as an unprofiled step's.
///
/// ```
/// use densenet_runtime::train::{loss_and_gradients_profiled, Part, Pass, StepConfig};
/// use densenet_runtime::{ndarray::Array4, rng::Rng, DynamicModel};
/// # let arch = densenet_runtime::spec::check(&densenet_runtime::spec::parse_yaml(
/// #     "name: Tiny\ngrowth: 4\nblocks: [2, 2]\nstem: cifar\ninput: [3, 16, 16]\nclasses: 3\n", "t").unwrap()).unwrap();
/// let mut model = DynamicModel::init(arch, 0)?;
/// let x = Array4::<f32>::zeros((4, 3, 16, 16));
/// let config = StepConfig::default();
/// let (_loss, _grads, profile) =
///     loss_and_gradients_profiled(&mut model, x.view(), &[0, 1, 2, 0], config, &mut Rng::new(0))?;
/// // One call a dense layer: two blocks of two.
/// assert_eq!(profile.part(Pass::Forward, Part::Conv3x3).0, 4);
/// assert!(profile.phases().iter().map(|p| p.time).sum::<std::time::Duration>() <= profile.step_time());
/// println!("{profile}");
/// # Ok::<(), densenet_runtime::Error>(())
/// ```
///
/// # Errors
///
/// As [`loss_and_gradients_with`].
///
/// # Panics
///
/// As [`loss_and_gradients_with`].
pub fn loss_and_gradients_profiled<M: Network + ?Sized>(
    model: &mut M,
    x: ArrayView4<'_, f32>,
    labels: &[usize],
    config: StepConfig,
    rng: &mut Rng,
) -> Result<(f32, Gradients, StepProfile), Error> {
    let mut profile = StepProfile::default();
    let (loss, logits, grads) = step(
        model,
        x,
        labels,
        config,
        &Freeze::none(),
        rng,
        Some(&mut profile),
    )?;
    recycled::give(logits.into_raw_vec_and_offset().0);
    Ok((loss, grads, profile))
}

/// [`loss_and_gradients_with`] with the layers `freeze` names frozen: their BatchNorms
/// normalise with their running statistics (left unchanged), stages whose layers are
/// all frozen drop no units, and the returned gradients leave frozen layers out. The
/// frozen stages before the first trainable one run as inference and the backward
/// pass stops at that stage.
///
/// # Errors
///
/// As [`loss_and_gradients_with`].
///
/// # Panics
///
/// As [`loss_and_gradients_with`].
pub fn loss_and_gradients_frozen<M: Network + ?Sized>(
    model: &mut M,
    x: ArrayView4<'_, f32>,
    labels: &[usize],
    config: StepConfig,
    freeze: &Freeze,
    rng: &mut Rng,
) -> Result<(f32, Gradients), Error> {
    step(model, x, labels, config, freeze, rng, None).map(|(loss, logits, grads)| {
        recycled::give(logits.into_raw_vec_and_offset().0);
        (loss, grads)
    })
}

/// [`loss_and_gradients_with`], also returning the training-mode logits `(N, classes)`
/// (what `fit` counts its training accuracy from), timing its phases into `profile` if
/// given.
pub(crate) fn step<M: Network + ?Sized>(
    model: &mut M,
    x: ArrayView4<'_, f32>,
    labels: &[usize],
    config: StepConfig,
    freeze: &Freeze,
    rng: &mut Rng,
    profile: Option<&mut StepProfile>,
) -> Result<(f32, Array2<f32>, Gradients), Error> {
    let clock = Clock::new(profile);
    let step_start = clock.start();
    let (input, classes, dropout) = {
        let arch = model.architecture();
        if arch.head != Head::Classifier {
            no_classifier(&arch.name);
        }
        (arch.input, arch.classes, arch.dropout)
    };
    check_input(x, input)?;
    let n = x.dim().0;
    if labels.len() != n {
        bad_labels(n, labels.len(), None, classes);
    }
    if let Some(&label) = labels.iter().find(|&&l| l >= classes) {
        bad_labels(n, labels.len(), Some(label), classes);
    }
    let p = config.dropout.unwrap_or(dropout);
    if !(0.0..1.0).contains(&p) {
        bad_dropout(p);
    }
    let (mut s, b) = Memory::take();
    // Per stage: whether all its layers are frozen (it then drops no units).
    let mut frozen = std::mem::take(&mut s.frozen);
    frozen.clear();
    frozen.extend(crate::stage::stages(&*model).map(|stage| {
        let mut all = true;
        crate::stage::visit_stage_layers(stage, &mut |name, _| all &= freeze.contains(name));
        all
    }));
    let mut ctx = Ctx {
        p,
        momentum: config.momentum,
        freeze,
        rng,
        s,
        b,
        clock,
    };
    let t = ctx.clock.start();

    // The frozen stages before the first trainable one (the head at the latest) run in
    // inference mode, recording nothing: their output is all the next stage needs.
    let mut tapes: Vec<Tape> = std::mem::take(&mut ctx.s.tapes);
    tapes.clear();
    let trainable = frozen
        .iter()
        .position(|&f| !f)
        .unwrap_or(frozen.len())
        .min(frozen.len() - 1);
    let mut next_input = if trainable > 0 {
        tapes.extend((0..trainable).map(|_| Tape::Frozen(None)));
        // The inference arena's pass (fused kernels), stopped before that stage.
        let b = &mut ctx.b;
        match crate::workspace::forward_prefix(&*model, x, trainable, &mut |len| b.overwritten(len))
        {
            Ok(out) => Some(out),
            Err(e) => {
                Memory::keep(ctx.s, ctx.b, false);
                return Err(e);
            }
        }
    } else {
        // The batch in NHWC, in the step's memory.
        let (n, c, h, w) = x.dim();
        let mut nhwc = ctx.b.overwritten4((n, h, w, c));
        nhwc.assign(&x.permuted_axes([0, 2, 3, 1]));
        Some(nhwc)
    };
    ctx.clock
        .lap(t, Pass::Forward, StepStage::Input, Part::Whole);
    if let (Some(last), Some(StageRef::Transition { .. } | StageRef::Head { .. })) =
        (tapes.last_mut(), model.stage(trainable))
    {
        // A transition or head reads the block before it from the tape.
        *last = Tape::Frozen(next_input.take());
    }

    // Forward, recording the tape.
    let mut logits = None;
    let mut index = trainable;
    while let Some(stage) = model.stage_mut(index) {
        ctx.p = if frozen[index] { 0.0 } else { p };
        index += 1;
        let tape = match stage {
            StageMut::Stem { conv, norm } => {
                let x = next_input.take().expect("the stem comes first");
                let t = ctx.clock.start();
                let (out, tape) = record_stem(conv, norm, x, &mut ctx);
                ctx.clock
                    .lap(t, Pass::Forward, StepStage::Stem, Part::Whole);
                next_input = Some(out);
                Tape::Stem(tape)
            }
            StageMut::Block { index, layers } => {
                let x = next_input
                    .take()
                    .expect("a block follows a stem or transition");
                let tape = record_block(index, layers, x.view(), &mut ctx);
                ctx.b.give4(x);
                Tape::Block(tape)
            }
            StageMut::Transition { index, norm, conv } => {
                let (input, moments) = (last_output(&tapes), last_moments(&tapes));
                let site = Site::Transition { index };
                let t = ctx.clock.start();
                let (out, tape) = record_transition(site, norm, conv, input, moments, &mut ctx);
                ctx.clock
                    .lap(t, Pass::Forward, StepStage::Transition(index), Part::Whole);
                next_input = Some(out);
                Tape::Transition(tape)
            }
            StageMut::Head {
                norm, classifier, ..
            } => {
                let classifier = classifier.expect("a classifier head has a classifier");
                let (input, moments) = (last_output(&tapes), last_moments(&tapes));
                let t = ctx.clock.start();
                let (out, tape) = record_head(norm, classifier, input, moments, &mut ctx);
                ctx.clock
                    .lap(t, Pass::Forward, StepStage::Head, Part::Whole);
                logits = Some(out);
                Tape::Head(tape)
            }
        };
        tapes.push(tape);
    }
    let logits = logits.expect("a model ends with its head");
    let t = ctx.clock.start();
    let mut dlogits = recycled::matrix(n, classes);
    let loss = softmax_cross_entropy_into(logits.view(), labels, dlogits.view_mut());
    ctx.clock.lap(t, Pass::Forward, StepStage::Head, Part::Loss);

    // Backward, stage by stage in reverse; `grad` is ∂L/∂(output of the stage at hand).
    // Each stage's tape is dropped once it has been used, so memory shrinks as the
    // pass proceeds (a transition or head reads the block tape before it, still held).
    let mut found = std::mem::take(&mut ctx.s.found);
    found.clear();
    let mut record = |name: LayerName, grad: LayerGrad| {
        if !freeze.contains(name) {
            found.insert(name, grad);
        }
    };
    let mut grad: Option<Array4<f32>> = None;
    if crate::stage::stages(&*model).count() != tapes.len() {
        stages_changed();
    }
    while let Some(tape) = tapes.pop() {
        if matches!(tape, Tape::Frozen(_)) {
            tape.recycle(&mut ctx.b, &mut ctx.s);
            break; // Nothing before it trains.
        }
        ctx.p = if frozen[tapes.len()] { 0.0 } else { p };
        // Whether a stage before this one needs the gradient of this one's input.
        let need_dx = !matches!(tapes.last(), None | Some(Tape::Frozen(_)));
        let stage = model.stage(tapes.len()).unwrap_or_else(|| stages_changed());
        let t = ctx.clock.start();
        let whole = match &stage {
            StageRef::Head { .. } => Some(StepStage::Head),
            StageRef::Transition { index, .. } => Some(StepStage::Transition(*index)),
            StageRef::Stem { .. } | StageRef::Block { .. } => None, // timed by part inside
        };
        grad = match (&stage, &tape) {
            (
                StageRef::Head {
                    norm, classifier, ..
                },
                Tape::Head(tape),
            ) => {
                let classifier = classifier.expect("a classifier head has a classifier");
                let input = last_output(&tapes);
                let need_norm = need_dx || !freeze.contains(LayerName::new(Site::Head, "norm5"));
                head_backward(
                    norm,
                    classifier,
                    tape,
                    input,
                    &dlogits,
                    need_norm,
                    &mut ctx.b,
                    &mut record,
                )
            }
            (StageRef::Block { index, layers }, Tape::Block(tape)) => {
                let dy = grad.take().expect("a block is followed by a stage");
                Some(block_backward(
                    *index,
                    layers,
                    tape,
                    dy,
                    &mut ctx,
                    &mut record,
                ))
            }
            (StageRef::Transition { index, norm, conv }, Tape::Transition(tape)) => {
                let dy = grad.take().expect("a transition is followed by a block");
                let input = last_output(&tapes);
                let site = Site::Transition { index: *index };
                transition_backward(
                    site,
                    norm,
                    conv,
                    tape,
                    input,
                    dy,
                    need_dx,
                    &mut ctx,
                    &mut record,
                )
            }
            (StageRef::Stem { conv, norm }, Tape::Stem(tape)) => {
                let dy = grad.take().expect("the stem is followed by a block");
                stem_backward(conv, *norm, tape, dy, &mut ctx, &mut record);
                None
            }
            _ => stages_changed(),
        };
        if let Some(stage) = whole {
            ctx.clock.lap(t, Pass::Backward, stage, Part::Whole);
        }
        tape.recycle(&mut ctx.b, &mut ctx.s);
    }
    (ctx.s.tapes, ctx.s.frozen) = (tapes, frozen);
    recycled::give(dlogits.into_raw_vec_and_offset().0);

    // In the order (and with exactly the names) of `visit_layers`, frozen layers left out.
    // (The list and its index come back with `Gradients::recycle`.)
    let mut layers = std::mem::take(&mut ctx.s.grad_layers);
    layers.clear();
    layers.reserve(found.len());
    model.visit_layers(&mut |name, _| match found.remove(&name) {
        Some(grad) => layers.push((name, grad)),
        None => assert!(
            freeze.contains(name),
            "every trainable layer gets a gradient"
        ),
    });
    debug_assert!(
        found.is_empty(),
        "gradients for layers the model does not visit"
    );
    let mut index = std::mem::take(&mut ctx.s.grad_index);
    index.clear();
    index.extend(layers.iter().enumerate().map(|(i, (name, _))| (*name, i)));
    ctx.s.found = found;
    ctx.clock.finish(step_start);
    Memory::keep(ctx.s, ctx.b, true);
    Ok((loss, logits, Gradients { layers, index }))
}

/// The step's settings and reusable buffers.
struct Ctx<'a> {
    /// The dropout rate of the stage at hand (0 in a frozen stage).
    p: f32,
    momentum: f32,
    freeze: &'a Freeze,
    rng: &'a mut Rng,
    s: Scratch,
    /// The tape's and the gradients' large buffers.
    b: Buffers,
    /// Times the phases, when the step is profiled.
    clock: Clock<'a>,
}

/// Backpropagates through convolution `name`: records its weight gradient (unless it
/// is frozen: then only its input's gradient is computed) and writes its input's
/// gradient into `dx`, if given.
#[allow(clippy::too_many_arguments)]
fn conv_backward<'x>(
    freeze: &Freeze,
    name: LayerName,
    conv: &Conv2d,
    x: impl Into<ConvInput<'x>>,
    dy: &[f32],
    (dx, after): (Option<&mut [f32]>, Option<AfterDx<'_>>),
    scratch: &mut Vec<f32>,
    b: &mut Buffers,
    record: &mut impl FnMut(LayerName, LayerGrad),
) {
    debug_assert!(after.is_none() || dx.is_some(), "work after dx, but no dx");
    let storage = (!freeze.contains(name)).then(|| b.leaving(weight_len(conv)));
    if storage.is_none() && dx.is_none() {
        return;
    }
    let weight = match (dx, after) {
        (Some(dx), Some(after)) => {
            conv2d_backward_then(conv, x.into(), dy, dx, scratch, storage, after)
        }
        (dx, _) => conv2d_backward_from(conv, x.into(), dy, dx, scratch, storage),
    };
    if let Some(weight) = weight {
        record(name, LayerGrad::Conv { weight });
    }
}

/// Floats of `conv`'s weight (and of its gradient).
fn weight_len(conv: &Conv2d) -> usize {
    let win = conv.window();
    win.kernel_h * win.kernel_w * conv.c_in() * conv.c_out()
}

/// The statistics BatchNorm `name` normalises with: the batch's (updating its running
/// statistics), or, frozen, its running ones (left as they are).
fn bn_stats(
    freeze: &Freeze,
    momentum: f32,
    name: LayerName,
    norm: &mut BatchNorm2d,
    x: ArrayView2<'_, f32>,
) -> BatchStats {
    if freeze.contains(name) {
        batch_norm_frozen(norm)
    } else {
        batch_norm_train(norm, x, momentum)
    }
}

/// [`bn_stats`] from the input's moments, computed before (a dense block's channels).
fn bn_stats_from(
    freeze: &Freeze,
    momentum: f32,
    name: LayerName,
    norm: &mut BatchNorm2d,
    moments: &Moments,
) -> BatchStats {
    if freeze.contains(name) {
        batch_norm_frozen(norm)
    } else {
        batch_norm_train_moments(norm, moments, momentum)
    }
}

/// Frees the memory this thread keeps between training steps: the block buffers,
/// gradients and scratch of its last step (about the step's peak, e.g. 0.5 GiB for
/// DenseNet-BC-100 at batch 64), which the next step would otherwise reuse instead of
/// allocating and faulting in afresh, and the process's pool of the steps' small
/// vectors (statistics, coefficients, partial sums: a few MiB at most). Call it when a
/// thread is done training.
pub fn release_step_memory() {
    MEMORY.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            *m = Default::default();
        }
    });
    recycled::clear();
}

/// Bytes of step memory this thread keeps between training steps (see
/// [`release_step_memory`]): after a step, what that step used at its peak, in the
/// buffers and scratch the next step reuses. 0 before the first step. (Not counted: the
/// process's pool of the steps' small vectors, a few hundred KiB that every training
/// thread shares.)
pub fn kept_step_memory() -> usize {
    MEMORY.with(|m| {
        m.try_borrow().map_or(0, |m| {
            let (s, b) = &*m;
            s.bytes() + 4 * b.floats()
        })
    })
}

/// What this thread keeps between training steps, and the plan of the last step's
/// buffers (see [`step_memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepMemory {
    /// The plan of the step's buffers: the tape (block buffers, bottleneck outputs),
    /// activation gradients and recomputed BN-ReLU outputs.
    pub buffers: PlannedBuffers,
    /// Bytes kept in all: the buffers' slots, the per-layer scratch and the recycled
    /// weight gradients ([`kept_step_memory`]).
    pub kept_bytes: usize,
    /// Of which the per-layer scratch (each vector as large as the largest layer's need).
    pub scratch_bytes: usize,
}

/// This thread's training-step memory: the plan of its last step's buffers (all zero
/// before the first step) and what it keeps. The first step of a model, batch size and
/// settings allocates as it goes (its peak is what is live at once); the next ones
/// reuse `buffers.slot_floats` floats in `buffers.slots` vectors planned from it.
///
/// ```
/// use densenet_runtime::train::{loss_and_gradients, step_memory};
/// use densenet_runtime::{ndarray::Array4, DynamicModel};
/// # let arch = densenet_runtime::spec::check(&densenet_runtime::spec::parse_yaml(
/// #     "name: Tiny\ngrowth: 4\nblocks: [2, 2]\nstem: cifar\ninput: [3, 16, 16]\nclasses: 3\n", "t").unwrap()).unwrap();
/// let mut model = DynamicModel::init(arch, 0).unwrap();
/// let x = Array4::<f32>::zeros((4, 3, 16, 16));
/// loss_and_gradients(&mut model, x.view(), &[0, 1, 2, 0]).unwrap();
/// let memory = step_memory();
/// assert!(memory.buffers.slot_floats >= memory.buffers.live_peak_floats);
/// assert!(memory.kept_bytes >= 4 * memory.buffers.slot_floats);
/// ```
pub fn step_memory() -> StepMemory {
    MEMORY.with(|m| {
        m.try_borrow().map_or(StepMemory::default(), |m| {
            let (s, b) = &*m;
            StepMemory {
                buffers: b.planned(),
                kept_bytes: s.bytes() + 4 * b.floats(),
                scratch_bytes: s.bytes(),
            }
        })
    })
}

/// The requests this thread's plan of step buffers was made from, for tests that hold
/// them equal to `Plan::training`'s (feature `internals`).
#[cfg(feature = "internals")]
#[doc(hidden)]
pub fn planned_requests() -> Vec<densenet_spec::BufferRequest> {
    MEMORY.with(|m| {
        m.try_borrow()
            .map_or(Vec::new(), |m| m.1.planned_requests().to_vec())
    })
}

/// A thread's step memory, kept from one step to the next (see `buffers.rs`).
struct Memory;

std::thread_local! {
    static MEMORY: std::cell::RefCell<(Scratch, Buffers)> = Default::default();
}

impl Memory {
    /// This thread's kept memory (empty if a step on this thread holds it already), for
    /// a step.
    fn take() -> (Scratch, Buffers) {
        let (s, mut b): (Scratch, Buffers) = MEMORY
            .with(|m| m.try_borrow_mut().map(|mut m| std::mem::take(&mut *m)))
            .unwrap_or_default();
        b.begin_step();
        (s, b)
    }

    /// Keeps a step's memory for this thread's next step (planning its buffers if the
    /// step `completed` and was the first of its kind, see `buffers.rs`).
    fn keep(s: Scratch, mut b: Buffers, completed: bool) {
        b.end_step(completed);
        MEMORY.with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                *m = (s, b);
            }
        });
    }
}

/// Small buffers reused from layer to layer (grown, never shrunk); the large per-layer
/// ones are requests to the planned [`Buffers`].
#[derive(Default)]
struct Scratch {
    /// The step's bookkeeping, kept empty between steps for its capacity: the stage
    /// tapes, the per-block lists of layer tapes, which stages are frozen, the
    /// gradients found, and (back from `Gradients::recycle`) the gradient list and
    /// its index.
    tapes: Vec<Tape>,
    layer_tapes: Vec<Vec<LayerTape>>,
    frozen: Vec<bool>,
    found: HashMap<LayerName, LayerGrad>,
    grad_layers: Vec<(LayerName, LayerGrad)>,
    grad_index: HashMap<LayerName, usize>,
    im2col: Vec<f32>,
    /// The bottleneck input backward's per-task chunks, weight gradients and sums.
    tasks: Vec<f32>,
    sums: Vec<f64>,
    /// The stem's max-pool argmax (held by its tape during a step).
    argmax: Vec<u32>,
    /// A bottleneck's padded BN2-ReLU map, where its 3x3 does not read `z` itself.
    padded: Vec<f32>,
    /// BN2's backward sums per chunk of the 3x3's input gradient, and their `f32` runs.
    chunk_sums: Vec<f64>,
    chunk_part: Vec<f32>,
}

impl Scratch {
    /// Bytes held (capacity), beside the fields so that a new one is counted too.
    fn bytes(&self) -> usize {
        4 * (self.im2col.capacity() + self.tasks.capacity())
            + 8 * self.sums.capacity()
            + 4 * self.argmax.capacity()
            + 4 * self.padded.capacity()
            + 8 * self.chunk_sums.capacity()
            + 4 * self.chunk_part.capacity()
    }
}

/// The first `len` elements of `v`, grown with zeros if needed (old contents kept).
fn take(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

fn matrix(data: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), data).expect("rows·cols elements")
}

fn matrix_mut(data: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), data).expect("rows·cols elements")
}

/// An NHWC tensor as its `(N·H·W) × C` matrix.
fn pixels(x: ArrayView4<'_, f32>) -> ArrayView2<'_, f32> {
    let (n, h, w, c) = x.dim();
    x.into_shape_with_order((n * h * w, c))
        .expect("a contiguous NHWC tensor")
}

/// The BN-ReLU output of `x` under `stats`, as a new NHWC tensor of `x`'s shape.
fn bn_relu(
    norm: &BatchNorm2d,
    stats: &BatchStats,
    x: ArrayView4<'_, f32>,
    b: &mut Buffers,
) -> Array4<f32> {
    // Written whole by the pass below: no zero-fill.
    let mut out = b.overwritten4(x.dim());
    let (n, h, w, c) = x.dim();
    batch_norm_apply(
        norm,
        stats,
        pixels(x),
        true,
        matrix_mut(out.as_slice_mut().expect("new"), n * h * w, c),
    );
    out
}

/// The 2x2 average pool of `x`'s BN-ReLU output under `stats` (a transition's conv
/// input: pooling before the 1x1 conv, as inference does, since both are linear per
/// pixel), in one pass with inference's kernel: the full-size BN-ReLU map is never
/// stored.
fn bn_relu_pooled(
    norm: &BatchNorm2d,
    stats: &BatchStats,
    x: ArrayView4<'_, f32>,
    b: &mut Buffers,
) -> Array4<f32> {
    let (n, h, w, c) = x.dim();
    let (scale, shift) = scale_shift(norm, stats);
    let mut pooled = b.overwritten4((n, h / 2, w / 2, c));
    bn_relu_pool_into(
        x.as_slice().expect("a block buffer is contiguous"),
        (n, h, w, c),
        (&scale, &shift),
        pooled.as_slice_mut().expect("contiguous"),
    );
    pooled
}

/// One stage's record. The stem's is the largest (its input batch, its BN output, its
/// statistics and the max pool's argmax); unboxed, since a step has one, and a box
/// would be its one allocation.
#[allow(clippy::large_enum_variant)]
enum Tape {
    /// A stage of the frozen prefix, run as inference; the last one keeps its output
    /// when a transition or the head reads it.
    Frozen(Option<Array4<f32>>),
    Stem(StemTape),
    Block(BlockTape),
    Transition(TransitionTape),
    Head(HeadTape),
}

impl Tape {
    /// Gives the tape's large buffers back once the backward pass is past its stage.
    fn recycle(self, b: &mut Buffers, s: &mut Scratch) {
        match self {
            Tape::Frozen(Some(out)) => b.give4(out),
            Tape::Stem(stem) => {
                let StemTape { x, norm } = stem;
                b.give4(x);
                if let Some((y, _, argmax)) = norm {
                    b.give4(y);
                    s.argmax = argmax.into_raw_vec_and_offset().0;
                }
            }
            Tape::Head(head) => recycled::give(head.features.into_raw_vec_and_offset().0),
            Tape::Block(mut block) => {
                b.give4(block.buffer);
                for layer in block.layers.drain(..) {
                    if let Some((z, ..)) = layer.bottleneck {
                        b.give(z);
                    }
                }
                s.layer_tapes.push(block.layers);
            }
            _ => {}
        }
    }
}

struct StemTape {
    /// The NHWC input batch (the stem conv's input).
    x: Array4<f32>,
    /// ImageNet stem: conv output, its BN statistics, and the max pool's argmax.
    norm: Option<(Array4<f32>, BatchStats, Array4<u32>)>,
}

struct BlockTape {
    /// The shared concatenation buffer, NHWC `(n, h, w, c_out)`.
    buffer: Array4<f32>,
    /// Channels of the block's input.
    c_in: usize,
    layers: Vec<LayerTape>,
    /// The batch moments of every buffer channel, for the BatchNorm that reads the
    /// block's output (each channel's are computed once, when it is written).
    moments: Moments,
}

impl BlockTape {
    /// The whole buffer: the block's output, the next stage's input.
    fn output(&self) -> ArrayView4<'_, f32> {
        self.buffer.view()
    }
}

struct LayerTape {
    /// BN1's batch statistics.
    stats: BatchStats,
    /// Bottleneck layers: the 1x1 conv's output after dropout (BN2's input), BN2's
    /// statistics, and the generator state before that dropout.
    bottleneck: Option<(Vec<f32>, BatchStats, Rng)>,
    /// The generator state before the dropout on the layer's new channels.
    dropout: Rng,
}

struct TransitionTape {
    stats: BatchStats,
    dropout: Rng,
}

struct HeadTape {
    stats: BatchStats,
    /// The globally pooled features, `(N, C)`: the classifier's input.
    features: Array2<f32>,
}

/// The output of the block before a transition or the head: its buffer, or the frozen
/// prefix's output.
fn last_output(tapes: &[Tape]) -> ArrayView4<'_, f32> {
    match tapes.last() {
        Some(Tape::Block(block)) => block.output(),
        Some(Tape::Frozen(Some(out))) => out.view(),
        _ => stages_changed(),
    }
}

/// The batch moments of [`last_output`]'s channels, if a block recorded them.
fn last_moments(tapes: &[Tape]) -> Option<&Moments> {
    match tapes.last() {
        Some(Tape::Block(block)) => Some(&block.moments),
        _ => None,
    }
}

/// [`bn_stats`] of `x`'s channels, from their `moments` if known.
fn bn_stats_of(
    ctx: &Ctx<'_>,
    name: LayerName,
    norm: &mut BatchNorm2d,
    x: ArrayView4<'_, f32>,
    moments: Option<&Moments>,
) -> BatchStats {
    match moments {
        Some(m) if m.channels() == x.dim().3 => {
            bn_stats_from(ctx.freeze, ctx.momentum, name, norm, m)
        }
        _ => bn_stats(ctx.freeze, ctx.momentum, name, norm, pixels(x)),
    }
}

/// `conv` over the NHWC batch `x` (unpadded: the conv pads), into a new NHWC map from
/// the step's buffers.
fn conv_forward(conv: &Conv2d, x: ArrayView4<'_, f32>, ctx: &mut Ctx<'_>) -> Array4<f32> {
    let (n, h, w, _) = x.dim();
    let (oh, ow) = conv.output_size(h, w);
    let mut y = ctx.b.overwritten4((n, oh, ow, conv.c_out()));
    crate::train::conv::conv_forward(
        conv,
        x.as_slice().expect("a contiguous NHWC batch"),
        (n, h, w),
        y.as_slice_mut().expect("contiguous"),
        &mut ctx.s.im2col,
    );
    y
}

/// The stem in training mode (BatchNorm on batch statistics), recording its tape.
fn record_stem(
    conv: &mut Conv2d,
    norm: Option<&mut BatchNorm2d>,
    x: Array4<f32>,
    ctx: &mut Ctx<'_>,
) -> (Array4<f32>, StemTape) {
    let y = conv_forward(conv, x.view(), ctx);
    let (n, oh, ow, _) = y.dim();
    match norm {
        None => (y, StemTape { x, norm: None }),
        Some(norm) => {
            let name = LayerName::new(Site::Stem, "norm0");
            let stats = bn_stats(ctx.freeze, ctx.momentum, name, norm, pixels(y.view()));
            let r = bn_relu(norm, &stats, y.view(), &mut ctx.b);
            let (ph, pw) = output_size(3, 2, 1, (oh, ow));
            let c = conv.c_out();
            let mut out = ctx.b.overwritten4((n, ph, pw, c));
            let mut argmax = std::mem::take(&mut ctx.s.argmax);
            argmax.clear();
            argmax.resize(n * ph * pw * c, 0);
            max_pool2d_train_into(
                r.view(),
                3,
                2,
                1,
                out.as_slice_mut().expect("contiguous"),
                &mut argmax,
            );
            let argmax = Array4::from_shape_vec((n, ph, pw, c), argmax).expect("n·ph·pw·c");
            ctx.b.give4(r);
            (
                out,
                StemTape {
                    x,
                    norm: Some((y, stats, argmax)),
                },
            )
        }
    }
}

fn stem_backward(
    conv: &Conv2d,
    norm: Option<&BatchNorm2d>,
    tape: &StemTape,
    dy: Array4<f32>,
    ctx: &mut Ctx<'_>,
    record: &mut impl FnMut(LayerName, LayerGrad),
) {
    let stage = StepStage::Stem;
    let d_conv = match (norm, &tape.norm) {
        (None, None) => dy,
        (Some(norm), Some((y, stats, argmax))) => {
            let (_, h, w, _) = y.dim();
            let t = ctx.clock.start();
            let mut d_relu = ctx.b.overwritten4(y.dim());
            max_pool2d_backward_into(
                dy.view(),
                argmax.view(),
                (h, w),
                d_relu.as_slice_mut().expect("contiguous"),
            );
            ctx.b.give4(dy);
            ctx.clock.lap(t, Pass::Backward, stage, Part::PoolBackward);
            let t = ctx.clock.start();
            // Written whole by the BN backward: no zeroing (the stem's is the step's
            // largest map).
            let mut d_conv = ctx.b.overwritten4(y.dim());
            let (gamma, beta) = batch_norm_backward_write(
                norm,
                stats,
                pixels(y.view()),
                pixels(d_relu.view()),
                true,
                pixels_mut(&mut d_conv),
            );
            ctx.b.give4(d_relu);
            record(
                LayerName::new(Site::Stem, "norm0"),
                LayerGrad::BatchNorm { gamma, beta },
            );
            ctx.clock
                .lap(t, Pass::Backward, stage, Part::BnReluBackward);
            d_conv
        }
        _ => stages_changed(),
    };
    let t = ctx.clock.start();
    let storage = ctx.b.leaving(weight_len(conv));
    let weight = conv2d_backward_reusing(
        conv,
        tape.x.view(),
        d_conv.as_slice().expect("contiguous"),
        None,
        &mut ctx.s.im2col,
        storage,
    );
    ctx.b.give4(d_conv);
    record(
        LayerName::new(Site::Stem, "conv0"),
        LayerGrad::Conv { weight },
    );
    ctx.clock
        .lap(t, Pass::Backward, stage, Part::ConvWeightGradient);
}

fn pixels_mut(x: &mut Array4<f32>) -> ArrayViewMut2<'_, f32> {
    let (n, h, w, c) = x.dim();
    matrix_mut(x.as_slice_mut().expect("contiguous"), n * h * w, c)
}

/// A dense block in training mode, recording its tape (the shared buffer, BN statistics, bottleneck outputs, dropout generator states).
fn record_block(
    block: usize,
    layers: &mut [DenseLayer],
    x: ArrayView4<'_, f32>,
    ctx: &mut Ctx<'_>,
) -> BlockTape {
    let (n, h, w, c_in) = x.dim();
    let c_out = c_in + layers.iter().map(DenseLayer::growth).sum::<usize>();
    let rows = n * h * w;
    // Written whole: the input's columns now, each layer's as it runs.
    let mut buffer = ctx.b.overwritten4((n, h, w, c_out));
    buffer.slice_mut(s![.., .., .., ..c_in]).assign(&x);
    let buf = buffer.as_slice_mut().expect("a new array is contiguous");
    let (p, momentum, freeze) = (ctx.p, ctx.momentum, ctx.freeze);
    let s = &mut ctx.s;
    // Room for every channel the block's layers add, so that appending never reallocates.
    let mut moments = Moments::with_capacity(c_out);
    moments.extend(Moments::of(
        matrix(buf, rows, c_out).slice_move(s![.., ..c_in]),
    ));

    let mut tapes = s.layer_tapes.pop().unwrap_or_default();
    tapes.clear();
    tapes.reserve(layers.len());
    let mut c = c_in;
    for (j, layer) in layers.iter_mut().enumerate() {
        let k = layer.growth();
        let site = Site::Dense {
            block,
            layer: j + 1,
        };
        let name = |part| LayerName::new(site, part);
        let stage = StepStage::Block(block);
        let t = ctx.clock.start();
        // BN-ReLU runs fused into the convolutions as in inference: norm1 as the 1x1
        // conv's prologue (the normalised input is never stored), norm2 (or a plain
        // layer's norm1) while writing the padded map the 3x3 conv reads directly.
        let (stats, bottleneck, last_conv, padded) = match layer {
            DenseLayer::Basic { norm1, conv1 } => {
                let stats = bn_stats_from(freeze, momentum, name("norm1"), norm1, &moments);
                let (scale, shift) = scale_shift(norm1, &stats);
                let pad = conv1.window().padding;
                let len = n * (h + 2 * pad) * (w + 2 * pad) * c;
                let mut padded = ctx.b.overwritten(len);
                relu_padded_into(buf, c_out, (n, h, w), pad, &scale, &shift, &mut padded);
                (stats, None, &*conv1, Some(padded))
            }
            DenseLayer::Bottleneck {
                norm1,
                conv1,
                norm2,
                conv2,
            } => {
                let stats = bn_stats_from(freeze, momentum, name("norm1"), norm1, &moments);
                let (scale, shift) = scale_shift(norm1, &stats);
                let width = conv1.c_out();
                let mut z = ctx.b.overwritten(rows * width); // the 1x1 conv writes it whole
                let prologue = Epilogue::ScaleShiftRelu {
                    scale: &scale,
                    shift: &shift,
                };
                if narrow_1x1::takes(conv1) {
                    let input = (&*buf, c_out);
                    let bn = (&scale[..], &shift[..]);
                    narrow_1x1::conv1x1_by_chunks(conv1, input, bn, &mut z, &mut s.tasks);
                } else {
                    conv1x1_into_padded(
                        conv1,
                        buf,
                        c_out,
                        (n, h, w),
                        prologue,
                        Epilogue::Store,
                        &mut z,
                        0,
                        &mut s.im2col,
                    );
                }
                ctx.clock.lap(t, Pass::Forward, stage, Part::Bottleneck1x1);
                let t = ctx.clock.start();
                let rng1 = ctx.rng.clone();
                dropout_in_place(matrix_mut(&mut z, rows, width), p, ctx.rng);
                let z_matrix = matrix(&z, rows, width);
                let stats2 = bn_stats(freeze, momentum, name("norm2"), norm2, z_matrix);
                let (scale, shift) = scale_shift(norm2, &stats2);
                ctx.clock.lap(t, Pass::Forward, stage, Part::Bn2Statistics);
                let t = ctx.clock.start();
                // The 3x3 into the buffer's next k columns: on Winograd, reading BN2-ReLU
                // of `z` as its tiles go; else from the BN2-ReLU map padded in the
                // scratch (not a planned buffer: which path runs depends on the CPU).
                let shape = ConvShape {
                    n,
                    out_h: h,
                    out_w: w,
                    c_in: width,
                    c_out: k,
                    kernel_h: 3,
                    kernel_w: 3,
                    stride: 1,
                };
                let weight = conv2.weight();
                let hwio = weight.as_slice().filter(|_| weight.is_view());
                let pad = conv2.window().padding;
                match hwio {
                    Some(hwio) if pad == 1 && direct_conv::winograd_applies(&shape) => {
                        let input = WinogradInput::BnRelu {
                            data: &z,
                            layout: ImageLayout::dense(h, w, width),
                            scale: &scale,
                            shift: &shift,
                        };
                        let out_layout = ImageLayout {
                            offset: c,
                            image_stride: h * w * c_out,
                            row_stride: w * c_out,
                            pixel_stride: c_out,
                        };
                        let ran =
                            direct_conv::winograd_conv(input, hwio, shape, buf, out_layout, true);
                        assert!(ran, "winograd_applies said it runs");
                    }
                    _ => {
                        let len = n * (h + 2 * pad) * (w + 2 * pad) * width;
                        let padded = take(&mut s.padded, len);
                        relu_padded_into(&z, width, (n, h, w), pad, &scale, &shift, padded);
                        let dst = MatMut::new(&mut buf[c..], rows, k, c_out, 1);
                        let dims = (n, h + 2 * pad, w + 2 * pad);
                        let store = Epilogue::Store;
                        conv2d_into(conv2, padded, dims, true, store, dst, &mut s.im2col);
                    }
                }
                ctx.clock.lap(t, Pass::Forward, stage, Part::Conv3x3);
                (stats, Some((z, stats2, rng1)), &*conv2, None)
            }
        };
        if let Some(padded) = padded {
            // The layer's k new channels go straight into the buffer's next columns.
            let pad = last_conv.window().padding;
            let dst = MatMut::new(&mut buf[c..], rows, k, c_out, 1);
            conv2d_into(
                last_conv,
                &padded,
                (n, h + 2 * pad, w + 2 * pad),
                true,
                Epilogue::Store,
                dst,
                &mut s.im2col,
            );
            ctx.b.give(padded);
            // (A basic layer's BN-ReLU map and 3x3, timed from the layer's start.)
            ctx.clock.lap(t, Pass::Forward, stage, Part::Conv3x3);
        }
        let t = ctx.clock.start();
        let dropout = ctx.rng.clone();
        let new = matrix_mut(buf, rows, c_out).slice_move(s![.., c..c + k]);
        dropout_in_place(new, p, ctx.rng);
        moments.extend(Moments::of(
            matrix(buf, rows, c_out).slice_move(s![.., c..c + k]),
        ));
        ctx.clock
            .lap(t, Pass::Forward, stage, Part::NewChannelMoments);
        tapes.push(LayerTape {
            stats,
            bottleneck,
            dropout,
        });
        c += k;
    }
    BlockTape {
        buffer,
        c_in,
        layers: tapes,
        moments,
    }
}

/// Backpropagates through a block given `dy`, the gradient of its whole buffer (its
/// output), and returns the gradient of its input.
fn block_backward(
    block: usize,
    layers: &[DenseLayer],
    tape: &BlockTape,
    mut dy: Array4<f32>,
    ctx: &mut Ctx<'_>,
    record: &mut impl FnMut(LayerName, LayerGrad),
) -> Array4<f32> {
    let (n, h, w, c_out) = tape.buffer.dim();
    let rows = n * h * w;
    let buf = tape.buffer.as_slice().expect("contiguous");
    let (p, freeze) = (ctx.p, ctx.freeze);
    let s = &mut ctx.s;
    // The bottleneck layers' BN1 input-gradient terms in `x − mean` and constant, summed
    // per buffer channel over the layers reading it and added when the channel's
    // gradient is read (see `Deferred`).
    let mut deferred = Deferred::new(tape.moments.mean_f32());
    let mut c = c_out;
    for (j, (layer, lt)) in layers.iter().zip(&tape.layers).enumerate().rev() {
        let k = layer.growth();
        c -= k;
        let site = Site::Dense {
            block,
            layer: j + 1,
        };
        let name = |part| LayerName::new(site, part);
        let input = matrix(buf, rows, c_out).slice_move(s![.., ..c]);
        let grad = dy.as_slice_mut().expect("contiguous");
        let stage = StepStage::Block(block);
        let t = ctx.clock.start();

        // ∂L/∂(last conv output): the buffer gradient's k columns (complete: only later
        // layers read them), through the dropout.
        let mut d_new = ctx.b.overwritten(rows * k);
        deferred.complete(grad, buf, c_out, c..c + k, &mut d_new);
        dropout_in_place(matrix_mut(&mut d_new, rows, k), p, &mut lt.dropout.clone());
        ctx.clock
            .lap(t, Pass::Backward, stage, Part::NewChannelGradients);
        let t = ctx.clock.start();
        match (layer, &lt.bottleneck) {
            (DenseLayer::Basic { norm1, conv1 }, None) => {
                let mut d_normed = ctx.b.overwritten(rows * c);
                let mut normed = ctx.b.overwritten(rows * c);
                batch_norm_apply(
                    norm1,
                    &lt.stats,
                    input,
                    true,
                    matrix_mut(&mut normed, rows, c),
                );
                conv_backward(
                    freeze,
                    name("conv1"),
                    conv1,
                    view4(&normed, n, h, w, c),
                    &d_new,
                    (Some(&mut d_normed), None),
                    &mut s.im2col,
                    &mut ctx.b,
                    record,
                );
                ctx.b.give(normed);
                // BN1-ReLU backward adds ∂L/∂(layer input) into the buffer gradient's
                // first c columns.
                let d_input = matrix_mut(grad, rows, c_out).slice_move(s![.., ..c]);
                let d_normed_m = matrix(&d_normed, rows, c);
                let (gamma, beta) =
                    batch_norm_backward(norm1, &lt.stats, input, d_normed_m, true, d_input);
                record(name("norm1"), LayerGrad::BatchNorm { gamma, beta });
                ctx.b.give(d_normed);
                ctx.clock
                    .lap(t, Pass::Backward, stage, Part::BasicLayerBackward);
            }
            (
                DenseLayer::Bottleneck {
                    conv1,
                    norm2,
                    conv2,
                    ..
                },
                Some((z, stats2, rng1)),
            ) => {
                let width = conv1.c_out();
                // The 3x3's weight gradient reads BN2-ReLU of the bottleneck output as
                // its input, formed as its tiles are read (not recomputed into a padded
                // map first).
                let (scale, shift) = scale_shift(norm2, stats2);
                let mut d_normed2 = ctx.b.overwritten(rows * width);
                let z_m = matrix(z, rows, width);
                // Without dropout, BN2-ReLU's backward sums run on the 3x3's input
                // gradient a chunk of images at a time, as each is computed (in cache).
                let sums_pass = (p == 0.0).then(|| SumsPass::new(norm2, stats2, true));
                let chunk_sums =
                    |r: std::ops::Range<usize>, d: &[f32], acc: &mut [f64], part: &mut [f32]| {
                        if let Some(pass) = &sums_pass {
                            let d = matrix(d, r.len(), width);
                            pass.add(z_m.slice(s![r, ..]), d, acc, part);
                        }
                    };
                let chunks = dx_chunks((n, h, w, width));
                let sum_width = 2 * width;
                let after = sums_pass.is_some().then(|| {
                    s.chunk_sums.clear();
                    s.chunk_sums.resize(chunks * sum_width, 0.0);
                    AfterDx {
                        f: &chunk_sums,
                        out: &mut s.chunk_sums,
                        out_width: sum_width,
                        part: take(&mut s.chunk_part, chunks * sum_width),
                        part_width: sum_width,
                    }
                });
                conv_backward(
                    freeze,
                    name("conv2"),
                    conv2,
                    ConvInput::BnRelu {
                        z,
                        dims: [n, h, w, width],
                        scale: &scale,
                        shift: &shift,
                    },
                    &d_new,
                    (Some(&mut d_normed2), after),
                    &mut s.im2col,
                    &mut ctx.b,
                    record,
                );
                ctx.clock
                    .lap(t, Pass::Backward, stage, Part::Conv3x3Backward);
                let t = ctx.clock.start();
                let z = z_m;
                // BN2-ReLU's input gradient `dz`: without dropout, a chunk at a time
                // where the 1x1 backward reads it (never stored whole), which then reads
                // `d_normed2`, from the chunks' sums (added in chunk order); with
                // dropout, whole (its mask is regenerated over the whole matrix),
                // `d_normed2` given back first.
                let (bn2, kept) = if let Some(pass) = sums_pass {
                    let mut sums = Recycled::<f64>::zeros(sum_width);
                    for chunk in s.chunk_sums.chunks_exact(sum_width) {
                        sums.iter_mut().zip(chunk).for_each(|(t, v)| *t += v);
                    }
                    let bn2 = pass.finish(norm2, stats2, rows, &sums);
                    (Some(bn2), d_normed2)
                } else {
                    let mut dz = ctx.b.overwritten(rows * width);
                    let (gamma, beta) = batch_norm_backward_write(
                        norm2,
                        stats2,
                        z,
                        matrix(&d_normed2, rows, width),
                        true,
                        matrix_mut(&mut dz, rows, width),
                    );
                    ctx.b.give(d_normed2);
                    record(name("norm2"), LayerGrad::BatchNorm { gamma, beta });
                    dropout_in_place(matrix_mut(&mut dz, rows, width), p, &mut rng1.clone());
                    (None, dz)
                };
                ctx.clock.lap(t, Pass::Backward, stage, Part::Bn2Backward);
                let t = ctx.clock.start();
                let dz_source = match &bn2 {
                    Some(bn) => Dz::Rows {
                        z,
                        d: matrix(&kept, rows, width),
                        bn,
                    },
                    None => Dz::Stored(&kept),
                };
                let dw_storage =
                    (!freeze.contains(name("conv1"))).then(|| ctx.b.leaving(conv1.c_in() * width));
                let norm1 = layer_norm1(layer);
                let (dw, sums) = bottleneck_input_backward(
                    norm1,
                    &lt.stats,
                    conv1,
                    input,
                    dz_source,
                    (grad, c_out),
                    dw_storage,
                    (&mut s.tasks, &mut s.sums),
                );
                if let Some(bn2) = bn2 {
                    let (gamma, beta) = bn2.parameter_gradients();
                    record(name("norm2"), LayerGrad::BatchNorm { gamma, beta });
                }
                ctx.b.give(kept);
                if let Some(weight) = dw {
                    record(name("conv1"), LayerGrad::Conv { weight });
                }
                let terms = backward_terms(norm1, &lt.stats, rows, &sums);
                deferred.add(&terms.b, &terms.c);
                record(
                    name("norm1"),
                    LayerGrad::BatchNorm {
                        gamma: terms.gamma,
                        beta: terms.beta,
                    },
                );
                ctx.clock
                    .lap(t, Pass::Backward, stage, Part::Bottleneck1x1Backward);
            }
            _ => stages_changed(),
        }
        ctx.b.give(d_new);
    }
    debug_assert_eq!(c, tape.c_in);
    let t = ctx.clock.start();
    let mut dx = ctx.b.overwritten4((n, h, w, tape.c_in));
    let grad = dy.as_slice().expect("contiguous");
    let dx_floats = dx.as_slice_mut().expect("contiguous");
    deferred.complete(grad, buf, c_out, 0..tape.c_in, dx_floats);
    ctx.b.give4(dy);
    let stage = StepStage::Block(block);
    ctx.clock
        .lap(t, Pass::Backward, stage, Part::BlockInputGradient);
    dx
}

/// The terms of the bottleneck layers' BN1 input gradients that depend on the sums,
/// `b·(x − mean) + c` per channel, summed over the layers reading each buffer channel
/// and added once, when the channel's gradient is read (by the layer that wrote it, or
/// as the block's input gradient), instead of by every layer over all its input
/// channels. The `a·g` term is added in the pass that computes the sums.
struct Deferred {
    b: Recycled<f64>,
    c: Recycled<f64>,
    /// The batch mean of every buffer channel (the one every BN1 reading it uses).
    mean: Recycled<f32>,
}

impl Deferred {
    fn new(mean: Recycled<f32>) -> Self {
        Deferred {
            b: Recycled::zeros(mean.len()),
            c: Recycled::zeros(mean.len()),
            mean,
        }
    }

    /// Adds one layer's terms (its first `b.len()` channels).
    fn add(&mut self, b: &[f32], c: &[f32]) {
        self.b
            .iter_mut()
            .zip(b)
            .for_each(|(s, &v)| *s += f64::from(v));
        self.c
            .iter_mut()
            .zip(c)
            .for_each(|(s, &v)| *s += f64::from(v));
    }

    /// `dst = grad[.., cols] + b·(x[.., cols] − mean) + c`, `grad` and `x` being
    /// `rows × stride` buffers and `dst` `rows × cols.len()`.
    fn complete(
        &self,
        grad: &[f32],
        x: &[f32],
        stride: usize,
        cols: std::ops::Range<usize>,
        dst: &mut [f32],
    ) {
        let width = cols.len();
        let narrow = |v: &[f64]| {
            v[cols.clone()]
                .iter()
                .map(|&t| t as f32)
                .collect::<Recycled<f32>>()
        };
        let (b, c, mean) = (narrow(&self.b), narrow(&self.c), &self.mean[cols.clone()]);
        let rows_per_task = (1 << 14) / width.max(1) + 1;
        dst.par_chunks_mut(rows_per_task * width.max(1))
            .enumerate()
            .for_each(|(t, out)| {
                let first = t * rows_per_task * stride + cols.start;
                let terms = (&b[..], &c[..], mean);
                let at = (first, stride);
                crate::kernels::elementwise::add_deferred_terms_rows(
                    grad, x, at, terms, out, width,
                );
            });
    }
}

/// Rows of one task of [`bottleneck_input_backward`] over `rows` rows: an eighth of
/// them, 512 to 8,192, a multiple of 64. Fixed by the shape, so the partial sums, added
/// in task order, do not depend on the thread count; small maps (DenseNet-BC's 8x8,
/// DenseNet-121's 14x14 and 7x7 at their usual batches: 4,096 rows or fewer) still make
/// several tasks for the threads, where a fixed 8,192 ran them as one. (The narrow 1x1
/// forward, `narrow_1x1`, splits its rows the same way.)
pub(super) fn task_rows(rows: usize) -> usize {
    rows.div_ceil(8).next_multiple_of(64).clamp(512, 8192)
}

/// Rows of one chunk of a task of [`bottleneck_input_backward`] over `c` input channels:
/// as many as keep the chunk's recomputed BN1-ReLU and input gradient (`c` floats a row
/// each) within ~384 KiB, about a third of L2 (beside the chunk's `dz`, the block
/// buffer's and gradient's rows streaming through, and the weight), 64 to 1,024. Half
/// of what it was before the BN1 pass merged: 0.89–0.97x the time of DenseNet-BC-100
/// and DenseNet-121 layers' 1x1 backward against the old size, alternating calls in
/// one process, 2 threads, Zen 5; a third as large again was no better.
fn chunk_rows(c: usize) -> usize {
    ((48 * 1024) / c.max(1)).clamp(64, 1024)
}

/// The gradient reaching a bottleneck's 1x1 output: stored whole, or computed a chunk of
/// rows at a time from the BN2 input `z` and the gradient `d` of its output.
enum Dz<'a> {
    Stored(&'a [f32]),
    Rows {
        z: ArrayView2<'a, f32>,
        d: ArrayView2<'a, f32>,
        bn: &'a InputGradient,
    },
}

/// A bottleneck's 1x1 convolution backward fused with what surrounds it, chunk by chunk
/// of rows: the conv's input gradient `dz·Wᵀ` (a chunk at a time, in cache); then one
/// pass over the chunk of the block's input that forms BN1's backward sums and the input
/// gradient's `a·g` term, added straight into the block gradient's first `c` columns
/// (`grad`, `rows × c_out`), and recomputes BN1-ReLU (never stored whole) for the weight
/// gradient `normedᵀ·dz` (if `need_dw`) that follows. Returns the weight gradient and
/// the sums, from which the rest of the input gradient follows (`backward_terms`, added
/// later by `Deferred`): the block buffer's `c` columns are read once here, and the
/// block gradient's read and written once. (Recomputing in a pass of its own, before
/// the products, read each chunk of the buffer twice: DenseNet-BC k=12 layers at
/// 32x32, batch 64, took 0.85–0.94x the time this way, DenseNet-121 ones at batch 16
/// 0.92–0.98x; alternating calls, 2 threads, Zen 5.)
#[allow(clippy::too_many_arguments)]
fn bottleneck_input_backward(
    norm1: &BatchNorm2d,
    stats: &BatchStats,
    conv1: &Conv2d,
    input: ArrayView2<'_, f32>,
    dz: Dz<'_>,
    (grad, c_out): (&mut [f32], usize),
    dw_storage: Option<Vec<f32>>,
    (task_scratch, sums_scratch): (&mut Vec<f32>, &mut Vec<f64>),
) -> (Option<Array4<f32>>, Recycled<f64>) {
    let need_dw = dw_storage.is_some();
    let (rows, c) = input.dim();
    let width = conv1.c_out();
    let coef = BackwardCoef::new(norm1, stats);
    let a = input_gradient_scale(norm1, stats);
    // Each task's recomputed chunk, its input gradient and partial weight gradient, and
    // its partial sums, in the step's scratch; after them the weight transposed
    // (`width × c`), so that the input gradient's right operand has unit-stride rows.
    let per_task = task_rows(rows);
    let tasks = rows.div_ceil(per_task);
    let dw_len = if need_dw { c * width } else { 0 };
    let chunk = chunk_rows(c);
    let chunk_len = chunk.min(per_task) * c;
    // A chunk's `dz`, where it is computed here.
    let dz_len = match dz {
        Dz::Stored(_) => 0,
        Dz::Rows { .. } => chunk.min(per_task) * width,
    };
    // (Then `2·c` floats for the sums' `f32` runs, written row after row, and a cache
    // line before the next task's floats.)
    let task_len = 2 * chunk_len + dz_len + dw_len + 2 * c + 16;
    let (task_floats, w_t) =
        take(task_scratch, tasks * task_len + width * c).split_at_mut(tasks * task_len);
    conv1.weight_transposed_into(w_t);
    let w_t = MatRef::row_major(w_t, width, c);
    let task_sums = sums_scratch;
    task_sums.clear();
    task_sums.resize(tasks * 2 * c, 0.0);
    type Task<'a> = (usize, ((&'a mut [f32], &'a mut [f32]), &'a mut [f64]));
    let task = |(t, ((g_task, floats), sums)): Task<'_>| {
        let first = t * per_task;
        let used = floats.len() - 16;
        let (floats, part) = floats[..used].split_at_mut(used - 2 * c);
        let (chunks, dw) = floats.split_at_mut(floats.len() - dw_len);
        let (chunks, dz_buf) = chunks.split_at_mut(2 * chunk_len);
        let (normed, d_chunk) = chunks.split_at_mut(chunk_len);
        for (i, g_chunk) in g_task.chunks_mut(chunk * c_out).enumerate() {
            let r0 = first + i * chunk;
            let r = g_chunk.len() / c_out;
            let x = input.slice(s![r0..r0 + r, ..]);
            let dz_chunk = match &dz {
                Dz::Stored(dz) => &dz[r0 * width..][..r * width],
                Dz::Rows { z, d, bn } => {
                    let rows = s![r0..r0 + r, ..];
                    bn.write_rows(z.slice(rows), d.slice(rows), &mut dz_buf[..r * width]);
                    &dz_buf[..r * width]
                }
            };
            let dz_chunk = MatRef::row_major(dz_chunk, r, width);
            let d_chunk = &mut d_chunk[..r * c];
            gemm_unpacked(dz_chunk, w_t, MatMut::row_major(d_chunk, r, c), false);
            let g = ArrayViewMut2::from_shape(
                ndarray::ShapeBuilder::strides((r, c), (c_out, 1)),
                g_chunk,
            )
            .expect("r rows of c_out ≥ c columns");
            let d_chunk = matrix(d_chunk, r, c);
            // One pass over the chunk of `x` forms BN1-ReLU for the weight gradient and
            // BN1's backward terms from the input gradient.
            let normed = &mut normed[..r * c];
            coef.recompute_and_add_sums_and_scaled(x, d_chunk, &a, sums, part, normed, g);
            if need_dw {
                let normed = MatRef::row_major(normed, r, c).t();
                gemm_unpacked(normed, dz_chunk, MatMut::row_major(dw, c, width), i > 0);
            }
        }
    };
    let jobs = grad[..rows * c_out]
        .par_chunks_mut(per_task * c_out.max(1))
        .zip(task_floats.par_chunks_mut(task_len))
        .zip(task_sums.par_chunks_mut((2 * c).max(1)))
        .enumerate();
    jobs.for_each(task);
    // Added in task order: the same sums on any number of threads.
    let mut dw = dw_storage.unwrap_or_default();
    dw.clear();
    dw.resize(dw_len, 0.0);
    let mut sums = Recycled::<f64>::zeros(2 * c);
    for (floats, p_sums) in task_floats
        .chunks(task_len)
        .zip(task_sums.chunks((2 * c).max(1)))
    {
        let p_dw = &floats[floats.len() - 16 - 2 * c - dw_len..][..dw_len];
        dw.iter_mut().zip(p_dw).for_each(|(d, &v)| *d += v);
        sums.iter_mut().zip(p_sums).for_each(|(d, &v)| *d += v);
    }
    let dw = need_dw.then(|| Array4::from_shape_vec((1, 1, c, width), dw).expect("c·width"));
    (dw, sums)
}

fn layer_norm1(layer: &DenseLayer) -> &BatchNorm2d {
    match layer {
        DenseLayer::Basic { norm1, .. } | DenseLayer::Bottleneck { norm1, .. } => norm1,
    }
}

fn view4(data: &[f32], n: usize, h: usize, w: usize, c: usize) -> ArrayView4<'_, f32> {
    ArrayView4::from_shape((n, h, w, c), data).expect("n·h·w·c elements")
}

/// A transition in training mode, recording its tape.
fn record_transition(
    site: Site,
    norm: &mut BatchNorm2d,
    conv: &Conv2d,
    x: ArrayView4<'_, f32>,
    moments: Option<&Moments>,
    ctx: &mut Ctx<'_>,
) -> (Array4<f32>, TransitionTape) {
    let name = LayerName::new(site, "norm");
    let stats = bn_stats_of(ctx, name, norm, x, moments);
    // Pool before the 1x1 conv, as the inference path: both are linear per pixel. The
    // dropout mask then applies to the pooled conv output.
    let pooled = bn_relu_pooled(norm, &stats, x, &mut ctx.b);
    let mut y = conv_forward(conv, pooled.view(), ctx);
    ctx.b.give4(pooled);
    let dropout = ctx.rng.clone();
    dropout_in_place(pixels_mut(&mut y), ctx.p, ctx.rng);
    (y, TransitionTape { stats, dropout })
}

/// Backpropagates through a transition; returns the gradient of its input if
/// `need_dx` (else only the parameter gradients are recorded).
#[allow(clippy::too_many_arguments)]
fn transition_backward(
    site: Site,
    norm: &BatchNorm2d,
    conv: &Conv2d,
    tape: &TransitionTape,
    x: ArrayView4<'_, f32>,
    mut dy: Array4<f32>,
    need_dx: bool,
    ctx: &mut Ctx<'_>,
    record: &mut impl FnMut(LayerName, LayerGrad),
) -> Option<Array4<f32>> {
    let (_, h, w, _) = x.dim();
    dropout_in_place(pixels_mut(&mut dy), ctx.p, &mut tape.dropout.clone());
    let pooled = bn_relu_pooled(norm, &tape.stats, x, &mut ctx.b);
    let norm_name = LayerName::new(site, "norm");
    let need_norm = need_dx || !ctx.freeze.contains(norm_name);
    // Written whole by the conv's input gradient.
    let mut d_pooled = ctx.b.overwritten4(if need_norm {
        pooled.dim()
    } else {
        (0, 0, 0, 0)
    });
    conv_backward(
        ctx.freeze,
        LayerName::new(site, "conv"),
        conv,
        pooled.view(),
        dy.as_slice().expect("contiguous"),
        (
            need_norm.then(|| d_pooled.as_slice_mut().expect("contiguous")),
            None,
        ),
        &mut ctx.s.im2col,
        &mut ctx.b,
        record,
    );
    ctx.b.give4(dy);
    ctx.b.give4(pooled);
    if !need_norm {
        ctx.b.give4(d_pooled);
        return None;
    }
    if h % 2 == 0 && w % 2 == 0 {
        // The pool's backward formed row by row inside BN-ReLU's (no full-size `dy`).
        let mut dx = ctx.b.overwritten4(x.dim());
        let (gamma, beta) = batch_norm_backward_pooled_write(
            norm,
            &tape.stats,
            x,
            d_pooled.view(),
            dx.as_slice_mut().expect("contiguous"),
        );
        record(norm_name, LayerGrad::BatchNorm { gamma, beta });
        ctx.b.give4(d_pooled);
        if need_dx {
            return Some(dx);
        }
        ctx.b.give4(dx);
        return None;
    }
    let mut d_relu = ctx.b.overwritten4(x.dim());
    avg_pool2d_backward_into(
        d_pooled.view(),
        2,
        2,
        (h, w),
        d_relu.as_slice_mut().expect("contiguous"),
    );
    ctx.b.give4(d_pooled);
    let mut dx = ctx.b.overwritten4(x.dim());
    let (gamma, beta) = batch_norm_backward_write(
        norm,
        &tape.stats,
        pixels(x),
        pixels(d_relu.view()),
        true,
        pixels_mut(&mut dx),
    );
    record(norm_name, LayerGrad::BatchNorm { gamma, beta });
    ctx.b.give4(d_relu);
    if need_dx {
        Some(dx)
    } else {
        ctx.b.give4(dx);
        None
    }
}

/// The classifier head in training mode, recording its tape: the logits.
fn record_head(
    norm: &mut BatchNorm2d,
    classifier: &Linear,
    x: ArrayView4<'_, f32>,
    moments: Option<&Moments>,
    ctx: &mut Ctx<'_>,
) -> (Array2<f32>, HeadTape) {
    let name = LayerName::new(Site::Head, "norm5");
    let stats = bn_stats_of(ctx, name, norm, x, moments);
    let normed = bn_relu(norm, &stats, x, &mut ctx.b);
    let (n, h, w, c) = normed.dim();
    let mut features = recycled::matrix(n, c);
    let features_out = features.as_slice_mut().expect("a new array is contiguous");
    let normed_in = normed.as_slice().expect("a step buffer is contiguous");
    global_pool_into(normed_in, n, h * w, c, false, features_out);
    ctx.b.give4(normed);
    let mut logits = recycled::matrix(x.dim().0, classifier.out_features());
    let features_slice = features.as_slice().expect("a new array is contiguous");
    let logits_slice = logits.as_slice_mut().expect("a new array is contiguous");
    classifier.forward_into(features_slice, x.dim().0, logits_slice);
    (logits, HeadTape { stats, features })
}

/// Backpropagates through the head; through its BatchNorm only if `need_norm` (its
/// gradients or its input's are wanted), returning its input's gradient then.
#[allow(clippy::too_many_arguments)]
fn head_backward(
    norm: &BatchNorm2d,
    classifier: &Linear,
    tape: &HeadTape,
    x: ArrayView4<'_, f32>,
    dlogits: &Array2<f32>,
    need_norm: bool,
    b: &mut Buffers,
    record: &mut impl FnMut(LayerName, LayerGrad),
) -> Option<Array4<f32>> {
    let (_, h, w, _) = x.dim();
    let (d_features, weight, bias) =
        linear_backward(classifier, tape.features.view(), dlogits.view());
    record(
        LayerName::new(Site::Head, "classifier"),
        LayerGrad::Linear { weight, bias },
    );
    if !need_norm {
        recycled::give(d_features.into_raw_vec_and_offset().0);
        return None;
    }
    let mut d_relu = b.overwritten4(x.dim());
    global_avg_pool_backward_into(
        d_features.view(),
        (h, w),
        d_relu.as_slice_mut().expect("contiguous"),
    );
    recycled::give(d_features.into_raw_vec_and_offset().0);
    let mut dx = b.overwritten4(x.dim());
    let (gamma, beta) = batch_norm_backward_write(
        norm,
        &tape.stats,
        pixels(x),
        pixels(d_relu.view()),
        true,
        pixels_mut(&mut dx),
    );
    record(
        LayerName::new(Site::Head, "norm5"),
        LayerGrad::BatchNorm { gamma, beta },
    );
    b.give4(d_relu);
    Some(dx)
}

#[cold]
#[inline(never)]
#[track_caller]
fn no_classifier(name: &str) -> ! {
    panic!("loss_and_gradients: {name} has no classifier head, so there are no logits for the cross-entropy loss");
}

#[cold]
#[inline(never)]
#[track_caller]
fn bad_labels(n: usize, len: usize, label: Option<usize>, classes: usize) -> ! {
    match label {
        None => {
            panic!("loss_and_gradients: {len} labels for a batch of {n} images (need one each)")
        }
        Some(l) => {
            panic!("loss_and_gradients: label {l} is not below the model's {classes} classes")
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn bad_dropout(p: f32) -> ! {
    panic!("loss_and_gradients: the dropout rate must be in [0, 1); got {p}");
}

#[cold]
#[inline(never)]
#[track_caller]
fn stages_changed() -> ! {
    panic!("loss_and_gradients: the model's stages are not stem, (block, transition)*, block, head, or changed between the forward and backward pass");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Conv2dConfig;
    use crate::train::check::values;

    fn tiny(yaml_extra: &str) -> crate::DynamicModel {
        let yaml = format!(
            "name: Tiny\ngrowth: 4\nblocks: [2, 3]\nstem: cifar\ninput: [3, 8, 8]\nclasses: 3\n{yaml_extra}"
        );
        let arch = densenet_spec::check(&densenet_spec::parse_yaml(&yaml, "t").unwrap()).unwrap();
        crate::DynamicModel::init(arch, 3).unwrap()
    }

    /// A profiled step is the unprofiled step, bit for bit, and its profile has every
    /// stage's phases, once a layer for a block's, within the step's wall time.
    #[test]
    fn a_profiled_step_is_the_same_step_with_every_phase_timed() {
        use crate::train::profile::{Part, Pass, StepStage};
        for (extra, bottleneck) in [("", true), ("bottleneck: false\n", false)] {
            let mut model = tiny(extra);
            let x = ndarray::Array4::from_shape_vec((2, 3, 8, 8), values(2 * 3 * 64, 5)).unwrap();
            let labels = [2, 0];
            let config = StepConfig::default();
            let mut plain = model.clone();
            let (loss, grads) =
                loss_and_gradients_with(&mut plain, x.view(), &labels, config, &mut Rng::new(0))
                    .unwrap();
            let (loss_p, grads_p, profile) = loss_and_gradients_profiled(
                &mut model,
                x.view(),
                &labels,
                config,
                &mut Rng::new(0),
            )
            .unwrap();
            assert_eq!(loss.to_bits(), loss_p.to_bits());
            assert_eq!(grads, grads_p);
            // The running statistics moved alike too.
            use crate::Model;
            assert_eq!(plain.to_safetensors_bytes(), model.to_safetensors_bytes());

            let calls = |pass, part| profile.part(pass, part).0;
            assert_eq!(calls(Pass::Forward, Part::Conv3x3), 5);
            assert_eq!(calls(Pass::Forward, Part::NewChannelMoments), 5);
            assert_eq!(calls(Pass::Backward, Part::NewChannelGradients), 5);
            assert_eq!(calls(Pass::Backward, Part::BlockInputGradient), 2);
            let (bottlenecks, basic) = if bottleneck { (5, 0) } else { (0, 5) };
            assert_eq!(calls(Pass::Forward, Part::Bottleneck1x1), bottlenecks);
            assert_eq!(
                calls(Pass::Backward, Part::Bottleneck1x1Backward),
                bottlenecks
            );
            assert_eq!(calls(Pass::Backward, Part::Conv3x3Backward), bottlenecks);
            assert_eq!(calls(Pass::Backward, Part::BasicLayerBackward), basic);
            for (pass, stage) in [
                (Pass::Forward, StepStage::Input),
                (Pass::Forward, StepStage::Stem),
                (Pass::Forward, StepStage::Transition(1)),
                (Pass::Forward, StepStage::Head),
                (Pass::Backward, StepStage::Head),
                (Pass::Backward, StepStage::Transition(1)),
            ] {
                let whole = profile
                    .phases()
                    .iter()
                    .filter(|p| (p.pass, p.stage, p.part) == (pass, stage, Part::Whole));
                assert_eq!(whole.count(), 1, "{pass:?} {stage}");
            }
            let block_layers = |block| {
                profile
                    .phases()
                    .iter()
                    .filter(|p| p.stage == StepStage::Block(block) && p.part == Part::Conv3x3)
                    .map(|p| p.calls)
                    .sum::<usize>()
            };
            assert_eq!((block_layers(1), block_layers(2)), (2, 3));
            // A CIFAR stem (no norm or pool): its conv's weight gradient alone.
            assert_eq!(calls(Pass::Backward, Part::ConvWeightGradient), 1);
            assert_eq!(calls(Pass::Backward, Part::PoolBackward), 0);
            let timed: std::time::Duration = profile.phases().iter().map(|p| p.time).sum();
            assert!(timed <= profile.step_time() && !profile.step_time().is_zero());
            let table = profile.to_string();
            assert!(
                table.contains("dense block 2")
                    && table.lines().count() == profile.phases().len() + 3
            );
        }
    }

    /// The fused bottleneck pass equals the unfused one (BN1-ReLU recomputed whole, the
    /// conv's backward, BN1's backward) on a batch of more rows than one task, from a
    /// column range of a wider buffer.
    #[test]
    fn fused_bottleneck_backward_matches_the_layer_by_layer_one() {
        let (n, h, w, c, c_out, width) = (9, 32, 32, 20, 27, 8);
        let rows = n * h * w;
        assert!(rows > task_rows(rows));
        let buf = values(rows * c_out, 1);
        let input = matrix(&buf, rows, c_out).slice_move(s![.., ..c]);
        let mut norm1 = BatchNorm2d::init(c, 1e-5);
        norm1
            .gamma_mut()
            .assign(&ndarray::Array1::from(values(c, 2)));
        norm1
            .beta_mut()
            .assign(&ndarray::Array1::from(values(c, 3)));
        let stats = batch_norm_train(&mut norm1, input, 0.1);
        let weight = Array4::from_shape_vec((1, 1, c, width), values(c * width, 4)).unwrap();
        let conv1 = Conv2d::new(weight, Conv2dConfig::default()).unwrap();
        let dz = values(rows * width, 5);

        // The block gradient, its first c columns gaining the layer's input gradient.
        let mut grad = vec![0.5f32; rows * c_out];
        let (dw, sums) = bottleneck_input_backward(
            &norm1,
            &stats,
            &conv1,
            input,
            Dz::Stored(&dz),
            (&mut grad, c_out),
            Some(Vec::new()),
            (&mut vec![f32::NAN; 7], &mut vec![f64::NAN; 3]),
        );
        let terms = backward_terms(&norm1, &stats, rows, &sums);
        let (gamma, beta) = (terms.gamma.clone(), terms.beta.clone());
        let mut deferred = Deferred::new(Recycled::from_slice(stats.mean()));
        deferred.add(&terms.b, &terms.c);
        let mut dx = vec![f32::NAN; rows * c];
        deferred.complete(&grad, &buf, c_out, 0..c, &mut dx);
        let untouched = (0..rows).all(|r| grad[r * c_out + c..(r + 1) * c_out] == [0.5; 7]);
        assert!(untouched, "columns past c are left alone");

        let mut normed = vec![0.0; rows * c];
        batch_norm_apply(
            &norm1,
            &stats,
            input,
            true,
            matrix_mut(&mut normed, rows, c),
        );
        let mut want_d_normed = vec![0.0; rows * c];
        let want_dw = crate::train::conv2d_backward(
            &conv1,
            view4(&normed, n, h, w, c),
            &dz,
            Some(&mut want_d_normed),
            &mut Vec::new(),
        );
        let mut want_dx = vec![0.5f32; rows * c];
        let (want_gamma, want_beta) = batch_norm_backward(
            &norm1,
            &stats,
            input,
            matrix(&want_d_normed, rows, c),
            true,
            matrix_mut(&mut want_dx, rows, c),
        );
        let close = |got: &[f32], want: &[f32], what: &str| {
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (i, (g, e)) in got.iter().zip(want).enumerate() {
                assert!((g - e).abs() <= 1e-5 * scale, "{what}[{i}]: {g} vs {e}");
            }
        };
        close(
            dw.unwrap().as_slice().unwrap(),
            want_dw.as_slice().unwrap(),
            "dW",
        );
        close(&dx, &want_dx, "dx");
        close(
            gamma.as_slice().unwrap(),
            want_gamma.as_slice().unwrap(),
            "dgamma",
        );
        close(
            beta.as_slice().unwrap(),
            want_beta.as_slice().unwrap(),
            "dbeta",
        );
    }

    #[test]
    fn bottleneck_backward_with_dz_by_chunks_matches_it_stored() {
        // dz from BN2-ReLU's backward computed a chunk at a time inside the 1x1
        // backward: the same bits as the whole of it written first (the same sums, the
        // same per-row formula), and BN2's parameter gradients as the one-call path's.
        let (rows, c, c_out, width) = (9 * 32 * 32, 20, 27, 8);
        assert!(rows > task_rows(rows));
        let buf = values(rows * c_out, 1);
        let input = matrix(&buf, rows, c_out).slice_move(s![.., ..c]);
        let mut norm1 = BatchNorm2d::init(c, 1e-5);
        let stats = batch_norm_train(&mut norm1, input, 0.1);
        let weight = Array4::from_shape_vec((1, 1, c, width), values(c * width, 4)).unwrap();
        let conv1 = Conv2d::new(weight, Conv2dConfig::default()).unwrap();
        let (z, d) = (values(rows * width, 6), values(rows * width, 7));
        let (z, d) = (matrix(&z, rows, width), matrix(&d, rows, width));
        let mut norm2 = BatchNorm2d::init(width, 1e-5);
        norm2
            .gamma_mut()
            .assign(&ndarray::Array1::from(values(width, 8)));
        let stats2 = batch_norm_train(&mut norm2, z, 0.1);
        let mut dz = vec![0.0; rows * width];
        let (gamma, beta) = batch_norm_backward_write(
            &norm2,
            &stats2,
            z,
            d,
            true,
            matrix_mut(&mut dz, rows, width),
        );
        let run = |dz: Dz<'_>| {
            let mut grad = vec![0.5f32; rows * c_out];
            let (dw, sums) = bottleneck_input_backward(
                &norm1,
                &stats,
                &conv1,
                input,
                dz,
                (&mut grad, c_out),
                Some(Vec::new()),
                (&mut Vec::new(), &mut Vec::new()),
            );
            (dw.unwrap(), sums.to_vec(), grad)
        };
        let bn2 = InputGradient::new(&norm2, &stats2, z, d, true);
        let by_chunks = run(Dz::Rows { z, d, bn: &bn2 });
        assert!(
            by_chunks == run(Dz::Stored(&dz)),
            "dW, sums or gradient differ"
        );
        assert_eq!(bn2.parameter_gradients(), (gamma, beta));
    }
}
