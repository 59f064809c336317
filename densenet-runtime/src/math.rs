//! The float functions `core` lacks: the standard library's with `std`, `libm`'s
//! without (bare-metal builds), so `std` builds compute exactly what they always did.

/// Square root (correctly rounded either way).
#[inline]
pub(crate) fn sqrt(x: f64) -> f64 {
    #[cfg(feature = "std")]
    return x.sqrt();
    #[cfg(not(feature = "std"))]
    libm::sqrt(x)
}

/// `f32` square root (correctly rounded either way).
#[inline]
pub(crate) fn sqrtf(x: f32) -> f32 {
    #[cfg(feature = "std")]
    return x.sqrt();
    #[cfg(not(feature = "std"))]
    libm::sqrtf(x)
}

/// `e^x`.
#[inline]
pub(crate) fn expf(x: f32) -> f32 {
    #[cfg(feature = "std")]
    return x.exp();
    #[cfg(not(feature = "std"))]
    libm::expf(x)
}

/// Natural logarithm.
#[inline]
pub(crate) fn ln(x: f64) -> f64 {
    #[cfg(feature = "std")]
    return x.ln();
    #[cfg(not(feature = "std"))]
    libm::log(x)
}

/// Cosine.
#[inline]
pub(crate) fn cos(x: f64) -> f64 {
    #[cfg(feature = "std")]
    return x.cos();
    #[cfg(not(feature = "std"))]
    libm::cos(x)
}
