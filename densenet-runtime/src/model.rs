//! What every model can do, written once on top of what it is ([`Network`]): a model
//! built at run time can do all a generated one can.

#[cfg(feature = "std")]
use std::path::Path;

use ndarray::{Array2, Array4, ArrayD, ArrayView4, ArrayViewMutD, Axis, Ix2};

use crate::prelude::*;
use crate::spec::Head;
use crate::stage::Network;
#[cfg(feature = "std")]
use crate::train::{self, Evaluation, FitConfig, Gradients, History, Source};
use crate::weights::{LoadReport, PartialLoad};
#[cfg(feature = "std")]
use crate::{onnx, SaveError, TrainError};
use crate::{weights, Error, Summary, Workspace};

/// Everything a DenseNet can do, written once: forward passes, prediction, summary,
/// saving, ONNX export and training, for every [`Network`] — a `densenet!`/`densenet_yaml!`
/// model or a [`DynamicModel`](crate::DynamicModel). Bring it into scope and call
/// these on any model; there is nothing to implement.
///
/// Object safe: `&dyn Model` runs, saves and exports like a concrete model (the
/// methods taking a path need `Sized`; for `dyn Model` use
/// [`weights::save_file`](crate::weights::save_file) and [`onnx::save_file`]).
///
/// ```
/// use densenet_runtime::{DynamicModel, Model, Network};
/// use densenet_runtime::ndarray::Array4;
/// # let arch = densenet_runtime::spec::check(&densenet_runtime::spec::parse_yaml(
/// #     "name: Tiny\ngrowth: 4\nblocks: [2, 2]\nstem: cifar\ninput: [3, 8, 8]\nclasses: 3\n", "t").unwrap()).unwrap();
/// let model = DynamicModel::init(arch, 0)?;
/// let logits = model.forward(Array4::zeros((2, 3, 8, 8)).view())?;
/// assert_eq!(logits.shape(), &[2, 3]);
/// println!("{}", model.summary());                // Keras-style table
/// let bytes = model.to_safetensors_bytes();   // torchvision naming
/// # Ok::<(), densenet_runtime::Error>(())
/// ```
pub trait Model: Network {
    /// Runs the network on an NCHW batch: `(N, classes)` logits, `(N, C)` pooled
    /// features, or an `(N, C, H, W)` feature map, as the head says. Activations live
    /// in this thread's cached [`Workspace`]: only the output is allocated.
    ///
    /// # Errors
    /// [`Error::InputShape`] when a per-image shape is not the model's input;
    /// [`Error::EmptyBatch`] for N = 0; [`Error::BatchTooLarge`] when the batch's
    /// activations cannot be allocated.
    fn forward(&self, x: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, Error> {
        crate::workspace::forward_alloc(self, x)
    }

    /// [`forward`](Self::forward) into `out` (`[N] ++ plan().output`, any memory
    /// layout) with every activation in `ws`: no allocation once `ws` has grown to the
    /// batch.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and [`Error::OutputShape`] when `out` has another shape.
    fn forward_into(
        &self,
        x: ArrayView4<'_, f32>,
        ws: &mut Workspace,
        out: ArrayViewMutD<'_, f32>,
    ) -> Result<(), Error> {
        crate::workspace::forward_into(self, x, ws, out)
    }

    /// Softmax probabilities `(N, classes)` of a classifier.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`Error::NotAClassifier`] for a model whose head
    /// is not a classifier.
    fn predict(&self, x: ArrayView4<'_, f32>) -> Result<Array2<f32>, Error> {
        let arch = self.architecture();
        if arch.head != Head::Classifier {
            return Err(Error::NotAClassifier {
                model: arch.name.to_string(),
            });
        }
        let logits = self.forward(x)?;
        Ok(softmax(
            logits
                .into_dimensionality::<Ix2>()
                .expect("a classifier head gives (N, classes)"),
        ))
    }

    /// A Keras-style summary table; print it with `{}`.
    fn summary(&self) -> Summary<'_> {
        Summary::new(&self.architecture().name, self.plan())
    }

