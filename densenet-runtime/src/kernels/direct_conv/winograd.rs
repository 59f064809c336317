//! Winograd F(2x2, 3x3) for DenseNet's 3x3 convolutions on AVX-512: 2.25x fewer
//! multiply-adds than the direct kernel (Lavin & Gray, 2016).
//!
//! Each 2x2 block of output pixels (a tile) comes from a 4x4 block of input pixels `d`
//! and the 3x3 filter `g` as `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: 16 products per tile and
//! channel pair instead of 36. Summed over input channels, the 16 elementwise products
//! become 16 GEMMs, `M[ξ] = V[ξ] · U[ξ]`, with `V[ξ]` the transformed inputs (tiles ×
//! `c_in`) and `U[ξ]` the transformed weight (`c_in` × 32), which run on the direct
//! kernel's 14 × 32 register tiles ([`Avx512::tile`]).
//!
//! A call transforms the weight once (`U`, 16·c_in·32 floats, in the calling thread's
//! scratch), then runs one task per row of tiles (two output rows), which transforms
//! that row's input tiles into `V`, runs the GEMMs into `M` (both in the worker
//! thread's scratch, which grows once) and writes `Aᵀ M A` to the output.
//!
//! [`direct_conv`](super::direct_conv) sends it stride-1 3x3 convolutions with at most
//! 32 outputs, at least 64 input channels (a multiple of 16), an even output of at
//! least 14 columns, and no prologue or epilogue ([`applies`]): DenseNet-121's 3x3 convolutions on its 56x56, 28x28 and 14x14 maps (on
//! 14x14 a task takes two rows of tiles, so its GEMMs fill the register tile). Measured on DenseNet-121's 3x3
//! convolutions (`conv_gflops --winograd`): see BENCHMARKS.md. Through
//! [`winograd_conv`](super::winograd_conv) it also takes more outputs, panel after
//! panel over the same transformed inputs, and 32 inputs ([`fits`]): the training
//! step's input gradients, 32 → 128 channels.

use core::arch::x86_64::*;

use crate::parallel::prelude::*;
use crate::prelude::*;

use super::avx512::Avx512;
use super::bf16_lanes::bf16_bits16;
use super::job::Microkernel;
use super::{check_winograd, ConvShape, ImageLayout, WinogradInput};
use super::{MAX_TILE, PARALLEL_MACS};

/// Columns of the transformed weight: one AVX-512 panel, so each GEMM is one panel wide.
const PANEL: usize = 32;
/// Lanes of a vector.
const LANES: usize = 16;
/// Fewest input channels: the GEMMs' depth. With 16 the transforms outweigh the saving
/// (an 18% slower 16 → 32 conv at 56x56).
const MIN_C_IN: usize = 64;
/// Fewest output columns: a task's tiles should fill the 14-row register tile, so a
/// task takes as many whole rows of tiles as fit ([`rows_per_task`]): at 14x14 two rows
/// of 7 (one row of 7 measured at par with the direct kernel).
const MIN_WIDTH: usize = 14;
/// Most floats of a task's `V` and `M` (64 MiB, per thread): wider rows or more
/// channels take the direct kernel, which needs no scratch. DenseNet-121's largest
/// is `16·28·(128 + 32)` = 71,680.
const MAX_TILE_FLOATS: usize = 1 << 24;

/// The transformed weights of the calls running: a shared list as [`TILES`] is, for the
/// same reason. A buffer per thread grew when a thread first ran a call of a shape, so
/// after the first training step a chunk of a 3x3's input gradient landing on the other
/// thread allocated (`tests/train_allocations.rs` caught it under load).
/// [`reserve_calls`] tops it up to one buffer per call that may run at once.
#[cfg(feature = "std")]
static WEIGHTS: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// `V` and `M` of the tasks running, the bf16 path's too: one shared list, not a buffer
/// per thread, which grew when a thread first ran a task of a larger shape, so that
/// whether a step allocated depended on which thread its tasks had landed on before.
/// [`run_tasks`] tops the list up to one buffer per thread of the call, each as large
/// as the call's tasks need, before they start: a call allocates only when it is the
/// first of its size or thread count.
#[cfg(feature = "std")]
static TILES: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// [`TILES`], locked (a panicking task cannot leave the list inconsistent: it only
/// pops and pushes whole buffers).
#[cfg(feature = "std")]
fn tiles() -> std::sync::MutexGuard<'static, Vec<Vec<f32>>> {
    TILES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`WEIGHTS`], locked (as [`tiles`]).
