//! Low-precision inference: any model's convolutions in bf16 or int8 ([`Quantized`]).
//!
//! ```text
//! Quantized::int8(&model, &calibration, method)   calibrate.rs: fp32 passes → one scale
//!                                                 per convolution input (max or percentile)
//! Quantized::bf16(&model)                         weights rounded to bf16
//!   .forward / .predict / .evaluate               forward.rs: the lowp kernels (VNNI, BF16)
//!                                                 simulate.rs: the same arithmetic on fp32
//!                                                 kernels when the CPU lacks them
//!   .save_safetensors / ::load_safetensors        io.rs: the layout below
//! ```
//!
//! The schemes are the kernels' (`kernels/direct_conv/lowp`): **int8** is post-training
//! static quantization with per-output-channel symmetric s8 weights, u8 activations
//! with zero point 0 at a calibrated scale per convolution input, i32 accumulation and
//! the BatchNorm + ReLU before and after each 1x1 fused into its packing and its
//! epilogue (the bottleneck's output requantized to u8 for the 3x3); **bf16** rounds
//! weights and inputs to bf16 and accumulates in fp32. The stem (7x7 over raw, signed
//! pixels), the pools and the head stay fp32 in both.
//!
//! # Calibration
//!
//! [`Quantized::int8`] runs the fp32 model over the caller's batches and records, for
//! every quantized convolution input (each dense layer's BN-ReLU'd block buffer read by
//! its 1x1, each 3x3's input, each transition's pooled BN-ReLU output), the maximum
//! ([`CalibrationMethod::MinMax`]) or a percentile ([`CalibrationMethod::Percentile`])
//! of its values; the scale is that value / 255.
//!
//! # CPUs without the instructions
//!
//! int8 needs AVX512-VNNI or AVX-VNNI, bf16 AVX512-BF16 (see [`Precision::available`]).
//! Elsewhere a [`Quantized`] model runs the same arithmetic on the fp32 kernels (the
//! dequantized weights, each input rounded as the kernels would) and
//! [`Quantized::fallback_notice`] says so; [`Quantized::require_kernels`] makes it a
//! [`QuantizeError::Unsupported`] instead.
//!
//! # File layout
//!
//! A safetensors file whose header metadata has `densenet.precision` = `int8` or `bf16`
//! (and `densenet.model`, the architecture's name), tensors in torchvision naming:
//!
//! | tensor | dtype, shape | int8 | bf16 |
//! |---|---|---|---|
//! | `features.conv0.weight` (stem) | F32 OIHW | ✓ | ✓ |
//! | `<bn>.weight`, `.bias`, `.running_mean`, `.running_var` | F32 `[C]` | ✓ | ✓ |
//! | `<bn>.num_batches_tracked` | I64 `[]` | ✓ | ✓ |
//! | `classifier.weight` / `.bias` | F32 `[K, C]` / `[K]` | ✓ | ✓ |
//! | `<conv>.weight` (every other conv) | BF16 OIHW | | ✓ |
//! | `int8/<conv>.qweight` | I8 OIHW, in `[-127, 127]` | ✓ | |
//! | `int8/<conv>.qscale` | F32 `[c_out]`: `w ≈ qweight · qscale[o]` | ✓ | |
//! | `int8/<conv>.input_scale` | F32 `[]`: the u8 input `x ≈ q · input_scale` | ✓ | |
//!
//! `<conv>` is the convolution's torchvision module path without `.weight`
//! (`features.denseblock1.denselayer1.conv1`, `features.transition1.conv`). A bf16
//! file is also a torchvision state dict (`load_state_dict` converts BF16 tensors); an
//! int8 file's `qweight · qscale` are the weights it was quantized from, rounded.
//! Loading ([`Quantized::from_safetensors_bytes`]) checks the fp32 part and the
//! dequantized convolutions' shapes with the strict fp32 loader, so a file of another
//! architecture is refused as [`QuantizeError::Load`] with
//! [`LoadError::ArchitectureMismatch`](crate::LoadError::ArchitectureMismatch) (or the
//! missing / unexpected / mis-shaped tensor), and each quantized tensor's dtype, shape
//! and scales.
//!
//! Speed and accuracy on this repository's CPU: `BENCHMARKS.md`, "Low precision".

mod calibrate;
mod error;
mod forward;
mod io;
mod quantized;
mod simulate;

pub use crate::kernels::direct_conv::lowp::{LowpIsa, Precision};
pub use calibrate::CalibrationMethod;
pub use error::QuantizeError;
pub use forward::LowpWorkspace;
pub use quantized::{PrecisionSummary, Quantized};
