//! Winograd F(2x2, 3x3) in bf16: the fp32 path's algorithm (`direct_conv/winograd.rs`)
//! with its 16 GEMMs on the bf16 tile (`VDPBF16PS`), for the same shapes (DenseNet's
//! 3x3 convolutions on 56x56 and 28x28 maps) and 14 wide ones.
//!
//! The fp32 model runs these convolutions as Winograd, so a bf16 model on the direct
//! kernel would do 2.25 times the products and gain little: measured on DenseNet-121's
//! 3x3s at 56x56, batch 8, the direct bf16 kernel took 0.92 of fp32 Winograd's time.
//! It also takes the 14x14 maps, a task doing two rows of 2x2 tiles so that they fill
//! the 14-row register tile.
//!
//! The arithmetic, in the order of the reference [`winograd_bf16_reference`]:
//! - the weight, bf16 as stored, is widened to f32 and transformed, `U = G g Gᵀ` (f32),
//!   then rounded to bf16 (nearest even) once per call;
//! - each 4x4 input tile (bf16 widened, or f32) is transformed, `V = Bᵀ d B` (f32: sums
//!   and differences of four values), then rounded to bf16;
//! - `M[ξ] = Σ_ci V[ξ][ci]·U[ξ][ci]` accumulates in f32 (exact bf16 products);
//! - the output, `Aᵀ M A`, in f32.
//!
//! So beside the direct bf16 kernel's roundings (inputs and weights) it rounds the
//! transformed values, whose magnitudes are up to 4 (`V`) and 9/4 (`U`) times theirs:
//! the error stays of bf16's order (`tests::bf16_winograd_is_as_close_to_fp32_as_direct`).

use core::arch::x86_64::*;

use super::super::winograd as fp32;
use super::super::{ConvShape, ImageLayout, MAX_TILE};
use super::avx512_bf16::Avx512Bf16;
use super::bf16::Bf16Weight;
use super::job::{LowpKernel, Out, Post};
use super::panels::PANEL;

/// Lanes of a vector.
const LANES: usize = 16;
/// Values of a panel row: 32 columns of channel pairs.
const ROW: usize = 2 * PANEL;

/// Whether a bf16 convolution of `shape` with no prologue or epilogue (f32 or bf16
/// output) runs here: the fp32 path's shapes (stride-1 3x3, at most 32 outputs, at least 64
/// input channels and a multiple of 16, an even output at least 14 wide).
pub(super) fn applies(shape: &ConvShape) -> bool {
    fp32::applies(shape)
}

pub(super) use super::super::winograd::Output;

/// A Winograd call's input: f32 values or bf16 bits.
#[derive(Clone, Copy, Debug)]
pub(super) enum Input {
    F32(*const f32),
    Bf16(*const u16),
}

/// The convolution of `input` at `input_layout` with `weight` into `out` (f32, or bf16
/// rounded to nearest even) at `out_layout`, for a shape that [`applies`].
///
/// # Safety
///
/// The CPU has AVX-512F/BW/VL and AVX512-BF16; `validate` accepted the geometry (the
/// input block `(n, out_h + 2, out_w + 2, c_in)` lies inside `input`, the output block
/// inside `out`, distinct outputs are distinct memory, `weight` has the shape's dims),
/// and nothing else accesses `out` during the call.
pub(super) unsafe fn run(
    input: Input,
    input_layout: ImageLayout,
    weight: &Bf16Weight,
    shape: ConvShape,
    out: Output,
    out_layout: ImageLayout,
    parallel: bool,
) {
    let s = shape;
    assert!(applies(&s), "lowp::winograd::run: shape not supported");
    let u = weight.winograd.get_or_init(|| {
        let panels = weight.panels.as_slice();
        assert!(panels.len() >= 9 * (s.c_in / 2) * ROW);
        // The widened weight `g` and its transform, f32, then that rounded. No overflow:
        // `applies` bounds `c_in` (see `fp32::tile_floats`).
        let mut g = vec![0.0; 9 * s.c_in * PANEL];
        let mut u = vec![0.0; 16 * s.c_in * PANEL];
        let mut rounded = vec![0; 16 * s.c_in * PANEL];
        // SAFETY: the CPU has the features (the caller's contract); `panels` holds the
        // 9·c_in/2 rows read (asserted), `g`, `u` and `rounded` the lengths written.
        unsafe {
            widen_weight(panels, s.c_in, &mut g);
            fp32::transform_weight(&g, s.c_in, PANEL, 0, &mut u);
            round_weight(&u, s.c_in, &mut rounded);
        }
        rounded
    });
    // Another shape's transform cannot be here: the weight's dims are the shape's
    // (`validate`), and the transform depends on nothing else.
    assert_eq!(u.len(), 16 * s.c_in * PANEL);
    let job = Job {
        input,
        input_layout,
        u: u.as_ptr(),
        shape,
        out,
        out_layout,
    };
    fp32::run_tasks(&s, parallel, |t| job.task(t));
}

