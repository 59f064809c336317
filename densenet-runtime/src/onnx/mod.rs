//! ONNX export: any model as a standard ONNX graph with its weights, to serve it with
//! ONNX Runtime, Triton or TensorRT.
//!
//! ```no_run
//! # use densenet_runtime::{Model, SaveError};
//! # fn export(model: &impl Model) -> Result<(), SaveError> {
//! model.to_onnx("model.onnx")?;
//! # Ok(())
//! # }
//! ```
//!
//! The file is an ONNX model of IR version 8 using the default operator set, version 17
//! (ONNX 1.12 and later, ONNX Runtime 1.12 and later). Its graph:
//!
//! - input `input`: float32 `[N, C, H, W]`, NCHW as a generated model's `forward` takes
//!   it, with the batch dimension `N` dynamic (`dim_param`) and `C, H, W` the model's input;
//! - output `output`: float32 `[N, classes]` logits for a classifier head, `[N, C]` pooled
//!   features for an `avg` or `max` head, the `[N, C, h, w]` feature map for head `none`;
//! - nodes, in network order, the standard DenseNet graph (what `torch.onnx.export` of
//!   torchvision's DenseNet gives): `Conv` (no bias), `BatchNormalization` (inference
//!   form, each layer's epsilon), `Relu`, the ImageNet stem's `MaxPool` 3x3/2 padding 1,
//!   one `Concat` (axis 1) per dense layer, transitions as BN → ReLU → 1x1 `Conv` →
//!   `AveragePool` 2x2/2 (the runtime pools before the conv, which is equal, see
//!   `layers/transition.rs`), and the head's `GlobalAveragePool` (or `GlobalMaxPool`),
//!   `Flatten` and `Gemm` (`transB = 1`, the weight `(out, in)` as torch's);
//! - the weights as initializers (float32, `raw_data`), named with torchvision's
//!   `state_dict` keys (`features.denseblock1.denselayer1.conv1.weight`, conv weights
//!   OIHW), so the file describes itself; `num_batches_tracked` is not exported. Node and
//!   intermediate value names are the torchvision module paths
//!   (`features.denseblock1.denselayer1.relu1`, `features.transition1.pool`, …).
//!
//! Everything is written in one protobuf message, so a model must be under protobuf's
//! 2 GiB limit: DenseNet-264 is about 130 MB.
//!
//! `tools/check_onnx.py` runs exported files with ONNX Runtime and compares them with
//! this crate's and torchvision's outputs.

mod proto;

use std::path::Path;

use densenet_spec::Head;

use crate::layers::{BatchNorm2d, Conv2d, DenseLayer, Linear};
use crate::stage::Network;
use crate::stage::{stages, LayerName, Site, StageRef};
use crate::weights::torchvision_path as path;
use crate::SaveError;
use proto::{Attribute, Dim, Message};

/// The ONNX IR version written (`ModelProto.ir_version`): 8, that of ONNX 1.12.
pub const IR_VERSION: i64 = 8;

/// The version of the default ONNX operator set the graph imports.
pub const OPSET_VERSION: i64 = 17;

/// The name of the graph's input.
pub const INPUT_NAME: &str = "input";

/// The name of the graph's output.
pub const OUTPUT_NAME: &str = "output";

/// The name of the dynamic batch dimension of the input and output.
pub const BATCH_DIM: &str = "N";

/// `ModelProto.producer_name`.
const PRODUCER: &str = "densenet-rs";

