//! Batch normalisation in training mode: normalise with the batch's own statistics,
//! update the running ones, and backpropagate through both the normalisation and the
//! statistics; optionally fused with the ReLU that follows every BN in DenseNet.
//!
//! Inputs are `rows × channels` matrix views (pixels × channels of an NHWC tensor), so
//! a dense block's layer reads the first `c` columns of the shared buffer in place.

use crate::parallel::prelude::*;
use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewMut2, Axis, CowArray, Ix2};

use super::recycled::Recycled;
use crate::kernels::elementwise;
use crate::layers::BatchNorm2d;

/// Elements per parallel task (at least one row). Fixed by the width alone, not by the
/// number of threads, so the per-task partial sums (added in task order) and hence the
/// results are the same on every machine.
const TASK_ELEMENTS: usize = 1 << 16;

/// The per-channel statistics of one training-mode forward pass: the batch mean and
/// `1/√(var + eps)` of the biased batch variance. They are what the backward pass needs
/// to recompute the normalised input, so a dense block stores these instead of the
/// normalised activations.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    mean: Recycled<f32>,
    invstd: Recycled<f32>,
    /// The running statistics of a frozen BatchNorm ([`batch_norm_frozen`]): constants,
    /// not functions of the batch, in the backward pass.
    fixed: bool,
}

impl BatchStats {
    /// Per-channel batch mean.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Per-channel `1/√(var + eps)`, `var` the biased (divide by `rows`) batch variance.
    pub fn invstd(&self) -> &[f32] {
        &self.invstd
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Whether these are a frozen BatchNorm's running statistics ([`batch_norm_frozen`]).
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }
}

/// A frozen BatchNorm's statistics: its running mean and `1/√(running_var + eps)`,
/// leaving them unchanged. With these, [`batch_norm_apply`] is the inference-mode
/// output (as Keras runs a layer with `trainable = False`), and [`batch_norm_backward`]
/// treats them as constants: `∂L/∂x = gamma·invstd·g`.
pub fn batch_norm_frozen(bn: &BatchNorm2d) -> BatchStats {
    let eps = f64::from(bn.eps());
    BatchStats {
        mean: bn.running_mean().iter().copied().collect(),
        invstd: bn
            .running_var()
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
            .collect(),
        fixed: true,
    }
}

/// `x` with unit column stride, so every row is a slice: a view of it if it has one
/// (a column range of a wider buffer does), else a standard-layout copy.
fn unit_cols(x: ArrayView2<'_, f32>) -> CowArray<'_, f32, Ix2> {
    if x.ncols() <= 1 || x.strides()[1] == 1 {
        CowArray::from(x)
    } else {
        CowArray::from(x.as_standard_layout().into_owned())
    }
}

fn row(r: ndarray::ArrayView1<'_, f32>) -> &[f32] {
    r.to_slice().expect("unit column stride")
}

/// Rows of a task: about [`TASK_ELEMENTS`] elements.
fn task_rows(cols: usize) -> usize {
    (TASK_ELEMENTS / cols.max(1)).max(1)
}

/// The number of row chunks of [`task_rows`] rows in `x`.
fn task_count(x: &ArrayView2<'_, f32>) -> usize {
    x.nrows().div_ceil(task_rows(x.ncols()))
}

/// Row chunk `t` of [`task_rows`] rows.
fn chunk<'a>(x: &ArrayView2<'a, f32>, t: usize) -> ArrayView2<'a, f32> {
    let rows = task_rows(x.ncols());
    let start = t * rows;
    x.slice_move(ndarray::s![start..(start + rows).min(x.nrows()), ..])
}

/// Rows summed in `f32` before each flush into the `f64` totals ([`blocked_rows`]): runs
/// this short keep the `f32` round-off near `32·ε` of a partial sum, and the loops
/// vectorise over 16 lanes instead of 8 (`batch_norm_backward` at DenseNet-BC-100's
/// block-1 shape: 13.1 → 10.9 ms, alternating in one process).
const F32_ROWS: usize = 32;

/// Calls `f(row, part)` for each of `rows`, `part` (the caller's, as long as `acc`) an
/// `f32` accumulator added into `acc` (and zeroed) every [`F32_ROWS`] rows and at the
/// end. (The caller's, not one of its own: the tasks calling this run on any thread,
/// so a per-thread vector would grow the first time a thread meets a wider layer.)
fn blocked_rows<R>(
    rows: impl Iterator<Item = R>,
    acc: &mut [f64],
    part: &mut [f32],
    mut f: impl FnMut(R, &mut [f32]),
) {
    let part = &mut part[..acc.len()];
    part.fill(0.0);
    for (i, r) in rows.enumerate() {
        f(r, part);
        if (i + 1) % F32_ROWS == 0 {
            flush(part, acc);
        }
    }
    flush(part, acc);
}

/// [`blocked_rows`] for passes that take a run of rows in one call: `f(run, part)` for
/// each run of [`F32_ROWS`] of `rows` rows (the last shorter), `part` added into `acc`
/// after each (the same sums, in the same order, as row by row).
fn blocked_runs(
    rows: usize,
    acc: &mut [f64],
    part: &mut [f32],
    mut f: impl FnMut(std::ops::Range<usize>, &mut [f32]),
) {
    let part = &mut part[..acc.len()];
    part.fill(0.0);
    for r0 in (0..rows).step_by(F32_ROWS) {
        f(r0..(r0 + F32_ROWS).min(rows), part);
        flush(part, acc);
    }
}

/// `acc += part`, `part` zeroed.
fn flush(part: &mut [f32], acc: &mut [f64]) {
    for (a, p) in acc.iter_mut().zip(part.iter_mut()) {
        *a += f64::from(*p);
        *p = 0.0;
    }
}

/// `sum_g += g` and `sum_gd += g·(x − mean)` for one row, in `f32` (a run of at most
/// [`F32_ROWS`] rows before the `f64` totals take it).
fn backward_sums_row<const RELU: bool>(
    x: &[f32],
    dy: &[f32],
    k: &Coef<'_>,
    sum_g: &mut [f32],
    sum_gd: &mut [f32],
) {
    elementwise::bn_backward_sums::<RELU>(x, dy, k.row(), (sum_g, sum_gd));
}

