//! `seam-edge model import`: a GGUF checkpoint becomes a model package (ONNX graphs per layer
//! segment with the 4-/8-bit weights kept as they are, the Q8_0 embedding table, a Hugging Face
//! `tokenizer.json`, and a manifest with checksums).

pub mod drafter;
pub mod encoder;
pub mod encoder_graph;
pub mod encoder_smooth;
pub mod graphs;
pub mod linear;

use crate::error::{Error, Result};
use crate::gguf::hparams::LlamaHparams;
use crate::gguf::quant::q4_1_blocks;
use crate::gguf::{GgmlType, GgufFile};
use graphs::{Dims, LayerWeights};
use linear::{F32Linear, Linear, Q4Linear, Q8Linear};
use seam_shared::package::{
    self, Architecture, Drafter, FORMAT_VERSION, LinearType, Manifest, Segment, Source,
    StatePredictor, Weights,
};
use std::collections::BTreeMap;
use std::path::Path;

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Layers where the forward pass may be split (segment boundaries).
    pub split_points: Vec<u32>,
    /// Print progress on stderr.
    pub progress: bool,
    /// Compute the matmuls in f32 (exact, slow; for checking the graphs) instead of with
    /// int8-quantized activations.
    pub f32_compute: bool,
    /// Train a draft head for speculative split decoding; `None`: the package has none and
    /// split requests settle one token per round trip.
    pub drafter: Option<drafter::DrafterOptions>,
}

/// Summary of an import.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub digest: String,
    pub files: usize,
    pub bytes: u64,
    pub graphs: usize,
    /// The trained drafter: its manifest entry and training figures.
    pub drafter: Option<(Drafter, drafter::TrainedDrafter)>,
}

