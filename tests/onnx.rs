//! ONNX export: the file's structure, read back with a protobuf reader written here
//! (independent of the exporter's encoder), against each model's architecture: its
//! planned layers (`Model::layers()`), `PARAMS + BUFFERS`, input and output shapes, and
//! the weights `save_safetensors` writes.
//!
//! Numerical parity with ONNX Runtime is checked by `tools/check_onnx.py` on the files
//! this test writes when `DENSENET_ONNX_OUT=DIR` is set:
//!
//! ```sh
//! DENSENET_ONNX_OUT=/tmp/onnx cargo test --test onnx
//! /work/venv/bin/python tools/check_onnx.py /tmp/onnx
//! ```
//!
//! With `DENSENET_LARGE_FIXTURES=DIR` too (the directory `tools/make_fixtures.py --large
//! DIR` wrote), the full-size DenseNet-121 is exported and checked as well.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use densenet::densenet;
use densenet::ndarray::{s, Array4, ArrayD, ArrayView4, Axis};
use densenet::runtime::spec::{Architecture, Head, LayerKind, LayerPlan};
use densenet::runtime::{onnx, DynamicModel, LayerMut, Model, Naming};
use safetensors::SafeTensors;

densenet! {
    /// torchvision `DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16,
    /// bn_size=4, num_classes=10)`: the `torchvision_small` fixture.
    Small<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// The paper's CIFAR DenseNet-BC, L = 40, k = 12: the `cifar_bc` fixture.
    CifarBC<depth: 40, growth: 12, theta: 0.5, stem: cifar, classes: 10>;
    /// Keras `DenseNet(blocks=[1, 2, 2, 1], input_shape=(64, 64, 3), classes=10)`: the
    /// `keras_small` fixture (BatchNorm epsilon 1.001e-5).
    KerasSmall<growth: 32, blocks: [1, 2, 2, 1], theta: 0.5, input: [3, 64, 64], classes: 10, eps: 1.001e-5>;
    /// A plain CIFAR DenseNet: no bottleneck, no compression.
    CifarPlain<growth: 12, blocks: [2, 3, 2], stem: cifar, bottleneck: false, classes: 10>;
    /// Pooled features.
    SmallAvg<growth: 8, blocks: [2, 3, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], head: avg>;
    /// Max-pooled features, odd and non-square input (floor-mode pooling).
    SmallMax<growth: 8, blocks: [2, 2], init_features: 16, theta: 0.5, input: [3, 50, 46], head: max>;
    /// The final feature map, odd input.
    SmallFeatures<growth: 8, blocks: [2, 3, 2], init_features: 16, theta: 0.5, input: [3, 45, 45], head: none>;
    /// torchvision's `densenet121()`, for the large fixture (not committed).
    DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>
}

// ---------------------------------------------------------------------------------------
// A protobuf reader, enough for the ONNX messages the exporter writes.
// ---------------------------------------------------------------------------------------

/// A field's value on the wire.
#[derive(Clone, Copy, Debug)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn read_varint(buf: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().expect("varint runs past the end");
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return value;
        }
    }
    panic!("varint longer than ten bytes");
}

/// The fields of a message, in order; panics on malformed input.
fn fields(mut buf: &[u8]) -> Vec<(u64, Wire<'_>)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf);
        let value = match key & 7 {
            0 => Wire::Varint(read_varint(&mut buf)),
            2 => {
                let len = read_varint(&mut buf) as usize;
                assert!(len <= buf.len(), "length-delimited field runs past the end");
                let (v, rest) = buf.split_at(len);
                buf = rest;
                Wire::Bytes(v)
            }
            5 => {
                let (v, rest) = buf.split_at(4);
                buf = rest;
                Wire::Fixed32(u32::from_le_bytes(v.try_into().unwrap()))
            }
            t => panic!("unexpected wire type {t} (ONNX uses no fixed64 fields here)"),
        };
        out.push((key >> 3, value));
    }
    out
}