/// The model as a serialised ONNX `ModelProto`, weights included; see the
/// [module docs](self) for the graph.
pub fn to_bytes<M: Network + ?Sized>(model: &M) -> Vec<u8> {
    let arch = model.architecture();
    let mut graph = Graph::default();
    let mut x = INPUT_NAME.to_owned();
    for stage in stages(model) {
        x = match stage {
            StageRef::Stem { conv, norm } => {
                let x = graph.conv(LayerName::new(Site::Stem, "conv0"), conv, x);
                match norm {
                    // The ImageNet stem: BN, ReLU, 3x3/2 max pool (layers/stem.rs).
                    Some(norm) => {
                        let x = graph.batch_norm_relu(LayerName::new(Site::Stem, "norm0"), norm, x);
                        let pool = [
                            ("kernel_shape", Attribute::Ints(vec![3, 3])),
                            ("strides", Attribute::Ints(vec![2, 2])),
                            ("pads", Attribute::Ints(vec![1, 1, 1, 1])),
                        ];
                        graph.node("MaxPool", path(Site::Stem, "pool0"), vec![x], pool)
                    }
                    // The CIFAR stem is the conv alone.
                    None => x,
                }
            }
            StageRef::Block { index, layers } => {
                layers.iter().enumerate().fold(x, |x, (j, layer)| {
                    let site = Site::Dense {
                        block: index,
                        layer: j + 1,
                    };
                    graph.dense_layer(site, layer, x)
                })
            }
            StageRef::Transition { index, norm, conv } => {
                let site = Site::Transition { index };
                let x = graph.batch_norm_relu(LayerName::new(site, "norm"), norm, x);
                let x = graph.conv(LayerName::new(site, "conv"), conv, x);
                let pool = [
                    ("kernel_shape", Attribute::Ints(vec![2, 2])),
                    ("strides", Attribute::Ints(vec![2, 2])),
                ];
                graph.node("AveragePool", path(site, "pool"), vec![x], pool)
            }
            StageRef::Head {
                norm,
                classifier,
                head,
            } => graph.head(norm, classifier, head, x),
        };
    }
    // The last node's value is the graph's output.
    if let Some(last) = graph.nodes.last_mut() {
        last.output = OUTPUT_NAME.to_owned();
    }

    let batch = || Dim::Param(BATCH_DIM.to_owned());
    let input_dims: Vec<Dim> = std::iter::once(batch())
        .chain(arch.input.iter().map(|&d| Dim::Value(d)))
        .collect();
    let output_dims: Vec<Dim> = std::iter::once(batch())
        .chain(model.plan().output.iter().map(|&d| Dim::Value(d)))
        .collect();

    // The graph's body in pieces (one per field), copied once into the model below.
    let mut pieces: Vec<Message> =
        Vec::with_capacity(graph.nodes.len() + graph.initializers.len() + 3);
    for node in &graph.nodes {
        let mut piece = Message::new();
        piece.message(proto::graph::NODE, &node.encode());
        pieces.push(piece);
    }
    let mut name = Message::new();
    name.string(proto::graph::NAME, &arch.name);
    pieces.push(name);
    pieces.append(&mut graph.initializers);
    let mut io = Message::new();
    io.message(
        proto::graph::INPUT,
        &proto::float_value_info(INPUT_NAME, &input_dims),
    )
    .message(
        proto::graph::OUTPUT,
        &proto::float_value_info(OUTPUT_NAME, &output_dims),
    );
    pieces.push(io);

    let doc = format!(
        "DenseNet `{}` exported by densenet-rs; initializers carry torchvision state_dict names",
        arch.name
    );
    let mut m = Message::new();
    m.int(proto::model::IR_VERSION, IR_VERSION)
        .string(proto::model::PRODUCER_NAME, PRODUCER)
        .string(proto::model::PRODUCER_VERSION, env!("CARGO_PKG_VERSION"))
        .string(proto::model::DOC_STRING, &doc)
        .message_in_pieces(proto::model::GRAPH, &pieces)
        .message(
            proto::model::OPSET_IMPORT,
            &proto::operator_set("", OPSET_VERSION),
        );
    m.into_bytes()
}

/// Writes [`to_bytes`] to `path` atomically: [`Model::to_onnx`](crate::Model::to_onnx),
/// also for `dyn Model`.
///
/// # Errors
/// [`SaveError`] naming the file if it cannot be written.
pub fn save_file<M: Network + ?Sized>(model: &M, path: &Path) -> Result<(), SaveError> {
    crate::atomic_file::write(path, &to_bytes(model)).map_err(|e| SaveError::io(path, e))
}

/// A node before encoding: its output is renamed when it turns out to be the last.
struct Node {
    op_type: &'static str,
    name: String,
    inputs: Vec<String>,
    output: String,
    attributes: Vec<(&'static str, Attribute)>,
}

impl Node {
    fn encode(&self) -> Message {
        proto::node(
            &self.name,
            self.op_type,
            &self.inputs,
            std::slice::from_ref(&self.output),
            &self.attributes,
        )
    }
}

/// The graph being built: nodes in network order, initializers as encoded
/// `GraphProto.initializer` fields.
#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    initializers: Vec<Message>,
}

