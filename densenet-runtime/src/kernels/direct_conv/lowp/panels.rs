//! The weight layout of the low-precision kernels: 32-column panels of rows of
//! `G`-channel groups, `[panel][tap][⌈c_in/G⌉][32][G]`, each panel contiguous.
//!
//! `VDPBF16PS` (G = 2) and `VPDPBUSD` (G = 4) multiply, in each 32-bit lane, a group of
//! `G` consecutive input channels of one pixel (broadcast to every lane) by the `G`
//! weights of that lane's output channel. So a weight row is, for each of the panel's
//! 32 output channels, the `G` weights of one group of one tap: 32·G values, 128
//! bytes for both precisions (two zmm loads). A tap's groups are padded to a multiple
//! of `G` channels with zeros, and the last panel to 32 columns, so the kernels load
//! whole rows and never read a weight outside the panel.

/// Columns of a panel (the AVX-512 kernels' tile width; AVX-VNNI's 16 divides it).
pub(super) const PANEL: usize = 32;

/// A `[kh, kw, c_in, c_out]` weight of `T` in the grouped panel layout.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Panels<T, const G: usize> {
    data: Vec<T>,
    dims: [usize; 4],
}

impl<T: Copy + Default, const G: usize> Panels<T, G> {
    /// The weight whose HWIO element `(tap, ci, co)` is `value(tap, ci, co)`, with the
    /// padding zero (`T::default()`), or `None` if its size overflows `usize`.
    pub(super) fn from_fn(
        dims: [usize; 4],
        mut value: impl FnMut(usize, usize, usize) -> T,
    ) -> Option<Self> {
        let [kh, kw, c_in, c_out] = dims;
        let taps = kh.checked_mul(kw)?;
        let rows = taps.checked_mul(c_in.div_ceil(G))?;
        let len = rows
            .checked_mul(c_out.div_ceil(PANEL))?
            .checked_mul(PANEL * G)?;
        // A size that `Vec` could not hold anyway is refused here, not by an abort.
        if len.checked_mul(std::mem::size_of::<T>())? > isize::MAX as usize {
            return None;
        }
        let mut panels = Self {
            data: vec![T::default(); len],
            dims,
        };
        for tap in 0..taps {
            for ci in 0..c_in {
                for co in 0..c_out {
                    let at = panels.index(tap, ci, co);
                    panels.data[at] = value(tap, ci, co);
                }
            }
        }
        Some(panels)
    }

    /// `[kh, kw, c_in, c_out]`.
    pub(super) fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// Rows of a panel: `kh·kw·⌈c_in/G⌉`.
    pub(super) fn rows(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2].div_ceil(G)
    }

    /// Where HWIO element `(tap, ci, co)` lives in [`Panels::as_slice`].
    pub(super) fn index(&self, tap: usize, ci: usize, co: usize) -> usize {
        let row = tap * self.dims[2].div_ceil(G) + ci / G;
        (((co / PANEL) * self.rows() + row) * PANEL + co % PANEL) * G + ci % G
    }

    /// HWIO element `(tap, ci, co)`.
    pub(super) fn get(&self, tap: usize, ci: usize, co: usize) -> T {
        self.data[self.index(tap, ci, co)]
    }

    /// The packed values, padding included.
    pub(super) fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The weight in HWIO order, `kh·kw·c_in·c_out` values.
    pub(super) fn to_hwio(&self) -> Vec<T> {
        let [kh, kw, c_in, c_out] = self.dims;
        let mut hwio = Vec::with_capacity(kh * kw * c_in * c_out);
        for tap in 0..kh * kw {
            for ci in 0..c_in {
                for co in 0..c_out {
                    hwio.push(self.get(tap, ci, co));
                }
            }
        }
        hwio
    }
}

impl<T, const G: usize> std::fmt::Debug for Panels<T, G> {
    /// The shape only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Panels")
            .field("dims", &self.dims)
            .field("group", &G)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element lands once, where the kernels read it: row `tap·⌈c_in/G⌉ + ci/G`
    /// of panel `co / 32`, lane `co % 32`, slot `ci % G`; everything else is zero.
    #[test]
    fn every_element_lands_in_its_group_and_panel() {
        for dims in [
            [1, 1, 1, 1],
            [1, 1, 5, 33],
            [3, 3, 7, 40],
            [1, 1, 8, 64],
            [2, 1, 3, 1],
        ] {
            let value = |t: usize, ci: usize, co: usize| (1 + t * 10_000 + ci * 100 + co) as u32;
            let two = Panels::<u32, 2>::from_fn(dims, value).unwrap();
            let four = Panels::<u32, 4>::from_fn(dims, value).unwrap();
            let [kh, kw, c_in, c_out] = dims;
            let taps = kh * kw;
            for (g, slice, rows) in [
                (2, two.as_slice(), two.rows()),
                (4, four.as_slice(), four.rows()),
            ] {
                assert_eq!(rows, taps * c_in.div_ceil(g));
                assert_eq!(slice.len(), c_out.div_ceil(PANEL) * rows * PANEL * g);
                for t in 0..taps {
                    for ci in 0..c_in {
                        for co in 0..c_out {
                            let row = t * c_in.div_ceil(g) + ci / g;
                            let at =
                                (((co / PANEL) * rows + row) * PANEL + co % PANEL) * g + ci % g;
                            assert_eq!(slice[at], value(t, ci, co), "{dims:?} G={g}");
                        }
                    }
                }
                let nonzero = slice.iter().filter(|&&v| v != 0).count();
                assert_eq!(nonzero, taps * c_in * c_out, "{dims:?} G={g}: padding");
            }
            let hwio: Vec<u32> = (0..taps)
                .flat_map(|t| (0..c_in).flat_map(move |ci| (0..c_out).map(move |co| (t, ci, co))))
                .map(|(t, ci, co)| value(t, ci, co))
                .collect();
            assert_eq!(two.to_hwio(), hwio);
            assert_eq!(four.to_hwio(), hwio);
        }
    }

    #[test]
    fn an_overflowing_size_is_refused() {
        let huge = usize::MAX / 2;
        assert!(Panels::<u8, 4>::from_fn([1, 1, huge, huge], |_, _, _| 0).is_none());
        assert!(Panels::<u16, 2>::from_fn([huge, huge, 1, 1], |_, _, _| 0).is_none());
    }
}