/// Imports the GGUF at `gguf_path` into a new package directory `out`.
pub fn import_gguf(gguf_path: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let source_sha = package::sha256_file(gguf_path)?;
    let gguf = GgufFile::open(gguf_path)?;
    let hp = LlamaHparams::from_gguf(&gguf)?;
    let splits = validate_split_points(&opts.split_points, hp.n_layer as u32)?;
    if let Some(bad) = opts
        .drafter
        .iter()
        .flat_map(|d| &d.predictor_layers)
        .find(|k| !splits.contains(k))
    {
        return Err(Error::InvalidArgument(format!(
            "a state predictor is trained for a split point; {bad} is not one of {splits:?}"
        )));
    }
    std::fs::create_dir_all(out.join("graphs")).map_err(|e| Error::io(out, e))?;

    let dims = Dims {
        n_embd: hp.n_embd,
        n_ff: hp.n_ff,
        qkv: (hp.n_head + 2 * hp.n_head_kv) * hp.head_dim,
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        head_dim: hp.head_dim,
        gelu: hp.family.gemma(),
        vocab: hp.vocab_size,
        eps: hp.rms_eps,
        accuracy_level: if opts.f32_compute { 0 } else { 4 },
    };
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut bytes = 0u64;
    let mut write = |rel: String, data: &[u8]| -> Result<String> {
        let path = out.join(&rel);
        std::fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
        files.insert(rel.clone(), package::sha256_bytes(data));
        bytes += data.len() as u64;
        Ok(rel)
    };

    // Boundaries 0 = b0 < b1 < … < n; segment i is [b_i, b_{i+1}).
    let mut bounds = vec![0u32];
    bounds.extend(&splits);
    bounds.push(hp.n_layer as u32);
    let mut segments = Vec::new();
    let mut graph_count = 0usize;
    let mut prev: Option<LayerWeights> = None;
    for w in bounds.windows(2) {
        let (start, end) = (w[0], w[1]);
        let mut graph_files = Vec::new();
        for layer in start..end {
            if opts.progress {
                eprint!("\rimport: layer {}/{}", layer + 1, hp.n_layer);
                if layer as usize + 1 == hp.n_layer {
                    eprintln!();
                }
            }
            let lw = layer_weights(&gguf, &hp, layer as usize)?;
            let (name, onnx) = if layer == start {
                (
                    format!("graphs/pre_{layer:02}.onnx"),
                    graphs::pre_graph(&lw, layer as usize, dims),
                )
            } else {
                let p = prev.as_ref().expect("previous layer of a segment");
                (
                    format!("graphs/mid_{layer:02}.onnx"),
                    graphs::mid_graph(p, &lw, layer as usize, dims),
                )
            };
            graph_files.push(write(name, &onnx)?);
            if layer + 1 == end {
                let onnx = graphs::post_graph(&lw, layer as usize, dims);
                graph_files.push(write(format!("graphs/post_{layer:02}.onnx"), &onnx)?);
            }
            prev = Some(lw);
        }
        graph_count += graph_files.len();
        segments.push(Segment {
            start,
            end,
            graphs: graph_files,
        });
    }

    let (embd_info, head, head_type, tied) = head_weights(&gguf, &hp)?;
    let output_norm = gguf.tensor_f32("output_norm.weight")?;
    let embedding_type = embd_info.ty.to_string().to_lowercase();
    // A tied head kept in 8 bits holds exactly the embedding's values: one table serves both.
    let (embedding, table, embedding_head_block) = match &head {
        Linear::Q8(w) if tied && w.mins.is_none() => {
            let path = format!("graphs/{HEAD_TABLE}");
            let file = write(path, &graphs::head_table_bytes(w))?;
            (file, Some(HEAD_TABLE), Some(w.block as u32))
        }
        _ => {
            let path = format!("embedding.{embedding_type}");
            (write(path, gguf.tensor_bytes(embd_info)?)?, None, None)
        }
    };
    let head_file = write(
        "graphs/head.onnx".into(),
        &graphs::head_graph(&output_norm, &head, dims, table),
    )?;

    let tokenizer_json = crate::tokenizer_build::tokenizer_json(&gguf)?;
    let tokenizer_text =
        serde_json::to_vec(&tokenizer_json).map_err(|e| Error::Tokenizer(e.to_string()))?;
    tokenizers::Tokenizer::from_bytes(&tokenizer_text)
        .map_err(|e| Error::Tokenizer(format!("the built tokenizer.json does not load: {e}")))?;
    let tokenizer = write("tokenizer.json".into(), &tokenizer_text)?;

    let tokens = gguf.get_string_array("tokenizer.ggml.tokens")?;
    let eos = hp.eos_token_id.unwrap_or(0);
    let stop_tokens = tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            *i as u32 != eos
                && matches!(
                    **t,
                    "<|endoftext|>" | "<|im_end|>" | "<|eot_id|>" | "</s>" | "<end_of_turn>"
                )
        })
        .map(|(i, _)| i as u32)
        .collect();
    let name = gguf
        .get_str("general.name")
        .ok()
        .map(str::to_string)
        .unwrap_or_else(|| file_stem(gguf_path));
    let linear_types = linear_types(&gguf, hp.n_layer, opts.f32_compute);
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        name,
        source: Source {
            file: gguf_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: source_sha,
        },
        architecture: Architecture {
            family: hp.family.name().into(),
            n_layer: hp.n_layer as u32,
            n_embd: hp.n_embd as u32,
            n_ff: hp.n_ff as u32,
            n_head: hp.n_head as u32,
            n_head_kv: hp.n_head_kv as u32,
            head_dim: hp.head_dim as u32,
            vocab_size: hp.vocab_size as u32,
            context_length: hp.context_length as u32,
            rope_theta: hp.rope_theta,
            rope_freq_scale: hp.rope_freq_scale,
            rope_freq_factors: hp.rope_freq_factors.clone(),
            local_layers: (0..hp.n_layer)
                .filter(|&l| hp.is_local(l))
                .map(|l| l as u32)
                .collect(),
            rope_theta_local: (hp.sliding_window > 0).then_some(hp.rope_theta_swa),
            sliding_window: hp.sliding_window as u32,
            embedding_scale: if hp.family.gemma() {
                (hp.n_embd as f32).sqrt()
            } else {
                1.0
            },
            rms_eps: hp.rms_eps,
            bos_token: hp.bos_token_id.unwrap_or(0),
            eos_token: eos,
            stop_tokens,
        },
        weights: Weights {
            linear: linear_types
                .iter()
                .map(|t| t.gguf.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            linear_types,
            head: head_type.to_string().to_lowercase(),
            embedding: embedding_type,
            embedding_head_block,
            compute: if opts.f32_compute { "f32" } else { "int8" }.into(),
        },
        split_points: splits,
        segments,
        head: head_file,
        embedding,
        tokenizer,
        kv_dtype: "int8".into(),
        chat_template: gguf
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string),
        drafter: None,
        predictors: Vec::new(),
        files,
    };
    let mut digest = package::write_manifest(out, &manifest)?;
    let mut trained = None;
    if let Some(opts_d) = &opts.drafter {
        // On a terminal one line is rewritten; in a log, a line every few seconds.
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut last = std::time::Instant::now();
        let mut progress = |line: &str| {
            if !opts.progress {
                return;
            }
            if terminal {
                eprint!("\rimport: {line}    ");
            } else if last.elapsed() >= std::time::Duration::from_secs(10) {
                eprintln!("import: {line}");
                last = std::time::Instant::now();
            }
        };
        // The head reads its drafts out through the LM head's rows in 8 bits; a float head is
        // rounded for it (drafts are proposals the full model checks: rounding costs
        // acceptance, never exactness).
        let head8 = match &head {
            Linear::Q8(h) => h.clone(),
            Linear::F32(h) => Q8Linear::quantize(&h.transposed(), h.k, h.n),
            Linear::Q4(_) => unreachable!("a 4-bit LM head is refused by head_weights"),
        };
        let t = drafter::train_drafter(out, &output_norm, &head8, dims, opts_d, &mut progress)?;
        if opts.progress {
            eprintln!();
        }
        let graph = "graphs/drafter.onnx".to_string();
        let shortlist = "drafter_shortlist.u32".to_string();
        let ids: Vec<u8> = t.shortlist.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (rel, data) in [(&graph, &t.graph), (&shortlist, &ids)] {
            let path = out.join(rel);
            std::fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
            manifest
                .files
                .insert(rel.clone(), package::sha256_bytes(data));
            bytes += data.len() as u64;
        }
        let spec = Drafter {
            graph,
            shortlist,
            shortlist_size: t.shortlist.len() as u32,
            train_positions: t.train_positions as u32,
            heldout_positions: t.heldout_positions as u32,
            heldout_acceptance: t.acceptance.iter().map(|&a| a as f32).collect(),
            seed: opts_d.seed,
        };
        manifest.drafter = Some(spec.clone());
        for p in &t.predictors {
            let rel = format!("graphs/predictor.k{}.onnx", p.layer);
            let path = out.join(&rel);
            std::fs::write(&path, &p.graph).map_err(|e| Error::io(&path, e))?;
            manifest
                .files
                .insert(rel.clone(), package::sha256_bytes(&p.graph));
            bytes += p.graph.len() as u64;
            manifest.predictors.push(StatePredictor {
                layer: p.layer,
                graph: rel,
                heldout_acceptance: p.acceptance.iter().map(|&a| a as f32).collect(),
            });
        }
        digest = package::write_manifest(out, &manifest)?;
        trained = Some((spec, t));
    }
    Ok(ImportReport {
        digest,
        files: manifest.files.len(),
        bytes,
        graphs: graph_count + 1,
        drafter: trained,
    })
}

