//! The weight gradient of a stride-1 3x3 convolution by Winograd F(3x3, 2x2) on
//! AVX-512: 2.25x fewer multiply-adds than nine per-tap products (Lavin & Gray, 2016).
//!
//! `dW[a][b][ci][co] = Σ X[n][y + a][x + b][ci] · dY[n][y][x][co]` over the batch's
//! pixels (`X` zero-padded). For each 2x2 block `g` of `dY` (a tile) and the 4x4 block
//! `d` of `X` under it, that sum's share is the 3x3 correlation of `d` with `g`, which is
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` with F(3, 2)'s matrices: 16 products per tile and
//! channel pair instead of 36. Summed over the tiles, the 16 elementwise products become
//! 16 GEMMs, `M[ξ] = V[ξ]ᵀ · U[ξ]` (`c_in × c_out`, the tiles their inner dimension), and
//! `dW = Aᵀ M A` per channel pair.
//!
//! F(3, 2)'s `Bᵀ` is F(2, 3)'s with its last row negated, so the input transform is the
//! forward path's ([`input_transform`]) and the sign moves into `G`. The halves are
//! taken out of `G` and put into `A`:
//! `G = [[1, 0], [1, 1], [1, −1], [0, −1]]`,
//! `Aᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]]`.
//!
//! Tasks: the tiles, in (image, tile row, tile column) order, are split into runs fixed
//! by the shape (not the thread count), each of which sums its chunks of [`CHUNK`] tiles
//! into its own `M` in the caller's scratch; the runs' `M` are then added in run order,
//! so the result does not depend on the number of threads.

use core::arch::x86_64::*;

use crate::kernels::gemm::{gemm_unpacked, MatMut, MatRef};
use crate::parallel::prelude::*;

use super::winograd::{bn_relu_transform, input_transform};
use super::PARALLEL_MACS;
use super::{check_winograd, ConvShape, ImageLayout, WinogradInput};

/// Tiles transformed and multiplied at once: a chunk's `V` (`16·32·c_in` floats, 256 KiB
/// at DenseNet-121's 128 channels) and `U`, and the task's `M` (256 KiB), stay in L2.
const CHUNK: usize = 32;
/// Most tasks of a call (so most partial `M` to add): enough to spread over the threads.
const MAX_TASKS: usize = 8;
/// Fewest chunks a task takes, so that its `M` is written back after enough products.
const MIN_TASK_CHUNKS: usize = 4;
/// Lanes of a vector.
const LANES: usize = 16;

/// Whether [`run`] takes `shape`: a stride-1 3x3 whose output has an even number of rows
/// and columns (whole 2x2 tiles: DenseNet-121's 56x56, 28x28 and 14x14, DenseNet-BC's
/// 32x32, 16x16 and 8x8), a multiple of 16 input channels, and a scratch size that does
/// not overflow.
pub(super) fn fits(s: &ConvShape) -> bool {
    s.kernel_h == 3
        && s.kernel_w == 3
        && s.stride == 1
        && s.n > 0
        && s.out_h > 0
        && s.out_w > 0
        && s.out_h.is_multiple_of(2)
        && s.out_w.is_multiple_of(2)
        && s.c_in > 0
        && s.c_in.is_multiple_of(LANES)
        && s.c_out > 0
        && scratch_floats(s).is_some()
}

/// The distance between the 16 planes `V[ξ]` (or `U[ξ]`) of a chunk of `c` channels:
/// its [`CHUNK`] rows and one vector more. Without the vector a plane is a multiple of
/// 4 KiB at 128 channels, and a tile's 16 stores, one per plane, fell into one L1 set
/// (the input transform ran 1.5x slower).
const fn plane(c: usize) -> usize {
    CHUNK * c + LANES
}

/// A task's floats: its `M` (`16·c_in·c_out`), then a chunk's `V` (`16·plane(c_in)`) and
/// `U` (`16·plane(c_out)`).
fn task_floats(s: &ConvShape) -> Option<usize> {
    let m = s.c_in.checked_mul(s.c_out)?;
    let chunk = CHUNK
        .checked_mul(s.c_in.checked_add(s.c_out)?)?
        .checked_add(2 * LANES)?;
    m.checked_add(chunk)?.checked_mul(16)
}

/// The tiles of a call, and the tiles each of its tasks takes (a multiple of [`CHUNK`];
/// the last task takes what is left).
fn split(s: &ConvShape) -> Option<(usize, usize)> {
    let tiles = s.n.checked_mul(s.out_h / 2)?.checked_mul(s.out_w / 2)?;
    let chunks = tiles.div_ceil(CHUNK);
    let tasks = (chunks / MIN_TASK_CHUNKS).clamp(1, MAX_TASKS);
    Some((tiles, chunks.div_ceil(tasks).checked_mul(CHUNK)?))
}

/// Floats of the scratch [`run`] needs for `shape`: every task's [`task_floats`].
pub(super) fn scratch_floats(s: &ConvShape) -> Option<usize> {
    let (tiles, per_task) = split(s)?;
    tiles.div_ceil(per_task).checked_mul(task_floats(s)?)
}

/// `dw ← Σ x_pad ⋆ dy`, the HWIO weight gradient of a stride-1 3x3 convolution whose
/// zero-padded input `input` is at `input_layout` (`(n, out_h + 2, out_w + 2, c_in)`)
/// and whose output gradient `dy` at `dy_layout` (`(n, out_h, out_w, c_out)`), for a
/// shape that [`fits`]. `scratch` holds at least [`scratch_floats`].
///
/// # Panics
///
/// If the shape does not fit, the CPU lacks AVX-512F, the layouts reach past their
/// slices, `dw` is not `9·c_in·c_out` long or `scratch` is too short: caller bugs.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub(super) fn run(
    input: WinogradInput<'_>,
    dy: &[f32],
    dy_layout: ImageLayout,
    shape: ConvShape,
    dw: &mut [f32],
    scratch: &mut [f32],
    parallel: bool,
) {
    let s = shape;
    // What every `unsafe` block below relies on, checked here so that this function is
    // sound on its own: the input block the 3x3 windows of the `out_h × out_w` outputs
    // read lies in `input`, the output block (here `dy`, read) in `dy`, and `dw` has
    // the weight's length.
    assert!(
        fits(&s) && crate::kernels::cpu::avx512f(),
        "winograd_gradient::run: shape or CPU not supported"
    );
    // (`dy` is read, not written; its block is checked as an output's.)
    check_winograd(input, dw, &s, dy.len(), dy_layout);
    let (tiles, per_task) = split(&s).expect("`fits` bounded the split");
    let task_len = task_floats(&s).expect("`fits` bounded a task");
    let tasks = tiles.div_ceil(per_task);
    let scratch = &mut scratch[..tasks * task_len];
    let (c_in, c_out) = (s.c_in, s.c_out);
    let (th, tw) = (s.out_h / 2, s.out_w / 2);
    let m_len = 16 * c_in * c_out;
    let task = |(t, floats): (usize, &mut [f32])| {
        let (m, chunk) = floats.split_at_mut(m_len);
        let (v, u) = chunk.split_at_mut(16 * plane(c_in));
        let (first, end) = (t * per_task, tiles.min((t + 1) * per_task));
        for (i, c0) in (first..end).step_by(CHUNK).enumerate() {
            let count = CHUNK.min(end - c0);
            for j in 0..count {
                let tile = c0 + j;
                let (b, ty, tx) = (tile / (th * tw), tile / tw % th, tile % tw);
                // SAFETY: AVX-512F (asserted). Tile `(ty, tx)` of image `b < n` reads
                // input pixels `(b, 2ty .. 2ty + 4, 2tx .. 2tx + 4)` (below `out_h + 2`,
                // `out_w + 2`) and `dy` pixels `(b, 2ty .. 2ty + 2, 2tx .. 2tx + 2)`,
                // inside the blocks `check` bounded, channels below `c_in` (a multiple
                // of 16) and `c_out` (the last vector masked). It writes
                // `v[ξ·plane(c_in) + j·c_in ..][..c_in]` and
                // `u[ξ·plane(c_out) + j·c_out ..][..c_out]`, `j < CHUNK`: inside `v` and
                // `u` (`16·plane(c_in)`, `16·plane(c_out)` floats).
                unsafe {
                    match input {
                        WinogradInput::Padded { data, layout } => {
                            input_tile(data, layout, (b, ty, tx), c_in, v, j)
                        }
                        WinogradInput::BnRelu {
                            data,
                            layout,
                            scale,
                            shift,
                        } => bn_relu_input_tile(
                            (data, layout, scale, shift),
                            (s.out_h, s.out_w),
                            (b, ty, tx),
                            v,
                            j,
                        ),
                    }
                    dy_tile(dy, dy_layout, (b, ty, tx), c_out, u, j);
                }
            }
            for xi in 0..16 {
                let v_xi = MatRef::row_major(&v[xi * plane(c_in)..][..count * c_in], count, c_in);
                let u_xi =
                    MatRef::row_major(&u[xi * plane(c_out)..][..count * c_out], count, c_out);
                let m_xi =
                    MatMut::row_major(&mut m[xi * c_in * c_out..][..c_in * c_out], c_in, c_out);
                gemm_unpacked(v_xi.t(), u_xi, m_xi, i > 0);
            }
        }
    };
    let split = parallel && s.macs() >= PARALLEL_MACS && crate::parallel::current_num_threads() > 1;
    if split {
        scratch.par_chunks_mut(task_len).enumerate().for_each(task);
    } else {
        scratch.chunks_mut(task_len).enumerate().for_each(task);
    }
    // The tasks' `M` added into the first's, in task order (the same sums on any number
    // of threads), a slice of elements per job.
    let (first, rest) = scratch.split_at_mut(task_len);
    let rest = &*rest;
    let add = |(k, dst): (usize, &mut [f32])| {
        let at = k * 4096;
        for other in rest.chunks_exact(task_len) {
            for (d, &o) in dst.iter_mut().zip(&other[at..]) {
                *d += o;
            }
        }
    };
    if split {
        first[..m_len]
            .par_chunks_mut(4096)
            .enumerate()
            .for_each(add);
    } else {
        first[..m_len].chunks_mut(4096).enumerate().for_each(add);
    }
    output_transform(&first[..m_len], c_in * c_out, dw);
}

/// `dw[a][b][e] = (Aᵀ M A)[a][b]` for every channel pair `e < pairs`, `M[ξ][e]` at
/// `m[ξ·pairs + e]`: along `M`'s rows, then its columns.
fn output_transform(m: &[f32], pairs: usize, dw: &mut [f32]) {
    const AT: [[f32; 4]; 3] = [
        [1.0, 0.5, 0.5, 0.0],
        [0.0, 0.5, -0.5, 0.0],
        [0.0, 0.5, 0.5, 1.0],
    ];
    let (m, dw) = (&m[..16 * pairs], &mut dw[..9 * pairs]);
    for e0 in (0..pairs).step_by(LANES) {
        let lanes = LANES.min(pairs - e0);
        let mut t = [[[0.0f32; LANES]; 4]; 3];
        for (a, row) in AT.iter().enumerate() {
            for j in 0..4 {
                for (i, &coef) in row.iter().enumerate() {
                    let src = &m[(4 * i + j) * pairs + e0..][..lanes];
                    for (acc, &x) in t[a][j].iter_mut().zip(src) {
                        *acc += coef * x;
                    }
                }
            }
        }
        for (a, t_a) in t.iter().enumerate() {
            for (b, row) in AT.iter().enumerate() {
                let dst = &mut dw[(3 * a + b) * pairs + e0..][..lanes];
                dst.fill(0.0);
                for (&coef, t_aj) in row.iter().zip(t_a) {
                    for (d, &x) in dst.iter_mut().zip(t_aj) {
                        *d += coef * x;
                    }
                }
            }
        }
    }
}

/// `V[ξ][j] = (Bᵀ d B)[ξ]` of the 4x4 input block `d` at rows `2ty..`, columns `2tx..`
/// of image `b`, stored at `v[ξ·plane(c_in) + j·c_in ..][..c_in]`.
///
/// # Safety
///
/// The CPU has AVX-512F; input pixels `(b, 2ty .. 2ty + 4, 2tx .. 2tx + 4)`, channels
/// `0 .. c_in` (a multiple of 16) are valid reads; `j < CHUNK` and `v` holds
/// `16·plane(c_in)` floats.
#[target_feature(enable = "avx512f")]
unsafe fn input_tile(
    input: &[f32],
    il: ImageLayout,
    (b, ty, tx): (usize, usize, usize),
    c_in: usize,
    v: &mut [f32],
    j: usize,
) {
    debug_assert!(j < CHUNK && v.len() >= 16 * plane(c_in));
    let base = il.index(b, 2 * ty, 2 * tx, 0);
    let (rs, ps) = (il.row_stride, il.pixel_stride);
    for c0 in (0..c_in).step_by(LANES) {
        // SAFETY: pixel `(2ty + r, 2tx + c)`, `r, c < 4`, channels `c0 .. c0 + 16`:
        // valid reads by the contract.
        let d = |r: usize, c: usize| unsafe {
            _mm512_loadu_ps(input.as_ptr().add(base + r * rs + c * ps + c0))
        };
        // (Row by row: a flattened iterator kept the transform in a stack array and read
        // it back, 2x slower.)
        for (r, row) in input_transform(d).into_iter().enumerate() {
            for (k, value) in row.into_iter().enumerate() {
                let at = (4 * r + k) * plane(c_in) + j * c_in + c0;
                // SAFETY: `at + 16 ≤ 15·plane(c_in) + CHUNK·c_in`, inside `v`.
                unsafe { _mm512_storeu_ps(v.as_mut_ptr().add(at), value) };
            }
        }
    }
}

/// [`input_tile`] of the zero-padded `relu(x·scale + shift)` of the unpadded `h × w`
/// images of `x` ([`bn_relu_transform`]).
///
/// # Safety
///
/// The CPU has AVX-512F; image pixels `(b, 0 .. h, 0 .. w)`, channels `0 .. c_in` of
/// `x` at `xl` are valid reads, with `c_in = scale.len() = shift.len()` a multiple of
/// 16; `j < CHUNK` and `v` holds `16·plane(c_in)` floats.
#[target_feature(enable = "avx512f")]
unsafe fn bn_relu_input_tile(
    (x, xl, scale, shift): (&[f32], ImageLayout, &[f32], &[f32]),
    (h, w): (usize, usize),
    (b, ty, tx): (usize, usize, usize),
    v: &mut [f32],
    j: usize,
) {
    let c_in = scale.len();
    debug_assert!(j < CHUNK && v.len() >= 16 * plane(c_in) && shift.len() == c_in);
    for c0 in (0..c_in).step_by(LANES) {
        // SAFETY: channels `c0 .. c0 + 16 ≤ c_in` of `scale` and `shift`, and the tile's
        // image pixels: valid by the contract.
        let t = unsafe {
            let bn = (
                _mm512_loadu_ps(scale.as_ptr().add(c0)),
                _mm512_loadu_ps(shift.as_ptr().add(c0)),
            );
            bn_relu_transform(x.as_ptr(), xl, (h, w), (b, ty, tx), c0, bn)
        };
        for (r, row) in t.into_iter().enumerate() {
            for (k, value) in row.into_iter().enumerate() {
                let at = (4 * r + k) * plane(c_in) + j * c_in + c0;
                // SAFETY: `at + 16 ≤ 15·plane(c_in) + CHUNK·c_in`, inside `v`.
                unsafe { _mm512_storeu_ps(v.as_mut_ptr().add(at), value) };
            }
        }
    }
}

/// `U[ξ][j] = (G g Gᵀ)[ξ]` of the 2x2 block `g` of `dy` at rows `2ty..`, columns `2tx..`
/// of image `b`, with `G = [[1, 0], [1, 1], [1, −1], [0, −1]]`, stored at
/// `u[ξ·plane(c_out) + j·c_out ..][..c_out]`.
///
/// # Safety
///
/// The CPU has AVX-512F; `dy` pixels `(b, 2ty .. 2ty + 2, 2tx .. 2tx + 2)`, channels
/// `0 .. c_out` are valid reads; `j < CHUNK` and `u` holds `16·plane(c_out)` floats.
#[target_feature(enable = "avx512f")]
unsafe fn dy_tile(
    dy: &[f32],
    dl: ImageLayout,
    (b, ty, tx): (usize, usize, usize),
    c_out: usize,
    u: &mut [f32],
    j: usize,
) {
    debug_assert!(j < CHUNK && u.len() >= 16 * plane(c_out));
    let base = dl.index(b, 2 * ty, 2 * tx, 0);
    let (rs, ps) = (dl.row_stride, dl.pixel_stride);
    let zero = _mm512_setzero_ps();
    for c0 in (0..c_out).step_by(LANES) {
        let lanes = (c_out - c0).min(LANES);
        let mask = ((1u32 << lanes) - 1) as __mmask16;
        // SAFETY: pixel `(2ty + r, 2tx + c)`, `r, c < 2`, channels `c0 .. c0 + lanes`:
        // valid reads by the contract (lanes past `lanes` are not read).
        let g = |r: usize, c: usize| unsafe {
            _mm512_maskz_loadu_ps(mask, dy.as_ptr().add(base + r * rs + c * ps + c0))
        };
        let (g00, g01, g10, g11) = (g(0, 0), g(0, 1), g(1, 0), g(1, 1));
        // G g: along the rows.
        let rows = [
            [g00, g01],
            [_mm512_add_ps(g00, g10), _mm512_add_ps(g01, g11)],
            [_mm512_sub_ps(g00, g10), _mm512_sub_ps(g01, g11)],
            [_mm512_sub_ps(zero, g10), _mm512_sub_ps(zero, g11)],
        ];
        for (i, [x0, x1]) in rows.into_iter().enumerate() {
            // (G g) Gᵀ: along the columns.
            let values = [
                x0,
                _mm512_add_ps(x0, x1),
                _mm512_sub_ps(x0, x1),
                _mm512_sub_ps(zero, x1),
            ];
            for (k, value) in values.into_iter().enumerate() {
                let at = (4 * i + k) * plane(c_out) + j * c_out + c0;
                // SAFETY: `at + lanes ≤ 15·plane(c_out) + CHUNK·c_out`, inside `u`; lanes
                // past `lanes` are not written.
                unsafe { _mm512_mask_storeu_ps(u.as_mut_ptr().add(at), mask, value) };
            }
        }
    }
}