/// Decoded fields of one message, looked up by field number.
struct Msg<'a>(Vec<(u64, Wire<'a>)>);

impl<'a> Msg<'a> {
    fn parse(buf: &'a [u8]) -> Self {
        Msg(fields(buf))
    }

    fn all(&self, field: u64) -> impl Iterator<Item = Wire<'a>> + '_ {
        self.0
            .iter()
            .filter(move |(f, _)| *f == field)
            .map(|(_, v)| *v)
    }

    fn bytes(&self, field: u64) -> Vec<&'a [u8]> {
        self.all(field)
            .map(|v| match v {
                Wire::Bytes(b) => b,
                other => panic!("field {field}: expected bytes, got {other:?}"),
            })
            .collect()
    }

    fn messages(&self, field: u64) -> Vec<Msg<'a>> {
        self.bytes(field).into_iter().map(Msg::parse).collect()
    }

    fn message(&self, field: u64) -> Option<Msg<'a>> {
        self.messages(field).pop()
    }

    fn strings(&self, field: u64) -> Vec<String> {
        self.bytes(field)
            .into_iter()
            .map(|b| String::from_utf8(b.to_vec()).expect("utf-8 string"))
            .collect()
    }

    fn string(&self, field: u64) -> Option<String> {
        self.strings(field).pop()
    }

    /// Repeated `int64`, packed or not.
    fn ints(&self, field: u64) -> Vec<i64> {
        let mut out = Vec::new();
        for v in self.all(field) {
            match v {
                Wire::Varint(x) => out.push(x as i64),
                Wire::Bytes(mut packed) => {
                    while !packed.is_empty() {
                        out.push(read_varint(&mut packed) as i64);
                    }
                }
                other => panic!("field {field}: expected an integer, got {other:?}"),
            }
        }
        out
    }

    fn int(&self, field: u64) -> Option<i64> {
        self.ints(field).pop()
    }

    fn float(&self, field: u64) -> Option<f32> {
        self.all(field).last().map(|v| match v {
            Wire::Fixed32(bits) => f32::from_bits(bits),
            other => panic!("field {field}: expected a float, got {other:?}"),
        })
    }
}

// ---------------------------------------------------------------------------------------
// The ONNX messages, decoded (field numbers from onnx/onnx.proto).
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

struct Node {
    op_type: String,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attributes: BTreeMap<String, Attr>,
}

struct Tensor<'a> {
    name: String,
    dims: Vec<usize>,
    data_type: i64,
    raw: &'a [u8],
}

#[derive(Debug, PartialEq)]
enum Dim {
    Value(i64),
    Param(String),
}

/// A `ValueInfoProto`: name, element type and shape.
#[derive(Debug, PartialEq)]
struct ValueInfo {
    name: String,
    elem_type: i64,
    dims: Vec<Dim>,
}

struct OnnxModel<'a> {
    ir_version: i64,
    producer_name: String,
    opsets: Vec<(String, i64)>,
    graph_name: String,
    nodes: Vec<Node>,
    initializers: Vec<Tensor<'a>>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
}

