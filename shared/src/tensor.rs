//! The tensor codec of the wire (`seam.common.v1.Tensor`): f32, f16, and int8 with one scale per
//! row (f32) or per group of a row (f16 scales, f32 where a scale exceeds the f16 range).
//!
//! Encoding is total for finite input. Decoding is the only way in for outside bytes and checks
//! everything before use: a set dtype, a shape of known rank whose element count fits the limit
//! (no overflow), the expected row width, the exact data length, the number and values of the
//! scales, and that every decoded value is finite.

use crate::error::{Error, Result};
use crate::proto::common::{DType, Tensor};
use half::f16;
use std::fmt;
use std::str::FromStr;

/// How rows are put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireDtype {
    /// 4 bytes per element, exact.
    F32,
    /// 2 bytes per element (IEEE half, round to nearest).
    F16,
    /// 1 byte per element plus a scale per `group` elements of a row (f16; the last group of a
    /// row may be shorter) or, with `group == 0`, one f32 scale per row. Symmetric:
    /// `x ≈ q * scale`, `q` in `[-127, 127]`.
    Int8 { group: usize },
}

impl WireDtype {
    /// int8 with one scale per row.
    pub const INT8_ROW: WireDtype = WireDtype::Int8 { group: 0 };
    /// The default for hidden states: int8 with an f16 scale per 64 values. On SmolLM2-135M's
    /// 576-wide layer-8 states it keeps perplexity within 0.1% of local where one scale per row
    /// does not (a few outlier channels set the row's scale), at 594 bytes a row (0.258× f32).
    pub const DEFAULT: WireDtype = WireDtype::Int8 { group: 64 };

    /// Bytes of `rows × cols` elements on the wire (data and scales, without protobuf framing).
    pub fn payload_bytes(self, rows: usize, cols: usize) -> usize {
        match self {
            WireDtype::F32 => rows * cols * 4,
            WireDtype::F16 => rows * cols * 2,
            WireDtype::Int8 { group: 0 } => rows * cols + rows * 4,
            WireDtype::Int8 { group } => rows * cols + rows * cols.div_ceil(group) * 2,
        }
    }
}

impl fmt::Display for WireDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireDtype::F32 => f.write_str("f32"),
            WireDtype::F16 => f.write_str("f16"),
            WireDtype::Int8 { group: 0 } => f.write_str("int8"),
            WireDtype::Int8 { group } => write!(f, "int8/{group}"),
        }
    }
}

impl FromStr for WireDtype {
    type Err = Error;

    /// `f32`, `f16`, `int8` (a scale per row) or `int8/G` (a scale per `G` elements).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WireDtype::F32),
            "f16" => Ok(WireDtype::F16),
            "int8" => Ok(WireDtype::INT8_ROW),
            other => other
                .strip_prefix("int8/")
                .and_then(|g| g.parse::<usize>().ok())
                .filter(|&g| g > 0)
                .map(|group| WireDtype::Int8 { group })
                .ok_or_else(|| {
                    Error::TensorInvalid(format!(
                        "unknown wire dtype {other:?} (expected f32, f16, int8 or int8/GROUP)"
                    ))
                }),
        }
    }
}

/// Rows decoded from the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols` finite values, row-major.
    pub data: Vec<f32>,
}

/// Encodes `data` (`rows × cols`, row-major, finite) as a `[rows, cols]` tensor.
pub fn encode(data: &[f32], cols: usize, dtype: WireDtype) -> Result<Tensor> {
    if cols == 0 || data.is_empty() || !data.len().is_multiple_of(cols) {
        return Err(Error::TensorInvalid(format!(
            "{} values are not a whole, non-zero number of {cols}-wide rows",
            data.len()
        )));
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(Error::TensorInvalid(format!(
            "value {i} to encode is not finite"
        )));
    }
    let rows = data.len() / cols;
    let mut t = Tensor {
        shape: vec![rows as u64, cols as u64],
        ..Default::default()
    };
    match dtype {
        WireDtype::F32 => {
            t.dtype = DType::F32 as i32;
            t.data = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
        WireDtype::F16 => {
            t.dtype = DType::F16 as i32;
            t.data = data
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect();
        }
        WireDtype::Int8 { group } => {
            t.dtype = DType::Int8 as i32;
            t.group_size = group as u32;
            let g = if group == 0 { cols } else { group };
            let groups = || data.chunks_exact(cols).flat_map(move |row| row.chunks(g));
            let exact: Vec<f32> = groups().map(exact_scale).collect();
            // Per group the scales go as f16, unless one is beyond the f16 range; per row as f32.
            let half = (group != 0)
                .then(|| {
                    exact
                        .iter()
                        .map(|&s| half_scale(s))
                        .collect::<Option<Vec<_>>>()
                })
                .flatten();
            let scales: Vec<f32> = match &half {
                Some(h) => h.iter().map(|h| h.to_f32()).collect(),
                None => exact,
            };
            let mut q = vec![0u8; data.len()];
            let out = q.chunks_exact_mut(cols).flat_map(|row| row.chunks_mut(g));
            for ((x, q), &scale) in groups().zip(out).zip(&scales) {
                quantize(x, q, scale);
            }
            match half {
                Some(h) => t.half_scales = h.iter().flat_map(|h| h.to_le_bytes()).collect(),
                None => t.scales = scales,
            }
            t.data = q.into();
        }
    }
    Ok(t)
}

/// The scale that maps a group's largest magnitude to 127 (0 where that is not a normal float:
/// the group is sent as zeros).
fn exact_scale(x: &[f32]) -> f32 {
    let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
    if scale.is_normal() { scale } else { 0.0 }
}

/// `scale` as the nearest f16 not below it (so no value of the group is clipped), or `None`
/// beyond the f16 range.
fn half_scale(scale: f32) -> Option<f16> {
    let h = f16::from_f32(scale);
    let h = if h.to_f32() < scale {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    };
    h.is_finite().then_some(h)
}

/// Quantizes one group with `scale` (0, or at least its largest magnitude / 127).
fn quantize(x: &[f32], out: &mut [u8], scale: f32) {
    if scale == 0.0 {
        out.fill(0);
        return;
    }
    let inv = 1.0 / scale;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8;
    }
}

