//! One target per decoder of bytes from outside, each with its seed corpus (valid inputs made
//! by the project's own encoders, or its example files). A target returns `Ok(true)` when the
//! decoder accepted the input, `Ok(false)` when it refused it with an error, and `Err` when an
//! accepted input breaks what the decoder promises; a panic is a failure too.

use bytes::BytesMut;
use prost::Message;
use seam_edge::bert::weights::BertWeights;
use seam_edge::bert::weights::testing::{tiny_checkpoint, tiny_config};
use seam_edge::gguf::testutil::Writer;
use seam_edge::gguf::{GgmlType, GgufFile, Value, hparams::LlamaHparams};
use seam_edge::runtime::context::Overflow;
use seam_edge::server::openai::{Endpoint, wire_request};
use seam_router::config::RouterConfig;
use seam_router::policy::features::{Features, Thermal};
use seam_router::policy::{ModelInfo, Policy};
use seam_router::quic::frame::FrameCodec;
use seam_shared::proto::common::{StepRequest, StepResponse, Tensor};
use seam_shared::proto::edge as pb;
use seam_shared::proto::gateway::{DeviceFrame, GatewayFrame, device_frame, gateway_frame};
use seam_shared::tensor::{self, WireDtype};
use seam_worker::config::WorkerConfig;
use seam_worker::step::{StepLimits, plan};
use std::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

/// What a run of a target found out about one input.
pub type Outcome = Result<bool, String>;

/// A fuzz target: a name, the function fed with bytes, and its seeds.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Outcome,
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "quic_device_frames",
            run: quic_device_frames,
            seeds: device_frame_seeds,
        },
        Target {
            name: "quic_gateway_frames",
            run: quic_gateway_frames,
            seeds: gateway_frame_seeds,
        },
        Target {
            name: "worker_step",
            run: worker_step,
            seeds: step_seeds,
        },
        Target {
            name: "tensor",
            run: tensor_target,
            seeds: tensor_seeds,
        },
        Target {
            name: "gguf",
            run: gguf,
            seeds: gguf_seeds,
        },
        Target {
            name: "safetensors",
            run: safetensors,
            seeds: || vec![tiny_checkpoint(&tiny_config())],
        },
        Target {
            name: "policy",
            run: policy,
            seeds: policy_seeds,
        },
        Target {
            name: "router_config",
            run: |b| Ok(RouterConfig::parse(&String::from_utf8_lossy(b)).is_ok()),
            seeds: || vec![include_bytes!("../../deploy/config/router.toml").to_vec()],
        },
        Target {
            name: "worker_config",
            run: |b| Ok(WorkerConfig::parse(&String::from_utf8_lossy(b)).is_ok()),
            seeds: || vec![include_bytes!("../../deploy/config/worker.toml").to_vec()],
        },
        Target {
            name: "openai_chat",
            run: |b| openai(Endpoint::Chat, b),
            seeds: chat_seeds,
        },
        Target {
            name: "openai_completion",
            run: |b| openai(Endpoint::Completion, b),
            seeds: completion_seeds,
        },
        Target {
            name: "edge_generate",
            run: edge_generate,
            seeds: generate_seeds,
        },
    ]
}

/// Largest frame the QUIC decoders take here (small, so that long frames are refused often).
const MAX_FRAME: usize = 64 << 10;

fn frames<In: Message + Default>(bytes: &[u8]) -> Outcome {
    let mut codec = FrameCodec::<In, ()>::new(MAX_FRAME);
    let mut buf = BytesMut::from(bytes);
    let mut decoded = 0;
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(_)) => {
                decoded += 1;
                if buf.len() >= before {
                    return Err("a decoded frame consumed no bytes".into());
                }
            }
            Ok(None) => return Ok(decoded > 0),
            Err(_) => return Ok(false),
        }
    }
}

fn quic_device_frames(bytes: &[u8]) -> Outcome {
    frames::<DeviceFrame>(bytes)
}

fn quic_gateway_frames(bytes: &[u8]) -> Outcome {
    frames::<GatewayFrame>(bytes)
}

fn encode_frames<M: Message + Default>(messages: Vec<M>) -> Vec<u8> {
    let mut codec = FrameCodec::<M, M>::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    for m in messages {
        codec.encode(m, &mut buf).expect("seed frames fit");
    }
    buf.to_vec()
}

fn small_step() -> StepRequest {
    let rows = 3;
    let hidden: Vec<f32> = (0..rows * HIDDEN)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    StepRequest {
        session_id: "s-1".into(),
        step_id: 7,
        start_position: 4,
        hidden: Some(tensor::encode(&hidden, HIDDEN, WireDtype::INT8_ROW).expect("encodes")),
        draft_tokens: vec![11, 12],
        rollback_to: Some(4),
        draft_parents: vec![0, 1],
        ..Default::default()
    }
}