#[cfg(feature = "std")]
fn weights() -> std::sync::MutexGuard<'static, Vec<Vec<f32>>> {
    WEIGHTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `task(t)` for each of a call's [`tasks`], on the threads if `parallel` and the
/// call is large enough, after making sure [`TILES`] holds a buffer of
/// [`tile_floats`] for each thread that may run one.
pub(super) fn run_tasks(s: &ConvShape, parallel: bool, task: impl Fn(usize) + Sync + Send) {
    let tasks = tasks(s);
    let split = parallel && s.macs() >= PARALLEL_MACS && crate::parallel::current_num_threads() > 1;
    reserve(
        s,
        if split {
            crate::parallel::current_num_threads()
        } else {
            1
        },
    );
    if split {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Makes sure [`TILES`] holds `threads` buffers of at least [`tile_floats`] for `s`:
/// one for each task of calls of `s` that may run at once.
pub(super) fn reserve(s: &ConvShape, threads: usize) {
    #[cfg(feature = "std")]
    top_up(
        &mut tiles(),
        threads,
        tile_floats(s).expect("`fits` bounded a task's floats"),
    );
    #[cfg(not(feature = "std"))]
    let _ = (s, threads);
}

/// [`reserve`], and [`WEIGHTS`] `calls` buffers of `s`'s transformed weight: for
/// `calls` calls of `s` that run at once, each on one thread.
pub(super) fn reserve_calls(s: &ConvShape, calls: usize) {
    reserve(s, calls);
    #[cfg(feature = "std")]
    top_up(
        &mut weights(),
        calls,
        weight_floats(s).expect("`fits` bounded the weight"),
    );
}

/// At least `count` buffers in `list`, each at least `len` floats.
#[cfg(feature = "std")]
fn top_up(list: &mut Vec<Vec<f32>>, count: usize, len: usize) {
    if list.len() < count {
        list.resize_with(count, Vec::new);
    }
    for buffer in list.iter_mut().filter(|b| b.len() < len) {
        buffer.resize(len, 0.0);
    }
}

/// Runs `f` on `len` floats of a task buffer from [`TILES`] (a new one if all are in
/// use, as when tasks of two calls run at once; without `std`, always).
pub(super) fn with_tiles<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    #[cfg(feature = "std")]
    return with_listed(tiles, len, f);
    #[cfg(not(feature = "std"))]
    f(&mut vec![0.0; len])
}

/// Runs `f` on `len` floats of a weight buffer from [`WEIGHTS`] (as [`with_tiles`]).
fn with_weight_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    #[cfg(feature = "std")]
    return with_listed(weights, len, f);
    #[cfg(not(feature = "std"))]
    f(&mut vec![0.0; len])
}

/// Runs `f` on `len` floats of a buffer taken from the list `lock` guards (grown if
/// short; a new one if the list is empty), and gives the buffer back.
#[cfg(feature = "std")]
fn with_listed<R>(
    lock: fn() -> std::sync::MutexGuard<'static, Vec<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buffer = lock().pop().unwrap_or_default();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = f(&mut buffer[..len]);
    lock().push(buffer);
    result
}

/// Whether `direct_conv` runs a convolution of `shape` with no prologue or epilogue
/// here: where it [`fits`], DenseNet's 3x3s (at most 32 outputs, at least
/// [`MIN_C_IN`] inputs).
pub(super) fn applies(s: &ConvShape) -> bool {
    s.c_out <= PANEL && s.c_in >= MIN_C_IN && fits(s)
}

/// Whether [`run`] takes `shape` at all: a stride-1 3x3 with a multiple of 16 input
/// channels (at least 32), any number of outputs (one 32-column panel of GEMMs after
/// the other over the same transformed inputs), an even output at least 14 wide, and
/// its scratch within bounds. Beyond [`applies`], the training step's input gradients
/// (32 → 128 channels in DenseNet-121) run here through [`super::winograd_conv`].
pub(super) fn fits(s: &ConvShape) -> bool {
    s.kernel_h == 3
        && s.kernel_w == 3
        && s.stride == 1
        && s.c_in >= 2 * LANES
        && s.c_in.is_multiple_of(LANES)
        && s.c_out > 0
        && s.out_h.is_multiple_of(2)
        && s.out_w.is_multiple_of(2)
        && s.out_w >= MIN_WIDTH
        && tile_floats(s).is_some_and(|f| f <= MAX_TILE_FLOATS)
        && weight_floats(s).is_some()
}

