//! Every low-precision kernel this CPU has against the plain-loop references of the same
//! arithmetic (int8: equal bit for bit; bf16: within the bound of fp32 summation), over
//! tile tails, odd channel counts, strides, strided layouts, prologues and epilogues;
//! and both schemes against the fp32 convolution (cosine similarity), so the scheme is
//! right and not only self-consistent.

use half::bf16;

use super::super::{direct_conv_reference, ConvShape, Epilogue, ImageLayout};
use super::{
    bf16_round, conv_bf16, conv_bf16_reference, conv_int8, conv_int8_reference, force_avx_vnni,
    force_lowp_off, quantize_activation, supported, Bf16Input, Bf16Output, Bf16Weight, Int8Input,
    Int8Output, Int8Weight, LowpError, LowpIsa, Precision,
};
use crate::rng::Rng;

fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| rng.normal()).collect()
}

fn random_u8(len: usize, rng: &mut Rng) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// The int8 instruction sets this CPU has, each tested.
fn int8_isas() -> Vec<LowpIsa> {
    let isas: Vec<LowpIsa> = [LowpIsa::Avx512Vnni, LowpIsa::AvxVnni]
        .into_iter()
        .filter(|&isa| supported(isa))
        .collect();
    if isas.is_empty() {
        eprintln!("no AVX512-VNNI or AVX-VNNI here: the int8 kernels are not compared");
    }
    isas
}

/// Whether this CPU runs the bf16 kernel (else the comparisons are skipped, loudly).
fn has_bf16() -> bool {
    let has = supported(LowpIsa::Avx512Bf16);
    if !has {
        eprintln!("no AVX512-BF16 here: the bf16 kernel is not compared");
    }
    has
}

/// A convolution with its layouts and data: the input with spare channels and pixels
/// (`in_extra`), the output a column range of wider pixels, optionally the interior of
/// a padded map.
struct Case {
    shape: ConvShape,
    in_extra: (usize, usize),
    out_pixel_stride: usize,
    out_offset: usize,
    out_pad: usize,
    prologue: bool,
    epilogue: bool,
    parallel: bool,
    seed: u64,
}

/// The data of a [`Case`].
struct Data {
    input_layout: ImageLayout,
    input: Vec<f32>,
    input_u8: Vec<u8>,
    input_bf16: Vec<bf16>,
    weight: ndarray::Array4<f32>,
    pro: (Vec<f32>, Vec<f32>),
    epi: (Vec<f32>, Vec<f32>),
    out_layout: ImageLayout,
    out_len: usize,
}

impl Case {
    fn data(&self) -> Data {
        let mut rng = Rng::new(self.seed);
        let s = self.shape;
        let in_h = (s.out_h - 1) * s.stride + s.kernel_h;
        let in_w = (s.out_w - 1) * s.stride + s.kernel_w;
        // `(0, 0)`: a dense batch (which 1x1 convolutions tile across rows and images).
        let pixel = s.c_in + self.in_extra.0;
        let row = (in_w + self.in_extra.1) * pixel;
        let (offset, gap) = if self.in_extra == (0, 0) {
            (0, 0)
        } else {
            (3, 5)
        };
        let input_layout = ImageLayout {
            offset,
            image_stride: in_h * row + gap,
            row_stride: row,
            pixel_stride: pixel,
        };
        let in_len = offset + s.n * (in_h * row + gap);
        let input = random(in_len, &mut rng);
        let input_u8 = random_u8(in_len, &mut rng);
        let input_bf16 = random(in_len, &mut rng)
            .into_iter()
            .map(bf16_round)
            .collect();
        let dims = (s.kernel_h, s.kernel_w, s.c_in, s.c_out);
        let weight = ndarray::Array4::from_shape_vec(
            dims,
            random(s.kernel_h * s.kernel_w * s.c_in * s.c_out, &mut rng),
        )
        .unwrap();
        let pro = (random(s.c_in, &mut rng), random(s.c_in, &mut rng));
        let epi = (random(s.c_out, &mut rng), random(s.c_out, &mut rng));
        let ow = s.out_w + 2 * self.out_pad;
        let out_layout = ImageLayout {
            offset: self.out_offset + (ow + 1) * self.out_pad * self.out_pixel_stride,
            image_stride: (s.out_h + 2 * self.out_pad) * ow * self.out_pixel_stride,
            row_stride: ow * self.out_pixel_stride,
            pixel_stride: self.out_pixel_stride,
        };
        let out_len = self.out_offset + s.n * out_layout.image_stride;
        Data {
            input_layout,
            input,
            input_u8,
            input_bf16,
            weight,
            pro,
            epi,
            out_layout,
            out_len,
        }
    }
}

impl Data {
    fn prologue(&self, on: bool) -> Epilogue<'_> {
        if on {
            Epilogue::ScaleShiftRelu {
                scale: &self.pro.0,
                shift: &self.pro.1,
            }
        } else {
            Epilogue::Store
        }
    }

    fn epilogue(&self, on: bool) -> Epilogue<'_> {
        if on {
            Epilogue::ScaleShiftRelu {
                scale: &self.epi.0,
                shift: &self.epi.1,
            }
        } else {
            Epilogue::Store
        }
    }
}