/// `g[t][ci][co]`, f32, from the single panel of a bf16 weight with at most 32 outputs
/// (row `t·c_in/2 + ci/2`, column `co`, pair element `ci % 2`): a bf16 pair widened
/// as the two halves of a 32-bit lane.
///
/// # Safety
///
/// The CPU has AVX-512F; `c_in` is even, `weight` holds `9·c_in/2` rows of 64 values,
/// `g` `9·c_in·32` floats.
#[target_feature(enable = "avx512f")]
unsafe fn widen_weight(weight: &[u16], c_in: usize, g: &mut [f32]) {
    assert!(weight.len() >= 9 * (c_in / 2) * ROW && g.len() >= 9 * c_in * PANEL);
    let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    for row in 0..9 * c_in / 2 {
        let (t, pair) = (row / (c_in / 2), row % (c_in / 2));
        for c0 in (0..PANEL).step_by(LANES) {
            // SAFETY: 16 lanes of 32 bits = columns `c0 .. c0 + 16` of row `row`: inside
            // `weight` (asserted).
            let lanes =
                unsafe { _mm512_loadu_si512(weight.as_ptr().add(row * ROW + 2 * c0).cast()) };
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(lanes));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(lanes, high));
            let at = (t * c_in + 2 * pair) * PANEL + c0;
            // SAFETY: `at + PANEL + 16 ≤ 9·c_in·32` (asserted above).
            unsafe {
                _mm512_storeu_ps(g.as_mut_ptr().add(at), even);
                _mm512_storeu_ps(g.as_mut_ptr().add(at + PANEL), odd);
            }
        }
    }
}

/// `U[ξ][ci][co]` (f32) rounded to bf16 into the kernel's rows of pairs,
/// `ub[((ξ·c_in/2 + ci/2)·32 + co)·2 + ci % 2]`.
///
/// # Safety
///
/// The CPU has AVX-512F/BW and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_weight(u: &[f32], c_in: usize, ub: &mut [u16]) {
    assert!(u.len() >= 16 * c_in * PANEL && ub.len() >= 16 * c_in * PANEL);
    for row in 0..16 * c_in / 2 {
        for c0 in (0..PANEL).step_by(LANES) {
            // SAFETY: rows `2·row` and `2·row + 1` of `u` (channels `ci`, `ci + 1` of
            // one ξ), columns `c0 .. c0 + 16`: inside `u` (asserted).
            let (even, odd) = unsafe {
                let at = 2 * row * PANEL + c0;
                (
                    _mm512_loadu_ps(u.as_ptr().add(at)),
                    _mm512_loadu_ps(u.as_ptr().add(at + PANEL)),
                )
            };
            let bits = |x: __m512| _mm512_cvtepu16_epi32(rounded(x));
            let pairs = _mm512_or_si512(bits(even), _mm512_slli_epi32::<16>(bits(odd)));
            // SAFETY: values `(row·32 + c0)·2 ..` + 32 `≤ 16·c_in·32` (asserted).
            unsafe {
                _mm512_storeu_si512(ub.as_mut_ptr().add((row * PANEL + c0) * 2).cast(), pairs)
            };
        }
    }
}

