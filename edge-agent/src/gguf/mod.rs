//! GGUF (v2/v3) model files: metadata, tensor directory and tensor bytes.
//!
//! The whole file is read into an owned `Vec<u8>` (no mmap, no unsafe). Every length and
//! count taken from the file is checked against the bytes that remain before anything is
//! allocated, so truncated or corrupt input yields a [`GgufError`], never a panic or an OOM.
//! Parsing lives in `reader`, block formats in [`quant`], llama hyperparameters in [`hparams`].

pub mod hparams;
pub mod kquant;
pub mod quant;
mod reader;
#[cfg(test)]
mod reader_tests;
mod value;

#[cfg(any(test, feature = "test-util"))]
pub use reader::testutil;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use value::{GgmlType, Value};

/// Everything that can go wrong reading a GGUF file or interpreting its contents.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read from disk.
    #[error("failed to read GGUF file {path}: {source}")]
    Io {
        /// Path that was opened.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic bytes are {0:02x?}, expected \"GGUF\"")]
    BadMagic([u8; 4]),
    /// Only versions 2 and 3 are read (v1 used 32-bit lengths).
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// The file ends before a field it declares.
    #[error("truncated GGUF: needed {needed} bytes at offset {offset}")]
    Truncated {
        /// Bytes the field needs.
        needed: u64,
        /// Offset where the field starts.
        offset: u64,
    },
    /// A structural inconsistency (bad type id, duplicate key, misaligned offset, ...).
    #[error("corrupt GGUF: {0}")]
    Corrupt(String),
    /// A required metadata key is absent.
    #[error("missing GGUF metadata key {0}")]
    MissingKey(String),
    /// A metadata key holds a value of another type.
    #[error("GGUF metadata key {key} has type {found}, expected {expected}")]
    WrongType {
        /// Metadata key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds.
        found: &'static str,
    },
    /// A metadata value has the right type but an unusable value (out of range, ...).
    #[error("GGUF metadata key {key}: {reason}")]
    BadValue {
        /// Metadata key.
        key: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// A required tensor is absent.
    #[error("missing tensor {0}")]
    MissingTensor(String),
    /// A tensor is stored in a type this code cannot decode.
    #[error("unsupported tensor type {ty} for {name}")]
    UnsupportedTensorType {
        /// Storage type.
        ty: GgmlType,
        /// Tensor name.
        name: String,
    },
    /// A block format that [`quant::dequantize`] does not decode.
    #[error("unsupported tensor type {0} for dequantization")]
    UnsupportedType(GgmlType),
    /// A tensor whose shape, size or byte range is inconsistent.
    #[error("tensor {name}: {reason}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Byte buffer does not hold a whole number of blocks, or disagrees with the element count.
    #[error("bad {ty} data: {reason}")]
    BadBlockData {
        /// Storage type.
        ty: GgmlType,
        /// What is wrong.
        reason: String,
    },
    /// `general.architecture` is not one this code implements.
    #[error("unsupported architecture {0:?} (supported: \"llama\", \"qwen2\", \"gemma3\")")]
    UnsupportedArchitecture(String),
    /// Hyperparameters that contradict each other or the tensors.
    #[error("invalid hyperparameters: {0}")]
    BadHparams(String),
    /// The vocabulary cannot be turned into a tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Result alias for this module.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` (ne0) is the fastest-varying (row length).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of dims; checked at parse time to fit in i64;
    /// saturates at `u64::MAX` for hand-built infos).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Size of the data in bytes, or `None` for types of unknown layout (or a size that
    /// overflows u64, which no readable file can hold).
    pub fn byte_size(&self) -> Option<u64> {
        let (block_elems, block_bytes) = self.ty.block_layout()?;
        (self.n_elements() / block_elems as u64).checked_mul(block_bytes as u64)
    }
}

/// A parsed GGUF file that owns its bytes.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// All metadata key/value pairs.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor directory in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of every tensor offset.
    pub alignment: u64,
    /// Absolute offset of the data section in `bytes`.
    pub data_offset: usize,
    bytes: Vec<u8>,
}

