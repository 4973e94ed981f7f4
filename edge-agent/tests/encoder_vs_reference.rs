//! The ONNX sentence encoder against a plain f32 BERT forward pass written for the tests
//! (`seam_edge::reference_bert`), on 100 CLINC150 test sentences: the f32 graph computes the
//! checkpoint's function (cosine ≥ 0.99999 on every sentence), the shipped int8 graph stays
//! within cosine 0.999 of it on every sentence. Also: tokenization, padding invariance, truncation.

use seam_edge::bert::{BertConfig, BertWeights};
use seam_edge::import::encoder_graph::{EncoderGraph, EncoderWeightType, encoder_graph};
use seam_edge::perception::dataset::read_examples;
use seam_edge::perception::encoder::{Encoder, Tokens};
use seam_edge::reference_bert::{cosine, embed as reference_embed};
use seam_edge::test_util::{clinc150, encoder_package_dir, minilm_dir, workspace_root};
use seam_shared::package::EncoderPackage;
use std::path::PathBuf;
use std::sync::OnceLock;

const MAX_TOKENS: usize = 256;

fn weights() -> &'static BertWeights {
    static W: OnceLock<BertWeights> = OnceLock::new();
    W.get_or_init(|| {
        let dir = minilm_dir();
        let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
        BertWeights::from_file(&dir.join("model.safetensors"), &config).unwrap()
    })
}

/// 100 test sentences, every 22nd of the split (all domains, varied lengths).
fn sentences() -> Vec<String> {
    let rows = read_examples(&clinc150("test")).unwrap();
    rows.iter()
        .step_by(22)
        .take(100)
        .map(|r| r.text.clone())
        .collect()
}

/// The packaged tokenizer (padding and truncation off in the file).
fn tokenizer_path() -> PathBuf {
    let pkg = EncoderPackage::open_kind(encoder_package_dir()).unwrap();
    pkg.path(&pkg.manifest().encoder.tokenizer)
}

/// An encoder over a graph built here from the checkpoint.
fn encoder(ty: EncoderWeightType) -> Encoder {
    seam_shared::ort_env::init(2).unwrap();
    let path = workspace_root().join("target").join(format!(
        "seam-test-encoder-{}-{}.onnx",
        ty.as_str(),
        std::process::id()
    ));
    std::fs::write(
        &path,
        encoder_graph(weights(), MAX_TOKENS, &EncoderGraph::plain(ty)),
    )
    .unwrap();
    let e = Encoder::load(&path, &tokenizer_path(), MAX_TOKENS, 384).unwrap();
    let _ = std::fs::remove_file(&path);
    e
}

/// The encoder of the shipped package.
fn packaged_encoder() -> Encoder {
    seam_shared::ort_env::init(2).unwrap();
    let pkg = EncoderPackage::open_kind(encoder_package_dir()).unwrap();
    let m = &pkg.manifest().encoder;
    Encoder::load(
        &pkg.path(&m.graph),
        &pkg.path(&m.tokenizer),
        m.max_tokens as usize,
        m.hidden as usize,
    )
    .unwrap()
}

fn embed_all(e: &mut Encoder, texts: &[String]) -> Vec<Vec<f32>> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    e.embed(&refs)
        .unwrap()
        .into_iter()
        .map(|x| x.values)
        .collect()
}

#[test]
fn f32_graph_matches_the_plain_reference_and_int8_stays_close() {
    let texts = sentences();
    assert_eq!(texts.len(), 100);
    let mut f32_enc = encoder(EncoderWeightType::F32);
    let onnx_f32 = embed_all(&mut f32_enc, &texts);
    let w = weights();
    let mut worst = 1.0f64;
    for (text, got) in texts.iter().zip(&onnx_f32) {
        let ids: Vec<u32> = f32_enc
            .tokenize(text)
            .unwrap()
            .ids
            .iter()
            .map(|&i| i as u32)
            .collect();
        let want = reference_embed(w, &ids);
        let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
        let c = cosine(got, &want);
        worst = worst.min(c);
        assert!(
            c >= 0.99999,
            "{text:?}: cosine {c} between the f32 graph and the reference"
        );
    }
    eprintln!("f32 graph vs reference: worst cosine {worst:.7} over 100 sentences");

    let mut int8 = packaged_encoder();
    let onnx_int8 = embed_all(&mut int8, &texts);
    // The shipped graph (int8 weights and activations, smoothed): every sentence within
    // cosine 0.999 of the f32 graph.
    let cosines: Vec<f64> = onnx_int8
        .iter()
        .zip(&onnx_f32)
        .map(|(a, b)| cosine(a, b))
        .collect();
    for (text, c) in texts.iter().zip(&cosines) {
        assert!(
            *c >= 0.999,
            "{text:?}: cosine {c} between the int8 and the f32 graph"
        );
    }
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    let worst = cosines.iter().copied().fold(1.0, f64::min);
    eprintln!(
        "int8 graph vs f32 graph: mean cosine {mean:.6}, worst {worst:.6} over 100 sentences"
    );
    // Different sentences stay apart: the encoder is not collapsing everything together.
    assert!(cosine(&onnx_int8[0], &onnx_int8[1]) < 0.9);
}

#[test]
fn wordpiece_ids_padding_and_truncation() {
    let mut e = packaged_encoder();
    // bert-base-uncased's vocabulary: [CLS] hello world [SEP].
    let t = e.tokenize("Hello World").unwrap();
    assert_eq!(
        t,
        Tokens {
            ids: vec![101, 7592, 2088, 102],
            truncated: false
        }
    );

    // A text's embedding does not depend on the longer texts padded into its batch.
    let short = "what is my balance";
    let long =
        "please tell me how much money i have in my checking account and savings account right now";
    let alone = e.embed(&[short]).unwrap().remove(0);
    let batched = e.embed(&[long, short, long]).unwrap();
    assert!(cosine(&alone.values, &batched[1].values) > 0.99999);
    assert_eq!(batched[1].tokens, alone.tokens);

    // Longer than the encoder reads: cut to max tokens, flagged.
    let words = "transfer money between my accounts please ".repeat(80);
    let cut = e.embed(&[&words]).unwrap().remove(0);
    assert_eq!((cut.tokens, cut.truncated), (MAX_TOKENS, true));
    assert!(!alone.truncated);

    for bad in ["", "   \n"] {
        let err = e.embed(&[bad]).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }
}

#[test]
fn the_packaged_tokenizer_has_padding_and_truncation_off() {
    let text = std::fs::read_to_string(tokenizer_path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(json["padding"].is_null(), "{}", json["padding"]);
    assert!(json["truncation"].is_null(), "{}", json["truncation"]);
}