fn decode(bytes: &[u8]) -> OnnxModel<'_> {
    let model = Msg::parse(bytes);
    let graph = model.message(7).expect("ModelProto.graph");
    let nodes = graph
        .messages(1)
        .iter()
        .map(|n| Node {
            inputs: n.strings(1),
            outputs: n.strings(2),
            name: n.string(3).unwrap_or_default(),
            op_type: n.string(4).expect("NodeProto.op_type"),
            attributes: n
                .messages(5)
                .iter()
                .map(|a| {
                    let name = a.string(1).expect("AttributeProto.name");
                    let value = match a.int(20).expect("AttributeProto.type") {
                        1 => Attr::Float(a.float(2).expect("f")),
                        2 => Attr::Int(a.int(3).expect("i")),
                        7 => Attr::Ints(a.ints(8)),
                        t => panic!("attribute {name}: unexpected type {t}"),
                    };
                    (name, value)
                })
                .collect(),
        })
        .collect();
    let initializers = graph
        .messages(5)
        .iter()
        .map(|t| Tensor {
            name: t.string(8).expect("TensorProto.name"),
            dims: t.ints(1).into_iter().map(|d| d as usize).collect(),
            data_type: t.int(2).expect("TensorProto.data_type"),
            raw: t.bytes(9).pop().expect("TensorProto.raw_data"),
        })
        .collect();
    let value_info = |v: &Msg<'_>| {
        let tensor = v
            .message(2)
            .and_then(|t| t.message(1))
            .expect("TypeProto.tensor_type");
        let dims = tensor
            .message(2)
            .expect("TypeProto.Tensor.shape")
            .messages(1)
            .iter()
            .map(|d| match (d.int(1), d.string(2)) {
                (Some(v), None) => Dim::Value(v),
                (None, Some(p)) => Dim::Param(p),
                other => panic!("a dimension has one of dim_value, dim_param; got {other:?}"),
            })
            .collect();
        ValueInfo {
            name: v.string(1).expect("ValueInfoProto.name"),
            elem_type: tensor.int(1).expect("elem_type"),
            dims,
        }
    };
    OnnxModel {
        ir_version: model.int(1).expect("ir_version"),
        producer_name: model.string(2).unwrap_or_default(),
        opsets: model
            .messages(8)
            .iter()
            .map(|o| (o.string(1).unwrap_or_default(), o.int(2).expect("version")))
            .collect(),
        graph_name: graph.string(2).unwrap_or_default(),
        nodes,
        initializers,
        inputs: graph.messages(11).iter().map(value_info).collect(),
        outputs: graph.messages(12).iter().map(value_info).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// The structural check.
// ---------------------------------------------------------------------------------------

/// What a model's definition says the graph must be.
struct Expected {
    layers: &'static [LayerPlan],
    params: u64,
    buffers: u64,
    input: [usize; 3],
    output: &'static [usize],
    safetensors: Vec<u8>,
}

macro_rules! expected {
    ($model:ty, $instance:expr) => {
        Expected {
            layers: <$model>::layers(),
            params: <$model>::PARAMS,
            buffers: <$model>::BUFFERS,
            input: <$model>::INPUT,
            output: <$model>::OUTPUT,
            safetensors: $instance.to_safetensors_bytes(),
        }
    };
}

/// The ONNX operator a planned layer becomes.
fn op_type(kind: LayerKind) -> Option<&'static str> {
    Some(match kind {
        LayerKind::Input => return None,
        LayerKind::Conv2d { .. } => "Conv",
        LayerKind::BatchNorm => "BatchNormalization",
        LayerKind::Relu => "Relu",
        LayerKind::MaxPool { .. } => "MaxPool",
        LayerKind::AvgPool { .. } => "AveragePool",
        LayerKind::Concat => "Concat",
        LayerKind::GlobalAvgPool => "GlobalAveragePool",
        LayerKind::GlobalMaxPool => "GlobalMaxPool",
        LayerKind::Linear => "Gemm",
    })
}

fn ints(v: &[usize]) -> Attr {
    Attr::Ints(v.iter().map(|&x| x as i64).collect())
}

