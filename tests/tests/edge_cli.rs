//! The `seam-edge` command line: generate's output contract and its errors.

use seam_tests::{edge_bin, package_dir};
use std::process::Command;

#[test]
fn generate_prints_the_completion_alone_and_json_stats_on_stderr() {
    let out = Command::new(edge_bin())
        .args([
            "generate",
            "--max-tokens",
            "6",
            "--stats",
            "json",
            "--model",
        ])
        .arg(package_dir())
        .arg("The capital of France is")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with(" Paris"), "{stdout:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let stats: serde_json::Value =
        serde_json::from_str(stderr.trim().lines().last().unwrap()).unwrap();
    for key in ["prefill_tokens_per_s", "decode_tokens_per_s", "kv_bytes"] {
        assert!(
            stats[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {stats}"
        );
    }
    assert_eq!(stats["completion_tokens"], 6);
}

#[test]
fn an_unknown_model_directory_is_a_clear_error() {
    let out = Command::new(edge_bin())
        .args(["generate", "--model", "/nonexistent/seam-model", "Hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/seam-model") && stderr.contains("model import"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_flags_are_clear_errors() {
    for args in [
        vec!["--temperature=-1"],
        vec!["--max-tokens", "0"],
        vec!["--kv", "int4"],
    ] {
        let out = Command::new(edge_bin())
            .arg("generate")
            .args(&args)
            .arg("--model")
            .arg(package_dir())
            .arg("Hello")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