/// Runs every int8 kernel of this CPU on `case` with each input kind (f32 and bf16
/// through the prologue if the case has one; u8 otherwise) and output kind (f32, u8,
/// bf16, and i32 without an epilogue), and checks the whole output slice, sentinels
/// outside the layout included, equal to the reference's bit for bit.
fn int8_case(case: &Case) {
    let d = case.data();
    let s = case.shape;
    let weight = Int8Weight::quantize(d.weight.view()).unwrap();
    let epilogue = d.epilogue(case.epilogue);
    // 3.0 / 255: the normal inputs above 3 saturate at 255, the negative ones at 0.
    let a_scale = 3.0 / 255.0;
    let mut inputs = vec![
        Int8Input::F32 {
            data: &d.input,
            prologue: d.prologue(case.prologue),
            scale: a_scale,
        },
        Int8Input::Bf16 {
            data: &d.input_bf16,
            prologue: d.prologue(case.prologue),
            scale: a_scale,
        },
    ];
    if !case.prologue {
        inputs.push(Int8Input::U8 {
            data: &d.input_u8,
            scale: 0.01,
        });
    }
    let mut rng = Rng::new(case.seed ^ 0xabcd);
    let sentinel_f32 = random(d.out_len, &mut rng);
    let sentinel_u8 = random_u8(d.out_len, &mut rng);
    let sentinel_i32: Vec<i32> = (0..d.out_len).map(|_| rng.next_u64() as i32).collect();
    let sentinel_bf16: Vec<bf16> = random(d.out_len, &mut rng)
        .into_iter()
        .map(bf16_round)
        .collect();
    for input in inputs {
        for kind in ["f32", "u8", "bf16", "i32"] {
            if kind == "i32" && case.epilogue {
                continue;
            }
            let (mut e32, mut e8, mut e16, mut ei) = (
                sentinel_f32.clone(),
                sentinel_u8.clone(),
                sentinel_bf16.clone(),
                sentinel_i32.clone(),
            );
            conv_int8_reference(
                input,
                d.input_layout,
                &weight,
                s,
                epilogue,
                int8_out(kind, &mut e32, &mut e8, &mut e16, &mut ei),
                d.out_layout,
            )
            .unwrap();
            for isa in int8_isas() {
                let (mut a32, mut a8, mut a16, mut ai) = (
                    sentinel_f32.clone(),
                    sentinel_u8.clone(),
                    sentinel_bf16.clone(),
                    sentinel_i32.clone(),
                );
                super::int8::run(
                    Some(isa),
                    input,
                    d.input_layout,
                    &weight,
                    s,
                    epilogue,
                    int8_out(kind, &mut a32, &mut a8, &mut a16, &mut ai),
                    d.out_layout,
                    case.parallel,
                )
                .unwrap();
                let what = format!(
                    "{isa:?}, {} input, {kind} output, {s:?}",
                    match input {
                        Int8Input::F32 { .. } => "f32",
                        Int8Input::Bf16 { .. } => "bf16",
                        Int8Input::U8 { .. } => "u8",
                    }
                );
                match kind {
                    "bf16" => {
                        for (i, (e, a)) in e16.iter().zip(&a16).enumerate() {
                            assert_eq!(e.to_bits(), a.to_bits(), "{what}: element {i}: {a} vs {e}");
                        }
                    }
                    "f32" => {
                        for (i, (e, a)) in e32.iter().zip(&a32).enumerate() {
                            assert_eq!(e.to_bits(), a.to_bits(), "{what}: element {i}: {a} vs {e}");
                        }
                    }
                    "u8" => assert_eq!(e8, a8, "{what}"),
                    _ => assert_eq!(ei, ai, "{what}"),
                }
            }
        }
    }
}

/// One of the output slices as `kind` ("f32", "u8" with scale 0.05, "bf16", "i32").
fn int8_out<'a>(
    kind: &str,
    f: &'a mut [f32],
    u: &'a mut [u8],
    h: &'a mut [bf16],
    i: &'a mut [i32],
) -> Int8Output<'a> {
    match kind {
        "f32" => Int8Output::F32(f),
        "bf16" => Int8Output::Bf16(h),
        "u8" => Int8Output::U8 {
            data: u,
            scale: 0.05,
        },
        _ => Int8Output::I32(i),
    }
}

/// The tolerance for fp32 summation's error in a sum of `depth` products whose
/// magnitudes add up to `magnitude`: `4·√depth·2⁻²⁴·Σ|x·w|`. The worst case is
/// `depth·2⁻²⁴·Σ|x·w|` (the same up to 16 products); rounding errors of random signs
/// grow as `√depth` instead, which keeps the tolerance ~50x below the effect of bf16's
/// rounding on DenseNet's depths (checked by `quantized_convolutions_are_close_to_fp32`),
/// so a kernel that skipped it would fail.
fn summation_tolerance(depth: usize, magnitude: f32) -> f32 {
    4.0 * (depth as f32).sqrt() * (f32::EPSILON / 2.0) * magnitude
}

