//! General matrix multiply over `f32`: `C ← αAB + βC`.
//!
//! Matrices are slices with explicit row and column strides ([`MatRef`], [`MatMut`]),
//! so a transposed weight, or a column range of a dense block's concatenation buffer,
//! is a view, not a copy. [`gemm()`] is the checked public wrapper around the `gemm`
//! crate (with `std`; without it, on bare metal where the crate's SIMD layer does not
//! build, a plain cache-friendly loop); [`gemm_reference`] is a plain triple loop in
//! `f64` that the tests use as the oracle. [`gemm_unpacked`] (`unpacked/`) is the
//! training step's product: register tiles reading the operands in place, no
//! allocation.

use core::fmt;

#[cfg(feature = "std")]
use gemm::Parallelism;

/// Products with at least this many multiply-adds (`m·n·k`) let the `gemm` crate use
/// rayon's threads; smaller ones run on the calling thread.
///
/// On the 2-core reference machine two threads are slower than one for DenseNet's
/// 7x7 and 14x14 shapes (`shared/reference/gemm-notes.md`; the largest 14x14 GEMM of
/// DenseNet-121 is 196 × 992 × 128 ≈ 25 M multiply-adds), while the 56x56 layers
/// (≥ 100 M) and the stem gain. 2²⁵ ≈ 33.5 M sits between; a tuning guess, not a
/// measured optimum.
#[cfg_attr(not(feature = "parallel"), allow(dead_code))]
const PARALLEL_THRESHOLD: usize = 1 << 25;

/// A read-only strided view of an `f32` matrix: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// A mutable strided view of an `f32` matrix: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`, and no two elements share memory.
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// Shape and strides only: the data may be a whole activation buffer.
impl fmt::Debug for MatRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatRef")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("row_stride", &self.row_stride)
            .field("col_stride", &self.col_stride)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// Shape and strides only: the data may be a whole activation buffer.
