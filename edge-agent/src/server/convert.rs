//! Mapping between the wire messages of `seam.edge.v1` and the engine's types, with the
//! validation of everything that comes from the app.

use super::perception::route_features;
use crate::error::{Error, Result};
use crate::perception::Classification;
use crate::runtime::context::Overflow;
use crate::runtime::engine::{ChatTurn, FinishReason, GenerateRequest, GenerateStats, Speaker};
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
    let size = req.prompt.len() + req.messages.iter().map(|m| m.content.len()).sum::<usize>();
    if size > MAX_PROMPT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "prompt of {size} bytes is above the limit of {MAX_PROMPT_BYTES}"
        )));
    }
    let conversation = conversation(&req)?;
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
    let context_overflow = match pb::ContextOverflow::try_from(req.context_overflow) {
        Ok(pb::ContextOverflow::Unspecified) => None,
        Ok(pb::ContextOverflow::Error) => Some(Overflow::Error),
        Ok(pb::ContextOverflow::TruncateStart) => Some(Overflow::TruncateStart),
        Ok(pb::ContextOverflow::SlidingWindow) => Some(Overflow::SlidingWindow),
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "unknown context_overflow {}",
                req.context_overflow
            )));
        }
    };
    let own = (req.deadline_ms > 0).then(|| Duration::from_millis(req.deadline_ms));
    let deadline = match (own, grpc_timeout) {
        (Some(a), Some(b)) => Some(now + a.min(b)),
        (a, b) => a.or(b).map(|d| now + d),
    };
    Ok((
        match conversation {
            Some(c) => GenerateRequest {
                history: c.history,
                system: c.system.or(req.system_prompt),
                prompt: c.prompt,
                chat: true,
                max_tokens: req.max_tokens,
                sampling,
                stop: req.stop,
                deadline,
                draft_tokens: req.draft_tokens,
                context_overflow,
            },
            None => GenerateRequest {
                history: Vec::new(),
                system: req.system_prompt,
                prompt: req.prompt,
                chat: req.chat,
                max_tokens: req.max_tokens,
                sampling,
                stop: req.stop,
                deadline,
                draft_tokens: req.draft_tokens,
                context_overflow,
            },
        },
        ask,
    ))
}

/// How `o` is written on the wire.
pub fn overflow_to_wire(o: Overflow) -> pb::ContextOverflow {
    match o {
        Overflow::Error => pb::ContextOverflow::Error,
        Overflow::TruncateStart => pb::ContextOverflow::TruncateStart,
        Overflow::SlidingWindow => pb::ContextOverflow::SlidingWindow,
    }
}

/// Most messages in one conversation.
pub const MAX_MESSAGES: usize = 256;

/// A conversation split as the engine takes it.
struct Conversation {
    system: Option<String>,
    history: Vec<ChatTurn>,
    prompt: String,
}

/// The request's messages as a conversation (`None` without messages), or why they are not
/// one.
fn conversation(req: &pb::GenerateRequest) -> Result<Option<Conversation>> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    let Some((last, earlier)) = req.messages.split_last() else {
        return Ok(None);
    };
    if !req.prompt.is_empty() {
        return bad("give either prompt or messages, not both".into());
    }
    if req.messages.len() > MAX_MESSAGES {
        return bad(format!(
            "{} messages is above the limit of {MAX_MESSAGES}",
            req.messages.len()
        ));
    }
    if last.role != "user" {
        return bad(format!(
            "the last message must be the user's, not {:?}",
            last.role
        ));
    }
    if last.content.is_empty() {
        return bad("the last user message is empty".into());
    }
    let mut system = None;
    let mut history = Vec::with_capacity(earlier.len());
    for (i, m) in earlier.iter().enumerate() {
        let speaker = match m.role.as_str() {
            "system" if i == 0 => {
                system = Some(m.content.clone());
                continue;
            }
            "system" => return bad(format!("message {i}: a system message must come first")),
            "user" => Speaker::User,
            "assistant" => Speaker::Assistant,
            other => {
                return bad(format!(
                    "message {i}: unknown role {other:?} (system, user or assistant)"
                ));
            }
        };
        history.push(ChatTurn {
            speaker,
            text: m.content.clone(),
        });
    }
    Ok(Some(Conversation {
        system,
        history,
        prompt: last.content.clone(),
    }))
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
            degraded: stats.degraded,
            session_replays: stats.split.as_ref().map_or(0, |s| s.replays),
            degraded_reason: if stats.degraded {
                stats.fallback.clone().unwrap_or_default()
            } else {
                String::new()
            },
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
            worker_drafted_tokens: spec.worker_drafted as u32,
            worker_accepted_tokens: spec.worker_accepted as u32,
            cpu_ms_per_token: stats.cpu_ms_per_token(),
            truncated_prompt_tokens: stats.context.truncated as u32,
            evicted_tokens: stats.context.evicted as u32,
            context_overflow: stats
                .context
                .applied
                .map_or_else(String::new, |o| o.as_str().to_string()),
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

    fn messages(turns: &[(&str, &str)]) -> pb::GenerateRequest {
        pb::GenerateRequest {
            messages: turns
                .iter()
                .map(|(role, content)| pb::ChatMessage {
                    role: role.to_string(),
                    content: content.to_string(),
                })
                .collect(),
            max_tokens: 8,
            ..Default::default()
        }
    }

    #[test]
    fn messages_become_system_history_and_the_last_user_turn() {
        let r = messages(&[
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Capital of France?"),
        ]);
        let g = generate_request(r, None, Instant::now()).unwrap().0;
        assert!(g.chat);
        assert_eq!(g.system.as_deref(), Some("Be brief."));
        assert_eq!(g.prompt, "Capital of France?");
        assert_eq!(
            g.history,
            [
                ChatTurn {
                    speaker: Speaker::User,
                    text: "Hi".into()
                },
                ChatTurn {
                    speaker: Speaker::Assistant,
                    text: "Hello!".into()
                }
            ]
        );
        let text = crate::runtime::engine::render_prompt(
            &g,
            crate::runtime::chat_format::ChatFormat::ChatMl,
        );
        let order = [
            "Be brief.",
            "user\nHi",
            "assistant\nHello!",
            "user\nCapital",
        ];
        let at: Vec<usize> = order.iter().map(|n| text.find(n).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    }

    #[test]
    fn malformed_conversations_are_refused_with_the_reason() {
        let refused = |r: pb::GenerateRequest| match generate_request(r, None, Instant::now()) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(refused(messages(&[("user", "a"), ("assistant", "b")])).contains("last message"));
        assert!(
            refused(messages(&[("user", "a"), ("system", "s"), ("user", "c")]))
                .contains("system message must come first")
        );
        assert!(refused(messages(&[("tool", "x"), ("user", "a")])).contains("unknown role"));
        assert!(refused(messages(&[("user", "")])).contains("empty"));
        let mut both = messages(&[("user", "a")]);
        both.prompt = "b".into();
        assert!(refused(both).contains("not both"));
        let many: Vec<(&str, &str)> = (0..=MAX_MESSAGES).map(|_| ("user", "a")).collect();
        assert!(refused(messages(&many)).contains("limit"));
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
