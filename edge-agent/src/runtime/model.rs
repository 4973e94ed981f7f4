//! A loaded model package: ONNX Runtime sessions for every graph, the embedding table, the
//! tokenizer, and the forward pass that chains graphs with attention over the KV cache.

use super::attention::attention;
use super::draft::drafter::Drafter;
use super::draft::tree::DraftTree;
use super::embedding::Embedding;
use super::kv_cache::KvCache;
use super::rope::Rope;
use super::row_paths::{self, Probe};
use crate::error::{Error, Result};
use crate::import::graphs::io;
use crate::onnx::session_from_file;
use ort::session::Session;
use ort::value::TensorRef;
use seam_shared::huge_pages::HugePageReport;
use seam_shared::package::{Architecture, Package};
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Intra-op threads of ONNX Runtime's global pool and of attention (0 = all cores).
    pub threads: usize,
    /// Load only the segments covering these layers (a device in split mode loads
    /// `0..K`; a worker loads `K..n`). `None` = all.
    pub layers: Option<Range<u32>>,
    /// Whether to load the LM head.
    pub head: bool,
    /// Whether to load the package's draft head (the device half of a split drafts).
    pub drafter: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: 2,
            layers: None,
            head: true,
            drafter: true,
        }
    }
}

/// One sequence of a batched pass ([`Model::run_layers_batch`]): `rows` rows at positions
/// `pos..pos + rows` of its own KV cache, rotated as positions `pos + rope_shift..` (a sliding
/// window's cache holds positions shifted down by what it dropped).
#[derive(Debug)]
pub struct Sequence<'a> {
    pub pos: usize,
    pub rope_shift: usize,
    pub rows: usize,
    pub cache: &'a mut KvCache,
    /// The last `tree.len()` rows are the nodes of a draft tree below the row before them
    /// (not consecutive positions; see [`TreeKv`]).
    pub tree: Option<TreeRows<'a>>,
}

impl<'a> Sequence<'a> {
    /// Consecutive rows at `pos..pos + rows`.
    pub fn new(pos: usize, rows: usize, cache: &'a mut KvCache) -> Sequence<'a> {
        Sequence {
            pos,
            rope_shift: 0,
            rows,
            cache,
            tree: None,
        }
    }
}

/// The draft tree of a sequence and where its nodes' K/V go.
#[derive(Debug)]
pub struct TreeRows<'a> {
    pub tree: &'a DraftTree,
    pub kv: &'a mut TreeKv,
}

