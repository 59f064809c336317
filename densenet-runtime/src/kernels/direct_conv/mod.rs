//! Direct convolution of zero-padded NHWC images by register-tiled AVX-512 or AVX2
//! microkernels.
//!
//! im2col copies every input value `kh·kw` times before the GEMM reads it again; on
//! DenseNet's 3x3 convolutions that copy costs about as much as the product itself.
//! Here the GEMM's left matrix is never built: a tile of up to 14 consecutive output
//! pixels of one output row (for a 1x1 convolution on maps narrower than a tile, of the
//! batch's pixels in order) × up to 32 output channels accumulates in 28 of the 32 zmm
//! registers (AVX2: 6 pixels × 16 channels in 12 of 16 ymm) while the kernel walks the taps and input channels, broadcasting input
//! values straight from the image and loading weight rows, each prefetched a few rows
//! ahead: from an HWIO weight (its `kh·kw·c_in` rows are the GEMM's right matrix
//! already), or from the panel-major layout (`packed.rs`) in which `Conv2d` stores
//! weights wider than one panel, whose panels stream sequentially.
//!
//! Padding is the caller's: the input must carry its zero border (the runtime writes
//! BN-ReLU outputs into padded buffers at no extra cost), so the kernel has no edge
//! cases. Inputs and outputs are strided ([`ImageLayout`]), so a kernel can read a padded
//! buffer and write a column range of a dense block's concatenation buffer, or the
//! interior of the next padded buffer.
//!
//! An optional epilogue applies a per-channel `relu(scale·x + shift)` before the store:
//! a BatchNorm and ReLU that follow the convolution (DenseNet-B's `norm2`) cost nothing.
//!
//! [`direct_conv`] is the checked entry point: it picks the instruction set at run time
//! and returns `false` without touching the output when the CPU has neither (the caller
//! then takes the im2col + GEMM path), and [`direct_conv_reference`] is the plain-loop
//! oracle of the tests, which run every kernel the CPU has against it. The layout:
//! `job.rs` splits a call into tasks and tiles for any instruction set; `avx512.rs` and
//! `avx2.rs` hold the register-tiled kernels; `packed.rs` the panel-major weight.

use core::sync::atomic::{AtomicBool, Ordering};

/// Where element `(image, row, column, channel)` of an NHWC image batch lives in a slice:
/// `offset + image·image_stride + row·row_stride + column·pixel_stride + channel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    /// Index of element `(0, 0, 0, 0)`.
    pub offset: usize,
    /// Distance between images.
    pub image_stride: usize,
    /// Distance between rows of one image.
    pub row_stride: usize,
    /// Distance between neighbouring pixels of one row.
    pub pixel_stride: usize,
}

impl ImageLayout {
    /// A contiguous `(n, h, w, c)` NHWC batch.
    pub fn dense(h: usize, w: usize, c: usize) -> Self {
        Self {
            offset: 0,
            image_stride: h * w * c,
            row_stride: w * c,
            pixel_stride: c,
        }
    }

    /// Index of `(b, y, x, ch)`.
    fn index(&self, b: usize, y: usize, x: usize, ch: usize) -> usize {
        self.offset + b * self.image_stride + y * self.row_stride + x * self.pixel_stride + ch
    }

    /// One past the largest index of an `(n, h, w, c)` block, or `None` on overflow.
    fn end(&self, n: usize, h: usize, w: usize, c: usize) -> Option<usize> {
        if n == 0 || h == 0 || w == 0 || c == 0 {
            return Some(0);
        }
        let last = (n - 1)
            .checked_mul(self.image_stride)?
            .checked_add((h - 1).checked_mul(self.row_stride)?)?
            .checked_add((w - 1).checked_mul(self.pixel_stride)?)?
            .checked_add(c - 1)?
            .checked_add(self.offset)?;
        last.checked_add(1)
    }
}

/// Shape of a convolution: the output grid and the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Images.
    pub n: usize,
    /// Output rows per image.
    pub out_h: usize,
    /// Output columns per image.
    pub out_w: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Window height.
    pub kernel_h: usize,
    /// Window width.
    pub kernel_w: usize,
    /// Step between windows (both axes); the input is already padded.
    pub stride: usize,
}

impl ConvShape {
    /// Multiply-adds of the whole convolution, saturating at `usize::MAX` (a shape that
    /// large is refused by [`direct_conv`]; see [`ConvShape::checked_macs`]).
    pub fn macs(&self) -> usize {
        self.checked_macs().unwrap_or(usize::MAX)
    }

    /// Multiply-adds of the whole convolution, or `None` if the count overflows `usize`
    /// (0 whenever a size is 0, however large the others).
    pub fn checked_macs(&self) -> Option<usize> {
        let sizes = [
            self.n,
            self.out_h,
            self.out_w,
            self.c_out,
            self.kernel_h,
            self.kernel_w,
            self.c_in,
        ];
        if sizes.contains(&0) {
            return Some(0);
        }
        sizes.into_iter().try_fold(1usize, usize::checked_mul)
    }
}

/// What happens to an accumulated output value before it is stored.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// Stored as is.
    Store,
    /// `relu(scale[co]·x + shift[co])`: a folded BatchNorm and a ReLU ([`relu`]).
    ScaleShiftRelu {
        /// Per-output-channel scale, `c_out` values.
        scale: &'a [f32],
        /// Per-output-channel shift, `c_out` values.
        shift: &'a [f32],
    },
}

/// The runtime's ReLU: `y <= 0 → 0`; NaN stays NaN (as torch), -0.0 becomes 0.0.
pub fn relu(y: f32) -> f32 {
    if y <= 0.0 {
        0.0
    } else {
        y
    }
}

/// Applies `epilogue` in place to the `rows × scale.len()` matrix at `data` with row
/// stride `row_stride`: what the portable paths do after their GEMM.
///
/// # Panics
///
/// If the rows reach past `data` (a caller bug).
#[track_caller]
pub fn apply_epilogue(epilogue: Epilogue<'_>, data: &mut [f32], rows: usize, row_stride: usize) {
    let Epilogue::ScaleShiftRelu { scale, shift } = epilogue else {
        return;
    };
    if rows == 0 {
        return;
    }
    // The last row's end, computed without wrapping (no row index below can then wrap).
    let end = (rows - 1)
        .checked_mul(row_stride)
        .and_then(|start| start.checked_add(scale.len()));
    if end.is_none_or(|end| end > data.len()) {
        bad_epilogue_rows(rows, row_stride, data.len());
    }
    for r in 0..rows {
        let row = &mut data[r * row_stride..][..scale.len()];
        for ((v, &s), &t) in row.iter_mut().zip(scale).zip(shift) {
            *v = relu(*v * s + t);
        }
    }
}

