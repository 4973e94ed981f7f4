//! Other architectures and RoPE scalings: small random-weight GGUF files written by llama.cpp's
//! own writer (`gguf` from PyPI, in `.seam/py`; `tests/python/write_gguf.py`) import exactly
//! against the plain f32 reference forward pass over the same file. Their perplexity against
//! llama.cpp's on the same files is checked by `make check-models`.

use seam_edge::test_util::{asset, compare_with_reference, gguf_path, workspace_root};
use seam_shared::package::{Architecture, Package};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes a `kind` file (see `write_gguf.py`) with the default GGUF's tokenizer into `dir`.
fn write(kind: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join(format!("{kind}.gguf"));
    let run = Command::new(asset("py/bin/python"))
        .arg(workspace_root().join("tests/python/write_gguf.py"))
        .arg(kind)
        .arg(gguf_path())
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "write_gguf.py {kind}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// About 90 tokens of prose: enough positions for the rotary angles to matter.
fn prose() -> String {
    let text = std::fs::read_to_string(asset("assets/prose/lee_background.txt")).unwrap();
    text.chars().take(400).collect()
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

/// Writes a `kind` file, imports it with f32 compute and checks every position against the
/// reference; returns the directory, the file and the package's architecture.
fn imports_exactly(kind: &str) -> (PathBuf, PathBuf, Architecture) {
    let dir = tmp(kind);
    let path = write(kind, &dir);
    let package = dir.join("package");
    let (agree, positions) = compare_with_reference(&path, &package, true, &prose());
    assert_eq!(agree, positions);
    assert!(positions > 60, "{positions} positions");
    let a = Package::open(&package)
        .unwrap()
        .manifest()
        .architecture
        .clone();
    (dir, path, a)
}

/// As shipped (int8 activations), as close as the other types' shipped graphs.
fn shipped_agrees(dir: &Path, path: &Path) {
    let (agree, positions) = compare_with_reference(path, &dir.join("package"), false, &prose());
    assert!(agree * 10 >= positions * 9, "top-1 {agree}/{positions}");
}

#[test]
fn a_random_qwen2_imports_exactly() {
    let (dir, path, a) = imports_exactly("qwen2-random");
    assert_eq!(a.family, "qwen2");
    shipped_agrees(&dir, &path);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn llama_rope_scaling_imports_exactly() {
    let (dir, _, a) = imports_exactly("llama-rope-scaled");
    assert_eq!((a.rope_freq_scale, a.rope_freq_factors.len()), (0.5, 16));
    assert!(a.rope_freq_factors.iter().all(|f| (1.0..=8.0).contains(f)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_random_gemma3_imports_exactly() {
    let (dir, path, a) = imports_exactly("gemma3-random");
    assert_eq!(a.family, "gemma3");
    // Every other layer is local (pattern 2) and sees the last 16 of the prose's 90-odd
    // positions; the context is the file's. Heads are wider than n_embd / n_head.
    assert_eq!(
        (
            a.local_layers.clone(),
            a.rope_theta_local,
            a.sliding_window,
            a.context_length
        ),
        (vec![0, 2], Some(500.0), 16, 2048)
    );
    assert_eq!((a.n_head * a.head_dim, a.n_embd), (256, 128));
    assert!((a.embedding_scale - 128f32.sqrt()).abs() < 1e-6);
    shipped_agrees(&dir, &path);
    std::fs::remove_dir_all(&dir).unwrap();
}
