//! Prometheus metrics of the edge agent (prefix `seam_edge_`), served on `/metrics` by
//! `seam-edge serve --metrics-listen ADDR`: requests by route and rule, tokens, time to first
//! token, decode speed, fallbacks to local, split round trips and speculation.

use crate::runtime::engine::GenerateStats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;
use seam_shared::proto::common::{Route as RouteMsg, RouteKind};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;
type Hist = Family<Labels, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(1e-3, 2.0, 16))
}

fn tokens_per_second() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 1.5, 16))
}

/// Every metric of the agent.
pub struct EdgeMetrics {
    registry: Registry,
    /// Generate requests finished, by final `route` and policy `rule`.
    pub requests: Family<Labels, Counter>,
    /// Generate requests that failed or were refused, by `stage` (`refused`, `failed`).
    pub request_errors: Family<Labels, Counter>,
    /// Prompt and completion tokens, by `route`.
    pub prompt_tokens: Family<Labels, Counter>,
    pub completion_tokens: Family<Labels, Counter>,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: Counter,
    /// Time to first token, by `route`.
    pub time_to_first_token: Hist,
    /// Decode speed of each request, by `route`.
    pub decode_tokens_per_second: Hist,
    /// Process CPU time spent decoding, by `route` (÷ completion tokens: CPU per token).
    pub decode_cpu_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    /// Split requests that finished (or ran entirely) on the device.
    pub fallbacks: Counter,
    /// Mean decode round trip (link and worker) of each split request.
    pub split_round_trip: Histogram,
    /// Tokens settled per decode round trip of each split request.
    pub tokens_per_round_trip: Histogram,
    /// Drafts sent to the worker and accepted, by `source` (`head`, `lookup`).
    pub drafts: Family<Labels, Counter>,
    pub drafts_accepted: Family<Labels, Counter>,
    /// Per draft `position` (1, 2, ...): round trips that reached it with a draft there (every
    /// earlier draft stood), and those whose draft there stood too; their ratio is the
    /// conditional acceptance at that position.
    pub draft_position_reached: Family<Labels, Counter>,
    pub draft_position_accepted: Family<Labels, Counter>,
}

