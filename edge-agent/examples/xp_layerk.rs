//! Experiment: worker-side drafting through the real upper layers. A small net predicts the
//! layer-K state of the next token from the previous layer-K state and the token's embedding;
//! the model's own layers [K, N) (exact KV of the settled context) and head turn it into drafts.
use anyhow::Result;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use seam_edge::commands::bench_split::AGREEMENT_PROMPTS;
use seam_edge::import::drafter::data::{Corpus, add_chat};
use seam_edge::perception::dataset::read_examples;
use seam_edge::runtime::chat_format::ChatFormat;
use seam_edge::runtime::engine::{GenerateRequest, render_prompt};
use seam_edge::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use seam_edge::runtime::model::{LoadOptions, Model};
use seam_edge::runtime::sampler::argmax;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn geom(model: &Model, layers: usize) -> KvGeometry {
    let a = model.arch();
    KvGeometry {
        n_layers: layers,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    }
}

fn encode(model: &Model, text: &str) -> Vec<u32> {
    model
        .tokenizer()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

fn prompt_ids(model: &Model, text: &str) -> Vec<u32> {
    let format = ChatFormat::of(model.package().manifest().chat_template.as_deref());
    let req = GenerateRequest {
        history: Vec::new(),
        system: None,
        prompt: text.to_string(),
        chat: true,
        max_tokens: 1,
        sampling: Default::default(),
        stop: Vec::new(),
        deadline: None,
        draft_tokens: None,
        context_overflow: None,
    };
    let mut ids = Vec::new();
    if let Some(b) = model.added_bos() {
        ids.push(b);
    }
    ids.extend(encode(model, &render_prompt(&req, format)));
    ids
}

/// Greedy answers: full sequences (prompt ++ answer) and prompt lengths.
fn answers(model: &mut Model, prompts: &[Vec<u32>], n: usize) -> Result<Vec<(Vec<u32>, usize)>> {
    let a = model.arch();
    let mut stop = a.stop_tokens.clone();
    stop.push(a.eos_token);
    let mut c = Corpus::new(model.n_embd());
    add_chat(model, &mut c, prompts, n, &stop, |i, of| {
        eprint!("\ranswers {i}/{of}")
    })?;
    eprintln!();
    Ok(prompts
        .iter()
        .zip(&c.sequences)
        .map(|(p, &(s, e))| {
            let mut full = p.clone();
            full.extend_from_slice(&c.tokens[s + 1..e]);
            (full, p.len())
        })
        .collect())
}

struct Seqs {
    d: usize,
    h: Vec<f32>,
    e: Vec<f32>,
    /// index p: predict h[p] from h[p-1], e[p] (and p+1.. for unroll)
    starts: Vec<usize>,
}

fn lower(model: &mut Model, k: u32, seq: &[u32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut cache = KvCache::try_new(geom(model, k as usize), KvDtype::Int8, seq.len())?;
    let e = model.embed(seq)?;
    let h = model.run_layers(0..k, e.clone(), 0, &mut cache)?;
    Ok((h, e))
}

fn rms(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()
}

struct Net {
    w_in: Tensor,
    b_in: Tensor,
    w_g: Tensor,
    w_u: Tensor,
    w_d: Tensor,
}

impl Net {
    /// a: previous raw layer-K state, e: raw embedding → raw layer-K estimate
    fn forward(&self, a: &Tensor, e: &Tensor) -> candle_core::Result<Tensor> {
        let r = rms(a)?;
        let x = Tensor::cat(&[a.broadcast_div(&r)?, e.broadcast_div(&rms(e)?)?], 1)?;
        let z = x.matmul(&self.w_in)?.broadcast_add(&self.b_in)?;
        let m = z.broadcast_div(&rms(&z)?)?;
        let g = candle_nn::ops::silu(&m.matmul(&self.w_g)?)?;
        let y = (z + (g * m.matmul(&self.w_u)?)?.matmul(&self.w_d)?)?;
        y.broadcast_mul(&r)
    }
}

fn gather(src: &[f32], picks: &[usize], off: isize, d: usize) -> Result<Tensor> {
    let mut v = Vec::with_capacity(picks.len() * d);
    for &p in picks {
        let q = (p as isize + off) as usize;
        v.extend_from_slice(&src[q * d..(q + 1) * d]);
    }
    Ok(Tensor::from_vec(v, (picks.len(), d), &Device::Cpu)?)
}

fn train(s: &Seqs, steps: usize, hidden: usize, unroll: usize) -> Result<Net> {
    let dev = Device::Cpu;
    let d = s.d;
    let mut init = StdRng::seed_from_u64(7);
    let mut param = |rows: usize, cols: usize, scale: f64| -> Result<Var> {
        let bound = scale / (rows as f64).sqrt() * 3f64.sqrt();
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| ((init.random::<f64>() * 2.0 - 1.0) * bound) as f32)
            .collect();
        Ok(Var::from_tensor(&Tensor::from_vec(
            data,
            (rows, cols),
            &dev,
        )?)?)
    };
    let w_in = param(2 * d, d, 1.0)?;
    let b_in = Var::from_tensor(&Tensor::zeros((1, d), DType::F32, &dev)?)?;
    let w_g = param(d, hidden, 1.0)?;
    let w_u = param(d, hidden, 1.0)?;
    let w_d = param(hidden, d, 0.1)?;
    let lr0 = 1e-3;
    let mut opt = AdamW::new(
        vec![
            w_in.clone(),
            b_in.clone(),
            w_g.clone(),
            w_u.clone(),
            w_d.clone(),
        ],
        ParamsAdamW {
            lr: lr0,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let net = Net {
        w_in: w_in.as_tensor().clone(),
        b_in: b_in.as_tensor().clone(),
        w_g: w_g.as_tensor().clone(),
        w_u: w_u.as_tensor().clone(),
        w_d: w_d.as_tensor().clone(),
    };
    let mut rng = StdRng::seed_from_u64(11);
    let mut smooth = f32::NAN;
    let t0 = Instant::now();
    for step in 0..steps {
        let picks: Vec<usize> = (0..256)
            .map(|_| s.starts[rng.random_range(0..s.starts.len())])
            .collect();
        let lr = lr0 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos());
        opt.set_learning_rate(lr.max(lr0 * 0.02));
        let mut a = gather(&s.h, &picks, -1, d)?;
        let mut total: Option<Tensor> = None;
        for u in 0..unroll {
            let e = gather(&s.e, &picks, u as isize, d)?;
            let y = net.forward(&a, &e)?;
            let t = gather(&s.h, &picks, u as isize, d)?;
            let rt = rms(&t)?;
            let loss = (y.broadcast_div(&rt)? - t.broadcast_div(&rt)?)?
                .sqr()?
                .mean_all()?;
            total = Some(match total {
                None => loss,
                Some(x) => (x + loss)?,
            });
            a = y;
        }
        let loss = (total.unwrap() / unroll as f64)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        smooth = if smooth.is_nan() {
            l
        } else {
            0.98 * smooth + 0.02 * l
        };
        if step % 100 == 0 || step + 1 == steps {
            eprintln!(
                "step {step} loss {smooth:.4} ({:.0}s)",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(net)
}

/// Chain evaluation through the real upper layers. Returns (reached, accepted) per depth.
fn evaluate(
    model: &mut Model,
    net: Option<&Net>,
    k: u32,
    seqs: &[(Vec<u32>, usize)],
    depth: usize,
) -> Result<(Vec<usize>, Vec<usize>, usize, usize)> {
    let d = model.n_embd();
    let n = model.layers().end;
    let (mut reached, mut accepted) = (vec![0; depth], vec![0; depth]);
    let (mut exact_ok, mut exact_n) = (0, 0);
    for (i, (seq, p)) in seqs.iter().enumerate() {
        let (h8, _) = lower(model, k, seq)?;
        let mut cache = KvCache::try_new(
            geom(model, (n - k) as usize),
            KvDtype::Int8,
            seq.len() + depth,
        )?;
        model.run_layers(k..n, h8[..p * d].to_vec(), 0, &mut cache)?;
        cache.commit(*p)?;
        let t_end = seq.len();
        for t in *p..t_end - 1 {
            let mut a = Tensor::from_slice(&h8[(t - 1) * d..t * d], (1, d), &Device::Cpu)?;
            let mut tok = seq[t];
            for dd in 0..depth {
                let pos = t + dd;
                if pos + 1 >= t_end {
                    break;
                }
                let e = Tensor::from_vec(model.embed(&[tok])?, (1, d), &Device::Cpu)?;
                let est = match net {
                    Some(net) => net.forward(&a, &e)?,
                    None => e.clone(),
                };
                let hv = est.flatten_all()?.to_vec1::<f32>()?;
                let out = model.run_layers(k..n, hv, pos, &mut cache)?;
                let draft = argmax(&model.logits(&out)?);
                reached[dd] += 1;
                if draft != seq[pos + 1] {
                    break;
                }
                accepted[dd] += 1;
                a = est;
                tok = draft;
            }
            cache.truncate(t)?;
            let out = model.run_layers(k..n, h8[t * d..(t + 1) * d].to_vec(), t, &mut cache)?;
            cache.commit(t + 1)?;
            exact_n += 1;
            if argmax(&model.logits(&out)?) == seq[t + 1] {
                exact_ok += 1;
            }
        }
        eprint!("\reval {}/{}", i + 1, seqs.len());
    }
    eprintln!();
    Ok((reached, accepted, exact_ok, exact_n))
}

fn report(name: &str, r: &(Vec<usize>, Vec<usize>, usize, usize)) {
    let (reached, accepted, ok, n) = r;
    let acc: Vec<String> = reached
        .iter()
        .zip(accepted)
        .map(|(r, a)| format!("{:.0}", 100.0 * *a as f64 / (*r).max(1) as f64))
        .collect();
    let chains = reached[0].max(1) as f64;
    let expected = 1.0 + accepted.iter().sum::<usize>() as f64 / chains;
    println!(
        "{name}: acceptance [{}]% chain-{} tokens/trip {:.2} (exact-step agreement {}/{})",
        acc.join(" "),
        reached.len(),
        expected,
        ok,
        n
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (pkg, prose, train_tsv, test_tsv) = (&args[1], &args[2], &args[3], &args[4]);
    let k = env("XP_K", 8) as u32;
    let mut model = Model::load(pkg.as_ref(), &LoadOptions::default())?;
    let d = model.n_embd();
    let t0 = Instant::now();
    // Training sequences.
    let text = std::fs::read_to_string(prose)?;
    let ids = encode(&model, &text);
    let usable = ids.len().saturating_sub(2048);
    let prose_tokens = env("XP_PROSE", 16384).min(usable);
    let mut seqs: Vec<Vec<u32>> = ids[..prose_tokens]
        .chunks_exact(256)
        .map(|c| c.to_vec())
        .collect();
    let mut texts: Vec<String> = read_examples(train_tsv.as_ref())?
        .into_iter()
        .map(|e| e.text)
        .collect();
    texts.sort();
    texts.dedup();
    texts.shuffle(&mut StdRng::seed_from_u64(3));
    texts.truncate(env("XP_PROMPTS", 256));
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| prompt_ids(&model, t)).collect();
    let train_answers = answers(&mut model, &prompts, 64)?;
    seqs.extend(train_answers.into_iter().map(|(s, _)| s));
    eprintln!(
        "training sequences {} ({:.0}s)",
        seqs.len(),
        t0.elapsed().as_secs_f64()
    );
    let unroll = env("XP_UNROLL", 3);
    let mut s = Seqs {
        d,
        h: Vec::new(),
        e: Vec::new(),
        starts: Vec::new(),
    };
    for seq in &seqs {
        let (h, e) = lower(&mut model, k, seq)?;
        let base = s.h.len() / d;
        // previous index p-1 >= 1 (skip the sink), p + unroll - 1 < len
        for p in 2..(seq.len() + 1).saturating_sub(unroll) {
            s.starts.push(base + p);
        }
        s.h.extend(h);
        s.e.extend(e);
    }
    eprintln!(
        "positions {} ({:.0}s)",
        s.starts.len(),
        t0.elapsed().as_secs_f64()
    );
    // Held-out: CLINC test texts and the open chat bench prompts.
    let mut test: Vec<String> = read_examples(test_tsv.as_ref())?
        .into_iter()
        .map(|e| e.text)
        .collect();
    test.sort();
    test.dedup();
    test.shuffle(&mut StdRng::seed_from_u64(5));
    test.truncate(env("XP_HELDOUT", 32));
    let test_prompts: Vec<Vec<u32>> = test.iter().map(|t| prompt_ids(&model, t)).collect();
    let heldout = answers(&mut model, &test_prompts, 64)?;
    let chat_prompts: Vec<Vec<u32>> = AGREEMENT_PROMPTS
        .iter()
        .map(|t| prompt_ids(&model, t))
        .collect();
    let chat = answers(&mut model, &chat_prompts, 64)?;
    let t1 = Instant::now();
    let net = train(&s, env("XP_STEPS", 800), env("XP_HIDDEN", 1024), unroll)?;
    eprintln!("trained in {:.0}s", t1.elapsed().as_secs_f64());
    let depth = 8;
    if env("XP_BASELINE", 0) == 1 {
        report(
            "embedding-only heldout",
            &evaluate(&mut model, None, k, &heldout, depth)?,
        );
    }
    report(
        "predictor heldout",
        &evaluate(&mut model, Some(&net), k, &heldout, depth)?,
    );
    report(
        "predictor openchat",
        &evaluate(&mut model, Some(&net), k, &chat, depth)?,
    );
    Ok(())
}
