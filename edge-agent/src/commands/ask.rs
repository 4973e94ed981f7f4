//! `seam-edge ask`: a small client of the Assistant API (the demo uses it; so can scripts).

use seam_shared::proto::common::{RouteKind, SamplingParams};
use seam_shared::proto::edge as pb;
use seam_shared::proto::edge::assistant_client::AssistantClient;
use std::io::Write;

pub async fn run(server: String, req: pb::GenerateRequest) -> anyhow::Result<()> {
    let mut client = AssistantClient::connect(server.clone())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {server}: {e}"))?;
    let prompt = req.prompt.clone();
    println!("> {prompt}");
    let mut stream = client.generate(req).await?.into_inner();
    let mut stdout = std::io::stdout();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(pb::generate_event::Event::Token(t)) => {
                print!("{}", t.text);
                stdout.flush()?;
            }
            Some(pb::generate_event::Event::Final(f)) => {
                println!();
                let route = f.route.unwrap_or_default();
                let kind = RouteKind::try_from(route.kind).unwrap_or(RouteKind::Unspecified);
                let t = f.timings.unwrap_or_default();
                let finish = pb::FinishReason::try_from(f.finish_reason)
                    .unwrap_or(pb::FinishReason::Unspecified);
                let features = f.features.clone().unwrap_or_default();
                if !features.intent.is_empty() {
                    println!(
                        "  [intent {} · domain {} · confidence {:.2}{} · classified in {:.1} ms]",
                        features.intent,
                        if features.domain.is_empty() {
                            "-"
                        } else {
                            &features.domain
                        },
                        features.confidence,
                        if features.out_of_scope {
                            " · out of scope"
                        } else {
                            ""
                        },
                        t.route_ms
                    );
                }
                println!(
                    "  [route {} ({}) · prompt {} tok ({} cached) · {} tok · prefill {:.0} tok/s · decode {:.1} tok/s · first token {:.0} ms · shipped {} B up / {} B down · kv {} B · {}]",
                    kind.as_str_name().trim_start_matches("ROUTE_KIND_"),
                    route_why(&route),
                    f.prompt_tokens,
                    f.cached_prompt_tokens,
                    f.completion_tokens,
                    t.prefill_tokens_per_s,
                    t.decode_tokens_per_s,
                    t.first_token_ms,
                    f.bytes_sent,
                    f.bytes_received,
                    f.kv_bytes,
                    finish
                        .as_str_name()
                        .trim_start_matches("FINISH_REASON_")
                        .to_lowercase()
                );
                if !f.context_overflow.is_empty() {
                    println!(
                        "  [context overflow: {} · {} prompt tokens dropped · {} positions slid out of the window]",
                        f.context_overflow, f.truncated_prompt_tokens, f.evicted_tokens
                    );
                }
                if kind == RouteKind::Split && f.decode_round_trips > 0 {
                    println!(
                        "  [speculation: {} drafted ({} by prompt lookup, {} by the worker), {} accepted ({:.0}%) · {:.2} tokens per round trip over {} decode round trips · acceptance by position {} · {:.1} ms device CPU per token]",
                        f.drafted_tokens,
                        f.lookup_drafted_tokens,
                        f.worker_drafted_tokens,
                        f.accepted_draft_tokens,
                        f.acceptance_rate * 100.0,
                        f.tokens_per_round_trip,
                        f.decode_round_trips,
                        super::generate::percent_list(&f.acceptance_by_position),
                        f.cpu_ms_per_token,
                    );
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// The flags of `seam-edge ask`.
#[derive(Debug, Clone, clap::Args)]
pub struct AskArgs {
    /// The agent's address, e.g. http://127.0.0.1:50051.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub server: String,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 0)]
    pub deadline_ms: u64,
    /// Routing preference: auto (the agent decides), local, or split.
    #[arg(long, default_value = "auto", value_parser = ["auto", "local", "split"])]
    pub route: String,
    /// With `--route split`: the split layer K (0: the agent's default).
    #[arg(long, default_value_t = 0)]
    pub split_layer: u32,
    /// When the prompt plus --max-tokens do not fit the agent's context: error,
    /// truncate_start or sliding_window (default: the agent's).
    #[arg(long)]
    pub context_overflow: Option<crate::runtime::context::Overflow>,
    pub prompt: String,
}

/// How a route came about: the deciding rule (with the policy version) and its reason.
fn route_why(route: &seam_shared::proto::common::Route) -> String {
    let rule = match (route.rule.as_str(), route.policy_version) {
        ("override" | "default" | "", _) | (_, 0) => String::new(),
        (rule, v) => format!("rule {rule} of policy v{v}"),
    };
    match (rule.is_empty(), route.reason.is_empty()) {
        (true, _) => route.reason.clone(),
        (false, true) => rule,
        (false, false) => format!("{rule}: {}", route.reason),
    }
}

/// The wire request for the CLI flags.
pub fn request(a: &AskArgs) -> pb::GenerateRequest {
    let route = match a.route.as_str() {
        "local" => pb::RoutePreference::Local,
        "split" => pb::RoutePreference::Split,
        _ => pb::RoutePreference::Auto,
    };
    pb::GenerateRequest {
        prompt: a.prompt.clone(),
        max_tokens: a.max_tokens,
        sampling: Some(SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
            top_k: None,
        }),
        stop: a.stop.clone(),
        deadline_ms: a.deadline_ms,
        system_prompt: a.system.clone(),
        chat: a.chat,
        route: route as i32,
        split_layer: a.split_layer,
        context_overflow: a
            .context_overflow
            .map_or(0, |o| crate::server::convert::overflow_to_wire(o) as i32),
        ..Default::default()
    }
}
