//! Turning generated tokens into streamed text: holds back incomplete UTF-8 and any suffix that
//! could still become a stop string, and finds stop strings across token boundaries.

/// What the stream says after a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    /// New text that is safe to show.
    pub text: String,
    /// A stop string was completed; `text` ends right before it.
    pub stopped: bool,
}

/// Incremental text of a completion, given its full decoded text after each token.
#[derive(Debug, Default)]
pub struct TextStream {
    stops: Vec<String>,
    emitted: usize,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            emitted: 0,
        }
    }

    /// Takes the full decoded text of the completion so far and returns what to emit now.
    pub fn push(&mut self, full: &str) -> Emit {
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let search_from = floor_char(full, self.emitted.saturating_sub(longest));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                full[search_from..]
                    .find(s.as_str())
                    .map(|i| search_from + i)
            })
            .min();
        if let Some(at) = hit {
            let text = full.get(self.emitted..at).unwrap_or("").to_string();
            self.emitted = at.max(self.emitted);
            return Emit {
                text,
                stopped: true,
            };
        }
        // An unfinished UTF-8 sequence decodes as U+FFFD at the end: wait for the next token.
        let base = full.trim_end_matches('\u{FFFD}').len();
        let hold = self
            .stops
            .iter()
            .filter_map(|stop| {
                (1..stop.len())
                    .rev()
                    .find(|&cut| stop.is_char_boundary(cut) && full[..base].ends_with(&stop[..cut]))
            })
            .max()
            .unwrap_or(0);
        let safe = base - hold;
        let safe = floor_char(full, safe.max(self.emitted));
        let text = full[self.emitted..safe].to_string();
        self.emitted = safe;
        Emit {
            text,
            stopped: false,
        }
    }

    /// Everything not yet emitted, at the end of the completion (held-back prefixes of stop
    /// strings that never completed are real text).
    pub fn finish(&mut self, full: &str) -> String {
        let text = full
            .get(self.emitted..)
            .unwrap_or("")
            .trim_end_matches('\u{FFFD}')
            .to_string();
        self.emitted = full.len();
        text
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], steps: &[&str]) -> (String, bool) {
        let mut ts = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for full in steps {
            let e = ts.push(full);
            out.push_str(&e.text);
            if e.stopped {
                return (out, true);
            }
        }
        out.push_str(&ts.finish(steps.last().unwrap()));
        (out, false)
    }

    #[test]
    fn plain_text_streams_through() {
        assert_eq!(
            run(&[], &["He", "Hello", "Hello world"]),
            ("Hello world".into(), false)
        );
    }

    #[test]
    fn stop_string_split_across_tokens_is_caught_and_never_shown() {
        let mut ts = TextStream::new(vec!["\n\n".into()]);
        assert_eq!(ts.push("Paris.").text, "Paris.");
        let e = ts.push("Paris.\n");
        assert_eq!(e.text, "", "a possible stop prefix is held back");
        let e = ts.push("Paris.\n\nThe");
        assert!(e.stopped);
        assert_eq!(e.text, "");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_complete() {
        assert_eq!(
            run(&["END"], &["a E", "a EN", "a ENx"]),
            ("a ENx".into(), false)
        );
    }

    #[test]
    fn incomplete_utf8_waits_for_the_next_token() {
        let mut ts = TextStream::new(vec![]);
        assert_eq!(ts.push("caf\u{FFFD}").text, "caf");
        assert_eq!(ts.push("café").text, "é");
    }

    #[test]
    fn stop_inside_the_first_token() {
        assert_eq!(run(&["stop"], &["no stop here"]), ("no ".into(), true));
    }
}
