//! Replaying recorded decisions against another policy: how would it have routed the same
//! traffic? The trace is JSON Lines, one [`TraceRecord`] per request, as devices log them.

use super::{Decision, Features, ModelInfo, Policy};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::BufRead;

/// Longest trace line accepted.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One logged decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRecord {
    pub features: Features,
    pub model: ModelInfo,
    pub decision: Decision,
}

/// A decision the new policy makes differently.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// 1-based line of the trace.
    pub line: usize,
    pub before: Decision,
    pub after: Decision,
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayReport {
    pub requests: usize,
    /// Requests per route (`local`, `split(8)`, `reject`) in the trace and under the new policy.
    pub before: BTreeMap<String, usize>,
    pub after: BTreeMap<String, usize>,
    /// Requests per deciding rule under the new policy.
    pub by_rule: BTreeMap<String, usize>,
    /// Every request whose route changed.
    pub changes: Vec<Change>,
}

/// Re-decides every request of `trace` with `policy`.
pub fn replay(policy: &Policy, trace: impl BufRead) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    for (i, line) in trace.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Error::Trace(format!("line {n}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(Error::Trace(format!(
                "line {n}: {} bytes is more than {MAX_LINE_BYTES}",
                line.len()
            )));
        }
        let rec: TraceRecord =
            serde_json::from_str(&line).map_err(|e| Error::Trace(format!("line {n}: {e}")))?;
        rec.features
            .validate()
            .map_err(|e| Error::Trace(format!("line {n}: {e}")))?;
        let after = policy.evaluate(&rec.features, &rec.model);
        report.requests += 1;
        *report
            .before
            .entry(rec.decision.route.to_string())
            .or_default() += 1;
        *report.after.entry(after.route.to_string()).or_default() += 1;
        *report.by_rule.entry(after.rule.clone()).or_default() += 1;
        if after.route != rec.decision.route {
            report.changes.push(Change {
                line: n,
                before: rec.decision,
                after,
            });
        }
    }
    Ok(report)
}
