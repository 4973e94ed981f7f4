//! `Assistant/Embed` and `Assistant/Classify`, and the intent features of a Generate request.
//! The encoder runs on a blocking thread, one run at a time; requests over the batch limit are
//! refused before they wait for it.

use crate::error::{Error, Result};
use crate::perception::classifier::check_batch;
use crate::perception::dataset::OOS_LABEL;
use crate::perception::encoder::MAX_TEXT_BYTES;
use crate::perception::{Classification, Perception, PerceptionLimits};
use seam_shared::proto::common::RouteFeatures;
use seam_shared::proto::edge as pb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The encoder shared by the service's requests.
pub type SharedPerception = Arc<Mutex<Perception>>;

fn require(p: &Option<SharedPerception>) -> Result<SharedPerception> {
    p.clone().ok_or_else(|| {
        Error::NotConfigured(
            "this agent has no sentence encoder (start it with --encoder DIR)".into(),
        )
    })
}

async fn blocking<T: Send + 'static>(
    p: SharedPerception,
    f: impl FnOnce(&mut Perception) -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || {
        let mut guard = p.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| Error::Ort(format!("encoder task failed: {e}")))?
}

/// Embeddings of the request's texts.
pub async fn embed(
    p: &Option<SharedPerception>,
    limits: PerceptionLimits,
    req: pb::EmbedRequest,
) -> Result<pb::EmbedResponse> {
    let p = require(p)?;
    check_batch(req.texts.len(), limits)?;
    blocking(p, move |p| {
        let texts: Vec<&str> = req.texts.iter().map(String::as_str).collect();
        let embeddings = p
            .embed(&texts)?
            .into_iter()
            .map(|e| pb::Embedding {
                values: e.values,
                tokens: e.tokens as u32,
                truncated: e.truncated,
            })
            .collect();
        Ok(pb::EmbedResponse {
            embeddings,
            model: p.name().to_string(),
        })
    })
    .await
}

/// The intents of the request's text.
pub async fn classify(
    p: &Option<SharedPerception>,
    req: pb::ClassifyRequest,
) -> Result<pb::ClassifyResponse> {
    let p = require(p)?;
    if req.text.trim().is_empty() {
        return Err(Error::InvalidArgument("text is empty".into()));
    }
    let c = blocking(p, move |p| p.classify(&req.text, req.top_k as usize)).await?;
    Ok(pb::ClassifyResponse {
        intent: c.intent,
        domain: c.domain,
        confidence: c.confidence,
        out_of_scope: c.out_of_scope,
        top: c
            .top
            .into_iter()
            .map(|s| pb::IntentScore {
                intent: s.intent,
                domain: s.domain,
                score: s.score,
            })
            .collect(),
        tokens: c.tokens as u32,
        truncated: c.truncated,
    })
}

/// The intent of a Generate prompt and the time it took (blocking; run it on the request's
/// blocking thread). Prompts longer than the encoder reads are cut first.
pub fn prompt_intent(p: &SharedPerception, prompt: &str) -> Result<(Classification, Duration)> {
    let started = Instant::now();
    let mut cut = prompt.len().min(MAX_TEXT_BYTES);
    while !prompt.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut guard = p.lock().unwrap_or_else(|e| e.into_inner());
    let c = guard.classify(&prompt[..cut], 1)?;
    Ok((c, started.elapsed()))
}

/// Routing features of a request from its intent (if an encoder is loaded) and its lengths.
pub fn route_features(
    intent: Option<&Classification>,
    policy: Option<&seam_router::policy::Features>,
    prompt_tokens: u32,
    max_tokens: u32,
) -> RouteFeatures {
    let mut f = RouteFeatures {
        prompt_tokens,
        max_tokens,
        ..Default::default()
    };
    if let Some(p) = policy {
        use seam_router::policy::Thermal;
        use seam_shared::proto::common::ThermalState;
        f.battery = Some(p.battery as f32);
        f.thermal = match p.thermal {
            Thermal::Nominal => ThermalState::Nominal,
            Thermal::Fair => ThermalState::Fair,
            Thermal::Serious => ThermalState::Serious,
            Thermal::Critical => ThermalState::Critical,
        } as i32;
        f.rtt_ms = p.rtt_ms as f32;
        f.bandwidth_bps = (p.bandwidth_mbps * 1e6) as u64;
        f.local_tokens_per_s = p.local_tokens_per_s as f32;
    }
    if let Some(c) = intent {
        f.intent = c.intent.clone();
        f.domain = c.domain.clone();
        f.confidence = c.confidence;
        f.out_of_scope = c.out_of_scope || c.intent == OOS_LABEL;
    }
    f
}
