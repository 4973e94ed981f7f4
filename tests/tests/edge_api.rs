//! The app API end to end: a real `seam-edge serve` on loopback, called over gRPC.

use seam_shared::proto::common::{RouteKind, SamplingParams};
use seam_shared::proto::edge::assistant_client::AssistantClient;
use seam_shared::proto::edge::{
    ChatMessage, FinalEvent, FinishReason, GenerateRequest, generate_event::Event,
};
use seam_tests::{EdgeProcess, package_dir};
use std::sync::OnceLock;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// One agent shared by the tests of this file (one model load).
fn edge() -> &'static EdgeProcess {
    static EDGE: OnceLock<EdgeProcess> = OnceLock::new();
    EDGE.get_or_init(|| EdgeProcess::start(&package_dir(), &[]))
}

async fn client() -> AssistantClient<Channel> {
    AssistantClient::connect(edge().addr.clone())
        .await
        .expect("connecting")
}

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        max_tokens,
        ..Default::default()
    }
}

/// Text, token count and final event of a whole Generate call to the shared agent.
async fn run(req: GenerateRequest) -> Result<(String, usize, FinalEvent), tonic::Status> {
    run_on(edge().addr.clone(), req).await
}

async fn run_on(
    addr: String,
    req: GenerateRequest,
) -> Result<(String, usize, FinalEvent), tonic::Status> {
    let mut client = AssistantClient::connect(addr).await.expect("connecting");
    let mut stream = client.generate(req).await?.into_inner();
    let (mut text, mut tokens, mut fin) = (String::new(), 0, None);
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(Event::Token(t)) => {
                text.push_str(&t.text);
                tokens += 1;
            }
            Some(Event::Final(f)) => fin = Some(f),
            None => {}
        }
    }
    Ok((text, tokens, fin.expect("a final event ends every stream")))
}

#[tokio::test]
async fn greedy_generation_streams_paris_and_reports_a_local_route() {
    let (text, _tokens, fin) = run(request("The capital of France is", 8)).await.unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
    assert_eq!(fin.completion_tokens, 8);
    assert_eq!(fin.prompt_tokens, 5);
    assert_eq!(fin.finish_reason, FinishReason::Length as i32);
    let route = fin.route.unwrap();
    assert_eq!(route.kind, RouteKind::Local as i32);
    assert!(!route.reason.is_empty());
    assert!(fin.kv_bytes > 0);
    let t = fin.timings.unwrap();
    assert!(t.decode_tokens_per_s > 0.0 && t.prefill_ms > 0.0);
    assert_eq!(fin.features.unwrap().prompt_tokens, 5);
}

