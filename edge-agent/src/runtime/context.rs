//! What a request does when it does not fit the context: refuse it, drop the start of its
//! prompt, or slide a window over its KV cache. Free of I/O: the engine asks, these answer.

use crate::error::{Error, Result};

/// Tokens kept at the start of a sliding window when the prompt has no system part: the
/// first positions draw much of every later position's attention ("attention sinks"), and a
/// window that drops them degrades at once.
pub const SINK_TOKENS: usize = 4;

/// How a request longer than the context is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refused with INVALID_ARGUMENT (the default).
    #[default]
    Error,
    /// The prompt keeps its system part and its most recent tokens; the middle goes.
    TruncateStart,
    /// The KV cache keeps the system part (or the first few tokens) and slides over the rest:
    /// the oldest positions are dropped as new ones come, so prompts and answers of any length
    /// run in a fixed cache. Runs the whole model on the device.
    SlidingWindow,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Error => "error",
            Overflow::TruncateStart => "truncate_start",
            Overflow::SlidingWindow => "sliding_window",
        }
    }
}

impl std::str::FromStr for Overflow {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Overflow, String> {
        match s {
            "error" => Ok(Overflow::Error),
            "truncate_start" => Ok(Overflow::TruncateStart),
            "sliding_window" => Ok(Overflow::SlidingWindow),
            other => Err(format!(
                "unknown context overflow {other:?} (error, truncate_start, sliding_window)"
            )),
        }
    }
}

/// The prompt `tokens` cut to leave room for `max_tokens` in `context`: the first `keep`
/// tokens (the system part) and the most recent ones. Returns the tokens dropped.
pub fn truncate_start(
    tokens: &mut Vec<u32>,
    keep: usize,
    max_tokens: usize,
    context: usize,
) -> Result<usize> {
    let room = context.saturating_sub(max_tokens);
    if tokens.len() <= room {
        return Ok(0);
    }
    let keep = keep.min(tokens.len());
    // At least one recent token must stay after the kept start.
    if room <= keep {
        return Err(Error::InvalidArgument(format!(
            "max_tokens ({max_tokens}) leaves {room} of the context's {context} positions, not \
             enough for the {keep}-token system prompt and any of the request; lower max_tokens"
        )));
    }
    let dropped = tokens.len() - room;
    tokens.drain(keep..keep + dropped);
    Ok(dropped)
}

/// How a request was fitted to the context, as the final event reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fitted {
    /// The handling applied, `None` when the request fit as it was.
    pub applied: Option<Overflow>,
    /// Prompt tokens dropped (`TruncateStart`).
    pub truncated: usize,
    /// Positions the window dropped (`SlidingWindow`); filled in when the request ends.
    pub evicted: usize,
}

/// Fits a prompt of `tokens` (whose first `keep` are its system part) and `max_tokens` into
/// `context` positions as `overflow` says: unchanged when it fits, else refused, truncated in
/// place, or given a sliding window of `context` slots.
pub fn fit(
    tokens: &mut Vec<u32>,
    keep: usize,
    max_tokens: usize,
    context: usize,
    overflow: Overflow,
) -> Result<(Fitted, Option<Window>)> {
    if tokens.len() + max_tokens <= context {
        return Ok((Fitted::default(), None));
    }
    let applied = Some(overflow);
    match overflow {
        Overflow::Error => Err(Error::InvalidArgument(format!(
            "prompt ({} tokens) + max_tokens ({max_tokens}) exceeds the context of {context}; \
             context_overflow truncate_start or sliding_window would fit it",
            tokens.len()
        ))),
        Overflow::TruncateStart => {
            let truncated = truncate_start(tokens, keep, max_tokens, context)?;
            Ok((
                Fitted {
                    applied,
                    truncated,
                    evicted: 0,
                },
                None,
            ))
        }
        Overflow::SlidingWindow => {
            let window = Window::new(context, keep.max(SINK_TOKENS));
            Ok((
                Fitted {
                    applied,
                    ..Fitted::default()
                },
                Some(window),
            ))
        }
    }
}

/// A sliding window over a KV cache of `capacity` positions: positions are the request's own
/// (what RoPE and sampling see), slots are rows of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    capacity: usize,
    keep: usize,
    /// Positions dropped so far: slot = position - shift for positions past `keep`.
    shift: usize,
}

/// Where `rows` new positions go: first drop `evict` slots at `keep` (if any), then write at
/// `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub evict: Option<(usize, usize)>,
    pub slot: usize,
}

impl Window {
    /// A window of `capacity` slots keeping the first `keep` positions (at most half of it).
    pub fn new(capacity: usize, keep: usize) -> Window {
        Window {
            capacity,
            keep: keep.min(capacity / 2),
            shift: 0,
        }
    }

