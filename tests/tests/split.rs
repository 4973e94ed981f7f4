//! Split execution end to end: real `seam-worker` and `seam-edge` processes on loopback.

use seam_shared::proto::common::{
    DType, PackageRef, RouteKind, SamplingParams, StepRequest, StepResponse, Tensor,
};
use seam_shared::proto::edge::{GenerateRequest, RoutePreference};
use seam_shared::proto::worker::worker_client::WorkerClient;
use seam_shared::proto::worker::{CloseSessionRequest, GetInfoRequest, OpenSessionRequest};
use seam_shared::tensor::{self, WireDtype};
use seam_tests::{EdgeProcess, WorkerProcess, package_dir, token_ids};
use std::sync::OnceLock;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

const HIDDEN: usize = 576;

/// A worker shared by the tests of this file.
fn worker() -> &'static WorkerProcess {
    static W: OnceLock<WorkerProcess> = OnceLock::new();
    W.get_or_init(|| WorkerProcess::start_worker(&package_dir(), &["--max-frame-bytes", "262144"]))
}

async fn worker_client(p: &WorkerProcess) -> WorkerClient<Channel> {
    WorkerClient::connect(p.addr.clone())
        .await
        .expect("connecting")
        .max_decoding_message_size(64 << 20)
}

async fn digest(c: &mut WorkerClient<Channel>) -> String {
    let info = c.get_info(GetInfoRequest {}).await.unwrap().into_inner();
    info.package.unwrap().digest
}

fn open_request(id: &str, digest: &str, layer: u32, positions: u32) -> OpenSessionRequest {
    OpenSessionRequest {
        session_id: id.into(),
        package: Some(PackageRef {
            digest: digest.into(),
            name: String::new(),
        }),
        split_layer: layer,
        sampling: Some(SamplingParams::default()),
        max_positions: positions,
        device_id: "test-device".into(),
        ..Default::default()
    }
}

/// Deterministic, finite stand-in hidden states (the worker computes on whatever it is sent).
fn rows(n: usize, seed: usize) -> Vec<f32> {
    (0..n * HIDDEN)
        .map(|i| (((i + seed) * 7919 % 2000) as f32 / 1000.0 - 1.0) * 2.0)
        .collect()
}

fn step(id: &str, step_id: u64, start: u32, hidden: Tensor) -> StepRequest {
    StepRequest {
        session_id: id.into(),
        step_id,
        start_position: start,
        hidden: Some(hidden),
        ..Default::default()
    }
}

/// One step stream.
struct Steps {
    tx: mpsc::Sender<StepRequest>,
    rx: tonic::Streaming<StepResponse>,
}

impl Steps {
    async fn open(c: &mut WorkerClient<Channel>) -> Steps {
        let (tx, rx) = mpsc::channel(8);
        let rx = c
            .step(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Steps { tx, rx }
    }

    async fn send(&mut self, r: StepRequest) -> Result<StepResponse, tonic::Status> {
        self.tx.send(r).await.expect("stream open");
        match self.rx.message().await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(tonic::Status::unknown("stream ended")),
            Err(e) => Err(e),
        }
    }
}

/// Next tokens of a session fed `rows(4, 0)` then three single rows.
async fn reference_tokens(c: &mut WorkerClient<Channel>, digest: &str, id: &str) -> Vec<u32> {
    c.open_session(open_request(id, digest, 8, 64))
        .await
        .unwrap();
    let mut s = Steps::open(c).await;
    let mut out = Vec::new();
    let t = tensor::encode(&rows(4, 0), HIDDEN, WireDtype::INT8_ROW).unwrap();
    out.push(s.send(step(id, 1, 0, t)).await.unwrap().next_token);
    for i in 0..3u32 {
        let t = tensor::encode(&rows(1, i as usize + 1), HIDDEN, WireDtype::INT8_ROW).unwrap();
        let r = s.send(step(id, i as u64 + 2, 4 + i, t)).await.unwrap();
        assert!(r.error.is_none(), "{:?}", r.error);
        out.push(r.next_token);
    }
    out
}

