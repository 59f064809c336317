//! The part of the direct convolution every instruction set shares: a call split into
//! tasks (output rows, or tiles of the batch's pixels in order), each tile computed
//! block of input channels by block and panel of output channels by panel by a
//! [`Microkernel`] (`avx512.rs`, `avx2.rs`).

use crate::parallel::prelude::*;

use super::{
    tile_span, ConvShape, ConvWeight, Epilogue, ImageLayout, BLOCK_WEIGHT_FLOATS, MAX_BLOCK,
    MAX_TAPS, MAX_TILE, MIN_BLOCK, PACK, PARALLEL_MACS,
};

/// An instruction set's register-tiled kernels.
pub(super) trait Microkernel {
    /// Output pixels per tile, at most [`MAX_TILE`].
    const TILE: usize;
    /// Output channels per panel.
    const PANEL: usize;

    /// Writes `relu(scale[ci]·x + shift[ci])` of input pixel `i < offsets.len()`,
    /// channel `ci < kc` (at `src + offsets[i] + ci`) to `dst[i·kc + ci]`: a prologue's
    /// BatchNorm-ReLU applied while a tile's inputs are packed, with the runtime's ReLU
    /// (`y <= 0 → 0`) and the multiply and add unfused, as its other BatchNorm-ReLU
    /// passes.
    ///
    /// # Safety
    ///
    /// The CPU has the instruction set; the `offsets.len() × kc` inputs, `kc` values of
    /// each of `scale` and `shift`, and `offsets.len()·kc` values at `dst` are valid (the
    /// last for writes), `offsets.len() ≤ TILE`.
    unsafe fn pack_prologue(
        src: *const f32,
        offsets: &[usize],
        kc: usize,
        scale_shift: (*const f32, *const f32),
        dst: *mut f32,
    );

    /// Accumulates a `rows`-pixel × `width`-channel output tile over every tap and input
    /// channel, starting from zero or, with `accumulate`, from the tile's current
    /// contents (a later block of input channels), then applies the epilogue and stores
    /// it. Pixel `i` reads input `a + i·a_step + taps[t] + ci`; weight row
    /// `t·c_in + ci` starts at `b + (t·c_in + ci)·ldb`; output pixel `i` starts at
    /// `c + c_offsets[i]`. `epilogue` is `(scale, shift)`, both null for a plain store.
    ///
    /// # Safety
    ///
    /// The CPU has the instruction set; `1 ≤ rows ≤ TILE`, `1 ≤ width ≤ PANEL`; every
    /// address described above, for `i < rows`, `t < taps.len()`, `ci < c_in` and the
    /// `width` columns, is valid to read (inputs, weights, scale, shift) or read and
    /// write (outputs), and no other thread accesses the outputs during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        rows: usize,
        width: usize,
        a: *const f32,
        a_step: usize,
        taps: &[usize],
        c_in: usize,
        b: *const f32,
        ldb: usize,
        epilogue: (*const f32, *const f32),
        c: *mut f32,
        c_offsets: &[usize; MAX_TILE],
        accumulate: bool,
    );
}

/// Everything a task needs, as raw pointers (the tasks of one call write disjoint
/// outputs; see the SAFETY comment in [`Job::tile`]).
pub(super) struct Job {
    input: *const f32,
    input_layout: ImageLayout,
    /// The prologue's scale and shift (null: none).
    prologue: (*const f32, *const f32),
    /// Weight row `r`, column `co` is at
    /// `weight + (co / PACK)·panel_stride + r·ldb + co % PACK`: HWIO has
    /// `panel_stride = PACK` and `ldb = c_out`, a [`PackedWeight`](super::PackedWeight)
    /// `panel_stride = rows·PACK` and `ldb = PACK`.
    weight: *const f32,
    panel_stride: usize,
    ldb: usize,
    shape: ConvShape,
    scale: *const f32,
    shift: *const f32,
    out: *mut f32,
    out_layout: ImageLayout,
    taps: [usize; MAX_TAPS],
}

