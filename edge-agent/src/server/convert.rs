//! Mapping between the wire messages of `seam.edge.v1` and the engine's types, with the
//! validation of everything that comes from the app.

use super::perception::route_features;
use crate::error::{Error, Result};
use crate::perception::Classification;
use crate::runtime::engine::{FinishReason, GenerateRequest, GenerateStats};
use crate::runtime::sampler::SamplingParams;
use seam_shared::proto::common::Route;
use seam_shared::proto::edge as pb;
use std::time::{Duration, Instant};

/// Largest prompt accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 256 << 10;

/// What the app asked about the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAsk {
    /// Route preference SPLIT.
    pub split: bool,
    /// Route preference LOCAL.
    pub local: bool,
    /// The split layer it named, if any.
    pub layer: Option<u32>,
}

/// The engine request for a wire request received at `now`, with the tighter of the
/// request's own deadline and the gRPC deadline header, and the app's route preference.
pub fn generate_request(
    req: pb::GenerateRequest,
    grpc_timeout: Option<Duration>,
    now: Instant,
) -> Result<(GenerateRequest, RouteAsk)> {
    if req.prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "prompt of {} bytes is above the limit of {MAX_PROMPT_BYTES}",
            req.prompt.len()
        )));
    }
    let preference = pb::RoutePreference::try_from(req.route)
        .map_err(|_| Error::InvalidArgument(format!("unknown route preference {}", req.route)))?;
    let ask = RouteAsk {
        split: preference == pb::RoutePreference::Split,
        local: preference == pb::RoutePreference::Local,
        layer: (req.split_layer > 0).then_some(req.split_layer),
    };
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
    Ok((
        GenerateRequest {
            system: req.system_prompt,
            prompt: req.prompt,
            chat: req.chat,
            max_tokens: req.max_tokens,
            sampling,
            stop: req.stop,
            deadline,
            draft_tokens: req.draft_tokens,
        },
        ask,
    ))
}

/// The final event of a finished request; `intent` and `route_time` are the classification of
/// its prompt and the time it took (before generation started), `route` the route it took.
pub fn final_event(
    stats: &GenerateStats,
    intent: Option<&Classification>,
    features: Option<&seam_router::policy::Features>,
    max_tokens: u32,
    route_time: Duration,
    route: Route,
) -> pb::GenerateEvent {
    let counters = stats.split.as_ref().map(|s| s.counters).unwrap_or_default();
    let spec = stats
        .split
        .as_ref()
        .map(|s| s.speculation)
        .unwrap_or_default();
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
                total_ms: ms(stats.total + route_time),
                prefill_tokens_per_s: stats.prefill_tokens_per_s(),
                decode_tokens_per_s: stats.decode_tokens_per_s(),
                first_token_ms: ms(stats.first_token),
                route_ms: ms(route_time),
            }),
            route: Some(route),
            features: Some(route_features(
                intent,
                features,
                stats.prompt_tokens as u32,
                max_tokens,
            )),
            kv_bytes: stats.kv_bytes as u64,
            bytes_sent: counters.bytes_sent,
            bytes_received: counters.bytes_received,
            round_trips: counters.round_trips,
            drafted_tokens: spec.drafted as u32,
            accepted_draft_tokens: spec.accepted as u32,
            token_round_trips: spec.token_steps,
            acceptance_rate: spec.acceptance_rate(),
            tokens_per_round_trip: stats.tokens_per_round_trip(),
            decode_round_trips: spec.decode_round_trips,
            acceptance_by_position: spec.acceptance_by_position(),
            lookup_drafted_tokens: spec.lookup_drafted as u32,
            lookup_accepted_tokens: spec.lookup_accepted as u32,
            cpu_ms_per_token: stats.cpu_ms_per_token(),
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
        let g = generate_request(r.clone(), Some(Duration::from_secs(1)), now)
            .unwrap()
            .0;
        assert_eq!(g.deadline, Some(now + Duration::from_secs(1)));
        let g = generate_request(r, None, now).unwrap().0;
        assert_eq!(g.deadline, Some(now + Duration::from_secs(5)));
        let g = generate_request(req("hi"), None, now).unwrap().0;
        assert_eq!(g.deadline, None);
    }

    #[test]
    fn route_preferences_are_read_and_unknown_ones_refused() {
        let mut r = req("hi");
        r.route = pb::RoutePreference::Split as i32;
        r.split_layer = 8;
        let (_, ask) = generate_request(r.clone(), None, Instant::now()).unwrap();
        assert_eq!(
            ask,
            RouteAsk {
                split: true,
                local: false,
                layer: Some(8)
            }
        );
        r.route = 9;
        assert!(generate_request(r, None, Instant::now()).is_err());
    }

    #[test]
    fn unset_top_p_means_no_cut_and_oversized_prompts_are_refused() {
        let g = generate_request(req("hi"), None, Instant::now()).unwrap().0;
        assert_eq!(g.sampling.top_p, 1.0);
        let big = "x".repeat(MAX_PROMPT_BYTES + 1);
        assert!(matches!(
            generate_request(req(&big), None, Instant::now()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
