//! Low-precision direct convolutions: bf16 (AVX512-BF16's `VDPBF16PS`) and int8
//! (AVX512-VNNI's `VPDPBUSD`, or AVX-VNNI's 256-bit form), beside the fp32 kernels and
//! in their style: NHWC, output pixels are the GEMM rows, strided layouts, a prologue
//! (the BN-ReLU before a 1x1 conv) fused into the packing of a tile's inputs, and the
//! per-channel `relu(scale·y + shift)` epilogue.
//!
//! # The two schemes
//!
//! **bf16** ([`conv_bf16`]): weights stored bf16 ([`Bf16Weight`], rounded to nearest
//! even once, outside any timed path); activations converted to bf16 (round to nearest
//! even, as `VCVTNEPS2BF16`) while a tile's inputs are packed, after the optional
//! prologue computed in fp32; fp32 accumulation (each `VDPBF16PS` adds two exact
//! bf16 products to an fp32 lane); the epilogue in fp32. The input may also be bf16
//! already, or bf16 widened through the prologue ([`Bf16Input::Bf16`]), and the output
//! bf16 ([`Bf16Output::Bf16`]).
//!
//! **int8** ([`conv_int8`]): per-output-channel symmetric s8 weights
//! ([`Int8Weight::quantize`]: `scale_w[n] = max|w[:, n]| / 127`, `q = round(w /
//! scale_w[n])` in `[-127, 127]`); u8 activations with zero point 0 (every DenseNet
//! conv input follows a ReLU), quantized while packing with the caller's activation
//! scale, `q = clamp(round(x · (1/scale_a)), 0, 255)` (negative values and NaN become
//! 0), the optional prologue folded into the same multiply-add (`fma(x,
//! scale·(1/scale_a), shift·(1/scale_a))`, the clamp at 0 being its ReLU); i32
//! accumulation (`VPDPBUSD`: four u8 × s8 products into an i32 lane, without
//! `VPMADDUBSW`'s 16-bit saturation, so `[-128, 127]` weights would be as exact as
//! `[-127, 127]`); the epilogue `y = acc · (scale_a · scale_w[n])`, then the optional
//! `relu(scale·y + shift)` (the two folded into one multiply-add), stored as f32, or
//! requantized to u8 for the next convolution ([`Int8Output::U8`], folded likewise),
//! or the raw i32 sums ([`Int8Output::I32`]). Folding moves a value by an ulp or, for
//! u8, by one step in rare ties; the references fold the same way, so the kernels
//! match them bit for bit. The input may be u8 already ([`Int8Input::U8`]), e.g.
//! written by the previous convolution's u8 output. The stem's 7x7 convolution reads
//! raw, signed pixels: it is out of int8's scope and stays fp32 (or bf16).
//!
//! # Weight layout
//!
//! Both weights are `(kh·kw·⌈c_in/G⌉) × c_out` matrices of groups of `G` input channels
//! (`G = 2` for bf16, `4` for int8), stored panel-major like
//! [`PackedWeight`](super::PackedWeight): 32-column panels, each contiguous, and within
//! a panel row by row; a row holds, for each of the 32 columns, the `G` weights of its
//! input channels `G·g .. G·g + G` of one tap: the `[k/G][n][G]` interleaving the
//! instructions multiply against a broadcast group of `G` activations. Element
//! `(tap, ci, co)` is at `((panel·rows + tap·⌈c_in/G⌉ + ci/G)·32 + co % 32)·G + ci % G`
//! with `panel = co / 32`. Channels past `c_in` in a tap's last group, and columns past
//! `c_out` in the last panel, are zero. See `panels.rs`.
//!
//! # Execution
//!
//! `job.rs` splits a call into tasks (output rows, or for 1x1 convolutions on maps
//! narrower than a tile the batch's pixels in order) as the fp32 kernel does, one task
//! per rayon job. Each tile of up to 14 pixels packs its inputs once (f32 converted, or
//! a bf16/u8 input whose channel count is not a multiple of `G`, copied with zero
//! padding) into the worker thread's scratch, then runs the panels over the whole
//! depth; a bf16/u8 input with a multiple of `G` channels is read in place. A tile of
//! 14 pixels × 32 channels accumulates in 28 zmm registers (AVX-VNNI: 6 × 16 in 12
//! ymm). The references ([`conv_bf16_reference`], [`conv_int8_reference`]) are plain
//! loops of the same arithmetic, which the tests run every kernel against.
//!
//! **bf16 Winograd** (`winograd.rs`): a bf16 call with no prologue or epilogue (f32
//! or bf16 output) on the fp32 Winograd path's shapes (stride-1 3x3, ≤ 32 outputs,
//! ≥ 64 input channels: DenseNet's 3x3s on 56x56 and 28x28 maps) runs as Winograd
//! F(2x2, 3x3) with its 16 GEMMs on the bf16 tile: the transforms in f32 (the fp32
//! path's `input_transform`, `transform_weight` and `output_tiles`), the transformed
//! inputs and weight rounded to bf16, the latter once per weight (kept in the
//! [`Bf16Weight`], 16/9 of its bytes). Against fp32 its error is of the direct bf16
//! kernel's order (relative RMS 3.9e-3 against 2.3e-3 on a DenseNet 3x3); it has its
//! own plain-loop reference, `winograd_bf16_reference`.
//!
//! # Using them in a model
//!
//! Weights are converted once, when a model is loaded or its precision chosen:
//! `Int8Weight::quantize(conv.weight().view())` or `Bf16Weight::from_hwio(..)`; what a
//! file stores is [`Int8Weight::to_hwio`] and [`Int8Weight::scales`] (or
//! [`Bf16Weight::to_hwio`]), read back by [`Int8Weight::from_quantized`] /
//! [`Bf16Weight::from_bf16_hwio`]. Before a forward pass, [`Precision::available`]
//! says whether to take these kernels; a call also returns
//! [`LowpError::Unsupported`] when they are off, so a caller can fall back per call.
//! A DenseNet-B layer in int8, as the fp32 one runs (`dense_block.rs`):
//! - the 1x1 reads the block buffer through norm1 (`Int8Input::F32` with the
//!   prologue and the calibrated scale of `relu(norm1(x))`), and writes through norm2
//!   (`Epilogue::ScaleShiftRelu`) into the interior of the 3x3's padded input, as u8
//!   (`Int8Output::U8` with the calibrated scale of `relu(norm2(..))`; the border must
//!   hold 0, which is u8's zero);
//! - the 3x3 reads that u8 map in place (`Int8Input::U8`, the same scale) and writes
//!   f32 into its 32 columns of the block buffer (`Int8Output::F32`).
//!
//! `precision::Quantized` stores its block buffers in bf16 instead: the 1x1 reads them
//! with `Int8Input::Bf16` / `Bf16Input::Bf16` (widened to f32, then the same prologue)
//! and the 3x3 writes `Int8Output::Bf16` / `Bf16Output::Bf16`, halving the bytes every
//! 1x1 reads.
//!
//! So calibration needs one activation scale per convolution input: each 1x1's
//! BN-ReLU'd input, each 3x3's input, each transition's pooled input. Keeping the
//! chain in u8 between the 1x1 and the 3x3 saved 6-16% of int8's time over f32 in
//! and out (`examples/bench_lowp.rs`, "int8 u8").
//!
//! # Speed on this repository's CPU (Sapphire Rapids)
//!
//! `VPDPBUSD` issues two per cycle like `VFMADD231PS`, but does 64 multiply-adds to its
//! 16: int8 has four times fp32's peak. `VDPBF16PS` issues one every *two* cycles
//! (measured: 1.9 per ns against 7.7 for the FMA at 3.85 GHz), so its 32 multiply-adds
//! per instruction are half fp32's peak: on this CPU the bf16 kernel cannot be faster
//! than the fp32 one. What it offers here is the scheme (its accuracy, weights in
//! half the bytes), on CPUs whose `VDPBF16PS` is faster (not measured here) its
//! speed. AMX's `TDPBF16PS` (measured: ~450 bf16 multiply-adds per cycle, 14 times the
//! FMA's) would be the way to a faster bf16 here; the panel rows above are the B-tile
//! layout its `TILELOADD` reads (16 columns × `G` values, at a 128-byte stride).
//!
//! Measured with `examples/bench_lowp.rs` (every convolution of DenseNet-121 at
//! 224x224, the runtime's layouts, variants alternating; median of 15 rounds, ratio
//! to fp32's time, fp32 with its Winograd 3x3s):
//!
//! | | batch 1, 1 thread | batch 1, 2 threads | batch 8, 1 thread | batch 8, 2 threads |
//! |---|---|---|---|---|
//! | bf16 | 1.73 | 1.64 | 1.73 | 1.58 |
//! | int8 (f32 in and out) | 0.43 | 0.41 | 0.46 | 0.41 |
//! | int8, u8 from 1x1 to 3x3 | 0.36 | 0.34 | 0.39 | 0.38 |
//!
//! On a Zen 5 guest (`AMD EPYC`, family 26, 2026-12-03) the same benchmark gave, at
//! batch 1 on one thread, bf16 0.69 and int8 0.45 / 0.42 (u8) of fp32's time: its
//! `VDPBF16PS` is not half-rate (measured in a register-only loop: 2.2 times the FMA's
//! flops). After the bf16 Winograd and the packing changes (each pixel's channels in
//! order; 1x1 tiles over inputs beyond L2 prefetch the next tile's pixels), all of
//! DenseNet-121's convolutions: bf16 0.58 / 0.60 / 0.60 / 0.61 and int8 0.43 / 0.43 /
//! 0.46 / 0.43 (u8: 0.39 / 0.35 / 0.39 / 0.37) of fp32's time, in the table's order of
//! configurations. The whole model through `precision::Quantized`: BENCHMARKS.md,
//! "Low precision".
//!
//! int8's time goes to the bottleneck 1x1s (~47%: each layer quantizes all of its
//! block buffer's channels through its own BN-ReLU, 40-55% on top of the products at
//! 56x56), the 3x3s (~37%, ~60% of `VPDPBUSD`'s peak in the runtime's layout, 83% in
//! isolation) and the fp32 stem (~13%).

