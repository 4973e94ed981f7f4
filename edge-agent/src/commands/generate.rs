//! `seam-edge generate`: the completion alone on stdout, a stats line on stderr.

use super::{SplitArgs, load_engine};
use crate::perception::{Classification, Perception, PerceptionLimits};
use crate::runtime::engine::{GenerateRequest, GenerateStats, Route};
use crate::runtime::kv_cache::KvDtype;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of one `generate` call.
#[derive(Debug, Clone)]
pub struct GenerateArgs {
    pub context: super::ContextArgs,
    pub threads: usize,
    pub kv: KvDtype,
    pub json_stats: bool,
    pub split: SplitArgs,
    /// Encoder package: the prompt's intent is classified first and reported in the stats.
    pub encoder: Option<PathBuf>,
}

pub fn run(dir: &Path, req: GenerateRequest, args: &GenerateArgs) -> anyhow::Result<()> {
    let mut engine = load_engine(dir, args.threads, args.kv, super::DEFAULT_KV_BUDGET)?;
    args.context.apply(&mut engine)?;
    // The worker link runs its I/O on this runtime while the engine blocks this thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let split = {
        let _context = runtime.enter();
        args.split.resolve(&engine)?
    };
    let mut link = split
        .as_ref()
        .map(|(endpoint, _)| endpoint.link(runtime.handle().clone()));
    let route = match (&mut link, &split) {
        (Some(link), Some((_, layer))) => Route::Split {
            layer: *layer,
            wire: args.split.wire,
            link: &mut **link,
        },
        _ => Route::Local,
    };
    let intent = match &args.encoder {
        Some(enc) => {
            let mut p = Perception::load(enc, args.threads, PerceptionLimits::default())?;
            let started = Instant::now();
            let c = p.classify(&req.prompt, 1)?;
            Some((c, started.elapsed()))
        }
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let mut on_token = |t: crate::runtime::engine::TokenOut| {
        if let Err(e) = out.write_all(t.text.as_bytes()).and_then(|_| out.flush()) {
            write_error = Some(e);
            return false;
        }
        true
    };
    let stats = engine.generate_routed(&req, route, &mut on_token)?;
    if let Some(why) = &stats.fallback {
        eprintln!("seam-edge: the split did not complete ({why}); the device answered");
    }
    if let Some(o) = stats.context.applied {
        eprintln!(
            "seam-edge: the request did not fit the context of {}: {} ({} prompt tokens dropped, {} positions slid out of the window)",
            engine.context(),
            o.as_str(),
            stats.context.truncated,
            stats.context.evicted
        );
    }
    if let Some(e) = write_error
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    let _ = writeln!(out);
    eprintln!(
        "{}",
        stats_line(&stats, engine.kv_dtype(), intent.as_ref(), args.json_stats)
    );
    Ok(())
}

