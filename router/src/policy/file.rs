//! The policy file (TOML) as operators write it, before compilation.
//!
//! ```toml
//! version = 3                  # pushed to devices with the policy
//! default_split = 8            # the layer of `split` without a K
//! default = "local"            # the action when no rule matches
//!
//! [auto]                       # the cost model of `auto` (all optional)
//! tokens_per_round_trip = 1.5
//!
//! [[rule]]
//! name = "privacy"
//! when = 'domain in ["banking", "credit_cards"]'
//! action = "local"
//!
//! [[rule]]
//! name = "uncertain"
//! when = "out_of_scope || confidence < 0.5"
//! action = "split(15)"
//! ```

use super::cost::CostModel;
use serde::{Deserialize, Serialize};

/// A rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique name; logged with every decision the rule makes.
    pub name: String,
    /// CEL condition over the request features (see `Features`).
    pub when: String,
    /// `local`, `split`, `split(K)`, `reject` or `auto`.
    pub action: String,
    /// Why: required for `reject` (the app sees it), optional otherwise.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The whole file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Version number pushed to devices with the policy.
    pub version: u64,
    /// Split layer of the plain `split` action.
    pub default_split: u32,
    /// Action when no rule matches.
    #[serde(default = "default_action")]
    pub default: String,
    #[serde(default)]
    pub auto: CostModel,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleFile>,
}

fn default_action() -> String {
    "local".into()
}
