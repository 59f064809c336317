//! Which x86-64 instruction sets the kernels may use: detected at run time (and cached)
//! by the standard library, or, without `std` (bare metal), the target features the
//! build enabled, since `core` has no run-time detection.
//!
//! Every x86-64 kernel is also behind `target_feature = "sse2"`, which every x86-64
//! target has except the soft-float ones (`x86_64-unknown-none`, OS kernels), where
//! LLVM cannot lower vector code: there the portable paths run.

/// AVX-512F.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(crate) fn avx512f() -> bool {
    #[cfg(feature = "std")]
    return std::is_x86_feature_detected!("avx512f");
    #[cfg(not(feature = "std"))]
    cfg!(target_feature = "avx512f")
}

/// AVX2 with FMA.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(crate) fn avx2_fma() -> bool {
    #[cfg(feature = "std")]
    return std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    #[cfg(not(feature = "std"))]
    cfg!(all(target_feature = "avx2", target_feature = "fma"))
}