/// The stats line (text or one JSON object), with the route, the traffic of a split request,
/// and the prompt's intent and the time its classification took when an encoder was given.
pub fn stats_line(
    s: &GenerateStats,
    kv: KvDtype,
    intent: Option<&(Classification, Duration)>,
    json: bool,
) -> String {
    if json {
        let mut v = serde_json::json!({
            "prompt_tokens": s.prompt_tokens,
            "cached_prompt_tokens": s.cached_prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "prefill_ms": s.prefill.as_secs_f64() * 1e3,
            "decode_ms": s.decode.as_secs_f64() * 1e3,
            "first_token_ms": s.first_token.as_secs_f64() * 1e3,
            "prefill_tokens_per_s": s.prefill_tokens_per_s(),
            "decode_tokens_per_s": s.decode_tokens_per_s(),
            "kv_bytes": s.kv_bytes,
            "kv_bytes_per_token": s.kv_bytes_per_token,
            "kv_dtype": kv.to_string(),
            "finish_reason": format!("{:?}", s.finish).to_lowercase(),
            "route": s.split.as_ref().map_or("local".to_string(), |r| format!("split({})", r.layer)),
            "wire": s.split.as_ref().map(|r| r.wire.to_string()),
            "bytes_sent": s.split.as_ref().map_or(0, |r| r.counters.bytes_sent),
            "bytes_received": s.split.as_ref().map_or(0, |r| r.counters.bytes_received),
            "round_trips": s.split.as_ref().map_or(0, |r| r.counters.round_trips),
            "speculative": s.split.as_ref().is_some_and(|r| r.speculation.enabled),
            "drafted_tokens": s.split.as_ref().map_or(0, |r| r.speculation.drafted),
            "accepted_draft_tokens": s.split.as_ref().map_or(0, |r| r.speculation.accepted),
            "acceptance_rate": s.split.as_ref().map_or(0.0, |r| r.speculation.acceptance_rate()),
            "tokens_per_round_trip": s.tokens_per_round_trip(),
            "decode_round_trips": s.split.as_ref().map_or(0, |r| r.speculation.decode_round_trips),
            "acceptance_by_position": s.split.as_ref().map_or_else(Vec::new, |r| r.speculation.acceptance_by_position()),
            "lookup_drafted_tokens": s.split.as_ref().map_or(0, |r| r.speculation.lookup_drafted),
            "lookup_accepted_tokens": s.split.as_ref().map_or(0, |r| r.speculation.lookup_accepted),
            "worker_drafted_tokens": s.split.as_ref().map_or(0, |r| r.speculation.worker_drafted),
            "worker_accepted_tokens": s.split.as_ref().map_or(0, |r| r.speculation.worker_accepted),
            "cpu_ms_per_token": s.cpu_ms_per_token(),
            "context_overflow": s.context.applied.map(|o| o.as_str()),
            "truncated_prompt_tokens": s.context.truncated,
            "evicted_tokens": s.context.evicted,
        });
        if let Some((c, took)) = intent {
            v["intent"] = c.intent.clone().into();
            v["domain"] = c.domain.clone().into();
            v["confidence"] = c.confidence.into();
            v["out_of_scope"] = c.out_of_scope.into();
            v["route_ms"] = (took.as_secs_f64() * 1e3).into();
        }
        v.to_string()
    } else {
        let intent = intent.map_or(String::new(), |(c, took)| {
            format!(
                "intent {} ({}, {:.2}{}) in {:.1} ms · ",
                c.intent,
                c.domain,
                c.confidence,
                if c.out_of_scope { ", out of scope" } else { "" },
                took.as_secs_f64() * 1e3
            )
        });
        let route = match &s.split {
            Some(r) => {
                let spec = if r.speculation.enabled {
                    format!(
                        " · {} drafted ({} by lookup), {:.0}% accepted, {:.2} tokens per round trip, acceptance by position {}",
                        r.speculation.drafted,
                        r.speculation.lookup_drafted,
                        r.speculation.acceptance_rate() * 100.0,
                        s.tokens_per_round_trip(),
                        percent_list(&r.speculation.acceptance_by_position()),
                    )
                } else {
                    " · not speculative".to_string()
                };
                format!(
                    " · split({}) {} wire, {} B sent, {} B received, {} round trips{spec}",
                    r.layer,
                    r.wire,
                    r.counters.bytes_sent,
                    r.counters.bytes_received,
                    r.counters.round_trips
                )
            }
            None => String::new(),
        };
        format!(
            "{intent}prefill {} tok ({} cached) {:.1} tok/s · decode {} tok {:.1} tok/s · first token {:.0} ms · kv {} B ({} B/token, {kv}) · {:?}{route}",
            s.prompt_tokens,
            s.cached_prompt_tokens,
            s.prefill_tokens_per_s(),
            s.completion_tokens,
            s.decode_tokens_per_s(),
            s.first_token.as_secs_f64() * 1e3,
            s.kv_bytes,
            s.kv_bytes_per_token,
            s.finish
        )
    }
}

/// `[90 71 55]`: shares as whole percents.
pub fn percent_list(shares: &[f64]) -> String {
    let items: Vec<String> = shares.iter().map(|a| format!("{:.0}", a * 100.0)).collect();
    format!("[{}]%", items.join(" "))
}