/// The K/V rows (rotated) of every tree node at every layer of a pass. The cache holds, past
/// the committed rows, only the last path attended; [`TreeKv::place_path`] writes the accepted
/// path there once the verdict is known.
#[derive(Debug, Clone, Default)]
pub struct TreeKv {
    width: usize,
    nodes: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl TreeKv {
    fn reset(&mut self, layers: usize, nodes: usize, width: usize) {
        self.width = width;
        self.nodes = nodes;
        self.k.clear();
        self.k.resize(layers * nodes * width, 0.0);
        self.v.clear();
        self.v.resize(layers * nodes * width, 0.0);
    }

    fn row(&self, layer: usize, node: usize) -> std::ops::Range<usize> {
        let at = (layer * self.nodes + node) * self.width;
        at..at + self.width
    }

    /// Writes the K/V of `path` (tree nodes, root's child first) at positions `base..` of
    /// every layer of `cache`.
    pub fn place_path(&self, cache: &mut KvCache, base: usize, path: &[usize]) -> Result<()> {
        let layers = self.k.len() / (self.nodes * self.width).max(1);
        for layer in 0..layers {
            for (j, &n) in path.iter().enumerate() {
                let r = self.row(layer, n);
                cache.write(layer, base + j, &self.k[r.clone()], &self.v[r])?;
            }
        }
        Ok(())
    }
}

struct LoadedSegment {
    start: u32,
    end: u32,
    graphs: Vec<Session>,
}

/// A model ready to run. Sessions need `&mut` to run, so one model serves one forward pass
/// at a time; callers serialise through the engine.
pub struct Model {
    package: Package,
    arch: Architecture,
    tokenizer: tokenizers::Tokenizer,
    /// The BOS token the tokenizer puts in front of a text (Gemma's), if it does.
    added_bos: Option<u32>,
    embedding: Embedding,
    segments: Vec<LoadedSegment>,
    head: Option<Session>,
    /// The package's draft head, when it has one and it was asked for.
    drafter: Option<Drafter>,
    rope: Rope,
    /// The rope of the local layers (gemma3) and which layers those are.
    local_rope: Option<(Rope, Vec<bool>)>,
    /// Positions a local layer attends over (none: all).
    sliding_window: Option<usize>,
    threads: usize,
    /// Fewest rows a layer or head graph runs on (see [`super::row_paths`]).
    min_rows: usize,
    load_time: Duration,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dir", &self.package.dir())
            .field("digest", &self.package.digest())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Opens and verifies the package in `dir` and builds its sessions.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Model> {
        let started = Instant::now();
        let threads = seam_shared::ort_env::init(opts.threads)?;
        let package = Package::open(dir)?;
        let m = package.manifest().clone();
        let arch = m.architecture.clone();
        let tokenizer = tokenizers::Tokenizer::from_file(package.path(&m.tokenizer))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let embedding = Embedding::load(&package.path(&m.embedding), &m)?;
        let wanted = opts.layers.clone().unwrap_or(0..arch.n_layer);
        let mut segments = Vec::new();
        for seg in &m.segments {
            if seg.end <= wanted.start || seg.start >= wanted.end {
                continue;
            }
            if seg.start < wanted.start || seg.end > wanted.end {
                return Err(Error::InvalidArgument(format!(
                    "layers {}..{} do not fall on segment boundaries (split points {:?})",
                    wanted.start, wanted.end, m.split_points
                )));
            }
            let graphs = seg
                .graphs
                .iter()
                .map(|g| session_from_file(&package.path(g)))
                .collect::<Result<Vec<_>>>()?;
            segments.push(LoadedSegment {
                start: seg.start,
                end: seg.end,
                graphs,
            });
        }
        let head = if opts.head {
            Some(session_from_file(&package.path(&m.head))?)
        } else {
            None
        };
        let drafter = match &m.drafter {
            Some(spec) if opts.drafter => Some(Drafter::load(
                &package,
                spec,
                arch.n_embd as usize,
                arch.vocab_size,
            )?),
            _ => None,
        };
        // The weights now sit in ONNX Runtime's buffers: back them with huge pages (decoding
        // streams all of them per token; fewer TLB misses).
        // `SEAM_HUGE_PAGES=0` leaves the pages as they are (for comparison).
        let huge_pages = if std::env::var_os("SEAM_HUGE_PAGES").is_some_and(|v| v == "0") {
            HugePageReport::default()
        } else {
            seam_shared::huge_pages::back_weights_with_huge_pages(
                4 * seam_shared::huge_pages::HUGE_PAGE,
            )
        };
        tracing::debug!(?huge_pages, "weights backed by huge pages");
        let rope = Rope::scaled(
            arch.head_dim as usize,
            arch.rope_theta as f64,
            arch.rope_freq_scale as f64,
            &arch.rope_freq_factors,
            arch.context_length as usize,
        )?;
        let sliding_window = (arch.sliding_window > 0).then_some(arch.sliding_window as usize);
        let local_rope = match arch.rope_theta_local {
            Some(theta) if !arch.local_layers.is_empty() => {
                let mut local = vec![false; arch.n_layer as usize];
                for &l in &arch.local_layers {
                    local[l as usize] = true;
                }
                Some((
                    Rope::new(
                        arch.head_dim as usize,
                        theta as f64,
                        arch.context_length as usize,
                    )?,
                    local,
                ))
            }
            _ => None,
        };
        let mut model = Model {
            package,
            arch,
            added_bos: tokenizer
                .encode("", true)
                .ok()
                .and_then(|e| e.get_ids().first().copied()),
            tokenizer,
            embedding,
            segments,
            head,
            drafter,
            rope,
            local_rope,
            sliding_window,
            threads: threads.max(1),
            min_rows: 2,
            load_time: Duration::ZERO,
        };
        model.min_rows = model.probe_min_rows()?;
        if model.min_rows > 1 {
            tracing::info!(
                "ONNX Runtime computes a lone row differently from a row in a batch on this CPU: \
                 the graphs run on {} rows at least",
                model.min_rows
            );
        }
        model.load_time = started.elapsed();
        Ok(model)
    }