impl GgufFile {
    /// Reads and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(bytes)
    }

    /// Parses a GGUF file held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        reader::parse(bytes)
    }

    /// The directory entry of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// The raw bytes of a tensor, checked against its type, element count and the file size.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let bad = |reason: String| GgufError::BadTensor {
            name: info.name.clone(),
            reason,
        };
        let (block_elems, _) =
            info.ty
                .block_layout()
                .ok_or_else(|| GgufError::UnsupportedTensorType {
                    ty: info.ty,
                    name: info.name.clone(),
                })?;
        let n = info.n_elements();
        if info
            .dims
            .first()
            .is_some_and(|ne0| !ne0.is_multiple_of(block_elems as u64))
        {
            return Err(bad(format!(
                "row length {} is not a multiple of the {} block size {block_elems}",
                info.dims[0], info.ty
            )));
        }
        let size = info.byte_size();
        let start = (self.data_offset as u64).checked_add(info.offset);
        let end = start.zip(size).and_then(|(s, size)| s.checked_add(size));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.bytes.len() as u64 => {
                Ok(&self.bytes[s as usize..e as usize])
            }
            _ => Err(bad(format!(
                "{n} elements of {} need {} bytes at data offset {}, but the file has {} bytes",
                info.ty,
                size.map_or("more than 2^64".to_string(), |s| s.to_string()),
                info.offset,
                self.bytes.len()
            ))),
        }
    }

    /// Dequantizes tensor `name` to f32 (errors name the tensor).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor(name)?;
        let bytes = self.tensor_bytes(info)?;
        quant::dequantize(info.ty, bytes, info.n_elements() as usize).map_err(|e| match e {
            GgufError::UnsupportedType(ty) => GgufError::UnsupportedTensorType {
                ty,
                name: name.to_string(),
            },
            other => other,
        })
    }

    /// The raw metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T> {
        let v = self.require(key)?;
        let wide = v.as_i128().ok_or_else(|| wrong(key, expected, v))?;
        T::try_from(wide).map_err(|_| GgufError::BadValue {
            key: key.to_string(),
            reason: format!("value {wide} does not fit in {expected}"),
        })
    }

    /// An unsigned 32-bit integer (any integer kind whose value fits is accepted).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.int(key, "u32")
    }

    /// A signed 32-bit integer (any integer kind whose value fits is accepted).
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.int(key, "i32")
    }

    /// An unsigned 64-bit integer (any non-negative integer kind is accepted).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.int(key, "u64")
    }

    /// `Some(get_u32(key))` when the key is present, `None` when absent.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|_| self.get_u32(key)).transpose()
    }

    /// A float (f32, or f64 narrowed to f32).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => Err(wrong(key, "f32", v)),
        }
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            v => Err(wrong(key, "string", v)),
        }
    }

    /// A bool, or `default` when the key is absent (a value of another type is an error).
    pub fn get_bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(wrong(key, "bool", v)),
        }
    }

    fn array(&self, key: &str, expected: &'static str) -> Result<&[Value]> {
        match self.require(key)? {
            Value::Array(items) => Ok(items),
            v => Err(wrong(key, expected, v)),
        }
    }

    /// An array of strings.
    pub fn get_string_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key, "array of string")?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(wrong(key, "array of string", v)),
            })
            .collect()
    }

    /// An array of integers that each fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.int_array(key, "array of i32")
    }

    /// An array of integers that each fit in u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.int_array(key, "array of u32")
    }

    /// An array of floats (f32, or f64 narrowed).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array(key, "array of f32")?
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                v => Err(wrong(key, "array of f32", v)),
            })
            .collect()
    }

    fn int_array<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<Vec<T>> {
        self.array(key, expected)?
            .iter()
            .map(|v| {
                let wide = v.as_i128().ok_or_else(|| wrong(key, expected, v))?;
                T::try_from(wide).map_err(|_| GgufError::BadValue {
                    key: key.to_string(),
                    reason: format!("element {wide} out of range for {expected}"),
                })
            })
            .collect()
    }
}

fn wrong(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_name(),
    }
}