impl Graph {
    /// Adds a node named `name` whose one output has the same name; returns it.
    fn node(
        &mut self,
        op_type: &'static str,
        name: String,
        inputs: Vec<String>,
        attributes: impl IntoIterator<Item = (&'static str, Attribute)>,
    ) -> String {
        self.nodes.push(Node {
            op_type,
            name: name.clone(),
            inputs,
            output: name.clone(),
            attributes: attributes.into_iter().collect(),
        });
        name
    }

    /// Adds a float32 initializer; returns its name.
    fn initializer(
        &mut self,
        name: String,
        dims: &[usize],
        values: impl IntoIterator<Item = f32>,
    ) -> String {
        let mut field = Message::new();
        field.message(
            proto::graph::INITIALIZER,
            &proto::float_tensor(&name, dims, values),
        );
        self.initializers.push(field);
        name
    }

    /// `Conv` without bias; the HWIO weight exported OIHW.
    fn conv(&mut self, layer: LayerName, conv: &Conv2d, x: String) -> String {
        let hwio = conv.weight();
        let oihw = hwio.view().permuted_axes([3, 2, 0, 1]);
        let dims = oihw.shape().to_vec();
        let w = self.initializer(weight_key(layer, "weight"), &dims, oihw.iter().copied());
        let (stride, pad) = (conv.config().stride as i64, conv.config().padding as i64);
        let attributes = [
            (
                "kernel_shape",
                Attribute::Ints(vec![dims[2] as i64, dims[3] as i64]),
            ),
            ("strides", Attribute::Ints(vec![stride, stride])),
            ("pads", Attribute::Ints(vec![pad, pad, pad, pad])),
        ];
        self.node("Conv", layer_path(layer), vec![x, w], attributes)
    }

    /// `BatchNormalization` (inference: running statistics) then `Relu`, named as
    /// torchvision's modules (`norm1` → `relu1`, `norm` → `relu`).
    fn batch_norm_relu(&mut self, layer: LayerName, bn: &BatchNorm2d, x: String) -> String {
        let c = [bn.channels()];
        let inputs = vec![
            x,
            self.initializer(weight_key(layer, "weight"), &c, bn.gamma().iter().copied()),
            self.initializer(weight_key(layer, "bias"), &c, bn.beta().iter().copied()),
            self.initializer(
                weight_key(layer, "running_mean"),
                &c,
                bn.running_mean().iter().copied(),
            ),
            self.initializer(
                weight_key(layer, "running_var"),
                &c,
                bn.running_var().iter().copied(),
            ),
        ];
        let norm_path = layer_path(layer);
        let x = self.node(
            "BatchNormalization",
            norm_path.clone(),
            inputs,
            [("epsilon", Attribute::Float(bn.eps()))],
        );
        let relu_path = match norm_path.rsplit_once('.') {
            Some((parent, part)) => format!("{parent}.{}", part.replacen("norm", "relu", 1)),
            None => norm_path.replacen("norm", "relu", 1),
        };
        self.node("Relu", relu_path, vec![x], [])
    }

    /// One dense layer, its new channels concatenated after its input's.
    fn dense_layer(&mut self, site: Site, layer: &DenseLayer, x: String) -> String {
        let name = |part| LayerName::new(site, part);
        let new = match layer {
            DenseLayer::Basic { norm1, conv1 } => {
                let y = self.batch_norm_relu(name("norm1"), norm1, x.clone());
                self.conv(name("conv1"), conv1, y)
            }
            DenseLayer::Bottleneck {
                norm1,
                conv1,
                norm2,
                conv2,
            } => {
                let y = self.batch_norm_relu(name("norm1"), norm1, x.clone());
                let y = self.conv(name("conv1"), conv1, y);
                let y = self.batch_norm_relu(name("norm2"), norm2, y);
                self.conv(name("conv2"), conv2, y)
            }
        };
        self.node(
            "Concat",
            path(site, "concat"),
            vec![x, new],
            [("axis", Attribute::Int(1))],
        )
    }

    /// BN → ReLU, then the head's tail.
    fn head(
        &mut self,
        norm: &BatchNorm2d,
        classifier: Option<&Linear>,
        head: Head,
        x: String,
    ) -> String {
        let x = self.batch_norm_relu(LayerName::new(Site::Head, "norm5"), norm, x);
        let pool = match head {
            Head::Classifier | Head::Avg => "GlobalAveragePool",
            Head::Max => "GlobalMaxPool",
            Head::None => return x,
        };
        let x = self.node(pool, "global_pool".to_owned(), vec![x], []);
        let x = self.node(
            "Flatten",
            "flatten".to_owned(),
            vec![x],
            [("axis", Attribute::Int(1))],
        );
        let Some(linear) = classifier else {
            return x;
        };
        let layer = LayerName::new(Site::Head, "classifier");
        let w = linear.weight();
        let inputs = vec![
            x,
            self.initializer(weight_key(layer, "weight"), w.shape(), w.iter().copied()),
            self.initializer(
                weight_key(layer, "bias"),
                &[linear.bias().len()],
                linear.bias().iter().copied(),
            ),
        ];
        self.node(
            "Gemm",
            layer_path(layer),
            inputs,
            [("transB", Attribute::Int(1))],
        )
    }
}

/// torchvision's module path of a layer: `features.conv0`,
/// `features.denseblock1.denselayer2.norm1`, `features.transition1.conv`,
/// `features.norm5`, `classifier`.
///
/// The scheme of the torchvision weight keys; `tests/onnx.rs` checks that the
/// initializers carry exactly the keys `weights::to_bytes` writes.
fn layer_path(name: LayerName) -> String {
    path(name.site, name.part)
}

/// The torchvision `state_dict` key of a layer's tensor, e.g. `features.norm0.running_var`.
fn weight_key(name: LayerName, tensor: &str) -> String {
    format!("{}.{tensor}", layer_path(name))
}