/// `Σ` over tasks `t < tasks` of `f(t, acc, part)`, each task filling its own zeroed
/// `width`-long `acc` (with a `width`-long `f32` scratch `part` for [`blocked_rows`]);
/// tasks run in parallel, partial sums are added in task order.
fn sum_tasks(
    tasks: usize,
    width: usize,
    f: impl Fn(usize, &mut [f64], &mut [f32]) + Sync,
) -> Recycled<f64> {
    // Each task's slices a cache line apart from the next's (tasks on other threads
    // write theirs row after row).
    let (stride64, stride32) = (
        width.next_multiple_of(8) + 8,
        width.next_multiple_of(16) + 16,
    );
    let mut partials = Recycled::<f64>::zeros(tasks * stride64);
    let mut parts = Recycled::<f32>::zeros(tasks * stride32);
    let run = |(t, (acc, part)): (usize, (&mut [f64], &mut [f32]))| {
        f(t, &mut acc[..width], &mut part[..width]);
    };
    if tasks > 1 {
        partials
            .par_chunks_mut(stride64)
            .zip(parts.par_chunks_mut(stride32))
            .enumerate()
            .for_each(run);
    } else {
        partials
            .chunks_mut(stride64)
            .zip(parts.chunks_mut(stride32))
            .enumerate()
            .for_each(run);
    }
    let mut total = Recycled::<f64>::zeros(width);
    for p in partials.chunks(stride64) {
        total.iter_mut().zip(&p[..width]).for_each(|(t, v)| *t += v);
    }
    total
}

/// Runs `f(a chunk, b chunk, out chunk)` over matching row chunks of `a` and `b` (unit
/// column stride) and `out`, in parallel; an `out` without unit column stride goes via
/// a copy.
fn for_each_task(
    a: &CowArray<'_, f32, Ix2>,
    b: &CowArray<'_, f32, Ix2>,
    mut out: ArrayViewMut2<'_, f32>,
    f: impl Fn(ArrayView2<'_, f32>, ArrayView2<'_, f32>, ArrayViewMut2<'_, f32>) + Sync,
) {
    if out.ncols() > 1 && out.strides()[1] != 1 {
        let mut copy = Array2::zeros(out.dim()); // standard layout
        copy.assign(&out);
        for_each_task(a, b, copy.view_mut(), f);
        out.assign(&copy);
        return;
    }
    let rows = task_rows(out.ncols());
    split_tasks(a.view(), b.view(), out, rows, &f);
}

/// Runs `f` on row chunks of `rows` rows (the last shorter), splitting the rows in two
/// at a multiple of `rows` and running the halves in parallel until one chunk is left.
fn split_tasks(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    out: ArrayViewMut2<'_, f32>,
    rows: usize,
    f: &(impl Fn(ArrayView2<'_, f32>, ArrayView2<'_, f32>, ArrayViewMut2<'_, f32>) + Sync),
) {
    let tasks = out.nrows().div_ceil(rows);
    if tasks <= 1 {
        return f(a, b, out);
    }
    let mid = (tasks / 2) * rows;
    let ((a1, a2), (b1, b2)) = (a.split_at(Axis(0), mid), b.split_at(Axis(0), mid));
    let (o1, o2) = out.split_at(Axis(0), mid);
    crate::parallel::join(
        || split_tasks(a1, b1, o1, rows, f),
        || split_tasks(a2, b2, o2, rows, f),
    );
}

/// Computes the batch statistics of `x` (`rows × channels`) and updates `bn`'s running
/// statistics as torch's `BatchNorm2d` does in `train()` mode:
/// `running_mean ← (1 − momentum)·running_mean + momentum·mean` and
/// `running_var ← (1 − momentum)·running_var + momentum·var·rows/(rows − 1)` (the
/// *unbiased* variance; normalisation uses the biased one). torch's default momentum
/// is 0.1.
///
/// Sums are accumulated in `f64`, in one pass (`Σx` and `Σx²`).
///
/// # Panics
///
/// If `x` does not have [`BatchNorm2d::channels`] columns, or has fewer than 2 rows
/// (torch refuses too: "expected more than 1 value per channel when training").
pub fn batch_norm_train(bn: &mut BatchNorm2d, x: ArrayView2<'_, f32>, momentum: f32) -> BatchStats {
    let (rows, c) = x.dim();
    if c != bn.channels() || rows < 2 {
        bad_batch(bn.channels(), rows, c);
    }
    batch_norm_train_moments(bn, &Moments::of(x), momentum)
}

/// The per-channel moments of a batch, `rows × channels`: the mean and the sum of
/// squared deviations from it, in `f64` (one pass). Each channel's depend on its own
/// column only, so a dense block computes them once per channel, as its layers write
/// their outputs, and every BatchNorm reading those channels later reuses them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Moments {
    rows: usize,
    mean: Recycled<f64>,
    squares: Recycled<f64>,
}

impl Moments {
    /// The moments of the columns of `x`, in one pass: `Σx` and `Σx²` in `f64`, the
    /// squared deviations as `Σx² − M·mean²` (exact enough in `f64` for `f32` data: a
    /// mean 10⁴ standard deviations from zero still leaves ~8 good digits).
    pub(crate) fn of(x: ArrayView2<'_, f32>) -> Self {
        let (rows, c) = x.dim();
        let x = unit_cols(x);
        let x = x.view();
        let sums = sum_tasks(task_count(&x), 2 * c, |t, acc, _| {
            let (sum, sum_sq) = acc.split_at_mut(c);
            elementwise::add_sums_and_squares_rows(chunk(&x, t), sum, sum_sq);
        });
        let count = rows as f64;
        let (sum, sum_sq) = sums.split_at(c);
        let mean: Recycled<f64> = sum.iter().map(|s| s / count).collect();
        let squares = sum_sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q - count * m * m).max(0.0))
            .collect();
        Moments {
            rows,
            mean,
            squares,
        }
    }

    /// No channels yet, room for `channels` without growing.
    pub(crate) fn with_capacity(channels: usize) -> Self {
        Moments {
            rows: 0,
            mean: Recycled::with_capacity(channels),
            squares: Recycled::with_capacity(channels),
        }
    }

    /// Appends the columns of `other` (same rows).
    pub(crate) fn extend(&mut self, other: Moments) {
        debug_assert!(self.mean.is_empty() || self.rows == other.rows);
        self.rows = other.rows;
        self.mean.extend_from_slice(&other.mean);
        self.squares.extend_from_slice(&other.squares);
    }

    /// Number of channels.
    pub(crate) fn channels(&self) -> usize {
        self.mean.len()
    }

    /// The per-channel means, as [`batch_norm_train_moments`] gives them to BatchNorm.
    pub(crate) fn mean_f32(&self) -> Recycled<f32> {
        self.mean.iter().map(|&v| v as f32).collect()
    }
}