fn device_frame_seeds() -> Vec<Vec<u8>> {
    let step = DeviceFrame {
        call_id: 3,
        timeout_ms: 500,
        request: Some(device_frame::Request::Step(small_step())),
    };
    vec![
        encode_frames(vec![step.clone()]),
        encode_frames(vec![DeviceFrame::default(), step]),
    ]
}

fn gateway_frame_seeds() -> Vec<Vec<u8>> {
    let answer = GatewayFrame {
        call_id: 3,
        response: Some(gateway_frame::Response::Step(StepResponse {
            session_id: "s-1".into(),
            step_id: 7,
            accepted: 2,
            next_token: 42,
            kv_len: 9,
            ..Default::default()
        })),
    };
    vec![encode_frames(vec![answer.clone(), answer])]
}

/// Width of the hidden rows in the worker-step target (SmolLM2-135M's).
const HIDDEN: usize = 576;

fn worker_step(bytes: &[u8]) -> Outcome {
    let Ok(req) = StepRequest::decode(bytes) else {
        return Ok(false);
    };
    let limits = StepLimits {
        hidden_size: HIDDEN,
        vocab_size: 49_152,
        max_rows: 512,
        max_logit_rows: 64,
        max_frame_bytes: 4 << 20,
    };
    let Ok(p) = plan(req, &limits) else {
        return Ok(false);
    };
    if p.hidden.len() != p.rows * HIDDEN {
        return Err(format!(
            "{} hidden values for {} rows of {HIDDEN}",
            p.hidden.len(),
            p.rows
        ));
    }
    if p.drafts.len() >= p.rows.max(1) || p.drafts.iter().any(|&t| t >= limits.vocab_size) {
        return Err(format!(
            "{} drafts (max id {:?}) accepted in {} rows",
            p.drafts.len(),
            p.drafts.iter().max(),
            p.rows
        ));
    }
    if p.hidden.iter().any(|v| !v.is_finite()) {
        return Err("a non-finite hidden value was accepted".into());
    }
    if p.max_proposal_depth >= limits.max_rows {
        return Err(format!(
            "proposals {} deep accepted with steps of at most {} rows",
            p.max_proposal_depth, limits.max_rows
        ));
    }
    Ok(true)
}

fn step_seeds() -> Vec<Vec<u8>> {
    let chain = StepRequest {
        draft_parents: vec![],
        ..small_step()
    };
    let f16 = StepRequest {
        hidden: Some(
            tensor::encode(&vec![0.5; 2 * HIDDEN], HIDDEN, WireDtype::F16).expect("encodes"),
        ),
        draft_tokens: vec![5],
        draft_parents: vec![],
        rollback_to: None,
        want_logits: true,
        ..small_step()
    };
    vec![
        small_step().encode_to_vec(),
        chain.encode_to_vec(),
        f16.encode_to_vec(),
    ]
}

fn tensor_target(bytes: &[u8]) -> Outcome {
    let Ok(t) = Tensor::decode(bytes) else {
        return Ok(false);
    };
    let Ok(rows) = tensor::decode(&t, None, 1 << 20) else {
        return Ok(false);
    };
    if rows.data.len() != rows.rows * rows.cols {
        return Err(format!(
            "{} values for {} × {}",
            rows.data.len(),
            rows.rows,
            rows.cols
        ));
    }
    if rows.data.iter().any(|v| !v.is_finite()) {
        return Err("a non-finite value was decoded".into());
    }
    Ok(true)
}

fn tensor_seeds() -> Vec<Vec<u8>> {
    let data: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
    [
        WireDtype::F32,
        WireDtype::F16,
        WireDtype::INT8_ROW,
        WireDtype::Int8 { group: 32 },
        // Rows of 64 in groups of 48: a short last group.
        WireDtype::Int8 { group: 48 },
    ]
    .into_iter()
    .map(|d| {
        tensor::encode(&data, 64, d)
            .expect("encodes")
            .encode_to_vec()
    })
    .collect()
}

fn gguf(bytes: &[u8]) -> Outcome {
    let Ok(f) = GgufFile::parse(bytes.to_vec()) else {
        return Ok(false);
    };
    for t in &f.tensors {
        // Every tensor the header lists either lies inside the file or is refused.
        let _ = f.tensor_bytes(t);
    }
    let _ = LlamaHparams::from_gguf(&f);
    Ok(true)
}

fn gguf_seeds() -> Vec<Vec<u8>> {
    let f32s: Vec<u8> = (0..8)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let mut q8 = vec![0x00, 0x38]; // f16 0.5
    q8.extend((0..32u8).map(|i| i.wrapping_sub(16)));
    let llama = Writer::default()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(2))
        .kv("llama.context_length", Value::U32(128))
        .kv("llama.embedding_length", Value::U32(64))
        .kv("llama.feed_forward_length", Value::U32(128))
        .kv("llama.attention.head_count", Value::U32(4))
        .kv("llama.attention.head_count_kv", Value::U32(2))
        .kv("llama.rope.freq_base", Value::F32(10_000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("<s>".into()), Value::String("a".into())]),
        )
        .tensor("output_norm.weight", &[8], GgmlType::F32, f32s.clone())
        .tensor("token_embd.weight", &[32, 1], GgmlType::Q8_0, q8);
    let kinds = Writer::default()
        .kv("a.u8", Value::U8(7))
        .kv("a.i64", Value::I64(-5))
        .kv("a.f64", Value::F64(0.25))
        .kv("a.bool", Value::Bool(true))
        .kv(
            "a.nested",
            Value::Array(vec![Value::Array(vec![Value::U16(1)])]),
        )
        .tensor("v", &[8], GgmlType::F32, f32s);
    vec![llama.to_bytes(), kinds.to_bytes()]
}

