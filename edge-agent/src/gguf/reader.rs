//! Bounds-checked parser for the GGUF v2/v3 header, metadata and tensor directory.

use std::collections::BTreeMap;

use super::{GgmlType, GgufError, GgufFile, Result, TensorInfo, Value};

/// Deepest nesting of arrays accepted (real files use 1); bounds recursion on hostile input.
const MAX_ARRAY_DEPTH: usize = 4;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let truncated = GgufError::Truncated {
            needed: n,
            offset: self.pos as u64,
        };
        let n = usize::try_from(n).map_err(|_| truncated)?;
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                needed: n as u64,
                offset: self.pos as u64,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Checks that `count` items of at least `min_size` bytes each can still be present.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<usize> {
        let needed = count.checked_mul(min_size).ok_or_else(|| {
            GgufError::Corrupt(format!(
                "{what} count {count} at offset {} overflows",
                self.pos
            ))
        })?;
        if needed > self.remaining() as u64 {
            return Err(GgufError::Truncated {
                needed,
                offset: self.pos as u64,
            });
        }
        Ok(count as usize)
    }

    fn string(&mut self) -> Result<String> {
        let start = self.pos;
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::Corrupt(format!("string at offset {start} is not valid UTF-8")))
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::Corrupt(format!(
                        "bool byte {b} at offset {}",
                        self.pos - 1
                    )));
                }
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Corrupt(format!(
                        "arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {}",
                        self.pos
                    )));
                }
                let elem_kind = self.u32()?;
                let count = self.u64()?;
                let count =
                    self.check_count(count, min_value_size(elem_kind, self.pos)?, "array")?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem_kind, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(GgufError::Corrupt(format!(
                    "unknown metadata value kind {other} at offset {}",
                    self.pos
                )));
            }
        })
    }
}

/// Smallest encoding of one value of `kind`; errors on unknown kinds.
fn min_value_size(kind: u32, pos: usize) -> Result<u64> {
    Ok(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        other => {
            return Err(GgufError::Corrupt(format!(
                "unknown array element kind {other} at offset {pos}"
            )));
        }
    })
}

/// Parses a whole GGUF file; see [`GgufFile::parse`].
pub(super) fn parse(bytes: Vec<u8>) -> Result<GgufFile> {
    let mut c = Cursor {
        buf: &bytes,
        pos: 0,
    };
    let magic: [u8; 4] = c.array()?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic(magic));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    // key length (8) + kind (4) + smallest value (1)
    let n_kv = c.check_count(n_kv, 13, "metadata")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key_at = c.pos;
        let key = c.string()?;
        let kind = c.u32()?;
        let value = c.value(kind, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::Corrupt(format!(
                "duplicate metadata key {key} at offset {key_at}"
            )));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i128() {
            Some(a) if a > 0 && a <= 1 << 30 && (a as u64).is_power_of_two() => a as u64,
            _ => {
                return Err(GgufError::BadValue {
                    key: "general.alignment".into(),
                    reason: format!("{v:?} is not a power of two in 1..=2^30"),
                });
            }
        },
    };
    // name length (8) + n_dims (4) + type (4) + offset (8)
    let n_tensors = c.check_count(n_tensors, 24, "tensor")?;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..n_tensors {
        let at = c.pos;
        let name = c.string()?;
        let n_dims = c.u32()?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::Corrupt(format!(
                "tensor {name} at offset {at} has {n_dims} dims (max {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64()?);
        }
        let n_elements = dims.iter().try_fold(1u64, |acc, &d| {
            acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64)
        });
        if n_elements.is_none() {
            return Err(GgufError::Corrupt(format!(
                "tensor {name}: element count of dims {dims:?} overflows"
            )));
        }
        let ty = GgmlType::from_id(c.u32()?);
        let offset = c.u64()?;
        if !offset.is_multiple_of(alignment) {
            return Err(GgufError::Corrupt(format!(
                "tensor {name}: offset {offset} is not a multiple of alignment {alignment}"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(GgufError::Corrupt(format!("duplicate tensor name {name}")));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
        });
    }
    let header_end = c.pos as u64;
    let aligned = header_end.div_ceil(alignment) * alignment;
    let data_offset = if tensors.is_empty() {
        aligned.min(bytes.len() as u64)
    } else {
        aligned
    };
    if data_offset > bytes.len() as u64 {
        return Err(GgufError::Truncated {
            needed: data_offset - header_end,
            offset: header_end,
        });
    }
    let file = GgufFile {
        version,
        metadata,
        tensors,
        alignment,
        data_offset: data_offset as usize,
        bytes,
    };
    for info in file
        .tensors
        .iter()
        .filter(|t| t.ty.block_layout().is_some())
    {
        file.tensor_bytes(info)?;
    }
    Ok(file)
}

/// A GGUF writer for tests and fuzz seeds, and the path of the real model file.
#[cfg(any(test, feature = "test-util"))]
pub mod testutil {
    use super::super::{GgmlType, Value};

    /// Path of the real SmolLM2 GGUF: `$SEAM_GGUF`, else this checkout's asset.
    pub fn real_gguf_path() -> String {
        std::env::var("SEAM_GGUF").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.seam/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
            .into()
        })
    }

    /// Builds GGUF v3 bytes from metadata and `(name, dims, type, data)` tensors.
    #[derive(Default)]
    pub struct Writer {
        pub kvs: Vec<(String, Value)>,
        pub tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
    }

    fn kind(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.extend(x.to_le_bytes()),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => put_str(out, s),
            Value::Array(items) => {
                out.extend(items.first().map_or(0, kind).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| put_value(out, i));
            }
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    impl Writer {
        /// Adds a metadata pair.
        pub fn kv(mut self, key: &str, v: Value) -> Self {
            self.kvs.push((key.into(), v));
            self
        }

        /// Adds a tensor with its raw data.
        pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
            self.tensors.push((name.into(), dims.to_vec(), ty, data));
            self
        }

        /// Serializes with 32-byte alignment.
        pub fn to_bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.kvs.len() as u64).to_le_bytes());
            for (k, v) in &self.kvs {
                put_str(&mut out, k);
                out.extend(kind(v).to_le_bytes());
                put_value(&mut out, v);
            }
            let mut offset = 0u64;
            for (name, dims, ty, data) in &self.tensors {
                put_str(&mut out, name);
                out.extend((dims.len() as u32).to_le_bytes());
                dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
                out.extend(ty.id().to_le_bytes());
                out.extend(offset.to_le_bytes());
                offset += (data.len() as u64).div_ceil(32) * 32;
            }
            for (_, _, _, data) in &self.tensors {
                out.resize(out.len().div_ceil(32) * 32, 0);
                out.extend(data);
            }
            out
        }
    }
}