/// Most output pixels per tile of any kernel (the AVX-512 one's).
#[cfg_attr(
    not(any(
        all(target_arch = "x86_64", target_feature = "sse2"),
        target_feature = "simd128"
    )),
    allow(dead_code)
)]
const MAX_TILE: usize = 14;
/// Largest block of input channels of a 1x1 convolution: a tile's block of inputs
/// (14 KiB, packed when there is a prologue) stays in L1 while every panel of the
/// weight rows streams past it from L2; the tile accumulates block by block. Also the
/// size of the buffer a prologue packs into.
#[cfg_attr(
    not(any(
        all(target_arch = "x86_64", target_feature = "sse2"),
        target_feature = "simd128"
    )),
    allow(dead_code)
)]
const MAX_BLOCK: usize = 256;
/// Smallest block of input channels of a 1x1 convolution (more would cost more
/// accumulator round trips than they save).
#[cfg_attr(
    not(any(
        all(target_arch = "x86_64", target_feature = "sse2"),
        target_feature = "simd128"
    )),
    allow(dead_code)
)]
const MIN_BLOCK: usize = 64;
/// Weight floats (`block × c_out`, 128 KiB) a 1x1 convolution's block spans, which
/// every tile streams from L2: wider convolutions take fewer input channels per block
/// (DenseNet-121's transitions, 128–512 outputs: 9% faster than 256-channel blocks).
#[cfg_attr(
    not(any(
        all(target_arch = "x86_64", target_feature = "sse2"),
        target_feature = "simd128"
    )),
    allow(dead_code)
)]
const BLOCK_WEIGHT_FLOATS: usize = 32 * 1024;
/// How many weight rows ahead the tile kernel prefetches (~170 cycles of a 14x32
/// tile's multiply-adds: about an L3 hit's latency).
// Used by the x86-64 kernels (WebAssembly has no prefetch).
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "sse2")),
    allow(dead_code)
)]
const PREFETCH_ROWS: usize = 12;
/// Largest window the kernel takes (the 7x7 stem); others fall back.
const MAX_TAPS: usize = 49;
/// Convolutions with fewer multiply-adds run on the calling thread: splitting ~10 µs
/// of work across threads costs about as much as it saves.
#[cfg_attr(
    not(any(
        all(target_arch = "x86_64", target_feature = "sse2"),
        target_feature = "simd128"
    )),
    allow(dead_code)
)]
const PARALLEL_MACS: usize = 1 << 20;

/// Set by [`force_portable`].
static PORTABLE: AtomicBool = AtomicBool::new(false);
/// Set by [`force_avx2`].
static AVX2_ONLY: AtomicBool = AtomicBool::new(false);
/// Set by [`force_direct`].
static DIRECT_ONLY: AtomicBool = AtomicBool::new(false);

/// Makes [`available`] false (or true again, where the CPU allows) for the whole
/// process, so the portable im2col + GEMM paths run even on an AVX-512 CPU: for tests
/// and benchmarks of those paths.
pub fn force_portable(portable: bool) {
    PORTABLE.store(portable, Ordering::Relaxed);
}

/// Makes [`direct_conv`] use its AVX2 kernels even on a CPU with AVX-512 (or its best
/// again), for the whole process: for tests and benchmarks of the AVX2 path.
pub fn force_avx2(avx2: bool) {
    AVX2_ONLY.store(avx2, Ordering::Relaxed);
}

/// Makes [`direct_conv`] run 3x3 convolutions on the direct kernel even where its
/// Winograd path applies (or lets it choose again), for the whole process: for tests
/// and benchmarks of both.
pub fn force_direct(direct: bool) {
    DIRECT_ONLY.store(direct, Ordering::Relaxed);
}

/// The instruction sets [`direct_conv`] has kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::kernels) enum Isa {
    /// AVX-512F: 14-pixel × 32-channel tiles.
    Avx512,
    /// AVX2 and FMA: 6-pixel × 16-channel tiles.
    Avx2,
    /// WebAssembly SIMD128 (a `wasm32` build with `target-feature=+simd128`): 6-pixel ×
    /// 8-channel tiles.
    Simd128,
}

/// The best instruction set of this CPU that [`direct_conv`] has kernels for (detected
/// at run time), as limited by [`force_portable`] and [`force_avx2`].
pub(in crate::kernels) fn isa() -> Option<Isa> {
    if PORTABLE.load(Ordering::Relaxed) {
        return None;
    }
    if supported(Isa::Avx512) && !AVX2_ONLY.load(Ordering::Relaxed) {
        return Some(Isa::Avx512);
    }
    if supported(Isa::Simd128) {
        return Some(Isa::Simd128);
    }
    supported(Isa::Avx2).then_some(Isa::Avx2)
}

/// Whether this CPU runs `isa`'s kernels (detected at run time, cached by std; without
/// std, the build's target features).
fn supported(isa: Isa) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        match isa {
            Isa::Avx512 => super::cpu::avx512f(),
            Isa::Avx2 => super::cpu::avx2_fma(),
            Isa::Simd128 => false,
        }
    }
    // WebAssembly has no run-time detection: SIMD128 is in the build or not.
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        isa == Isa::Simd128 && cfg!(all(target_arch = "wasm32", target_feature = "simd128"))
    }
}

/// Whether [`direct_conv`] runs on this CPU (AVX-512F, or AVX2 with FMA, detected at
/// run time; WebAssembly SIMD128 in a build for it), unless [`force_portable`] turned
/// it off.
pub fn available() -> bool {
    isa().is_some()
}

#[cold]
#[inline(never)]
#[track_caller]
fn bad_epilogue_rows(rows: usize, row_stride: usize, len: usize) -> ! {
    panic!("apply_epilogue: {rows} rows {row_stride} apart do not fit in {len} values")
}

/// The ways a call's geometry can be wrong (caller bugs, reported by panic).
#[cold]
#[inline(never)]
#[track_caller]
fn bad_geometry(what: &str) -> ! {
    panic!("direct_conv: {what}")
}

/// Checks every index the convolution will touch against the slices, and that distinct
/// output elements are distinct memory (threads write disjoint tiles). Every size derived
/// from the caller's values is computed with checked arithmetic: a geometry whose sizes
/// overflow `usize` is refused like any other bad geometry (unchecked, a huge stride
/// wrapped the input extent to a small number, the bounds check passed, and the kernels
/// read outside the input). Once it returns, the products the kernels form (taps, tiles,
/// element indices) are bounded by the sizes checked here and cannot overflow.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn check(
    input: &[f32],
    input_layout: ImageLayout,
    prologue: Epilogue<'_>,
    weight: ConvWeight<'_>,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out_len: usize,
    out_layout: ImageLayout,
) {
    let s = shape;
    if s.stride == 0 || s.kernel_h == 0 || s.kernel_w == 0 {
        bad_geometry("stride and kernel must be at least 1");
    }
    let Some(taps) = s.kernel_h.checked_mul(s.kernel_w) else {
        bad_geometry("the window's size kernel_h·kernel_w overflows usize")
    };
    let Some(macs) = s.checked_macs() else {
        bad_geometry(
            "the convolution's size n·out_h·out_w·c_out·kernel_h·kernel_w·c_in overflows usize",
        )
    };
    if let Epilogue::ScaleShiftRelu { scale, shift } = prologue {
        if taps != 1 {
            bad_geometry("a prologue needs a 1x1 convolution");
        }
        if scale.len() != s.c_in || shift.len() != s.c_in {
            bad_geometry("prologue scale and shift need c_in values");
        }
    }
    // `None` (overflow) matches no slice length or packed row count.
    let rows = taps.checked_mul(s.c_in);
    match weight {
        ConvWeight::Hwio(w) if rows.and_then(|r| r.checked_mul(s.c_out)) != Some(w.len()) => {
            bad_geometry("weight is not [kernel_h, kernel_w, c_in, c_out]")
        }
        ConvWeight::Packed(w) if (Some(w.rows()), w.c_out()) != (rows, s.c_out) => {
            bad_geometry("packed weight is not (kernel_h·kernel_w·c_in) × c_out")
        }
        _ => {}
    }
    if let Epilogue::ScaleShiftRelu { scale, shift } = epilogue {
        if scale.len() != s.c_out || shift.len() != s.c_out {
            bad_geometry("epilogue scale and shift need c_out values");
        }
    }
    if macs == 0 {
        return;
    }
    // Sizes are nonzero here. The input extent `(out − 1)·stride + kernel` per axis.
    let extent = |out: usize, kernel: usize| (out - 1).checked_mul(s.stride)?.checked_add(kernel);
    let (Some(in_h), Some(in_w)) = (extent(s.out_h, s.kernel_h), extent(s.out_w, s.kernel_w))
    else {
        bad_geometry("the input extent (out − 1)·stride + kernel overflows usize")
    };
    match input_layout.end(s.n, in_h, in_w, s.c_in) {
        Some(end) if end <= input.len() => {}
        _ => bad_geometry("input layout reaches past the input slice"),
    }
    check_output(s, out_len, out_layout);
}