/// Checks and decodes `t` as rows of `cols` values (`cols = None`: any width), refusing more
/// than `max_elements` values with [`Error::TensorTooLarge`] and anything malformed with
/// [`Error::TensorInvalid`].
pub fn decode(t: &Tensor, cols: Option<usize>, max_elements: usize) -> Result<Rows> {
    let bad = |reason: String| Err(Error::TensorInvalid(reason));
    if t.shape.is_empty() || t.shape.len() > 4 {
        return bad(format!("rank {} (expected 1 to 4)", t.shape.len()));
    }
    let mut elements: u64 = 1;
    for &d in &t.shape {
        if d == 0 {
            return bad(format!("shape {:?} has a zero dimension", t.shape));
        }
        elements = match elements.checked_mul(d) {
            Some(e) if e <= max_elements as u64 => e,
            _ => {
                return Err(Error::TensorTooLarge {
                    shape: t.shape.clone(),
                    limit: max_elements,
                });
            }
        };
    }
    let elements = elements as usize;
    let width = *t.shape.last().unwrap_or(&1) as usize;
    if let Some(c) = cols
        && c != width
    {
        return bad(format!("rows of {width} values, expected {c}"));
    }
    let rows = elements / width;
    let dtype = DType::try_from(t.dtype).unwrap_or(DType::Unspecified);
    let elem_bytes = match dtype {
        DType::F32 => 4,
        DType::F16 => 2,
        DType::Int8 => 1,
        DType::Unspecified => return bad(format!("dtype {} is not set or unknown", t.dtype)),
    };
    if t.data.len() != elements * elem_bytes {
        return bad(format!(
            "{} data bytes for {elements} {dtype:?} values (expected {})",
            t.data.len(),
            elements * elem_bytes
        ));
    }
    if dtype != DType::Int8
        && (!t.scales.is_empty() || !t.half_scales.is_empty() || t.group_size != 0)
    {
        return bad(format!("{dtype:?} tensors carry no scales or group size"));
    }
    let data: Vec<f32> = match dtype {
        DType::F32 => t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => t
            .data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => {
            let g = match t.group_size as usize {
                0 => width,
                g if g <= width => g,
                g => return bad(format!("group size {g} is wider than rows of {width}")),
            };
            let expected = rows * width.div_ceil(g);
            let scales: Vec<f32> = match (t.scales.is_empty(), t.half_scales.is_empty()) {
                (false, true) => t.scales.clone(),
                (true, false) if t.half_scales.len().is_multiple_of(2) => t
                    .half_scales
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                (true, false) => return bad("half_scales hold an odd number of bytes".into()),
                (false, false) => return bad("both scales and half_scales are set".into()),
                (true, true) => return bad("int8 tensor without scales".into()),
            };
            if scales.len() != expected {
                return bad(format!(
                    "{} scales for {rows} rows of {width} values in groups of {g} (expected \
                     {expected})",
                    scales.len()
                ));
            }
            if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
                return bad(format!("scale {s} is not finite and non-negative"));
            }
            let mut scale = scales.iter();
            let mut out = Vec::with_capacity(elements);
            for row in t.data.chunks_exact(width) {
                for q in row.chunks(g) {
                    let s = *scale.next().expect("scale count checked above");
                    out.extend(q.iter().map(|&b| f32::from(b as i8) * s));
                }
            }
            out
        }
    };
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return bad(format!("value {i} is not finite"));
    }
    Ok(Rows {
        rows,
        cols: width,
        data,
    })
}

#[cfg(test)]
mod tests;
