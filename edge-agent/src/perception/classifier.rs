//! A loaded encoder package: sentence embeddings and intent classification (best intents with
//! probabilities and domains, and the out-of-scope decision) for the app API, the CLI and the
//! routing features of every Generate request.

use super::dataset::OOS_LABEL;
use super::encoder::{Embedding, Encoder};
use super::head::{IntentHead, top_k};
use crate::error::{Error, Result};
use seam_shared::package::EncoderPackage;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bounds of the perception API.
#[derive(Debug, Clone, Copy)]
pub struct PerceptionLimits {
    /// Most texts in one Embed call; more is RESOURCE_EXHAUSTED.
    pub max_batch: usize,
}

/// The wire contract's bound on Embed batches.
pub const MAX_BATCH_LIMIT: usize = 64;

impl Default for PerceptionLimits {
    fn default() -> Self {
        PerceptionLimits {
            max_batch: MAX_BATCH_LIMIT,
        }
    }
}

/// One intent with its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IntentScore {
    pub intent: String,
    pub domain: String,
    pub score: f32,
}

/// The classification of one text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Classification {
    /// Best intent, or `oos` when out of scope.
    pub intent: String,
    /// Domain of `intent`; empty when out of scope.
    pub domain: String,
    /// Probability of the best intent.
    pub confidence: f32,
    pub out_of_scope: bool,
    /// Best intents, most probable first.
    pub top: Vec<IntentScore>,
    /// Encoder tokens used and whether the text was cut.
    pub tokens: usize,
    pub truncated: bool,
}

/// Encoder, head, labels and threshold of one package.
pub struct Perception {
    package: EncoderPackage,
    encoder: Encoder,
    head: IntentHead,
    /// `(label, domain)` by class index.
    labels: Vec<(String, String)>,
    threshold: f32,
    limits: PerceptionLimits,
    load_time: Duration,
}

impl std::fmt::Debug for Perception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Perception")
            .field("dir", &self.package.dir())
            .field("digest", &self.package.digest())
            .finish_non_exhaustive()
    }
}

impl Perception {
    /// Opens and verifies the encoder package in `dir`. `threads` sizes ONNX Runtime's
    /// process-wide pool if this is the first model of the process.
    pub fn load(dir: &Path, threads: usize, limits: PerceptionLimits) -> Result<Self> {
        let started = Instant::now();
        if limits.max_batch == 0 || limits.max_batch > MAX_BATCH_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "the embed batch limit must be in 1..={MAX_BATCH_LIMIT}, got {}",
                limits.max_batch
            )));
        }
        seam_shared::ort_env::init(threads)?;
        let package = EncoderPackage::open_kind(dir)?;
        let m = package.manifest();
        let (e, h) = (&m.encoder, &m.head);
        let encoder = Encoder::load(
            &package.path(&e.graph),
            &package.path(&e.tokenizer),
            e.max_tokens as usize,
            e.hidden as usize,
        )?;
        let weights_path = package.path(&h.weights);
        let bytes = std::fs::read(&weights_path).map_err(|err| Error::io(&weights_path, err))?;
        let head = IntentHead::from_bytes(&bytes, h.classes as usize, e.hidden as usize)?;
        let labels_path = package.path(&h.labels);
        let text =
            std::fs::read_to_string(&labels_path).map_err(|err| Error::io(&labels_path, err))?;
        let labels = parse_labels(&text, h.classes as usize)?;
        Ok(Perception {
            threshold: h.oos_threshold,
            package,
            encoder,
            head,
            labels,
            limits,
            load_time: started.elapsed(),
        })
    }

    pub fn package(&self) -> &EncoderPackage {
        &self.package
    }

    /// The encoder's name, e.g. `all-MiniLM-L6-v2`.
    pub fn name(&self) -> &str {
        &self.package.manifest().name
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn limits(&self) -> PerceptionLimits {
        self.limits
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// `(label, domain)` of every class, in class order.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    pub fn encoder_mut(&mut self) -> &mut Encoder {
        &mut self.encoder
    }

    /// Embeddings of 1..=`max_batch` texts.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedding>> {
        check_batch(texts.len(), self.limits)?;
        for (i, t) in texts.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(Error::InvalidArgument(format!("text {i} is empty")));
            }
        }
        self.encoder.embed(texts)
    }

    /// Classifies one text, returning the `top_k` best intents (0 = 5).
    pub fn classify(&mut self, text: &str, top_k: usize) -> Result<Classification> {
        let e = self.encoder.embed(&[text])?;
        let e = e
            .first()
            .ok_or_else(|| Error::Package("the encoder returned no embedding".into()))?;
        Ok(self.classify_embedding(e, top_k))
    }

    /// The classification of an embedding.
    pub fn classify_embedding(&self, e: &Embedding, k: usize) -> Classification {
        let p = self.head.probabilities(&e.values);
        let k = (if k == 0 { 5 } else { k }).min(p.len());
        let top: Vec<IntentScore> = top_k(&p, k)
            .into_iter()
            .map(|i| IntentScore {
                intent: self.labels[i].0.clone(),
                domain: self.labels[i].1.clone(),
                score: p[i],
            })
            .collect();
        let best = &top[0];
        let out_of_scope = best.score < self.threshold;
        Classification {
            intent: if out_of_scope {
                OOS_LABEL.into()
            } else {
                best.intent.clone()
            },
            domain: if out_of_scope {
                String::new()
            } else {
                best.domain.clone()
            },
            confidence: best.score,
            out_of_scope,
            top,
            tokens: e.tokens,
            truncated: e.truncated,
        }
    }
}

/// Refuses an Embed batch of `n` texts outside `1..=limits.max_batch` (RESOURCE_EXHAUSTED
/// above the limit).
pub fn check_batch(n: usize, limits: PerceptionLimits) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidArgument("no texts to embed".into()));
    }
    if n > limits.max_batch {
        return Err(Error::ResourceExhausted {
            reason: format!("{n} texts in one call; the limit is {}", limits.max_batch),
            retry_after: None,
        });
    }
    Ok(())
}

/// The package's `label<TAB>domain` file, one line per class.
pub fn parse_labels(text: &str, classes: usize) -> Result<Vec<(String, String)>> {
    let labels: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap_or((l, ""));
            (a.trim().to_string(), b.trim().to_string())
        })
        .collect();
    if labels.len() != classes || labels.iter().any(|(l, _)| l.is_empty()) {
        return Err(Error::Package(format!(
            "the label file has {} labels, the head {classes} classes",
            labels.len()
        )));
    }
    Ok(labels)
}

/// The package's label file for `labels`.
pub fn format_labels(labels: &[(String, String)]) -> String {
    labels.iter().map(|(l, d)| format!("{l}\t{d}\n")).collect()
}
