//! int8 convolutions: [`Int8Weight`] (per-output-channel symmetric quantization),
//! [`quantize_activation`], the checked entry point [`conv_int8`] and its plain-loop
//! reference [`conv_int8_reference`].

use half::bf16;

use super::super::{ConvShape, Epilogue, ImageLayout};
use super::panels::Panels;
use super::{positive_scale, validate, LowpError, LowpIsa, Precision};

/// Deepest convolution (`kh·kw·c_in`) whose i32 sums cannot overflow:
/// `255 · 128 · depth < 2³¹` (`VPDPBUSD` wraps).
const MAX_DEPTH: usize = 65_793;

/// `x` quantized to u8 with zero point 0: `clamp(round(x · (1/scale)), 0, 255)`, the
/// reciprocal computed in f32 and rounding to nearest even, exactly as the kernels
/// quantize activations (and a u8 output); negative values and NaN give 0.
pub fn quantize_activation(x: f32, scale: f32) -> u8 {
    quantize(x, 1.0 / scale)
}

/// [`quantize_activation`] with the reciprocal of the scale given.
fn quantize(x: f32, inv_scale: f32) -> u8 {
    round_clamped(x * inv_scale)
}

/// `clamp(round(z), 0, 255)`, ties to even; NaN gives 0.
fn round_clamped(z: f32) -> u8 {
    if z.is_nan() {
        0
    } else {
        z.clamp(0.0, 255.0).round_ties_even() as u8
    }
}

/// An f32 output: `f32(acc)·m` (`m = scale_a·scale_w[co]`), or with the epilogue
/// `relu(fma(f32(acc), m·scale[co], shift[co]))`: the dequantization folded into the
/// epilogue's multiply-add.
fn dequantize(acc: i32, m: f32, epilogue: Epilogue<'_>, co: usize) -> f32 {
    match epilogue {
        Epilogue::Store => acc as f32 * m,
        Epilogue::ScaleShiftRelu { scale, shift } => {
            super::super::relu((acc as f32).mul_add(m * scale[co], shift[co]))
        }
    }
}

/// A u8 output, requantized with `1/scale_out = inv`: `clamp(round(z), 0, 255)` with
/// `z = f32(acc)·(m·inv)`, or with the epilogue `fma(f32(acc), m·scale[co]·inv,
/// shift[co]·inv)` (the clamp at 0 is its ReLU).
fn requantize(acc: i32, m: f32, epilogue: Epilogue<'_>, co: usize, inv: f32) -> u8 {
    round_clamped(match epilogue {
        Epilogue::Store => acc as f32 * (m * inv),
        Epilogue::ScaleShiftRelu { scale, shift } => {
            (acc as f32).mul_add(m * scale[co] * inv, shift[co] * inv)
        }
    })
}

/// Input channel `ci`'s value `x` as the kernels pack it: through the prologue and
/// quantized with `1/scale_a = inv` in one multiply-add,
/// `clamp(round(fma(x, scale[ci]·inv, shift[ci]·inv)), 0, 255)` (the clamp at 0 is the
/// ReLU), or without one [`quantize_activation`]'s `clamp(round(x·inv), 0, 255)`.
fn quantize_input(prologue: Epilogue<'_>, ci: usize, x: f32, inv: f32) -> u8 {
    match prologue {
        Epilogue::Store => quantize(x, inv),
        Epilogue::ScaleShiftRelu { scale, shift } => {
            round_clamped(x.mul_add(scale[ci] * inv, shift[ci] * inv))
        }
    }
}

/// A convolution weight quantized to s8 per output channel, in the kernels' layout:
/// `[kh, kw, c_in, c_out]` stored as 32-column panels of rows of groups of four input
/// channels (`[panel][tap][⌈c_in/4⌉][32][4]`, see the module documentation), with one
/// scale per output channel: weight `w ≈ q · scale[co]`. Built once per model.
#[derive(Clone, PartialEq, Debug)]
pub struct Int8Weight {
    panels: Panels<i8, 4>,
    scales: Vec<f32>,
}

