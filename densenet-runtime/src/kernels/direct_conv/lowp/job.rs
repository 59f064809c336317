//! The part of the low-precision convolutions every instruction set shares: a call
//! split into tasks (output rows, or tiles of the batch's pixels in order) as the fp32
//! `job.rs` does, each tile's inputs packed once into the worker thread's scratch
//! (converted from f32 through the prologue, or copied with zero padding) or read in
//! place, then every panel of output channels computed over the whole depth by a
//! [`LowpKernel`] (`avx512_bf16.rs`, `avx512_vnni.rs`, `avx_vnni.rs`).

use std::cell::RefCell;

use crate::parallel::prelude::*;

use super::super::{tile_span, ConvShape, ImageLayout, MAX_TAPS, MAX_TILE, PARALLEL_MACS};
use super::panels::PANEL;
use super::MAX_PACKED_PIXELS;

/// An instruction set's register-tiled kernels for one precision.
pub(super) trait LowpKernel {
    /// An activation as the kernel multiplies it: `u16` (bf16 bits) or `u8`.
    type Act: Copy;
    /// A weight: `u16` (bf16 bits) or `i8`.
    type W: Copy;
    /// Input channels multiplied per 32-bit lane (2 for bf16, 4 for int8).
    const GROUP: usize;
    /// Output pixels per tile, at most [`MAX_TILE`].
    const TILE: usize;
    /// Output channels per panel; divides the weight's 32-column panels.
    const PANEL: usize;

    /// Writes input pixel `i < offsets.len()`'s channels `ci < c_in` (at
    /// `src + offsets[i] + ci`, f32 or bf16 widened to f32), through the prologue
    /// `relu(scale[ci]·x + shift[ci])` (multiply, then add) when `prologue` is not
    /// null, converted to [`Self::Act`] (int8: `clamp(round(x·inv_scale), 0, 255)`,
    /// NaN to 0; bf16: rounded to nearest even, `inv_scale` unused) to
    /// `dst[i·c_pad + ci]`, and zeros to channels `c_in .. c_pad`.
    ///
    /// # Safety
    ///
    /// The CPU has the instruction set; the `offsets.len() × c_in` inputs, `c_in`
    /// values of each of the prologue's `scale` and `shift` (unless null), and
    /// `offsets.len()·c_pad` values at `dst` are valid (the last for writes);
    /// `c_in ≤ c_pad < c_in + GROUP`.
    unsafe fn pack(
        src: Wide,
        offsets: &[usize],
        c_in: usize,
        c_pad: usize,
        prologue: (*const f32, *const f32),
        inv_scale: f32,
        dst: *mut Self::Act,
    );

    /// Computes a `rows`-pixel × `width`-channel output tile over every tap and
    /// group of input channels, applies `post` and stores it. Pixel `i` reads the
    /// `GROUP` activations at `a + i·a_step + taps[t] + GROUP·g`; the weights of tap
    /// `t`, group `g` are the row at `b + (t·groups + g)·ldb`, of which the tile reads
    /// `GROUP` values per column for its `PANEL` columns; output pixel `i`, channel
    /// `j` is `out + c_offsets[i] + j`.
    ///
    /// # Safety
    ///
    /// The CPU has the instruction set; `1 ≤ rows ≤ TILE`, `1 ≤ width ≤ PANEL`; every
    /// address described above, for `i < rows`, `t < taps.len()`, `g < groups`, the
    /// `PANEL` columns of the weights (the panel is padded) and the `width` columns of
    /// `post`'s per-channel values and of the output, is valid to read, or for the
    /// outputs to write, and no other thread accesses those outputs during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        rows: usize,
        width: usize,
        a: *const Self::Act,
        a_step: usize,
        taps: &[usize],
        groups: usize,
        b: *const Self::W,
        ldb: usize,
        post: &Post,
        out: Out,
        c_offsets: &[usize; MAX_TILE],
    );
}