/// [`batch_norm_train`] from the batch's moments, computed before.
///
/// # Panics
///
/// If the moments are not of [`BatchNorm2d::channels`] channels or of fewer than 2 rows.
pub(crate) fn batch_norm_train_moments(
    bn: &mut BatchNorm2d,
    moments: &Moments,
    momentum: f32,
) -> BatchStats {
    let Moments {
        rows,
        mean,
        squares,
    } = moments;
    let (mean, squares) = (&mean[..], &squares[..]);
    if mean.len() != bn.channels() || *rows < 2 {
        bad_batch(bn.channels(), *rows, mean.len());
    }
    let count = *rows as f64;
    let eps = f64::from(bn.eps());
    let invstd = squares
        .iter()
        .map(|s| (1.0 / (s / count + eps).sqrt()) as f32)
        .collect();

    let m = f64::from(momentum);
    for (r, &mu) in bn.running_mean_mut().iter_mut().zip(mean) {
        *r = ((1.0 - m) * f64::from(*r) + m * mu) as f32;
    }
    for (r, s) in bn.running_var_mut().iter_mut().zip(squares) {
        *r = ((1.0 - m) * f64::from(*r) + m * s / (count - 1.0)) as f32;
    }
    BatchStats {
        mean: mean.iter().map(|&v| v as f32).collect(),
        invstd,
        fixed: false,
    }
}

/// Per-channel `(scale, shift)` with `bn(x) = x·scale + shift` under `stats`; the one
/// place the forward output and the backward ReLU mask come from, so they agree.
pub(crate) fn scale_shift(bn: &BatchNorm2d, stats: &BatchStats) -> (Recycled<f32>, Recycled<f32>) {
    let c = stats.channels();
    let (mut scale, mut shift) = (Recycled::with_capacity(c), Recycled::with_capacity(c));
    let it = bn.gamma().iter().zip(bn.beta());
    for ((&g, &b), (&m, &s)) in it.zip(stats.mean.iter().zip(stats.invstd.iter())) {
        let s = f64::from(g) * f64::from(s);
        scale.push(s as f32);
        shift.push((f64::from(b) - f64::from(m) * s) as f32);
    }
    (scale, shift)
}

/// `out ← (x − mean)·invstd·gamma + beta` per channel with the batch statistics
/// `stats` (then ReLU if `relu`): the training-mode forward output, and how the
/// backward pass recomputes it.
///
/// # Panics
///
/// If `x` and `out` differ in shape, or their width or `stats` is not the batch norm's
/// channel count.
pub fn batch_norm_apply(
    bn: &BatchNorm2d,
    stats: &BatchStats,
    x: ArrayView2<'_, f32>,
    relu: bool,
    out: ArrayViewMut2<'_, f32>,
) {
    check_shapes("batch_norm_apply", bn, stats, x.dim(), out.dim(), out.dim());
    let c = x.ncols();
    let (scale, shift) = scale_shift(bn, stats);
    let (scale, shift) = (&scale[..c], &shift[..c]);
    let x = unit_cols(x);
    for_each_task(&x, &x, out, |xs, _, mut outs| {
        for (src, mut dst) in xs.rows().into_iter().zip(outs.rows_mut()) {
            let dst = dst.as_slice_mut().expect("unit column stride");
            match relu {
                true => apply_row::<true>(row(src), scale, shift, dst),
                false => apply_row::<false>(row(src), scale, shift, dst),
            }
        }
    });
}

/// `dst = x·scale + shift` (then ReLU, `y <= 0 → 0`: NaN stays NaN, -0.0 becomes 0.0, as
/// torch's) for one row; monomorphic in `RELU` and written over zipped slices, so it
/// vectorises.
fn apply_row<const RELU: bool>(x: &[f32], scale: &[f32], shift: &[f32], dst: &mut [f32]) {
    if RELU {
        // The same loop, vectorised for the CPU at hand.
        return elementwise::scale_shift_relu(x, scale, shift, dst);
    }
    for (((o, &v), &s), &t) in dst.iter_mut().zip(x).zip(scale).zip(shift) {
        *o = v * s + t;
    }
}

/// Per-channel constants of the backward pass.
struct Coef<'a> {
    scale: &'a [f32],
    shift: &'a [f32],
    mean: &'a [f32],
}

impl Coef<'_> {
    fn row(&self) -> elementwise::BnBackwardRow<'_> {
        elementwise::BnBackwardRow {
            scale: self.scale,
            shift: self.shift,
            mean: self.mean,
        }
    }
}

/// `dx += a·g + b·(x − mean) + c` (or `=`, without `ADD`) for one row (see
/// `batch_norm_backward`).
fn backward_dx_row<const RELU: bool, const ADD: bool>(
    x: &[f32],
    dy: &[f32],
    k: &Coef<'_>,
    abc: (&[f32], &[f32], &[f32]),
    dx: &mut [f32],
) {
    let (a, b, c) = abc;
    let terms = elementwise::BnInputTerms { a, b, c };
    elementwise::bn_backward_dx::<RELU, ADD>(x, dy, k.row(), terms, dx);
}

/// Backward of [`batch_norm_apply`] in training mode: given `dy = ∂L/∂y`, adds
/// `∂L/∂x` into `dx` and returns `(∂L/∂gamma, ∂L/∂beta)`.
///
/// With `x̂ = (x − mean)·invstd` and `g = dy` (masked to where the BN output is
/// positive if `relu`), over the `M` rows of each channel:
/// `∂L/∂beta = Σ g`, `∂L/∂gamma = Σ g·x̂`, and, since the mean and variance depend on
/// `x` too, `∂L/∂x = gamma·invstd·(g − Σg/M − x̂·Σ(g·x̂)/M)`. Sums in `f64`.
///
/// `dx` is accumulated (`dx ← dx + ∂L/∂x`), so a dense block adds each layer's input
/// gradient straight into the gradient of its shared buffer.
///
/// # Panics
///
/// If `x`, `dy` and `dx` differ in shape, or their width or `stats` is not the batch
/// norm's channel count.
pub fn batch_norm_backward(
    bn: &BatchNorm2d,
    stats: &BatchStats,
    x: ArrayView2<'_, f32>,
    dy: ArrayView2<'_, f32>,
    relu: bool,
    dx: ArrayViewMut2<'_, f32>,
) -> (Array1<f32>, Array1<f32>) {
    backward(bn, stats, x, dy, relu, dx, true)
}

/// [`batch_norm_backward`] writing `∂L/∂x` into `dx` instead of adding it (`dx`'s
/// contents are not read: a buffer needs no zeroing first).
pub(crate) fn batch_norm_backward_write(
    bn: &BatchNorm2d,
    stats: &BatchStats,
    x: ArrayView2<'_, f32>,
    dy: ArrayView2<'_, f32>,
    relu: bool,
    dx: ArrayViewMut2<'_, f32>,
) -> (Array1<f32>, Array1<f32>) {
    backward(bn, stats, x, dy, relu, dx, false)
}

