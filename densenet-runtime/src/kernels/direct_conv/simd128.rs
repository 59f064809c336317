//! The WebAssembly SIMD128 kernels, compiled in when the build targets `wasm32` with the
//! `simd128` feature (there is no run-time detection in WebAssembly: a module either
//! validates with SIMD instructions or does not load): 6-pixel × 8-channel tiles in 12
//! accumulators, two weight vectors and one broadcast input, which engines keep in the
//! 16 registers of x86-64 and more of AArch64. WebAssembly has no fused multiply-add
//! outside relaxed SIMD, so products and sums round separately; masked loads and
//! stores of a last partial vector go through a small stack buffer.

use core::arch::wasm32::*;

use super::job::Microkernel;
use super::MAX_TILE;

/// WebAssembly SIMD128 (chosen at compile time).
pub(super) struct Simd128;

impl Microkernel for Simd128 {
    const TILE: usize = 6;
    const PANEL: usize = 8;

    unsafe fn pack_prologue(
        src: *const f32,
        offsets: &[usize],
        kc: usize,
        scale_shift: (*const f32, *const f32),
        dst: *mut f32,
    ) {
        // SAFETY: the trait's contract.
        unsafe { pack_prologue(src, offsets, kc, scale_shift, dst) }
    }

    unsafe fn tile(
        rows: usize,
        width: usize,
        a: *const f32,
        a_step: usize,
        taps: &[usize],
        c_in: usize,
        b: *const f32,
        ldb: usize,
        epilogue: (*const f32, *const f32),
        c: *mut f32,
        c_offsets: &[usize; MAX_TILE],
        accumulate: bool,
    ) {
        // SAFETY: the trait's contract, which includes the tile's bounds.
        unsafe {
            dispatch(
                rows, width, a, a_step, taps, c_in, b, ldb, epilogue, c, c_offsets, accumulate,
            )
        }
    }
}

/// The first `lanes` (1..=4) floats at `p`, zeros after.
///
/// # Safety
///
/// `lanes` floats at `p` are readable.
#[inline(always)]
unsafe fn load_partial(p: *const f32, lanes: usize) -> v128 {
    let mut buf = [0.0f32; 4];
    // SAFETY: `lanes ≤ 4` floats, readable by the caller's contract, into the buffer.
    unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), lanes) };
    // SAFETY: the buffer holds 4 floats.
    unsafe { v128_load(buf.as_ptr().cast()) }
}

/// Stores the first `lanes` (1..=4) lanes of `x` at `p`.
///
/// # Safety
///
/// `lanes` floats at `p` are writable.
#[inline(always)]
unsafe fn store_partial(p: *mut f32, lanes: usize, x: v128) {
    let mut buf = [0.0f32; 4];
    // SAFETY: the buffer holds 4 floats.
    unsafe { v128_store(buf.as_mut_ptr().cast(), x) };
    // SAFETY: `lanes ≤ 4` floats, writable by the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), p, lanes) };
}

/// [`relu`](super::relu) of 4 lanes: `y <= 0 → 0`, so NaN stays NaN (as torch's relu)
/// and -0.0 becomes 0.0.
#[inline(always)]
fn relu4(y: v128) -> v128 {
    let zero = f32x4_splat(0.0);
    v128_bitselect(zero, y, f32x4_le(y, zero))
}

/// [`Microkernel::pack_prologue`] for SIMD128.
///
/// # Safety
///
/// As [`Microkernel::pack_prologue`].
unsafe fn pack_prologue(
    src: *const f32,
    offsets: &[usize],
    kc: usize,
    (scale, shift): (*const f32, *const f32),
    dst: *mut f32,
) {
    for c0 in (0..kc).step_by(4) {
        let lanes = (kc - c0).min(4);
        // SAFETY: channels `c0 .. c0 + lanes` of scale and shift: valid by the contract.
        let (sv, tv) = unsafe {
            (
                load_partial(scale.add(c0), lanes),
                load_partial(shift.add(c0), lanes),
            )
        };
        for (i, &offset) in offsets.iter().enumerate() {
            // SAFETY: pixel `i`, the same channels: valid by the contract.
            unsafe {
                let x = load_partial(src.add(offset + c0), lanes);
                let y = f32x4_add(f32x4_mul(x, sv), tv);
                store_partial(dst.add(i * kc + c0), lanes, relu4(y));
            }
        }
    }
}

