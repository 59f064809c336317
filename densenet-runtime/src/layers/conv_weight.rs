//! How a [`Conv2d`](super::Conv2d) keeps its weight: one copy, in the layout its kernels
//! read. A weight with at most 32 outputs is one panel already and stays HWIO; a wider
//! one is stored panel-major ([`PackedWeight`]), whose panels the direct kernels stream
//! sequentially (DenseNet-121's 1x1 convolutions: 4–14% faster than strided HWIO rows),
//! and the HWIO view is made on request ([`WeightMut`] writes it back).

use core::ops::Deref;

use ndarray::{Array4, ArrayView4, ArrayViewMut4, CowArray, Ix4};

use crate::kernels::direct_conv::{ConvWeight, PackedWeight, PACK};
use crate::kernels::gemm::{gemm, MatMut, MatRef};

/// A conv weight in its stored layout.
#[derive(Clone, Debug)]
pub(super) enum StoredWeight {
    /// HWIO `[kh, kw, c_in, c_out]`, contiguous: at most [`PACK`] outputs (or an empty
    /// dimension).
    Hwio(Array4<f32>),
    /// Panel-major, with the HWIO shape it stands for: more than [`PACK`] outputs.
    Packed {
        packed: PackedWeight,
        shape: [usize; 4],
    },
}

impl StoredWeight {
    /// Stores the HWIO weight `hwio` (any memory layout) in the layout for its width.
    pub(super) fn from_hwio(hwio: Array4<f32>) -> Self {
        let hwio = if hwio.is_standard_layout() {
            hwio
        } else {
            hwio.as_standard_layout().into_owned()
        };
        let shape: [usize; 4] = hwio.shape().try_into().expect("4-D");
        if shape[3] <= PACK || shape.contains(&0) {
            return Self::Hwio(hwio);
        }
        let values = hwio.as_slice().expect("standard layout is contiguous");
        let packed = PackedWeight::from_hwio(values, shape[0] * shape[1] * shape[2], shape[3]);
        Self::Packed { packed, shape }
    }

    /// A weight of HWIO shape `shape` whose values `next` yields in HWIO order, stored
    /// in the layout for its width without an HWIO array in between.
    pub(super) fn from_fn(shape: [usize; 4], next: impl FnMut() -> f32) -> Self {
        if shape[3] <= PACK || shape.contains(&0) {
            return Self::Hwio(Array4::from_shape_simple_fn(shape, next));
        }
        let packed = PackedWeight::from_fn(shape[0] * shape[1] * shape[2], shape[3], next);
        Self::Packed { packed, shape }
    }

    /// Overwrites the weight with `hwio` (its HWIO shape, any memory layout) in place.
    ///
    /// # Panics
    ///
    /// If the shape differs (a caller bug).
    pub(super) fn assign(&mut self, hwio: ArrayView4<'_, f32>) {
        assert_eq!(hwio.shape(), self.shape(), "StoredWeight::assign: shape");
        match self {
            Self::Hwio(w) => w.assign(&hwio),
            Self::Packed { packed, .. } => packed.assign_hwio(hwio),
        }
    }

    /// The HWIO shape `[kh, kw, c_in, c_out]`.
    pub(super) fn shape(&self) -> [usize; 4] {
        match self {
            Self::Hwio(w) => w.shape().try_into().expect("4-D"),
            Self::Packed { shape, .. } => *shape,
        }
    }

