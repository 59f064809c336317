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

/// Whether the CPU has AVX-512F but runs a 512-bit multiply-add as two 256-bit halves
/// (AMD's Zen 4, family 19h: no CPUID flag says so, its family does): half the
/// multiply-adds a cycle of a core with full-width units (Zen 5, Intel's server
/// cores), so work that trades multiply-adds for passes over memory (Winograd's
/// transforms) pays on smaller shapes there. Read once: CPUID traps to the hypervisor
/// in a virtual machine. (Without `std`, false: bare-metal builds run inference only,
/// which does not ask.)
#[cfg(any(feature = "std", all(target_arch = "x86_64", target_feature = "sse2")))]
pub(crate) fn avx512_half_width() -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2", feature = "std"))]
    return half_width_by_cpuid();
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2", feature = "std")))]
    false
}

/// [`avx512_half_width`], read from CPUID once.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2", feature = "std"))]
fn half_width_by_cpuid() -> bool {
    static HALF_WIDTH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HALF_WIDTH.get_or_init(|| {
        use std::arch::x86_64::__cpuid;
        if !avx512f() {
            return false;
        }
        let vendor = __cpuid(0);
        // "AuthenticAMD", four bytes a register, in the order EBX, EDX, ECX.
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        // Family: the base field, plus the extended one where the base is 0xF.
        let eax = __cpuid(1).eax;
        let base = (eax >> 8) & 0xF;
        let family = if base == 0xF {
            base + ((eax >> 20) & 0xFF)
        } else {
            base
        };
        amd && family == 0x19
    })
}
