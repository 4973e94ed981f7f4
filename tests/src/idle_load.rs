//! Idle split sessions on a worker: sessions opened one after another over the worker's gRPC
//! API, each prefilling a few positions (so that its KV cache holds real rows) and then left
//! idle, as devices that asked one question and went quiet. The worker must keep its KV within
//! its budget by evicting the idle ones, and admit every new session.

use seam_shared::proto::common::{PackageRef, StepRequest};
use seam_shared::proto::worker::OpenSessionRequest;
use seam_shared::proto::worker::worker_client::WorkerClient;
use seam_shared::tensor::{self, WireDtype};
use std::time::{Duration, Instant};

/// What to open.
#[derive(Debug, Clone)]
pub struct IdleLoad {
    /// Session ids are `{prefix}-{i}`.
    pub prefix: String,
    pub sessions: usize,
    /// Positions each session prefills before it goes idle.
    pub rows: usize,
    pub max_positions: u32,
    pub split_layer: u32,
    /// Width of a hidden row (the model's `n_embd`).
    pub hidden: usize,
    /// The worker's package digest.
    pub digest: String,
}

/// How the worker answered.
#[derive(Debug, Clone, Default)]
pub struct IdleReport {
    /// Sessions admitted and prefilled.
    pub held: usize,
    /// Opens or steps refused, with the first reasons.
    pub refused: usize,
    pub reasons: Vec<String>,
    /// KV bytes the worker reserved for one session.
    pub reserved_per_session: u64,
    pub seconds: f64,
}

/// Opens and prefills `load.sessions` sessions on the worker at `addr`, one after another.
pub async fn open_idle_sessions(addr: &str, load: &IdleLoad) -> IdleReport {
    let mut client = WorkerClient::connect(addr.to_string())
        .await
        .expect("connecting to the worker");
    let hidden: Vec<f32> = (0..load.rows * load.hidden)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 4.0)
        .collect();
    let tensor = tensor::encode(&hidden, load.hidden, WireDtype::INT8_ROW).expect("encodes");
    let mut report = IdleReport::default();
    let started = Instant::now();
    let refuse = |report: &mut IdleReport, why: String| {
        report.refused += 1;
        if report.reasons.len() < 5 {
            report.reasons.push(why);
        }
    };
    for i in 0..load.sessions {
        let id = format!("{}-{i}", load.prefix);
        let opened = client
            .open_session(OpenSessionRequest {
                session_id: id.clone(),
                package: Some(PackageRef {
                    digest: load.digest.clone(),
                    name: String::new(),
                }),
                split_layer: load.split_layer,
                max_positions: load.max_positions,
                device_id: format!("device-{i}"),
                ..Default::default()
            })
            .await;
        match opened {
            Ok(r) => report.reserved_per_session = r.into_inner().kv_bytes_reserved,
            Err(s) => {
                refuse(&mut report, format!("open {id}: {s}"));
                continue;
            }
        }
        let step = StepRequest {
            session_id: id.clone(),
            step_id: 1,
            start_position: 0,
            hidden: Some(tensor.clone()),
            ..Default::default()
        };
        let answer = async {
            let mut answers = client
                .step(tokio_stream::iter(vec![step]))
                .await?
                .into_inner();
            answers
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unknown("no answer"))
        };
        match tokio::time::timeout(Duration::from_secs(60), answer).await {
            Ok(Ok(a)) if a.error.is_none() && a.kv_len as usize == load.rows => report.held += 1,
            Ok(Ok(a)) => refuse(&mut report, format!("step {id}: {:?}", a.error)),
            Ok(Err(s)) => refuse(&mut report, format!("step {id}: {s}")),
            Err(_) => refuse(&mut report, format!("step {id}: no answer in 60 s")),
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}