    /// Runs the first loaded layers and the head on one row alone and beside another row: the
    /// fewest rows the graphs must run on for a row's result not to depend on its neighbours.
    fn probe_min_rows(&mut self) -> Result<usize> {
        let d = self.n_embd();
        let vocab = self.arch.vocab_size;
        let hidden = self.embed(&[vocab / 3, vocab / 2])?;
        let attn_width = self.arch.n_head as usize * self.arch.head_dim as usize;
        let mut probes = Vec::new();
        if let Some(seg) = self.segments.first_mut() {
            let output = if seg.end - seg.start > 1 {
                io::RESIDUAL_OUT
            } else {
                io::HIDDEN_OUT
            };
            let (qkv, rest) = seg.graphs.split_at_mut(1);
            probes.push(Probe {
                session: &mut qkv[0],
                inputs: vec![(io::HIDDEN, d, hidden.clone())],
                output: io::QKV,
            });
            probes.push(Probe {
                session: &mut rest[0],
                inputs: vec![
                    (io::RESIDUAL, d, hidden.clone()),
                    (io::ATTN, attn_width, row_paths::spread(2 * attn_width)),
                ],
                output,
            });
        }
        if let Some(head) = &mut self.head {
            probes.push(Probe {
                session: head,
                inputs: vec![(io::HIDDEN, d, hidden)],
                output: io::LOGITS,
            });
        }
        row_paths::graph_min_rows(probes)
    }

    /// Fewest rows the layer and head graphs run on: 2 where ONNX Runtime computes a lone row
    /// differently from a row in a batch on this CPU, else 1.
    pub fn graph_min_rows(&self) -> usize {
        self.min_rows
    }

    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn arch(&self) -> &Architecture {
        &self.arch
    }

