//! `seam-edge bench`: prefill and decode speed, KV bytes per token, package load time.
//!
//! ONNX Runtime's thread pool is process-wide, so each thread count runs in its own child
//! process (`seam-edge bench --threads N --one`), and the parent prints one table.

use crate::runtime::attention::attention;
use crate::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use crate::runtime::model::{LoadOptions, Model};
use crate::runtime::sampler::argmax;
use anyhow::Context;
use seam_shared::package::Manifest;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Figures of one bench process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchFigures {
    pub threads: usize,
    pub load_ms: f64,
    pub prefill_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens: usize,
    pub decode_tokens_per_s: f64,
    pub kv_bytes_per_token_int8: usize,
    pub kv_bytes_per_token_f32: usize,
    pub weight_bytes: u64,
    /// Attention over the whole cache for one decoded token, all layers, µs: (positions, int8, f32).
    pub attention_us: Vec<(usize, f64, f64)>,
    /// Memory read bandwidth measured in the same process with `threads` threads, GB/s.
    pub read_gb_s: f64,
}

/// Best-of-3 read bandwidth over a 512 MiB buffer split across `threads` threads, GB/s.
fn read_bandwidth(threads: usize) -> f64 {
    let words = (512usize << 20) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = threads.max(1);
    let chunk = words.div_ceil(threads);
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..3 {
        let t = Instant::now();
        sink ^= std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, |a, x| a ^ x)
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / best / 1e9
}

/// The files a decoded token reads whole: every layer graph, the head graph, and the token table
/// when the head computes with it (a tied 8-bit head kept once, as the graph's external data).
/// A table the head does not use is read one row per token, and the draft head not at all.
fn decode_read_files(m: &Manifest) -> impl Iterator<Item = &str> {
    let table = m.weights.embedding_head_block.map(|_| m.embedding.as_str());
    m.segments
        .iter()
        .flat_map(|s| s.graphs.iter().map(String::as_str))
        .chain([m.head.as_str()])
        .chain(table)
}

const PROSE: &str = "The history of the city begins with a small settlement on the river, where traders \
stopped to rest and exchange goods. Over the centuries the village grew into a market town, and \
the market town into a city with bridges, churches, schools and a university. Each generation \
added something of its own: a new quarter, a library, a railway station, a park along the water. ";

/// Untimed rounds before the measured ones. ONNX Runtime's buffers for a 512-token prefill
/// are faulted in over the first two (about 120 MB: the first prefill ran at 511 tokens/s, the
/// best of the next three at 586, on Q4_K_M at one thread); a serving process is past them after
/// its first requests, and llama-bench warms up too.
const WARM_UP: usize = 2;

