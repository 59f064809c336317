//! Allocation-free inference: one activation arena reused across forward passes.
//!
//! The arena is one `Vec<f32>` carved, for a batch of `n`, exactly as
//! [`ArenaPlan`](crate::spec::ArenaPlan) says:
//!
//! ```text
//! | concat A | concat B | BN scale/shift | scratch (reused by every stage)           |
//!   block 1, 3, …  block 2, 4, …            stem:        input | conv (ImageNet stem)
//!                                           dense block: normed | bottleneck_padded
//!                                           transition:  pooled
//!                                           head:        BN-ReLU | pooled | logits
//! ```
//!
//! Each dense block works in place in its concatenation buffer `(n, H, W, C_out)`. The
//! stem writes its output straight into the first `C_in` channels of block 1's buffer
//! (A): a CIFAR stem's conv directly, an ImageNet stem's max pool from its conv output
//! (BN-ReLU fused into the conv). Transition `i` applies BN-ReLU and the 2x2 average
//! pool in one pass into `pooled`, and its 1x1 conv writes into the first channels of
//! the other buffer, so no block input is ever copied. A dense block runs a batch image
//! by image, so its scratch is one image's: `normed` (the BN-ReLU of a layer without
//! bottleneck) or `bottleneck_padded` (the 1x1 conv's output, norm1 fused before it and
//! norm2 after). The im2col matrices of CPUs without AVX-512 or AVX2 are not in the
//! arena: they live in a separate vector of the workspace, grown on first use. Padded BN-ReLU outputs (the
//! input of each 3x3 conv) have their zero border written together with their interior
//! (see [`BatchNorm2d::forward_relu_padded_into`](crate::layers::BatchNorm2d::forward_relu_padded_into)):
//! the scratch region is shared by stages of different shapes, so no border survives
//! from one use to the next, and rewriting it costs about `4/H` of the map.

#[cfg(feature = "std")]
use core::cell::RefCell;

use ndarray::{Array4, ArrayD, ArrayView4, ArrayViewMutD, Ix2, Ix4, IxDyn};

use crate::layers::{
    dense_block_forward_into, feature_map_forward_into, pooled_head_forward_into,
    stem_forward_into, transition_forward_into,
};
use crate::prelude::*;
use crate::spec::{ArenaPlan, Head, Plan};
use crate::stage::Network;
use crate::stage::{stages, StageRef};
use crate::Error;

/// A reusable activation arena for [`Model::forward_into`](crate::Model::forward_into)
/// (and generated models' `forward_into`): grows on first use to what the batch needs, never shrinks.
///
/// After one call at a given batch size, further calls at that size or smaller
/// allocate nothing in our code (see `tests/allocations.rs` for what the GEMM and rayon
/// still do).
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    arena: Vec<f32>,
    used: usize,
    /// im2col matrices of CPUs without AVX-512 or AVX2: outside the planned arena, never
    /// touched where the direct convolution kernel runs.
    fallback: Vec<f32>,
}

#[cfg(feature = "std")]
std::thread_local! {
    static THREAD_WORKSPACE: RefCell<Workspace> = const { RefCell::new(Workspace::new()) };
}

impl Workspace {
    /// An empty workspace; the first forward pass sizes it.
    pub const fn new() -> Self {
        Workspace {
            arena: Vec::new(),
            used: 0,
            fallback: Vec::new(),
        }
    }

    /// A workspace of `floats` floats up front, e.g. a model's `arena_floats(batch)`.
    pub fn with_capacity(floats: usize) -> Self {
        Workspace {
            arena: vec![0.0; floats],
            used: 0,
            fallback: Vec::new(),
        }
    }

    /// Size of the arena, in floats.
    pub fn capacity(&self) -> usize {
        self.arena.len()
    }

    /// Size of the arena, in bytes.
    pub fn bytes(&self) -> usize {
        self.arena.len() * core::mem::size_of::<f32>()
    }

