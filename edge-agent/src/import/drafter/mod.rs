//! The draft head of a package (EAGLE-style): a small network trained at import on the model's
//! own states that predicts the next final-layer state from the previous one and the current
//! token, read out through the model's final norm and the LM-head rows of a token shortlist.
//!
//! Data ([`data`]): teacher-forced prose and the model's greedy answers to chat prompts (CLINC150
//! texts by default). Training ([`train`]) with candle. The held-out figure is measured on the
//! greedy answers to prompts of another file, never trained on, with the graph the device runs
//! ([`graph`]): the share of drafts that stand at each position of a chain.

pub mod data;
pub mod graph;
pub mod mlp;
pub mod predictor;
pub mod train;
pub mod treesim;

use crate::commands::bench_split::AGREEMENT_PROMPTS;
use crate::commands::bench_split::speculation::REUSE_PROMPTS;
use crate::error::{Error, Result};
use crate::import::graphs::Dims;
use crate::import::linear::Q8Linear;
use crate::onnx::session_from_memory;
use crate::perception::dataset::read_examples;
use crate::runtime::chat_format::ChatFormat;
use crate::runtime::draft::MAX_TREE_NODES;
use crate::runtime::draft::upper::Predictor;
use crate::runtime::engine::{GenerateRequest, render_prompt};
use crate::runtime::model::{LoadOptions, Model};
use crate::runtime::sampler::argmax;
use data::Corpus;
use ort::value::TensorRef;
use predictor::{PredictorOptions, StateData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::path::{Path, PathBuf};
use std::time::Instant;
use train::{Readout, TrainOptions};

/// Draft positions the held-out acceptance is measured at.
pub const EVAL_DEPTH: usize = 8;
/// Prose tokens at the end of the text that are never trained on.
pub const PROSE_HELDOUT: usize = 2048;

/// What to train the drafter on and how long.
#[derive(Debug, Clone)]
pub struct DrafterOptions {
    /// English prose (teacher forcing).
    pub prose: PathBuf,
    /// `text<TAB>label` file whose texts become chat prompts to answer and learn from (a third
    /// of the prompts; the others ask about sentences of the prose and things it names).
    pub prompts: PathBuf,
    /// Another such file: a third of the held-out prompts (the rest ask about the prose's
    /// held-out tail).
    pub heldout_prompts: PathBuf,
    pub prose_tokens: usize,
    pub chat_prompts: usize,
    pub heldout: usize,
    /// Greedy tokens decoded per prompt.
    pub answer_tokens: usize,
    pub steps: usize,
    pub batch: usize,
    pub shortlist: usize,
    pub hidden: usize,
    /// Weight of the model's distribution against its greedy token in the head's loss.
    pub soft: f64,
    pub seed: u64,
    /// Split layers to train a state predictor for (the worker drafts through the upper
    /// layers with it); empty: none.
    pub predictor_layers: Vec<u32>,
    pub predictor: PredictorOptions,
    /// Most layer-K rows a predictor trains on.
    pub predictor_rows: usize,
    /// Held-out answers a predictor's acceptance is measured on.
    pub predictor_heldout: usize,
}

impl DrafterOptions {
    /// The shipped settings: the head's data and training take about three minutes on two
    /// AVX-512 cores, a state predictor about a minute and a half per split layer. More data buys
    /// little: with six times the answers, three times the prose and four times the steps (about
    /// 40 minutes on AVX2) the head's trees reached 2.50 held-out tokens per round trip (1.99
    /// with these) and the layer-8 predictor's chains 3.90 (3.81 with these).
    pub fn new(prose: PathBuf, prompts: PathBuf, heldout_prompts: PathBuf) -> DrafterOptions {
        DrafterOptions {
            prose,
            prompts,
            heldout_prompts,
            prose_tokens: 8192,
            chat_prompts: 192,
            heldout: 48,
            answer_tokens: 64,
            steps: 300,
            batch: 256,
            shortlist: 8192,
            hidden: 1024,
            soft: 0.5,
            seed: 0x5ea_d4af7,
            predictor_layers: Vec::new(),
            predictor: PredictorOptions {
                hidden: 1024,
                steps: 300,
                batch: 256,
                lr: 1e-3,
                seed: 0x5ea_d4af7,
            },
            predictor_rows: 98_304,
            predictor_heldout: 16,
        }
    }
}

/// A trained drafter and what the import reports of it.
#[derive(Debug, Clone)]
pub struct TrainedDrafter {
    pub graph: Vec<u8>,
    pub shortlist: Vec<u32>,
    /// Positions trained on, and held-out positions measured.
    pub train_positions: usize,
    pub heldout_positions: usize,
    /// Share of held-out greedy targets inside the shortlist.
    pub coverage: f64,
    /// Conditional acceptance at draft positions 1..=EVAL_DEPTH.
    pub acceptance: Vec<f64>,
    /// Tokens per round trip with dynamic trees of [`MAX_TREE_NODES`] nodes.
    pub tree_tokens: f64,
    pub seconds_data: f64,
    pub seconds_train: f64,
    pub predictors: Vec<TrainedPredictor>,
}

/// A trained state predictor and its held-out figures.
#[derive(Debug, Clone)]
pub struct TrainedPredictor {
    pub layer: u32,
    pub graph: Vec<u8>,
    pub train_rows: usize,
    /// Conditional acceptance at chain positions 1..=EVAL_DEPTH through layers `[K, N)`.
    pub acceptance: Vec<f64>,
    pub seconds: f64,
}

/// Progress lines of a long import step.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// Trains the drafter of the package in `dir` (written without one).
pub fn train_drafter(
    dir: &Path,
    output_norm: &[f32],
    head: &Q8Linear,
    dims: Dims,
    opts: &DrafterOptions,
    progress: Progress<'_>,
) -> Result<TrainedDrafter> {
    let started = Instant::now();
    let mut model = Model::load(dir, &LoadOptions::default())?;
    let stop = {
        let a = model.arch();
        let mut s = a.stop_tokens.clone();
        s.push(a.eos_token);
        s
    };
    let prose = std::fs::read_to_string(&opts.prose).map_err(|e| Error::io(&opts.prose, e))?;
    let ids = encode(&model, &prose)?;
    let usable = ids.len().saturating_sub(PROSE_HELDOUT);
    let prose_ids = &ids[..usable.min(opts.prose_tokens)];
    // Half of the prompts are requests the model writes itself when given the opening of a
    // chat up to the user's turn: varied, and what users of an assistant ask. Of the other
    // half, a third are labelled texts (short requests), a third ask about sentences of the
    // prose (summaries, rewrites: answers that reuse the prompt), a third are open questions
    // about things the prose names (explanations, advice, verse). Held-out prompts come from
    // other draws, the other labelled file and the prose's held-out tail.
    let (train_text, heldout_text) = split_prose(&prose);
    let written = self_written(
        &mut model,
        opts.chat_prompts / 2 + opts.heldout / 2,
        &stop,
        opts.seed,
        &mut *progress,
    )?;
    let (train_written, heldout_written) =
        written.split_at(written.len().saturating_sub(opts.heldout / 2));
    let mix = |total: usize| (total - 2 * (total / 3), total / 3);
    let (labelled, third) = mix(opts.chat_prompts - train_written.len());
    let mut train_prompts = train_written.to_vec();
    train_prompts.extend(labelled_prompts(&opts.prompts, labelled, opts.seed)?);
    train_prompts.extend(prose_prompts(train_text, third, opts.seed));
    let train_things = things(train_text);
    train_prompts.extend(topic_prompts(&train_things, third, opts.seed));
    let (labelled, third) = mix(opts.heldout - heldout_written.len());
    let mut heldout_prompts = heldout_written.to_vec();
    heldout_prompts.extend(labelled_prompts(
        &opts.heldout_prompts,
        labelled,
        opts.seed,
    )?);
    heldout_prompts.extend(prose_prompts(heldout_text, third, opts.seed));
    // Held-out questions are about things the trained-on part never names.
    let mut heldout_things = things(heldout_text);
    heldout_things.retain(|w| train_things.binary_search(w).is_err());
    heldout_prompts.extend(topic_prompts(&heldout_things, third, opts.seed));
    let train_prompts = chat_tokens(&model, &train_prompts)?;
    let heldout_prompts = chat_tokens(&model, &heldout_prompts)?;

    let mut corpus = Corpus::new(model.n_embd());
    data::add_prose(&mut model, &mut corpus, prose_ids, |w, n| {
        progress(&format!("drafter data: prose window {w}/{n}"))
    })?;
    data::add_chat(
        &mut model,
        &mut corpus,
        &train_prompts,
        opts.answer_tokens,
        &stop,
        |p, n| progress(&format!("drafter data: answering prompt {p}/{n}")),
    )?;
    let mut heldout = Corpus::new(model.n_embd());
    data::add_chat(
        &mut model,
        &mut heldout,
        &heldout_prompts,
        opts.answer_tokens,
        &stop,
        |p, n| progress(&format!("drafter data: held-out prompt {p}/{n}")),
    )?;
    let seconds_data = started.elapsed().as_secs_f64();

    let vocab = model.arch().vocab_size as usize;
    let shortlist = choose_shortlist(&corpus, &stop, opts.shortlist.min(vocab));
    corpus.index_targets(&shortlist, vocab);
    heldout.index_targets(&shortlist, vocab);
    let coverage = heldout
        .target_index
        .iter()
        .filter(|&&i| i != u32::MAX)
        .count() as f64
        / heldout.positions().max(1) as f64;
    let rows = head.select_rows(&shortlist);
    let dequantized = rows.dequantize();
    let train_started = Instant::now();
    let weights = train::train(
        &corpus,
        &Readout {
            norm_gain: output_norm,
            rows: &dequantized,
            shortlist: shortlist.len(),
        },
        TrainOptions {
            hidden: opts.hidden,
            steps: opts.steps,
            batch: opts.batch,
            lr: 1e-3,
            seed: opts.seed,
            soft: opts.soft,
        },
        |s, n, loss| progress(&format!("drafter training: step {s}/{n}, loss {loss:.3}")),
    )?;
    let seconds_train = train_started.elapsed().as_secs_f64();
    let graph = graph::drafter_graph(&weights, output_norm, &rows, dims);
    let acceptance = chain_acceptance(&graph, &shortlist, &heldout, EVAL_DEPTH)?;
    let tree_tokens = treesim::tree_tokens(
        &model,
        &graph,
        &shortlist,
        &heldout,
        &stop,
        &[MAX_TREE_NODES],
    )?[0];
    let windows = prose_ids.len() / data::WINDOW;
    let mut sequences: Vec<Vec<u32>> = prose_ids
        .chunks_exact(data::WINDOW)
        .map(<[u32]>::to_vec)
        .collect();
    sequences.extend(
        answered(&corpus, windows, &train_prompts)
            .into_iter()
            .map(|(s, _)| s),
    );
    // A seeded mix of prose and answers, cut at the row budget.
    sequences.shuffle(&mut StdRng::seed_from_u64(opts.seed));
    let mut measured = answered(&heldout, 0, &heldout_prompts);
    measured.truncate(opts.predictor_heldout);
    let mut predictors = Vec::new();
    for &layer in &opts.predictor_layers {
        let started = Instant::now();
        let data = StateData::collect(
            &mut model,
            layer,
            &sequences,
            opts.predictor_rows,
            |i, n| progress(&format!("predictor {layer} data: sequence {i}/{n}")),
        )?;
        let weights = predictor::train(&data, opts.predictor, |s, n, loss| {
            progress(&format!(
                "predictor {layer} training: step {s}/{n}, loss {loss:.3}"
            ))
        })?;
        let graph = predictor::predictor_graph(&weights, layer);
        let mut loaded = Predictor::from_graph(&graph, layer, model.n_embd())?;
        let acceptance =
            predictor::chain_acceptance(&mut model, &mut loaded, &measured, EVAL_DEPTH, |i, n| {
                progress(&format!("predictor {layer} held-out: answer {i}/{n}"))
            })?;
        predictors.push(TrainedPredictor {
            layer,
            graph,
            train_rows: data.states.len() / model.n_embd(),
            acceptance,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(TrainedDrafter {
        graph,
        shortlist,
        train_positions: corpus.positions(),
        heldout_positions: heldout.positions(),
        coverage,
        acceptance,
        tree_tokens,
        seconds_data,
        seconds_train,
        predictors,
    })
}

/// The answered sequences of `corpus` (after its first `skip` sequences, one per prompt of
/// `prompts`, in order): each prompt followed by its answer, and the prompt's length.
fn answered(corpus: &Corpus, skip: usize, prompts: &[Vec<u32>]) -> Vec<(Vec<u32>, usize)> {
    corpus.sequences[skip..]
        .iter()
        .zip(prompts)
        .map(|(&(first, end), prompt)| {
            let mut seq = prompt.clone();
            // The corpus keeps an answer from the prompt's last token on.
            seq.extend_from_slice(&corpus.tokens[first + 1..end]);
            (seq, prompt.len())
        })
        .collect()
}

fn encode(model: &Model, text: &str) -> Result<Vec<u32>> {
    Ok(model
        .tokenizer()
        .encode(text, false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec())
}

/// `count` distinct requests the model writes itself after the opening of a chat (its system
/// turn and the start of the user's), without those the benchmarks measure on.
fn self_written(
    model: &mut Model,
    count: usize,
    end: &[u32],
    seed: u64,
    progress: Progress<'_>,
) -> Result<Vec<String>> {
    let format = chat_format(model);
    let opening = render_prompt(&request(String::new()), format);
    let user = format.user_opening();
    let cut = opening.find(user).map_or(opening.len(), |i| i + user.len());
    let prefix = encode(model, &opening[..cut])?;
    let measured: Vec<&str> = AGREEMENT_PROMPTS
        .iter()
        .chain(REUSE_PROMPTS.iter())
        .copied()
        .collect();
    // Draw more than needed: duplicates and fragments are dropped.
    let drawn = data::sample_prompts(model, &prefix, count + count / 4, 48, end, seed, |n, of| {
        progress(&format!("drafter data: writing requests {n}/{of}"))
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    for ids in drawn {
        let text = model
            .tokenizer()
            .decode(&ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let text = text.trim().to_string();
        if (8..=300).contains(&text.len())
            && !measured.contains(&text.as_str())
            && seen.insert(text.clone())
        {
            out.push(text);
        }
        if out.len() == count {
            break;
        }
    }
    Ok(out)
}

fn chat_format(model: &Model) -> ChatFormat {
    ChatFormat::of(model.package().manifest().chat_template.as_deref())
}

fn request(prompt: String) -> GenerateRequest {
    GenerateRequest {
        history: Vec::new(),
        system: None,
        prompt,
        chat: true,
        max_tokens: 1,
        sampling: Default::default(),
        stop: Vec::new(),
        deadline: None,
        draft_tokens: None,
        context_overflow: None,
    }
}

/// `count` distinct texts of a `text<TAB>label` file (a seeded choice).
fn labelled_prompts(file: &Path, count: usize, seed: u64) -> Result<Vec<String>> {
    let mut texts: Vec<String> = read_examples(file)?.into_iter().map(|e| e.text).collect();
    texts.sort();
    texts.dedup();
    texts.shuffle(&mut StdRng::seed_from_u64(seed));
    texts.truncate(count);
    Ok(texts)
}

/// The prose up to its held-out tail (the last twentieth of its characters, at least the
/// [`PROSE_HELDOUT`] tokens no teacher-forced window reaches), and the tail.
fn split_prose(prose: &str) -> (&str, &str) {
    let mut cut = prose.len() - prose.len() / 20;
    while !prose.is_char_boundary(cut) {
        cut -= 1;
    }
    prose.split_at(cut)
}

/// What users ask about a piece of text.
const PROSE_TEMPLATES: [&str; 8] = [
    "Explain this in simple words: ",
    "Summarise in one sentence: ",
    "What are the main facts in this news item? ",
    "Write a short paragraph that continues this: ",
    "Rewrite this more formally: ",
    "Give me three questions someone might ask about this: ",
    "Why does this matter? ",
    "Tell me more about this: ",
];

/// `count` prompts, each a template over a sentence of `text` (a seeded choice).
fn prose_prompts(text: &str, count: usize, seed: u64) -> Vec<String> {
    let mut sentences: Vec<&str> = text
        .split(['.', '?', '!', '\n'])
        .map(str::trim)
        .filter(|s| (40..=400).contains(&s.len()))
        .collect();
    sentences.sort_unstable();
    sentences.dedup();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x70_5e);
    sentences.shuffle(&mut rng);
    sentences
        .iter()
        .take(count)
        .enumerate()
        .map(|(i, s)| format!("{}{s}.", PROSE_TEMPLATES[i % PROSE_TEMPLATES.len()]))
        .collect()
}

/// Open questions about a thing, the kind of prompt whose answer is free explanatory text.
const TOPIC_TEMPLATES: [&str; 10] = [
    "What is {}, and why does it matter?",
    "Explain {} to me in simple terms.",
    "Tell me some interesting facts about {}.",
    "How does {} affect everyday life?",
    "Write a few lines of verse about {}.",
    "Give me three practical tips related to {}.",
    "What are the pros and cons of {}?",
    "Describe the history of {} briefly.",
    "What should a beginner know about {}?",
    "Write a short story that involves {}.",
];

/// The things `text` names: distinct lower-case words that follow "the" in it, sorted.
fn things(text: &str) -> Vec<&str> {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let mut things: Vec<&str> = words
        .windows(2)
        .filter(|p| p[0].eq_ignore_ascii_case("the"))
        .map(|p| p[1])
        .filter(|w| w.len() >= 4 && w.chars().all(|c| c.is_ascii_lowercase()))
        .collect();
    things.sort_unstable();
    things.dedup();
    things
}

/// `count` open questions, each a template over one of `things` (a seeded choice).
fn topic_prompts(things: &[&str], count: usize, seed: u64) -> Vec<String> {
    let mut things = things.to_vec();
    things.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x70_91c));
    things
        .iter()
        .take(count)
        .enumerate()
        .map(|(i, w)| TOPIC_TEMPLATES[i % TOPIC_TEMPLATES.len()].replace("{}", &format!("the {w}")))
        .collect()
}

/// Each text as a chat prompt's tokens.
fn chat_tokens(model: &Model, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    texts
        .iter()
        .map(|t| {
            encode(
                model,
                &render_prompt(&request(t.clone()), chat_format(model)),
            )
        })
        .collect()
}

/// The `size` most frequent greedy targets of `corpus` plus the end-of-turn tokens.
fn choose_shortlist(corpus: &Corpus, stop: &[u32], size: usize) -> Vec<u32> {
    let mut list: Vec<u32> = stop.to_vec();
    for (t, _) in corpus.target_frequencies() {
        if list.len() >= size {
            break;
        }
        if !list.contains(&t) {
            list.push(t);
        }
    }
    list
}

/// Runs the drafter graph as the device does over every held-out start position: the exact
/// previous state, then its own estimates, `depth` drafts deep. Returns the conditional
/// acceptance at each depth (greedy answers: the next input token is the target when the
/// chain is still alive).
pub fn chain_acceptance(
    graph: &[u8],
    shortlist: &[u32],
    heldout: &Corpus,
    depth: usize,
) -> Result<Vec<f64>> {
    let d = heldout.d;
    let mut session = session_from_memory(graph)?;
    let starts = heldout.starts(depth);
    let n = starts.len();
    if n == 0 {
        return Err(Error::InvalidArgument(
            "no held-out answer is long enough to measure the drafter".into(),
        ));
    }
    let mut feature: Vec<f32> = starts
        .iter()
        .flat_map(|&s| heldout.features[s * d..(s + 1) * d].to_vec())
        .collect();
    let mut alive = vec![true; n];
    let mut out = Vec::with_capacity(depth);
    for j in 0..depth {
        let embed: Vec<f32> = starts
            .iter()
            .flat_map(|&s| heldout.embeddings[(s + j + 1) * d..(s + j + 2) * d].to_vec())
            .collect();
        let outputs = session.run(ort::inputs![
            graph::io::FEATURE => TensorRef::from_array_view(([n, d], &feature[..]))?,
            graph::io::EMBED => TensorRef::from_array_view(([n, d], &embed[..]))?,
        ])?;
        let logits = outputs[graph::io::LOGITS].try_extract_tensor::<f32>()?.1;
        let next = outputs[graph::io::FEATURE_OUT]
            .try_extract_tensor::<f32>()?
            .1
            .to_vec();
        let (mut before, mut after) = (0usize, 0usize);
        for (i, row) in logits.chunks_exact(shortlist.len()).enumerate() {
            if !alive[i] {
                continue;
            }
            before += 1;
            let draft = shortlist[argmax(row) as usize];
            if draft == heldout.targets[starts[i] + j + 1] {
                after += 1;
            } else {
                alive[i] = false;
            }
        }
        out.push(after as f64 / before.max(1) as f64);
        feature = next;
    }
    Ok(out)
}

/// Expected tokens one round trip settles with a chain of `k` drafts, from conditional
/// acceptances per position (the accepted drafts plus the token the worker adds).
pub fn expected_tokens(acceptance: &[f64], k: usize) -> f64 {
    let mut alive = 1.0;
    let mut total = 1.0;
    for a in acceptance.iter().take(k) {
        alive *= a;
        total += alive;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_prompts_come_from_their_own_part_of_the_text() {
        let text = "First sentence about the bushfire near the town of Hill Top today. \
                    Second sentence says the highway was closed by the police at noon. \
                    Third sentence tells that five hundred residents left their homes.";
        let (train, tail) = split_prose(text);
        assert_eq!(train.len() + tail.len(), text.len());
        let prompts = prose_prompts(text, 10, 1);
        assert_eq!(prompts.len(), 3);
        assert!(
            prompts
                .iter()
                .all(|p| PROSE_TEMPLATES.iter().any(|t| p.starts_with(t)))
        );
        assert!(prompts.iter().any(|p| p.contains("highway was closed")));
        // Too short to be a sentence worth asking about.
        assert!(prose_prompts("Short. Tiny.", 4, 1).is_empty());
    }

    #[test]
    fn topic_prompts_ask_about_things_the_text_names() {
        let text = "The firefighters reached the ridge before the wind changed. Then the \
                    Premier said the ridge was safe. The Town hall opened.";
        // "ridge" twice is one thing; "Premier" and "Town" are names, "hall" follows no "the".
        let named = things(text);
        assert_eq!(named, ["firefighters", "ridge", "wind"]);
        let prompts = topic_prompts(&named, 10, 3);
        assert_eq!(prompts.len(), 3);
        for thing in named {
            let asking = prompts
                .iter()
                .filter(|p| p.contains(&format!("the {thing}")));
            assert_eq!(asking.count(), 1, "{thing}: {prompts:?}");
        }
        assert_eq!(topic_prompts(&["ridge", "wind"], 1, 3).len(), 1);
        assert!(things("No things here.").is_empty());
    }

    #[test]
    fn expected_tokens_multiplies_the_conditional_acceptances() {
        assert_eq!(expected_tokens(&[0.5, 0.5], 0), 1.0);
        assert!((expected_tokens(&[0.5, 0.5], 2) - 1.75).abs() < 1e-12);
        assert!((expected_tokens(&[1.0, 0.0, 1.0], 3) - 2.0).abs() < 1e-12);
    }
}