/// 16 f32 lanes rounded to bf16 (`VCVTNEPS2BF16`: nearest even), as bits.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
fn rounded(x: __m512) -> __m256i {
    // SAFETY: `__m256bh` and `__m256i` are both 256 bits of plain data.
    unsafe { core::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x)) }
}

/// A call's pointers (tasks write disjoint output rows: see [`Job::task`]).
struct Job {
    input: Input,
    input_layout: ImageLayout,
    /// The rounded transformed weight, `16·c_in·32` values.
    u: *const u16,
    shape: ConvShape,
    out: Output,
    out_layout: ImageLayout,
}

// SAFETY: the pointers come from borrows that `run`'s caller holds while every task
// runs; inputs and the weight are only read, and tasks write disjoint output elements
// (the two output rows of their own tile row; distinct by `validate`).
unsafe impl Sync for Job {}

impl Job {
    /// Task `t`: its tile rows (`fp32::task_rows`) of an image, side by side in `V` (`[ξ][r·tw + tx][ci]`, bf16) and `M` (`[ξ][r·tw +
    /// tx][co]`, f32): their input transforms, 16 GEMMs over all their tiles, the
    /// output transforms into their output rows.
    fn task(&self, t: usize) {
        let s = self.shape;
        let tw = s.out_w / 2;
        let (b, task_rows) = fp32::task_rows(&s, t);
        let (first, rows) = (task_rows.start, task_rows.len());
        let tiles = rows * tw;
        // `V`'s bf16 values in f32 words, then `M`. No overflow: `applies` bounds
        // `16·tiles·(c_in + 32)` (`fp32::tile_floats`).
        let (v_words, m_len) = (8 * tiles * s.c_in, 16 * tiles * PANEL);
        fp32::with_tiles(v_words + m_len, |scratch| {
            let (v, m) = scratch.split_at_mut(v_words);
            let v = v.as_mut_ptr().cast::<u16>();
            for r in 0..rows {
                // SAFETY: AVX-512F/BW/VL and AVX512-BF16 by `run`'s contract, with the
                // input block `validate` checked: tile row `first + r` reads input rows
                // `.. 2(first + r) + 4 ≤ out_h + 2`, columns `.. 2·tw + 2 = out_w + 2`,
                // channels `< c_in` (a multiple of 16). It writes `V[ξ][r·tw + tx]` at
                // `ξ·tiles·c_in + (r·tw + tx)·c_in`, inside the `16·tiles·c_in` u16 of
                // `v` (the f32 words, u16-aligned).
                unsafe {
                    let dims = (b, first + r, tw, s.c_in);
                    let at = v.add(r * tw * s.c_in);
                    input_tiles(self.input, self.input_layout, dims, tiles * s.c_in, at);
                }
            }
            let offsets: [usize; MAX_TILE] = core::array::from_fn(|i| i * PANEL);
            let post = Post {
                weight_scale: core::ptr::null(),
                act_scale: 1.0,
                scale: core::ptr::null(),
                shift: core::ptr::null(),
                out_inv_scale: 1.0,
            };
            let groups = s.c_in / 2;
            for xi in 0..16 {
                for t0 in (0..tiles).step_by(Avx512Bf16::TILE) {
                    let n = Avx512Bf16::TILE.min(tiles - t0);
                    // SAFETY: the features as above; `1 ≤ n ≤ 14`, `1 ≤ c_out ≤ 32`.
                    // Pixel `i < n` reads the pairs of `V[xi][t0 + i]`, inside `v`;
                    // row `g < c_in/2` of the weight reads `U`'s 64 values at
                    // `(xi·c_in/2 + g)·64`, inside the `16·c_in·32` that `run` holds
                    // and nobody writes during the call; the sums go to
                    // `m[(xi·tiles + t0 + i)·32 + co]`, inside `m`, this task's own.
                    unsafe {
                        Avx512Bf16::tile(
                            n,
                            s.c_out,
                            v.add((xi * tiles + t0) * s.c_in),
                            s.c_in,
                            &[0],
                            groups,
                            self.u.add(xi * groups * ROW),
                            ROW,
                            &post,
                            Out::F32(m.as_mut_ptr().add((xi * tiles + t0) * PANEL)),
                            &offsets,
                        );
                    }
                }
            }
            for r in 0..rows {
                // SAFETY: AVX-512F; tile row `first + r`'s `M[ξ][tx]` is at
                // `m[ξ·tiles·32 + (r·tw + tx)·32 ..]`, inside `m`; its tile `tx` writes
                // output pixels `(b, 2(first + r) + dy, 2tx + dx)`, channels `< c_out`:
                // inside the output block `validate` bounded, and only this task
                // writes those rows of image `b`.
                unsafe {
                    let dims = (b, first + r, tw, s.c_out);
                    let m = &m[r * tw * PANEL..];
                    fp32::output_tiles(m, tiles * PANEL, dims, self.out, self.out_layout)
                };
            }
        });
    }
}