fn safetensors(bytes: &[u8]) -> Outcome {
    Ok(BertWeights::from_bytes(bytes, &tiny_config()).is_ok())
}

fn policy(bytes: &[u8]) -> Outcome {
    let Ok(p) = Policy::parse(&String::from_utf8_lossy(bytes)) else {
        return Ok(false);
    };
    let features = Features {
        intent: "oos".into(),
        domain: String::new(),
        confidence: 0.3,
        out_of_scope: true,
        prompt_tokens: 40,
        max_tokens: 64,
        battery: 0.2,
        thermal: Thermal::Serious,
        link_up: true,
        rtt_ms: 45.0,
        bandwidth_mbps: 12.0,
        local_tokens_per_s: 20.0,
        cloud_quota_left: 1000,
        hour: 23,
    };
    let model = ModelInfo {
        layers: 30,
        split_points: vec![4, 8, 15],
    };
    // Any accepted policy evaluates to a decision for any features.
    let _ = p.evaluate(&features, &model);
    Ok(true)
}

fn policy_seeds() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../deploy/config/policy.toml").to_vec(),
        b"version = 3\ndefault_split = 8\ndefault = \"local\"\n\n[[rule]]\nname = \"hot\"\nwhen = \"thermal == 'serious' && battery < 0.3\"\naction = \"split(15)\"\n".to_vec(),
    ]
}

fn openai(endpoint: Endpoint, bytes: &[u8]) -> Outcome {
    let Ok(req) = wire_request(endpoint, bytes, "smollm2") else {
        return Ok(false);
    };
    // What the handler passes on is then checked like any gRPC request.
    edge_request(req)
}

fn chat_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"model":"smollm2","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Why is the sky blue?"},{"role":"assistant","content":"Scattering."},{"role":"user","content":[{"type":"text","text":"More?"}]}],"max_completion_tokens":32,"temperature":0.7,"top_p":0.9,"seed":5,"stop":["\n\n"],"stream":true,"stream_options":{"include_usage":true},"seam_route":"split","seam_context_overflow":"sliding_window"}"#,
        r#"{"messages":[{"role":"developer","content":"x"},{"role":"user","content":"y"}],"n":1,"max_tokens":4096}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn completion_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"model":"smollm2","prompt":"The capital of France is","max_tokens":8}"#,
        r#"{"prompt":["Once upon a time"],"temperature":1.5,"seed":1,"stop":"."}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The agent's checks of a wire request: conversion, then the limits of an 8,192-position
/// context.
fn edge_request(req: pb::GenerateRequest) -> Outcome {
    use seam_edge::runtime::engine::validate;
    use seam_edge::server::convert::generate_request;
    let Ok((r, _)) = generate_request(req, None, Instant::now()) else {
        return Ok(false);
    };
    Ok(validate(&r, 8192, Overflow::Error).is_ok())
}

fn edge_generate(bytes: &[u8]) -> Outcome {
    match pb::GenerateRequest::decode(bytes) {
        Ok(req) => edge_request(req),
        Err(_) => Ok(false),
    }
}

fn generate_seeds() -> Vec<Vec<u8>> {
    let plain = pb::GenerateRequest {
        prompt: "The capital of France is".into(),
        max_tokens: 12,
        stop: vec![".".into()],
        system_prompt: Some("Be brief.".into()),
        chat: true,
        draft_tokens: Some(4),
        context_overflow: pb::ContextOverflow::TruncateStart as i32,
        ..Default::default()
    };
    let conversation = pb::GenerateRequest {
        messages: vec![
            pb::ChatMessage {
                role: "system".into(),
                content: "You help drivers.".into(),
            },
            pb::ChatMessage {
                role: "user".into(),
                content: "Tyre pressure?".into(),
            },
        ],
        max_tokens: 16,
        route: pb::RoutePreference::Split as i32,
        split_layer: 8,
        deadline_ms: 2000,
        ..Default::default()
    };
    vec![plain.encode_to_vec(), conversation.encode_to_vec()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed is a valid input its decoder accepts (so mutations start from the inside).
    #[test]
    fn every_seed_is_accepted() {
        for t in all() {
            let seeds = (t.seeds)();
            assert!(!seeds.is_empty(), "{} has no seeds", t.name);
            for (i, s) in seeds.iter().enumerate() {
                assert_eq!((t.run)(s), Ok(true), "{} seed {i} was refused", t.name);
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = all().iter().map(|t| t.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
