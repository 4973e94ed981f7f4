//! Perplexity over non-overlapping windows of `ctx` tokens, each window scoring its second
//! half and, for a model whose tokenizer adds a BOS token, starting with it in place of the
//! window's first token (as llama.cpp's perplexity tool does, so figures compare); or over the whole text in
//! one pass through a sliding window of `ctx` cache slots (what `--context-overflow
//! sliding_window` runs), scoring every token after the first `ctx / 2`.

use super::context::{SINK_TOKENS, Window};
use super::kv_cache::{KvCache, KvDtype, KvGeometry};
use super::model::Model;
use crate::error::{Error, Result};

/// Result of a perplexity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// `windows` (independent windows) or `sliding` (one pass, a sliding window).
    pub mode: &'static str,
    pub windows: usize,
    pub scored_tokens: usize,
    pub text_tokens: usize,
    pub ctx: usize,
    pub kv: String,
}

/// Scores `tokens` with `model`; `progress` gets (window, windows, running perplexity).
pub fn perplexity(
    model: &mut Model,
    tokens: &[u32],
    ctx: usize,
    kv: KvDtype,
    max_windows: Option<usize>,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    let windows = window_count(model, tokens, ctx, max_windows)?;
    let (mut cache, vocab) = cache_for(model, kv, ctx)?;
    let first = ctx / 2;
    let (mut nll, mut count) = (0.0f64, 0usize);
    for w in 0..windows {
        let window = &window_tokens(model, tokens, w, ctx);
        cache.truncate(0)?;
        let logits = model.forward(window, 0, &mut cache, true)?;
        cache.commit(ctx)?;
        for j in first..ctx - 1 {
            let row = &logits[j * vocab..(j + 1) * vocab];
            nll -= log_softmax_at(row, window[j + 1] as usize);
            count += 1;
        }
        progress(w + 1, windows, (nll / count as f64).exp());
    }
    Ok(Perplexity {
        perplexity: (nll / count as f64).exp(),
        mode: "windows",
        windows,
        scored_tokens: count,
        text_tokens: tokens.len(),
        ctx,
        kv: kv.to_string(),
    })
}

/// Window `w` of `ctx` tokens, its first replaced by BOS when the tokenizer adds one.
pub fn window_tokens(model: &Model, tokens: &[u32], w: usize, ctx: usize) -> Vec<u32> {
    let mut window = tokens[w * ctx..(w + 1) * ctx].to_vec();
    if let Some(bos) = model.added_bos() {
        window[0] = bos;
    }
    window
}

/// Scores the first `max_windows × ctx` tokens (all without a limit) in one pass through a KV
/// cache of `ctx` slots that slides: it keeps the first positions (attention sinks) and drops the
/// oldest others as new ones come, so the text may be far longer than the cache. Every token
/// after the first `ctx / 2` is scored; `progress` gets (tokens done, tokens, running
/// perplexity). `windows` in the result counts the steps.
pub fn perplexity_sliding(
    model: &mut Model,
    tokens: &[u32],
    ctx: usize,
    kv: KvDtype,
    max_windows: Option<usize>,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    window_count(model, tokens, ctx, None)?;
    let n = max_windows.map_or(tokens.len(), |m| tokens.len().min(m.saturating_mul(ctx)));
    let (mut cache, vocab) = cache_for(model, kv, ctx)?;
    let mut window = Window::new(ctx, SINK_TOKENS);
    // Small steps, so that each scored token sees close to a full window.
    let step = window.max_rows().clamp(1, 32);
    let (mut nll, mut count, mut steps) = (0.0f64, 0usize, 0usize);
    let mut pos = 0;
    while pos + 1 < n {
        let end = (pos + step).min(n - 1);
        let place = window.place(pos, end - pos);
        if let Some((at, dropped)) = place.evict {
            cache.remove(at, dropped)?;
        }
        let logits = model.forward_shifted(
            &tokens[pos..end],
            place.slot,
            window.evicted(),
            &mut cache,
            true,
        )?;
        cache.commit(place.slot + end - pos)?;
        for (j, row) in logits.chunks(vocab).enumerate() {
            let p = pos + j;
            if p >= ctx / 2 {
                nll -= log_softmax_at(row, tokens[p + 1] as usize);
                count += 1;
            }
        }
        steps += 1;
        pos = end;
        if count > 0 && (steps.is_multiple_of(16) || pos + 1 >= n) {
            progress(pos, n - 1, (nll / count as f64).exp());
        }
    }
    Ok(Perplexity {
        perplexity: (nll / count.max(1) as f64).exp(),
        mode: "sliding",
        windows: steps,
        scored_tokens: count,
        text_tokens: tokens.len(),
        ctx,
        kv: kv.to_string(),
    })
}

/// Windows of `ctx` tokens in `tokens` (at most `max_windows`), or a clear error when `ctx` is
/// out of range or the text is shorter than one window.
pub fn window_count(
    model: &Model,
    tokens: &[u32],
    ctx: usize,
    max_windows: Option<usize>,
) -> Result<usize> {
    if ctx < 4 || ctx > model.arch().context_length as usize {
        return Err(Error::InvalidArgument(format!(
            "--ctx must be in 4..={}, got {ctx}",
            model.arch().context_length
        )));
    }
    let mut windows = tokens.len() / ctx;
    if let Some(m) = max_windows {
        windows = windows.min(m);
    }
    if windows == 0 {
        return Err(Error::InvalidArgument(format!(
            "the text has {} tokens, fewer than one window of {ctx}",
            tokens.len()
        )));
    }
    Ok(windows)
}

/// A cache of `ctx` positions for every layer of `model`, and its vocabulary size.
fn cache_for(model: &Model, kv: KvDtype, ctx: usize) -> Result<(KvCache, usize)> {
    let a = model.arch();
    let geometry = KvGeometry {
        n_layers: a.n_layer as usize,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    };
    Ok((KvCache::try_new(geometry, kv, ctx)?, a.vocab_size as usize))
}

/// `log softmax(row)[i]`, computed in f64.
pub fn log_softmax_at(row: &[f32], i: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    row[i] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::log_softmax_at;

    #[test]
    fn log_softmax_of_uniform_row_is_log_one_over_n() {
        let v = log_softmax_at(&[3.0; 8], 5);
        assert!((v - (1.0f64 / 8.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn log_softmax_is_stable_for_large_logits() {
        let v = log_softmax_at(&[1000.0, 0.0], 0);
        assert!(v.abs() < 1e-12);
    }
}