    /// The weights as safetensors bytes in torchvision naming (conv weights OIHW, BN
    /// running statistics and `num_batches_tracked` included), loadable by
    /// `torchvision.models.DenseNet.load_state_dict` and by this crate's loaders.
    fn to_safetensors_bytes(&self) -> Vec<u8> {
        weights::to_bytes(self)
    }

    /// Writes [`to_safetensors_bytes`](Self::to_safetensors_bytes) to `path`
    /// atomically: a failed write leaves what was there.
    ///
    /// # Errors
    /// [`SaveError`] naming the file when it cannot be written.
    #[cfg(feature = "std")]
    fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), SaveError>
    where
        Self: Sized,
    {
        weights::save_file(self, path.as_ref())
    }

    /// Loads part of a weights file as `how` says (e.g. [`PartialLoad::backbone`]: an
    /// ImageNet file into a model with a new head) and reports what was loaded, kept
    /// and unused. All or nothing: on an error the model is as it was.
    ///
    /// ```
    /// use densenet_runtime::weights::PartialLoad;
    /// use densenet_runtime::{DynamicModel, Model};
    /// # let spec = |classes| densenet_runtime::spec::check(&densenet_runtime::spec::parse_yaml(
    /// #     &format!("name: Tiny\ngrowth: 4\nblocks: [2, 2]\nstem: cifar\ninput: [3, 8, 8]\nclasses: {classes}\n"), "t").unwrap()).unwrap();
    /// let pretrained = DynamicModel::init(spec(10), 1)?.to_safetensors_bytes();
    /// let mut model = DynamicModel::init(spec(3), 0)?; // a new 3-class head
    /// let report = model.load_partial(&pretrained, &PartialLoad::backbone())?;
    /// assert_eq!(report.kept.len(), 1); // the classifier, skipped
    /// assert_eq!(report.unused, ["classifier.bias", "classifier.weight"]);
    /// # Ok::<(), Box<dyn core::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// A [`LoadError`](crate::LoadError): a corrupt file, a layer the file lacks or has
    /// in another shape (unless [`PartialLoad::skip_mismatched`]), another architecture,
    /// or [`LoadError::NoSuchPart`](crate::LoadError::NoSuchPart) for a skipped part the
    /// model does not have.
    fn load_partial(
        &mut self,
        bytes: &[u8],
        how: &PartialLoad,
    ) -> Result<LoadReport, crate::LoadError> {
        weights::load_partial(self, bytes, how)
    }

    /// [`load_partial`](Self::load_partial) from a file.
    ///
    /// # Errors
    /// [`LoadError::Io`](crate::LoadError::Io) if the file cannot be read, else as
    /// [`load_partial`](Self::load_partial).
    #[cfg(feature = "std")]
    fn load_partial_file(
        &mut self,
        path: impl AsRef<Path>,
        how: &PartialLoad,
    ) -> Result<LoadReport, crate::LoadError>
    where
        Self: Sized,
    {
        let bytes = weights::read_file(path.as_ref())?;
        weights::load_partial(self, &bytes, how)
    }

    /// A standard ONNX graph (opset 17, dynamic batch, weights included) for ONNX
    /// Runtime, Triton or TensorRT, serialised.
    #[cfg(feature = "std")]
    fn to_onnx_bytes(&self) -> Vec<u8> {
        onnx::to_bytes(self)
    }

    /// Writes [`to_onnx_bytes`](Self::to_onnx_bytes) to `path` atomically.
    ///
    /// # Errors
    /// [`SaveError`] naming the file when it cannot be written.
    #[cfg(feature = "std")]
    fn to_onnx(&self, path: impl AsRef<Path>) -> Result<(), SaveError>
    where
        Self: Sized,
    {
        onnx::save_file(self, path.as_ref())
    }

    /// One training step's mean softmax cross-entropy on an NCHW batch with class
    /// indices `labels`, and the gradient of every parameter; see
    /// [`train::loss_and_gradients_with`] for the details and settings.
    ///
    /// # Errors
    /// As [`train::loss_and_gradients`].
    #[cfg(feature = "std")]
    fn loss_and_gradients(
        &mut self,
        x: ArrayView4<'_, f32>,
        labels: &[usize],
    ) -> Result<(f32, Gradients), Error> {
        train::loss_and_gradients(self, x, labels)
    }

    /// Trains on `data` as `config` says; see [`train::fit`].
    ///
    /// # Errors
    /// As [`train::fit`].
    #[cfg(feature = "std")]
    fn fit(&mut self, data: &dyn Source, config: &FitConfig<'_>) -> Result<History, TrainError> {
        train::fit(self, data, config)
    }

    /// Mean cross-entropy and accuracy over `data` in inference mode; see [`train::evaluate`].
    ///
    /// # Errors
    /// As [`train::evaluate`].
    #[cfg(feature = "std")]
    fn evaluate(&self, data: &dyn Source, batch_size: usize) -> Result<Evaluation, TrainError> {
        train::evaluate(self, data, batch_size)
    }
}

