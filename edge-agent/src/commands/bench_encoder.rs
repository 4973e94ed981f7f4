//! `seam-edge bench-encoder`: sentence embeddings per second at batch 1 and 32, and the
//! latency of one classification (tokenize, encode, head), on CLINC150 test texts.
//!
//! ONNX Runtime's thread pool is process-wide, so each thread count runs in its own child
//! process (`--threads N --one`), and the parent prints one table.

use crate::perception::dataset::read_examples;
use crate::perception::{Perception, PerceptionLimits};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Figures of one bench process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderBenchFigures {
    pub threads: usize,
    pub load_ms: f64,
    /// Mean encoder tokens per text (special tokens included).
    pub mean_tokens: f64,
    pub embed_batch1_per_s: f64,
    pub embed_batch32_per_s: f64,
    pub classify_p50_ms: f64,
    pub classify_p90_ms: f64,
}

/// Measures in this process with `threads` threads.
pub fn measure(model: &Path, data: &Path, threads: usize) -> anyhow::Result<EncoderBenchFigures> {
    let started = Instant::now();
    let mut p = Perception::load(model, threads, PerceptionLimits::default())?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let rows = read_examples(data)?;
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).take(256).collect();
    anyhow::ensure!(texts.len() >= 64, "{} has too few texts", data.display());
    let mut tokens = 0usize;
    for t in &texts[..16] {
        tokens += p.classify(t, 5)?.tokens;
    }
    let mean_tokens = tokens as f64 / 16.0;

    let mut best1 = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for text in &texts[..64] {
            p.embed(&[text])?;
        }
        best1 = best1.max(64.0 / t.elapsed().as_secs_f64());
    }
    let mut best32 = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for batch in texts.chunks(32) {
            p.embed(batch)?;
        }
        best32 = best32.max(texts.len() as f64 / t.elapsed().as_secs_f64());
    }
    let mut lat: Vec<f64> = Vec::with_capacity(200);
    for text in texts.iter().cycle().take(200) {
        let t = Instant::now();
        p.classify(text, 5)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    Ok(EncoderBenchFigures {
        threads,
        load_ms,
        mean_tokens,
        embed_batch1_per_s: best1,
        embed_batch32_per_s: best32,
        classify_p50_ms: lat[lat.len() / 2],
        classify_p90_ms: lat[lat.len() * 9 / 10],
    })
}

/// Runs one child process per thread count and prints the table.
pub fn run_all(model: &Path, data: &Path, threads: &[usize]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    println!(
        "encoder bench: {} on {} (CLINC150 test texts)",
        model.display(),
        data.display()
    );
    println!(
        "{:>7} {:>9} {:>11} {:>15} {:>16} {:>13} {:>13}",
        "threads",
        "load ms",
        "tokens/text",
        "embed/s batch1",
        "embed/s batch32",
        "classify p50",
        "classify p90"
    );
    for &t in threads {
        let out = std::process::Command::new(&exe)
            .arg("bench-encoder")
            .arg("--model")
            .arg(model)
            .arg("--data")
            .arg(data)
            .args(["--threads", &t.to_string(), "--one"])
            .output()
            .context("starting the bench child process")?;
        anyhow::ensure!(
            out.status.success(),
            "bench with {t} threads failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f: EncoderBenchFigures = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("bench output: {}", String::from_utf8_lossy(&out.stdout)))?;
        println!(
            "{:>7} {:>9.0} {:>11.1} {:>15.1} {:>16.1} {:>10.2} ms {:>10.2} ms",
            f.threads,
            f.load_ms,
            f.mean_tokens,
            f.embed_batch1_per_s,
            f.embed_batch32_per_s,
            f.classify_p50_ms,
            f.classify_p90_ms
        );
    }
    Ok(())
}