/// `V[ξ][tx][ci]` of tile row `ty` of image `b`, as [`fp32::input_transform`] computes
/// it from the f32 (or widened bf16) inputs, rounded to bf16, at `v[ξ·plane + tx·c_in +
/// ci]` (`plane ≥ tw·c_in`).
///
/// # Safety
///
/// The CPU has AVX-512F/BW/VL and AVX512-BF16; input pixels `(b, 2ty .. 2ty + 4,
/// 0 .. 2·tw + 2)`, channels `0 .. c_in` (a multiple of 16) are valid reads; `v` holds
/// `15·plane + tw·c_in` writable values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn input_tiles(
    input: Input,
    il: ImageLayout,
    dims: (usize, usize, usize, usize),
    plane: usize,
    v: *mut u16,
) {
    // SAFETY (both loads): the caller's contract covers every offset `transform_tiles`
    // loads at, 16 values each.
    match input {
        Input::F32(x) => unsafe {
            transform_tiles(|at| _mm512_loadu_ps(x.add(at)), il, dims, plane, v)
        },
        Input::Bf16(x) => unsafe {
            transform_tiles(
                |at| {
                    let bits = _mm256_loadu_si256(x.add(at).cast());
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
                },
                il,
                dims,
                plane,
                v,
            )
        },
    }
}

/// [`input_tiles`] with `load(offset)` the 16 f32 input values at element `offset`.
///
/// # Safety
///
/// As [`input_tiles`], for the offsets of those pixels' 16-channel groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn transform_tiles(
    load: impl Fn(usize) -> __m512,
    il: ImageLayout,
    (b, ty, tw, c_in): (usize, usize, usize, usize),
    plane: usize,
    v: *mut u16,
) {
    let (rs, ps) = (il.row_stride, il.pixel_stride);
    for tx in 0..tw {
        let base = il.index(b, 2 * ty, 2 * tx, 0);
        for c0 in (0..c_in).step_by(LANES) {
            let d = |r: usize, c: usize| load(base + r * rs + c * ps + c0);
            for (r, row) in fp32::input_transform(d).into_iter().enumerate() {
                for (j, value) in row.into_iter().enumerate() {
                    let at = (r * 4 + j) * plane + tx * c_in + c0;
                    // SAFETY: `at + 16 ≤ 16·tw·c_in`: writable by the contract.
                    unsafe { _mm256_storeu_si256(v.add(at).cast(), rounded(value)) };
                }
            }
        }
    }
}

