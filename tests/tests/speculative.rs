//! Speculative decoding across the split, end to end with real processes: the device drafts
//! with its exit head, the worker verifies. Greedy output must be the local output token for
//! token whatever the drafts were; rejected drafts must leave nothing behind in either cache.

use seam_edge::commands::bench_split::AGREEMENT_PROMPTS;
use seam_shared::proto::common::{PackageRef, RouteKind, SamplingParams, StepRequest};
use seam_shared::proto::edge::{GenerateRequest, RoutePreference};
use seam_shared::proto::worker::worker_client::WorkerClient;
use seam_shared::proto::worker::{GetInfoRequest, OpenSessionRequest};
use seam_shared::tensor::{self, WireDtype};
use seam_tests::{EdgeProcess, WorkerProcess, package_dir, token_ids};
use tokio::sync::mpsc;

const HIDDEN: usize = 576;

fn chat(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        chat: true,
        max_tokens,
        route: RoutePreference::Local as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn greedy_speculative_split_output_equals_local_output_token_for_token() {
    let worker = WorkerProcess::start_worker(&package_dir(), &[]);
    let edge = EdgeProcess::start(&package_dir(), &["--worker", &worker.addr, "--wire", "f32"]);
    let (mut drafted, mut accepted) = (0u32, 0u32);
    // All 20 prompts at K = 8; a third of them at K = 4 and K = 15 as well.
    for (n, prompt) in AGREEMENT_PROMPTS.iter().enumerate() {
        let local = chat(prompt, 24);
        let (want, _) = token_ids(&edge.addr, local.clone()).await;
        let layers: &[u32] = if n % 3 == 0 { &[4, 8, 15] } else { &[8] };
        for &layer in layers {
            // A fixed draft length: every step drafts, so rejections happen all the time.
            let split = GenerateRequest {
                route: RoutePreference::Split as i32,
                split_layer: layer,
                draft_tokens: Some(4),
                ..local.clone()
            };
            let (got, fin) = token_ids(&edge.addr, split).await;
            assert_eq!(got, want, "{prompt:?} split at {layer}");
            assert_eq!(fin.route.unwrap().kind, RouteKind::Split as i32);
            assert!(fin.drafted_tokens > 0, "{prompt:?}: nothing drafted");
            assert!(fin.accepted_draft_tokens <= fin.drafted_tokens);
            // Completion tokens per round trip. Every round trip settles at least one token,
            // more when drafts stand; the last may settle only the end-of-sequence token,
            // which is not part of the completion.
            let per_trip = want.len() as f64 / fin.token_round_trips as f64;
            assert!(
                (per_trip - fin.tokens_per_round_trip).abs() < 1e-9,
                "{per_trip} vs {}",
                fin.tokens_per_round_trip
            );
            assert!(
                fin.token_round_trips as usize <= want.len() + 1,
                "{prompt:?}: {} round trips for {} tokens",
                fin.token_round_trips,
                want.len()
            );
            assert!(
                fin.token_round_trips as u64 + fin.accepted_draft_tokens as u64
                    >= want.len() as u64
            );
            drafted += fin.drafted_tokens;
            accepted += fin.accepted_draft_tokens;
        }
    }
    eprintln!(
        "greedy drafts: {accepted} of {drafted} accepted ({:.1}%)",
        100.0 * accepted as f64 / drafted.max(1) as f64
    );
    // The adaptive policy (no draft length asked for) is lossless too.
    let local = chat(AGREEMENT_PROMPTS[1], 24);
    let (want, _) = token_ids(&edge.addr, local.clone()).await;
    let adaptive = GenerateRequest {
        route: RoutePreference::Split as i32,
        split_layer: 8,
        ..local
    };
    let (got, fin) = token_ids(&edge.addr, adaptive).await;
    assert_eq!(got, want);
    assert!(fin.token_round_trips > 0);
}

/// A step stream on a worker.
struct Steps {
    tx: mpsc::Sender<StepRequest>,
    rx: tonic::Streaming<seam_shared::proto::common::StepResponse>,
}

impl Steps {
    async fn send(&mut self, req: StepRequest) -> seam_shared::proto::common::StepResponse {
        self.tx.send(req).await.unwrap();
        self.rx.message().await.unwrap().unwrap()
    }
}

fn hidden_rows(n: usize, seed: usize) -> tensor::Rows {
    tensor::Rows {
        rows: n,
        cols: HIDDEN,
        data: (0..n * HIDDEN)
            .map(|i| (((i + seed) * 7919 % 2000) as f32 / 1000.0 - 1.0) * 2.0)
            .collect(),
    }
}

fn step(session: &str, id: u64, start: u32, rows: &tensor::Rows, drafts: Vec<u32>) -> StepRequest {
    StepRequest {
        session_id: session.into(),
        step_id: id,
        start_position: start,
        hidden: Some(tensor::encode(&rows.data, HIDDEN, WireDtype::F32).unwrap()),
        draft_tokens: drafts,
        want_logits: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn rejected_drafts_leave_no_stale_kv_on_the_worker() {
    let worker = WorkerProcess::start_worker(&package_dir(), &[]);
    let mut c = WorkerClient::connect(worker.addr.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let digest = c
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .package
        .unwrap()
        .digest;
    for id in ["drafting", "plain"] {
        c.open_session(OpenSessionRequest {
            session_id: id.into(),
            package: Some(PackageRef {
                digest: digest.clone(),
                name: String::new(),
            }),
            split_layer: 8,
            sampling: Some(SamplingParams::default()),
            max_positions: 32,
            device_id: "test".into(),
            max_draft_tokens: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let (tx, rx) = mpsc::channel(4);
    let rx = c
        .step(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut s = Steps { tx, rx };
    let prompt = hidden_rows(6, 1);
    for id in ["drafting", "plain"] {
        assert!(
            s.send(step(id, 1, 0, &prompt, vec![]))
                .await
                .error
                .is_none()
        );
    }
    // One committed row and three drafts that the worker is all but sure to reject: the
    // vocabulary's last tokens.
    let mut with_drafts = hidden_rows(4, 2);
    let drafts = vec![49_151, 49_150, 49_149];
    let r = s
        .send(step("drafting", 2, 6, &with_drafts, drafts.clone()))
        .await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let logits = tensor::decode(r.logits.as_ref().unwrap(), Some(49_152), 4 * 49_152).unwrap();
    // The answer is consistent with the logits: accepted drafts are the leading argmaxes.
    let argmax: Vec<u32> = logits
        .data
        .chunks_exact(49_152)
        .map(seam_edge::runtime::sampler::argmax)
        .collect();
    let accepted = drafts
        .iter()
        .zip(&argmax)
        .take_while(|(d, a)| d == a)
        .count();
    assert_eq!(r.accepted as usize, accepted);
    assert_eq!(r.next_token, argmax[accepted]);
    assert_eq!(r.kv_len as usize, 6 + 1 + accepted);
    // The plain session gets the same committed rows without drafts.
    with_drafts.rows = 1 + accepted;
    with_drafts.data.truncate((1 + accepted) * HIDDEN);
    let r = s.send(step("plain", 2, 6, &with_drafts, vec![])).await;
    assert_eq!(r.kv_len as usize, 6 + 1 + accepted);
    // The same next row on both: if a rejected draft had left K/V behind, attention would see
    // it and the logits would differ.
    let next = hidden_rows(1, 3);
    let at = 7 + accepted as u32;
    let a = s.send(step("drafting", 3, at, &next, vec![])).await;
    let b = s.send(step("plain", 3, at, &next, vec![])).await;
    assert!(a.error.is_none() && b.error.is_none());
    assert_eq!(a.logits.unwrap().data, b.logits.unwrap().data);
    // A step that claims more drafts than rows, or a draft outside the vocabulary, is refused.
    let r = s
        .send(step("drafting", 4, at + 1, &hidden_rows(2, 4), vec![1, 2]))
        .await;
    assert!(r.error.unwrap().message.contains("need at least"));
    let r = s
        .send(step(
            "drafting",
            5,
            at + 1,
            &hidden_rows(2, 4),
            vec![60_000],
        ))
        .await;
    assert!(r.error.unwrap().message.contains("outside the vocabulary"));
}