#[tokio::test]
async fn bad_inputs_get_clear_statuses_and_disturb_no_other_session() {
    let w = worker();
    let mut c = worker_client(w).await;
    let d = digest(&mut c).await;
    let want = reference_tokens(&mut c, &d, "reference").await;

    // The healthy session advances between every bad input.
    c.open_session(open_request("healthy", &d, 8, 64))
        .await
        .unwrap();
    let mut healthy = Steps::open(&mut c).await;
    let mut got = Vec::new();
    let t = tensor::encode(&rows(4, 0), HIDDEN, WireDtype::INT8_ROW).unwrap();
    got.push(
        healthy
            .send(step("healthy", 1, 0, t))
            .await
            .unwrap()
            .next_token,
    );

    // Opening: another package, a layer that is not a split point.
    let err = c
        .open_session(open_request(
            "x",
            &format!("sha256:{}", "0".repeat(64)),
            8,
            64,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let err = c
        .open_session(open_request("x", &d, 5, 64))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("split point"), "{err}");

    // Steps: each refusal is an answer on the stream, which goes on.
    c.open_session(open_request("bad", &d, 8, 64))
        .await
        .unwrap();
    let mut bad = Steps::open(&mut c).await;
    let code = |r: StepResponse| Code::from(r.error.expect("an error answer").code);
    let mut nan = rows(1, 0);
    nan[7] = f32::NAN;
    let mut t = tensor::encode(&rows(1, 0), HIDDEN, WireDtype::F32).unwrap();
    t.data = nan.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(
        code(bad.send(step("bad", 1, 0, t)).await.unwrap()),
        Code::InvalidArgument
    );
    let narrow = tensor::encode(&rows(1, 0)[..HIDDEN - 1], HIDDEN - 1, WireDtype::F32).unwrap();
    assert_eq!(
        code(bad.send(step("bad", 2, 0, narrow)).await.unwrap()),
        Code::InvalidArgument
    );
    let ragged = Tensor {
        shape: vec![2, HIDDEN as u64],
        dtype: DType::F16 as i32,
        data: vec![0; HIDDEN * 2].into(),
        ..Default::default()
    };
    assert_eq!(
        code(bad.send(step("bad", 3, 0, ragged)).await.unwrap()),
        Code::InvalidArgument
    );
    let t = tensor::encode(&rows(1, 0), HIDDEN, WireDtype::INT8_ROW).unwrap();
    assert_eq!(
        code(bad.send(step("nobody", 1, 0, t.clone())).await.unwrap()),
        Code::NotFound
    );
    assert_eq!(
        code(bad.send(step("bad", 4, 9, t.clone())).await.unwrap()),
        Code::FailedPrecondition
    );
    t_step_ok(&mut healthy, &mut got, 1).await;
    // 128 f32 rows (295 kB) is above this worker's 256 KiB frame limit: refused on its own.
    let big = tensor::encode(&rows(128, 0), HIDDEN, WireDtype::F32).unwrap();
    let r = bad.send(step("bad", 5, 0, big)).await.unwrap();
    assert_eq!(code(r), Code::ResourceExhausted);
    let r = bad.send(step("bad", 6, 0, t.clone())).await.unwrap();
    assert!(
        r.error.is_none(),
        "the stream goes on after refusals: {:?}",
        r.error
    );
    t_step_ok(&mut healthy, &mut got, 2).await;
    // A frame beyond what the transport reads ends that stream with RESOURCE_EXHAUSTED.
    let huge = tensor::encode(&rows(700, 0), HIDDEN, WireDtype::F32).unwrap();
    let err = bad.send(step("bad", 7, 1, huge)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    t_step_ok(&mut healthy, &mut got, 3).await;

    assert_eq!(got, want, "the healthy session's tokens changed");
    let closed = c
        .close_session(CloseSessionRequest {
            session_id: "healthy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(closed.existed);
    assert_eq!(closed.positions, 7);
}

/// Sends the healthy session's `i`-th single-row step and records its token.
async fn t_step_ok(s: &mut Steps, got: &mut Vec<u32>, i: u32) {
    let t = tensor::encode(&rows(1, i as usize), HIDDEN, WireDtype::INT8_ROW).unwrap();
    let r = s
        .send(step("healthy", i as u64 + 1, 3 + i, t))
        .await
        .unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    got.push(r.next_token);
}

#[tokio::test]
async fn a_full_budget_evicts_idle_sessions_or_refuses_with_a_retry_hint() {
    // Two sessions of 64 positions at K = 4 fit (26 layers × 2 × 3 heads × 68 B per position).
    let budget = (26 * 2 * 3 * 68 * 64 * 5 / 2).to_string();
    let busy = WorkerProcess::start_worker(
        &package_dir(),
        &["--kv-budget", &budget, "--evict-after-ms", "600000"],
    );
    let mut c = worker_client(&busy).await;
    let d = digest(&mut c).await;
    for id in ["a", "b"] {
        c.open_session(open_request(id, &d, 4, 64)).await.unwrap();
    }
    let err = c
        .open_session(open_request("c", &d, 4, 64))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let retry: u64 = err
        .metadata()
        .get("retry-after-ms")
        .expect("a retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    drop(busy);

    let lru = WorkerProcess::start_worker(
        &package_dir(),
        &["--kv-budget", &budget, "--evict-after-ms", "0"],
    );
    let mut c = worker_client(&lru).await;
    let d = digest(&mut c).await;
    c.open_session(open_request("a", &d, 4, 64)).await.unwrap();
    c.open_session(open_request("b", &d, 4, 64)).await.unwrap();
    // "a" is used after "b", so "b" is the least recently used when "c" needs room.
    let mut s = Steps::open(&mut c).await;
    let t = tensor::encode(&rows(1, 0), HIDDEN, WireDtype::INT8_ROW).unwrap();
    assert!(
        s.send(step("a", 1, 0, t.clone()))
            .await
            .unwrap()
            .error
            .is_none()
    );
    c.open_session(open_request("c", &d, 4, 64)).await.unwrap();
    let r = s.send(step("b", 1, 0, t.clone())).await.unwrap();
    assert_eq!(Code::from(r.error.unwrap().code), Code::NotFound);
    assert!(s.send(step("a", 2, 1, t)).await.unwrap().error.is_none());
    assert!(
        lru.wait_for_log(&["evicted", "b"], std::time::Duration::from_secs(5))
            .is_some()
    );
}

#[tokio::test]
async fn greedy_split_output_equals_local_output_token_for_token() {
    let w = worker();
    let edge = EdgeProcess::start(&package_dir(), &["--worker", &w.addr, "--wire", "f32"]);
    let prompts = [
        "The capital of France is",
        "Photosynthesis is the process by which",
        "def fibonacci(n):",
        "Once upon a time, in a small village by the sea,",
    ];
    for prompt in prompts {
        let local = GenerateRequest {
            prompt: prompt.into(),
            max_tokens: 20,
            route: RoutePreference::Local as i32,
            ..Default::default()
        };
        let (want, fin) = token_ids(&edge.addr, local.clone()).await;
        assert_eq!(fin.route.unwrap().kind, RouteKind::Local as i32);
        for layer in [4u32, 8, 15] {
            let split = GenerateRequest {
                route: RoutePreference::Split as i32,
                split_layer: layer,
                // One round trip per token (drafting has its own tests).
                draft_tokens: Some(0),
                ..local.clone()
            };
            let (got, fin) = token_ids(&edge.addr, split).await;
            assert_eq!(got, want, "{prompt:?} split at {layer}");
            let route = fin.route.unwrap();
            assert_eq!(
                (route.kind, route.split_layer),
                (RouteKind::Split as i32, layer)
            );
            // The prompt goes once, then one row of f32 (2304 bytes) per token.
            assert!(
                fin.bytes_sent > (want.len() as u64) * 2304,
                "{}",
                fin.bytes_sent
            );
            assert!(fin.round_trips as usize > want.len(), "{}", fin.round_trips);
        }
    }
}