    /// The HWIO weight: borrowed, or unpacked into a new array.
    pub(super) fn hwio(&self) -> CowArray<'_, f32, Ix4> {
        match self {
            Self::Hwio(w) => w.view().into(),
            Self::Packed { packed, shape } => Array4::from_shape_vec(*shape, packed.to_hwio())
                .expect("a packed weight holds its shape's values")
                .into(),
        }
    }

    /// `dst ← Wᵀ`, `W` the `(kh·kw·c_in) × c_out` matrix: `c_out` rows of `kh·kw·c_in`,
    /// read from either layout without unpacking.
    ///
    /// # Panics
    ///
    /// If `dst` is shorter than the weight.
    #[cfg_attr(not(feature = "std"), allow(dead_code))] // training's
    pub(super) fn transposed_into(&self, dst: &mut [f32]) {
        let [kh, kw, c_in, c_out] = self.shape();
        let rows = kh * kw * c_in;
        let dst = &mut dst[..rows * c_out];
        match self {
            Self::Hwio(w) => {
                let w = w.as_slice().expect("stored contiguous");
                transpose_columns(w, (rows, c_out, c_out), 0, dst);
            }
            Self::Packed { packed, .. } => {
                for (p, panel) in packed.as_slice().chunks_exact(rows * PACK).enumerate() {
                    let width = PACK.min(c_out - p * PACK);
                    transpose_columns(panel, (rows, width, PACK), p * PACK, dst);
                }
            }
        }
    }

    /// Calls `f(first column, panel)` for the weight's `(kh·kw·c_in) × c_out` matrix as
    /// stored: one row-major panel when HWIO, each 32-column panel (a view of its
    /// columns, without the zero padding) when packed.
    pub(super) fn for_each_panel(&self, mut f: impl FnMut(usize, MatRef<'_>)) {
        let [kh, kw, c_in, c_out] = self.shape();
        let rows = kh * kw * c_in;
        match self {
            Self::Hwio(w) => f(
                0,
                MatRef::row_major(w.as_slice().expect("stored contiguous"), rows, c_out),
            ),
            Self::Packed { packed, .. } => {
                for (p, panel) in packed.as_slice().chunks_exact(rows * PACK).enumerate() {
                    let width = PACK.min(c_out - p * PACK);
                    f(p * PACK, MatRef::new(panel, rows, width, PACK, 1));
                }
            }
        }
    }

    /// Calls `f(offset, run)` for every contiguous run of the stored values, `offset`
    /// being the run's first index in the HWIO weight (whose next values follow it in
    /// the run): the whole weight when HWIO, each panel's row when packed. An
    /// elementwise update (an optimiser step) then runs in place, in either layout.
    pub(super) fn for_each_run_mut(&mut self, mut f: impl FnMut(usize, &mut [f32])) {
        match self {
            Self::Hwio(w) => f(0, w.as_slice_mut().expect("stored contiguous")),
            Self::Packed { packed, shape } => {
                let (rows, c_out) = (shape[0] * shape[1] * shape[2], shape[3]);
                for (p, panel) in packed
                    .as_mut_slice()
                    .chunks_exact_mut(rows * PACK)
                    .enumerate()
                {
                    let width = PACK.min(c_out - p * PACK);
                    for (r, row) in panel.chunks_exact_mut(PACK).enumerate() {
                        f(r * c_out + p * PACK, &mut row[..width]);
                    }
                }
            }
        }
    }

    /// Takes the HWIO weight out (unpacking it), leaving an empty placeholder.
    fn take_hwio(&mut self) -> Array4<f32> {
        let empty = Self::Hwio(Array4::zeros((0, 0, 0, 0)));
        match core::mem::replace(self, empty) {
            Self::Hwio(w) => w,
            packed => packed.hwio().into_owned(),
        }
    }

    /// The weight as the direct kernels read it.
    pub(super) fn kernel_weight(&self) -> ConvWeight<'_> {
        match self {
            Self::Hwio(w) => ConvWeight::Hwio(w.as_slice().expect("stored contiguous")),
            Self::Packed { packed, .. } => ConvWeight::Packed(packed),
        }
    }

    /// `out = a · W`, `W` the `(kh·kw·c_in) × c_out` matrix: the portable paths' GEMM,
    /// panel by panel for a packed weight.
    ///
    /// # Panics
    ///
    /// If the shapes do not fit (a caller bug).
    pub(super) fn multiply(&self, a: MatRef<'_>, mut out: MatMut<'_>) {
        self.for_each_panel(|c0, b| gemm(1.0, a, b, 0.0, out.subcols_mut(c0, b.cols())));
    }
}

/// Mutable access to a [`Conv2d`](super::Conv2d)'s HWIO weight, from
/// [`Conv2d::weight_mut`](super::Conv2d::weight_mut): dereferences to the
/// `[kh, kw, c_in, c_out]` array, [`view_mut`](Self::view_mut) changes its values (not
/// its shape: the conv's geometry is fixed), and the guard stores it back in the conv's
/// layout when dropped (a wide weight is unpacked when the guard is made and packed
/// again then).
pub struct WeightMut<'a> {
    stored: &'a mut StoredWeight,
    hwio: Array4<f32>,
}

impl<'a> WeightMut<'a> {
    pub(super) fn new(stored: &'a mut StoredWeight) -> Self {
        let hwio = stored.take_hwio();
        Self { stored, hwio }
    }
}

impl Deref for WeightMut<'_> {
    type Target = Array4<f32>;

    fn deref(&self) -> &Array4<f32> {
        &self.hwio
    }
}

impl WeightMut<'_> {
    /// The weight's values, mutably.
    pub fn view_mut(&mut self) -> ArrayViewMut4<'_, f32> {
        self.hwio.view_mut()
    }
}

impl Drop for WeightMut<'_> {
    fn drop(&mut self) {
        let hwio = core::mem::replace(&mut self.hwio, Array4::zeros((0, 0, 0, 0)));
        *self.stored = StoredWeight::from_hwio(hwio);
    }
}

impl core::fmt::Debug for WeightMut<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("WeightMut").field(&self.hwio).finish()
    }
}

