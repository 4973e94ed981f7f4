//! Every ggml block type seam decodes, checked against llama.cpp's own Python package
//! (`gguf` from PyPI, in `.seam/py`): random blocks (scales drawn finite) decoded by both.

use rand::{Rng, SeedableRng, rngs::StdRng};
use seam_edge::gguf::GgmlType;
use seam_edge::gguf::quant::dequantize;
use seam_tests::python_client;

/// Byte offsets of a block's f16 scale fields (drawn finite), per type.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

fn random_blocks(ty: GgmlType, blocks: usize, rng: &mut StdRng) -> Vec<u8> {
    let (elems, bytes) = ty.block_layout().unwrap();
    let mut data: Vec<u8> = (0..blocks * bytes).map(|_| rng.random()).collect();
    let finite_f16 = |rng: &mut StdRng| half::f16::from_f32(rng.random_range(-2.0..2.0));
    match ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.random_range(-4.0f32..4.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&finite_f16(rng).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                let v = half::bf16::from_f32(rng.random_range(-4.0..4.0));
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            for block in data.chunks_exact_mut(bytes) {
                for &at in scale_fields(ty) {
                    block[at..at + 2].copy_from_slice(&finite_f16(rng).to_le_bytes());
                }
            }
        }
    }
    assert_eq!(data.len() / bytes * elems, blocks * elems);
    data
}

#[test]
fn every_block_type_decodes_as_llama_cpp_decodes_it() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gguf-quants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    for ty in GgmlType::BLOCK_TYPES {
        let (elems, _) = ty.block_layout().unwrap();
        let blocks = 64;
        let data = random_blocks(ty, blocks, &mut rng);
        let ours = dequantize(ty, &data, blocks * elems).unwrap();
        let (src, dst) = (dir.join(format!("{ty}.bin")), dir.join(format!("{ty}.f32")));
        std::fs::write(&src, &data).unwrap();
        let out = python_client(
            "dequantize.py",
            &[ty.to_string().into(), src.into(), dst.clone().into()],
            &format!("dequantizing {ty}"),
        );
        assert_eq!(out["values"], blocks * elems, "{ty}");
        let theirs: Vec<f32> = std::fs::read(&dst)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(theirs.len(), ours.len(), "{ty}");
        // gguf-py evaluates some products in another order: allow a few ulps.
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs() / a.abs().max(b.abs()).max(1e-3))
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{ty}: relative difference up to {worst}");
        assert!(ours.iter().any(|v| *v != 0.0), "{ty}: all zero");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
