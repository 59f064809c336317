//! The training forward of a bottleneck's 1x1 convolution 33 to 64 outputs wide
//! (DenseNet-BC's 4k = 48): BN1-ReLU of the block buffer formed a chunk of rows at a time
//! in cache, then one product per chunk on the GEMM's tiles that span all the outputs
//! ([`whole_width_tiles`]), each broadcast input serving three or four vectors.
//!
//! The direct kernel runs 48 outputs as a 32- and a 16-column panel, the narrow panel
//! re-reading the inputs for a third of the work; at 32x32 the buffer comes from memory
//! and that costs. DenseNet-BC-100's layers (batch 64) took 0.84–0.95x the direct
//! kernel's time this way (alternating calls, 2 threads, Zen 5). DenseNet-121's 128
//! outputs stay on the direct kernel, which was faster there.

use ndarray::{ArrayView2, ShapeBuilder};

use crate::kernels::elementwise::scale_shift_relu_rows;
use crate::kernels::gemm::{gemm_unpacked, whole_width_tiles, MatMut, MatRef};
use crate::layers::Conv2d;
use crate::parallel::prelude::*;
// The bottleneck backward's tasks: the same split of the rows for the same maps (for the
// forward it does not change the result, each output row being one row's product).
use crate::train::tape::task_rows;

/// Whether [`conv1x1_by_chunks`] runs `conv` (a 1x1) on this CPU.
pub(crate) fn takes(conv: &Conv2d) -> bool {
    let win = conv.window();
    (win.kernel_h, win.kernel_w, win.stride, win.padding) == (1, 1, 1, 0)
        && whole_width_tiles(conv.c_out())
}

/// Rows of a chunk with `c` inputs: its BN1-ReLU rows within ~256 KiB, 64 to 1,024.
fn chunk_rows(c: usize) -> usize {
    ((64 * 1024) / c.max(1)).clamp(64, 1024)
}

/// `out` (`rows × c_out`, contiguous) `= relu(x·scale + shift)·W` for the first
/// `conv.c_in()` columns `x` of `buf` (rows `stride` floats apart; `rows` is `out`'s),
/// `W` being `conv`'s weight as a `c_in × c_out` matrix; `scratch` holds the weight
/// unpacked and each task's chunk of BN1-ReLU rows. The caller checked [`takes`].
///
/// # Panics
///
/// If the slices do not fit the shapes (a caller bug).
pub(crate) fn conv1x1_by_chunks(
    conv: &Conv2d,
    (buf, stride): (&[f32], usize),
    (scale, shift): (&[f32], &[f32]),
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (c, c_out) = (conv.c_in(), conv.c_out());
    let rows = out.len() / c_out;
    assert!(
        stride >= c && (rows == 0 || buf.len() >= (rows - 1) * stride + c),
        "conv1x1_by_chunks: {rows} rows of {c} inputs {stride} apart do not fit the buffer"
    );
    let per_task = task_rows(rows);
    let tasks = rows.div_ceil(per_task);
    let chunk = chunk_rows(c).min(per_task);
    if scratch.len() < c * c_out + tasks * chunk * c {
        scratch.resize(c * c_out + tasks * chunk * c, 0.0);
    }
    let (weight, chunks) = scratch.split_at_mut(c * c_out);
    conv.for_each_weight_panel(|j0, panel| {
        for (i, row) in weight.chunks_exact_mut(c_out).enumerate() {
            for (j, w) in row[j0..j0 + panel.cols()].iter_mut().enumerate() {
                *w = panel.get(i, j);
            }
        }
    });
    let weight = MatRef::row_major(weight, c, c_out);
    out.par_chunks_mut((per_task * c_out).max(1))
        .zip(chunks.par_chunks_mut((chunk * c).max(1)))
        .enumerate()
        .for_each(|(t, (out, normed))| {
            for (i, out) in out.chunks_mut(chunk * c_out).enumerate() {
                let (r0, r) = (t * per_task + i * chunk, out.len() / c_out);
                let normed = &mut normed[..r * c];
                let rows = ShapeBuilder::strides((r, c), (stride, 1));
                let x = ArrayView2::from_shape(rows, &buf[r0 * stride..]).expect("checked above");
                scale_shift_relu_rows(x, scale, shift, normed);
                let a = MatRef::row_major(normed, r, c);
                gemm_unpacked(a, weight, MatMut::row_major(out, r, c_out), false);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Conv2dConfig;
    use ndarray::Array4;

    /// Against the same sums in `f64`, scalar by scalar: several tasks and chunks (and a
    /// short last one), inputs a column range of a wider buffer, and each width of the
    /// whole-width tiles (33, 48 and 64 outputs); a ReLU that clips about half.
    #[test]
    fn chunks_match_the_scalar_convolution() {
        let v = |len: usize, seed: usize| -> Vec<f32> {
            let f = |i: usize| ((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 - 0.5;
            (0..len).map(f).collect()
        };
        for (rows, c, stride, c_out) in
            [(9000, 70, 75, 48), (700, 33, 33, 33), (1500, 130, 200, 64)]
        {
            let weight = Array4::from_shape_vec((1, 1, c, c_out), v(c * c_out, 2)).unwrap();
            let conv = Conv2d::new(weight.clone(), Conv2dConfig::default()).unwrap();
            if !takes(&conv) {
                return;
            }
            let buf = v(rows * stride, 1);
            let (scale, shift) = (v(c, 3), v(c, 4));
            let mut out = vec![f32::NAN; rows * c_out];
            conv1x1_by_chunks(
                &conv,
                (&buf, stride),
                (&scale, &shift),
                &mut out,
                &mut Vec::new(),
            );
            for r in 0..rows {
                let x = &buf[r * stride..][..c];
                let normed: Vec<f64> = (0..c)
                    .map(|i| f64::from((x[i] * scale[i] + shift[i]).max(0.0)))
                    .collect();
                for j in 0..c_out {
                    let want: f64 = (0..c)
                        .map(|i| normed[i] * f64::from(weight[[0, 0, i, j]]))
                        .sum();
                    let got = out[r * c_out + j];
                    assert!(
                        (f64::from(got) - want).abs() < 1e-5,
                        "{rows}x{c}->{c_out}: ({r}, {j}) = {got}, expected {want}"
                    );
                }
            }
        }
    }
}