    /// The BOS token the tokenizer puts in front of a text (Gemma), if it does.
    pub fn added_bos(&self) -> Option<u32> {
        self.added_bos
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// Time taken by [`Model::load`] (verification, sessions).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Layers this model instance runs.
    pub fn layers(&self) -> Range<u32> {
        let start = self.segments.first().map_or(0, |s| s.start);
        let end = self.segments.last().map_or(0, |s| s.end);
        start..end
    }

    /// Width of one hidden state.
    pub fn n_embd(&self) -> usize {
        self.arch.n_embd as usize
    }

    /// Embedding rows of `tokens` (exact dequantisation of the stored type), `[S, n_embd]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let d = self.n_embd();
        let mut out = Vec::with_capacity(tokens.len() * d);
        for &t in tokens {
            self.embedding.row(t, &mut out)?;
        }
        let scale = self.arch.embedding_scale;
        if scale != 1.0 {
            out.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(out)
    }

    /// Runs layers `range` (whole segments) on `hidden` (`[S, n_embd]`, positions
    /// `pos..pos+S`), writing their K/V into `cache` (whose layer 0 is `range.start`).
    /// Returns the hidden state leaving the last layer.
    pub fn run_layers(
        &mut self,
        range: Range<u32>,
        hidden: Vec<f32>,
        pos: usize,
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let rows = hidden.len() / self.n_embd().max(1);
        self.run_layers_batch(range, hidden, &mut [Sequence::new(pos, rows, cache)])
    }

    /// [`Model::run_layers`] for several sequences at once: `hidden` holds the rows of every
    /// sequence in order. The graphs see all rows as one batch (each of their operations is
    /// row-wise, so the weights are read once for all sequences); rotary embedding, the KV
    /// writes and attention run per sequence.
    pub fn run_layers_batch(
        &mut self,
        range: Range<u32>,
        hidden: Vec<f32>,
        seqs: &mut [Sequence<'_>],
    ) -> Result<Vec<f32>> {
        let d = self.n_embd();
        let s: usize = seqs.iter().map(|q| q.rows).sum();
        if s == 0 || seqs.iter().any(|q| q.rows == 0) || hidden.len() != s * d {
            return Err(Error::InvalidArgument(format!(
                "hidden state of {} values does not hold the {s} rows of {d} announced",
                hidden.len()
            )));
        }
        let n_layers = (range.end - range.start) as usize;
        for q in seqs.iter_mut() {
            if let Some(t) = &mut q.tree {
                if q.rope_shift != 0 {
                    return Err(Error::InvalidArgument(
                        "draft trees are verified in unshifted caches only".into(),
                    ));
                }
                if t.tree.is_empty() || t.tree.len() >= q.rows {
                    return Err(Error::InvalidArgument(format!(
                        "a draft tree of {} nodes needs a committed row before it in a step of {} rows",
                        t.tree.len(),
                        q.rows
                    )));
                }
                let kw = self.arch.n_head_kv as usize * self.arch.head_dim as usize;
                t.kv.reset(n_layers, t.tree.len(), kw);
            }
            if q.pos + q.rows > q.cache.capacity() {
                return Err(Error::ResourceExhausted {
                    reason: format!(
                        "{} positions exceed the KV cache capacity of {}",
                        q.pos + q.rows,
                        q.cache.capacity()
                    ),
                    retry_after: None,
                });
            }
        }
        let (nh, nkv, hd) = (
            self.arch.n_head as usize,
            self.arch.n_head_kv as usize,
            self.arch.head_dim as usize,
        );
        let (qw, kw) = (nh * hd, nkv * hd);
        // The graphs see at least `min_rows` rows (see [`super::row_paths`]); a lone row is
        // repeated and the copy's outputs are dropped at the end. Attention and the KV writes
        // see `s` rows.
        let g = s.max(self.min_rows);
        let mut h = pad_rows(hidden, d, g);
        let mut attn = vec![0.0f32; g * qw];
        let (mut q, mut k, mut v) = (vec![0.0; s * qw], vec![0.0; s * kw], vec![0.0; s * kw]);
        let shape = [g, d];
        let first_layer = range.start;
        for seg in self.segments.iter_mut() {
            if seg.end <= range.start || seg.start >= range.end {
                continue;
            }
            if seg.start < range.start || seg.end > range.end {
                return Err(Error::InvalidArgument(format!(
                    "layers {range:?} do not fall on segment boundaries"
                )));
            }
            {
                let out = seg.graphs[0].run(
                    ort::inputs![io::HIDDEN => TensorRef::from_array_view((shape, &h[..]))?],
                )?;
                split_qkv(&out, (g, s), (qw, kw), [&mut q, &mut k, &mut v])?;
            }
            for layer in seg.start..seg.end {
                let (rope, window) = match &self.local_rope {
                    Some((local, which)) if which[layer as usize] => (local, self.sliding_window),
                    _ => (&self.rope, None),
                };
                let cl = (layer - first_layer) as usize;
                let mut row = 0;
                for sq in seqs.iter_mut() {
                    let nodes = sq.tree.as_ref().map_or(0, |t| t.tree.len());
                    let (r0, r1) = (row, row + sq.rows - nodes);
                    let (qs, ks) = (&mut q[r0 * qw..r1 * qw], &mut k[r0 * kw..r1 * kw]);
                    rope.apply(qs, nh, hd, sq.pos + sq.rope_shift)?;
                    rope.apply(ks, nkv, hd, sq.pos + sq.rope_shift)?;
                    sq.cache.write(cl, sq.pos, ks, &v[r0 * kw..r1 * kw])?;
                    let out = &mut attn[r0 * qw..r1 * qw];
                    attention(qs, sq.cache, cl, sq.pos, nh, out, self.threads, window)?;
                    if let Some(t) = &mut sq.tree {
                        let base = sq.pos + (r1 - r0);
                        let tree_rows = TreeBlock {
                            first: r1,
                            base,
                            layer: cl,
                        };
                        let dims = (nh, nkv, hd, self.threads, window);
                        tree_attention(
                            rope, dims, tree_rows, t, sq.cache, &mut q, &mut k, &v, &mut attn,
                        )?;
                    }
                    row = r1 + nodes;
                }
                let graph = &mut seg.graphs[(layer - seg.start) as usize + 1];
                let out = graph.run(ort::inputs![
                    io::RESIDUAL => TensorRef::from_array_view((shape, &h[..]))?,
                    io::ATTN => TensorRef::from_array_view(([g, qw], &attn[..]))?,
                ])?;
                if layer + 1 < seg.end {
                    copy_output(&out, io::RESIDUAL_OUT, &mut h)?;
                    split_qkv(&out, (g, s), (qw, kw), [&mut q, &mut k, &mut v])?;
                } else {
                    copy_output(&out, io::HIDDEN_OUT, &mut h)?;
                }
            }
        }
        h.truncate(s * d);
        Ok(h)
    }

    /// Logits of every row of `hidden` (`[S, n_embd]` → `[S, vocab]`).
    pub fn logits(&mut self, hidden: &[f32]) -> Result<Vec<f32>> {
        let d = self.n_embd();
        let s = hidden.len() / d;
        let head = self.head.as_mut().ok_or_else(|| {
            Error::Package("this model instance was loaded without its head".into())
        })?;
        let g = s.max(self.min_rows);
        // Only a lone row is copied (to be repeated); a batch goes in as it is.
        let padded;
        let rows = if g > s {
            padded = pad_rows(hidden.to_vec(), d, g);
            &padded[..]
        } else {
            hidden
        };
        let out =
            head.run(ort::inputs![io::HIDDEN => TensorRef::from_array_view(([g, d], rows))?])?;
        let logits = out[io::LOGITS].try_extract_tensor::<f32>()?.1;
        Ok(logits[..logits.len() / g * s].to_vec())
    }

    /// The draft head, if loaded.
    pub fn drafter(&self) -> Option<&Drafter> {
        self.drafter.as_ref()
    }

    pub fn drafter_mut(&mut self) -> Option<&mut Drafter> {
        self.drafter.as_mut()
    }

    /// Full forward pass of `tokens` at positions `pos..`: embeddings, every loaded layer, and
    /// the logits of the last row only (`all_logits = false`) or of every row.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        cache: &mut KvCache,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        self.forward_shifted(tokens, pos, 0, cache, all_logits)
    }

    /// [`Model::forward`] into slots `slot..` of `cache`, rotated as positions
    /// `slot + rope_shift..` (a sliding window).
    pub fn forward_shifted(
        &mut self,
        tokens: &[u32],
        slot: usize,
        rope_shift: usize,
        cache: &mut KvCache,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let h = self.embed(tokens)?;
        let mut seq = Sequence::new(slot, tokens.len(), cache);
        seq.rope_shift = rope_shift;
        let h = self.run_layers_batch(self.layers(), h, &mut [seq])?;
        let d = self.n_embd();
        if all_logits {
            self.logits(&h)
        } else {
            self.logits(&h[h.len() - d..])
        }
    }
}

/// Attention of the tree nodes of one sequence at one layer (rows `first..` of the batch):
/// each node is rotated to position `base - 1 + depth`, and each root-to-leaf path is laid
/// out at positions `base..` of the cache and attended causally (within `window` on local
/// layers), so a node sees the committed positions and its ancestors only.
#[allow(clippy::too_many_arguments)]
fn tree_attention(
    rope: &Rope,
    (nh, nkv, hd, threads, window): (usize, usize, usize, usize, Option<usize>),
    at: TreeBlock,
    t: &mut TreeRows<'_>,
    cache: &mut KvCache,
    q: &mut [f32],
    k: &mut [f32],
    v: &[f32],
    attn: &mut [f32],
) -> Result<()> {
    let (qw, kw) = (nh * hd, nkv * hd);
    for (i, depth) in t.tree.depths().into_iter().enumerate() {
        let r = at.first + i;
        let position = at.base - 1 + depth;
        rope.apply(&mut q[r * qw..(r + 1) * qw], nh, hd, position)?;
        rope.apply(&mut k[r * kw..(r + 1) * kw], nkv, hd, position)?;
        let slot = t.kv.row(at.layer, i);
        t.kv.k[slot.clone()].copy_from_slice(&k[r * kw..(r + 1) * kw]);
        t.kv.v[slot].copy_from_slice(&v[r * kw..(r + 1) * kw]);
    }
    for path in t.tree.paths() {
        let n = path.len();
        let (mut pq, mut pk, mut pv) = (
            Vec::with_capacity(n * qw),
            Vec::with_capacity(n * kw),
            Vec::with_capacity(n * kw),
        );
        for &node in &path {
            let r = at.first + node;
            pq.extend_from_slice(&q[r * qw..(r + 1) * qw]);
            let slot = t.kv.row(at.layer, node);
            pk.extend_from_slice(&t.kv.k[slot.clone()]);
            pv.extend_from_slice(&t.kv.v[slot]);
        }
        cache.write(at.layer, at.base, &pk, &pv)?;
        let mut out = vec![0.0f32; n * qw];
        attention(&pq, cache, at.layer, at.base, nh, &mut out, threads, window)?;
        for (j, &node) in path.iter().enumerate() {
            let r = at.first + node;
            attn[r * qw..(r + 1) * qw].copy_from_slice(&out[j * qw..(j + 1) * qw]);
        }
    }
    Ok(())
}

/// Where the tree rows of one sequence sit in a pass.
#[derive(Debug, Clone, Copy)]
struct TreeBlock {
    /// First tree row in the batch.
    first: usize,
    /// Position of the first row after the committed ones (the root sits at `base - 1`).
    base: usize,
    /// Cache layer.
    layer: usize,
}

/// `rows` (`[S, width]`) with its last row repeated up to `g` rows.
fn pad_rows(mut rows: Vec<f32>, width: usize, g: usize) -> Vec<f32> {
    let s = rows.len() / width.max(1);
    if s > 0 {
        for _ in s..g {
            rows.extend_from_within((s - 1) * width..s * width);
        }
    }
    rows
}

/// Copies graph output `name` into `dst` (reused across layers, so no allocation per run),
/// checking that it has the expected number of values.
fn copy_output(out: &ort::session::SessionOutputs<'_>, name: &str, dst: &mut [f32]) -> Result<()> {
    let values = out[name].try_extract_tensor::<f32>()?.1;
    if values.len() != dst.len() {
        return Err(Error::Ort(format!(
            "graph output {name} has {} values, expected {}",
            values.len(),
            dst.len()
        )));
    }
    dst.copy_from_slice(values);
    Ok(())
}

/// Splits the first `s` of the `g` rows of graph output `QKV` (`[g, qw + 2·kw]`) into the
/// queries, keys and values (`[s, qw]`, `[s, kw]`, `[s, kw]`), straight from the graph's buffer.
fn split_qkv(
    out: &ort::session::SessionOutputs<'_>,
    (g, s): (usize, usize),
    (qw, kw): (usize, usize),
    [q, k, v]: [&mut [f32]; 3],
) -> Result<()> {
    let qkv = out[io::QKV].try_extract_tensor::<f32>()?.1;
    let row = qw + 2 * kw;
    if qkv.len() != g * row {
        return Err(Error::Ort(format!(
            "graph output {} has {} values, expected {}",
            io::QKV,
            qkv.len(),
            g * row
        )));
    }
    for (r, src) in qkv.chunks_exact(row).take(s).enumerate() {
        q[r * qw..][..qw].copy_from_slice(&src[..qw]);
        k[r * kw..][..kw].copy_from_slice(&src[qw..qw + kw]);
        v[r * kw..][..kw].copy_from_slice(&src[qw + kw..]);
    }
    Ok(())
}