/// [`summation_tolerance`] for each output of `case`, times the epilogue's `|scale|`,
/// plus one fp32 rounding of the output: the magnitudes from the reference.
fn bf16_bounds(case: &Case, d: &Data, weight: &Bf16Weight, input: Bf16Input<'_>) -> Vec<f32> {
    let s = case.shape;
    let abs_input: Vec<f32>;
    let abs_bf16: Vec<bf16>;
    // The prologue's outputs are relu'd, so non-negative already.
    let input = match input {
        Bf16Input::F32 { prologue, .. } if case.prologue => Bf16Input::F32 {
            data: &d.input,
            prologue,
        },
        Bf16Input::F32 { .. } => {
            abs_input = d.input.iter().map(|x| x.abs()).collect();
            Bf16Input::F32 {
                data: &abs_input,
                prologue: Epilogue::Store,
            }
        }
        Bf16Input::Bf16 { data, prologue } if case.prologue => Bf16Input::Bf16 { data, prologue },
        Bf16Input::Bf16 { data, .. } => {
            abs_bf16 = data
                .iter()
                .map(|x| bf16::from_f32(x.to_f32().abs()))
                .collect();
            Bf16Input::Bf16 {
                data: &abs_bf16,
                prologue: Epilogue::Store,
            }
        }
    };
    let abs_weight = Bf16Weight::from_bf16_hwio(
        weight.dims(),
        &weight
            .to_hwio()
            .iter()
            .map(|w| bf16::from_f32(w.to_f32().abs()))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut magnitude = vec![0.0f32; d.out_len];
    conv_bf16_reference(
        input,
        d.input_layout,
        &abs_weight,
        s,
        Epilogue::Store,
        Bf16Output::F32(&mut magnitude),
        d.out_layout,
    )
    .unwrap();
    let depth = s.kernel_h * s.kernel_w * s.c_in;
    let mut bounds = vec![0.0f32; d.out_len];
    for b in 0..s.n {
        for y in 0..s.out_h {
            for x in 0..s.out_w {
                for co in 0..s.c_out {
                    let at = d.out_layout.index(b, y, x, co);
                    let gain = if case.epilogue {
                        d.epi.0[co].abs()
                    } else {
                        1.0
                    };
                    bounds[at] = summation_tolerance(depth, magnitude[at]) * gain;
                }
            }
        }
    }
    bounds
}

/// Runs the bf16 kernel on `case` with each input kind (f32 and bf16, through the
/// prologue if the case has one) and output kind (f32, bf16), and checks the whole
/// output slice against the reference: elements outside the layout untouched, the
/// others within the bound of fp32 summation (and one bf16 rounding step for a bf16
/// output).
fn bf16_case(case: &Case) {
    if !has_bf16() {
        return;
    }
    let d = case.data();
    let s = case.shape;
    let weight = Bf16Weight::from_hwio(d.weight.view()).unwrap();
    let epilogue = d.epilogue(case.epilogue);
    let inputs = [
        Bf16Input::F32 {
            data: &d.input,
            prologue: d.prologue(case.prologue),
        },
        Bf16Input::Bf16 {
            data: &d.input_bf16,
            prologue: d.prologue(case.prologue),
        },
    ];
    let mut rng = Rng::new(case.seed ^ 0x1234);
    let sentinel = random(d.out_len, &mut rng);
    let sentinel_bf16: Vec<bf16> = sentinel.iter().map(|&x| bf16_round(x)).collect();
    for input in inputs {
        let bounds = bf16_bounds(case, &d, &weight, input);
        let what = |kind| {
            let input = match input {
                Bf16Input::F32 { .. } => "f32",
                Bf16Input::Bf16 { .. } => "bf16",
            };
            format!("{input} input, {kind} output, {s:?}")
        };
        let mut expected = sentinel.clone();
        conv_bf16_reference(
            input,
            d.input_layout,
            &weight,
            s,
            epilogue,
            Bf16Output::F32(&mut expected),
            d.out_layout,
        )
        .unwrap();
        let mut actual = sentinel.clone();
        super::bf16::run(
            Some(LowpIsa::Avx512Bf16),
            false,
            input,
            d.input_layout,
            &weight,
            s,
            epilogue,
            Bf16Output::F32(&mut actual),
            d.out_layout,
            case.parallel,
        )
        .unwrap();
        for (i, ((&e, &a), &bound)) in expected.iter().zip(&actual).zip(&bounds).enumerate() {
            // Plus one rounding of the output (the epilogue's fma).
            let bound = bound + e.abs() * f32::EPSILON;
            assert!(
                (e - a).abs() <= bound,
                "{}: element {i}: {a} vs {e} (bound {bound})",
                what("f32")
            );
        }
        let mut expected = sentinel_bf16.clone();
        conv_bf16_reference(
            input,
            d.input_layout,
            &weight,
            s,
            epilogue,
            Bf16Output::Bf16(&mut expected),
            d.out_layout,
        )
        .unwrap();
        let mut actual = sentinel_bf16.clone();
        super::bf16::run(
            Some(LowpIsa::Avx512Bf16),
            false,
            input,
            d.input_layout,
            &weight,
            s,
            epilogue,
            Bf16Output::Bf16(&mut actual),
            d.out_layout,
            case.parallel,
        )
        .unwrap();
        for (i, ((&e, &a), &bound)) in expected.iter().zip(&actual).zip(&bounds).enumerate() {
            let (e, a) = (e.to_f32(), a.to_f32());
            // The sums may round to neighbouring bf16 values: one step of 2⁻⁷·|e|.
            let bound = bound + e.abs() / 128.0;
            assert!(
                (e - a).abs() <= bound,
                "{}: element {i}: {a} vs {e} (bound {bound})",
                what("bf16")
            );
        }
    }
}

/// Both precisions on `case`.
fn both(case: Case) {
    int8_case(&case);
    bf16_case(&case);
}

fn conv(n: usize, hw: usize, c_in: usize, c_out: usize, k: usize) -> ConvShape {
    ConvShape {
        n,
        out_h: hw,
        out_w: hw,
        c_in,
        c_out,
        kernel_h: k,
        kernel_w: k,
        stride: 1,
    }
}

#[allow(clippy::too_many_arguments)]
fn case(
    shape: ConvShape,
    in_extra: (usize, usize),
    out_pixel_stride: usize,
    out_offset: usize,
    out_pad: usize,
    prologue: bool,
    epilogue: bool,
    parallel: bool,
    seed: u64,
) -> Case {
    Case {
        shape,
        in_extra,
        out_pixel_stride,
        out_offset,
        out_pad,
        prologue,
        epilogue,
        parallel,
        seed,
    }
}

#[test]
fn lowp_matches_reference_on_densenet_shapes() {
    // A bottleneck 1x1 (block 3's widest, 1024 channels in, 128 out) as the runtime
    // runs it: norm1 as the prologue over the first channels of a wider block
    // buffer, norm2 as the epilogue into the interior of the 3x3's padded input.
    both(case(
        conv(1, 14, 1024, 128, 1),
        (32, 0),
        128,
        0,
        1,
        true,
        true,
        true,
        1,
    ));
    // Block 1's: 256 → 128 at a 14-wide map, no prologue (u8/bf16 inputs in place).
    both(case(
        conv(1, 14, 256, 128, 1),
        (0, 0),
        128,
        0,
        0,
        false,
        true,
        true,
        2,
    ));
    // The 3x3 growth conv: 128 → 32 over a padded map into a column range of a
    // block buffer, with and without an epilogue.
    both(case(
        conv(1, 14, 128, 32, 3),
        (0, 0),
        256,
        96,
        0,
        false,
        false,
        true,
        3,
    ));
    both(case(
        conv(2, 7, 128, 32, 3),
        (0, 0),
        512,
        160,
        0,
        false,
        true,
        true,
        4,
    ));
    // 7x7 maps, whose 1x1 convolutions tile across rows and images: a dense input,
    // and a bottleneck's prologue into a padded map.
    both(case(
        conv(3, 7, 40, 48, 1),
        (0, 0),
        56,
        2,
        0,
        false,
        true,
        false,
        5,
    ));
    both(case(
        conv(2, 7, 70, 128, 1),
        (26, 0),
        128,
        0,
        1,
        true,
        true,
        true,
        6,
    ));
    // A transition (pooled, 1x1, wide output: ten panels, the last masked).
    both(case(
        conv(1, 3, 200, 300, 1),
        (4, 1),
        310,
        5,
        0,
        true,
        true,
        false,
        7,
    ));
    both(case(
        conv(1, 3, 200, 300, 1),
        (0, 0),
        300,
        0,
        0,
        false,
        false,
        true,
        8,
    ));
}

#[test]
fn lowp_every_tile_width_and_channel_count() {
    // Tile tails (1..=30 pixels a row: 14-pixel and 6-pixel tiles), masked panels,
    // odd and non-multiple-of-4 channel counts (packed with zero padding), strides 1
    // and 2 (the 3x3's patch of shared input columns), strided layouts.
    for w in 1..=30 {
        let c_out = [1, 5, 8, 9, 16, 17, 31, 32, 33, 64][w % 10];
        let c_in = [1, 2, 3, 4, 5, 7, 8, 12, 13][w % 9];
        let shape = ConvShape {
            n: 1,
            out_h: 2,
            out_w: w,
            c_in,
            c_out,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1 + w % 2,
        };
        both(case(
            shape,
            (1, 1),
            c_out + 3,
            2,
            0,
            false,
            w % 3 == 0,
            false,
            100 + w as u64,
        ));
        // The same as 1x1 with a prologue over flat tiles (prologue 1x1 only).
        let one = ConvShape {
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
            n: 2,
            ..shape
        };
        both(case(
            one,
            (0, 0),
            c_out,
            0,
            0,
            true,
            w % 2 == 0,
            w % 4 == 0,
            200 + w as u64,
        ));
    }
}

#[test]
fn lowp_strided_windows_and_the_stem() {
    // A 2x2 window at stride 3 (columns skipped: packed window by window, im2col-like).
    let skip = ConvShape {
        n: 2,
        out_h: 3,
        out_w: 15,
        c_in: 6,
        c_out: 20,
        kernel_h: 2,
        kernel_w: 2,
        stride: 3,
    };
    both(case(skip, (2, 1), 24, 1, 0, false, true, true, 300));
    // A 1x1 at stride 2 (the input's every other pixel).
    let strided = ConvShape {
        kernel_h: 1,
        kernel_w: 1,
        stride: 2,
        ..conv(2, 9, 36, 40, 1)
    };
    both(case(strided, (3, 0), 40, 0, 0, true, false, true, 301));
    // The 7x7/2 stem on 3 channels (bf16 only in the runtime; int8 is exact anyway).
    let stem = ConvShape {
        n: 1,
        out_h: 9,
        out_w: 17,
        c_in: 3,
        c_out: 64,
        kernel_h: 7,
        kernel_w: 7,
        stride: 2,
    };
    both(case(stem, (0, 0), 64, 0, 0, false, true, true, 302));
}

/// The largest sums the depth bound admits, exactly: 255 · (−128) · 65,793 is
/// −2,147,483,520 (i32's minimum is −2,147,483,648); one channel more is refused.
#[test]
fn int8_sums_are_exact_up_to_the_depth_bound() {
    let c_in = 65_793;
    let shape = ConvShape {
        n: 1,
        out_h: 1,
        out_w: 2,
        c_in,
        c_out: 3,
        kernel_h: 1,
        kernel_w: 1,
        stride: 1,
    };
    let weight = Int8Weight::from_quantized(
        [1, 1, c_in, 3],
        &(0..c_in * 3)
            .map(|i| [-128, 127, 1][i % 3])
            .collect::<Vec<i8>>(),
        &[1.0; 3],
    )
    .unwrap();
    let input = vec![255u8; 2 * c_in];
    let layout = ImageLayout::dense(1, 2, c_in);
    for isa in int8_isas() {
        let mut out = vec![0i32; 6];
        super::int8::run(
            Some(isa),
            Int8Input::U8 {
                data: &input,
                scale: 1.0,
            },
            layout,
            &weight,
            shape,
            Epilogue::Store,
            Int8Output::I32(&mut out),
            ImageLayout::dense(1, 2, 3),
            true,
        )
        .unwrap();
        let c = c_in as i32;
        assert_eq!(
            out,
            [-255 * 128 * c, 255 * 127 * c, 255 * c].repeat(2),
            "{isa:?}"
        );
    }
    let deeper = Int8Weight::from_quantized([1, 1, c_in + 1, 1], &vec![0; c_in + 1], &[1.0]);
    let result = conv_int8_reference(
        Int8Input::U8 {
            data: &vec![0; c_in + 1],
            scale: 1.0,
        },
        ImageLayout::dense(1, 1, c_in + 1),
        &deeper.unwrap(),
        ConvShape {
            c_in: c_in + 1,
            c_out: 1,
            out_w: 1,
            ..shape
        },
        Epilogue::Store,
        Int8Output::I32(&mut [0]),
        ImageLayout::dense(1, 1, 1),
    );
    assert!(matches!(result, Err(LowpError::Geometry(_))), "{result:?}");
}

/// `bf16_round` is `VCVTNEPS2BF16`: on the specials, ties, subnormals, and random bits.
#[test]
#[cfg(target_arch = "x86_64")]
fn bf16_round_matches_the_instruction() {
    if !has_bf16() {
        return;
    }
    let mut bits: Vec<u32> = vec![
        0,
        0x8000_0000,
        0x3f80_0000,
        0x3f80_8000,
        0x3f81_8000,
        0x3f80_8001,
        0x3f80_7fff,
        0x7f7f_ffff,
        0xff7f_ffff,
        0x7f7f_7fff,
        0x7f80_0000,
        0xff80_0000,
        0x7f80_0001,
        0x7fc0_0000,
        0xffc0_1234,
        0x7fbf_ffff,
        0x0000_0001,
        0x007f_ffff,
        0x807f_ffff,
        0x0080_0000,
        0x0080_8000,
        0x8080_8000,
    ];
    let mut rng = Rng::new(7);
    bits.extend((0..100_000).map(|_| rng.next_u64() as u32));
    for chunk in bits.chunks(16) {
        let mut lanes = [0u32; 16];
        lanes[..chunk.len()].copy_from_slice(chunk);
        let mut rounded = [0u16; 16];
        // SAFETY: the CPU has AVX512-BF16 (checked above) and AVX-512F; both arrays
        // hold 16 lanes.
        unsafe { cvtneps(&lanes, &mut rounded) };
        for (&x, &r) in chunk.iter().zip(&rounded) {
            let ours = bf16_round(f32::from_bits(x)).to_bits();
            assert_eq!(
                ours, r,
                "{x:#010x}: ours {ours:#06x}, the instruction's {r:#06x}"
            );
        }
    }
}

/// `VCVTNEPS2BF16` of 16 lanes.
///
/// # Safety
///
/// The CPU has AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn cvtneps(lanes: &[u32; 16], out: &mut [u16; 16]) {
    use std::arch::x86_64::*;
    // SAFETY: 16 lanes each, unaligned loads and stores.
    unsafe {
        let x = _mm512_loadu_ps(lanes.as_ptr().cast());
        let r = _mm512_cvtneps_pbh(x);
        _mm256_storeu_si256(
            out.as_mut_ptr().cast(),
            std::mem::transmute::<__m256bh, __m256i>(r),
        );
    }
}