impl std::fmt::Debug for EdgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeMetrics")
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EdgeMetrics {
    pub fn new() -> EdgeMetrics {
        let mut r = Registry::with_prefix("seam_edge");
        let m = EdgeMetrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            cached_prompt_tokens: Counter::default(),
            time_to_first_token: Family::new_with_constructor(seconds),
            decode_tokens_per_second: Family::new_with_constructor(tokens_per_second),
            decode_cpu_seconds: Family::default(),
            fallbacks: Counter::default(),
            split_round_trip: Histogram::new(exponential_buckets(1e-3, 2.0, 14)),
            tokens_per_round_trip: Histogram::new(linear_buckets(1.0, 0.5, 16)),
            drafts: Family::default(),
            drafts_accepted: Family::default(),
            draft_position_reached: Family::default(),
            draft_position_accepted: Family::default(),
        };
        r.register(
            "requests",
            "Generate requests by final route and rule",
            m.requests.clone(),
        );
        r.register(
            "request_errors",
            "Generate requests refused or failed",
            m.request_errors.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens by route",
            m.prompt_tokens.clone(),
        );
        r.register(
            "completion_tokens",
            "Completion tokens by route",
            m.completion_tokens.clone(),
        );
        r.register(
            "cached_prompt_tokens",
            "Prompt tokens served from the prefix cache",
            m.cached_prompt_tokens.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Time to first token by route",
            m.time_to_first_token.clone(),
        );
        r.register(
            "decode_tokens_per_second",
            "Decode speed per request by route",
            m.decode_tokens_per_second.clone(),
        );
        r.register(
            "decode_cpu_seconds",
            "Process CPU time spent decoding, by route",
            m.decode_cpu_seconds.clone(),
        );
        r.register(
            "fallbacks",
            "Split requests finished on the device",
            m.fallbacks.clone(),
        );
        r.register(
            "split_round_trip_seconds",
            "Mean decode round trip (link and worker) per split request",
            m.split_round_trip.clone(),
        );
        r.register(
            "tokens_per_round_trip",
            "Tokens settled per decode round trip per split request",
            m.tokens_per_round_trip.clone(),
        );
        r.register("drafts", "Draft tokens sent by source", m.drafts.clone());
        r.register(
            "drafts_accepted",
            "Draft tokens accepted by source",
            m.drafts_accepted.clone(),
        );
        r.register(
            "draft_position_reached",
            "Round trips with a draft at this chain position, every earlier draft accepted",
            m.draft_position_reached.clone(),
        );
        r.register(
            "draft_position_accepted",
            "Of those, round trips whose draft at this position was accepted",
            m.draft_position_accepted.clone(),
        );
        EdgeMetrics { registry: r, ..m }
    }

    /// Counts a finished request that took `route`.
    pub fn finished(&self, stats: &GenerateStats, route: &RouteMsg) {
        let kind = if route.kind == RouteKind::Split as i32 {
            "split"
        } else {
            "local"
        };
        let by_route = vec![("route", kind.to_string())];
        self.requests
            .get_or_create(&vec![
                ("route", kind.to_string()),
                ("rule", route.rule.clone()),
            ])
            .inc();
        self.prompt_tokens
            .get_or_create(&by_route)
            .inc_by(stats.prompt_tokens as u64);
        self.completion_tokens
            .get_or_create(&by_route)
            .inc_by(stats.completion_tokens as u64);
        self.cached_prompt_tokens
            .inc_by(stats.cached_prompt_tokens as u64);
        if stats.completion_tokens > 0 {
            self.time_to_first_token
                .get_or_create(&by_route)
                .observe(stats.first_token.as_secs_f64());
        }
        if stats.completion_tokens > 1 {
            self.decode_tokens_per_second
                .get_or_create(&by_route)
                .observe(stats.decode_tokens_per_s());
        }
        self.decode_cpu_seconds
            .get_or_create(&by_route)
            .inc_by(stats.decode_cpu.as_secs_f64());
        if stats.fallback.is_some() {
            self.fallbacks.inc();
        }
        if let Some(split) = &stats.split {
            let s = &split.speculation;
            if s.decode_round_trips > 0 {
                self.split_round_trip
                    .observe(stats.decode.as_secs_f64() / f64::from(s.decode_round_trips));
                self.tokens_per_round_trip
                    .observe(s.tokens_per_round_trip());
            }
            let head = s.drafted - s.lookup_drafted.min(s.drafted);
            let head = head.saturating_sub(s.worker_drafted);
            let head_accepted = s
                .accepted
                .saturating_sub(s.lookup_accepted + s.worker_accepted);
            for (source, sent, stood) in [
                ("head", head, head_accepted),
                ("lookup", s.lookup_drafted, s.lookup_accepted),
                ("worker", s.worker_drafted, s.worker_accepted),
            ] {
                let l = vec![("source", source.to_string())];
                self.drafts.get_or_create(&l).inc_by(sent);
                self.drafts_accepted.get_or_create(&l).inc_by(stood);
            }
            for (j, (&reached, &stood)) in s.tried_at.iter().zip(&s.accepted_at).enumerate() {
                if reached == 0 {
                    continue;
                }
                let l = vec![("position", (j + 1).to_string())];
                self.draft_position_reached
                    .get_or_create(&l)
                    .inc_by(u64::from(reached));
                self.draft_position_accepted
                    .get_or_create(&l)
                    .inc_by(u64::from(stood));
            }
        }
    }

    pub fn error(&self, stage: &'static str) {
        self.request_errors
            .get_or_create(&vec![("stage", stage.to_string())])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }

    /// The `/metrics` renderer.
    pub fn renderer(self: &Arc<Self>) -> seam_shared::metrics_http::Render {
        let m = self.clone();
        Arc::new(move || m.render())
    }
}
