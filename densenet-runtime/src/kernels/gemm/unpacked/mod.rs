//! `C ← A·B` or `C += A·B` on the calling thread, in the caller's layout: no packed
//! copies, so no allocation, and the same result on every call.
//!
//! The training step's products are long and thin: a weight gradient `Xᵀ·dY` sums over
//! every pixel of the batch (`k` up to 50,176) into a `c_in × c_out` matrix of at most a
//! few hundred rows and columns, and a 1x1 convolution's input gradient `dY·Wᵀ` has an
//! inner dimension of 48 to 128. Both operands already lie row by row along `k` with
//! unit-stride rows of `B`, so a register tile of `C` can broadcast `A`'s values and load
//! `B`'s rows straight from where they are, as the direct convolution does. The `gemm`
//! crate packs both operands into buffers it allocates on every call (what kept a
//! training step from running without allocation), which pays for square products,
//! not for these.
//!
//! [`gemm_unpacked`] is the checked entry point: `B` and `C` with unit column stride, `A`
//! with unit stride along either of its dimensions (`X` or `Xᵀ` views of an activation
//! matrix). Other layouts, and CPUs without AVX-512F or AVX2 + FMA, go to [`gemm()`],
//! which gives the same values up to rounding. The tests compare each kernel with
//! [`gemm_reference`](super::gemm_reference).

use super::{check_dims, gemm, scale_in_place, MatMut, MatRef};
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
use crate::kernels::direct_conv::{isa, Isa};

/// Bytes of `B` one column block of a pass holds: its rows stay in L1 (32 of 48 KiB on
/// Zen 5) while every tile of `A`'s rows reads them. A pass is then 256 steps of the
/// inner dimension for a 32-column block, 128 for 64 columns.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "sse2")),
    allow(dead_code)
)]
const L1_BLOCK_BYTES: usize = 32 * 1024;

/// A register-tiled microkernel of one instruction set.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "sse2")),
    allow(dead_code)
)]
trait Microkernel {
    /// For a product `n` columns wide: the columns of `C` (lanes of `B`'s rows) of a
    /// column block, and the rows of `C` (broadcast values of `A`) a tile of that
    /// block holds at most.
    fn block(n: usize) -> (usize, usize);

    /// `C[i][j] (+)= Σ_{p<k} A(i, p)·B[p][j]` for `rows` and `cols` at most
    /// [`block`](Self::block)'s,
    /// given `a = (a, a_rs, a_cs, a_unit_rows)`, `b = (b, b_rs)`, `c = (c, c_rs)`:
    /// `A(i, p)` at `a + i·a_rs + p·a_cs` (`a_rs == 1` when `a_unit_rows`), row `p` of
    /// `B` at `b + p·b_rs`, row `i` of `C` at `c + i·c_rs`, each row's columns
    /// adjacent. Starts from `C`'s contents if `accumulate`, from zero otherwise.
    ///
    /// # Safety
    ///
    /// The CPU supports the instruction set; every address above, for `i < rows`,
    /// `p < k` and `j < cols`, is valid to read (`A`, `B`) or read and write (`C`), and
    /// no other thread accesses that part of `C` during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        rows: usize,
        cols: usize,
        k: usize,
        a: (*const f32, usize, usize, bool),
        b: (*const f32, usize),
        c: (*mut f32, usize),
        accumulate: bool,
    );
}

/// `c ← a·b`, or `c ← c + a·b` with `accumulate`, on the calling thread.
///
/// Runs the register-tiled kernels when `b` and `c` have unit column stride, `a` unit
/// stride along its rows or its columns, and the CPU has AVX-512F or AVX2 with FMA
/// (and [`force_portable`](crate::kernels::direct_conv::force_portable) is off): then
/// it allocates nothing and its result does not depend on anything but its operands.
/// Otherwise it is [`gemm()`] with `beta` 0 or 1.
///
/// # Panics
///
/// If the dimensions do not agree, as [`gemm()`].
#[track_caller]
pub fn gemm_unpacked(a: MatRef<'_>, b: MatRef<'_>, mut c: MatMut<'_>, accumulate: bool) {
    check_dims(&a, &b, &c);
    let (m, n, k) = (c.rows, c.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            scale_in_place(0.0, &mut c);
        }
        return;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        let fits =
            b.col_stride == 1 && c.col_stride == 1 && (a.row_stride == 1 || a.col_stride == 1);
        match isa() {
            Some(Isa::Avx512) if fits => return run::<avx512::Avx512>(a, b, c, accumulate),
            Some(Isa::Avx2) if fits => return run::<avx2::Avx2>(a, b, c, accumulate),
            _ => {}
        }
    }
    gemm(1.0, a, b, if accumulate { 1.0 } else { 0.0 }, c);
}