/// Sorted, unique split points inside `1..n_layer`.
pub fn validate_split_points(points: &[u32], n_layer: u32) -> Result<Vec<u32>> {
    let mut p = points.to_vec();
    p.sort_unstable();
    p.dedup();
    if let Some(bad) = p.iter().find(|&&k| k == 0 || k >= n_layer) {
        return Err(Error::InvalidArgument(format!(
            "split point {bad} is outside 1..{n_layer} (the model has {n_layer} layers)"
        )));
    }
    Ok(p)
}

/// How the graphs keep a GGUF type of linear layer, and whether that is wider than the type:
/// Q4_1, Q4_0 and Q4_K in 4 bits (the same function per block of 32: Q4_0's offset `−8·d` and
/// Q4_K's `−dmin·m` are the block's min); Q8_0 in 8 bits; Q5_0, Q5_1 and Q5_K in 5 bits and
/// Q6_K in 6 with int8 activations (Seam's `QMatMul`, for layers whose outputs are a multiple
/// of 8, as in every supported model; Q3_K's codes take the 6-bit format too, wider than 3
/// bits), else widened to 8 bits without changing a value (no 3-, 5- or 6-bit `MatMulNBits`
/// exists); F32 as f32, F16 and BF16 widened to f32 (exact). `None`: not a type linear layers
/// may have.
fn storage(ty: GgmlType, f32_compute: bool) -> Option<(&'static str, bool)> {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q4_0 | GgmlType::Q4_K => Some(("4-bit", false)),
        GgmlType::Q8_0 => Some(("8-bit", false)),
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K if !f32_compute => Some(("5-bit", false)),
        GgmlType::Q6_K if !f32_compute => Some(("6-bit", false)),
        GgmlType::Q3_K if !f32_compute => Some(("6-bit", true)),
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q3_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            Some(("8-bit", true))
        }
        GgmlType::F32 => Some(("f32", false)),
        GgmlType::F16 | GgmlType::BF16 => Some(("f32", true)),
        _ => None,
    }
}

