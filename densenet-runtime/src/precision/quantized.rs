//! [`Quantized`]: a model whose convolutions run in bf16 or int8.

use core::cell::RefCell;
use core::fmt;
use std::path::Path;

use ndarray::{Array2, Array4, ArrayD, ArrayView4, ArrayViewMutD, Axis, Ix2};

use super::calibrate::{calibrate, CalibrationMethod};
use super::{forward, io, simulate, LowpWorkspace, Precision, QuantizeError};
use crate::kernels::direct_conv::lowp::{
    bf16_round, quantize_activation, Bf16Weight, Int8Weight, LowpError,
};
use crate::spec::Head;
use crate::stage::{LayerMut, LayerName, LayerRef, Network};
use crate::summary::Summary;
use crate::train::{in_top_k, softmax_cross_entropy, Evaluation, Source};
use crate::weights::{torchvision_path, SaveError};
use crate::{softmax, Error};

/// A quantized convolution's weight, in the layout its kernel reads.
#[derive(Clone, Debug)]
pub(crate) enum LowWeight {
    /// Per-output-channel s8 weights and the calibrated scale of the u8 input.
    Int8 {
        /// The weight.
        weight: Int8Weight,
        /// The activation scale of the convolution's input.
        input_scale: f32,
    },
    /// bf16 weights.
    Bf16(Bf16Weight),
}

/// One quantized convolution: its name and weight.
#[derive(Clone, Debug)]
pub(crate) struct QConv {
    /// The convolution's structural name.
    pub(crate) name: LayerName,
    /// Its weight.
    pub(crate) weight: LowWeight,
}

impl QConv {
    /// The activation scale of the input (1 for bf16, which has none).
    pub(crate) fn input_scale(&self) -> f32 {
        match self.weight {
            LowWeight::Int8 { input_scale, .. } => input_scale,
            LowWeight::Bf16(_) => 1.0,
        }
    }

    /// Bytes of the weight as a file stores it: values, and for int8 the per-channel
    /// scales and the input scale.
    fn stored_bytes(&self) -> usize {
        match &self.weight {
            LowWeight::Int8 { weight, .. } => {
                let [kh, kw, ci, co] = weight.dims();
                kh * kw * ci * co + 4 * co + 4
            }
            LowWeight::Bf16(weight) => {
                let [kh, kw, ci, co] = weight.dims();
                2 * kh * kw * ci * co
            }
        }
    }
}

/// A model whose convolutions (all but the stem's) run in bf16 or int8, on any
/// [`Network`]: generated models and [`DynamicModel`](crate::DynamicModel)s alike.
///
/// - **int8** ([`Quantized::int8`]): post-training static quantization. Weights
///   per-output-channel symmetric s8; every convolution input u8 with zero point 0 (each
///   follows a ReLU) at a scale calibrated on the caller's images; i32 accumulation;
///   BatchNorm + ReLU and the requantization fused into the kernels' prologues and
///   epilogues. The stem (raw, signed pixels), pooling and the head stay fp32.
/// - **bf16** ([`Quantized::bf16`]): weights rounded to bf16, inputs rounded while the
///   kernels pack them, fp32 accumulation and BatchNorm. The stem and head stay fp32.
///
/// The kernels need AVX512-VNNI or AVX-VNNI (int8), AVX512-BF16 (bf16). Without them
/// the model runs the *same* arithmetic on the fp32 kernels (its weights dequantized or
/// bf16-rounded, each convolution input rounded as the kernels would), differing from
/// the kernels only by the order and width of accumulation;
/// [`fallback_notice`](Self::fallback_notice) says so, and
/// [`require_kernels`](Self::require_kernels) turns it into an error.
///
/// The model keeps an fp32 copy of the network (BatchNorm, the stem, the classifier,
/// and the convolutions' dequantized weights, which the fallback runs), so in memory it
/// takes more than the fp32 model; [`weight_bytes`](Self::weight_bytes) is what its
/// file stores (see [`to_safetensors_bytes`](Self::to_safetensors_bytes)).
///
/// ```no_run
/// # use densenet_runtime::{DynamicModel, Rng, ndarray::Array4};
/// # use densenet_runtime::precision::{CalibrationMethod, Quantized};
/// # fn demo(model: &DynamicModel, calibration: &[Array4<f32>], x: Array4<f32>) -> Result<(), Box<dyn std::error::Error>> {
/// let int8 = Quantized::int8(model, calibration, CalibrationMethod::Percentile(99.99))?;
/// if let Some(notice) = int8.fallback_notice() {
///     eprintln!("{notice}");
/// }
/// let logits = int8.forward(x.view())?;
/// println!("{}", int8.summary());
/// int8.save_safetensors("model.int8.safetensors")?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Quantized<M> {
    /// The fp32 network; quantized convolutions hold their dequantized weights.
    model: M,
    precision: Precision,
    /// The quantized convolutions in site order (`simulate::conv_sites`).
    convs: Vec<QConv>,
    /// Whether a CPU without the kernels is an error rather than a fallback.
    strict: bool,
}