#[tokio::test]
async fn health_service_reports_serving() {
    let channel = Channel::from_shared(edge().addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "seam.edge.v1.Assistant".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn bad_requests_get_clear_statuses() {
    let sampled = |t: f32, p: f32| {
        let mut r = request("Hello", 4);
        r.sampling = Some(SamplingParams {
            temperature: t,
            top_p: p,
            seed: 1,
            top_k: None,
        });
        r
    };
    let cases = [
        ("empty prompt", request("   ", 4), "prompt is empty"),
        ("max_tokens 0", request("Hello", 0), "max_tokens"),
        ("huge max_tokens", request("Hello", 1_000_000), "max_tokens"),
        ("negative temperature", sampled(-0.5, 1.0), "temperature"),
        ("top_p above 1", sampled(1.0, 1.5), "top_p"),
    ];
    for (what, req, needle) in cases {
        let err = run(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(needle), "{what}: {}", err.message());
    }
    // A deadline that has already passed when the agent sees the request.
    let mut req = tonic::Request::new(request("Hello", 4));
    req.set_timeout(Duration::from_nanos(1));
    let err = client().await.generate(req).await.expect_err("deadline");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // The agent is still healthy afterwards.
    assert!(run(request("The capital of France is", 2)).await.is_ok());
}

#[tokio::test]
async fn stop_strings_end_the_answer_before_the_stop() {
    let mut req = request("One, two, three, four,", 32);
    req.stop = vec![" six".into()];
    let (text, _, fin) = run(req).await.unwrap();
    assert_eq!(
        fin.finish_reason,
        FinishReason::StopString as i32,
        "{text:?}"
    );
    assert!(!text.contains("six"), "{text:?}");
    assert!(text.contains("five"), "{text:?}");
}

#[tokio::test]
async fn a_repeated_system_prompt_is_not_recomputed_and_answers_do_not_change() {
    // Its own agent: the other tests' prompts would replace the cached prefix.
    let edge = EdgeProcess::start(&package_dir(), &[]);
    let run = |req| run_on(edge.addr.clone(), req);
    let chat = |q: &str| {
        let mut r = request(q, 12);
        r.chat = true;
        r.system_prompt = Some(
            "You are a concise assistant for the owners of electric cars. Answer in one sentence."
                .into(),
        );
        r
    };
    let (first, _, _) = run(chat("How long does charging take?")).await.unwrap();
    let (_, _, other) = run(chat("Where is the charging port?")).await.unwrap();
    assert!(
        other.cached_prompt_tokens >= 20,
        "cached {}",
        other.cached_prompt_tokens
    );
    let (again, _, fin) = run(chat("How long does charging take?")).await.unwrap();
    assert!(
        fin.cached_prompt_tokens >= 20,
        "cached {}",
        fin.cached_prompt_tokens
    );
    assert_eq!(first, again, "reusing the cached prefix changed the answer");
}

fn conversation(turns: &[(&str, &str)]) -> GenerateRequest {
    GenerateRequest {
        messages: turns
            .iter()
            .map(|(role, content)| ChatMessage {
                role: role.to_string(),
                content: content.to_string(),
            })
            .collect(),
        max_tokens: 16,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_conversations_next_turn_prefills_only_its_new_tokens() {
    // Its own agents: the other tests' requests would share the cache.
    let edge = EdgeProcess::start(&package_dir(), &[]);
    let system = ("system", "You are a concise assistant for car owners.");
    let q1 = (
        "user",
        "My car will not start on cold mornings. What should I check first?",
    );
    let (a1, _, f1) = run_on(edge.addr.clone(), conversation(&[system, q1]))
        .await
        .unwrap();
    // Another conversation in between: both stay cached.
    let other = conversation(&[("user", "Tell me a fun fact about octopuses.")]);
    run_on(edge.addr.clone(), other).await.unwrap();
    let turn2 = conversation(&[
        system,
        q1,
        ("assistant", &a1),
        ("user", "And if the battery is fine?"),
    ]);
    let (a2, _, f2) = run_on(edge.addr.clone(), turn2.clone()).await.unwrap();
    // The first turn's prompt and (most of) its answer are not computed again.
    assert!(
        f2.cached_prompt_tokens > f1.prompt_tokens + f1.completion_tokens / 2,
        "turn 2 cached {} of {} prompt tokens; turn 1 had {} + {}",
        f2.cached_prompt_tokens,
        f2.prompt_tokens,
        f1.prompt_tokens,
        f1.completion_tokens
    );
    assert!(f2.cached_prompt_tokens < f2.prompt_tokens);
    // The same turn on an agent that never saw the conversation: the same answer.
    let fresh = EdgeProcess::start(&package_dir(), &[]);
    let (cold, _, f) = run_on(fresh.addr.clone(), turn2).await.unwrap();
    assert_eq!(f.cached_prompt_tokens, 0);
    assert_eq!(a2, cold, "the kept KV changed the answer");
}

#[tokio::test]
async fn seeded_sampling_is_reproducible() {
    let sampled = |seed| {
        let mut r = request("Once upon a time", 24);
        r.sampling = Some(SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            seed,
            top_k: None,
        });
        r
    };
    let (a, _, _) = run(sampled(11)).await.unwrap();
    let (b, _, _) = run(sampled(11)).await.unwrap();
    let (c, _, _) = run(sampled(12)).await.unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_generation() {
    let mut stream = client()
        .await
        .generate(request("1, 2, 3, 4, 5, 6, 7, 8,", 3000))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        let ev = stream.message().await.unwrap().expect("a token");
        assert!(matches!(ev.event, Some(Event::Token(_))), "{ev:?}");
    }
    drop(stream);
    // Wait off the runtime thread, so the client can tell the agent it went away.
    let line = tokio::task::spawn_blocking(|| {
        edge().wait_for_log(&["generate done", "Cancelled"], Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert!(line.is_some(), "no cancellation logged:\n{}", edge().logs());
    assert!(run(request("The capital of France is", 2)).await.is_ok());
}

#[tokio::test]
async fn a_request_over_the_kv_budget_is_refused_and_smaller_ones_still_run() {
    // 2 MB holds ~160 int8 positions of SmolLM2-135M (12,240 bytes each).
    let edge = EdgeProcess::start(&package_dir(), &["--kv-budget", "2000000"]);
    let err = run_on(edge.addr.clone(), request("The capital of France is", 1000))
        .await
        .expect_err("over budget");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("KV budget"), "{}", err.message());
    assert!(
        err.metadata().get("retry-after-ms").is_some(),
        "no retry hint"
    );
    // The cached prefix of an earlier request is evicted before a new one is refused.
    // Prompts with nothing in common: each needs a new cache while the last one is still held.
    for prompt in [
        "The capital of France is",
        "One, two, three,",
        "The capital of France is",
    ] {
        let (text, tokens, _) = run_on(edge.addr.clone(), request(prompt, 100))
            .await
            .unwrap();
        assert!(tokens > 0 && !text.is_empty(), "{prompt}: {text:?}");
    }
    assert!(edge.logs().contains("generate done"));
}

#[tokio::test]
async fn an_oversized_request_is_refused_with_a_clear_status() {
    // 2 MiB of prompt: over the 1 MiB message limit of the app API.
    let err = run(request(&"word ".repeat(400_000), 4))
        .await
        .expect_err("oversized");
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );
    assert!(run(request("The capital of France is", 2)).await.is_ok());
}