/// The GGUF types of the linear layers of `n_layer` layers, how many tensors of each and how
/// the graphs keep them.
fn linear_types(gguf: &GgufFile, n_layer: usize, f32_compute: bool) -> Vec<LinearType> {
    let mut counts: BTreeMap<String, (u32, GgmlType)> = BTreeMap::new();
    for info in &gguf.tensors {
        // `blk.{layer}.{linear}.weight`
        let linear = info
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .filter(|(layer, _)| layer.parse::<usize>().is_ok_and(|l| l < n_layer))
            .and_then(|(_, rest)| rest.strip_suffix(".weight"))
            .is_some_and(|name| LINEAR_NAMES.contains(&name));
        if linear {
            counts
                .entry(info.ty.to_string().to_lowercase())
                .or_insert((0, info.ty))
                .0 += 1;
        }
    }
    counts
        .into_iter()
        .filter_map(|(gguf, (tensors, ty))| {
            let (stored, widened) = storage(ty, f32_compute)?;
            Some(LinearType {
                gguf,
                tensors,
                stored: stored.into(),
                widened,
            })
        })
        .collect()
}

/// The linear layers of a decoder layer, by GGUF tensor name (norm gains are not linear).
const LINEAR_NAMES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// A linear layer as stored (see [`storage`]).
fn linear(gguf: &GgufFile, name: &str, n: usize, k: usize) -> Result<Linear> {
    linear_rows(gguf, name, n, k, None)
}

/// [`linear`] with its output rows reordered: row `r` of the result is row `rows[r]` of the
/// file's. Rows are whole blocks, so this moves bytes and changes no value.
fn linear_rows(
    gguf: &GgufFile,
    name: &str,
    n: usize,
    k: usize,
    rows: Option<&[usize]>,
) -> Result<Linear> {
    let info = gguf.tensor(name)?;
    if info.dims != [k as u64, n as u64] {
        return Err(Error::Package(format!(
            "{name} has shape {:?}, expected [{k}, {n}]",
            info.dims
        )));
    }
    let stored = gguf.tensor_bytes(info)?;
    let reordered;
    let bytes = match rows {
        None => stored,
        Some(rows) => {
            let row = stored.len() / n;
            reordered = rows
                .iter()
                .flat_map(|&r| &stored[r * row..][..row])
                .copied()
                .collect::<Vec<u8>>();
            &reordered[..]
        }
    };
    let q4 = |blocks: Vec<crate::gguf::quant::Q41Block>| {
        Ok(Linear::Q4(Q4Linear::from_q4_1(n, k, &blocks)))
    };
    let unsupported = || {
        Error::Package(format!(
            "unsupported quantization {} for {name}: linear layers must be Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q8_0, Q3_K, Q5_K, Q6_K, F32, F16 or BF16",
            info.ty
        ))
    };
    match (info.ty, storage(info.ty, false)) {
        (_, None) => Err(unsupported()),
        (GgmlType::Q4_1, _) => q4(q4_1_blocks(bytes)?),
        (GgmlType::Q4_0, _) => q4(crate::gguf::quant::q4_0_blocks(bytes)?),
        (GgmlType::Q4_K, _) => q4(crate::gguf::kquant::q4_k_blocks(bytes)?),
        (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16, _) => Ok(Linear::F32(F32Linear {
            n,
            k,
            w: crate::gguf::quant::dequantize(info.ty, bytes, n * k)?,
        })),
        (other, Some(_)) => match crate::gguf::quant::blocks8(other, bytes)? {
            Some(b) => Ok(Linear::Q8(Q8Linear::from_blocks(n, k, b))),
            None => Err(unsupported()),
        },
    }
}

/// The order of q/k rows that turns NEOX rotary pairs (value `j` with `j + head_dim/2` of
/// each head) into the adjacent pairs (`2j`, `2j + 1`) the runtime rotates: row `2j + a` of a
/// head is the file's row `j + a·head_dim/2`. q and k are reordered alike, so their products
/// (attention scores) are unchanged.
pub fn adjacent_pairs(n_heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..n_heads * head_dim)
        .map(|r| {
            let (head, j) = (r / head_dim, r % head_dim);
            head * head_dim + j / 2 + (j % 2) * half
        })
        .collect()
}

