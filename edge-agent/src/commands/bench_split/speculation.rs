//! The `speculation` section of `bench-split`: on held-out prompts the draft head never saw,
//! local generation, one-round-trip-per-token split and speculative split side by side, with
//! the tokens each decode round trip settles, the acceptance per draft position, and the
//! device CPU time per token.

use super::{AGREEMENT_PROMPTS, SplitBench, SplitBenchArgs};
use crate::commands::generate::percent_list;
use crate::runtime::engine::{GenerateRequest, GenerateStats};
use crate::runtime::sampler::SamplingParams;
use crate::runtime::split::SpeculationStats;
use seam_shared::tensor::WireDtype;
use std::time::Duration;

/// Prompts whose answers reuse the prompt's words: summaries, rewrites, extraction.
pub const REUSE_PROMPTS: [&str; 8] = [
    "Rewrite this sentence in formal English: the meeting got moved to next tuesday because the boss is sick and the room was booked anyway.",
    "Extract the name, the date and the city from this text as JSON: Maria Lopez will arrive in Rotterdam on 14 March 2027 for the harbour conference.",
    "Summarise in one sentence: The city council voted on Tuesday to extend the tram line to the northern suburbs. The extension will add four stations and is expected to open in 2029. Residents welcomed the decision, although some shop owners worry about two years of construction.",
    "Correct the spelling mistakes in this text: The weaher tomorow will be sunny with a chanse of rain in the evenning.",
    "Put this list in alphabetical order: pears, apples, oranges, bananas, cherries, grapes.",
    "Turn these notes into a short email: meeting moved to Friday 10am, room 4B, bring the quarterly report, lunch provided.",
    "Repeat the following address exactly, one field per line: Hannah Schmidt, Lindenstrasse 12, 10969 Berlin, Germany.",
    "Translate this product description into simpler words: The ergonomic aluminium stand elevates your laptop to eye level and improves airflow for passive cooling.",
];

/// What one route did over a prompt set.
#[derive(Default)]
struct Totals {
    tokens: usize,
    decode: Duration,
    cpu: Duration,
    spec: SpeculationStats,
}

impl Totals {
    fn add(&mut self, s: &GenerateStats) {
        self.tokens += s.completion_tokens;
        self.decode += s.decode;
        self.cpu += s.decode_cpu;
        if let Some(r) = &s.split {
            self.spec.merge(&r.speculation);
        }
    }

    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.decode.as_secs_f64().max(1e-9)
    }

    fn cpu_ms_per_token(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e3 / self.tokens.max(1) as f64
    }
}

impl SplitBench {
    /// Local, per-token split and speculative split on the open chat prompts and the
    /// prompts that reuse their words (the default wire), interleaved per prompt.
    pub(super) fn speculation(&mut self, args: &SplitBenchArgs) -> anyhow::Result<()> {
        println!(
            "Speculative split at layer {} over {} (greedy, chat template, up to {} tokens per answer, {} wire)",
            self.layer,
            args.link,
            args.decode,
            WireDtype::DEFAULT
        );
        println!();
        println!(
            "| prompts | route | tokens | decode tok/s | vs per-token split | vs local | tokens per decode round trip | drafts (lookup) | acceptance by draft position | device CPU ms per token | vs local |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let sets: [(&str, &[&str]); 2] = [
            ("open chat (20)", &AGREEMENT_PROMPTS),
            ("reuse the prompt (8)", &REUSE_PROMPTS),
        ];
        for (name, prompts) in sets {
            let mut local = Totals::default();
            let mut plain = Totals::default();
            let mut spec = Totals::default();
            for (n, prompt) in prompts.iter().enumerate() {
                eprint!(
                    "\rbench-split: speculation, {name}, prompt {}/{}   ",
                    n + 1,
                    prompts.len()
                );
                let req = |draft_tokens| GenerateRequest {
                    history: Vec::new(),
                    system: None,
                    prompt: (*prompt).into(),
                    chat: true,
                    max_tokens: args.decode as u32,
                    sampling: SamplingParams::default(),
                    stop: Vec::new(),
                    deadline: None,
                    draft_tokens,
                    context_overflow: None,
                };
                local.add(&self.generate(&req(None), None)?.0);
                plain.add(&self.generate(&req(Some(0)), Some(WireDtype::DEFAULT))?.0);
                spec.add(&self.generate(&req(None), Some(WireDtype::DEFAULT))?.0);
            }
            eprintln!();
            let base = plain.tokens_per_s();
            for (route, t) in [
                ("local", &local),
                ("split, one token per round trip", &plain),
                ("split, speculative", &spec),
            ] {
                let split = !std::ptr::eq(t, &local);
                println!(
                    "| {name} | {route} | {} | {:.1} | {:.2}× | {:.2}× | {} | {} | {} | {:.1} | {:.2}× |",
                    t.tokens,
                    t.tokens_per_s(),
                    t.tokens_per_s() / base,
                    t.tokens_per_s() / local.tokens_per_s(),
                    if split {
                        format!("{:.2}", t.spec.tokens_per_round_trip())
                    } else {
                        "–".into()
                    },
                    if split {
                        format!("{} ({})", t.spec.drafted, t.spec.lookup_drafted)
                    } else {
                        "–".into()
                    },
                    if t.spec.drafted > 0 {
                        percent_list(&t.spec.acceptance_by_position())
                    } else {
                        "–".into()
                    },
                    t.cpu_ms_per_token(),
                    t.cpu_ms_per_token() / local.cpu_ms_per_token().max(1e-9),
                );
            }
        }
        Ok(())
    }
}