/// [`batch_norm_backward`], adding into `dx` if `add`, else writing it: the sums pass
/// ([`InputGradient::new`]), then the input-gradient pass in row tasks.
fn backward(
    bn: &BatchNorm2d,
    stats: &BatchStats,
    x: ArrayView2<'_, f32>,
    dy: ArrayView2<'_, f32>,
    relu: bool,
    dx: ArrayViewMut2<'_, f32>,
    add: bool,
) -> (Array1<f32>, Array1<f32>) {
    check_shapes(
        "batch_norm_backward",
        bn,
        stats,
        x.dim(),
        dy.dim(),
        dx.dim(),
    );
    let grad = InputGradient::new(bn, stats, x, dy, relu);
    let (x, dy) = (unit_cols(x), unit_cols(dy));
    for_each_task(&x, &dy, dx, |xs, ds, mut out| {
        for ((xr, dr), mut o) in xs.rows().into_iter().zip(ds.rows()).zip(out.rows_mut()) {
            let o = o.as_slice_mut().expect("unit column stride");
            grad.row(row(xr), row(dr), o, add);
        }
    });
    grad.parameter_gradients()
}

/// Floats of the pooled gradient one task of [`batch_norm_backward_pooled_write`]
/// scales into its quarter, on the threads (a DenseNet-BC-100 transition's is 3.5 M).
const QUARTER_TASK: usize = 1 << 15;

/// [`batch_norm_backward_write`] with ReLU for a BatchNorm-ReLU followed by a 2x2,
/// stride-2 average pool (a transition's, pooled before its 1x1 conv), given the
/// pool's output gradient `d_pooled` (`(n, h/2, w/2, c)` for the `(n, h, w, c)` input
/// `x`, `h` and `w` even): each pixel's `dy`, its window's gradient over 4, is formed a
/// row at a time as the passes read it, not written out whole first. The same values
/// as `avg_pool2d_backward` followed by [`batch_norm_backward_write`].
///
/// # Panics
///
/// If the shapes do not match as above, `dx` is not `n·h·w·c` long, or as
/// [`batch_norm_backward`].
pub(crate) fn batch_norm_backward_pooled_write(
    bn: &BatchNorm2d,
    stats: &BatchStats,
    x: ndarray::ArrayView4<'_, f32>,
    d_pooled: ndarray::ArrayView4<'_, f32>,
    dx: &mut [f32],
) -> (Array1<f32>, Array1<f32>) {
    let (n, h, w, c) = x.dim();
    assert!(
        h % 2 == 0 && w % 2 == 0 && d_pooled.dim() == (n, h / 2, w / 2, c),
        "batch_norm_backward_pooled: shapes do not match"
    );
    let rows = n * h * w;
    assert_eq!(dx.len(), rows * c, "batch_norm_backward_pooled: dx size");
    let x = x.as_standard_layout();
    let d_pooled = d_pooled.as_standard_layout();
    let (xs, dp) = (
        x.as_slice().expect("standard layout"),
        d_pooled.as_slice().expect("standard layout"),
    );
    let xv = ArrayView2::from_shape((rows, c), xs).expect("n·h·w rows of c");
    check_shapes(
        "batch_norm_backward",
        bn,
        stats,
        xv.dim(),
        xv.dim(),
        xv.dim(),
    );
    let (scale, shift) = scale_shift(bn, stats);
    let k = Coef {
        scale: &scale,
        shift: &shift,
        mean: &stats.mean,
    };
    // The gradient each input pixel gets from the pool, `0 + v/4` (as the pool's
    // backward adds into zeros), formed once for the pooled map: row `r`'s `dy` is then
    // its window's row of it. (Not a vector per task: tasks a thread picks up while
    // another waits would each take one, and after the first step the pool of the
    // step's small vectors could come up short.)
    let mut quarter = Recycled::<f32>::zeros(dp.len());
    quarter
        .par_chunks_mut(QUARTER_TASK)
        .zip(dp.par_chunks(QUARTER_TASK))
        .for_each(|(q, d)| q.iter_mut().zip(d).for_each(|(q, &v)| *q = 0.0 + v * 0.25));
    let dy_row = |r: usize| {
        let (b, y, xx) = (r / (h * w), r / w % h, r % w);
        let q = (b * (h / 2) + y / 2) * (w / 2) + xx / 2;
        &quarter[q * c..][..c]
    };
    let per_task = task_rows(c);
    let sums = sum_tasks(task_count(&xv), 2 * c, |t, acc, part| {
        let first = t * per_task;
        blocked_rows(
            chunk(&xv, t).rows().into_iter().enumerate(),
            acc,
            part,
            |(i, xr), part| {
                let (sum_g, sum_gd) = part.split_at_mut(c);
                backward_sums_row::<true>(row(xr), dy_row(first + i), &k, sum_g, sum_gd);
            },
        );
    });
    let terms = backward_terms(bn, stats, rows, &sums);
    let abc = (&terms.a[..], &terms.b[..], &terms.c[..]);
    dx.par_chunks_mut((per_task * c).max(1))
        .enumerate()
        .for_each(|(t, out)| {
            for (i, o) in out.chunks_exact_mut(c.max(1)).enumerate() {
                let r = t * per_task + i;
                backward_dx_row::<true, false>(&xs[r * c..][..c], dy_row(r), &k, abc, o);
            }
        });
    (terms.gamma, terms.beta)
}

/// The sums pass of a BatchNorm(-ReLU) backward, `Σ g` and `Σ g·(x − mean)` per
/// channel, run a chunk of rows at a time by a caller that has each chunk of `dy` in
/// cache (as it computes it), then [`finish`](Self::finish)ed into an
/// [`InputGradient`] from the chunks' sums added in order.
pub(crate) struct SumsPass {
    scale: Recycled<f32>,
    shift: Recycled<f32>,
    mean: Recycled<f32>,
    relu: bool,
}

impl SumsPass {
    pub(crate) fn new(bn: &BatchNorm2d, stats: &BatchStats, relu: bool) -> Self {
        let (scale, shift) = scale_shift(bn, stats);
        SumsPass {
            scale,
            shift,
            mean: stats.mean.clone(),
            relu,
        }
    }

    /// Adds the sums over the rows of `x` and `dy` (the chunk's) into `acc`, `part`
    /// being scratch for the `f32` runs (both twice the channels long).
    pub(crate) fn add(
        &self,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        acc: &mut [f64],
        part: &mut [f32],
    ) {
        let k = Coef {
            scale: &self.scale,
            shift: &self.shift,
            mean: &self.mean,
        };
        add_backward_sums(&k, x, dy, self.relu, acc, part);
    }