/// Floats of the transformed weight: `16·c_in·32` a panel of 32 outputs.
fn weight_floats(s: &ConvShape) -> Option<usize> {
    (16 * PANEL)
        .checked_mul(s.c_in)?
        .checked_mul(s.c_out.div_ceil(PANEL))
}

/// Whether `direct_conv` takes this path for `shape`: where it [`applies`], but on maps
/// narrower than 28 columns only for a call that runs alone (not `parallel`, or too
/// small to split). There a task takes two rows of tiles, so a 14x14 map makes 4 uneven
/// tasks an image, which split over two threads measured 40% slower than the direct
/// kernel's 14 rows (the bf16 path, whose direct kernel is relatively slower, gains
/// either way). A call that may split decides so on one thread too (where Winograd was
/// 8-12% faster): the path, and so the bits, must not depend on the thread count (a
/// training step's must not).
pub(super) fn takes(s: &ConvShape, parallel: bool) -> bool {
    let split = parallel && s.macs() >= PARALLEL_MACS;
    applies(s) && (s.out_w >= 2 * Avx512::TILE || !split)
}

/// Whether a caller with a BN-ReLU before the conv ([`super::WinogradInput::BnRelu`])
/// does better here than through the direct kernel over the BN-ReLU map written padded
/// first: wherever it [`fits`] with at most 32 outputs, on maps at least 16 wide, and
/// on narrower ones (down to [`MIN_WIDTH`]) where [`narrow_pays`]. By the shape and the
/// CPU only, never the thread count: the training step's forward takes it, and its
/// bits must not depend on how many threads ran it. Saving the map's write and read
/// pays for the transforms: DenseNet-BC-100's 48 → 12 3x3s (k = 12) at batch 64 on its
/// 32x32 and 16x16 blocks went from 67-75 ms of a step's forward (the map, then the
/// direct kernel) to ~59 ms (phase timer, two threads, Zen 5).
pub(super) fn takes_before_bn_relu(s: &ConvShape) -> bool {
    s.c_out <= PANEL && fits(s) && (s.out_w >= 16 || narrow_pays(s))
}

/// Whether Winograd pays on a map narrower than 16 (DenseNet-121's 14x14), where a
/// task takes two rows of 7 tiles: not where AVX-512 runs at full width (Zen 5: 15-25%
/// slower than the direct kernel at batch 16, split over two threads), but where it
/// runs at half width ([`crate::kernels::avx512_half_width`], Zen 4), whose direct
/// kernel is the slower by as much, given enough tasks (16, four images) that a split
/// over the threads stays even: DenseNet-121's third block's 3x3s at batch 16 took
/// 17-18 against 30-32 ms of a step's forward (phase timer, two threads). (At batch 1,
/// four uneven tasks, the inference 3x3s took 2.7 against 2.0 ms split over two.)
fn narrow_pays(s: &ConvShape) -> bool {
    crate::kernels::avx512_half_width() && tasks(s) >= 16
}

/// Floats of a task's `V` (`16·tiles·c_in`) and `M` (`16·tiles·32`), `None` on
/// overflow, `tiles` being [`rows_per_task`] rows of `out_w / 2`. Bounded by
/// [`MAX_TILE_FLOATS`] where the path [`applies`], which also bounds `c_in ≤ 2²⁰`, so
/// the transformed weight's `16·c_in·32` floats cannot overflow.
pub(super) fn tile_floats(s: &ConvShape) -> Option<usize> {
    let tw = s.out_w / 2;
    tw.checked_mul(rows_per_task(tw))?
        .checked_mul(16)?
        .checked_mul(s.c_in.checked_add(PANEL)?)
}

/// Rows of 2x2 tiles a task takes: as many whole rows of `tw` tiles as fill the 14-row
/// register tile, at least one.
fn rows_per_task(tw: usize) -> usize {
    (Avx512::TILE / tw.max(1)).max(1)
}

/// Tasks of a call (the bf16 path's too): [`rows_per_task`] rows of tiles each, an
/// image's last task taking what is left.
pub(super) fn tasks(s: &ConvShape) -> usize {
    s.n * (s.out_h / 2).div_ceil(rows_per_task(s.out_w / 2))
}