/// What happens to a tile's sums before they are stored, with per-channel pointers at
/// the tile's first output channel.
#[derive(Clone, Copy, Debug)]
pub(super) struct Post {
    /// int8: the weight's per-channel scales (null for bf16). The sums are first
    /// `y = f32(acc) · (act_scale · weight_scale[j])`.
    pub(super) weight_scale: *const f32,
    /// int8: the activations' scale.
    pub(super) act_scale: f32,
    /// The epilogue's `relu(fma(y, scale[j], shift[j]))` (both null: none).
    pub(super) scale: *const f32,
    /// See `scale`.
    pub(super) shift: *const f32,
    /// A u8 output stores `clamp(round(y·out_inv_scale), 0, 255)`.
    pub(super) out_inv_scale: f32,
}

impl Post {
    /// The same at `co` output channels further (null pointers stay null). Safe to
    /// form; the kernels read only the channels their contract grants.
    fn at(&self, co: usize) -> Post {
        let at = |p: *const f32| if p.is_null() { p } else { p.wrapping_add(co) };
        Post {
            weight_scale: at(self.weight_scale),
            scale: at(self.scale),
            shift: at(self.shift),
            ..*self
        }
    }
}

/// Where a tile's outputs go (channel 0 of output element 0; offsets in elements).
#[derive(Clone, Copy, Debug)]
pub(super) enum Out {
    /// f32 values.
    F32(*mut f32),
    /// bf16 bits, rounded to nearest even.
    Bf16(*mut u16),
    /// u8, requantized.
    U8(*mut u8),
    /// The raw i32 sums (int8, no epilogue).
    I32(*mut i32),
}

impl Out {
    /// The same `n` elements further. Safe to form; the kernels write only the
    /// elements their contract grants.
    fn add(self, n: usize) -> Out {
        match self {
            Out::F32(p) => Out::F32(p.wrapping_add(n)),
            Out::Bf16(p) => Out::Bf16(p.wrapping_add(n)),
            Out::U8(p) => Out::U8(p.wrapping_add(n)),
            Out::I32(p) => Out::I32(p.wrapping_add(n)),
        }
    }
}

/// Activations stored wider than the kernel multiplies them, converted while a
/// tile's inputs are packed.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wide {
    /// f32 values.
    F32(*const f32),
    /// bf16 bits (a dense block's buffer stored in bf16), widened to f32 exactly.
    Bf16(*const u16),
}

impl Wide {
    /// Bytes an element takes.
    fn size(self) -> usize {
        match self {
            Wide::F32(_) => 4,
            Wide::Bf16(_) => 2,
        }
    }

    /// The address of element `i` as bytes (never dereferenced here; `wrapping_add`
    /// keeps the arithmetic defined for hints).
    fn byte_address(self, i: usize) -> *const u8 {
        match self {
            Wide::F32(p) => p.wrapping_add(i).cast(),
            Wide::Bf16(p) => p.wrapping_add(i).cast(),
        }
    }
}

/// A call's input.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source<A> {
    /// f32 or bf16, converted while packing after the prologue (null pointers: none),
    /// with `inv_scale` (int8's `1 / scale_a`).
    Wide {
        data: Wide,
        prologue: (*const f32, *const f32),
        inv_scale: f32,
    },
    /// Already converted.
    Act(*const A),
}

/// Everything a task needs, as raw pointers (the tasks of one call write disjoint
/// outputs; see the SAFETY comment in [`Job::tile`]).
pub(super) struct Job<K: LowpKernel> {
    source: Source<K::Act>,
    input_layout: ImageLayout,
    /// The weight's panels (`Panels::as_slice`), `rows` rows of `PANEL·GROUP` each.
    weight: *const K::W,
    rows: usize,
    shape: ConvShape,
    post: Post,
    out: Out,
    out_layout: ImageLayout,
    /// Offsets of the taps in the input image.
    taps: [usize; MAX_TAPS],
    /// Whether tiles prefetch their outputs ([`Job::prefetch_outputs`]).
    prefetch_out: bool,
    /// Whether tiles prefetch the next tile's inputs ([`Job::prefetch_next_inputs`]).
    prefetch_in: bool,
}

/// Bytes of output span from which tiles prefetch their outputs: below, the outputs
/// mostly stay in L2 and the prefetches cost 1-3% (measured on 14x14 maps); above
/// (56x56 maps, a 3x3 writing into a dense block's buffer) they save 12-30%.
const PREFETCH_OUT_BYTES: usize = 1 << 20;

