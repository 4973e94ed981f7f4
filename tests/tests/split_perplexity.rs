//! What the wire costs in perplexity: `seam-edge perplexity` split at K = 8 over a real
//! `seam-worker` against the same command run locally, on the prose of the edge runtime's
//! perplexity test.
//!
//! Measured on the graphs that compute the GGUF function exactly (f32 matmuls): the shipped
//! graphs quantize activations to int8 inside `MatMulNBits`, so any change to their inputs flips
//! some of those roundings and moves perplexity by about ±0.15% on a few windows whatever the
//! change (see `edge-agent/tests/perplexity.rs`). With the f32 wire the split computes exactly
//! what the device would, so its perplexity is the local one to the last digit.

use seam_edge::test_util::{asset, package_dir_for};
use seam_tests::{WorkerProcess, edge_bin};
use std::path::Path;
use std::process::Command;

const WINDOWS: &str = "8";

/// `seam-edge perplexity --json` over the first windows of the corpus, with `extra` flags.
fn perplexity(package: &Path, extra: &[&str]) -> f64 {
    let out = Command::new(edge_bin())
        .arg("perplexity")
        .arg("--model")
        .arg(package)
        .arg("--file")
        .arg(asset("assets/prose/lee_background.txt"))
        .args(["--max-windows", WINDOWS, "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["windows"], 8, "{v}");
    v["perplexity"].as_f64().expect("a perplexity")
}

#[test]
fn the_int8_wire_costs_at_most_a_tenth_of_a_percent_and_the_f32_wire_nothing() {
    let package = package_dir_for(true);
    let worker = WorkerProcess::start_worker(&package, &[]);
    let local = perplexity(&package, &[]);
    let split = |wire: &str| {
        perplexity(
            &package,
            &["--worker", &worker.addr, "--split", "8", "--wire", wire],
        )
    };
    let (f32_wire, int8_wire) = (split("f32"), split("int8"));
    let change = int8_wire / local - 1.0;
    eprintln!(
        "perplexity over {WINDOWS} windows: local {local:.4}, split f32 wire {f32_wire:.4}, split int8 wire {int8_wire:.4} ({:+.3}%)",
        change * 100.0
    );
    // A 135M model on news prose: a broken split lands in the hundreds or more.
    assert!((10.0..60.0).contains(&local), "local perplexity {local}");
    assert!(
        (f32_wire / local - 1.0).abs() < 1e-9,
        "the f32 wire changes perplexity: {local} → {f32_wire}"
    );
    assert!(
        change <= 0.001,
        "the int8 wire changes perplexity by {:+.4}%",
        change * 100.0
    );
}