/// Task `t`'s image and rows of tiles (see [`tasks`]).
pub(super) fn task_rows(s: &ConvShape, t: usize) -> (usize, core::ops::Range<usize>) {
    let (th, k) = (s.out_h / 2, rows_per_task(s.out_w / 2));
    let per_image = th.div_ceil(k);
    let (b, first) = (t / per_image, t % per_image * k);
    (b, first..(first + k).min(th))
}

/// The convolution of `input` at `input_layout` with the HWIO weight `weight` into
/// `out` at `out_layout`, for a shape that [`fits`].
///
/// # Panics
///
/// If the shape does not apply, the CPU lacks AVX-512F, or the geometry does not fit
/// the slices (`check`'s panics): caller bugs, since `direct_conv` checked them all.
#[track_caller]
pub(super) fn run(
    input: WinogradInput<'_>,
    weight: &[f32],
    shape: ConvShape,
    out: &mut [f32],
    out_layout: ImageLayout,
    parallel: bool,
) {
    let s = shape;
    // What every `unsafe` block below relies on, checked here too so that this function
    // is sound on its own (a few comparisons per call): the input block the tiles read,
    // the weight's length, the output block.
    assert!(
        fits(&s) && crate::kernels::cpu::avx512f(),
        "winograd::run: shape or CPU not supported"
    );
    check_winograd(input, weight, &s, out.len(), out_layout);
    let (data, input_layout, bn_relu) = match input {
        WinogradInput::Padded { data, layout } => (data, layout, None),
        WinogradInput::BnRelu {
            data,
            layout,
            scale,
            shift,
        } => (data, layout, Some((scale.as_ptr(), shift.as_ptr()))),
    };
    let out = out.as_mut_ptr();
    let with_weight = |u: &[f32]| {
        let job = Job {
            input: data.as_ptr(),
            input_layout,
            bn_relu,
            u: u.as_ptr(),
            shape,
            out,
            out_layout,
        };
        run_tasks(&s, parallel, |t| job.task(t));
    };
    let floats = weight_floats(&s).expect("`fits` bounded the transformed weight");
    with_weight_buffer(floats, |u| {
        for (panel, u) in u.chunks_exact_mut(16 * s.c_in * PANEL).enumerate() {
            // SAFETY: AVX-512F asserted above; `check` verified that `weight` holds the
            // 9·c_in·c_out values read, and `u`'s chunk holds the 16·c_in·32 written.
            unsafe { transform_weight(weight, s.c_in, s.c_out, panel * PANEL, u) };
        }
        with_weight(u);
    });
}

/// `U[ξ][ci][j] = (G g Gᵀ)[ξ]` of the filter `g` of every input channel `ci` and output
/// `co0 + j < c_out`, `j < 32` (columns past `c_out` zero): the panel of outputs from
/// `co0`, with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
///
/// # Safety
///
/// The CPU has AVX-512F; `weight` holds `9·c_in·c_out` values, `u` `16·c_in·32`.
// The transforms index 4x4 tiles by row and column, as the formulas do.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transform_weight(
    weight: &[f32],
    c_in: usize,
    c_out: usize,
    co0: usize,
    u: &mut [f32],
) {
    assert!(weight.len() >= 9 * c_in * c_out && u.len() >= 16 * c_in * PANEL);
    let half = _mm512_set1_ps(0.5);
    // (g0 + g1 + g2) / 2 and (g0 − g1 + g2) / 2, the middle rows of G.
    let mid = |g0, g1, g2| {
        let outer = _mm512_add_ps(g0, g2);
        (
            _mm512_mul_ps(half, _mm512_add_ps(outer, g1)),
            _mm512_mul_ps(half, _mm512_sub_ps(outer, g1)),
        )
    };
    for ci in 0..c_in {
        for c0 in (0..PANEL).step_by(LANES) {
            let lanes = c_out.saturating_sub(co0 + c0).min(LANES);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as __mmask16;
            // SAFETY: lane `l < lanes` of tap `t` reads weight element
            // `(t·c_in + ci)·c_out + co0 + c0 + l < 9·c_in·c_out` (asserted above);
            // masked-off lanes are not read (nor formed beyond the slice: `wrapping_add`).
            let g = |t: usize| unsafe {
                let at = (t * c_in + ci) * c_out + co0 + c0;
                _mm512_maskz_loadu_ps(mask, weight.as_ptr().wrapping_add(at))
            };
            // G g: the rows of the filter (ky), column kx by column.
            let columns: [[__m512; 4]; 3] = core::array::from_fn(|kx| {
                let (g0, g1, g2) = (g(kx), g(3 + kx), g(6 + kx));
                let (m1, m2) = mid(g0, g1, g2);
                [g0, m1, m2, g2]
            });
            // (G g) Gᵀ: the same along kx, row i of G g by row.
            for i in 0..4 {
                let r = [columns[0][i], columns[1][i], columns[2][i]];
                let (m1, m2) = mid(r[0], r[1], r[2]);
                for (j, v) in [r[0], m1, m2, r[2]].into_iter().enumerate() {
                    let at = ((i * 4 + j) * c_in + ci) * PANEL + c0;
                    // SAFETY: `at + 16 ≤ 16·c_in·32` (`c0 + 16 ≤ 32`), asserted above.
                    unsafe { _mm512_storeu_ps(u.as_mut_ptr().add(at), v) };
                }
            }
        }
    }
}