use std::sync::atomic::{AtomicBool, Ordering};

use super::{ConvShape, Epilogue, ImageLayout, MAX_TAPS};

mod bf16;
mod int8;
mod panels;

#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
#[cfg(target_arch = "x86_64")]
mod avx512_vnni;
#[cfg(target_arch = "x86_64")]
mod avx_vnni;
#[cfg(target_arch = "x86_64")]
mod job;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod winograd;

// Without `internals` nothing in the crate calls these until the model-level
// precision choice does.
#[cfg_attr(not(feature = "internals"), allow(unused_imports))]
pub use bf16::{bf16_round, conv_bf16, conv_bf16_reference, Bf16Input, Bf16Output, Bf16Weight};
#[cfg_attr(not(feature = "internals"), allow(unused_imports))]
pub use int8::{
    conv_int8, conv_int8_reference, quantize_activation, Int8Input, Int8Output, Int8Weight,
};

/// A reduced precision of the convolutions here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// bf16 operands, fp32 accumulation ([`conv_bf16`]).
    Bf16,
    /// u8 activations × s8 weights, i32 accumulation ([`conv_int8`]).
    Int8,
}

impl Precision {
    /// Whether this CPU runs the precision's kernels (detected at run time), unless
    /// [`force_lowp_off`] turned them off. When false, [`conv_bf16`] / [`conv_int8`]
    /// return [`LowpError::Unsupported`] and the caller falls back to fp32.
    pub fn available(self) -> bool {
        self.isa().is_some()
    }

