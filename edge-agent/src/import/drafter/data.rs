//! The draft head's training data: the model's own final-layer states, token embeddings and
//! greedy next tokens, over prose (teacher forcing: the text's tokens go in) and over the
//! model's own greedy answers to chat prompts (what it drafts for in service).

use crate::error::{Error, Result};
use crate::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use crate::runtime::model::{Model, Sequence};
use crate::runtime::sampler::{Sampler, SamplingParams, argmax};

/// Prose is read in windows of this many tokens.
pub const WINDOW: usize = 256;
/// Chat prompts decoded together (one batched pass per token).
pub const CHAT_BATCH: usize = 32;

/// Positions of many sequences, flat: row `p` of each table belongs to position `p`.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    pub d: usize,
    /// Final-layer state (before the final norm) of each position, scaled to unit rms.
    pub features: Vec<f32>,
    /// Embedding of the token at each position.
    pub embeddings: Vec<f32>,
    /// The token at each position.
    pub tokens: Vec<u32>,
    /// The full model's greedy next token after each position.
    pub targets: Vec<u32>,
    /// `(first, end)` of each sequence; `first` is the first position usable as a previous
    /// state (attention-sink positions are left out).
    pub sequences: Vec<(usize, usize)>,
    /// Position of each target inside the shortlist (`u32::MAX`: not in it); filled by
    /// [`Corpus::index_targets`].
    pub target_index: Vec<u32>,
}

impl Corpus {
    pub fn new(d: usize) -> Corpus {
        Corpus {
            d,
            ..Corpus::default()
        }
    }

    pub fn positions(&self) -> usize {
        self.tokens.len()
    }

    /// Appends one sequence: rows of `features` (`[T, d]`, raw), `embeddings`, tokens and
    /// greedy targets; positions before `skip` are not used as previous states.
    fn push(
        &mut self,
        features: &[f32],
        embeddings: &[f32],
        tokens: &[u32],
        targets: &[u32],
        skip: usize,
    ) {
        let start = self.tokens.len();
        for row in features.chunks_exact(self.d) {
            let rms = (row.iter().map(|v| v * v).sum::<f32>() / self.d as f32 + 1e-6).sqrt();
            self.features.extend(row.iter().map(|v| v / rms));
        }
        self.embeddings.extend_from_slice(embeddings);
        self.tokens.extend_from_slice(tokens);
        self.targets.extend_from_slice(targets);
        self.sequences.push((start + skip, start + tokens.len()));
    }

    /// Every position `s` from which `unroll` more positions follow in the same sequence.
    pub fn starts(&self, unroll: usize) -> Vec<usize> {
        self.sequences
            .iter()
            .flat_map(|&(first, end)| first..end.saturating_sub(unroll))
            .collect()
    }

    /// Maps every target to its place in `shortlist`.
    pub fn index_targets(&mut self, shortlist: &[u32], vocab: usize) {
        let mut place = vec![u32::MAX; vocab];
        for (i, &t) in shortlist.iter().enumerate() {
            place[t as usize] = i as u32;
        }
        self.target_index = self.targets.iter().map(|&t| place[t as usize]).collect();
    }

    /// Shortlist indices of the targets at `pick + offset` (0 where outside the shortlist) and
    /// a mask that is 1 where inside.
    pub fn targets_at(&self, picks: &[usize], offset: usize) -> (Vec<u32>, Vec<f32>) {
        picks
            .iter()
            .map(|&p| match self.target_index[p + offset] {
                u32::MAX => (0, 0.0),
                i => (i, 1.0),
            })
            .unzip()
    }