/// Bytes of f32 input span from which a 1x1 convolution's tiles prefetch the next
/// tile's inputs: a block buffer's pixels are a kilobyte or more apart, which the
/// hardware prefetchers miss, so packing a tile waited on each pixel's cache lines (27%
/// of the bf16 pack's time on its first load). Below about L2's size the inputs mostly
/// stay cached and the hints cost more than they save (measured, bf16 and int8
/// alternating at batch 8: 56x56 maps, 3.2 MiB an image, 13% faster, 28x28 and 14x14
/// maps 5-10% slower).
const PREFETCH_IN_BYTES: usize = 2 << 20;

// SAFETY: `Job` only carries pointers derived from the borrows passed to `new`, which
// outlive every use (the job lives inside the entry point, which holds those borrows);
// the input, weight and per-channel values are only read, and concurrent `task` calls
// write disjoint output elements (`validate` verified the output layout's strides), so
// sharing the job across rayon's threads is sound.
unsafe impl<K: LowpKernel> Sync for Job<K> {}

thread_local! {
    /// The packed inputs of the tile this thread computes (u64 for alignment; viewed
    /// as `K::Act`). Grows to the largest call's need, never shrinks.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl<K: LowpKernel> Job<K> {
    /// A job over slices that `validate` accepted for `shape` (and whose weight has
    /// `rows` rows per panel and a multiple of [`PANEL`] columns).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        source: Source<K::Act>,
        input_layout: ImageLayout,
        weight: &[K::W],
        rows: usize,
        shape: ConvShape,
        post: Post,
        out: Out,
        out_layout: ImageLayout,
    ) -> Self {
        // No overflow here or in the tasks: `validate` bounded the input and output
        // extents by the slices, and every offset below is smaller.
        let mut taps = [0; MAX_TAPS];
        for ky in 0..shape.kernel_h {
            for kx in 0..shape.kernel_w {
                taps[ky * shape.kernel_w + kx] =
                    ky * input_layout.row_stride + kx * input_layout.pixel_stride;
            }
        }
        let size = match out {
            Out::F32(_) | Out::I32(_) => 4,
            Out::Bf16(_) => 2,
            Out::U8(_) => 1,
        };
        let span = out_layout.end(shape.n, shape.out_h, shape.out_w, shape.c_out);
        let in_span = input_layout.end(shape.n, shape.out_h, shape.out_w, shape.c_in);
        let pointwise = shape.kernel_h * shape.kernel_w == 1 && shape.stride == 1;
        Self {
            source,
            input_layout,
            weight: weight.as_ptr(),
            rows,
            shape,
            post,
            out,
            out_layout,
            taps,
            prefetch_out: span.is_some_and(|end| {
                end.saturating_sub(out_layout.offset) * size >= PREFETCH_OUT_BYTES
            }),
            prefetch_in: match source {
                Source::Wide { data, .. } => {
                    pointwise
                        && in_span.is_some_and(|end| {
                            end.saturating_sub(input_layout.offset) * data.size()
                                >= PREFETCH_IN_BYTES
                        })
                }
                Source::Act(_) => false,
            },
        }
    }

    /// Runs every task, on rayon's threads when `parallel` and the convolution is large
    /// enough. Each output element is computed by one task in a fixed order, so results
    /// do not depend on the thread count.
    ///
    /// # Safety
    ///
    /// The CPU has `K`'s instruction set.
    pub(super) unsafe fn run(&self, parallel: bool) {
        const { assert!(PANEL.is_multiple_of(K::PANEL) && K::TILE <= MAX_TILE) };
        let tasks = self.tasks();
        if parallel
            && self.shape.macs() >= PARALLEL_MACS
            && crate::parallel::current_num_threads() > 1
        {
            (0..tasks).into_par_iter().for_each(|t| self.task(t));
        } else {
            (0..tasks).for_each(|t| self.task(t));
        }
    }

    /// Whether the input is read in place: already converted, with whole groups of
    /// channels (otherwise a group would reach into the next pixel).
    fn in_place(&self) -> bool {
        matches!(self.source, Source::Act(_)) && self.shape.c_in.is_multiple_of(K::GROUP)
    }

    /// Whether tiles run over the batch's pixels in order, across rows and images
    /// (one task per tile), rather than within one output row: a 1x1 convolution at
    /// stride 1 whose rows do not split into full tiles, with packed inputs or evenly
    /// spaced ones (as the fp32 `Job::flat`).
    fn flat(&self) -> bool {
        let (s, il) = (self.shape, self.input_layout);
        let dense = il.row_stride == s.out_w * il.pixel_stride
            && (s.n == 1 || il.image_stride == s.out_h * il.row_stride);
        s.kernel_h * s.kernel_w == 1
            && s.stride == 1
            && !s.out_w.is_multiple_of(K::TILE)
            && (!self.in_place() || dense)
    }

    /// How many tasks [`Job::task`] takes: tiles when [`Job::flat`], else rows.
    fn tasks(&self) -> usize {
        let s = self.shape;
        if self.flat() {
            (s.n * s.out_h * s.out_w).div_ceil(K::TILE)
        } else {
            s.n * s.out_h
        }
    }

    /// Computes task `t`: tile `t` of the batch's pixels in order, or output row `t`
    /// (image `t / out_h`, row `t % out_h`) tile by tile, with this thread's scratch.
    fn task(&self, t: usize) {
        let s = self.shape;
        let (il, ol) = (self.input_layout, self.out_layout);
        let mut tile = Tile {
            len: 0,
            input: [0; MAX_TILE],
            output: [0; MAX_TILE],
        };
        let mut with_scratch = |scratch: &mut Vec<u64>| {
            if self.flat() {
                let total = s.n * s.out_h * s.out_w;
                let (q0, len) = tile_span(total, t, self.tasks());
                tile.len = len;
                let (mut b, mut y, mut x) = (
                    q0 / (s.out_h * s.out_w),
                    q0 / s.out_w % s.out_h,
                    q0 % s.out_w,
                );
                for i in 0..len {
                    tile.input[i] = il.index(b, y, x, 0);
                    tile.output[i] = ol.index(b, y, x, 0);
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
                self.tile(&tile, scratch);
            } else {
                let (b, oy) = (t / s.out_h, t % s.out_h);
                let tiles = s.out_w.div_ceil(K::TILE);
                for k in 0..tiles {
                    let (ox, len) = tile_span(s.out_w, k, tiles);
                    tile.len = len;
                    for i in 0..len {
                        let x = ox + i;
                        tile.input[i] = il.index(b, oy * s.stride, x * s.stride, 0);
                        tile.output[i] = ol.index(b, oy, x, 0);
                    }
                    self.tile(&tile, scratch);
                }
            }
        };
        // The scratch is held only while this task's tiles run, which call nothing
        // that could run another task on this thread; a fresh vector all the same if
        // it is ever held.
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => with_scratch(&mut scratch),
            Err(_) => with_scratch(&mut Vec::new()),
        });
    }

    /// Packs the inputs of `tile` into `scratch` if they are not read in place, then
    /// computes its output channels panel by panel over the whole depth.
    fn tile(&self, tile: &Tile, scratch: &mut Vec<u64>) {
        let s = self.shape;
        let n_taps = s.kernel_h * s.kernel_w;
        let len = tile.len;
        let c_pad = s.c_in.div_ceil(K::GROUP) * K::GROUP;
        let groups = c_pad / K::GROUP;
        let mut taps = [0usize; MAX_TAPS];
        let (a, a_step): (*const K::Act, usize) = if self.in_place() {
            taps[..n_taps].copy_from_slice(&self.taps[..n_taps]);
            let a_step = if len > 1 {
                tile.input[1] - tile.input[0]
            } else {
                0
            };
            let Source::Act(input) = self.source else {
                unreachable!("in_place reads converted inputs")
            };
            // SAFETY: pixel 0's input element at tap 0, channel 0: inside the input
            // block `validate` bounded by the input's length.
            (unsafe { input.add(tile.input[0]) }, a_step)
        } else {
            // The pixels to pack, as input offsets: each pixel's window once ("patch":
            // `kh` rows of the tile's input columns, shared by neighbouring outputs)
            // or each output pixel's window in turn (im2col, for strides that skip
            // columns), whichever is smaller; a 1x1's tile is its pixels either way.
            let mut offsets = [0usize; MAX_PACKED_PIXELS];
            let il = self.input_layout;
            let patch_w = (len - 1) * s.stride + s.kernel_w;
            let (count, a_step) = if n_taps > 1 && s.kernel_h * patch_w <= len * n_taps {
                // Rows `0..kh` of the tile's window, columns `0..patch_w` from pixel 0.
                let mut n = 0;
                for ky in 0..s.kernel_h {
                    for x in 0..patch_w {
                        offsets[n] = tile.input[0] + ky * il.row_stride + x * il.pixel_stride;
                        n += 1;
                    }
                }
                for ky in 0..s.kernel_h {
                    for kx in 0..s.kernel_w {
                        taps[ky * s.kernel_w + kx] = (ky * patch_w + kx) * c_pad;
                    }
                }
                (n, s.stride * c_pad)
            } else {
                for i in 0..len {
                    for t in 0..n_taps {
                        offsets[i * n_taps + t] = tile.input[i] + self.taps[t];
                    }
                }
                for (t, tap) in taps[..n_taps].iter_mut().enumerate() {
                    *tap = t * c_pad;
                }
                (len * n_taps, n_taps * c_pad)
            };
            let values = count * c_pad;
            let words = (values * std::mem::size_of::<K::Act>()).div_ceil(8);
            if scratch.len() < words {
                scratch.resize(words, 0);
            }
            let dst = scratch.as_mut_ptr().cast::<K::Act>();
            match self.source {
                Source::Wide {
                    data,
                    prologue,
                    inv_scale,
                } => {
                    // SAFETY: the CPU has `K`'s instruction set (`run`'s contract).
                    // Every offset is an input pixel of the tile's windows (a tap of
                    // an output pixel of the batch), whose `c_in` channels lie in the
                    // block `validate` bounded by the input's length; the prologue
                    // has `c_in` values (`validate`); `scratch` holds
                    // `count·c_pad` activations, and `c_pad − c_in < GROUP`.
                    unsafe {
                        K::pack(
                            data,
                            &offsets[..count],
                            s.c_in,
                            c_pad,
                            prologue,
                            inv_scale,
                            dst,
                        )
                    }
                }
                Source::Act(input) => {
                    for (i, &offset) in offsets[..count].iter().enumerate() {
                        // SAFETY: as above: `c_in` input values at `offset`, and
                        // `c_pad` scratch values at `i·c_pad` (`i < count`), in
                        // different allocations. The padding is written with zeros
                        // through the same in-bounds pointer.
                        unsafe {
                            let d = dst.add(i * c_pad);
                            std::ptr::copy_nonoverlapping(input.add(offset), d, s.c_in);
                            for c in s.c_in..c_pad {
                                // Zero bits: 0u8, or bf16 +0.0.
                                std::ptr::write_bytes(d.add(c), 0, 1);
                            }
                        }
                    }
                }
            }
            (dst.cast_const(), a_step)
        };
        let ldb = PANEL * K::GROUP;
        let panels = s.c_out.div_ceil(K::PANEL);
        for co in (0..s.c_out).step_by(K::PANEL) {
            let width = (s.c_out - co).min(K::PANEL);
            if self.prefetch_out {
                self.prefetch_outputs(tile, co, width);
            }
            if self.prefetch_in {
                self.prefetch_next_inputs(tile, co / K::PANEL, panels);
            }
            // SAFETY:
            // - The CPU has `K`'s instruction set (`run`'s contract); `1 ≤ len ≤
            //   K::TILE` (a tile span of at most `K::TILE`), `1 ≤ width ≤ K::PANEL`.
            // - Activation reads: packed, the `count·c_pad` values just written, at
            //   `i·a_step + taps[t] + GROUP·g` with `g < c_pad / GROUP` (the patch or
            //   im2col layout above, whose largest such index is the last packed
            //   pixel's last group). In place (`c_in` a multiple of `GROUP`, so
            //   `c_pad = c_in`): `tile.input[0] + i·a_step + taps[t] + ci` =
            //   `tile.input[i] + taps[t] + ci` (evenly spaced: a row's tiles, or
            //   `flat`'s dense input), `ci < c_in`: the input block `validate`
            //   bounded by the input's length.
            // - Weight reads: panel `co / PANEL` (the weight has `⌈c_out / 32⌉`
            //   panels of `rows = taps·groups` rows of `ldb` values), columns
            //   `co % PANEL .. + K::PANEL`, all rows: inside the panel, padded to 32
            //   columns. `post`'s per-channel values: `c_out` of each (`validate`, and
            //   the weight's `c_out` scales), read at `co .. co + width`.
            // - Writes: channels `co .. co + width` of output pixels `tile.output[i]`,
            //   distinct pixels of the batch inside the output block `validate`
            //   bounded by the output's length; this task is the only one computing
            //   them (tasks partition the pixels), and `validate` verified that
            //   distinct (b, y, x, c) are distinct memory.
            unsafe {
                K::tile(
                    len,
                    width,
                    a,
                    a_step,
                    &taps[..n_taps],
                    groups,
                    self.weight
                        .add((co / PANEL) * self.rows * ldb + (co % PANEL) * K::GROUP),
                    ldb,
                    &self.post.at(co),
                    self.out.add(co),
                    &tile.output,
                );
            }
        }
    }
}