/// A call's pointers (tasks write disjoint output rows: see [`Job::task`]).
struct Job {
    input: *const f32,
    input_layout: ImageLayout,
    /// For an input before its BN-ReLU (unpadded): the scale and shift, `c_in` each.
    bn_relu: Option<(*const f32, *const f32)>,
    u: *const f32,
    shape: ConvShape,
    out: *mut f32,
    out_layout: ImageLayout,
}

// SAFETY: the pointers come from borrows that `run` holds while every task runs; inputs
// and the weight are only read, and tasks write disjoint output elements (the two output
// rows of their own tile row; `check` verified that distinct output elements are
// distinct memory).
unsafe impl Sync for Job {}

impl Job {
    /// Task `t`: `k` rows of tiles ([`rows_per_task`], fewer in an image's last task),
    /// side by side in `V` (`[ξ][r·tw + tx][ci]`) and `M` (`[ξ][r·tw + tx][co]`).
    fn task(&self, t: usize) {
        let s = self.shape;
        let (b, rows) = task_rows(&s, t);
        let tiles = rows.len() * (s.out_w / 2);
        // No overflow: at most `MAX_TILE_FLOATS` together (`applies`).
        let (v_len, m_len) = (16 * tiles * s.c_in, 16 * tiles * PANEL);
        with_tiles(v_len + m_len, |scratch| {
            let (v, m) = scratch.split_at_mut(v_len);
            self.tile_rows(b, rows, v, m);
        });
    }