    /// How often each token is a target, most frequent first (ties by id).
    pub fn target_frequencies(&self) -> Vec<(u32, usize)> {
        let mut counts = std::collections::HashMap::new();
        for &t in &self.targets {
            *counts.entry(t).or_insert(0usize) += 1;
        }
        let mut v: Vec<(u32, usize)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

fn geometry(model: &Model) -> KvGeometry {
    let a = model.arch();
    KvGeometry {
        n_layers: a.n_layer as usize,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    }
}

/// Adds `tokens` to `corpus` in windows of [`WINDOW`] (teacher forcing).
pub fn add_prose(
    model: &mut Model,
    corpus: &mut Corpus,
    tokens: &[u32],
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let windows = tokens.len() / WINDOW;
    let mut cache = KvCache::try_new(geometry(model), KvDtype::Int8, WINDOW)?;
    let all = model.layers();
    for w in 0..windows {
        let window = &tokens[w * WINDOW..(w + 1) * WINDOW];
        cache.truncate(0)?;
        let emb = model.embed(window)?;
        let h = model.run_layers(all.clone(), emb.clone(), 0, &mut cache)?;
        let targets = greedy(model, &h)?;
        // Position 0 carries the attention sink: never a previous state.
        corpus.push(&h, &emb, window, &targets, 1);
        progress(w + 1, windows);
    }
    Ok(())
}

/// Decodes up to `max_new` greedy tokens after each prompt (batched) and adds the answers to
/// `corpus`, each from the prompt's last position on. Returns the answers' token counts.
pub fn add_chat(
    model: &mut Model,
    corpus: &mut Corpus,
    prompts: &[Vec<u32>],
    max_new: usize,
    stop: &[u32],
    mut progress: impl FnMut(usize, usize),
) -> Result<usize> {
    let d = model.n_embd();
    let all = model.layers();
    let mut generated = 0;
    for (b, batch) in prompts.chunks(CHAT_BATCH).enumerate() {
        let mut caches = batch
            .iter()
            .map(|p| KvCache::try_new(geometry(model), KvDtype::Int8, p.len() + max_new))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // Prefill every prompt of the batch in one pass; keep each one's last row.
        let rows: Vec<u32> = batch.iter().flatten().copied().collect();
        let mut seqs: Vec<Sequence<'_>> = caches
            .iter_mut()
            .zip(batch)
            .map(|(cache, p)| Sequence::new(0, p.len(), cache))
            .collect();
        let h = model.run_layers_batch(all.clone(), model.embed(&rows)?, &mut seqs)?;
        drop(seqs);
        let mut states: Vec<Answer> = Vec::with_capacity(batch.len());
        let mut end = 0;
        for (cache, p) in caches.iter_mut().zip(batch) {
            end += p.len();
            cache.commit(p.len())?;
            let last = *p.last().ok_or_else(|| {
                Error::InvalidArgument("a drafter prompt encodes to no tokens".into())
            })?;
            states.push(Answer {
                features: h[(end - 1) * d..end * d].to_vec(),
                tokens: vec![last],
                targets: Vec::new(),
                done: false,
            });
        }
        let last_rows: Vec<f32> = states.iter().flat_map(|s| s.features.clone()).collect();
        for (s, t) in states.iter_mut().zip(greedy(model, &last_rows)?) {
            s.targets.push(t);
        }
        for _ in 0..max_new {
            let active: Vec<usize> = (0..states.len())
                .filter(|&i| {
                    let s = &states[i];
                    !s.done && !stop.contains(s.targets.last().expect("one target"))
                })
                .collect();
            if active.is_empty() {
                break;
            }
            let next: Vec<u32> = active
                .iter()
                .map(|&i| *states[i].targets.last().expect("one target"))
                .collect();
            let mut seqs: Vec<Sequence<'_>> = caches
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| active.contains(i))
                .map(|(_, cache)| Sequence::new(cache.len(), 1, cache))
                .collect();
            let h = model.run_layers_batch(all.clone(), model.embed(&next)?, &mut seqs)?;
            for s in seqs.iter_mut() {
                let n = s.pos + 1;
                s.cache.commit(n)?;
            }
            drop(seqs);
            let targets = greedy(model, &h)?;
            for (j, &i) in active.iter().enumerate() {
                let s = &mut states[i];
                s.features.extend_from_slice(&h[j * d..(j + 1) * d]);
                s.tokens.push(next[j]);
                s.targets.push(targets[j]);
                generated += 1;
                if s.tokens.len() > max_new {
                    s.done = true;
                }
            }
        }
        for s in states {
            let emb = model.embed(&s.tokens)?;
            corpus.push(&s.features, &emb, &s.tokens, &s.targets, 0);
        }
        progress((b + 1) * CHAT_BATCH.min(batch.len()), prompts.len());
    }
    Ok(generated)
}

/// Lets the model write `count` user requests of its own (sampled, batched): each continues
/// `prefix` (a chat opening up to the user's turn) until an `end` token or `max_new` tokens.
/// Returns the requests' tokens, without the end token; with a fixed seed, the same ones.
pub fn sample_prompts(
    model: &mut Model,
    prefix: &[u32],
    count: usize,
    max_new: usize,
    end: &[u32],
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    let all = model.layers();
    let mut out = Vec::with_capacity(count);
    let mut drawn = 0;
    // Request `i` draws from its own stream; streams of nearby seeds do not overlap.
    let params = |i: usize| SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        seed: seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64),
    };
    // Some requests run past the limit: draw at most twice as many as asked for.
    while out.len() < count && drawn < 2 * count {
        let n = CHAT_BATCH.min(count - out.len());
        let mut caches = (0..n)
            .map(|_| KvCache::try_new(geometry(model), KvDtype::Int8, prefix.len() + max_new))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut samplers = (0..n)
            .map(|i| Sampler::new(params(drawn + i)))
            .collect::<Result<Vec<_>>>()?;
        let rows: Vec<u32> = (0..n).flat_map(|_| prefix.iter().copied()).collect();
        let mut seqs: Vec<Sequence<'_>> = caches
            .iter_mut()
            .map(|c| Sequence::new(0, prefix.len(), c))
            .collect();
        let h = model.run_layers_batch(all.clone(), model.embed(&rows)?, &mut seqs)?;
        drop(seqs);
        let d = model.n_embd();
        let vocab = model.arch().vocab_size as usize;
        let last: Vec<f32> = (0..n)
            .flat_map(|i| h[((i + 1) * prefix.len() - 1) * d..(i + 1) * prefix.len() * d].to_vec())
            .collect();
        let mut logits = model.logits(&last)?;
        let mut texts: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut open: Vec<usize> = (0..n).collect();
        for c in caches.iter_mut() {
            c.commit(prefix.len())?;
        }
        for step in 0..max_new {
            let pos = prefix.len() + step;
            let mut next = Vec::with_capacity(open.len());
            let mut still = Vec::with_capacity(open.len());
            for (j, &i) in open.iter().enumerate() {
                let t = samplers[i].sample(&logits[j * vocab..(j + 1) * vocab], pos as u64);
                if !end.contains(&t) {
                    texts[i].push(t);
                    next.push(t);
                    still.push(i);
                }
            }
            open = still;
            if open.is_empty() || step + 1 == max_new {
                break;
            }
            let mut seqs: Vec<Sequence<'_>> = caches
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| open.contains(i))
                .map(|(_, c)| Sequence::new(pos, 1, c))
                .collect();
            let h = model.run_layers_batch(all.clone(), model.embed(&next)?, &mut seqs)?;
            for s in seqs.iter_mut() {
                s.cache.commit(pos + 1)?;
            }
            drop(seqs);
            logits = model.logits(&h)?;
        }
        // A request cut off at `max_new` tokens (still open) is not a whole request.
        let whole = |(i, t): &(usize, Vec<u32>)| !t.is_empty() && !open.contains(i);
        out.extend(texts.into_iter().enumerate().filter(whole).map(|(_, t)| t));
        drawn += n;
        progress(out.len(), count);
    }
    if out.is_empty() && count > 0 {
        return Err(Error::InvalidArgument(
            "the model wrote no request that ends within the limit".into(),
        ));
    }
    out.truncate(count);
    Ok(out)
}

