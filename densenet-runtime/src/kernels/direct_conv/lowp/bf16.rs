//! bf16 convolutions: [`Bf16Weight`], the checked entry point [`conv_bf16`] and its
//! plain-loop reference [`conv_bf16_reference`].

use half::bf16;

use super::super::{ConvShape, Epilogue, ImageLayout};
use super::panels::Panels;
use super::{finish, start, validate, LowpError, LowpIsa, Precision};

/// `x` rounded to bf16 as `VCVTNEPS2BF16` rounds it: to nearest, ties to even; a NaN
/// stays NaN (made quiet); subnormal inputs become zero of their sign (the instruction
/// treats denormals as zero).
pub fn bf16_round(x: f32) -> bf16 {
    // Selects, not early returns, so that a loop of it vectorizes (the low-precision
    // model rounds the stem's output into a block buffer with it).
    let bits = x.to_bits();
    // No overflow but for NaNs, whose sum is not used: the largest other pattern,
    // 0xff80_0000, plus 0x8000 fits.
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let tiny = bits & 0x7f80_0000 == 0;
    let nan = bits & 0x7fff_ffff > 0x7f80_0000;
    let value = if nan {
        (bits >> 16) | 0x40
    } else if tiny {
        (bits >> 16) & 0x8000
    } else {
        rounded
    };
    bf16::from_bits(value as u16)
}

/// A convolution weight in bf16, in the kernels' layout: `[kh, kw, c_in, c_out]`
/// stored as 32-column panels of rows of channel pairs (`[panel][tap][⌈c_in/2⌉][32][2]`,
/// see the module documentation), an odd channel count's last pair and the last
/// panel's spare columns zero. Built once per model (rounding is not free).
#[derive(Clone, Debug)]
pub struct Bf16Weight {
    pub(super) panels: Panels<u16, 2>,
    /// The Winograd transform of a 3x3 weight with at most 32 outputs (bf16 bits,
    /// `lowp/winograd.rs`'s layout), made at its first Winograd call: a function of the
    /// weight alone, which took 3% of a bf16 DenseNet-121 pass when made per call.
    pub(super) winograd: std::sync::OnceLock<Vec<u16>>,
}

/// Equal weights are equal values, whether or not one has made its Winograd transform.
impl PartialEq for Bf16Weight {
    fn eq(&self, other: &Self) -> bool {
        self.panels == other.panels
    }
}

impl Bf16Weight {
    /// Rounds an HWIO weight `[kh, kw, c_in, c_out]`, in any memory layout (torch's
    /// OIHW permuted, say), to bf16 ([`bf16_round`]).
    ///
    /// # Errors
    ///
    /// [`LowpError::Geometry`] if its packed size overflows `usize`.
    pub fn from_hwio(hwio: ndarray::ArrayView4<'_, f32>) -> Result<Self, LowpError> {
        let (kh, kw, c_in, c_out) = hwio.dim();
        Panels::from_fn([kh, kw, c_in, c_out], |t, ci, co| {
            bf16_round(hwio[[t / kw, t % kw, ci, co]]).to_bits()
        })
        .map(|panels| Self {
            panels,
            winograd: std::sync::OnceLock::new(),
        })
        .ok_or(LowpError::Geometry(
            "the weight's packed size overflows usize",
        ))
    }

    /// A weight from bf16 values in HWIO order (as saved), `[kh, kw, c_in, c_out]`.
    ///
    /// # Errors
    ///
    /// [`LowpError::Length`] if `values` does not hold `kh·kw·c_in·c_out` values,
    /// [`LowpError::Geometry`] if that product overflows.
    pub fn from_bf16_hwio(dims: [usize; 4], values: &[bf16]) -> Result<Self, LowpError> {
        let [kh, kw, c_in, c_out] = dims;
        let len = kh
            .checked_mul(kw)
            .and_then(|t| t.checked_mul(c_in))
            .and_then(|r| r.checked_mul(c_out))
            .ok_or(LowpError::Geometry("the weight's size overflows usize"))?;
        if values.len() != len {
            return Err(LowpError::Length {
                what: "bf16 weight",
                expected: len,
                actual: values.len(),
            });
        }
        Panels::from_fn(dims, |t, ci, co| {
            values[(t * c_in + ci) * c_out + co].to_bits()
        })
        .map(|panels| Self {
            panels,
            winograd: std::sync::OnceLock::new(),
        })
        .ok_or(LowpError::Geometry(
            "the weight's packed size overflows usize",
        ))
    }

    /// `[kh, kw, c_in, c_out]`.
    pub fn dims(&self) -> [usize; 4] {
        self.panels.dims()
    }

    /// The values in HWIO order (what [`Bf16Weight::from_bf16_hwio`] takes).
    pub fn to_hwio(&self) -> Vec<bf16> {
        self.panels
            .to_hwio()
            .into_iter()
            .map(bf16::from_bits)
            .collect()
    }

