//! The OpenAI-compatible HTTP API of the agent (`seam-edge serve --http ADDR`):
//! `POST /v1/chat/completions` (streaming with server-sent events or not),
//! `POST /v1/completions`, `POST /v1/embeddings` (the sentence encoder) and `GET /v1/models`.
//!
//! Every request goes through the same [`AssistantService`] as gRPC: validation, the bounded
//! queue, routing by the app's preference or the operator's policy, metrics. Seam's figures (the
//! route, its rule, tokens per round trip, ...) ride in a `seam` field that OpenAI clients
//! ignore. Errors are OpenAI's error object with its status codes.

pub mod types;

use super::AssistantService;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use seam_shared::proto::common::SamplingParams;
use seam_shared::proto::edge as pb;
use seam_shared::proto::edge::assistant_server::Assistant;
use seam_shared::proto::edge::generate_event::Event;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use types::*;

/// Completion tokens when a chat request names no limit.
pub const DEFAULT_CHAT_TOKENS: u32 = 256;
/// Completion tokens when a legacy completion names no limit (OpenAI's default).
pub const DEFAULT_COMPLETION_TOKENS: u32 = 16;
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the API serves.
#[derive(Debug, Clone)]
pub struct OpenAi {
    pub service: AssistantService,
    /// Id of the language model (`GET /v1/models`, `model` in requests and answers).
    pub model: String,
    /// Id of the sentence encoder, when the agent has one.
    pub encoder: Option<String>,
    /// When the agent started (unix seconds): the models' `created`.
    pub started: u64,
}

/// The API's routes.
pub fn router(api: OpenAi) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").into_response()
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed for this endpoint",
            )
            .into_response()
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(api))
}

/// Serves the API on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: OpenAi,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api))
        .with_graceful_shutdown(stop)
        .await
}

/// An OpenAI error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let (kind, code) = match status {
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("not_found")),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", Some("rate_limit_exceeded")),
            StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", Some("request_too_large")),
            s if s.is_client_error() => ("invalid_request_error", None),
            _ => ("server_error", None),
        };
        ApiError {
            status,
            body: ErrorBody {
                error: ErrorDetail {
                    message: message.into(),
                    kind,
                    param: None,
                    code,
                },
            },
        }
    }

    fn param(mut self, param: &str) -> ApiError {
        self.body.error.param = Some(param.to_string());
        self
    }

    fn bad(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message).param(param)
    }

    fn model_not_found(model: &str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist on this device"),
        )
        .param("model");
        e.body.error.code = Some("model_not_found");
        e
    }

    /// The HTTP form of a gRPC status from the service.
    fn from_status(s: &tonic::Status) -> ApiError {
        let status = match s.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, s.message().to_string())
    }

    fn json(&self) -> String {
        serde_json::to_string(&self.body).expect("error bodies serialize")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

/// Parses a JSON body, with OpenAI's error object for every way it can be wrong.
fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        let status = if status == StatusCode::PAYLOAD_TOO_LARGE {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, e.body_text())
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:04x}", unix_now())
}

fn check_model(model: &str, asked: Option<&str>) -> Result<(), ApiError> {
    match asked {
        Some(m) if m != model => Err(ApiError::model_not_found(m)),
        _ => Ok(()),
    }
}

/// Which completion endpoint a body was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completion,
}

/// The service's wire request for a JSON `body` posted to `endpoint` of an agent serving
/// `model`, or the OpenAI error it gets: what the handlers run before the request reaches the
/// service (and what the fuzz targets feed arbitrary bytes to).
pub fn wire_request(
    endpoint: Endpoint,
    body: &[u8],
    model: &str,
) -> Result<pb::GenerateRequest, ApiError> {
    let invalid = |e: serde_json::Error| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"))
    };
    match endpoint {
        Endpoint::Chat => chat_request(model, &serde_json::from_slice(body).map_err(invalid)?),
        Endpoint::Completion => {
            completion_request(model, &serde_json::from_slice(body).map_err(invalid)?)
        }
    }
}