impl fmt::Debug for MatMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatMut")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("row_stride", &self.row_stride)
            .field("col_stride", &self.col_stride)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl<'a> MatRef<'a> {
    /// A `rows × cols` view of `data` with the given strides.
    ///
    /// # Panics
    ///
    /// If the largest index, `(rows-1)·row_stride + (cols-1)·col_stride`, is out of
    /// bounds of `data` (when the matrix is not empty), or a stride exceeds `isize::MAX`.
    #[track_caller]
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        check_view(data.len(), rows, cols, row_stride, col_stride);
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A contiguous row-major `rows × cols` view (row stride `cols`, column stride 1).
    ///
    /// # Panics
    ///
    /// If `data` is shorter than `rows · cols`.
    #[track_caller]
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transposed view: dimensions and strides swapped, no data moved.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance in elements between `(i, j)` and `(i + 1, j)`.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// Distance in elements between `(i, j)` and `(i, j + 1)`.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }

    /// Element `(i, j)`.
    ///
    /// # Panics
    ///
    /// If `i >= rows` or `j >= cols`.
    #[track_caller]
    pub fn get(&self, i: usize, j: usize) -> f32 {
        if i >= self.rows || j >= self.cols {
            index_out_of_bounds(i, j, self.rows, self.cols);
        }
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

impl<'a> MatMut<'a> {
    /// A `rows × cols` mutable view of `data` with the given strides.
    ///
    /// # Panics
    ///
    /// If the largest index is out of bounds of `data` (when the matrix is not empty), a
    /// stride exceeds `isize::MAX`, or the strides would make two elements share memory
    /// (e.g. a zero stride along a dimension longer than 1).
    #[track_caller]
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        check_view(data.len(), rows, cols, row_stride, col_stride);
        check_no_overlap(rows, cols, row_stride, col_stride);
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A contiguous row-major `rows × cols` mutable view.
    ///
    /// # Panics
    ///
    /// If `data` is shorter than `rows · cols`.
    #[track_caller]
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The whole backing slice: element `(i, j)` is at `i·row_stride + j·col_stride`.
    /// For kernels that address the matrix themselves (e.g. as an image layout).
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.data
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance in elements between `(i, j)` and `(i + 1, j)`.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// Distance in elements between `(i, j)` and `(i, j + 1)`.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }

    /// A read-only view of the same matrix, borrowing `self`.
    pub fn rb(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// A mutable view of the same matrix, reborrowing `self` (so `self` can be used
    /// again once the returned view is dropped).
    pub fn rb_mut(&mut self) -> MatMut<'_> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// The `len` columns starting at column `start`, as a mutable view borrowing `self`.
    ///
    /// # Panics
    ///
    /// If `start + len > cols`.
    #[track_caller]
    pub fn subcols_mut(&mut self, start: usize, len: usize) -> MatMut<'_> {
        if start.checked_add(len).is_none_or(|end| end > self.cols) {
            subcols_out_of_bounds(start, len, self.cols);
        }
        // Columns [start, start + len) start at element start·col_stride.
        let data = if len == 0 || self.rows == 0 {
            &mut []
        } else {
            &mut self.data[start * self.col_stride..]
        };
        MatMut {
            data,
            rows: self.rows,
            cols: len,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// The `len` rows starting at row `start`, as a mutable view borrowing `self`.
    ///
    /// # Panics
    ///
    /// If `start + len > rows`.
    #[track_caller]
    pub fn subrows_mut(&mut self, start: usize, len: usize) -> MatMut<'_> {
        if start.checked_add(len).is_none_or(|end| end > self.rows) {
            subrows_out_of_bounds(start, len, self.rows);
        }
        // Rows [start, start + len) start at element start·row_stride; an empty
        // selection (or an empty matrix) needs no data at all.
        let data = if len == 0 || self.cols == 0 {
            &mut []
        } else {
            &mut self.data[start * self.row_stride..]
        };
        MatMut {
            data,
            rows: len,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// Element `(i, j)`.
    ///
    /// # Panics
    ///
    /// If `i >= rows` or `j >= cols`.
    #[track_caller]
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.rb().get(i, j)
    }

    /// Mutable reference to element `(i, j)`.
    ///
    /// # Panics
    ///
    /// If `i >= rows` or `j >= cols`.
    #[track_caller]
    pub fn get_mut(&mut self, i: usize, j: usize) -> &mut f32 {
        if i >= self.rows || j >= self.cols {
            index_out_of_bounds(i, j, self.rows, self.cols);
        }
        &mut self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// Checks that every index of a `rows × cols` view lies inside `len` elements and that
/// the strides are representable as `isize` (what the `gemm` crate takes).
#[track_caller]
fn check_view(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) {
    if row_stride > isize::MAX as usize || col_stride > isize::MAX as usize {
        view_out_of_bounds(len, rows, cols, row_stride, col_stride);
    }
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1)
        .checked_mul(row_stride)
        .zip((cols - 1).checked_mul(col_stride))
        .and_then(|(a, b)| a.checked_add(b));
    match last {
        Some(last) if last < len => {}
        _ => view_out_of_bounds(len, rows, cols, row_stride, col_stride),
    }
}

/// Checks that no two elements of a mutable view share memory: along the dimensions
/// longer than one, the larger stride must step over the whole extent of the smaller.
/// (Sufficient, and exact for the layouts that occur: row- or column-major with padding.)
#[track_caller]
fn check_no_overlap(rows: usize, cols: usize, row_stride: usize, col_stride: usize) {
    let ok = rows == 0
        || cols == 0
        || match (rows > 1, cols > 1) {
            (false, false) => true,
            (true, false) => row_stride >= 1,
            (false, true) => col_stride >= 1,
            (true, true) => {
                let (small_stride, small_dim, large_stride) = if row_stride <= col_stride {
                    (row_stride, rows, col_stride)
                } else {
                    (col_stride, cols, row_stride)
                };
                // check_view bounded (dim-1)·stride by the slice length, so this
                // cannot overflow; checked anyway, so no reasoning is needed.
                small_stride >= 1
                    && small_stride
                        .checked_mul(small_dim)
                        .is_some_and(|extent| large_stride >= extent)
            }
        };
    if !ok {
        overlapping_view(rows, cols, row_stride, col_stride);
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn view_out_of_bounds(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) {
    panic!(
        "matrix view out of bounds: {rows}x{cols} with strides ({row_stride}, {col_stride}) \
         does not fit in a slice of {len} elements"
    );
}

#[cold]
#[inline(never)]
#[track_caller]
fn overlapping_view(rows: usize, cols: usize, row_stride: usize, col_stride: usize) {
    panic!(
        "mutable matrix view {rows}x{cols} with strides ({row_stride}, {col_stride}) \
         would alias elements"
    );
}

#[cold]
#[inline(never)]
#[track_caller]
fn index_out_of_bounds(i: usize, j: usize, rows: usize, cols: usize) -> ! {
    panic!("matrix index ({i}, {j}) out of bounds for a {rows}x{cols} matrix");
}

#[cold]
#[inline(never)]
#[track_caller]
fn subrows_out_of_bounds(start: usize, len: usize, rows: usize) -> ! {
    panic!("rows {start}..{start}+{len} out of bounds for a matrix of {rows} rows");
}

#[cold]
#[inline(never)]
#[track_caller]
fn subcols_out_of_bounds(start: usize, len: usize, cols: usize) -> ! {
    panic!("columns {start}..{start}+{len} out of bounds for a matrix of {cols} columns");
}

#[cold]
#[inline(never)]
#[track_caller]
fn dimension_mismatch(a: (usize, usize), b: (usize, usize), c: (usize, usize)) -> ! {
    panic!(
        "gemm dimension mismatch: a is {}x{}, b is {}x{}, c is {}x{} \
         (need a.rows == c.rows, a.cols == b.rows, b.cols == c.cols)",
        a.0, a.1, b.0, b.1, c.0, c.1
    );
}

#[track_caller]
fn check_dims(a: &MatRef<'_>, b: &MatRef<'_>, c: &MatMut<'_>) {
    if a.rows != c.rows || a.cols != b.rows || b.cols != c.cols {
        dimension_mismatch((a.rows, a.cols), (b.rows, b.cols), (c.rows, c.cols));
    }
}

/// `c ← beta·c`, where `beta == 0` writes zeros without reading `c`.
fn scale_in_place(beta: f32, c: &mut MatMut<'_>) {
    if c.col_stride == 1 {
        // Row-major (possibly a column range of a wider matrix): whole row slices.
        for i in 0..c.rows {
            let start = i * c.row_stride;
            let row = &mut c.data[start..start + c.cols];
            if beta == 0.0 {
                row.fill(0.0);
            } else if beta != 1.0 {
                row.iter_mut().for_each(|x| *x *= beta);
            }
        }
    } else {
        for i in 0..c.rows {
            for j in 0..c.cols {
                let x = c.get_mut(i, j);
                *x = if beta == 0.0 { 0.0 } else { beta * *x };
            }
        }
    }
}

/// `c ← alpha·a·b + beta·c`.
///
/// `beta == 0` means `c`'s old contents are ignored (never read, so even NaN in `c`
/// does not propagate); `alpha == 0` or an empty inner dimension (`k == 0`) means
/// `c ← beta·c` without reading `a` or `b`. Products of at least
/// 2²⁵ multiply-adds use rayon's thread pool, smaller ones the calling thread.
///
/// # Panics
///
/// If the dimensions do not agree: `a.rows() != c.rows()`, `a.cols() != b.rows()` or
/// `b.cols() != c.cols()` (a caller bug).
#[track_caller]
pub fn gemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) {
    #[cfg(feature = "std")]
    return gemm_with(product_crate, alpha, a, b, beta, c);
    #[cfg(not(feature = "std"))]
    gemm_with(product_portable, alpha, a, b, beta, c)
}

/// A product of nonempty matrices: `c ← alpha·a·b + beta·c`, `alpha != 0`.
type Product = fn(f32, MatRef<'_>, MatRef<'_>, f32, MatMut<'_>);

/// [`gemm()`]'s checks and empty cases, then `product`.
#[track_caller]
fn gemm_with(
    product: Product,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    mut c: MatMut<'_>,
) {
    check_dims(&a, &b, &c);
    let (m, n, k) = (c.rows, c.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        scale_in_place(beta, &mut c);
        return;
    }
    product(alpha, a, b, beta, c);
}

/// The `gemm` crate's product (threads from [`PARALLEL_THRESHOLD`] multiply-adds).
#[cfg(feature = "std")]
#[track_caller]
fn product_crate(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) {
    // Checked again so that this function is sound on its own (a few comparisons).
    check_dims(&a, &b, &c);
    let (m, n, k) = (c.rows, c.cols, a.cols);
    if m == 0 || n == 0 || k == 0 {
        return gemm_with(product_portable, alpha, a, b, beta, c);
    }
    let parallelism = match m.saturating_mul(n).saturating_mul(k) {
        #[cfg(feature = "parallel")]
        flops if flops >= PARALLEL_THRESHOLD && crate::parallel::current_num_threads() > 1 => {
            Parallelism::Rayon(0)
        }
        _ => Parallelism::None,
    };
    // SAFETY:
    // - `check_view` (run when each view was built, and never weakened since: views are
    //   only created by `new`, `t`, `rb`, `rb_mut`, `subrows_mut` and `subcols_mut`,
    //   which keep the bound) guarantees that every index `i·row_stride + j·col_stride` with `i < rows`,
    //   `j < cols` lies inside the view's slice, and that the strides fit in `isize`; the
    //   `gemm` crate only touches those elements of `dst`, `lhs` and `rhs`.
    // - `check_dims` above guarantees the `m × k`, `k × n` and `m × n` shapes agree, and
    //   m, n, k are all nonzero (checked above).
    // - `c.data` is a unique `&mut` borrow, so it cannot alias `a.data` or `b.data`
    //   (shared borrows), and `check_no_overlap` guarantees distinct (i, j) of `c` are
    //   distinct memory, so the threads the crate may spawn never write the same element.
    // - The crate computes `dst ← alpha_crate·dst + beta_crate·lhs·rhs` (its own doc
    //   comment; BLAS names swapped), reading `dst` only if `read_dst`: hence our `beta`
    //   goes in its `alpha` slot and our `alpha` in its `beta` slot, and `read_dst` is
    //   false when `beta == 0` so stale NaNs in `c` are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            c.col_stride as isize,
            c.row_stride as isize,
            beta != 0.0,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The product without the `gemm` crate (builds without `std`): `c ← beta·c`, then each
/// row of `c` gains `alpha·a[i][p]` times row `p` of `b`, so the inner loop runs along
/// rows of `b` and `c`. Safe code; tested against [`gemm_reference`] like the crate's.
#[cfg_attr(all(feature = "std", not(test)), allow(dead_code))]
fn product_portable(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, mut c: MatMut<'_>) {
    scale_in_place(beta, &mut c);
    for i in 0..c.rows {
        for p in 0..a.cols {
            let x = alpha * a.get(i, p);
            for j in 0..c.cols {
                *c.get_mut(i, j) += x * b.get(p, j);
            }
        }
    }
}

/// `c ← alpha·a·b + beta·c` by a plain triple loop accumulating in `f64`: the safe
/// oracle that [`gemm()`] is tested against. Same semantics and panics as [`gemm()`]
/// (`beta == 0` ignores `c`, `alpha == 0` or `k == 0` does not read `a` or `b`), but slow.
#[track_caller]
pub fn gemm_reference(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, mut c: MatMut<'_>) {
    check_dims(&a, &b, &c);
    let k = a.cols;
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut acc = 0.0f64;
            if alpha != 0.0 {
                for p in 0..k {
                    acc += f64::from(a.get(i, p)) * f64::from(b.get(p, j));
                }
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                f64::from(beta) * f64::from(c.get(i, j))
            };
            *c.get_mut(i, j) = (f64::from(alpha) * acc + old) as f32;
        }
    }
}

mod unpacked;

// Training's product (training needs `std`); public to the workspace's benchmarks.
#[cfg_attr(not(feature = "std"), allow(unused_imports))]
pub use unpacked::gemm_unpacked;
#[cfg(feature = "std")] // training's
pub(crate) use unpacked::whole_width_tiles;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// How a test matrix is laid out in its buffer.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        /// Row-major, each row padded by `pad` elements, starting at `offset`.
        RowMajor { pad: usize, offset: usize },
        /// Column-major, each column padded.
        ColMajor { pad: usize, offset: usize },
        /// The transpose of a row-major `cols × rows` matrix (what `MatRef::t` gives).
        Transposed { pad: usize },
    }

    impl Layout {
        fn random(rng: &mut Rng) -> Self {
            let pad = (rng.next_u64() % 4) as usize;
            let offset = (rng.next_u64() % 3) as usize;
            match rng.next_u64() % 3 {
                0 => Layout::RowMajor { pad, offset },
                1 => Layout::ColMajor { pad, offset },
                _ => Layout::Transposed { pad },
            }
        }

        /// (buffer length, offset, row stride, col stride)
        fn geometry(self, rows: usize, cols: usize) -> (usize, usize, usize, usize) {
            match self {
                Layout::RowMajor { pad, offset } => {
                    (offset + rows * (cols + pad), offset, cols + pad, 1)
                }
                Layout::ColMajor { pad, offset } => {
                    (offset + cols * (rows + pad), offset, 1, rows + pad)
                }
                Layout::Transposed { pad } => (cols * (rows + pad), 0, 1, rows + pad),
            }
        }
    }

    fn random_buffer(len: usize, rng: &mut Rng) -> Vec<f32> {
        (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    fn view<'a>(buf: &'a [f32], layout: Layout, rows: usize, cols: usize) -> MatRef<'a> {
        let (_, offset, rs, cs) = layout.geometry(rows, cols);
        match layout {
            Layout::Transposed { pad } => {
                MatRef::new(&buf[offset..], cols, rows, rows + pad, 1).t()
            }
            _ => MatRef::new(&buf[offset..], rows, cols, rs, cs),
        }
    }

    /// Runs `gemm` (and the portable product of `no_std` builds) and `gemm_reference` on
    /// copies of the same `c` and compares every element of the buffer, including those
    /// outside the view (which must not change).
    #[allow(clippy::too_many_arguments)]
    fn check_case(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        beta: f32,
        layouts: [Layout; 3],
        rng: &mut Rng,
    ) {
        let (a_len, ..) = layouts[0].geometry(m, k);
        let (b_len, ..) = layouts[1].geometry(k, n);
        let a_buf = random_buffer(a_len, rng);
        let b_buf = random_buffer(b_len, rng);
        let a = view(&a_buf, layouts[0], m, k);
        let b = view(&b_buf, layouts[1], k, n);

        let c_layout = match layouts[2] {
            Layout::Transposed { pad } => Layout::ColMajor { pad, offset: 0 },
            l => l,
        };
        let (c_len, c_off, c_rs, c_cs) = c_layout.geometry(m, n);
        let c_init = random_buffer(c_len, rng);
        let mut c_fast = c_init.clone();
        let mut c_portable = c_init.clone();
        let mut c_ref = c_init.clone();
        gemm(
            alpha,
            a,
            b,
            beta,
            MatMut::new(&mut c_fast[c_off..], m, n, c_rs, c_cs),
        );
        gemm_with(
            product_portable,
            alpha,
            a,
            b,
            beta,
            MatMut::new(&mut c_portable[c_off..], m, n, c_rs, c_cs),
        );
        gemm_reference(
            alpha,
            a,
            b,
            beta,
            MatMut::new(&mut c_ref[c_off..], m, n, c_rs, c_cs),
        );
        // Error bound of an f32 dot product of length k: ~k·eps·Σ|a||b|; inputs are in
        // [-1, 1], so Σ|a||b| <= k.
        let scale = (alpha.abs() * k as f32 + beta.abs()).max(1.0);
        let tol = 1e-6 * (k as f32 + 2.0) * scale;
        for (idx, ((x, p), y)) in c_fast.iter().zip(&c_portable).zip(&c_ref).enumerate() {
            assert!(
                (x - y).abs() <= tol && (p - y).abs() <= tol,
                "m={m} n={n} k={k} alpha={alpha} beta={beta} layouts={layouts:?}: \
                 element {idx}: gemm {x}, portable {p} vs reference {y} (tol {tol})"
            );
        }
    }

    #[test]
    fn gemm_matches_reference_on_random_shapes_and_strides() {
        let mut rng = Rng::new(2024);
        let alphas_betas = [
            (1.0, 0.0),
            (1.0, 1.0),
            (0.5, -2.0),
            (-1.25, 0.75),
            (0.0, 0.5),
        ];
        for case in 0..300 {
            let dim = |rng: &mut Rng| -> usize {
                if rng.next_u64().is_multiple_of(8) {
                    (rng.next_u64() % 3) as usize // 0, 1, 2: edge cases
                } else {
                    1 + (rng.next_u64() % 40) as usize
                }
            };
            let (m, n, k) = (dim(&mut rng), dim(&mut rng), dim(&mut rng));
            let (alpha, beta) = alphas_betas[case % alphas_betas.len()];
            let layouts = [
                Layout::random(&mut rng),
                Layout::random(&mut rng),
                Layout::random(&mut rng),
            ];
            check_case(m, n, k, alpha, beta, layouts, &mut rng);
        }
    }

    #[test]
    fn gemm_matches_reference_on_large_shapes() {
        let mut rng = Rng::new(99);
        let row = Layout::RowMajor { pad: 0, offset: 0 };
        // DenseNet-like: pixels x (9·c) times (9·c) x 32, into a column range.
        check_case(
            196,
            32,
            288,
            1.0,
            0.0,
            [
                row,
                row,
                Layout::RowMajor {
                    pad: 64,
                    offset: 16,
                },
            ],
            &mut rng,
        );
        // Classifier: 1 x 1024 times the transposed (out, in) weight.
        check_case(
            2,
            100,
            1024,
            1.0,
            1.0,
            [row, Layout::Transposed { pad: 0 }, row],
            &mut rng,
        );
        // Above PARALLEL_THRESHOLD, so the rayon path runs.
        const { assert!(600 * 256 * 256 >= PARALLEL_THRESHOLD) };
        check_case(
            600,
            256,
            256,
            0.5,
            0.25,
            [row, Layout::ColMajor { pad: 1, offset: 0 }, row],
            &mut rng,
        );
    }

    #[test]
    fn gemm_writes_only_its_column_range() {
        // c is columns 3..7 of a 5 x 10 row-major matrix.
        let a: Vec<f32> = (0..5 * 2).map(|x| x as f32).collect();
        let b: Vec<f32> = (0..2 * 4).map(|x| x as f32 - 3.0).collect();
        let mut wide = [f32::NAN; 5 * 10];
        gemm(
            1.0,
            MatRef::row_major(&a, 5, 2),
            MatRef::row_major(&b, 2, 4),
            0.0,
            MatMut::new(&mut wide[3..], 5, 4, 10, 1),
        );
        for i in 0..5 {
            for j in 0..10 {
                let x = wide[i * 10 + j];
                if (3..7).contains(&j) {
                    let jj = j - 3;
                    let expected = a[2 * i] * b[jj] + a[2 * i + 1] * b[4 + jj];
                    assert_eq!(x, expected, "({i}, {j})");
                } else {
                    assert!(x.is_nan(), "({i}, {j}) was overwritten");
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_c_and_k_zero_scales_c() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let mut c = [f32::NAN; 4];
        gemm(
            2.0,
            MatRef::row_major(&a, 2, 2),
            MatRef::row_major(&a, 2, 2),
            0.0,
            MatMut::row_major(&mut c, 2, 2),
        );
        assert_eq!(c, [14.0, 20.0, 30.0, 44.0]);

        let mut c = [1.0f32, 2.0, 3.0, 4.0];
        gemm(
            1.0,
            MatRef::row_major(&[], 2, 0),
            MatRef::row_major(&[], 0, 2),
            3.0,
            MatMut::row_major(&mut c, 2, 2),
        );
        assert_eq!(c, [3.0, 6.0, 9.0, 12.0]);

        let mut c = [f32::NAN; 4];
        gemm(
            1.0,
            MatRef::row_major(&[], 2, 0),
            MatRef::row_major(&[], 0, 2),
            0.0,
            MatMut::new(&mut c, 2, 2, 1, 2),
        );
        assert_eq!(c, [0.0; 4]);

        // m == 0 and n == 0 are no-ops.
        gemm(
            1.0,
            MatRef::row_major(&[], 0, 3),
            MatRef::row_major(&[0.0; 6], 3, 2),
            1.0,
            MatMut::row_major(&mut [], 0, 2),
        );
    }

    #[test]
    fn subrows_mut_views_the_right_rows() {
        let mut buf: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let mut m = MatMut::new(&mut buf, 4, 2, 3, 1); // columns 0..2 of a 4 x 3 matrix
        let sub = m.subrows_mut(1, 2);
        assert_eq!((sub.rows(), sub.cols()), (2, 2));
        assert_eq!(sub.get(0, 0), 3.0);
        assert_eq!(sub.get(1, 1), 7.0);
        assert_eq!(m.subrows_mut(4, 0).rows(), 0);
        let mut col_major = MatMut::new(&mut buf, 3, 4, 1, 3);
        assert_eq!(col_major.subrows_mut(2, 1).get(0, 3), 11.0);
    }

    #[test]
    fn subcols_mut_views_the_right_columns() {
        let mut buf: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let mut m = MatMut::new(&mut buf, 3, 3, 4, 1); // columns 0..3 of a 3 x 4 matrix
        let sub = m.subcols_mut(1, 2);
        assert_eq!((sub.rows(), sub.cols()), (3, 2));
        assert_eq!(sub.get(0, 0), 1.0);
        assert_eq!(sub.get(2, 1), 10.0);
        assert_eq!(m.subcols_mut(3, 0).cols(), 0);
        let mut col_major = MatMut::new(&mut buf, 3, 4, 1, 3);
        assert_eq!(col_major.subcols_mut(3, 1).get(2, 0), 11.0);
    }

    #[test]
    #[should_panic(expected = "columns 2..2+2 out of bounds")]
    fn subcols_past_the_end_panic() {
        let mut buf = [0.0f32; 6];
        MatMut::row_major(&mut buf, 2, 3).subcols_mut(2, 2);
    }

    #[test]
    #[should_panic(expected = "gemm dimension mismatch")]
    fn mismatched_inner_dimension_panics() {
        let mut c = [0.0f32; 4];
        gemm(
            1.0,
            MatRef::row_major(&[0.0; 6], 2, 3),
            MatRef::row_major(&[0.0; 4], 2, 2),
            0.0,
            MatMut::row_major(&mut c, 2, 2),
        );
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn view_past_the_end_panics() {
        let _ = MatRef::new(&[0.0; 10], 3, 3, 4, 1);
    }

    #[test]
    #[should_panic(expected = "would alias")]
    fn aliasing_mutable_view_panics() {
        let mut buf = [0.0f32; 8];
        let _ = MatMut::new(&mut buf, 3, 3, 1, 1);
    }
}