#[test]
fn quantize_activation_rounds_to_even_and_clamps() {
    for (x, q) in [
        (0.0, 0),
        (-0.0, 0),
        (-3.0, 0),
        (f32::NAN, 0),
        (f32::NEG_INFINITY, 0),
        (f32::INFINITY, 255),
        (0.5, 0),
        (1.5, 2),
        (2.5, 2),
        (2.5001, 3),
        (254.5, 254),
        (255.4, 255),
        (1e9, 255),
    ] {
        assert_eq!(quantize_activation(x, 1.0), q, "{x}");
    }
    // The reciprocal of the scale is what multiplies: 0.1 · (1 / 0.1) rounds to 1.
    assert_eq!(quantize_activation(0.1, 0.1), 1);
    assert_eq!(quantize_activation(12.7, 0.1), 127);
}

#[test]
fn int8_weight_quantizes_per_output_channel() {
    // Channel 0: max 2.54 (scale 0.02); channel 1: all zero; channel 2: max 127
    // (scale 1), with a tie at 0.5.
    let hwio = ndarray::Array4::from_shape_vec(
        (1, 2, 2, 3),
        vec![
            2.54, 0.0, 0.5, //
            -1.0, 0.0, -127.0, //
            0.03, 0.0, 1.5, //
            -2.54, 0.0, 2.5,
        ],
    )
    .unwrap();
    let w = Int8Weight::quantize(hwio.view()).unwrap();
    assert_eq!(w.dims(), [1, 2, 2, 3]);
    assert_eq!(w.scales(), [2.54 / 127.0, 0.0, 1.0]);
    assert_eq!(w.to_hwio(), [127, 0, 0, -50, 0, -127, 2, 0, 2, -127, 0, 2]);
    // Every dequantized value within half a step of the original.
    for (i, (&q, &x)) in w.dequantized_hwio().iter().zip(hwio.iter()).enumerate() {
        let step = w.scales()[i % 3];
        assert!((q - x).abs() <= step / 2.0 * 1.0001, "{i}: {q} vs {x}");
    }
    // From a permuted view (torch's OIHW): the same weight.
    let oihw = hwio.view().permuted_axes([3, 2, 0, 1]).to_owned();
    let again = Int8Weight::quantize(oihw.view().permuted_axes([2, 3, 1, 0])).unwrap();
    assert_eq!(again, w);
    // As saved and loaded.
    let loaded = Int8Weight::from_quantized(w.dims(), &w.to_hwio(), w.scales()).unwrap();
    assert_eq!(loaded, w);
    assert!(w.bytes() >= 12 + 12);
    let mut bad = hwio.clone();
    bad[[0, 1, 1, 2]] = f32::NAN;
    assert!(matches!(
        Int8Weight::quantize(bad.view()),
        Err(LowpError::NonFiniteWeight { index: 11, .. })
    ));
}