    /// The input gradient's terms from `sums`, the chunks' sums added in order over
    /// all `rows` rows.
    pub(crate) fn finish(
        self,
        bn: &BatchNorm2d,
        stats: &BatchStats,
        rows: usize,
        sums: &[f64],
    ) -> InputGradient {
        let SumsPass {
            scale,
            shift,
            mean,
            relu,
        } = self;
        let terms = backward_terms(bn, stats, rows, sums);
        InputGradient {
            scale,
            shift,
            mean,
            terms,
            relu,
        }
    }
}

/// [`batch_norm_backward`] split in two for a caller that reads `∂L/∂x` a chunk of rows
/// at a time and never needs it whole (a bottleneck's 1x1 backward, so that its input
/// gradient is not written to memory and read back): [`InputGradient::new`] runs the
/// sums pass over all rows, [`InputGradient::write_rows`] the input-gradient pass over
/// the rows given.
pub(crate) struct InputGradient {
    scale: Recycled<f32>,
    shift: Recycled<f32>,
    mean: Recycled<f32>,
    terms: BackwardTerms,
    relu: bool,
}

impl InputGradient {
    /// The sums pass of [`batch_norm_backward`] over `x` and `dy`.
    ///
    /// # Panics
    ///
    /// As [`batch_norm_backward`].
    pub(crate) fn new(
        bn: &BatchNorm2d,
        stats: &BatchStats,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        relu: bool,
    ) -> Self {
        check_shapes(
            "batch_norm_backward",
            bn,
            stats,
            x.dim(),
            dy.dim(),
            dy.dim(),
        );
        let c = x.ncols();
        let pass = SumsPass::new(bn, stats, relu);
        let (x, dy) = (unit_cols(x), unit_cols(dy));
        let (xv, dv) = (x.view(), dy.view());
        let sums = sum_tasks(task_count(&xv), 2 * c, |t, acc, part| {
            pass.add(chunk(&xv, t), chunk(&dv, t), acc, part);
        });
        pass.finish(bn, stats, x.nrows(), &sums)
    }

    /// `dx ← ∂L/∂x` for the rows of `x` and `dy` given (unit column stride), `dx`
    /// holding them row after row: the same values [`batch_norm_backward_write`] gives
    /// those rows.
    ///
    /// # Panics
    ///
    /// If `x` and `dy` differ in shape or width from the channels, or `dx` is shorter.
    pub(crate) fn write_rows(
        &self,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        dx: &mut [f32],
    ) {
        let c = self.mean.len();
        assert!(
            x.dim() == dy.dim() && x.ncols() == c && dx.len() >= x.nrows() * c,
            "InputGradient::write_rows: shapes do not match"
        );
        let k = elementwise::BnBackwardRow {
            scale: &self.scale,
            shift: &self.shift,
            mean: &self.mean,
        };
        let t = &self.terms;
        let terms = elementwise::BnInputTerms {
            a: &t.a,
            b: &t.b,
            c: &t.c,
        };
        let (x, dy) = (unit_cols(x), unit_cols(dy));
        let (x, dy) = (x.view(), dy.view());
        match self.relu {
            true => elementwise::bn_backward_dx_rows::<true, false>(x, dy, k, terms, dx),
            false => elementwise::bn_backward_dx_rows::<false, false>(x, dy, k, terms, dx),
        }
    }

    /// One row of the input-gradient pass: `dx ← ∂L/∂x` (`dx += ∂L/∂x` if `add`).
    fn row(&self, x: &[f32], dy: &[f32], dx: &mut [f32], add: bool) {
        let k = Coef {
            scale: &self.scale,
            shift: &self.shift,
            mean: &self.mean,
        };
        let t = &self.terms;
        let abc = (&t.a[..], &t.b[..], &t.c[..]);
        match (self.relu, add) {
            (true, true) => backward_dx_row::<true, true>(x, dy, &k, abc, dx),
            (true, false) => backward_dx_row::<true, false>(x, dy, &k, abc, dx),
            (false, true) => backward_dx_row::<false, true>(x, dy, &k, abc, dx),
            (false, false) => backward_dx_row::<false, false>(x, dy, &k, abc, dx),
        }
    }

    /// `(∂L/∂gamma, ∂L/∂beta)`.
    pub(crate) fn parameter_gradients(self) -> (Array1<f32>, Array1<f32>) {
        (self.terms.gamma, self.terms.beta)
    }
}

/// The per-channel constants of [`batch_norm_backward`]'s passes for `bn` under `stats`.
pub(crate) struct BackwardCoef {
    scale: Recycled<f32>,
    shift: Recycled<f32>,
    mean: Recycled<f32>,
}

impl BackwardCoef {
    /// `bn`'s under `stats`.
    pub(crate) fn new(bn: &BatchNorm2d, stats: &BatchStats) -> Self {
        let (scale, shift) = scale_shift(bn, stats);
        BackwardCoef {
            scale,
            shift,
            mean: stats.mean.clone(),
        }
    }

    fn coef(&self) -> Coef<'_> {
        Coef {
            scale: &self.scale,
            shift: &self.shift,
            mean: &self.mean,
        }
    }

    /// Adds the rows of `x` and `dy` (unit column stride) to `acc` (`2·channels`):
    /// `acc[..c]` gains `Σ g`, `acc[c..]` gains `Σ g·(x − mean)`, `g` being `dy` masked
    /// to where the BN-ReLU output is positive; and, in the same pass, `dx += a·g` (`a`
    /// from [`input_gradient_scale`]): the part of the input gradient that needs no
    /// sums, added while `x` and `dy` are in cache; and the forward's BN-ReLU output of
    /// `x` written to `normed` (`x`'s shape, contiguous). `part` is `f32` scratch as
    /// long as `acc`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn recompute_and_add_sums_and_scaled(
        &self,
        x: ArrayView2<'_, f32>,
        dy: ArrayView2<'_, f32>,
        a: &[f32],
        acc: &mut [f64],
        part: &mut [f32],
        normed: &mut [f32],
        mut dx: ArrayViewMut2<'_, f32>,
    ) {
        let (rows, c) = x.dim();
        let k = self.coef();
        blocked_runs(rows, acc, part, |run, part| {
            let sums = part.split_at_mut(c);
            let normed = &mut normed[run.start * c..run.end * c];
            let (x, dy) = (x.slice(s![run.clone(), ..]), dy.slice(s![run.clone(), ..]));
            let dx = dx.slice_mut(s![run, ..]);
            elementwise::bn_relu_recompute_and_backward_rows(x, dy, k.row(), a, sums, normed, dx);
        });
    }
}