    /// The instruction set the precision's kernels would run on here, if any.
    pub fn isa(self) -> Option<LowpIsa> {
        if OFF.load(Ordering::Relaxed) {
            return None;
        }
        match self {
            Precision::Bf16 => supported(LowpIsa::Avx512Bf16).then_some(LowpIsa::Avx512Bf16),
            Precision::Int8 => {
                if supported(LowpIsa::Avx512Vnni) && !AVX_VNNI_ONLY.load(Ordering::Relaxed) {
                    Some(LowpIsa::Avx512Vnni)
                } else {
                    supported(LowpIsa::AvxVnni).then_some(LowpIsa::AvxVnni)
                }
            }
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        })
    }
}

/// The instruction sets the low-precision kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LowpIsa {
    /// AVX-512F/BW/VL with AVX512-BF16 (`VDPBF16PS`): 14 × 32 tiles.
    Avx512Bf16,
    /// AVX-512F/BW/VL with AVX512-VNNI (`VPDPBUSD` on zmm): 14 × 32 tiles.
    Avx512Vnni,
    /// AVX2 with AVX-VNNI (`VPDPBUSD` on ymm, VEX-encoded): 6 × 16 tiles.
    AvxVnni,
}

impl std::fmt::Display for LowpIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LowpIsa::Avx512Bf16 => "AVX512-BF16",
            LowpIsa::Avx512Vnni => "AVX512-VNNI",
            LowpIsa::AvxVnni => "AVX-VNNI",
        })
    }
}

