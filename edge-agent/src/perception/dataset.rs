//! Labelled text for the intent head: `text<TAB>label` files (CLINC150's layout, quoted fields
//! allowed, an optional `text<TAB>label` header) and the `label<TAB>domain` table.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The label of out-of-scope examples in CLINC150-style data.
pub const OOS_LABEL: &str = "oos";

/// Largest labelled file read.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub label: String,
}

/// Reads a `text<TAB>label` file. Every row must have exactly two non-empty fields; errors
/// name the file and line.
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::Dataset(format!(
            "{}: {} bytes is above the limit of {MAX_FILE_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_examples(&bytes).map_err(|e| Error::Dataset(format!("{}: {e}", path.display())))
}

/// Parses the bytes of a `text<TAB>label` file.
pub fn parse_examples(bytes: &[u8]) -> std::result::Result<Vec<Example>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 1;
        let row = row.map_err(|e| format!("line {line}: {e}"))?;
        if line == 1 && row.len() == 2 && &row[0] == "text" && &row[1] == "label" {
            continue;
        }
        if row.len() != 2 {
            return Err(format!(
                "line {line}: expected `text<TAB>label`, found {} field(s)",
                row.len()
            ));
        }
        let (text, label) = (row[0].trim(), row[1].trim());
        if text.is_empty() {
            return Err(format!("line {line}: the text is empty"));
        }
        if label.is_empty() {
            return Err(format!("line {line}: the label is missing"));
        }
        out.push(Example {
            text: text.to_string(),
            label: label.to_string(),
        });
    }
    if out.is_empty() {
        return Err("no examples".into());
    }
    Ok(out)
}

/// Intent label → domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainTable {
    map: BTreeMap<String, String>,
}

/// The CLINC150 label → domain table shipped with the agent.
pub const CLINC150_DOMAINS: &str = include_str!("../../data/clinc150_domains.tsv");

impl DomainTable {
    /// Parses `label<TAB>domain` lines (`#` comments and blank lines ignored).
    pub fn parse(text: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |m: &str| Error::Dataset(format!("domain table line {}: {m}", i + 1));
            let (label, domain) = line
                .split_once('\t')
                .ok_or_else(|| bad("expected `label<TAB>domain`"))?;
            let (label, domain) = (label.trim(), domain.trim());
            if label.is_empty() || domain.is_empty() || domain.contains('\t') {
                return Err(bad("expected `label<TAB>domain`"));
            }
            if map.insert(label.to_string(), domain.to_string()).is_some() {
                return Err(bad(&format!("label `{label}` appears twice")));
            }
        }
        if map.is_empty() {
            return Err(Error::Dataset("the domain table is empty".into()));
        }
        Ok(DomainTable { map })
    }

    /// The CLINC150 table.
    pub fn clinc150() -> Self {
        Self::parse(CLINC150_DOMAINS).expect("the shipped CLINC150 domain table parses")
    }

    pub fn domain(&self, label: &str) -> Option<&str> {
        self.map.get(label).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The classes of a training set, sorted, with their domains. Fails if a label has no domain,
/// if the training data holds a single class, or if a calibration label is not a training
/// label. Out-of-scope rows (`oos`) are not a class.
pub fn classes(
    train: &[Example],
    calibration: &[Example],
    domains: &DomainTable,
) -> Result<Vec<(String, String)>> {
    let labels: BTreeSet<&str> = train
        .iter()
        .map(|e| e.label.as_str())
        .filter(|l| *l != OOS_LABEL)
        .collect();
    let without: Vec<&str> = labels
        .iter()
        .copied()
        .filter(|l| domains.domain(l).is_none())
        .collect();
    if !without.is_empty() {
        return Err(Error::Dataset(format!(
            "{} training label(s) have no domain in the domain table, e.g. {}",
            without.len(),
            quoted(&without)
        )));
    }
    if labels.len() < 2 {
        return Err(Error::Dataset(format!(
            "the training data has {} intent label(s); at least 2 are needed",
            labels.len()
        )));
    }
    let unknown: BTreeSet<&str> = calibration
        .iter()
        .map(|e| e.label.as_str())
        .filter(|l| *l != OOS_LABEL && !labels.contains(l))
        .collect();
    if !unknown.is_empty() {
        let unknown: Vec<&str> = unknown.into_iter().collect();
        return Err(Error::Dataset(format!(
            "{} calibration label(s) never occur in the training data, e.g. {}",
            unknown.len(),
            quoted(&unknown)
        )));
    }
    Ok(labels
        .into_iter()
        .map(|l| {
            (
                l.to_string(),
                domains.domain(l).unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn quoted(labels: &[&str]) -> String {
    let mut s: Vec<String> = labels.iter().take(5).map(|l| format!("`{l}`")).collect();
    if labels.len() > 5 {
        s.push("…".into());
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str, label: &str) -> Example {
        Example {
            text: text.into(),
            label: label.into(),
        }
    }

    #[test]
    fn quoted_fields_and_the_header_are_handled() {
        let data = b"text\tlabel\n\"how do you spell \"\"exactly\"\tspelling\nplain text\tyes\n";
        let rows = parse_examples(data).unwrap();
        assert_eq!(
            rows,
            vec![
                ex("how do you spell \"exactly", "spelling"),
                ex("plain text", "yes")
            ]
        );
    }

    #[test]
    fn malformed_rows_name_their_line() {
        for (data, needle) in [
            (&b"a\tb\nno label here\n"[..], "line 2"),
            (b"a\tb\nx\t\n", "label is missing"),
            (b"a\tb\tc\n", "3 field"),
            (b"\tlabel\n", "text is empty"),
            (b"text\tlabel\n", "no examples"),
        ] {
            let err = parse_examples(data).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn the_clinc150_table_has_150_intents_in_10_domains() {
        let t = DomainTable::clinc150();
        assert_eq!(t.len(), 150);
        let domains: BTreeSet<&str> = t.map.values().map(String::as_str).collect();
        assert_eq!(domains.len(), 10, "{domains:?}");
        assert_eq!(t.domain("transfer"), Some("banking"));
        assert_eq!(t.domain("oos"), None);
    }

    #[test]
    fn unknown_and_missing_labels_are_errors() {
        let domains = DomainTable::parse("a\td1\nb\td2\n").unwrap();
        let train = [ex("x", "a"), ex("y", "b"), ex("z", OOS_LABEL)];
        let ok = classes(&train, &[ex("w", "a"), ex("v", OOS_LABEL)], &domains).unwrap();
        assert_eq!(
            ok,
            vec![("a".into(), "d1".into()), ("b".into(), "d2".into())]
        );

        let err = classes(&train, &[ex("w", "c")], &domains)
            .unwrap_err()
            .to_string();
        assert!(err.contains("never occur") && err.contains("`c`"), "{err}");
        let err = classes(&[ex("x", "a"), ex("y", "q")], &[], &domains)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no domain") && err.contains("`q`"), "{err}");
        let err = classes(&[ex("x", "a")], &[], &domains)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 2"), "{err}");
        assert!(DomainTable::parse("a\td\na\te\n").is_err());
        assert!(DomainTable::parse("a d\n").is_err());
    }
}
