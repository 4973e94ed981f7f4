//! `seam-edge model import|inspect`.

use crate::import::{ImportOptions, import_gguf};
use anyhow::Context;
use seam_shared::package::Package;
use std::path::Path;
use std::time::Instant;

pub fn import(
    gguf: &Path,
    out: &Path,
    split_points: &[u32],
    f32_compute: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let report = import_gguf(
        gguf,
        out,
        &ImportOptions {
            split_points: split_points.to_vec(),
            progress: true,
            f32_compute,
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
    Ok(())
}

pub fn inspect(dir: &Path) -> anyhow::Result<()> {
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
        "weights   linear {} · head/embedding {} · {} compute · kv cache {}",
        m.weights.linear, m.weights.head, m.weights.compute, m.kv_dtype
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
    let total: u64 = m
        .files
        .keys()
        .filter_map(|f| std::fs::metadata(pkg.path(f)).ok())
        .map(|md| md.len())
        .sum();
    println!("files     {} ({:.1} MB)", m.files.len(), total as f64 / 1e6);
    Ok(())
}