/// The generation fields shared by both endpoints, on a wire request.
fn apply_sampling(
    s: &Sampling,
    default_tokens: u32,
    req: &mut pb::GenerateRequest,
) -> Result<(), ApiError> {
    if let Some(n) = s.n
        && n != 1
    {
        return Err(ApiError::bad("n", "only n = 1 is supported"));
    }
    req.max_tokens = s
        .max_completion_tokens
        .or(s.max_tokens)
        .unwrap_or(default_tokens);
    if req.max_tokens == 0 {
        return Err(ApiError::bad("max_tokens", "max_tokens must be at least 1"));
    }
    // OpenAI samples at temperature 1 unless told otherwise.
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(
            "temperature",
            "temperature must be within [0, 2]",
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad("top_p", "top_p must be within (0, 1]"));
    }
    req.sampling = Some(SamplingParams {
        temperature,
        top_p,
        seed: s.seed.unwrap_or(0),
        top_k: None,
    });
    req.stop = s.stop.clone().map(OneOrMany::into_vec).unwrap_or_default();
    if req.stop.len() > 4 {
        return Err(ApiError::bad("stop", "at most 4 stop sequences"));
    }
    req.route = match s.seam_route.as_deref() {
        None | Some("auto") => pb::RoutePreference::Auto,
        Some("local") => pb::RoutePreference::Local,
        Some("split") => pb::RoutePreference::Split,
        Some(other) => {
            return Err(ApiError::bad(
                "seam_route",
                format!("seam_route must be auto, local or split, not {other:?}"),
            ));
        }
    } as i32;
    req.context_overflow = match s.seam_context_overflow.as_deref() {
        None => pb::ContextOverflow::Unspecified,
        Some(name) => name
            .parse()
            .map(crate::server::convert::overflow_to_wire)
            .map_err(|e: String| ApiError::bad("seam_context_overflow", e))?,
    } as i32;
    Ok(())
}

fn message_text(i: usize, m: &types::ChatMessage) -> Result<String, ApiError> {
    match &m.content {
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad(
                            &format!("messages[{i}].content"),
                            format!("content parts of type {kind:?} are not supported (text only)"),
                        ));
                    }
                }
            }
            Ok(text)
        }
        None => Err(ApiError::bad(
            &format!("messages[{i}].content"),
            "every message needs text content",
        )),
    }
}

/// A chat completion request as the service's wire request.
fn chat_request(model: &str, r: &ChatCompletionRequest) -> Result<pb::GenerateRequest, ApiError> {
    check_model(model, r.model.as_deref())?;
    if r.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad("tools", "this model has no tool calling"));
    }
    if r.logprobs == Some(true) {
        return Err(ApiError::bad("logprobs", "logprobs are not supported"));
    }
    if r.messages.is_empty() {
        return Err(ApiError::bad("messages", "messages must not be empty"));
    }
    let messages = r
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // OpenAI's newer name for the system role.
            let role = if m.role == "developer" {
                "system"
            } else {
                m.role.as_str()
            };
            Ok(pb::ChatMessage {
                role: role.to_string(),
                content: message_text(i, m)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut req = pb::GenerateRequest {
        messages,
        chat: true,
        ..Default::default()
    };
    apply_sampling(&r.sampling, DEFAULT_CHAT_TOKENS, &mut req)?;
    Ok(req)
}

/// The final answer of a stream, collected: text, final event.
async fn collect(
    api: &OpenAi,
    req: pb::GenerateRequest,
) -> Result<(String, pb::FinalEvent), ApiError> {
    let mut stream = api
        .service
        .generate(tonic::Request::new(req))
        .await
        .map_err(|s| ApiError::from_status(&s))?
        .into_inner();
    let mut text = String::new();
    while let Some(ev) = stream.next().await {
        match ev.map_err(|s| ApiError::from_status(&s))?.event {
            Some(Event::Token(t)) => text.push_str(&t.text),
            Some(Event::Final(f)) => return Ok((text, f)),
            None => {}
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the answer ended without a final event",
    ))
}

fn finish_reason(f: &pb::FinalEvent) -> &'static str {
    match pb::FinishReason::try_from(f.finish_reason) {
        Ok(pb::FinishReason::Length) | Ok(pb::FinishReason::Deadline) => "length",
        _ => "stop",
    }
}

