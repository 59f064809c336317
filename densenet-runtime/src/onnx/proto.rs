//! A protobuf encoder for the few ONNX messages the exporter writes.
//!
//! The wire format (<https://protobuf.dev/programming-guides/encoding/>): a message is a
//! sequence of fields, each a key `field_number << 3 | wire_type` written as a varint,
//! then the value: a varint (wire type 0: integers and enums), 4 little-endian bytes
//! (type 5: `float`), or a varint length and that many bytes (type 2: strings, bytes and
//! embedded messages). `onnx.proto` is proto2, so repeated integers are written
//! unpacked, one key per element, as its C++ and Python serialisers do; fields are
//! written in field-number order, so small messages come out byte-identical to
//! `onnx.helper`'s (the tests below check that).
//!
//! Field numbers are those of `onnx/onnx.proto` (ONNX 1.12+, IR version 8), quoted next
//! to each function.

/// Wire type of varint fields.
const VARINT: u32 = 0;
/// Wire type of length-delimited fields.
const LEN: u32 = 2;
/// Wire type of 32-bit fields.
const I32: u32 = 5;

/// `TensorProto.DataType.FLOAT`.
pub(super) const FLOAT: i64 = 1;

/// An encoded protobuf message body, built field by field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Message {
    bytes: Vec<u8>,
}

impl Message {
    /// An empty message.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// The encoded bytes.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Encoded length in bytes.
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.bytes.push(value as u8);
    }

    fn key(&mut self, field: u32, wire_type: u32) {
        self.varint(u64::from(field << 3 | wire_type));
    }

    /// An `int32`/`int64`/enum field. Negative values take ten bytes (two's complement),
    /// as protobuf specifies for `int64`.
    pub(super) fn int(&mut self, field: u32, value: i64) -> &mut Self {
        self.key(field, VARINT);
        self.varint(value as u64);
        self
    }

    /// A `float` field.
    pub(super) fn float(&mut self, field: u32, value: f32) -> &mut Self {
        self.key(field, I32);
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A `bytes` field.
    pub(super) fn bytes(&mut self, field: u32, value: &[u8]) -> &mut Self {
        self.key(field, LEN);
        self.varint(value.len() as u64);
        self.bytes.extend_from_slice(value);
        self
    }

    /// A `string` field.
    pub(super) fn string(&mut self, field: u32, value: &str) -> &mut Self {
        self.bytes(field, value.as_bytes())
    }

    /// An embedded message field.
    pub(super) fn message(&mut self, field: u32, value: &Message) -> &mut Self {
        self.bytes(field, &value.bytes)
    }

    /// An embedded message field whose body is the concatenation of `pieces`, each
    /// already one or more encoded fields. Large bodies (a graph and its weights) are
    /// thus copied once into the output, not once per level of nesting.
    pub(super) fn message_in_pieces(&mut self, field: u32, pieces: &[Message]) -> &mut Self {
        self.key(field, LEN);
        self.varint(pieces.iter().map(|p| p.len() as u64).sum());
        self.bytes.reserve(pieces.iter().map(Message::len).sum());
        for piece in pieces {
            self.bytes.extend_from_slice(&piece.bytes);
        }
        self
    }
}

/// The value of a node attribute.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Attribute {
    /// `AttributeType.INT`.
    Int(i64),
    /// `AttributeType.INTS`.
    Ints(Vec<i64>),
    /// `AttributeType.FLOAT`.
    Float(f32),
}

/// `AttributeProto`: `name = 1`, `f = 2`, `i = 3`, `ints = 8`, `type = 20`
/// (`AttributeType`: FLOAT 1, INT 2, INTS 7).
pub(super) fn attribute(name: &str, value: &Attribute) -> Message {
    let mut m = Message::new();
    m.string(1, name);
    let kind = match value {
        Attribute::Float(f) => {
            m.float(2, *f);
            1
        }
        Attribute::Int(i) => {
            m.int(3, *i);
            2
        }
        Attribute::Ints(ints) => {
            for &i in ints {
                m.int(8, i);
            }
            7
        }
    };
    m.int(20, kind);
    m
}

/// `NodeProto`: `input = 1`, `output = 2`, `name = 3`, `op_type = 4`, `attribute = 5`
/// (domain unset: the default ONNX operator set).
pub(super) fn node(
    name: &str,
    op_type: &str,
    inputs: &[String],
    outputs: &[String],
    attributes: &[(&str, Attribute)],
) -> Message {
    let mut m = Message::new();
    for input in inputs {
        m.string(1, input);
    }
    for output in outputs {
        m.string(2, output);
    }
    m.string(3, name).string(4, op_type);
    for (attr_name, value) in attributes {
        m.message(5, &attribute(attr_name, value));
    }
    m
}

/// A float32 `TensorProto` holding `values` as `raw_data`: `dims = 1`, `data_type = 2`,
/// `name = 8`, `raw_data = 9` (little-endian, as ONNX requires of `raw_data`).
pub(super) fn float_tensor(
    name: &str,
    dims: &[usize],
    values: impl IntoIterator<Item = f32>,
) -> Message {
    let raw: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
    debug_assert_eq!(raw.len(), 4 * dims.iter().product::<usize>());
    let mut m = Message::new();
    for &d in dims {
        m.int(1, d as i64);
    }
    m.int(2, FLOAT).string(8, name).bytes(9, &raw);
    m
}

/// One dimension of a tensor shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Dim {
    /// A fixed size (`dim_value`).
    Value(usize),
    /// A named, dynamic size (`dim_param`), e.g. the batch.
    Param(String),
}