    /// Floats the last forward pass actually touched, measured region by region
    /// (concatenation buffers and scratch as the stages used them). Equal to
    /// `plan.arena_floats(batch)` when the plan is exact; tests check that.
    pub fn last_used(&self) -> usize {
        self.used
    }

    /// Runs `f` with this thread's cached workspace (created empty, kept for the
    /// thread's lifetime), or a fresh one if that is already in use on this thread.
    /// Without `std` there are no thread-locals: always a fresh one (pass your own to
    /// `forward_into` to allocate once).
    pub fn with_thread_local<R>(f: impl FnOnce(&mut Workspace) -> R) -> R {
        #[cfg(feature = "std")]
        {
            let mut f = Some(f);
            let result = THREAD_WORKSPACE
                .try_with(|cell| {
                    let mut ws = cell.try_borrow_mut().ok()?;
                    f.take().map(|f| f(&mut ws))
                })
                .ok()
                .flatten();
            match (result, f) {
                (Some(r), _) => r,
                (None, Some(f)) => f(&mut Workspace::new()),
                (None, None) => unreachable!("f runs exactly once"),
            }
        }
        #[cfg(not(feature = "std"))]
        f(&mut Workspace::new())
    }

    /// Makes the arena at least `floats` long. A larger arena is allocated afresh and
    /// exactly (its old contents are dead between calls), fallibly: a batch too large
    /// for memory is an error, not an abort.
    fn reserve(&mut self, floats: usize, batch: usize) -> Result<(), Error> {
        if self.arena.len() < floats {
            self.arena = Vec::new();
            self.arena = zeroed(floats).ok_or(Error::BatchTooLarge {
                batch,
                bytes: floats as u128 * 4,
            })?;
        }
        Ok(())
    }
}

/// `len` zeros, or `None` when the allocator cannot provide them.
fn zeroed(len: usize) -> Option<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0.0);
    Some(v)
}

/// The arena for a batch of `n`, or [`Error::BatchTooLarge`] when its size does not fit
/// in `usize` (a batch of zero-stride views can claim any size). The arena at `n` is at
/// most `n` times the arena at 1, which bounds every product `plan.arena(n)` computes.
fn arena_checked(plan: &Plan, n: usize) -> Result<ArenaPlan, Error> {
    let per_image = plan.arena_floats(1);
    match n.checked_mul(per_image).and_then(|f| f.checked_mul(4)) {
        Some(_) => Ok(plan.arena(n)),
        None => Err(Error::BatchTooLarge {
            batch: n,
            bytes: n as u128 * per_image as u128 * 4,
        }),
    }
}

/// Checks an NCHW batch against the plan; returns its size.
fn check_input(plan: &Plan, x: &ArrayView4<'_, f32>) -> Result<usize, Error> {
    let (n, c, h, w) = x.dim();
    if [c, h, w] != plan.input {
        return Err(Error::InputShape {
            expected: plan.input,
            actual: x.shape().to_vec(),
        });
    }
    if n == 0 {
        return Err(Error::EmptyBatch);
    }
    Ok(n)
}

/// Checks an NCHW batch and the output view against the plan: the typed errors of
/// every forward pass.
fn check_shapes(plan: &Plan, x: &ArrayView4<'_, f32>, out: &[usize]) -> Result<usize, Error> {
    let n = check_input(plan, x)?;
    if out.len() != plan.output.len() + 1 || out[0] != n || out[1..] != plan.output[..] {
        let mut expected = vec![n];
        expected.extend_from_slice(&plan.output);
        return Err(Error::OutputShape {
            expected,
            actual: out.to_vec(),
        });
    }
    Ok(n)
}

