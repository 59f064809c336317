//! Data parallelism: rayon's with the `parallel` feature (on by default), the same
//! calls run sequentially on the calling thread without it, for targets without
//! threads (WebAssembly in the browser) or where a thread pool is unwanted.
//!
//! The runtime's code writes `par_chunks_mut`, `into_par_iter`, `par_iter` and reads
//! `current_num_threads()` through this module only: without the feature the `par_*`
//! methods are the slices' and ranges' own sequential iterators, which have the same
//! adapters (`enumerate`, `zip`, `map`, `for_each`, `collect`), and the results are
//! the same bit for bit (every parallel reduction here combines its parts in a fixed
//! order).

#[cfg(feature = "parallel")]
pub(crate) use rayon::{current_thread_index, scope};

#[cfg(feature = "parallel")]
std::thread_local! {
    /// Set while this thread runs a task that must not split its work further
    /// ([`sequential`]).
    static SEQUENTIAL: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// rayon's thread count, or 1 inside [`sequential`]: every parallel loop of the kernels
/// and layers asks this before splitting.
#[cfg(feature = "parallel")]
pub(crate) fn current_num_threads() -> usize {
    if SEQUENTIAL.with(core::cell::Cell::get) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Runs `f` with [`current_num_threads`] at 1 on this thread: for a task that is
/// already one of the pool's parallel parts (an image of a batch split over the
/// threads), whose kernels would otherwise split again and synchronise per call.
#[cfg(feature = "parallel")]
pub(crate) fn sequential<R>(f: impl FnOnce() -> R) -> R {
    let before = SEQUENTIAL.with(|s| s.replace(true));
    // Restored on unwinding too, so a panic cannot leave the thread sequential.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SEQUENTIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// How many tasks a batch of `n` images takes through a dense block: one per thread
/// when the batch splits evenly over them (or is large enough that the uneven part
/// does not matter), each image on single-threaded kernels ([`sequential`]); else 1,
/// the images in turn with each convolution split over the threads. A dense block's
/// convolutions on one image of a small map are short (10 µs a task on 28x28), and a
/// split per convolution synchronises the threads for each.
#[cfg_attr(not(feature = "std"), allow(dead_code))] // low precision's (std)
pub(crate) fn image_tasks(n: usize) -> usize {
    let threads = current_num_threads();
    if threads > 1 && n >= threads && (n.is_multiple_of(threads) || n >= 4 * threads) {
        threads
    } else {
        1
    }
}

/// `rayon::join` with the feature: `a` and `b`, maybe on two threads; without it, `a`
/// then `b`.
#[cfg_attr(not(feature = "std"), allow(dead_code))] // training's
pub(crate) fn join<RA: Send, RB: Send>(
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    #[cfg(feature = "parallel")]
    return rayon::join(a, b);
    #[cfg(not(feature = "parallel"))]
    (a(), b())
}

/// `rayon::prelude` with the feature; sequential stand-ins without.
pub(crate) mod prelude {
    #[cfg(feature = "parallel")]
    pub(crate) use rayon::prelude::*;

    // Training uses them all; the inference path of a `no_std` build only some.
    #[cfg(not(feature = "parallel"))]
    #[allow(unused_imports)]
    pub(crate) use super::sequential::{
        IndexedParallelIterator, IntoParallelIterator, ParallelSlice, ParallelSliceMut,
    };
}

#[cfg(not(feature = "parallel"))]
#[cfg_attr(not(feature = "std"), allow(unused_imports))] // low precision's (std)
pub(crate) use sequential::{current_num_threads, current_thread_index, scope, sequential};

#[cfg(not(feature = "parallel"))]
#[cfg_attr(not(feature = "std"), allow(dead_code))] // training uses them all
mod sequential {
    /// One thread: the caller's.
    pub(crate) fn current_num_threads() -> usize {
        1
    }

    /// Never inside a pool.
    pub(crate) fn current_thread_index() -> Option<usize> {
        None
    }

    /// Runs `f` on the calling thread.
    pub(crate) fn scope<R>(f: impl FnOnce(&()) -> R) -> R {
        f(&())
    }

    /// Runs `f`: everything is sequential already.
    pub(crate) fn sequential<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// `par_chunks_mut` as `chunks_mut`.
    pub(crate) trait ParallelSliceMut<T> {
        fn par_chunks_mut(&mut self, size: usize) -> core::slice::ChunksMut<'_, T>;
    }

    impl<T> ParallelSliceMut<T> for [T] {
        fn par_chunks_mut(&mut self, size: usize) -> core::slice::ChunksMut<'_, T> {
            self.chunks_mut(size)
        }
    }

    /// `par_chunks` and `par_iter` as `chunks` and `iter`.
    pub(crate) trait ParallelSlice<T> {
        fn par_chunks(&self, size: usize) -> core::slice::Chunks<'_, T>;
        #[allow(dead_code)] // the image folder's (feature `image`)
        fn par_iter(&self) -> core::slice::Iter<'_, T>;
    }

    impl<T> ParallelSlice<T> for [T] {
        fn par_chunks(&self, size: usize) -> core::slice::Chunks<'_, T> {
            self.chunks(size)
        }

        fn par_iter(&self) -> core::slice::Iter<'_, T> {
            self.iter()
        }
    }

    /// `into_par_iter` as `into_iter`.
    pub(crate) trait IntoParallelIterator: IntoIterator + Sized {
        fn into_par_iter(self) -> Self::IntoIter {
            self.into_iter()
        }
    }

    impl<I: IntoIterator> IntoParallelIterator for I {}

    /// `with_min_len` (a hint for splitting work) as nothing.
    pub(crate) trait IndexedParallelIterator: Iterator + Sized {
        fn with_min_len(self, _min: usize) -> Self {
            self
        }
    }

    impl<I: Iterator> IndexedParallelIterator for I {}
}