impl Int8Weight {
    /// Quantizes an HWIO weight `[kh, kw, c_in, c_out]`, in any memory layout,
    /// symmetrically per output channel: `scale[co] = max |w[.., co]| / 127`,
    /// `q = round(w / scale[co])` (ties to even) in `[-127, 127]`; a channel of zeros
    /// has scale 0 and zero weights.
    ///
    /// # Errors
    ///
    /// [`LowpError::NonFiniteWeight`] for a NaN or infinite value (its HWIO index);
    /// [`LowpError::Geometry`] if the packed size overflows `usize`.
    pub fn quantize(hwio: ndarray::ArrayView4<'_, f32>) -> Result<Self, LowpError> {
        let (kh, kw, c_in, c_out) = hwio.dim();
        let mut max = vec![0.0f32; c_out];
        for ((y, x, ci, co), &w) in hwio.indexed_iter() {
            if !w.is_finite() {
                return Err(LowpError::NonFiniteWeight {
                    index: ((y * kw + x) * c_in + ci) * c_out + co,
                    value: w,
                });
            }
            max[co] = max[co].max(w.abs());
        }
        let scales: Vec<f32> = max.iter().map(|m| m / 127.0).collect();
        let panels = Panels::from_fn([kh, kw, c_in, c_out], |t, ci, co| {
            let scale = scales[co];
            if scale > 0.0 {
                (hwio[[t / kw, t % kw, ci, co]] / scale)
                    .round_ties_even()
                    .clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        })
        .ok_or(LowpError::Geometry(
            "the weight's packed size overflows usize",
        ))?;
        Ok(Self { panels, scales })
    }

    /// A weight from quantized values in HWIO order and per-output-channel scales (as
    /// saved). Any s8 value is taken (the kernels are exact for -128 too).
    ///
    /// # Errors
    ///
    /// [`LowpError::Length`] if `values` does not hold `kh·kw·c_in·c_out` values or
    /// `scales` `c_out`; [`LowpError::Scale`] for a negative or non-finite scale;
    /// [`LowpError::Geometry`] if a size overflows.
    pub fn from_quantized(
        dims: [usize; 4],
        values: &[i8],
        scales: &[f32],
    ) -> Result<Self, LowpError> {
        let [kh, kw, c_in, c_out] = dims;
        let len = kh
            .checked_mul(kw)
            .and_then(|t| t.checked_mul(c_in))
            .and_then(|r| r.checked_mul(c_out))
            .ok_or(LowpError::Geometry("the weight's size overflows usize"))?;
        for (what, expected, actual) in [
            ("int8 weight", len, values.len()),
            ("int8 weight scales", c_out, scales.len()),
        ] {
            if expected != actual {
                return Err(LowpError::Length {
                    what,
                    expected,
                    actual,
                });
            }
        }
        if let Some(&bad) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            return Err(LowpError::Scale {
                what: "an int8 weight scale",
                value: bad,
            });
        }
        let panels = Panels::from_fn(dims, |t, ci, co| values[(t * c_in + ci) * c_out + co])
            .ok_or(LowpError::Geometry(
                "the weight's packed size overflows usize",
            ))?;
        Ok(Self {
            panels,
            scales: scales.to_vec(),
        })
    }

    /// `[kh, kw, c_in, c_out]`.
    pub fn dims(&self) -> [usize; 4] {
        self.panels.dims()
    }

    /// The per-output-channel scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The quantized values in HWIO order (what [`Int8Weight::from_quantized`] takes).
    pub fn to_hwio(&self) -> Vec<i8> {
        self.panels.to_hwio()
    }

    /// The weight the quantized one stands for, `q · scale[co]`, in HWIO order.
    pub fn dequantized_hwio(&self) -> Vec<f32> {
        let c_out = self.dims()[3];
        self.to_hwio()
            .into_iter()
            .enumerate()
            .map(|(i, q)| f32::from(q) * self.scales[i % c_out])
            .collect()
    }

    /// Bytes the packed weight and its scales occupy (padding included).
    pub fn bytes(&self) -> usize {
        self.panels.as_slice().len() + std::mem::size_of_val(self.scales.as_slice())
    }
}