#[test]
fn bf16_weight_round_trips() {
    let mut rng = Rng::new(9);
    let hwio =
        ndarray::Array4::from_shape_vec((3, 3, 5, 33), random(3 * 3 * 5 * 33, &mut rng)).unwrap();
    let w = Bf16Weight::from_hwio(hwio.view()).unwrap();
    let rounded: Vec<bf16> = hwio.iter().map(|&x| bf16_round(x)).collect();
    assert_eq!(w.to_hwio(), rounded);
    assert_eq!(Bf16Weight::from_bf16_hwio(w.dims(), &rounded).unwrap(), w);
    // 2 bytes a value, 5 channels padded to 6, 33 columns to 64.
    assert_eq!(w.bytes(), 2 * 9 * 6 * 64);
    assert!(matches!(
        Bf16Weight::from_bf16_hwio([3, 3, 5, 33], &rounded[1..]),
        Err(LowpError::Length { .. })
    ));
}

/// Each wrong argument is a typed error, from the kernels and the references alike,
/// and nothing is written.
#[test]
fn bad_arguments_are_errors_not_panics() {
    let shape = conv(1, 2, 4, 3, 1);
    let layout = ImageLayout::dense(2, 2, 4);
    let out_layout = ImageLayout::dense(2, 2, 3);
    let input = vec![1.0f32; 16];
    let w8 = Int8Weight::from_quantized([1, 1, 4, 3], &[1; 12], &[0.5; 3]).unwrap();
    let wb = Bf16Weight::from_bf16_hwio([1, 1, 4, 3], &[bf16::ONE; 12]).unwrap();
    let two = [1.0f32; 2];
    let three = [1.0f32; 3];
    let three_3x3 = ConvShape {
        kernel_h: 3,
        kernel_w: 3,
        ..shape
    };
    let cases: Vec<(
        &str,
        ConvShape,
        Epilogue<'_>,
        Epilogue<'_>,
        usize,
        f32,
        LowpError,
    )> = vec![
        (
            "3x3 shape, 1x1 weight",
            three_3x3,
            Epilogue::Store,
            Epilogue::Store,
            12,
            1.0,
            LowpError::WeightShape {
                weight: [1, 1, 4, 3],
                shape: [3, 3, 4, 3],
            },
        ),
        (
            "short epilogue",
            shape,
            Epilogue::Store,
            Epilogue::ScaleShiftRelu {
                scale: &two,
                shift: &three,
            },
            12,
            1.0,
            LowpError::Length {
                what: "epilogue scale",
                expected: 3,
                actual: 2,
            },
        ),
        (
            "short prologue",
            shape,
            Epilogue::ScaleShiftRelu {
                scale: &three,
                shift: &three,
            },
            Epilogue::Store,
            12,
            1.0,
            LowpError::Length {
                what: "prologue scale",
                expected: 4,
                actual: 3,
            },
        ),
        (
            "short output",
            shape,
            Epilogue::Store,
            Epilogue::Store,
            11,
            1.0,
            LowpError::Geometry("output layout reaches past the output slice"),
        ),
        (
            "zero stride",
            ConvShape { stride: 0, ..shape },
            Epilogue::Store,
            Epilogue::Store,
            12,
            1.0,
            LowpError::Geometry("stride and kernel must be at least 1"),
        ),
        (
            "bad activation scale",
            shape,
            Epilogue::Store,
            Epilogue::Store,
            12,
            f32::NAN,
            LowpError::Scale {
                what: "the input's activation scale",
                value: f32::NAN,
            },
        ),
    ];
    for (what, s, prologue, epilogue, out_len, a_scale, expected) in cases {
        let mut out = vec![7.0f32; out_len];
        let int8 = |isa: Option<LowpIsa>, out: &mut [f32]| {
            super::int8::run(
                isa,
                Int8Input::F32 {
                    data: &input,
                    prologue,
                    scale: a_scale,
                },
                layout,
                &w8,
                s,
                epilogue,
                Int8Output::F32(out),
                out_layout,
                false,
            )
        };
        let reference = conv_int8_reference(
            Int8Input::F32 {
                data: &input,
                prologue,
                scale: a_scale,
            },
            layout,
            &w8,
            s,
            epilogue,
            Int8Output::F32(&mut out),
            out_layout,
        );
        // A NaN scale compares unequal to itself: compare the messages.
        let same =
            |r: Result<(), LowpError>| r.map_err(|e| e.to_string()) == Err(expected.to_string());
        assert!(
            same(reference.clone()),
            "{what}: int8 reference: {reference:?}"
        );
        for isa in int8_isas() {
            let r = int8(Some(isa), &mut out);
            assert!(same(r.clone()), "{what}: {isa:?}: {r:?}");
        }
        // Even without an instruction set the arguments are checked first.
        let r = int8(None, &mut out);
        assert!(same(r.clone()), "{what}: no isa: {r:?}");
        if a_scale.is_finite() {
            let bf = super::bf16::run(
                Some(LowpIsa::Avx512Bf16),
                false,
                Bf16Input::F32 {
                    data: &input,
                    prologue,
                },
                layout,
                &wb,
                s,
                epilogue,
                Bf16Output::F32(&mut out),
                out_layout,
                false,
            );
            assert!(same(bf.clone()), "{what}: bf16: {bf:?}");
        }
        assert!(
            out.iter().all(|&v| v == 7.0),
            "{what}: the output was written"
        );
    }
    // A prologue on a 3x3, overlapping outputs, an i32 output with an epilogue, a
    // window of more than 49 taps, a u8 output's scale.
    let w3 = Int8Weight::from_quantized([3, 3, 4, 3], &[1; 108], &[1.0; 3]).unwrap();
    let padded = ImageLayout::dense(4, 4, 4);
    let r = conv_int8_reference(
        Int8Input::F32 {
            data: &[0.0; 64],
            prologue: Epilogue::ScaleShiftRelu {
                scale: &[1.0; 4],
                shift: &[0.0; 4],
            },
            scale: 1.0,
        },
        padded,
        &w3,
        three_3x3,
        Epilogue::Store,
        Int8Output::F32(&mut [0.0; 12]),
        out_layout,
    );
    assert_eq!(
        r,
        Err(LowpError::Geometry("a prologue needs a 1x1 convolution"))
    );
    let overlapping = ImageLayout {
        pixel_stride: 2,
        ..out_layout
    };
    let u8_input = Int8Input::U8 {
        data: &[0; 16],
        scale: 1.0,
    };
    let r = conv_int8_reference(
        u8_input,
        layout,
        &w8,
        shape,
        Epilogue::Store,
        Int8Output::F32(&mut [0.0; 12]),
        overlapping,
    );
    assert_eq!(
        r,
        Err(LowpError::Geometry(
            "output layout makes distinct outputs overlap"
        ))
    );
    let r = conv_int8_reference(
        u8_input,
        layout,
        &w8,
        shape,
        Epilogue::ScaleShiftRelu {
            scale: &three,
            shift: &three,
        },
        Int8Output::I32(&mut [0; 12]),
        out_layout,
    );
    assert_eq!(
        r,
        Err(LowpError::Geometry("an i32 output takes no epilogue"))
    );
    let r = conv_int8_reference(
        u8_input,
        layout,
        &w8,
        shape,
        Epilogue::Store,
        Int8Output::U8 {
            data: &mut [0; 12],
            scale: 0.0,
        },
        out_layout,
    );
    assert!(matches!(r, Err(LowpError::Scale { .. })), "{r:?}");
    let w50 = Bf16Weight::from_bf16_hwio([5, 10, 1, 1], &[bf16::ONE; 50]).unwrap();
    let wide = ConvShape {
        n: 1,
        out_h: 1,
        out_w: 1,
        c_in: 1,
        c_out: 1,
        kernel_h: 5,
        kernel_w: 10,
        stride: 1,
    };
    let r = conv_bf16_reference(
        Bf16Input::Bf16 {
            data: &[bf16::ONE; 50],
            prologue: Epilogue::Store,
        },
        ImageLayout::dense(5, 10, 1),
        &w50,
        wide,
        Epilogue::Store,
        Bf16Output::F32(&mut [0.0]),
        ImageLayout::dense(1, 1, 1),
    );
    assert_eq!(
        r,
        Err(LowpError::Geometry("the window has more than 49 taps"))
    );
    // Weights refuse bad scales and lengths.
    assert!(matches!(
        Int8Weight::from_quantized([1, 1, 4, 3], &[1; 12], &[0.5, -1.0, 0.5]),
        Err(LowpError::Scale { .. })
    ));
    assert!(matches!(
        Int8Weight::from_quantized([1, 1, 4, 3], &[1; 12], &[0.5; 2]),
        Err(LowpError::Length { .. })
    ));
    assert!(matches!(
        Int8Weight::from_quantized([usize::MAX, 2, 1, 1], &[], &[1.0]),
        Err(LowpError::Geometry(_))
    ));
}