    /// Bytes the packed weight occupies (padding included).
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.panels.as_slice())
    }
}

/// The input of [`conv_bf16`]: NHWC, zero-padded for a window (as the fp32 kernel's).
#[derive(Clone, Copy, Debug)]
pub enum Bf16Input<'a> {
    /// f32 values: each goes through `prologue` (1x1 convolutions only: the BatchNorm
    /// and ReLU before the conv, in fp32) and is rounded to bf16 while a tile's inputs
    /// are packed.
    F32 {
        /// The values.
        data: &'a [f32],
        /// Applied to each input value before rounding.
        prologue: Epilogue<'a>,
    },
    /// bf16 values: without a prologue ([`Epilogue::Store`]) taken as they are (e.g.
    /// the previous convolution's [`Bf16Output::Bf16`]) and read in place when the
    /// channel count is even; with one (1x1 convolutions only), each widened to f32,
    /// put through it and rounded again while a tile's inputs are packed (a dense
    /// block's buffer stored in bf16).
    Bf16 {
        /// The values.
        data: &'a [bf16],
        /// Applied to each input value before rounding.
        prologue: Epilogue<'a>,
    },
}

/// Where [`conv_bf16`] writes.
#[derive(Debug)]
pub enum Bf16Output<'a> {
    /// fp32 values.
    F32(&'a mut [f32]),
    /// Values rounded to bf16 ([`bf16_round`]), for a next bf16 convolution.
    Bf16(&'a mut [bf16]),
}

impl Bf16Output<'_> {
    fn len(&self) -> usize {
        match self {
            Bf16Output::F32(o) => o.len(),
            Bf16Output::Bf16(o) => o.len(),
        }
    }
}

impl Bf16Input<'_> {
    fn len(&self) -> usize {
        match self {
            Bf16Input::F32 { data, .. } => data.len(),
            Bf16Input::Bf16 { data, .. } => data.len(),
        }
    }

    fn prologue(&self) -> Epilogue<'_> {
        match self {
            Bf16Input::F32 { prologue, .. } | Bf16Input::Bf16 { prologue, .. } => *prologue,
        }
    }
}

/// Checks a call's arguments (see [`conv_bf16`]'s errors).
fn check(
    input: &Bf16Input<'_>,
    input_layout: ImageLayout,
    weight: &Bf16Weight,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out: &Bf16Output<'_>,
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
        (2, 2, usize::MAX),
    )
}