/// `acc[..c] += Σ g`, `acc[c..] += Σ g·(x − mean)` over the rows of `xs`, `ds` (`part`:
/// `f32` scratch as long as `acc`).
fn add_backward_sums(
    k: &Coef<'_>,
    xs: ArrayView2<'_, f32>,
    ds: ArrayView2<'_, f32>,
    relu: bool,
    acc: &mut [f64],
    part: &mut [f32],
) {
    let (rows, c) = xs.dim();
    let (xs, ds) = (unit_cols(xs), unit_cols(ds));
    blocked_runs(rows, acc, part, |run, part| {
        let sums = part.split_at_mut(c);
        let (x, d) = (xs.slice(s![run.clone(), ..]), ds.slice(s![run, ..]));
        match relu {
            true => elementwise::bn_backward_sums_rows::<true>(x, d, k.row(), sums),
            false => elementwise::bn_backward_sums_rows::<false>(x, d, k.row(), sums),
        }
    });
}

/// The per-channel terms of a BatchNorm's input gradient over `rows` rows given its
/// sums (`Σ g`, then `Σ g·(x − mean)`): `∂L/∂x = a·g + b·(x − mean) + c`; and its
/// parameters' gradients.
pub(crate) struct BackwardTerms {
    /// `gamma·invstd` ([`input_gradient_scale`]).
    pub(crate) a: Recycled<f32>,
    /// `−a·invstd·Σ(g·x̂)/M` (0 under fixed statistics).
    pub(crate) b: Recycled<f32>,
    /// `−a·Σg/M` (0 under fixed statistics).
    pub(crate) c: Recycled<f32>,
    /// `∂L/∂gamma = Σ g·x̂`.
    pub(crate) gamma: Array1<f32>,
    /// `∂L/∂beta = Σ g`.
    pub(crate) beta: Array1<f32>,
}

/// `a = gamma·invstd` per channel: the input gradient's term in `g`, which needs no sums.
pub(crate) fn input_gradient_scale(bn: &BatchNorm2d, stats: &BatchStats) -> Recycled<f32> {
    bn.gamma()
        .iter()
        .zip(&stats.invstd)
        .map(|(&g, &i)| (f64::from(g) * f64::from(i)) as f32)
        .collect()
}

/// [`BackwardTerms`] of `bn` under `stats` over `rows` rows with `sums`.
///
/// # Panics
///
/// If `sums` is not `2·channels` long.
pub(crate) fn backward_terms(
    bn: &BatchNorm2d,
    stats: &BatchStats,
    rows: usize,
    sums: &[f64],
) -> BackwardTerms {
    let c = stats.channels();
    assert_eq!(
        sums.len(),
        2 * c,
        "batch_norm_backward: sums of another width"
    );
    let (sum_g, sum_gd) = sums.split_at(c);
    let sum_gx: Recycled<f64> = sum_gd
        .iter()
        .zip(&stats.invstd)
        .map(|(s, &i)| s * f64::from(i))
        .collect();
    // ∂L/∂x = a·(g − Σg/M − x̂·Σgx̂/M) with a = gamma·invstd, x̂ = (x − mean)·invstd:
    // a·g + b·(x − mean) + c with b = −a·invstd·Σgx̂/M and c = −a·Σg/M.
    let count = rows as f64;
    // Fixed (running) statistics do not depend on `x`: only the `a·g` term remains.
    let through_stats = if stats.fixed { 0.0 } else { 1.0 };
    let (mut b, mut cc) = (Recycled::with_capacity(c), Recycled::with_capacity(c));
    for j in 0..c {
        let invstd = f64::from(stats.invstd[j]);
        let aj = f64::from(bn.gamma()[j]) * invstd;
        b.push((-through_stats * aj * invstd * sum_gx[j] / count) as f32);
        cc.push((-through_stats * aj * sum_g[j] / count) as f32);
    }
    // Pooled too: `Gradients::recycle` gives them back.
    let to_f32 = |v: &[f64]| {
        let v: Recycled<f32> = v.iter().map(|&s| s as f32).collect();
        Array1::from(v.into_vec())
    };
    BackwardTerms {
        a: input_gradient_scale(bn, stats),
        b,
        c: cc,
        gamma: to_f32(&sum_gx),
        beta: to_f32(sum_g),
    }
}

