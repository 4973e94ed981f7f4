//! The routing policy: ordered rules, each a CEL condition over the request [`Features`] and an
//! [`Action`]; the first rule whose condition holds decides. I/O-free: the gateway and the edge
//! agent hand it features and the model's split points and get a [`Decision`] back, with the
//! rule that made it and why.

pub mod cost;
pub mod features;
pub mod file;
pub mod replay;
pub mod route;

pub use cost::{CostModel, Estimate};
pub use features::{Features, Thermal, VARIABLES};
pub use file::{PolicyFile, RuleFile};
pub use route::{Action, Route};

use crate::error::{Error, Result};
use cel::{Program, Value};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Most rules in one policy.
pub const MAX_RULES: usize = 1000;
/// Name of the implicit last rule (the file's `default` action).
pub const DEFAULT_RULE: &str = "default";

/// What the evaluator needs to know about the device's model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Transformer layers.
    pub layers: u32,
    /// Layers at which the package can be split.
    pub split_points: Vec<u32>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub when: String,
    program: Program,
    pub action: Action,
    pub reason: Option<String>,
}

/// A policy ready to evaluate.
#[derive(Debug)]
pub struct Policy {
    pub version: u64,
    pub default_split: u32,
    pub default: Action,
    pub auto: CostModel,
    pub rules: Vec<Rule>,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub policy_version: u64,
    /// Name of the rule that decided ([`DEFAULT_RULE`] when none matched).
    pub rule: String,
    /// The rule's action as written.
    pub action: String,
    #[serde(flatten)]
    pub route: Route,
    /// Why, in words (the rule's reason, or the cost model's estimates for `auto`).
    pub why: String,
    /// Rules whose condition failed to evaluate on these features (they did not match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Policy {
    /// Reads and compiles a policy file.
    pub fn from_file(path: &Path) -> Result<Policy> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() > MAX_POLICY_BYTES as u64 {
            return Err(Error::Policy(format!(
                "{}: {} bytes is more than the {MAX_POLICY_BYTES} a policy may have",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Policy::parse(&text).map_err(|e| match e {
            Error::Policy(m) => Error::Policy(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and compiles policy text; every problem is an error naming the rule or field.
    pub fn parse(text: &str) -> Result<Policy> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(Error::Policy(format!(
                "{} bytes is more than the {MAX_POLICY_BYTES} a policy may have",
                text.len()
            )));
        }
        let file: PolicyFile = toml::from_str(text).map_err(|e| Error::Policy(e.to_string()))?;
        Policy::compile(file)
    }

    /// Compiles a parsed file.
    pub fn compile(file: PolicyFile) -> Result<Policy> {
        let bad = |m: String| Error::Policy(m);
        if file.default_split == 0 {
            return Err(bad("default_split must be a positive layer number".into()));
        }
        file.auto.validate().map_err(bad)?;
        let default = Action::parse(&file.default).map_err(|e| bad(format!("default: {e}")))?;
        if default == Action::Reject {
            return Err(bad(
                "default: reject needs a reason; write a last rule with when = \"true\"".into(),
            ));
        }
        if file.rules.len() > MAX_RULES {
            return Err(bad(format!(
                "{} rules is more than the {MAX_RULES} a policy may have",
                file.rules.len()
            )));
        }
        let known: HashSet<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            let at = format!("rule {} (`{}`)", i + 1, r.name);
            if r.name.trim().is_empty() || r.name == DEFAULT_RULE {
                return Err(bad(format!(
                    "rule {}: a rule needs a name other than `{DEFAULT_RULE}`",
                    i + 1
                )));
            }
            if !names.insert(r.name.clone()) {
                return Err(bad(format!("{at}: the name is used twice")));
            }
            let action = Action::parse(&r.action).map_err(|e| bad(format!("{at}: {e}")))?;
            if action == Action::Reject && r.reason.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(bad(format!("{at}: reject needs a reason")));
            }
            let program =
                Program::compile(&r.when).map_err(|e| bad(format!("{at}: `{}`: {e}", r.when)))?;
            let refs = program.references();
            let mut unknown: Vec<&str> = refs
                .variables()
                .into_iter()
                .filter(|v| !known.contains(v))
                .collect();
            unknown.sort_unstable();
            if !unknown.is_empty() {
                return Err(bad(format!(
                    "{at}: unknown variable(s) {} (known: {})",
                    unknown.join(", "),
                    VARIABLES.map(|(n, _)| n).join(", ")
                )));
            }
            // Type errors show on a typical request: the condition must give a bool.
            match program.execute(&Features::example().context()) {
                Ok(Value::Bool(_)) => {}
                Ok(v) => {
                    return Err(bad(format!("{at}: `{}` gives {v:?}, not a bool", r.when)));
                }
                Err(e) => return Err(bad(format!("{at}: `{}`: {e}", r.when))),
            }
            rules.push(Rule {
                name: r.name,
                when: r.when,
                program,
                action,
                reason: r.reason,
            });
        }
        Ok(Policy {
            version: file.version,
            default_split: file.default_split,
            default,
            auto: file.auto,
            rules,
        })
    }

    /// Decides the route of a request with features `f` on a device whose model is `model`.
    pub fn evaluate(&self, f: &Features, model: &ModelInfo) -> Decision {
        let context = f.context();
        let mut errors = Vec::new();
        for rule in &self.rules {
            match rule.program.execute(&context) {
                Ok(Value::Bool(true)) => {
                    return self.apply(
                        &rule.name,
                        rule.action,
                        rule.reason.as_deref(),
                        f,
                        model,
                        errors,
                    );
                }
                Ok(Value::Bool(false)) => {}
                Ok(v) => errors.push(format!("{}: gave {v:?}, not a bool", rule.name)),
                Err(e) => errors.push(format!("{}: {e}", rule.name)),
            }
        }
        self.apply(DEFAULT_RULE, self.default, None, f, model, errors)
    }

    fn apply(
        &self,
        rule: &str,
        action: Action,
        reason: Option<&str>,
        f: &Features,
        model: &ModelInfo,
        errors: Vec<String>,
    ) -> Decision {
        let split_at = |k: u32, why: String| {
            if model.split_points.contains(&k) {
                (Route::Split { layer: k }, why)
            } else {
                (
                    Route::Local,
                    format!(
                        "layer {k} is not a split point of the model ({:?}): local",
                        model.split_points
                    ),
                )
            }
        };
        let given = || reason.map(str::to_string).unwrap_or_default();
        let (route, why) = match action {
            Action::Local => (Route::Local, given()),
            Action::Split => split_at(self.default_split, given()),
            Action::SplitAt(k) => split_at(k, given()),
            Action::Reject => {
                let r = given();
                (Route::Reject { reason: r.clone() }, r)
            }
            Action::Auto => {
                let e = self.auto.estimate(f, model.layers, &model.split_points);
                let splits: Vec<String> = e
                    .split_ms
                    .iter()
                    .map(|(k, ms)| format!("split({k}) {}", ms_text(*ms)))
                    .collect();
                let why = format!(
                    "estimated local {} vs {}",
                    ms_text(e.local_ms),
                    if splits.is_empty() {
                        "no split point".into()
                    } else {
                        splits.join(", ")
                    }
                );
                match e.choice {
                    Some(k) => (Route::Split { layer: k }, why),
                    None => (Route::Local, why),
                }
            }
        };
        Decision {
            policy_version: self.version,
            rule: rule.to_string(),
            action: action.to_string(),
            route,
            why,
            errors,
        }
    }
}

fn ms_text(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.0} ms")
    } else {
        "unavailable".into()
    }
}

#[cfg(test)]
mod tests;