fn check_structure<M: Model>(model: &M, expected: Expected) {
    let arch: Architecture = model.architecture().clone();
    let bytes = onnx::to_bytes(model);
    let file = decode(&bytes);

    // The header.
    assert_eq!(file.ir_version, 8);
    assert_eq!(file.producer_name, "densenet-rs");
    assert_eq!(file.opsets, vec![(String::new(), 17)]);
    assert_eq!(file.graph_name, arch.name);

    // Input and output: float32, dynamic batch `N`.
    let shape = |dims: &[usize]| {
        std::iter::once(Dim::Param("N".into()))
            .chain(dims.iter().map(|&d| Dim::Value(d as i64)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        file.inputs,
        vec![ValueInfo {
            name: "input".into(),
            elem_type: 1,
            dims: shape(&expected.input),
        }]
    );
    assert_eq!(
        file.outputs,
        vec![ValueInfo {
            name: "output".into(),
            elem_type: 1,
            dims: shape(expected.output),
        }]
    );

    // The nodes are the planned layers, in order, with a Flatten after a global pool.
    let planned: Vec<&LayerPlan> = expected
        .layers
        .iter()
        .filter(|l| l.kind != LayerKind::Input)
        .collect();
    let ops: Vec<&str> = file
        .nodes
        .iter()
        .map(|n| n.op_type.as_str())
        .filter(|&op| op != "Flatten")
        .collect();
    let planned_ops: Vec<&str> = planned.iter().filter_map(|l| op_type(l.kind)).collect();
    assert_eq!(ops, planned_ops);
    let count = |op: &str| file.nodes.iter().filter(|n| n.op_type == op).count();
    let pools = count("GlobalAveragePool") + count("GlobalMaxPool");
    assert_eq!(count("Flatten"), pools);
    assert_eq!(pools, usize::from(arch.head != Head::None));
    assert_eq!(count("Gemm"), usize::from(arch.head == Head::Classifier));
    assert_eq!(count("Concat"), arch.blocks.iter().sum::<usize>());
    let convs_per_layer = if arch.bottleneck.is_some() { 2 } else { 1 };
    assert_eq!(
        count("Conv"),
        1 + convs_per_layer * arch.blocks.iter().sum::<usize>() + arch.blocks.len() - 1
    );

    // Attributes, node by node against the plan.
    let initializers: BTreeMap<&str, &Tensor<'_>> = file
        .initializers
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let non_flatten = file.nodes.iter().filter(|n| n.op_type != "Flatten");
    for (node, plan) in non_flatten.zip(&planned) {
        let attr = |name: &str| node.attributes.get(name);
        match plan.kind {
            LayerKind::Conv2d {
                kernel,
                stride,
                padding,
            } => {
                assert_eq!(attr("kernel_shape"), Some(&ints(&[kernel, kernel])));
                assert_eq!(attr("strides"), Some(&ints(&[stride, stride])));
                assert_eq!(attr("pads"), Some(&ints(&[padding; 4])));
                assert_eq!(node.inputs.len(), 2, "Conv {} has no bias", node.name);
                let weight = initializers[node.inputs[1].as_str()];
                assert_eq!(weight.dims[0], plan.output[0], "{}: OIHW", node.name);
                assert_eq!(weight.dims[2..], [kernel, kernel], "{}: OIHW", node.name);
            }
            LayerKind::BatchNorm => {
                assert_eq!(attr("epsilon"), Some(&Attr::Float(arch.eps)));
                assert_eq!(node.inputs.len(), 5);
            }
            LayerKind::MaxPool {
                kernel,
                stride,
                padding,
            } => {
                assert_eq!(attr("kernel_shape"), Some(&ints(&[kernel, kernel])));
                assert_eq!(attr("strides"), Some(&ints(&[stride, stride])));
                assert_eq!(attr("pads"), Some(&ints(&[padding; 4])));
            }
            LayerKind::AvgPool { kernel } => {
                assert_eq!(attr("kernel_shape"), Some(&ints(&[kernel, kernel])));
                assert_eq!(attr("strides"), Some(&ints(&[kernel, kernel])));
                assert!(attr("pads").is_none() && attr("ceil_mode").is_none());
            }
            LayerKind::Concat => {
                assert_eq!(attr("axis"), Some(&Attr::Int(1)));
                assert_eq!(node.inputs.len(), 2);
            }
            LayerKind::Linear => {
                assert_eq!(attr("transB"), Some(&Attr::Int(1)));
                assert_eq!(node.inputs.len(), 3);
            }
            _ => {}
        }
    }

    // A well-formed graph: topologically sorted, each value defined once, every
    // initializer used, the last node producing the output.
    let mut defined: HashSet<&str> = initializers.keys().copied().collect();
    assert_eq!(
        defined.len(),
        file.initializers.len(),
        "initializer names are unique"
    );
    defined.insert("input");
    let mut used = HashSet::new();
    for node in &file.nodes {
        for input in &node.inputs {
            assert!(
                defined.contains(input.as_str()),
                "{} reads undefined {input}",
                node.name
            );
            used.insert(input.as_str());
        }
        assert_eq!(node.outputs.len(), 1, "{}", node.name);
        assert!(
            defined.insert(&node.outputs[0]),
            "{} is defined twice",
            node.outputs[0]
        );
    }
    assert_eq!(file.nodes.last().unwrap().outputs, ["output"]);
    assert!(
        initializers.keys().all(|k| used.contains(k)),
        "an initializer is unused"
    );

    // Initializers: one per conv, four per BatchNorm, two for the classifier; every
    // parameter and running statistic; float32 raw data.
    let planned_count =
        |kind: fn(&LayerKind) -> bool| planned.iter().filter(|l| kind(&l.kind)).count();
    let convs = planned_count(|k| matches!(k, LayerKind::Conv2d { .. }));
    let norms = planned_count(|k| *k == LayerKind::BatchNorm);
    let linears = planned_count(|k| *k == LayerKind::Linear);
    assert_eq!(file.initializers.len(), convs + 4 * norms + 2 * linears);
    let mut elements = 0u64;
    for t in &file.initializers {
        assert_eq!(t.data_type, 1, "{} is float32", t.name);
        let n: usize = t.dims.iter().product();
        assert_eq!(t.raw.len(), 4 * n, "{}: raw_data length", t.name);
        elements += n as u64;
    }
    assert_eq!(elements, expected.params + expected.buffers);

    // …and they are exactly the tensors `save_safetensors` writes (torchvision keys,
    // OIHW convs, (out, in) classifier), bit for bit.
    let saved = SafeTensors::deserialize(&expected.safetensors).unwrap();
    let keys: BTreeSet<String> = saved
        .names()
        .into_iter()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .map(str::to_string)
        .collect();
    let names: BTreeSet<String> = initializers.keys().map(|k| k.to_string()).collect();
    assert_eq!(names, keys);
    for (name, t) in &initializers {
        let view = saved.tensor(name).unwrap();
        assert_eq!(view.shape(), t.dims.as_slice(), "{name}");
        assert_eq!(view.data(), t.raw, "{name}");
    }
}

/// Sets every BatchNorm statistic and classifier bias to varied values, so the weights
/// the export carries are all distinguishable (fresh models have identity BatchNorms).
fn randomise<M: Model>(model: &mut M) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32 // U[0, 1)
    };
    model.visit_layers_mut(&mut |_, layer| match layer {
        LayerMut::BatchNorm(bn) => {
            bn.gamma_mut().mapv_inplace(|_| 0.5 + next());
            bn.beta_mut().mapv_inplace(|_| 0.2 * next() - 0.1);
            bn.running_mean_mut().mapv_inplace(|_| 0.2 * next() - 0.1);
            bn.running_var_mut().mapv_inplace(|_| 0.5 + next());
        }
        LayerMut::Linear(linear) => linear.bias_mut().mapv_inplace(|_| 0.2 * next() - 0.1),
        LayerMut::Conv(_) => {}
    });
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn init<M: Model>(init: fn(u64) -> M) -> M {
    let mut model = init(7);
    randomise(&mut model);
    model
}

#[test]
fn torchvision_layout_with_a_classifier() {
    let model = Small::load_safetensors(fixture("torchvision_small.safetensors")).unwrap();
    check_structure(&model, expected!(Small, model));
}

#[test]
fn full_size_densenet121() {
    let model = DenseNet121::init(0);
    check_structure(&model, expected!(DenseNet121, model));
}

#[test]
fn cifar_stems_with_and_without_bottlenecks() {
    let model = CifarBC::load_safetensors(fixture("cifar_bc.safetensors")).unwrap();
    check_structure(&model, expected!(CifarBC, model));
    let model = init(CifarPlain::init);
    check_structure(&model, expected!(CifarPlain, model));
}

#[test]
fn keras_epsilon_is_kept() {
    let model = KerasSmall::load_safetensors(fixture("keras_small.safetensors")).unwrap();
    check_structure(&model, expected!(KerasSmall, model));
}

#[test]
fn feature_heads() {
    let model = init(SmallAvg::init);
    check_structure(&model, expected!(SmallAvg, model));
    let model = init(SmallMax::init);
    check_structure(&model, expected!(SmallMax, model));
    let model = init(SmallFeatures::init);
    check_structure(&model, expected!(SmallFeatures, model));
    assert_eq!(SmallFeatures::OUTPUT.len(), 3);
}

#[test]
fn save_file_writes_to_bytes() {
    let model = init(CifarPlain::init);
    let path = std::env::temp_dir().join(format!("densenet-onnx-{}.onnx", std::process::id()));
    model.to_onnx(&path).unwrap();
    let written = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(written, onnx::to_bytes(&model));
    // Deterministic: the same model gives the same bytes.
    assert_eq!(written, onnx::to_bytes(&model.clone()));
}

// ---------------------------------------------------------------------------------------
// Files for tools/check_onnx.py.
// ---------------------------------------------------------------------------------------

/// The `input` and `output` of an `.io.safetensors` file.
fn read_io(path: &Path) -> (Array4<f32>, ArrayD<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let read = |key: &str| {
        let view = file.tensor(key).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        ArrayD::from_shape_vec(view.shape(), values).unwrap()
    };
    let x = read("input").into_dimensionality().unwrap();
    (x, read("output"))
}

/// A fixture's images, then mirrored copies of the first (left to right, then top to
/// bottom) up to a batch of three.
fn three_images(fixture: &Array4<f32>) -> Array4<f32> {
    let first = fixture.slice(s![0..1, .., .., ..]);
    let extra = [
        first.slice(s![.., .., .., ..;-1]),
        first.slice(s![.., .., ..;-1, ..]),
    ];
    let mut views = vec![fixture.view()];
    views.extend(
        extra
            .into_iter()
            .take(3usize.saturating_sub(fixture.dim().0)),
    );
    densenet::ndarray::concatenate(Axis(0), &views).unwrap()
}

/// A deterministic batch of three images in [-2, 2).
fn pattern_input(input: [usize; 3]) -> Array4<f32> {
    let [c, h, w] = input;
    let mut i = 0u64;
    Array4::from_shape_simple_fn((3, c, h, w), || {
        i += 1;
        ((i * 2_654_435_761 % 4093) as f32 / 4093.0) * 4.0 - 2.0
    })
}

/// Writes `DIR/name.onnx` and `DIR/name.io.safetensors`: `input` (three images),
/// `ours_batch2` and `ours_batch3` (this crate's outputs on the first two and on all
/// three), and `reference` (a framework's output on the first one or two) when there
/// is one.
fn write_case<M: Model>(
    dir: &Path,
    name: &str,
    model: &M,
    forward: impl Fn(ArrayView4<'_, f32>) -> ArrayD<f32>,
    input: Array4<f32>,
    reference: Option<(ArrayD<f32>, &str)>,
) {
    onnx::save_file(model, &dir.join(format!("{name}.onnx"))).unwrap();
    let ours2 = forward(input.slice(s![0..2, .., .., ..]));
    let ours3 = forward(input.view());
    let mut tensors: Vec<(&str, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut push = |key, array: ArrayD<f32>| {
        let bytes = array.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((key, array.shape().to_vec(), bytes));
    };
    push("input", input.into_dyn());
    push("ours_batch2", ours2);
    push("ours_batch3", ours3);
    let mut metadata = std::collections::HashMap::new();
    if let Some((output, source)) = reference {
        push("reference", output);
        metadata.insert("reference".to_string(), source.to_string());
    }
    let views = tensors.iter().map(|(key, shape, bytes)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .unwrap();
        (*key, view)
    });
    let bytes = safetensors::serialize(views, Some(metadata)).unwrap();
    std::fs::write(dir.join(format!("{name}.io.safetensors")), bytes).unwrap();
}

/// With `DENSENET_ONNX_OUT=DIR`, writes the files `tools/check_onnx.py DIR` checks with
/// ONNX Runtime; otherwise does nothing.
#[test]
fn writes_files_for_onnx_runtime_when_asked() {
    let Some(dir) = std::env::var_os("DENSENET_ONNX_OUT") else {
        eprintln!("set DENSENET_ONNX_OUT=DIR to write files for tools/check_onnx.py");
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();

    // `case!(name, model, input, reference)`: one model's files.
    macro_rules! case {
        ($name:literal, $model:expr, $input:expr, $reference:expr) => {{
            let model = $model;
            let forward = |x: ArrayView4<'_, f32>| model.forward(x).unwrap().into_dyn();
            write_case(&dir, $name, &model, forward, $input, $reference);
        }};
    }
    // A model loaded from a framework fixture, run on its images (and mirrored copies).
    macro_rules! fixture_case {
        ($name:literal, $model:ty, $framework:literal, $weights:expr, $io:expr) => {{
            let (x, y) = read_io(&$io);
            let file = $io.file_name().unwrap().to_string_lossy().into_owned();
            let source = format!("{} ({file})", $framework);
            let model = <$model>::load_safetensors($weights).unwrap();
            case!($name, model, three_images(&x), Some((y, source.as_str())));
        }};
    }

    fixture_case!(
        "torchvision_small",
        Small,
        "torchvision 0.29",
        fixture("torchvision_small.safetensors"),
        fixture("torchvision_small.io.safetensors")
    );
    fixture_case!(
        "cifar_bc",
        CifarBC,
        "torch 2.15",
        fixture("cifar_bc.safetensors"),
        fixture("cifar_bc.io.safetensors")
    );
    fixture_case!(
        "keras_small",
        KerasSmall,
        "Keras 3.15",
        fixture("keras_small.safetensors"),
        fixture("keras_small.io.safetensors")
    );
    {
        // The run-time model of the same spec and weights: the same graph.
        let (x, y) = read_io(&fixture("torchvision_small.io.safetensors"));
        let weights = fixture("torchvision_small.safetensors");
        let model = DynamicModel::load_safetensors(Small::ARCHITECTURE, weights, Naming::Auto);
        let reference = Some((y, "torchvision 0.29 (torchvision_small.io.safetensors)"));
        case!("dynamic_small", model.unwrap(), three_images(&x), reference);
    }
    case!(
        "cifar_plain",
        init(CifarPlain::init),
        pattern_input(CifarPlain::INPUT),
        None
    );
    case!(
        "head_avg",
        init(SmallAvg::init),
        pattern_input(SmallAvg::INPUT),
        None
    );
    case!(
        "head_max",
        init(SmallMax::init),
        pattern_input(SmallMax::INPUT),
        None
    );
    case!(
        "head_none",
        init(SmallFeatures::init),
        pattern_input(SmallFeatures::INPUT),
        None
    );

    // The full-size DenseNet-121 of `tools/make_fixtures.py --large DIR`, if asked.
    if let Some(large) = std::env::var_os("DENSENET_LARGE_FIXTURES") {
        let large = PathBuf::from(large);
        fixture_case!(
            "densenet121",
            DenseNet121,
            "torchvision 0.29",
            large.join("densenet121.safetensors"),
            large.join("densenet121.io.safetensors")
        );
    }

    eprintln!(
        "wrote ONNX files to {}; check with tools/check_onnx.py",
        dir.display()
    );
}