impl<K: LowpKernel> Job<K> {
    /// Prefetches part `part` of `parts` of the wide inputs of the `tile.len` pixels
    /// after `tile`'s last one, one pixel stride apart: the next tile of its row, or of
    /// the batch's pixels in order (where rows and images are dense; elsewhere a hint
    /// wasted). Spread over the panels so the requests overlap the tile's products.
    fn prefetch_next_inputs(&self, tile: &Tile, part: usize, parts: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let Source::Wide { data, .. } = self.source else {
            return;
        };
        let (len, c_in) = (tile.len, self.shape.c_in);
        let lines = (c_in * data.size()).div_ceil(64);
        let total = len * lines;
        let (from, to) = (part * total / parts, (part + 1) * total / parts);
        let stride = self.input_layout.pixel_stride;
        // Hints that never fault; `wrapping_add` keeps the arithmetic defined.
        let pixel = |p: usize| data.byte_address(tile.input[len - 1].wrapping_add(p * stride));
        let (mut p, mut line) = (1 + from / lines, from % lines);
        let mut at = pixel(p);
        for _ in from..to {
            // SAFETY: SSE is in x86-64's baseline, and a prefetch reads nothing and
            // never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line * 64).cast()) };
            line += 1;
            if line == lines {
                (p, line) = (p + 1, 0);
                at = pixel(p);
            }
        }
    }

