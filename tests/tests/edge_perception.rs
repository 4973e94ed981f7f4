//! Embed, Classify and the intent features of Generate, end to end: a real `seam-edge serve
//! --encoder` on loopback, called over gRPC; and the `classify`/`embed` command lines.

use seam_shared::proto::edge::assistant_client::AssistantClient;
use seam_shared::proto::edge::{
    ClassifyRequest, EmbedRequest, FinalEvent, GenerateRequest, generate_event::Event,
};
use seam_tests::{EdgeProcess, edge_bin, encoder_package_dir, package_dir};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use tonic::Code;
use tonic::transport::Channel;

/// Embed batch limit of the shared agent.
const BATCH_LIMIT: usize = 8;

fn edge() -> &'static EdgeProcess {
    static EDGE: OnceLock<EdgeProcess> = OnceLock::new();
    EDGE.get_or_init(|| {
        let encoder = encoder_package_dir();
        EdgeProcess::start(
            &package_dir(),
            &[
                "--encoder",
                encoder.to_str().unwrap(),
                "--max-embed-batch",
                &BATCH_LIMIT.to_string(),
            ],
        )
    })
}

async fn client() -> AssistantClient<Channel> {
    AssistantClient::connect(edge().addr.clone())
        .await
        .expect("connecting")
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn embed_returns_unit_vectors_that_keep_meanings_apart() {
    let texts = [
        "what is my account balance",
        "how much money do i have in the bank",
        "play some jazz music",
    ];
    let r = client()
        .await
        .embed(EmbedRequest {
            texts: texts.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model, "all-MiniLM-L6-v2");
    assert_eq!(r.embeddings.len(), 3);
    for e in &r.embeddings {
        assert_eq!(e.values.len(), 384);
        assert!((dot(&e.values, &e.values) - 1.0).abs() < 1e-3);
        assert!(e.tokens >= 5 && !e.truncated);
    }
    let (a, b, c) = (
        &r.embeddings[0].values,
        &r.embeddings[1].values,
        &r.embeddings[2].values,
    );
    assert!(
        dot(a, b) > dot(a, c) + 0.2,
        "{} vs {}",
        dot(a, b),
        dot(a, c)
    );
}

#[tokio::test]
async fn classify_names_intent_domain_and_top_k() {
    let r = client()
        .await
        .classify(ClassifyRequest {
            text: "i want to book a flight to boston next friday".into(),
            top_k: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.intent.as_str(), r.domain.as_str()),
        ("book_flight", "travel"),
        "{r:?}"
    );
    assert!(!r.out_of_scope && r.confidence > 0.5, "{r:?}");
    assert_eq!(r.top.len(), 3);
    assert_eq!(r.top[0].intent, "book_flight");
    assert!(r.top.windows(2).all(|w| w[0].score >= w[1].score));
}

#[tokio::test]
async fn bad_perception_requests_get_clear_statuses() {
    let mut c = client().await;
    let err = c
        .classify(ClassifyRequest {
            text: "  ".into(),
            top_k: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    for texts in [vec![], vec!["fine".to_string(), String::new()]] {
        let err = c.embed(EmbedRequest { texts }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let err = c
        .embed(EmbedRequest {
            texts: vec!["hello".into(); BATCH_LIMIT + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit is 8"), "{err:?}");
    // At the limit it works.
    let ok = c
        .embed(EmbedRequest {
            texts: vec!["hello".into(); BATCH_LIMIT],
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().embeddings.len(), BATCH_LIMIT);

    // Longer than the encoder reads: cut and flagged, still classified.
    let long = "please move five hundred dollars from savings to checking ".repeat(60);
    let r = c
        .classify(ClassifyRequest {
            text: long,
            top_k: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.truncated && r.tokens == 256, "{r:?}");
    assert_eq!(r.intent, "transfer");
}

async fn final_event(req: GenerateRequest) -> FinalEvent {
    let mut stream = client().await.generate(req).await.unwrap().into_inner();
    let mut fin = None;
    while let Some(ev) = stream.message().await.unwrap() {
        if let Some(Event::Final(f)) = ev.event {
            fin = Some(f);
        }
    }
    fin.expect("a final event")
}

#[tokio::test]
async fn generate_reports_the_prompt_intent_in_its_features() {
    let fin = final_event(GenerateRequest {
        prompt: "How often should I check my tire pressure?".into(),
        max_tokens: 4,
        chat: true,
        ..Default::default()
    })
    .await;
    let f = fin.features.unwrap();
    assert_eq!(
        (f.intent.as_str(), f.domain.as_str()),
        ("tire_pressure", "auto_and_commute"),
        "{f:?}"
    );
    assert!(f.confidence > 0.3 && !f.out_of_scope, "{f:?}");
    assert_eq!(f.prompt_tokens, fin.prompt_tokens);
    assert_eq!(f.max_tokens, 4);
    let t = fin.timings.unwrap();
    assert!(t.route_ms > 0.0 && t.route_ms < t.total_ms, "{t:?}");
}

fn cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(edge_bin())
        .args(args)
        .arg("--model")
        .arg(encoder_package_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn classify_reads_stdin_and_writes_one_json_object_per_line() {
    let (ok, stdout, stderr) = cli(
        &["classify"],
        "what's the weather in tokyo\n\nset an alarm for 7am\n",
    );
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["intent"], "weather");
    assert_eq!(lines[0]["domain"], "utility");
    assert!(lines[0]["confidence"].as_f64().unwrap() > 0.3);
    assert_eq!(lines[0]["out_of_scope"], false);
    assert_eq!(lines[0]["top"].as_array().unwrap().len(), 5);
    assert!(
        lines[1]["error"].as_str().unwrap().contains("empty"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["intent"], "alarm");
}

#[test]
fn embed_takes_the_text_argument() {
    let (ok, stdout, stderr) = cli(&["embed", "turn the volume up"], "");
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["embedding"].as_array().unwrap().len(), 384);
    assert_eq!(v["truncated"], false);
}

#[test]
fn generate_json_stats_carry_the_intent() {
    let out = Command::new(edge_bin())
        .args([
            "generate",
            "--max-tokens",
            "2",
            "--stats",
            "json",
            "--encoder",
        ])
        .arg(encoder_package_dir())
        .arg("--model")
        .arg(package_dir())
        .arg("Set a timer for ten minutes")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let stats: serde_json::Value =
        serde_json::from_str(stderr.trim().lines().last().unwrap()).unwrap();
    assert_eq!(stats["intent"], "timer", "{stats}");
    assert_eq!(stats["domain"], "utility");
    assert!(stats["confidence"].as_f64().unwrap() > 0.3, "{stats}");
    assert!(stats["route_ms"].as_f64().unwrap() > 0.0);
}
