//! Requests longer than the context, end to end: an agent limited to 64 positions
//! (`seam-edge serve --context 64`) refuses them by default, truncates the start of the prompt
//! (keeping the system prompt) or slides a window over its KV cache when asked, per request or
//! by the agent's `--context-overflow` default, and says which in the final event. A sliding
//! answer is the unlimited agent's token for token until the window first drops a position.

use seam_shared::proto::edge::{ContextOverflow, GenerateRequest};
use seam_tests::{EdgeProcess, curl_post_json, package_dir, token_ids};
use tonic::Code;

const CONTEXT: u32 = 64;

fn request(prompt: &str, max_tokens: u32, overflow: ContextOverflow) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        max_tokens,
        context_overflow: overflow as i32,
        ..Default::default()
    }
}

const STORY: &str = "The history of the printing press begins";

/// The status a request ends with: at once, or in its stream before any token.
async fn refusal(addr: &str, req: GenerateRequest) -> tonic::Status {
    let mut client =
        seam_shared::proto::edge::assistant_client::AssistantClient::connect(addr.to_string())
            .await
            .unwrap();
    let mut stream = match client.generate(req).await {
        Ok(s) => s.into_inner(),
        Err(status) => return status,
    };
    match stream.message().await {
        Err(status) => status,
        Ok(m) => panic!("the request was not refused: {m:?}"),
    }
}

#[tokio::test]
async fn long_requests_are_refused_truncated_or_slid_as_asked() {
    let context = CONTEXT.to_string();
    let limited = EdgeProcess::start(
        &package_dir(),
        &["--context", &context, "--http", "127.0.0.1:0"],
    );
    let unlimited = EdgeProcess::start(&package_dir(), &[]);

    // 1. By default a request that does not fit is refused, naming the lengths and the options.
    let long_chat = GenerateRequest {
        system_prompt: Some("Answer in one short sentence.".into()),
        chat: true,
        ..request(
            &"Tell me about lighthouses and the keepers who lived in them. ".repeat(8),
            16,
            ContextOverflow::Unspecified,
        )
    };
    let e = refusal(&limited.addr, long_chat.clone()).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("context of 64") && e.message().contains("truncate_start"),
        "{}",
        e.message()
    );
    // max_tokens above the context is refused unless the window slides.
    let e = refusal(
        &limited.addr,
        request(STORY, 100, ContextOverflow::TruncateStart),
    )
    .await;
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("sliding_window"), "{}", e.message());

    // 2. truncate_start keeps the system prompt and the latest tokens, inside the context.
    let (ids, fin) = token_ids(
        &limited.addr,
        GenerateRequest {
            context_overflow: ContextOverflow::TruncateStart as i32,
            ..long_chat.clone()
        },
    )
    .await;
    assert_eq!(fin.context_overflow, "truncate_start");
    assert!(fin.truncated_prompt_tokens > 0);
    assert!(fin.prompt_tokens + 16 <= CONTEXT, "{fin:?}");
    assert_eq!(fin.evicted_tokens, 0);
    assert!(!ids.is_empty());
    // The same request on an agent with room for it is not truncated.
    let (_, whole) = token_ids(&unlimited.addr, long_chat.clone()).await;
    assert_eq!(
        whole.prompt_tokens,
        fin.prompt_tokens + fin.truncated_prompt_tokens
    );
    assert_eq!(whole.context_overflow, "");

    // 3. sliding_window lets the answer outgrow the context; until the window drops its first
    // position, it is the unlimited agent's answer token for token.
    let (slid, fin) = token_ids(
        &limited.addr,
        request(STORY, 120, ContextOverflow::SlidingWindow),
    )
    .await;
    let (full, full_fin) =
        token_ids(&unlimited.addr, request(STORY, 120, ContextOverflow::Error)).await;
    assert_eq!(fin.context_overflow, "sliding_window");
    assert_eq!(slid.len(), 120, "{fin:?}");
    assert!(fin.evicted_tokens > 0, "{fin:?}");
    assert!(fin.evicted_tokens as usize + CONTEXT as usize >= fin.prompt_tokens as usize + 119);
    let before_eviction = CONTEXT as usize - fin.prompt_tokens as usize;
    assert_eq!(full_fin.prompt_tokens, fin.prompt_tokens);
    assert_eq!(
        slid[..before_eviction],
        full[..before_eviction],
        "the window changed the answer before it dropped anything"
    );

    // The OpenAI API takes the choice as an extra field and reports it in `seam` (greedy, as
    // above: OpenAI's default temperature is 1).
    let url = format!("http://{}/v1/completions", limited.http.clone().unwrap());
    let body = |overflow: &str| {
        format!(
            r#"{{"prompt": "{STORY}", "max_tokens": 120, "temperature": 0, "seam_context_overflow": "{overflow}"}}"#
        )
    };
    let post = |body: String| curl_post_json(&url, &body);
    let (code, v) = post(body("sliding_window"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["seam"]["context_overflow"], "sliding_window", "{v}");
    assert_eq!(v["seam"]["evicted_tokens"], fin.evicted_tokens, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 120, "{v}");
    let (code, v) = post(body("slide"));
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], "seam_context_overflow", "{v}");
    drop(limited);

    // 4. The agent's default applies to requests that do not say.
    let sliding = EdgeProcess::start(
        &package_dir(),
        &[
            "--context",
            &context,
            "--context-overflow",
            "sliding_window",
        ],
    );
    let (ids, fin) = token_ids(
        &sliding.addr,
        request(STORY, 120, ContextOverflow::Unspecified),
    )
    .await;
    assert_eq!(fin.context_overflow, "sliding_window");
    assert_eq!(
        ids, slid,
        "the default slides as the request's own choice does"
    );
    // A request may still ask for the error.
    let e = refusal(&sliding.addr, request(STORY, 120, ContextOverflow::Error)).await;
    assert_eq!(e.code(), Code::InvalidArgument);
}
