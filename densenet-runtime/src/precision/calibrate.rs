//! int8 calibration: one activation scale per quantized convolution input, from fp32
//! forward passes over the caller's images.

use ndarray::Array4;

use super::simulate;
use super::QuantizeError;
use crate::stage::Network;

/// How calibration turns the values a convolution input took over the calibration
/// images into its activation scale `s` (`x ≈ q·s`, `q` in `0..=255`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum CalibrationMethod {
    /// `s = max(x) / 255`: the default.: no value is clipped; a rare large value costs resolution.
    #[default]
    MinMax,
    /// `s = P_p(x) / 255` with `p` in `(0, 100]`: the `p`-th percentile of the values
    /// (zeros included, read from a 2,048-bin histogram over `[0, max]`, the bin's upper
    /// edge): values above it are clipped to 255. `Percentile(99.99)` is a common choice;
    /// `Percentile(100.0)` is [`MinMax`](Self::MinMax) up to the histogram's resolution.
    Percentile(f64),
}

/// Bins of the percentile histogram.
const BINS: usize = 2048;

/// The activation scale of every quantized convolution input of `model`, in site order
/// (`simulate::conv_sites`): one fp32 pass over `batches` for the maxima, and for a
/// percentile a second one filling each site's histogram over `[0, max]`.
///
/// # Errors
/// [`QuantizeError::Percentile`], [`QuantizeError::NoCalibrationImages`],
/// [`QuantizeError::CalibrationShape`], [`QuantizeError::NonFiniteCalibration`] (all
/// checked before any pass).
pub(crate) fn calibrate<M: Network + ?Sized>(
    model: &M,
    batches: &[Array4<f32>],
    method: CalibrationMethod,
) -> Result<Vec<f32>, QuantizeError> {
    if let CalibrationMethod::Percentile(p) = method {
        if !(p > 0.0 && p <= 100.0) {
            return Err(QuantizeError::Percentile { value: p });
        }
    }
    let expected = model.plan().input;
    for (batch, x) in batches.iter().enumerate() {
        let (_, c, h, w) = x.dim();
        if [c, h, w] != expected {
            return Err(QuantizeError::CalibrationShape {
                batch,
                expected,
                actual: x.shape().to_vec(),
            });
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(QuantizeError::NonFiniteCalibration { batch });
        }
    }
    let batches: Vec<&Array4<f32>> = batches.iter().filter(|x| x.dim().0 > 0).collect();
    if batches.is_empty() {
        return Err(QuantizeError::NoCalibrationImages);
    }
    let sites = simulate::conv_sites(model).len();

    let mut max = vec![0.0f32; sites];
    for x in &batches {
        simulate::forward(model, x.view(), false, &mut |site, values| {
            max[site] = values.iter().fold(max[site], |m, &v| m.max(v));
        })?;
    }
    let range = match method {
        CalibrationMethod::MinMax => max,
        CalibrationMethod::Percentile(p) => {
            let mut histograms = vec![[0u64; BINS]; sites];
            for x in &batches {
                simulate::forward(model, x.view(), false, &mut |site, values| {
                    let top = max[site];
                    if top > 0.0 {
                        let per_bin = BINS as f32 / top;
                        let histogram = &mut histograms[site];
                        for &v in values.iter() {
                            // `as` saturates: negatives and NaN land in bin 0.
                            histogram[((v * per_bin) as usize).min(BINS - 1)] += 1;
                        }
                    }
                })?;
            }
            histograms
                .iter()
                .zip(&max)
                .map(|(histogram, &top)| percentile(histogram, top, p))
                .collect()
        }
    };
    Ok(range.into_iter().map(scale_of).collect())
}

/// The upper edge of the bin where the histogram (over `[0, top]`) reaches `p` percent
/// of its values.
fn percentile(histogram: &[u64; BINS], top: f32, p: f64) -> f32 {
    let total: u64 = histogram.iter().sum();
    if total == 0 || top <= 0.0 {
        return top;
    }
    let target = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bin, &count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= target {
            return (top * (bin + 1) as f32 / BINS as f32).min(top);
        }
    }
    top
}

/// The activation scale of a range `[0, r]`: `r / 255`, or for an input that was
/// always 0 (or a range that is not a positive finite number) `1 / 255`, since any
/// positive scale represents 0 exactly.
fn scale_of(range: f32) -> f32 {
    if range.is_finite() && range > 0.0 && range / 255.0 > 0.0 {
        range / 255.0
    } else {
        1.0 / 255.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_reads_the_bin_edge() {
        let mut h = [0u64; BINS];
        h[0] = 90;
        h[BINS / 2] = 9;
        h[BINS - 1] = 1;
        assert_eq!(percentile(&h, 2048.0, 50.0), 1.0);
        assert_eq!(percentile(&h, 2048.0, 99.0), 1025.0);
        assert_eq!(percentile(&h, 2048.0, 100.0), 2048.0);
    }

    #[test]
    fn zero_range_gets_a_usable_scale() {
        assert_eq!(scale_of(0.0), 1.0 / 255.0);
        assert_eq!(scale_of(f32::NAN), 1.0 / 255.0);
        assert_eq!(scale_of(255.0), 1.0);
    }
}
