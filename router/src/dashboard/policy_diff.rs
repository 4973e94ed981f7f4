//! The last policy change as the dashboard shows it: a line diff with a little context.

use serde::Serialize;
use similar::{ChangeTag, TextDiff};

/// Unchanged lines shown around each change.
const CONTEXT: usize = 2;
/// Lines returned at most (a policy is at most 256 KiB; the page shows a readable part).
const MAX_LINES: usize = 400;

/// One line of the diff: `op` is `+` (added), `-` (removed), ` ` (context) or `…` (a gap
/// between hunks, or the rest cut off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub op: &'static str,
    pub text: String,
}

/// The lines that changed from `old` to `new`, with context; empty when they are equal.
pub fn lines(old: &str, new: &str) -> Vec<Line> {
    let diff = TextDiff::from_lines(old, new);
    let mut out = Vec::new();
    for (i, group) in diff.grouped_ops(CONTEXT).iter().enumerate() {
        if i > 0 {
            out.push(Line {
                op: "…",
                text: String::new(),
            });
        }
        for op in group {
            for change in diff.iter_changes(op) {
                let op = match change.tag() {
                    ChangeTag::Delete => "-",
                    ChangeTag::Insert => "+",
                    ChangeTag::Equal => " ",
                };
                out.push(Line {
                    op,
                    text: change.value().trim_end_matches(['\n', '\r']).to_string(),
                });
            }
        }
    }
    if out.len() > MAX_LINES {
        out.truncate(MAX_LINES);
        out.push(Line {
            op: "…",
            text: "(diff cut off)".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| format!("{}{}", l.op, l.text))
            .collect()
    }

    #[test]
    fn a_changed_rule_shows_removed_and_added_lines_with_context() {
        let body = |version: u32, temp: u32| {
            format!(
                "version = {version}\ndefault_split = 8\ndefault = \"local\"\n\n# rules\n[[rule]]\n\
                 name = \"hot\"\nwhen = \"temp > {temp}\"\naction = \"split\"\n"
            )
        };
        let (old, new) = (body(1, 70), body(2, 60));
        assert_eq!(
            ops(&lines(&old, &new)),
            [
                "-version = 1",
                "+version = 2",
                " default_split = 8",
                " default = \"local\"",
                "…",
                " [[rule]]",
                " name = \"hot\"",
                "-when = \"temp > 70\"",
                "+when = \"temp > 60\"",
                " action = \"split\"",
            ]
        );
    }

    #[test]
    fn equal_texts_have_no_diff_and_huge_ones_are_cut() {
        assert!(lines("a\nb\n", "a\nb\n").is_empty());
        let old: String = (0..1000).map(|i| format!("a{i}\n")).collect();
        let new: String = (0..1000).map(|i| format!("b{i}\n")).collect();
        let d = lines(&old, &new);
        assert_eq!(d.len(), MAX_LINES + 1);
        assert_eq!(d.last().unwrap().text, "(diff cut off)");
    }
}