/// Picks the monomorphised tile kernel for `rows` pixels × `width` channels.
///
/// # Safety
///
/// As [`Microkernel::tile`], with `1 ≤ rows ≤ 6` and `1 ≤ width ≤ 8`.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn dispatch(
    rows: usize,
    width: usize,
    a: *const f32,
    a_step: usize,
    taps: &[usize],
    c_in: usize,
    b: *const f32,
    ldb: usize,
    epilogue: (*const f32, *const f32),
    c: *mut f32,
    c_offsets: &[usize; MAX_TILE],
    accumulate: bool,
) {
    // Whole vectors load and store plainly; only a last partial vector goes through
    // `load_partial`/`store_partial`.
    let partial = !width.is_multiple_of(4);
    macro_rules! pick {
        ($($mr:literal)*) => {
            match (rows, width > 4, partial) {
                $(
                    ($mr, true, false) => tile::<$mr, 2, false>,
                    ($mr, false, false) => tile::<$mr, 1, false>,
                    ($mr, true, true) => tile::<$mr, 2, true>,
                    ($mr, false, true) => tile::<$mr, 1, true>,
                )*
                _ => unreachable!("tile rows are 1..=6"),
            }
        };
    }
    let kernel = pick!(1 2 3 4 5 6);
    let last_lanes = width - 4 * (width.div_ceil(4) - 1);
    // SAFETY: forwarded from the caller's contract; `last_lanes` are the last vector's
    // columns of `width`.
    unsafe {
        kernel(
            a, a_step, taps, c_in, b, ldb, last_lanes, epilogue, c, c_offsets, accumulate,
        )
    }
}

/// [`Microkernel::tile`] for `MR` pixels × `NV·4` channels, the last vector limited to
/// `last_lanes` lanes when `PARTIAL`.
///
/// # Safety
///
/// As [`Microkernel::tile`], for `MR` rows and the `NV` vectors' columns (the last
/// one's limited to `last_lanes` when `PARTIAL`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const MR: usize, const NV: usize, const PARTIAL: bool>(
    a: *const f32,
    a_step: usize,
    taps: &[usize],
    c_in: usize,
    b: *const f32,
    ldb: usize,
    last_lanes: usize,
    epilogue: (*const f32, *const f32),
    c: *mut f32,
    c_offsets: &[usize; MAX_TILE],
    accumulate: bool,
) {
    macro_rules! load {
        ($v:expr, $p:expr) => {
            if PARTIAL && $v + 1 == NV {
                load_partial($p, last_lanes)
            } else {
                v128_load($p.cast())
            }
        };
    }
    macro_rules! store {
        ($v:expr, $p:expr, $x:expr) => {
            if PARTIAL && $v + 1 == NV {
                store_partial($p, last_lanes, $x)
            } else {
                v128_store($p.cast(), $x)
            }
        };
    }
    let mut acc = [[f32x4_splat(0.0); NV]; MR];
    if accumulate {
        for (i, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: output pixel `i`, vector `v`: readable by the contract.
                *acc = unsafe { load!(v, c.add(c_offsets[i] + 4 * v)) };
            }
        }
    }
    for (t, &tap) in taps.iter().enumerate() {
        // SAFETY (this block and the loop below): in bounds by the contract.
        let (at, bt) = unsafe { (a.add(tap), b.add(t * c_in * ldb)) };
        for ci in 0..c_in {
            let mut bv = [f32x4_splat(0.0); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = unsafe { load!(v, bt.add(ci * ldb + 4 * v)) };
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = f32x4_splat(unsafe { *at.add(i * a_step + ci) });
                for v in 0..NV {
                    acc[v] = f32x4_add(acc[v], f32x4_mul(av, bv[v]));
                }
            }
        }
    }
    let (scale, shift) = epilogue;
    if !scale.is_null() {
        for v in 0..NV {
            // SAFETY: `scale` and `shift` hold the tile's columns.
            let (sv, tv) = unsafe { (load!(v, scale.add(4 * v)), load!(v, shift.add(4 * v))) };
            for acc in acc.iter_mut() {
                acc[v] = relu4(f32x4_add(f32x4_mul(acc[v], sv), tv));
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: output pixel `i`, vector `v`: writable by the contract.
            unsafe { store!(v, c.add(c_offsets[i] + 4 * v), acc) };
        }
    }
}
