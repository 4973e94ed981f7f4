//! Mapping between the wire messages of `seam.edge.v1` and the engine's types, with the
//! validation of everything that comes from the app.

use super::perception::route_features;
use crate::error::{Error, Result};
use crate::perception::Classification;
use crate::runtime::engine::{FinishReason, GenerateRequest, GenerateStats};
use crate::runtime::sampler::SamplingParams;
use seam_shared::proto::common::{Route, RouteKind};
use seam_shared::proto::edge as pb;
use std::time::{Duration, Instant};

/// Largest prompt accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 256 << 10;

/// The engine request for a wire request received at `now`, with the tighter of the
/// request's own deadline and the gRPC deadline header.
pub fn generate_request(
    req: pb::GenerateRequest,
    grpc_timeout: Option<Duration>,
    now: Instant,
) -> Result<GenerateRequest> {
    if req.prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "prompt of {} bytes is above the limit of {MAX_PROMPT_BYTES}",
            req.prompt.len()
        )));
    }
    if req.route == pb::RoutePreference::Split as i32 {
        return Err(Error::InvalidArgument(
            "route SPLIT needs a cloud worker, which this agent is not connected to".into(),
        ));
    }
    let s = req.sampling.unwrap_or_default();
    if s.top_k.is_some() {
        return Err(Error::InvalidArgument(
            "top_k is not supported; use top_p".into(),
        ));
    }
    let sampling = SamplingParams {
        temperature: s.temperature,
        // proto3 default 0 means "not set".
        top_p: if s.top_p == 0.0 { 1.0 } else { s.top_p },
        seed: s.seed,
    };
    let own = (req.deadline_ms > 0).then(|| Duration::from_millis(req.deadline_ms));
    let deadline = match (own, grpc_timeout) {
        (Some(a), Some(b)) => Some(now + a.min(b)),
        (a, b) => a.or(b).map(|d| now + d),
    };
    Ok(GenerateRequest {
        system: req.system_prompt,
        prompt: req.prompt,
        chat: req.chat,
        max_tokens: req.max_tokens,
        sampling,
        stop: req.stop,
        deadline,
    })
}

/// The final event of a finished request; `intent` and `route` are the classification of its
/// prompt and the time it took (before generation started).
pub fn final_event(
    stats: &GenerateStats,
    intent: Option<&Classification>,
    max_tokens: u32,
    route: Duration,
) -> pb::GenerateEvent {
    let finish = match stats.finish {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::StopString => pb::FinishReason::StopString,
        FinishReason::Deadline => pb::FinishReason::Deadline,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    pb::GenerateEvent {
        event: Some(pb::generate_event::Event::Final(pb::FinalEvent {
            prompt_tokens: stats.prompt_tokens as u32,
            completion_tokens: stats.completion_tokens as u32,
            cached_prompt_tokens: stats.cached_prompt_tokens as u32,
            finish_reason: finish as i32,
            timings: Some(pb::Timings {
                prefill_ms: ms(stats.prefill),
                decode_ms: ms(stats.decode),
                total_ms: ms(stats.total + route),
                prefill_tokens_per_s: stats.prefill_tokens_per_s(),
                decode_tokens_per_s: stats.decode_tokens_per_s(),
                first_token_ms: ms(stats.first_token),
                route_ms: ms(route),
            }),
            route: Some(Route {
                kind: RouteKind::Local as i32,
                split_layer: 0,
                reason: "no gateway configured: the device runs every layer".into(),
                rule: String::new(),
                policy_version: 0,
            }),
            features: Some(route_features(
                intent,
                stats.prompt_tokens as u32,
                max_tokens,
            )),
            kv_bytes: stats.kv_bytes as u64,
            ..Default::default()
        })),
    }
}

pub fn token_event(id: u32, index: usize, text: String) -> pb::GenerateEvent {
    pb::GenerateEvent {
        event: Some(pb::generate_event::Event::Token(pb::TokenEvent {
            id,
            text,
            index: index as u32,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: &str) -> pb::GenerateRequest {
        pb::GenerateRequest {
            prompt: prompt.into(),
            max_tokens: 8,
            ..Default::default()
        }
    }

    #[test]
    fn the_tighter_deadline_wins() {
        let now = Instant::now();
        let mut r = req("hi");
        r.deadline_ms = 5_000;
        let g = generate_request(r.clone(), Some(Duration::from_secs(1)), now).unwrap();
        assert_eq!(g.deadline, Some(now + Duration::from_secs(1)));
        let g = generate_request(r, None, now).unwrap();
        assert_eq!(g.deadline, Some(now + Duration::from_secs(5)));
        let g = generate_request(req("hi"), None, now).unwrap();
        assert_eq!(g.deadline, None);
    }

    #[test]
    fn unset_top_p_means_no_cut_and_oversized_prompts_are_refused() {
        let g = generate_request(req("hi"), None, Instant::now()).unwrap();
        assert_eq!(g.sampling.top_p, 1.0);
        let big = "x".repeat(MAX_PROMPT_BYTES + 1);
        assert!(matches!(
            generate_request(req(&big), None, Instant::now()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