fn usage(f: &pb::FinalEvent) -> Usage {
    Usage {
        prompt_tokens: f.prompt_tokens,
        completion_tokens: f.completion_tokens,
        total_tokens: f.prompt_tokens + f.completion_tokens,
    }
}

fn extra(f: &pb::FinalEvent) -> SeamExtra {
    let route = f.route.clone().unwrap_or_default();
    let timings = f.timings.unwrap_or_default();
    SeamExtra {
        route: if route.kind == seam_shared::proto::common::RouteKind::Split as i32 {
            "split".into()
        } else {
            "local".into()
        },
        split_layer: route.split_layer,
        rule: route.rule,
        reason: route.reason,
        policy_version: route.policy_version,
        finish: pb::FinishReason::try_from(f.finish_reason)
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("FINISH_REASON_")
                    .to_lowercase()
            })
            .unwrap_or_default(),
        cached_prompt_tokens: f.cached_prompt_tokens,
        tokens_per_round_trip: f.tokens_per_round_trip,
        drafted_tokens: f.drafted_tokens,
        accepted_draft_tokens: f.accepted_draft_tokens,
        decode_tokens_per_second: timings.decode_tokens_per_s,
        context_overflow: f.context_overflow.clone(),
        truncated_prompt_tokens: f.truncated_prompt_tokens,
        evicted_tokens: f.evicted_tokens,
        time_to_first_token_ms: timings.first_token_ms,
        prefill_ms: timings.prefill_ms,
    }
}

async fn chat_completions(
    State(api): State<Arc<OpenAi>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r: ChatCompletionRequest = parse(body)?;
    let req = chat_request(&api.model, &r)?;
    let id = request_id("chatcmpl");
    if r.sampling.stream {
        let usage_too = r
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return stream_chat(api, req, id, usage_too).await;
    }
    let (text, f) = collect(&api, req).await?;
    Ok(axum::Json(ChatCompletion {
        id,
        object: "chat.completion",
        created: unix_now(),
        model: api.model.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: text,
            },
            finish_reason: finish_reason(&f),
            logprobs: None,
        }],
        usage: usage(&f),
        seam: extra(&f),
    })
    .into_response())
}

fn sse_json<T: serde::Serialize>(v: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).expect("chunks serialize"))
}