impl<M: Network + Clone> Quantized<M> {
    /// `model` in int8, its activation scales calibrated by fp32 passes over
    /// `calibration` (NCHW batches of the model's input shape, preprocessed as the
    /// images it will see; a few hundred images is typical, a few dozen often enough).
    ///
    /// # Errors
    /// [`QuantizeError::NoCalibrationImages`], [`QuantizeError::CalibrationShape`],
    /// [`QuantizeError::NonFiniteCalibration`], [`QuantizeError::Percentile`];
    /// [`QuantizeError::Kernel`] for a convolution weight with a NaN or infinity.
    pub fn int8(
        model: &M,
        calibration: &[Array4<f32>],
        method: CalibrationMethod,
    ) -> Result<Self, QuantizeError> {
        let scales = calibrate(model, calibration, method)?;
        let mut copy = model.clone();
        // `calibrate` and `replace_conv_weights` both go in site order.
        let mut scales = scales.into_iter();
        let convs = replace_conv_weights(&mut copy, &mut |hwio| {
            let weight = Int8Weight::quantize(hwio)?;
            let dequantized = weight.dequantized_hwio();
            let input_scale = scales.next().ok_or(LowpError::Geometry(
                "the model has more convolutions than calibrated inputs",
            ))?;
            let weight = LowWeight::Int8 {
                weight,
                input_scale,
            };
            Ok((weight, dequantized))
        })?;
        Ok(Self::from_parts(copy, Precision::Int8, convs))
    }

    /// `model` in bf16: every convolution weight but the stem's rounded to bf16 (to
    /// nearest even).
    ///
    /// # Errors
    /// [`QuantizeError::Kernel`] only for a weight too large to pack.
    pub fn bf16(model: &M) -> Result<Self, QuantizeError> {
        let mut copy = model.clone();
        let convs = replace_conv_weights(&mut copy, &mut |hwio| {
            let weight = Bf16Weight::from_hwio(hwio)?;
            let rounded = hwio.iter().map(|&w| bf16_round(w).to_f32()).collect();
            Ok((LowWeight::Bf16(weight), rounded))
        })?;
        Ok(Self::from_parts(copy, Precision::Bf16, convs))
    }
}

/// A conversion of `replace_conv_weights`: an fp32 HWIO weight to the low-precision
/// weight and the fp32 values the fallback runs (HWIO).
type Convert<'a> = dyn FnMut(ArrayView4<'_, f32>) -> Result<(LowWeight, Vec<f32>), LowpError> + 'a;