/// The public entry points pick this CPU's kernels, and the process-wide switches
/// (only this test touches them) turn them off or pick AVX-VNNI.
#[test]
fn entry_points_dispatch_and_switch() {
    let shape = conv(1, 5, 20, 40, 1);
    let layout = ImageLayout::dense(5, 5, 20);
    let out_layout = ImageLayout::dense(5, 5, 40);
    let mut rng = Rng::new(11);
    let input = random(500, &mut rng);
    let hwio = ndarray::Array4::from_shape_vec((1, 1, 20, 40), random(800, &mut rng)).unwrap();
    let w8 = Int8Weight::quantize(hwio.view()).unwrap();
    let wb = Bf16Weight::from_hwio(hwio.view()).unwrap();
    let int8 = |out: &mut [i32]| {
        conv_int8(
            Int8Input::F32 {
                data: &input,
                prologue: Epilogue::Store,
                scale: 0.02,
            },
            layout,
            &w8,
            shape,
            Epilogue::Store,
            Int8Output::I32(out),
            out_layout,
            true,
        )
    };
    let bf = |out: &mut [f32]| {
        conv_bf16(
            Bf16Input::F32 {
                data: &input,
                prologue: Epilogue::Store,
            },
            layout,
            &wb,
            shape,
            Epilogue::Store,
            Bf16Output::F32(out),
            out_layout,
            true,
        )
    };
    let mut expected = vec![0i32; 1000];
    conv_int8_reference(
        Int8Input::F32 {
            data: &input,
            prologue: Epilogue::Store,
            scale: 0.02,
        },
        layout,
        &w8,
        shape,
        Epilogue::Store,
        Int8Output::I32(&mut expected),
        out_layout,
    )
    .unwrap();
    let mut out = vec![0i32; 1000];
    let mut out_f = vec![0.0f32; 1000];
    assert_eq!(
        Precision::Int8.available(),
        supported(LowpIsa::Avx512Vnni) || supported(LowpIsa::AvxVnni)
    );
    assert_eq!(Precision::Bf16.available(), supported(LowpIsa::Avx512Bf16));
    if Precision::Int8.available() {
        int8(&mut out).unwrap();
        assert_eq!(out, expected);
    } else {
        assert_eq!(int8(&mut out), Err(LowpError::Unsupported(Precision::Int8)));
    }
    if Precision::Bf16.available() {
        bf(&mut out_f).unwrap();
        assert!(out_f.iter().any(|&v| v != 0.0));
    }
    force_avx_vnni(true);
    let isa = Precision::Int8.isa();
    force_avx_vnni(false);
    if supported(LowpIsa::AvxVnni) {
        assert_eq!(isa, Some(LowpIsa::AvxVnni));
    }
    force_lowp_off(true);
    let (off8, offb) = (Precision::Int8.available(), Precision::Bf16.available());
    let (r8, rb) = (int8(&mut out), bf(&mut out_f));
    force_lowp_off(false);
    assert!(!off8 && !offb);
    assert_eq!(r8, Err(LowpError::Unsupported(Precision::Int8)));
    assert_eq!(rb, Err(LowpError::Unsupported(Precision::Bf16)));
    assert_eq!(Precision::Int8.available(), int8(&mut out).is_ok());
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum();
    dot / (na.sqrt() * nb.sqrt())
}

