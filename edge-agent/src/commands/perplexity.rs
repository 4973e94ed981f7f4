//! `seam-edge perplexity`.

use crate::runtime::kv_cache::KvDtype;
use crate::runtime::model::{LoadOptions, Model};
use crate::runtime::perplexity::perplexity;
use anyhow::Context;
use std::path::Path;
use std::time::Instant;

pub fn run(
    dir: &Path,
    file: &Path,
    ctx: usize,
    kv: KvDtype,
    threads: usize,
    max_windows: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let mut model = Model::load(
        dir,
        &LoadOptions {
            threads,
            ..LoadOptions::default()
        },
    )?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let tokens = model
        .tokenizer()
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing {}: {e}", file.display()))?
        .get_ids()
        .to_vec();
    let started = Instant::now();
    let result = perplexity(&mut model, &tokens, ctx, kv, max_windows, |w, n, ppl| {
        eprint!("\rperplexity: window {w}/{n}, running {ppl:.4}   ");
    })?;
    eprintln!();
    if json {
        println!("{}", serde_json::to_string(&result)?);
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