/// Converts every quantized convolution of `model` by `convert`, replacing its fp32
/// weight by the values the fallback runs; the converted weights in site order.
fn replace_conv_weights<M: Network + ?Sized>(
    model: &mut M,
    convert: &mut Convert<'_>,
) -> Result<Vec<QConv>, QuantizeError> {
    let mut convs = Vec::new();
    let mut failed = None;
    model.visit_layers_mut(&mut |name, layer| {
        let LayerMut::Conv(conv) = layer else { return };
        if failed.is_some() || !simulate::is_quantized(name) {
            return;
        }
        let converted = convert(conv.weight().view());
        let error = |source| QuantizeError::Kernel {
            layer: torchvision_path(name.site, name.part),
            source,
        };
        match converted {
            Ok((weight, values)) => {
                let values = Array4::from_shape_vec(conv.weight_shape(), values)
                    .expect("a conversion keeps the weight's shape");
                conv.set_weight(values.view())
                    .expect("a conversion keeps the weight's shape");
                convs.push(QConv { name, weight });
            }
            Err(source) => failed = Some(error(source)),
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(convs),
    }
}

impl<M: Network> Quantized<M> {
    /// Assembles a model (loaders and constructors).
    pub(crate) fn from_parts(model: M, precision: Precision, convs: Vec<QConv>) -> Self {
        Quantized {
            model,
            precision,
            convs,
            strict: false,
        }
    }

    /// The precision of the convolutions.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The fp32 network this model runs around its quantized convolutions: BatchNorm,
    /// stem, classifier as given, convolutions with their dequantized (int8) or
    /// bf16-rounded weights. Running it as an fp32 model gives the weights' rounding
    /// without the activations'.
    pub fn network(&self) -> &M {
        &self.model
    }

    /// Each quantized convolution input's activation scale (int8; empty for bf16), in
    /// network order: per dense layer its 1x1's and 3x3's, per transition its own.
    pub fn input_scales(&self) -> Vec<f32> {
        self.convs
            .iter()
            .filter_map(|c| match c.weight {
                LowWeight::Int8 { input_scale, .. } => Some(input_scale),
                LowWeight::Bf16(_) => None,
            })
            .collect()
    }

    /// Whether this CPU runs the precision's kernels (they may also have been turned
    /// off for tests).
    pub fn kernels_available(&self) -> bool {
        self.precision.available()
    }

    /// Makes a CPU without the precision's kernels an error
    /// ([`QuantizeError::Unsupported`]) rather than a fallback: now, and in every later
    /// `forward`.
    ///
    /// # Errors
    /// [`QuantizeError::Unsupported`] when this CPU lacks them.
    pub fn require_kernels(mut self) -> Result<Self, QuantizeError> {
        self.strict = true;
        self.check_kernels()?;
        Ok(self)
    }

    /// `None` when the kernels run; otherwise what a user should be told: the model
    /// runs the precision's arithmetic on the fp32 kernels (no faster than fp32).
    pub fn fallback_notice(&self) -> Option<String> {
        (!self.kernels_available()).then(|| {
            format!(
                "notice: this CPU has no {} kernels ({}); running the same {} arithmetic on the fp32 kernels (same results within rounding, not faster than fp32)",
                self.precision,
                needs(self.precision),
                self.precision
            )
        })
    }

    /// [`QuantizeError::Unsupported`] in strict mode on a CPU without the kernels.
    fn check_kernels(&self) -> Result<(), QuantizeError> {
        if self.strict && !self.kernels_available() {
            return Err(QuantizeError::Unsupported {
                precision: self.precision,
                needs: needs(self.precision),
            });
        }
        Ok(())
    }

    /// Runs the model on an NCHW batch, as [`Model::forward`](crate::Model::forward)
    /// runs the fp32 one: `(N, classes)` logits, `(N, C)` features or an NCHW map.
    ///
    /// # Errors
    /// [`QuantizeError::Model`] with [`Error::InputShape`] or [`Error::EmptyBatch`];
    /// [`QuantizeError::Unsupported`] after [`require_kernels`](Self::require_kernels)
    /// on a CPU without the kernels; [`QuantizeError::TooLarge`] for an absurd batch.
    ///
    /// Activations live in this thread's [`LowpWorkspace`] (kept between calls, as
    /// [`Model::forward`](crate::Model::forward) keeps its arena).
    pub fn forward(&self, x: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, QuantizeError> {
        thread_local! {
            static WORKSPACE: RefCell<LowpWorkspace> = RefCell::new(LowpWorkspace::new());
        }
        WORKSPACE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut ws) => self.run(x, &mut ws),
            // Held further up this thread's stack (a rayon task of another pass).
            Err(_) => self.run(x, &mut LowpWorkspace::new()),
        })
    }

    /// The kernels' pass in `ws`, or the fallback's.
    fn run(
        &self,
        x: ArrayView4<'_, f32>,
        ws: &mut LowpWorkspace,
    ) -> Result<ArrayD<f32>, QuantizeError> {
        self.check_kernels()?;
        if self.kernels_available() {
            return forward::forward(&self.model, &self.convs, x, ws);
        }
        let convs = &self.convs;
        Ok(simulate::forward(
            &self.model,
            x,
            true,
            &mut |site, values| round_input(&convs[site], values),
        )?)
    }

    /// [`forward`](Self::forward) into `out` (`[N] ++ plan().output`, any layout), with
    /// the activations in the caller's workspace `ws` (it grows to the batch and keeps
    /// its buffers: later passes of that size allocate only the NHWC copy of the input
    /// and the head's small arrays).
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`Error::OutputShape`] when `out` has another shape.
    pub fn forward_into(
        &self,
        x: ArrayView4<'_, f32>,
        ws: &mut LowpWorkspace,
        mut out: ArrayViewMutD<'_, f32>,
    ) -> Result<(), QuantizeError> {
        let expected: Vec<usize> = core::iter::once(x.dim().0)
            .chain(self.model.plan().output.iter().copied())
            .collect();
        if out.shape() != expected.as_slice() {
            return Err(Error::OutputShape {
                expected,
                actual: out.shape().to_vec(),
            }
            .into());
        }
        let y = self.run(x, ws)?;
        out.assign(&y);
        Ok(())
    }

    /// Softmax probabilities `(N, classes)` of a classifier.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`Error::NotAClassifier`] for another head.
    pub fn predict(&self, x: ArrayView4<'_, f32>) -> Result<Array2<f32>, QuantizeError> {
        Ok(softmax(self.logits(x)?))
    }

    /// The `(N, classes)` logits of a classifier.
    fn logits(&self, x: ArrayView4<'_, f32>) -> Result<Array2<f32>, QuantizeError> {
        let arch = self.model.architecture();
        if arch.head != Head::Classifier {
            return Err(Error::NotAClassifier {
                model: arch.name.to_string(),
            }
            .into());
        }
        Ok(self
            .forward(x)?
            .into_dimensionality::<Ix2>()
            .expect("a classifier head gives (N, classes)"))
    }

    /// Loss, accuracy and top-k accuracy on labelled images, as
    /// [`Model::evaluate`](crate::Model::evaluate) computes them for the fp32 model.
    ///
    /// # Errors
    /// [`QuantizeError::Data`] when the data does not fit the model (image shape,
    /// classes), is empty, or `batch_size` is 0; as [`forward`](Self::forward).
    pub fn evaluate(
        &self,
        data: &dyn Source,
        batch_size: usize,
    ) -> Result<Evaluation, QuantizeError> {
        use crate::train::TrainError;
        let arch = self.model.architecture();
        let name = || arch.name.to_string();
        if arch.head != Head::Classifier {
            return Err(TrainError::NoClassifier { model: name() }.into());
        }
        if data.image_shape() != arch.input {
            let (expected, actual) = (arch.input, data.image_shape());
            return Err(TrainError::ImageShape {
                model: name(),
                expected,
                actual,
            }
            .into());
        }
        if data.classes() > arch.classes {
            let (classes, dataset) = (arch.classes, data.classes());
            return Err(TrainError::Classes {
                model: name(),
                classes,
                dataset,
            }
            .into());
        }
        if batch_size == 0 {
            return Err(TrainError::BatchSize { batch_size, min: 1 }.into());
        }
        let top_k = 5.min(self.model.architecture().classes);
        let (mut loss_sum, mut correct, mut top_k_correct, mut total) = (0.0f64, 0, 0, 0usize);
        let indices: Vec<usize> = (0..data.len()).collect();
        for chunk in indices.chunks(batch_size) {
            let batch = data.batch(chunk, None)?;
            if batch.is_empty() {
                continue;
            }
            let logits = self.logits(batch.images.view())?;
            let (loss, _) = softmax_cross_entropy(logits.view(), &batch.labels);
            loss_sum += f64::from(loss) * batch.len() as f64;
            for (row, &label) in logits.axis_iter(Axis(0)).zip(&batch.labels) {
                correct += usize::from(argmax(row.iter().copied()) == label);
                top_k_correct += usize::from(in_top_k(&row.to_vec(), label, top_k));
            }
            total += batch.len();
        }
        if total == 0 {
            return Err(TrainError::EmptyDataset.into());
        }
        Ok(Evaluation {
            loss: (loss_sum / total as f64) as f32,
            accuracy: (correct as f64 / total as f64) as f32,
            correct,
            total,
            top_k,
            top_k_correct,
            top_k_accuracy: (top_k_correct as f64 / total as f64) as f32,
        })
    }

    /// Bytes of the parameters as [`to_safetensors_bytes`](Self::to_safetensors_bytes)
    /// stores them: quantized convolutions in 1 (int8, plus 4 per output channel and 4
    /// for the input scale) or 2 (bf16) bytes per weight, everything else (stem,
    /// BatchNorm, classifier) in 4.
    pub fn weight_bytes(&self) -> usize {
        let quantized: usize = self.convs.iter().map(QConv::stored_bytes).sum();
        let mut fp32 = 0;
        self.model.visit_layers(&mut |name, layer| {
            fp32 += match layer {
                LayerRef::Conv(_) if simulate::is_quantized(name) => 0,
                LayerRef::Conv(conv) => 4 * conv.weight_shape().iter().product::<usize>(),
                LayerRef::BatchNorm(bn) => 16 * bn.channels(),
                LayerRef::Linear(l) => 4 * (l.in_features() + 1) * l.out_features(),
            };
        });
        quantized + fp32
    }

    /// The fp32 model's parameter bytes (4 per parameter and BatchNorm statistic), for
    /// comparison with [`weight_bytes`](Self::weight_bytes).
    pub fn fp32_weight_bytes(&self) -> usize {
        let mut bytes = 0;
        self.model.visit_layers(&mut |_, layer| {
            bytes += match layer {
                LayerRef::Conv(conv) => 4 * conv.weight_shape().iter().product::<usize>(),
                LayerRef::BatchNorm(bn) => 16 * bn.channels(),
                LayerRef::Linear(l) => 4 * (l.in_features() + 1) * l.out_features(),
            };
        });
        bytes
    }

    /// The fp32 model's summary table followed by the precision, where it runs, and
    /// the weight bytes; print it with `{}`.
    pub fn summary(&self) -> PrecisionSummary<'_> {
        PrecisionSummary {
            table: Summary::new(&self.model.architecture().name, self.model.plan()),
            precision: self.precision,
            kernels: self.kernels_available(),
            convs: self.convs.len(),
            weight_bytes: self.weight_bytes(),
            fp32_weight_bytes: self.fp32_weight_bytes(),
        }
    }

    /// The model as safetensors bytes in the layout of [`precision`](super) (module
    /// documentation): loadable by [`from_safetensors_bytes`](Self::from_safetensors_bytes).
    pub fn to_safetensors_bytes(&self) -> Vec<u8> {
        io::to_bytes(&self.model, self.precision, &self.convs)
    }

    /// Writes [`to_safetensors_bytes`](Self::to_safetensors_bytes) to `path`
    /// atomically (a failed write leaves what was there).
    ///
    /// # Errors
    /// [`SaveError`] naming the file.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), SaveError> {
        let path = path.as_ref();
        crate::atomic_file::write(path, &self.to_safetensors_bytes())
            .map_err(|e| SaveError::io(path, e))
    }

    /// A low-precision model from a file's bytes, into `model` (any weights: they are
    /// replaced; its architecture is what the file is checked against).
    ///
    /// # Errors
    /// [`QuantizeError::NotLowPrecision`] for a file without the header entry;
    /// [`QuantizeError::Load`] when its fp32 part does not fit the model (another
    /// architecture: missing, unexpected or mis-shaped tensors; a corrupt file);
    /// [`QuantizeError::MissingTensor`], [`QuantizeError::UnexpectedTensor`],
    /// [`QuantizeError::Dtype`], [`QuantizeError::Shape`], [`QuantizeError::Scale`]
    /// for its quantized tensors.
    pub fn from_safetensors_bytes(model: M, bytes: &[u8]) -> Result<Self, QuantizeError> {
        let (model, precision, convs) = io::from_bytes(model, bytes)?;
        Ok(Self::from_parts(model, precision, convs))
    }

    /// [`from_safetensors_bytes`](Self::from_safetensors_bytes) of the file at `path`.
    ///
    /// # Errors
    /// As [`from_safetensors_bytes`](Self::from_safetensors_bytes), and
    /// [`LoadError::Io`](crate::LoadError::Io) when the file cannot be read.
    pub fn load_safetensors(model: M, path: impl AsRef<Path>) -> Result<Self, QuantizeError> {
        let bytes = crate::weights::read_file(path.as_ref())?;
        Self::from_safetensors_bytes(model, &bytes)
    }
}

