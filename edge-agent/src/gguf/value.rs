//! GGUF metadata values and ggml tensor storage types.

use std::fmt;

/// A metadata value of any GGUF kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Kind 0.
    U8(u8),
    /// Kind 1.
    I8(i8),
    /// Kind 2.
    U16(u16),
    /// Kind 3.
    I16(i16),
    /// Kind 4.
    U32(u32),
    /// Kind 5.
    I32(i32),
    /// Kind 6.
    F32(f32),
    /// Kind 7.
    Bool(bool),
    /// Kind 8 (UTF-8).
    String(String),
    /// Kind 9: elements all of one kind (nesting is allowed by the format).
    Array(Vec<Value>),
    /// Kind 10.
    U64(u64),
    /// Kind 11.
    I64(i64),
    /// Kind 12.
    F64(f64),
}

impl Value {
    /// Name of the kind, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// The value widened to i128 if it is any integer kind (lossless for all of them).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(x) => x.into(),
            Value::I8(x) => x.into(),
            Value::U16(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::U32(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::U64(x) => x.into(),
            Value::I64(x) => x.into(),
            _ => return None,
        })
    }
}

/// Storage type of a tensor (ggml type id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// id 0.
    F32,
    /// id 1.
    F16,
    /// id 2: 32-element blocks, f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// id 3: 32-element blocks, f16 scale and min, 4-bit values.
    Q4_1,
    /// id 6.
    Q5_0,
    /// id 7.
    Q5_1,
    /// id 8: 32-element blocks, f16 scale, i8 values.
    Q8_0,
    /// id 10.
    Q2_K,
    /// id 11.
    Q3_K,
    /// id 12.
    Q4_K,
    /// id 13.
    Q5_K,
    /// id 14.
    Q6_K,
    /// id 30.
    BF16,
    /// Any other id; its layout is unknown, so its bytes cannot be located or decoded.
    Other(u32),
}

impl GgmlType {
    /// Maps a ggml type id.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The type named as [`fmt::Display`] writes it, in any case (`q8_0`, `Q6_K`, `bf16`).
    pub fn from_name(name: &str) -> Option<Self> {
        [0u32, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30]
            .into_iter()
            .map(Self::from_id)
            .find(|t| t.to_string().eq_ignore_ascii_case(name))
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// Every type with a known block layout (what [`GgmlType::block_layout`] describes).
    pub const BLOCK_TYPES: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// `(elements per block, bytes per block)`, or `None` for [`GgmlType::Other`].
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q2_K => (256, 84),
            Self::Q3_K => (256, 110),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
            Self::Other(_) => return None,
        })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(id) => write!(f, "ggml type {id}"),
            named => fmt::Debug::fmt(named, f),
        }
    }
}