/// The schemes against fp32 (the f64 oracle of the fp32 kernels), on a bottleneck 1x1
/// with its BN-ReLU prologue and a 3x3 on relu'd inputs, weights of He scale and the
/// activation scale from the inputs' maximum (min-max calibration): the outputs'
/// cosine similarity to fp32 is above 0.999 for int8 and 0.99999 for bf16, while a
/// wrong scheme (a scale off by 2, a dropped prologue) is far below.
#[test]
fn quantized_convolutions_are_close_to_fp32() {
    let mut rng = Rng::new(21);
    for (shape, prologue) in [
        (conv(1, 14, 256, 128, 1), true),
        (conv(1, 12, 128, 32, 3), false),
    ] {
        let s = shape;
        let in_hw = s.out_h + s.kernel_h - 1;
        let layout = ImageLayout::dense(in_hw, in_hw, s.c_in);
        let input: Vec<f32> = random(in_hw * in_hw * s.c_in, &mut rng)
            .into_iter()
            .map(|x| if prologue { x } else { x.max(0.0) })
            .collect();
        let (ps, pt) = (
            random(s.c_in, &mut rng)
                .iter()
                .map(|x| 1.0 + 0.2 * x)
                .collect::<Vec<_>>(),
            random(s.c_in, &mut rng)
                .iter()
                .map(|x| 0.2 * x)
                .collect::<Vec<_>>(),
        );
        let prologue = if prologue {
            Epilogue::ScaleShiftRelu {
                scale: &ps,
                shift: &pt,
            }
        } else {
            Epilogue::Store
        };
        let he = (2.0 / (s.kernel_h * s.kernel_w * s.c_in) as f32).sqrt();
        let hwio = ndarray::Array4::from_shape_vec(
            (s.kernel_h, s.kernel_w, s.c_in, s.c_out),
            random(s.kernel_h * s.kernel_w * s.c_in * s.c_out, &mut rng)
                .into_iter()
                .map(|w| w * he)
                .collect(),
        )
        .unwrap();
        let out_layout = ImageLayout::dense(s.out_h, s.out_w, s.c_out);
        let len = s.out_h * s.out_w * s.c_out;
        let mut fp32 = vec![0.0; len];
        direct_conv_reference(
            &input,
            layout,
            prologue,
            hwio.as_slice().unwrap(),
            s,
            Epilogue::Store,
            &mut fp32,
            out_layout,
        );
        // Min-max calibration of the conv's actual input (after the prologue).
        let max = input
            .iter()
            .enumerate()
            .map(|(i, &x)| super::start(prologue, i % s.c_in, x))
            .fold(0.0f32, f32::max);
        let w8 = Int8Weight::quantize(hwio.view()).unwrap();
        let int8 = |scale: f32, prologue: Epilogue<'_>| {
            let mut out = vec![0.0; len];
            conv_int8_reference(
                Int8Input::F32 {
                    data: &input,
                    prologue,
                    scale,
                },
                layout,
                &w8,
                s,
                Epilogue::Store,
                Int8Output::F32(&mut out),
                out_layout,
            )
            .unwrap();
            cosine(&out, &fp32)
        };
        let c8 = int8(max / 255.0, prologue);
        assert!(c8 > 0.999, "int8 {s:?}: cosine {c8}");
        // Wrong schemes are caught: activations saturating at an eighth of their
        // range, and (for the bottleneck) the prologue left out.
        let clipped = int8(max / (8.0 * 255.0), prologue);
        assert!(clipped < 0.99, "int8 {s:?} clipped: cosine {clipped}");
        eprintln!("int8 {s:?}: cosine {c8}, clipped {clipped}");
        if matches!(prologue, Epilogue::ScaleShiftRelu { .. }) {
            let dropped = int8(max / 255.0, Epilogue::Store);
            assert!(
                dropped < 0.99,
                "int8 {s:?} without prologue: cosine {dropped}"
            );
        }
        let wb = Bf16Weight::from_hwio(hwio.view()).unwrap();
        let mut out = vec![0.0; len];
        conv_bf16_reference(
            Bf16Input::F32 {
                data: &input,
                prologue,
            },
            layout,
            &wb,
            s,
            Epilogue::Store,
            Bf16Output::F32(&mut out),
            out_layout,
        )
        .unwrap();
        let cb = cosine(&out, &fp32);
        assert!(cb > 0.99999, "bf16 {s:?}: cosine {cb}");
        eprintln!("bf16 {s:?}: cosine {cb}");
        // `bf16_case`'s tolerance is far below the effect of bf16's rounding: a
        // kernel that skipped the rounding (summing the fp32 inputs) would fail it on
        // most elements. (The conv's inputs are non-negative here, so `|w|` gives the
        // magnitudes Σ|x·w|.)
        let abs_w: Vec<f32> = hwio.iter().map(|w| w.abs()).collect();
        let mut magnitude = vec![0.0; len];
        direct_conv_reference(
            &input,
            layout,
            prologue,
            &abs_w,
            s,
            Epilogue::Store,
            &mut magnitude,
            out_layout,
        );
        let depth = s.kernel_h * s.kernel_w * s.c_in;
        let detected = out
            .iter()
            .zip(&fp32)
            .zip(&magnitude)
            .filter(|((a, b), &m)| (*a - *b).abs() > summation_tolerance(depth, m))
            .count();
        assert!(
            detected > len * 3 / 4,
            "bf16 {s:?}: rounding exceeds the tolerance on only {detected} of {len} outputs"
        );
    }
}

/// An image layout of `n` images of `h × w` pixels `pixel` values apart, from `offset`.
fn strided(h: usize, w: usize, pixel: usize, offset: usize) -> ImageLayout {
    ImageLayout {
        offset,
        image_stride: h * w * pixel,
        row_stride: w * pixel,
        pixel_stride: pixel,
    }
}

