//! A minimal builder for ONNX graphs: named values, initializers and nodes, encoded as a
//! `ModelProto` with the opsets this project uses.

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto, tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use prost::Message;
use std::collections::HashSet;

/// ONNX IR version written (ORT 1.31 reads up to 11).
const IR_VERSION: i64 = 10;
/// Opset of the default ONNX domain.
const ONNX_OPSET: i64 = 21;
/// Domain of ONNX Runtime's contrib operators (MatMulNBits, SkipSimplifiedLayerNormalization).
pub const MS_DOMAIN: &str = "com.microsoft";

/// Where an external initializer's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalData {
    /// File name, relative to the graph file's directory.
    pub location: String,
    /// Byte range in that file.
    pub range: std::ops::Range<usize>,
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(&'static str, i64),
    Float(&'static str, f32),
    Ints(&'static str, Vec<i64>),
}

/// Builds one graph. Value names are unique; `fresh` makes new ones.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: HashSet<String>,
    counter: usize,
    /// Operator domains imported besides the default and [`MS_DOMAIN`] (custom operators).
    domains: Vec<String>,
}

impl GraphBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        GraphBuilder {
            name: name.into(),
            ..Default::default()
        }
    }

    /// A new unique value name starting with `stem`.
    pub fn fresh(&mut self, stem: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("{stem}_{}", self.counter);
            if self.names.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Declares an f32 graph input.
    pub fn input_f32(&mut self, name: &str, dims: &[Dim]) -> String {
        self.names.insert(name.to_string());
        self.inputs.push(value_info(name, DataType::Float, dims));
        name.to_string()
    }

    /// Declares an int64 graph input (token ids, masks).
    pub fn input_i64(&mut self, name: &str, dims: &[Dim]) -> String {
        self.names.insert(name.to_string());
        self.inputs.push(value_info(name, DataType::Int64, dims));
        name.to_string()
    }

    /// Declares `value` as an f32 graph output named `name` (an Identity if the names differ).
    pub fn output_f32(&mut self, value: &str, name: &str, dims: &[Dim]) {
        if value != name {
            self.names.insert(name.to_string());
            self.node("Identity", "", &[value], &[name], vec![]);
        }
        self.outputs.push(value_info(name, DataType::Float, dims));
    }

    /// Adds an f32 initializer.
    pub fn init_f32(&mut self, stem: &str, dims: &[i64], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(stem, dims, DataType::Float, raw)
    }

    /// Adds a uint8 initializer.
    pub fn init_u8(&mut self, stem: &str, dims: &[i64], data: Vec<u8>) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        self.init_raw(stem, dims, DataType::Uint8, data)
    }

    /// Adds an int64 initializer.
    pub fn init_i64(&mut self, stem: &str, dims: &[i64], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(stem, dims, DataType::Int64, raw)
    }

    fn init_raw(&mut self, stem: &str, dims: &[i64], ty: DataType, raw: Vec<u8>) -> String {
        let name = self.fresh(stem);
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: ty as i32,
            name: name.clone(),
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// Adds an initializer whose bytes are `data.range` of the file `data.location` (relative
    /// to the directory the graph file will be in): ONNX external data, read by ONNX Runtime
    /// when the session is made from the graph's file.
    pub fn init_external(
        &mut self,
        stem: &str,
        dims: &[i64],
        ty: DataType,
        data: &ExternalData,
    ) -> String {
        let name = self.fresh(stem);
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.into(),
            value,
        };
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: ty as i32,
            name: name.clone(),
            external_data: vec![
                entry("location", data.location.clone()),
                entry("offset", data.range.start.to_string()),
                entry("length", data.range.len().to_string()),
            ],
            data_location: tensor_proto::DataLocation::External as i32,
            ..Default::default()
        });
        name
    }

    /// Adds a node with explicit output names ("" for an omitted optional input or output).
    pub fn node(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<Attr>,
    ) {
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name,
            op_type: op.to_string(),
            attribute: attrs.into_iter().map(attribute).collect(),
            domain: domain.to_string(),
        });
    }

    /// Adds a single-output node and returns the name of its output.
    pub fn op(&mut self, op: &str, domain: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node(op, domain, inputs, &[&out], attrs);
        out
    }

    /// Imports a custom operator `domain` (version 1), for nodes of operators the session
    /// registers itself.
    pub fn import_domain(&mut self, domain: &str) {
        self.domains.push(domain.to_string());
    }

    /// Number of nodes so far.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Encodes the graph as a serialized `ModelProto`.
    pub fn finish(self, doc: &str) -> Vec<u8> {
        let model = ModelProto {
            ir_version: IR_VERSION,
            producer_name: "seam-edge".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: doc.into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                doc_string: String::new(),
                input: self.inputs,
                output: self.outputs,
            }),
            opset_import: vec![
                OperatorSetIdProto {
                    domain: String::new(),
                    version: ONNX_OPSET,
                },
                OperatorSetIdProto {
                    domain: MS_DOMAIN.into(),
                    version: 1,
                },
            ]
            .into_iter()
            .chain(
                self.domains
                    .into_iter()
                    .map(|domain| OperatorSetIdProto { domain, version: 1 }),
            )
            .collect(),
            metadata_props: vec![StringStringEntryProto {
                key: "producer".into(),
                value: "seam".into(),
            }],
        };
        model.encode_to_vec()
    }
}

fn value_info(name: &str, ty: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Dim::Named(n) => tensor_shape_proto::dimension::Value::DimParam(n.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: ty as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
    }
}

fn attribute(a: Attr) -> AttributeProto {
    let mut p = AttributeProto::default();
    match a {
        Attr::Int(n, v) => {
            p.name = n.into();
            p.i = v;
            p.r#type = AttributeType::Int as i32;
        }
        Attr::Float(n, v) => {
            p.name = n.into();
            p.f = v;
            p.r#type = AttributeType::Float as i32;
        }
        Attr::Ints(n, v) => {
            p.name = n.into();
            p.ints = v;
            p.r#type = AttributeType::Ints as i32;
        }
    }
    p
}