/// The plain-loop reference of the bf16 Winograd path: the same transforms in the same
/// f32 operations and roundings, the products summed in f64, the output transform in
/// f32. `input` holds f32 values (already bf16 or not: the transform rounds only its
/// result), `out` receives `(n, out_h, out_w, c_out)` at `out_layout`, and `magnitude`
/// at the same places `Σ_ξ Σ_ci |V·U|` over the 9 products each output sums: what
/// bounds the kernel's f32 summation error.
#[cfg(test)]
pub(super) fn winograd_bf16_reference(
    input: &[f32],
    il: ImageLayout,
    weight: &Bf16Weight,
    s: ConvShape,
    out: &mut [f32],
    magnitude: &mut [f32],
    ol: ImageLayout,
) {
    let round = |x: f32| super::bf16_round(x).to_f32();
    let g = |t: usize, ci: usize, co: usize| {
        half::bf16::from_bits(weight.panels.get(t, ci, co)).to_f32()
    };
    // G g Gᵀ, as `fp32::transform_weight` orders it: along ky (columns of taps), then kx.
    let mid = |g0: f32, g1: f32, g2: f32| {
        let outer = g0 + g2;
        (0.5 * (outer + g1), 0.5 * (outer - g1))
    };
    let mut u = vec![0.0f32; 16 * s.c_in * s.c_out];
    for ci in 0..s.c_in {
        for co in 0..s.c_out {
            let columns: [[f32; 4]; 3] = core::array::from_fn(|kx| {
                let (g0, g1, g2) = (g(kx, ci, co), g(3 + kx, ci, co), g(6 + kx, ci, co));
                let (m1, m2) = mid(g0, g1, g2);
                [g0, m1, m2, g2]
            });
            for i in 0..4 {
                let r = [columns[0][i], columns[1][i], columns[2][i]];
                let (m1, m2) = mid(r[0], r[1], r[2]);
                for (j, value) in [r[0], m1, m2, r[2]].into_iter().enumerate() {
                    u[((i * 4 + j) * s.c_in + ci) * s.c_out + co] = round(value);
                }
            }
        }
    }
    let (th, tw) = (s.out_h / 2, s.out_w / 2);
    let mut v = vec![0.0f32; 16 * s.c_in];
    for b in 0..s.n {
        for ty in 0..th {
            for tx in 0..tw {
                for ci in 0..s.c_in {
                    let d = |r: usize, c: usize| input[il.index(b, 2 * ty + r, 2 * tx + c, ci)];
                    let t: [[f32; 4]; 4] = core::array::from_fn(|row| {
                        core::array::from_fn(|c| {
                            let (d0, d1, d2, d3) = (d(0, c), d(1, c), d(2, c), d(3, c));
                            [d0 - d2, d1 + d2, d2 - d1, d1 - d3][row]
                        })
                    });
                    for (r, x) in t.iter().enumerate() {
                        let row = [x[0] - x[2], x[1] + x[2], x[2] - x[1], x[1] - x[3]];
                        for (j, value) in row.into_iter().enumerate() {
                            v[(r * 4 + j) * s.c_in + ci] = round(value);
                        }
                    }
                }
                for co in 0..s.c_out {
                    let product = |xi: usize, ci: usize| {
                        f64::from(v[xi * s.c_in + ci])
                            * f64::from(u[(xi * s.c_in + ci) * s.c_out + co])
                    };
                    let m: [f32; 16] = core::array::from_fn(|xi| {
                        (0..s.c_in).map(|ci| product(xi, ci)).sum::<f64>() as f32
                    });
                    let size: [f64; 16] = core::array::from_fn(|xi| {
                        (0..s.c_in).map(|ci| product(xi, ci).abs()).sum()
                    });
                    let mm = |i: usize, j: usize| m[i * 4 + j];
                    let r: [[f32; 4]; 2] = [
                        core::array::from_fn(|j| mm(0, j) + mm(1, j) + mm(2, j)),
                        core::array::from_fn(|j| mm(1, j) - mm(2, j) - mm(3, j)),
                    ];
                    for (dy, x) in r.iter().enumerate() {
                        let y = [x[0] + x[1] + x[2], x[1] - x[2] - x[3]];
                        for (dx, value) in y.into_iter().enumerate() {
                            let at = ol.index(b, 2 * ty + dy, 2 * tx + dx, co);
                            out[at] = value;
                            // Aᵀ's row `dy` takes rows `dy .. dy + 3` of M (columns alike).
                            magnitude[at] = (dy..dy + 3)
                                .flat_map(|i| (dx..dx + 3).map(move |j| (i, j)))
                                .map(|(i, j)| size[i * 4 + j])
                                .sum::<f64>() as f32;
                        }
                    }
                }
            }
        }
    }
}