    /// Positions dropped so far.
    pub fn evicted(&self) -> usize {
        self.shift
    }

    /// Largest step (rows at once) the window can take.
    pub fn max_rows(&self) -> usize {
        (self.capacity - self.keep) / 2
    }

    /// Places `rows` (≤ [`Window::max_rows`]) new positions starting at `position` (the next
    /// one after those placed before). When the cache is full, a quarter of the sliding part
    /// (at least what the rows need) is dropped at once, so that the move is rare.
    pub fn place(&mut self, position: usize, rows: usize) -> Placement {
        debug_assert!(rows <= self.max_rows());
        let slot = position - self.shift;
        if slot + rows <= self.capacity {
            return Placement { evict: None, slot };
        }
        let need = slot + rows - self.capacity;
        let n = need
            .max((self.capacity - self.keep) / 4)
            .min(slot - self.keep);
        self.shift += n;
        Placement {
            evict: Some((self.keep, n)),
            slot: slot - n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for o in [
            Overflow::Error,
            Overflow::TruncateStart,
            Overflow::SlidingWindow,
        ] {
            assert_eq!(o.as_str().parse::<Overflow>(), Ok(o));
        }
        assert!(
            "slide"
                .parse::<Overflow>()
                .unwrap_err()
                .contains("truncate_start")
        );
    }

    #[test]
    fn truncation_keeps_the_system_part_and_the_latest_tokens() {
        let mut t: Vec<u32> = (0..20).collect();
        assert_eq!(truncate_start(&mut t, 3, 6, 16).unwrap(), 10);
        assert_eq!(t, [0, 1, 2, 13, 14, 15, 16, 17, 18, 19]);
        let mut short: Vec<u32> = (0..5).collect();
        assert_eq!(truncate_start(&mut short, 3, 6, 16).unwrap(), 0);
        assert_eq!(short.len(), 5);
        let mut t: Vec<u32> = (0..20).collect();
        let e = truncate_start(&mut t, 8, 10, 16).unwrap_err().to_string();
        assert!(e.contains("lower max_tokens"), "{e}");
        assert_eq!(t.len(), 20, "nothing is dropped on error");
    }

    #[test]
    fn requests_that_fit_are_left_alone_and_others_handled_as_asked() {
        let prompt: Vec<u32> = (0..10).collect();
        for o in [
            Overflow::Error,
            Overflow::TruncateStart,
            Overflow::SlidingWindow,
        ] {
            let mut t = prompt.clone();
            assert_eq!(fit(&mut t, 2, 6, 16, o).unwrap(), (Fitted::default(), None));
            assert_eq!(t, prompt);
        }
        let mut t = prompt.clone();
        let e = fit(&mut t, 2, 7, 16, Overflow::Error)
            .unwrap_err()
            .to_string();
        assert!(e.contains("10 tokens") && e.contains("16"), "{e}");
        let (f, w) = fit(&mut t, 2, 7, 16, Overflow::TruncateStart).unwrap();
        assert_eq!(
            (f.applied, f.truncated, w),
            (Some(Overflow::TruncateStart), 1, None)
        );
        assert_eq!(t, [0, 1, 3, 4, 5, 6, 7, 8, 9]);
        let mut t = prompt.clone();
        let (f, w) = fit(&mut t, 2, 100, 16, Overflow::SlidingWindow).unwrap();
        assert_eq!(f.applied, Some(Overflow::SlidingWindow));
        assert_eq!(t, prompt, "a sliding window keeps the whole prompt");
        // Without a longer system part, the first SINK_TOKENS positions stay.
        assert_eq!(w, Some(Window::new(16, SINK_TOKENS)));
    }

    proptest! {
        /// Whatever the steps, every placement fits the cache, the kept positions are never
        /// dropped, and the slots of consecutive positions follow each other.
        #[test]
        fn placements_fit_and_keep_the_start(
            capacity in 8usize..200,
            keep in 0usize..16,
            steps in proptest::collection::vec(1usize..64, 1..200),
        ) {
            let mut w = Window::new(capacity, keep);
            let mut position = 0;
            let mut len = 0; // slots in use
            for rows in steps {
                let rows = rows.min(w.max_rows()).max(1);
                let p = w.place(position, rows);
                if let Some((at, n)) = p.evict {
                    prop_assert_eq!(at, w.keep);
                    prop_assert!(n >= 1 && at + n <= len);
                    len -= n;
                }
                prop_assert_eq!(p.slot, len);
                prop_assert!(p.slot + rows <= capacity);
                len += rows;
                position += rows;
                prop_assert_eq!(position - w.evicted(), len);
            }
        }
    }
}