/// Rounds a convolution input as its kernel would, in place: int8 `q·s` with `q =
/// clamp(round(x/s), 0, 255)`, bf16 to nearest even.
fn round_input(conv: &QConv, values: &mut [f32]) {
    match conv.weight {
        LowWeight::Int8 { input_scale, .. } => {
            for v in values {
                *v = f32::from(quantize_activation(*v, input_scale)) * input_scale;
            }
        }
        LowWeight::Bf16(_) => {
            for v in values {
                *v = bf16_round(*v).to_f32();
            }
        }
    }
}

/// The instructions a precision's kernels need.
fn needs(precision: Precision) -> &'static str {
    match precision {
        Precision::Int8 => "AVX512-VNNI or AVX-VNNI",
        Precision::Bf16 => "AVX512-BF16",
    }
}

/// The index of the largest value (the first, on ties).
fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// [`Quantized::summary`]: the fp32 model's table, then the precision and the weights'
/// size.
#[derive(Clone, Debug)]
pub struct PrecisionSummary<'a> {
    table: Summary<'a>,
    precision: Precision,
    kernels: bool,
    convs: usize,
    weight_bytes: usize,
    fp32_weight_bytes: usize,
}

impl PrecisionSummary<'_> {
    /// The precision of the quantized convolutions.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// [`Quantized::weight_bytes`].
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
}

impl fmt::Display for PrecisionSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.table)?;
        let runs = match (self.kernels, self.precision.isa()) {
            (true, Some(isa)) => format!("{isa} kernels"),
            _ => "fp32 kernels (fallback: this CPU lacks the instructions)".to_string(),
        };
        writeln!(
            f,
            "Precision: {} ({} convolutions; stem, BatchNorm and head fp32), on {runs}",
            self.precision, self.convs
        )?;
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "Weight bytes: {} ({:.2} MiB; fp32: {} bytes, {:.2} MiB, ratio {:.3})",
            self.weight_bytes,
            mib(self.weight_bytes),
            self.fp32_weight_bytes,
            mib(self.fp32_weight_bytes),
            self.weight_bytes as f64 / self.fp32_weight_bytes.max(1) as f64
        )
    }
}