fn layer_weights(gguf: &GgufFile, hp: &LlamaHparams, i: usize) -> Result<LayerWeights> {
    let t = |s: &str| format!("blk.{i}.{s}.weight");
    let (e, f, q, kv) = (
        hp.n_embd,
        hp.n_ff,
        hp.n_head * hp.head_dim,
        hp.n_head_kv * hp.head_dim,
    );
    let (q_rows, k_rows) = if hp.family.neox_rope() {
        (
            Some(adjacent_pairs(hp.n_head, hp.head_dim)),
            Some(adjacent_pairs(hp.n_head_kv, hp.head_dim)),
        )
    } else {
        (None, None)
    };
    let qkv_bias = if hp.family.qkv_bias() {
        let bias = |s: &str, rows: Option<&[usize]>| -> Result<Vec<f32>> {
            let b = gguf.tensor_f32(&format!("blk.{i}.{s}.bias"))?;
            Ok(match rows {
                Some(rows) => rows.iter().map(|&r| b[r]).collect(),
                None => b,
            })
        };
        let mut b = bias("attn_q", q_rows.as_deref())?;
        b.extend(bias("attn_k", k_rows.as_deref())?);
        b.extend(bias("attn_v", None)?);
        Some(b)
    } else {
        None
    };
    let (qk_norm, post_norms) = if hp.family.gemma() {
        // A head's gains follow its values into the reordered rows.
        let within = adjacent_pairs(1, hp.head_dim);
        let head_gains = |s: &str| -> Result<Vec<f32>> {
            let w = gguf.tensor_f32(&t(s))?;
            Ok(within.iter().map(|&r| w[r]).collect())
        };
        (
            Some((head_gains("attn_q_norm")?, head_gains("attn_k_norm")?)),
            Some((
                gguf.tensor_f32(&t("post_attention_norm"))?,
                gguf.tensor_f32(&t("post_ffw_norm"))?,
            )),
        )
    } else {
        (None, None)
    };
    Ok(LayerWeights {
        attn_norm: gguf.tensor_f32(&t("attn_norm"))?,
        ffn_norm: gguf.tensor_f32(&t("ffn_norm"))?,
        qkv: Linear::fuse(vec![
            linear_rows(gguf, &t("attn_q"), q, e, q_rows.as_deref())?,
            linear_rows(gguf, &t("attn_k"), kv, e, k_rows.as_deref())?,
            linear(gguf, &t("attn_v"), kv, e)?,
        ]),
        qkv_bias,
        qk_norm,
        post_norms,
        o: linear(gguf, &t("attn_output"), e, q)?,
        gate_up: Linear::fuse(vec![
            linear(gguf, &t("ffn_gate"), f, e)?,
            linear(gguf, &t("ffn_up"), f, e)?,
        ]),
        down: linear(gguf, &t("ffn_down"), e, f)?,
    })
}

/// The token embedding (kept as the GGUF stores it: the runtime decodes a row per token, so
/// any type whose blocks tile a row works) and the LM head (`output.weight`, or the embedding
/// when tied) in 8 bits (Q8_0 as stored, Q5_0, Q3_K and Q6_K widened without changing a
/// value) or in f32 (F32, and F16 and BF16 widened exactly).
/// Also says whether the head is tied (no `output.weight`).
fn head_weights<'a>(
    gguf: &'a GgufFile,
    hp: &LlamaHparams,
) -> Result<(&'a crate::gguf::TensorInfo, Linear, GgmlType, bool)> {
    let embd = gguf.tensor("token_embd.weight")?;
    let untied = gguf.tensor("output.weight").ok();
    let head = untied.unwrap_or(embd);
    for info in [embd, head] {
        if info.dims != [hp.n_embd as u64, hp.vocab_size as u64] {
            return Err(Error::Package(format!(
                "{} has shape {:?}, expected [{}, {}]",
                info.name, info.dims, hp.n_embd, hp.vocab_size
            )));
        }
    }
    match embd.ty.block_layout() {
        Some((elems, _)) if hp.n_embd.is_multiple_of(elems) => {}
        _ => {
            return Err(Error::Package(format!(
                "unsupported type {} for {}: an embedding row of {} values must be whole blocks of a known type",
                embd.ty, embd.name, hp.n_embd
            )));
        }
    }
    let unsupported = || {
        Error::Package(format!(
            "unsupported quantization {} for {}: the LM head must be Q8_0, Q5_0, Q3_K, Q6_K, F32, F16 or BF16",
            head.ty, head.name
        ))
    };
    let (n, k) = (hp.vocab_size, hp.n_embd);
    let bytes = gguf.tensor_bytes(head)?;
    let linear = match head.ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Linear::F32(F32Linear {
            n,
            k,
            w: crate::gguf::quant::dequantize(head.ty, bytes, n * k)?,
        }),
        ty => {
            let blocks = crate::gguf::quant::blocks8(ty, bytes)?
                .filter(|b| b.m.is_none())
                .ok_or_else(unsupported)?;
            Linear::Q8(Q8Linear::from_blocks(n, k, blocks))
        }
    };
    Ok((embd, linear, head.ty, untied.is_none()))
}

/// The shared table of a tied 8-bit head and the embedding, beside the head graph.
const HEAD_TABLE: &str = "head.q8";

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
