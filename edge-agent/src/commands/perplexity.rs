//! `seam-edge perplexity`: locally, or split with a worker (`--worker`, `--split`, `--wire`).

use super::SplitArgs;
use crate::runtime::kv_cache::KvDtype;
use crate::runtime::model::Model;
use crate::runtime::perplexity::{Perplexity, perplexity, perplexity_sliding};
use crate::runtime::split::split_perplexity;
use anyhow::Context;
use std::path::Path;
use std::time::Instant;

/// Rows per step of a split perplexity run (the worker returns logits for at most 64 rows).
const ROWS_PER_STEP: usize = 64;

/// Options of one `perplexity` call.
#[derive(Debug, Clone)]
pub struct PerplexityArgs {
    pub ctx: usize,
    pub kv: KvDtype,
    pub threads: usize,
    pub max_windows: Option<usize>,
    pub json: bool,
    pub split: SplitArgs,
    /// One pass through a sliding window of `ctx` cache slots instead of independent windows.
    pub sliding: bool,
}

pub fn run(dir: &Path, file: &Path, args: &PerplexityArgs) -> anyhow::Result<()> {
    let engine = super::load_engine(dir, args.threads, args.kv, super::DEFAULT_KV_BUDGET)?;
    // The worker link runs its I/O on this runtime while the model blocks this thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let split = {
        let _context = runtime.enter();
        args.split.resolve(&engine)?
    };
    let mut model: Model = engine.into_model();
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let tokens = model
        .tokenizer()
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing {}: {e}", file.display()))?
        .get_ids()
        .to_vec();
    let started = Instant::now();
    let progress = |w: usize, n: usize, ppl: f64| {
        eprint!("\rperplexity: window {w}/{n}, running {ppl:.4}   ");
    };
    anyhow::ensure!(
        !(args.sliding && split.is_some()),
        "--sliding runs the whole model here; it does not take --worker or --gateway"
    );
    let (result, traffic): (Perplexity, Option<_>) = match split {
        None if args.sliding => (
            perplexity_sliding(
                &mut model,
                &tokens,
                args.ctx,
                args.kv,
                args.max_windows,
                |done, n, ppl| {
                    eprint!("\rperplexity (sliding): token {done}/{n}, running {ppl:.4}   ")
                },
            )?,
            None,
        ),
        None => (
            perplexity(
                &mut model,
                &tokens,
                args.ctx,
                args.kv,
                args.max_windows,
                progress,
            )?,
            None,
        ),
        Some((endpoint, layer)) => {
            let mut link = endpoint.link(runtime.handle().clone());
            let (p, c) = split_perplexity(
                &mut model,
                &mut *link,
                layer,
                args.split.wire,
                &tokens,
                args.ctx,
                args.max_windows,
                ROWS_PER_STEP,
                progress,
            )?;
            (p, Some(c))
        }
    };
    eprintln!();
    if args.json {
        let mut v = serde_json::to_value(&result)?;
        if let Some(c) = traffic {
            v["bytes_sent"] = c.bytes_sent.into();
            v["bytes_received"] = c.bytes_received.into();
        }
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} over {} windows of {} tokens ({} scored of {} in the text, kv {}) in {:.1}s",
            result.perplexity,
            result.windows,
            result.ctx,
            result.scored_tokens,
            result.text_tokens,
            result.kv,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
