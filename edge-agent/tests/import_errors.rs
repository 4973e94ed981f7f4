//! `model import` on checkpoints it cannot take: a clear error naming the problem, never a
//! panic, and no package left behind that would verify.

use seam_edge::import::{ImportOptions, import_gguf};
use seam_edge::test_util::gguf_path;
use std::path::PathBuf;

fn options() -> ImportOptions {
    ImportOptions {
        split_points: vec![4],
        progress: false,
        f32_compute: false,
        drafter: None,
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seam-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Imports `bytes` written as a GGUF file; returns the error text.
fn import_error(name: &str, bytes: &[u8]) -> String {
    let dir = temp(name);
    let file = dir.join("model.gguf");
    std::fs::write(&file, bytes).unwrap();
    let err = import_gguf(&file, &dir.join("pkg"), &options()).expect_err("import must fail");
    assert!(seam_shared::package::Package::open(dir.join("pkg")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
    err.to_string()
}

fn real() -> Vec<u8> {
    std::fs::read(gguf_path()).unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in the header")
}

#[test]
fn another_architecture_is_named() {
    let mut bytes = real();
    let at = find(&bytes, b"llama\x0c\x00\x00\x00");
    bytes[at..at + 5].copy_from_slice(b"mamba");
    let err = import_error("arch", &bytes);
    assert!(err.contains("mamba"), "{err}");
}

#[test]
fn an_unsupported_quantization_is_named_with_its_tensor() {
    let mut bytes = real();
    // Tensor info: name, n_dims u32, dims u64 × 2, type u32, offset u64. Q4_1 (3) → Q2_K (10),
    // whose fewer bytes fit inside the file, so only the importer objects (no linear layer is
    // taken in Q2_K: its mins come per 16 values).
    let name = b"blk.0.ffn_down.weight";
    let at = find(&bytes, name) + name.len() + 4 + 16;
    assert_eq!(
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()),
        3,
        "type field"
    );
    bytes[at..at + 4].copy_from_slice(&10u32.to_le_bytes());
    let err = import_error("quant", &bytes);
    assert!(
        err.contains("Q2_K") && err.contains("blk.0.ffn_down.weight"),
        "{err}"
    );
}

#[test]
fn a_truncated_file_is_an_error() {
    let bytes = real();
    for len in [0, 3, 100, 4096, bytes.len() / 2, bytes.len() - 1] {
        let err = import_error(&format!("trunc{len}"), &bytes[..len]);
        assert!(!err.is_empty(), "truncated at {len}");
    }
}

#[test]
fn split_points_outside_the_model_are_refused() {
    let dir = temp("splits");
    let mut opts = options();
    opts.split_points = vec![4, 30];
    let err = import_gguf(&gguf_path(), &dir.join("pkg"), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("split point 30"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