/// Runs `model` on the NCHW batch `x`, writing the head's output into `out`
/// (`(N, classes)`, `(N, C)` or NCHW `(N, C, H, W)`, any memory layout), with every
/// activation in `ws`'s arena: [`Model::forward_into`]. Allocates only when `ws` is
/// smaller than `plan.arena_floats(N)`.
pub(crate) fn forward_into<M: Network + ?Sized>(
    model: &M,
    x: ArrayView4<'_, f32>,
    ws: &mut Workspace,
    out: ArrayViewMutD<'_, f32>,
) -> Result<(), Error> {
    let (stages, plan) = (stages(model), model.plan());
    if crate::parallel::current_thread_index().is_none()
        && crate::parallel::current_num_threads() > 1
    {
        // The whole pass runs as one task on rayon's pool: the kernels' parallel loops
        // then queue their tasks on the worker's own deque. Called from outside the pool,
        // each loop would go through rayon's global injector, which allocates a block
        // per 63 tasks; this way it is one task per pass.
        return crate::parallel::scope(|_| {
            forward_into_on_this_thread(stages, plan, x, ws, Output::Head(out)).map(drop)
        });
    }
    forward_into_on_this_thread(stages, plan, x, ws, Output::Head(out)).map(drop)
}

/// The inference output of the first `count` stages of `model` (not the head), NHWC:
/// what the frozen stages before the first trainable one give a training step. The
/// same arena pass as [`forward_into`], stopped early, in this thread's workspace.
#[cfg(feature = "std")]
pub(crate) fn forward_prefix<M: Network + ?Sized>(
    model: &M,
    x: ArrayView4<'_, f32>,
    count: usize,
    storage: &mut (dyn FnMut(usize) -> Vec<f32> + Send),
) -> Result<Array4<f32>, Error> {
    let (stages, plan) = (stages(model).take(count), model.plan());
    Workspace::with_thread_local(|ws| {
        let run = |ws: &mut Workspace| {
            forward_into_on_this_thread(stages, plan, x, ws, Output::Prefix(&mut *storage))?
                .ok_or(Error::EmptyBatch)
        };
        if crate::parallel::current_thread_index().is_none()
            && crate::parallel::current_num_threads() > 1
        {
            crate::parallel::scope(|_| run(ws))
        } else {
            run(ws)
        }
    })
}