/// Runs the measurements in this process with `threads` threads.
pub fn measure(
    dir: &Path,
    threads: usize,
    prefill_tokens: usize,
    decode_tokens: usize,
    repeats: usize,
) -> anyhow::Result<BenchFigures> {
    let started = Instant::now();
    let mut model = Model::load(
        dir,
        &LoadOptions {
            threads,
            ..LoadOptions::default()
        },
    )?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let a = model.arch().clone();
    let text = PROSE.repeat(prefill_tokens / 40 + 2);
    let mut prompt = model
        .tokenizer()
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get_ids()
        .to_vec();
    prompt.truncate(prefill_tokens);
    let geometry = KvGeometry {
        n_layers: a.n_layer as usize,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    };
    let mut best_prefill = f64::MAX;
    let mut best_decode = f64::MAX;
    for round in 0..WARM_UP + repeats.max(1) {
        let mut cache = KvCache::new(geometry, KvDtype::Int8, prompt.len() + decode_tokens + 1);
        let t = Instant::now();
        model.forward(&prompt, 0, &mut cache, false)?;
        cache.commit(prompt.len())?;
        let prefill_s = t.elapsed().as_secs_f64();
        // Decode from a short context, as a chat turn would.
        let mut cache = KvCache::new(geometry, KvDtype::Int8, 16 + decode_tokens + 1);
        let mut logits = model.forward(&prompt[..16], 0, &mut cache, false)?;
        cache.commit(16)?;
        let t = Instant::now();
        let mut pos = 16;
        for _ in 0..decode_tokens {
            let next = argmax(&logits);
            logits = model.forward(&[next], pos, &mut cache, false)?;
            pos += 1;
            cache.commit(pos)?;
        }
        if round >= WARM_UP {
            best_prefill = best_prefill.min(prefill_s);
            best_decode = best_decode.min(t.elapsed().as_secs_f64());
        }
    }
    let weight_bytes = decode_read_files(model.package().manifest())
        .filter_map(|f| std::fs::metadata(model.package().path(f)).ok())
        .map(|m| m.len())
        .sum();
    let attention_us = [512usize, 2048]
        .iter()
        .map(|&n| -> anyhow::Result<(usize, f64, f64)> {
            Ok((
                n,
                attention_cost(&geometry, &a, KvDtype::Int8, n, threads)?,
                attention_cost(&geometry, &a, KvDtype::F32, n, threads)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(BenchFigures {
        threads,
        load_ms,
        prefill_tokens: prompt.len(),
        prefill_tokens_per_s: prompt.len() as f64 / best_prefill,
        decode_tokens,
        decode_tokens_per_s: decode_tokens as f64 / best_decode,
        kv_bytes_per_token_int8: KvCache::new(geometry, KvDtype::Int8, 1).bytes_per_token(),
        kv_bytes_per_token_f32: KvCache::new(geometry, KvDtype::F32, 1).bytes_per_token(),
        weight_bytes,
        attention_us,
        read_gb_s: read_bandwidth(threads),
    })
}

/// Microseconds of attention for one new token over `positions` cached ones, all layers.
fn attention_cost(
    g: &KvGeometry,
    a: &seam_shared::package::Architecture,
    dtype: KvDtype,
    positions: usize,
    threads: usize,
) -> anyhow::Result<f64> {
    let mut cache = KvCache::new(*g, dtype, positions);
    let kw = g.n_kv_heads * g.head_dim;
    let rows: Vec<f32> = (0..positions * kw)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    for l in 0..g.n_layers {
        cache.write(l, 0, &rows, &rows)?;
    }
    let qw = a.n_head as usize * g.head_dim;
    let q: Vec<f32> = (0..qw).map(|i| (i % 13) as f32 / 13.0).collect();
    let mut out = vec![0.0; qw];
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        for l in 0..g.n_layers {
            attention(
                &q,
                &cache,
                l,
                positions - 1,
                a.n_head as usize,
                &mut out,
                threads,
                None,
            )?;
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / reps as f64)
}

/// Runs one child per thread count and prints the table.
pub fn run_all(
    dir: &Path,
    thread_counts: &[usize],
    prefill: usize,
    decode: usize,
    repeats: usize,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for &t in thread_counts {
        eprintln!("bench: {t} thread(s)…");
        let out = std::process::Command::new(&exe)
            .args(["bench", "--one", "--model"])
            .arg(dir)
            .args([
                "--threads",
                &t.to_string(),
                "--prefill",
                &prefill.to_string(),
                "--decode",
                &decode.to_string(),
                "--repeats",
                &repeats.to_string(),
            ])
            .output()
            .context("running the bench child")?;
        if !out.status.success() {
            anyhow::bail!(
                "bench child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        rows.push(
            serde_json::from_slice::<BenchFigures>(&out.stdout).context("bench child output")?,
        );
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[BenchFigures]) {
    println!(
        "| threads | load ms | prefill tok/s ({} tok) | decode tok/s ({} tok) | weights MB read per token | read GB/s | bandwidth bound tok/s | decode / bound |",
        rows[0].prefill_tokens, rows[0].decode_tokens
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let bound = r.read_gb_s * 1e9 / r.weight_bytes as f64;
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} |",
            r.threads,
            r.load_ms,
            r.prefill_tokens_per_s,
            r.decode_tokens_per_s,
            r.weight_bytes as f64 / 1e6,
            r.read_gb_s,
            bound,
            r.decode_tokens_per_s / bound
        );
    }
    let r = &rows[0];
    println!();
    println!(
        "| KV cache | bytes/token | ratio |\n|---|---|---|\n| f32 | {} | 1.000 |\n| int8 | {} | {:.3} |",
        r.kv_bytes_per_token_f32,
        r.kv_bytes_per_token_int8,
        r.kv_bytes_per_token_int8 as f64 / r.kv_bytes_per_token_f32 as f64
    );
    println!();
    println!(
        "| attention per decoded token, all layers | int8 µs | f32 µs | int8 / f32 |\n|---|---|---|---|"
    );
    for r in rows {
        for (n, i8us, f32us) in &r.attention_us {
            println!(
                "| {n} positions, {} thread(s) | {i8us:.0} | {f32us:.0} | {:.2} |",
                r.threads,
                i8us / f32us
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode_read_files;
    use seam_shared::package::Package;

    #[test]
    fn a_decoded_token_reads_the_layers_the_head_and_the_table_the_head_shares() {
        let package = Package::open(crate::test_util::package_dir()).expect("test package");
        let m = package.manifest();
        let files: Vec<&str> = decode_read_files(m).collect();
        let layers: usize = m.segments.iter().map(|s| s.graphs.len()).sum();
        assert!(
            m.weights.embedding_head_block.is_some(),
            "the test package ties its head"
        );
        assert_eq!(files.len(), layers + 2, "{files:?}");
        assert!(files.contains(&m.head.as_str()) && files.contains(&m.embedding.as_str()));
        for f in &files {
            assert!(package.path(f).is_file(), "{f} is in the package");
        }
        // The draft head's graphs are in the package but not read by a plain decode.
        let graphs_in_package = m.files.keys().filter(|f| f.ends_with(".onnx")).count();
        assert!(
            graphs_in_package > layers + 1,
            "the test package has a draft head"
        );
        let graphs_read = files.iter().filter(|f| f.ends_with(".onnx")).count();
        assert_eq!(graphs_read, layers + 1, "{files:?}");
    }
}
