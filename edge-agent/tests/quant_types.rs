//! GGUF files with other 4-bit linear types import exactly: the default SmolLM2 file with its
//! Q4_1 linear layers rewritten as Q4_0 (attention, gate and up) and Q4_K (down, whose rows of
//! 1,536 fill whole super-blocks), as llama.cpp mixes them, then imported with f32 compute and
//! compared with the plain f32 reference forward pass over the same file.
//!
//! The encoders below follow ggml's formats (not its rounding choices): what the test checks is
//! that the import computes the function the file stores, whatever the values are.

use half::f16;
use seam_edge::gguf::quant::dequantize;
use seam_edge::gguf::testutil::Writer;
use seam_edge::gguf::{GgmlType, GgufFile};
use seam_edge::import::{ImportOptions, import_gguf};
use seam_edge::reference::ReferenceModel;
use seam_edge::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use seam_edge::runtime::model::{LoadOptions, Model};
use seam_edge::test_util::gguf_path;

/// ggml's Q4_0: `d = max / −8` (the signed value of largest magnitude), `q = x/d + 8.5`.
fn q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for b in x.chunks_exact(32) {
        let max = b
            .iter()
            .copied()
            .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        let d = f16::from_f32(max / -8.0);
        let id = if d.to_f32() != 0.0 {
            1.0 / d.to_f32()
        } else {
            0.0
        };
        let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        out.extend(d.to_le_bytes());
        out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
    }
    out
}

/// A Q4_K encoding: per sub-block of 32 a scale and a min on the 6-bit grid of the super-block's
/// `d` and `dmin`, values rounded to 0..=15.
fn q4_k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 256 * 144);
    for sb in x.chunks_exact(256) {
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        for (j, sub) in sb.chunks_exact(32).enumerate() {
            let lo = sub.iter().copied().fold(0.0f32, f32::min);
            let hi = sub.iter().copied().fold(f32::MIN, f32::max);
            scales[j] = (hi - lo) / 15.0;
            mins[j] = -lo;
        }
        let d = f16::from_f32(scales.iter().copied().fold(0.0, f32::max) / 63.0);
        let dmin = f16::from_f32(mins.iter().copied().fold(0.0, f32::max) / 63.0);
        let grid = |v: f32, step: f16| {
            if step.to_f32() > 0.0 {
                (v / step.to_f32()).round().clamp(0.0, 63.0) as u8
            } else {
                0
            }
        };
        let sc: Vec<u8> = scales.iter().map(|&s| grid(s, d).max(1)).collect();
        let m: Vec<u8> = mins.iter().map(|&v| grid(v, dmin)).collect();
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            packed[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            packed[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
        }
        let mut q = [0u8; 256];
        for (j, sub) in sb.chunks_exact(32).enumerate() {
            let (s, mn) = (
                d.to_f32() * f32::from(sc[j]),
                dmin.to_f32() * f32::from(m[j]),
            );
            for (i, &v) in sub.iter().enumerate() {
                q[j * 32 + i] = ((v + mn) / s).round().clamp(0.0, 15.0) as u8;
            }
        }
        out.extend(d.to_le_bytes());
        out.extend(dmin.to_le_bytes());
        out.extend(packed);
        for chunk in q.chunks_exact(64) {
            out.extend((0..32).map(|l| chunk[l] | (chunk[l + 32] << 4)));
        }
    }
    out
}

/// The default GGUF with its linear layers re-encoded; returns the new file's path.
fn requantized(dir: &std::path::Path) -> std::path::PathBuf {
    let src = GgufFile::open(gguf_path()).unwrap();
    let mut w = Writer::default();
    for (k, v) in &src.metadata {
        w = w.kv(k, v.clone());
    }
    for info in &src.tensors {
        let bytes = src.tensor_bytes(info).unwrap();
        let (ty, data) = if info.ty == GgmlType::Q4_1 {
            let x = dequantize(info.ty, bytes, info.n_elements() as usize).unwrap();
            if info.name.ends_with("ffn_down.weight") {
                (GgmlType::Q4_K, q4_k(&x))
            } else {
                (GgmlType::Q4_0, q4_0(&x))
            }
        } else {
            (info.ty, bytes.to_vec())
        };
        w = w.tensor(&info.name, &info.dims, ty, data);
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("smollm2-q4_0-q4_k.gguf");
    std::fs::write(&path, w.to_bytes()).unwrap();
    path
}

#[test]
fn q4_0_and_q4_k_linear_layers_import_exactly() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("quant-types-{}", std::process::id()));
    let path = requantized(&dir);
    let gguf = GgufFile::open(&path).unwrap();
    let count = |ty| gguf.tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!((count(GgmlType::Q4_0), count(GgmlType::Q4_K)), (30 * 6, 30));
    let package = dir.join("package");
    import_gguf(
        &path,
        &package,
        &ImportOptions {
            split_points: vec![8],
            progress: false,
            f32_compute: true,
            drafter: None,
        },
    )
    .unwrap();
    let reference = ReferenceModel::from_gguf(&gguf).unwrap();
    let mut model = Model::load(
        &package,
        &LoadOptions {
            threads: 2,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let a = model.arch();
    let (vocab, geometry) = (
        a.vocab_size as usize,
        KvGeometry {
            n_layers: a.n_layer as usize,
            n_kv_heads: a.n_head_kv as usize,
            head_dim: a.head_dim as usize,
        },
    );
    let tokens = model
        .tokenizer()
        .encode(
            "The capital of France is Paris, and the capital of Italy is",
            false,
        )
        .unwrap()
        .get_ids()
        .to_vec();
    let expected = reference.logits(&tokens);
    let mut cache = KvCache::new(geometry, KvDtype::F32, tokens.len());
    let ours = model.forward(&tokens, 0, &mut cache, true).unwrap();
    for (p, want) in expected.iter().enumerate() {
        let row = &ours[p * vocab..(p + 1) * vocab];
        let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in row.iter().zip(want) {
            dot += f64::from(x) * f64::from(y);
            na += f64::from(x) * f64::from(x);
            nb += f64::from(y) * f64::from(y);
        }
        let cosine = dot / (na.sqrt() * nb.sqrt());
        assert!(cosine > 0.99999, "position {p}: cosine {cosine}");
        let argmax = |v: &[f32]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        assert_eq!(argmax(row), argmax(want), "position {p}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