#[track_caller]
fn check_shapes(
    what: &str,
    bn: &BatchNorm2d,
    stats: &BatchStats,
    a: (usize, usize),
    b: (usize, usize),
    c: (usize, usize),
) {
    let channels = bn.channels();
    if a != b || a != c || a.1 != channels || stats.channels() != channels {
        shape_mismatch(what, channels, stats.channels(), [a, b, c]);
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn bad_batch(channels: usize, rows: usize, cols: usize) -> ! {
    panic!(
        "batch_norm_train: the batch norm has {channels} channels; got a {rows}x{cols} input \
         (training needs at least 2 rows, i.e. values per channel)"
    );
}

#[cold]
#[inline(never)]
#[track_caller]
fn shape_mismatch(what: &str, channels: usize, stats: usize, shapes: [(usize, usize); 3]) -> ! {
    panic!(
        "{what}: the batch norm has {channels} channels and the statistics {stats}; \
         the matrices must all be rows x {channels}, got {shapes:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::check::{assert_grad_close, dot, numeric_grad, values};
    use ndarray::{array, s, Array2};

    fn bn(c: usize) -> BatchNorm2d {
        BatchNorm2d::new(
            Array1::from_shape_fn(c, |j| 0.6 + 0.3 * j as f32),
            Array1::from_shape_fn(c, |j| 0.1 * j as f32 - 0.15),
            Array1::from_shape_fn(c, |j| 0.05 * j as f32),
            Array1::from_shape_fn(c, |j| 1.0 + 0.1 * j as f32),
            1e-5,
        )
        .unwrap()
    }

    #[test]
    fn pooled_backward_matches_the_pool_then_batch_norm_backward() {
        // A transition's BN-ReLU then 2x2 average pool: the pool's gradient formed row
        // by row equals it written out by `avg_pool2d_backward_into` first, over
        // three tasks of rows.
        let (n, h, w, c) = (4, 48, 40, 19);
        assert!(n * h * w > 2 * task_rows(c));
        let layer = bn(c);
        let x = ndarray::Array4::from_shape_vec((n, h, w, c), values(n * h * w * c, 1)).unwrap();
        let xm = ArrayView2::from_shape((n * h * w, c), x.as_slice().unwrap()).unwrap();
        let stats = batch_norm_train(&mut layer.clone(), xm, 0.1);
        let d_pooled =
            ndarray::Array4::from_shape_vec((n, h / 2, w / 2, c), values(n * h * w * c / 4, 2))
                .unwrap();
        let mut d_relu = vec![0.0; n * h * w * c];
        crate::train::pool::avg_pool2d_backward_into(d_pooled.view(), 2, 2, (h, w), &mut d_relu);
        let mut want = Array2::zeros((n * h * w, c));
        let d_relu = ArrayView2::from_shape((n * h * w, c), &d_relu).unwrap();
        let want_params = batch_norm_backward(&layer, &stats, xm, d_relu, true, want.view_mut());
        let mut got = vec![f32::NAN; n * h * w * c];
        let got_params =
            batch_norm_backward_pooled_write(&layer, &stats, x.view(), d_pooled.view(), &mut got);
        assert_eq!(got_params, want_params);
        // Equal values (the old path adds into zeros: +0.0 where this writes -0.0).
        assert!(
            got.iter().zip(&want).all(|(g, w)| g == w),
            "input gradients differ"
        );
    }

    /// The training-mode output `relu?(bn(x))` of a fresh copy of `layer`.
    fn forward(layer: &BatchNorm2d, x: ArrayView2<'_, f32>, relu: bool) -> Array2<f32> {
        let mut layer = layer.clone();
        let stats = batch_norm_train(&mut layer, x, 0.1);
        let mut out = Array2::zeros(x.dim());
        batch_norm_apply(&layer, &stats, x, relu, out.view_mut());
        out
    }

    #[test]
    fn statistics_and_running_update_match_torch() {
        // torch: bn = nn.BatchNorm2d(2).train(); x = tensor([[1, 10], [2, 20], [4, 40]])
        // viewed (3, 2, 1, 1); y = bn(x): mean [7/3, 70/3], biased var [14/9, 1400/9],
        // running_mean = 0.1·mean = [0.2333333, 2.3333333],
        // running_var = 0.9 + 0.1·unbiased var = 0.9 + 0.1·[7/3, 700/3] = [1.1333333, 24.233334]
        let mut layer = BatchNorm2d::init(2, 1e-5);
        let x = array![[1.0f32, 10.0], [2.0, 20.0], [4.0, 40.0]];
        let stats = batch_norm_train(&mut layer, x.view(), 0.1);
        assert_eq!(stats.mean(), [7.0 / 3.0, 70.0 / 3.0]);
        let expected_invstd = [
            1.0 / (14.0f64 / 9.0 + 1e-5).sqrt(),
            1.0 / (1400.0f64 / 9.0 + 1e-5).sqrt(),
        ];
        for (a, e) in stats.invstd().iter().zip(expected_invstd) {
            assert!((f64::from(*a) - e).abs() < 1e-7 * e);
        }
        for (a, e) in layer.running_mean().iter().zip([0.233_333_33, 2.333_333_3]) {
            assert!((a - e).abs() < 1e-6, "{a} vs {e}");
        }
        for (a, e) in layer.running_var().iter().zip([1.133_333_3, 24.233_334]) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        // Normalised output: zero mean, unit (biased) variance per channel.
        let y = forward(&BatchNorm2d::init(2, 0.0), x.view(), false);
        for col in y.columns() {
            let mean = col.sum() / 3.0;
            let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 3.0;
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
                "{mean} {var}"
            );
        }
    }

    /// `L = Σ r·relu?(bn(x))`, gradients w.r.t. x, gamma and beta by central differences.
    fn check(relu: bool) {
        let (rows, c) = (12, 3);
        let layer = bn(c);
        let x = Array2::from_shape_vec((rows, c), values(rows * c, 11)).unwrap();
        let r = values(rows * c, 12);
        let mut trained = layer.clone();
        let stats = batch_norm_train(&mut trained, x.view(), 0.1);
        let mut dx = Array2::from_elem((rows, c), 0.5f32); // accumulated into
        let (dgamma, dbeta) = batch_norm_backward(
            &layer,
            &stats,
            x.view(),
            Array2::from_shape_vec((rows, c), r.clone()).unwrap().view(),
            relu,
            dx.view_mut(),
        );
        let dx: Vec<f32> = dx.iter().map(|v| v - 0.5).collect();

        let numeric = numeric_grad(x.as_slice().unwrap(), 1e-3, |xs| {
            let x = ArrayView2::from_shape((rows, c), xs).unwrap();
            dot(&r, forward(&layer, x, relu).as_slice().unwrap())
        });
        assert_grad_close("dx", &dx, &numeric, 2e-3);
        let numeric = numeric_grad(layer.gamma().as_slice().unwrap(), 1e-3, |g| {
            let mut moved = layer.clone();
            moved.gamma_mut().assign(&Array1::from(g.to_vec()));
            dot(&r, forward(&moved, x.view(), relu).as_slice().unwrap())
        });
        assert_grad_close("dgamma", dgamma.as_slice().unwrap(), &numeric, 2e-3);
        let numeric = numeric_grad(layer.beta().as_slice().unwrap(), 1e-3, |b| {
            let mut moved = layer.clone();
            moved.beta_mut().assign(&Array1::from(b.to_vec()));
            dot(&r, forward(&moved, x.view(), relu).as_slice().unwrap())
        });
        assert_grad_close("dbeta", dbeta.as_slice().unwrap(), &numeric, 2e-3);
    }

    #[test]
    fn a_frozen_batch_norm_is_the_inference_layer_and_its_statistics_are_constants() {
        let (rows, c) = (12, 3);
        let layer = bn(c);
        let x = Array2::from_shape_vec((rows, c), values(rows * c, 31)).unwrap();
        let r = values(rows * c, 32);
        let stats = batch_norm_frozen(&layer);
        assert!(stats.is_fixed());
        // The forward pass is the layer's own inference mode (NHWC as (1, rows, 1, c)).
        let inference = |layer: &BatchNorm2d, x: ArrayView2<'_, f32>| {
            let x4 = x.to_owned().into_shape_with_order((1, rows, 1, c)).unwrap();
            layer
                .forward_relu(x4.view())
                .into_shape_with_order((rows, c))
                .unwrap()
        };
        let mut out = Array2::zeros((rows, c));
        batch_norm_apply(&layer, &stats, x.view(), true, out.view_mut());
        let expected = inference(&layer, x.view());
        for (a, e) in out.iter().zip(&expected) {
            assert!((a - e).abs() <= 1e-6 * e.abs().max(1.0), "{a} vs {e}");
        }
        // Its gradients are those of the inference-mode output.
        let mut dx = Array2::zeros((rows, c));
        let (dgamma, _) = batch_norm_backward(
            &layer,
            &stats,
            x.view(),
            Array2::from_shape_vec((rows, c), r.clone()).unwrap().view(),
            true,
            dx.view_mut(),
        );
        let numeric = numeric_grad(x.as_slice().unwrap(), 1e-3, |xs| {
            let x = ArrayView2::from_shape((rows, c), xs).unwrap();
            dot(&r, inference(&layer, x).as_slice().unwrap())
        });
        assert_grad_close("dx", dx.as_slice().unwrap(), &numeric, 2e-3);
        let numeric = numeric_grad(layer.gamma().as_slice().unwrap(), 1e-3, |g| {
            let mut moved = layer.clone();
            moved.gamma_mut().assign(&Array1::from(g.to_vec()));
            dot(&r, inference(&moved, x.view()).as_slice().unwrap())
        });
        assert_grad_close("dgamma", dgamma.as_slice().unwrap(), &numeric, 2e-3);
    }

    #[test]
    fn backward_matches_finite_differences() {
        check(false);
    }

    #[test]
    fn fused_relu_backward_matches_finite_differences() {
        check(true);
    }

    #[test]
    fn reads_the_first_columns_of_a_wider_buffer() {
        // A dense layer's BN reads columns 0..3 of a 5-wide buffer and adds its input
        // gradient into columns 0..3 of the buffer's gradient.
        let (rows, c) = (6, 3);
        let buffer = Array2::from_shape_vec((rows, 5), values(rows * 5, 21)).unwrap();
        let narrow = buffer.slice(s![.., ..c]).to_owned();
        let dy = Array2::from_shape_vec((rows, c), values(rows * c, 22)).unwrap();
        let layer = bn(c);
        let (mut a, mut b) = (layer.clone(), layer.clone());
        let stats = batch_norm_train(&mut a, buffer.slice(s![.., ..c]), 0.1);
        assert_eq!(stats, batch_norm_train(&mut b, narrow.view(), 0.1));
        let mut wide_dx = Array2::zeros((rows, 5));
        let wide = batch_norm_backward(
            &layer,
            &stats,
            buffer.slice(s![.., ..c]),
            dy.view(),
            true,
            wide_dx.slice_mut(s![.., ..c]),
        );
        let mut dx = Array2::zeros((rows, c));
        let narrow = batch_norm_backward(
            &layer,
            &stats,
            narrow.view(),
            dy.view(),
            true,
            dx.view_mut(),
        );
        assert_eq!(wide, narrow);
        assert_eq!(wide_dx.slice(s![.., ..c]), dx);
        assert!(wide_dx.slice(s![.., c..]).iter().all(|&v| v == 0.0));
    }

    /// The three functions' results straight from their formulas, in f64.
    struct Naive {
        mean: Vec<f64>,
        y: Array2<f64>,
        dx: Array2<f64>,
        dgamma: Vec<f64>,
        dbeta: Vec<f64>,
    }

    fn naive(layer: &BatchNorm2d, x: &Array2<f32>, dy: &Array2<f32>) -> Naive {
        let (rows, c) = x.dim();
        let m = rows as f64;
        let mut out = Naive {
            mean: vec![0.0; c],
            y: Array2::zeros((rows, c)),
            dx: Array2::zeros((rows, c)),
            dgamma: vec![0.0; c],
            dbeta: vec![0.0; c],
        };
        for j in 0..c {
            let col = x.column(j).mapv(f64::from);
            let mean = col.sum() / m;
            let var = col.mapv(|v| (v - mean) * (v - mean)).sum() / m;
            let invstd = 1.0 / (var + f64::from(layer.eps())).sqrt();
            let xhat = col.mapv(|v| (v - mean) * invstd);
            let (gamma, beta) = (f64::from(layer.gamma()[j]), f64::from(layer.beta()[j]));
            let y = xhat.mapv(|v| v * gamma + beta);
            let g: Vec<f64> = (0..rows)
                .map(|r| {
                    if y[r] > 0.0 {
                        f64::from(dy[[r, j]])
                    } else {
                        0.0
                    }
                })
                .collect();
            let sg = g.iter().sum::<f64>();
            let sgx = (0..rows).map(|r| g[r] * xhat[r]).sum::<f64>();
            out.mean[j] = mean;
            for r in 0..rows {
                out.y[[r, j]] = y[r].max(0.0);
                out.dx[[r, j]] = gamma * invstd * (g[r] - sg / m - xhat[r] * sgx / m);
            }
            (out.dgamma[j], out.dbeta[j]) = (sgx, sg);
        }
        out
    }

    #[test]
    fn large_and_strided_inputs_match_the_formulas() {
        // 5000 x 40 is split into several parallel tasks; the transposed copies give
        // views without unit column stride, which go through copies.
        let (rows, c) = (5000, 40);
        assert!(rows * c > 2 * TASK_ELEMENTS);
        let layer = bn(c);
        let x = Array2::from_shape_vec((rows, c), values(rows * c, 31)).unwrap();
        let dy = Array2::from_shape_vec((rows, c), values(rows * c, 32)).unwrap();
        let Naive {
            mean,
            y,
            dx,
            dgamma,
            dbeta,
        } = naive(&layer, &x, &dy);
        let xt = x.t().to_owned();
        let dyt = dy.t().to_owned();
        for (xv, dyv) in [(x.view(), dy.view()), (xt.t(), dyt.t())] {
            let mut trained = layer.clone();
            let stats = batch_norm_train(&mut trained, xv, 0.1);
            let mut out_t = Array2::<f32>::zeros((c, rows));
            batch_norm_apply(&layer, &stats, xv, true, out_t.view_mut().reversed_axes());
            let mut dx_t = Array2::<f32>::zeros((c, rows));
            let (g, b) = batch_norm_backward(
                &layer,
                &stats,
                xv,
                dyv,
                true,
                dx_t.view_mut().reversed_axes(),
            );
            let close =
                |a: f32, e: f64, tol: f64| (f64::from(a) - e).abs() <= tol * (1.0 + e.abs());
            assert!(stats
                .mean()
                .iter()
                .zip(&mean)
                .all(|(&a, &e)| close(a, e, 1e-6)));
            assert!(out_t.t().iter().zip(&y).all(|(&a, &e)| close(a, e, 1e-5)));
            assert!(dx_t.t().iter().zip(&dx).all(|(&a, &e)| close(a, e, 1e-5)));
            assert!(g.iter().zip(&dgamma).all(|(&a, &e)| close(a, e, 1e-5)));
            assert!(b.iter().zip(&dbeta).all(|(&a, &e)| close(a, e, 1e-5)));
        }
    }

    #[test]
    #[should_panic(expected = "at least 2 rows")]
    fn one_value_per_channel_panics() {
        let _ = batch_norm_train(
            &mut BatchNorm2d::init(2, 1e-5),
            array![[1.0, 2.0]].view(),
            0.1,
        );
    }
}