/// The input of [`conv_int8`]: NHWC, zero-padded for a window (as the fp32 kernel's),
/// with the activation scale `scale_a` of the u8 values.
#[derive(Clone, Copy, Debug)]
pub enum Int8Input<'a> {
    /// f32 values, quantized with `scale` while a tile's inputs are packed: without a
    /// prologue by [`quantize_activation`]; with one (1x1 convolutions only: the
    /// BatchNorm and ReLU before the conv) as
    /// `clamp(round(fma(x, scale_p[ci]·(1/scale), shift_p[ci]·(1/scale))), 0, 255)`,
    /// the prologue and the quantization in one multiply-add (the clamp at 0 is the
    /// ReLU): the value `quantize_activation(relu(x·scale_p + shift_p), scale)` gives
    /// but for rare ties one step away.
    F32 {
        /// The values.
        data: &'a [f32],
        /// Applied to each input value before quantizing.
        prologue: Epilogue<'a>,
        /// The activation scale: `x ≈ q · scale`.
        scale: f32,
    },
    /// bf16 values (a dense block's buffer stored in bf16), widened to f32 and then
    /// quantized as [`Int8Input::F32`]'s.
    Bf16 {
        /// The values.
        data: &'a [bf16],
        /// Applied to each input value before quantizing.
        prologue: Epilogue<'a>,
        /// The activation scale: `x ≈ q · scale`.
        scale: f32,
    },
    /// u8 values already (e.g. the previous convolution's [`Int8Output::U8`]), read in
    /// place when the channel count is a multiple of 4.
    U8 {
        /// The values.
        data: &'a [u8],
        /// Their scale: `x ≈ q · scale`.
        scale: f32,
    },
}

/// Where [`conv_int8`] writes.
#[derive(Debug)]
pub enum Int8Output<'a> {
    /// fp32 values: `y = f32(acc)·m` with `m = scale_a·scale_w[co]`, or with an
    /// epilogue `relu(fma(f32(acc), m·scale[co], shift[co]))` (the dequantization
    /// folded into the epilogue's multiply-add).
    F32(&'a mut [f32]),
    /// The same requantized for a next int8 convolution with `scale`, folded into the
    /// same multiply-add: `clamp(round(z), 0, 255)` with `z = f32(acc)·(m·(1/scale))`,
    /// or with an epilogue `fma(f32(acc), m·scale_e[co]·(1/scale), shift_e[co]·(1/scale))`
    /// (the clamp at 0 is its ReLU; without an epilogue negative values clamp to 0 too).
    /// Within a step of [`quantize_activation`] of the f32 output (rare ties).
    U8 {
        /// The values.
        data: &'a mut [u8],
        /// The output's activation scale.
        scale: f32,
    },
    /// The f32 values of [`Int8Output::F32`] rounded to bf16 ([`bf16_round`]), for a
    /// dense block's buffer stored in bf16.
    ///
    /// [`bf16_round`]: super::bf16_round
    Bf16(&'a mut [bf16]),
    /// The raw i32 sums `acc` (no dequantization; the epilogue must be
    /// [`Epilogue::Store`]).
    I32(&'a mut [i32]),
}

impl Int8Input<'_> {
    fn len(&self) -> usize {
        match self {
            Int8Input::F32 { data, .. } => data.len(),
            Int8Input::Bf16 { data, .. } => data.len(),
            Int8Input::U8 { data, .. } => data.len(),
        }
    }

    fn prologue(&self) -> Epilogue<'_> {
        match self {
            Int8Input::F32 { prologue, .. } | Int8Input::Bf16 { prologue, .. } => *prologue,
            Int8Input::U8 { .. } => Epilogue::Store,
        }
    }

    fn scale(&self) -> f32 {
        match *self {
            Int8Input::F32 { scale, .. }
            | Int8Input::Bf16 { scale, .. }
            | Int8Input::U8 { scale, .. } => scale,
        }
    }
}

impl Int8Output<'_> {
    fn len(&self) -> usize {
        match self {
            Int8Output::F32(o) => o.len(),
            Int8Output::Bf16(o) => o.len(),
            Int8Output::U8 { data, .. } => data.len(),
            Int8Output::I32(o) => o.len(),
        }
    }
}

/// Checks a call's arguments (see [`conv_int8`]'s errors).
fn check(
    input: &Int8Input<'_>,
    input_layout: ImageLayout,
    weight: &Int8Weight,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out: &Int8Output<'_>,
    out_layout: ImageLayout,
) -> Result<(), LowpError> {
    validate(
        input.len(),
        input_layout,
        input.prologue(),
        weight.dims(),
        shape,
        epilogue,
        out.len(),
        out_layout,
        (4, 1, MAX_DEPTH),
    )?;
    positive_scale("the input's activation scale", input.scale())?;
    match out {
        Int8Output::U8 { scale, .. } => positive_scale("the output's activation scale", *scale)?,
        Int8Output::I32(_) if !matches!(epilogue, Epilogue::Store) => {
            return Err(LowpError::Geometry("an i32 output takes no epilogue"))
        }
        _ => {}
    }
    Ok(())
}

