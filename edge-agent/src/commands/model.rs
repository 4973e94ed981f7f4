//! `seam-edge model import|import-encoder|inspect|evaluate`.

use crate::import::drafter::{DrafterOptions, expected_tokens};
use crate::import::encoder::{EncoderImportOptions, import_encoder as import_encoder_package};
use crate::import::{ImportOptions, import_gguf};
use crate::perception::dataset::read_examples;
use crate::perception::evaluate::evaluate as evaluate_package;
use crate::perception::{Perception, PerceptionLimits};
use anyhow::Context;
use seam_shared::package::Package;
use std::path::Path;
use std::time::Instant;

pub fn import(
    gguf: &Path,
    out: &Path,
    split_points: &[u32],
    f32_compute: bool,
    drafter: Option<DrafterOptions>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let report = import_gguf(
        gguf,
        out,
        &ImportOptions {
            split_points: split_points.to_vec(),
            progress: true,
            f32_compute,
            drafter,
        },
    )
    .with_context(|| format!("importing {}", gguf.display()))?;
    eprintln!(
        "import: wrote {} ({} files, {} graphs, {:.1} MB) in {:.1}s, digest {}",
        out.display(),
        report.files,
        report.graphs,
        report.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        report.digest
    );
    if let Some((spec, t)) = &report.drafter {
        eprintln!(
            "import: draft head trained on {} positions (data {:.0}s, training {:.0}s, seed {:#x}); shortlist of {} tokens covers {:.1}% of held-out greedy tokens",
            t.train_positions,
            t.seconds_data,
            t.seconds_train,
            spec.seed,
            spec.shortlist_size,
            t.coverage * 100.0
        );
        eprintln!(
            "import: held-out acceptance by draft position (greedy answers to {} unseen positions): {}",
            t.heldout_positions,
            super::generate::percent_list(&t.acceptance)
        );
        eprintln!(
            "import: expected tokens per round trip with chains of 2/4/6/8 drafts: {:.2} / {:.2} / {:.2} / {:.2}",
            expected_tokens(&t.acceptance, 2),
            expected_tokens(&t.acceptance, 4),
            expected_tokens(&t.acceptance, 6),
            expected_tokens(&t.acceptance, 8)
        );
        eprintln!(
            "import: tokens per round trip with dynamic trees of {} nodes (held-out, greedy): {:.2}",
            crate::runtime::draft::MAX_TREE_NODES,
            t.tree_tokens
        );
        for p in &t.predictors {
            eprintln!(
                "import: state predictor of layer {} trained on {} rows in {:.0}s; the worker's drafts through layers [{}, N) stand by position {} (held-out, greedy): {:.2} tokens per round trip with chains of 8",
                p.layer,
                p.train_rows,
                p.seconds,
                p.layer,
                super::generate::percent_list(&p.acceptance),
                expected_tokens(&p.acceptance, 8)
            );
        }
    }
    Ok(())
}

pub fn inspect(dir: &Path) -> anyhow::Result<()> {
    if let Ok(pkg) = seam_shared::package::EncoderPackage::open_kind(dir) {
        return inspect_encoder(&pkg);
    }
    let pkg = Package::open(dir)?;
    let m = pkg.manifest();
    let a = &m.architecture;
    println!("package   {}", pkg.dir().display());
    println!("digest    {}", pkg.digest());
    println!("name      {}", m.name);
    println!("source    {} (sha256 {})", m.source.file, m.source.sha256);
    println!(
        "model     {} · {} layers · d={} · ff={} · heads {}/{} kv · head_dim {} · vocab {} · ctx {}",
        a.family,
        a.n_layer,
        a.n_embd,
        a.n_ff,
        a.n_head,
        a.n_head_kv,
        a.head_dim,
        a.vocab_size,
        a.context_length
    );
    println!(
        "weights   linear {} · head {} · embedding {} · {} compute · kv cache {}",
        linear_summary(&m.weights),
        m.weights.head,
        match m.weights.embedding_head_block {
            Some(_) => format!("{} (tied: the head's 8-bit table)", m.weights.embedding),
            None => m.weights.embedding.clone(),
        },
        m.weights.compute,
        m.kv_dtype
    );
    println!("splits    {:?}", m.split_points);
    for s in &m.segments {
        println!(
            "segment   layers {:>2}..{:<2} {} graphs",
            s.start,
            s.end,
            s.graphs.len()
        );
    }
    match &m.drafter {
        Some(d) => println!(
            "drafter   {} (shortlist of {} tokens, trained on {} positions, seed {:#x}); held-out acceptance by position {}",
            d.graph,
            d.shortlist_size,
            d.train_positions,
            d.seed,
            super::generate::percent_list(
                &d.heldout_acceptance
                    .iter()
                    .map(|&a| a as f64)
                    .collect::<Vec<_>>()
            )
        ),
        None => println!("drafter   none (split requests draft by prompt lookup alone)"),
    }
    for p in &m.predictors {
        println!(
            "predictor layer {} {} (the worker drafts through layers [{}, N)); held-out acceptance by position {}",
            p.layer,
            p.graph,
            p.layer,
            super::generate::percent_list(
                &p.heldout_acceptance
                    .iter()
                    .map(|&a| a as f64)
                    .collect::<Vec<_>>()
            )
        );
    }
    let total: u64 = m
        .files
        .keys()
        .filter_map(|f| std::fs::metadata(pkg.path(f)).ok())
        .map(|md| md.len())
        .sum();
    println!("files     {} ({:.1} MB)", m.files.len(), total as f64 / 1e6);
    Ok(())
}

