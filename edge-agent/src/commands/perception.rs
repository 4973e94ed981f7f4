//! `seam-edge classify` and `seam-edge embed`: one text from the command line, or one text per
//! line of stdin, answered with one JSON object per line on stdout (a line that cannot be
//! processed gets `{"error": …}` so answers stay aligned with their inputs).

use crate::perception::{Classification, Embedding, Perception, PerceptionLimits};
use std::io::{BufRead, Write};
use std::path::Path;

/// What to compute per text.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    Classify { top_k: usize },
    Embed,
}

pub fn run(model: &Path, text: Option<String>, task: Task, threads: usize) -> anyhow::Result<()> {
    let mut p = Perception::load(model, threads, PerceptionLimits::default())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match text {
        Some(t) => {
            let line = answer(&mut p, &t, task)?;
            writeln!(out, "{line}")?;
        }
        None => {
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                let json = match answer(&mut p, &line, task) {
                    Ok(j) => j,
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                };
                if writeln!(out, "{json}").and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn answer(p: &mut Perception, text: &str, task: Task) -> crate::Result<serde_json::Value> {
    Ok(match task {
        Task::Classify { top_k } => classification_json(&p.classify(text, top_k)?),
        Task::Embed => {
            let e = p.embed(&[text])?;
            embedding_json(&e[0])
        }
    })
}

/// `{"intent", "domain", "confidence", "out_of_scope", "top": [{intent, domain, score}],
/// "tokens", "truncated"}`.
pub fn classification_json(c: &Classification) -> serde_json::Value {
    serde_json::to_value(c).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

fn embedding_json(e: &Embedding) -> serde_json::Value {
    serde_json::json!({
        "embedding": e.values,
        "tokens": e.tokens,
        "truncated": e.truncated,
    })
}
