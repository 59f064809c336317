//! Kernels: the only place for `unsafe`. Each has a checked public wrapper and a
//! safe reference implementation that tests compare it against.

mod cpu;
pub mod direct_conv;
pub mod elementwise;
pub mod gemm;
pub mod im2col;