/// Whether [`gemm_unpacked`] runs a product `n` columns wide on its AVX-512 tiles that
/// span the whole width, 8 rows × 48 or 6 × 64 columns (`n` from 33 to 64), each
/// broadcast of `A` serving three or four vectors: DenseNet-BC's 48-wide bottleneck,
/// which the direct convolution runs as a 32- and a 16-column panel.
#[cfg_attr(not(feature = "std"), allow(dead_code))] // training's
pub(crate) fn whole_width_tiles(n: usize) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        (33..=64).contains(&n) && isa() == Some(Isa::Avx512)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        let _ = n;
        false
    }
}

/// The blocked loops over `C`'s tiles: a pass over a stretch of the inner dimension
/// (outermost, so that a long product reads its operands once from memory: `C` stays
/// in cache and is reloaded each pass), each column block of the pass, each tile of
/// rows, the rows split as evenly as the tile height allows (32 rows: 11 + 11 + 10).
///
/// The caller checked the dimensions (nonzero) and the unit strides
/// [`gemm_unpacked`] requires, and that the CPU runs `K`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn run<K: Microkernel>(a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, accumulate: bool) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let a_unit_rows = a.row_stride == 1;
    let (a_ptr, b_ptr, c_ptr) = (a.data.as_ptr(), b.data.as_ptr(), c.data.as_mut_ptr());
    let (block_cols, tile_rows) = K::block(n);
    let kc_max = (L1_BLOCK_BYTES / (4 * block_cols)).max(1);
    let tiles = m.div_ceil(tile_rows);
    for p0 in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - p0);
        for j0 in (0..n).step_by(block_cols) {
            let cols = block_cols.min(n - j0);
            for t in 0..tiles {
                let (i0, rows) = even_split(m, t, tiles);
                // SAFETY:
                // - `isa()` reported the CPU runs `K` (the caller's contract).
                // - Every index the tile touches is `(i, p)` of `a`, `(p, j)` of `b` or
                //   `(i, j)` of `c` with `i < m`, `p < k`, `j < n`: `i0 + i`, `p0 + p`,
                //   `j0 + j` below those bounds by the loops. The views' constructors
                //   checked that each such index lies inside its slice (`check_view`),
                //   and `c`'s column stride 1 and row stride make the tile's rows the
                //   addresses `c + i·c_rs + j` the contract names (likewise `a`, `b`);
                //   the starting offsets are indices of existing elements, so `add`
                //   stays inside the slices.
                // - `c` is a unique borrow, so no other thread touches it, and it
                //   cannot alias `a` or `b` (shared borrows).
                unsafe {
                    K::tile(
                        rows,
                        cols,
                        kc,
                        (
                            a_ptr.add(i0 * a.row_stride + p0 * a.col_stride),
                            a.row_stride,
                            a.col_stride,
                            a_unit_rows,
                        ),
                        (b_ptr.add(p0 * b.row_stride + j0), b.row_stride),
                        (c_ptr.add(i0 * c.row_stride + j0), c.row_stride),
                        accumulate || p0 > 0,
                    );
                }
            }
        }
    }
}