    /// Tile rows `rows` of image `b`: input transforms into `v` (`V[ξ][r·tw + tx][ci]`),
    /// 16 GEMMs over all their tiles into `m` (`M[ξ][r·tw + tx][co]`), output
    /// transforms into their output rows.
    fn tile_rows(&self, b: usize, rows: core::ops::Range<usize>, v: &mut [f32], m: &mut [f32]) {
        let s = self.shape;
        let tw = s.out_w / 2;
        let tiles = rows.len() * tw;
        assert!(v.len() == 16 * tiles * s.c_in && m.len() == 16 * tiles * PANEL);
        for (r, ty) in rows.clone().enumerate() {
            // SAFETY: `run` asserted AVX-512F and, with `WinogradInput::check`, that the
            // input block of `(n, out_h + 2, out_w + 2, c_in)` (padded) or `(n, out_h,
            // out_w, c_in)` (before BN-ReLU, with `c_in` scale and shift values) lies
            // inside the input slice: tile row `ty` reads padded rows
            // `2ty .. 2ty + 4 ≤ out_h + 2` and columns `.. 2·tw + 2 = out_w + 2`
            // (unpadded: those inside the image), channels `c0 .. c0 + 16 ≤ c_in`
            // (`c_in % 16 == 0`). It writes `v[ξ·tiles·c_in + (r·tw + tx)·c_in + ci]`,
            // inside `v` (length asserted above).
            unsafe {
                let dims = (b, ty, tw, s.c_in);
                let v = &mut v[r * tw * s.c_in..];
                match self.bn_relu {
                    None => input_tiles(self.input, self.input_layout, dims, tiles * s.c_in, v),
                    Some((scale, shift)) => {
                        let x = (self.input, self.input_layout, scale, shift);
                        let plane = tiles * s.c_in;
                        bn_relu_input_tiles(x, (s.out_h, s.out_w), dims, plane, v)
                    }
                }
            };
        }
        let offsets: [usize; MAX_TILE] = core::array::from_fn(|i| i * PANEL);
        let null = (core::ptr::null(), core::ptr::null());
        // Panel by panel of 32 outputs, over the same transformed inputs.
        for co0 in (0..s.c_out).step_by(PANEL) {
            let width = (s.c_out - co0).min(PANEL);
            // No overflow: inside the transformed weight `run` holds (`weight_floats`).
            let u = self.u.wrapping_add(co0 / PANEL * 16 * s.c_in * PANEL);
            for xi in 0..16 {
                for t0 in (0..tiles).step_by(Avx512::TILE) {
                    let n = Avx512::TILE.min(tiles - t0);
                    // SAFETY: AVX-512F as above; `1 ≤ n ≤ 14`, `1 ≤ width ≤ 32`. Pixel
                    // `i < n` reads `v[(xi·tiles + t0 + i)·c_in + ci]`, `ci < c_in`:
                    // inside `v`'s `16·tiles·c_in`. Weight row `ci` reads
                    // `u[(xi·c_in + ci)·32 + j]`, `j < 32`, of this panel's `16·c_in·32`
                    // transformed values, which `run` holds and nobody writes during
                    // the call. Writes go to `m[(xi·tiles + t0 + i)·32 + j]`, `j <
                    // width`: inside `m`, this task's own.
                    unsafe {
                        Avx512::tile(
                            n,
                            width,
                            v.as_ptr().add((xi * tiles + t0) * s.c_in),
                            s.c_in,
                            &[0],
                            s.c_in,
                            u.add(xi * s.c_in * PANEL),
                            PANEL,
                            null,
                            m.as_mut_ptr().add((xi * tiles + t0) * PANEL),
                            &offsets,
                            false,
                        );
                    }
                }
            }
            for (r, ty) in rows.clone().enumerate() {
                // SAFETY: AVX-512F as above; row `r`'s `M[ξ][tx]` is at
                // `m[ξ·tiles·32 + (r·tw + tx)·32 ..]`, inside `m`. Tile `tx` writes
                // output pixels `(b, 2ty + dy, 2tx + dx)`, `dy, dx < 2`, channels
                // `co0 .. co0 + width ≤ c_out`: inside the output block `check`
                // bounded, and only this task writes output rows `2ty, 2ty + 1` of
                // image `b`.
                unsafe {
                    output_tiles(
                        &m[r * tw * PANEL..],
                        tiles * PANEL,
                        (b, ty, tw, width),
                        Output::F32(self.out.wrapping_add(co0)),
                        self.out_layout,
                    )
                };
            }
        }
    }
}

/// `V[ξ][tx][ci] = (Bᵀ d B)[ξ]` of the 4x4 input tile `d` at rows `2ty..`, columns
/// `2tx..` of image `b`, 16 channels at a time, with
/// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`.
///
/// Stored at `v[ξ·plane + tx·c_in + ci]` (`plane ≥ tw·c_in`: a task's tile rows side by
/// side).
///
/// # Safety
///
/// The CPU has AVX-512F; input pixels `(b, 2ty .. 2ty + 4, 0 .. 2·tw + 2)`, channels
/// `0 .. c_in` (a multiple of 16) are valid reads.
// The transforms index 4x4 tiles by row and column, as the formulas do.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
unsafe fn input_tiles(
    input: *const f32,
    il: ImageLayout,
    (b, ty, tw, c_in): (usize, usize, usize, usize),
    plane: usize,
    v: &mut [f32],
) {
    assert!(plane >= tw * c_in && v.len() >= 15 * plane + tw * c_in);
    let (rs, ps) = (il.row_stride, il.pixel_stride);
    for tx in 0..tw {
        let base = il.index(b, 2 * ty, 2 * tx, 0);
        for c0 in (0..c_in).step_by(LANES) {
            // SAFETY: pixel (2ty + r, 2tx + c), channels c0 .. c0 + 16: valid by the
            // contract.
            let d = |r: usize, c: usize| unsafe {
                _mm512_loadu_ps(input.add(base + r * rs + c * ps + c0))
            };
            for (r, row) in input_transform(d).into_iter().enumerate() {
                for (j, value) in row.into_iter().enumerate() {
                    let at = (r * 4 + j) * plane + tx * c_in + c0;
                    // SAFETY: `at + 16 ≤ 15·plane + tw·c_in` (asserted above).
                    unsafe { _mm512_storeu_ps(v.as_mut_ptr().add(at), value) };
                }
            }
        }
    }
}

