//! The OpenAI-compatible HTTP API of a real agent (`seam-edge serve --http`), driven by the
//! official `openai` Python package (installed by `make setup` into `.seam/py`) and by curl.

use seam_edge::test_util::{encoder_package_dir, package_dir};
use seam_shared::proto::edge::GenerateRequest;
use seam_tests::{EdgeProcess, curl, curl_post_json, python_client, token_ids};
use serde_json::Value;

fn agent() -> EdgeProcess {
    let encoder = encoder_package_dir();
    EdgeProcess::start(
        &package_dir(),
        &[
            "--http",
            "127.0.0.1:0",
            "--encoder",
            encoder.to_str().unwrap(),
        ],
    )
}

#[tokio::test]
async fn the_openai_python_package_talks_to_the_device() {
    let edge = agent();
    let http = edge.http.clone().expect("the HTTP API's address");
    let r = python_client(
        "openai_client.py",
        &[format!("http://{http}/v1").into()],
        &format!("agent:\n{}", edge.logs()),
    );

    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 2, "the model and the encoder: {r}");

    // The same question over gRPC, greedy: the HTTP answers are that answer.
    let (_, grpc) = token_ids(
        &edge.addr,
        GenerateRequest {
            prompt: "What is the capital of France?".into(),
            system_prompt: Some("Answer in one short sentence.".into()),
            chat: true,
            max_tokens: 12,
            ..Default::default()
        },
    )
    .await;
    let chat = &r["chat"];
    let content = chat["content"].as_str().unwrap();
    assert!(content.contains("Paris"), "{r}");
    assert_eq!(chat["role"], "assistant");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], models[0]);
    assert_eq!(chat["usage"]["prompt_tokens"], grpc.prompt_tokens, "{r}");
    assert_eq!(chat["usage"]["completion_tokens"], grpc.completion_tokens);
    assert_eq!(
        chat["usage"]["total_tokens"],
        grpc.prompt_tokens + grpc.completion_tokens
    );
    assert_eq!(chat["seam"]["route"], "local", "{r}");
    let stream = &r["stream"];
    assert_eq!(
        stream["content"], chat["content"],
        "streamed = not streamed: {r}"
    );
    assert_eq!(stream["finish_reason"], chat["finish_reason"]);
    assert_eq!(stream["usage"], chat["usage"]);
    assert!(stream["chunks"].as_u64().unwrap() >= 3, "{r}");

    // The second turn carries the first: its prompt is longer, its answer about Italy.
    let turn2 = &r["turn2"];
    assert!(turn2["prompt_tokens"].as_u64() > chat["usage"]["prompt_tokens"].as_u64());
    assert!(turn2["content"].as_str().unwrap().contains("Rome"), "{r}");
    assert_eq!(r["seeded_equal"], true, "same seed, same sample: {r}");
    assert!(
        r["completion"]["text"].as_str().unwrap().contains("Paris"),
        "{r}"
    );
    assert_eq!(r["completion"]["object"], "text_completion");

    let emb = &r["embeddings"];
    assert_eq!(emb["count"], 2);
    assert_eq!(emb["dim"], 384);
    assert!(
        emb["cosine"].as_f64().unwrap() > 0.5,
        "paraphrases are close: {r}"
    );

    assert_eq!(r["unknown_model"]["status"], 404, "{r}");
    assert_eq!(r["unknown_model"]["code"], "model_not_found");
    assert_eq!(r["bad_temperature"]["status"], 400, "{r}");
    assert_eq!(r["bad_temperature"]["param"], "temperature");
}

#[test]
fn bad_requests_get_openai_error_objects_over_plain_curl() {
    let edge = EdgeProcess::start(&package_dir(), &["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", edge.http.clone().unwrap());
    let post = |path: &str, body: &str| curl_post_json(&format!("{base}{path}"), body);
    let error = |v: &Value| {
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    let (code, v) = post("/v1/chat/completions", "{\"messages\": [");
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(error(&v).contains("invalid JSON"), "{v}");

    let (code, v) = post(
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}"#,
    );
    assert_eq!(code, 400, "{v}");
    assert!(error(&v).contains("max_tokens"), "{v}");

    let (code, v) = post(
        "/v1/chat/completions",
        r#"{"messages": [{"role": "assistant", "content": "hi"}]}"#,
    );
    assert_eq!(code, 400, "{v}");
    assert!(error(&v).contains("last message"), "{v}");

    let (code, v) = post("/v1/embeddings", r#"{"input": "hi"}"#);
    assert_eq!(code, 404, "no encoder on this agent: {v}");

    let (code, v) = curl(&[&format!("{base}/v1/nothing")]);
    assert_eq!(code, 404, "{v}");
    let (code, v) = curl(&[&format!("{base}/v1/models")]);
    assert_eq!(code, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
}