/// `ValueInfoProto` of a float32 tensor: `name = 1`, `type = 2`, where `TypeProto`
/// has `tensor_type = 1`, `TypeProto.Tensor` has `elem_type = 1` and `shape = 2`,
/// `TensorShapeProto` has `dim = 1`, and a `Dimension` has `dim_value = 1` or
/// `dim_param = 2`.
pub(super) fn float_value_info(name: &str, dims: &[Dim]) -> Message {
    let mut shape = Message::new();
    for dim in dims {
        let mut d = Message::new();
        match dim {
            Dim::Value(v) => d.int(1, *v as i64),
            Dim::Param(p) => d.string(2, p),
        };
        shape.message(1, &d);
    }
    let mut tensor_type = Message::new();
    tensor_type.int(1, FLOAT).message(2, &shape);
    let mut type_proto = Message::new();
    type_proto.message(1, &tensor_type);
    let mut m = Message::new();
    m.string(1, name).message(2, &type_proto);
    m
}

/// `OperatorSetIdProto`: `domain = 1`, `version = 2`.
pub(super) fn operator_set(domain: &str, version: i64) -> Message {
    let mut m = Message::new();
    m.string(1, domain).int(2, version);
    m
}

/// `GraphProto` fields: `node = 1`, `name = 2`, `initializer = 5`, `input = 11`,
/// `output = 12`.
pub(super) mod graph {
    pub(in crate::onnx) const NODE: u32 = 1;
    pub(in crate::onnx) const NAME: u32 = 2;
    pub(in crate::onnx) const INITIALIZER: u32 = 5;
    pub(in crate::onnx) const INPUT: u32 = 11;
    pub(in crate::onnx) const OUTPUT: u32 = 12;
}

/// `ModelProto` fields: `ir_version = 1`, `producer_name = 2`, `producer_version = 3`,
/// `doc_string = 6`, `graph = 7`, `opset_import = 8`.
pub(super) mod model {
    pub(in crate::onnx) const IR_VERSION: u32 = 1;
    pub(in crate::onnx) const PRODUCER_NAME: u32 = 2;
    pub(in crate::onnx) const PRODUCER_VERSION: u32 = 3;
    pub(in crate::onnx) const DOC_STRING: u32 = 6;
    pub(in crate::onnx) const GRAPH: u32 = 7;
    pub(in crate::onnx) const OPSET_IMPORT: u32 = 8;
}

#[cfg(test)]
mod tests {
    //! Expected bytes are from the protobuf encoding guide, and from `onnx.helper`
    //! (onnx 1.23.2), e.g. `helper.make_attribute("epsilon", 1e-5).SerializeToString().hex()`.

    use super::*;

    fn hex(m: &Message) -> String {
        m.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn wire_format_matches_the_protobuf_guide() {
        // "A simple message": field 1 = 150 is 08 96 01; field 2 = "testing" is 12 07 ….
        assert_eq!(hex(Message::new().int(1, 150)), "089601");
        assert_eq!(
            hex(Message::new().string(2, "testing")),
            "120774657374696e67"
        );
        // Negative int64: ten bytes.
        assert_eq!(hex(Message::new().int(1, -2)), "08feffffffffffffffff01");
        assert_eq!(hex(Message::new().float(2, 1.0)), "150000803f");
    }

    #[test]
    fn pieces_equal_one_embedded_message() {
        let mut a = Message::new();
        a.int(1, 5);
        let mut b = Message::new();
        b.string(2, "x");
        let mut whole = Message::new();
        whole.int(1, 5).string(2, "x");
        assert_eq!(
            Message::new().message_in_pieces(7, &[a, b]),
            Message::new().message(7, &whole)
        );
    }

    #[test]
    fn onnx_messages_match_onnx_helper() {
        // helper.make_attribute("epsilon", 1e-5)
        assert_eq!(
            hex(&attribute("epsilon", &Attribute::Float(1e-5))),
            "0a07657073696c6f6e15acc52737a00101"
        );
        // helper.make_attribute("pads", [3, 3, 3, 3])
        assert_eq!(
            hex(&attribute("pads", &Attribute::Ints(vec![3, 3, 3, 3]))),
            "0a04706164734003400340034003a00107"
        );
        // helper.make_attribute("transB", 1)
        assert_eq!(
            hex(&attribute("transB", &Attribute::Int(1))),
            "0a067472616e73421801a00102"
        );
        // helper.make_operatorsetid("", 17)
        assert_eq!(hex(&operator_set("", 17)), "0a001011");
        // helper.make_tensor("w", TensorProto.FLOAT, [2, 1],
        //                    np.array([1.0, -2.0], np.float32).tobytes(), raw=True)
        assert_eq!(
            hex(&float_tensor("w", &[2, 1], [1.0, -2.0])),
            "0802080110014201774a080000803f000000c0"
        );
        // helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])
        let dims = [
            Dim::Param("N".into()),
            Dim::Value(3),
            Dim::Value(64),
            Dim::Value(64),
        ];
        assert_eq!(
            hex(&float_value_info("input", &dims)),
            "0a05696e70757412170a15080112110a0312014e0a0208030a0208400a020840"
        );
        // helper.make_node("Concat", ["a", "b"], ["c"], name="c", axis=1)
        let n = node(
            "c",
            "Concat",
            &["a".into(), "b".into()],
            &["c".into()],
            &[("axis", Attribute::Int(1))],
        );
        assert_eq!(
            hex(&n),
            "0a01610a01621201631a01632206436f6e6361742a0b0a04617869731801a00102"
        );
    }
}