/// [`input_tiles`] of the zero-padded `relu(x·scale + shift)` of the unpadded
/// `h × w` images of `x` ([`bn_relu_transform`]).
///
/// # Safety
///
/// The CPU has AVX-512F; image pixels `(b, 0 .. h, 0 .. w)`, channels `0 .. c_in` (a
/// multiple of 16) of `x` at `xl` are valid reads, as are `c_in` values at `scale` and
/// `shift`; `plane ≥ tw·c_in` and `v.len() ≥ 15·plane + tw·c_in`.
#[target_feature(enable = "avx512f")]
unsafe fn bn_relu_input_tiles(
    (x, xl, scale, shift): (*const f32, ImageLayout, *const f32, *const f32),
    (h, w): (usize, usize),
    (b, ty, tw, c_in): (usize, usize, usize, usize),
    plane: usize,
    v: &mut [f32],
) {
    assert!(plane >= tw * c_in && v.len() >= 15 * plane + tw * c_in);
    for tx in 0..tw {
        for c0 in (0..c_in).step_by(LANES) {
            // SAFETY: channels `c0 .. c0 + 16 ≤ c_in` of `scale` and `shift`, and the
            // tile's image pixels: valid by the contract.
            let t = unsafe {
                let bn = (
                    _mm512_loadu_ps(scale.add(c0)),
                    _mm512_loadu_ps(shift.add(c0)),
                );
                bn_relu_transform(x, xl, (h, w), (b, ty, tx), c0, bn)
            };
            for (r, row) in t.into_iter().enumerate() {
                for (j, value) in row.into_iter().enumerate() {
                    let at = (r * 4 + j) * plane + tx * c_in + c0;
                    // SAFETY: `at + 16 ≤ 15·plane + tw·c_in` (asserted above).
                    unsafe { _mm512_storeu_ps(v.as_mut_ptr().add(at), value) };
                }
            }
        }
    }
}

/// [`input_transform`] of the 4x4 block at padded rows `2ty..`, columns `2tx..`,
/// channels `c0 .. c0 + 16`, of the zero-padded `relu(x·scale + shift)` of the
/// unpadded `h × w` images of `x`: padded pixel `(2ty + r, 2tx + c)` is image pixel
/// `(2ty + r − 1, 2tx + c − 1)`, zero outside the image. `x·scale + shift` is a
/// product then a sum (as the runtime's BN-ReLU passes round it, not a fused
/// multiply-add) and the ReLU sets `y <= 0` to 0 (NaN stays), so the values are those of
/// the map such a pass writes.
///
/// # Safety
///
/// The CPU has AVX-512F; the tile's image pixels of image `b`, channels `c0 .. c0 + 16`,
/// are valid reads of `x` at `xl`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn bn_relu_transform(
    x: *const f32,
    xl: ImageLayout,
    (h, w): (usize, usize),
    (b, ty, tx): (usize, usize, usize),
    c0: usize,
    (scale, shift): (__m512, __m512),
) -> [[__m512; 4]; 4] {
    // Image row and column of the tile's first padded pixel, one before its own.
    let (y0, x0) = ((2 * ty).wrapping_sub(1), (2 * tx).wrapping_sub(1));
    let inside = |r: usize, c: usize| y0.wrapping_add(r) < h && x0.wrapping_add(c) < w;
    let zero = _mm512_setzero_ps();
    let d = |r: usize, c: usize| {
        if !inside(r, c) {
            return zero;
        }
        let at = xl.index(b, y0.wrapping_add(r), x0.wrapping_add(c), c0);
        // SAFETY: an image pixel (`inside`), channels `c0 .. c0 + 16`: valid by the
        // contract.
        let v = unsafe { _mm512_loadu_ps(x.add(at)) };
        let y = _mm512_add_ps(_mm512_mul_ps(v, scale), shift);
        _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(y, zero), zero)
    };
    input_transform(d)
}