/// Convolves `input` (NHWC at `input_layout`, zero-padded for the window) with the bf16
/// `weight` into `out` at `out_layout`, then applies `epilogue`:
/// `out[b, y, x, co] = epilogue(Σ bf16(in[b, y·s + ky, x·s + kx, ci]) · w[ky, kx, ci, co])`
/// over the window and input channels, the products exact and summed in fp32
/// (`VDPBF16PS`), the input rounded to bf16 after the prologue ([`Bf16Input::F32`]).
/// Elements of `out` outside the layout's `(n, out_h, out_w, c_out)` block are not
/// touched. Large convolutions use rayon's threads (`parallel`); each output element
/// is computed by one thread in a fixed order, so results do not depend on the
/// thread count.
///
/// # Errors
///
/// Nothing is written on an error.
/// - [`LowpError::Unsupported`] when the CPU lacks AVX512-BF16 (or [`force_lowp_off`](super::force_lowp_off)):
///   the caller runs fp32 instead.
/// - [`LowpError::WeightShape`] if `weight` is not `[kernel_h, kernel_w, c_in, c_out]`
///   of `shape`; [`LowpError::Length`] if the prologue's or epilogue's scale or shift
///   do not have `c_in` / `c_out` values; [`LowpError::Geometry`] if a layout reaches
///   outside its slice, distinct outputs would overlap, a size overflows, the window
///   has more than 49 taps, or a prologue is given to a convolution that is not 1x1.
// A kernel's flat argument list, as `direct_conv`'s.
#[allow(clippy::too_many_arguments)]
pub fn conv_bf16(
    input: Bf16Input<'_>,
    input_layout: ImageLayout,
    weight: &Bf16Weight,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    out: Bf16Output<'_>,
    out_layout: ImageLayout,
    parallel: bool,
) -> Result<(), LowpError> {
    run(
        Precision::Bf16.isa(),
        !super::super::DIRECT_ONLY.load(std::sync::atomic::Ordering::Relaxed),
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

/// [`conv_bf16`] on the kernels of `isa`: the same checks, then
/// [`LowpError::Unsupported`] if `isa` is `None` or not a bf16 one the CPU has.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    isa: Option<LowpIsa>,
    winograd: bool,
    input: Bf16Input<'_>,
    input_layout: ImageLayout,
    weight: &Bf16Weight,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    mut out: Bf16Output<'_>,
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
    if !isa.is_some_and(|isa| isa == LowpIsa::Avx512Bf16 && super::supported(isa)) {
        return Err(LowpError::Unsupported(Precision::Bf16));
    }
    if shape.macs() == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    {
        use super::job::{Job, Out, Post, Source, Wide};
        use super::winograd;
        // DenseNet's 3x3 convolutions on the larger maps, as the fp32 path runs them.
        let plain = match input {
            Bf16Input::F32 {
                data,
                prologue: Epilogue::Store,
            } => Some(winograd::Input::F32(data.as_ptr())),
            // `bf16` is a `repr(transparent)` `u16`.
            Bf16Input::Bf16 {
                data,
                prologue: Epilogue::Store,
            } => Some(winograd::Input::Bf16(data.as_ptr().cast::<u16>())),
            Bf16Input::F32 { .. } | Bf16Input::Bf16 { .. } => None,
        };
        if let (true, Some(input), Epilogue::Store) =
            (winograd && winograd::applies(&shape), plain, epilogue)
        {
            let o = match &mut out {
                Bf16Output::F32(o) => winograd::Output::F32(o.as_mut_ptr()),
                Bf16Output::Bf16(o) => winograd::Output::Bf16(o.as_mut_ptr().cast::<u16>()),
            };
            // SAFETY: the CPU has AVX512-BF16 with AVX-512F/BW/VL (checked above),
            // `check` validated the geometry, and `out` is borrowed mutably for the call.
            unsafe { winograd::run(input, input_layout, weight, shape, o, out_layout, parallel) };
            return Ok(());
        }
        let (scale, shift) = super::scale_shift(epilogue);
        let post = Post {
            weight_scale: std::ptr::null(),
            act_scale: 1.0,
            scale,
            shift,
            out_inv_scale: 1.0,
        };
        let source = match input {
            Bf16Input::F32 { data, prologue } => Source::Wide {
                data: Wide::F32(data.as_ptr()),
                prologue: super::scale_shift(prologue),
                inv_scale: 1.0,
            },
            // `bf16` is a `repr(transparent)` `u16`.
            Bf16Input::Bf16 {
                data,
                prologue: Epilogue::Store,
            } => Source::Act(data.as_ptr().cast::<u16>()),
            Bf16Input::Bf16 { data, prologue } => Source::Wide {
                data: Wide::Bf16(data.as_ptr().cast::<u16>()),
                prologue: super::scale_shift(prologue),
                inv_scale: 1.0,
            },
        };
        let out = match out {
            Bf16Output::F32(o) => Out::F32(o.as_mut_ptr()),
            Bf16Output::Bf16(o) => Out::Bf16(o.as_mut_ptr().cast::<u16>()),
        };
        let job = Job::<super::avx512_bf16::Avx512Bf16>::new(
            source,
            input_layout,
            weight.panels.as_slice(),
            weight.panels.rows(),
            shape,
            post,
            out,
            out_layout,
        );
        // SAFETY: the CPU has AVX512-BF16 with AVX-512F/BW/VL (checked above).
        unsafe { job.run(parallel) };
    }
    // (Unreachable elsewhere: no instruction set is supported.)
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (input, out, parallel);
    Ok(())
}

/// The convolution of [`conv_bf16`] by plain loops: each input value through the
/// prologue (multiply then add, in fp32) and rounded to bf16 ([`bf16_round`]), times
/// the bf16 weight, the exact products summed in f64, then the epilogue
/// `relu(fma(y, scale, shift))` in fp32; a bf16 output rounded by [`bf16_round`]. The
/// kernels differ only by summing in fp32 (`VDPBF16PS`, which also flushes subnormal
/// sums). Same arguments and errors (but for [`LowpError::Unsupported`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_bf16_reference(
    input: Bf16Input<'_>,
    input_layout: ImageLayout,
    weight: &Bf16Weight,
    shape: ConvShape,
    epilogue: Epilogue<'_>,
    mut out: Bf16Output<'_>,
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
    let value = |index: usize, ci: usize| -> f32 {
        match input {
            Bf16Input::F32 { data, .. } => bf16_round(start(prologue, ci, data[index])).to_f32(),
            // Taken as they are, or widened, through the prologue, and rounded again.
            Bf16Input::Bf16 { data, .. } => match prologue {
                Epilogue::Store => data[index].to_f32(),
                _ => bf16_round(start(prologue, ci, data[index].to_f32())).to_f32(),
            },
        }
    };
    for b in 0..s.n {
        for oy in 0..s.out_h {
            for ox in 0..s.out_w {
                for co in 0..s.c_out {
                    let mut acc = 0.0f64;
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
                                let w = bf16::from_bits(weight.panels.get(tap, ci, co));
                                acc += f64::from(value(at, ci)) * f64::from(w.to_f32());
                            }
                        }
                    }
                    let y = finish(epilogue, co, acc as f32);
                    let at = out_layout.index(b, oy, ox, co);
                    match &mut out {
                        Bf16Output::F32(o) => o[at] = y,
                        Bf16Output::Bf16(o) => o[at] = bf16_round(y),
                    }
                }
            }
        }
    }
    Ok(())
}