/// Convolves `input` (NHWC at `input_layout`, zero-padded for the window; u8 with zero
/// point 0, or f32 quantized while packing) with the s8 `weight` into `out` at
/// `out_layout`:
/// `acc[b, y, x, co] = Σ q_in[b, y·s + ky, x·s + kx, ci] · q_w[ky, kx, ci, co]` exactly
/// in i32 (`VPDPBUSD`), then dequantized (`y = f32(acc) · scale_a · scale_w[co]`) and
/// put through `epilogue` (`relu(scale·y + shift)`), the two in one multiply-add,
/// stored as [`Int8Output`] says. The kernels compute
/// the same floating-point operations as [`conv_int8_reference`], so results are equal
/// to it bit for bit. Elements of `out` outside the layout's `(n, out_h, out_w, c_out)`
/// block are not touched. Large convolutions use rayon's threads (`parallel`); results
/// do not depend on the thread count.
///
/// # Errors
///
/// Nothing is written on an error.
/// - [`LowpError::Unsupported`] when the CPU has neither AVX512-VNNI nor AVX-VNNI (or
///   [`force_lowp_off`](super::force_lowp_off)): the caller runs fp32 instead.
/// - [`LowpError::Scale`] for an activation scale that is not finite and positive.
/// - [`LowpError::WeightShape`], [`LowpError::Length`], [`LowpError::Geometry`] as
///   [`conv_bf16`](super::conv_bf16)'s, and [`LowpError::Geometry`] for an
///   [`Int8Output::I32`] with an epilogue or a depth `kh·kw·c_in` beyond 65,793 (whose
///   sums could overflow i32).
#[allow(clippy::too_many_arguments)]
pub fn conv_int8(
    input: Int8Input<'_>,
    input_layout: ImageLayout,
    weight: &Int8Weight,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out: Int8Output<'_>,
    out_layout: ImageLayout,
    parallel: bool,
) -> Result<(), LowpError> {
    run(
        Precision::Int8.isa(),
        input,
        input_layout,
        weight,
        shape,
        epilogue,
        out,
        out_layout,
        parallel,
    )
}

/// [`conv_int8`] on the kernels of `isa`: the same checks, then
/// [`LowpError::Unsupported`] if `isa` is `None` or not an int8 one the CPU has.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    isa: Option<LowpIsa>,
    input: Int8Input<'_>,
    input_layout: ImageLayout,
    weight: &Int8Weight,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out: Int8Output<'_>,
    out_layout: ImageLayout,
    parallel: bool,
) -> Result<(), LowpError> {
    check(
        &input,
        input_layout,
        weight,
        shape,
        epilogue,
        &out,
        out_layout,
    )?;
    let Some(isa) = isa.filter(|&isa| isa != LowpIsa::Avx512Bf16 && super::supported(isa)) else {
        return Err(LowpError::Unsupported(Precision::Int8));
    };
    if shape.macs() == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    {
        use super::job::{Job, Out, Post, Source, Wide};
        let (scale, shift) = super::scale_shift(epilogue);
        let out_scale = match out {
            Int8Output::U8 { scale, .. } => scale,
            _ => 1.0,
        };
        let post = Post {
            weight_scale: weight.scales.as_ptr(),
            act_scale: input.scale(),
            scale,
            shift,
            out_inv_scale: 1.0 / out_scale,
        };
        let source = match input {
            Int8Input::F32 {
                data,
                prologue,
                scale,
            } => Source::Wide {
                data: Wide::F32(data.as_ptr()),
                prologue: super::scale_shift(prologue),
                inv_scale: 1.0 / scale,
            },
            // `bf16` is a `repr(transparent)` `u16`.
            Int8Input::Bf16 {
                data,
                prologue,
                scale,
            } => Source::Wide {
                data: Wide::Bf16(data.as_ptr().cast::<u16>()),
                prologue: super::scale_shift(prologue),
                inv_scale: 1.0 / scale,
            },
            Int8Input::U8 { data, .. } => Source::Act(data.as_ptr()),
        };
        let out = match out {
            Int8Output::F32(o) => Out::F32(o.as_mut_ptr()),
            Int8Output::Bf16(o) => Out::Bf16(o.as_mut_ptr().cast::<u16>()),
            Int8Output::U8 { data, .. } => Out::U8(data.as_mut_ptr()),
            Int8Output::I32(o) => Out::I32(o.as_mut_ptr()),
        };
        let (weights, rows) = (weight.panels.as_slice(), weight.panels.rows());
        match isa {
            LowpIsa::Avx512Vnni => {
                let job = Job::<super::avx512_vnni::Avx512Vnni>::new(
                    source,
                    input_layout,
                    weights,
                    rows,
                    shape,
                    post,
                    out,
                    out_layout,
                );
                // SAFETY: the CPU has AVX512-VNNI with AVX-512F/BW/VL (checked above).
                unsafe { job.run(parallel) };
            }
            LowpIsa::AvxVnni => {
                let job = Job::<super::avx_vnni::AvxVnni>::new(
                    source,
                    input_layout,
                    weights,
                    rows,
                    shape,
                    post,
                    out,
                    out_layout,
                );
                // SAFETY: the CPU has AVX-VNNI with AVX2 (checked above).
                unsafe { job.run(parallel) };
            }
            LowpIsa::Avx512Bf16 => unreachable!("filtered above"),
        }
    }
    // (Unreachable elsewhere: no instruction set is supported.)
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (isa, input, out, parallel);
    Ok(())
}