// SAFETY: `Job` only carries pointers derived from the borrows passed to `new`, which
// outlive every use (the job lives inside `run`, which holds those borrows);
// the input, weight and epilogue are only read, and concurrent `task` calls write
// disjoint output elements (`check` verified the output layout's strides), so sharing
// the job across rayon's threads is sound.
unsafe impl Sync for Job {}

impl Job {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        input: &[f32],
        input_layout: ImageLayout,
        prologue: Epilogue<'_>,
        weight: ConvWeight<'_>,
        shape: ConvShape,
        epilogue: Epilogue<'_>,
        out: &mut [f32],
        out_layout: ImageLayout,
    ) -> Self {
        // No overflow here or in the tasks: `check` computed the input and output
        // extents with checked arithmetic and bounded them by the slices, and every
        // offset below (taps, pixel indices, task counts) is smaller.
        let mut taps = [0; MAX_TAPS];
        for ky in 0..shape.kernel_h {
            for kx in 0..shape.kernel_w {
                taps[ky * shape.kernel_w + kx] =
                    ky * input_layout.row_stride + kx * input_layout.pixel_stride;
            }
        }
        let (scale, shift) = match epilogue {
            Epilogue::Store => (core::ptr::null(), core::ptr::null()),
            Epilogue::ScaleShiftRelu { scale, shift } => (scale.as_ptr(), shift.as_ptr()),
        };
        let prologue = match prologue {
            Epilogue::Store => (core::ptr::null(), core::ptr::null()),
            Epilogue::ScaleShiftRelu { scale, shift } => (scale.as_ptr(), shift.as_ptr()),
        };
        let (weight, panel_stride, ldb) = match weight {
            ConvWeight::Hwio(w) => (w.as_ptr(), PACK, shape.c_out),
            ConvWeight::Packed(w) => (w.as_slice().as_ptr(), w.rows() * PACK, PACK),
        };
        Self {
            input: input.as_ptr(),
            input_layout,
            prologue,
            weight,
            panel_stride,
            ldb,
            shape,
            scale,
            shift,
            out: out.as_mut_ptr(),
            out_layout,
            taps,
        }
    }

    /// Runs every task with `K`'s kernels, on rayon's threads when `parallel` and the
    /// convolution is large enough. Each output element is computed by one task in a
    /// fixed order, so results do not depend on the thread count.
    pub(super) fn run<K: Microkernel>(&self, parallel: bool) {
        // A kernel panel never straddles two packed panels.
        const { assert!(PACK.is_multiple_of(K::PANEL)) };
        // One task per output row, or per tile (see `Job::flat`): even a 7x7 map gives
        // two threads 4 tasks to share.
        let tasks = self.tasks::<K>();
        if parallel
            && self.shape.macs() >= PARALLEL_MACS
            && crate::parallel::current_num_threads() > 1
        {
            (0..tasks).into_par_iter().for_each(|t| self.task::<K>(t));
        } else {
            (0..tasks).for_each(|t| self.task::<K>(t));
        }
    }

    /// Whether tiles run over the batch's pixels in order, across rows and images
    /// (one task per tile), rather than within one output row (one task per row):
    /// a 1x1 convolution at stride 1 whose rows do not split into full tiles and
    /// whose tile inputs are packed (a prologue) or evenly spaced (a dense input).
    /// A 7x7 map then fills 14-pixel tiles (4 of 12–13 pixels instead of 7 of 7):
    /// 10–13% faster on DenseNet-121's 7x7 1x1 convolutions and transitions.
    fn flat<K: Microkernel>(&self) -> bool {
        let (s, il) = (self.shape, self.input_layout);
        let dense = il.row_stride == s.out_w * il.pixel_stride
            && (s.n == 1 || il.image_stride == s.out_h * il.row_stride);
        s.kernel_h * s.kernel_w == 1
            && s.stride == 1
            && s.out_w % K::TILE != 0
            && (!self.prologue.0.is_null() || dense)
    }

    /// How many tasks [`Job::task`] takes: tiles when [`Job::flat`], else rows.
    fn tasks<K: Microkernel>(&self) -> usize {
        let s = self.shape;
        if self.flat::<K>() {
            (s.n * s.out_h * s.out_w).div_ceil(K::TILE)
        } else {
            s.n * s.out_h
        }
    }

    /// Computes task `t` of [`Job::tasks`]: tile `t` of the batch's pixels in order,
    /// or output row `t` (image `t / out_h`, row `t % out_h`) tile by tile.
    fn task<K: Microkernel>(&self, t: usize) {
        let s = self.shape;
        let (il, ol) = (self.input_layout, self.out_layout);
        let mut pixels = Pixels {
            len: 0,
            input: [0; MAX_TILE],
            output: [0; MAX_TILE],
        };
        if self.flat::<K>() {
            let total = s.n * s.out_h * s.out_w;
            let (q0, len) = tile_span(total, t, self.tasks::<K>());
            pixels.len = len;
            let (mut b, mut y, mut x) = (
                q0 / (s.out_h * s.out_w),
                q0 / s.out_w % s.out_h,
                q0 % s.out_w,
            );
            for i in 0..len {
                pixels.input[i] = il.index(b, y, x, 0);
                pixels.output[i] = ol.index(b, y, x, 0);
                // The next pixel in order (no divisions per pixel).
                x += 1;
                if x == s.out_w {
                    x = 0;
                    y += 1;
                    if y == s.out_h {
                        y = 0;
                        b += 1;
                    }
                }
            }
            self.tile::<K>(&pixels);
        } else {
            let (b, oy) = (t / s.out_h, t % s.out_h);
            let tiles = s.out_w.div_ceil(K::TILE);
            for tile in 0..tiles {
                let (ox, len) = tile_span(s.out_w, tile, tiles);
                pixels.len = len;
                for i in 0..len {
                    let x = ox + i;
                    pixels.input[i] = il.index(b, oy * s.stride, x * s.stride, 0);
                    pixels.output[i] = ol.index(b, oy, x, 0);
                }
                self.tile::<K>(&pixels);
            }
        }
    }

    /// Computes the output pixels of one tile, block of input channels by block
    /// (1x1 only; see `MAX_BLOCK`) and within a block panel by panel: the tile's
    /// inputs stay in L1 while the weight panels stream from L2.
    fn tile<K: Microkernel>(&self, pixels: &Pixels) {
        let s = self.shape;
        let taps = &self.taps[..s.kernel_h * s.kernel_w];
        let len = pixels.len;
        let block = if taps.len() == 1 {
            (BLOCK_WEIGHT_FLOATS / s.c_out)
                .clamp(MIN_BLOCK, MAX_BLOCK)
                .min(s.c_in)
        } else {
            s.c_in
        };
        // Evenly spaced inputs (checked by `flat` or given by a row), unless packed.
        let a_step = if len > 1 {
            pixels.input[1] - pixels.input[0]
        } else {
            0
        };
        // With a prologue (1x1 only, so `block ≤ MAX_BLOCK`): the tile's transformed
        // inputs. Uninitialised: `pack_prologue` writes what the kernel then reads.
        let mut packed = [core::mem::MaybeUninit::<f32>::uninit(); MAX_TILE * MAX_BLOCK];
        for k0 in (0..s.c_in).step_by(block) {
            let kc = block.min(s.c_in - k0);
            let last = k0 + kc == s.c_in;
            let (a, a_step) = if self.prologue.0.is_null() {
                // SAFETY: pixel 0's input element at channel `k0 < c_in`: inside
                // the input block `check` bounded by `input.len()`.
                (unsafe { self.input.add(pixels.input[0] + k0) }, a_step)
            } else {
                // The prologue (a BatchNorm and ReLU before the conv) is applied
                // while the tile's block of input channels is copied to `packed`,
                // once for all panels.
                // SAFETY: the CPU has `K`'s instruction set (`run` checked it before
                // building the job). `len ≤ K::TILE` pixels.
                // Channels `k0 .. k0 + kc` of each pixel's one tap are inside the
                // input block `check` bounded by `input.len()`; `check` gave the
                // prologue `c_in` values, read at `k0 .. k0 + kc`; all are only
                // read while the job lives. `packed` holds
                // `MAX_TILE·MAX_BLOCK ≥ len·kc` values.
                unsafe {
                    K::pack_prologue(
                        self.input.add(k0),
                        &pixels.input[..len],
                        kc,
                        (self.prologue.0.add(k0), self.prologue.1.add(k0)),
                        packed.as_mut_ptr().cast(),
                    );
                }
                (packed.as_ptr().cast(), kc)
            };
            for co in (0..s.c_out).step_by(K::PANEL) {
                let width = (s.c_out - co).min(K::PANEL);
                let (scale, shift) = if last && !self.scale.is_null() {
                    // SAFETY: columns `co < c_out` of the `c_out` scale and shift.
                    unsafe { (self.scale.add(co), self.shift.add(co)) }
                } else {
                    (core::ptr::null(), core::ptr::null())
                };
                // SAFETY:
                // - The CPU has `K`'s instruction set: `run` checked it before
                //   building the job. `1 ≤ len ≤ K::TILE` (a tile span of at most
                //   `K::TILE`) and `1 ≤ width ≤ K::PANEL`.
                // - Reads: with a prologue, element `i·kc + ci < len·kc` of `packed`
                //   (one tap; `kc ≤ MAX_BLOCK`). Otherwise pixel `i < len` at tap
                //   `t`, channel `k0 + ci` with `ci < kc` (`k0 + kc ≤ c_in`) is input
                //   index `pixels.input[0] + i·a_step + taps[t] + k0 + ci` =
                //   `pixels.input[i] + taps[t] + k0 + ci` (evenly spaced, see
                //   `flat`), the element at tap `t` of an output pixel of the
                //   batch: inside the block `check` bounded by `input.len()`.
                //   Weight reads are rows `t·c_in + k0 + ci` of the
                //   `(taps·c_in) × c_out` weight (with one block, `k0 = 0` and
                //   `kc = c_in`; with several, one tap), columns
                //   `co .. co + width ≤ c_out` (the last vector masked to
                //   `width`), all in packed panel `co / PACK` (`co` is a multiple
                //   of `K::PANEL`, which divides `PACK`): `check` verified the HWIO
                //   length or the packed shape, so each lies inside the weight
                //   (see `Job::weight`); scale/shift reads are columns
                //   `co .. co + width`.
                // - Reads and writes: channels `co .. co + width` of output pixels
                //   `pixels.output[i]`, distinct pixels of the batch, inside the
                //   output block `check` bounded by the slice length; this task is
                //   the only one computing them (tasks partition the pixels), and
                //   `check` verified that distinct (b, y, x, c) are distinct memory,
                //   so tasks on other threads never touch these elements. A tile
                //   reads back (`accumulate`) only what this task wrote for the
                //   previous block.
                unsafe {
                    K::tile(
                        len,
                        width,
                        a,
                        a_step,
                        taps,
                        kc,
                        self.weight
                            .add((co / PACK) * self.panel_stride + co % PACK + k0 * self.ldb),
                        self.ldb,
                        (scale, shift),
                        self.out.add(co),
                        &pixels.output,
                        k0 > 0,
                    );
                }
            }
        }
    }
}

/// The pixels of one tile: `len` of them, each with the index of its input element
/// at tap 0, channel 0 and of its output element at channel 0.
struct Pixels {
    len: usize,
    input: [usize; MAX_TILE],
    output: [usize; MAX_TILE],
}