/// One answer being decoded: from the prompt's last position on.
struct Answer {
    features: Vec<f32>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    done: bool,
}

/// The greedy next token after each row of final states.
fn greedy(model: &mut Model, h: &[f32]) -> Result<Vec<u32>> {
    let vocab = model.arch().vocab_size as usize;
    let logits = model.logits(h)?;
    Ok(logits.chunks_exact(vocab).map(argmax).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(lengths: &[(usize, usize)]) -> Corpus {
        let mut c = Corpus::new(2);
        for &(len, skip) in lengths {
            let f = vec![3.0f32; len * 2];
            let t: Vec<u32> = (0..len as u32).collect();
            c.push(&f, &f, &t, &t, skip);
        }
        c
    }

    #[test]
    fn starts_stay_inside_their_sequence_and_skip_sinks() {
        let c = corpus(&[(5, 1), (3, 0), (2, 0)]);
        // Sequence 0: positions 1..5, unroll 2 → starts 1, 2. Sequence 1: 5..8 → 5.
        assert_eq!(c.starts(2), vec![1, 2, 5]);
        // Features are stored at unit rms.
        assert!((c.features[0] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn targets_outside_the_shortlist_are_masked() {
        let mut c = corpus(&[(4, 0)]);
        c.index_targets(&[2, 0], 4);
        let (idx, mask) = c.targets_at(&[0, 1], 1);
        // Targets at positions 1 and 2 are tokens 1 (not listed) and 2 (listed first).
        assert_eq!(idx, vec![0, 0]);
        assert_eq!(mask, vec![0.0, 1.0]);
    }
}