/// `Bᵀ d B` of a 4x4 input tile of 16 channels, `d(r, c)` its pixel at row `r` and
/// column `c`: element `[i][j]` is `V[4i + j]`. The order of the operations is the
/// formula's, which the bf16 path's reference (`lowp/winograd.rs`) repeats.
// The transforms index 4x4 tiles by row and column, as the formulas do.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn input_transform(d: impl Fn(usize, usize) -> __m512) -> [[__m512; 4]; 4] {
    // Bᵀ d: along the rows, column by column.
    let mut t = [[_mm512_setzero_ps(); 4]; 4];
    for c in 0..4 {
        let (d0, d1, d2, d3) = (d(0, c), d(1, c), d(2, c), d(3, c));
        t[0][c] = _mm512_sub_ps(d0, d2);
        t[1][c] = _mm512_add_ps(d1, d2);
        t[2][c] = _mm512_sub_ps(d2, d1);
        t[3][c] = _mm512_sub_ps(d1, d3);
    }
    // (Bᵀ d) B: along the columns.
    t.map(|x| {
        [
            _mm512_sub_ps(x[0], x[2]),
            _mm512_add_ps(x[1], x[2]),
            _mm512_sub_ps(x[2], x[1]),
            _mm512_sub_ps(x[1], x[3]),
        ]
    })
}

/// Where [`output_tiles`] writes: f32 values, or bf16 bits (rounded to nearest even,
/// as `lowp::bf16_round`) for the bf16 path writing a dense block's bf16 buffer.
#[derive(Clone, Copy, Debug)]
pub(super) enum Output {
    /// f32 values.
    F32(*mut f32),
    /// bf16 bits.
    Bf16(*mut u16),
}

/// Output pixels `(b, 2ty + dy, 2tx + dx)` of every tile `tx` as `Aᵀ M A`, with
/// `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`, `M[ξ][tx][co]` at `m[ξ·plane + tx·32 + co]`
/// (`plane ≥ tw·32`: a task of several tile rows keeps them side by side).
///
/// # Safety
///
/// The CPU has AVX-512F; output pixels `(b, 2ty .. 2ty + 2, 0 .. 2·tw)`, channels
/// `0 .. c_out` are valid writes that nothing else accesses.
// The transforms index 4x4 tiles by row and column, as the formulas do.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_tiles(
    m: &[f32],
    plane: usize,
    (b, ty, tw, c_out): (usize, usize, usize, usize),
    out: Output,
    ol: ImageLayout,
) {
    assert!(plane >= tw * PANEL && m.len() >= 15 * plane + tw * PANEL);
    for tx in 0..tw {
        for c0 in (0..c_out).step_by(LANES) {
            let lanes = (c_out - c0).min(LANES);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as __mmask16;
            // SAFETY: `(ξ·tw + tx)·32 + c0 + 16 ≤ 16·tw·32` (asserted above).
            let mm = |i: usize, j: usize| unsafe {
                _mm512_loadu_ps(m.as_ptr().add((i * 4 + j) * plane + tx * PANEL + c0))
            };
            // Aᵀ M: along the rows.
            let mut r = [[_mm512_setzero_ps(); 4]; 2];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (mm(0, j), mm(1, j), mm(2, j), mm(3, j));
                r[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                r[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            // (Aᵀ M) A: along the columns.
            for (dy, x) in r.iter().enumerate() {
                let y0 = _mm512_add_ps(_mm512_add_ps(x[0], x[1]), x[2]);
                let y1 = _mm512_sub_ps(_mm512_sub_ps(x[1], x[2]), x[3]);
                let at = ol.index(b, 2 * ty + dy, 2 * tx, c0);
                // SAFETY: channels c0 .. c0 + lanes of pixels (2ty + dy, 2tx) and
                // (2ty + dy, 2tx + 1): valid writes by the contract.
                unsafe {
                    match out {
                        Output::F32(out) => {
                            _mm512_mask_storeu_ps(out.add(at), mask, y0);
                            _mm512_mask_storeu_ps(out.add(at + ol.pixel_stride), mask, y1);
                        }
                        Output::Bf16(out) => {
                            let (y0, y1) = (bf16_bits16(y0), bf16_bits16(y1));
                            _mm512_mask_cvtepi32_storeu_epi16(out.add(at).cast(), mask, y0);
                            let next = out.add(at + ol.pixel_stride).cast();
                            _mm512_mask_cvtepi32_storeu_epi16(next, mask, y1);
                        }
                    }
                }
            }
        }
    }
}