/// Whether this CPU has `isa` (detected at run time, cached by std).
fn supported(isa: LowpIsa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
        match isa {
            LowpIsa::Avx512Bf16 => avx512 && has!("avx512bf16"),
            LowpIsa::Avx512Vnni => avx512 && has!("avx512vnni"),
            LowpIsa::AvxVnni => has!("avx2") && has!("avxvnni"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Set by [`force_lowp_off`].
static OFF: AtomicBool = AtomicBool::new(false);
/// Set by [`force_avx_vnni`].
static AVX_VNNI_ONLY: AtomicBool = AtomicBool::new(false);

/// Makes every [`Precision`] unavailable (or available again, where the CPU allows) for
/// the whole process: for tests of callers' fp32 fallback on a CPU that has the
/// instructions.
pub fn force_lowp_off(off: bool) {
    OFF.store(off, Ordering::Relaxed);
}

/// Makes [`conv_int8`] use its 256-bit AVX-VNNI kernels even on a CPU with AVX512-VNNI
/// (or its best again), for the whole process: for tests and benchmarks of that path.
pub fn force_avx_vnni(avx_vnni: bool) {
    AVX_VNNI_ONLY.store(avx_vnni, Ordering::Relaxed);
}

/// Why a low-precision convolution (or a weight's construction) refused its arguments.
/// Nothing is written to the output when a call returns an error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LowpError {
    /// The CPU lacks the instructions (see [`Precision::available`]): run fp32.
    #[error("this CPU has no kernels for {0} (see Precision::available); run fp32 instead")]
    Unsupported(Precision),
    /// A slice's length does not match the shape.
    #[error("{what}: expected {expected} values, got {actual}")]
    Length {
        /// Which slice.
        what: &'static str,
        /// Values the shape asks for.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// The weight's `[kh, kw, c_in, c_out]` differs from the shape's.
    #[error("the weight is [kh, kw, c_in, c_out] = {weight:?} but the shape asks for {shape:?}")]
    WeightShape {
        /// The weight's dimensions.
        weight: [usize; 4],
        /// The convolution's.
        shape: [usize; 4],
    },
    /// A scale is zero, negative, or not finite.
    #[error("{what} must be finite and positive; got {value}")]
    Scale {
        /// Which scale.
        what: &'static str,
        /// Its value.
        value: f32,
    },
    /// A weight value is NaN or infinite.
    #[error("weight value {index} (HWIO order) is not finite: {value}")]
    NonFiniteWeight {
        /// Its index in HWIO order.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The geometry is inconsistent (the message says how).
    #[error("invalid geometry: {0}")]
    Geometry(&'static str),
}

/// Most bytes of one tile's packed inputs (the worker thread's scratch grows to the
/// largest call's; DenseNet-121's largest, a 1x1 over 1024 channels in bf16, is 28 KiB):
/// `validate` refuses wider convolutions.
const MAX_SCRATCH_BYTES: usize = 16 << 20;
/// Most pixels whose inputs one tile packs: 14 pixels × 49 taps, the largest window.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the x86 tiling's
const MAX_PACKED_PIXELS: usize = super::MAX_TILE * MAX_TAPS;

/// What every entry point checks before touching anything, without panicking: the
/// same geometry as the fp32 kernel's `check` (every size computed with checked
/// arithmetic, both layouts inside their slices, distinct outputs in distinct memory),
/// plus the weight's dimensions, the scale and shift lengths, the window size (at most
/// 49 taps), and, with `group` input channels per multiply group, a tile's packed
/// inputs within [`MAX_SCRATCH_BYTES`] (`act_bytes` per value) and the depth
/// `taps·c_in` within `max_depth`.
#[allow(clippy::too_many_arguments)]
fn validate(
    in_len: usize,
    input_layout: ImageLayout,
    prologue: Epilogue<'_>,
    weight: [usize; 4],
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out_len: usize,
    out_layout: ImageLayout,
    (group, act_bytes, max_depth): (usize, usize, usize),
) -> Result<(), LowpError> {
    let s = shape;
    let dims = [s.kernel_h, s.kernel_w, s.c_in, s.c_out];
    if weight != dims {
        return Err(LowpError::WeightShape {
            weight,
            shape: dims,
        });
    }
    if s.stride == 0 || s.kernel_h == 0 || s.kernel_w == 0 {
        return Err(LowpError::Geometry("stride and kernel must be at least 1"));
    }
    let taps = s
        .kernel_h
        .checked_mul(s.kernel_w)
        .filter(|&t| t <= MAX_TAPS)
        .ok_or(LowpError::Geometry("the window has more than 49 taps"))?;
    let macs = s.checked_macs().ok_or(LowpError::Geometry(
        "the convolution's size n·out_h·out_w·c_out·kernel_h·kernel_w·c_in overflows usize",
    ))?;
    if let Epilogue::ScaleShiftRelu { scale, shift } = prologue {
        if taps != 1 {
            return Err(LowpError::Geometry("a prologue needs a 1x1 convolution"));
        }
        for (what, values) in [("prologue scale", scale), ("prologue shift", shift)] {
            if values.len() != s.c_in {
                return Err(LowpError::Length {
                    what,
                    expected: s.c_in,
                    actual: values.len(),
                });
            }
        }
    }
    if let Epilogue::ScaleShiftRelu { scale, shift } = epilogue {
        for (what, values) in [("epilogue scale", scale), ("epilogue shift", shift)] {
            if values.len() != s.c_out {
                return Err(LowpError::Length {
                    what,
                    expected: s.c_out,
                    actual: values.len(),
                });
            }
        }
    }
    // The depth, and one tile's packed inputs: at most 14 pixels' windows (`taps`
    // pixels each) of whole groups of channels.
    let padded = s.c_in.div_ceil(group).checked_mul(group);
    let depth_ok = taps.checked_mul(s.c_in).is_some_and(|k| k <= max_depth);
    let scratch_ok = padded
        .and_then(|p| p.checked_mul(super::MAX_TILE * taps))
        .and_then(|v| v.checked_mul(act_bytes))
        .is_some_and(|b| b <= MAX_SCRATCH_BYTES);
    if !depth_ok || !scratch_ok {
        return Err(LowpError::Geometry(
            "too many input channels for one tile's packed inputs or the accumulator",
        ));
    }
    if macs == 0 {
        return Ok(());
    }
    // Sizes are nonzero here. The input extent `(out − 1)·stride + kernel` per axis.
    let extent = |out: usize, kernel: usize| (out - 1).checked_mul(s.stride)?.checked_add(kernel);
    let (Some(in_h), Some(in_w)) = (extent(s.out_h, s.kernel_h), extent(s.out_w, s.kernel_w))
    else {
        return Err(LowpError::Geometry(
            "the input extent (out − 1)·stride + kernel overflows usize",
        ));
    };
    if input_layout
        .end(s.n, in_h, in_w, s.c_in)
        .is_none_or(|end| end > in_len)
    {
        return Err(LowpError::Geometry(
            "input layout reaches past the input slice",
        ));
    }
    if out_layout
        .end(s.n, s.out_h, s.out_w, s.c_out)
        .is_none_or(|end| end > out_len)
    {
        return Err(LowpError::Geometry(
            "output layout reaches past the output slice",
        ));
    }
    let o = out_layout;
    // No overflow below: `end` bounded each of these sums by `out_len`.
    let disjoint = (s.out_w == 1 || o.pixel_stride >= s.c_out)
        && (s.out_h == 1 || o.row_stride >= (s.out_w - 1) * o.pixel_stride + s.c_out)
        && (s.n == 1
            || o.image_stride
                >= (s.out_h - 1) * o.row_stride + (s.out_w - 1) * o.pixel_stride + s.c_out);
    if !disjoint {
        return Err(LowpError::Geometry(
            "output layout makes distinct outputs overlap",
        ));
    }
    Ok(())
}

/// `Err(Scale)` unless `value` is finite and positive.
fn positive_scale(what: &'static str, value: f32) -> Result<(), LowpError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(LowpError::Scale { what, value })
    }
}

/// The epilogue's `(scale, shift)` pointers, both null for a plain store.
#[cfg(target_arch = "x86_64")]
fn scale_shift(epilogue: Epilogue<'_>) -> (*const f32, *const f32) {
    match epilogue {
        Epilogue::Store => (std::ptr::null(), std::ptr::null()),
        Epilogue::ScaleShiftRelu { scale, shift } => (scale.as_ptr(), shift.as_ptr()),
    }
}

/// Applies the epilogue to output channel `co`'s value, as the kernels do: the
/// runtime's ReLU of one fused multiply-add (`relu(fma(y, scale, shift))`).
fn finish(epilogue: Epilogue<'_>, co: usize, y: f32) -> f32 {
    match epilogue {
        Epilogue::Store => y,
        Epilogue::ScaleShiftRelu { scale, shift } => super::relu(y.mul_add(scale[co], shift[co])),
    }
}

/// The prologue of input channel `ci` as the kernels apply it while packing: multiply
/// then add, unfused (as the fp32 kernels' prologue), then the runtime's ReLU.
fn start(prologue: Epilogue<'_>, ci: usize, x: f32) -> f32 {
    match prologue {
        Epilogue::Store => x,
        Epilogue::ScaleShiftRelu { scale, shift } => super::relu(x * scale[ci] + shift[ci]),
    }
}