/// What the Winograd paths read and write, checked before their `unsafe` code runs: the
/// input block ([`WinogradInput::check`]), an HWIO 3x3 weight of `9·c_in·c_out` values,
/// and the `(n, out_h, out_w, c_out)` block at `out_layout` inside `out_len` floats
/// (for the weight gradient, `dy`'s).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[track_caller]
fn check_winograd(
    input: WinogradInput<'_>,
    weight: &[f32],
    s: &ConvShape,
    out_len: usize,
    out_layout: ImageLayout,
) {
    input.check(s);
    let weight_len = s.c_in.checked_mul(s.c_out).and_then(|p| p.checked_mul(9));
    if s.kernel_h != 3 || s.kernel_w != 3 || weight_len != Some(weight.len()) {
        bad_geometry("weight is not [3, 3, c_in, c_out]");
    }
    check_output(*s, out_len, out_layout);
}

/// The output half of [`check`]: the `(n, out_h, out_w, c_out)` block at `out_layout`
/// lies inside `out_len` floats, and distinct outputs are distinct memory.
#[track_caller]
fn check_output(s: ConvShape, out_len: usize, out_layout: ImageLayout) {
    match out_layout.end(s.n, s.out_h, s.out_w, s.c_out) {
        Some(end) if end <= out_len => {}
        _ => bad_geometry("output layout reaches past the output slice"),
    }
    let o = out_layout;
    // No overflow below: `end` bounded each of these sums by `out_len`.
    let disjoint = (s.out_w == 1 || o.pixel_stride >= s.c_out)
        && (s.out_h == 1 || o.row_stride >= (s.out_w - 1) * o.pixel_stride + s.c_out)
        && (s.n == 1
            || o.image_stride
                >= (s.out_h - 1) * o.row_stride + (s.out_w - 1) * o.pixel_stride + s.c_out);
    if !disjoint {
        bad_geometry("output layout makes distinct outputs overlap");
    }
}

/// The convolution by plain loops (f64 accumulation, the prologue applied in f32 as the
/// kernel does): the oracle [`direct_conv`] is tested against. Same arguments and panics.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn direct_conv_reference(
    input: &[f32],
    input_layout: ImageLayout,
    prologue: Epilogue<'_>,
    weight: &[f32],
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    out_layout: ImageLayout,
) {
    check(
        input,
        input_layout,
        prologue,
        ConvWeight::Hwio(weight),
        shape,
        epilogue,
        out.len(),
        out_layout,
    );
    let s = shape;
    // Nothing to compute; a size of 0 beside a huge one would otherwise spin through
    // the huge one's loop (found by `tests/fuzz.rs`).
    if s.macs() == 0 {
        return;
    }
    for b in 0..s.n {
        for oy in 0..s.out_h {
            for ox in 0..s.out_w {
                for co in 0..s.c_out {
                    let mut acc = 0.0f64;
                    for ky in 0..s.kernel_h {
                        for kx in 0..s.kernel_w {
                            for ci in 0..s.c_in {
                                let x = input[input_layout.index(
                                    b,
                                    oy * s.stride + ky,
                                    ox * s.stride + kx,
                                    ci,
                                )];
                                let x = match prologue {
                                    Epilogue::Store => x,
                                    Epilogue::ScaleShiftRelu { scale, shift } => {
                                        relu(x * scale[ci] + shift[ci])
                                    }
                                };
                                let w =
                                    weight[((ky * s.kernel_w + kx) * s.c_in + ci) * s.c_out + co];
                                acc += f64::from(x) * f64::from(w);
                            }
                        }
                    }
                    let v = match epilogue {
                        Epilogue::Store => acc as f32,
                        Epilogue::ScaleShiftRelu { scale, shift } => {
                            relu(scale[co] * acc as f32 + shift[co])
                        }
                    };
                    out[out_layout.index(b, oy, ox, co)] = v;
                }
            }
        }
    }
}

/// Convolves `input` (NHWC, already zero-padded, at `input_layout`; for a 1x1
/// convolution, each value first goes through `prologue`, e.g. the BatchNorm and ReLU
/// before the conv) with `weight` (HWIO `[kernel_h, kernel_w, c_in, c_out]`, or packed
/// panel-major: [`PackedWeight`]) into `out`
/// at `out_layout`, applying `epilogue`; elements of `out` outside the layout's `(n, out_h, out_w, c_out)` block
/// are not touched. Large convolutions use rayon's threads (`parallel`), one output
/// row (or one tile, see `Job::flat`) per task; each output element is computed by one thread in a fixed order, so
/// results do not depend on the thread count.
///
/// Returns `false`, touching nothing, when the CPU has neither AVX-512 nor AVX2 + FMA, or the window has more
/// than 49 taps: the caller then uses its portable path.
///
/// # Panics
///
/// If the layouts reach outside the slices, distinct output elements would overlap, or
/// the weight, scale or shift lengths do not match `shape`, or a prologue is given for a
/// convolution that is not 1x1 (caller bugs).
// A kernel's flat argument list: every piece is a different buffer or geometry.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn direct_conv(
    input: &[f32],
    input_layout: ImageLayout,
    prologue: Epilogue<'_>,
    weight: ConvWeight<'_>,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    out_layout: ImageLayout,
    parallel: bool,
) -> bool {
    run(
        isa(),
        !DIRECT_ONLY.load(Ordering::Relaxed),
        input,
        input_layout,
        prologue,
        weight,
        shape,
        epilogue,
        out,
        out_layout,
        parallel,
    )
}

/// Convolves `input` (zero-padded, or before its BN-ReLU: [`WinogradInput`]) with the
/// HWIO 3x3 `weight` into `out` at `out_layout` by Winograd F(2x2, 3x3), for shapes
/// [`direct_conv`] does not send there itself: any number of outputs and at least 32
/// input channels (a multiple of 16), stride 1, an even output at least 14 wide, no
/// epilogue. The training step's 3x3 input gradients (32 → 128 channels in
/// DenseNet-121) run here, and its forward 3x3s read their bottleneck's output through
/// BN-ReLU here: 2.25x fewer multiply-adds than the direct kernel's. Results do not
/// depend on the thread count.
///
/// Returns `false`, touching nothing, when the shape does not fit, the CPU lacks
/// AVX-512F, or [`force_direct`] is on: the caller runs [`direct_conv`].
///
/// # Panics
///
/// As [`direct_conv`]'s, for layouts or a weight that do not fit the slices.
#[track_caller]
pub fn winograd_conv(
    input: WinogradInput<'_>,
    weight: &[f32],
    shape: ConvShape,
    out: &mut [f32],
    out_layout: ImageLayout,
    parallel: bool,
) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if isa() == Some(Isa::Avx512) && !DIRECT_ONLY.load(Ordering::Relaxed) && winograd::fits(&shape)
    {
        winograd::run(input, weight, shape, out, out_layout, parallel);
        return true;
    }
    let _ = (input, weight, shape, out, out_layout, parallel);
    false
}