/// Writes the `rows × width` matrix `src` (row stride `stride`) transposed into `dst`'s
/// rows `first..first + width` (each `rows` long), 16 source rows at a time: each
/// destination row gets a whole cache line per block, where writing a column at a time
/// sent every store of a row to another destination row (`rows` floats apart, the same
/// L1 set when `rows` is a multiple of 1,024: DenseNet-121's last transition
/// transposed its 2 MiB weight in 2.9 ms).
#[cfg_attr(not(feature = "std"), allow(dead_code))] // training's
fn transpose_columns(
    src: &[f32],
    (rows, width, stride): (usize, usize, usize),
    first: usize,
    dst: &mut [f32],
) {
    const BLOCK: usize = 16;
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for j in 0..width {
            let out = &mut dst[(first + j) * rows..][r0..r1];
            for (r, o) in (r0..r1).zip(out) {
                *o = src[r * stride + j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::gemm_reference;
    use crate::rng::Rng;

    #[test]
    fn runs_cover_the_weight_at_their_hwio_offsets() {
        let mut rng = Rng::new(5);
        for shape in [[3, 3, 5, 12], [1, 1, 7, 48], [1, 1, 3, 64]] {
            let hwio = Array4::from_shape_simple_fn(shape, || rng.normal());
            let flat = hwio.as_slice().unwrap().to_vec();
            let mut stored = StoredWeight::from_hwio(hwio.clone());
            let mut seen = vec![false; flat.len()];
            // Each value is where its offset says; doubling it in place doubles the weight.
            stored.for_each_run_mut(|offset, run| {
                for (j, v) in run.iter_mut().enumerate() {
                    assert_eq!(*v, flat[offset + j], "{shape:?} at {}", offset + j);
                    assert!(!seen[offset + j]);
                    seen[offset + j] = true;
                    *v *= 2.0;
                }
            });
            assert!(seen.iter().all(|&s| s), "{shape:?}");
            assert_eq!(stored.hwio(), hwio.mapv(|v| 2.0 * v), "{shape:?}");
        }
    }

    #[test]
    fn the_transpose_reads_either_layout() {
        let mut rng = Rng::new(4);
        // Rows below, across and not a multiple of the 16-row blocks; packed panels
        // whole and partial.
        for shape in [
            [3, 3, 5, 12],
            [1, 1, 7, 48],
            [1, 1, 3, 64],
            [1, 1, 37, 70],
            [3, 3, 5, 40],
        ] {
            let hwio = Array4::from_shape_simple_fn(shape, || rng.normal());
            let rows = shape[0] * shape[1] * shape[2];
            let matrix = hwio.to_shape((rows, shape[3])).unwrap();
            let mut dst = vec![f32::NAN; rows * shape[3]];
            StoredWeight::from_hwio(hwio.clone()).transposed_into(&mut dst);
            for ((r, c), &v) in matrix.indexed_iter() {
                assert_eq!(dst[c * rows + r], v, "{shape:?} ({r}, {c})");
            }
        }
    }

    #[test]
    fn narrow_weights_stay_hwio_and_wide_ones_are_packed() {
        let mut rng = Rng::new(1);
        for (shape, packed) in [
            ([3, 3, 5, 32], false),
            ([1, 1, 5, 33], true),
            ([1, 1, 0, 40], false),
        ] {
            let hwio = Array4::from_shape_simple_fn(shape, || rng.normal());
            let stored = StoredWeight::from_hwio(hwio.clone());
            assert_eq!(
                matches!(stored, StoredWeight::Packed { .. }),
                packed,
                "{shape:?}"
            );
            assert_eq!(stored.shape(), shape);
            assert_eq!(stored.hwio(), hwio);
        }
    }

    #[test]
    fn the_portable_product_matches_the_hwio_matrix() {
        // The GEMM of the CPUs without direct kernels, panel by panel, into a column
        // range of a wider output: against the plain product with the HWIO matrix.
        let mut rng = Rng::new(2);
        for (k, c_out) in [(6, 20), (9, 33), (4, 100)] {
            let hwio = Array4::from_shape_simple_fn((1, 1, k, c_out), || rng.normal());
            let a: Vec<f32> = (0..7 * k).map(|_| rng.normal()).collect();
            let stride = c_out + 3;
            let mut out = vec![f32::NAN; 7 * stride];
            let stored = StoredWeight::from_hwio(hwio.clone());
            stored.multiply(
                MatRef::row_major(&a, 7, k),
                MatMut::new(&mut out, 7, c_out, stride, 1),
            );
            let mut expected = vec![0.0; 7 * c_out];
            gemm_reference(
                1.0,
                MatRef::row_major(&a, 7, k),
                MatRef::row_major(hwio.as_slice().unwrap(), k, c_out),
                0.0,
                MatMut::row_major(&mut expected, 7, c_out),
            );
            for i in 0..7 {
                for j in 0..c_out {
                    let (got, want) = (out[i * stride + j], expected[i * c_out + j]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_guard_stores_what_it_was_given() {
        let hwio = Array4::from_shape_fn((1, 1, 3, 40), |(_, _, i, o)| (i * 40 + o) as f32);
        let mut stored = StoredWeight::from_hwio(hwio.clone());
        {
            let mut guard = WeightMut::new(&mut stored);
            assert_eq!(*guard, hwio);
            guard.view_mut()[[0, 0, 2, 39]] = -1.0;
        }
        assert!(matches!(stored, StoredWeight::Packed { .. }));
        assert_eq!(stored.hwio()[[0, 0, 2, 39]], -1.0);
        assert_eq!(
            stored.shape(),
            [1, 1, 3, 40],
            "the guard cannot change the shape"
        );
    }
}
