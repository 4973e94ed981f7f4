//! `seam.edge.v1.Assistant`: generation runs on a blocking thread (never on the executor),
//! one request at a time per model, behind a bounded queue.

use super::convert;
use super::metrics::EdgeMetrics;
use super::perception::{self, SharedPerception};
use super::routing::DevicePolicy;
use crate::error::Error;
use crate::link::CloudEndpoint;
use crate::perception::PerceptionLimits;
use crate::runtime::context::Overflow;
use crate::runtime::engine::{Engine, Route, validate};
use seam_router::policy::{Decision, Route as PolicyRoute};
use seam_shared::proto::common::{Route as RouteMsg, RouteKind};
use seam_shared::proto::edge as pb;
use seam_shared::proto::edge::assistant_server::Assistant;
use seam_shared::tensor::WireDtype;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Bounds of the service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    /// Generate requests running or waiting; more are refused with RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// Embed batch size.
    pub perception: PerceptionLimits,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            max_queued: 8,
            perception: PerceptionLimits::default(),
        }
    }
}

/// The cloud worker that requests routed SPLIT continue on.
#[derive(Debug, Clone)]
pub struct SplitTarget {
    pub endpoint: CloudEndpoint,
    /// Split layer when a request names none.
    pub default_layer: u32,
    pub wire: WireDtype,
    /// Drafts per round trip for requests that do not say (`None`: adaptive).
    pub draft_default: Option<u32>,
}

/// The Assistant service over one engine.
#[derive(Debug, Clone)]
pub struct AssistantService {
    engine: Arc<Mutex<Engine>>,
    queue: Arc<Semaphore>,
    context: u32,
    overflow: Overflow,
    split: Option<SplitTarget>,
    /// Sentence encoder and intent head, when the agent was started with one.
    perception: Option<SharedPerception>,
    /// The operator's routing policy, when the agent was started with one.
    policy: Option<Arc<DevicePolicy>>,
    limits: ServiceLimits,
    metrics: Arc<EdgeMetrics>,
}

/// How a request's route is settled.
#[derive(Debug, Clone)]
enum RouteChoice {
    /// Already known before the request runs (the app's preference, or no policy).
    Fixed(RouteMsg),
    /// By the policy, once the prompt's features are known.
    Policy(Arc<DevicePolicy>),
}

impl AssistantService {
    pub fn new(
        engine: Arc<Mutex<Engine>>,
        limits: ServiceLimits,
        split: Option<SplitTarget>,
    ) -> Self {
        let (context, overflow) = {
            let e = engine.lock().unwrap_or_else(|e| e.into_inner());
            (e.context() as u32, e.overflow())
        };
        AssistantService {
            engine,
            queue: Arc::new(Semaphore::new(limits.max_queued)),
            context,
            overflow,
            split,
            perception: None,
            policy: None,
            limits,
            metrics: Arc::default(),
        }
    }

    /// Counts requests into `metrics` (a fresh set otherwise).
    pub fn with_metrics(mut self, metrics: Arc<EdgeMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Routes requests that leave the route to the device by `policy`.
    pub fn with_policy(mut self, policy: Arc<DevicePolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Serves Embed and Classify with `perception` and reports the intent of every Generate
    /// request in its final event.
    pub fn with_perception(mut self, perception: SharedPerception) -> Self {
        self.perception = Some(perception);
        self
    }

    /// The route of a request: SPLIT when it asks for it and a worker is configured (at its
    /// layer or the default), LOCAL when it asks for that, else the policy's (LOCAL without
    /// one).
    fn choose_route(&self, ask: &convert::RouteAsk) -> Result<RouteChoice, Error> {
        if !ask.split {
            if let (false, Some(p)) = (ask.local, &self.policy) {
                return Ok(RouteChoice::Policy(p.clone()));
            }
            return Ok(RouteChoice::Fixed(RouteMsg {
                kind: RouteKind::Local as i32,
                reason: if ask.local {
                    "the app asked for local".into()
                } else {
                    "no routing policy configured: the device runs every layer".into()
                },
                rule: if ask.local { "override" } else { "default" }.into(),
                ..Default::default()
            }));
        }
        let target = self.split.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "route SPLIT needs a cloud worker, which this agent is not connected to".into(),
            )
        })?;
        let layer = ask.layer.unwrap_or(target.default_layer);
        Ok(RouteChoice::Fixed(RouteMsg {
            kind: RouteKind::Split as i32,
            split_layer: layer,
            reason: format!("the app asked for split({layer})"),
            rule: "override".into(),
            policy_version: 0,
        }))
    }
}

/// The route message of a policy decision; a split with no worker configured runs locally.
fn decided_route(d: &Decision, worker: bool) -> Result<RouteMsg, Error> {
    let (kind, layer, reason) = match &d.route {
        PolicyRoute::Local => (RouteKind::Local, 0, d.why.clone()),
        PolicyRoute::Split { layer } if worker => (RouteKind::Split, *layer, d.why.clone()),
        PolicyRoute::Split { layer } => (
            RouteKind::Local,
            0,
            format!("split({layer}) chosen, but no cloud worker is configured: local"),
        ),
        PolicyRoute::Reject { reason } => {
            return Err(Error::Rejected(format!("rule {}: {reason}", d.rule)));
        }
    };
    Ok(RouteMsg {
        kind: kind as i32,
        split_layer: layer,
        reason,
        rule: d.rule.clone(),
        policy_version: d.policy_version,
    })
}