/// Prepares [`winograd_conv`] calls of `shape` to run on up to `threads` threads at
/// once, each call on one thread (`parallel` false), without allocating: their
/// per-task buffers and transformed weights come from shared lists, which this tops
/// up. (A call that runs on the threads itself tops up its tasks' buffers.) Nothing
/// where Winograd does not run.
pub fn winograd_reserve(shape: &ConvShape, threads: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if isa() == Some(Isa::Avx512) && !DIRECT_ONLY.load(Ordering::Relaxed) && winograd::fits(shape) {
        winograd::reserve_calls(shape, threads);
    }
    let _ = (shape, threads);
}

/// Whether a caller with a BN-ReLU before the conv does better through
/// [`winograd_conv`] with [`WinogradInput::BnRelu`] than by writing the BN-ReLU map and
/// running [`direct_conv`] over it (on AVX-512F, [`force_direct`] off): DenseNet's
/// 3x3s of at most 32 outputs, at least 32 inputs (a multiple of 16), on an even map at
/// least 16 wide, or 14 where the CPU's AVX-512 runs at half width and the call has
/// enough tasks. By the shape and the CPU only, never the thread count, so that a
/// training step that asks computes the same bits on any number of threads.
pub fn winograd_applies(shape: &ConvShape) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return isa() == Some(Isa::Avx512)
        && !DIRECT_ONLY.load(Ordering::Relaxed)
        && winograd::takes_before_bn_relu(shape);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        let _ = shape;
        false
    }
}

/// Floats of the scratch [`winograd_weight_gradient`] needs for `shape`, or `None` where
/// it does not run: a shape it does not take (see there), a CPU without AVX-512F, or
/// [`force_direct`] on.
pub fn winograd_weight_gradient_scratch(shape: &ConvShape) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if isa() == Some(Isa::Avx512)
        && !DIRECT_ONLY.load(Ordering::Relaxed)
        && winograd_gradient::fits(shape)
    {
        return winograd_gradient::scratch_floats(shape);
    }
    let _ = shape;
    None
}

/// The input of a 3x3 convolution as its Winograd paths read it ([`winograd_conv`],
/// [`winograd_weight_gradient`]).
#[derive(Clone, Copy, Debug)]
pub enum WinogradInput<'a> {
    /// Zero-padded by 1: `(n, out_h + 2, out_w + 2, c_in)` at `layout`.
    Padded {
        /// The values.
        data: &'a [f32],
        /// Where each pixel is.
        layout: ImageLayout,
    },
    /// Before a BatchNorm-ReLU and the padding: `(n, out_h, out_w, c_in)` at `layout`,
    /// each value `v` read as `relu(v·scale + shift)` of its channel (the same rounding
    /// and ReLU as the runtime's BN-ReLU passes) and the border as zeros. A training
    /// step's 3x3 reads its bottleneck's output so, forward and backward, instead of a
    /// BN-ReLU map computed and padded first.
    BnRelu {
        /// The values.
        data: &'a [f32],
        /// Where each pixel is.
        layout: ImageLayout,
        /// The BatchNorm's scale per channel.
        scale: &'a [f32],
        /// The BatchNorm's shift per channel.
        shift: &'a [f32],
    },
}

impl WinogradInput<'_> {
    /// Checks that the block a 3x3 convolution of `s` reads lies inside the slice (for
    /// `Padded`, `(n, out_h + 2, out_w + 2, c_in)`; for `BnRelu`, `(n, out_h, out_w,
    /// c_in)`, with `c_in` values of scale and shift), sizes computed with checked
    /// arithmetic.
    #[track_caller]
    fn check(&self, s: &ConvShape) {
        let (data, layout, (h, w)) = match *self {
            WinogradInput::Padded { data, layout } => {
                let (Some(h), Some(w)) = (s.out_h.checked_add(2), s.out_w.checked_add(2)) else {
                    bad_geometry("the input extent out + 2 overflows usize")
                };
                (data, layout, (h, w))
            }
            WinogradInput::BnRelu {
                data,
                layout,
                scale,
                shift,
            } => {
                if scale.len() != s.c_in || shift.len() != s.c_in {
                    bad_geometry("prologue scale and shift need c_in values");
                }
                (data, layout, (s.out_h, s.out_w))
            }
        };
        match layout.end(s.n, h, w, s.c_in) {
            Some(end) if end <= data.len() => {}
            _ => bad_geometry("input layout reaches past the input slice"),
        }
    }
}

/// `dw ← Σ input ⋆ dy`: the HWIO weight gradient of a stride-1 3x3 convolution, from its
/// input (zero-padded, or before its BN-ReLU: [`WinogradInput`]) and its
/// output gradient (`(n, out_h, out_w, c_out)` at `dy_layout`), by Winograd F(3x3, 2x2):
/// 2.25x fewer multiply-adds than the nine per-tap products. Takes an even output
/// (whole 2x2 tiles) and a multiple of 16 input channels; `scratch` holds
/// [`winograd_weight_gradient_scratch`] floats. Results do not depend on the thread
/// count.
///
/// Returns `false`, touching nothing, where that scratch size is `None`: the caller
/// computes the gradient another way.
///
/// # Panics
///
/// If the layouts reach past their slices, `scale` or `shift` is not `c_in` long, `dw`
/// is not `9·c_in·c_out` long or `scratch` is too short.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn winograd_weight_gradient(
    input: WinogradInput<'_>,
    dy: &[f32],
    dy_layout: ImageLayout,
    shape: ConvShape,
    dw: &mut [f32],
    scratch: &mut [f32],
    parallel: bool,
) -> bool {
    if winograd_weight_gradient_scratch(&shape).is_none() {
        return false;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    winograd_gradient::run(input, dy, dy_layout, shape, dw, scratch, parallel);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    let _ = (input, dy, dy_layout, dw, scratch, parallel);
    true
}

/// [`direct_conv`] on the kernels of `isa` (and, with `winograd`, on the Winograd path
/// where it applies): the same checks and panics, then `false`, touching nothing, when
/// `isa` is `None`, the CPU lacks it, or the window has more than 49 taps.
#[allow(clippy::too_many_arguments)]
#[track_caller]
fn run(
    isa: Option<Isa>,
    winograd: bool,
    input: &[f32],
    input_layout: ImageLayout,
    prologue: Epilogue<'_>,
    weight: ConvWeight<'_>,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
    out_layout: ImageLayout,
    parallel: bool,
) -> bool {
    check(
        input,
        input_layout,
        prologue,
        weight,
        shape,
        epilogue,
        out.len(),
        out_layout,
    );
    let Some(isa) = isa.filter(|&isa| supported(isa)) else {
        return false;
    };
    // `check` refused a window whose size overflows.
    if shape.kernel_h * shape.kernel_w > MAX_TAPS {
        return false;
    }
    if shape.macs() == 0 {
        return true;
    }
    #[cfg(any(
        all(target_arch = "x86_64", target_feature = "sse2"),
        all(target_arch = "wasm32", target_feature = "simd128")
    ))]
    {
        // DenseNet's 3x3 convolutions (no prologue or epilogue, HWIO: at most 32
        // outputs) on AVX-512, but for the last block's odd maps.
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        if let (Isa::Avx512, true, Epilogue::Store, Epilogue::Store, ConvWeight::Hwio(w)) =
            (isa, winograd, prologue, epilogue, weight)
        {
            if winograd::takes(&shape, parallel) {
                let input = WinogradInput::Padded {
                    data: input,
                    layout: input_layout,
                };
                winograd::run(input, w, shape, out, out_layout, parallel);
                return true;
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        let _ = winograd;
        let job = job::Job::new(
            input,
            input_layout,
            prologue,
            weight,
            shape,
            epilogue,
            out,
            out_layout,
        );
        match isa {
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            Isa::Avx512 => job.run::<avx512::Avx512>(parallel),
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            Isa::Avx2 => job.run::<avx2::Avx2>(parallel),
            #[cfg(target_arch = "wasm32")]
            Isa::Simd128 => job.run::<simd128::Simd128>(parallel),
            // `supported` holds only for this build's instruction sets.
            #[allow(unreachable_patterns)]
            _ => unreachable!("{isa:?} is not this build's"),
        }
    }
    #[cfg(not(any(
        all(target_arch = "x86_64", target_feature = "sse2"),
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    let _ = (
        isa,
        winograd,
        input,
        input_layout,
        prologue,
        weight,
        epilogue,
        out,
        out_layout,
        parallel,
    );
    true
}

/// Splits a row of `w` pixels into tiles of at most [`MAX_TILE`], as even as possible
/// (56 → 4 × 14, 32 → 11 + 11 + 10): `(start, len)` of tile `t` of `count`.
#[cfg_attr(
    not(any(
        all(target_arch = "x86_64", target_feature = "sse2"),
        target_feature = "simd128"
    )),
    allow(dead_code)
)]
fn tile_span(w: usize, t: usize, count: usize) -> (usize, usize) {
    let base = w / count;
    let extra = w % count;
    let start = t * base + t.min(extra);
    (start, base + usize::from(t < extra))
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(in crate::kernels) mod avx2;
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod avx512;
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(in crate::kernels) mod bf16_lanes;
#[cfg(any(
    all(target_arch = "x86_64", target_feature = "sse2"),
    all(target_arch = "wasm32", target_feature = "simd128")
))]
mod job;
// bf16 and int8 kernels (issue 15); they use thread-local scratch, so `std` only.
#[cfg(feature = "std")]
pub mod lowp;
mod packed;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod winograd;
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod winograd_gradient;