/// Streams a chat completion as server-sent events: a first chunk with the role, one chunk per
/// piece of text, one with the finish reason (and Seam's figures), the usage if asked, `[DONE]`.
/// An error after the stream started arrives as an event with OpenAI's error object.
async fn stream_chat(
    api: Arc<OpenAi>,
    req: pb::GenerateRequest,
    id: String,
    usage_too: bool,
) -> Result<Response, ApiError> {
    let mut events = api
        .service
        .generate(tonic::Request::new(req))
        .await
        .map_err(|s| ApiError::from_status(&s))?
        .into_inner();
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let created = unix_now();
    let model = api.model.clone();
    tokio::spawn(async move {
        let chunk = |delta: Delta, finish: Option<&'static str>| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created,
            model: model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
            }],
            usage: None,
            seam: None,
        };
        let first = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
        };
        if tx.send(Ok(sse_json(&chunk(first, None)))).await.is_err() {
            return;
        }
        while let Some(ev) = events.next().await {
            let out = match ev {
                Ok(pb::GenerateEvent {
                    event: Some(Event::Token(t)),
                }) if !t.text.is_empty() => {
                    let delta = Delta {
                        role: None,
                        content: Some(t.text),
                    };
                    vec![sse_json(&chunk(delta, None))]
                }
                Ok(pb::GenerateEvent {
                    event: Some(Event::Final(f)),
                }) => {
                    let mut last = chunk(Delta::default(), Some(finish_reason(&f)));
                    last.seam = Some(extra(&f));
                    let mut out = vec![sse_json(&last)];
                    if usage_too {
                        let mut u = chunk(Delta::default(), None);
                        u.choices.clear();
                        u.usage = Some(usage(&f));
                        out.push(sse_json(&u));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    out
                }
                Ok(_) => Vec::new(),
                Err(s) => vec![SseEvent::default().data(ApiError::from_status(&s).json())],
            };
            for e in out {
                // The client went away: dropping `events` cancels the generation.
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A legacy completion request as the service's wire request.
fn completion_request(model: &str, r: &CompletionRequest) -> Result<pb::GenerateRequest, ApiError> {
    check_model(model, r.model.as_deref())?;
    if r.echo || r.suffix.is_some() {
        return Err(ApiError::bad("echo", "echo and suffix are not supported"));
    }
    if r.sampling.stream {
        return Err(ApiError::bad(
            "stream",
            "stream is served on /v1/chat/completions only",
        ));
    }
    let mut prompts = r.prompt.clone().into_vec();
    if prompts.len() != 1 {
        return Err(ApiError::bad("prompt", "give exactly one prompt"));
    }
    let mut req = pb::GenerateRequest {
        prompt: prompts.remove(0),
        ..Default::default()
    };
    apply_sampling(&r.sampling, DEFAULT_COMPLETION_TOKENS, &mut req)?;
    Ok(req)
}

async fn completions(
    State(api): State<Arc<OpenAi>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r: CompletionRequest = parse(body)?;
    let (text, f) = collect(&api, completion_request(&api.model, &r)?).await?;
    Ok(axum::Json(Completion {
        id: request_id("cmpl"),
        object: "text_completion",
        created: unix_now(),
        model: api.model.clone(),
        choices: vec![TextChoice {
            index: 0,
            text,
            finish_reason: Some(finish_reason(&f)),
            logprobs: None,
        }],
        usage: Some(usage(&f)),
        seam: Some(extra(&f)),
    })
    .into_response())
}

async fn embeddings(
    State(api): State<Arc<OpenAi>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let r: EmbeddingsRequest = parse(body)?;
    let Some(encoder) = &api.encoder else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this device serves no embedding model (start the agent with --encoder)",
        ));
    };
    if let Some(m) = r.model.as_deref()
        && m != encoder
    {
        return Err(ApiError::model_not_found(m));
    }
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "encoding_format",
                format!("encoding_format must be float or base64, not {other:?}"),
            ));
        }
    };
    let texts = r.input.into_vec();
    let resp = api
        .service
        .embed(tonic::Request::new(pb::EmbedRequest { texts }))
        .await
        .map_err(|s| ApiError::from_status(&s))?
        .into_inner();
    let tokens: u32 = resp.embeddings.iter().map(|e| e.tokens).sum();
    Ok(axum::Json(EmbeddingsResponse {
        object: "list",
        data: resp
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(i, e)| EmbeddingData {
                object: "embedding",
                index: i as u32,
                embedding: vector(e.values, base64),
            })
            .collect(),
        model: encoder.clone(),
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
    .into_response())
}

fn vector(values: Vec<f32>, base64: bool) -> Vector {
    if base64 {
        use base64::Engine;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        Vector::Float(values)
    }
}

fn listed(api: &OpenAi) -> Vec<types::Model> {
    std::iter::once(&api.model)
        .chain(api.encoder.as_ref())
        .map(|id| types::Model {
            id: id.clone(),
            object: "model",
            created: api.started,
            owned_by: "seam",
        })
        .collect()
}

async fn models(State(api): State<Arc<OpenAi>>) -> Response {
    axum::Json(ModelList {
        object: "list",
        data: listed(&api),
    })
    .into_response()
}

async fn model(
    State(api): State<Arc<OpenAi>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = listed(&api).into_iter().find(|m| m.id == id);
    let m = found.ok_or_else(|| ApiError::model_not_found(&id))?;
    Ok(axum::Json(m).into_response())
}