    /// Asks for the cache lines of the tile's outputs `co .. co + width` with intent to
    /// write, before the panel's sums are computed: outputs written into a wide buffer
    /// (a 3x3's 32 channels of a dense block's pixels, 1-4 KiB apart) are otherwise
    /// rarely in cache, and the stores waited for them (measured in one process,
    /// alternating: a 3x3 at 56x56 into a 256-channel buffer 12% faster with it, a 1x1
    /// at 56x56 17%).
    fn prefetch_outputs(&self, tile: &Tile, co: usize, width: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        let (base, size) = match self.out {
            Out::F32(p) => (p.cast::<u8>(), 4),
            Out::Bf16(p) => (p.cast::<u8>(), 2),
            Out::U8(p) => (p, 1),
            Out::I32(p) => (p.cast::<u8>(), 4),
        };
        for &offset in &tile.output[..tile.len] {
            // A hint that never faults; `wrapping_add` keeps the arithmetic defined.
            let first = base.wrapping_add((offset + co) * size);
            for line in (0..width * size).step_by(64) {
                // SAFETY: SSE is in x86-64's baseline, and a prefetch (PREFETCHW, a
                // no-op where the CPU lacks it) reads nothing and never faults.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(first.wrapping_add(line).cast()) };
            }
        }
    }
}

/// The pixels of one tile: `len` of them, each with the index of its input element at
/// tap 0, channel 0 and of its output element at channel 0.
struct Tile {
    len: usize,
    input: [usize; MAX_TILE],
    output: [usize; MAX_TILE],
}
