//! The state predictor of a split layer K (see [`crate::runtime::draft::upper`]): a gated MLP
//! that estimates the layer-K state of a token from the layer-K state of the row before it and
//! the token's embedding,
//!
//! ```text
//! r = rms(s_{t-1})
//! z = [unit(s_{t-1}), unit(e(x_t))] · W_in + b_in     (2d → d)
//! m = unit(z)
//! ŝ_t = r · (z + (silu(m · W_gate) ⊙ (m · W_up)) · W_down)
//! ```
//!
//! trained with candle on the model's own layer-K states over the drafter's data (prose and the
//! model's greedy answers, teacher-forced through layers `[0, K)`): the squared error relative
//! to the state's size, unrolled over [`UNROLL`] positions feeding its own estimate back, as it
//! drafts. Its weights ship as an f32 ONNX graph (the worker runs it; its input precision is
//! what the upper layers see). The held-out figure runs the graph and the package's own layers
//! `[K, N)` over the exact KV of greedy answers to prompts never trained on.

use super::mlp::{Batches, GatedMlp, MlpWeights, Smoothed, UNIT_EPS, mean, rms, rows};
use crate::error::{Error, Result};
use crate::import::graphs::{act, rms_norm};
use crate::onnx::{Attr, GraphBuilder};
use crate::runtime::draft::upper::{Predictor, io};
use crate::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use crate::runtime::model::Model;
use crate::runtime::sampler::argmax;
use candle_core::Tensor;
use candle_nn::Optimizer;

/// Positions one training example unrolls over.
pub const UNROLL: usize = 3;

/// Layer-K states and embeddings of many sequences, flat, and the rows training starts from.
#[derive(Debug, Clone, Default)]
pub struct StateData {
    pub d: usize,
    pub states: Vec<f32>,
    pub embeds: Vec<f32>,
    /// Rows `p` with `p - 1` a usable previous row (never a sequence's first, which carries the
    /// attention sink) and `UNROLL - 1` more rows after `p` in the same sequence.
    pub starts: Vec<usize>,
}