pub use packed::{ConvWeight, PackedWeight, PACK};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
        (0..len).map(|_| rng.normal()).collect()
    }

    /// Runs both paths on a random case and compares every element of the output
    /// slice, including those outside the layout (which must be left alone).
    #[allow(clippy::too_many_arguments)]
    fn case(
        shape: ConvShape,
        in_extra: (usize, usize),
        out_pixel_stride: usize,
        out_offset: usize,
        out_pad: usize,
        with_epilogue: bool,
        parallel: bool,
        seed: u64,
    ) {
        case_with(
            shape,
            in_extra,
            out_pixel_stride,
            out_offset,
            out_pad,
            with_epilogue,
            false,
            parallel,
            seed,
        )
    }

    /// [`case`], optionally with a prologue (1x1 only).
    #[allow(clippy::too_many_arguments)]
    fn case_with(
        shape: ConvShape,
        in_extra: (usize, usize),
        out_pixel_stride: usize,
        out_offset: usize,
        out_pad: usize,
        with_epilogue: bool,
        with_prologue: bool,
        parallel: bool,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let s = shape;
        let in_h = (s.out_h - 1) * s.stride + s.kernel_h;
        let in_w = (s.out_w - 1) * s.stride + s.kernel_w;
        // Input pixels with `in_extra.0` spare channels, rows with `in_extra.1` spare
        // pixels, images 5 floats apart; `(0, 0)`: a dense batch (which 1x1 convolutions
        // tile across rows and images).
        let pixel = s.c_in + in_extra.0;
        let row = (in_w + in_extra.1) * pixel;
        let (offset, gap) = if in_extra == (0, 0) { (0, 0) } else { (3, 5) };
        let input_layout = ImageLayout {
            offset,
            image_stride: in_h * row + gap,
            row_stride: row,
            pixel_stride: pixel,
        };
        let input = random(offset + s.n * (in_h * row + gap), &mut rng);
        let weight = random(s.kernel_h * s.kernel_w * s.c_in * s.c_out, &mut rng);
        let scale = random(s.c_out, &mut rng);
        let shift = random(s.c_out, &mut rng);
        let (pro_scale, pro_shift) = (random(s.c_in, &mut rng), random(s.c_in, &mut rng));
        let prologue = if with_prologue {
            Epilogue::ScaleShiftRelu {
                scale: &pro_scale,
                shift: &pro_shift,
            }
        } else {
            Epilogue::Store
        };
        let epilogue = if with_epilogue {
            Epilogue::ScaleShiftRelu {
                scale: &scale,
                shift: &shift,
            }
        } else {
            Epilogue::Store
        };
        let ow = s.out_w + 2 * out_pad;
        let out_layout = ImageLayout {
            offset: out_offset + (ow + 1) * out_pad * out_pixel_stride,
            image_stride: (s.out_h + 2 * out_pad) * ow * out_pixel_stride,
            row_stride: ow * out_pixel_stride,
            pixel_stride: out_pixel_stride,
        };
        let len = out_offset + s.n * out_layout.image_stride;
        let sentinel = random(len, &mut rng);
        let mut expected = sentinel.clone();
        direct_conv_reference(
            &input,
            input_layout,
            prologue,
            &weight,
            s,
            epilogue,
            &mut expected,
            out_layout,
        );
        // Every instruction set this CPU has kernels for, each against the oracle.
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|&isa| supported(isa))
            .collect();
        if isas.is_empty() {
            eprintln!("no AVX-512 or AVX2 here: nothing to compare");
        }
        // Each with the weight as stored (HWIO) and packed panel-major, and with the
        // Winograd path allowed (where it applies) or not.
        let taps = s.kernel_h * s.kernel_w;
        let packed = PackedWeight::from_hwio(&weight, taps * s.c_in, s.c_out);
        let weights = [ConvWeight::Hwio(&weight), ConvWeight::Packed(&packed)];
        let variants = isas.into_iter().flat_map(|i| {
            weights
                .into_iter()
                .flat_map(move |w| [false, true].map(|winograd| (i, w, winograd)))
        });
        for (isa, weight, winograd) in variants {
            let mut actual = sentinel.clone();
            let ran = run(
                Some(isa),
                winograd,
                &input,
                input_layout,
                prologue,
                weight,
                s,
                epilogue,
                &mut actual,
                out_layout,
                parallel,
            );
            assert!(ran, "{isa:?} declined {shape:?}");
            let k = (taps * s.c_in) as f32;
            let layout = match weight {
                ConvWeight::Hwio(_) => "HWIO",
                ConvWeight::Packed(_) => "packed",
            };
            let layout = if winograd {
                format!("{layout}, Winograd allowed")
            } else {
                layout.to_owned()
            };
            for (i, (&e, &a)) in expected.iter().zip(&actual).enumerate() {
                let tol = 1e-5 * k.sqrt() * e.abs().max(1.0);
                assert!(
                    (e - a).abs() <= tol,
                    "{isa:?} {layout} {shape:?}: element {i}: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn winograd_conv_matches_reference_on_training_shapes() {
        // The input gradients of DenseNet-121's 3x3s (dy's 32 channels into 128), a
        // masked last panel (40 outputs), 48 inputs, into a strided output; one and two
        // threads' worth of tasks. Where the CPU lacks AVX-512F it declines.
        let mut rng = Rng::new(77);
        for (n, hw, c_in, c_out, pixel_out, parallel) in [
            (2, 14, 32, 128, 128, true),
            (1, 28, 32, 128, 128, false),
            (1, 16, 32, 40, 56, true),
            (1, 56, 48, 72, 72, true),
        ] {
            let s = ConvShape {
                n,
                out_h: hw,
                out_w: hw,
                c_in,
                c_out,
                kernel_h: 3,
                kernel_w: 3,
                stride: 1,
            };
            let il = ImageLayout::dense(hw + 2, hw + 2, c_in);
            let ol = ImageLayout::dense(hw, hw, pixel_out);
            let input = random(n * (hw + 2) * (hw + 2) * c_in, &mut rng);
            let weight = random(9 * c_in * c_out, &mut rng);
            let sentinel = random(n * hw * hw * pixel_out, &mut rng);
            let mut expected = sentinel.clone();
            direct_conv_reference(
                &input,
                il,
                Epilogue::Store,
                &weight,
                s,
                Epilogue::Store,
                &mut expected,
                ol,
            );
            let mut actual = sentinel.clone();
            let padded = WinogradInput::Padded {
                data: &input,
                layout: il,
            };
            let ran = winograd_conv(padded, &weight, s, &mut actual, ol, parallel);
            assert_eq!(ran, supported(Isa::Avx512), "{s:?}");
            if !ran {
                continue;
            }
            // The same conv of a BN-ReLU map, given the map padded or the values before
            // it (unpadded, strided): the same bits (the border zero, the same rounding).
            let pixel_z = c_in + 8;
            let zl = ImageLayout::dense(hw, hw, pixel_z);
            let z = random(n * hw * hw * pixel_z, &mut rng);
            let (scale, shift) = (random(c_in, &mut rng), random(c_in, &mut rng));
            let mut map = vec![0.0; input.len()];
            for (b, y, x) in
                (0..n).flat_map(|b| (0..hw).flat_map(move |y| (0..hw).map(move |x| (b, y, x))))
            {
                let (at, to) = (zl.index(b, y, x, 0), il.index(b, y + 1, x + 1, 0));
                let dst = &mut map[to..to + c_in];
                crate::kernels::elementwise::scale_shift_relu(
                    &z[at..at + c_in],
                    &scale,
                    &shift,
                    dst,
                );
            }
            let (mut via_map, mut fused) = (sentinel.clone(), sentinel.clone());
            let padded = WinogradInput::Padded {
                data: &map,
                layout: il,
            };
            assert!(winograd_conv(
                padded,
                &weight,
                s,
                &mut via_map,
                ol,
                parallel
            ));
            let bn_relu = WinogradInput::BnRelu {
                data: &z,
                layout: zl,
                scale: &scale,
                shift: &shift,
            };
            assert!(winograd_conv(bn_relu, &weight, s, &mut fused, ol, parallel));
            assert!(fused == via_map, "{s:?}: BN-ReLU read as the tiles go");
            let k = (9 * c_in) as f32;
            for (i, (&e, &a)) in expected.iter().zip(&actual).enumerate() {
                let tol = 1e-5 * k.sqrt() * e.abs().max(1.0);
                assert!((e - a).abs() <= tol, "{s:?}: element {i}: {a} vs {e}");
            }
        }
        // Shapes it does not take: 16 inputs, an odd map, stride 2.
        let mut out = vec![0.0; 7 * 7 * 8];
        let odd = ConvShape {
            n: 1,
            out_h: 7,
            out_w: 7,
            c_in: 32,
            c_out: 8,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
        };
        let input = vec![0.0; 9 * 9 * 32];
        let weight = vec![0.0; 9 * 32 * 8];
        let (il, ol) = (ImageLayout::dense(9, 9, 32), ImageLayout::dense(7, 7, 8));
        let input = WinogradInput::Padded {
            data: &input,
            layout: il,
        };
        assert!(!winograd_conv(input, &weight, odd, &mut out, ol, false));
    }

    /// `dW[a][b][ci][co] = Σ x[n][y + a][x + b][ci]·dy[n][y][x][co]` in f64.
    fn weight_gradient_reference(
        input: &[f32],
        il: ImageLayout,
        dy: &[f32],
        dl: ImageLayout,
        s: ConvShape,
    ) -> Vec<f64> {
        let mut dw = vec![0.0; 9 * s.c_in * s.c_out];
        for b in 0..s.n {
            for y in 0..s.out_h {
                for x in 0..s.out_w {
                    for tap in 0..9 {
                        for ci in 0..s.c_in {
                            let v = f64::from(input[il.index(b, y + tap / 3, x + tap % 3, ci)]);
                            let row = &mut dw[(tap * s.c_in + ci) * s.c_out..][..s.c_out];
                            for (co, d) in row.iter_mut().enumerate() {
                                *d += v * f64::from(dy[dl.index(b, y, x, co)]);
                            }
                        }
                    }
                }
            }
        }
        dw
    }

    #[test]
    fn winograd_weight_gradient_matches_reference() {
        // DenseNet-121's 3x3 weight gradients (128 inputs, 32 outputs) at 14x14 and
        // 28x28 (several tasks, a partial last chunk), DenseNet-BC's (48 inputs, 12
        // outputs: a masked vector) at 8x8, a non-square map, strided layouts; the same
        // bits on one and two threads. Where the CPU lacks AVX-512F it declines.
        let mut rng = Rng::new(91);
        for (n, (h, w), c_in, c_out, pixel_in, pixel_dy) in [
            (2, (14, 14), 128, 32, 128, 32),
            (3, (28, 28), 128, 32, 136, 40),
            (5, (8, 8), 48, 12, 48, 12),
            (1, (6, 10), 16, 40, 16, 40),
        ] {
            let s = ConvShape {
                n,
                out_h: h,
                out_w: w,
                c_in,
                c_out,
                kernel_h: 3,
                kernel_w: 3,
                stride: 1,
            };
            let il = ImageLayout::dense(h + 2, w + 2, pixel_in);
            let dl = ImageLayout::dense(h, w, pixel_dy);
            let input = random(n * (h + 2) * (w + 2) * pixel_in, &mut rng);
            let dy = random(n * h * w * pixel_dy, &mut rng);
            let expected = weight_gradient_reference(&input, il, &dy, dl, s);
            let Some(len) = winograd_weight_gradient_scratch(&s) else {
                assert!(!supported(Isa::Avx512), "{s:?} declined");
                continue;
            };
            let run = |threads: usize, input: WinogradInput<'_>| {
                let mut dw = random(9 * c_in * c_out, &mut Rng::new(5));
                let mut scratch = vec![f32::NAN; len];
                // (Without threads, both runs are the one-thread run.)
                #[cfg(feature = "parallel")]
                let ran = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| {
                        winograd_weight_gradient(input, &dy, dl, s, &mut dw, &mut scratch, true)
                    });
                #[cfg(not(feature = "parallel"))]
                let ran = {
                    let _ = threads;
                    winograd_weight_gradient(input, &dy, dl, s, &mut dw, &mut scratch, true)
                };
                assert!(ran, "{s:?}");
                dw
            };
            let padded = WinogradInput::Padded {
                data: &input,
                layout: il,
            };
            let (one, two) = (run(1, padded), run(2, padded));
            assert_eq!(one, two, "{s:?}: one and two threads differ");
            // The same input given before a BN-ReLU (pixel stride `pixel_in`, unpadded):
            // the same bits as its BN-ReLU map padded (the border zero).
            let z = random(n * h * w * pixel_in, &mut rng);
            let zl = ImageLayout::dense(h, w, pixel_in);
            let (scale, shift) = (random(c_in, &mut rng), random(c_in, &mut rng));
            let mut bn_relu = vec![0.0; input.len()];
            for (b, y, x) in
                (0..n).flat_map(|b| (0..h).flat_map(move |y| (0..w).map(move |x| (b, y, x))))
            {
                let at = zl.index(b, y, x, 0);
                let to = il.index(b, y + 1, x + 1, 0);
                let dst = &mut bn_relu[to..to + c_in];
                crate::kernels::elementwise::scale_shift_relu(
                    &z[at..at + c_in],
                    &scale,
                    &shift,
                    dst,
                );
            }
            assert!(bn_relu.iter().filter(|&&v| v == 0.0).count() > bn_relu.len() / 4);
            let via_map = run(
                1,
                WinogradInput::Padded {
                    data: &bn_relu,
                    layout: il,
                },
            );
            let fused = WinogradInput::BnRelu {
                data: &z,
                layout: zl,
                scale: &scale,
                shift: &shift,
            };
            assert_eq!(
                run(2, fused),
                via_map,
                "{s:?}: BN-ReLU read as the tiles go"
            );
            // Sums of `n·h·w` products of values below 1, in f32.
            let scale = expected.iter().fold(0.0f64, |m, e| m.max(e.abs()));
            for (i, (&e, &a)) in expected.iter().zip(&one).enumerate() {
                assert!(
                    (e - f64::from(a)).abs() <= 2e-6 * scale.max(1.0),
                    "{s:?}: element {i}: {a} vs {e}"
                );
            }
        }
        // Shapes it does not take: an odd map, 24 inputs, a 5x5 or strided window.
        let base = ConvShape {
            n: 1,
            out_h: 8,
            out_w: 8,
            c_in: 32,
            c_out: 8,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
        };
        for s in [
            ConvShape { out_h: 7, ..base },
            ConvShape { c_in: 24, ..base },
            ConvShape {
                kernel_h: 5,
                kernel_w: 5,
                ..base
            },
            ConvShape { stride: 2, ..base },
        ] {
            assert_eq!(winograd_weight_gradient_scratch(&s), None, "{s:?}");
            let mut dw = vec![0.0; s.kernel_h * s.kernel_w * s.c_in * s.c_out];
            let input = WinogradInput::Padded {
                data: &[],
                layout: ImageLayout::dense(10, 10, s.c_in),
            };
            assert!(!winograd_weight_gradient(
                input,
                &[],
                ImageLayout::dense(8, 8, s.c_out),
                s,
                &mut dw,
                &mut [],
                false
            ));
        }
    }

    #[test]
    fn matches_reference_on_densenet_shapes() {
        // 3x3 over a padded 56-wide map into 32 columns of a 256-wide block buffer.
        let conv3 = |n, hw, c_in, c_out| ConvShape {
            n,
            out_h: hw,
            out_w: hw,
            c_in,
            c_out,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
        };
        case(conv3(1, 56, 128, 32), (0, 0), 256, 96, 0, false, true, 1);
        case(conv3(2, 7, 128, 32), (0, 0), 1024, 512, 0, false, true, 2);
        // 14 and 18 wide: Winograd tasks of two rows of 7 tiles (the last of the 7 rows
        // alone), and of one row of 9.
        case(conv3(2, 14, 128, 32), (0, 0), 512, 160, 0, false, true, 14);
        case(conv3(1, 18, 64, 24), (0, 0), 24, 0, 0, false, false, 15);
        // CIFAR growth 12 (one masked vector) and 40 (two panels, the second masked).
        case(conv3(3, 8, 48, 12), (0, 0), 60, 36, 0, false, false, 3);
        case(conv3(1, 32, 24, 40), (0, 0), 40, 0, 0, false, true, 4);
        // 1x1 bottleneck with BN-ReLU epilogue into the interior of a padded buffer.
        let conv1 = ConvShape {
            kernel_h: 1,
            kernel_w: 1,
            ..conv3(2, 14, 96, 128)
        };
        case(conv1, (0, 0), 128, 0, 1, true, true, 5);
        // 1x1 over two blocks of input channels (256 + 44, the prologue's last vector
        // masked), a masked last panel, and the epilogue only after the last block.
        let wide = ConvShape {
            c_in: 300,
            c_out: 40,
            ..conv1
        };
        case(wide, (5, 3), 44, 1, 0, true, false, 8);
        case(wide, (0, 0), 40, 0, 1, false, true, 9);
        // The bottleneck as the runtime runs it: norm1 + ReLU as the prologue over the
        // first 96 channels of a 256-wide block buffer, norm2 + ReLU as the epilogue
        // into a padded map; and a prologue over several channel blocks.
        case_with(conv1, (160, 0), 128, 0, 1, true, true, true, 10);
        case_with(wide, (7, 1), 40, 3, 0, false, true, false, 11);
        // 7x7 maps, whose 1x1 convolutions tile across rows and images (13 + 12 + 12 +
        // 12 pixels per image, 11 tiles for 3 images): a dense input with a masked
        // panel; and a bottleneck's prologue and padded output.
        let small = ConvShape {
            n: 3,
            out_h: 7,
            out_w: 7,
            c_in: 40,
            c_out: 48,
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
        };
        case(small, (0, 0), 56, 2, 0, true, false, 12);
        case(small, (0, 0), 48, 0, 0, false, true, 13);
        let small_bottleneck = ConvShape {
            n: 2,
            c_in: 70,
            c_out: 128,
            ..small
        };
        case_with(small_bottleneck, (26, 0), 128, 0, 1, true, true, false, 14);
        case_with(small_bottleneck, (0, 0), 128, 0, 1, true, true, true, 15);
        // A wide 1x1 (300 outputs): blocks of 32768 / 300 = 109 input channels (109 +
        // 91), not a multiple of a vector, with and without a prologue.
        let transition = ConvShape {
            n: 1,
            out_h: 3,
            out_w: 5,
            c_in: 200,
            c_out: 300,
            ..small
        };
        case(transition, (0, 0), 300, 0, 0, false, true, 16);
        case_with(transition, (4, 1), 310, 5, 0, true, true, false, 17);
        // The Winograd path's shapes: a batch over strided inputs, 12 outputs (masked)
        // into a column range, 15 tiles a row (two GEMM row groups); 64 input channels
        // at 28x28 into a padded map; three images at 32x28 over rows with spare pixels.
        case(conv3(2, 30, 64, 12), (3, 2), 20, 5, 0, false, true, 18);
        case(conv3(1, 28, 64, 32), (0, 0), 32, 0, 1, false, true, 19);
        let tall = ConvShape {
            n: 3,
            out_h: 32,
            ..conv3(1, 28, 80, 32)
        };
        case(tall, (0, 1), 48, 16, 0, false, false, 20);
        // Strided input layouts (spare channels and pixels), the 7x7/2 stem.
        case(conv3(2, 5, 7, 17), (3, 2), 17, 0, 0, true, false, 6);
        let stem = ConvShape {
            n: 1,
            out_h: 9,
            out_w: 9,
            c_in: 3,
            c_out: 64,
            kernel_h: 7,
            kernel_w: 7,
            stride: 2,
        };
        case(stem, (0, 0), 64, 0, 0, false, true, 7);
    }

    #[test]
    fn every_tile_width_and_channel_count() {
        for w in 1..=30 {
            let c_out = [1, 5, 16, 17, 31, 32, 33, 64][w % 8];
            let shape = ConvShape {
                n: 1,
                out_h: 2,
                out_w: w,
                c_in: 5,
                c_out,
                kernel_h: 3,
                kernel_w: 3,
                stride: 1 + w % 2,
            };
            case(
                shape,
                (1, 1),
                c_out + 3,
                2,
                0,
                w % 3 == 0,
                false,
                100 + w as u64,
            );
        }
    }

    #[test]
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    fn winograd_takes_densenet_3x3_shapes_only() {
        let conv3 = |hw, c_in, c_out| ConvShape {
            n: 1,
            out_h: hw,
            out_w: hw,
            c_in,
            c_out,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
        };
        for hw in [56, 28, 30, 14] {
            assert!(winograd::applies(&conv3(hw, 128, 32)), "{hw}x{hw}");
        }
        assert!(winograd::applies(&conv3(28, 64, 1)));
        assert!(!winograd::applies(&conv3(7, 128, 32)), "odd map");
        assert!(
            !winograd::applies(&conv3(12, 128, 32)),
            "fewer than 14 columns"
        );
        assert!(
            !winograd::applies(&conv3(56, 128, 48)),
            "more than one panel"
        );
        assert!(
            !winograd::applies(&conv3(56, 72, 32)),
            "channels not a multiple of 16"
        );
        assert!(
            !winograd::applies(&conv3(56, 48, 32)),
            "fewer than 64 channels"
        );
        let strided = ConvShape {
            stride: 2,
            ..conv3(28, 128, 32)
        };
        assert!(!winograd::applies(&strided));
        let one_by_one = ConvShape {
            kernel_h: 1,
            kernel_w: 1,
            ..conv3(28, 128, 32)
        };
        assert!(!winograd::applies(&one_by_one));
        // Shapes whose per-task scratch would be huge (or whose size overflows) take
        // the direct kernel rather than allocating it.
        assert!(!winograd::applies(&conv3(1 << 20, 1 << 10, 32)));
        assert!(!winograd::applies(&conv3(1 << 40, 1 << 40, 32)));
        assert!(!winograd::applies(&conv3(usize::MAX - 1, 64, 32)));
    }

    #[test]
    fn tiles_cover_a_row_evenly() {
        for w in 1usize..200 {
            let count = w.div_ceil(MAX_TILE);
            let mut next = 0;
            for t in 0..count {
                let (start, len) = tile_span(w, t, count);
                assert_eq!(start, next);
                assert!((1..=MAX_TILE).contains(&len));
                next += len;
            }
            assert_eq!(next, w);
        }
    }

    #[test]
    #[should_panic(expected = "output layout reaches past")]
    fn output_past_the_end_panics() {
        let shape = ConvShape {
            n: 1,
            out_h: 2,
            out_w: 2,
            c_in: 1,
            c_out: 1,
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
        };
        let layout = ImageLayout::dense(2, 2, 1);
        direct_conv(
            &[0.0; 4],
            layout,
            Epilogue::Store,
            ConvWeight::Hwio(&[1.0]),
            shape,
            Epilogue::Store,
            &mut [0.0; 3],
            layout,
            false,
        );
    }

    /// A 2-row, 2-tap convolution whose stride is `usize::MAX`: the input extent
    /// `(out_h − 1)·stride + kernel_h` wraps to 1 without checked arithmetic, so a
    /// one-pixel input passed the bounds check and row 1 read before the slice.
    #[test]
    #[should_panic(expected = "direct_conv: the input extent")]
    fn a_stride_that_overflows_the_input_extent_panics() {
        let shape = ConvShape {
            n: 1,
            out_h: 2,
            out_w: 1,
            c_in: 1,
            c_out: 1,
            kernel_h: 2,
            kernel_w: 1,
            stride: usize::MAX,
        };
        direct_conv(
            &[1.0],
            ImageLayout::dense(1, 1, 1),
            Epilogue::Store,
            ConvWeight::Hwio(&[1.0; 2]),
            shape,
            Epilogue::Store,
            &mut [0.0; 2],
            ImageLayout::dense(2, 1, 1),
            false,
        );
    }

    /// The same through the oracle (safe code, but it must refuse, not wrap).
    #[test]
    #[should_panic(expected = "direct_conv: the input extent")]
    fn the_reference_refuses_an_overflowing_stride_too() {
        let shape = ConvShape {
            n: 1,
            out_h: 3,
            out_w: 3,
            c_in: 1,
            c_out: 1,
            kernel_h: 1,
            kernel_w: 1,
            stride: 1 << (usize::BITS - 1),
        };
        direct_conv_reference(
            &[1.0],
            ImageLayout::dense(1, 1, 1),
            Epilogue::Store,
            &[1.0],
            shape,
            Epilogue::Store,
            &mut [0.0; 9],
            ImageLayout::dense(3, 3, 1),
        );
    }

    /// `direct_conv` of `shape` on one input value, one output value and an empty
    /// weight: the geometry check must refuse the shape before any of them is read.
    fn run_on_one_value(shape: ConvShape) {
        direct_conv(
            &[1.0],
            ImageLayout::dense(1, 1, 1),
            Epilogue::Store,
            ConvWeight::Hwio(&[]),
            shape,
            Epilogue::Store,
            &mut [0.0; 1],
            ImageLayout::dense(1, 1, 1),
            false,
        );
    }

    /// A window of 2³² × 2³² taps: `kernel_h·kernel_w` wraps to 0 on 64 bits, which an
    /// empty weight matched, and the convolution "ran" as a no-op.
    #[test]
    #[should_panic(expected = "direct_conv: the window")]
    fn a_window_whose_size_overflows_panics() {
        let half = 1usize << (usize::BITS / 2);
        let shape = ConvShape {
            n: 1,
            out_h: 1,
            out_w: 1,
            c_in: 1,
            c_out: 1,
            kernel_h: half,
            kernel_w: half,
            stride: 1,
        };
        run_on_one_value(shape);
    }

    /// Sizes whose product of multiply-adds overflows `usize` are refused, even with
    /// layouts of stride 0 that keep the slices small.
    #[test]
    #[should_panic(expected = "direct_conv: the convolution's size")]
    fn a_shape_whose_multiply_adds_overflow_panics() {
        let big = 1usize << (usize::BITS / 2);
        let shape = ConvShape {
            n: 1,
            out_h: 1,
            out_w: 1,
            c_in: big,
            c_out: big,
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
        };
        run_on_one_value(shape);
    }

    /// Row 1 at `usize::MAX` wrapped to index `usize::MAX·1`; refused up front now.
    #[test]
    #[should_panic(expected = "apply_epilogue: 2 rows")]
    fn epilogue_rows_past_the_slice_panic() {
        let epilogue = Epilogue::ScaleShiftRelu {
            scale: &[1.0],
            shift: &[0.0],
        };
        apply_epilogue(epilogue, &mut [1.0; 4], 2, usize::MAX);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_outputs_panic() {
        let shape = ConvShape {
            n: 1,
            out_h: 1,
            out_w: 2,
            c_in: 1,
            c_out: 2,
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
        };
        let input_layout = ImageLayout::dense(1, 2, 1);
        let out_layout = ImageLayout::dense(1, 2, 1);
        direct_conv(
            &[0.0; 2],
            input_layout,
            Epilogue::Store,
            ConvWeight::Hwio(&[1.0; 2]),
            shape,
            Epilogue::Store,
            &mut [0.0; 4],
            out_layout,
            false,
        );
    }
}
