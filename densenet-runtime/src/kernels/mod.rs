//! Kernels: the only place for `unsafe`. Each has a checked public wrapper and a
//! safe reference implementation that tests compare it against.

mod cpu;
#[cfg(any(feature = "std", all(target_arch = "x86_64", target_feature = "sse2")))]
pub(crate) use cpu::avx512_half_width;
pub mod direct_conv;
pub mod elementwise;
pub mod gemm;
pub mod im2col;
