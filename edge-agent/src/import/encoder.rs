//! `seam-edge model import-encoder`: a BERT sentence encoder (safetensors, `tokenizer.json`,
//! `config.json`) becomes an encoder package, and an intent head is trained over its
//! embeddings: logistic regression on the training file, the regularisation chosen and the
//! out-of-scope threshold calibrated on the calibration file (CLINC150 train and dev by
//! default).

use super::encoder_graph::{EncoderGraph, EncoderWeightType, encoder_graph};
use super::encoder_smooth::{ALPHA, CALIBRATION_TEXTS, measure_ranges};
use crate::bert::{BertConfig, BertWeights};
use crate::error::{Error, Result};
use crate::perception::classifier::format_labels;
use crate::perception::dataset::{self, DomainTable, Example, OOS_LABEL};
use crate::perception::encoder::{Encoder, Tokens, load_tokenizer};
use crate::perception::head::calibrate_threshold;
use crate::perception::lbfgs::LbfgsOptions;
use crate::perception::train::{TrainOptions, accuracy, train_head};
use seam_shared::package::{
    self, DataRef, ENCODER_FORMAT_VERSION, ENCODER_KIND, EncoderManifest, EncoderSpec,
    IntentHeadSpec, SmoothingSpec, Source, encoder_digest,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default longest input in tokens.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Default false-rejection rate the out-of-scope threshold is calibrated for.
pub const DEFAULT_TARGET_FRR: f32 = 0.05;
/// L2 strengths tried; the best on the calibration split is kept.
pub const L2_GRID: [f32; 3] = [3e-6, 1e-5, 3e-5];

/// What to import.
#[derive(Debug, Clone)]
pub struct EncoderImportOptions {
    /// Directory with `model.safetensors`, `config.json`, `tokenizer.json`.
    pub checkpoint: PathBuf,
    pub out: PathBuf,
    /// `text<TAB>label` training data.
    pub train: PathBuf,
    /// `text<TAB>label` calibration data (regularisation, threshold).
    pub calibration: PathBuf,
    /// `label<TAB>domain`; `None` = the shipped CLINC150 table.
    pub domains: Option<PathBuf>,
    pub max_tokens: u32,
    pub weights: EncoderWeightType,
    pub target_frr: f32,
    /// L2 strengths to try (the best on the calibration data wins).
    pub l2_grid: Vec<f32>,
    pub progress: bool,
}

impl EncoderImportOptions {
    /// Defaults for the checkpoint in `checkpoint` and the labelled files.
    pub fn new(checkpoint: PathBuf, out: PathBuf, train: PathBuf, calibration: PathBuf) -> Self {
        EncoderImportOptions {
            checkpoint,
            out,
            train,
            calibration,
            domains: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            weights: EncoderWeightType::Int8,
            target_frr: DEFAULT_TARGET_FRR,
            l2_grid: L2_GRID.to_vec(),
            progress: false,
        }
    }
}

/// Summary of an import.
#[derive(Debug, Clone)]
pub struct EncoderImportReport {
    pub digest: String,
    pub encoder_digest: String,
    pub classes: usize,
    pub train_examples: usize,
    pub l2: f32,
    pub calibration_accuracy: f32,
    pub threshold: f32,
    pub calibration_frr: f32,
    pub embed_seconds: f64,
    pub train_seconds: f64,
}

/// Imports the encoder and trains the head; writes the package into `opts.out`.
pub fn import_encoder(opts: &EncoderImportOptions) -> Result<EncoderImportReport> {
    if !(0.0..1.0).contains(&opts.target_frr) {
        return Err(Error::InvalidArgument(format!(
            "the target false-rejection rate {} must be in [0, 1)",
            opts.target_frr
        )));
    }
    if opts.l2_grid.is_empty() || opts.l2_grid.iter().any(|l| !(l.is_finite() && *l >= 0.0)) {
        return Err(Error::InvalidArgument(
            "L2 strengths must be non-negative numbers".into(),
        ));
    }
    // Labelled data first: a bad label file fails before any heavy work.
    let train = dataset::read_examples(&opts.train)?;
    let calibration = dataset::read_examples(&opts.calibration)?;
    let domains = match &opts.domains {
        Some(p) => DomainTable::parse(&std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?)?,
        None => DomainTable::clinc150(),
    };
    let classes = dataset::classes(&train, &calibration, &domains)?;

    let ck = &opts.checkpoint;
    let config = BertConfig::from_file(&ck.join("config.json"))?;
    if opts.max_tokens < 3 || opts.max_tokens as usize > config.max_position_embeddings {
        return Err(Error::InvalidArgument(format!(
            "max tokens {} must be in 3..={}",
            opts.max_tokens, config.max_position_embeddings
        )));
    }
    let st_path = ck.join("model.safetensors");
    let weights = BertWeights::from_file(&st_path, &config)?;
    let source_sha = package::sha256_file(&st_path)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;

    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let out = &opts.out;
    let tokenizer = write_file(
        out,
        &mut files,
        "tokenizer.json",
        &plain_tokenizer(&ck.join("tokenizer.json"))?,
    )?;
    seam_shared::ort_env::init(0)?;
    let started = Instant::now();
    let mut smoothing_texts = None;
    let ranges = match opts.weights {
        EncoderWeightType::Int8 => {
            let texts = calibration_texts(&train, CALIBRATION_TEXTS);
            let ranges = measure_ranges(
                &weights,
                &out.join(&tokenizer),
                &texts,
                opts.max_tokens as usize,
            )?;
            if opts.progress {
                eprintln!(
                    "import: activation ranges of {} linear layers measured on {} texts in {:.1}s",
                    ranges.len(),
                    texts.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            smoothing_texts = Some(texts.len());
            Some(ranges)
        }
        EncoderWeightType::F32 => None,
    };
    let graph_opts = EncoderGraph {
        weights: opts.weights,
        smoothing: ranges.as_ref(),
        probes: false,
    };
    let graph = write_file(
        out,
        &mut files,
        "encoder.onnx",
        &encoder_graph(&weights, opts.max_tokens as usize, &graph_opts),
    )?;
    drop(weights);
    // Same rule as `EncoderManifest::validate`.
    let enc_digest = encoder_digest(&files[&graph], &files[&tokenizer], opts.max_tokens);

    // Embed the labelled data with the graph just written: the head learns what the device
    // will compute.
    let started = Instant::now();
    let mut encoder = Encoder::load(
        &opts.out.join(&graph),
        &opts.out.join(&tokenizer),
        opts.max_tokens as usize,
        config.hidden_size,
    )?;
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, (l, _))| (l.as_str(), i))
        .collect();
    let in_scope = |rows: &[Example]| -> Vec<Example> {
        rows.iter()
            .filter(|e| e.label != OOS_LABEL)
            .cloned()
            .collect()
    };
    let (train, calibration) = (in_scope(&train), in_scope(&calibration));
    let x_train = embed_all(&mut encoder, &train, opts.progress, "train")?;
    let x_cal = embed_all(&mut encoder, &calibration, opts.progress, "calibration")?;
    let y_train: Vec<usize> = train.iter().map(|e| index[e.label.as_str()]).collect();
    let y_cal: Vec<usize> = calibration
        .iter()
        .map(|e| index[e.label.as_str()])
        .collect();
    let embed_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let dim = config.hidden_size;
    let mut best: Option<(f32, f32, crate::perception::head::IntentHead)> = None;
    for &l2 in &opts.l2_grid {
        let trained = train_head(
            &x_train,
            &y_train,
            dim,
            classes.len(),
            TrainOptions {
                l2,
                lbfgs: LbfgsOptions::default(),
            },
        )?;
        let acc = accuracy(&trained.head, &x_cal, &y_cal);
        if opts.progress {
            eprintln!(
                "import: l2 {l2:e}: loss {:.4} after {} iterations ({:?}), calibration accuracy {:.4}",
                trained.loss, trained.iterations, trained.stop, acc
            );
        }
        if best.as_ref().is_none_or(|(_, a, _)| acc > *a) {
            best = Some((l2, acc, trained.head));
        }
    }
    let (l2, cal_acc, head) =
        best.ok_or_else(|| Error::InvalidArgument("no L2 strength".into()))?;
    let confidences: Vec<f32> = x_cal
        .chunks_exact(dim)
        .map(|e| head.probabilities(e).into_iter().fold(0.0, f32::max))
        .collect();
    let (threshold, frr) = calibrate_threshold(&confidences, opts.target_frr);
    let train_seconds = started.elapsed().as_secs_f64();

    let head_file = write_file(out, &mut files, "head.safetensors", &head.to_bytes()?)?;
    let labels_file = write_file(
        out,
        &mut files,
        "labels.tsv",
        format_labels(&classes).as_bytes(),
    )?;
    let data_ref = |path: &Path, examples: usize| -> Result<DataRef> {
        Ok(DataRef {
            file: path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: package::sha256_file(path)?,
            examples: examples as u32,
        })
    };
    let manifest = EncoderManifest {
        kind: ENCODER_KIND.into(),
        format_version: ENCODER_FORMAT_VERSION,
        name: checkpoint_name(ck),
        source: Source {
            file: "model.safetensors".into(),
            sha256: source_sha,
        },
        encoder: EncoderSpec {
            family: "bert".into(),
            hidden: config.hidden_size as u32,
            layers: config.num_hidden_layers as u32,
            heads: config.num_attention_heads as u32,
            intermediate: config.intermediate_size as u32,
            vocab_size: config.vocab_size as u32,
            max_positions: config.max_position_embeddings as u32,
            max_tokens: opts.max_tokens,
            layer_norm_eps: config.layer_norm_eps,
            weights: opts.weights.as_str().into(),
            smoothing: smoothing_texts.map(|n| SmoothingSpec {
                alpha: ALPHA,
                calibration_texts: n as u32,
            }),
            graph,
            tokenizer,
            digest: enc_digest.clone(),
        },
        head: IntentHeadSpec {
            model: "logistic_regression".into(),
            weights: head_file,
            labels: labels_file,
            classes: classes.len() as u32,
            encoder_digest: enc_digest.clone(),
            oos_threshold: threshold,
            target_false_rejection: opts.target_frr,
            calibration_false_rejection: frr,
            l2,
            calibration_accuracy: cal_acc,
            train: data_ref(&opts.train, train.len())?,
            calibration: data_ref(&opts.calibration, calibration.len())?,
        },
        files,
    };
    let digest = package::write_manifest(&opts.out, &manifest)?;
    Ok(EncoderImportReport {
        digest,
        encoder_digest: enc_digest,
        classes: classes.len(),
        train_examples: train.len(),
        l2,
        calibration_accuracy: cal_acc,
        threshold,
        calibration_frr: frr,
        embed_seconds,
        train_seconds,
    })
}

/// `n` texts spread evenly over `rows` (all of them when there are fewer).
fn calibration_texts(rows: &[Example], n: usize) -> Vec<&str> {
    let step = rows.len().div_ceil(n.max(1)).max(1);
    rows.iter().step_by(step).map(|e| e.text.as_str()).collect()
}

/// Writes `data` to `out/rel` and records its SHA-256.
fn write_file(
    out: &Path,
    files: &mut BTreeMap<String, String>,
    rel: &str,
    data: &[u8],
) -> Result<String> {
    let path = out.join(rel);
    std::fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
    files.insert(rel.to_string(), package::sha256_bytes(data));
    Ok(rel.to_string())
}

/// The checkpoint's `tokenizer.json` with its padding and truncation switched off (the
/// encoder applies its own limit and reports truncation).
fn plain_tokenizer(path: &Path) -> Result<Vec<u8>> {
    let mut t = load_tokenizer(path, DEFAULT_MAX_TOKENS as usize)?;
    t.with_padding(None);
    t.with_truncation(None)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let text = t
        .to_string(false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(text.into_bytes())
}

/// Embeddings of every example, `n × hidden` row-major.
pub fn embed_all(
    encoder: &mut Encoder,
    rows: &[Example],
    progress: bool,
    what: &str,
) -> Result<Vec<f32>> {
    let tokens = rows
        .iter()
        .map(|e| encoder.tokenize(&e.text))
        .collect::<Result<Vec<Tokens>>>()?;
    let mut out = Vec::with_capacity(rows.len() * encoder.hidden());
    // Chunks keep progress visible; each chunk is sorted by length inside `embed_tokens`.
    let chunk = 2048;
    for (i, part) in tokens.chunks(chunk).enumerate() {
        if progress {
            eprint!(
                "\rimport: embedding {what} {}/{}",
                (i * chunk + part.len()),
                tokens.len()
            );
        }
        for e in encoder.embed_tokens(part)? {
            out.extend(e.values);
        }
    }
    if progress {
        eprintln!();
    }
    Ok(out)
}

fn checkpoint_name(dir: &Path) -> String {
    let base = dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    if base.eq_ignore_ascii_case("all-minilm-l6-v2") {
        "all-MiniLM-L6-v2".into()
    } else if base.is_empty() {
        "bert-encoder".into()
    } else {
        base
    }
}