impl StateData {
    /// Runs layers `[0, layer)` over `sequences` (teacher forcing) until `max_rows` rows.
    pub fn collect(
        model: &mut Model,
        layer: u32,
        sequences: &[Vec<u32>],
        max_rows: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<StateData> {
        let d = model.n_embd();
        let mut data = StateData {
            d,
            ..StateData::default()
        };
        for (i, seq) in sequences.iter().enumerate() {
            if data.states.len() / d + seq.len() > max_rows {
                break;
            }
            let (states, embeds) = lower_states(model, layer, seq)?;
            let base = data.states.len() / d;
            data.starts
                .extend((2..(seq.len() + 1).saturating_sub(UNROLL)).map(|p| base + p));
            data.states.extend(states);
            data.embeds.extend(embeds);
            progress(i + 1, sequences.len());
        }
        Ok(data)
    }
}

/// Layer-`layer` states and embeddings of every position of `seq`.
fn lower_states(model: &mut Model, layer: u32, seq: &[u32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut cache = KvCache::try_new(geometry(model, layer as usize), KvDtype::Int8, seq.len())?;
    let embeds = model.embed(seq)?;
    let states = model.run_layers(0..layer, embeds.clone(), 0, &mut cache)?;
    Ok((states, embeds))
}

fn geometry(model: &Model, layers: usize) -> KvGeometry {
    let a = model.arch();
    KvGeometry {
        n_layers: layers,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    }
}

/// How to train.
#[derive(Debug, Clone, Copy)]
pub struct PredictorOptions {
    pub hidden: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

/// `ŝ_t` for the previous states `s` and the tokens' embeddings `e`, both `[B, d]`.
fn forward(net: &GatedMlp, s: &Tensor, e: &Tensor) -> Result<Tensor> {
    Ok(net.forward(s, e)?.broadcast_mul(&rms(s)?)?)
}

/// Trains a predictor on `data`; `progress(step, steps, loss)` every few steps. Deterministic
/// for a seed (seeded initialisation and batches; candle's CPU kernels are deterministic for a
/// fixed thread count).
pub fn train(
    data: &StateData,
    opts: PredictorOptions,
    mut progress: impl FnMut(usize, usize, f32),
) -> Result<MlpWeights> {
    if data.starts.is_empty() {
        return Err(Error::InvalidArgument(
            "the state predictor's training data holds no run of positions".into(),
        ));
    }
    let d = data.d;
    let net = GatedMlp::new(d, opts.hidden, opts.seed)?;
    let mut opt = net.optimizer(opts.lr)?;
    let mut batches = Batches::new(opts.seed, &data.starts, opts.batch);
    let mut smoothed = Smoothed::default();
    for step in 0..opts.steps {
        let picks = batches.draw();
        // Cosine decay to a fiftieth of the rate.
        let cos = (std::f64::consts::PI * step as f64 / opts.steps as f64).cos();
        opt.set_learning_rate(opts.lr * (0.02 + 0.49 * (1.0 + cos)));
        let mut s = rows(&data.states, &picks, -1, d)?;
        let mut losses = Vec::with_capacity(UNROLL);
        for u in 0..UNROLL as isize {
            let e = rows(&data.embeds, &picks, u, d)?;
            let y = forward(&net, &s, &e)?;
            let target = rows(&data.states, &picks, u, d)?;
            let size = rms(&target)?;
            let loss = (y.broadcast_div(&size)? - target.broadcast_div(&size)?)?
                .sqr()?
                .mean_all()?;
            losses.push(loss);
            s = y;
        }
        let loss = mean(losses)?;
        opt.backward_step(&loss)?;
        let l = smoothed.update(loss.to_scalar::<f32>()?);
        if step % 25 == 0 || step + 1 == opts.steps {
            progress(step + 1, opts.steps, l);
        }
    }
    net.weights()
}

/// The predictor as an ONNX graph (f32 weights), inputs and outputs named by [`io`].
pub fn predictor_graph(w: &MlpWeights, layer: u32) -> Vec<u8> {
    let (n, h) = (w.d as i64, w.hidden as i64);
    let mut g = GraphBuilder::new("state_predictor");
    let state = g.input_f32(io::STATE, &act(w.d));
    let embed = g.input_f32(io::EMBED, &act(w.d));
    let ones = vec![1.0f32; w.d];
    let eps = UNIT_EPS as f32;
    let a = rms_norm(&mut g, &state, &ones, eps);
    let e = rms_norm(&mut g, &embed, &ones, eps);
    let x = g.op("Concat", "", &[&a, &e], vec![Attr::Int("axis", 1)]);
    let w_in = g.init_f32("w_in", &[2 * n, n], &w.w_in);
    let b_in = g.init_f32("b_in", &[n], &w.b_in);
    let xw = g.op("MatMul", "", &[&x, &w_in], vec![]);
    let z = g.op("Add", "", &[&xw, &b_in], vec![]);
    let m = rms_norm(&mut g, &z, &ones, eps);
    let w_gate = g.init_f32("w_gate", &[n, h], &w.w_gate);
    let w_up = g.init_f32("w_up", &[n, h], &w.w_up);
    let w_down = g.init_f32("w_down", &[h, n], &w.w_down);
    let gate = g.op("MatMul", "", &[&m, &w_gate], vec![]);
    let sig = g.op("Sigmoid", "", &[&gate], vec![]);
    let silu = g.op("Mul", "", &[&gate, &sig], vec![]);
    let up = g.op("MatMul", "", &[&m, &w_up], vec![]);
    let prod = g.op("Mul", "", &[&silu, &up], vec![]);
    let down = g.op("MatMul", "", &[&prod, &w_down], vec![]);
    let y = g.op("Add", "", &[&down, &z], vec![]);
    // r = sqrt(mean(s²) + eps), the previous state's size.
    let sq = g.op("Mul", "", &[&state, &state], vec![]);
    let axes = g.init_i64("axes", &[1], &[-1]);
    let ms = g.op(
        "ReduceMean",
        "",
        &[&sq, &axes],
        vec![Attr::Int("keepdims", 1)],
    );
    let eps_t = g.init_f32("eps", &[1], &[eps]);
    let ms_eps = g.op("Add", "", &[&ms, &eps_t], vec![]);
    let r = g.op("Sqrt", "", &[&ms_eps], vec![]);
    let out = g.op("Mul", "", &[&y, &r], vec![]);
    g.output_f32(&out, io::STATE_OUT, &act(w.d));
    g.finish(&format!(
        "state predictor of layer {layer}: gated MLP over [previous layer-{layer} state, token embedding]"
    ))
}

/// Conditional acceptance of the predictor's chains at positions 1..=`depth`, drafted through
/// the model's layers `[K, N)` from every position of the answers of `sequences` (`(prompt ++
/// answer, prompt length)`), as the worker drafts: from the exact layer-K state of the row
/// before and the settled token, over the exact KV of everything before.
pub fn chain_acceptance(
    model: &mut Model,
    predictor: &mut Predictor,
    sequences: &[(Vec<u32>, usize)],
    depth: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let d = model.n_embd();
    let layer = predictor.layer();
    let n = model.arch().n_layer;
    let (mut reached, mut stood) = (vec![0usize; depth], vec![0usize; depth]);
    for (i, (seq, prompt)) in sequences.iter().enumerate() {
        let prompt = *prompt;
        if prompt < 2 || seq.len() <= prompt + 1 {
            continue;
        }
        let (states, _) = lower_states(model, layer, seq)?;
        let geom = geometry(model, (n - layer) as usize);
        let mut cache = KvCache::try_new(geom, KvDtype::Int8, seq.len() + depth)?;
        model.run_layers(layer..n, states[..prompt * d].to_vec(), 0, &mut cache)?;
        cache.commit(prompt)?;
        for t in prompt..seq.len() - 1 {
            let mut state = states[(t - 1) * d..t * d].to_vec();
            let mut token = seq[t];
            for j in 0..depth.min(seq.len() - 1 - t) {
                let estimate = predictor.run(&state, &model.embed(&[token])?)?;
                let h = model.run_layers(layer..n, estimate.clone(), t + j, &mut cache)?;
                let draft = argmax(&model.logits(&h)?);
                reached[j] += 1;
                if draft != seq[t + j + 1] {
                    break;
                }
                stood[j] += 1;
                state = estimate;
                token = draft;
            }
            cache.truncate(t)?;
            model.run_layers(layer..n, states[t * d..(t + 1) * d].to_vec(), t, &mut cache)?;
            cache.commit(t + 1)?;
        }
        progress(i + 1, sequences.len());
    }
    Ok(reached
        .iter()
        .zip(&stood)
        .map(|(&r, &s)| if r == 0 { 0.0 } else { s as f64 / r as f64 })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut r = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale)
            .collect()
    }

    /// Plain f32 forward pass of the formula in the module documentation, one row.
    fn reference(w: &MlpWeights, s: &[f32], e: &[f32]) -> Vec<f32> {
        let (d, h) = (w.d, w.hidden);
        let rms = |x: &[f32]| {
            ((x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32) + UNIT_EPS as f32).sqrt()
        };
        let (rs, re) = (rms(s), rms(e));
        let x: Vec<f32> = s
            .iter()
            .map(|v| v / rs)
            .chain(e.iter().map(|v| v / re))
            .collect();
        let matvec = |x: &[f32], m: &[f32], cols: usize| -> Vec<f32> {
            (0..cols)
                .map(|c| x.iter().enumerate().map(|(r, v)| v * m[r * cols + c]).sum())
                .collect()
        };
        let z: Vec<f32> = matvec(&x, &w.w_in, d)
            .iter()
            .zip(&w.b_in)
            .map(|(a, b)| a + b)
            .collect();
        let rz = rms(&z);
        let m: Vec<f32> = z.iter().map(|v| v / rz).collect();
        let gate = matvec(&m, &w.w_gate, h);
        let up = matvec(&m, &w.w_up, h);
        let prod: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let down = matvec(&prod, &w.w_down, d);
        z.iter().zip(&down).map(|(a, b)| (a + b) * rs).collect()
    }

    fn weights(d: usize, h: usize) -> MlpWeights {
        MlpWeights {
            d,
            hidden: h,
            w_in: random(2 * d * d, 1, 0.3),
            b_in: random(d, 2, 0.1),
            w_gate: random(d * h, 3, 0.3),
            w_up: random(d * h, 4, 0.3),
            w_down: random(h * d, 5, 0.3),
        }
    }

    #[test]
    fn graph_matches_the_plain_forward_pass() {
        seam_shared::ort_env::init(1).unwrap();
        let (d, h) = (16, 24);
        let w = weights(d, h);
        let mut p = Predictor::from_graph(&predictor_graph(&w, 3), 3, d).unwrap();
        let (s, e) = (random(2 * d, 6, 4.0), random(2 * d, 7, 0.05));
        let out = p.run(&s, &e).unwrap();
        for r in 0..2 {
            let want = reference(&w, &s[r * d..(r + 1) * d], &e[r * d..(r + 1) * d]);
            for (a, b) in out[r * d..(r + 1) * d].iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
        // The candle net the training differentiates is the same function.
        let t = |v: &[f32], r: usize| Tensor::from_slice(v, (r, d), &Device::Cpu).unwrap();
        let net = GatedMlp::from_weights(&w).unwrap();
        let y = forward(&net, &t(&s, 2), &t(&e, 2)).unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in y.iter().zip(&out) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// Sequences whose state follows a fixed rule of the previous state and the token: the
    /// trained net must fit it far better than it starts, and the same seed gives the same net.
    #[test]
    fn training_learns_a_state_rule_and_is_deterministic() {
        let d = 8;
        let table = random(16 * d, 9, 1.0);
        let mut data = StateData {
            d,
            ..StateData::default()
        };
        let mut r = StdRng::seed_from_u64(10);
        for _ in 0..16 {
            let base = data.states.len() / d;
            let mut s = vec![1.0f32; d];
            for p in 0..24 {
                let tok = r.random_range(0..16usize);
                let e = &table[tok * d..(tok + 1) * d];
                s = s.iter().zip(e).map(|(a, b)| 0.5 * a + b).collect();
                data.states.extend_from_slice(&s);
                data.embeds.extend_from_slice(e);
                if (2..24 + 1 - UNROLL).contains(&p) {
                    data.starts.push(base + p);
                }
            }
        }
        let opts = PredictorOptions {
            hidden: 16,
            steps: 600,
            batch: 32,
            lr: 1e-2,
            seed: 1,
        };
        let mut losses = Vec::new();
        let a = train(&data, opts, |_, _, l| losses.push(l)).unwrap();
        assert!(
            losses.last().unwrap() * 4.0 < losses[0],
            "loss went from {} to {}",
            losses[0],
            losses.last().unwrap()
        );
        let b = train(&data, opts, |_, _, _| {}).unwrap();
        assert_eq!(a.w_down, b.w_down);
    }
}