#[test]
fn bf16_winograd_matches_its_reference() {
    // DenseNet's 3x3s on 56x56 and 28x28 maps take the Winograd path. Against its plain
    // loops (same transforms and roundings, products in f64), with f32 and bf16 inputs
    // read from a wider padded map, outputs into a column range of a wider buffer,
    // fewer than 32 outputs, one and several threads; outputs outside the layout stay.
    if !has_bf16() {
        return;
    }
    let mut rng = Rng::new(56);
    // (n, map, c_in, c_out, input pixel stride, output pixel stride, first column)
    for (n, hw, c_in, c_out, pixel_in, pixel_out, column, parallel) in [
        (1, 28, 64, 32, 64, 32, 0, false),
        (2, 28, 128, 32, 160, 256, 96, true),
        (1, 56, 128, 20, 128, 40, 8, true),
        (1, 30, 80, 32, 96, 64, 32, false),
        // 14 wide: tasks of two tile rows (7 rows: 2, 2, 2 and 1), and 18 wide (9
        // tiles a row: one row a task).
        (2, 14, 128, 32, 128, 512, 160, true),
        (1, 14, 64, 24, 64, 24, 0, false),
        (1, 18, 64, 32, 64, 32, 0, true),
    ] {
        let s = conv(n, hw, c_in, c_out, 3);
        assert!(super::winograd::applies(&s), "{s:?}");
        let il = strided(hw + 2, hw + 2, pixel_in, 0);
        let ol = strided(hw, hw, pixel_out, column);
        let input = random(n * (hw + 2) * (hw + 2) * pixel_in, &mut rng);
        let input_bf16: Vec<bf16> = input.iter().map(|&x| bf16_round(x)).collect();
        let widened: Vec<f32> = input_bf16.iter().map(|x| x.to_f32()).collect();
        let hwio = ndarray::Array4::from_shape_vec(
            (3, 3, c_in, c_out),
            random(9 * c_in * c_out, &mut rng),
        )
        .unwrap();
        let weight = Bf16Weight::from_hwio(hwio.view()).unwrap();
        let len = n * hw * hw * pixel_out;
        let sentinel = random(len, &mut rng);
        for (input, values) in [
            (
                Bf16Input::F32 {
                    data: &input,
                    prologue: Epilogue::Store,
                },
                &input,
            ),
            (
                Bf16Input::Bf16 {
                    data: &input_bf16,
                    prologue: Epilogue::Store,
                },
                &widened,
            ),
        ] {
            let mut expected = sentinel.clone();
            let mut magnitude = vec![0.0; len];
            super::winograd::winograd_bf16_reference(
                values,
                il,
                &weight,
                s,
                &mut expected,
                &mut magnitude,
                ol,
            );
            let mut actual = sentinel.clone();
            super::bf16::run(
                Some(LowpIsa::Avx512Bf16),
                true,
                input,
                il,
                &weight,
                s,
                Epilogue::Store,
                Bf16Output::F32(&mut actual),
                ol,
                parallel,
            )
            .unwrap();
            for (i, ((&e, &a), &m)) in expected.iter().zip(&actual).zip(&magnitude).enumerate() {
                // The f32 sums of the GEMMs, then the output transform's eight additions.
                let bound = summation_tolerance(c_in, m) + 8.0 * f32::EPSILON * m;
                assert!(
                    (e - a).abs() <= bound,
                    "{s:?}: element {i}: {a} vs {e} (bound {bound})"
                );
            }
            // A bf16 output (a dense block's bf16 buffer): the same sums rounded to
            // nearest even by the output transform, the rest of the slice untouched.
            let sentinel_bf16: Vec<bf16> = sentinel.iter().map(|&x| bf16_round(x)).collect();
            let mut rounded = sentinel_bf16.clone();
            super::bf16::run(
                Some(LowpIsa::Avx512Bf16),
                true,
                input,
                il,
                &weight,
                s,
                Epilogue::Store,
                Bf16Output::Bf16(&mut rounded),
                ol,
                parallel,
            )
            .unwrap();
            for (i, ((&a, &r), &sent)) in actual.iter().zip(&rounded).zip(&sentinel).enumerate() {
                let want = if a.to_bits() == sent.to_bits() {
                    bf16_round(sent)
                } else {
                    bf16_round(a)
                };
                assert_eq!(r.to_bits(), want.to_bits(), "{s:?}: bf16 element {i}");
            }
        }
    }
}

#[test]
fn bf16_winograd_is_as_close_to_fp32_as_direct() {
    // Rounding the transformed values to bf16 must not cost accuracy that matters: on a
    // DenseNet 3x3 (relu'd inputs, He-scale weights), the Winograd path's error
    // against fp32 (the f64 oracle) is of the direct bf16 kernel's order, while a
    // path that dropped a transform's term would be far off.
    if !has_bf16() {
        return;
    }
    let mut rng = Rng::new(3);
    let s = conv(1, 28, 128, 32, 3);
    let layout = ImageLayout::dense(30, 30, 128);
    let input: Vec<f32> = random(30 * 30 * 128, &mut rng)
        .into_iter()
        .map(|x| x.max(0.0))
        .collect();
    let he = (2.0f32 / (9.0 * 128.0)).sqrt();
    let hwio = ndarray::Array4::from_shape_vec(
        (3, 3, 128, 32),
        random(9 * 128 * 32, &mut rng)
            .into_iter()
            .map(|w| w * he)
            .collect(),
    )
    .unwrap();
    let out_layout = ImageLayout::dense(28, 28, 32);
    let len = 28 * 28 * 32;
    let mut fp32 = vec![0.0; len];
    direct_conv_reference(
        &input,
        layout,
        Epilogue::Store,
        hwio.as_slice().unwrap(),
        s,
        Epilogue::Store,
        &mut fp32,
        out_layout,
    );
    let weight = Bf16Weight::from_hwio(hwio.view()).unwrap();
    let bf16 = |winograd: bool| {
        let mut out = vec![0.0; len];
        super::bf16::run(
            Some(LowpIsa::Avx512Bf16),
            winograd,
            Bf16Input::F32 {
                data: &input,
                prologue: Epilogue::Store,
            },
            layout,
            &weight,
            s,
            Epilogue::Store,
            Bf16Output::F32(&mut out),
            out_layout,
            true,
        )
        .unwrap();
        out
    };
    let rms = |a: &[f32]| {
        let e: f64 = a
            .iter()
            .zip(&fp32)
            .map(|(&x, &y)| f64::from(x - y).powi(2))
            .sum();
        let r: f64 = fp32.iter().map(|&y| f64::from(y).powi(2)).sum();
        (e / r).sqrt()
    };
    let (direct, winograd) = (rms(&bf16(false)), rms(&bf16(true)));
    eprintln!("relative RMS error against fp32: direct {direct:.2e}, winograd {winograd:.2e}");
    assert!(direct < 4e-3, "direct bf16: {direct}");
    assert!(
        winograd < 2.0 * direct,
        "winograd {winograd} against direct {direct}"
    );
    assert!(cosine(&bf16(true), &fp32) > 0.99999);
}