/// Tile `t` of `count` of `m` rows split as evenly as possible: `(start, len)`.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "sse2")),
    allow(dead_code)
)]
fn even_split(m: usize, t: usize, count: usize) -> (usize, usize) {
    let (base, extra) = (m / count, m % count);
    (t * base + t.min(extra), base + usize::from(t < extra))
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod avx2;
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod avx512;

#[cfg(all(test, target_arch = "x86_64", target_feature = "sse2"))]
mod tests {
    use super::super::gemm_reference;
    use super::*;
    use crate::rng::Rng;

    fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
        (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    /// `K`'s product of an `m × k` by `k × n` matrix (padded rows, `a` stored either way
    /// round), started from a random `C` (accumulated or overwritten), against the `f64`
    /// reference, and the padding of `C` untouched.
    fn check<K: Microkernel>(m: usize, n: usize, k: usize, a_transposed: bool, accumulate: bool) {
        let mut rng = Rng::new((m * 131 + n * 17 + k) as u64);
        let (pad_a, pad_b, pad_c) = (3, 5, 2);
        let a_buf = random(
            if a_transposed {
                k * (m + pad_a)
            } else {
                m * (k + pad_a)
            },
            &mut rng,
        );
        let a = if a_transposed {
            MatRef::new(&a_buf, k, m, m + pad_a, 1).t()
        } else {
            MatRef::new(&a_buf, m, k, k + pad_a, 1)
        };
        let b_buf = random(k * (n + pad_b), &mut rng);
        let b = MatRef::new(&b_buf, k, n, n + pad_b, 1);
        let c_start = random(m * (n + pad_c), &mut rng);
        let mut ours = c_start.clone();
        run::<K>(a, b, MatMut::new(&mut ours, m, n, n + pad_c, 1), accumulate);
        let mut expected = c_start.clone();
        let beta = if accumulate { 1.0 } else { 0.0 };
        gemm_reference(
            1.0,
            a,
            b,
            beta,
            MatMut::new(&mut expected, m, n, n + pad_c, 1),
        );
        for (idx, (&x, &y)) in ours.iter().zip(&expected).enumerate() {
            let (i, j) = (idx / (n + pad_c), idx % (n + pad_c));
            if j >= n {
                assert_eq!(
                    x.to_bits(),
                    c_start[idx].to_bits(),
                    "padding ({i}, {j}) written"
                );
            } else {
                let tol = 1e-5 * (k as f32).sqrt() * 4.0;
                assert!(
                    (x - y).abs() <= tol,
                    "{m}x{n}x{k} (A transposed {a_transposed}, accumulate {accumulate}): \
                     ({i}, {j}) = {x}, reference {y}"
                );
            }
        }
    }

    /// Shapes of DenseNet's training products and their edges: row and column tails of
    /// every size and tile shape, several passes, `k` of 1.
    fn check_all<K: Microkernel>() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (12, 48, 300),
            (48, 12, 257),
            (13, 33, 5),
            (15, 33, 2 * 256 + 7),
            (7, 64, 300),
            (9, 47, 129),
            (29, 17, 64),
            (128, 96, 31),
            (5, 171, 513),
        ] {
            for a_transposed in [false, true] {
                for accumulate in [false, true] {
                    check::<K>(m, n, k, a_transposed, accumulate);
                }
            }
        }
    }

    #[test]
    fn avx512_tiles_match_the_reference() {
        if crate::kernels::cpu::avx512f() {
            check_all::<avx512::Avx512>();
        }
    }

    #[test]
    fn avx2_tiles_match_the_reference() {
        if crate::kernels::cpu::avx2_fma() {
            check_all::<avx2::Avx2>();
        }
    }

    /// The entry point: other layouts (a column-major `B`) fall back to `gemm()`, and
    /// `k == 0` zeroes or keeps `C`.
    #[test]
    fn other_layouts_and_empty_products_are_handled() {
        let mut rng = Rng::new(3);
        let (m, n, k) = (7, 9, 11);
        let a_buf = random(m * k, &mut rng);
        let b_buf = random(k * n, &mut rng);
        let a = MatRef::row_major(&a_buf, m, k);
        let b_col_major = MatRef::new(&b_buf, k, n, 1, k);
        let mut ours = vec![0.0; m * n];
        gemm_unpacked(a, b_col_major, MatMut::row_major(&mut ours, m, n), false);
        let mut expected = vec![0.0; m * n];
        gemm_reference(
            1.0,
            a,
            b_col_major,
            0.0,
            MatMut::row_major(&mut expected, m, n),
        );
        for (x, y) in ours.iter().zip(&expected) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        let empty_a = MatRef::row_major(&[], m, 0);
        let empty_b = MatRef::row_major(&[], 0, n);
        let mut c = vec![2.0; m * n];
        gemm_unpacked(empty_a, empty_b, MatMut::row_major(&mut c, m, n), true);
        assert!(c.iter().all(|&x| x == 2.0));
        gemm_unpacked(empty_a, empty_b, MatMut::row_major(&mut c, m, n), false);
        assert!(c.iter().all(|&x| x == 0.0));
    }
}