/// The convolution of [`conv_int8`] by plain loops: each f32 input value quantized
/// (through the prologue) as [`Int8Input::F32`] says, the u8 × s8 products summed
/// exactly (in i64, which the depth bound keeps within i32), then the output as
/// [`Int8Output`] says (the dequantization, epilogue and requantization folded into
/// one multiply-add). The kernels compute the same operations, so they match it bit
/// for bit. Same arguments and errors (but for [`LowpError::Unsupported`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_int8_reference(
    input: Int8Input<'_>,
    input_layout: ImageLayout,
    weight: &Int8Weight,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    mut out: Int8Output<'_>,
    out_layout: ImageLayout,
) -> Result<(), LowpError> {
    check(
        &input,
        input_layout,
        weight,
        shape,
        epilogue,
        &out,
        out_layout,
    )?;
    let s = shape;
    if s.macs() == 0 {
        return Ok(());
    }
    let prologue = input.prologue();
    let inv = 1.0 / input.scale();
    let value = |index: usize, ci: usize| -> i64 {
        match input {
            Int8Input::F32 { data, .. } => {
                i64::from(quantize_input(prologue, ci, data[index], inv))
            }
            Int8Input::Bf16 { data, .. } => {
                i64::from(quantize_input(prologue, ci, data[index].to_f32(), inv))
            }
            Int8Input::U8 { data, .. } => i64::from(data[index]),
        }
    };
    for b in 0..s.n {
        for oy in 0..s.out_h {
            for ox in 0..s.out_w {
                for co in 0..s.c_out {
                    let mut acc = 0i64;
                    for ky in 0..s.kernel_h {
                        for kx in 0..s.kernel_w {
                            let tap = ky * s.kernel_w + kx;
                            for ci in 0..s.c_in {
                                let at = input_layout.index(
                                    b,
                                    oy * s.stride + ky,
                                    ox * s.stride + kx,
                                    ci,
                                );
                                acc += value(at, ci) * i64::from(weight.panels.get(tap, ci, co));
                            }
                        }
                    }
                    let acc = i32::try_from(acc).expect("the depth bound keeps sums in i32");
                    let at = out_layout.index(b, oy, ox, co);
                    let m = input.scale() * weight.scales[co];
                    match &mut out {
                        Int8Output::I32(o) => o[at] = acc,
                        Int8Output::F32(o) => o[at] = dequantize(acc, m, epilogue, co),
                        Int8Output::Bf16(o) => {
                            o[at] = super::bf16_round(dequantize(acc, m, epilogue, co))
                        }
                        Int8Output::U8 { data, scale } => {
                            data[at] = requantize(acc, m, epilogue, co, 1.0 / *scale)
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
