//! The training step's large buffers, kept from one step to the next on each thread.
//!
//! A step of DenseNet-BC-100 at batch 64 touches about half a gigabyte: the block
//! buffers and bottleneck outputs the tape keeps, the gradients of the block buffers,
//! BN-ReLU recomputations and the im2col matrix. Freshly allocated, every page of it
//! faults in on first touch (and is unmapped again at the end of the step): 12% of a
//! step's time measured with `perf`, plus the copies of scratch vectors grown layer by
//! layer. Here buffers are taken from and given back to a free list that outlives the
//! step, like the inference [`Workspace`](crate::Workspace): after the first step of a
//! shape, the step's memory is mapped already. What is kept is the step's peak.

use ndarray::Array4;

/// Most vectors kept: far above a step's (a few per layer: DenseNet-264 has 264 convs).
const MAX_FREE: usize = 4096;

/// Free vectors of `f32`, reused by capacity.
#[derive(Default)]
pub(crate) struct Buffers {
    free: Vec<Vec<f32>>,
    /// Weight gradients' storage, recycled apart: a step's requests take the same
    /// sizes back, and the tape's buffers never mix with them (a gradient grown into a
    /// block buffer, or a block buffer carried off as a gradient, would make every step
    /// allocate again).
    gradients: Vec<Vec<f32>>,
}

impl Buffers {
    /// A zeroed vector of `len` floats: the free one with the least capacity that
    /// holds `len`, else the largest grown (one reallocation), else a new one.
    pub(crate) fn zeros(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.best_fit(len);
        v.clear();
        v.resize(len, 0.0);
        v
    }

    /// The free vector with the least capacity that holds `len`, else a new one.
    ///
    /// Never a smaller one grown: that would let the backward pass's larger maps reuse
    /// the memory of the smaller ones it is done with (DenseNet-BC-100 at batch 64 would
    /// peak at 567 instead of 607 MiB), but capacity then creeps up from step to step,
    /// small vectors grown into large ones that later small requests take (DenseNet-121
    /// at batch 8: +3 MiB a step, measured). Sharing memory across sizes without that
    /// needs the step's buffers planned at offsets of one arena, as inference's are.
    fn best_fit(&mut self, len: usize) -> Vec<f32> {
        let fit = (0..self.free.len())
            .filter(|&i| self.free[i].capacity() >= len)
            .min_by_key(|&i| self.free[i].capacity());
        fit.map_or_else(Vec::new, |i| self.free.swap_remove(i))
    }

    /// A vector of `len` floats that leaves the step (a weight gradient), contents
    /// unspecified: the recycled gradient vector with the least capacity that holds
    /// `len`, else a new one.
    pub(crate) fn leaving(&mut self, len: usize) -> Vec<f32> {
        let fit = (0..self.gradients.len())
            .filter(|&i| self.gradients[i].capacity() >= len)
            .min_by_key(|&i| self.gradients[i].capacity());
        let mut v = fit.map_or_else(Vec::new, |i| self.gradients.swap_remove(i));
        v.resize(len, 0.0);
        v.truncate(len);
        v
    }

    /// Keeps a recycled weight gradient's storage for [`Buffers::leaving`].
    pub(crate) fn give_gradient(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 && self.gradients.len() < MAX_FREE {
            self.gradients.push(v);
        }
    }

    /// A vector of `len` floats holding whatever an earlier use left (given-back vectors
    /// keep their length, so this writes nothing but an extension past it): only for a
    /// buffer that is written whole before it is read, which
    /// `tests/train_grads.rs::kept_step_memory_changes_nothing` checks.
    pub(crate) fn overwritten(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.best_fit(len);
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0.0);
        }
        v
    }

    /// A zeroed NHWC array of shape `dim`.
    pub(crate) fn array4(&mut self, dim: (usize, usize, usize, usize)) -> Array4<f32> {
        let (n, h, w, c) = dim;
        let v = self.zeros(n * h * w * c);
        Array4::from_shape_vec(dim, v).expect("n·h·w·c elements")
    }

    /// [`Buffers::overwritten`] as an NHWC array of shape `dim`.
    pub(crate) fn overwritten4(&mut self, dim: (usize, usize, usize, usize)) -> Array4<f32> {
        let (n, h, w, c) = dim;
        let v = self.overwritten(n * h * w * c);
        Array4::from_shape_vec(dim, v).expect("n·h·w·c elements")
    }

    /// Gives `v` back for later steps (or frees it, if the list is full: vectors given
    /// but never taken, e.g. gradients recycled on a thread that no longer trains,
    /// cannot pile up).
    pub(crate) fn give(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 && self.free.len() < MAX_FREE {
            self.free.push(v);
        }
    }

    /// Floats held by the kept vectors.
    pub(crate) fn floats(&self) -> usize {
        self.free
            .iter()
            .chain(&self.gradients)
            .map(Vec::capacity)
            .sum()
    }

    /// Gives an array's storage back.
    pub(crate) fn give4(&mut self, a: Array4<f32>) {
        let (v, _) = a.into_raw_vec_and_offset();
        self.give(v);
    }
}
