//! Routes and the actions of policy rules.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The device runs every layer.
    Local,
    /// Split at the policy's default split layer.
    Split,
    /// Split at layer K.
    SplitAt(u32),
    /// Refuse the request (the rule's `reason` is given to the app).
    Reject,
    /// Let the cost model choose between local and each split point.
    Auto,
}

impl Action {
    /// Parses `local`, `split`, `split(K)`, `reject` or `auto`.
    pub fn parse(s: &str) -> Result<Action, String> {
        let t = s.trim();
        Ok(match t {
            "local" => Action::Local,
            "split" => Action::Split,
            "reject" => Action::Reject,
            "auto" => Action::Auto,
            _ => {
                let k = t
                    .strip_prefix("split(")
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| {
                        format!("action `{s}` is not one of local, split, split(K), reject, auto")
                    })?;
                let k: u32 = k
                    .trim()
                    .parse()
                    .map_err(|_| format!("action `{s}`: K must be a positive layer number"))?;
                if k == 0 {
                    return Err(format!("action `{s}`: K must be a positive layer number"));
                }
                Action::SplitAt(k)
            }
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let split;
        f.pad(match self {
            Action::Local => "local",
            Action::Split => "split",
            Action::SplitAt(k) => {
                split = format!("split({k})");
                &split
            }
            Action::Reject => "reject",
            Action::Auto => "auto",
        })
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "route", rename_all = "snake_case")]
pub enum Route {
    Local,
    Split { layer: u32 },
    Reject { reason: String },
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Local => f.write_str("local"),
            Route::Split { layer } => write!(f, "split({layer})"),
            Route::Reject { .. } => f.write_str("reject"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_print_back() {
        for s in ["local", "split", "split(8)", "reject", "auto"] {
            assert_eq!(Action::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Action::parse(" split( 15 ) ").unwrap(), Action::SplitAt(15));
        for bad in [
            "",
            "cloud",
            "split()",
            "split(0)",
            "split(-1)",
            "split(x)",
            "split(8",
        ] {
            assert!(Action::parse(bad).is_err(), "{bad:?}");
        }
    }
}