/// Where a pass ends: the head, into the caller's view, or an earlier stage, whose
/// output is copied out.
enum Output<'o> {
    Head(ArrayViewMutD<'o, f32>),
    /// The output's storage: a vector of the given length (contents unspecified).
    #[cfg_attr(not(feature = "std"), allow(dead_code))] // training's
    Prefix(&'o mut (dyn FnMut(usize) -> Vec<f32> + Send)),
}

/// [`forward_into`] on the calling thread; for [`Output::Prefix`], returns the last
/// stage's output.
fn forward_into_on_this_thread<'a>(
    stages: impl IntoIterator<Item = StageRef<'a>>,
    plan: &Plan,
    x: ArrayView4<'_, f32>,
    ws: &mut Workspace,
    output: Output<'_>,
) -> Result<Option<Array4<f32>>, Error> {
    let (n, mut out, storage) = match output {
        Output::Head(out) => (check_shapes(plan, &x, out.shape())?, Some(out), None),
        Output::Prefix(storage) => (check_input(plan, &x)?, None, Some(storage)),
    };
    let arena = arena_checked(plan, n)?;
    ws.reserve(arena.total(), n)?;
    let (a, rest) = ws.arena.split_at_mut(arena.concat[0]);
    let (b, rest) = rest.split_at_mut(arena.concat[1]);
    let (bn, scratch) = rest.split_at_mut(arena.bn_params);
    let scratch = &mut scratch[..arena.scratch()];
    let mut concat = [a, b];
    let (mut concat_used, mut scratch_used) = ([0; 2], 0);
    // (buffer, h, w, c) of the latest activation.
    let (mut h, mut w) = (plan.stem.height, plan.stem.width);
    let mut last = (0, plan.stem.c_out);
    // The latest stage's output: (buffer, channels, row stride).
    let mut latest = (0, 0, 0);
    for stage in stages {
        let used = match stage {
            StageRef::Stem { conv, norm } => {
                let stride = plan.blocks.first().map_or(plan.stem.c_out, |b| b.c_out);
                latest = (0, plan.stem.c_out, stride);
                let dst = &mut concat[0][..n * h * w * stride];
                stem_forward_into(conv, norm, x, dst, stride, bn, scratch, &mut ws.fallback)
            }
            StageRef::Block { index, layers } => {
                let plan_block = &plan.blocks[index - 1];
                let len = n * h * w * plan_block.c_out;
                let which = (index - 1) % 2;
                concat_used[which] = concat_used[which].max(len);
                let buf = &mut concat[which][..len];
                last = (which, plan_block.c_out);
                latest = (which, plan_block.c_out, plan_block.c_out);
                let shape = (n, h, w, plan_block.c_in);
                dense_block_forward_into(layers, shape, buf, bn, scratch, &mut ws.fallback)
            }
            StageRef::Transition { index, norm, conv } => {
                let t = &plan.transitions[index - 1];
                let stride = plan.blocks.get(index).map_or(t.c_out, |b| b.c_out);
                let [a, b] = &mut concat;
                let (src, dst) = if (index - 1) % 2 == 0 { (a, b) } else { (b, a) };
                latest = (index % 2, t.c_out, stride);
                let src = &src[..n * h * w * t.c_in];
                let dst = &mut dst[..n * t.height * t.width * stride];
                let used =
                    transition_forward_into(norm, conv, src, (n, h, w), dst, stride, bn, scratch);
                (h, w) = (t.height, t.width);
                used
            }
            StageRef::Head {
                norm,
                classifier,
                head,
            } => {
                let x = &concat[last.0][..n * h * w * last.1];
                let out = out.take().expect("one head");
                match head {
                    Head::None => {
                        let out = out.into_dimensionality::<Ix4>().expect("checked shape");
                        feature_map_forward_into(norm, x, (n, h, w), out, bn, scratch)
                    }
                    _ => {
                        let out = out.into_dimensionality::<Ix2>().expect("checked shape");
                        let max = head == Head::Max;
                        pooled_head_forward_into(
                            norm,
                            classifier,
                            max,
                            x,
                            (n, h, w),
                            out,
                            bn,
                            scratch,
                        )
                    }
                }
            }
        };
        scratch_used = scratch_used.max(used);
    }
    ws.used = concat_used[0] + concat_used[1] + arena.bn_params + scratch_used;
    let Some(storage) = storage else {
        return Ok(None);
    };
    // Copy the latest output out of its (strided) buffer.
    let (which, c, stride) = latest;
    let mut copy = Array4::from_shape_vec((n, h, w, c), storage(n * h * w * c))
        .expect("storage of the asked length");
    let dst = copy
        .as_slice_mut()
        .expect("a standard-layout array is contiguous");
    let src = &concat[which][..n * h * w * stride];
    for (d, s) in dst.chunks_exact_mut(c).zip(src.chunks_exact(stride)) {
        d.copy_from_slice(&s[..c]);
    }
    Ok(Some(copy))
}

/// [`forward_into`] into a new output array, with this thread's cached workspace:
/// [`Model::forward`]. Only the output is allocated in steady state.
pub(crate) fn forward_alloc<M: Network + ?Sized>(
    model: &M,
    x: ArrayView4<'_, f32>,
) -> Result<ArrayD<f32>, Error> {
    let n = x.dim().0;
    let mut shape = vec![n];
    shape.extend_from_slice(&model.plan().output);
    let per_image: usize = model.plan().output.iter().product();
    let too_large = || Error::BatchTooLarge {
        batch: n,
        bytes: n as u128 * per_image as u128 * 4,
    };
    let len = n.checked_mul(per_image).ok_or_else(too_large)?;
    let values = zeroed(len).ok_or_else(too_large)?;
    let mut out =
        ArrayD::from_shape_vec(IxDyn(&shape), values).expect("len is the shape's product");
    Workspace::with_thread_local(|ws| forward_into(model, x, ws, out.view_mut()))?;
    Ok(out)
}