#[tonic::async_trait]
impl Assistant for AssistantService {
    type GenerateStream = ReceiverStream<Result<pb::GenerateEvent, Status>>;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let (mut req, choice) =
            convert::generate_request(request.into_inner(), timeout, Instant::now())
                .and_then(|(r, ask)| validate(&r, self.context, self.overflow).map(|_| (r, ask)))
                .and_then(|(r, ask)| Ok((r, self.choose_route(&ask)?)))
                .map_err(|e| {
                    tracing::info!(error = %e, "generate refused");
                    self.metrics.error("refused");
                    e.to_status()
                })?;
        let permit = self.queue.clone().try_acquire_owned().map_err(|_| {
            self.metrics.error("refused");
            Error::ResourceExhausted {
                reason: "too many generate requests queued on this device".into(),
                retry_after: Some(Duration::from_millis(500)),
            }
            .to_status()
        })?;
        let (tx, rx) = mpsc::channel(64);
        let engine = self.engine.clone();
        let encoder = self.perception.clone();
        let split = self.split.clone();
        let observer = self.policy.clone();
        let metrics = self.metrics.clone();
        let handle = tokio::runtime::Handle::current();
        let span = tracing::info_span!(
            "generate",
            prompt_bytes = req.prompt.len(),
            max_tokens = req.max_tokens,
        );
        if req.draft_tokens.is_none() {
            req.draft_tokens = self.split.as_ref().and_then(|t| t.draft_default);
        }
        tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let _permit = permit;
            let fail = |e: Error| {
                tracing::info!(error = %e, "generate refused");
                metrics.error("refused");
                let _ = tx.blocking_send(Err(e.to_status()));
            };
            // The features the route is chosen on, computed once per request.
            let intent = match encoder
                .as_ref()
                .map(|p| perception::prompt_intent(p, &req.prompt))
            {
                Some(Ok((c, took))) => Some((c, took)),
                Some(Err(e)) => return fail(e),
                None => None,
            };
            if let Some((c, took)) = &intent {
                tracing::info!(
                    intent = %c.intent,
                    confidence = c.confidence,
                    out_of_scope = c.out_of_scope,
                    route_ms = took.as_secs_f64() * 1e3,
                    "classified"
                );
            }
            let mut engine = engine.lock().unwrap_or_else(|e| e.into_inner());
            let (mut route, features) = match &choice {
                RouteChoice::Fixed(r) => (r.clone(), None),
                RouteChoice::Policy(p) => {
                    let prompt_tokens = match engine.prompt_tokens(&req) {
                        Ok(ids) => ids.len() as u32,
                        Err(e) => return fail(e),
                    };
                    let f = p.features(
                        intent.as_ref().map(|(c, _)| c),
                        prompt_tokens,
                        req.max_tokens,
                        std::time::SystemTime::now(),
                    );
                    match decided_route(&p.decide(&f), split.is_some()) {
                        Ok(r) => (r, Some(f)),
                        Err(e) => return fail(e),
                    }
                }
            };
            tracing::info!(
                route = route.kind,
                split_layer = route.split_layer,
                rule = %route.rule,
                reason = %route.reason,
                "route chosen"
            );
            let mut link = (route.kind == RouteKind::Split as i32)
                .then_some(split.as_ref())
                .flatten()
                .map(|t| (t.endpoint.link(handle.clone()), t.wire));
            let routed = match &mut link {
                Some((link, wire)) => Route::Split {
                    layer: route.split_layer,
                    wire: *wire,
                    link: &mut **link,
                },
                None => Route::Local,
            };
            let result = engine.generate_routed(&req, routed, |t| {
                tx.blocking_send(Ok(convert::token_event(t.id, t.index, t.text)))
                    .is_ok()
            });
            let event = match result {
                Ok(stats) => {
                    // The cloud half was refused or went away: say where the answer came from.
                    if let Some(why) = &stats.fallback {
                        if stats.split.is_none() {
                            route.kind = RouteKind::Local as i32;
                            route.split_layer = 0;
                        }
                        route.reason = format!("{} ({why})", route.reason);
                    }
                    tracing::info!(
                        prompt_tokens = stats.prompt_tokens,
                        cached = stats.cached_prompt_tokens,
                        completion_tokens = stats.completion_tokens,
                        decode_tok_s = stats.decode_tokens_per_s(),
                        finish = ?stats.finish,
                        "generate done"
                    );
                    // Every request measures the device and the link, whoever chose its route.
                    if let Some(p) = &observer {
                        p.observe(&stats);
                    }
                    metrics.finished(&stats, &route);
                    let (c, took) =
                        intent.map_or((None, Default::default()), |(c, t)| (Some(c), t));
                    Ok(convert::final_event(
                        &stats,
                        c.as_ref(),
                        features.as_ref(),
                        req.max_tokens,
                        took,
                        route,
                    ))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "generate failed");
                    metrics.error("failed");
                    Err(e.to_status())
                }
            };
            let _ = tx.blocking_send(event);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let req = request.into_inner();
        let texts = req.texts.len();
        perception::embed(&self.perception, self.limits.perception, req)
            .await
            .map(Response::new)
            .map_err(|e| {
                tracing::info!(error = %e, texts, "embed refused");
                e.to_status()
            })
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        perception::classify(&self.perception, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| {
                tracing::info!(error = %e, "classify refused");
                e.to_status()
            })
    }
}

/// The `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
fn grpc_timeout(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(v)
}

fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeout_header_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }
}