/// The linear layers' GGUF types and how the graphs keep each, e.g.
/// `q4_k (154 tensors, 4-bit) + q6_k (26 tensors, 6-bit)`, or in f32-compute packages
/// `q6_k (26 tensors, widened to 8-bit: no exact 6-bit MatMulNBits)`.
pub fn linear_summary(w: &seam_shared::package::Weights) -> String {
    if w.linear_types.is_empty() {
        return w.linear.clone();
    }
    w.linear_types
        .iter()
        .map(|t| {
            let what = if t.widened {
                let path = match t.gguf.strip_prefix('q').and_then(|r| r.chars().next()) {
                    Some(b) => format!("{b}-bit MatMulNBits"),
                    None => "16-bit float MatMulNBits".into(),
                };
                format!("widened to {}: no exact {path}", t.stored)
            } else {
                t.stored.clone()
            };
            format!("{} ({} tensors, {what})", t.gguf, t.tensors)
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// `seam-edge model import-encoder`.
pub fn import_encoder(opts: &EncoderImportOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let r = import_encoder_package(opts)
        .with_context(|| format!("importing the encoder in {}", opts.checkpoint.display()))?;
    eprintln!(
        "import: wrote {} in {:.1}s (embedding {:.1}s, training {:.1}s), digest {}",
        opts.out.display(),
        started.elapsed().as_secs_f64(),
        r.embed_seconds,
        r.train_seconds,
        r.digest
    );
    eprintln!(
        "import: {} intents from {} examples · l2 {:e} · calibration accuracy {:.4} · out-of-scope threshold {:.4} ({:.2}% of calibration texts rejected, target {:.2}%)",
        r.classes,
        r.train_examples,
        r.l2,
        r.calibration_accuracy,
        r.threshold,
        r.calibration_frr * 100.0,
        opts.target_frr * 100.0
    );
    Ok(())
}

/// `seam-edge model evaluate`: accuracy of an encoder package on a labelled file.
pub fn evaluate(model: &Path, data: &Path, json: bool) -> anyhow::Result<()> {
    let mut p = Perception::load(model, 0, PerceptionLimits::default())?;
    let rows = read_examples(data)?;
    let e = evaluate_package(&mut p, &rows)?;
    if json {
        println!("{}", serde_json::to_string(&e)?);
        return Ok(());
    }
    println!(
        "data          {} ({} in scope, {} out of scope)",
        data.display(),
        e.in_scope,
        e.out_of_scope
    );
    println!(
        "accuracy      {:.4} (best intent, in-scope texts)",
        e.accuracy
    );
    println!(
        "with oos      {:.4} correct and kept · {:.4} false rejection at threshold {:.4}",
        e.accuracy_with_threshold, e.false_rejection, e.threshold
    );
    if let Some(r) = e.oos_recall {
        println!("oos recall    {r:.4}");
    }
    if e.unknown_labels > 0 {
        println!(
            "unknown       {} texts with labels the head does not know",
            e.unknown_labels
        );
    }
    Ok(())
}

fn inspect_encoder(pkg: &seam_shared::package::EncoderPackage) -> anyhow::Result<()> {
    let m = pkg.manifest();
    let (e, h) = (&m.encoder, &m.head);
    println!("package   {}", pkg.dir().display());
    println!("digest    {}", pkg.digest());
    println!("name      {} (sha256 {})", m.name, m.source.sha256);
    println!(
        "encoder   {} · {} layers · d={} · ff={} · heads {} · vocab {} · max {} tokens · {} weights · digest {}",
        e.family,
        e.layers,
        e.hidden,
        e.intermediate,
        e.heads,
        e.vocab_size,
        e.max_tokens,
        e.weights,
        e.digest
    );
    if let Some(sm) = &e.smoothing {
        println!(
            "smoothing activations of the linear layers smoothed into their int8 weights (alpha {}, ranges from {} texts)",
            sm.alpha, sm.calibration_texts
        );
    }
    println!(
        "head      {} · {} intents · trained on {} ({} texts) · l2 {:e}",
        h.model, h.classes, h.train.file, h.train.examples, h.l2
    );
    println!(
        "oos       threshold {:.4} · {:.2}% false rejection on {} (target {:.2}%) · accuracy there {:.4}",
        h.oos_threshold,
        h.calibration_false_rejection * 100.0,
        h.calibration.file,
        h.target_false_rejection * 100.0,
        h.calibration_accuracy
    );
    Ok(())
}
