//! The small vectors of a training step, recycled: per-channel statistics and
//! coefficients, per-task partial sums, the BatchNorm parameters' gradients. A step
//! takes hundreds of them (a few per layer, a few hundred floats each), some inside
//! parallel tasks, some kept by tape records until the backward pass; a step after the
//! first takes them all from what earlier steps gave back, so it allocates none.
//!
//! A [`Recycled`] vector goes back to a process-wide pool when dropped, filed under its
//! capacity's power-of-two class; a request takes one of its length's class (so at most
//! half of a vector is slack), or allocates the class's full capacity when none is
//! free. Each class then holds as many vectors as a step has live at once. The large
//! buffers are planned instead (`buffers.rs`): a pool by size class would waste up to
//! half of them, where here it is a few KiB.
//!
//! [`release_step_memory`](super::release_step_memory) empties the pool.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Classes by `capacity.ilog2()`: enough for any length a `Vec` can have.
const CLASSES: usize = usize::BITS as usize;

/// The free vectors of one element type, by class.
pub(crate) struct Pool<T> {
    classes: Mutex<[Vec<Vec<T>>; CLASSES]>,
}

impl<T> Pool<T> {
    const fn new() -> Self {
        Self {
            classes: Mutex::new([const { Vec::new() }; CLASSES]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Vec<Vec<T>>; CLASSES]> {
        // A panic while the lock is held leaves only whole vectors in the lists.
        self.classes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty vector with capacity for at least `len` elements.
    fn take(&self, len: usize) -> Vec<T> {
        if len == 0 {
            return Vec::new();
        }
        let class = len.next_power_of_two().ilog2() as usize;
        // (The lock is released before a miss allocates.)
        let free = self.lock()[class].pop();
        match free {
            Some(mut v) => {
                v.clear();
                v
            }
            None => Vec::with_capacity(1 << class),
        }
    }

    /// Keeps `v` for a later [`take`](Self::take) (under the class its capacity fills).
    fn give(&self, v: Vec<T>) {
        if v.capacity() == 0 {
            return;
        }
        let class = v.capacity().ilog2() as usize;
        self.lock()[class].push(v);
    }

    /// Frees every kept vector.
    fn clear(&self) {
        for class in self.lock().iter_mut() {
            *class = Vec::new();
        }
    }

    /// Bytes kept.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        let vectors = self
            .lock()
            .iter()
            .flatten()
            .map(Vec::capacity)
            .sum::<usize>();
        vectors * size_of::<T>()
    }
}

/// An element type with a pool.
pub(crate) trait Element: Copy + Default + Send + 'static {
    /// Its pool.
    fn pool() -> &'static Pool<Self>;
}

static F32: Pool<f32> = Pool::new();
static F64: Pool<f64> = Pool::new();

impl Element for f32 {
    fn pool() -> &'static Pool<f32> {
        &F32
    }
}

impl Element for f64 {
    fn pool() -> &'static Pool<f64> {
        &F64
    }
}

/// A vector from the pool, given back when dropped. Dereferences to `Vec<T>`.
pub(crate) struct Recycled<T: Element> {
    vec: Vec<T>,
}

impl<T: Element> Recycled<T> {
    /// An empty vector with room for `len` elements.
    pub(crate) fn with_capacity(len: usize) -> Self {
        Self {
            vec: T::pool().take(len),
        }
    }

    /// `len` zeros (`T::default()`).
    pub(crate) fn zeros(len: usize) -> Self {
        let mut v = Self::with_capacity(len);
        v.vec.resize(len, T::default());
        v
    }

    /// A copy of `values`.
    pub(crate) fn from_slice(values: &[T]) -> Self {
        let mut v = Self::with_capacity(values.len());
        v.vec.extend_from_slice(values);
        v
    }

    /// The vector, leaving the pool's care (give it back with [`give`]).
    pub(crate) fn into_vec(mut self) -> Vec<T> {
        std::mem::take(&mut self.vec)
    }
}

/// A `rows × cols` matrix of zeros on a pooled vector (give it back with
/// `give(m.into_raw_vec_and_offset().0)`).
pub(crate) fn matrix(rows: usize, cols: usize) -> ndarray::Array2<f32> {
    ndarray::Array2::from_shape_vec((rows, cols), Recycled::zeros(rows * cols).into_vec())
        .expect("rows·cols values")
}

/// Gives a vector (from [`Recycled::into_vec`], or any) to the pool.
pub(crate) fn give<T: Element>(v: Vec<T>) {
    T::pool().give(v);
}

/// Frees what the pools keep.
pub(crate) fn clear() {
    F32.clear();
    F64.clear();
}

impl<T: Element> Drop for Recycled<T> {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.vec));
    }
}

impl<T: Element> Deref for Recycled<T> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.vec
    }
}

impl<T: Element> DerefMut for Recycled<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.vec
    }
}

impl<'a, T: Element> IntoIterator for &'a Recycled<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.vec.iter()
    }
}

impl<T: Element> Default for Recycled<T> {
    fn default() -> Self {
        Self { vec: Vec::new() }
    }
}

impl<T: Element> Clone for Recycled<T> {
    fn clone(&self) -> Self {
        Self::from_slice(&self.vec)
    }
}

impl<T: Element + std::fmt::Debug> std::fmt::Debug for Recycled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.vec.fmt(f)
    }
}

impl<T: Element + PartialEq> PartialEq for Recycled<T> {
    fn eq(&self, other: &Self) -> bool {
        self.vec == other.vec
    }
}

/// Collects into a pooled vector: the iterator's lower size bound picks the class
/// (exact for the slice maps a step collects); more elements grow it as a `Vec` would.
impl<T: Element> FromIterator<T> for Recycled<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut v = Self::with_capacity(iter.size_hint().0);
        v.vec.extend(iter);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vector given back is the one the next request of its class gets: the same
    /// allocation, cleared. (A pool of its own, so tests running alongside do not
    /// take from it.)
    #[test]
    fn a_dropped_vector_serves_the_next_request_of_its_class() {
        static POOL: Pool<f32> = Pool::new();
        let mut v = POOL.take(100);
        assert!(v.capacity() >= 128);
        v.extend([1.0; 100]);
        let ptr = v.as_ptr();
        POOL.give(v);
        assert_eq!(POOL.bytes(), 128 * 4);
        let again = POOL.take(70);
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        // Another class allocates.
        let other = POOL.take(20);
        assert_ne!(other.as_ptr(), ptr);
        POOL.give(again);
        POOL.give(other);
        POOL.clear();
        assert_eq!(POOL.bytes(), 0);
    }

    #[test]
    fn recycled_vectors_behave_as_vectors() {
        let z = Recycled::<f64>::zeros(5);
        assert_eq!(&z[..], &[0.0; 5]);
        let c: Recycled<f32> = (0..4).map(|i| i as f32).collect();
        assert_eq!(&c[..], &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(c.clone(), c);
        assert_eq!(c.into_vec().len(), 4);
    }
}