impl<T: Network + ?Sized> Model for T {}

/// Checks an NCHW batch against the model's per-image `[C, H, W]` and converts it to
/// the NHWC layout the layers use.
///
/// # Errors
/// [`Error::InputShape`] when the per-image shape differs; [`Error::EmptyBatch`] for N = 0.
pub fn input_to_nhwc(x: ArrayView4<'_, f32>, expected: [usize; 3]) -> Result<Array4<f32>, Error> {
    check_input(x, expected)?;
    Ok(x.permuted_axes([0, 2, 3, 1])
        .as_standard_layout()
        .into_owned())
}

/// [`input_to_nhwc`]'s checks: `x` is a nonempty NCHW batch of `expected` `[C, H, W]`.
pub(crate) fn check_input(x: ArrayView4<'_, f32>, expected: [usize; 3]) -> Result<(), Error> {
    let (n, c, h, w) = x.dim();
    if [c, h, w] != expected {
        return Err(Error::InputShape {
            expected,
            actual: x.shape().to_vec(),
        });
    }
    if n == 0 {
        return Err(Error::EmptyBatch);
    }
    Ok(())
}

/// Row-wise softmax of `(N, classes)` logits, computed stably (max subtracted).
pub fn softmax(mut logits: Array2<f32>) -> Array2<f32> {
    for mut row in logits.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| crate::math::expf(v - max));
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    logits
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array4};

    #[test]
    fn wrong_shape_names_expected_and_actual() {
        let x = Array4::<f32>::zeros((2, 3, 32, 30));
        let err = input_to_nhwc(x.view(), [3, 32, 32]).unwrap_err();
        assert_eq!(
            err,
            Error::InputShape {
                expected: [3, 32, 32],
                actual: vec![2, 3, 32, 30]
            }
        );
        assert!(err.to_string().contains("(N, 3, 32, 32)"), "{err}");
        let empty = Array4::<f32>::zeros((0, 3, 32, 32));
        assert_eq!(
            input_to_nhwc(empty.view(), [3, 32, 32]),
            Err(Error::EmptyBatch)
        );
    }

    #[test]
    fn nchw_becomes_nhwc() {
        // x[n, c, h, w] = 1000n + 100c + 10h + w
        let x = Array4::from_shape_fn((2, 3, 2, 2), |(n, c, h, w)| {
            (1000 * n + 100 * c + 10 * h + w) as f32
        });
        let y = input_to_nhwc(x.view(), [3, 2, 2]).unwrap();
        assert_eq!(y.dim(), (2, 2, 2, 3));
        assert_eq!(y[[1, 0, 1, 2]], 1201.0);
    }

    #[test]
    fn softmax_matches_numpy() {
        // numpy: e = np.exp(x - x.max(1, keepdims=True)); e / e.sum(1, keepdims=True)
        // x = [[1, 2, 3], [1000, 1000, 1000]] -> [[0.09003057, 0.24472847, 0.66524096], [1/3]*3]
        let p = softmax(array![[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]]);
        let expected = array![
            [0.090_030_57, 0.244_728_47, 0.665_240_96],
            [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]
        ];
        for (a, b) in p.iter().zip(expected.iter()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
